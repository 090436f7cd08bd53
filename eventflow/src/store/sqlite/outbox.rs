//! The outbox on SQLite: claims under the relay lease, delivered entries, releasing the lease.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use tokio::sync::watch;

use super::rows::{envelope_from_row, nanos, salvage_envelope, sql_int};
use super::schema::CLAIM_OUTBOX;
use super::SqliteStore;
use crate::store::{
    FeedSettings, LeasedOutbox, OutboxEntry, OutboxFeed, OutboxLease, OutboxStore, PolledOutbox,
};
use crate::Error;

#[async_trait]
impl LeasedOutbox for SqliteStore {
    async fn claim_outbox(
        &self,
        relay: &str,
        lease: Duration,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, Error> {
        let relay = relay.to_owned();
        let inner = self.inner.clone();
        self.write("claiming the outbox", move |connection| {
            let claim = || -> rusqlite::Result<Vec<OutboxEntry>> {
                // Wall-clock time, because the relays sharing the lease may be in other
                // processes.
                let now = nanos(SystemTime::now()).unwrap_or(i64::MAX);
                let holder: Option<(String, i64)> = connection
                    .prepare_cached("SELECT holder, expires_at FROM outbox_lease WHERE id = 1")?
                    .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                if let Some((holder, expires_at)) = holder.filter(|(holder, _)| *holder != relay) {
                    if expires_at > now {
                        if !crate::store::relay_is_gone(&holder) {
                            return Ok(Vec::new());
                        }
                        tracing::info!(%relay, previous = %holder,
                            "taking the outbox lease over before it expires: the relay holding it ran on this host and its process is gone");
                    }
                }
                let lease = i64::try_from(lease.as_nanos()).unwrap_or(i64::MAX);
                connection
                    .prepare_cached(
                        "INSERT OR REPLACE INTO outbox_lease (id, holder, expires_at) VALUES (1, ?1, ?2)",
                    )?
                    .execute(params![relay, now.saturating_add(lease)])?;
                let mut select = connection.prepare_cached(CLAIM_OUTBOX)?;
                let rows = select.query_map([sql_int(after), sql_int(limit as u64)], |row| {
                    let sequence = row.get::<_, i64>(0)? as u64;
                    Ok(match envelope_from_row(row, 1) {
                        Ok(envelope) => OutboxEntry::new(sequence, envelope),
                        // One unreadable row must not stop the relay: it is handed over
                        // as corrupt, for the relay to dead-letter.
                        Err(error) => OutboxEntry {
                            sequence,
                            envelope: salvage_envelope(row, 1),
                            corrupt: Some(format!("outbox entry {sequence} cannot be read: {error}")),
                        },
                    })
                })?;
                rows.collect()
            };
            claim().map_err(|e| inner.fail("claiming the outbox", e))
        })
        .await
    }

    async fn mark_delivered(&self, relay: &str, sequences: &[u64]) -> Result<(), Error> {
        let relay = relay.to_owned();
        let sequences = sequences.to_vec();
        let inner = self.inner.clone();
        self.write("marking outbox entries delivered", move |connection| {
            let mark = || -> rusqlite::Result<Option<String>> {
                let holder: Option<String> = connection
                    .prepare_cached("SELECT holder FROM outbox_lease WHERE id = 1")?
                    .query_row([], |row| row.get(0))
                    .optional()?;
                if holder.as_ref().is_some_and(|holder| *holder != relay) {
                    return Ok(holder);
                }
                let mut delete = connection.prepare_cached("DELETE FROM outbox WHERE sequence = ?1")?;
                for &sequence in &sequences {
                    delete.execute([sql_int(sequence)])?;
                }
                Ok(None)
            };
            match mark().map_err(|e| inner.fail("marking outbox entries delivered", e))? {
                None => Ok(()),
                Some(holder) => Err(Error::backend(format!(
                    "relay `{relay}` lost the outbox lease to `{holder}` before marking entries \
                     delivered; they will be delivered again, so keep batches short enough to \
                     deliver within the lease or lengthen the lease"
                ))),
            }
        })
        .await
    }

    async fn release_outbox(&self, relay: &str) -> Result<(), Error> {
        let relay = relay.to_owned();
        let inner = self.inner.clone();
        self.write("releasing the outbox lease", move |connection| {
            connection
                .execute("DELETE FROM outbox_lease WHERE id = 1 AND holder = ?1", [relay])
                .map_err(|e| inner.fail("releasing the outbox lease", e))?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn open_outbox(&self, relay: &str, settings: FeedSettings) -> Result<Box<dyn OutboxFeed>, Error> {
        Ok(Box::new(PolledOutbox::new(
            Arc::new(self.clone()),
            relay,
            settings,
        )))
    }

    async fn outbox_lease(&self) -> Result<Option<OutboxLease>, Error> {
        self.read("reading the outbox lease", move |connection| {
            connection
                .prepare_cached("SELECT holder, expires_at FROM outbox_lease WHERE id = 1")?
                .query_row([], |row| {
                    let expires_at: i64 = row.get(1)?;
                    Ok(OutboxLease {
                        holder: row.get(0)?,
                        expires_at: UNIX_EPOCH + Duration::from_nanos(expires_at.max(0) as u64),
                    })
                })
                .optional()
        })
        .await
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }
}
