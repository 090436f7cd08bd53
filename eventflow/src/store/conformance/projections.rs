//! Conformance of what projections need from a backend: a checkpoint saved with a unit of
//! work, the commit signal on appends, and the newest position.

use crate::store::{ExpectedVersion, Storage};
use crate::{Envelope, Error};

fn event(n: u32) -> Envelope {
    Envelope::new(
        "test.counted",
        1,
        "conformance",
        "application/json",
        format!("{{\"n\":{n}}}"),
    )
}

/// A checkpoint saved in a unit of work commits with it, is not saved by a dropped one, and
/// is saved only if it is still what the unit of work expected: otherwise the commit fails
/// with [`Error::CheckpointMoved`] and none of the unit of work's writes are kept.
pub async fn a_checkpoint_saved_in_a_unit_of_work_commits_with_it<S: Storage>(store: &S) {
    let mut tx = store.begin().await.unwrap();
    tx.save_checkpoint("projection.count", None, "1").await.unwrap();
    drop(tx);
    assert_eq!(
        store.checkpoint("projection.count").await.unwrap(),
        None,
        "a dropped unit of work saved its checkpoint"
    );

    let mut tx = store.begin().await.unwrap();
    tx.append("count-1", ExpectedVersion::NoStream, &[event(1)])
        .await
        .unwrap();
    tx.save_checkpoint("projection.count", None, "1").await.unwrap();
    tx.save_checkpoint("projection.count", Some("1"), "2")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        store.checkpoint("projection.count").await.unwrap().as_deref(),
        Some("2"),
        "the checkpoint's last value in the unit of work was not saved"
    );

    // A runner that read "1" and did not see the commit that moved it to "2".
    let stale = async {
        let mut tx = store.begin().await?;
        tx.append("count-2", ExpectedVersion::NoStream, &[event(2)])
            .await?;
        tx.save_checkpoint("projection.count", Some("1"), "3").await?;
        tx.commit().await
    }
    .await;
    assert!(
        matches!(&stale, Err(Error::CheckpointMoved { actual: Some(actual), .. }) if actual == "2"),
        "a checkpoint saved over a value it did not expect: {stale:?}"
    );
    assert_eq!(
        store.checkpoint("projection.count").await.unwrap().as_deref(),
        Some("2")
    );
    assert!(
        store.read_stream("count-2", 1).await.unwrap().is_empty(),
        "a unit of work whose checkpoint had moved kept its events"
    );
}

/// A commit that only appends events (no outbox entries) bumps the commit signal, which
/// wakes projections; and the newest position is what `read_all` ends at.
pub async fn an_append_wakes_the_commit_signal_and_moves_the_head<S: Storage>(store: &S) {
    assert_eq!(
        store.head_position().await.unwrap(),
        Some(0),
        "an empty store's head"
    );
    let mut signal = store.commit_signal();
    signal.borrow_and_update();
    let mut tx = store.begin().await.unwrap();
    tx.append("count-3", ExpectedVersion::NoStream, &[event(1), event(2)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        signal.has_changed().unwrap(),
        "a commit that appended events did not bump the commit signal"
    );
    let all = store.read_all(0, 10).await.unwrap();
    assert_eq!(
        store.head_position().await.unwrap(),
        all.last().map(|e| e.position),
        "the head is not the position of the newest event"
    );
}
