//! Durability: what was acknowledged survives a restart, through the tables,
//! through a snapshot plus the journal, and past a corrupt snapshot; a
//! database in trouble gives 503s, keeps reads working, and heals by itself.
//! The tables are a projection of the journal: they may lag, catch up to the
//! same content, recover correctly while lagging, and pruning keeps the
//! journal rows they have not absorbed.

mod common;

use std::time::Duration;

use std::sync::Arc;

use common::{assert_problem, spawn_app_at, spawn_app_on, Backend, TestApp};
use concert_actors::clock::SystemClock;
use concert_actors::router::ConcertRouter;
use concert_actors::sink::EventSink;
use concert_actors::types::JournalPos;
use concert_actors::{Engine, EngineSettings, Event};
use concert_server::persistence::codec::{decode_event, encode_event};
use concert_server::persistence::recovery::recover;
use concert_server::persistence::snapshot::take_snapshot;
use concert_server::persistence::writer::{
    project, projected_pos, write_batch, write_journal, WriteError, JOURNAL_CHUNK_ROWS,
};
use concert_server::persistence::{Db, Persister};
use reqwest::Method;
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};

on_every_backend!(
    a_restart_recovers_everything_acknowledged_from_the_tables,
    a_restart_recovers_from_a_snapshot_and_the_journal,
    a_corrupt_snapshot_is_skipped,
    lagging_tables_catch_up_to_the_same_content,
    recovery_from_lagging_tables_gives_the_committed_state,
    pruning_keeps_the_journal_rows_the_tables_have_not_absorbed,
    old_idempotency_records_and_expired_tokens_are_pruned,
    journal_writes_of_every_size_commit_every_row,
    projecting_events_again_changes_nothing,
);

/// What the first run did, to compare after the restart.
struct Story {
    concert: u64,
    kim: common::Member,
    paid: u64,
    pending: u64,
    pending_expires_at: String,
    waiting: Vec<common::Member>,
}

async fn write_a_story(app: &TestApp) -> Story {
    let concert = app.create_concert("IU", 20, 10_000).await;
    let kim = app.active_member("kim", 100_000).await;
    let paid = app.hold_ok(&kim, concert, &[1, 2]).await;
    assert_eq!(
        app.pay(&kim, paid, Some("pay-1")).await.status(),
        201,
        "payment succeeds"
    );
    let lee = app.active_member("lee", 50_000).await;
    let pending = app.hold_ok(&lee, concert, &[3]).await;
    let held: Value = app.reservation(&lee, pending).await.json().await.expect("json");
    let mut waiting = Vec::new();
    for name in ["w1", "w2", "w3"] {
        let mut member = app.register(name).await;
        app.issue_token(&mut member).await;
        waiting.push(member);
    }
    Story {
        concert,
        kim,
        paid,
        pending,
        pending_expires_at: held["expiresAt"].as_str().expect("expiresAt").to_owned(),
        waiting,
    }
}

async fn check_the_story(app: &TestApp, story: &Story) {
    let me: Value = app.member_get(&story.kim, "/api/v1/members/me").await;
    assert_eq!(me["balance"], 80_000, "the member key and the balance survive");
    let paid: Value = app
        .reservation(&story.kim, story.paid)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(paid["status"], "CONFIRMED", "the payment survives");
    let concert: Value = app
        .get(&format!("/api/v1/concerts/{}", story.concert))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(concert["availableSeats"], 17, "2 sold + 1 held of 20");
    let replay = app.pay(&story.kim, story.paid, Some("pay-1")).await;
    assert_eq!(
        replay.status(),
        201,
        "the idempotency record survives: the replay is the first answer"
    );
    let positions: Vec<u64> = {
        let mut out = Vec::new();
        for member in &story.waiting {
            let status: Value = app.queue_status(member.token()).await.json().await.expect("json");
            assert_eq!(status["status"], "WAITING", "waiting tokens survive");
            out.push(status["position"].as_u64().expect("position"));
        }
        out
    };
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "the queue keeps its order: {positions:?}"
    );
    let lee_reservations = app
        .request(Method::GET, &format!("/api/v1/reservations/{}", story.pending))
        .header("X-Admin-Key", "unused")
        .send()
        .await
        .expect("sent");
    assert_eq!(lee_reservations.status(), 401, "credentials are still required");
    let admin = app
        .request(Method::POST, "/api/v1/admin/concerts")
        .header("X-Admin-Key", common::ADMIN_KEY)
        .json(&serde_json::json!({"title": "X", "category": "pop", "venue": "V",
            "startsAt": app.rfc3339_in(common::DAY_MS), "seatCount": 1, "price": 1}))
        .send()
        .await
        .expect("sent");
    let created: Value = admin.json().await.expect("json");
    assert!(created["id"].as_u64() > Some(story.concert), "ids are never reused");
    let _ = &story.pending_expires_at;
}

/// Stops `app` (one server per database) and starts a new one on its database.
async fn restart(app: &TestApp) -> TestApp {
    app.stop().await;
    spawn_app_at(&app.database_url, |_| {}).await
}

async fn a_restart_recovers_everything_acknowledged_from_the_tables(backend: Backend) {
    let first = spawn_app_on(backend, |_| {}).await;
    let story = write_a_story(&first).await;
    let second = restart(&first).await;
    check_the_story(&second, &story).await;
    second
        .state
        .engine
        .check_invariants()
        .await
        .expect("the engine answers");
}

async fn a_restart_recovers_from_a_snapshot_and_the_journal(backend: Backend) {
    let first = spawn_app_on(backend, |_| {}).await;
    let concert = first.create_concert("Warmup", 5, 1).await;
    let state = &first.state;
    take_snapshot(&state.engine, &state.persister, &state.db)
        .await
        .expect("a snapshot is written");
    let story = write_a_story(&first).await;
    let second = restart(&first).await;
    check_the_story(&second, &story).await;
    assert!(
        second.state.engine.concert(concert).is_some(),
        "state from the snapshot is there"
    );
}

async fn a_corrupt_snapshot_is_skipped(backend: Backend) {
    let first = spawn_app_on(backend, |_| {}).await;
    let story = write_a_story(&first).await;
    let state = &first.state;
    take_snapshot(&state.engine, &state.persister, &state.db)
        .await
        .expect("a snapshot is written");
    let flip = "UPDATE snapshots SET bytes = substr(bytes, 1, 100)";
    match &state.db {
        Db::Sqlite(files) => sqlx::query(flip).execute(&files.main).await.map(|_| ()),
        Db::Postgres(pool) => sqlx::query("UPDATE snapshots SET bytes = substring(bytes from 1 for 100)")
            .execute(pool)
            .await
            .map(|_| ()),
    }
    .expect("the snapshot is truncated");
    let second = restart(&first).await;
    check_the_story(&second, &story).await;
}

#[actix_web::test]
async fn a_locked_database_gives_503_keeps_reads_and_heals() {
    let app = spawn_app_on(Backend::Sqlite, |_| {}).await;
    let concert = app.create_concert("IU", 10, 1_000).await;
    let kim = app.register("kim").await;
    // Another connection takes the journal file's write lock (the durable
    // commit's), as a stuck database would.
    let Db::Sqlite(files) = &app.state.db else {
        panic!("this test runs on SQLite");
    };
    let mut blocker = files.journal.acquire().await.expect("a connection");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *blocker)
        .await
        .expect("locked");

    let refused = app.charge(&kim, 1_000).await;
    assert!(refused.headers().contains_key("retry-after"), "503 says when to retry");
    assert_problem(refused, 503, "UNAVAILABLE").await;
    let read = app.get(&format!("/api/v1/concerts/{concert}")).await;
    assert_eq!(
        read.status(),
        200,
        "reads keep working while writes cannot be made durable"
    );
    assert_eq!(
        app.get("/ready").await.status(),
        503,
        "not ready while the database fails"
    );

    sqlx::query("ROLLBACK").execute(&mut *blocker).await.expect("unlocked");
    drop(blocker);
    let mut healed = false;
    for _ in 0..100 {
        if app.charge(&kim, 1).await.status() == 200 {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        healed,
        "once the database answers, writes succeed again without a restart"
    );
    let restarted = restart(&app).await;
    let me: Value = restarted.member_get(&kim, "/api/v1/members/me").await;
    let balance = me["balance"].as_i64().expect("balance");
    assert!(
        balance == 1 || balance == 1_001,
        "the backlog drained: the acknowledged charge is there (the refused one may have landed late), got {balance}"
    );
}

// ---- the tables as a projection of the journal ---------------------------------

/// Waits until the app's tables reflect every committed event.
async fn projected(app: &TestApp) {
    let persister = &app.state.persister;
    for _ in 0..200 {
        if persister.projection_lag() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the tables did not catch up: lag {}", persister.projection_lag());
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

macro_rules! dump_rows {
    ($db:expr, $out:expr, $row:ty, $sql:expr) => {{
        let rows: Vec<$row> = match $db {
            Db::Sqlite(files) => sqlx::query_as($sql).fetch_all(&files.main).await,
            Db::Postgres(pool) => sqlx::query_as($sql).fetch_all(pool).await,
        }
        .expect($sql);
        $out.extend(rows.into_iter().map(|row| format!("{}: {row:?}", $sql)));
    }};
}

/// The content of every normalized table, one line a row, in a fixed order
/// (balance_history without its generated id).
async fn tables_of(db: &Db) -> Vec<String> {
    let mut out = Vec::new();
    dump_rows!(
        db,
        out,
        (i64, String, Vec<u8>, i64, i64),
        "SELECT id, name, key_hash, balance, created_at FROM members ORDER BY id"
    );
    dump_rows!(
        db,
        out,
        (i64, String, i64, i64, i64, i64),
        "SELECT member_id, kind, amount, balance_after, at, journal_pos FROM balance_history ORDER BY journal_pos"
    );
    dump_rows!(
        db,
        out,
        (i64, String, String, String, i64, i64, i64, String),
        "SELECT id, title, category, venue, starts_at, seat_count, price, price_tiers FROM concerts ORDER BY id"
    );
    dump_rows!(
        db,
        out,
        (i64, i64, String, i64),
        "SELECT concert_id, seat_no, status, reservation_id FROM seats ORDER BY concert_id, seat_no"
    );
    dump_rows!(
        db,
        out,
        (i64, i64, i64, i64, String, i64, i64),
        "SELECT id, concert_id, member_id, amount, status, created_at, expires_at FROM reservations ORDER BY id"
    );
    dump_rows!(
        db,
        out,
        (i64, i64),
        "SELECT reservation_id, seat_no FROM reservation_seats ORDER BY reservation_id, seat_no"
    );
    dump_rows!(
        db,
        out,
        (i64, i64, i64, i64, i64),
        "SELECT id, reservation_id, member_id, amount, created_at FROM payments ORDER BY id"
    );
    dump_rows!(
        db,
        out,
        (i64, String, String, Vec<u8>, i64, Vec<u8>, i64),
        "SELECT member_id, endpoint, key, fingerprint, status, body, created_at FROM idempotency_records \
         ORDER BY member_id, endpoint, key"
    );
    dump_rows!(
        db,
        out,
        (Vec<u8>, i64, i64, String, i64, i64),
        "SELECT token, member_id, seq, status, active_until, issued_at FROM queue_tokens ORDER BY seq"
    );
    out
}

/// A journal write of up to `JOURNAL_CHUNK_ROWS` events is one INSERT (on
/// SQLite in autocommit), a larger one several in a transaction: both commit
/// every row, in order, and an empty write commits nothing.
async fn journal_writes_of_every_size_commit_every_row(backend: Backend) {
    let url = backend.fresh_database_url().await;
    let db = Db::connect(&url).await.expect("the database opens");
    write_journal(&db, &[]).await.expect("an empty write is a no-op");
    assert!(journal_of(&db).await.is_empty(), "an empty write commits no row");
    let chunk = JOURNAL_CHUNK_ROWS as u64;
    let charge = |pos: u64| {
        let event = Event::BalanceCharged {
            member: 1,
            amount: 1_000,
            balance_after: 1_000 * i64::try_from(pos).expect("a small position"),
            at_ms: 0,
        };
        (pos, event)
    };
    let one_statement: Vec<_> = (1..=chunk).map(charge).collect();
    let several: Vec<_> = (chunk + 1..=2 * chunk + 1).map(charge).collect();
    write_journal(&db, &one_statement)
        .await
        .expect("a batch of one statement commits");
    write_journal(&db, &several)
        .await
        .expect("a batch of several statements commits");
    let journal = journal_of(&db).await;
    assert!(
        journal.iter().map(|(pos, _)| *pos).eq(1..=2 * chunk + 1),
        "every position is there once, in order"
    );
    assert_eq!(
        journal.last().map(|(_, event)| event),
        several.last().map(|(_, event)| event)
    );
    db.close().await;
}

/// A fresh database holding `events`, the first `projected` of them in the
/// tables too and the rest in the journal only: the state after a crash
/// between a journal commit and its projection.
async fn lagging_copy(backend: &Backend, events: &[(JournalPos, Event)], projected: usize) -> (String, Db) {
    let url = backend.fresh_database_url().await;
    let db = Db::connect(&url).await.expect("the copy opens");
    write_batch(&db, &events[..projected])
        .await
        .expect("the projected part commits");
    write_journal(&db, &events[projected..])
        .await
        .expect("the journal-only part commits");
    (url, db)
}

/// A story written through the app on a fresh database of `backend`, fully
/// projected: its journal events and its tables.
async fn a_projected_story(backend: &Backend) -> (Vec<(JournalPos, Event)>, Vec<String>) {
    let first = spawn_app_on(backend.clone(), |_| {}).await;
    write_a_story(&first).await;
    projected(&first).await;
    (journal_of(&first.state.db).await, tables_of(&first.state.db).await)
}

async fn lagging_tables_catch_up_to_the_same_content(backend: Backend) {
    let (events, expected) = a_projected_story(&backend).await;
    let last = events.last().expect("the story journaled events").0;

    let half = events.len() / 2;
    let (_, copy) = lagging_copy(&backend, &events, half).await;
    assert_eq!(
        projected_pos(&copy).await.expect("projected_pos reads"),
        events[half - 1].0,
        "projected_pos names the last event in the tables"
    );
    assert_ne!(tables_of(&copy).await, expected, "the tables lag the journal");

    // A persister started on it catches the tables up from the journal.
    let persister = Persister::new(last, Duration::from_millis(2));
    let flusher = tokio::spawn(persister.clone().run(copy.clone()));
    for _ in 0..200 {
        if projected_pos(&copy).await.expect("projected_pos reads") == last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        projected_pos(&copy).await.expect("projected_pos reads"),
        last,
        "the tables caught up"
    );
    assert_eq!(persister.projected_pos(), last);
    assert_eq!(
        tables_of(&copy).await,
        expected,
        "the same content as tables kept current"
    );
    assert!(
        persister.shutdown(Duration::from_secs(5)).await,
        "nothing left to commit"
    );
    flusher.await.expect("the flusher stops");
}

/// Projecting events the tables already reflect (a retry after a commit
/// whose answer was lost, or a second writer) leaves them as they are, and a
/// slice that overlaps them projects only its new part. On PostgreSQL, whose
/// append-only rows are COPYed without `ON CONFLICT`, that is the
/// `projected_pos` lock; it also refuses a slice that leaves a gap after
/// `projected_pos`.
async fn projecting_events_again_changes_nothing(backend: Backend) {
    let (events, expected) = a_projected_story(&backend).await;
    let last = events.last().expect("the story journaled events").0;

    let half = events.len() / 2;
    let (_, copy) = lagging_copy(&backend, &events, half).await;
    let lagging = tables_of(&copy).await;
    project(&copy, &events[..half]).await.expect("projected events again");
    assert_eq!(tables_of(&copy).await, lagging, "events projected again change nothing");
    assert_eq!(
        projected_pos(&copy).await.expect("projected_pos reads"),
        events[half - 1].0
    );

    if matches!(copy, Db::Postgres(_)) {
        let gap = project(&copy, &events[half + 1..]).await;
        assert!(
            matches!(gap, Err(WriteError::Gap { .. })),
            "a slice after a gap is refused: {gap:?}"
        );
        assert_eq!(tables_of(&copy).await, lagging, "a refused slice writes nothing");
    }

    project(&copy, &events[half / 2..]).await.expect("an overlapping slice");
    assert_eq!(projected_pos(&copy).await.expect("projected_pos reads"), last);
    assert_eq!(tables_of(&copy).await, expected, "the overlap is projected once");
    project(&copy, &events).await.expect("everything again");
    assert_eq!(tables_of(&copy).await, expected, "still the same content");
    copy.close().await;
}

async fn recovery_from_lagging_tables_gives_the_committed_state(backend: Backend) {
    let first = spawn_app_on(backend.clone(), |_| {}).await;
    let story = write_a_story(&first).await;
    let events = journal_of(&first.state.db).await;
    // The crash hit after the last journal commit, with a third projected.
    let (url, copy) = lagging_copy(&backend, &events, events.len() / 3).await;
    let recovered = recover(&copy).await.expect("recovery succeeds");
    assert_eq!(
        recovered.source, "tables",
        "no snapshot: the tables plus the journal after them"
    );
    assert_eq!(recovered.last_pos, events.last().expect("events").0);
    recovered.state.check_invariants();
    copy.close().await;
    let second = spawn_app_at(&url, |_| {}).await;
    check_the_story(&second, &story).await;
}

async fn pruning_keeps_the_journal_rows_the_tables_have_not_absorbed(backend: Backend) {
    let first = spawn_app_on(backend.clone(), |_| {}).await;
    let story = write_a_story(&first).await;
    let events = journal_of(&first.state.db).await;
    let absorbed = events.len() / 3;
    let projected_to = events[absorbed - 1].0;
    let last = events.last().expect("events").0;
    let (url, copy) = lagging_copy(&backend, &events, absorbed).await;

    // An engine restored from it (no flusher runs, so the tables stay behind)
    // takes two snapshots: the second prunes up to the first one's position.
    let recovered = recover(&copy).await.expect("recovery succeeds");
    let persister = Persister::new(recovered.last_pos, Duration::from_millis(2));
    let sink: Arc<dyn EventSink> = persister.clone();
    let engine = Arc::new(Engine::start(
        EngineSettings::contract_defaults(),
        Arc::new(SystemClock),
        sink,
        ConcertRouter::on_current_thread(),
    ));
    engine.restore(recovered.state);
    for _ in 0..2 {
        let report = take_snapshot(&engine, &persister, &copy).await.expect("a snapshot");
        assert_eq!(report.journal_pos, last);
    }
    let count = |sql: &'static str| {
        let copy = copy.clone();
        async move {
            match &copy {
                Db::Sqlite(files) => sqlx::query_scalar::<_, i64>(sql).fetch_one(&files.journal).await,
                Db::Postgres(pool) => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await,
            }
            .expect(sql)
        }
    };
    let kept = count("SELECT COUNT(*) FROM journal").await;
    let oldest = count("SELECT MIN(pos) FROM journal").await;
    assert_eq!(
        (kept, oldest),
        (
            i64::try_from(last - projected_to).expect("small"),
            i64::try_from(projected_to + 1).expect("small")
        ),
        "pruned exactly up to projected_pos, not up to the snapshot"
    );

    // Without the snapshots, the tables plus the kept journal still give everything.
    match &copy {
        Db::Sqlite(files) => sqlx::query("DELETE FROM snapshots")
            .execute(&files.main)
            .await
            .map(|_| ()),
        Db::Postgres(pool) => sqlx::query("DELETE FROM snapshots").execute(pool).await.map(|_| ()),
    }
    .expect("snapshots deleted");
    copy.close().await;
    let second = spawn_app_at(&url, |_| {}).await;
    check_the_story(&second, &story).await;
}

async fn old_idempotency_records_and_expired_tokens_are_pruned(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let story = write_a_story(&app).await;
    projected(&app).await;
    let count = |sql: &'static str| {
        let db = app.state.db.clone();
        async move {
            match &db {
                Db::Sqlite(files) => sqlx::query_scalar::<_, i64>(sql).fetch_one(&files.main).await,
                Db::Postgres(pool) => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await,
            }
            .expect(sql)
        }
    };
    let records = "SELECT COUNT(*) FROM idempotency_records";
    let expired = "SELECT COUNT(*) FROM queue_tokens WHERE status = 'EXPIRED'";
    let waiting = "SELECT COUNT(*) FROM queue_tokens WHERE status = 'WAITING'";
    assert_eq!(count(records).await, 1, "the payment's record");
    assert_eq!(count(expired).await, 1, "kim's token, spent by the payment");
    let state = &app.state;
    take_snapshot(&state.engine, &state.persister, &state.db)
        .await
        .expect("a snapshot is written");
    assert_eq!(count(records).await, 1, "kept within the retention");
    assert_eq!(count(expired).await, 1, "kept within the retention");

    // Past the retention and past the spent token's activeUntil.
    app.clock.advance_ms(2 * common::DAY_MS);
    // Something to snapshot at the later time.
    app.charge(&story.kim, 1).await;
    take_snapshot(&state.engine, &state.persister, &state.db)
        .await
        .expect("a snapshot is written");
    assert_eq!(count(records).await, 1, "idempotency records are the retention pass's");
    let pass = concert_server::retention::Retention::from_settings(&state.settings)
        .pass(&state.engine, &state.persister, &state.db)
        .await;
    assert_eq!(pass.idempotency_pruned, 1, "the record leaves memory");
    assert_eq!(count(records).await, 0, "a day later the record is gone, as in memory");
    assert_eq!(count(expired).await, 0, "a day later the spent token is gone");
    assert_eq!(count(waiting).await, 3, "waiting tokens are kept");
}

/// A SQLite database written before migration `0003` (the projected tables
/// with foreign keys, as rowid tables) opens with its content intact: the
/// migration rebuilds the tables, drops their keys, clusters `seats`,
/// `reservation_seats` and `queue_tokens` on their keys, and the server
/// started on it sees everything it had acknowledged.
#[actix_web::test]
async fn a_sqlite_database_of_the_older_schema_upgrades_with_its_content() {
    use std::str::FromStr;

    let first = spawn_app_on(Backend::Sqlite, |_| {}).await;
    let story = write_a_story(&first).await;
    projected(&first).await;
    let expected = tables_of(&first.state.db).await;
    let current = first
        .database_url
        .strip_prefix("sqlite://")
        .expect("a sqlite URL")
        .to_owned();

    // The older schema: migrations 0001 and 0002 only, then the first
    // app's rows copied over, table by table (same columns, same order).
    let old_migrations = tempfile::tempdir().expect("a temp dir");
    for name in ["0001_init.sql", "0002_projection.sql"] {
        std::fs::copy(
            format!("{}/migrations/sqlite/{name}", env!("CARGO_MANIFEST_DIR")),
            old_migrations.path().join(name),
        )
        .expect("the migration is copied");
    }
    let url = Backend::Sqlite.fresh_database_url().await;
    let path = url.strip_prefix("sqlite://").expect("a sqlite URL");
    std::fs::create_dir_all(std::path::Path::new(path).parent().expect("a folder")).expect("the folder");
    let options = SqliteConnectOptions::from_str(&url)
        .expect("the URL parses")
        .create_if_missing(true);
    let old = SqlitePool::connect_with(options).await.expect("the old database opens");
    Migrator::new(old_migrations.path())
        .await
        .expect("the old migrations load")
        .run(&old)
        .await
        .expect("the old schema is created");
    let schema: Vec<(String,)> = sqlx::query_as("SELECT sql FROM sqlite_master WHERE name = 'seats'")
        .fetch_all(&old)
        .await
        .expect("the schema reads");
    assert!(schema[0].0.contains("REFERENCES"), "the old schema has its keys");
    let mut conn = old.acquire().await.expect("a connection");
    sqlx::query(&format!("ATTACH DATABASE '{current}' AS cur"))
        .execute(&mut *conn)
        .await
        .expect("the first app's database attaches");
    // The first app's main file may not hold every table (the journal can
    // live in a file of its own): copy the ones it has.
    let present: Vec<(String,)> = sqlx::query_as("SELECT name FROM cur.sqlite_master WHERE type = 'table'")
        .fetch_all(&mut *conn)
        .await
        .expect("the first app's schema reads");
    sqlx::query("BEGIN").execute(&mut *conn).await.expect("begin");
    for table in [
        "members",
        "balance_history",
        "concerts",
        "reservations",
        "seats",
        "reservation_seats",
        "payments",
        "idempotency_records",
        "queue_tokens",
        "journal",
        "snapshots",
        "settings",
        "projection",
    ]
    .into_iter()
    .filter(|table| present.iter().any(|(name,)| name == table))
    {
        sqlx::query(&format!(
            "INSERT OR REPLACE INTO main.{table} SELECT * FROM cur.{table}"
        ))
        .execute(&mut *conn)
        .await
        .expect("a table is copied");
    }
    sqlx::query("COMMIT").execute(&mut *conn).await.expect("commit");
    sqlx::query("DETACH DATABASE cur")
        .execute(&mut *conn)
        .await
        .expect("detach");
    drop(conn);
    old.close().await;

    let upgraded = Db::connect(&url).await.expect("the old database opens and migrates");
    assert_eq!(tables_of(&upgraded).await, expected, "every row survives the rebuild");
    let Db::Sqlite(files) = &upgraded else {
        unreachable!("a sqlite URL opens SQLite")
    };
    let pool = &files.main;
    for table in ["seats", "reservation_seats", "queue_tokens"] {
        let (sql,): (String,) = sqlx::query_as("SELECT sql FROM sqlite_master WHERE name = ?1")
            .bind(table)
            .fetch_one(pool)
            .await
            .expect("the schema reads");
        assert!(sql.contains("WITHOUT ROWID"), "{table} is clustered on its key: {sql}");
    }
    let (keys,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM sqlite_master AS t, pragma_foreign_key_list(t.name) WHERE t.type = 'table'",
    )
    .fetch_one(pool)
    .await
    .expect("the keys read");
    assert_eq!(keys, 0, "no foreign keys are left");
    // 0004: a concert's live holds keep an index; the full one is gone.
    let (full,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sqlite_master WHERE name = 'reservations_by_concert'")
        .fetch_one(pool)
        .await
        .expect("the schema reads");
    assert_eq!(full, 0, "the full reservations_by_concert index is dropped");
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT id FROM reservations WHERE concert_id = ?1 AND status = 'PENDING_PAYMENT'",
    )
    .bind(1_i64)
    .fetch_all(pool)
    .await
    .expect("the plan reads");
    assert!(
        plan.iter()
            .any(|(_, _, _, detail)| detail.contains("reservations_pending_by_concert")),
        "a concert's pending reservations are found through the partial index: {plan:?}"
    );
    let (broken,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM pragma_integrity_check WHERE integrity_check <> 'ok'")
        .fetch_one(pool)
        .await
        .expect("the integrity check runs");
    assert_eq!(broken, 0, "the rebuilt database is sound");
    upgraded.close().await;

    let second = spawn_app_at(&url, |_| {}).await;
    check_the_story(&second, &story).await;
}

/// A PostgreSQL database written before migration `0004` opens with its
/// content intact: `balance_history` is keyed by `journal_pos` (no
/// surrogate `id` left), `reservations_by_concert` becomes the partial
/// index of pending reservations, and the server started on it sees
/// everything it had acknowledged.
#[actix_web::test]
async fn a_postgres_database_of_the_older_schema_upgrades_with_its_content() {
    let Some(backend) = Backend::postgres() else {
        eprintln!("skipped: TEST_POSTGRES_URL not set");
        return;
    };
    let first = spawn_app_on(backend.clone(), |_| {}).await;
    let story = write_a_story(&first).await;
    projected(&first).await;
    let events = journal_of(&first.state.db).await;
    let expected = tables_of(&first.state.db).await;

    // The older schema (migrations 0001-0003), holding the same events.
    let old_migrations = tempfile::tempdir().expect("a temp dir");
    for name in [
        "0001_init.sql",
        "0002_projection.sql",
        "0003_projection_without_foreign_keys.sql",
    ] {
        std::fs::copy(
            format!("{}/migrations/postgres/{name}", env!("CARGO_MANIFEST_DIR")),
            old_migrations.path().join(name),
        )
        .expect("the migration is copied");
    }
    let url = backend.fresh_database_url().await;
    let pool = sqlx::PgPool::connect(&url).await.expect("the old database opens");
    Migrator::new(old_migrations.path())
        .await
        .expect("the old migrations load")
        .run(&pool)
        .await
        .expect("the old schema is created");
    // Today's writer also stores each journal row's checksum (migration
    // 0005): the column exists only while the events are written, and its
    // values go with it, so the journal rows are as an older server left
    // them (no checksum), which must still load.
    let old = Db::Postgres(pool.clone());
    sqlx::query("ALTER TABLE journal ADD COLUMN checksum BIGINT")
        .execute(&pool)
        .await
        .expect("a checksum column for today's writer");
    write_batch(&old, &events)
        .await
        .expect("the old schema takes the events");
    sqlx::query("ALTER TABLE journal DROP COLUMN checksum")
        .execute(&pool)
        .await
        .expect("the old schema again");
    let (ids,): (i64,) = sqlx::query_as("SELECT COUNT(id) FROM balance_history")
        .fetch_one(match &old {
            Db::Postgres(pool) => pool,
            Db::Sqlite(_) => unreachable!("a postgres URL"),
        })
        .await
        .expect("the old history has its surrogate ids");
    assert!(ids > 0, "the story charged and paid");
    old.close().await;

    let upgraded = Db::connect(&url).await.expect("the old database opens and migrates");
    assert_eq!(tables_of(&upgraded).await, expected, "every row survives the migration");
    let Db::Postgres(pool) = &upgraded else {
        unreachable!("a postgres URL opens PostgreSQL")
    };
    let key: Vec<(String,)> = sqlx::query_as(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = 'balance_history'::regclass AND i.indisprimary",
    )
    .fetch_all(pool)
    .await
    .expect("the key reads");
    assert_eq!(
        key,
        vec![("journal_pos".to_owned(),)],
        "the history is keyed by its journal position"
    );
    let (id_column,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_name = 'balance_history' AND column_name = 'id'",
    )
    .fetch_one(pool)
    .await
    .expect("the columns read");
    assert_eq!(id_column, 0, "the surrogate id is gone");
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('reservations', 'balance_history')",
    )
    .fetch_all(pool)
    .await
    .expect("the indexes read");
    assert!(
        !indexes.iter().any(|(name, _)| name == "reservations_by_concert"),
        "the full reservations_by_concert index is dropped: {indexes:?}"
    );
    assert!(
        indexes
            .iter()
            .any(|(name, def)| name == "reservations_pending_by_concert"
                && def.contains("WHERE (status = 'PENDING_PAYMENT'::text)")),
        "a concert's pending reservations keep an index: {indexes:?}"
    );
    assert!(
        indexes
            .iter()
            .any(|(name, def)| name == "balance_history_member" && def.contains("(member_id, journal_pos)")),
        "a member's history keeps its index: {indexes:?}"
    );
    upgraded.close().await;

    let second = spawn_app_at(&url, |_| {}).await;
    check_the_story(&second, &story).await;
}

// ---- SQLite: the journal in a file of its own ------------------------------------

/// The migrations of the main file, which until the journal had its own
/// file held the `journal` table too (migration 0001 still creates it).
static MAIN_FILE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static JOURNAL_FILE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite_journal");

fn journal_file(db: &Db) -> std::path::PathBuf {
    let Db::Sqlite(files) = db else {
        panic!("this test runs on SQLite");
    };
    files.journal_path.clone().expect("a file database has a journal file")
}

fn remove_journal_file(db: &Db) {
    let journal = journal_file(db);
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", journal.display());
        if std::path::Path::new(&file).exists() {
            std::fs::remove_file(&file).expect("the journal file is removed");
        }
    }
}

/// A SQLite file migrated by `migrator` whose `journal` table holds `events`.
async fn file_with_journal(path: &std::path::Path, migrator: &Migrator, events: &[(JournalPos, Event)]) {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePool::connect_with(options).await.expect("the file opens");
    migrator.run(&pool).await.expect("the file migrates");
    for (pos, event) in events {
        sqlx::query("INSERT INTO journal (pos, kind, payload) VALUES (?1, ?2, ?3)")
            .bind(i64::try_from(*pos).expect("small"))
            .bind(event.kind())
            .bind(encode_event(event).expect("the event encodes"))
            .execute(&pool)
            .await
            .expect("a journal row is written");
    }
    pool.close().await;
}

async fn main_file_has_a_journal_table(db: &Db) -> bool {
    let Db::Sqlite(files) = db else {
        panic!("this test runs on SQLite");
    };
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM sqlite_master WHERE name = 'journal'")
        .fetch_one(&files.main)
        .await
        .expect("the schema reads")
        > 0
}

/// A database written before the journal had its own file: every journal
/// row in the main file, nothing projected yet, no journal file; or (with
/// `copied`) a move into the journal file cut short after the copy's commit,
/// before the main file's table was dropped.
#[actix_web::test]
async fn a_single_file_database_has_its_journal_moved_into_its_own_file() {
    let first = spawn_app_on(Backend::Sqlite, |_| {}).await;
    let story = write_a_story(&first).await;
    projected(&first).await;
    let events = journal_of(&first.state.db).await;
    let expected = tables_of(&first.state.db).await;
    assert!(
        !main_file_has_a_journal_table(&first.state.db).await,
        "a new database has no journal in its main file"
    );
    for copied in [false, true] {
        let url = Backend::Sqlite.fresh_database_url().await;
        let main = std::path::PathBuf::from(url.strip_prefix("sqlite://").expect("a sqlite:// URL"));
        std::fs::create_dir_all(main.parent().expect("a folder")).expect("the folder is created");
        file_with_journal(&main, &MAIN_FILE_MIGRATIONS, &events).await;
        let journal = concert_server::persistence::db::journal_path(&main);
        if copied {
            file_with_journal(&journal, &JOURNAL_FILE_MIGRATIONS, &events).await;
        } else {
            assert!(!journal.exists());
        }
        let second = spawn_app_at(&url, |_| {}).await;
        assert_eq!(journal_file(&second.state.db), journal);
        assert_eq!(
            journal_of(&second.state.db).await,
            events,
            "every journal row is in the journal file, once (copied: {copied})"
        );
        assert!(
            !main_file_has_a_journal_table(&second.state.db).await,
            "the main file's journal is dropped (copied: {copied})"
        );
        // The persister reads `projected_pos` from the file as it starts:
        // wait for the file, not for the persister's view.
        let last = events.last().expect("events").0;
        for _ in 0..200 {
            if projected_pos(&second.state.db).await.expect("projected_pos reads") == last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(
            tables_of(&second.state.db).await,
            expected,
            "the tables are projected from the moved journal (copied: {copied})"
        );
        check_the_story(&second, &story).await;
    }
}

#[actix_web::test]
async fn a_missing_journal_file_is_refused() {
    let first = spawn_app_on(Backend::Sqlite, |_| {}).await;
    write_a_story(&first).await;
    remove_journal_file(&first.state.db);
    let refused = Db::connect(&first.database_url)
        .await
        .expect_err("a main file without its journal file is refused");
    assert!(
        refused.contains("journal file") && refused.contains("is missing"),
        "the operator is told why: {refused}"
    );
    assert!(
        !journal_file(&first.state.db).exists(),
        "the refusal does not create an empty journal file"
    );
}

#[actix_web::test]
async fn a_journal_file_behind_the_main_file_is_refused() {
    let first = spawn_app_on(Backend::Sqlite, |_| {}).await;
    write_a_story(&first).await;
    projected(&first).await;
    let events = journal_of(&first.state.db).await;
    // A journal file from an older backup: only the first half.
    remove_journal_file(&first.state.db);
    let journal = journal_file(&first.state.db);
    file_with_journal(&journal, &JOURNAL_FILE_MIGRATIONS, &events[..events.len() / 2]).await;
    let db = Db::connect(&first.database_url).await.expect("both files open");
    match recover(&db).await {
        Ok(_) => panic!("recovery must refuse a journal file that ends before the tables"),
        Err(err) => assert!(err.contains("missing or older"), "the operator is told why: {err}"),
    }
}

/// The durable commit needs only the journal file: with the main file
/// locked, writes are acknowledged and only the tables fall behind.
#[actix_web::test]
async fn a_locked_main_file_holds_back_only_the_tables() {
    let app = spawn_app_on(Backend::Sqlite, |_| {}).await;
    let kim = app.register("kim").await;
    projected(&app).await;
    let Db::Sqlite(files) = &app.state.db else {
        panic!("this test runs on SQLite");
    };
    let mut blocker = files.main.acquire().await.expect("a connection");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *blocker)
        .await
        .expect("locked");
    assert_eq!(app.charge(&kim, 1_000).await.status(), 200, "the charge is durable");
    assert!(app.state.persister.projection_lag() > 0, "the tables cannot follow");
    sqlx::query("ROLLBACK").execute(&mut *blocker).await.expect("unlocked");
    drop(blocker);
    projected(&app).await;
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM members WHERE id = ?1")
        .bind(i64::try_from(kim.id).expect("small"))
        .fetch_one(&files.main)
        .await
        .expect("the member row");
    assert_eq!(balance, 1_000, "the tables caught up");
}
