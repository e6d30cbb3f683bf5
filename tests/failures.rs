//! When things fail (issue 15): a journal commit whose acknowledgement was
//! lost is recognised on retry; one server per database; the server answers
//! while it recovers; a damaged journal stops start-up with the position
//! named; a snapshot of a broken state is fail-stop.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_problem, server_command, spawn_app_at, spawn_app_on, test_settings, Backend};
use concert_actors::accounts::Account;
use concert_actors::clock::{Clock, ManualClock, SystemClock};
use concert_actors::concert::{ConcertInfo, Reservation, ReservationStatus};
use concert_actors::pricing::Pricing;
use concert_actors::router::ConcertRouter;
use concert_actors::sink::EventSink;
use concert_actors::types::JournalPos;
use concert_actors::{Engine, EngineSettings, EngineState, Event};
use concert_server::fail_stop::{exit_process, FailStop, FAIL_STOP_EXIT_CODE};
use concert_server::persistence::codec::{decode_event, encode_snapshot};
use concert_server::persistence::recovery::recover;
use concert_server::persistence::snapshot::{run_snapshots, take_snapshot, SnapshotError};
use concert_server::persistence::writer::{project, write_journal, WriteError};
use concert_server::persistence::{Db, Persister};
use concert_server::startup::{Application, StartupError};
use reqwest::Method;
use serde_json::{json, Value};

on_every_backend!(
    a_commit_whose_acknowledgement_was_lost_is_recognised_on_retry,
    tables_that_lost_their_last_projection_commits_are_projected_again,
    a_second_server_on_the_same_database_refuses_to_start,
    the_server_answers_while_it_recovers,
    a_changed_journal_row_stops_recovery_naming_its_position,
    a_changed_row_before_the_snapshot_that_the_tables_still_need_stops_recovery,
    journal_rows_written_before_checksums_still_load,
    an_event_that_does_not_apply_stops_recovery_naming_its_position,
);

const KEY_HASH: [u8; 32] = [7; 32];

fn registered(member: u64) -> Event {
    Event::MemberRegistered {
        member,
        name: format!("member {member}"),
        key_hash: KEY_HASH,
        at_ms: 1,
    }
}

fn charged(member: u64, amount: i64, balance_after: i64) -> Event {
    Event::BalanceCharged {
        member,
        amount,
        balance_after,
        at_ms: 2,
    }
}

fn at_positions(events: Vec<Event>) -> Vec<(JournalPos, Event)> {
    (1..).zip(events).collect()
}

/// Every journal event of `db`, in order.
async fn journal_of(db: &Db) -> Vec<(JournalPos, Event)> {
    let sql = "SELECT pos, payload FROM journal ORDER BY pos";
    let rows: Vec<(i64, Vec<u8>)> = match db {
        Db::Sqlite(files) => sqlx::query_as(sql).fetch_all(&files.journal).await,
        Db::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await,
    }
    .expect("the journal reads");
    rows.into_iter()
        .map(|(pos, payload)| {
            let pos = u64::try_from(pos).expect("journal positions are positive");
            (pos, decode_event(&payload).expect("a journal row decodes"))
        })
        .collect()
}

/// Runs `sql` (one `$1`/`?1` integer parameter, written `{p}`) on the journal.
async fn on_journal(db: &Db, sql: &str, value: i64) {
    match db {
        Db::Sqlite(files) => sqlx::query(&sql.replace("{p}", "?1"))
            .bind(value)
            .execute(&files.journal)
            .await
            .map(|_| ()),
        Db::Postgres(pool) => sqlx::query(&sql.replace("{p}", "$1"))
            .bind(value)
            .execute(pool)
            .await
            .map(|_| ()),
    }
    .expect("the journal is changed");
}

// ---- item 2: idempotent commits ------------------------------------------------

/// The database committed a batch but the flusher never heard (the
/// connection died with the answer): the flusher's retry of the same batch
/// must count as committed, and writes must go on. Before, the retry was a
/// duplicate-key error, retried forever, and every later write waited.
async fn a_commit_whose_acknowledgement_was_lost_is_recognised_on_retry(backend: Backend) {
    let url = backend.fresh_database_url().await;
    let db = Db::connect(&url).await.expect("the database opens");
    let batch = at_positions(vec![registered(1), charged(1, 1_000, 1_000), charged(1, 500, 1_500)]);
    write_journal(&db, &batch)
        .await
        .expect("the first attempt commits (its answer is lost)");

    // The flusher, which never heard, commits the same events at the same
    // positions again: its retry path.
    let persister = Persister::new(0, Duration::from_millis(2));
    let flusher = tokio::spawn(persister.clone().run(db.clone()));
    for (_, event) in &batch {
        persister.append(event.clone());
    }
    persister
        .durable(3)
        .await
        .expect("the retry is recognised as committed, not refused as a duplicate");
    let next = persister.append(charged(1, 250, 1_750));
    persister
        .durable(next)
        .await
        .expect("writes go on after the recognised retry");
    let mut expected = batch.clone();
    expected.push((4, charged(1, 250, 1_750)));
    assert_eq!(journal_of(&db).await, expected, "every event once, in order");
    assert!(
        persister.shutdown(Duration::from_secs(5)).await,
        "nothing left to commit"
    );
    flusher.await.expect("the flusher stops");

    // Other events at committed positions are not a retry: refused, by name.
    let other = vec![(2, charged(1, 9_999, 10_999))];
    match write_journal(&db, &other).await {
        Err(WriteError::Conflict { pos }) => assert_eq!(pos, 2, "the position is named"),
        other => panic!("a different event at a committed position is a conflict, got {other:?}"),
    }
    assert_eq!(journal_of(&db).await, expected, "the conflict wrote nothing");
    db.close().await;
}

/// The database server crashed and came back without its last projection
/// commits (PostgreSQL commits them with `synchronous_commit = off`): the
/// tables' `projected_pos` is behind what the persister projected, and the
/// rows of those events are gone. The journal holds them; the persister must
/// project them again and stay healthy. Before, every later slice was refused
/// as a gap after `projected_pos`, for good: `/ready` stayed 503 until a restart.
async fn tables_that_lost_their_last_projection_commits_are_projected_again(backend: Backend) {
    let url = backend.fresh_database_url().await;
    let db = Db::connect(&url).await.expect("the database opens");
    let persister = Persister::new(0, Duration::from_millis(2));
    let flusher = tokio::spawn(persister.clone().run(db.clone()));
    persister.append(registered(1));
    let charged_pos = persister.append(charged(1, 1_000, 1_000));
    persister.durable(charged_pos).await.expect("committed");
    wait_until(|| persister.projected_pos() == charged_pos).await;

    // What a crash of the database server leaves: the charge's projection lost.
    on_tables(&db, "DELETE FROM balance_history WHERE journal_pos >= {p}", 2).await;
    on_tables(&db, "UPDATE members SET balance = 0 WHERE id = {p}", 1).await;
    on_tables(&db, "UPDATE projection SET projected_pos = {p} WHERE id = 1", 1).await;

    let next = persister.append(charged(1, 500, 1_500));
    persister.durable(next).await.expect("the journal takes writes");
    wait_until(|| persister.projected_pos() == next && persister.healthy()).await;
    let (balance, entries): (i64, i64) = match &db {
        Db::Sqlite(files) => sqlx::query_as(BALANCE_AND_ENTRIES).fetch_one(&files.main).await,
        Db::Postgres(pool) => sqlx::query_as(BALANCE_AND_ENTRIES).fetch_one(pool).await,
    }
    .expect("the tables answer");
    assert_eq!(
        (balance, entries),
        (1_500, 2),
        "the lost charge is projected again, then the new one"
    );
    assert!(persister.shutdown(Duration::from_secs(5)).await);
    flusher.await.expect("the flusher stops");
    db.close().await;
}

const BALANCE_AND_ENTRIES: &str =
    "SELECT balance, (SELECT COUNT(*) FROM balance_history WHERE member_id = 1) FROM members WHERE id = 1";

/// Runs `sql` (with `{p}` for its one parameter) on the tables.
async fn on_tables(db: &Db, sql: &str, value: i64) {
    match db {
        Db::Sqlite(files) => sqlx::query(&sql.replace("{p}", "?1"))
            .bind(value)
            .execute(&files.main)
            .await
            .map(|_| ()),
        Db::Postgres(pool) => sqlx::query(&sql.replace("{p}", "$1"))
            .bind(value)
            .execute(pool)
            .await
            .map(|_| ()),
    }
    .expect("the tables are changed");
}

/// Polls `done` every 10 ms for at most 10 s.
async fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..1_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not reached within 10 s");
}

// ---- item 3: one writer per database -------------------------------------------

/// What a refused start says, word for word: the SQLite lock is a file
/// beside the main file, PostgreSQL's an advisory lock.
fn in_use_message(backend: &Backend, database_url: &str) -> String {
    let said = "the database is in use by another server: its writer lock is held (one server per database; stop \
                the other one first)";
    match backend {
        Backend::Sqlite => {
            let main = database_url.strip_prefix("sqlite://").expect("a sqlite:// URL");
            format!("{said} (the lock file {main}.lock is locked)")
        }
        Backend::Postgres(_) => said.to_owned(),
    }
}

async fn a_second_server_on_the_same_database_refuses_to_start(backend: Backend) {
    let first = spawn_app_on(backend.clone(), |_| {}).await;
    let kim = first.register("kim").await;

    // In the same process: the application refuses to build.
    let refused = Application::build_with_clock(test_settings(&first.database_url), Arc::new(SystemClock))
        .await
        .err()
        .expect("a second server on the same database does not start");
    assert!(
        matches!(refused, StartupError::DatabaseInUse(_)),
        "refused as in use: {refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        in_use_message(&backend, &first.database_url),
        "the operator is told why"
    );

    // The server binary: exits non-zero with a log line saying so.
    let database_url = first.database_url.clone();
    let output = tokio::task::spawn_blocking(move || {
        server_command()
            .env("DATABASE_URL", database_url)
            .env("CONCERT_ADDR", "127.0.0.1:0")
            .env("CONCERT_ADMIN_KEY", common::ADMIN_KEY)
            .env("CONCERT_DEMO_DATA", "false")
            .env("RUST_LOG", "info")
            .output()
    })
    .await
    .expect("the child is waited for")
    .expect("the server binary runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "the second server exits 1: {log}");
    assert!(
        log.contains(&format!(
            "cannot start: {}",
            in_use_message(&backend, &first.database_url)
        )),
        "its log says why: {log}"
    );

    // The first one never noticed.
    assert_eq!(
        first.charge(&kim, 1_000).await.status(),
        200,
        "the first server keeps serving writes"
    );

    // Once it has stopped, the database is free again.
    first.stop().await;
    let second = spawn_app_at(&first.database_url, |_| {}).await;
    let me: Value = second.member_get(&kim, "/api/v1/members/me").await;
    assert_eq!(me["balance"], 1_000, "the next server has everything");
}

/// Advisory locks held in the current database (PostgreSQL).
async fn advisory_locks(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .expect("pg_locks reads")
}

/// PostgreSQL drops a session's advisory lock with the session (a killed
/// backend, a database restart): the server takes the lock again on a new
/// connection, and a second server is still refused.
#[actix_web::test]
async fn a_killed_lock_connection_is_replaced_and_still_keeps_a_second_server_out() {
    let Some(backend) = Backend::postgres() else {
        eprintln!("skipped: TEST_POSTGRES_URL not set");
        return;
    };
    let first = spawn_app_on(backend, |_| {}).await;
    let kim = first.register("kim").await;
    let Db::Postgres(pool) = &first.state.db else {
        unreachable!("a PostgreSQL URL");
    };
    assert_eq!(advisory_locks(pool).await, 1, "the writer lock is held");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(pool)
    .await
    .expect("the lock's backend is terminated");
    assert_eq!(killed, vec![true], "the lock's session is killed");
    let mut held_again = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if advisory_locks(pool).await == 1 {
            held_again = true;
            break;
        }
    }
    assert!(held_again, "the server takes the writer lock again");
    let refused = Application::build_with_clock(test_settings(&first.database_url), Arc::new(SystemClock))
        .await
        .err()
        .expect("a second server is still refused");
    assert!(matches!(refused, StartupError::DatabaseInUse(_)), "{refused:?}");
    assert!(refused.to_string().contains("in use by another server"), "{refused}");
    assert_eq!(
        first.charge(&kim, 1_000).await.status(),
        200,
        "the first server serves on"
    );
}

// ---- why a start fails: StartupError ------------------------------------------

/// Settings that `Settings::validate` refuses stop the start before the
/// database is touched, every problem named at once.
#[actix_web::test]
async fn bad_settings_are_a_settings_error_and_touch_no_database() {
    let database_url = Backend::Sqlite.fresh_database_url().await;
    let mut settings = test_settings(&database_url);
    settings.hold_timeout = Duration::ZERO;
    settings.max_seats_per_reservation = 0;
    let refused = Application::build_with_clock(settings, Arc::new(SystemClock))
        .await
        .err()
        .expect("invalid settings do not start");
    assert!(matches!(refused, StartupError::Settings(_)), "{refused:?}");
    assert_eq!(
        refused.to_string(),
        "CONCERT_HOLD_TIMEOUT must be positive; CONCERT_MAX_SEATS_PER_RESERVATION must be 1..=100"
    );
    let main = database_url.strip_prefix("sqlite://").expect("a sqlite:// URL");
    let folder = std::path::Path::new(main).parent().expect("a folder");
    assert!(!folder.exists(), "nothing was created: {}", folder.display());
}

/// A listen address already taken is a bind error naming the address, and
/// the database's writer lock goes with the failed start.
#[actix_web::test]
async fn a_taken_address_is_a_bind_error_and_lets_the_database_go() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("its address");
    let database_url = Backend::Sqlite.fresh_database_url().await;
    let mut settings = test_settings(&database_url);
    settings.addr = addr;
    let refused = Application::build_with_clock(settings, Arc::new(SystemClock))
        .await
        .err()
        .expect("a taken address does not start");
    match &refused {
        StartupError::Bind { addr: refused_addr, .. } => assert_eq!(*refused_addr, addr),
        other => panic!("a bind error, not {other:?}"),
    }
    assert!(
        refused.to_string().starts_with(&format!("cannot bind {addr}: ")),
        "{refused}"
    );
    let next = spawn_app_at(&database_url, |_| {}).await;
    next.register("kim").await;
    next.stop().await;
}

/// A database that cannot be opened is a database error saying why: a
/// SQLite folder that cannot be created, a PostgreSQL server nobody runs.
#[actix_web::test]
async fn a_database_that_cannot_be_opened_is_a_database_error() {
    let refused = Application::build_with_clock(test_settings("sqlite:///dev/null/concert.db"), Arc::new(SystemClock))
        .await
        .err()
        .expect("no folder, no start");
    assert!(matches!(refused, StartupError::Database(_)), "{refused:?}");
    assert!(
        refused
            .to_string()
            .starts_with("cannot create the database folder /dev/null: "),
        "{refused}"
    );

    let closed = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = closed.local_addr().expect("its address").port();
    drop(closed);
    let refused = Application::build_with_clock(
        test_settings(&format!("postgres://postgres@127.0.0.1:{port}/nothing")),
        Arc::new(SystemClock),
    )
    .await
    .err()
    .expect("no PostgreSQL, no start");
    assert!(matches!(refused, StartupError::Database(_)), "{refused:?}");
    assert!(
        refused.to_string().starts_with("cannot connect to PostgreSQL: "),
        "{refused}"
    );
}

// ---- item 4: serving during recovery -------------------------------------------

async fn the_server_answers_while_it_recovers(backend: Backend) {
    let first = spawn_app_on(backend, |_| {}).await;
    let concert = first.create_concert("IU", 10, 1_000).await;
    first.stop().await;

    let clock = ManualClock::new(SystemClock.now_ms());
    let starting = Application::start(test_settings(&first.database_url), clock)
        .await
        .expect("the first stage starts");
    let base = format!("http://127.0.0.1:{}", starting.port());
    let client = reqwest::Client::new();
    let get = |path: String| client.request(Method::GET, format!("{base}{path}")).send();

    // Not recovered yet, and answering at once.
    let health = get("/health".into()).await.expect("answered while recovering");
    assert_eq!(health.status(), 200, "the process is up");
    let ready = get("/ready".into()).await.expect("answered while recovering");
    assert_eq!(ready.status(), 503, "not ready while recovering");
    assert!(ready.headers().contains_key("retry-after"), "/ready says when to retry");
    let read = get(format!("/api/v1/concerts/{concert}")).await.expect("answered");
    assert!(read.headers().contains_key("retry-after"), "the API says when to retry");
    assert_problem(read, 503, "UNAVAILABLE").await;
    let write = client
        .request(Method::POST, format!("{base}/api/v1/members"))
        .json(&json!({ "name": "early" }))
        .send()
        .await
        .expect("answered");
    assert!(write.headers().contains_key("retry-after"), "writes too");
    assert_problem(write, 503, "UNAVAILABLE").await;

    // Recovery runs while the server keeps answering.
    let recovering = actix_web::rt::spawn(starting.recover());
    let mut answered_while_recovering = 0;
    while !recovering.is_finished() {
        let health = get("/health".into()).await.expect("answered while recovering");
        assert_eq!(health.status(), 200);
        answered_while_recovering += 1;
    }
    let app = recovering
        .await
        .expect("the recovery task ends")
        .expect("recovery succeeds");
    assert!(answered_while_recovering >= 1, "/health answered during recovery");
    let ready = get("/ready".into()).await.expect("answered");
    assert_eq!(ready.status(), 200, "ready once recovered");
    let read = get(format!("/api/v1/concerts/{concert}")).await.expect("answered");
    assert_eq!(read.status(), 200, "the API serves once recovered");
    let handle = app.handle();
    let running = actix_web::rt::spawn(app.run_until_stopped());
    handle.stop(true).await;
    running.await.expect("the server task ends").expect("a clean stop");
}

// ---- item 6: checksums and replay that stops -----------------------------------

/// A database whose journal holds `events` and whose tables hold nothing
/// (recovery replays every row).
async fn journal_only(backend: &Backend, events: &[(JournalPos, Event)]) -> Db {
    let url = backend.fresh_database_url().await;
    let db = Db::connect(&url).await.expect("the database opens");
    write_journal(&db, events).await.expect("the journal commits");
    db
}

async fn a_changed_journal_row_stops_recovery_naming_its_position(backend: Backend) {
    let events = at_positions(vec![registered(1), charged(1, 1_000, 1_000), charged(1, 500, 1_500)]);
    let url = backend.fresh_database_url().await;
    let db = Db::connect(&url).await.expect("the database opens");
    write_journal(&db, &events).await.expect("the journal commits");
    recover(&db).await.expect("an intact journal recovers");

    // Position 2's payload changes on disk: the charge says 1,001.
    let changed = match &events[1].1 {
        Event::BalanceCharged { member, .. } => charged(*member, 1_001, 1_001),
        other => panic!("position 2 is a charge, not {other:?}"),
    };
    let payload = concert_server::persistence::codec::encode_event(&changed).expect("encodes");
    match &db {
        Db::Sqlite(files) => sqlx::query("UPDATE journal SET payload = ?1 WHERE pos = 2")
            .bind(payload)
            .execute(&files.journal)
            .await
            .map(|_| ()),
        Db::Postgres(pool) => sqlx::query("UPDATE journal SET payload = $1 WHERE pos = 2")
            .bind(payload)
            .execute(pool)
            .await
            .map(|_| ()),
    }
    .expect("the row is changed");
    let refused = recover(&db).await.err().expect("a changed row stops recovery");
    assert!(
        refused.contains("journal position 2") && refused.contains("checksum"),
        "the position is named: {refused}"
    );

    // The server does not start, and says the same.
    db.close().await;
    let stopped = Application::build_with_clock(test_settings(&url), Arc::new(SystemClock))
        .await
        .err()
        .expect("a changed row stops the start");
    match &stopped {
        StartupError::Recovery(why) => assert_eq!(why, &refused, "recovery's own words"),
        other => panic!("a recovery error, not {other:?}"),
    }
    assert_eq!(stopped.to_string(), refused);
}

/// Recovery from a snapshot replays only the rows after it, but the rows
/// between the tables' `projected_pos` and the snapshot are folded into the
/// tables after start-up: a damaged one there stops start-up too.
async fn a_changed_row_before_the_snapshot_that_the_tables_still_need_stops_recovery(backend: Backend) {
    let events = at_positions(vec![registered(1), charged(1, 1_000, 1_000), charged(1, 500, 1_500)]);
    let db = journal_only(&backend, &events).await;
    project(&db, &events[..1]).await.expect("the tables hold position 1");
    let mut state = EngineState::default();
    for (pos, event) in &events {
        state.apply(*pos, event).expect("the events apply");
    }
    let snapshot = encode_snapshot(&state).expect("encodes");
    let insert = "INSERT INTO snapshots (journal_pos, created_at, bytes) VALUES ";
    match &db {
        Db::Sqlite(files) => sqlx::query(&format!("{insert}(3, 0, ?1)"))
            .bind(snapshot)
            .execute(&files.main)
            .await
            .map(|_| ()),
        Db::Postgres(pool) => sqlx::query(&format!("{insert}(3, 0, $1)"))
            .bind(snapshot)
            .execute(pool)
            .await
            .map(|_| ()),
    }
    .expect("a snapshot at position 3");
    let recovered = recover(&db).await.expect("an intact journal recovers");
    assert_eq!(recovered.source, "snapshot 1", "from the snapshot");

    on_journal(&db, "UPDATE journal SET checksum = checksum + 1 WHERE pos = {p}", 2).await;
    let refused = recover(&db)
        .await
        .err()
        .expect("a damaged row the tables still need stops recovery");
    assert!(
        refused.contains("journal position 2") && refused.contains("checksum"),
        "the position is named: {refused}"
    );
}

async fn journal_rows_written_before_checksums_still_load(backend: Backend) {
    let events = at_positions(vec![registered(1), charged(1, 1_000, 1_000)]);
    let db = journal_only(&backend, &events).await;
    on_journal(&db, "UPDATE journal SET checksum = NULL WHERE pos >= {p}", 1).await;
    let recovered = recover(&db).await.expect("rows without a checksum load");
    assert_eq!(recovered.state.accounts[&1].balance, 1_000, "and replay as before");
}

fn concert(id: u64) -> Event {
    Event::ConcertCreated {
        info: ConcertInfo {
            id,
            title: "IU".into(),
            category: "k-pop".into(),
            venue: "Hall".into(),
            starts_at_ms: 4_000_000_000_000,
            seat_count: 10,
            pricing: Pricing::flat(1_000),
        },
    }
}

fn held(id: u64, member: u64, seats: Vec<u32>) -> Event {
    Event::SeatsHeld {
        reservation: Reservation {
            id,
            concert_id: 1,
            member_id: member,
            amount: 1_000 * i64::try_from(seats.len()).expect("few seats"),
            seats,
            status: ReservationStatus::PendingPayment,
            created_at_ms: 1,
            expires_at_ms: 4_000_000_000_000,
        },
    }
}

/// Replay used to skip a hold it could not apply (`let _ = apply_hold(..)`);
/// now the journal is corrupt there and start-up stops, naming the position.
async fn an_event_that_does_not_apply_stops_recovery_naming_its_position(backend: Backend) {
    // Seat 3 held twice: the second hold cannot have been decided live.
    let events = at_positions(vec![
        concert(1),
        registered(1),
        registered(2),
        held(1, 1, vec![3]),
        held(2, 2, vec![3, 4]),
    ]);
    let db = journal_only(&backend, &events).await;
    let refused = recover(&db).await.err().expect("a hold of taken seats stops recovery");
    assert!(
        refused.contains("journal position 5") && refused.contains("does not apply"),
        "the position is named: {refused}"
    );

    // A payment of a reservation that was never held.
    let events = at_positions(vec![
        concert(1),
        registered(1),
        charged(1, 5_000, 5_000),
        Event::PaymentCompleted {
            payment: 1,
            concert: 1,
            reservation: 42,
            member: 1,
            amount: 1_000,
            balance_after: 4_000,
            token: None,
            at_ms: 3,
        },
    ]);
    let db = journal_only(&backend, &events).await;
    let refused = recover(&db)
        .await
        .err()
        .expect("a payment of an unknown reservation stops recovery");
    assert!(
        refused.contains("journal position 4") && refused.contains("reservation 42"),
        "the position and the reservation are named: {refused}"
    );
}

// ---- item 5: a broken invariant in a snapshot is fail-stop ---------------------

/// A member whose balance is not what the ledger says: memory is wrong.
fn broken_state() -> EngineState {
    let mut state = EngineState::default();
    state.accounts.insert(
        1,
        Account {
            balance: 500,
            ..Account::new("kim".into(), KEY_HASH, 0)
        },
    );
    state
}

#[actix_web::test]
async fn a_snapshot_of_a_broken_state_is_fail_stop_naming_the_invariant() {
    let url = Backend::Sqlite.fresh_database_url().await;
    let db = Db::connect(&url).await.expect("the database opens");
    let persister = Persister::new(0, Duration::from_millis(2));
    let flusher = tokio::spawn(persister.clone().run(db.clone()));
    let sink: Arc<dyn EventSink> = persister.clone();
    let engine = Arc::new(Engine::start(
        EngineSettings::contract_defaults(),
        Arc::new(SystemClock),
        sink,
        ConcertRouter::on_current_thread(),
    ));
    engine.restore(broken_state());

    match take_snapshot(&engine, &persister, &db).await {
        Err(SnapshotError::Invariant(message)) => assert!(
            message.contains("member 1: the ledger sums to the balance"),
            "the invariant is named: {message}"
        ),
        other => panic!("a broken state is never written as a snapshot, got {other:?}"),
    }

    // The periodic task hands it to the fail-stop (in production: exit).
    let (stopped, mut reason) = tokio::sync::mpsc::unbounded_channel::<String>();
    let fail_stop: FailStop = Arc::new(move |why: &str| {
        let _ = stopped.send(why.to_owned());
    });
    let snapshots = tokio::spawn(run_snapshots(
        Arc::clone(&engine),
        Arc::clone(&persister),
        db.clone(),
        Duration::from_millis(50),
        fail_stop,
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    engine.register_member("lee", [8; 32]).expect("a change to snapshot");
    let why = tokio::time::timeout(Duration::from_secs(10), reason.recv())
        .await
        .expect("the fail-stop fires")
        .expect("with a reason");
    assert!(
        why.contains("member 1: the ledger sums to the balance"),
        "the fail-stop names the invariant: {why}"
    );
    snapshots.await.expect("the snapshot task ends after a fail-stop");
    let Db::Sqlite(files) = &db else {
        unreachable!("a SQLite URL");
    };
    let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM snapshots")
        .fetch_one(&files.main)
        .await
        .expect("counted");
    assert_eq!(written, 0, "no snapshot of the broken state was written");
    assert!(persister.shutdown(Duration::from_secs(5)).await);
    flusher.await.expect("the flusher stops");
}

/// The production fail-stop really ends the process, non-zero, with the
/// reason on its output. Runs this test binary again as a child that fires it.
#[test]
fn the_fail_stop_exits_the_process_non_zero_with_the_reason() {
    const CHILD: &str = "CONCERT_TEST_FAIL_STOP_CHILD";
    if std::env::var_os(CHILD).is_some() {
        exit_process()("invariant broken in the engine's state: member 1: the ledger sums to the balance");
        unreachable!("the fail-stop does not return");
    }
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "the_fail_stop_exits_the_process_non_zero_with_the_reason",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("the child runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(FAIL_STOP_EXIT_CODE),
        "the process exits with the fail-stop code: {stderr}"
    );
    assert!(
        stderr.contains("fail-stop: invariant broken in the engine's state: member 1"),
        "the reason is on its output: {stderr}"
    );
}
