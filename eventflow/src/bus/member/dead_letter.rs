//! Dead lettering: giving up on an event once its retry budget is spent, setting aside what
//! cannot be handled (a message that is not an eventflow event, an event parked behind an
//! earlier dead letter of its key), and running a dead letter's event again on request.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::super::sequenced::{self, Parking};
use super::super::shared::{Group, Shared};
use super::attempt::attempt_all;
use super::delivery::{Lane, Member};
use super::outcome::{Failure, Outcome};
use super::retry::with_retries;
use crate::dead_letter::DeadLetter;
use crate::{Envelope, Error};

/// Dead-letters `envelope` after its handler failed with `error` in `attempts` attempts;
/// in a group with sequenced dead letters, its key is blocked from then on.
pub(super) async fn give_up(
    lane: &mut Lane<'_>,
    envelope: &Envelope,
    error: String,
    attempts: u32,
) -> Outcome {
    let group = &lane.member.group;
    let letter = DeadLetter {
        id: DeadLetter::id_for(&group.name, envelope.id),
        group: group.name.to_string(),
        envelope: Envelope::clone(envelope),
        error,
        attempts,
        failed_at: SystemTime::now(),
    };
    let outcome = store(lane.member, &letter, &mut lane.shutdown).await;
    if let (Outcome::Done, Some(parking)) = (&outcome, lane.parking) {
        parking.block(&letter);
    }
    outcome
}

/// The dead letter of an event set aside without running its handler: a message that is
/// not an eventflow event, or, in a group with sequenced dead letters, an event parked
/// behind an earlier dead letter of its key.
pub(super) fn set_aside(group: &Group, envelope: &Envelope, parking: Option<&Parking>) -> Option<DeadLetter> {
    if envelope.name == Envelope::FOREIGN {
        return Some(sequenced::foreign(group, envelope));
    }
    // Parking first: most groups do not sequence their dead letters, and it spares them
    // a route lookup per record.
    let parking = parking?;
    if !group.routes.contains_key(&*envelope.name) {
        return None;
    }
    let head = parking.head(envelope)?;
    Some(sequenced::parked(group, envelope, head))
}

/// Stores a letter from [`set_aside`]; its key is blocked from then on in a sequenced group.
/// A foreign message's copy at the transport is the transport's own (it has the raw
/// message), so only the bus's store gets it here.
pub(super) async fn park(lane: &mut Lane<'_>, letter: DeadLetter) -> Outcome {
    tracing::warn!(group = %letter.group, event.id = %letter.envelope.id, error = %letter.error, "event set aside as a dead letter");
    let shared = &lane.member.shared;
    let outcome = match letter.is_foreign() {
        true => match with_retries(shared, &mut lane.shutdown, "storing a dead letter", || {
            shared.dead_letters.put(letter.clone())
        })
        .await
        {
            Some(()) => Outcome::Done,
            None => Outcome::Interrupted,
        },
        false => store(lane.member, &letter, &mut lane.shutdown).await,
    };
    if let (Outcome::Done, Some(parking)) = (&outcome, lane.parking) {
        parking.block(&letter);
    }
    outcome
}

/// Stores a dead letter, retrying until the store takes it: an event is committed only
/// once it is handled or safely dead-lettered. The transport's copy goes through the
/// consumer's transactional sink if it has one, so that in a broker transaction it commits or
/// aborts with the batch.
async fn store(member: &Member, letter: &DeadLetter, shutdown: &mut watch::Receiver<bool>) -> Outcome {
    let shared = &member.shared;
    let stored = with_retries(shared, shutdown, "storing a dead letter", || {
        shared.dead_letters.put(letter.clone())
    });
    if stored.await.is_none() {
        return Outcome::Interrupted;
    }
    let handed = with_retries(
        shared,
        shutdown,
        "handing a dead letter to the transport",
        || async {
            match member.hand_dead_letter(letter).await {
                // Refused for good (too large for the broker's dead-letter topic, say): it is
                // in the bus's store, which is what `EventBus::dead_letters` lists.
                Err(error) if error.is_permanent() => {
                    tracing::error!(group = %letter.group, event.id = %letter.envelope.id, %error, "the transport refused the dead letter's copy for good; it is kept in the dead-letter store only");
                    Ok(())
                }
                other => other,
            }
        },
    );
    match handed.await {
        Some(()) => Outcome::Done,
        None => Outcome::Interrupted,
    }
}

/// Runs a dead letter's event through its group's handler again; `true` if it was handled
/// (the letter is removed), `false` if it failed again (the letter stays, with the new
/// error; a parked letter stays as a letter of its own, no longer parked).
pub(in crate::bus) async fn replay(
    shared: &Arc<Shared>,
    group: &Arc<Group>,
    mut letter: DeadLetter,
) -> Result<bool, Error> {
    letter.envelope.headers.remove(DeadLetter::PARKED_BEHIND);
    // A replay runs outside any consumer, so never in a broker transaction.
    let member = Member::new(shared.clone(), group.clone(), None);
    let routed = member.route(&letter.envelope).ok_or_else(|| {
        Error::Config(format!(
            "group `{}` has no handler for `{}` on this bus; register it before replaying",
            group.name, letter.envelope.name
        ))
    })?;
    let (_keep_open, never) = watch::channel(false);
    let mut lane = Lane {
        member: &member,
        shutdown: never,
        parking: None,
    };
    let envelope = Arc::new(letter.envelope.clone());
    match attempt_all(&mut lane, routed, &envelope, 1, None).await {
        Ok(_) => {
            if let Some(storage) = &shared.storage {
                storage.mark_processed(&group.name, letter.envelope.id).await?;
            }
            shared.dead_letters.take(letter.id).await?;
            Ok(true)
        }
        Err(Failure::Failed { error, attempts }) => {
            letter.error = error;
            letter.attempts += attempts;
            letter.failed_at = SystemTime::now();
            shared.dead_letters.put(letter).await?;
            Ok(false)
        }
        Err(Failure::Interrupted) => Ok(false),
    }
}
