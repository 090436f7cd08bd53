//! What the store needs of the server before it opens: a replica set or mongos, and
//! eventflow's collections and indexes (created if missing, idempotently).

use eventflow::Error;
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use crate::client::Inner;
use crate::document::field;
use crate::error::backend;

/// Fails with a clear message unless the server is reachable and can run transactions
/// and change streams (a replica set member or mongos).
pub(crate) async fn check_server(inner: &Inner) -> Result<(), Error> {
    let hello = inner
        .database
        .run_command(doc! { "hello": 1 })
        .await
        .map_err(|e| backend("connecting to the server", e))?;
    let replica_set = hello.get_str("setName").is_ok();
    let mongos = hello.get_str("msg").is_ok_and(|msg| msg == "isdbgrid");
    if !replica_set && !mongos {
        return Err(Error::backend(
            "the MongoDB server is a standalone server; eventflow-mongo needs a replica set \
             or sharded cluster, because units of work are transactions and the relay \
             follows a change stream. A single-node replica set will do: start mongod with \
             `--replSet rs0` and run `rs.initiate()` once",
        ));
    }
    Ok(())
}

/// Creates eventflow's indexes and collections unless they exist.
pub(crate) async fn create_indexes(inner: &Inner) -> Result<(), Error> {
    let unique = |keys: Document, name: &str| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().unique(true).name(name.to_owned()).build())
            .build()
    };
    let indexes = [
        (
            &inner.events,
            unique(doc! { "stream": 1, "version": 1 }, "stream_version"),
        ),
        (
            &inner.inbox,
            unique(doc! { "group": 1, field::EVENT_ID: 1 }, "group_event_id"),
        ),
        (
            &inner.dead_letters,
            IndexModel::builder()
                .keys(doc! { "group": 1, "added_at": 1 })
                .options(IndexOptions::builder().name("group_added_at".to_owned()).build())
                .build(),
        ),
    ];
    for (collection, index) in indexes {
        collection
            .create_index(index)
            .await
            .map_err(|e| backend(&format!("creating the indexes of `{}`", collection.name()), e))?;
    }
    // Transactions cannot create collections on servers before 4.4, and a collection
    // created implicitly inside concurrent transactions makes them conflict: create
    // every collection up front. "Already exists" (48) is what a second instance sees.
    let existing = inner
        .database
        .list_collection_names()
        .await
        .map_err(|e| backend("listing collections", e))?;
    let names = &inner.names;
    for name in [&names.outbox, &names.checkpoints, &names.leases, &names.counters] {
        if existing.contains(name) {
            continue;
        }
        if let Err(e) = inner.database.create_collection(name).await {
            if crate::error::code(&e) != Some(48) {
                return Err(backend(&format!("creating the collection `{name}`"), e));
            }
        }
    }
    Ok(())
}
