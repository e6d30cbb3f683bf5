//! One writer per database. A server takes the database's writer lock
//! before it connects and holds it for its whole life; a second server
//! started on the same database finds it taken and refuses to start
//! ([`IN_USE`]) instead of serving beside the first (their journal
//! positions would collide and every write of both would fail).
//!
//! - **SQLite**: an exclusive `flock(2)` on `<main file>.lock`, beside the
//!   main file (`data/concert.db.lock`). The kernel drops it when the
//!   process ends, however it ends. In-memory databases have no lock.
//! - **PostgreSQL**: a session advisory lock ([`ADVISORY_LOCK_KEY`]; advisory
//!   locks are per database) taken on a connection of its own, outside the
//!   pool, kept open for the process's life. PostgreSQL drops it when that
//!   session ends. A database restart or a terminated backend ends it too,
//!   so a watcher checks the connection every [`WATCH_INTERVAL`], and once
//!   it is lost reconnects and takes the lock again; if another server took
//!   it in between, this one fail-stops (`fail_stop`): two writers must
//!   never run at once. (Between the loss and the watcher's next check a
//!   server started in that moment could write beside this one for up to
//!   one interval; cluster mode's fencing epochs, checked inside every
//!   commit, close that window.)
//!
//! A server that stopped a moment ago may still hold the lock while its
//! session or file closes, so taking it is retried for [`TAKE_TIMEOUT`]
//! before the database counts as in use.
//!
//! The seam for cluster mode: start-up takes an [`Ownership`] and the
//! server keeps it until it stops. Today the only kind is
//! [`Ownership::Sole`], one lock for the whole database; cluster mode
//! (several servers, one PostgreSQL) adds a kind holding per-concert leases
//! with fencing epochs instead, and nothing else needs to change here.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::fail_stop::FailStop;

/// What a refused start says (the contract asks for these words).
pub const IN_USE: &str = "the database is in use by another server";
/// The PostgreSQL advisory lock key of the writer lock ("concert1" in ASCII).
pub const ADVISORY_LOCK_KEY: i64 = 0x636f_6e63_6572_7431;
/// How often the PostgreSQL watcher checks the lock's connection.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How long taking the lock is retried before the database counts as in use.
pub const TAKE_TIMEOUT: Duration = Duration::from_secs(2);
const TAKE_RETRY: Duration = Duration::from_millis(100);
/// What the SQLite lock file's name adds to the main file's.
const LOCK_FILE_SUFFIX: &str = ".lock";

/// Another server holds the database's writer lock: the start is refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "{IN_USE}: its writer lock is held (one server per database; stop the other one first){}",
    lock_file_note(.lock_file.as_deref())
)]
pub struct InUse {
    /// The SQLite lock file (`None` for PostgreSQL's advisory lock).
    pub lock_file: Option<PathBuf>,
}

fn lock_file_note(lock_file: Option<&Path>) -> String {
    lock_file.map_or_else(String::new, |path| {
        format!(" (the lock file {} is locked)", path.display())
    })
}

/// Why the writer lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another server has it.
    #[error(transparent)]
    InUse(#[from] InUse),
    /// It could not be tried: a bad URL, no database, a file that cannot be
    /// created or locked. The message says which.
    #[error("{0}")]
    Unavailable(String),
}

/// The right to write the database, held until [`Ownership::release`] (or
/// the process ends).
#[derive(Debug)]
pub enum Ownership {
    /// The whole database, one server (a lock held for the process's life).
    Sole(WriterLock),
}

impl Ownership {
    /// Takes the writer lock of the database `database_url` names. `on_lost`
    /// is what happens if another server takes the lock while this one
    /// still runs (PostgreSQL, after a lost lock connection).
    pub async fn acquire(database_url: &str, on_lost: FailStop) -> Result<Self, LockError> {
        Ok(Ownership::Sole(WriterLock::acquire(database_url, on_lost).await?))
    }

    /// Lets the lock go (the server has stopped writing).
    pub async fn release(self) {
        match self {
            Ownership::Sole(lock) => lock.release().await,
        }
    }
}

/// One lock for the whole database.
#[derive(Debug)]
pub struct WriterLock {
    kind: LockKind,
}

#[derive(Debug)]
enum LockKind {
    /// An in-memory SQLite database: nobody else can open it.
    InMemory,
    /// The locked file; closing it releases the `flock`.
    File { _file: std::fs::File, path: PathBuf },
    /// The watcher task owns the locked connection; `stop` ends it and
    /// closes the connection, which ends the session and its lock.
    Postgres {
        stop: oneshot::Sender<()>,
        watcher: JoinHandle<()>,
    },
}

impl WriterLock {
    async fn acquire(database_url: &str, on_lost: FailStop) -> Result<Self, LockError> {
        let kind = if database_url.starts_with("sqlite:") {
            match sqlite_lock_path(database_url).map_err(LockError::Unavailable)? {
                None => LockKind::InMemory,
                Some(path) => lock_file(&path).await?,
            }
        } else {
            let conn = retry_take(|| take_advisory_lock(database_url)).await?;
            let (stop, stopped) = oneshot::channel();
            // A tokio task, like the persister's: dropped inside the
            // runtime's context when the runtime stops.
            let watcher = tokio::spawn(watch(database_url.to_owned(), conn, stopped, on_lost));
            LockKind::Postgres { stop, watcher }
        };
        Ok(Self { kind })
    }

    async fn release(self) {
        match self.kind {
            LockKind::InMemory => {}
            LockKind::File { path, .. } => tracing::debug!(path = %path.display(), "writer lock released"),
            LockKind::Postgres { stop, watcher } => {
                let _ = stop.send(());
                if tokio::time::timeout(TAKE_TIMEOUT, watcher).await.is_err() {
                    tracing::warn!("the writer lock's connection did not close in time");
                }
            }
        }
    }
}

/// `<main file>.lock` for a file database, `None` for an in-memory one.
fn sqlite_lock_path(database_url: &str) -> Result<Option<PathBuf>, String> {
    if super::db::sqlite_in_memory(database_url) {
        return Ok(None);
    }
    let options = SqliteConnectOptions::from_str(database_url)
        .map_err(|e| format!("DATABASE_URL is not a valid sqlite URL: {e}"))?;
    let main = options.get_filename();
    let mut name = main.as_os_str().to_owned();
    name.push(LOCK_FILE_SUFFIX);
    Ok(Some(PathBuf::from(name)))
}

/// Opens (creating it and its folder) and locks the lock file.
async fn lock_file(path: &Path) -> Result<LockKind, LockError> {
    if let Some(folder) = path.parent().filter(|folder| !folder.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(|e| {
            LockError::Unavailable(format!("cannot create the database folder {}: {e}", folder.display()))
        })?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| LockError::Unavailable(format!("cannot open the lock file {}: {e}", path.display())))?;
    let file = retry_take(|| {
        let attempt = try_flock(&file).map(|locked| locked.then_some(()));
        std::future::ready(attempt.map_err(|e| format!("cannot lock {}: {e}", path.display())))
    })
    .await
    .map(|()| file)
    .map_err(|err| match err {
        LockError::InUse(_) => LockError::InUse(InUse {
            lock_file: Some(path.to_owned()),
        }),
        unavailable => unavailable,
    })?;
    Ok(LockKind::File {
        _file: file,
        path: path.to_owned(),
    })
}

/// An exclusive, non-blocking `flock`: `Ok(false)` when another open file
/// (another server) holds it.
#[cfg(unix)]
fn try_flock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock(2) on a descriptor this function borrows; it touches no
    // memory of ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// No `flock` here: the lock is not enforced on this platform.
#[cfg(not(unix))]
fn try_flock(_file: &std::fs::File) -> std::io::Result<bool> {
    tracing::warn!("no file lock on this platform: make sure one server uses the database");
    Ok(true)
}

/// Calls `take` until it gets the lock (`Some`) or [`TAKE_TIMEOUT`] passes
/// (the database is in use: [`InUse`]); errors end it at once.
async fn retry_take<T, F, Fut>(mut take: F) -> Result<T, LockError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + TAKE_TIMEOUT;
    loop {
        if let Some(taken) = take().await.map_err(LockError::Unavailable)? {
            return Ok(taken);
        }
        if Instant::now() >= deadline {
            return Err(InUse { lock_file: None }.into());
        }
        tokio::time::sleep(TAKE_RETRY).await;
    }
}

/// A new session holding the advisory lock, or `None` when another session has it.
async fn take_advisory_lock(database_url: &str) -> Result<Option<PgConnection>, String> {
    let mut conn = PgConnection::connect(database_url)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(ADVISORY_LOCK_KEY)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| format!("cannot take the writer lock: {e}"))?;
    if taken {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

/// Keeps the lock's session open until `stop`; takes the lock again after
/// the session was lost, and fail-stops when another server has it.
async fn watch(database_url: String, mut conn: PgConnection, mut stop: oneshot::Receiver<()>, on_lost: FailStop) {
    loop {
        tokio::select! {
            _ = &mut stop => {
                let _ = conn.close().await;
                return;
            }
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        if sqlx::query("SELECT 1").execute(&mut conn).await.is_ok() {
            continue;
        }
        tracing::warn!("lost the connection that holds the database's writer lock; taking the lock again");
        loop {
            match take_advisory_lock(&database_url).await {
                Ok(Some(again)) => {
                    conn = again;
                    tracing::info!("the database's writer lock is held again");
                    break;
                }
                Ok(None) => {
                    on_lost(&format!(
                        "{IN_USE}: another server took the writer lock while this server's lock connection was \
                         lost; stopping so that only one server writes"
                    ));
                    return;
                }
                // The database is still out of reach; writes are failing and
                // retried meanwhile. Try again, unless the server stops.
                Err(err) => {
                    tracing::debug!(error = %err, "the writer lock cannot be taken yet");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                    }
                }
            }
        }
    }
}
