//! The line: WAITING tokens in issue order (`Fifo`), ranks for O(1)
//! positions, and the idle-deadline index; plus the tick's own lists
//! (`Ticking`). Plain data guarded by [`super::WaitingQueue`]'s locks.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::*;

/// Tokens the line's close-up pass renumbers while holding the `fifo` lock
/// at most: then the lock is handed to any waiting `issue` and taken back.
pub const CLOSE_UP_SLICE: usize = 4_096;

pub(super) struct Fifo {
    pub(super) waiting: VecDeque<SlotRef>,
    /// Every WAITING token by the idle deadline it had when indexed (a
    /// min-heap); entries of tokens that left the line are dropped when due.
    pub(super) idle_index: BinaryHeap<Reverse<IdleDeadline>>,
    /// Slots whose token was purged, refilled before the slab grows (the
    /// last freed first: its line is the likeliest to be cached).
    pub(super) free: Vec<u32>,
    pub(super) next_seq: u64,
    pub(super) next_rank: u64,
}

/// When a token would expire if it is not polled again, as last indexed.
/// Ordered by deadline, then issue order (`seq` is unique per token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct IdleDeadline {
    pub(super) at_ms: TimestampMs,
    pub(super) seq: u64,
    pub(super) token: SlotRef,
}

/// Tick-only bookkeeping: ACTIVE tokens in admission order (so by
/// `active_until`) and EXPIRED ones kept answerable until purged.
pub(super) struct Ticking {
    pub(super) active: VecDeque<SlotRef>,
    pub(super) expired: VecDeque<ExpiredToken>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ExpiredToken {
    pub(super) token: SlotRef,
    pub(super) member: MemberId,
    pub(super) at_ms: TimestampMs,
}
