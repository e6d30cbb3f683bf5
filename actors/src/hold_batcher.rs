//! `HoldBatcher`: a per-concert front that packs concurrent hold requests
//! into one [`HoldSeatsBatch`] message, so that one mailbox round trip to the
//! concert actor serves many callers.
//!
//! What it owns: a bounded queue of pending `(HoldSeats, reply)` pairs for
//! one concert and the one task that drains it. Callers only enqueue; only
//! the drain task talks to the actor. It decides nothing about
//! seats: the [`ConcertActor`](crate::concert_actor::ConcertActor) still
//! handles every hold of a batch one at a time, in queue order, exactly as if
//! each had arrived as its own [`HoldSeats`] message. The drain task takes
//! whatever is pending (at most `max_batch`), sends it as one batch, waits for
//! the actor's answer and hands each caller its own result; requests that
//! arrive meanwhile form the next batch. So a quiet concert sees batches of
//! one and a hot one sees large batches, with no timer and no added delay.
//!
//! Limits: the queue holds at most `queue_capacity` requests (a full queue
//! makes callers wait for room, at most [`SEND_TIMEOUT`], then answers
//! `Unavailable`), and a batch carries at most `max_batch` holds, each batch
//! waiting at most [`SEND_TIMEOUT`] for the actor; so a caller waits at most
//! for the batches ahead of it (`queue_capacity / max_batch + 1`), each so
//! bounded, without a timer of its own on the fast path. Nothing on
//! the request path panics: a stopped actor, a timeout or a lost reply is
//! `EngineError::Unavailable` (a 503).

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

use crate::concert::Reservation;
use crate::concert_actor::{Committed, HoldSeats, HoldSeatsBatch};
use crate::error::EngineError;
use crate::router::SEND_TIMEOUT;

/// Pending requests one batcher queues at most (callers wait for room).
pub const HOLD_BATCHER_QUEUE_CAPACITY: usize = 4_096;
/// Holds one `HoldSeatsBatch` message carries at most: bounds the time one
/// actor turn takes, so other messages of the concert are not starved.
pub const MAX_HOLD_BATCH: usize = 256;

/// What one hold request is answered with.
pub type HoldReply = Result<Committed<Reservation>, EngineError>;

/// Bounds of one batcher, checked (clamped to at least 1) at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldBatcherSettings {
    pub queue_capacity: usize,
    pub max_batch: usize,
}

impl Default for HoldBatcherSettings {
    fn default() -> Self {
        Self {
            queue_capacity: HOLD_BATCHER_QUEUE_CAPACITY,
            max_batch: MAX_HOLD_BATCH,
        }
    }
}

/// A hold waiting for its batch, with where to send its answer.
struct PendingHold {
    hold: HoldSeats,
    reply: oneshot::Sender<HoldReply>,
}

/// The sending side of one concert's batch queue. Cheap to clone; the drain
/// task ends once every clone is dropped.
#[derive(Clone)]
pub struct HoldBatcher {
    queue: mpsc::Sender<PendingHold>,
}

impl HoldBatcher {
    /// Starts the drain task for the concert actor behind `target`. Must be
    /// called inside a tokio runtime (the task is spawned on it).
    pub fn spawn(target: Recipient<HoldSeatsBatch>, settings: HoldBatcherSettings) -> Self {
        let (queue, pending) = mpsc::channel(settings.queue_capacity.max(1));
        tokio::spawn(drain(pending, target, settings.max_batch.max(1)));
        Self { queue }
    }

    /// Holds seats through the next batch and waits for this request's own
    /// result. Same answers as sending `hold` to the actor directly.
    pub async fn hold(&self, hold: HoldSeats) -> HoldReply {
        let (reply, answer) = oneshot::channel();
        // Fast path without a timer: there is room (the usual case).
        match self.queue.try_send(PendingHold { hold, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(pending)) => {
                let queued = tokio::time::timeout(SEND_TIMEOUT, self.queue.send(pending)).await;
                if !matches!(queued, Ok(Ok(()))) {
                    tracing::warn!("hold batcher queue stayed full");
                    return Err(EngineError::Unavailable);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("hold batcher drain task is gone");
                return Err(EngineError::Unavailable);
            }
        }
        // A dropped sender means the batch failed without an answer for us.
        answer.await.unwrap_or(Err(EngineError::Unavailable))
    }
}

/// Drains `pending` batch by batch until every `HoldBatcher` is dropped.
async fn drain(mut pending: mpsc::Receiver<PendingHold>, target: Recipient<HoldSeatsBatch>, max_batch: usize) {
    let mut taken: Vec<PendingHold> = Vec::with_capacity(max_batch);
    while pending.recv_many(&mut taken, max_batch).await > 0 {
        let (holds, replies): (Vec<HoldSeats>, Vec<oneshot::Sender<HoldReply>>) =
            taken.drain(..).map(|p| (p.hold, p.reply)).unzip();
        match tokio::time::timeout(SEND_TIMEOUT, target.send(HoldSeatsBatch(holds))).await {
            Ok(Ok(results)) => {
                debug_assert_eq!(results.len(), replies.len(), "one result per hold of the batch");
                // A caller that gave up has dropped its receiver: nothing to do.
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "concert actor unreachable from the hold batcher");
                answer_unavailable(replies);
            }
            Err(_) => {
                tracing::warn!("concert actor did not answer a hold batch in time");
                answer_unavailable(replies);
            }
        }
    }
}

fn answer_unavailable(replies: Vec<oneshot::Sender<HoldReply>>) {
    for reply in replies {
        let _ = reply.send(Err(EngineError::Unavailable));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;
    use crate::concert::ReservationStatus;

    /// Stands in for a concert actor: answers even reservation ids with a
    /// hold and odd ones with `SeatUnavailable`, and records batch sizes.
    struct FakeConcert {
        batch_sizes: Arc<Mutex<Vec<usize>>>,
    }

    impl Actor for FakeConcert {
        type Context = Context<Self>;
    }

    impl Handler<HoldSeatsBatch> for FakeConcert {
        type Result = Vec<HoldReply>;

        fn handle(&mut self, msg: HoldSeatsBatch, _: &mut Self::Context) -> Self::Result {
            self.batch_sizes.lock().push(msg.0.len());
            msg.0.into_iter().map(answer).collect()
        }
    }

    fn answer(hold: HoldSeats) -> HoldReply {
        if hold.reservation % 2 == 1 {
            return Err(EngineError::SeatUnavailable);
        }
        Ok(Committed {
            value: Reservation {
                id: hold.reservation,
                concert_id: 1,
                member_id: hold.member,
                seats: hold.seats,
                amount: 0,
                status: ReservationStatus::PendingPayment,
                created_at_ms: 0,
                expires_at_ms: 1,
            },
            pos: hold.reservation,
        })
    }

    fn request(reservation: u64) -> HoldSeats {
        HoldSeats {
            member: reservation + 1_000,
            reservation,
            seats: vec![1],
        }
    }

    fn fake_batcher(max_batch: usize) -> (HoldBatcher, Arc<Mutex<Vec<usize>>>) {
        let batch_sizes = Arc::new(Mutex::new(Vec::new()));
        let actor = FakeConcert {
            batch_sizes: Arc::clone(&batch_sizes),
        }
        .start();
        let settings = HoldBatcherSettings {
            queue_capacity: 64,
            max_batch,
        };
        (HoldBatcher::spawn(actor.recipient(), settings), batch_sizes)
    }

    #[actix_rt::test]
    async fn each_caller_gets_the_answer_to_its_own_request() {
        let (batcher, _) = fake_batcher(8);
        let calls = (1..=40u64).map(|id| {
            let batcher = batcher.clone();
            async move { (id, batcher.hold(request(id)).await) }
        });
        for (id, reply) in join_all(calls).await {
            match reply {
                Ok(held) => {
                    assert_eq!(id % 2, 0, "only even ids are held by the fake");
                    assert_eq!(held.value.id, id, "the reply is for this caller's reservation");
                    assert_eq!(held.value.member_id, id + 1_000, "and this caller's member");
                }
                Err(err) => {
                    assert_eq!(id % 2, 1, "only odd ids are refused by the fake");
                    assert_eq!(err, EngineError::SeatUnavailable, "the actor's rejection is passed on");
                }
            }
        }
    }

    #[actix_rt::test]
    async fn concurrent_requests_share_batches_no_larger_than_the_limit() {
        let (batcher, batch_sizes) = fake_batcher(8);
        let calls = (1..=40u64).map(|id| {
            let batcher = batcher.clone();
            async move { batcher.hold(request(id)).await }
        });
        let replies = join_all(calls).await;
        assert_eq!(replies.len(), 40, "every request is answered");
        let sizes = batch_sizes.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 40, "every request went to the actor once");
        assert!(
            sizes.iter().all(|&n| (1..=8).contains(&n)),
            "batches hold 1..=8: {sizes:?}"
        );
        assert!(sizes.len() < 40, "concurrent requests were packed together: {sizes:?}");
    }

    #[actix_rt::test]
    async fn a_stopped_actor_is_unavailable_not_a_panic() {
        let batch_sizes = Arc::new(Mutex::new(Vec::new()));
        let actor = FakeConcert { batch_sizes }.start();
        let batcher = HoldBatcher::spawn(actor.clone().recipient(), HoldBatcherSettings::default());
        let stopped = actor.send(StopFake).await;
        assert!(stopped.is_ok(), "the fake takes the stop message");
        for _ in 0..1_000 {
            if !actor.connected() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(!actor.connected(), "the fake has stopped");
        assert_eq!(
            batcher.hold(request(2)).await.map(|c| c.value.id),
            Err(EngineError::Unavailable),
            "a request to a stopped concert is answered 503"
        );
    }

    #[actix_rt::test]
    async fn the_real_actor_lets_exactly_one_of_many_holds_on_a_seat_win() {
        use std::sync::atomic::AtomicU64;

        use crate::clock::SystemClock;
        use crate::engine::{Engine, EngineSettings, NewConcert};
        use crate::events::NullSink;
        use crate::router::ConcertRouter;

        let settings = EngineSettings::contract_defaults();
        let engine = Engine::start(
            settings,
            Arc::new(SystemClock),
            Arc::new(NullSink::default()),
            ConcertRouter::on_current_thread(),
        );
        let concert = engine
            .create_concert(NewConcert {
                title: "Batch".into(),
                category: "test".into(),
                venue: "Hall".into(),
                starts_at_ms: engine.now_ms() + 86_400_000,
                seat_count: 10,
                price: 1_000,
                price_tiers: Vec::new(),
            })
            .expect("a valid concert")
            .value;
        let batcher = HoldBatcher::spawn(concert.addr.clone().recipient(), HoldBatcherSettings::default());
        let ids = Arc::new(AtomicU64::new(1));
        let calls = (0..32u64).map(|member| {
            let batcher = batcher.clone();
            let reservation = ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                batcher
                    .hold(HoldSeats {
                        member: member + 1,
                        reservation,
                        seats: vec![7],
                    })
                    .await
            }
        });
        let replies = join_all(calls).await;
        let won = replies.iter().filter(|r| r.is_ok()).count();
        let refused = replies
            .iter()
            .filter(|r| matches!(r, Err(EngineError::SeatUnavailable)))
            .count();
        assert_eq!(won, 1, "exactly one hold on seat 7 wins");
        assert_eq!(refused, 31, "every other one is told the seat is taken");
        assert_eq!(concert.available(), 9, "one seat is held");
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct StopFake;

    impl Handler<StopFake> for FakeConcert {
        type Result = ();

        fn handle(&mut self, _: StopFake, ctx: &mut Self::Context) {
            ctx.stop();
        }
    }

    /// Runs every call as its own task (so they really are concurrent) and
    /// collects the answers in call order.
    async fn join_all<F>(calls: impl Iterator<Item = F>) -> Vec<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let tasks: Vec<_> = calls.map(tokio::spawn).collect();
        let mut outputs = Vec::with_capacity(tasks.len());
        for task in tasks {
            outputs.push(task.await.expect("a test call does not panic"));
        }
        outputs
    }
}
