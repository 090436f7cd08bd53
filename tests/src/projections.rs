//! Projections the projection tests and their crash child share: each counts every event it
//! applies in the read model's own store, in the unit of work that saves its checkpoint, so
//! an event applied twice shows as a count of 2.

use eventflow::store::{rusqlite, SqliteTransaction, StoredEvent, Transaction};
use eventflow::{BoxError, Projection};
use eventflow_mongo::mongodb::bson::{doc, Bson, Document};
use eventflow_mongo::MongoTransaction;

/// The SQLite read model's table: one row per event applied.
pub const SQLITE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS counted (position INTEGER NOT NULL, stream TEXT NOT NULL)";

/// Counts events in the SQLite table `counted` ([`SQLITE_TABLE`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SqliteCount;

impl Projection for SqliteCount {
    const NAME: &'static str = "counted";
    // Small batches: many commits for a crash to fall between.
    const BATCH: usize = 50;

    async fn apply(&self, event: &StoredEvent, tx: &mut dyn Transaction) -> Result<(), BoxError> {
        let sqlite = tx
            .downcast_mut::<SqliteTransaction>()
            .ok_or("the store is not SQLite")?;
        sqlite
            .connection()
            .prepare_cached("INSERT INTO counted (position, stream) VALUES (?1, ?2)")?
            .execute(rusqlite::params![event.position as i64, event.stream])?;
        Ok(())
    }

    async fn reset(&self, from: u64, tx: &mut dyn Transaction) -> Result<(), BoxError> {
        let sqlite = tx
            .downcast_mut::<SqliteTransaction>()
            .ok_or("the store is not SQLite")?;
        sqlite
            .connection()
            .execute("DELETE FROM counted WHERE position > ?1", [from as i64])?;
        Ok(())
    }
}

/// Counts events in the MongoDB collection `counted`: `{ _id: position, applied: n }`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MongoCount {
    /// Print `session <hex>` for each unit of work, for a crash test to end the
    /// transactions a killed process left open.
    pub print_sessions: bool,
}

impl MongoCount {
    fn print_session(&self, mongo: &mut MongoTransaction) {
        if !self.print_sessions {
            return;
        }
        if let Some(Bson::Binary(id)) = mongo.session().id().get("id") {
            let hex: String = id.bytes.iter().map(|b| format!("{b:02x}")).collect();
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "session {hex}");
        }
    }
}

impl Projection for MongoCount {
    const NAME: &'static str = "counted";
    const BATCH: usize = 20;

    async fn apply(&self, event: &StoredEvent, tx: &mut dyn Transaction) -> Result<(), BoxError> {
        let mongo = tx
            .downcast_mut::<MongoTransaction>()
            .ok_or("the store is not MongoDB")?;
        let counted = mongo.collection::<Document>("counted");
        counted
            .update_one(
                doc! { "_id": event.position as i64 },
                doc! { "$inc": { "applied": 1 } },
            )
            .upsert(true)
            .session(mongo.session())
            .await?;
        self.print_session(mongo);
        Ok(())
    }

    async fn reset(&self, from: u64, tx: &mut dyn Transaction) -> Result<(), BoxError> {
        let mongo = tx
            .downcast_mut::<MongoTransaction>()
            .ok_or("the store is not MongoDB")?;
        let counted = mongo.collection::<Document>("counted");
        counted
            .delete_many(doc! { "_id": { "$gt": from as i64 } })
            .session(mongo.session())
            .await?;
        self.print_session(mongo);
        Ok(())
    }
}
