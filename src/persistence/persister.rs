//! `Persister`: the write-behind event sink with group commit.
//!
//! Actors append events without waiting (a mutex-protected `Vec` push);
//! one flusher task takes everything appended so far, at most
//! `MAX_BATCH_EVENTS`, and commits it in one transaction. While it commits,
//! new events pile up and go in the next batch, so under load each commit
//! carries many events (group commit). Callers that must answer only after
//! their event is durable wait on the committed position (`durable`).
//!
//! When the database fails, the flusher keeps the batch and retries with
//! backoff; nothing after it is committed first, so the journal has no gaps.
//! Writers that cannot be made durable within `DURABLE_TIMEOUT` get
//! `Unavailable` (a 503), and once the backlog passes `MAX_BACKLOG_EVENTS`,
//! or the database has been failing longer than `DURABLE_TIMEOUT`, new
//! writes are refused up front. When the database answers again the backlog
//! drains and writes succeed without a restart.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concert_actors::clock::{Clock, SystemClock};
use concert_actors::events::{DurableFuture, EventSink, Unavailable};
use concert_actors::types::JournalPos;
use concert_actors::Event;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::db::Db;
use super::writer::write_batch;

/// Most events one transaction carries.
pub const MAX_BATCH_EVENTS: usize = 20_000;
/// Appended but not yet committed events past which writes are refused.
pub const MAX_BACKLOG_EVENTS: u64 = 500_000;
/// Longest a write waits for its commit before it is answered 503.
pub const DURABLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Retry backoff bounds while the database fails.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

struct Pending {
    events: Vec<(JournalPos, Event)>,
    next_pos: JournalPos,
}

pub struct Persister {
    pending: Mutex<Pending>,
    wake: Notify,
    committed: watch::Sender<JournalPos>,
    /// Epoch ms since when flushes fail; 0 while healthy.
    failing_since_ms: AtomicI64,
    stopping: AtomicBool,
    flush_interval: Duration,
}

impl Persister {
    /// A persister whose journal continues after `last_pos`.
    pub fn new(last_pos: JournalPos, flush_interval: Duration) -> Arc<Self> {
        let (committed, _) = watch::channel(last_pos);
        Arc::new(Self {
            pending: Mutex::new(Pending {
                events: Vec::new(),
                next_pos: last_pos + 1,
            }),
            wake: Notify::new(),
            committed,
            failing_since_ms: AtomicI64::new(0),
            stopping: AtomicBool::new(false),
            flush_interval,
        })
    }

    /// Continues the journal after `last_pos` (recovery found it). Must be
    /// called before the first append.
    pub fn resume_after(&self, last_pos: JournalPos) {
        let mut pending = self.pending.lock();
        debug_assert!(pending.events.is_empty(), "resume before any append");
        pending.next_pos = last_pos + 1;
        self.committed.send_replace(last_pos);
    }

    pub fn committed_pos(&self) -> JournalPos {
        *self.committed.borrow()
    }

    /// Whether the last flush attempt succeeded.
    pub fn healthy(&self) -> bool {
        self.failing_since_ms.load(Ordering::Relaxed) == 0
    }

    /// Runs the flusher until `shutdown` is called and everything is committed.
    pub async fn run(self: Arc<Self>, db: Db) {
        loop {
            let idle = self.pending.lock().events.is_empty();
            if idle {
                if self.stopping.load(Ordering::Acquire) {
                    break;
                }
                self.wake.notified().await;
                // Let a few more events join the batch, up to the flush interval.
                if !self.flush_interval.is_zero() && self.pending.lock().events.len() < MAX_BATCH_EVENTS {
                    tokio::time::sleep(self.flush_interval).await;
                }
            }
            let batch = self.take_batch();
            if batch.is_empty() {
                continue;
            }
            self.commit(&db, &batch).await;
        }
    }

    fn take_batch(&self) -> Vec<(JournalPos, Event)> {
        let mut pending = self.pending.lock();
        if pending.events.len() <= MAX_BATCH_EVENTS {
            std::mem::take(&mut pending.events)
        } else {
            let rest = pending.events.split_off(MAX_BATCH_EVENTS);
            std::mem::replace(&mut pending.events, rest)
        }
    }

    /// Commits `batch`, retrying with backoff until it succeeds.
    async fn commit(&self, db: &Db, batch: &[(JournalPos, Event)]) {
        let mut backoff = RETRY_MIN;
        loop {
            match write_batch(db, batch).await {
                Ok(()) => {
                    if self.failing_since_ms.swap(0, Ordering::Relaxed) != 0 {
                        tracing::info!("database writes succeed again; draining the backlog");
                    }
                    let last = batch.last().map(|(pos, _)| *pos).unwrap_or_default();
                    self.committed.send_replace(last);
                    return;
                }
                Err(err) => {
                    let now = SystemClock.now_ms();
                    if self
                        .failing_since_ms
                        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        tracing::error!(error = %err, events = batch.len(), "database write failed; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Stops after flushing everything appended so far; returns once it is
    /// committed (or `timeout` passed).
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        let last = self.last_pos();
        self.stopping.store(true, Ordering::Release);
        self.wake.notify_one();
        let mut committed = self.committed.subscribe();
        let flushed = tokio::time::timeout(timeout, committed.wait_for(|c| *c >= last)).await;
        flushed.is_ok()
    }
}

impl EventSink for Persister {
    fn append(&self, event: Event) -> JournalPos {
        let mut pending = self.pending.lock();
        let pos = pending.next_pos;
        pending.next_pos += 1;
        pending.events.push((pos, event));
        let first = pending.events.len() == 1;
        drop(pending);
        if first {
            self.wake.notify_one();
        }
        pos
    }

    fn accepting(&self) -> bool {
        let backlog = self.last_pos().saturating_sub(self.committed_pos());
        if backlog >= MAX_BACKLOG_EVENTS {
            return false;
        }
        match self.failing_since_ms.load(Ordering::Relaxed) {
            0 => true,
            since => SystemClock.now_ms() - since < DURABLE_TIMEOUT.as_millis() as i64,
        }
    }

    fn durable(&self, pos: JournalPos) -> DurableFuture {
        let mut committed = self.committed.subscribe();
        Box::pin(async move {
            match tokio::time::timeout(DURABLE_TIMEOUT, committed.wait_for(|c| *c >= pos)).await {
                Ok(Ok(_)) => Ok(()),
                _ => Err(Unavailable),
            }
        })
    }

    fn last_pos(&self) -> JournalPos {
        self.pending.lock().next_pos - 1
    }
}
