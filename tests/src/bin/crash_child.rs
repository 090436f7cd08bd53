//! The process the crash test kills: it commits orders with their `OrderPaid` events in
//! units of work on SQLite, and two transactional consumer groups record each order's
//! effect, while the parent sends SIGKILL at a random moment.
//!
//! `crash_child DB FIRST COUNT`: commits orders FIRST..FIRST+COUNT, then waits until every
//! committed event has been handled and prints `done`. With COUNT 0 it only finishes what
//! earlier (killed) runs left behind.

use std::time::Duration;

use eventflow::store::{rusqlite, SqliteStore, SqliteTransaction};
use eventflow::{subscribe, EventBus, InProcess, Tx};
use eventflow_tests::OrderPaid;

/// Records the effect of `event` for `group` in the handler's transaction: the row and the
/// inbox marker commit together or not at all.
async fn record_effect(group: &str, event: &OrderPaid, tx: &Tx) -> Result<(), String> {
    let mut tx = tx.lock().await;
    let sqlite = tx
        .downcast_mut::<SqliteTransaction>()
        .ok_or("the store is not SQLite")?;
    sqlite
        .connection()
        .execute(
            "INSERT INTO effects (grp, order_id) VALUES (?1, ?2)",
            (group, &event.order_id),
        )
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[subscribe(group = "ledger")]
async fn ledger(event: OrderPaid, tx: Tx) -> Result<(), String> {
    record_effect("ledger", &event, &tx).await
}

#[subscribe(group = "shipping")]
async fn shipping(event: OrderPaid, tx: Tx) -> Result<(), String> {
    record_effect("shipping", &event, &tx).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, first, count] = &args[..] else {
        return Err("usage: crash_child DB FIRST COUNT".into());
    };
    let (first, count): (u64, u64) = (first.parse()?, count.parse()?);

    let store = SqliteStore::open(path).await?;
    let sql = rusqlite::Connection::open(path)?;
    sql.busy_timeout(Duration::from_secs(10))?;
    sql.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY);
         CREATE TABLE IF NOT EXISTS effects (grp TEXT NOT NULL, order_id TEXT NOT NULL);",
    )?;

    let transport = InProcess::new();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .storage(store)
        .handler(ledger)
        .handler(shipping)
        .start()
        .await?;

    for n in first..first + count {
        let order = OrderPaid {
            order_id: format!("order-{n}"),
            seq: n,
        };
        let mut work = bus.begin().await?;
        let sqlite = work.transaction().downcast_mut::<SqliteTransaction>().unwrap();
        sqlite
            .connection()
            .execute("INSERT INTO orders (id) VALUES (?1)", [&order.order_id])?;
        work.publish(&order).await?;
        work.commit().await?;
    }

    loop {
        let backlog: i64 = sql.query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0))?;
        if backlog == 0 && transport.is_idle() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bus.shutdown().await;
    println!("done");
    Ok(())
}
