//! Event-sourced aggregates: the [`Aggregate`] trait, an aggregate as [`Loaded`] from its
//! stream, and the [`Repository`] that loads and saves them.
//!
//! An aggregate's state is never stored: it is what its events add up to. Loading replays
//! the aggregate's stream through [`Aggregate::apply`]; a command checks the state and
//! [`record`](Loaded::record)s new events; saving appends them with the version it loaded
//! (optimistic concurrency) and puts them in the outbox in the same unit of work, so the
//! events that change the aggregate are the events the rest of the system hears about.
//!
//! ```
//! use eventflow::{Aggregate, Event, EventBus, MemoryStore};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(name = "account.event", topic = "accounts")]
//! enum AccountEvent {
//!     Opened { #[event(key)] id: String },
//!     Deposited { #[event(key)] id: String, cents: u64 },
//! }
//!
//! #[derive(Default)]
//! struct Account {
//!     open: bool,
//!     balance: u64,
//! }
//!
//! impl Aggregate for Account {
//!     type Event = AccountEvent;
//!     const KIND: &'static str = "account";
//!
//!     fn apply(&mut self, event: &AccountEvent) {
//!         match event {
//!             AccountEvent::Opened { .. } => self.open = true,
//!             AccountEvent::Deposited { cents, .. } => self.balance += cents,
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventflow::Error> {
//! let bus = EventBus::builder().storage(MemoryStore::new()).start().await?;
//! let accounts = bus.repository::<Account>()?;
//!
//! let mut account = accounts.load("acc-1").await?;
//! account.record(AccountEvent::Opened { id: "acc-1".into() });
//! account.record(AccountEvent::Deposited { id: "acc-1".into(), cents: 500 });
//! accounts.save(&mut account).await?;
//!
//! let account = accounts.load("acc-1").await?;
//! assert_eq!((account.open, account.balance, account.version()), (true, 500, 2));
//! # bus.shutdown().await;
//! # Ok(()) }
//! ```

mod events;
mod snapshot;
pub mod testing;

#[doc(hidden)]
pub use events::not_in_set;
pub use events::EventSet;
pub use snapshot::Snapshots;

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use crate::bus::UnitOfWork;
use crate::outgoing::Outgoing;
use crate::store::{ExpectedVersion, Storage};
use crate::Error;

/// A consistency boundary whose state is rebuilt from its events.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The events that change it: an enum deriving [`Event`](crate::Event) (one event
    /// name for all), or an enum deriving [`EventSet`] whose variants wrap existing events,
    /// each saved and published under its own name.
    type Event: EventSet;

    /// The prefix of its streams: aggregate `XYZ-123` of kind `order` is the stream
    /// `order-XYZ-123`.
    const KIND: &'static str;

    /// Changes the state by one event. It cannot fail: the event has happened. Checks
    /// belong to the command that records the event.
    fn apply(&mut self, event: &Self::Event);

    /// When to snapshot its state (serde), so that loading replays only the events after
    /// the newest snapshot: e.g. `Snapshots::every(100)`. Default: never.
    fn snapshots() -> Snapshots<Self> {
        Snapshots::never()
    }
}

/// An aggregate as loaded from its stream: its state, the version it was loaded at, and
/// the events recorded since, which [`Repository::save`] appends.
///
/// Dereferences to the state.
#[derive(Debug)]
pub struct Loaded<A: Aggregate> {
    id: String,
    stream: String,
    state: A,
    version: u64,
    pending: Vec<A::Event>,
}

impl<A: Aggregate> Loaded<A> {
    /// The aggregate's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its stream, `KIND-id`.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The stream version its state reflects, not counting events recorded and not yet
    /// saved; 0 for an aggregate with no events.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Its state, with the recorded events applied.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Applies an event to the state and keeps it for the next save.
    pub fn record(&mut self, event: A::Event) {
        self.state.apply(&event);
        self.pending.push(event);
    }

    /// The events recorded since the last load or save.
    pub fn pending(&self) -> &[A::Event] {
        &self.pending
    }

    fn expected(&self) -> ExpectedVersion {
        match self.version {
            0 => ExpectedVersion::NoStream,
            version => ExpectedVersion::Exact(version),
        }
    }
}

impl<A: Aggregate> Deref for Loaded<A> {
    type Target = A;

    fn deref(&self) -> &A {
        &self.state
    }
}

/// Loads and saves aggregates of type `A` on a bus's storage.
///
/// From [`EventBus::repository`](crate::EventBus::repository); cheap to clone.
pub struct Repository<A> {
    outgoing: Arc<Outgoing>,
    storage: Arc<dyn Storage>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            outgoing: self.outgoing.clone(),
            storage: self.storage.clone(),
            aggregate: PhantomData,
        }
    }
}

impl<A> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &std::any::type_name::<A>())
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> Repository<A> {
    pub(crate) fn new(outgoing: Arc<Outgoing>, storage: Arc<dyn Storage>) -> Self {
        Repository {
            outgoing,
            storage,
            aggregate: PhantomData,
        }
    }

    /// The stream of aggregate `id`.
    pub fn stream(id: &str) -> String {
        format!("{}-{id}", A::KIND)
    }

    /// Loads aggregate `id` by replaying its stream, from its newest snapshot if it has one
    /// ([`Aggregate::snapshots`]). An aggregate with no events is `A::default()` at
    /// version 0.
    ///
    /// Events of older versions are upcast as their types declare (see
    /// [`upcast`](crate::upcast)); an event that cannot be read (a newer version, an older
    /// one without upcaster, an event outside `A::Event`) fails the load with
    /// [`Error::Upcast`] rather than building a wrong state.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, Error> {
        let stream = Self::stream(id);
        let (mut state, snapshot_version) = snapshot::restore(&A::snapshots(), &*self.storage, &stream).await;
        let mut version = snapshot_version;
        for stored in self.storage.read_stream(&stream, snapshot_version + 1).await? {
            let event = A::Event::decode(self.outgoing.codec(), &stored.envelope)?;
            state.apply(&event);
            version = stored.version;
        }
        snapshot::after_load(
            &A::snapshots(),
            &self.storage,
            &stream,
            &state,
            version,
            version - snapshot_version,
        );
        Ok(Loaded {
            id: id.to_owned(),
            stream,
            state,
            version,
            pending: Vec::new(),
        })
    }

    /// Appends the recorded events with the version the aggregate was loaded at and
    /// publishes them, in a unit of work of its own. Returns the new version.
    ///
    /// If another writer saved the aggregate since it was loaded, nothing is written and the
    /// error is [`Error::Conflict`]: load it again and decide again.
    pub async fn save(&self, aggregate: &mut Loaded<A>) -> Result<u64, Error> {
        let mut work = UnitOfWork::new(self.storage.begin().await?, self.outgoing.clone());
        let (version, saved) = work.append_pending(aggregate).await?;
        work.commit().await?;
        snapshot::after_save(
            &A::snapshots(),
            &*self.storage,
            &aggregate.stream,
            &aggregate.state,
            aggregate.version,
            version,
        )
        .await;
        aggregate.version = version;
        aggregate.pending.drain(..saved);
        Ok(version)
    }
}

impl UnitOfWork {
    /// Appends an aggregate's recorded events with the version it was loaded at, and puts
    /// them in the outbox, as part of this unit of work: the application's other writes
    /// commit with them. Returns the new version.
    ///
    /// The aggregate counts as saved at once: if this unit of work is then dropped or fails
    /// to commit, load the aggregate again.
    pub async fn save<A: Aggregate>(&mut self, aggregate: &mut Loaded<A>) -> Result<u64, Error> {
        let (version, saved) = self.append_pending(aggregate).await?;
        aggregate.version = version;
        aggregate.pending.drain(..saved);
        Ok(version)
    }

    /// Appends the pending events; returns the new version and how many were appended.
    async fn append_pending<A: Aggregate>(&mut self, aggregate: &Loaded<A>) -> Result<(u64, usize), Error> {
        if aggregate.pending.is_empty() {
            return Ok((aggregate.version, 0));
        }
        let version = self
            .append(&aggregate.stream, aggregate.expected(), &aggregate.pending)
            .await?;
        Ok((version, aggregate.pending.len()))
    }
}
