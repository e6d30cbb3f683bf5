//! The database handle: SQLite (embedded default) or PostgreSQL, chosen by
//! the URL. Connecting creates the SQLite files and their folder, turns on
//! WAL and applies the migrations of `migrations/<backend>/`.
//!
//! On SQLite the journal has a file of its own, beside the main file the URL
//! names (`data/concert.db` -> `data/concert.journal.db`, see
//! [`journal_path`]), with its own pool, WAL, write lock and migrations
//! (`migrations/sqlite_journal/`): a SQLite file has one writer at a time, and
//! with the journal apart, journal commits and the projection into the main
//! file's tables run at the same time. Everything else (tables,
//! `projected_pos`, snapshots, settings) stays in the main file. PostgreSQL
//! is one database.
//!
//! SQLite checkpoints are kept out of the commits: every connection has
//! `wal_autocheckpoint = 0` (otherwise the commit that crosses 1,000 WAL
//! pages copies them into the database file and fsyncs it, inside the
//! durable commit's latency), and a background task runs a PASSIVE
//! checkpoint every [`CHECKPOINT_INTERVAL`] on its own connection, which
//! does not block the writer. A writer that never pauses can keep a PASSIVE
//! checkpoint from ever catching up, and the WAL is reused from its start
//! only once one has, so when the WAL holds more than [`WAL_RESTART_FRAMES`]
//! after a PASSIVE checkpoint, a RESTART checkpoint follows: it briefly
//! holds new writers back (they wait in the busy handler) while it copies
//! the few frames written since, and makes the next writer start the WAL
//! over. The WAL file thus stays bounded. Each SQLite file has its own task.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use super::{postgres, sqlite};

/// How long a statement waits for a locked SQLite database.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections per pool: one writer (the persister) plus readers at start-up.
const MAX_CONNECTIONS: u32 = 4;
/// How often the background task checkpoints the SQLite WAL.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// WAL frames (pages) past which a RESTART checkpoint follows the PASSIVE one.
pub const WAL_RESTART_FRAMES: i64 = 8_192;
/// SQLite page cache per connection, in KiB when negative (64 MiB): the
/// writer's cache holds a projection slice's dirty pages and the hot index
/// pages; idle connections stay small (the cache fills only as pages are read).
const SQLITE_CACHE_SIZE: &str = "-65536";
/// How long connecting may take before start-up fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// What the journal file's name adds to the main file's stem.
pub const JOURNAL_FILE_INFIX: &str = "journal";
/// Name prefixes of the two files' connection threads (sqlx runs every
/// SQLite connection on a thread of its own), so that a profile or `top -H`
/// tells the projection's work from the journal's.
const TABLE_THREAD_PREFIX: &str = "sqlite-tables-";
const JOURNAL_THREAD_PREFIX: &str = "sqlite-journal-";

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static SQLITE_JOURNAL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite_journal");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqliteDb),
    Postgres(PgPool),
}

/// A SQLite database is two files, each with its own WAL and write lock, so
/// that journal commits and the projection run at the same time.
#[derive(Clone, Debug)]
pub struct SqliteDb {
    /// The main file (`DATABASE_URL`): the normalized tables,
    /// `projection.projected_pos`, snapshots and settings.
    pub main: SqlitePool,
    /// The journal file (see [`journal_path`]): the `journal` table.
    pub journal: SqlitePool,
    /// The journal file's path (`None` for an in-memory database).
    pub journal_path: Option<PathBuf>,
}

/// The journal file beside the SQLite main file `main`: `data/concert.db`
/// gives `data/concert.journal.db` (`data/concert` gives `data/concert.journal`).
pub fn journal_path(main: &Path) -> PathBuf {
    let stem = main
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match main.extension() {
        Some(ext) => format!("{stem}.{JOURNAL_FILE_INFIX}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{JOURNAL_FILE_INFIX}"),
    };
    main.with_file_name(name)
}

/// Whether a `sqlite:` URL names an in-memory database (`sqlite::memory:`,
/// `?mode=memory`).
pub(crate) fn sqlite_in_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    database == ":memory:" || params.split('&').any(|param| param == "mode=memory")
}

/// The settings both SQLite files are opened with.
fn sqlite_options(options: SqliteConnectOptions) -> SqliteConnectOptions {
    options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit survives power loss, not just kill -9.
        .synchronous(SqliteSynchronous::Full)
        .pragma("wal_autocheckpoint", "0")
        // A projection slice dirties thousands of pages spread over
        // several indexes; with the default 2 MB cache they spill
        // into the WAL mid-transaction and are read back (perf:
        // `pagerStress` 16% and `readDbPage` 7% of the bench's CPU).
        .pragma("cache_size", SQLITE_CACHE_SIZE)
        // Statement journals (multi-row statements with conflict
        // clauses and foreign keys) in memory, not in temp files
        // (perf: `subjournalPageIfRequired` 17%).
        .pragma("temp_store", "memory")
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
}

async fn sqlite_pool(options: SqliteConnectOptions, what: &str) -> Result<SqlitePool, String> {
    sqlite_pool_options(MAX_CONNECTIONS)
        .connect_with(options)
        .await
        .map_err(|e| format!("cannot open the SQLite {what}: {e}"))
}

fn sqlite_pool_options(max_connections: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        // No ping before each use: a SQLite connection is an open file, not
        // a socket that can go stale, and the ping is a round trip to the
        // connection's thread in front of every journal commit.
        .test_before_acquire(false)
        .after_release(|conn, _| Box::pin(outside_transaction(conn)))
}

/// Whether a SQLite connection coming back to the pool is outside any
/// transaction, both as SQLite sees it and as sqlx counts it; one that is not
/// is closed instead of reused.
///
/// Why: SQLite rolls the whole transaction back by itself when a statement
/// fails with `SQLITE_FULL` (a full disk) or an I/O error. sqlx does not
/// know; the dropped transaction's `ROLLBACK` then fails ("no transaction is
/// active") and sqlx's transaction depth stays at 1. From then on `begin`
/// on that connection issues `SAVEPOINT` and `commit` issues `RELEASE`, and
/// after the next failed statement (`ROLLBACK TO` keeps the transaction
/// open) every "commit" on it only releases a savepoint inside a transaction
/// that never commits: reported committed, visible to that connection, lost
/// at the next crash. That is how a full disk made the main file lose the
/// snapshots and `projected_pos` the journal file had been pruned after
/// (docs/RELIABILITY.md, `drill --fault disk-full`).
async fn outside_transaction(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    // Locking the handle waits for the connection's thread to run what was
    // queued before it (the dropped transaction's rollback).
    let mut handle = conn.lock_handle().await?;
    let raw = handle.as_raw_handle();
    // SAFETY: the handle is locked away from the connection's thread for the
    // call, and `raw` is its open database handle.
    let autocommit = unsafe { libsqlite3_sys::sqlite3_get_autocommit(raw.as_ptr()) } != 0;
    drop(handle);
    if !autocommit || conn.is_in_transaction() {
        tracing::warn!("a SQLite connection came back inside a transaction (after a failed statement); closing it");
        return Ok(false);
    }
    Ok(true)
}

/// Whether the main file still has its own `journal` table (a database
/// written before the journal had its own file, or one whose move into the
/// journal file was cut short).
async fn main_has_journal(main: &SqlitePool) -> Result<bool, String> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'journal'")
        .fetch_one(main)
        .await
        .map_err(|e| format!("cannot read the SQLite schema: {e}"))?;
    Ok(count > 0)
}

/// Moves the rows of the main file's `journal` table into the journal file,
/// then drops that table. Idempotent: killed after the copy's commit, the
/// next start copies the same rows again (`INSERT OR IGNORE`: the positions
/// are there already, with the same payloads) and drops the table then. The
/// copy also sets `committed_through` to what the main file says was
/// committed (its `projected_pos` and newest snapshot), since a single-file
/// journal may have been pruned up to there.
async fn move_legacy_journal(
    journal_options: &SqliteConnectOptions,
    main_file: &Path,
    main: &SqlitePool,
) -> Result<(), String> {
    let fail = |e: sqlx::Error| format!("cannot move the journal into its own file: {e}");
    let mut conn: SqliteConnection = journal_options.connect().await.map_err(fail)?;
    sqlx::query("ATTACH DATABASE ?1 AS single")
        .bind(main_file.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await
        .map_err(fail)?;
    let mut tx = conn.begin().await.map_err(fail)?;
    let moved = sqlx::query(
        "INSERT OR IGNORE INTO main.journal (pos, kind, payload) SELECT pos, kind, payload FROM single.journal",
    )
    .execute(&mut *tx)
    .await
    .map_err(fail)?
    .rows_affected();
    sqlx::query(
        "UPDATE main.journal_meta SET committed_through = MAX(committed_through, \
         COALESCE((SELECT projected_pos FROM single.projection WHERE id = 1), 0), \
         COALESCE((SELECT MAX(journal_pos) FROM single.snapshots), 0)) WHERE id = 1",
    )
    .execute(&mut *tx)
    .await
    .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    sqlx::query("DETACH DATABASE single")
        .execute(&mut conn)
        .await
        .map_err(fail)?;
    conn.close().await.map_err(fail)?;
    // Committed in the journal file: the main file's copy can go. Dropping
    // the table (not just emptying it) also makes an older build, which
    // would read the journal from the main file, fail loudly on this
    // database instead of starting without the journal.
    sqlx::query("DROP TABLE journal").execute(main).await.map_err(fail)?;
    if moved > 0 {
        tracing::info!(
            rows = moved,
            "moved the journal from the main file into the journal file"
        );
    }
    Ok(())
}

impl Db {
    /// Connects and migrates. Errors are worded for the operator.
    ///
    /// SQLite: two files. The URL names the main file; the journal lives in
    /// [`journal_path`] of it (an in-memory URL gets an in-memory journal).
    /// A database from before the split (journal rows in the main file) has
    /// them moved into the journal file here. A main file whose journal was
    /// moved out before, found without its journal file, is refused: the
    /// journal holds acknowledged events the tables may not have absorbed.
    pub async fn connect(url: &str) -> Result<Self, String> {
        if url.starts_with("sqlite:") {
            let options = sqlite_options(
                SqliteConnectOptions::from_str(url)
                    .map_err(|e| format!("DATABASE_URL is not a valid sqlite URL: {e}"))?,
            );
            let in_memory = sqlite_in_memory(url);
            let main_file = options.get_filename().to_path_buf();
            let journal_file = (!in_memory).then(|| journal_path(&main_file));
            let journal_options = match &journal_file {
                Some(path) => options.clone().filename(path),
                None => sqlite_options(SqliteConnectOptions::from_str("sqlite::memory:").map_err(|e| e.to_string())?),
            }
            .thread_name(|id| format!("{JOURNAL_THREAD_PREFIX}{id}"));
            if !in_memory {
                if let Some(folder) = main_file.parent() {
                    if !folder.as_os_str().is_empty() {
                        std::fs::create_dir_all(folder)
                            .map_err(|e| format!("cannot create the database folder {}: {e}", folder.display()))?;
                    }
                }
            }
            // Checked before the pool would create it.
            let journal_existed = match &journal_file {
                Some(path) => path.exists(),
                None => true,
            };
            let main = sqlite_pool(
                options.thread_name(|id| format!("{TABLE_THREAD_PREFIX}{id}")),
                "database",
            )
            .await?;
            SQLITE_MIGRATIONS
                .run(&main)
                .await
                .map_err(|e| format!("migrations failed: {e}"))?;
            let legacy = main_has_journal(&main).await?;
            if !legacy && !journal_existed {
                main.close().await;
                return Err(format!(
                    "the journal file {} is missing, but the database {} had its journal moved there: \
                     starting would lose acknowledged events. Restore both files (and their -wal files) \
                     from the same backup, or remove both to start empty",
                    journal_file.as_deref().unwrap_or(Path::new("")).display(),
                    main_file.display()
                ));
            }
            let journal = sqlite_pool(journal_options.clone(), "journal file").await?;
            SQLITE_JOURNAL_MIGRATIONS
                .run(&journal)
                .await
                .map_err(|e| format!("journal file migrations failed: {e}"))?;
            if legacy {
                if in_memory {
                    sqlx::query("DROP TABLE journal")
                        .execute(&main)
                        .await
                        .map_err(|e| format!("migrations failed: {e}"))?;
                } else {
                    move_legacy_journal(&journal_options, &main_file, &main).await?;
                }
            }
            tokio::spawn(checkpoint_wal(main.clone()));
            tokio::spawn(checkpoint_wal(journal.clone()));
            Ok(Db::Sqlite(SqliteDb {
                main,
                journal,
                journal_path: journal_file,
            }))
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect(url)
                .await
                .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
            POSTGRES_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|e| format!("migrations failed: {e}"))?;
            Ok(Db::Postgres(pool))
        }
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        match self {
            Db::Sqlite(db) => {
                sqlx::query("SELECT 1").execute(&db.main).await.is_ok()
                    && sqlx::query("SELECT 1").execute(&db.journal).await.is_ok()
            }
            Db::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
        }
    }

    pub async fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
        match self {
            Db::Sqlite(db) => sqlite::setting(db, key).await,
            Db::Postgres(pool) => postgres::setting(pool, key).await,
        }
    }

    pub async fn set_setting(&self, key: &str, value: &[u8]) -> Result<(), sqlx::Error> {
        match self {
            Db::Sqlite(db) => sqlite::set_setting(db, key, value).await,
            Db::Postgres(pool) => postgres::set_setting(pool, key, value).await,
        }
    }

    /// Closes every pool (both files on SQLite).
    pub async fn close(&self) {
        match self {
            Db::Sqlite(db) => {
                db.main.close().await;
                db.journal.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// One read-only transaction on either database: everything read through
/// it comes from the same database snapshot, even while the persister
/// writes (SQLite: a WAL read transaction on the main file; PostgreSQL:
/// REPEATABLE READ). Dropped, it rolls back.
pub(crate) enum ReadTx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl ReadTx {
    pub(crate) async fn begin(db: &Db) -> Result<Self, sqlx::Error> {
        Ok(match db {
            Db::Sqlite(db) => ReadTx::Sqlite(sqlite::begin_read(db).await?),
            Db::Postgres(pool) => ReadTx::Postgres(postgres::begin_read(pool).await?),
        })
    }

    /// The rows of `sql`, a query without parameters whose text both
    /// databases take as it is.
    pub(crate) async fn fetch_all<T>(&mut self, sql: &str) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
        T: Send + Unpin,
    {
        match self {
            ReadTx::Sqlite(tx) => sqlx::query_as(sql).fetch_all(&mut **tx).await,
            ReadTx::Postgres(tx) => sqlx::query_as(sql).fetch_all(&mut **tx).await,
        }
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_INTERVAL`] until the pool closes.
async fn checkpoint_wal(pool: SqlitePool) {
    let mut ticker = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if pool.is_closed() {
            return;
        }
        // Rows: (busy, frames in the WAL, frames checkpointed).
        let passive: Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&pool).await;
        let restart = match passive {
            Ok((_, frames, _)) => frames > WAL_RESTART_FRAMES,
            Err(err) => {
                if pool.is_closed() {
                    return;
                }
                tracing::debug!(error = %err, "WAL checkpoint failed; retrying at the next tick");
                false
            }
        };
        if restart {
            if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(RESTART)").execute(&pool).await {
                tracing::debug!(error = %err, "WAL restart checkpoint failed; retrying at the next tick");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of one connection on a fresh file whose size is capped at
    /// `max_pages` pages, so that a big enough insert fails with `SQLITE_FULL`
    /// as on a full disk.
    async fn capped_pool(path: &Path, max_pages: u32) -> SqlitePool {
        let options =
            sqlite_options(SqliteConnectOptions::new().filename(path)).pragma("max_page_count", max_pages.to_string());
        sqlite_pool_options(1).connect_with(options).await.expect("pool")
    }

    async fn rows_seen_by_a_new_connection(path: &Path) -> i64 {
        let mut fresh = SqliteConnectOptions::new()
            .filename(path)
            .connect()
            .await
            .expect("connect");
        sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut fresh)
            .await
            .expect("count")
    }

    /// A transaction that fails with `SQLITE_FULL`, then one that fails on
    /// a constraint, then one that commits: the commit must reach the file
    /// (before the pool closed such connections, it only released a
    /// savepoint inside a transaction left open for good).
    #[tokio::test]
    async fn commits_after_a_full_database_reach_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("full.db");
        let pool = capped_pool(&path, 16).await;
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
            .execute(&pool)
            .await
            .expect("create");

        let mut tx = pool.begin().await.expect("begin");
        let full = sqlx::query("INSERT INTO t (id, body) VALUES (1, zeroblob(1000000))")
            .execute(&mut *tx)
            .await
            .expect_err("the capped file cannot take a megabyte");
        assert!(full.to_string().contains("full"), "{full}");
        drop(tx);

        let mut tx = pool.begin().await.expect("begin");
        sqlx::query("INSERT INTO t (id, body) VALUES (2, x'00')")
            .execute(&mut *tx)
            .await
            .expect("insert");
        sqlx::query("INSERT INTO t (id, body) VALUES (2, x'00')")
            .execute(&mut *tx)
            .await
            .expect_err("duplicate key");
        drop(tx);

        let mut tx = pool.begin().await.expect("begin");
        sqlx::query("INSERT INTO t (id, body) VALUES (3, x'00')")
            .execute(&mut *tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");

        assert_eq!(
            rows_seen_by_a_new_connection(&path).await,
            1,
            "the committed row is in the file"
        );
        pool.close().await;
    }
}
