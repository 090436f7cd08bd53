//! MongoDB's outbox feed as a relay uses it: woken by the change stream rather than by
//! polling, one relay at a time under the lease (the other standing by, told once), a
//! relay that lost the lease told so when it marks entries delivered, rewinding, and the
//! commit count it caught up with.

mod mongo_support;

use std::time::Duration;

use eventflow::store::{ExpectedVersion, Fed, FeedSettings, OutboxFeed, OutboxStore, Storage};
use eventflow::Envelope;
use eventflow_mongo::MongoStore;
use mongo_support::{handed, next_batch, open_feed, sequences};

fn event(n: u32) -> Envelope {
    Envelope::new(
        "order.placed",
        1,
        "orders",
        "application/json",
        format!("{{\"n\":{n}}}"),
    )
}

async fn commit(store: &MongoStore, events: &[Envelope]) {
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(events).await.unwrap();
    tx.commit().await.unwrap();
}

async fn feed_with(
    store: &MongoStore,
    relay: &str,
    lease: Duration,
    poll_interval: Duration,
) -> Box<dyn OutboxFeed> {
    let settings = FeedSettings {
        lease,
        batch: 100,
        poll_interval,
    };
    store.open_outbox(relay, settings).await.unwrap()
}

#[tokio::test]
async fn a_commit_of_another_process_wakes_the_feed_through_the_change_stream() {
    let database = mongo_support::unique_database();
    let relaying = mongo_support::store_in(&database).await;
    let committing = mongo_support::store_in(&database).await;
    // A poll interval far past the test: only the change stream can wake it.
    let mut feed = feed_with(
        &relaying,
        "relay",
        Duration::from_secs(30),
        Duration::from_secs(60),
    )
    .await;
    assert!(handed(&mut *feed).await.is_empty());

    let sent = event(1);
    let started = std::time::Instant::now();
    commit(&committing, std::slice::from_ref(&sent)).await;
    let entries = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match feed.next().await.unwrap() {
                Fed::Entries { entries, .. } if !entries.is_empty() => return entries,
                _ => {}
            }
        }
    })
    .await
    .expect("the commit of the other handle never reached the feed");
    assert_eq!(entries.iter().map(|e| &e.envelope).collect::<Vec<_>>(), [&sent]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the entry took {:?}: the feed polled instead of following the stream",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_second_relay_stands_by_once_and_takes_over_when_the_first_closes() {
    let store = mongo_support::store().await;
    let sent = event(1);
    commit(&store, std::slice::from_ref(&sent)).await;
    let mut first = open_feed(&store, "first", 10).await;
    let handed_first = handed(&mut *first).await;
    assert_eq!(handed_first.len(), 1);

    let poll = Duration::from_millis(50);
    let mut second = feed_with(&store, "second", Duration::from_secs(5), poll).await;
    match second.next().await.unwrap() {
        Fed::StandingBy(lease) => assert_eq!(lease.holder, "first"),
        other => panic!("the second relay did not stand by: {other:?}"),
    }
    // Told once: polling the lease goes on without telling it again.
    let again = tokio::time::timeout(poll * 10, second.next()).await;
    assert!(again.is_err(), "the second relay reported again: {again:?}");

    // Closed without marking it delivered: the entry comes to the next relay.
    first.close().await.unwrap();
    let taken = tokio::time::timeout(Duration::from_secs(5), handed(&mut *second))
        .await
        .expect("the second relay did not take over once the first closed");
    assert_eq!(taken.iter().map(|e| &e.envelope).collect::<Vec<_>>(), [&sent]);
}

#[tokio::test]
async fn a_relay_that_lost_the_lease_is_told_when_it_marks_and_its_entries_come_again() {
    let store = mongo_support::store().await;
    let sent: Vec<Envelope> = (1..=2).map(event).collect();
    commit(&store, &sent).await;
    let lease = Duration::from_millis(300);
    let mut slow = feed_with(&store, "slow", lease, Duration::from_millis(50)).await;
    let entries = handed(&mut *slow).await;
    assert_eq!(entries.len(), 2);

    // The slow relay's lease runs out; another takes the outbox over.
    tokio::time::sleep(lease * 2).await;
    let mut next = open_feed(&store, "next", 10).await;
    let taken = handed(&mut *next).await;
    assert_eq!(
        taken.iter().map(|e| &e.envelope).collect::<Vec<_>>(),
        sent.iter().collect::<Vec<_>>()
    );

    let error = slow
        .delivered(&sequences(&entries))
        .await
        .expect_err("a relay that lost the lease marked entries delivered")
        .to_string();
    assert!(
        error.contains("lost the outbox lease"),
        "unhelpful error: {error}"
    );
    next.delivered(&sequences(&taken)).await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), 0);
}

#[tokio::test]
async fn rewinding_hands_out_again_what_was_not_delivered() {
    let store = mongo_support::store().await;
    let sent: Vec<Envelope> = (1..=3).map(event).collect();
    commit(&store, &sent).await;
    let mut feed = open_feed(&store, "relay", 10).await;
    let entries = handed(&mut *feed).await;
    assert_eq!(entries.len(), 3);
    feed.delivered(&[entries[0].sequence]).await.unwrap();

    feed.rewind();
    let again = handed(&mut *feed).await;
    assert_eq!(
        again,
        entries[1..],
        "a rewind must hand out what was not delivered, once"
    );
    feed.delivered(&sequences(&again)).await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), 0);
}

#[tokio::test]
async fn the_feed_reports_the_commit_count_it_caught_up_with() {
    let store = mongo_support::store().await;
    let mut feed = open_feed(&store, "relay", 2).await;
    let nothing = next_batch(&mut *feed).await;
    assert!(nothing.is_empty());

    commit(&store, &(1..=3).map(event).collect::<Vec<_>>()).await;
    // An append with no outbox entry counts as a commit too.
    let mut tx = store.begin().await.unwrap();
    tx.append("order-1", ExpectedVersion::NoStream, &[event(9)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Two commits, and whatever the change stream counted of them already.
    let committed = *store.commit_signal().borrow();
    assert!(committed >= 2);

    let mut entries = Vec::new();
    let caught_up = loop {
        match tokio::time::timeout(Duration::from_secs(5), feed.next()).await {
            Ok(Ok(Fed::Entries {
                entries: batch,
                caught_up,
            })) => {
                entries.extend(batch);
                if let Some(count) = caught_up {
                    break count;
                }
            }
            other => panic!("the feed did not catch up: {other:?}"),
        }
    };
    assert_eq!(entries.len(), 3, "caught up before handing out every entry");
    assert!(
        caught_up >= committed,
        "caught up with {caught_up}, not the {committed} commits"
    );
}

#[tokio::test]
async fn the_feed_hands_out_entries_in_commit_order_each_once() {
    let store = mongo_support::store().await;
    let mut sent = Vec::new();
    for n in 0..20 {
        let mut envelope = event(n);
        envelope.key = Some(format!("k{}", n % 3));
        sent.push(envelope.id);
        commit(&store, &[envelope]).await;
    }
    let mut feed = open_feed(&store, "relay", 8).await;
    let first = next_batch(&mut *feed).await;
    assert_eq!(first.iter().map(|e| e.envelope.id).collect::<Vec<_>>(), sent[..8]);
    assert!(first.windows(2).all(|w| w[0].sequence < w[1].sequence));
    // Not delivered yet: the next batches go on past them.
    let second = next_batch(&mut *feed).await;
    assert_eq!(
        second.iter().map(|e| e.envelope.id).collect::<Vec<_>>(),
        sent[8..16]
    );
    feed.delivered(&sequences(&first)).await.unwrap();
    let rest = handed(&mut *feed).await;
    assert_eq!(rest.iter().map(|e| e.envelope.id).collect::<Vec<_>>(), sent[16..]);
}
