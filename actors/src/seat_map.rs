//! `SeatMap`: the seats of one concert and the live holds on them.
//!
//! A plain struct with no I/O and no threads (the functional core). Only the
//! concert's actor owns one, so every method takes `&mut self` and no seat is
//! ever behind a lock. Property tests and benchmarks drive it directly.
//!
//! Memory: one `u64` cell per seat (status in the top two bits, the owning
//! reservation id below), 8 bytes a seat at rest. Prices live in [`Pricing`]
//! tiers, not per seat. Live holds are kept in a map keyed by reservation and
//! in a deadline-ordered set, so expiry touches only what expires.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::clock::TimestampMs;
use crate::pricing::Pricing;
use crate::types::{Krw, MemberId, ReservationId, SeatNo, SeatStatus, MAX_SEATS_PER_CONCERT};

const STATE_SHIFT: u32 = 62;
const ID_MASK: u64 = (1 << STATE_SHIFT) - 1;
const HELD: u64 = 1 << STATE_SHIFT;
const SOLD: u64 = 2 << STATE_SHIFT;
/// Reservation ids must fit below the status bits of a cell.
pub const MAX_RESERVATION_ID: ReservationId = ID_MASK;

/// A live hold: seats reserved for one member until `deadline_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub member: MemberId,
    pub seats: Vec<SeatNo>,
    pub deadline_ms: TimestampMs,
    pub amount: Krw,
}

/// Limits applied to one hold request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldLimits {
    pub max_seats_per_reservation: u32,
    pub max_seats_per_member: u32,
}

impl HoldLimits {
    /// No limit: applying a hold decided earlier (its limits were the
    /// decision's), where only the seats themselves count.
    pub const UNLIMITED: HoldLimits = HoldLimits {
        max_seats_per_reservation: u32::MAX,
        max_seats_per_member: u32::MAX,
    };
}

/// Why a hold was refused. Nothing is held when any of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    #[error("the seat list is empty")]
    EmptySeatList,
    #[error("at most {max} seats may be held at once")]
    TooManySeats { max: u32 },
    #[error("seat {0} is listed twice")]
    DuplicateSeat(SeatNo),
    #[error("seat numbers start at 1")]
    SeatZero,
    #[error("seat {0} does not exist")]
    SeatOutOfRange(SeatNo),
    #[error("seat {0} is held or sold")]
    SeatUnavailable(SeatNo),
    #[error("a member may hold or own at most {limit} seats of a concert; {already} already")]
    TicketLimit { limit: u32, already: u32 },
    #[error("reservation {0} already exists")]
    DuplicateReservation(ReservationId),
}

/// Why a hold could not be confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    #[error("no live hold with that reservation id")]
    NotHeld,
    /// The deadline had passed; the hold has now been released.
    #[error("the hold expired")]
    Expired(Hold),
}

/// The seats of one concert.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeatMap {
    /// `cells[n - 1]` is seat `n`: 0 = AVAILABLE, `HELD | rid`, `SOLD | rid`.
    cells: Vec<u64>,
    pricing: Pricing,
    available: u32,
    holds: FxHashMap<ReservationId, Hold>,
    /// `(deadline, reservation)` of every live hold: expiry pops from the front.
    deadlines: BTreeSet<(TimestampMs, ReservationId)>,
    /// Seats held or sold per member (the ticket limit).
    per_member: FxHashMap<MemberId, u32>,
    /// Bumped on every change; lets readers cache an encoded seat map.
    version: u64,
}

impl SeatMap {
    /// `seat_count` seats, all AVAILABLE.
    pub fn new(seat_count: SeatNo, pricing: Pricing) -> Self {
        assert!(
            (1..=MAX_SEATS_PER_CONCERT).contains(&seat_count),
            "seat_count is validated by the caller"
        );
        Self {
            cells: vec![0; seat_count as usize],
            pricing,
            available: seat_count,
            holds: FxHashMap::default(),
            deadlines: BTreeSet::new(),
            per_member: FxHashMap::default(),
            version: 0,
        }
    }

    pub fn seat_count(&self) -> SeatNo {
        self.cells.len() as SeatNo
    }

    /// AVAILABLE seats, O(1).
    pub fn available(&self) -> u32 {
        self.available
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn pricing(&self) -> &Pricing {
        &self.pricing
    }

    pub fn live_holds(&self) -> usize {
        self.holds.len()
    }

    pub fn hold_of(&self, reservation: ReservationId) -> Option<&Hold> {
        self.holds.get(&reservation)
    }

    /// Seats held or sold by `member`.
    pub fn seats_of_member(&self, member: MemberId) -> u32 {
        self.per_member.get(&member).copied().unwrap_or(0)
    }

    /// Status of one seat, `None` when the number is out of range.
    pub fn status(&self, seat: SeatNo) -> Option<SeatStatus> {
        let cell = *self.cells.get((seat as usize).checked_sub(1)?)?;
        Some(cell_status(cell))
    }

    /// The reservation that holds or bought `seat`.
    pub fn owner(&self, seat: SeatNo) -> Option<ReservationId> {
        let cell = *self.cells.get((seat as usize).checked_sub(1)?)?;
        (cell != 0).then_some(cell & ID_MASK)
    }

    /// Every seat in order with its price and status.
    pub fn seats(&self) -> impl Iterator<Item = (SeatNo, Krw, SeatStatus)> + '_ {
        self.cells.iter().enumerate().map(|(idx, &cell)| {
            let seat = idx as SeatNo + 1;
            (seat, self.pricing.price_of(seat), cell_status(cell))
        })
    }

    /// Bytes the seat cells take per seat at rest (no holds).
    pub fn bytes_per_seat_at_rest(&self) -> usize {
        std::mem::size_of_val(self.cells.as_slice()) / self.cells.len()
    }

    /// Holds every seat of `seats` for `member` under `reservation`, or none.
    /// Returns the total price.
    pub fn hold(
        &mut self,
        member: MemberId,
        reservation: ReservationId,
        seats: &[SeatNo],
        deadline_ms: TimestampMs,
        limits: HoldLimits,
    ) -> Result<Krw, HoldError> {
        let amount = self.check_hold(member, reservation, seats, limits)?;
        self.insert_hold(member, reservation, seats, deadline_ms, amount);
        Ok(amount)
    }

    /// Whether [`SeatMap::hold`] would accept this hold, and its price;
    /// changes nothing (the decision half of a hold).
    pub fn check_hold(
        &self,
        member: MemberId,
        reservation: ReservationId,
        seats: &[SeatNo],
        limits: HoldLimits,
    ) -> Result<Krw, HoldError> {
        self.validate_seat_list(seats, limits)?;
        if reservation == 0 || reservation > MAX_RESERVATION_ID || self.holds.contains_key(&reservation) {
            return Err(HoldError::DuplicateReservation(reservation));
        }
        let already = self.seats_of_member(member);
        if already + seats.len() as u32 > limits.max_seats_per_member {
            return Err(HoldError::TicketLimit {
                limit: limits.max_seats_per_member,
                already,
            });
        }
        if let Some(&taken) = seats.iter().find(|&&s| self.cells[s as usize - 1] != 0) {
            return Err(HoldError::SeatUnavailable(taken));
        }
        Ok(seats.iter().map(|&seat| self.pricing.price_of(seat)).sum())
    }

    /// Records a hold [`SeatMap::check_hold`] accepted (the apply half).
    fn insert_hold(
        &mut self,
        member: MemberId,
        reservation: ReservationId,
        seats: &[SeatNo],
        deadline_ms: TimestampMs,
        amount: Krw,
    ) {
        for &seat in seats {
            self.cells[seat as usize - 1] = HELD | reservation;
        }
        self.available -= seats.len() as u32;
        *self.per_member.entry(member).or_insert(0) += seats.len() as u32;
        self.deadlines.insert((deadline_ms, reservation));
        self.holds.insert(
            reservation,
            Hold {
                member,
                seats: seats.to_vec(),
                deadline_ms,
                amount,
            },
        );
        self.version += 1;
    }

    /// The live holds whose deadline is `<= now_ms`, oldest first; changes
    /// nothing (release them one by one).
    pub fn due(&self, now_ms: TimestampMs) -> Vec<ReservationId> {
        self.deadlines
            .iter()
            .take_while(|&&(deadline, _)| deadline <= now_ms)
            .map(|&(_, reservation)| reservation)
            .filter(|reservation| self.holds.contains_key(reservation))
            .collect()
    }

    fn validate_seat_list(&self, seats: &[SeatNo], limits: HoldLimits) -> Result<(), HoldError> {
        if seats.is_empty() {
            return Err(HoldError::EmptySeatList);
        }
        if seats.len() > limits.max_seats_per_reservation as usize {
            return Err(HoldError::TooManySeats {
                max: limits.max_seats_per_reservation,
            });
        }
        for (idx, &seat) in seats.iter().enumerate() {
            if seat == 0 {
                return Err(HoldError::SeatZero);
            }
            if seat > self.seat_count() {
                return Err(HoldError::SeatOutOfRange(seat));
            }
            // The list is bounded by `max_seats_per_reservation`: quadratic is fine.
            if seats[..idx].contains(&seat) {
                return Err(HoldError::DuplicateSeat(seat));
            }
        }
        Ok(())
    }

    /// Turns a live hold into a sale if its deadline has not passed at `now_ms`.
    /// A hold found past its deadline is released and reported as expired.
    pub fn confirm(&mut self, reservation: ReservationId, now_ms: TimestampMs) -> Result<Hold, ConfirmError> {
        let deadline = self.holds.get(&reservation).ok_or(ConfirmError::NotHeld)?.deadline_ms;
        if deadline <= now_ms {
            let hold = self.release(reservation).ok_or(ConfirmError::NotHeld)?;
            return Err(ConfirmError::Expired(hold));
        }
        let hold = self.holds.remove(&reservation).ok_or(ConfirmError::NotHeld)?;
        self.deadlines.remove(&(hold.deadline_ms, reservation));
        for &seat in &hold.seats {
            self.cells[seat as usize - 1] = SOLD | reservation;
        }
        self.version += 1;
        Ok(hold)
    }

    /// Releases a live hold (cancellation). `None` when there is none.
    pub fn release(&mut self, reservation: ReservationId) -> Option<Hold> {
        let hold = self.holds.remove(&reservation)?;
        self.deadlines.remove(&(hold.deadline_ms, reservation));
        for &seat in &hold.seats {
            self.cells[seat as usize - 1] = 0;
        }
        self.available += hold.seats.len() as u32;
        if let Some(count) = self.per_member.get_mut(&hold.member) {
            *count -= hold.seats.len() as u32;
            if *count == 0 {
                self.per_member.remove(&hold.member);
            }
        }
        self.version += 1;
        Some(hold)
    }

    /// Releases every hold whose deadline is `<= now_ms`, oldest first.
    /// Cost is proportional to what expires, not to the number of seats.
    pub fn expire_due(&mut self, now_ms: TimestampMs) -> Vec<(ReservationId, Hold)> {
        let mut expired = Vec::new();
        while let Some(&(deadline, reservation)) = self.deadlines.first() {
            if deadline > now_ms {
                break;
            }
            match self.release(reservation) {
                Some(hold) => expired.push((reservation, hold)),
                None => {
                    self.deadlines.pop_first();
                }
            }
        }
        expired
    }

    /// The earliest deadline of a live hold.
    pub fn next_deadline(&self) -> Option<TimestampMs> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// Restores a sold seat during recovery from the tables.
    pub fn restore_sold(&mut self, member: MemberId, reservation: ReservationId, seats: &[SeatNo]) {
        for &seat in seats {
            self.cells[seat as usize - 1] = SOLD | reservation;
        }
        self.available -= seats.len() as u32;
        *self.per_member.entry(member).or_insert(0) += seats.len() as u32;
        self.version += 1;
    }

    /// Checks every structural invariant; panics with the broken one.
    /// O(seats + holds): for tests and snapshot checks, not the hot path.
    pub fn check_invariants(&self) {
        let mut held_cells = 0usize;
        let mut sold_cells = 0usize;
        for (idx, &cell) in self.cells.iter().enumerate() {
            let seat = idx as SeatNo + 1;
            match cell_status(cell) {
                SeatStatus::Available => assert_eq!(cell, 0, "an AVAILABLE cell carries no id"),
                SeatStatus::Held => {
                    held_cells += 1;
                    let hold = self
                        .holds
                        .get(&(cell & ID_MASK))
                        .unwrap_or_else(|| panic!("seat {seat} is HELD by a reservation with no live hold"));
                    assert!(
                        hold.seats.contains(&seat),
                        "seat {seat} is HELD by a hold that does not list it"
                    );
                }
                SeatStatus::Sold => sold_cells += 1,
            }
        }
        let available = self.cells.len() - held_cells - sold_cells;
        assert_eq!(
            self.available as usize, available,
            "the available counter matches the cells"
        );
        let listed: usize = self.holds.values().map(|h| h.seats.len()).sum();
        assert_eq!(listed, held_cells, "every HELD seat belongs to exactly one live hold");
        for (&reservation, hold) in &self.holds {
            assert!(
                self.deadlines.contains(&(hold.deadline_ms, reservation)),
                "every live hold has its deadline indexed"
            );
            for &seat in &hold.seats {
                assert_eq!(
                    self.cells[seat as usize - 1],
                    HELD | reservation,
                    "a hold's seats are HELD by it"
                );
            }
        }
        assert_eq!(self.deadlines.len(), self.holds.len(), "no stale deadlines");
        let counted: u64 = self.per_member.values().map(|&c| u64::from(c)).sum();
        assert_eq!(
            counted as usize,
            held_cells + sold_cells,
            "per-member counts cover held and sold seats"
        );
    }
}

fn cell_status(cell: u64) -> SeatStatus {
    match cell >> STATE_SHIFT {
        0 => SeatStatus::Available,
        1 => SeatStatus::Held,
        _ => SeatStatus::Sold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HoldLimits = HoldLimits {
        max_seats_per_reservation: 4,
        max_seats_per_member: 4,
    };

    fn map(seats: SeatNo) -> SeatMap {
        SeatMap::new(seats, Pricing::flat(10_000))
    }

    #[test]
    fn a_hold_takes_all_requested_seats_and_prices_them() {
        let mut seats = map(10);
        let amount = seats
            .hold(1, 100, &[2, 3], 1_000, LIMITS)
            .expect("free seats can be held");
        assert_eq!(amount, 20_000, "two seats at the flat price");
        assert_eq!(seats.status(2), Some(SeatStatus::Held));
        assert_eq!(seats.status(3), Some(SeatStatus::Held));
        assert_eq!(seats.available(), 8, "held seats are not available");
        seats.check_invariants();
    }

    #[test]
    fn a_hold_is_all_or_nothing() {
        let mut seats = map(10);
        seats.hold(1, 100, &[5], 1_000, LIMITS).expect("seat 5 is free");
        let err = seats.hold(2, 101, &[4, 5, 6], 1_000, LIMITS).unwrap_err();
        assert_eq!(err, HoldError::SeatUnavailable(5), "seat 5 is already held");
        assert_eq!(
            seats.status(4),
            Some(SeatStatus::Available),
            "nothing of a refused hold is held"
        );
        assert_eq!(
            seats.status(6),
            Some(SeatStatus::Available),
            "nothing of a refused hold is held"
        );
        seats.check_invariants();
    }

    #[test]
    fn bad_seat_lists_are_refused() {
        let mut seats = map(10);
        assert_eq!(seats.hold(1, 1, &[], 1, LIMITS), Err(HoldError::EmptySeatList));
        assert_eq!(seats.hold(1, 1, &[0], 1, LIMITS), Err(HoldError::SeatZero));
        assert_eq!(seats.hold(1, 1, &[11], 1, LIMITS), Err(HoldError::SeatOutOfRange(11)));
        assert_eq!(seats.hold(1, 1, &[3, 3], 1, LIMITS), Err(HoldError::DuplicateSeat(3)));
        assert_eq!(
            seats.hold(1, 1, &[1, 2, 3, 4, 5], 1, LIMITS),
            Err(HoldError::TooManySeats { max: 4 })
        );
        assert_eq!(seats.available(), 10, "refused holds change nothing");
    }

    #[test]
    fn the_ticket_limit_counts_held_and_sold_seats_per_member() {
        let mut seats = map(10);
        seats.hold(1, 1, &[1, 2], 1_000, LIMITS).expect("two seats");
        seats.confirm(1, 0).expect("the hold is live");
        seats.hold(1, 2, &[3], 1_000, LIMITS).expect("a third seat");
        assert_eq!(
            seats.hold(1, 3, &[4, 5], 1_000, LIMITS),
            Err(HoldError::TicketLimit { limit: 4, already: 3 }),
            "sold and held seats count toward the limit"
        );
        seats.release(2).expect("the pending hold is cancelled");
        seats
            .hold(1, 4, &[4, 5], 1_000, LIMITS)
            .expect("a cancelled hold frees the allowance");
        seats.check_invariants();
    }

    #[test]
    fn confirm_sells_a_live_hold_and_refuses_an_expired_one() {
        let mut seats = map(10);
        seats.hold(1, 1, &[1], 1_000, LIMITS).expect("free");
        seats.hold(2, 2, &[2], 1_000, LIMITS).expect("free");
        let sold = seats.confirm(1, 999).expect("before its deadline a hold can be paid");
        assert_eq!(sold.seats, vec![1]);
        assert_eq!(seats.status(1), Some(SeatStatus::Sold));
        assert_eq!(seats.owner(1), Some(1), "the seat records its buyer");
        assert!(
            matches!(seats.confirm(2, 1_000), Err(ConfirmError::Expired(_))),
            "at its deadline a hold can no longer be paid, even before the timer fired"
        );
        assert_eq!(
            seats.status(2),
            Some(SeatStatus::Available),
            "the expired hold was released"
        );
        assert_eq!(
            seats.confirm(1, 0),
            Err(ConfirmError::NotHeld),
            "a sale cannot be confirmed twice"
        );
        seats.check_invariants();
    }

    #[test]
    fn expiry_releases_only_holds_past_their_deadline() {
        let mut seats = map(10);
        seats.hold(1, 1, &[1], 100, LIMITS).expect("free");
        seats.hold(2, 2, &[2], 200, LIMITS).expect("free");
        seats.hold(3, 3, &[3], 300, LIMITS).expect("free");
        let expired: Vec<_> = seats.expire_due(200).into_iter().map(|(id, _)| id).collect();
        assert_eq!(expired, vec![1, 2], "holds due at or before now expire, oldest first");
        assert_eq!(
            seats.status(3),
            Some(SeatStatus::Held),
            "a hold before its deadline stays"
        );
        assert_eq!(seats.next_deadline(), Some(300));
        assert_eq!(seats.available(), 9);
        seats.check_invariants();
    }

    #[test]
    fn released_seats_can_be_held_again() {
        let mut seats = map(3);
        seats.hold(1, 1, &[1, 2, 3], 100, LIMITS).expect("free");
        assert!(seats.release(1).is_some());
        assert!(seats.release(1).is_none(), "a hold is released once");
        seats
            .hold(2, 2, &[1, 2, 3], 100, LIMITS)
            .expect("released seats are free again");
        seats.check_invariants();
    }

    #[test]
    fn a_seat_costs_at_most_16_bytes_at_rest() {
        let seats = map(100_000);
        assert!(seats.bytes_per_seat_at_rest() <= 16, "target: <= 16 bytes per seat");
        assert_eq!(seats.bytes_per_seat_at_rest(), 8, "one u64 cell per seat");
    }
}
