//! Persistence: how many events the durable write-behind persister commits per
//! second, and how long a large database takes to come back at start-up.
//!
//! Every figure is measured on SQLite (a fresh temp-file database opened with
//! `Db::connect`: WAL, `synchronous = FULL`) and, when `TEST_POSTGRES_URL` is
//! set, on PostgreSQL (a fresh, uniquely named database created through that
//! admin URL and dropped afterwards), in the same run:
//!
//! - `sync_durable/<backend>_group_commit`: a [`Persister`] (flush interval
//!   [`FLUSH_INTERVAL`], its flusher a tokio task) fed by [`PRODUCERS`]
//!   concurrent tasks. Each appends one event and waits for `durable(pos)`
//!   before its next append: exactly what an HTTP request does in `sync`
//!   durability. Counted: durable events, i.e. events whose JOURNAL row
//!   committed. The normalized tables are a projection the persister's
//!   projection loop keeps after the journal commits (`writer::project`),
//!   concurrently with them, so they lag; the
//!   bench prints, per measurement, the table side separately: the largest
//!   projection lag seen (sampled every millisecond), the lag when the
//!   producers stopped, how long the tables then took to catch up, and the
//!   table rate (events projected over the time from the first sample to the
//!   end of the catch-up). On SQLite it also prints the largest WAL file seen
//!   of each of the two files (main and journal).
//! - `sync_durable/<backend>_single_commit`: the same event stream, one
//!   `write_journal(db, &[event])` (one transaction with one journal row,
//!   the durable part of the write path) per event, sequentially.
//!
//!   The events are what a sale produces, per member and in this order:
//!   `BalanceCharged`, `SeatsHeld` (2 seats), `PaymentCompleted` (with the
//!   member's queue token), `SeatsHeld` (2 seats), `HoldReleased`
//!   (cancelled), then again. Members (with an admitted queue token) and
//!   concerts are committed first, as in a real sale (the engine names a
//!   member or concert only after the event that created it).
//!   Each measurement has its own fresh database.
//! - `start_to_ready/<backend>_from_snapshot` and `..._from_tables`: a
//!   database with [`FULL`] concerts x seats (1,000 x 1,000 = 1,000,000
//!   seats) and 1,000,000 journal events of the same mix (committed through
//!   `write_batch` in batches of [`LOAD_BATCH`]), prepared once per backend
//!   outside the measurement. Timed: `recover(db)` + `resume_after` +
//!   `Engine::restore` on a freshly started engine + filling the catalog,
//!   which is what `Application::build` does before it turns ready. First
//!   with no snapshot row (recovery from the normalized tables), then after
//!   `take_snapshot` of an engine restored from the database (recovery from
//!   the snapshot; the journal holds nothing after it). The OS page cache is
//!   warm: this is a restart, not a cold boot.
//!
//! Under `cargo bench -- --test` (CI) the start-up database is [`TINY`], so the
//! test run takes seconds. Passing a filter also skips the preparation of the
//! groups it cannot match (a substring test, so keep filters literal).
//!
//! At the end of a full run the bench reads criterion's estimates of this run
//! and prints events/s, the group/single ratios and the targets.
//!
//! Run: `cargo bench --bench persistence` (add
//! `TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres` for the
//! PostgreSQL rows).

#[path = "common/database_url.rs"]
mod database_url;
#[path = "common/estimates.rs"]
mod estimates;
#[path = "common/workload.rs"]
mod workload;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use concert_actors::clock::SystemClock;
use concert_actors::concert_actor::GetReservation;
use concert_actors::router::ConcertRouter;
use concert_actors::sink::EventSink;
use concert_actors::types::{JournalPos, SeatStatus};
use concert_actors::{Engine, EngineSettings, EngineState, Event};
use concert_server::catalog::Catalog;
use concert_server::persistence::db::journal_path;
use concert_server::persistence::recovery::recover;
use concert_server::persistence::snapshot::take_snapshot;
use concert_server::persistence::writer::{write_batch, write_journal};
use concert_server::persistence::{Db, Persister};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use database_url::with_database;
use estimates::ns_per_iter;
use sqlx::Connection;
use workload::{now_ms, setup_events, Ids, Producer, Size, HOLD_TIMEOUT_MS, SEATS_PER_HOLD};

/// Concurrent producers of the group-commit measurement.
const PRODUCERS: usize = 256;
/// A second, larger crowd: whether more concurrency (bigger batches) helps.
const MORE_PRODUCERS: usize = 1_024;
/// The server's default `CONCERT_FLUSH_INTERVAL`.
const FLUSH_INTERVAL: Duration = Duration::from_millis(2);
/// Worker threads of the producers' tokio runtime (the machine has 2 cores).
const WORKERS: usize = 2;
/// Events per `write_batch` while preparing the start-up database
/// (the persister's own `MAX_BATCH_EVENTS`).
const LOAD_BATCH: usize = 20_000;

/// Targets of the issue (2 cores).
const TARGET_SQLITE_EVENTS: f64 = 100_000.0;
const TARGET_POSTGRES_EVENTS: f64 = 50_000.0;
const TARGET_START_SECS: f64 = 2.0;

/// The start-up database of the issue: 1,000,000 seats, 1,000,000 events.
const FULL: Size = Size {
    concerts: 1_000,
    seats: 1_000,
    members: 1_000,
    events: 1_000_000,
};
/// The same shape, tiny, for `--test`.
const TINY: Size = Size {
    concerts: 10,
    seats: 100,
    members: 20,
    events: 1_000,
};
/// Where the sync measurements hold seats: enough that no seat is held twice
/// in a run (10,000,000 seats = 5,000,000 holds).
const SYNC_LAYOUT: Size = Size {
    concerts: 1_000,
    seats: 10_000,
    members: 0, // one per producer
    events: 0,
};

fn main() {
    let started = SystemTime::now();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--test" || a == "--list");
    let profiling = args.iter().any(|a| a == "--profile-time");
    let filters = positional_filters(&args);
    let wanted = |id: &str| filters.is_empty() || filters.iter().any(|f| id.contains(f.as_str()) || f.contains(id));
    let postgres = std::env::var("TEST_POSTGRES_URL").ok().filter(|url| !url.is_empty());
    if postgres.is_none() {
        println!("persistence: PostgreSQL SKIPPED (set TEST_POSTGRES_URL to measure it)");
    }
    // The persister reports failing writes through tracing; nothing else is
    // logged (sqlx's own statement logging stays off, as it costs time).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("concert_server::persistence=warn"))
        .try_init();
    let mut criterion = Criterion::default().configure_from_args();

    {
        let mut group = criterion.benchmark_group("sync_durable");
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(10))
            .throughput(Throughput::Elements(1));
        let layout = if quick { TINY } else { SYNC_LAYOUT };
        for (backend, url) in backends(postgres.as_deref()) {
            for mode in [Mode::Group(PRODUCERS), Mode::Single, Mode::Group(MORE_PRODUCERS)] {
                let id = format!("sync_durable/{backend}_{}", mode.name());
                if wanted(&id) {
                    let layout = Size {
                        members: mode.producers() as u64,
                        ..layout
                    };
                    sync_durable(&mut group, backend, url.as_deref(), mode, layout);
                }
            }
        }
        group.finish();
    }

    {
        let mut group = criterion.benchmark_group("start_to_ready");
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(10));
        let size = if quick { TINY } else { FULL };
        for (backend, url) in backends(postgres.as_deref()) {
            let id = format!("start_to_ready/{backend}");
            if wanted(&id) {
                start_to_ready(&mut group, backend, url.as_deref(), size);
            }
        }
        group.finish();
    }

    criterion.final_summary();
    if !quick && !profiling {
        print_summary(started);
    }
}

/// `sqlite` always, `postgres` with its admin URL when one is set.
fn backends(postgres: Option<&str>) -> Vec<(&'static str, Option<String>)> {
    let mut list = vec![("sqlite", None)];
    if let Some(url) = postgres {
        list.push(("postgres", Some(url.to_owned())));
    }
    list
}

/// Criterion's positional arguments (benchmark filters).
fn positional_filters(args: &[String]) -> Vec<String> {
    const WITH_VALUE: [&str; 17] = [
        "--color",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--profile-time",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
        "--format",
        "--logfile",
    ];
    let mut filters = Vec::new();
    let mut skip_next = false;
    for arg in args.iter().skip(1) {
        if skip_next {
            skip_next = false;
        } else if WITH_VALUE.contains(&arg.as_str()) {
            skip_next = true;
        } else if !arg.starts_with('-') {
            filters.push(arg.clone());
        }
    }
    filters
}

/// Commits `events` after `last_pos` in batches of `LOAD_BATCH`; returns the
/// new last position.
async fn commit_all(db: &Db, last_pos: JournalPos, events: Vec<Event>) -> JournalPos {
    let mut pos = last_pos;
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    for event in events {
        pos += 1;
        batch.push((pos, event));
        if batch.len() == LOAD_BATCH {
            write_batch(db, &batch).await.expect("a load batch commits");
            batch.clear();
        }
    }
    if !batch.is_empty() {
        write_batch(db, &batch).await.expect("a load batch commits");
    }
    pos
}

// ---- scratch databases ---------------------------------------------------------------

/// A database for one measurement: a temp-file SQLite database or a fresh
/// PostgreSQL database (dropped when this is dropped).
struct Scratch {
    url: String,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl Scratch {
    fn create(backend: &str, admin_url: Option<&str>, tag: &str) -> Self {
        match admin_url {
            None => {
                let dir = tempfile::tempdir().expect("a temp folder");
                let url = format!("sqlite://{}", dir.path().join(format!("{tag}.db")).display());
                Self {
                    url,
                    _dir: Some(dir),
                    postgres: None,
                }
            }
            Some(admin) => {
                let nanos = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                let name = format!("concert_bench_{tag}_{}_{nanos}", std::process::id());
                let admin = admin.to_owned();
                let create = format!("CREATE DATABASE {name}");
                on_own_runtime(move || async move {
                    let mut conn = sqlx::PgConnection::connect(&admin)
                        .await
                        .expect("the admin URL connects");
                    sqlx::raw_sql(&create)
                        .execute(&mut conn)
                        .await
                        .expect("CREATE DATABASE");
                    let _ = conn.close().await;
                });
                println!("{backend}: database {name} created");
                Self {
                    url: with_database(admin_url.unwrap_or_default(), &name),
                    _dir: None,
                    postgres: Some((admin_url.unwrap_or_default().to_owned(), name)),
                }
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.postgres.take() {
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            on_own_runtime(move || async move {
                match sqlx::PgConnection::connect(&admin).await {
                    Ok(mut conn) => match sqlx::raw_sql(&drop).execute(&mut conn).await {
                        Ok(_) => println!("postgres: database {name} dropped"),
                        Err(err) => println!("WARNING: could not drop database {name}: {err}"),
                    },
                    Err(err) => println!("WARNING: could not drop database {name}: {err}"),
                }
            });
        }
    }
}

/// Runs the future `make` builds to completion on a fresh runtime in its own
/// thread (safe from inside or outside any runtime).
fn on_own_runtime<M, F>(make: M) -> F::Output
where
    M: FnOnce() -> F + Send + 'static,
    F: Future,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(make())
    })
    .join()
    .expect("the helper thread finishes")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

// ---- sync_durable ---------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A persister fed by this many concurrent producers.
    Group(usize),
    /// One transaction per event, the events of [`PRODUCERS`] members in turn.
    Single,
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::Group(producers) => format!("group_commit_{producers}"),
            Mode::Single => "single_commit".into(),
        }
    }

    fn producers(self) -> usize {
        match self {
            Mode::Group(producers) => producers,
            Mode::Single => PRODUCERS,
        }
    }
}

fn sync_durable(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    backend: &str,
    admin_url: Option<&str>,
    mode: Mode,
    layout: Size,
) {
    let scratch = Scratch::create(backend, admin_url, &mode.name());
    let rt = runtime();
    let db = rt.block_on(Db::connect(&scratch.url)).expect("the database opens");
    let last_pos = rt.block_on(commit_all(&db, 0, setup_events(layout)));
    let ids = Arc::new(Ids::default());
    let count = mode.producers();
    let mut producers: Vec<Producer> = (1..=count as u64).map(Producer::new).collect();
    let id = format!("{backend}_{}", mode.name());
    match mode {
        Mode::Group(_) => {
            let persister = Persister::new(last_pos, FLUSH_INTERVAL);
            let flusher = rt.spawn(persister.clone().run(db.clone()));
            // The table side: the largest projection lag and WAL file seen.
            let max_lag = Arc::new(AtomicU64::new(0));
            // SQLite: the main file's WAL and the journal file's.
            let max_wal = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
            let wal_paths = scratch.url.strip_prefix("sqlite://").map(|db| {
                let journal = journal_path(std::path::Path::new(db));
                [format!("{db}-wal"), format!("{}-wal", journal.display())]
            });
            let sampler = rt.spawn({
                let (persister, max_lag, max_wal) = (persister.clone(), max_lag.clone(), max_wal.clone());
                async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(1));
                    loop {
                        tick.tick().await;
                        max_lag.fetch_max(persister.projection_lag(), Ordering::Relaxed);
                        for (path, max) in wal_paths.iter().flatten().zip(max_wal.iter()) {
                            if let Ok(meta) = std::fs::metadata(path) {
                                max.fetch_max(meta.len(), Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
            let projected_before = persister.projected_pos();
            let table_clock = Instant::now();
            // Counts commits (each advances the committed position once; a
            // commit that lands while the watcher is not waiting is missed)
            // and the longest wait for the next commit while writes were pending.
            let commits = Arc::new(AtomicU64::new(0));
            let longest_gap_us = Arc::new(AtomicU64::new(0));
            let watcher = rt.spawn({
                let (persister, commits, longest) = (persister.clone(), commits.clone(), longest_gap_us.clone());
                async move {
                    loop {
                        let next = persister.committed_pos() + 1;
                        let waiting_since = Instant::now();
                        let pending = persister.last_pos() >= next;
                        if persister.durable(next).await.is_ok() {
                            commits.fetch_add(1, Ordering::Relaxed);
                        }
                        if pending {
                            longest.fetch_max(waiting_since.elapsed().as_micros() as u64, Ordering::Relaxed);
                        }
                    }
                }
            });
            // Waits that passed DURABLE_TIMEOUT: the server would have answered 503.
            let timeouts = Arc::new(AtomicU64::new(0));
            let appended_before = persister.last_pos();
            group.bench_function(id.as_str(), |b| {
                b.iter_custom(|iters| {
                    let taken = std::mem::take(&mut producers);
                    let (took, back) = rt.block_on(async {
                        let started = Instant::now();
                        let tasks: Vec<_> = taken
                            .into_iter()
                            .enumerate()
                            .map(|(idx, mut producer)| {
                                let share = iters / count as u64 + u64::from((idx as u64) < iters % count as u64);
                                let (persister, ids, timeouts) = (persister.clone(), ids.clone(), timeouts.clone());
                                tokio::spawn(async move {
                                    for _ in 0..share {
                                        let event = producer.next(&ids, layout, now_ms());
                                        let pos = persister.append(event);
                                        // The event stays appended after a timeout: wait on.
                                        while persister.durable(pos).await.is_err() {
                                            timeouts.fetch_add(1, Ordering::Relaxed);
                                            assert!(persister.healthy(), "the database write fails (see the log)");
                                        }
                                    }
                                    producer
                                })
                            })
                            .collect();
                        let mut back = Vec::with_capacity(count);
                        for task in tasks {
                            back.push(task.await.expect("a producer finishes"));
                        }
                        (started.elapsed(), back)
                    });
                    producers = back;
                    took
                })
            });
            let events = persister.last_pos() - appended_before;
            let lag_at_stop = persister.projection_lag();
            let flushed = rt.block_on(persister.shutdown(Duration::from_secs(10)));
            // The flusher returns once the tables have absorbed everything.
            let catch_up = Instant::now();
            rt.block_on(flusher).expect("the flusher finishes");
            let caught_up_in = catch_up.elapsed();
            let table_time = table_clock.elapsed();
            sampler.abort();
            assert_eq!(persister.projected_pos(), persister.last_pos(), "the tables caught up");
            let projected = persister.projected_pos() - projected_before;
            println!(
                "{backend} tables, {count} producers: {projected} events projected at {:.0} events/s \
                 (over {:.1} s incl. catch-up), largest projection lag {} events, {lag_at_stop} when the \
                 producers stopped, caught up {:.0} ms later{}",
                projected as f64 / table_time.as_secs_f64(),
                table_time.as_secs_f64(),
                max_lag.load(Ordering::Relaxed),
                caught_up_in.as_secs_f64() * 1e3,
                match (max_wal[0].load(Ordering::Relaxed), max_wal[1].load(Ordering::Relaxed)) {
                    (0, 0) => String::new(),
                    (main, journal) => format!(
                        ", largest WAL files {:.1} MB (main file), {:.1} MB (journal file)",
                        main as f64 / 1e6,
                        journal as f64 / 1e6
                    ),
                }
            );
            watcher.abort();
            let commits = commits.load(Ordering::Relaxed).max(1);
            println!(
                "{backend} group commit, {count} producers: {events} durable events in about {commits} commits \
                 (about {:.0} events per commit), longest wait for a commit {:.1} ms, \
                 {} waits passed DURABLE_TIMEOUT, flushed at shutdown: {flushed}",
                events as f64 / commits as f64,
                longest_gap_us.load(Ordering::Relaxed) as f64 / 1e3,
                timeouts.load(Ordering::Relaxed),
            );
        }
        Mode::Single => {
            let mut pos = last_pos;
            let mut turn = 0usize;
            group.bench_function(id.as_str(), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iters {
                            let producer = &mut producers[turn % count];
                            turn += 1;
                            pos += 1;
                            let event = producer.next(&ids, layout, now_ms());
                            write_journal(&db, &[(pos, event)])
                                .await
                                .expect("a single event commits");
                        }
                        started.elapsed()
                    })
                })
            });
        }
    }
    rt.block_on(db.close());
    drop(rt);
    drop(scratch);
}

// ---- start_to_ready ---------------------------------------------------------------------

fn engine_settings() -> EngineSettings {
    let mut settings = EngineSettings::contract_defaults();
    settings.hold.hold_timeout_ms = HOLD_TIMEOUT_MS;
    settings
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// Seats SOLD and HELD across every concert of `state`.
fn seat_totals(state: &EngineState) -> (u64, u64) {
    let (mut sold, mut held) = (0, 0);
    for concert in state.concerts.values() {
        for (_, _, status) in concert.seats().seats() {
            match status {
                SeatStatus::Sold => sold += 1,
                SeatStatus::Held => held += 1,
                SeatStatus::Available => {}
            }
        }
    }
    (sold, held)
}

/// Recovers and restores into a fresh engine, then shuts it down; returns the
/// time from the first recovery query to ready.
async fn start_once(db: &Db, expect_source: &str) -> Duration {
    let persister = Persister::new(0, FLUSH_INTERVAL);
    let sink: Arc<dyn EventSink> = persister.clone();
    let engine = Engine::start(
        engine_settings(),
        Arc::new(SystemClock),
        sink,
        ConcertRouter::with_threads(threads()),
    );
    let catalog = Catalog::default();
    let started = Instant::now();
    let recovered = recover(db).await.expect("recovery succeeds");
    persister.resume_after(recovered.last_pos);
    engine.restore(recovered.state);
    for handle in engine.router().all() {
        catalog.add(&handle.info);
    }
    let took = started.elapsed();
    assert!(
        recovered.source.starts_with(expect_source),
        "recovered from {} where {expect_source} was expected",
        recovered.source
    );
    assert_eq!(catalog.len(), engine.router().len());
    settle(&engine).await;
    engine.shutdown();
    took
}

/// Waits (untimed) until every concert actor has started and answers, so
/// each measurement ends with a fully started engine (stopping it earlier no
/// longer panics: tests/shutdown.rs).
async fn settle(engine: &Engine) {
    for handle in engine.router().all() {
        let reply = engine.router().send(handle.info.id, GetReservation(0)).await;
        assert!(reply.is_ok(), "concert {} answers", handle.info.id);
    }
}

fn start_to_ready(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    backend: &str,
    admin_url: Option<&str>,
    size: Size,
) {
    let scratch = Scratch::create(backend, admin_url, "startup");
    let system = actix_rt::System::new();
    let db = system.block_on(Db::connect(&scratch.url)).expect("the database opens");

    // Prepare: members, concerts, then the workload, in large batches.
    let prep = Instant::now();
    let setup = setup_events(size);
    let setup_len = setup.len() as u64;
    let ids = Ids::default();
    let mut producers: Vec<Producer> = (1..=size.members).map(Producer::new).collect();
    let now = now_ms();
    let workload: Vec<Event> = (0..size.events)
        .map(|i| producers[(i % size.members) as usize].next(&ids, size, now))
        .collect();
    let open_holds = producers.iter().filter(|p| p.open.is_some()).count() as u64;
    let payments = ids.payments.load(Ordering::Relaxed);
    let last_pos = system.block_on(async {
        let pos = commit_all(&db, 0, setup).await;
        commit_all(&db, pos, workload).await
    });
    let loaded = prep.elapsed();
    println!(
        "{backend} start-up database: {} concerts x {} seats = {} seats, {} members, {} journal events \
         ({setup_len} setup + {} workload), {payments} payments; committed in {:.1} s ({:.0} events/s)",
        size.concerts,
        size.seats,
        size.concerts * u64::from(size.seats),
        size.members,
        last_pos,
        size.events,
        loaded.as_secs_f64(),
        last_pos as f64 / loaded.as_secs_f64()
    );
    let expect_sold = payments * u64::from(SEATS_PER_HOLD);
    let expect_held = open_holds * u64::from(SEATS_PER_HOLD);

    // (b) From the tables: there is no snapshot row yet.
    let check = |source: &str| {
        let recovered = system.block_on(recover(&db)).expect("recovery succeeds");
        assert!(recovered.source.starts_with(source), "source {}", recovered.source);
        assert_eq!(recovered.last_pos, last_pos);
        assert_eq!(seat_totals(&recovered.state), (expect_sold, expect_held), "{source}");
        recovered.state.check_invariants();
    };
    check("tables");
    group.bench_function(format!("{backend}_from_tables"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += system.block_on(start_once(&db, "tables"));
            }
            total
        })
    });

    // (a) From a snapshot of an engine restored from the database.
    let report = system.block_on(async {
        let recovered = recover(&db).await.expect("recovery succeeds");
        let persister = Persister::new(recovered.last_pos, FLUSH_INTERVAL);
        let sink: Arc<dyn EventSink> = persister.clone();
        let engine = Arc::new(Engine::start(
            engine_settings(),
            Arc::new(SystemClock),
            sink,
            ConcertRouter::with_threads(threads()),
        ));
        engine.restore(recovered.state);
        let report = take_snapshot(&engine, &persister, &db).await.expect("a snapshot");
        settle(&engine).await;
        engine.shutdown();
        report
    });
    println!(
        "{backend} snapshot: {} bytes at journal position {}, taken in {} ms",
        report.bytes,
        report.journal_pos,
        report.took.as_millis()
    );
    check("snapshot");
    group.bench_function(format!("{backend}_from_snapshot"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += system.block_on(start_once(&db, "snapshot"));
            }
            total
        })
    });
    system.block_on(db.close());
    drop(system);
    drop(scratch);
}

// ---- summary -------------------------------------------------------------------------------

fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "MISSED"
    }
}

fn print_summary(since: SystemTime) {
    println!("\n== persistence figures of this run (criterion mean estimates) ==");
    for (backend, target) in [("sqlite", TARGET_SQLITE_EVENTS), ("postgres", TARGET_POSTGRES_EVENTS)] {
        let rate = |name: &str| ns_per_iter(&format!("sync_durable/{backend}_{name}"), since).map(|ns| 1e9 / ns);
        let group = rate(&Mode::Group(PRODUCERS).name());
        let single = rate(&Mode::Single.name());
        let more = rate(&Mode::Group(MORE_PRODUCERS).name());
        if let Some(rate) = group {
            println!(
                "  {backend} sync durable, group commit, {PRODUCERS} producers: {rate:.0} events/s \
                 (target >= {target:.0}: {})",
                verdict(rate >= target)
            );
        }
        if let Some(rate) = single {
            println!("  {backend} one commit per event: {rate:.0} events/s");
        }
        if let (Some(group), Some(single)) = (group, single) {
            println!(
                "  {backend} group ({PRODUCERS} producers) / single = {:.1}x",
                group / single
            );
        }
        if let Some(rate) = more {
            println!("  {backend} sync durable, group commit, {MORE_PRODUCERS} producers: {rate:.0} events/s");
        }
        for source in ["from_snapshot", "from_tables"] {
            if let Some(ns) = ns_per_iter(&format!("start_to_ready/{backend}_{source}"), since) {
                let secs = ns / 1e9;
                let target = if source == "from_snapshot" {
                    format!(
                        " (target < {TARGET_START_SECS} s: {})",
                        verdict(secs < TARGET_START_SECS)
                    )
                } else {
                    String::new()
                };
                println!("  {backend} start to ready {source}: {secs:.3} s{target}");
            }
        }
    }
}
