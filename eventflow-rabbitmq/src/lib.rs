//! RabbitMQ transport for [eventflow], on [`lapin`].
//!
//! [`RabbitMq`] implements eventflow's [`Transport`](eventflow::transport::Transport): the
//! handlers, events and buses of an application run on it unchanged, and it passes the
//! same [conformance suite](eventflow::transport::conformance) as the in-process and Kafka
//! transports.
//!
//! # Example
//!
//! ```no_run
//! use eventflow::{subscribe, Event, EventBus};
//! use eventflow_rabbitmq::RabbitMq;
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
//! // The broker from AMQP_URL, amqp://guest:guest@127.0.0.1:5672/%2f if unset.
//! let rabbit = RabbitMq::from_env().queues_per_group(8).build()?;
//! let bus = EventBus::builder()
//!     .transport(rabbit)
//!     .handler(reserve_stock)
//!     .start()
//!     .await?;
//! bus.publish(&OrderPaid { order_id: "XYZ-123".into(), total_cents: 4200 }).await?;
//! # bus.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Topology
//!
//! ```text
//!  publisher ── routing key = murmur2(key) % N ──▶ exchange `orders` (direct, durable)
//!                                                   │ binding "0"   │ "1"  …  │ "N-1"
//!              ┌────────────────────────────────────┼───────────────┼─────────┘
//!   group      ▼                                    ▼               ▼
//!  `inventory` inventory.orders.0           inventory.orders.1 … inventory.orders.N-1
//!              quorum queues, durable, x-single-active-consumer,
//!              x-dead-letter-exchange = inventory.dead-letters
//!                 │ active   ┊ waiting         (each member consumes every queue;
//!              member A    member B             the broker delivers a queue to one)
//!
//!   group      billing.orders.0 … billing.orders.N-1     (every group: its own N queues,
//!  `billing`                                              so each group gets every event)
//!
//!   dead letters: exchange `inventory.dead-letters` (fanout) ──▶ quorum queue of that name
//! ```
//!
//! | eventflow | RabbitMQ |
//! |---|---|
//! | topic `orders` | direct exchange `<prefix>orders`, durable |
//! | partition key | routing key: the queue number, murmur2 of the key modulo N (as Kafka's partitioner); random for an event without a key |
//! | group `inventory` | per topic N durable quorum queues `<prefix>inventory.orders.<n>`, each bound with key `<n>`, each with a single active consumer |
//! | member (bus worker) | a connection consuming every queue of the group, with prefetch; the broker makes it the active consumer of some |
//! | envelope metadata | [AMQP properties and headers](properties): `message-id`, `type`, `content-type`, `correlation-id`, `timestamp`, `traceparent` |
//! | handled or dead-lettered | acknowledged (`basic.ack`, manual) |
//! | dead letter | the bus's dead-letter store, and exchange + quorum queue `<prefix>inventory.dead-letters` with the error, attempts and origin in headers |
//!
//! N is [`queues_per_group`](RabbitMqBuilder::queues_per_group) (default 4), the same for
//! every application on the topic. Why queues and not a stream: per-key order with
//! competing consumers needs a queue per key range that only one member reads at a time,
//! which single-active-consumer quorum queues give with plain AMQP 0-9-1 and no plugin;
//! streams have single active consumers only through the stream protocol.
//!
//! # Guarantees
//!
//! - **Publishing**: the channel is in confirm mode; `publish` returns once the broker
//!   confirmed the message (written to a quorum of the queues' replicas), so the outbox
//!   relay marks entries delivered only then. Messages are persistent, queues and
//!   exchanges durable. A negative confirm is an error ([`Error::Refused`]); the relay
//!   publishes again. While the broker is unreachable, publishing fails at once (one
//!   connection attempt per backoff period) and units of work keep committing locally.
//! - **Consuming**: manual acknowledgements, sent when the bus commits: after the handler
//!   succeeded or the event was dead-lettered. Each queue delivers to one member at a
//!   time (its single active consumer), so events of one key are handled in publish
//!   order. A member holds at most [`prefetch`](RabbitMqBuilder::prefetch) unacknowledged
//!   messages per queue (backpressure).
//! - **Sharing the work**: every member queues up on every queue of its group; the broker
//!   makes one active per queue. Each second a member counts the group's members and
//!   hands the queues above its fair share on: it stops taking their messages, waits
//!   until what it took is acknowledged, and closes their channel (returning what was
//!   prefetched, ahead of later messages) so that the next member in line takes over;
//!   order per key holds across the hand-over.
//! - **Members that die**: their connection closes and the broker returns their
//!   unacknowledged messages to the queues, for the next member in line; the inbox of a
//!   bus with storage suppresses the repeats. Nothing committed is delivered again.
//! - **A restarted group** resumes where it stopped: its queues are durable and kept
//!   the messages published meanwhile. What "the last commit" is for Kafka offsets is
//!   here the set of acknowledged messages; a group first subscribed receives what is
//!   published from then on (its queues did not exist before).
//! - **Connection loss**: a member reconnects with backoff
//!   ([`reconnect_backoff`](RabbitMqBuilder::reconnect_backoff)), declares its queues
//!   again and resumes; messages it had not acknowledged are delivered again.
//! - **Foreign messages**: a message on a group's queue that is not an eventflow event
//!   goes to the group's dead-letter exchange with the reason in
//!   [`eventflow-error`](properties::ERROR), and the queue moves on.
#![warn(missing_docs)]

mod config;
mod consumer;
mod error;
mod member;
pub mod properties;
mod publisher;
mod topology;
mod transport;

pub use config::{RabbitMqBuilder, DEFAULT_URL};
pub use error::Error;
/// The lapin version this crate is built on, for raw access next to eventflow.
pub use lapin;
pub use transport::RabbitMq;
