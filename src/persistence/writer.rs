//! The SQL of the write path, in two parts:
//!
//! - [`write_journal`]: the durable commit. Only journal rows
//!   `(pos, kind, payload)`: on SQLite in few multi-row INSERTs of up to
//!   [`JOURNAL_CHUNK_ROWS`] rows, on PostgreSQL in one
//!   `INSERT ... SELECT * FROM UNNEST(...)`. An event is one row, so a
//!   payment (one event) is all-or-nothing.
//! - [`project`]: folds committed events into the normalized tables and
//!   stores `projection.projected_pos` in the same transaction, so the tables
//!   and `projected_pos` always agree. The persister runs it after the
//!   journal commit, in larger slices (see `persister`).
//!
//! [`write_batch`] does both in one transaction (loading a database in
//! benches and tests).
//!
//! Events are first folded into per-table row sets (`Rows`); rows that one
//! batch changes several times are merged so each multi-row statement
//! touches a row once (PostgreSQL refuses otherwise). Statements run in
//! dependency order and each carries up to `CHUNK_ROWS` rows: sqlx costs
//! about 15 µs per statement, so few large statements are what makes group
//! commit fast.

use std::collections::BTreeMap;

use concert_actors::concert::ReservationStatus;
use concert_actors::idempotency::IdempotentEndpoint;
use concert_actors::queue::TokenStatus;
use concert_actors::types::JournalPos;
use concert_actors::Event;
use sqlx::QueryBuilder;

use super::codec::{encode_event, CodecError};
use super::db::Db;

/// Rows per multi-row statement of the tables (SQLite allows 32,766 bound values).
const CHUNK_ROWS: usize = 500;
/// Journal rows per multi-row INSERT on SQLite: 3 binds a row, 15,000 binds.
pub const JOURNAL_CHUNK_ROWS: usize = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

#[derive(Default)]
struct MemberRow {
    /// `Some` when the member registered in this batch.
    name: Option<String>,
    key_hash: Vec<u8>,
    created_at: i64,
    balance: i64,
}

struct TokenRow {
    member: i64,
    seq: i64,
    status: &'static str,
    active_until: i64,
    issued_at: i64,
}

/// id, title, category, venue, starts_at, seat_count, price, price_tiers (JSON).
type ConcertRow = (i64, String, String, String, i64, i64, i64, String);
/// member, endpoint, key, fingerprint, status, body, created_at.
type IdempotencyRow = (i64, &'static str, String, Vec<u8>, i64, Vec<u8>, i64);

#[derive(Default)]
struct Rows {
    members: BTreeMap<i64, MemberRow>,
    history: Vec<(i64, &'static str, i64, i64, i64, i64)>,
    concerts: Vec<ConcertRow>,
    reservations: Vec<(i64, i64, i64, i64, i64, i64)>,
    reservation_seats: Vec<(i64, i64)>,
    /// (concert, seat) -> reservation holding it, last hold wins.
    held_seats: BTreeMap<(i64, i64), i64>,
    released: BTreeMap<&'static str, Vec<i64>>,
    confirmed: Vec<i64>,
    payments: Vec<(i64, i64, i64, i64, i64)>,
    new_tokens: BTreeMap<Vec<u8>, TokenRow>,
    /// Tokens from earlier batches admitted now, by their `activeUntil`.
    admitted: BTreeMap<i64, Vec<Vec<u8>>>,
    expired: Vec<Vec<u8>>,
    idempotency: Vec<IdempotencyRow>,
}

/// The journal columns of `events`: positions, kinds, encoded payloads.
struct JournalRows {
    pos: Vec<i64>,
    kind: Vec<&'static str>,
    payload: Vec<Vec<u8>>,
}

impl JournalRows {
    fn encode(events: &[(JournalPos, Event)]) -> Result<Self, CodecError> {
        let mut rows = JournalRows {
            pos: Vec::with_capacity(events.len()),
            kind: Vec::with_capacity(events.len()),
            payload: Vec::with_capacity(events.len()),
        };
        for (pos, event) in events {
            rows.pos.push(id(*pos));
            rows.kind.push(event.kind());
            rows.payload.push(encode_event(event)?);
        }
        Ok(rows)
    }
}

fn id(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub fn status_name(status: ReservationStatus) -> &'static str {
    status.as_str()
}

pub fn endpoint_name(endpoint: IdempotentEndpoint) -> &'static str {
    match endpoint {
        IdempotentEndpoint::Charge => "charge",
        IdempotentEndpoint::Payment => "payment",
    }
}

impl Rows {
    fn fold(events: &[(JournalPos, Event)]) -> Self {
        let mut rows = Rows::default();
        for (pos, event) in events {
            rows.add(id(*pos), event);
        }
        rows
    }

    fn balance(&mut self, member: i64, balance_after: i64) {
        self.members.entry(member).or_default().balance = balance_after;
    }

    fn expire_token(&mut self, token: Vec<u8>) {
        match self.new_tokens.get_mut(&token) {
            Some(row) => row.status = TokenStatus::Expired.as_str(),
            None => self.expired.push(token),
        }
    }

    fn add(&mut self, pos: i64, event: &Event) {
        match event {
            Event::MemberRegistered {
                member,
                name,
                key_hash,
                at_ms,
            } => {
                let row = self.members.entry(id(*member)).or_default();
                row.name = Some(name.clone());
                row.key_hash = key_hash.to_vec();
                row.created_at = *at_ms;
            }
            Event::BalanceCharged {
                member,
                amount,
                balance_after,
                at_ms,
            } => {
                self.balance(id(*member), *balance_after);
                self.history
                    .push((id(*member), "CHARGE", *amount, *balance_after, *at_ms, pos));
            }
            Event::ConcertCreated { info } => {
                let tiers = info
                    .pricing
                    .tiers()
                    .iter()
                    .map(|t| [i64::from(t.from_seat), i64::from(t.to_seat), t.price])
                    .collect::<Vec<_>>();
                self.concerts.push((
                    id(info.id),
                    info.title.clone(),
                    info.category.clone(),
                    info.venue.clone(),
                    info.starts_at_ms,
                    i64::from(info.seat_count),
                    info.pricing.base_price(),
                    serde_json::to_string(&tiers).unwrap_or_else(|_| "[]".into()),
                ));
            }
            Event::SeatsHeld { reservation: r } => {
                self.reservations.push((
                    id(r.id),
                    id(r.concert_id),
                    id(r.member_id),
                    r.amount,
                    r.created_at_ms,
                    r.expires_at_ms,
                ));
                for &seat in &r.seats {
                    self.reservation_seats.push((id(r.id), i64::from(seat)));
                    self.held_seats.insert((id(r.concert_id), i64::from(seat)), id(r.id));
                }
            }
            Event::HoldReleased {
                reservation, status, ..
            } => self
                .released
                .entry(status_name(*status))
                .or_default()
                .push(id(*reservation)),
            Event::PaymentCompleted {
                payment,
                reservation,
                member,
                amount,
                balance_after,
                token,
                at_ms,
                ..
            } => {
                self.confirmed.push(id(*reservation));
                self.payments
                    .push((id(*payment), id(*reservation), id(*member), *amount, *at_ms));
                self.balance(id(*member), *balance_after);
                self.history
                    .push((id(*member), "PAYMENT", -amount, *balance_after, *at_ms, pos));
                if let Some(token) = token {
                    self.expire_token(token.to_bytes().to_vec());
                }
            }
            Event::TokenIssued {
                token,
                member,
                seq,
                at_ms,
            } => {
                self.new_tokens.insert(
                    token.to_bytes().to_vec(),
                    TokenRow {
                        member: id(*member),
                        seq: id(*seq),
                        status: TokenStatus::Waiting.as_str(),
                        active_until: 0,
                        issued_at: *at_ms,
                    },
                );
            }
            Event::TokenAdmitted { token, active_until_ms } => {
                match self.new_tokens.get_mut(token.to_bytes().as_slice()) {
                    Some(row) => {
                        row.status = TokenStatus::Active.as_str();
                        row.active_until = *active_until_ms;
                    }
                    None => self
                        .admitted
                        .entry(*active_until_ms)
                        .or_default()
                        .push(token.to_bytes().to_vec()),
                }
            }
            Event::TokenExpired { token, .. } => self.expire_token(token.to_bytes().to_vec()),
            Event::IdempotencyRecorded { record } => self.idempotency.push((
                id(record.scope.member),
                endpoint_name(record.scope.endpoint),
                record.scope.key.clone(),
                record.fingerprint.to_vec(),
                i64::from(record.response.status),
                record.response.body.clone(),
                record.at_ms,
            )),
        }
    }
}

/// Generates the statement sequence for one backend (the SQL is the same;
/// only the placeholder syntax differs, which `QueryBuilder` handles).
macro_rules! write_rows {
    ($name:ident, $db:ty) => {
        async fn $name(tx: &mut sqlx::Transaction<'_, $db>, rows: &Rows) -> Result<(), sqlx::Error> {
            let members: Vec<_> = rows.members.iter().collect();
            for chunk in members.chunks(CHUNK_ROWS) {
                let mut qb =
                    QueryBuilder::<$db>::new("INSERT INTO members (id, name, key_hash, balance, created_at) ");
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
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO concerts (id, title, category, venue, starts_at, seat_count, price, price_tiers) ",
                );
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
            for chunk in rows.reservations.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO reservations (id, concert_id, member_id, amount, status, created_at, expires_at) ",
                );
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(r.0)
                        .push_bind(r.1)
                        .push_bind(r.2)
                        .push_bind(r.3)
                        .push_bind("PENDING_PAYMENT")
                        .push_bind(r.4)
                        .push_bind(r.5);
                });
                qb.push(" ON CONFLICT (id) DO NOTHING");
                qb.build().execute(&mut **tx).await?;
            }
            for chunk in rows.reservation_seats.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new("INSERT INTO reservation_seats (reservation_id, seat_no) ");
                qb.push_values(chunk, |mut b, s| {
                    b.push_bind(s.0).push_bind(s.1);
                });
                qb.push(" ON CONFLICT DO NOTHING");
                qb.build().execute(&mut **tx).await?;
            }
            let held: Vec<_> = rows.held_seats.iter().collect();
            for chunk in held.chunks(CHUNK_ROWS) {
                let mut qb =
                    QueryBuilder::<$db>::new("INSERT INTO seats (concert_id, seat_no, status, reservation_id) ");
                qb.push_values(chunk, |mut b, ((concert, seat), reservation)| {
                    b.push_bind(*concert)
                        .push_bind(*seat)
                        .push_bind("HELD")
                        .push_bind(**reservation);
                });
                qb.push(
                    " ON CONFLICT (concert_id, seat_no) DO UPDATE SET status = excluded.status, \
                     reservation_id = excluded.reservation_id",
                );
                qb.build().execute(&mut **tx).await?;
            }
            for (status, ids) in &rows.released {
                for chunk in ids.chunks(CHUNK_ROWS) {
                    let mut qb = QueryBuilder::<$db>::new("UPDATE reservations SET status = ");
                    qb.push_bind(*status).push(" WHERE id IN (");
                    let mut list = qb.separated(", ");
                    for reservation in chunk {
                        list.push_bind(*reservation);
                    }
                    qb.push(")");
                    qb.build().execute(&mut **tx).await?;
                    let mut qb = QueryBuilder::<$db>::new("DELETE FROM seats WHERE reservation_id IN (");
                    let mut list = qb.separated(", ");
                    for reservation in chunk {
                        list.push_bind(*reservation);
                    }
                    qb.push(")");
                    qb.build().execute(&mut **tx).await?;
                }
            }
            for chunk in rows.confirmed.chunks(CHUNK_ROWS) {
                for sql in [
                    "UPDATE reservations SET status = 'CONFIRMED' WHERE id IN (",
                    "UPDATE seats SET status = 'SOLD' WHERE reservation_id IN (",
                ] {
                    let mut qb = QueryBuilder::<$db>::new(sql);
                    let mut list = qb.separated(", ");
                    for reservation in chunk {
                        list.push_bind(*reservation);
                    }
                    qb.push(")");
                    qb.build().execute(&mut **tx).await?;
                }
            }
            for chunk in rows.payments.chunks(CHUNK_ROWS) {
                let mut qb =
                    QueryBuilder::<$db>::new("INSERT INTO payments (id, reservation_id, member_id, amount, created_at) ");
                qb.push_values(chunk, |mut b, p| {
                    b.push_bind(p.0).push_bind(p.1).push_bind(p.2).push_bind(p.3).push_bind(p.4);
                });
                qb.push(" ON CONFLICT DO NOTHING");
                qb.build().execute(&mut **tx).await?;
            }
            for chunk in rows.history.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO balance_history (member_id, kind, amount, balance_after, at, journal_pos) ",
                );
                qb.push_values(chunk, |mut b, h| {
                    b.push_bind(h.0).push_bind(h.1).push_bind(h.2).push_bind(h.3).push_bind(h.4).push_bind(h.5);
                });
                qb.push(" ON CONFLICT (journal_pos) DO NOTHING");
                qb.build().execute(&mut **tx).await?;
            }
            let tokens: Vec<_> = rows.new_tokens.iter().collect();
            for chunk in tokens.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO queue_tokens (token, member_id, seq, status, active_until, issued_at) ",
                );
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
                for chunk in tokens.chunks(CHUNK_ROWS) {
                    let mut qb = QueryBuilder::<$db>::new("UPDATE queue_tokens SET status = 'ACTIVE', active_until = ");
                    qb.push_bind(*active_until)
                        .push(" WHERE status = 'WAITING' AND token IN (");
                    let mut list = qb.separated(", ");
                    for token in chunk {
                        list.push_bind(token.clone());
                    }
                    qb.push(")");
                    qb.build().execute(&mut **tx).await?;
                }
            }
            for chunk in rows.expired.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new("UPDATE queue_tokens SET status = 'EXPIRED' WHERE token IN (");
                let mut list = qb.separated(", ");
                for token in chunk {
                    list.push_bind(token.clone());
                }
                qb.push(")");
                qb.build().execute(&mut **tx).await?;
            }
            for chunk in rows.idempotency.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new(
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
    };
}

write_rows!(write_sqlite, sqlx::Sqlite);
write_rows!(write_postgres, sqlx::Postgres);

async fn journal_sqlite(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, rows: &JournalRows) -> Result<(), sqlx::Error> {
    let mut start = 0;
    while start < rows.pos.len() {
        let end = (start + JOURNAL_CHUNK_ROWS).min(rows.pos.len());
        let mut qb = QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO journal (pos, kind, payload) ");
        qb.push_values(start..end, |mut b, i| {
            b.push_bind(rows.pos[i])
                .push_bind(rows.kind[i])
                .push_bind(rows.payload[i].as_slice());
        });
        qb.build().execute(&mut **tx).await?;
        start = end;
    }
    Ok(())
}

async fn journal_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &JournalRows,
) -> Result<(), sqlx::Error> {
    if rows.pos.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO journal (pos, kind, payload) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bytea[])",
    )
    .bind(&rows.pos)
    .bind(&rows.kind)
    .bind(&rows.payload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The last position of `events`, as stored in `projection.projected_pos`.
fn last_pos(events: &[(JournalPos, Event)]) -> Option<i64> {
    events.last().map(|(pos, _)| id(*pos))
}

/// Commits the journal rows of `events` (consecutive positions), and nothing
/// else, in one transaction: the durable part of the write path.
pub async fn write_journal(db: &Db, events: &[(JournalPos, Event)]) -> Result<(), WriteError> {
    let rows = JournalRows::encode(events)?;
    match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            journal_sqlite(&mut tx, &rows).await?;
            tx.commit().await?;
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            journal_postgres(&mut tx, &rows).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Folds committed `events` (the ones right after `projected_pos`, in order)
/// into the normalized tables and moves `projected_pos` to the last of them,
/// in one transaction.
pub async fn project(db: &Db, events: &[(JournalPos, Event)]) -> Result<(), WriteError> {
    let Some(last) = last_pos(events) else {
        return Ok(());
    };
    commit_tables(db, None, &Rows::fold(events), last).await
}

/// Commits `events` (consecutive journal positions) to the journal AND the
/// tables (with `projected_pos`) in one transaction. For loading a database
/// whose tables are fully projected; the persister uses [`write_journal`] and
/// [`project`] instead.
pub async fn write_batch(db: &Db, events: &[(JournalPos, Event)]) -> Result<(), WriteError> {
    let Some(last) = last_pos(events) else {
        return Ok(());
    };
    let journal = JournalRows::encode(events)?;
    commit_tables(db, Some(&journal), &Rows::fold(events), last).await
}

/// One transaction: the journal rows (if any), the table rows, and
/// `projected_pos = last`.
async fn commit_tables(db: &Db, journal: Option<&JournalRows>, rows: &Rows, last: i64) -> Result<(), WriteError> {
    match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            if let Some(journal) = journal {
                journal_sqlite(&mut tx, journal).await?;
            }
            write_sqlite(&mut tx, rows).await?;
            sqlx::query("UPDATE projection SET projected_pos = ?1 WHERE id = 1")
                .bind(last)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            if let Some(journal) = journal {
                journal_postgres(&mut tx, journal).await?;
            }
            write_postgres(&mut tx, rows).await?;
            sqlx::query("UPDATE projection SET projected_pos = $1 WHERE id = 1")
                .bind(last)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// The last journal position the tables reflect.
pub async fn projected_pos(db: &Db) -> Result<JournalPos, sqlx::Error> {
    let sql = "SELECT projected_pos FROM projection WHERE id = 1";
    let pos: Option<i64> = match db {
        Db::Sqlite(pool) => sqlx::query_scalar(sql).fetch_optional(pool).await?,
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_optional(pool).await?,
    };
    Ok(pos.map_or(0, |p| u64::try_from(p).unwrap_or_default()))
}
