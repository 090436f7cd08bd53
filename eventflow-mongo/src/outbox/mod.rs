//! The relay's side of the outbox, in rooms: how entries are stored ([`layout`]), the
//! feed of undelivered entries that follows a change stream ([`feed`], [`stream`]), the
//! lease one relay at a time holds ([`lease`]), the saved position ([`position`]), marking
//! entries delivered ([`delivered`]) and deleting them ([`cleanup`]). [`Outbox`] is the
//! door the store's `Storage` methods go through.
//!
//! # How entries are stored
//!
//! One document per unit of work, holding its entries in order (see [`layout`]): `_id` is
//! the sequence of its first entry, `last` that of its last, `entries` the envelopes. The
//! feed hands the relay individual entries; the server pays one insert, one change-stream
//! read and one delete per unit of work rather than per entry. Documents of the earlier
//! layout, one per entry, are read as documents of one entry.
//!
//! Why nothing is lost is told in [`feed`] (commit order, the scan, the stream) and
//! [`position`] (what the saved position promises); the lease's timing rules in [`lease`].

mod cleanup;
mod delivered;
mod feed;
pub(crate) mod layout;
mod lease;
mod position;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::store::{OutboxEntry, OutboxLease};
use eventflow::Error;

use self::cleanup::Cleaner;
use self::feed::SharedFeed;
use crate::client::Inner;

pub(crate) use self::cleanup::{CLEANUP_CHUNK, CLEANUP_INTERVAL};
pub use self::position::OUTBOX_POSITION_CHECKPOINT;

/// The relay's side of the outbox of one store handle (and its clones): the feed, the
/// lease and the clean-up of delivered entries. Only the relay holding the lease uses it.
pub(crate) struct Outbox {
    inner: Arc<Inner>,
    feed: SharedFeed,
    /// Deletes delivered outbox entries in the background.
    cleaner: Cleaner,
}

impl Outbox {
    /// The outbox of the store on `inner`, with no relay positioned on it yet.
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Outbox {
            inner,
            feed: SharedFeed::default(),
            cleaner: Cleaner::default(),
        }
    }

    /// Who holds the outbox lease now, and until when.
    pub(crate) async fn lease(&self) -> Result<Option<OutboxLease>, Error> {
        lease::read(&self.inner).await
    }

    /// The next entries for `relay` after `after`, at most `limit`, in commit order and
    /// under the lease: see [`OutboxStore::claim_outbox`](eventflow::store::OutboxStore::claim_outbox).
    pub(crate) async fn claim(
        &self,
        relay: &str,
        lease: Duration,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, Error> {
        let acquired = Instant::now();
        let mut feed = self.feed.lock().await;
        // Until `surely_held_until`, `relay` still holds the lease without taking it again.
        // A claim of 0 entries always renews it.
        let held = feed.owner.as_deref() == Some(relay)
            && feed.held_until.is_some_and(|until| acquired < until)
            && limit > 0;
        if !held {
            let Some((continuous, watermark)) = lease::acquire(&self.inner, relay, lease).await? else {
                return Ok(Vec::new());
            };
            if !continuous || feed.owner.as_deref() != Some(relay) {
                // Another relay may have delivered entries meanwhile: start from the saved position.
                feed.reset(Some(relay));
                // Documents delivered before may be left: by another relay, or an earlier layout.
                self.cleaner.sweep();
            }
            feed.held_until = Some(lease::surely_held_until(acquired, lease));
            feed.watermark = feed.watermark.max(watermark);
            feed.clean_up(&self.inner, &self.cleaner);
        }
        // Reached in marks that came too soon after the last write; nothing moved since.
        feed.flush_if_due(&self.inner, &self.feed);
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Entries up to `after` were sent and are not marked delivered yet: skip them.
        let sent = feed
            .pending
            .iter()
            .take_while(|p| p.entry.sequence <= after)
            .count();
        feed.fill(&self.inner, sent + limit).await?;
        if lease::renewal_due(acquired, lease) {
            // Opening the stream or scanning took a while: the lease runs from now.
            let renewed = Instant::now();
            if !lease::renew(&self.inner, relay, lease).await? {
                feed.reset(None);
                return Ok(Vec::new());
            }
            feed.held_until = Some(lease::surely_held_until(renewed, lease));
        }
        let unsent = feed.pending.iter().skip(sent);
        Ok(unsent.take(limit).map(|p| p.entry.clone()).collect())
    }

    /// Marks `sequences` delivered by `relay`: see
    /// [`OutboxStore::mark_delivered`](eventflow::store::OutboxStore::mark_delivered).
    pub(crate) async fn mark_delivered(&self, relay: &str, sequences: &[u64]) -> Result<(), Error> {
        let mut feed = self.feed.lock().await;
        feed.mark_delivered(&self.inner, &self.feed, &self.cleaner, relay, sequences)
            .await
    }

    /// Gives `relay`'s lease up, with what it delivered: see
    /// [`OutboxStore::release_outbox`](eventflow::store::OutboxStore::release_outbox).
    pub(crate) async fn release(&self, relay: &str) -> Result<(), Error> {
        let reached = {
            let mut feed = self.feed.lock().await;
            match feed.owner.as_deref() == Some(relay) {
                true => {
                    let reached = (feed.watermark, feed.reached.take());
                    feed.reset(None);
                    Some(reached)
                }
                false => None,
            }
        };
        lease::release(&self.inner, relay, reached).await
    }

    /// How many outbox entries wait for the relay: those at or above the watermark, not
    /// delivered out of order.
    pub(crate) async fn backlog(&self) -> Result<u64, Error> {
        let written = lease::written_watermark(&self.inner).await?;
        // This handle's relay may have delivered more than it has written yet.
        let feed = self.feed.lock().await;
        let watermark = match feed.owner {
            Some(_) => written.max(feed.watermark),
            None => written,
        };
        drop(feed);
        layout::count_undelivered(&self.inner, watermark).await
    }
}
