//! Dead letters: events a group gave up on ([`DeadLetter`]), kept until someone replays or
//! discards them.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use uuid::Uuid;

use crate::{DeadLetter, Error};

/// Where dead letters are kept until someone replays or discards them.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Stores a dead letter, replacing the one with the same id if there is one.
    async fn put(&self, letter: DeadLetter) -> Result<(), Error>;

    /// Lists dead letters, oldest first; only `group`'s if given.
    async fn list(&self, group: Option<&str>) -> Result<Vec<DeadLetter>, Error>;

    /// Removes a dead letter and returns it.
    async fn take(&self, id: Uuid) -> Result<Option<DeadLetter>, Error>;

    /// Removes every dead letter of `group`; returns how many. The default takes them one
    /// by one; backends override it with one delete.
    async fn purge(&self, group: &str) -> Result<u64, Error> {
        let mut purged = 0;
        for letter in self.list(Some(group)).await? {
            if self.take(letter.id).await?.is_some() {
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// How many dead letters each group has (groups without any are absent). The default
    /// lists them all; backends override it with one count per group.
    async fn counts(&self) -> Result<BTreeMap<String, u64>, Error> {
        let mut counts = BTreeMap::new();
        for letter in self.list(None).await? {
            *counts.entry(letter.group).or_default() += 1;
        }
        Ok(counts)
    }

    /// The partition keys `group` has dead letters for, each with the id of its oldest
    /// letter of that key: what a group with sequenced dead letters parks later events of
    /// the key behind. The default lists the group's letters; backends override it with a
    /// query that reads only keys and ids.
    async fn blocked_keys(&self, group: &str) -> Result<HashMap<String, Uuid>, Error> {
        let mut keys = HashMap::new();
        for letter in self.list(Some(group)).await? {
            if let Some(key) = letter.envelope.key {
                keys.entry(key).or_insert(letter.id);
            }
        }
        Ok(keys)
    }
}
