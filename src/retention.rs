//! Retention: what leaves memory, and when.
//!
//! - **Finished reservations** (CANCELLED, EXPIRED) leave memory
//!   `CONCERT_FINISHED_RETENTION` after they finished, once the tables hold
//!   them as they are (the event that finished them is projected); reads of
//!   them then come from the tables ([`crate::persistence::archive`]) with
//!   the same answers. Snapshots copy memory, so they no longer carry them.
//! - **Balance history**: each member keeps the newest
//!   `HISTORY_IN_MEMORY` entries in memory once the tables hold the rest;
//!   older pages are read from the tables.
//! - **Idempotency records** are dropped `CONCERT_IDEMPOTENCY_TTL` after
//!   they were made, from memory and from the tables (snapshots follow).
//!
//! One task makes a pass every [`Retention::interval`].

use std::sync::Arc;
use std::time::Duration;

use concert_actors::Engine;

use crate::persistence::{archive, Db, Persister};
use crate::settings::Settings;

/// The two retention periods, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub finished_ms: i64,
    pub idempotency_ttl_ms: i64,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPass {
    pub reservations_retired: usize,
    pub idempotency_pruned: usize,
    pub idempotency_rows_pruned: u64,
    pub history_trimmed: usize,
}

impl Retention {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            finished_ms: millis(settings.finished_retention),
            idempotency_ttl_ms: millis(settings.idempotency_ttl),
        }
    }

    /// A quarter of the shorter period, within 100 ms..=10 s: things leave
    /// at most a quarter period (or 10 s) late.
    pub fn interval(&self) -> Duration {
        let shorter = self.finished_ms.min(self.idempotency_ttl_ms).max(0);
        Duration::from_millis(u64::try_from(shorter / 4).unwrap_or(0))
            .clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// One pass at the engine's `now`. A database that cannot answer only
    /// delays what it would have done (the next pass does it).
    pub async fn pass(&self, engine: &Engine, persister: &Persister, db: &Db) -> RetentionPass {
        let now = engine.now_ms();
        let mut done = RetentionPass {
            idempotency_pruned: engine.idempotency().prune(now, self.idempotency_ttl_ms),
            ..RetentionPass::default()
        };
        match archive::prune_idempotency(db, now.saturating_sub(self.idempotency_ttl_ms)).await {
            Ok(rows) => done.idempotency_rows_pruned = rows,
            Err(err) => tracing::warn!(error = %err, "cannot prune idempotency records in the database; next pass"),
        }
        // Read before asking the actors: everything at or before it is in the tables.
        let projected = persister.projected_pos();
        match engine
            .retire_finished(now.saturating_sub(self.finished_ms), projected)
            .await
        {
            Ok(retired) => done.reservations_retired = retired,
            Err(err) => tracing::warn!(error = %err, "cannot retire finished reservations; next pass"),
        }
        done.history_trimmed = engine.accounts().trim_histories(projected);
        if done != RetentionPass::default() {
            tracing::debug!(
                reservations_retired = done.reservations_retired,
                idempotency_pruned = done.idempotency_pruned,
                idempotency_rows_pruned = done.idempotency_rows_pruned,
                history_trimmed = done.history_trimmed,
                "retention pass"
            );
        }
        done
    }
}

/// Makes a pass every [`Retention::interval`] until the process stops.
pub async fn run_retention(engine: Arc<Engine>, persister: Arc<Persister>, db: Db, retention: Retention) {
    let mut ticker = tokio::time::interval(retention.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        retention.pass(&engine, &persister, &db).await;
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_comes_every_quarter_period_within_bounds() {
        let retention = |finished_ms, idempotency_ttl_ms| Retention {
            finished_ms,
            idempotency_ttl_ms,
        };
        assert_eq!(retention(1_000, 86_400_000).interval(), Duration::from_millis(250));
        assert_eq!(retention(3_600_000, 86_400_000).interval(), Duration::from_secs(10));
        assert_eq!(retention(10, 10).interval(), Duration::from_millis(100));
    }
}
