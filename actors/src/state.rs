//! `EngineState`: the whole engine as plain data. Snapshots store it,
//! recovery rebuilds it (from a snapshot plus the journal after it, or from
//! the SQL tables) and hands it to [`crate::Engine::restore`] before serving.
//!
//! Replay is idempotent: each account and concert remembers the last journal
//! position it applied and skips older events, and token states only move
//! forward (WAITING -> ACTIVE -> EXPIRED). A snapshot taken while events kept
//! flowing ("fuzzy") is therefore safe to replay over.
//!
//! An event that does not apply (a hold of seats that are taken, a payment
//! of a reservation that does not exist, an event naming an unknown member
//! or concert) is an [`ApplyError`]: the journal does not describe a state
//! the engine could have been in, and recovery stops there, naming the
//! position, instead of skipping it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::accounts::{Account, LedgerEntry, LedgerKind};
use crate::concert::{Concert, ConcertRejection, ReservationStatus};
use crate::idempotency::{IdempotencyRecord, IdempotencyScope};
use crate::queue::{TokenId, TokenRecord, TokenStatus};
use crate::types::{ConcertId, JournalPos, MemberId, ReservationId};
use crate::Event;

/// Why a journal event does not apply to the state before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("it names member {0}, who does not exist")]
    UnknownMember(MemberId),
    #[error("it names concert {0}, which does not exist")]
    UnknownConcert(ConcertId),
    #[error("it names reservation {reservation} of concert {concert}, which does not exist")]
    UnknownReservation {
        concert: ConcertId,
        reservation: ReservationId,
    },
    #[error("hold {reservation} cannot be applied: {reason}")]
    Hold {
        reservation: ReservationId,
        reason: ConcertRejection,
    },
}

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
    /// Applies one journal event, skipping what the state already reflects;
    /// an event that does not apply is an error and changes nothing after
    /// the part that failed (the caller stops: the journal is corrupt).
    pub fn apply(&mut self, pos: JournalPos, event: &Event) -> Result<(), ApplyError> {
        match event {
            Event::MemberRegistered {
                member, name, key_hash, ..
            } => {
                self.accounts.entry(*member).or_insert_with(|| Account {
                    name: name.clone(),
                    key_hash: *key_hash,
                    balance: 0,
                    history: Vec::new(),
                    applied_pos: pos,
                });
            }
            Event::BalanceCharged {
                member,
                amount,
                balance_after,
                at_ms,
            } => self.apply_ledger(pos, *member, LedgerKind::Charge, *amount, *balance_after, *at_ms)?,
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
                if let Some(concert) = self.concert_after(reservation.concert_id, pos)? {
                    // A journaled hold was valid when made: one that does
                    // not apply means the journal is not what was committed.
                    concert
                        .apply_hold(reservation.clone())
                        .map_err(|reason| ApplyError::Hold {
                            reservation: reservation.id,
                            reason,
                        })?;
                    concert.set_applied_pos(pos);
                }
            }
            Event::HoldReleased {
                concert,
                reservation,
                status,
                ..
            } => {
                if let Some(concert) = self.concert_after(*concert, pos)? {
                    known_reservation(concert, *reservation)?;
                    concert.apply_release(*reservation, *status);
                    concert.set_applied_pos(pos);
                }
            }
            Event::PaymentCompleted {
                payment,
                concert,
                reservation,
                member,
                amount,
                balance_after,
                token,
                at_ms,
            } => {
                self.next_payment = self.next_payment.max(payment + 1);
                self.apply_ledger(pos, *member, LedgerKind::Payment, -amount, *balance_after, *at_ms)?;
                if let Some(concert) = self.concert_after(*concert, pos)? {
                    known_reservation(concert, *reservation)?;
                    concert.apply_confirm(*reservation);
                    concert.set_applied_pos(pos);
                }
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
            Event::IdempotencyRecorded { record } => {
                if !self.idempotency.iter().any(|r| r.scope == record.scope) {
                    self.idempotency.push(record.clone());
                }
            }
        }
        self.journal_pos = self.journal_pos.max(pos);
        Ok(())
    }

    /// The concert an event at `pos` changes: `None` when it reflects `pos`
    /// already (skipped), an error when there is no such concert.
    fn concert_after(&mut self, concert: ConcertId, pos: JournalPos) -> Result<Option<&mut Concert>, ApplyError> {
        let found = self
            .concerts
            .get_mut(&concert)
            .ok_or(ApplyError::UnknownConcert(concert))?;
        Ok((found.applied_pos() < pos).then_some(found))
    }

    fn apply_ledger(
        &mut self,
        pos: JournalPos,
        member: MemberId,
        kind: LedgerKind,
        amount: i64,
        balance_after: i64,
        at_ms: i64,
    ) -> Result<(), ApplyError> {
        let account = self
            .accounts
            .get_mut(&member)
            .ok_or(ApplyError::UnknownMember(member))?;
        if account.applied_pos < pos {
            account.balance = balance_after;
            account.history.push(LedgerEntry {
                kind,
                amount,
                balance_after,
                at_ms,
            });
            account.applied_pos = pos;
        }
        Ok(())
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
            let ledger: i64 = account.history.iter().map(|e| e.amount).sum();
            assert_eq!(
                ledger, account.balance,
                "member {member}: the ledger sums to the balance"
            );
            assert!(account.balance >= 0, "member {member}: balance is never negative");
            balances += account.balance;
            for entry in &account.history {
                match entry.kind {
                    LedgerKind::Charge => charged += entry.amount,
                    LedgerKind::Payment => paid -= entry.amount,
                }
            }
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

/// An event that settles `reservation` needs it to exist.
fn known_reservation(concert: &Concert, reservation: ReservationId) -> Result<(), ApplyError> {
    match concert.reservation(reservation) {
        Some(_) => Ok(()),
        None => Err(ApplyError::UnknownReservation {
            concert: concert.info().id,
            reservation,
        }),
    }
}

fn scope_key(scope: &IdempotencyScope) -> String {
    format!("{}/{:?}/{}", scope.member, scope.endpoint, scope.key)
}
