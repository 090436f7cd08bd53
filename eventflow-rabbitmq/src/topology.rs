//! The exchanges and queues eventflow declares, and their names (see the
//! [crate docs](crate#topology) for the picture).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::RabbitMqBuilder;
use crate::Error;

impl RabbitMqBuilder {
    /// The exchange of eventflow topic `topic`.
    pub(crate) fn exchange(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Queue `index` of `group` on `topic`.
    pub(crate) fn queue(&self, group: &str, topic: &str, index: u32) -> String {
        format!("{}{group}.{topic}.{index}", self.prefix)
    }

    /// The dead-letter exchange of `group`, and its queue, of the same name.
    pub(crate) fn dead_letters(&self, group: &str) -> String {
        format!("{}{group}.dead-letters", self.prefix)
    }

    /// The queue whose consumers are the members of `group`, so that a member can count
    /// them.
    pub(crate) fn members(&self, group: &str) -> String {
        format!("{}{group}.members", self.prefix)
    }
}

/// The routing key of queue `index`: its number.
pub(crate) fn routing_key(index: u32) -> ShortString {
    ShortString::from(index.to_string())
}

fn durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Declares the exchange of a topic: direct (the routing key is a queue number), durable.
pub(crate) async fn declare_exchange(
    channel: &Channel,
    config: &RabbitMqBuilder,
    exchange: &str,
) -> Result<(), Error> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::amqp(format!("declaring exchange `{exchange}`"), &config.url, e))
}

/// Declares `group`'s dead-letter exchange (fanout) and queue (quorum), bound together.
pub(crate) async fn declare_dead_letters(
    channel: &Channel,
    config: &RabbitMqBuilder,
    group: &str,
) -> Result<String, Error> {
    let name = config.dead_letters(group);
    let url = &config.url;
    channel
        .exchange_declare(
            name.as_str().into(),
            ExchangeKind::Fanout,
            durable(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::amqp(format!("declaring dead-letter exchange `{name}`"), url, e))?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), text("quorum"));
    channel
        .queue_declare(name.as_str().into(), queue_options(), arguments)
        .await
        .map_err(|e| Error::amqp(format!("declaring dead-letter queue `{name}`"), url, e))?;
    channel
        .queue_bind(
            name.as_str().into(),
            name.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::amqp(format!("binding dead-letter queue `{name}`"), url, e))?;
    Ok(name)
}

fn queue_options() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares queue `index` of `group` on `topic` and binds it to the topic's exchange: a
/// durable quorum queue with a single active consumer, whose messages the broker itself
/// dead-letters (rejected ones) to the group's dead-letter exchange.
pub(crate) async fn declare_group_queue(
    channel: &Channel,
    config: &RabbitMqBuilder,
    group: &str,
    topic: &str,
    index: u32,
) -> Result<String, Error> {
    let queue = config.queue(group, topic, index);
    let exchange = config.exchange(topic);
    let url = &config.url;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), text("quorum"));
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    arguments.insert("x-dead-letter-exchange".into(), text(&config.dead_letters(group)));
    channel
        .queue_declare(queue.as_str().into(), queue_options(), arguments)
        .await
        .map_err(|e| Error::amqp(format!("declaring queue `{queue}`"), url, e))?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            routing_key(index),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            Error::amqp(
                format!("binding queue `{queue}` to exchange `{exchange}`"),
                url,
                e,
            )
        })?;
    Ok(queue)
}

/// Declares `group`'s members queue (never holds a message; each member consumes from it)
/// and returns how many members it has. Not durable, and deleted a minute after its last
/// member left.
pub(crate) async fn count_members(
    channel: &Channel,
    config: &RabbitMqBuilder,
    group: &str,
) -> Result<u32, Error> {
    consumers(channel, config, &config.members(group), "members").await
}

impl RabbitMqBuilder {
    /// The queue whose consumers are the members of `group` that work on no queue.
    pub(crate) fn idle(&self, group: &str) -> String {
        format!("{}{group}.idle", self.prefix)
    }
}

/// Not durable, deleted a minute after its last consumer left.
fn idle_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    arguments
}

/// How many members of `group` work on no queue.
pub(crate) async fn count_idle(
    channel: &Channel,
    config: &RabbitMqBuilder,
    group: &str,
) -> Result<u32, Error> {
    consumers(channel, config, &config.idle(group), "idle").await
}

/// Declares the expiring queue `name` (a `kind` queue: members or idle) and returns how many
/// consumers it has.
async fn consumers(
    channel: &Channel,
    config: &RabbitMqBuilder,
    name: &str,
    kind: &str,
) -> Result<u32, Error> {
    let queue = channel
        .queue_declare(name.into(), QueueDeclareOptions::default(), idle_arguments())
        .await
        .map_err(|e| Error::amqp(format!("declaring {kind} queue `{name}`"), &config.url, e))?;
    Ok(queue.consumer_count())
}

/// Counts this member among `group`'s idle ones until the returned channel closes.
pub(crate) async fn join_idle(
    connection: &lapin::Connection,
    config: &RabbitMqBuilder,
    group: &str,
) -> Result<(Channel, lapin::Consumer), Error> {
    let name = config.idle(group);
    let what = |e| Error::amqp(format!("joining idle queue `{name}`"), &config.url, e);
    let channel = connection.create_channel().await.map_err(what)?;
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            idle_arguments(),
        )
        .await
        .map_err(what)?;
    let consumer = channel
        .basic_consume(
            name.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(what)?;
    Ok((channel, consumer))
}
