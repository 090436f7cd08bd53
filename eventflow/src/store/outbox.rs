//! The transactional outbox as the relay sees it: a feed to open, the lease to inspect, the
//! commit signal to wake on.

use async_trait::async_trait;
use tokio::sync::watch;

use super::lease::OutboxLease;
use super::outbox_feed::{FeedSettings, OutboxFeed};
use crate::Error;

/// The relay's side of the outbox: open it as a feed, see who holds its lease, and wake up
/// when a commit enqueued more.
///
/// A row store implements [`LeasedOutbox`](super::LeasedOutbox) and returns a
/// [`PolledOutbox`](super::PolledOutbox) from [`open_outbox`](OutboxStore::open_outbox); a
/// backend that can follow its commits (a change stream) returns a feed of its own.
///
/// Conformance: [`conformance::relay`](super::conformance::relay).
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Opens the outbox for relay `relay`: the feed takes the outbox lease when it can (one
    /// relay at a time delivers) and hands out entries in commit order.
    async fn open_outbox(&self, relay: &str, settings: FeedSettings) -> Result<Box<dyn OutboxFeed>, Error>;

    /// Who holds the outbox lease now, and until when; `None` if nobody does. For
    /// inspection ([`EventBus::settled`](crate::EventBus::settled) names the holder when it
    /// gives up waiting). The default says `None`.
    async fn outbox_lease(&self) -> Result<Option<OutboxLease>, Error> {
        Ok(None)
    }

    /// A signal bumped each time a transaction that appended or enqueued events commits
    /// through this store (or, for backends that can watch the database, anywhere): the
    /// wake-up of the relay and of projections. Commits it cannot see are found by their
    /// fallback polling.
    fn commit_signal(&self) -> watch::Receiver<u64>;
}
