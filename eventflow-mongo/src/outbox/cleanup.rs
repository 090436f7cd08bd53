//! Deleting delivered outbox documents in the background, off the delivery path.
//!
//! The relay hands the clean-up the `_id`s of the documents the watermark has passed
//! whole; every interval it deletes them by `_id`, in chunks of at most [`CLEANUP_CHUNK`]
//! entries, one delete at a time. Deleting by `_id` rather than by range matters: a range
//! delete must read every document in the range to check it, and outbox documents hold a
//! whole unit of work each; a delete by `_id` only looks the documents up.
//!
//! Documents the relay of this handle did not see (delivered by a relay that stopped
//! before its clean-up ran, or written in the one-document-per-entry layout) are swept by
//! range when a relay starts or takes the outbox over: every document from the lowest up
//! to the watermark whose entries are all below it.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::Collection;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::layout::LAST;
use crate::document::{self, int};
use crate::error::describe;

/// How often delivered entries below the watermark are deleted, by default.
pub(crate) const CLEANUP_INTERVAL: Duration = Duration::from_secs(1);

/// The most entries one clean-up delete removes (one document, if it holds more).
pub(crate) const CLEANUP_CHUNK: u64 = 1024;

/// Deletes delivered documents in the background: every clean-up interval, the documents
/// the relay reported, and after a start or takeover, a sweep of what is left below the
/// watermark.
///
/// The work is the same as deleting each document when it is delivered, batched: the
/// outbox holds at most about one interval's worth of delivered documents, whatever the
/// load.
#[derive(Default)]
pub(crate) struct Cleaner {
    work: Arc<Mutex<Work>>,
    wake: Arc<Notify>,
    task: OnceLock<JoinHandle<()>>,
}

#[derive(Default)]
struct Work {
    /// Every entry below this is delivered.
    below: u64,
    /// Delivered documents to delete: `_id` and entry count.
    documents: Vec<(u64, u64)>,
    /// Whether to sweep the outbox below the watermark.
    sweep: bool,
}

impl Cleaner {
    /// Lets the task delete `documents` (whose entries are all below `below`) and, after
    /// [`sweep`](Cleaner::sweep), whatever else lies wholly below `below`.
    pub(crate) fn delete(
        &self,
        outbox: &Collection<Document>,
        interval: Duration,
        below: u64,
        documents: Vec<(u64, u64)>,
    ) {
        let wake = {
            let mut work = self.work.lock().unwrap_or_else(|e| e.into_inner());
            work.below = work.below.max(below);
            work.documents.extend(documents);
            work.below > 1 && (!work.documents.is_empty() || work.sweep)
        };
        if wake {
            self.task.get_or_init(|| {
                let task = clean_up(outbox.clone(), self.work.clone(), self.wake.clone(), interval);
                tokio::spawn(task)
            });
            self.wake.notify_one();
        }
    }

    /// Sweeps the outbox below the watermark in the next clean-up: documents this handle's
    /// relay has not seen may be there.
    pub(crate) fn sweep(&self) {
        self.work.lock().unwrap_or_else(|e| e.into_inner()).sweep = true;
    }
}

impl Drop for Cleaner {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

async fn clean_up(
    outbox: Collection<Document>,
    work: Arc<Mutex<Work>>,
    wake: Arc<Notify>,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let (below, documents, sweep) = {
            let mut work = work.lock().unwrap_or_else(|e| e.into_inner());
            (
                work.below,
                std::mem::take(&mut work.documents),
                std::mem::take(&mut work.sweep),
            )
        };
        if documents.is_empty() && !sweep {
            wake.notified().await;
            continue;
        }
        if sweep {
            if let Err(error) = sweep_below(&outbox, below).await {
                tracing::warn!(
                    error = %describe(&error),
                    "sweeping the outbox for delivered entries failed; the next clean-up \
                     tries again"
                );
                work.lock().unwrap_or_else(|e| e.into_inner()).sweep = true;
            }
        }
        let mut chunks = chunks(&documents).into_iter();
        for chunk in chunks.by_ref() {
            let ids: Vec<Bson> = chunk.iter().map(|&(id, _)| int(id)).collect();
            if let Err(error) = outbox.delete_many(doc! { "_id": { "$in": ids } }).await {
                tracing::warn!(
                    error = %describe(&error),
                    "deleting delivered outbox entries failed; the next clean-up deletes them"
                );
                let mut work = work.lock().unwrap_or_else(|e| e.into_inner());
                let left: Vec<(u64, u64)> = std::iter::once(chunk)
                    .chain(chunks.by_ref())
                    .flatten()
                    .copied()
                    .collect();
                work.documents.splice(0..0, left);
                break;
            }
        }
    }
}

/// `documents` in runs of at most [`CLEANUP_CHUNK`] entries, and at least one document.
fn chunks(documents: &[(u64, u64)]) -> Vec<&[(u64, u64)]> {
    let mut chunks = Vec::new();
    let (mut start, mut entries) = (0, 0);
    for (i, &(_, size)) in documents.iter().enumerate() {
        if i > start && entries + size > CLEANUP_CHUNK {
            chunks.push(&documents[start..i]);
            (start, entries) = (i, 0);
        }
        entries += size;
    }
    if start < documents.len() {
        chunks.push(&documents[start..]);
    }
    chunks
}

/// Deletes every document whose entries are all below `below`, in `_id` ranges of
/// [`CLEANUP_CHUNK`] sequences, skipping the stretches with no document.
async fn sweep_below(outbox: &Collection<Document>, below: u64) -> Result<(), mongodb::error::Error> {
    let mut from = 0;
    loop {
        let Some(lowest) = lowest(outbox, from).await? else {
            return Ok(());
        };
        if lowest >= below {
            return Ok(());
        }
        let to = below.min(lowest.saturating_add(CLEANUP_CHUNK));
        let range = doc! {
            "_id": { "$gte": int(lowest), "$lt": int(to) },
            // Documents of the one-document-per-entry layout have no `last`.
            "$or": [ { LAST: { "$lt": int(below) } }, { LAST: { "$exists": false } } ],
        };
        outbox.delete_many(range).await?;
        from = to;
    }
}

/// The lowest `_id` in the outbox from `from` on.
async fn lowest(outbox: &Collection<Document>, from: u64) -> Result<Option<u64>, mongodb::error::Error> {
    let first = outbox
        .find_one(doc! { "_id": { "$gte": int(from) } })
        .sort(doc! { "_id": 1 })
        .projection(doc! { "_id": 1 })
        .await?;
    Ok(first.and_then(|doc| document::get_u64(&doc, "_id").ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_at_most_a_chunk_of_entries_and_at_least_one_document() {
        let documents = [(1, 512), (513, 512), (1025, 2000), (3025, 1), (3026, 1)];
        let sizes: Vec<Vec<u64>> = chunks(&documents)
            .iter()
            .map(|chunk| chunk.iter().map(|&(id, _)| id).collect())
            .collect();
        assert_eq!(sizes, [vec![1, 513], vec![1025], vec![3025, 3026]]);
        assert!(chunks(&[]).is_empty());
    }
}
