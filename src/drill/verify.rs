//! The checks after the restart, each failure a named [`Violation`] with a
//! message precise enough to find the member, reservation or seat.
//!
//! Order matters: queue tokens first (ticks keep admitting WAITING tokens),
//! then everything acknowledged (members, charges, holds, payments, cancels,
//! idempotent replays, money), then — once every hold's deadline has passed —
//! the quiescent state (no pending hold, seat maps against CONFIRMED
//! reservations), and last the id probes, which write.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::client::{i64_at, now_ms, str_at, time_ms, u64_at, Api, Sent};
use super::ledger::{Attempt, ConcertRec, MemberRec, Recorded, TokenRec};
use super::Violation;

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

// ---------------------------------------------------------------- queue

/// Watcher tokens (issued one after another) are polled latest first: a
/// later token seen ACTIVE means every earlier one is ACTIVE when polled
/// after it, and an earlier WAITING token's position can only be smaller than
/// a later one's seen before. Then every acknowledged token must be known.
async fn check_queue(api: &Api, facts: &Facts, out: &mut Vec<Violation>, coverage: &mut Coverage) {
    let members = &facts.recorded.members;
    let mut watched: Vec<(u32, &MemberRec, &TokenRec)> = members
        .iter()
        .filter_map(|m| {
            let token = m.token.as_ref()?;
            Some((token.issue_seq?, m, token))
        })
        .collect();
    watched.sort_by_key(|(seq, _, _)| std::cmp::Reverse(*seq));
    let mut observed: HashMap<&str, Sent> = HashMap::new();
    let mut later_active: Option<u32> = None;
    let mut later_waiting: Option<(u32, u64)> = None;
    let mut active_until: Vec<(u32, i64, String)> = Vec::new();
    for (seq, member, token) in watched {
        if api.broken() {
            return;
        }
        let sent = api.queue_status(&token.token).await;
        if let Some(reply) = sent.as_ref().ok().filter(|r| r.status == 200) {
            match str_at(&reply.body, "status") {
                Some("WAITING") => {
                    coverage.waiting_after_restart += 1;
                    let position = u64_at(&reply.body, "position").unwrap_or(0);
                    if let Some(later) = later_active {
                        out.push(Violation::new(
                            "queue-order",
                            format!(
                                "watcher token #{seq} ({}) is still WAITING (position {position}) after the \
                                 restart while #{later}, issued after it, is already ACTIVE",
                                member.label()
                            ),
                        ));
                    }
                    match later_waiting {
                        Some((later, later_position)) if later_position <= position => {
                            out.push(Violation::new(
                                "queue-order",
                                format!(
                                    "watcher token #{seq} ({}) is WAITING at position {position} after the \
                                     restart, not ahead of #{later} issued after it (position {later_position})",
                                    member.label()
                                ),
                            ));
                        }
                        Some(_) => later_waiting = Some((seq, position)),
                        None => later_waiting = Some((seq, position)),
                    }
                }
                Some("ACTIVE") => {
                    later_active.get_or_insert(seq);
                    let raw = str_at(&reply.body, "activeUntil").unwrap_or_default();
                    if let Some(until) = time_ms(raw) {
                        active_until.push((seq, until, raw.to_owned()));
                    }
                }
                _ => {}
            }
        }
        observed.insert(token.token.as_str(), sent);
    }
    active_until.sort_by_key(|(seq, _, _)| *seq);
    for pair in active_until.windows(2) {
        let ((a, a_until, a_raw), (b, b_until, b_raw)) = (&pair[0], &pair[1]);
        if a_until > b_until {
            out.push(Violation::new(
                "queue-order",
                format!(
                    "watcher token #{a} is ACTIVE until {a_raw}, later than #{b} issued after it (until \
                     {b_raw}): admission after the restart was not in issue order"
                ),
            ));
        }
    }
    for member in members {
        let Some(token) = &member.token else {
            continue;
        };
        if api.broken() {
            return;
        }
        let sent = match observed.remove(token.token.as_str()) {
            Some(sent) => sent,
            None => api.queue_status(&token.token).await,
        };
        coverage.tokens += 1;
        check_token(member, token, &sent, facts.kill_ms, out, coverage);
    }
}

/// An acknowledged token must still be known; a paid member's is EXPIRED;
/// one seen ACTIVE keeps its `activeUntil`.
fn check_token(
    member: &MemberRec,
    token: &TokenRec,
    sent: &Sent,
    kill_ms: i64,
    out: &mut Vec<Violation>,
    coverage: &mut Coverage,
) {
    let label = member.label();
    let reply = match sent {
        Ok(reply) => reply,
        Err(err) => {
            out.push(Violation::new(
                "verify",
                format!("GET /queue/status for {label}: {err}"),
            ));
            return;
        }
    };
    let issued = format!("the queue token of {label} (acknowledged {})", token.issued_status);
    if reply.status != 200 {
        out.push(Violation::new(
            "queue-token-durable",
            format!(
                "{issued} is unknown after the restart: GET /queue/status answered {}",
                reply.describe()
            ),
        ));
        return;
    }
    let status = str_at(&reply.body, "status").unwrap_or("?");
    if member.payment_acked() {
        if status != "EXPIRED" {
            out.push(Violation::new(
                "payment-durable",
                format!("{label} paid (acknowledged 201) but its queue token is {status} after the restart; a payment expires the token"),
            ));
        }
        return;
    }
    if member.payment_in_doubt() {
        return;
    }
    if status == "EXPIRED" {
        out.push(Violation::new(
            "queue-token-durable",
            format!(
                "{issued} is EXPIRED after the restart, though its member never paid and neither \
                 CONCERT_WAITING_IDLE_TIMEOUT nor CONCERT_TOKEN_TTL has passed"
            ),
        ));
        return;
    }
    let Some(seen) = &token.active else {
        return;
    };
    let strict = kill_ms - seen.seen_ms >= ACTIVE_GRACE_MS || !member.holds.is_empty();
    if strict {
        coverage.active_until += 1;
    }
    let raw = str_at(&reply.body, "activeUntil");
    let kept = status == "ACTIVE" && raw.and_then(time_ms) == Some(seen.until_ms);
    if strict && !kept {
        let now = match raw {
            Some(raw) => format!("{status} until {raw}"),
            None => status.to_owned(),
        };
        out.push(Violation::new(
            "queue-active-until",
            format!(
                "{label}'s token was seen ACTIVE until {} {} ms before the crash; after the restart it is {now}",
                seen.until_raw,
                kill_ms - seen.seen_ms
            ),
        ));
    }
}

// ---------------------------------------------------------------- concerts

/// Every acknowledged concert is still there; returns those that are.
async fn check_concerts<'a>(api: &Api, facts: &'a Facts, out: &mut Vec<Violation>) -> Vec<&'a ConcertRec> {
    let mut live = Vec::new();
    for concert in &facts.recorded.concerts {
        let what = format!("concert {} ({}, acknowledged 201)", concert.id, concert.title);
        match api.concert(concert.id).await {
            Ok(reply) if reply.status == 200 => {
                let title = str_at(&reply.body, "title").unwrap_or_default();
                let seat_count = u64_at(&reply.body, "seatCount");
                if title != concert.title || seat_count != Some(u64::from(concert.seat_count)) {
                    out.push(Violation::new(
                        "concert-durable",
                        format!(
                            "{what} came back as `{title}` with {seat_count:?} seats instead of {}",
                            concert.seat_count
                        ),
                    ));
                }
                live.push(concert);
            }
            Ok(reply) => out.push(Violation::new(
                "concert-durable",
                format!("{what} answers {} after the restart", reply.describe()),
            )),
            Err(err) => out.push(Violation::new("verify", format!("GET /concerts/{}: {err}", concert.id))),
        }
    }
    live
}

// ---------------------------------------------------------------- members

/// A balance-history item.
#[derive(Debug, Clone)]
struct Entry {
    kind: String,
    amount: i64,
    balance_after: i64,
    at: String,
}

fn parse_entry(item: &Value) -> Option<Entry> {
    Some(Entry {
        kind: str_at(item, "kind")?.to_owned(),
        amount: i64_at(item, "amount")?,
        balance_after: i64_at(item, "balanceAfter")?,
        at: str_at(item, "at").unwrap_or_default().to_owned(),
    })
}

/// A reservation as the server shows it.
#[derive(Debug, Clone)]
struct Shown {
    id: u64,
    concert_id: u64,
    seats: Vec<u32>,
    amount: i64,
    status: String,
    expires_at: String,
}

fn parse_reservation(item: &Value) -> Option<Shown> {
    let mut seats = item["seatNumbers"]
        .as_array()?
        .iter()
        .map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect::<Option<Vec<u32>>>()?;
    seats.sort_unstable();
    Some(Shown {
        id: u64_at(item, "id")?,
        concert_id: u64_at(item, "concertId")?,
        seats,
        amount: i64_at(item, "amount")?,
        status: str_at(item, "status")?.to_owned(),
        expires_at: str_at(item, "expiresAt").unwrap_or_default().to_owned(),
    })
}

/// `GET /members/me/reservations`, parsed.
async fn reservations_of(api: &Api, member: &MemberRec) -> Result<Vec<Shown>, Violation> {
    let label = member.label();
    match api.my_reservations(&member.key).await {
        Ok(reply) if reply.status == 200 => reply.body["items"]
            .as_array()
            .and_then(|items| items.iter().map(parse_reservation).collect::<Option<Vec<_>>>())
            .ok_or_else(|| {
                Violation::new(
                    "malformed-response",
                    format!("{label}: GET /members/me/reservations is unreadable: {}", reply.body),
                )
            }),
        Ok(reply) => Err(Violation::new(
            "verify",
            format!("{label}: GET /members/me/reservations answered {}", reply.describe()),
        )),
        Err(err) => Err(Violation::new(
            "verify",
            format!("{label}: GET /members/me/reservations: {err}"),
        )),
    }
}

/// Right after the restart: the member authenticates; idempotent replays
/// answer the first response; charges, holds, payments and cancels are there;
/// the ledger adds up. Returns whether the member authenticated.
async fn durable_member(api: Api, facts: Arc<Facts>, index: usize) -> (Vec<Violation>, bool, Coverage) {
    let mut out = Vec::new();
    let mut coverage = Coverage::default();
    let Some(member) = facts.recorded.members.get(index) else {
        return (out, false, coverage);
    };
    let label = member.label();
    match api.me(&member.key).await {
        Ok(reply) if reply.status == 200 => {
            let id = u64_at(&reply.body, "id");
            let name = str_at(&reply.body, "name");
            if id != Some(member.id) || name != Some(member.name.as_str()) {
                out.push(Violation::new(
                    "member-auth",
                    format!("{label}'s key now names member {id:?} ({name:?})"),
                ));
                return (out, false, coverage);
            }
        }
        Ok(reply) => {
            out.push(Violation::new(
                "member-auth",
                format!(
                    "{label} (acknowledged 201) cannot authenticate after the restart: GET /members/me answered {}",
                    reply.describe()
                ),
            ));
            return (out, false, coverage);
        }
        Err(err) => {
            out.push(Violation::new("verify", format!("GET /members/me for {label}: {err}")));
            return (out, false, coverage);
        }
    }
    coverage.members += 1;
    coverage.replays += replay_idempotent(&api, member, &mut out).await;
    // Read after the replays, so a replay that ran again shows in the money.
    let balance = match api.me(&member.key).await {
        Ok(reply) if reply.status == 200 => i64_at(&reply.body, "balance"),
        _ => None,
    };
    let Some(balance) = balance else {
        out.push(Violation::new(
            "verify",
            format!("{label}: no balance in GET /members/me"),
        ));
        return (out, true, coverage);
    };
    let entries = match api.history(&member.key).await {
        Ok(items) => match items.iter().map(parse_entry).collect::<Option<Vec<_>>>() {
            Some(entries) => entries,
            None => {
                out.push(Violation::new(
                    "malformed-response",
                    format!("{label}: unreadable balance-history items: {items:?}"),
                ));
                return (out, true, coverage);
            }
        },
        Err(err) => {
            out.push(Violation::new("verify", format!("{label}: {err}")));
            return (out, true, coverage);
        }
    };
    coverage.charges += member.charges.iter().filter(|c| c.attempt.acked().is_some()).count();
    check_charges(member, &entries, &mut out);
    check_chain(member, &entries, balance, &mut out);
    let shown = match reservations_of(&api, member).await {
        Ok(shown) => shown,
        Err(violation) => {
            out.push(violation);
            return (out, true, coverage);
        }
    };
    coverage.holds += member.holds.len();
    coverage.payments += member.holds.iter().filter(|h| h.paid().is_some()).count();
    coverage.cancels += member.holds.iter().filter(|h| h.cancelled()).count();
    coverage.pending_after_restart += shown.iter().filter(|r| r.status == "PENDING_PAYMENT").count();
    check_holds(&api, member, &shown, &entries, &mut out).await;
    check_money(member, balance, &entries, &shown, &mut out);
    (out, true, coverage)
}

/// Acknowledged charges and payments with an `Idempotency-Key`, sent again
/// after the restart, answer exactly the first response.
async fn replay_idempotent(api: &Api, member: &MemberRec, out: &mut Vec<Violation>) -> usize {
    let label = member.label();
    let mut replays = 0;
    for charge in &member.charges {
        let (Some(key), Attempt::Acked(first)) = (&charge.idempotency_key, &charge.attempt) else {
            continue;
        };
        replays += 1;
        let again = api.charge(&member.key, charge.amount, Some(key)).await;
        let what = format!(
            "{label}: replaying the charge of {} with Idempotency-Key {key}",
            charge.amount
        );
        check_replayed(&what, 200, first, &again, out);
    }
    let Some(token) = &member.token else {
        return replays;
    };
    for hold in &member.holds {
        let Some(pay) = &hold.pay else {
            continue;
        };
        let (Some(key), Attempt::Acked(first)) = (&pay.idempotency_key, &pay.attempt) else {
            continue;
        };
        // The token is EXPIRED since the payment; it still names the member.
        replays += 1;
        let again = api.pay(&token.token, hold.id, Some(key)).await;
        let what = format!(
            "{label}: replaying the payment of reservation {} with Idempotency-Key {key}",
            hold.id
        );
        check_replayed(&what, 201, first, &again, out);
    }
    replays
}

fn check_replayed(what: &str, status: u16, first: &Value, again: &Sent, out: &mut Vec<Violation>) {
    match again {
        Ok(reply) if reply.status == status && reply.body == *first => {}
        Ok(reply) => out.push(Violation::new(
            "idempotency-replay",
            format!(
                "{what} after the restart answered {} {}, not the first response {status} {first}",
                reply.status, reply.body
            ),
        )),
        Err(err) => out.push(Violation::new("verify", format!("{what}: {err}"))),
    }
}

/// Each acknowledged charge is in the history exactly once, with the balance
/// it was acknowledged with; one cut by the crash at most once; none unknown.
/// A charge that was retried after an unknown outcome (503, no answer) and
/// is in the history more than once is `charge-retry-applied-twice`; one refused on
/// its retry that is in the history is `charge-retry-converged` (the retry had to
/// return the real outcome).
fn check_charges(member: &MemberRec, entries: &[Entry], out: &mut Vec<Violation>) {
    let label = member.label();
    let charges: Vec<&Entry> = entries.iter().filter(|e| e.kind == "CHARGE").collect();
    for charge in &member.charges {
        let found: Vec<&&Entry> = charges.iter().filter(|e| e.amount == charge.amount).collect();
        let key = match &charge.idempotency_key {
            Some(key) => format!(" (Idempotency-Key {key})"),
            None => String::new(),
        };
        let retried = charge.retried.as_deref().unwrap_or_default();
        if found.len() > 1 && !retried.is_empty() {
            out.push(Violation::new(
                "charge-retry-applied-twice",
                format!(
                    "{label}: the charge of {}{key} was answered {retried}, retried with the same key and body \
                     and finally {}, but it appears {} times in the balance history: the retry was applied again",
                    charge.amount,
                    charge.attempt.describe(),
                    found.len()
                ),
            ));
            continue;
        }
        match &charge.attempt {
            Attempt::RefusedOnRetry(why) if !found.is_empty() => out.push(Violation::new(
                "charge-retry-converged",
                format!(
                    "{label}: the charge of {}{key} was answered {retried}, then {why} on a retry with the same \
                     key and body, but it is in the balance history: the retry did not return its real outcome",
                    charge.amount
                ),
            )),
            Attempt::Acked(_) => {
                if found.len() != 1 {
                    out.push(Violation::new(
                        "charge-durable",
                        format!(
                            "{label}: the acknowledged charge of {}{key} appears {} times in the balance \
                             history ({} items), expected once",
                            charge.amount,
                            found.len(),
                            entries.len()
                        ),
                    ));
                } else if let Some(balance) = charge.acked_balance() {
                    if found[0].balance_after != balance {
                        out.push(Violation::new(
                            "charge-durable",
                            format!(
                                "{label}: the charge of {}{key} has balanceAfter {} in the history but was \
                                 acknowledged with balance {balance}",
                                charge.amount, found[0].balance_after
                            ),
                        ));
                    }
                }
            }
            Attempt::InDoubt if found.len() > 1 => out.push(Violation::new(
                "charge-duplicated",
                format!(
                    "{label}: the charge of {}{key} cut by the crash appears {} times in the history (at most once)",
                    charge.amount,
                    found.len()
                ),
            )),
            Attempt::Refused(why) if !found.is_empty() => out.push(Violation::new(
                "charge-duplicated",
                format!(
                    "{label}: the charge of {}{key} was refused ({why}) but appears in the history",
                    charge.amount
                ),
            )),
            _ => {}
        }
    }
    for entry in charges {
        if !member.charges.iter().any(|c| c.amount == entry.amount) {
            out.push(Violation::new(
                "money",
                format!(
                    "{label}: the history has a CHARGE of {} at {} that the drill never sent",
                    entry.amount, entry.at
                ),
            ));
        }
    }
}

/// Oldest first, every balanceAfter is the sum of the amounts so far; the
/// balance is the newest balanceAfter and within 0..=ceiling.
fn check_chain(member: &MemberRec, entries: &[Entry], balance: i64, out: &mut Vec<Violation>) {
    let label = member.label();
    let mut running = 0i64;
    for (index, entry) in entries.iter().rev().enumerate() {
        running = running.saturating_add(entry.amount);
        if running != entry.balance_after {
            out.push(Violation::new(
                "ledger-chain",
                format!(
                    "{label}: history entry {} (oldest first: {} {} at {}) has balanceAfter {}, but the \
                     entries up to it add up to {running}",
                    index + 1,
                    entry.kind,
                    entry.amount,
                    entry.at,
                    entry.balance_after
                ),
            ));
            break;
        }
    }
    let latest = entries.first().map_or(0, |e| e.balance_after);
    if balance != latest {
        out.push(Violation::new(
            "balance",
            format!("{label}: balance is {balance} but the newest history entry says balanceAfter {latest}"),
        ));
    }
    if !(0..=MAX_BALANCE).contains(&balance) {
        out.push(Violation::new(
            "balance",
            format!("{label}: balance {balance} is outside 0..={MAX_BALANCE}"),
        ));
    }
}

/// Every acknowledged hold is there as acknowledged, in a status its story
/// allows; every acknowledged payment is in the history once.
async fn check_holds(api: &Api, member: &MemberRec, shown: &[Shown], entries: &[Entry], out: &mut Vec<Violation>) {
    let label = member.label();
    for hold in &member.holds {
        let story = hold.story();
        let listed = shown.iter().any(|r| r.id == hold.id);
        let view = match api.reservation(&member.key, hold.id).await {
            Ok(reply) if reply.status == 200 => parse_reservation(&reply.body),
            Ok(reply) => {
                let unlisted = if listed {
                    ""
                } else {
                    " and is not in GET /members/me/reservations"
                };
                out.push(Violation::new(
                    "hold-durable",
                    format!(
                        "{label}: {story} answers {} after the restart{unlisted}",
                        reply.describe()
                    ),
                ));
                continue;
            }
            Err(err) => {
                out.push(Violation::new(
                    "verify",
                    format!("GET /reservations/{}: {err}", hold.id),
                ));
                continue;
            }
        };
        let Some(view) = view else {
            out.push(Violation::new(
                "malformed-response",
                format!("{label}: GET /reservations/{} is unreadable", hold.id),
            ));
            continue;
        };
        if !listed {
            out.push(Violation::new(
                "hold-durable",
                format!("{label}: {story} is missing from GET /members/me/reservations after the restart"),
            ));
        }
        let mut seats = hold.seats.clone();
        seats.sort_unstable();
        let same_expiry = time_ms(&view.expires_at) == Some(hold.expires_at_ms);
        if view.concert_id != hold.concert_id || view.seats != seats || view.amount != hold.amount || !same_expiry {
            out.push(Violation::new(
                "hold-durable",
                format!(
                    "{label}: {story} came back as concert {}, seats {:?}, amount {}, expiresAt {}",
                    view.concert_id, view.seats, view.amount, view.expires_at
                ),
            ));
        }
        let allowed = hold.statuses_now();
        if !allowed.contains(&view.status.as_str()) {
            let check = if hold.paid().is_some() {
                "payment-durable"
            } else if hold.cancelled() {
                "cancel-durable"
            } else {
                "hold-durable"
            };
            out.push(Violation::new(
                check,
                format!(
                    "{label}: {story} is {} after the restart; expected one of {allowed:?}",
                    view.status
                ),
            ));
        }
        if let Some(paid) = hold.paid() {
            let amount = i64_at(paid, "amount").unwrap_or(hold.amount);
            let balance = i64_at(paid, "balance");
            let found = entries
                .iter()
                .filter(|e| e.kind == "PAYMENT" && e.amount == -amount && Some(e.balance_after) == balance)
                .count();
            if found != 1 {
                out.push(Violation::new(
                    "payment-durable",
                    format!(
                        "{label}: the acknowledged payment {} of {amount} for reservation {} (balance after {}) \
                         appears {found} times in the balance history, expected once",
                        u64_at(paid, "paymentId").map_or("?".to_owned(), |id| id.to_string()),
                        hold.id,
                        balance.map_or("?".to_owned(), |b| b.to_string())
                    ),
                ));
            }
        }
    }
}

/// balance + CONFIRMED amounts == CHARGE total; PAYMENT total == CONFIRMED total.
fn check_money(member: &MemberRec, balance: i64, entries: &[Entry], shown: &[Shown], out: &mut Vec<Violation>) {
    let label = member.label();
    let sum = |kind: &str| -> i64 { entries.iter().filter(|e| e.kind == kind).map(|e| e.amount).sum() };
    let charged = sum("CHARGE");
    let paid = -sum("PAYMENT");
    let confirmed: i64 = shown.iter().filter(|r| r.status == "CONFIRMED").map(|r| r.amount).sum();
    if balance + confirmed != charged {
        out.push(Violation::new(
            "money",
            format!(
                "{label}: balance {balance} + CONFIRMED reservations {confirmed} = {}, but its CHARGE entries add up to {charged}",
                balance + confirmed
            ),
        ));
    }
    if paid != confirmed {
        out.push(Violation::new(
            "money",
            format!("{label}: PAYMENT entries add up to {paid}, CONFIRMED reservations to {confirmed}"),
        ));
    }
}

/// A CONFIRMED reservation, for the seat-map checks.
#[derive(Debug, Clone)]
struct Confirmed {
    reservation: u64,
    concert: u64,
    seats: Vec<u32>,
}

/// After every hold's deadline: nothing is PENDING_PAYMENT and every
/// acknowledged hold ended as its story allows. Returns the member's
/// CONFIRMED reservations.
async fn final_member(api: Api, facts: Arc<Facts>, index: usize) -> (Vec<Violation>, Vec<Confirmed>) {
    let mut out = Vec::new();
    let mut confirmed = Vec::new();
    let Some(member) = facts.recorded.members.get(index) else {
        return (out, confirmed);
    };
    let label = member.label();
    let shown = match reservations_of(&api, member).await {
        Ok(shown) => shown,
        Err(violation) => {
            out.push(violation);
            return (out, confirmed);
        }
    };
    let checked_at = now_ms();
    for reservation in &shown {
        match reservation.status.as_str() {
            "PENDING_PAYMENT" => {
                let late = time_ms(&reservation.expires_at).map_or("?".to_owned(), |at| (checked_at - at).to_string());
                out.push(Violation::new(
                    "hold-expiry",
                    format!(
                        "{label}: reservation {} (concert {}, seats {:?}, expiresAt {}) is still PENDING_PAYMENT \
                         {late} ms after its expiresAt (checked once every hold's deadline + {EXPIRY_SLACK_MS} ms had passed)",
                        reservation.id, reservation.concert_id, reservation.seats, reservation.expires_at
                    ),
                ));
            }
            "CONFIRMED" => confirmed.push(Confirmed {
                reservation: reservation.id,
                concert: reservation.concert_id,
                seats: reservation.seats.clone(),
            }),
            _ => {}
        }
    }
    for hold in &member.holds {
        let Some(now) = shown.iter().find(|r| r.id == hold.id) else {
            continue; // reported right after the restart
        };
        let allowed = hold.statuses_final();
        if now.status != "PENDING_PAYMENT" && !allowed.contains(&now.status.as_str()) {
            out.push(Violation::new(
                "hold-outcome",
                format!(
                    "{label}: {} is {} once every deadline has passed; expected one of {allowed:?}",
                    hold.story(),
                    now.status
                ),
            ));
        }
    }
    (out, confirmed)
}

// ---------------------------------------------------------------- probe

/// A member registered after the restart, with an ACTIVE token: it reads
/// the seat maps and makes the writes whose ids are checked.
struct Probe {
    key: String,
    token: String,
}

async fn register_probe(api: &Api, facts: &Facts, out: &mut Vec<Violation>) -> Option<Probe> {
    if api.broken() {
        return None;
    }
    match set_up_probe(api, facts, out).await {
        Ok(probe) => Some(probe),
        Err(why) => {
            out.push(Violation::new(
                "verify",
                format!("cannot set up the verifier member: {why}; seat-map and id checks skipped"),
            ));
            None
        }
    }
}

async fn set_up_probe(api: &Api, facts: &Facts, out: &mut Vec<Violation>) -> Result<Probe, String> {
    let name = format!("drill-{}-verifier", facts.tag);
    let reply = api
        .register(&name)
        .await
        .map_err(|err| format!("POST /members: {err}"))?;
    let id = u64_at(&reply.body, "id").filter(|_| reply.status == 201);
    let key = str_at(&reply.body, "memberKey").filter(|_| reply.status == 201);
    let (Some(id), Some(key)) = (id, key) else {
        return Err(format!("POST /members answered {}", reply.describe()));
    };
    if let Some(max) = facts.max_member_id() {
        if id <= max {
            out.push(Violation::new(
                "id-reuse",
                format!(
                    "a member registered after the restart got id {id}, not above {max}, the largest member id \
                     acknowledged before the crash"
                ),
            ));
        }
    }
    let reply = api
        .issue_token(key)
        .await
        .map_err(|err| format!("POST /queue/tokens: {err}"))?;
    let Some(token) = str_at(&reply.body, "token").filter(|_| reply.is_success()) else {
        return Err(format!("POST /queue/tokens answered {}", reply.describe()));
    };
    let mut last = String::new();
    for _ in 0..MAX_PROBE_POLLS {
        match api.queue_status(token).await {
            Ok(reply) if str_at(&reply.body, "status") == Some("ACTIVE") => {
                return Ok(Probe {
                    key: key.to_owned(),
                    token: token.to_owned(),
                });
            }
            Ok(reply) => last = format!("{} {}", reply.status, reply.body),
            Err(err) => last = err,
        }
        tokio::time::sleep(PROBE_POLL).await;
    }
    Err(format!("its token did not become ACTIVE (last answer: {last})"))
}

/// A seat as the seat map shows it.
struct Seat {
    number: u32,
    price: i64,
    status: String,
}

/// Seat maps once quiet: nothing HELD; SOLD seats are exactly the seats of
/// the CONFIRMED reservations, none in two; prices and counts as created;
/// the catalog's `availableSeats` agrees.
async fn check_seats(
    api: &Api,
    live: &[&ConcertRec],
    probe: &Probe,
    confirmed: &[Confirmed],
    out: &mut Vec<Violation>,
    coverage: &mut Coverage,
) {
    for concert in live {
        if api.broken() {
            return;
        }
        let Some(seats) = read_seats(api, &probe.token, concert.id, out).await else {
            continue;
        };
        coverage.sold_seats += seats.iter().filter(|s| s.status == "SOLD").count();
        check_as_created(concert, &seats, out);
        let held: Vec<u32> = seats.iter().filter(|s| s.status == "HELD").map(|s| s.number).collect();
        if !held.is_empty() {
            out.push(Violation::new(
                "hold-expiry",
                format!(
                    "concert {}: seats {held:?} are still HELD once every hold's deadline + {EXPIRY_SLACK_MS} ms \
                     has passed",
                    concert.id
                ),
            ));
        }
        check_sold(concert.id, &seats, confirmed, out);
        let available = seats.iter().filter(|s| s.status == "AVAILABLE").count();
        check_catalog(api, concert.id, available, out).await;
    }
}

/// `GET /concerts/{id}/seats` (every seat), parsed.
async fn read_seats(api: &Api, token: &str, id: u64, out: &mut Vec<Violation>) -> Option<Vec<Seat>> {
    let reply = match api.seats(token, id, None).await {
        Ok(reply) if reply.status == 200 => reply,
        Ok(reply) => {
            let why = format!("GET /concerts/{id}/seats answered {}", reply.describe());
            out.push(Violation::new("verify", why));
            return None;
        }
        Err(err) => {
            out.push(Violation::new("verify", format!("GET /concerts/{id}/seats: {err}")));
            return None;
        }
    };
    let seats = reply.body["seats"].as_array().and_then(|seats| {
        seats
            .iter()
            .map(|s| {
                Some(Seat {
                    number: u32::try_from(u64_at(s, "number")?).ok()?,
                    price: i64_at(s, "price")?,
                    status: str_at(s, "status")?.to_owned(),
                })
            })
            .collect::<Option<Vec<_>>>()
    });
    if seats.is_none() {
        let why = format!("GET /concerts/{id}/seats is unreadable");
        out.push(Violation::new("malformed-response", why));
    }
    seats
}

/// As many seats as created, each at its created price.
fn check_as_created(concert: &ConcertRec, seats: &[Seat], out: &mut Vec<Violation>) {
    let id = concert.id;
    if seats.len() != concert.prices.len() {
        out.push(Violation::new(
            "concert-durable",
            format!(
                "concert {id} lists {} seats, created with {}",
                seats.len(),
                concert.seat_count
            ),
        ));
    }
    let repriced: Vec<String> = seats
        .iter()
        .filter(|s| {
            let created = usize::try_from(s.number)
                .ok()
                .and_then(|n| concert.prices.get(n.checked_sub(1)?));
            created != Some(&s.price)
        })
        .map(|s| format!("seat {} costs {}", s.number, s.price))
        .collect();
    if let Some(example) = repriced.first() {
        out.push(Violation::new(
            "concert-durable",
            format!(
                "concert {id}: {} seats do not have the price they were created with, e.g. {example}",
                repriced.len()
            ),
        ));
    }
}

/// SOLD seats == the union of the CONFIRMED reservations' seats, none in two.
fn check_sold(id: u64, seats: &[Seat], confirmed: &[Confirmed], out: &mut Vec<Violation>) {
    let mut owners: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for reservation in confirmed.iter().filter(|r| r.concert == id) {
        for &seat in &reservation.seats {
            owners.entry(seat).or_default().push(reservation.reservation);
        }
    }
    let status_of: HashMap<u32, &str> = seats.iter().map(|s| (s.number, s.status.as_str())).collect();
    for (seat, reservations) in &owners {
        if reservations.len() > 1 {
            out.push(Violation::new(
                "seat-double-sale",
                format!(
                    "concert {id}: seat {seat} is in {} CONFIRMED reservations {reservations:?}",
                    reservations.len()
                ),
            ));
        }
        let status = status_of.get(seat).copied().unwrap_or("missing");
        if status != "SOLD" {
            out.push(Violation::new(
                "seat-sold",
                format!("concert {id}: seat {seat} belongs to CONFIRMED reservations {reservations:?} but is {status}"),
            ));
        }
    }
    let orphans: Vec<u32> = seats
        .iter()
        .filter(|s| s.status == "SOLD" && !owners.contains_key(&s.number))
        .map(|s| s.number)
        .collect();
    if !orphans.is_empty() {
        out.push(Violation::new(
            "seat-sold",
            format!(
                "concert {id}: seats {orphans:?} are SOLD but no CONFIRMED reservation of any drill member has them"
            ),
        ));
    }
}

/// `availableSeats` of `GET /concerts/{id}` counts the AVAILABLE seats.
async fn check_catalog(api: &Api, id: u64, available: usize, out: &mut Vec<Violation>) {
    match api.concert(id).await {
        Ok(reply) => {
            let listed = u64_at(&reply.body, "availableSeats");
            if listed.and_then(|n| usize::try_from(n).ok()) != Some(available) {
                out.push(Violation::new(
                    "catalog-available",
                    format!(
                        "concert {id}: availableSeats is {listed:?} but the seat map has {available} AVAILABLE seats"
                    ),
                ));
            }
        }
        Err(err) => out.push(Violation::new("verify", format!("GET /concerts/{id}: {err}"))),
    }
}

/// New concerts, reservations and payments get ids above every one seen
/// before the crash.
async fn probe_ids(api: &Api, facts: &Facts, probe: &Probe, out: &mut Vec<Violation>) {
    if api.broken() {
        return;
    }
    let body = json!({
        "title": format!("drill-{}-probe", facts.tag), "category": "drill", "venue": "Drill Hall",
        "startsAt": (chrono::Utc::now() + chrono::TimeDelta::days(30)).to_rfc3339(),
        "seatCount": 1, "price": 1_000,
    });
    let concert = match api.create_concert(&body).await {
        Ok(reply) if reply.status == 201 => u64_at(&reply.body, "id"),
        Ok(reply) => {
            out.push(Violation::new(
                "verify",
                format!("id probe: POST /admin/concerts answered {}", reply.describe()),
            ));
            None
        }
        Err(err) => {
            out.push(Violation::new(
                "verify",
                format!("id probe: POST /admin/concerts: {err}"),
            ));
            None
        }
    };
    let Some(concert) = concert else {
        return;
    };
    check_above(out, "concert", concert, facts.max_concert_id());
    if let Err(err) = api.charge(&probe.key, 1_000, None).await {
        out.push(Violation::new("verify", format!("id probe: charge: {err}")));
        return;
    }
    let reservation = match api.hold(&probe.token, concert, &[1], None).await {
        Ok(reply) if reply.status == 201 => u64_at(&reply.body, "id"),
        Ok(reply) => {
            out.push(Violation::new(
                "verify",
                format!("id probe: POST /reservations answered {}", reply.describe()),
            ));
            None
        }
        Err(err) => {
            out.push(Violation::new("verify", format!("id probe: POST /reservations: {err}")));
            None
        }
    };
    let Some(reservation) = reservation else {
        return;
    };
    check_above(out, "reservation", reservation, facts.max_reservation_id());
    match api.pay(&probe.token, reservation, None).await {
        Ok(reply) if reply.status == 201 => {
            if let Some(payment) = u64_at(&reply.body, "paymentId") {
                check_above(out, "payment", payment, facts.max_payment_id());
            }
        }
        Ok(reply) => out.push(Violation::new(
            "verify",
            format!("id probe: POST /payments answered {}", reply.describe()),
        )),
        Err(err) => out.push(Violation::new("verify", format!("id probe: POST /payments: {err}"))),
    }
}

fn check_above(out: &mut Vec<Violation>, what: &str, id: u64, max_before: Option<u64>) {
    if let Some(max) = max_before {
        if id <= max {
            out.push(Violation::new(
                "id-reuse",
                format!(
                    "a {what} created after the restart got id {id}, not above {max}, the largest {what} id \
                     acknowledged before the crash"
                ),
            ));
        }
    }
}
