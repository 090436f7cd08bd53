//! The in-process transport: Kafka's partition and consumer-group semantics inside one
//! process, with bounded memory.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{partition_for_key, Consumer, Transport};
use crate::{BoxFuture, Envelope, Error, OutboxProgress};

mod consumer;
mod settle;

/// The default transport: topics, partitions and consumer groups in memory.
///
/// - Each topic has a fixed number of partitions (8 unless configured); an event's key
///   picks its partition as Kafka's default partitioner does, events without key go round
///   robin.
/// - Every consumer group that subscribed to a topic reads every event published after it
///   subscribed; the members of a group share the partitions and each partition is read in
///   order by one member at a time.
/// - An event stays in memory until every group has committed it. A partition holds at
///   most `capacity` uncommitted events (1024 unless configured); `publish` waits for room,
///   so a slow group slows publishers down instead of growing memory. A group keeps its
///   place when its last member leaves, so events published meanwhile wait for it (and
///   fill the partition); events of a topic no group has subscribed to are dropped.
///
/// Clones share the same topics: give one clone to several buses to run several instances
/// of a group in one process.
#[derive(Clone, Debug)]
pub struct InProcess {
    inner: Arc<Inner>,
}

/// Configures an [`InProcess`] transport.
#[derive(Clone, Debug)]
pub struct InProcessBuilder {
    partitions: u32,
    topic_partitions: HashMap<String, u32>,
    capacity: usize,
    max_batch: usize,
    max_message_bytes: Option<usize>,
}

#[derive(Debug)]
struct Inner {
    config: InProcessBuilder,
    topics: Mutex<Topics>,
    next_member: AtomicU64,
    progress: Notify,
    /// The relays of the buses whose outbox feeds this transport.
    outboxes: Mutex<Vec<OutboxProgress>>,
}

/// The topics by name, looked up for every event published.
type Topics = HashMap<Arc<str>, Arc<Topic>, BuildHasherDefault<NameHasher>>;

/// FNV-1a for the topic map: SipHash, which resists keys chosen by an attacker, cost more
/// than the rest of a publish's lookup, and topic names come from the program itself.
struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    partitions: Box<[Partition]>,
    round_robin: AtomicU32,
    groups: Mutex<HashMap<Arc<str>, GroupState>>,
}

#[derive(Debug, Default)]
struct GroupState {
    members: Vec<Arc<Member>>,
    /// Partitions owned by each member, by member id.
    assignment: HashMap<u64, Vec<u32>>,
    generation: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Member {
    id: u64,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Partition {
    log: Mutex<Log>,
    space: Notify,
}

#[derive(Debug, Default)]
struct Log {
    /// Offset of `entries[0]`.
    base: u64,
    entries: VecDeque<Arc<Envelope>>,
    cursors: Vec<Cursor>,
}

#[derive(Debug)]
struct Cursor {
    group: Arc<str>,
    committed: u64,
    owner: Option<Arc<Member>>,
}

impl Log {
    fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    fn cursor(&mut self, group: &str) -> Option<&mut Cursor> {
        self.cursors.iter_mut().find(|c| &*c.group == group)
    }

    /// Drops the entries every group has committed. Returns whether any were dropped.
    fn trim(&mut self) -> bool {
        let Some(low) = self.cursors.iter().map(|c| c.committed).min() else {
            return false;
        };
        let drop = low.saturating_sub(self.base).min(self.entries.len() as u64) as usize;
        self.entries.drain(..drop);
        self.base += drop as u64;
        drop > 0
    }
}

impl Default for InProcessBuilder {
    fn default() -> Self {
        InProcessBuilder {
            partitions: 8,
            topic_partitions: HashMap::new(),
            capacity: 1024,
            max_batch: 256,
            max_message_bytes: None,
        }
    }
}

impl InProcessBuilder {
    /// Partitions of every topic not configured with [`topic`](Self::topic). Default 8.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Partitions of one topic.
    pub fn topic(mut self, topic: impl Into<String>, partitions: u32) -> Self {
        self.topic_partitions.insert(topic.into(), partitions.max(1));
        self
    }

    /// Uncommitted events one partition holds before `publish` waits. Default 1024.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Most records one poll returns. Default 256.
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Refuses, for good ([`Error::Rejected`]), events whose payload is larger than
    /// `bytes`, as a broker refuses a message over its limit (Kafka's `message.max.bytes`
    /// is about 1 MB by default): a program tried in-process meets its oversized events
    /// before production does. Default: no limit.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = Some(bytes);
        self
    }

    /// Builds the transport.
    pub fn build(self) -> InProcess {
        InProcess {
            inner: Arc::new(Inner {
                config: self,
                topics: Mutex::default(),
                next_member: AtomicU64::new(1),
                progress: Notify::new(),
                outboxes: Mutex::default(),
            }),
        }
    }
}

impl Default for InProcess {
    fn default() -> Self {
        InProcess::builder().build()
    }
}

impl InProcess {
    /// A transport with default settings.
    pub fn new() -> Self {
        InProcess::default()
    }

    /// Configures a transport.
    pub fn builder() -> InProcessBuilder {
        InProcessBuilder::default()
    }

    /// Waits until every group has committed every event published so far, and every
    /// event committed so far through a unit of work of a bus that relays its outbox here:
    /// the moment a test can check the handlers' effects.
    ///
    /// [`EventBus::settled`](crate::EventBus::settled) is the same wait for one bus's
    /// groups, with a [timeout](crate::EventBus::settled_within) variant.
    pub async fn wait_idle(&self) {
        self.wait_outboxes().await;
        loop {
            let mut progress = pin!(self.inner.progress.notified());
            progress.as_mut().enable();
            if self.is_idle() {
                return;
            }
            progress.await;
        }
    }

    /// Whether every group has committed every event published so far, and every outbox
    /// that relays here has relayed what was committed to it.
    pub fn is_idle(&self) -> bool {
        if !self.outboxes_relayed() {
            return false;
        }
        let topics: Vec<_> = lock(&self.inner.topics).values().cloned().collect();
        topics.iter().flat_map(|t| t.partitions.iter()).all(|p| {
            let log = lock(&p.log);
            log.cursors.iter().all(|c| c.committed >= log.end())
        })
    }

    /// The end of every partition now: what [`Transport::until_handled`] waits for.
    fn ends(&self) -> Vec<(Arc<Topic>, u32, u64)> {
        let topics: Vec<_> = lock(&self.inner.topics).values().cloned().collect();
        let mut ends = Vec::new();
        for topic in topics {
            for (index, partition) in topic.partitions.iter().enumerate() {
                let end = lock(&partition.log).end();
                if end > 0 {
                    ends.push((topic.clone(), index as u32, end));
                }
            }
        }
        ends
    }

    /// Events published to `topic` that `group` has not committed yet.
    pub fn lag(&self, topic: &str, group: &str) -> u64 {
        let Some(topic) = lock(&self.inner.topics).get(topic).cloned() else {
            return 0;
        };
        let lag = topic.partitions.iter().map(|p| {
            let mut log = lock(&p.log);
            let end = log.end();
            log.cursor(group).map_or(0, |c| end - c.committed)
        });
        lag.sum()
    }

    fn topic(&self, name: &str) -> Arc<Topic> {
        let mut topics = lock(&self.inner.topics);
        if let Some(topic) = topics.get(name) {
            return topic.clone();
        }
        let config = &self.inner.config;
        let count = config
            .topic_partitions
            .get(name)
            .copied()
            .unwrap_or(config.partitions);
        let name: Arc<str> = name.into();
        let topic = Arc::new(Topic {
            name: name.clone(),
            partitions: (0..count).map(|_| Partition::default()).collect(),
            round_robin: AtomicU32::new(0),
            groups: Mutex::default(),
        });
        topics.insert(name, topic.clone());
        topic
    }
}

#[async_trait]
impl Transport for InProcess {
    // Not an `async fn`: an event that finds room (nearly all) is appended at the call,
    // and what is handed back is a future without state, which a `Box` holds without
    // allocating. The `async fn` form moved the envelope into a boxed future of 576 bytes
    // for every event, five copies of it (callgrind, `fanout`).
    fn publish<'life0, 'async_trait>(
        &'life0 self,
        envelope: Envelope,
    ) -> BoxFuture<'async_trait, Result<(), Error>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        if let Some(limit) = self.inner.config.max_message_bytes {
            if envelope.payload.len() > limit {
                let error = Error::rejected(
                    envelope.id,
                    format!(
                        "the payload of {} bytes is over the transport's limit of {limit} bytes \
                         (`InProcessBuilder::max_message_bytes`): make the event smaller or split \
                         it, or raise the limit",
                        envelope.payload.len()
                    ),
                );
                return Box::pin(std::future::ready(Err(error)));
            }
        }
        let topic = self.topic(&envelope.topic);
        let count = topic.partitions.len() as u32;
        let index = match &envelope.key {
            Some(key) => partition_for_key(key.as_bytes(), count),
            None => topic.round_robin.fetch_add(1, Ordering::Relaxed) % count,
        };
        let capacity = self.inner.config.capacity;
        match topic.partitions[index as usize].append(Arc::new(envelope), capacity) {
            Ok(()) => Box::pin(Appended),
            // Full: waits for the groups to commit.
            Err(mut envelope) => Box::pin(async move {
                let partition = &topic.partitions[index as usize];
                loop {
                    let mut space = pin!(partition.space.notified());
                    space.as_mut().enable();
                    envelope = match partition.append(envelope, capacity) {
                        Ok(()) => return Ok(()),
                        Err(envelope) => envelope,
                    };
                    space.await;
                }
            }),
        }
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, Error> {
        Ok(self.join(group, topics))
    }

    fn until_settled(&self, groups: &[(&str, &[&str])]) -> Option<BoxFuture<'static, Result<(), Error>>> {
        Some(self.until_groups_committed(groups))
    }

    async fn unsettled(&self, groups: &[(&str, &[&str])]) -> Option<String> {
        self.describe_lag(groups)
    }

    fn relays_from(&self, outbox: OutboxProgress) {
        self.add_outbox(outbox);
    }

    /// Events live only in this process: resolves once every group has committed every
    /// event published before the call.
    fn until_handled(&self) -> Option<BoxFuture<'static, ()>> {
        let mut ends = self.ends();
        let inner = self.inner.clone();
        Some(Box::pin(async move {
            loop {
                let mut progress = pin!(inner.progress.notified());
                progress.as_mut().enable();
                ends.retain(|(topic, partition, end)| {
                    let log = lock(&topic.partitions[*partition as usize].log);
                    log.cursors.iter().any(|c| c.committed < *end)
                });
                if ends.is_empty() {
                    return;
                }
                progress.await;
            }
        }))
    }
}

/// The future of a publish whose event was appended at the call: ready, without state.
struct Appended;

impl std::future::Future for Appended {
    type Output = Result<(), Error>;

    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl Partition {
    /// Appends `envelope` and wakes the members that read this partition, if it holds
    /// fewer than `capacity` uncommitted events; hands it back if it is full.
    fn append(&self, envelope: Arc<Envelope>, capacity: usize) -> Result<(), Arc<Envelope>> {
        let mut log = lock(&self.log);
        if log.cursors.is_empty() {
            // Nobody listens: the offset is used, the event goes nowhere.
            log.base += 1;
            return Ok(());
        }
        if log.entries.len() >= capacity {
            return Err(envelope);
        }
        log.entries.push_back(envelope);
        for owner in log.cursors.iter().filter_map(|c| c.owner.as_ref()) {
            owner.wake.notify_one();
        }
        Ok(())
    }
}

impl Topic {
    fn join(&self, group: &Arc<str>, member: &Arc<Member>) -> Arc<AtomicU64> {
        let mut groups = lock(&self.groups);
        let state = groups.entry(group.clone()).or_insert_with(|| {
            // A new group starts at the end of each partition, as Kafka's
            // `auto.offset.reset=latest`.
            for partition in self.partitions.iter() {
                let mut log = lock(&partition.log);
                let committed = log.end();
                log.cursors.push(Cursor {
                    group: group.clone(),
                    committed,
                    owner: None,
                });
            }
            GroupState::default()
        });
        state.members.push(member.clone());
        self.rebalance(group, state);
        state.generation.clone()
    }

    fn leave(&self, group: &str, member: &Member) {
        let mut groups = lock(&self.groups);
        if let Some(state) = groups.get_mut(group) {
            state.members.retain(|m| m.id != member.id);
            self.rebalance(group, state);
        }
    }

    /// Spreads the partitions over the members round robin and tells every member.
    fn rebalance(&self, group: &str, state: &mut GroupState) {
        state.assignment.clear();
        for (index, partition) in self.partitions.iter().enumerate() {
            let owner =
                (!state.members.is_empty()).then(|| state.members[index % state.members.len()].clone());
            if let Some(owner) = &owner {
                state.assignment.entry(owner.id).or_default().push(index as u32);
            }
            if let Some(cursor) = lock(&partition.log).cursor(group) {
                cursor.owner = owner;
            }
        }
        state.generation.fetch_add(1, Ordering::AcqRel);
        for member in &state.members {
            member.wake.notify_one();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves the data consistent (every update is
    // a single assignment or push), so poisoning is ignored.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
