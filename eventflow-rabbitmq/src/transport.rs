//! The [`RabbitMq`] transport: eventflow's [`Transport`] on RabbitMQ.

use std::sync::Arc;

use async_trait::async_trait;
use eventflow::transport::{Consumer, Transport};
use eventflow::{DeadLetter, Envelope};

use crate::config::{RabbitMqBuilder, DEFAULT_URL};
use crate::consumer::RabbitMqConsumer;
use crate::publisher::Publisher;
use crate::Error;

/// Eventflow's transport on RabbitMQ (AMQP 0-9-1), laid out as the [crate docs](crate)
/// draw it.
///
/// Cheap to clone: clones share the publishing connection. Every subscribed member has a
/// connection of its own, so that a member that dies returns its unacknowledged messages
/// to the queues at once.
#[derive(Clone)]
pub struct RabbitMq {
    publisher: Arc<Publisher>,
}

impl RabbitMq {
    /// Configures a transport on the broker at `url`
    /// (`amqp://user:password@host:5672/vhost`, the default vhost `/` written `%2f`).
    pub fn builder(url: impl Into<String>) -> RabbitMqBuilder {
        RabbitMqBuilder::new(url)
    }

    /// Configures a transport on the broker named by the `AMQP_URL` environment variable,
    /// [`DEFAULT_URL`] (`amqp://guest:guest@127.0.0.1:5672/%2f`) if it is unset.
    pub fn from_env() -> RabbitMqBuilder {
        let url = std::env::var("AMQP_URL")
            .ok()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        RabbitMqBuilder::new(url)
    }

    fn from_builder(config: RabbitMqBuilder) -> RabbitMq {
        RabbitMq {
            publisher: Arc::new(Publisher::new(Arc::new(config))),
        }
    }

    /// The broker URL this transport connects to.
    pub fn url(&self) -> &str {
        &self.publisher.config.url
    }

    /// The exchange an eventflow topic is published to.
    pub fn exchange(&self, topic: &str) -> String {
        self.publisher.config.exchange(topic)
    }

    /// Queue `index` (from 0 to [`queues_per_group`](RabbitMqBuilder::queues_per_group)
    /// − 1) of `group` on `topic`.
    pub fn queue(&self, group: &str, topic: &str, index: u32) -> String {
        self.publisher.config.queue(group, topic, index)
    }

    /// How many queues each group has per topic.
    pub fn queues_per_group(&self) -> u32 {
        self.publisher.config.queues_per_group
    }

    /// The dead-letter exchange of `group`, and its quorum queue of the same name.
    pub fn dead_letter_queue(&self, group: &str) -> String {
        self.publisher.config.dead_letters(group)
    }
}

#[async_trait]
impl Transport for RabbitMq {
    async fn publish(&self, envelope: Envelope) -> Result<(), eventflow::Error> {
        Ok(self.publisher.publish(&envelope).await?)
    }

    /// Hands every envelope to the broker before waiting for the confirms, so a batch
    /// costs one round trip; one channel keeps their order.
    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Result<(), eventflow::Error> {
        let mut pending = Vec::with_capacity(envelopes.len());
        for envelope in &envelopes {
            pending.push(self.publisher.send(envelope).await?);
        }
        drop(envelopes);
        let mut first_error = None;
        for sent in pending {
            if let Err(error) = sent.confirmed(&self.publisher).await {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            None => Ok(()),
            Some(error) => Err(error.into()),
        }
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, eventflow::Error> {
        Ok(Box::new(
            RabbitMqConsumer::join(self.publisher.clone(), group, topics).await?,
        ))
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), eventflow::Error> {
        Ok(self.publisher.dead_letter(letter).await?)
    }
}

// The builder's last step makes a `RabbitMq`, so it lives here: `config.rs`, which the
// publisher and the members read, stays below the transport they make up.
impl RabbitMqBuilder {
    /// Checks the configuration and makes the transport. Nothing connects yet: the first
    /// publish or subscribe does, and reports a broker that does not answer.
    pub fn build(self) -> Result<RabbitMq, Error> {
        self.check()?;
        Ok(RabbitMq::from_builder(self))
    }
}

impl std::fmt::Debug for RabbitMq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = &self.publisher.config;
        f.debug_struct("RabbitMq")
            .field("url", &config.url)
            .field("prefix", &config.prefix)
            .field("queues_per_group", &config.queues_per_group)
            .finish_non_exhaustive()
    }
}
