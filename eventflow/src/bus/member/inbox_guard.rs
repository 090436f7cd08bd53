//! The inbox guard of handlers without a transaction, in two round trips per batch: one
//! query for the events processed before (skipped), and one write recording the ones
//! handled now, made while the next batch is handled and before the batch's commit.

use std::collections::HashSet;

use tokio::sync::watch;
use uuid::Uuid;

use super::delivery::Member;
use super::outcome::Batch;
use super::retry::with_retries;
use crate::transport::Record;

/// Which of `ids` the group processed before; `None` if shutdown came while the storage
/// was failing.
pub(super) async fn processed_before(
    member: &Member,
    ids: &[Uuid],
    shutdown: &watch::Receiver<bool>,
) -> Option<HashSet<Uuid>> {
    let (Some(storage), false) = (&member.shared.storage, ids.is_empty()) else {
        return Some(HashSet::new());
    };
    let mut shutdown = shutdown.clone();
    with_retries(&member.shared, &mut shutdown, "checking the inbox", || {
        storage.processed(&member.group.name, ids)
    })
    .await
}

/// A handled batch whose inbox markers are being written, on a task of their own so that
/// the next batch is handled meanwhile. Its records are committed once the markers are
/// durable, so the at-least-once boundary stays where it was: a crash before that leaves
/// the batch uncommitted, to be handled again.
pub(super) struct Marking {
    pub(super) records: Vec<Record>,
    /// The events being marked: processed, for the next batch's inbox check.
    pub(super) ids: HashSet<Uuid>,
    /// `true` once the markers are written; `false` if shutdown came first.
    pub(super) written: tokio::task::JoinHandle<bool>,
}

impl Marking {
    pub(super) fn start(member: &Member, batch: Batch, shutdown: &watch::Receiver<bool>) -> Self {
        let ids = batch.handled.iter().copied().collect();
        let (shared, group, mut shutdown) = (member.shared.clone(), member.group.clone(), shutdown.clone());
        let handled = batch.handled;
        let written = tokio::spawn(async move {
            let Some(storage) = &shared.storage else {
                return true;
            };
            let marked = with_retries(
                &shared,
                &mut shutdown,
                "recording processed events in the inbox",
                || storage.mark_all_processed(&group.name, &handled),
            );
            marked.await.is_some()
        });
        Marking {
            records: batch.done,
            ids,
            written,
        }
    }
}
