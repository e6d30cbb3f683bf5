//! The recovery drill (`concert_drill`, tools/drill, also its `drill` binary)
//! against the real server binary: two short rounds on SQLite, and two on
//! PostgreSQL when `TEST_POSTGRES_URL` names a loopback server. Each round
//! loads the server, `kill -9`s it, restarts it on the same database and
//! checks that everything acknowledged survived.
//!
//! Then one round of each fault drill (`--fault` of the binary): a 5 s stall
//! of every table (SQLite; PostgreSQL with `TEST_POSTGRES_URL`), a full disk
//! under the SQLite files (needs root to mount a tmpfs, else skipped
//! loudly), killed PostgreSQL connections (`TEST_POSTGRES_URL`), and a
//! restart of a private PostgreSQL instance (`TEST_POSTGRES_URL`, and
//! `initdb` installed; the shared server is never restarted).
//!
//! Run: `cargo test --test drill` (add `-- --nocapture` to see every check's
//! coverage; `TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres`
//! adds PostgreSQL). The round reports go to stderr as they come. The tests
//! take turns (one drill at a time).
//!
//! The drill is a crate of its own (`concert-drill`, a dev-dependency); this
//! test stays with the server's so that `CARGO_BIN_EXE_concert-server` names
//! the server binary cargo has just built from this tree (a test in
//! tools/drill would have to find, or build, one itself).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use concert_drill::fault::{postgres_binaries, tmpfs_available};
use concert_drill::{self as drill, DatabaseKind, DrillConfig, Fault};

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

/// The drill finds the server's SQLite journal file (the stall locks it) by
/// the server's naming rule, restated in the drill so that it does not link
/// the server: the two must agree.
#[test]
fn the_drill_names_the_journal_file_as_the_server_does() {
    for main in [
        "/tmp/round/concert.db",
        "/tmp/round/concert",
        "data/concert.sqlite3",
        "concert.db",
        "/tmp/a.b/c.d.e",
    ] {
        let main = Path::new(main);
        assert_eq!(
            concert_drill::journal_path(main),
            concert_server::persistence::db::journal_path(main),
            "the journal file of {}",
            main.display()
        );
    }
}

// ---------------------------------------------------------------- fault drills

/// `TEST_POSTGRES_URL` as a database, or `None` after saying why the test is skipped.
fn test_postgres(test: &str) -> Option<DatabaseKind> {
    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        say(&format!("SKIPPED {test}: TEST_POSTGRES_URL not set"));
        return None;
    };
    match DatabaseKind::from_url(Some(&url)) {
        Ok(database) => Some(database),
        Err(err) => panic!("TEST_POSTGRES_URL: {err}"),
    }
}

/// One round of `fault`; every check must pass.
async fn fault_round_passes(fault: Fault, database: DatabaseKind, seed: u64) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut config = config(database, seed);
    config.fault = fault;
    let summary = drill::run(&config, 1, say).await;
    let failures: Vec<String> = summary
        .reports
        .iter()
        .filter(|report| !report.passed())
        .flat_map(|report| report.lines(1))
        .collect();
    assert_eq!(
        summary.failed,
        0,
        "fault {fault}: nothing acknowledged is lost, no retried write is applied twice, money is conserved, \
         no seat is sold twice, and writes resume without a restart:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_stall_of_every_table_loses_and_doubles_nothing() {
    fault_round_passes(Fault::Stall, DatabaseKind::Sqlite, 0x5EED_0101).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_on_a_full_disk_loses_and_doubles_nothing() {
    if let Err(why) = tmpfs_available() {
        say(&format!(
            "SKIPPED sqlite_on_a_full_disk_loses_and_doubles_nothing: {why}"
        ));
        return;
    }
    fault_round_passes(Fault::DiskFull, DatabaseKind::Sqlite, 0x5EED_0102).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stall_of_every_table_loses_and_doubles_nothing() {
    let Some(database) = test_postgres("postgres_stall_of_every_table_loses_and_doubles_nothing") else {
        return;
    };
    fault_round_passes(Fault::Stall, database, 0x5EED_0103).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_killed_lose_and_double_nothing() {
    let Some(database) = test_postgres("postgres_connections_killed_lose_and_double_nothing") else {
        return;
    };
    fault_round_passes(Fault::PgTerminate, database, 0x5EED_0104).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_loses_and_doubles_nothing() {
    let test = "postgres_restart_loses_and_doubles_nothing";
    if test_postgres(test).is_none() {
        return;
    }
    if let Err(why) = postgres_binaries() {
        say(&format!(
            "SKIPPED {test}: no private PostgreSQL instance possible: {why}"
        ));
        return;
    }
    // A private instance, not TEST_POSTGRES_URL's server: that one is shared.
    fault_round_passes(Fault::PgRestart, DatabaseKind::Sqlite, 0x5EED_0105).await;
}
