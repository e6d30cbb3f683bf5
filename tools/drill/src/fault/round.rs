//! One fault round: start the server, load it with clients that retry
//! unknown outcomes with their keys, inject the fault, probe that writes
//! come back without a restart, let the load run on a little, stop it, then
//! check everything twice: on the live server, and after a `kill -9` and a
//! restart on the same database (so what was acknowledged during and after
//! the fault is also durable).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use super::super::client::{now_ms, Api};
use super::super::database::ScratchDatabase;
use super::super::ledger::{Ledger, LoadStats};
use super::super::load::{self, LoadPolicy};
use super::super::server::{free_port, ServerProcess, ServerSpec};
use super::super::{join_load, retry, verify, DrillConfig, RoundReport, Violation, MAX_USERS, SHUTDOWN_TIMEOUT};
use super::{checks, inject, Environment};

/// Once the fault is over, a fresh write must succeed within this (the
/// server retries a failed batch with backoff up to 1 s; PostgreSQL
/// reconnects; a shared 2-core machine adds its share).
pub const RESUME_BOUND: Duration = Duration::from_secs(15);
/// The load runs on this long after writes resumed, so that writes
/// acknowledged after the fault are checked too.
const LOAD_AFTER_FAULT: Duration = Duration::from_secs(1);
/// The virtual users may still be retrying when told to stop.
const JOIN_TIMEOUT: Duration = Duration::from_secs(45);

/// Which pass of the checks a violation comes from.
const LIVE: &str = "live, after the fault";
const RESTARTED: &str = "after kill -9 and a restart";

pub(super) async fn drive(
    config: &DrillConfig,
    rng: &mut StdRng,
    dir: &Path,
    database: &ScratchDatabase,
    env: &Environment,
    report: &mut RoundReport,
) {
    let tag = format!("{}-{:08x}", report.round, rng.random::<u32>());
    let port = match free_port() {
        Ok(port) => port,
        Err(err) => return report.fail("setup", err),
    };
    let spec = ServerSpec {
        binary: config.server_binary.clone(),
        port,
        database_url: database.url.clone(),
        hold_timeout: config.hold_timeout,
        extra_env: config.server_env.clone(),
    };
    let api = match Api::new(port) {
        Ok(api) => api,
        Err(err) => return report.fail("setup", err),
    };
    let mut server = match ServerProcess::start(&spec, &dir.join("server-1.log"), &api, config.ready_timeout).await {
        Ok(server) => server,
        Err(err) => return report.fail("setup", format!("the server did not start: {err}")),
    };
    let ledger = Arc::new(Ledger::default());
    if let Err(err) = load::create_concerts(&api, &ledger, rng, &tag).await {
        return report.fail("setup", err);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let fault_started = Arc::new(AtomicBool::new(false));
    let users = config.users.clamp(1, MAX_USERS);
    let seed = rng.random();
    let mut tasks = load::start(
        api.clone(),
        ledger.clone(),
        stop.clone(),
        users,
        LoadPolicy::fault(fault_started.clone()),
        seed,
        tag.clone(),
    );
    tokio::time::sleep(report.load).await;

    let before = ledger.snapshot().stats;
    fault_started.store(true, Ordering::Release);
    match inject::inject(config.fault, database, env, config.fault_duration, report.round).await {
        Ok(line) => report.notes.push(format!("fault: {line}")),
        Err(err) => report.fail("fault", format!("the fault could not be injected: {err}")),
    }
    match checks::writes_resume(&api, &tag, RESUME_BOUND).await {
        Ok(took) => report.notes.push(format!(
            "writes resumed {} ms after the fault ended, without a restart",
            took.as_millis()
        )),
        Err(err) => report.fail("writes-resume", format!("{err}; {}", server.log_tail())),
    }
    let during = ledger.snapshot().stats;
    report.notes.push(bite(&before, &during));
    match checks::ready_again(&api, RESUME_BOUND).await {
        Ok(took) => report
            .notes
            .push(format!("GET /ready was 200 again {} ms later", took.as_millis())),
        Err(err) => report.fail("ready-resume", format!("{err}; {}", server.log_tail())),
    }
    tokio::time::sleep(LOAD_AFTER_FAULT).await;
    stop.store(true, Ordering::Release);
    join_load(&mut tasks, JOIN_TIMEOUT.max(retry::RETRY_BUDGET), report).await;
    let stopped_ms = now_ms();
    let recorded = ledger.snapshot();
    report.recorded = recorded.summary();
    report.violations.extend(recorded.violations.iter().cloned());

    let facts = Arc::new(verify::Facts {
        recorded: recorded.clone(),
        kill_ms: stopped_ms,
        ready_ms: now_ms(),
        hold_timeout: config.hold_timeout,
        tag: tag.clone(),
    });
    check_pass(&api, facts, LIVE, report).await;

    let killed = server.kill9();
    let kill_ms = now_ms();
    drop(server);
    if let Err(err) = killed {
        report.fail("server-crash", err);
    }
    let api = match Api::new(port) {
        Ok(api) => api,
        Err(err) => return report.fail("setup", err),
    };
    let mut server = match ServerProcess::start(&spec, &dir.join("server-2.log"), &api, config.ready_timeout).await {
        Ok(server) => server,
        Err(err) => {
            return report.fail(
                "restart",
                format!("the server did not come back on the same database after the fault: {err}"),
            )
        }
    };
    let facts = Arc::new(verify::Facts {
        recorded,
        kill_ms,
        ready_ms: now_ms(),
        hold_timeout: config.hold_timeout,
        tag,
    });
    check_pass(&api, facts, RESTARTED, report).await;
    match server.terminate(SHUTDOWN_TIMEOUT).await {
        Ok(status) if status.success() => {}
        Ok(status) => report.fail(
            "graceful-shutdown",
            format!(
                "after SIGTERM the server exited with {status}, not 0; {}",
                server.log_tail()
            ),
        ),
        Err(err) => report.fail("graceful-shutdown", err),
    }
}

/// The recovery checks and the fault checks, each violation marked with `pass`.
async fn check_pass(api: &Api, facts: Arc<verify::Facts>, pass: &str, report: &mut RoundReport) {
    let recorded = facts.recorded.clone();
    let (mut violations, coverage) = verify::verify(api, facts).await;
    let tally = checks::check_members(api, &recorded, &mut violations).await;
    report.violations.extend(
        violations
            .into_iter()
            .map(|v| Violation::new(v.check, format!("[{pass}] {}", v.detail))),
    );
    if !report.coverage.is_empty() {
        report.coverage.push_str(&format!("\n    {pass}: "));
    } else {
        report.coverage.push_str(&format!("{pass}: "));
    }
    report
        .coverage
        .push_str(&format!("{}; {}", coverage.summary(), tally.summary()));
}

/// Whether the fault showed in the answers: the unknown outcomes (503s and
/// unanswered requests) while it lasted.
fn bite(before: &LoadStats, during: &LoadStats) -> String {
    let count_503 = |stats: &LoadStats| stats.refusals.get("503 UNAVAILABLE").copied().unwrap_or(0);
    let unknown_503 = count_503(during).saturating_sub(count_503(before));
    let unanswered = during.in_doubt.saturating_sub(before.in_doubt);
    let requests = during.requests.saturating_sub(before.requests);
    if unknown_503 + unanswered == 0 {
        return format!(
            "the fault did not show: none of the {requests} requests during it got a 503 or went unanswered"
        );
    }
    let by_request: Vec<String> = during
        .unknown
        .iter()
        .filter_map(|(what, n)| {
            let new = n.saturating_sub(before.unknown.get(what).copied().unwrap_or(0));
            (new > 0).then(|| format!("{what} x{new}"))
        })
        .collect();
    format!(
        "during the fault (until writes resumed) {requests} requests: {unknown_503} answered 503, {unanswered} \
         unanswered ({})",
        by_request.join(", ")
    )
}
