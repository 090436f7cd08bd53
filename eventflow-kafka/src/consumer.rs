//! One member of a Kafka consumer group, as eventflow's [`Consumer`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventflow::transport::{Consumer, Record, Transport};
use eventflow::Envelope;
use futures_util::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::StartFrom;
use crate::headers;
use crate::transaction::{Transaction, TransactionalPublisher};
use crate::transport::{base_config, Inner};
use crate::{Error, Kafka};

/// Records that are not eventflow events are handed to the bus as [`Envelope::FOREIGN`]
/// envelopes: the bus lists them as dead letters of every group, and
/// [`KafkaConsumer::commit`] writes the raw message to the group's dead-letter topic.
const FOREIGN: &str = Envelope::FOREIGN;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct KafkaConsumer {
    inner: Arc<Inner>,
    group: String,
    consumer: Option<Arc<StreamConsumer<Member>>>,
    topic_names: HashMap<String, Arc<str>>,
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

struct Foreign {
    reason: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

/// Counts revocations, so a poll can tell that the records it already took belong to a
/// partition that moved.
#[derive(Default)]
pub(crate) struct Member {
    revocations: AtomicU64,
    group: String,
    /// Whether the group uses the cooperative protocol (`cooperative-sticky`): partitions
    /// are then assigned and revoked incrementally.
    cooperative: bool,
    /// Set once the member committed for the last time and is leaving the group.
    leaving: AtomicBool,
}

impl ClientContext for Member {
    /// librdkafka's errors are informational unless fatal: it reconnects, refreshes
    /// metadata and rejoins the group by itself, as long as the member keeps polling.
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::Fatal)) {
            tracing::error!(group = %self.group, %error, reason, "the Kafka consumer failed for good");
        } else {
            tracing::warn!(group = %self.group, %error, reason, "Kafka consumer trouble; librdkafka retries by itself");
        }
    }
}

impl ConsumerContext for Member {
    /// rdkafka's default, without its one hazard: it asks librdkafka for the rebalance
    /// protocol, a request to the consumer group's handle. Once that handle has terminated
    /// (the consumer is closing), librdkafka drops every request to it unanswered and the
    /// caller waits forever (librdkafka#4041, rust-rdkafka#509): a member that was shut
    /// down hung in its final revocation. The protocol is known from the configuration, and
    /// a terminated handle is asked nothing.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        if consumer.closed() {
            return;
        }
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(partitions),
            _ => Rebalance::Error(KafkaError::Rebalance(err.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let assigned = match (err, self.cooperative) {
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, false) => consumer.assign(partitions),
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, true) => {
                consumer.incremental_assign(partitions)
            }
            (_, false) => consumer.unassign(),
            (_, true) => consumer.incremental_unassign(partitions),
        };
        if let Err(error) = assigned {
            tracing::warn!(group = %self.group, %error, "applying a rebalance failed; librdkafka rejoins the group");
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(group = %self.group, %error, "an offset commit failed; the next one or the commit on revoke covers it, or those events are handled again")
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                // Every record handled so far has its offset stored (the worker commits
                // before it polls again, and rebalances are only served while it polls);
                // the commits of those offsets are asynchronous, so finish them now,
                // before the partitions move. A member leaving the group committed already.
                let leaving = self.leaving.load(Ordering::Acquire);
                let committed = match leaving {
                    true => Ok(()),
                    false => consumer.commit_consumer_state(CommitMode::Sync),
                };
                if let Err(error) = committed {
                    if !matches!(error, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
                        tracing::warn!(group = %self.group, %error, "committing before a rebalance failed; the new owner handles those events again");
                    }
                }
                self.revocations.fetch_add(1, Ordering::AcqRel);
                tracing::debug!(group = %self.group, partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Assign(partitions) => {
                tracing::debug!(group = %self.group, partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Error(error) => {
                tracing::error!(group = %self.group, %error, "consumer group rebalance failed");
            }
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
        for (key, value) in &config.consumer_config {
            client.set(key, value);
        }
        let member = Member {
            revocations: AtomicU64::new(0),
            group: group.to_owned(),
            leaving: AtomicBool::new(false),
            cooperative: config
                .consumer_config
                .iter()
                .any(|(key, value)| key == "partition.assignment.strategy" && value.contains("cooperative")),
        };
        let consumer: StreamConsumer<Member> = client
            .create_with_context(member)
            .map_err(|e| inner.error(format!("creating a consumer for group `{group_id}`"), e))?;
        let consumer = Arc::new(consumer);
        let start_from = config.start_from;
        let joining = consumer.clone();
        let joined_inner = inner.clone();
        let subscribed_topics = topics.clone();
        tokio::task::spawn_blocking(move || {
            if start_from == StartFrom::Latest {
                start_new_partitions_at_end(&joined_inner, &joining, &group_id, &subscribed_topics)?;
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
            topic_names: topics.into_iter().map(|t| (t.clone(), t.into())).collect(),
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
        let topic = match self.topic_names.get(kafka_topic) {
            Some(topic) => topic.clone(),
            None => {
                let topic: Arc<str> = kafka_topic.into();
                self.topic_names.insert(kafka_topic.to_owned(), topic.clone());
                topic
            }
        };
        let event_topic = kafka_topic
            .strip_prefix(&self.inner.config.topic_prefix)
            .unwrap_or(kafka_topic);
        let partition = message.partition() as u32;
        let offset = message.offset() as u64;
        let envelope = match headers::decode(
            message.headers(),
            event_topic,
            message.key(),
            message.payload(),
            message.timestamp().to_millis(),
        ) {
            Ok(envelope) => envelope,
            Err(reason) => {
                tracing::error!(
                    group = %self.group, topic = kafka_topic, partition, offset, %reason,
                    "a message on a subscribed topic is not an eventflow event; dead-lettering it"
                );
                self.foreign.insert(
                    (topic.clone(), partition, offset),
                    Foreign {
                        reason,
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().unwrap_or_default().to_vec(),
                        headers: message.headers().map(|h| h.detach()),
                    },
                );
                foreign_envelope(
                    message,
                    event_topic,
                    kafka_topic,
                    reason_of(&self.foreign, &topic, partition, offset),
                )
            }
        };
        Record {
            topic,
            partition,
            offset,
            envelope: Arc::new(envelope),
        }
    }

    /// Writes a message that is not an eventflow event to the group's dead-letter topic.
    async fn dead_letter_foreign(&self, record: &Record, foreign: &Foreign) -> Result<(), Error> {
        let dlq = self
            .inner
            .config
            .dead_letter_topic_for(&record.topic, &self.group);
        self.inner.ensure_topic(&dlq).await?;
        let (partition, offset) = (record.partition.to_string(), record.offset.to_string());
        let failed_at = headers::millis_since_epoch(std::time::SystemTime::now()).to_string();
        let added = [
            (headers::ERROR, foreign.reason.as_str()),
            (headers::ATTEMPTS, "0"),
            (headers::GROUP, self.group.as_str()),
            (headers::ORIGIN_TOPIC, &record.topic),
            (headers::ORIGIN_PARTITION, &partition),
            (headers::ORIGIN_OFFSET, &offset),
            (headers::FAILED_AT, &failed_at),
        ];
        let mut out = OwnedHeaders::new();
        if let Some(original) = &foreign.headers {
            for h in original.iter() {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        for (key, value) in added {
            out = out.insert(Header {
                key,
                value: Some(value),
            });
        }
        let delivery = self
            .inner
            .enqueue(
                &dlq,
                foreign.key.as_deref(),
                &foreign.payload,
                out,
                headers::millis_since_epoch(std::time::SystemTime::now()),
            )
            .await?;
        self.inner.delivered(delivery, &dlq).await
    }
}

/// The reason stored for the foreign message at a position.
fn reason_of(
    foreign: &HashMap<(Arc<str>, u32, u64), Foreign>,
    topic: &Arc<str>,
    partition: u32,
    offset: u64,
) -> String {
    foreign
        .get(&(topic.clone(), partition, offset))
        .map(|f| f.reason.clone())
        .unwrap_or_default()
}

/// The [`Envelope::FOREIGN`] envelope of a message that is not an eventflow event: its
/// bytes as they are, its reason and origin in headers (with its own headers that are
/// text), and an id derived from its position, so that reading it again after a restart
/// replaces its dead letter instead of adding one.
fn foreign_envelope(
    message: &BorrowedMessage<'_>,
    event_topic: &str,
    kafka_topic: &str,
    reason: String,
) -> Envelope {
    let mut envelope = Envelope::new(
        FOREIGN,
        0,
        event_topic.to_owned(),
        "application/octet-stream",
        message.payload().unwrap_or_default().to_vec(),
    );
    let position = format!("kafka:{kafka_topic}:{}:{}", message.partition(), message.offset());
    envelope.id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, position.as_bytes());
    envelope.correlation_id = envelope.id;
    envelope.key = message.key().map(|k| String::from_utf8_lossy(k).into_owned());
    if let Some(original) = message.headers() {
        for header in original.iter() {
            if let Some(Ok(value)) = header.value.map(std::str::from_utf8) {
                envelope.headers.insert(header.key.to_owned(), value.to_owned());
            }
        }
    }
    envelope
        .headers
        .insert(Envelope::FOREIGN_REASON.to_owned(), reason);
    envelope
        .headers
        .insert(headers::ORIGIN_TOPIC.to_owned(), kafka_topic.to_owned());
    envelope.headers.insert(
        headers::ORIGIN_PARTITION.to_owned(),
        message.partition().to_string(),
    );
    envelope
        .headers
        .insert(headers::ORIGIN_OFFSET.to_owned(), message.offset().to_string());
    envelope
}

/// Commits the current end of every partition `group_id` has no offset for, so the group
/// reads what is published from now on, even before the group has finished joining.
fn start_new_partitions_at_end(
    inner: &Inner,
    consumer: &StreamConsumer<Member>,
    group_id: &str,
    topics: &[String],
) -> Result<(), Error> {
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let mut partitions = 0;
        for attempt in 0..50 {
            let metadata = consumer
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                .map_err(|e| inner.error(format!("reading the metadata of topic `{topic}`"), e))?;
            partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
            if partitions > 0 || attempt == 49 {
                break;
            }
            // A topic created a moment ago may not have its partitions in metadata yet.
            std::thread::sleep(Duration::from_millis(100));
        }
        if partitions == 0 {
            return Err(Error::Config(format!(
                "topic `{topic}` has no partitions in the broker's metadata; check that it exists"
            )));
        }
        all.add_partition_range(topic, 0, partitions as i32 - 1);
    }
    let committed = consumer
        .committed_offsets(all, METADATA_TIMEOUT)
        .map_err(|e| inner.error(format!("reading the committed offsets of group `{group_id}`"), e))?;
    let mut start = TopicPartitionList::new();
    for element in committed.elements() {
        if element.offset() != Offset::Invalid {
            continue;
        }
        let (_low, high) = watermarks(consumer, element.topic(), element.partition())
            .map_err(|e| inner.error(format!("reading the end of topic `{}`", element.topic()), e))?;
        start
            .add_partition_offset(element.topic(), element.partition(), Offset::Offset(high))
            .map_err(|e| inner.error("building an offset list", e))?;
    }
    if start.count() > 0 {
        if let Err(error) = consumer.commit(&start, CommitMode::Sync) {
            // Another member is active, so this one may not commit before joining; the
            // partitions start at the earliest offset instead, losing nothing.
            tracing::warn!(group = group_id, %error, "could not set the start offsets of new partitions; they are read from the beginning");
        }
    }
    Ok(())
}

/// A partition's watermarks. A topic created a moment ago may have no leader for a while
/// (`NotLeaderForPartition`, seen right after creation under load): asked again for up
/// to 5 s.
fn watermarks(
    consumer: &StreamConsumer<Member>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    let mut attempt = 0;
    loop {
        match consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT) {
            Err(error)
                if attempt < 50
                    && matches!(
                        error.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::NotLeaderForPartition
                                | RDKafkaErrorCode::LeaderNotAvailable
                                | RDKafkaErrorCode::UnknownTopicOrPartition
                        )
                    ) =>
            {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

impl KafkaConsumer {
    async fn poll_records(&mut self) -> Result<Vec<Record>, eventflow::Error> {
        let consumer = self.consumer().clone();
        let max = self.inner.config.max_batch;
        let mut revocations = consumer.context().revocations.load(Ordering::Acquire);
        let mut records = Vec::new();
        loop {
            let message = if records.is_empty() {
                consumer.recv().await
            } else {
                match consumer.recv().now_or_never() {
                    Some(message) => message,
                    None => return Ok(records),
                }
            };
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
                    return Ok(records);
                }
            };
            if self.transient_errors > 0 {
                tracing::info!(group = %self.group, errors = self.transient_errors, "the Kafka consumer is receiving again");
                self.transient_errors = 0;
            }
            let now = consumer.context().revocations.load(Ordering::Acquire);
            if now != revocations {
                // The records taken before the rebalance may belong to partitions this
                // member lost: leave them to their new owner.
                revocations = now;
                records.clear();
            }
            let record = self.record(&message);
            records.push(record);
            if records.len() >= max {
                return Ok(records);
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

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self) -> Result<Vec<Record>, eventflow::Error> {
        let records = self.poll_records().await?;
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

    fn publisher(&self) -> Option<Arc<dyn Transport>> {
        let transaction = self.transaction.clone()?;
        Some(Arc::new(TransactionalPublisher {
            kafka: Kafka {
                inner: self.inner.clone(),
            },
            transaction,
        }))
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
        let mut next: HashMap<(&str, u32), u64> = HashMap::new();
        let mut failed: Option<Error> = None;
        let mut blocked: HashMap<(Arc<str>, u32), u64> = HashMap::new();
        for record in records {
            let position = (record.topic.clone(), record.partition, record.offset);
            if let Some(foreign) = self.foreign.remove(&position) {
                if blocked.contains_key(&(record.topic.clone(), record.partition)) {
                    continue;
                }
                if let Err(error) = self.dead_letter_foreign(record, &foreign).await {
                    // Not dead-lettered, so not committed: read it again from here.
                    blocked.insert((record.topic.clone(), record.partition), record.offset);
                    failed.get_or_insert(error);
                    continue;
                }
            }
            let key = (&*record.topic, record.partition);
            if blocked.contains_key(&(record.topic.clone(), record.partition)) {
                continue;
            }
            let entry = next.entry(key).or_insert(0);
            *entry = (*entry).max(record.offset + 1);
        }
        let mut offsets = TopicPartitionList::with_capacity(next.len());
        for ((topic, partition), offset) in next {
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
        let committed = tokio::task::spawn_blocking(move || {
            seek_all(&consumer, &rewind);
            if offsets.count() == 0 {
                return Ok(());
            }
            // Stored first, so a rebalance or close commits them synchronously whatever
            // became of the asynchronous commit.
            consumer.store_offsets(&offsets)?;
            consumer.commit(&offsets, CommitMode::Async)
        })
        .await
        .map_err(|panic| Error::Config(format!("committing offsets panicked: {panic}")))?;
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
                consumer.context().leaving.store(true, Ordering::Release);
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
