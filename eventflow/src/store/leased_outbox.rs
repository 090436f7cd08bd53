//! The outbox as rows under a lease: the primitives a row store (memory, SQLite, a user's
//! SQL backend) implements, from which [`PolledOutbox`](super::PolledOutbox) makes the
//! [`OutboxFeed`](super::OutboxFeed) a relay reads.

use std::time::Duration;

use async_trait::async_trait;

use super::outbox::{OutboxEntry, OutboxStore};
use crate::Error;

/// The outbox of a row store: claim entries under a lease, mark them delivered, give the
/// lease up. A backend that implements it gets its relay feed, with every rule of lease
/// timing, from [`PolledOutbox`](super::PolledOutbox).
///
/// Conformance: [`conformance::leased_outbox`](super::conformance::leased_outbox).
#[async_trait]
pub trait LeasedOutbox: OutboxStore {
    /// Claims up to `limit` undelivered outbox entries with a sequence after `after` for
    /// relay `relay`, oldest first.
    ///
    /// One relay at a time holds the outbox, under a lease of `lease` that each claim
    /// renews (a claim with `limit` 0 only renews it); a relay that dies loses it when it
    /// expires and another takes over. Returns nothing while another relay holds an
    /// unexpired lease. `after` lets a relay go on past entries it sent and has not marked
    /// delivered yet.
    ///
    /// Take an unexpired lease over when its holder is provably gone
    /// ([`relay_is_gone`](super::relay_is_gone)): a relay restarted after a crash then
    /// delivers at once instead of waiting for the dead relay's lease. Implement
    /// [`OutboxStore::outbox_lease`] too, so that a relay standing by can say who delivers.
    async fn claim_outbox(
        &self,
        relay: &str,
        lease: Duration,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, Error>;

    /// Marks outbox entries delivered, once the transport confirmed them; fails if `relay`
    /// no longer holds the lease (the entries are then delivered again).
    async fn mark_delivered(&self, relay: &str, sequences: &[u64]) -> Result<(), Error>;

    /// Gives the outbox lease up, so another relay can take over at once.
    async fn release_outbox(&self, relay: &str) -> Result<(), Error>;
}
