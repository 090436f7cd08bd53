//! The process the MongoDB crash test (`tests/tests/mongo_crash.rs`) kills with SIGKILL.
//!
//! `mongo_crash_child <database> <run> <orders>` commits `orders` orders, each a unit of
//! work with the order document and its `OrderPaid` event, printing `committed <id>` after
//! each commit; a bus with the MongoDB storage relays the events to a handler that counts
//! its effect in the same transaction as its inbox marker. Then it waits until every order
//! of the database has its effect and the outbox is empty, prints `drained`, and exits; or
//! exits with status 2 if that takes more than two minutes.
//!
//! It prints `session <hex>` with the session id of each transaction it starts, so that the
//! test can end the transactions a killed process left open, as the server does by itself
//! after `transactionLifetimeLimitSeconds` (60 s).

use std::time::{Duration, Instant};

use eventflow::{subscribe, Backoff, EventBus, Tx};
use eventflow_mongo::mongodb::bson::{doc, Bson, Document};
use eventflow_mongo::mongodb::ClientSession;
use eventflow_mongo::{MongoStore, MongoTransaction, DEFAULT_URI};
use eventflow_tests::OrderPaid;

/// The effect: one increment per handling. Doubled effects show as `applied: 2`.
#[subscribe(group = "ledger", retries = 200)]
async fn book(event: OrderPaid, tx: Tx) -> Result<(), String> {
    let mut tx = tx.lock().await;
    let mongo = tx.downcast_mut::<MongoTransaction>().unwrap();
    print_session(mongo.session());
    mongo
        .collection::<Document>("effects")
        .update_one(doc! { "_id": &event.order_id }, doc! { "$inc": { "applied": 1 } })
        .upsert(true)
        .session(mongo.session())
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Prints a line for the test, ignoring a closed pipe (the test may stop reading).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn print_session(session: &ClientSession) {
    if let Some(Bson::Binary(id)) = session.id().get("id") {
        let hex: String = id.bytes.iter().map(|b| format!("{b:02x}")).collect();
        say(&format!("session {hex}"));
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, database, run, orders] = &args[..] else {
        eprintln!("usage: mongo_crash_child <database> <run> <orders>");
        std::process::exit(64);
    };
    let orders: u64 = orders.parse().expect("orders is a number");
    let uri = std::env::var("MONGODB_URI").unwrap_or_else(|_| DEFAULT_URI.to_owned());
    let store = MongoStore::connect(&uri, database)
        .await
        .unwrap_or_else(|e| panic!("no MongoDB at {uri}: {e}"));
    let bus = EventBus::builder()
        .storage(store.clone())
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_secs(1),
        ))
        .handler(book)
        .start()
        .await
        .unwrap();

    let order_docs = store.database().collection::<Document>("orders");
    for seq in 0..orders {
        let id = format!("{run}-{seq}");
        // A unit of work that wrote through its session cannot be replayed by eventflow
        // after a transient error: run it again, as an application would.
        loop {
            let attempt = async {
                let mut work = bus.begin().await?;
                let mongo = work.transaction().downcast_mut::<MongoTransaction>().unwrap();
                order_docs
                    .insert_one(doc! { "_id": &id })
                    .session(mongo.session())
                    .await
                    .map_err(eventflow::Error::backend)?;
                // Again: a new client knows the session's id only once it has used it.
                print_session(mongo.session());
                work.publish(&OrderPaid {
                    order_id: id.clone(),
                    seq,
                })
                .await?;
                work.commit().await
            };
            match attempt.await {
                Ok(()) => break,
                Err(error) => {
                    eprintln!("committing {id} failed, again: {error}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        say(&format!("committed {id}"));
    }

    let effects = store.database().collection::<Document>("effects");
    let started = Instant::now();
    loop {
        let committed = order_docs.count_documents(doc! {}).await.unwrap();
        let applied = effects.count_documents(doc! {}).await.unwrap();
        let waiting = store.outbox_backlog().await.unwrap();
        if applied >= committed && waiting == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            eprintln!(
                "not drained after 120 s: {committed} orders, {applied} effects, {waiting} in the outbox"
            );
            std::process::exit(2);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bus.shutdown().await;
    say("drained");
}
