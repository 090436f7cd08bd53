//! The [`EventBus`]: publishes events and runs the handlers of every consumer group.

mod builder;
mod inbox;
mod route;
mod unit_of_work;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
use crate::relay::Relay;
use crate::retry::Backoff;
use crate::store::Storage;
use crate::transport::Transport;
use crate::{Envelope, Error, Event};
use route::Route;

/// Publishes events and runs the handlers registered on it.
///
/// Built with [`EventBus::builder`]; cheap to clone. Every consumer group receives every
/// event; within a group, the handler for the event's name runs once per event (at least
/// once: after a crash, an event whose handling was not committed is handled again).
///
/// The workers stop when [`shutdown`](EventBus::shutdown) is called or the last clone is
/// dropped.
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
    projections: HashMap<&'static str, ProjectionHandle>,
    closed: AtomicBool,
    /// Whether the storage's units of work have savepoints, so that transactional
    /// handlers share one (see [`Transaction::savepoint`]); cleared when one says no.
    ///
    /// [`Transaction::savepoint`]: crate::store::Transaction::savepoint
    savepoints: AtomicBool,
}

/// A consumer group: its handlers by event name.
pub(crate) struct Group {
    name: Arc<str>,
    routes: HashMap<&'static str, GroupRoute>,
    topics: Vec<&'static str>,
    workers: usize,
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
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Uuid, Error> {
        self.shared.publish_caused_by(event, None).await
    }

    /// Publishes an already-built envelope as it is.
    pub async fn publish_envelope(&self, envelope: Envelope) -> Result<Uuid, Error> {
        self.shared.publish_envelope(envelope).await
    }

    /// Builds the envelope `publish` would send, without sending it.
    pub fn envelope<E: Event>(&self, event: &E) -> Result<Envelope, Error> {
        self.shared.envelope(event, None)
    }

    /// Starts a unit of work on the bus's storage: the application's writes and the
    /// events it publishes commit together. Fails if the bus has no
    /// [`storage`](EventBusBuilder::storage).
    pub async fn begin(&self) -> Result<UnitOfWork, Error> {
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

    /// Runs a dead letter's event through its group's handler again, with the full retry
    /// budget. On success the dead letter is removed; if the handler fails again, it stays
    /// with the new error and the attempts added up.
    ///
    /// A dead letter of the outbox relay ([`Relay::DEAD_LETTER_GROUP`]) is published to
    /// every group instead, if its payload is now well-formed (repair it by
    /// [`put`](DeadLetterStore::put)ting the letter back with the same id).
    pub async fn replay_dead_letter(&self, id: Uuid) -> Result<(), Error> {
        let letters = self.shared.dead_letters.list(None).await?;
        let letter = letters
            .into_iter()
            .find(|l| l.id == id)
            .ok_or(Error::DeadLetterNotFound(id))?;
        if letter.group == Relay::DEAD_LETTER_GROUP {
            let envelope = &letter.envelope;
            codec::check_payload(&envelope.content_type, &envelope.payload).map_err(|error| {
                Error::Undeliverable {
                    id: envelope.id,
                    reason: format!(
                        "dead letter {id} still holds a payload that is not valid {}: {error}; repair \
                         it and put the letter back with the same id before replaying",
                        envelope.content_type
                    ),
                }
            })?;
            self.shared.publish_envelope(letter.envelope).await?;
            self.shared.dead_letters.take(id).await?;
            return Ok(());
        }
        let group = self.shared.groups.get(letter.group.as_str()).ok_or_else(|| {
            Error::Config(format!(
                "dead letter {id} belongs to group `{}`, which has no handler on this bus",
                letter.group
            ))
        })?;
        worker::replay(&self.shared, group, letter).await
    }

    /// The names of the consumer groups this bus runs.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.shared.groups.keys().map(|g| &**g)
    }

    /// Stops taking new events, lets the handlers that are running finish, commits what
    /// they finished, and returns. Events not yet handled stay in the transport for the next
    /// start (or another instance of the group).
    pub async fn shutdown(self) {
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

    fn envelope<E: Event>(&self, event: &E, cause: Option<&Envelope>) -> Result<Envelope, Error> {
        let payload = codec::encode(&*self.codec, event).map_err(|source| Error::Encode {
            name: E::NAME,
            source,
        })?;
        let mut envelope = Envelope::new(E::NAME, E::VERSION, E::TOPIC, self.codec.content_type(), payload);
        envelope.key = event.partition_key();
        Ok(match cause {
            Some(cause) => envelope.caused_by(cause),
            None => envelope,
        })
    }

    async fn publish_caused_by<E: Event>(&self, event: &E, cause: Option<&Envelope>) -> Result<Uuid, Error> {
        let envelope = self.envelope(event, cause)?;
        self.publish_envelope(envelope).await
    }

    async fn publish_envelope(&self, envelope: Envelope) -> Result<Uuid, Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let id = envelope.id;
        let Some(envelope) = crate::context::hold_as_follow_up(envelope) else {
            return Ok(id);
        };
        let span = tracing::debug_span!(
            "eventflow.publish",
            event.id = %id,
            event.name = %envelope.name,
            topic = %envelope.topic,
        );
        self.transport.publish(envelope).instrument(span).await?;
        Ok(id)
    }
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
