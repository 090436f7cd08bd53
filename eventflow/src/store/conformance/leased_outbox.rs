//! The outbox of a row store ([`LeasedOutbox`]): commit order, and one
//! relay at a time under a lease.

use std::time::Duration;

use super::support::event;
use crate::store::{LeasedOutbox, Storage};

/// Outbox entries come out in commit order, from after a given sequence, and leave once
/// marked delivered.
pub async fn the_outbox_yields_entries_in_commit_order<S: Storage + LeasedOutbox>(store: &S) {
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
pub async fn only_one_relay_claims_the_outbox_until_its_lease_expires<S: Storage + LeasedOutbox>(store: &S) {
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
