//! Durability: the write-behind [`persister::Persister`] (group commit of
//! engine events into SQL), [`snapshot`]s, start-up [`recovery`], the
//! database's one-writer lock ([`ownership`]), reads of what left memory
//! ([`archive`]), and the one [`codec`] module that knows the binary formats.
//!
//! The write path's layers: [`writer`] (what the persister, snapshots and
//! recovery call) -> `fold` (pure: events -> journal rows and table rows)
//! -> one file per database with all of its SQL: `sqlite` and `postgres`,
//! each with the same set (journal commit, projection, snapshot write and
//! pruning, journal and recovery reads, settings). The callers pick the
//! file by matching on [`Db`]; [`db`] connects (pools, files, migrations,
//! WAL checkpoints) and holds the handles ([`Db`], `db::ReadTx`).

pub mod archive;
pub mod codec;
pub mod db;
mod fold;
pub mod ownership;
pub mod persister;
mod postgres;
pub mod recovery;
pub mod snapshot;
mod sqlite;
pub mod writer;

pub use db::Db;
pub use persister::Persister;
