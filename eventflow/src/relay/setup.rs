//! Making a [`Relay`]: its store, transport, dead letters and settings.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Relay;
use crate::dead_letter::DeadLetterStore;
use crate::outbox_progress::{OutboxProgress, Relayed};
use crate::retry::Backoff;
use crate::store::{new_relay_id, FeedSettings, Storage};
use crate::transport::Transport;
use crate::RelaySettings;

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
            feed: FeedSettings::default(),
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
    /// parked behind it (dead-lettered, marked [`DeadLetter::PARKED_BEHIND`](crate::DeadLetter::PARKED_BEHIND))
    /// instead of delivered ahead of it. Default `false`: later entries of the key are
    /// delivered. Set by
    /// [`EventBusBuilder::sequenced_dead_letters`](crate::EventBusBuilder::sequenced_dead_letters)
    /// with [`Relay::DEAD_LETTER_GROUP`].
    pub fn sequenced(mut self, sequenced: bool) -> Self {
        self.sequenced = sequenced;
        self
    }

    /// Most entries delivered per batch. Default 512.
    pub fn batch(mut self, batch: usize) -> Self {
        self.feed.batch = batch.max(1);
        self
    }

    /// How long the outbox stays this relay's after its feed last renewed the lease.
    /// Default 10 s: a relay that dies holds deliveries up for at most that long.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.feed.lease = lease;
        self
    }

    /// How often to look for commits made by other processes. Default 500 ms.
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.feed.poll_interval = poll_interval;
        self
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.id)
            .field("batch", &self.feed.batch)
            .finish_non_exhaustive()
    }
}
