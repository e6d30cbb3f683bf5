//! Time as the engine sees it: milliseconds since the Unix epoch.
//!
//! Every deadline in the engine is an absolute epoch-millisecond value so that
//! it survives a restart unchanged. Tests drive a [`ManualClock`] instead of
//! sleeping (virtual time); production uses [`SystemClock`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Epoch milliseconds.
pub type TimestampMs = i64;

/// A source of "now".
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> TimestampMs;
}

/// Shared clock handle passed to every actor.
pub type SharedClock = Arc<dyn Clock>;

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> TimestampMs {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that moves only when told to: virtual time for tests.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(start_ms: TimestampMs) -> Arc<Self> {
        Arc::new(Self {
            now_ms: AtomicI64::new(start_ms),
        })
    }

    pub fn advance_ms(&self, delta_ms: i64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, now_ms: TimestampMs) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> TimestampMs {
        self.now_ms.load(Ordering::SeqCst)
    }
}
