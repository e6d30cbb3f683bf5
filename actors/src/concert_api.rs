//! What the rest of the engine exchanges with a concert actor: the
//! messages (nouns in the imperative), their replies, the settings every
//! concert actor shares, the counters they bump, and how long a caller
//! waits. Plain types, so that the router, the request batcher and the
//! engine name them without depending on the actor (`concert_actor.rs`
//! re-exports them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::clock::TimestampMs;
use crate::concert::{Concert, Finished};
use crate::error::EngineError;
use crate::idempotency::IdemTicket;
use crate::queue::token::TokenId;
use crate::records::Reservation;
use crate::seat_map::HoldLimits;
use crate::types::{JournalPos, Krw, MemberId, PaymentId, ReservationId, SeatNo, SeatStatus};

/// Longest a request waits for a concert actor (mailbox room plus the
/// reply) before it is answered 503.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A value plus the journal position that must be durable before it is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed<T> {
    pub value: T,
    pub pos: JournalPos,
}

/// Hold settings shared by every concert actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldSettings {
    pub hold_timeout_ms: i64,
    pub expiry_tick_ms: u64,
    pub limits: HoldLimits,
}

/// Totals across every concert, for metrics. Live holds are
/// `held - paid - cancelled - expired`.
#[derive(Debug, Default)]
pub struct ReservationCounters {
    pub held: AtomicU64,
    pub paid: AtomicU64,
    pub cancelled: AtomicU64,
    pub expired: AtomicU64,
}

impl ReservationCounters {
    pub fn live_holds(&self) -> u64 {
        let held = self.held.load(Ordering::Relaxed);
        let done = self.paid.load(Ordering::Relaxed)
            + self.cancelled.load(Ordering::Relaxed)
            + self.expired.load(Ordering::Relaxed);
        held.saturating_sub(done)
    }
}

/// A completed payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentReceipt {
    pub payment_id: PaymentId,
    pub reservation_id: ReservationId,
    pub amount: Krw,
    pub balance: Krw,
}

/// One seat as listed to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatView {
    pub number: SeatNo,
    pub price: Krw,
    pub status: SeatStatus,
}

/// Hold `seats` for `member` as reservation `reservation` (ids come from the router).
#[derive(Message)]
#[rtype(result = "Result<Committed<Reservation>, EngineError>")]
pub struct HoldSeats {
    pub member: MemberId,
    pub reservation: ReservationId,
    pub seats: Vec<SeatNo>,
    /// The request's claimed `Idempotency-Key`, settled in the actor's turn.
    pub idempotency: Option<IdemTicket<Reservation>>,
}

/// A request that may travel in a [`ConcertRequestBatch`]: the two that
/// answer with a reservation.
pub enum ConcertRequest {
    Hold(HoldSeats),
    Cancel(CancelReservation),
}

/// Several requests in one message: one mailbox round trip for many
/// callers. Handled one at a time, in order, each exactly as if it had
/// arrived as its own message; the reply has one result per request.
#[derive(Message)]
#[rtype(result = "Vec<Result<Committed<Reservation>, EngineError>>")]
pub struct ConcertRequestBatch(pub Vec<ConcertRequest>);

/// Pay a pending reservation from the member's wallet.
#[derive(Message)]
#[rtype(result = "Result<Committed<PaymentReceipt>, EngineError>")]
pub struct PayReservation {
    pub member: MemberId,
    pub reservation: ReservationId,
    /// The queue token to expire with the payment.
    pub token: Option<TokenId>,
    /// The request's claimed `Idempotency-Key`, settled in the actor's turn.
    pub idempotency: Option<IdemTicket<PaymentReceipt>>,
}

/// Cancel a pending reservation.
#[derive(Message)]
#[rtype(result = "Result<Committed<Reservation>, EngineError>")]
pub struct CancelReservation {
    pub member: MemberId,
    pub reservation: ReservationId,
    /// The request's claimed `Idempotency-Key`, settled in the actor's turn.
    pub idempotency: Option<IdemTicket<Reservation>>,
}

#[derive(Message)]
#[rtype(result = "Option<Reservation>")]
pub struct GetReservation(pub ReservationId);

/// The reservations among these ids that this concert has in memory (a
/// member's list: one message per concert, not per reservation).
#[derive(Message)]
#[rtype(result = "Vec<Reservation>")]
pub struct GetReservations(pub Vec<ReservationId>);

/// Retires the finished reservations due (see `Concert::retire_finished`);
/// returns them.
#[derive(Message)]
#[rtype(result = "Vec<Finished>")]
pub struct RetireFinished {
    pub cutoff_ms: TimestampMs,
    pub projected: JournalPos,
}

/// Every seat (or those with one status), by number.
#[derive(Message)]
#[rtype(result = "Vec<SeatView>")]
pub struct ListSeats {
    pub status: Option<SeatStatus>,
}

/// Release every hold due now; returns how many were released.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ExpireHolds;

/// A copy of the concert's state (snapshots, invariant checks).
#[derive(Message)]
#[rtype(result = "Concert")]
pub struct ExportConcert;
