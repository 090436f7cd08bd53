//! [`OutboxEntry`]: an event a [`Transaction`](super::Transaction) enqueued, waiting in the
//! outbox for the relay.

use crate::Envelope;

/// An event waiting in the outbox for the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its sequence number, increasing in commit order.
    pub sequence: u64,
    /// The event.
    pub envelope: Envelope,
    /// Why the backend could not read this entry whole (a column of the wrong type, an id
    /// that is not a UUID, ...), if it could not; `envelope` then holds what it could read.
    /// The relay dead-letters such an entry instead of delivering it, and goes on.
    pub corrupt: Option<String>,
}

impl OutboxEntry {
    /// An entry read whole.
    pub fn new(sequence: u64, envelope: Envelope) -> Self {
        OutboxEntry {
            sequence,
            envelope,
            corrupt: None,
        }
    }
}
