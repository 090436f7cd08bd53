//! The outbox [`Relay`]: delivers committed outbox entries to the transport.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::watch;
use uuid::Uuid;

use crate::codec;
use crate::dead_letter::{DeadLetter, DeadLetterStore};
use crate::outbox_progress::{OutboxProgress, Relayed};
use crate::retry::Backoff;
use crate::store::{new_relay_id, LeasedOutbox, OutboxEntry, Storage};
use crate::transport::Transport;
use crate::{Error, RelaySettings};

mod refused;

/// Batches a relay sends ahead of the ones the groups have not finished, with a transport
/// that is not durable.
const MAX_UNSETTLED: usize = 16;

/// Moves events from a store's outbox to a transport, in commit order, in batches.
///
/// It wakes when a unit of work that enqueued events commits through the same store
/// handle; commits by other processes are found by polling every
/// [`poll_interval`](Relay::poll_interval). Entries are marked delivered only after the
/// transport accepted them, so a crash in between delivers them again (consumers' inbox
/// absorbs the duplicate). Several relays on one store take turns through the store's
/// outbox lease: one delivers, the others wait for its lease to expire, and log once which
/// relay holds it and until when. The relay's id names its host and process (see
/// [`relay_is_gone`](crate::store::relay_is_gone)), so a relay restarted on the same host
/// after a crash takes the outbox over at once.
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
/// [`DeadLetter::PARKED_BEHIND`], and delivered in order when it is replayed or discarded.
///
/// [`EventBusBuilder::storage`](crate::EventBusBuilder::storage) runs one for you.
pub struct Relay {
    storage: Arc<dyn Storage>,
    dead_letters: Arc<dyn DeadLetterStore>,
    transport: Arc<dyn Transport>,
    id: String,
    batch: usize,
    lease: Duration,
    poll_interval: Duration,
    backoff: Backoff,
    /// The commit count through which every entry has been relayed: [`OutboxProgress`].
    relayed: watch::Sender<Relayed>,
    sequenced: bool,
}

impl Relay {
    /// The group name of the dead letters the relay writes for entries it cannot deliver.
    pub const DEAD_LETTER_GROUP: &'static str = "eventflow.outbox";

    /// A relay from `storage`'s outbox to `transport`, with a unique id.
    pub fn new(storage: Arc<dyn Storage>, transport: Arc<dyn Transport>) -> Self {
        Relay {
            dead_letters: storage.clone(),
            storage,
            transport,
            id: new_relay_id(),
            batch: 512,
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            backoff: Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10)),
            relayed: watch::channel(Relayed::default()).0,
            sequenced: false,
        }
    }

    /// Takes lease, batch and poll interval from `settings`.
    pub fn settings(self, settings: &RelaySettings) -> Self {
        self.lease(settings.lease)
            .batch(settings.batch)
            .poll_interval(settings.poll_interval)
    }

    /// This relay's id, as the outbox lease names it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How far this relay has brought the committed entries to the transport; what
    /// [`EventBus::settled`](crate::EventBus::settled) waits on.
    pub fn progress(&self) -> OutboxProgress {
        OutboxProgress::new(self.storage.commit_signal(), self.relayed.subscribe())
    }

    /// Where entries that cannot be delivered go. Default: the storage itself.
    pub fn dead_letters(mut self, dead_letters: Arc<dyn DeadLetterStore>) -> Self {
        self.dead_letters = dead_letters;
        self
    }

    /// Whether an entry of a key whose earlier entry is a dead letter of the relay is
    /// parked behind it (dead-lettered, marked [`DeadLetter::PARKED_BEHIND`]) instead of
    /// delivered ahead of it. Default `false`: later entries of the key are delivered.
    /// Set by [`EventBusBuilder::sequenced_dead_letters`](crate::EventBusBuilder::sequenced_dead_letters)
    /// with [`Relay::DEAD_LETTER_GROUP`].
    pub fn sequenced(mut self, sequenced: bool) -> Self {
        self.sequenced = sequenced;
        self
    }

    /// Most entries delivered per batch. Default 512.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How long the outbox stays this relay's after its last claim. Default 10 s: a relay
    /// that dies holds deliveries up for at most that long.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often to look for commits made by other processes. Default 500 ms.
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// Delivers one batch and marks it delivered (for a transport that is not durable,
    /// once every group has handled it); returns how many entries it delivered.
    pub async fn deliver_batch(&self) -> Result<usize, Error> {
        let sent = self.send_batch(0).await?;
        if let Some(handled) = self.transport.until_handled() {
            handled.await;
        }
        self.leased()?.mark_delivered(&self.id, &sent.sequences).await?;
        Ok(sent.delivered)
    }

    /// Claims the entries after `after`, dead-letters those that cannot be delivered and
    /// publishes the rest.
    async fn send_batch(&self, after: u64) -> Result<Sent, Error> {
        let entries = self
            .leased()?
            .claim_outbox(&self.id, self.lease, after, self.batch)
            .await?;
        let sequences: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
        let mut blocked = self.blocked_keys().await?;
        let mut deliverable = Vec::with_capacity(entries.len());
        for entry in entries {
            match undeliverable(&entry) {
                None => deliverable.push(entry),
                Some(error) => {
                    let letter = self.dead_letter(entry, error).await?;
                    if let (true, Some(key)) = (self.sequenced, letter.envelope.key) {
                        blocked.entry(key).or_insert(letter.id);
                    }
                }
            }
        }
        let delivered = self.publish_entries(deliverable, &mut blocked).await?;
        Ok(Sent { sequences, delivered })
    }

    /// Sets an entry aside as a dead letter. Its id is the event's (the outbox holds an
    /// event once), or the sequence's when the event id is unreadable, so writing it again
    /// after a crash replaces it instead of adding a second one.
    async fn dead_letter(&self, entry: OutboxEntry, error: String) -> Result<DeadLetter, Error> {
        tracing::error!(relay = %self.id, sequence = entry.sequence, event.id = %entry.envelope.id, %error,
            "an outbox entry cannot be delivered; it is now a dead letter of group `{}`", Self::DEAD_LETTER_GROUP);
        let id = match entry.envelope.id {
            id if id.is_nil() => Uuid::from_u64_pair(0, entry.sequence),
            id => id,
        };
        let letter = DeadLetter {
            id,
            group: Self::DEAD_LETTER_GROUP.to_owned(),
            envelope: entry.envelope,
            error,
            attempts: 0,
            failed_at: SystemTime::now(),
        };
        self.dead_letters.put(letter.clone()).await?;
        Ok(letter)
    }

    /// Delivers until `shutdown` turns true, then gives the lease up.
    ///
    /// With a transport that is not durable, batches are marked delivered as the groups
    /// finish them, while the relay goes on sending the next ones (up to
    /// 16 batches ahead).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let Ok(outbox) = self.leased() else {
            tracing::error!(relay = %self.id, "this store has no row outbox; the relay cannot run");
            return;
        };
        let mut commits = self.storage.commit_signal();
        let mut failures = 0;
        let mut unsettled = FuturesOrdered::new();
        // The last sequence sent and not yet marked delivered: the next claim starts after
        // it. Back to 0 when everything sent is marked, so nothing left behind (by an
        // error, or by a relay that lost the lease) is skipped for good.
        let mut cursor = 0;
        let mut last_claim = Instant::now();
        let mut lease = LeaseView::default();
        // The commit count every entry of which has been claimed, once the batches sent
        // (`unsettled`) are marked delivered: reported then as `relayed`.
        let mut claimed_through = None;
        while !*shutdown.borrow() {
            let mut full = false;
            let mut result = Ok(());
            if unsettled.len() < MAX_UNSETTLED {
                let seen = *commits.borrow_and_update();
                last_claim = Instant::now();
                result = match self.send_batch(cursor).await {
                    Ok(sent) => {
                        full = sent.sequences.len() == self.batch;
                        // A claim that was not full saw every entry committed before it: if
                        // it was this relay's to make (it returned entries, or the lease is
                        // this relay's), the commits counted before it are all claimed.
                        let ours = !sent.sequences.is_empty() || lease.is_ours(&self, last_claim).await;
                        if !sent.sequences.is_empty() {
                            lease.held(&self, last_claim);
                        }
                        let through = (!full && ours).then_some(seen);
                        match (sent.sequences.last(), self.transport.until_handled()) {
                            (None, _) => {
                                claimed_through = claimed_through.max(through);
                                Ok(())
                            }
                            (Some(_), None) => {
                                let marked = outbox.mark_delivered(&self.id, &sent.sequences).await;
                                if marked.is_ok() {
                                    claimed_through = claimed_through.max(through);
                                }
                                marked
                            }
                            (Some(&last), Some(handled)) => {
                                cursor = last;
                                unsettled.push_back(async move {
                                    handled.await;
                                    (sent.sequences, through)
                                });
                                Ok(())
                            }
                        }
                    }
                    Err(error) => Err(error),
                };
                if unsettled.is_empty() {
                    self.relayed
                        .send_if_modified(|relayed| raise(relayed, claimed_through));
                }
            } else if last_claim.elapsed() >= self.lease / 3 {
                // Waiting for the groups: keep the lease.
                last_claim = Instant::now();
                result = outbox
                    .claim_outbox(&self.id, self.lease, u64::MAX, 0)
                    .await
                    .map(drop);
            }
            if let Err(error) = result {
                failures += 1;
                let wait = self.backoff.delay(failures);
                tracing::error!(relay = %self.id, %error, ?wait, "relaying the outbox failed; entries stay in the outbox and will be retried");
                unsettled.clear();
                cursor = 0;
                claimed_through = None;
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            failures = 0;
            if full && unsettled.len() < MAX_UNSETTLED {
                continue;
            }
            let wait = match unsettled.len() {
                MAX_UNSETTLED.. => self.lease / 3,
                _ => self.poll_interval,
            };
            let (handled, through) = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                Some(sequences) = unsettled.next(), if !unsettled.is_empty() => sequences,
                _ = commits.changed() => continue,
                _ = tokio::time::sleep(wait) => continue,
            };
            match outbox.mark_delivered(&self.id, &handled).await {
                Ok(()) => {
                    self.relayed.send_if_modified(|relayed| raise(relayed, through));
                }
                Err(error) => {
                    tracing::warn!(relay = %self.id, %error, "marking handled outbox entries delivered failed; they will be delivered again and the inbox will skip them");
                    unsettled.clear();
                    claimed_through = None;
                }
            }
            if unsettled.is_empty() {
                cursor = 0;
                self.relayed
                    .send_if_modified(|relayed| raise(relayed, claimed_through));
            }
        }
        if let Err(error) = outbox.release_outbox(&self.id).await {
            tracing::warn!(relay = %self.id, %error, "releasing the outbox lease failed; another relay takes over when it expires");
        }
    }
}

impl Relay {
    /// Transitional: the store's row outbox, which the relay drives until it reads a feed.
    fn leased(&self) -> Result<&dyn LeasedOutbox, Error> {
        self.storage
            .as_leased_outbox()
            .ok_or_else(|| Error::Unsupported("this store's outbox is not a LeasedOutbox".into()))
    }
}

/// Raises `relayed` to `through`; whether it moved.
fn raise(relayed: &mut Relayed, through: Option<u64>) -> bool {
    let raised = through > relayed.through;
    relayed.through = relayed.through.max(through);
    raised
}

/// Sets whether the relay stands by for another holder of the lease; whether it changed.
fn stand_by(relay: &Relay, standing_by: bool) {
    relay.relayed.send_if_modified(|relayed| {
        let changed = relayed.standing_by != standing_by;
        relayed.standing_by = standing_by;
        changed
    });
}

/// What a relay knows of the outbox lease, to tell an empty outbox from one another relay
/// delivers without reading the lease after every claim, and to log another holder once.
#[derive(Default)]
struct LeaseView {
    /// When a claim last found the lease this relay's.
    held_at: Option<Instant>,
    /// The other holder last logged.
    logged: Option<String>,
}

impl LeaseView {
    /// A claim made at `claimed_at` returned entries: the lease is the relay's.
    fn held(&mut self, relay: &Relay, claimed_at: Instant) {
        self.held_at = Some(claimed_at);
        stand_by(relay, false);
        if let Some(previous) = self.logged.take() {
            tracing::info!(relay = %relay.id, %previous, "this relay now delivers the outbox");
        }
    }

    /// Whether the lease was the relay's at its empty claim made at `claimed_at`.
    async fn is_ours(&mut self, relay: &Relay, claimed_at: Instant) -> bool {
        // Each claim renews the lease of the relay that holds it, and nobody takes a live
        // relay's lease before it runs out: held at the last claim, held at this one. Half
        // the lease leaves room for the wall clock the lease is written in.
        if self
            .held_at
            .is_some_and(|at| claimed_at.duration_since(at) < relay.lease / 2)
        {
            self.held_at = Some(claimed_at);
            return true;
        }
        match relay.storage.outbox_lease().await {
            Ok(Some(lease)) if lease.holder != relay.id => {
                self.held_at = None;
                stand_by(relay, true);
                if self.logged.as_deref() != Some(&lease.holder) {
                    tracing::info!(relay = %relay.id, holder = %lease.holder, until = %lease.expires_at_utc(),
                        "another relay holds the outbox lease and delivers the outbox; this relay takes \
                         over when that lease runs out, or at once if the holder ran on this host and its \
                         process is gone");
                    self.logged = Some(lease.holder);
                }
                false
            }
            // This relay's, or nobody's (a backend that does not tell): the claim was ours.
            Ok(_) => {
                self.held(relay, claimed_at);
                true
            }
            Err(error) => {
                tracing::debug!(relay = %relay.id, %error, "reading the outbox lease failed");
                false
            }
        }
    }
}

/// What [`Relay::send_batch`] sent: the sequences it claimed (to mark delivered) and how
/// many it published.
struct Sent {
    sequences: Vec<u64>,
    delivered: usize,
}

/// Why `entry` cannot be delivered as it is, if it cannot.
fn undeliverable(entry: &OutboxEntry) -> Option<String> {
    if let Some(corrupt) = &entry.corrupt {
        return Some(format!("{corrupt}; repair the row and replay this dead letter"));
    }
    let envelope = &entry.envelope;
    codec::check_payload(&envelope.content_type, &envelope.payload)
        .err()
        .map(|error| {
            format!(
                "outbox entry {} (event {} `{}` v{}) has a payload that is not valid {}: {error}; \
                 it was not delivered: repair the payload and replay this dead letter",
                entry.sequence, envelope.id, envelope.name, envelope.version, envelope.content_type
            )
        })
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.id)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}
