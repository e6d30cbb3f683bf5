//! Payment (ACTIVE queue token): debit and sale in one step.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use concert_actors::concert::ReservationStatus;
use concert_actors::concert_actor::PaymentReceipt;
use concert_actors::idempotency::{IdempotentEndpoint, Render};
use concert_actors::EngineError;

use super::idempotent;
use crate::api::{Object, PayRequest, PaymentDto};
use crate::auth::{token_holder, QueueToken};
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
    request: web::Json<Object<PayRequest>>,
    QueueToken(token): QueueToken,
) -> ApiResult<HttpResponse> {
    let owner = token_holder(&state.engine, &token)?;
    let request = request.into_inner().0;
    let render: Render<PaymentReceipt> = Arc::new(|outcome| {
        super::render(StatusCode::CREATED, outcome, |receipt: &PaymentReceipt| PaymentDto {
            payment_id: receipt.payment_id,
            reservation_id: receipt.reservation_id,
            amount: receipt.amount,
            balance: receipt.balance,
            status: "COMPLETED",
        })
    });
    let engine = &state.engine;
    let retired = &state;
    let execute = |ticket| async move {
        let member = engine.admitted_member(&token)?;
        let reservation = u64::try_from(request.reservation_id)
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| ApiError::Validation("reservationId must be a positive integer".into()))?;
        let committed = match engine.pay_keyed(member, reservation, Some(token), ticket).await {
            // Finished and retired: answered as the live reservation was.
            Err(EngineError::NotFound("reservation")) => {
                let finished = retired.retired_reservation(member, reservation).await?;
                return Err(match finished.status {
                    ReservationStatus::Expired => EngineError::HoldExpired,
                    _ => EngineError::NotPending,
                }
                .into());
            }
            done => done?,
        };
        tracing::info!(
            member_id = member,
            reservation_id = reservation,
            payment_id = committed.value.payment_id,
            "payment completed"
        );
        Ok(committed)
    };
    idempotent(
        &state,
        req.headers(),
        owner,
        IdempotentEndpoint::Payment,
        &request,
        render,
        execute,
    )
    .await
}
