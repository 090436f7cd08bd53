//! What the MongoDB tests share: a store in a database of its own, on the server at
//! `MONGODB_URI`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow::store::{Fed, FeedSettings, OutboxEntry, OutboxFeed, OutboxStore};
use eventflow_mongo::mongodb::options::ClientOptions;
use eventflow_mongo::mongodb::Client;
use eventflow_mongo::{MongoStore, DEFAULT_URI};

/// The server the tests run against.
pub fn uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| DEFAULT_URI.to_owned())
}

/// What every test database's name starts with.
const PREFIX: &str = "eventflow_test_";

/// Test databases older than this are dropped by the next test run.
const KEEP_FOR: Duration = Duration::from_secs(3600);

/// A database name no other test or test run uses: `eventflow_test_<unix secs>_<pid>_<n>`.
pub fn unique_database() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{PREFIX}{}_{}_{}",
        unix_secs(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Drops the test databases earlier runs left more than an hour ago, once per test process,
/// so that running the suite against a real deployment does not pile them up. A database
/// still in use by a running test is younger than that.
async fn drop_stale_databases(client: &Client) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(names) = client.list_database_names().await else {
        return;
    };
    let cutoff = unix_secs().saturating_sub(KEEP_FOR.as_secs());
    for name in names {
        let created = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| created < cutoff) {
            let _ = client.database(&name).drop().await;
        }
    }
}

/// A client that gives up quickly when there is no server.
pub async fn client() -> Client {
    let uri = uri();
    let mut options = ClientOptions::parse(&uri)
        .await
        .unwrap_or_else(|e| panic!("MONGODB_URI `{uri}` is not a MongoDB URI: {e}"));
    options.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(options).unwrap()
}

/// A store in a fresh database; fails the test with what to do if there is no server.
pub async fn store() -> MongoStore {
    store_in(&unique_database()).await
}

/// A store in `database`.
pub async fn store_in(database: &str) -> MongoStore {
    let client = client().await;
    drop_stale_databases(&client).await;
    MongoStore::builder(client, database)
        .open()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need a MongoDB replica set at MONGODB_URI (now `{}`); scripts/test \
                 starts one. The store could not open: {e}",
                uri()
            )
        })
}

/// How long a test waits for a relay's feed to hand something out.
const FEED_WAIT: Duration = Duration::from_secs(10);

/// Opens `relay`'s outbox feed on `store`, handing out at most `batch` entries at a time,
/// with a lease of 5 s.
pub async fn open_feed(store: &MongoStore, relay: &str, batch: usize) -> Box<dyn OutboxFeed> {
    let settings = FeedSettings {
        lease: Duration::from_secs(5),
        batch,
        ..FeedSettings::default()
    };
    store.open_outbox(relay, settings).await.unwrap()
}

/// What the feed hands out next: a batch of entries, or none when it only reports that it
/// caught up. Fails the test if another relay holds the lease, or nothing comes.
pub async fn next_batch(feed: &mut dyn OutboxFeed) -> Vec<OutboxEntry> {
    match tokio::time::timeout(FEED_WAIT, feed.next()).await {
        Ok(Ok(Fed::Entries { entries, .. })) => entries,
        Ok(Ok(Fed::StandingBy(lease))) => panic!("the feed stands by for {}", lease.holder),
        Ok(Err(error)) => panic!("the feed failed: {error}"),
        Err(_) => panic!("the feed handed nothing out within {FEED_WAIT:?}"),
    }
}

/// Every entry the feed hands out until it has caught up with the commits made through
/// its store so far.
pub async fn handed(feed: &mut dyn OutboxFeed) -> Vec<OutboxEntry> {
    let mut handed = Vec::new();
    loop {
        match tokio::time::timeout(FEED_WAIT, feed.next()).await {
            Ok(Ok(Fed::Entries { entries, caught_up })) => {
                handed.extend(entries);
                if caught_up.is_some() {
                    return handed;
                }
            }
            Ok(Ok(Fed::StandingBy(lease))) => panic!("the feed stands by for {}", lease.holder),
            Ok(Err(error)) => panic!("the feed failed: {error}"),
            Err(_) => panic!("the feed did not catch up within {FEED_WAIT:?}; it handed out {handed:?}"),
        }
    }
}

/// The sequences of `entries`.
pub fn sequences(entries: &[OutboxEntry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.sequence).collect()
}
