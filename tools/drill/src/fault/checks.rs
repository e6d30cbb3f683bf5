//! The fault rounds' own checks, on top of [`crate::verify`]:
//!
//! - `writes-resume`: once the fault is over, a fresh write (a new member,
//!   then a charge without a key) succeeds within a bound, without a restart;
//!   `ready-resume`: then `GET /ready` is 200 again within the same bound;
//! - `money-conserved`: per member, balance + CONFIRMED reservations lies
//!   between the charges acknowledged and those plus the charges in doubt
//!   (a retried charge counted once: its amount is unique);
//! - `payment-retry-converged`, `cancel-retry-converged`,
//!   `hold-retry-converged`: a payment, cancel or hold refused on a retry
//!   after a 503 (or no answer) did happen (the reservation is CONFIRMED,
//!   CANCELLED, or exists): the retry had to return the real outcome;
//! - `hold-retry-applied-twice`: a hold retried with its key created two
//!   reservations of the same seats;
//!
//! (`charge-retry-applied-twice` and `charge-retry-converged` are in
//! `verify::members::check_charges`, which matches charges against the history.)
//! - `hold-unknown`: a reservation of a member that no hold of the client
//!   can explain.

use std::time::{Duration, Instant};

use super::super::client::{i64_at, str_at, u64_at, Api};
use super::super::ledger::{Attempt, MemberRec, Recorded};
use super::super::Violation;

/// Pause between the resume probe's tries.
const RESUME_POLL: Duration = Duration::from_millis(100);

/// Registers a member, then charges it (no key, a fresh write), retrying
/// each until it succeeds or `bound` (from now) passes. Returns how long
/// writes took to come back.
pub async fn writes_resume(api: &Api, tag: &str, bound: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = started + bound;
    let mut last = String::from("no try");
    let mut member_key: Option<String> = None;
    while Instant::now() < deadline {
        let sent = match &member_key {
            None => api.register(&format!("drill-{tag}-resume")).await,
            Some(key) => api.charge(key, 1_000, None).await,
        };
        match sent {
            Ok(reply) if reply.status == 201 && member_key.is_none() => {
                member_key = str_at(&reply.body, "memberKey").map(str::to_owned);
                if member_key.is_none() {
                    return Err(format!("POST /members 201 has no memberKey: {}", reply.body));
                }
                continue;
            }
            Ok(reply) if reply.status == 200 && member_key.is_some() => return Ok(started.elapsed()),
            Ok(reply) => last = reply.describe(),
            Err(err) => last = err,
        }
        tokio::time::sleep(RESUME_POLL).await;
    }
    let step = if member_key.is_some() {
        "POST /members/me/balance/charges"
    } else {
        "POST /members"
    };
    Err(format!(
        "no fresh write succeeded within {:.1}s of the fault's end: {step} last answered {last}",
        bound.as_secs_f64()
    ))
}

/// Polls `GET /ready` until 200 (the server answers 503 while the database
/// fails or the tables lag behind the journal), at most `bound`.
pub async fn ready_again(api: &Api, bound: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < bound {
        last = api.ready().await;
        if last == Some(200) {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(RESUME_POLL).await;
    }
    Err(format!(
        "GET /ready was not 200 within {:.1}s after writes resumed (last: {})",
        bound.as_secs_f64(),
        last.map_or_else(|| "no answer".to_owned(), |status| status.to_string())
    ))
}

/// What the member checks looked at, for the round's report.
#[derive(Debug, Default)]
pub struct Tally {
    members: usize,
    /// Balances + CONFIRMED amounts, over the members.
    server_money: i64,
    charged_acked: i64,
    charged_in_doubt: i64,
    retried: usize,
    unknown_reservations: usize,
}

impl Tally {
    pub fn summary(&self) -> String {
        format!(
            "fault checks: {} members; balances + CONFIRMED reservations = {} (acknowledged charges {}, \
             plus up to {} in doubt); {} writes retried after 503 or no answer; {} reservations the clients \
             never learnt the id of",
            self.members,
            self.server_money,
            self.charged_acked,
            self.charged_in_doubt,
            self.retried,
            self.unknown_reservations
        )
    }
}

/// A reservation as `GET /members/me/reservations` shows it.
struct Shown {
    id: u64,
    concert: u64,
    seats: Vec<u32>,
    amount: i64,
    status: String,
}

/// The money, retry and unknown-reservation checks for every member.
pub async fn check_members(api: &Api, recorded: &Recorded, out: &mut Vec<Violation>) -> Tally {
    let mut tally = Tally::default();
    for member in &recorded.members {
        if api.broken() {
            out.push(Violation::new(
                "verify",
                "the server stopped answering; fault checks skipped",
            ));
            break;
        }
        match read_member(api, member).await {
            Ok((balance, shown)) => check_member(member, balance, &shown, out, &mut tally),
            Err(err) => out.push(Violation::new("verify", format!("{}: {err}", member.label()))),
        }
    }
    tally
}

async fn read_member(api: &Api, member: &MemberRec) -> Result<(i64, Vec<Shown>), String> {
    let me = api.me(&member.key).await?;
    let balance = i64_at(&me.body, "balance")
        .filter(|_| me.status == 200)
        .ok_or_else(|| format!("GET /members/me answered {}", me.describe()))?;
    let listed = api.my_reservations(&member.key).await?;
    if listed.status != 200 {
        return Err(format!("GET /members/me/reservations answered {}", listed.describe()));
    }
    let shown = listed.body["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .map(|item| {
                    let mut seats = item["seatNumbers"]
                        .as_array()?
                        .iter()
                        .map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()))
                        .collect::<Option<Vec<u32>>>()?;
                    seats.sort_unstable();
                    Some(Shown {
                        id: u64_at(item, "id")?,
                        concert: u64_at(item, "concertId")?,
                        seats,
                        amount: i64_at(item, "amount")?,
                        status: str_at(item, "status")?.to_owned(),
                    })
                })
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| format!("GET /members/me/reservations is unreadable: {}", listed.body))?;
    Ok((balance, shown))
}

fn check_member(member: &MemberRec, balance: i64, shown: &[Shown], out: &mut Vec<Violation>, tally: &mut Tally) {
    let label = member.label();
    tally.members += 1;
    tally.retried += member.charges.iter().filter(|c| c.retried.is_some()).count()
        + member.holds.iter().filter(|h| h.retried.is_some()).count()
        + member
            .holds
            .iter()
            .filter(|h| h.pay.as_ref().is_some_and(|p| p.retried.is_some()))
            .count()
        + member.holds.iter().filter(|h| h.cancel_retried.is_some()).count()
        + member.holds_in_doubt.iter().filter(|h| h.retried.is_some()).count();

    // Money: every amount is unique in the round, so a charge applied twice
    // shows as more money than the client was ever told about.
    let confirmed: i64 = shown.iter().filter(|r| r.status == "CONFIRMED").map(|r| r.amount).sum();
    let acked: i64 = member
        .charges
        .iter()
        .filter(|c| c.attempt.acked().is_some())
        .map(|c| c.amount)
        .sum();
    let in_doubt: i64 = member
        .charges
        .iter()
        .filter(|c| c.attempt.in_doubt())
        .map(|c| c.amount)
        .sum();
    let money = balance + confirmed;
    tally.server_money += money;
    tally.charged_acked += acked;
    tally.charged_in_doubt += in_doubt;
    if money < acked || money > acked + in_doubt {
        // A charge applied twice by its retry shows as exactly its amount too much.
        let retried_acked: Vec<i64> = member
            .charges
            .iter()
            .filter(|c| c.retried.is_some() && c.attempt.acked().is_some())
            .map(|c| c.amount)
            .collect();
        let excess = money - acked - in_doubt;
        let cause = if excess > 0 && retried_acked.iter().sum::<i64>() == excess {
            format!(
                "; the excess {excess} is exactly the charges {retried_acked:?} that were acknowledged only on \
                 a retry after 503: applied twice"
            )
        } else {
            String::new()
        };
        let charges: Vec<String> = member
            .charges
            .iter()
            .map(|c| {
                let key = c.idempotency_key.as_deref().unwrap_or("no key");
                let retried = c.retried.as_ref().map_or_else(String::new, |r| format!(" after {r}"));
                format!("{} [{key}] {}{retried}", c.amount, c.attempt.describe())
            })
            .collect();
        out.push(Violation::new(
            "money-conserved",
            format!(
                "{label}: balance {balance} + CONFIRMED reservations {confirmed} = {money}, outside \
                 [{acked}, {}] (acknowledged charges, plus those in doubt); its charges: {}{cause}",
                acked + in_doubt,
                charges.join("; ")
            ),
        ));
    }

    for hold in &member.holds {
        let Some(now) = shown.iter().find(|r| r.id == hold.id) else {
            continue; // the recovery checks report a missing hold
        };
        if let Some(why) = hold.pay.as_ref().and_then(|p| p.attempt.refused_on_retry()) {
            if now.status == "CONFIRMED" {
                out.push(Violation::new(
                    "payment-retry-converged",
                    format!(
                        "{label}: {} is CONFIRMED, so the payment happened, but its retry with the same key and \
                         body answered {why}: a retry must return the payment's real outcome (201)",
                        hold.story()
                    ),
                ));
            }
        }
        if let Some(why) = hold.cancel.as_ref().and_then(Attempt::refused_on_retry) {
            if now.status == "CANCELLED" {
                out.push(Violation::new(
                    "cancel-retry-converged",
                    format!(
                        "{label}: {} is CANCELLED, so the cancel happened, but its retry with the same key \
                         answered {why}: a retry must return the cancel's real outcome (200)",
                        hold.story()
                    ),
                ));
            }
        }
    }

    for reservation in shown.iter().filter(|r| !member.holds.iter().any(|h| h.id == r.id)) {
        tally.unknown_reservations += 1;
        check_unknown(member, reservation, out);
    }
}

/// A reservation the client never got a 201 for: it must be a hold whose
/// outcome stayed unknown. Refused on its retry, or a second reservation
/// next to the one a retried hold was acknowledged with, is a violation.
fn check_unknown(member: &MemberRec, reservation: &Shown, out: &mut Vec<Violation>) {
    let label = member.label();
    let what = format!(
        "reservation {} (concert {}, seats {:?}, {})",
        reservation.id, reservation.concert, reservation.seats, reservation.status
    );
    let same_seats = |concert: u64, seats: &[u32]| {
        let mut seats = seats.to_vec();
        seats.sort_unstable();
        concert == reservation.concert && seats == reservation.seats
    };
    if let Some(acked) = member
        .holds
        .iter()
        .find(|h| h.retried.is_some() && same_seats(h.concert_id, &h.seats))
    {
        out.push(Violation::new(
            "hold-retry-applied-twice",
            format!(
                "{label}: {what} exists next to {}: the first try of that hold happened and its retry with \
                 the same key and body held the seats again",
                acked.story()
            ),
        ));
        return;
    }
    match member
        .holds_in_doubt
        .iter()
        .find(|h| same_seats(h.concert_id, &h.seats))
    {
        Some(hold) if hold.attempt.refused_on_retry().is_some() => out.push(Violation::new(
            "hold-retry-converged",
            format!(
                "{label}: {what} exists, so {} happened: its retry with the same key and body had to \
                 return the reservation (201), not a refusal",
                hold.story()
            ),
        )),
        Some(_) => {} // the outcome stayed unknown: it may exist
        None => out.push(Violation::new(
            "hold-unknown",
            format!("{label}: {what} matches no hold the client sent whose outcome it does not know"),
        )),
    }
}
