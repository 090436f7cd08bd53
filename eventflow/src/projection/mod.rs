//! Projections: read models kept up to date from the event store.
//!
//! A [`Projection`] is declared as easily as a handler: a name and an `apply` that writes
//! one event's effect through the unit of work it is given. Registered with
//! [`EventBusBuilder::projection`](crate::EventBusBuilder::projection), it reads the store
//! from its checkpoint ([`EventStore::read_all`](crate::store::EventStore::read_all)), catches up, then
//! follows new commits as they happen, woken by the store's commit signal. Its writes and
//! its checkpoint commit in one unit of work
//! ([`Transaction::save_checkpoint`]), so each
//! event counts exactly once, across crashes and with several processes running the same
//! projection.
//!
//! [`EventBus::projection`](crate::EventBus::projection) gives its [`ProjectionHandle`]:
//! [`progress`](ProjectionHandle::progress) (events done, rate, what is left),
//! [`caught_up`](ProjectionHandle::caught_up) for tests, and
//! [`rebuild`](ProjectionHandle::rebuild) from the start or a position.
//!
//! ```
//! use eventflow::projection::{self, Projection};
//! use eventflow::store::{StoredEvent, Transaction};
//! use eventflow::{BoxError, Event, EventBus, MemoryStore};
//! use serde::{Deserialize, Serialize};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//!
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(name = "book.borrowed", topic = "library")]
//! struct BookBorrowed {
//!     #[event(key)]
//!     book: String,
//! }
//!
//! /// Loans so far. A durable read model writes its rows through `tx` instead (for
//! /// SQLite, `tx.downcast_mut::<SqliteTransaction>()`), so they commit with the checkpoint.
//! #[derive(Clone, Default)]
//! struct Loans(Arc<AtomicU64>);
//!
//! impl Projection for Loans {
//!     const NAME: &'static str = "loans";
//!
//!     async fn apply(&self, event: &StoredEvent, _tx: &mut dyn Transaction) -> Result<(), BoxError> {
//!         if let Some(_borrowed) = projection::decode::<BookBorrowed>(event)? {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventflow::Error> {
//! let loans = Loans::default();
//! let bus = EventBus::builder()
//!     .storage(MemoryStore::new())
//!     .projection(loans.clone())
//!     .start()
//!     .await?;
//!
//! let mut work = bus.begin().await?;
//! work.append("book-1", eventflow::store::ExpectedVersion::Any, &[BookBorrowed { book: "1".into() }])
//!     .await?;
//! work.commit().await?;
//!
//! let progress = bus.projection("loans")?.caught_up().await?;
//! assert_eq!((progress.position, loans.0.load(Ordering::Relaxed)), (1, 1));
//! # bus.shutdown().await;
//! # Ok(()) }
//! ```

mod handle;
pub(crate) mod runner;

use std::future::Future;

pub use handle::{Phase, Progress, ProjectionHandle};

use crate::store::{StoredEvent, Transaction};
use crate::{BoxError, Error, Event};

/// A read model kept up to date from the event store, one event at a time.
///
/// Its writes go through `tx`, the unit of work that also saves its checkpoint: a SQLite
/// read model through `tx.downcast_mut::<SqliteTransaction>()`, a MongoDB one through
/// `MongoTransaction::session`. State kept in memory instead is rebuilt by each process
/// from the position it starts at, so it counts each event once per process only if the
/// process starts from 0 (see [`ProjectionHandle::rebuild`]).
///
/// An `apply` that fails rolls its batch back and is retried with a growing wait; the
/// projection does not go past an event it cannot apply ([`Progress::error`] says why).
pub trait Projection: Send + Sync + 'static {
    /// Its stable name: its checkpoint is saved as `projection.NAME`.
    const NAME: &'static str;

    /// Most events applied per unit of work. Default 500.
    const BATCH: usize = 500;

    /// Applies one event, of any stream: decode the ones it cares about with [`decode`].
    fn apply(
        &self,
        event: &StoredEvent,
        tx: &mut dyn Transaction,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Undoes what the events after position `from` did, before a
    /// [`rebuild`](ProjectionHandle::rebuild) applies them again (from 0: empties the read
    /// model). Runs in the unit of work that moves the checkpoint back to `from`. The
    /// default does nothing.
    fn reset(
        &self,
        from: u64,
        tx: &mut dyn Transaction,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (from, tx);
        async { Ok(()) }
    }
}

/// The checkpoint a projection saves its position as.
pub fn checkpoint_name(projection: &str) -> String {
    format!("projection.{projection}")
}

/// Decodes a stored event as `E` if it is one (its name is `E::NAME`), else `None`.
///
/// The payload is decoded as JSON, the default codec's format, and events of older
/// versions are upcast as `E` declares ([`upcast`](crate::upcast)). A version `E` cannot
/// read (newer than it knows, or older with no upcaster) is an [`Error::Upcast`]; a
/// payload that does not match `E` is an error too, never a silent decode.
pub fn decode<E: Event>(event: &StoredEvent) -> Result<Option<E>, Error> {
    if &*event.envelope.name != E::NAME {
        return Ok(None);
    }
    crate::upcast::decode(&event.envelope).map(Some)
}
