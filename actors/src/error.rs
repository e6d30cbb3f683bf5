//! The engine's errors: an ordered list of user rejections plus
//! `Unavailable`. The HTTP layer maps each variant to one status and one
//! stable problem `code` in a single table; nothing here knows about HTTP.
//! Each core's own rejection type says which of these it is beside its
//! definition (`From<ConcertRejection>` in `concert.rs`, `From<WalletRejection>`
//! in `accounts.rs`), so this module depends on no core.

use crate::seat_map::HoldError;
use crate::sink::Unavailable;
use crate::types::Krw;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Validation(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("member key missing or wrong")]
    Unauthenticated,
    #[error("queue token missing, unknown or expired")]
    TokenInvalid,
    #[error("queue token is still waiting (position {position})")]
    TokenNotActive { position: u64 },
    #[error("the reservation belongs to another member")]
    Forbidden,
    #[error("a requested seat is held or sold")]
    SeatUnavailable,
    #[error("a member may hold or own at most {limit} seats of a concert")]
    TicketLimit { limit: u32 },
    #[error("sales are closed: the concert has started")]
    SalesClosed,
    #[error("the hold has expired")]
    HoldExpired,
    #[error("the reservation is not pending payment")]
    NotPending,
    #[error("balance {balance} is below the amount {amount}")]
    InsufficientBalance { balance: Krw, amount: Krw },
    #[error("the idempotency key was used with another request")]
    IdempotencyConflict,
    #[error("the engine cannot take this write now; retry shortly")]
    Unavailable,
}

impl EngineError {
    /// Whether this error is the outcome of deciding a write (stored and
    /// replayed for its idempotency key) rather than a statement that the
    /// write was not decided: the engine could not take it, or the caller's
    /// credentials did not let it through (a retry may go through).
    pub fn is_outcome(&self) -> bool {
        !matches!(
            self,
            EngineError::Unavailable
                | EngineError::TokenInvalid
                | EngineError::TokenNotActive { .. }
                | EngineError::Unauthenticated
        )
    }
}

impl From<Unavailable> for EngineError {
    fn from(_: Unavailable) -> Self {
        EngineError::Unavailable
    }
}

impl From<HoldError> for EngineError {
    fn from(err: HoldError) -> Self {
        match err {
            HoldError::SeatUnavailable(_) => EngineError::SeatUnavailable,
            HoldError::TicketLimit { limit, .. } => EngineError::TicketLimit { limit },
            HoldError::SeatOutOfRange(_) => EngineError::NotFound("seat"),
            HoldError::DuplicateReservation(_) => EngineError::Unavailable,
            HoldError::EmptySeatList
            | HoldError::TooManySeats { .. }
            | HoldError::DuplicateSeat(_)
            | HoldError::SeatZero => EngineError::Validation(err.to_string()),
        }
    }
}
