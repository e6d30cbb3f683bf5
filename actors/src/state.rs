//! `EngineState`: the whole engine as plain data. Snapshots store it,
//! recovery rebuilds it (from a snapshot plus the journal after it, or from
//! the SQL tables) and hands it to [`crate::Engine::restore`] before serving.
//!
//! Replay is idempotent: each account and concert remembers the last journal
//! position it applied and skips older events, and token states only move
//! forward (WAITING -> ACTIVE -> EXPIRED). A snapshot taken while events kept
//! flowing ("fuzzy") is therefore safe to replay over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::accounts::Account;
use crate::apply::ApplyError;
use crate::concert::{Concert, ReservationStatus};
use crate::idempotency::{IdempotencyRecord, IdempotencyScope};
use crate::queue::{TokenId, TokenRecord, TokenStatus};
use crate::types::{ConcertId, JournalPos, MemberId};
use crate::Event;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineState {
    pub accounts: BTreeMap<MemberId, Account>,
    pub concerts: BTreeMap<ConcertId, Concert>,
    pub tokens: BTreeMap<TokenId, TokenRecord>,
    pub idempotency: Vec<IdempotencyRecord>,
    pub next_reservation: u64,
    pub next_payment: u64,
    pub next_concert: u64,
    /// Every event up to here is reflected.
    pub journal_pos: JournalPos,
}

impl EngineState {
    /// Applies one journal event, skipping what the state already reflects
    /// (each account and concert remembers the last position it applied).
    /// Concerts and wallets change only through `Concert::apply` and
    /// `Account::apply`, the functions the live path uses too. An event that
    /// does not apply is an error, never skipped: the caller stops replay
    /// and names `pos`.
    pub fn apply(&mut self, pos: JournalPos, event: &Event) -> Result<(), ApplyError> {
        match event {
            Event::MemberRegistered {
                member, name, key_hash, ..
            } => {
                self.accounts
                    .entry(*member)
                    .or_insert_with(|| Account::new(name.clone(), *key_hash, pos));
            }
            Event::BalanceCharged { member, .. } => self.apply_ledger(pos, *member, event)?,
            Event::ConcertCreated { info } => {
                self.next_concert = self.next_concert.max(info.id + 1);
                self.concerts.entry(info.id).or_insert_with(|| {
                    let mut concert = Concert::new(info.clone());
                    concert.set_applied_pos(pos);
                    concert
                });
            }
            Event::SeatsHeld { reservation } => {
                self.next_reservation = self.next_reservation.max(reservation.id + 1);
                self.apply_to_concert(pos, reservation.concert_id, event)?;
            }
            Event::HoldReleased { concert, .. } => self.apply_to_concert(pos, *concert, event)?,
            Event::PaymentCompleted {
                payment,
                concert,
                member,
                token,
                ..
            } => {
                self.next_payment = self.next_payment.max(payment + 1);
                self.apply_ledger(pos, *member, event)?;
                self.apply_to_concert(pos, *concert, event)?;
                if let Some(token) = token {
                    self.expire_token(token);
                }
            }
            Event::TokenIssued {
                token,
                member,
                seq,
                at_ms,
            } => {
                self.tokens.entry(*token).or_insert(TokenRecord {
                    token: *token,
                    member: *member,
                    seq: *seq,
                    status: TokenStatus::Waiting,
                    active_until_ms: 0,
                    last_seen_ms: *at_ms,
                });
            }
            Event::TokenAdmitted { token, active_until_ms } => {
                if let Some(record) = self.tokens.get_mut(token) {
                    if record.status == TokenStatus::Waiting {
                        record.status = TokenStatus::Active;
                        record.active_until_ms = *active_until_ms;
                    }
                }
            }
            Event::TokenExpired { token, .. } => self.expire_token(token),
            Event::IdempotencyRecorded { record } => self.record_idempotency(record),
            Event::Idempotent { record, effect } => {
                self.apply(pos, effect)?;
                self.record_idempotency(record);
            }
        }
        self.journal_pos = self.journal_pos.max(pos);
        Ok(())
    }

    fn apply_to_concert(&mut self, pos: JournalPos, concert: ConcertId, event: &Event) -> Result<(), ApplyError> {
        let concert = self
            .concerts
            .get_mut(&concert)
            .ok_or(ApplyError::UnknownConcert(concert))?;
        if concert.applied_pos() < pos {
            concert.apply(event)?;
            concert.set_applied_pos(pos);
        }
        Ok(())
    }

    fn apply_ledger(&mut self, pos: JournalPos, member: MemberId, event: &Event) -> Result<(), ApplyError> {
        let account = self
            .accounts
            .get_mut(&member)
            .ok_or(ApplyError::UnknownMember(member))?;
        if account.applied_pos < pos {
            account.apply(member, event)?;
            account.applied_pos = pos;
        }
        Ok(())
    }

    fn record_idempotency(&mut self, record: &IdempotencyRecord) {
        if !self.idempotency.iter().any(|r| r.scope == record.scope) {
            self.idempotency.push(record.clone());
        }
    }

    fn expire_token(&mut self, token: &TokenId) {
        if let Some(record) = self.tokens.get_mut(token) {
            record.status = TokenStatus::Expired;
        }
    }

    /// Idempotency records by scope (the newest wins).
    pub fn idempotency_by_scope(&self) -> BTreeMap<String, &IdempotencyRecord> {
        self.idempotency.iter().map(|r| (scope_key(&r.scope), r)).collect()
    }

    /// Panics unless every account and concert is internally consistent and
    /// money is conserved (balances + payments = charges, payments = sales).
    pub fn check_invariants(&self) {
        let mut charged = 0i64;
        let mut paid = 0i64;
        let mut balances = 0i64;
        for (member, account) in &self.accounts {
            assert_eq!(
                account.ledger_sum(),
                account.balance,
                "member {member}: the ledger sums to the balance"
            );
            assert!(account.balance >= 0, "member {member}: balance is never negative");
            balances += account.balance;
            let (member_charged, member_paid) = account.ledger_totals();
            charged += member_charged;
            paid += member_paid;
        }
        let mut sold = 0i64;
        for concert in self.concerts.values() {
            concert.check_invariants();
            sold += concert
                .reservations()
                .filter(|r| r.status == ReservationStatus::Confirmed)
                .map(|r| r.amount)
                .sum::<i64>();
        }
        assert_eq!(
            balances + paid,
            charged,
            "money is conserved: balances + payments = charges"
        );
        assert_eq!(paid, sold, "payments match confirmed sales");
    }
}

fn scope_key(scope: &IdempotencyScope) -> String {
    format!("{}/{:?}/{}", scope.member, scope.endpoint, scope.key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::concert::{ConcertInfo, Reservation};
    use crate::pricing::Pricing;

    fn state_with_a_member_and_a_concert() -> EngineState {
        let mut state = EngineState::default();
        let registered = Event::MemberRegistered {
            member: 1,
            name: "kim".into(),
            key_hash: [0; 32],
            at_ms: 0,
        };
        state.apply(1, &registered).expect("a member registers");
        let info = ConcertInfo {
            id: 1,
            title: "IU".into(),
            category: "k-pop".into(),
            venue: "Hall".into(),
            starts_at_ms: 1_000_000,
            seat_count: 4,
            pricing: Pricing::new(100, Vec::new(), 4).expect("valid pricing"),
        };
        state
            .apply(2, &Event::ConcertCreated { info })
            .expect("a concert is created");
        state
    }

    fn held(id: u64, seats: Vec<u32>) -> Event {
        Event::SeatsHeld {
            reservation: Reservation {
                id,
                concert_id: 1,
                member_id: 1,
                amount: 100 * seats.len() as i64,
                seats,
                status: ReservationStatus::PendingPayment,
                created_at_ms: 0,
                expires_at_ms: 500_000,
            },
        }
    }

    #[test]
    fn an_event_that_does_not_apply_is_an_error_not_skipped() {
        let mut state = state_with_a_member_and_a_concert();
        state
            .apply(3, &held(1, vec![1, 2]))
            .expect("a hold of free seats applies");
        let conflicting = state.apply(4, &held(2, vec![2]));
        assert!(
            matches!(conflicting, Err(ApplyError::Hold { reservation: 2, .. })),
            "a second hold of a held seat is refused, not ignored: {conflicting:?}"
        );
        let release_unknown = Event::HoldReleased {
            concert: 1,
            reservation: 9,
            status: ReservationStatus::Cancelled,
            at_ms: 0,
        };
        assert_eq!(
            state.apply(5, &release_unknown),
            Err(ApplyError::UnknownReservation(9)),
            "a release of a reservation nobody made is refused"
        );
        let wrong_balance = Event::BalanceCharged {
            member: 1,
            amount: 500,
            balance_after: 400,
            at_ms: 0,
        };
        assert!(
            matches!(
                state.apply(6, &wrong_balance),
                Err(ApplyError::Ledger { member: 1, .. })
            ),
            "a charge whose balance_after does not follow from the balance is refused"
        );
        let unknown_concert = Event::HoldReleased {
            concert: 7,
            reservation: 1,
            status: ReservationStatus::Cancelled,
            at_ms: 0,
        };
        assert_eq!(state.apply(7, &unknown_concert), Err(ApplyError::UnknownConcert(7)));
    }

    #[test]
    fn events_a_fuzzy_snapshot_already_reflects_are_skipped() {
        let mut state = state_with_a_member_and_a_concert();
        state.apply(3, &held(1, vec![1])).expect("applies");
        assert_eq!(
            state.apply(3, &held(1, vec![1])),
            Ok(()),
            "an event at or before the concert's applied position is skipped"
        );
        let charge = Event::BalanceCharged {
            member: 1,
            amount: 500,
            balance_after: 500,
            at_ms: 0,
        };
        state.apply(4, &charge).expect("applies");
        state.apply(4, &charge).expect("skipped, not applied twice");
        assert_eq!(state.accounts[&1].balance, 500, "charged once");
        state.check_invariants();
    }
}
