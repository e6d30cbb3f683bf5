//! The CPU cost of the projection alone: folds the persistence bench's
//! workload (`benches/common/workload.rs`: 256 members, each: charge, hold 2
//! seats, pay, hold 2 seats, cancel) into the tables of a fresh database
//! through `writer::project`, in slices as the persister takes them, and
//! prints the wall time and the CPU time spent.
//!
//! - SQLite (default): a temp-file database; the CPU time is this process's
//!   (all threads: the sqlx SQLite worker, the WAL checkpoint task).
//! - PostgreSQL (`PROJECTION_POSTGRES_URL=postgres://...`, a local server): a
//!   fresh database, dropped afterwards; the CPU time is the sum over the
//!   server's processes (the backends, WAL writer, checkpointer), read from
//!   `/proc`, so the server must run on this machine.
//!
//! CPU time is the figure to compare on a shared machine: it does not count
//! the time spent waiting for a core.
//!
//! ```sh
//! cargo run --release --example projection_cost -- [EVENTS=500000] [SLICE=5000]
//! PROJECTION_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release --example projection_cost -- 500000 20000
//! ```
#[path = "../benches/common/database_url.rs"]
mod database_url;
#[path = "../benches/common/workload.rs"]
mod workload;

use concert_server::persistence::writer::{project, write_batch};
use concert_server::persistence::Db;
use database_url::with_database;
use sqlx::Connection;
use std::time::Instant;
use workload::{now_ms, setup_events, Ids, Producer, Size};

/// The persistence bench's layout: 256 members, holds over 1,000 concerts of
/// 10,000 seats.
const SIZE: Size = Size {
    concerts: 1_000,
    seats: 10_000,
    members: 256,
    events: 0,
};

/// utime + stime of one `/proc/<pid>/stat`, in seconds.
fn stat_cpu_secs(stat: &str) -> f64 {
    // Fields after the command name: utime and stime are the 12th and 13th,
    // in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// This process's CPU time.
fn own_cpu_secs() -> f64 {
    stat_cpu_secs(&std::fs::read_to_string("/proc/self/stat").expect("Linux: /proc/self/stat"))
}

/// The CPU time of every process named `postgres` on this machine.
fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .map(|stat| stat_cpu_secs(&stat))
        .sum()
}

async fn admin(url: &str, sql: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("the admin URL connects");
    sqlx::raw_sql(sql).execute(&mut conn).await.expect("admin statement");
    let _ = conn.close().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("EVENTS is a number"))
        .unwrap_or(500_000);
    let slice: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().expect("SLICE is a number"))
        .unwrap_or(5_000);
    let postgres = std::env::var("PROJECTION_POSTGRES_URL").ok().filter(|u| !u.is_empty());
    let dir = tempfile::tempdir().expect("a temp dir");
    let scratch = format!("concert_projection_cost_{}", std::process::id());
    let url = match &postgres {
        Some(admin_url) => {
            admin(admin_url, &format!("CREATE DATABASE {scratch}")).await;
            with_database(admin_url, &scratch)
        }
        None => format!("sqlite://{}/p.db", dir.path().display()),
    };
    let db = Db::connect(&url).await.expect("the database opens");
    let setup: Vec<_> = setup_events(SIZE)
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e))
        .collect();
    write_batch(&db, &setup).await.expect("members and concerts commit");
    let mut pos = setup.len() as u64;
    let ids = Ids::default();
    let mut producers: Vec<Producer> = (1..=SIZE.members).map(Producer::new).collect();
    let now = now_ms();
    let mut events = Vec::new();
    while (events.len() as u64) < n {
        for producer in &mut producers {
            pos += 1;
            events.push((pos, producer.next(&ids, SIZE, now)));
        }
    }
    let cpu_secs = if postgres.is_some() {
        postgres_cpu_secs
    } else {
        own_cpu_secs
    };
    let (cpu0, wall0) = (cpu_secs(), Instant::now());
    for chunk in events.chunks(slice) {
        project(&db, chunk).await.expect("a slice is projected");
    }
    let (cpu, wall) = (cpu_secs() - cpu0, wall0.elapsed().as_secs_f64());
    let whose = if postgres.is_some() { "server" } else { "process" };
    println!(
        "projected {} events in {slice}-event slices: wall {wall:.2} s ({:.0}/s), {whose} cpu {cpu:.2} s ({:.0} events per cpu-s)",
        events.len(),
        events.len() as f64 / wall,
        events.len() as f64 / cpu
    );
    db.close().await;
    if let Some(admin_url) = &postgres {
        admin(admin_url, &format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")).await;
    }
}
