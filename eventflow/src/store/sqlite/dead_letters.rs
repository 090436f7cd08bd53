//! Dead letters on SQLite.

use std::collections::HashMap;

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, Type};
use rusqlite::{params_from_iter, OptionalExtension};
use uuid::Uuid;

use super::rows::{dead_letter, envelope_params, nanos};
use super::schema::{DEAD_LETTER_COLUMNS, PUT_DEAD_LETTER};
use super::transaction::StepError;
use super::SqliteStore;
use crate::Error;
use crate::{DeadLetter, DeadLetterStore};

#[async_trait]
impl DeadLetterStore for SqliteStore {
    async fn put(&self, letter: DeadLetter) -> Result<(), Error> {
        let inner = self.inner.clone();
        self.write("storing a dead letter", move |connection| {
            let put = || -> Result<(), StepError> {
                let leading = [
                    ToSqlOutput::from(&letter.id.as_bytes()[..]),
                    ToSqlOutput::from(letter.group.as_str()),
                    ToSqlOutput::from(letter.error.as_str()),
                    ToSqlOutput::from(letter.attempts),
                    ToSqlOutput::from(nanos(letter.failed_at)?),
                ];
                let envelope = envelope_params(&letter.envelope)?;
                connection
                    .prepare_cached(PUT_DEAD_LETTER)?
                    .execute(params_from_iter(leading.into_iter().chain(envelope)))?;
                Ok(())
            };
            put().map_err(|e| inner.fail_any("storing a dead letter", e))
        })
        .await
    }

    async fn list(&self, group: Option<&str>) -> Result<Vec<DeadLetter>, Error> {
        let group = group.map(str::to_owned);
        self.read("listing dead letters", move |connection| {
            let sql = format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters \
                 WHERE ?1 IS NULL OR group_name = ?1 ORDER BY seq"
            );
            let mut select = connection.prepare_cached(&sql)?;
            let rows = select.query_map([group], dead_letter)?;
            rows.collect()
        })
        .await
    }

    async fn take(&self, id: Uuid) -> Result<Option<DeadLetter>, Error> {
        let inner = self.inner.clone();
        self.write("taking a dead letter", move |connection| {
            let sql = format!("DELETE FROM dead_letters WHERE id = ?1 RETURNING {DEAD_LETTER_COLUMNS}");
            connection
                .prepare_cached(&sql)
                .and_then(|mut delete| delete.query_row([&id.as_bytes()[..]], dead_letter).optional())
                .map_err(|e| inner.fail("taking a dead letter", e))
        })
        .await
    }

    async fn purge(&self, group: &str) -> Result<u64, Error> {
        let (inner, group) = (self.inner.clone(), group.to_owned());
        self.write("purging dead letters", move |connection| {
            connection
                .execute("DELETE FROM dead_letters WHERE group_name = ?1", [&group])
                .map(|deleted| deleted as u64)
                .map_err(|e| inner.fail("purging dead letters", e))
        })
        .await
    }

    async fn counts(&self) -> Result<std::collections::BTreeMap<String, u64>, Error> {
        self.read("counting dead letters", move |connection| {
            let mut select = connection
                .prepare_cached("SELECT group_name, COUNT(*) FROM dead_letters GROUP BY group_name")?;
            let rows = select.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
        .await
    }

    async fn blocked_keys(&self, group: &str) -> Result<HashMap<String, Uuid>, Error> {
        let group = group.to_owned();
        self.read("reading the keys of dead letters", move |connection| {
            let mut select = connection.prepare_cached(
                "SELECT partition_key, id FROM dead_letters \
                 WHERE group_name = ?1 AND partition_key IS NOT NULL ORDER BY seq",
            )?;
            let mut keys = HashMap::new();
            let rows = select.query_map([&group], |row| {
                let id = row.get_ref(1)?.as_blob()?;
                let id = Uuid::from_slice(id)
                    .map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, Type::Blob, Box::new(e)))?;
                Ok((row.get::<_, String>(0)?, id))
            })?;
            for row in rows {
                let (key, id) = row?;
                keys.entry(key).or_insert(id);
            }
            Ok(keys)
        })
        .await
    }
}
