//! Right after the restart: the queue tokens (first, since ticks keep
//! admitting WAITING tokens) and the concerts.

use std::collections::HashMap;

use super::super::client::{str_at, time_ms, u64_at, Api, Sent};
use super::super::ledger::{ConcertRec, MemberRec, TokenRec};
use super::super::Violation;
use super::{Coverage, Facts, ACTIVE_GRACE_MS};

// ---------------------------------------------------------------- queue

/// Watcher tokens (issued one after another) are polled latest first: a
/// later token seen ACTIVE means every earlier one is ACTIVE when polled
/// after it, and an earlier WAITING token's position can only be smaller than
/// a later one's seen before. Then every acknowledged token must be known.
pub(super) async fn check_queue(api: &Api, facts: &Facts, out: &mut Vec<Violation>, coverage: &mut Coverage) {
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
pub(super) async fn check_concerts<'a>(api: &Api, facts: &'a Facts, out: &mut Vec<Violation>) -> Vec<&'a ConcertRec> {
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
