//! Checkpoints ([`CheckpointStore`]) saved outside a unit of work.

use crate::store::CheckpointStore;

/// Checkpoints read back what was saved last.
pub async fn checkpoints_are_saved<S: CheckpointStore + ?Sized>(store: &S) {
    assert_eq!(store.checkpoint("projection").await.unwrap(), None);
    store.save_checkpoint("projection", "41").await.unwrap();
    store.save_checkpoint("projection", "42").await.unwrap();
    assert_eq!(
        store.checkpoint("projection").await.unwrap().as_deref(),
        Some("42")
    );
}
