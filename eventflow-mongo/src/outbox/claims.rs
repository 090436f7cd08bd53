//! The poll-shaped `OutboxStore` methods (`claim_outbox`, `mark_delivered`,
//! `release_outbox`) on top of a [`MongoFeed`]: one feed per store handle, for the relay
//! that claims through it, positioned at what the relay says it sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::store::{Fed, FeedSettings, OutboxEntry, OutboxFeed};
use eventflow::Error;
use tokio::sync::Mutex;

use super::feed::{lost_lease, MongoFeed};
use super::{lease, Outbox};

/// The feed the relay claiming through a store handle uses.
#[derive(Default)]
pub(crate) struct Claims {
    feed: Mutex<Option<MongoFeed>>,
}

impl Claims {
    /// The next entries for `relay` after `after`, at most `limit`, in commit order and
    /// under the lease: see [`OutboxStore::claim_outbox`](eventflow::store::OutboxStore::claim_outbox).
    pub(crate) async fn claim(
        &self,
        outbox: &Arc<Outbox>,
        relay: &str,
        lease: Duration,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, Error> {
        let mut slot = self.feed.lock().await;
        if slot.as_ref().is_none_or(|feed| feed.relay != relay) {
            let settings = FeedSettings {
                lease,
                batch: limit.max(1),
                ..FeedSettings::default()
            };
            *slot = Some(outbox.open(relay, settings));
        }
        let feed = slot.as_mut().expect("a feed was just opened");
        feed.settings.lease = lease;
        if limit == 0 {
            // A claim of no entries always renews the lease.
            feed.held_until = feed.held_until.map(|_| Instant::now());
            feed.step().await?;
            return Ok(Vec::new());
        }
        feed.settings.batch = limit;
        // Entries up to `after` were sent and are not marked delivered yet: skip them.
        feed.handed = (feed.reader.pending.iter())
            .take_while(|p| p.entry.sequence <= after)
            .count();
        match feed.step().await? {
            Some(Fed::Entries { entries, .. }) => Ok(entries),
            _ => Ok(Vec::new()),
        }
    }

    /// Marks `sequences` delivered by `relay`.
    pub(crate) async fn mark_delivered(
        &self,
        outbox: &Outbox,
        relay: &str,
        sequences: &[u64],
    ) -> Result<(), Error> {
        let mut slot = self.feed.lock().await;
        match slot.as_mut() {
            Some(feed) if feed.relay == relay => feed.delivered(sequences).await,
            // Not claimed through this handle: nothing to raise, but the lease still fences.
            _ => match lease::raise_watermark(&outbox.inner, relay, None, None).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(lost_lease(relay)),
                Err(error) => Err(crate::error::backend("marking outbox entries delivered", error)),
            },
        }
    }

    /// Gives `relay`'s lease up, with what it delivered.
    pub(crate) async fn release(&self, outbox: &Outbox, relay: &str) -> Result<(), Error> {
        let feed = {
            let mut slot = self.feed.lock().await;
            match slot.as_ref().is_some_and(|feed| feed.relay == relay) {
                true => slot.take(),
                false => None,
            }
        };
        match feed {
            Some(feed) => Box::new(feed).close().await,
            None => lease::release(&outbox.inner, relay, None).await,
        }
    }
}
