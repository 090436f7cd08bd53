//! [`OutboxProgress`]: how far a relay has brought a store's committed outbox entries to its
//! transport. The relay writes it; [`EventBus::settled`](crate::EventBus::settled) and
//! [`InProcess::wait_idle`](crate::InProcess::wait_idle) read it, so that "what I committed"
//! counts before the relay has even claimed it.

use tokio::sync::watch;

/// How far a relay has brought the entries committed to its store's outbox to the
/// transport.
///
/// Commits are counted by the store's [`commit_signal`](crate::store::OutboxStore::commit_signal); the
/// relay reports the count up to which every committed entry has been handed to the
/// transport and, for a transport that is not durable, handled by every group. A relay
/// that has stopped reports nothing more, and one that stands by while another relay holds
/// the outbox lease has nothing to deliver: waits on either end.
#[derive(Clone, Debug)]
pub struct OutboxProgress {
    committed: watch::Receiver<u64>,
    relayed: watch::Receiver<Relayed>,
}

/// What a relay reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// The commit count through which every entry has been relayed; `None` until the relay
    /// has first found the outbox empty behind what it delivered (entries committed before
    /// the bus started count too).
    pub(crate) through: Option<u64>,
    /// Whether another relay holds the outbox lease.
    pub(crate) standing_by: bool,
}

impl Relayed {
    fn reaches(&self, target: u64) -> bool {
        self.standing_by || self.through.is_some_and(|through| through >= target)
    }
}

impl OutboxProgress {
    pub(crate) fn new(committed: watch::Receiver<u64>, relayed: watch::Receiver<Relayed>) -> Self {
        OutboxProgress { committed, relayed }
    }

    /// The commit count now: what a wait started now waits for.
    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// The commit count through which every entry has been relayed.
    pub fn relayed(&self) -> u64 {
        self.relayed.borrow().through.unwrap_or(0)
    }

    /// Whether the relay stands by because another relay holds the outbox lease.
    pub fn is_standing_by(&self) -> bool {
        self.relayed.borrow().standing_by
    }

    /// Whether the relay has stopped (its bus shut down).
    pub fn is_stopped(&self) -> bool {
        self.relayed.has_changed().is_err()
    }

    /// Whether everything committed so far has been relayed, or the relay has stopped or
    /// stands by.
    pub fn is_relayed(&self) -> bool {
        self.is_stopped() || self.relayed.borrow().reaches(self.committed())
    }

    /// Waits until the entries of the first `target` commits have been relayed, or the
    /// relay stands by. Returns false if the relay stopped first.
    pub async fn relayed_through(&self, target: u64) -> bool {
        let mut relayed = self.relayed.clone();
        let reached = relayed.wait_for(|relayed| relayed.reaches(target)).await.is_ok();
        reached
    }
}
