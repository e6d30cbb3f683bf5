//! Seat contention: many clients want the same few seats at the same second.
//!
//! Three groups, all in one run so that their ratios compare like with like:
//!
//! - `seatmap_core`: the functional core alone ([`SeatMap`], no actor, no
//!   thread hop): hold one seat and release it, on a 1,000-seat map.
//! - `actor_hot_concert`: one concert actor (one arbiter thread, started by
//!   `Engine::start` with a [`NullSink`] and the wall clock) hit by 1, 64 and
//!   1,024 concurrent clients that each hold one random seat of the same
//!   [`HOT_SEATS`] seats, one request after another, each request from a new
//!   member. Most requests are refused with `SeatUnavailable`: that is the
//!   contention. Holds live [`SHORT_HOLD_MS`] and the actor's own expiry
//!   timer frees them, so every message is a hold request and the seats keep
//!   cycling. Counted: hold requests, accepted and refused alike.
//!   - `engine_hold`: the path the HTTP layer uses (`Engine::hold` ->
//!     `ConcertRouter::request` -> the concert's `RequestBatcher`, which
//!     packs whatever is pending into one `ConcertRequestBatch` message);
//!   - `addr_send_hold` (1 and 1,024 clients, a diagnostic): one
//!     `Addr::send(HoldSeats)` per request straight to the actor, no
//!     batching and no router: what one unbatched message costs.
//! - `sql_hot_seats`: the same contention done the way the Java reference
//!   did it, through sqlx on a `seats(concert_id, seat_no, status, holder,
//!   version)` table: optimistic locking (read the version, `UPDATE … WHERE
//!   version = ?`, a lost race is a conflict) and pessimistic locking
//!   (`BEGIN IMMEDIATE` on SQLite, `SELECT … FOR UPDATE` on PostgreSQL), with
//!   each of [`SQL_CLIENTS`] client counts, plus a `parking_lot::Mutex<HashMap>`
//!   in memory (the lock-around-state baseline) and the actor
//!   (`Engine::hold`, `Engine::cancel`) with the same workflow. A table has
//!   no expiry timer, so in this group a client that wins releases its seat
//!   at once (one more `UPDATE`, or `Engine::cancel` for the actor: timed,
//!   not counted as a request). SQLite always (a temp-file database, WAL,
//!   `synchronous = NORMAL`, one connection); PostgreSQL only when
//!   `TEST_POSTGRES_URL` is set, in a fresh database dropped afterwards.
//!
//! Clients are tasks on a separate multi-thread tokio runtime with
//! [`CLIENT_WORKERS`] worker threads, not actix arbiters: that is how
//! actix-web handlers (or any async caller) reach the engine, every request
//! crosses a thread to reach the actor, and the same clients drive the SQL
//! designs. The machine has 2 cores; the concert actor's arbiter is a third
//! busy thread, so clients and actor share the cores.
//!
//! At the end of a full run the bench reads criterion's estimates of this run
//! and prints the figures, the ratios per client count (actor vs best SQL
//! design, actor vs mutex) and the verdict on each target.
//!
//! Run: `cargo bench --bench seat_contention` (add
//! `TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres` for the
//! PostgreSQL rows).

#[path = "common/estimates.rs"]
mod estimates;

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::Addr;
use concert_actors::clock::SystemClock;
use concert_actors::concert::Reservation;
use concert_actors::concert_actor::{Committed, ConcertActor, HoldSeats};
use concert_actors::pricing::Pricing;
use concert_actors::router::ConcertRouter;
use concert_actors::seat_map::{HoldLimits, SeatMap};
use concert_actors::sink::NullSink;
use concert_actors::types::{ConcertId, MemberId, SeatNo};
use concert_actors::{Engine, EngineError, EngineSettings, NewConcert};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use parking_lot::Mutex;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::ConnectOptions;

/// Seats every client fights over.
const HOT_SEATS: u32 = 64;
/// Seats of the benchmark concert (and rows of the SQL table).
const CONCERT_SEATS: u32 = 1_000;
/// Concurrent clients of the single concert actor.
const ACTOR_CLIENTS: [usize; 3] = [1, 64, 1_024];
/// Concurrent clients of the like-for-like workflow (SQL designs, mutex
/// baseline and the actor), each count run for every design.
const SQL_CLIENTS: [usize; 2] = [64, 1_024];
/// Connections in each SQL pool, each the fastest tried on this machine
/// (the SQL designs get their best setting). SQLite lets one writer in at a
/// time, and extra connections are writers sleeping in its busy handler: of
/// 1/2/4/8/16/64 connections, 1 was fastest for both designs, and with 64
/// the pessimistic design fell below 100 requests/s. PostgreSQL: 64
/// connections (with 64 clients, 64 was a little ahead of 16 and well ahead
/// of 4; the server's `max_connections` of 100 rules out one per client at
/// 1,024 clients, and more connections than cores only add lock waiters).
const SQLITE_POOL: u32 = 1;
const POSTGRES_POOL: u32 = 64;
/// Worker threads of the clients' tokio runtime.
const CLIENT_WORKERS: usize = 2;
/// The concert id used in the SQL table.
const SQL_CONCERT: i64 = 1;

/// Not `criterion_main!`: after the run this `main` also prints the ratios.
fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default().configure_from_args();
    seatmap_core(&mut criterion);
    actor_hot_concert(&mut criterion);
    sql_hot_seats(&mut criterion);
    criterion.final_summary();
    if !std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        print_ratios(started);
    }
}

// ---- seatmap_core ------------------------------------------------------------

fn seatmap_core(c: &mut Criterion) {
    let mut seats = SeatMap::new(CONCERT_SEATS, Pricing::flat(10_000));
    println!(
        "SeatMap::bytes_per_seat_at_rest() = {} (target <= 16)",
        seats.bytes_per_seat_at_rest()
    );
    let limits = HoldLimits {
        max_seats_per_reservation: 4,
        max_seats_per_member: 4,
    };
    let mut group = c.benchmark_group("seatmap_core");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let mut reservation = 0u64;
    group.bench_function("hold_release_1000_seats", |b| {
        b.iter(|| {
            reservation += 1;
            let seat = (reservation % u64::from(CONCERT_SEATS)) as SeatNo + 1;
            let member = reservation % 1_024 + 1;
            let held = seats.hold(member, reservation, &[seat], 1_000, limits);
            black_box(held.is_ok());
            black_box(seats.release(reservation).is_some())
        })
    });
    group.finish();
    seats.check_invariants();
    assert_eq!(seats.available(), CONCERT_SEATS, "every hold was released");
}

// ---- actor_hot_concert -------------------------------------------------------

/// What the clients of one benchmark saw, summed over every sample.
#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    unavailable: AtomicU64,
    /// Optimistic-lock conflicts (the version changed under us).
    conflict: AtomicU64,
    /// Anything else: must stay 0 for the figure to mean anything.
    other: AtomicU64,
}

#[derive(Default)]
struct LocalTally {
    accepted: u64,
    unavailable: u64,
    conflict: u64,
    other: u64,
}

impl Tally {
    fn add(&self, local: &LocalTally) {
        self.accepted.fetch_add(local.accepted, Ordering::Relaxed);
        self.unavailable.fetch_add(local.unavailable, Ordering::Relaxed);
        self.conflict.fetch_add(local.conflict, Ordering::Relaxed);
        self.other.fetch_add(local.other, Ordering::Relaxed);
    }

    fn report(&self, name: &str) {
        let accepted = self.accepted.load(Ordering::Relaxed);
        let unavailable = self.unavailable.load(Ordering::Relaxed);
        let conflict = self.conflict.load(Ordering::Relaxed);
        let other = self.other.load(Ordering::Relaxed);
        let total = accepted + unavailable + conflict + other;
        if total == 0 {
            return; // filtered out of this run
        }
        println!(
            "{name}: {total} hold requests, accepted {:.1}%, seat unavailable {:.1}%, \
             version conflict {:.1}%, other errors {other}",
            100.0 * accepted as f64 / total as f64,
            100.0 * unavailable as f64 / total as f64,
            100.0 * conflict as f64 / total as f64,
        );
        if other > 0 {
            println!("WARNING {name}: {other} requests failed with an unexpected error");
        }
    }
}

/// A tiny per-client PRNG (xorshift64*): picks hot seats without shared state.
struct SeatPicker(u64);

impl SeatPicker {
    fn new(client: usize) -> Self {
        Self(0x9E37_79B9_7F4A_7C15 ^ (client as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next_seat(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as u32 % HOT_SEATS + 1
    }
}

/// Runs `clients` client tasks sharing `iters` requests and returns the
/// wall time from the first spawn to the last answer.
async fn run_clients<F, Fut>(clients: usize, iters: u64, client: F) -> Duration
where
    F: Fn(usize, u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let clients_u64 = clients as u64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .filter_map(|idx| {
            let share = iters / clients_u64 + u64::from((idx as u64) < iters % clients_u64);
            (share > 0).then(|| tokio::spawn(client(idx, share)))
        })
        .collect();
    for task in tasks {
        task.await.expect("a client task does not panic");
    }
    started.elapsed()
}

/// How the hot seats are made free again so that the contention goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cycling {
    /// Holds live [`SHORT_HOLD_MS`] and the actor's own expiry timer (every
    /// [`SHORT_EXPIRY_TICK_MS`]) releases them: every message is a hold.
    ShortHolds,
    /// Holds live the default 5 minutes; a client that wins cancels at once
    /// (one more message, timed but not counted), like the SQL clients.
    CancelWins,
}

const SHORT_HOLD_MS: i64 = 1;
const SHORT_EXPIRY_TICK_MS: u64 = 1;

fn engine_settings(cycling: Cycling) -> EngineSettings {
    let (hold_timeout_ms, expiry_tick_ms) = match cycling {
        Cycling::ShortHolds => (SHORT_HOLD_MS, SHORT_EXPIRY_TICK_MS),
        Cycling::CancelWins => (300_000, 100),
    };
    let mut settings = EngineSettings::contract_defaults();
    settings.hold.hold_timeout_ms = hold_timeout_ms;
    settings.hold.expiry_tick_ms = expiry_tick_ms;
    settings
}

/// An engine with one concert, its actix `System` on a thread of its own
/// and the concert actor on the router's single arbiter.
struct ActorWorld {
    engine: Arc<Engine>,
    concert: ConcertId,
    system: actix::System,
    thread: std::thread::JoinHandle<()>,
}

impl ActorWorld {
    fn start(settings: EngineSettings) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("actix-system".into())
            .spawn(move || {
                let runner = actix::System::new();
                runner.block_on(async move {
                    let engine = Engine::start(
                        settings,
                        Arc::new(SystemClock),
                        Arc::new(NullSink::default()),
                        ConcertRouter::with_threads(1),
                    );
                    let concert = engine
                        .create_concert(NewConcert {
                            title: "Hot concert".into(),
                            category: "bench".into(),
                            venue: "Arena".into(),
                            starts_at_ms: engine.now_ms() + 86_400_000,
                            seat_count: CONCERT_SEATS,
                            price: 10_000,
                            price_tiers: Vec::new(),
                        })
                        .expect("the bench concert is valid")
                        .value
                        .info
                        .id;
                    ready_tx
                        .send((Arc::new(engine), concert, actix::System::current()))
                        .expect("the bench waits for the engine");
                });
                runner.run().expect("the actix system runs until stopped");
            })
            .expect("a thread for the actix system");
        let (engine, concert, system) = ready_rx.recv().expect("the engine starts");
        Self {
            engine,
            concert,
            system,
            thread,
        }
    }

    fn stop(self) {
        self.engine.shutdown();
        self.system.stop();
        self.thread.join().expect("the actix system thread exits cleanly");
    }
}

/// Which way a hold request reaches the concert actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldPath {
    /// `Engine::hold`: through the router and the concert's request batcher.
    Engine,
    /// `Addr::send(HoldSeats)` straight to the actor, one message per
    /// request, no batching: what one message costs by itself.
    Direct,
}

/// What the clients of one actor benchmark share.
struct ActorFront {
    engine: Arc<Engine>,
    concert: ConcertId,
    path: HoldPath,
    addr: Addr<ConcertActor>,
    /// The direct path bypasses `Engine::hold`'s counter: the bench numbers
    /// its reservations.
    reservation_ids: AtomicU64,
}

impl ActorFront {
    async fn hold(&self, member: MemberId, seat: SeatNo) -> Result<Committed<Reservation>, EngineError> {
        let seats = vec![seat];
        if self.path == HoldPath::Engine {
            return self.engine.hold(member, self.concert, seats).await;
        }
        let reservation = self.reservation_ids.fetch_add(1, Ordering::Relaxed);
        let hold = HoldSeats {
            member,
            reservation,
            seats,
            idempotency: None,
        };
        self.addr.send(hold).await.unwrap_or(Err(EngineError::Unavailable))
    }
}

/// One client of the actor: `requests` holds of one random hot seat each.
/// Every request comes from a new member (a hot sale is thousands of
/// people), so the per-member ticket limit never refuses one.
async fn actor_client(front: Arc<ActorFront>, client: usize, requests: u64, cycling: Cycling, tally: Arc<Tally>) {
    let mut picker = SeatPicker::new(client);
    let mut local = LocalTally::default();
    for request in 0..requests {
        let member = ((client as MemberId) << 32) | (request + 1);
        match front.hold(member, picker.next_seat()).await {
            Ok(held) if cycling == Cycling::CancelWins => match front.engine.cancel(member, held.value.id).await {
                Ok(_) => local.accepted += 1,
                Err(_) => local.other += 1,
            },
            Ok(_) => local.accepted += 1,
            Err(EngineError::SeatUnavailable) => local.unavailable += 1,
            Err(_) => local.other += 1,
        }
    }
    tally.add(&local);
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_WORKERS)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .expect("a tokio runtime for the clients")
}

/// Benchmarks `clients` clients on a fresh engine (reservations accumulate
/// in an engine, so none is reused across benchmarks).
fn bench_actor(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    group_name: &str,
    rt: &tokio::runtime::Runtime,
    function: &str,
    clients: usize,
    path: HoldPath,
    cycling: Cycling,
) {
    let world = ActorWorld::start(engine_settings(cycling));
    let addr = world
        .engine
        .concert(world.concert)
        .expect("the bench concert exists")
        .addr;
    let front = Arc::new(ActorFront {
        engine: Arc::clone(&world.engine),
        concert: world.concert,
        path,
        addr,
        reservation_ids: AtomicU64::new(1),
    });
    let tally = Arc::new(Tally::default());
    let name = format!("{group_name}/{function}/{clients}");
    group.bench_function(BenchmarkId::new(function, clients), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let front = Arc::clone(&front);
            let tally = Arc::clone(&tally);
            run_clients(clients, iters, move |client, requests| {
                actor_client(Arc::clone(&front), client, requests, cycling, Arc::clone(&tally))
            })
        })
    });
    tally.report(&name);
    drop(front);
    world.stop();
}

fn actor_hot_concert(c: &mut Criterion) {
    let rt = client_runtime();
    let mut group = c.benchmark_group("actor_hot_concert");
    group
        .throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for clients in ACTOR_CLIENTS {
        bench_actor(
            &mut group,
            "actor_hot_concert",
            &rt,
            "engine_hold",
            clients,
            HoldPath::Engine,
            Cycling::ShortHolds,
        );
    }
    // Diagnostic: one unbatched message per request, alone and crowded.
    for clients in [1, 1_024] {
        bench_actor(
            &mut group,
            "actor_hot_concert",
            &rt,
            "addr_send_hold",
            clients,
            HoldPath::Direct,
            Cycling::ShortHolds,
        );
    }
    group.finish();
}

// ---- sql_hot_seats -------------------------------------------------------------

/// The answer to one hold attempt against a shared store.
enum Outcome {
    Accepted,
    Unavailable,
    Conflict,
}

const CREATE_TABLE: &str = "CREATE TABLE seats (
    concert_id BIGINT NOT NULL,
    seat_no INTEGER NOT NULL,
    status TEXT NOT NULL,
    holder BIGINT,
    version BIGINT NOT NULL,
    PRIMARY KEY (concert_id, seat_no)
)";

async fn sqlite_pool(path: &std::path::Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
        .disable_statement_logging();
    let pool = SqlitePoolOptions::new()
        .max_connections(SQLITE_POOL)
        .min_connections(SQLITE_POOL)
        .connect_with(options)
        .await?;
    sqlx::query(CREATE_TABLE).execute(&pool).await?;
    let mut tx = pool.begin().await?;
    for seat in 1..=CONCERT_SEATS as i64 {
        sqlx::query("INSERT INTO seats VALUES (?1, ?2, 'AVAILABLE', NULL, 0)")
            .bind(SQL_CONCERT)
            .bind(seat)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(pool)
}

async fn sqlite_release(pool: &SqlitePool, holder: i64, seat: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE seats SET status = 'AVAILABLE', holder = NULL, version = version + 1 \
         WHERE concert_id = ?1 AND seat_no = ?2 AND holder = ?3",
    )
    .bind(SQL_CONCERT)
    .bind(seat)
    .bind(holder)
    .execute(pool)
    .await?;
    Ok(())
}

/// Read the row and its version, then `UPDATE … WHERE version = ?`.
async fn sqlite_optimistic(pool: &SqlitePool, holder: i64, seat: i64) -> Result<Outcome, sqlx::Error> {
    let (status, version): (String, i64) =
        sqlx::query_as("SELECT status, version FROM seats WHERE concert_id = ?1 AND seat_no = ?2")
            .bind(SQL_CONCERT)
            .bind(seat)
            .fetch_one(pool)
            .await?;
    if status != "AVAILABLE" {
        return Ok(Outcome::Unavailable);
    }
    let updated = sqlx::query(
        "UPDATE seats SET status = 'HELD', holder = ?1, version = version + 1 \
         WHERE concert_id = ?2 AND seat_no = ?3 AND version = ?4",
    )
    .bind(holder)
    .bind(SQL_CONCERT)
    .bind(seat)
    .bind(version)
    .execute(pool)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(Outcome::Conflict);
    }
    sqlite_release(pool, holder, seat).await?;
    Ok(Outcome::Accepted)
}

/// `BEGIN IMMEDIATE` takes SQLite's write lock first, then read and write.
async fn sqlite_pessimistic(pool: &SqlitePool, holder: i64, seat: i64) -> Result<Outcome, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let status: String = sqlx::query_scalar("SELECT status FROM seats WHERE concert_id = ?1 AND seat_no = ?2")
        .bind(SQL_CONCERT)
        .bind(seat)
        .fetch_one(&mut *tx)
        .await?;
    if status != "AVAILABLE" {
        tx.rollback().await?;
        return Ok(Outcome::Unavailable);
    }
    sqlx::query(
        "UPDATE seats SET status = 'HELD', holder = ?1, version = version + 1 \
         WHERE concert_id = ?2 AND seat_no = ?3",
    )
    .bind(holder)
    .bind(SQL_CONCERT)
    .bind(seat)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlite_release(pool, holder, seat).await?;
    Ok(Outcome::Accepted)
}

async fn pg_release(pool: &PgPool, holder: i64, seat: i32) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE seats SET status = 'AVAILABLE', holder = NULL, version = version + 1 \
         WHERE concert_id = $1 AND seat_no = $2 AND holder = $3",
    )
    .bind(SQL_CONCERT)
    .bind(seat)
    .bind(holder)
    .execute(pool)
    .await?;
    Ok(())
}

async fn pg_optimistic(pool: &PgPool, holder: i64, seat: i32) -> Result<Outcome, sqlx::Error> {
    let (status, version): (String, i64) =
        sqlx::query_as("SELECT status, version FROM seats WHERE concert_id = $1 AND seat_no = $2")
            .bind(SQL_CONCERT)
            .bind(seat)
            .fetch_one(pool)
            .await?;
    if status != "AVAILABLE" {
        return Ok(Outcome::Unavailable);
    }
    let updated = sqlx::query(
        "UPDATE seats SET status = 'HELD', holder = $1, version = version + 1 \
         WHERE concert_id = $2 AND seat_no = $3 AND version = $4",
    )
    .bind(holder)
    .bind(SQL_CONCERT)
    .bind(seat)
    .bind(version)
    .execute(pool)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(Outcome::Conflict);
    }
    pg_release(pool, holder, seat).await?;
    Ok(Outcome::Accepted)
}

/// `SELECT … FOR UPDATE` locks the row until commit.
async fn pg_pessimistic(pool: &PgPool, holder: i64, seat: i32) -> Result<Outcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let status: String =
        sqlx::query_scalar("SELECT status FROM seats WHERE concert_id = $1 AND seat_no = $2 FOR UPDATE")
            .bind(SQL_CONCERT)
            .bind(seat)
            .fetch_one(&mut *tx)
            .await?;
    if status != "AVAILABLE" {
        tx.rollback().await?;
        return Ok(Outcome::Unavailable);
    }
    sqlx::query(
        "UPDATE seats SET status = 'HELD', holder = $1, version = version + 1 \
         WHERE concert_id = $2 AND seat_no = $3",
    )
    .bind(holder)
    .bind(SQL_CONCERT)
    .bind(seat)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    pg_release(pool, holder, seat).await?;
    Ok(Outcome::Accepted)
}

/// A seat row kept in memory behind one lock: the baseline.
struct MemRow {
    held: bool,
    holder: i64,
    version: u64,
}

fn mutex_hold(seats: &Mutex<HashMap<u32, MemRow>>, holder: i64, seat: u32) -> Outcome {
    {
        let mut rows = seats.lock();
        let Some(row) = rows.get_mut(&seat) else {
            return Outcome::Conflict;
        };
        if row.held {
            return Outcome::Unavailable;
        }
        row.held = true;
        row.holder = holder;
        row.version += 1;
    }
    let mut rows = seats.lock();
    if let Some(row) = rows.get_mut(&seat).filter(|row| row.holder == holder) {
        row.held = false;
        row.holder = 0;
        row.version += 1;
    }
    Outcome::Accepted
}

fn count(local: &mut LocalTally, outcome: Result<Outcome, sqlx::Error>, first_error: &mut Option<String>) {
    match outcome {
        Ok(Outcome::Accepted) => local.accepted += 1,
        Ok(Outcome::Unavailable) => local.unavailable += 1,
        Ok(Outcome::Conflict) => local.conflict += 1,
        Err(err) => {
            local.other += 1;
            first_error.get_or_insert_with(|| err.to_string());
        }
    }
}

/// Benchmarks one SQL design: `attempt(pool, holder, seat)` per request.
fn bench_sql<P, F, Fut>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    clients: usize,
    pool: &P,
    attempt: F,
) where
    P: Clone + Send + Sync + 'static,
    F: Fn(P, i64, u32) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, sqlx::Error>> + Send + 'static,
{
    let tally = Arc::new(Tally::default());
    let first_error = Arc::new(Mutex::new(None::<String>));
    group.bench_function(BenchmarkId::new(name, clients), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let pool = pool.clone();
            let tally = Arc::clone(&tally);
            let first_error = Arc::clone(&first_error);
            let attempt = attempt.clone();
            run_clients(clients, iters, move |idx, requests| {
                let (pool, tally, first_error, attempt) = (
                    pool.clone(),
                    Arc::clone(&tally),
                    Arc::clone(&first_error),
                    attempt.clone(),
                );
                async move {
                    let mut picker = SeatPicker::new(idx);
                    let mut local = LocalTally::default();
                    let mut error = None;
                    for _ in 0..requests {
                        let outcome = attempt(pool.clone(), idx as i64 + 1, picker.next_seat()).await;
                        count(&mut local, outcome, &mut error);
                    }
                    tally.add(&local);
                    if let Some(err) = error {
                        first_error.lock().get_or_insert(err);
                    }
                }
            })
        })
    });
    tally.report(&format!("sql_hot_seats/{name}/{clients}"));
    let first_error = first_error.lock().take();
    if let Some(err) = first_error {
        println!("sql_hot_seats/{name}/{clients}: first error: {err}");
    }
}

fn sql_group<'a>(c: &'a mut Criterion) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group("sql_hot_seats");
    group
        .throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group
}

fn sql_hot_seats(c: &mut Criterion) {
    let rt = client_runtime();
    let mut group = sql_group(c);

    let rows: HashMap<u32, MemRow> = (1..=CONCERT_SEATS)
        .map(|seat| {
            (
                seat,
                MemRow {
                    held: false,
                    holder: 0,
                    version: 0,
                },
            )
        })
        .collect();
    let memory = Arc::new(Mutex::new(rows));
    let dir = tempfile::tempdir().expect("a temp dir for the SQLite database");
    let sqlite = rt
        .block_on(sqlite_pool(&dir.path().join("seats.db")))
        .expect("the SQLite bench database opens");
    let pragmas: (String, i64) = rt
        .block_on(async {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&sqlite).await?;
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&sqlite).await?;
            Ok::<_, sqlx::Error>((mode, sync))
        })
        .expect("SQLite answers PRAGMA");
    println!(
        "SQLite: journal_mode={} synchronous={} (1 = NORMAL), pool of {SQLITE_POOL}",
        pragmas.0, pragmas.1
    );
    let postgres = match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(
            rt.block_on(ScratchPg::create(&url))
                .expect("a scratch PostgreSQL database"),
        ),
        _ => {
            println!("sql_hot_seats: PostgreSQL rows SKIPPED (set TEST_POSTGRES_URL to run them)");
            None
        }
    };

    for clients in SQL_CLIENTS {
        bench_sql(
            &mut group,
            &rt,
            "mutex_hashmap",
            clients,
            &memory,
            |seats, holder, seat| async move { Ok(mutex_hold(&seats, holder, seat)) },
        );
        // The actor with the SQL clients' workflow: a winner cancels at once.
        bench_actor(
            &mut group,
            "sql_hot_seats",
            &rt,
            "actor_engine_hold",
            clients,
            HoldPath::Engine,
            Cycling::CancelWins,
        );
        bench_sql(
            &mut group,
            &rt,
            "sqlite_optimistic",
            clients,
            &sqlite,
            |pool, holder, seat| async move { sqlite_optimistic(&pool, holder, i64::from(seat)).await },
        );
        bench_sql(
            &mut group,
            &rt,
            "sqlite_pessimistic",
            clients,
            &sqlite,
            |pool, holder, seat| async move { sqlite_pessimistic(&pool, holder, i64::from(seat)).await },
        );
        if let Some(scratch) = &postgres {
            bench_sql(
                &mut group,
                &rt,
                "postgres_optimistic",
                clients,
                &scratch.pool,
                |pool, holder, seat| async move { pg_optimistic(&pool, holder, seat as i32).await },
            );
            bench_sql(
                &mut group,
                &rt,
                "postgres_pessimistic",
                clients,
                &scratch.pool,
                |pool, holder, seat| async move { pg_pessimistic(&pool, holder, seat as i32).await },
            );
        }
    }
    group.finish();
    rt.block_on(sqlite.close());
    drop(dir);
    if let Some(scratch) = postgres {
        rt.block_on(scratch.drop_database())
            .expect("the scratch database is dropped");
    }
}

/// A uniquely named PostgreSQL database that lives for one bench run.
struct ScratchPg {
    admin: PgPool,
    pool: PgPool,
    name: String,
}

impl ScratchPg {
    async fn create(url: &str) -> Result<Self, sqlx::Error> {
        let admin_options = PgConnectOptions::from_str(url)?.disable_statement_logging();
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(admin_options.clone())
            .await?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let name = format!("concert_bench_{}_{nanos}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_POOL)
            .min_connections(POSTGRES_POOL)
            .connect_with(admin_options.database(&name))
            .await?;
        sqlx::query(CREATE_TABLE).execute(&pool).await?;
        sqlx::query("INSERT INTO seats SELECT $1, n, 'AVAILABLE', NULL, 0 FROM generate_series(1, $2::int) AS n")
            .bind(SQL_CONCERT)
            .bind(CONCERT_SEATS as i32)
            .execute(&pool)
            .await?;
        let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&pool).await?;
        let commit: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&pool).await?;
        let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(&pool).await?;
        println!(
            "PostgreSQL {version}: database {name}, synchronous_commit={commit} fsync={fsync}, \
             pool of {POSTGRES_POOL}"
        );
        Ok(Self { admin, pool, name })
    }

    async fn drop_database(self) -> Result<(), sqlx::Error> {
        self.pool.close().await;
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&self.admin)
            .await?;
        self.admin.close().await;
        println!("PostgreSQL: database {} dropped", self.name);
        Ok(())
    }
}

// ---- ratios ----------------------------------------------------------------------

/// Requests per second of one benchmark of this run, from criterion's
/// estimates (`None` if it did not run in this process).
fn throughput_of(id: &str, since: SystemTime) -> Option<f64> {
    estimates::ns_per_iter(id, since).map(|ns_per_request| 1e9 / ns_per_request)
}

fn print_ratios(since: SystemTime) {
    let get = |id: &str| throughput_of(id, since);
    let verdict = |met: bool| if met { "MET" } else { "MISSED" };
    println!("\n== figures, ratios and verdicts of this run (hold requests/s) ==");
    println!("like for like: {HOT_SEATS} hot seats, a winner releases its seat at once (not counted)");
    for clients in SQL_CLIENTS {
        let best_sql = [
            "sqlite_optimistic",
            "sqlite_pessimistic",
            "postgres_optimistic",
            "postgres_pessimistic",
        ]
        .iter()
        .filter_map(|name| get(&format!("sql_hot_seats/{name}/{clients}")).map(|rate| (*name, rate)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
        let mutex = get(&format!("sql_hot_seats/mutex_hashmap/{clients}"));
        let actor = get(&format!("sql_hot_seats/actor_engine_hold/{clients}"));
        println!("{clients} clients:");
        if let Some((name, rate)) = best_sql {
            println!("  best SQL design: {name} {rate:.0}/s");
        }
        if let Some(mutex) = mutex {
            println!("  mutex_hashmap: {mutex:.0}/s");
        }
        let Some(actor) = actor else {
            continue;
        };
        let mut line = format!("  actor (Engine::hold + Engine::cancel): {actor:.0}/s");
        if let Some(mutex) = mutex {
            line += &format!(", {:.3}x the mutex", actor / mutex);
        }
        println!("{line}");
        if let Some((name, sql)) = best_sql {
            let ratio = actor / sql;
            println!(
                "  VERDICT actor vs best SQL ({name}) at {clients} clients: {ratio:.1}x (target >= 100x): {}",
                verdict(ratio >= 100.0)
            );
        }
    }
    println!("one hot concert, holds released by the actor's expiry timer:");
    for clients in ACTOR_CLIENTS {
        for name in ["engine_hold", "addr_send_hold"] {
            if let Some(rate) = get(&format!("actor_hot_concert/{name}/{clients}")) {
                println!("  {name} with {clients} clients: {rate:.0}/s");
            }
        }
    }
    if let Some(rate) = get("actor_hot_concert/engine_hold/1024") {
        println!(
            "  VERDICT Engine::hold with 1024 clients: {rate:.0}/s (target >= 1000000/s): {}",
            verdict(rate >= 1e6)
        );
    }
}
