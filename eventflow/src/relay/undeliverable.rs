//! Entries the relay cannot deliver as they are (a row the store could not read, a payload
//! that does not parse): each becomes a dead letter of the relay, and the relay goes on.

use std::time::SystemTime;

use uuid::Uuid;

use super::refused::Blocked;
use super::Relay;
use crate::codec;
use crate::dead_letter::DeadLetter;
use crate::store::OutboxEntry;
use crate::Error;

impl Relay {
    /// Dead-letters the entries that cannot be delivered as they are, blocking their keys
    /// with sequenced dead letters; returns the rest.
    pub(super) async fn set_aside_undeliverable(
        &self,
        entries: Vec<OutboxEntry>,
        blocked: &mut Blocked,
    ) -> Result<Vec<OutboxEntry>, Error> {
        let mut deliverable = Vec::with_capacity(entries.len());
        for entry in entries {
            match undeliverable(&entry) {
                None => deliverable.push(entry),
                Some(error) => {
                    let letter = self.dead_letter(entry, error).await?;
                    if let (true, Some(key)) = (self.sequenced, letter.envelope.key) {
                        blocked.entry(key).or_insert(letter.id);
                    }
                }
            }
        }
        Ok(deliverable)
    }

    /// Sets an entry aside as a dead letter. Its id is the event's (the outbox holds an
    /// event once), or the sequence's when the event id is unreadable, so writing it again
    /// after a crash replaces it instead of adding a second one.
    pub(super) async fn dead_letter(&self, entry: OutboxEntry, error: String) -> Result<DeadLetter, Error> {
        tracing::error!(relay = %self.id, sequence = entry.sequence, event.id = %entry.envelope.id, %error,
            "an outbox entry cannot be delivered; it is now a dead letter of group `{}`", Self::DEAD_LETTER_GROUP);
        let id = match entry.envelope.id {
            id if id.is_nil() => Uuid::from_u64_pair(0, entry.sequence),
            id => id,
        };
        let letter = DeadLetter {
            id,
            group: Self::DEAD_LETTER_GROUP.to_owned(),
            envelope: entry.envelope,
            error,
            attempts: 0,
            failed_at: SystemTime::now(),
        };
        self.dead_letters.put(letter.clone()).await?;
        Ok(letter)
    }
}

/// Why `entry` cannot be delivered as it is, if it cannot.
fn undeliverable(entry: &OutboxEntry) -> Option<String> {
    if let Some(corrupt) = &entry.corrupt {
        return Some(format!("{corrupt}; repair the row and replay this dead letter"));
    }
    let envelope = &entry.envelope;
    codec::check_payload(&envelope.content_type, &envelope.payload)
        .err()
        .map(|error| {
            format!(
                "outbox entry {} (event {} `{}` v{}) has a payload that is not valid {}: {error}; \
                 it was not delivered: repair the payload and replay this dead letter",
                entry.sequence, envelope.id, envelope.name, envelope.version, envelope.content_type
            )
        })
}
