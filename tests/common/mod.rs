//! Test harness: spawns the real application on port 0 with its own state
//! and a manual clock, plus one helper per endpoint.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use concert_actors::clock::{Clock, ManualClock, SystemClock};
use concert_server::settings::Settings;
use concert_server::startup::Application;
use concert_server::state::AppState;
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{json, Value};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;

pub struct TestApp {
    pub database_url: String,
    pub base: String,
    pub client: Client,
    pub state: web::Data<AppState>,
    pub clock: Arc<ManualClock>,
    server: actix_web::dev::ServerHandle,
    /// `run_until_stopped`, until [`TestApp::stop`] waits for it.
    running: std::sync::Mutex<Option<actix_web::rt::task::JoinHandle<std::io::Result<()>>>>,
}

/// A member with a key and, once asked for, a queue token.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: u64,
    pub key: String,
    pub token: Option<String>,
}

impl Member {
    pub fn token(&self) -> &str {
        self.token.as_deref().expect("the member has a queue token")
    }
}

/// Where a test app keeps its data.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// A fresh database on the server of `TEST_POSTGRES_URL`.
    Postgres(String),
}

impl Backend {
    /// PostgreSQL when `TEST_POSTGRES_URL` is set.
    pub fn postgres() -> Option<Backend> {
        std::env::var("TEST_POSTGRES_URL").ok().map(Backend::Postgres)
    }

    /// A `DATABASE_URL` naming a database nobody else uses.
    ///
    /// Its name starts with its creation time (`concert-test-<unix
    /// seconds>-<random>` folders, `concert_test_<unix seconds>_<random>`
    /// databases): the tests leave their databases behind (a test's server
    /// still runs when its body returns), and the first database a test
    /// process creates removes the ones older than [`LEFTOVER_AGE`], so
    /// repeated runs on one machine do not pile them up.
    pub async fn fresh_database_url(&self) -> String {
        let (created, random) = (unix_secs(), rand::random::<u64>());
        match self {
            Backend::Sqlite => {
                if !SQLITE_LEFTOVERS_REMOVED.swap(true, Ordering::Relaxed) {
                    remove_leftover_folders();
                }
                let path = std::env::temp_dir().join(format!("{SQLITE_PREFIX}{created}-{random:016x}/concert.db"));
                format!("sqlite://{}", path.display())
            }
            Backend::Postgres(admin_url) => {
                use sqlx::Connection;
                let mut admin = sqlx::PgConnection::connect(admin_url)
                    .await
                    .expect("TEST_POSTGRES_URL accepts connections");
                if !POSTGRES_LEFTOVERS_REMOVED.swap(true, Ordering::Relaxed) {
                    drop_leftover_databases(&mut admin).await;
                }
                let name = format!("{POSTGRES_PREFIX}{created}_{random:016x}");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("a fresh test database is created");
                let (base, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
                let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
                if query.is_empty() {
                    format!("{server}/{name}")
                } else {
                    format!("{server}/{name}?{query}")
                }
            }
        }
    }
}

/// Test databases older than this are left over from earlier runs (a test
/// takes seconds, a whole run minutes).
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);
const SQLITE_PREFIX: &str = "concert-test-";
const POSTGRES_PREFIX: &str = "concert_test_";
static SQLITE_LEFTOVERS_REMOVED: AtomicBool = AtomicBool::new(false);
static POSTGRES_LEFTOVERS_REMOVED: AtomicBool = AtomicBool::new(false);

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Whether a test database whose name continues with `rest` after its
/// prefix (`<unix seconds>` then `-` or `_` and a random part) was created
/// more than [`LEFTOVER_AGE`] ago. Names without a creation time (an older
/// harness's) are kept: their age is unknown.
fn left_over(rest: &str) -> bool {
    let created = rest
        .split_once(['-', '_'])
        .and_then(|(secs, _)| secs.parse::<u64>().ok());
    created.is_some_and(|created| unix_secs().saturating_sub(created) > LEFTOVER_AGE.as_secs())
}

/// Removes the SQLite test folders of earlier runs (best effort).
fn remove_leftover_folders() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.strip_prefix(SQLITE_PREFIX).is_some_and(left_over) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Drops the PostgreSQL test databases of earlier runs (best effort: a
/// concurrent test process may drop the same one first).
async fn drop_leftover_databases(admin: &mut sqlx::PgConnection) {
    let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
        .bind(POSTGRES_PREFIX)
        .fetch_all(&mut *admin)
        .await
        .unwrap_or_default();
    for name in names {
        if name.strip_prefix(POSTGRES_PREFIX).is_some_and(left_over) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
        }
    }
}

/// Runs a test body on SQLite, and on PostgreSQL when `TEST_POSTGRES_URL` is set.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[actix_web::test]
                async fn sqlite() {
                    super::$name($crate::common::Backend::Sqlite).await
                }

                #[actix_web::test]
                async fn postgres() {
                    match $crate::common::Backend::postgres() {
                        Some(backend) => super::$name(backend).await,
                        None => eprintln!("skipped: TEST_POSTGRES_URL not set"),
                    }
                }
            }
        )*
    };
}

/// Spawns the app on SQLite.
pub async fn spawn_app(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(Backend::Sqlite, configure).await
}

/// Spawns the app on a fresh database of `backend`. Queue admission only
/// happens when a test calls [`TestApp::tick`] (the timer tick is an hour).
pub async fn spawn_app_on(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let database_url = backend.fresh_database_url().await;
    spawn_app_at(&database_url, configure).await
}

/// The settings every test app starts from: port 0, no demo data, a known
/// admin key, admission only when a test ticks. Logs with `TEST_LOG` set.
/// The rest are the defaults: the environment's `CONCERT_*` variables are
/// not read ([`Settings::defaults`]).
pub fn test_settings(database_url: &str) -> Settings {
    if std::env::var("TEST_LOG").is_ok() {
        concert_server::telemetry::init(concert_server::settings::LogFormat::Pretty);
    }
    let mut settings = Settings::defaults();
    settings.addr = "127.0.0.1:0".parse().expect("valid address");
    settings.admin_key = Some(ADMIN_KEY.to_owned());
    settings.demo_data = false;
    settings.queue_tick = Duration::from_secs(3600);
    settings.queue_admit_per_tick = 1000;
    settings.queue_max_active = 1000;
    settings.database_url = database_url.to_owned();
    settings
}

/// The `concert-server` binary as a child process of a test, with none of
/// the server's variables (`CONCERT_*`, `DATABASE_URL`) of whoever runs
/// `cargo test`: a shell holding `CONCERT_DURABILITY=async` or a real
/// `DATABASE_URL` must not change what a test checks. The test sets what
/// it needs.
pub fn server_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_concert-server"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_server_variable) {
            command.env_remove(name);
        }
    }
    command
}

/// A variable the server reads as a setting (`src/settings.rs`).
pub fn is_server_variable(name: &str) -> bool {
    name.starts_with("CONCERT_") || name == "DATABASE_URL"
}

/// Spawns the app on an existing database (restart tests).
pub async fn spawn_app_at(database_url: &str, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(database_url);
    configure(&mut settings);
    let clock = ManualClock::new(SystemClock.now_ms());
    let app = Application::build_with_clock(settings, clock.clone())
        .await
        .expect("the app builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    let server = app.handle();
    let running = actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        database_url: database_url.to_owned(),
        base,
        client: Client::new(),
        state,
        clock,
        server,
        running: std::sync::Mutex::new(Some(running)),
    }
}

impl TestApp {
    /// Stops the server as SIGTERM would and waits until it has let the
    /// database go (one server per database: a restart on the same
    /// database needs the first one stopped).
    pub async fn stop(&self) {
        self.server.stop(true).await;
        let running = self.running.lock().map(|mut running| running.take()).unwrap_or(None);
        if let Some(running) = running {
            let stopped = running.await.expect("the server task ends");
            stopped.expect("the server stops cleanly");
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{}", self.base, path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("request sent")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Runs one queue admission tick now.
    pub async fn tick(&self) {
        self.state.engine.tick_queue().await.expect("the queue actor answers");
    }

    /// Advances the manual clock.
    pub fn advance(&self, ms: i64) {
        self.clock.advance_ms(ms);
    }

    pub fn rfc3339_in(&self, ms_from_now: i64) -> String {
        self.state.format_time(self.clock.now_ms() + ms_from_now)
    }

    pub async fn create_concert(&self, title: &str, seat_count: u32, price: i64) -> u64 {
        let body = json!({
            "title": title, "category": "k-pop", "venue": "Hall",
            "startsAt": self.rfc3339_in(30 * DAY_MS), "seatCount": seat_count, "price": price,
        });
        let response = self
            .request(Method::POST, "/api/v1/admin/concerts")
            .header("X-Admin-Key", ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 201, "the admin creates a concert");
        let concert: Value = response.json().await.expect("json");
        concert["id"].as_u64().expect("an id")
    }

    pub async fn register(&self, name: &str) -> Member {
        let response = self.post_json("/api/v1/members", &json!({ "name": name })).await;
        assert_eq!(response.status(), 201, "registration succeeds");
        let body: Value = response.json().await.expect("json");
        Member {
            id: body["id"].as_u64().expect("id"),
            key: body["memberKey"].as_str().expect("memberKey").to_owned(),
            token: None,
        }
    }

    pub async fn charge(&self, member: &Member, amount: i64) -> Response {
        self.request(Method::POST, "/api/v1/members/me/balance/charges")
            .bearer_auth(&member.key)
            .json(&json!({ "amount": amount }))
            .send()
            .await
            .expect("request sent")
    }

    /// Asks for a token; returns the status and the body.
    pub async fn issue_token(&self, member: &mut Member) -> (u16, Value) {
        let response = self
            .request(Method::POST, "/api/v1/queue/tokens")
            .bearer_auth(&member.key)
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        member.token = body["token"].as_str().map(str::to_owned);
        (status.as_u16(), body)
    }

    /// `GET` a member endpoint with the member's key; the JSON body.
    pub async fn member_get(&self, member: &Member, path: &str) -> Value {
        self.request(Method::GET, path)
            .bearer_auth(&member.key)
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("json body")
    }

    pub async fn queue_status(&self, token: &str) -> Response {
        self.request(Method::GET, "/api/v1/queue/status")
            .header("X-Queue-Token", token)
            .send()
            .await
            .expect("request sent")
    }

    /// A registered member with `balance`, an ACTIVE token.
    pub async fn active_member(&self, name: &str, balance: i64) -> Member {
        let mut member = self.register(name).await;
        if balance > 0 {
            assert_eq!(self.charge(&member, balance).await.status(), 200, "charge succeeds");
        }
        self.issue_token(&mut member).await;
        self.tick().await;
        member
    }

    pub async fn seats(&self, token: &str, concert: u64, status: Option<&str>) -> Response {
        let query = status.map(|s| format!("?status={s}")).unwrap_or_default();
        self.request(Method::GET, &format!("/api/v1/concerts/{concert}/seats{query}"))
            .header("X-Queue-Token", token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn hold(&self, member: &Member, concert: u64, seats: &[i64]) -> Response {
        self.request(Method::POST, "/api/v1/reservations")
            .header("X-Queue-Token", member.token())
            .json(&json!({ "concertId": concert, "seatNumbers": seats }))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn pay(&self, member: &Member, reservation: u64, key: Option<&str>) -> Response {
        let mut request = self
            .request(Method::POST, "/api/v1/payments")
            .header("X-Queue-Token", member.token())
            .json(&json!({ "reservationId": reservation }));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("request sent")
    }

    pub async fn cancel(&self, member: &Member, reservation: u64) -> Response {
        self.request(Method::DELETE, &format!("/api/v1/reservations/{reservation}"))
            .bearer_auth(&member.key)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn reservation(&self, member: &Member, reservation: u64) -> Response {
        self.request(Method::GET, &format!("/api/v1/reservations/{reservation}"))
            .bearer_auth(&member.key)
            .send()
            .await
            .expect("request sent")
    }

    /// Holds and returns the reservation id, asserting 201.
    pub async fn hold_ok(&self, member: &Member, concert: u64, seats: &[i64]) -> u64 {
        let response = self.hold(member, concert, seats).await;
        assert_eq!(response.status(), 201, "the hold succeeds");
        let body: Value = response.json().await.expect("json");
        body["id"].as_u64().expect("reservation id")
    }
}

/// Asserts a problem-JSON error with `status` and `code`; returns the body.
pub async fn assert_problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "expected {status} {code}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "errors are problem JSON, got {content_type}"
    );
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["code"], code, "stable code in {body}");
    assert_eq!(body["status"], status, "status repeated in the body");
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    body
}
