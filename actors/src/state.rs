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

use crate::accounts::{Account, LedgerEntry, LedgerKind};
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
    /// Applies one journal event, skipping what the state already reflects.
    pub fn apply(&mut self, pos: JournalPos, event: &Event) {
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
            } => self.apply_ledger(pos, *member, LedgerKind::Charge, *amount, *balance_after, *at_ms),
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
                if let Some(concert) = self.concert_after(reservation.concert_id, pos) {
                    // A journaled hold was valid when made; refusing it here
                    // would mean the journal is corrupt, which the checksum rules out.
                    let _ = concert.apply_hold(reservation.clone());
                    concert.set_applied_pos(pos);
                }
            }
            Event::HoldReleased {
                concert,
                reservation,
                status,
                ..
            } => {
                if let Some(concert) = self.concert_after(*concert, pos) {
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
                self.apply_ledger(pos, *member, LedgerKind::Payment, -amount, *balance_after, *at_ms);
                if let Some(concert) = self.concert_after(*concert, pos) {
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
            Event::IdempotencyRecorded { record } => self.record_idempotency(record),
            Event::Idempotent { record, effect } => {
                self.apply(pos, effect);
                self.record_idempotency(record);
            }
        }
        self.journal_pos = self.journal_pos.max(pos);
    }

    fn record_idempotency(&mut self, record: &IdempotencyRecord) {
        if !self.idempotency.iter().any(|r| r.scope == record.scope) {
            self.idempotency.push(record.clone());
        }
    }

    fn concert_after(&mut self, concert: ConcertId, pos: JournalPos) -> Option<&mut Concert> {
        self.concerts.get_mut(&concert).filter(|c| c.applied_pos() < pos)
    }

    fn apply_ledger(
        &mut self,
        pos: JournalPos,
        member: MemberId,
        kind: LedgerKind,
        amount: i64,
        balance_after: i64,
        at_ms: i64,
    ) {
        if let Some(account) = self.accounts.get_mut(&member) {
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

fn scope_key(scope: &IdempotencyScope) -> String {
    format!("{}/{:?}/{}", scope.member, scope.endpoint, scope.key)
}
