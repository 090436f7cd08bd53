//! Takeover after a crash on MongoDB: a process holding the outbox lease is killed with
//! SIGKILL; the process started next on the same database takes the lease over at once and
//! hands its first committed event to its handler within a second.

mod mongo_support;

use std::time::Duration;

use eventflow_tests::kill_and_restart;

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_the_restarted_process_handles_its_first_commit_within_a_second() {
    let database = mongo_support::unique_database();
    // Fails with what to do when there is no server.
    let store = mongo_support::store_in(&database).await;
    for run in 0..3 {
        let database = database.clone();
        let takeover = tokio::task::spawn_blocking(move || {
            kill_and_restart(env!("CARGO_BIN_EXE_takeover_child"), ["mongo", &database])
        })
        .await
        .unwrap();
        println!("run {run}: {takeover:?}");
        assert!(
            takeover.after_commit <= Duration::from_secs(1),
            "run {run}: the first event committed after the restart was handled {:?} after its \
             commit (the dead relay's lease is 10 s)",
            takeover.after_commit
        );
    }
    store.database().drop().await.unwrap();
}
