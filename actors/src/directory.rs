//! `ReservationDirectory`: which concert and member each reservation belongs
//! to, and each member's reservations. Read by request handlers to route
//! `GET/DELETE /reservations/{id}` and payments to the right concert without
//! asking every actor.
//!
//! Written by `Engine::hold` on the caller's thread once the concert actor
//! has accepted a hold, before the caller sees the reservation (if the
//! caller goes away first, the engine still records it when the answer
//! comes), and by `Engine::restore`. Not in the actor's turn: a hot
//! concert has one thread, kept for deciding seats, while callers run on
//! every core (docs/PERFORMANCE.md, `sql_hot_seats`).

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

    /// The member's `limit` newest reservations with ids below `before`
    /// (all when `None`), newest first.
    pub fn of_member_before(
        &self,
        member: MemberId,
        before: Option<ReservationId>,
        limit: usize,
    ) -> Vec<(ConcertId, ReservationId)> {
        let Some(list) = self.by_member.get(&member) else {
            return Vec::new();
        };
        let mut page: Vec<_> = list
            .iter()
            .copied()
            .filter(|&(_, id)| before.is_none_or(|before| id < before))
            .collect();
        // Recorded in the order holds were answered, nearly but not quite id order.
        page.sort_unstable_by_key(|&(_, id)| std::cmp::Reverse(id));
        page.truncate(limit);
        page
    }

    /// Forgets a retired reservation (it is read from the tables from now on).
    pub fn remove(&self, reservation: ReservationId) {
        let Some((_, route)) = self.routes.remove(&reservation) else {
            return;
        };
        if let dashmap::mapref::entry::Entry::Occupied(mut list) = self.by_member.entry(route.member) {
            // Retired ones are the oldest: near the front.
            let reservations = list.get_mut();
            if let Some(at) = reservations.iter().position(|&(_, id)| id == reservation) {
                reservations.remove(at);
            }
            if reservations.is_empty() {
                list.remove();
            } else if reservations.capacity() > 16 && reservations.len() < reservations.capacity() / 4 {
                reservations.shrink_to_fit();
            }
        }
    }

    /// Members with at least one reservation in memory.
    pub fn members(&self) -> usize {
        self.by_member.len()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::concert::ReservationStatus;

    fn reservation(id: ReservationId, concert: ConcertId, member: MemberId) -> Reservation {
        Reservation {
            id,
            concert_id: concert,
            member_id: member,
            seats: vec![1],
            amount: 0,
            status: ReservationStatus::PendingPayment,
            created_at_ms: 0,
            expires_at_ms: 1,
        }
    }

    #[test]
    fn pages_of_a_member_and_retired_reservations() {
        let directory = ReservationDirectory::new();
        for (id, concert) in [(3, 1), (41, 1), (5, 2), (7, 2), (9, 1)] {
            directory.record(&reservation(id, concert, 1));
        }
        directory.record(&reservation(4, 1, 2));
        assert_eq!(directory.of_member_before(1, None, 2), vec![(1, 41), (1, 9)]);
        assert_eq!(directory.of_member_before(1, Some(9), 2), vec![(2, 7), (2, 5)]);
        assert_eq!(directory.of_member_before(1, Some(3), 2), vec![]);
        directory.remove(5);
        directory.remove(5);
        assert_eq!(directory.route(5), None);
        assert_eq!(directory.of_member_before(1, Some(9), 5), vec![(2, 7), (1, 3)]);
        directory.remove(4);
        assert_eq!(directory.of_member(2), vec![]);
        assert_eq!((directory.len(), directory.members()), (4, 1), "member 2 is forgotten");
    }

    #[test]
    fn routes_and_member_lists_find_what_was_recorded() {
        let directory = ReservationDirectory::new();
        // Recorded out of id order, as concurrent holds on two concerts may be.
        for (id, concert, member) in [(3, 1, 1), (40, 2, 17), (41, 1, 1), (5, 2, 1)] {
            directory.record(&reservation(id, concert, member));
        }
        assert_eq!(
            directory.route(40),
            Some(ReservationRoute { concert: 2, member: 17 }),
            "a recorded id routes to its concert and member"
        );
        assert_eq!(directory.route(4), None, "an unknown id has no route");
        assert_eq!(
            directory.of_member(1),
            vec![(2, 5), (1, 41), (1, 3)],
            "a member's reservations, newest recorded first, none of another member's"
        );
        assert_eq!(directory.of_member(17), vec![(2, 40)], "the other member's one");
        assert_eq!(directory.of_member(2), Vec::new(), "a member with none");
        assert_eq!(directory.len(), 4, "four reservations");
    }

    #[test]
    fn recording_the_same_reservation_twice_lists_it_once() {
        let directory = ReservationDirectory::new();
        directory.record(&reservation(7, 1, 9));
        directory.record(&reservation(7, 1, 9));
        assert_eq!(directory.of_member(9), vec![(1, 7)], "listed once");
        assert_eq!(directory.len(), 1, "one route");
    }
}
