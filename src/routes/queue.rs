//! The waiting queue: token issue and status.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use concert_actors::EngineError;

use super::json;
use crate::api::{QueueStatusResponse, QueueTokenResponse};
use crate::auth::{member_from_key, queue_token};
use crate::error::{ApiResult, Problem};
use crate::state::AppState;

/// Get a queue token (201), or the member's live one again (200).
#[utoipa::path(post, path = "/api/v1/queue/tokens", tag = "queue", security(("memberKey" = [])),
    responses(
        (status = 201, description = "a new token", body = QueueTokenResponse),
        (status = 200, description = "the member's live token (counts as a poll)", body = QueueTokenResponse),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn issue(state: web::Data<AppState>, req: HttpRequest) -> ApiResult<HttpResponse> {
    let member = member_from_key(&state.engine, req.headers())?;
    let issued = state.engine.issue_token(member)?;
    if let Some(pos) = issued.pos {
        state.durable(pos).await?;
    }
    let status = if issued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(
        status,
        &QueueTokenResponse {
            token: issued.token.to_hex(),
            status: issued.view.status.as_str(),
            position: issued.view.position,
            estimated_wait_seconds: issued.view.estimated_wait_seconds,
        },
    ))
}

/// Status of a queue token (a poll).
#[utoipa::path(get, path = "/api/v1/queue/status", tag = "queue", security(("queueToken" = [])),
    responses(
        (status = 200, body = QueueStatusResponse),
        (status = 401, description = "TOKEN_INVALID", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn status(state: web::Data<AppState>, req: HttpRequest) -> ApiResult<HttpResponse> {
    let token = queue_token(req.headers()).ok_or(EngineError::TokenInvalid)?;
    let view = state.engine.token_status(&token)?;
    Ok(json(
        StatusCode::OK,
        &QueueStatusResponse {
            status: view.status.as_str(),
            position: view.position,
            estimated_wait_seconds: view.estimated_wait_seconds,
            active_until: view.active_until_ms.map(|at| state.format_time(at)),
        },
    ))
}
