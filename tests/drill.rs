//! The recovery drill (`concert_server::drill`, also the `drill` binary)
//! against the real server binary: two short rounds on SQLite, and two on
//! PostgreSQL when `TEST_POSTGRES_URL` names a loopback server. Each round
//! loads the server, `kill -9`s it, restarts it on the same database and
//! checks that everything acknowledged survived.
//!
//! Run: `cargo test --test drill` (add `-- --nocapture` to see every check's
//! coverage; `TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres`
//! adds PostgreSQL). The round reports go to stderr as they come.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use concert_server::drill::{self, DatabaseKind, DrillConfig};

const ROUNDS: u32 = 2;
/// The rounds share the machine; one drill at a time keeps the timing checks fair.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Short rounds: about half a second of load before each kill.
fn config(database: DatabaseKind, seed: u64) -> DrillConfig {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_concert-server"));
    let mut config = DrillConfig::new(server, database, seed);
    config.load = Duration::from_millis(400)..=Duration::from_millis(600);
    config
}

/// Written to the real stderr, past the test harness's capture.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

async fn drill_passes(database: DatabaseKind, seed: u64) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let summary = drill::run(&config(database, seed), ROUNDS, say).await;
    let failures: Vec<String> = summary
        .reports
        .iter()
        .filter(|report| !report.passed())
        .flat_map(|report| report.lines(ROUNDS))
        .collect();
    assert_eq!(
        summary.failed,
        0,
        "every acknowledged write survives kill -9 and the invariants hold:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_survives_kill_9_under_load() {
    drill_passes(DatabaseKind::Sqlite, 0x5EED_0001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_survives_kill_9_under_load() {
    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        say("skipped: TEST_POSTGRES_URL not set");
        return;
    };
    let database = match DatabaseKind::from_url(Some(&url)) {
        Ok(database) => database,
        Err(err) => panic!("TEST_POSTGRES_URL: {err}"),
    };
    drill_passes(database, 0x5EED_0002).await;
}
