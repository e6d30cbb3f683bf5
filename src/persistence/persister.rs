//! `Persister`: the write-behind event sink with group commit.
//!
//! Actors append events without waiting (a mutex-protected `Vec` push);
//! one flusher task takes everything appended so far, at most
//! `MAX_BATCH_EVENTS`, and commits its journal rows in one transaction
//! (`write_journal`). While it commits, new events pile up and go in the
//! next batch, so under load each commit carries many events (group commit).
//! Callers that must answer only after their event is durable wait on the
//! committed position (`durable`).
//!
//! The flush interval is the longest a write waits for company: after an
//! idle wake the flusher waits up to `flush_interval` for more events. While
//! commits run back to back it waits, after each commit, only until the
//! producers that commit woke have appended again (as many events as it
//! committed), and never longer than the commit itself took (`gather`): a
//! crowd of producers that each wait for their own event then commits
//! together, not in two halves taking turns.
//!
//! The normalized tables are a projection of the journal: committed events
//! queue in memory and are folded into the tables (`project`, which also
//! stores `projected_pos`) by a projection loop that runs beside the journal
//! loop (`tokio::join!` in `run`, so `run` returns only once both have
//! stopped) and takes a pooled connection per slice, slice after slice of up
//! to `PROJECT_SLICE_EVENTS` (on SQLite larger, paced slices: `pace`). The
//! journal loop waits only when the lag passes `MAX_PROJECTION_LAG`, so the
//! durable rate is bound by the slower of the two, not by their sum, the lag
//! (and the memory the queued events take) stays bounded under sustained
//! load, and `run` returns only after everything committed is projected.
//! This needs two writers at once: PostgreSQL has them; SQLite has one
//! writer per file, so its journal is a file of its own (see `db`) and the
//! projection writes the main file. The server spawns `run` as a tokio task
//! (not on actix's `LocalSet`): tokio drops its tasks inside the runtime's
//! context, so a slice cut short by a runtime shutdown (tests) returns its
//! connection to the pool instead of panicking in sqlx.
//! At start the flusher first reads back the committed journal rows the
//! tables have not absorbed (a crash between the two commits).
//!
//! When the database fails, the flusher keeps the batch and retries with
//! backoff; nothing after it is committed first, so the journal has no gaps.
//! Writers that cannot be made durable within `DURABLE_TIMEOUT` get
//! `Unavailable` (a 503), and once the backlog passes `MAX_BACKLOG_EVENTS`,
//! or the database has been failing longer than `DURABLE_TIMEOUT`, new
//! writes are refused up front. When the database answers again the backlog
//! drains and writes succeed without a restart.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concert_actors::clock::{Clock, SystemClock};
use concert_actors::sink::{DurableFuture, EventSink, Unavailable};
use concert_actors::types::JournalPos;
use concert_actors::Event;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::codec::{check_journal_row, decode_event};
use super::db::Db;
use super::writer::{project, projected_pos, read_journal_page, write_journal, WriteError};

/// Most events one transaction carries.
pub const MAX_BATCH_EVENTS: usize = 20_000;
/// Appended but not yet committed events past which writes are refused.
pub const MAX_BACKLOG_EVENTS: u64 = 500_000;
/// Longest a write waits for its commit before it is answered 503.
pub const DURABLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Retry backoff bounds while the database fails.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Most events one projection transaction folds into the tables
/// (PostgreSQL; its slices run back to back).
pub const PROJECT_SLICE_EVENTS: usize = 20_000;
/// The same on SQLite, whose slices are paced (see `pace`).
pub const SQLITE_PROJECT_SLICE_EVENTS: usize = 50_000;
/// Under sustained load the SQLite projection waits for this many events
/// (or [`PROJECT_PACE`]) before its next slice: see `pace`.
pub const SQLITE_PROJECT_MIN_SLICE: usize = 40_000;
/// Longest the projection waits after a slice for [`SQLITE_PROJECT_MIN_SLICE`] events.
pub const PROJECT_PACE: Duration = Duration::from_millis(1_000);
/// Committed but unprojected events past which the journal loop waits for
/// the projection (bounds the lag and the memory of the queued events).
pub const MAX_PROJECTION_LAG: u64 = 100_000;
/// Pause after a failed projection (journal batches go first meanwhile).
const PROJECTION_RETRY: Duration = Duration::from_millis(100);
/// Journal rows read per query when catching the tables up at start.
const CATCH_UP_PAGE: i64 = 10_000;

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
    /// The last journal position the tables reflect.
    projected: AtomicU64,
    /// Whether the last projection attempt failed (logged once per outage).
    projection_failing: AtomicBool,
    /// Committed events the tables do not reflect yet, oldest first.
    unprojected: Mutex<VecDeque<(JournalPos, Event)>>,
    /// Pending length at which `append` wakes the flusher (`gather`).
    wanted: AtomicUsize,
    /// Wakes the projection loop: events were committed, or the journal
    /// loop stopped (`journal_done`).
    projection_wake: Notify,
    /// Wakes a journal loop held back by the lag bound: a slice was projected.
    projection_progress: Notify,
    /// Set once the journal loop has stopped (nothing more will be committed).
    journal_done: AtomicBool,
    /// Set once `run` has returned (journal and projection loops stopped).
    finished: watch::Sender<bool>,
}

/// One journal commit, as `gather` needs it.
struct Round {
    ended: Instant,
    took: Duration,
    /// Events it committed.
    events: usize,
    /// Events already appended when it ended.
    waiting: usize,
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
            projected: AtomicU64::new(last_pos),
            projection_failing: AtomicBool::new(false),
            unprojected: Mutex::new(VecDeque::new()),
            wanted: AtomicUsize::new(usize::MAX),
            projection_wake: Notify::new(),
            projection_progress: Notify::new(),
            journal_done: AtomicBool::new(false),
            finished: watch::channel(false).0,
        })
    }

    /// Continues the journal after `last_pos` (recovery found it). Must be
    /// called before the first append.
    pub fn resume_after(&self, last_pos: JournalPos) {
        let mut pending = self.pending.lock();
        debug_assert!(pending.events.is_empty(), "resume before any append");
        pending.next_pos = last_pos + 1;
        self.committed.send_replace(last_pos);
        self.projected.store(last_pos, Ordering::Release);
    }

    /// The last journal position the normalized tables reflect.
    pub fn projected_pos(&self) -> JournalPos {
        self.projected.load(Ordering::Acquire)
    }

    /// Committed journal events the tables do not reflect yet.
    pub fn projection_lag(&self) -> u64 {
        self.committed_pos().saturating_sub(self.projected_pos())
    }

    pub fn committed_pos(&self) -> JournalPos {
        *self.committed.borrow()
    }

    /// Whether the last journal commit and the last projection attempt
    /// succeeded (a projection waiting on a locked database is trouble as
    /// much as a failing journal commit, though writes stay accepted until
    /// the journal itself fails).
    pub fn healthy(&self) -> bool {
        self.failing_since_ms.load(Ordering::Relaxed) == 0 && !self.projection_failing.load(Ordering::Relaxed)
    }

    /// Runs the flusher until `shutdown` is called and everything is
    /// committed and projected.
    pub async fn run(self: Arc<Self>, db: Db) {
        let caught_up = self.catch_up_queue(&db).await;
        self.unprojected.lock().extend(caught_up);
        // The projection has its own loop (and, on SQLite, its own file),
        // and the journal commits do not wait for it (below the lag bound).
        // Both run in this task, so neither outlives `run`.
        tokio::join!(self.journal_loop(&db), self.projection_loop(&db));
        self.finished.send_replace(true);
    }

    /// Waits until `run` has returned (after `shutdown`: everything appended
    /// is committed and projected, and no connection is in use), at most
    /// `timeout`. Close the database only after this.
    pub async fn stopped(&self, timeout: Duration) -> bool {
        let mut finished = self.finished.subscribe();
        let waited = tokio::time::timeout(timeout, finished.wait_for(|done| *done)).await;
        waited.is_ok_and(|done| done.is_ok())
    }

    /// Commits appended events to the journal, batch after batch, until
    /// stopped, and hands them to the projection loop.
    async fn journal_loop(&self, db: &Db) {
        // When the last journal commit ended; `None` while idle.
        let mut last_round: Option<Instant> = None;
        // The last commit, until the producers it woke had their chance to
        // append (`gather`).
        let mut round: Option<Round> = None;
        loop {
            if let Some(round) = round.take() {
                self.gather(&round).await;
            }
            let idle = self.pending.lock().events.is_empty();
            if idle {
                if self.stopping.load(Ordering::Acquire) {
                    break;
                }
                self.wake.notified().await;
                let busy = last_round.is_some_and(|at| at.elapsed() < self.flush_interval);
                if busy {
                    // Commits run back to back: let the producers the last
                    // commit woke append, then go at once.
                    tokio::task::yield_now().await;
                } else if !self.flush_interval.is_zero() && self.pending.lock().events.len() < MAX_BATCH_EVENTS {
                    // Light load: let a few more events join, up to the flush interval.
                    tokio::time::sleep(self.flush_interval).await;
                }
            }
            let batch = self.take_batch();
            if batch.is_empty() {
                continue;
            }
            let started = Instant::now();
            self.commit(db, &batch).await;
            let ended = Instant::now();
            last_round = Some(ended);
            // Counted before the commit is published: the producers it wakes
            // append again at once (on the other worker threads), and they
            // are counted in `events` already. Counted after, they were
            // counted twice, `gather` waited for more events than there were
            // producers, and every round ran to its deadline.
            let waiting = self.pending.lock().events.len();
            if let Some((last, _)) = batch.last() {
                self.committed.send_replace(*last);
            }
            round = Some(Round {
                ended,
                took: ended - started,
                events: batch.len(),
                waiting,
            });
            self.unprojected.lock().extend(batch);
            self.projection_wake.notify_one();
            self.hold_back_for_projection().await;
        }
        self.journal_done.store(true, Ordering::Release);
        self.projection_wake.notify_one();
    }

    /// Sustained load: the journal runs ahead of the tables by
    /// `MAX_PROJECTION_LAG` at most. A failing projection slows journal
    /// commits down to one per retry pause, it does not stop them.
    async fn hold_back_for_projection(&self) {
        while self.projection_lag() > MAX_PROJECTION_LAG {
            let progress = self.projection_progress.notified();
            tokio::pin!(progress);
            // Registered before the check below: a slice that ends in
            // between still wakes us.
            progress.as_mut().enable();
            if self.projection_lag() <= MAX_PROJECTION_LAG {
                return;
            }
            if tokio::time::timeout(PROJECTION_RETRY, progress).await.is_err()
                && self.projection_failing.load(Ordering::Relaxed)
            {
                return;
            }
        }
    }

    /// Projects committed events, slice after slice, whatever
    /// has been committed since the last slice (at most
    /// `PROJECT_SLICE_EVENTS`; SQLite: `SQLITE_PROJECT_SLICE_EVENTS`, paced),
    /// until the journal loop has stopped and everything is projected. A
    /// connection is taken per slice, so none is held while there is
    /// nothing to project.
    async fn projection_loop(&self, db: &Db) {
        let (most, paced) = match db {
            Db::Sqlite(_) => (SQLITE_PROJECT_SLICE_EVENTS, true),
            Db::Postgres(_) => (PROJECT_SLICE_EVENTS, false),
        };
        // When the last slice ended (SQLite).
        let mut last_slice: Option<Instant> = None;
        loop {
            if self.unprojected.lock().is_empty() {
                // Checked again after `journal_done`: the journal loop queues
                // its last batch before it sets the flag, so a batch queued
                // after the first check is seen here, not dropped.
                if self.journal_done.load(Ordering::Acquire) && self.unprojected.lock().is_empty() {
                    return;
                }
                // `notify_one` keeps a permit when nobody waits: a commit
                // between the check above and this wait is not missed.
                self.projection_wake.notified().await;
                continue;
            }
            if let Some(ended) = last_slice {
                self.pace(ended).await;
            }
            self.project_slice(db, most).await;
            last_slice = paced.then(Instant::now);
            self.projection_progress.notify_waiters();
        }
    }

    /// SQLite, under sustained load: waits until [`SQLITE_PROJECT_MIN_SLICE`] events are
    /// queued, at most until [`PROJECT_PACE`] after the last slice `ended`
    /// (at once when that is past: light load is projected as it comes, and
    /// at once when the journal loop has stopped).
    ///
    /// Why: a slice writes (to the main file's WAL, then again in the
    /// checkpoint) every page it touches, however few of its rows change,
    /// and the holds of a sale are spread over every concert's seat pages.
    /// Back-to-back small slices write the same pages again and again; one
    /// larger slice writes each page once, and does less work per event
    /// (rows changed twice within it are written once). Measured on SQLite:
    /// the main file's WAL peaked at ~70 MB instead of 260-380 MB in the
    /// same bench (docs/PERFORMANCE.md, "Persistence").
    ///
    /// Not on PostgreSQL: its projection is the slower loop there, so its
    /// queue is always past the minimum anyway, and larger slices only made
    /// the journal loop's waits at the lag bound longer (one slice: up to
    /// ~0.9 s instead of ~0.3 s in the same bench).
    async fn pace(&self, ended: Instant) {
        let deadline = tokio::time::Instant::from_std(ended + PROJECT_PACE);
        loop {
            if self.unprojected.lock().len() >= SQLITE_PROJECT_MIN_SLICE || self.journal_done.load(Ordering::Acquire) {
                return;
            }
            if tokio::time::timeout_at(deadline, self.projection_wake.notified())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Waits, after a commit, until the producers it woke have appended
    /// again (as many events as it committed, plus those already waiting),
    /// but no longer than the commit took (waiting longer would cost more
    /// than a second commit) nor the flush interval. Without it, a crowd of
    /// producers that each wait for their event splits into two groups that
    /// commit in turn, each commit carrying half the crowd.
    async fn gather(&self, round: &Round) {
        let target = (round.events + round.waiting).min(MAX_BATCH_EVENTS);
        let deadline = tokio::time::Instant::from_std(round.ended + round.took.min(self.flush_interval));
        self.wanted.store(target, Ordering::Relaxed);
        while self.pending.lock().events.len() < target {
            if tokio::time::timeout_at(deadline, self.wake.notified()).await.is_err() {
                break;
            }
        }
        self.wanted.store(usize::MAX, Ordering::Relaxed);
    }

    /// The committed journal rows after the tables' `projected_pos`, read
    /// before the first new commit (retrying while the database fails).
    async fn catch_up_queue(&self, db: &Db) -> VecDeque<(JournalPos, Event)> {
        let mut backoff = RETRY_MIN;
        loop {
            match read_unprojected(db, self.committed_pos()).await {
                Ok((projected, events)) => {
                    self.projected.store(projected, Ordering::Release);
                    if !events.is_empty() {
                        tracing::info!(
                            projected_pos = projected,
                            events = events.len(),
                            "catching the tables up with the journal"
                        );
                    }
                    return events;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the unprojected journal; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Folds the oldest committed events (at most `most`)
    /// into the tables. On failure they stay queued and the next attempt
    /// backs off, so a failing database does not spin the flusher.
    async fn project_slice(&self, db: &Db, most: usize) {
        let slice: Vec<(JournalPos, Event)> = {
            let mut unprojected = self.unprojected.lock();
            let take = unprojected.len().min(most);
            unprojected.drain(..take).collect()
        };
        match project(db, &slice).await {
            Ok(()) => {
                if let Some((last, _)) = slice.last() {
                    self.projected.store(*last, Ordering::Release);
                }
                if self.projection_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("projecting into the tables succeeds again");
                }
            }
            Err(err) => {
                if !self.projection_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %err, events = slice.len(), "projecting into the tables failed; will retry");
                }
                // The tables lost their last projection commits (PostgreSQL
                // commits them with `synchronous_commit = off`, and a crash
                // of the database server loses the last few): those events
                // are in the journal, durably; read them back and project
                // them again before the slice.
                let missing = match err {
                    WriteError::Gap { projected, first } => self.read_lost_projection(db, projected, first).await,
                    _ => VecDeque::new(),
                };
                {
                    let mut unprojected = self.unprojected.lock();
                    for event in missing.into_iter().chain(slice).rev() {
                        unprojected.push_front(event);
                    }
                }
                tokio::time::sleep(PROJECTION_RETRY).await;
            }
        }
    }

    /// The journal's events after `projected` and before `first`, the ones
    /// the tables lost; empty if they cannot be read now (the next attempt
    /// meets the same gap and tries again).
    async fn read_lost_projection(&self, db: &Db, projected: i64, first: i64) -> VecDeque<(JournalPos, Event)> {
        let from = u64::try_from(projected).unwrap_or_default();
        let before = u64::try_from(first).unwrap_or_default();
        match read_journal_events(db, from, before.saturating_sub(1)).await {
            Ok(events) => {
                tracing::warn!(
                    projected_pos = projected,
                    events = events.len(),
                    "the tables lost projected events (a database crash); projecting them again from the journal"
                );
                self.projected.store(from, Ordering::Release);
                events
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the journal events the tables lost; will retry");
                VecDeque::new()
            }
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

    /// Commits `batch`, retrying with backoff until it succeeds (the caller
    /// publishes the new committed position).
    async fn commit(&self, db: &Db, batch: &[(JournalPos, Event)]) {
        let mut backoff = RETRY_MIN;
        loop {
            match write_journal(db, batch).await {
                Ok(()) => {
                    if self.failing_since_ms.swap(0, Ordering::Relaxed) != 0 {
                        tracing::info!("database writes succeed again; draining the backlog");
                    }
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
        let len = pending.events.len();
        drop(pending);
        if len == 1 || len == self.wanted.load(Ordering::Relaxed) {
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

/// `projected_pos` and the decoded journal events after it, up to `committed`.
async fn read_unprojected(
    db: &Db,
    committed: JournalPos,
) -> Result<(JournalPos, VecDeque<(JournalPos, Event)>), WriteError> {
    // SQLite: `projected_pos` from the main file, the rows from the journal file.
    let projected = projected_pos(db).await?;
    Ok((projected, read_journal_events(db, projected, committed).await?))
}

/// The decoded journal events after `after`, up to `through`.
async fn read_journal_events(
    db: &Db,
    after: JournalPos,
    through: JournalPos,
) -> Result<VecDeque<(JournalPos, Event)>, WriteError> {
    let mut events = VecDeque::new();
    let mut cursor = i64::try_from(after).unwrap_or(i64::MAX);
    let end = i64::try_from(through).unwrap_or(i64::MAX);
    while cursor < end {
        let page = read_journal_page(db, cursor, end, CATCH_UP_PAGE).await?;
        let Some(&(last, ..)) = page.last() else {
            break;
        };
        for (pos, kind, payload, checksum) in page {
            check_journal_row(pos, &kind, &payload, checksum).map_err(WriteError::Corrupt)?;
            events.push_back((u64::try_from(pos).unwrap_or_default(), decode_event(&payload)?));
        }
        cursor = last;
    }
    Ok(events)
}
