//! The tests are hermetic to the environment of whoever runs `cargo test`:
//! a shell holding `CONCERT_DURABILITY=async`, a production `DATABASE_URL`
//! or any other server variable changes nothing they start. Checked by
//! running this test binary again as a child whose environment holds a
//! bogus value of each, from its start (no `set_var` in a running,
//! multi-threaded test process), in which every way the tests start a
//! server must still work:
//!
//! - `test_settings` (so every in-process test app) starts from
//!   `Settings::defaults`, which reads no variable;
//! - `common::server_command` (the server binary as a child, as
//!   tests/failures.rs starts it) removes them;
//! - the drill's server launcher (tests/drill.rs, the `drill` binary)
//!   removes them: one short kill -9 round passes.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{server_command, spawn_app, test_settings, ADMIN_KEY};
use concert_drill::{DatabaseKind, DrillConfig};
use concert_server::settings::{Durability, LogFormat, Settings};

const TEST: &str = "servers_started_by_tests_ignore_the_callers_server_variables";
/// Set in the child: run the checks instead of starting a child.
const CHILD: &str = "TEST_ENVIRONMENT_CHILD";
/// The child's environment: each value would stop, or change, a server that
/// read it.
const BOGUS: [(&str, &str); 9] = [
    ("DATABASE_URL", "postgres://nobody@192.0.2.1:1/not_this_one"),
    ("CONCERT_ADDR", "not-an-address"),
    ("CONCERT_DURABILITY", "bogus"),
    ("CONCERT_HOLD_TIMEOUT", "0s"),
    ("CONCERT_ADMIN_KEY", "short"),
    ("CONCERT_MAX_BODY_BYTES", "1"),
    ("CONCERT_DEMO_DATA", "maybe"),
    ("CONCERT_LOG_FORMAT", "xml"),
    ("CONCERT_SNAPSHOT_INTERVAL", "0s"),
];
/// What the child prints once every check has passed.
const PASSED: &str = "every server ignored the bogus environment";

#[test]
fn servers_started_by_tests_ignore_the_callers_server_variables() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .envs(BOGUS)
        .output()
        .expect("the child runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the child's checks pass:\n{printed}");
    assert!(printed.contains(PASSED), "the child ran its checks:\n{printed}");
}

/// Written past the test harness's capture.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn child() {
    // The environment is the bogus one, and a server reading it would not start.
    for (name, value) in BOGUS {
        assert_eq!(std::env::var(name).as_deref(), Ok(value), "{name} is set in the child");
    }
    assert!(
        Settings::try_parse_from(["concert-server"]).is_err(),
        "the server's own parsing reads these variables and refuses them"
    );

    // In-process apps: the settings are the defaults plus the test's own.
    let settings = test_settings("sqlite::memory:");
    assert_eq!(settings.durability, Durability::Sync);
    assert_eq!(settings.hold_timeout, Duration::from_secs(300));
    assert_eq!(settings.max_body_bytes, 65_536);
    assert_eq!(settings.log_format, LogFormat::Pretty);
    assert_eq!(settings.snapshot_interval, Duration::from_secs(60));
    settings.validate().expect("valid settings");
    actix_web::rt::System::new().block_on(async {
        let app = spawn_app(|_| {}).await;
        let member = app.register("kim").await;
        assert!(member.id >= 1, "a write succeeds");
        app.stop().await;
    });
    say("in-process app: ok");

    // The server binary, started as tests/failures.rs starts it.
    let database_url = actix_web::rt::System::new().block_on(common::Backend::Sqlite.fresh_database_url());
    let mut server = ServerChild::start(&database_url);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(server.ready());
    runtime.block_on(server.writes());
    drop(server);
    say("server binary: ok");

    // The drill's launcher: one kill -9 round.
    let mut config = DrillConfig::new(
        PathBuf::from(env!("CARGO_BIN_EXE_concert-server")),
        DatabaseKind::Sqlite,
        0x5EED_0E17,
    );
    config.load = Duration::from_millis(300)..=Duration::from_millis(400);
    let summary = runtime.block_on(concert_drill::run(&config, 1, say));
    let failures: Vec<String> = summary.reports.iter().flat_map(|report| report.lines(1)).collect();
    assert_eq!(summary.failed, 0, "the drill's round passes:\n{}", failures.join("\n"));
    say("drill round: ok");

    say(PASSED);
}

/// The server binary on a free port, killed when dropped.
struct ServerChild {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl ServerChild {
    fn start(database_url: &str) -> Self {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = server_command()
            .env("DATABASE_URL", database_url)
            .env("CONCERT_ADDR", format!("127.0.0.1:{port}"))
            .env("CONCERT_ADMIN_KEY", ADMIN_KEY)
            .env("CONCERT_DEMO_DATA", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server binary starts");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }

    /// Until `GET /ready` is 200 (30 s at most); the server must not exit.
    async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("the child is checked") {
                panic!("the server exited ({status}) before it was ready: did it read the bogus environment?");
            }
            let ready = self.client.get(format!("{}/ready", self.base)).send().await;
            if ready.is_ok_and(|response| response.status() == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "the server is ready within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A registration, and an admin call with the key the test set (not
    /// the environment's), are accepted.
    async fn writes(&self) {
        let registered = self
            .client
            .post(format!("{}/api/v1/members", self.base))
            .json(&serde_json::json!({ "name": "kim" }))
            .send()
            .await
            .expect("answered");
        assert_eq!(registered.status(), 201, "a registration is accepted");
        let starts_at = (chrono::Utc::now() + chrono::TimeDelta::days(30)).to_rfc3339();
        let concert = self
            .client
            .post(format!("{}/api/v1/admin/concerts", self.base))
            .header("X-Admin-Key", ADMIN_KEY)
            .json(&serde_json::json!({
                "title": "IU", "category": "k-pop", "venue": "Hall",
                "startsAt": starts_at, "seatCount": 10, "price": 1_000,
            }))
            .send()
            .await
            .expect("answered");
        assert_eq!(concert.status(), 201, "the test's admin key is the server's");
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
