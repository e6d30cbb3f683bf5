//! Soak: millions of hold → cancel / expire cycles through the whole server
//! (engine, SQLite durability in `sync` mode, the projection, the retention
//! task with `CONCERT_FINISHED_RETENTION=1s`), and what memory, snapshots
//! and recovery look like after 1M and after 10M cycles. Memory must follow
//! what is live, not how many cycles ran (docs/PERFORMANCE.md, "A season in
//! bounded memory").
//!
//! 1,000 concerts of 1,000 seats; 256 members, each a task that holds one
//! seat of a random concert, waits for it to be durable, then cancels it
//! (3 cycles in 4, durable too) or leaves it to expire (1 in 4; holds last
//! 1 s). Payments are not part of the cycle: a CONFIRMED reservation of an
//! upcoming concert is live state and stays in memory by design.
//!
//! At each checkpoint the producers pause until the last holds expired and
//! every finished reservation was retired (4 s), so that every checkpoint
//! measures the same steady state; then it prints: resident memory (`VmRSS`) and the part of
//! it SQLite allocated itself (its page caches grow with the tables, up to
//! their configured size), reservations in
//! memory, a snapshot's size and the time to write it, and the time to
//! recover from the database (snapshot + journal tail, `recover`), i.e.
//! start-to-ready less the process start.
//!
//! ```sh
//! cargo run --release --example soak -- [CYCLES=10000000] [CHECKPOINT=1000000]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concert_actors::engine::NewConcert;
use concert_server::persistence::recovery::recover;
use concert_server::persistence::snapshot::take_snapshot;
use concert_server::settings::Settings;
use concert_server::startup::Application;

const CONCERTS: u64 = 1_000;
const SEATS: u32 = 1_000;
const MEMBERS: u64 = 256;

/// What SQLite itself has allocated (its page caches above all: up to
/// 64 MiB per connection, filled as the tables grow), process-wide.
fn sqlite_mib() -> f64 {
    // SAFETY: a read of SQLite's global memory counter; no handle involved.
    let used = unsafe { libsqlite3_sys::sqlite3_memory_used() };
    used as f64 / (1024.0 * 1024.0)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// xorshift64*: enough to spread holds; no crate API to track.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[actix_web::main]
async fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .map(|s| s.parse::<u64>().expect("a number"))
            .unwrap_or(default)
    };
    let cycles = arg(1, 10_000_000);
    let checkpoint = arg(2, 1_000_000);
    let dir = tempfile::tempdir().expect("a temp folder");
    let mut settings = Settings::defaults();
    settings.addr = "127.0.0.1:0".parse().expect("address");
    settings.database_url = format!("sqlite://{}", dir.path().join("soak.db").display());
    settings.admin_key = Some("soak-admin-key-0123456789".into());
    settings.demo_data = false;
    settings.hold_timeout = Duration::from_secs(1);
    settings.finished_retention = Duration::from_secs(1);
    settings.snapshot_interval = Duration::from_secs(3600);
    settings.max_seats_per_member = 1_000;
    let app = Application::build(settings).await.expect("the server starts");
    let state = app.state();
    let engine = state.engine.clone();
    let now = engine.now_ms();
    for i in 0..CONCERTS {
        engine
            .create_concert(NewConcert {
                title: format!("Soak {i}"),
                category: "soak".into(),
                venue: "Hall".into(),
                starts_at_ms: now + 30 * 24 * 3_600_000,
                seat_count: SEATS,
                price: 1_000,
                price_tiers: Vec::new(),
            })
            .expect("a concert");
    }
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let (member, _) = engine
            .accounts()
            .register(&format!("soak {i}"), [0; 32], now)
            .expect("a member");
        members.push(member);
    }
    println!(
        "soak: {cycles} cycles, checkpoints every {checkpoint}, {CONCERTS} concerts x {SEATS} seats, {MEMBERS} members, db {}",
        dir.path().display()
    );
    let done = Arc::new(AtomicU64::new(0));
    // Set at each checkpoint: the producers wait, so every checkpoint
    // measures the same steady state (what is live once the last holds
    // expired and the last finished reservations were retired).
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    for (i, member) in members.into_iter().enumerate() {
        let (state, done, refused, paused) = (state.clone(), done.clone(), refused.clone(), paused.clone());
        actix_web::rt::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
            let mut n = 0u64;
            while done.load(Ordering::Relaxed) < cycles {
                while paused.load(Ordering::Relaxed) {
                    actix_web::rt::time::sleep(Duration::from_millis(50)).await;
                }
                let concert = 1 + rng.next() % CONCERTS;
                let seat = 1 + (rng.next() % u64::from(SEATS)) as u32;
                let held = match state.engine.hold(member, concert, vec![seat]).await {
                    Ok(held) => held,
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if state.durable(held.pos).await.is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                n += 1;
                if n % 4 != 0 {
                    match state.engine.cancel(member, held.value.id).await {
                        Ok(cancelled) => {
                            let _ = state.durable(cancelled.pos).await;
                        }
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let started = Instant::now();
    let mut next = checkpoint;
    while next <= cycles {
        while done.load(Ordering::Relaxed) < next {
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        paused.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        // The last holds expire (1 s), the last finished reservations are
        // retired (1 s after they finished, passes every 250 ms).
        actix_web::rt::time::sleep(Duration::from_secs(4)).await;
        let in_memory = engine.directory().len();
        let rss = rss_mib();
        let sqlite = sqlite_mib();
        let snapshot = take_snapshot(&engine, &state.persister, &state.db)
            .await
            .expect("a snapshot");
        let recovery_started = Instant::now();
        let recovered = recover(&state.db).await.expect("recovery");
        let recovery = recovery_started.elapsed();
        let reservations_recovered: usize = recovered
            .state
            .concerts
            .values()
            .map(|c| c.reservations().count())
            .sum();
        println!(
            "checkpoint {next} cycles ({:.0} cycles/s, {} refused): VmRSS {rss:.1} MiB, of which SQLite {sqlite:.1} MiB, the rest {:.1} MiB; reservations in memory {in_memory}; \
             snapshot {} bytes written in {} ms; recovery {} ms ({} from {}, {reservations_recovered} reservations)",
            done.load(Ordering::Relaxed) as f64 / elapsed,
            refused.load(Ordering::Relaxed),
            rss - sqlite,
            snapshot.bytes,
            snapshot.took.as_millis(),
            recovery.as_millis(),
            recovered.last_pos,
            recovered.source,
        );
        next += checkpoint;
        paused.store(false, Ordering::Relaxed);
    }
    std::process::exit(0);
}
