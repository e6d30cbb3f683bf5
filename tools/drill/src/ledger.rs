//! What the load was told before the crash or during the fault: every write
//! answered 2xx (acknowledged: it must survive), every write whose outcome is
//! unknown (no answer, or 503 UNAVAILABLE, which the contract calls "outcome
//! unknown": it may or may not have happened, but at most once), every
//! refusal that came only on a retry after such an unknown outcome (the
//! contract forbids it when the first attempt did happen), and every definite
//! refusal. The virtual users fill it; the checks read a snapshot of it.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde_json::Value;

use super::client::{i64_at, Sent};
use super::Violation;

/// The outcome of one write, as the client saw it (after its retries, if any).
#[derive(Debug, Clone)]
pub enum Attempt {
    /// Answered 2xx; the body.
    Acked(Value),
    /// Answered with an error at the first try: it did not happen.
    Refused(String),
    /// No answer (the crash cut it) or 503 to the last try: it may or may not
    /// have happened.
    InDoubt,
    /// A 4xx (e.g. `401 TOKEN_INVALID`) that came only on a retry after an
    /// unknown outcome (the record's `retried`). The first try may have
    /// happened; if it did, this answer broke the contract (a retry returns
    /// the real outcome), which the fault checks report as `retry-converged`.
    RefusedOnRetry(String),
}

impl Attempt {
    /// A 503 is "outcome unknown" (v1.1), like no answer at all.
    pub fn from_sent(sent: &Sent) -> Self {
        match sent {
            Ok(reply) if reply.is_success() => Self::Acked(reply.body.clone()),
            Ok(reply) if reply.status == 503 => Self::InDoubt,
            Ok(reply) => Self::Refused(reply.describe()),
            Err(_) => Self::InDoubt,
        }
    }

    /// A refusal that came on a retry, with the answers before it.
    pub fn refused_on_retry(&self) -> Option<&str> {
        match self {
            Self::RefusedOnRetry(why) => Some(why),
            _ => None,
        }
    }

    pub fn acked(&self) -> Option<&Value> {
        match self {
            Self::Acked(body) => Some(body),
            _ => None,
        }
    }

    /// Whether it may have happened without the client knowing.
    pub fn in_doubt(&self) -> bool {
        matches!(self, Self::InDoubt | Self::RefusedOnRetry(_))
    }

    /// For messages: `acknowledged`, `refused (409 ...)`, ...
    pub fn describe(&self) -> String {
        match self {
            Self::Acked(_) => "acknowledged".to_owned(),
            Self::Refused(why) => format!("refused ({why})"),
            Self::InDoubt => "in doubt (no answer, or 503 to its last try)".to_owned(),
            Self::RefusedOnRetry(why) => format!("refused on a retry ({why})"),
        }
    }
}

/// `, after 503 UNAVAILABLE x2` for a write acknowledged only on a retry.
fn after(retried: Option<&String>) -> String {
    retried.map_or_else(String::new, |unknown| format!(" after {unknown}"))
}

/// A concert the admin API acknowledged, with the price of every seat.
#[derive(Debug, Clone)]
pub struct ConcertRec {
    pub id: u64,
    pub title: String,
    pub seat_count: u32,
    /// `prices[n - 1]` is the price of seat `n`.
    pub prices: Vec<i64>,
}

#[derive(Debug, Clone)]
pub struct ChargeRec {
    /// Unique within the round, so the charge can be found in a history.
    pub amount: i64,
    pub idempotency_key: Option<String>,
    pub attempt: Attempt,
    /// The unknown outcomes retried before the last answer (`503 UNAVAILABLE x2`).
    pub retried: Option<String>,
}

impl ChargeRec {
    /// The acknowledged balance after the charge.
    pub fn acked_balance(&self) -> Option<i64> {
        self.attempt.acked().and_then(|body| i64_at(body, "balance"))
    }
}

/// A token the client saw ACTIVE, with the `activeUntil` it was told.
#[derive(Debug, Clone)]
pub struct ActiveSeen {
    pub until_ms: i64,
    pub until_raw: String,
    /// When the client saw it (Unix ms).
    pub seen_ms: i64,
}

#[derive(Debug, Clone)]
pub struct TokenRec {
    pub token: String,
    /// Issue order, for tokens issued one after another by the queue watcher.
    pub issue_seq: Option<u32>,
    /// The status `POST /queue/tokens` acknowledged.
    pub issued_status: String,
    pub active: Option<ActiveSeen>,
}

#[derive(Debug, Clone)]
pub struct PayRec {
    pub idempotency_key: Option<String>,
    pub attempt: Attempt,
    /// The unknown outcomes retried before the last answer.
    pub retried: Option<String>,
}

/// An acknowledged hold (`POST /reservations` 201) and what followed.
#[derive(Debug, Clone)]
pub struct HoldRec {
    pub id: u64,
    pub concert_id: u64,
    pub seats: Vec<u32>,
    pub amount: i64,
    pub expires_at_ms: i64,
    pub expires_at_raw: String,
    pub pay: Option<PayRec>,
    pub cancel: Option<Attempt>,
    /// The hold's Idempotency-Key (fault rounds) and the unknown outcomes
    /// retried before it was acknowledged.
    pub idempotency_key: Option<String>,
    pub retried: Option<String>,
    /// The cancel's Idempotency-Key and the unknown outcomes it retried.
    pub cancel_key: Option<String>,
    pub cancel_retried: Option<String>,
}

impl HoldRec {
    pub fn paid(&self) -> Option<&Value> {
        self.pay.as_ref().and_then(|pay| pay.attempt.acked())
    }

    pub fn pay_in_doubt(&self) -> bool {
        self.pay.as_ref().is_some_and(|pay| pay.attempt.in_doubt())
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.acked().is_some())
    }

    pub fn cancel_in_doubt(&self) -> bool {
        self.cancel.as_ref().is_some_and(Attempt::in_doubt)
    }

    /// Statuses allowed right after the restart.
    pub fn statuses_now(&self) -> &'static [&'static str] {
        if self.paid().is_some() {
            &["CONFIRMED"]
        } else if self.cancelled() {
            &["CANCELLED"]
        } else if self.pay_in_doubt() {
            &["CONFIRMED", "PENDING_PAYMENT", "EXPIRED"]
        } else if self.cancel_in_doubt() {
            &["CANCELLED", "PENDING_PAYMENT", "EXPIRED"]
        } else {
            &["PENDING_PAYMENT", "EXPIRED"]
        }
    }

    /// Statuses allowed once every hold's deadline has passed.
    pub fn statuses_final(&self) -> &'static [&'static str] {
        if self.paid().is_some() {
            &["CONFIRMED"]
        } else if self.cancelled() {
            &["CANCELLED"]
        } else if self.pay_in_doubt() {
            &["CONFIRMED", "EXPIRED"]
        } else if self.cancel_in_doubt() {
            &["CANCELLED", "EXPIRED"]
        } else {
            &["EXPIRED"]
        }
    }

    /// What the client did with the hold, for messages.
    pub fn story(&self) -> String {
        let pay = match &self.pay {
            None => String::new(),
            Some(pay) => format!(
                ", payment {}{}{}",
                pay.attempt.describe(),
                after(pay.retried.as_ref()),
                pay.idempotency_key
                    .as_ref()
                    .map_or_else(String::new, |key| format!(" (Idempotency-Key {key})"))
            ),
        };
        let cancel = match &self.cancel {
            None => String::new(),
            Some(attempt) => format!(
                ", cancel {}{}{}",
                attempt.describe(),
                after(self.cancel_retried.as_ref()),
                self.cancel_key
                    .as_ref()
                    .map_or_else(String::new, |key| format!(" (Idempotency-Key {key})"))
            ),
        };
        format!(
            "reservation {} (concert {}, seats {:?}, amount {}, expiresAt {}, held{}{}{pay}{cancel})",
            self.id,
            self.concert_id,
            self.seats,
            self.amount,
            self.expires_at_raw,
            after(self.retried.as_ref()),
            self.idempotency_key
                .as_ref()
                .map_or_else(String::new, |key| format!(" (Idempotency-Key {key})"))
        )
    }
}

/// A hold (`POST /reservations`) whose outcome stayed unknown, or that was
/// refused only on a retry: a reservation with these seats may exist.
#[derive(Debug, Clone)]
pub struct HoldInDoubt {
    pub concert_id: u64,
    /// Sorted.
    pub seats: Vec<u32>,
    pub idempotency_key: Option<String>,
    pub attempt: Attempt,
    pub retried: Option<String>,
}

impl HoldInDoubt {
    pub fn story(&self) -> String {
        format!(
            "the hold of seats {:?} of concert {}{} {}{}",
            self.seats,
            self.concert_id,
            self.idempotency_key
                .as_ref()
                .map_or_else(String::new, |key| format!(" (Idempotency-Key {key})")),
            self.attempt.describe(),
            after(self.retried.as_ref())
        )
    }
}

/// A member whose registration was acknowledged (so the drill has its key).
#[derive(Debug, Clone)]
pub struct MemberRec {
    pub id: u64,
    pub name: String,
    pub key: String,
    pub charges: Vec<ChargeRec>,
    pub token: Option<TokenRec>,
    pub holds: Vec<HoldRec>,
    /// Holds that may exist without the client knowing their id.
    pub holds_in_doubt: Vec<HoldInDoubt>,
}

impl MemberRec {
    pub fn label(&self) -> String {
        format!("member {} ({})", self.id, self.name)
    }

    /// Whether a payment of this member was acknowledged or may have happened.
    pub fn payment_acked(&self) -> bool {
        self.holds.iter().any(|h| h.paid().is_some())
    }

    pub fn payment_in_doubt(&self) -> bool {
        self.holds.iter().any(HoldRec::pay_in_doubt)
    }
}

/// Request counters of the load.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    pub requests: u64,
    pub answered_2xx: u64,
    pub answered_error: u64,
    pub in_doubt: u64,
    pub server_errors: u64,
    /// Error answers by `status code`, e.g. `409 SEAT_UNAVAILABLE`.
    pub refusals: BTreeMap<String, u64>,
    /// Unknown outcomes (503 or no answer) by request, e.g. `POST /payments (retry)`.
    pub unknown: BTreeMap<String, u64>,
}

/// Everything the load recorded, shared by the virtual users.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Recorded>,
}

/// A copy of the ledger's content.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub concerts: Vec<ConcertRec>,
    pub members: Vec<MemberRec>,
    /// Contract violations seen while the load ran (before the crash).
    pub violations: Vec<Violation>,
    pub stats: LoadStats,
}

impl Ledger {
    pub fn add_concert(&self, concert: ConcertRec) {
        self.inner.lock().concerts.push(concert);
    }

    pub fn add_member(&self, member: MemberRec) {
        self.inner.lock().members.push(member);
    }

    pub fn violation(&self, violation: Violation) {
        self.inner.lock().violations.push(violation);
    }

    /// Counts one request; a 5xx other than 503 UNAVAILABLE is a violation
    /// ("never a 500").
    pub fn count(&self, what: &str, sent: &Sent) {
        let mut inner = self.inner.lock();
        inner.stats.requests += 1;
        match sent {
            Ok(reply) if reply.is_success() => inner.stats.answered_2xx += 1,
            Ok(reply) => {
                inner.stats.answered_error += 1;
                *inner.stats.refusals.entry(reply.describe()).or_default() += 1;
                if reply.status == 503 {
                    *inner.stats.unknown.entry(what.to_owned()).or_default() += 1;
                }
                if reply.status >= 500 {
                    inner.stats.server_errors += 1;
                    if reply.status != 503 {
                        inner.violations.push(Violation::new(
                            "server-error",
                            format!("{what} answered {} before the crash", reply.describe()),
                        ));
                    }
                }
            }
            Err(_) => {
                inner.stats.in_doubt += 1;
                *inner.stats.unknown.entry(what.to_owned()).or_default() += 1;
            }
        }
    }

    pub fn snapshot(&self) -> Recorded {
        self.inner.lock().clone()
    }
}

impl Recorded {
    /// One line: what was acknowledged.
    pub fn summary(&self) -> String {
        let members = self.members.len();
        let charges = self.count(|m| m.charges.iter().filter(|c| c.attempt.acked().is_some()).count());
        let tokens = self.count(|m| usize::from(m.token.is_some()));
        let holds = self.count(|m| m.holds.len());
        let payments = self.count(|m| m.holds.iter().filter(|h| h.paid().is_some()).count());
        let cancels = self.count(|m| m.holds.iter().filter(|h| h.cancelled()).count());
        let s = &self.stats;
        let mut refusals: Vec<(&String, &u64)> = s.refusals.iter().collect();
        refusals.sort_by(|a, b| b.1.cmp(a.1));
        let refusals: Vec<String> = refusals
            .iter()
            .take(4)
            .map(|(what, n)| format!("{what} x{n}"))
            .collect();
        format!(
            "acknowledged {} concerts, {members} members, {charges} charges, {tokens} queue tokens, \
             {holds} holds, {payments} payments, {cancels} cancels; {} requests ({} 2xx, {} errors [{}], \
             {} 5xx, {} cut by the crash)",
            self.concerts.len(),
            s.requests,
            s.answered_2xx,
            s.answered_error,
            refusals.join(", "),
            s.server_errors,
            s.in_doubt
        )
    }

    fn count(&self, per_member: impl Fn(&MemberRec) -> usize) -> usize {
        self.members.iter().map(per_member).sum()
    }
}
