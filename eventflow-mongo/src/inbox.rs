//! Inbox markers: what a group processed, one document per (group, event id).

use eventflow::Error;
use mongodb::bson::{doc, Document};
use uuid::Uuid;

use crate::client::Inner;
use crate::document::{field, uuid_bson};
use crate::error::backend;

/// An inbox marker document.
pub(crate) fn marker(group: &str, event_id: Uuid) -> Document {
    doc! {
        "group": group,
        field::EVENT_ID: uuid_bson(event_id),
        // A BSON date, so that a TTL index can prune old markers.
        "processed_at": mongodb::bson::DateTime::now(),
    }
}

/// Whether `group` has a marker for `event_id`, as committed.
pub(crate) async fn is_processed(inner: &Inner, group: &str, event_id: Uuid) -> Result<bool, Error> {
    let found = inner
        .inbox
        .find_one(doc! { "group": group, field::EVENT_ID: uuid_bson(event_id) })
        .projection(doc! { "_id": 1 })
        .await
        .map_err(|e| backend("reading the inbox", e))?;
    Ok(found.is_some())
}
