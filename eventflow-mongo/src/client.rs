//! The ground floor every part of the store stands on: the client, the database and its
//! collections, the settings, the lock and counter that number commits, and the commit
//! signal. The outbox, the units of work and [`MongoStore`](crate::MongoStore) all build on
//! [`Inner`]; it imports none of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventflow::Error;
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Client, ClientSession, Collection, Database};
use tokio::sync::watch;

use crate::document::{self, int};
use crate::error::{backend, unreadable};

/// The names of the collections a [`MongoStore`](crate::MongoStore) keeps its data in.
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

/// What the store's handles, its units of work and its outbox relay share.
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
    /// Bumped by every commit that appended or enqueued, and by every document the outbox
    /// change stream reads: what wakes the relay.
    pub(crate) commits: watch::Sender<u64>,
    /// The highest outbox sequence a commit counted by `commits` numbered: once a relay's
    /// feed has handed out every entry up to it, it has caught up with the count.
    pub(crate) outbox_committed: AtomicU64,
    /// Taken by this process's units of work while they write numbered documents and
    /// commit: they would conflict on the counter anyway, and queueing here is cheaper and
    /// fairer than aborting on the server.
    pub(crate) numbering: tokio::sync::Mutex<()>,
    pub(crate) transaction_retries: u32,
    pub(crate) cleanup_interval: Duration,
}

impl Inner {
    /// The collections of `names` in `database`, with these settings.
    pub(crate) fn new(
        client: Client,
        database: Database,
        names: CollectionNames,
        transaction_retries: u32,
        cleanup_interval: Duration,
    ) -> Self {
        let collection = |name: &str| database.collection::<Document>(name);
        Inner {
            events: collection(&names.events),
            outbox: collection(&names.outbox),
            inbox: collection(&names.inbox),
            dead_letters: collection(&names.dead_letters),
            checkpoints: collection(&names.checkpoints),
            leases: collection(&names.leases),
            counters: collection(&names.counters),
            client,
            database,
            names,
            commits: watch::channel(0).0,
            outbox_committed: AtomicU64::new(0),
            numbering: tokio::sync::Mutex::new(()),
            transaction_retries,
            cleanup_interval,
        }
    }

    /// Bumps the commit signal: a unit of work that appended or enqueued committed, its
    /// last outbox entry numbered `last_outbox` if it enqueued. The sequence is recorded
    /// before the count moves, so whoever reads the count first and the sequence second
    /// knows every entry the counted commits enqueued.
    pub(crate) fn signal_commit(&self, last_outbox: Option<u64>) {
        if let Some(last) = last_outbox {
            self.outbox_committed.fetch_max(last, Ordering::SeqCst);
        }
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The highest outbox sequence numbered by the commits `commits` counted so far (those
    /// of this process): read after the count, it covers every commit the count did.
    pub(crate) fn committed_outbox(&self) -> u64 {
        self.outbox_committed.load(Ordering::SeqCst)
    }

    /// Reserves `events` positions and `outbox` sequences inside `session`'s transaction;
    /// returns the first of each.
    pub(crate) async fn reserve_numbers(
        &self,
        session: &mut ClientSession,
        events: u64,
        outbox: u64,
    ) -> Result<(u64, u64), mongodb::error::Error> {
        let after = self
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
