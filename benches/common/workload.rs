//! The persistence bench's workload, shared by `benches/persistence.rs` and
//! `examples/projection_cost.rs` (each includes it with `#[path]`), so that
//! both fold the same events: members with admitted queue tokens and
//! concerts (`setup_events`), then per member, in this order: charge, hold
//! 2 seats, pay, hold 2 seats, cancel (`Producer`), holds going round robin
//! over the concerts onto fresh seats (`Ids`).
// Each includer uses a part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use concert_actors::clock::{Clock, SystemClock};
use concert_actors::concert::{ConcertInfo, Reservation, ReservationStatus};
use concert_actors::pricing::Pricing;
use concert_actors::queue::TokenId;
use concert_actors::types::{Krw, MemberId, SeatNo};
use concert_actors::Event;

pub const SEAT_PRICE: Krw = 50_000;
pub const SEATS_PER_HOLD: u32 = 2;
pub const HOLD_TIMEOUT_MS: i64 = 300_000;
pub const DAY_MS: i64 = 86_400_000;

/// The shape of a database: concerts x seats, members, workload events.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub concerts: u64,
    pub seats: u32,
    pub members: u64,
    pub events: u64,
}

pub fn now_ms() -> i64 {
    SystemClock.now_ms()
}

/// A member's token: its own slot (the member id), first generation.
pub fn token_of(member: MemberId) -> TokenId {
    let mut secret = [0u8; 16];
    secret[..8].copy_from_slice(&member.to_le_bytes());
    secret[8..].copy_from_slice(b"benchtok");
    let slot = u32::try_from(member).expect("the bench's member ids fit a slot number");
    TokenId::new(slot, 2, secret)
}

/// The members (each with an admitted queue token) and concerts that the
/// workload refers to.
pub fn setup_events(size: Size) -> Vec<Event> {
    let now = now_ms();
    let mut events = Vec::new();
    for member in 1..=size.members {
        let mut key_hash = [7u8; 32];
        key_hash[..8].copy_from_slice(&member.to_le_bytes());
        events.push(Event::MemberRegistered {
            member,
            name: format!("member-{member}"),
            key_hash,
            at_ms: now,
        });
        events.push(Event::TokenIssued {
            token: token_of(member),
            member,
            seq: member,
            at_ms: now,
        });
        events.push(Event::TokenAdmitted {
            token: token_of(member),
            active_until_ms: now + DAY_MS,
        });
    }
    for concert in 1..=size.concerts {
        events.push(Event::ConcertCreated {
            info: ConcertInfo {
                id: concert,
                title: format!("Bench concert {concert}"),
                category: "k-pop".into(),
                venue: "Olympic Hall".into(),
                starts_at_ms: now + 30 * DAY_MS,
                seat_count: size.seats,
                pricing: Pricing::flat(SEAT_PRICE),
            },
        });
    }
    events
}

/// Holds take fresh seats: hold `n` gets seats `2k+1, 2k+2` of concert
/// `n % concerts + 1`, where `k = (n / concerts) % (seats / 2)`.
#[derive(Default)]
pub struct Ids {
    pub holds: AtomicU64,
    pub payments: AtomicU64,
}

/// One member going through the sale: charge, hold, pay, hold, cancel, ...
pub struct Producer {
    pub member: MemberId,
    pub balance: Krw,
    pub step: u64,
    pub open: Option<Reservation>,
}

impl Producer {
    pub fn new(member: MemberId) -> Self {
        Self {
            member,
            balance: 0,
            step: 0,
            open: None,
        }
    }

    pub fn next(&mut self, ids: &Ids, size: Size, now: i64) -> Event {
        let step = self.step % 5;
        self.step += 1;
        match step {
            0 => {
                let amount = SEAT_PRICE * Krw::from(SEATS_PER_HOLD);
                self.balance += amount;
                Event::BalanceCharged {
                    member: self.member,
                    amount,
                    balance_after: self.balance,
                    at_ms: now,
                }
            }
            1 | 3 => {
                let n = ids.holds.fetch_add(1, Ordering::Relaxed);
                let pairs = u64::from(size.seats / SEATS_PER_HOLD);
                let first = ((n / size.concerts) % pairs) as SeatNo * SEATS_PER_HOLD + 1;
                let reservation = Reservation {
                    id: n + 1,
                    concert_id: n % size.concerts + 1,
                    member_id: self.member,
                    seats: (first..first + SEATS_PER_HOLD).collect(),
                    amount: SEAT_PRICE * Krw::from(SEATS_PER_HOLD),
                    status: ReservationStatus::PendingPayment,
                    created_at_ms: now,
                    expires_at_ms: now + HOLD_TIMEOUT_MS,
                };
                self.open = Some(reservation.clone());
                Event::SeatsHeld { reservation }
            }
            2 => {
                let held = self.open.take().expect("a hold precedes its payment");
                self.balance -= held.amount;
                Event::PaymentCompleted {
                    payment: ids.payments.fetch_add(1, Ordering::Relaxed) + 1,
                    concert: held.concert_id,
                    reservation: held.id,
                    member: self.member,
                    amount: held.amount,
                    balance_after: self.balance,
                    token: Some(token_of(self.member)),
                    at_ms: now,
                }
            }
            _ => {
                let held = self.open.take().expect("a hold precedes its release");
                Event::HoldReleased {
                    concert: held.concert_id,
                    reservation: held.id,
                    status: ReservationStatus::Cancelled,
                    at_ms: now,
                }
            }
        }
    }
}
