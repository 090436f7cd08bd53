//! [`Storage`]: the bundle of storage traits a bus takes, and the way into a unit of work.

use async_trait::async_trait;

use super::checkpoints::CheckpointStore;
use super::dead_letters::DeadLetterStore;
use super::event_store::EventStore;
use super::inbox::InboxStore;
use super::outbox::OutboxStore;
use super::snapshots::SnapshotStore;
use super::transaction::Transaction;
use crate::Error;

/// A storage backend: everything a bus needs, one trait per concern, and the way into a
/// unit of work.
///
/// To write a backend, implement each supertrait ([`EventStore`], [`OutboxStore`],
/// [`InboxStore`], [`CheckpointStore`], [`DeadLetterStore`]), a [`Transaction`], and then
/// this trait's [`begin`](Storage::begin); run the [`conformance`](super::conformance) module of each trait as
/// you go. Everything a business change writes goes through a [`Transaction`] from
/// [`begin`](Storage::begin); the rest are reads and the relay's and consumers'
/// bookkeeping.
///
/// Calling a supertrait's method on a concrete store needs that trait in scope, e.g.
/// `use eventflow::store::EventStore;` for `store.read_stream(..)`.
#[async_trait]
pub trait Storage:
    EventStore + OutboxStore + InboxStore + CheckpointStore + DeadLetterStore + Send + Sync + 'static
{
    /// Starts a unit of work. Dropping it without [`Transaction::commit`] leaves no trace.
    async fn begin(&self) -> Result<Box<dyn Transaction>, Error>;

    /// Where this backend keeps aggregates' snapshots; `None` (the default) if it keeps
    /// none, and aggregates are then always loaded from their whole stream.
    fn snapshots(&self) -> Option<&dyn SnapshotStore> {
        None
    }
}
