//! Events a group gave up on: [`DeadLetter`] and where they are kept, [`DeadLetterStore`].

use std::time::SystemTime;

use async_trait::async_trait;
use uuid::Uuid;

use crate::{Envelope, Error};

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
    /// The id the bus gives the dead letter of event `event` in group `group`: a UUID v5
    /// of the group's name in the event id's namespace, the same every time.
    pub fn id_for(group: &str, event: Uuid) -> Uuid {
        Uuid::new_v5(&event, group.as_bytes())
    }
}

/// Where dead letters are kept until someone replays or discards them.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Stores a dead letter, replacing the one with the same id if there is one.
    async fn put(&self, letter: DeadLetter) -> Result<(), Error>;

    /// Lists dead letters, oldest first; only `group`'s if given.
    async fn list(&self, group: Option<&str>) -> Result<Vec<DeadLetter>, Error>;

    /// Removes a dead letter and returns it.
    async fn take(&self, id: Uuid) -> Result<Option<DeadLetter>, Error>;
}
