//! The web pages the server serves itself (src/routes/pages.rs): content
//! types and cache headers, the waiting room's first-paint budget, the
//! dashboard's stats endpoint and the queue's suggested poll interval.
//! (The pages' behaviour is tested in a real browser: tests/browser/.)

mod common;

use common::{spawn_app, ADMIN_KEY};
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::Method;
use serde_json::Value;

/// Everything the waiting room needs before it can paint: the HTML and the
/// stylesheet and scripts it names (uncompressed: the server does not
/// compress, so this is what is transferred, headers aside).
const FIRST_PAINT_BUDGET: usize = 100 * 1024;

/// `/assets/...` URLs named by `src="..."` or `href="..."` in `html`.
fn asset_urls(html: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for piece in html.split(attr).skip(1) {
            let url = piece.split('"').next().unwrap_or_default();
            if url.starts_with("/assets/") {
                urls.push(url.to_owned());
            }
        }
    }
    urls
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[actix_web::test]
async fn the_pages_and_assets_have_their_types_and_cache_headers() {
    let app = spawn_app(|_| {}).await;
    for page in ["/", "/admin"] {
        let response = app.get(page).await;
        assert_eq!(response.status(), 200, "{page} is served");
        assert_eq!(header(&response, CONTENT_TYPE), "text/html; charset=utf-8", "{page}");
        assert_eq!(header(&response, CACHE_CONTROL), "no-cache", "{page} is revalidated");
        assert_eq!(header(&response, "x-content-type-options".parse().unwrap()), "nosniff");
        assert!(
            header(&response, "content-security-policy".parse().unwrap()).contains("script-src 'self'"),
            "{page} runs only its own scripts"
        );
        let etag = header(&response, ETAG);
        let html = response.text().await.expect("text");
        assert!(!html.contains("{{"), "{page}: every placeholder is filled");
        assert!(
            html.contains("\"maxSeatsPerReservation\":4"),
            "{page} carries the limits"
        );

        let again = app
            .request(Method::GET, page)
            .header(IF_NONE_MATCH, &etag)
            .send()
            .await
            .expect("sent");
        assert_eq!(again.status(), 304, "{page}: an unchanged page is not sent again");

        let urls = asset_urls(&html);
        assert!(urls.len() >= 3, "{page} names its stylesheet and scripts: {urls:?}");
        for url in urls {
            let response = app.get(&url).await;
            assert_eq!(response.status(), 200, "{url}");
            let expected = if url.ends_with(".css") {
                "text/css; charset=utf-8"
            } else {
                "text/javascript; charset=utf-8"
            };
            assert_eq!(header(&response, CONTENT_TYPE), expected, "{url}");
            assert_eq!(
                header(&response, CACHE_CONTROL),
                "public, max-age=31536000, immutable",
                "{url}: hashed names are cached for good"
            );
        }
    }

    let plain = app.get("/assets/app.js").await;
    assert_eq!(plain.status(), 200, "the plain name answers too");
    assert_eq!(header(&plain, CACHE_CONTROL), "no-cache", "but is revalidated");

    let head = app.request(Method::HEAD, "/").send().await.expect("sent");
    assert_eq!(head.status(), 200, "HEAD answers like GET");

    for (method, path, status) in [
        (Method::GET, "/assets/nothing.js", 404),
        (Method::GET, "/assets/app.0000000000.js", 404),
        (Method::POST, "/", 405),
        (Method::DELETE, "/assets/app.js", 405),
    ] {
        let response = app.request(method.clone(), path).send().await.expect("sent");
        assert_eq!(response.status(), status, "{method} {path}");
        assert_eq!(
            header(&response, CONTENT_TYPE),
            "application/problem+json",
            "{method} {path}"
        );
    }
    assert_eq!(
        app.get("/api/v1/nothing").await.status(),
        404,
        "the API's 404 is untouched"
    );
}

#[actix_web::test]
async fn the_waiting_room_paints_within_100_kb() {
    let app = spawn_app(|_| {}).await;
    let html = app.get("/").await.text().await.expect("text");
    let mut total = html.len();
    let mut parts = vec![format!("/ {}", html.len())];
    for url in asset_urls(&html) {
        let bytes = app.get(&url).await.bytes().await.expect("body").len();
        parts.push(format!("{url} {bytes}"));
        total += bytes;
    }
    assert!(
        total <= FIRST_PAINT_BUDGET,
        "first paint is {total} bytes, over {FIRST_PAINT_BUDGET}: {parts:?}"
    );
}

#[actix_web::test]
async fn the_dashboard_stats_need_the_admin_key_and_follow_the_sale() {
    let app = spawn_app(|_| {}).await;
    let concert = app.create_concert("IU", 10, 50_000).await;

    let denied = app.get("/api/v1/admin/stats").await;
    assert_eq!(denied.status(), 403, "no admin key");
    let wrong = app
        .request(Method::GET, "/api/v1/admin/stats")
        .header("X-Admin-Key", "wrong")
        .send()
        .await
        .expect("sent");
    assert_eq!(wrong.status(), 403, "a wrong admin key");
    let post = app
        .request(Method::POST, "/api/v1/admin/stats")
        .header("X-Admin-Key", ADMIN_KEY)
        .send()
        .await
        .expect("sent");
    assert_eq!(post.status(), 405);

    let stats = |app: &common::TestApp| {
        let request = app
            .request(Method::GET, "/api/v1/admin/stats")
            .header("X-Admin-Key", ADMIN_KEY);
        async move {
            let response = request.send().await.expect("sent");
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.expect("json")
        }
    };
    let before = stats(&app).await;
    assert_eq!(before["queue"]["maxActive"], 1000);
    assert_eq!(before["database"]["healthy"], true);
    assert_eq!(before["concerts"][0]["id"], concert);
    assert_eq!(before["concerts"][0]["soldSeats"], 0);
    assert_eq!(before["payments"]["completedTotal"], 0);

    let kim = app.active_member("kim", 200_000).await;
    let held = app.hold_ok(&kim, concert, &[1, 2]).await;
    let mid = stats(&app).await;
    assert_eq!(mid["queue"]["admittedTotal"], 1);
    assert_eq!(mid["queue"]["active"], 1);
    assert_eq!(mid["holds"]["live"], 1);
    assert_eq!(mid["concerts"][0]["heldSeats"], 2);
    assert_eq!(mid["concerts"][0]["availableSeats"], 8);

    assert_eq!(app.pay(&kim, held, None).await.status(), 201);
    let after = stats(&app).await;
    assert_eq!(after["payments"]["completedTotal"], 1);
    assert_eq!(after["concerts"][0]["soldSeats"], 2);
    assert_eq!(after["concerts"][0]["heldSeats"], 0);
    assert!(after["atMs"].as_i64() >= before["atMs"].as_i64());

    let spec: Value = app.get("/api-docs/openapi.json").await.json().await.expect("json");
    assert!(
        spec["paths"]["/api/v1/admin/stats"]["get"].is_object(),
        "the stats endpoint is in the OpenAPI document"
    );
    assert!(spec["components"]["schemas"]["StatsResponse"].is_object());
}

#[actix_web::test]
async fn a_waiting_token_is_told_when_to_poll_again() {
    let app = spawn_app(|_| {}).await;
    let mut kim = app.register("kim").await;
    let (status, issued) = app.issue_token(&mut kim).await;
    assert_eq!(status, 201);
    assert_eq!(issued["status"], "WAITING");
    assert_eq!(
        issued["pollAfterSeconds"], 30,
        "a tick an hour away: poll at the slowest rate"
    );

    let waiting: Value = app.queue_status(kim.token()).await.json().await.expect("json");
    assert_eq!(waiting["status"], "WAITING");
    assert!(waiting["pollAfterSeconds"]
        .as_u64()
        .is_some_and(|s| (1..=30).contains(&s)));

    app.tick().await;
    let active: Value = app.queue_status(kim.token()).await.json().await.expect("json");
    assert_eq!(active["status"], "ACTIVE");
    assert!(active.get("pollAfterSeconds").is_none(), "only a WAITING token is told");
}
