//! What the MongoDB tests share: a store in a database of its own, on the server at
//! `MONGODB_URI`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow_mongo::mongodb::options::ClientOptions;
use eventflow_mongo::mongodb::Client;
use eventflow_mongo::{MongoStore, DEFAULT_URI};

/// The server the tests run against.
pub fn uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| DEFAULT_URI.to_owned())
}

/// A database name no other test or test run uses.
pub fn unique_database() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!(
        "eventflow_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000_000
    )
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
    MongoStore::builder(client().await, database)
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
