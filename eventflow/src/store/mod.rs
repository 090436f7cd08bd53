//! Storage: the event store, the transactional outbox, the idempotency inbox, dead letters
//! and checkpoints, one trait per concern, bundled as the [`Storage`] a bus takes, with a
//! [`Transaction`] for units of work.
//!
//! A backend implements the traits on its own types (as sqlx drivers implement
//! `Database`), one at a time, each proved by its own module of the conformance suite in
//! [`conformance`]: [`MemoryStore`] here, `SqliteStore`, and `eventflow_mongo::MongoStore`.
//!
//! | Trait | Concern | Methods |
//! |---|---|---|
//! | [`EventStore`] | reading streams | `read_stream`, `read_all`, `head_position` |
//! | [`OutboxStore`] | the outbox as the relay's feed | `open_outbox` (an [`OutboxFeed`]: `next`, `delivered`, `rewind`, `hold`, `close`), `outbox_lease`, `commit_signal` |
//! | [`LeasedOutbox`] (row stores) | the outbox as rows under a lease, fed by [`PolledOutbox`] | `claim_outbox`, `mark_delivered`, `release_outbox` |
//! | [`InboxStore`] | which events a group processed | `is_processed`, `mark_processed`, `processed`, `mark_all_processed`, `prune_inbox` |
//! | [`CheckpointStore`] | named positions | `checkpoint`, `save_checkpoint` |
//! | [`DeadLetterStore`] | events a group gave up on | `put`, `list`, `take`, `purge`, `counts`, `blocked_keys` |
//! | [`SnapshotStore`] (optional) | aggregates' snapshots | `load_snapshot`, `save_snapshot` |
//! | [`Storage`] | the bundle, and the way in | `begin`, `snapshots` |
//! | [`Transaction`] | one unit of work | `append`, `enqueue`, `mark_processed`, `commit`, `save_checkpoint`, savepoints |
//!
//! Methods with a default (`head_position`, `outbox_lease`, `processed`, ...) need not be
//! written; the defaults are correct, only slower or less informative.
//!
//! The design follows what every backend can do in one transaction: insert rows or
//! documents, fail an insert on a unique key (stream + version for the event store,
//! group + event id for the inbox), and update a lease.

mod checkpoints;
pub mod conformance;
mod dead_letters;
mod event_store;
mod inbox;
mod lease;
mod leased_outbox;
mod memory;
mod outbox;
mod outbox_entry;
mod outbox_feed;
mod polled_outbox;
mod snapshots;
#[cfg(feature = "sqlite")]
mod sqlite;
mod storage;
mod transaction;

pub use checkpoints::CheckpointStore;
pub use dead_letters::DeadLetterStore;
pub use event_store::{EventStore, ExpectedVersion, StoredEvent};
pub use inbox::InboxStore;
pub use lease::{new_relay_id, relay_is_gone, OutboxLease};
pub use leased_outbox::LeasedOutbox;
pub use memory::MemoryStore;
pub use outbox::OutboxStore;
pub use outbox_entry::OutboxEntry;
pub use outbox_feed::{Fed, FeedSettings, OutboxFeed};
pub use polled_outbox::PolledOutbox;
pub use snapshots::{SnapshotStore, StoredSnapshot};
#[cfg(feature = "sqlite")]
pub use sqlite::{rusqlite, SqliteStore, SqliteStoreBuilder, SqliteTransaction};
pub use storage::Storage;
pub use transaction::Transaction;
