//! Marking entries delivered: the delivered watermark, entries delivered out of order, and
//! writing both, fenced by the lease.
//!
//! Marking the oldest claimed entries delivered raises a watermark kept in the lease
//! document (`delivered_below`: every entry below it is delivered), per entry, by the same
//! conditional update that checks the relay still holds the lease. While the relay surely
//! holds it (within a third of the lease from taking or renewing it), a mark only raises
//! the watermark in memory, and a background write carries it, with the position, at most
//! once a second: the server then pays one such write per second rather than one per
//! batch, and delivery never waits for one. (On a server where a retryable write is slow,
//! a write per batch kept it busy enough to hold commits up by hundreds of milliseconds.)
//! Other marks (entries delivered out of order, a lease near its end, a relay without it)
//! write at once, and giving the lease up writes the watermark with the release.
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
//! document is deleted at once if that covers all of it), so that no relay claims them
//! again. Claims never read below the watermark.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::Error;
use mongodb::bson::{doc, Bson};

use super::cleanup::Cleaner;
use super::feed::{Feed, Pending, SharedFeed};
use super::layout::DELIVERED;
use super::lease;
use super::position::{self, Position};
use crate::client::Inner;
use crate::document::int;
use crate::error::{backend, is_transient};

/// How often, at most, a relay writes its delivered watermark and saves its position while
/// it delivers.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

impl Feed {
    /// Writes the watermark and position reached since the last write, in the background,
    /// if the last write was at least [`FLUSH_INTERVAL`] ago and none is under way: one
    /// write of each per interval, whatever the rate of marks, and none on the delivery
    /// path.
    pub(super) fn flush_if_due(&mut self, inner: &Arc<Inner>, shared: &SharedFeed) {
        let due = self
            .flushed_at
            .is_none_or(|flushed| flushed.elapsed() >= FLUSH_INTERVAL);
        let dirty = self.unflushed.is_some() || self.unsaved.is_some();
        let Some(relay) = self.owner.clone() else {
            return;
        };
        if !due || !dirty || self.flushing {
            return;
        }
        let (watermark, position) = (self.unflushed.take(), self.unsaved.take());
        self.flushing = true;
        self.flushed_at = Some(Instant::now());
        let (inner, shared, epoch) = (inner.clone(), shared.clone(), self.epoch);
        tokio::spawn(async move {
            let marked = Marked {
                others: &BTreeMap::new(),
                watermark,
                position: position.clone(),
            };
            let written = delete_delivered(&inner, &relay, marked).await;
            let mut feed = shared.lock().await;
            if feed.epoch != epoch {
                return;
            }
            feed.flushing = false;
            match written {
                Ok(true) => {}
                Ok(false) => {
                    // The lease cannot expire within a third of it from taking it, and
                    // marks after that check it themselves: only a clock jump gets here.
                    tracing::warn!(
                        relay,
                        "the outbox relay lost its lease before writing its delivered \
                         watermark; the entries it delivered since its last write will be \
                         delivered again"
                    );
                    feed.reset(None);
                }
                Err(error) => {
                    tracing::warn!(
                        relay,
                        error = %crate::error::describe(&error),
                        "writing the outbox relay's delivered watermark failed; the next \
                         write carries it"
                    );
                    // Unless a later one is waiting: that one covers it.
                    feed.unflushed = feed.unflushed.or(watermark);
                    feed.unsaved = feed.unsaved.take().or(position);
                }
            }
        });
    }

    /// Marks `sequences` delivered by `relay`: the oldest claimed ones raise the watermark,
    /// the others are recorded in their documents.
    pub(super) async fn mark_delivered(
        &mut self,
        inner: &Arc<Inner>,
        shared: &SharedFeed,
        cleaner: &Cleaner,
        relay: &str,
        sequences: &[u64],
    ) -> Result<(), Error> {
        let delivered: HashSet<u64> = sequences.iter().copied().collect();
        let owned = self.owner.as_deref() == Some(relay);
        // The oldest claimed entries raise the watermark; others are recorded in their document.
        let prefix: Vec<&Pending> = match owned {
            true => self
                .pending
                .iter()
                .take_while(|p| delivered.contains(&p.entry.sequence))
                .collect(),
            false => Vec::new(),
        };
        let reached = prefix.iter().rev().find_map(|p| p.position.clone());
        let watermark = prefix.last().map(|p| p.entry.sequence + 1);
        // Sequences not claimed through this feed (it was reset) are left alone: they may be
        // delivered again, as after any takeover.
        let mut others: BTreeMap<u64, (u64, Vec<u64>)> = BTreeMap::new();
        for p in self.pending.iter().skip(prefix.len()) {
            if delivered.contains(&p.entry.sequence) {
                let (_, sequences) = others.entry(p.document).or_insert((p.size, Vec::new()));
                sequences.push(p.entry.sequence);
            }
        }
        // While `relay` surely holds the lease, a mark that only raises the watermark is
        // written with the next flush, at most every FLUSH_INTERVAL and in the background: no
        // write per batch on the delivery path, and none that commits queue behind on the
        // server. Until it is written, a relay taking over after a crash delivers those
        // entries again, as it does entries sent and not marked; one that takes over after
        // `release` does not, since the release writes it.
        let surely_held = self.held_until.is_some_and(|until| Instant::now() < until);
        if owned && others.is_empty() && surely_held {
            self.reach(watermark, reached);
            self.pending.retain(|p| !delivered.contains(&p.entry.sequence));
            self.clean_up(inner, cleaner);
            self.flush_if_due(inner, shared);
            return Ok(());
        }
        // Otherwise written now, fenced by the lease, with what earlier marks reached.
        let (watermark, position) = match owned {
            true => {
                self.reach(watermark, reached);
                (self.unflushed, self.unsaved.clone())
            }
            false => (None, None),
        };
        let mut attempt = 0;
        loop {
            let marked = Marked {
                others: &others,
                watermark,
                position: position.clone(),
            };
            match delete_delivered(inner, relay, marked).await {
                Ok(true) => break,
                Ok(false) => {
                    if self.owner.as_deref() == Some(relay) {
                        self.reset(None);
                    }
                    return Err(Error::backend(format!(
                        "relay `{relay}` lost the outbox lease before marking entries delivered; \
                     they will be delivered again, so keep batches short enough to deliver \
                     within the lease or lengthen the lease"
                    )));
                }
                Err(error) if is_transient(&error) && attempt < inner.transaction_retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=10))).await;
                }
                Err(error) => return Err(backend("marking outbox entries delivered", error)),
            }
        }
        if owned {
            self.flushed_at = Some(Instant::now());
            self.unflushed = None;
            self.unsaved = None;
        }
        self.pending.retain(|p| !delivered.contains(&p.entry.sequence));
        self.clean_up(inner, cleaner);
        Ok(())
    }
}

/// What a relay marks delivered: the new watermark, the entries delivered out of order
/// (by document: its size and their sequences), the position to save.
struct Marked<'a> {
    others: &'a BTreeMap<u64, (u64, Vec<u64>)>,
    watermark: Option<u64>,
    position: Option<Position>,
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
    if !lease::raise_watermark(inner, relay, marked.watermark).await? {
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
