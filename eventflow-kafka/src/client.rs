//! The ground floor every Kafka client of the transport stands on: the shared [`Inner`]
//! (configuration, the producer, the admin client, the topic caches), the settings every
//! client shares, producing one message and creating topics. The transport, the consumer
//! and the transactional members build on it, and it imports none of them.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use eventflow::{DeadLetter, Envelope};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaBuilder;
use crate::{headers, Error};

/// What a [`Kafka`](crate::Kafka) transport and its clones share.
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

/// A Kafka topic this transport writes to.
pub(crate) struct Topic {
    pub(crate) name: String,
    /// Set once the topic exists; concurrent first publishes wait for one creation.
    created: tokio::sync::OnceCell<()>,
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
    /// How many partitions `topic` has, read through `client`; 0 if it does not exist (yet).
    pub(crate) fn partition_count(
        &self,
        client: &BaseConsumer,
        topic: &str,
        timeout: Duration,
    ) -> Result<usize, Error> {
        let metadata = client
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| self.error(format!("reading the metadata of topic `{topic}`"), e))?;
        Ok(metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len()))
    }

    /// The producer, the admin client and empty topic caches for `config`.
    pub(crate) fn new(config: KafkaBuilder) -> Result<Inner, Error> {
        let producer = create_producer(&config)?;
        let admin: AdminClient<DefaultClientContext> = base_config(&config)
            .create()
            .map_err(|e| Error::kafka("creating the Kafka admin client", &config.brokers, e))?;
        let transactional_id_prefix = config
            .transactional_id_prefix
            .clone()
            .unwrap_or_else(|| format!("eventflow-{}.", uuid::Uuid::now_v7().simple()));
        Ok(Inner {
            config,
            producer: RwLock::new(producer),
            admin,
            event_topics: TopicMap::default(),
            kafka_topics: TopicMap::default(),
            transactional_id_prefix,
            transactional_slots: Mutex::default(),
        })
    }

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
        let (headers, timestamp_ms) = crate::wire::encode_timed(envelope, &self.config);
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
        let (headers, timestamp_ms) = crate::wire::encode_timed(envelope, &self.config);
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
    pub(crate) fn outcome(
        &self,
        answer: <DeliveryFuture as Future>::Output,
        topic: &str,
    ) -> Result<(), Error> {
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

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
