//! MongoDB storage for [eventflow]: the event store, the transactional outbox,
//! the inbox, dead letters and checkpoints in MongoDB, with the outbox relayed from a change
//! stream, and change data capture for collections eventflow does not write.
//!
//! - **Units of work** are multi-document transactions on a `ClientSession`: the
//!   application's own writes ([`MongoTransaction::session`]), the events it appends, the
//!   outbox entries and the inbox marker commit together.
//! - **Event store**: one document per event; a unique index on (stream, version) turns a
//!   concurrent append into [`Error::Conflict`](eventflow::Error::Conflict).
//! - **Inbox**: a unique index on (group, event id); a duplicate key (11000) means the group
//!   processed the event already.
//! - **Outbox**: one document per unit of work, holding its entries (each with its own
//!   sequence), so a unit of work costs the server one insert, one change-stream read and
//!   one delete however many events it publishes.
//! - **Outbox relay**: [`open_outbox`](eventflow::store::OutboxStore::open_outbox) returns
//!   a feed of its own that follows a change stream on the outbox collection and is woken
//!   by it, so commits of any process reach the transport without polling; it saves the stream's resume token as it
//!   delivers (at most once a second) and resumes from it, and scans the outbox when the
//!   token is gone from the oplog or the stream breaks. The relays of several processes
//!   share the outbox through a lease. See [`MongoStore`] and the
//!   [`OUTBOX_POSITION_CHECKPOINT`].
//! - **Snapshots** of aggregates: one document per stream in `eventflow_snapshots`.
//! - **Projections** save their checkpoint in the transaction of their own writes.
//! - **Change data capture**: [`ChangeCapture`] turns the inserts, updates, replaces and
//!   deletes of any collection into events.
//!
//! It needs a replica set or a sharded cluster (a single-node replica set will do):
//! transactions and change streams do not exist on a standalone server.
//!
//! # Example
//!
//! ```no_run
//! use eventflow::{subscribe, Event, EventBus};
//! use eventflow_mongo::{MongoStore, MongoTransaction};
//! use mongodb::bson::{doc, Document};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(name = "order.placed", topic = "orders")]
//! struct OrderPlaced {
//!     #[event(key)]
//!     order_id: String,
//!     total_cents: u64,
//! }
//!
//! #[subscribe(group = "inventory")]
//! async fn reserve_stock(order: OrderPlaced) -> Result<(), std::io::Error> {
//!     println!("reserving stock for {}", order.order_id);
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // MONGODB_URI (default mongodb://127.0.0.1:27017/?directConnection=true) and
//! // MONGODB_DATABASE (default eventflow):
//! let store = MongoStore::from_env().await?;
//! let orders = store.database().collection::<Document>("orders");
//! let bus = EventBus::builder()
//!     .storage(store)
//!     .handler(reserve_stock)
//!     .start()
//!     .await?;
//!
//! // The order document and its event commit together, or not at all.
//! let mut work = bus.begin().await?;
//! let mongo = work.transaction().downcast_mut::<MongoTransaction>().unwrap();
//! orders
//!     .insert_one(doc! { "_id": "XYZ-123", "total_cents": 4200 })
//!     .session(mongo.session())
//!     .await?;
//! work.publish(&OrderPlaced { order_id: "XYZ-123".into(), total_cents: 4200 }).await?;
//! work.commit().await?;
//! # bus.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Delivery guarantees
//!
//! The relay delivers every committed outbox entry at least once, in commit order, and
//! marks it delivered only after the transport accepted it: a crash in between delivers it
//! again, and the consumers' inbox absorbs the duplicate. A handler taking
//! [`Tx<MongoTransaction>`](eventflow::Tx) writes through the same transaction as its
//! inbox marker (`tx.lock().await.session()`), so its effect on MongoDB happens exactly
//! once. This crate turns on eventflow's `mongodb` feature, so `?` on a
//! `mongodb::error::Error` works in a handler returning `eventflow::Error`.
#![warn(missing_docs)]

mod cdc;
mod checkpoints;
mod client;
mod document;
mod error;
mod inbox;
mod outbox;
mod schema;
mod snapshots;
mod store;
mod transaction;

pub use cdc::{ChangeCapture, ChangeOperation, DocumentChange, Snapshot};
pub use client::CollectionNames;
pub use mongodb;
pub use outbox::OUTBOX_POSITION_CHECKPOINT;
pub use store::{MongoStore, MongoStoreBuilder, DEFAULT_URI};
pub use transaction::MongoTransaction;

/// For the benchmark: not public API.
#[doc(hidden)]
pub mod __private {
    use eventflow::{Envelope, Error};
    use mongodb::bson::{doc, Document};

    /// The document a per-event outbox holds for `envelope` at `sequence`: the benchmark's
    /// baseline, and the layout eventflow-mongo wrote before it kept one document per unit
    /// of work (still read).
    pub fn outbox_document(sequence: u64, envelope: &Envelope) -> Result<Document, Error> {
        let mut doc = doc! { "_id": crate::document::int(sequence) };
        crate::document::put_envelope(&mut doc, envelope)?;
        Ok(doc)
    }

    /// The widest range of outbox sequences one clean-up delete covers.
    pub const OUTBOX_CLEANUP_CHUNK: u64 = crate::outbox::CLEANUP_CHUNK;
}
