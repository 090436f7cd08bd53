//! Exactly-once Kafka→Kafka: the transactional producer of one member of a
//! [transactional group](crate::KafkaBuilder::transactional_group), and the transport its
//! handlers' follow-ups go through.
//!
//! A transaction spans one polled batch: [`KafkaConsumer::poll`](eventflow::transport::Consumer::poll)
//! begins it, the follow-ups of the batch's handlers are produced into it, and
//! [`KafkaConsumer::commit`](eventflow::transport::Consumer::commit) adds the batch's
//! offsets (`send_offsets_to_transaction`, with the consumer's group metadata so the
//! group coordinator fences a member that lost its partitions) and commits it. Any failure
//! aborts it and the member reads the batch again.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use eventflow::transport::TransactionalSink;
use eventflow::{DeadLetter, Envelope};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::TopicPartitionList;

use crate::client::{base_config, Inner};
use crate::Error;

/// How long a transactional call to the broker may block.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The transactional producer of one member, and whether a transaction is open.
pub(crate) struct Transaction {
    inner: Arc<Inner>,
    group: String,
    id: String,
    producer: FutureProducer,
    state: Mutex<State>,
    _slot: Slot,
}

#[derive(Default)]
struct State {
    open: bool,
    /// Why the open transaction cannot commit (a follow-up that was not written).
    failed: Option<String>,
}

/// A member's slot, the suffix of its `transactional.id`: the lowest one no live member of
/// the group on this transport holds, so a bus restarted with the same configuration
/// takes the ids of its predecessor.
struct Slot {
    inner: Arc<Inner>,
    group_id: String,
    slot: usize,
}

impl Slot {
    fn take(inner: &Arc<Inner>, group_id: &str) -> Slot {
        let mut slots = lock(&inner.transactional_slots);
        let used = slots.entry(group_id.to_owned()).or_default();
        let slot = (0..).find(|n| !used.contains(n)).unwrap_or_default();
        used.insert(slot);
        Slot {
            inner: inner.clone(),
            group_id: group_id.to_owned(),
            slot,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(used) = lock(&self.inner.transactional_slots).get_mut(&self.group_id) {
            used.remove(&self.slot);
        }
    }
}

impl Transaction {
    /// Creates the member's transactional producer and registers its `transactional.id`
    /// with the broker (`init_transactions`), which aborts whatever a previous producer
    /// with that id left open and fences it.
    pub(crate) async fn start(inner: Arc<Inner>, group: &str) -> Result<Arc<Self>, Error> {
        let config = &inner.config;
        let group_id = config.group_id(group);
        let slot = Slot::take(&inner, &group_id);
        let id = format!("{}{group_id}.{}", inner.transactional_id_prefix, slot.slot);
        let timeout = config.delivery_timeout.as_millis().to_string();
        let mut client = base_config(config);
        client
            .set("transactional.id", &id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.linger.as_millis().to_string())
            .set("batch.num.messages", config.batch_size.to_string())
            .set("message.timeout.ms", &timeout)
            .set("transaction.timeout.ms", &timeout)
            .set("partitioner", "murmur2_random");
        for (key, value) in &config.producer_config {
            client.set(key, value);
        }
        let producer: FutureProducer = client
            .create()
            .map_err(|e| inner.error(format!("creating the transactional producer `{id}`"), e))?;
        let initializing = producer.clone();
        tokio::task::spawn_blocking(move || initializing.init_transactions(TIMEOUT))
            .await
            .map_err(|panic| Error::Config(format!("initializing transactions panicked: {panic}")))?
            .map_err(|e| inner.error(format!("initializing transactions of `{id}`"), e))?;
        tracing::debug!(group, transactional.id = %id, "transactional member ready");
        Ok(Arc::new(Transaction {
            inner,
            group: group.to_owned(),
            id,
            producer,
            state: Mutex::default(),
            _slot: slot,
        }))
    }

    /// Begins the transaction of a polled batch, unless one is open. Does not wait for the
    /// broker.
    pub(crate) fn begin(&self) -> Result<(), Error> {
        let mut state = lock(&self.state);
        if !state.open {
            self.producer
                .begin_transaction()
                .map_err(|e| self.error("beginning a transaction", e))?;
            state.open = true;
            state.failed = None;
        }
        Ok(())
    }

    /// Produces `envelopes` in the open transaction and waits for the broker. A failure
    /// dooms the transaction: [`Transaction::commit`] aborts it.
    async fn publish(&self, envelopes: &[Envelope]) -> Result<(), Error> {
        if !lock(&self.state).open {
            return Err(Error::Config(format!(
                "group `{}` published a follow-up outside of a polled batch; publish from a handler's `Context`",
                self.group
            )));
        }
        let published = self.produce(envelopes).await;
        if let Err(error) = &published {
            lock(&self.state).failed.get_or_insert_with(|| error.to_string());
        }
        published
    }

    async fn produce(&self, envelopes: &[Envelope]) -> Result<(), Error> {
        let mut pending = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let topic = self.inner.event_topic(&envelope.topic).await?;
            let (headers, timestamp_ms) = crate::wire::encode_timed(envelope, &self.inner.config);
            let delivery = self
                .inner
                .enqueue_on(
                    &self.producer,
                    &topic.name,
                    envelope.key.as_deref().map(str::as_bytes),
                    &envelope.payload,
                    headers,
                    timestamp_ms,
                )
                .await?;
            pending.push((delivery, topic));
        }
        for (delivery, topic) in pending {
            self.inner.delivered(delivery, &topic.name).await?;
        }
        Ok(())
    }

    /// Writes `letter` to its dead-letter topic in the open transaction, or through the
    /// transport's producer if none is open. A failure dooms the transaction.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), Error> {
        if !lock(&self.state).open {
            return self.inner.publish_dead_letter(letter).await;
        }
        let written = self.inner.publish_dead_letter_on(&self.producer, letter).await;
        if let Err(error) = &written {
            lock(&self.state).failed.get_or_insert_with(|| error.to_string());
        }
        written
    }

    /// Adds `offsets` to the open transaction and commits it; aborts it instead if a
    /// follow-up failed or the commit does. Blocks until the broker answers.
    pub(crate) fn commit(
        &self,
        offsets: &TopicPartitionList,
        metadata: Option<ConsumerGroupMetadata>,
    ) -> Result<(), Error> {
        let mut state = lock(&self.state);
        if !state.open {
            return Ok(());
        }
        if let Some(reason) = state.failed.take() {
            self.abort_open(&mut state);
            return Err(Error::Config(format!(
                "the transaction of group `{}` was aborted because a follow-up was not written ({reason}); the batch is handled again",
                self.group
            )));
        }
        let committed = match (offsets.count(), metadata) {
            (0, _) => Ok(()),
            (_, Some(metadata)) => self
                .producer
                .send_offsets_to_transaction(offsets, &metadata, TIMEOUT)
                .map_err(|e| self.error("adding offsets to the transaction", e)),
            (_, None) => Err(Error::Config(format!(
                "the consumer of group `{}` has no group metadata yet; the batch is handled again",
                self.group
            ))),
        }
        .and_then(|()| {
            self.producer
                .commit_transaction(TIMEOUT)
                .map_err(|e| self.error("committing the transaction", e))
        });
        match committed {
            Ok(()) => {
                state.open = false;
                Ok(())
            }
            Err(error) => {
                self.abort_open(&mut state);
                Err(error)
            }
        }
    }

    /// Aborts the open transaction, if any. Blocks until the broker answers.
    pub(crate) fn abort(&self) {
        let mut state = lock(&self.state);
        if state.open {
            self.abort_open(&mut state);
        }
    }

    fn abort_open(&self, state: &mut State) {
        state.open = false;
        state.failed = None;
        if let Err(error) = self.producer.abort_transaction(TIMEOUT) {
            tracing::warn!(
                group = %self.group, transactional.id = %self.id, %error,
                "aborting a transaction failed; the broker aborts it when it times out or the id is initialized again"
            );
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        lock(&self.state).open
    }

    fn error(&self, what: &str, source: KafkaError) -> Error {
        self.inner
            .error(format!("{what} (transactional.id `{}`)", self.id), source)
    }
}

/// What a transactional member hands the bus as its
/// [`transactional_sink`](eventflow::transport::Consumer::transactional_sink): publishes and
/// dead-letters into the member's open transaction. It holds no [`Kafka`](crate::Kafka)
/// transport, so that the transaction stands on the client ground floor alone.
pub(crate) struct TransactionSink {
    pub(crate) transaction: Arc<Transaction>,
}

#[async_trait]
impl TransactionalSink for TransactionSink {
    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Result<(), eventflow::Error> {
        Ok(self.transaction.publish(&envelopes).await?)
    }

    /// In the open transaction, so a batch that aborts leaves no dead letter on the topic
    /// (it is written again when the batch is handled again); outside of a batch through the
    /// transport's producer.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), eventflow::Error> {
        Ok(self.transaction.dead_letter(letter).await?)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
