//! Conformance of a backend's [`SnapshotStore`](crate::store::SnapshotStore).

use crate::store::{Storage, StoredSnapshot};

fn snapshot(stream: &str, version: u64, schema: u32) -> StoredSnapshot {
    StoredSnapshot {
        stream: stream.to_owned(),
        version,
        schema,
        state: format!("{{\"version\":{version},\"schema\":{schema}}}").into_bytes(),
    }
}

/// A stream keeps its newest snapshot: an older one saved later (a slower writer) does not
/// replace it, a snapshot of another schema does, and streams do not share snapshots.
pub async fn snapshots_keep_the_newest_of_each_stream<S: Storage>(store: &S) {
    let snapshots = store
        .snapshots()
        .expect("the backend keeps no snapshots: `Storage::snapshots` returns None");
    assert_eq!(snapshots.load_snapshot("book-1").await.unwrap(), None);

    snapshots.save_snapshot(snapshot("book-1", 5, 1)).await.unwrap();
    snapshots.save_snapshot(snapshot("book-2", 7, 1)).await.unwrap();
    assert_eq!(
        snapshots.load_snapshot("book-1").await.unwrap(),
        Some(snapshot("book-1", 5, 1)),
        "a snapshot reads back as it was saved"
    );

    snapshots.save_snapshot(snapshot("book-1", 3, 1)).await.unwrap();
    assert_eq!(
        snapshots
            .load_snapshot("book-1")
            .await
            .unwrap()
            .map(|s| s.version),
        Some(5),
        "an older snapshot of the same schema replaced a newer one"
    );

    snapshots.save_snapshot(snapshot("book-1", 9, 1)).await.unwrap();
    assert_eq!(
        snapshots.load_snapshot("book-1").await.unwrap(),
        Some(snapshot("book-1", 9, 1)),
        "a newer snapshot did not replace the kept one"
    );

    snapshots.save_snapshot(snapshot("book-1", 4, 2)).await.unwrap();
    assert_eq!(
        snapshots.load_snapshot("book-1").await.unwrap(),
        Some(snapshot("book-1", 4, 2)),
        "a snapshot of a new state schema did not replace one of the old schema"
    );
    assert_eq!(
        snapshots.load_snapshot("book-2").await.unwrap(),
        Some(snapshot("book-2", 7, 1)),
        "saving one stream's snapshot changed another's"
    );
}
