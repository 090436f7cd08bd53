//! Snapshots of aggregates' state: [`StoredSnapshot`] and where they are kept,
//! [`SnapshotStore`].
//!
//! A snapshot is an optimisation, never the truth: it holds an aggregate's state as its
//! events added up to at one version of its stream, so that loading the aggregate replays
//! only the events after it. Snapshots are written after the events commit, outside any
//! unit of work, so they never take part in optimistic concurrency, and a lost or unreadable
//! snapshot only makes the next load replay more events.

use async_trait::async_trait;

use crate::Error;

/// An aggregate's state at one version of its stream, as a store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// The aggregate's stream, e.g. `book-42`.
    pub stream: String,
    /// The stream version the state reflects: the events up to and including it.
    pub version: u64,
    /// The version of the state's schema it was written with
    /// ([`Snapshots::schema_version`](crate::aggregate::Snapshots::schema_version)); a
    /// snapshot of another schema is ignored and rebuilt, never decoded.
    pub schema: u32,
    /// The encoded state.
    pub state: Vec<u8>,
}

/// Where snapshots are kept: one per stream, the newest.
///
/// A backend returns itself from [`Storage::snapshots`](super::Storage::snapshots).
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The snapshot kept for `stream`, if there is one.
    async fn load_snapshot(&self, stream: &str) -> Result<Option<StoredSnapshot>, Error>;

    /// Keeps `snapshot` as its stream's snapshot, replacing the one kept before; unless that
    /// one is of a later version and the same schema (a slower writer's older snapshot
    /// never replaces a newer one), in which case nothing changes.
    async fn save_snapshot(&self, snapshot: StoredSnapshot) -> Result<(), Error>;
}
