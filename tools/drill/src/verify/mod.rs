//! The checks after the restart, each failure a named [`Violation`] with a
//! message precise enough to find the member, reservation or seat.
//!
//! Order matters: queue tokens first (ticks keep admitting WAITING tokens),
//! then everything acknowledged (members, charges, holds, payments, cancels,
//! idempotent replays, money), then — once every hold's deadline has passed —
//! the quiescent state (no pending hold, seat maps against CONFIRMED
//! reservations), and last the id probes, which write.
//!
//! Layout: this file (the facts, the coverage, the order of the checks) ->
//! [`queue`] (tokens, concerts, right after the restart) -> [`members`]
//! (everything each member was told) -> [`quiet`] (once every hold's
//! deadline has passed: pending holds, seat maps, id probes).

mod members;
mod queue;
mod quiet;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::client::{now_ms, u64_at, Api};
use super::ledger::Recorded;
use super::Violation;
use members::durable_member;
use queue::{check_concerts, check_queue};
use quiet::{check_seats, final_member, probe_ids, register_probe};

/// Members checked at once.
const CONCURRENCY: usize = 16;
/// `CONCERT_MAX_BALANCE`'s default (the drill does not change it).
const MAX_BALANCE: i64 = 1_000_000_000;
/// A hold must be released by its deadline + one expiry tick; the drill
/// checks one second after the last possible deadline.
const EXPIRY_SLACK_MS: i64 = 1_000;
/// A token seen ACTIVE this shortly before the kill may have been admitted by
/// a tick whose write was not committed yet (admission is not a client write);
/// unless the member also got a hold acknowledged, its `activeUntil` is not
/// held against the server.
const ACTIVE_GRACE_MS: i64 = 250;
/// Polls of the verifier's own token (the queue ticks every 100 ms).
const MAX_PROBE_POLLS: u32 = 125;
const PROBE_POLL: Duration = Duration::from_millis(40);

/// What the checks know: the ledger and the crash's timing.
#[derive(Debug, Clone)]
pub struct Facts {
    pub recorded: Recorded,
    /// When the server was dead (Unix ms, after `kill -9` was reaped).
    pub kill_ms: i64,
    /// When the restarted server answered `/ready` 200.
    pub ready_ms: i64,
    pub hold_timeout: Duration,
    /// The round's tag, in the names of what the checks create.
    pub tag: String,
}

impl Facts {
    /// Every hold was created before the kill, so it expires by
    /// `kill + hold timeout`; one created while the server was down cannot exist.
    fn expiry_deadline_ms(&self) -> i64 {
        let hold_timeout_ms = i64::try_from(self.hold_timeout.as_millis()).unwrap_or(i64::MAX / 4);
        (self.kill_ms + hold_timeout_ms).max(self.ready_ms) + EXPIRY_SLACK_MS
    }

    fn max_member_id(&self) -> Option<u64> {
        self.recorded.members.iter().map(|m| m.id).max()
    }

    fn max_concert_id(&self) -> Option<u64> {
        self.recorded.concerts.iter().map(|c| c.id).max()
    }

    fn max_reservation_id(&self) -> Option<u64> {
        self.recorded.members.iter().flat_map(|m| &m.holds).map(|h| h.id).max()
    }

    fn max_payment_id(&self) -> Option<u64> {
        self.recorded
            .members
            .iter()
            .flat_map(|m| &m.holds)
            .filter_map(|h| h.paid().and_then(|body| u64_at(body, "paymentId")))
            .max()
    }
}

/// How much each check actually looked at, so that a pass is not vacuous.
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    members: usize,
    charges: usize,
    holds: usize,
    payments: usize,
    cancels: usize,
    replays: usize,
    pending_after_restart: usize,
    tokens: usize,
    active_until: usize,
    waiting_after_restart: usize,
    sold_seats: usize,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        self.members += other.members;
        self.charges += other.charges;
        self.holds += other.holds;
        self.payments += other.payments;
        self.cancels += other.cancels;
        self.replays += other.replays;
        self.pending_after_restart += other.pending_after_restart;
    }

    /// One line for the round's report.
    pub fn summary(&self) -> String {
        format!(
            "checked {} members, {} charges, {} holds ({} still pending at the restart), {} payments, \
             {} cancels, {} idempotent replays, {} queue tokens ({} activeUntil, {} watcher tokens still \
             WAITING after the restart), {} SOLD seats",
            self.members,
            self.charges,
            self.holds,
            self.pending_after_restart,
            self.payments,
            self.cancels,
            self.replays,
            self.tokens,
            self.active_until,
            self.waiting_after_restart,
            self.sold_seats
        )
    }
}

/// Runs every check against the restarted server.
pub async fn verify(api: &Api, facts: Arc<Facts>) -> (Vec<Violation>, Coverage) {
    let mut out = Vec::new();
    let mut coverage = Coverage::default();
    check_queue(api, &facts, &mut out, &mut coverage).await;
    let live_concerts = check_concerts(api, &facts, &mut out).await;
    let mut authenticated = Vec::new();
    let all: Vec<usize> = (0..facts.recorded.members.len()).collect();
    for (index, (violations, ok, covered)) in for_members(api, &facts, &all, durable_member, &mut out).await {
        out.extend(violations);
        coverage.add(&covered);
        if ok {
            authenticated.push(index);
        }
    }
    let probe = register_probe(api, &facts, &mut out).await;
    let deadline_ms = facts.expiry_deadline_ms();
    let wait_ms = (deadline_ms - now_ms()).clamp(0, 120_000);
    tokio::time::sleep(Duration::from_millis(wait_ms.unsigned_abs())).await;
    let mut confirmed = Vec::new();
    for (_, (violations, mine)) in for_members(api, &facts, &authenticated, final_member, &mut out).await {
        out.extend(violations);
        confirmed.extend(mine);
    }
    if let Some(probe) = probe {
        check_seats(api, &live_concerts, &probe, &confirmed, &mut out, &mut coverage).await;
        probe_ids(api, &facts, &probe, &mut out).await;
    }
    if api.broken() {
        out.push(Violation::new(
            "verify",
            "the restarted server stopped answering; the remaining checks were skipped",
        ));
    }
    (out, coverage)
}

/// Runs `check` for the members at `indices`, [`CONCURRENCY`] at a time.
async fn for_members<T, F, Fut>(
    api: &Api,
    facts: &Arc<Facts>,
    indices: &[usize],
    check: F,
    out: &mut Vec<Violation>,
) -> Vec<(usize, T)>
where
    T: Send + 'static,
    F: Fn(Api, Arc<Facts>, usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let mut results = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(CONCURRENCY) {
        if api.broken() {
            break;
        }
        let mut tasks = JoinSet::new();
        for &index in chunk {
            let run = check(api.clone(), facts.clone(), index);
            tasks.spawn(async move { (index, run.await) });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(result) => results.push(result),
                Err(err) => out.push(Violation::new("drill", format!("a check task failed: {err}"))),
            }
        }
    }
    results.sort_by_key(|(index, _)| *index);
    results
}
