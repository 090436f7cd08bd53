//! The crate's [`Error`] type.

use uuid::Uuid;

use crate::codec::CodecError;

/// The error a handler returns, boxed: any `std::error::Error + Send + Sync`, `anyhow::Error`
/// or `String` converts into it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in eventflow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An event could not be encoded into a payload.
    #[error("could not encode event `{name}`: {source}")]
    Encode {
        /// The event name.
        name: &'static str,
        /// What the codec said.
        source: CodecError,
    },

    /// A payload did not decode into the type registered for its name and version.
    #[error(
        "could not decode event {id} (`{name}` v{version}): {source}; the payload does not match \
         the type its handler expects: publisher and consumer must agree on the schema, or the \
         publisher must bump the version"
    )]
    Decode {
        /// The event id.
        id: Uuid,
        /// The event name from the envelope.
        name: String,
        /// The version from the envelope.
        version: u32,
        /// What the codec said.
        source: CodecError,
    },

    /// An outbox entry cannot be delivered as it is: a payload that is not well-formed for
    /// its content type, or a row the store cannot read.
    #[error("event {id} cannot be delivered: {reason}")]
    Undeliverable {
        /// The event id (nil if the store could not read it).
        id: Uuid,
        /// What is wrong with it and what to do.
        reason: String,
    },

    /// An envelope carries a version of its event that no handler of the group knows.
    #[error(
        "event {id} is `{name}` v{found}, but the handler in group `{group}` expects v{expected}; \
         deploy a handler for v{found} or upcast the event before it reaches this group"
    )]
    UnknownVersion {
        /// The event id.
        id: Uuid,
        /// The event name.
        name: String,
        /// The version found in the envelope.
        found: u32,
        /// The version the handler was compiled for.
        expected: u32,
        /// The consumer group.
        group: String,
    },

    /// An append found the stream at another version than expected: someone else wrote
    /// to it since it was read. Reload and decide again.
    #[error(
        "stream `{stream}` is at version {actual}, not {expected:?} as expected: another writer \
         appended to it since it was read; reload the aggregate and retry the command"
    )]
    Conflict {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: crate::store::ExpectedVersion,
        /// The version found.
        actual: u64,
    },

    /// A checkpoint saved in a unit of work
    /// ([`Transaction::save_checkpoint`](crate::store::Transaction::save_checkpoint)) was
    /// moved by someone else since it was read; the unit of work wrote nothing.
    #[error(
        "checkpoint `{name}` is {actual:?}, not {expected:?} as expected: another runner of the \
         same projection committed since it was read; read the checkpoint again and go on from there"
    )]
    CheckpointMoved {
        /// The checkpoint.
        name: String,
        /// The value the unit of work expected (`None`: not saved yet).
        expected: Option<String>,
        /// The value found.
        actual: Option<String>,
    },

    /// The inbox already holds a marker for this event and group: it was processed.
    #[error("event {event_id} was already processed by group `{group}`")]
    AlreadyProcessed {
        /// The consumer group.
        group: String,
        /// The event id.
        event_id: Uuid,
    },

    /// The bus was configured in a way that cannot work.
    #[error("invalid event bus configuration: {0}")]
    Config(String),

    /// A handler asked for something the bus cannot give it.
    #[error("handler `{handler}` cannot run: {reason}")]
    Extract {
        /// The handler's name.
        handler: &'static str,
        /// What is missing and how to provide it.
        reason: String,
    },

    /// No dead letter has this id.
    #[error("no dead letter with id {0}; list them with `EventBus::dead_letters`")]
    DeadLetterNotFound(Uuid),

    /// The bus has shut down.
    #[error("the event bus has shut down; create a new one to publish or handle events")]
    Closed,

    /// A transport or storage backend failed.
    #[error(transparent)]
    Backend(BoxError),
}

impl Error {
    /// Wraps a backend's own error.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        Error::Backend(error.into())
    }
}
