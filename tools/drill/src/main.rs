//! `drill`: the recovery and fault drills' command line (the drills
//! themselves are the `concert_drill` library). Run from the repository's
//! root; `cargo build --release` first builds the `concert-server` binary
//! the drill looks for next to its own.
//!
//! ```sh
//! cargo build --release && cargo run --release -p concert-drill -- --rounds 100
//! cargo run --release -p concert-drill -- --rounds 20 --database-url postgres://postgres@127.0.0.1:5432/postgres
//! cargo run --release -p concert-drill -- --fault stall --rounds 50
//! cargo run --release -p concert-drill -- --fault pg-restart --rounds 50     # a private PostgreSQL 15 instance
//! cargo run --release -p concert-drill -- --fault pg-terminate --rounds 50 \
//!     --database-url postgres://postgres@127.0.0.1:5432/postgres
//! cargo run --release -p concert-drill -- --fault disk-full --rounds 50      # root: mounts a tmpfs
//! ```
//!
//! Exits 0 when every round passed, 1 when any failed, 2 on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use concert_drill::{self as drill, DatabaseKind, DrillConfig, Fault};
use rand::Rng;

/// Kill -9 the concert server under load (or inject a database fault), check
/// that everything acknowledged survived and no retried write was applied twice.
#[derive(Debug, Parser)]
#[command(name = "drill", version, about)]
struct Args {
    /// Rounds to run, one after another.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    rounds: u32,
    /// A loopback `postgres://` URL: each round creates (and drops) a fresh
    /// database through it. Default: a fresh SQLite file per round.
    #[arg(long)]
    database_url: Option<String>,
    /// The `concert-server` binary [default: `concert-server` next to this binary].
    #[arg(long)]
    server: Option<PathBuf>,
    /// Seed of the run (printed; each round derives its own). Default: random.
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent virtual users.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    users: u16,
    /// Shortest load before the kill, in milliseconds.
    #[arg(long, default_value_t = 300)]
    min_load_ms: u64,
    /// Longest load before the kill, in milliseconds (at most 60000).
    #[arg(long, default_value_t = 3_000)]
    max_load_ms: u64,
    /// Keep every round's folder (server logs, SQLite file), not only failed ones.
    #[arg(long)]
    keep: bool,
    /// What goes wrong in each round: `kill9` (kill -9 and restart), `stall`
    /// (every table locked), `pg-restart` (a private PostgreSQL instance
    /// restarted), `pg-terminate` (the server's connections killed),
    /// `disk-full` (the SQLite files' tmpfs filled).
    #[arg(long, default_value = "kill9")]
    fault: Fault,
    /// How long a stall or a full disk lasts, and the window of connection
    /// kills, in milliseconds.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    fault_ms: u64,
    /// An extra server setting NAME=VALUE (repeatable). A negative control:
    /// `--server-env CONCERT_DURABILITY=async --server-env CONCERT_FLUSH_INTERVAL=500ms`
    /// makes most rounds fail (acknowledged writes are lost at the kill).
    #[arg(long, value_name = "NAME=VALUE")]
    server_env: Vec<String>,
}

fn default_server() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|err| format!("cannot find the drill binary: {err}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent folder", exe.display()))?;
    Ok(dir.join(format!("concert-server{}", std::env::consts::EXE_SUFFIX)))
}

/// Size and age of the server binary: a shared target folder may hold
/// another build than the one you think.
fn describe_file(path: &std::path::Path) -> String {
    let Ok(meta) = std::fs::metadata(path) else {
        return "unreadable".to_owned();
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|at| at.elapsed().ok())
        .map_or_else(|| "?".to_owned(), |age| format!("{}s", age.as_secs()));
    format!("{} bytes, built {age} ago", meta.len())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let database = match DatabaseKind::from_url(args.database_url.as_deref()) {
        Ok(database) => database,
        Err(err) => {
            eprintln!("drill: {err}");
            return ExitCode::from(2);
        }
    };
    let server = match args.server.map(Ok).unwrap_or_else(default_server) {
        Ok(server) if server.is_file() => server,
        Ok(server) => {
            eprintln!(
                "drill: no server binary at {} (build it with `cargo build --release`, or pass --server)",
                server.display()
            );
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("drill: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = args.fault.check_database(&database) {
        eprintln!("drill: {err}");
        return ExitCode::from(2);
    }
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let mut config = DrillConfig::new(server, database, seed);
    config.users = usize::from(args.users);
    config.load = Duration::from_millis(args.min_load_ms)..=Duration::from_millis(args.max_load_ms);
    config.keep_artifacts = args.keep;
    config.fault = args.fault;
    config.fault_duration = Duration::from_millis(args.fault_ms);
    for setting in &args.server_env {
        let added = match setting.split_once('=') {
            Some((name, value)) => config.add_server_env(name, value),
            None => Err(format!("--server-env {setting}: expected NAME=VALUE")),
        };
        if let Err(err) = added {
            eprintln!("drill: {err}");
            return ExitCode::from(2);
        }
    }
    println!(
        "drill: {} rounds of fault {} against {} ({}; seed {seed}, {} users)",
        args.rounds,
        config.fault,
        config.server_binary.display(),
        describe_file(&config.server_binary),
        config.users
    );
    let summary = drill::run(&config, args.rounds, |line| println!("{line}")).await;
    if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
