//! Operations: health, readiness, metrics, and the `/docs` redirect.

use actix_web::http::header::LOCATION;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use super::json;
use crate::api::HealthResponse;
use crate::state::AppState;

/// 200 while the process is up.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = HealthResponse)))]
pub async fn health() -> HttpResponse {
    json(StatusCode::OK, &HealthResponse { status: "UP" })
}

/// 200 once recovery has finished, else 503.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = HealthResponse), (status = 503, body = HealthResponse)))]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    if state.is_ready() {
        json(StatusCode::OK, &HealthResponse { status: "READY" })
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(HealthResponse { status: "RECOVERING" })
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(&state.engine, &state.persister))
}

/// `/docs` -> `/docs/` (Swagger UI lives under the folder).
pub async fn redirect_docs() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((LOCATION, "/docs/"))
        .finish()
}
