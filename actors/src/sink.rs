//! Where events go: the [`EventSink`] the engine appends every
//! [`Event`] to (the persister in the server), and two sinks for tests and
//! benchmarks. Appending never does I/O; a caller that must not answer
//! before its change is durable waits with [`EventSink::durable`].

use std::future::Future;
use std::pin::Pin;

use parking_lot::Mutex;

use crate::events::Event;
use crate::types::JournalPos;

/// The sink could not take more events (persistence is behind or down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine cannot make writes durable right now")]
pub struct Unavailable;

/// A future that resolves once a journal position is durable.
pub type DurableFuture = Pin<Box<dyn Future<Output = Result<(), Unavailable>> + Send>>;

/// Where engine events go. Implementations must keep the order of appends.
pub trait EventSink: Send + Sync + 'static {
    /// Appends one event and returns its journal position. Must not block on
    /// I/O: actors call it inside their turn.
    fn append(&self, event: Event) -> JournalPos;

    /// Whether the sink takes new writes now. Callers check before changing
    /// state, so a full backlog refuses writes instead of growing forever.
    fn accepting(&self) -> bool {
        true
    }

    /// Resolves once every event up to `pos` is durable.
    fn durable(&self, pos: JournalPos) -> DurableFuture;

    /// The position of the last event appended so far.
    fn last_pos(&self) -> JournalPos;
}

/// An in-memory sink: events are "durable" as soon as they are appended.
/// Used by tests (which inspect it) and by benchmarks of the pure engine.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    events: Mutex<Vec<Event>>,
}

impl MemoryJournal {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every event so far, in journal order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.events.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl EventSink for MemoryJournal {
    fn append(&self, event: Event) -> JournalPos {
        let mut events = self.events.lock();
        events.push(event);
        events.len() as JournalPos
    }

    fn durable(&self, _pos: JournalPos) -> DurableFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    fn last_pos(&self) -> JournalPos {
        self.events.lock().len() as JournalPos
    }
}

/// A sink that drops events: for benchmarks of the bare engine.
#[derive(Debug, Default)]
pub struct NullSink {
    pos: std::sync::atomic::AtomicU64,
}

impl EventSink for NullSink {
    fn append(&self, _event: Event) -> JournalPos {
        self.pos.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    fn durable(&self, _pos: JournalPos) -> DurableFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    fn last_pos(&self) -> JournalPos {
        self.pos.load(std::sync::atomic::Ordering::Relaxed)
    }
}
