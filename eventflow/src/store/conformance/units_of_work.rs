//! Units of work ([`Transaction`](crate::store::Transaction)): all or nothing, and savepoints.

use uuid::Uuid;

use super::support::{event, outbox_entries};
use crate::store::{ExpectedVersion, Storage};

/// Appends, outbox entries and inbox markers of one unit of work become visible together.
pub async fn a_unit_of_work_commits_everything_at_once<S: Storage>(store: &S) {
    let handled = Uuid::now_v7();
    let paid = event("order-2", 1);
    let mut tx = store.begin().await.unwrap();
    tx.append("order-2", ExpectedVersion::NoStream, std::slice::from_ref(&paid))
        .await
        .unwrap();
    tx.enqueue(std::slice::from_ref(&paid)).await.unwrap();
    assert!(tx.mark_processed("billing", handled).await.unwrap());

    assert!(
        store.read_stream("order-2", 1).await.unwrap().is_empty(),
        "uncommitted append is visible"
    );
    assert!(
        !store.is_processed("billing", handled).await.unwrap(),
        "uncommitted marker is visible"
    );
    tx.commit().await.unwrap();

    assert_eq!(store.read_stream("order-2", 1).await.unwrap()[0].envelope, paid);
    assert!(store.is_processed("billing", handled).await.unwrap());
    let outbox = outbox_entries(store).await;
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].envelope, paid);
}

/// Dropping a unit of work without committing writes nothing.
pub async fn a_dropped_unit_of_work_leaves_no_trace<S: Storage>(store: &S) {
    let handled = Uuid::now_v7();
    let mut tx = store.begin().await.unwrap();
    tx.append("order-3", ExpectedVersion::NoStream, &[event("order-3", 1)])
        .await
        .unwrap();
    tx.enqueue(&[event("order-3", 1)]).await.unwrap();
    tx.mark_processed("billing", handled).await.unwrap();
    drop(tx);

    assert!(store.read_stream("order-3", 1).await.unwrap().is_empty());
    assert!(store.read_all(0, 10).await.unwrap().is_empty());
    assert!(outbox_entries(store).await.is_empty());
    assert!(!store.is_processed("billing", handled).await.unwrap());
}

/// A backend whose units of work have savepoints (`savepoint()` returns true) rolls back to
/// the innermost one exactly: appends, outbox entries and inbox markers written after it
/// are gone, what came before and after stays, and the unit of work still commits. The bus
/// relies on it to run several transactional handlers in one unit of work. A backend
/// without savepoints (`savepoint()` returns false) passes as long as it says so.
pub async fn a_savepoint_rolls_back_only_what_followed_it<S: Storage>(store: &S) {
    let (kept, undone, later) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut tx = store.begin().await.unwrap();
    tx.append("order-sp", ExpectedVersion::NoStream, &[event("order-sp", 1)])
        .await
        .unwrap();
    assert!(tx.mark_processed("ledger", kept).await.unwrap());
    if !tx.savepoint().await.unwrap() {
        return; // no savepoints: the bus gives each handler a unit of work of its own
    }
    tx.append("order-sp", ExpectedVersion::Exact(1), &[event("order-sp", 2)])
        .await
        .unwrap();
    tx.enqueue(&[event("order-sp", 2)]).await.unwrap();
    assert!(tx.mark_processed("ledger", undone).await.unwrap());
    tx.rollback_to_savepoint().await.unwrap();

    assert!(tx.savepoint().await.unwrap());
    assert!(
        tx.mark_processed("ledger", undone).await.unwrap(),
        "a marker rolled back to a savepoint still counts as recorded"
    );
    assert!(tx.mark_processed("ledger", later).await.unwrap());
    tx.append("order-sp", ExpectedVersion::Exact(1), &[event("order-sp", 3)])
        .await
        .unwrap();
    tx.release_savepoint().await.unwrap();
    tx.commit().await.unwrap();

    let versions: Vec<u32> = store
        .read_stream("order-sp", 1)
        .await
        .unwrap()
        .iter()
        .map(|stored| stored.version as u32)
        .collect();
    assert_eq!(
        versions,
        [1, 2],
        "the stream after rolling back its second append and appending again"
    );
    let payload = &store.read_stream("order-sp", 2).await.unwrap()[0]
        .envelope
        .payload;
    assert_eq!(&payload[..], br#"{"n":3}"#, "the rolled-back append survived");
    assert!(
        outbox_entries(store).await.is_empty(),
        "an outbox entry rolled back to a savepoint was committed"
    );
    let processed = store.processed("ledger", &[kept, undone, later]).await.unwrap();
    assert_eq!(
        processed.len(),
        3,
        "markers written around the savepoints were lost"
    );
}
