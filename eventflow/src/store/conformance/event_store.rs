//! The event store ([`EventStore`](crate::store::EventStore), appending through a unit of work):
//! optimistic concurrency on a stream, and reading every stream in commit order.

use super::support::event;
use crate::store::{ExpectedVersion, Storage};
use crate::Error;

/// Appending with a stale expected version fails with [`Error::Conflict`] and writes nothing.
pub async fn a_stale_append_is_a_conflict<S: Storage>(store: &S) {
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.append(
            "order-1",
            ExpectedVersion::NoStream,
            &[event("1", 1), event("1", 2)]
        )
        .await
        .unwrap(),
        2
    );
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    let stale = tx
        .append("order-1", ExpectedVersion::Exact(1), &[event("1", 3)])
        .await;
    assert!(
        matches!(stale, Err(Error::Conflict { actual: 2, .. })),
        "expected a conflict, got {stale:?}"
    );
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    let exists = tx
        .append("order-1", ExpectedVersion::NoStream, &[event("1", 3)])
        .await;
    assert!(
        matches!(exists, Err(Error::Conflict { .. })),
        "NoStream on an existing stream must conflict"
    );
    drop(tx);

    let stream = store.read_stream("order-1", 1).await.unwrap();
    assert_eq!(stream.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
}

/// Many tasks appending to one stream at the expected version they read: every append
/// either commits on top of the previous one or is reported as a conflict; none is lost
/// or overwritten.
pub async fn concurrent_appends_to_one_stream_never_overwrite<S: Storage + Clone>(store: &S) {
    let tasks: Vec<_> = (0..16)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut committed = 0;
                let mut conflicts = 0;
                for i in 0..10 {
                    let current = store.read_stream("hot", 1).await.unwrap().len() as u64;
                    let expected = if current == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(current)
                    };
                    let result = async {
                        let mut tx = store.begin().await?;
                        tx.append("hot", expected, &[event("hot", n * 100 + i)]).await?;
                        tx.commit().await
                    }
                    .await;
                    match result {
                        Ok(()) => committed += 1,
                        Err(Error::Conflict { .. }) => conflicts += 1,
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                }
                (committed, conflicts)
            })
        })
        .collect();
    let mut committed = 0;
    for task in tasks {
        committed += task.await.unwrap().0;
    }
    let stream = store.read_stream("hot", 1).await.unwrap();
    assert_eq!(
        stream.len(),
        committed,
        "every committed append is in the stream, nothing else"
    );
    let versions: Vec<u64> = stream.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=committed as u64).collect::<Vec<_>>(),
        "versions have no gaps or repeats"
    );
}

/// `read_all` returns every stream's events by position, in commit order, from a position.
pub async fn read_all_follows_commit_order<S: Storage>(store: &S) {
    for (stream, n) in [("a", 1), ("b", 2), ("a", 3), ("c", 4)] {
        let mut tx = store.begin().await.unwrap();
        tx.append(stream, ExpectedVersion::Any, &[event(stream, n)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let all = store.read_all(0, 100).await.unwrap();
    let order: Vec<&str> = all.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(order, ["a", "b", "a", "c"]);
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "positions increase"
    );
    let rest = store.read_all(all[1].position, 100).await.unwrap();
    assert_eq!(rest, all[2..], "reading after a position continues from there");
    assert_eq!(
        store.read_all(0, 2).await.unwrap(),
        all[..2],
        "limit is respected"
    );
}
