//! Retries converge: a write answered 503 ("outcome unknown") and retried
//! with its `Idempotency-Key` converges on what really happened, never
//! happens twice, and never turns a success into an error. Request bodies
//! that are not JSON objects are refused.

mod common;

use std::time::Duration;

use common::{assert_problem, spawn_app, spawn_app_on, Backend, Member, TestApp};
use concert_server::persistence::Db;
use reqwest::{Method, Response};
use serde_json::{json, Value};

/// Another connection holding the journal's write lock, as a database
/// stalled by a long transaction would.
enum Stall {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::PgConnection),
}

impl Stall {
    async fn start(app: &TestApp) -> Stall {
        match &app.state.db {
            Db::Sqlite(files) => {
                let mut blocker = files.journal.acquire().await.expect("a connection");
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut *blocker)
                    .await
                    .expect("the journal is locked");
                Stall::Sqlite(blocker)
            }
            Db::Postgres(_) => {
                use sqlx::Connection;
                let mut blocker = sqlx::PgConnection::connect(&app.database_url)
                    .await
                    .expect("a connection");
                sqlx::query("BEGIN").execute(&mut blocker).await.expect("begin");
                sqlx::query("LOCK TABLE journal IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut blocker)
                    .await
                    .expect("the journal is locked");
                Stall::Postgres(blocker)
            }
        }
    }

    async fn release(self) {
        match self {
            Stall::Sqlite(mut blocker) => {
                sqlx::query("ROLLBACK").execute(&mut *blocker).await.expect("unlocked");
            }
            Stall::Postgres(mut blocker) => {
                sqlx::query("ROLLBACK").execute(&mut blocker).await.expect("unlocked");
            }
        }
    }
}

/// Sends `send` until it is not a 503 (the database is back), at most 10 s.
async fn retried<F, Fut>(what: &str, mut send: F) -> Response
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    for _ in 0..100 {
        let response = send().await;
        if response.status() != 503 {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: still 503 ten seconds after the stall ended");
}

async fn keyed_charge(app: &TestApp, member: &Member, amount: i64, key: &str) -> Response {
    app.request(Method::POST, "/api/v1/members/me/balance/charges")
        .bearer_auth(&member.key)
        .header("Idempotency-Key", key)
        .json(&json!({ "amount": amount }))
        .send()
        .await
        .expect("request sent")
}

async fn keyed_hold(app: &TestApp, member: &Member, concert: u64, seats: &[i64], key: &str) -> Response {
    app.request(Method::POST, "/api/v1/reservations")
        .header("X-Queue-Token", member.token())
        .header("Idempotency-Key", key)
        .json(&json!({ "concertId": concert, "seatNumbers": seats }))
        .send()
        .await
        .expect("request sent")
}

async fn keyed_cancel(app: &TestApp, member: &Member, reservation: u64, key: &str) -> Response {
    app.request(Method::DELETE, &format!("/api/v1/reservations/{reservation}"))
        .bearer_auth(&member.key)
        .header("Idempotency-Key", key)
        .send()
        .await
        .expect("request sent")
}

async fn balance(app: &TestApp, member: &Member) -> i64 {
    app.member_get(member, "/api/v1/members/me/balance").await["balance"]
        .as_i64()
        .expect("a balance")
}

async fn a_charge_retried_after_a_503_is_credited_once(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let kim = app.register("kim").await;

    let stall = Stall::start(&app).await;
    let during = keyed_charge(&app, &kim, 7_000, "charge-1").await;
    assert_problem(during, 503, "UNAVAILABLE").await;
    stall.release().await;

    let retry = retried("the charge's retry", || keyed_charge(&app, &kim, 7_000, "charge-1")).await;
    assert_eq!(retry.status(), 200, "the retry learns the charge happened");
    let body: Value = retry.json().await.expect("json");
    assert_eq!(body["balance"], 7_000, "the retry answers the charge's own result");
    assert_eq!(balance(&app, &kim).await, 7_000, "charged once, not twice");
    let history = app.member_get(&kim, "/api/v1/members/me/balance/history").await;
    assert_eq!(
        history["items"].as_array().map(Vec::len),
        Some(1),
        "one CHARGE in the history: {history}"
    );
}

async fn a_payment_retried_after_a_503_replays_its_receipt(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let concert = app.create_concert("IU", 10, 5_000).await;
    let kim = app.active_member("kim", 20_000).await;
    let reservation = app.hold_ok(&kim, concert, &[3]).await;

    let stall = Stall::start(&app).await;
    let during = app.pay(&kim, reservation, Some("pay-1")).await;
    assert_problem(during, 503, "UNAVAILABLE").await;
    stall.release().await;

    let retry = retried("the payment's retry", || app.pay(&kim, reservation, Some("pay-1"))).await;
    assert_eq!(
        retry.status(),
        201,
        "a payment that happened is never turned into an error (the token it expired must not matter)"
    );
    let receipt: Value = retry.json().await.expect("json");
    assert_eq!(receipt["reservationId"], reservation);
    assert_eq!(receipt["balance"], 15_000, "the payment's own balance");
    assert_eq!(balance(&app, &kim).await, 15_000, "debited once");
    let again = app.pay(&kim, reservation, Some("pay-1")).await;
    let replayed: Value = again.json().await.expect("json");
    assert_eq!(replayed, receipt, "every later replay gives the same receipt");
    let reservation: Value = app.reservation(&kim, reservation).await.json().await.expect("json");
    assert_eq!(reservation["status"], "CONFIRMED");
}

async fn a_hold_and_a_cancel_retried_after_a_503_happen_once(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let concert = app.create_concert("IU", 10, 5_000).await;
    let kim = app.active_member("kim", 0).await;

    let stall = Stall::start(&app).await;
    let during = keyed_hold(&app, &kim, concert, &[1, 2], "hold-1").await;
    assert_problem(during, 503, "UNAVAILABLE").await;
    stall.release().await;

    let retry = retried("the hold's retry", || {
        keyed_hold(&app, &kim, concert, &[1, 2], "hold-1")
    })
    .await;
    assert_eq!(retry.status(), 201, "the retry learns the hold was made");
    let held: Value = retry.json().await.expect("json");
    let id = held["id"].as_u64().expect("reservation id");
    let mine = app.member_get(&kim, "/api/v1/members/me/reservations").await;
    assert_eq!(
        mine["items"].as_array().map(Vec::len),
        Some(1),
        "one reservation, listed: {mine}"
    );
    let seats: Value = app
        .seats(kim.token(), concert, Some("HELD"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(seats["seats"].as_array().map(Vec::len), Some(2), "two seats held once");

    let stall = Stall::start(&app).await;
    let during = keyed_cancel(&app, &kim, id, "cancel-1").await;
    assert_problem(during, 503, "UNAVAILABLE").await;
    stall.release().await;
    let retry = retried("the cancel's retry", || keyed_cancel(&app, &kim, id, "cancel-1")).await;
    assert_eq!(
        retry.status(),
        200,
        "a cancel that happened is not a 409 RESERVATION_NOT_PENDING on retry"
    );
    let cancelled: Value = retry.json().await.expect("json");
    assert_eq!(cancelled["status"], "CANCELLED");
}

async fn a_refusal_is_replayed_and_the_key_survives_a_restart(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let concert = app.create_concert("IU", 10, 5_000).await;
    let kim = app.active_member("kim", 1_000).await;
    let reservation = app.hold_ok(&kim, concert, &[4]).await;
    let short = app.pay(&kim, reservation, Some("pay-short")).await;
    let first = assert_problem(short, 402, "INSUFFICIENT_BALANCE").await;
    assert_eq!(app.charge(&kim, 10_000).await.status(), 200, "the member tops up");
    let again = app.pay(&kim, reservation, Some("pay-short")).await;
    let replayed = assert_problem(again, 402, "INSUFFICIENT_BALANCE").await;
    assert_eq!(replayed, first, "the key replays its first outcome, not a new payment");

    let charged = keyed_charge(&app, &kim, 500, "charge-r").await;
    assert_eq!(charged.status(), 200);
    app.stop().await;
    let restarted = common::spawn_app_at(&app.database_url, |_| {}).await;
    let replay = keyed_charge(&restarted, &kim, 500, "charge-r").await;
    assert_eq!(replay.status(), 200, "the record survives a restart");
    assert_eq!(
        balance(&restarted, &kim).await,
        11_500,
        "the replay after a restart credits nothing more"
    );
}

on_every_backend!(
    a_charge_retried_after_a_503_is_credited_once,
    a_payment_retried_after_a_503_replays_its_receipt,
    a_hold_and_a_cancel_retried_after_a_503_happen_once,
    a_refusal_is_replayed_and_the_key_survives_a_restart,
);

#[actix_web::test]
async fn a_body_that_is_not_a_json_object_is_a_400_everywhere() {
    let app = spawn_app(|_| {}).await;
    let concert = app.create_concert("IU", 10, 5_000).await;
    let kim = app.active_member("kim", 10_000).await;
    let reservation = app.hold_ok(&kim, concert, &[1]).await;
    for body in [
        json!([100]),
        json!("100"),
        json!(100),
        json!([reservation]),
        json!(null),
    ] {
        let sends = [
            (
                "charge",
                app.request(Method::POST, "/api/v1/members/me/balance/charges")
                    .bearer_auth(&kim.key),
            ),
            ("register", app.request(Method::POST, "/api/v1/members")),
            (
                "hold",
                app.request(Method::POST, "/api/v1/reservations")
                    .header("X-Queue-Token", kim.token()),
            ),
            (
                "pay",
                app.request(Method::POST, "/api/v1/payments")
                    .header("X-Queue-Token", kim.token()),
            ),
            (
                "create a concert",
                app.request(Method::POST, "/api/v1/admin/concerts")
                    .header("X-Admin-Key", common::ADMIN_KEY),
            ),
        ];
        for (what, request) in sends {
            let response = request.json(&body).send().await.expect("request sent");
            assert_eq!(
                response.status(),
                400,
                "{what} with the body {body} is refused, not read as a positional struct"
            );
            assert_problem(response, 400, "VALIDATION_FAILED").await;
        }
    }
    assert_eq!(balance(&app, &kim).await, 10_000, "nothing was charged");
    let still: Value = app.reservation(&kim, reservation).await.json().await.expect("json");
    assert_eq!(still["status"], "PENDING_PAYMENT", "nothing was paid");
}
