//! Events a group gave up on: [`DeadLetter`]. Where they are kept,
//! [`DeadLetterStore`](crate::DeadLetterStore), is a storage trait, in
//! [`store`](crate::store); it stores this type, so this module does not import it back.

use std::time::SystemTime;

use uuid::Uuid;

use crate::Envelope;

/// An event one consumer group could not handle within its retry budget, or could not
/// decode at all. Other groups are not affected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Id of this dead letter (not of the event: one event can be dead-lettered by several
    /// groups). The bus derives it from the group and the event id
    /// ([`DeadLetter::id_for`]), so an event dead-lettered again by the same group (after
    /// a crash before its commit, say) replaces its letter instead of adding a second.
    pub id: Uuid,
    /// The group that gave up.
    pub group: String,
    /// The event as it was received.
    pub envelope: Envelope,
    /// The last error, as text.
    pub error: String,
    /// How many times the handler ran (0 if the event could not be decoded).
    pub attempts: u32,
    /// When the group gave up.
    pub failed_at: SystemTime,
}

impl DeadLetter {
    /// The envelope header that marks a letter *parked*: an event of a group with
    /// [sequenced dead letters](crate::EventBusBuilder::sequenced_dead_letters) that was not
    /// handled because an earlier event of its key is a dead letter. Its value is the id of
    /// that earlier letter. Replaying or discarding that letter releases the parked ones, in
    /// order.
    pub const PARKED_BEHIND: &'static str = "eventflow-parked-behind";

    /// The dead letter this one is parked behind, if it is parked (see
    /// [`DeadLetter::PARKED_BEHIND`]).
    pub fn parked_behind(&self) -> Option<Uuid> {
        self.envelope
            .headers
            .get(Self::PARKED_BEHIND)
            .and_then(|id| id.parse().ok())
    }

    /// Whether this letter holds a message that is not an eventflow event, kept raw
    /// ([`Envelope::FOREIGN`]).
    pub fn is_foreign(&self) -> bool {
        self.envelope.name == Envelope::FOREIGN
    }

    /// The id the bus gives the dead letter of event `event` in group `group`: a UUID v5
    /// of the group's name in the event id's namespace, the same every time.
    pub fn id_for(group: &str, event: Uuid) -> Uuid {
        Uuid::new_v5(&event, group.as_bytes())
    }
}

/// What [`EventBus::replay_dead_letters`](crate::EventBus::replay_dead_letters) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Letters whose event was handled (or, for the outbox relay's, published): removed.
    pub handled: usize,
    /// Letters still there: failed again, parked behind one that did, or not replayable.
    pub still_dead: usize,
}
