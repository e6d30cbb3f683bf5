//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! served at `/api-docs/openapi.json` (Swagger UI at `/docs`).

use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::*;
use crate::error::Problem;
use crate::routes::{admin, catalog, members, ops, payments, queue, reservations, stats};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Concert reservation API",
        version = "1.0.0",
        description = "Waiting queue, seat holds, prepaid balance and payment for concert ticket sales. \
            Every error is RFC 9457 problem JSON with a stable `code`."
    ),
    paths(
        members::create, members::me, members::balance, members::charge, members::history,
        members::reservations, queue::issue, queue::status, catalog::list, catalog::dates, catalog::get,
        catalog::seats, reservations::create, reservations::get, reservations::cancel, payments::pay,
        admin::create_concert, stats::stats, ops::health, ops::ready, ops::metrics,
    ),
    components(schemas(
        Problem, NewMember, MemberCreated, MemberProfile, Balance, ChargeRequest, HistoryItem, HistoryPage,
        QueueTokenResponse, QueueStatusResponse, ConcertDto, ConcertPage, DateItem, DatesResponse, SeatDto,
        SeatMapResponse, HoldRequest, ReservationDto, ReservationList, PayRequest, PaymentDto, PriceTierDto,
        NewConcertRequest, HealthResponse, SeatStatusName,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "members", description = "Members, balance and history (member key)"),
        (name = "queue", description = "The waiting queue"),
        (name = "catalog", description = "Concerts, dates and seat maps"),
        (name = "reservations", description = "Seat holds"),
        (name = "payments", description = "Paying a hold from the balance"),
        (name = "admin", description = "Operator endpoints (X-Admin-Key)"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("memberKey", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        components.add_security_scheme(
            "queueToken",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Queue-Token",
                "The token from POST /queue/tokens: 48 lowercase hex digits (slot, generation, 128 random bits).",
            ))),
        );
        components.add_security_scheme(
            "adminKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Admin-Key"))),
        );
    }
}
