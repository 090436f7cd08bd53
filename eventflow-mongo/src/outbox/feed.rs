//! [`MongoFeed`]: the outbox as a relay's feed, the one object that owns the change
//! stream's reader, the lease, the delivered watermark and the saved position.
//!
//! Opening it takes nothing yet; the first [`next`](OutboxFeed::next) takes the lease and
//! positions the reader (resume token, or a scan). From then on `next` hands out entries in
//! commit order as the change stream yields them: it waits on the stream itself, so an
//! entry committed anywhere reaches the relay as soon as the server streams it, and wakes
//! at most every poll interval otherwise (which costs the server nothing while the lease is
//! surely held). It renews the lease by the rules in `lease`, reports the commit count it
//! caught up with, and stands by, reporting the holder once, while another relay holds the
//! lease. Marking entries delivered is in `delivered`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use eventflow::store::{Fed, FeedSettings, OutboxEntry, OutboxFeed};
use eventflow::Error;
use tokio::sync::watch;
use tokio::time::sleep_until;

use super::handle::Outbox;
use super::lease::{self, lost_lease};
use super::marks::Marks;
use super::reader::Reader;

/// A relay's open outbox on MongoDB: see the [module](self).
pub(crate) struct MongoFeed {
    pub(super) outbox: Arc<Outbox>,
    pub(super) relay: String,
    pub(super) settings: FeedSettings,
    pub(super) reader: Reader,
    /// How many of the reader's pending entries (the oldest) were handed out since the last
    /// rewind: `next` hands out from there on.
    pub(super) handed: usize,
    /// Until when the relay surely holds the lease (see `lease::surely_held_until`); `None`
    /// while it does not hold it.
    pub(super) held_until: Option<Instant>,
    /// The watermark and position reached and not yet written.
    pub(super) marks: Marks,
    commits: watch::Receiver<u64>,
    /// The last commit count reported as caught up with.
    reported: Option<u64>,
    /// The other holder of the lease last reported by [`Fed::StandingBy`].
    standing_by: Option<String>,
}

impl MongoFeed {
    /// The feed of `outbox` for `relay`, holding nothing yet.
    pub(crate) fn new(outbox: Arc<Outbox>, relay: &str, settings: FeedSettings) -> Self {
        MongoFeed {
            commits: outbox.inner.commits.subscribe(),
            outbox,
            relay: relay.to_owned(),
            settings,
            reader: Reader::default(),
            handed: 0,
            held_until: None,
            marks: Marks::default(),
            reported: None,
            standing_by: None,
        }
    }

    /// Whether the relay holds the lease, as far as this feed knows.
    pub(super) fn holds(&self) -> bool {
        self.held_until.is_some()
    }

    /// Whether the relay surely holds the lease now, without asking the server.
    pub(super) fn surely_holds(&self) -> bool {
        self.held_until.is_some_and(|until| Instant::now() < until)
    }

    /// Forgets everything read and reached: the lease was lost, or taken after a break in
    /// which another relay may have delivered.
    pub(super) fn lose(&mut self) {
        self.reader = Reader::default();
        self.handed = 0;
        self.held_until = None;
        self.marks.forget();
        self.reported = None;
        self.outbox.publish_watermark(0);
    }

    /// Takes the lease if this relay does not surely hold it (renewing it if it holds it):
    /// whether it holds it now. `started` is when the step that needs it started.
    async fn take_lease(&mut self, started: Instant) -> Result<bool, Error> {
        if self.surely_holds() {
            return Ok(true);
        }
        if self.holds() {
            // The holder field proves nobody took the lease since this relay last renewed it.
            if self.renew(started).await? {
                return Ok(true);
            }
            tracing::warn!(relay = %self.relay, "the outbox relay lost its lease; entries it has not marked delivered will be delivered again");
        }
        let Some(watermark) = lease::acquire(&self.outbox.inner, &self.relay, self.settings.lease).await?
        else {
            return Ok(false);
        };
        // Taken after a break, in which another relay may have delivered entries: start from
        // the saved position.
        self.lose();
        // Documents delivered before may be left: by another relay, or an earlier layout.
        self.outbox.cleaner.sweep();
        self.held_until = Some(lease::surely_held_until(started, self.settings.lease));
        self.standing_by = None;
        self.reader.raise(watermark);
        self.outbox.publish_watermark(self.reader.watermark);
        self.reader.clean_up(&self.outbox.inner, &self.outbox.cleaner);
        Ok(true)
    }

    /// Renews the lease this relay holds, counting its term from `from`: whether it still
    /// holds it (if not, the feed forgets what it read and reached).
    async fn renew(&mut self, from: Instant) -> Result<bool, Error> {
        if lease::renew(&self.outbox.inner, &self.relay, self.settings.lease).await? {
            self.held_until = Some(lease::surely_held_until(from, self.settings.lease));
            return Ok(true);
        }
        self.lose();
        Ok(false)
    }

    /// What another relay's lease means for this one: [`Fed::StandingBy`] the first time a
    /// holder is seen, nothing after.
    async fn stand_by(&mut self) -> Result<Option<Fed>, Error> {
        match lease::read(&self.outbox.inner).await? {
            Some(lease) if lease.holder != self.relay && self.standing_by.as_ref() != Some(&lease.holder) => {
                tracing::info!(relay = %self.relay, holder = %lease.holder, until = %lease.expires_at_utc(),
                    "another relay holds the outbox lease and delivers the outbox; this relay takes \
                     over when that lease runs out, or at once if the holder ran on this host and its \
                     process is gone");
                self.standing_by = Some(lease.holder.clone());
                Ok(Some(Fed::StandingBy(lease)))
            }
            _ => Ok(None),
        }
    }

    /// One look at the outbox, waiting on nothing but the server: what to hand the relay,
    /// if anything.
    async fn step(&mut self) -> Result<Option<Fed>, Error> {
        self.reap_write().await;
        let started = Instant::now();
        if !self.take_lease(started).await? {
            return self.stand_by().await;
        }
        self.write_if_due();
        // Read before the reader: every entry the counted commits enqueued is numbered up to
        // `committed`, and in the stream or the collection when the reader looks.
        let count = *self.commits.borrow_and_update();
        let committed = self.outbox.inner.committed_outbox();
        let inner = self.outbox.inner.clone();
        self.reader
            .fill(&inner, self.handed + self.settings.batch)
            .await?;
        // Opening the stream or scanning took a while: the lease runs from now.
        if lease::renewal_due(started, self.settings.lease) && !self.renew(Instant::now()).await? {
            return Ok(None);
        }
        let entries: Vec<OutboxEntry> = (self.reader.pending.iter().skip(self.handed))
            .take(self.settings.batch)
            .map(|pending| pending.entry.clone())
            .collect();
        self.handed += entries.len();
        let all_handed = self.handed == self.reader.pending.len();
        let read_all = self
            .reader
            .read_through()
            .is_some_and(|through| through >= committed);
        let caught_up = (all_handed && read_all && self.reported < Some(count)).then_some(count);
        self.reported = self.reported.max(caught_up);
        match (entries.is_empty(), caught_up) {
            (true, None) => Ok(None),
            _ => Ok(Some(Fed::Entries { entries, caught_up })),
        }
    }

    /// Waits for something to look at: the change stream's next event (while the relay
    /// holds the lease), a commit through this store, the lease's renewal, or the poll
    /// interval. Cancel safe.
    async fn wait(&mut self) {
        let mut until = tokio::time::Instant::now() + self.settings.poll_interval;
        if let Some(held_until) = self.held_until {
            until = until.min(held_until.into());
        }
        tokio::select! {
            _ = self.reader.stream_event(), if self.held_until.is_some() => {}
            _ = self.commits.changed() => {}
            _ = sleep_until(until) => {}
        }
    }
}

#[async_trait]
impl OutboxFeed for MongoFeed {
    async fn next(&mut self) -> Result<Fed, Error> {
        loop {
            if let Some(fed) = self.step().await? {
                return Ok(fed);
            }
            self.wait().await;
        }
    }

    async fn delivered(&mut self, sequences: &[u64]) -> Result<(), Error> {
        self.mark_delivered(sequences).await
    }

    async fn reread(&mut self, sequence: u64) -> Result<Option<OutboxEntry>, Error> {
        let pending = self.reader.pending.iter().take(self.handed);
        Ok(pending
            .map(|pending| &pending.entry)
            .find(|entry| entry.sequence == sequence)
            .cloned())
    }

    fn rewind(&mut self) {
        self.handed = 0;
        // The relay forgot what it was told: tell it again.
        self.reported = None;
    }

    async fn hold(&mut self) -> Error {
        loop {
            self.reap_write().await;
            self.write_if_due();
            let Some(held_until) = self.held_until else {
                return lost_lease(&self.relay);
            };
            sleep_until(held_until.into()).await;
            match self.renew(Instant::now()).await {
                Ok(true) => {}
                Ok(false) => return lost_lease(&self.relay),
                Err(error) => return error,
            }
        }
    }

    async fn close(mut self: Box<Self>) -> Result<(), Error> {
        // A write under way finishes first, so the release carries the latest marks.
        self.finish_write().await;
        let reached = self
            .holds()
            .then(|| (self.reader.watermark, self.marks.reached.take()));
        self.outbox.publish_watermark(0);
        lease::release(&self.outbox.inner, &self.relay, reached).await
    }
}
