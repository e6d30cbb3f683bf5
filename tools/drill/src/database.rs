//! A fresh database per round: a SQLite file in the round's folder, or a
//! uniquely named PostgreSQL database created on a loopback server and
//! dropped after the round.

use std::path::{Path, PathBuf};

use rand::Rng;
use reqwest::Url;
use sqlx::{Connection, PgConnection};

use super::DatabaseKind;

/// Hosts the drill may talk to.
const LOOPBACK_HOSTS: [&str; 3] = ["127.0.0.1", "localhost", "[::1]"];

/// The server's SQLite journal file beside its main file `main`:
/// `concert.db` gives `concert.journal.db` (`concert` gives
/// `concert.journal`). The server's own rule
/// (`concert_server::persistence::db::journal_path`), restated here so the
/// drill does not link the server; `tests/drill.rs` checks the two agree.
pub fn journal_path(main: &Path) -> PathBuf {
    let stem = main
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match main.extension() {
        Some(ext) => format!("{stem}.journal.{}", ext.to_string_lossy()),
        None => format!("{stem}.journal"),
    };
    main.with_file_name(name)
}

pub struct ScratchDatabase {
    /// What the server gets as `DATABASE_URL`.
    pub url: String,
    /// The SQLite file the server must create (the contract says it does).
    pub sqlite_file: Option<PathBuf>,
    /// `(admin URL, database name)` of a PostgreSQL database to drop.
    postgres: Option<(String, String)>,
}

impl ScratchDatabase {
    pub async fn create(kind: &DatabaseKind, dir: &Path) -> Result<Self, String> {
        match kind {
            DatabaseKind::Sqlite => {
                let file = dir.join("concert.db");
                let path = file
                    .to_str()
                    .ok_or_else(|| format!("the temp path {} is not UTF-8", file.display()))?;
                Ok(Self {
                    url: format!("sqlite://{path}"),
                    sqlite_file: Some(file.clone()),
                    postgres: None,
                })
            }
            DatabaseKind::Postgres { url } => {
                let mut round_url = loopback_postgres_url(url)?;
                let name = format!("drill_{:016x}", rand::rng().random::<u64>());
                let mut conn = PgConnection::connect(url)
                    .await
                    .map_err(|err| format!("cannot connect to {}: {err}", redacted(url)))?;
                let created = sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut conn)
                    .await;
                // Best effort: the connection is dropped either way.
                let _ = conn.close().await;
                created.map_err(|err| format!("CREATE DATABASE {name} failed: {err}"))?;
                round_url.set_path(&format!("/{name}"));
                Ok(Self {
                    url: round_url.to_string(),
                    sqlite_file: None,
                    postgres: Some((url.clone(), name)),
                })
            }
        }
    }

    /// The name of the round's PostgreSQL database (`None` for SQLite).
    pub fn postgres_name(&self) -> Option<&str> {
        self.postgres.as_ref().map(|(_, name)| name.as_str())
    }

    /// A printable description (no password).
    pub fn describe(&self) -> String {
        redacted(&self.url)
    }

    /// Drops the PostgreSQL database (the SQLite file goes with its folder).
    pub async fn drop_database(self) -> Result<(), String> {
        let Some((admin_url, name)) = self.postgres else {
            return Ok(());
        };
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .map_err(|err| format!("cannot connect to drop {name}: {err}"))?;
        let dropped = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut conn)
            .await;
        // Best effort: the connection is dropped either way.
        let _ = conn.close().await;
        dropped
            .map(|_| ())
            .map_err(|err| format!("DROP DATABASE {name} failed: {err}"))
    }
}

/// Parses a `postgres://` URL and refuses any host but the loopback one.
fn loopback_postgres_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|err| format!("`{}` is not a URL: {err}", redacted(url)))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!("`{}` is not a postgres:// URL", redacted(url)));
    }
    let host = parsed.host_str().unwrap_or_default();
    let redirected = parsed.query_pairs().any(|(k, _)| k == "host" || k == "hostaddr");
    if !LOOPBACK_HOSTS.contains(&host) || redirected {
        return Err(format!(
            "the drill only talks to 127.0.0.1; `{}` names another host",
            redacted(url)
        ));
    }
    Ok(parsed)
}

/// The URL without its password.
fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Cannot fail: the URL has a host, since it has a password.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
