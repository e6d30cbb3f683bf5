//! The write path, for both databases:
//!
//! - [`write_journal`]: the durable commit. Only journal rows
//!   `(pos, kind, payload, checksum)`; an event is one row, so a payment
//!   (one event) is all-or-nothing. A retry of a commit whose
//!   acknowledgement was lost is recognised as done, never a duplicate-key
//!   error that would hold every later write back (`confirm_retry`; how
//!   each database finds such positions is in its dialect file).
//! - [`project`]: folds committed events into the normalized tables and
//!   stores `projection.projected_pos` in the same transaction, so the tables
//!   and `projected_pos` always agree. The persister runs it after the
//!   journal commit, in larger slices (see `persister`). Both databases read
//!   `projected_pos` first and fold only the events after it, so no event is
//!   projected twice by a retry, and refuse events that start past it
//!   ([`WriteError::Gap`]).
//! - [`write_batch`] does both (loading a database in benches and tests): in
//!   one transaction on PostgreSQL, journal first then tables on SQLite,
//!   whose journal is a file of its own (`db`).
//! - [`read_journal_page`], [`projected_pos`]: the reads of the write path.
//!
//! This module only picks the database: what the rows are is the pure
//! `fold.rs` (events -> journal rows and table rows), and the SQL of each
//! database is in its dialect file, `sqlite.rs` or `postgres.rs`.

use concert_actors::types::JournalPos;
use concert_actors::Event;

use super::codec::CodecError;
use super::db::Db;
use super::fold::{Conflict, Gap, JournalRows};
use super::{postgres, sqlite};

pub use super::sqlite::JOURNAL_CHUNK_ROWS;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Events to project start after a position the tables have not
    /// reached: projecting them would leave the events between out for good.
    #[error("the tables reflect the journal up to {projected}, but the events to project start at {first}")]
    Gap { projected: i64, first: i64 },
    /// A journal commit found its position taken by a different event: not
    /// a retry of its own commit (those are recognised and pass), so another
    /// writer used the database (the writer lock, `ownership`, rules that out).
    #[error("journal position {pos} already holds a different event")]
    Conflict { pos: i64 },
    /// A journal row read back does not match its checksum.
    #[error("{0}")]
    Corrupt(String),
}

impl From<Gap> for WriteError {
    fn from(Gap { projected, first }: Gap) -> Self {
        WriteError::Gap { projected, first }
    }
}

impl From<Conflict> for WriteError {
    fn from(Conflict { pos }: Conflict) -> Self {
        WriteError::Conflict { pos }
    }
}

/// One stored journal row: position, kind, payload, checksum (NULL for
/// rows written before checksums).
pub type JournalRow = (i64, String, Vec<u8>, Option<i64>);

/// Some positions of `rows` were in the journal already: the commit is the
/// retry of one whose acknowledgement was lost (the connection died after
/// the database committed, or a statement timed out in the driver after
/// it). That is fine when those positions hold exactly these events
/// (`stored`: pos, kind, payload read back), and then the commit counts as
/// done; any other event there is [`WriteError::Conflict`]. Never a
/// duplicate-key error that the flusher would retry forever, holding every
/// later write back.
pub(super) fn confirm_retry(rows: &JournalRows, stored: &[(i64, String, Vec<u8>)]) -> Result<(), WriteError> {
    rows.match_stored(stored)?;
    tracing::warn!(
        first = rows.pos.first().copied().unwrap_or_default(),
        last = rows.pos.last().copied().unwrap_or_default(),
        "a journal batch was committed already (its acknowledgement was lost); recognised, not written twice"
    );
    Ok(())
}

/// Commits the journal rows of `events` (consecutive positions), and nothing
/// else, in one transaction: the durable part of the write path.
pub async fn write_journal(db: &Db, events: &[(JournalPos, Event)]) -> Result<(), WriteError> {
    let rows = JournalRows::encode(events)?;
    commit_journal(db, &rows).await
}

/// One transaction of journal rows (SQLite: on the journal file).
async fn commit_journal(db: &Db, rows: &JournalRows) -> Result<(), WriteError> {
    if rows.pos.is_empty() {
        return Ok(());
    }
    match db {
        Db::Sqlite(db) => sqlite::commit_journal(db, rows).await,
        Db::Postgres(pool) => postgres::commit_journal(pool, rows).await,
    }
}

/// The journal rows after `after` up to `through` (inclusive), in order, at
/// most `limit`: the one reader of journal pages (recovery's replay and its
/// check of unreplayed rows, the persister's catch-up).
pub async fn read_journal_page(db: &Db, after: i64, through: i64, limit: i64) -> Result<Vec<JournalRow>, sqlx::Error> {
    match db {
        Db::Sqlite(db) => sqlite::read_journal_page(db, after, through, limit).await,
        Db::Postgres(pool) => postgres::read_journal_page(pool, after, through, limit).await,
    }
}

/// Folds committed `events` (the ones right after `projected_pos`, in order)
/// into the normalized tables and moves `projected_pos` to the last of them,
/// in one transaction.
pub async fn project(db: &Db, events: &[(JournalPos, Event)]) -> Result<(), WriteError> {
    match db {
        Db::Sqlite(db) => sqlite::commit_tables(db, events).await,
        Db::Postgres(pool) => postgres::commit_tables(pool, None, events).await,
    }
}

/// Commits `events` (consecutive journal positions) to the journal AND the
/// tables (with `projected_pos`). For loading a database whose tables are
/// fully projected; the persister uses [`write_journal`] and [`project`]
/// instead. PostgreSQL: one transaction. SQLite: the journal lives in its own
/// file, so two transactions, the journal's first: a crash between them
/// leaves the state the persister leaves between a journal commit and its
/// projection (the tables catch up from the journal at the next start).
pub async fn write_batch(db: &Db, events: &[(JournalPos, Event)]) -> Result<(), WriteError> {
    if events.is_empty() {
        return Ok(());
    }
    let journal = JournalRows::encode(events)?;
    match db {
        Db::Sqlite(files) => {
            commit_journal(db, &journal).await?;
            sqlite::commit_tables(files, events).await
        }
        Db::Postgres(pool) => postgres::commit_tables(pool, Some(&journal), events).await,
    }
}

/// The last journal position the tables reflect.
pub async fn projected_pos(db: &Db) -> Result<JournalPos, sqlx::Error> {
    let pos = match db {
        Db::Sqlite(db) => sqlite::projected_pos(db).await?,
        Db::Postgres(pool) => postgres::projected_pos(pool).await?,
    };
    Ok(pos.map_or(0, |p| u64::try_from(p).unwrap_or_default()))
}
