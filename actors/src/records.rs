//! The plain records that events carry and snapshots store: a concert's
//! catalog entry, a reservation, an idempotency record. Data only (serde,
//! no behaviour beyond names), so that the event enum, the concert core and
//! the idempotency store can all name them without depending on each other.

use serde::{Deserialize, Serialize};

use crate::clock::TimestampMs;
use crate::pricing::Pricing;
use crate::types::{ConcertId, Krw, MemberId, ReservationId, SeatNo};

/// What the catalog shows of a concert (everything but the seats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcertInfo {
    pub id: ConcertId,
    pub title: String,
    pub category: String,
    pub venue: String,
    pub starts_at_ms: TimestampMs,
    pub seat_count: SeatNo,
    pub pricing: Pricing,
}

/// Lifecycle of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReservationStatus {
    PendingPayment,
    Confirmed,
    Expired,
    Cancelled,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::PendingPayment => "PENDING_PAYMENT",
            ReservationStatus::Confirmed => "CONFIRMED",
            ReservationStatus::Expired => "EXPIRED",
            ReservationStatus::Cancelled => "CANCELLED",
        }
    }

    /// Whether nothing can happen to it any more (it holds no seat): such
    /// reservations leave memory after `CONCERT_FINISHED_RETENTION`.
    pub fn is_finished(self) -> bool {
        matches!(self, ReservationStatus::Expired | ReservationStatus::Cancelled)
    }
}

/// One reservation of one or more seats of a concert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: ReservationId,
    pub concert_id: ConcertId,
    pub member_id: MemberId,
    pub seats: Vec<SeatNo>,
    pub amount: Krw,
    pub status: ReservationStatus,
    pub created_at_ms: TimestampMs,
    pub expires_at_ms: TimestampMs,
}

/// The writes that honour `Idempotency-Key`. New variants go at the end:
/// the journal's encoding numbers them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdempotentEndpoint {
    Charge,
    Payment,
    Hold,
    Cancel,
}

impl IdempotentEndpoint {
    /// The name stored in `idempotency_records.endpoint`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdempotentEndpoint::Charge => "charge",
            IdempotentEndpoint::Payment => "payment",
            IdempotentEndpoint::Hold => "hold",
            IdempotentEndpoint::Cancel => "cancel",
        }
    }

    /// The endpoint named by [`IdempotentEndpoint::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Charge, Self::Payment, Self::Hold, Self::Cancel]
            .into_iter()
            .find(|endpoint| endpoint.as_str() == name)
    }
}

/// Keys are scoped to the member and the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdempotencyScope {
    pub member: MemberId,
    pub endpoint: IdempotentEndpoint,
    pub key: String,
}

/// The first response, replayed as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub scope: IdempotencyScope,
    /// Digest of the request that produced `response`.
    pub fingerprint: [u8; 32],
    pub response: StoredResponse,
    pub at_ms: TimestampMs,
}
