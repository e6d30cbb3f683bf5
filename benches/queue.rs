//! The waiting queue with 1,000,000 WAITING tokens.
//!
//! [`WaitingQueue`] alone (no actor, no HTTP), with the contract's default
//! settings and a [`NullSink`]. The line is built once by issuing a token to
//! each of 1,000,000 members, then every benchmark starts from a copy of it
//! (rebuilt with `export`/`import`, outside the timed part):
//!
//! - `status` / `peek`: one token's lookup (`status` also records the poll),
//!   tokens taken in a fixed pseudo-random order ([`lookup_order`]), as polls
//!   arrive; on 1 and 2 threads (the machine has 2 cores). Counted: lookups.
//!   Not in issue order: token entries are allocated in issue order, so
//!   walking them that way read memory nearly sequentially when the
//!   allocator happened to hand out fresh pages and at random when it reused
//!   the chunks freed by the setup's queue, which is what made earlier runs
//!   range from 2.2M to 8.7M/s.
//! - `issue_new_member`: a token for a member who has none, at the back of
//!   the 1,000,000-long line; on 1 and 2 threads. Counted: tokens issued.
//!   The line is rebuilt after every [`MAX_GROWTH`] new tokens so that it
//!   stays near 1,000,000 and memory stays bounded.
//! - `tick`: one admission tick with the line full and the ACTIVE cap
//!   reached (every token polled recently, so nobody is idle): the steady
//!   state of a sold-out sale. Reported as time per tick. Idle expiry uses
//!   an index by deadline, so this no longer walks the line.
//!
//! Run: `cargo bench --bench queue`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concert_actors::clock::TimestampMs;
use concert_actors::queue::{QueueSettings, TokenId, TokenRecord, TokenStatus, WaitingQueue};
use concert_actors::sink::NullSink;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput};

/// WAITING tokens in the line before every benchmark.
const WAITING_TOKENS: u64 = 1_000_000;
/// New tokens a copy of the line takes before it is rebuilt.
const MAX_GROWTH: u64 = 2_000_000;
/// Fixed "now" of every call: nobody goes idle and no ACTIVE token expires.
const NOW_MS: TimestampMs = 1_800_000_000_000;

/// The contract's defaults (`CONCERT_QUEUE_*`, `CONCERT_TOKEN_TTL`,
/// `CONCERT_WAITING_IDLE_TIMEOUT`).
fn settings() -> QueueSettings {
    QueueSettings {
        tick_ms: 1_000,
        admit_per_tick: 50,
        max_active: 1_000,
        token_ttl_ms: 600_000,
        idle_timeout_ms: 120_000,
    }
}

/// The 1,000,000-token line, kept as records to copy from.
struct Line {
    records: Vec<TokenRecord>,
    tokens: Vec<TokenId>,
}

/// The tokens in a fixed pseudo-random order (a Fisher-Yates shuffle driven
/// by xorshift64*, same seed every run): the order polls are looked up in.
fn lookup_order(tokens: &[TokenId]) -> Vec<TokenId> {
    let mut order = tokens.to_vec();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..order.len()).rev() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let j = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

impl Line {
    fn build() -> Self {
        let started = Instant::now();
        let queue = WaitingQueue::new(settings(), Arc::new(NullSink::default()));
        let tokens: Vec<TokenId> = (1..=WAITING_TOKENS)
            .map(|member| queue.issue(member, NOW_MS).expect("a NullSink always accepts").token)
            .collect();
        assert_eq!(queue.waiting(), WAITING_TOKENS, "every token waits");
        let records = queue.export();
        println!(
            "queue: {WAITING_TOKENS} WAITING tokens issued in {:.2?} (setup, one thread)",
            started.elapsed()
        );
        Self { records, tokens }
    }

    /// A fresh queue holding the whole line.
    fn queue(&self) -> WaitingQueue {
        let queue = WaitingQueue::new(settings(), Arc::new(NullSink::default()));
        queue.import(self.records.clone(), NOW_MS);
        assert_eq!(queue.waiting(), WAITING_TOKENS, "the copy holds the whole line");
        queue
    }
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group
}

/// Runs `per_thread(thread, share)` on `threads` threads splitting `iters`
/// calls; returns the wall time until the last thread is done.
fn on_threads(threads: u64, iters: u64, per_thread: impl Fn(u64, u64) + Sync) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let share = iters / threads + u64::from(thread < iters % threads);
            let per_thread = &per_thread;
            scope.spawn(move || per_thread(thread, share));
        }
    });
    started.elapsed()
}

fn lookups(c: &mut Criterion, line: &Line) {
    let queue = line.queue();
    let shuffled = lookup_order(&line.tokens);
    let tokens = &shuffled;
    let mut group = group(c, "queue_1m_waiting");
    group.throughput(Throughput::Elements(1));
    for threads in [1u64, 2] {
        group.bench_function(format!("status/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |thread, share| {
                    // Threads start far apart in the lookup order so they do not share cache lines.
                    let mut idx = (thread * WAITING_TOKENS / 2) as usize;
                    for _ in 0..share {
                        idx = (idx + 1) % tokens.len();
                        black_box(queue.status(&tokens[idx], NOW_MS));
                    }
                })
            })
        });
        group.bench_function(format!("peek/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |thread, share| {
                    let mut idx = (thread * WAITING_TOKENS / 2) as usize;
                    for _ in 0..share {
                        idx = (idx + 1) % tokens.len();
                        black_box(queue.peek(&tokens[idx]));
                    }
                })
            })
        });
    }
    group.finish();
    let last = queue
        .peek(&line.tokens[line.tokens.len() - 1])
        .expect("the last token is known");
    assert_eq!(last.status, TokenStatus::Waiting, "lookups change no status");
    assert_eq!(last.position, WAITING_TOKENS, "the last token is last in line");
}

fn issue(c: &mut Criterion, line: &Line) {
    let mut group = group(c, "queue_1m_waiting");
    group.throughput(Throughput::Elements(1));
    for threads in [1u64, 2] {
        let mut queue = line.queue();
        let mut grown = 0u64;
        let mut next_member = WAITING_TOKENS + 1;
        group.bench_function(format!("issue_new_member/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                if grown + iters > MAX_GROWTH {
                    queue = line.queue(); // untimed: the old copy is dropped here too
                    grown = 0;
                }
                let first_member = next_member;
                let queue = &queue;
                let elapsed = on_threads(threads, iters, |thread, share| {
                    // Each thread numbers its members apart from the other's.
                    let base = first_member + thread * (iters / threads + 1);
                    for member in base..base + share {
                        black_box(queue.issue(member, NOW_MS).expect("a NullSink always accepts"));
                    }
                });
                grown += iters;
                next_member += iters + threads;
                elapsed
            })
        });
        assert!(
            queue.waiting() >= WAITING_TOKENS,
            "new members joined the back of the line"
        );
    }
    group.finish();
}

fn tick(c: &mut Criterion, line: &Line) {
    let queue = line.queue();
    // Fill the ACTIVE cap first: from then on a tick admits nobody.
    let mut ticks = 0;
    while queue.active() < u64::from(settings().max_active) {
        queue.tick(NOW_MS);
        ticks += 1;
        assert!(ticks <= 1_000, "the cap fills in max_active / admit_per_tick ticks");
    }
    let mut group = group(c, "queue_1m_waiting");
    group.bench_function("tick", |b| b.iter(|| black_box(queue.tick(NOW_MS))));
    group.finish();
    assert_eq!(
        queue.waiting(),
        WAITING_TOKENS - u64::from(settings().max_active),
        "ticks at the cap admit nobody and expire nobody"
    );
    queue.check_invariants();
}

fn queue_benches(c: &mut Criterion) {
    let line = Line::build();
    lookups(c, &line);
    issue(c, &line);
    tick(c, &line);
}

criterion_group!(benches, queue_benches);
criterion_main!(benches);
