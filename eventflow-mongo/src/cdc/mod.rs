//! [`ChangeCapture`]: change data capture from any collection, as events.

mod change;
mod position;

use std::sync::Arc;
use std::time::Duration;

use eventflow::store::CheckpointStore;
use eventflow::transport::Transport;
use eventflow::{Envelope, Error};
use futures_util::StreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::options::FullDocumentType;
use mongodb::Collection;
use tokio::sync::watch;

pub use self::change::{ChangeOperation, DocumentChange};
use self::position::Position;
use crate::error::describe;
use crate::MongoStore;

/// What a [`ChangeCapture`] publishes of the documents already in its collection, as
/// Debezium's `snapshot.mode` does.
///
/// A snapshot first opens a change stream to learn where the oplog stands, then reads
/// every document of the collection (in `_id` order) and publishes each as a
/// [`Read`](ChangeOperation::Read) change, then captures the changes made since the stream
/// opened. A document changed while the snapshot runs may be read in its new state and
/// then have that change published too: each document's last event is its latest state.
/// Deletes made before the snapshot are not published (the documents are simply absent).
///
/// The snapshot's start is saved first: a capture stopped mid-snapshot reads the whole
/// collection again on its next run, with the same event ids, so consumers' inboxes drop
/// what they handled before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Snapshot {
    /// No snapshot: the first run captures the changes made from its start on, and a saved
    /// resume token that left the oplog stops the capture with an error.
    #[default]
    Never,
    /// A snapshot on the first run (no saved position), then changes.
    Initial,
    /// As [`Initial`](Snapshot::Initial), and a snapshot again whenever the saved resume
    /// token cannot be resumed from (the capture was stopped longer than the oplog window),
    /// instead of an error: consumers then see every document's current state, but not the
    /// documents deleted in the gap.
    WhenNeeded,
}

/// Change data capture: follows a change stream on one collection and publishes each
/// insert, update, replace and delete as an event, so an application that already writes
/// to MongoDB emits events without changing its write path.
///
/// Each change becomes an envelope named [`event_name`](ChangeCapture::event_name)
/// (default `mongo.change`) on [`topic`](ChangeCapture::topic) (default
/// `<collection>.changes`), with a [`DocumentChange`] JSON payload. The partition key is the
/// document key, so the changes of one document are handled in order. The event id is
/// derived from the change's resume token, so a change published twice (after a crash
/// before its token was saved) has the same id both times and the consumers' inbox drops the
/// second.
///
/// The resume token is saved in the store's checkpoints after each published batch (under
/// [`checkpoint`](ChangeCapture::checkpoint), default `eventflow.cdc.<db>.<collection>`); a
/// restart resumes from it. The first run starts from the changes after it starts, or with
/// a [snapshot](ChangeCapture::snapshot) of the documents already there. If the token cannot
/// be resumed from (it left the oplog), the capture fails with an error saying so, since the
/// changes in between are gone from the oplog, unless it may take a snapshot again
/// ([`Snapshot::WhenNeeded`]); or delete the checkpoint to start from now.
///
/// ```no_run
/// use std::sync::Arc;
/// use eventflow::InProcess;
/// use eventflow_mongo::{ChangeCapture, MongoStore};
///
/// # async fn example(store: MongoStore, transport: InProcess) -> Result<(), eventflow::Error> {
/// let (stop, shutdown) = tokio::sync::watch::channel(false);
/// let capture = ChangeCapture::new(&store, "orders").topic("orders.changes");
/// let task = tokio::spawn(capture.run(Arc::new(transport), shutdown));
/// // ...
/// stop.send_replace(true);
/// task.await.unwrap()?;
/// # Ok(()) }
/// ```
pub struct ChangeCapture {
    store: MongoStore,
    collection: Collection<Document>,
    topic: String,
    event_name: String,
    checkpoint: String,
    full_documents: bool,
    batch: usize,
    snapshot: Snapshot,
}

impl ChangeCapture {
    /// Captures the changes of `collection` in the store's database.
    pub fn new(store: &MongoStore, collection: &str) -> Self {
        ChangeCapture::of(store, store.database().collection(collection))
    }

    /// Captures the changes of `collection`, which may be in another database of the same
    /// deployment; the resume token is kept in `store`.
    pub fn of(store: &MongoStore, collection: Collection<Document>) -> Self {
        let name = collection.name().to_owned();
        let database = collection.namespace().db;
        ChangeCapture {
            store: store.clone(),
            topic: format!("{name}.changes"),
            event_name: "mongo.change".to_owned(),
            checkpoint: format!("eventflow.cdc.{database}.{name}"),
            collection,
            full_documents: true,
            batch: 256,
            snapshot: Snapshot::Never,
        }
    }

    /// The topic the change events are published to. Default `<collection>.changes`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// The name of the change events. Default `mongo.change`.
    pub fn event_name(mut self, name: impl Into<String>) -> Self {
        self.event_name = name.into();
        self
    }

    /// The checkpoint the resume token is saved under. Default
    /// `eventflow.cdc.<db>.<collection>`; two captures of one collection need different
    /// names.
    pub fn checkpoint(mut self, name: impl Into<String>) -> Self {
        self.checkpoint = name.into();
        self
    }

    /// Whether update events carry the whole document (read when the change is read, by
    /// MongoDB's `updateLookup`). Default on; off saves a lookup per update, and updates then
    /// carry only their updated and removed fields.
    pub fn full_documents(mut self, on: bool) -> Self {
        self.full_documents = on;
        self
    }

    /// Most changes published per batch (and per saved token). Default 256.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Whether the documents already in the collection are published first, and when.
    /// Default [`Snapshot::Never`].
    pub fn snapshot(mut self, snapshot: Snapshot) -> Self {
        self.snapshot = snapshot;
        self
    }

    /// Publishes changes until `shutdown` turns true. Returns an error if the change stream
    /// cannot be opened or resumed, or fails in a way the driver does not recover from;
    /// publishing failures are retried.
    pub async fn run(
        self,
        transport: Arc<dyn Transport>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let Some(mut stream) = self.start(&*transport, &mut shutdown).await? else {
            return Ok(());
        };
        loop {
            let first = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                next = stream.next() => next,
            };
            let mut events = vec![first];
            // Whatever else the stream has read already, without waiting.
            while events.len() < self.batch {
                match stream.next_if_any().await {
                    Ok(Some(event)) => events.push(Some(Ok(event))),
                    Ok(None) => break,
                    Err(error) => {
                        events.push(Some(Err(error)));
                        break;
                    }
                }
            }
            let mut envelopes = Vec::with_capacity(events.len());
            let mut last = None;
            let mut failure = None;
            for event in events {
                match event {
                    Some(Ok(event)) => {
                        last = Some(event.id.clone());
                        if let Some(envelope) = change::envelope(event, &self.event_name, &self.topic)? {
                            envelopes.push(envelope);
                        }
                    }
                    Some(Err(error)) => {
                        failure = Some(Error::backend(format!(
                            "the change stream of `{}` (change capture `{}`) failed: {}; run the \
                             capture again to resume from the last saved token",
                            self.collection.name(),
                            self.checkpoint,
                            describe(&error)
                        )));
                        break;
                    }
                    None => {
                        failure = Some(Error::backend(format!(
                            "the server closed the change stream of `{}` (the collection was \
                             dropped or renamed?); change capture `{}` stopped",
                            self.collection.name(),
                            self.checkpoint
                        )));
                        break;
                    }
                }
            }
            if !envelopes.is_empty() {
                self.publish(&*transport, envelopes, &mut shutdown).await?;
            }
            if let Some(token) = last {
                self.save(&token).await?;
            }
            if let Some(failure) = failure {
                return Err(failure);
            }
        }
    }

    /// The change stream to capture from, where the saved position says, after a snapshot
    /// if one is due; `None` if shutdown came first.
    async fn start(
        &self,
        transport: &dyn Transport,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<ChangeStream<ChangeStreamEvent<Document>>>, Error> {
        match self.saved_position().await? {
            Position::Stream(token) => match self.watch(Some(token)).await {
                Ok(stream) => Ok(Some(stream)),
                Err(error) if self.snapshot == Snapshot::WhenNeeded && server_refused(&error) => {
                    tracing::warn!(
                        capture = %self.checkpoint, error = %describe(&error),
                        "the saved resume token cannot be resumed from (it left the oplog?); \
                         taking a snapshot of the collection instead"
                    );
                    self.take_snapshot(None, transport, shutdown).await
                }
                Err(error) => Err(self.cannot_watch(error, true)),
            },
            Position::Snapshot(token) => {
                tracing::info!(capture = %self.checkpoint, "a snapshot was cut short; taking it again");
                self.take_snapshot(Some(token), transport, shutdown).await
            }
            Position::None if self.snapshot != Snapshot::Never => {
                self.take_snapshot(None, transport, shutdown).await
            }
            Position::None => {
                let stream = self.watch(None).await.map_err(|e| self.cannot_watch(e, false))?;
                // Saved at once, so that changes made before the first event are not lost
                // if this process stops before it.
                if let Some(token) = stream.resume_token() {
                    self.save(&token).await?;
                }
                Ok(Some(stream))
            }
        }
    }

    async fn saved_position(&self) -> Result<Position, Error> {
        let Some(saved) = self.store.checkpoint(&self.checkpoint).await? else {
            return Ok(Position::None);
        };
        position::parse(&saved).map_err(|reason| {
            Error::backend(format!(
                "the saved position of change capture `{}` is unreadable: {reason}; delete the \
                 checkpoint to capture from now on",
                self.checkpoint
            ))
        })
    }

    /// Opens the change stream, after `resume` if given.
    async fn watch(
        &self,
        resume: Option<ResumeToken>,
    ) -> Result<ChangeStream<ChangeStreamEvent<Document>>, mongodb::error::Error> {
        let mut watch = self.collection.watch().resume_after(resume);
        if self.full_documents {
            watch = watch.full_document(FullDocumentType::UpdateLookup);
        }
        watch.await
    }

    fn cannot_watch(&self, error: mongodb::error::Error, resuming: bool) -> Error {
        let hint = if resuming {
            "; the saved resume token is no longer in the oplog (the capture was stopped \
             longer than the oplog window) or is invalid, so the changes since are lost to \
             change data capture: take a snapshot with `.snapshot(Snapshot::WhenNeeded)`, or \
             resynchronize the consumers and delete the checkpoint to capture from now on"
        } else {
            ""
        };
        Error::backend(format!(
            "could not open the change stream of `{}` for change capture `{}`: {}{hint}",
            self.collection.name(),
            self.checkpoint,
            describe(&error)
        ))
    }

    /// Publishes every document of the collection as a `Read` change, then returns the
    /// change stream from where the snapshot started; `None` if shutdown came first.
    /// `start` is the token of a snapshot that was cut short, to take again with the same
    /// event ids.
    async fn take_snapshot(
        &self,
        start: Option<ResumeToken>,
        transport: &dyn Transport,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<ChangeStream<ChangeStreamEvent<Document>>>, Error> {
        let start = match start {
            Some(token) => token,
            None => {
                let stream = self.watch(None).await.map_err(|e| self.cannot_watch(e, false))?;
                let token = stream.resume_token().ok_or_else(|| {
                    Error::backend(format!(
                        "the change stream of `{}` gave no resume token to start a snapshot from",
                        self.collection.name()
                    ))
                })?;
                self.save_position(&Position::Snapshot(token.clone())).await?;
                token
            }
        };
        let started = std::time::Instant::now();
        let namespace = self.collection.namespace();
        let start_bson = mongodb::bson::to_bson(&start).unwrap_or(Bson::Null);
        let read_failed = |error: mongodb::error::Error| {
            Error::backend(format!(
                "reading `{}` for the snapshot of change capture `{}` failed: {}; run the \
                 capture again to take the snapshot again",
                self.collection.name(),
                self.checkpoint,
                describe(&error)
            ))
        };
        let mut documents = self
            .collection
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .map_err(read_failed)?;
        let mut read = 0u64;
        let mut batch = Vec::with_capacity(self.batch);
        loop {
            let next = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
                next = documents.next() => next,
            };
            let last = next.is_none();
            if let Some(document) = next {
                let document = document.map_err(read_failed)?;
                let id = document.get("_id").cloned().unwrap_or(Bson::Null);
                let key = change::json(doc! { "_id": id.clone() });
                let change = DocumentChange {
                    operation: ChangeOperation::Read,
                    database: namespace.db.clone(),
                    collection: namespace.coll.clone(),
                    key,
                    document: Some(change::json(document)),
                    updated_fields: None,
                    removed_fields: Vec::new(),
                };
                // The same document in the same snapshot always gets the same id.
                let seed = doc! { "s": start_bson.clone(), "k": id };
                batch.push(change::change_envelope(
                    &change,
                    &seed,
                    None,
                    &self.event_name,
                    &self.topic,
                )?);
                read += 1;
            }
            if batch.len() >= self.batch || (last && !batch.is_empty()) {
                let envelopes = std::mem::replace(&mut batch, Vec::with_capacity(self.batch));
                self.publish(transport, envelopes, shutdown).await?;
                if *shutdown.borrow() {
                    return Ok(None);
                }
            }
            if last {
                break;
            }
        }
        let stream = self.watch(Some(start.clone())).await.map_err(|error| {
            Error::backend(format!(
                "the snapshot of change capture `{}` read {read} documents in {:?}, but the \
                 change stream cannot resume from where it started: {}; the snapshot took \
                 longer than the oplog window, make the oplog larger and run the capture again",
                self.checkpoint,
                started.elapsed(),
                describe(&error)
            ))
        })?;
        self.save(&start).await?;
        tracing::info!(capture = %self.checkpoint, documents = read, elapsed = ?started.elapsed(), "snapshot published; capturing changes");
        Ok(Some(stream))
    }

    /// Publishes a batch, retrying until the transport takes it (or shutdown), and for a
    /// transport that is not durable, until the groups handled it.
    async fn publish(
        &self,
        transport: &dyn Transport,
        envelopes: Vec<Envelope>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let mut failures = 0u32;
        loop {
            match transport.publish_batch(envelopes.clone()).await {
                Ok(()) => break,
                Err(error) => {
                    failures += 1;
                    let wait = Duration::from_millis(100 << failures.min(7));
                    tracing::error!(capture = %self.checkpoint, %error, ?wait, "publishing captured changes failed; retrying");
                    tokio::select! {
                        _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        if let Some(handled) = transport.until_handled() {
            handled.await;
        }
        Ok(())
    }

    async fn save(&self, token: &ResumeToken) -> Result<(), Error> {
        self.save_position(&Position::Stream(token.clone())).await
    }

    async fn save_position(&self, position: &Position) -> Result<(), Error> {
        let Some(value) = position::format(position)? else {
            return Ok(());
        };
        self.store.save_checkpoint(&self.checkpoint, &value).await
    }
}

impl std::fmt::Debug for ChangeCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeCapture")
            .field("collection", &self.collection.name())
            .field("topic", &self.topic)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

/// Whether the server answered with an error (as opposed to being unreachable): resuming
/// from a token it no longer has (`ChangeStreamHistoryLost`, an invalid token, ...).
fn server_refused(error: &mongodb::error::Error) -> bool {
    matches!(*error.kind, mongodb::error::ErrorKind::Command(_))
}
