//! What a capture publishes: a [`DocumentChange`] in an envelope whose id is derived from
//! the change (so a change published again has the same id) and whose key is the document
//! key (so one document's changes are handled in order).

use eventflow::{Envelope, Error};
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What happened to a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOperation {
    /// It was read by a [snapshot](crate::Snapshot): it exists, as `document` shows.
    Read,
    /// It was inserted.
    Insert,
    /// Some of its fields were set or removed.
    Update,
    /// It was replaced whole.
    Replace,
    /// It was deleted.
    Delete,
}

/// The payload of a change event from [`ChangeCapture`](crate::ChangeCapture), in JSON.
/// BSON values are in relaxed extended JSON (`{"$oid": ...}`, `{"$date": ...}`, plain
/// numbers).
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
    /// The document after the change: for inserts, replaces and snapshot reads always; for updates, the
    /// document as it was when the change was read (`null` if it was deleted since), unless
    /// [`full_documents`](crate::ChangeCapture::full_documents) is off; `null` for deletes.
    pub document: Option<serde_json::Value>,
    /// For updates: the fields set, with their new values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_fields: Option<serde_json::Value>,
    /// For updates: the fields removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_fields: Vec<String>,
}

/// The change as an envelope; `None` for events that are not document changes
/// (`drop`, `rename`, `invalidate`, ...).
pub(super) fn envelope(
    event: ChangeStreamEvent<Document>,
    event_name: &str,
    topic: &str,
) -> Result<Option<Envelope>, Error> {
    let operation = match event.operation_type {
        OperationType::Insert => ChangeOperation::Insert,
        OperationType::Update => ChangeOperation::Update,
        OperationType::Replace => ChangeOperation::Replace,
        OperationType::Delete => ChangeOperation::Delete,
        _ => return Ok(None),
    };
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
        key,
        document: event.full_document.map(json),
        updated_fields,
        removed_fields,
    };
    // The same change always gets the same id, so consumers' inboxes drop a replay.
    let seed = doc! { "t": mongodb::bson::to_bson(&event.id).unwrap_or(Bson::Null) };
    let timestamp = event.wall_time.map(|time| time.to_system_time());
    change_envelope(&change, &seed, timestamp, event_name, topic).map(Some)
}

/// The envelope of `change`, named `event_name` on `topic`: its id derived from `seed`,
/// its partition key the document key.
pub(super) fn change_envelope(
    change: &DocumentChange,
    seed: &Document,
    timestamp: Option<std::time::SystemTime>,
    event_name: &str,
    topic: &str,
) -> Result<Envelope, Error> {
    let payload = serde_json::to_vec(change)
        .map_err(|e| Error::backend(format!("could not encode a change event: {e}")))?;
    let mut envelope = Envelope::new(
        event_name.to_owned(),
        1,
        topic.to_owned(),
        "application/json",
        payload,
    );
    envelope.id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        &mongodb::bson::to_vec(seed).unwrap_or_default(),
    );
    envelope.correlation_id = envelope.id;
    let key = &change.key;
    envelope.key = Some(match key {
        // `{"_id": "order-1"}` → `order-1`; other keys as their JSON.
        serde_json::Value::Object(fields) if fields.len() == 1 => match fields.get("_id") {
            Some(serde_json::Value::String(id)) => id.clone(),
            Some(other) => other.to_string(),
            None => key.to_string(),
        },
        _ => key.to_string(),
    });
    if let Some(timestamp) = timestamp {
        envelope.timestamp = timestamp;
    }
    Ok(envelope)
}

/// A BSON document as relaxed extended JSON.
pub(super) fn json(document: Document) -> serde_json::Value {
    Bson::Document(document).into_relaxed_extjson()
}
