//! The inbox on SQLite outside a unit of work: checking, marking and pruning markers.

use std::collections::HashSet;
use std::time::SystemTime;

use async_trait::async_trait;
use rusqlite::types::ToSqlOutput;
use rusqlite::{params, params_from_iter, OptionalExtension};
use uuid::Uuid;

use super::rows::nanos;
use super::schema::{PRUNE_CHUNK, PRUNE_INBOX};
use super::transaction::{insert_marker, insert_markers};
use super::SqliteStore;
use crate::store::InboxStore;
use crate::Error;

#[async_trait]
impl InboxStore for SqliteStore {
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        let group = group.to_owned();
        self.read("reading the inbox", move |connection| {
            connection
                .prepare_cached("SELECT 1 FROM inbox WHERE group_name = ?1 AND event_id = ?2")?
                .query_row(params![group, &event_id.as_bytes()[..]], |_| Ok(()))
                .optional()
                .map(|found| found.is_some())
        })
        .await
    }

    async fn mark_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error> {
        let group = group.to_owned();
        let inner = self.inner.clone();
        self.write("recording a processed event", move |connection| {
            insert_marker(connection, &group, event_id)
                .map_err(|e| inner.fail("recording a processed event", e))
        })
        .await
    }

    async fn processed(&self, group: &str, event_ids: &[Uuid]) -> Result<HashSet<Uuid>, Error> {
        let group = group.to_owned();
        let ids = event_ids.to_vec();
        self.read("reading the inbox", move |connection| {
            let mut processed = HashSet::new();
            // SQLite allows 32766 parameters; chunks of 500 keep the statements cacheable.
            for chunk in ids.chunks(500) {
                let sql = format!(
                    "SELECT event_id FROM inbox WHERE group_name = ? AND event_id IN ({})",
                    vec!["?"; chunk.len()].join(", ")
                );
                let mut select = connection.prepare_cached(&sql)?;
                let ids = chunk.iter().map(|id| ToSqlOutput::from(&id.as_bytes()[..]));
                let leading = std::iter::once(ToSqlOutput::from(group.as_str()));
                let mut rows = select.query(params_from_iter(leading.chain(ids)))?;
                while let Some(row) = rows.next()? {
                    if let Ok(id) = Uuid::from_slice(row.get_ref(0)?.as_blob()?) {
                        processed.insert(id);
                    }
                }
            }
            Ok(processed)
        })
        .await
    }

    async fn mark_all_processed(&self, group: &str, event_ids: &[Uuid]) -> Result<(), Error> {
        let group = group.to_owned();
        let ids = event_ids.to_vec();
        let inner = self.inner.clone();
        self.write("recording processed events", move |connection| {
            insert_markers(connection, &group, &ids)
                .map(drop)
                .map_err(|e| inner.fail("recording processed events", e))
        })
        .await
    }

    /// Deletes in transactions of 2,000 markers, so writers wait at most one
    /// of them. The inbox has no index on `processed_at` (it would cost every marker a
    /// second B-tree insert); each chunk scans from the oldest keys, where old markers of
    /// time-ordered (UUID v7) ids are.
    async fn prune_inbox(&self, before: SystemTime) -> Result<u64, Error> {
        let before = nanos(before).unwrap_or(i64::MAX);
        let mut pruned = 0;
        loop {
            let inner = self.inner.clone();
            let deleted = self
                .write("pruning the inbox", move |connection| {
                    connection
                        .prepare_cached(PRUNE_INBOX)
                        .and_then(|mut delete| delete.execute(params![before, PRUNE_CHUNK as i64]))
                        .map_err(|e| inner.fail("pruning the inbox", e))
                })
                .await?;
            pruned += deleted as u64;
            if deleted < PRUNE_CHUNK {
                return Ok(pruned);
            }
        }
    }
}
