//! What a handler can ask for: [`Context`], [`State`], and the [`FromContext`] trait.

use std::any::type_name;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use uuid::Uuid;

use crate::follow_ups::{self, FollowUps};
use crate::outgoing::Outgoing;
use crate::state::StateMap;
use crate::tx::TransactionType;
use crate::{Envelope, Error, Event, Tx};

/// The metadata of the event being handled, and a way to publish its follow-ups.
///
/// Events published through [`Context::publish`] carry the handled event's correlation id,
/// name it as their causation and continue its trace.
#[derive(Clone)]
pub struct Context {
    envelope: Arc<Envelope>,
    scope: Arc<Scope>,
    attempt: u32,
    pub(crate) transaction: Option<Tx>,
    /// Set when the consumer publishes follow-ups in a broker transaction
    /// ([`Consumer::transactional_sink`](crate::transport::Consumer::transactional_sink)): what this attempt
    /// published, sent by the bus once the handler succeeded.
    pub(crate) follow_ups: Option<FollowUps>,
}

/// What the contexts of one group member share: the group's name and the bus's outgoing
/// side. One per member, so that members handling the same events on different threads do
/// not contend on one reference count for every event.
pub(crate) struct Scope {
    pub(crate) group: Arc<str>,
    pub(crate) outgoing: Arc<Outgoing>,
}

impl Context {
    pub(crate) fn new(envelope: Arc<Envelope>, scope: Arc<Scope>, attempt: u32) -> Self {
        Context {
            envelope,
            scope,
            attempt,
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
        &self.scope.group
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
            let envelope = self.scope.outgoing.envelope(event, Some(&self.envelope))?;
            let id = envelope.id;
            follow_ups::hold(follow_ups, envelope);
            return Ok(id);
        }
        self.scope
            .outgoing
            .publish_caused_by(event, Some(&self.envelope))
            .await
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("event_id", &self.envelope.id)
            .field("event_name", &self.envelope.name)
            .field("group", &self.scope.group)
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

/// A handler that takes [`Tx`] runs in a unit of work shared with its inbox marker.
impl<T: ?Sized + TransactionType> FromContext for Tx<T> {
    const TRANSACTIONAL: bool = true;

    fn from_context(ctx: &Context) -> Result<Self, String> {
        let tx = ctx.transaction.as_ref().ok_or_else(|| {
            "it takes `Tx` but the bus has no storage; add one with `EventBus::builder().storage(store)`"
                .to_owned()
        })?;
        tx.typed::<T>()
    }

    /// Checks that the bus's storage gives units of work of type `T`.
    fn check(state: &StateMap) -> Result<(), String> {
        match (T::wanted(), state.transaction_type()) {
            (Some(wanted), Some((held, name))) if wanted != held => Err(crate::tx::mismatch::<T>(name)),
            _ => Ok(()),
        }
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
        ctx.scope
            .outgoing
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
