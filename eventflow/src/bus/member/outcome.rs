//! The words the member's rooms pass each other: how handling a record ended, how a
//! handler's attempts failed, and what a handled batch leaves to commit.

use uuid::Uuid;

use crate::transport::Record;
use crate::Error;

/// How handling one record ended.
pub(super) enum Outcome {
    /// Skipped (no handler in this group, or processed before), handled by a transactional
    /// handler (its marker is committed) or dead-lettered: commit it.
    Done,
    /// Handled by a handler without a transaction: record it in the inbox, then commit it.
    Handled,
    /// Shutdown came first: leave it uncommitted, to be handled again later.
    Interrupted,
}

/// Why a handler's attempts ended without success.
pub(super) enum Failure {
    /// The retry budget is spent (or the event cannot be handled at all, `attempts: 0`):
    /// dead-letter it with `error`.
    Failed { error: String, attempts: u32 },
    /// Shutdown came first, or the broker transaction must abort: handled again later.
    Interrupted,
}

/// `error` as the failure of attempt `attempts`.
pub(super) fn failure(error: Error, attempts: u32) -> Failure {
    Failure::Failed {
        error: error.to_string(),
        attempts,
    }
}

/// A handled batch: what to commit, and the events handled by handlers without a
/// transaction, to record in the inbox first.
pub(super) struct Batch {
    pub(super) done: Vec<Record>,
    pub(super) handled: Vec<Uuid>,
}

impl Batch {
    /// Nothing to commit: shutdown came before the batch could be handled.
    pub(super) fn interrupted() -> Self {
        Batch {
            done: Vec::new(),
            handled: Vec::new(),
        }
    }
}
