//! PostgreSQL's SQL: the statements that write and read the data of a
//! PostgreSQL database (one database: journal, tables, snapshots and
//! settings). Connecting and migrations are `db`'s, the writer lock
//! `ownership`'s. SQLite's counterpart is [`super::sqlite`], with the same
//! set; the callers pick one by matching on [`super::Db`].
//!
//! - Journal commit ([`commit_journal`]): one
//!   `INSERT ... SELECT * FROM UNNEST(...)` per batch, plain: `ON CONFLICT`
//!   costs a speculative insertion per row on every commit. A retry of a
//!   commit whose acknowledgement was lost fails on a unique violation
//!   instead; then the stored rows are read back, checked, and only the
//!   missing ones written.
//! - Projection ([`commit_tables`]): locks the `projection` row, folds only
//!   the events after its `projected_pos` ([`Rows::fold`]), so no event is
//!   projected twice, and writes one statement per table, so the SQL text is
//!   constant and a batch costs one round trip per table: `COPY ... FROM
//!   STDIN` for the rows events create once (reservations, their seats,
//!   payments, balance history, the seats held in the slice), and `INSERT
//!   ... SELECT FROM UNNEST(arrays) ON CONFLICT` (or `= ANY(array)`) for the
//!   rest. A projection alone commits with `synchronous_commit = off`; with
//!   the journal rows of its events (`writer::write_batch`) it is one
//!   ordinary transaction.
//! - Snapshots ([`write_snapshot`]): the row, the pruning of old snapshots,
//!   the journal and expired rows, in one transaction.
//! - Reads: journal pages, `projected_pos`, what recovery reads (the
//!   journal's end, snapshots, a REPEATABLE READ read-only transaction) and
//!   settings.

use concert_actors::types::JournalPos;
use concert_actors::Event;
use sqlx::PgPool;

use super::fold::{after_projected, last_pos, JournalRows, Rows};
use super::snapshot::SnapshotWrite;
use super::writer::{confirm_retry, JournalRow, WriteError};

/// The stored journal rows from `first` to `last` (pos, kind, payload).
const STORED_ROWS: &str = "SELECT pos, kind, payload FROM journal WHERE pos >= $1 AND pos <= $2 ORDER BY pos";

// ---- journal commit -------------------------------------------------------------------

/// One transaction of journal rows (not empty). On a unique violation
/// (some positions were committed already: a lost acknowledgement) nothing
/// of the statement was applied: the stored rows must be these rows
/// ([`WriteError::Conflict`] otherwise), and the missing ones are written.
pub(super) async fn commit_journal(pool: &PgPool, rows: &JournalRows) -> Result<(), WriteError> {
    let mut tx = pool.begin().await?;
    let inserted = match insert_journal(&mut tx, rows).await {
        Ok(inserted) => {
            tx.commit().await?;
            inserted
        }
        Err(err) if is_unique_violation(&err) => {
            drop(tx);
            let stored = stored_rows(pool, rows).await?;
            let missing = rows.missing_from(&stored)?;
            if !missing.pos.is_empty() {
                let mut tx = pool.begin().await?;
                insert_journal(&mut tx, &missing).await?;
                tx.commit().await?;
            }
            let (first, last) = rows.range().unwrap_or_default();
            tracing::warn!(
                first,
                last,
                already = stored.len(),
                "journal rows were committed already (an acknowledgement was lost); recognised, not written twice"
            );
            return Ok(());
        }
        Err(err) => return Err(err.into()),
    };
    if inserted < rows.pos.len() as u64 {
        let stored = stored_rows(pool, rows).await?;
        confirm_retry(rows, &stored)?;
    }
    Ok(())
}

/// The journal rows in one statement; the number of rows inserted. A
/// position committed already fails the statement (unique violation): see
/// [`commit_journal`].
async fn insert_journal(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &JournalRows,
) -> Result<u64, sqlx::Error> {
    if rows.pos.is_empty() {
        return Ok(0);
    }
    // No `ON CONFLICT` here: on PostgreSQL it costs a speculative insertion
    // per row on every commit (sync durable 39k vs 61k events/s, medians of
    // 3 alternated runs). A position committed already is a unique
    // violation instead, which `commit_journal` turns into the retry check.
    let done = sqlx::query(
        "INSERT INTO journal (pos, kind, payload, checksum) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bytea[], $4::bigint[])",
    )
    .bind(&rows.pos)
    .bind(&rows.kind)
    .bind(&rows.payload)
    .bind(&rows.checksum)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// Whether a statement failed on a key that exists (SQLSTATE 23505).
fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "23505")
}

/// The stored journal rows in the positions of `rows` (not empty).
async fn stored_rows(pool: &PgPool, rows: &JournalRows) -> Result<Vec<(i64, String, Vec<u8>)>, sqlx::Error> {
    let (first, last) = rows.range().unwrap_or_default();
    sqlx::query_as(STORED_ROWS).bind(first).bind(last).fetch_all(pool).await
}

// ---- projection -----------------------------------------------------------------------

/// One transaction: the journal rows (if any), the table rows of the
/// `events` after `projected_pos`, and `projected_pos` = the last of them.
/// No events: nothing to do.
///
/// It reads `projected_pos` first and locks its row, and folds only the
/// events after it: two writers projecting the same events (a retry after a
/// commit whose outcome was lost with its connection, or a second server on
/// the database) take turns, and the second finds them projected. Events
/// must follow `projected_pos` without a gap ([`WriteError::Gap`]).
pub(super) async fn commit_tables(
    pool: &PgPool,
    journal: Option<&JournalRows>,
    events: &[(JournalPos, Event)],
) -> Result<(), WriteError> {
    let Some(last) = last_pos(events) else {
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    let projected: i64 = sqlx::query_scalar("SELECT projected_pos FROM projection WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?;
    let fresh = after_projected(events, projected)?;
    match journal {
        Some(journal) => {
            if insert_journal(&mut tx, journal).await? < journal.pos.len() as u64 {
                let stored: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(STORED_ROWS)
                    .bind(journal.pos.first().copied().unwrap_or_default())
                    .bind(journal.pos.last().copied().unwrap_or_default())
                    .fetch_all(&mut *tx)
                    .await?;
                confirm_retry(journal, &stored)?;
            }
        }
        // A projection alone need not wait for its WAL flush: the journal
        // already holds its events durably, a crash that loses it only
        // lowers `projected_pos` with the tables, and any later synchronous
        // commit (the pruning one included) flushes the WAL up to itself,
        // this commit included.
        None => {
            sqlx::query("SET LOCAL synchronous_commit TO OFF")
                .execute(&mut *tx)
                .await?;
        }
    }
    if !fresh.is_empty() {
        write_tables(&mut tx, &Rows::fold(fresh)).await?;
        sqlx::query("UPDATE projection SET projected_pos = $1 WHERE id = 1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Rows in PostgreSQL's COPY text format, for columns of integers and
/// fixed status words only (nothing to escape).
#[derive(Default)]
struct CopyText {
    buf: Vec<u8>,
    fields: usize,
}

impl CopyText {
    fn row(&mut self, fields: impl FnOnce(&mut Self)) {
        self.fields = 0;
        fields(self);
        self.buf.push(b'\n');
    }

    fn sep(&mut self) {
        if self.fields > 0 {
            self.buf.push(b'\t');
        }
        self.fields += 1;
    }

    fn int(&mut self, value: i64) {
        use std::io::Write as _;
        self.sep();
        // Writing to a Vec cannot fail.
        let _ = write!(self.buf, "{value}");
    }

    /// One of the engine's status or kind names (ASCII letters and `_`).
    fn word(&mut self, value: &'static str) {
        debug_assert!(value.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_'));
        self.sep();
        self.buf.extend_from_slice(value.as_bytes());
    }

    async fn send(self, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, statement: &str) -> Result<(), sqlx::Error> {
        let mut copy = tx.copy_in_raw(statement).await?;
        copy.send(self.buf).await?;
        copy.finish().await?;
        Ok(())
    }
}

/// The table rows: one statement per table, so the SQL text
/// is constant (prepared once per connection) and a slice costs a round
/// trip per table, whatever its size.
///
/// The rows that events create once (reservations, their seats, payments,
/// balance history, and the rows of seats held in the slice) are COPYed:
/// `commit_tables` folds each event in exactly once, so they cannot
/// conflict (nor can the seats, written after this slice's releases).
/// `ON CONFLICT` would cost a speculative insertion per row, and COPY
/// inserts a page of rows at a time where `INSERT ... UNNEST` inserts row
/// by row (docs/PERFORMANCE.md, "Sixth pass"). Rows that the engine may
/// write again for the same key (members' balances, idempotency records
/// and tokens whose keys come back after pruning, concerts) are `UNNEST`
/// arrays with `ON CONFLICT`.
async fn write_tables(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, rows: &Rows) -> Result<(), sqlx::Error> {
    if !rows.members.is_empty() {
        let (mut ids, mut names, mut keys, mut balances, mut created) = (vec![], vec![], vec![], vec![], vec![]);
        for (member, row) in &rows.members {
            ids.push(*member);
            names.push(row.name.clone().unwrap_or_default());
            keys.push(row.key_hash.clone());
            balances.push(row.balance);
            created.push(row.created_at);
        }
        sqlx::query(
            "INSERT INTO members (id, name, key_hash, balance, created_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bytea[], $4::bigint[], $5::bigint[]) \
             ON CONFLICT (id) DO UPDATE SET balance = excluded.balance",
        )
        .bind(ids)
        .bind(names)
        .bind(keys)
        .bind(balances)
        .bind(created)
        .execute(&mut **tx)
        .await?;
    }
    if !rows.concerts.is_empty() {
        let col0: Vec<_> = rows.concerts.iter().map(|c| c.0).collect();
        let col1: Vec<_> = rows.concerts.iter().map(|c| c.1.clone()).collect();
        let col2: Vec<_> = rows.concerts.iter().map(|c| c.2.clone()).collect();
        let col3: Vec<_> = rows.concerts.iter().map(|c| c.3.clone()).collect();
        let col4: Vec<_> = rows.concerts.iter().map(|c| c.4).collect();
        let col5: Vec<_> = rows.concerts.iter().map(|c| c.5).collect();
        let col6: Vec<_> = rows.concerts.iter().map(|c| c.6).collect();
        let col7: Vec<_> = rows.concerts.iter().map(|c| c.7.clone()).collect();
        sqlx::query(
            "INSERT INTO concerts (id, title, category, venue, starts_at, seat_count, price, price_tiers) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], \
             $7::bigint[], $8::text[]) ON CONFLICT (id) DO NOTHING",
        )
        .bind(col0)
        .bind(col1)
        .bind(col2)
        .bind(col3)
        .bind(col4)
        .bind(col5)
        .bind(col6)
        .bind(col7)
        .execute(&mut **tx)
        .await?;
    }
    if !rows.reservations.is_empty() {
        let mut copy = CopyText::default();
        for (id, r) in &rows.reservations {
            copy.row(|row| {
                row.int(*id);
                row.int(r.concert);
                row.int(r.member);
                row.int(r.amount);
                row.word(r.status);
                row.int(r.created_at);
                row.int(r.expires_at);
            });
        }
        copy.send(
            tx,
            "COPY reservations (id, concert_id, member_id, amount, status, created_at, expires_at) FROM STDIN",
        )
        .await?;
    }
    if !rows.reservation_seats.is_empty() {
        let mut copy = CopyText::default();
        for (reservation, seat) in &rows.reservation_seats {
            copy.row(|row| {
                row.int(*reservation);
                row.int(*seat);
            });
        }
        copy.send(tx, "COPY reservation_seats (reservation_id, seat_no) FROM STDIN")
            .await?;
    }
    for (status, ids) in &rows.released {
        sqlx::query("UPDATE reservations SET status = $1 WHERE id = ANY($2::bigint[])")
            .bind(*status)
            .bind(ids)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM seats WHERE reservation_id = ANY($1::bigint[])")
            .bind(ids)
            .execute(&mut **tx)
            .await?;
    }
    if !rows.confirmed.is_empty() {
        sqlx::query("UPDATE reservations SET status = 'CONFIRMED' WHERE id = ANY($1::bigint[])")
            .bind(&rows.confirmed)
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE seats SET status = 'SOLD' WHERE reservation_id = ANY($1::bigint[])")
            .bind(&rows.confirmed)
            .execute(&mut **tx)
            .await?;
    }
    // After the releases above: a seat held in this slice may have been
    // held by a reservation of an earlier slice that this slice released,
    // and its row is gone now. Any other row of a seat held here would be a
    // second live hold or a resale, which the engine never emits.
    if !rows.seats.is_empty() {
        let mut copy = CopyText::default();
        for ((concert, seat), (reservation, status)) in &rows.seats {
            copy.row(|row| {
                row.int(*concert);
                row.int(*seat);
                row.word(status);
                row.int(*reservation);
            });
        }
        copy.send(
            tx,
            "COPY seats (concert_id, seat_no, status, reservation_id) FROM STDIN",
        )
        .await?;
    }
    if !rows.payments.is_empty() {
        let mut copy = CopyText::default();
        for (payment, reservation, member, amount, at) in &rows.payments {
            copy.row(|row| {
                row.int(*payment);
                row.int(*reservation);
                row.int(*member);
                row.int(*amount);
                row.int(*at);
            });
        }
        copy.send(
            tx,
            "COPY payments (id, reservation_id, member_id, amount, created_at) FROM STDIN",
        )
        .await?;
    }
    if !rows.history.is_empty() {
        let mut copy = CopyText::default();
        for (member, kind, amount, balance_after, at, pos) in &rows.history {
            copy.row(|row| {
                row.int(*member);
                row.word(kind);
                row.int(*amount);
                row.int(*balance_after);
                row.int(*at);
                row.int(*pos);
            });
        }
        copy.send(
            tx,
            "COPY balance_history (member_id, kind, amount, balance_after, at, journal_pos) FROM STDIN",
        )
        .await?;
    }
    if !rows.new_tokens.is_empty() {
        let col0: Vec<_> = rows.new_tokens.keys().cloned().collect();
        let col1: Vec<_> = rows.new_tokens.values().map(|row| row.member).collect();
        let col2: Vec<_> = rows.new_tokens.values().map(|row| row.seq).collect();
        let col3: Vec<_> = rows.new_tokens.values().map(|row| row.status).collect();
        let col4: Vec<_> = rows.new_tokens.values().map(|row| row.active_until).collect();
        let col5: Vec<_> = rows.new_tokens.values().map(|row| row.issued_at).collect();
        sqlx::query(
            "INSERT INTO queue_tokens (token, member_id, seq, status, active_until, issued_at) \
             SELECT * FROM UNNEST($1::bytea[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], \
             $6::bigint[]) ON CONFLICT (token) DO NOTHING",
        )
        .bind(col0)
        .bind(col1)
        .bind(col2)
        .bind(col3)
        .bind(col4)
        .bind(col5)
        .execute(&mut **tx)
        .await?;
    }
    for (active_until, tokens) in &rows.admitted {
        sqlx::query(
            "UPDATE queue_tokens SET status = 'ACTIVE', active_until = $1 \
             WHERE status = 'WAITING' AND token = ANY($2::bytea[])",
        )
        .bind(*active_until)
        .bind(tokens)
        .execute(&mut **tx)
        .await?;
    }
    if !rows.expired.is_empty() {
        let expired: Vec<&[u8]> = rows.expired.iter().map(Vec::as_slice).collect();
        sqlx::query(
            "UPDATE queue_tokens SET status = 'EXPIRED' WHERE token = ANY($1::bytea[]) AND status <> 'EXPIRED'",
        )
        .bind(expired)
        .execute(&mut **tx)
        .await?;
    }
    if !rows.idempotency.is_empty() {
        let col0: Vec<_> = rows.idempotency.iter().map(|r| r.0).collect();
        let col1: Vec<_> = rows.idempotency.iter().map(|r| r.1).collect();
        let col2: Vec<_> = rows.idempotency.iter().map(|r| r.2.as_str()).collect();
        let col3: Vec<_> = rows.idempotency.iter().map(|r| r.3.as_slice()).collect();
        let col4: Vec<_> = rows.idempotency.iter().map(|r| r.4).collect();
        let col5: Vec<_> = rows.idempotency.iter().map(|r| r.5.as_slice()).collect();
        let col6: Vec<_> = rows.idempotency.iter().map(|r| r.6).collect();
        sqlx::query(
            "INSERT INTO idempotency_records (member_id, endpoint, key, fingerprint, status, body, created_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::bigint[], \
             $6::bytea[], $7::bigint[]) ON CONFLICT (member_id, endpoint, key) DO NOTHING",
        )
        .bind(col0)
        .bind(col1)
        .bind(col2)
        .bind(col3)
        .bind(col4)
        .bind(col5)
        .bind(col6)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

// ---- reads of the write path ----------------------------------------------------------

/// The journal rows after `after` up to `through` (inclusive), in order, at
/// most `limit` (see `writer::read_journal_page`).
pub(super) async fn read_journal_page(
    pool: &PgPool,
    after: i64,
    through: i64,
    limit: i64,
) -> Result<Vec<JournalRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT pos, kind, payload, checksum FROM journal WHERE pos > $1 AND pos <= $2 ORDER BY pos LIMIT $3",
    )
    .bind(after)
    .bind(through)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// `projection.projected_pos` (`None`: no row).
pub(super) async fn projected_pos(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT projected_pos FROM projection WHERE id = 1")
        .fetch_optional(pool)
        .await
}

// ---- snapshots ------------------------------------------------------------------------

/// Inserts the snapshot row, deletes the snapshots older than the kept
/// ones, the journal rows up to the older kept snapshot's position AND the
/// tables' `projected_pos`, never past it (recovery from the tables replays
/// the journal after `projected_pos`), and the expired rows, in one
/// transaction.
pub(super) async fn write_snapshot(pool: &PgPool, snapshot: &SnapshotWrite<'_>) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO snapshots (journal_pos, created_at, bytes) VALUES ($1, $2, $3)")
        .bind(snapshot.journal_pos)
        .bind(snapshot.created_at)
        .bind(snapshot.bytes)
        .execute(&mut *tx)
        .await?;
    let oldest_kept: Option<(i64, i64)> =
        sqlx::query_as("SELECT id, journal_pos FROM snapshots ORDER BY id DESC LIMIT 1 OFFSET $1")
            .bind(snapshot.kept - 1)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((id, journal_pos)) = oldest_kept {
        sqlx::query("DELETE FROM snapshots WHERE id < $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let projected: i64 = sqlx::query_scalar("SELECT projected_pos FROM projection WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM journal WHERE pos <= $1")
            .bind(journal_pos.min(projected))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "DELETE FROM queue_tokens WHERE status = 'EXPIRED' AND issued_at <= $1 AND active_until <= $1 \
         AND seq < (SELECT MAX(seq) FROM queue_tokens)",
    )
    .bind(snapshot.expired_tokens_through)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

// ---- recovery -------------------------------------------------------------------------

/// The last committed journal position (the last row's).
pub(super) async fn journal_end(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT MAX(pos) FROM journal").fetch_one(pool).await
}

/// The snapshots (id, journal position), newest first.
pub(super) async fn snapshot_positions(pool: &PgPool) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT id, journal_pos FROM snapshots ORDER BY id DESC")
        .fetch_all(pool)
        .await
}

/// The bytes of snapshot `id`.
pub(super) async fn snapshot_bytes(pool: &PgPool, id: i64) -> Result<Vec<u8>, sqlx::Error> {
    sqlx::query_scalar("SELECT bytes FROM snapshots WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// A REPEATABLE READ, read-only transaction: its reads see one snapshot of
/// the database, even while the persister projects.
pub(super) async fn begin_read(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

// ---- settings -------------------------------------------------------------------------

pub(super) async fn setting(pool: &PgPool, key: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
}

pub(super) async fn set_setting(pool: &PgPool, key: &str, value: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(pool)
    .await?;
    Ok(())
}
