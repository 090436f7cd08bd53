//! Projections on MongoDB: catching up with existing events, following live commits,
//! rebuilding, and a process killed with SIGKILL in the middle of a catch-up and of a
//! rebuild: every event counted exactly once.

mod mongo_support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use eventflow::projection::Phase;
use eventflow::store::{EventStore, ExpectedVersion, Storage};
use eventflow::{Envelope, EventBus};
use eventflow_mongo::mongodb::bson::{doc, Document};
use eventflow_mongo::MongoStore;
use eventflow_tests::projections::MongoCount;
use eventflow_tests::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Commits `count` events in units of work of up to 100, over 5 streams.
async fn commit_events(store: &MongoStore, count: u64) {
    let mut left = count;
    while left > 0 {
        let n = left.min(100);
        let mut tx = store.begin().await.unwrap();
        for stream in 0..5 {
            let events: Vec<Envelope> = (0..n / 5 + u64::from(stream < n % 5))
                .map(|i| {
                    Envelope::new(
                        "order.placed",
                        1,
                        "orders",
                        "application/json",
                        format!("{{\"n\":{i}}}"),
                    )
                })
                .collect();
            if !events.is_empty() {
                tx.append(&format!("order-{stream}"), ExpectedVersion::Any, &events)
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
        left -= n;
    }
}

/// Checks that positions 1..=head were each counted exactly once; returns head.
async fn assert_each_event_counted_once(store: &MongoStore) -> u64 {
    let head = store.head_position().await.unwrap().unwrap();
    let mut cursor = store
        .database()
        .collection::<Document>("counted")
        .find(doc! {})
        .await
        .unwrap();
    let mut counts: HashMap<u64, i64> = HashMap::new();
    while cursor.advance().await.unwrap() {
        let doc = cursor.deserialize_current().unwrap();
        let position = doc.get_i64("_id").unwrap() as u64;
        let applied = doc
            .get_i32("applied")
            .map(i64::from)
            .or_else(|_| doc.get_i64("applied"))
            .unwrap();
        counts.insert(position, applied);
    }
    let lost = (1..=head).filter(|p| !counts.contains_key(p)).count();
    let doubled = counts.values().filter(|&&n| n > 1).count();
    let phantom = counts.keys().filter(|&&p| p == 0 || p > head).count();
    assert_eq!(
        (lost, doubled, phantom),
        (0, 0, 0),
        "of {head} events: lost, counted more than once, counted without an event"
    );
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_catches_up_follows_and_rebuilds() {
    let store = mongo_support::store().await;
    commit_events(&store, 250).await;
    let bus = EventBus::builder()
        .storage(store.clone())
        .projection(MongoCount::default())
        .start()
        .await
        .unwrap();
    let counted = bus.projection("counted").unwrap();
    let progress = within(60, "the catch-up", counted.caught_up()).await.unwrap();
    assert_eq!((progress.position, progress.head), (250, Some(250)));
    assert_eq!(assert_each_event_counted_once(&store).await, 250);

    let mut watch = counted.watch();
    commit_events(&store, 30).await;
    within(
        20,
        "the projection to follow new commits",
        watch.wait_for(|p| p.position == 280),
    )
    .await
    .unwrap();
    assert_eq!(counted.progress().phase, Phase::Live);

    counted.rebuild().await.unwrap();
    let progress = within(60, "the rebuild", counted.caught_up()).await.unwrap();
    assert_eq!((progress.position, progress.done), (280, 280));
    assert_eq!(assert_each_event_counted_once(&store).await, 280);
    bus.shutdown().await;
}

/// Kills the sessions with these ids (hex), aborting the transactions a killed process left
/// open, as the server does by itself after `transactionLifetimeLimitSeconds` (60 s).
async fn end_sessions(store: &MongoStore, sessions: &[String]) {
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

fn child(database: &str, mode: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_projection_child"));
    command
        .args(["mongo", database, mode])
        .env("MONGODB_URI", mongo_support::uri())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs the child, kills it `delay` after it printed `after`, ends the sessions it left;
/// returns whether it was killed before it finished.
async fn run_and_kill(store: &MongoStore, database: &str, mode: &str, after: &str, delay: Duration) -> bool {
    let mut process = child(database, mode).spawn().unwrap();
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let mut sessions = Vec::new();
    within(90, &format!("the child to print `{after}`"), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(session) = line.strip_prefix("session ") {
                sessions.push(session.to_owned());
            }
            if line == after {
                return;
            }
        }
        panic!("the child ended before printing `{after}`");
    })
    .await;
    let finished = tokio::time::timeout(delay, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(session) = line.strip_prefix("session ") {
                sessions.push(session.to_owned());
            }
            if line.starts_with("done") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    process.start_kill().unwrap(); // SIGKILL
    process.wait().await.unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(session) = line.strip_prefix("session ") {
            sessions.push(session.to_owned());
        }
    }
    sessions.sort();
    sessions.dedup();
    end_sessions(store, &sessions).await;
    !finished
}

async fn finish(database: &str) -> u64 {
    let output = child(database, "catch-up").output().await.unwrap();
    assert!(output.status.success(), "the last run failed: {}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let done = stdout
        .lines()
        .find_map(|l| l.strip_prefix("done "))
        .expect("the last run did not finish");
    done.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_in_the_middle_of_a_catch_up_or_a_rebuild_it_counts_each_event_once() {
    const RUNS: u32 = 8;
    let database = mongo_support::unique_database();
    let store = mongo_support::store_in(&database).await;
    let mut killed_catching_up = 0;
    for _ in 0..RUNS {
        commit_events(&store, 150).await;
        let delay = Duration::from_millis(fastrand::u64(0..200));
        killed_catching_up += u32::from(run_and_kill(&store, &database, "catch-up", "started", delay).await);
    }
    assert_eq!(finish(&database).await, u64::from(RUNS) * 150);
    assert_each_event_counted_once(&store).await;

    let mut killed_rebuilding = 0;
    for _ in 0..RUNS {
        let delay = Duration::from_millis(fastrand::u64(0..300));
        killed_rebuilding += u32::from(run_and_kill(&store, &database, "rebuild", "rebuilding", delay).await);
    }
    let position = finish(&database).await;
    let head = assert_each_event_counted_once(&store).await;
    println!(
        "mongo projection crash test: {RUNS} catch-ups ({killed_catching_up} killed mid-way), \
         {RUNS} rebuilds ({killed_rebuilding} killed mid-way); {head} events counted once each"
    );
    assert_eq!(position, head);
    assert!(
        killed_catching_up >= RUNS / 2 && killed_rebuilding >= RUNS / 2,
        "too few runs were killed mid-way to prove anything"
    );
}
