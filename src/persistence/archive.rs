//! Reads of what has left memory, from the tables: reservations that
//! finished more than `CONCERT_FINISHED_RETENTION` ago (the engine retires
//! them only once the tables hold them as they are, see
//! `concert_actors::concert::Concert::retire_finished`), and the pruning of
//! idempotency records past `CONCERT_IDEMPOTENCY_TTL`.
//!
//! Everything here answers what memory would have answered: a retired
//! reservation never changes again (CANCELLED and EXPIRED are final), so the
//! table row is the reservation.

use std::collections::BTreeMap;

use concert_actors::accounts::{LedgerEntry, LedgerKind};
use concert_actors::concert::{Reservation, ReservationStatus};
use concert_actors::types::{MemberId, ReservationId};

use super::db::Db;

type ReservationRow = (i64, i64, i64, i64, String, i64, i64);

const COLUMNS: &str = "id, concert_id, member_id, amount, status, created_at, expires_at";

/// The reservation `id` as the tables hold it.
pub async fn reservation(db: &Db, id: ReservationId) -> Result<Option<Reservation>, sqlx::Error> {
    let id = to_i64(id);
    let row: Option<ReservationRow> = match db {
        Db::Sqlite(files) => {
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM reservations WHERE id = ?1"))
                .bind(id)
                .fetch_optional(&files.main)
                .await?
        }
        Db::Postgres(pool) => {
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM reservations WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?
        }
    };
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(with_seats(db, vec![row]).await?.pop())
}

/// The `limit` newest reservations of `member` in the tables with ids
/// below `before` (all when `None`), newest first.
pub async fn member_reservations(
    db: &Db,
    member: MemberId,
    before: Option<ReservationId>,
    limit: usize,
) -> Result<Vec<Reservation>, sqlx::Error> {
    let member = to_i64(member);
    let before = before.map_or(i64::MAX, to_i64);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<ReservationRow> = match db {
        Db::Sqlite(files) => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM reservations WHERE member_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
            ))
            .bind(member)
            .bind(before)
            .bind(limit)
            .fetch_all(&files.main)
            .await?
        }
        Db::Postgres(pool) => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM reservations WHERE member_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
            ))
            .bind(member)
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }
    };
    with_seats(db, rows).await
}

/// The balance-history entries `range` of `member` (counted in journal
/// order from the first ever, as `Accounts::history` counts them), oldest first.
pub async fn history(db: &Db, member: MemberId, range: std::ops::Range<u64>) -> Result<Vec<LedgerEntry>, sqlx::Error> {
    let member = to_i64(member);
    let offset = i64::try_from(range.start).unwrap_or(i64::MAX);
    let count = i64::try_from(range.end.saturating_sub(range.start)).unwrap_or(0);
    let sql = "SELECT kind, amount, balance_after, at FROM balance_history WHERE member_id = {1} \
               ORDER BY journal_pos LIMIT {2} OFFSET {3}";
    let rows: Vec<(String, i64, i64, i64)> = match db {
        Db::Sqlite(files) => {
            sqlx::query_as(&sql.replace("{1}", "?1").replace("{2}", "?2").replace("{3}", "?3"))
                .bind(member)
                .bind(count)
                .bind(offset)
                .fetch_all(&files.main)
                .await?
        }
        Db::Postgres(pool) => {
            sqlx::query_as(&sql.replace("{1}", "$1").replace("{2}", "$2").replace("{3}", "$3"))
                .bind(member)
                .bind(count)
                .bind(offset)
                .fetch_all(pool)
                .await?
        }
    };
    rows.into_iter()
        .map(|(kind, amount, balance_after, at_ms)| {
            let kind = match kind.as_str() {
                "CHARGE" => LedgerKind::Charge,
                "PAYMENT" => LedgerKind::Payment,
                other => {
                    return Err(sqlx::Error::Decode(
                        format!("unknown balance history kind {other:?}").into(),
                    ))
                }
            };
            Ok(LedgerEntry {
                kind,
                amount,
                balance_after,
                at_ms,
            })
        })
        .collect()
}

/// Deletes the idempotency records made at or before `through_ms`; returns how many.
pub async fn prune_idempotency(db: &Db, through_ms: i64) -> Result<u64, sqlx::Error> {
    let done = match db {
        Db::Sqlite(files) => sqlx::query("DELETE FROM idempotency_records WHERE created_at <= ?1")
            .bind(through_ms)
            .execute(&files.main)
            .await?
            .rows_affected(),
        Db::Postgres(pool) => sqlx::query("DELETE FROM idempotency_records WHERE created_at <= $1")
            .bind(through_ms)
            .execute(pool)
            .await?
            .rows_affected(),
    };
    Ok(done)
}

/// The rows with their seats (one query for all of them), in the rows' order.
async fn with_seats(db: &Db, rows: Vec<ReservationRow>) -> Result<Vec<Reservation>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = rows.iter().map(|row| row.0).collect();
    let seat_rows: Vec<(i64, i64)> = match db {
        Db::Sqlite(files) => {
            // At most a page of ids (100): bound one by one.
            let marks = (1..=ids.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT reservation_id, seat_no FROM reservation_seats WHERE reservation_id IN ({marks}) \
                 ORDER BY reservation_id, seat_no"
            );
            let mut query = sqlx::query_as(&sql);
            for id in &ids {
                query = query.bind(*id);
            }
            query.fetch_all(&files.main).await?
        }
        Db::Postgres(pool) => {
            sqlx::query_as(
                "SELECT reservation_id, seat_no FROM reservation_seats WHERE reservation_id = ANY($1) \
                 ORDER BY reservation_id, seat_no",
            )
            .bind(&ids)
            .fetch_all(pool)
            .await?
        }
    };
    let mut seats_of: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (reservation, seat) in seat_rows {
        seats_of
            .entry(reservation)
            .or_default()
            .push(u32::try_from(seat).unwrap_or(0));
    }
    rows.into_iter()
        .map(
            |(id, concert_id, member_id, amount, status, created_at_ms, expires_at_ms)| {
                Ok(Reservation {
                    id: to_u64(id),
                    concert_id: to_u64(concert_id),
                    member_id: to_u64(member_id),
                    seats: seats_of.remove(&id).unwrap_or_default(),
                    amount,
                    status: status_named(&status)?,
                    created_at_ms,
                    expires_at_ms,
                })
            },
        )
        .collect()
}

fn status_named(name: &str) -> Result<ReservationStatus, sqlx::Error> {
    match name {
        "PENDING_PAYMENT" => Ok(ReservationStatus::PendingPayment),
        "CONFIRMED" => Ok(ReservationStatus::Confirmed),
        "EXPIRED" => Ok(ReservationStatus::Expired),
        "CANCELLED" => Ok(ReservationStatus::Cancelled),
        other => Err(sqlx::Error::Decode(
            format!("unknown reservation status {other:?} in the reservations table").into(),
        )),
    }
}

fn to_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

fn to_u64(id: i64) -> u64 {
    u64::try_from(id).unwrap_or_default()
}
