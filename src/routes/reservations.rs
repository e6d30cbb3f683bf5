//! Seat holds (ACTIVE queue token) and reservation lookup/cancel (queue
//! token or member key of the owner).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use concert_actors::queue::TokenStatus;
use concert_actors::types::{MemberId, SeatNo};
use concert_actors::EngineError;

use super::{json, parse_id};
use crate::api::{HoldRequest, ReservationDto};
use crate::auth::{has_member_key, has_queue_token, member_from_key, queue_token};
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

/// Hold seats, all or none, until `expiresAt`.
#[utoipa::path(post, path = "/api/v1/reservations", tag = "reservations", security(("queueToken" = [])),
    request_body = HoldRequest,
    responses(
        (status = 201, body = ReservationDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "TOKEN_INVALID", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "TOKEN_NOT_ACTIVE", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "SEAT_UNAVAILABLE, TICKET_LIMIT or SALES_CLOSED", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    request: web::Json<HoldRequest>,
) -> ApiResult<HttpResponse> {
    let token = queue_token(req.headers()).ok_or(EngineError::TokenInvalid)?;
    let member = state.engine.admitted_member(&token)?;
    let concert = u64::try_from(request.concert_id)
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| ApiError::Validation("concertId must be a positive integer".into()))?;
    let seats = seat_numbers(&request.seat_numbers)?;
    let committed = state.engine.hold(member, concert, seats).await?;
    state.durable(committed.pos).await?;
    tracing::info!(
        member_id = member,
        concert_id = concert,
        reservation_id = committed.value.id,
        "seats held"
    );
    Ok(json(StatusCode::CREATED, &state.reservation_dto(&committed.value)))
}

/// Seat numbers below 1 are a 400; numbers past any concert's size map to
/// `u32::MAX`, which the concert answers 404.
fn seat_numbers(raw: &[i64]) -> ApiResult<Vec<SeatNo>> {
    raw.iter()
        .map(|&n| {
            if n < 1 {
                Err(ApiError::Validation("seat numbers start at 1".into()))
            } else {
                Ok(SeatNo::try_from(n).unwrap_or(SeatNo::MAX))
            }
        })
        .collect()
}

/// The member behind a valid member key or a live queue token.
fn owner_credential(state: &AppState, req: &HttpRequest) -> ApiResult<MemberId> {
    let headers = req.headers();
    if has_member_key(headers) {
        if let Ok(member) = member_from_key(&state.engine, headers) {
            return Ok(member);
        }
    }
    if let Some(token) = queue_token(headers) {
        if let Some(view) = state.engine.queue().peek(&token) {
            if view.status != TokenStatus::Expired {
                return Ok(view.member);
            }
        }
    }
    if has_member_key(headers) || !has_queue_token(headers) {
        Err(EngineError::Unauthenticated.into())
    } else {
        Err(EngineError::TokenInvalid.into())
    }
}

/// One reservation of the caller.
#[utoipa::path(get, path = "/api/v1/reservations/{id}", tag = "reservations",
    security(("queueToken" = []), ("memberKey" = [])),
    params(("id" = u64, Path, minimum = 1, description = "reservation id")),
    responses(
        (status = 200, body = ReservationDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let member = owner_credential(&state, &req)?;
    let id = parse_id(&path)?;
    let reservation = state.engine.reservation(member, id).await?;
    Ok(json(StatusCode::OK, &state.reservation_dto(&reservation)))
}

/// Cancel a pending reservation; its seats are AVAILABLE at once.
#[utoipa::path(delete, path = "/api/v1/reservations/{id}", tag = "reservations",
    security(("queueToken" = []), ("memberKey" = [])),
    params(("id" = u64, Path, minimum = 1, description = "reservation id")),
    responses(
        (status = 200, body = ReservationDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "RESERVATION_NOT_PENDING", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let member = owner_credential(&state, &req)?;
    let id = parse_id(&path)?;
    let committed = state.engine.cancel(member, id).await?;
    state.durable(committed.pos).await?;
    tracing::info!(member_id = member, reservation_id = id, "reservation cancelled");
    Ok(json(StatusCode::OK, &state.reservation_dto(&committed.value)))
}
