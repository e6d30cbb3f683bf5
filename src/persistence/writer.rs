//! The SQL of the write path, in two parts:
//!
//! - [`write_journal`]: the durable commit. Only journal rows
//!   `(pos, kind, payload, checksum)`: on SQLite (in the journal file) in few multi-row INSERTs of up to
//!   [`JOURNAL_CHUNK_ROWS`] rows, on PostgreSQL in one
//!   `INSERT ... SELECT * FROM UNNEST(...)`. An event is one row, so a
//!   payment (one event) is all-or-nothing. A retry of a commit whose
//!   acknowledgement was lost is recognised as done, never a duplicate-key
//!   error that would hold every later write back: SQLite skips positions
//!   committed already (`ON CONFLICT (pos) DO NOTHING`, free on its integer
//!   key) and then checks they hold the same events (`confirm_retry`);
//!   PostgreSQL inserts plainly (its `ON CONFLICT` costs a speculative
//!   insertion per row on every commit) and, on a unique violation, reads
//!   the stored rows back, checks them and writes only the missing ones.
//! - [`project`]: folds committed events into the normalized tables and
//!   stores `projection.projected_pos` in the same transaction, so the tables
//!   and `projected_pos` always agree. The persister runs it after the
//!   journal commit, in larger slices (see `persister`).
//!
//! [`write_batch`] does both (loading a database in benches and tests): in
//! one transaction on PostgreSQL, journal first then tables on SQLite, whose
//! journal is a file of its own (`db`).
//!
//! Events are first folded into per-table row sets (`Rows`); rows that one
//! batch changes several times are merged so each statement touches a row
//! once (PostgreSQL refuses otherwise), and a hold paid or released inside
//! the batch is written once in its final state (a released hold's seats
//! get no `seats` row at all) instead of inserted, then updated or deleted.
//! Statements run in dependency order. SQLite: multi-row statements of up to
//! `CHUNK_ROWS` rows (sqlx costs about 15 µs per statement). PostgreSQL: one
//! statement per table, so the SQL text is constant and a batch costs one
//! round trip per table: `COPY ... FROM STDIN` for the rows events create
//! once (reservations, their seats, payments, balance history, the seats
//! held in the slice), and
//! `INSERT ... SELECT FROM UNNEST(arrays) ON CONFLICT` (or `= ANY(array)`)
//! for the rest. A projection transaction on PostgreSQL locks the
//! `projection` row and folds only the events after its `projected_pos`, so
//! no event is projected twice, and commits with `synchronous_commit = off`
//! (see `commit_tables`).

use std::collections::{BTreeMap, BTreeSet};

use concert_actors::concert::ReservationStatus;
use concert_actors::idempotency::{IdempotencyRecord, IdempotentEndpoint};
use concert_actors::queue::TokenStatus;
use concert_actors::types::JournalPos;
use concert_actors::Event;
use sqlx::QueryBuilder;

use super::codec::{encode_event, journal_checksum, CodecError};
use super::db::Db;

/// Rows per multi-row statement of the tables (SQLite allows 32,766 bound values).
const CHUNK_ROWS: usize = 1_000;
/// Journal rows per multi-row INSERT on SQLite: 4 binds a row, 20,000 binds.
pub const JOURNAL_CHUNK_ROWS: usize = 5_000;

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

/// A reservation first held in this batch, with its final status.
struct ReservationRow {
    concert: i64,
    member: i64,
    amount: i64,
    status: &'static str,
    created_at: i64,
    expires_at: i64,
    seats: Vec<i64>,
}

#[derive(Default)]
struct Rows {
    members: BTreeMap<i64, MemberRow>,
    history: Vec<(i64, &'static str, i64, i64, i64, i64)>,
    concerts: Vec<ConcertRow>,
    /// Reservations held in this batch, by id, already in their last status
    /// of the batch (a hold paid or released in the same batch is inserted
    /// CONFIRMED / CANCELLED / EXPIRED, not inserted and then updated).
    reservations: BTreeMap<i64, ReservationRow>,
    reservation_seats: Vec<(i64, i64)>,
    /// (concert, seat) -> (reservation, HELD or SOLD), last hold wins. The
    /// seats of a hold released in this batch are not here at all.
    seats: BTreeMap<(i64, i64), (i64, &'static str)>,
    /// Reservations of earlier batches released now, by their new status.
    released: BTreeMap<&'static str, Vec<i64>>,
    /// Reservations held and released in this batch: no `seats` rows are
    /// written for them. On SQLite a `DELETE` by `reservation_id` (an index
    /// probe that finds nothing unless another writer projected these
    /// events already) keeps re-projecting events idempotent; PostgreSQL
    /// never projects an event twice.
    dropped: Vec<i64>,
    /// Reservations of earlier batches paid now.
    confirmed: Vec<i64>,
    payments: Vec<(i64, i64, i64, i64, i64)>,
    new_tokens: BTreeMap<Vec<u8>, TokenRow>,
    /// Tokens from earlier batches admitted now, by their `activeUntil`.
    admitted: BTreeMap<i64, Vec<Vec<u8>>>,
    /// Tokens from earlier batches expired now (each once).
    expired: BTreeSet<Vec<u8>>,
    idempotency: Vec<IdempotencyRow>,
}

/// The journal columns of `events`: positions, kinds, encoded payloads and
/// their checksums ([`journal_checksum`]).
struct JournalRows {
    pos: Vec<i64>,
    kind: Vec<&'static str>,
    payload: Vec<Vec<u8>>,
    checksum: Vec<i64>,
}

impl JournalRows {
    fn encode(events: &[(JournalPos, Event)]) -> Result<Self, CodecError> {
        let mut rows = JournalRows {
            pos: Vec::with_capacity(events.len()),
            kind: Vec::with_capacity(events.len()),
            payload: Vec::with_capacity(events.len()),
            checksum: Vec::with_capacity(events.len()),
        };
        for (pos, event) in events {
            let (pos, kind, payload) = (id(*pos), event.kind(), encode_event(event)?);
            rows.checksum.push(journal_checksum(pos, kind, &payload));
            rows.pos.push(pos);
            rows.kind.push(kind);
            rows.payload.push(payload);
        }
        Ok(rows)
    }

    /// The rows not in `stored` (pos, kind, payload, read back from the
    /// journal), after checking that those in it are these rows: `Err`
    /// names the first position that holds something else.
    fn missing_from(&self, stored: &[(i64, String, Vec<u8>)]) -> Result<JournalRows, WriteError> {
        let by_pos: BTreeMap<i64, (&str, &[u8])> = stored
            .iter()
            .map(|(pos, kind, payload)| (*pos, (kind.as_str(), payload.as_slice())))
            .collect();
        let mut missing = JournalRows {
            pos: Vec::new(),
            kind: Vec::new(),
            payload: Vec::new(),
            checksum: Vec::new(),
        };
        for (i, &pos) in self.pos.iter().enumerate() {
            match by_pos.get(&pos) {
                Some(&(kind, payload)) if kind == self.kind[i] && payload == self.payload[i].as_slice() => {}
                Some(_) => return Err(WriteError::Conflict { pos }),
                None => {
                    missing.pos.push(pos);
                    missing.kind.push(self.kind[i]);
                    missing.payload.push(self.payload[i].clone());
                    missing.checksum.push(self.checksum[i]);
                }
            }
        }
        Ok(missing)
    }

    /// Whether the rows `stored` (pos, kind, payload, read back from the
    /// journal) are these rows: `Err` names the first position that holds
    /// something else, or is missing.
    fn match_stored(&self, stored: &[(i64, String, Vec<u8>)]) -> Result<(), WriteError> {
        let by_pos: BTreeMap<i64, (&str, &[u8])> = stored
            .iter()
            .map(|(pos, kind, payload)| (*pos, (kind.as_str(), payload.as_slice())))
            .collect();
        for (i, &pos) in self.pos.iter().enumerate() {
            match by_pos.get(&pos) {
                Some(&(kind, payload)) if kind == self.kind[i] && payload == self.payload[i].as_slice() => {}
                _ => return Err(WriteError::Conflict { pos }),
            }
        }
        Ok(())
    }
}

fn id(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub fn status_name(status: ReservationStatus) -> &'static str {
    status.as_str()
}

pub fn endpoint_name(endpoint: IdempotentEndpoint) -> &'static str {
    endpoint.as_str()
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
            None => {
                self.expired.insert(token);
            }
        }
    }

    /// A hold ends: paid (`seats_become` = SOLD) or released (`None`: its
    /// seats become AVAILABLE, i.e. have no row). A hold of this batch is
    /// changed in place; one of an earlier batch is listed for the UPDATE /
    /// DELETE statements.
    fn settle(&mut self, reservation: i64, status: &'static str, seats_become: Option<&'static str>) {
        let Some(row) = self.reservations.get_mut(&reservation) else {
            match seats_become {
                Some(_) => self.confirmed.push(reservation),
                None => self.released.entry(status).or_default().push(reservation),
            }
            return;
        };
        row.status = status;
        if seats_become.is_none() {
            self.dropped.push(reservation);
        }
        for &seat in &row.seats {
            let key = (row.concert, seat);
            // A later hold of the same seat (after a release) owns it now.
            if self.seats.get(&key).is_some_and(|(holder, _)| *holder == reservation) {
                match seats_become {
                    Some(sold) => {
                        self.seats.insert(key, (reservation, sold));
                    }
                    None => {
                        self.seats.remove(&key);
                    }
                }
            }
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
                let seats: Vec<i64> = r.seats.iter().map(|&seat| i64::from(seat)).collect();
                for &seat in &seats {
                    self.reservation_seats.push((id(r.id), seat));
                    self.seats.insert((id(r.concert_id), seat), (id(r.id), "HELD"));
                }
                self.reservations.insert(
                    id(r.id),
                    ReservationRow {
                        concert: id(r.concert_id),
                        member: id(r.member_id),
                        amount: r.amount,
                        status: status_name(ReservationStatus::PendingPayment),
                        created_at: r.created_at_ms,
                        expires_at: r.expires_at_ms,
                        seats,
                    },
                );
            }
            Event::HoldReleased {
                reservation, status, ..
            } => self.settle(id(*reservation), status_name(*status), None),
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
                self.settle(
                    id(*reservation),
                    status_name(ReservationStatus::Confirmed),
                    Some("SOLD"),
                );
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
            Event::IdempotencyRecorded { record } => self.idempotency_record(record),
            Event::Idempotent { record, effect } => {
                self.add(pos, effect);
                self.idempotency_record(record);
            }
        }
    }

    fn idempotency_record(&mut self, record: &IdempotencyRecord) {
        self.idempotency.push((
            id(record.scope.member),
            endpoint_name(record.scope.endpoint),
            record.scope.key.clone(),
            record.fingerprint.to_vec(),
            i64::from(record.response.status),
            record.response.body.clone(),
            record.at_ms,
        ));
    }
}

/// SQLite: a reservation row may exist already when these events were
/// projected before (another writer on the same database): a final status
/// of this batch (CONFIRMED, CANCELLED, EXPIRED never change again) is
/// written over it, a PENDING_PAYMENT one is not (the row may be further
/// along). PostgreSQL never projects an event twice (`commit_tables`).
const RESERVATION_CONFLICT: &str =
    " ON CONFLICT (id) DO UPDATE SET status = excluded.status WHERE excluded.status <> 'PENDING_PAYMENT'";

/// Runs `$qb`'s statement on the transaction.
macro_rules! run {
    ($qb:expr, $tx:expr) => {
        $qb.build().execute(&mut **$tx).await?
    };
}

/// `UPDATE ... WHERE <column> IN (ids)` / `DELETE ...` in chunks, SQLite.
async fn sqlite_in_list<T>(
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
        run!(qb, tx);
    }
    Ok(())
}

/// The table rows on SQLite: multi-row statements of up to `CHUNK_ROWS`
/// rows (sqlx costs about 15 µs per statement), in dependency order.
async fn write_sqlite(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, rows: &Rows) -> Result<(), sqlx::Error> {
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
        run!(qb, tx);
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
        run!(qb, tx);
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
        run!(qb, tx);
    }
    for chunk in rows.reservation_seats.chunks(CHUNK_ROWS) {
        let mut qb = Qb::new("INSERT INTO reservation_seats (reservation_id, seat_no) ");
        qb.push_values(chunk, |mut b, s| {
            b.push_bind(s.0).push_bind(s.1);
        });
        qb.push(" ON CONFLICT DO NOTHING");
        run!(qb, tx);
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
        run!(qb, tx);
    }
    sqlite_in_list(tx, "DELETE FROM seats WHERE reservation_id IN (", "", &rows.dropped).await?;
    for (status, ids) in &rows.released {
        let head = format!("UPDATE reservations SET status = '{status}' WHERE id IN (");
        sqlite_in_list(tx, &head, "", ids).await?;
        sqlite_in_list(tx, "DELETE FROM seats WHERE reservation_id IN (", "", ids).await?;
    }
    sqlite_in_list(
        tx,
        "UPDATE reservations SET status = 'CONFIRMED' WHERE id IN (",
        "",
        &rows.confirmed,
    )
    .await?;
    sqlite_in_list(
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
        run!(qb, tx);
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
        run!(qb, tx);
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
        run!(qb, tx);
    }
    for (active_until, tokens) in &rows.admitted {
        let head = format!("UPDATE queue_tokens SET status = 'ACTIVE', active_until = {active_until} WHERE token IN (");
        sqlite_in_list(tx, &head, " AND status = 'WAITING'", tokens).await?;
    }
    let expired: Vec<_> = rows.expired.iter().cloned().collect();
    sqlite_in_list(
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
        run!(qb, tx);
    }
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

/// The table rows on PostgreSQL: one statement per table, so the SQL text
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
async fn write_postgres(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, rows: &Rows) -> Result<(), sqlx::Error> {
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

/// The journal rows in multi-row INSERTs of [`JOURNAL_CHUNK_ROWS`]; the
/// number of rows inserted (positions committed already are skipped).
async fn journal_sqlite(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, rows: &JournalRows) -> Result<u64, sqlx::Error> {
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
/// committed already is skipped, not an error: see [`confirm_retry`].
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

/// The journal rows in one statement; the number of rows inserted. A
/// position committed already fails the statement (unique violation): see
/// [`commit_journal`].
async fn journal_postgres(
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

/// The stored journal rows from `first` to `last` (pos, kind, payload).
const STORED_ROWS_SQLITE: &str = "SELECT pos, kind, payload FROM journal WHERE pos >= ?1 AND pos <= ?2 ORDER BY pos";
const STORED_ROWS_POSTGRES: &str = "SELECT pos, kind, payload FROM journal WHERE pos >= $1 AND pos <= $2 ORDER BY pos";

/// Some positions of `rows` were in the journal already: the commit is the
/// retry of one whose acknowledgement was lost (the connection died after
/// the database committed, or a statement timed out in the driver after
/// it). That is fine when those positions hold exactly these events, and
/// then the commit counts as done; any other event there is
/// [`WriteError::Conflict`]. Never a duplicate-key error that the flusher
/// would retry forever, holding every later write back.
fn confirm_retry(rows: &JournalRows, stored: &[(i64, String, Vec<u8>)]) -> Result<(), WriteError> {
    rows.match_stored(stored)?;
    tracing::warn!(
        first = rows.pos.first().copied().unwrap_or_default(),
        last = rows.pos.last().copied().unwrap_or_default(),
        "a journal batch was committed already (its acknowledgement was lost); recognised, not written twice"
    );
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
    commit_journal(db, &rows).await
}

/// One transaction of journal rows (SQLite: on the journal file).
async fn commit_journal(db: &Db, rows: &JournalRows) -> Result<(), WriteError> {
    if rows.pos.is_empty() {
        return Ok(());
    }
    let inserted = match db {
        // One statement is a transaction of its own (autocommit): one round
        // trip to the connection's thread instead of three (BEGIN, INSERT,
        // COMMIT), and what a durable write waits for.
        Db::Sqlite(db) if rows.pos.len() <= JOURNAL_CHUNK_ROWS => {
            insert_journal_rows(&db.journal, 0..rows.pos.len(), rows).await?
        }
        Db::Sqlite(db) => {
            let mut tx = db.journal.begin().await?;
            let inserted = journal_sqlite(&mut tx, rows).await?;
            tx.commit().await?;
            inserted
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            match journal_postgres(&mut tx, rows).await {
                Ok(inserted) => {
                    tx.commit().await?;
                    inserted
                }
                // Some positions were committed already (a lost
                // acknowledgement): nothing of this statement was applied.
                // Check those below, then write the rest.
                Err(err) if is_unique_violation(&err) => {
                    drop(tx);
                    let stored = stored_postgres(pool, rows).await?;
                    let missing = rows.missing_from(&stored)?;
                    if !missing.pos.is_empty() {
                        let mut tx = pool.begin().await?;
                        journal_postgres(&mut tx, &missing).await?;
                        tx.commit().await?;
                    }
                    tracing::warn!(
                        first = rows.pos[0],
                        last = rows.pos[rows.pos.len() - 1],
                        already = stored.len(),
                        "journal rows were committed already (an acknowledgement was lost); recognised, not written twice"
                    );
                    return Ok(());
                }
                Err(err) => return Err(err.into()),
            }
        }
    };
    if inserted < rows.pos.len() as u64 {
        let (first, last) = (rows.pos[0], rows.pos[rows.pos.len() - 1]);
        let stored: Vec<(i64, String, Vec<u8>)> = match db {
            Db::Sqlite(db) => {
                sqlx::query_as(STORED_ROWS_SQLITE)
                    .bind(first)
                    .bind(last)
                    .fetch_all(&db.journal)
                    .await?
            }
            Db::Postgres(pool) => stored_postgres(pool, rows).await?,
        };
        confirm_retry(rows, &stored)?;
    }
    Ok(())
}

/// One stored journal row: position, kind, payload, checksum (NULL for
/// rows written before checksums).
pub type JournalRow = (i64, String, Vec<u8>, Option<i64>);

/// The journal rows after `after` up to `through` (inclusive), in order, at
/// most `limit`: the one reader of journal pages (recovery's replay and its
/// check of unreplayed rows, the persister's catch-up).
pub async fn read_journal_page(db: &Db, after: i64, through: i64, limit: i64) -> Result<Vec<JournalRow>, sqlx::Error> {
    match db {
        Db::Sqlite(db) => {
            sqlx::query_as(
                "SELECT pos, kind, payload, checksum FROM journal WHERE pos > ?1 AND pos <= ?2 ORDER BY pos LIMIT ?3",
            )
            .bind(after)
            .bind(through)
            .bind(limit)
            .fetch_all(&db.journal)
            .await
        }
        Db::Postgres(pool) => {
            sqlx::query_as(
                "SELECT pos, kind, payload, checksum FROM journal WHERE pos > $1 AND pos <= $2 ORDER BY pos LIMIT $3",
            )
            .bind(after)
            .bind(through)
            .bind(limit)
            .fetch_all(pool)
            .await
        }
    }
}

/// Whether a statement failed on a key that exists (SQLSTATE 23505).
fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "23505")
}

/// The stored journal rows in the positions of `rows` (PostgreSQL).
async fn stored_postgres(pool: &sqlx::PgPool, rows: &JournalRows) -> Result<Vec<(i64, String, Vec<u8>)>, sqlx::Error> {
    let (first, last) = (rows.pos[0], rows.pos[rows.pos.len() - 1]);
    sqlx::query_as(STORED_ROWS_POSTGRES)
        .bind(first)
        .bind(last)
        .fetch_all(pool)
        .await
}

/// Folds committed `events` (the ones right after `projected_pos`, in order)
/// into the normalized tables and moves `projected_pos` to the last of them,
/// in one transaction.
pub async fn project(db: &Db, events: &[(JournalPos, Event)]) -> Result<(), WriteError> {
    commit_tables(db, None, events).await
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
        Db::Sqlite(_) => {
            commit_journal(db, &journal).await?;
            commit_tables(db, None, events).await
        }
        Db::Postgres(_) => commit_tables(db, Some(&journal), events).await,
    }
}

/// One transaction: the journal rows (if any; PostgreSQL only, SQLite's are
/// in another file), the table rows of `events`, and `projected_pos` = the
/// last of them. No events: nothing to do.
///
/// Both read `projected_pos` first (PostgreSQL locks its row) and fold only
/// the events after it: two writers projecting the same
/// events (a retry after a commit whose outcome was lost with its
/// connection, or a second server on the database) take turns, and the
/// second finds them projected. Events must follow `projected_pos` without
/// a gap ([`WriteError::Gap`]).
async fn commit_tables(
    db: &Db,
    journal: Option<&JournalRows>,
    events: &[(JournalPos, Event)],
) -> Result<(), WriteError> {
    let Some(last) = last_pos(events) else {
        return Ok(());
    };
    match db {
        Db::Sqlite(db) => {
            debug_assert!(journal.is_none(), "SQLite's journal is committed to its own file");
            let mut tx = db.main.begin().await?;
            let projected: i64 = sqlx::query_scalar("SELECT projected_pos FROM projection WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
            let fresh = after_projected(events, projected)?;
            if fresh.is_empty() {
                return Ok(());
            }
            write_sqlite(&mut tx, &Rows::fold(fresh)).await?;
            sqlx::query("UPDATE projection SET projected_pos = ?1 WHERE id = 1")
                .bind(last)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let projected: i64 = sqlx::query_scalar("SELECT projected_pos FROM projection WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
            let fresh = after_projected(events, projected)?;
            match journal {
                Some(journal) => {
                    if journal_postgres(&mut tx, journal).await? < journal.pos.len() as u64 {
                        let stored: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(STORED_ROWS_POSTGRES)
                            .bind(journal.pos.first().copied().unwrap_or_default())
                            .bind(journal.pos.last().copied().unwrap_or_default())
                            .fetch_all(&mut *tx)
                            .await?;
                        confirm_retry(journal, &stored)?;
                    }
                }
                // A projection alone need not wait for its WAL flush: the
                // journal already holds its events durably, a crash that
                // loses it only lowers `projected_pos` with the tables, and
                // any later synchronous commit (the pruning one included)
                // flushes the WAL up to itself, this commit included.
                None => {
                    sqlx::query("SET LOCAL synchronous_commit TO OFF")
                        .execute(&mut *tx)
                        .await?;
                }
            }
            if !fresh.is_empty() {
                write_postgres(&mut tx, &Rows::fold(fresh)).await?;
                sqlx::query("UPDATE projection SET projected_pos = $1 WHERE id = 1")
                    .bind(last)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// The events of `events` (consecutive positions) after `projected`.
fn after_projected(events: &[(JournalPos, Event)], projected: i64) -> Result<&[(JournalPos, Event)], WriteError> {
    let Some(first) = events.first().map(|(pos, _)| id(*pos)) else {
        return Ok(events);
    };
    if first > projected.saturating_add(1) {
        return Err(WriteError::Gap { projected, first });
    }
    let done = events.partition_point(|(pos, _)| id(*pos) <= projected);
    Ok(&events[done..])
}

/// The last journal position the tables reflect.
pub async fn projected_pos(db: &Db) -> Result<JournalPos, sqlx::Error> {
    let sql = "SELECT projected_pos FROM projection WHERE id = 1";
    let pos: Option<i64> = match db {
        Db::Sqlite(db) => sqlx::query_scalar(sql).fetch_optional(&db.main).await?,
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_optional(pool).await?,
    };
    Ok(pos.map_or(0, |p| u64::try_from(p).unwrap_or_default()))
}
