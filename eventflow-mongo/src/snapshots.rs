//! [`SnapshotStore`] on the [`MongoStore`]: one document per stream, `_id` the stream.

use async_trait::async_trait;
use eventflow::store::{SnapshotStore, StoredSnapshot};
use eventflow::Error;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Document};
use mongodb::Collection;

use crate::document::{self, int};
use crate::error::{backend, is_duplicate_key, unreadable};
use crate::store::MongoStore;

impl MongoStore {
    fn snapshot_collection(&self) -> Collection<Document> {
        self.inner.database.collection(&self.inner.names.snapshots)
    }
}

#[async_trait]
impl SnapshotStore for MongoStore {
    async fn load_snapshot(&self, stream: &str) -> Result<Option<StoredSnapshot>, Error> {
        let found = self
            .snapshot_collection()
            .find_one(doc! { "_id": stream })
            .await
            .map_err(|e| backend("reading a snapshot", e))?;
        let Some(doc) = found else { return Ok(None) };
        let read = || -> Result<StoredSnapshot, String> {
            Ok(StoredSnapshot {
                stream: stream.to_owned(),
                version: document::get_u64(&doc, "version")?,
                schema: u32::try_from(document::get_int(&doc, "schema")?)
                    .map_err(|_| "`schema` is out of range".to_owned())?,
                state: doc
                    .get_binary_generic("state")
                    .map_err(|e| format!("`state`: {e}"))?
                    .clone(),
            })
        };
        read()
            .map(Some)
            .map_err(|reason| unreadable(&format!("the snapshot of stream `{stream}`"), reason))
    }

    async fn save_snapshot(&self, snapshot: StoredSnapshot) -> Result<(), Error> {
        let version = int(snapshot.version);
        let schema = i64::from(snapshot.schema);
        let state = Binary {
            subtype: BinarySubtype::Generic,
            bytes: snapshot.state,
        };
        // Matches unless a snapshot of the same schema and a later version is kept; then the
        // upsert's insert meets the kept `_id` and nothing changes.
        let replaceable = doc! {
            "_id": &snapshot.stream,
            "$or": [ { "version": { "$lte": &version } }, { "schema": { "$ne": schema } } ],
        };
        let saved = self
            .snapshot_collection()
            .update_one(
                replaceable,
                doc! { "$set": { "version": version, "schema": schema, "state": state } },
            )
            .upsert(true)
            .await;
        match saved {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(backend("saving a snapshot", e)),
        }
    }
}
