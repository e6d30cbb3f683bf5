//! The catalog (no credential) and the seat map (ACTIVE queue token).

use actix_web::http::header::ContentType;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{NaiveDate, TimeZone};
use concert_actors::types::SeatStatus;
use concert_actors::EngineError;

use super::{json, parse_id, parse_limit, seat_maps};
use crate::api::{
    ConcertDto, ConcertPage, ConcertQuery, DateItem, DatesQuery, DatesResponse, SeatMapResponse, SeatQuery,
};
use crate::auth::QueueToken;
use crate::catalog::{decode_cursor, encode_cursor};
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

/// Start of `date` in the configured zone, epoch ms.
fn start_of_day_ms(state: &AppState, date: NaiveDate) -> ApiResult<i64> {
    let midnight = date
        .and_hms_opt(0, 0, 0)
        .ok_or_else(|| ApiError::Validation("bad date".into()))?;
    state
        .settings
        .timezone
        .from_local_datetime(&midnight)
        .earliest()
        .map(|at| at.timestamp_millis())
        .ok_or_else(|| ApiError::Validation("that date does not exist in CONCERT_TIMEZONE".into()))
}

fn today(state: &AppState) -> NaiveDate {
    let now = state.settings.timezone.timestamp_millis_opt(state.now_ms()).single();
    now.map(|at| at.date_naive()).unwrap_or_default()
}

/// Upcoming concerts, nearest first.
#[utoipa::path(get, path = "/api/v1/concerts", tag = "catalog", params(ConcertQuery),
    responses(
        (status = 200, body = ConcertPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(state: web::Data<AppState>, query: web::Query<ConcertQuery>) -> ApiResult<HttpResponse> {
    let from_date = match query.from.as_deref() {
        None => today(&state),
        Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| ApiError::Validation("from must be a date YYYY-MM-DD".into()))?,
    };
    let from_ms = start_of_day_ms(&state, from_date)?;
    let limit = parse_limit(query.limit.as_deref())?;
    let after = match query.cursor.as_deref() {
        None => None,
        Some(text) => Some(
            decode_cursor(text).ok_or_else(|| ApiError::Validation("cursor is not one this server issued".into()))?,
        ),
    };
    let page = state
        .catalog
        .page(from_ms, query.title.as_deref(), query.category.as_deref(), after, limit);
    let items: Vec<ConcertDto> = page
        .ids
        .iter()
        .filter_map(|&id| state.engine.concert(id))
        .map(|handle| state.concert_dto(&handle))
        .collect();
    Ok(json(
        StatusCode::OK,
        &ConcertPage {
            items,
            next_cursor: page.next.map(encode_cursor),
        },
    ))
}

/// Upcoming dates of a title that still have an AVAILABLE seat.
#[utoipa::path(get, path = "/api/v1/concerts/dates", tag = "catalog", params(DatesQuery),
    responses(
        (status = 200, body = DatesResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn dates(state: web::Data<AppState>, query: web::Query<DatesQuery>) -> ApiResult<HttpResponse> {
    let title = query
        .title
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Validation("title is required".into()))?;
    let items = state
        .catalog
        .upcoming_of_title(title, state.now_ms())
        .into_iter()
        .filter_map(|id| state.engine.concert(id))
        .filter(|handle| handle.available() > 0)
        .filter_map(|handle| {
            let date = state
                .settings
                .timezone
                .timestamp_millis_opt(handle.info.starts_at_ms)
                .single()?
                .date_naive();
            Some(DateItem {
                date: date.format("%Y-%m-%d").to_string(),
                concert_id: handle.info.id,
                available_seats: handle.available(),
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &DatesResponse { items }))
}

/// One concert.
#[utoipa::path(get, path = "/api/v1/concerts/{id}", tag = "catalog",
    params(("id" = u64, Path, minimum = 1, description = "concert id")),
    responses(
        (status = 200, body = ConcertDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let id = parse_id(&path)?;
    let handle = state.engine.concert(id).ok_or(EngineError::NotFound("concert"))?;
    Ok(json(StatusCode::OK, &state.concert_dto(&handle)))
}

fn parse_status(text: Option<&str>) -> ApiResult<Option<SeatStatus>> {
    match text {
        None => Ok(None),
        Some("AVAILABLE") => Ok(Some(SeatStatus::Available)),
        Some("HELD") => Ok(Some(SeatStatus::Held)),
        Some("SOLD") => Ok(Some(SeatStatus::Sold)),
        Some(_) => Err(ApiError::Validation("status must be AVAILABLE, HELD or SOLD".into())),
    }
}

/// The seat map of a concert (ACTIVE queue token).
#[utoipa::path(get, path = "/api/v1/concerts/{id}/seats", tag = "catalog", security(("queueToken" = [])),
    params(("id" = u64, Path, minimum = 1, description = "concert id"), SeatQuery),
    responses(
        (status = 200, body = SeatMapResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "TOKEN_INVALID", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "TOKEN_NOT_ACTIVE", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn seats(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<SeatQuery>,
    QueueToken(token): QueueToken,
) -> ApiResult<HttpResponse> {
    state.engine.admitted_member(&token)?;
    let id = parse_id(&path)?;
    let status = parse_status(query.status.as_deref())?;
    let handle = state.engine.concert(id).ok_or(EngineError::NotFound("concert"))?;
    // Read before asking the actor: the seats it returns are at least this new.
    let version = handle.seat_map_version();
    let body = state
        .seat_maps
        .get_or_load(id, status, version, || async {
            let seats = state.engine.seats(id, status).await?;
            Ok::<_, ApiError>(seat_maps::encode(id, &seats))
        })
        .await?;
    Ok(HttpResponse::Ok().content_type(ContentType::json()).body(body))
}
