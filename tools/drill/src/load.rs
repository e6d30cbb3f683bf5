//! The load before the crash (or around the fault): the concerts, then
//! virtual users that each loop register -> charge -> queue token -> wait for
//! ACTIVE -> hold -> pay, cancel or walk away, plus one queue watcher issuing
//! tokens one after another (so their issue order is known). Everything
//! acknowledged goes to the [`Ledger`]. Every loop is bounded in count and
//! checks the stop flag. With [`LoadPolicy::fault`] every charge, hold,
//! payment and cancel carries an `Idempotency-Key` and unknown outcomes are
//! retried with it (see [`super::retry`]).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::client::{i64_at, now_ms, str_at, time_ms, u64_at, Api, Cred, Reply, Sent};
use super::ledger::{ActiveSeen, ChargeRec};
use super::ledger::{ConcertRec, HoldInDoubt, HoldRec, Ledger, MemberRec, PayRec, TokenRec};
use super::{retry, Violation};

/// Iterations (one new member each) of one virtual user.
const MAX_ITERATIONS_PER_USER: u32 = 500;
/// Members the queue watcher registers.
const MAX_QUEUE_MEMBERS: u32 = 60;
/// Status polls while waiting for ACTIVE (the queue ticks every 100 ms).
const MAX_ACTIVE_POLLS: u32 = 100;
const ACTIVE_POLL: Duration = Duration::from_millis(40);
/// Hold attempts per member (conflicts are expected).
const MAX_HOLD_ATTEMPTS: u32 = 3;
/// Charge amounts are `units * CHARGE_UNIT + seq` with a per-round `seq`
/// below `CHARGE_UNIT`, so every charge of a round has its own amount.
const CHARGE_UNIT: i64 = 100_000;
/// Even a load whose stop flag is never set ends after this.
const LOAD_HARD_LIMIT: Duration = Duration::from_secs(60);
/// Members that wait with their hold for the fault (fault rounds only).
const WAIT_FOR_FAULT_SHARE: f64 = 0.6;
/// A waiting member gives up this long before its hold expires.
const WAIT_FOR_FAULT_MARGIN_MS: i64 = 500;
const WAIT_FOR_FAULT_POLL: Duration = Duration::from_millis(10);

/// How the virtual users send their writes.
#[derive(Debug, Clone, Default)]
pub struct LoadPolicy {
    /// Every charge, hold, payment and cancel carries an `Idempotency-Key`
    /// (otherwise only some charges and payments do).
    pub always_keyed: bool,
    /// Keyed writes answered 503 or not at all are retried with the same key
    /// and body (otherwise the first answer stands).
    pub retry_unknown: bool,
    /// Set when the fault starts. Until then some members wait with their
    /// fresh hold, to pay or cancel it and charge again the moment the fault
    /// starts, so that payments, cancels and charges are caught by it (a
    /// member's story starts with a registration, which has no key to retry
    /// with, so few stories would otherwise reach those writes during it).
    pub fault_started: Option<Arc<AtomicBool>>,
}

impl LoadPolicy {
    /// The fault drills' clients: keys everywhere, retries, members waiting
    /// for `fault_started`.
    pub fn fault(fault_started: Arc<AtomicBool>) -> Self {
        Self {
            always_keyed: true,
            retry_unknown: true,
            fault_started: Some(fault_started),
        }
    }
}

/// Shared by the virtual users of one round.
pub struct LoadContext {
    api: Api,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    concerts: Vec<ConcertRec>,
    /// A tag in member names and idempotency keys.
    tag: String,
    charge_seq: AtomicI64,
    hard_deadline: Instant,
    policy: LoadPolicy,
}

impl LoadContext {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire) || Instant::now() >= self.hard_deadline
    }

    /// The next unique charge sequence number, if any is left.
    fn next_charge_seq(&self) -> Option<i64> {
        let seq = self.charge_seq.fetch_add(1, Ordering::Relaxed);
        (seq < CHARGE_UNIT).then_some(seq)
    }

    fn count(&self, what: &str, sent: &Sent) {
        self.ledger.count(what, sent);
    }

    /// Whether a write with this key is retried after an unknown outcome.
    fn retries(&self, key: Option<&String>) -> bool {
        self.policy.retry_unknown && key.is_some()
    }
}

/// Creates 2..=4 concerts (40..=150 seats, some with a price tier) and
/// records them. Any refusal is a setup failure.
pub async fn create_concerts(api: &Api, ledger: &Ledger, rng: &mut StdRng, tag: &str) -> Result<(), String> {
    let starts_at = (chrono::Utc::now() + chrono::TimeDelta::days(30)).to_rfc3339();
    for index in 0..rng.random_range(2..=4u32) {
        let seat_count: u32 = rng.random_range(40..=150);
        let price: i64 = rng.random_range(10..=50) * 1_000;
        let mut prices = vec![price; usize::try_from(seat_count).unwrap_or(0)];
        let mut body = json!({
            "title": format!("drill-{tag}-c{index}"), "category": "drill", "venue": "Drill Hall",
            "startsAt": starts_at, "seatCount": seat_count, "price": price,
        });
        if rng.random_bool(0.5) {
            let to_seat: u32 = rng.random_range(2..=5);
            body["priceTiers"] = json!([{ "fromSeat": 1, "toSeat": to_seat, "price": 100_000 }]);
            prices
                .iter_mut()
                .take(usize::try_from(to_seat).unwrap_or(0))
                .for_each(|p| *p = 100_000);
        }
        let sent = api.create_concert(&body).await;
        ledger.count("POST /admin/concerts", &sent);
        let reply = sent.map_err(|err| format!("POST /admin/concerts: {err}"))?;
        let id = u64_at(&reply.body, "id").filter(|_| reply.status == 201);
        let Some(id) = id else {
            return Err(format!("POST /admin/concerts answered {}", reply.describe()));
        };
        ledger.add_concert(ConcertRec {
            id,
            title: format!("drill-{tag}-c{index}"),
            seat_count,
            prices,
        });
    }
    Ok(())
}

/// Starts `users` virtual users and the queue watcher; they run until `stop`.
pub fn start(
    api: Api,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    users: usize,
    policy: LoadPolicy,
    seed: u64,
    tag: String,
) -> JoinSet<()> {
    let concerts = ledger.snapshot().concerts;
    let context = Arc::new(LoadContext {
        api,
        ledger,
        stop,
        concerts,
        tag,
        charge_seq: AtomicI64::new(1),
        hard_deadline: Instant::now() + LOAD_HARD_LIMIT,
        policy,
    });
    let mut tasks = JoinSet::new();
    for user in 0..users {
        let rng = StdRng::seed_from_u64(seed ^ (user as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.spawn(virtual_user(context.clone(), user, rng));
    }
    tasks.spawn(queue_watcher(context, StdRng::seed_from_u64(!seed)));
    tasks
}

async fn virtual_user(ctx: Arc<LoadContext>, user: usize, mut rng: StdRng) {
    for iteration in 0..MAX_ITERATIONS_PER_USER {
        if ctx.stopped() {
            return;
        }
        let name = format!("drill-{}-u{user}-{iteration}", ctx.tag);
        let Some(mut member) = register(&ctx, &name).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        buy(&ctx, &mut rng, &mut member).await;
        ctx.ledger.add_member(member);
    }
}

async fn register(ctx: &LoadContext, name: &str) -> Option<MemberRec> {
    let sent = ctx.api.register(name).await;
    ctx.count("POST /members", &sent);
    let reply = sent.ok().filter(|r| r.status == 201)?;
    let id = u64_at(&reply.body, "id")?;
    let key = str_at(&reply.body, "memberKey")?.to_owned();
    Some(MemberRec {
        id,
        name: name.to_owned(),
        key,
        charges: Vec::new(),
        token: None,
        holds: Vec::new(),
        holds_in_doubt: Vec::new(),
    })
}

/// One member's story; returns early at the first step that fails.
async fn buy(ctx: &LoadContext, rng: &mut StdRng, member: &mut MemberRec) {
    let charges = if rng.random_bool(0.3) { 2 } else { 1 };
    for _ in 0..charges {
        if ctx.stopped() {
            return;
        }
        charge(ctx, rng, member).await;
    }
    if ctx.stopped() || !take_token(ctx, member, None).await || !wait_active(ctx, member).await {
        return;
    }
    let Some(hold_index) = hold(ctx, rng, member).await else {
        return;
    };
    if ctx.stopped() {
        return;
    }
    let choice = rng.random_range(0..100u32);
    let at_fault = match &ctx.policy.fault_started {
        Some(started) if rng.random_bool(WAIT_FOR_FAULT_SHARE) => {
            wait_for_fault(ctx, started, member.holds[hold_index].expires_at_ms).await
        }
        _ => false,
    };
    if !at_fault {
        return settle(ctx, rng, member, hold_index, choice).await;
    }
    // Pay or cancel, and charge again, at once, as the fault starts.
    let mut charge_rng = StdRng::seed_from_u64(rng.random());
    let (key, label) = (member.key.clone(), member.label());
    let (extra, ()) = tokio::join!(
        send_charge(ctx, &mut charge_rng, &key, &label),
        settle(ctx, rng, member, hold_index, choice)
    );
    member.charges.extend(extra);
}

/// Pays (55 in 100), cancels (25) or leaves the hold to expire.
async fn settle(ctx: &LoadContext, rng: &mut StdRng, member: &mut MemberRec, hold_index: usize, choice: u32) {
    match choice {
        0..55 => pay(ctx, rng, member, hold_index).await,
        55..80 => cancel(ctx, rng, member, hold_index).await,
        _ => {} // left to expire
    }
}

/// Waits until the fault starts (true), or the hold is about to expire or
/// the load stops (false).
async fn wait_for_fault(ctx: &LoadContext, started: &AtomicBool, hold_expires_at_ms: i64) -> bool {
    loop {
        if started.load(Ordering::Acquire) {
            return true;
        }
        if ctx.stopped() || now_ms() >= hold_expires_at_ms - WAIT_FOR_FAULT_MARGIN_MS {
            return false;
        }
        tokio::time::sleep(WAIT_FOR_FAULT_POLL).await;
    }
}

async fn charge(ctx: &LoadContext, rng: &mut StdRng, member: &mut MemberRec) {
    if let Some(charge) = send_charge(ctx, rng, &member.key, &member.label()).await {
        member.charges.push(charge);
    }
}

/// One charge of a unique amount for the member with key `member_key`
/// (`None` once the round's amounts are used up).
async fn send_charge(ctx: &LoadContext, rng: &mut StdRng, member_key: &str, label: &str) -> Option<ChargeRec> {
    let seq = ctx.next_charge_seq()?;
    // Some members stay too poor to pay (402, the hold then expires).
    let units: i64 = if rng.random_bool(0.15) {
        0
    } else {
        rng.random_range(1..=3)
    };
    let amount = units * CHARGE_UNIT + seq;
    let keyed = rng.random_bool(0.35) || ctx.policy.always_keyed;
    let idempotency_key = keyed.then(|| format!("drill-{}-charge-{seq}", ctx.tag));
    let (api, key) = (&ctx.api, idempotency_key.as_deref());
    let tried = retry::send(
        &ctx.ledger,
        "POST /members/me/balance/charges",
        ctx.retries(idempotency_key.as_ref()),
        || api.charge(member_key, amount, key),
    )
    .await;
    let sent = &tried.last;
    if let (Some(key), Ok(first)) = (&idempotency_key, sent) {
        if first.is_success() && rng.random_bool(0.5) && !ctx.stopped() {
            let again = ctx.api.charge(member_key, amount, Some(key)).await;
            ctx.count("POST /members/me/balance/charges (replay)", &again);
            check_replay(ctx, label, "charge", key, first, &again);
        }
    }
    Some(ChargeRec {
        amount,
        idempotency_key,
        attempt: tried.attempt(),
        retried: tried.retried(),
    })
}

/// A replay must answer exactly the first response (when it is answered).
fn check_replay(ctx: &LoadContext, who: &str, what: &str, key: &str, first: &Reply, again: &Sent) {
    if let Ok(again) = again {
        if again.status != first.status || again.body != first.body {
            ctx.ledger.violation(Violation::new(
                "idempotency-replay",
                format!(
                    "{who}: replaying the {what} with Idempotency-Key {key} before the crash answered {} {} \
                     instead of the first response {} {}",
                    again.status, again.body, first.status, first.body
                ),
            ));
        }
    }
}

/// `POST /queue/tokens`; records the token when acknowledged.
async fn take_token(ctx: &LoadContext, member: &mut MemberRec, issue_seq: Option<u32>) -> bool {
    let sent = ctx.api.issue_token(&member.key).await;
    ctx.count("POST /queue/tokens", &sent);
    let Ok(reply) = sent else {
        return false;
    };
    let token = str_at(&reply.body, "token").filter(|_| reply.is_success());
    let Some(token) = token else {
        return false;
    };
    member.token = Some(TokenRec {
        token: token.to_owned(),
        issue_seq,
        issued_status: str_at(&reply.body, "status").unwrap_or("?").to_owned(),
        active: None,
    });
    true
}

/// Polls the member's token until ACTIVE (bounded); records `activeUntil`.
async fn wait_active(ctx: &LoadContext, member: &mut MemberRec) -> bool {
    for _ in 0..MAX_ACTIVE_POLLS {
        if ctx.stopped() {
            return false;
        }
        match poll_token(ctx, member).await.as_deref() {
            Some("ACTIVE") => return true,
            Some("WAITING") => tokio::time::sleep(ACTIVE_POLL).await,
            _ => return false,
        }
    }
    false
}

/// One `GET /queue/status`; records `activeUntil` when ACTIVE. Returns the status.
async fn poll_token(ctx: &LoadContext, member: &mut MemberRec) -> Option<String> {
    let token = member.token.as_mut()?;
    let sent = ctx.api.queue_status(&token.token).await;
    ctx.count("GET /queue/status", &sent);
    let reply = sent.ok().filter(|r| r.status == 200)?;
    let status = str_at(&reply.body, "status")?.to_owned();
    if status == "ACTIVE" && token.active.is_none() {
        let until_raw = str_at(&reply.body, "activeUntil").unwrap_or_default().to_owned();
        if let Some(until_ms) = time_ms(&until_raw) {
            token.active = Some(ActiveSeen {
                until_ms,
                until_raw,
                seen_ms: now_ms(),
            });
        }
    }
    Some(status)
}

/// Tries to hold 1..=2 seats (mostly among those listed AVAILABLE); returns
/// the index of the acknowledged hold.
async fn hold(ctx: &LoadContext, rng: &mut StdRng, member: &mut MemberRec) -> Option<usize> {
    let token = member.token.as_ref()?.token.clone();
    for attempt in 0..MAX_HOLD_ATTEMPTS {
        if ctx.stopped() || ctx.concerts.is_empty() {
            return None;
        }
        let concert = &ctx.concerts[rng.random_range(0..ctx.concerts.len())];
        let mut candidates: Vec<u32> = (1..=concert.seat_count).collect();
        if rng.random_bool(0.7) {
            let sent = ctx.api.seats(&token, concert.id, Some("AVAILABLE")).await;
            ctx.count("GET /concerts/{id}/seats", &sent);
            if let Ok(reply) = sent.as_ref().map(|r| &r.body) {
                let listed: Vec<u32> = reply["seats"]
                    .as_array()
                    .map(|seats| {
                        seats
                            .iter()
                            .filter_map(|s| u64_at(s, "number").and_then(|n| u32::try_from(n).ok()))
                            .collect()
                    })
                    .unwrap_or_default();
                if !listed.is_empty() {
                    candidates = listed;
                }
            }
        }
        let wanted = rng.random_range(1..=2usize).min(candidates.len());
        let mut seats = Vec::with_capacity(wanted);
        while seats.len() < wanted {
            let seat = candidates.swap_remove(rng.random_range(0..candidates.len()));
            seats.push(seat);
        }
        seats.sort_unstable();
        let idempotency_key = ctx
            .policy
            .always_keyed
            .then(|| format!("drill-{}-hold-{}-{attempt}", ctx.tag, member.id));
        let (api, key, concert_id) = (&ctx.api, idempotency_key.as_deref(), concert.id);
        let tried = retry::send(
            &ctx.ledger,
            "POST /reservations",
            ctx.retries(idempotency_key.as_ref()),
            || api.hold(&token, concert_id, &seats, key),
        )
        .await;
        let retried = tried.retried();
        let attempt = tried.attempt();
        match tried.last {
            Ok(reply) if reply.status == 201 => {
                return record_hold(ctx, member, &reply.body, (idempotency_key, retried));
            }
            Ok(reply) if reply.status == 409 && retried.is_none() => continue,
            _ if attempt.in_doubt() => {
                member.holds_in_doubt.push(HoldInDoubt {
                    concert_id,
                    seats,
                    idempotency_key,
                    attempt,
                    retried,
                });
                return None;
            }
            _ => return None,
        }
    }
    None
}

/// Records an acknowledged hold; `tried` is its key and what it retried.
fn record_hold(
    ctx: &LoadContext,
    member: &mut MemberRec,
    body: &Value,
    tried: (Option<String>, Option<String>),
) -> Option<usize> {
    let (idempotency_key, retried) = tried;
    let expires_at_raw = str_at(body, "expiresAt").unwrap_or_default().to_owned();
    let parsed = (|| {
        let seats = body["seatNumbers"]
            .as_array()?
            .iter()
            .map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect::<Option<Vec<u32>>>()?;
        Some(HoldRec {
            id: u64_at(body, "id")?,
            concert_id: u64_at(body, "concertId")?,
            seats,
            amount: i64_at(body, "amount")?,
            expires_at_ms: time_ms(&expires_at_raw)?,
            expires_at_raw: expires_at_raw.clone(),
            pay: None,
            cancel: None,
            idempotency_key: idempotency_key.clone(),
            retried: retried.clone(),
            cancel_key: None,
            cancel_retried: None,
        })
    })();
    match parsed {
        Some(hold) => {
            member.holds.push(hold);
            Some(member.holds.len() - 1)
        }
        None => {
            ctx.ledger.violation(Violation::new(
                "malformed-response",
                format!(
                    "{}: POST /reservations 201 has an unreadable body {body}",
                    member.label()
                ),
            ));
            None
        }
    }
}

async fn pay(ctx: &LoadContext, rng: &mut StdRng, member: &mut MemberRec, hold_index: usize) {
    let Some(token) = member.token.as_ref().map(|t| t.token.clone()) else {
        return;
    };
    let reservation = member.holds[hold_index].id;
    let keyed = rng.random_bool(0.4) || ctx.policy.always_keyed;
    let idempotency_key = keyed.then(|| format!("drill-{}-pay-{reservation}", ctx.tag));
    let (api, key) = (&ctx.api, idempotency_key.as_deref());
    let tried = retry::send(
        &ctx.ledger,
        "POST /payments",
        ctx.retries(idempotency_key.as_ref()),
        || api.pay(&token, reservation, key),
    )
    .await;
    let sent = &tried.last;
    if let (Some(key), Ok(first)) = (&idempotency_key, sent) {
        if first.is_success() && rng.random_bool(0.5) && !ctx.stopped() {
            let again = ctx.api.pay(&token, reservation, Some(key)).await;
            ctx.count("POST /payments (replay)", &again);
            check_replay(ctx, &member.label(), "payment", key, first, &again);
        }
    }
    member.holds[hold_index].pay = Some(PayRec {
        idempotency_key,
        attempt: tried.attempt(),
        retried: tried.retried(),
    });
}

async fn cancel(ctx: &LoadContext, rng: &mut StdRng, member: &mut MemberRec, hold_index: usize) {
    let reservation = member.holds[hold_index].id;
    let token = member.token.as_ref().map(|t| t.token.clone());
    let cred = match &token {
        Some(token) if rng.random_bool(0.5) => Cred::Token(token),
        _ => Cred::Member(&member.key),
    };
    let idempotency_key = ctx
        .policy
        .always_keyed
        .then(|| format!("drill-{}-cancel-{reservation}", ctx.tag));
    let (api, key) = (&ctx.api, idempotency_key.as_deref());
    let tried = retry::send(
        &ctx.ledger,
        "DELETE /reservations/{id}",
        ctx.retries(idempotency_key.as_ref()),
        || api.cancel(cred, reservation, key),
    )
    .await;
    let hold = &mut member.holds[hold_index];
    hold.cancel = Some(tried.attempt());
    hold.cancel_retried = tried.retried();
    hold.cancel_key = idempotency_key;
}

/// Registers members and issues their tokens strictly one after another, so
/// the issue order is known; never polls them except once, a few steps later,
/// to learn `activeUntil` once admitted.
async fn queue_watcher(ctx: Arc<LoadContext>, mut rng: StdRng) {
    let mut members: Vec<MemberRec> = Vec::new();
    for seq in 0..MAX_QUEUE_MEMBERS {
        if ctx.stopped() {
            break;
        }
        let name = format!("drill-{}-q{seq}", ctx.tag);
        if let Some(mut member) = register(&ctx, &name).await {
            if !ctx.stopped() {
                take_token(&ctx, &mut member, Some(seq)).await;
            }
            members.push(member);
        }
        if members.len() > 3 && !ctx.stopped() {
            let index = members.len() - 4;
            poll_token(&ctx, &mut members[index]).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..=60))).await;
    }
    for member in members {
        ctx.ledger.add_member(member);
    }
}
