//! `Concert`: one concert's catalog entry, seat map and reservation records.
//!
//! The functional core behind `ConcertActor`: plain methods, no I/O, no
//! threads. Only the actor that owns a `Concert` calls these methods, one
//! message at a time, which is what makes a seat's life (hold, pay, cancel,
//! expire) race-free without locks.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::apply::ApplyError;
use crate::clock::TimestampMs;
use crate::error::EngineError;
use crate::events::Event;
use crate::seat_map::{HoldError, HoldLimits, SeatMap};
use crate::types::{ConcertId, JournalPos, Krw, MemberId, ReservationId, SeatNo};

pub use crate::records::{ConcertInfo, Reservation, ReservationStatus};

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

/// A reservation that finished (CANCELLED or EXPIRED): it stays in memory
/// until it is retired ([`Concert::retire_finished`]), then it is read from
/// the database's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub reservation: ReservationId,
    pub member: MemberId,
    /// When it finished (the releasing event's time).
    pub at_ms: TimestampMs,
    /// The journal position of the releasing event; 0 until
    /// [`Concert::set_applied_pos`] stamps it (right after the apply).
    pub pos: JournalPos,
}

/// A concert's live state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Concert {
    info: ConcertInfo,
    seats: SeatMap,
    /// The live reservations (PENDING_PAYMENT, CONFIRMED) and the finished
    /// ones not yet retired (they stay readable: `GET /reservations/{id}`,
    /// a member's list; once retired, from the tables). Ordered, not
    /// hashed: ids come in increasing order, so an insert lands at the
    /// right edge, on a path already in cache, and the map never rehashes
    /// all of itself; a hash table of millions of reservations paid cache
    /// misses on every insert and stalled on each doubling
    /// (docs/PERFORMANCE.md, `sql_hot_seats`).
    reservations: BTreeMap<ReservationId, Reservation>,
    /// The finished reservations still in `reservations`, in the order they
    /// finished (journal order).
    finished: VecDeque<Finished>,
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
            finished: VecDeque::new(),
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

    /// Records that the event at `pos` was applied (callers call it right
    /// after [`Concert::apply`] with that event's position).
    pub fn set_applied_pos(&mut self, pos: JournalPos) {
        self.applied_pos = self.applied_pos.max(pos);
        for finished in self.finished.iter_mut().rev() {
            if finished.pos != 0 {
                break;
            }
            finished.pos = pos;
        }
    }

    /// Finished reservations still in memory, oldest first.
    pub fn finished(&self) -> impl Iterator<Item = &Finished> {
        self.finished.iter()
    }

    /// Retires the reservations that finished at or before `cutoff_ms` by
    /// events at or before `projected` (the tables hold them as they are
    /// now): they leave memory and are returned. The oldest first; stops at
    /// the first one not due, so each call costs what it retires.
    pub fn retire_finished(&mut self, cutoff_ms: TimestampMs, projected: JournalPos) -> Vec<Finished> {
        let mut retired = Vec::new();
        while let Some(&front) = self.finished.front() {
            if front.pos == 0 || front.pos > projected || front.at_ms > cutoff_ms {
                break;
            }
            self.finished.pop_front();
            self.reservations.remove(&front.reservation);
            retired.push(front);
        }
        retired
    }

    // ---- decide: check a command against the state, change nothing -------

    /// Decides a hold of `seats` for `member` as reservation `id`, until
    /// `now + hold_timeout`: the reservation its `SeatsHeld` event carries.
    pub fn decide_hold(
        &self,
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
        let amount = self.seats.check_hold(member, id, seats, limits)?;
        Ok(Reservation {
            id,
            concert_id: self.info.id,
            member_id: member,
            seats: seats.to_vec(),
            amount,
            status: ReservationStatus::PendingPayment,
            created_at_ms: now_ms,
            expires_at_ms: now_ms + hold_timeout_ms,
        })
    }

    /// Decides whether `member` may pay reservation `id` now; the amount due.
    /// A pending hold past its deadline is `HoldExpired` (its release is a
    /// decision of its own: see [`Concert::is_pending`]).
    pub fn decide_payment(
        &self,
        member: MemberId,
        id: ReservationId,
        now_ms: TimestampMs,
    ) -> Result<Krw, ConcertRejection> {
        let reservation = self.owned(member, id)?;
        match reservation.status {
            ReservationStatus::PendingPayment if reservation.expires_at_ms <= now_ms => {
                Err(ConcertRejection::HoldExpired)
            }
            ReservationStatus::PendingPayment => Ok(reservation.amount),
            ReservationStatus::Expired => Err(ConcertRejection::HoldExpired),
            ReservationStatus::Confirmed | ReservationStatus::Cancelled => Err(ConcertRejection::NotPending),
        }
    }

    /// Decides a cancel of a pending reservation of `member`: the
    /// reservation as it will read once cancelled.
    pub fn decide_cancel(&self, member: MemberId, id: ReservationId) -> Result<Reservation, ConcertRejection> {
        let reservation = self.owned(member, id)?;
        if reservation.status != ReservationStatus::PendingPayment {
            return Err(ConcertRejection::NotPending);
        }
        Ok(Reservation {
            status: ReservationStatus::Cancelled,
            ..reservation.clone()
        })
    }

    /// The pending holds whose deadline is `<= now_ms`, oldest first.
    pub fn due_holds(&self, now_ms: TimestampMs) -> Vec<ReservationId> {
        self.seats.due(now_ms)
    }

    /// Whether reservation `id` is PENDING_PAYMENT.
    pub fn is_pending(&self, id: ReservationId) -> bool {
        self.reservations
            .get(&id)
            .is_some_and(|r| r.status == ReservationStatus::PendingPayment)
    }

    // ---- apply: the one place a decided event changes the concert --------

    /// Applies one decided event to this concert: the live path (after
    /// deciding) and journal replay both change a concert only through
    /// here. An event that does not apply (its hold's seats taken, its
    /// reservation unknown or no longer pending) is an error naming why:
    /// the journal and the state disagree. The caller skips events at or
    /// before [`Concert::applied_pos`] and sets it after.
    pub fn apply(&mut self, event: &Event) -> Result<(), ApplyError> {
        match event {
            Event::SeatsHeld { reservation } => self.apply_hold(reservation),
            Event::HoldReleased {
                concert,
                reservation,
                status,
                at_ms,
            } => {
                self.check_concert(*concert)?;
                if !self.is_pending(*reservation) {
                    return Err(self.not_pending(*reservation));
                }
                if let Some(finished) = self.finish(*reservation, *status) {
                    self.finished.push_back(Finished {
                        reservation: finished.id,
                        member: finished.member_id,
                        at_ms: *at_ms,
                        pos: 0,
                    });
                }
                Ok(())
            }
            Event::PaymentCompleted {
                concert, reservation, ..
            } => {
                self.check_concert(*concert)?;
                if !self.is_pending(*reservation) {
                    return Err(self.not_pending(*reservation));
                }
                // A sale in the journal is authoritative even past the
                // hold's deadline (it was decided before it).
                self.seats
                    .confirm(*reservation, TimestampMs::MIN)
                    .map_err(|_| ApplyError::NoLiveHold(*reservation))?;
                self.set_status(*reservation, ReservationStatus::Confirmed);
                Ok(())
            }
            Event::Idempotent { effect, .. } => self.apply(effect),
            other => Err(ApplyError::Misrouted {
                event: other.kind(),
                to: "a concert",
            }),
        }
    }

    fn apply_hold(&mut self, reservation: &Reservation) -> Result<(), ApplyError> {
        self.check_concert(reservation.concert_id)?;
        if self.reservations.contains_key(&reservation.id) {
            return Err(ApplyError::DuplicateReservation(reservation.id));
        }
        // Limits were the decision's; here only the seats themselves count.
        self.seats
            .hold(
                reservation.member_id,
                reservation.id,
                &reservation.seats,
                reservation.expires_at_ms,
                HoldLimits::UNLIMITED,
            )
            .map_err(|source| ApplyError::Hold {
                reservation: reservation.id,
                source,
            })?;
        self.reservations.insert(reservation.id, reservation.clone());
        Ok(())
    }

    fn check_concert(&self, concert: ConcertId) -> Result<(), ApplyError> {
        if concert != self.info.id {
            return Err(ApplyError::WrongConcert {
                event: concert,
                applied_to: self.info.id,
            });
        }
        Ok(())
    }

    fn not_pending(&self, id: ReservationId) -> ApplyError {
        match self.reservations.get(&id) {
            Some(r) => ApplyError::NotPending {
                reservation: id,
                status: r.status.as_str(),
            },
            None => ApplyError::UnknownReservation(id),
        }
    }

    // ---- decide + apply in one call (tests and tools drive the core so) --

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
        let reservation = self.decide_hold(member, id, seats, now_ms, hold_timeout_ms, limits)?;
        self.apply_decided(&Event::SeatsHeld {
            reservation: reservation.clone(),
        });
        Ok(reservation)
    }

    /// Checks that `member` may pay reservation `id` now and returns the
    /// amount due. A hold found past its deadline is expired on the spot.
    /// Nothing else changes on success: call [`Concert::confirm`] once paid.
    pub fn check_payable(
        &mut self,
        member: MemberId,
        id: ReservationId,
        now_ms: TimestampMs,
    ) -> Result<Krw, ConcertRejection> {
        let decided = self.decide_payment(member, id, now_ms);
        if decided == Err(ConcertRejection::HoldExpired) && self.is_pending(id) {
            self.apply_decided(&self.release_event(id, ReservationStatus::Expired, now_ms));
        }
        decided
    }

    /// Sells the seats of a reservation that [`Concert::check_payable`] accepted
    /// at the same `now_ms` within the same actor turn.
    pub fn confirm(&mut self, id: ReservationId, now_ms: TimestampMs) -> Result<Reservation, ConcertRejection> {
        let member = self
            .reservations
            .get(&id)
            .ok_or(ConcertRejection::UnknownReservation)?
            .member_id;
        self.check_payable(member, id, now_ms)?;
        let reservation = self.reservations.get(&id).ok_or(ConcertRejection::UnknownReservation)?;
        let paid = Event::PaymentCompleted {
            payment: 0,
            concert: self.info.id,
            reservation: id,
            member: reservation.member_id,
            amount: reservation.amount,
            balance_after: 0,
            token: None,
            at_ms: now_ms,
        };
        self.apply_decided(&paid);
        self.reservations
            .get(&id)
            .cloned()
            .ok_or(ConcertRejection::UnknownReservation)
    }

    /// Cancels a pending reservation of `member`; its seats are free at once.
    pub fn cancel(&mut self, member: MemberId, id: ReservationId) -> Result<Reservation, ConcertRejection> {
        let cancelled = self.decide_cancel(member, id)?;
        self.apply_decided(&self.release_event(id, ReservationStatus::Cancelled, 0));
        Ok(cancelled)
    }

    /// Expires every hold due at `now_ms`; returns the expired reservation ids.
    pub fn expire_due(&mut self, now_ms: TimestampMs) -> Vec<ReservationId> {
        let expired = self.due_holds(now_ms);
        for &id in &expired {
            self.apply_decided(&self.release_event(id, ReservationStatus::Expired, now_ms));
        }
        expired
    }

    /// The event releasing reservation `id` with `status`.
    pub fn release_event(&self, id: ReservationId, status: ReservationStatus, now_ms: TimestampMs) -> Event {
        Event::HoldReleased {
            concert: self.info.id,
            reservation: id,
            status,
            at_ms: now_ms,
        }
    }

    /// Applies an event this concert has just decided. It cannot fail (the
    /// decision checked the same state in the same turn); if it does, the
    /// state is not what the decision saw, and going on would journal
    /// changes that replay cannot repeat: fail-stop.
    pub fn apply_decided(&mut self, event: &Event) {
        if let Err(err) = self.apply(event) {
            crate::apply::fail_stop(&format!(
                "concert {}: a decided {} does not apply: {err}",
                self.info.id,
                event.kind()
            ));
        }
    }

    /// Restores a reservation read from the SQL tables (recovery): pending
    /// ones hold their seats again, confirmed ones own them as SOLD;
    /// finished ones stay in the tables (they are read from there).
    pub fn restore_reservation(&mut self, reservation: Reservation) -> Result<(), ConcertRejection> {
        if self.reservations.contains_key(&reservation.id) || reservation.status.is_finished() {
            return Ok(());
        }
        match reservation.status {
            ReservationStatus::PendingPayment => {
                self.seats.hold(
                    reservation.member_id,
                    reservation.id,
                    &reservation.seats,
                    reservation.expires_at_ms,
                    HoldLimits::UNLIMITED,
                )?;
            }
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
        let finished_in_memory = self.reservations.values().filter(|r| r.status.is_finished()).count();
        assert_eq!(
            finished_in_memory,
            self.finished.len(),
            "every finished reservation in memory is queued for retirement, once"
        );
        for finished in &self.finished {
            let reservation = self
                .reservations
                .get(&finished.reservation)
                .expect("a reservation queued for retirement is in memory");
            assert!(
                reservation.status.is_finished(),
                "only finished reservations are retired"
            );
        }
    }
}

impl From<ConcertRejection> for EngineError {
    fn from(err: ConcertRejection) -> Self {
        match err {
            ConcertRejection::Hold(hold) => hold.into(),
            ConcertRejection::SalesClosed => EngineError::SalesClosed,
            ConcertRejection::UnknownReservation => EngineError::NotFound("reservation"),
            ConcertRejection::NotOwner => EngineError::Forbidden,
            ConcertRejection::HoldExpired => EngineError::HoldExpired,
            ConcertRejection::NotPending => EngineError::NotPending,
        }
    }
}
