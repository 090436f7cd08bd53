//! The relay's side of the outbox: the lease, and a feed of undelivered entries that follows
//! a change stream on the outbox collection, resumes from a saved resume token, and falls
//! back to scanning the collection whenever the stream cannot be trusted.
//!
//! # How entries are stored
//!
//! One document per unit of work, holding its entries in order (see [`layout`]): `_id` is
//! the sequence of its first entry, `last` that of its last, `entries` the envelopes. The
//! feed hands the relay individual entries; the server pays one insert, one change-stream
//! read and one delete per unit of work rather than per entry. Documents of the earlier
//! layout, one per entry, are read as documents of one entry.
//!
//! # Why nothing is lost
//!
//! Outbox sequences come from a counter incremented inside each unit of work's
//! transaction, so committed sequences are dense (1, 2, 3, ...) and in commit order, and
//! the change stream, which follows the oplog, yields the documents holding them in that
//! order. The feed knows the sequence it expects next and checks every document's range
//! against it: entries below it were delivered already (skipped, also within a document
//! that is partly delivered), a document starting above it means the stream missed
//! something (a scan follows).
//!
//! The saved position is a resume token with the sequence expected after it, saved after
//! the entries before it were marked delivered, and meaning: "every entry committed before
//! this token, and every entry below this sequence, is delivered". It is taken at the end
//! of a document, so a relay resuming from it streams the next document whole. It only
//! moves forward. A relay that takes the outbox over resumes the stream from it, and skips
//! what lies below the delivered watermark (see below). Both are written together, at most
//! once a second while a relay delivers (and when it stops or goes idle), not with every
//! batch; an older one only makes a relay taking over after a crash read a little more of
//! the oplog again and deliver again what was delivered since.
//!
//! The scan opens a new change stream first, then reads the undelivered entries from the
//! collection in sequence order, starting with the document that holds the first sequence
//! it wants. Entries committed before the stream opened are in the collection; entries
//! committed after are in the stream; the expected sequence removes the overlap. It runs on
//! first start, when the saved token cannot be resumed from (it left the oplog:
//! `ChangeStreamHistoryLost`, or is invalid), when the stream breaks, and on a gap.
//!
//! A document's entries are read one by one: an entry that does not read whole is handed to
//! the relay as corrupt, to be dead-lettered on its own, and its neighbours are delivered.
//!
//! # The lease
//!
//! A claim takes or renews the lease (`holder`, `expires_at` in the lease document), unless
//! the same relay took or renewed it less than a third of the lease ago: it still holds it
//! then, since no other relay takes it before it expires, and the claim saves a write. A
//! claim of no entries always renews it.
//!
//! # Delivered entries
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
//! [`CLEANUP_CHUNK`] entries per delete, one delete at a time: one unbounded delete of a
//! large backlog is one long operation (on some servers it holds the collection while it
//! runs, stalling the commits that insert into it), while bounded ones let commits in
//! between. When a relay starts or takes the outbox over, the task also sweeps the
//! documents left wholly below the watermark by an earlier relay, in `_id` ranges. Entries
//! marked delivered out of order are recorded in their document's `delivered` list (the
//! document is deleted at once if that covers all of it), so that no relay claims them
//! again. Claims never read below the watermark.

mod cleanup;
pub(crate) mod layout;
pub(crate) mod lease;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Weak;
use std::time::{Duration, Instant};

use eventflow::store::OutboxEntry;
use eventflow::Error;
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::options::ReturnDocument;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::document::{self, int, now_nanos};
use crate::error::{backend, is_duplicate_key, is_transient};
pub(crate) use crate::outbox::cleanup::{Cleaner, CLEANUP_CHUNK};
use crate::outbox::layout::{Stored, DELIVERED, LAST};
use crate::store::{Inner, MongoStore};

/// The checkpoint holding the outbox relay's saved position: a change-stream resume token
/// and the outbox sequence expected after it, as extended JSON. Saved at most once a
/// second while the relay delivers, and when it stops.
pub const OUTBOX_POSITION_CHECKPOINT: &str = "eventflow.outbox.position";

const LEASE_ID: &str = "outbox";

/// How often delivered entries below the watermark are deleted, by default.
pub(crate) const CLEANUP_INTERVAL: Duration = Duration::from_secs(1);

/// How often, at most, a relay writes its delivered watermark and saves its position while
/// it delivers.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Outbox documents the stream may read ahead of the relay.
const READ_AHEAD: usize = 1024;

/// The relay's view of the outbox, shared by the relays of one store handle; only the one
/// holding the lease uses it.
#[derive(Default)]
pub(crate) struct Feed {
    /// The relay this feed is positioned for.
    owner: Option<String>,
    mode: Mode,
    stream: Option<Stream>,
    /// Claimed and not yet marked delivered, in sequence order: claimed again until marked.
    pending: VecDeque<Pending>,
    /// The documents entries were claimed from, as `_id` and last sequence, in order, until
    /// the watermark passes them whole and they go to the clean-up.
    documents: VecDeque<(u64, u64)>,
    /// The sequence the change stream should yield next.
    next: u64,
    /// Every entry below this sequence is delivered.
    watermark: u64,
    /// Until when the owner surely holds the lease: claims before then do not take it again,
    /// and marks before then need not check it.
    held_until: Option<Instant>,
    /// When the owner last wrote its watermark and position.
    flushed_at: Option<Instant>,
    /// A watermark reached since then, not written yet.
    unflushed: Option<u64>,
    /// A position reached since then, not saved yet.
    unsaved: Option<(ResumeToken, u64)>,
    /// The last position reached, saved or not: what a relay giving the lease up saves.
    reached: Option<(ResumeToken, u64)>,
    /// Whether a background write of the watermark and position is under way.
    flushing: bool,
    /// Bumped by every reset, so that a background write that finishes after one leaves
    /// the new state alone.
    epoch: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    /// Resume from the saved position.
    #[default]
    Resume,
    /// Read undelivered entries after this sequence from the collection.
    Scan { after: u64 },
    /// Take entries from the change stream.
    Stream,
}

struct Pending {
    entry: OutboxEntry,
    /// The `_id` of the document holding it.
    document: u64,
    /// How many entries that document holds.
    size: u64,
    /// The position to save once this entry and everything before it are delivered.
    position: Option<(ResumeToken, u64)>,
}

/// A change stream on the outbox, read by a task of its own so that its events wait in a
/// channel: claiming takes what is there without waiting on the server.
struct Stream {
    events: mpsc::Receiver<StreamEvent>,
    task: JoinHandle<()>,
    /// The resume token of the stream's start.
    start: Option<ResumeToken>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum StreamEvent {
    Document { stored: Stored, token: ResumeToken },
    Broken(String),
}

impl Feed {
    fn reset(&mut self, owner: Option<&str>) {
        *self = Feed {
            owner: owner.map(str::to_owned),
            epoch: self.epoch.wrapping_add(1),
            ..Feed::default()
        };
    }

    /// Adds the entries of `stored` from sequence `from` on; the last one carries
    /// `position`.
    fn push(&mut self, stored: Stored, from: u64, position: Option<(ResumeToken, u64)>) {
        let (document, size) = (stored.first, stored.size());
        if self.documents.back().is_none_or(|&(first, _)| first < document) {
            self.documents.push_back((document, stored.last));
        }
        let start = self.pending.len();
        self.pending.extend(
            stored
                .entries
                .into_iter()
                .filter(|entry| entry.sequence >= from)
                .map(|entry| Pending {
                    entry,
                    document,
                    size,
                    position: None,
                }),
        );
        if self.pending.len() > start {
            if let Some(last) = self.pending.back_mut() {
                last.position = position;
            }
        }
    }

    /// Records that the oldest claimed entries up to `watermark` (exclusive) are delivered,
    /// and the position reached with them, to be written by the next flush.
    fn reach(&mut self, watermark: Option<u64>, position: Option<(ResumeToken, u64)>) {
        if let Some(watermark) = watermark {
            self.watermark = self.watermark.max(watermark);
            self.unflushed = Some(self.watermark);
        }
        if let Some(position) = position {
            self.unsaved = Some(position.clone());
            self.reached = Some(position);
        }
    }

    /// Writes the watermark and position reached since the last write, in the background,
    /// if the last write was at least [`FLUSH_INTERVAL`] ago and none is under way: one
    /// write of each per interval, whatever the rate of marks, and none on the delivery
    /// path.
    fn flush_if_due(&mut self, store: &MongoStore) {
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
        let (store, epoch) = (store.clone(), self.epoch);
        tokio::spawn(async move {
            let marked = Marked {
                others: &BTreeMap::new(),
                watermark,
                position: position.clone(),
            };
            let written = delete_delivered(&store, &relay, marked).await;
            let mut feed = store.inner.feed.lock().await;
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

    /// Hands the documents the watermark has passed whole to the clean-up.
    fn clean_up(&mut self, store: &MongoStore) {
        let mut delivered = Vec::new();
        while let Some(&(first, last)) = self.documents.front() {
            if last >= self.watermark {
                break;
            }
            delivered.push((first, last - first + 1));
            self.documents.pop_front();
        }
        let inner = &store.inner;
        inner
            .cleaner
            .delete(&inner.outbox, inner.cleanup_interval, self.watermark, delivered);
    }

    /// Scans next, from after `after`, on a new stream.
    fn rescan(&mut self, after: u64) {
        self.stream = None;
        self.mode = Mode::Scan { after };
    }

    /// Fills `pending` up to `limit` entries with what is available now.
    async fn fill(&mut self, store: &MongoStore, limit: usize) -> Result<(), Error> {
        while self.pending.len() < limit {
            match self.mode {
                Mode::Resume => self.resume(store).await?,
                Mode::Scan { after } => {
                    if !self.scan(store, after, limit).await? {
                        return Ok(());
                    }
                }
                Mode::Stream => {
                    let Some(stream) = self.stream.as_mut() else {
                        self.rescan(self.next.saturating_sub(1));
                        continue;
                    };
                    match stream.events.try_recv() {
                        Ok(StreamEvent::Document { stored, token }) => {
                            if stored.last < self.next {
                                continue;
                            }
                            if stored.first > self.next {
                                tracing::warn!(
                                    expected = self.next,
                                    got = stored.first,
                                    "the outbox change stream skipped entries; scanning the \
                                     outbox for undelivered entries, then streaming again"
                                );
                                self.rescan(self.next - 1);
                                continue;
                            }
                            let (from, next) = (self.next, stored.last + 1);
                            self.next = next;
                            self.push(stored, from, Some((token, next)));
                        }
                        Ok(StreamEvent::Broken(reason)) => {
                            tracing::warn!(
                                error = %reason,
                                "the outbox change stream broke; scanning the outbox for \
                                 undelivered entries, then streaming again: nothing is lost"
                            );
                            self.rescan(self.next.saturating_sub(1));
                        }
                        Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            tracing::warn!(
                                "the outbox change stream ended; scanning the outbox for \
                                 undelivered entries, then streaming again: nothing is lost"
                            );
                            self.rescan(self.next.saturating_sub(1));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Positions the feed from the saved position, or for a scan if there is none or it
    /// cannot be resumed from.
    async fn resume(&mut self, store: &MongoStore) -> Result<(), Error> {
        let saved = eventflow::store::CheckpointStore::checkpoint(store, OUTBOX_POSITION_CHECKPOINT).await?;
        let Some(saved) = saved else {
            tracing::info!("no saved outbox relay position: scanning the outbox, then streaming");
            self.rescan(0);
            return Ok(());
        };
        let (token, next) = match parse_position(&saved) {
            Ok(position) => position,
            Err(reason) => {
                tracing::warn!(
                    checkpoint = OUTBOX_POSITION_CHECKPOINT,
                    error = %reason,
                    "the saved outbox relay position is unreadable; scanning the outbox for \
                     undelivered entries, then streaming again: nothing is lost"
                );
                self.rescan(0);
                return Ok(());
            }
        };
        match open_stream(store, Some(token)).await {
            Ok(stream) => {
                tracing::debug!(
                    next,
                    "outbox relay resumed the change stream from its saved token"
                );
                self.stream = Some(stream);
                self.next = next.max(self.watermark);
                self.mode = Mode::Stream;
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "the outbox relay cannot resume its change stream from the saved resume \
                     token (it is no longer in the oplog, e.g. ChangeStreamHistoryLost, or it \
                     is invalid); scanning the outbox for undelivered entries, then streaming \
                     again: nothing is lost"
                );
                self.rescan(0);
            }
        }
        Ok(())
    }

    /// One scan step; returns false when `pending` is full and the scan must go on later.
    async fn scan(&mut self, store: &MongoStore, after: u64, limit: usize) -> Result<bool, Error> {
        let inner = &store.inner;
        if self.stream.is_none() {
            let stream = open_stream(store, None)
                .await
                .map_err(|e| backend("opening a change stream on the outbox", e))?;
            self.stream = Some(stream);
        }
        // Read before the scan: every entry numbered up to here committed before it.
        let counted = inner
            .counters
            .find_one(doc! { "_id": "sequences" })
            .await
            .map_err(|e| backend("reading the outbox counter", e))?
            .and_then(|doc| document::get_u64(&doc, "outbox").ok())
            .unwrap_or(0);
        let mut after = after.max(self.watermark.saturating_sub(1));
        loop {
            let want = limit.saturating_sub(self.pending.len()).max(1);
            let start = first_document_after(store, after)
                .await
                .map_err(|e| backend("scanning the outbox", e))?;
            // Every document holds at least one entry: `want` documents are enough.
            let mut cursor = inner
                .outbox
                .find(doc! { "_id": { "$gte": int(start) } })
                .sort(doc! { "_id": 1 })
                .limit(i64::try_from(want).unwrap_or(i64::MAX))
                .batch_size(u32::try_from(want.min(64)).unwrap_or(64))
                .await
                .map_err(|e| backend("scanning the outbox", e))?;
            let mut found = 0;
            while let Some(doc) = cursor
                .try_next()
                .await
                .map_err(|e| backend("scanning the outbox", e))?
            {
                found += 1;
                let stored = layout::read(&doc)
                    .map_err(|reason| crate::error::unreadable("an outbox document", reason))?;
                let last = stored.last;
                self.push(stored, after + 1, None);
                after = after.max(last);
                if self.pending.len() >= limit {
                    self.mode = Mode::Scan { after };
                    return Ok(false);
                }
            }
            if found < want {
                break;
            }
        }
        // Caught up: the stream has everything from here on.
        self.next = after.max(counted) + 1;
        self.mode = Mode::Stream;
        let start = self.stream.as_ref().and_then(|s| s.start.clone());
        if let Some(start) = start {
            let position = (start, self.next);
            match self.pending.back_mut() {
                Some(last) => last.position = Some(position),
                None => save_position(store, position)
                    .await
                    .map_err(|e| backend("saving the outbox relay position", e))?,
            }
        }
        Ok(true)
    }
}

/// The `_id` of the first document that may hold a sequence after `after`: the one holding
/// both `after` and `after + 1`, if there is one.
async fn first_document_after(store: &MongoStore, after: u64) -> Result<u64, mongodb::error::Error> {
    if after == 0 {
        return Ok(0);
    }
    let holding = store
        .inner
        .outbox
        .find_one(doc! { "_id": { "$lte": int(after) } })
        .sort(doc! { "_id": -1 })
        .projection(doc! { "_id": 1, LAST: 1 })
        .await?;
    let straddles = holding.and_then(|doc| {
        let first = document::get_u64(&doc, "_id").ok()?;
        let last = document::get_u64(&doc, LAST).ok()?;
        (last > after).then_some(first)
    });
    Ok(straddles.unwrap_or(after + 1))
}

async fn open_stream(
    store: &MongoStore,
    resume: Option<ResumeToken>,
) -> Result<Stream, mongodb::error::Error> {
    let stream = store
        .inner
        .outbox
        .watch()
        .pipeline([doc! { "$match": { "operationType": "insert" } }])
        .resume_after(resume)
        .await?;
    let start = stream.resume_token();
    let (sender, events) = mpsc::channel(READ_AHEAD);
    let task = tokio::spawn(follow(stream, sender, std::sync::Arc::downgrade(&store.inner)));
    Ok(Stream { events, task, start })
}

/// Reads the change stream into the feed's channel, and wakes the relay on each entry:
/// commits by other processes wake it too.
async fn follow(
    mut stream: ChangeStream<ChangeStreamEvent<Document>>,
    sender: mpsc::Sender<StreamEvent>,
    store: Weak<Inner>,
) {
    let wake = |store: &Weak<Inner>| match store.upgrade() {
        Some(inner) => {
            inner.commits.send_modify(|n| *n = n.wrapping_add(1));
            true
        }
        None => false,
    };
    loop {
        let event = match stream.next().await {
            Some(Ok(event)) => event,
            Some(Err(error)) => {
                let _ = sender.send(StreamEvent::Broken(error.to_string())).await;
                wake(&store);
                return;
            }
            None => {
                let _ = sender
                    .send(StreamEvent::Broken("the server closed the change stream".into()))
                    .await;
                wake(&store);
                return;
            }
        };
        let token = event.id;
        let read = match event.full_document {
            Some(doc) => layout::read(&doc)
                .map(|stored| StreamEvent::Document { stored, token })
                .map_err(|reason| format!("an outbox document cannot be read: {reason}")),
            None => Err("an insert event came without its document".to_owned()),
        };
        let message = read.unwrap_or_else(StreamEvent::Broken);
        let broken = matches!(message, StreamEvent::Broken(_));
        if sender.send(message).await.is_err() || !wake(&store) || broken {
            return;
        }
    }
}

/// Takes or renews the outbox lease for `relay`. `None` while another relay holds it;
/// otherwise whether `relay` held it without a break since its last claim, and the
/// delivered watermark.
async fn acquire(store: &MongoStore, relay: &str, lease: Duration) -> Result<Option<(bool, u64)>, Error> {
    let now = now_nanos();
    let lease = i64::try_from(lease.as_nanos()).unwrap_or(i64::MAX);
    let previous = store
        .inner
        .leases
        .find_one_and_update(
            doc! {
                "_id": LEASE_ID,
                "$or": [ { "holder": relay }, { "expires_at": { "$lte": now } } ],
            },
            // Wall-clock time, because the relays sharing the lease may be in other processes.
            doc! { "$set": { "holder": relay, "expires_at": now.saturating_add(lease) } },
        )
        .upsert(true)
        .return_document(ReturnDocument::Before)
        .await;
    match previous {
        Ok(None) => Ok(Some((false, 0))),
        Ok(Some(previous)) => Ok(Some((
            previous.get_str("holder").is_ok_and(|holder| holder == relay)
                && document::get_int(&previous, "expires_at").is_ok_and(|expires| expires > now),
            document::get_u64(&previous, "delivered_below").unwrap_or(0),
        ))),
        // Another relay holds it: the filter did not match, and the upsert hit its `_id`.
        // Unless that relay's process is provably gone, it keeps the lease.
        Err(error) if is_duplicate_key(&error) => {
            Ok(
                lease::take_from_gone(store, relay, Duration::from_nanos(lease as u64))
                    .await?
                    .map(|watermark| (false, watermark)),
            )
        }
        Err(error) => Err(backend("taking the outbox lease", error)),
    }
}

/// Moves the expiry of `relay`'s lease to `lease` from now, if it still holds it; whether
/// it does.
async fn renew(store: &MongoStore, relay: &str, lease: Duration) -> Result<bool, Error> {
    let lease = i64::try_from(lease.as_nanos()).unwrap_or(i64::MAX);
    let renewed = store
        .inner
        .leases
        .update_one(
            doc! { "_id": LEASE_ID, "holder": relay },
            doc! { "$set": { "expires_at": now_nanos().saturating_add(lease) } },
        )
        .await
        .map_err(|e| backend("renewing the outbox lease", e))?;
    Ok(renewed.matched_count > 0)
}

pub(crate) async fn claim(
    store: &MongoStore,
    relay: &str,
    lease: Duration,
    after: u64,
    limit: usize,
) -> Result<Vec<OutboxEntry>, Error> {
    let acquired = Instant::now();
    let mut feed = store.inner.feed.lock().await;
    // Within a third of the lease from taking or renewing it, `relay` still holds it: no
    // other relay takes it before it expires. A claim of 0 entries always renews it.
    let held = feed.owner.as_deref() == Some(relay)
        && feed.held_until.is_some_and(|until| acquired < until)
        && limit > 0;
    if !held {
        let Some((continuous, watermark)) = acquire(store, relay, lease).await? else {
            return Ok(Vec::new());
        };
        if !continuous || feed.owner.as_deref() != Some(relay) {
            // Another relay may have delivered entries meanwhile: start from the saved position.
            feed.reset(Some(relay));
            // Documents delivered before may be left: by another relay, or an earlier layout.
            store.inner.cleaner.sweep();
        }
        feed.held_until = Some(acquired + lease / 3);
        feed.watermark = feed.watermark.max(watermark);
        feed.clean_up(store);
    }
    // Reached in marks that came too soon after the last write; nothing moved since.
    feed.flush_if_due(store);
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Entries up to `after` were sent and are not marked delivered yet: skip them.
    let sent = feed
        .pending
        .iter()
        .take_while(|p| p.entry.sequence <= after)
        .count();
    feed.fill(store, sent + limit).await?;
    if acquired.elapsed() > lease / 4 {
        // Opening the stream or scanning took a while: the lease runs from now.
        let renewed = Instant::now();
        if !renew(store, relay, lease).await? {
            feed.reset(None);
            return Ok(Vec::new());
        }
        feed.held_until = Some(renewed + lease / 3);
    }
    let unsent = feed.pending.iter().skip(sent);
    Ok(unsent.take(limit).map(|p| p.entry.clone()).collect())
}

pub(crate) async fn mark_delivered(store: &MongoStore, relay: &str, sequences: &[u64]) -> Result<(), Error> {
    let mut feed = store.inner.feed.lock().await;
    let delivered: HashSet<u64> = sequences.iter().copied().collect();
    let owned = feed.owner.as_deref() == Some(relay);
    // The oldest claimed entries raise the watermark; others are recorded in their document.
    let prefix: Vec<&Pending> = match owned {
        true => feed
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
    for p in feed.pending.iter().skip(prefix.len()) {
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
    let surely_held = feed.held_until.is_some_and(|until| Instant::now() < until);
    if owned && others.is_empty() && surely_held {
        feed.reach(watermark, reached);
        feed.pending.retain(|p| !delivered.contains(&p.entry.sequence));
        feed.clean_up(store);
        feed.flush_if_due(store);
        return Ok(());
    }
    // Otherwise written now, fenced by the lease, with what earlier marks reached.
    let (watermark, position) = match owned {
        true => {
            feed.reach(watermark, reached);
            (feed.unflushed, feed.unsaved.clone())
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
        match delete_delivered(store, relay, marked).await {
            Ok(true) => break,
            Ok(false) => {
                if feed.owner.as_deref() == Some(relay) {
                    feed.reset(None);
                }
                return Err(Error::backend(format!(
                    "relay `{relay}` lost the outbox lease before marking entries delivered; \
                     they will be delivered again, so keep batches short enough to deliver \
                     within the lease or lengthen the lease"
                )));
            }
            Err(error) if is_transient(&error) && attempt < store.inner.transaction_retries => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=10))).await;
            }
            Err(error) => return Err(backend("marking outbox entries delivered", error)),
        }
    }
    if owned {
        feed.flushed_at = Some(Instant::now());
        feed.unflushed = None;
        feed.unsaved = None;
    }
    feed.pending.retain(|p| !delivered.contains(&p.entry.sequence));
    feed.clean_up(store);
    Ok(())
}

/// What a relay marks delivered: the new watermark, the entries delivered out of order
/// (by document: its size and their sequences), the position to save.
struct Marked<'a> {
    others: &'a BTreeMap<u64, (u64, Vec<u64>)>,
    watermark: Option<u64>,
    position: Option<(ResumeToken, u64)>,
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
    store: &MongoStore,
    relay: &str,
    marked: Marked<'_>,
) -> Result<bool, mongodb::error::Error> {
    let inner = &store.inner;
    let mut update = doc! { "$inc": { "deliveries": 1_i64 } };
    if let Some(watermark) = marked.watermark {
        update.insert("$max", doc! { "delivered_below": int(watermark) });
    }
    let fenced = inner
        .leases
        .update_one(doc! { "_id": LEASE_ID, "holder": relay }, update)
        .await?;
    if fenced.matched_count == 0 {
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
        save_position(store, position).await?;
    }
    Ok(true)
}

/// Saves the relay's position unless a later one is saved already (by a relay that took
/// the lease over).
async fn save_position(
    store: &MongoStore,
    position: (ResumeToken, u64),
) -> Result<(), mongodb::error::Error> {
    let next = int(position.1);
    let saved = store
        .inner
        .checkpoints
        .update_one(
            doc! {
                "_id": OUTBOX_POSITION_CHECKPOINT,
                "$or": [ { "next": { "$lt": next.clone() } }, { "next": { "$exists": false } } ],
            },
            doc! { "$set": { "value": format_position(&position), "next": next } },
        )
        .upsert(true)
        .await;
    match saved {
        Err(error) if is_duplicate_key(&error) => Ok(()),
        other => other.map(drop),
    }
}

pub(crate) async fn release(store: &MongoStore, relay: &str) -> Result<(), Error> {
    let reached = {
        let mut feed = store.inner.feed.lock().await;
        match feed.owner.as_deref() == Some(relay) {
            true => {
                let reached = (feed.watermark, feed.reached.take());
                feed.reset(None);
                Some(reached)
            }
            false => None,
        }
    };
    let mut release = doc! { "$set": { "expires_at": 0_i64 } };
    if let Some((watermark, position)) = reached {
        // Everything before it was marked delivered: it holds whoever has the lease now.
        if let Some(position) = position {
            save_position(store, position)
                .await
                .map_err(|e| backend("saving the outbox relay position", e))?;
        }
        // With the release: whoever takes the lease next starts from it.
        if watermark > 0 {
            release.insert("$max", doc! { "delivered_below": int(watermark) });
        }
    }
    // Expired rather than deleted: the document keeps the delivered watermark.
    store
        .inner
        .leases
        .update_one(doc! { "_id": LEASE_ID, "holder": relay }, release)
        .await
        .map_err(|e| backend("releasing the outbox lease", e))?;
    Ok(())
}

/// A resume token and a sequence as extended JSON, for a checkpoint.
pub(crate) fn format_position((token, next): &(ResumeToken, u64)) -> String {
    let token = mongodb::bson::to_bson(token).unwrap_or(Bson::Null);
    Bson::Document(doc! { "token": token, "next": int(*next) })
        .into_relaxed_extjson()
        .to_string()
}

/// Reads what [`format_position`] wrote.
pub(crate) fn parse_position(saved: &str) -> Result<(ResumeToken, u64), String> {
    let json: serde_json::Value = serde_json::from_str(saved).map_err(|e| e.to_string())?;
    let Bson::Document(doc) = Bson::try_from(json).map_err(|e| e.to_string())? else {
        return Err("not a document".into());
    };
    let token = doc.get("token").cloned().ok_or("`token` is missing")?;
    let token: ResumeToken = mongodb::bson::from_bson(token).map_err(|e| e.to_string())?;
    Ok((token, document::get_u64(&doc, "next")?))
}

/// How many outbox entries wait for the relay: those at or above the watermark, not
/// delivered out of order.
pub(crate) async fn backlog(store: &MongoStore) -> Result<u64, Error> {
    let lease = store
        .inner
        .leases
        .find_one(doc! { "_id": LEASE_ID })
        .await
        .map_err(|e| backend("reading the outbox lease", e))?;
    let written = lease
        .and_then(|lease| document::get_u64(&lease, "delivered_below").ok())
        .unwrap_or(0);
    // This handle's relay may have delivered more than it has written yet.
    let feed = store.inner.feed.lock().await;
    let watermark = match feed.owner {
        Some(_) => written.max(feed.watermark),
        None => written,
    };
    drop(feed);
    let start = first_document_after(store, watermark.saturating_sub(1))
        .await
        .map_err(|e| backend("counting the outbox", e))?;
    let documents: Vec<Document> = store
        .inner
        .outbox
        .find(doc! { "_id": { "$gte": int(start) } })
        .projection(doc! { "_id": 1, LAST: 1, DELIVERED: 1 })
        .await
        .map_err(|e| backend("counting the outbox", e))?
        .try_collect()
        .await
        .map_err(|e| backend("counting the outbox", e))?;
    let mut count = 0;
    for doc in &documents {
        let first = document::get_u64(doc, "_id")
            .map_err(|reason| crate::error::unreadable("an outbox document", reason))?;
        let last = document::get_u64(doc, LAST).unwrap_or(first);
        let from = first.max(watermark);
        if last < from {
            continue;
        }
        let delivered = match doc.get(DELIVERED) {
            Some(Bson::Array(sequences)) => sequences
                .iter()
                .filter_map(|s| s.as_i64().or_else(|| s.as_i32().map(i64::from)))
                .filter(|&s| u64::try_from(s).is_ok_and(|s| (from..=last).contains(&s)))
                .count() as u64,
            _ => 0,
        };
        count += (last - from + 1).saturating_sub(delivered);
    }
    Ok(count)
}
