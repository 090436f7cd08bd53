//! The outbox relay and the inbox guard on SQLite: the figures of issue 3's "Benchmarks".
//!
//! ```text
//! cargo bench -p eventflow --bench relay
//! RELAY_EVENTS=100000 RELAY_ROUNDS=5 cargo bench -p eventflow --bench relay
//! RELAY_ONLY=p3a cargo bench -p eventflow --bench relay   # one part: p3a, p3b, p5, p6
//! RELAY_ONLY=guard cargo bench -p eventflow --bench relay # P5 (b) alone, for profiling
//! RELAY_ONLY=noguard cargo bench -p eventflow --bench relay # P5 (a) alone
//! RELAY_ONLY=floor cargo bench -p eventflow --bench relay   # P5's pipelined floor alone
//! ```
//!
//! Every part runs on a temporary SQLite file (`SqliteStore`, WAL, `synchronous = NORMAL`),
//! removed afterwards with its `-wal` and `-shm`, on a multi-thread runtime with 2 workers.
//!
//! - **P3a, sustained relay throughput** (target at least 100,000 events/s). The outbox is
//!   filled with `RELAY_EVENTS` (200,000) `OrderPaid` events, 1,000 per unit of work. The
//!   clock runs from starting a [`Relay`] on the in-process transport, with one group that
//!   decodes and counts each event, until the group has handled and committed every event
//!   and the outbox is empty. The relay runs as it ships: batches of 512, entries kept until
//!   the group handled them ([`Transport::until_handled`]), up to 16 batches
//!   in flight. The group runs on a bus without storage, so no inbox guard is in the way
//!   (P5 measures that). Side by side: the same rows selected, decoded and deleted with plain
//!   rusqlite in transactions of 512 on the same file (what any relay can do at best on
//!   SQLite), and the same events published straight to the in-process transport (what the
//!   transport and the group can take). The ratio is relay / rusqlite.
//! - **P3b, commit-to-handler latency** at 1,000 events/s (target p99 at most 5 ms). A
//!   bus with the store runs the relay; a task commits one event per unit of work every
//!   millisecond for `RELAY_LATENCY_SECS` (5) after a 0.5 s warm-up, and keeps the instant
//!   each `commit()` returned. The handler keeps the instant it ran; the latency is the
//!   difference, in the bus's usual setup (inbox guard on).
//! - **P5, the inbox guard's cost** (target at most 10%). `RELAY_P5_EVENTS` (50,000) events
//!   published with `bus.publish` to one group: (a) on a bus without storage, (b) on a bus
//!   with the store, so the inbox guards the handler (`InboxStore::processed` for each polled
//!   batch before, `mark_all_processed` after, written while the next batch is handled and
//!   before the batch's offset commit); (c0) a handler that inserts one row in a unit of
//!   work of its own, without guard, and (c) the same insert from a `Tx` handler, whose
//!   unit of work also holds the marker (the bus runs the `Tx` handlers of consecutive
//!   events in savepoints of one unit of work and commits them together). The cost is
//!   1 - guarded rate / unguarded rate, for (a, b) and for (c0, c). A breakdown follows: the
//!   guard's store calls timed alone, the same SQL with plain rusqlite, and the floor: a
//!   bare consumer loop on the transport with and without a per-poll guard in plain
//!   rusqlite, no bus around it.
//! - **P6, peak memory while relaying a backlog of `RELAY_BACKLOG` (1,000,000) events**,
//!   which must be streamed, never loaded whole. It runs in a child process of its own so
//!   the other parts' heap does not blur it. RSS is sampled every 10 ms while relaying;
//!   printed: the peak, its growth over the RSS before relaying, VmHWM before and after, and
//!   the throughput.
//!
//! Rounds alternate the sides and report medians (`RELAY_ROUNDS`, 3). Measure on a quiet
//! machine: SQLite commits, the blocking pool and the runtime share the 2 cores.
//!
//! [`Transport::until_handled`]: eventflow::transport::Transport::until_handled

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../support/mod.rs"]
mod support;

mod fixture;
mod guard;
mod guard_breakdown;
mod latency;
mod ledger;
mod memory;
mod report;
mod throughput;

use fixture::{order, OrderPaid};
use guard::{guarded, p5, Guard};
use latency::p3b;
use memory::{p6, p6_in_child};
use report::{cpu_seconds, micros, rate};
use support::env_or;
use throughput::p3a;

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`) this is a smoke run
    // with small sizes that only checks every part completes.
    let bench = std::env::args().any(|arg| arg == "--bench");
    let scale = |full: u64, smoke: u64| if bench { full } else { smoke };
    let n = env_or("RELAY_EVENTS", scale(200_000, 2_000)).max(1);
    let rounds = env_or("RELAY_ROUNDS", scale(3, 1)).max(1) as usize;
    let latency_secs = env_or("RELAY_LATENCY_SECS", scale(5, 1)).max(1) as f64;
    let p5_events = env_or("RELAY_P5_EVENTS", scale(50_000, 500)).max(1) as usize;
    let backlog = env_or("RELAY_BACKLOG", scale(1_000_000, 5_000)).max(1);
    if !bench {
        println!("relay: smoke run (figures come from `cargo bench -p eventflow --bench relay`)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the runtime starts");

    let only = std::env::var("RELAY_ONLY").ok();
    match only.as_deref() {
        None => {
            let started = Instant::now();
            p3a(&rt, n, rounds, bench);
            p3b(&rt, latency_secs, bench);
            p5(&rt, p5_events, rounds, bench);
            p6_in_child();
            println!("relay bench took {:.0} s", started.elapsed().as_secs_f64());
        }
        Some("p3a") => p3a(&rt, n, rounds, bench),
        Some("p3b") => p3b(&rt, latency_secs, bench),
        Some("p5") => p5(&rt, p5_events, rounds, bench),
        Some("p6") => p6(&rt, backlog),
        Some(part @ ("guard" | "noguard")) => {
            let events: Arc<Vec<OrderPaid>> = Arc::new((0..p5_events as u64).map(order).collect());
            let (guard, name) = match part {
                "guard" => (Guard::On, "(b)"),
                _ => (Guard::Off, "(a)"),
            };
            let cpu = cpu_seconds();
            let took = rt.block_on(guarded(guard, events));
            let cpu = cpu_seconds() - cpu;
            println!(
                "P5 {name} alone: {}, {} CPU per event",
                rate(p5_events as f64 / took.as_secs_f64()),
                micros(Duration::from_secs_f64(cpu / p5_events as f64))
            );
        }
        Some("floor") => {
            let cpu = cpu_seconds();
            let took = rt.block_on(guard_breakdown::pipelined_floor(p5_events as u64));
            let cpu = cpu_seconds() - cpu;
            println!(
                "P5 floor (per-poll guard, marker write overlapping the next poll) alone: {}, {} CPU per event",
                rate(p5_events as f64 / took.as_secs_f64()),
                micros(Duration::from_secs_f64(cpu / p5_events as f64))
            );
        }
        Some(other) => panic!("RELAY_ONLY is p3a, p3b, p5, p6, guard, noguard or floor, not `{other}`"),
    }
}
