//! Seat prices: one flat price plus non-overlapping tier ranges that override
//! it. Stored once per concert, never per seat, so a seat costs no memory for
//! its price.

use serde::{Deserialize, Serialize};

use crate::types::{Krw, SeatNo, MAX_SEAT_PRICE};

/// Seats `from_seat..=to_seat` cost `price`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceTier {
    pub from_seat: SeatNo,
    pub to_seat: SeatNo,
    pub price: Krw,
}

/// A validated price list for `seat_count` seats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    base_price: Krw,
    /// Sorted by `from_seat`, non-overlapping, inside `1..=seat_count`.
    tiers: Vec<PriceTier>,
}

/// Why a price list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("price must be between 0 and {MAX_SEAT_PRICE}")]
    PriceOutOfRange,
    #[error("price tier {from}..={to} must satisfy 1 <= fromSeat <= toSeat <= seatCount ({seat_count})")]
    TierOutOfRange {
        from: SeatNo,
        to: SeatNo,
        seat_count: SeatNo,
    },
    #[error("price tiers {first_from}..={first_to} and {second_from}..={second_to} overlap")]
    TiersOverlap {
        first_from: SeatNo,
        first_to: SeatNo,
        second_from: SeatNo,
        second_to: SeatNo,
    },
}

impl Pricing {
    /// Checks and sorts the tiers.
    pub fn new(base_price: Krw, mut tiers: Vec<PriceTier>, seat_count: SeatNo) -> Result<Self, PricingError> {
        if !(0..=MAX_SEAT_PRICE).contains(&base_price) {
            return Err(PricingError::PriceOutOfRange);
        }
        for tier in &tiers {
            if !(0..=MAX_SEAT_PRICE).contains(&tier.price) {
                return Err(PricingError::PriceOutOfRange);
            }
            if tier.from_seat < 1 || tier.from_seat > tier.to_seat || tier.to_seat > seat_count {
                return Err(PricingError::TierOutOfRange {
                    from: tier.from_seat,
                    to: tier.to_seat,
                    seat_count,
                });
            }
        }
        tiers.sort_by_key(|t| t.from_seat);
        for pair in tiers.windows(2) {
            if pair[1].from_seat <= pair[0].to_seat {
                return Err(PricingError::TiersOverlap {
                    first_from: pair[0].from_seat,
                    first_to: pair[0].to_seat,
                    second_from: pair[1].from_seat,
                    second_to: pair[1].to_seat,
                });
            }
        }
        Ok(Self { base_price, tiers })
    }

    /// A single price for every seat.
    pub fn flat(base_price: Krw) -> Self {
        Self {
            base_price,
            tiers: Vec::new(),
        }
    }

    /// Price of one seat: O(log tiers).
    pub fn price_of(&self, seat: SeatNo) -> Krw {
        let idx = self.tiers.partition_point(|t| t.to_seat < seat);
        match self.tiers.get(idx) {
            Some(tier) if tier.from_seat <= seat => tier.price,
            _ => self.base_price,
        }
    }

    pub fn base_price(&self) -> Krw {
        self.base_price
    }

    pub fn tiers(&self) -> &[PriceTier] {
        &self.tiers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(from_seat: SeatNo, to_seat: SeatNo, price: Krw) -> PriceTier {
        PriceTier {
            from_seat,
            to_seat,
            price,
        }
    }

    #[test]
    fn tiers_override_the_base_price_for_their_seats_only() {
        let pricing = Pricing::new(50_000, vec![tier(11, 20, 90_000), tier(1, 10, 150_000)], 50).expect("valid tiers");
        assert_eq!(pricing.price_of(1), 150_000, "seat 1 is in the first tier");
        assert_eq!(pricing.price_of(10), 150_000, "tier bounds are inclusive");
        assert_eq!(pricing.price_of(11), 90_000, "seat 11 is in the second tier");
        assert_eq!(pricing.price_of(21), 50_000, "seats outside tiers cost the base price");
    }

    #[test]
    fn overlapping_or_out_of_range_tiers_are_refused() {
        assert!(matches!(
            Pricing::new(1, vec![tier(1, 10, 1), tier(10, 12, 1)], 50),
            Err(PricingError::TiersOverlap { .. })
        ));
        assert!(matches!(
            Pricing::new(1, vec![tier(0, 10, 1)], 50),
            Err(PricingError::TierOutOfRange { .. })
        ));
        assert!(matches!(
            Pricing::new(1, vec![tier(5, 4, 1)], 50),
            Err(PricingError::TierOutOfRange { .. })
        ));
        assert!(matches!(
            Pricing::new(1, vec![tier(40, 51, 1)], 50),
            Err(PricingError::TierOutOfRange { .. })
        ));
        assert_eq!(Pricing::new(-1, vec![], 50), Err(PricingError::PriceOutOfRange));
        assert_eq!(
            Pricing::new(1, vec![tier(1, 2, MAX_SEAT_PRICE + 1)], 50),
            Err(PricingError::PriceOutOfRange)
        );
    }
}
