//! Takeover after a crash on SQLite: a process holding the outbox lease is killed with
//! SIGKILL; the process started next on the same file takes the lease over at once (its
//! predecessor's process is provably gone) instead of waiting the 10 s of the dead relay's
//! lease, and hands its first committed event to its handler within a second.

use std::time::Duration;

use eventflow::store::rusqlite;
use eventflow_tests::{kill_and_restart, remove_db, restart, temp_db, CapturedLog};

const CHILD: &str = env!("CARGO_BIN_EXE_takeover_child");

#[test]
fn after_kill_9_the_restarted_process_handles_its_first_commit_within_a_second() {
    let db = temp_db();
    let path = db.to_str().unwrap();
    for run in 0..3 {
        let takeover = kill_and_restart(CHILD, ["sqlite", path]);
        println!("run {run}: {takeover:?}");
        assert!(
            takeover.after_commit <= Duration::from_secs(1),
            "run {run}: the first event committed after the restart was handled {:?} after its \
             commit (the dead relay's lease is 10 s)",
            takeover.after_commit
        );
    }
    remove_db(&db);
}

#[test]
fn a_lease_held_by_a_relay_on_another_host_is_waited_for_then_taken() {
    let db = temp_db();
    let path = db.to_str().unwrap();
    // A first run creates the schema.
    restart(CHILD, ["sqlite", path]);
    let sql = rusqlite::Connection::open(&db).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let expires = (now + Duration::from_secs(2)).as_nanos() as i64;
    sql.execute(
        "INSERT OR REPLACE INTO outbox_lease (id, holder, expires_at) VALUES (1, ?1, ?2)",
        ("relay-x@another-host pid=1 start=1 boot=b pidns=1", expires),
    )
    .unwrap();
    let takeover = restart(CHILD, ["sqlite", path]);
    assert!(
        takeover.after_start >= Duration::from_millis(1500),
        "a live relay's lease (on another host) was taken before it ran out: {takeover:?}"
    );
    assert!(
        takeover.after_start < Duration::from_secs(5),
        "the lease ran out after 2 s but the event was handled only after {takeover:?}"
    );
    remove_db(&db);
}

#[tokio::test]
async fn a_relay_that_finds_the_outbox_held_says_so_once_naming_the_holder_and_until_when() {
    let (log, _logging) = CapturedLog::start();

    let db = temp_db();
    let store = eventflow::store::SqliteStore::open(&db).await.unwrap();
    let holder = "relay-x@another-host pid=1 start=1 boot=b pidns=1";
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + Duration::from_secs(30);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT OR REPLACE INTO outbox_lease (id, holder, expires_at) VALUES (1, ?1, ?2)",
            (holder, expires.as_nanos() as i64),
        )
        .unwrap();
    let bus = eventflow::EventBus::builder()
        .storage(store)
        .relay(eventflow::RelaySettings::default().poll_interval(Duration::from_millis(50)))
        .shutdown_timeout(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    // Ten polls or so.
    tokio::time::sleep(Duration::from_millis(600)).await;
    bus.shutdown().await;
    let logged = log.text();
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("another relay holds the outbox lease"))
        .collect();
    assert_eq!(lines.len(), 1, "not logged once: {logged}");
    assert!(
        lines[0].contains(holder) && lines[0].contains("until="),
        "{}",
        lines[0]
    );
    remove_db(&db);
}
