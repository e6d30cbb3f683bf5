//! `WaitingQueue`: queue tokens, FIFO admission, active cap and expiry.
//!
//! Concurrency rule: **only the queue actor's tick admits or expires
//! tokens** (`tick`, under the `fifo` and `ticking` locks), and **a slot is
//! only filled or freed under the `fifo` lock**. Everything a request needs
//! is read without waiting behind that work:
//!
//! - tokens are *slot-addressed*: a [`TokenId`] names the slot it lives in
//!   (`slot`), the slot's generation when it was issued (`generation`) and
//!   128 random bits (`secret`). `status` indexes the slab of slots (no
//!   hashing, no lock, no atomic read-modify-write), reads the slot as a
//!   seqlock and compares the generation and the secret (in constant time):
//!   O(1), one cache line per lookup;
//! - `issue` takes the member's `by_member` entry (one live token per
//!   member) and, for a new token, the `fifo` lock for a few instructions to
//!   take a free slot and the next place in line;
//! - `position` is `rank - head_rank`: `rank` is a token's place in line, and
//!   `head_rank` the rank of the last token that left the front. When idle
//!   tokens leave from the middle, the tick closes the line up behind the
//!   first of them, in slices of [`CLOSE_UP_SLICE`] tokens with the `fifo`
//!   lock released between slices, so `issue` never waits for a whole pass.
//!
//! Slots live in a [`Slab`] of segments that are allocated on demand and never
//! freed while the queue lives (its memory is the high-water mark of tokens
//! held at once, like a `Vec`). A slot's 64-bit `head` holds its generation
//! and the token's state. An even generation means the slot holds the token
//! issued with it; an odd one means the slot is free (or being refilled).
//! Purging a token makes the generation odd; refilling the slot makes it even
//! again (`+2` per use), so a purged token's id never matches again (the old
//! secret would not match either). Readers load `head`, the fields, then
//! `head` again: if the generation moved, the slot was purged under them and
//! the token is unknown, so a lookup never retries and never mixes two
//! tokens' fields.
//!
//! Idle expiry does not walk the line: every WAITING token sits in an index
//! ordered by the idle deadline it had when last indexed (`last_seen +
//! idle timeout`). A tick pops only the entries that are due; a token polled
//! since is put back with its new deadline, one that was not is expired. A
//! poll never touches the index, so `status` stays a slot read and one
//! store, and a tick's work is the tokens that expire plus those whose
//! indexed deadline passed although they polled (each at most once per idle
//! timeout).
//!
//! Admission happens only at ticks, so a token is WAITING until a tick
//! admits it, even in an empty queue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard};
use rand::Rng;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};

use crate::clock::TimestampMs;
use crate::events::{Event, EventSink, Unavailable};
use crate::types::{JournalPos, MemberId};

/// Bytes of a [`TokenId`] in the database (`queue_tokens.token`).
pub const TOKEN_BYTES: usize = 24;
/// Characters of a token as clients see it: [`TOKEN_BYTES`] as lowercase hex.
pub const TOKEN_HEX_LEN: usize = 2 * TOKEN_BYTES;

/// A queue token: the slot it lives in, the slot's generation at issue and
/// 128 random bits from the CSPRNG. Shown to clients as 48 lowercase hex
/// digits: slot (8, big-endian), generation (8, big-endian), secret (32).
/// Only the secret is a secret: the slot and generation say where to look
/// (and roughly how many tokens the queue has held at once, which positions
/// already tell), the secret proves the token was issued.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenId {
    slot: u32,
    generation: u32,
    secret: [u8; 16],
}

impl TokenId {
    pub const fn new(slot: u32, generation: u32, secret: [u8; 16]) -> Self {
        Self {
            slot,
            generation,
            secret,
        }
    }

    pub fn slot(&self) -> u32 {
        self.slot
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    fn slot_ref(&self) -> SlotRef {
        SlotRef {
            slot: self.slot,
            generation: self.generation,
        }
    }

    fn from_words(at: SlotRef, words: [u64; 2]) -> Self {
        let mut secret = [0u8; 16];
        secret[..8].copy_from_slice(&words[0].to_le_bytes());
        secret[8..].copy_from_slice(&words[1].to_le_bytes());
        Self::new(at.slot, at.generation, secret)
    }

    /// The secret as the two words a [`Slot`] stores.
    fn secret_words(&self) -> [u64; 2] {
        secret_words(&self.secret)
    }

    /// The database form: slot, generation (both big-endian), secret.
    pub fn to_bytes(&self) -> [u8; TOKEN_BYTES] {
        let mut bytes = [0u8; TOKEN_BYTES];
        bytes[..4].copy_from_slice(&self.slot.to_be_bytes());
        bytes[4..8].copy_from_slice(&self.generation.to_be_bytes());
        bytes[8..].copy_from_slice(&self.secret);
        bytes
    }

    /// Exactly [`TOKEN_BYTES`] bytes in the form of [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; TOKEN_BYTES] = bytes.try_into().ok()?;
        let mut word = [0u8; 4];
        word.copy_from_slice(&bytes[..4]);
        let slot = u32::from_be_bytes(word);
        word.copy_from_slice(&bytes[4..8]);
        let generation = u32::from_be_bytes(word);
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&bytes[8..]);
        Some(Self::new(slot, generation, secret))
    }

    /// The client form: [`TOKEN_HEX_LEN`] lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// Parses exactly the form [`Self::to_hex`] writes (48 lowercase hex
    /// digits); anything else, uppercase included, is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != TOKEN_HEX_LEN {
            return None;
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (lower_hex_digit(pair[0])? << 4) | lower_hex_digit(pair[1])?;
        }
        Self::from_bytes(&bytes)
    }
}

fn lower_hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn secret_words(secret: &[u8; 16]) -> [u64; 2] {
    let mut low = [0u8; 8];
    let mut high = [0u8; 8];
    low.copy_from_slice(&secret[..8]);
    high.copy_from_slice(&secret[8..]);
    [u64::from_le_bytes(low), u64::from_le_bytes(high)]
}

impl std::fmt::Debug for TokenId {
    /// Tokens are credentials: debug output shows where the token lives,
    /// never its secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenId(slot {}, generation {}, …)", self.slot, self.generation)
    }
}

/// Queue settings (see the contract's configuration table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    pub tick_ms: i64,
    pub admit_per_tick: u32,
    pub max_active: u32,
    pub token_ttl_ms: i64,
    pub idle_timeout_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenStatus {
    Waiting,
    Active,
    Expired,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Waiting => "WAITING",
            TokenStatus::Active => "ACTIVE",
            TokenStatus::Expired => "EXPIRED",
        }
    }

    fn code(self) -> u32 {
        match self {
            TokenStatus::Waiting => WAITING,
            TokenStatus::Active => ACTIVE,
            TokenStatus::Expired => EXPIRED,
        }
    }
}

/// Token states as kept in the low half of a slot's `head`.
const WAITING: u32 = 0;
const ACTIVE: u32 = 1;
const EXPIRED: u32 = 2;
/// The slot holds no token (its generation is odd).
const FREE: u32 = 3;

/// Generation of a slot never used: odd, so no token id matches it.
const FRESH_GENERATION: u32 = 1;

/// Slots per segment of the [`Slab`]: 32,768 slots of 64 bytes = 2 MiB, one
/// huge page (see [`Segment`]).
const SEGMENT_BITS: u32 = 15;
const SEGMENT_SLOTS: usize = 1 << SEGMENT_BITS;
const SEGMENT_MASK: u32 = (1 << SEGMENT_BITS) - 1;
/// Segments the slab may allocate (the table of them is 48 KiB).
const MAX_SEGMENTS: usize = 1 << 11;
/// Tokens the queue can hold at once (WAITING, ACTIVE or EXPIRED and not yet
/// purged): 67,108,864, 4 GiB of slots. Past it, `issue` is `Unavailable`.
pub const MAX_TOKENS: u32 = 1 << (SEGMENT_BITS + 11);

fn pack_head(generation: u32, state: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(state)
}

fn generation_of(head: u64) -> u32 {
    (head >> 32) as u32
}

fn state_of(head: u64) -> u32 {
    head as u32
}

fn status_of(state: u32) -> TokenStatus {
    match state {
        WAITING => TokenStatus::Waiting,
        ACTIVE => TokenStatus::Active,
        _ => TokenStatus::Expired,
    }
}

/// Bits of `last_seen` that carry the low bits of the generation whose
/// token recorded the poll (see [`Slot::last_seen`]).
const SEEN_TAG_BITS: u32 = 16;
const SEEN_TAG_MASK: u64 = (1 << SEEN_TAG_BITS) - 1;
/// Largest time `last_seen` can carry: 2^47 ms, about 4,400 years either
/// side of the epoch.
const SEEN_MAX_MS: i64 = (1 << (63 - SEEN_TAG_BITS)) - 1;

fn pack_seen(at_ms: TimestampMs, generation: u32) -> u64 {
    ((at_ms.clamp(-SEEN_MAX_MS, SEEN_MAX_MS) as u64) << SEEN_TAG_BITS) | (u64::from(generation) & SEEN_TAG_MASK)
}

fn seen_ms(seen: u64) -> TimestampMs {
    (seen as i64) >> SEEN_TAG_BITS
}

fn seen_by(seen: u64, generation: u32) -> bool {
    seen & SEEN_TAG_MASK == u64::from(generation) & SEEN_TAG_MASK
}

/// One token's place: a cache line, so that a lookup reads one line.
///
/// Seqlock: `secret`, `member` and `seq` belong to the generation in `head`
/// and are only written while the generation is odd (the slot is free),
/// under the `fifo` lock. `state` (in `head`), `rank`, `active_until_ms` and
/// `last_seen` change during a token's life, each on its own, as they did
/// when every token had its own allocation.
#[repr(align(64))]
struct Slot {
    /// `generation << 32 | state`. State changes are compare-exchanges on
    /// the whole word, so they can only apply to the token they were meant
    /// for.
    head: AtomicU64,
    secret: [AtomicU64; 2],
    member: AtomicU64,
    seq: AtomicU64,
    rank: AtomicU64,
    active_until_ms: AtomicI64,
    /// The last poll: `at_ms << 16 | (generation & 0xffff)`. A `status` that
    /// checked its token, then stalled past the token's purge (at least one
    /// token TTL later) and the slot's reuse, stores a poll tagged with the
    /// old generation into the new token's slot; the tick sees the foreign
    /// tag and counts it as a poll at that tick, so such a race can only
    /// keep a WAITING token one idle timeout longer, never expire it early.
    last_seen: AtomicU64,
}

/// A token as [`Slot::fill`] writes it.
struct NewToken {
    generation: u32,
    secret: [u8; 16],
    member: MemberId,
    seq: u64,
    rank: u64,
    state: u32,
    active_until_ms: TimestampMs,
    last_seen_ms: TimestampMs,
}

/// What a read of a slot saw, all of one generation.
#[derive(Clone, Copy)]
struct SlotView {
    generation: u32,
    state: u32,
    secret: [u64; 2],
    member: MemberId,
    rank: u64,
    active_until_ms: TimestampMs,
}

impl Slot {
    fn fresh() -> Self {
        Self {
            head: AtomicU64::new(pack_head(FRESH_GENERATION, FREE)),
            secret: [AtomicU64::new(0), AtomicU64::new(0)],
            member: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            rank: AtomicU64::new(0),
            active_until_ms: AtomicI64::new(0),
            last_seen: AtomicU64::new(0),
        }
    }

    /// Seqlock read. `None` unless the slot held the token of `generation`
    /// (even) from before the fields were read until after.
    #[inline]
    fn read(&self, generation: u32) -> Option<SlotView> {
        let head = self.head.load(Ordering::Acquire);
        let view = SlotView {
            generation: generation_of(head),
            state: state_of(head),
            secret: [
                self.secret[0].load(Ordering::Relaxed),
                self.secret[1].load(Ordering::Relaxed),
            ],
            member: self.member.load(Ordering::Relaxed),
            rank: self.rank.load(Ordering::Relaxed),
            active_until_ms: self.active_until_ms.load(Ordering::Relaxed),
        };
        // Orders the field loads above before the second load of `head`: if
        // any of them saw a refill's store, this load sees the odd
        // generation the purge stored before that refill.
        fence(Ordering::Acquire);
        let again = generation_of(self.head.load(Ordering::Relaxed));
        let held = (view.generation == generation) & (generation & 1 == 0) & (again == generation);
        held.then_some(view)
    }

    /// Reads the token `token` names, if this slot still holds it. The
    /// secret is compared in constant time (the generation, not secret, may
    /// be compared any way).
    #[inline]
    fn read_token(&self, token: &TokenId) -> Option<SlotView> {
        let view = self.read(token.generation)?;
        let [a, b] = token.secret_words();
        let differs = (view.secret[0] ^ a) | (view.secret[1] ^ b);
        (std::hint::black_box(differs) == 0).then_some(view)
    }

    /// Writes a token into this free slot (under the `fifo` lock) and
    /// publishes it: readers see it whole once they see its even generation.
    fn fill(&self, token: &NewToken) {
        debug_assert!(
            generation_of(self.head.load(Ordering::Relaxed)) & 1 == 1,
            "only a free slot is filled"
        );
        debug_assert!(token.generation & 1 == 0, "a token's generation is even");
        // The slot's generation went odd when it was freed (under the same
        // lock): this fence makes a reader that sees any store below also
        // see that odd generation (or a later one) on its second load.
        fence(Ordering::Release);
        let [a, b] = secret_words(&token.secret);
        self.secret[0].store(a, Ordering::Relaxed);
        self.secret[1].store(b, Ordering::Relaxed);
        self.member.store(token.member, Ordering::Relaxed);
        self.seq.store(token.seq, Ordering::Relaxed);
        self.rank.store(token.rank, Ordering::Relaxed);
        self.active_until_ms.store(token.active_until_ms, Ordering::Relaxed);
        self.last_seen
            .store(pack_seen(token.last_seen_ms, token.generation), Ordering::Relaxed);
        self.head
            .store(pack_head(token.generation, token.state), Ordering::Release);
    }

    /// Forgets the token of `generation` (under the `fifo` lock): its id
    /// stops matching at once.
    fn free(&self, generation: u32) {
        self.head
            .store(pack_head(generation.wrapping_add(1), FREE), Ordering::Release);
    }

    /// The token of `at` as issued, for journal events. Only for a token
    /// the caller holds a reference to, so the slot is not refilled meanwhile.
    fn token_id(&self, at: SlotRef) -> TokenId {
        let words = [
            self.secret[0].load(Ordering::Relaxed),
            self.secret[1].load(Ordering::Relaxed),
        ];
        TokenId::from_words(at, words)
    }

    /// The state of the token of `generation`; `None` once it is gone.
    fn state(&self, generation: u32) -> Option<u32> {
        let head = self.head.load(Ordering::Acquire);
        (generation_of(head) == generation).then_some(state_of(head))
    }

    /// Moves the token of `generation` from `from` to `to`; false if it is
    /// not in `from` (or not in this slot any more).
    fn transition(&self, generation: u32, from: u32, to: u32) -> bool {
        self.head
            .compare_exchange(
                pack_head(generation, from),
                pack_head(generation, to),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    fn record_poll(&self, generation: u32, now_ms: TimestampMs) {
        self.last_seen.store(pack_seen(now_ms, generation), Ordering::Relaxed);
    }

    /// When the token of `generation` was last polled. A poll recorded by a
    /// stale reader for an older token of this slot counts as a poll at
    /// `now_ms`, and is rewritten so (see [`Slot::last_seen`]).
    fn last_seen_ms(&self, generation: u32, now_ms: TimestampMs) -> TimestampMs {
        let seen = self.last_seen.load(Ordering::Relaxed);
        if seen_by(seen, generation) {
            seen_ms(seen)
        } else {
            self.record_poll(generation, now_ms);
            now_ms
        }
    }
}

/// A slot and the generation of the token the holder means: what the line,
/// the indexes and `by_member` keep instead of the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SlotRef {
    slot: u32,
    generation: u32,
}

/// 2 MiB of slots, aligned to 2 MiB so that the kernel can back it with one
/// transparent huge page. Lookups land on random slots of a large line: with
/// 4 KiB pages nearly every one also missed the TLB (a two-level page walk
/// in a VM); with huge pages 1,000,000 tokens span 31 TLB entries
/// (docs/PERFORMANCE.md, `queue`: +31% and +66% status lookups/s in two
/// same-minute pairs with the pages forced by the allocator).
#[repr(C, align(2097152))]
struct Segment {
    slots: [Slot; SEGMENT_SLOTS],
}

const SEGMENT_BYTES: usize = std::mem::size_of::<Segment>();
const _: () = assert!(SEGMENT_BYTES == 2 << 20, "a segment is one 2 MiB huge page");

impl Segment {
    /// A segment of fresh slots, asked to be backed by a huge page before
    /// its memory is first touched (a hint: without transparent huge pages
    /// it is ordinary memory).
    fn new() -> Box<Self> {
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
fn advise_huge_pages(start: *mut u8, len: usize) {
    // SAFETY: the range is one live allocation of `len` bytes that this
    // function's caller owns, aligned to 2 MiB (a multiple of the page
    // size); MADV_HUGEPAGE changes only how the kernel backs it, never its
    // contents or its mapping.
    unsafe {
        libc::madvise(start.cast::<libc::c_void>(), len, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_start: *mut u8, _len: usize) {}

/// Every slot, in segments allocated on demand and kept for the queue's life.
struct Slab {
    segments: Box<[OnceLock<Box<Segment>>]>,
    /// Slots handed out so far (the high-water mark); each is in an
    /// allocated segment. Grows under the `fifo` lock.
    len: AtomicU32,
}

impl Slab {
    fn new() -> Self {
        Self {
            segments: (0..MAX_SEGMENTS).map(|_| OnceLock::new()).collect(),
            len: AtomicU32::new(0),
        }
    }

    fn len(&self) -> u32 {
        self.len.load(Ordering::Acquire)
    }

    /// The slot, if its segment exists (a slot above `len` is fresh: no id
    /// matches it).
    #[inline]
    fn get(&self, slot: u32) -> Option<&Slot> {
        let segment = self.segments.get((slot >> SEGMENT_BITS) as usize)?.get()?;
        segment.slots.get((slot & SEGMENT_MASK) as usize)
    }

    /// A slot below `len` (one the queue handed out).
    fn at(&self, slot: u32) -> &Slot {
        debug_assert!(slot < self.len(), "only handed-out slots are held");
        // `grow` allocates a slot's segment before `len` covers the slot,
        // and segments are never dropped while the slab lives.
        self.get(slot).expect("a handed-out slot lives in an allocated segment")
    }

    /// Hands out the next never-used slot (under the `fifo` lock); `None`
    /// when [`MAX_TOKENS`] are out.
    fn grow(&self) -> Option<u32> {
        let slot = self.len.load(Ordering::Relaxed);
        if slot >= MAX_TOKENS {
            return None;
        }
        self.segments[(slot >> SEGMENT_BITS) as usize].get_or_init(Segment::new);
        self.len.store(slot + 1, Ordering::Release);
        Some(slot)
    }
}

/// What a client is told about its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenView {
    pub member: MemberId,
    pub status: TokenStatus,
    /// 1 = next to be admitted; 0 once ACTIVE (or EXPIRED).
    pub position: u64,
    pub estimated_wait_seconds: u64,
    pub active_until_ms: Option<TimestampMs>,
}

/// The result of asking for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    pub token: TokenId,
    pub view: TokenView,
    /// False when the member's live token was returned again.
    pub created: bool,
    pub pos: Option<JournalPos>,
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    pub admitted: u32,
    pub expired_active: u32,
    pub expired_idle: u32,
    pub purged: u32,
}

/// A token as stored in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub token: TokenId,
    pub member: MemberId,
    pub seq: u64,
    pub status: TokenStatus,
    pub active_until_ms: TimestampMs,
    pub last_seen_ms: TimestampMs,
}

/// Tokens the line's close-up pass renumbers while holding the `fifo` lock
/// at most: then the lock is handed to any waiting `issue` and taken back.
pub const CLOSE_UP_SLICE: usize = 4_096;

struct Fifo {
    waiting: VecDeque<SlotRef>,
    /// Every WAITING token by the idle deadline it had when indexed (a
    /// min-heap); entries of tokens that left the line are dropped when due.
    idle_index: BinaryHeap<Reverse<IdleDeadline>>,
    /// Slots whose token was purged, refilled before the slab grows (the
    /// last freed first: its line is the likeliest to be cached).
    free: Vec<u32>,
    next_seq: u64,
    next_rank: u64,
}

/// When a token would expire if it is not polled again, as last indexed.
/// Ordered by deadline, then issue order (`seq` is unique per token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct IdleDeadline {
    at_ms: TimestampMs,
    seq: u64,
    token: SlotRef,
}

/// Tick-only bookkeeping: ACTIVE tokens in admission order (so by
/// `active_until`) and EXPIRED ones kept answerable until purged.
struct Ticking {
    active: VecDeque<SlotRef>,
    expired: VecDeque<ExpiredToken>,
}

#[derive(Debug, Clone, Copy)]
struct ExpiredToken {
    token: SlotRef,
    member: MemberId,
    at_ms: TimestampMs,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct QueueCounters {
    pub admitted_total: AtomicU64,
    pub expired_total: AtomicU64,
    pub issued_total: AtomicU64,
}

pub struct WaitingQueue {
    settings: QueueSettings,
    slab: Slab,
    /// The member's latest token: enforces one live token per member. An
    /// entry is removed (by the purge) before its slot is freed, so while
    /// `issue` holds a member's entry, the slot it names keeps its token.
    by_member: DashMap<MemberId, SlotRef, FxBuildHasher>,
    /// The line, the free slots and every slot write. Lock order: `ticking`
    /// before `fifo`, a `by_member` entry before `fifo`, and no `by_member`
    /// entry is taken while `fifo` is held.
    fifo: Mutex<Fifo>,
    ticking: Mutex<Ticking>,
    head_rank: AtomicU64,
    waiting_count: AtomicU64,
    active_count: AtomicU64,
    counters: QueueCounters,
    sink: Arc<dyn EventSink>,
}

impl WaitingQueue {
    pub fn new(settings: QueueSettings, sink: Arc<dyn EventSink>) -> Self {
        Self {
            settings,
            slab: Slab::new(),
            by_member: DashMap::with_hasher(FxBuildHasher),
            fifo: Mutex::new(Fifo {
                waiting: VecDeque::new(),
                idle_index: BinaryHeap::new(),
                free: Vec::new(),
                next_seq: 1,
                next_rank: 1,
            }),
            ticking: Mutex::new(Ticking {
                active: VecDeque::new(),
                expired: VecDeque::new(),
            }),
            head_rank: AtomicU64::new(0),
            waiting_count: AtomicU64::new(0),
            active_count: AtomicU64::new(0),
            counters: QueueCounters::default(),
            sink,
        }
    }

    pub fn settings(&self) -> QueueSettings {
        self.settings
    }

    pub fn waiting(&self) -> u64 {
        self.waiting_count.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> u64 {
        self.active_count.load(Ordering::Relaxed)
    }

    pub fn counters(&self) -> &QueueCounters {
        &self.counters
    }

    /// The member's live token, or a new one at the back of the line.
    /// Asking again counts as a poll.
    pub fn issue(&self, member: MemberId, now_ms: TimestampMs) -> Result<Issued, Unavailable> {
        match self.by_member.entry(member) {
            Entry::Occupied(mut entry) => {
                if let Some(issued) = self.reissue(*entry.get(), now_ms) {
                    return Ok(issued);
                }
                let issued = self.enqueue(member, now_ms)?;
                entry.insert(issued.token.slot_ref());
                Ok(issued)
            }
            Entry::Vacant(entry) => {
                let issued = self.enqueue(member, now_ms)?;
                entry.insert(issued.token.slot_ref());
                Ok(issued)
            }
        }
    }

    /// The member's token again, if it is still live (a poll).
    fn reissue(&self, latest: SlotRef, now_ms: TimestampMs) -> Option<Issued> {
        let slot = self.slab.get(latest.slot)?;
        let view = slot.read(latest.generation)?;
        if view.state == EXPIRED {
            return None;
        }
        slot.record_poll(latest.generation, now_ms);
        Some(Issued {
            token: TokenId::from_words(latest, view.secret),
            view: self.view(&view),
            created: false,
            pos: None,
        })
    }

    fn enqueue(&self, member: MemberId, now_ms: TimestampMs) -> Result<Issued, Unavailable> {
        if !self.sink.accepting() {
            return Err(Unavailable);
        }
        // Drawn before the lock; the slot and place in line are taken under it.
        let secret: [u8; 16] = rand::rng().random();
        let mut fifo = self.fifo.lock();
        let index = match fifo.free.pop() {
            Some(index) => index,
            None => self.slab.grow().ok_or(Unavailable)?,
        };
        let slot = self.slab.at(index);
        let generation = generation_of(slot.head.load(Ordering::Relaxed)).wrapping_add(1);
        let seq = fifo.next_seq;
        let rank = fifo.next_rank;
        fifo.next_seq += 1;
        fifo.next_rank += 1;
        slot.fill(&NewToken {
            generation,
            secret,
            member,
            seq,
            rank,
            state: WAITING,
            active_until_ms: 0,
            last_seen_ms: now_ms,
        });
        let at = SlotRef {
            slot: index,
            generation,
        };
        fifo.waiting.push_back(at);
        fifo.idle_index.push(Reverse(IdleDeadline {
            at_ms: now_ms.saturating_add(self.settings.idle_timeout_ms),
            seq,
            token: at,
        }));
        let token = TokenId::new(index, generation, secret);
        // Appended under the fifo lock: the journal sees tokens in line order.
        let pos = self.sink.append(Event::TokenIssued {
            token,
            member,
            seq,
            at_ms: now_ms,
        });
        drop(fifo);
        self.waiting_count.fetch_add(1, Ordering::Relaxed);
        self.counters.issued_total.fetch_add(1, Ordering::Relaxed);
        let position = rank.saturating_sub(self.head_rank.load(Ordering::Relaxed)).max(1);
        Ok(Issued {
            token,
            view: TokenView {
                member,
                status: TokenStatus::Waiting,
                position,
                estimated_wait_seconds: self.estimated_wait_seconds(position),
                active_until_ms: None,
            },
            created: true,
            pos: Some(pos),
        })
    }

    /// Looks a token up and records the poll. `None` for an unknown token.
    #[inline]
    pub fn status(&self, token: &TokenId, now_ms: TimestampMs) -> Option<TokenView> {
        let slot = self.slab.get(token.slot)?;
        let view = slot.read_token(token)?;
        if view.state == WAITING {
            // May land after a purge and refill of the slot: see `Slot::last_seen`.
            slot.record_poll(token.generation, now_ms);
        }
        Some(self.view(&view))
    }

    /// Looks a token up without counting it as a poll.
    #[inline]
    pub fn peek(&self, token: &TokenId) -> Option<TokenView> {
        let view = self.slab.get(token.slot)?.read_token(token)?;
        Some(self.view(&view))
    }

    fn view(&self, slot: &SlotView) -> TokenView {
        let status = status_of(slot.state);
        let (position, estimated_wait_seconds, active_until_ms) = match status {
            TokenStatus::Waiting => {
                let position = slot.rank.saturating_sub(self.head_rank.load(Ordering::Relaxed)).max(1);
                (position, self.estimated_wait_seconds(position), None)
            }
            TokenStatus::Active => (0, 0, Some(slot.active_until_ms)),
            TokenStatus::Expired => (0, 0, None),
        };
        TokenView {
            member: slot.member,
            status,
            position,
            estimated_wait_seconds,
            active_until_ms,
        }
    }

    /// Ticks needed to reach `position` at the admission rate, in seconds
    /// (rounded up). It ignores the active cap, which depends on when
    /// ACTIVE members finish.
    fn estimated_wait_seconds(&self, position: u64) -> u64 {
        let per_tick = u64::from(self.settings.admit_per_tick.max(1));
        let ticks = position.div_ceil(per_tick);
        (ticks * self.settings.tick_ms.max(0) as u64).div_ceil(1000)
    }

    /// Expires the token of a member who just paid. The payment event already
    /// records the expiry, so nothing is journaled here. Returns whether the
    /// token was ACTIVE.
    pub fn expire_paid(&self, token: &TokenId) -> bool {
        let Some(slot) = self.slab.get(token.slot) else {
            return false;
        };
        if slot.read_token(token).is_none() {
            return false;
        }
        // The exchange names the generation: it cannot hit a later token.
        let was_active = slot.transition(token.generation, ACTIVE, EXPIRED);
        if was_active {
            self.active_count.fetch_sub(1, Ordering::Relaxed);
            self.counters.expired_total.fetch_add(1, Ordering::Relaxed);
        }
        was_active
    }

    /// One admission tick at `now_ms`: expire ACTIVE tokens past their TTL
    /// and WAITING ones idle too long, admit the oldest WAITING ones under
    /// the cap, and forget EXPIRED ones older than the TTL.
    pub fn tick(&self, now_ms: TimestampMs) -> TickReport {
        let mut report = TickReport::default();
        let mut ticking = self.ticking.lock();
        report.expired_active = self.expire_active(&mut ticking, now_ms);
        let mut fifo = self.fifo.lock();
        let (expired_idle, first_gap) = self.expire_idle(&mut fifo, &mut ticking, now_ms);
        report.expired_idle = expired_idle;
        if let Some(first_rank) = first_gap {
            self.close_up(&mut fifo, first_rank);
        }
        report.admitted = self.admit(&mut fifo, &mut ticking, now_ms);
        drop(fifo);
        report.purged = self.purge(&mut ticking, now_ms);
        report
    }

    fn expire_active(&self, ticking: &mut Ticking, now_ms: TimestampMs) -> u32 {
        let mut expired = 0;
        while let Some(&at) = ticking.active.front() {
            // An ACTIVE token's slot is not freed before it leaves `active`.
            let slot = self.slab.at(at.slot);
            let state = slot.state(at.generation);
            if state == Some(ACTIVE) && slot.active_until_ms.load(Ordering::Relaxed) > now_ms {
                break;
            }
            ticking.active.pop_front();
            if slot.transition(at.generation, ACTIVE, EXPIRED) {
                self.active_count.fetch_sub(1, Ordering::Relaxed);
                self.counters.expired_total.fetch_add(1, Ordering::Relaxed);
                self.sink.append(Event::TokenExpired {
                    token: slot.token_id(at),
                    at_ms: now_ms,
                });
                expired += 1;
            }
            ticking.expired.push_back(ExpiredToken {
                token: at,
                member: slot.member.load(Ordering::Relaxed),
                at_ms: now_ms,
            });
        }
        expired
    }

    /// Expires the WAITING tokens not polled within the idle timeout, from
    /// the idle index (no walk of the line), journaled in line order. They
    /// stay in `fifo.waiting` as EXPIRED until [`Self::close_up`] removes
    /// them; returns how many expired and the lowest rank among them.
    fn expire_idle(&self, fifo: &mut Fifo, ticking: &mut Ticking, now_ms: TimestampMs) -> (u32, Option<u64>) {
        let timeout = self.settings.idle_timeout_ms;
        let mut due: Vec<IdleDeadline> = Vec::new();
        while let Some(Reverse(next)) = fifo.idle_index.peek() {
            if next.at_ms > now_ms {
                break;
            }
            let Some(Reverse(indexed)) = fifo.idle_index.pop() else {
                break;
            };
            let slot = self.slab.at(indexed.token.slot);
            if slot.state(indexed.token.generation) != Some(WAITING) {
                continue; // admitted, expired or purged since: it leaves the index
            }
            let deadline = slot
                .last_seen_ms(indexed.token.generation, now_ms)
                .saturating_add(timeout);
            if deadline > now_ms {
                // Polled since it was indexed: wait for its new deadline.
                fifo.idle_index.push(Reverse(IdleDeadline {
                    at_ms: deadline,
                    ..indexed
                }));
                continue;
            }
            due.push(indexed);
        }
        // The journal sees the expiries in line order, as a walk would.
        due.sort_unstable_by_key(|indexed| indexed.seq);
        let mut expired = 0;
        let mut first_rank = None;
        for IdleDeadline { token: at, .. } in due {
            let slot = self.slab.at(at.slot);
            if slot.transition(at.generation, WAITING, EXPIRED) {
                self.sink.append(Event::TokenExpired {
                    token: slot.token_id(at),
                    at_ms: now_ms,
                });
                ticking.expired.push_back(ExpiredToken {
                    token: at,
                    member: slot.member.load(Ordering::Relaxed),
                    at_ms: now_ms,
                });
                first_rank.get_or_insert(slot.rank.load(Ordering::Relaxed));
                expired += 1;
            }
        }
        if expired > 0 {
            self.waiting_count.fetch_sub(u64::from(expired), Ordering::Relaxed);
            self.counters
                .expired_total
                .fetch_add(u64::from(expired), Ordering::Relaxed);
        }
        (expired, first_rank)
    }

    /// Removes the EXPIRED tokens from the line and gives the WAITING ones
    /// behind the first of them (rank `first_rank`) consecutive ranks again,
    /// [`CLOSE_UP_SLICE`] at a time: between slices the `fifo` lock goes to
    /// any waiting `issue`, which appends at the back (the pass reaches its
    /// tokens too). Meanwhile ranks still increase along the line; tokens not
    /// yet renumbered show a position too high by the gaps ahead of them.
    /// Only the tick (under `ticking`) changes the line's order or status,
    /// and only the tick's purge frees slots, so nothing else moves while
    /// the lock is handed over.
    fn close_up(&self, fifo: &mut MutexGuard<'_, Fifo>, first_rank: u64) {
        let slab = &self.slab;
        let start = fifo
            .waiting
            .partition_point(|at| slab.at(at.slot).rank.load(Ordering::Relaxed) < first_rank);
        let mut rank = match start.checked_sub(1) {
            Some(before) => slab.at(fifo.waiting[before].slot).rank.load(Ordering::Relaxed),
            None => self.head_rank.load(Ordering::Relaxed),
        };
        let (mut read, mut write) = (start, start);
        loop {
            let end = (read + CLOSE_UP_SLICE).min(fifo.waiting.len());
            while read < end {
                let at = fifo.waiting[read];
                let slot = slab.at(at.slot);
                if slot.state(at.generation) == Some(WAITING) {
                    rank += 1;
                    slot.rank.store(rank, Ordering::Relaxed);
                    fifo.waiting.swap(write, read);
                    write += 1;
                }
                read += 1;
            }
            if read == fifo.waiting.len() {
                break;
            }
            MutexGuard::bump(fifo);
        }
        fifo.waiting.truncate(write);
        fifo.next_rank = rank + 1;
    }

    /// Gives the whole line consecutive ranks (after a restore).
    fn renumber(&self, fifo: &mut Fifo) {
        let mut rank = self.head_rank.load(Ordering::Relaxed) + 1;
        for at in &fifo.waiting {
            self.slab.at(at.slot).rank.store(rank, Ordering::Relaxed);
            rank += 1;
        }
        fifo.next_rank = rank;
    }

    fn admit(&self, fifo: &mut Fifo, ticking: &mut Ticking, now_ms: TimestampMs) -> u32 {
        let mut admitted = 0;
        while admitted < self.settings.admit_per_tick
            && self.active_count.load(Ordering::Relaxed) < u64::from(self.settings.max_active)
        {
            let Some(at) = fifo.waiting.pop_front() else {
                break;
            };
            let slot = self.slab.at(at.slot);
            self.head_rank
                .store(slot.rank.load(Ordering::Relaxed), Ordering::Relaxed);
            self.waiting_count.fetch_sub(1, Ordering::Relaxed);
            let active_until_ms = now_ms + self.settings.token_ttl_ms;
            slot.active_until_ms.store(active_until_ms, Ordering::Relaxed);
            if !slot.transition(at.generation, WAITING, ACTIVE) {
                continue;
            }
            self.active_count.fetch_add(1, Ordering::Relaxed);
            self.sink.append(Event::TokenAdmitted {
                token: slot.token_id(at),
                active_until_ms,
            });
            ticking.active.push_back(at);
            admitted += 1;
        }
        self.counters
            .admitted_total
            .fetch_add(u64::from(admitted), Ordering::Relaxed);
        admitted
    }

    /// Forgets the EXPIRED tokens older than the TTL: first their members'
    /// `by_member` entries (without the `fifo` lock: `issue` takes an entry
    /// and then `fifo`), then, under `fifo`, their slots go free.
    fn purge(&self, ticking: &mut Ticking, now_ms: TimestampMs) -> u32 {
        let mut purged: Vec<SlotRef> = Vec::new();
        while let Some(&expired) = ticking.expired.front() {
            if expired.at_ms + self.settings.token_ttl_ms > now_ms {
                break;
            }
            ticking.expired.pop_front();
            self.by_member
                .remove_if(&expired.member, |_, latest| *latest == expired.token);
            purged.push(expired.token);
        }
        if !purged.is_empty() {
            let mut fifo = self.fifo.lock();
            for at in &purged {
                self.slab.at(at.slot).free(at.generation);
                fifo.free.push(at.slot);
            }
        }
        purged.len() as u32
    }

    /// Every token the queue still knows, in issue order, for snapshots.
    /// Takes no lock: each slot is read as a seqlock; a slot being refilled
    /// holds a token issued after the copy began, which the journal has.
    pub fn export(&self) -> Vec<TokenRecord> {
        let mut records = Vec::new();
        for index in 0..self.slab.len() {
            let slot = self.slab.at(index);
            loop {
                let generation = generation_of(slot.head.load(Ordering::Acquire));
                if generation & 1 == 1 {
                    break; // free
                }
                let seq = slot.seq.load(Ordering::Relaxed);
                let last_seen = slot.last_seen.load(Ordering::Relaxed);
                // `read` loads the head again after a fence: when it holds,
                // `seq` and `last_seen` above belong to `generation` too.
                let Some(view) = slot.read(generation) else {
                    continue; // purged (or refilled) meanwhile: look again
                };
                let at = SlotRef {
                    slot: index,
                    generation,
                };
                records.push(TokenRecord {
                    token: TokenId::from_words(at, view.secret),
                    member: view.member,
                    seq,
                    status: status_of(view.state),
                    active_until_ms: view.active_until_ms,
                    last_seen_ms: seen_ms(last_seen),
                });
                break;
            }
        }
        records.sort_by_key(|r| r.seq);
        records
    }

    /// Rebuilds the queue from records in any order (recovery, before
    /// serving), into a queue that has held no token yet. Every token goes
    /// back into its own slot with its generation; WAITING tokens keep their
    /// order, ACTIVE ones their `active_until`. Of two records naming one
    /// slot (an old token that was purged, then the slot's next one), the
    /// later generation (then the later issue) wins. Slots below the highest
    /// one restored that hold no token are free.
    pub fn import(&self, records: Vec<TokenRecord>, now_ms: TimestampMs) {
        // Lock order everywhere: `ticking`, then `fifo`.
        let mut ticking = self.ticking.lock();
        let mut fifo = self.fifo.lock();
        assert_eq!(self.slab.len(), 0, "tokens are imported into an unused queue");
        let mut records: Vec<TokenRecord> = records
            .into_iter()
            .filter(|r| {
                let valid = r.token.generation & 1 == 0 && r.token.slot < MAX_TOKENS;
                if !valid {
                    tracing::warn!(seq = r.seq, "a restored queue token names no slot; dropped");
                }
                valid
            })
            .collect();
        records.sort_unstable_by_key(|r| (r.token.slot, r.token.generation, r.seq));
        records.dedup_by(|later, earlier| {
            if later.token.slot == earlier.token.slot {
                std::mem::swap(later, earlier); // keep the later one
                true
            } else {
                false
            }
        });
        let Some(top) = records.last().map(|r| r.token.slot) else {
            return;
        };
        let mut used = vec![false; top as usize + 1];
        while self.slab.len() <= top {
            if self.slab.grow().is_none() {
                break; // unreachable: `top` < MAX_TOKENS was checked above
            }
        }
        records.sort_by_key(|r| r.seq);
        let mut active: Vec<(TimestampMs, SlotRef)> = Vec::new();
        for record in records {
            let at = record.token.slot_ref();
            let slot = self.slab.at(at.slot);
            // A restart counts as a poll: nobody could poll while we were down.
            let last_seen_ms = record.last_seen_ms.max(now_ms);
            slot.fill(&NewToken {
                generation: at.generation,
                secret: record.token.secret,
                member: record.member,
                seq: record.seq,
                rank: 0, // `renumber` below
                state: record.status.code(),
                active_until_ms: record.active_until_ms,
                last_seen_ms,
            });
            used[at.slot as usize] = true;
            fifo.next_seq = fifo.next_seq.max(record.seq + 1);
            self.by_member.insert(record.member, at);
            match record.status {
                TokenStatus::Waiting => {
                    fifo.idle_index.push(Reverse(IdleDeadline {
                        at_ms: last_seen_ms.saturating_add(self.settings.idle_timeout_ms),
                        seq: record.seq,
                        token: at,
                    }));
                    fifo.waiting.push_back(at);
                }
                TokenStatus::Active => active.push((record.active_until_ms, at)),
                TokenStatus::Expired => ticking.expired.push_back(ExpiredToken {
                    token: at,
                    member: record.member,
                    at_ms: now_ms,
                }),
            }
        }
        // Lowest free slot on top, so the first new tokens fill the gaps in order.
        fifo.free = (0..=top).rev().filter(|&slot| !used[slot as usize]).collect();
        active.sort_by_key(|&(active_until_ms, _)| active_until_ms);
        self.active_count.store(active.len() as u64, Ordering::Relaxed);
        ticking.active = active.into_iter().map(|(_, at)| at).collect();
        self.waiting_count.store(fifo.waiting.len() as u64, Ordering::Relaxed);
        self.head_rank.store(0, Ordering::Relaxed);
        self.renumber(&mut fifo);
    }

    /// Panics unless: the cap holds, counters match the tokens, the line is
    /// in issue order with increasing ranks, every slot is either free (and
    /// listed once as free) or holds a token, and no member has two live
    /// tokens.
    pub fn check_invariants(&self) {
        let ticking = self.ticking.lock();
        let fifo = self.fifo.lock();
        let len = self.slab.len();
        let mut live_per_member = std::collections::HashMap::new();
        let mut held = 0u32;
        let mut active = 0u64;
        for index in 0..len {
            let head = self.slab.at(index).head.load(Ordering::Relaxed);
            let generation = generation_of(head);
            if generation & 1 == 1 {
                assert_eq!(state_of(head), FREE, "an odd generation is a free slot");
                continue;
            }
            held += 1;
            let state = state_of(head);
            assert_ne!(state, FREE, "an even generation holds a token");
            active += u64::from(state == ACTIVE);
            if state != EXPIRED {
                *live_per_member
                    .entry(self.slab.at(index).member.load(Ordering::Relaxed))
                    .or_insert(0) += 1;
            }
        }
        let mut free = std::collections::HashSet::new();
        for &slot in &fifo.free {
            assert!(slot < len, "free slots were handed out before");
            assert!(free.insert(slot), "a slot is free once");
            assert_eq!(
                generation_of(self.slab.at(slot).head.load(Ordering::Relaxed)) & 1,
                1,
                "a free slot holds no token"
            );
        }
        assert_eq!(held as usize + free.len(), len as usize, "every slot is free or held");
        assert_eq!(active, self.active(), "the active counter matches the ACTIVE tokens");
        assert!(
            active <= u64::from(self.settings.max_active),
            "never more ACTIVE than the cap"
        );
        assert_eq!(
            fifo.waiting.len() as u64,
            self.waiting(),
            "the waiting counter matches the line"
        );
        let head = self.head_rank.load(Ordering::Relaxed);
        let mut last_seq = 0;
        let mut last_rank = head;
        for at in &fifo.waiting {
            let slot = self.slab.at(at.slot);
            assert_eq!(
                slot.state(at.generation),
                Some(WAITING),
                "only WAITING tokens are in line"
            );
            let seq = slot.seq.load(Ordering::Relaxed);
            assert!(seq > last_seq, "the line is in issue order");
            let rank = slot.rank.load(Ordering::Relaxed);
            assert!(rank > last_rank, "ranks increase along the line");
            last_seq = seq;
            last_rank = rank;
        }
        // Idle expiry is exact only if every WAITING token is indexed no later
        // than its real deadline.
        let mut indexed: std::collections::HashMap<SlotRef, TimestampMs> = std::collections::HashMap::new();
        for Reverse(deadline) in fifo.idle_index.iter() {
            let earliest = indexed.entry(deadline.token).or_insert(deadline.at_ms);
            *earliest = (*earliest).min(deadline.at_ms);
        }
        for at in &fifo.waiting {
            let seen = self.slab.at(at.slot).last_seen.load(Ordering::Relaxed);
            if !seen_by(seen, at.generation) {
                continue; // a stale poll: the tick counts it as one at that tick
            }
            let due = seen_ms(seen).saturating_add(self.settings.idle_timeout_ms);
            assert!(
                indexed.get(at).is_some_and(|&at_ms| at_ms <= due),
                "every WAITING token is in the idle index no later than its deadline"
            );
        }
        for at in ticking.active.iter() {
            assert_ne!(
                self.slab.at(at.slot).state(at.generation),
                Some(WAITING),
                "admitted tokens never wait again"
            );
        }
        for entry in self.by_member.iter() {
            let at = *entry.value();
            let slot = self.slab.get(at.slot);
            assert!(
                slot.is_some_and(
                    |slot| slot.state(at.generation).is_some() && slot.member.load(Ordering::Relaxed) == *entry.key()
                ),
                "a member's latest token is held in its slot until purged"
            );
        }
        assert!(
            live_per_member.values().all(|&n| n == 1),
            "a member has at most one live token"
        );
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemoryJournal;

    fn queue(admit_per_tick: u32, max_active: u32) -> WaitingQueue {
        let settings = QueueSettings {
            tick_ms: 1_000,
            admit_per_tick,
            max_active,
            token_ttl_ms: 600_000,
            idle_timeout_ms: 120_000,
        };
        WaitingQueue::new(settings, Arc::new(MemoryJournal::new()))
    }

    #[test]
    fn tokens_are_unguessable_and_round_trip_in_one_exact_form() {
        let q = queue(10, 10);
        let a = q.issue(1, 0).expect("issued").token;
        let b = q.issue(2, 0).expect("issued").token;
        assert_ne!(a.secret, b.secret, "128 random bits do not repeat");
        let text = a.to_hex();
        assert_eq!(text.len(), 48, "slot, generation and secret as 48 hex digits");
        assert!(text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')), "{text}");
        assert_eq!(TokenId::parse(&text), Some(a));
        assert_eq!(TokenId::from_bytes(&a.to_bytes()), Some(a));
        assert_eq!(
            TokenId::from_bytes(&a.to_bytes()[..23]),
            None,
            "23 bytes are not a token"
        );
        assert!(
            !format!("{a:?}").contains(&text[16..24]),
            "debug output shows no secret"
        );

        let wrong: Vec<String> = vec![
            String::new(),
            "xyz".into(),
            text[..47].to_string(),
            format!("{text}0"),
            text[..32].to_string(), // the old 32-digit form
            text.to_uppercase(),
            format!("0x{}", &text[2..]),
            format!(" {}", &text[1..]),
            format!("{}g", &text[..47]),
            format!("{}+", &text[..47]),
            format!("{}é", &text[..46]), // 48 bytes, 47 characters
        ];
        for text in &wrong {
            assert_eq!(TokenId::parse(text), None, "{text:?} is not a token");
        }
    }

    #[test]
    fn a_purged_tokens_slot_is_reused_and_its_id_stays_unknown() {
        let q = queue(10, 10);
        let old = q.issue(1, 0).expect("issued").token;
        q.tick(1_000); // admitted
        assert!(q.expire_paid(&old));
        q.tick(2_000); // leaves the ACTIVE list as EXPIRED
        assert_eq!(q.peek(&old).map(|v| v.status), Some(TokenStatus::Expired));
        assert_eq!(q.tick(602_000).purged, 1, "purged a TTL after expiry");

        let new = q.issue(2, 602_000).expect("issued").token;
        assert_eq!(new.slot(), old.slot(), "the freed slot is taken again");
        assert_eq!(new.generation(), old.generation() + 2, "with the next generation");
        assert_eq!(q.status(&old, 602_000), None, "the purged id is unknown");
        assert_eq!(q.status(&new, 602_000).map(|v| v.member), Some(2), "the new id works");
        let with_old_secret = TokenId::new(new.slot(), new.generation(), old.secret);
        assert_eq!(
            q.peek(&with_old_secret),
            None,
            "the old secret does not open the new token"
        );
        let one_bit_off = {
            let mut secret = new.secret;
            secret[15] ^= 1;
            TokenId::new(new.slot(), new.generation(), secret)
        };
        assert_eq!(q.peek(&one_bit_off), None, "every secret bit counts");
        let odd = TokenId::new(new.slot(), new.generation() + 1, new.secret);
        assert_eq!(q.peek(&odd), None, "an odd generation names no token");
        assert_eq!(
            q.peek(&TokenId::new(7, 0, [0; 16])),
            None,
            "a never-used slot holds nothing"
        );
        assert_eq!(q.peek(&TokenId::new(u32::MAX, 2, new.secret)), None, "past the slab");
        assert!(!q.expire_paid(&old), "a purged id expires nothing");
        assert_eq!(
            q.issue(1, 602_000).map(|i| i.created),
            Ok(true),
            "member 1 may start again"
        );
        q.check_invariants();
    }

    #[test]
    fn a_restore_puts_every_token_back_in_its_slot() {
        let q = idle_only_queue(Arc::new(MemoryJournal::new()));
        let tokens: Vec<TokenId> = (1..=6).map(|m| q.issue(m, 0).expect("issued").token).collect();
        q.status(&tokens[4], 100_000);
        q.status(&tokens[5], 100_000);
        assert_eq!(q.tick(120_000).expired_idle, 4, "members 1 to 4 never polled");
        q.status(&tokens[4], 700_000);
        q.status(&tokens[5], 700_000);
        assert_eq!(q.tick(720_000).purged, 4, "a TTL later they are forgotten");
        let reused = q.issue(7, 720_000).expect("issued").token;
        assert!(
            tokens[..4].iter().any(|t| t.slot() == reused.slot()),
            "member 7 took a purged slot"
        );

        let restored = idle_only_queue(Arc::new(MemoryJournal::new()));
        restored.import(q.export(), 730_000);
        restored.check_invariants();
        for token in [&tokens[4], &tokens[5], &reused] {
            assert_eq!(
                restored.peek(token),
                q.peek(token),
                "{token:?} answers as before the restart"
            );
        }
        assert_eq!(
            restored.peek(&reused).map(|v| v.position),
            Some(3),
            "the line keeps its order"
        );

        // Slots below the high-water mark that hold no token are free after
        // the restore, with no memory of their generations: a new token may
        // get a purged token's slot and generation, but not its secret.
        let fresh = restored.issue(8, 730_000).expect("issued").token;
        assert_eq!(fresh.slot(), 0, "the lowest free slot is taken first");
        assert_eq!(
            fresh.generation(),
            tokens[0].generation(),
            "slot 0's history is unknown"
        );
        assert_eq!(restored.peek(&tokens[0]), None, "the purged token stays unknown");
        assert_eq!(restored.peek(&fresh).map(|v| (v.member, v.position)), Some((8, 4)));
        restored.check_invariants();

        // A record of a slot's earlier token (a database row kept longer than
        // memory keeps the token) loses to the slot's later token.
        let mut records = restored.export();
        let purged_slot_owner = tokens[..4]
            .iter()
            .position(|t| t.slot() == reused.slot())
            .expect("found above");
        records.push(TokenRecord {
            token: tokens[purged_slot_owner],
            member: purged_slot_owner as MemberId + 1,
            seq: purged_slot_owner as u64 + 1,
            status: TokenStatus::Expired,
            active_until_ms: 0,
            last_seen_ms: 0,
        });
        let again = idle_only_queue(Arc::new(MemoryJournal::new()));
        again.import(records, 740_000);
        assert_eq!(
            again.peek(&tokens[purged_slot_owner]),
            None,
            "the older generation is dropped"
        );
        assert_eq!(again.peek(&reused).map(|v| v.member), Some(7));
        assert_eq!(again.peek(&fresh).map(|v| v.member), Some(8));
        again.check_invariants();
    }

    /// The seqlock alone, hammered: one thread frees and refills one slot as
    /// fast as it can, each generation with its own member and secret; the
    /// other reads whatever generation the slot shows. A read that succeeds
    /// must hold one generation's fields only.
    #[test]
    fn a_slot_read_is_never_torn_by_a_concurrent_refill() {
        // Both sides run at least this much, overlapping.
        const REFILLS: u64 = 200_000;
        const WHOLE_READS: u64 = 200_000;
        let slot = Slot::fresh();
        let token_of = |generation: u32| NewToken {
            generation,
            secret: [generation as u8; 16],
            member: u64::from(generation) * 3,
            seq: u64::from(generation),
            rank: u64::from(generation) * 5,
            state: WAITING,
            active_until_ms: i64::from(generation) * 7,
            last_seen_ms: 0,
        };
        slot.fill(&token_of(2));
        let done = std::sync::atomic::AtomicBool::new(false);
        let whole_so_far = AtomicU64::new(0);
        let (whole, refused) = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let (mut whole, mut refused) = (0u64, 0u64);
                while !done.load(Ordering::Acquire) {
                    whole_so_far.store(whole, Ordering::Relaxed);
                    let generation = generation_of(slot.head.load(Ordering::Relaxed));
                    let Some(view) = slot.read(generation) else {
                        refused += 1;
                        continue;
                    };
                    let expected = token_of(generation);
                    assert_eq!(view.generation, generation);
                    assert_eq!(
                        view.secret,
                        secret_words(&expected.secret),
                        "secret of generation {generation}"
                    );
                    assert_eq!(view.member, expected.member, "member of generation {generation}");
                    assert_eq!(view.rank, expected.rank, "rank of generation {generation}");
                    assert_eq!(view.active_until_ms, expected.active_until_ms);
                    whole += 1;
                }
                (whole, refused)
            });
            let mut generation = 2;
            let mut refills = 0;
            // (A reader that panicked ends the loop: its panic fails the test.)
            while (refills < REFILLS || whole_so_far.load(Ordering::Relaxed) < WHOLE_READS) && !reader.is_finished() {
                slot.free(generation);
                generation = generation.wrapping_add(2);
                slot.fill(&token_of(generation));
                refills += 1;
            }
            done.store(true, Ordering::Release);
            reader.join().expect("no torn read")
        });
        assert!(
            whole >= WHOLE_READS,
            "reads succeeded ({whole} whole, {refused} refused)"
        );
    }

    #[test]
    fn lookups_never_see_a_torn_or_foreign_token_while_slots_are_reused() {
        const PER_ROUND: u64 = 64;
        const ROUNDS: u64 = 400;
        let settings = QueueSettings {
            tick_ms: 1,
            admit_per_tick: PER_ROUND as u32,
            max_active: PER_ROUND as u32,
            token_ttl_ms: 1,
            idle_timeout_ms: 1_000_000,
        };
        let q = WaitingQueue::new(settings, Arc::new(MemoryJournal::new()));
        let published: Mutex<Arc<Vec<(TokenId, MemberId)>>> = Mutex::new(Arc::new(Vec::new()));
        let done = std::sync::atomic::AtomicBool::new(false);
        // Full passes of the reader over the published tokens.
        let passes = AtomicU64::new(0);
        let wait_for_a_whole_pass = || {
            let start = passes.load(Ordering::Acquire);
            while passes.load(Ordering::Acquire) < start + 2 {
                std::thread::yield_now();
            }
        };
        let (seen, unknown) = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let (mut seen, mut unknown) = (0u64, 0u64);
                while !done.load(Ordering::Acquire) {
                    let tokens = Arc::clone(&published.lock());
                    for (token, member) in tokens.iter() {
                        // `status` records polls: the racy store path too.
                        for view in [q.status(token, 0), q.peek(token)] {
                            match view {
                                Some(view) => {
                                    assert_eq!(view.member, *member, "a token shows only its own member");
                                    seen += 1;
                                }
                                None => unknown += 1,
                            }
                        }
                    }
                    passes.fetch_add(1, Ordering::Release);
                }
                (seen, unknown)
            });
            for round in 0..ROUNDS {
                let now = 10 * round as i64;
                let members = round * PER_ROUND + 1..=(round + 1) * PER_ROUND;
                let tokens: Vec<(TokenId, MemberId)> = members
                    .map(|member| (q.issue(member, now).expect("issued").token, member))
                    .collect();
                if round > 0 {
                    assert!(
                        tokens.iter().all(|(t, _)| t.generation() > 2),
                        "round {round} reuses the slots of the rounds before"
                    );
                }
                *published.lock() = Arc::new(tokens);
                wait_for_a_whole_pass(); // the reader saw them live
                q.tick(now); // admits all
                q.tick(now + 1); // TTL over: EXPIRED
                q.tick(now + 2); // purged: the slots are free for the next round
                wait_for_a_whole_pass(); // the reader saw them gone, and
                                         // keeps looking while they are reused
            }
            done.store(true, Ordering::Release);
            reader.join().expect("the reader saw no torn token")
        });
        assert!(seen > 0, "the reader saw tokens while they were live");
        assert!(unknown > 0, "and saw some of them gone");
        q.check_invariants();
    }

    #[test]
    fn a_new_token_waits_until_a_tick_even_in_an_empty_queue() {
        let q = queue(10, 10);
        let issued = q.issue(1, 0).expect("issued");
        assert_eq!(issued.view.status, TokenStatus::Waiting);
        assert_eq!(issued.view.position, 1, "the only token is next");
        q.tick(1_000);
        let view = q.status(&issued.token, 1_000).expect("known");
        assert_eq!(view.status, TokenStatus::Active);
        assert_eq!(view.position, 0, "ACTIVE tokens have position 0");
        assert_eq!(view.active_until_ms, Some(601_000));
        q.check_invariants();
    }

    #[test]
    fn a_member_has_one_live_token() {
        let q = queue(10, 10);
        let first = q.issue(1, 0).expect("issued");
        let again = q.issue(1, 10).expect("issued");
        assert_eq!(first.token, again.token, "asking again returns the same token");
        assert!(!again.created);
        q.tick(1_000);
        q.expire_paid(&first.token);
        let fresh = q.issue(1, 1_001).expect("issued");
        assert_ne!(fresh.token, first.token, "after expiry the member may get a new token");
        q.check_invariants();
    }

    #[test]
    fn admission_is_fifo_limited_per_tick_and_capped() {
        let q = queue(2, 3);
        let tokens: Vec<_> = (1..=5).map(|m| q.issue(m, 0).expect("issued").token).collect();
        assert_eq!(q.status(&tokens[4], 0).map(|v| v.position), Some(5));
        assert_eq!(
            q.status(&tokens[4], 0).map(|v| v.estimated_wait_seconds),
            Some(3),
            "5 at 2/s: 3 ticks"
        );
        assert_eq!(q.tick(1_000).admitted, 2, "at most admit_per_tick per tick");
        assert_eq!(
            q.status(&tokens[2], 1_000).map(|v| v.position),
            Some(1),
            "the third is next"
        );
        assert_eq!(q.tick(2_000).admitted, 1, "the cap of 3 ACTIVE stops admission");
        let statuses: Vec<_> = tokens
            .iter()
            .map(|t| q.status(t, 2_000).expect("known").status)
            .collect();
        assert_eq!(
            statuses,
            vec![
                TokenStatus::Active,
                TokenStatus::Active,
                TokenStatus::Active,
                TokenStatus::Waiting,
                TokenStatus::Waiting
            ],
            "admitted in issue order"
        );
        q.expire_paid(&tokens[0]);
        assert_eq!(q.tick(3_000).admitted, 1, "a paid token frees a place under the cap");
        q.check_invariants();
    }

    #[test]
    fn active_tokens_expire_after_the_ttl() {
        let q = queue(10, 10);
        let token = q.issue(1, 0).expect("issued").token;
        q.tick(1_000);
        assert_eq!(q.tick(600_999).expired_active, 0, "still inside the TTL");
        assert_eq!(q.tick(601_000).expired_active, 1, "expired at admission + TTL");
        assert_eq!(q.status(&token, 601_000).map(|v| v.status), Some(TokenStatus::Expired));
        assert_eq!(q.active(), 0);
        q.check_invariants();
    }

    #[test]
    fn idle_waiting_tokens_expire_and_the_line_closes_up() {
        let q = queue(1, 1);
        let a = q.issue(1, 0).expect("issued").token;
        let idle = q.issue(2, 0).expect("issued").token;
        let c = q.issue(3, 0).expect("issued").token;
        q.tick(1_000); // admits a
        q.status(&c, 100_000);
        let report = q.tick(120_000);
        assert_eq!(
            report.expired_idle, 1,
            "the token not polled for the idle timeout expires"
        );
        assert_eq!(q.status(&idle, 120_000).map(|v| v.status), Some(TokenStatus::Expired));
        assert_eq!(q.status(&c, 120_000).map(|v| v.position), Some(1), "the line closes up");
        assert_eq!(q.status(&a, 120_000).map(|v| v.status), Some(TokenStatus::Active));
        q.check_invariants();
    }

    /// A queue that never admits, so that only idle expiry moves the line.
    fn idle_only_queue(journal: Arc<MemoryJournal>) -> WaitingQueue {
        let settings = QueueSettings {
            tick_ms: 1_000,
            admit_per_tick: 0,
            max_active: 0,
            token_ttl_ms: 600_000,
            idle_timeout_ms: 120_000,
        };
        WaitingQueue::new(settings, journal)
    }

    #[test]
    fn idle_expiry_is_exact_to_the_millisecond_of_the_last_poll() {
        let q = idle_only_queue(Arc::new(MemoryJournal::new()));
        let a = q.issue(1, 0).expect("issued").token;
        let b = q.issue(2, 0).expect("issued").token;
        let c = q.issue(3, 10).expect("issued").token;
        q.status(&b, 50_000);
        let status = |token: &TokenId| q.peek(token).map(|v| v.status);

        assert_eq!(q.tick(119_999).expired_idle, 0, "nobody is idle for 120 s yet");
        assert_eq!(q.tick(120_000).expired_idle, 1, "a, never polled, expires at 120 s");
        assert_eq!(status(&a), Some(TokenStatus::Expired));
        assert_eq!(q.tick(120_009).expired_idle, 0, "c was issued at 10 ms");
        assert_eq!(q.tick(120_010).expired_idle, 1, "c expires 120 s after its issue");
        assert_eq!(status(&c), Some(TokenStatus::Expired));
        assert_eq!(q.tick(169_999).expired_idle, 0, "b's poll at 50 s moved its deadline");
        assert_eq!(status(&b), Some(TokenStatus::Waiting));
        assert_eq!(q.peek(&b).map(|v| v.position), Some(1), "b is first in line now");
        assert_eq!(q.tick(170_000).expired_idle, 1, "b expires 120 s after its poll");
        assert_eq!(q.waiting(), 0);
        q.check_invariants();
    }

    #[test]
    fn tokens_expiring_in_one_tick_are_journaled_in_line_order() {
        let journal = Arc::new(MemoryJournal::new());
        let q = idle_only_queue(Arc::clone(&journal));
        let first = q.issue(1, 0).expect("issued").token;
        let second = q.issue(2, 5).expect("issued").token;
        q.status(&first, 10);
        // Re-indexes `first` behind `second`: its deadline moved to 120_010,
        // after `second`'s 120_005.
        assert_eq!(q.tick(120_000).expired_idle, 0);

        assert_eq!(q.tick(130_000).expired_idle, 2);

        let expired: Vec<TokenId> = journal
            .events()
            .into_iter()
            .filter_map(|event| match event {
                Event::TokenExpired { token, .. } => Some(token),
                _ => None,
            })
            .collect();
        assert_eq!(expired, vec![first, second], "journal order = line order");
        q.check_invariants();
    }

    #[test]
    fn the_line_closes_up_exactly_across_several_slices() {
        let q = idle_only_queue(Arc::new(MemoryJournal::new()));
        let count = 3 * CLOSE_UP_SLICE as u64 + 7;
        let tokens: Vec<TokenId> = (1..=count).map(|m| q.issue(m, 0).expect("issued").token).collect();
        // Every third token (from the first) never polls again.
        for (i, token) in tokens.iter().enumerate() {
            if i % 3 != 0 {
                q.status(token, 60_000);
            }
        }

        let report = q.tick(120_000);

        let stayed: Vec<&TokenId> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, t)| t)
            .collect();
        assert_eq!(u64::from(report.expired_idle), count - stayed.len() as u64);
        for (place, token) in stayed.iter().enumerate() {
            assert_eq!(
                q.peek(token).map(|v| v.position),
                Some(place as u64 + 1),
                "the line closed up: token {place} of those left"
            );
        }
        let late = q.issue(count + 1, 120_000).expect("issued");
        assert_eq!(
            late.view.position,
            stayed.len() as u64 + 1,
            "a new token joins right behind the closed-up line"
        );
        q.check_invariants();
    }

    #[test]
    fn expired_tokens_answer_expired_for_a_ttl_then_are_forgotten() {
        let q = queue(10, 10);
        let token = q.issue(1, 0).expect("issued").token;
        q.tick(1_000);
        q.tick(601_000);
        q.tick(1_200_999);
        assert_eq!(q.peek(&token).map(|v| v.status), Some(TokenStatus::Expired));
        q.tick(1_201_000);
        assert_eq!(q.peek(&token), None, "purged a TTL after expiry");
    }

    #[test]
    fn a_restart_keeps_the_order_and_active_until() {
        let q = queue(1, 10);
        let tokens: Vec<_> = (1..=3).map(|m| q.issue(m, 0).expect("issued").token).collect();
        q.tick(1_000);
        let restored = queue(1, 10);
        restored.import(q.export(), 5_000);
        assert_eq!(restored.peek(&tokens[0]).and_then(|v| v.active_until_ms), Some(601_000));
        assert_eq!(restored.peek(&tokens[1]).map(|v| v.position), Some(1));
        assert_eq!(restored.peek(&tokens[2]).map(|v| v.position), Some(2));
        restored.tick(6_000);
        assert_eq!(restored.peek(&tokens[1]).map(|v| v.status), Some(TokenStatus::Active));
        restored.check_invariants();
    }
}
