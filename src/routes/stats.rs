//! `GET /api/v1/admin/stats` (admin key): the figures `/metrics` exports
//! (src/metrics.rs), as one JSON object a browser can read, for the
//! operator dashboard (`/admin`). Totals are counters since start; the
//! dashboard turns two samples into rates (holds and payments per second,
//! admitted per tick).

use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use concert_actors::sink::EventSink;
use concert_actors::types::SeatStatus;
use serde::Serialize;
use utoipa::ToSchema;

use super::json;
use crate::auth::Admin;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

/// At most this many concerts are listed (the nearest upcoming first).
pub const MAX_CONCERTS: usize = 50;
/// Concerts that started less than this long ago are still listed.
const RECENT_MS: i64 = 6 * 60 * 60 * 1000;

/// Registered before the `/api/v1` scope (a path that scope does not know
/// would otherwise end in its 404).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/v1/admin/stats")
            .route(web::get().to(stats))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ApiError::MethodNotAllowed("GET"))
            })),
    );
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// WAITING tokens now.
    pub waiting: u64,
    /// ACTIVE tokens now.
    pub active: u64,
    /// `CONCERT_QUEUE_MAX_ACTIVE`.
    pub max_active: u32,
    /// `CONCERT_QUEUE_ADMIT_PER_TICK`.
    pub admit_per_tick: u32,
    /// `CONCERT_QUEUE_TICK` in milliseconds.
    pub tick_ms: i64,
    pub issued_total: u64,
    pub admitted_total: u64,
    pub expired_total: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldStats {
    /// Holds pending payment now.
    pub live: u64,
    pub created_total: u64,
    pub expired_total: u64,
    pub cancelled_total: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentStats {
    pub completed_total: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStats {
    /// Whether the last journal commit and projection succeeded.
    pub healthy: bool,
    /// Last journal position committed to the database.
    pub journal_committed_position: u64,
    /// Events appended but not committed yet.
    pub journal_backlog: u64,
    /// Committed events the normalized tables do not reflect yet.
    pub projection_lag: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcertStats {
    pub id: u64,
    pub title: String,
    pub starts_at: String,
    pub seat_count: u32,
    pub available_seats: u32,
    pub held_seats: u32,
    pub sold_seats: u32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsResponse {
    /// When the figures were read (RFC 3339).
    pub at: String,
    /// The same instant in Unix milliseconds (for rates).
    pub at_ms: i64,
    /// `/ready`'s answer: recovered and the database takes writes.
    pub ready: bool,
    pub queue: QueueStats,
    pub holds: HoldStats,
    pub payments: PaymentStats,
    pub database: DatabaseStats,
    /// Up to 50 concerts, nearest start first, from 6 hours ago on.
    pub concerts: Vec<ConcertStats>,
}

/// Live figures for the operator dashboard.
#[utoipa::path(get, path = "/api/v1/admin/stats", tag = "admin", security(("adminKey" = [])),
    responses(
        (status = 200, body = StatsResponse),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn stats(state: web::Data<AppState>, _: Admin) -> ApiResult<HttpResponse> {
    let engine = &state.engine;
    let now_ms = state.now_ms();
    let queue = engine.queue();
    let settings = queue.settings();
    let counters = engine.counters();
    let persister = &state.persister;
    let committed = persister.committed_pos();

    let mut handles: Vec<_> = engine
        .router()
        .all()
        .into_iter()
        .filter(|handle| handle.info.starts_at_ms >= now_ms - RECENT_MS)
        .collect();
    handles.sort_by_key(|handle| (handle.info.starts_at_ms, handle.info.id));
    handles.truncate(MAX_CONCERTS);
    let mut concerts = Vec::with_capacity(handles.len());
    for handle in handles {
        let sold = engine.seats(handle.info.id, Some(SeatStatus::Sold)).await?.len();
        let sold = u32::try_from(sold).unwrap_or(u32::MAX);
        let available = handle.available();
        concerts.push(ConcertStats {
            id: handle.info.id,
            title: handle.info.title.clone(),
            starts_at: state.format_time(handle.info.starts_at_ms),
            seat_count: handle.info.seat_count,
            available_seats: available,
            held_seats: handle.info.seat_count.saturating_sub(available).saturating_sub(sold),
            sold_seats: sold,
        });
    }

    Ok(json(
        StatusCode::OK,
        &StatsResponse {
            at: state.format_time(now_ms),
            at_ms: now_ms,
            ready: state.is_ready(),
            queue: QueueStats {
                waiting: queue.waiting(),
                active: queue.active(),
                max_active: settings.max_active,
                admit_per_tick: settings.admit_per_tick,
                tick_ms: settings.tick_ms,
                issued_total: queue.counters().issued_total.load(Ordering::Relaxed),
                admitted_total: queue.counters().admitted_total.load(Ordering::Relaxed),
                expired_total: queue.counters().expired_total.load(Ordering::Relaxed),
            },
            holds: HoldStats {
                live: counters.live_holds(),
                created_total: counters.held.load(Ordering::Relaxed),
                expired_total: counters.expired.load(Ordering::Relaxed),
                cancelled_total: counters.cancelled.load(Ordering::Relaxed),
            },
            payments: PaymentStats {
                completed_total: counters.paid.load(Ordering::Relaxed),
            },
            database: DatabaseStats {
                healthy: persister.healthy(),
                journal_committed_position: committed,
                journal_backlog: persister.last_pos().saturating_sub(committed),
                projection_lag: persister.projection_lag(),
            },
            concerts,
        },
    ))
}
