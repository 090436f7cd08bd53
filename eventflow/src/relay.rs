//! The outbox [`Relay`]: forwards the entries of a store's outbox feed to the transport.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::watch;

use crate::outbox_progress::Relayed;
use crate::retry::Backoff;
use crate::store::{Fed, FeedSettings, OutboxEntry, OutboxFeed, Storage};
use crate::transport::Transport;
use crate::DeadLetterStore;
use crate::Error;

mod progress;
mod refused;
mod setup;
mod undeliverable;

/// Batches a relay sends ahead of the ones the groups have not finished, with a transport
/// that is not durable.
const MAX_UNSETTLED: usize = 16;

/// Moves events from a store's outbox to a transport, in commit order, in batches.
///
/// It reads the outbox as the feed its store opens
/// ([`OutboxStore::open_outbox`](crate::store::OutboxStore::open_outbox)): a row store's feed
/// wakes when a unit of work commits through the same store handle and finds commits by
/// other processes by polling every [`poll_interval`](Relay::poll_interval). Entries are
/// marked delivered only after the transport accepted them, so a crash in between delivers
/// them again (consumers' inbox absorbs the duplicate). Several relays on one store take
/// turns through the store's outbox lease: one delivers, the others stand by until its
/// lease expires, and log once which relay holds it and until when. The relay's id names
/// its host and process (see [`relay_is_gone`](crate::store::relay_is_gone)), so a relay
/// restarted on the same host after a crash takes the outbox over at once.
///
/// An entry that cannot be delivered as it is (a row the store cannot read, a JSON payload
/// that does not parse), or that the transport refuses for good ([`Error::Rejected`]: too
/// large for the broker, an invalid topic), is not sent again: it becomes a dead letter of
/// the group [`Relay::DEAD_LETTER_GROUP`] with the reason and what to do, the rest of its
/// batch is delivered, and the relay goes on with the next. Any other publish error is
/// transient (broker down, a timeout): the batch stays in the outbox and is retried with
/// backoff. [`EventBus::replay_dead_letter`](crate::EventBus::replay_dead_letter)
/// publishes a dead letter once the cause is fixed.
///
/// Later entries of a set-aside entry's key are delivered by default. With
/// [`Relay::sequenced`] they are parked behind it instead, as dead letters marked
/// [`DeadLetter::PARKED_BEHIND`](crate::DeadLetter::PARKED_BEHIND), and delivered in order
/// when it is replayed or discarded.
///
/// [`EventBusBuilder::storage`](crate::EventBusBuilder::storage) runs one for you.
pub struct Relay {
    storage: Arc<dyn Storage>,
    dead_letters: Arc<dyn DeadLetterStore>,
    transport: Arc<dyn Transport>,
    id: String,
    feed: FeedSettings,
    backoff: Backoff,
    /// The commit count through which every entry has been relayed: [`OutboxProgress`](crate::OutboxProgress).
    relayed: watch::Sender<Relayed>,
    sequenced: bool,
}

/// Batches published to a transport that is not durable, each resolving to its sequences
/// and the commit count it caught up with once every group handled it.
type Unsettled = FuturesOrdered<BoxFuture<'static, (Vec<u64>, Option<u64>)>>;

/// What woke the forwarding loop.
enum Wake {
    Shutdown,
    Fed(Fed),
    /// The groups handled a batch: its sequences, and the commit count it caught up with.
    Handled(Vec<u64>, Option<u64>),
}

impl Relay {
    /// Delivers until `shutdown` turns true, then gives the lease up.
    ///
    /// With a transport that is not durable, batches are marked delivered as the groups
    /// finish them, while the relay goes on sending the next ones (up to
    /// 16 batches ahead).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut feed: Option<Box<dyn OutboxFeed>> = None;
        let mut failures = 0;
        while !*shutdown.borrow() {
            let result = match &mut feed {
                Some(feed) => self.forward(&mut **feed, &mut shutdown, &mut failures).await,
                None => self
                    .storage
                    .open_outbox(&self.id, self.feed.clone())
                    .await
                    .map(|opened| feed = Some(opened)),
            };
            let Err(error) = result else { continue };
            if let Some(feed) = &mut feed {
                feed.rewind();
            }
            failures += 1;
            let wait = self.backoff.delay(failures);
            tracing::error!(relay = %self.id, %error, ?wait, "relaying the outbox failed; entries stay in the outbox and will be retried");
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Some(feed) = feed {
            if let Err(error) = feed.close().await {
                tracing::warn!(relay = %self.id, %error, "releasing the outbox lease failed; another relay takes over when it expires");
            }
        }
    }

    /// Forwards what `feed` hands out until shutdown (`Ok`) or an error: the entries not
    /// marked delivered stay in the outbox, and the caller rewinds the feed.
    async fn forward(
        &self,
        feed: &mut dyn OutboxFeed,
        shutdown: &mut watch::Receiver<bool>,
        failures: &mut u32,
    ) -> Result<(), Error> {
        // Batches sent to a transport that is not durable, until every group handled them.
        let mut unsettled = Unsettled::new();
        // The commit count the feed caught up with behind the unsettled batches: relayed once
        // they are handled.
        let mut caught_up_behind = None;
        loop {
            let full = unsettled.len() >= MAX_UNSETTLED;
            let wake = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => Wake::Shutdown,
                Some((sequences, through)) = unsettled.next(), if !unsettled.is_empty() => {
                    Wake::Handled(sequences, through)
                }
                fed = async {
                    match full {
                        false => feed.next().await,
                        // Waiting for the groups: keep the lease.
                        true => Err(feed.hold().await),
                    }
                } => Wake::Fed(fed?),
            };
            match wake {
                Wake::Shutdown => return Ok(()),
                Wake::Handled(sequences, through) => {
                    if let Err(error) = feed.delivered(&sequences).await {
                        tracing::warn!(relay = %self.id, %error, "marking handled outbox entries delivered failed; they will be delivered again and the inbox will skip them");
                        return Err(error);
                    }
                    self.relayed_through(through);
                    if unsettled.is_empty() {
                        self.relayed_through(caught_up_behind.take());
                    }
                }
                Wake::Fed(Fed::StandingBy(lease)) => self.standing_by(&lease),
                Wake::Fed(Fed::Entries { entries, caught_up }) => {
                    self.delivering();
                    if entries.is_empty() {
                        match unsettled.is_empty() {
                            true => self.relayed_through(caught_up),
                            false => caught_up_behind = caught_up_behind.max(caught_up),
                        }
                    } else {
                        self.relay_batch(feed, entries, caught_up, &mut unsettled).await?;
                    }
                }
            }
            *failures = 0;
        }
    }

    /// Dead-letters what cannot be delivered, publishes the rest, and marks the batch
    /// delivered (or, for a transport that is not durable, queues it until it is handled).
    async fn relay_batch(
        &self,
        feed: &mut dyn OutboxFeed,
        entries: Vec<OutboxEntry>,
        caught_up: Option<u64>,
        unsettled: &mut Unsettled,
    ) -> Result<(), Error> {
        let sequences: Vec<u64> = entries.iter().map(|entry| entry.sequence).collect();
        let mut blocked = self.blocked_keys().await?;
        let deliverable = self.set_aside_undeliverable(entries, &mut blocked).await?;
        self.publish_entries(feed, deliverable, &mut blocked).await?;
        match self.transport.until_handled() {
            None => {
                feed.delivered(&sequences).await?;
                self.relayed_through(caught_up);
            }
            Some(handled) => {
                unsettled.push_back(handled.map(move |()| (sequences, caught_up)).boxed());
            }
        }
        Ok(())
    }
}
