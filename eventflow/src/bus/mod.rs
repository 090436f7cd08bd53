//! The [`EventBus`]: publishes events and runs the handlers of every consumer group.

mod builder;
mod dead_letters;
mod inbox;
mod route;
mod sequenced;
mod settle;
mod unit_of_work;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;

pub use builder::EventBusBuilder;
pub use unit_of_work::UnitOfWork;

use crate::aggregate::{Aggregate, Repository};
use crate::codec::{self, Codec};
use crate::context::StateMap;
use crate::dead_letter::{DeadLetter, DeadLetterStore};
use crate::projection::ProjectionHandle;
use crate::published::Published;
use crate::retry::Backoff;
use crate::store::Storage;
use crate::transport::Transport;
use crate::{Envelope, Error, Event, OutboxProgress};
use route::Route;

/// Publishes events and runs the handlers registered on it.
///
/// Built with [`EventBus::builder`]; cheap to clone. Every consumer group receives every
/// event; within a group, the handler for the event's name runs once per event (at least
/// once: after a crash, an event whose handling was not committed is handled again).
///
/// The workers stop when [`shutdown`](EventBus::shutdown) is called (after handling what
/// was published) or the last clone is dropped (at once).
#[derive(Clone)]
pub struct EventBus {
    shared: Arc<Shared>,
    running: Arc<Running>,
}

/// What the bus, its workers and every handler [`Context`](crate::Context) share.
pub(crate) struct Shared {
    transport: Arc<dyn Transport>,
    codec: Arc<dyn Codec>,
    state: StateMap,
    dead_letters: Arc<dyn DeadLetterStore>,
    storage: Option<Arc<dyn Storage>>,
    backoff: Backoff,
    groups: HashMap<Arc<str>, Arc<Group>>,
    /// The relay's progress and id, with storage.
    outbox: Option<OutboxProgress>,
    relay_id: Option<String>,
    shutdown_timeout: Duration,
    /// Set when a shutdown begins: the bus takes no new publishes or units of work, while
    /// handlers still publish their follow-ups.
    draining: AtomicBool,
    projections: HashMap<&'static str, ProjectionHandle>,
    /// Set when the workers stop: nothing is published any more.
    closed: AtomicBool,
    /// Whether the storage's units of work have savepoints, so that transactional
    /// handlers share one (see [`Transaction::savepoint`]); cleared when one says no.
    ///
    /// [`Transaction::savepoint`]: crate::store::Transaction::savepoint
    savepoints: AtomicBool,
}

/// A consumer group: its handlers by event name, each name's by version.
pub(crate) struct Group {
    name: Arc<str>,
    routes: HashMap<&'static str, Vec<GroupRoute>>,
    topics: Vec<&'static str>,
    workers: usize,
    /// Whether later events of a dead-lettered event's key are parked behind it.
    sequenced: bool,
}

impl Group {
    /// The handler for `envelope`: the one of its event's version; else the oldest newer
    /// one, which upcasts it; else the newest, which refuses it as too new.
    fn route(&self, envelope: &Envelope) -> Option<&GroupRoute> {
        let versions = self.routes.get(&*envelope.name)?;
        versions
            .iter()
            .find(|route| route.route.event_version() >= envelope.version)
            .or_else(|| versions.last())
    }

    /// Every handler of the group.
    fn all_routes(&self) -> impl Iterator<Item = &GroupRoute> {
        self.routes.values().flatten()
    }
}

struct GroupRoute {
    route: Arc<dyn Route>,
    retries: u32,
}

struct Running {
    shutdown: watch::Sender<bool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// A handle that publishes on behalf of a bus; what a [`Context`](crate::Context) holds.
#[derive(Clone)]
pub(crate) struct Publisher(Arc<Shared>);

impl EventBus {
    /// Starts configuring a bus.
    pub fn builder() -> EventBusBuilder {
        EventBusBuilder::new()
    }

    /// Publishes an event to its topic and returns its id.
    ///
    /// Returns once the transport accepted it; may wait while the transport applies
    /// backpressure. The event starts a new flow: its id is its correlation id. Inside a
    /// handler, publish with [`Context::publish`](crate::Context::publish) instead to keep
    /// the flow.
    ///
    /// Called from a handler whose follow-ups wait for it to succeed (one that takes
    /// [`Tx`](crate::Tx), or any handler of a group in a broker transaction), the event
    /// joins them as [`Context::publish`](crate::Context::publish) describes: it goes out
    /// with the handler's unit of work or transaction, never from a failed attempt. It
    /// returns at once then.
    ///
    /// Once [`shutdown`](Self::shutdown) began it fails with [`Error::Closed`]; handlers
    /// still publish their follow-ups with [`Context::publish`](crate::Context::publish).
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Uuid, Error> {
        self.shared.refuse_when_draining()?;
        self.shared.publish_caused_by(event, None).await
    }

    /// Publishes an already-built envelope as it is.
    pub async fn publish_envelope(&self, envelope: Envelope) -> Result<Uuid, Error> {
        self.shared.refuse_when_draining()?;
        self.shared.publish_envelope(envelope).await
    }

    /// Builds the envelope `publish` would send, without sending it.
    pub fn envelope<E: Event>(&self, event: &E) -> Result<Envelope, Error> {
        self.shared.envelope(event, None)
    }

    /// Decodes the event in `envelope` with the bus's codec, upcasting an older version:
    /// [`eventflow::decode`](crate::decode) for a bus with another codec than JSON.
    pub fn decode<E: Event>(&self, envelope: &Envelope) -> Result<E, Error> {
        crate::upcast::decode_with(&*self.shared.codec, envelope)
    }

    /// Starts a unit of work on the bus's storage: the application's writes and the
    /// events it publishes commit together. Fails if the bus has no
    /// [`storage`](EventBusBuilder::storage), or once [`shutdown`](Self::shutdown) began
    /// ([`Error::Closed`]).
    pub async fn begin(&self) -> Result<UnitOfWork, Error> {
        self.shared.refuse_when_draining()?;
        let storage = self.shared.storage.as_ref().ok_or_else(|| {
            Error::Config("this bus has no storage for units of work; add one with `EventBus::builder().storage(store)`".into())
        })?;
        Ok(UnitOfWork::new(storage.begin().await?, self.shared.clone()))
    }

    /// A repository of event-sourced aggregates of type `A` on the bus's storage. Fails if
    /// the bus has no [`storage`](EventBusBuilder::storage).
    pub fn repository<A: Aggregate>(&self) -> Result<Repository<A>, Error> {
        let storage = self.shared.storage.clone().ok_or_else(|| {
            Error::Config(format!(
                "this bus has no storage for the `{}` aggregates; add one with `EventBus::builder().storage(store)`",
                A::KIND
            ))
        })?;
        Ok(Repository::new(self.shared.clone(), storage))
    }

    /// The handle of the projection named `name`: its progress, a wait until it caught up,
    /// a rebuild. Fails if no projection of that name was registered.
    pub fn projection(&self, name: &str) -> Result<ProjectionHandle, Error> {
        self.shared.projections.get(name).cloned().ok_or_else(|| {
            Error::Config(format!(
                "this bus has no projection named `{name}`; register it with `EventBus::builder().projection(..)`"
            ))
        })
    }

    /// The dead letters of every group, or of one, oldest first.
    pub async fn dead_letters(&self, group: Option<&str>) -> Result<Vec<DeadLetter>, Error> {
        self.shared.dead_letters.list(group).await
    }

    /// The names of the consumer groups this bus runs.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.shared.groups.keys().map(|g| &**g)
    }

    /// Shuts the bus down gracefully, as `axum::serve(..).with_graceful_shutdown` does:
    ///
    /// 1. it stops taking new work: [`publish`](Self::publish) and [`begin`](Self::begin)
    ///    fail with [`Error::Closed`] (handlers still publish follow-ups);
    /// 2. it hands every event already published, and every outbox entry already
    ///    committed, to this bus's groups, and lets them handle it or dead-letter it after
    ///    its retries, follow-ups included ([`settled`](Self::settled), repeated until
    ///    nothing new comes);
    /// 3. it stops the workers and the relay, commits what they finished, gives the outbox
    ///    lease up and returns.
    ///
    /// Step 2 lasts at most the [`shutdown_timeout`](EventBusBuilder::shutdown_timeout)
    /// (30 s by default). What is left then stays where it is safe: committed entries in
    /// the outbox, events in the broker, for the next start (or another instance of the
    /// group); a warning says how much. Events published to the in-process transport
    /// without storage live in memory only and are lost then.
    pub async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::Release);
        let deadline = self.shared.shutdown_timeout;
        match tokio::time::timeout(deadline, self.shared.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "handing the published events to the groups before shutting down failed; what was not handled stays in the outbox or the broker");
            }
            Err(_) => {
                let pending = self.shared.unsettled().await;
                tracing::warn!(?deadline, %pending,
                    "the shutdown deadline passed before every published event was handled; \
                     committed outbox entries and broker events stay for the next start, events \
                     held only by the in-process transport are dropped (raise \
                     `EventBusBuilder::shutdown_timeout` to wait longer)");
            }
        }
        self.shared.closed.store(true, Ordering::Release);
        self.running.shutdown.send_replace(true);
        let workers = std::mem::take(&mut *self.running.workers.lock().unwrap());
        for worker in workers {
            if let Err(error) = worker.await {
                tracing::error!(%error, "an eventflow worker ended abnormally");
            }
        }
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("groups", &self.shared.groups.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Shared {
    pub(crate) fn codec(&self) -> &dyn Codec {
        &*self.codec
    }

    fn refuse_when_draining(&self) -> Result<(), Error> {
        match self.draining.load(Ordering::Acquire) {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }

    fn envelope<E: Event>(&self, event: &E, cause: Option<&Envelope>) -> Result<Envelope, Error> {
        let envelope = encode_envelope(&*self.codec, event)?;
        Ok(match cause {
            Some(cause) => envelope.caused_by(cause),
            None => envelope,
        })
    }

    /// Builds the envelope and hands it to the transport when called, so that the future
    /// returned is a small [`Published`] rather than one that keeps room for envelopes.
    fn publish_caused_by<E: Event>(&self, event: &E, cause: Option<&Envelope>) -> Published<'_> {
        match self.envelope(event, cause) {
            Ok(envelope) => self.publish_envelope(envelope),
            Err(error) => Published::failed(error),
        }
    }

    /// Hands `envelope` to the transport (or holds it as a follow-up) when called; see
    /// [`Shared::publish_caused_by`]. Called from the body of an async fn being polled, so
    /// that the follow-up task-local is in scope.
    fn publish_envelope(&self, envelope: Envelope) -> Published<'_> {
        if self.closed.load(Ordering::Acquire) {
            return Published::failed(Error::Closed);
        }
        let id = envelope.id;
        let Some(envelope) = crate::context::hold_as_follow_up(envelope) else {
            return Published::held(id);
        };
        let span = tracing::debug_span!(
            "eventflow.publish",
            event.id = %id,
            event.name = %envelope.name,
            topic = %envelope.topic,
        );
        Published::sent(id, self.transport.publish(envelope).instrument(span))
    }
}

/// `event` in a new envelope, encoded with `codec`.
pub(crate) fn encode_envelope<E: Event>(codec: &dyn Codec, event: &E) -> Result<Envelope, Error> {
    let payload = codec::encode(codec, event).map_err(|source| Error::Encode {
        name: E::NAME,
        source,
    })?;
    let mut envelope = Envelope::new(E::NAME, E::VERSION, E::TOPIC, codec.content_type(), payload);
    envelope.key = event.partition_key();
    Ok(envelope)
}

impl Publisher {
    pub(crate) async fn publish_caused_by<E: Event>(
        &self,
        event: &E,
        cause: Option<&Envelope>,
    ) -> Result<Uuid, Error> {
        self.0.publish_caused_by(event, cause).await
    }

    pub(crate) fn state(&self) -> &StateMap {
        &self.0.state
    }
}
