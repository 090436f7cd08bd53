//! P5, the inbox guard's cost: the same events through a group without and with the guard,
//! and a handler's insert in its own unit of work and in the guarded one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::store::{SqliteTransaction, Storage};
use eventflow::{EventBus, InProcess};
use tokio::runtime::Runtime;

use crate::fixture::{billing, open, order, Handled, OrderPaid};
use crate::guard_breakdown::{p5_breakdown, p5_floor};
use crate::ledger::{book_alone, book_in_tx, Ledger, CREATE_LEDGER};
use crate::report::{cpu_seconds, micros, rate, rate_short, verdict};
use crate::support::{median, TempDb};

const GUARD_COST_TARGET: f64 = 0.10;
/// How far (b)'s guard cost may lie above the floor's, in points.
const FLOOR_MARGIN: f64 = 0.10;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Guard {
    /// (a) no storage on the bus.
    Off,
    /// (b) the store on the bus: the inbox guard around the handler.
    On,
    /// (c0) one insert in its own unit of work, no guard.
    OwnTx,
    /// (c) the insert in a `Tx` handler's unit of work, with the marker.
    InTx,
}

/// Publishes `events` with `bus.publish` to one group set up as `guard` says; the time
/// until the group committed them all.
pub async fn guarded(guard: Guard, events: Arc<Vec<OrderPaid>>) -> Duration {
    let db = TempDb::new("relay", "p5");
    let store = open(&db).await;
    let mut setup = store.begin().await.expect("begin");
    setup
        .downcast_mut::<SqliteTransaction>()
        .unwrap()
        .connection()
        .execute_batch(CREATE_LEDGER)
        .unwrap();
    setup.commit().await.expect("commit");

    let transport = InProcess::new();
    let handled = Handled::expecting(events.len() as u64);
    let builder = EventBus::builder()
        .transport(transport.clone())
        .state(handled.clone());
    let builder = match guard {
        Guard::Off => builder.handler(billing),
        Guard::On => builder.storage(store.clone()).handler(billing),
        Guard::OwnTx => builder.state(Ledger(store.clone())).handler(book_alone),
        Guard::InTx => builder.storage(store.clone()).handler(book_in_tx),
    };
    let bus = builder.start().await.expect("the bus starts");
    let started = Instant::now();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for event in events.iter() {
                bus.publish(event).await.expect("publish");
            }
        })
    };
    publisher.await.expect("the publisher finishes");
    handled.wait().await;
    transport.wait_idle().await;
    let elapsed = started.elapsed();
    bus.shutdown().await;
    drop(store);
    elapsed
}

pub fn p5(rt: &Runtime, n: usize, rounds: usize, bench: bool) {
    println!(
        "P5 inbox guard cost: {n} events with bus.publish to 1 group on the in-process \
         transport, {rounds} rounds"
    );
    let events: Arc<Vec<OrderPaid>> = Arc::new((0..n as u64).map(order).collect());
    let warm: Arc<Vec<OrderPaid>> = Arc::new(events.iter().take(n / 10 + 1).cloned().collect());
    let variants = [Guard::Off, Guard::On, Guard::OwnTx, Guard::InTx];
    for guard in variants {
        rt.block_on(guarded(guard, warm.clone()));
    }
    let mut rates: HashMap<&'static str, Vec<f64>> = HashMap::new();
    let mut cpu: HashMap<&'static str, Vec<f64>> = HashMap::new();
    for round in 1..=rounds {
        let mut order = variants.to_vec();
        if round % 2 == 0 {
            order.reverse();
        }
        let mut line = HashMap::new();
        for guard in order {
            let used = cpu_seconds();
            let rate = n as f64 / rt.block_on(guarded(guard, events.clone())).as_secs_f64();
            cpu.entry(guard_name(guard))
                .or_default()
                .push((cpu_seconds() - used) / n as f64);
            line.insert(guard_name(guard), rate);
            rates.entry(guard_name(guard)).or_default().push(rate);
        }
        println!(
            "  round {round}: (a) {} | (b) {} | (c0) {} | (c) {}",
            rate_short(line["a"]),
            rate_short(line["b"]),
            rate_short(line["c0"]),
            rate_short(line["c"])
        );
    }
    let m = |k: &str| median(rates[k].clone());
    let cost = |plain: f64, guarded: f64| 1.0 - guarded / plain;
    let (a, b, c0, c) = (m("a"), m("b"), m("c0"), m("c"));
    let per_event = |k: &str| micros(Duration::from_secs_f64(median(cpu[k].clone())));
    println!(
        "  (a) no guard {} -> (b) guard {}: cost {:.1}%  (medians; CPU of the process per event: \
         (a) {} (b) {}, both cores busy, so the guard's CPU comes out of the throughput)",
        rate(a),
        rate(b),
        cost(a, b) * 100.0,
        per_event("a"),
        per_event("b")
    );
    println!(
        "  (c0) insert in its own unit of work {} -> (c) insert + marker in the Tx unit of work {}: \
         cost {:.1}%  (medians)",
        rate(c0),
        rate(c),
        cost(c0, c) * 100.0
    );
    if bench {
        println!(
            "  target cost <= {:.0}%: (a, b) {} | (c0, c) {}",
            GUARD_COST_TARGET * 100.0,
            verdict(cost(a, b) <= GUARD_COST_TARGET),
            verdict(cost(c0, c) <= GUARD_COST_TARGET)
        );
    }
    p5_breakdown(rt, n.min(20_000));
    // The floor handles as many events as (a) and (b), so that its start-up weighs the same.
    let floor = p5_floor(rt, n.max(1) as u64, rounds);
    // The bus pipelines its marker writes as the last floor does: that is (b)'s floor.
    let floor_cost = cost(floor.off, floor.pipelined);
    println!(
        "  guarded, events/s: bus (b) {} | floor, per-poll guard {} | floor, pipelined {} ((b) at \
         {:.2}x the pipelined floor)",
        rate(b),
        rate(floor.per_poll),
        rate(floor.pipelined),
        b / floor.pipelined
    );
    if bench {
        println!(
            "  target guard cost <= {:.0} points above the pipelined floor's: {:.1}% against {:.1}% \
             ({:+.1} points): {}",
            FLOOR_MARGIN * 100.0,
            cost(a, b) * 100.0,
            floor_cost * 100.0,
            (cost(a, b) - floor_cost) * 100.0,
            verdict(cost(a, b) <= floor_cost + FLOOR_MARGIN)
        );
    }
}

fn guard_name(guard: Guard) -> &'static str {
    match guard {
        Guard::Off => "a",
        Guard::On => "b",
        Guard::OwnTx => "c0",
        Guard::InTx => "c",
    }
}
