//! Once every hold's deadline has passed: no pending hold, the seat maps
//! against the CONFIRMED reservations, and last the id probes (which write).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::json;

use super::super::client::{i64_at, now_ms, str_at, time_ms, u64_at, Api};
use super::super::ledger::ConcertRec;
use super::super::Violation;
use super::members::reservations_of;
use super::{Coverage, Facts, EXPIRY_SLACK_MS, MAX_PROBE_POLLS, PROBE_POLL};

/// A CONFIRMED reservation, for the seat-map checks.
#[derive(Debug, Clone)]
pub(super) struct Confirmed {
    reservation: u64,
    concert: u64,
    seats: Vec<u32>,
}

/// After every hold's deadline: nothing is PENDING_PAYMENT and every
/// acknowledged hold ended as its story allows. Returns the member's
/// CONFIRMED reservations.
pub(super) async fn final_member(api: Api, facts: Arc<Facts>, index: usize) -> (Vec<Violation>, Vec<Confirmed>) {
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
pub(super) struct Probe {
    key: String,
    token: String,
}

pub(super) async fn register_probe(api: &Api, facts: &Facts, out: &mut Vec<Violation>) -> Option<Probe> {
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
pub(super) async fn check_seats(
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
pub(super) async fn probe_ids(api: &Api, facts: &Facts, probe: &Probe, out: &mut Vec<Violation>) {
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
