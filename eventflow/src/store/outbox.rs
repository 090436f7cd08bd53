//! The transactional outbox: events a [`Transaction`](super::Transaction) enqueued, which
//! one relay at a time claims under a lease and marks delivered.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::lease::OutboxLease;
use crate::{Envelope, Error};

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

/// The relay's side of the outbox: claim entries under a lease, mark them delivered, give
/// the lease up, and wake up when a commit enqueued more.
///
/// Conformance: [`conformance::outbox`](super::conformance::outbox).
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claims up to `limit` undelivered outbox entries with a sequence after `after` for
    /// relay `relay`, oldest first.
    ///
    /// One relay at a time holds the outbox, under a lease of `lease` that each claim
    /// renews (a claim with `limit` 0 only renews it); a relay that dies loses it when it
    /// expires and another takes over. Returns nothing while another relay holds an
    /// unexpired lease. `after` lets a relay go on past entries it sent and has not marked
    /// delivered yet.
    async fn claim_outbox(
        &self,
        relay: &str,
        lease: Duration,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, Error>;

    /// Marks outbox entries delivered, once the transport confirmed them.
    async fn mark_delivered(&self, relay: &str, sequences: &[u64]) -> Result<(), Error>;

    /// Gives the outbox lease up, so another relay can take over at once.
    async fn release_outbox(&self, relay: &str) -> Result<(), Error>;

    /// Who holds the outbox lease now, and until when; `None` if nobody does. The relay
    /// reads it when a claim came back empty, to tell "nothing to deliver" from "another
    /// relay delivers" (and log that once, naming the holder). The default says `None`.
    ///
    /// A backend's [`claim_outbox`](OutboxStore::claim_outbox) should take an unexpired
    /// lease over when its holder is provably gone ([`relay_is_gone`](super::relay_is_gone)):
    /// a relay restarted after a crash then delivers at once instead of waiting for the dead
    /// relay's lease.
    async fn outbox_lease(&self) -> Result<Option<OutboxLease>, Error> {
        Ok(None)
    }

    /// A signal bumped each time a transaction that appended or enqueued events commits
    /// through this store (or, for backends that can watch the database, anywhere): the
    /// wake-up of the relay and of projections. Commits it cannot see are found by their
    /// fallback polling.
    fn commit_signal(&self) -> watch::Receiver<u64>;
}
