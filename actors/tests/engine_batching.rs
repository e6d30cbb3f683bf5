//! `Engine::hold` and `Engine::cancel` go through the concert's request
//! batcher: concurrent requests share one actor message, and each is still
//! decided on its own, in arrival order, with its own answer.
//!
//! The requests of a test are polled together with `tokio::join!` on the
//! test's thread: every one is queued before the batcher's drain task runs,
//! so they travel in one batch (the tests check that through the batcher's
//! counters). Time is virtual, as in `engine_rules.rs`, whose race tests
//! drive the same path from several threads.

mod common;

use std::future::Future;
use std::task::Poll;

use common::{settle, TestEngine, DAY_MS, MAX_SEATS_PER_MEMBER, T0_MS};
use concert_actors::concert::ReservationStatus;
use concert_actors::router::ConcertRouter;
use concert_actors::types::{ConcertId, SeatStatus};
use concert_actors::EngineError;

use SeatStatus::{Available, Held};

fn paused_engine() -> TestEngine {
    tokio::time::pause();
    TestEngine::on_current_thread()
}

/// (batches, requests) the concert's batcher has sent to its actor.
fn batch_stats(t: &TestEngine, concert: ConcertId) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let handle = t.engine.concert(concert).expect("the concert exists");
    let stats = handle.batcher.stats();
    (stats.batches.load(Relaxed), stats.requests.load(Relaxed))
}

#[actix_rt::test]
async fn one_batch_decides_each_hold_on_its_own_all_or_nothing_in_arrival_order() {
    let t = paused_engine();
    let concert = t.concert(10);
    let (a, b, c, d, e) = (t.member(), t.member(), t.member(), t.member(), t.member());
    let before = batch_stats(&t, concert);

    let (first, overlapping, after_refusal, too_many, unknown_seat, over_limit) = tokio::join!(
        t.hold(a, concert, &[1, 2]),
        t.hold(b, concert, &[2, 3]),
        t.hold(c, concert, &[3]),
        t.hold(d, concert, &[4, 5, 6, 7, 8]),
        t.hold(e, concert, &[11]),
        t.hold(a, concert, &[4, 5, 6]),
    );

    let (batches, requests) = batch_stats(&t, concert);
    assert_eq!(
        (batches - before.0, requests - before.1),
        (1, 6),
        "the six holds travelled in one batch"
    );
    let first = first.expect("the first request takes seats 1 and 2");
    assert_eq!(first.seats, vec![1, 2]);
    assert_eq!(first.member_id, a, "each caller gets the answer to its own request");
    assert_eq!(
        overlapping,
        Err(EngineError::SeatUnavailable),
        "seat 2 went to the earlier request of the same batch"
    );
    let after_refusal = after_refusal.expect("seat 3 was left free by the refused request");
    assert_eq!((after_refusal.member_id, after_refusal.seats.clone()), (c, vec![3]));
    assert!(
        matches!(too_many, Err(EngineError::Validation(_))),
        "five seats in one reservation is a validation error, got {too_many:?}"
    );
    assert_eq!(unknown_seat, Err(EngineError::NotFound("seat")), "seat 11 of 10");
    assert_eq!(
        over_limit,
        Err(EngineError::TicketLimit {
            limit: MAX_SEATS_PER_MEMBER
        }),
        "two held plus three asked is over the member's limit of four"
    );
    let statuses = t.seat_statuses(concert).await;
    assert_eq!(
        statuses,
        vec![Held, Held, Held, Available, Available, Available, Available, Available, Available, Available],
        "only the accepted requests hold seats"
    );
    let held_events = t
        .events()
        .iter()
        .filter(|event| common::kind(event) == "SeatsHeld")
        .count();
    assert_eq!(held_events, 2, "one event per accepted hold, none for a refusal");
    t.check_invariants().await;
}

#[actix_rt::test]
async fn every_hold_of_a_batch_to_a_started_concert_is_sales_closed() {
    let t = paused_engine();
    let concert = t.concert_starting_at(10, T0_MS + DAY_MS);
    let (a, b, c) = (t.member(), t.member(), t.member());
    t.advance_clock(DAY_MS);
    let before_events = t.journal.len();
    let before = batch_stats(&t, concert);

    let outcomes = tokio::join!(
        t.hold(a, concert, &[1]),
        t.hold(b, concert, &[2, 3]),
        t.hold(c, concert, &[4])
    );

    assert_eq!(
        batch_stats(&t, concert),
        (before.0 + 1, before.1 + 3),
        "the three holds travelled in one batch"
    );
    assert_eq!(
        outcomes,
        (
            Err(EngineError::SalesClosed),
            Err(EngineError::SalesClosed),
            Err(EngineError::SalesClosed)
        ),
        "each request of the batch is told the sale is closed"
    );
    assert_eq!(t.journal.len(), before_events, "nothing was journaled");
    assert!(
        t.seat_statuses(concert).await.iter().all(|&s| s == Available),
        "nothing was held"
    );
}

#[actix_rt::test]
async fn a_cancel_and_a_hold_in_one_batch_run_in_arrival_order() {
    let t = paused_engine();
    let concert = t.concert(10);
    let (owner, next) = (t.member(), t.member());
    let held = t.hold(owner, concert, &[1]).await.expect("seat 1 is free");
    let before = batch_stats(&t, concert);

    let (cancelled, taken_over, cancelled_again) = tokio::join!(
        t.cancel(owner, held.id),
        t.hold(next, concert, &[1]),
        t.cancel(owner, held.id)
    );

    assert_eq!(
        batch_stats(&t, concert),
        (before.0 + 1, before.1 + 3),
        "cancels travel in the same batches as holds"
    );
    let cancelled = cancelled.expect("the owner cancels a pending hold");
    assert_eq!(cancelled.status, ReservationStatus::Cancelled);
    let taken_over = taken_over.expect("the cancel ran first and freed seat 1");
    assert_eq!(taken_over.member_id, next);
    assert!(
        matches!(cancelled_again, Err(EngineError::NotPending)),
        "a second cancel of the same reservation is refused, got {cancelled_again:?}"
    );
    assert_eq!(
        t.seat_status(concert, 1).await,
        Held,
        "seat 1 is held by the second member"
    );
    t.check_invariants().await;
}

#[actix_rt::test]
async fn a_cancel_of_someone_elses_reservation_is_forbidden_before_any_batch() {
    let t = paused_engine();
    let concert = t.concert(10);
    let (owner, stranger) = (t.member(), t.member());
    let held = t.hold(owner, concert, &[1]).await.expect("seat 1 is free");
    let before = batch_stats(&t, concert);

    let refused = t.cancel(stranger, held.id).await;

    assert_eq!(refused, Err(EngineError::Forbidden));
    assert_eq!(batch_stats(&t, concert), before, "the concert actor was not asked");
    assert_eq!(t.seat_status(concert, 1).await, Held);
}

#[actix_rt::test]
async fn a_restored_concert_gets_its_batcher_back() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member();
    t.hold(member, concert, &[1]).await.expect("seat 1 is free");
    let state = t.engine.export_state().await.expect("the state exports");

    let restored = TestEngine::start(common::settings(), ConcertRouter::on_current_thread());
    restored.engine.restore(state);
    let other = restored.member();
    let (taken, free) = tokio::join!(restored.hold(other, concert, &[1]), restored.hold(other, concert, &[2]));

    assert_eq!(
        taken,
        Err(EngineError::SeatUnavailable),
        "the restored hold still counts"
    );
    assert_eq!(free.map(|r| r.seats), Ok(vec![2]), "a free seat is held");
    assert_eq!(
        batch_stats(&restored, concert),
        (1, 2),
        "both went through the restored concert's batcher, in one batch"
    );
    restored.check_invariants().await;
}

/// A caller that goes away once its hold is queued (an HTTP client that
/// hung up) does not lose the reservation: the engine records it in the
/// directory when the actor's answer comes, so it is in the member's list
/// and can be cancelled like any other.
#[actix_rt::test]
async fn a_hold_whose_caller_went_away_is_still_listed_and_cancellable() {
    let t = paused_engine();
    let concert = t.concert(10);
    let member = t.member();

    // Polled once (the hold is queued), then dropped before any answer.
    let mut hold = Box::pin(t.engine.hold(member, concert, vec![3]));
    let first = std::future::poll_fn(|cx| Poll::Ready(hold.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "the actor has not answered yet");
    drop(hold);
    let mut listed = Vec::new();
    for _ in 0..10 {
        settle().await;
        listed = t.engine.member_reservations(member).await.expect("the engine answers");
        if !listed.is_empty() {
            break;
        }
    }

    assert_eq!(listed.len(), 1, "the accepted hold is in the member's list");
    assert_eq!(listed[0].status, ReservationStatus::PendingPayment, "and it is pending");
    assert_eq!(t.seat_status(concert, 3).await, Held, "its seat is held");
    let cancelled = t
        .engine
        .cancel(member, listed[0].id)
        .await
        .expect("its route is known, so it can be cancelled");
    assert_eq!(cancelled.value.status, ReservationStatus::Cancelled, "cancelled");
    assert_eq!(t.seat_status(concert, 3).await, Available, "the seat is free again");
}
