//! The fault drills: instead of a `kill -9`, a round injects a database fault
//! while the load runs, with clients that retry unknown outcomes (503, no
//! answer) with the same `Idempotency-Key` and body, as the contract tells
//! them to. The faults:
//!
//! - [`Fault::Stall`]: another connection holds every table of the round's
//!   database for [`DEFAULT_DURATION`] (PostgreSQL: `LOCK TABLE ... IN ACCESS
//!   EXCLUSIVE MODE` in one transaction; SQLite: `BEGIN EXCLUSIVE` on the
//!   main file and on the journal file, `<stem>.journal.<ext>`);
//! - [`Fault::PgRestart`]: `pg_ctl restart` of a private PostgreSQL instance
//!   started for the round ([`private_pg`]; never the machine's shared one);
//! - [`Fault::PgTerminate`]: `pg_terminate_backend` of every other
//!   connection to the round's own database, once a second for the duration;
//! - [`Fault::DiskFull`]: the SQLite files on a small tmpfs ([`tmpfs`]) that a
//!   filler file fills for the duration, then frees.
//!
//! [`round`] runs one round: load, fault, the resume probe (a fresh write
//! must succeed within [`round::RESUME_BOUND`] of the fault's end, without a
//! restart), then the checks twice: on the live server, and after a `kill -9`
//! and restart on the same database. The checks are the recovery drill's
//! ([`super::verify`]) plus [`checks`] (retries converged, money per member
//! within what the clients were told).

mod checks;
mod inject;
mod private_pg;
mod round;
mod tmpfs;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;

use super::database::ScratchDatabase;
use super::{DatabaseKind, DrillConfig, RoundReport};
use private_pg::PrivatePostgres;
use tmpfs::TmpfsMount;

pub use private_pg::postgres_binaries;
pub use tmpfs::tmpfs_available;

/// How long a stall or a full disk lasts (the "5 s").
pub const DEFAULT_DURATION: Duration = Duration::from_secs(5);
/// The tmpfs of [`Fault::DiskFull`]: room for a few seconds of load (the
/// WALs grow until a checkpoint restarts them), small enough to fill fast.
const TMPFS_SIZE_MIB: u64 = 128;

/// What goes wrong in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` the server under load, restart it (the recovery drill).
    Kill9,
    /// Hold every table of the database for the fault's duration.
    Stall,
    /// Restart a private PostgreSQL instance (`pg_ctl restart`).
    PgRestart,
    /// Kill the server's PostgreSQL connections (`pg_terminate_backend`).
    PgTerminate,
    /// Fill the filesystem of the SQLite files.
    DiskFull,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Kill9,
        Fault::Stall,
        Fault::PgRestart,
        Fault::PgTerminate,
        Fault::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill9",
            Fault::Stall => "stall",
            Fault::PgRestart => "pg-restart",
            Fault::PgTerminate => "pg-terminate",
            Fault::DiskFull => "disk-full",
        }
    }

    /// Whether the fault applies to `database` (`--database-url`).
    pub fn check_database(self, database: &DatabaseKind) -> Result<(), String> {
        match (self, database) {
            (Fault::Kill9 | Fault::Stall, _) => Ok(()),
            (Fault::PgRestart, DatabaseKind::Sqlite) => Ok(()),
            (Fault::PgRestart, DatabaseKind::Postgres { .. }) => Err(
                "--fault pg-restart starts a private PostgreSQL instance of its own (the shared one is never \
                 restarted): omit --database-url"
                    .to_owned(),
            ),
            (Fault::PgTerminate, DatabaseKind::Postgres { .. }) => Ok(()),
            (Fault::PgTerminate, DatabaseKind::Sqlite) => {
                Err("--fault pg-terminate needs --database-url postgres://...".to_owned())
            }
            (Fault::DiskFull, DatabaseKind::Sqlite) => Ok(()),
            (Fault::DiskFull, DatabaseKind::Postgres { .. }) => {
                Err("--fault disk-full puts SQLite files on a tmpfs: omit --database-url".to_owned())
            }
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Fault::ALL.into_iter().find(|f| f.name() == text).ok_or_else(|| {
            let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
            format!("unknown fault `{text}`; one of {}", names.join(", "))
        })
    }
}

/// Where a fault round's database lives, beyond the scratch database.
pub(super) enum Environment {
    /// The database of `--database-url`, or a SQLite file in the round's folder.
    Shared,
    /// A private PostgreSQL instance, stopped and deleted after the round.
    Private(PrivatePostgres),
    /// A tmpfs holding the SQLite files, unmounted after the round.
    Tmpfs(TmpfsMount),
}

/// One fault round in `dir`: sets up the environment and the scratch
/// database, drives the round, cleans up (keeping logs of failed rounds).
pub(super) async fn run_round(config: &DrillConfig, rng: &mut StdRng, dir: &Path, report: &mut RoundReport) {
    if let Err(err) = config.fault.check_database(&config.database) {
        return report.fail("setup", err);
    }
    let mut env = match config.fault {
        Fault::PgRestart => match PrivatePostgres::start().await {
            Ok(instance) => Environment::Private(instance),
            Err(err) => return report.fail("setup", format!("the private PostgreSQL did not start: {err}")),
        },
        Fault::DiskFull => match TmpfsMount::mount(&dir.join("tmpfs"), TMPFS_SIZE_MIB) {
            Ok(mount) => Environment::Tmpfs(mount),
            Err(err) => return report.fail("setup", err),
        },
        _ => Environment::Shared,
    };
    let (kind, db_dir) = match &env {
        Environment::Private(instance) => (DatabaseKind::Postgres { url: instance.url() }, dir),
        Environment::Tmpfs(mount) => (DatabaseKind::Sqlite, mount.path()),
        Environment::Shared => (config.database.clone(), dir),
    };
    match ScratchDatabase::create(&kind, db_dir).await {
        Ok(database) => {
            report.database = match &env {
                Environment::Private(instance) => format!("{} ({})", database.describe(), instance.describe()),
                Environment::Tmpfs(_) => format!("{} (on a {TMPFS_SIZE_MIB} MiB tmpfs)", database.describe()),
                Environment::Shared => database.describe(),
            };
            report.database.push_str(&format!(", fault {}", config.fault));
            round::drive(config, rng, dir, &database, &env, report).await;
            if let Err(err) = database.drop_database().await {
                report.notes.push(format!("cleanup: {err}"));
            }
        }
        Err(err) => report.fail("setup", err),
    }
    let keep = config.keep_artifacts || !report.passed();
    let cleaned = match &mut env {
        Environment::Private(instance) => instance.stop(keep.then_some(dir)).await,
        Environment::Tmpfs(mount) => mount.unmount(keep.then_some(dir)).await,
        Environment::Shared => Ok(()),
    };
    if let Err(err) = cleaned {
        report.notes.push(format!("cleanup: {err}"));
    }
}
