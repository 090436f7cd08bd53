//! Kafka transport for [eventflow], on [`rdkafka`] (librdkafka compiled from
//! source, nothing to install but a C compiler).
//!
//! [`Kafka`] implements eventflow's [`Transport`](eventflow::transport::Transport): the
//! handlers, events and buses of an application run on it unchanged, and it passes the
//! same [conformance suite](eventflow::transport::conformance) as the in-process transport.
//!
//! # Example
//!
//! ```no_run
//! use eventflow::{subscribe, Event, EventBus, State};
//! use eventflow_kafka::Kafka;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(name = "order.paid", topic = "orders")]
//! struct OrderPaid {
//!     #[event(key)]
//!     order_id: String,
//!     total_cents: u64,
//! }
//!
//! #[subscribe(group = "inventory")]
//! async fn reserve_stock(event: OrderPaid) -> Result<(), std::io::Error> {
//!     println!("reserving stock for {}", event.order_id);
//!     Ok(())
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Brokers from KAFKA_BROKERS, 127.0.0.1:9092 if unset.
//! let kafka = Kafka::from_env().partitions(12).build()?;
//! let bus = EventBus::builder()
//!     .transport(kafka)
//!     .handler(reserve_stock)
//!     .start()
//!     .await?;
//! bus.publish(&OrderPaid { order_id: "XYZ-123".into(), total_cents: 4200 }).await?;
//! # bus.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # How eventflow maps onto Kafka
//!
//! | eventflow | Kafka |
//! |---|---|
//! | topic `orders` | topic `<topic_prefix>orders`, created on first use with the configured partitions and replication |
//! | partition key | message key (murmur2 partitioner, as Java clients) |
//! | envelope metadata | [one header](headers), `eventflow`: `1;<id>;<name>;<version>;<timestamp>;<correlation id>;<causation id>;<content type>`; free-form headers such as `traceparent` as headers of their own. Or, with [`WireFormat::CloudEvents`] for the transport or a topic, the [CloudEvents Kafka binding](cloudevents) in binary mode (`ce_specversion`, `ce_id`, `ce_type`, ...); both are always read |
//! | payload | message value: the codec's bytes |
//! | group `inventory` | consumer group `<group_prefix>inventory`; each bus worker is a member |
//! | handled or dead-lettered | offset committed (auto-commit off) |
//! | dead letter | the bus's dead-letter store, and topic `<topic>.<group>.dlq` with the error, attempts and origin in headers |
//!
//! # Guarantees
//!
//! - **Publishing**: the producer is idempotent (`enable.idempotence=true`, `acks=all`), so
//!   a retried send is never written twice and order per partition holds. `publish`
//!   returns once the broker acknowledged the event; with storage, the outbox relay marks
//!   entries delivered only then. While the broker is unreachable, units of work keep
//!   committing locally and the relay retries with backoff, logging each failure.
//! - **Broker outages**: a consumer keeps polling through them. librdkafka's errors other
//!   than fatal ones (brokers down, connections reset) are logged as warnings and not
//!   returned, since librdkafka reconnects and rejoins the group only while it is polled.
//! - **Consuming**: an offset is committed only after the handler succeeded or the event
//!   was dead-lettered (stored after each batch and committed asynchronously, then
//!   synchronously when partitions are revoked and when the member closes), so handling is
//!   at least once; the inbox of a bus with storage
//!   suppresses the duplicates that rebalances and crashes cause. A member's partitions are
//!   handled concurrently, each in order. Records fetched for a partition that is revoked
//!   during a poll are left to the new owner. A restarted group resumes from its committed
//!   offsets.
//! - **Rebalances**: in every [`GroupProtocol`] (classic eager, classic `cooperative-sticky`,
//!   KIP-848's consumer protocol) a member commits the offsets of what it handled before its
//!   partitions go, assigns and revokes incrementally wherever the protocol is incremental,
//!   and once an incremental rebalance completes commits again what the broker refused
//!   while it ran. A member that stops polling for longer than `max.poll.interval.ms`
//!   leaves the group and its partitions are handled by the others from the last commit.
//! - **New groups** start at the end of each partition when they first subscribe
//!   ([`StartFrom::Latest`], as the in-process transport), or at the beginning
//!   ([`StartFrom::Earliest`]) to catch up on history.
//! - **Foreign messages**: a message on a subscribed topic that is not an eventflow event
//!   (no eventflow headers, or undecodable ones) goes to the group's dead-letter topic with
//!   the reason in `eventflow-error`, and the partition moves on.
//! - Consumers read with `isolation.level=read_committed`.
//! - **Exactly once, Kafka to Kafka**: in a group named with
//!   [`KafkaBuilder::transactional_group`], each member handles a polled batch in a Kafka
//!   transaction: the follow-ups its handlers publish through their `Context` and the
//!   batch's offsets commit together (`send_offsets_to_transaction`), or are aborted and
//!   the batch is read again. A failed attempt publishes nothing.
//!
//! # Configuration
//!
//! [`KafkaBuilder`] covers prefixes, partitions, replication, the dead-letter topic name,
//! batching (`linger`, `batch_size`), the delivery timeout and poll size, and the consumer
//! group protocol ([`GroupProtocol`]: classic, eager or cooperative, or Kafka 4's KIP-848
//! protocol with [`KafkaBuilder::group_protocol`]); any other
//! librdkafka property goes through [`KafkaBuilder::producer_config`] and
//! [`KafkaBuilder::consumer_config`] (security settings, `session.timeout.ms`, ...).
#![warn(missing_docs)]

mod client;
pub mod cloudevents;
mod config;
mod consumer;
mod error;
mod foreign;
mod group_protocol;
pub mod headers;
mod lag;
mod member;
mod settle;
mod start_offsets;
mod transaction;
mod transport;
mod wire;

pub use config::{KafkaBuilder, StartFrom, WireFormat, DEFAULT_BROKERS};
pub use error::Error;
pub use group_protocol::GroupProtocol;
/// The rdkafka version this crate is built on, for raw access next to eventflow.
pub use rdkafka;
pub use transport::Kafka;
