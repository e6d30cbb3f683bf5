//! `Concert`: one concert's catalog entry, seat map and reservation records.
//!
//! The functional core behind `ConcertActor`: plain methods, no I/O, no
//! threads. Only the actor that owns a `Concert` calls these methods, one
//! message at a time, which is what makes a seat's life (hold, pay, cancel,
//! expire) race-free without locks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::TimestampMs;
use crate::pricing::Pricing;
use crate::seat_map::{ConfirmError, HoldError, HoldLimits, SeatMap};
use crate::types::{ConcertId, JournalPos, Krw, MemberId, ReservationId, SeatNo};

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

/// Why a reservation operation was refused (the engine's user errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConcertRejection {
    #[error(transparent)]
    Hold(#[from] HoldError),
    #[error("sales are closed: the concert has started")]
    SalesClosed,
    #[error("no such reservation")]
    UnknownReservation,
    #[error("the reservation belongs to another member")]
    NotOwner,
    #[error("the hold has expired")]
    HoldExpired,
    #[error("the reservation is not pending payment")]
    NotPending,
}

/// A concert's full state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Concert {
    info: ConcertInfo,
    seats: SeatMap,
    /// Every reservation ever made here, finished ones too (they stay
    /// readable: `GET /reservations/{id}`, a member's list). Ordered, not
    /// hashed: ids come in increasing order, so an insert lands at the
    /// right edge, on a path already in cache, and the map never rehashes
    /// all of itself; a hash table of millions of reservations paid cache
    /// misses on every insert and stalled on each doubling
    /// (docs/PERFORMANCE.md, `sql_hot_seats`).
    reservations: BTreeMap<ReservationId, Reservation>,
    /// Last journal position applied to this concert (recovery skips older events).
    applied_pos: JournalPos,
}

impl Concert {
    pub fn new(info: ConcertInfo) -> Self {
        let seats = SeatMap::new(info.seat_count, info.pricing.clone());
        Self {
            info,
            seats,
            reservations: BTreeMap::new(),
            applied_pos: 0,
        }
    }

    pub fn info(&self) -> &ConcertInfo {
        &self.info
    }

    pub fn seats(&self) -> &SeatMap {
        &self.seats
    }

    pub fn reservation(&self, id: ReservationId) -> Option<&Reservation> {
        self.reservations.get(&id)
    }

    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    pub fn applied_pos(&self) -> JournalPos {
        self.applied_pos
    }

    pub fn set_applied_pos(&mut self, pos: JournalPos) {
        self.applied_pos = self.applied_pos.max(pos);
    }

    /// Holds `seats` for `member` as reservation `id`, until `now + hold_timeout`.
    pub fn hold(
        &mut self,
        member: MemberId,
        id: ReservationId,
        seats: &[SeatNo],
        now_ms: TimestampMs,
        hold_timeout_ms: i64,
        limits: HoldLimits,
    ) -> Result<Reservation, ConcertRejection> {
        if now_ms >= self.info.starts_at_ms {
            return Err(ConcertRejection::SalesClosed);
        }
        let expires_at_ms = now_ms + hold_timeout_ms;
        let amount = self.seats.hold(member, id, seats, expires_at_ms, limits)?;
        let reservation = Reservation {
            id,
            concert_id: self.info.id,
            member_id: member,
            seats: seats.to_vec(),
            amount,
            status: ReservationStatus::PendingPayment,
            created_at_ms: now_ms,
            expires_at_ms,
        };
        self.reservations.insert(id, reservation.clone());
        Ok(reservation)
    }

    /// Checks that `member` may pay reservation `id` now and returns the
    /// amount due. A hold found past its deadline is expired on the spot.
    /// Nothing changes on success: call [`Concert::confirm`] once paid.
    pub fn check_payable(
        &mut self,
        member: MemberId,
        id: ReservationId,
        now_ms: TimestampMs,
    ) -> Result<Krw, ConcertRejection> {
        let reservation = self.owned(member, id)?;
        match reservation.status {
            ReservationStatus::PendingPayment => {}
            ReservationStatus::Expired => return Err(ConcertRejection::HoldExpired),
            ReservationStatus::Confirmed | ReservationStatus::Cancelled => return Err(ConcertRejection::NotPending),
        }
        if reservation.expires_at_ms <= now_ms {
            self.finish(id, ReservationStatus::Expired);
            return Err(ConcertRejection::HoldExpired);
        }
        Ok(reservation.amount)
    }

    /// Sells the seats of a reservation that [`Concert::check_payable`] accepted
    /// at the same `now_ms` within the same actor turn.
    pub fn confirm(&mut self, id: ReservationId, now_ms: TimestampMs) -> Result<Reservation, ConcertRejection> {
        match self.seats.confirm(id, now_ms) {
            Ok(_) => {}
            Err(ConfirmError::NotHeld) => return Err(ConcertRejection::NotPending),
            Err(ConfirmError::Expired(_)) => {
                self.set_status(id, ReservationStatus::Expired);
                return Err(ConcertRejection::HoldExpired);
            }
        }
        self.set_status(id, ReservationStatus::Confirmed)
            .ok_or(ConcertRejection::UnknownReservation)
    }

    /// Cancels a pending reservation of `member`; its seats are free at once.
    pub fn cancel(&mut self, member: MemberId, id: ReservationId) -> Result<Reservation, ConcertRejection> {
        let reservation = self.owned(member, id)?;
        if reservation.status != ReservationStatus::PendingPayment {
            return Err(ConcertRejection::NotPending);
        }
        self.finish(id, ReservationStatus::Cancelled)
            .ok_or(ConcertRejection::UnknownReservation)
    }

    /// Expires every hold due at `now_ms`; returns the expired reservation ids.
    pub fn expire_due(&mut self, now_ms: TimestampMs) -> Vec<ReservationId> {
        let expired: Vec<ReservationId> = self.seats.expire_due(now_ms).into_iter().map(|(id, _)| id).collect();
        for &id in &expired {
            self.set_status(id, ReservationStatus::Expired);
        }
        expired
    }

    /// Applies a release decided elsewhere (journal replay): idempotent.
    pub fn apply_release(&mut self, id: ReservationId, status: ReservationStatus) {
        if self
            .reservations
            .get(&id)
            .is_some_and(|r| r.status == ReservationStatus::PendingPayment)
        {
            self.finish(id, status);
        }
    }

    /// Applies a hold decided earlier (journal replay): no limit checks, idempotent.
    pub fn apply_hold(&mut self, reservation: Reservation) -> Result<(), ConcertRejection> {
        if self.reservations.contains_key(&reservation.id) {
            return Ok(());
        }
        let unlimited = HoldLimits {
            max_seats_per_reservation: u32::MAX,
            max_seats_per_member: u32::MAX,
        };
        self.seats.hold(
            reservation.member_id,
            reservation.id,
            &reservation.seats,
            reservation.expires_at_ms,
            unlimited,
        )?;
        self.reservations.insert(reservation.id, reservation);
        Ok(())
    }

    /// Applies a sale decided earlier (journal replay): idempotent. A sale
    /// in the journal is authoritative even if the hold's deadline is past.
    pub fn apply_confirm(&mut self, id: ReservationId) {
        if self
            .reservations
            .get(&id)
            .is_some_and(|r| r.status == ReservationStatus::PendingPayment)
        {
            let _ = self.seats.confirm(id, TimestampMs::MIN);
            self.set_status(id, ReservationStatus::Confirmed);
        }
    }

    /// Restores a reservation read from the SQL tables (recovery): pending
    /// ones hold their seats again, confirmed ones own them as SOLD.
    pub fn restore_reservation(&mut self, reservation: Reservation) -> Result<(), ConcertRejection> {
        if self.reservations.contains_key(&reservation.id) {
            return Ok(());
        }
        match reservation.status {
            ReservationStatus::PendingPayment => return self.apply_hold(reservation),
            ReservationStatus::Confirmed => {
                self.seats
                    .restore_sold(reservation.member_id, reservation.id, &reservation.seats)
            }
            ReservationStatus::Expired | ReservationStatus::Cancelled => {}
        }
        self.reservations.insert(reservation.id, reservation);
        Ok(())
    }

    fn owned(&self, member: MemberId, id: ReservationId) -> Result<&Reservation, ConcertRejection> {
        let reservation = self.reservations.get(&id).ok_or(ConcertRejection::UnknownReservation)?;
        if reservation.member_id != member {
            return Err(ConcertRejection::NotOwner);
        }
        Ok(reservation)
    }

    fn finish(&mut self, id: ReservationId, status: ReservationStatus) -> Option<Reservation> {
        self.seats.release(id);
        self.set_status(id, status)
    }

    fn set_status(&mut self, id: ReservationId, status: ReservationStatus) -> Option<Reservation> {
        let reservation = self.reservations.get_mut(&id)?;
        reservation.status = status;
        Some(reservation.clone())
    }

    /// Every invariant of the seat map plus: each pending reservation is a
    /// live hold, each confirmed one owns its seats as SOLD.
    pub fn check_invariants(&self) {
        self.seats.check_invariants();
        let mut pending = 0;
        for reservation in self.reservations.values() {
            match reservation.status {
                ReservationStatus::PendingPayment => {
                    pending += 1;
                    let hold = self
                        .seats
                        .hold_of(reservation.id)
                        .expect("a pending reservation has a live hold");
                    assert_eq!(hold.seats, reservation.seats, "the hold lists the reservation's seats");
                }
                ReservationStatus::Confirmed => {
                    for &seat in &reservation.seats {
                        assert_eq!(
                            self.seats.owner(seat),
                            Some(reservation.id),
                            "a confirmed reservation owns its seats"
                        );
                        assert_eq!(self.seats.status(seat), Some(crate::types::SeatStatus::Sold));
                    }
                }
                ReservationStatus::Expired | ReservationStatus::Cancelled => {
                    assert!(
                        self.seats.hold_of(reservation.id).is_none(),
                        "a finished reservation holds nothing"
                    );
                }
            }
        }
        assert_eq!(
            pending,
            self.seats.live_holds(),
            "every live hold is a pending reservation"
        );
    }
}
