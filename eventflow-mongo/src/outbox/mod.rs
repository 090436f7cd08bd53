//! The relay's side of the outbox, in rooms: how entries are stored ([`layout`]), the
//! feed a relay opens ([`feed`]: [`MongoFeed`], which owns everything below), the reader
//! of undelivered entries that follows a change stream ([`reader`], [`stream`]), the lease
//! one relay at a time holds ([`lease`]), the saved position ([`position`]), marking
//! entries delivered ([`delivered`]) and deleting them ([`cleanup`]). [`Outbox`] is what
//! the feeds of one store handle share with it: the clean-up, and what the store inspects.
//!
//! # How entries are stored
//!
//! One document per unit of work, holding its entries in order (see [`layout`]): `_id` is
//! the sequence of its first entry, `last` that of its last, `entries` the envelopes. The
//! feed hands the relay individual entries; the server pays one insert, one change-stream
//! read and one delete per unit of work rather than per entry. Documents of the earlier
//! layout, one per entry, are read as documents of one entry.
//!
//! Why nothing is lost is told in [`reader`] (commit order, the scan, the stream) and
//! [`position`] (what the saved position promises); the lease's timing rules in [`lease`].

mod cleanup;
mod delivered;
mod feed;
pub(crate) mod layout;
mod lease;
mod position;
mod reader;
mod stream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use eventflow::store::{FeedSettings, OutboxLease};
use eventflow::Error;

use self::cleanup::Cleaner;
use crate::client::Inner;

pub(crate) use self::cleanup::{CLEANUP_CHUNK, CLEANUP_INTERVAL};
pub(crate) use self::feed::MongoFeed;
pub use self::position::OUTBOX_POSITION_CHECKPOINT;

/// What the relay feeds of one store handle (and its clones) share with the store: the
/// clean-up of delivered entries, and the watermark the open feed reached, for the
/// backlog.
pub(crate) struct Outbox {
    inner: Arc<Inner>,
    /// Deletes delivered outbox entries in the background.
    cleaner: Cleaner,
    /// The delivered watermark of the feed open on this handle, written or not; 0 when none
    /// is open.
    delivered_below: AtomicU64,
}

impl Outbox {
    /// The outbox of the store on `inner`, with no feed open on it yet.
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Outbox {
            inner,
            cleaner: Cleaner::default(),
            delivered_below: AtomicU64::new(0),
        }
    }

    /// Opens the outbox as a feed for `relay`: see
    /// [`MongoStore::open_outbox`](crate::MongoStore::open_outbox).
    pub(crate) fn open(self: &Arc<Self>, relay: &str, settings: FeedSettings) -> MongoFeed {
        MongoFeed::new(self.clone(), relay, settings)
    }

    /// Who holds the outbox lease now, and until when.
    pub(crate) async fn lease(&self) -> Result<Option<OutboxLease>, Error> {
        lease::read(&self.inner).await
    }

    /// Records the watermark the open feed reached (0: it closed or lost the lease).
    fn publish_watermark(&self, watermark: u64) {
        self.delivered_below.store(watermark, Ordering::SeqCst);
    }

    /// How many outbox entries wait for the relay: those at or above the watermark, not
    /// delivered out of order.
    pub(crate) async fn backlog(&self) -> Result<u64, Error> {
        let written = lease::written_watermark(&self.inner).await?;
        // This handle's feed may have delivered more than it has written yet.
        let watermark = written.max(self.delivered_below.load(Ordering::SeqCst));
        layout::count_undelivered(&self.inner, watermark).await
    }
}
