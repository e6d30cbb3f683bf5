//! The waiting queue: token issue and status.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use concert_actors::queue::TokenStatus;

use super::json;
use crate::api::{QueueStatusResponse, QueueTokenResponse};
use crate::auth::{Member, QueueToken};
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
pub async fn issue(state: web::Data<AppState>, Member(member): Member) -> ApiResult<HttpResponse> {
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
            poll_after_seconds: poll_after(&state, issued.view.status, issued.view.estimated_wait_seconds),
        },
    ))
}

/// Status of a queue token (a poll).
#[utoipa::path(get, path = "/api/v1/queue/status", tag = "queue", security(("queueToken" = [])),
    responses(
        (status = 200, body = QueueStatusResponse),
        (status = 401, description = "TOKEN_INVALID", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn status(state: web::Data<AppState>, QueueToken(token): QueueToken) -> ApiResult<HttpResponse> {
    let view = state.engine.token_status(&token)?;
    Ok(json(
        StatusCode::OK,
        &QueueStatusResponse {
            status: view.status.as_str(),
            position: view.position,
            estimated_wait_seconds: view.estimated_wait_seconds,
            active_until: view.active_until_ms.map(|at| state.format_time(at)),
            poll_after_seconds: poll_after(&state, view.status, view.estimated_wait_seconds),
        },
    ))
}

/// `pollAfterSeconds` of a WAITING token (none otherwise).
fn poll_after(state: &AppState, status: TokenStatus, estimated_wait_seconds: u64) -> Option<u64> {
    (status == TokenStatus::Waiting)
        .then(|| poll_after_seconds(estimated_wait_seconds, state.settings.waiting_idle_timeout.as_secs()))
}

/// When a waiting page should poll again: a quarter of its estimated wait
/// (slow at the back, every second near the front), at most 30 s and at
/// most a third of the idle timeout, so a page that follows it is never
/// expired for not polling.
pub fn poll_after_seconds(estimated_wait_seconds: u64, idle_timeout_seconds: u64) -> u64 {
    let ceiling = (idle_timeout_seconds / 3).clamp(1, 30);
    estimated_wait_seconds.div_ceil(4).clamp(1, ceiling)
}

#[cfg(test)]
mod tests {
    use super::poll_after_seconds;

    #[test]
    fn polls_sooner_near_the_front_and_never_idle_out() {
        assert_eq!(poll_after_seconds(0, 120), 1, "at the front: every second");
        assert_eq!(poll_after_seconds(3, 120), 1);
        assert_eq!(poll_after_seconds(40, 120), 10, "a quarter of the wait");
        assert_eq!(poll_after_seconds(3_600, 120), 30, "at most 30 s at the back");
        assert_eq!(poll_after_seconds(3_600, 30), 10, "at most a third of the idle timeout");
        assert_eq!(poll_after_seconds(3_600, 1), 1, "never 0");
        let mut last = 0;
        for wait in 0..1_000 {
            let after = poll_after_seconds(wait, 120);
            assert!(after >= last, "further back never polls more often");
            assert!(after * 3 <= 120);
            last = after;
        }
    }
}
