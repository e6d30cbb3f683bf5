//! Injecting a fault into the round's database. Each function returns when
//! the fault is over (locks released, instance back, space freed), with one
//! line saying what it did; an error means the fault could not be injected
//! as intended (the round then fails: a fault drill without its fault
//! proves nothing).

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection, PgConnection};

use super::{Environment, Fault};
use crate::database::{journal_path, ScratchDatabase};

/// Bounds how long taking the stall's locks may wait for the server's own.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Tries at taking them (a deadlock with the server's transactions ends one).
const LOCK_TRIES: u32 = 20;
/// [`Fault::PgTerminate`] kills the connections once per this interval.
const TERMINATE_EVERY: Duration = Duration::from_secs(1);

/// Injects `fault` for `duration` (a restart takes as long as it takes);
/// `round` picks the restart mode: odd rounds `immediate` (no shutdown
/// checkpoint, crash recovery at start: seconds of downtime, so a single
/// round, as in `cargo test`, does bite), even rounds `fast`.
pub async fn inject(
    fault: Fault,
    database: &ScratchDatabase,
    env: &Environment,
    duration: Duration,
    round: u32,
) -> Result<String, String> {
    match (fault, env) {
        (Fault::Stall, _) => match &database.sqlite_file {
            Some(main) => stall_sqlite(main, duration).await,
            None => stall_postgres(&database.url, duration).await,
        },
        (Fault::PgRestart, Environment::Private(instance)) => {
            instance
                .restart(if round % 2 == 1 { "immediate" } else { "fast" })
                .await
        }
        (Fault::PgTerminate, _) => {
            let name = database
                .postgres_name()
                .ok_or("pg-terminate needs a PostgreSQL database")?;
            terminate(&database.url, name, duration).await
        }
        (Fault::DiskFull, Environment::Tmpfs(mount)) => mount.fill_for(duration).await,
        (fault, _) => Err(format!("fault {fault} cannot be injected in this round's environment")),
    }
}

/// One transaction holding `LOCK TABLE <every table> IN ACCESS EXCLUSIVE
/// MODE` on the round's database for `duration`.
async fn stall_postgres(url: &str, duration: Duration) -> Result<String, String> {
    let mut conn = PgConnection::connect(url)
        .await
        .map_err(|err| format!("stall: cannot connect: {err}"))?;
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(|err| format!("stall: cannot list the tables: {err}"))?;
    if tables.is_empty() {
        return Err("stall: the database has no tables to lock".to_owned());
    }
    let list: Vec<&str> = tables.iter().map(|(name,)| name.as_str()).collect();
    let lock = format!(
        "SET LOCAL lock_timeout = '{}ms'; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        LOCK_WAIT.as_millis(),
        list.join(", ")
    );
    let asked = Instant::now();
    let mut tries = 0;
    // The tables are locked one after another while the server's own
    // transactions hold some of them: PostgreSQL may pick this transaction
    // as a deadlock's victim. Then it is tried again.
    loop {
        tries += 1;
        sqlx::raw_sql("BEGIN")
            .execute(&mut conn)
            .await
            .map_err(|err| format!("stall: BEGIN: {err}"))?;
        match sqlx::raw_sql(&lock).execute(&mut conn).await {
            Ok(_) => break,
            Err(err) => {
                // The failed transaction is over either way; a connection
                // that cannot even roll back fails the next BEGIN.
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
                if tries >= LOCK_TRIES || asked.elapsed() >= LOCK_WAIT {
                    return Err(format!("stall: LOCK TABLE (try {tries}): {err}"));
                }
            }
        }
    }
    let waited = asked.elapsed();
    let (count, names) = (list.len(), list.join(", "));
    tokio::time::sleep(duration).await;
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut conn)
        .await
        .map_err(|err| format!("stall: ROLLBACK: {err}"))?;
    // Best effort: the locks went with the ROLLBACK.
    let _ = conn.close().await;
    Ok(format!(
        "held ACCESS EXCLUSIVE locks on all {} tables ({}) for {:.1}s (waited {} ms and {tries} tries to take \
         them)",
        count,
        names,
        duration.as_secs_f64(),
        waited.as_millis()
    ))
}

/// `BEGIN EXCLUSIVE` on the main file and on the journal file, held for
/// `duration`: the write lock of each (readers of a WAL database go on).
async fn stall_sqlite(main: &Path, duration: Duration) -> Result<String, String> {
    let journal = journal_path(main);
    let asked = Instant::now();
    let mut held = Vec::new();
    for file in [main, journal.as_path()] {
        let mut conn = SqliteConnectOptions::new()
            .filename(file)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(LOCK_WAIT)
            .connect()
            .await
            .map_err(|err| format!("stall: cannot open {}: {err}", file.display()))?;
        sqlx::raw_sql("BEGIN EXCLUSIVE")
            .execute(&mut conn)
            .await
            .map_err(|err| format!("stall: BEGIN EXCLUSIVE on {}: {err}", file.display()))?;
        held.push(conn);
    }
    let waited = asked.elapsed();
    tokio::time::sleep(duration).await;
    for mut conn in held {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut conn)
            .await
            .map_err(|err| format!("stall: ROLLBACK: {err}"))?;
        // Best effort: the lock went with the ROLLBACK.
        let _ = conn.close().await;
    }
    Ok(format!(
        "held the write locks (BEGIN EXCLUSIVE) of {} and {} for {:.1}s (waited {} ms to take them)",
        main.display(),
        journal.display(),
        duration.as_secs_f64(),
        waited.as_millis()
    ))
}

/// `pg_terminate_backend` of every other connection to database `name`
/// (and only to it), once per [`TERMINATE_EVERY`] for `duration`.
async fn terminate(url: &str, name: &str, duration: Duration) -> Result<String, String> {
    let mut conn = PgConnection::connect(url)
        .await
        .map_err(|err| format!("terminate: cannot connect: {err}"))?;
    let started = Instant::now();
    let mut sweeps = 0u32;
    let mut killed = Vec::new();
    loop {
        let results: Vec<(Option<bool>,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .fetch_all(&mut conn)
        .await
        .map_err(|err| format!("terminate: {err}"))?;
        sweeps += 1;
        killed.push(results.iter().filter(|(done,)| *done == Some(true)).count());
        if started.elapsed() + TERMINATE_EVERY > duration {
            break;
        }
        tokio::time::sleep(TERMINATE_EVERY).await;
    }
    // Best effort: the connection is dropped either way.
    let _ = conn.close().await;
    let total: usize = killed.iter().sum();
    if total == 0 {
        return Err(format!(
            "terminate: {sweeps} sweeps over database {name} found no server connection to kill"
        ));
    }
    Ok(format!(
        "pg_terminate_backend killed {total} connections to database {name} in {sweeps} sweeps {:.1}s apart \
         (per sweep: {killed:?})",
        TERMINATE_EVERY.as_secs_f64()
    ))
}
