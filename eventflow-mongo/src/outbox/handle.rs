//! [`Outbox`]: what the relay feeds of one store handle (and its clones) share with the
//! store: the clean-up of delivered entries, and what the store inspects (the lease, the
//! backlog).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use eventflow::store::OutboxLease;
use eventflow::Error;

use super::cleanup::Cleaner;
use super::{layout, lease};
use crate::client::Inner;

/// What the relay feeds of one store handle (and its clones) share with the store: the
/// clean-up of delivered entries, and the watermark the open feed reached, for the
/// backlog.
pub(crate) struct Outbox {
    pub(super) inner: Arc<Inner>,
    /// Deletes delivered outbox entries in the background.
    pub(super) cleaner: Cleaner,
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

    /// Who holds the outbox lease now, and until when.
    pub(crate) async fn lease(&self) -> Result<Option<OutboxLease>, Error> {
        lease::read(&self.inner).await
    }

    /// Records the watermark the open feed reached (0: it closed or lost the lease).
    pub(super) fn publish_watermark(&self, watermark: u64) {
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
