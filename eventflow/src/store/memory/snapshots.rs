//! [`SnapshotStore`] on the [`MemoryStore`].

use async_trait::async_trait;

use super::MemoryStore;
use crate::store::{SnapshotStore, StoredSnapshot};
use crate::Error;

#[async_trait]
impl SnapshotStore for MemoryStore {
    async fn load_snapshot(&self, stream: &str) -> Result<Option<StoredSnapshot>, Error> {
        Ok(self.data().snapshots.get(stream).cloned())
    }

    async fn save_snapshot(&self, snapshot: StoredSnapshot) -> Result<(), Error> {
        let mut data = self.data();
        let newer_kept = data
            .snapshots
            .get(&snapshot.stream)
            .is_some_and(|kept| kept.schema == snapshot.schema && kept.version > snapshot.version);
        if !newer_kept {
            data.snapshots.insert(snapshot.stream.clone(), snapshot);
        }
        Ok(())
    }
}
