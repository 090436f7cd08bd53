//! The storage conformance suite: one async function per guarantee, run unchanged against
//! every backend — [`MemoryStore`](super::MemoryStore), SQLite, MongoDB, and yours.
//!
//! Each function takes a fresh, empty store and panics with a message naming the broken
//! guarantee. [`storage_conformance!`](crate::storage_conformance) turns them into one
//! `#[tokio::test]` each:
//!
//! ```
//! # mod wrapper {
//! eventflow::storage_conformance!(async { eventflow::store::MemoryStore::new() });
//! # }
//! ```

mod projections;
mod snapshots;

use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::{ExpectedVersion, Storage};
use crate::dead_letter::DeadLetter;
use crate::{Envelope, Error};
pub use projections::{
    a_checkpoint_saved_in_a_unit_of_work_commits_with_it,
    an_append_wakes_the_commit_signal_and_moves_the_head,
};
pub use snapshots::snapshots_keep_the_newest_of_each_stream;

mod dead_letter_operations;
pub use dead_letter_operations::dead_letters_are_counted_purged_and_keyed_by_group;

/// Runs every guarantee of the suite as its own `#[tokio::test]`, each on a store made by
/// `$make` (an expression of a future yielding a fresh store).
#[macro_export]
macro_rules! storage_conformance {
    ($make:expr) => {
        $crate::storage_conformance!(@tests $make;
            a_stale_append_is_a_conflict,
            concurrent_appends_to_one_stream_never_overwrite,
            a_unit_of_work_commits_everything_at_once,
            a_dropped_unit_of_work_leaves_no_trace,
            a_savepoint_rolls_back_only_what_followed_it,
            read_all_follows_commit_order,
            the_outbox_yields_entries_in_commit_order,
            only_one_relay_claims_the_outbox_until_its_lease_expires,
            the_inbox_suppresses_duplicates,
            pruning_the_inbox_forgets_only_older_markers,
            dead_letters_are_kept_replaced_and_taken,
            dead_letters_are_counted_purged_and_keyed_by_group,
            checkpoints_are_saved,
            snapshots_keep_the_newest_of_each_stream,
            a_checkpoint_saved_in_a_unit_of_work_commits_with_it,
            an_append_wakes_the_commit_signal_and_moves_the_head,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $make.await;
                $crate::store::conformance::$name(&store).await;
            }
        )*
    };
}

fn event(key: &str, n: u32) -> Envelope {
    let mut envelope = Envelope::new(
        "test.happened",
        1,
        "conformance",
        "application/json",
        format!("{{\"n\":{n}}}"),
    );
    envelope.key = Some(key.to_owned());
    envelope
}

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
    let outbox = store
        .claim_outbox("relay", Duration::from_secs(5), 0, 10)
        .await
        .unwrap();
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
    assert!(store
        .claim_outbox("relay", Duration::from_secs(5), 0, 10)
        .await
        .unwrap()
        .is_empty());
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
        store
            .claim_outbox("relay", Duration::from_secs(5), 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "an outbox entry rolled back to a savepoint was committed"
    );
    let processed = store.processed("ledger", &[kept, undone, later]).await.unwrap();
    assert_eq!(
        processed.len(),
        3,
        "markers written around the savepoints were lost"
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

/// Outbox entries come out in commit order, from after a given sequence, and leave once
/// marked delivered.
pub async fn the_outbox_yields_entries_in_commit_order<S: Storage>(store: &S) {
    let mut sent = Vec::new();
    for n in 0..20 {
        let envelope = event(&format!("k{}", n % 3), n);
        sent.push(envelope.id);
        let mut tx = store.begin().await.unwrap();
        tx.enqueue(&[envelope]).await.unwrap();
        tx.commit().await.unwrap();
    }
    let first = store
        .claim_outbox("relay", Duration::from_secs(5), 0, 8)
        .await
        .unwrap();
    assert_eq!(first.iter().map(|e| e.envelope.id).collect::<Vec<_>>(), sent[..8]);
    assert!(first.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let sequences: Vec<u64> = first.iter().map(|e| e.sequence).collect();
    store.mark_delivered("relay", &sequences).await.unwrap();
    let rest = store
        .claim_outbox("relay", Duration::from_secs(5), 0, 100)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|e| e.envelope.id).collect::<Vec<_>>(), sent[8..]);
    let after = store
        .claim_outbox("relay", Duration::from_secs(5), rest[4].sequence, 3)
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|e| e.envelope.id).collect::<Vec<_>>(),
        sent[13..16],
        "a claim after a sequence must start past it"
    );
}

/// While one relay holds the outbox lease, another claims nothing; when the lease expires
/// (the holder died) or is released, the other takes over and sees the undelivered entries.
pub async fn only_one_relay_claims_the_outbox_until_its_lease_expires<S: Storage>(store: &S) {
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&[event("k", 1), event("k", 2)]).await.unwrap();
    tx.commit().await.unwrap();

    // Long enough that a claim on a loaded machine and a remote server does not outlast it.
    let lease = Duration::from_millis(1500);
    assert_eq!(
        store.claim_outbox("relay-a", lease, 0, 10).await.unwrap().len(),
        2
    );
    assert!(
        store
            .claim_outbox("relay-b", lease, 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "two relays hold the outbox"
    );
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let taken = store.claim_outbox("relay-b", lease, 0, 10).await.unwrap();
    assert_eq!(
        taken.len(),
        2,
        "after the lease expired, the second relay takes over"
    );
    assert!(store
        .claim_outbox("relay-a", lease, 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(
        store
            .mark_delivered("relay-a", &[taken[0].sequence])
            .await
            .is_err(),
        "a relay without the lease marked entries"
    );

    store.release_outbox("relay-b").await.unwrap();
    assert_eq!(
        store.claim_outbox("relay-a", lease, 0, 10).await.unwrap().len(),
        2,
        "a released lease is free at once"
    );
}

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
/// cannot prune says so with [`Error::Config`] (the bus then keeps every marker).
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
        Err(Error::Config(_)) => return, // the backend cannot prune
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

/// Dead letters are listed by group, replaced by id, and taken out once.
pub async fn dead_letters_are_kept_replaced_and_taken<S: Storage>(store: &S) {
    let letter = DeadLetter {
        id: Uuid::now_v7(),
        group: "crm".into(),
        envelope: event("u-1", 1),
        error: "CRM unreachable".into(),
        attempts: 3,
        failed_at: SystemTime::now(),
    };
    store.put(letter.clone()).await.unwrap();
    store
        .put(DeadLetter {
            id: Uuid::now_v7(),
            group: "mail".into(),
            ..letter.clone()
        })
        .await
        .unwrap();
    let crm = store.list(Some("crm")).await.unwrap();
    assert_eq!(crm.len(), 1);
    assert_eq!(crm[0].envelope, letter.envelope);
    assert_eq!(crm[0].error, "CRM unreachable");
    assert_eq!(crm[0].attempts, 3);

    store
        .put(DeadLetter {
            attempts: 6,
            error: "still down".into(),
            ..letter.clone()
        })
        .await
        .unwrap();
    let crm = store.list(Some("crm")).await.unwrap();
    assert_eq!(
        (crm.len(), crm[0].attempts, crm[0].error.as_str()),
        (1, 6, "still down")
    );

    assert_eq!(
        store.take(letter.id).await.unwrap().map(|l| l.id),
        Some(letter.id)
    );
    assert!(store.take(letter.id).await.unwrap().is_none());
    assert_eq!(store.list(None).await.unwrap().len(), 1);
}

/// Checkpoints read back what was saved last.
pub async fn checkpoints_are_saved<S: Storage>(store: &S) {
    assert_eq!(store.checkpoint("projection").await.unwrap(), None);
    store.save_checkpoint("projection", "41").await.unwrap();
    store.save_checkpoint("projection", "42").await.unwrap();
    assert_eq!(
        store.checkpoint("projection").await.unwrap().as_deref(),
        Some("42")
    );
}
