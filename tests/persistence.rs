//! Durability: what was acknowledged survives a restart, through the tables,
//! through a snapshot plus the journal, and past a corrupt snapshot; a
//! database in trouble gives 503s, keeps reads working, and heals by itself.

mod common;

use std::time::Duration;

use common::{assert_problem, spawn_app_at, spawn_app_on, Backend, TestApp};
use concert_server::persistence::snapshot::take_snapshot;
use concert_server::persistence::Db;
use reqwest::Method;
use serde_json::Value;

on_every_backend!(
    a_restart_recovers_everything_acknowledged_from_the_tables,
    a_restart_recovers_from_a_snapshot_and_the_journal,
    a_corrupt_snapshot_is_skipped,
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

async fn restart(app: &TestApp) -> TestApp {
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
        Db::Sqlite(pool) => sqlx::query(flip).execute(pool).await.map(|_| ()),
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
    // Another connection takes the write lock, as a stuck database would.
    let Db::Sqlite(pool) = &app.state.db else {
        panic!("this test runs on SQLite");
    };
    let mut blocker = pool.acquire().await.expect("a connection");
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
    let restarted = spawn_app_at(&app.database_url, |_| {}).await;
    let me: Value = restarted.member_get(&kim, "/api/v1/members/me").await;
    let balance = me["balance"].as_i64().expect("balance");
    assert!(
        balance == 1 || balance == 1_001,
        "the backlog drained: the acknowledged charge is there (the refused one may have landed late), got {balance}"
    );
}
