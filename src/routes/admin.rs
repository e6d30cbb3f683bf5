//! Operator endpoints (`X-Admin-Key`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::DateTime;
use concert_actors::pricing::PriceTier;
use concert_actors::NewConcert;

use super::json;
use crate::api::{ConcertDto, NewConcertRequest, Object};
use crate::auth::Admin;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

fn seat_field(value: i64, name: &str) -> ApiResult<u32> {
    u32::try_from(value)
        .ok()
        .filter(|&v| v >= 1)
        .ok_or_else(|| ApiError::Validation(format!("{name} must be a positive seat number")))
}

/// Turns the request into the engine's `NewConcert` (field checks happen
/// in the engine's `NewConcert::validate`).
pub fn new_concert(request: NewConcertRequest) -> ApiResult<NewConcert> {
    let starts_at = DateTime::parse_from_rfc3339(&request.starts_at)
        .map_err(|_| ApiError::Validation("startsAt must be RFC 3339 with an offset".into()))?;
    let seat_count =
        u32::try_from(request.seat_count).map_err(|_| ApiError::Validation("seatCount must be 1..=100000".into()))?;
    let price_tiers = request
        .price_tiers
        .iter()
        .map(|tier| {
            Ok(PriceTier {
                from_seat: seat_field(tier.from_seat, "fromSeat")?,
                to_seat: seat_field(tier.to_seat, "toSeat")?,
                price: tier.price,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(NewConcert {
        title: request.title,
        category: request.category,
        venue: request.venue,
        starts_at_ms: starts_at.timestamp_millis(),
        seat_count,
        price: request.price,
        price_tiers,
    })
}

/// Create a concert.
#[utoipa::path(post, path = "/api/v1/admin/concerts", tag = "admin", security(("adminKey" = [])),
    request_body = NewConcertRequest,
    responses(
        (status = 201, body = ConcertDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_concert(
    state: web::Data<AppState>,
    _: Admin,
    request: web::Json<Object<NewConcertRequest>>,
) -> ApiResult<HttpResponse> {
    let new = new_concert(request.into_inner().0)?;
    let committed = state.engine.create_concert(new)?;
    state.catalog.add(&committed.value.info);
    state.durable(committed.pos).await?;
    tracing::info!(concert_id = committed.value.info.id, "concert created");
    Ok(json(StatusCode::CREATED, &state.concert_dto(&committed.value)))
}
