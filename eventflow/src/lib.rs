//! eventflow: event-driven systems for Rust.
//!
//! An application publishes *facts* ("`OrderPaid` happened for order XYZ-123"); independent
//! consumer groups react to them. Each group receives every event, the instances of one group
//! share the work, and a group that fails does not hold the others up.
//!
//! - [`#[derive(Event)]`](derive@Event) declares an event: name, version, topic, partition key.
//! - [`#[subscribe]`](macro@subscribe) turns an `async fn` into a [`Handler`] of one
//!   consumer group, with a retry budget; arguments after the event are extractors
//!   ([`Context`], [`State`], [`Tx`] — the handler's unit of work, typed as the storage's
//!   own transaction with `Tx<SqliteTransaction>` —, or your own [`FromContext`]).
//! - [`EventBus`] publishes and runs handlers over a [`Transport`](transport::Transport):
//!   the default [`InProcess`] transport has Kafka's partition and consumer-group semantics
//!   without a server; `eventflow-kafka` is the same on Kafka.
//!
//! # Example
//!
//! ```
//! use eventflow::{subscribe, Context, Event, EventBus, InProcess, State};
//! use serde::{Deserialize, Serialize};
//! use std::sync::{Arc, Mutex};
//!
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(name = "order.paid", topic = "orders")]
//! struct OrderPaid {
//!     #[event(key)]
//!     order_id: String,
//!     total_cents: u64,
//! }
//!
//! #[derive(Clone, Default)]
//! struct Stock(Arc<Mutex<Vec<String>>>);
//!
//! #[subscribe(group = "inventory")]
//! async fn reserve_stock(event: OrderPaid, State(stock): State<Stock>) -> Result<(), std::io::Error> {
//!     stock.0.lock().unwrap().push(event.order_id);
//!     Ok(())
//! }
//!
//! #[subscribe(group = "notification", retries = 5)]
//! async fn send_confirmation(event: OrderPaid, ctx: Context) -> Result<(), std::io::Error> {
//!     println!("mail for {} (event {})", event.order_id, ctx.event_id());
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventflow::Error> {
//! let transport = InProcess::new();
//! let stock = Stock::default();
//! let bus = EventBus::builder()
//!     .transport(transport.clone())
//!     .state(stock.clone())
//!     .handler(reserve_stock)
//!     .handler(send_confirmation)
//!     .start()
//!     .await?;
//!
//! bus.publish(&OrderPaid { order_id: "XYZ-123".into(), total_cents: 4200 }).await?;
//! transport.wait_idle().await;
//! assert_eq!(*stock.0.lock().unwrap(), ["XYZ-123"]);
//! bus.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Delivery guarantees
//!
//! Handling is at least once: an event is committed only after its handler succeeded or the
//! event was dead-lettered, so an event being handled when a process dies is handled again
//! by whoever takes its partition over. Within a group, events with the same key are
//! handled one after the other, in publish order.
//!
//! # Retries and dead letters
//!
//! A failing handler (an `Err` or a panic) is retried up to its budget (`retries`, 3 by
//! default) with exponential [`Backoff`] and jitter; then the event is stored as a
//! [`DeadLetter`] with the error and the attempt count, and its partition moves on. An event
//! whose payload does not decode, or whose version the handler does not know, is
//! dead-lettered at once. So is a message that is not an eventflow event at all
//! ([`Envelope::FOREIGN`], kept raw with the reason), in every group that reads it.
//!
//! On the bus: [`EventBus::dead_letters`] lists them, [`EventBus::dead_letter_counts`]
//! counts them per group, [`EventBus::replay_dead_letter`] runs one again and
//! [`EventBus::replay_dead_letters`] a whole group in the order it gave up on them,
//! [`EventBus::discard_dead_letter`] drops one and [`EventBus::purge_dead_letters`] a
//! group's.
//!
//! By default a dead letter does not hold its key up: later events of the key are handled.
//! A group with [sequenced dead letters](EventBusBuilder::sequenced_dead_letters) parks
//! them behind it instead (Axon's sequenced dead-letter queue), and handles them in order
//! once it is replayed or discarded; other keys flow on.
//!
//! # Poison events in the outbox
//!
//! An outbox entry the transport refuses for good ([`Error::Rejected`]: larger than the
//! broker takes, an invalid topic, a record the broker rejects) is dead-lettered in group
//! [`Relay::DEAD_LETTER_GROUP`] with the transport's reason and what to do; the rest of its
//! batch is delivered and the relay goes on. Transient failures (broker down, timeouts)
//! are retried with backoff. Later events of the refused event's key are delivered, or,
//! with `sequenced_dead_letters(Relay::DEAD_LETTER_GROUP)`, parked behind it.
//!
//! # Event versions and upcasting
//!
//! An event's payload schema has a version; `#[event(version = 2, upcast(from = OrderPaidV1))]`
//! or `upcast(v1 = function)` declares how older versions become the current one, and every
//! reader (handlers, [`Repository::load`], dead-letter replays, [`decode`]) goes through
//! it. A version that cannot be read is an [`Error::Upcast`], never a silent decode. The
//! [`versioning`] guide says which changes need a new version and how to roll one out
//! (consumers first, then producers).
//!
//! # Event sourcing
//!
//! An [`Aggregate`] is rebuilt from its events by a [`Repository`]. Its events are one
//! [`Event`] enum, or an [`EventSet`] enum wrapping existing events, each saved and
//! published under its own name, so other groups subscribe to the event types themselves.
//! [`testing::AggregateTest`] checks commands with no storage and no bus:
//!
//! ```
//! use eventflow::testing::AggregateTest;
//! use eventflow::{Aggregate, Event, EventSet, Loaded};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
//! #[event(name = "book.borrowed", topic = "lending")]
//! struct BookBorrowed { #[event(key)] book: String, member: String }
//!
//! #[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
//! #[event(name = "book.returned", topic = "lending")]
//! struct BookReturned { #[event(key)] book: String }
//!
//! #[derive(EventSet, Debug, PartialEq)]
//! enum BookEvent {
//!     Borrowed(BookBorrowed),
//!     Returned(BookReturned),
//! }
//!
//! #[derive(Default)]
//! struct Book { borrowed_by: Option<String> }
//!
//! impl Aggregate for Book {
//!     type Event = BookEvent;
//!     const KIND: &'static str = "book";
//!     fn apply(&mut self, event: &BookEvent) {
//!         self.borrowed_by = match event {
//!             BookEvent::Borrowed(e) => Some(e.member.clone()),
//!             BookEvent::Returned(_) => None,
//!         };
//!     }
//! }
//!
//! fn borrow(book: &mut Loaded<Book>, member: &str) -> Result<(), String> {
//!     if let Some(by) = &book.borrowed_by {
//!         return Err(format!("borrowed by {by}"));
//!     }
//!     let id = book.id().to_owned();
//!     book.record(BookEvent::Borrowed(BookBorrowed { book: id, member: member.into() }));
//!     Ok(())
//! }
//!
//! let ann = || BookEvent::Borrowed(BookBorrowed { book: "test-1".into(), member: "ann".into() });
//! AggregateTest::<Book>::given([])
//!     .when(|book| borrow(book, "ann"))
//!     .then([ann()]);
//! AggregateTest::<Book>::given([ann()])
//!     .when(|book| borrow(book, "bob"))
//!     .then_error("borrowed by ann".to_string());
//! ```
//!
//! # Shutting down, and waiting until handled
//!
//! [`EventBus::shutdown`] is graceful: it stops taking new publishes, lets the groups handle
//! (or dead-letter) what was already published or committed, then stops, within
//! [`EventBusBuilder::shutdown_timeout`]; [`EventBus::run_until_signal`] does it on Ctrl-C
//! or SIGTERM ([`shutdown_signal`]). [`EventBus::settled`] and
//! [`EventBus::settled_within`] wait until what was published or committed through the bus
//! has been handled, across the outbox, the transport and retries: what a test, an example
//! or a short-lived tool waits for before it checks the effects or exits.
//!
//! # Automatic registration
//!
//! [`EventBusBuilder::discovered_handlers`] registers every `#[subscribe]` function in the
//! program, through the `inventory` crate. One trap: a module nothing references may not be
//! linked, so its handlers are absent. Tests should register handlers explicitly with
//! [`EventBusBuilder::handler`], so each test has its own set.
#![warn(missing_docs)]

pub mod aggregate;
mod bus;
pub mod codec;
mod context;
mod dead_letter;
mod envelope;
mod error;
mod event;
mod follow_ups;
mod future;
mod handler;
pub mod headers;
mod outbox_progress;
mod outgoing;
pub mod projection;
mod publish_error;
mod published;
mod relay;
mod relay_settings;
mod retry;
mod signal;
mod state;
pub mod store;
pub mod transport;
mod tx;
pub mod upcast;

#[doc = include_str!("../docs/versioning.md")]
pub mod versioning {}

pub use aggregate::{testing, Aggregate, EventSet, Loaded, Repository, Snapshots};
pub use bus::{EventBus, EventBusBuilder, UnitOfWork};
pub use context::{Context, FromContext, State};
pub use dead_letter::{DeadLetter, Replayed};
pub use envelope::Envelope;
pub use error::{BoxError, Error};
pub use event::Event;
pub use future::BoxFuture;
pub use handler::{Handler, HandlerOptions};
pub use headers::{Headers, TRACEPARENT};
pub use outbox_progress::OutboxProgress;
pub use projection::{Projection, ProjectionHandle};
pub use publish_error::Rejection;
pub use relay::Relay;
pub use relay_settings::RelaySettings;
pub use retry::Backoff;
pub use signal::shutdown_signal;
pub use state::StateMap;
/// The embedded default storage, beside [`MemoryStore`]; its builder and transaction are in
/// [`store`].
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{
    CheckpointStore, DeadLetterStore, EventStore, InboxStore, MemoryStore, OutboxStore, Storage,
};
pub use transport::InProcess;
pub use tx::{TransactionType, Tx, TxGuard};
pub use upcast::{decode, decode_with};

#[cfg(feature = "macros")]
pub use eventflow_macros::{subscribe, Event, EventSet};

/// The README's Rust blocks, run as doc tests (`cargo test --doc -p eventflow`), so that what
/// a newcomer copies from it compiles and runs.
#[cfg(all(doctest, feature = "macros", feature = "sqlite"))]
#[doc = include_str!("../../README.md")]
mod readme {}

/// Re-exports for the code the macros generate. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::aggregate::not_in_set;
    pub use crate::bus::Registration;
    pub use inventory;
    pub use serde;

    /// Converts a handler's error into the boxed error the bus handles.
    pub fn box_error<E: Into<crate::BoxError>>(error: E) -> crate::BoxError {
        error.into()
    }
}
