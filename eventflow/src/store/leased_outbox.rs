//! The outbox as rows under a lease: the primitives a row store (memory, SQLite, a user's
//! SQL backend) implements, from which [`PolledOutbox`](super::PolledOutbox) makes the
//! [`OutboxFeed`](super::OutboxFeed) a relay reads.

use std::time::Duration;

use async_trait::async_trait;

use super::outbox::OutboxStore;
use super::outbox_entry::OutboxEntry;
use crate::Error;

/// The outbox of a row store: claim entries under a lease, mark them delivered, give the
/// lease up. A backend that implements it gets its relay feed, with every rule of lease
/// timing, from [`PolledOutbox`](super::PolledOutbox).
///
/// A row backend implements it and [`OutboxStore`], whose
/// [`open_outbox`](OutboxStore::open_outbox) returns the polled feed:
///
/// ```
/// use std::collections::BTreeMap;
/// use std::sync::{Arc, Mutex};
/// use std::time::{Duration, Instant};
///
/// use eventflow::store::{
///     relay_is_gone, FeedSettings, Fed, LeasedOutbox, OutboxEntry, OutboxFeed, OutboxStore, PolledOutbox,
/// };
/// use eventflow::{Envelope, Error};
/// use tokio::sync::watch;
///
/// #[derive(Clone)]
/// struct Rows {
///     rows: Arc<Mutex<(BTreeMap<u64, Envelope>, Option<(String, Instant)>)>>,
///     commits: watch::Sender<u64>,
/// }
///
/// #[async_trait::async_trait]
/// impl OutboxStore for Rows {
///     async fn open_outbox(&self, relay: &str, settings: FeedSettings) -> Result<Box<dyn OutboxFeed>, Error> {
///         Ok(Box::new(PolledOutbox::new(Arc::new(self.clone()), relay, settings)))
///     }
///
///     fn commit_signal(&self) -> watch::Receiver<u64> {
///         self.commits.subscribe()
///     }
/// }
///
/// #[async_trait::async_trait]
/// impl LeasedOutbox for Rows {
///     async fn claim_outbox(&self, relay: &str, lease: Duration, after: u64, limit: usize)
///         -> Result<Vec<OutboxEntry>, Error> {
///         let mut guard = self.rows.lock().unwrap();
///         let (rows, holder) = &mut *guard;
///         let now = Instant::now();
///         if let Some((other, until)) = holder {
///             if other != relay && *until > now && !relay_is_gone(other) {
///                 return Ok(Vec::new());
///             }
///         }
///         *holder = Some((relay.to_owned(), now + lease));
///         let rows = rows.range(after + 1..).take(limit);
///         Ok(rows.map(|(&sequence, envelope)| OutboxEntry::new(sequence, envelope.clone())).collect())
///     }
///
///     async fn mark_delivered(&self, relay: &str, sequences: &[u64]) -> Result<(), Error> {
///         let mut guard = self.rows.lock().unwrap();
///         let (rows, holder) = &mut *guard;
///         if holder.as_ref().is_some_and(|(other, _)| other != relay) {
///             return Err(Error::backend(format!("relay `{relay}` lost the outbox lease")));
///         }
///         sequences.iter().for_each(|sequence| drop(rows.remove(sequence)));
///         Ok(())
///     }
///
///     async fn release_outbox(&self, relay: &str) -> Result<(), Error> {
///         let mut guard = self.rows.lock().unwrap();
///         if guard.1.as_ref().is_some_and(|(holder, _)| holder == relay) {
///             guard.1 = None;
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = Rows { rows: Default::default(), commits: watch::channel(0).0 };
/// let placed = Envelope::new("order.placed", 1, "orders", "application/json", "{}");
/// store.rows.lock().unwrap().0.insert(1, placed.clone());
/// store.commits.send_modify(|commits| *commits += 1);
///
/// let mut feed = store.open_outbox("relay-a", FeedSettings::default()).await.unwrap();
/// let Fed::Entries { entries, caught_up } = feed.next().await.unwrap() else { panic!() };
/// assert_eq!((entries[0].envelope.clone(), caught_up), (placed, Some(1)));
/// feed.delivered(&[entries[0].sequence]).await.unwrap();
/// feed.close().await.unwrap();
/// # }
/// ```
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
