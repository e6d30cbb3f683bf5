//! The database handle: SQLite (embedded default) or PostgreSQL, chosen by
//! the URL. Connecting creates the SQLite file and its folder, turns on WAL
//! and applies the migrations of `migrations/<backend>/`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// How long a statement waits for a locked SQLite database.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections per pool: one writer (the persister) plus readers at start-up.
const MAX_CONNECTIONS: u32 = 4;
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
