//! What the relay reports of its progress ([`Relayed`], read by
//! [`EventBus::settled`](crate::EventBus::settled)) and logs of the outbox lease.

use super::Relay;
use crate::outbox_progress::Relayed;
use crate::store::OutboxLease;

impl Relay {
    /// Reports every entry of the first `through` commits relayed, if that is further.
    pub(super) fn relayed_through(&self, through: Option<u64>) {
        self.relayed.send_if_modified(|relayed| {
            let raised = through > relayed.through;
            relayed.through = relayed.through.max(through);
            raised
        });
    }

    /// Another relay holds the outbox lease: this one stands by.
    pub(super) fn standing_by(&self, lease: &OutboxLease) {
        tracing::info!(relay = %self.id, holder = %lease.holder, until = %lease.expires_at_utc(),
            "another relay holds the outbox lease and delivers the outbox; this relay takes over when \
             that lease runs out, or at once if the holder ran on this host and its process is gone");
        self.stand_by(true);
    }

    /// The feed handed out entries or caught up: the outbox is this relay's.
    pub(super) fn delivering(&self) {
        if self.stand_by(false) {
            tracing::info!(relay = %self.id, "this relay now delivers the outbox");
        }
    }

    /// Sets whether the relay stands by; whether that changed.
    fn stand_by(&self, standing_by: bool) -> bool {
        self.relayed.send_if_modified(|relayed: &mut Relayed| {
            let changed = relayed.standing_by != standing_by;
            relayed.standing_by = standing_by;
            changed
        })
    }
}
