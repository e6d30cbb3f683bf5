//! The recovery and fault drills: starts the real `concert-server` binary on
//! a fresh database, drives a mixed concurrent load through the HTTP API and
//! then either `kill -9`s it at a random moment and restarts it on the same
//! database and port ([`Fault::Kill9`]), or injects a database fault while
//! the load runs (a stall, a PostgreSQL restart, killed connections, a full
//! disk: see [`fault`]). Then it checks through the API alone (the contract,
//! `docs/API.md`) that every write answered 2xx survived, that no retried
//! write was applied twice, and that the invariants still hold.
//!
//! Layout: [`server`] (child process, free port) and [`database`] (a scratch
//! SQLite file or PostgreSQL database per round) -> [`load`] (virtual users
//! recording every acknowledged write in a [`ledger::Ledger`], retrying
//! unknown outcomes through [`retry`] in fault rounds) -> [`verify`] (the
//! checks, each failure a named [`Violation`]). [`fault`] holds the fault
//! rounds. `src/main.rs` is the CLI (`cargo run --release -p concert-drill
//! -- --rounds 100`); the server's `tests/drill.rs` is the test (a
//! dev-dependency of `concert-server`, so that cargo builds the server
//! binary it drives); both call [`run`].
//!
//! A crate of its own (`concert-drill`, `tools/drill/`): it talks to the
//! server only over HTTP, and to the server's database only over SQL and the
//! file names the server documents ([`journal_path`]), so the server binary
//! links none of its HTTP client, temp-folder or signal dependencies.
//!
//! Limits: every loop is bounded in count and time (see the constants of each
//! module), and the drill only ever talks to 127.0.0.1.

mod client;
mod database;
pub mod fault;
mod ledger;
mod load;
mod retry;
mod server;
mod verify;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use client::{now_ms, Api};
use database::ScratchDatabase;
use ledger::Ledger;
use load::LoadPolicy;
use server::{free_port, ServerProcess, ServerSpec};

pub use client::ADMIN_KEY;
pub use database::journal_path;
pub use fault::Fault;

/// Virtual users are stopped at the kill; this bounds how long they may take.
const LOAD_JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// SIGTERM must end the server within this (the contract: exit 0).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds what one round may ask for.
const MAX_USERS: usize = 256;
const MAX_LOAD: Duration = Duration::from_secs(60);
/// Violations printed per check and round; the rest are counted.
const MAX_LINES_PER_CHECK: usize = 8;

/// Where each round's server keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    /// A fresh SQLite file in the round's temp folder.
    Sqlite,
    /// A fresh database `drill_<random>` created through this (loopback)
    /// PostgreSQL URL and dropped after the round.
    Postgres { url: String },
}

impl DatabaseKind {
    /// `None` -> SQLite; a `postgres://` URL -> PostgreSQL.
    pub fn from_url(url: Option<&str>) -> Result<Self, String> {
        match url {
            None => Ok(Self::Sqlite),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres { url: url.to_owned() })
            }
            Some(url) if url.starts_with("sqlite:") => Err(format!(
                "`{url}`: SQLite rounds always use a fresh file of their own; omit --database-url"
            )),
            Some(url) => Err(format!("`{url}` is not a postgres:// URL")),
        }
    }
}

/// What a drill run does.
#[derive(Debug, Clone)]
pub struct DrillConfig {
    /// The `concert-server` binary.
    pub server_binary: PathBuf,
    pub database: DatabaseKind,
    /// Round `n` uses a seed derived from this and `n`.
    pub seed: u64,
    /// Concurrent virtual users (each loops over new members).
    pub users: usize,
    /// The load runs for a random time in this range, then the kill comes.
    pub load: RangeInclusive<Duration>,
    /// `CONCERT_HOLD_TIMEOUT` of the server.
    pub hold_timeout: Duration,
    /// How long `/ready` may take after a start.
    pub ready_timeout: Duration,
    /// Keep every round's folder (logs, SQLite file); failed rounds keep it anyway.
    pub keep_artifacts: bool,
    /// Extra `CONCERT_*` settings for the server, applied over the drill's
    /// (e.g. `CONCERT_DURABILITY=async` as a negative control); see
    /// [`DrillConfig::add_server_env`].
    pub server_env: Vec<(String, String)>,
    /// What goes wrong in each round ([`Fault::Kill9`] by default).
    pub fault: Fault,
    /// How long a stall or a full disk lasts, and the window in which
    /// connections are killed.
    pub fault_duration: Duration,
}

impl DrillConfig {
    /// The drill's defaults: 32 users, 0.3-3 s of load, 3 s hold timeout.
    pub fn new(server_binary: PathBuf, database: DatabaseKind, seed: u64) -> Self {
        Self {
            server_binary,
            database,
            seed,
            users: 32,
            load: Duration::from_millis(300)..=Duration::from_secs(3),
            hold_timeout: Duration::from_secs(3),
            ready_timeout: Duration::from_secs(30),
            keep_artifacts: false,
            server_env: Vec::new(),
            fault: Fault::Kill9,
            fault_duration: fault::DEFAULT_DURATION,
        }
    }

    /// Adds a `CONCERT_*` server setting. The address, admin key, database
    /// and hold timeout are the drill's own (its checks depend on them).
    pub fn add_server_env(&mut self, name: &str, value: &str) -> Result<(), String> {
        const OWN: [&str; 3] = ["CONCERT_ADDR", "CONCERT_ADMIN_KEY", "CONCERT_HOLD_TIMEOUT"];
        if !name.starts_with("CONCERT_") || OWN.contains(&name) {
            return Err(format!(
                "`{name}`: only CONCERT_* settings other than {} can be overridden",
                OWN.join(", ")
            ));
        }
        self.server_env.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    fn load_range_ms(&self) -> RangeInclusive<u64> {
        let ms = |d: &Duration| u64::try_from(d.min(&MAX_LOAD).as_millis()).unwrap_or(0);
        let low = ms(self.load.start());
        low..=ms(self.load.end()).max(low)
    }
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// A stable name, e.g. `charge-durable`.
    pub check: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            detail: detail.into(),
        }
    }
}

/// What one round did and found.
#[derive(Debug, Clone)]
pub struct RoundReport {
    pub round: u32,
    pub seed: u64,
    pub load: Duration,
    pub database: String,
    /// One line: what the load got acknowledged.
    pub recorded: String,
    /// One line: how much the checks looked at.
    pub coverage: String,
    pub violations: Vec<Violation>,
    /// Things worth knowing that are not contract violations (cleanup).
    pub notes: Vec<String>,
    /// The round's folder, when kept.
    pub artifacts: Option<PathBuf>,
    pub elapsed: Duration,
}

impl RoundReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    fn fail(&mut self, check: &'static str, detail: impl Into<String>) {
        self.violations.push(Violation::new(check, detail));
    }

    /// The printable report: a header, at most [`MAX_LINES_PER_CHECK`]
    /// lines per failed check, notes and a verdict.
    pub fn lines(&self, rounds: u32) -> Vec<String> {
        let name = format!("round {}/{rounds}", self.round);
        let mut lines = vec![format!(
            "{name} seed={:#018x} db={} load={:.2}s: {}",
            self.seed,
            self.database,
            self.load.as_secs_f64(),
            if self.recorded.is_empty() {
                "no load ran"
            } else {
                &self.recorded
            }
        )];
        let mut by_check: BTreeMap<&str, Vec<&Violation>> = BTreeMap::new();
        for violation in &self.violations {
            by_check.entry(violation.check).or_default().push(violation);
        }
        for (check, violations) in &by_check {
            for violation in violations.iter().take(MAX_LINES_PER_CHECK) {
                lines.push(format!("{name} FAIL [{check}] {}", violation.detail));
            }
            if violations.len() > MAX_LINES_PER_CHECK {
                lines.push(format!(
                    "{name} FAIL [{check}] ... and {} more like these",
                    violations.len() - MAX_LINES_PER_CHECK
                ));
            }
        }
        if !self.coverage.is_empty() {
            lines.push(format!("{name} {}", self.coverage));
        }
        lines.extend(self.notes.iter().map(|note| format!("{name} note: {note}")));
        let kept = match &self.artifacts {
            Some(dir) => format!("; logs kept in {}", dir.display()),
            None => String::new(),
        };
        if self.passed() {
            lines.push(format!("{name}: passed in {:.1}s{kept}", self.elapsed.as_secs_f64()));
        } else {
            let counts: Vec<String> = by_check.iter().map(|(c, v)| format!("{c} x{}", v.len())).collect();
            lines.push(format!(
                "{name}: FAILED with {} violations ({}) in {:.1}s{kept}",
                self.violations.len(),
                counts.join(", "),
                self.elapsed.as_secs_f64()
            ));
        }
        lines
    }
}

/// The outcome of [`run`].
#[derive(Debug, Clone)]
pub struct Summary {
    pub rounds: u32,
    pub failed: u32,
    pub reports: Vec<RoundReport>,
}

impl Summary {
    pub fn line(&self) -> String {
        format!("{} rounds, {} failed", self.rounds, self.failed)
    }
}

/// Runs `rounds` rounds one after another, printing each report through `print`.
pub async fn run(config: &DrillConfig, rounds: u32, mut print: impl FnMut(&str)) -> Summary {
    let mut summary = Summary {
        rounds,
        failed: 0,
        reports: Vec::new(),
    };
    for round in 1..=rounds {
        let report = run_round(config, round).await;
        for line in report.lines(rounds) {
            print(&line);
        }
        if !report.passed() {
            summary.failed += 1;
        }
        summary.reports.push(report);
    }
    print(&summary.line());
    summary
}

/// The seed of round `round` (splitmix64 of the run's seed and the round).
pub fn round_seed(seed: u64, round: u32) -> u64 {
    let mut z = seed ^ u64::from(round).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One round: fresh folder and database, start, load, kill -9, restart,
/// checks, SIGTERM, cleanup (or the same around a fault: [`fault`]). Never
/// panics on a server failure: it reports it.
pub async fn run_round(config: &DrillConfig, round: u32) -> RoundReport {
    let started = Instant::now();
    let seed = round_seed(config.seed, round);
    let mut rng = StdRng::seed_from_u64(seed);
    let load = Duration::from_millis(rng.random_range(config.load_range_ms()));
    let mut report = RoundReport {
        round,
        seed,
        load,
        database: String::new(),
        recorded: String::new(),
        coverage: String::new(),
        violations: Vec::new(),
        notes: Vec::new(),
        artifacts: None,
        elapsed: Duration::ZERO,
    };
    let dir = match tempfile::Builder::new().prefix("concert-drill-").tempdir() {
        Ok(dir) => dir,
        Err(err) => {
            report.fail("setup", format!("cannot create a temp folder: {err}"));
            return report;
        }
    };
    if config.fault != Fault::Kill9 {
        fault::run_round(config, &mut rng, dir.path(), &mut report).await;
    } else {
        match ScratchDatabase::create(&config.database, dir.path()).await {
            Ok(database) => {
                report.database = database.describe();
                drive(config, &mut rng, dir.path(), &database, &mut report).await;
                if let Err(err) = database.drop_database().await {
                    report.notes.push(format!("cleanup: {err}"));
                }
            }
            Err(err) => report.fail("setup", err),
        }
    }
    if config.keep_artifacts || !report.passed() {
        report.artifacts = Some(dir.keep());
    }
    report.elapsed = started.elapsed();
    report
}

/// Waits for the virtual users (they were told to stop), at most `timeout`;
/// a panic is a `drill` failure, a user still running a note.
async fn join_load(tasks: &mut tokio::task::JoinSet<()>, timeout: Duration, report: &mut RoundReport) {
    let joined = tokio::time::timeout(timeout, async {
        let mut panics = Vec::new();
        while let Some(result) = tasks.join_next().await {
            if let Err(err) = result {
                panics.push(err.to_string());
            }
        }
        panics
    })
    .await;
    match joined {
        Ok(panics) => {
            for panic in panics {
                report.fail("drill", format!("a virtual user failed: {panic}"));
            }
        }
        Err(_) => report.notes.push(format!(
            "some virtual users did not stop within {timeout:?} of the stop; their records are lost"
        )),
    }
}

/// Start, load, kill -9, restart, verify, SIGTERM.
async fn drive(
    config: &DrillConfig,
    rng: &mut StdRng,
    dir: &Path,
    database: &ScratchDatabase,
    report: &mut RoundReport,
) {
    let tag = format!("{}-{:08x}", report.round, rng.random::<u32>());
    let port = match free_port() {
        Ok(port) => port,
        Err(err) => return report.fail("setup", err),
    };
    let spec = ServerSpec {
        binary: config.server_binary.clone(),
        port,
        database_url: database.url.clone(),
        hold_timeout: config.hold_timeout,
        extra_env: config.server_env.clone(),
    };
    let api = match Api::new(port) {
        Ok(api) => api,
        Err(err) => return report.fail("setup", err),
    };
    let first_log = dir.join("server-1.log");
    let mut server = match ServerProcess::start(&spec, &first_log, &api, config.ready_timeout).await {
        Ok(server) => server,
        Err(err) => return report.fail("setup", format!("the server did not start: {err}")),
    };
    if let Some(file) = database.sqlite_file.as_ref().filter(|file| !file.exists()) {
        // Everything would be lost at the kill: say why once, up front.
        report.fail(
            "database-used",
            format!(
                "the server is ready but did not create its SQLite file {} (DATABASE_URL={}): is {} a build \
                 with persistence?",
                file.display(),
                database.url,
                config.server_binary.display()
            ),
        );
    }
    let ledger = Arc::new(Ledger::default());
    if let Err(err) = load::create_concerts(&api, &ledger, rng, &tag).await {
        return report.fail("setup", err);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let users = config.users.clamp(1, MAX_USERS);
    let mut tasks = load::start(
        api,
        ledger.clone(),
        stop.clone(),
        users,
        LoadPolicy::default(),
        rng.random(),
        tag.clone(),
    );
    tokio::time::sleep(report.load).await;
    // Stop first so no new request starts; the kill then cuts those in flight.
    stop.store(true, Ordering::Release);
    let killed = server.kill9();
    let kill_ms = now_ms();
    drop(server);
    if let Err(err) = killed {
        report.fail("server-crash", err);
    }
    join_load(&mut tasks, LOAD_JOIN_TIMEOUT, report).await;
    let recorded = ledger.snapshot();
    report.recorded = recorded.summary();
    report.violations.extend(recorded.violations.iter().cloned());

    // A fresh client: the old one's pooled connections died with the server.
    let api = match Api::new(port) {
        Ok(api) => api,
        Err(err) => return report.fail("setup", err),
    };
    let second_log = dir.join("server-2.log");
    let mut server = match ServerProcess::start(&spec, &second_log, &api, config.ready_timeout).await {
        Ok(server) => server,
        Err(err) => {
            return report.fail(
                "restart",
                format!("the server did not come back on the same database: {err}"),
            )
        }
    };
    let facts = Arc::new(verify::Facts {
        recorded,
        kill_ms,
        ready_ms: now_ms(),
        hold_timeout: config.hold_timeout,
        tag,
    });
    let (violations, coverage) = verify::verify(&api, facts).await;
    report.violations.extend(violations);
    report.coverage = coverage.summary();
    match server.terminate(SHUTDOWN_TIMEOUT).await {
        Ok(status) if status.success() => {}
        Ok(status) => report.fail(
            "graceful-shutdown",
            format!(
                "after SIGTERM the server exited with {status}, not 0; {}",
                server.log_tail()
            ),
        ),
        Err(err) => report.fail("graceful-shutdown", err),
    }
}
