//! Decide, then apply: what may go wrong when a decided event is applied.
//!
//! Every change of a concert or a wallet is first *decided* (a command
//! checked against the state, which it does not change) and turned into one
//! [`Event`](crate::Event); then one `apply(&Event)` changes the state:
//! [`Concert::apply`](crate::concert::Concert::apply) and
//! [`Account::apply`](crate::accounts::Account::apply). The live path and
//! journal replay ([`EngineState::apply`](crate::EngineState::apply)) call
//! the same functions, so they cannot disagree about what an event means.
//!
//! An event that does not apply is never skipped: on replay it is a corrupt
//! or misordered journal (start-up stops, naming the position); on the live
//! path it is a broken invariant, and the process stops ([`fail_stop`]) so
//! that the next start rebuilds the state from the journal.

use crate::seat_map::HoldError;
use crate::types::{ConcertId, Krw, MemberId, ReservationId};

/// Why a journaled event does not apply to the state it was routed to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("the hold of reservation {reservation} does not fit the seat map: {source}")]
    Hold {
        reservation: ReservationId,
        source: HoldError,
    },
    #[error("reservation {0} exists already")]
    DuplicateReservation(ReservationId),
    #[error("reservation {0} is unknown")]
    UnknownReservation(ReservationId),
    #[error("reservation {reservation} is {status}, not PENDING_PAYMENT")]
    NotPending {
        reservation: ReservationId,
        status: &'static str,
    },
    #[error("reservation {0} has no live hold to sell")]
    NoLiveHold(ReservationId),
    #[error("an event of concert {event} was applied to concert {applied_to}")]
    WrongConcert { event: ConcertId, applied_to: ConcertId },
    #[error("member {member}: balance {balance} {change:+} is not the journaled {balance_after}")]
    Ledger {
        member: MemberId,
        balance: Krw,
        change: Krw,
        balance_after: Krw,
    },
    #[error("member {0} is unknown")]
    UnknownMember(MemberId),
    #[error("concert {0} is unknown")]
    UnknownConcert(ConcertId),
    #[error("a {event} event is not applied to {to}")]
    Misrouted { event: &'static str, to: &'static str },
}

/// Stops the process at once: a decided change did not apply, so memory no
/// longer matches what was journaled, and serving on would journal changes
/// that replay cannot repeat. The message names the broken invariant; the
/// next start recovers from the journal. Exit status 70 (EX_SOFTWARE).
pub fn fail_stop(broken: &str) -> ! {
    tracing::error!(invariant = broken, "broken invariant: stopping the process (fail-stop)");
    eprintln!("broken invariant: {broken}; stopping the process (fail-stop)");
    std::process::exit(70)
}
