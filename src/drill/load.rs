//! The load before the crash: the concerts, then virtual users that each loop
//! register -> charge -> queue token -> wait for ACTIVE -> hold -> pay, cancel
//! or walk away, plus one queue watcher issuing tokens one after another (so
//! their issue order is known). Everything acknowledged goes to the
//! [`Ledger`]. Every loop is bounded in count and checks the stop flag.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::client::{i64_at, now_ms, str_at, time_ms, u64_at, Api, Cred, Reply, Sent};
use super::ledger::{ActiveSeen, Attempt, ChargeRec, ConcertRec, HoldRec, Ledger, MemberRec, PayRec, TokenRec};
use super::Violation;

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
    match rng.random_range(0..100u32) {
        0..55 => pay(ctx, rng, member, hold_index).await,
        55..80 => cancel(ctx, rng, member, hold_index).await,
        _ => {} // left to expire
    }
}

async fn charge(ctx: &LoadContext, rng: &mut StdRng, member: &mut MemberRec) {
    let Some(seq) = ctx.next_charge_seq() else {
        return;
    };
    // Some members stay too poor to pay (402, the hold then expires).
    let units: i64 = if rng.random_bool(0.15) {
        0
    } else {
        rng.random_range(1..=3)
    };
    let amount = units * CHARGE_UNIT + seq;
    let idempotency_key = rng.random_bool(0.35).then(|| format!("drill-{}-charge-{seq}", ctx.tag));
    let sent = ctx.api.charge(&member.key, amount, idempotency_key.as_deref()).await;
    ctx.count("POST /members/me/balance/charges", &sent);
    let attempt = Attempt::from_sent(&sent);
    if let (Some(key), Ok(first)) = (&idempotency_key, &sent) {
        if first.is_success() && rng.random_bool(0.5) && !ctx.stopped() {
            let again = ctx.api.charge(&member.key, amount, Some(key)).await;
            ctx.count("POST /members/me/balance/charges (replay)", &again);
            check_replay(ctx, &member.label(), "charge", key, first, &again);
        }
    }
    member.charges.push(ChargeRec {
        amount,
        idempotency_key,
        attempt,
    });
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
    for _ in 0..MAX_HOLD_ATTEMPTS {
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
        let sent = ctx.api.hold(&token, concert.id, &seats).await;
        ctx.count("POST /reservations", &sent);
        match sent {
            Ok(reply) if reply.status == 201 => return record_hold(ctx, member, &reply.body),
            Ok(reply) if reply.status == 409 => continue,
            _ => return None,
        }
    }
    None
}

fn record_hold(ctx: &LoadContext, member: &mut MemberRec, body: &Value) -> Option<usize> {
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
    let idempotency_key = rng
        .random_bool(0.4)
        .then(|| format!("drill-{}-pay-{reservation}", ctx.tag));
    let sent = ctx.api.pay(&token, reservation, idempotency_key.as_deref()).await;
    ctx.count("POST /payments", &sent);
    if let (Some(key), Ok(first)) = (&idempotency_key, &sent) {
        if first.is_success() && rng.random_bool(0.5) && !ctx.stopped() {
            let again = ctx.api.pay(&token, reservation, Some(key)).await;
            ctx.count("POST /payments (replay)", &again);
            check_replay(ctx, &member.label(), "payment", key, first, &again);
        }
    }
    member.holds[hold_index].pay = Some(PayRec {
        idempotency_key,
        attempt: Attempt::from_sent(&sent),
    });
}

async fn cancel(ctx: &LoadContext, rng: &mut StdRng, member: &mut MemberRec, hold_index: usize) {
    let reservation = member.holds[hold_index].id;
    let token = member.token.as_ref().map(|t| t.token.clone());
    let cred = match &token {
        Some(token) if rng.random_bool(0.5) => Cred::Token(token),
        _ => Cred::Member(&member.key),
    };
    let sent = ctx.api.cancel(cred, reservation).await;
    ctx.count("DELETE /reservations/{id}", &sent);
    member.holds[hold_index].cancel = Some(Attempt::from_sent(&sent));
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
