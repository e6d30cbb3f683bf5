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
//!
//! Files: `token.rs` (what a [`TokenId`] is), `slot.rs` (one seqlock slot),
//! `slab.rs` (the segments of slots, huge pages, the queue's one `unsafe`),
//! `line.rs` (the line, ranks and the idle index), this file (settings,
//! views, [`WaitingQueue`]: issue, status, expire on payment), `tick.rs`
//! (admission and expiry), `restore.rs` (export, import, invariants).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard};
use rand::Rng;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};

use crate::clock::TimestampMs;
use crate::events::Event;
use crate::sink::{EventSink, Unavailable};
use crate::types::{JournalPos, MemberId};

mod line;
mod restore;
mod slab;
mod slot;
#[cfg(test)]
mod tests;
mod tick;
pub mod token;

pub use line::CLOSE_UP_SLICE;
use line::*;
pub use slab::MAX_TOKENS;
use slab::*;
use slot::*;
pub use token::{TokenId, TOKEN_BYTES, TOKEN_HEX_LEN};

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
}
