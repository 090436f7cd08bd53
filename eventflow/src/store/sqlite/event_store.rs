//! Reading streams and the whole store on SQLite, from the reader pool.

use async_trait::async_trait;
use rusqlite::params;

use super::rows::{sql_int, stored_event};
use super::schema::SELECT_EVENTS;
use super::SqliteStore;
use crate::store::{EventStore, StoredEvent};
use crate::Error;

#[async_trait]
impl EventStore for SqliteStore {
    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<StoredEvent>, Error> {
        let stream = stream.to_owned();
        self.read("reading a stream", move |connection| {
            let sql = format!("{SELECT_EVENTS} WHERE stream = ?1 AND version >= ?2 ORDER BY version");
            let mut select = connection.prepare_cached(&sql)?;
            let rows = select.query_map(params![stream, sql_int(from_version)], stored_event)?;
            rows.collect()
        })
        .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, Error> {
        self.read("reading all events", move |connection| {
            let sql = format!("{SELECT_EVENTS} WHERE position > ?1 ORDER BY position LIMIT ?2");
            let mut select = connection.prepare_cached(&sql)?;
            let rows = select.query_map(params![sql_int(after), sql_int(limit as u64)], stored_event)?;
            rows.collect()
        })
        .await
    }

    async fn head_position(&self) -> Result<Option<u64>, Error> {
        self.read("reading the newest event's position", |connection| {
            let head: i64 = connection
                .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM events")?
                .query_row([], |row| row.get(0))?;
            Ok(Some(head as u64))
        })
        .await
    }
}
