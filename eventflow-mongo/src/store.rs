//! [`MongoStore`]: connection, collections and indexes, and the reads and bookkeeping
//! writes of the [`Storage`] trait.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use eventflow::store::{
    CheckpointStore, EventStore, FeedSettings, InboxStore, OutboxFeed, OutboxStore, SnapshotStore, Storage,
    StoredEvent, Transaction,
};
use eventflow::{DeadLetter, DeadLetterStore, Error};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Client, Database};
use tokio::sync::watch;
use uuid::Uuid;

use crate::client::{CollectionNames, Inner};
use crate::document::{self, field, int, uuid_bson};
use crate::error::{backend, is_duplicate_key, unreadable};
use crate::inbox::marker;
use crate::outbox::{MongoFeed, Outbox};
use crate::transaction::MongoTransaction;

/// The URI [`MongoStore::from_env`] uses when `MONGODB_URI` is not set: a server on this
/// machine.
pub const DEFAULT_URI: &str = "mongodb://127.0.0.1:27017/?directConnection=true";

/// eventflow's storage on MongoDB: event store, transactional outbox, inbox, dead letters
/// and checkpoints, in one database.
///
/// Needs a replica set or a sharded cluster (MongoDB 4.2 or later; a single-node replica
/// set will do), because units of work are multi-document transactions and the relay
/// follows a change stream. Clones share one client and its connection pool.
///
/// ```no_run
/// use eventflow::store::EventStore;
/// use eventflow_mongo::MongoStore;
///
/// # async fn example() -> Result<(), eventflow::Error> {
/// // MONGODB_URI and MONGODB_DATABASE, with local defaults:
/// let store = MongoStore::from_env().await?;
/// // or explicitly:
/// let store = MongoStore::connect("mongodb://db1,db2,db3/?replicaSet=rs0", "shop").await?;
/// let orders = store.read_stream("order-1", 1).await?;
/// # Ok(())
/// # }
/// ```
///
/// # Numbering in commit order, and what it costs
///
/// Event positions ([`read_all`](eventflow::store::EventStore::read_all)) and outbox sequences must increase in
/// commit order, with no gaps a reader could skip. A unit of work that appends or enqueues
/// takes its numbers from one counter document, incremented inside its transaction, just
/// before the commit, so such units of work commit one at a time:
///
/// - In one process they queue for a lock around their commit, and do not conflict.
/// - Across processes, two that overlap conflict on the counter: MongoDB aborts one with a
///   `WriteConflict` (a `TransientTransactionError`), and eventflow runs its own writes
///   again in a new transaction (up to
///   [`transaction_retries`](MongoStoreBuilder::transaction_retries) times, with a random
///   backoff).
/// - A unit of work in which the application wrote through the
///   [session](MongoTransaction::session) holds a snapshot from its first write: if another
///   unit of work took numbers since, its own counter update conflicts, and since eventflow
///   cannot replay the application's writes, the commit fails with an error saying to run
///   the unit of work again (a handler with [`Tx`](eventflow::Tx) is retried by the bus).
///   Keep such units of work short, or retry them.
///
/// Units of work that only record inbox markers and the application's writes (handlers
/// with [`Tx`](eventflow::Tx) that publish nothing through it) do not touch the counter and
/// do not conflict with each other.
///
/// A process killed in the middle of a commit leaves its transaction open on the server,
/// holding the counter, until the server aborts it after `transactionLifetimeLimitSeconds`
/// (60 s by default): until then, units of work that publish fail after their retries
/// with the transient-error message above. Lower that server parameter to shorten the
/// stall, or end the dead process's sessions with `killSessions`.
#[derive(Clone)]
pub struct MongoStore {
    pub(crate) inner: Arc<Inner>,
    /// What the relay feeds opened on this handle share: the clean-up, the watermark.
    pub(crate) outbox: Arc<Outbox>,
}

/// Opens a [`MongoStore`] with non-default settings; from [`MongoStore::builder`].
#[derive(Clone, Debug)]
pub struct MongoStoreBuilder {
    client: Client,
    database: String,
    names: CollectionNames,
    transaction_retries: u32,
    cleanup_interval: Duration,
}

impl MongoStoreBuilder {
    /// The names of eventflow's collections. Default: [`CollectionNames::default`].
    pub fn collections(mut self, names: CollectionNames) -> Self {
        self.names = names;
        self
    }

    /// How many times a unit of work whose transaction MongoDB aborted with a transient
    /// error (a `WriteConflict` with a concurrent unit of work, a failover) is run again
    /// before its commit fails. The transaction spec's commit retries on an
    /// `UnknownTransactionCommitResult` count against the same budget. Default 20.
    pub fn transaction_retries(mut self, retries: u32) -> Self {
        self.transaction_retries = retries;
        self
    }

    /// How often the relay deletes the outbox entries it delivered. Default 1 s.
    ///
    /// A background task deletes the documents whose entries are all delivered, by `_id`,
    /// at most 1024 entries per delete, one delete at a time, so commits are never held up
    /// behind one long delete. Deleting costs the server the same whatever the interval: a
    /// longer interval lets the outbox hold up to that long's worth of delivered entries,
    /// and moves the work out of a burst shorter than it (it is done after the burst, not
    /// avoided).
    pub fn outbox_cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// Checks the server and creates eventflow's collections and indexes if they do not
    /// exist (idempotent: every instance of the application may do it at start-up).
    pub async fn open(self) -> Result<MongoStore, Error> {
        let database = self.client.database(&self.database);
        let inner = Arc::new(Inner::new(
            self.client,
            database,
            self.names,
            self.transaction_retries,
            self.cleanup_interval,
        ));
        crate::schema::check_server(&inner).await?;
        crate::schema::create_indexes(&inner).await?;
        Ok(MongoStore {
            outbox: Arc::new(Outbox::new(inner.clone())),
            inner,
        })
    }
}

impl MongoStore {
    /// Connects to `uri` and opens the store in `database` with the default settings.
    pub async fn connect(uri: &str, database: &str) -> Result<Self, Error> {
        let client = Client::with_uri_str(uri).await.map_err(|e| {
            Error::backend(format!(
                "could not use the MongoDB URI `{uri}`: {e}; it should look like \
                 mongodb://host:27017/?replicaSet=rs0"
            ))
        })?;
        MongoStore::builder(client, database).open().await
    }

    /// Connects to `MONGODB_URI` (default [`DEFAULT_URI`]) and opens the store in the
    /// database `MONGODB_DATABASE` (default `eventflow`).
    pub async fn from_env() -> Result<Self, Error> {
        let uri = std::env::var("MONGODB_URI").unwrap_or_else(|_| DEFAULT_URI.to_owned());
        let database = std::env::var("MONGODB_DATABASE").unwrap_or_else(|_| "eventflow".to_owned());
        MongoStore::connect(&uri, &database).await
    }

    /// Settings for a store on `client`'s `database`, e.g. for other
    /// [collection names](MongoStoreBuilder::collections).
    pub fn builder(client: Client, database: &str) -> MongoStoreBuilder {
        MongoStoreBuilder {
            client,
            database: database.to_owned(),
            names: CollectionNames::default(),
            transaction_retries: 20,
            cleanup_interval: crate::outbox::CLEANUP_INTERVAL,
        }
    }

    /// The client, for the application's own work with the server.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The database eventflow's collections are in.
    pub fn database(&self) -> &Database {
        &self.inner.database
    }

    /// How many outbox entries wait for the relay: the relay's backlog.
    pub async fn outbox_backlog(&self) -> Result<u64, Error> {
        self.outbox.backlog().await
    }

    /// The names of eventflow's collections.
    pub fn collection_names(&self) -> &CollectionNames {
        &self.inner.names
    }
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.inner.database.name())
            .field("collections", &self.inner.names)
            .finish_non_exhaustive()
    }
}

fn stored_event(doc: &Document) -> Result<StoredEvent, Error> {
    let read = || -> Result<StoredEvent, String> {
        Ok(StoredEvent {
            position: document::get_u64(doc, "_id")?,
            stream: document::get_str(doc, "stream")?.to_owned(),
            version: document::get_u64(doc, "version")?,
            envelope: document::envelope(doc)?,
        })
    };
    read().map_err(|reason| unreadable(&format!("event {:?}", doc.get("_id")), reason))
}

#[async_trait]
impl EventStore for MongoStore {
    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<StoredEvent>, Error> {
        let cursor = self
            .inner
            .events
            .find(doc! { "stream": stream, "version": { "$gte": int(from_version) } })
            .sort(doc! { "version": 1 })
            .await
            .map_err(|e| backend("reading a stream", e))?;
        let docs: Vec<Document> = cursor
            .try_collect()
            .await
            .map_err(|e| backend("reading a stream", e))?;
        docs.iter().map(stored_event).collect()
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let cursor = self
            .inner
            .events
            .find(doc! { "_id": { "$gt": int(after) } })
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(|e| backend("reading all events", e))?;
        let docs: Vec<Document> = cursor
            .try_collect()
            .await
            .map_err(|e| backend("reading all events", e))?;
        docs.iter().map(stored_event).collect()
    }

    async fn head_position(&self) -> Result<Option<u64>, Error> {
        crate::checkpoints::head_position(&self.inner).await.map(Some)
    }
}

#[async_trait]
impl OutboxStore for MongoStore {
    /// The outbox as a feed of its own: the change stream, the lease, the delivered
    /// watermark and the saved position live in it. The first [`next`](OutboxFeed::next)
    /// takes the lease (or reports who holds it) and positions the change stream at the
    /// saved resume token, or scans the outbox; entries then come in commit order as the
    /// server streams them, from this process or any other.
    async fn open_outbox(&self, relay: &str, settings: FeedSettings) -> Result<Box<dyn OutboxFeed>, Error> {
        Ok(Box::new(MongoFeed::new(self.outbox.clone(), relay, settings)))
    }

    async fn outbox_lease(&self) -> Result<Option<eventflow::store::OutboxLease>, Error> {
        self.outbox.lease().await
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }
}

#[async_trait]
impl InboxStore for MongoStore {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        crate::inbox::is_processed(&self.inner, group, event_id).await
    }

    async fn mark_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        match self.inner.inbox.insert_one(marker(group, event_id)).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(backend("recording a processed event", e)),
        }
    }

    /// Deletes by `_id` in chunks of 1,000, one delete at a time, so pruning never
    /// holds the collection for long. Old markers come first in natural order, so finding a
    /// chunk stops early without an index on `processed_at` (which would cost every marker).
    async fn prune_inbox(&self, before: SystemTime) -> Result<u64, Error> {
        let before = mongodb::bson::DateTime::from_system_time(before);
        let mut pruned = 0;
        loop {
            let old: Vec<Bson> = self
                .inner
                .inbox
                .find(doc! { "processed_at": { "$lt": before } })
                .projection(doc! { "_id": 1 })
                .limit(PRUNE_CHUNK)
                .await
                .map_err(|e| backend("finding old inbox markers", e))?
                .try_filter_map(|marker| async move { Ok(marker.get("_id").cloned()) })
                .try_collect()
                .await
                .map_err(|e| backend("finding old inbox markers", e))?;
            if old.is_empty() {
                return Ok(pruned);
            }
            let found = old.len();
            pruned += self
                .inner
                .inbox
                .delete_many(doc! { "_id": { "$in": old } })
                .await
                .map_err(|e| backend("pruning the inbox", e))?
                .deleted_count;
            if (found as i64) < PRUNE_CHUNK {
                return Ok(pruned);
            }
        }
    }
}

#[async_trait]
impl CheckpointStore for MongoStore {
    async fn checkpoint(&self, name: &str) -> Result<Option<String>, Error> {
        crate::checkpoints::read(&self.inner, name).await
    }

    async fn save_checkpoint(&self, name: &str, value: &str) -> Result<(), Error> {
        self.inner
            .checkpoints
            .update_one(doc! { "_id": name }, doc! { "$set": { "value": value } })
            .upsert(true)
            .await
            .map_err(|e| backend("saving a checkpoint", e))?;
        Ok(())
    }
}

#[async_trait]
impl Storage for MongoStore {
    async fn begin(&self) -> Result<Box<dyn Transaction>, Error> {
        Ok(Box::new(MongoTransaction::begin(self.inner.clone()).await?))
    }

    fn snapshots(&self) -> Option<&dyn SnapshotStore> {
        Some(self)
    }
}

/// Inbox markers deleted per round trip when pruning.
const PRUNE_CHUNK: i64 = 1_000;

#[async_trait]
impl DeadLetterStore for MongoStore {
    async fn put(&self, letter: DeadLetter) -> Result<(), Error> {
        let mut set = doc! {
            "group": &letter.group,
            "error": &letter.error,
            "attempts": i64::from(letter.attempts),
            "failed_at": document::nanos(letter.failed_at)?,
        };
        document::put_envelope(&mut set, &letter.envelope)?;
        self.inner
            .dead_letters
            .update_one(
                doc! { "_id": uuid_bson(letter.id) },
                // `added_at` is set once, so a replaced letter keeps its place in the list.
                doc! { "$set": set, "$setOnInsert": { "added_at": document::now_nanos() } },
            )
            .upsert(true)
            .await
            .map_err(|e| backend("storing a dead letter", e))?;
        Ok(())
    }

    async fn list(&self, group: Option<&str>) -> Result<Vec<DeadLetter>, Error> {
        let filter = match group {
            Some(group) => doc! { "group": group },
            None => doc! {},
        };
        let cursor = self
            .inner
            .dead_letters
            .find(filter)
            .sort(doc! { "added_at": 1, "_id": 1 })
            .await
            .map_err(|e| backend("listing dead letters", e))?;
        let docs: Vec<Document> = cursor
            .try_collect()
            .await
            .map_err(|e| backend("listing dead letters", e))?;
        docs.iter().map(dead_letter).collect()
    }

    async fn take(&self, id: Uuid) -> Result<Option<DeadLetter>, Error> {
        let taken = self
            .inner
            .dead_letters
            .find_one_and_delete(doc! { "_id": uuid_bson(id) })
            .await
            .map_err(|e| backend("taking a dead letter", e))?;
        taken.as_ref().map(dead_letter).transpose()
    }

    async fn purge(&self, group: &str) -> Result<u64, Error> {
        let deleted = self
            .inner
            .dead_letters
            .delete_many(doc! { "group": group })
            .await
            .map_err(|e| backend("purging dead letters", e))?;
        Ok(deleted.deleted_count)
    }

    async fn counts(&self) -> Result<std::collections::BTreeMap<String, u64>, Error> {
        let letters = &self.inner.dead_letters;
        let groups = letters
            .distinct("group", doc! {})
            .await
            .map_err(|e| backend("counting dead letters", e))?;
        let mut counts = std::collections::BTreeMap::new();
        for group in groups {
            let Bson::String(group) = group else { continue };
            let count = letters
                .count_documents(doc! { "group": &group })
                .await
                .map_err(|e| backend("counting dead letters", e))?;
            if count > 0 {
                counts.insert(group, count);
            }
        }
        Ok(counts)
    }

    async fn blocked_keys(&self, group: &str) -> Result<std::collections::HashMap<String, Uuid>, Error> {
        let cursor = self
            .inner
            .dead_letters
            .find(doc! { "group": group, field::KEY: { "$type": "string" } })
            .projection(doc! { field::KEY: 1 })
            .sort(doc! { "added_at": 1, "_id": 1 })
            .await
            .map_err(|e| backend("reading the keys of dead letters", e))?;
        let docs: Vec<Document> = cursor
            .try_collect()
            .await
            .map_err(|e| backend("reading the keys of dead letters", e))?;
        let mut keys = std::collections::HashMap::new();
        for doc in &docs {
            let read = || -> Result<(String, Uuid), String> {
                Ok((
                    document::get_str(doc, field::KEY)?.to_owned(),
                    document::get_uuid(doc, "_id")?,
                ))
            };
            let (key, id) = read().map_err(|reason| unreadable("a dead letter's key", reason))?;
            keys.entry(key).or_insert(id);
        }
        Ok(keys)
    }
}

fn dead_letter(doc: &Document) -> Result<DeadLetter, Error> {
    let read = || -> Result<DeadLetter, String> {
        Ok(DeadLetter {
            id: document::get_uuid(doc, "_id")?,
            group: document::get_str(doc, "group")?.to_owned(),
            envelope: document::envelope(doc)?,
            error: document::get_str(doc, "error")?.to_owned(),
            attempts: u32::try_from(document::get_int(doc, "attempts")?)
                .map_err(|_| "`attempts` is out of range".to_owned())?,
            failed_at: document::from_nanos(document::get_int(doc, "failed_at")?),
        })
    };
    read().map_err(|reason| {
        unreadable(
            &format!("dead letter {:?}", doc.get("_id").unwrap_or(&Bson::Null)),
            reason,
        )
    })
}
