//! Property tests: random sequences of operations checked after every step.
//!
//! (a) The functional core: [`Concert`] driven directly (hold, pay, cancel,
//!     expire, time passing) against a small reference model of every seat
//!     and reservation.
//! (b) The whole engine on virtual time: charges, queue tokens and ticks,
//!     holds, payments, cancellations, expiry and time passing over three
//!     concerts and four members, with `Engine::check_invariants()` and this
//!     file's own checks of invariants 1, 2, 3, 5 and 6 (docs/ARCHITECTURE.md) after
//!     every step. Every actor runs on the test's thread with tokio's clock
//!     paused and moved in lockstep with the `ManualClock`, so the concert
//!     actors' expiry timers and the queue actor's admission ticks fire as
//!     they would in production, and invariant 5 is checked against them.
//!     Each answer is also compared with what the contract predicts from the
//!     state just before the request.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{settle, T0_MS};
use concert_actors::accounts::WalletLimits;
use concert_actors::clock::{ManualClock, SharedClock, TimestampMs};
use concert_actors::concert::{Concert, ConcertInfo, ConcertRejection, Reservation, ReservationStatus};
use concert_actors::concert_actor::{ExpireHolds, HoldSettings};
use concert_actors::events::Event;
use concert_actors::pricing::{PriceTier, Pricing};
use concert_actors::queue::{QueueSettings, TokenId, TokenStatus};
use concert_actors::router::ConcertRouter;
use concert_actors::seat_map::{HoldError, HoldLimits};
use concert_actors::sink::{EventSink, MemoryJournal};
use concert_actors::types::{ConcertId, Krw, MemberId, ReservationId, SeatNo, SeatStatus};
use concert_actors::{Engine, EngineError, EngineSettings, NewConcert};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

fn tier(from_seat: SeatNo, to_seat: SeatNo, price: Krw) -> PriceTier {
    PriceTier {
        from_seat,
        to_seat,
        price,
    }
}

// ================================================================================
// (a) the functional core against a reference model
// ================================================================================

const CORE_SEATS: SeatNo = 8;
const CORE_MEMBERS: MemberId = 3;
const CORE_LIMITS: HoldLimits = HoldLimits {
    max_seats_per_reservation: 3,
    max_seats_per_member: 4,
};
const CORE_HOLD_TIMEOUT_MS: i64 = 10_000;
/// Reachable within a run, so that sales close in some of them.
const CORE_STARTS_AT_MS: TimestampMs = T0_MS + 40_000;

/// Seats 1-2 cost 30,000, seats 7-8 are free, the rest 10,000.
fn core_price(seat: SeatNo) -> Krw {
    match seat {
        1 | 2 => 30_000,
        7 | 8 => 0,
        _ => 10_000,
    }
}

fn core_concert() -> Concert {
    let pricing = Pricing::new(10_000, vec![tier(7, 8, 0), tier(1, 2, 30_000)], CORE_SEATS).expect("valid tiers");
    Concert::new(ConcertInfo {
        id: 1,
        title: "core".into(),
        category: "test".into(),
        venue: "model".into(),
        starts_at_ms: CORE_STARTS_AT_MS,
        seat_count: CORE_SEATS,
        pricing,
    })
}

#[derive(Debug, Clone)]
enum CoreOp {
    Hold {
        member: MemberId,
        seats: Vec<SeatNo>,
    },
    /// Pays the `pick`-th reservation made so far, as its owner or as `member`.
    Pay {
        member: MemberId,
        pick: Index,
        as_owner: bool,
    },
    Cancel {
        member: MemberId,
        pick: Index,
        as_owner: bool,
    },
    ExpireDue,
    Advance {
        ms: i64,
    },
}

fn core_op() -> impl Strategy<Value = CoreOp> {
    let member = || 1..=CORE_MEMBERS;
    prop_oneof![
        5 => (member(), prop::collection::vec(1..=CORE_SEATS, 1..=3))
            .prop_map(|(member, seats)| CoreOp::Hold { member, seats }),
        1 => (member(), prop::collection::vec(0..=CORE_SEATS + 1, 0..=4))
            .prop_map(|(member, seats)| CoreOp::Hold { member, seats }),
        3 => (member(), any::<Index>(), prop::bool::weighted(0.8))
            .prop_map(|(member, pick, as_owner)| CoreOp::Pay { member, pick, as_owner }),
        2 => (member(), any::<Index>(), prop::bool::weighted(0.8))
            .prop_map(|(member, pick, as_owner)| CoreOp::Cancel { member, pick, as_owner }),
        1 => Just(CoreOp::ExpireDue),
        2 => prop_oneof![1..=3_000i64, 3_000..=12_000i64].prop_map(|ms| CoreOp::Advance { ms }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelSeat {
    Available,
    Held(ReservationId),
    Sold(ReservationId),
}

#[derive(Debug, Clone)]
struct ModelReservation {
    member: MemberId,
    seats: Vec<SeatNo>,
    amount: Krw,
    status: ReservationStatus,
    deadline_ms: TimestampMs,
}

/// What the rules say the concert should look like: a seat -> state map and
/// the reservations, written as plainly as possible.
struct CoreModel {
    now_ms: TimestampMs,
    seats: BTreeMap<SeatNo, ModelSeat>,
    reservations: BTreeMap<ReservationId, ModelReservation>,
}

impl CoreModel {
    fn new() -> Self {
        Self {
            now_ms: T0_MS,
            seats: (1..=CORE_SEATS).map(|seat| (seat, ModelSeat::Available)).collect(),
            reservations: BTreeMap::new(),
        }
    }

    /// Seats the member holds or owns (the ticket limit's count).
    fn seats_of(&self, member: MemberId) -> u32 {
        self.reservations
            .values()
            .filter(|r| r.member == member)
            .filter(|r| {
                matches!(
                    r.status,
                    ReservationStatus::PendingPayment | ReservationStatus::Confirmed
                )
            })
            .map(|r| r.seats.len() as u32)
            .sum()
    }

    fn hold(&mut self, member: MemberId, id: ReservationId, seats: &[SeatNo]) -> Result<Krw, ConcertRejection> {
        if self.now_ms >= CORE_STARTS_AT_MS {
            return Err(ConcertRejection::SalesClosed);
        }
        if seats.is_empty() {
            return Err(HoldError::EmptySeatList.into());
        }
        if seats.len() > CORE_LIMITS.max_seats_per_reservation as usize {
            return Err(HoldError::TooManySeats {
                max: CORE_LIMITS.max_seats_per_reservation,
            }
            .into());
        }
        for (idx, &seat) in seats.iter().enumerate() {
            if seat == 0 {
                return Err(HoldError::SeatZero.into());
            }
            if seat > CORE_SEATS {
                return Err(HoldError::SeatOutOfRange(seat).into());
            }
            if seats[..idx].contains(&seat) {
                return Err(HoldError::DuplicateSeat(seat).into());
            }
        }
        let already = self.seats_of(member);
        if already + seats.len() as u32 > CORE_LIMITS.max_seats_per_member {
            return Err(HoldError::TicketLimit {
                limit: CORE_LIMITS.max_seats_per_member,
                already,
            }
            .into());
        }
        if let Some(&taken) = seats.iter().find(|s| self.seats[s] != ModelSeat::Available) {
            return Err(HoldError::SeatUnavailable(taken).into());
        }
        for &seat in seats {
            self.seats.insert(seat, ModelSeat::Held(id));
        }
        let amount = seats.iter().map(|&s| core_price(s)).sum();
        self.reservations.insert(
            id,
            ModelReservation {
                member,
                seats: seats.to_vec(),
                amount,
                status: ReservationStatus::PendingPayment,
                deadline_ms: self.now_ms + CORE_HOLD_TIMEOUT_MS,
            },
        );
        Ok(amount)
    }

    fn finish(&mut self, id: ReservationId, status: ReservationStatus) {
        let reservation = self.reservations.get_mut(&id).expect("known");
        reservation.status = status;
        for seat in &reservation.seats {
            self.seats.insert(*seat, ModelSeat::Available);
        }
    }

    fn pay(&mut self, member: MemberId, id: ReservationId) -> Result<Krw, ConcertRejection> {
        let reservation = self.reservations.get(&id).ok_or(ConcertRejection::UnknownReservation)?;
        if reservation.member != member {
            return Err(ConcertRejection::NotOwner);
        }
        match reservation.status {
            ReservationStatus::PendingPayment => {}
            ReservationStatus::Expired => return Err(ConcertRejection::HoldExpired),
            ReservationStatus::Confirmed | ReservationStatus::Cancelled => return Err(ConcertRejection::NotPending),
        }
        if reservation.deadline_ms <= self.now_ms {
            self.finish(id, ReservationStatus::Expired);
            return Err(ConcertRejection::HoldExpired);
        }
        let amount = reservation.amount;
        let seats = reservation.seats.clone();
        for seat in seats {
            self.seats.insert(seat, ModelSeat::Sold(id));
        }
        self.reservations.get_mut(&id).expect("known").status = ReservationStatus::Confirmed;
        Ok(amount)
    }

    fn cancel(&mut self, member: MemberId, id: ReservationId) -> Result<ReservationStatus, ConcertRejection> {
        let reservation = self.reservations.get(&id).ok_or(ConcertRejection::UnknownReservation)?;
        if reservation.member != member {
            return Err(ConcertRejection::NotOwner);
        }
        if reservation.status != ReservationStatus::PendingPayment {
            return Err(ConcertRejection::NotPending);
        }
        self.finish(id, ReservationStatus::Cancelled);
        Ok(ReservationStatus::Cancelled)
    }

    /// Pending holds due now, by deadline then id.
    fn expire_due(&mut self) -> Vec<ReservationId> {
        let mut due: Vec<(TimestampMs, ReservationId)> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.status == ReservationStatus::PendingPayment && r.deadline_ms <= self.now_ms)
            .map(|(&id, r)| (r.deadline_ms, id))
            .collect();
        due.sort_unstable();
        for &(_, id) in &due {
            self.finish(id, ReservationStatus::Expired);
        }
        due.into_iter().map(|(_, id)| id).collect()
    }
}

/// The concert agrees with the model on every seat and reservation, and
/// passes its own invariant check.
fn core_agrees(concert: &Concert, model: &CoreModel) -> Result<(), TestCaseError> {
    concert.check_invariants();
    let seats = concert.seats();
    for (&seat, &expected) in &model.seats {
        let (status, owner) = match expected {
            ModelSeat::Available => (SeatStatus::Available, None),
            ModelSeat::Held(id) => (SeatStatus::Held, Some(id)),
            ModelSeat::Sold(id) => (SeatStatus::Sold, Some(id)),
        };
        prop_assert_eq!(seats.status(seat), Some(status), "status of seat {}", seat);
        prop_assert_eq!(seats.owner(seat), owner, "owner of seat {}", seat);
    }
    let available = model.seats.values().filter(|&&s| s == ModelSeat::Available).count();
    prop_assert_eq!(seats.available() as usize, available, "the available counter");
    for member in 1..=CORE_MEMBERS {
        prop_assert_eq!(
            seats.seats_of_member(member),
            model.seats_of(member),
            "seats held or owned by member {}",
            member
        );
    }
    prop_assert_eq!(
        concert.reservations().count(),
        model.reservations.len(),
        "reservations kept"
    );
    for (&id, expected) in &model.reservations {
        let actual = concert.reservation(id).expect("every made reservation is kept");
        prop_assert_eq!(actual.status, expected.status, "status of reservation {}", id);
        prop_assert_eq!(&actual.seats, &expected.seats, "seats of reservation {}", id);
        prop_assert_eq!(actual.amount, expected.amount, "amount of reservation {}", id);
    }
    let next_deadline = model
        .reservations
        .values()
        .filter(|r| r.status == ReservationStatus::PendingPayment)
        .map(|r| r.deadline_ms)
        .min();
    prop_assert_eq!(seats.next_deadline(), next_deadline, "the next deadline");
    Ok(())
}

fn run_core(ops: Vec<CoreOp>) -> Result<(), TestCaseError> {
    let mut concert = core_concert();
    let mut model = CoreModel::new();
    let mut made: Vec<ReservationId> = Vec::new();
    let mut next_id: ReservationId = 1;
    let picked = |made: &[ReservationId], pick: &Index| {
        if made.is_empty() {
            999
        } else {
            made[pick.index(made.len())]
        }
    };
    for (step, op) in ops.into_iter().enumerate() {
        let now = model.now_ms;
        match op {
            CoreOp::Hold { member, seats } => {
                let id = next_id;
                next_id += 1;
                let expected = model.hold(member, id, &seats);
                let actual = concert.hold(member, id, &seats, now, CORE_HOLD_TIMEOUT_MS, CORE_LIMITS);
                prop_assert_eq!(
                    actual.clone().map(|r| r.amount),
                    expected.clone(),
                    "step {}: hold {:?} for member {}",
                    step,
                    seats,
                    member
                );
                if let Ok(reservation) = actual {
                    let Reservation {
                        id: got_id,
                        member_id,
                        status,
                        created_at_ms,
                        expires_at_ms,
                        ..
                    } = reservation;
                    prop_assert_eq!(
                        (got_id, member_id, status, created_at_ms, expires_at_ms),
                        (
                            id,
                            member,
                            ReservationStatus::PendingPayment,
                            now,
                            now + CORE_HOLD_TIMEOUT_MS
                        ),
                        "step {}: the new reservation",
                        step
                    );
                    made.push(id);
                }
            }
            CoreOp::Pay { member, pick, as_owner } => {
                let id = picked(&made, &pick);
                let payer = match model.reservations.get(&id) {
                    Some(r) if as_owner => r.member,
                    _ => member,
                };
                let expected = model.pay(payer, id);
                // As the actor does: check, then confirm in the same turn.
                let actual = concert
                    .check_payable(payer, id, now)
                    .and_then(|amount| concert.confirm(id, now).map(|_| amount));
                prop_assert_eq!(actual, expected, "step {}: member {} pays {}", step, payer, id);
            }
            CoreOp::Cancel { member, pick, as_owner } => {
                let id = picked(&made, &pick);
                let canceller = match model.reservations.get(&id) {
                    Some(r) if as_owner => r.member,
                    _ => member,
                };
                let expected = model.cancel(canceller, id);
                let actual = concert.cancel(canceller, id).map(|r| r.status);
                prop_assert_eq!(actual, expected, "step {}: member {} cancels {}", step, canceller, id);
            }
            CoreOp::ExpireDue => {
                let expected = model.expire_due();
                let actual = concert.expire_due(now);
                prop_assert_eq!(actual, expected, "step {}: holds expired at {}", step, now);
            }
            CoreOp::Advance { ms } => model.now_ms += ms,
        }
        core_agrees(&concert, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_concert_core_follows_the_reference_model(ops in prop::collection::vec(core_op(), 1..=60)) {
        run_core(ops)?;
    }
}

// ================================================================================
// (b) the whole engine on virtual time
// ================================================================================

const MEMBERS: usize = 4;
const HOLD_TIMEOUT_MS: i64 = 30_000;
const EXPIRY_TICK_MS: i64 = 100;
const QUEUE_TICK_MS: i64 = 1_000;
const ADMIT_PER_TICK: u32 = 2;
const MAX_ACTIVE: u32 = 3;
const TOKEN_TTL_MS: i64 = 30_000;
const IDLE_TIMEOUT_MS: i64 = 20_000;
const MAX_CHARGE: Krw = 100_000;
const MAX_BALANCE: Krw = 150_000;
/// Every member starts with a charge of this much.
const OPENING_BALANCE: Krw = 100_000;
const LIMITS: HoldLimits = HoldLimits {
    max_seats_per_reservation: 3,
    max_seats_per_member: 4,
};

fn engine_settings() -> EngineSettings {
    EngineSettings {
        hold: HoldSettings {
            hold_timeout_ms: HOLD_TIMEOUT_MS,
            expiry_tick_ms: EXPIRY_TICK_MS as u64,
            limits: LIMITS,
        },
        wallet: WalletLimits {
            max_charge: MAX_CHARGE,
            max_balance: MAX_BALANCE,
        },
        queue: QueueSettings {
            tick_ms: QUEUE_TICK_MS,
            admit_per_tick: ADMIT_PER_TICK,
            max_active: MAX_ACTIVE,
            token_ttl_ms: TOKEN_TTL_MS,
            idle_timeout_ms: IDLE_TIMEOUT_MS,
        },
    }
}

/// The three concerts: (seats, base price, tiers, starts in). The third
/// starts within a run, so its sale closes in some runs.
fn concerts() -> [(SeatNo, Krw, Vec<PriceTier>, i64); 3] {
    [
        (6, 20_000, vec![], 30 * 24 * 3_600_000),
        (6, 30_000, vec![tier(1, 2, 50_000)], 30 * 24 * 3_600_000),
        (4, 10_000, vec![], 60_000),
    ]
}

#[derive(Debug, Clone)]
enum EngineOp {
    Charge {
        member: usize,
        amount: Krw,
    },
    IssueToken {
        member: usize,
    },
    PollToken {
        member: usize,
    },
    TickQueue,
    Hold {
        member: usize,
        concert: usize,
        seats: Vec<SeatNo>,
    },
    Pay {
        member: usize,
        pick: Index,
        as_owner: bool,
    },
    Cancel {
        member: usize,
        pick: Index,
        as_owner: bool,
    },
    /// Time passes, then an expiry is sent to one concert.
    Expire {
        concert: usize,
        ms: i64,
    },
    Advance {
        ms: i64,
    },
}

fn engine_op() -> impl Strategy<Value = EngineOp> {
    let member = || 0..MEMBERS;
    let concert = || 0..3usize;
    let ms = || prop_oneof![1..=2_000i64, 2_000..=40_000i64];
    prop_oneof![
        3 => (member(), prop_oneof![3 => 10_000..=MAX_CHARGE, 1 => -1_000..=MAX_CHARGE + 30_000])
            .prop_map(|(member, amount)| EngineOp::Charge { member, amount }),
        3 => member().prop_map(|member| EngineOp::IssueToken { member }),
        1 => member().prop_map(|member| EngineOp::PollToken { member }),
        3 => Just(EngineOp::TickQueue),
        5 => (member(), concert(), prop::collection::vec(1..=4 as SeatNo, 1..=2))
            .prop_map(|(member, concert, seats)| EngineOp::Hold { member, concert, seats }),
        1 => (member(), concert(), prop::collection::vec(1..=7 as SeatNo, 1..=4))
            .prop_map(|(member, concert, seats)| EngineOp::Hold { member, concert, seats }),
        5 => (member(), any::<Index>(), prop::bool::weighted(0.85))
            .prop_map(|(member, pick, as_owner)| EngineOp::Pay { member, pick, as_owner }),
        1 => (member(), any::<Index>(), prop::bool::weighted(0.85))
            .prop_map(|(member, pick, as_owner)| EngineOp::Cancel { member, pick, as_owner }),
        2 => (concert(), ms()).prop_map(|(concert, ms)| EngineOp::Expire { concert, ms }),
        4 => ms().prop_map(|ms| EngineOp::Advance { ms }),
    ]
}

/// What the test knows independently of the engine.
struct World {
    engine: Engine,
    clock: std::sync::Arc<ManualClock>,
    journal: std::sync::Arc<MemoryJournal>,
    members: Vec<MemberId>,
    concerts: Vec<ConcertId>,
    /// Each member's latest token.
    tokens: HashMap<MemberId, TokenId>,
    /// Expected balance: charges minus payments the engine accepted.
    balances: HashMap<MemberId, Krw>,
    /// Reservations made, in order: (id, owner).
    made: Vec<(ReservationId, MemberId)>,
    payments: usize,
}

/// Seat prices of the `idx`-th concert.
fn price(idx: usize, seat: SeatNo) -> Krw {
    let (_, base, tiers, _) = &concerts()[idx];
    tiers
        .iter()
        .find(|t| (t.from_seat..=t.to_seat).contains(&seat))
        .map_or(*base, |t| t.price)
}

impl World {
    fn start() -> Self {
        let clock = ManualClock::new(T0_MS);
        let shared: SharedClock = clock.clone();
        let journal = std::sync::Arc::new(MemoryJournal::new());
        let sink: std::sync::Arc<dyn EventSink> = journal.clone();
        let engine = Engine::start(engine_settings(), shared, sink, ConcertRouter::on_current_thread());
        let members: Vec<MemberId> = (0..MEMBERS)
            .map(|n| {
                engine
                    .register_member(&format!("m{n}"), [n as u8; 32])
                    .expect("registered")
                    .value
            })
            .collect();
        let concerts = concerts()
            .into_iter()
            .map(|(seat_count, price, price_tiers, starts_in)| {
                let new = NewConcert {
                    title: "prop".into(),
                    category: "test".into(),
                    venue: "hall".into(),
                    starts_at_ms: T0_MS + starts_in,
                    seat_count,
                    price,
                    price_tiers,
                };
                engine.create_concert(new).expect("valid concert").value.info.id
            })
            .collect();
        for &member in &members {
            engine.charge(member, OPENING_BALANCE).expect("within the limits");
        }
        Self {
            engine,
            clock,
            journal,
            balances: members.iter().map(|&m| (m, OPENING_BALANCE)).collect(),
            members,
            concerts,
            tokens: HashMap::new(),
            made: Vec::new(),
            payments: 0,
        }
    }

    fn now(&self) -> TimestampMs {
        self.engine.now_ms()
    }

    /// "now" and the actors' timers move together.
    async fn advance(&self, ms: i64) {
        self.clock.advance_ms(ms);
        tokio::time::advance(Duration::from_millis(ms as u64)).await;
        settle().await;
    }

    async fn concert_state(&self, concert: ConcertId) -> Concert {
        self.engine
            .export_concerts()
            .await
            .expect("actors answer")
            .into_iter()
            .find(|c| c.info().id == concert)
            .expect("the concert exists")
    }

    /// The gate of the HTTP layer: the member's token must be ACTIVE.
    fn admitted(&self, member: MemberId) -> Result<Option<TokenId>, TestCaseError> {
        let Some(&token) = self.tokens.get(&member) else {
            return Ok(None);
        };
        match self.engine.admitted_member(&token) {
            Ok(admitted) => {
                prop_assert_eq!(admitted, member, "a token admits the member it was issued to");
                Ok(Some(token))
            }
            Err(EngineError::TokenNotActive { position }) => {
                prop_assert!(position >= 1, "a WAITING token has a position from 1");
                Ok(None)
            }
            Err(EngineError::TokenInvalid) => Ok(None),
            Err(other) => Err(TestCaseError::fail(format!("unexpected gate answer {other:?}"))),
        }
    }

    fn pick(&self, pick: &Index) -> Option<(ReservationId, MemberId)> {
        (!self.made.is_empty()).then(|| self.made[pick.index(self.made.len())])
    }

    async fn apply(&mut self, op: EngineOp) -> Result<(), TestCaseError> {
        match op {
            EngineOp::Charge { member, amount } => {
                let member = self.members[member];
                let balance = self.balances[&member];
                let expected = if !(1..=MAX_CHARGE).contains(&amount) || balance + amount > MAX_BALANCE {
                    None
                } else {
                    Some(balance + amount)
                };
                match (self.engine.charge(member, amount), expected) {
                    (Ok(got), Some(want)) => {
                        prop_assert_eq!(got.value, want, "the new balance after a charge");
                        self.balances.insert(member, want);
                    }
                    (Err(EngineError::Validation(_)), None) => {}
                    (got, want) => {
                        return Err(TestCaseError::fail(format!(
                            "charge {amount} on {balance}: got {got:?}, expected balance {want:?}"
                        )))
                    }
                }
            }
            EngineOp::IssueToken { member } => {
                let member = self.members[member];
                let previous = self.tokens.get(&member).copied();
                let live = previous
                    .and_then(|t| self.engine.queue().peek(&t))
                    .is_some_and(|v| v.status != TokenStatus::Expired);
                let issued = self.engine.issue_token(member).expect("the sink accepts");
                prop_assert_eq!(issued.view.member, member, "the token is bound to its member");
                if live {
                    prop_assert_eq!(Some(issued.token), previous, "a live token is returned again");
                    prop_assert!(!issued.created, "and not created anew");
                } else {
                    prop_assert!(issued.created, "without a live token a new one is made");
                    prop_assert_ne!(Some(issued.token), previous, "a new token is a new secret");
                    prop_assert_eq!(issued.view.status, TokenStatus::Waiting, "a new token waits for a tick");
                }
                self.tokens.insert(member, issued.token);
            }
            EngineOp::PollToken { member } => {
                let member = self.members[member];
                if let Some(token) = self.tokens.get(&member) {
                    match self.engine.token_status(token) {
                        Ok(view) => prop_assert_eq!(view.member, member, "a poll shows the token's member"),
                        Err(err) => prop_assert_eq!(err, EngineError::TokenInvalid, "a forgotten token is invalid"),
                    }
                }
            }
            EngineOp::TickQueue => {
                self.engine.tick_queue().await.expect("the queue actor answers");
            }
            EngineOp::Hold { member, concert, seats } => {
                let member = self.members[member];
                // The gate is asked (and its answer checked), but a hold
                // goes ahead either way: the engine itself takes no token.
                self.admitted(member)?;
                let expected = self.expected_hold(member, concert, &seats).await;
                let concert_id = self.concerts[concert];
                let actual = self
                    .engine
                    .hold(member, concert_id, seats.clone())
                    .await
                    .map(|c| c.value);
                match (&actual, &expected) {
                    (Ok(reservation), Ok(amount)) => {
                        prop_assert_eq!(reservation.amount, *amount, "the hold's amount");
                        prop_assert_eq!(
                            reservation.expires_at_ms,
                            self.now() + HOLD_TIMEOUT_MS,
                            "the hold's deadline"
                        );
                        self.made.push((reservation.id, member));
                    }
                    (Err(got), Err(want)) => prop_assert_eq!(got, want, "hold {:?} of concert {}", seats, concert_id),
                    _ => {
                        return Err(TestCaseError::fail(format!(
                            "hold {seats:?} of concert {concert_id}: got {actual:?}, expected {expected:?}"
                        )))
                    }
                }
            }
            EngineOp::Pay { member, pick, as_owner } => {
                let Some((id, owner)) = self.pick(&pick) else {
                    return Ok(());
                };
                let payer = if as_owner { owner } else { self.members[member] };
                // The payer's token goes with the payment when the gate
                // admits it; otherwise the payment is made without one.
                let token = self.admitted(payer)?;
                let expected = self.expected_payment(payer, id, owner).await;
                let actual = self.engine.pay(payer, id, token).await.map(|c| c.value);
                match (&actual, &expected) {
                    (Ok(receipt), Ok(balance)) => {
                        prop_assert_eq!(receipt.balance, *balance, "the balance after payment");
                        self.balances.insert(payer, *balance);
                        self.payments += 1;
                        if let Some(token) = token {
                            prop_assert_eq!(
                                self.engine.queue().peek(&token).map(|v| v.status),
                                Some(TokenStatus::Expired),
                                "a payment expires the payer's token"
                            );
                        }
                    }
                    (Err(got), Err(want)) => prop_assert_eq!(got, want, "member {} pays {}", payer, id),
                    _ => {
                        return Err(TestCaseError::fail(format!(
                            "member {payer} pays {id}: got {actual:?}, expected {expected:?}"
                        )))
                    }
                }
            }
            EngineOp::Cancel { member, pick, as_owner } => {
                let Some((id, owner)) = self.pick(&pick) else {
                    return Ok(());
                };
                let canceller = if as_owner { owner } else { self.members[member] };
                let status = self.status_of(id, owner).await;
                let expected = if canceller != owner {
                    Err(EngineError::Forbidden)
                } else if status != ReservationStatus::PendingPayment {
                    Err(EngineError::NotPending)
                } else {
                    Ok(ReservationStatus::Cancelled)
                };
                let actual = self.engine.cancel(canceller, id).await.map(|c| c.value.status);
                prop_assert_eq!(actual, expected, "member {} cancels {}", canceller, id);
            }
            EngineOp::Expire { concert, ms } => {
                self.advance(ms).await;
                self.engine
                    .router()
                    .send(self.concerts[concert], ExpireHolds)
                    .await
                    .expect("the concert actor answers");
            }
            EngineOp::Advance { ms } => self.advance(ms).await,
        }
        Ok(())
    }

    async fn status_of(&self, id: ReservationId, owner: MemberId) -> ReservationStatus {
        self.engine
            .reservation(owner, id)
            .await
            .expect("the owner reads the reservation")
            .status
    }

    /// The contract's rules, in the order they are applied, from the
    /// concert's state just before the request.
    async fn expected_hold(&self, member: MemberId, concert: usize, seats: &[SeatNo]) -> Result<Krw, EngineError> {
        let state = self.concert_state(self.concerts[concert]).await;
        let info = state.info();
        if self.now() >= info.starts_at_ms {
            return Err(EngineError::SalesClosed);
        }
        if seats.len() > LIMITS.max_seats_per_reservation as usize {
            return Err(EngineError::Validation(format!(
                "at most {} seats may be held at once",
                LIMITS.max_seats_per_reservation
            )));
        }
        for (idx, &seat) in seats.iter().enumerate() {
            if seat > info.seat_count {
                return Err(EngineError::NotFound("seat"));
            }
            if seats[..idx].contains(&seat) {
                return Err(EngineError::Validation(format!("seat {seat} is listed twice")));
            }
        }
        let already: usize = state
            .reservations()
            .filter(|r| r.member_id == member)
            .filter(|r| {
                matches!(
                    r.status,
                    ReservationStatus::PendingPayment | ReservationStatus::Confirmed
                )
            })
            .map(|r| r.seats.len())
            .sum();
        if already + seats.len() > LIMITS.max_seats_per_member as usize {
            return Err(EngineError::TicketLimit {
                limit: LIMITS.max_seats_per_member,
            });
        }
        let taken = |seat: SeatNo| {
            state.reservations().any(|r| {
                matches!(
                    r.status,
                    ReservationStatus::PendingPayment | ReservationStatus::Confirmed
                ) && r.seats.contains(&seat)
            })
        };
        if seats.iter().any(|&s| taken(s)) {
            return Err(EngineError::SeatUnavailable);
        }
        Ok(seats.iter().map(|&s| price(concert, s)).sum())
    }

    /// The balance after a successful payment, or the rejection.
    async fn expected_payment(&self, payer: MemberId, id: ReservationId, owner: MemberId) -> Result<Krw, EngineError> {
        if payer != owner {
            return Err(EngineError::Forbidden);
        }
        let reservation = self.engine.reservation(owner, id).await.expect("readable");
        match reservation.status {
            ReservationStatus::PendingPayment => {}
            ReservationStatus::Expired => return Err(EngineError::HoldExpired),
            ReservationStatus::Confirmed | ReservationStatus::Cancelled => return Err(EngineError::NotPending),
        }
        if reservation.expires_at_ms <= self.now() {
            return Err(EngineError::HoldExpired);
        }
        let balance = self.balances[&payer];
        if balance < reservation.amount {
            return Err(EngineError::InsufficientBalance {
                balance,
                amount: reservation.amount,
            });
        }
        Ok(balance - reservation.amount)
    }

    /// Everything that must hold between any two steps.
    async fn check(&self) -> Result<(), TestCaseError> {
        self.engine.check_invariants().await.expect("actors answer");
        self.check_money()?;
        let concerts = self.engine.export_concerts().await.expect("actors answer");
        for concert in &concerts {
            self.check_seats(concert)?;
        }
        self.check_queue()?;
        Ok(())
    }

    /// Invariants 2 and 3, against the test's own ledger.
    fn check_money(&self) -> Result<(), TestCaseError> {
        for &member in &self.members {
            let balance = self.engine.accounts().balance(member).expect("member");
            prop_assert_eq!(balance, self.balances[&member], "balance of member {}", member);
            prop_assert!(
                (0..=MAX_BALANCE).contains(&balance),
                "balance {} of member {} within 0..={}",
                balance,
                member,
                MAX_BALANCE
            );
        }
        let mut paid: HashMap<ReservationId, usize> = HashMap::new();
        for event in self.journal.events() {
            if let Event::PaymentCompleted { reservation, .. } = event {
                *paid.entry(reservation).or_default() += 1;
            }
        }
        prop_assert!(paid.values().all(|&n| n == 1), "no reservation is paid twice");
        prop_assert_eq!(paid.len(), self.payments, "one payment event per accepted payment");
        Ok(())
    }

    /// Invariants 1 and 5.
    fn check_seats(&self, concert: &Concert) -> Result<(), TestCaseError> {
        let now = self.now();
        let mut sold_to: HashMap<SeatNo, Vec<ReservationId>> = HashMap::new();
        let mut held_by: HashMap<SeatNo, Vec<ReservationId>> = HashMap::new();
        for r in concert.reservations() {
            match r.status {
                ReservationStatus::Confirmed => {
                    for &seat in &r.seats {
                        sold_to.entry(seat).or_default().push(r.id);
                        prop_assert_eq!(
                            concert.seats().status(seat),
                            Some(SeatStatus::Sold),
                            "a bought seat is SOLD"
                        );
                        prop_assert_eq!(concert.seats().owner(seat), Some(r.id), "to its buyer");
                    }
                }
                ReservationStatus::PendingPayment => {
                    prop_assert!(
                        now < r.expires_at_ms + EXPIRY_TICK_MS,
                        "reservation {} due at {} is still held at {}: later than its deadline + one expiry tick",
                        r.id,
                        r.expires_at_ms,
                        now
                    );
                    for &seat in &r.seats {
                        held_by.entry(seat).or_default().push(r.id);
                        prop_assert_eq!(
                            concert.seats().status(seat),
                            Some(SeatStatus::Held),
                            "a held seat is HELD"
                        );
                    }
                }
                ReservationStatus::Expired | ReservationStatus::Cancelled => {}
            }
        }
        for (seat, buyers) in &sold_to {
            prop_assert_eq!(
                buyers.len(),
                1,
                "seat {} is SOLD to one reservation, not {:?}",
                seat,
                buyers
            );
            prop_assert!(!held_by.contains_key(seat), "a SOLD seat {} is not also held", seat);
        }
        for (seat, holders) in &held_by {
            prop_assert_eq!(holders.len(), 1, "seat {} has one live hold, not {:?}", seat, holders);
        }
        Ok(())
    }

    /// Invariant 6, replayed from the journal: every admission takes the
    /// oldest WAITING token, and ACTIVE tokens never exceed the cap. Then the
    /// live positions: 1, 2, ... in issue order.
    fn check_queue(&self) -> Result<(), TestCaseError> {
        prop_assert!(self.engine.queue().active() <= u64::from(MAX_ACTIVE), "the live cap");
        let mut seq_of: HashMap<TokenId, u64> = HashMap::new();
        let mut state: BTreeMap<u64, TokenStatus> = BTreeMap::new();
        let mut active = 0u32;
        for event in self.journal.events() {
            match event {
                Event::TokenIssued { token, seq, .. } => {
                    seq_of.insert(token, seq);
                    state.insert(seq, TokenStatus::Waiting);
                }
                Event::TokenAdmitted { token, .. } => {
                    let seq = seq_of[&token];
                    prop_assert_eq!(state[&seq], TokenStatus::Waiting, "only a WAITING token is admitted");
                    let older_waiting = state.range(..seq).find(|(_, &s)| s == TokenStatus::Waiting);
                    prop_assert!(
                        older_waiting.is_none(),
                        "token #{} was admitted while #{:?} issued before it still waited",
                        seq,
                        older_waiting
                    );
                    state.insert(seq, TokenStatus::Active);
                    active += 1;
                    prop_assert!(active <= MAX_ACTIVE, "at most {} ACTIVE tokens", MAX_ACTIVE);
                }
                Event::TokenExpired { token, .. } => {
                    let seq = seq_of[&token];
                    if state[&seq] == TokenStatus::Active {
                        active -= 1;
                    }
                    state.insert(seq, TokenStatus::Expired);
                }
                Event::PaymentCompleted { token: Some(token), .. } => {
                    let seq = seq_of[&token];
                    if state[&seq] == TokenStatus::Active {
                        active -= 1;
                    }
                    state.insert(seq, TokenStatus::Expired);
                }
                _ => {}
            }
        }
        let mut waiting: Vec<(u64, u64)> = Vec::new();
        for token in self.tokens.values() {
            let Some(view) = self.engine.queue().peek(token) else {
                continue;
            };
            prop_assert_eq!(
                view.status,
                state[&seq_of[token]],
                "the journal and the queue agree on a token"
            );
            if view.status == TokenStatus::Waiting {
                waiting.push((seq_of[token], view.position));
            }
        }
        waiting.sort_unstable();
        let positions: Vec<u64> = waiting.iter().map(|&(_, p)| p).collect();
        let expected: Vec<u64> = (1..=waiting.len() as u64).collect();
        prop_assert_eq!(
            positions,
            expected,
            "WAITING tokens are at positions 1, 2, ... in issue order"
        );
        Ok(())
    }
}

fn run_engine(ops: Vec<EngineOp>) -> Result<(), TestCaseError> {
    actix_rt::System::new().block_on(async move {
        tokio::time::pause();
        let mut world = World::start();
        settle().await;
        world.check().await?;
        for (step, op) in ops.into_iter().enumerate() {
            let described = format!("{op:?}");
            world
                .apply(op)
                .await
                .map_err(|err| TestCaseError::fail(format!("step {step} ({described}): {err}")))?;
            world
                .check()
                .await
                .map_err(|err| TestCaseError::fail(format!("after step {step} ({described}): {err}")))?;
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_engine_keeps_its_invariants_under_any_interleaving(ops in prop::collection::vec(engine_op(), 1..=40)) {
        run_engine(ops)?;
    }
}
