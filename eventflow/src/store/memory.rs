//! [`MemoryStore`]: the storage traits in memory, for tests and quick starts.

mod snapshots;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

use super::{
    CheckpointStore, EventStore, ExpectedVersion, FeedSettings, InboxStore, LeasedOutbox, OutboxEntry,
    OutboxFeed, OutboxLease, OutboxStore, PolledOutbox, SnapshotStore, Storage, StoredEvent, StoredSnapshot,
    Transaction,
};
use crate::dead_letter::{DeadLetter, DeadLetterStore};
use crate::{Envelope, Error};

/// Storage in memory: the same semantics as the durable backends, lost when the process
/// ends. Clones share the same data.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    data: Mutex<Data>,
    commits: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Data {
    events: Vec<StoredEvent>,
    /// Stream name → its current version.
    streams: HashMap<String, u64>,
    outbox: BTreeMap<u64, Envelope>,
    next_sequence: u64,
    lease: Option<(String, Instant)>,
    /// When each (group, event) marker was recorded.
    inbox: HashMap<(String, Uuid), SystemTime>,
    dead_letters: Vec<DeadLetter>,
    checkpoints: HashMap<String, String>,
    /// Stream → its newest snapshot.
    snapshots: HashMap<String, StoredSnapshot>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                data: Mutex::default(),
                commits: watch::channel(0).0,
            }),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        self.inner
            .data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A unit of work on a [`MemoryStore`]: writes are buffered and applied at commit, after
/// checking that no other commit invalidated them.
#[derive(Debug)]
pub struct MemoryTransaction {
    store: MemoryStore,
    appends: Vec<(String, ExpectedVersion, Vec<Envelope>)>,
    outbox: Vec<Envelope>,
    markers: Vec<(String, Uuid)>,
    /// Checkpoints saved in this unit of work: (name, the value expected, the new value).
    checkpoints: Vec<(String, Option<String>, String)>,
    /// Open savepoints: how much of each list was written when each was opened.
    savepoints: Vec<(usize, usize, usize, usize)>,
}

impl MemoryTransaction {
    fn pending_version(&self, data: &Data, stream: &str) -> u64 {
        let committed = data.streams.get(stream).copied().unwrap_or(0);
        let pending: usize = self
            .appends
            .iter()
            .filter(|(s, ..)| s == stream)
            .map(|(.., e)| e.len())
            .sum();
        committed + pending as u64
    }
}

#[async_trait]
impl Transaction for MemoryTransaction {
    async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[Envelope],
    ) -> Result<u64, Error> {
        let current = self.pending_version(&self.store.data(), stream);
        expected.check(stream, current)?;
        // At commit, the stream must still be where this append found it.
        let found = if current == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(current)
        };
        self.appends.push((stream.to_owned(), found, events.to_vec()));
        Ok(current + events.len() as u64)
    }

    async fn enqueue(&mut self, events: &[Envelope]) -> Result<(), Error> {
        self.outbox.extend_from_slice(events);
        Ok(())
    }

    async fn mark_processed(&mut self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        let marker = (group.to_owned(), event_id);
        if self.markers.contains(&marker) || self.store.data().inbox.contains_key(&marker) {
            return Ok(false);
        }
        self.markers.push(marker);
        Ok(true)
    }

    async fn save_checkpoint(
        &mut self,
        name: &str,
        previous: Option<&str>,
        value: &str,
    ) -> Result<(), Error> {
        let current = match self.checkpoints.iter().rev().find(|(n, ..)| n == name) {
            Some((.., pending)) => Some(pending.clone()),
            None => self.store.data().checkpoints.get(name).cloned(),
        };
        if current.as_deref() != previous {
            return Err(Error::CheckpointMoved {
                name: name.to_owned(),
                expected: previous.map(str::to_owned),
                actual: current,
            });
        }
        self.checkpoints
            .push((name.to_owned(), previous.map(str::to_owned), value.to_owned()));
        Ok(())
    }

    async fn savepoint(&mut self) -> Result<bool, Error> {
        self.savepoints.push((
            self.appends.len(),
            self.outbox.len(),
            self.markers.len(),
            self.checkpoints.len(),
        ));
        Ok(true)
    }

    async fn rollback_to_savepoint(&mut self) -> Result<(), Error> {
        let (appends, outbox, markers, checkpoints) = self
            .savepoints
            .pop()
            .ok_or_else(|| Error::Config("no savepoint is open in this unit of work".into()))?;
        self.appends.truncate(appends);
        self.outbox.truncate(outbox);
        self.markers.truncate(markers);
        self.checkpoints.truncate(checkpoints);
        Ok(())
    }

    async fn release_savepoint(&mut self) -> Result<(), Error> {
        self.savepoints
            .pop()
            .map(drop)
            .ok_or_else(|| Error::Config("no savepoint is open in this unit of work".into()))
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        let this = *self;
        let wrote_events = !this.outbox.is_empty() || this.appends.iter().any(|(.., e)| !e.is_empty());
        {
            let mut data = this.store.data();
            // Check everything before writing anything, so a failed commit leaves no trace.
            let mut versions: HashMap<&str, u64> = HashMap::new();
            for (stream, expected, events) in &this.appends {
                let current = *versions
                    .entry(stream)
                    .or_insert_with(|| data.streams.get(stream.as_str()).copied().unwrap_or(0));
                expected.check(stream, current)?;
                versions.insert(stream, current + events.len() as u64);
            }
            if let Some((group, event_id)) = this.markers.iter().find(|m| data.inbox.contains_key(*m)) {
                return Err(Error::AlreadyProcessed {
                    group: group.clone(),
                    event_id: *event_id,
                });
            }
            let mut checkpoints: HashMap<&str, Option<&str>> = HashMap::new();
            for (name, previous, value) in &this.checkpoints {
                let current = *checkpoints
                    .entry(name)
                    .or_insert_with(|| data.checkpoints.get(name).map(String::as_str));
                if current != previous.as_deref() {
                    return Err(Error::CheckpointMoved {
                        name: name.clone(),
                        expected: previous.clone(),
                        actual: current.map(str::to_owned),
                    });
                }
                checkpoints.insert(name, Some(value));
            }
            let checkpoints: Vec<(String, String)> = checkpoints
                .into_iter()
                .filter_map(|(name, value)| Some((name.to_owned(), value?.to_owned())))
                .collect();
            data.checkpoints.extend(checkpoints);

            for (stream, _, events) in this.appends {
                for envelope in events {
                    let version = data.streams.get(&stream).copied().unwrap_or(0) + 1;
                    data.streams.insert(stream.clone(), version);
                    let position = data.events.len() as u64 + 1;
                    data.events.push(StoredEvent {
                        stream: stream.clone(),
                        version,
                        position,
                        envelope,
                    });
                }
            }
            for envelope in this.outbox {
                data.next_sequence += 1;
                let sequence = data.next_sequence;
                data.outbox.insert(sequence, envelope);
            }
            let now = SystemTime::now();
            data.inbox
                .extend(this.markers.into_iter().map(|marker| (marker, now)));
        }
        if wrote_events {
            this.store.inner.commits.send_modify(|n| *n += 1);
        }
        Ok(())
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<StoredEvent>, Error> {
        let data = self.data();
        Ok(data
            .events
            .iter()
            .filter(|e| e.stream == stream && e.version >= from_version)
            .cloned()
            .collect())
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, Error> {
        let data = self.data();
        Ok(data
            .events
            .iter()
            .skip(after as usize)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn head_position(&self) -> Result<Option<u64>, Error> {
        Ok(Some(self.data().events.len() as u64))
    }
}

#[async_trait]
impl LeasedOutbox for MemoryStore {
    async fn claim_outbox(
        &self,
        relay: &str,
        lease: Duration,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, Error> {
        let mut data = self.data();
        let now = Instant::now();
        match &data.lease {
            Some((holder, expires)) if holder != relay && *expires > now && !super::relay_is_gone(holder) => {
                return Ok(Vec::new())
            }
            _ => data.lease = Some((relay.to_owned(), now + lease)),
        }
        let entries = data.outbox.range(after.saturating_add(1)..).take(limit);
        Ok(entries
            .map(|(&sequence, envelope)| OutboxEntry::new(sequence, envelope.clone()))
            .collect())
    }

    async fn mark_delivered(&self, relay: &str, sequences: &[u64]) -> Result<(), Error> {
        let mut data = self.data();
        if data.lease.as_ref().is_some_and(|(holder, _)| holder != relay) {
            return Err(Error::backend(format!(
                "relay `{relay}` lost the outbox lease before marking entries delivered; they will be delivered again"
            )));
        }
        for sequence in sequences {
            data.outbox.remove(sequence);
        }
        Ok(())
    }

    async fn release_outbox(&self, relay: &str) -> Result<(), Error> {
        let mut data = self.data();
        if data.lease.as_ref().is_some_and(|(holder, _)| holder == relay) {
            data.lease = None;
        }
        Ok(())
    }
}

#[async_trait]
impl OutboxStore for MemoryStore {
    async fn open_outbox(&self, relay: &str, settings: FeedSettings) -> Result<Box<dyn OutboxFeed>, Error> {
        Ok(Box::new(PolledOutbox::new(
            Arc::new(self.clone()),
            relay,
            settings,
        )))
    }

    async fn outbox_lease(&self) -> Result<Option<OutboxLease>, Error> {
        let data = self.data();
        let (now, wall) = (Instant::now(), SystemTime::now());
        Ok(data.lease.as_ref().map(|(holder, expires)| OutboxLease {
            holder: holder.clone(),
            expires_at: match expires.checked_duration_since(now) {
                Some(left) => wall + left,
                None => wall - now.duration_since(*expires),
            },
        }))
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }
}

#[async_trait]
impl InboxStore for MemoryStore {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        Ok(self.data().inbox.contains_key(&(group.to_owned(), event_id)))
    }

    async fn mark_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        let marker = (group.to_owned(), event_id);
        let mut data = self.data();
        if data.inbox.contains_key(&marker) {
            return Ok(false);
        }
        data.inbox.insert(marker, SystemTime::now());
        Ok(true)
    }

    async fn prune_inbox(&self, before: SystemTime) -> Result<u64, Error> {
        let mut data = self.data();
        let kept = data.inbox.len();
        data.inbox.retain(|_, processed_at| *processed_at >= before);
        Ok((kept - data.inbox.len()) as u64)
    }
}

#[async_trait]
impl CheckpointStore for MemoryStore {
    async fn checkpoint(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self.data().checkpoints.get(name).cloned())
    }

    async fn save_checkpoint(&self, name: &str, value: &str) -> Result<(), Error> {
        self.data().checkpoints.insert(name.to_owned(), value.to_owned());
        Ok(())
    }
}

#[async_trait]
impl Storage for MemoryStore {
    async fn begin(&self) -> Result<Box<dyn Transaction>, Error> {
        Ok(Box::new(MemoryTransaction {
            store: self.clone(),
            appends: Vec::new(),
            outbox: Vec::new(),
            markers: Vec::new(),
            checkpoints: Vec::new(),
            savepoints: Vec::new(),
        }))
    }

    fn snapshots(&self) -> Option<&dyn SnapshotStore> {
        Some(self)
    }
}

#[async_trait]
impl DeadLetterStore for MemoryStore {
    async fn put(&self, letter: DeadLetter) -> Result<(), Error> {
        let mut data = self.data();
        match data.dead_letters.iter_mut().find(|l| l.id == letter.id) {
            Some(existing) => *existing = letter,
            None => data.dead_letters.push(letter),
        }
        Ok(())
    }

    async fn list(&self, group: Option<&str>) -> Result<Vec<DeadLetter>, Error> {
        let data = self.data();
        Ok(data
            .dead_letters
            .iter()
            .filter(|l| group.is_none_or(|g| l.group == g))
            .cloned()
            .collect())
    }

    async fn take(&self, id: Uuid) -> Result<Option<DeadLetter>, Error> {
        let mut data = self.data();
        Ok(data
            .dead_letters
            .iter()
            .position(|l| l.id == id)
            .map(|i| data.dead_letters.remove(i)))
    }

    async fn purge(&self, group: &str) -> Result<u64, Error> {
        let mut data = self.data();
        let before = data.dead_letters.len();
        data.dead_letters.retain(|l| l.group != group);
        Ok((before - data.dead_letters.len()) as u64)
    }

    async fn counts(&self) -> Result<BTreeMap<String, u64>, Error> {
        let mut counts = BTreeMap::new();
        for letter in &self.data().dead_letters {
            *counts.entry(letter.group.clone()).or_default() += 1;
        }
        Ok(counts)
    }

    async fn blocked_keys(&self, group: &str) -> Result<HashMap<String, Uuid>, Error> {
        let mut keys = HashMap::new();
        for letter in self.data().dead_letters.iter().filter(|l| l.group == group) {
            if let Some(key) = &letter.envelope.key {
                keys.entry(key.clone()).or_insert(letter.id);
            }
        }
        Ok(keys)
    }
}
