//! Prometheus metrics: HTTP requests and latency by route and status, the
//! queue, holds and payments. Engine figures are read from the engine's
//! counters when `/metrics` is scraped, so the hot paths only bump atomics.

use concert_actors::sink::EventSink;
use concert_actors::Engine;

use crate::persistence::Persister;
use parking_lot::RwLock;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use rustc_hash::FxHashMap;
use std::sync::atomic::Ordering;

/// One route's resolved metric handles, by method (and status).
#[derive(Default)]
struct RouteHandles {
    latency: Vec<(&'static str, Histogram)>,
    requests: Vec<(&'static str, u16, IntCounter)>,
}

impl RouteHandles {
    fn latency(&self, method: &str) -> Option<&Histogram> {
        self.latency.iter().find(|(m, _)| *m == method).map(|(_, h)| h)
    }

    fn requests(&self, method: &str, status: u16) -> Option<&IntCounter> {
        self.requests
            .iter()
            .find(|(m, s, _)| *m == method && *s == status)
            .map(|(_, _, c)| c)
    }
}

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_latency: HistogramVec,
    /// `http_requests`/`http_latency` children by route, resolved once per
    /// (route, method, status) instead of hashing the label values of every
    /// request. Bounded like the labels: routes x methods x statuses.
    http_handles: RwLock<FxHashMap<String, RouteHandles>>,
    queue_waiting: IntGauge,
    queue_active: IntGauge,
    queue_issued: IntCounter,
    queue_admitted: IntCounter,
    queue_expired: IntCounter,
    holds_live: IntGauge,
    reservations_in_memory: IntGauge,
    holds_created: IntCounter,
    holds_expired: IntCounter,
    holds_cancelled: IntCounter,
    payments: IntCounter,
    journal_committed: IntGauge,
    journal_backlog: IntGauge,
    journal_projection_lag: IntGauge,
    database_healthy: IntGauge,
    /// Held while `render` brings the counters up to the engine's atomics,
    /// so two scrapes at once never add the same increase twice.
    rendering: parking_lot::Mutex<()>,
}

/// Brings a Prometheus counter up to `total`, a count that only grows (an
/// engine atomic): counters stay counters (`rate()` works, resets are
/// process restarts) while the hot paths only bump their atomics.
fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

impl Metrics {
    /// Registers every metric; fails only on a programming error (duplicate names).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route, method and status"),
            &["route", "method", "status"],
        )?;
        let http_latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by route").buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route", "method"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_latency.clone()))?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Self {
            queue_waiting: gauge("queue_waiting_tokens", "WAITING queue tokens")?,
            queue_active: gauge("queue_active_tokens", "ACTIVE queue tokens")?,
            queue_issued: counter("queue_tokens_issued_total", "queue tokens issued since start")?,
            queue_admitted: counter("queue_tokens_admitted_total", "queue tokens admitted since start")?,
            queue_expired: counter("queue_tokens_expired_total", "queue tokens expired since start")?,
            holds_live: gauge("holds_live", "seat holds pending payment")?,
            reservations_in_memory: gauge(
                "reservations_in_memory",
                "reservations held in memory (live ones and finished ones not yet retired)",
            )?,
            holds_created: counter("holds_created_total", "seat holds made since start")?,
            holds_expired: counter("holds_expired_total", "holds released by expiry since start")?,
            holds_cancelled: counter("holds_cancelled_total", "holds cancelled since start")?,
            payments: counter("payments_completed_total", "payments completed since start")?,
            journal_committed: gauge(
                "journal_committed_position",
                "last journal position committed to the database",
            )?,
            journal_backlog: gauge("journal_backlog_events", "events appended but not yet committed")?,
            journal_projection_lag: gauge(
                "journal_projection_lag_events",
                "committed journal events the normalized tables do not reflect yet",
            )?,
            database_healthy: gauge("database_healthy", "1 while database writes succeed, 0 while they fail")?,
            registry,
            http_requests,
            http_latency,
            http_handles: RwLock::new(FxHashMap::default()),
            rendering: parking_lot::Mutex::new(()),
        })
    }

    /// Counts one HTTP request of `route` (its pattern) and records its latency.
    pub fn observe_http(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        {
            let handles = self.http_handles.read();
            if let Some(route_handles) = handles.get(route) {
                if let (Some(latency), Some(requests)) =
                    (route_handles.latency(method), route_handles.requests(method, status))
                {
                    requests.inc();
                    latency.observe(seconds);
                    return;
                }
            }
        }
        let mut handles = self.http_handles.write();
        let route_handles = handles.entry(route.to_owned()).or_default();
        if route_handles.latency(method).is_none() {
            let latency = self.http_latency.with_label_values(&[route, method]);
            route_handles.latency.push((method, latency));
        }
        if route_handles.requests(method, status).is_none() {
            let status_text = status.to_string();
            let requests = self
                .http_requests
                .with_label_values(&[route, method, status_text.as_str()]);
            route_handles.requests.push((method, status, requests));
        }
        if let (Some(latency), Some(requests)) = (route_handles.latency(method), route_handles.requests(method, status))
        {
            requests.inc();
            latency.observe(seconds);
        }
    }

    /// The text exposition, with engine and persister figures read now.
    pub fn render(&self, engine: &Engine, persister: &Persister) -> String {
        let committed = persister.committed_pos();
        self.journal_committed.set(i64::try_from(committed).unwrap_or(i64::MAX));
        let backlog = persister.last_pos().saturating_sub(committed);
        self.journal_backlog.set(i64::try_from(backlog).unwrap_or(i64::MAX));
        let lag = persister.projection_lag();
        self.journal_projection_lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
        self.database_healthy.set(i64::from(persister.healthy()));
        let queue = engine.queue();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.queue_waiting.set(as_i64(queue.waiting()));
        self.queue_active.set(as_i64(queue.active()));
        let counters = engine.counters();
        self.holds_live.set(as_i64(counters.live_holds()));
        self.reservations_in_memory
            .set(i64::try_from(engine.directory().len()).unwrap_or(i64::MAX));
        {
            let _rendering = self.rendering.lock();
            let totals = queue.counters();
            catch_up(&self.queue_issued, totals.issued_total.load(Ordering::Relaxed));
            catch_up(&self.queue_admitted, totals.admitted_total.load(Ordering::Relaxed));
            catch_up(&self.queue_expired, totals.expired_total.load(Ordering::Relaxed));
            catch_up(&self.holds_created, counters.held.load(Ordering::Relaxed));
            catch_up(&self.holds_expired, counters.expired.load(Ordering::Relaxed));
            catch_up(&self.holds_cancelled, counters.cancelled.load(Ordering::Relaxed));
            catch_up(&self.payments, counters.paid.load(Ordering::Relaxed));
        }
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %err, "metrics encoding failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
