//! `WaitingQueue`: queue tokens, FIFO admission, active cap and expiry.
//!
//! Concurrency rule: **only the queue actor's tick admits or expires
//! tokens** (`tick`, under the `fifo` and `ticking` locks). Everything a
//! request needs is read without waiting behind that work:
//!
//! - `status` is a `DashMap` read of one token plus atomics: O(1);
//! - `issue` takes the member's `by_member` slot (one live token per member)
//!   and, for a new token, the `fifo` lock for a few instructions to take the
//!   next place in line;
//! - `position` is `rank - head_rank`: `rank` is a token's place in line, and
//!   `head_rank` the rank of the last token that left the front. When idle
//!   tokens leave from the middle, the tick closes the line up behind the
//!   first of them, in slices of [`CLOSE_UP_SLICE`] tokens with the `fifo`
//!   lock released between slices, so `issue` never waits for a whole pass.
//!
//! Idle expiry does not walk the line: every WAITING token sits in an index
//! ordered by the idle deadline it had when last indexed (`last_seen +
//! idle timeout`). A tick pops only the entries that are due; a token polled
//! since is put back with its new deadline, one that was not is expired. A
//! poll never touches the index, so `status` stays a map read and two
//! stores, and a tick's work is the tokens that expire plus those whose
//! indexed deadline passed although they polled (each at most once per idle
//! timeout).
//!
//! Admission happens only at ticks, so a token is WAITING until a tick
//! admits it, even in an empty queue.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard};
use rand::Rng;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};

use crate::clock::TimestampMs;
use crate::events::{Event, EventSink, Unavailable};
use crate::types::{JournalPos, MemberId};

/// A queue token: 128 random bits, shown to clients as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TokenId(pub [u8; 16]);

impl Hash for TokenId {
    /// Only the first 64 bits: every token in a map was drawn from the
    /// CSPRNG (or restored from one that was), so those bits are already a
    /// uniform hash, and a client cannot choose which tokens are stored.
    /// Equal tokens hash equally, as `Eq` requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(low));
    }
}

/// A hasher for [`TokenId`] keys that passes the token's 64 random bits
/// through instead of mixing them again (see `impl Hash for TokenId`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn write_u64(&mut self, bits: u64) {
        self.0 = bits;
    }

    /// Any other key: an FxHash-style fold, so the hasher stays correct for
    /// keys that are not tokens.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type TokenBuildHasher = BuildHasherDefault<TokenHasher>;

impl TokenId {
    /// A fresh token from the thread's CSPRNG.
    pub fn random() -> Self {
        Self(rand::rng().random())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex digits; anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl std::fmt::Debug for TokenId {
    /// Tokens are credentials: debug output shows only a prefix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenId({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// Queue settings (see the contract's configuration table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    pub tick_ms: i64,
    pub admit_per_tick: u32,
    pub max_active: u32,
    pub token_ttl_ms: i64,
    pub idle_timeout_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenStatus {
    Waiting,
    Active,
    Expired,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Waiting => "WAITING",
            TokenStatus::Active => "ACTIVE",
            TokenStatus::Expired => "EXPIRED",
        }
    }
}

const WAITING: u8 = 0;
const ACTIVE: u8 = 1;
const EXPIRED: u8 = 2;

/// One token's shared state. Fields are atomics so that lookups never lock.
#[derive(Debug)]
pub struct TokenEntry {
    member: MemberId,
    seq: u64,
    state: AtomicU8,
    rank: AtomicU64,
    active_until_ms: AtomicI64,
    last_seen_ms: AtomicI64,
}

impl TokenEntry {
    fn status(&self) -> TokenStatus {
        match self.state.load(Ordering::Acquire) {
            WAITING => TokenStatus::Waiting,
            ACTIVE => TokenStatus::Active,
            _ => TokenStatus::Expired,
        }
    }

    fn transition(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// What a client is told about its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenView {
    pub member: MemberId,
    pub status: TokenStatus,
    /// 1 = next to be admitted; 0 once ACTIVE (or EXPIRED).
    pub position: u64,
    pub estimated_wait_seconds: u64,
    pub active_until_ms: Option<TimestampMs>,
}

/// The result of asking for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    pub token: TokenId,
    pub view: TokenView,
    /// False when the member's live token was returned again.
    pub created: bool,
    pub pos: Option<JournalPos>,
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    pub admitted: u32,
    pub expired_active: u32,
    pub expired_idle: u32,
    pub purged: u32,
}

/// A token as stored in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub token: TokenId,
    pub member: MemberId,
    pub seq: u64,
    pub status: TokenStatus,
    pub active_until_ms: TimestampMs,
    pub last_seen_ms: TimestampMs,
}

/// Tokens the line's close-up pass renumbers while holding the `fifo` lock
/// at most: then the lock is handed to any waiting `issue` and taken back.
pub const CLOSE_UP_SLICE: usize = 4_096;

struct Fifo {
    waiting: VecDeque<(TokenId, Arc<TokenEntry>)>,
    /// Every WAITING token by the idle deadline it had when indexed (a
    /// min-heap); entries of tokens that left the line are dropped when due.
    idle_index: BinaryHeap<Reverse<IdleDeadline>>,
    next_seq: u64,
    next_rank: u64,
}

/// When a token would expire if it is not polled again, as last indexed.
struct IdleDeadline {
    at_ms: TimestampMs,
    token: TokenId,
    entry: Arc<TokenEntry>,
}

impl IdleDeadline {
    fn key(&self) -> (TimestampMs, u64) {
        (self.at_ms, self.entry.seq)
    }
}

impl PartialEq for IdleDeadline {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for IdleDeadline {}

impl PartialOrd for IdleDeadline {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for IdleDeadline {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.key().cmp(&other.key())
    }
}

/// Tick-only bookkeeping: ACTIVE tokens in admission order (so by
/// `active_until`) and EXPIRED ones kept answerable until purged.
struct Ticking {
    active: VecDeque<(TokenId, Arc<TokenEntry>)>,
    expired: VecDeque<(TokenId, MemberId, TimestampMs)>,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct QueueCounters {
    pub admitted_total: AtomicU64,
    pub expired_total: AtomicU64,
    pub issued_total: AtomicU64,
}

pub struct WaitingQueue {
    settings: QueueSettings,
    tokens: DashMap<TokenId, Arc<TokenEntry>, TokenBuildHasher>,
    /// The member's latest token: enforces one live token per member.
    by_member: DashMap<MemberId, TokenId, FxBuildHasher>,
    /// The line. Lock order: `ticking` before `fifo`, everywhere.
    fifo: Mutex<Fifo>,
    ticking: Mutex<Ticking>,
    head_rank: AtomicU64,
    waiting_count: AtomicU64,
    active_count: AtomicU64,
    counters: QueueCounters,
    sink: Arc<dyn EventSink>,
}

impl WaitingQueue {
    pub fn new(settings: QueueSettings, sink: Arc<dyn EventSink>) -> Self {
        Self {
            settings,
            tokens: DashMap::with_hasher(TokenBuildHasher::default()),
            by_member: DashMap::with_hasher(FxBuildHasher),
            fifo: Mutex::new(Fifo {
                waiting: VecDeque::new(),
                idle_index: BinaryHeap::new(),
                next_seq: 1,
                next_rank: 1,
            }),
            ticking: Mutex::new(Ticking {
                active: VecDeque::new(),
                expired: VecDeque::new(),
            }),
            head_rank: AtomicU64::new(0),
            waiting_count: AtomicU64::new(0),
            active_count: AtomicU64::new(0),
            counters: QueueCounters::default(),
            sink,
        }
    }

    pub fn settings(&self) -> QueueSettings {
        self.settings
    }

    pub fn waiting(&self) -> u64 {
        self.waiting_count.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> u64 {
        self.active_count.load(Ordering::Relaxed)
    }

    pub fn counters(&self) -> &QueueCounters {
        &self.counters
    }

    /// The member's live token, or a new one at the back of the line.
    /// Asking again counts as a poll.
    pub fn issue(&self, member: MemberId, now_ms: TimestampMs) -> Result<Issued, Unavailable> {
        match self.by_member.entry(member) {
            Entry::Occupied(mut slot) => {
                let token = *slot.get();
                if let Some(entry) = self.tokens.get(&token) {
                    if entry.status() != TokenStatus::Expired {
                        entry.last_seen_ms.store(now_ms, Ordering::Relaxed);
                        return Ok(Issued {
                            token,
                            view: self.view(&entry),
                            created: false,
                            pos: None,
                        });
                    }
                }
                let (token, entry, pos) = self.enqueue(member, now_ms)?;
                slot.insert(token);
                Ok(Issued {
                    token,
                    view: self.view(&entry),
                    created: true,
                    pos: Some(pos),
                })
            }
            Entry::Vacant(slot) => {
                let (token, entry, pos) = self.enqueue(member, now_ms)?;
                slot.insert(token);
                Ok(Issued {
                    token,
                    view: self.view(&entry),
                    created: true,
                    pos: Some(pos),
                })
            }
        }
    }

    fn enqueue(
        &self,
        member: MemberId,
        now_ms: TimestampMs,
    ) -> Result<(TokenId, Arc<TokenEntry>, JournalPos), Unavailable> {
        if !self.sink.accepting() {
            return Err(Unavailable);
        }
        let token = TokenId::random();
        // Allocated before the lock; its place in line is filled in under it.
        let mut entry = Arc::new(TokenEntry {
            member,
            seq: 0,
            state: AtomicU8::new(WAITING),
            rank: AtomicU64::new(0),
            active_until_ms: AtomicI64::new(0),
            last_seen_ms: AtomicI64::new(now_ms),
        });
        let mut fifo = self.fifo.lock();
        let seq = fifo.next_seq;
        let rank = fifo.next_rank;
        fifo.next_seq += 1;
        fifo.next_rank += 1;
        // The Arc was created a few lines above and has not been cloned yet.
        let fresh = Arc::get_mut(&mut entry).expect("a token entry is not shared before it is queued");
        fresh.seq = seq;
        *fresh.rank.get_mut() = rank;
        self.tokens.insert(token, Arc::clone(&entry));
        fifo.waiting.push_back((token, Arc::clone(&entry)));
        fifo.idle_index.push(Reverse(IdleDeadline {
            at_ms: now_ms.saturating_add(self.settings.idle_timeout_ms),
            token,
            entry: Arc::clone(&entry),
        }));
        // Appended under the fifo lock: the journal sees tokens in line order.
        let pos = self.sink.append(Event::TokenIssued {
            token,
            member,
            seq,
            at_ms: now_ms,
        });
        drop(fifo);
        self.waiting_count.fetch_add(1, Ordering::Relaxed);
        self.counters.issued_total.fetch_add(1, Ordering::Relaxed);
        Ok((token, entry, pos))
    }

    /// Looks a token up and records the poll. `None` for an unknown token.
    pub fn status(&self, token: &TokenId, now_ms: TimestampMs) -> Option<TokenView> {
        let entry = self.tokens.get(token)?;
        if entry.status() == TokenStatus::Waiting {
            entry.last_seen_ms.store(now_ms, Ordering::Relaxed);
        }
        Some(self.view(&entry))
    }

    /// Looks a token up without counting it as a poll.
    pub fn peek(&self, token: &TokenId) -> Option<TokenView> {
        self.tokens.get(token).map(|entry| self.view(&entry))
    }

    fn view(&self, entry: &TokenEntry) -> TokenView {
        let status = entry.status();
        let (position, estimated_wait_seconds, active_until_ms) = match status {
            TokenStatus::Waiting => {
                let position = entry
                    .rank
                    .load(Ordering::Relaxed)
                    .saturating_sub(self.head_rank.load(Ordering::Relaxed))
                    .max(1);
                (position, self.estimated_wait_seconds(position), None)
            }
            TokenStatus::Active => (0, 0, Some(entry.active_until_ms.load(Ordering::Relaxed))),
            TokenStatus::Expired => (0, 0, None),
        };
        TokenView {
            member: entry.member,
            status,
            position,
            estimated_wait_seconds,
            active_until_ms,
        }
    }

    /// Ticks needed to reach `position` at the admission rate, in seconds
    /// (rounded up). It ignores the active cap, which depends on when
    /// ACTIVE members finish.
    fn estimated_wait_seconds(&self, position: u64) -> u64 {
        let per_tick = u64::from(self.settings.admit_per_tick.max(1));
        let ticks = position.div_ceil(per_tick);
        (ticks * self.settings.tick_ms.max(0) as u64).div_ceil(1000)
    }

    /// Expires the token of a member who just paid. The payment event already
    /// records the expiry, so nothing is journaled here. Returns whether the
    /// token was ACTIVE.
    pub fn expire_paid(&self, token: &TokenId) -> bool {
        let Some(entry) = self.tokens.get(token) else {
            return false;
        };
        let was_active = entry.transition(ACTIVE, EXPIRED);
        if was_active {
            self.active_count.fetch_sub(1, Ordering::Relaxed);
            self.counters.expired_total.fetch_add(1, Ordering::Relaxed);
        }
        was_active
    }

    /// One admission tick at `now_ms`: expire ACTIVE tokens past their TTL
    /// and WAITING ones idle too long, admit the oldest WAITING ones under
    /// the cap, and forget EXPIRED ones older than the TTL.
    pub fn tick(&self, now_ms: TimestampMs) -> TickReport {
        let mut report = TickReport::default();
        let mut ticking = self.ticking.lock();
        report.expired_active = self.expire_active(&mut ticking, now_ms);
        let mut fifo = self.fifo.lock();
        let (expired_idle, first_gap) = self.expire_idle(&mut fifo, &mut ticking, now_ms);
        report.expired_idle = expired_idle;
        if let Some(first_rank) = first_gap {
            self.close_up(&mut fifo, first_rank);
        }
        report.admitted = self.admit(&mut fifo, &mut ticking, now_ms);
        drop(fifo);
        report.purged = self.purge(&mut ticking, now_ms);
        report
    }

    fn expire_active(&self, ticking: &mut Ticking, now_ms: TimestampMs) -> u32 {
        let mut expired = 0;
        while let Some((token, entry)) = ticking.active.front() {
            let active_until = entry.active_until_ms.load(Ordering::Relaxed);
            if entry.status() == TokenStatus::Active && active_until > now_ms {
                break;
            }
            let (token, entry) = (*token, Arc::clone(entry));
            ticking.active.pop_front();
            if entry.transition(ACTIVE, EXPIRED) {
                self.active_count.fetch_sub(1, Ordering::Relaxed);
                self.counters.expired_total.fetch_add(1, Ordering::Relaxed);
                self.sink.append(Event::TokenExpired { token, at_ms: now_ms });
                expired += 1;
            }
            ticking.expired.push_back((token, entry.member, now_ms));
        }
        expired
    }

    /// Expires the WAITING tokens not polled within the idle timeout, from
    /// the idle index (no walk of the line), journaled in line order. They
    /// stay in `fifo.waiting` as EXPIRED until [`Self::close_up`] removes
    /// them; returns how many expired and the lowest rank among them.
    fn expire_idle(&self, fifo: &mut Fifo, ticking: &mut Ticking, now_ms: TimestampMs) -> (u32, Option<u64>) {
        let timeout = self.settings.idle_timeout_ms;
        let mut due: Vec<(TokenId, Arc<TokenEntry>)> = Vec::new();
        while let Some(Reverse(next)) = fifo.idle_index.peek() {
            if next.at_ms > now_ms {
                break;
            }
            let Some(Reverse(indexed)) = fifo.idle_index.pop() else {
                break;
            };
            if indexed.entry.status() != TokenStatus::Waiting {
                continue; // admitted (or expired) since: it leaves the index
            }
            let deadline = indexed
                .entry
                .last_seen_ms
                .load(Ordering::Relaxed)
                .saturating_add(timeout);
            if deadline > now_ms {
                // Polled since it was indexed: wait for its new deadline.
                fifo.idle_index.push(Reverse(IdleDeadline {
                    at_ms: deadline,
                    ..indexed
                }));
                continue;
            }
            due.push((indexed.token, indexed.entry));
        }
        // The journal sees the expiries in line order, as a walk would.
        due.sort_unstable_by_key(|(_, entry)| entry.seq);
        let mut expired = 0;
        let mut first_rank = None;
        for (token, entry) in due {
            if entry.transition(WAITING, EXPIRED) {
                self.sink.append(Event::TokenExpired { token, at_ms: now_ms });
                ticking.expired.push_back((token, entry.member, now_ms));
                first_rank.get_or_insert(entry.rank.load(Ordering::Relaxed));
                expired += 1;
            }
        }
        if expired > 0 {
            self.waiting_count.fetch_sub(u64::from(expired), Ordering::Relaxed);
            self.counters
                .expired_total
                .fetch_add(u64::from(expired), Ordering::Relaxed);
        }
        (expired, first_rank)
    }

    /// Removes the EXPIRED tokens from the line and gives the WAITING ones
    /// behind the first of them (rank `first_rank`) consecutive ranks again,
    /// [`CLOSE_UP_SLICE`] at a time: between slices the `fifo` lock goes to
    /// any waiting `issue`, which appends at the back (the pass reaches its
    /// tokens too). Meanwhile ranks still increase along the line; tokens not
    /// yet renumbered show a position too high by the gaps ahead of them.
    /// Only the tick (under `ticking`) changes the line's order or status,
    /// so nothing else moves while the lock is handed over.
    fn close_up(&self, fifo: &mut MutexGuard<'_, Fifo>, first_rank: u64) {
        let start = fifo
            .waiting
            .partition_point(|(_, entry)| entry.rank.load(Ordering::Relaxed) < first_rank);
        let mut rank = match start.checked_sub(1) {
            Some(before) => fifo.waiting[before].1.rank.load(Ordering::Relaxed),
            None => self.head_rank.load(Ordering::Relaxed),
        };
        let (mut read, mut write) = (start, start);
        loop {
            let end = (read + CLOSE_UP_SLICE).min(fifo.waiting.len());
            while read < end {
                if fifo.waiting[read].1.status() == TokenStatus::Waiting {
                    rank += 1;
                    fifo.waiting[read].1.rank.store(rank, Ordering::Relaxed);
                    fifo.waiting.swap(write, read);
                    write += 1;
                }
                read += 1;
            }
            if read == fifo.waiting.len() {
                break;
            }
            MutexGuard::bump(fifo);
        }
        fifo.waiting.truncate(write);
        fifo.next_rank = rank + 1;
    }

    /// Gives the whole line consecutive ranks (after a restore).
    fn renumber(&self, fifo: &mut Fifo) {
        let mut rank = self.head_rank.load(Ordering::Relaxed) + 1;
        for (_, entry) in &fifo.waiting {
            entry.rank.store(rank, Ordering::Relaxed);
            rank += 1;
        }
        fifo.next_rank = rank;
    }

    fn admit(&self, fifo: &mut Fifo, ticking: &mut Ticking, now_ms: TimestampMs) -> u32 {
        let mut admitted = 0;
        while admitted < self.settings.admit_per_tick
            && self.active_count.load(Ordering::Relaxed) < u64::from(self.settings.max_active)
        {
            let Some((token, entry)) = fifo.waiting.pop_front() else {
                break;
            };
            self.head_rank
                .store(entry.rank.load(Ordering::Relaxed), Ordering::Relaxed);
            self.waiting_count.fetch_sub(1, Ordering::Relaxed);
            let active_until_ms = now_ms + self.settings.token_ttl_ms;
            entry.active_until_ms.store(active_until_ms, Ordering::Relaxed);
            if !entry.transition(WAITING, ACTIVE) {
                continue;
            }
            self.active_count.fetch_add(1, Ordering::Relaxed);
            self.sink.append(Event::TokenAdmitted { token, active_until_ms });
            ticking.active.push_back((token, entry));
            admitted += 1;
        }
        self.counters
            .admitted_total
            .fetch_add(u64::from(admitted), Ordering::Relaxed);
        admitted
    }

    fn purge(&self, ticking: &mut Ticking, now_ms: TimestampMs) -> u32 {
        let mut purged = 0;
        while let Some(&(token, member, expired_at)) = ticking.expired.front() {
            if expired_at + self.settings.token_ttl_ms > now_ms {
                break;
            }
            ticking.expired.pop_front();
            self.tokens.remove(&token);
            self.by_member.remove_if(&member, |_, latest| *latest == token);
            purged += 1;
        }
        purged
    }

    /// Every token the queue still knows, in issue order, for snapshots.
    pub fn export(&self) -> Vec<TokenRecord> {
        let mut records: Vec<TokenRecord> = self
            .tokens
            .iter()
            .map(|e| TokenRecord {
                token: *e.key(),
                member: e.member,
                seq: e.seq,
                status: e.status(),
                active_until_ms: e.active_until_ms.load(Ordering::Relaxed),
                last_seen_ms: e.last_seen_ms.load(Ordering::Relaxed),
            })
            .collect();
        records.sort_by_key(|r| r.seq);
        records
    }

    /// Rebuilds the queue from records in any order (recovery, before
    /// serving): WAITING tokens keep their order, ACTIVE ones their
    /// `active_until`.
    pub fn import(&self, mut records: Vec<TokenRecord>, now_ms: TimestampMs) {
        records.sort_by_key(|r| r.seq);
        // Lock order everywhere: `ticking`, then `fifo`.
        let mut ticking = self.ticking.lock();
        let mut fifo = self.fifo.lock();
        let mut active: Vec<(TokenId, Arc<TokenEntry>)> = Vec::new();
        for record in records {
            let state = match record.status {
                TokenStatus::Waiting => WAITING,
                TokenStatus::Active => ACTIVE,
                TokenStatus::Expired => EXPIRED,
            };
            let entry = Arc::new(TokenEntry {
                member: record.member,
                seq: record.seq,
                state: AtomicU8::new(state),
                rank: AtomicU64::new(0),
                active_until_ms: AtomicI64::new(record.active_until_ms),
                // A restart counts as a poll: nobody could poll while we were down.
                last_seen_ms: AtomicI64::new(record.last_seen_ms.max(now_ms)),
            });
            fifo.next_seq = fifo.next_seq.max(record.seq + 1);
            self.tokens.insert(record.token, Arc::clone(&entry));
            self.by_member.insert(record.member, record.token);
            match record.status {
                TokenStatus::Waiting => {
                    fifo.idle_index.push(Reverse(IdleDeadline {
                        at_ms: entry
                            .last_seen_ms
                            .load(Ordering::Relaxed)
                            .saturating_add(self.settings.idle_timeout_ms),
                        token: record.token,
                        entry: Arc::clone(&entry),
                    }));
                    fifo.waiting.push_back((record.token, entry));
                }
                TokenStatus::Active => active.push((record.token, entry)),
                TokenStatus::Expired => ticking.expired.push_back((record.token, record.member, now_ms)),
            }
        }
        active.sort_by_key(|(_, e)| e.active_until_ms.load(Ordering::Relaxed));
        self.active_count.store(active.len() as u64, Ordering::Relaxed);
        ticking.active = active.into();
        self.waiting_count.store(fifo.waiting.len() as u64, Ordering::Relaxed);
        self.head_rank.store(0, Ordering::Relaxed);
        self.renumber(&mut fifo);
    }

    /// Panics unless: the cap holds, counters match the tokens, the line is
    /// in issue order with increasing ranks, and no member has two live tokens.
    pub fn check_invariants(&self) {
        let ticking = self.ticking.lock();
        let fifo = self.fifo.lock();
        let active = self.tokens.iter().filter(|e| e.status() == TokenStatus::Active).count() as u64;
        assert_eq!(active, self.active(), "the active counter matches the ACTIVE tokens");
        assert!(
            active <= u64::from(self.settings.max_active),
            "never more ACTIVE than the cap"
        );
        assert_eq!(
            fifo.waiting.len() as u64,
            self.waiting(),
            "the waiting counter matches the line"
        );
        let head = self.head_rank.load(Ordering::Relaxed);
        let mut last_seq = 0;
        let mut last_rank = head;
        for (_, entry) in &fifo.waiting {
            assert_eq!(entry.status(), TokenStatus::Waiting, "only WAITING tokens are in line");
            assert!(entry.seq > last_seq, "the line is in issue order");
            let rank = entry.rank.load(Ordering::Relaxed);
            assert!(rank > last_rank, "ranks increase along the line");
            last_seq = entry.seq;
            last_rank = rank;
        }
        // Idle expiry is exact only if every WAITING token is indexed no later
        // than its real deadline.
        let mut indexed: std::collections::HashMap<TokenId, TimestampMs> = std::collections::HashMap::new();
        for Reverse(deadline) in fifo.idle_index.iter() {
            let earliest = indexed.entry(deadline.token).or_insert(deadline.at_ms);
            *earliest = (*earliest).min(deadline.at_ms);
        }
        for (token, entry) in &fifo.waiting {
            let due = entry
                .last_seen_ms
                .load(Ordering::Relaxed)
                .saturating_add(self.settings.idle_timeout_ms);
            assert!(
                indexed.get(token).is_some_and(|&at_ms| at_ms <= due),
                "every WAITING token is in the idle index no later than its deadline"
            );
        }
        for entry in ticking.active.iter() {
            assert_ne!(
                entry.1.status(),
                TokenStatus::Waiting,
                "admitted tokens never wait again"
            );
        }
        let mut live_per_member = std::collections::HashMap::new();
        for entry in self.tokens.iter() {
            if entry.status() != TokenStatus::Expired {
                *live_per_member.entry(entry.member).or_insert(0) += 1;
            }
        }
        assert!(
            live_per_member.values().all(|&n| n == 1),
            "a member has at most one live token"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemoryJournal;

    fn queue(admit_per_tick: u32, max_active: u32) -> WaitingQueue {
        let settings = QueueSettings {
            tick_ms: 1_000,
            admit_per_tick,
            max_active,
            token_ttl_ms: 600_000,
            idle_timeout_ms: 120_000,
        };
        WaitingQueue::new(settings, Arc::new(MemoryJournal::new()))
    }

    #[test]
    fn tokens_are_unguessable_and_round_trip_as_hex() {
        let a = TokenId::random();
        let b = TokenId::random();
        assert_ne!(a, b, "128 random bits do not repeat");
        assert_eq!(TokenId::parse(&a.to_hex()), Some(a));
        assert_eq!(TokenId::parse("xyz"), None);
        assert_eq!(TokenId::parse(&"g".repeat(32)), None);
    }

    #[test]
    fn a_new_token_waits_until_a_tick_even_in_an_empty_queue() {
        let q = queue(10, 10);
        let issued = q.issue(1, 0).expect("issued");
        assert_eq!(issued.view.status, TokenStatus::Waiting);
        assert_eq!(issued.view.position, 1, "the only token is next");
        q.tick(1_000);
        let view = q.status(&issued.token, 1_000).expect("known");
        assert_eq!(view.status, TokenStatus::Active);
        assert_eq!(view.position, 0, "ACTIVE tokens have position 0");
        assert_eq!(view.active_until_ms, Some(601_000));
        q.check_invariants();
    }

    #[test]
    fn a_member_has_one_live_token() {
        let q = queue(10, 10);
        let first = q.issue(1, 0).expect("issued");
        let again = q.issue(1, 10).expect("issued");
        assert_eq!(first.token, again.token, "asking again returns the same token");
        assert!(!again.created);
        q.tick(1_000);
        q.expire_paid(&first.token);
        let fresh = q.issue(1, 1_001).expect("issued");
        assert_ne!(fresh.token, first.token, "after expiry the member may get a new token");
        q.check_invariants();
    }

    #[test]
    fn admission_is_fifo_limited_per_tick_and_capped() {
        let q = queue(2, 3);
        let tokens: Vec<_> = (1..=5).map(|m| q.issue(m, 0).expect("issued").token).collect();
        assert_eq!(q.status(&tokens[4], 0).map(|v| v.position), Some(5));
        assert_eq!(
            q.status(&tokens[4], 0).map(|v| v.estimated_wait_seconds),
            Some(3),
            "5 at 2/s: 3 ticks"
        );
        assert_eq!(q.tick(1_000).admitted, 2, "at most admit_per_tick per tick");
        assert_eq!(
            q.status(&tokens[2], 1_000).map(|v| v.position),
            Some(1),
            "the third is next"
        );
        assert_eq!(q.tick(2_000).admitted, 1, "the cap of 3 ACTIVE stops admission");
        let statuses: Vec<_> = tokens
            .iter()
            .map(|t| q.status(t, 2_000).expect("known").status)
            .collect();
        assert_eq!(
            statuses,
            vec![
                TokenStatus::Active,
                TokenStatus::Active,
                TokenStatus::Active,
                TokenStatus::Waiting,
                TokenStatus::Waiting
            ],
            "admitted in issue order"
        );
        q.expire_paid(&tokens[0]);
        assert_eq!(q.tick(3_000).admitted, 1, "a paid token frees a place under the cap");
        q.check_invariants();
    }

    #[test]
    fn active_tokens_expire_after_the_ttl() {
        let q = queue(10, 10);
        let token = q.issue(1, 0).expect("issued").token;
        q.tick(1_000);
        assert_eq!(q.tick(600_999).expired_active, 0, "still inside the TTL");
        assert_eq!(q.tick(601_000).expired_active, 1, "expired at admission + TTL");
        assert_eq!(q.status(&token, 601_000).map(|v| v.status), Some(TokenStatus::Expired));
        assert_eq!(q.active(), 0);
        q.check_invariants();
    }

    #[test]
    fn idle_waiting_tokens_expire_and_the_line_closes_up() {
        let q = queue(1, 1);
        let a = q.issue(1, 0).expect("issued").token;
        let idle = q.issue(2, 0).expect("issued").token;
        let c = q.issue(3, 0).expect("issued").token;
        q.tick(1_000); // admits a
        q.status(&c, 100_000);
        let report = q.tick(120_000);
        assert_eq!(
            report.expired_idle, 1,
            "the token not polled for the idle timeout expires"
        );
        assert_eq!(q.status(&idle, 120_000).map(|v| v.status), Some(TokenStatus::Expired));
        assert_eq!(q.status(&c, 120_000).map(|v| v.position), Some(1), "the line closes up");
        assert_eq!(q.status(&a, 120_000).map(|v| v.status), Some(TokenStatus::Active));
        q.check_invariants();
    }

    /// A queue that never admits, so that only idle expiry moves the line.
    fn idle_only_queue(journal: Arc<MemoryJournal>) -> WaitingQueue {
        let settings = QueueSettings {
            tick_ms: 1_000,
            admit_per_tick: 0,
            max_active: 0,
            token_ttl_ms: 600_000,
            idle_timeout_ms: 120_000,
        };
        WaitingQueue::new(settings, journal)
    }

    #[test]
    fn idle_expiry_is_exact_to_the_millisecond_of_the_last_poll() {
        let q = idle_only_queue(Arc::new(MemoryJournal::new()));
        let a = q.issue(1, 0).expect("issued").token;
        let b = q.issue(2, 0).expect("issued").token;
        let c = q.issue(3, 10).expect("issued").token;
        q.status(&b, 50_000);
        let status = |token: &TokenId| q.peek(token).map(|v| v.status);

        assert_eq!(q.tick(119_999).expired_idle, 0, "nobody is idle for 120 s yet");
        assert_eq!(q.tick(120_000).expired_idle, 1, "a, never polled, expires at 120 s");
        assert_eq!(status(&a), Some(TokenStatus::Expired));
        assert_eq!(q.tick(120_009).expired_idle, 0, "c was issued at 10 ms");
        assert_eq!(q.tick(120_010).expired_idle, 1, "c expires 120 s after its issue");
        assert_eq!(status(&c), Some(TokenStatus::Expired));
        assert_eq!(q.tick(169_999).expired_idle, 0, "b's poll at 50 s moved its deadline");
        assert_eq!(status(&b), Some(TokenStatus::Waiting));
        assert_eq!(q.peek(&b).map(|v| v.position), Some(1), "b is first in line now");
        assert_eq!(q.tick(170_000).expired_idle, 1, "b expires 120 s after its poll");
        assert_eq!(q.waiting(), 0);
        q.check_invariants();
    }

    #[test]
    fn tokens_expiring_in_one_tick_are_journaled_in_line_order() {
        let journal = Arc::new(MemoryJournal::new());
        let q = idle_only_queue(Arc::clone(&journal));
        let first = q.issue(1, 0).expect("issued").token;
        let second = q.issue(2, 5).expect("issued").token;
        q.status(&first, 10);
        // Re-indexes `first` behind `second`: its deadline moved to 120_010,
        // after `second`'s 120_005.
        assert_eq!(q.tick(120_000).expired_idle, 0);

        assert_eq!(q.tick(130_000).expired_idle, 2);

        let expired: Vec<TokenId> = journal
            .events()
            .into_iter()
            .filter_map(|event| match event {
                Event::TokenExpired { token, .. } => Some(token),
                _ => None,
            })
            .collect();
        assert_eq!(expired, vec![first, second], "journal order = line order");
        q.check_invariants();
    }

    #[test]
    fn the_line_closes_up_exactly_across_several_slices() {
        let q = idle_only_queue(Arc::new(MemoryJournal::new()));
        let count = 3 * CLOSE_UP_SLICE as u64 + 7;
        let tokens: Vec<TokenId> = (1..=count).map(|m| q.issue(m, 0).expect("issued").token).collect();
        // Every third token (from the first) never polls again.
        for (i, token) in tokens.iter().enumerate() {
            if i % 3 != 0 {
                q.status(token, 60_000);
            }
        }

        let report = q.tick(120_000);

        let stayed: Vec<&TokenId> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, t)| t)
            .collect();
        assert_eq!(u64::from(report.expired_idle), count - stayed.len() as u64);
        for (place, token) in stayed.iter().enumerate() {
            assert_eq!(
                q.peek(token).map(|v| v.position),
                Some(place as u64 + 1),
                "the line closed up: token {place} of those left"
            );
        }
        let late = q.issue(count + 1, 120_000).expect("issued");
        assert_eq!(
            late.view.position,
            stayed.len() as u64 + 1,
            "a new token joins right behind the closed-up line"
        );
        q.check_invariants();
    }

    #[test]
    fn expired_tokens_answer_expired_for_a_ttl_then_are_forgotten() {
        let q = queue(10, 10);
        let token = q.issue(1, 0).expect("issued").token;
        q.tick(1_000);
        q.tick(601_000);
        q.tick(1_200_999);
        assert_eq!(q.peek(&token).map(|v| v.status), Some(TokenStatus::Expired));
        q.tick(1_201_000);
        assert_eq!(q.peek(&token), None, "purged a TTL after expiry");
    }

    #[test]
    fn a_restart_keeps_the_order_and_active_until() {
        let q = queue(1, 10);
        let tokens: Vec<_> = (1..=3).map(|m| q.issue(m, 0).expect("issued").token).collect();
        q.tick(1_000);
        let restored = queue(1, 10);
        restored.import(q.export(), 5_000);
        assert_eq!(restored.peek(&tokens[0]).and_then(|v| v.active_until_ms), Some(601_000));
        assert_eq!(restored.peek(&tokens[1]).map(|v| v.position), Some(1));
        assert_eq!(restored.peek(&tokens[2]).map(|v| v.position), Some(2));
        restored.tick(6_000);
        assert_eq!(restored.peek(&tokens[1]).map(|v| v.status), Some(TokenStatus::Active));
        restored.check_invariants();
    }
}
