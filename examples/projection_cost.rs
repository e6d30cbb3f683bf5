//! The CPU cost of the projection alone on SQLite: folds the persistence
//! bench's workload (`benches/common/workload.rs`: 256 members, each:
//! charge, hold 2 seats, pay, hold 2 seats, cancel) into the tables of a fresh temp-file database through
//! `writer::project`, in slices as the persister takes them, and prints the
//! wall time and the process's CPU time (all threads: the sqlx SQLite worker,
//! the WAL checkpoint task). CPU time is the figure to compare on a shared
//! machine: it does not count the time spent waiting for a core.
//!
//! ```sh
//! cargo run --release --example projection_cost -- [EVENTS=500000] [SLICE=5000]
//! ```
#[path = "../benches/common/workload.rs"]
mod workload;

use concert_server::persistence::writer::{project, write_batch};
use concert_server::persistence::Db;
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

fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux: /proc/self/stat");
    // Fields after the command name: utime and stime are the 12th and 13th,
    // in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
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
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("sqlite://{}/p.db", dir.path().display());
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
    let (cpu0, wall0) = (cpu_secs(), Instant::now());
    for chunk in events.chunks(slice) {
        project(&db, chunk).await.expect("a slice is projected");
    }
    let (cpu, wall) = (cpu_secs() - cpu0, wall0.elapsed().as_secs_f64());
    println!("projected {} events in {slice}-event slices: wall {wall:.2} s ({:.0}/s), cpu {cpu:.2} s ({:.0} events per cpu-s)", events.len(), events.len() as f64 / wall, events.len() as f64 / cpu);
}
