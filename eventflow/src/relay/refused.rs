//! What the relay does with events the transport refuses for good, and, with sequenced
//! dead letters, with the later events of their keys.

use std::collections::HashMap;

use uuid::Uuid;

use super::Relay;
use crate::dead_letter::DeadLetter;
use crate::store::{OutboxEntry, OutboxFeed};
use crate::{Envelope, Error, Rejection};

/// The keys whose earlier event the relay set aside, each with the id of that event's
/// dead letter: later events of those keys are parked behind it (sequenced policy only).
pub(super) type Blocked = HashMap<String, Uuid>;

impl Relay {
    /// The keys parked behind a dead letter of the relay, if its dead letters are sequenced.
    pub(super) async fn blocked_keys(&self) -> Result<Blocked, Error> {
        match self.sequenced {
            true => self.dead_letters.blocked_keys(Self::DEAD_LETTER_GROUP).await,
            false => Ok(Blocked::new()),
        }
    }

    /// Publishes claimed entries and dead-letters those the transport refuses for good;
    /// returns how many were delivered. A transient failure is returned as it is: nothing of
    /// the batch is marked delivered, and all of it is published again.
    ///
    /// With sequenced dead letters, the entries go out in waves in which each key appears
    /// once, so that an entry refused in one wave parks the later entries of its key
    /// (in `blocked`) before they are sent.
    pub(super) async fn publish_entries(
        &self,
        feed: &mut dyn OutboxFeed,
        entries: Vec<OutboxEntry>,
        blocked: &mut Blocked,
    ) -> Result<usize, Error> {
        if !self.sequenced {
            return self.publish_wave(feed, entries, blocked).await;
        }
        let mut waves: Vec<Vec<OutboxEntry>> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for entry in entries {
            let wave = match &entry.envelope.key {
                Some(key) => {
                    let count = seen.entry(key.clone()).or_default();
                    *count += 1;
                    *count - 1
                }
                None => 0,
            };
            if waves.len() <= wave {
                waves.resize_with(wave + 1, Vec::new);
            }
            waves[wave].push(entry);
        }
        let mut delivered = 0;
        for wave in waves {
            let mut sent = Vec::with_capacity(wave.len());
            for entry in wave {
                match entry.envelope.key.as_ref().and_then(|key| blocked.get(key)) {
                    Some(&head) => self.park(entry, head).await?,
                    None => sent.push(entry),
                }
            }
            delivered += self.publish_wave(feed, sent, blocked).await?;
        }
        Ok(delivered)
    }

    /// Publishes one batch of entries; dead-letters the refused ones and, with sequenced
    /// dead letters, blocks their keys.
    async fn publish_wave(
        &self,
        feed: &mut dyn OutboxFeed,
        entries: Vec<OutboxEntry>,
        blocked: &mut Blocked,
    ) -> Result<usize, Error> {
        if entries.is_empty() {
            return Ok(0);
        }
        // The transport takes the envelopes; a refused one is read again from the feed.
        let sequences: Vec<u64> = entries.iter().map(|entry| entry.sequence).collect();
        let envelopes: Vec<Envelope> = entries.into_iter().map(|entry| entry.envelope).collect();
        let rejections = match self.transport.publish_batch(envelopes).await {
            Ok(()) => return Ok(sequences.len()),
            Err(Error::Rejected { rejections }) => rejections,
            Err(error) => return Err(error),
        };
        let refused = rejections.len();
        for rejection in rejections {
            let Some(&sequence) = sequences.get(rejection.index) else {
                return Err(Error::backend(format!(
                    "the transport refused event {} at position {} of a batch of {}: it reported a \
                     position that is not in the batch (a bug in the transport); the batch will be \
                     published again",
                    rejection.event,
                    rejection.index,
                    sequences.len()
                )));
            };
            let letter = self.dead_letter_refused(feed, sequence, rejection).await?;
            if let (true, Some(key)) = (self.sequenced, letter.envelope.key) {
                blocked.entry(key).or_insert(letter.id);
            }
        }
        Ok(sequences.len() - refused)
    }

    /// Sets aside the entry the transport refused for good. The batch handed its envelope
    /// over, so the entry is read again: it is still in the outbox, handed out to this relay.
    async fn dead_letter_refused(
        &self,
        feed: &mut dyn OutboxFeed,
        sequence: u64,
        rejection: Rejection,
    ) -> Result<DeadLetter, Error> {
        let Some(entry) = feed.reread(sequence).await? else {
            return Err(Error::backend(format!(
                "the transport refused outbox entry {sequence} (event {}) for good, but the entry \
                 could no longer be read to dead-letter it (another relay took the outbox over?); \
                 it stays in the outbox and will be tried again: {}",
                rejection.event, rejection.reason
            )));
        };
        let envelope = &entry.envelope;
        let error = format!(
            "the transport refused outbox entry {sequence} (event {} `{}` v{}, {} bytes, topic `{}`, \
             key {:?}) for good: {}. It was not delivered and the relay went on with the next \
             entries; once the cause is fixed, replay this dead letter \
             (`EventBus::replay_dead_letter`), or discard it",
            envelope.id,
            envelope.name,
            envelope.version,
            envelope.payload.len(),
            envelope.topic,
            envelope.key.as_deref().unwrap_or("none"),
            rejection.reason
        );
        self.dead_letter(entry, error).await
    }

    /// Parks an entry of a key whose earlier event is a dead letter of the relay, `head`.
    async fn park(&self, mut entry: OutboxEntry, head: Uuid) -> Result<(), Error> {
        let key = entry.envelope.key.clone().unwrap_or_default();
        entry
            .envelope
            .headers
            .insert(DeadLetter::PARKED_BEHIND.to_owned(), head.to_string());
        let error = format!(
            "parked behind dead letter {head}, an earlier event of key `{key}` the relay could not \
             deliver (the relay's dead letters are sequenced); it is delivered, in order, when \
             that letter is replayed or discarded"
        );
        self.dead_letter(entry, error).await.map(drop)
    }
}
