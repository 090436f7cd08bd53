//! Crash test: a process is killed with SIGKILL between committing units of work and
//! delivering their events, again and again; in the end every committed order has had its
//! effect exactly once.

mod mongo_support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use eventflow_mongo::mongodb::bson::{doc, Document};
use eventflow_tests::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

mod read {
    use eventflow_mongo::mongodb::bson::Document;
    use eventflow_mongo::mongodb::Collection;

    /// Every document of `collection`.
    pub async fn collect_all(collection: &Collection<Document>) -> Vec<Document> {
        let mut cursor = collection.find(Default::default()).await.unwrap();
        let mut docs = Vec::new();
        while cursor.advance().await.unwrap() {
            docs.push(cursor.deserialize_current().unwrap());
        }
        docs
    }
}

const ORDERS_PER_RUN: u64 = 8;

/// An event for `store` to enqueue.
fn event(n: u32) -> eventflow::Envelope {
    eventflow::Envelope::new(
        "order.paid",
        1,
        "orders",
        "application/json",
        format!("{{\"n\":{n}}}").into_bytes(),
    )
}

/// Enqueues one event in a unit of work of its own.
async fn enqueue_one(store: &eventflow_mongo::MongoStore, n: u32) -> Result<(), eventflow::Error> {
    use eventflow::store::Storage;
    let mut work = store.begin().await?;
    work.enqueue(&[event(n)]).await?;
    work.commit().await
}

/// What a process killed in the middle of a commit leaves behind: its transaction, open on
/// the server and holding the event counter. A unit of work that publishes meanwhile fails
/// after its retries, and its error names that cause and what ends it; once the dead
/// transaction ends, publishing goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_of_work_held_up_by_a_dead_process_s_transaction_says_so_and_goes_through_after() {
    let database = mongo_support::unique_database();
    let client = mongo_support::client().await;
    let store = eventflow_mongo::MongoStore::builder(client.clone(), &database)
        .transaction_retries(2)
        .open()
        .await
        .expect("the store opens");
    enqueue_one(&store, 1)
        .await
        .expect("the first event, which creates the counter");

    // The dead process: a transaction that wrote the counter and never committed.
    let mut dead = client.start_session().await.unwrap();
    dead.start_transaction().await.unwrap();
    store
        .database()
        .collection::<Document>(&store.collection_names().counters)
        .update_one(doc! {}, doc! { "$set": { "held_by": "a process that died" } })
        .session(&mut dead)
        .await
        .unwrap();

    let error = enqueue_one(&store, 2)
        .await
        .expect_err("the counter is held by an open transaction");
    let message = error.to_string();
    assert!(matches!(error, eventflow::Error::Transient(_)), "{error:?}");
    assert!(
        message.contains("a process died in the middle of a commit")
            && message.contains("transactionLifetimeLimitSeconds")
            && message.contains("killSessions"),
        "the error should name the dead transaction and what ends it: {message}"
    );

    // What the server does after `transactionLifetimeLimitSeconds`.
    dead.abort_transaction().await.unwrap();
    enqueue_one(&store, 3).await.expect("the counter is free again");
}

/// Kills the sessions with these ids (hex), aborting their open transactions.
async fn end_sessions(store: &eventflow_mongo::MongoStore, sessions: &[String]) {
    use eventflow_mongo::mongodb::bson::spec::BinarySubtype;
    use eventflow_mongo::mongodb::bson::{Binary, Bson};
    let ids: Vec<Bson> = sessions
        .iter()
        .map(|hex| {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            Bson::Document(doc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes } })
        })
        .collect();
    if !ids.is_empty() {
        store
            .client()
            .database("admin")
            .run_command(doc! { "killSessions": ids })
            .await
            .unwrap();
    }
}

fn child(database: &str, run: &str, orders: u64) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mongo_crash_child"));
    command
        .args([database, run, &orders.to_string()])
        .env("MONGODB_URI", mongo_support::uri())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_process_between_commit_and_delivery_loses_and_doubles_nothing() {
    let runs: u64 = std::env::var("CRASH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let database = mongo_support::unique_database();
    let store = mongo_support::store_in(&database).await;
    let leases = store
        .database()
        .collection::<Document>(&store.collection_names().leases);

    let mut kills_after_commit = 0;
    for run in 0..runs {
        let mut process = child(&database, &format!("r{run}"), ORDERS_PER_RUN)
            .spawn()
            .expect("the crash child did not start");
        let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
        // Kill right after the k-th commit, after a varying delay: in the middle of the
        // relay's delivery, of the handler's transaction, or of the next commit.
        let kill_after = run % ORDERS_PER_RUN + 1;
        let delay = Duration::from_millis((run * 7) % 40);
        let mut committed = 0;
        let mut sessions = Vec::new();
        within(90, "the child's commits", async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(session) = line.strip_prefix("session ") {
                    sessions.push(session.to_owned());
                }
                if line.starts_with("committed ") {
                    committed += 1;
                    if committed == kill_after {
                        break;
                    }
                }
            }
        })
        .await;
        tokio::time::sleep(delay).await;
        process.start_kill().unwrap();
        process.wait().await.unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(session) = line.strip_prefix("session ") {
                sessions.push(session.to_owned());
            }
        }
        kills_after_commit += u64::from(committed == kill_after);
        // These two stand for waiting, to keep the test short: for the server to abort the
        // transactions the dead process left open (transactionLifetimeLimitSeconds, 60 s),
        // and for the dead relay's lease to expire (10 s).
        // (A relay transaction the dead process left open holds the lease document until
        // the server aborts it: then the lease just expires.)
        end_sessions(&store, &sessions).await;
        let expire = leases.update_many(doc! {}, doc! { "$set": { "expires_at": 0_i64 } });
        let _ = tokio::time::timeout(Duration::from_secs(1), expire).await;
    }

    let drained = child(&database, "final", 0)
        .stdout(Stdio::null())
        .status()
        .await
        .expect("the final child did not start");

    let orders = read::collect_all(&store.database().collection("orders")).await;
    let effects = read::collect_all(&store.database().collection("effects")).await;
    let applied: HashMap<String, i64> = effects
        .iter()
        .map(|e| {
            let count = e
                .get_i32("applied")
                .map(i64::from)
                .or_else(|_| e.get_i64("applied"))
                .unwrap();
            (e.get_str("_id").unwrap().to_owned(), count)
        })
        .collect();
    let committed: Vec<String> = orders
        .iter()
        .map(|o| o.get_str("_id").unwrap().to_owned())
        .collect();
    let lost = committed.iter().filter(|id| !applied.contains_key(*id)).count();
    let doubled = applied.values().filter(|&&n| n > 1).count();
    let phantom = applied.keys().filter(|id| !committed.contains(id)).count();
    println!(
        "mongo crash test: {runs} runs killed with SIGKILL ({kills_after_commit} right after a \
         commit), {} orders committed, {lost} lost, {doubled} doubled, {phantom} effects \
         without an order",
        committed.len()
    );
    assert!(
        drained.success(),
        "the final process could not drain the outbox: {drained}"
    );
    assert_eq!((lost, doubled, phantom), (0, 0, 0));
    assert!(
        committed.len() as u64 >= runs,
        "too few orders committed to prove anything"
    );
}
