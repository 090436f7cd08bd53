//! The outbox as a feed its backend owns: a relay opens it, takes the next batches in commit
//! order, says which entries the transport delivered, and closes it. The shape of a
//! [`Consumer`](crate::transport::Consumer): the backend decides how entries reach the relay
//! (polling rows under a lease, following a change stream) and keeps the lease itself.

use std::time::Duration;

use async_trait::async_trait;

use super::lease::OutboxLease;
use super::outbox_entry::OutboxEntry;
use crate::Error;

/// How a relay wants its outbox feed to work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedSettings {
    /// How long the outbox stays the relay's after the feed last renewed its lease: a relay
    /// that dies holds deliveries up for at most that long (less, when a relay restarted on
    /// its host finds it gone: [`relay_is_gone`](super::relay_is_gone)).
    pub lease: Duration,
    /// Most entries per batch.
    pub batch: usize,
    /// How often a feed that cannot be woken by every commit (one made by another process)
    /// looks for new entries, and how often one standing by looks at the lease.
    pub poll_interval: Duration,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            lease: Duration::from_secs(10),
            batch: 512,
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// What [`OutboxFeed::next`] hands the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fed {
    /// The next entries, in commit order, at most [`FeedSettings::batch`]; none when the
    /// feed only reports that it caught up.
    Entries {
        /// The entries, each handed out once until [`OutboxFeed::rewind`].
        entries: Vec<OutboxEntry>,
        /// The [`commit_signal`](super::OutboxStore::commit_signal) count through which
        /// every committed entry has now been handed out (these entries included), when the
        /// feed knows it: what [`EventBus::settled`](crate::EventBus::settled) waits for.
        caught_up: Option<u64>,
    },
    /// Another relay holds the outbox lease: this one stands by. Reported once when that
    /// starts (and again when the holder changes); the feed takes the outbox over by itself
    /// when the lease runs out or its holder is provably gone, and then hands out entries.
    StandingBy(OutboxLease),
}

/// A relay's open outbox: entries in commit order, under the outbox lease the feed keeps.
///
/// One relay at a time holds a store's outbox; the feed takes the lease when it can and
/// renews it while the relay calls [`next`](OutboxFeed::next),
/// [`delivered`](OutboxFeed::delivered) or [`hold`](OutboxFeed::hold). Entries handed out
/// and not marked delivered are handed out again after [`rewind`](OutboxFeed::rewind), after
/// the lease was lost and taken again, and to the next relay: delivery is at least once.
///
/// Conformance: [`conformance::relay`](super::conformance).
#[async_trait]
pub trait OutboxFeed: Send {
    /// Waits for what the relay should know next: entries after those handed out, that the
    /// feed caught up with a commit count it has not reported yet, or that another relay
    /// holds the lease.
    ///
    /// Cancel safe: when the future is dropped before it completes, no entry is lost; those
    /// it had not handed out come with the next call.
    async fn next(&mut self) -> Result<Fed, Error>;

    /// Marks entries delivered, once the transport confirmed them (for a transport that is
    /// not durable, once every group handled them). An error (the lease was lost, the
    /// database is unreachable) leaves them undelivered, to be handed out again.
    async fn delivered(&mut self, sequences: &[u64]) -> Result<(), Error>;

    /// An entry this feed handed out and has not marked delivered, read again; `None` if it
    /// is no longer there (another relay took the outbox over). The relay hands its
    /// envelopes over to the transport, and reads back the one the transport refused for
    /// good, to dead-letter it.
    async fn reread(&mut self, sequence: u64) -> Result<Option<OutboxEntry>, Error>;

    /// Hands out again, from the oldest entry not marked delivered, everything handed out
    /// since: the relay calls it when publishing failed.
    fn rewind(&mut self);

    /// Keeps the lease while the relay asks for no entries (its transport has not finished
    /// the batches it sent): renews it when due; completes only with the error that stopped
    /// it. Cancel safe.
    async fn hold(&mut self) -> Error;

    /// Gives the lease up (with whatever position the backend saves), so another relay can
    /// take over at once.
    async fn close(self: Box<Self>) -> Result<(), Error>;
}
