//! Engine events and the sink they are appended to.
//!
//! Every state change the engine makes is described by exactly one [`Event`]
//! and appended to an [`EventSink`] by the component that made it, while that
//! component still owns the change (inside the actor's turn, or under the
//! wallet's lock). So the sink sees each component's changes in the order
//! they happened, and a payment — debit, sale, payment record, token expiry —
//! is a single event that persistence commits atomically.
//!
//! The sink hands back a [`JournalPos`]; a caller that must not answer before
//! the change is durable waits for that position with [`EventSink::durable`].

use std::future::Future;
use std::pin::Pin;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::TimestampMs;
use crate::concert::{ConcertInfo, Reservation, ReservationStatus};
use crate::idempotency::IdempotencyRecord;
use crate::queue::TokenId;
use crate::types::{ConcertId, JournalPos, Krw, MemberId, PaymentId, ReservationId};

/// One state change of the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    MemberRegistered {
        member: MemberId,
        name: String,
        key_hash: [u8; 32],
        at_ms: TimestampMs,
    },
    BalanceCharged {
        member: MemberId,
        amount: Krw,
        balance_after: Krw,
        at_ms: TimestampMs,
    },
    ConcertCreated {
        info: ConcertInfo,
    },
    SeatsHeld {
        reservation: Reservation,
    },
    HoldReleased {
        concert: ConcertId,
        reservation: ReservationId,
        /// `Cancelled` or `Expired`.
        status: ReservationStatus,
        at_ms: TimestampMs,
    },
    /// Debit, sale, payment record and token expiry, all or nothing.
    PaymentCompleted {
        payment: PaymentId,
        concert: ConcertId,
        reservation: ReservationId,
        member: MemberId,
        amount: Krw,
        balance_after: Krw,
        token: Option<TokenId>,
        at_ms: TimestampMs,
    },
    TokenIssued {
        token: TokenId,
        member: MemberId,
        /// Issue order: admission is FIFO by this number.
        seq: u64,
        at_ms: TimestampMs,
    },
    TokenAdmitted {
        token: TokenId,
        active_until_ms: TimestampMs,
    },
    TokenExpired {
        token: TokenId,
        at_ms: TimestampMs,
    },
    /// The outcome of a write with no effect (a refusal), stored for its
    /// idempotency key.
    IdempotencyRecorded {
        record: IdempotencyRecord,
    },
    /// An effect and the idempotency record of the request that caused it,
    /// journaled as one event so that after any crash both exist or neither.
    /// `effect` is never itself `Idempotent` or `IdempotencyRecorded`.
    /// (Appended last: earlier variants keep their encoding.)
    Idempotent {
        record: Box<IdempotencyRecord>,
        effect: Box<Event>,
    },
}

impl Event {
    /// The variant's name: the journal's `kind` column and test assertions.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::MemberRegistered { .. } => "MemberRegistered",
            Event::BalanceCharged { .. } => "BalanceCharged",
            Event::ConcertCreated { .. } => "ConcertCreated",
            Event::SeatsHeld { .. } => "SeatsHeld",
            Event::HoldReleased { .. } => "HoldReleased",
            Event::PaymentCompleted { .. } => "PaymentCompleted",
            Event::TokenIssued { .. } => "TokenIssued",
            Event::TokenAdmitted { .. } => "TokenAdmitted",
            Event::TokenExpired { .. } => "TokenExpired",
            Event::IdempotencyRecorded { .. } => "IdempotencyRecorded",
            Event::Idempotent { effect, .. } => effect.kind(),
        }
    }

    /// The state change itself, without an idempotency record around it.
    pub fn effect(&self) -> &Event {
        match self {
            Event::Idempotent { effect, .. } => effect,
            other => other,
        }
    }

    /// The idempotency record this event stores, if any.
    pub fn idempotency_record(&self) -> Option<&IdempotencyRecord> {
        match self {
            Event::IdempotencyRecorded { record } => Some(record),
            Event::Idempotent { record, .. } => Some(record),
            _ => None,
        }
    }
}

/// The sink could not take more events (persistence is behind or down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine cannot make writes durable right now")]
pub struct Unavailable;

/// A future that resolves once a journal position is durable.
pub type DurableFuture = Pin<Box<dyn Future<Output = Result<(), Unavailable>> + Send>>;

/// Where engine events go. Implementations must keep the order of appends.
pub trait EventSink: Send + Sync + 'static {
    /// Appends one event and returns its journal position. Must not block on
    /// I/O: actors call it inside their turn.
    fn append(&self, event: Event) -> JournalPos;

    /// Whether the sink takes new writes now. Callers check before changing
    /// state, so a full backlog refuses writes instead of growing forever.
    fn accepting(&self) -> bool {
        true
    }

    /// Resolves once every event up to `pos` is durable.
    fn durable(&self, pos: JournalPos) -> DurableFuture;

    /// The position of the last event appended so far.
    fn last_pos(&self) -> JournalPos;
}

/// An in-memory sink: events are "durable" as soon as they are appended.
/// Used by tests (which inspect it) and by benchmarks of the pure engine.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    events: Mutex<Vec<Event>>,
}

impl MemoryJournal {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every event so far, in journal order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.events.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl EventSink for MemoryJournal {
    fn append(&self, event: Event) -> JournalPos {
        let mut events = self.events.lock();
        events.push(event);
        events.len() as JournalPos
    }

    fn durable(&self, _pos: JournalPos) -> DurableFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    fn last_pos(&self) -> JournalPos {
        self.events.lock().len() as JournalPos
    }
}

/// A sink that drops events: for benchmarks of the bare engine.
#[derive(Debug, Default)]
pub struct NullSink {
    pos: std::sync::atomic::AtomicU64,
}

impl EventSink for NullSink {
    fn append(&self, _event: Event) -> JournalPos {
        self.pos.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    fn durable(&self, _pos: JournalPos) -> DurableFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    fn last_pos(&self) -> JournalPos {
        self.pos.load(std::sync::atomic::Ordering::Relaxed)
    }
}
