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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderMap;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use concert_actors::concert_actor::Committed;
use concert_actors::idempotency::{
    Claim, IdemTicket, IdempotencyScope, IdempotentEndpoint, Render, StoredResponse, MAX_IDEMPOTENCY_KEY_LEN,
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

/// How long a repeat waits for the first request with its key to be
/// decided before it answers 503 (outcome still unknown; retry).
const IDEMPOTENT_REPEAT_WAIT: Duration = Duration::from_secs(5);

/// The response of a write, as stored for its idempotency key: `status` and
/// `value` on success, the problem JSON of the error otherwise.
pub fn render<T, V: Serialize>(
    status: StatusCode,
    outcome: Result<&T, &EngineError>,
    to_body: impl Fn(&T) -> V,
) -> StoredResponse {
    let encoded = match outcome {
        Ok(value) => serde_json::to_vec(&to_body(value)).map(|body| (status, body)),
        Err(err) => {
            let err = ApiError::Engine(err.clone());
            serde_json::to_vec(&err.problem()).map(|body| (err.parts().0, body))
        }
    };
    // Serializing these plain DTOs cannot fail (no maps with non-string
    // keys, no failing `Serialize` impls); an empty body would still be
    // replayed with the right status.
    let (status, body) = encoded.unwrap_or((status, Vec::new()));
    StoredResponse {
        status: status.as_u16(),
        body,
    }
}

/// Runs a write at most once per (member, endpoint, `Idempotency-Key`).
///
/// With a key, the claim becomes an [`IdemTicket`] handed to `execute`,
/// which passes it to the engine: the engine journals the response
/// (`render`ed from the outcome) in the same event as the write's effect,
/// or as its own record for a refusal. The answer is then the stored
/// response, once durable. If the write was not decided when `execute`
/// returns (a 503 while the concert actor still has it), the key stays
/// claimed: a retry waits for the real outcome and replays it. Without the
/// header nothing is de-duplicated.
pub async fn idempotent<R, T, F, Fut>(
    state: &AppState,
    headers: &HeaderMap,
    member: MemberId,
    endpoint: IdempotentEndpoint,
    request: &R,
    render: Render<T>,
    execute: F,
) -> ApiResult<HttpResponse>
where
    R: Serialize,
    F: FnOnce(Option<IdemTicket<T>>) -> Fut,
    Fut: Future<Output = ApiResult<Committed<T>>>,
{
    let Some(raw_key) = headers.get(IDEMPOTENCY_HEADER) else {
        let committed = execute(None).await?;
        state.durable(committed.pos).await?;
        return Ok(stored_response(&render(Ok(&committed.value))));
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
    let store = state.engine.idempotency();
    let claim = tokio::time::timeout(IDEMPOTENT_REPEAT_WAIT, store.claim(scope.clone(), fingerprint))
        .await
        .map_err(|_| EngineError::Unavailable)?;
    match claim {
        Claim::Replay(stored, pos) => {
            state.durable(pos).await?;
            Ok(stored_response(&stored))
        }
        Claim::Conflict => Err(EngineError::IdempotencyConflict.into()),
        Claim::Execute(guard) => {
            let outcome = execute(Some(guard.into_ticket(Arc::clone(&render)))).await;
            if let Some((stored, pos)) = store.settled(&scope, &fingerprint) {
                state.durable(pos).await?;
                return Ok(stored_response(&stored));
            }
            // Not settled: the write was never decided (its key is free
            // again) or is still on its way (its key stays claimed).
            let committed = outcome?;
            state.durable(committed.pos).await?;
            Ok(stored_response(&render(Ok(&committed.value))))
        }
    }
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
