//! The outbox as a relay reads it ([`OutboxStore::open_outbox`](crate::store::OutboxStore::open_outbox)
//! and its [`OutboxFeed`](crate::store::OutboxFeed)), on any backend: commit order in
//! batches, at-least-once delivery that never repeats a delivered entry, one relay at a
//! time under the lease with takeover, progress for `settled`, cancel safety.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::watch;
use uuid::Uuid;

use super::support::{assert_no_more, commit_events, ids, take_entries, Recording};
use crate::store::{Fed, FeedSettings, Storage};
use crate::Relay;

/// Feed settings of the tests: batches of 8, polling often.
fn settings(lease: Duration) -> FeedSettings {
    FeedSettings {
        lease,
        batch: 8,
        poll_interval: Duration::from_millis(100),
    }
}

/// A relay's feed hands out the committed entries in commit order, in batches of at most
/// the batch size (a full one while more wait).
pub async fn the_feed_hands_out_entries_in_commit_order_in_batches<S: Storage>(store: &S) {
    let sent = commit_events(store, 0, 20).await;
    let mut feed = store
        .open_outbox("relay", settings(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut batches = Vec::new();
    let mut out = Vec::new();
    while out.len() < sent.len() {
        let more = take_entries(&mut *feed, 1, 10).await;
        assert!(more.len() <= 8, "a batch of {} with batch size 8", more.len());
        batches.push(more.len());
        out.extend(more);
    }
    assert_eq!(
        batches[0], 8,
        "the first batch, with 20 entries waiting: {batches:?}"
    );
    assert_eq!(ids(&out), sent, "entries out of commit order or repeated");
    assert!(
        out.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "sequences do not increase"
    );
    feed.close().await.unwrap();
}

/// Entries marked delivered are never handed out again: not after a rewind, not to the
/// next relay; the others are, to the next relay.
pub async fn delivered_entries_never_come_back<S: Storage>(store: &S) {
    let sent = commit_events(store, 0, 6).await;
    let mut first = store
        .open_outbox("relay-a", settings(Duration::from_secs(10)))
        .await
        .unwrap();
    let out = take_entries(&mut *first, 6, 10).await;
    let sequences: Vec<u64> = out[..3].iter().map(|entry| entry.sequence).collect();
    first.delivered(&sequences).await.unwrap();
    first.rewind();
    assert_eq!(
        ids(&take_entries(&mut *first, 3, 10).await),
        sent[3..],
        "after a rewind, the feed handed out a delivered entry, or not the others"
    );
    first.close().await.unwrap();

    let mut next = store
        .open_outbox("relay-b", settings(Duration::from_secs(10)))
        .await
        .unwrap();
    let rest = take_entries(&mut *next, 3, 10).await;
    assert_eq!(
        ids(&rest),
        sent[3..],
        "the next relay got a delivered entry, or not the others"
    );
    assert_no_more(&mut *next, "the next relay got more than the undelivered entries").await;
    next.close().await.unwrap();
}

/// [`rewind`](crate::store::OutboxFeed::rewind) hands out again, in order, what was handed
/// out and not delivered; once all is delivered, nothing.
pub async fn rewinding_hands_out_again_what_is_not_delivered<S: Storage>(store: &S) {
    let sent = commit_events(store, 0, 5).await;
    let mut feed = store
        .open_outbox("relay", settings(Duration::from_secs(10)))
        .await
        .unwrap();
    let out = take_entries(&mut *feed, 5, 10).await;
    assert_eq!(ids(&out), sent);
    feed.rewind();
    let again = take_entries(&mut *feed, 5, 10).await;
    assert_eq!(
        ids(&again),
        sent,
        "a rewind did not hand the undelivered entries out again"
    );
    let sequences: Vec<u64> = again.iter().map(|entry| entry.sequence).collect();
    feed.delivered(&sequences).await.unwrap();
    feed.rewind();
    assert_no_more(&mut *feed, "a rewind handed out delivered entries").await;
    feed.close().await.unwrap();
}

/// An entry handed out and not delivered can be read again, whole (the relay reads back the
/// one the transport refused, to dead-letter it), and the feed goes on after it.
pub async fn a_handed_out_entry_can_be_read_again<S: Storage>(store: &S) {
    let sent = commit_events(store, 0, 3).await;
    let mut feed = store
        .open_outbox("relay", settings(Duration::from_secs(10)))
        .await
        .unwrap();
    let out = take_entries(&mut *feed, 3, 10).await;
    assert_eq!(ids(&out), sent);
    let again = feed.reread(out[1].sequence).await.unwrap();
    assert_eq!(again.as_ref(), Some(&out[1]), "reading a handed-out entry again");
    let sequences: Vec<u64> = out.iter().map(|entry| entry.sequence).collect();
    feed.delivered(&sequences).await.unwrap();
    assert_no_more(
        &mut *feed,
        "the feed handed out an entry again after reading it again",
    )
    .await;
    feed.close().await.unwrap();
}

/// While one relay's feed holds the outbox, a second stands by, saying once which relay
/// holds it; when the first closes, the second takes over at once (long before the lease
/// would have run out) and hands out what was not delivered.
pub async fn a_second_feed_stands_by_then_takes_over_when_the_first_closes<S: Storage>(store: &S) {
    let sent = commit_events(store, 0, 2).await;
    let lease = Duration::from_secs(60);
    let mut first = store.open_outbox("relay-a", settings(lease)).await.unwrap();
    assert_eq!(ids(&take_entries(&mut *first, 2, 10).await), sent);
    let mut second = store.open_outbox("relay-b", settings(lease)).await.unwrap();
    assert_stands_by_for(&mut *second, "relay-a").await;
    assert_no_more(
        &mut *second,
        "the second feed handed out entries under the first's lease",
    )
    .await;
    // A relay stopping amid a claim: the claim must not take the lease again after close.
    assert!(
        !matches!(first.next().now_or_never(), Some(Ok(Fed::Entries { entries, .. })) if !entries.is_empty()),
        "the first feed handed its entries out twice"
    );
    first.close().await.unwrap();
    assert_eq!(
        ids(&take_entries(&mut *second, 2, 5).await),
        sent,
        "the second feed did not take over at once from a closed one"
    );
    second.close().await.unwrap();
}

/// A feed whose relay stopped without closing it (it died) holds the outbox until its lease
/// runs out; then the feed standing by takes over and hands out what was not delivered.
pub async fn a_second_feed_takes_over_when_the_lease_runs_out<S: Storage>(store: &S) {
    let sent = commit_events(store, 0, 2).await;
    // Long enough that the first claims on a loaded machine and a remote server do not
    // outlast it.
    let lease = Duration::from_secs(3);
    let mut first = store.open_outbox("relay-a", settings(lease)).await.unwrap();
    assert_eq!(ids(&take_entries(&mut *first, 2, 10).await), sent);
    let died = Instant::now();
    drop(first);
    let mut second = store.open_outbox("relay-b", settings(lease)).await.unwrap();
    assert_stands_by_for(&mut *second, "relay-a").await;
    let taken = take_entries(&mut *second, 2, 3 + 10).await;
    assert_eq!(
        ids(&taken),
        sent,
        "after the lease ran out, the second feed takes over"
    );
    assert!(
        died.elapsed() >= lease / 2,
        "the second feed took the outbox {:?} after the first's last claim, within its lease of {lease:?}",
        died.elapsed()
    );
    second.close().await.unwrap();
}

/// The feed reports, as `caught_up`, the commit count through which it handed everything
/// out: it reaches the count of the commits made, before and after the feed opened.
pub async fn caught_up_reaches_the_commit_count<S: Storage>(store: &S) {
    // More than a batch: a full batch does not catch up.
    let mut sent = commit_events(store, 0, 20).await;
    let mut feed = store
        .open_outbox("relay", settings(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut out = Vec::new();
    for round in 0..2 {
        if round == 1 {
            sent.extend(commit_events(store, 20, 3).await);
        }
        let target = *store.commit_signal().borrow();
        let catching_up = async {
            loop {
                match feed.next().await.expect("the feed hands out entries") {
                    Fed::Entries { entries, caught_up } => {
                        out.extend(entries);
                        if caught_up.is_some_and(|through| through >= target) {
                            break;
                        }
                    }
                    Fed::StandingBy(lease) => panic!("no other relay runs, yet `{}` holds it", lease.holder),
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), catching_up)
            .await
            .is_err()
        {
            panic!("the feed did not report caught up with commit {target} within 10 s");
        }
        assert_eq!(
            ids(&out),
            sent,
            "caught up with commit {target} before handing its entries out"
        );
    }
    feed.close().await.unwrap();
}

/// A `next` future dropped before it completes (the relay was told to stop, or a select
/// took another branch) loses no entry and repeats none.
pub async fn a_dropped_next_loses_nothing<S: Storage>(store: &S) {
    let mut sent = commit_events(store, 0, 3).await;
    let mut feed = store
        .open_outbox("relay", settings(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut out = Vec::new();
    // Polled once and dropped: at once, or amid a claim.
    for _ in 0..3 {
        if let Some(fed) = feed.next().now_or_never() {
            if let Fed::Entries { entries, .. } = fed.unwrap() {
                out.extend(entries);
            }
        }
    }
    out.extend(take_entries(&mut *feed, sent.len() - out.len(), 10).await);
    // Dropped while it waits for commits.
    for _ in 0..3 {
        if let Ok(Ok(Fed::Entries { entries, .. })) =
            tokio::time::timeout(Duration::from_millis(50), feed.next()).await
        {
            out.extend(entries);
        }
    }
    sent.extend(commit_events(store, 3, 2).await);
    out.extend(take_entries(&mut *feed, sent.len() - out.len(), 10).await);
    assert_eq!(ids(&out), sent, "a dropped next lost or repeated entries");
    feed.close().await.unwrap();
}

/// Two relays on one store (here two handles of it) deliver each committed entry once,
/// and in commit order per key, whichever holds the outbox lease.
pub async fn two_relays_deliver_each_entry_once_in_order_per_key<S: Storage + Clone>(store: &S) {
    let transport = Recording::default();
    let (stop, shutdown) = watch::channel(false);
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let relay = Relay::new(Arc::new(store.clone()), Arc::new(transport.clone()))
                .poll_interval(Duration::from_millis(50));
            tokio::spawn(relay.run(shutdown.clone()))
        })
        .collect();
    let sent = commit_events(store, 0, 200).await;
    let delivered = async {
        while transport.0.lock().unwrap().len() < sent.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(15), delivered)
        .await
        .is_err()
    {
        panic!(
            "the relays delivered {} of {} entries in 15 s",
            transport.0.lock().unwrap().len(),
            sent.len()
        );
    }
    stop.send_replace(true);
    for relay in relays {
        relay.await.unwrap();
    }
    let seen = transport.0.lock().unwrap().clone();
    let mut once: Vec<_> = seen.iter().map(|envelope| envelope.id).collect();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), seen.len(), "an entry was relayed twice");
    assert_eq!(seen.len(), sent.len(), "an entry was lost");
    for key in (0..7).map(|k| format!("k{k}")) {
        let relayed: Vec<Uuid> = seen
            .iter()
            .filter(|envelope| envelope.key.as_deref() == Some(&*key))
            .map(|envelope| envelope.id)
            .collect();
        let committed: Vec<Uuid> = (0u32..)
            .zip(&sent)
            .filter(|(n, _)| format!("k{}", n % 7) == key)
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(relayed, committed, "key {key} relayed out of commit order");
    }
}

/// An entry the backend cannot read whole comes flagged ([`OutboxEntry::corrupt`](crate::store::OutboxEntry::corrupt)),
/// with its event id, and its neighbours come as they are. `corrupt` breaks the oldest
/// undelivered entry in the backend's own way (a column of the wrong type, ...): not in
/// [`storage_conformance!`](crate::storage_conformance), since only the backend's test
/// knows how.
pub async fn a_corrupt_entry_comes_flagged<S, F, Fut>(store: &S, corrupt: F)
where
    S: Storage,
    F: FnOnce(&S) -> Fut,
    Fut: Future<Output = ()>,
{
    let sent = commit_events(store, 0, 3).await;
    corrupt(store).await;
    let mut feed = store
        .open_outbox("relay", settings(Duration::from_secs(10)))
        .await
        .unwrap();
    let out = take_entries(&mut *feed, 3, 10).await;
    assert_eq!(
        ids(&out),
        sent,
        "the corrupt entry lost its event id, or its neighbours are missing"
    );
    assert!(
        out[0].corrupt.is_some(),
        "the broken entry came unflagged: {:?}",
        out[0]
    );
    assert!(
        out[1..].iter().all(|entry| entry.corrupt.is_none()),
        "a neighbour of the broken entry came flagged"
    );
    feed.close().await.unwrap();
}

/// Asserts that `feed` reports standing by for `holder` before anything else.
async fn assert_stands_by_for(feed: &mut dyn crate::store::OutboxFeed, holder: &str) {
    match tokio::time::timeout(Duration::from_secs(5), feed.next()).await {
        Ok(Ok(Fed::StandingBy(lease))) => assert_eq!(lease.holder, holder, "the feed names another holder"),
        Ok(Ok(Fed::Entries { entries, caught_up })) => panic!(
            "while `{holder}` holds the outbox, a second feed handed out {} entries (caught up {caught_up:?}) \
             instead of standing by",
            entries.len()
        ),
        Ok(Err(error)) => panic!("the second feed failed: {error}"),
        Err(_) => panic!("the second feed did not report standing by within 5 s"),
    }
}
