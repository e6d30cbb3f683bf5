//! Identifier and money types shared by every engine component.

use serde::{Deserialize, Serialize};

pub type MemberId = u64;
pub type ConcertId = u64;
pub type ReservationId = u64;
pub type PaymentId = u64;
/// A seat number, 1-based.
pub type SeatNo = u32;
/// Whole Korean won.
pub type Krw = i64;

/// Position in the engine's event journal. Every state change gets one; a
/// component remembers the last position it applied so that recovery can
/// replay the journal over a snapshot without applying anything twice.
pub type JournalPos = u64;

/// Largest concert the engine accepts (a limit on everything: TigerStyle).
pub const MAX_SEATS_PER_CONCERT: u32 = 100_000;
/// Largest price of one seat.
pub const MAX_SEAT_PRICE: Krw = 10_000_000;

/// Status of one seat as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SeatStatus {
    Available,
    Held,
    Sold,
}

impl SeatStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SeatStatus::Available => "AVAILABLE",
            SeatStatus::Held => "HELD",
            SeatStatus::Sold => "SOLD",
        }
    }
}
