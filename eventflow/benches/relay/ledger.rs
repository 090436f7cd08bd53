//! The ledger P5 (c0) and (c) write: one row per event, inserted by a handler in a unit of
//! work of its own or in the guarded one, and by the breakdown's plain rusqlite.

use eventflow::store::{rusqlite, SqliteStore, SqliteTransaction, Storage};
use eventflow::{subscribe, BoxError, State, Tx};
use rusqlite::{params, Connection};

use crate::fixture::{Handled, OrderPaid};

pub const CREATE_LEDGER: &str =
    "CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, order_id TEXT NOT NULL, amount INTEGER NOT NULL)";
const INSERT_LEDGER: &str = "INSERT INTO ledger (order_id, amount) VALUES (?1, ?2)";

pub fn book(connection: &Connection, event: &OrderPaid) -> rusqlite::Result<()> {
    connection
        .prepare_cached(INSERT_LEDGER)?
        .execute(params![event.order_id, event.total_amount as i64])?;
    Ok(())
}

/// P5 (c): the insert in the handler's unit of work, which also holds the inbox marker.
#[subscribe(group = "ledger")]
pub async fn book_in_tx(event: OrderPaid, tx: Tx, State(handled): State<Handled>) -> Result<(), BoxError> {
    {
        let mut tx = tx.lock().await;
        let sqlite = tx
            .downcast_mut::<SqliteTransaction>()
            .expect("a SqliteStore unit of work");
        book(sqlite.connection(), &event)?;
    }
    handled.count(&event);
    Ok(())
}

/// The store P5 (c0) writes its ledger rows to, without the bus knowing.
#[derive(Clone)]
pub struct Ledger(pub SqliteStore);

/// P5 (c0): the same insert in a unit of work of its own, no guard.
#[subscribe(group = "ledger")]
pub async fn book_alone(
    event: OrderPaid,
    State(ledger): State<Ledger>,
    State(handled): State<Handled>,
) -> Result<(), BoxError> {
    let mut tx = ledger.0.begin().await?;
    let sqlite = tx
        .downcast_mut::<SqliteTransaction>()
        .expect("a SqliteStore unit of work");
    book(sqlite.connection(), &event)?;
    tx.commit().await?;
    handled.count(&event);
    Ok(())
}
