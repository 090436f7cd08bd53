//! Crash test: a child process commits orders and their events on SQLite and is killed
//! with SIGKILL at random moments (between commits, relaying and handling); after the
//! restarts, every committed order has its effect exactly once in every group.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eventflow::store::rusqlite;
use eventflow_tests::{remove_db, temp_db};

const RUNS: u64 = 50;
const ORDERS_PER_RUN: u64 = 200;
const GROUPS: [&str; 2] = ["ledger", "shipping"];

fn child(db: &std::path::Path, first: u64, count: u64) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crash_child"));
    command
        .arg(db)
        .arg(first.to_string())
        .arg(count.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

#[test]
fn killed_at_random_points_every_committed_event_takes_effect_exactly_once() {
    let db = temp_db();
    let (mut killed, mut finished) = (0, 0);
    for run in 0..RUNS {
        let mut process = child(&db, run * ORDERS_PER_RUN, ORDERS_PER_RUN).spawn().unwrap();
        let kill_after = Duration::from_millis(fastrand::u64(5..250));
        let started = Instant::now();
        loop {
            if let Some(status) = process.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "run {run}: the child failed on its own: {status}"
                );
                finished += 1;
                break;
            }
            if started.elapsed() >= kill_after {
                process.kill().unwrap(); // SIGKILL
                process.wait().unwrap();
                killed += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // A last run that commits nothing new and finishes what the killed ones left.
    let output = child(&db, 0, 0).output().unwrap();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("done"),
        "the recovery run failed: {}",
        output.status
    );

    let sql = rusqlite::Connection::open(&db).unwrap();
    let orders: Vec<String> = sql
        .prepare("SELECT id FROM orders")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut effects: HashMap<(String, String), u32> = HashMap::new();
    let mut select = sql.prepare("SELECT grp, order_id FROM effects").unwrap();
    for row in select
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
    {
        *effects.entry(row.unwrap()).or_default() += 1;
    }
    let backlog: i64 = sql
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .unwrap();

    let mut lost = 0;
    for order in &orders {
        for group in GROUPS {
            if !effects.contains_key(&(group.to_owned(), order.clone())) {
                lost += 1;
            }
        }
    }
    let doubled = effects.values().filter(|&&n| n > 1).count();
    let committed: std::collections::HashSet<&String> = orders.iter().collect();
    let phantom = effects
        .keys()
        .filter(|(_, order)| !committed.contains(order))
        .count();
    println!(
        "crash test: {RUNS} runs ({killed} killed with SIGKILL, {finished} finished), {} orders \
         committed, {} effects in {} groups: {lost} lost, {doubled} doubled, {phantom} without a \
         committed order; outbox backlog {backlog}",
        orders.len(),
        effects.values().sum::<u32>(),
        GROUPS.len()
    );
    assert!(
        killed >= RUNS / 2,
        "only {killed} of {RUNS} runs were killed mid-way: the kill points are not random enough"
    );
    assert!(!orders.is_empty());
    assert_eq!((lost, doubled, phantom, backlog), (0, 0, 0, 0));
    remove_db(&db);
}
