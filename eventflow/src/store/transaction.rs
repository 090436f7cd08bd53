//! The unit of work: appends, outbox entries, inbox markers, checkpoints and the
//! application's own writes, committed together.

use std::any::Any;

use async_trait::async_trait;
use uuid::Uuid;

use super::ExpectedVersion;
use crate::{Envelope, Error};

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
    /// The default fails with [`Error::Unsupported`]: the backend cannot run projections.
    async fn save_checkpoint(
        &mut self,
        name: &str,
        previous: Option<&str>,
        value: &str,
    ) -> Result<(), Error> {
        let _ = (previous, value);
        Err(Error::Unsupported(format!(
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

    /// Undoes everything written since the innermost open savepoint, and closes it. The
    /// default fails with [`Error::Unsupported`], as a backend without savepoints has none open.
    async fn rollback_to_savepoint(&mut self) -> Result<(), Error> {
        Err(Error::Unsupported(
            "this storage backend has no savepoints (its `Transaction::savepoint` returns false); \
             check `savepoint()` before rolling back to one, or give each handler a unit of work of its own"
                .into(),
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
