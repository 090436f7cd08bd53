//! Publishing with confirms: the transport's connection and confirm-mode channel,
//! reconnected on demand after the broker went away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use eventflow::transport::partition_for_key;
use eventflow::{DeadLetter, Envelope};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm};

use crate::config::RabbitMqBuilder;
use crate::{properties, topology, Error};

/// The transport's publishing side. Publishes from any number of tasks share one channel:
/// AMQP keeps the order of a channel's messages, so events of one key stay in order.
pub(crate) struct Publisher {
    pub(crate) config: Arc<RabbitMqBuilder>,
    /// The live link, for publishes to take without waiting.
    current: RwLock<Option<Arc<Link>>>,
    /// Held while (re)connecting, so that concurrent publishes wait for one attempt.
    connecting: tokio::sync::Mutex<()>,
    /// Failed attempts in a row, when the last one failed and why: no new attempt before
    /// the backoff has passed, so an outage costs the broker one connection attempt per
    /// backoff period, however many publishes are retried.
    failures: Mutex<Option<(u32, Instant, lapin::Error)>>,
}

/// A connection and its confirm-mode channel, with the exchanges declared on it.
struct Link {
    connection: Connection,
    channel: Channel,
    /// Exchange names by eventflow topic, once declared on this connection (a broker that
    /// lost its data gets them again after a reconnect).
    exchanges: RwLock<HashMap<String, ShortString>>,
    /// The groups whose dead-letter exchange is declared on this connection.
    dead_letters: RwLock<HashMap<String, ShortString>>,
}

impl Link {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

impl Publisher {
    pub(crate) fn new(config: Arc<RabbitMqBuilder>) -> Self {
        Publisher {
            config,
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            failures: Mutex::new(None),
        }
    }

    /// The live link, connecting if there is none.
    async fn link(&self) -> Result<Arc<Link>, Error> {
        if let Some(link) = read(&self.current).as_ref().filter(|l| l.usable()) {
            return Ok(link.clone());
        }
        let _connecting = self.connecting.lock().await;
        if let Some(link) = read(&self.current).as_ref().filter(|l| l.usable()) {
            return Ok(link.clone());
        }
        if let Some((attempts, at, error)) = &*lock(&self.failures) {
            if at.elapsed() < self.config.reconnect_delay(*attempts) {
                return Err(Error::amqp(
                    "connecting to RabbitMQ",
                    &self.config.url,
                    error.clone(),
                ));
            }
        }
        match self.connect().await {
            Ok(link) => {
                if lock(&self.failures).take().is_some() {
                    tracing::info!(url = %self.config.url, "reconnected to RabbitMQ for publishing");
                }
                let link = Arc::new(link);
                *write(&self.current) = Some(link.clone());
                Ok(link)
            }
            Err(error) => {
                let mut failures = lock(&self.failures);
                let attempts = failures.as_ref().map_or(0, |f| f.0) + 1;
                *failures = Some((attempts, Instant::now(), error.clone()));
                tracing::warn!(url = %self.config.url, %error, attempts, "connecting to RabbitMQ for publishing failed; retrying with backoff");
                Err(Error::amqp("connecting to RabbitMQ", &self.config.url, error))
            }
        }
    }

    async fn connect(&self) -> Result<Link, lapin::Error> {
        let properties = ConnectionProperties::default().with_connection_name("eventflow publisher".into());
        let connection = Connection::connect(&self.config.url, properties).await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Link {
            connection,
            channel,
            exchanges: RwLock::default(),
            dead_letters: RwLock::default(),
        })
    }

    /// The exchange of `topic`, declared if it was not on this link.
    async fn exchange(&self, link: &Link, topic: &str) -> Result<ShortString, Error> {
        if let Some(exchange) = read(&link.exchanges).get(topic) {
            return Ok(exchange.clone());
        }
        let exchange = self.config.exchange(topic);
        topology::declare_exchange(&link.channel, &self.config, &exchange).await?;
        let exchange = ShortString::from(exchange);
        write(&link.exchanges).insert(topic.to_owned(), exchange.clone());
        Ok(exchange)
    }

    /// The queue number `envelope`'s key picks; a random one for an event without a key.
    fn queue_index(&self, envelope: &Envelope) -> u32 {
        let queues = self.config.queues_per_group;
        match &envelope.key {
            Some(key) => partition_for_key(key.as_bytes(), queues),
            // The id's low bits are random (UUID v7).
            None => (envelope.id.as_u128() as u32) % queues,
        }
    }

    /// Hands `envelope` to the broker; the returned confirmation resolves when the broker
    /// has it.
    pub(crate) async fn send(&self, envelope: &Envelope) -> Result<Pending, Error> {
        let link = self.link().await?;
        let exchange = self.exchange(&link, &envelope.topic).await?;
        let routing_key = topology::routing_key(self.queue_index(envelope));
        let properties = properties::encode(envelope);
        self.send_on(link, exchange, routing_key, &envelope.payload, properties)
            .await
    }

    async fn send_on(
        &self,
        link: Arc<Link>,
        exchange: ShortString,
        routing_key: ShortString,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<Pending, Error> {
        let sent = link
            .channel
            .basic_publish(
                exchange.clone(),
                routing_key,
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await;
        match sent {
            Ok(confirm) => Ok(Pending { confirm, exchange }),
            Err(error) => Err(self.failed(&link, exchange.as_str(), error)),
        }
    }

    /// The error of a publish on `link`, which is dropped if the error broke it.
    fn failed(&self, link: &Arc<Link>, exchange: &str, error: lapin::Error) -> Error {
        if !link.usable() {
            let mut current = write(&self.current);
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, link)) {
                *current = None;
            }
        }
        Error::amqp(
            format!("publishing to exchange `{exchange}`"),
            &self.config.url,
            error,
        )
    }

    /// Publishes one envelope and waits for the broker's confirm.
    pub(crate) async fn publish(&self, envelope: &Envelope) -> Result<(), Error> {
        self.send(envelope).await?.confirmed(self).await
    }

    /// Writes `letter` to its group's dead-letter exchange and waits for the confirm.
    pub(crate) async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), Error> {
        let properties = properties::encode_dead_letter(letter);
        self.dead_letter_raw(&letter.group, &letter.envelope.payload, properties)
            .await
    }

    /// Writes a message with `properties` (the dead-letter headers set) to `group`'s
    /// dead-letter exchange and waits for the confirm.
    pub(crate) async fn dead_letter_raw(
        &self,
        group: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let link = self.link().await?;
        let known = read(&link.dead_letters).get(group).cloned();
        let exchange = match known {
            Some(exchange) => exchange,
            None => {
                let name = topology::declare_dead_letters(&link.channel, &self.config, group).await?;
                let exchange = ShortString::from(name);
                write(&link.dead_letters).insert(group.to_owned(), exchange.clone());
                exchange
            }
        };
        self.send_on(link, exchange, "".into(), payload, properties)
            .await?
            .confirmed(self)
            .await
    }
}

/// A message the broker has been handed, its confirm to come.
pub(crate) struct Pending {
    confirm: PublisherConfirm,
    exchange: ShortString,
}

impl Pending {
    /// Waits for the broker's confirm.
    pub(crate) async fn confirmed(self, publisher: &Publisher) -> Result<(), Error> {
        match self.confirm.await {
            // NotRequested cannot happen: the channel is in confirm mode from its start.
            Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Nack(_)) => Err(Error::Refused {
                exchange: self.exchange.to_string(),
            }),
            Err(error) => Err(Error::amqp(
                format!(
                    "waiting for RabbitMQ to confirm a message to exchange `{}`",
                    self.exchange
                ),
                &publisher.config.url,
                error,
            )),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
