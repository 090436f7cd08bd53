//! Checkpoints on SQLite: saved alone ([`CheckpointStore`]), and inside a unit of work for
//! projections.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension};

use super::SqliteStore;
use crate::store::CheckpointStore;
use crate::Error;

/// Saves checkpoint `name` as `value` if it is `previous`, in the open transaction: the
/// transaction holds the write lock, so no other writer can move it between the read and
/// the write. The outer error is SQLite's, the inner one the moved checkpoint.
pub(super) fn save_if(
    connection: &Connection,
    name: &str,
    previous: Option<&str>,
    value: &str,
) -> rusqlite::Result<Result<(), Error>> {
    let current: Option<String> = connection
        .prepare_cached("SELECT value FROM checkpoints WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
        .optional()?;
    if current.as_deref() != previous {
        return Ok(Err(Error::CheckpointMoved {
            name: name.to_owned(),
            expected: previous.map(str::to_owned),
            actual: current,
        }));
    }
    connection
        .prepare_cached(
            "INSERT INTO checkpoints (name, value) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )?
        .execute([name, value])?;
    Ok(Ok(()))
}

#[async_trait]
impl CheckpointStore for SqliteStore {
    async fn checkpoint(&self, name: &str) -> Result<Option<String>, Error> {
        let name = name.to_owned();
        self.read("reading a checkpoint", move |connection| {
            connection
                .prepare_cached("SELECT value FROM checkpoints WHERE name = ?1")?
                .query_row([name], |row| row.get(0))
                .optional()
        })
        .await
    }

    async fn save_checkpoint(&self, name: &str, value: &str) -> Result<(), Error> {
        let (name, value) = (name.to_owned(), value.to_owned());
        let inner = self.inner.clone();
        self.write("saving a checkpoint", move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO checkpoints (name, value) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut upsert| upsert.execute([name, value]))
                .map_err(|e| inner.fail("saving a checkpoint", e))?;
            Ok(())
        })
        .await
    }
}
