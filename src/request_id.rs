//! Request ids and the per-request span.
//!
//! Every request gets an id: the caller's `X-Request-Id` when it sends a
//! sane one (1..=128 visible ASCII characters), else 16 random bytes as 32
//! hex digits. The id is echoed in the response's `X-Request-Id`, kept in
//! the request's extensions ([`RequestId`]) and carried by a `request`
//! span around the whole handling, so every log line of the request (on
//! the worker that handles it) names it. A client or a load balancer that
//! sends its own id can find the server's lines for it.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use tracing::Instrument;

/// The header that carries a request id in and out.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Longest request id taken from a caller.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The id of the request being handled (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The caller's id when it is one we may log and echo, else a new one.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| hex::encode(rand::random::<[u8; 16]>()), str::to_owned)
}

/// Middleware (`actix_web::middleware::from_fn`): names the request, runs
/// it inside its span and echoes the id.
pub async fn with_request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = request_id(&req);
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.path());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.call(req).instrument(span).await?;
    // `request_id` only returns visible ASCII, which is a valid header value.
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}
