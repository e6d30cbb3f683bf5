//! The reservation engine: everything that decides who gets which seat and
//! what it costs, with no HTTP and no SQL.
//!
//! Layout:
//!
//! - functional core (plain structs, no threads, no I/O):
//!   [`seat_map::SeatMap`] (seats and live holds of one concert),
//!   [`concert::Concert`] (a concert's catalog entry, seats and reservations),
//!   [`queue::WaitingQueue`] (tokens, FIFO admission), [`accounts::Accounts`]
//!   (wallets and ledger), [`idempotency::IdempotencyStore`];
//! - actor shells (actix): [`concert_actor::ConcertActor`] owns one
//!   `Concert` and serializes hold/pay/cancel/expire;
//!   [`queue_actor::QueueActor`] ticks the queue;
//! - [`router::ConcertRouter`]: the only way to reach a concert actor;
//!   holds and cancels go through each concert's
//!   [`request_batcher::RequestBatcher`], which packs concurrent requests
//!   into one actor message;
//! - [`engine::Engine`]: the facade the server calls;
//! - [`events`]: every change as one [`events::Event`], appended to an
//!   [`events::EventSink`] (the persister, or memory in tests);
//! - [`apply`]: decide, then apply — the one `apply(&Event)` per aggregate
//!   that the live path and replay share, and what happens when it fails.

pub mod accounts;
pub mod apply;
pub mod clock;
pub mod concert;
pub mod concert_actor;
pub mod concert_api;
pub mod directory;
pub mod engine;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod pricing;
pub mod queue;
pub mod queue_actor;
pub mod records;
pub mod request_batcher;
pub mod router;
pub mod seat_map;
pub mod sink;
pub mod state;
pub mod types;

pub use engine::{Engine, EngineSettings, NewConcert};
pub use error::EngineError;
pub use events::Event;
pub use state::EngineState;
