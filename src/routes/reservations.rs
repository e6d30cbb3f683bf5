//! Seat holds (ACTIVE queue token) and reservation lookup/cancel (queue
//! token or member key of the owner).

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use concert_actors::concert::Reservation;
use concert_actors::idempotency::{IdempotentEndpoint, Render};
use concert_actors::types::SeatNo;
use concert_actors::EngineError;
use serde::Serialize;

use super::{idempotent, json, parse_id};
use crate::api::{HoldRequest, Object, ReservationDto};
use crate::auth::{token_holder, Owner, QueueToken};
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

/// Hold seats, all or none, until `expiresAt`.
#[utoipa::path(post, path = "/api/v1/reservations", tag = "reservations", security(("queueToken" = [])),
    request_body = HoldRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "1..=255 visible ASCII characters")),
    responses(
        (status = 201, body = ReservationDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "TOKEN_INVALID", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "TOKEN_NOT_ACTIVE", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "SEAT_UNAVAILABLE, TICKET_LIMIT, SALES_CLOSED or IDEMPOTENCY_CONFLICT", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    request: web::Json<Object<HoldRequest>>,
    QueueToken(token): QueueToken,
) -> ApiResult<HttpResponse> {
    let owner = token_holder(&state.engine, &token)?;
    let request = request.into_inner().0;
    let engine = &state.engine;
    let asked = &request;
    let execute = |ticket| async move {
        let member = engine.admitted_member(&token)?;
        let concert = u64::try_from(asked.concert_id)
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| ApiError::Validation("concertId must be a positive integer".into()))?;
        let seats = seat_numbers(&asked.seat_numbers)?;
        let committed = engine.hold_keyed(member, concert, seats, ticket).await?;
        tracing::info!(
            member_id = member,
            concert_id = concert,
            reservation_id = committed.value.id,
            "seats held"
        );
        Ok(committed)
    };
    idempotent(
        &state,
        req.headers(),
        owner,
        IdempotentEndpoint::Hold,
        &request,
        reservation_render(&state, StatusCode::CREATED),
        execute,
    )
    .await
}

/// Renders a reservation answer (stored for idempotent replays).
fn reservation_render(state: &web::Data<AppState>, status: StatusCode) -> Render<Reservation> {
    let state = state.clone();
    Arc::new(move |outcome| super::render(status, outcome, |reservation| state.reservation_dto(reservation)))
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
pub async fn get(state: web::Data<AppState>, Owner(member): Owner, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let id = parse_id(&path)?;
    let reservation = match state.engine.reservation(member, id).await {
        Err(EngineError::NotFound("reservation")) => state.retired_reservation(member, id).await?,
        found => found?,
    };
    Ok(json(StatusCode::OK, &state.reservation_dto(&reservation)))
}

/// Cancel a pending reservation; its seats are AVAILABLE at once.
#[utoipa::path(delete, path = "/api/v1/reservations/{id}", tag = "reservations",
    security(("queueToken" = []), ("memberKey" = [])),
    params(("id" = u64, Path, minimum = 1, description = "reservation id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "1..=255 visible ASCII characters")),
    responses(
        (status = 200, body = ReservationDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "RESERVATION_NOT_PENDING or IDEMPOTENCY_CONFLICT", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel(
    state: web::Data<AppState>,
    req: HttpRequest,
    Owner(member): Owner,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = parse_id(&path)?;
    let engine = &state.engine;
    let retired = &state;
    let execute = |ticket| async move {
        let committed = match engine.cancel_keyed(member, id, ticket).await {
            // Finished and retired: only a pending reservation is cancelled.
            Err(EngineError::NotFound("reservation")) => {
                retired.retired_reservation(member, id).await?;
                return Err(EngineError::NotPending.into());
            }
            done => done?,
        };
        tracing::info!(member_id = member, reservation_id = id, "reservation cancelled");
        Ok(committed)
    };
    idempotent(
        &state,
        req.headers(),
        member,
        IdempotentEndpoint::Cancel,
        &CancelFingerprint { reservation_id: id },
        reservation_render(&state, StatusCode::OK),
        execute,
    )
    .await
}

/// What identifies a cancel for its `Idempotency-Key` (it has no body).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CancelFingerprint {
    reservation_id: u64,
}
