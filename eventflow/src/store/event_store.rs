//! The event store: streams of events an application appends to through a
//! [`Transaction`](super::Transaction) and reads back here.

mod expected_version;

use async_trait::async_trait;

use crate::{Envelope, Error};
pub use expected_version::ExpectedVersion;

// The check makes an `Error`, which holds an `ExpectedVersion`: it lives here, above both, so
// the type's own module imports nothing of the crate.
impl ExpectedVersion {
    /// [`Error::Conflict`] unless a stream `stream` at `current` satisfies the
    /// expectation: the check every backend's [`Transaction::append`](super::Transaction::append)
    /// makes.
    pub fn check(self, stream: &str, current: u64) -> Result<(), Error> {
        if self.matches(current) {
            Ok(())
        } else {
            Err(Error::Conflict {
                stream: stream.to_owned(),
                expected: self,
                actual: current,
            })
        }
    }
}

/// An event as the event store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// The stream it belongs to, e.g. `order-XYZ-123`.
    pub stream: String,
    /// Its version in the stream, from 1.
    pub version: u64,
    /// Its position in the whole store, increasing in commit order, from 1.
    pub position: u64,
    /// The event.
    pub envelope: Envelope,
}

/// Reads the events appended through [`Transaction::append`](super::Transaction::append):
/// one stream for an aggregate, every stream in commit order for a projection.
///
/// Conformance: [`conformance::event_store`](super::conformance::event_store).
#[async_trait]
pub trait EventStore: Send + Sync {
    /// The events of `stream` with a version of at least `from_version`, in order.
    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<StoredEvent>, Error>;

    /// Up to `limit` events of every stream with a position after `after`, in order: what a
    /// projection reads, from its own checkpoint.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, Error>;

    /// The position of the newest event (0 for an empty store), for a projection's
    /// progress ("what is left"); `None` (the default) if the backend cannot tell.
    async fn head_position(&self) -> Result<Option<u64>, Error> {
        Ok(None)
    }
}
