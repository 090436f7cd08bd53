//! Snapshots of an aggregate's state: the [`Snapshots`] policy an aggregate opts in with,
//! and how the [`Repository`](super::Repository) uses them.
//!
//! Loading reads the newest snapshot of the stream and replays only the events after it.
//! A snapshot is written after the events it reflects have committed, outside any unit of
//! work: it never takes part in optimistic concurrency, and the event stream stays the
//! truth. A snapshot of another state schema is ignored (and replaced by the next one), one
//! that does not decode is ignored with a warning, and a snapshot that cannot be written is
//! a warning too: each only makes a load replay more events.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::{Storage, StoredSnapshot};

/// When an aggregate's state is snapshotted, and the version of its schema; what
/// [`Aggregate::snapshots`](crate::Aggregate::snapshots) returns.
///
/// ```
/// use eventflow::aggregate::Snapshots;
/// # #[derive(Default, serde::Serialize, serde::Deserialize)]
/// # struct Book { loans: u64 }
///
/// // Every 100 events; bump the schema version when the state's fields change, so older
/// // snapshots are ignored and rebuilt instead of misread.
/// let policy: Snapshots<Book> = Snapshots::every(100).schema_version(2);
/// // Or by a rule of your own, on the state and the version just saved or loaded:
/// let policy: Snapshots<Book> = Snapshots::when(|book, _version| book.loans % 50 == 0);
/// ```
pub struct Snapshots<A> {
    due: Due<A>,
    schema: u32,
    codec: Option<StateCodec<A>>,
}

enum Due<A> {
    Never,
    Every(u64),
    When(fn(&A, u64) -> bool),
}

struct StateCodec<A> {
    encode: fn(&A) -> serde_json::Result<Vec<u8>>,
    decode: fn(&[u8]) -> serde_json::Result<A>,
}

impl<A> Snapshots<A> {
    /// No snapshots: loading replays the whole stream. The default.
    pub fn never() -> Self {
        Snapshots {
            due: Due::Never,
            schema: 1,
            codec: None,
        }
    }

    /// The version of the state's schema, 1 by default. Bump it when a change to the
    /// state's type would make an older snapshot decode into a wrong state (a field whose
    /// meaning changed, a new field that `apply` fills but whose default is not what the
    /// events add up to); snapshots of another version are then ignored and rebuilt.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema = version;
        self
    }

    fn codec(&self) -> Option<&StateCodec<A>> {
        match self.due {
            Due::Never => None,
            _ => self.codec.as_ref(),
        }
    }
}

impl<A: Serialize + DeserializeOwned> Snapshots<A> {
    /// A snapshot each time the stream passes a multiple of `events` (at least 1) on
    /// [`Repository::save`](super::Repository::save), and when a load replayed at least
    /// `events` events after the newest snapshot (events saved in a
    /// [`UnitOfWork`](crate::UnitOfWork), or before snapshots were turned on).
    pub fn every(events: u64) -> Self {
        Snapshots {
            due: Due::Every(events.max(1)),
            ..Snapshots::serde()
        }
    }

    /// A snapshot when `due(state, version)` says so, asked after each
    /// [`Repository::save`](super::Repository::save) and after each load that replayed
    /// events after the newest snapshot.
    pub fn when(due: fn(&A, u64) -> bool) -> Self {
        Snapshots {
            due: Due::When(due),
            ..Snapshots::serde()
        }
    }

    fn serde() -> Self {
        Snapshots {
            due: Due::Never,
            schema: 1,
            codec: Some(StateCodec {
                encode: |state| serde_json::to_vec(state),
                decode: |bytes| serde_json::from_slice(bytes),
            }),
        }
    }
}

impl<A> std::fmt::Debug for Snapshots<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let due = match self.due {
            Due::Never => "never".to_owned(),
            Due::Every(n) => format!("every {n} events"),
            Due::When(_) => "when a function says so".to_owned(),
        };
        f.debug_struct("Snapshots")
            .field("due", &due)
            .field("schema_version", &self.schema)
            .finish()
    }
}

// The helpers below take the aggregate's policy (`Aggregate::snapshots`) as an argument
// rather than asking the aggregate for it, so that this module does not import the
// `Aggregate` trait whose policy type it defines.

/// The state and version to replay from: the stream's snapshot if it is usable, else the
/// default state at version 0.
pub(super) async fn restore<A: Default>(
    policy: &Snapshots<A>,
    storage: &dyn Storage,
    stream: &str,
) -> (A, u64) {
    let (Some(codec), Some(snapshots)) = (policy.codec(), storage.snapshots()) else {
        return (A::default(), 0);
    };
    let snapshot = match snapshots.load_snapshot(stream).await {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return (A::default(), 0),
        Err(error) => {
            tracing::warn!(%stream, %error, "reading the snapshot failed; the aggregate is loaded from its whole stream");
            return (A::default(), 0);
        }
    };
    if snapshot.schema != policy.schema {
        tracing::debug!(
            %stream,
            found = snapshot.schema,
            expected = policy.schema,
            "the snapshot is of another state schema; it is ignored and the aggregate loaded from its whole stream"
        );
        return (A::default(), 0);
    }
    match (codec.decode)(&snapshot.state) {
        Ok(state) => (state, snapshot.version),
        Err(error) => {
            tracing::warn!(
                %stream,
                version = snapshot.version,
                %error,
                "the snapshot does not decode as the aggregate's state; it is ignored and the \
                 aggregate loaded from its whole stream. If the state's type changed, bump \
                 `Snapshots::schema_version`"
            );
            (A::default(), 0)
        }
    }
}

/// After a load that replayed `replayed` events after its snapshot: writes a new snapshot in
/// the background if one is due. In the background, because the load may run inside an
/// open unit of work that holds the store's write lock (SQLite) until it commits.
pub(super) fn after_load<A>(
    policy: &Snapshots<A>,
    storage: &Arc<dyn Storage>,
    stream: &str,
    state: &A,
    version: u64,
    replayed: u64,
) {
    let due = replayed > 0
        && match policy.due {
            Due::Never => false,
            Due::Every(n) => replayed >= n,
            Due::When(due) => due(state, version),
        };
    if let Some(snapshot) = due.then(|| encode(policy, stream, state, version)).flatten() {
        let storage = storage.clone();
        tokio::spawn(async move { save(&*storage, snapshot).await });
    }
}

/// After a save moved the stream from version `from` to `to`: writes a snapshot if one is
/// due.
pub(super) async fn after_save<A>(
    policy: &Snapshots<A>,
    storage: &dyn Storage,
    stream: &str,
    state: &A,
    from: u64,
    to: u64,
) {
    let due = from != to
        && match policy.due {
            Due::Never => false,
            Due::Every(n) => from / n != to / n,
            Due::When(due) => due(state, to),
        };
    if let Some(snapshot) = due.then(|| encode(policy, stream, state, to)).flatten() {
        save(storage, snapshot).await;
    }
}

fn encode<A>(policy: &Snapshots<A>, stream: &str, state: &A, version: u64) -> Option<StoredSnapshot> {
    let codec = policy.codec()?;
    match (codec.encode)(state) {
        Ok(bytes) => Some(StoredSnapshot {
            stream: stream.to_owned(),
            version,
            schema: policy.schema,
            state: bytes,
        }),
        Err(error) => {
            tracing::warn!(%stream, version, %error, "the aggregate's state does not encode; no snapshot is taken, loads replay its events");
            None
        }
    }
}

async fn save(storage: &dyn Storage, snapshot: StoredSnapshot) {
    let Some(snapshots) = storage.snapshots() else {
        return;
    };
    let (stream, version) = (snapshot.stream.clone(), snapshot.version);
    if let Err(error) = snapshots.save_snapshot(snapshot).await {
        tracing::warn!(%stream, version, %error, "saving a snapshot failed; loads replay the events after the previous one");
    }
}
