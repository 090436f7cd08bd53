//! What a handler can ask for: [`Context`], [`State`], and the [`FromContext`] trait.

use std::any::{type_name, Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use uuid::Uuid;

use crate::bus::Publisher;
use crate::{Envelope, Error, Event, Tx};

/// The metadata of the event being handled, and a way to publish its follow-ups.
///
/// Events published through [`Context::publish`] carry the handled event's correlation id,
/// name it as their causation and continue its trace.
#[derive(Clone)]
pub struct Context {
    envelope: Arc<Envelope>,
    group: Arc<str>,
    attempt: u32,
    publisher: Publisher,
    pub(crate) transaction: Option<Tx>,
    /// Set when the consumer publishes follow-ups in a broker transaction
    /// ([`Consumer::publisher`](crate::transport::Consumer::publisher)): what this attempt
    /// published, sent by the bus once the handler succeeded.
    pub(crate) follow_ups: Option<FollowUps>,
}

/// The follow-ups an attempt published, held back until it succeeds.
pub(crate) type FollowUps = Arc<Mutex<Vec<Envelope>>>;

tokio::task_local! {
    /// The follow-ups of the handler being polled, when they wait for it to succeed, so
    /// that `EventBus::publish` from inside it holds its event back as `Context::publish`
    /// does.
    pub(crate) static HELD_FOLLOW_UPS: FollowUps;
}

/// Holds `envelope` back with the running handler's follow-ups, if they wait for it to
/// succeed; otherwise gives it back to be published now.
pub(crate) fn hold_as_follow_up(envelope: Envelope) -> Option<Envelope> {
    match HELD_FOLLOW_UPS.try_with(Clone::clone) {
        Ok(follow_ups) => {
            follow_ups
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(envelope);
            None
        }
        Err(_) => Some(envelope),
    }
}

impl Context {
    pub(crate) fn new(envelope: Arc<Envelope>, group: Arc<str>, attempt: u32, publisher: Publisher) -> Self {
        Context {
            envelope,
            group,
            attempt,
            publisher,
            transaction: None,
            follow_ups: None,
        }
    }

    /// The envelope of the event being handled.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The id of the event being handled.
    pub fn event_id(&self) -> Uuid {
        self.envelope.id
    }

    /// The name of the event being handled.
    pub fn event_name(&self) -> &str {
        &self.envelope.name
    }

    /// The partition key of the event being handled.
    pub fn key(&self) -> Option<&str> {
        self.envelope.key.as_deref()
    }

    /// When the event was created.
    pub fn timestamp(&self) -> SystemTime {
        self.envelope.timestamp
    }

    /// The correlation id of the flow the event belongs to.
    pub fn correlation_id(&self) -> Uuid {
        self.envelope.correlation_id
    }

    /// The id of the event that caused this one, if any.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.envelope.causation_id
    }

    /// The consumer group handling the event.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Which attempt this is: 1 for the first delivery, 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Publishes a follow-up event caused by the one being handled.
    ///
    /// In a handler that takes [`Tx`], the event goes into the outbox of the handler's unit
    /// of work when the handler returns `Ok`: the relay publishes it once that unit of work
    /// commits, together with the handler's writes and inbox marker. An attempt that fails
    /// publishes nothing, and a crash after the commit loses nothing.
    ///
    /// In a group whose consumer publishes in a broker transaction (such as a Kafka
    /// transactional group), the event is sent when the handler returns `Ok`, inside the
    /// transaction that commits the handled event; an attempt that fails publishes nothing.
    ///
    /// Elsewhere it is published to the transport right away, so an attempt that fails
    /// after publishing has published, and its retry publishes again.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Uuid, Error> {
        if let Some(follow_ups) = &self.follow_ups {
            let envelope = self.publisher.envelope_caused_by(event, &self.envelope)?;
            let id = envelope.id;
            follow_ups
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(envelope);
            return Ok(id);
        }
        self.publisher
            .publish_caused_by(event, Some(&self.envelope))
            .await
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("event_id", &self.envelope.id)
            .field("event_name", &self.envelope.name)
            .field("group", &self.group)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// A handler argument the bus can provide.
///
/// Implemented by [`Context`], [`State<T>`] and [`Tx`]; implement it for your own
/// extractors.
/// `#[subscribe]` checks every argument after the event against this trait, so a wrong
/// argument type is a compile error on that argument.
pub trait FromContext: Sized + Send + 'static {
    /// Whether a handler taking this runs in a unit of work shared with its inbox marker,
    /// as [`Tx`] does.
    const TRANSACTIONAL: bool = false;

    /// Extracts the value for one handler invocation.
    fn from_context(ctx: &Context) -> Result<Self, String>;

    /// Checks, when the bus starts, that the value will be available, so a missing
    /// [`State`] fails `start()` instead of every invocation. Returns what to do if not.
    fn check(state: &StateMap) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
}

impl FromContext for Context {
    fn from_context(ctx: &Context) -> Result<Self, String> {
        Ok(ctx.clone())
    }
}

/// Shared application state, given to the bus with
/// [`EventBusBuilder::state`](crate::EventBusBuilder::state) and taken by handlers as an
/// argument, as in axum.
///
/// ```
/// # use eventflow::State;
/// #[derive(Clone)]
/// struct Mailer { from: &'static str }
///
/// async fn send(State(mailer): State<Mailer>) {
///     println!("sending from {}", mailer.from);
/// }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct State<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromContext for State<T> {
    fn from_context(ctx: &Context) -> Result<Self, String> {
        ctx.publisher
            .state()
            .get::<T>()
            .map(State)
            .ok_or_else(missing_state::<T>)
    }

    fn check(state: &StateMap) -> Result<(), String> {
        state.get::<T>().map(drop).ok_or_else(missing_state::<T>)
    }
}

fn missing_state<T>() -> String {
    let name = type_name::<T>();
    format!("it takes `State<{name}>` but the bus has no `{name}`; add it with `EventBus::builder().state(value)`")
}

/// The application state values a bus holds, one per type, and what `start()` checks
/// handlers against.
#[derive(Clone, Default)]
pub struct StateMap(
    HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    /// The type (and name) of the storage's units of work, when a handler takes `Tx`.
    Option<(TypeId, &'static str)>,
);

impl StateMap {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub(crate) fn set_transaction_type(&mut self, held: (TypeId, &'static str)) {
        self.1 = Some(held);
    }

    /// The type of the bus storage's units of work and its name, if the bus knows it (it
    /// learns it at start when a handler takes [`Tx`]).
    pub fn transaction_type(&self) -> Option<(TypeId, &'static str)> {
        self.1
    }

    /// A clone of the value of type `T`, if the bus has one.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref::<T>().cloned()
    }
}

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMap").field("len", &self.0.len()).finish()
    }
}
