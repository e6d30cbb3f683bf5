//! A whole season in bounded memory (issue 17): finished reservations leave
//! memory after `CONCERT_FINISHED_RETENTION` and are read from the tables
//! with the same answers; idempotency records leave after
//! `CONCERT_IDEMPOTENCY_TTL`; balance history keeps the newest page in
//! memory; the member's reservation list is paginated. Each on both
//! databases.

mod common;

use std::time::Duration;

use common::{assert_problem, spawn_app_at, spawn_app_on, Backend, TestApp};
use concert_server::persistence::Db;
use concert_server::retention::Retention;
use reqwest::Method;
use serde_json::{json, Value};

on_every_backend!(
    finished_reservations_leave_memory_and_read_the_same_from_the_tables,
    idempotency_records_leave_after_their_ttl,
    the_reservation_list_is_paginated_across_memory_and_tables,
    older_balance_history_is_read_from_the_tables,
);

const SECOND: i64 = 1_000;

/// Waits until the tables hold everything committed so far.
async fn projected(app: &TestApp) {
    for _ in 0..1_000 {
        let persister = &app.state.persister;
        if persister.projected_pos() >= persister.committed_pos() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the projection did not catch up within 10 s");
}

/// One retention pass at the app's clock with a 1 s retention and TTL (the
/// app's own timer runs with the defaults, an hour and a day, so it retires
/// nothing the test does not ask for).
async fn retention_pass(app: &TestApp) -> concert_server::retention::RetentionPass {
    projected(app).await;
    Retention {
        finished_ms: SECOND,
        idempotency_ttl_ms: SECOND,
    }
    .pass(&app.state.engine, &app.state.persister, &app.state.db)
    .await
}

async fn body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

async fn list(app: &TestApp, member: &common::Member, query: &str) -> (u16, Value) {
    body(
        app.request(Method::GET, &format!("/api/v1/members/me/reservations{query}"))
            .bearer_auth(&member.key)
            .send()
            .await
            .expect("request sent"),
    )
    .await
}

/// Every page of the member's list, followed by `nextCursor`.
async fn whole_list(app: &TestApp, member: &common::Member, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut query = format!("?limit={limit}");
    loop {
        let (status, page) = list(app, member, &query).await;
        assert_eq!(status, 200, "{page}");
        let page_items = page["items"].as_array().expect("items");
        assert!(page_items.len() <= limit);
        items.extend(page_items.iter().cloned());
        match page["nextCursor"].as_str() {
            Some(cursor) => query = format!("?limit={limit}&cursor={cursor}"),
            None => return items,
        }
    }
}

async fn finished_reservations_leave_memory_and_read_the_same_from_the_tables(backend: Backend) {
    let app = spawn_app_on(backend, |s| s.hold_timeout = Duration::from_secs(60)).await;
    let concert = app.create_concert("Season", 20, 1_000).await;
    let kim = app.active_member("kim", 10_000).await;
    let lee = app.active_member("lee", 0).await;
    let cancelled = app.hold_ok(&kim, concert, &[1]).await;
    assert_eq!(app.cancel(&kim, cancelled).await.status(), 200);
    let expired = app.hold_ok(&kim, concert, &[2, 3]).await;
    let paid = app.hold_ok(&kim, concert, &[4]).await;
    assert_eq!(app.pay(&kim, paid, None).await.status(), 201);
    app.advance(61 * SECOND);
    // Expired by the actor's timer (real time, on the advanced clock).
    for _ in 0..500 {
        if body(app.reservation(&kim, expired).await).await.1["status"] == "EXPIRED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let pending = app.hold_ok(&lee, concert, &[5]).await;
    let before: Vec<(u16, Value)> = {
        let mut answers = Vec::new();
        for id in [cancelled, expired, paid] {
            answers.push(body(app.reservation(&kim, id).await).await);
        }
        answers
    };
    assert_eq!(before[1].1["status"], "EXPIRED");
    let list_before = whole_list(&app, &kim, 2).await;
    let cancel_again = body(app.cancel(&kim, cancelled).await).await;
    let pay_expired = body(app.pay(&kim, expired, None).await).await;

    app.advance(2 * SECOND);
    let pass = retention_pass(&app).await;
    assert_eq!(
        pass.reservations_retired, 2,
        "the cancelled and the expired one leave memory"
    );
    assert_eq!(
        app.state.engine.directory().len(),
        2,
        "the paid and the pending one stay"
    );
    let concerts = app.state.engine.export_concerts().await.expect("concerts");
    let in_memory: Vec<u64> = concerts[0].reservations().map(|r| r.id).collect();
    assert_eq!(in_memory, vec![paid, pending], "memory holds only live reservations");

    for (id, answer) in [cancelled, expired, paid].into_iter().zip(&before) {
        assert_eq!(
            &body(app.reservation(&kim, id).await).await,
            answer,
            "reservation {id} reads the same"
        );
    }
    assert_eq!(
        whole_list(&app, &kim, 2).await,
        list_before,
        "the member's list reads the same"
    );
    assert_eq!(
        body(app.cancel(&kim, cancelled).await).await,
        cancel_again,
        "cancel answers the same"
    );
    assert_eq!(
        body(app.pay(&kim, expired, None).await).await,
        pay_expired,
        "payment answers the same"
    );
    assert_problem(app.reservation(&lee, cancelled).await, 403, "FORBIDDEN").await;
    assert_problem(app.reservation(&kim, 999_999).await, 404, "NOT_FOUND").await;

    // A snapshot holds live state only, and a restart reads the same.
    let state = app.state.engine.export_state().await.expect("state");
    let snapshot_reservations: usize = state.concerts.values().map(|c| c.reservations().count()).sum();
    assert_eq!(snapshot_reservations, 2);
    concert_server::persistence::snapshot::take_snapshot(&app.state.engine, &app.state.persister, &app.state.db)
        .await
        .expect("snapshot");
    let url = app.database_url.clone();
    app.stop().await;
    let again = spawn_app_at(&url, |_| {}).await;
    for (id, answer) in [cancelled, expired, paid].into_iter().zip(&before) {
        assert_eq!(
            &body(again.reservation(&kim, id).await).await,
            answer,
            "after a restart, {id} reads the same"
        );
    }
    assert_eq!(
        whole_list(&again, &kim, 2).await,
        list_before,
        "after a restart the list reads the same"
    );
    again.stop().await;
}

async fn idempotency_records_leave_after_their_ttl(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let kim = app.register("kim").await;
    let charge = |key: &'static str| {
        app.request(Method::POST, "/api/v1/members/me/balance/charges")
            .bearer_auth(&kim.key)
            .header("Idempotency-Key", key)
            .json(&json!({ "amount": 100 }))
            .send()
    };
    assert_eq!(body(charge("k1").await.expect("sent")).await.1["balance"], 100);
    assert_eq!(
        body(charge("k1").await.expect("sent")).await.1["balance"],
        100,
        "a replay"
    );
    let pass = retention_pass(&app).await;
    assert_eq!(pass.idempotency_pruned, 0, "younger than the TTL");
    app.advance(2 * SECOND);
    let pass = retention_pass(&app).await;
    assert_eq!(
        (pass.idempotency_pruned, pass.idempotency_rows_pruned),
        (1, 1),
        "memory and table"
    );
    assert_eq!(
        body(charge("k1").await.expect("sent")).await.1["balance"],
        200,
        "past its TTL the key is new again"
    );
    projected(&app).await;
    let rows: i64 = match &app.state.db {
        Db::Sqlite(files) => sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_records")
            .fetch_one(&files.main)
            .await
            .expect("count"),
        Db::Postgres(pool) => sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_records")
            .fetch_one(pool)
            .await
            .expect("count"),
    };
    assert_eq!(rows, 1, "only the new record is in the table");
    app.stop().await;
}

async fn the_reservation_list_is_paginated_across_memory_and_tables(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let concert = app.create_concert("Pages", 20, 1_000).await;
    let kim = app.active_member("kim", 0).await;
    let mut ids = Vec::new();
    for seat in 1..=5 {
        let id = app.hold_ok(&kim, concert, &[seat]).await;
        assert_eq!(app.cancel(&kim, id).await.status(), 200);
        ids.push(id);
    }
    // Three of them retired, two still in memory.
    app.advance(2 * SECOND);
    for seat in 6..=7 {
        let id = app.hold_ok(&kim, concert, &[seat]).await;
        assert_eq!(app.cancel(&kim, id).await.status(), 200);
        ids.push(id);
    }
    assert_eq!(retention_pass(&app).await.reservations_retired, 5);
    let newest_first: Vec<u64> = ids.iter().rev().copied().collect();
    let listed: Vec<u64> = whole_list(&app, &kim, 3)
        .await
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(
        listed, newest_first,
        "pages of 3, newest first, across memory and tables"
    );
    let (_, first) = list(&app, &kim, "").await;
    assert_eq!(first["items"].as_array().expect("items").len(), 7, "default limit 20");
    assert!(first["nextCursor"].is_null());
    for bad in ["?limit=0", "?limit=101", "?limit=x", "?cursor=abc", "?cursor=-1"] {
        let response = app
            .request(Method::GET, &format!("/api/v1/members/me/reservations{bad}"))
            .bearer_auth(&kim.key)
            .send()
            .await
            .expect("sent");
        assert_problem(response, 400, "VALIDATION_FAILED").await;
    }
    app.stop().await;
}

async fn older_balance_history_is_read_from_the_tables(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let kim = app.register("kim").await;
    for _ in 0..150 {
        assert_eq!(app.charge(&kim, 1).await.status(), 200);
    }
    let history = |query: String| {
        let app = &app;
        let kim = &kim;
        async move {
            app.member_get(kim, &format!("/api/v1/members/me/balance/history{query}"))
                .await
        }
    };
    let mut before = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=40&cursor={c}"),
            None => "?limit=40".to_owned(),
        };
        let page = history(query).await;
        before.push(page.clone());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(
        retention_pass(&app).await.history_trimmed >= 50,
        "entries past the newest 100 leave memory"
    );
    let account_len = app.state.engine.accounts().export()[0].1.history.len();
    assert_eq!(account_len, 100, "memory keeps the newest page");
    let mut after = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=40&cursor={c}"),
            None => "?limit=40".to_owned(),
        };
        let page = history(query).await;
        after.push(page.clone());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(after, before, "every page reads the same, those from the tables too");
    assert_eq!(before.len(), 4);
    assert_eq!(before[3]["items"].as_array().expect("items").len(), 30);
    app.stop().await;
}
