//! Credentials: member keys, the admin key and queue tokens.
//!
//! A member key is `mk_<memberId>_<32 hex digits of secret>` (128 random
//! bits). Only SHA-256 of the whole key is stored; verification looks the
//! member up by the id in the key and compares hashes in constant time. No
//! key, hash or token is ever logged.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use actix_web::{web, FromRequest, HttpRequest};
use concert_actors::queue::{TokenId, TokenStatus};
use concert_actors::types::MemberId;
use concert_actors::{Engine, EngineError};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

pub const QUEUE_TOKEN_HEADER: &str = "X-Queue-Token";
pub const ADMIN_KEY_HEADER: &str = "X-Admin-Key";

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// 128 random bits as 32 hex digits.
pub fn random_secret() -> String {
    hex::encode(rand::rng().random::<[u8; 16]>())
}

/// A new member key for `member`, and the hash to store.
pub fn new_member_key(member: MemberId) -> (String, [u8; 32]) {
    let key = format!("mk_{member}_{}", random_secret());
    let hash = sha256(key.as_bytes());
    (key, hash)
}

/// Pending registrations get their key before the id is known; the key
/// embeds a placeholder id that `finish_member_key` fills in.
pub fn parse_member_id(key: &str) -> Option<MemberId> {
    let rest = key.strip_prefix("mk_")?;
    let (id, secret) = rest.split_once('_')?;
    if secret.len() != 32 {
        return None;
    }
    id.parse().ok()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Whether the request carries any member key at all.
pub fn has_member_key(headers: &HeaderMap) -> bool {
    headers.contains_key(AUTHORIZATION)
}

/// The member behind `Authorization: Bearer <memberKey>`.
pub fn member_from_key(engine: &Engine, headers: &HeaderMap) -> Result<MemberId, ApiError> {
    let key = bearer(headers).ok_or(EngineError::Unauthenticated)?;
    let member = parse_member_id(key).ok_or(EngineError::Unauthenticated)?;
    let stored = engine.accounts().key_hash(member).ok_or(EngineError::Unauthenticated)?;
    if bool::from(sha256(key.as_bytes()).ct_eq(&stored)) {
        Ok(member)
    } else {
        Err(EngineError::Unauthenticated.into())
    }
}

/// The queue token of the request, if it is well-formed.
pub fn queue_token(headers: &HeaderMap) -> Option<TokenId> {
    let value = headers.get(QUEUE_TOKEN_HEADER)?.to_str().ok()?;
    TokenId::parse(value.trim())
}

/// The member a known queue token was issued to, whatever its status: even
/// an EXPIRED token names its member, so an idempotent replay of a write it
/// made (a payment expires it) still finds its key. Unknown: TOKEN_INVALID.
pub fn token_holder(engine: &Engine, token: &TokenId) -> Result<MemberId, ApiError> {
    engine
        .queue()
        .peek(token)
        .map(|view| view.member)
        .ok_or(ApiError::Engine(EngineError::TokenInvalid))
}

/// Whether the request carries the header at all (even a malformed one).
pub fn has_queue_token(headers: &HeaderMap) -> bool {
    headers.contains_key(QUEUE_TOKEN_HEADER)
}

/// Checks `X-Admin-Key` against the stored hash in constant time.
pub fn require_admin(admin_key_hash: &[u8; 32], headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(ADMIN_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Forbidden("admin key missing or wrong"))?;
    if bool::from(sha256(presented.as_bytes()).ct_eq(admin_key_hash)) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("admin key missing or wrong"))
    }
}

// ---- typed credentials: extractors a handler names in its signature -----

/// The app state of a request (every route has it).
fn app_state(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or(ApiError::Engine(EngineError::Unavailable))
}

/// The member behind a valid `Authorization: Bearer <memberKey>`; else 401
/// UNAUTHENTICATED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member(pub MemberId);

impl FromRequest for Member {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(app_state(req).and_then(|state| member_from_key(&state.engine, req.headers()).map(Member)))
    }
}

/// A well-formed `X-Queue-Token` (any status: the handler decides what it
/// needs); missing or malformed is 401 TOKEN_INVALID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueToken(pub TokenId);

impl FromRequest for QueueToken {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            queue_token(req.headers())
                .map(QueueToken)
                .ok_or(ApiError::Engine(EngineError::TokenInvalid)),
        )
    }
}

/// The owner of what a request names, by member key or by a live (WAITING
/// or ACTIVE) queue token: either valid one suffices. Without any
/// credential, or with a wrong member key, 401 UNAUTHENTICATED; with only a
/// bad or EXPIRED token, 401 TOKEN_INVALID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner(pub MemberId);

impl FromRequest for Owner {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(app_state(req).and_then(|state| owner(state, req.headers()).map(Owner)))
    }
}

fn owner(state: &AppState, headers: &HeaderMap) -> Result<MemberId, ApiError> {
    if has_member_key(headers) {
        if let Ok(member) = member_from_key(&state.engine, headers) {
            return Ok(member);
        }
    }
    if let Some(token) = queue_token(headers) {
        if let Some(view) = state.engine.queue().peek(&token) {
            if view.status != TokenStatus::Expired {
                return Ok(view.member);
            }
        }
    }
    if has_member_key(headers) || !has_queue_token(headers) {
        Err(EngineError::Unauthenticated.into())
    } else {
        Err(EngineError::TokenInvalid.into())
    }
}

/// A request with the right `X-Admin-Key` (compared in constant time);
/// else 403 FORBIDDEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(app_state(req).and_then(|state| require_admin(&state.admin_key_hash, req.headers()).map(|()| Admin)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_keys_carry_their_id_and_128_random_bits() {
        let (key, hash) = new_member_key(42);
        assert_eq!(parse_member_id(&key), Some(42));
        assert_eq!(hash, sha256(key.as_bytes()), "only the hash is kept");
        let (other, _) = new_member_key(42);
        assert_ne!(key, other, "keys are random");
        assert_eq!(parse_member_id("mk_42_short"), None, "a truncated secret is refused");
        assert_eq!(parse_member_id("nonsense"), None);
    }
}
