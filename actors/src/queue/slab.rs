//! The slab of token slots: 2 MiB segments (one transparent huge page
//! each), allocated on demand and never freed while the queue lives, so a
//! token's slot index is its address. The one `unsafe` block of the queue
//! (zeroed segment allocation) and the huge-page advice live here.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// Slots per segment of the [`Slab`]: 32,768 slots of 64 bytes = 2 MiB, one
/// huge page (see [`Segment`]).
pub(super) const SEGMENT_BITS: u32 = 15;
pub(super) const SEGMENT_SLOTS: usize = 1 << SEGMENT_BITS;
pub(super) const SEGMENT_MASK: u32 = (1 << SEGMENT_BITS) - 1;
/// Segments the slab may allocate (the table of them is 48 KiB).
pub(super) const MAX_SEGMENTS: usize = 1 << 11;
/// Tokens the queue can hold at once (WAITING, ACTIVE or EXPIRED and not yet
/// purged): 67,108,864, 4 GiB of slots. Past it, `issue` is `Unavailable`.
pub const MAX_TOKENS: u32 = 1 << (SEGMENT_BITS + 11);

/// 2 MiB of slots, aligned to 2 MiB so that the kernel can back it with one
/// transparent huge page. Lookups land on random slots of a large line: with
/// 4 KiB pages nearly every one also missed the TLB (a two-level page walk
/// in a VM); with huge pages 1,000,000 tokens span 31 TLB entries
/// (docs/PERFORMANCE.md, `queue`: +31% and +66% status lookups/s in two
/// same-minute pairs with the pages forced by the allocator).
#[repr(C, align(2097152))]
pub(super) struct Segment {
    pub(super) slots: [Slot; SEGMENT_SLOTS],
}

pub(super) const SEGMENT_BYTES: usize = std::mem::size_of::<Segment>();
const _: () = assert!(SEGMENT_BYTES == 2 << 20, "a segment is one 2 MiB huge page");

impl Segment {
    /// A segment of fresh slots, asked to be backed by a huge page before
    /// its memory is first touched (a hint: without transparent huge pages
    /// it is ordinary memory).
    pub(super) fn new() -> Box<Self> {
        // Built in place: 2 MiB would not fit on a thread's stack.
        let mut segment = Box::<Self>::new_uninit();
        advise_huge_pages(segment.as_mut_ptr().cast::<u8>(), SEGMENT_BYTES);
        let first = segment.as_mut_ptr().cast::<Slot>();
        for index in 0..SEGMENT_SLOTS {
            // SAFETY: `Segment` is `repr(C)` with one field, an array of
            // SEGMENT_SLOTS slots, so `first.add(index)` for index <
            // SEGMENT_SLOTS is in bounds of the allocation and aligned for
            // `Slot`; `write` does not read or drop the uninitialized slot.
            unsafe { first.add(index).write(Slot::fresh()) };
        }
        // SAFETY: the loop above initialized every slot, which is every
        // byte of `Segment` that is not padding (it has none: 64-byte slots).
        unsafe { segment.assume_init() }
    }
}

/// `madvise(MADV_HUGEPAGE)` on a 2 MiB-aligned range we own. Failure only
/// means ordinary pages, so it is ignored.
#[cfg(target_os = "linux")]
pub(super) fn advise_huge_pages(start: *mut u8, len: usize) {
    // SAFETY: the range is one live allocation of `len` bytes that this
    // function's caller owns, aligned to 2 MiB (a multiple of the page
    // size); MADV_HUGEPAGE changes only how the kernel backs it, never its
    // contents or its mapping.
    unsafe {
        libc::madvise(start.cast::<libc::c_void>(), len, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn advise_huge_pages(_start: *mut u8, _len: usize) {}

/// Every slot, in segments allocated on demand and kept for the queue's life.
pub(super) struct Slab {
    pub(super) segments: Box<[OnceLock<Box<Segment>>]>,
    /// Slots handed out so far (the high-water mark); each is in an
    /// allocated segment. Grows under the `fifo` lock.
    pub(super) len: AtomicU32,
}

impl Slab {
    pub(super) fn new() -> Self {
        Self {
            segments: (0..MAX_SEGMENTS).map(|_| OnceLock::new()).collect(),
            len: AtomicU32::new(0),
        }
    }

    pub(super) fn len(&self) -> u32 {
        self.len.load(Ordering::Acquire)
    }

    /// The slot, if its segment exists (a slot above `len` is fresh: no id
    /// matches it).
    #[inline]
    pub(super) fn get(&self, slot: u32) -> Option<&Slot> {
        let segment = self.segments.get((slot >> SEGMENT_BITS) as usize)?.get()?;
        segment.slots.get((slot & SEGMENT_MASK) as usize)
    }

    /// A slot below `len` (one the queue handed out).
    pub(super) fn at(&self, slot: u32) -> &Slot {
        debug_assert!(slot < self.len(), "only handed-out slots are held");
        // `grow` allocates a slot's segment before `len` covers the slot,
        // and segments are never dropped while the slab lives.
        self.get(slot).expect("a handed-out slot lives in an allocated segment")
    }

    /// Hands out the next never-used slot (under the `fifo` lock); `None`
    /// when [`MAX_TOKENS`] are out.
    pub(super) fn grow(&self) -> Option<u32> {
        let slot = self.len.load(Ordering::Relaxed);
        if slot >= MAX_TOKENS {
            return None;
        }
        self.segments[(slot >> SEGMENT_BITS) as usize].get_or_init(Segment::new);
        self.len.store(slot + 1, Ordering::Release);
        Some(slot)
    }
}
