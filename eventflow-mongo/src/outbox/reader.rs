//! The reader of undelivered entries behind a relay's feed: it follows a change stream on the outbox
//! collection, resumes from the saved position, and falls back to scanning the collection
//! whenever the stream cannot be trusted. It hands the relay individual entries, from the
//! sequence it expects next on.
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
//! What the saved position promises, and why an old one only delivers again, is told in
//! `position`; how a relay taking the outbox over skips what is delivered, in `delivered`.

use std::collections::VecDeque;
use std::sync::Arc;

use eventflow::store::OutboxEntry;
use eventflow::Error;
use futures_util::TryStreamExt;
use mongodb::bson::doc;
use tokio::sync::mpsc;

use super::cleanup::Cleaner;
use super::layout::{self, Stored};
use super::position::{self, Position, OUTBOX_POSITION_CHECKPOINT};
use super::stream::{self, Stream, StreamEvent};
use crate::client::Inner;
use crate::document::{self, int};
use crate::error::backend;

/// What a relay's feed has read of the outbox and not yet seen delivered, and where it
/// reads next.
#[derive(Default)]
pub(super) struct Reader {
    mode: Mode,
    stream: Option<Stream>,
    /// Read and not yet marked delivered, in sequence order: handed out again until marked.
    pub(super) pending: VecDeque<Pending>,
    /// The documents entries were read from, as `_id` and last sequence, in order, until
    /// the watermark passes them whole and they go to the clean-up.
    documents: VecDeque<(u64, u64)>,
    /// The sequence the change stream should yield next.
    next: u64,
    /// Every entry below this sequence is delivered.
    pub(super) watermark: u64,
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

/// An entry read and not yet marked delivered.
pub(super) struct Pending {
    pub(super) entry: OutboxEntry,
    /// The `_id` of the document holding it.
    pub(super) document: u64,
    /// How many entries that document holds.
    pub(super) size: u64,
    /// The position to save once this entry and everything before it are delivered.
    pub(super) position: Option<Position>,
}

impl Reader {
    /// Adds the entries of `stored` from sequence `from` on; the last one carries
    /// `position`.
    fn push(&mut self, stored: Stored, from: u64, position: Option<Position>) {
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

    /// Raises the watermark: every entry below `watermark` is delivered.
    pub(super) fn raise(&mut self, watermark: u64) {
        self.watermark = self.watermark.max(watermark);
    }

    /// The sequence through which every committed entry has been read (into `pending`, or
    /// delivered before), once the reader follows the stream: what tells the feed it
    /// caught up with the commits it was told of.
    pub(super) fn read_through(&self) -> Option<u64> {
        (self.mode == Mode::Stream && self.stream.is_some()).then(|| self.next.saturating_sub(1))
    }

    /// Hands the documents the watermark has passed whole to the clean-up.
    pub(super) fn clean_up(&mut self, inner: &Inner, cleaner: &Cleaner) {
        let mut delivered = Vec::new();
        while let Some(&(first, last)) = self.documents.front() {
            if last >= self.watermark {
                break;
            }
            delivered.push((first, last - first + 1));
            self.documents.pop_front();
        }
        cleaner.delete(&inner.outbox, inner.cleanup_interval, self.watermark, delivered);
    }

    /// Waits for the change stream's next event, and takes it in; never completes unless
    /// the reader follows a stream. Cancel safe: an event received is taken in before the
    /// future can be dropped.
    pub(super) async fn stream_event(&mut self) {
        let event = match (self.mode, self.stream.as_mut()) {
            (Mode::Stream, Some(stream)) => stream.events.recv().await,
            _ => std::future::pending().await,
        };
        self.take(event.ok_or(mpsc::error::TryRecvError::Disconnected));
    }

    /// Takes in what the change stream yielded: the next document, or a reason to scan.
    fn take(&mut self, event: Result<StreamEvent, mpsc::error::TryRecvError>) {
        match event {
            Ok(StreamEvent::Document { stored, token }) => {
                if stored.last < self.next {
                    return;
                }
                if stored.first > self.next {
                    tracing::warn!(
                        expected = self.next,
                        got = stored.first,
                        "the outbox change stream skipped entries; scanning the outbox for \
                         undelivered entries, then streaming again"
                    );
                    self.rescan(self.next - 1);
                    return;
                }
                let (from, next) = (self.next, stored.last + 1);
                self.next = next;
                self.push(stored, from, Some((token, next)));
            }
            Ok(StreamEvent::Broken(reason)) => {
                tracing::warn!(
                    error = %reason,
                    "the outbox change stream broke; scanning the outbox for undelivered \
                     entries, then streaming again: nothing is lost"
                );
                self.rescan(self.next.saturating_sub(1));
            }
            Err(mpsc::error::TryRecvError::Empty) => {}
            Err(mpsc::error::TryRecvError::Disconnected) => {
                tracing::warn!(
                    "the outbox change stream ended; scanning the outbox for undelivered \
                     entries, then streaming again: nothing is lost"
                );
                self.rescan(self.next.saturating_sub(1));
            }
        }
    }

    /// Scans next, from after `after`, on a new stream.
    fn rescan(&mut self, after: u64) {
        self.stream = None;
        self.mode = Mode::Scan { after };
    }

    /// Fills `pending` up to `limit` entries with what is available now.
    pub(super) async fn fill(&mut self, inner: &Arc<Inner>, limit: usize) -> Result<(), Error> {
        while self.pending.len() < limit {
            match self.mode {
                Mode::Resume => self.resume(inner).await?,
                Mode::Scan { after } => {
                    if !self.scan(inner, after, limit).await? {
                        return Ok(());
                    }
                }
                Mode::Stream => {
                    let Some(stream) = self.stream.as_mut() else {
                        self.rescan(self.next.saturating_sub(1));
                        continue;
                    };
                    match stream.events.try_recv() {
                        Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                        event => self.take(event),
                    }
                }
            }
        }
        Ok(())
    }

    /// Positions the reader at the saved position, or for a scan if there is none or it
    /// cannot be resumed from.
    async fn resume(&mut self, inner: &Arc<Inner>) -> Result<(), Error> {
        let saved = crate::checkpoints::read(inner, OUTBOX_POSITION_CHECKPOINT).await?;
        let Some(saved) = saved else {
            tracing::info!("no saved outbox relay position: scanning the outbox, then streaming");
            self.rescan(0);
            return Ok(());
        };
        let (token, next) = match position::parse(&saved) {
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
        match stream::open(inner, Some(token)).await {
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
    async fn scan(&mut self, inner: &Arc<Inner>, after: u64, limit: usize) -> Result<bool, Error> {
        if self.stream.is_none() {
            let stream = stream::open(inner, None)
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
            let start = layout::first_document_after(inner, after)
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
                // Recorded at once: a feed whose `next` is dropped here reads on from it.
                self.mode = Mode::Scan { after };
                if self.pending.len() >= limit {
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
                None => position::save(inner, position)
                    .await
                    .map_err(|e| backend("saving the outbox relay position", e))?,
            }
        }
        Ok(true)
    }
}
