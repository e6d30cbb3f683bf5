//! Periodic snapshots: the engine's state as one bincode blob, tagged with
//! the journal position it covers, followed by pruning: of the journal up to
//! the older kept snapshot AND the tables' `projected_pos` (rows the tables
//! have not absorbed are kept, since recovery from the tables replays them),
//! and of the expired queue tokens the engine no longer keeps in memory
//! (idempotency records past their TTL are `crate::retention`'s). On SQLite the journal is a file of its own: its
//! rows are pruned after the main file's transaction commits, in chunks.
//! This module decides what is kept (`SnapshotWrite`); the statements are
//! each database's `write_snapshot` (`sqlite.rs`, `postgres.rs`).
//!
//! The copy is "fuzzy": concerts are copied through their actors' mailboxes
//! one by one while the engine keeps serving, so nothing stalls. Everything
//! up to the tagged position is in it; later events may be too, and replay
//! skips those (see `concert_actors::state`). Before the row is written we
//! wait until every event the copy may reflect is committed, so a snapshot
//! never holds state the journal does not.
//!
//! The copy, its invariant checks and its encoding run on a thread of their
//! own (`copy_check_encode`), not on the runtime thread. A copy that breaks
//! an invariant is fail-stop (`crate::fail_stop`): the engine's memory is
//! wrong, so the server exits instead of serving from it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concert_actors::sink::EventSink;
use concert_actors::types::JournalPos;
use concert_actors::{Engine, EngineState};

use super::codec::encode_snapshot;
use super::db::Db;
use super::persister::Persister;
use super::{postgres, sqlite};
use crate::fail_stop::{panic_message, FailStop};

/// Snapshots kept; the journal is pruned up to the older one, so a corrupt
/// newest snapshot can fall back to the previous one plus the journal.
const SNAPSHOTS_KEPT: i64 = 2;
/// The name of the thread that copies, checks and encodes a snapshot.
pub const SNAPSHOT_THREAD: &str = "snapshot";

#[derive(Debug, Clone, Copy)]
pub struct SnapshotReport {
    pub journal_pos: JournalPos,
    pub bytes: usize,
    pub took: Duration,
}

/// Why a snapshot was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The copy breaks an invariant: the engine's memory is wrong, and
    /// [`run_snapshots`] fail-stops.
    #[error("invariant broken in the engine's state: {0}")]
    Invariant(String),
    /// Anything else (the database, a concert actor that did not answer):
    /// the next interval tries again.
    #[error("{0}")]
    Skipped(String),
}

/// Takes one snapshot and prunes what it makes unnecessary.
pub async fn take_snapshot(
    engine: &Arc<Engine>,
    persister: &Persister,
    db: &Db,
) -> Result<SnapshotReport, SnapshotError> {
    let started = Instant::now();
    let (journal_pos, bytes) = copy_check_encode(Arc::clone(engine)).await?;
    // Read after the copy ended: every event the copy may reflect is at or
    // before it.
    let reflected = persister.last_pos();
    persister.durable(reflected).await.map_err(|_| {
        SnapshotError::Skipped("the journal could not be made durable; snapshot not written".to_owned())
    })?;
    let pos = i64::try_from(journal_pos).unwrap_or(i64::MAX);
    let now = engine.now_ms();
    write_and_prune(db, pos, now, &bytes)
        .await
        .map_err(|e| SnapshotError::Skipped(e.to_string()))?;
    Ok(SnapshotReport {
        journal_pos,
        bytes: bytes.len(),
        took: started.elapsed(),
    })
}

/// Copies the engine's state, checks each part's invariants and encodes it
/// (bincode, SHA-256), all on a thread of its own ([`SNAPSHOT_THREAD`],
/// with a small runtime of its own for the concert actors' answers): never
/// on the runtime thread that runs the persister's loops and the queue
/// tick, which a copy of tens of MB would stall for up to a second or more.
/// The copy is dropped on that thread too. Returns the copy's journal
/// position and the encoded bytes.
async fn copy_check_encode(engine: Arc<Engine>) -> Result<(JournalPos, Vec<u8>), SnapshotError> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(SNAPSHOT_THREAD.to_owned())
        .spawn(move || {
            let _ = done.send(copy_check_encode_here(&engine));
        })
        .map_err(|e| SnapshotError::Skipped(format!("cannot start the snapshot thread: {e}")))?;
    result
        .await
        .map_err(|_| SnapshotError::Skipped("the snapshot thread ended without an answer".to_owned()))?
}

fn copy_check_encode_here(engine: &Engine) -> Result<(JournalPos, Vec<u8>), SnapshotError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| SnapshotError::Skipped(format!("cannot start the snapshot thread's runtime: {e}")))?;
    let state = runtime
        .block_on(engine.export_state())
        .map_err(|e| SnapshotError::Skipped(e.to_string()))?;
    check_parts(&state)?;
    let bytes = encode_snapshot(&state).map_err(|e| SnapshotError::Skipped(e.to_string()))?;
    Ok((state.journal_pos, bytes))
}

/// Checks each part of a copy on its own: every concert (seats and
/// reservations agree) and every account (its ledger sums to its balance,
/// which is never negative). Not the totals across parts: the copy is
/// fuzzy (parts copied at different moments), so money may be in flight
/// between them; the whole is checked after recovery.
pub fn check_parts(state: &EngineState) -> Result<(), SnapshotError> {
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for concert in state.concerts.values() {
            concert.check_invariants();
        }
        for (member, account) in &state.accounts {
            assert_eq!(
                account.ledger_sum(),
                account.balance,
                "member {member}: the ledger sums to the balance"
            );
            assert!(account.balance >= 0, "member {member}: the balance is never negative");
        }
    }));
    checked.map_err(|panic| SnapshotError::Invariant(panic_message(panic.as_ref())))
}

/// How long an expired queue token's row is kept. The engine forgets an
/// expired token one token TTL (minutes) after it expired; a day is far past
/// that for any configuration, and the newest token row is always kept so the
/// issue sequence never restarts.
pub const EXPIRED_TOKEN_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

/// A snapshot row to write and what it makes unnecessary: what a dialect's
/// `write_snapshot` ([`super::sqlite`], [`super::postgres`]) is given. It
/// inserts the row, deletes the snapshots older than the `kept` newest, the
/// expired queue tokens past their retention (as the
/// engine does in memory; the newest token is always kept so the issue
/// sequence never restarts), and the journal up to the older kept snapshot
/// AND the tables' `projected_pos`, never past it (recovery from the tables
/// replays the journal after `projected_pos`). On PostgreSQL all in one
/// transaction; on SQLite the journal file's rows after the main file's
/// transaction commits, in chunks.
pub(super) struct SnapshotWrite<'a> {
    /// The journal position the snapshot covers.
    pub journal_pos: i64,
    pub created_at: i64,
    pub bytes: &'a [u8],
    /// Snapshots kept, this one included.
    pub kept: i64,
    /// Expired queue tokens issued and active until at or before this go.
    pub expired_tokens_through: i64,
}

async fn write_and_prune(db: &Db, pos: i64, now: i64, bytes: &[u8]) -> Result<(), sqlx::Error> {
    let snapshot = SnapshotWrite {
        journal_pos: pos,
        created_at: now,
        bytes,
        kept: SNAPSHOTS_KEPT,
        expired_tokens_through: now - EXPIRED_TOKEN_RETENTION_MS,
    };
    match db {
        Db::Sqlite(files) => sqlite::write_snapshot(files, &snapshot).await,
        Db::Postgres(pool) => postgres::write_snapshot(pool, &snapshot).await,
    }
}

/// Takes a snapshot every `interval` until the process stops. A snapshot
/// whose copy breaks an invariant calls `fail_stop` (in production the
/// process exits, and the next start recovers from the journal) and ends
/// the loop; any other failure is logged and retried at the next interval.
pub async fn run_snapshots(
    engine: Arc<Engine>,
    persister: Arc<Persister>,
    db: Db,
    interval: Duration,
    fail_stop: FailStop,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut last_pos = persister.last_pos();
    loop {
        ticker.tick().await;
        if persister.last_pos() == last_pos {
            continue; // nothing changed since the last snapshot
        }
        match take_snapshot(&engine, &persister, &db).await {
            Ok(report) => {
                last_pos = report.journal_pos;
                tracing::info!(
                    journal_pos = report.journal_pos,
                    bytes = report.bytes,
                    took_ms = report.took.as_millis() as u64,
                    "snapshot written"
                );
            }
            Err(err @ SnapshotError::Invariant(_)) => {
                fail_stop(&format!("{err}; snapshot not written"));
                return;
            }
            Err(err) => tracing::warn!(error = %err, "snapshot skipped"),
        }
    }
}
