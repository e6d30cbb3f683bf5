//! Idempotency records: one execution per (member, endpoint, key).
//!
//! A request with an `Idempotency-Key` first *claims* its scope. The first
//! claim executes; a repeat with the same request fingerprint gets the stored
//! response (waiting while the first is still in flight); a repeat with a
//! different fingerprint is a conflict. The engine stores the response as
//! opaque bytes: it knows nothing of HTTP.
//!
//! **The record travels with its effect.** The claim becomes an
//! [`IdemTicket`] that goes with the write into the engine, to the very code
//! that decides it (the wallet's lock, the concert actor's turn). There the
//! response is rendered and journaled in the *same* event as the effect
//! ([`Event::Idempotent`]), so after any crash either both exist or neither.
//! A rejection with no effect (a 4xx outcome) is journaled as its own
//! [`Event::IdempotencyRecorded`]. The key is freed only when the ticket is
//! dropped undecided (the write never ran: refused up front, or dropped
//! before the actor saw it), so a caller that stops waiting (a 503 after a
//! timeout) never frees a key whose write may still happen: a retry waits
//! for, or replays, the real outcome.

use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::clock::TimestampMs;
use crate::error::EngineError;
use crate::events::Event;
use crate::sink::EventSink;
use crate::types::JournalPos;

/// How long a record is kept by default (`CONCERT_IDEMPOTENCY_TTL`; the
/// contract promises at least 24 hours).
pub const DEFAULT_IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// Longest key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub use crate::records::{IdempotencyRecord, IdempotencyScope, IdempotentEndpoint, StoredResponse};

enum Slot {
    InFlight {
        fingerprint: [u8; 32],
        finished: watch::Receiver<bool>,
    },
    Done {
        record: IdempotencyRecord,
        pos: JournalPos,
    },
}

/// What a claim decided.
pub enum Claim {
    /// Execute the request, then [`InFlightGuard::complete`] it.
    Execute(InFlightGuard),
    /// Answer with the stored response once `pos` is durable.
    Replay(StoredResponse, JournalPos),
    /// The key was used with another request.
    Conflict,
}

/// Every idempotency record.
pub struct IdempotencyStore {
    slots: DashMap<IdempotencyScope, Slot>,
    sink: Arc<dyn EventSink>,
}

impl IdempotencyStore {
    pub fn new(sink: Arc<dyn EventSink>) -> Arc<Self> {
        Arc::new(Self {
            slots: DashMap::new(),
            sink,
        })
    }

    /// Claims `scope` for a request with `fingerprint`. Waits while an
    /// identical request is in flight.
    pub async fn claim(self: &Arc<Self>, scope: IdempotencyScope, fingerprint: [u8; 32]) -> Claim {
        loop {
            let mut finished = match self.slots.entry(scope.clone()) {
                Entry::Vacant(vacant) => {
                    let (tx, rx) = watch::channel(false);
                    vacant.insert(Slot::InFlight {
                        fingerprint,
                        finished: rx,
                    });
                    return Claim::Execute(InFlightGuard {
                        store: Arc::clone(self),
                        scope,
                        fingerprint,
                        finished: tx,
                        completed: false,
                    });
                }
                Entry::Occupied(occupied) => match occupied.get() {
                    Slot::Done { record, pos } if record.fingerprint == fingerprint => {
                        return Claim::Replay(record.response.clone(), *pos)
                    }
                    Slot::Done { .. } => return Claim::Conflict,
                    Slot::InFlight { fingerprint: other, .. } if *other != fingerprint => return Claim::Conflict,
                    Slot::InFlight { finished, .. } => finished.clone(),
                },
            };
            // The entry lock is released here; wait for the first request to finish.
            let _ = finished.wait_for(|done| *done).await;
        }
    }

    /// The stored outcome of `scope` for the request with `fingerprint` once
    /// its write was decided: the response and the journal position that
    /// must be durable before it is shown. `None` while it is in flight or
    /// after its key was freed.
    pub fn settled(&self, scope: &IdempotencyScope, fingerprint: &[u8; 32]) -> Option<(StoredResponse, JournalPos)> {
        match self.slots.get(scope)?.value() {
            Slot::Done { record, pos } if record.fingerprint == *fingerprint => Some((record.response.clone(), *pos)),
            Slot::Done { .. } | Slot::InFlight { .. } => None,
        }
    }

    /// Drops the records made `ttl_ms` or more before `now_ms`; returns how many.
    pub fn prune(&self, now_ms: TimestampMs, ttl_ms: i64) -> usize {
        let before = self.slots.len();
        self.slots.retain(|_, slot| match slot {
            Slot::Done { record, .. } => record.at_ms.saturating_add(ttl_ms) > now_ms,
            Slot::InFlight { .. } => true,
        });
        before - self.slots.len()
    }

    /// Completed records, for snapshots.
    pub fn export(&self) -> Vec<IdempotencyRecord> {
        self.slots
            .iter()
            .filter_map(|e| match e.value() {
                Slot::Done { record, .. } => Some(record.clone()),
                Slot::InFlight { .. } => None,
            })
            .collect()
    }

    /// Restores a record (recovery).
    pub fn restore(&self, record: IdempotencyRecord) {
        self.slots.insert(record.scope.clone(), Slot::Done { record, pos: 0 });
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// The right to execute one idempotent request. Dropping it without
/// completing (a failure worth retrying) frees the key for the next attempt.
pub struct InFlightGuard {
    store: Arc<IdempotencyStore>,
    scope: IdempotencyScope,
    fingerprint: [u8; 32],
    finished: watch::Sender<bool>,
    completed: bool,
}

impl InFlightGuard {
    /// Stores the response for replays and journals it as a record of its
    /// own: for an outcome with no effect (a rejection).
    pub fn complete(self, response: StoredResponse, now_ms: TimestampMs) -> JournalPos {
        let sink = Arc::clone(&self.store.sink);
        self.finish(response, now_ms, |record| {
            sink.append(Event::IdempotencyRecorded { record })
        })
    }

    /// Turns the claim into a ticket that travels with the write and is
    /// settled where the write is decided.
    pub fn into_ticket<T>(self, render: Render<T>) -> IdemTicket<T> {
        IdemTicket { guard: self, render }
    }

    /// Stores `response` and journals its record through `append`, which
    /// must append exactly one event holding the record.
    fn finish(
        mut self,
        response: StoredResponse,
        now_ms: TimestampMs,
        append: impl FnOnce(IdempotencyRecord) -> JournalPos,
    ) -> JournalPos {
        let record = IdempotencyRecord {
            scope: self.scope.clone(),
            fingerprint: self.fingerprint,
            response,
            at_ms: now_ms,
        };
        // The slot's shard stays write-locked from before the append until
        // the record is in: a snapshot reads the journal position first and
        // then copies the records (under the shards' read locks), so a copy
        // tagged at or past this event always holds the record.
        let entry = self.store.slots.entry(self.scope.clone());
        let pos = append(record.clone());
        entry.insert(Slot::Done { record, pos });
        self.completed = true;
        let _ = self.finished.send(true);
        pos
    }
}

/// Renders the response of a write from its outcome (the HTTP layer's
/// encoder; the engine only stores the bytes).
pub type Render<T> = Arc<dyn Fn(Result<&T, &EngineError>) -> StoredResponse + Send + Sync>;

/// A claimed key on its way to where its write is decided. Exactly one of
/// [`IdemTicket::commit`] (an effect), [`IdemTicket::reject`] (a refusal)
/// or a drop (the write never ran) settles it.
pub struct IdemTicket<T> {
    guard: InFlightGuard,
    render: Render<T>,
}

impl<T> IdemTicket<T> {
    /// Journals `effect` and this key's record as ONE event and marks the key
    /// done with the response for `value`. Call it where the effect is
    /// decided, instead of appending `effect` to the sink.
    pub fn commit(self, value: &T, now_ms: TimestampMs, effect: Event) -> JournalPos {
        let response = (self.render)(Ok(value));
        let sink = Arc::clone(&self.guard.store.sink);
        self.guard.finish(response, now_ms, move |record| {
            sink.append(Event::Idempotent {
                record: Box::new(record),
                effect: Box::new(effect),
            })
        })
    }

    /// Settles a refused write: a refusal that is the write's outcome is
    /// stored and replayed; one that says nothing of it (the engine could not
    /// take the write) frees the key for a retry.
    pub fn reject(self, err: &EngineError, now_ms: TimestampMs) {
        if err.is_outcome() {
            let response = (self.render)(Err(err));
            self.guard.complete(response, now_ms);
        }
    }
}

/// Appends `effect`, together with `ticket`'s record when the write has
/// one: the one way deciders journal an effect that may carry a key.
pub fn journal<T>(
    sink: &dyn EventSink,
    ticket: Option<IdemTicket<T>>,
    value: &T,
    now_ms: TimestampMs,
    effect: Event,
) -> JournalPos {
    match ticket {
        Some(ticket) => ticket.commit(value, now_ms, effect),
        None => sink.append(effect),
    }
}

/// Settles `ticket` (if any) with a refusal.
pub fn reject<T>(ticket: Option<IdemTicket<T>>, err: &EngineError, now_ms: TimestampMs) {
    if let Some(ticket) = ticket {
        ticket.reject(err, now_ms);
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if !self.completed {
            self.store
                .slots
                .remove_if(&self.scope, |_, slot| matches!(slot, Slot::InFlight { .. }));
            let _ = self.finished.send(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemoryJournal;

    fn scope(key: &str) -> IdempotencyScope {
        IdempotencyScope {
            member: 1,
            endpoint: IdempotentEndpoint::Charge,
            key: key.into(),
        }
    }

    fn response(status: u16) -> StoredResponse {
        StoredResponse {
            status,
            body: b"{}".to_vec(),
        }
    }

    /// On the idempotency record's append, asks another thread for a
    /// snapshot copy of the records (what a snapshot tagged at this position
    /// would hold) and gives it up to 200 ms before letting the append
    /// return.
    #[derive(Default)]
    struct CopyOnRecordSink {
        journal: MemoryJournal,
        store: std::sync::OnceLock<Arc<IdempotencyStore>>,
        copier: parking_lot::Mutex<Option<std::thread::JoinHandle<Vec<IdempotencyRecord>>>>,
    }

    impl EventSink for CopyOnRecordSink {
        fn append(&self, event: Event) -> JournalPos {
            if let (Event::IdempotencyRecorded { .. }, Some(store)) = (&event, self.store.get()) {
                let store = Arc::clone(store);
                let (tx, rx) = std::sync::mpsc::channel();
                let copier = std::thread::spawn(move || {
                    let copy = store.export();
                    let _ = tx.send(());
                    copy
                });
                // The copy either finishes (it did not wait for the record)
                // or is still blocked when the append goes on.
                let _ = rx.recv_timeout(std::time::Duration::from_millis(200));
                *self.copier.lock() = Some(copier);
            }
            self.journal.append(event)
        }

        fn durable(&self, pos: JournalPos) -> crate::sink::DurableFuture {
            self.journal.durable(pos)
        }

        fn last_pos(&self) -> JournalPos {
            self.journal.last_pos()
        }
    }

    #[tokio::test]
    async fn a_copy_taken_once_the_record_is_journaled_holds_the_record() {
        // A snapshot reads the journal position, then copies the records;
        // replay starts after that position. So once the record's event is
        // appended, any copy must hold the record, or a restart from that
        // snapshot forgets it and a retry executes twice.
        let sink = Arc::new(CopyOnRecordSink::default());
        let store = IdempotencyStore::new(sink.clone());
        assert!(sink.store.set(Arc::clone(&store)).is_ok());
        let Claim::Execute(guard) = store.claim(scope("k"), [1; 32]).await else {
            panic!("the first claim executes");
        };
        guard.complete(response(201), 0);
        let copier = sink.copier.lock().take().expect("the record's append started a copy");
        let copy = copier.join().expect("the copying thread does not panic");
        assert!(
            copy.iter()
                .any(|record| record.scope == scope("k") && record.response.status == 201),
            "the copy holds the journaled record"
        );
    }

    #[tokio::test]
    async fn a_repeat_replays_the_first_response_and_another_body_conflicts() {
        let store = IdempotencyStore::new(Arc::new(MemoryJournal::new()));
        let Claim::Execute(guard) = store.claim(scope("k"), [1; 32]).await else {
            panic!("the first claim executes");
        };
        guard.complete(response(200), 0);
        assert!(
            matches!(store.claim(scope("k"), [1; 32]).await, Claim::Replay(r, _) if r.status == 200),
            "the same request replays the stored response"
        );
        assert!(
            matches!(store.claim(scope("k"), [2; 32]).await, Claim::Conflict),
            "another request with the same key conflicts"
        );
        assert!(
            matches!(store.claim(scope("other"), [2; 32]).await, Claim::Execute(_)),
            "another key executes"
        );
    }

    #[tokio::test]
    async fn a_concurrent_repeat_waits_for_the_first_and_gets_its_result() {
        let store = IdempotencyStore::new(Arc::new(MemoryJournal::new()));
        let Claim::Execute(guard) = store.claim(scope("k"), [1; 32]).await else {
            panic!("the first claim executes");
        };
        let waiter = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.claim(scope("k"), [1; 32]).await })
        };
        tokio::task::yield_now().await;
        guard.complete(response(201), 0);
        let outcome = waiter.await.expect("the waiter finishes");
        assert!(
            matches!(outcome, Claim::Replay(r, _) if r.status == 201),
            "the waiting repeat gets the first response, not a second execution"
        );
    }

    #[tokio::test]
    async fn an_abandoned_claim_frees_the_key() {
        let store = IdempotencyStore::new(Arc::new(MemoryJournal::new()));
        let Claim::Execute(guard) = store.claim(scope("k"), [1; 32]).await else {
            panic!("the first claim executes");
        };
        drop(guard);
        assert!(matches!(store.claim(scope("k"), [1; 32]).await, Claim::Execute(_)));
    }

    fn charged() -> Event {
        Event::BalanceCharged {
            member: 1,
            amount: 7,
            balance_after: 7,
            at_ms: 0,
        }
    }

    fn render_status() -> Render<u32> {
        Arc::new(|outcome| match outcome {
            Ok(value) => StoredResponse {
                status: 200,
                body: value.to_string().into_bytes(),
            },
            Err(_) => response(409),
        })
    }

    #[tokio::test]
    async fn a_committed_ticket_journals_its_record_in_the_effects_event() {
        let journal = Arc::new(MemoryJournal::new());
        let store = IdempotencyStore::new(journal.clone());
        let Claim::Execute(guard) = store.claim(scope("k"), [1; 32]).await else {
            panic!("the first claim executes");
        };
        let effect = charged();
        let pos = guard.into_ticket(render_status()).commit(&42, 5, effect.clone());
        let events = journal.events();
        assert_eq!(events.len(), 1, "one event: the effect and its record together");
        assert_eq!(events[0].effect(), &effect, "the effect is journaled");
        let record = events[0].idempotency_record().expect("the record rides along");
        assert_eq!(record.response.body, b"42", "the record holds the rendered response");
        assert_eq!(
            store.settled(&scope("k"), &[1; 32]),
            Some((record.response.clone(), pos)),
            "the key is settled at the event's position"
        );
        assert!(
            matches!(store.claim(scope("k"), [1; 32]).await, Claim::Replay(r, p) if r.body == b"42" && p == pos),
            "a repeat replays it"
        );
    }

    #[tokio::test]
    async fn a_refusal_is_stored_but_an_undecided_write_frees_its_key() {
        let journal = Arc::new(MemoryJournal::new());
        let store = IdempotencyStore::new(journal.clone());
        let Claim::Execute(guard) = store.claim(scope("refused"), [1; 32]).await else {
            panic!("the first claim executes");
        };
        guard
            .into_ticket(render_status())
            .reject(&EngineError::SeatUnavailable, 0);
        assert!(
            matches!(store.claim(scope("refused"), [1; 32]).await, Claim::Replay(r, _) if r.status == 409),
            "a refusal is the write's outcome: replayed"
        );
        let Claim::Execute(guard) = store.claim(scope("undecided"), [1; 32]).await else {
            panic!("the first claim executes");
        };
        guard.into_ticket(render_status()).reject(&EngineError::Unavailable, 0);
        assert!(
            matches!(store.claim(scope("undecided"), [1; 32]).await, Claim::Execute(_)),
            "a write the engine could not take frees its key for the retry"
        );
        assert_eq!(journal.len(), 1, "only the refusal was journaled");
    }

    #[tokio::test]
    async fn a_ticket_still_on_its_way_keeps_the_key_claimed() {
        // The caller gave up (503) while the ticket waits in an actor's
        // mailbox: a retry must wait for the real outcome, not execute.
        let store = IdempotencyStore::new(Arc::new(MemoryJournal::new()));
        let Claim::Execute(guard) = store.claim(scope("k"), [1; 32]).await else {
            panic!("the first claim executes");
        };
        let ticket = guard.into_ticket(render_status());
        let retry = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.claim(scope("k"), [1; 32]).await })
        };
        tokio::task::yield_now().await;
        assert!(!retry.is_finished(), "the retry waits while the write is undecided");
        assert_eq!(store.settled(&scope("k"), &[1; 32]), None, "nothing settled yet");
        ticket.commit(&7, 0, charged());
        let outcome = retry.await.expect("the retry finishes");
        assert!(
            matches!(outcome, Claim::Replay(r, _) if r.body == b"7"),
            "the retry replays the late outcome"
        );
    }

    #[test]
    fn records_older_than_the_retention_are_pruned() {
        let store = IdempotencyStore::new(Arc::new(MemoryJournal::new()));
        store.restore(IdempotencyRecord {
            scope: scope("old"),
            fingerprint: [0; 32],
            response: response(200),
            at_ms: 0,
        });
        let ttl = DEFAULT_IDEMPOTENCY_TTL_MS;
        assert_eq!(store.prune(ttl - 1, ttl), 0, "kept for the TTL");
        assert_eq!(store.prune(ttl, ttl), 1, "then pruned");
    }
}
