//! The crate's [`Error`] type.

use uuid::Uuid;

use crate::codec::CodecError;
use crate::publish_error::Rejection;

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

    /// A payload is of a version its type cannot read: newer than it, or older with no
    /// upcaster (see [`upcast`](crate::upcast)).
    #[error("cannot read event {id} (`{name}` v{version}): {source}")]
    Upcast {
        /// The event id.
        id: Uuid,
        /// The event name from the envelope.
        name: String,
        /// The version from the envelope.
        version: u32,
        /// Why it cannot be read, and what to do.
        source: crate::upcast::UpcastError,
    },

    /// An envelope carries a newer version of its event than the group's handlers know.
    #[error(
        "event {id} is `{name}` v{found}, but the handler in group `{group}` expects v{expected}: \
         deploy the consumers that know v{found} before the producers that publish it, then \
         replay this dead letter"
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

    /// The storage backend or transport cannot do what was asked: a backend that cannot
    /// prune its inbox, save a checkpoint inside a unit of work or keep savepoints, a
    /// transport that cannot tell when its groups have settled. The message says what to use
    /// instead. Code that can do without it (the bus keeping inbox markers it cannot prune)
    /// matches on this variant.
    #[error("not supported: {0}")]
    Unsupported(String),

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

    /// [`EventBus::settled_within`](crate::EventBus::settled_within) ran out of time.
    #[error(
        "not everything published or committed through the bus was handled within {waited:?}: \
         {pending}; wait longer, or look in the log for handlers that keep failing (they retry \
         with backoff before their events become dead letters)"
    )]
    NotSettled {
        /// How long it waited.
        waited: std::time::Duration,
        /// What was still waiting, in words.
        pending: String,
    },

    /// The transport refused some events for good (too large, an invalid topic, a record
    /// the broker rejects): publishing the same bytes again would fail the same way. From
    /// [`Transport::publish_batch`](crate::transport::Transport::publish_batch), it also
    /// says that every event of the batch *not* listed was delivered. The outbox relay
    /// dead-letters the refused ones and goes on; any other publish error is taken as
    /// transient and retried.
    #[error("{}", crate::publish_error::describe(rejections))]
    Rejected {
        /// The refused events, in batch order.
        rejections: Vec<Rejection>,
    },

    /// A backend failed in a way that running the same work again is expected to fix: a
    /// write conflict with a concurrent unit of work (MongoDB's `TransientTransactionError`),
    /// a database still busy after its timeout. Nothing of the failed work was written. The
    /// bus runs a handler that failed with it again at once, with a short random pause,
    /// without spending its [`retries`](crate::EventBusBuilder::retries) (up to
    /// [`Error::TRANSIENT_RETRIES`] times in a row; then the attempts count as usual).
    #[error(transparent)]
    Transient(BoxError),

    /// A transport or storage backend failed.
    #[error(transparent)]
    Backend(BoxError),
}

impl Error {
    /// Wraps a backend's own error.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        Error::Backend(error.into())
    }

    /// A transport's refusal, for good, of the one event `event` it was asked to publish
    /// (index 0): what [`Transport::publish`](crate::transport::Transport::publish)
    /// returns for a permanent failure. `reason` says what the broker said and what to do.
    pub fn rejected(event: Uuid, reason: impl Into<String>) -> Self {
        Error::Rejected {
            rejections: vec![Rejection::new(0, event, reason)],
        }
    }

    /// How many times in a row the bus runs a handler again after an
    /// [`Error::Transient`] failure before those attempts count against its retries.
    pub const TRANSIENT_RETRIES: u32 = 64;

    /// Whether running the same work again is expected to succeed: an [`Error::Transient`],
    /// also when it is the source of a handler's own error type (any `?` that keeps it as
    /// the source, e.g. `anyhow`), and a MongoDB or SQLite error of that kind however it
    /// was boxed.
    pub fn is_transient(&self) -> bool {
        is_transient(self)
    }

    /// Whether publishing the same event again would fail the same way
    /// ([`Error::Rejected`]), rather than maybe succeed later.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Rejected { .. })
    }
}

/// Whether `error`, or an error in its chain of sources, is one that running the same work
/// again is expected to fix (see [`Error::Transient`]).
pub(crate) fn is_transient(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(error) = error.downcast_ref::<Error>() {
            match error {
                Error::Transient(_) => return true,
                // Transparent: its `source()` skips the boxed error itself, so look at that.
                Error::Backend(inner) => {
                    next = Some(&**inner);
                    continue;
                }
                _ => {}
            }
        }
        #[cfg(feature = "mongodb")]
        if error
            .downcast_ref::<mongodb::error::Error>()
            .is_some_and(|error| error.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR))
        {
            return true;
        }
        #[cfg(feature = "sqlite")]
        if error.downcast_ref::<rusqlite::Error>().is_some_and(sqlite_busy) {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(feature = "sqlite")]
fn sqlite_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// `?` on a rusqlite error in a handler (or anywhere) returning `eventflow::Error`: it
/// becomes [`Error::Backend`], its message kept; [`Error::Transient`] when the database
/// was busy (locked by another connection past the busy timeout).
#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        match sqlite_busy(&error) {
            true => Error::Transient(Box::new(error)),
            false => Error::Backend(Box::new(error)),
        }
    }
}

/// `?` on a MongoDB driver error in a handler returning `eventflow::Error`: it becomes
/// [`Error::Backend`], or [`Error::Transient`] when the server labelled it
/// `TransientTransactionError` (a write conflict with a concurrent transaction, a primary
/// stepping down), so the bus runs the handler's unit of work again as the MongoDB
/// transaction spec asks. The `mongodb` feature is turned on by `eventflow-mongo`, so a
/// program using it has this conversion.
#[cfg(feature = "mongodb")]
impl From<mongodb::error::Error> for Error {
    fn from(error: mongodb::error::Error) -> Self {
        match error.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR) {
            true => Error::Transient(Box::new(error)),
            false => Error::Backend(Box::new(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_error_is_found_inside_backend_errors_and_sources() {
        let transient = || Error::Transient("write conflict".into());
        assert!(transient().is_transient());
        assert!(Error::backend(transient()).is_transient());
        let boxed: BoxError = Box::new(Error::backend(Error::backend(transient())));
        assert!(
            is_transient(&*boxed),
            "the bus's check on a handler's boxed error"
        );
        assert!(!Error::backend("disk full").is_transient());
        assert!(!Error::Closed.is_transient());
    }
}
