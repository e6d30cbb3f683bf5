//! `AppState`: what every handler shares (through `web::Data`), and the
//! conversions from engine values to API shapes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{SecondsFormat, TimeZone};
use concert_actors::concert::Reservation;
use concert_actors::router::ConcertHandle;
use concert_actors::types::{JournalPos, MemberId, ReservationId};
use concert_actors::{Engine, EngineError};

use crate::api::{ConcertDto, ReservationDto};
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::persistence::{archive, Db, Persister};
use crate::routes::seat_maps::SeatMapCache;
use crate::settings::{Durability, Settings};

pub struct AppState {
    pub engine: Arc<Engine>,
    pub catalog: Catalog,
    /// Encoded seat maps by concert, filter and seat-map version.
    pub seat_maps: SeatMapCache,
    pub settings: Settings,
    /// SHA-256 of the admin key; the key itself is not kept.
    pub admin_key_hash: [u8; 32],
    pub metrics: Metrics,
    pub db: Db,
    pub persister: Arc<Persister>,
    /// Set once recovery has finished.
    pub ready: AtomicBool,
}

impl AppState {
    pub fn now_ms(&self) -> i64 {
        self.engine.now_ms()
    }

    /// Reservation `id` of `member` from the tables, for a request that did
    /// not find it in memory (it finished and was retired): 404 if the
    /// tables do not have it either, 403 if it is another member's, 503 if
    /// the database cannot answer now.
    pub async fn retired_reservation(&self, member: MemberId, id: ReservationId) -> Result<Reservation, ApiError> {
        match archive::reservation(&self.db, id).await {
            Ok(Some(reservation)) if reservation.member_id == member => Ok(reservation),
            Ok(Some(_)) => Err(EngineError::Forbidden.into()),
            Ok(None) => Err(EngineError::NotFound("reservation").into()),
            Err(err) => {
                tracing::warn!(error = %err, reservation_id = id, "cannot read a retired reservation");
                Err(EngineError::Unavailable.into())
            }
        }
    }

    /// Recovery has finished and the database takes writes.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.persister.healthy()
    }

    /// Recovery has finished (requests may be served).
    pub fn recovered(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// In `sync` durability, waits until `pos` is committed; 503 if it cannot be.
    pub async fn durable(&self, pos: JournalPos) -> Result<(), ApiError> {
        match self.settings.durability {
            Durability::Async => Ok(()),
            Durability::Sync => Ok(self.engine.sink().durable(pos).await?),
        }
    }

    /// RFC 3339 with the offset of CONCERT_TIMEZONE.
    pub fn format_time(&self, at_ms: i64) -> String {
        match self.settings.timezone.timestamp_millis_opt(at_ms).single() {
            Some(at) => at.to_rfc3339_opts(SecondsFormat::AutoSi, false),
            None => String::new(),
        }
    }

    pub fn concert_dto(&self, handle: &ConcertHandle) -> ConcertDto {
        let info = &handle.info;
        ConcertDto {
            id: info.id,
            title: info.title.clone(),
            category: info.category.clone(),
            venue: info.venue.clone(),
            starts_at: self.format_time(info.starts_at_ms),
            seat_count: info.seat_count,
            available_seats: handle.available(),
        }
    }

    pub fn reservation_dto(&self, reservation: &Reservation) -> ReservationDto {
        let concert_title = self
            .engine
            .concert(reservation.concert_id)
            .map(|h| h.info.title.clone())
            .unwrap_or_default();
        ReservationDto {
            id: reservation.id,
            concert_id: reservation.concert_id,
            concert_title,
            seat_numbers: reservation.seats.clone(),
            amount: reservation.amount,
            status: reservation.status.as_str(),
            created_at: self.format_time(reservation.created_at_ms),
            expires_at: self.format_time(reservation.expires_at_ms),
        }
    }
}
