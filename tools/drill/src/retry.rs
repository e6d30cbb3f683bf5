//! Writes sent the way the contract (v1.1, "Bodies and failures") tells a
//! client to: an answer that leaves the outcome unknown (503 UNAVAILABLE, or
//! no answer at all) is retried with the SAME `Idempotency-Key` and body,
//! after `Retry-After`, until a definite answer comes or [`RETRY_BUDGET`]
//! runs out. Only keyed writes are retried: without a key a retry could do
//! the write twice, and that would be the client's fault, not the server's.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use super::client::Sent;
use super::ledger::{Attempt, Ledger};

/// How long one write is retried. Longer than every fault (5 s) plus the
/// server's durability timeout (3 s) and its backoff (up to 1 s), so a write
/// caught by a fault normally converges once the fault ends.
pub const RETRY_BUDGET: Duration = Duration::from_secs(30);
/// Pause after no answer at all (a 503 says how long in `Retry-After`).
const NO_ANSWER_PAUSE: Duration = Duration::from_millis(250);
/// `Retry-After` is honoured up to this.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// The last answer of a write, and the unknown outcomes retried before it.
#[derive(Debug)]
pub struct Tried {
    pub last: Sent,
    /// Each unknown outcome, oldest first: `503 UNAVAILABLE` or `no answer`.
    unknown: Vec<&'static str>,
}

impl Tried {
    /// The outcome for the ledger: a refusal after an unknown outcome is
    /// [`Attempt::RefusedOnRetry`], since the first try may have happened.
    pub fn attempt(&self) -> Attempt {
        match Attempt::from_sent(&self.last) {
            Attempt::Refused(why) if !self.unknown.is_empty() => Attempt::RefusedOnRetry(why),
            other => other,
        }
    }

    /// `503 UNAVAILABLE x3, no answer x1`, when anything was retried.
    pub fn retried(&self) -> Option<String> {
        if self.unknown.is_empty() {
            return None;
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for what in &self.unknown {
            *counts.entry(what).or_default() += 1;
        }
        let parts: Vec<String> = counts.iter().map(|(what, n)| format!("{what} x{n}")).collect();
        Some(parts.join(", "))
    }
}

/// The unknown outcome `sent` stands for, if it is one.
fn unknown_outcome(sent: &Sent) -> Option<&'static str> {
    match sent {
        Ok(reply) if reply.status == 503 => Some("503 UNAVAILABLE"),
        Ok(_) => None,
        Err(_) => Some("no answer"),
    }
}

fn pause_after(sent: &Sent) -> Duration {
    match sent {
        Ok(reply) => reply
            .retry_after_s
            .map_or(NO_ANSWER_PAUSE, Duration::from_secs)
            .min(MAX_PAUSE),
        Err(_) => NO_ANSWER_PAUSE,
    }
}

/// Sends with `send` (which must send the same key and body every time),
/// counting every try in `ledger` as `what`; retries unknown outcomes when
/// `retry` is set, within [`RETRY_BUDGET`].
pub async fn send<F, Fut>(ledger: &Ledger, what: &str, retry: bool, mut send: F) -> Tried
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Sent>,
{
    let started = Instant::now();
    let mut unknown = Vec::new();
    loop {
        let sent = send().await;
        if unknown.is_empty() {
            ledger.count(what, &sent);
        } else {
            ledger.count(&format!("{what} (retry)"), &sent);
        }
        match unknown_outcome(&sent) {
            Some(why) if retry && started.elapsed() < RETRY_BUDGET => {
                unknown.push(why);
                tokio::time::sleep(pause_after(&sent)).await;
            }
            _ => return Tried { last: sent, unknown },
        }
    }
}
