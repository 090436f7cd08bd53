//! A handler's `Tx` typed as the storage's own transaction (`Tx<SqliteTransaction>`), `?`
//! on rusqlite errors, and `start()` refusing a `Tx` of another backend.

use std::time::Duration;

use eventflow::store::{SqliteStore, SqliteTransaction, Storage};
use eventflow::{subscribe, Backoff, EventBus, InProcess, MemoryStore, Tx};
use eventflow_tests::{remove_db, temp_db, within, OrderPaid};

const LEDGER: &str = "CREATE TABLE ledger (order_id TEXT NOT NULL, seq INTEGER NOT NULL)";

#[subscribe(group = "ledger")]
async fn book(order: OrderPaid, tx: Tx<SqliteTransaction>) -> Result<(), eventflow::Error> {
    let tx = tx.lock().await;
    tx.connection().execute(
        "INSERT INTO ledger (order_id, seq) VALUES (?1, ?2)",
        (&order.order_id, order.seq as i64),
    )?;
    if order.seq == 13 {
        // A statement that fails: its rusqlite error goes up with `?`.
        tx.connection()
            .execute("INSERT INTO no_such_table VALUES (1)", ())?;
    }
    Ok(())
}

/// Plain `Tx` still works on any storage, with the `Transaction` methods.
#[subscribe(group = "streams")]
async fn append(order: OrderPaid, tx: Tx) -> Result<(), eventflow::Error> {
    let mut tx = tx.lock().await;
    tx.append(&order.order_id, eventflow::store::ExpectedVersion::Any, &[])
        .await?;
    Ok(())
}

async fn ledger(store: &SqliteStore) -> Vec<(String, i64)> {
    let mut tx = store.begin().await.unwrap();
    let sqlite = tx.downcast_mut::<SqliteTransaction>().unwrap();
    let mut select = sqlite
        .connection()
        .prepare("SELECT order_id, seq FROM ledger ORDER BY seq")
        .unwrap();
    let rows = select
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_tx_gives_the_sqlite_transaction_and_question_mark_works_on_its_errors() {
    let path = temp_db();
    let store = SqliteStore::open(&path).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.downcast_mut::<SqliteTransaction>()
        .unwrap()
        .connection()
        .execute_batch(LEDGER)
        .unwrap();
    tx.commit().await.unwrap();
    let transport = InProcess::new();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(store.clone())
        .backoff(Backoff::exponential(
            Duration::from_millis(1),
            Duration::from_millis(2),
        ))
        .retries(1)
        .handler(book)
        .handler(append)
        .start()
        .await
        .unwrap();
    let mut work = bus.begin().await.unwrap();
    for seq in [1, 13, 2] {
        work.publish(&OrderPaid {
            order_id: format!("order-{seq}"),
            seq,
        })
        .await
        .unwrap();
    }
    work.commit().await.unwrap();
    within(10, "the dead letter of order 13", async {
        while bus.dead_letters(Some("ledger")).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    within(10, "the groups to finish", transport.wait_idle()).await;
    assert_eq!(
        ledger(&store).await,
        [("order-1".to_owned(), 1), ("order-2".to_owned(), 2)],
        "the failed handler's insert was rolled back with it"
    );
    let letter = &bus.dead_letters(Some("ledger")).await.unwrap()[0];
    assert!(
        letter.error.contains("no such table: no_such_table"),
        "rusqlite's message: {}",
        letter.error
    );
    assert_eq!(letter.attempts, 2);
    assert!(
        bus.dead_letters(Some("streams")).await.unwrap().is_empty(),
        "the plain `Tx` handler ran on the same bus"
    );
    bus.shutdown().await;
    remove_db(&path);
}

#[tokio::test]
async fn a_tx_of_another_backend_fails_start_naming_both_types() {
    let error = EventBus::builder()
        .transport(InProcess::new())
        .storage(MemoryStore::new())
        .handler(book)
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("handler `"), "{error}");
    assert!(error.contains("book"), "names the handler: {error}");
    assert!(
        error.contains("Tx<eventflow::store::sqlite::SqliteTransaction>"),
        "{error}"
    );
    assert!(
        error.contains("MemoryTransaction"),
        "names the storage's type: {error}"
    );
    // Plain `Tx` takes any storage.
    let bus = EventBus::builder()
        .transport(InProcess::new())
        .storage(MemoryStore::new())
        .handler(append)
        .start()
        .await
        .unwrap();
    bus.shutdown().await;
}
