//! P3b, commit-to-handler latency through the relay at 1,000 events/s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::{subscribe, BoxError, EventBus, State};
use tokio::runtime::Runtime;

use crate::fixture::{open, order, OrderPaid};
use crate::report::{percentile, percentiles, verdict};
use crate::support::TempDb;

const LATENCY_TARGET: Duration = Duration::from_millis(5);

/// When each event was handled, by sequence number.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<(u64, Instant)>>>);

#[subscribe(group = "latency")]
async fn arrival(event: OrderPaid, State(arrivals): State<Arrivals>) -> Result<(), BoxError> {
    let now = Instant::now();
    arrivals.0.lock().unwrap().push((event.seq, now));
    Ok(())
}

pub fn p3b(rt: &Runtime, secs: f64, bench: bool) {
    let warm_up = Duration::from_millis(500);
    let run = Duration::from_secs_f64(secs);
    println!(
        "P3b commit->handler latency: one event per unit of work every 1 ms for {secs} s (after \
         {warm_up:?} of warm-up), bus with the store (relay + inbox guard), 1 group"
    );
    let db = TempDb::new("relay", "p3b");
    let (committed, arrivals, elapsed) = rt.block_on(async {
        let store = open(&db).await;
        let arrivals = Arrivals::default();
        let bus = EventBus::builder()
            .storage(store)
            .state(arrivals.clone())
            .handler(arrival)
            .start()
            .await
            .expect("the bus starts");
        let publisher = {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut committed = Vec::new();
                let mut ticks = tokio::time::interval(Duration::from_millis(1));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let started = Instant::now();
                let mut measured = None;
                for seq in 0.. {
                    ticks.tick().await;
                    let now = Instant::now();
                    if now - started >= warm_up + run {
                        break;
                    }
                    let mut work = bus.begin().await.expect("begin");
                    work.publish(&order(seq)).await.expect("publish");
                    let calling = Instant::now();
                    work.commit().await.expect("commit");
                    let returned = Instant::now();
                    if now - started >= warm_up {
                        measured.get_or_insert(now);
                        committed.push((seq, calling, returned));
                    }
                }
                let elapsed = measured.map_or(Duration::ZERO, |since| since.elapsed());
                (committed, elapsed)
            })
        };
        let (committed, elapsed) = publisher.await.expect("the publisher finishes");
        let last = committed.last().map_or(0, |c| c.0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !arrivals.0.lock().unwrap().iter().any(|a| a.0 == last) {
            assert!(
                Instant::now() < deadline,
                "the last event was not handled within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bus.shutdown().await;
        let arrivals: HashMap<u64, Instant> = arrivals.0.lock().unwrap().iter().copied().collect();
        (committed, arrivals, elapsed)
    });

    let (mut from_return, mut from_call, mut early) = (Vec::new(), Vec::new(), 0);
    for (seq, calling, returned) in &committed {
        let handled = arrivals.get(seq).expect("every committed event is handled");
        if handled < returned {
            early += 1;
        }
        from_return.push(handled.saturating_duration_since(*returned));
        from_call.push(handled.saturating_duration_since(*calling));
    }
    let achieved = committed.len() as f64 / elapsed.as_secs_f64();
    let p99 = percentile(&mut from_return, 0.99);
    println!(
        "  {} events at {achieved:.0} events/s; from commit() returned: {}; from commit() \
         called: {}; handled before commit() returned: {early}",
        committed.len(),
        percentiles(&mut from_return),
        percentiles(&mut from_call)
    );
    if bench {
        println!(
            "  target p99 <= {} ms: {}",
            LATENCY_TARGET.as_millis(),
            verdict(p99 <= LATENCY_TARGET)
        );
    }
}
