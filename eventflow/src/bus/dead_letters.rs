//! Dead-letter operations on the bus: replay one or a whole group, discard one, purge a
//! group, count; and, for groups with sequenced dead letters, releasing the events parked
//! behind a letter once it is replayed or discarded.

use std::collections::{BTreeMap, HashSet};

use uuid::Uuid;

use super::event_bus::EventBus;
use super::member;
use super::shared::Shared;
use crate::codec;
use crate::dead_letter::{DeadLetter, Replayed};
use crate::relay::Relay;
use crate::Error;

impl EventBus {
    /// Runs a dead letter's event through its group's handler again, with the full retry
    /// budget. On success the dead letter is removed; if the handler fails again, it stays
    /// with the new error and the attempts added up.
    ///
    /// A dead letter of the outbox relay ([`Relay::DEAD_LETTER_GROUP`]) is published to
    /// every group instead, if its payload is now well-formed (repair it by
    /// [`put`](crate::DeadLetterStore::put)ting the letter back with the same id).
    ///
    /// Once the letter is handled, the events of its key parked behind it
    /// ([sequenced dead letters](crate::EventBusBuilder::sequenced_dead_letters)) are
    /// handled in order; the first that fails again stays, and the rest stay parked behind
    /// it. A parked letter itself is not replayed ahead of the letter it waits for: that
    /// fails with [`Error::Config`] naming it. A letter holding a message that is not an
    /// eventflow event ([`DeadLetter::is_foreign`]) cannot be replayed, only discarded.
    pub async fn replay_dead_letter(&self, id: Uuid) -> Result<(), Error> {
        let letter = find(&self.shared, id).await?;
        if let Some(head) = waiting_for(&self.shared, &letter).await? {
            return Err(Error::Config(format!(
                "dead letter {id} is parked behind dead letter {head}, an earlier event of its key \
                 in group `{}`; replay or discard {head} first (its parked events follow it), or \
                 replay the whole group with `EventBus::replay_dead_letters`",
                letter.group
            )));
        }
        if replay_one(&self.shared, letter.clone()).await? {
            release(&self.shared, &letter).await?;
        }
        Ok(())
    }

    /// Replays every dead letter of `group`, in the order the group gave up on them (see
    /// [`replay_dead_letter`](Self::replay_dead_letter)); the ones that fail again stay,
    /// and so do the events parked behind them. Messages that are not eventflow events are
    /// left as they are. Returns how many were handled and how many are still dead letters.
    pub async fn replay_dead_letters(&self, group: &str) -> Result<Replayed, Error> {
        let letters = self.shared.dead_letters.list(Some(group)).await?;
        let ids: HashSet<Uuid> = letters.iter().map(|letter| letter.id).collect();
        for letter in letters {
            let still_there = self
                .shared
                .dead_letters
                .list(Some(group))
                .await?
                .into_iter()
                .find(|l| l.id == letter.id);
            let Some(letter) = still_there else {
                continue; // released behind an earlier one
            };
            if letter.is_foreign() || waiting_for(&self.shared, &letter).await?.is_some() {
                continue;
            }
            if replay_one(&self.shared, letter.clone()).await? {
                release(&self.shared, &letter).await?;
            }
        }
        let still_dead = self
            .shared
            .dead_letters
            .list(Some(group))
            .await?
            .iter()
            .filter(|letter| ids.contains(&letter.id))
            .count();
        Ok(Replayed {
            handled: ids.len() - still_dead,
            still_dead,
        })
    }

    /// Removes a dead letter without handling its event, and returns it. The events of its
    /// key parked behind it ([sequenced dead letters](crate::EventBusBuilder::sequenced_dead_letters))
    /// are then handled in order, as after a replay.
    pub async fn discard_dead_letter(&self, id: Uuid) -> Result<DeadLetter, Error> {
        let letter = self
            .shared
            .dead_letters
            .take(id)
            .await?
            .ok_or(Error::DeadLetterNotFound(id))?;
        tracing::info!(group = %letter.group, event.id = %letter.envelope.id, "dead letter discarded");
        if letter.parked_behind().is_none() {
            release(&self.shared, &letter).await?;
        }
        Ok(letter)
    }

    /// Removes every dead letter of `group`, parked ones included, without handling them;
    /// returns how many.
    pub async fn purge_dead_letters(&self, group: &str) -> Result<u64, Error> {
        let purged = self.shared.dead_letters.purge(group).await?;
        tracing::info!(group, purged, "dead letters purged");
        Ok(purged)
    }

    /// How many dead letters each group has, parked ones included; groups without any are
    /// absent.
    pub async fn dead_letter_counts(&self) -> Result<BTreeMap<String, u64>, Error> {
        self.shared.dead_letters.counts().await
    }
}

async fn find(shared: &Shared, id: Uuid) -> Result<DeadLetter, Error> {
    shared
        .dead_letters
        .list(None)
        .await?
        .into_iter()
        .find(|l| l.id == id)
        .ok_or(Error::DeadLetterNotFound(id))
}

/// The letter `letter` is parked behind, if it is parked and that letter is still there.
async fn waiting_for(shared: &Shared, letter: &DeadLetter) -> Result<Option<Uuid>, Error> {
    let Some(head) = letter.parked_behind() else {
        return Ok(None);
    };
    let letters = shared.dead_letters.list(Some(&letter.group)).await?;
    Ok(letters.iter().any(|l| l.id == head).then_some(head))
}

/// Handles (or, for the relay's letters, publishes) one dead letter's event; `true` if the
/// letter is gone.
async fn replay_one(shared: &std::sync::Arc<Shared>, mut letter: DeadLetter) -> Result<bool, Error> {
    let id = letter.id;
    if letter.is_foreign() {
        return Err(Error::Undeliverable {
            id: letter.envelope.id,
            reason: format!(
                "dead letter {id} holds a message that is not an eventflow event ({}); it cannot \
                 be replayed: republish it properly at its source, then discard this letter with \
                 `EventBus::discard_dead_letter`",
                letter.error
            ),
        });
    }
    if letter.group == Relay::DEAD_LETTER_GROUP {
        letter.envelope.headers.remove(DeadLetter::PARKED_BEHIND);
        let envelope = &letter.envelope;
        codec::check_payload(&envelope.content_type, &envelope.payload).map_err(|error| {
            Error::Undeliverable {
                id: envelope.id,
                reason: format!(
                    "dead letter {id} still holds a payload that is not valid {}: {error}; repair \
                     it and put the letter back with the same id before replaying",
                    envelope.content_type
                ),
            }
        })?;
        shared.outgoing.publish_envelope(letter.envelope).await?;
        shared.dead_letters.take(id).await?;
        return Ok(true);
    }
    let group = shared.groups.get(letter.group.as_str()).ok_or_else(|| {
        Error::Config(format!(
            "dead letter {id} belongs to group `{}`, which has no handler on this bus",
            letter.group
        ))
    })?;
    member::replay(shared, group, letter).await
}

/// After `head` was handled or discarded: handles, in order, the letters of its key parked
/// in its group. The first that fails again stays, no longer parked, and the rest are
/// parked behind it. Letters parked meanwhile (by a group member that saw the key still
/// blocked) are taken in the next round.
async fn release(shared: &std::sync::Arc<Shared>, head: &DeadLetter) -> Result<(), Error> {
    let Some(key) = &head.envelope.key else {
        return Ok(());
    };
    loop {
        let parked: Vec<DeadLetter> = shared
            .dead_letters
            .list(Some(&head.group))
            .await?
            .into_iter()
            .filter(|l| l.envelope.key.as_ref() == Some(key) && l.parked_behind().is_some())
            .collect();
        if parked.is_empty() {
            return Ok(());
        }
        let mut letters = parked.into_iter();
        while let Some(letter) = letters.next() {
            let id = letter.id;
            if replay_one(shared, letter).await? {
                continue;
            }
            tracing::warn!(group = %head.group, key, dead_letter = %id, "a released event failed again; the later events of its key stay parked behind it");
            for mut rest in letters {
                rest.envelope
                    .headers
                    .insert(DeadLetter::PARKED_BEHIND.to_owned(), id.to_string());
                shared.dead_letters.put(rest).await?;
            }
            return Ok(());
        }
    }
}
