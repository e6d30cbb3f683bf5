//! The engine's rules as a member meets them: one test per rule and per
//! rejection of the contract (docs/API.md), then the races in which exactly
//! one party wins (docs/ARCHITECTURE.md).
//!
//! Time is virtual: a `ManualClock` says "now", and every test on the current
//! thread pauses tokio's clock first, so an actor timer fires only when a test
//! advances it. The race tests put the concert actors on other threads.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};

use common::{
    kinds, settings, SwitchableSink, TestEngine, DAY_MS, EXPIRY_TICK_MS, HOLD_TIMEOUT_MS, MAX_SEATS_PER_MEMBER,
    SEAT_PRICE, T0_MS, TOKEN_TTL_MS,
};
use concert_actors::concert::{Reservation, ReservationStatus};
use concert_actors::concert_actor::ExpireHolds;
use concert_actors::events::Event;
use concert_actors::idempotency::{Claim, IdempotencyScope, IdempotentEndpoint, StoredResponse};
use concert_actors::pricing::PriceTier;
use concert_actors::queue::{TokenId, TokenStatus, WaitingQueue};
use concert_actors::router::ConcertRouter;
use concert_actors::sink::{EventSink, MemoryJournal};
use concert_actors::types::{SeatStatus, MAX_SEATS_PER_CONCERT, MAX_SEAT_PRICE};
use concert_actors::{EngineError, NewConcert};

use SeatStatus::{Available, Held, Sold};

/// An engine whose actors run on this thread, on paused (virtual) time.
fn paused_engine() -> TestEngine {
    tokio::time::pause();
    TestEngine::on_current_thread()
}

// ---- holds -------------------------------------------------------------------

#[actix_rt::test]
async fn a_hold_takes_every_requested_seat_or_none() {
    let t = paused_engine();
    let concert = t.concert(10);
    let (first, second) = (t.member(), t.member());
    t.hold(first, concert, &[5]).await.expect("seat 5 is free");
    let before = t.journal.len();

    let refused = t.hold(second, concert, &[4, 5, 6]).await;

    assert_eq!(
        refused,
        Err(EngineError::SeatUnavailable),
        "one taken seat refuses the whole request"
    );
    let statuses = t.seat_statuses(concert).await;
    assert_eq!(statuses[3], Available, "seat 4 of a refused request is not held");
    assert_eq!(statuses[5], Available, "seat 6 of a refused request is not held");
    assert_eq!(t.journal.len(), before, "a refused hold journals nothing");
    let held = t
        .hold(second, concert, &[4, 6, 7])
        .await
        .expect("the free seats are all held");
    assert_eq!(held.seats, vec![4, 6, 7], "the reservation lists every seat asked for");
    assert_eq!(held.amount, 3 * SEAT_PRICE, "the amount is the sum of the seat prices");
    assert_eq!(
        held.status,
        ReservationStatus::PendingPayment,
        "a new hold awaits payment"
    );
    assert_eq!(
        held.expires_at_ms,
        T0_MS + HOLD_TIMEOUT_MS,
        "a hold lives for the hold timeout"
    );
    for seat in [4, 6, 7] {
        assert_eq!(t.seat_status(concert, seat).await, Held, "seat {seat} is held");
    }
    t.check_invariants().await;
}

#[actix_rt::test]
async fn a_held_or_sold_seat_is_seat_unavailable() {
    let t = paused_engine();
    let concert = t.concert(10);
    let buyer = t.member_with_balance(SEAT_PRICE);
    let (holder, latecomer) = (t.member(), t.member());
    let sold = t.hold(buyer, concert, &[1]).await.expect("seat 1 is free");
    t.pay(buyer, sold.id).await.expect("the buyer can pay");
    t.hold(holder, concert, &[2]).await.expect("seat 2 is free");

    let on_sold = t.hold(latecomer, concert, &[1]).await;
    let on_held = t.hold(latecomer, concert, &[2]).await;
    let by_the_holder_again = t.hold(holder, concert, &[2]).await;

    assert_eq!(on_sold, Err(EngineError::SeatUnavailable), "a SOLD seat cannot be held");
    assert_eq!(on_held, Err(EngineError::SeatUnavailable), "a HELD seat cannot be held");
    assert_eq!(
        by_the_holder_again,
        Err(EngineError::SeatUnavailable),
        "not even by the member who holds it"
    );
    t.check_invariants().await;
}

#[actix_rt::test]
async fn prices_follow_the_tiers_of_the_concert() {
    let t = paused_engine();
    let vip = PriceTier {
        from_seat: 1,
        to_seat: 2,
        price: 150_000,
    };
    let concert = t.concert_with_tiers(10, vec![vip]);
    let member = t.member();

    let held = t.hold(member, concert, &[2, 3]).await.expect("free seats");

    assert_eq!(held.amount, 150_000 + SEAT_PRICE, "a tier seat plus a base seat");
}

#[actix_rt::test]
async fn the_ticket_limit_counts_pending_and_confirmed_seats_of_one_concert() {
    let t = paused_engine();
    let concert = t.concert(20);
    let other_concert = t.concert(20);
    let member = t.member_with_balance(10 * SEAT_PRICE);
    let paid = t.hold(member, concert, &[1, 2]).await.expect("two seats");
    t.pay(member, paid.id).await.expect("paid");
    t.hold(member, concert, &[3, 4]).await.expect("two more, pending");

    let fifth = t.hold(member, concert, &[5]).await;

    assert_eq!(
        fifth,
        Err(EngineError::TicketLimit {
            limit: MAX_SEATS_PER_MEMBER
        }),
        "two confirmed plus two pending seats reach the limit of four"
    );
    assert_eq!(
        t.seat_status(concert, 5).await,
        Available,
        "the refused seat stays free"
    );
    t.hold(member, other_concert, &[1, 2, 3, 4])
        .await
        .expect("the limit is per concert");
    t.check_invariants().await;
}

#[actix_rt::test]
async fn cancelling_a_hold_gives_back_its_share_of_the_ticket_limit() {
    let t = paused_engine();
    let concert = t.concert(20);
    let member = t.member();
    let first = t.hold(member, concert, &[1, 2, 3, 4]).await.expect("four seats");
    assert_eq!(
        t.hold(member, concert, &[5]).await,
        Err(EngineError::TicketLimit { limit: 4 }),
        "a fifth seat is over the limit"
    );

    t.cancel(member, first.id).await.expect("the owner cancels");

    t.hold(member, concert, &[5, 6, 7, 8])
        .await
        .expect("a cancelled hold no longer counts toward the limit");
    t.check_invariants().await;
}

#[actix_rt::test]
async fn an_expired_hold_gives_back_its_share_of_the_ticket_limit() {
    let t = paused_engine();
    let concert = t.concert(20);
    let member = t.member();
    t.hold(member, concert, &[1, 2, 3, 4]).await.expect("four seats");

    t.advance_clock(HOLD_TIMEOUT_MS);
    assert_eq!(t.expire(concert).await, 1, "the hold is due at its deadline");

    t.hold(member, concert, &[5, 6, 7, 8])
        .await
        .expect("an expired hold no longer counts toward the limit");
    t.check_invariants().await;
}

#[actix_rt::test]
async fn holding_seats_of_a_concert_that_has_started_is_sales_closed() {
    let t = paused_engine();
    let concert = t.concert_starting_at(10, T0_MS + DAY_MS);
    let member = t.member();
    t.hold(member, concert, &[1])
        .await
        .expect("a day before the start the sale is open");

    t.advance_clock(DAY_MS);
    let at_start = t.hold(member, concert, &[2]).await;
    t.advance_clock(1);
    let after_start = t.hold(member, concert, &[3]).await;

    assert_eq!(at_start, Err(EngineError::SalesClosed), "the sale closes at startsAt");
    assert_eq!(after_start, Err(EngineError::SalesClosed), "and stays closed");
    assert_eq!(t.seat_status(concert, 2).await, Available, "nothing was held");
}

#[actix_rt::test]
async fn bad_seat_lists_are_validation_errors() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member();
    let cases: [(&str, &[u32]); 5] = [
        ("seat zero", &[0]),
        ("seat zero among good seats", &[1, 0]),
        ("a seat listed twice", &[3, 3]),
        ("no seat at all", &[]),
        ("more seats than one reservation may take", &[1, 2, 3, 4, 5]),
    ];

    for (what, seats) in cases {
        let outcome = t.hold(member, concert, seats).await;
        assert!(
            matches!(outcome, Err(EngineError::Validation(_))),
            "{what} ({seats:?}) is a validation error, got {outcome:?}"
        );
    }
    assert!(
        t.seat_statuses(concert).await.iter().all(|&s| s == Available),
        "no refused request held anything"
    );
}

#[actix_rt::test]
async fn a_seat_above_the_seat_count_is_not_found() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member();

    let outcome = t.hold(member, concert, &[9, 11]).await;

    assert_eq!(
        outcome,
        Err(EngineError::NotFound("seat")),
        "seat 11 of 10 does not exist"
    );
    assert_eq!(t.seat_status(concert, 9).await, Available, "seat 9 was not held either");
}

// ---- payment -------------------------------------------------------------------

#[actix_rt::test]
async fn paying_debits_the_balance_sells_the_seats_and_expires_the_token() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member_with_balance(200_000);
    let token = t.admitted_token(member).await;
    let held = t.hold(member, concert, &[1, 2]).await.expect("free seats");

    let receipt = t
        .pay_with_token(member, held.id, token)
        .await
        .expect("a live hold can be paid");

    assert_eq!(
        receipt.amount,
        2 * SEAT_PRICE,
        "the receipt shows the reservation amount"
    );
    assert_eq!(receipt.balance, 100_000, "the receipt shows the balance after payment");
    assert_eq!(receipt.reservation_id, held.id, "the receipt names the reservation");
    assert_eq!(t.balance(member), 100_000, "the wallet was debited once");
    assert_eq!(
        t.reservation(member, held.id).await.status,
        ReservationStatus::Confirmed,
        "the reservation is CONFIRMED"
    );
    assert_eq!(t.seat_status(concert, 1).await, Sold, "seat 1 is SOLD");
    assert_eq!(t.seat_status(concert, 2).await, Sold, "seat 2 is SOLD");
    assert_eq!(
        t.engine.queue().peek(&token).map(|v| v.status),
        Some(TokenStatus::Expired),
        "the queue token is EXPIRED by the payment"
    );
    assert_eq!(
        t.engine.admitted_member(&token),
        Err(EngineError::TokenInvalid),
        "the spent token no longer opens the gate"
    );
    let history = t.engine.accounts().history(member, None, 10).expect("member");
    assert_eq!(
        history.items[0].amount,
        -2 * SEAT_PRICE,
        "the newest history entry is the payment, negative"
    );
    t.check_invariants().await;
}

#[actix_rt::test]
async fn paying_with_too_little_balance_keeps_the_hold_payable_after_a_charge() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member_with_balance(30_000);
    let held = t.hold(member, concert, &[1]).await.expect("free seat");
    let before = t.journal.len();

    let short = t.pay(member, held.id).await;

    assert_eq!(
        short,
        Err(EngineError::InsufficientBalance {
            balance: 30_000,
            amount: SEAT_PRICE
        }),
        "a balance below the amount is refused with both figures"
    );
    assert_eq!(t.balance(member), 30_000, "nothing was debited");
    assert_eq!(
        t.reservation(member, held.id).await.status,
        ReservationStatus::PendingPayment,
        "the reservation stays PENDING_PAYMENT"
    );
    assert_eq!(t.seat_status(concert, 1).await, Held, "the seat stays held");
    assert_eq!(t.journal.len(), before, "a refused payment journals nothing");

    t.charge(member, 20_000).expect("the member tops up");
    let receipt = t.pay(member, held.id).await.expect("the same hold is payable now");

    assert_eq!(receipt.balance, 0, "exactly the amount was taken");
    assert_eq!(t.seat_status(concert, 1).await, Sold, "the seat is sold");
    t.check_invariants().await;
}

#[actix_rt::test]
async fn a_hold_is_payable_until_its_deadline_and_not_at_it_even_before_the_expiry_tick() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member_with_balance(2 * SEAT_PRICE);
    let early = t.hold(member, concert, &[1]).await.expect("free seat");
    let late = t.hold(member, concert, &[2]).await.expect("free seat");

    t.advance_clock(HOLD_TIMEOUT_MS - 1);
    t.pay(member, early.id)
        .await
        .expect("a millisecond before its deadline a hold can be paid");
    t.advance_clock(1);
    let before = t.journal.len();
    let at_deadline = t.pay(member, late.id).await;

    assert_eq!(
        at_deadline,
        Err(EngineError::HoldExpired),
        "at its deadline a hold cannot be paid, though no expiry tick has run"
    );
    assert_eq!(t.balance(member), SEAT_PRICE, "only the first seat was paid for");
    assert_eq!(
        t.reservation(member, late.id).await.status,
        ReservationStatus::Expired,
        "the refused payment expired the reservation"
    );
    assert_eq!(t.seat_status(concert, 2).await, Available, "its seat is free again");
    assert_eq!(
        t.engine.concert(concert).expect("exists").available(),
        9,
        "the published available count saw the release"
    );
    let released = t.events_since(before);
    assert!(
        matches!(
            released.as_slice(),
            [Event::HoldReleased { reservation, status: ReservationStatus::Expired, .. }] if *reservation == late.id
        ),
        "the expiry is journaled once, got {:?}",
        kinds(&released)
    );
    t.check_invariants().await;
}

#[actix_rt::test]
async fn paying_an_expired_reservation_is_hold_expired() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member_with_balance(SEAT_PRICE);
    let held = t.hold(member, concert, &[1]).await.expect("free seat");
    t.advance_clock(HOLD_TIMEOUT_MS);
    assert_eq!(t.expire(concert).await, 1, "the expiry releases the hold");

    let outcome = t.pay(member, held.id).await;

    assert_eq!(
        outcome,
        Err(EngineError::HoldExpired),
        "an EXPIRED reservation cannot be paid"
    );
    assert_eq!(t.balance(member), SEAT_PRICE, "nothing was debited");
    assert_eq!(t.seat_status(concert, 1).await, Available, "the seat stays free");
    t.check_invariants().await;
}

/// Engine bug: `ConcertActor::pay` journals a `HoldReleased` whenever
/// `check_payable` answers `HoldExpired`, also when the reservation was
/// already EXPIRED and nothing changed. Every retry of such a payment adds
/// another release event.
#[actix_rt::test]
async fn paying_an_expired_reservation_journals_nothing() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member_with_balance(SEAT_PRICE);
    let held = t.hold(member, concert, &[1]).await.expect("free seat");
    t.advance_clock(HOLD_TIMEOUT_MS);
    t.expire(concert).await;
    let before = t.journal.len();

    for _ in 0..3 {
        let outcome = t.pay(member, held.id).await;
        assert_eq!(
            outcome,
            Err(EngineError::HoldExpired),
            "an EXPIRED reservation cannot be paid"
        );
    }

    assert_eq!(
        kinds(&t.events_since(before)),
        Vec::<&str>::new(),
        "a refused payment that changes nothing journals nothing"
    );
}

#[actix_rt::test]
async fn paying_a_cancelled_reservation_is_not_pending() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member_with_balance(SEAT_PRICE);
    let held = t.hold(member, concert, &[1]).await.expect("free seat");
    t.cancel(member, held.id).await.expect("the owner cancels");

    let outcome = t.pay(member, held.id).await;

    assert_eq!(
        outcome,
        Err(EngineError::NotPending),
        "a CANCELLED reservation cannot be paid"
    );
    assert_eq!(t.balance(member), SEAT_PRICE, "nothing was debited");
    t.check_invariants().await;
}

#[actix_rt::test]
async fn paying_a_confirmed_reservation_again_is_not_pending() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member_with_balance(3 * SEAT_PRICE);
    let held = t.hold(member, concert, &[1]).await.expect("free seat");
    t.pay(member, held.id).await.expect("first payment");

    let again = t.pay(member, held.id).await;

    assert_eq!(
        again,
        Err(EngineError::NotPending),
        "a CONFIRMED reservation is not paid twice"
    );
    assert_eq!(t.balance(member), 2 * SEAT_PRICE, "the wallet was debited once");
    assert_eq!(t.payment_events(held.id).len(), 1, "one payment is journaled");
    t.check_invariants().await;
}

#[actix_rt::test]
async fn another_members_reservation_is_forbidden() {
    let t = paused_engine();
    let concert = t.concert(10);
    let owner = t.member_with_balance(SEAT_PRICE);
    let stranger = t.member_with_balance(SEAT_PRICE);
    let held = t.hold(owner, concert, &[1]).await.expect("free seat");

    let paid = t.pay(stranger, held.id).await;
    let cancelled = t.cancel(stranger, held.id).await;
    let read = t.engine.reservation(stranger, held.id).await;

    assert_eq!(paid, Err(EngineError::Forbidden), "a stranger cannot pay it");
    assert_eq!(cancelled, Err(EngineError::Forbidden), "a stranger cannot cancel it");
    assert_eq!(read, Err(EngineError::Forbidden), "a stranger cannot read it");
    assert_eq!(t.balance(stranger), SEAT_PRICE, "the stranger's wallet is untouched");
    assert_eq!(
        t.reservation(owner, held.id).await.status,
        ReservationStatus::PendingPayment,
        "the owner's hold is untouched"
    );
}

#[actix_rt::test]
async fn an_unknown_reservation_is_not_found() {
    let t = paused_engine();
    let member = t.member_with_balance(SEAT_PRICE);

    assert_eq!(
        t.pay(member, 4_242).await,
        Err(EngineError::NotFound("reservation")),
        "paying an unknown reservation"
    );
    assert_eq!(
        t.cancel(member, 4_242).await,
        Err(EngineError::NotFound("reservation")),
        "cancelling an unknown reservation"
    );
}

// ---- cancel and expiry ---------------------------------------------------------

#[actix_rt::test]
async fn cancelling_frees_the_seats_at_once() {
    let t = paused_engine();
    let concert = t.concert(10);
    let (owner, next) = (t.member(), t.member());
    let held = t.hold(owner, concert, &[3, 4]).await.expect("free seats");

    let cancelled = t.cancel(owner, held.id).await.expect("the owner cancels");

    assert_eq!(
        cancelled.status,
        ReservationStatus::Cancelled,
        "the answer is CANCELLED"
    );
    assert_eq!(
        t.seat_status(concert, 3).await,
        Available,
        "seat 3 is AVAILABLE at once"
    );
    assert_eq!(
        t.seat_status(concert, 4).await,
        Available,
        "seat 4 is AVAILABLE at once"
    );
    assert_eq!(
        t.engine.concert(concert).expect("exists").available(),
        10,
        "the catalog's available count saw it"
    );
    t.hold(next, concert, &[3, 4])
        .await
        .expect("another member can hold them right away");
    assert_eq!(
        t.cancel(owner, held.id).await,
        Err(EngineError::NotPending),
        "a CANCELLED reservation cannot be cancelled again"
    );
    t.check_invariants().await;
}

#[actix_rt::test]
async fn a_paid_or_expired_reservation_cannot_be_cancelled() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member_with_balance(SEAT_PRICE);
    let paid = t.hold(member, concert, &[1]).await.expect("free seat");
    t.pay(member, paid.id).await.expect("paid");
    let lapsed = t.hold(member, concert, &[2]).await.expect("free seat");
    t.advance_clock(HOLD_TIMEOUT_MS);
    t.expire(concert).await;

    assert_eq!(
        t.cancel(member, paid.id).await,
        Err(EngineError::NotPending),
        "a CONFIRMED reservation is not cancelled"
    );
    assert_eq!(
        t.cancel(member, lapsed.id).await,
        Err(EngineError::NotPending),
        "an EXPIRED reservation is not cancelled"
    );
    assert_eq!(t.seat_status(concert, 1).await, Sold, "the sold seat stays sold");
}

#[actix_rt::test]
async fn the_actors_own_timer_releases_a_hold_within_one_tick_of_its_deadline() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member();
    // Off the tick grid, so the deadline falls between two ticks.
    t.advance_virtual(37).await;
    let held = t.hold(member, concert, &[1]).await.expect("free seat");
    let deadline = held.expires_at_ms;

    t.advance_virtual(HOLD_TIMEOUT_MS - 1).await;
    assert_eq!(
        t.seat_status(concert, 1).await,
        Held,
        "a millisecond before its deadline the hold is kept, though the timer ran thousands of times"
    );
    let mut released_at = None;
    while t.now() <= deadline + EXPIRY_TICK_MS as i64 {
        t.advance_virtual(1).await;
        if t.engine.concert(concert).expect("exists").available() == 10 {
            released_at = Some(t.now());
            break;
        }
    }

    let released_at = released_at.expect("the hold was released no later than its deadline + one expiry tick");
    assert!(released_at >= deadline, "not before its deadline");
    assert_eq!(
        t.reservation(member, held.id).await.status,
        ReservationStatus::Expired,
        "the reservation is EXPIRED"
    );
    let releases: Vec<_> = t
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::HoldReleased { status, at_ms, .. } => Some((status, at_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(
        releases,
        vec![(ReservationStatus::Expired, released_at)],
        "the timer journaled one expiry, stamped when it ran"
    );
    t.check_invariants().await;
}

// ---- journal -------------------------------------------------------------------

#[actix_rt::test]
async fn a_payment_is_exactly_one_payment_completed_event_carrying_the_token() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member_with_balance(SEAT_PRICE);
    let token = t.admitted_token(member).await;
    let held = t.hold(member, concert, &[7]).await.expect("free seat");
    let before = t.journal.len();

    let receipt = t.pay_with_token(member, held.id, token).await.expect("paid");
    let _ = t.pay_with_token(member, held.id, token).await;

    let events = t.events_since(before);
    assert_eq!(
        events.len(),
        1,
        "debit, sale, payment record and token expiry are one event"
    );
    assert_eq!(
        events[0],
        Event::PaymentCompleted {
            payment: receipt.payment_id,
            concert,
            reservation: held.id,
            member,
            amount: SEAT_PRICE,
            balance_after: 0,
            token: Some(token),
            at_ms: T0_MS,
        },
        "the event carries everything the payment changed, token included"
    );
}

/// Records, as each `PaymentCompleted` is appended, the state its token has
/// in memory at that moment (what a snapshot tagged with this position or a
/// later one could copy).
#[derive(Default)]
struct TokenAtPaymentSink {
    journal: Arc<MemoryJournal>,
    queue: std::sync::OnceLock<Arc<WaitingQueue>>,
    seen: parking_lot::Mutex<Vec<Option<TokenStatus>>>,
}

impl EventSink for TokenAtPaymentSink {
    fn append(&self, event: Event) -> concert_actors::types::JournalPos {
        if let Event::PaymentCompleted { token: Some(token), .. } = &event {
            let status = self.queue.get().and_then(|q| q.peek(token)).map(|view| view.status);
            self.seen.lock().push(status);
        }
        self.journal.append(event)
    }

    fn durable(&self, pos: concert_actors::types::JournalPos) -> concert_actors::sink::DurableFuture {
        self.journal.durable(pos)
    }

    fn last_pos(&self) -> concert_actors::types::JournalPos {
        self.journal.last_pos()
    }
}

#[actix_rt::test]
async fn a_paid_token_is_expired_in_memory_before_the_payment_takes_its_journal_position() {
    // A snapshot records the journal position first, then copies the parts;
    // replay starts after that position. So when a payment's event takes its
    // position, the token must already be EXPIRED in memory; otherwise a
    // snapshot copied in between keeps the token ACTIVE across a restart
    // (seen once in a 100-round PostgreSQL drill when the caller expired the
    // token after the actor's answer).
    tokio::time::pause();
    let sink = Arc::new(TokenAtPaymentSink::default());
    let t = TestEngine::start_with_sink(
        settings(),
        ConcertRouter::on_current_thread(),
        sink.clone(),
        Arc::clone(&sink.journal),
    );
    assert!(sink.queue.set(Arc::clone(t.engine.queue())).is_ok());
    let concert = t.concert(10);
    let member = t.member_with_balance(SEAT_PRICE);
    let token = t.admitted_token(member).await;
    let held = t.hold(member, concert, &[3]).await.expect("free seat");

    t.pay_with_token(member, held.id, token).await.expect("paid");

    assert_eq!(
        *sink.seen.lock(),
        vec![Some(TokenStatus::Expired)],
        "the token was EXPIRED when the payment event was appended"
    );
}

#[actix_rt::test]
async fn every_change_appends_an_event_and_a_refusal_appends_none() {
    let t = paused_engine();
    let mut mark = t.journal.len();
    let mut appended = |what: &str, expected: &[&str]| {
        let got = kinds(&t.events_since(mark));
        assert_eq!(got, expected, "{what}");
        mark = t.journal.len();
    };

    let member = t.member();
    appended("registering a member", &["MemberRegistered"]);
    t.charge(member, 10 * SEAT_PRICE).expect("charge");
    appended("a charge", &["BalanceCharged"]);
    let concert = t.concert(10);
    appended("creating a concert", &["ConcertCreated"]);
    let token = t.engine.issue_token(member).expect("issued").token;
    appended("issuing a token", &["TokenIssued"]);
    t.engine.issue_token(member).expect("the same token again");
    appended("asking again for the live token", &[]);
    t.engine.tick_queue().await.expect("tick");
    appended("admitting a token", &["TokenAdmitted"]);
    let first = t.hold(member, concert, &[1]).await.expect("free");
    appended("a hold", &["SeatsHeld"]);
    let _ = t.hold(member, concert, &[1]).await;
    appended("a refused hold", &[]);
    t.cancel(member, first.id).await.expect("cancel");
    appended("a cancellation", &["HoldReleased"]);
    let second = t.hold(member, concert, &[2]).await.expect("free");
    t.pay_with_token(member, second.id, token).await.expect("paid");
    appended("a hold then its payment", &["SeatsHeld", "PaymentCompleted"]);
    let third = t.hold(member, concert, &[3]).await.expect("free");
    t.advance_clock(HOLD_TIMEOUT_MS);
    t.expire(concert).await;
    appended("a hold then its expiry", &["SeatsHeld", "HoldReleased"]);
    let _ = t.cancel(member, third.id).await;
    let _ = t.charge(member, 0);
    appended("refused cancel and charge", &[]);
    let other = t.member();
    t.engine.issue_token(other).expect("issued");
    t.engine.tick_queue().await.expect("tick");
    appended(
        "a second member and token",
        &["MemberRegistered", "TokenIssued", "TokenAdmitted"],
    );
    t.advance_clock(TOKEN_TTL_MS);
    t.engine.tick_queue().await.expect("tick");
    appended("an ACTIVE token reaching its TTL", &["TokenExpired"]);
    let scope = IdempotencyScope {
        member,
        endpoint: IdempotentEndpoint::Charge,
        key: "key-1".into(),
    };
    let Claim::Execute(guard) = t.engine.idempotency().claim(scope, [1; 32]).await else {
        panic!("a new key executes");
    };
    guard.complete(
        StoredResponse {
            status: 200,
            body: b"{}".to_vec(),
        },
        t.now(),
    );
    appended("recording an idempotent response", &["IdempotencyRecorded"]);
}

#[actix_rt::test]
async fn a_sink_that_refuses_writes_makes_every_write_unavailable_and_changes_nothing() {
    tokio::time::pause();
    let sink = Arc::new(SwitchableSink::default());
    let journal = Arc::clone(&sink.journal);
    let t = TestEngine::start_with_sink(
        settings(),
        ConcertRouter::on_current_thread(),
        sink.clone() as Arc<dyn EventSink>,
        journal,
    );
    let concert = t.concert(10);
    let member = t.member_with_balance(2 * SEAT_PRICE);
    let token = t.admitted_token(member).await;
    let held = t.hold(member, concert, &[1]).await.expect("free seat");
    let latecomer = t.member();
    let before = t.journal.len();

    sink.refuse_writes(true);
    let registered = t.engine.register_member("late", [9; 32]).map(|c| c.value);
    let charged = t.charge(member, 1_000);
    let created = t
        .engine
        .create_concert(TestEngine::new_concert(10, T0_MS + DAY_MS))
        .map(|c| c.value.info.id);
    let issued = t.engine.issue_token(latecomer).map(|i| i.token);
    let holding = t.hold(member, concert, &[2]).await;
    let paying = t.pay_with_token(member, held.id, token).await;
    let cancelling = t.cancel(member, held.id).await;

    for (what, outcome) in [
        ("registering", registered.map(|_| ())),
        ("charging", charged.map(|_| ())),
        ("creating a concert", created.map(|_| ())),
        ("issuing a token", issued.map(|_| ())),
        ("holding", holding.map(|_| ())),
        ("paying", paying.map(|_| ())),
        ("cancelling", cancelling.map(|_| ())),
    ] {
        assert_eq!(
            outcome,
            Err(EngineError::Unavailable),
            "{what} is refused as unavailable"
        );
    }
    assert_eq!(t.journal.len(), before, "nothing was journaled");
    assert_eq!(t.balance(member), 2 * SEAT_PRICE, "no money moved");
    assert_eq!(t.engine.accounts().len(), 2, "no member was registered");
    assert!(t.engine.concert(2).is_none(), "no concert was created");
    assert_eq!(t.engine.queue().waiting(), 0, "no token was issued");
    assert_eq!(
        t.seat_statuses(concert).await[..2],
        [Held, Available],
        "the seats are as they were"
    );
    assert_eq!(t.engine.admitted_member(&token), Ok(member), "the token was not spent");

    sink.refuse_writes(false);
    t.pay_with_token(member, held.id, token)
        .await
        .expect("the untouched hold is paid once writes are taken again");
    t.check_invariants().await;
}

// ---- gate and router -------------------------------------------------------------

#[actix_rt::test]
async fn the_queue_gate_lets_only_active_tokens_through() {
    tokio::time::pause();
    let mut one_per_tick = settings();
    one_per_tick.queue.admit_per_tick = 1;
    let t = TestEngine::start(one_per_tick, ConcertRouter::on_current_thread());
    let (first, second) = (t.member(), t.member());
    let first_token = t.engine.issue_token(first).expect("issued").token;
    let second_token = t.engine.issue_token(second).expect("issued").token;

    assert_eq!(
        t.engine.admitted_member(&TokenId::new(0, 2, [7; 16])),
        Err(EngineError::TokenInvalid),
        "an unknown token is TOKEN_INVALID"
    );
    assert_eq!(
        t.engine.admitted_member(&first_token),
        Err(EngineError::TokenNotActive { position: 1 }),
        "a WAITING token is TOKEN_NOT_ACTIVE with its position, even in an empty queue"
    );
    assert_eq!(
        t.engine.admitted_member(&second_token),
        Err(EngineError::TokenNotActive { position: 2 }),
        "the second in line is at position 2"
    );

    t.engine.tick_queue().await.expect("tick");

    assert_eq!(
        t.engine.admitted_member(&first_token),
        Ok(first),
        "an ACTIVE token opens the gate for its member"
    );
    assert_eq!(
        t.engine.admitted_member(&second_token),
        Err(EngineError::TokenNotActive { position: 1 }),
        "one admission a tick: the second moves up to position 1"
    );
    t.engine.queue().check_invariants();
}

/// Engine bug: `WaitingQueue::tick` takes the `ticking` lock, then `fifo`;
/// `WaitingQueue::check_invariants` (called first by `Engine::check_invariants`)
/// and `WaitingQueue::import` take `fifo`, then `ticking`. Run from two threads
/// (the queue actor's tick and, say, a snapshot check) they deadlock, and with
/// them every later `issue_token`.
#[test]
fn the_invariant_check_can_run_while_the_queue_ticks() {
    let queue = Arc::new(WaitingQueue::new(settings().queue, Arc::new(MemoryJournal::new())));
    for member in 1..=8 {
        queue.issue(member, T0_MS).expect("issued");
    }
    let (done, finished) = std::sync::mpsc::channel();
    for side in ["tick", "check"] {
        let queue = Arc::clone(&queue);
        let done = done.clone();
        std::thread::spawn(move || {
            for i in 0..100_000 {
                if side == "tick" {
                    queue.tick(T0_MS + i);
                } else {
                    queue.check_invariants();
                }
            }
            let _ = done.send(side);
        });
    }

    for _ in 0..2 {
        let side = finished.recv_timeout(std::time::Duration::from_secs(10));
        assert!(
            side.is_ok(),
            "100,000 ticks and 100,000 checks finish in seconds unless they deadlock"
        );
    }
}

#[actix_rt::test]
async fn an_unknown_concert_is_not_found() {
    let t = paused_engine();
    let member = t.member();

    assert_eq!(
        t.hold(member, 99, &[1]).await,
        Err(EngineError::NotFound("concert")),
        "holding seats of an unknown concert"
    );
    assert_eq!(
        t.engine.seats(99, None).await,
        Err(EngineError::NotFound("concert")),
        "listing seats of an unknown concert"
    );
    assert_eq!(
        t.engine.router().send(99, ExpireHolds).await,
        Err(EngineError::NotFound("concert")),
        "any message to an unknown concert"
    );
}

#[test]
fn new_concert_validation_refuses_every_bad_field() {
    let now = T0_MS;
    let good = TestEngine::new_concert(50, now + DAY_MS);
    good.validate(now).expect("the base case is valid");
    let tier = |from_seat, to_seat, price| PriceTier {
        from_seat,
        to_seat,
        price,
    };
    let with = |change: &dyn Fn(&mut NewConcert)| {
        let mut new = good.clone();
        change(&mut new);
        new
    };
    let bad: Vec<(&str, NewConcert)> = vec![
        ("an empty title", with(&|n| n.title = String::new())),
        ("a blank title", with(&|n| n.title = "   ".into())),
        ("a 201-character title", with(&|n| n.title = "가".repeat(201))),
        ("an empty venue", with(&|n| n.venue = String::new())),
        ("a 201-character venue", with(&|n| n.venue = "v".repeat(201))),
        ("an empty category", with(&|n| n.category = String::new())),
        ("an upper-case category", with(&|n| n.category = "Rock".into())),
        ("a category with a space", with(&|n| n.category = "hip hop".into())),
        ("a category with an underscore", with(&|n| n.category = "k_pop".into())),
        ("a 33-character category", with(&|n| n.category = "a".repeat(33))),
        ("a start now", with(&|n| n.starts_at_ms = now)),
        ("a start in the past", with(&|n| n.starts_at_ms = now - DAY_MS)),
        ("zero seats", with(&|n| n.seat_count = 0)),
        ("too many seats", with(&|n| n.seat_count = MAX_SEATS_PER_CONCERT + 1)),
        ("a negative price", with(&|n| n.price = -1)),
        ("a price over the maximum", with(&|n| n.price = MAX_SEAT_PRICE + 1)),
        ("a tier from seat 0", with(&|n| n.price_tiers = vec![tier(0, 5, 1)])),
        (
            "a tier ending before it starts",
            with(&|n| n.price_tiers = vec![tier(6, 5, 1)]),
        ),
        (
            "a tier past the seat count",
            with(&|n| n.price_tiers = vec![tier(40, 51, 1)]),
        ),
        (
            "overlapping tiers",
            with(&|n| n.price_tiers = vec![tier(1, 10, 1), tier(10, 20, 2)]),
        ),
        ("a negative tier price", with(&|n| n.price_tiers = vec![tier(1, 2, -5)])),
        (
            "a tier price over the maximum",
            with(&|n| n.price_tiers = vec![tier(1, 2, MAX_SEAT_PRICE + 1)]),
        ),
    ];

    for (what, new) in bad {
        let outcome = new.validate(now);
        assert!(
            matches!(outcome, Err(EngineError::Validation(_))),
            "{what} is a validation error, got {outcome:?}"
        );
    }

    let edges: Vec<(&str, NewConcert)> = vec![
        ("a 200-character title", with(&|n| n.title = "가".repeat(200))),
        (
            "a title padded with blanks",
            with(&|n| n.title = format!("  {}  ", "t".repeat(200))),
        ),
        (
            "a 32-character category",
            with(&|n| n.category = "a-1".repeat(10) + "ab"),
        ),
        ("one seat", with(&|n| n.seat_count = 1)),
        ("the largest concert", with(&|n| n.seat_count = MAX_SEATS_PER_CONCERT)),
        ("free seats", with(&|n| n.price = 0)),
        ("the largest price", with(&|n| n.price = MAX_SEAT_PRICE)),
        ("a start a millisecond ahead", with(&|n| n.starts_at_ms = now + 1)),
        (
            "adjacent tiers",
            with(&|n| n.price_tiers = vec![tier(11, 50, 2), tier(1, 10, 1)]),
        ),
    ];
    for (what, new) in edges {
        assert!(new.validate(now).is_ok(), "{what} is valid");
    }
}

// ---- races -----------------------------------------------------------------------
//
// The concert actors run on two arbiter threads. The competing requests come
// from two more OS threads (each with its own actix System), released together
// by a barrier, each with all of its requests in flight at once.

/// One competitor of a race: runs on its own thread.
type Side<'a, R> = Box<dyn FnOnce() -> R + Send + 'a>;
type Outcome = Result<(), EngineError>;

/// Runs `sides` at the same time, each on its own thread and System, and
/// returns what each returned.
fn race<R: Send>(sides: Vec<Side<'_, R>>) -> Vec<R> {
    let start = Barrier::new(sides.len());
    std::thread::scope(|scope| {
        let running: Vec<_> = sides
            .into_iter()
            .map(|side| {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    side()
                })
            })
            .collect();
        running
            .into_iter()
            .map(|side| side.join().expect("a racing side panicked"))
            .collect()
    })
}

/// Sends `request(item)` for every item at once from a fresh System; the
/// outcomes in item order.
fn all_at_once<I, F, Fut>(items: Vec<I>, request: F) -> Vec<Fut::Output>
where
    I: 'static,
    F: Fn(I) -> Fut,
    Fut: std::future::Future + 'static,
{
    actix_rt::System::new().block_on(async move {
        let tasks: Vec<_> = items.into_iter().map(|item| actix_rt::spawn(request(item))).collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(task.await.expect("a request task panicked"));
        }
        outcomes
    })
}

#[actix_rt::test]
async fn five_hundred_concurrent_holds_on_one_seat_give_exactly_one_hold() {
    let t = Arc::new(TestEngine::with_threads(2));
    let concert = t.concert(10);
    let members: Vec<_> = (0..500).map(|_| t.member()).collect();
    let side = |members: Vec<u64>| {
        let t = Arc::clone(&t);
        Box::new(move || {
            all_at_once(members, move |member| {
                let t = Arc::clone(&t);
                async move { (member, t.hold(member, concert, &[5]).await) }
            })
        }) as Side<'_, Vec<(u64, Result<Reservation, EngineError>)>>
    };

    let outcomes: Vec<_> = race(vec![side(members[..250].to_vec()), side(members[250..].to_vec())])
        .into_iter()
        .flatten()
        .collect();

    let mut winners = Vec::new();
    for (member, outcome) in outcomes {
        match outcome {
            Ok(reservation) => winners.push((member, reservation)),
            Err(err) => assert_eq!(
                err,
                EngineError::SeatUnavailable,
                "every loser is told the seat is taken"
            ),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one of 500 holds succeeds");
    let (winner, reservation) = &winners[0];
    assert_eq!(reservation.member_id, *winner, "the winner owns the hold");
    assert_eq!(t.seat_status(concert, 5).await, Held, "the seat is held");
    assert_eq!(
        t.seat_statuses(concert).await.iter().filter(|&&s| s == Held).count(),
        1,
        "no other seat was touched"
    );
    t.check_invariants().await;
    t.engine.shutdown();
}

#[actix_rt::test]
async fn concurrent_overlapping_holds_never_share_a_seat() {
    let t = Arc::new(TestEngine::with_threads(2));
    let concert = t.concert(40);
    let requests: Vec<(u64, u32)> = (0..400u32).map(|i| (t.member(), i % 39 + 1)).collect();
    let side = |requests: Vec<(u64, u32)>| {
        let t = Arc::clone(&t);
        Box::new(move || {
            all_at_once(requests, move |(member, first)| {
                let t = Arc::clone(&t);
                async move { t.hold(member, concert, &[first, first + 1]).await }
            })
        }) as Side<'_, Vec<Result<Reservation, EngineError>>>
    };

    let outcomes = race(vec![side(requests[..200].to_vec()), side(requests[200..].to_vec())]);

    let mut taken = BTreeSet::new();
    for reservation in outcomes.into_iter().flatten().flatten() {
        for seat in reservation.seats {
            assert!(taken.insert(seat), "seat {seat} went to two holds");
        }
    }
    let held: BTreeSet<u32> = t
        .seat_statuses(concert)
        .await
        .iter()
        .enumerate()
        .filter(|(_, &s)| s == Held)
        .map(|(idx, _)| idx as u32 + 1)
        .collect();
    assert_eq!(held, taken, "the HELD seats are exactly those of the successful holds");
    t.check_invariants().await;
    t.engine.shutdown();
}

/// 100 pending one-seat holds, each of its own member with `balance`.
async fn hundred_holds(t: &TestEngine, concert: u64, balance: i64) -> Vec<(u64, u32, u64)> {
    let mut holds = Vec::new();
    for seat in 1..=100 {
        let member = t.member_with_balance(balance);
        let held = t.hold(member, concert, &[seat]).await.expect("free seat");
        holds.push((member, seat, held.id));
    }
    holds
}

#[actix_rt::test]
async fn pay_racing_cancel_has_exactly_one_winner() {
    let t = Arc::new(TestEngine::with_threads(2));
    let concert = t.concert(100);
    let holds = hundred_holds(&t, concert, SEAT_PRICE).await;
    let mut reversed = holds.clone();
    reversed.reverse();

    // The payer goes front to back, the canceller back to front: they meet
    // somewhere in the middle, where the mailbox order decides.
    let (tp, tc) = (Arc::clone(&t), Arc::clone(&t));
    let mut sides = race::<Vec<(u64, Outcome)>>(vec![
        Box::new(move || {
            all_at_once(holds, move |(member, _, id)| {
                let t = Arc::clone(&tp);
                async move { (id, t.pay(member, id).await.map(|_| ())) }
            })
        }),
        Box::new(move || {
            all_at_once(reversed, move |(member, _, id)| {
                let t = Arc::clone(&tc);
                async move { (id, t.cancel(member, id).await.map(|_| ())) }
            })
        }),
    ]);
    let cancels: BTreeMap<_, _> = sides.pop().expect("canceller").into_iter().collect();
    let pays: BTreeMap<_, _> = sides.pop().expect("payer").into_iter().collect();

    let (mut paid, mut cancelled) = (0, 0);
    for (member, seat, id) in hundred_holds_ids(&t, concert).await {
        let status = t.reservation(member, id).await.status;
        match (&pays[&id], &cancels[&id]) {
            (Ok(()), Err(EngineError::NotPending)) => {
                paid += 1;
                assert_eq!(status, ReservationStatus::Confirmed, "the payment won: CONFIRMED");
                assert_eq!(t.balance(member), 0, "the payment won: the wallet was debited");
                assert_eq!(t.seat_status(concert, seat).await, Sold, "the payment won: SOLD");
            }
            (Err(EngineError::NotPending), Ok(())) => {
                cancelled += 1;
                assert_eq!(status, ReservationStatus::Cancelled, "the cancel won: CANCELLED");
                assert_eq!(t.balance(member), SEAT_PRICE, "the cancel won: no money moved");
                assert_eq!(
                    t.seat_status(concert, seat).await,
                    Available,
                    "the cancel won: AVAILABLE"
                );
            }
            other => panic!("reservation {id}: exactly one of pay and cancel wins, got {other:?}"),
        }
    }
    assert_eq!(paid + cancelled, 100, "every race had a winner");
    t.check_invariants().await;
    t.engine.shutdown();
}

/// `(member, seat, reservation)` of every reservation of the concert, by seat.
async fn hundred_holds_ids(t: &TestEngine, concert: u64) -> Vec<(u64, u32, u64)> {
    let exported = t.export().await;
    let state = exported
        .iter()
        .find(|c| c.info().id == concert)
        .expect("the concert exists");
    let mut all: Vec<_> = state.reservations().map(|r| (r.member_id, r.seats[0], r.id)).collect();
    all.sort_by_key(|&(_, seat, _)| seat);
    all
}

#[actix_rt::test]
async fn two_payments_racing_debit_once() {
    let t = Arc::new(TestEngine::with_threads(2));
    let concert = t.concert(100);
    let holds = hundred_holds(&t, concert, 3 * SEAT_PRICE).await;
    let mut reversed = holds.clone();
    reversed.reverse();
    let payer = |holds: Vec<(u64, u32, u64)>| {
        let t = Arc::clone(&t);
        Box::new(move || {
            all_at_once(holds, move |(member, _, id)| {
                let t = Arc::clone(&t);
                async move { (id, t.pay(member, id).await.map(|_| ())) }
            })
        }) as Side<'_, Vec<(u64, Outcome)>>
    };

    let mut sides = race(vec![payer(holds.clone()), payer(reversed)]);
    let second: BTreeMap<_, _> = sides.pop().expect("second payer").into_iter().collect();
    let first: BTreeMap<_, _> = sides.pop().expect("first payer").into_iter().collect();

    for (member, _, id) in holds {
        let outcomes = [&first[&id], &second[&id]];
        let wins = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(wins, 1, "reservation {id}: exactly one payment wins, got {outcomes:?}");
        assert!(
            outcomes.contains(&&Err(EngineError::NotPending)),
            "reservation {id}: the other is NOT_PENDING, got {outcomes:?}"
        );
        assert_eq!(t.balance(member), 2 * SEAT_PRICE, "reservation {id}: debited once");
        assert_eq!(t.payment_events(id).len(), 1, "reservation {id}: one payment journaled");
    }
    t.check_invariants().await;
    t.engine.shutdown();
}

#[actix_rt::test]
async fn pay_racing_expiry_has_exactly_one_winner() {
    let t = Arc::new(TestEngine::with_threads(2));
    let concert = t.concert(100);
    let holds = hundred_holds(&t, concert, SEAT_PRICE).await;

    // Every payment is sent at once; once a quarter of them went through, the
    // clock passes the deadline and an expiry is sent, while the rest are
    // still in the actor's mailbox.
    let (tp, te) = (Arc::clone(&t), Arc::clone(&t));
    let payments_done = move || {
        te.events()
            .iter()
            .filter(|e| matches!(e, Event::PaymentCompleted { .. }))
            .count()
    };
    let te = Arc::clone(&t);
    let mut sides = race::<Vec<(u64, Outcome)>>(vec![
        Box::new(move || {
            all_at_once(holds, move |(member, _, id)| {
                let t = Arc::clone(&tp);
                async move { (id, t.pay(member, id).await.map(|_| ())) }
            })
        }),
        Box::new(move || {
            let waiting_since = std::time::Instant::now();
            while payments_done() < 25 && waiting_since.elapsed() < std::time::Duration::from_secs(10) {
                std::thread::yield_now();
            }
            te.advance_clock(HOLD_TIMEOUT_MS);
            let released = actix_rt::System::new().block_on(async move { te.expire(concert).await });
            vec![(0, Ok(())); released]
        }),
    ]);
    let expired_by_message = sides.pop().expect("expiry").len();
    let pays: BTreeMap<_, _> = sides.pop().expect("payer").into_iter().collect();

    let mut paid = 0;
    for (member, seat, id) in hundred_holds_ids(&t, concert).await {
        let status = t.reservation(member, id).await.status;
        match &pays[&id] {
            Ok(()) => {
                paid += 1;
                assert_eq!(status, ReservationStatus::Confirmed, "the payment won: CONFIRMED");
                assert_eq!(t.balance(member), 0, "the payment won: debited");
                assert_eq!(t.seat_status(concert, seat).await, Sold, "the payment won: SOLD");
            }
            Err(EngineError::HoldExpired) => {
                assert_eq!(status, ReservationStatus::Expired, "the expiry won: EXPIRED");
                assert_eq!(t.balance(member), SEAT_PRICE, "the expiry won: no money moved");
                assert_eq!(
                    t.seat_status(concert, seat).await,
                    Available,
                    "the expiry won: AVAILABLE"
                );
            }
            Err(other) => panic!("reservation {id}: a payment either wins or meets HOLD_EXPIRED, got {other:?}"),
        }
    }
    assert!(paid >= 25, "payments handled before the deadline passed won");
    assert!(
        expired_by_message <= 100 - paid,
        "the expiry released only holds that were not paid"
    );
    // Distinct ids: a payment arriving after the expiry journals a second
    // release of the same hold (the bug `paying_an_expired_reservation_journals_nothing` pins).
    let released: BTreeSet<_> = t
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::HoldReleased { reservation, .. } => Some(*reservation),
            _ => None,
        })
        .collect();
    assert_eq!(
        released.len(),
        100 - paid,
        "every unpaid hold, and no paid one, was released"
    );
    t.check_invariants().await;
    t.engine.shutdown();
}
