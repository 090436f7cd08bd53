//! Outgoing publishing: building an event's envelope with the bus's codec and handing it to
//! the transport (or to the running handler's held follow-ups). The ground floor below the
//! bus, the [`Context`](crate::Context) of every handler and the units of work, so that none
//! of them imports the module that builds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::codec::{self, Codec};
use crate::follow_ups;
use crate::published::Published;
use crate::state::StateMap;
use crate::transport::Transport;
use crate::{Envelope, Error, Event};
use tracing::Instrument;

/// What publishing on behalf of a bus needs; one per bus, shared by the bus, its members
/// and every handler's [`Context`](crate::Context).
pub(crate) struct Outgoing {
    pub(crate) transport: Arc<dyn Transport>,
    codec: Arc<dyn Codec>,
    state: StateMap,
    /// Set when the workers stop: nothing is published any more.
    closed: AtomicBool,
}

impl Outgoing {
    pub(crate) fn new(transport: Arc<dyn Transport>, codec: Arc<dyn Codec>, state: StateMap) -> Self {
        Outgoing {
            transport,
            codec,
            state,
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn codec(&self) -> &dyn Codec {
        &*self.codec
    }

    /// The application state handlers take as [`State<T>`](crate::State).
    pub(crate) fn state(&self) -> &StateMap {
        &self.state
    }

    /// From now on every publish fails with [`Error::Closed`].
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// `event`'s envelope, a follow-up of `cause` if given.
    pub(crate) fn envelope<E: Event>(&self, event: &E, cause: Option<&Envelope>) -> Result<Envelope, Error> {
        let mut envelope = encode_envelope(&*self.codec, event)?;
        if let Some(cause) = cause {
            envelope.follow(cause);
        }
        Ok(envelope)
    }

    /// Builds the envelope and hands it to the transport when called, so that the future
    /// returned is a small [`Published`] rather than one that keeps room for envelopes.
    pub(crate) fn publish_caused_by<E: Event>(&self, event: &E, cause: Option<&Envelope>) -> Published<'_> {
        match self.envelope(event, cause) {
            Ok(envelope) => self.publish_envelope(envelope),
            Err(error) => Published::failed(error),
        }
    }

    /// Hands `envelope` to the transport when called, or holds it with the running
    /// handler's follow-ups when they wait for the handler to succeed. Called from the body
    /// of an async fn being polled, so that the follow-up task-local is in scope.
    pub(crate) fn publish_envelope(&self, envelope: Envelope) -> Published<'_> {
        if self.closed.load(Ordering::Acquire) {
            return Published::failed(Error::Closed);
        }
        let id = envelope.id;
        if let Some(follow_ups) = follow_ups::held_follow_ups() {
            follow_ups::hold(&follow_ups, envelope);
            return Published::held(id);
        }
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
