//! Members and balance (member key).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use concert_actors::accounts::MAX_NAME_CHARS;
use std::collections::BTreeMap;
use std::sync::Arc;

use concert_actors::concert::Reservation;
use concert_actors::idempotency::{IdempotentEndpoint, Render};
use concert_actors::types::Krw;

use super::{idempotent, json, parse_limit};
use crate::api::{
    Balance, ChargeRequest, HistoryItem, HistoryPage, MemberCreated, MemberProfile, NewMember, Object, PageQuery,
    ReservationList,
};
use crate::auth::{new_member_key, Member};
use crate::error::{ApiError, ApiResult, Problem};
use crate::persistence::archive;
use crate::state::AppState;

/// Register a member; the member key is returned once.
#[utoipa::path(post, path = "/api/v1/members", tag = "members", request_body = NewMember,
    responses(
        (status = 201, body = MemberCreated),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(state: web::Data<AppState>, body: web::Json<Object<NewMember>>) -> ApiResult<HttpResponse> {
    let NewMember { name } = &body.0 .0;
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(ApiError::Validation(
            "name must be 1..=64 characters after trimming".into(),
        ));
    }
    let mut member_key = String::new();
    let committed = state.engine.register_member_with(name, |member| {
        let (key, hash) = new_member_key(member);
        member_key = key;
        hash
    })?;
    state.durable(committed.pos).await?;
    tracing::info!(member_id = committed.value, "member registered");
    Ok(json(
        StatusCode::CREATED,
        &MemberCreated {
            id: committed.value,
            name: name.to_owned(),
            member_key,
        },
    ))
}

/// The calling member.
#[utoipa::path(get, path = "/api/v1/members/me", tag = "members", security(("memberKey" = [])),
    responses(
        (status = 200, body = MemberProfile),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn me(state: web::Data<AppState>, Member(member): Member) -> ApiResult<HttpResponse> {
    let (name, balance) = state
        .engine
        .accounts()
        .profile(member)
        .ok_or(ApiError::Engine(concert_actors::EngineError::Unauthenticated))?;
    Ok(json(
        StatusCode::OK,
        &MemberProfile {
            id: member,
            name,
            balance,
        },
    ))
}

/// The calling member's balance.
#[utoipa::path(get, path = "/api/v1/members/me/balance", tag = "members", security(("memberKey" = [])),
    responses(
        (status = 200, body = Balance),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn balance(state: web::Data<AppState>, Member(member): Member) -> ApiResult<HttpResponse> {
    let balance = state
        .engine
        .accounts()
        .balance(member)
        .ok_or(ApiError::Engine(concert_actors::EngineError::Unauthenticated))?;
    Ok(json(StatusCode::OK, &Balance { balance }))
}

/// Charge the balance. Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/members/me/balance/charges", tag = "members", security(("memberKey" = [])),
    request_body = ChargeRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "1..=255 visible ASCII characters")),
    responses(
        (status = 200, body = Balance),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "IDEMPOTENCY_CONFLICT", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn charge(
    state: web::Data<AppState>,
    req: HttpRequest,
    request: web::Json<Object<ChargeRequest>>,
    Member(member): Member,
) -> ApiResult<HttpResponse> {
    let request = request.into_inner().0;
    let render: Render<Krw> =
        Arc::new(|outcome| super::render(StatusCode::OK, outcome, |&balance| Balance { balance }));
    let engine = &state.engine;
    idempotent(
        &state,
        req.headers(),
        member,
        IdempotentEndpoint::Charge,
        &request,
        render,
        |ticket| async move { Ok(engine.charge_keyed(member, request.amount, ticket)?) },
    )
    .await
}

/// Balance history, newest first.
#[utoipa::path(get, path = "/api/v1/members/me/balance/history", tag = "members", security(("memberKey" = [])),
    params(PageQuery),
    responses(
        (status = 200, body = HistoryPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn history(
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
    Member(member): Member,
) -> ApiResult<HttpResponse> {
    let limit = parse_limit(query.limit.as_deref())?;
    let cursor = parse_cursor(query.cursor.as_deref())?;
    let mut page = state
        .engine
        .accounts()
        .history(member, cursor, limit)
        .ok_or(ApiError::Engine(concert_actors::EngineError::Unauthenticated))?;
    if let Some(range) = page.from_tables.take() {
        let older = archive::history(&state.db, member, range).await.map_err(|err| {
            tracing::warn!(error = %err, "cannot read older balance history");
            ApiError::Engine(concert_actors::EngineError::Unavailable)
        })?;
        page.items.extend(older.into_iter().rev());
    }
    let items = page
        .items
        .iter()
        .map(|entry| HistoryItem {
            kind: entry.kind.as_str(),
            amount: entry.amount,
            balance_after: entry.balance_after,
            at: state.format_time(entry.at_ms),
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &HistoryPage {
            items,
            next_cursor: page.next_cursor.map(|c| c.to_string()),
        },
    ))
}

fn parse_cursor(text: Option<&str>) -> ApiResult<Option<u64>> {
    text.map(|text| {
        text.parse::<u64>()
            .map_err(|_| ApiError::Validation("cursor is not one this server issued".into()))
    })
    .transpose()
}

/// The calling member's reservations, newest first, a page at a time.
///
/// The live ones (and finished ones not yet retired) come from the concert
/// actors, one message per concert, all at once; the retired ones from the
/// tables; where both have a reservation, memory's is the newer.
#[utoipa::path(get, path = "/api/v1/members/me/reservations", tag = "members", security(("memberKey" = [])),
    params(PageQuery),
    responses(
        (status = 200, body = ReservationList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reservations(
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
    Member(member): Member,
) -> ApiResult<HttpResponse> {
    let limit = parse_limit(query.limit.as_deref())?;
    let before = parse_cursor(query.cursor.as_deref())?;
    // One more than a page tells whether another page follows.
    let (in_memory, retired) = futures_util::future::join(
        state.engine.member_reservations_before(member, before, limit + 1),
        archive::member_reservations(&state.db, member, before, limit + 1),
    )
    .await;
    let retired = retired.map_err(|err| {
        tracing::warn!(error = %err, "cannot read retired reservations");
        ApiError::Engine(concert_actors::EngineError::Unavailable)
    })?;
    let mut merged: BTreeMap<u64, Reservation> = retired.into_iter().map(|r| (r.id, r)).collect();
    merged.extend(in_memory?.into_iter().map(|r| (r.id, r)));
    let mut page: Vec<Reservation> = merged.into_values().rev().take(limit + 1).collect();
    let next_cursor = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|r| r.id.to_string())
    } else {
        None
    };
    let items = page.iter().map(|r| state.reservation_dto(r)).collect();
    Ok(json(StatusCode::OK, &ReservationList { items, next_cursor }))
}
