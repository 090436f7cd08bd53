//! One member of a Kafka consumer group, as eventflow's [`Consumer`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventflow::transport::{Consumer, Record, TransactionalSink};
use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{base_config, Inner};
use crate::config::StartFrom;
use crate::foreign::Foreign;
use crate::group_protocol::{is_consumer_protocol, is_incremental, GroupProtocol};
use crate::headers;
use crate::member::{warn_if_never_assigned, Member};
use crate::start_offsets;
use crate::transaction::{Transaction, TransactionSink};
use crate::Error;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How many polled records take one unit of the runtime's cooperative budget.
const RECORDS_PER_BUDGET_UNIT: usize = 8;

pub(crate) struct KafkaConsumer {
    inner: Arc<Inner>,
    group: String,
    consumer: Option<Arc<StreamConsumer<Member>>>,
    /// The topics read so far, by Kafka name.
    topic_names: HashMap<String, Topic>,
    /// The topic of the last message read, from `topic_names`.
    last_topic: Option<Topic>,
    /// The name and content type of the last message read.
    last_texts: headers::LastTexts,
    /// How many records the last poll returned.
    last_poll: usize,
    /// Messages that are not eventflow events, by position, until they are dead-lettered.
    foreign: HashMap<(Arc<str>, u32, u64), Foreign>,
    /// Transient errors since the last message, to say when consuming resumes.
    transient_errors: u64,
    /// In a transactional group: the member's transaction, which spans a polled batch.
    transaction: Option<Arc<Transaction>>,
    /// In a transactional group: the first offset of the polled batch per partition, where
    /// to read again if its transaction aborts.
    batch_start: HashMap<(Arc<str>, u32), u64>,
}

/// A topic as its records carry it, worked out once per topic: its Kafka name, shared by
/// the records, and the event topic of their envelopes (the name without the transport's
/// topic prefix).
#[derive(Clone)]
struct Topic {
    kafka: Arc<str>,
    event: Cow<'static, str>,
}

impl Topic {
    fn new(kafka: &str, prefix: &str) -> Self {
        Topic {
            kafka: kafka.into(),
            event: headers::known_text(kafka.strip_prefix(prefix).unwrap_or(kafka)),
        }
    }
}

impl KafkaConsumer {
    /// Creates a member of `group` on `topics` (which exist) and joins the group.
    pub(crate) async fn join(inner: Arc<Inner>, group: &str, topics: Vec<String>) -> Result<Self, Error> {
        let transaction = match inner.config.transactional_groups.contains(group) {
            true => Some(Transaction::start(inner.clone(), group).await?),
            false => None,
        };
        let config = &inner.config;
        let group_id = config.group_id(group);
        let mut client = base_config(config);
        client
            .set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false");
        if config.group_protocol != GroupProtocol::Classic {
            client.set("group.protocol", config.group_protocol.name());
        }
        for (key, value) in &config.consumer_config {
            client.set(key, value);
        }
        let member = Member::new(group, is_incremental(&client));
        let consumer: StreamConsumer<Member> = client
            .create_with_context(member)
            .map_err(|e| inner.error(format!("creating a consumer for group `{group_id}`"), e))?;
        let consumer = Arc::new(consumer);
        if is_consumer_protocol(&client) {
            warn_if_never_assigned(Arc::downgrade(&consumer), group_id.clone());
        }
        let start_from = config.start_from;
        let joining = consumer.clone();
        let joined_inner = inner.clone();
        let subscribed_topics = topics;
        tokio::task::spawn_blocking(move || {
            if start_from == StartFrom::Latest {
                start_offsets::start_new_partitions_at_end(
                    &joined_inner,
                    &joining,
                    &group_id,
                    &subscribed_topics,
                )?;
            }
            let names: Vec<&str> = subscribed_topics.iter().map(String::as_str).collect();
            joining
                .subscribe(&names)
                .map_err(|e| joined_inner.error(format!("subscribing group `{group_id}` to {names:?}"), e))
        })
        .await
        .map_err(|panic| Error::Config(format!("joining the consumer group panicked: {panic}")))??;
        Ok(KafkaConsumer {
            inner,
            group: group.to_owned(),
            consumer: Some(consumer),
            topic_names: HashMap::new(),
            last_topic: None,
            last_texts: headers::LastTexts::default(),
            last_poll: 0,
            foreign: HashMap::new(),
            transient_errors: 0,
            transaction,
            batch_start: HashMap::new(),
        })
    }

    fn consumer(&self) -> &Arc<StreamConsumer<Member>> {
        self.consumer
            .as_ref()
            .expect("the consumer is only taken by close or drop")
    }

    fn record(&mut self, message: &BorrowedMessage<'_>) -> Record {
        let kafka_topic = message.topic();
        let Topic { kafka: topic, event } = match &self.last_topic {
            // Most messages come from the topic of the one before.
            Some(last) if *last.kafka == *kafka_topic => last.clone(),
            _ => {
                let prefix = &self.inner.config.topic_prefix;
                let topic = self
                    .topic_names
                    .entry(kafka_topic.to_owned())
                    .or_insert_with(|| Topic::new(kafka_topic, prefix))
                    .clone();
                self.last_topic = Some(topic.clone());
                topic
            }
        };
        let partition = message.partition() as u32;
        let offset = message.offset() as u64;
        let envelope = match crate::wire::decode_on(
            message.headers(),
            event.clone(),
            message.key(),
            message.payload(),
            message.timestamp().to_millis(),
            &mut self.last_texts,
        ) {
            Ok(envelope) => envelope,
            Err(reason) => {
                tracing::error!(
                    group = %self.group, topic = kafka_topic, partition, offset, %reason,
                    "a message on a subscribed topic is not an eventflow event; dead-lettering it"
                );
                let foreign = Foreign::of(message, reason);
                let envelope = foreign.envelope(message, &event, kafka_topic);
                self.foreign.insert((topic.clone(), partition, offset), foreign);
                envelope
            }
        };
        Record {
            topic,
            partition,
            offset,
            envelope: Arc::new(envelope),
        }
    }
}

impl KafkaConsumer {
    /// Dead-letters `record` if it is a message that is not an eventflow event; whether to
    /// commit it. A partition whose foreign message could not be dead-lettered is blocked
    /// from there on (`blocked`, where to read it again; `failed`, why).
    async fn settle_foreign(
        &mut self,
        record: &Record,
        blocked: &mut HashMap<(Arc<str>, u32), u64>,
        failed: &mut Option<Error>,
    ) -> bool {
        let partition = (record.topic.clone(), record.partition);
        if let Some(foreign) = self
            .foreign
            .remove(&(record.topic.clone(), record.partition, record.offset))
        {
            if blocked.contains_key(&partition) {
                return false;
            }
            if let Err(error) = foreign.dead_letter(&self.inner, &self.group, record).await {
                // Not dead-lettered, so not committed: read it again from here.
                blocked.insert(partition, record.offset);
                failed.get_or_insert(error);
                return false;
            }
        }
        !blocked.contains_key(&partition)
    }
}

impl KafkaConsumer {
    async fn poll_records(&mut self) -> Result<Vec<Record>, eventflow::Error> {
        let consumer = self.consumer().clone();
        let max = self.inner.config.max_batch;
        let member = consumer.context();
        let mut revocations = member.revocations();
        member.take_revoked();
        // Sized as the last poll was: a full batch grows it eight times otherwise.
        let mut records = Vec::with_capacity(self.last_poll.min(max));
        // One stream for the whole poll: `recv` makes one per message, and each registers
        // and unregisters its waker under a lock.
        let mut stream = consumer.stream();
        loop {
            let message = if records.is_empty() {
                stream.next().await
            } else {
                match stream.next().now_or_never() {
                    Some(message) => message,
                    // That poll of the stream may have served a rebalance, with no message.
                    None => return Ok(leave_revoked(member, &mut revocations, records)),
                }
            };
            let message = message.expect("a Kafka consumer's stream never ends");
            let message = match message {
                Ok(message) => message,
                // Not fatal (a broker down, a connection reset): librdkafka recovers by
                // itself, but only while it is polled, since rebalances and the rejoin
                // after a lost session are served from this queue. Returning the error
                // would make the worker back off between polls and drain one stale
                // error per poll while the group waits for the member.
                Err(KafkaError::MessageConsumption(code)) => {
                    self.transient_errors += 1;
                    tracing::debug!(group = %self.group, %code, "transient consumer error; polling on");
                    continue;
                }
                Err(error) if records.is_empty() => {
                    return Err(self
                        .inner
                        .error(format!("consuming for group `{}`", self.group), error)
                        .into())
                }
                Err(error) => {
                    tracing::warn!(group = %self.group, %error, "consuming failed; handling what was read");
                    return Ok(leave_revoked(member, &mut revocations, records));
                }
            };
            if self.transient_errors > 0 {
                tracing::info!(group = %self.group, errors = self.transient_errors, "the Kafka consumer is receiving again");
                self.transient_errors = 0;
            }
            records = leave_revoked(member, &mut revocations, records);
            let record = self.record(&message);
            records.push(record);
            if records.len() >= max {
                return Ok(records);
            }
            // A stream with messages ready never waits, and the commit no longer does: the
            // runtime's budget lets it run other tasks (a single-threaded one, the
            // publishers) once the member has used its share. A record takes a unit per
            // eight: a unit is sized for a socket read, and each yield on a multi-threaded
            // runtime wakes an idle worker, which cost a tenth of consuming's CPU when it
            // came every 128 records.
            if records.len() % RECORDS_PER_BUDGET_UNIT == 0 {
                tokio::task::coop::consume_budget().await;
            }
        }
    }

    /// Reads the current batch of a transactional member again, after its transaction
    /// was aborted. A partition revoked meanwhile is read by its new owner from the
    /// committed offset instead.
    fn rewind_batch(&mut self) -> Vec<(Arc<str>, u32, u64)> {
        self.batch_start.drain().map(|((t, p), o)| (t, p, o)).collect()
    }
}

/// `records` without those of partitions revoked since `revocations` was counted (which it
/// is brought up to). Records taken before a rebalance from a partition this member lost
/// are left to their new owner, which reads from the committed offset: handled here, their
/// commit would fail and the new owner would handle them again. The others stay: an
/// incremental rebalance (cooperative, KIP-848) keeps a partition's fetch position, so a
/// record dropped there would be skipped for good.
fn leave_revoked(member: &Member, revocations: &mut u64, mut records: Vec<Record>) -> Vec<Record> {
    let now = member.revocations();
    if now != *revocations {
        *revocations = now;
        let revoked = member.take_revoked();
        records.retain(|record| !revoked.contains(&(record.topic.to_string(), record.partition as i32)));
    }
    records
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self) -> Result<Vec<Record>, eventflow::Error> {
        let records = self.poll_records().await?;
        self.last_poll = records.len();
        let Some(transaction) = self.transaction.clone() else {
            return Ok(records);
        };
        // Records come in offset order per partition: the first one is where the batch
        // starts.
        self.batch_start.clear();
        for record in &records {
            self.batch_start
                .entry((record.topic.clone(), record.partition))
                .or_insert(record.offset);
        }
        if let Err(error) = transaction.begin() {
            let rewind = self.rewind_batch();
            let consumer = self.consumer().clone();
            let _ = tokio::task::spawn_blocking(move || seek_all(&consumer, &rewind)).await;
            return Err(error.into());
        }
        Ok(records)
    }

    fn transactional_sink(&self) -> Option<Arc<dyn TransactionalSink>> {
        let transaction = self.transaction.clone()?;
        Some(Arc::new(TransactionSink { transaction }))
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), eventflow::Error> {
        if records.is_empty() {
            if let Some(transaction) = self.transaction.clone().filter(|t| t.is_open()) {
                // Nothing of the batch was finished: none of its output may stay.
                let rewind = self.rewind_batch();
                let consumer = self.consumer().clone();
                let _ = tokio::task::spawn_blocking(move || {
                    transaction.abort();
                    seek_all(&consumer, &rewind)
                })
                .await;
            }
            return Ok(());
        }
        // The next offset per partition: a batch touches a few partitions, so a list.
        let mut next: Vec<(&Arc<str>, u32, u64)> = Vec::new();
        let mut failed: Option<Error> = None;
        let mut blocked: HashMap<(Arc<str>, u32), u64> = HashMap::new();
        for record in records {
            // Only a foreign message can block a partition.
            let settling = !self.foreign.is_empty() || !blocked.is_empty();
            if settling && !self.settle_foreign(record, &mut blocked, &mut failed).await {
                continue;
            }
            let offset = record.offset + 1;
            match next
                .iter_mut()
                .find(|(topic, partition, _)| *partition == record.partition && **topic == record.topic)
            {
                Some((_, _, at)) => *at = (*at).max(offset),
                None => next.push((&record.topic, record.partition, offset)),
            }
        }
        let mut offsets = TopicPartitionList::with_capacity(next.len());
        for (topic, partition, offset) in next {
            offsets
                .add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64))
                .map_err(|e| self.inner.error("building an offset list", e))?;
        }
        let consumer = self.consumer().clone();
        let rewind: Vec<(Arc<str>, u32, u64)> = blocked.into_iter().map(|((t, p), o)| (t, p, o)).collect();
        if let Some(transaction) = self.transaction.clone() {
            let batch = self.rewind_batch();
            let group = self.group.clone();
            let committed = tokio::task::spawn_blocking(move || {
                seek_all(&consumer, &rewind);
                let committed = transaction.commit(&offsets, consumer.group_metadata());
                if let Err(error) = &committed {
                    tracing::warn!(%group, %error, "the transaction of a batch was aborted; reading the batch again");
                    seek_all(&consumer, &batch);
                }
                committed
            })
            .await
            .map_err(|panic| Error::Config(format!("committing a transaction panicked: {panic}")))?;
            return match (committed, failed) {
                (Ok(()), None) => Ok(()),
                (Err(error), _) | (Ok(()), Some(error)) => Err(error.into()),
            };
        }
        // Storing and committing asynchronously only queue work for librdkafka's threads,
        // so they run here; a seek waits for the broker, on a blocking thread.
        let store_and_commit = move |consumer: &StreamConsumer<Member>| {
            if offsets.count() == 0 {
                return Ok(());
            }
            // Stored first, so a rebalance or close commits them synchronously whatever
            // became of the asynchronous commit.
            consumer.store_offsets(&offsets)?;
            consumer.commit(&offsets, CommitMode::Async)
        };
        let committed = match rewind.is_empty() {
            true => store_and_commit(&consumer),
            false => tokio::task::spawn_blocking(move || {
                seek_all(&consumer, &rewind);
                store_and_commit(&consumer)
            })
            .await
            .map_err(|panic| Error::Config(format!("committing offsets panicked: {panic}")))?,
        };
        if let Err(error) = committed {
            return Err(self
                .inner
                .error(format!("committing offsets of group `{}`", self.group), error)
                .into());
        }
        match failed {
            None => Ok(()),
            Some(error) => Err(error.into()),
        }
    }

    async fn close(&mut self) -> Result<(), eventflow::Error> {
        if let Some(consumer) = self.consumer.take() {
            let group = self.group.clone();
            let transaction = self.transaction.take();
            // Committing and leaving the group block until the broker answers.
            let _ = tokio::task::spawn_blocking(move || {
                // The worker commits every batch it polled; one still open was cut short.
                if let Some(transaction) = transaction {
                    transaction.abort();
                }
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(error) => {
                        tracing::warn!(%group, %error, "committing on close failed; those events are handled again")
                    }
                }
                consumer.context().leave();
                drop(consumer)
            })
            .await;
        }
        Ok(())
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            let transaction = self.transaction.take();
            let leave = move || {
                // A member dropped mid-batch leaves nothing of the batch visible.
                if let Some(transaction) = transaction {
                    transaction.abort();
                }
                drop(consumer)
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(leave)),
                Err(_) => leave(),
            }
        }
    }
}

/// Moves each partition's read position back to `offset`; a partition this member no
/// longer owns is skipped, its new owner reads from the committed offset.
fn seek_all(consumer: &StreamConsumer<Member>, positions: &[(Arc<str>, u32, u64)]) {
    for (topic, partition, offset) in positions {
        let _ = consumer.seek(
            topic,
            *partition as i32,
            Offset::Offset(*offset as i64),
            METADATA_TIMEOUT,
        );
    }
}
