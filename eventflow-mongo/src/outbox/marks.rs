//! What a feed reached in marking entries delivered and has not written yet, and the
//! background write under way: the state `delivered` keeps in the feed.

use std::time::Instant;

use tokio::task::JoinHandle;

use super::position::Position;

/// What the feed reached and has not written yet, and the background write under way.
#[derive(Default)]
pub(super) struct Marks {
    /// When the feed last wrote its watermark and position.
    pub(super) written_at: Option<Instant>,
    /// A watermark reached since then, not written yet.
    pub(super) unwritten: Option<u64>,
    /// A position reached since then, not saved yet.
    pub(super) unsaved: Option<Position>,
    /// The last position reached, saved or not: what closing the feed saves.
    pub(super) reached: Option<Position>,
    /// The background write under way, with what it carries (put back if it fails).
    pub(super) writing: Option<Write>,
}

/// A background write of the watermark and position.
pub(super) struct Write {
    pub(super) task: JoinHandle<Result<bool, mongodb::error::Error>>,
    pub(super) watermark: Option<u64>,
    pub(super) position: Option<Position>,
}

impl Marks {
    /// Forgets what was reached; a write under way goes on, detached (its update is fenced
    /// by the lease and only moves things forward).
    pub(super) fn forget(&mut self) {
        *self = Marks::default();
    }

    /// Records a watermark and a position reached, to be written by the next write.
    pub(super) fn reach(&mut self, watermark: Option<u64>, position: Option<Position>) {
        if let Some(watermark) = watermark {
            self.unwritten = Some(self.unwritten.unwrap_or(0).max(watermark));
        }
        if let Some(position) = position {
            self.unsaved = Some(position.clone());
            self.reached = Some(position);
        }
    }
}
