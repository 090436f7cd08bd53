//! The process the takeover tests (`tests/takeover.rs`, `tests/mongo_takeover.rs`) and the
//! takeover bench kill with SIGKILL and start again.
//!
//! `takeover_child <sqlite PATH | mongo DATABASE> hold`: starts a bus whose relay takes the
//! outbox lease, prints `holding <relay id>` once the lease is its, and runs until killed.
//!
//! `takeover_child <sqlite PATH | mongo DATABASE> commit`: starts a bus on the same store,
//! commits one order in a unit of work, waits for its handler to run and prints
//! `handled <ms after the commit> <ms after the start>`, then shuts down. Exits with status
//! 2 if the handler has not run after 30 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::store::SqliteStore;
use eventflow::{subscribe, EventBus, State, Storage};
use eventflow_mongo::{MongoStore, DEFAULT_URI};
use eventflow_tests::OrderPaid;
use tokio::sync::Notify;

#[subscribe(group = "ledger")]
async fn book(_event: OrderPaid, State(handled): State<Arc<Notify>>) -> Result<(), std::io::Error> {
    handled.notify_one();
    Ok(())
}

async fn run(store: impl Storage + Clone, mode: &str, started: Instant) {
    let handled = Arc::new(Notify::new());
    let bus = EventBus::builder()
        .storage(store.clone())
        .state(handled.clone())
        .handler(book)
        .start()
        .await
        .expect("the bus starts");
    match mode {
        "hold" => loop {
            if let Ok(Some(lease)) = store.outbox_lease().await {
                println!("holding {}", lease.holder);
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        },
        "commit" => {
            let mut work = bus.begin().await.expect("a unit of work begins");
            work.publish(&OrderPaid {
                order_id: "after-restart".into(),
                seq: 1,
            })
            .await
            .expect("the event is put in the outbox");
            work.commit().await.expect("the unit of work commits");
            let committed = Instant::now();
            if tokio::time::timeout(Duration::from_secs(30), handled.notified())
                .await
                .is_err()
            {
                eprintln!("the handler did not run within 30 s of the commit");
                std::process::exit(2);
            }
            println!(
                "handled {} {}",
                committed.elapsed().as_millis(),
                started.elapsed().as_millis()
            );
            bus.shutdown().await;
        }
        other => panic!("unknown mode `{other}`: use hold or commit"),
    }
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    let [_, kind, location, mode] = &args[..] else {
        eprintln!("usage: takeover_child <sqlite PATH | mongo DATABASE> <hold | commit>");
        std::process::exit(64);
    };
    match kind.as_str() {
        "sqlite" => {
            run(
                SqliteStore::open(location).await.expect("the SQLite file opens"),
                mode,
                started,
            )
            .await
        }
        "mongo" => {
            let uri = std::env::var("MONGODB_URI").unwrap_or_else(|_| DEFAULT_URI.to_owned());
            let store = MongoStore::connect(&uri, location)
                .await
                .unwrap_or_else(|e| panic!("no MongoDB at {uri}: {e}"));
            run(store, mode, started).await
        }
        other => panic!("unknown store `{other}`: use sqlite or mongo"),
    }
}
