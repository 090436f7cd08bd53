//! P6, peak memory while relaying a backlog, in a child process of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::fixture::{fill_outbox, open, UNIT};
use crate::report::{mib, rate};
use crate::support::TempDb;
use crate::throughput::relay_backlog;

/// A process's memory figure from /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn p6(rt: &Runtime, n: u64) {
    println!("P6 memory while relaying a backlog of {n} events (streamed), 1 group");
    let db = TempDb::new("relay", "p6");
    let store = rt.block_on(open(&db));
    let fill = rt.block_on(fill_outbox(&store, 0, n));
    println!(
        "  filled the outbox in {:.1} s ({}), {UNIT} per unit of work",
        fill.as_secs_f64(),
        rate(n as f64 / fill.as_secs_f64())
    );
    let (rss_before, hwm_before) = (status_kib("VmRSS"), status_kib("VmHWM"));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(status_kib("VmRSS"));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let took = rt.block_on(relay_backlog(&store, db.path(), n));
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("the sampler ends").max(status_kib("VmRSS"));
    let hwm_after = status_kib("VmHWM");
    println!(
        "  relayed in {:.1} s ({}); RSS before {} MiB, peak while relaying {} MiB (+{} MiB); \
         VmHWM before {} MiB, after {} MiB",
        took.as_secs_f64(),
        rate(n as f64 / took.as_secs_f64()),
        mib(rss_before),
        mib(peak),
        mib(peak.saturating_sub(rss_before)),
        mib(hwm_before),
        mib(hwm_after)
    );
}

/// Runs P6 in a child process of this bench, so its memory is its own.
pub fn p6_in_child() {
    let exe = std::env::current_exe().expect("the bench's own path");
    let status = std::process::Command::new(exe)
        .args(std::env::args().skip(1))
        .env("RELAY_ONLY", "p6")
        .status()
        .expect("the P6 child starts");
    assert!(status.success(), "the P6 child failed: {status}");
}
