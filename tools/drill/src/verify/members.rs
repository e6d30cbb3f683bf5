//! Right after the restart, per member: authentication, idempotent
//! replays, charges, holds, payments, cancels and money.

use std::sync::Arc;

use serde_json::Value;

use super::super::client::{i64_at, str_at, time_ms, u64_at, Api, Sent};
use super::super::ledger::{Attempt, MemberRec};
use super::super::Violation;
use super::{Coverage, Facts, MAX_BALANCE};

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
pub(super) struct Shown {
    pub(super) id: u64,
    pub(super) concert_id: u64,
    pub(super) seats: Vec<u32>,
    pub(super) amount: i64,
    pub(super) status: String,
    pub(super) expires_at: String,
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
pub(super) async fn reservations_of(api: &Api, member: &MemberRec) -> Result<Vec<Shown>, Violation> {
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
pub(super) async fn durable_member(api: Api, facts: Arc<Facts>, index: usize) -> (Vec<Violation>, bool, Coverage) {
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
