//! Storage: the event store, the transactional outbox, the idempotency inbox, dead letters
//! and checkpoints, behind one [`Storage`] trait with a [`Transaction`] for units of work.
//!
//! A backend implements both traits on its own types (as sqlx drivers implement
//! `Database`) and proves itself with the conformance suite in [`conformance`]:
//! [`MemoryStore`] here, `SqliteStore`, and `eventflow_mongo::MongoStore`.
//!
//! The design follows what every backend can do in one transaction: insert rows or
//! documents, fail an insert on a unique key (stream + version for the event store,
//! group + event id for the inbox), and update a lease.

pub mod conformance;
mod lease;
mod memory;
mod snapshots;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::any::Any;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

pub use lease::{new_relay_id, relay_is_gone, OutboxLease};
pub use memory::MemoryStore;
pub use snapshots::{SnapshotStore, StoredSnapshot};
#[cfg(feature = "sqlite")]
pub use sqlite::{rusqlite, SqliteStore, SqliteStoreBuilder, SqliteTransaction};

use crate::dead_letter::DeadLetterStore;
use crate::{Envelope, Error};

/// What an append expects the stream's current version to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this version (the first event is version 1).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `current` (0 = no stream) satisfies the expectation.
    pub fn matches(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(version) => current == version,
        }
    }

    /// [`Error::Conflict`] unless a stream `stream` at `current` satisfies the
    /// expectation: the check every backend's [`Transaction::append`] makes.
    pub fn check(self, stream: &str, current: u64) -> Result<(), Error> {
        if self.matches(current) {
            Ok(())
        } else {
            Err(Error::Conflict {
                stream: stream.to_owned(),
                expected: self,
                actual: current,
            })
        }
    }
}

/// An event as the event store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// The stream it belongs to, e.g. `order-XYZ-123`.
    pub stream: String,
    /// Its version in the stream, from 1.
    pub version: u64,
    /// Its position in the whole store, increasing in commit order, from 1.
    pub position: u64,
    /// The event.
    pub envelope: Envelope,
}

/// An event waiting in the outbox for the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its sequence number, increasing in commit order.
    pub sequence: u64,
    /// The event.
    pub envelope: Envelope,
    /// Why the backend could not read this entry whole (a column of the wrong type, an id
    /// that is not a UUID, ...), if it could not; `envelope` then holds what it could read.
    /// The relay dead-letters such an entry instead of delivering it, and goes on.
    pub corrupt: Option<String>,
}

impl OutboxEntry {
    /// An entry read whole.
    pub fn new(sequence: u64, envelope: Envelope) -> Self {
        OutboxEntry {
            sequence,
            envelope,
            corrupt: None,
        }
    }
}

/// A storage backend.
///
/// Everything a business change writes goes through a [`Transaction`] from
/// [`begin`](Storage::begin); the rest are reads and the relay's and consumers'
/// bookkeeping.
#[async_trait]
pub trait Storage: DeadLetterStore {
    /// Starts a unit of work. Dropping it without [`Transaction::commit`] leaves no trace.
    async fn begin(&self) -> Result<Box<dyn Transaction>, Error>;

    /// The events of `stream` with a version of at least `from_version`, in order.
    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<StoredEvent>, Error>;

    /// Up to `limit` events of every stream with a position after `after`, in order: what a
    /// projection reads, from its own checkpoint.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, Error>;

    /// Claims up to `limit` undelivered outbox entries with a sequence after `after` for
    /// relay `relay`, oldest first.
    ///
    /// One relay at a time holds the outbox, under a lease of `lease` that each claim
    /// renews (a claim with `limit` 0 only renews it); a relay that dies loses it when it
    /// expires and another takes over. Returns nothing while another relay holds an
    /// unexpired lease. `after` lets a relay go on past entries it sent and has not marked
    /// delivered yet.
    async fn claim_outbox(
        &self,
        relay: &str,
        lease: Duration,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, Error>;

    /// Marks outbox entries delivered, once the transport confirmed them.
    async fn mark_delivered(&self, relay: &str, sequences: &[u64]) -> Result<(), Error>;

    /// Gives the outbox lease up, so another relay can take over at once.
    async fn release_outbox(&self, relay: &str) -> Result<(), Error>;

    /// Who holds the outbox lease now, and until when; `None` if nobody does. The relay
    /// reads it when a claim came back empty, to tell "nothing to deliver" from "another
    /// relay delivers" (and log that once, naming the holder). The default says `None`.
    ///
    /// A backend's [`claim_outbox`](Storage::claim_outbox) should take an unexpired lease
    /// over when its holder is provably gone ([`relay_is_gone`]): a relay restarted after
    /// a crash then delivers at once instead of waiting for the dead relay's lease.
    async fn outbox_lease(&self) -> Result<Option<OutboxLease>, Error> {
        Ok(None)
    }

    /// A signal bumped each time a transaction that appended or enqueued events commits
    /// through this store (or, for backends that can watch the database, anywhere): the
    /// wake-up of the relay and of projections. Commits it cannot see are found by their
    /// fallback polling.
    fn commit_signal(&self) -> watch::Receiver<u64>;

    /// Whether `group` has processed event `event_id`.
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error>;

    /// Records that `group` processed `event_id`, outside any transaction. Returns false
    /// if it was recorded already.
    async fn mark_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error>;

    /// Which of `event_ids` `group` has processed: one round trip for a batch of polled
    /// events. The default asks [`is_processed`](Storage::is_processed) for each;
    /// backends override it with one query.
    async fn processed(&self, group: &str, event_ids: &[Uuid]) -> Result<HashSet<Uuid>, Error> {
        let mut processed = HashSet::new();
        for &id in event_ids {
            if self.is_processed(group, id).await? {
                processed.insert(id);
            }
        }
        Ok(processed)
    }

    /// Records that `group` processed all of `event_ids`, outside any transaction; ids
    /// recorded already are left as they are. The default calls
    /// [`mark_processed`](Storage::mark_processed) for each; backends override it with one
    /// write.
    async fn mark_all_processed(&self, group: &str, event_ids: &[Uuid]) -> Result<(), Error> {
        for &id in event_ids {
            self.mark_processed(group, id).await?;
        }
        Ok(())
    }

    /// Forgets the inbox markers recorded before `before`, of every group; returns how
    /// many. A redelivered copy of such an event is handled again, so the bus keeps
    /// markers for [`inbox_retention`](crate::EventBusBuilder::inbox_retention) (7 days by
    /// default), well past the time a copy can arrive (a relay or consumer that crashed
    /// and restarted). Backends delete in short transactions, so pruning never holds up
    /// handlers for long.
    ///
    /// The default fails with [`Error::Config`]: a backend that cannot prune keeps every
    /// marker, and the bus says so in its log once.
    async fn prune_inbox(&self, before: SystemTime) -> Result<u64, Error> {
        let _ = before;
        Err(Error::Config(
            "this storage backend cannot prune its inbox (`Storage::prune_inbox`); its markers are kept"
                .into(),
        ))
    }

    /// A saved checkpoint (a projection's position, a change stream's resume token).
    async fn checkpoint(&self, name: &str) -> Result<Option<String>, Error>;

    /// Saves a checkpoint.
    async fn save_checkpoint(&self, name: &str, value: &str) -> Result<(), Error>;

    /// The position of the newest event (0 for an empty store), for a projection's
    /// progress ("what is left"); `None` (the default) if the backend cannot tell.
    async fn head_position(&self) -> Result<Option<u64>, Error> {
        Ok(None)
    }

    /// Where this backend keeps aggregates' snapshots; `None` (the default) if it keeps
    /// none, and aggregates are then always loaded from their whole stream.
    fn snapshots(&self) -> Option<&dyn SnapshotStore> {
        None
    }
}

/// One unit of work: appends, outbox entries, inbox markers and the application's own
/// writes, committed together.
///
/// The application reaches its backend's own transaction (a SQLite connection inside
/// `BEGIN`, a MongoDB session) through the backend's type: a handler takes
/// [`Tx<SqliteTransaction>`](crate::Tx), elsewhere `downcast_mut::<T>()`, an inherent
/// method of `dyn Transaction`.
#[async_trait]
pub trait Transaction: Send + Any {
    /// Appends events to `stream` if its version matches `expected`; returns the new
    /// version. A mismatch is [`Error::Conflict`] and writes nothing.
    async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[Envelope],
    ) -> Result<u64, Error>;

    /// Puts events in the outbox; the relay delivers them after the commit.
    async fn enqueue(&mut self, events: &[Envelope]) -> Result<(), Error>;

    /// Records that `group` processed `event_id`. Returns false, and records nothing, if
    /// it was recorded already: the caller then abandons the transaction.
    async fn mark_processed(&mut self, group: &str, event_id: Uuid) -> Result<bool, Error>;

    /// Makes everything written in this unit of work durable at once.
    async fn commit(self: Box<Self>) -> Result<(), Error>;

    /// Saves checkpoint `name` as `value` with this unit of work, if it is still `previous`
    /// when the unit of work commits (`None`: it was never saved). Otherwise the unit of
    /// work fails with [`Error::CheckpointMoved`] and writes nothing: another runner moved
    /// the checkpoint since it was read. A projection saves its position this way, with its
    /// own writes, so each event counts exactly once across crashes and concurrent runners.
    ///
    /// The default fails with [`Error::Config`]: the backend cannot run projections.
    async fn save_checkpoint(
        &mut self,
        name: &str,
        previous: Option<&str>,
        value: &str,
    ) -> Result<(), Error> {
        let _ = (previous, value);
        Err(Error::Config(format!(
            "this storage backend cannot save checkpoint `{name}` inside a unit of work \
             (`Transaction::save_checkpoint`), so it cannot run projections; use MemoryStore, \
             SqliteStore or MongoStore, or implement it"
        )))
    }

    /// Opens a savepoint: a mark inside this unit of work that
    /// [`rollback_to_savepoint`](Transaction::rollback_to_savepoint) returns to, undoing
    /// only what was written after it. Savepoints nest. Returns `false`, and opens
    /// nothing, if the backend has no savepoints (the default).
    ///
    /// With savepoints the bus commits the units of work of consecutive transactional
    /// handlers together (group commit): each handler runs in a savepoint of one shared
    /// unit of work, a failed handler's writes and inbox marker are rolled back alone, and
    /// one commit makes a run of handlers durable. Without them each handler gets a unit of
    /// work of its own.
    async fn savepoint(&mut self) -> Result<bool, Error> {
        Ok(false)
    }

    /// Undoes everything written since the innermost open savepoint, and closes it.
    async fn rollback_to_savepoint(&mut self) -> Result<(), Error> {
        Err(Error::Config(
            "this storage backend has no savepoints (its `Transaction::savepoint` returns false)".into(),
        ))
    }

    /// Closes the innermost open savepoint, keeping what was written since.
    async fn release_savepoint(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// The name of the backend's transaction type, for the messages that say a handler's
    /// [`Tx<T>`](crate::Tx) does not match the storage.
    fn type_name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
}

impl dyn Transaction {
    /// The backend's own transaction type, for the application's writes.
    pub fn downcast_mut<T: Transaction>(&mut self) -> Option<&mut T> {
        (self as &mut dyn Any).downcast_mut::<T>()
    }
}
