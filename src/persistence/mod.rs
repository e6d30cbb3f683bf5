//! Durability: the write-behind [`persister::Persister`] (group commit of
//! engine events into SQL), [`snapshot`]s, start-up [`recovery`], the
//! database's one-writer lock ([`ownership`]), and the one [`codec`] module
//! that knows the binary formats.

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
