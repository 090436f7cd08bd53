//! The idempotency inbox: which events each consumer group has processed, so a redelivered
//! copy is skipped.

use std::collections::HashSet;
use std::time::SystemTime;

use async_trait::async_trait;
use uuid::Uuid;

use crate::Error;

/// The inbox markers a group records outside a unit of work (inside one,
/// [`Transaction::mark_processed`](super::Transaction::mark_processed) records them with
/// the handler's writes), and their pruning.
///
/// Conformance: [`conformance::inbox`](super::conformance::inbox).
#[async_trait]
pub trait InboxStore: Send + Sync {
    /// Whether `group` has processed event `event_id`.
    async fn is_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error>;

    /// Records that `group` processed `event_id`, outside any transaction. Returns false
    /// if it was recorded already.
    async fn mark_processed(&self, group: &str, event_id: Uuid) -> Result<bool, Error>;

    /// Which of `event_ids` `group` has processed: one round trip for a batch of polled
    /// events. The default asks [`is_processed`](InboxStore::is_processed) for each;
    /// backends override it with one query.
    async fn processed(&self, group: &str, event_ids: &[Uuid]) -> Result<HashSet<Uuid>, Error> {
        let mut processed = HashSet::new();
        for &id in event_ids {
            if self.is_processed(group, id).await? {
                processed.insert(id);
            }
        }
        Ok(processed)
    }

    /// Records that `group` processed all of `event_ids`, outside any transaction; ids
    /// recorded already are left as they are. The default calls
    /// [`mark_processed`](InboxStore::mark_processed) for each; backends override it with
    /// one write.
    async fn mark_all_processed(&self, group: &str, event_ids: &[Uuid]) -> Result<(), Error> {
        for &id in event_ids {
            self.mark_processed(group, id).await?;
        }
        Ok(())
    }

    /// Forgets the inbox markers recorded before `before`, of every group; returns how
    /// many. A redelivered copy of such an event is handled again, so the bus keeps
    /// markers for [`inbox_retention`](crate::EventBusBuilder::inbox_retention) (7 days by
    /// default), well past the time a copy can arrive (a relay or consumer that crashed
    /// and restarted). Backends delete in short transactions, so pruning never holds up
    /// handlers for long.
    ///
    /// The default fails with [`Error::Unsupported`]: a backend that cannot prune keeps
    /// every marker, and the bus says so in its log once.
    async fn prune_inbox(&self, before: SystemTime) -> Result<u64, Error> {
        let _ = before;
        Err(Error::Unsupported(
            "this storage backend cannot prune its inbox (`InboxStore::prune_inbox`), so its markers \
             are kept; implement `prune_inbox`, or use MemoryStore, SqliteStore or MongoStore, which prune"
                .into(),
        ))
    }
}
