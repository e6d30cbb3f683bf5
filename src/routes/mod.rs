//! HTTP handlers, one file per resource, and the route table.
//!
//! Every path is a `web::resource` with a `default_service` answering 405, so
//! a known path with the wrong method is METHOD_NOT_ALLOWED and an unknown
//! path NOT_FOUND, both as problem JSON.

pub mod admin;
pub mod catalog;
pub mod members;
pub mod ops;
pub mod pages;
pub mod payments;
pub mod queue;
pub mod reservations;
pub mod seat_maps;
pub mod stats;

pub use ops::redirect_docs;

use actix_web::http::header::HeaderMap;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use concert_actors::idempotency::{
    Claim, IdempotencyScope, IdempotentEndpoint, StoredResponse, MAX_IDEMPOTENCY_KEY_LEN,
};
use concert_actors::types::MemberId;
use concert_actors::EngineError;
use serde::Serialize;

use crate::auth::sha256;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Largest page size of any list.
pub const MAX_PAGE_LIMIT: usize = 100;
pub const DEFAULT_PAGE_LIMIT: usize = 20;

/// The `/api/v1` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .service(
                web::resource("/members")
                    .route(web::post().to(members::create))
                    .default_service(method_not_allowed("POST")),
            )
            .service(
                web::resource("/members/me")
                    .route(web::get().to(members::me))
                    .default_service(method_not_allowed("GET")),
            )
            .service(
                web::resource("/members/me/balance")
                    .route(web::get().to(members::balance))
                    .default_service(method_not_allowed("GET")),
            )
            .service(
                web::resource("/members/me/balance/charges")
                    .route(web::post().to(members::charge))
                    .default_service(method_not_allowed("POST")),
            )
            .service(
                web::resource("/members/me/balance/history")
                    .route(web::get().to(members::history))
                    .default_service(method_not_allowed("GET")),
            )
            .service(
                web::resource("/members/me/reservations")
                    .route(web::get().to(members::reservations))
                    .default_service(method_not_allowed("GET")),
            )
            .service(
                web::resource("/queue/tokens")
                    .route(web::post().to(queue::issue))
                    .default_service(method_not_allowed("POST")),
            )
            .service(
                web::resource("/queue/status")
                    .route(web::get().to(queue::status))
                    .default_service(method_not_allowed("GET")),
            )
            .service(
                web::resource("/concerts")
                    .route(web::get().to(catalog::list))
                    .default_service(method_not_allowed("GET")),
            )
            .service(
                web::resource("/concerts/dates")
                    .route(web::get().to(catalog::dates))
                    .default_service(method_not_allowed("GET")),
            )
            .service(
                web::resource("/concerts/{id}")
                    .route(web::get().to(catalog::get))
                    .default_service(method_not_allowed("GET")),
            )
            .service(
                web::resource("/concerts/{id}/seats")
                    .route(web::get().to(catalog::seats))
                    .default_service(method_not_allowed("GET")),
            )
            .service(
                web::resource("/reservations")
                    .route(web::post().to(reservations::create))
                    .default_service(method_not_allowed("POST")),
            )
            .service(
                web::resource("/reservations/{id}")
                    .route(web::get().to(reservations::get))
                    .route(web::delete().to(reservations::cancel))
                    .default_service(method_not_allowed("GET, DELETE")),
            )
            .service(
                web::resource("/payments")
                    .route(web::post().to(payments::pay))
                    .default_service(method_not_allowed("POST")),
            )
            .service(
                web::resource("/admin/concerts")
                    .route(web::post().to(admin::create_concert))
                    .default_service(method_not_allowed("POST")),
            ),
    );
}

/// The root operational routes.
pub fn configure_ops(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/health")
            .route(web::get().to(ops::health))
            .default_service(method_not_allowed("GET")),
    )
    .service(
        web::resource("/ready")
            .route(web::get().to(ops::ready))
            .default_service(method_not_allowed("GET")),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(ops::metrics))
            .default_service(method_not_allowed("GET")),
    );
}

/// A 405 handler that names the methods `allow`ed on the resource.
fn method_not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move || async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow)) })
}

pub async fn not_found() -> ApiResult<HttpResponse> {
    Err(ApiError::NotFound("path"))
}

/// A path id: a positive integer, else 400.
pub fn parse_id(text: &str) -> ApiResult<u64> {
    match text.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::Validation(format!("`{text}` is not a positive integer id"))),
    }
}

/// `limit` query value: 1..=100, default 20.
pub fn parse_limit(text: Option<&str>) -> ApiResult<usize> {
    match text {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::Validation("limit must be an integer 1..=100".into())),
        },
    }
}

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    HttpResponse::build(status).json(value)
}

fn stored_response(stored: &StoredResponse) -> HttpResponse {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    HttpResponse::build(status)
        .content_type(content_type)
        .body(stored.body.clone())
}

/// Whether an error is the outcome of executing the request (stored and
/// replayed) rather than of the gate or the infrastructure (retried).
fn is_replayable(err: &ApiError) -> bool {
    !matches!(
        err,
        ApiError::Engine(
            EngineError::Unavailable
                | EngineError::TokenInvalid
                | EngineError::TokenNotActive { .. }
                | EngineError::Unauthenticated
        )
    )
}

/// Runs `execute` at most once per (member, endpoint, Idempotency-Key).
/// Without the header it just runs it.
pub async fn idempotent<R, F>(
    state: &AppState,
    headers: &HeaderMap,
    member: MemberId,
    endpoint: IdempotentEndpoint,
    request: &R,
    execute: F,
) -> ApiResult<HttpResponse>
where
    R: Serialize,
    F: std::future::Future<Output = ApiResult<(StatusCode, Vec<u8>)>>,
{
    let Some(raw_key) = headers.get(IDEMPOTENCY_HEADER) else {
        let (status, body) = execute.await?;
        return Ok(stored_response(&StoredResponse {
            status: status.as_u16(),
            body,
        }));
    };
    let key = raw_key
        .to_str()
        .ok()
        .filter(|k| (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::Validation("Idempotency-Key must be 1..=255 visible ASCII characters".into()))?;
    let request_bytes = serde_json::to_vec(request).map_err(|err| ApiError::Validation(err.to_string()))?;
    let fingerprint = sha256(&request_bytes);
    let scope = IdempotencyScope {
        member,
        endpoint,
        key: key.to_owned(),
    };
    match state.engine.idempotency().claim(scope, fingerprint).await {
        Claim::Replay(stored, pos) => {
            state.durable(pos).await?;
            Ok(stored_response(&stored))
        }
        Claim::Conflict => Err(EngineError::IdempotencyConflict.into()),
        Claim::Execute(guard) => {
            let stored = match execute.await {
                Ok((status, body)) => StoredResponse {
                    status: status.as_u16(),
                    body,
                },
                Err(err) if is_replayable(&err) => StoredResponse {
                    status: err.parts().0.as_u16(),
                    body: serde_json::to_vec(&err.problem()).unwrap_or_default(),
                },
                Err(err) => return Err(err),
            };
            let pos = guard.complete(stored.clone(), state.now_ms());
            state.durable(pos).await?;
            Ok(stored_response(&stored))
        }
    }
}

/// Serializes a success body for [`idempotent`].
pub fn body<T: Serialize>(status: StatusCode, value: &T) -> ApiResult<(StatusCode, Vec<u8>)> {
    let bytes = serde_json::to_vec(value).map_err(|err| ApiError::Validation(err.to_string()))?;
    Ok((status, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_limits_are_checked() {
        assert_eq!(parse_id("7"), Ok(7));
        assert!(parse_id("0").is_err(), "ids are positive");
        assert!(parse_id("-1").is_err());
        assert!(parse_id("abc").is_err());
        assert_eq!(parse_limit(None), Ok(20));
        assert_eq!(parse_limit(Some("100")), Ok(100));
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("101")).is_err());
    }
}
