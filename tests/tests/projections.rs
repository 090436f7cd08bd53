//! Projections on SQLite: catching up with existing events, following live commits,
//! rebuilding with progress, two runners of one projection, and a process killed with
//! SIGKILL in the middle of a catch-up and of a rebuild: every event counted exactly once.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use eventflow::projection::Phase;
use eventflow::store::{rusqlite, CheckpointStore, EventStore, ExpectedVersion, SqliteStore, Storage};
use eventflow::{Envelope, EventBus};
use eventflow_tests::projections::{SqliteCount, SQLITE_TABLE};
use eventflow_tests::{remove_db, temp_db, within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Commits `count` events in units of work of up to 500, over 10 streams.
async fn commit_events(store: &impl Storage, count: u64) {
    let mut left = count;
    while left > 0 {
        let n = left.min(500);
        let mut tx = store.begin().await.unwrap();
        for stream in 0..10 {
            let events: Vec<Envelope> = (0..n / 10 + u64::from(stream < n % 10))
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

/// How many times the read model counted each position.
fn counts(db: &Path) -> HashMap<u64, u64> {
    let sql = rusqlite::Connection::open(db).unwrap();
    let mut select = sql
        .prepare("SELECT position, COUNT(*) FROM counted GROUP BY position")
        .unwrap();
    let rows = select
        .query_map([], |row| {
            Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Checks that positions 1..=head were each counted exactly once; returns head.
async fn assert_each_event_counted_once(db: &Path) -> u64 {
    let head = SqliteStore::open(db)
        .await
        .unwrap()
        .head_position()
        .await
        .unwrap()
        .unwrap();
    let counts = counts(db);
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

async fn open(db: &Path) -> SqliteStore {
    let store = SqliteStore::open(db).await.unwrap();
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(SQLITE_TABLE)
        .unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_catches_up_then_follows_new_commits() {
    let db = temp_db();
    let store = open(&db).await;
    commit_events(&store, 1_234).await;

    let bus = EventBus::builder()
        .storage(store.clone())
        .projection(SqliteCount)
        .start()
        .await
        .unwrap();
    let counted = bus.projection("counted").unwrap();
    let progress = within(30, "the catch-up", counted.caught_up()).await.unwrap();
    assert_eq!((progress.position, progress.head), (1_234, Some(1_234)));
    assert_eq!(progress.remaining(), Some(0));
    assert_eq!(assert_each_event_counted_once(&db).await, 1_234);

    // New commits reach it without anyone asking.
    let mut watch = counted.watch();
    commit_events(&store, 66).await;
    within(
        10,
        "the projection to follow new commits",
        watch.wait_for(|p| p.position == 1_300),
    )
    .await
    .unwrap();
    assert_eq!(counted.progress().phase, Phase::Live);
    assert_eq!(assert_each_event_counted_once(&db).await, 1_300);
    bus.shutdown().await;
    assert_eq!(counted.progress().phase, Phase::Stopped);

    // Started again, it goes on from its checkpoint: nothing is counted twice.
    commit_events(&store, 10).await;
    let bus = EventBus::builder()
        .storage(store.clone())
        .projection(SqliteCount)
        .start()
        .await
        .unwrap();
    let progress = within(
        30,
        "the second catch-up",
        bus.projection("counted").unwrap().caught_up(),
    )
    .await
    .unwrap();
    assert_eq!((progress.position, progress.done), (1_310, 10));
    assert_eq!(assert_each_event_counted_once(&db).await, 1_310);
    bus.shutdown().await;
    remove_db(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_applies_the_events_again_and_reports_its_progress() {
    let db = temp_db();
    let store = open(&db).await;
    commit_events(&store, 2_000).await;
    let bus = EventBus::builder()
        .storage(store.clone())
        .projection(SqliteCount)
        .start()
        .await
        .unwrap();
    let counted = bus.projection("counted").unwrap();
    within(30, "the catch-up", counted.caught_up()).await.unwrap();

    let mut watch = counted.watch();
    counted.rebuild().await.unwrap();
    let mut seen = Vec::new();
    within(30, "the rebuild", async {
        loop {
            let progress = watch.borrow_and_update().clone();
            seen.push(progress.clone());
            if progress.phase == Phase::Live && progress.position == 2_000 {
                break;
            }
            watch.changed().await.unwrap();
        }
    })
    .await;
    let rebuilding: Vec<_> = seen.iter().filter(|p| p.phase == Phase::Rebuilding).collect();
    assert!(
        rebuilding.len() > 2,
        "the rebuild reported no progress along the way: {seen:?}"
    );
    assert!(rebuilding
        .windows(2)
        .all(|w| w[0].done <= w[1].done && w[0].position <= w[1].position));
    assert!(rebuilding
        .iter()
        .all(|p| p.head == Some(2_000) && p.remaining() == Some(2_000 - p.position)));
    let last = seen.last().unwrap();
    assert_eq!(last.done, 2_000, "a rebuild from the start applies every event");
    assert!(last.rate > 0.0);
    assert_eq!(assert_each_event_counted_once(&db).await, 2_000);

    // From a position: only what came after it is undone and applied again.
    counted.rebuild_from(1_500).await.unwrap();
    let progress = within(30, "the partial rebuild", counted.caught_up())
        .await
        .unwrap();
    assert_eq!((progress.position, progress.done), (2_000, 500));
    assert_eq!(assert_each_event_counted_once(&db).await, 2_000);
    bus.shutdown().await;
    remove_db(&db);
}

/// Two processes (here: two stores on one file, each with its own writer) running the same
/// projection share its checkpoint: each event is counted once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_of_one_projection_count_each_event_once() {
    let db = temp_db();
    let store = open(&db).await;
    let mut buses = Vec::new();
    for _ in 0..2 {
        let own = SqliteStore::open(&db).await.unwrap();
        buses.push(
            EventBus::builder()
                .storage(own)
                .projection(SqliteCount)
                .start()
                .await
                .unwrap(),
        );
    }
    for _ in 0..10 {
        commit_events(&store, 300).await;
    }
    for bus in &buses {
        let progress = within(30, "both runners", bus.projection("counted").unwrap().caught_up())
            .await
            .unwrap();
        assert_eq!(progress.position, 3_000);
    }
    assert_eq!(assert_each_event_counted_once(&db).await, 3_000);
    for bus in buses {
        bus.shutdown().await;
    }
    remove_db(&db);
}

#[tokio::test]
async fn a_projection_needs_storage_and_a_name_of_its_own() {
    let no_storage = EventBus::builder().projection(SqliteCount).start().await;
    assert!(
        matches!(&no_storage, Err(eventflow::Error::Config(m)) if m.contains("no storage")),
        "{no_storage:?}"
    );
    let twice = EventBus::builder()
        .storage(eventflow::MemoryStore::new())
        .projection(SqliteCount)
        .projection(SqliteCount)
        .start()
        .await;
    assert!(
        matches!(&twice, Err(eventflow::Error::Config(m)) if m.contains("two projections are named `counted`")),
        "{twice:?}"
    );
    let bus = EventBus::builder()
        .storage(eventflow::MemoryStore::new())
        .start()
        .await
        .unwrap();
    let missing = bus.projection("counted");
    assert!(matches!(missing, Err(eventflow::Error::Config(_))), "{missing:?}");
}

/// A checkpoint that is not a position stops the projection with an error that says what to
/// do; `caught_up` reports it, and a rebuild sets it right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_is_not_a_position_is_reported_and_a_rebuild_repairs_it() {
    let db = temp_db();
    let store = open(&db).await;
    commit_events(&store, 120).await;
    store
        .save_checkpoint("projection.counted", "forty-two")
        .await
        .unwrap();
    let bus = EventBus::builder()
        .storage(store.clone())
        .projection(SqliteCount)
        .start()
        .await
        .unwrap();
    let counted = bus.projection("counted").unwrap();
    let stuck = within(30, "caught_up to report the bad checkpoint", counted.caught_up()).await;
    assert!(
        matches!(&stuck, Err(e) if e.to_string().contains("holds `forty-two`, which is not an event position")),
        "{stuck:?}"
    );
    assert!(counted.progress().error.is_some_and(|e| e.contains("forty-two")));
    assert!(
        counts(&db).is_empty(),
        "the projection applied events from a checkpoint it could not read"
    );

    within(30, "the rebuild", counted.rebuild()).await.unwrap();
    let progress = within(30, "the catch-up after the rebuild", counted.caught_up())
        .await
        .unwrap();
    assert_eq!((progress.position, progress.error), (120, None));
    assert_eq!(assert_each_event_counted_once(&db).await, 120);
    bus.shutdown().await;
    remove_db(&db);
}

fn child(db: &Path, mode: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_projection_child"));
    command
        .arg("sqlite")
        .arg(db)
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    command
}

/// Runs the child in `mode`, kills it `delay` after it printed `after`; returns whether it
/// was killed before it finished.
async fn run_and_kill(db: &Path, mode: &str, after: &str, delay: Duration) -> bool {
    let mut process = child(db, mode).spawn().unwrap();
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    within(60, &format!("the child to print `{after}`"), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == after {
                return;
            }
        }
        panic!("the child ended before printing `{after}`");
    })
    .await;
    let finished = tokio::time::timeout(delay, async {
        while let Some(line) = lines.next_line().await.unwrap() {
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
    !finished
}

/// How long the child in `mode` takes from printing `after` to finishing, run to its end.
async fn time_to_finish(db: &Path, mode: &str, after: &str) -> Duration {
    let mut process = child(db, mode).spawn().unwrap();
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let mut started = None;
    within(60, &format!("the child to finish its {mode}"), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == after {
                started = Some(std::time::Instant::now());
            } else if line.starts_with("done") {
                return;
            }
        }
        panic!("the child ended without finishing its {mode}");
    })
    .await;
    let took = started
        .unwrap_or_else(|| panic!("the child finished without printing `{after}`"))
        .elapsed();
    process.wait().await.unwrap();
    took
}

async fn finish(db: &Path) -> u64 {
    let output = child(db, "catch-up").output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the last run failed: {}", output.status);
    let done = stdout
        .lines()
        .find_map(|l| l.strip_prefix("done "))
        .expect("the last run did not finish");
    done.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_in_the_middle_of_a_catch_up_it_counts_each_event_once() {
    const RUNS: u32 = 20;
    let db = temp_db();
    let store = open(&db).await;
    // Kills land within the first three quarters of a catch-up on 3,000 events as long as
    // this machine's: a fixed range of 0-100 ms left more than half of them after the end.
    commit_events(&store, 3_000).await;
    let catch_up = time_to_finish(&db, "catch-up", "started").await;
    let window = (catch_up.as_millis() as u64 * 3 / 4).max(1);
    let mut killed = 0;
    for _ in 0..RUNS {
        commit_events(&store, 3_000).await;
        let delay = Duration::from_millis(fastrand::u64(0..window));
        killed += u32::from(run_and_kill(&db, "catch-up", "started", delay).await);
    }
    let position = finish(&db).await;
    let head = assert_each_event_counted_once(&db).await;
    println!(
        "catch-up crash test: {RUNS} runs, catch-ups of {catch_up:?}, {killed} killed with SIGKILL \
         mid-way; {head} events counted once each"
    );
    assert_eq!(position, head);
    assert!(
        killed >= RUNS / 2,
        "only {killed} of {RUNS} runs were killed before they caught up"
    );
    remove_db(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_in_the_middle_of_a_rebuild_it_counts_each_event_once() {
    const RUNS: u32 = 12;
    let db = temp_db();
    let store = open(&db).await;
    commit_events(&store, 5_000).await;
    assert_eq!(finish(&db).await, 5_000);
    // Kills land within the first three quarters of a rebuild as long as this machine's:
    // a fixed range left most of them after the end on a fast machine.
    let rebuild = time_to_finish(&db, "rebuild", "rebuilding").await;
    let window = (rebuild.as_millis() as u64 * 3 / 4).max(1);
    let mut killed = 0;
    for _ in 0..RUNS {
        let delay = Duration::from_millis(fastrand::u64(0..window));
        killed += u32::from(run_and_kill(&db, "rebuild", "rebuilding", delay).await);
        let after_kill = counts(&db);
        assert!(
            after_kill.values().all(|&n| n == 1),
            "a killed rebuild left an event counted twice"
        );
    }
    // The last run does not rebuild again: it goes on from where the killed rebuild got.
    assert_eq!(finish(&db).await, 5_000);
    assert_eq!(assert_each_event_counted_once(&db).await, 5_000);
    println!("rebuild crash test: {RUNS} rebuilds of {rebuild:?}, {killed} killed with SIGKILL mid-way");
    assert!(
        killed >= RUNS / 2,
        "only {killed} of {RUNS} rebuilds were killed before they finished"
    );
    remove_db(&db);
}
