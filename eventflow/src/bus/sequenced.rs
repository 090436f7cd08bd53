//! Sequenced dead letters (opt-in per group, as Axon's sequenced dead-letter queue): once
//! an event of key K is dead-lettered in a group, the group's later events of K are parked
//! behind it instead of overtaking it, and released in order when it is replayed or
//! discarded. Parked events are dead letters marked [`DeadLetter::PARKED_BEHIND`], so the
//! parked state lives in the dead-letter store and survives a restart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;
use uuid::Uuid;

use super::shared::{Group, Shared};
use crate::dead_letter::DeadLetter;
use crate::Envelope;

/// The keys one group member parks events of, for one polled batch: read from the
/// dead-letter store when the batch starts, and added to as the batch dead-letters events.
#[derive(Default)]
pub(super) struct Parking {
    /// Key → the id of the oldest dead letter of that key.
    heads: Mutex<HashMap<String, Uuid>>,
}

impl Parking {
    /// The parking of `group` for a new batch; `Some(None)` if the group's dead letters are
    /// not sequenced, `None` if shutdown came while the store was failing.
    pub(super) async fn load(
        shared: &Shared,
        group: &Group,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Option<Parking>> {
        if !group.sequenced {
            return Some(None);
        }
        let heads = super::member::with_retries(
            shared,
            shutdown,
            "reading the keys of sequenced dead letters",
            || shared.dead_letters.blocked_keys(&group.name),
        )
        .await?;
        Some(Some(Parking {
            heads: Mutex::new(heads),
        }))
    }

    /// The dead letter an event of `envelope`'s key must be parked behind, if any.
    pub(super) fn head(&self, envelope: &Envelope) -> Option<Uuid> {
        let key = envelope.key.as_ref()?;
        self.lock().get(key).copied()
    }

    /// Records that `letter` was dead-lettered: later events of its key park behind it.
    pub(super) fn block(&self, letter: &DeadLetter) {
        if let Some(key) = &letter.envelope.key {
            self.lock().entry(key.clone()).or_insert(letter.id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Uuid>> {
        self.heads.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The dead letter of an event of `group` parked behind dead letter `head`.
pub(super) fn parked(group: &Group, envelope: &Envelope, head: Uuid) -> DeadLetter {
    let mut envelope = envelope.clone();
    envelope
        .headers
        .insert(DeadLetter::PARKED_BEHIND.to_owned(), head.to_string());
    let key = envelope.key.clone().unwrap_or_default();
    DeadLetter {
        id: DeadLetter::id_for(&group.name, envelope.id),
        group: group.name.to_string(),
        error: format!(
            "parked behind dead letter {head}, an earlier event of key `{key}` group `{}` gave up \
             on (its dead letters are sequenced); it is handled, in order, when that letter is \
             replayed or discarded",
            group.name
        ),
        envelope,
        attempts: 0,
        failed_at: SystemTime::now(),
    }
}

/// The dead letter of a message that is not an eventflow event ([`Envelope::FOREIGN`]), kept
/// raw with the transport's reason.
pub(super) fn foreign(group: &Group, envelope: &Envelope) -> DeadLetter {
    let reason = envelope
        .headers
        .get(Envelope::FOREIGN_REASON)
        .unwrap_or("the transport gave no reason");
    DeadLetter {
        id: DeadLetter::id_for(&group.name, envelope.id),
        group: group.name.to_string(),
        error: format!(
            "not an eventflow event: {reason}; it is kept as it was read (payload and headers) \
             and cannot be replayed: fix its producer, then discard this letter"
        ),
        envelope: envelope.clone(),
        attempts: 0,
        failed_at: SystemTime::now(),
    }
}
