//! What the engine's integration tests share: an engine on virtual time
//! (a [`ManualClock`] for "now", tokio's paused clock for the actors' timers)
//! with an in-memory journal, and one helper per engine call so that each
//! test reads as arrange / act / assert.

// Each test crate (file) uses a different subset of these helpers.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concert_actors::accounts::WalletLimits;
use concert_actors::clock::{Clock, ManualClock, SharedClock, TimestampMs};
use concert_actors::concert::{Concert, Reservation};
use concert_actors::concert_actor::{ExpireHolds, HoldSettings, PaymentReceipt};
use concert_actors::events::Event;
use concert_actors::pricing::PriceTier;
use concert_actors::queue::{QueueSettings, TokenId};
use concert_actors::router::ConcertRouter;
use concert_actors::seat_map::HoldLimits;
use concert_actors::sink::{DurableFuture, EventSink, MemoryJournal};
use concert_actors::types::{ConcertId, JournalPos, Krw, MemberId, ReservationId, SeatNo, SeatStatus};
use concert_actors::{Engine, EngineError, EngineSettings, NewConcert};

/// 2026-01-01T00:00:00Z: where virtual time starts.
pub const T0_MS: TimestampMs = 1_767_225_600_000;
pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;
pub const HOLD_TIMEOUT_MS: i64 = 300_000;
pub const EXPIRY_TICK_MS: u64 = 100;
pub const QUEUE_TICK_MS: i64 = 1_000;
pub const TOKEN_TTL_MS: i64 = 600_000;
pub const IDLE_TIMEOUT_MS: i64 = 120_000;
pub const MAX_SEATS_PER_RESERVATION: u32 = 4;
pub const MAX_SEATS_PER_MEMBER: u32 = 4;
pub const MAX_CHARGE: Krw = 10_000_000;
pub const MAX_BALANCE: Krw = 1_000_000_000;
pub const SEAT_PRICE: Krw = 50_000;

/// The contract's defaults, with a queue that admits 50 a tick under a cap of 1000.
pub fn settings() -> EngineSettings {
    EngineSettings {
        hold: HoldSettings {
            hold_timeout_ms: HOLD_TIMEOUT_MS,
            expiry_tick_ms: EXPIRY_TICK_MS,
            limits: HoldLimits {
                max_seats_per_reservation: MAX_SEATS_PER_RESERVATION,
                max_seats_per_member: MAX_SEATS_PER_MEMBER,
            },
        },
        wallet: WalletLimits {
            max_charge: MAX_CHARGE,
            max_balance: MAX_BALANCE,
        },
        queue: QueueSettings {
            tick_ms: QUEUE_TICK_MS,
            admit_per_tick: 50,
            max_active: 1_000,
            token_ttl_ms: TOKEN_TTL_MS,
            idle_timeout_ms: IDLE_TIMEOUT_MS,
        },
    }
}

/// Lets every task that is ready (an actor woken by a timer, a spawned
/// request) run before the test looks again. No real time passes.
pub async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// A sink that can be told to refuse new writes, as the persister does when
/// the database is down; it records what it is given in a [`MemoryJournal`].
#[derive(Debug, Default)]
pub struct SwitchableSink {
    pub journal: Arc<MemoryJournal>,
    refusing: AtomicBool,
}

impl SwitchableSink {
    pub fn refuse_writes(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }
}

impl EventSink for SwitchableSink {
    fn append(&self, event: Event) -> JournalPos {
        self.journal.append(event)
    }

    fn accepting(&self) -> bool {
        !self.refusing.load(Ordering::SeqCst)
    }

    fn durable(&self, pos: JournalPos) -> DurableFuture {
        self.journal.durable(pos)
    }

    fn last_pos(&self) -> JournalPos {
        self.journal.last_pos()
    }
}

/// An engine plus the handles a test drives it with.
pub struct TestEngine {
    pub engine: Engine,
    pub clock: Arc<ManualClock>,
    pub journal: Arc<MemoryJournal>,
    next_name: AtomicU64,
}

impl TestEngine {
    /// Every actor on the test's own thread. Call inside an actix System,
    /// after `tokio::time::pause()` when the test relies on timers.
    pub fn on_current_thread() -> Self {
        Self::start(settings(), ConcertRouter::on_current_thread())
    }

    /// Concert actors on `threads` arbiter threads (the race tests).
    pub fn with_threads(threads: usize) -> Self {
        Self::start(settings(), ConcertRouter::with_threads(threads))
    }

    pub fn start(settings: EngineSettings, router: ConcertRouter) -> Self {
        let journal = Arc::new(MemoryJournal::new());
        let sink: Arc<dyn EventSink> = journal.clone();
        Self::start_with_sink(settings, router, sink, journal)
    }

    /// `journal` is where `sink` records its events (for the assertions).
    pub fn start_with_sink(
        settings: EngineSettings,
        router: ConcertRouter,
        sink: Arc<dyn EventSink>,
        journal: Arc<MemoryJournal>,
    ) -> Self {
        let clock = ManualClock::new(T0_MS);
        let shared: SharedClock = clock.clone();
        Self {
            engine: Engine::start(settings, shared, sink, router),
            clock,
            journal,
            next_name: AtomicU64::new(1),
        }
    }

    // ---- time --------------------------------------------------------------

    pub fn now(&self) -> TimestampMs {
        self.clock.now_ms()
    }

    /// Moves "now" only: the actors' timers do not fire.
    pub fn advance_clock(&self, ms: i64) {
        self.clock.advance_ms(ms);
    }

    /// Moves "now" and tokio's paused clock together, so the actors' own
    /// timers fire as they would in `ms` of real time. Needs `pause()`.
    pub async fn advance_virtual(&self, ms: i64) {
        self.clock.advance_ms(ms);
        tokio::time::advance(Duration::from_millis(ms as u64)).await;
        settle().await;
    }

    // ---- members and wallets -------------------------------------------------

    pub fn member(&self) -> MemberId {
        let n = self.next_name.fetch_add(1, Ordering::Relaxed);
        self.engine
            .register_member(&format!("member-{n}"), [n as u8; 32])
            .expect("registering a member succeeds")
            .value
    }

    pub fn member_with_balance(&self, balance: Krw) -> MemberId {
        let member = self.member();
        if balance > 0 {
            self.charge(member, balance)
                .expect("a charge within the limits succeeds");
        }
        member
    }

    pub fn charge(&self, member: MemberId, amount: Krw) -> Result<Krw, EngineError> {
        self.engine.charge(member, amount).map(|c| c.value)
    }

    pub fn balance(&self, member: MemberId) -> Krw {
        self.engine.accounts().balance(member).expect("the member exists")
    }

    // ---- catalog -------------------------------------------------------------

    pub fn new_concert(seat_count: u32, starts_at_ms: TimestampMs) -> NewConcert {
        NewConcert {
            title: "Winter Gala".into(),
            category: "classical".into(),
            venue: "Seoul Arts Center".into(),
            starts_at_ms,
            seat_count,
            price: SEAT_PRICE,
            price_tiers: Vec::new(),
        }
    }

    /// A concert of `seat_count` seats at [`SEAT_PRICE`], thirty days ahead.
    pub fn concert(&self, seat_count: u32) -> ConcertId {
        self.concert_starting_at(seat_count, self.now() + 30 * DAY_MS)
    }

    pub fn concert_starting_at(&self, seat_count: u32, starts_at_ms: TimestampMs) -> ConcertId {
        self.create(Self::new_concert(seat_count, starts_at_ms))
    }

    pub fn concert_with_tiers(&self, seat_count: u32, tiers: Vec<PriceTier>) -> ConcertId {
        let mut new = Self::new_concert(seat_count, self.now() + 30 * DAY_MS);
        new.price_tiers = tiers;
        self.create(new)
    }

    fn create(&self, new: NewConcert) -> ConcertId {
        self.engine
            .create_concert(new)
            .expect("a valid concert is created")
            .value
            .info
            .id
    }

    // ---- queue ---------------------------------------------------------------

    /// Issues a token for `member` and runs one admission tick.
    pub async fn admitted_token(&self, member: MemberId) -> TokenId {
        let token = self.engine.issue_token(member).expect("a token is issued").token;
        self.engine.tick_queue().await.expect("the queue actor answers");
        assert_eq!(
            self.engine.admitted_member(&token),
            Ok(member),
            "one tick admits the token of an otherwise empty queue"
        );
        token
    }

    // ---- reservations --------------------------------------------------------

    pub async fn hold(
        &self,
        member: MemberId,
        concert: ConcertId,
        seats: &[SeatNo],
    ) -> Result<Reservation, EngineError> {
        self.engine.hold(member, concert, seats.to_vec()).await.map(|c| c.value)
    }

    pub async fn pay(&self, member: MemberId, reservation: ReservationId) -> Result<PaymentReceipt, EngineError> {
        self.engine.pay(member, reservation, None).await.map(|c| c.value)
    }

    pub async fn pay_with_token(
        &self,
        member: MemberId,
        reservation: ReservationId,
        token: TokenId,
    ) -> Result<PaymentReceipt, EngineError> {
        self.engine.pay(member, reservation, Some(token)).await.map(|c| c.value)
    }

    pub async fn cancel(&self, member: MemberId, reservation: ReservationId) -> Result<Reservation, EngineError> {
        self.engine.cancel(member, reservation).await.map(|c| c.value)
    }

    /// The reservation as its owner sees it.
    pub async fn reservation(&self, member: MemberId, reservation: ReservationId) -> Reservation {
        self.engine
            .reservation(member, reservation)
            .await
            .expect("the owner can read the reservation")
    }

    pub async fn seat_status(&self, concert: ConcertId, seat: SeatNo) -> SeatStatus {
        self.seat_statuses(concert).await[seat as usize - 1]
    }

    /// Every seat's status, seat 1 first.
    pub async fn seat_statuses(&self, concert: ConcertId) -> Vec<SeatStatus> {
        self.engine
            .seats(concert, None)
            .await
            .expect("the concert exists")
            .into_iter()
            .map(|seat| seat.status)
            .collect()
    }

    /// What the actor's expiry timer does, sent as a message.
    pub async fn expire(&self, concert: ConcertId) -> usize {
        self.engine
            .router()
            .send(concert, ExpireHolds)
            .await
            .expect("the concert actor answers")
    }

    pub async fn export(&self) -> Vec<Concert> {
        self.engine
            .export_concerts()
            .await
            .expect("every concert actor answers")
    }

    /// docs/ARCHITECTURE.md's invariants as the engine checks them (panics when broken).
    pub async fn check_invariants(&self) {
        self.engine
            .check_invariants()
            .await
            .expect("every concert actor answers the invariant check");
    }

    // ---- journal -------------------------------------------------------------

    pub fn events(&self) -> Vec<Event> {
        self.journal.events()
    }

    /// Events appended after the first `mark` ones.
    pub fn events_since(&self, mark: usize) -> Vec<Event> {
        self.journal.events().split_off(mark)
    }

    pub fn payment_events(&self, reservation: ReservationId) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| matches!(e, Event::PaymentCompleted { reservation: r, .. } if *r == reservation))
            .collect()
    }
}

/// A short name for an event's kind, for readable assertions.
pub fn kind(event: &Event) -> &'static str {
    event.kind()
}

pub fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(kind).collect()
}
