use std::sync::Arc;

use uuid::Uuid;

use crate::aggregate::EventSet;
use crate::outgoing::Outgoing;
use crate::store::{ExpectedVersion, Transaction};
use crate::{Error, Event};

/// A business change and the events announcing it, committed together.
///
/// From [`EventBus::begin`](crate::EventBus::begin). The application writes its own state
/// through its backend's transaction ([`transaction`](UnitOfWork::transaction)), appends to
/// event streams and publishes events; [`commit`](UnitOfWork::commit) makes all of it
/// durable at once and wakes the relay, which delivers the events to the transport.
/// Dropping the unit of work without committing leaves no trace.
///
/// ```
/// # use eventflow::{Event, EventBus, MemoryStore};
/// # #[derive(Event, serde::Serialize, serde::Deserialize)]
/// # struct OrderPaid { order_id: String }
/// # async fn run() -> Result<(), eventflow::Error> {
/// let bus = EventBus::builder().storage(MemoryStore::new()).start().await?;
/// let mut work = bus.begin().await?;
/// // ... the application's own writes, through work.transaction() ...
/// work.publish(&OrderPaid { order_id: "XYZ-123".into() }).await?;
/// work.commit().await?;
/// # Ok(()) }
/// ```
pub struct UnitOfWork {
    tx: Box<dyn Transaction>,
    outgoing: Arc<Outgoing>,
}

impl UnitOfWork {
    pub(crate) fn new(tx: Box<dyn Transaction>, outgoing: Arc<Outgoing>) -> Self {
        UnitOfWork { tx, outgoing }
    }

    /// Puts an event in the outbox; it is delivered after the commit. Returns its id.
    pub async fn publish<E: Event>(&mut self, event: &E) -> Result<Uuid, Error> {
        let envelope = self.outgoing.envelope(event, None)?;
        let id = envelope.id;
        self.tx.enqueue(&[envelope]).await?;
        Ok(id)
    }

    /// Appends events (of one [`Event`] type, or of an [`EventSet`]) to an event stream if
    /// it is at `expected`, and puts them in the outbox. Returns the stream's new version; a stale `expected` is
    /// [`Error::Conflict`].
    pub async fn append<E: EventSet>(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[E],
    ) -> Result<u64, Error> {
        let envelopes = events
            .iter()
            .map(|e| e.envelope(self.outgoing.codec()))
            .collect::<Result<Vec<_>, _>>()?;
        let version = self.tx.append(stream, expected, &envelopes).await?;
        self.tx.enqueue(&envelopes).await?;
        Ok(version)
    }

    /// The backend's transaction, for the application's own writes: downcast it to the
    /// backend's type, e.g. `work.transaction().downcast_mut::<SqliteTransaction>()`.
    pub fn transaction(&mut self) -> &mut dyn Transaction {
        &mut *self.tx
    }

    /// Commits everything at once.
    pub async fn commit(self) -> Result<(), Error> {
        self.tx.commit().await
    }
}

impl std::fmt::Debug for UnitOfWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOfWork").finish_non_exhaustive()
    }
}
