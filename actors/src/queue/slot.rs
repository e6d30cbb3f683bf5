//! One slot of the token slab: a token's state packed into a seqlock-read
//! 64-byte cell (`head` = generation and state; the fields; `head` again).
//! Only [`super::WaitingQueue`] writes slots, and only under its `fifo` lock
//! (fill, free) or its tick (admit, expire); readers never wait.

use std::sync::atomic::{fence, AtomicI64, AtomicU64, Ordering};

use super::token::secret_words;
use super::*;

/// Token states as kept in the low half of a slot's `head`.
pub(super) const WAITING: u32 = 0;
pub(super) const ACTIVE: u32 = 1;
pub(super) const EXPIRED: u32 = 2;
/// The slot holds no token (its generation is odd).
pub(super) const FREE: u32 = 3;

/// Generation of a slot never used: odd, so no token id matches it.
pub(super) const FRESH_GENERATION: u32 = 1;

pub(super) fn pack_head(generation: u32, state: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(state)
}

pub(super) fn generation_of(head: u64) -> u32 {
    (head >> 32) as u32
}

pub(super) fn state_of(head: u64) -> u32 {
    head as u32
}

pub(super) fn status_of(state: u32) -> TokenStatus {
    match state {
        WAITING => TokenStatus::Waiting,
        ACTIVE => TokenStatus::Active,
        _ => TokenStatus::Expired,
    }
}

/// Bits of `last_seen` that carry the low bits of the generation whose
/// token recorded the poll (see [`Slot::last_seen`]).
pub(super) const SEEN_TAG_BITS: u32 = 16;
pub(super) const SEEN_TAG_MASK: u64 = (1 << SEEN_TAG_BITS) - 1;
/// Largest time `last_seen` can carry: 2^47 ms, about 4,400 years either
/// side of the epoch.
pub(super) const SEEN_MAX_MS: i64 = (1 << (63 - SEEN_TAG_BITS)) - 1;

pub(super) fn pack_seen(at_ms: TimestampMs, generation: u32) -> u64 {
    ((at_ms.clamp(-SEEN_MAX_MS, SEEN_MAX_MS) as u64) << SEEN_TAG_BITS) | (u64::from(generation) & SEEN_TAG_MASK)
}

pub(super) fn seen_ms(seen: u64) -> TimestampMs {
    (seen as i64) >> SEEN_TAG_BITS
}

pub(super) fn seen_by(seen: u64, generation: u32) -> bool {
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
pub(super) struct Slot {
    /// `generation << 32 | state`. State changes are compare-exchanges on
    /// the whole word, so they can only apply to the token they were meant
    /// for.
    pub(super) head: AtomicU64,
    pub(super) secret: [AtomicU64; 2],
    pub(super) member: AtomicU64,
    pub(super) seq: AtomicU64,
    pub(super) rank: AtomicU64,
    pub(super) active_until_ms: AtomicI64,
    /// The last poll: `at_ms << 16 | (generation & 0xffff)`. A `status` that
    /// checked its token, then stalled past the token's purge (at least one
    /// token TTL later) and the slot's reuse, stores a poll tagged with the
    /// old generation into the new token's slot; the tick sees the foreign
    /// tag and counts it as a poll at that tick, so such a race can only
    /// keep a WAITING token one idle timeout longer, never expire it early.
    pub(super) last_seen: AtomicU64,
}

/// A token as [`Slot::fill`] writes it.
pub(super) struct NewToken {
    pub(super) generation: u32,
    pub(super) secret: [u8; 16],
    pub(super) member: MemberId,
    pub(super) seq: u64,
    pub(super) rank: u64,
    pub(super) state: u32,
    pub(super) active_until_ms: TimestampMs,
    pub(super) last_seen_ms: TimestampMs,
}

/// What a read of a slot saw, all of one generation.
#[derive(Clone, Copy)]
pub(super) struct SlotView {
    pub(super) generation: u32,
    pub(super) state: u32,
    pub(super) secret: [u64; 2],
    pub(super) member: MemberId,
    pub(super) rank: u64,
    pub(super) active_until_ms: TimestampMs,
}

impl Slot {
    pub(super) fn fresh() -> Self {
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
    pub(super) fn read(&self, generation: u32) -> Option<SlotView> {
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
    pub(super) fn read_token(&self, token: &TokenId) -> Option<SlotView> {
        let view = self.read(token.generation)?;
        let [a, b] = token.secret_words();
        let differs = (view.secret[0] ^ a) | (view.secret[1] ^ b);
        (std::hint::black_box(differs) == 0).then_some(view)
    }

    /// Writes a token into this free slot (under the `fifo` lock) and
    /// publishes it: readers see it whole once they see its even generation.
    pub(super) fn fill(&self, token: &NewToken) {
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
    pub(super) fn free(&self, generation: u32) {
        self.head
            .store(pack_head(generation.wrapping_add(1), FREE), Ordering::Release);
    }

    /// The token of `at` as issued, for journal events. Only for a token
    /// the caller holds a reference to, so the slot is not refilled meanwhile.
    pub(super) fn token_id(&self, at: SlotRef) -> TokenId {
        let words = [
            self.secret[0].load(Ordering::Relaxed),
            self.secret[1].load(Ordering::Relaxed),
        ];
        TokenId::from_words(at, words)
    }

    /// The state of the token of `generation`; `None` once it is gone.
    pub(super) fn state(&self, generation: u32) -> Option<u32> {
        let head = self.head.load(Ordering::Acquire);
        (generation_of(head) == generation).then_some(state_of(head))
    }

    /// Moves the token of `generation` from `from` to `to`; false if it is
    /// not in `from` (or not in this slot any more).
    pub(super) fn transition(&self, generation: u32, from: u32, to: u32) -> bool {
        self.head
            .compare_exchange(
                pack_head(generation, from),
                pack_head(generation, to),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    pub(super) fn record_poll(&self, generation: u32, now_ms: TimestampMs) {
        self.last_seen.store(pack_seen(now_ms, generation), Ordering::Relaxed);
    }

    /// When the token of `generation` was last polled. A poll recorded by a
    /// stale reader for an older token of this slot counts as a poll at
    /// `now_ms`, and is rewritten so (see [`Slot::last_seen`]).
    pub(super) fn last_seen_ms(&self, generation: u32, now_ms: TimestampMs) -> TimestampMs {
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
pub(super) struct SlotRef {
    pub(super) slot: u32,
    pub(super) generation: u32,
}

/// Where a token lives, and back: only the queue's slots need this.
impl TokenId {
    pub(super) fn slot_ref(&self) -> SlotRef {
        SlotRef {
            slot: self.slot,
            generation: self.generation,
        }
    }

    pub(super) fn from_words(at: SlotRef, words: [u64; 2]) -> Self {
        let mut secret = [0u8; 16];
        secret[..8].copy_from_slice(&words[0].to_le_bytes());
        secret[8..].copy_from_slice(&words[1].to_le_bytes());
        Self::new(at.slot, at.generation, secret)
    }
}
