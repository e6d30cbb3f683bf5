//! `RequestBatcher`: a per-concert front that packs concurrent hold and
//! cancel requests into one [`ConcertRequestBatch`] message, so that one
//! mailbox round trip to the concert actor serves many callers. Every
//! concert has one, kept in its [`ConcertHandle`](crate::router::ConcertHandle)
//! and started with the concert (on creation and on restore): it is the path
//! of `Engine::hold` and `Engine::cancel`.
//!
//! What it owns: a bounded queue of pending `(request, reply)` pairs for one
//! concert and the one task that drains it (the router runs that task on the
//! concert actor's own arbiter, so the batch message never crosses a
//! thread). Callers only enqueue; only the drain task talks to the actor. It
//! decides nothing about seats: the
//! [`ConcertActor`](crate::concert_actor::ConcertActor) still handles every
//! request of a batch one at a time, in queue order, exactly as if each had
//! arrived as its own message. The drain task takes whatever is pending (at
//! most `max_batch`), sends it as one batch, waits for the actor's answer and
//! hands each caller its own result; requests that arrive meanwhile form the
//! next batch. So a quiet concert sees batches of one and a hot one sees
//! large batches, with no timer and no added delay.
//!
//! Limits: the queue holds at most `queue_capacity` requests (a full queue
//! makes callers wait for room, at most [`SEND_TIMEOUT`], then answers
//! `Unavailable`), and a batch carries at most `max_batch` requests, each
//! batch waiting at most [`SEND_TIMEOUT`] for the actor: one deadline per
//! batch, none per request. Each request remembers when it was submitted;
//! the drain task answers `Unavailable` at once, without sending it, to any
//! request that has already waited [`SEND_TIMEOUT`] (behind a stalled
//! actor), so a caller waits less than twice [`SEND_TIMEOUT`] in all, without
//! a timer of its own on the fast path. Nothing on the request path panics: a
//! stopped actor, a timeout or a lost reply is `EngineError::Unavailable` (a
//! 503).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::concert::Reservation;
use crate::concert_api::SEND_TIMEOUT;
use crate::concert_api::{Committed, ConcertRequest, ConcertRequestBatch};
use crate::error::EngineError;

/// Pending requests one batcher queues at most (callers wait for room).
pub const REQUEST_BATCHER_QUEUE_CAPACITY: usize = 4_096;
/// Requests one `ConcertRequestBatch` message carries at most: bounds the
/// time one actor turn takes, so other messages of the concert are not
/// starved.
pub const MAX_REQUEST_BATCH: usize = 256;

/// What one batched request is answered with.
pub type BatchReply = Result<Committed<Reservation>, EngineError>;

/// Where a queued request's answer arrives (see [`answer_of`]).
pub type Answer = oneshot::Receiver<BatchReply>;

/// Called with the results of a batch the actor decided after its callers
/// had been answered `Unavailable` (the batch deadline passed): the router
/// records the holds it accepted in the reservation directory.
pub type LateResults = Arc<dyn Fn(Vec<BatchReply>) + Send + Sync>;

/// Bounds of one batcher, checked (clamped to at least 1) at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBatcherSettings {
    pub queue_capacity: usize,
    pub max_batch: usize,
}

impl Default for RequestBatcherSettings {
    fn default() -> Self {
        Self {
            queue_capacity: REQUEST_BATCHER_QUEUE_CAPACITY,
            max_batch: MAX_REQUEST_BATCH,
        }
    }
}

/// A request waiting for its batch, with where to send its answer.
pub struct PendingRequest {
    request: ConcertRequest,
    reply: oneshot::Sender<BatchReply>,
    /// When the caller submitted it: bounds its whole wait.
    submitted: Instant,
}

/// Where a request stands after [`RequestBatcher::try_submit`].
pub enum Submitted {
    /// Queued: await the receiver for the answer (a dropped sender means the
    /// batch failed without one: `Unavailable`).
    Queued(oneshot::Receiver<BatchReply>),
    /// The queue is full: hand the request to [`RequestBatcher::submit_waiting`].
    Full(PendingRequest, oneshot::Receiver<BatchReply>),
}

/// The sending side of one concert's batch queue. Cheap to clone; the drain
/// task ends once every clone is dropped.
#[derive(Clone)]
pub struct RequestBatcher {
    queue: mpsc::Sender<PendingRequest>,
    stats: Arc<BatchStats>,
}

/// What a batcher has sent to its actor so far (metrics and tests).
#[derive(Debug, Default)]
pub struct BatchStats {
    /// `ConcertRequestBatch` messages sent.
    pub batches: AtomicU64,
    /// Requests carried by them.
    pub requests: AtomicU64,
}

impl RequestBatcher {
    /// The batcher and its drain task for the concert actor behind
    /// `target`. The caller runs the task where it wants (the router: on the
    /// actor's arbiter); no request is answered until it runs.
    pub fn new(
        target: Recipient<ConcertRequestBatch>,
        settings: RequestBatcherSettings,
        late: LateResults,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (queue, pending) = mpsc::channel(settings.queue_capacity.max(1));
        let stats = Arc::new(BatchStats::default());
        let drain = drain(pending, target, settings.max_batch.max(1), Arc::clone(&stats), late);
        (Self { queue, stats }, drain)
    }

    /// [`RequestBatcher::new`] with the drain task spawned on the current
    /// tokio runtime (panics outside one, like `tokio::spawn`).
    pub fn spawn(target: Recipient<ConcertRequestBatch>, settings: RequestBatcherSettings, late: LateResults) -> Self {
        let (batcher, drain) = Self::new(target, settings, late);
        tokio::spawn(drain);
        batcher
    }

    /// Batches and requests sent to the actor so far.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// Sends `request` through the next batch and waits for its own result.
    /// Same answers as sending the request to the actor directly.
    pub async fn call(&self, request: ConcertRequest) -> BatchReply {
        let answer = match self.try_submit(request)? {
            Submitted::Queued(answer) => answer,
            Submitted::Full(pending, answer) => {
                self.submit_waiting(pending).await?;
                answer
            }
        };
        answer_of(answer).await
    }

    /// Queues `request` without waiting (no timer, no await): the fast path.
    /// `Unavailable` when the drain task is gone.
    pub fn try_submit(&self, request: ConcertRequest) -> Result<Submitted, EngineError> {
        let (reply, answer) = oneshot::channel();
        let pending = PendingRequest {
            request,
            reply,
            submitted: Instant::now(),
        };
        match self.queue.try_send(pending) {
            Ok(()) => Ok(Submitted::Queued(answer)),
            Err(mpsc::error::TrySendError::Full(pending)) => Ok(Submitted::Full(pending, answer)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("request batcher drain task is gone");
                Err(EngineError::Unavailable)
            }
        }
    }

    /// Waits (at most [`SEND_TIMEOUT`]) for room in a full queue.
    pub async fn submit_waiting(&self, pending: PendingRequest) -> Result<(), EngineError> {
        let left = SEND_TIMEOUT.saturating_sub(pending.submitted.elapsed());
        match tokio::time::timeout(left, self.queue.send(pending)).await {
            Ok(Ok(())) => Ok(()),
            _ => {
                tracing::warn!("request batcher queue stayed full");
                Err(EngineError::Unavailable)
            }
        }
    }
}

/// The answer behind a queued request's receiver.
pub async fn answer_of(answer: oneshot::Receiver<BatchReply>) -> BatchReply {
    // A dropped sender means the batch failed without an answer for us.
    answer.await.unwrap_or(Err(EngineError::Unavailable))
}

/// Drains `pending` batch by batch until every `RequestBatcher` is dropped.
async fn drain(
    mut pending: mpsc::Receiver<PendingRequest>,
    target: Recipient<ConcertRequestBatch>,
    max_batch: usize,
    stats: Arc<BatchStats>,
    late: LateResults,
) {
    let mut taken: Vec<PendingRequest> = Vec::with_capacity(max_batch);
    while pending.recv_many(&mut taken, max_batch).await > 0 {
        let now = Instant::now();
        let mut requests = Vec::with_capacity(taken.len());
        let mut replies = Vec::with_capacity(taken.len());
        for p in taken.drain(..) {
            if now.saturating_duration_since(p.submitted) >= SEND_TIMEOUT {
                // Waited its whole budget behind earlier batches: answer now
                // rather than start another SEND_TIMEOUT for it.
                let _ = p.reply.send(Err(EngineError::Unavailable));
            } else {
                requests.push(p.request);
                replies.push(p.reply);
            }
        }
        if requests.is_empty() {
            continue;
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.requests.fetch_add(requests.len() as u64, Ordering::Relaxed);
        // Boxed (one allocation per batch, not per request) so that a batch
        // past its deadline can be handed to a task of its own below.
        let mut sent = Box::pin(target.send(ConcertRequestBatch(requests)));
        match tokio::time::timeout(SEND_TIMEOUT, &mut sent).await {
            Ok(Ok(results)) => {
                debug_assert_eq!(results.len(), replies.len(), "one result per request of the batch");
                // A caller that gave up has dropped its receiver: nothing to do.
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "concert actor unreachable from the request batcher");
                answer_unavailable(replies);
            }
            Err(_) => {
                tracing::warn!("concert actor did not answer a request batch in time");
                answer_unavailable(replies);
                // The batch is in the actor's mailbox and will still be
                // decided: its callers were told "outcome unknown" (503), so
                // what it accepts must still be recorded where later
                // requests look for it.
                let late = Arc::clone(&late);
                tokio::spawn(async move {
                    if let Ok(results) = sent.await {
                        late(results);
                    }
                });
            }
        }
    }
}

fn answer_unavailable(replies: Vec<oneshot::Sender<BatchReply>>) {
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
    use crate::concert_actor::HoldSeats;

    /// Stands in for a concert actor: answers holds with even reservation
    /// ids with a hold and odd ones with `SeatUnavailable` (and a cancel,
    /// which these tests do not send, with `NotFound`), and records batch
    /// sizes.
    struct FakeConcert {
        batch_sizes: Arc<Mutex<Vec<usize>>>,
    }

    impl Actor for FakeConcert {
        type Context = Context<Self>;
    }

    impl Handler<ConcertRequestBatch> for FakeConcert {
        type Result = Vec<BatchReply>;

        fn handle(&mut self, msg: ConcertRequestBatch, _: &mut Self::Context) -> Self::Result {
            self.batch_sizes.lock().push(msg.0.len());
            msg.0.into_iter().map(answer).collect()
        }
    }

    fn answer(request: ConcertRequest) -> BatchReply {
        let ConcertRequest::Hold(hold) = request else {
            return Err(EngineError::NotFound("reservation"));
        };
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

    fn request(reservation: u64) -> ConcertRequest {
        ConcertRequest::Hold(HoldSeats {
            member: reservation + 1_000,
            reservation,
            seats: vec![1],
            idempotency: None,
        })
    }

    fn ignore_late() -> LateResults {
        Arc::new(|_| {})
    }

    fn fake_batcher(max_batch: usize) -> (RequestBatcher, Arc<Mutex<Vec<usize>>>) {
        let batch_sizes = Arc::new(Mutex::new(Vec::new()));
        let actor = FakeConcert {
            batch_sizes: Arc::clone(&batch_sizes),
        }
        .start();
        let settings = RequestBatcherSettings {
            queue_capacity: 64,
            max_batch,
        };
        (
            RequestBatcher::spawn(actor.recipient(), settings, ignore_late()),
            batch_sizes,
        )
    }

    #[actix_rt::test]
    async fn each_caller_gets_the_answer_to_its_own_request() {
        let (batcher, _) = fake_batcher(8);
        let calls = (1..=40u64).map(|id| {
            let batcher = batcher.clone();
            async move { (id, batcher.call(request(id)).await) }
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
            async move { batcher.call(request(id)).await }
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
        let batcher = RequestBatcher::spawn(
            actor.clone().recipient(),
            RequestBatcherSettings::default(),
            ignore_late(),
        );
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
            batcher.call(request(2)).await.map(|c| c.value.id),
            Err(EngineError::Unavailable),
            "a request to a stopped concert is answered 503"
        );
    }

    /// Takes every batch and never answers it.
    struct StalledConcert;

    impl Actor for StalledConcert {
        type Context = Context<Self>;
    }

    impl Handler<ConcertRequestBatch> for StalledConcert {
        type Result = ResponseFuture<Vec<BatchReply>>;

        fn handle(&mut self, _: ConcertRequestBatch, _: &mut Self::Context) -> Self::Result {
            Box::pin(std::future::pending())
        }
    }

    #[actix_rt::test]
    async fn requests_queued_behind_a_stalled_actor_fail_within_two_send_timeouts() {
        tokio::time::pause();
        let settings = RequestBatcherSettings {
            queue_capacity: 64,
            max_batch: 1,
        };
        let batcher = RequestBatcher::spawn(StalledConcert.start().recipient(), settings, ignore_late());
        let started = Instant::now();
        // One request per batch: without the bound the last of these would
        // wait for four 5 s deadlines in turn.
        let calls = (1..=4u64).map(|id| {
            let batcher = batcher.clone();
            async move { (batcher.call(request(id)).await, started.elapsed()) }
        });
        for (reply, waited) in join_all(calls).await {
            assert_eq!(
                reply.map(|c| c.value.id),
                Err(EngineError::Unavailable),
                "a stall is a 503"
            );
            assert!(
                waited < SEND_TIMEOUT * 2,
                "answered within two send timeouts, waited {waited:?}"
            );
        }
    }

    /// Answers every hold, but only after twice the batch deadline.
    struct SlowConcert;

    impl Actor for SlowConcert {
        type Context = Context<Self>;
    }

    impl Handler<ConcertRequestBatch> for SlowConcert {
        type Result = ResponseFuture<Vec<BatchReply>>;

        fn handle(&mut self, batch: ConcertRequestBatch, _: &mut Self::Context) -> Self::Result {
            Box::pin(async move {
                tokio::time::sleep(SEND_TIMEOUT * 2).await;
                batch.0.into_iter().map(answer).collect()
            })
        }
    }

    #[actix_rt::test]
    async fn a_batch_decided_after_its_deadline_still_reports_what_it_accepted() {
        // The caller is answered 503 ("outcome unknown") at the deadline,
        // but the actor still decides the batch: an accepted hold must
        // reach the late handler (the router records it in the
        // reservation directory), or it could never be paid or cancelled.
        tokio::time::pause();
        let (late_tx, mut late_rx) = tokio::sync::mpsc::unbounded_channel();
        let late: LateResults = Arc::new(move |results| {
            let _ = late_tx.send(results);
        });
        let batcher = RequestBatcher::spawn(SlowConcert.start().recipient(), RequestBatcherSettings::default(), late);
        // Even ids are accepted by `answer`.
        let reply = batcher.call(request(8)).await;
        assert_eq!(
            reply.map(|c| c.value.id),
            Err(EngineError::Unavailable),
            "the caller gets a 503 at the deadline"
        );
        let results = tokio::time::timeout(SEND_TIMEOUT * 4, late_rx.recv())
            .await
            .expect("the late results arrive")
            .expect("the batcher is alive");
        assert_eq!(
            results.into_iter().map(|r| r.map(|c| c.value.id)).collect::<Vec<_>>(),
            vec![Ok(8)],
            "the hold the actor accepted after the deadline is reported"
        );
    }

    #[actix_rt::test]
    async fn the_real_actor_lets_exactly_one_of_many_holds_on_a_seat_win() {
        use std::sync::atomic::AtomicU64;

        use crate::clock::SystemClock;
        use crate::engine::{Engine, EngineSettings, NewConcert};
        use crate::router::ConcertRouter;
        use crate::sink::NullSink;

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
        let batcher = RequestBatcher::spawn(
            concert.addr.clone().recipient(),
            RequestBatcherSettings::default(),
            ignore_late(),
        );
        let ids = Arc::new(AtomicU64::new(1));
        let calls = (0..32u64).map(|member| {
            let batcher = batcher.clone();
            let reservation = ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                batcher
                    .call(ConcertRequest::Hold(HoldSeats {
                        member: member + 1,
                        reservation,
                        seats: vec![7],
                        idempotency: None,
                    }))
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
