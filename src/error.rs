//! Every error the API answers, as RFC 9457 problem JSON, from one table.
//!
//! The engine returns typed rejections ([`EngineError`]); [`ApiError`] adds
//! the HTTP-only ones (bad JSON, wrong method, ...). [`ApiError::parts`] is
//! the single mapping to status + stable `code`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use concert_actors::EngineError;
use serde::Serialize;
use utoipa::ToSchema;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// RFC 9457 problem details with a stable machine-readable `code`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[schema(example = "https://concert.example/problems/seat-unavailable")]
    pub r#type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable code, e.g. `SEAT_UNAVAILABLE`.
    #[schema(example = "SEAT_UNAVAILABLE")]
    pub code: String,
    /// Place in line, only on `TOKEN_NOT_ACTIVE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    Engine(EngineError),
    /// Malformed JSON, wrong types, bad query or path values.
    Validation(String),
    Forbidden(&'static str),
    NotFound(&'static str),
    /// With the `Allow` header value.
    MethodNotAllowed(&'static str),
    PayloadTooLarge,
    UnsupportedMediaType,
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        ApiError::Engine(err)
    }
}

impl From<concert_actors::sink::Unavailable> for ApiError {
    fn from(_: concert_actors::sink::Unavailable) -> Self {
        ApiError::Engine(EngineError::Unavailable)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (_, code, _) = self.parts();
        write!(f, "{code}: {}", self.detail())
    }
}

impl ApiError {
    /// The one table: status, code and title of every error.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use EngineError as E;
        match self {
            ApiError::Validation(_) | ApiError::Engine(E::Validation(_)) => {
                (StatusCode::BAD_REQUEST, "VALIDATION_FAILED", "The request is not valid")
            }
            ApiError::Engine(E::Unauthenticated) => (
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "Member key missing or wrong",
            ),
            ApiError::Engine(E::TokenInvalid) => (
                StatusCode::UNAUTHORIZED,
                "TOKEN_INVALID",
                "Queue token missing, unknown or expired",
            ),
            ApiError::Engine(E::TokenNotActive { .. }) => (
                StatusCode::FORBIDDEN,
                "TOKEN_NOT_ACTIVE",
                "The queue token is still waiting",
            ),
            ApiError::Forbidden(_) | ApiError::Engine(E::Forbidden) => {
                (StatusCode::FORBIDDEN, "FORBIDDEN", "Not allowed")
            }
            ApiError::NotFound(_) | ApiError::Engine(E::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "NOT_FOUND", "Not found")
            }
            ApiError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "Method not allowed on this path",
            ),
            ApiError::Engine(E::SeatUnavailable) => (
                StatusCode::CONFLICT,
                "SEAT_UNAVAILABLE",
                "A requested seat is held or sold",
            ),
            ApiError::Engine(E::TicketLimit { .. }) => {
                (StatusCode::CONFLICT, "TICKET_LIMIT", "Too many seats for one member")
            }
            ApiError::Engine(E::SalesClosed) => (StatusCode::CONFLICT, "SALES_CLOSED", "Sales are closed"),
            ApiError::Engine(E::HoldExpired) => (StatusCode::CONFLICT, "HOLD_EXPIRED", "The hold has expired"),
            ApiError::Engine(E::NotPending) => (
                StatusCode::CONFLICT,
                "RESERVATION_NOT_PENDING",
                "The reservation is not pending payment",
            ),
            ApiError::Engine(E::IdempotencyConflict) => (
                StatusCode::CONFLICT,
                "IDEMPOTENCY_CONFLICT",
                "Idempotency key reused with another request",
            ),
            ApiError::Engine(E::InsufficientBalance { .. }) => (
                StatusCode::PAYMENT_REQUIRED,
                "INSUFFICIENT_BALANCE",
                "The balance is too low",
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "The request body is too large",
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "The body must be application/json",
            ),
            ApiError::Engine(E::Unavailable) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "Temporarily unavailable",
            ),
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::Engine(err) => err.to_string(),
            ApiError::Validation(msg) => msg.clone(),
            ApiError::Forbidden(what) => (*what).to_owned(),
            ApiError::NotFound(what) => format!("{what} not found"),
            ApiError::MethodNotAllowed(_) => "this path does not accept that method".to_owned(),
            ApiError::PayloadTooLarge => "the body exceeds CONCERT_MAX_BODY_BYTES".to_owned(),
            ApiError::UnsupportedMediaType => "send the body as application/json".to_owned(),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, code, title) = self.parts();
        Problem {
            r#type: format!(
                "https://concert.example/problems/{}",
                code.to_ascii_lowercase().replace('_', "-")
            ),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.detail(),
            code: code.to_owned(),
            position: match self {
                ApiError::Engine(EngineError::TokenNotActive { position }) => Some(*position),
                _ => None,
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        let problem = self.problem();
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        if let ApiError::MethodNotAllowed(allow) = self {
            response.insert_header((header::ALLOW, *allow));
        }
        if self.status_code() == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string()));
        }
        if self.status_code().is_server_error() {
            tracing::warn!(code = %problem.code, detail = %problem.detail, "request failed");
        }
        response.json(problem)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_problem_json_with_its_code() {
        let cases = [
            (ApiError::Validation("x".into()), 400, "VALIDATION_FAILED"),
            (ApiError::Engine(EngineError::Unauthenticated), 401, "UNAUTHENTICATED"),
            (ApiError::Engine(EngineError::TokenInvalid), 401, "TOKEN_INVALID"),
            (
                ApiError::Engine(EngineError::TokenNotActive { position: 3 }),
                403,
                "TOKEN_NOT_ACTIVE",
            ),
            (ApiError::Engine(EngineError::Forbidden), 403, "FORBIDDEN"),
            (ApiError::NotFound("path"), 404, "NOT_FOUND"),
            (ApiError::MethodNotAllowed("GET"), 405, "METHOD_NOT_ALLOWED"),
            (ApiError::Engine(EngineError::SeatUnavailable), 409, "SEAT_UNAVAILABLE"),
            (
                ApiError::Engine(EngineError::TicketLimit { limit: 4 }),
                409,
                "TICKET_LIMIT",
            ),
            (ApiError::Engine(EngineError::SalesClosed), 409, "SALES_CLOSED"),
            (ApiError::Engine(EngineError::HoldExpired), 409, "HOLD_EXPIRED"),
            (
                ApiError::Engine(EngineError::NotPending),
                409,
                "RESERVATION_NOT_PENDING",
            ),
            (
                ApiError::Engine(EngineError::IdempotencyConflict),
                409,
                "IDEMPOTENCY_CONFLICT",
            ),
            (
                ApiError::Engine(EngineError::InsufficientBalance { balance: 1, amount: 2 }),
                402,
                "INSUFFICIENT_BALANCE",
            ),
            (ApiError::PayloadTooLarge, 413, "PAYLOAD_TOO_LARGE"),
            (ApiError::UnsupportedMediaType, 415, "UNSUPPORTED_MEDIA_TYPE"),
            (ApiError::Engine(EngineError::Unavailable), 503, "UNAVAILABLE"),
        ];
        for (err, status, code) in cases {
            let problem = err.problem();
            assert_eq!(problem.status, status, "{code} has status {status}");
            assert_eq!(problem.code, code);
        }
        assert_eq!(
            ApiError::Engine(EngineError::TokenNotActive { position: 3 })
                .problem()
                .position,
            Some(3),
            "TOKEN_NOT_ACTIVE carries the position"
        );
    }
}
