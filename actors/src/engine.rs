//! `Engine`: the one entry point the HTTP layer (or a benchmark) talks to.
//!
//! It wires the components together and owns nothing contended itself:
//! seats live in concert actors (reached through the [`ConcertRouter`]),
//! tokens in the [`WaitingQueue`] (ticked by the [`QueueActor`]), money in
//! [`Accounts`]. Every write returns [`Committed`] with the journal position
//! the caller must see durable before answering (in `sync` durability).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::accounts::{Accounts, WalletLimits};
use crate::clock::{SharedClock, TimestampMs};
use crate::concert::{Concert, ConcertInfo, Reservation, ReservationStatus};
use crate::concert_actor::{
    CancelReservation, Committed, ConcertDeps, ConcertRequest, ExportConcert, GetReservation, GetReservations,
    HoldSeats, HoldSettings, ListSeats, PayReservation, PaymentReceipt, ReservationCounters, RetireFinished, SeatView,
};
use crate::directory::ReservationDirectory;
use crate::error::EngineError;
use crate::events::Event;
use crate::idempotency::{reject, IdemTicket, IdempotencyStore};
use crate::pricing::{PriceTier, Pricing};
use crate::queue::{Issued, QueueSettings, TokenId, TokenStatus, TokenView, WaitingQueue};
use crate::queue_actor::{QueueActor, RunTick};
use crate::request_batcher::Answer;
use crate::router::{ConcertHandle, ConcertRouter};
use crate::seat_map::MAX_RESERVATION_ID;
use crate::sink::EventSink;
use crate::state::EngineState;
use crate::types::{ConcertId, JournalPos, Krw, MemberId, ReservationId, SeatNo, SeatStatus, MAX_SEATS_PER_CONCERT};

/// Every engine setting, validated by the caller once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSettings {
    pub hold: HoldSettings,
    pub wallet: WalletLimits,
    pub queue: QueueSettings,
}

impl EngineSettings {
    /// The defaults of the contract's configuration table (the server's own
    /// defaults come from its flags; this is for benches and tools).
    pub fn contract_defaults() -> Self {
        Self {
            hold: HoldSettings {
                hold_timeout_ms: 300_000,
                expiry_tick_ms: 100,
                limits: crate::seat_map::HoldLimits {
                    max_seats_per_reservation: 4,
                    max_seats_per_member: 4,
                },
            },
            wallet: WalletLimits {
                max_charge: 10_000_000,
                max_balance: 1_000_000_000,
            },
            queue: QueueSettings {
                tick_ms: 1_000,
                admit_per_tick: 50,
                max_active: 1_000,
                token_ttl_ms: 600_000,
                idle_timeout_ms: 120_000,
            },
        }
    }
}

/// A concert to create, as an operator submits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConcert {
    pub title: String,
    pub category: String,
    pub venue: String,
    pub starts_at_ms: TimestampMs,
    pub seat_count: u32,
    pub price: Krw,
    pub price_tiers: Vec<PriceTier>,
}

/// Longest concert title and venue, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest category slug.
pub const MAX_CATEGORY_LEN: usize = 32;

impl NewConcert {
    /// Checks every field against the contract's limits.
    pub fn validate(&self, now_ms: TimestampMs) -> Result<Pricing, EngineError> {
        let invalid = |msg: &str| Err(EngineError::Validation(msg.to_owned()));
        let title_chars = self.title.trim().chars().count();
        if title_chars == 0 || title_chars > MAX_TITLE_CHARS {
            return invalid("title must be 1..=200 characters");
        }
        let venue_chars = self.venue.trim().chars().count();
        if venue_chars == 0 || venue_chars > MAX_TITLE_CHARS {
            return invalid("venue must be 1..=200 characters");
        }
        let slug_ok = (1..=MAX_CATEGORY_LEN).contains(&self.category.len())
            && self
                .category
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !slug_ok {
            return invalid("category must match [a-z0-9-]{1,32}");
        }
        if self.starts_at_ms <= now_ms {
            return invalid("startsAt must be in the future");
        }
        if !(1..=MAX_SEATS_PER_CONCERT).contains(&self.seat_count) {
            return invalid("seatCount must be 1..=100000");
        }
        Pricing::new(self.price, self.price_tiers.clone(), self.seat_count)
            .map_err(|err| EngineError::Validation(err.to_string()))
    }
}

/// The answer to a hold on its way back from the concert actor. An
/// accepted hold is recorded in the [`ReservationDirectory`] here, on the
/// caller's thread, before the caller sees it (so a cancel, payment or read
/// that follows finds its route), instead of inside the actor's turn. If the
/// caller goes away before the answer comes (an HTTP client that hung up),
/// dropping this hands the wait to a task of its own, so an accepted hold is
/// recorded all the same and shows in the member's list.
struct HoldAnswer {
    directory: Arc<ReservationDirectory>,
    /// `None` once the answer was taken.
    answer: Option<Answer>,
}

impl HoldAnswer {
    async fn recorded(mut self) -> Result<Committed<Reservation>, EngineError> {
        let Some(answer) = self.answer.as_mut() else {
            return Err(EngineError::Unavailable);
        };
        // A dropped sender means the batch failed without an answer for us.
        let reply = answer.await.unwrap_or(Err(EngineError::Unavailable));
        self.answer = None;
        if let Ok(held) = &reply {
            self.directory.record(&held.value);
        }
        reply
    }
}

impl Drop for HoldAnswer {
    fn drop(&mut self) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        let directory = Arc::clone(&self.directory);
        let record = async move {
            if let Ok(Ok(held)) = answer.await {
                directory.record(&held.value);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(record);
            }
            // Only a caller dropped outside any runtime (the engine is
            // being torn down) gets here; its hold, if accepted, stays out of
            // the directory (unroutable) until it expires.
            Err(_) => tracing::warn!("hold answer dropped outside a runtime: not recorded"),
        }
    }
}

/// Totals for the money invariant: balances + payments = charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MoneyAudit {
    pub total_balance: Krw,
    pub total_charged: Krw,
    pub total_paid: Krw,
    /// Sum of the amounts of CONFIRMED reservations, from the concerts.
    pub total_sold: Krw,
}

pub struct Engine {
    settings: EngineSettings,
    clock: SharedClock,
    sink: Arc<dyn EventSink>,
    accounts: Arc<Accounts>,
    queue: Arc<WaitingQueue>,
    queue_actor: Addr<QueueActor>,
    router: ConcertRouter,
    deps: Arc<ConcertDeps>,
    idempotency: Arc<IdempotencyStore>,
    next_reservation: AtomicU64,
    next_concert: AtomicU64,
    /// Held while a concert is created and while a snapshot lists the
    /// concerts, so a snapshot never misses a concert its position covers.
    concert_creation: parking_lot::Mutex<()>,
}

impl Engine {
    /// Builds the engine and starts its queue actor on the current arbiter.
    /// Must run inside an actix `System`.
    pub fn start(
        settings: EngineSettings,
        clock: SharedClock,
        sink: Arc<dyn EventSink>,
        router: ConcertRouter,
    ) -> Self {
        let accounts = Arc::new(Accounts::new(settings.wallet, Arc::clone(&sink)));
        let queue = Arc::new(WaitingQueue::new(settings.queue, Arc::clone(&sink)));
        let queue_actor = QueueActor::new(Arc::clone(&queue), Arc::clone(&clock)).start();
        let deps = Arc::new(ConcertDeps {
            accounts: Arc::clone(&accounts),
            queue: Arc::clone(&queue),
            directory: Arc::new(ReservationDirectory::new()),
            sink: Arc::clone(&sink),
            clock: Arc::clone(&clock),
            payment_ids: Arc::new(AtomicU64::new(1)),
            settings: settings.hold,
            counters: Arc::new(ReservationCounters::default()),
        });
        Self {
            settings,
            clock,
            idempotency: IdempotencyStore::new(Arc::clone(&sink)),
            sink,
            accounts,
            queue,
            queue_actor,
            router,
            deps,
            next_reservation: AtomicU64::new(1),
            next_concert: AtomicU64::new(1),
            concert_creation: parking_lot::Mutex::new(()),
        }
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn now_ms(&self) -> TimestampMs {
        self.clock.now_ms()
    }

    pub fn sink(&self) -> &Arc<dyn EventSink> {
        &self.sink
    }

    pub fn accounts(&self) -> &Arc<Accounts> {
        &self.accounts
    }

    pub fn queue(&self) -> &Arc<WaitingQueue> {
        &self.queue
    }

    pub fn router(&self) -> &ConcertRouter {
        &self.router
    }

    /// Hold and payment counters for metrics.
    pub fn counters(&self) -> &ReservationCounters {
        &self.deps.counters
    }

    pub fn idempotency(&self) -> &Arc<IdempotencyStore> {
        &self.idempotency
    }

    /// Where each reservation in memory is (tests, metrics).
    pub fn directory(&self) -> &ReservationDirectory {
        &self.deps.directory
    }

    // ---- members and wallets -------------------------------------------

    pub fn register_member(&self, name: &str, key_hash: [u8; 32]) -> Result<Committed<MemberId>, EngineError> {
        let (member, pos) = self.accounts.register(name, key_hash, self.now_ms())?;
        Ok(Committed { value: member, pos })
    }

    /// Registers a member whose key hash is made from the new id.
    pub fn register_member_with(
        &self,
        name: &str,
        key_hash_for: impl FnOnce(MemberId) -> [u8; 32],
    ) -> Result<Committed<MemberId>, EngineError> {
        let (member, pos) = self.accounts.register_with(name, self.now_ms(), key_hash_for)?;
        Ok(Committed { value: member, pos })
    }

    /// Charges the wallet; returns the new balance.
    pub fn charge(&self, member: MemberId, amount: Krw) -> Result<Committed<Krw>, EngineError> {
        self.charge_keyed(member, amount, None)
    }

    /// [`Engine::charge`] settling `ticket` (an `Idempotency-Key`) with it.
    pub fn charge_keyed(
        &self,
        member: MemberId,
        amount: Krw,
        ticket: Option<IdemTicket<Krw>>,
    ) -> Result<Committed<Krw>, EngineError> {
        let now_ms = self.now_ms();
        let mut ticket = ticket;
        match self.accounts.charge_keyed(member, amount, now_ms, &mut ticket) {
            Ok((balance, pos)) => Ok(Committed { value: balance, pos }),
            Err(rejection) => {
                let err = EngineError::from(rejection);
                reject(ticket, &err, now_ms);
                Err(err)
            }
        }
    }

    // ---- catalog ---------------------------------------------------------

    /// Creates a concert and starts its actor.
    pub fn create_concert(&self, new: NewConcert) -> Result<Committed<ConcertHandle>, EngineError> {
        let pricing = new.validate(self.now_ms())?;
        if !self.sink.accepting() {
            return Err(EngineError::Unavailable);
        }
        let _creating = self.concert_creation.lock();
        let info = ConcertInfo {
            id: self.next_concert.fetch_add(1, Ordering::Relaxed),
            title: new.title.trim().to_owned(),
            category: new.category,
            venue: new.venue.trim().to_owned(),
            starts_at_ms: new.starts_at_ms,
            seat_count: new.seat_count,
            pricing,
        };
        let pos = self.sink.append(Event::ConcertCreated { info: info.clone() });
        let mut concert = Concert::new(info);
        concert.set_applied_pos(pos);
        let handle = self.router.start(concert, Arc::clone(&self.deps));
        Ok(Committed { value: handle, pos })
    }

    pub fn concert(&self, concert: ConcertId) -> Option<ConcertHandle> {
        self.router.get(concert)
    }

    /// Seats of a concert, optionally only those with `status`.
    pub async fn seats(&self, concert: ConcertId, status: Option<SeatStatus>) -> Result<Vec<SeatView>, EngineError> {
        self.router.send(concert, ListSeats { status }).await
    }

    // ---- queue -----------------------------------------------------------

    pub fn issue_token(&self, member: MemberId) -> Result<Issued, EngineError> {
        Ok(self.queue.issue(member, self.now_ms())?)
    }

    /// Status of a token (a poll). Unknown tokens are `TokenInvalid`.
    pub fn token_status(&self, token: &TokenId) -> Result<TokenView, EngineError> {
        self.queue.status(token, self.now_ms()).ok_or(EngineError::TokenInvalid)
    }

    /// The member behind an ACTIVE token: the gate of seat, hold and pay.
    pub fn admitted_member(&self, token: &TokenId) -> Result<MemberId, EngineError> {
        let view = self.queue.peek(token).ok_or(EngineError::TokenInvalid)?;
        match view.status {
            // Past `activeUntil` a token is expired even before the tick marks it.
            TokenStatus::Active if view.active_until_ms.is_some_and(|until| until <= self.now_ms()) => {
                Err(EngineError::TokenInvalid)
            }
            TokenStatus::Active => Ok(view.member),
            TokenStatus::Waiting => Err(EngineError::TokenNotActive {
                position: view.position,
            }),
            TokenStatus::Expired => Err(EngineError::TokenInvalid),
        }
    }

    /// Runs one admission tick now (tests and tools; production ticks on a timer).
    pub async fn tick_queue(&self) -> Result<crate::queue::TickReport, EngineError> {
        self.queue_actor
            .send(RunTick)
            .await
            .map_err(|_| EngineError::Unavailable)
    }

    // ---- reservations and payment -----------------------------------------

    /// Holds `seats` of `concert` for `member`, all or none. Goes through
    /// the concert's request batcher: concurrent holds share one actor
    /// message, each still decided on its own, in arrival order.
    pub async fn hold(
        &self,
        member: MemberId,
        concert: ConcertId,
        seats: Vec<SeatNo>,
    ) -> Result<Committed<Reservation>, EngineError> {
        self.hold_keyed(member, concert, seats, None).await
    }

    /// [`Engine::hold`] settling `ticket` (an `Idempotency-Key`) in the
    /// concert actor's turn, with the hold's event.
    pub async fn hold_keyed(
        &self,
        member: MemberId,
        concert: ConcertId,
        seats: Vec<SeatNo>,
        ticket: Option<IdemTicket<Reservation>>,
    ) -> Result<Committed<Reservation>, EngineError> {
        let reservation = self.next_reservation.fetch_add(1, Ordering::Relaxed);
        if reservation > MAX_RESERVATION_ID {
            return Err(EngineError::Unavailable);
        }
        if self.router.get(concert).is_none() {
            let err = EngineError::NotFound("concert");
            reject(ticket, &err, self.now_ms());
            return Err(err);
        }
        let hold = HoldSeats {
            member,
            reservation,
            seats,
            idempotency: ticket,
        };
        let answer = self.router.submit(concert, ConcertRequest::Hold(hold)).await?;
        HoldAnswer {
            directory: Arc::clone(&self.deps.directory),
            answer: Some(answer),
        }
        .recorded()
        .await
    }

    /// Pays a pending reservation of `member`; expires `token` on success.
    pub async fn pay(
        &self,
        member: MemberId,
        reservation: ReservationId,
        token: Option<TokenId>,
    ) -> Result<Committed<PaymentReceipt>, EngineError> {
        self.pay_keyed(member, reservation, token, None).await
    }

    /// [`Engine::pay`] settling `ticket` (an `Idempotency-Key`) in the
    /// concert actor's turn, in the payment's one event.
    pub async fn pay_keyed(
        &self,
        member: MemberId,
        reservation: ReservationId,
        token: Option<TokenId>,
        ticket: Option<IdemTicket<PaymentReceipt>>,
    ) -> Result<Committed<PaymentReceipt>, EngineError> {
        let route = match self.owned_route(member, reservation) {
            Ok(route) => route,
            Err(err) => {
                reject(ticket, &err, self.now_ms());
                return Err(err);
            }
        };
        let paid = self
            .router
            .send(
                route.concert,
                PayReservation {
                    member,
                    reservation,
                    token,
                    idempotency: ticket,
                },
            )
            .await??;
        // The actor expired `token` as it journaled the payment.
        Ok(paid)
    }

    /// Cancels a pending reservation of `member` (batched like `hold`).
    pub async fn cancel(
        &self,
        member: MemberId,
        reservation: ReservationId,
    ) -> Result<Committed<Reservation>, EngineError> {
        self.cancel_keyed(member, reservation, None).await
    }

    /// [`Engine::cancel`] settling `ticket` (an `Idempotency-Key`) in the
    /// concert actor's turn, with the release's event.
    pub async fn cancel_keyed(
        &self,
        member: MemberId,
        reservation: ReservationId,
        ticket: Option<IdemTicket<Reservation>>,
    ) -> Result<Committed<Reservation>, EngineError> {
        let route = match self.owned_route(member, reservation) {
            Ok(route) => route,
            Err(err) => {
                reject(ticket, &err, self.now_ms());
                return Err(err);
            }
        };
        let cancel = CancelReservation {
            member,
            reservation,
            idempotency: ticket,
        };
        self.router.request(route.concert, ConcertRequest::Cancel(cancel)).await
    }

    /// A reservation of `member`.
    pub async fn reservation(&self, member: MemberId, reservation: ReservationId) -> Result<Reservation, EngineError> {
        let route = self.route(reservation)?;
        if route.member != member {
            return Err(EngineError::Forbidden);
        }
        self.router
            .send(route.concert, GetReservation(reservation))
            .await?
            .ok_or(EngineError::NotFound("reservation"))
    }

    /// Every reservation of `member` in memory, newest first.
    pub async fn member_reservations(&self, member: MemberId) -> Result<Vec<Reservation>, EngineError> {
        self.member_reservations_before(member, None, usize::MAX).await
    }

    /// The `limit` newest reservations of `member` in memory with ids
    /// below `before`, newest first: one message per concert they are of,
    /// all sent at once. (Retired ones are in the database's tables.)
    pub async fn member_reservations_before(
        &self,
        member: MemberId,
        before: Option<ReservationId>,
        limit: usize,
    ) -> Result<Vec<Reservation>, EngineError> {
        let mut by_concert: std::collections::BTreeMap<ConcertId, Vec<ReservationId>> = Default::default();
        for (concert, reservation) in self.deps.directory.of_member_before(member, before, limit) {
            by_concert.entry(concert).or_default().push(reservation);
        }
        let asks = by_concert
            .into_iter()
            .map(|(concert, ids)| self.router.send(concert, GetReservations(ids)));
        let mut out = Vec::new();
        for found in futures_util::future::join_all(asks).await {
            out.extend(found?);
        }
        out.sort_unstable_by_key(|r| std::cmp::Reverse(r.id));
        Ok(out)
    }

    /// Retires the finished reservations that finished at or before
    /// `cutoff_ms` by events the tables hold (`projected`, the tables'
    /// `projected_pos`): they leave every concert's memory and the
    /// directory, and are read from the tables from then on. Returns how many.
    pub async fn retire_finished(&self, cutoff_ms: TimestampMs, projected: JournalPos) -> Result<usize, EngineError> {
        let mut retired = 0;
        for handle in self.router.all() {
            let gone = self
                .router
                .send(handle.info.id, RetireFinished { cutoff_ms, projected })
                .await?;
            for finished in &gone {
                self.deps.directory.remove(finished.reservation);
            }
            retired += gone.len();
        }
        Ok(retired)
    }

    /// The route of a reservation `member` owns.
    fn owned_route(
        &self,
        member: MemberId,
        reservation: ReservationId,
    ) -> Result<crate::directory::ReservationRoute, EngineError> {
        let route = self.route(reservation)?;
        if route.member != member {
            return Err(EngineError::Forbidden);
        }
        Ok(route)
    }

    fn route(&self, reservation: ReservationId) -> Result<crate::directory::ReservationRoute, EngineError> {
        self.deps
            .directory
            .route(reservation)
            .ok_or(EngineError::NotFound("reservation"))
    }

    // ---- checks ----------------------------------------------------------

    /// Copies of every concert's state, by id.
    pub async fn export_concerts(&self) -> Result<Vec<Concert>, EngineError> {
        let mut handles = self.router.all();
        handles.sort_by_key(|h| h.info.id);
        let mut concerts = Vec::with_capacity(handles.len());
        for handle in handles {
            concerts.push(self.router.send(handle.info.id, ExportConcert).await?);
        }
        Ok(concerts)
    }

    /// Money totals across wallets and concerts.
    pub async fn audit_money(&self) -> Result<MoneyAudit, EngineError> {
        let mut audit = MoneyAudit::default();
        for (_, account) in self.accounts.export() {
            audit.total_balance += account.balance;
            let (charged, paid) = account.ledger_totals();
            audit.total_charged += charged;
            audit.total_paid += paid;
        }
        for concert in self.export_concerts().await? {
            audit.total_sold += concert
                .reservations()
                .filter(|r| r.status == ReservationStatus::Confirmed)
                .map(|r| r.amount)
                .sum::<Krw>();
        }
        Ok(audit)
    }

    /// Checks every invariant of docs/ARCHITECTURE.md that can be read from memory;
    /// panics on the first broken one.
    pub async fn check_invariants(&self) -> Result<(), EngineError> {
        self.accounts.check_invariants();
        self.queue.check_invariants();
        for concert in self.export_concerts().await? {
            concert.check_invariants();
        }
        let audit = self.audit_money().await?;
        assert_eq!(
            audit.total_balance + audit.total_paid,
            audit.total_charged,
            "money is conserved: balances + payments = charges"
        );
        assert_eq!(
            audit.total_paid, audit.total_sold,
            "every payment bought exactly its seats"
        );
        Ok(())
    }

    /// The whole state as plain data, for a snapshot. `journal_pos` is the
    /// last position appended before the copy started: everything up to it
    /// is included; later events may be included too (replay skips them).
    pub async fn export_state(&self) -> Result<EngineState, EngineError> {
        let (journal_pos, handles) = {
            let _creating = self.concert_creation.lock();
            (self.sink.last_pos(), self.router.all())
        };
        let mut concerts = std::collections::BTreeMap::new();
        for handle in handles {
            let concert = self.router.send(handle.info.id, ExportConcert).await?;
            concerts.insert(concert.info().id, concert);
        }
        Ok(EngineState {
            accounts: self.accounts.export().into_iter().collect(),
            concerts,
            tokens: self.queue.export().into_iter().map(|t| (t.token, t)).collect(),
            idempotency: self.idempotency.export(),
            next_reservation: self.next_reservation.load(Ordering::Relaxed),
            next_payment: self.deps.payment_ids.load(Ordering::Relaxed),
            next_concert: self.next_concert.load(Ordering::Relaxed),
            journal_pos,
        })
    }

    /// Loads a recovered state into a freshly started engine, before it
    /// serves: accounts, tokens (order and `activeUntil` kept), idempotency
    /// records, and one actor per concert. Holds past their deadline are
    /// expired by the concert actors' first expiry tick.
    pub fn restore(&self, state: EngineState) {
        let now_ms = self.now_ms();
        self.accounts.import(state.accounts.into_iter().collect());
        self.queue.import(state.tokens.into_values().collect(), now_ms);
        for record in state.idempotency {
            self.idempotency.restore(record);
        }
        let mut reservations: Vec<(ReservationId, Reservation)> = state
            .concerts
            .values()
            .flat_map(|c| c.reservations().map(|r| (r.id, r.clone())))
            .collect();
        reservations.sort_by_key(|(id, _)| *id);
        let max_reservation = reservations.last().map_or(0, |(id, _)| *id);
        for (_, reservation) in &reservations {
            self.deps.directory.record(reservation);
        }
        let max_concert = state.concerts.keys().max().copied().unwrap_or(0);
        for concert in state.concerts.into_values() {
            self.router.start(concert, Arc::clone(&self.deps));
        }
        let at_least = |counter: &AtomicU64, value: u64| {
            counter.fetch_max(value.max(1), Ordering::Relaxed);
        };
        at_least(&self.next_reservation, state.next_reservation.max(max_reservation + 1));
        at_least(&self.next_concert, state.next_concert.max(max_concert + 1));
        at_least(&self.deps.payment_ids, state.next_payment);
    }

    /// Stops the concert arbiters (graceful shutdown).
    pub fn shutdown(&self) {
        self.router.shutdown();
    }
}
