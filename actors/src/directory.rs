//! `ReservationDirectory`: which concert and member each reservation belongs
//! to, and each member's reservations. Written by concert actors when a hold
//! is made; read by request handlers to route `GET/DELETE /reservations/{id}`
//! and payments to the right concert without asking every actor.

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

use crate::concert::Reservation;
use crate::types::{ConcertId, MemberId, ReservationId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationRoute {
    pub concert: ConcertId,
    pub member: MemberId,
}

#[derive(Default)]
pub struct ReservationDirectory {
    routes: DashMap<ReservationId, ReservationRoute, FxBuildHasher>,
    /// Oldest first.
    by_member: DashMap<MemberId, Vec<(ConcertId, ReservationId)>, FxBuildHasher>,
}

impl ReservationDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, reservation: &Reservation) {
        let route = ReservationRoute {
            concert: reservation.concert_id,
            member: reservation.member_id,
        };
        if self.routes.insert(reservation.id, route).is_none() {
            self.by_member
                .entry(reservation.member_id)
                .or_default()
                .push((reservation.concert_id, reservation.id));
        }
    }

    pub fn route(&self, reservation: ReservationId) -> Option<ReservationRoute> {
        self.routes.get(&reservation).map(|r| *r)
    }

    /// The member's reservations, newest first.
    pub fn of_member(&self, member: MemberId) -> Vec<(ConcertId, ReservationId)> {
        self.by_member
            .get(&member)
            .map(|list| list.iter().rev().copied().collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}
