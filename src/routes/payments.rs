//! Payment (ACTIVE queue token): debit and sale in one step.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use concert_actors::idempotency::IdempotentEndpoint;
use concert_actors::EngineError;

use super::{body, idempotent};
use crate::api::{PayRequest, PaymentDto};
use crate::auth::queue_token;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

/// Pay a pending reservation from the balance. The queue token expires on
/// success. Honours `Idempotency-Key` (a replay works with an expired token).
#[utoipa::path(post, path = "/api/v1/payments", tag = "payments", security(("queueToken" = [])),
    request_body = PayRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "1..=255 visible ASCII characters")),
    responses(
        (status = 201, body = PaymentDto),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "TOKEN_INVALID", body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "INSUFFICIENT_BALANCE", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "TOKEN_NOT_ACTIVE or FORBIDDEN", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "HOLD_EXPIRED, RESERVATION_NOT_PENDING or IDEMPOTENCY_CONFLICT", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn pay(
    state: web::Data<AppState>,
    req: HttpRequest,
    request: web::Json<PayRequest>,
) -> ApiResult<HttpResponse> {
    let token = queue_token(req.headers()).ok_or(EngineError::TokenInvalid)?;
    // Even an EXPIRED token still names its member, for idempotent replays.
    let owner = state
        .engine
        .queue()
        .peek(&token)
        .ok_or(EngineError::TokenInvalid)?
        .member;
    let request = request.into_inner();
    let execute = async {
        let member = state.engine.admitted_member(&token)?;
        let reservation = u64::try_from(request.reservation_id)
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| ApiError::Validation("reservationId must be a positive integer".into()))?;
        let committed = state.engine.pay(member, reservation, Some(token)).await?;
        state.durable(committed.pos).await?;
        let receipt = committed.value;
        tracing::info!(
            member_id = member,
            reservation_id = reservation,
            payment_id = receipt.payment_id,
            "payment completed"
        );
        body(
            StatusCode::CREATED,
            &PaymentDto {
                payment_id: receipt.payment_id,
                reservation_id: receipt.reservation_id,
                amount: receipt.amount,
                balance: receipt.balance,
                status: "COMPLETED",
            },
        )
    };
    idempotent(
        &state,
        req.headers(),
        owner,
        IdempotentEndpoint::Payment,
        &request,
        execute,
    )
    .await
}
