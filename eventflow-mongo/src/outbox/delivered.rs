//! Marking entries delivered: the delivered watermark, entries delivered out of order, and
//! writing both, fenced by the lease.
//!
//! Marking the oldest entries handed out delivered raises a watermark kept in the lease
//! document (`delivered_below`: every entry below it is delivered), per entry, by the same
//! conditional update that checks the relay still holds the lease. While the relay surely
//! holds it (within a third of the lease from taking or renewing it), a mark only raises
//! the watermark in memory, and a background write carries it, with the position, at most
//! once a second (checked whenever the feed is used, and at least every poll interval):
//! the server then pays one such write per second rather than one per
//! batch, and delivery never waits for one. (On a server where a retryable write is slow,
//! a write per batch kept it busy enough to hold commits up by hundreds of milliseconds.)
//! Other marks (entries delivered out of order, a lease near its end) write at once, and
//! renew the lease in the same update; a feed that lost the lease says so with an error,
//! and closing the feed writes the watermark with the release.
//!
//! A document stays until the watermark (in memory: its entries are delivered, whether or
//! not that is written yet) has passed all of its entries; then its `_id` goes to a
//! background task that deletes such documents by `_id`, off the delivery path, every
//! second by default (`MongoStoreBuilder::outbox_cleanup_interval`), at most
//! `CLEANUP_CHUNK` entries per delete (see `cleanup`), one delete at a time: one unbounded
//! delete of a large backlog is one long operation (on some servers it holds the collection while it
//! runs, stalling the commits that insert into it), while bounded ones let commits in
//! between. When a relay starts or takes the outbox over, the task also sweeps the
//! documents left wholly below the watermark by an earlier relay, in `_id` ranges. Entries
//! marked delivered out of order are recorded in their document's `delivered` list (the
//! document is deleted at once if that covers all of it), so that no relay hands them out
//! again. The feed never reads below the watermark.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use eventflow::Error;
use mongodb::bson::{doc, Bson};

use super::feed::MongoFeed;
use super::layout::DELIVERED;
use super::lease;
use super::lease::lost_lease;
use super::marks::Write;
use super::position::{self, Position};
use crate::client::Inner;
use crate::document::int;
use crate::error::{backend, is_transient};

/// How often, at most, a relay writes its delivered watermark and saves its position while
/// it delivers.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

impl MongoFeed {
    /// Starts writing the watermark and position reached since the last write, in the
    /// background, if the last write was at least [`FLUSH_INTERVAL`] ago and none is under
    /// way: one write of each per interval, whatever the rate of marks, and none on the
    /// delivery path.
    pub(super) fn write_if_due(&mut self) {
        let holds = self.holds();
        let marks = &mut self.marks;
        let due = marks
            .written_at
            .is_none_or(|written| written.elapsed() >= FLUSH_INTERVAL);
        let dirty = marks.unwritten.is_some() || marks.unsaved.is_some();
        if !due || !dirty || marks.writing.is_some() || !holds {
            return;
        }
        let (watermark, position) = (marks.unwritten.take(), marks.unsaved.take());
        marks.written_at = Some(Instant::now());
        let (inner, relay) = (self.outbox.inner.clone(), self.relay.clone());
        let carried = (watermark, position.clone());
        let task = tokio::spawn(async move {
            let marked = Marked {
                others: &BTreeMap::new(),
                watermark,
                position,
                renew: None,
            };
            delete_delivered(&inner, &relay, marked).await
        });
        marks.writing = Some(Write {
            task,
            watermark: carried.0,
            position: carried.1,
        });
    }

    /// Takes in the outcome of a background write that has finished.
    pub(super) async fn reap_write(&mut self) {
        if self.marks.writing.as_ref().is_some_and(|w| w.task.is_finished()) {
            self.finish_write().await;
        }
    }

    /// Waits for the background write under way, if any, and takes in its outcome.
    pub(super) async fn finish_write(&mut self) {
        let Some(write) = self.marks.writing.take() else {
            return;
        };
        let written = write.task.await.unwrap_or_else(|_| Ok(true));
        match written {
            Ok(true) => {}
            Ok(false) => {
                // The lease cannot expire within a third of it from taking it, and marks
                // after that check it themselves: only a clock jump gets here.
                tracing::warn!(
                    relay = %self.relay,
                    "the outbox relay lost its lease before writing its delivered \
                     watermark; the entries it delivered since its last write will be \
                     delivered again"
                );
                self.lose();
            }
            Err(error) => {
                tracing::warn!(
                    relay = %self.relay,
                    error = %crate::error::describe(&error),
                    "writing the outbox relay's delivered watermark failed; the next \
                     write carries it"
                );
                // Unless a later one is waiting: that one covers it.
                let marks = &mut self.marks;
                marks.unwritten = marks.unwritten.or(write.watermark);
                marks.unsaved = marks.unsaved.take().or(write.position);
            }
        }
    }

    /// Marks `sequences` delivered: the oldest entries handed out raise the watermark, the
    /// others are recorded in their documents.
    pub(super) async fn mark_delivered(&mut self, sequences: &[u64]) -> Result<(), Error> {
        self.reap_write().await;
        if !self.holds() {
            return Err(lost_lease(&self.relay));
        }
        let delivered: HashSet<u64> = sequences.iter().copied().collect();
        let pending = &self.reader.pending;
        // The oldest entries raise the watermark; others are recorded in their document.
        let prefix = pending
            .iter()
            .take_while(|p| delivered.contains(&p.entry.sequence))
            .count();
        let reached = pending.iter().take(prefix).rev().find_map(|p| p.position.clone());
        let watermark = prefix.checked_sub(1).map(|last| pending[last].entry.sequence + 1);
        // Sequences this feed did not hand out are left alone: they may be delivered again,
        // as after any takeover.
        let mut others: BTreeMap<u64, (u64, Vec<u64>)> = BTreeMap::new();
        for p in pending.iter().skip(prefix) {
            if delivered.contains(&p.entry.sequence) {
                let (_, sequences) = others.entry(p.document).or_insert((p.size, Vec::new()));
                sequences.push(p.entry.sequence);
            }
        }
        self.marks.reach(watermark, reached);
        if let Some(watermark) = watermark {
            self.reader.raise(watermark);
            self.outbox.publish_watermark(self.reader.watermark);
        }
        // While the relay surely holds the lease, a mark that only raises the watermark is
        // written with the next background write, at most every FLUSH_INTERVAL: no write per
        // batch on the delivery path, and none that commits queue behind on the server.
        // Until it is written, a relay taking over after a crash delivers those entries
        // again, as it does entries handed out and not marked; one that takes over after
        // `close` does not, since the release writes it.
        if !(others.is_empty() && self.surely_holds()) {
            self.write_now(&others).await?;
        }
        // Entries handed out and delivered leave; `next` goes on after those left.
        let (handed, mut index, mut left) = (self.handed, 0, 0);
        self.reader.pending.retain(|p| {
            let keep = !delivered.contains(&p.entry.sequence);
            left += usize::from(!keep && index < handed);
            index += 1;
            keep
        });
        self.handed -= left;
        self.reader.clean_up(&self.outbox.inner, &self.outbox.cleaner);
        self.write_if_due();
        Ok(())
    }

    /// Writes, fenced by the lease and renewing it, the entries delivered out of order
    /// (`others`) and what earlier marks reached.
    async fn write_now(&mut self, others: &BTreeMap<u64, (u64, Vec<u64>)>) -> Result<(), Error> {
        let (watermark, position) = (self.marks.unwritten, self.marks.unsaved.clone());
        let mut attempt = 0;
        loop {
            let renewed = Instant::now();
            let marked = Marked {
                others,
                watermark,
                position: position.clone(),
                renew: Some(self.settings.lease),
            };
            match delete_delivered(&self.outbox.inner, &self.relay, marked).await {
                Ok(true) => {
                    self.held_until = Some(lease::surely_held_until(renewed, self.settings.lease));
                    break;
                }
                Ok(false) => {
                    self.lose();
                    return Err(lost_lease(&self.relay));
                }
                Err(error) if is_transient(&error) && attempt < self.outbox.inner.transaction_retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=10))).await;
                }
                Err(error) => return Err(backend("marking outbox entries delivered", error)),
            }
        }
        let marks = &mut self.marks;
        marks.written_at = Some(Instant::now());
        marks.unwritten = None;
        marks.unsaved = None;
        Ok(())
    }
}

/// What a relay marks delivered: the new watermark, the entries delivered out of order
/// (by document: its size and their sequences), the position to save, and the lease to
/// renew with the same update, if any.
struct Marked<'a> {
    others: &'a BTreeMap<u64, (u64, Vec<u64>)>,
    watermark: Option<u64>,
    position: Option<Position>,
    renew: Option<Duration>,
}

/// Fenced by the lease: raises the watermark if `relay` still holds the lease, then records
/// the entries delivered out of order (deleting the documents they make whole) and saves
/// the position. `Ok(false)` if `relay` no longer holds the lease.
///
/// No transaction: a process killed inside one would leave it open on the server, holding
/// the lease document for the next relay until the server aborts it (60 s by default).
/// Each step is safe on its own: the conditional update is the fence; the recorded and
/// deleted entries were delivered by this relay; a position is only ever moved forward.
async fn delete_delivered(
    inner: &Inner,
    relay: &str,
    marked: Marked<'_>,
) -> Result<bool, mongodb::error::Error> {
    if !lease::raise_watermark(inner, relay, marked.watermark, marked.renew).await? {
        return Ok(false);
    }
    let mut whole = Vec::new();
    for (&document, (size, sequences)) in marked.others {
        if sequences.len() as u64 >= *size {
            whole.push(int(document));
            continue;
        }
        let sequences: Vec<Bson> = sequences.iter().map(|&s| int(s)).collect();
        inner
            .outbox
            .update_one(
                doc! { "_id": int(document) },
                doc! { "$addToSet": { DELIVERED: { "$each": sequences } } },
            )
            .await?;
    }
    if !whole.is_empty() {
        inner.outbox.delete_many(doc! { "_id": { "$in": whole } }).await?;
    }
    if let Some(position) = marked.position {
        position::save(inner, position).await?;
    }
    Ok(true)
}
