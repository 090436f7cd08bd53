//! [`SnapshotStore`] on the [`SqliteStore`]: one row per stream in `snapshots`.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::rows::sql_int;
use super::SqliteStore;
use crate::store::{SnapshotStore, StoredSnapshot};
use crate::Error;

// A kept snapshot of the same schema and a later version wins: `WHERE` leaves it alone.
const SAVE: &str = "INSERT INTO snapshots (stream, version, schema_version, state) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (stream) DO UPDATE SET version = excluded.version, \
     schema_version = excluded.schema_version, state = excluded.state \
     WHERE excluded.version >= snapshots.version OR excluded.schema_version != snapshots.schema_version";

#[async_trait]
impl SnapshotStore for SqliteStore {
    async fn load_snapshot(&self, stream: &str) -> Result<Option<StoredSnapshot>, Error> {
        let stream = stream.to_owned();
        self.read("reading a snapshot", move |connection| {
            connection
                .prepare_cached("SELECT version, schema_version, state FROM snapshots WHERE stream = ?1")?
                .query_row([&stream], |row| {
                    Ok(StoredSnapshot {
                        stream: stream.clone(),
                        version: row.get::<_, i64>(0)? as u64,
                        schema: row.get(1)?,
                        state: row.get(2)?,
                    })
                })
                .optional()
        })
        .await
    }

    async fn save_snapshot(&self, snapshot: StoredSnapshot) -> Result<(), Error> {
        let inner = self.inner.clone();
        self.write("saving a snapshot", move |connection| {
            connection
                .prepare_cached(SAVE)
                .and_then(|mut save| {
                    save.execute(params![
                        snapshot.stream,
                        sql_int(snapshot.version),
                        snapshot.schema,
                        snapshot.state
                    ])
                })
                .map_err(|e| inner.fail("saving a snapshot", e))?;
            Ok(())
        })
        .await
    }
}
