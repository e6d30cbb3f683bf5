//! Durability: the write-behind [`persister::Persister`] (group commit of
//! engine events into SQL), [`snapshot`]s, start-up [`recovery`], the
//! database's one-writer lock ([`ownership`]), reads of what left memory
//! ([`archive`]), and the one [`codec`] module that knows the binary formats.

pub mod archive;
pub mod codec;
pub mod db;
pub mod ownership;
pub mod persister;
pub mod recovery;
pub mod snapshot;
pub mod writer;

pub use db::Db;
pub use persister::Persister;
