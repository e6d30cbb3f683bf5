//! Start-up recovery: rebuild the engine's state from the database.
//!
//! 1. The newest snapshot that decodes (magic, version, length, checksum)
//!    plus the journal after its position, replayed idempotently; the result
//!    must pass every invariant, else the next older snapshot is tried.
//! 2. Otherwise the normalized tables, which reflect the journal up to
//!    `projection.projected_pos` (the persister projects them after the
//!    durable journal commit), plus the journal after that position, replayed
//!    the same way. Pruning never deletes journal rows the tables have not
//!    absorbed, so that journal is complete.
//!
//! Either way the result equals the state committed before the crash.
//!
//! On SQLite the journal is a file of its own (see `db`): the snapshots and
//! tables come from the main file, the journal rows from the journal file,
//! and a journal file that ends before the main file's `projected_pos` or
//! newest snapshot is refused (`check_journal_file`).
//!
//! The journal's end and the snapshots are read by each database's file
//! (`sqlite.rs`, `postgres.rs`), the journal pages through
//! `writer::read_journal_page`; the tables, whose queries are the same text
//! on both databases, through one read transaction (`db::ReadTx`).

use std::collections::BTreeMap;
use std::time::Instant;

use concert_actors::accounts::{Account, LedgerEntry, LedgerKind, HISTORY_IN_MEMORY};
use concert_actors::concert::{Concert, ConcertInfo, Reservation, ReservationStatus};
use concert_actors::idempotency::{IdempotencyRecord, IdempotencyScope, IdempotentEndpoint, StoredResponse};
use concert_actors::pricing::{PriceTier, Pricing};
use concert_actors::queue::{TokenId, TokenRecord, TokenStatus};
use concert_actors::types::JournalPos;
use concert_actors::EngineState;

use super::codec::{check_journal_row, decode_event, decode_snapshot};
use super::db::{Db, ReadTx, SqliteDb};
use super::writer::{projected_pos, read_journal_page};
use super::{postgres, sqlite};

/// Journal rows read per query during replay.
const REPLAY_PAGE: i64 = 10_000;

/// id, title, category, venue, starts_at, seat_count, price, price_tiers.
type ConcertColumns = (i64, String, String, String, i64, i64, i64, String);
/// pos, kind, payload, checksum (NULL in rows written before checksums).
/// member_id, endpoint, key, fingerprint, status, body, created_at.
type IdempotencyColumns = (i64, String, String, Vec<u8>, i64, Vec<u8>, i64);

pub struct Recovered {
    pub state: EngineState,
    /// The last journal position ever used: the persister continues after it.
    pub last_pos: JournalPos,
    pub source: String,
}

fn sql_err(e: sqlx::Error) -> String {
    format!("recovery query failed: {e}")
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

/// Rebuilds the state (idempotency records past their TTL are pruned
/// afterwards, by `crate::retention`).
pub async fn recover(db: &Db) -> Result<Recovered, String> {
    let started = Instant::now();
    let max_journal = journal_end(db).await.map_err(sql_err)?;
    let snapshots = match db {
        Db::Sqlite(db) => sqlite::snapshot_positions(db).await,
        Db::Postgres(pool) => postgres::snapshot_positions(pool).await,
    }
    .map_err(sql_err)?;
    let max_snapshot = snapshots.iter().map(|s| s.1).max();
    let projected = projected_pos(db).await.map_err(sql_err)?;
    if let Db::Sqlite(files) = db {
        check_journal_file(files, max_journal.unwrap_or(0), max_snapshot.unwrap_or(0), projected)?;
    }
    let last_pos = to_u64(max_journal.unwrap_or(0).max(max_snapshot.unwrap_or(0)));
    for (id, pos) in snapshots {
        match from_snapshot(db, id, to_u64(pos)).await {
            Ok(state) => {
                check_unreplayed_rows(db, projected, to_u64(pos))
                    .await
                    .map_err(|err| corrupt_journal(&err))?;
                tracing::info!(
                    snapshot = id,
                    journal_pos = pos,
                    took_ms = started.elapsed().as_millis() as u64,
                    "recovered from snapshot and journal"
                );
                return Ok(Recovered {
                    state,
                    last_pos,
                    source: format!("snapshot {id}"),
                });
            }
            Err(Failure::CorruptJournal(err)) => return Err(corrupt_journal(&err)),
            Err(Failure::Source(err)) => tracing::warn!(snapshot = id, error = %err, "snapshot skipped"),
        }
    }
    let mut state = match from_tables(db).await {
        Ok(state) => state,
        Err(Failure::CorruptJournal(err)) => return Err(corrupt_journal(&err)),
        Err(Failure::Source(err)) => return Err(err),
    };
    state.journal_pos = last_pos;
    checked(&state)?;
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "recovered from the tables"
    );
    Ok(Recovered {
        state,
        last_pos,
        source: "tables".into(),
    })
}

/// The last committed journal position: the last row's, or on SQLite the
/// journal file's `committed_through` when larger (its rows up to there may
/// have been pruned).
async fn journal_end(db: &Db) -> Result<Option<i64>, sqlx::Error> {
    match db {
        Db::Sqlite(db) => sqlite::journal_end(db).await,
        Db::Postgres(pool) => postgres::journal_end(pool).await,
    }
}

/// SQLite keeps the journal in a file of its own: refuse a journal file that
/// ends before what the main file says was committed (its `projected_pos`,
/// its newest snapshot). That journal file is missing (recreated empty) or
/// older than the main file, and starting would silently lose acknowledged
/// events, or reuse their positions for new ones.
fn check_journal_file(db: &SqliteDb, journal_end: i64, max_snapshot: i64, projected: JournalPos) -> Result<(), String> {
    let projected = i64::try_from(projected).unwrap_or(i64::MAX);
    if journal_end >= projected && journal_end >= max_snapshot {
        return Ok(());
    }
    let file = db.journal_path.as_ref().map_or_else(
        || "the journal".to_owned(),
        |p| format!("the journal file {}", p.display()),
    );
    Err(format!(
        "{file} ends at position {journal_end}, but the main database file's tables reflect the journal up to \
         position {projected} and its newest snapshot position {max_snapshot}: the journal file is missing or \
         older than the main file, and events acknowledged after position {journal_end} would be lost. Restore \
         both files (and their -wal files) from the same backup"
    ))
}

/// The start-up error for a damaged journal: recovering past it would
/// serve a state nobody committed.
fn corrupt_journal(err: &str) -> String {
    format!(
        "the journal is damaged, recovery stops: {err}. Restore the database from a backup \
         (or repair that row) before starting"
    )
}

fn checked(state: &EngineState) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.check_invariants())).map_err(|panic| {
        match panic.downcast_ref::<String>() {
            Some(msg) => format!("invariant broken: {msg}"),
            None => "invariant broken".to_owned(),
        }
    })
}

async fn from_snapshot(db: &Db, id: i64, pos: JournalPos) -> Result<EngineState, Failure> {
    let bytes = match db {
        Db::Sqlite(db) => sqlite::snapshot_bytes(db, id).await,
        Db::Postgres(pool) => postgres::snapshot_bytes(pool, id).await,
    }
    .map_err(sql_err)?;
    let mut state = decode_snapshot(&bytes).map_err(|e| e.to_string())?;
    if state.journal_pos != pos {
        return Err(Failure::Source(format!(
            "snapshot says position {} but its row says {pos}",
            state.journal_pos
        )));
    }
    replay_after(db, &mut state, pos, "the snapshot is too old").await?;
    checked(&state)?;
    Ok(state)
}

/// Why a source could not be recovered from.
enum Failure {
    /// The journal itself is damaged (a checksum mismatch, a payload that
    /// does not decode, an event that does not apply): every source replays
    /// it, so start-up stops here, naming the position.
    CorruptJournal(String),
    /// This source is unusable (a snapshot that does not decode or is too
    /// old, a broken invariant): the next one may be fine.
    Source(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Source(message)
    }
}

/// Replays the journal after `pos` over `state`; a gap is an error (`gap`
/// says what it means). Every row's checksum is checked before its payload
/// is decoded, and every event must apply.
async fn replay_after(db: &Db, state: &mut EngineState, pos: JournalPos, gap: &str) -> Result<(), Failure> {
    let mut cursor = i64::try_from(pos).unwrap_or(i64::MAX);
    loop {
        let page = read_journal_page(db, cursor, i64::MAX, REPLAY_PAGE)
            .await
            .map_err(sql_err)?;
        let Some(&(last, ..)) = page.last() else {
            break;
        };
        for (row_pos, kind, payload, checksum) in &page {
            if *row_pos != cursor + 1 {
                return Err(Failure::Source(format!("journal gap after position {cursor}: {gap}")));
            }
            check_journal_row(*row_pos, kind, payload, *checksum).map_err(Failure::CorruptJournal)?;
            let event = decode_event(payload)
                .map_err(|e| Failure::CorruptJournal(format!("journal position {row_pos}: {e}")))?;
            state.apply(to_u64(*row_pos), &event).map_err(|e| {
                Failure::CorruptJournal(format!(
                    "journal position {row_pos}: the {kind} event does not apply to the state before it: {e}"
                ))
            })?;
            cursor = *row_pos;
        }
        cursor = last;
    }
    Ok(())
}

/// Checks the journal rows after `projected` up to `through` (checksum,
/// payload decodes). Recovery from a snapshot at `through` does not replay
/// them, but the persister folds them into the tables after start-up, so a
/// damaged one must stop start-up too, not surface later.
async fn check_unreplayed_rows(db: &Db, projected: JournalPos, through: JournalPos) -> Result<(), String> {
    let mut cursor = i64::try_from(projected).unwrap_or(i64::MAX);
    let end = i64::try_from(through).unwrap_or(i64::MAX);
    while cursor < end {
        let page = read_journal_page(db, cursor, end, REPLAY_PAGE).await.map_err(sql_err)?;
        let Some(&(last, ..)) = page.last() else {
            break;
        };
        for (pos, kind, payload, checksum) in &page {
            check_journal_row(*pos, kind, payload, *checksum)?;
            decode_event(payload).map_err(|e| format!("journal position {pos}: {e}"))?;
        }
        cursor = last;
    }
    Ok(())
}

fn reservation_status(name: &str) -> Result<ReservationStatus, String> {
    match name {
        "PENDING_PAYMENT" => Ok(ReservationStatus::PendingPayment),
        "CONFIRMED" => Ok(ReservationStatus::Confirmed),
        "EXPIRED" => Ok(ReservationStatus::Expired),
        "CANCELLED" => Ok(ReservationStatus::Cancelled),
        other => Err(format!("unknown reservation status {other}")),
    }
}

async fn from_tables(db: &Db) -> Result<EngineState, Failure> {
    let mut tx = ReadTx::begin(db).await.map_err(sql_err)?;
    let (projected,): (i64,) = tx
        .fetch_all::<(i64,)>("SELECT projected_pos FROM projection WHERE id = 1")
        .await
        .map_err(sql_err)?
        .into_iter()
        .next()
        .unwrap_or((0,));
    let projected = to_u64(projected);
    let mut state = tables_at_projection(&mut tx, projected).await?;
    drop(tx); // read only: rolled back
    replay_after(db, &mut state, projected, "rows the tables never absorbed were pruned").await?;
    Ok(state)
}

/// The state the tables hold: everything up to `projected`.
async fn tables_at_projection(tx: &mut ReadTx, projected: JournalPos) -> Result<EngineState, String> {
    let mut state = EngineState {
        journal_pos: projected,
        ..EngineState::default()
    };
    let members: Vec<(i64, String, Vec<u8>, i64)> = tx
        .fetch_all("SELECT id, name, key_hash, balance FROM members ORDER BY id")
        .await
        .map_err(sql_err)?;
    for (id, name, key_hash, balance) in members {
        let key_hash: [u8; 32] = key_hash.try_into().map_err(|_| format!("member {id}: bad key hash"))?;
        state.accounts.insert(
            to_u64(id),
            Account {
                balance,
                ..Account::new(name, key_hash, projected)
            },
        );
    }
    let history: Vec<(i64, String, i64, i64, i64)> = tx
        .fetch_all("SELECT member_id, kind, amount, balance_after, at FROM balance_history ORDER BY journal_pos")
        .await
        .map_err(sql_err)?;
    for (member, kind, amount, balance_after, at_ms) in history {
        let kind = if kind == "CHARGE" {
            LedgerKind::Charge
        } else {
            LedgerKind::Payment
        };
        if let Some(account) = state.accounts.get_mut(&to_u64(member)) {
            account.history.push(LedgerEntry {
                kind,
                amount,
                balance_after,
                at_ms,
            });
            // Memory keeps the newest entries; the older ones are read
            // from the tables.
            if account.history.len() >= 2 * HISTORY_IN_MEMORY {
                account.trim_history(HISTORY_IN_MEMORY);
            }
        }
    }
    for account in state.accounts.values_mut() {
        account.trim_history(HISTORY_IN_MEMORY);
    }
    let concerts: Vec<ConcertColumns> = tx
        .fetch_all(
            "SELECT id, title, category, venue, starts_at, seat_count, price, price_tiers FROM concerts ORDER BY id",
        )
        .await
        .map_err(sql_err)?;
    for (id, title, category, venue, starts_at_ms, seat_count, price, tiers) in concerts {
        let seat_count = u32::try_from(seat_count).map_err(|_| format!("concert {id}: bad seat count"))?;
        let tiers: Vec<[i64; 3]> = serde_json::from_str(&tiers).map_err(|e| format!("concert {id}: {e}"))?;
        let tiers = tiers
            .into_iter()
            .map(|[from, to, price]| PriceTier {
                from_seat: u32::try_from(from).unwrap_or(0),
                to_seat: u32::try_from(to).unwrap_or(0),
                price,
            })
            .collect();
        let pricing = Pricing::new(price, tiers, seat_count).map_err(|e| format!("concert {id}: {e}"))?;
        let info = ConcertInfo {
            id: to_u64(id),
            title,
            category,
            venue,
            starts_at_ms,
            seat_count,
            pricing,
        };
        state.next_concert = state.next_concert.max(info.id + 1);
        let mut concert = Concert::new(info);
        concert.set_applied_pos(projected);
        state.concerts.insert(concert.info().id, concert);
    }
    let mut seats_of: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    let seat_rows: Vec<(i64, i64)> = tx
        .fetch_all(
            "SELECT rs.reservation_id, rs.seat_no FROM reservation_seats rs JOIN reservations r ON r.id = rs.reservation_id \
             WHERE r.status IN ('PENDING_PAYMENT', 'CONFIRMED') ORDER BY rs.reservation_id, rs.seat_no",
        )
        .await
        .map_err(sql_err)?;
    for (reservation, seat) in seat_rows {
        seats_of
            .entry(reservation)
            .or_default()
            .push(u32::try_from(seat).unwrap_or(0));
    }
    let reservations: Vec<(i64, i64, i64, i64, String, i64, i64)> = tx
        .fetch_all(
            "SELECT id, concert_id, member_id, amount, status, created_at, expires_at FROM reservations \
             WHERE status IN ('PENDING_PAYMENT', 'CONFIRMED') ORDER BY id",
        )
        .await
        .map_err(sql_err)?;
    // Finished reservations stay in the tables (memory holds the live
    // ones); their ids are still never reused.
    let last_reservation: Vec<(Option<i64>,)> = tx
        .fetch_all("SELECT MAX(id) FROM reservations")
        .await
        .map_err(sql_err)?;
    if let Some(last) = last_reservation.first().and_then(|row| row.0) {
        state.next_reservation = state.next_reservation.max(to_u64(last) + 1);
    }
    for (id, concert_id, member_id, amount, status, created_at_ms, expires_at_ms) in reservations {
        let reservation = Reservation {
            id: to_u64(id),
            concert_id: to_u64(concert_id),
            member_id: to_u64(member_id),
            seats: seats_of.remove(&id).unwrap_or_default(),
            amount,
            status: reservation_status(&status)?,
            created_at_ms,
            expires_at_ms,
        };
        state.next_reservation = state.next_reservation.max(reservation.id + 1);
        let concert = state
            .concerts
            .get_mut(&reservation.concert_id)
            .ok_or_else(|| format!("reservation {id}: unknown concert"))?;
        concert
            .restore_reservation(reservation)
            .map_err(|e| format!("reservation {id}: {e}"))?;
    }
    let (max_payment,): (Option<i64>,) = tx
        .fetch_all::<(Option<i64>,)>("SELECT MAX(id) FROM payments")
        .await
        .map_err(sql_err)?
        .into_iter()
        .next()
        .unwrap_or((None,));
    state.next_payment = to_u64(max_payment.unwrap_or(0)) + 1;
    let tokens: Vec<(Vec<u8>, i64, i64, String, i64, i64)> = tx
        .fetch_all("SELECT token, member_id, seq, status, active_until, issued_at FROM queue_tokens ORDER BY seq")
        .await
        .map_err(sql_err)?;
    for (token, member, seq, status, active_until_ms, issued_at) in tokens {
        let token = TokenId::from_bytes(&token).ok_or_else(|| format!("queue token {seq}: bad length"))?;
        let status = match status.as_str() {
            "WAITING" => TokenStatus::Waiting,
            "ACTIVE" => TokenStatus::Active,
            _ => TokenStatus::Expired,
        };
        state.tokens.insert(
            token,
            TokenRecord {
                token,
                member: to_u64(member),
                seq: to_u64(seq),
                status,
                active_until_ms,
                last_seen_ms: issued_at,
            },
        );
    }
    let records: Vec<IdempotencyColumns> = tx
        .fetch_all("SELECT member_id, endpoint, key, fingerprint, status, body, created_at FROM idempotency_records")
        .await
        .map_err(sql_err)?;
    for (member, endpoint, key, fingerprint, status, body, at_ms) in records {
        let Some(endpoint) = IdempotentEndpoint::parse(&endpoint) else {
            return Err(format!(
                "idempotency record of member {member} names an unknown endpoint `{endpoint}`"
            ));
        };
        state.idempotency.push(IdempotencyRecord {
            scope: IdempotencyScope {
                member: to_u64(member),
                endpoint,
                key,
            },
            fingerprint: fingerprint.try_into().unwrap_or([0; 32]),
            response: StoredResponse {
                status: u16::try_from(status).unwrap_or(500),
                body,
            },
            at_ms,
        });
    }
    Ok(state)
}
