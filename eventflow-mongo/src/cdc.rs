//! [`ChangeCapture`]: change data capture from any collection, as events.

use std::sync::Arc;
use std::time::Duration;

use eventflow::store::Storage;
use eventflow::transport::Transport;
use eventflow::{Envelope, Error};
use futures_util::StreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::options::FullDocumentType;
use mongodb::Collection;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::describe;
use crate::MongoStore;

/// What happened to a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOperation {
    /// It was inserted.
    Insert,
    /// Some of its fields were set or removed.
    Update,
    /// It was replaced whole.
    Replace,
    /// It was deleted.
    Delete,
}

/// The payload of a change event from [`ChangeCapture`], in JSON. BSON values are in
/// relaxed extended JSON (`{"$oid": ...}`, `{"$date": ...}`, plain numbers).
///
/// To handle changes, declare an event with the source's name and topic that flattens this
/// struct in:
///
/// ```
/// use eventflow::Event;
/// use eventflow_mongo::DocumentChange;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize)]
/// #[event(name = "mongo.change", topic = "orders.changes")]
/// struct OrderChanged {
///     #[serde(flatten)]
///     change: DocumentChange,
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocumentChange {
    /// What happened.
    pub operation: ChangeOperation,
    /// The database of the collection.
    pub database: String,
    /// The collection.
    pub collection: String,
    /// The document's key: `{"_id": ...}` (plus the shard key on a sharded collection).
    pub key: serde_json::Value,
    /// The document after the change: for inserts and replaces always; for updates, the
    /// document as it was when the change was read (`null` if it was deleted since), unless
    /// [`full_documents`](ChangeCapture::full_documents) is off; `null` for deletes.
    pub document: Option<serde_json::Value>,
    /// For updates: the fields set, with their new values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_fields: Option<serde_json::Value>,
    /// For updates: the fields removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_fields: Vec<String>,
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
/// restart resumes from it. The first run starts from the changes after it starts. If the
/// token cannot be resumed from (it left the oplog), the capture fails with an error saying
/// so, since the changes in between are gone from the oplog; delete the checkpoint to start
/// from now.
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

    /// Publishes changes until `shutdown` turns true. Returns an error if the change stream
    /// cannot be opened or resumed, or fails in a way the driver does not recover from;
    /// publishing failures are retried.
    pub async fn run(
        self,
        transport: Arc<dyn Transport>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let saved = self.store.checkpoint(&self.checkpoint).await?;
        let resume = match saved {
            Some(saved) => Some(parse_token(&saved).map_err(|reason| {
                Error::backend(format!(
                    "the saved resume token of change capture `{}` is unreadable: {reason}; \
                     delete the checkpoint to capture from now on",
                    self.checkpoint
                ))
            })?),
            None => None,
        };
        let resuming = resume.is_some();
        let mut watch = self.collection.watch().resume_after(resume);
        if self.full_documents {
            watch = watch.full_document(FullDocumentType::UpdateLookup);
        }
        let mut stream = watch.await.map_err(|e| {
            let hint = if resuming {
                "; the saved resume token is no longer in the oplog (the capture was stopped \
                 longer than the oplog window) or is invalid, so the changes since are lost \
                 to change data capture: resynchronize the consumers, then delete the \
                 checkpoint to capture from now on"
            } else {
                ""
            };
            Error::backend(format!(
                "could not open the change stream of `{}` for change capture `{}`: {}{hint}",
                self.collection.name(),
                self.checkpoint,
                describe(&e)
            ))
        })?;
        if !resuming {
            // Saved at once, so that changes made before the first event are not lost if
            // this process stops before it.
            if let Some(token) = stream.resume_token() {
                self.save(&token).await?;
            }
        }
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
                        if let Some(envelope) = self.envelope(event)? {
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
        let value = mongodb::bson::to_bson(token)
            .map(|token| token.into_relaxed_extjson().to_string())
            .map_err(|e| Error::backend(format!("could not encode a resume token: {e}")))?;
        self.store.save_checkpoint(&self.checkpoint, &value).await
    }

    /// The change as an envelope; `None` for events that are not document changes
    /// (`drop`, `rename`, `invalidate`, ...).
    fn envelope(&self, event: ChangeStreamEvent<Document>) -> Result<Option<Envelope>, Error> {
        let operation = match event.operation_type {
            OperationType::Insert => ChangeOperation::Insert,
            OperationType::Update => ChangeOperation::Update,
            OperationType::Replace => ChangeOperation::Replace,
            OperationType::Delete => ChangeOperation::Delete,
            _ => return Ok(None),
        };
        let json = |doc: Document| Bson::Document(doc).into_relaxed_extjson();
        let key = event.document_key.map(json).unwrap_or(serde_json::Value::Null);
        let (database, collection) = match &event.ns {
            Some(ns) => (ns.db.clone(), ns.coll.clone().unwrap_or_default()),
            None => (String::new(), String::new()),
        };
        let (updated_fields, removed_fields) = match event.update_description {
            Some(update) => (Some(json(update.updated_fields)), update.removed_fields),
            None => (None, Vec::new()),
        };
        let change = DocumentChange {
            operation,
            database,
            collection,
            key: key.clone(),
            document: event.full_document.map(json),
            updated_fields,
            removed_fields,
        };
        let payload = serde_json::to_vec(&change)
            .map_err(|e| Error::backend(format!("could not encode a change event: {e}")))?;
        let mut envelope = Envelope::new(
            self.event_name.clone(),
            1,
            self.topic.clone(),
            "application/json",
            payload,
        );
        // The same change always gets the same id, so consumers' inboxes drop a replay.
        let token =
            mongodb::bson::to_vec(&doc! { "t": mongodb::bson::to_bson(&event.id).unwrap_or(Bson::Null) })
                .unwrap_or_default();
        envelope.id = Uuid::new_v5(&Uuid::NAMESPACE_OID, &token);
        envelope.correlation_id = envelope.id;
        envelope.key = Some(match &key {
            // `{"_id": "order-1"}` → `order-1`; other keys as their JSON.
            serde_json::Value::Object(fields) if fields.len() == 1 => match fields.get("_id") {
                Some(serde_json::Value::String(id)) => id.clone(),
                Some(other) => other.to_string(),
                None => key.to_string(),
            },
            _ => key.to_string(),
        });
        if let Some(time) = event.wall_time {
            envelope.timestamp = time.to_system_time();
        }
        Ok(Some(envelope))
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

fn parse_token(saved: &str) -> Result<ResumeToken, String> {
    let json: serde_json::Value = serde_json::from_str(saved).map_err(|e| e.to_string())?;
    let bson = Bson::try_from(json).map_err(|e| e.to_string())?;
    mongodb::bson::from_bson(bson).map_err(|e| e.to_string())
}
