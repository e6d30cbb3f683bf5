//! `ConcertRouter`: the one way to reach a concert's actor.
//!
//! Maps a concert id to its actor's address and spreads the actors over one
//! arbiter (thread) per core, round robin. Every caller goes through
//! [`ConcertRouter::request`] (holds and cancels, batched per concert) or
//! [`ConcertRouter::send`] (every other message): when concerts are sharded
//! over several nodes, this is the type that will forward to the owning node
//! instead.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use dashmap::DashMap;
use parking_lot::Mutex;
use rustc_hash::FxBuildHasher;

use crate::concert::{Concert, ConcertInfo};
use crate::concert_actor::{next_seat_map_version, ConcertActor, ConcertDeps, ConcertRequest};
use crate::error::EngineError;
use crate::request_batcher::{
    answer_of, Answer, BatchReply, LateResults, RequestBatcher, RequestBatcherSettings, Submitted,
};
use crate::types::ConcertId;

pub use crate::concert_api::SEND_TIMEOUT;

/// A concert's actor plus what readers may see without messaging it.
#[derive(Clone)]
pub struct ConcertHandle {
    pub addr: Addr<ConcertActor>,
    pub info: Arc<ConcertInfo>,
    /// AVAILABLE seats, published by the actor after each change.
    pub available: Arc<AtomicU32>,
    /// Packs this concert's holds and cancels into batch messages; its
    /// drain task runs on the actor's arbiter.
    pub batcher: RequestBatcher,
    /// Version of the seat map, published by the actor after each change
    /// (see [`ConcertHandle::seat_map_version`]).
    pub seat_map_version: Arc<AtomicU64>,
}

impl ConcertHandle {
    pub fn available(&self) -> u32 {
        self.available.load(Ordering::Relaxed)
    }

    /// A value that changes whenever any seat of this concert changes status
    /// (hold, payment, cancel, expiry), published after the change in the
    /// same actor turn. Values are unique across every concert actor of the
    /// process, so a value seen once never denotes another seat map, even of
    /// a concert actor started again under the same id. A reader that saw
    /// version `v` before asking the actor for its seats gets seats at least
    /// as new as `v`: readers may cache what they build from the seats under
    /// `v`.
    pub fn seat_map_version(&self) -> u64 {
        self.seat_map_version.load(Ordering::Acquire)
    }
}

pub struct ConcertRouter {
    /// Where new concert actors are started; empty = the caller's arbiter.
    arbiters: Vec<ArbiterHandle>,
    /// Owned so that shutdown can stop and join them.
    owned: Mutex<Vec<Arbiter>>,
    next_arbiter: AtomicUsize,
    concerts: DashMap<ConcertId, ConcertHandle, FxBuildHasher>,
}

impl ConcertRouter {
    /// Starts `threads` arbiters (one per core is the intent). Must be called
    /// inside a running actix `System`.
    pub fn with_threads(threads: usize) -> Self {
        let owned: Vec<Arbiter> = (0..threads.max(1)).map(|_| Arbiter::new()).collect();
        Self {
            arbiters: owned.iter().map(Arbiter::handle).collect(),
            owned: Mutex::new(owned),
            next_arbiter: AtomicUsize::new(0),
            concerts: DashMap::with_hasher(FxBuildHasher),
        }
    }

    /// Runs every concert actor on the caller's own arbiter (tests with
    /// paused time, single-threaded tools).
    pub fn on_current_thread() -> Self {
        Self {
            arbiters: Vec::new(),
            owned: Mutex::new(Vec::new()),
            next_arbiter: AtomicUsize::new(0),
            concerts: DashMap::with_hasher(FxBuildHasher),
        }
    }

    /// Starts the actor that will own `concert`.
    pub fn start(&self, concert: Concert, deps: Arc<ConcertDeps>) -> ConcertHandle {
        let info = Arc::new(concert.info().clone());
        let available = Arc::new(AtomicU32::new(concert.seats().available()));
        let seat_map_version = Arc::new(AtomicU64::new(next_seat_map_version()));
        let actor_available = Arc::clone(&available);
        let actor_version = Arc::clone(&seat_map_version);
        let directory = Arc::clone(&deps.directory);
        let late: LateResults = Arc::new(move |results| {
            for reservation in results.iter().flatten() {
                directory.record(&reservation.value);
            }
        });
        let (addr, batcher) = if self.arbiters.is_empty() {
            let addr = ConcertActor::new(concert, deps, actor_available, actor_version).start();
            let batcher = RequestBatcher::spawn(addr.clone().recipient(), RequestBatcherSettings::default(), late);
            (addr, batcher)
        } else {
            let idx = self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
            let arbiter = &self.arbiters[idx];
            let addr = ConcertActor::start_in_arbiter(arbiter, move |_| {
                ConcertActor::new(concert, deps, actor_available, actor_version)
            });
            let (batcher, drain) =
                RequestBatcher::new(addr.clone().recipient(), RequestBatcherSettings::default(), late);
            // A stopped arbiter refuses the task: the batcher's queue is then
            // closed and every request to this concert is `Unavailable`.
            if !arbiter.spawn(drain) {
                tracing::error!(
                    concert_id = info.id,
                    "arbiter stopped: concert requests will be refused"
                );
            }
            (addr, batcher)
        };
        let handle = ConcertHandle {
            addr,
            info,
            available,
            batcher,
            seat_map_version,
        };
        self.concerts.insert(handle.info.id, handle.clone());
        handle
    }

    pub fn get(&self, concert: ConcertId) -> Option<ConcertHandle> {
        self.concerts.get(&concert).map(|h| h.clone())
    }

    /// Every concert's handle (unordered).
    pub fn all(&self) -> Vec<ConcertHandle> {
        self.concerts.iter().map(|h| h.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.concerts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.concerts.is_empty()
    }

    /// Sends a hold or cancel through the concert's [`RequestBatcher`]: one
    /// map lookup, no handle clone and no timer per request (the batch
    /// carries the deadline). An unknown concert is `NotFound`; a stopped or
    /// overloaded actor is `Unavailable`.
    pub async fn request(&self, concert: ConcertId, request: ConcertRequest) -> BatchReply {
        answer_of(self.submit(concert, request).await?).await
    }

    /// Queues a hold or cancel in the concert's [`RequestBatcher`] (waiting
    /// for room if the queue is full) and hands back where its answer will
    /// arrive; [`ConcertRouter::request`] is this plus the wait. Once this
    /// returns the request is on its way to the actor: dropping the receiver
    /// does not call it back.
    pub async fn submit(&self, concert: ConcertId, request: ConcertRequest) -> Result<Answer, EngineError> {
        // The map guard is dropped before any await.
        let submitted = {
            let handle = self.concerts.get(&concert).ok_or(EngineError::NotFound("concert"))?;
            match handle.batcher.try_submit(request)? {
                Submitted::Queued(answer) => Ok(answer),
                Submitted::Full(pending, answer) => Err((handle.batcher.clone(), pending, answer)),
            }
        };
        match submitted {
            Ok(answer) => Ok(answer),
            Err((batcher, pending, answer)) => {
                batcher.submit_waiting(pending).await?;
                Ok(answer)
            }
        }
    }

    /// Sends `msg` to the concert's actor and waits for the reply. An
    /// unknown concert is `NotFound`; a stopped or overloaded actor is
    /// `Unavailable` (a 503), never a panic.
    pub async fn send<M>(&self, concert: ConcertId, msg: M) -> Result<M::Result, EngineError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        ConcertActor: Handler<M>,
        <ConcertActor as Actor>::Context: ToEnvelope<ConcertActor, M>,
    {
        // Only the address is needed: one Arc clone, not the whole handle.
        let addr = self
            .concerts
            .get(&concert)
            .map(|handle| handle.addr.clone())
            .ok_or(EngineError::NotFound("concert"))?;
        match tokio::time::timeout(SEND_TIMEOUT, addr.send(msg)).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(err)) => {
                tracing::error!(concert_id = concert, error = %err, "concert actor unreachable");
                Err(EngineError::Unavailable)
            }
            Err(_) => {
                tracing::warn!(concert_id = concert, "concert actor did not answer in time");
                Err(EngineError::Unavailable)
            }
        }
    }

    /// Stops every arbiter this router started and waits for their threads.
    pub fn shutdown(&self) {
        let owned: Vec<Arbiter> = std::mem::take(&mut *self.owned.lock());
        for arbiter in &owned {
            arbiter.stop();
        }
        for arbiter in owned {
            let _ = arbiter.join();
        }
    }
}
