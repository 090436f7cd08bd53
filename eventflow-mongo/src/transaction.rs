//! [`MongoTransaction`]: a unit of work as a multi-document transaction on a
//! `ClientSession`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventflow::store::{ExpectedVersion, Transaction};
use eventflow::{Envelope, Error};
use mongodb::bson::{doc, Document};
use mongodb::options::{ReadConcern, WriteConcern};
use mongodb::{ClientSession, Collection};
use uuid::Uuid;

use crate::client::Inner;
use crate::document::{self, int};
use crate::error::{
    backend, describe, duplicate_index, is_duplicate_key, is_transient, is_unknown_commit_result,
};
use crate::inbox::marker;

/// A unit of work on a [`MongoStore`](crate::MongoStore): one MongoDB multi-document transaction.
///
/// The application's own writes go through [`session`](MongoTransaction::session) and
/// commit or roll back with the events, outbox entries and inbox markers of the unit of
/// work. eventflow's own writes are kept in memory and written just before the commit, so
/// the transaction holds its locks briefly, and so that eventflow can run them again in a
/// new transaction when MongoDB aborts one with a transient error.
///
/// ```no_run
/// use eventflow::EventBus;
/// use eventflow_mongo::{MongoStore, MongoTransaction};
/// use mongodb::bson::{doc, Document};
///
/// # async fn example(bus: EventBus, store: MongoStore) -> Result<(), Box<dyn std::error::Error>> {
/// let orders = store.database().collection::<Document>("orders");
/// let mut work = bus.begin().await?;
/// let mongo = work.transaction().downcast_mut::<MongoTransaction>().unwrap();
/// orders
///     .insert_one(doc! { "_id": "order-1", "total": 4200 })
///     .session(mongo.session())
///     .await?;
/// // work.publish(&OrderPlaced { .. }).await?;
/// work.commit().await?; // the order and its events, or neither
/// # Ok(()) }
/// ```
///
/// # Transient errors
///
/// As the MongoDB transaction spec says, a commit that fails with
/// `UnknownTransactionCommitResult` is committed again, and a transaction aborted with a
/// `TransientTransactionError` (a write conflict with a concurrent unit of work, a primary
/// step-down) is run again from the start, both up to
/// [`transaction_retries`](crate::MongoStoreBuilder::transaction_retries) times with a short
/// random backoff. eventflow can run again only what it wrote itself: once the application
/// has used the [`session`](MongoTransaction::session), a transient error fails the commit
/// with [`Error::Transient`] saying to run the whole unit of work again. A handler with
/// [`Tx`](eventflow::Tx) is then run again by the bus without spending its retries, and so
/// is one whose own write through the session met the conflict (`?` on the driver's error
/// gives `Error::Transient`).
pub struct MongoTransaction {
    inner: Arc<Inner>,
    session: ClientSession,
    appends: Vec<Append>,
    outbox: Vec<Envelope>,
    markers: Vec<(String, Uuid)>,
    /// Checkpoints saved in this unit of work: (name, the value expected, the new value).
    checkpoints: Vec<(String, Option<String>, String)>,
    session_used: bool,
    /// The sequence of the last outbox entry the attempt that committed numbered, if it
    /// enqueued: the commit signal carries it to the relay's feed.
    last_outbox: Option<u64>,
}

struct Append {
    stream: String,
    expected: ExpectedVersion,
    /// The stream's version this append found (counting earlier appends of this unit of work).
    found: u64,
    events: Vec<Envelope>,
}

/// Why a transaction attempt failed.
enum Failure {
    /// Run the transaction again.
    Transient(mongodb::error::Error),
    /// Give up with this error.
    Final(Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Final(error)
    }
}

fn classify(what: &'static str) -> impl Fn(mongodb::error::Error) -> Failure {
    move |error| {
        if is_transient(&error) {
            Failure::Transient(error)
        } else {
            Failure::Final(backend(what, error))
        }
    }
}

impl MongoTransaction {
    pub(crate) async fn begin(inner: Arc<Inner>) -> Result<Self, Error> {
        let mut session = inner
            .client
            .start_session()
            .await
            .map_err(|e| backend("starting a session", e))?;
        start(&mut session).await?;
        Ok(MongoTransaction {
            inner,
            session,
            appends: Vec::new(),
            outbox: Vec::new(),
            markers: Vec::new(),
            checkpoints: Vec::new(),
            session_used: false,
            last_outbox: None,
        })
    }

    /// The session the transaction runs on, for the application's own reads and writes:
    /// pass it to the driver with `.session(tx.session())`.
    ///
    /// Once the session has been used, eventflow can no longer run the unit of work again
    /// by itself after a transient error (see the type's documentation).
    pub fn session(&mut self) -> &mut ClientSession {
        self.session_used = true;
        &mut self.session
    }

    /// A collection of the store's database, for the application's own documents.
    pub fn collection<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.inner.database.collection(name)
    }

    /// The version `stream` has in this unit of work so far.
    async fn pending_version(&self, stream: &str) -> Result<u64, Error> {
        match self.appends.iter().rev().find(|a| a.stream == stream) {
            Some(last) => Ok(last.found + last.events.len() as u64),
            None => self.inner.stream_version(stream).await,
        }
    }

    /// [`Error::Conflict`] if a stream this unit of work appends to at an expected version
    /// has moved since.
    async fn check_expectations(&self) -> Result<(), Error> {
        let mut checked = Vec::new();
        for append in &self.appends {
            if append.expected == ExpectedVersion::Any || checked.contains(&append.stream.as_str()) {
                continue;
            }
            checked.push(append.stream.as_str());
            let actual = self.inner.stream_version(&append.stream).await?;
            if actual != append.found {
                return Err(Error::Conflict {
                    stream: append.stream.clone(),
                    expected: append.expected,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// One attempt: eventflow's writes, then the commit.
    async fn write_and_commit(&mut self) -> Result<(), Failure> {
        let inner = self.inner.clone();
        if !self.markers.is_empty() {
            let markers: Vec<Document> = self.markers.iter().map(|(g, id)| marker(g, *id)).collect();
            if let Err(error) = inner.inbox.insert_many(markers).session(&mut self.session).await {
                if let Some(index) = duplicate_index(&error) {
                    let (group, event_id) = self.markers[index].clone();
                    return Err(Failure::Final(Error::AlreadyProcessed { group, event_id }));
                }
                return Err(classify("recording a processed event")(error));
            }
        }

        // Where each stream's appends start: what the append found, or for `Any`, the head
        // as this transaction sees it.
        let mut heads: HashMap<&str, u64> = HashMap::new();
        for append in &self.appends {
            if heads.contains_key(append.stream.as_str()) {
                continue;
            }
            let base = match append.expected {
                ExpectedVersion::Any => {
                    let head = inner
                        .events
                        .find_one(doc! { "stream": &append.stream })
                        .sort(doc! { "version": -1 })
                        .projection(doc! { "version": 1 })
                        .session(&mut self.session)
                        .await
                        .map_err(classify("reading a stream's version"))?;
                    match head {
                        None => 0,
                        Some(head) => document::get_u64(&head, "version").map_err(|reason| {
                            crate::error::unreadable(
                                &format!("the head of stream `{}`", append.stream),
                                reason,
                            )
                        })?,
                    }
                }
                _ => append.found,
            };
            heads.insert(&append.stream, base);
        }

        crate::checkpoints::write(&inner, &mut self.session, &self.checkpoints)
            .await
            .map_err(classify("saving a checkpoint"))??;

        let event_count: u64 = self.appends.iter().map(|a| a.events.len() as u64).sum();
        let outbox_count = self.outbox.len() as u64;
        if event_count + outbox_count > 0 {
            // Last, so the counter document stays locked only until the commit.
            let (mut position, sequence) = self
                .inner
                .reserve_numbers(&mut self.session, event_count, outbox_count)
                .await
                .map_err(classify("numbering events and outbox entries"))?;
            self.last_outbox = (outbox_count > 0).then(|| sequence + outbox_count - 1);
            for append in &self.appends {
                if append.events.is_empty() {
                    continue;
                }
                let head = heads
                    .get_mut(append.stream.as_str())
                    .expect("every stream has a head");
                let mut docs = Vec::with_capacity(append.events.len());
                for (version, envelope) in (*head + 1..).zip(&append.events) {
                    let mut doc = doc! {
                        "_id": int(position),
                        "stream": &append.stream,
                        "version": int(version),
                    };
                    document::put_envelope(&mut doc, envelope)?;
                    docs.push(doc);
                    position += 1;
                }
                if let Err(error) = inner.events.insert_many(docs).session(&mut self.session).await {
                    if !is_duplicate_key(&error) {
                        return Err(classify("appending events")(error));
                    }
                    if append.expected == ExpectedVersion::Any {
                        // Someone appended since this transaction read the head: read again.
                        return Err(Failure::Transient(error));
                    }
                    let actual = self.inner.stream_version(&append.stream).await?;
                    return Err(Failure::Final(Error::Conflict {
                        stream: append.stream.clone(),
                        expected: append.expected,
                        actual,
                    }));
                }
                *head += append.events.len() as u64;
            }
            if !self.outbox.is_empty() {
                // One document for the unit of work's entries (more only if they are large).
                let docs = crate::outbox::layout::documents(sequence, &self.outbox)?;
                if let Err(error) = inner.outbox.insert_many(docs).session(&mut self.session).await {
                    if is_duplicate_key(&error) {
                        return Err(Failure::Final(Error::backend(format!(
                            "the outbox already holds a document numbered like a new one: the \
                             counter in `{}` is behind the outbox `{}`; it was reset or edited. \
                             Set its `outbox` field to the highest `last` (or, in a document \
                             without one, `_id`) in the outbox",
                            inner.names.counters, inner.names.outbox
                        ))));
                    }
                    return Err(classify("putting events in the outbox")(error));
                }
            }
        }
        self.commit_once().await
    }

    /// Commits, committing again on `UnknownTransactionCommitResult` as the spec says.
    async fn commit_once(&mut self) -> Result<(), Failure> {
        let mut tries = 0;
        loop {
            match self.session.commit_transaction().await {
                Ok(()) => return Ok(()),
                Err(error) if is_unknown_commit_result(&error) => {
                    tries += 1;
                    if tries > self.inner.transaction_retries {
                        return Err(Failure::Final(Error::backend(format!(
                            "could not learn whether a unit of work committed after {tries} \
                             attempts: {}; check the MongoDB deployment's health, then \
                             check whether its writes are there before running it again",
                            describe(&error)
                        ))));
                    }
                }
                Err(error) => return Err(classify("committing a unit of work")(error)),
            }
        }
    }
}

async fn start(session: &mut ClientSession) -> Result<(), Error> {
    session
        .start_transaction()
        .read_concern(ReadConcern::snapshot())
        .write_concern(WriteConcern::majority())
        .await
        .map_err(|e| backend("starting a transaction", e))
}

/// A random wait before running an aborted transaction again, growing with the attempt, so
/// that units of work that conflicted do not conflict again at once.
fn backoff(attempt: u32) -> Duration {
    let ceiling = (1u64 << attempt.min(7)).min(100);
    Duration::from_millis(fastrand::u64(1..=ceiling))
}

#[async_trait]
impl Transaction for MongoTransaction {
    async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[Envelope],
    ) -> Result<u64, Error> {
        let current = self.pending_version(stream).await?;
        expected.check(stream, current)?;
        self.appends.push(Append {
            stream: stream.to_owned(),
            expected,
            found: current,
            events: events.to_vec(),
        });
        Ok(current + events.len() as u64)
    }

    async fn enqueue(&mut self, events: &[Envelope]) -> Result<(), Error> {
        self.outbox.extend_from_slice(events);
        Ok(())
    }

    async fn mark_processed(&mut self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        if self.markers.iter().any(|(g, id)| g == group && *id == event_id) {
            return Ok(false);
        }
        // The unique index decides at commit; this only spares a handler whose event was
        // processed already.
        if crate::inbox::is_processed(&self.inner, group, event_id).await? {
            return Ok(false);
        }
        self.markers.push((group.to_owned(), event_id));
        Ok(true)
    }

    async fn save_checkpoint(
        &mut self,
        name: &str,
        previous: Option<&str>,
        value: &str,
    ) -> Result<(), Error> {
        // Checked when the unit of work commits, inside its transaction.
        self.checkpoints
            .push((name.to_owned(), previous.map(str::to_owned), value.to_owned()));
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), Error> {
        let enqueued = !self.outbox.is_empty();
        let numbered = enqueued || self.appends.iter().any(|a| !a.events.is_empty());
        let inner = self.inner.clone();
        let _queued = match numbered {
            true => Some(inner.numbering.lock().await),
            false => None,
        };
        let mut attempt = 0;
        loop {
            let error = match self.write_and_commit().await {
                Ok(()) => break,
                Err(Failure::Final(error)) => {
                    let _ = self.session.abort_transaction().await;
                    return Err(error);
                }
                Err(Failure::Transient(error)) => error,
            };
            let _ = self.session.abort_transaction().await;
            attempt += 1;
            // A concurrent unit of work that appended to one of these streams is the
            // usual cause: then running again cannot succeed, and the caller must reload.
            self.check_expectations().await?;
            let error = describe(&error);
            if self.session_used {
                return Err(Error::Transient(
                    format!(
                        "MongoDB aborted the unit of work with a transient error ({error}), e.g. a \
                     write conflict with a concurrent unit of work; nothing of it was written. \
                     The application wrote through its session, which eventflow cannot run \
                     again by itself: run the whole unit of work again"
                    )
                    .into(),
                ));
            }
            if attempt > self.inner.transaction_retries {
                return Err(Error::Transient(
                    format!(
                        "MongoDB aborted the unit of work {attempt} times with transient errors, the \
                     last: {error}; nothing of it was written. Either many concurrent units of \
                     work waited for each other (those that append or enqueue events commit one \
                     at a time): run it again, or raise `transaction_retries`. Or a process died \
                     in the middle of a commit, and its transaction still holds these documents \
                     (the event counter, or the streams appended to): the server aborts it after \
                     `transactionLifetimeLimitSeconds` (60 s by default), and then this goes \
                     through; `killSessions` on the dead process's sessions ends it at once"
                    )
                    .into(),
                ));
            }
            tokio::time::sleep(backoff(attempt)).await;
            start(&mut self.session).await?;
        }
        if numbered {
            self.inner.signal_commit(self.last_outbox);
        }
        Ok(())
    }
}

impl std::fmt::Debug for MongoTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoTransaction")
            .field("appends", &self.appends.len())
            .field("outbox", &self.outbox.len())
            .field("markers", &self.markers)
            .finish_non_exhaustive()
    }
}
