//! Black-box tests of the HTTP API against the contract: the happy path of
//! every endpoint, every error code, tables of bad inputs, races.

mod common;

on_every_backend!(
    a_whole_purchase_works_end_to_end,
    the_catalog_lists_pages_and_dates,
    the_queue_admits_fifo_under_the_cap,
    an_unpaid_hold_expires_and_cannot_be_paid,
    five_hundred_concurrent_holds_on_one_seat_have_one_winner,
    every_conflict_and_payment_error_code,
    credentials_are_checked,
    idempotency_keys_replay_and_conflict,
    bad_inputs_are_400_problems,
    transport_errors_are_problems_too,
    a_charge_past_the_balance_ceiling_is_refused,
    an_unreachable_engine_is_503_with_retry_after,
    operations_endpoints_answer,
    the_served_seat_map_follows_every_change,
);

use common::{assert_problem, spawn_app_on, Backend, ADMIN_KEY, DAY_MS};
use concert_actors::concert_actor::ExpireHolds;
use reqwest::Method;
use serde_json::{json, Value};

async fn a_whole_purchase_works_end_to_end(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let concert = app.create_concert("IU", 50, 50_000).await;
    let mut kim = app.register("kim").await;

    let charged: Value = app.charge(&kim, 150_000).await.json().await.expect("json");
    assert_eq!(charged["balance"], 150_000, "the charge shows the new balance");

    let (status, token) = app.issue_token(&mut kim).await;
    assert_eq!(status, 201, "a new token is created");
    assert_eq!(token["status"], "WAITING", "admission happens only at ticks");
    assert_eq!(token["position"], 1);
    app.tick().await;
    let status: Value = app.queue_status(kim.token()).await.json().await.expect("json");
    assert_eq!(status["status"], "ACTIVE", "a tick admits the token");
    assert_eq!(status["position"], 0);
    assert!(status["activeUntil"].is_string(), "ACTIVE tokens say until when");

    let seats: Value = app
        .seats(kim.token(), concert, Some("AVAILABLE"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        seats["seats"].as_array().map(Vec::len),
        Some(50),
        "all 50 seats are available"
    );

    let reservation = app.hold_ok(&kim, concert, &[15, 16]).await;
    let held: Value = app.reservation(&kim, reservation).await.json().await.expect("json");
    assert_eq!(held["status"], "PENDING_PAYMENT");
    assert_eq!(held["amount"], 100_000);
    assert_eq!(held["seatNumbers"], json!([15, 16]));
    assert_eq!(held["concertTitle"], "IU");

    let payment = app.pay(&kim, reservation, None).await;
    assert_eq!(payment.status(), 201, "payment succeeds");
    let payment: Value = payment.json().await.expect("json");
    assert_eq!(payment["status"], "COMPLETED");
    assert_eq!(payment["balance"], 50_000, "the balance was debited");

    let status: Value = app.queue_status(kim.token()).await.json().await.expect("json");
    assert_eq!(status["status"], "EXPIRED", "paying expires the token");
    let sold: Value = app.reservation(&kim, reservation).await.json().await.expect("json");
    assert_eq!(sold["status"], "CONFIRMED");

    let history: Value = app.member_get(&kim, "/api/v1/members/me/balance/history").await;
    assert_eq!(history["items"][0]["kind"], "PAYMENT", "newest first");
    assert_eq!(history["items"][0]["amount"], -100_000, "payments are negative");
    assert_eq!(history["items"][1]["kind"], "CHARGE");
    assert_eq!(history["nextCursor"], Value::Null);

    let mine: Value = app.member_get(&kim, "/api/v1/members/me/reservations").await;
    assert_eq!(mine["items"][0]["id"], reservation);

    let me: Value = app.member_get(&kim, "/api/v1/members/me").await;
    assert_eq!(me["name"], "kim");
    assert_eq!(me["balance"], 50_000);

    let concert_view: Value = app
        .get(&format!("/api/v1/concerts/{concert}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(concert_view["availableSeats"], 48, "sold seats are not available");
}

async fn the_catalog_lists_pages_and_dates(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let a = app.create_concert("IU", 2, 1_000).await;
    let b = app.create_concert("BTS", 2, 1_000).await;
    let c = app.create_concert("IU", 1, 1_000).await;

    let first: Value = app.get("/api/v1/concerts?limit=2").await.json().await.expect("json");
    let ids: Vec<u64> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, vec![a, b], "same start time: ties by id");
    let cursor = first["nextCursor"].as_str().expect("a next page").to_owned();
    let second: Value = app
        .get(&format!("/api/v1/concerts?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(second["items"][0]["id"], c, "the next page continues without repeating");
    assert_eq!(second["nextCursor"], Value::Null);

    let iu: Value = app.get("/api/v1/concerts?title=IU").await.json().await.expect("json");
    assert_eq!(iu["items"].as_array().map(Vec::len), Some(2), "title filters exactly");
    let far: Value = app
        .get("/api/v1/concerts?from=2999-01-01")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        far["items"].as_array().map(Vec::len),
        Some(0),
        "nothing starts after 2999"
    );

    // Sell out concert c: it disappears from the available dates.
    let buyer = app.active_member("buyer", 10_000).await;
    app.hold_ok(&buyer, c, &[1]).await;
    let dates: Value = app
        .get("/api/v1/concerts/dates?title=IU")
        .await
        .json()
        .await
        .expect("json");
    let items = dates["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "a concert with no AVAILABLE seat is not listed");
    assert_eq!(items[0]["concertId"], a);
    assert!(
        items[0]["date"].as_str().is_some_and(|d| d.len() == 10),
        "date is YYYY-MM-DD"
    );
}

async fn the_queue_admits_fifo_under_the_cap(backend: Backend) {
    let app = spawn_app_on(backend, |s| {
        s.queue_admit_per_tick = 1;
        s.queue_max_active = 2;
    })
    .await;
    let concert = app.create_concert("IU", 10, 1_000).await;
    let mut members = Vec::new();
    for name in ["a", "b", "c"] {
        let mut m = app.register(name).await;
        app.issue_token(&mut m).await;
        members.push(m);
    }
    let waiting = app.seats(members[2].token(), concert, None).await;
    let problem = assert_problem(waiting, 403, "TOKEN_NOT_ACTIVE").await;
    assert_eq!(problem["position"], 3, "the third in line is told its position");

    let (again, body) = app.issue_token(&mut members[0]).await;
    assert_eq!(again, 200, "asking again returns the live token");
    assert_eq!(body["position"], 1);

    app.tick().await;
    assert_eq!(
        status_of(&app, &members[0]).await,
        "ACTIVE",
        "the first is admitted first"
    );
    assert_eq!(status_of(&app, &members[1]).await, "WAITING", "one per tick");
    app.tick().await;
    app.tick().await;
    assert_eq!(status_of(&app, &members[1]).await, "ACTIVE");
    assert_eq!(
        status_of(&app, &members[2]).await,
        "WAITING",
        "the cap of 2 ACTIVE holds"
    );
    assert_eq!(app.seats(members[0].token(), concert, None).await.status(), 200);
}

async fn status_of(app: &common::TestApp, member: &common::Member) -> Value {
    let body: Value = app.queue_status(member.token()).await.json().await.expect("json");
    body["status"].clone()
}

async fn an_unpaid_hold_expires_and_cannot_be_paid(backend: Backend) {
    let app = spawn_app_on(backend, |s| s.hold_timeout = std::time::Duration::from_secs(60)).await;
    let concert = app.create_concert("IU", 10, 1_000).await;
    let kim = app.active_member("kim", 10_000).await;
    let late = app.hold_ok(&kim, concert, &[1]).await;
    let swept = app.hold_ok(&kim, concert, &[2]).await;
    app.advance(60_000);

    let problem = assert_problem(app.pay(&kim, late, None).await, 409, "HOLD_EXPIRED").await;
    assert!(problem["detail"].is_string());
    app.state
        .engine
        .router()
        .send(concert, ExpireHolds)
        .await
        .expect("actor answers");
    let swept: Value = app.reservation(&kim, swept).await.json().await.expect("json");
    assert_eq!(swept["status"], "EXPIRED", "the expiry tick released the hold");
    let seats: Value = app
        .seats(kim.token(), concert, Some("AVAILABLE"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        seats["seats"].as_array().map(Vec::len),
        Some(10),
        "expired seats are available again"
    );
    assert_problem(app.pay(&kim, late, None).await, 409, "HOLD_EXPIRED").await;
}

async fn five_hundred_concurrent_holds_on_one_seat_have_one_winner(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let concert = app.create_concert("IU", 10, 1_000).await;
    let mut members = Vec::new();
    for i in 0..500 {
        let mut m = app.register(&format!("fan{i}")).await;
        app.issue_token(&mut m).await;
        members.push(m);
    }
    app.tick().await;
    let holds = members.iter().map(|m| app.hold(m, concert, &[7]));
    let statuses: Vec<u16> = futures_util::future::join_all(holds)
        .await
        .into_iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "exactly one hold wins"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 409).count(),
        499,
        "every other gets 409"
    );
    assert!(statuses.iter().all(|&s| s < 500), "no 5xx under contention");
}

async fn every_conflict_and_payment_error_code(backend: Backend) {
    let app = spawn_app_on(backend, |s| s.max_seats_per_member = 2).await;
    let concert = app.create_concert("IU", 10, 30_000).await;
    let kim = app.active_member("kim", 40_000).await;
    let lee = app.active_member("lee", 0).await;

    let r1 = app.hold_ok(&kim, concert, &[1]).await;
    assert_problem(app.hold(&lee, concert, &[1, 2]).await, 409, "SEAT_UNAVAILABLE").await;
    assert_eq!(
        app.hold(&lee, concert, &[2]).await.status(),
        201,
        "a refused hold held nothing: seat 2 is still free"
    );
    app.hold_ok(&kim, concert, &[3]).await;
    assert_problem(app.hold(&kim, concert, &[4]).await, 409, "TICKET_LIMIT").await;

    assert_problem(app.pay(&lee, r1, None).await, 403, "FORBIDDEN").await;
    let lee_r = app.hold_ok(&lee, concert, &[5]).await;
    assert_problem(app.pay(&lee, lee_r, None).await, 402, "INSUFFICIENT_BALANCE").await;
    let still: Value = app.reservation(&lee, lee_r).await.json().await.expect("json");
    assert_eq!(
        still["status"], "PENDING_PAYMENT",
        "an insufficient balance leaves the hold pending"
    );

    let cancelled: Value = app.cancel(&kim, r1).await.json().await.expect("json");
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_problem(app.cancel(&kim, r1).await, 409, "RESERVATION_NOT_PENDING").await;
    assert_problem(app.pay(&kim, r1, None).await, 409, "RESERVATION_NOT_PENDING").await;
    assert_eq!(
        app.hold(&kim, concert, &[1]).await.status(),
        201,
        "cancelled seats are free at once"
    );

    assert_problem(app.pay(&kim, 9_999, None).await, 404, "NOT_FOUND").await;
    assert_problem(app.hold(&kim, concert, &[11]).await, 404, "NOT_FOUND").await;
    assert_problem(app.hold(&kim, 9_999, &[1]).await, 404, "NOT_FOUND").await;
    assert_problem(app.get("/api/v1/concerts/9999").await, 404, "NOT_FOUND").await;
    assert_problem(app.get("/api/v1/nowhere").await, 404, "NOT_FOUND").await;
    assert_problem(app.reservation(&kim, 9_999).await, 404, "NOT_FOUND").await;
    assert_problem(
        app.request(Method::PUT, "/api/v1/payments").send().await.expect("sent"),
        405,
        "METHOD_NOT_ALLOWED",
    )
    .await;

    // Sales close when the concert starts.
    let soon_body = json!({"title": "Soon", "category": "rock", "venue": "Hall",
        "startsAt": app.rfc3339_in(60_000), "seatCount": 5, "price": 1});
    let soon: Value = app
        .request(Method::POST, "/api/v1/admin/concerts")
        .header("X-Admin-Key", ADMIN_KEY)
        .json(&soon_body)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    app.advance(61_000);
    let newcomer = app.active_member("new", 0).await;
    assert_problem(
        app.hold(&newcomer, soon["id"].as_u64().expect("id"), &[1]).await,
        409,
        "SALES_CLOSED",
    )
    .await;
}

async fn credentials_are_checked(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let concert = app.create_concert("IU", 10, 1_000).await;
    let kim = app.active_member("kim", 10_000).await;
    let reservation = app.hold_ok(&kim, concert, &[1]).await;

    assert_problem(app.get("/api/v1/members/me").await, 401, "UNAUTHENTICATED").await;
    // The real key with its last hex digit changed (never to itself).
    let last = if kim.key.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &kim.key[..kim.key.len() - 1]);
    assert_ne!(forged, kim.key, "the forged key differs from the real one");
    let wrong = app
        .request(Method::GET, "/api/v1/members/me")
        .bearer_auth(forged)
        .send()
        .await
        .expect("sent");
    assert_problem(wrong, 401, "UNAUTHENTICATED").await;
    assert_problem(
        app.get(&format!("/api/v1/reservations/{reservation}")).await,
        401,
        "UNAUTHENTICATED",
    )
    .await;

    assert_problem(
        app.get(&format!("/api/v1/concerts/{concert}/seats")).await,
        401,
        "TOKEN_INVALID",
    )
    .await;
    assert_problem(
        app.seats("00000000000000000000000000000000", concert, None).await,
        401,
        "TOKEN_INVALID",
    )
    .await;
    assert_problem(app.seats("not-a-token", concert, None).await, 401, "TOKEN_INVALID").await;
    // Well-formed (48 hex digits) but never issued: slot 0, generation 0, secret 0.
    assert_problem(app.seats(&"0".repeat(48), concert, None).await, 401, "TOKEN_INVALID").await;
    let forged_token = {
        let real = kim.token();
        let last = if real.ends_with('0') { '1' } else { '0' };
        format!("{}{last}", &real[..real.len() - 1])
    };
    assert_problem(app.queue_status(&forged_token).await, 401, "TOKEN_INVALID").await;
    assert_problem(
        app.queue_status("00000000000000000000000000000000").await,
        401,
        "TOKEN_INVALID",
    )
    .await;

    let by_token = app
        .request(Method::GET, &format!("/api/v1/reservations/{reservation}"))
        .header("X-Queue-Token", kim.token())
        .send()
        .await
        .expect("sent");
    assert_eq!(by_token.status(), 200, "the owner's queue token also works");
    let lee = app.active_member("lee", 0).await;
    assert_problem(app.reservation(&lee, reservation).await, 403, "FORBIDDEN").await;
    assert_problem(app.cancel(&lee, reservation).await, 403, "FORBIDDEN").await;

    let body = json!({"title": "X", "category": "pop", "venue": "V", "startsAt": app.rfc3339_in(DAY_MS), "seatCount": 1, "price": 1});
    let no_key = app.post_json("/api/v1/admin/concerts", &body).await;
    assert_problem(no_key, 403, "FORBIDDEN").await;
    let bad_key = app
        .request(Method::POST, "/api/v1/admin/concerts")
        .header("X-Admin-Key", "wrong-key-wrong-key")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_problem(bad_key, 403, "FORBIDDEN").await;

    // After payment the token is EXPIRED: gated endpoints refuse it.
    app.pay(&kim, reservation, None).await;
    assert_problem(app.seats(kim.token(), concert, None).await, 401, "TOKEN_INVALID").await;
}

async fn idempotency_keys_replay_and_conflict(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let concert = app.create_concert("IU", 10, 1_000).await;
    let kim = app.active_member("kim", 0).await;
    let charge = |amount: i64, key: &'static str| {
        app.request(Method::POST, "/api/v1/members/me/balance/charges")
            .bearer_auth(&kim.key)
            .header("Idempotency-Key", key)
            .json(&json!({ "amount": amount }))
            .send()
    };
    let first: Value = charge(5_000, "c-1").await.expect("sent").json().await.expect("json");
    let repeat: Value = charge(5_000, "c-1").await.expect("sent").json().await.expect("json");
    assert_eq!(first, repeat, "a repeat returns the first response");
    assert_eq!(first["balance"], 5_000, "and charges once");
    assert_problem(charge(6_000, "c-1").await.expect("sent"), 409, "IDEMPOTENCY_CONFLICT").await;

    let reservation = app.hold_ok(&kim, concert, &[1]).await;
    let paid = app.pay(&kim, reservation, Some("p-1")).await;
    assert_eq!(paid.status(), 201);
    let paid: Value = paid.json().await.expect("json");
    let replay = app.pay(&kim, reservation, Some("p-1")).await;
    assert_eq!(replay.status(), 201, "a replay works with the now EXPIRED token");
    assert_eq!(replay.json::<Value>().await.expect("json"), paid, "same body");
    let balance: Value = app.member_get(&kim, "/api/v1/members/me/balance").await;
    assert_eq!(balance["balance"], 4_000, "paid once");
}

async fn bad_inputs_are_400_problems(backend: Backend) {
    let app = spawn_app_on(backend, |s| s.max_charge = 1_000_000).await;
    let concert = app.create_concert("IU", 10, 1_000).await;
    let kim = app.active_member("kim", 0).await;
    let raw = |method: Method, path: &str, body: &str| {
        let mut request = app
            .request(method, path)
            .header("content-type", "application/json")
            .body(body.to_owned());
        request = request.bearer_auth(&kim.key).header("X-Queue-Token", kim.token());
        request.send()
    };
    let cases: Vec<(Method, String, &str, &str)> = vec![
        (Method::POST, "/api/v1/members".into(), "{", "malformed JSON"),
        (Method::POST, "/api/v1/members".into(), r#"{"name": 5}"#, "wrong type"),
        (Method::POST, "/api/v1/members".into(), "{}", "missing field"),
        (
            Method::POST,
            "/api/v1/members".into(),
            r#"{"name": "   "}"#,
            "blank name",
        ),
        (
            Method::POST,
            "/api/v1/members".into(),
            &*Box::leak(format!(r#"{{"name": "{}"}}"#, "x".repeat(65)).into_boxed_str()),
            "name too long",
        ),
        (
            Method::POST,
            "/api/v1/members/me/balance/charges".into(),
            r#"{"amount": 0}"#,
            "zero amount",
        ),
        (
            Method::POST,
            "/api/v1/members/me/balance/charges".into(),
            r#"{"amount": 1000001}"#,
            "above max charge",
        ),
        (
            Method::POST,
            "/api/v1/members/me/balance/charges".into(),
            r#"{"amount": 1.5}"#,
            "fractional amount",
        ),
        (
            Method::POST,
            "/api/v1/members/me/balance/charges".into(),
            r#"{"amount": "100"}"#,
            "amount as string",
        ),
        (
            Method::POST,
            "/api/v1/reservations".into(),
            &*Box::leak(format!(r#"{{"concertId": {concert}, "seatNumbers": []}}"#).into_boxed_str()),
            "empty seat list",
        ),
        (
            Method::POST,
            "/api/v1/reservations".into(),
            &*Box::leak(format!(r#"{{"concertId": {concert}, "seatNumbers": [1, 1]}}"#).into_boxed_str()),
            "duplicate seats",
        ),
        (
            Method::POST,
            "/api/v1/reservations".into(),
            &*Box::leak(format!(r#"{{"concertId": {concert}, "seatNumbers": [0]}}"#).into_boxed_str()),
            "seat 0",
        ),
        (
            Method::POST,
            "/api/v1/reservations".into(),
            &*Box::leak(format!(r#"{{"concertId": {concert}, "seatNumbers": [1,2,3,4,5]}}"#).into_boxed_str()),
            "too many seats",
        ),
        (
            Method::POST,
            "/api/v1/reservations".into(),
            r#"{"concertId": -1, "seatNumbers": [1]}"#,
            "negative concert id",
        ),
        (
            Method::POST,
            "/api/v1/payments".into(),
            r#"{"reservationId": "x"}"#,
            "reservation id as string",
        ),
        (Method::GET, "/api/v1/concerts/abc".into(), "", "non-numeric path id"),
        (Method::GET, "/api/v1/concerts/0".into(), "", "zero path id"),
        (Method::GET, "/api/v1/reservations/-3".into(), "", "negative path id"),
        (Method::GET, "/api/v1/concerts?from=2026-13-01".into(), "", "bad date"),
        (Method::GET, "/api/v1/concerts?limit=0".into(), "", "limit 0"),
        (Method::GET, "/api/v1/concerts?limit=101".into(), "", "limit 101"),
        (Method::GET, "/api/v1/concerts?cursor=zzz".into(), "", "bad cursor"),
        (Method::GET, "/api/v1/concerts/dates".into(), "", "dates without title"),
        (
            Method::GET,
            format!("/api/v1/concerts/{concert}/seats?status=FREE"),
            "",
            "unknown status",
        ),
        (
            Method::GET,
            "/api/v1/members/me/balance/history?limit=abc".into(),
            "",
            "limit not a number",
        ),
    ];
    for (method, path, body, what) in cases {
        let response = raw(method, &path, body).await.expect("sent");
        let status = response.status().as_u16();
        let problem: Value = response.json().await.expect("json");
        assert_eq!(status, 400, "{what}: expected 400, got {status} {problem}");
        assert_eq!(problem["code"], "VALIDATION_FAILED", "{what}");
    }

    let admin = |body: Value| {
        app.request(Method::POST, "/api/v1/admin/concerts")
            .header("X-Admin-Key", ADMIN_KEY)
            .json(&body)
            .send()
    };
    let future = app.rfc3339_in(DAY_MS);
    let valid = json!({"title": "T", "category": "pop", "venue": "V", "startsAt": future, "seatCount": 10, "price": 1});
    let mut bad_concerts = Vec::new();
    for (field, value) in [
        ("title", json!("")),
        ("category", json!("Pop")),
        ("category", json!("a b")),
        ("venue", json!("")),
        ("startsAt", json!("2020-01-01T00:00:00+09:00")),
        ("startsAt", json!("2030-01-01T00:00:00")),
        ("seatCount", json!(0)),
        ("seatCount", json!(100_001)),
        ("price", json!(-1)),
        ("price", json!(10_000_001)),
        ("priceTiers", json!([{"fromSeat": 5, "toSeat": 4, "price": 1}])),
        ("priceTiers", json!([{"fromSeat": 1, "toSeat": 11, "price": 1}])),
        (
            "priceTiers",
            json!([{"fromSeat": 1, "toSeat": 5, "price": 1}, {"fromSeat": 5, "toSeat": 6, "price": 1}]),
        ),
    ] {
        let mut body = valid.clone();
        body[field] = value.clone();
        bad_concerts.push((field, value, body));
    }
    for (field, value, body) in bad_concerts {
        let response = admin(body).await.expect("sent");
        assert_eq!(
            response.status(),
            400,
            "admin concert with {field} = {value} is refused"
        );
    }
    assert_eq!(
        admin(valid).await.expect("sent").status(),
        201,
        "the valid concert is accepted"
    );
}

async fn transport_errors_are_problems_too(backend: Backend) {
    let app = spawn_app_on(backend, |s| s.max_body_bytes = 1024).await;
    let huge = json!({ "name": "x".repeat(5_000) });
    assert_problem(app.post_json("/api/v1/members", &huge).await, 413, "PAYLOAD_TOO_LARGE").await;
    let text = app
        .request(Method::POST, "/api/v1/members")
        .header("content-type", "text/plain")
        .body(r#"{"name":"kim"}"#)
        .send()
        .await
        .expect("sent");
    assert_problem(text, 415, "UNSUPPORTED_MEDIA_TYPE").await;
    let kim = app.register("kim").await;
    let balance_ceiling = app.charge(&kim, 10_000_000).await;
    assert_eq!(balance_ceiling.status(), 200);
}

async fn a_charge_past_the_balance_ceiling_is_refused(backend: Backend) {
    let app = spawn_app_on(backend, |s| s.max_balance = 100_000).await;
    let kim = app.register("kim").await;
    assert_eq!(
        app.charge(&kim, 100_000).await.status(),
        200,
        "up to the ceiling is fine"
    );
    assert_problem(app.charge(&kim, 1).await, 400, "VALIDATION_FAILED").await;
}

async fn an_unreachable_engine_is_503_with_retry_after(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let concert = app.create_concert("IU", 10, 1_000).await;
    let kim = app.active_member("kim", 0).await;
    app.state.engine.shutdown();
    let response = app.hold(&kim, concert, &[1]).await;
    assert!(response.headers().contains_key("retry-after"), "503 says when to retry");
    assert_problem(response, 503, "UNAVAILABLE").await;
}

/// The value of an unlabelled gauge in a Prometheus text exposition.
fn gauge_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

async fn operations_endpoints_answer(backend: Backend) {
    let app = spawn_app_on(backend, |_| {}).await;
    let named = app
        .request(reqwest::Method::GET, "/health")
        .header("X-Request-Id", "lb-7f3a")
        .send()
        .await
        .expect("request sent");
    assert_eq!(
        named.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
        Some("lb-7f3a"),
        "a caller's request id is echoed"
    );
    let unnamed = app.get("/api/v1/concerts/999").await;
    let generated = unnamed
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(
        generated.len(),
        32,
        "a request without an id gets one (32 hex digits), errors too"
    );
    assert_eq!(app.get("/health").await.status(), 200);
    assert_eq!(app.get("/ready").await.status(), 200, "ready once started");
    let kim = app.register("kim").await;
    app.charge(&kim, 1).await;
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(metrics.contains("http_requests_total"), "HTTP request counters");
    assert!(metrics.contains("http_request_duration_seconds"), "latency histograms");
    assert!(metrics.contains("queue_waiting_tokens"), "queue gauges");
    assert!(metrics.contains("holds_live"), "hold gauges");
    assert!(metrics.contains("journal_backlog_events"), "persistence gauges");
    for total in [
        "queue_tokens_issued_total",
        "queue_tokens_admitted_total",
        "queue_tokens_expired_total",
        "holds_created_total",
        "holds_expired_total",
        "holds_cancelled_total",
        "payments_completed_total",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {total} counter")),
            "{total} is exposed as a Prometheus counter, not a gauge"
        );
    }
    // The charge is durable in the journal; with nothing else to do the
    // flusher projects it into the tables, and the lag gauge says so.
    let mut lag = gauge_value(&metrics, "journal_projection_lag_events");
    for _ in 0..100 {
        if lag == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let metrics = app.get("/metrics").await.text().await.expect("text");
        lag = gauge_value(&metrics, "journal_projection_lag_events");
    }
    assert_eq!(lag, Some(0.0), "the tables catch up with the journal when idle");
    let spec: Value = app.get("/api-docs/openapi.json").await.json().await.expect("json");
    assert!(
        spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1"
    );
    for path in [
        "/api/v1/members",
        "/api/v1/members/me",
        "/api/v1/members/me/balance",
        "/api/v1/members/me/balance/charges",
        "/api/v1/members/me/balance/history",
        "/api/v1/members/me/reservations",
        "/api/v1/queue/tokens",
        "/api/v1/queue/status",
        "/api/v1/concerts",
        "/api/v1/concerts/dates",
        "/api/v1/concerts/{id}",
        "/api/v1/concerts/{id}/seats",
        "/api/v1/reservations",
        "/api/v1/reservations/{id}",
        "/api/v1/payments",
        "/api/v1/admin/concerts",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(spec["paths"][path].is_object(), "the spec documents {path}");
    }
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status(), 200, "Swagger UI is served");
    assert!(
        docs.text().await.expect("html").contains("swagger"),
        "from vendored assets"
    );
}

/// `(number, status)` of every seat in the served map (optionally filtered).
async fn seat_map(app: &common::TestApp, token: &str, concert: u64, status: Option<&str>) -> Vec<(u64, String)> {
    let response = app.seats(token, concert, status).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["seats"]
        .as_array()
        .expect("a seats array")
        .iter()
        .map(|seat| {
            (
                seat["number"].as_u64().expect("a number"),
                seat["status"].as_str().expect("a status").to_owned(),
            )
        })
        .collect()
}

/// Statuses of seats 1..=4, read twice in a row: the second read is served
/// from the seat-map cache, and must equal the first.
async fn statuses(app: &common::TestApp, token: &str, concert: u64) -> Vec<String> {
    let first = seat_map(app, token, concert, None).await;
    let again = seat_map(app, token, concert, None).await;
    assert_eq!(first, again, "a repeated read serves the same map");
    first.into_iter().map(|(_, status)| status).collect()
}

/// The encoded seat map is cached per concert version: a hold, a cancel, an
/// expiry and a payment must each change what is served next, for the
/// unfiltered map and for the filtered ones.
async fn the_served_seat_map_follows_every_change(backend: Backend) {
    let app = spawn_app_on(backend, |s| s.hold_timeout = std::time::Duration::from_secs(60)).await;
    let concert = app.create_concert("IU", 4, 1_000).await;
    let other = app.create_concert("BTS", 4, 1_000).await;
    let kim = app.active_member("kim", 10_000).await;
    let token = kim.token().to_owned();
    let all = |s: &str| vec![s.to_owned(); 4];
    assert_eq!(statuses(&app, &token, concert).await, all("AVAILABLE"));
    assert_eq!(seat_map(&app, &token, concert, Some("HELD")).await, vec![]);
    assert_eq!(statuses(&app, &token, other).await, all("AVAILABLE"));

    // A hold.
    let cancelled = app.hold_ok(&kim, concert, &[1]).await;
    assert_eq!(
        statuses(&app, &token, concert).await,
        ["HELD", "AVAILABLE", "AVAILABLE", "AVAILABLE"]
    );
    assert_eq!(
        seat_map(&app, &token, concert, Some("HELD")).await,
        vec![(1, "HELD".to_owned())]
    );
    assert_eq!(seat_map(&app, &token, concert, Some("AVAILABLE")).await.len(), 3);
    assert_eq!(
        statuses(&app, &token, other).await,
        all("AVAILABLE"),
        "another concert's map is not touched"
    );

    // A cancel.
    assert_eq!(app.cancel(&kim, cancelled).await.status(), 200);
    assert_eq!(statuses(&app, &token, concert).await, all("AVAILABLE"));
    assert_eq!(seat_map(&app, &token, concert, Some("HELD")).await, vec![]);

    // An expiry (by the actor's sweep, not by a request).
    app.hold_ok(&kim, concert, &[2]).await;
    assert_eq!(seat_map(&app, &token, concert, Some("AVAILABLE")).await.len(), 3);
    app.advance(60_000);
    app.state
        .engine
        .router()
        .send(concert, ExpireHolds)
        .await
        .expect("actor answers");
    assert_eq!(statuses(&app, &token, concert).await, all("AVAILABLE"));
    assert_eq!(seat_map(&app, &token, concert, Some("AVAILABLE")).await.len(), 4);

    // A payment (HELD -> SOLD leaves the count of AVAILABLE seats as it was).
    let paid = app.hold_ok(&kim, concert, &[3]).await;
    assert_eq!(
        statuses(&app, &token, concert).await,
        ["AVAILABLE", "AVAILABLE", "HELD", "AVAILABLE"]
    );
    assert_eq!(seat_map(&app, &token, concert, Some("SOLD")).await, vec![]);
    // The payment expires the token: read the maps with another member's.
    let lee = app.active_member("lee", 0).await;
    assert_eq!(app.pay(&kim, paid, None).await.status(), 201);
    assert_eq!(
        statuses(&app, lee.token(), concert).await,
        ["AVAILABLE", "AVAILABLE", "SOLD", "AVAILABLE"]
    );
    assert_eq!(
        seat_map(&app, lee.token(), concert, Some("SOLD")).await,
        vec![(3, "SOLD".to_owned())]
    );
    assert_eq!(seat_map(&app, lee.token(), concert, Some("HELD")).await, vec![]);
}
