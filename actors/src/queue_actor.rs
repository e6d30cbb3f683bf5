//! `QueueActor`: the only caller of [`WaitingQueue::tick`]. It admits tokens
//! every `tick` (FIFO, at most `admit_per_tick`, under the active cap) and
//! expires stale ones. Lookups and token issue go to the shared
//! `WaitingQueue` directly and never wait behind a tick.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::clock::SharedClock;
use crate::queue::{TickReport, WaitingQueue};

/// Run one tick now (tests, tools).
#[derive(Message)]
#[rtype(result = "TickReport")]
pub struct RunTick;

pub struct QueueActor {
    queue: Arc<WaitingQueue>,
    clock: SharedClock,
}

impl QueueActor {
    pub fn new(queue: Arc<WaitingQueue>, clock: SharedClock) -> Self {
        Self { queue, clock }
    }

    fn tick(&self) -> TickReport {
        let report = self.queue.tick(self.clock.now_ms());
        if report != TickReport::default() {
            tracing::debug!(
                admitted = report.admitted,
                expired_active = report.expired_active,
                expired_idle = report.expired_idle,
                "queue tick"
            );
        }
        report
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // As in `ConcertActor::started`: a system dropped before this actor
        // ran starts it from the drop of its context, after the runtime is
        // gone, where `run_interval` would panic ("there is no reactor
        // running"). It stops right away; no timer is needed.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let tick = Duration::from_millis(self.queue.settings().tick_ms.max(1) as u64);
        ctx.run_interval(tick, |actor, _| {
            actor.tick();
        });
    }
}

impl Handler<RunTick> for QueueActor {
    type Result = MessageResult<RunTick>;

    fn handle(&mut self, _: RunTick, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.tick())
    }
}
