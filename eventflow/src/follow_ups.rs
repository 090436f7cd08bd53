//! Follow-ups held back until the attempt that published them succeeds: what a
//! [`Context`](crate::Context) collects, what `EventBus::publish` joins from inside such a
//! handler, and what the member loop then sends with the handler's unit of work or the
//! consumer's broker transaction.

use std::sync::{Arc, Mutex};

use crate::store::Transaction;
use crate::{Envelope, Error};

/// The follow-ups an attempt published, held back until it succeeds.
pub(crate) type FollowUps = Arc<Mutex<Vec<Envelope>>>;

tokio::task_local! {
    /// The follow-ups of the handler being polled, when they wait for it to succeed, so
    /// that `EventBus::publish` from inside it holds its event back as `Context::publish`
    /// does.
    pub(crate) static HELD_FOLLOW_UPS: FollowUps;
}

/// Adds `envelope` to `follow_ups`.
pub(crate) fn hold(follow_ups: &FollowUps, envelope: Envelope) {
    follow_ups
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(envelope);
}

/// The running handler's follow-ups, if they wait for it to succeed: what an event
/// published now joins instead of going out. Asked before the envelope moves, so that the
/// envelope (a few hundred bytes) is not moved in and out for the usual answer, none.
pub(crate) fn held_follow_ups() -> Option<FollowUps> {
    HELD_FOLLOW_UPS.try_with(Clone::clone).ok()
}

/// What a handler published and the bus held back, taken out.
pub(crate) fn take(follow_ups: &FollowUps) -> Vec<Envelope> {
    std::mem::take(&mut *follow_ups.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// Puts what a transactional handler published into its unit of work's outbox.
pub(crate) async fn enqueue(tx: &mut dyn Transaction, follow_ups: Option<&FollowUps>) -> Result<(), Error> {
    let Some(follow_ups) = follow_ups else {
        return Ok(());
    };
    let envelopes = take(follow_ups);
    if envelopes.is_empty() {
        return Ok(());
    }
    tx.enqueue(&envelopes).await
}
