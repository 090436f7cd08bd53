//! A handler's `Tx<MongoTransaction>` on MongoDB (`MONGODB_URI`): the application's write
//! in the handler's transaction, `?` on the driver's errors, and a failed attempt rolled
//! back with its marker. The handlers of orders 1, 2 and 13 run concurrently, and their
//! transactions all create the `ledger` collection: MongoDB aborts all but one with a
//! write conflict (`TransientTransactionError`), which the bus runs again without spending
//! the one retry, so only order 13's own duplicate key makes a dead letter.

mod mongo_support;

use std::time::Duration;

use eventflow::{subscribe, Backoff, EventBus, InProcess, Tx};
use eventflow_mongo::mongodb::bson::{doc, Document};
use eventflow_mongo::MongoTransaction;
use eventflow_tests::{within, OrderPaid};

#[subscribe(group = "ledger")]
async fn book(order: OrderPaid, tx: Tx<MongoTransaction>) -> Result<(), eventflow::Error> {
    let mut tx = tx.lock().await;
    let ledger = tx.collection::<Document>("ledger");
    ledger
        .insert_one(doc! { "_id": &order.order_id, "seq": order.seq as i64 })
        .session(tx.session())
        .await?;
    if order.seq == 13 {
        // A second document with the same `_id`: the driver's duplicate-key error, via `?`.
        ledger
            .insert_one(doc! { "_id": &order.order_id })
            .session(tx.session())
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_tx_gives_the_mongo_transaction_and_question_mark_works_on_driver_errors() {
    let store = mongo_support::store().await;
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
    within(30, "the dead letter of order 13", async {
        while bus.dead_letters(Some("ledger")).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let ledger = store.database().collection::<Document>("ledger");
    let ids = || async {
        let mut ids: Vec<String> = ledger
            .distinct("_id", doc! {})
            .await
            .unwrap()
            .into_iter()
            .map(|id| id.as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let booked = tokio::time::timeout(Duration::from_secs(30), async {
        while ids().await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if booked.is_err() {
        let letters: Vec<_> = bus
            .dead_letters(Some("ledger"))
            .await
            .unwrap()
            .into_iter()
            .map(|letter| (letter.envelope.key, letter.error))
            .collect();
        panic!(
            "orders 1 and 2 not booked within 30 s; booked: {:?}; dead letters: {letters:?}",
            ids().await
        );
    }
    within(30, "the group to finish", transport.wait_idle()).await;
    assert_eq!(
        ids().await,
        ["order-1", "order-2"],
        "the failed attempts' inserts were rolled back"
    );
    let letter = &bus.dead_letters(Some("ledger")).await.unwrap()[0];
    assert!(
        letter.attempts >= 2,
        "the first try and one retry, and any run again after a conflict: {}",
        letter.attempts
    );
    assert!(
        letter.error.to_lowercase().contains("duplicate key"),
        "the driver's message: {}",
        letter.error
    );
    bus.shutdown().await;
}
