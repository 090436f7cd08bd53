//! Takeover after `kill -9`: how soon a restarted process's first committed event is
//! handled, next to the baseline of a lease whose holder cannot be proven gone (what every
//! restart waited before relay ids named their process: the dead relay's 10 s lease).
//!
//! `cargo bench -p eventflow-tests --bench takeover`. With `MONGODB_URI` set, MongoDB too.
//! Prints medians.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow::store::rusqlite;
use eventflow_tests::{kill_and_restart, remove_db, restart, temp_db, Takeover};

const CHILD: &str = env!("CARGO_BIN_EXE_takeover_child");
const RUNS: usize = 9;
const BASELINE_RUNS: usize = 3;
const LEASE: Duration = Duration::from_secs(10);

fn median(mut figures: Vec<Duration>) -> Duration {
    figures.sort();
    figures[figures.len() / 2]
}

fn line(what: &str, runs: &[Takeover]) {
    let commit = median(runs.iter().map(|t| t.after_commit).collect());
    let start = median(runs.iter().map(|t| t.after_start).collect());
    println!(
        "{what:<58} median {:>8.1} ms commit -> handled, {:>8.1} ms start -> handled ({} runs)",
        commit.as_secs_f64() * 1e3,
        start.as_secs_f64() * 1e3,
        runs.len()
    );
}

fn main() {
    let db = temp_db();
    let path = db.to_str().unwrap().to_owned();
    let takeover: Vec<Takeover> = (0..RUNS)
        .map(|_| kill_and_restart(CHILD, ["sqlite", &path]))
        .collect();
    line("sqlite: kill -9, restart (predecessor provably gone)", &takeover);

    // The baseline: a killed relay whose id does not name its process, as ids did before.
    let baseline: Vec<Takeover> = (0..BASELINE_RUNS)
        .map(|_| {
            let expires = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + LEASE;
            rusqlite::Connection::open(&db)
                .unwrap()
                .execute(
                    "INSERT OR REPLACE INTO outbox_lease (id, holder, expires_at) VALUES (1, ?1, ?2)",
                    (
                        "relay-0190a8f4-c3d2-7c1e-9b3f-5a7d2e4c6b8a",
                        expires.as_nanos() as i64,
                    ),
                )
                .unwrap();
            restart(CHILD, ["sqlite", &path])
        })
        .collect();
    line(
        "sqlite baseline: a dead holder not provably gone (10 s lease)",
        &baseline,
    );
    remove_db(&db);

    if std::env::var("MONGODB_URI").is_ok() {
        let database = format!(
            "eventflow_test_{}_{}_takeover_bench",
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs(),
            std::process::id()
        );
        let takeover: Vec<Takeover> = (0..RUNS)
            .map(|_| kill_and_restart(CHILD, ["mongo", &database]))
            .collect();
        line("mongo: kill -9, restart (predecessor provably gone)", &takeover);
        println!("(database {database} is dropped by the next Mongo test run, after an hour)");
    }
}
