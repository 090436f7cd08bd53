//! [`MongoStore`]: connection, collections and indexes, and the reads and bookkeeping
//! writes of the [`Storage`] trait.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use eventflow::store::{
    CheckpointStore, EventStore, InboxStore, OutboxEntry, OutboxStore, SnapshotStore, Storage, StoredEvent,
    Transaction,
};
use eventflow::{DeadLetter, DeadLetterStore, Error};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use tokio::sync::watch;
use uuid::Uuid;

use crate::document::{self, field, int, uuid_bson};
use crate::error::{backend, is_duplicate_key, unreadable};
use crate::outbox::{Cleaner, Feed};
use crate::transaction::MongoTransaction;

/// The URI [`MongoStore::from_env`] uses when `MONGODB_URI` is not set: a server on this
/// machine.
pub const DEFAULT_URI: &str = "mongodb://127.0.0.1:27017/?directConnection=true";

/// The names of the collections a [`MongoStore`] keeps its data in.
///
/// The defaults are the names below with the prefix `eventflow_`, so the store can share a
/// database with the application's own collections. Change them with
/// [`with_prefix`](CollectionNames::with_prefix) or by setting the fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CollectionNames {
    /// Events, one document per event; unique index on (stream, version). Default
    /// `eventflow_events`.
    pub events: String,
    /// Outbox entries waiting for the relay, one document per unit of work (`_id` the
    /// sequence of its first entry, `last` that of its last, `entries`); delivered ones are
    /// deleted in the background, every second by default. Default `eventflow_outbox`.
    pub outbox: String,
    /// Processed-event markers; unique index on (group, event id). Default `eventflow_inbox`.
    pub inbox: String,
    /// Dead letters. Default `eventflow_dead_letters`.
    pub dead_letters: String,
    /// Checkpoints: projections' positions and change streams' resume tokens. Default
    /// `eventflow_checkpoints`.
    pub checkpoints: String,
    /// The relay's outbox lease, and the watermark below which outbox entries are
    /// delivered. Default `eventflow_leases`.
    pub leases: String,
    /// The counters that number events and outbox entries in commit order. Default
    /// `eventflow_counters`.
    pub counters: String,
    /// Aggregates' snapshots, one document per stream (`_id` the stream). Default
    /// `eventflow_snapshots`.
    pub snapshots: String,
}

impl CollectionNames {
    /// The default names with another prefix, e.g. `"billing_"` for `billing_events`, ...
    pub fn with_prefix(prefix: &str) -> Self {
        CollectionNames {
            events: format!("{prefix}events"),
            outbox: format!("{prefix}outbox"),
            inbox: format!("{prefix}inbox"),
            dead_letters: format!("{prefix}dead_letters"),
            checkpoints: format!("{prefix}checkpoints"),
            leases: format!("{prefix}leases"),
            counters: format!("{prefix}counters"),
            snapshots: format!("{prefix}snapshots"),
        }
    }
}

impl Default for CollectionNames {
    fn default() -> Self {
        CollectionNames::with_prefix("eventflow_")
    }
}

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
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) database: Database,
    pub(crate) names: CollectionNames,
    pub(crate) events: Collection<Document>,
    pub(crate) outbox: Collection<Document>,
    pub(crate) inbox: Collection<Document>,
    pub(crate) dead_letters: Collection<Document>,
    pub(crate) checkpoints: Collection<Document>,
    pub(crate) leases: Collection<Document>,
    pub(crate) counters: Collection<Document>,
    pub(crate) commits: watch::Sender<u64>,
    pub(crate) feed: tokio::sync::Mutex<Feed>,
    /// Taken by this process's units of work while they write numbered documents and
    /// commit: they would conflict on the counter anyway, and queueing here is cheaper and
    /// fairer than aborting on the server.
    pub(crate) numbering: tokio::sync::Mutex<()>,
    pub(crate) transaction_retries: u32,
    pub(crate) cleanup_interval: Duration,
    /// Deletes delivered outbox entries in the background.
    pub(crate) cleaner: Cleaner,
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
        let collection = |name: &str| database.collection::<Document>(name);
        let inner = Inner {
            events: collection(&self.names.events),
            outbox: collection(&self.names.outbox),
            inbox: collection(&self.names.inbox),
            dead_letters: collection(&self.names.dead_letters),
            checkpoints: collection(&self.names.checkpoints),
            leases: collection(&self.names.leases),
            counters: collection(&self.names.counters),
            client: self.client,
            database,
            names: self.names,
            commits: watch::channel(0).0,
            feed: tokio::sync::Mutex::new(Feed::default()),
            numbering: tokio::sync::Mutex::new(()),
            transaction_retries: self.transaction_retries,
            cleanup_interval: self.cleanup_interval,
            cleaner: Cleaner::default(),
        };
        let store = MongoStore {
            inner: Arc::new(inner),
        };
        store.check_server().await?;
        store.create_indexes().await?;
        Ok(store)
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
        crate::outbox::backlog(self).await
    }

    /// The names of eventflow's collections.
    pub fn collection_names(&self) -> &CollectionNames {
        &self.inner.names
    }

    /// Fails with a clear message unless the server is reachable and can run transactions
    /// and change streams (a replica set member or mongos).
    async fn check_server(&self) -> Result<(), Error> {
        let hello = self
            .inner
            .database
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| backend("connecting to the server", e))?;
        let replica_set = hello.get_str("setName").is_ok();
        let mongos = hello.get_str("msg").is_ok_and(|msg| msg == "isdbgrid");
        if !replica_set && !mongos {
            return Err(Error::backend(
                "the MongoDB server is a standalone server; eventflow-mongo needs a replica set \
                 or sharded cluster, because units of work are transactions and the relay \
                 follows a change stream. A single-node replica set will do: start mongod with \
                 `--replSet rs0` and run `rs.initiate()` once",
            ));
        }
        Ok(())
    }

    async fn create_indexes(&self) -> Result<(), Error> {
        let unique = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().unique(true).name(name.to_owned()).build())
                .build()
        };
        let inner = &self.inner;
        let indexes = [
            (
                &inner.events,
                unique(doc! { "stream": 1, "version": 1 }, "stream_version"),
            ),
            (
                &inner.inbox,
                unique(doc! { "group": 1, field::EVENT_ID: 1 }, "group_event_id"),
            ),
            (
                &inner.dead_letters,
                IndexModel::builder()
                    .keys(doc! { "group": 1, "added_at": 1 })
                    .options(IndexOptions::builder().name("group_added_at".to_owned()).build())
                    .build(),
            ),
        ];
        for (collection, index) in indexes {
            collection
                .create_index(index)
                .await
                .map_err(|e| backend(&format!("creating the indexes of `{}`", collection.name()), e))?;
        }
        // Transactions cannot create collections on servers before 4.4, and a collection
        // created implicitly inside concurrent transactions makes them conflict: create
        // every collection up front. "Already exists" (48) is what a second instance sees.
        let existing = inner
            .database
            .list_collection_names()
            .await
            .map_err(|e| backend("listing collections", e))?;
        let names = &inner.names;
        for name in [&names.outbox, &names.checkpoints, &names.leases, &names.counters] {
            if existing.contains(name) {
                continue;
            }
            if let Err(e) = inner.database.create_collection(name).await {
                if crate::error::code(&e) != Some(48) {
                    return Err(backend(&format!("creating the collection `{name}`"), e));
                }
            }
        }
        Ok(())
    }

    /// Bumps the commit signal: a unit of work that appended or enqueued committed.
    pub(crate) fn signal_commit(&self) {
        self.inner.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Reserves `events` positions and `outbox` sequences inside `session`'s transaction;
    /// returns the first of each.
    pub(crate) async fn reserve_numbers(
        &self,
        session: &mut mongodb::ClientSession,
        events: u64,
        outbox: u64,
    ) -> Result<(u64, u64), mongodb::error::Error> {
        let after = self
            .inner
            .counters
            .find_one_and_update(
                doc! { "_id": "sequences" },
                doc! { "$inc": { "position": int(events), "outbox": int(outbox) } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(session)
            .await?
            .unwrap_or_default();
        let read = |name: &str| document::get_u64(&after, name).unwrap_or(0);
        Ok((read("position") + 1 - events, read("outbox") + 1 - outbox))
    }

    /// The current version of `stream` (0 if it has no events), as committed.
    pub(crate) async fn stream_version(&self, stream: &str) -> Result<u64, Error> {
        let head = self
            .inner
            .events
            .find_one(doc! { "stream": stream })
            .sort(doc! { "version": -1 })
            .projection(doc! { "version": 1 })
            .await
            .map_err(|e| backend("reading a stream's version", e))?;
        match head {
            None => Ok(0),
            Some(head) => document::get_u64(&head, "version")
                .map_err(|reason| unreadable(&format!("the head of stream `{stream}`"), reason)),
        }
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
        crate::checkpoints::head_position(self).await.map(Some)
    }
}

#[async_trait]
impl OutboxStore for MongoStore {
    async fn claim_outbox(
        &self,
        relay: &str,
        lease: Duration,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, Error> {
        crate::outbox::claim(self, relay, lease, after, limit).await
    }

    async fn mark_delivered(&self, relay: &str, sequences: &[u64]) -> Result<(), Error> {
        crate::outbox::mark_delivered(self, relay, sequences).await
    }

    async fn release_outbox(&self, relay: &str) -> Result<(), Error> {
        crate::outbox::release(self, relay).await
    }

    async fn outbox_lease(&self) -> Result<Option<eventflow::store::OutboxLease>, Error> {
        crate::outbox::lease::read(self).await
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }
}

#[async_trait]
impl InboxStore for MongoStore {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        let found = self
            .inner
            .inbox
            .find_one(doc! { "group": group, field::EVENT_ID: uuid_bson(event_id) })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|e| backend("reading the inbox", e))?;
        Ok(found.is_some())
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
        let found = self
            .inner
            .checkpoints
            .find_one(doc! { "_id": name })
            .await
            .map_err(|e| backend("reading a checkpoint", e))?;
        found
            .map(|doc| {
                document::get_str(&doc, "value")
                    .map(str::to_owned)
                    .map_err(|reason| unreadable(&format!("checkpoint `{name}`"), reason))
            })
            .transpose()
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
        Ok(Box::new(MongoTransaction::begin(self.clone()).await?))
    }

    fn snapshots(&self) -> Option<&dyn SnapshotStore> {
        Some(self)
    }
}

/// Inbox markers deleted per round trip when pruning.
const PRUNE_CHUNK: i64 = 1_000;

/// An inbox marker document.
pub(crate) fn marker(group: &str, event_id: Uuid) -> Document {
    doc! {
        "group": group,
        field::EVENT_ID: uuid_bson(event_id),
        // A BSON date, so that a TTL index can prune old markers.
        "processed_at": mongodb::bson::DateTime::now(),
    }
}

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
