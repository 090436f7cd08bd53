//! Checkpoints: named positions a reader saves to go on from after a restart.

use async_trait::async_trait;

use crate::Error;

/// Named checkpoints (a projection's position, a change stream's resume token), read and
/// saved outside a unit of work. A projection saves its position inside its unit of work
/// instead, with [`Transaction::save_checkpoint`](super::Transaction::save_checkpoint).
///
/// Conformance: [`conformance::checkpoints`](super::conformance::checkpoints).
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// A saved checkpoint, `None` if `name` was never saved.
    async fn checkpoint(&self, name: &str) -> Result<Option<String>, Error>;

    /// Saves a checkpoint.
    async fn save_checkpoint(&self, name: &str, value: &str) -> Result<(), Error>;
}
