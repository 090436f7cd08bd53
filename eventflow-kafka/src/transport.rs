//! The [`Kafka`] transport: publishing, subscribing, dead-letter topics, on the
//! [client](crate::client) ground floor.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use eventflow::transport::{Consumer, Transport};
use eventflow::{BoxFuture, DeadLetter, Envelope, Rejection};
use rdkafka::producer::{DeliveryFuture, FutureProducer};

use crate::client::{Enqueued, Inner, Topic};
use crate::config::{KafkaBuilder, DEFAULT_BROKERS};
use crate::consumer::KafkaConsumer;
use crate::settle::Subscriptions;
use crate::Error;

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
        Ok(Kafka {
            inner: Arc::new(Inner::new(config)?),
        })
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

impl KafkaBuilder {
    /// Creates the producer and the admin client. Does not contact the broker yet: a
    /// broker that is down shows up as errors of `publish` and `subscribe`. Fails on a
    /// consumer setting the [group protocol](KafkaBuilder::group_protocol) does not have.
    pub fn build(self) -> Result<Kafka, Error> {
        self.group_protocol.check(&self.consumer_config)?;
        Kafka::from_builder(self)
    }
}

impl Kafka {
    /// The bus's groups as Kafka names them.
    fn subscriptions(&self, groups: &[(&str, &[&str])]) -> Subscriptions {
        groups
            .iter()
            .map(|(group, topics)| {
                let topics = topics.iter().map(|topic| self.kafka_topic(topic)).collect();
                (self.group_id(group), topics)
            })
            .collect()
    }
}
