//! The database handle: SQLite (embedded default) or PostgreSQL, chosen by
//! the URL. Connecting creates the SQLite file and its folder, turns on WAL
//! and applies the migrations of `migrations/<backend>/`.
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
//! over. The WAL file thus stays bounded.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

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

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    /// Connects and migrates. Errors are worded for the operator.
    pub async fn connect(url: &str) -> Result<Self, String> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| format!("DATABASE_URL is not a valid sqlite URL: {e}"))?
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
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            if let Some(folder) = std::path::Path::new(options.get_filename()).parent() {
                if !folder.as_os_str().is_empty() {
                    std::fs::create_dir_all(folder)
                        .map_err(|e| format!("cannot create the database folder {}: {e}", folder.display()))?;
                }
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|e| format!("cannot open the SQLite database: {e}"))?;
            SQLITE_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|e| format!("migrations failed: {e}"))?;
            tokio::spawn(checkpoint_wal(pool.clone()));
            Ok(Db::Sqlite(pool))
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
            Db::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
            Db::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
        }
    }

    pub async fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
        let sql = "SELECT value FROM settings WHERE key = ";
        match self {
            Db::Sqlite(pool) => {
                sqlx::query_scalar(&format!("{sql}?1"))
                    .bind(key)
                    .fetch_optional(pool)
                    .await
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar(&format!("{sql}$1"))
                    .bind(key)
                    .fetch_optional(pool)
                    .await
            }
        }
    }

    pub async fn set_setting(&self, key: &str, value: &[u8]) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO settings (key, value) VALUES ";
        let conflict = " ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        match self {
            Db::Sqlite(pool) => {
                sqlx::query(&format!("{sql}(?1, ?2){conflict}"))
                    .bind(key)
                    .bind(value)
                    .execute(pool)
                    .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(&format!("{sql}($1, $2){conflict}"))
                    .bind(key)
                    .bind(value)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
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
