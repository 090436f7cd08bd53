//! The [`Kafka`] transport: publishing, topic creation, dead-letter topics.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use eventflow::transport::{Consumer, Transport};
use eventflow::{BoxFuture, DeadLetter, Envelope, Rejection};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{KafkaBuilder, DEFAULT_BROKERS};
use crate::consumer::KafkaConsumer;
use crate::{headers, Error};

/// Eventflow's transport on Apache Kafka (or any broker speaking its protocol).
///
/// - An eventflow topic is a Kafka topic (with an optional
///   [prefix](KafkaBuilder::topic_prefix)), created on first use with the configured
///   partitions and replication; the event's partition key is the Kafka message key, so
///   events of one key stay in order.
/// - An eventflow group is a Kafka consumer group; every bus worker of the group is a
///   member. Offsets are committed only for events handled or dead-lettered.
/// - Envelope metadata travels in one [header](crate::headers), `eventflow`, free-form
///   headers such as `traceparent` in their own; the payload is the codec's bytes.
/// - A group that gives up on an event also writes it to the group's dead-letter topic,
///   `<topic>.<group>.dlq` by default, with the error, attempts and origin in headers.
///
/// Cheap to clone: clones share the producer.
#[derive(Clone)]
pub struct Kafka {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: KafkaBuilder,
    /// Replaced when librdkafka reports a fatal error, after which it produces nothing.
    producer: RwLock<FutureProducer>,
    admin: AdminClient<DefaultClientContext>,
    /// Kafka topics by eventflow topic, so a publish neither formats the name nor asks the
    /// broker again.
    event_topics: TopicMap,
    /// Kafka topics by Kafka name (subscribed and dead-letter topics).
    kafka_topics: TopicMap,
    /// What `transactional.id`s of transactional members start with.
    pub(crate) transactional_id_prefix: String,
    /// The slots (`transactional.id` suffixes) of the live transactional members, by group.
    pub(crate) transactional_slots: Mutex<HashMap<String, BTreeSet<usize>>>,
}

type TopicMap = RwLock<HashMap<String, Arc<Topic>>>;

/// A message the producer has taken: its acknowledgement to come, and its topic, named in
/// the error if the broker refuses it.
pub(crate) type Enqueued = (DeliveryFuture, Arc<Topic>);

/// Resolves when the broker has acknowledged an [enqueued](Inner::enqueue_now) message.
///
/// Written by hand so that it holds three pointers: a publisher keeps one per event in
/// flight until the broker answers, often thousands. An `async fn` doing the same takes
/// over 100 bytes.
struct Acknowledgement<'a> {
    inner: &'a Inner,
    delivery: DeliveryFuture,
    topic: Arc<Topic>,
}

impl Acknowledgement<'_> {
    fn new(inner: &Inner, (delivery, topic): Enqueued) -> Acknowledgement<'_> {
        Acknowledgement {
            inner,
            delivery,
            topic,
        }
    }
}

impl Future for Acknowledgement<'_> {
    type Output = Result<(), eventflow::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = ready!(Pin::new(&mut self.delivery).poll(cx));
        Poll::Ready(Ok(self.inner.outcome(answer, &self.topic.name)?))
    }
}

/// A Kafka topic this transport writes to.
pub(crate) struct Topic {
    pub(crate) name: String,
    /// Set once the topic exists; concurrent first publishes wait for one creation.
    created: tokio::sync::OnceCell<()>,
}

impl Kafka {
    /// Configures a transport on the brokers at `brokers` (`host:port`, comma-separated).
    pub fn builder(brokers: impl Into<String>) -> KafkaBuilder {
        KafkaBuilder::new(brokers)
    }

    /// Configures a transport on the brokers named by the `KAFKA_BROKERS` environment
    /// variable, `127.0.0.1:9092` if it is unset.
    pub fn from_env() -> KafkaBuilder {
        let brokers = std::env::var("KAFKA_BROKERS")
            .ok()
            .filter(|b| !b.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_BROKERS.to_owned());
        KafkaBuilder::new(brokers)
    }

    /// The broker list this transport connects to.
    pub fn brokers(&self) -> &str {
        &self.inner.config.brokers
    }

    /// The Kafka topic an eventflow topic maps to (the topic prefix applied).
    pub fn kafka_topic(&self, topic: &str) -> String {
        self.inner.config.kafka_topic(topic)
    }

    /// The Kafka `group.id` of an eventflow group (the group prefix applied).
    pub fn group_id(&self, group: &str) -> String {
        self.inner.config.group_id(group)
    }

    /// The dead-letter topic of `group` for events read from eventflow topic `topic`.
    pub fn dead_letter_topic(&self, topic: &str, group: &str) -> String {
        self.inner
            .config
            .dead_letter_topic_for(&self.kafka_topic(topic), group)
    }

    /// Waits until every message published so far is acknowledged, for at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            inner
                .producer()
                .flush(timeout)
                .map_err(|e| inner.error("flushing the producer", e))
        })
        .await
        .unwrap_or_else(|panic| Err(Error::Config(format!("flush panicked: {panic}"))))
    }

    /// The producer this transport publishes with: a handle (clones share it) for what
    /// eventflow does not cover, such as librdkafka's statistics. It is replaced when
    /// librdkafka reports a fatal error, so take it again rather than keeping it.
    pub fn producer(&self) -> FutureProducer {
        self.inner.producer()
    }

    pub(crate) fn from_builder(config: KafkaBuilder) -> Result<Kafka, Error> {
        if config.brokers.trim().is_empty() {
            return Err(Error::Config(
                "no brokers given; pass `host:port` to `Kafka::builder` or set `KAFKA_BROKERS`".into(),
            ));
        }
        let producer = create_producer(&config)?;
        let admin: AdminClient<DefaultClientContext> = base_config(&config)
            .create()
            .map_err(|e| Error::kafka("creating the Kafka admin client", &config.brokers, e))?;
        let transactional_id_prefix = config
            .transactional_id_prefix
            .clone()
            .unwrap_or_else(|| format!("eventflow-{}.", uuid::Uuid::now_v7().simple()));
        Ok(Kafka {
            inner: Arc::new(Inner {
                config,
                producer: RwLock::new(producer),
                admin,
                event_topics: TopicMap::default(),
                kafka_topics: TopicMap::default(),
                transactional_id_prefix,
                transactional_slots: Mutex::default(),
            }),
        })
    }
}

/// The transport's producer: idempotent unless turned off, `acks=all`.
fn create_producer(config: &KafkaBuilder) -> Result<FutureProducer, Error> {
    let mut producer = base_config(config);
    producer
        .set("enable.idempotence", config.idempotence.to_string())
        .set("acks", "all")
        .set("linger.ms", config.linger.as_millis().to_string())
        .set("batch.num.messages", config.batch_size.to_string())
        .set(
            "message.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        // Java clients' default partitioner, so keys land where they would from the JVM.
        .set("partitioner", "murmur2_random");
    for (key, value) in &config.producer_config {
        producer.set(key, value);
    }
    producer
        .create()
        .map_err(|e| Error::kafka("creating the Kafka producer", &config.brokers, e))
}

/// Settings every client of this transport shares.
pub(crate) fn base_config(config: &KafkaBuilder) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "eventflow");
    client
}

impl Inner {
    pub(crate) fn error(&self, what: impl Into<String>, source: KafkaError) -> Error {
        Error::kafka(what, &self.config.brokers, source)
    }

    /// The producer publishes go through now.
    pub(crate) fn producer(&self) -> FutureProducer {
        read(&self.producer).clone()
    }

    /// The error of a message `producer` did not take or deliver. If it is librdkafka's
    /// fatal error (the idempotent producer can no longer keep its guarantees, and produces
    /// nothing from then on), the transport's producer is replaced by a new one: the failed
    /// message's publisher gets the error and publishes again (the outbox relay does so by
    /// itself), through the new producer.
    fn publish_failed(&self, producer: Option<&FutureProducer>, topic: &str, error: KafkaError) -> Error {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.replace_failed_producer(producer);
        }
        self.error(format!("publishing to `{topic}`"), error)
    }

    /// Replaces the transport's producer if it failed for good, and `failed` is it (or
    /// unknown): of several publishes that saw the failure, the first replaces it.
    fn replace_failed_producer(&self, failed: Option<&FutureProducer>) {
        use rdkafka::producer::Producer;
        let mut current = write(&self.producer);
        if failed.is_some_and(|failed| !std::ptr::eq(failed.client(), current.client())) {
            return;
        }
        let Some((code, reason)) = current.client().fatal_error() else {
            return;
        };
        match create_producer(&self.config) {
            Ok(fresh) => {
                tracing::error!(
                    %code, reason,
                    "the Kafka producer failed for good (librdkafka fatal error); replaced it with \
                     a new one. Messages it had not delivered fail and are published again"
                );
                let failed = std::mem::replace(&mut *current, fresh);
                drop(current);
                // Dropping it purges its queue and waits up to 500 ms: not on this thread.
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn_blocking(move || drop(failed))),
                    Err(_) => drop(failed),
                }
            }
            Err(error) => {
                tracing::error!(%code, reason, %error, "the Kafka producer failed for good and a new one could not be created; publishing fails until it can")
            }
        }
    }

    /// The Kafka topic `key` stands for in `map` (named by `name` the first time), created
    /// if this transport has not seen it exist yet.
    async fn topic(
        &self,
        map: &TopicMap,
        key: &str,
        name: impl FnOnce() -> String,
    ) -> Result<Arc<Topic>, Error> {
        let known = read(map).get(key).cloned();
        let topic = match known {
            Some(topic) => topic,
            None => write(map)
                .entry(key.to_owned())
                .or_insert_with(|| {
                    Arc::new(Topic {
                        name: name(),
                        created: tokio::sync::OnceCell::new(),
                    })
                })
                .clone(),
        };
        if !topic.created.initialized() {
            topic
                .created
                .get_or_try_init(|| self.create_topic(&topic.name))
                .await?;
        }
        Ok(topic)
    }

    /// Creates `topic` unless this transport already knows it exists.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<(), Error> {
        self.topic(&self.kafka_topics, topic, || topic.to_owned())
            .await
            .map(drop)
    }

    async fn create_topic(&self, topic: &str) -> Result<(), Error> {
        let partitions = self.config.partitions_of(topic);
        let new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(self.config.replication),
        );
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let what = || format!("creating topic `{topic}`");
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| self.error(what(), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(self.error(what(), KafkaError::AdminOp(code))),
            }
        }
        Ok(())
    }

    /// Hands one message to the producer, waiting while its queue is full.
    pub(crate) async fn enqueue(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        timestamp_ms: i64,
    ) -> Result<DeliveryFuture, Error> {
        self.enqueue_on(&self.producer(), topic, key, payload, headers, timestamp_ms)
            .await
    }

    /// Hands one message to `producer` (this transport's or a transactional member's),
    /// waiting while its queue is full.
    pub(crate) async fn enqueue_on(
        &self,
        producer: &FutureProducer,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        timestamp_ms: i64,
    ) -> Result<DeliveryFuture, Error> {
        let mut record = FutureRecord::to(topic)
            .payload(payload)
            .headers(headers)
            .timestamp(timestamp_ms);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(self.publish_failed(Some(producer), topic, error)),
            }
        }
    }

    /// Hands `envelope` to the producer without waiting, if its topic is known to exist and
    /// the producer's queue has room; `None` otherwise, for [`Inner::enqueue_envelope`].
    /// Kept apart so that the future of a publish stays small: the topic creation and the
    /// backpressure wait are boxed away from the hot path.
    pub(crate) fn enqueue_now(&self, envelope: &Envelope) -> Option<Result<Enqueued, Error>> {
        let topic = read(&self.event_topics).get(&*envelope.topic)?.clone();
        topic.created.initialized().then_some(())?;
        let (headers, timestamp_ms) = headers::encode_timed(envelope, &self.config);
        let mut record = FutureRecord::to(&topic.name)
            .payload(&envelope.payload[..])
            .headers(headers)
            .timestamp(timestamp_ms);
        if let Some(key) = &envelope.key {
            record = record.key(key.as_bytes());
        }
        let sent = read(&self.producer).send_result(record);
        match sent {
            Ok(delivery) => Some(Ok((delivery, topic))),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => None,
            Err((error, _)) => Some(Err(self.publish_failed(None, &topic.name, error))),
        }
    }

    /// [`Inner::enqueue_now`], or else the slow path: creating the topic, waiting while the
    /// producer's queue is full.
    pub(crate) async fn enqueue_envelope(&self, envelope: &Envelope) -> Result<Enqueued, Error> {
        if let Some(enqueued) = self.enqueue_now(envelope) {
            return enqueued;
        }
        let topic = self.event_topic(&envelope.topic).await?;
        let (headers, timestamp_ms) = headers::encode_timed(envelope, &self.config);
        let delivery = self
            .enqueue(
                &topic.name,
                envelope.key.as_deref().map(str::as_bytes),
                &envelope.payload,
                headers,
                timestamp_ms,
            )
            .await?;
        Ok((delivery, topic))
    }

    /// The Kafka topic of an eventflow topic, created if it was not seen to exist yet.
    pub(crate) async fn event_topic(&self, topic: &str) -> Result<Arc<Topic>, Error> {
        // Keyed by the eventflow topic: no name to format on the hot path.
        self.topic(&self.event_topics, topic, || self.config.kafka_topic(topic))
            .await
    }

    /// Waits for the broker's acknowledgement of one message.
    pub(crate) async fn delivered(&self, delivery: DeliveryFuture, topic: &str) -> Result<(), Error> {
        self.outcome(delivery.await, topic)
    }

    /// What the broker's answer about a message sent to `topic` means.
    fn outcome(&self, answer: <DeliveryFuture as Future>::Output, topic: &str) -> Result<(), Error> {
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(self.publish_failed(None, topic, error)),
            Err(_canceled) => Err(self.error(format!("publishing to `{topic}`"), KafkaError::Canceled)),
        }
    }

    /// Writes a dead letter to its group's dead-letter topic and waits for the broker.
    pub(crate) async fn publish_dead_letter(&self, letter: &DeadLetter) -> Result<(), Error> {
        self.publish_dead_letter_on(&self.producer(), letter).await
    }

    /// Writes a dead letter through `producer` (this transport's, or a transactional
    /// member's, in its open transaction) and waits for the broker.
    pub(crate) async fn publish_dead_letter_on(
        &self,
        producer: &FutureProducer,
        letter: &DeadLetter,
    ) -> Result<(), Error> {
        let origin = self.config.kafka_topic(&letter.envelope.topic);
        let topic = self.config.dead_letter_topic_for(&origin, &letter.group);
        self.ensure_topic(&topic).await?;
        let delivery = self
            .enqueue_on(
                producer,
                &topic,
                letter.envelope.key.as_deref().map(str::as_bytes),
                &letter.envelope.payload,
                headers::encode_dead_letter(letter, &origin),
                headers::millis_since_epoch(letter.envelope.timestamp),
            )
            .await?;
        self.delivered(delivery, &topic).await
    }
}

#[async_trait]
impl Transport for Kafka {
    /// Written out rather than `async fn` so that the message goes to the producer before
    /// the future is even boxed: the envelope is dropped once librdkafka has copied it, and
    /// the boxed future, which lives until the broker acknowledges, holds three pointers
    /// instead of the envelope. A publisher with many events in flight keeps that much
    /// less memory, and allocates it from the allocator's small-size caches.
    fn publish<'life0, 'async_trait>(
        &'life0 self,
        envelope: Envelope,
    ) -> BoxFuture<'async_trait, Result<(), eventflow::Error>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        use futures_util::FutureExt;
        let id = envelope.id;
        match self.inner.enqueue_now(&envelope) {
            Some(Ok(enqueued)) => {
                drop(envelope);
                Box::pin(
                    Acknowledgement::new(&self.inner, enqueued)
                        .map(move |acked| acked.map_err(|e| naming(e, id))),
                )
            }
            Some(Err(error)) => Box::pin(std::future::ready(Err(naming(error.into(), id)))),
            None => Box::pin(async move {
                let enqueued = self
                    .inner
                    .enqueue_envelope(&envelope)
                    .await
                    .map_err(|e| naming(e.into(), id))?;
                drop(envelope);
                let acked = Acknowledgement::new(&self.inner, enqueued).await;
                acked.map_err(|e| naming(e, id))
            }),
        }
    }

    /// Hands every envelope to the producer before waiting for the acknowledgements, so a
    /// batch travels in a few produce requests; the idempotent producer keeps their order
    /// per partition.
    ///
    /// A message Kafka refuses for good (over the size limit, an invalid topic...), whether
    /// librdkafka refuses it before sending or the broker after, is reported in
    /// [`eventflow::Error::Rejected`] with its position, and the others are delivered. A
    /// transient failure of any message fails the batch as a whole.
    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Result<(), eventflow::Error> {
        let ids: Vec<uuid::Uuid> = envelopes.iter().map(|envelope| envelope.id).collect();
        let mut pending = Vec::with_capacity(envelopes.len());
        let mut rejections = Vec::new();
        for (index, envelope) in envelopes.iter().enumerate() {
            match self.inner.enqueue_envelope(envelope).await {
                Ok(enqueued) => pending.push((index, enqueued)),
                Err(error) if error.is_permanent() => {
                    rejections.push(Rejection::new(index, envelope.id, error.to_string()))
                }
                Err(error) => return Err(error.into()),
            }
        }
        drop(envelopes);
        let mut first_error = None;
        for (index, enqueued) in pending {
            match Acknowledgement::new(&self.inner, enqueued).await {
                Ok(()) => {}
                Err(eventflow::Error::Rejected { rejections: refused }) => {
                    let reason = refused
                        .into_iter()
                        .map(|r| r.reason)
                        .collect::<Vec<_>>()
                        .join("; ");
                    rejections.push(Rejection::new(index, ids[index], reason));
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        if rejections.is_empty() {
            return Ok(());
        }
        rejections.sort_by_key(|rejection| rejection.index);
        Err(eventflow::Error::Rejected { rejections })
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, eventflow::Error> {
        let kafka_topics: Vec<String> = topics.iter().map(|t| self.kafka_topic(t)).collect();
        for topic in &kafka_topics {
            self.inner.ensure_topic(topic).await?;
        }
        Ok(Box::new(
            KafkaConsumer::join(self.inner.clone(), group, kafka_topics).await?,
        ))
    }

    /// Waits until the groups have committed what the log held at the call.
    fn until_settled(
        &self,
        groups: &[(&str, &[&str])],
    ) -> Option<BoxFuture<'static, Result<(), eventflow::Error>>> {
        let settled = crate::settle::until_settled(self.inner.clone(), self.subscriptions(groups));
        Some(Box::pin(async move { Ok(settled.await?) }))
    }

    async fn unsettled(&self, groups: &[(&str, &[&str])]) -> Option<String> {
        crate::settle::unsettled(self.inner.clone(), self.subscriptions(groups)).await
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), eventflow::Error> {
        Ok(self.inner.publish_dead_letter(letter).await?)
    }
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("brokers", &self.inner.config.brokers)
            .field("topic_prefix", &self.inner.config.topic_prefix)
            .field("group_prefix", &self.inner.config.group_prefix)
            .finish_non_exhaustive()
    }
}

/// A rejection of the one event `id` published alone names it.
fn naming(error: eventflow::Error, id: uuid::Uuid) -> eventflow::Error {
    match error {
        eventflow::Error::Rejected { mut rejections } => {
            for rejection in &mut rejections {
                rejection.event = id;
            }
            eventflow::Error::Rejected { rejections }
        }
        other => other,
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
