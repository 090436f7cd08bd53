//! The inbox ([`InboxStore`](crate::store::InboxStore)): duplicates refused, old markers pruned.

use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::store::Storage;
use crate::Error;

/// A processed-event marker is recorded once per group and event: the second is refused,
/// inside and outside transactions, and a concurrent duplicate cannot commit.
pub async fn the_inbox_suppresses_duplicates<S: Storage>(store: &S) {
    let id = Uuid::now_v7();
    assert!(store.mark_processed("mail", id).await.unwrap());
    assert!(
        !store.mark_processed("mail", id).await.unwrap(),
        "a duplicate marker was accepted"
    );
    assert!(
        store.mark_processed("crm", id).await.unwrap(),
        "groups are independent"
    );

    let mut tx = store.begin().await.unwrap();
    assert!(
        !tx.mark_processed("mail", id).await.unwrap(),
        "a transaction accepted a duplicate marker"
    );
    drop(tx);

    // The batch forms the bus uses for a polled batch of events.
    let batch: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    store.mark_all_processed("mail", &batch[..3]).await.unwrap();
    store.mark_all_processed("mail", &batch[2..4]).await.unwrap();
    let mut asked = batch.clone();
    asked.push(id);
    let processed = store.processed("mail", &asked).await.unwrap();
    let expected: std::collections::HashSet<Uuid> = batch[..4].iter().copied().chain([id]).collect();
    assert_eq!(
        processed, expected,
        "the batch inbox forms disagree with what was marked"
    );
    assert!(
        store.processed("crm", &batch).await.unwrap().is_empty(),
        "groups are independent"
    );

    // Two handlers of one group racing on one event: only one commits.
    let racing = Uuid::now_v7();
    let mut first = store.begin().await.unwrap();
    assert!(first.mark_processed("stock", racing).await.unwrap());
    first.commit().await.unwrap();
    let mut second = store.begin().await.unwrap();
    let outcome = async {
        if !second.mark_processed("stock", racing).await? {
            return Ok(false);
        }
        second.commit().await.map(|()| true)
    }
    .await;
    assert!(
        matches!(outcome, Ok(false) | Err(Error::AlreadyProcessed { .. })),
        "both commits of one event succeeded: {outcome:?}"
    );
}

/// `prune_inbox(before)` forgets the markers recorded before `before`, of every group, and
/// keeps the later ones, whether recorded alone or in a unit of work. A backend that
/// cannot prune says so with [`Error::Unsupported`] (the bus then keeps every marker).
pub async fn pruning_the_inbox_forgets_only_older_markers<S: Storage>(store: &S) {
    let (old_mail, old_crm, recent, in_unit) =
        (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    assert!(store.mark_processed("mail", old_mail).await.unwrap());
    store.mark_all_processed("crm", &[old_crm]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cutoff = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(store.mark_processed("mail", recent).await.unwrap());
    let mut tx = store.begin().await.unwrap();
    assert!(tx.mark_processed("mail", in_unit).await.unwrap());
    tx.commit().await.unwrap();

    match store.prune_inbox(cutoff).await {
        Err(Error::Unsupported(_)) => return, // the backend cannot prune
        pruned => assert_eq!(pruned.unwrap(), 2, "prune_inbox counts the markers it forgot"),
    }
    assert!(
        !store.is_processed("mail", old_mail).await.unwrap(),
        "an old marker survived pruning"
    );
    assert!(
        !store.is_processed("crm", old_crm).await.unwrap(),
        "an old marker of another group survived"
    );
    assert!(
        store.is_processed("mail", recent).await.unwrap(),
        "pruning forgot a recent marker"
    );
    assert!(
        store.is_processed("mail", in_unit).await.unwrap(),
        "pruning forgot a recent marker"
    );
    assert_eq!(
        store.prune_inbox(cutoff).await.unwrap(),
        0,
        "a second pruning found more"
    );
}
