//! Engine events and the sink they are appended to.
//!
//! Every state change the engine makes is described by exactly one [`Event`]
//! and appended to an [`EventSink`] by the component that made it, while that
//! component still owns the change (inside the actor's turn, or under the
//! wallet's lock). So the sink sees each component's changes in the order
//! they happened, and a payment — debit, sale, payment record, token expiry —
//! is a single event that persistence commits atomically.
//!
//! The sink ([`crate::sink::EventSink`]) hands back a journal position; a
//! caller that must not answer before the change is durable waits for it.

use serde::{Deserialize, Serialize};

use crate::clock::TimestampMs;
use crate::queue::token::TokenId;
use crate::records::{ConcertInfo, IdempotencyRecord, Reservation, ReservationStatus};
use crate::types::{ConcertId, Krw, MemberId, PaymentId, ReservationId};

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
