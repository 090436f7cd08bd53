//! The [`EventBus`] handle: publishing, units of work, repositories, projections, dead
//! letters and a graceful shutdown.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::shared::Shared;
use super::unit_of_work::UnitOfWork;
use crate::aggregate::{Aggregate, Repository};
use crate::dead_letter::DeadLetter;
use crate::projection::ProjectionHandle;
use crate::{Envelope, Error, Event};

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
    pub(super) shared: Arc<Shared>,
    pub(super) running: Arc<Running>,
}

pub(super) struct Running {
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

impl EventBus {
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
        self.shared.outgoing.publish_caused_by(event, None).await
    }

    /// Publishes an already-built envelope as it is.
    pub async fn publish_envelope(&self, envelope: Envelope) -> Result<Uuid, Error> {
        self.shared.refuse_when_draining()?;
        self.shared.outgoing.publish_envelope(envelope).await
    }

    /// Builds the envelope `publish` would send, without sending it.
    pub fn envelope<E: Event>(&self, event: &E) -> Result<Envelope, Error> {
        self.shared.outgoing.envelope(event, None)
    }

    /// Decodes the event in `envelope` with the bus's codec, upcasting an older version:
    /// [`eventflow::decode`](crate::decode) for a bus with another codec than JSON.
    pub fn decode<E: Event>(&self, envelope: &Envelope) -> Result<E, Error> {
        crate::upcast::decode_with(self.shared.codec(), envelope)
    }

    /// Starts a unit of work on the bus's storage: the application's writes and the
    /// events it publishes commit together. Fails if the bus has no
    /// [`storage`](crate::EventBusBuilder::storage), or once [`shutdown`](Self::shutdown) began
    /// ([`Error::Closed`]).
    pub async fn begin(&self) -> Result<UnitOfWork, Error> {
        self.shared.refuse_when_draining()?;
        let storage = self.shared.storage.as_ref().ok_or_else(|| {
            Error::Config("this bus has no storage for units of work; add one with `EventBus::builder().storage(store)`".into())
        })?;
        Ok(UnitOfWork::new(
            storage.begin().await?,
            self.shared.outgoing.clone(),
        ))
    }

    /// A repository of event-sourced aggregates of type `A` on the bus's storage. Fails if
    /// the bus has no [`storage`](crate::EventBusBuilder::storage).
    pub fn repository<A: Aggregate>(&self) -> Result<Repository<A>, Error> {
        let storage = self.shared.storage.clone().ok_or_else(|| {
            Error::Config(format!(
                "this bus has no storage for the `{}` aggregates; add one with `EventBus::builder().storage(store)`",
                A::KIND
            ))
        })?;
        Ok(Repository::new(self.shared.outgoing.clone(), storage))
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
    /// Step 2 lasts at most the [`shutdown_timeout`](crate::EventBusBuilder::shutdown_timeout)
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
        self.shared.outgoing.close();
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
