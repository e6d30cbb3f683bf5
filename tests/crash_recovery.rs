//! Property test of the write path under crashes: random operations on an
//! engine over a real database, with crashes at random points (the flusher
//! killed mid-stream, sometimes after a commit whose acknowledgement was
//! lost, sometimes after the flusher's retry of such a commit), random
//! snapshots, and a restart after each crash. After every crash and at the
//! end of every case:
//!
//! - no acknowledged (durable) write is lost;
//! - the recovered state (newest snapshot + the journal after it, or the
//!   tables + the journal after them) == a replay of every committed event
//!   from the empty state (the journal's truth, kept by the test because
//!   snapshots prune the database's journal) == the live engine's state
//!   once everything is durable.
//!
//! On SQLite always, on PostgreSQL with `TEST_POSTGRES_URL` (skipped, and
//! said so, without). `TEST_CRASH_CASES` sets the number of random cases
//! (seeds 0..n, each reproducible: the seed is in every failure message).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::Backend;
use concert_actors::clock::{Clock, ManualClock, SystemClock};
use concert_actors::router::ConcertRouter;
use concert_actors::sink::{DurableFuture, EventSink};
use concert_actors::types::JournalPos;
use concert_actors::{Engine, EngineSettings, EngineState, Event, NewConcert};
use concert_server::persistence::recovery::recover;
use concert_server::persistence::snapshot::take_snapshot;
use concert_server::persistence::writer::write_journal;
use concert_server::persistence::{Db, Persister};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

on_every_backend!(crashes_at_random_points_lose_nothing_and_replay_agrees);

/// Random cases per backend unless `TEST_CRASH_CASES` says otherwise.
const DEFAULT_CASES: u64 = 6;
/// Operations per case.
const STEPS: usize = 80;

/// The engine's sink in the test: the persister, and a record of every
/// event appended (the test's copy of the journal's truth).
struct Recording {
    persister: Arc<Persister>,
    appended: Mutex<Vec<(JournalPos, Event)>>,
}

impl EventSink for Recording {
    fn append(&self, event: Event) -> JournalPos {
        // Under the lock, so the record is in position order.
        let mut appended = self.appended.lock();
        let pos = self.persister.append(event.clone());
        appended.push((pos, event));
        pos
    }

    fn accepting(&self) -> bool {
        self.persister.accepting()
    }

    fn durable(&self, pos: JournalPos) -> DurableFuture {
        self.persister.durable(pos)
    }

    fn last_pos(&self) -> JournalPos {
        self.persister.last_pos()
    }
}

/// One server's life: from a recovery to a crash.
struct Node {
    db: Db,
    engine: Arc<Engine>,
    persister: Arc<Persister>,
    recording: Arc<Recording>,
    flusher: JoinHandle<()>,
}

fn engine_settings() -> EngineSettings {
    let mut settings = EngineSettings::contract_defaults();
    // Admission only when the test ticks: no event appears on its own.
    settings.queue.tick_ms = 3_600_000;
    settings
}

/// Recovers from the database and starts an engine and a flusher on it.
async fn boot(url: &str, clock: &Arc<ManualClock>, seed: u64) -> (Node, EngineState) {
    let db = Db::connect(url).await.expect("the database opens");
    let recovered = recover(&db)
        .await
        .unwrap_or_else(|err| panic!("seed {seed}: recovery succeeds: {err}"));
    let persister = Persister::new(recovered.last_pos, Duration::from_millis(1));
    let recording = Arc::new(Recording {
        persister: Arc::clone(&persister),
        appended: Mutex::new(Vec::new()),
    });
    let sink: Arc<dyn EventSink> = recording.clone();
    let engine = Arc::new(Engine::start(
        engine_settings(),
        clock.clone(),
        sink,
        ConcertRouter::on_current_thread(),
    ));
    engine.restore(recovered.state.clone());
    let flusher = tokio::spawn(persister.clone().run(db.clone()));
    let node = Node {
        db,
        engine,
        persister,
        recording,
        flusher,
    };
    (node, recovered.state)
}

/// The state as comparable lines: what a client can observe (balances and
/// ledgers, seats, reservations, tokens), without bookkeeping that differs
/// by the path it took (applied positions, id counters, last poll times).
fn digest(state: &EngineState) -> Vec<String> {
    let mut lines = Vec::new();
    for (id, account) in &state.accounts {
        let ledger: Vec<_> = account
            .history
            .iter()
            .map(|e| (e.kind, e.amount, e.balance_after))
            .collect();
        lines.push(format!(
            "member {id} {} balance {} ledger {ledger:?}",
            account.name, account.balance
        ));
    }
    for (id, concert) in &state.concerts {
        let seats: Vec<_> = concert
            .seats()
            .seats()
            .map(|(seat, _, status)| (seat, status))
            .collect();
        lines.push(format!("concert {id} {} seats {seats:?}", concert.info().title));
        for r in concert.reservations() {
            lines.push(format!(
                "reservation {} concert {} member {} seats {:?} amount {} {:?}",
                r.id, r.concert_id, r.member_id, r.seats, r.amount, r.status
            ));
        }
    }
    for record in state.tokens.values() {
        lines.push(format!(
            "token {} member {} seq {} {:?} until {}",
            hex::encode(record.token.to_bytes()),
            record.member,
            record.seq,
            record.status,
            record.active_until_ms
        ));
    }
    lines
}

/// Every event of `truth` applied to the empty state, in order.
fn replay(truth: &[(JournalPos, Event)], seed: u64) -> EngineState {
    let mut state = EngineState::default();
    for (pos, event) in truth {
        state
            .apply(*pos, event)
            .unwrap_or_else(|err| panic!("seed {seed}: committed event at {pos} applies: {err}"));
    }
    state
}

fn assert_same(what: &str, left: &[String], right: &[String], seed: u64) {
    if left != right {
        let l: BTreeSet<_> = left.iter().collect();
        let r: BTreeSet<_> = right.iter().collect();
        let only_left: Vec<_> = l.difference(&r).collect();
        let only_right: Vec<_> = r.difference(&l).collect();
        panic!("seed {seed}: {what}\n  only on the left: {only_left:#?}\n  only on the right: {only_right:#?}");
    }
}

/// The test's model of what exists, to pick sensible operations.
#[derive(Default)]
struct Model {
    members: Vec<u64>,
    concerts: Vec<(u64, u32)>,
    /// (reservation, member) of holds that may still be pending.
    holds: Vec<(u64, u64)>,
}

/// How a node dies.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// The flusher is killed wherever it is.
    Plain,
    /// The database committed what was appended, but the flusher never
    /// heard (its acknowledgement was lost), then the process died.
    LostAck,
    /// The same, but the flusher lives on and commits the same batch again
    /// (its retry), which must count as done; then the process dies.
    LostAckThenRetry,
}

async fn crash(node: Node, how: Crash, seed: u64) {
    let committed = node.persister.committed_pos();
    let uncommitted: Vec<(JournalPos, Event)> = node
        .recording
        .appended
        .lock()
        .iter()
        .filter(|(pos, _)| *pos > committed)
        .cloned()
        .collect();
    let Node {
        db, persister, flusher, ..
    } = node;
    match how {
        Crash::Plain => {}
        Crash::LostAck => {
            // Killed first: its acknowledgement can never arrive.
            flusher.abort();
            lost_ack_commit(&db, &uncommitted, seed).await;
        }
        Crash::LostAckThenRetry => {
            lost_ack_commit(&db, &uncommitted, seed).await;
            let last = persister.last_pos();
            persister
                .durable(last)
                .await
                .unwrap_or_else(|_| panic!("seed {seed}: the flusher's retry of a committed batch goes through"));
        }
    }
    flusher.abort();
    let _ = flusher.await;
    // Nothing of this node lands after this (a dead process writes nothing).
    db.close().await;
    if matches!(db, Db::Postgres(_)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Commits `uncommitted` (the events after the last commit the flusher heard
/// of), as the commit whose acknowledgement was lost did.
async fn lost_ack_commit(db: &Db, uncommitted: &[(JournalPos, Event)], seed: u64) {
    if uncommitted.is_empty() {
        return;
    }
    // Positions the flusher committed meanwhile are recognised as the same events.
    write_journal(db, uncommitted)
        .await
        .unwrap_or_else(|err| panic!("seed {seed}: the lost commit lands: {err}"));
}

/// One random operation; its journal position when it wrote something.
async fn step(node: &Node, model: &mut Model, rng: &mut StdRng, clock: &ManualClock) -> Option<JournalPos> {
    let engine = &node.engine;
    let pick = |rng: &mut StdRng, n: usize| rng.random_range(0..n);
    match rng.random_range(0..10) {
        0 => {
            let name = format!("m{}", model.members.len());
            let done = engine.register_member(&name, [3; 32]).ok()?;
            model.members.push(done.value);
            Some(done.pos)
        }
        1 if model.concerts.len() < 4 => {
            let seat_count = rng.random_range(4..=12);
            let done = engine
                .create_concert(NewConcert {
                    title: format!("c{}", model.concerts.len()),
                    category: "pop".into(),
                    venue: "Hall".into(),
                    starts_at_ms: clock.now_ms() + 30 * 24 * 3_600_000,
                    seat_count,
                    price: 1_000,
                    price_tiers: Vec::new(),
                })
                .ok()?;
            model.concerts.push((done.value.info.id, seat_count));
            Some(done.pos)
        }
        2 | 3 if !model.members.is_empty() => {
            let member = model.members[pick(rng, model.members.len())];
            let amount = rng.random_range(1..=5) * 1_000;
            engine.charge(member, amount).ok().map(|done| done.pos)
        }
        4..=6 if !model.members.is_empty() && !model.concerts.is_empty() => {
            let member = model.members[pick(rng, model.members.len())];
            let (concert, seat_count) = model.concerts[pick(rng, model.concerts.len())];
            let first = rng.random_range(1..=seat_count);
            let count = rng.random_range(1..=2).min(seat_count - first + 1);
            let seats = (first..first + count).collect();
            let done = engine.hold(member, concert, seats).await.ok()?;
            model.holds.push((done.value.id, member));
            Some(done.pos)
        }
        7 if !model.holds.is_empty() => {
            let (reservation, member) = model.holds.swap_remove(pick(rng, model.holds.len()));
            engine.pay(member, reservation, None).await.ok().map(|done| done.pos)
        }
        8 if !model.holds.is_empty() => {
            let (reservation, member) = model.holds.swap_remove(pick(rng, model.holds.len()));
            engine.cancel(member, reservation).await.ok().map(|done| done.pos)
        }
        9 if !model.members.is_empty() => {
            let member = model.members[pick(rng, model.members.len())];
            let issued = engine.issue_token(member).ok()?;
            if rng.random_bool(0.5) {
                let _ = engine.tick_queue().await;
            }
            issued.pos
        }
        _ => None,
    }
}

/// The three views agree: replay of the truth, recovery from the database
/// (snapshot + tail, or tables + tail), and `live` when given.
async fn check_views(url: &str, truth: &[(JournalPos, Event)], live: Option<&EngineState>, seed: u64, when: &str) {
    let replayed = digest(&replay(truth, seed));
    let db = Db::connect(url).await.expect("the database opens");
    let recovered = recover(&db)
        .await
        .unwrap_or_else(|err| panic!("seed {seed}: recovery {when}: {err}"));
    db.close().await;
    assert_same(
        &format!("{when}: replay of the journal == recovery ({})", recovered.source),
        &replayed,
        &digest(&recovered.state),
        seed,
    );
    if let Some(live) = live {
        assert_same(
            &format!("{when}: live == replay of the journal"),
            &digest(live),
            &replayed,
            seed,
        );
    }
}

/// One random case; returns the number of crashes it went through.
async fn one_case(backend: &Backend, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let url = backend.fresh_database_url().await;
    let clock = ManualClock::new(SystemClock.now_ms());
    // The journal's truth: every committed event, kept across crashes.
    let mut truth: Vec<(JournalPos, Event)> = Vec::new();
    let (mut node, _) = boot(&url, &clock, seed).await;
    let mut model = Model::default();
    let mut acknowledged: JournalPos = 0;
    let mut crashes = 0;
    let mut snapshots = 0;
    for _ in 0..STEPS {
        let roll = rng.random_range(0..100);
        if roll < 6 {
            // A crash, then a restart.
            let how = match rng.random_range(0..3) {
                0 => Crash::Plain,
                1 => Crash::LostAck,
                _ => Crash::LostAckThenRetry,
            };
            let appended = std::mem::take(&mut *node.recording.appended.lock());
            crash(node, how, seed).await;
            let (next, recovered) = boot(&url, &clock, seed).await;
            let last = next.persister.last_pos();
            assert!(
                last >= acknowledged,
                "seed {seed}: {how:?} crash lost acknowledged writes: recovered up to {last}, acknowledged {acknowledged}"
            );
            // What was committed of the dead node's events: a prefix.
            truth.extend(appended.into_iter().filter(|(pos, _)| *pos <= last));
            let when = format!("after crash {crashes} ({how:?})");
            assert_same(
                &format!("{when}: recovery == replay of the journal"),
                &digest(&recovered),
                &digest(&replay(&truth, seed)),
                seed,
            );
            let live = next.engine.export_state().await.expect("the engine answers");
            assert_same(
                &format!("{when}: restored engine == recovery"),
                &digest(&live),
                &digest(&recovered),
                seed,
            );
            node = next;
            crashes += 1;
            // Holds of the model may have been lost: keep those recovered.
            model
                .holds
                .retain(|(id, _)| recovered.concerts.values().any(|c| c.reservation(*id).is_some()));
            model.members.retain(|id| recovered.accounts.contains_key(id));
            model.concerts.retain(|(id, _)| recovered.concerts.contains_key(id));
        } else if roll < 10 {
            take_snapshot(&node.engine, &node.persister, &node.db)
                .await
                .unwrap_or_else(|err| panic!("seed {seed}: a snapshot is written: {err}"));
            snapshots += 1;
        } else if let Some(pos) = step(&node, &mut model, &mut rng, &clock).await {
            // Most writes wait for their commit (a `sync` acknowledgement).
            if rng.random_bool(0.7) {
                node.recording
                    .durable(pos)
                    .await
                    .unwrap_or_else(|_| panic!("seed {seed}: position {pos} becomes durable"));
                acknowledged = acknowledged.max(pos);
            }
        }
    }
    // The end: everything durable, then the three views agree.
    let last = node.persister.last_pos();
    node.recording
        .durable(last)
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: everything becomes durable"));
    truth.extend(std::mem::take(&mut *node.recording.appended.lock()));
    let live = node.engine.export_state().await.expect("the engine answers");
    check_views(
        &url,
        &truth,
        Some(&live),
        seed,
        &format!("at the end ({crashes} crashes)"),
    )
    .await;
    eprintln!(
        "seed {seed}: {} committed events, {crashes} crashes, {snapshots} snapshots, {} accounts, {} concerts",
        truth.len(),
        live.accounts.len(),
        live.concerts.len()
    );
    assert!(
        node.persister.shutdown(Duration::from_secs(5)).await,
        "seed {seed}: nothing left"
    );
    let _ = node.flusher.await;
    node.db.close().await;
    crashes
}

async fn crashes_at_random_points_lose_nothing_and_replay_agrees(backend: Backend) {
    let cases = std::env::var("TEST_CRASH_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut crashes = 0;
    for seed in 0..cases {
        crashes += one_case(&backend, seed).await;
    }
    assert!(
        crashes > 0 || cases == 0,
        "the cases crashed at least once ({cases} cases)"
    );
}
