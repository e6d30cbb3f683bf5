//! Members and their prepaid wallets: balances and the balance ledger.
//!
//! Each member's account sits in one `DashMap` slot. A charge or a debit
//! holds only that slot's lock, for a few hundred nanoseconds, and appends its
//! event while still holding it, so the journal sees one member's balance
//! changes in the order they happened. Concert actors debit through
//! [`Accounts::debit_with`] inside their own turn: that is how a payment moves
//! money and seats as one step without a lock around any seat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};

use crate::apply::{fail_stop, ApplyError};
use crate::clock::TimestampMs;
use crate::error::EngineError;
use crate::events::Event;
use crate::idempotency::{journal, IdemTicket};
use crate::sink::{EventSink, Unavailable};
use crate::types::{JournalPos, Krw, MemberId};

/// Longest member name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Money limits of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletLimits {
    /// Largest single charge.
    pub max_charge: Krw,
    /// No balance ever passes this.
    pub max_balance: Krw,
}

/// What moved a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerKind {
    Charge,
    Payment,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Charge => "CHARGE",
            LedgerKind::Payment => "PAYMENT",
        }
    }
}

/// One balance change; `amount` is signed (a payment is negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub kind: LedgerKind,
    pub amount: Krw,
    pub balance_after: Krw,
    pub at_ms: TimestampMs,
}

/// Ledger entries kept in memory per member at most (beyond a retention
/// pass): the newest page at the largest page size. Older ones are read
/// from the tables.
pub const HISTORY_IN_MEMORY: usize = 100;

/// The oldest ledger entries of a member, gone from memory (the tables hold
/// them): how many, and what they add up to, so that the balance and the
/// money totals still check against memory alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimmedLedger {
    pub entries: u64,
    /// Sum of the trimmed charges.
    pub charged: Krw,
    /// Sum of the trimmed payments, as a positive amount.
    pub paid: Krw,
}

/// A member with a wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    /// Hash of the member key; the key itself is never stored.
    pub key_hash: [u8; 32],
    pub balance: Krw,
    /// The newest entries, oldest first (the older ones: `trimmed`).
    pub history: Vec<LedgerEntry>,
    /// What left `history`.
    pub trimmed: TrimmedLedger,
    /// Last journal position applied to this account.
    pub applied_pos: JournalPos,
}

impl Account {
    /// A member with no money yet.
    pub fn new(name: String, key_hash: [u8; 32], applied_pos: JournalPos) -> Self {
        Self {
            name,
            key_hash,
            balance: 0,
            history: Vec::new(),
            trimmed: TrimmedLedger::default(),
            applied_pos,
        }
    }

    /// Every entry's amount summed, the trimmed ones too: the balance.
    pub fn ledger_sum(&self) -> Krw {
        self.trimmed.charged - self.trimmed.paid + self.history.iter().map(|e| e.amount).sum::<Krw>()
    }

    /// Sums of every charge and every payment (positive), trimmed ones too.
    pub fn ledger_totals(&self) -> (Krw, Krw) {
        let (mut charged, mut paid) = (self.trimmed.charged, self.trimmed.paid);
        for entry in &self.history {
            match entry.kind {
                LedgerKind::Charge => charged += entry.amount,
                LedgerKind::Payment => paid -= entry.amount,
            }
        }
        (charged, paid)
    }

    /// All entries ever, trimmed ones too.
    pub fn history_len(&self) -> u64 {
        self.trimmed.entries + self.history.len() as u64
    }

    /// Keeps the newest `keep` entries in memory; returns how many left it.
    pub fn trim_history(&mut self, keep: usize) -> usize {
        let drop = self.history.len().saturating_sub(keep);
        for entry in self.history.drain(..drop) {
            self.trimmed.entries += 1;
            match entry.kind {
                LedgerKind::Charge => self.trimmed.charged += entry.amount,
                LedgerKind::Payment => self.trimmed.paid -= entry.amount,
            }
        }
        if drop > 0 && self.history.capacity() > 2 * keep.max(8) {
            self.history.shrink_to(keep);
        }
        drop
    }

    /// Applies one decided balance change (a charge or a payment's debit):
    /// the live path and replay both change a balance only through here.
    /// The event's `balance_after` must be the balance plus its change,
    /// else the journal and the state disagree. The caller skips events at
    /// or before `applied_pos` and sets it after.
    pub fn apply(&mut self, member: MemberId, event: &Event) -> Result<(), ApplyError> {
        let (kind, change, balance_after, at_ms) = match event {
            Event::BalanceCharged {
                amount,
                balance_after,
                at_ms,
                ..
            } => (LedgerKind::Charge, *amount, *balance_after, *at_ms),
            Event::PaymentCompleted {
                amount,
                balance_after,
                at_ms,
                ..
            } => (LedgerKind::Payment, -amount, *balance_after, *at_ms),
            Event::Idempotent { effect, .. } => return self.apply(member, effect),
            other => {
                return Err(ApplyError::Misrouted {
                    event: other.kind(),
                    to: "a wallet",
                })
            }
        };
        if self.balance.checked_add(change) != Some(balance_after) {
            return Err(ApplyError::Ledger {
                member,
                balance: self.balance,
                change,
                balance_after,
            });
        }
        self.balance = balance_after;
        self.history.push(LedgerEntry {
            kind,
            amount: change,
            balance_after,
            at_ms,
        });
        Ok(())
    }

    /// Applies a change this wallet has just decided under its lock; it
    /// cannot fail, and if it does the process stops (see [`fail_stop`]).
    fn apply_decided(&mut self, member: MemberId, event: &Event) {
        if let Err(err) = self.apply(member, event) {
            fail_stop(&format!(
                "member {member}: a decided {} does not apply: {err}",
                event.kind()
            ));
        }
    }
}

/// Why a wallet operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletRejection {
    #[error("no such member")]
    UnknownMember,
    #[error("amount must be between 1 and {max}")]
    AmountOutOfRange { max: Krw },
    #[error("the balance may not exceed {max}")]
    BalanceCeiling { max: Krw },
    #[error("balance {balance} is below the amount {amount}")]
    InsufficientBalance { balance: Krw, amount: Krw },
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// One page of a member's balance history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The page's entries memory has, newest first.
    pub items: Vec<LedgerEntry>,
    /// The page's older entries that only the tables have: the member's
    /// entries `from..to` in journal order (0 is the first ever), to be
    /// read from the tables and put after `items`, newest first.
    pub from_tables: Option<std::ops::Range<u64>>,
    /// Pass back as `cursor` for the next (older) page; `None` on the last.
    pub next_cursor: Option<u64>,
}

/// All members and wallets.
pub struct Accounts {
    accounts: DashMap<MemberId, Account, FxBuildHasher>,
    next_member: AtomicU64,
    limits: WalletLimits,
    sink: Arc<dyn EventSink>,
}

impl Accounts {
    pub fn new(limits: WalletLimits, sink: Arc<dyn EventSink>) -> Self {
        Self {
            accounts: DashMap::with_hasher(FxBuildHasher),
            next_member: AtomicU64::new(1),
            limits,
            sink,
        }
    }

    pub fn limits(&self) -> WalletLimits {
        self.limits
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Creates a member; `name` must already be trimmed and validated.
    pub fn register(
        &self,
        name: &str,
        key_hash: [u8; 32],
        now_ms: TimestampMs,
    ) -> Result<(MemberId, JournalPos), Unavailable> {
        self.register_with(name, now_ms, |_| key_hash)
    }

    /// Creates a member whose key hash depends on its new id (the member key
    /// embeds the id).
    pub fn register_with(
        &self,
        name: &str,
        now_ms: TimestampMs,
        key_hash_for: impl FnOnce(MemberId) -> [u8; 32],
    ) -> Result<(MemberId, JournalPos), Unavailable> {
        if !self.sink.accepting() {
            return Err(Unavailable);
        }
        let member = self.next_member.fetch_add(1, Ordering::Relaxed);
        let key_hash = key_hash_for(member);
        let mut slot = self
            .accounts
            .entry(member)
            .or_insert_with(|| Account::new(name.to_owned(), key_hash, 0));
        let pos = self.sink.append(Event::MemberRegistered {
            member,
            name: name.to_owned(),
            key_hash,
            at_ms: now_ms,
        });
        slot.applied_pos = pos;
        Ok((member, pos))
    }

    /// Name and balance of a member.
    pub fn profile(&self, member: MemberId) -> Option<(String, Krw)> {
        self.accounts.get(&member).map(|a| (a.name.clone(), a.balance))
    }

    pub fn balance(&self, member: MemberId) -> Option<Krw> {
        self.accounts.get(&member).map(|a| a.balance)
    }

    pub fn key_hash(&self, member: MemberId) -> Option<[u8; 32]> {
        self.accounts.get(&member).map(|a| a.key_hash)
    }

    /// Adds `amount` to the balance; returns the new balance.
    pub fn charge(
        &self,
        member: MemberId,
        amount: Krw,
        now_ms: TimestampMs,
    ) -> Result<(Krw, JournalPos), WalletRejection> {
        self.charge_keyed(member, amount, now_ms, &mut None)
    }

    /// [`Accounts::charge`] whose event carries `ticket`'s idempotency
    /// record. On success the ticket is taken (settled with the charge); on
    /// a refusal it is left for the caller to settle.
    pub fn charge_keyed(
        &self,
        member: MemberId,
        amount: Krw,
        now_ms: TimestampMs,
        ticket: &mut Option<IdemTicket<Krw>>,
    ) -> Result<(Krw, JournalPos), WalletRejection> {
        if !(1..=self.limits.max_charge).contains(&amount) {
            return Err(WalletRejection::AmountOutOfRange {
                max: self.limits.max_charge,
            });
        }
        let mut account = self.accounts.get_mut(&member).ok_or(WalletRejection::UnknownMember)?;
        let balance_after = account
            .balance
            .checked_add(amount)
            .filter(|&b| b <= self.limits.max_balance)
            .ok_or(WalletRejection::BalanceCeiling {
                max: self.limits.max_balance,
            })?;
        if !self.sink.accepting() {
            return Err(Unavailable.into());
        }
        let charged = Event::BalanceCharged {
            member,
            amount,
            balance_after,
            at_ms: now_ms,
        };
        account.apply_decided(member, &charged);
        let pos = journal(&*self.sink, ticket.take(), &balance_after, now_ms, charged);
        account.applied_pos = pos;
        Ok((balance_after, pos))
    }

    /// Takes `amount` for a payment, under the member's lock: `payment`
    /// builds the payment's one event for the new balance, the wallet
    /// applies it, and `journal` appends it (given the new balance too;
    /// it returns the event's position).
    /// Nothing changes when the balance is short.
    pub fn debit_with(
        &self,
        member: MemberId,
        amount: Krw,
        payment: impl FnOnce(Krw) -> Event,
        journal: impl FnOnce(Event, Krw) -> JournalPos,
    ) -> Result<(Krw, JournalPos), WalletRejection> {
        let mut account = self.accounts.get_mut(&member).ok_or(WalletRejection::UnknownMember)?;
        if account.balance < amount {
            return Err(WalletRejection::InsufficientBalance {
                balance: account.balance,
                amount,
            });
        }
        if !self.sink.accepting() {
            return Err(Unavailable.into());
        }
        let balance_after = account.balance - amount;
        let paid = payment(balance_after);
        account.apply_decided(member, &paid);
        let pos = journal(paid, balance_after);
        account.applied_pos = pos;
        Ok((balance_after, pos))
    }

    /// A page of the history, newest first. `cursor` comes from the previous
    /// page (it counts entries from the first ever, trimmed ones too).
    pub fn history(&self, member: MemberId, cursor: Option<u64>, limit: usize) -> Option<HistoryPage> {
        let account = self.accounts.get(&member)?;
        let base = account.trimmed.entries;
        let total = account.history_len();
        let end = cursor.unwrap_or(total).min(total);
        let start = end.saturating_sub(limit as u64);
        let in_memory = |ordinal: u64| usize::try_from(ordinal.saturating_sub(base)).unwrap_or(usize::MAX);
        let items = account.history[in_memory(start)..in_memory(end)]
            .iter()
            .rev()
            .copied()
            .collect();
        Some(HistoryPage {
            items,
            from_tables: (start < base).then(|| start..end.min(base)),
            next_cursor: (start > 0).then_some(start),
        })
    }

    /// Trims the history of every member whose last change the tables hold
    /// (`applied_pos <= projected`) to the newest [`HISTORY_IN_MEMORY`]
    /// entries; returns how many entries left memory.
    pub fn trim_histories(&self, projected: JournalPos) -> usize {
        let mut trimmed = 0;
        for mut account in self.accounts.iter_mut() {
            if account.history.len() > HISTORY_IN_MEMORY && account.applied_pos <= projected {
                trimmed += account.trim_history(HISTORY_IN_MEMORY);
            }
        }
        trimmed
    }

    /// Every member id (unordered).
    pub fn member_ids(&self) -> Vec<MemberId> {
        self.accounts.iter().map(|e| *e.key()).collect()
    }

    /// A copy of every account, for snapshots.
    pub fn export(&self) -> Vec<(MemberId, Account)> {
        self.accounts.iter().map(|e| (*e.key(), e.value().clone())).collect()
    }

    /// Replaces the accounts with a snapshot's (recovery, before serving).
    pub fn import(&self, accounts: Vec<(MemberId, Account)>) {
        self.accounts.clear();
        let mut next = 1;
        for (member, account) in accounts {
            next = next.max(member + 1);
            self.accounts.insert(member, account);
        }
        self.next_member.store(next, Ordering::Relaxed);
    }

    /// Sum of all balances.
    pub fn total_balance(&self) -> Krw {
        self.accounts.iter().map(|e| e.balance).sum()
    }

    /// Panics unless every balance is in `0..=max_balance` and equals the sum
    /// of its ledger.
    pub fn check_invariants(&self) {
        for entry in self.accounts.iter() {
            let account = entry.value();
            assert!(
                (0..=self.limits.max_balance).contains(&account.balance),
                "member {}: balance {} is outside 0..={}",
                entry.key(),
                account.balance,
                self.limits.max_balance
            );
            assert_eq!(
                account.ledger_sum(),
                account.balance,
                "member {}: the ledger sums to the balance",
                entry.key()
            );
            if let Some(last) = account.history.last() {
                assert_eq!(
                    last.balance_after, account.balance,
                    "the newest entry shows the balance"
                );
            }
        }
    }
}

impl From<WalletRejection> for EngineError {
    fn from(err: WalletRejection) -> Self {
        match err {
            WalletRejection::UnknownMember => EngineError::Unauthenticated,
            WalletRejection::AmountOutOfRange { .. } | WalletRejection::BalanceCeiling { .. } => {
                EngineError::Validation(err.to_string())
            }
            WalletRejection::InsufficientBalance { balance, amount } => {
                EngineError::InsufficientBalance { balance, amount }
            }
            WalletRejection::Unavailable(_) => EngineError::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemoryJournal;

    fn accounts(max_charge: Krw, max_balance: Krw) -> (Accounts, Arc<MemoryJournal>) {
        let journal = Arc::new(MemoryJournal::new());
        let limits = WalletLimits {
            max_charge,
            max_balance,
        };
        (Accounts::new(limits, journal.clone()), journal)
    }

    #[test]
    fn a_charge_adds_to_the_balance_and_the_history() {
        let (accounts, journal) = accounts(100, 1_000);
        let (member, _) = accounts.register("kim", [0; 32], 0).expect("registered");
        let (balance, _) = accounts.charge(member, 70, 5).expect("within limits");
        assert_eq!(balance, 70);
        let page = accounts.history(member, None, 10).expect("member exists");
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].kind, LedgerKind::Charge);
        assert_eq!(page.items[0].balance_after, 70);
        assert_eq!(journal.len(), 2, "registration and charge are journaled");
        accounts.check_invariants();
    }

    #[test]
    fn charges_out_of_range_or_past_the_ceiling_are_refused() {
        let (accounts, _) = accounts(100, 150);
        let (member, _) = accounts.register("kim", [0; 32], 0).expect("registered");
        assert_eq!(
            accounts.charge(member, 0, 0),
            Err(WalletRejection::AmountOutOfRange { max: 100 })
        );
        assert_eq!(
            accounts.charge(member, 101, 0),
            Err(WalletRejection::AmountOutOfRange { max: 100 })
        );
        accounts.charge(member, 100, 0).expect("first charge fits");
        assert_eq!(
            accounts.charge(member, 51, 0),
            Err(WalletRejection::BalanceCeiling { max: 150 }),
            "a charge may not pass the ceiling"
        );
        assert_eq!(accounts.balance(member), Some(100), "a refused charge changes nothing");
        assert_eq!(accounts.charge(99, 1, 0), Err(WalletRejection::UnknownMember));
    }

    #[test]
    fn a_debit_never_makes_a_balance_negative() {
        let (accounts, sink) = accounts(100, 1_000);
        let (member, _) = accounts.register("kim", [0; 32], 0).expect("registered");
        accounts.charge(member, 50, 0).expect("charge");
        let paying = |amount| {
            move |balance_after| Event::PaymentCompleted {
                payment: 1,
                concert: 1,
                reservation: 1,
                member,
                amount,
                balance_after,
                token: None,
                at_ms: 0,
            }
        };
        let append = |event, _| sink.append(event);
        assert_eq!(
            accounts.debit_with(member, 60, paying(60), append),
            Err(WalletRejection::InsufficientBalance {
                balance: 50,
                amount: 60
            })
        );
        let (after, _) = accounts
            .debit_with(member, 50, paying(50), append)
            .expect("exact balance");
        assert_eq!(after, 0);
        accounts.check_invariants();
    }

    #[test]
    fn history_pages_newest_first_without_gaps() {
        let (accounts, _) = accounts(100, 10_000);
        let (member, _) = accounts.register("kim", [0; 32], 0).expect("registered");
        for amount in 1..=5 {
            accounts.charge(member, amount, amount).expect("charge");
        }
        let first = accounts.history(member, None, 2).expect("member");
        assert_eq!(first.items.iter().map(|e| e.amount).collect::<Vec<_>>(), vec![5, 4]);
        let second = accounts.history(member, first.next_cursor, 2).expect("member");
        assert_eq!(second.items.iter().map(|e| e.amount).collect::<Vec<_>>(), vec![3, 2]);
        let last = accounts.history(member, second.next_cursor, 2).expect("member");
        assert_eq!(last.items.iter().map(|e| e.amount).collect::<Vec<_>>(), vec![1]);
        assert_eq!(last.next_cursor, None, "the last page has no cursor");
    }
}
