//! What the conformance modules share: events to write, looks at the outbox through a
//! relay's feed, and a transport that records what a relay sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::store::{Fed, FeedSettings, OutboxEntry, OutboxFeed, OutboxStore, Storage};
use crate::transport::{Consumer, Transport};
use crate::{Envelope, Error};

/// A JSON event `{"n":n}` of key `key`.
pub(super) fn event(key: &str, n: u32) -> Envelope {
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

/// Every undelivered outbox entry, as a feed of a new relay hands it out; the feed is
/// closed without marking any delivered.
pub(super) async fn outbox_entries<S: OutboxStore + ?Sized>(store: &S) -> Vec<OutboxEntry> {
    let mut feed = store
        .open_outbox("conformance-look", FeedSettings::default())
        .await
        .expect("the outbox opens for a relay");
    let mut entries = Vec::new();
    loop {
        // A feed says when it caught up; one that has nothing to say for this long found
        // nothing more.
        match tokio::time::timeout(Duration::from_secs(3), feed.next()).await {
            Ok(Ok(Fed::Entries {
                entries: more,
                caught_up,
            })) => {
                entries.extend(more);
                if caught_up.is_some() {
                    break;
                }
            }
            Ok(Ok(Fed::StandingBy(lease))) => {
                panic!("the outbox is held by `{}`, no other relay runs", lease.holder)
            }
            Ok(Err(error)) => panic!("reading the outbox failed: {error}"),
            Err(_) => break,
        }
    }
    feed.close().await.expect("the outbox lease is given up");
    entries
}

/// Commits `count` events of keys `k0`..`k6`, one unit of work each, numbered from `first`;
/// returns their ids in commit order.
pub(super) async fn commit_events<S: Storage>(store: &S, first: u32, count: u32) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for n in first..first + count {
        let envelope = event(&format!("k{}", n % 7), n);
        ids.push(envelope.id);
        let mut tx = store.begin().await.unwrap();
        tx.enqueue(&[envelope]).await.unwrap();
        tx.commit().await.unwrap();
    }
    ids
}

/// Takes entries from `feed` until it handed out `count`, within `secs` seconds.
pub(super) async fn take_entries(feed: &mut dyn OutboxFeed, count: usize, secs: u64) -> Vec<OutboxEntry> {
    let mut entries = Vec::new();
    let taking = async {
        while entries.len() < count {
            match feed.next().await.expect("the feed hands out entries") {
                Fed::Entries { entries: more, .. } => entries.extend(more),
                Fed::StandingBy(lease) => {
                    panic!(
                        "the feed stands by for `{}` while it should deliver",
                        lease.holder
                    )
                }
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(secs), taking)
        .await
        .is_err()
    {
        panic!(
            "the feed handed out {} of {count} entries in {secs} s",
            entries.len()
        );
    }
    entries
}

/// Asserts that `feed` hands out no entry for half a second.
pub(super) async fn assert_no_more(feed: &mut dyn OutboxFeed, why: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(fed) = tokio::time::timeout_at(deadline, feed.next()).await {
        match fed.expect("the feed waits") {
            Fed::Entries { entries, .. } => assert!(entries.is_empty(), "{why}: {entries:?}"),
            Fed::StandingBy(lease) => panic!("{why}: the feed stands by for `{}`", lease.holder),
        }
    }
}

/// Ids of entries.
pub(super) fn ids(entries: &[OutboxEntry]) -> Vec<Uuid> {
    entries.iter().map(|entry| entry.envelope.id).collect()
}

/// A durable transport that keeps what it was given, for relays under test.
#[derive(Clone, Default)]
pub(super) struct Recording(pub(super) Arc<Mutex<Vec<Envelope>>>);

#[async_trait]
impl Transport for Recording {
    async fn publish(&self, envelope: Envelope) -> Result<(), Error> {
        self.0.lock().unwrap().push(envelope);
        Ok(())
    }

    async fn subscribe(&self, _group: &str, _topics: &[&str]) -> Result<Box<dyn Consumer>, Error> {
        Err(Error::Unsupported(
            "the conformance transport only records".into(),
        ))
    }
}
