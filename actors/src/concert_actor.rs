//! `ConcertActor`: owns one concert's [`Concert`] (seat map, holds,
//! reservations) and is the only code that changes it.
//!
//! Hold, pay, cancel and expire are messages handled one at a time on the
//! actor's arbiter thread: no locks around seats, no retries. Expiry runs
//! from the actor's own timer every `expiry_tick`, and a payment re-checks the
//! deadline itself, so an expired hold can never be paid. Each change is
//! appended to the event sink inside the same turn; the reply carries its
//! journal position so the caller can wait for durability without the actor
//! ever waiting on the database.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

pub use crate::concert_api::*;

use crate::accounts::Accounts;
use crate::clock::{SharedClock, TimestampMs};
use crate::concert::{Concert, Reservation, ReservationStatus};
use crate::directory::ReservationDirectory;
use crate::error::EngineError;
use crate::events::Event;
use crate::idempotency::{journal, reject, IdemTicket};
use crate::queue::{TokenId, WaitingQueue};
use crate::sink::EventSink;
use crate::types::{JournalPos, MemberId, ReservationId};

/// Messages waiting for one concert actor at most. `send` waits for room
/// when it is full (the router bounds that wait), so a burst slows callers
/// down instead of growing memory.
pub const CONCERT_MAILBOX_CAPACITY: usize = 4_096;

/// What every concert actor shares with the rest of the engine.
pub struct ConcertDeps {
    pub accounts: Arc<Accounts>,
    /// A payment expires the payer's queue token in the same step that
    /// journals it (see `pay`).
    pub queue: Arc<WaitingQueue>,
    pub directory: Arc<ReservationDirectory>,
    pub sink: Arc<dyn EventSink>,
    pub clock: SharedClock,
    pub payment_ids: Arc<AtomicU64>,
    pub settings: HoldSettings,
    pub counters: Arc<ReservationCounters>,
}

/// Seat-map versions are drawn from one process-wide counter, so no two seat
/// maps (of any concert, or of one concert before and after its actor was
/// started again) ever share a version.
static SEAT_MAP_VERSIONS: AtomicU64 = AtomicU64::new(1);

/// A seat-map version never handed out before.
pub(crate) fn next_seat_map_version() -> u64 {
    SEAT_MAP_VERSIONS.fetch_add(1, Ordering::Relaxed)
}

pub struct ConcertActor {
    concert: Concert,
    deps: Arc<ConcertDeps>,
    /// Published after every change so the catalog reads it without a message.
    available: Arc<AtomicU32>,
    /// The seat map's version, replaced after every change (readers cache
    /// the encoded seat map under it: `ConcertHandle::seat_map_version`).
    seat_map_version: Arc<AtomicU64>,
}

impl ConcertActor {
    pub fn new(
        concert: Concert,
        deps: Arc<ConcertDeps>,
        available: Arc<AtomicU32>,
        seat_map_version: Arc<AtomicU64>,
    ) -> Self {
        available.store(concert.seats().available(), Ordering::Relaxed);
        seat_map_version.store(next_seat_map_version(), Ordering::Release);
        Self {
            concert,
            deps,
            available,
            seat_map_version,
        }
    }

    /// Called after every change of a seat's status, in the same turn.
    fn publish(&self) {
        self.available
            .store(self.concert.seats().available(), Ordering::Relaxed);
        self.seat_map_version.store(next_seat_map_version(), Ordering::Release);
    }

    // Every change below is decided against the concert (which the
    // decision does not change), applied with the same `Concert::apply`
    // that replay uses, then journaled, all in this one turn.

    fn hold(&mut self, msg: HoldSeats) -> Result<Committed<Reservation>, EngineError> {
        if !self.deps.sink.accepting() {
            // Undecided: dropping the ticket frees its key for a retry.
            return Err(EngineError::Unavailable);
        }
        let now_ms = self.deps.clock.now_ms();
        let settings = self.deps.settings;
        let decided = self.concert.decide_hold(
            msg.member,
            msg.reservation,
            &msg.seats,
            now_ms,
            settings.hold_timeout_ms,
            settings.limits,
        );
        let reservation = match decided {
            Ok(reservation) => reservation,
            Err(rejection) => {
                let err = EngineError::from(rejection);
                reject(msg.idempotency, &err, now_ms);
                return Err(err);
            }
        };
        let held = Event::SeatsHeld {
            reservation: reservation.clone(),
        };
        self.concert.apply_decided(&held);
        let pos = journal(&*self.deps.sink, msg.idempotency, &reservation, now_ms, held);
        self.concert.set_applied_pos(pos);
        // The directory is written by `Engine::hold` on the caller's thread
        // (see `directory.rs`): not here, in the one thread of a hot concert.
        self.deps.counters.held.fetch_add(1, Ordering::Relaxed);
        self.publish();
        Ok(Committed {
            value: reservation,
            pos,
        })
    }

    fn pay(&mut self, msg: PayReservation) -> Result<Committed<PaymentReceipt>, EngineError> {
        if !self.deps.sink.accepting() {
            return Err(EngineError::Unavailable);
        }
        let now_ms = self.deps.clock.now_ms();
        let mut ticket = msg.idempotency;
        let paid = self.pay_decided(msg.member, msg.reservation, msg.token, now_ms, &mut ticket);
        if let Err(err) = &paid {
            reject(ticket, err, now_ms);
        }
        paid
    }

    /// Decides and applies a payment; on success `ticket` is taken (settled
    /// with the payment's event), on a refusal it is left for the caller.
    fn pay_decided(
        &mut self,
        member: MemberId,
        reservation: ReservationId,
        token: Option<TokenId>,
        now_ms: TimestampMs,
        ticket: &mut Option<IdemTicket<PaymentReceipt>>,
    ) -> Result<Committed<PaymentReceipt>, EngineError> {
        let decided = self.concert.decide_payment(member, reservation, now_ms);
        // A pending hold found past its deadline is released here, even
        // before the expiry tick; paying an already EXPIRED reservation
        // again changes nothing.
        if decided == Err(crate::concert::ConcertRejection::HoldExpired) && self.concert.is_pending(reservation) {
            self.release(reservation, ReservationStatus::Expired, now_ms, None);
        }
        let amount = decided?;
        let payment = self.deps.payment_ids.fetch_add(1, Ordering::Relaxed);
        let concert_id = self.concert.info().id;
        let queue = &self.deps.queue;
        let sink = &*self.deps.sink;
        let concert = &mut self.concert;
        let (balance, pos) = self.deps.accounts.debit_with(
            member,
            amount,
            |balance_after| Event::PaymentCompleted {
                payment,
                concert: concert_id,
                reservation,
                member,
                amount,
                balance_after,
                token,
                at_ms: now_ms,
            },
            |completed, balance_after| {
                // The debit is decided and applied to the wallet; the sale
                // is applied to the concert, then the one event appended,
                // all under the wallet's lock. The token must be expired in
                // memory BEFORE the event takes its journal position: a
                // snapshot tagged with a position at or past the payment
                // must see the token EXPIRED, since replay starts after
                // that position.
                concert.apply_decided(&completed);
                if let Some(token) = &token {
                    queue.expire_paid(token);
                }
                let receipt = PaymentReceipt {
                    payment_id: payment,
                    reservation_id: reservation,
                    amount,
                    balance: balance_after,
                };
                journal(sink, ticket.take(), &receipt, now_ms, completed)
            },
        )?;
        self.concert.set_applied_pos(pos);
        self.deps.counters.paid.fetch_add(1, Ordering::Relaxed);
        // HELD -> SOLD: the count of AVAILABLE seats is unchanged, the seat map is not.
        self.publish();
        Ok(Committed {
            value: PaymentReceipt {
                payment_id: payment,
                reservation_id: reservation,
                amount,
                balance,
            },
            pos,
        })
    }

    fn cancel(&mut self, msg: CancelReservation) -> Result<Committed<Reservation>, EngineError> {
        if !self.deps.sink.accepting() {
            return Err(EngineError::Unavailable);
        }
        let now_ms = self.deps.clock.now_ms();
        let cancelled = match self.concert.decide_cancel(msg.member, msg.reservation) {
            Ok(cancelled) => cancelled,
            Err(rejection) => {
                let err = EngineError::from(rejection);
                reject(msg.idempotency, &err, now_ms);
                return Err(err);
            }
        };
        let ticket = msg.idempotency.map(|ticket| (ticket, &cancelled));
        let pos = self.release(msg.reservation, ReservationStatus::Cancelled, now_ms, ticket);
        Ok(Committed { value: cancelled, pos })
    }

    /// Applies and journals a decided release (with the idempotency record
    /// of the request that asked for it, if any) and publishes the freed
    /// seats.
    fn release(
        &mut self,
        reservation: ReservationId,
        status: ReservationStatus,
        now_ms: TimestampMs,
        ticket: Option<(IdemTicket<Reservation>, &Reservation)>,
    ) -> JournalPos {
        let released = self.concert.release_event(reservation, status, now_ms);
        self.concert.apply_decided(&released);
        let pos = match ticket {
            Some((ticket, value)) => ticket.commit(value, now_ms, released),
            None => self.deps.sink.append(released),
        };
        self.concert.set_applied_pos(pos);
        let counter = match status {
            ReservationStatus::Cancelled => &self.deps.counters.cancelled,
            _ => &self.deps.counters.expired,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.publish();
        pos
    }

    fn expire(&mut self) -> usize {
        let now_ms = self.deps.clock.now_ms();
        let expired = self.concert.due_holds(now_ms);
        for &reservation in &expired {
            self.release(reservation, ReservationStatus::Expired, now_ms, None);
        }
        if !expired.is_empty() {
            tracing::debug!(
                concert_id = self.concert.info().id,
                expired = expired.len(),
                "holds expired"
            );
        }
        expired.len()
    }
}

impl Actor for ConcertActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(CONCERT_MAILBOX_CAPACITY);
        // An actor whose arbiter stopped before it ran is started by the
        // drop of its context, after the arbiter's runtime is gone; it
        // stops right away, and its expiry timer could not be created
        // (`run_interval` would panic: "there is no reactor running").
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let tick = Duration::from_millis(self.deps.settings.expiry_tick_ms.max(1));
        ctx.run_interval(tick, |actor, _| {
            actor.expire();
        });
    }
}

impl Handler<HoldSeats> for ConcertActor {
    type Result = Result<Committed<Reservation>, EngineError>;

    fn handle(&mut self, msg: HoldSeats, _: &mut Self::Context) -> Self::Result {
        self.hold(msg)
    }
}

impl Handler<ConcertRequestBatch> for ConcertActor {
    type Result = Vec<Result<Committed<Reservation>, EngineError>>;

    fn handle(&mut self, msg: ConcertRequestBatch, _: &mut Self::Context) -> Self::Result {
        msg.0
            .into_iter()
            .map(|request| match request {
                ConcertRequest::Hold(hold) => self.hold(hold),
                ConcertRequest::Cancel(cancel) => self.cancel(cancel),
            })
            .collect()
    }
}

impl Handler<PayReservation> for ConcertActor {
    type Result = Result<Committed<PaymentReceipt>, EngineError>;

    fn handle(&mut self, msg: PayReservation, _: &mut Self::Context) -> Self::Result {
        self.pay(msg)
    }
}

impl Handler<CancelReservation> for ConcertActor {
    type Result = Result<Committed<Reservation>, EngineError>;

    fn handle(&mut self, msg: CancelReservation, _: &mut Self::Context) -> Self::Result {
        self.cancel(msg)
    }
}

impl Handler<GetReservation> for ConcertActor {
    type Result = Option<Reservation>;

    fn handle(&mut self, msg: GetReservation, _: &mut Self::Context) -> Self::Result {
        self.concert.reservation(msg.0).cloned()
    }
}

impl Handler<GetReservations> for ConcertActor {
    type Result = MessageResult<GetReservations>;

    fn handle(&mut self, msg: GetReservations, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            msg.0
                .iter()
                .filter_map(|id| self.concert.reservation(*id).cloned())
                .collect(),
        )
    }
}

impl Handler<RetireFinished> for ConcertActor {
    type Result = MessageResult<RetireFinished>;

    fn handle(&mut self, msg: RetireFinished, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.concert.retire_finished(msg.cutoff_ms, msg.projected))
    }
}

impl Handler<ListSeats> for ConcertActor {
    type Result = Vec<SeatView>;

    fn handle(&mut self, msg: ListSeats, _: &mut Self::Context) -> Self::Result {
        self.concert
            .seats()
            .seats()
            .filter(|&(_, _, status)| msg.status.is_none_or(|wanted| wanted == status))
            .map(|(number, price, status)| SeatView { number, price, status })
            .collect()
    }
}

impl Handler<ExpireHolds> for ConcertActor {
    type Result = usize;

    fn handle(&mut self, _: ExpireHolds, _: &mut Self::Context) -> Self::Result {
        self.expire()
    }
}

impl Handler<ExportConcert> for ConcertActor {
    type Result = MessageResult<ExportConcert>;

    fn handle(&mut self, _: ExportConcert, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.concert.clone())
    }
}
