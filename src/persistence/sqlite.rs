//! SQLite's SQL: the statements that write and read the data of a SQLite
//! database, on its two files (`db`: the main file with the tables,
//! `projected_pos`, snapshots and settings; the journal file with the
//! `journal` table). Connecting, migrations and WAL checkpoints are `db`'s.
//! PostgreSQL's counterpart is [`super::postgres`], with the same set; the
//! callers pick one by matching on [`super::Db`].
//!
//! - Journal commit ([`commit_journal`]): rows in few multi-row INSERTs of
//!   up to [`JOURNAL_CHUNK_ROWS`] rows; a batch of one chunk is one
//!   autocommit statement. A retry of a commit whose acknowledgement was
//!   lost skips the positions committed already (`ON CONFLICT (pos) DO
//!   NOTHING`, free on the integer key) and then checks they hold the same
//!   events (`writer::confirm_retry`).
//! - Projection ([`commit_tables`]): reads `projected_pos`, folds only the
//!   events after it ([`Rows::fold`]) and writes them in multi-row
//!   statements of up to `CHUNK_ROWS` rows (sqlx costs about 15 µs per
//!   statement), in dependency order, with `projected_pos`, in one
//!   transaction on the main file.
//! - Snapshots ([`write_snapshot`]): the row and the pruning of old
//!   snapshots and expired rows in one transaction on the main file, then
//!   the journal file's rows in chunks, after that commit.
//! - Reads: journal pages, `projected_pos`, what recovery reads (the
//!   journal's end, snapshots, a read transaction on the main file) and
//!   settings.

use concert_actors::types::JournalPos;
use concert_actors::Event;
use sqlx::{QueryBuilder, SqlitePool};

use super::db::SqliteDb;
use super::fold::{after_projected, last_pos, JournalRows, Rows};
use super::snapshot::SnapshotWrite;
use super::writer::{confirm_retry, JournalRow, WriteError};

/// Rows per multi-row statement of the tables (SQLite allows 32,766 bound values).
const CHUNK_ROWS: usize = 1_000;
/// Journal rows per multi-row INSERT on SQLite: 4 binds a row, 20,000 binds.
pub const JOURNAL_CHUNK_ROWS: usize = 5_000;
/// Journal rows deleted per transaction when pruning the journal file: the
/// persister's journal commits wait for each (one writer per file).
const PRUNE_CHUNK_ROWS: i64 = 20_000;

// ---- journal commit -------------------------------------------------------------------

/// One transaction of journal rows (not empty) on the journal file.
pub(super) async fn commit_journal(db: &SqliteDb, rows: &JournalRows) -> Result<(), WriteError> {
    let inserted = if rows.pos.len() <= JOURNAL_CHUNK_ROWS {
        // One statement is a transaction of its own (autocommit): one round
        // trip to the connection's thread instead of three (BEGIN, INSERT,
        // COMMIT), and what a durable write waits for.
        insert_journal_rows(&db.journal, 0..rows.pos.len(), rows).await?
    } else {
        let mut tx = db.journal.begin().await?;
        let inserted = insert_journal_chunks(&mut tx, rows).await?;
        tx.commit().await?;
        inserted
    };
    if inserted < rows.pos.len() as u64 {
        let (first, last) = rows.range().unwrap_or_default();
        let stored: Vec<(i64, String, Vec<u8>)> =
            sqlx::query_as("SELECT pos, kind, payload FROM journal WHERE pos >= ?1 AND pos <= ?2 ORDER BY pos")
                .bind(first)
                .bind(last)
                .fetch_all(&db.journal)
                .await?;
        confirm_retry(rows, &stored)?;
    }
    Ok(())
}

/// The journal rows in multi-row INSERTs of [`JOURNAL_CHUNK_ROWS`]; the
/// number of rows inserted (positions committed already are skipped).
async fn insert_journal_chunks(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &JournalRows,
) -> Result<u64, sqlx::Error> {
    let mut start = 0;
    let mut inserted = 0;
    while start < rows.pos.len() {
        let end = (start + JOURNAL_CHUNK_ROWS).min(rows.pos.len());
        inserted += insert_journal_rows(&mut **tx, start..end, rows).await?;
        start = end;
    }
    Ok(inserted)
}

/// One multi-row INSERT of the journal rows `range` (at most
/// [`JOURNAL_CHUNK_ROWS`]); the number of rows inserted. A position
/// committed already is skipped, not an error: see `writer::confirm_retry`.
async fn insert_journal_rows<'e, E>(
    executor: E,
    range: std::ops::Range<usize>,
    rows: &JournalRows,
) -> Result<u64, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let mut qb = QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO journal (pos, kind, payload, checksum) ");
    qb.push_values(range, |mut b, i| {
        b.push_bind(rows.pos[i])
            .push_bind(rows.kind[i])
            .push_bind(rows.payload[i].as_slice())
            .push_bind(rows.checksum[i]);
    });
    qb.push(" ON CONFLICT (pos) DO NOTHING");
    Ok(qb.build().execute(executor).await?.rows_affected())
}

// ---- projection -----------------------------------------------------------------------

/// One transaction on the main file: the table rows of the `events` after
/// `projected_pos` (read first), and `projected_pos` = the last of them.
/// No events: nothing to do.
///
/// Only the events after `projected_pos` are folded: two writers projecting
/// the same events (a retry after a commit whose outcome was lost, or a
/// second server on the database) take turns, and the second finds them
/// projected. Events must follow `projected_pos` without a gap
/// ([`WriteError::Gap`]).
pub(super) async fn commit_tables(db: &SqliteDb, events: &[(JournalPos, Event)]) -> Result<(), WriteError> {
    let Some(last) = last_pos(events) else {
        return Ok(());
    };
    let mut tx = db.main.begin().await?;
    let projected: i64 = sqlx::query_scalar("SELECT projected_pos FROM projection WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let fresh = after_projected(events, projected)?;
    if fresh.is_empty() {
        return Ok(());
    }
    write_tables(&mut tx, &Rows::fold(fresh)).await?;
    sqlx::query("UPDATE projection SET projected_pos = ?1 WHERE id = 1")
        .bind(last)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A reservation row may exist already when these events were projected
/// before (another writer on the same database): a final status of this
/// batch (CONFIRMED, CANCELLED, EXPIRED never change again) is written over
/// it, a PENDING_PAYMENT one is not (the row may be further along).
const RESERVATION_CONFLICT: &str =
    " ON CONFLICT (id) DO UPDATE SET status = excluded.status WHERE excluded.status <> 'PENDING_PAYMENT'";

/// `UPDATE ... WHERE <column> IN (ids)` / `DELETE ...` in chunks, SQLite.
async fn in_list<T>(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    head: &str,
    tail: &str,
    ids: &[T],
) -> Result<(), sqlx::Error>
where
    T: Clone + Send + for<'q> sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + 'static,
{
    for chunk in ids.chunks(CHUNK_ROWS) {
        let mut qb = QueryBuilder::<sqlx::Sqlite>::new(head);
        let mut list = qb.separated(", ");
        for value in chunk {
            list.push_bind(value.clone());
        }
        qb.push(")").push(tail);
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The table rows: multi-row statements of up to `CHUNK_ROWS`
/// rows (sqlx costs about 15 µs per statement), in dependency order.
async fn write_tables(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, rows: &Rows) -> Result<(), sqlx::Error> {
    type Qb<'a> = QueryBuilder<'a, sqlx::Sqlite>;
    let members: Vec<_> = rows.members.iter().collect();
    for chunk in members.chunks(CHUNK_ROWS) {
        let mut qb = Qb::new("INSERT INTO members (id, name, key_hash, balance, created_at) ");
        qb.push_values(chunk, |mut b, (member, row)| {
            b.push_bind(**member)
                .push_bind(row.name.clone().unwrap_or_default())
                .push_bind(row.key_hash.clone())
                .push_bind(row.balance)
                .push_bind(row.created_at);
        });
        qb.push(" ON CONFLICT (id) DO UPDATE SET balance = excluded.balance");
        qb.build().execute(&mut **tx).await?;
    }
    for chunk in rows.concerts.chunks(CHUNK_ROWS) {
        let mut qb =
            Qb::new("INSERT INTO concerts (id, title, category, venue, starts_at, seat_count, price, price_tiers) ");
        qb.push_values(chunk, |mut b, c| {
            b.push_bind(c.0)
                .push_bind(c.1.clone())
                .push_bind(c.2.clone())
                .push_bind(c.3.clone())
                .push_bind(c.4)
                .push_bind(c.5)
                .push_bind(c.6)
                .push_bind(c.7.clone());
        });
        qb.push(" ON CONFLICT (id) DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    let reservations: Vec<_> = rows.reservations.iter().collect();
    for chunk in reservations.chunks(CHUNK_ROWS) {
        let mut qb =
            Qb::new("INSERT INTO reservations (id, concert_id, member_id, amount, status, created_at, expires_at) ");
        qb.push_values(chunk, |mut b, (id, r)| {
            b.push_bind(**id)
                .push_bind(r.concert)
                .push_bind(r.member)
                .push_bind(r.amount)
                .push_bind(r.status)
                .push_bind(r.created_at)
                .push_bind(r.expires_at);
        });
        qb.push(RESERVATION_CONFLICT);
        qb.build().execute(&mut **tx).await?;
    }
    for chunk in rows.reservation_seats.chunks(CHUNK_ROWS) {
        let mut qb = Qb::new("INSERT INTO reservation_seats (reservation_id, seat_no) ");
        qb.push_values(chunk, |mut b, s| {
            b.push_bind(s.0).push_bind(s.1);
        });
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    let seats: Vec<_> = rows.seats.iter().collect();
    for chunk in seats.chunks(CHUNK_ROWS) {
        let mut qb = Qb::new("INSERT INTO seats (concert_id, seat_no, status, reservation_id) ");
        qb.push_values(chunk, |mut b, ((concert, seat), (reservation, status))| {
            b.push_bind(*concert)
                .push_bind(*seat)
                .push_bind(*status)
                .push_bind(*reservation);
        });
        qb.push(
            " ON CONFLICT (concert_id, seat_no) DO UPDATE SET status = excluded.status, \
             reservation_id = excluded.reservation_id",
        );
        qb.build().execute(&mut **tx).await?;
    }
    in_list(tx, "DELETE FROM seats WHERE reservation_id IN (", "", &rows.dropped).await?;
    for (status, ids) in &rows.released {
        let head = format!("UPDATE reservations SET status = '{status}' WHERE id IN (");
        in_list(tx, &head, "", ids).await?;
        in_list(tx, "DELETE FROM seats WHERE reservation_id IN (", "", ids).await?;
    }
    in_list(
        tx,
        "UPDATE reservations SET status = 'CONFIRMED' WHERE id IN (",
        "",
        &rows.confirmed,
    )
    .await?;
    in_list(
        tx,
        "UPDATE seats SET status = 'SOLD' WHERE reservation_id IN (",
        "",
        &rows.confirmed,
    )
    .await?;
    for chunk in rows.payments.chunks(CHUNK_ROWS) {
        let mut qb = Qb::new("INSERT INTO payments (id, reservation_id, member_id, amount, created_at) ");
        qb.push_values(chunk, |mut b, p| {
            b.push_bind(p.0)
                .push_bind(p.1)
                .push_bind(p.2)
                .push_bind(p.3)
                .push_bind(p.4);
        });
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    for chunk in rows.history.chunks(CHUNK_ROWS) {
        let mut qb = Qb::new("INSERT INTO balance_history (member_id, kind, amount, balance_after, at, journal_pos) ");
        qb.push_values(chunk, |mut b, h| {
            b.push_bind(h.0)
                .push_bind(h.1)
                .push_bind(h.2)
                .push_bind(h.3)
                .push_bind(h.4)
                .push_bind(h.5);
        });
        qb.push(" ON CONFLICT (journal_pos) DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    let tokens: Vec<_> = rows.new_tokens.iter().collect();
    for chunk in tokens.chunks(CHUNK_ROWS) {
        let mut qb = Qb::new("INSERT INTO queue_tokens (token, member_id, seq, status, active_until, issued_at) ");
        qb.push_values(chunk, |mut b, (token, row)| {
            b.push_bind((*token).clone())
                .push_bind(row.member)
                .push_bind(row.seq)
                .push_bind(row.status)
                .push_bind(row.active_until)
                .push_bind(row.issued_at);
        });
        qb.push(" ON CONFLICT (token) DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    for (active_until, tokens) in &rows.admitted {
        let head = format!("UPDATE queue_tokens SET status = 'ACTIVE', active_until = {active_until} WHERE token IN (");
        in_list(tx, &head, " AND status = 'WAITING'", tokens).await?;
    }
    let expired: Vec<_> = rows.expired.iter().cloned().collect();
    in_list(
        tx,
        "UPDATE queue_tokens SET status = 'EXPIRED' WHERE token IN (",
        " AND status <> 'EXPIRED'",
        &expired,
    )
    .await?;
    for chunk in rows.idempotency.chunks(CHUNK_ROWS) {
        let mut qb = Qb::new(
            "INSERT INTO idempotency_records (member_id, endpoint, key, fingerprint, status, body, created_at) ",
        );
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.0)
                .push_bind(r.1)
                .push_bind(r.2.clone())
                .push_bind(r.3.clone())
                .push_bind(r.4)
                .push_bind(r.5.clone())
                .push_bind(r.6);
        });
        qb.push(" ON CONFLICT (member_id, endpoint, key) DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

// ---- reads of the write path ----------------------------------------------------------

/// The journal rows after `after` up to `through` (inclusive), in order, at
/// most `limit` (see `writer::read_journal_page`).
pub(super) async fn read_journal_page(
    db: &SqliteDb,
    after: i64,
    through: i64,
    limit: i64,
) -> Result<Vec<JournalRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT pos, kind, payload, checksum FROM journal WHERE pos > ?1 AND pos <= ?2 ORDER BY pos LIMIT ?3",
    )
    .bind(after)
    .bind(through)
    .bind(limit)
    .fetch_all(&db.journal)
    .await
}

/// `projection.projected_pos` (`None`: no row).
pub(super) async fn projected_pos(db: &SqliteDb) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT projected_pos FROM projection WHERE id = 1")
        .fetch_optional(&db.main)
        .await
}

// ---- snapshots ------------------------------------------------------------------------

/// Inserts the snapshot row, deletes the snapshots older than the kept ones
/// and the expired rows, in one transaction on the main file. After that
/// commit (a crash in between leaves rows a later snapshot prunes), the
/// journal file's rows up to the older kept snapshot's position AND the
/// tables' `projected_pos`, never past it (recovery from the tables replays
/// the journal after `projected_pos`).
pub(super) async fn write_snapshot(db: &SqliteDb, snapshot: &SnapshotWrite<'_>) -> Result<(), sqlx::Error> {
    let mut tx = db.main.begin().await?;
    sqlx::query("INSERT INTO snapshots (journal_pos, created_at, bytes) VALUES (?1, ?2, ?3)")
        .bind(snapshot.journal_pos)
        .bind(snapshot.created_at)
        .bind(snapshot.bytes)
        .execute(&mut *tx)
        .await?;
    let oldest_kept: Option<(i64, i64)> =
        sqlx::query_as("SELECT id, journal_pos FROM snapshots ORDER BY id DESC LIMIT 1 OFFSET ?1")
            .bind(snapshot.kept - 1)
            .fetch_optional(&mut *tx)
            .await?;
    let mut prune_through = None;
    if let Some((id, journal_pos)) = oldest_kept {
        sqlx::query("DELETE FROM snapshots WHERE id < ?1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let projected: i64 = sqlx::query_scalar("SELECT projected_pos FROM projection WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        prune_through = Some(journal_pos.min(projected));
    }
    sqlx::query(
        "DELETE FROM queue_tokens WHERE status = 'EXPIRED' AND issued_at <= ?1 AND active_until <= ?1 \
         AND seq < (SELECT MAX(seq) FROM queue_tokens)",
    )
    .bind(snapshot.expired_tokens_through)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if let Some(through) = prune_through {
        prune_journal_file(&db.journal, through).await?;
    }
    Ok(())
}

/// Deletes the journal file's rows up to `through` in chunks of
/// [`PRUNE_CHUNK_ROWS`] (the journal commits go between them) and records
/// `through` as `committed_through`, so the file still tells how far it
/// reached once its last rows are gone (see `recovery`).
async fn prune_journal_file(journal: &SqlitePool, through: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE journal_meta SET committed_through = MAX(committed_through, ?1) WHERE id = 1")
        .bind(through)
        .execute(journal)
        .await?;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM journal WHERE pos <= MIN(?1, COALESCE((SELECT MIN(pos) FROM journal), 0) + ?2 - 1)",
        )
        .bind(through)
        .bind(PRUNE_CHUNK_ROWS)
        .execute(journal)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Ok(());
        }
        tokio::task::yield_now().await;
    }
}

// ---- recovery -------------------------------------------------------------------------

/// The last committed journal position: the last row's, or the journal
/// file's `committed_through` when larger (its rows up to there may have
/// been pruned).
pub(super) async fn journal_end(db: &SqliteDb) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT MAX(COALESCE((SELECT MAX(pos) FROM journal), 0), \
         COALESCE((SELECT committed_through FROM journal_meta WHERE id = 1), 0))",
    )
    .fetch_one(&db.journal)
    .await
}

/// The snapshots (id, journal position), newest first.
pub(super) async fn snapshot_positions(db: &SqliteDb) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT id, journal_pos FROM snapshots ORDER BY id DESC")
        .fetch_all(&db.main)
        .await
}

/// The bytes of snapshot `id`.
pub(super) async fn snapshot_bytes(db: &SqliteDb, id: i64) -> Result<Vec<u8>, sqlx::Error> {
    sqlx::query_scalar("SELECT bytes FROM snapshots WHERE id = ?1")
        .bind(id)
        .fetch_one(&db.main)
        .await
}

/// A read transaction on the main file: its reads see one WAL snapshot,
/// even while the persister projects.
pub(super) async fn begin_read(db: &SqliteDb) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
    db.main.begin().await
}

// ---- settings -------------------------------------------------------------------------

pub(super) async fn setting(db: &SqliteDb, key: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM settings WHERE key = ?1")
        .bind(key)
        .fetch_optional(&db.main)
        .await
}

pub(super) async fn set_setting(db: &SqliteDb, key: &str, value: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(&db.main)
    .await?;
    Ok(())
}
