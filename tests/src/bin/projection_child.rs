//! The process the projection crash tests (`tests/tests/projections.rs`,
//! `tests/tests/mongo_projections.rs`) kill with SIGKILL in the middle of a catch-up or a
//! rebuild.
//!
//! `projection_child sqlite <file> <catch-up|rebuild>` or
//! `projection_child mongo <database> <catch-up|rebuild>`: starts a bus with the counting
//! projection of `eventflow_tests::projections`, prints `started`; with `rebuild`, rebuilds
//! it from the start and prints `rebuilding` once the reset committed; then waits until it
//! caught up and prints `done <position>`.

use std::io::Write;
use std::time::Duration;

use eventflow::store::SqliteStore;
use eventflow::{EventBus, EventBusBuilder};
use eventflow_mongo::{MongoStore, DEFAULT_URI};
use eventflow_tests::projections::{MongoCount, SqliteCount};

fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, backend, place, mode] = &args[..] else {
        return Err("usage: projection_child <sqlite|mongo> <file|database> <catch-up|rebuild>".into());
    };
    let builder: EventBusBuilder = match backend.as_str() {
        "sqlite" => EventBus::builder()
            .storage(
                SqliteStore::builder(place)
                    .busy_timeout(Duration::from_secs(30))
                    .open()
                    .await?,
            )
            .projection(SqliteCount),
        "mongo" => {
            let uri = std::env::var("MONGODB_URI").unwrap_or_else(|_| DEFAULT_URI.to_owned());
            EventBus::builder()
                .storage(MongoStore::connect(&uri, place).await?)
                .projection(MongoCount { print_sessions: true })
        }
        other => return Err(format!("unknown backend `{other}`").into()),
    };
    let bus = builder.start().await?;
    let counted = bus.projection("counted")?;
    say("started");
    // Retried as an application would: right after a crash the store may still be busy
    // with what the killed process left (a MongoDB transaction until its session ends).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let retry = |error: eventflow::Error| {
        eprintln!("retrying: {error}");
        if std::time::Instant::now() > deadline {
            eprintln!("giving up after 120 s");
            std::process::exit(2);
        }
        tokio::time::sleep(Duration::from_millis(100))
    };
    if mode == "rebuild" {
        while let Err(error) = counted.rebuild().await {
            retry(error).await;
        }
        say("rebuilding");
    }
    let progress = loop {
        match counted.caught_up().await {
            Ok(progress) => break progress,
            Err(error) => retry(error).await,
        }
    };
    say(&format!("done {}", progress.position));
    bus.shutdown().await;
    Ok(())
}
