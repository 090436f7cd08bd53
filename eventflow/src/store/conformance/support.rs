//! What the conformance modules share: an event to write, and a look at the outbox through
//! a relay's feed.

use std::time::Duration;

use crate::store::{Fed, FeedSettings, OutboxEntry, OutboxStore};
use crate::Envelope;

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
