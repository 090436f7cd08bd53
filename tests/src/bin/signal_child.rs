//! The process `tests/signal.rs` stops with SIGTERM: it publishes five events to a handler
//! that takes 300 ms each, prints `ready`, and runs until a signal
//! (`EventBus::run_until_signal`); then it prints `handled <n>` and exits.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventflow::{subscribe, EventBus, State};
use eventflow_tests::OrderPaid;

#[subscribe(group = "slow")]
async fn slow(_event: OrderPaid, State(count): State<Arc<AtomicU32>>) -> Result<(), std::io::Error> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    count.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::main]
async fn main() {
    let count = Arc::new(AtomicU32::new(0));
    let bus = EventBus::builder()
        .state(count.clone())
        .handler(slow)
        .start()
        .await
        .expect("the bus starts");
    for seq in 0..5 {
        let order_id = format!("order-{seq}");
        bus.publish(&OrderPaid { order_id, seq })
            .await
            .expect("published");
    }
    let running = tokio::spawn(bus.run_until_signal());
    // Its signal listener is installed once the task first runs: only then is SIGTERM
    // safe to send (before, it would kill the process outright).
    tokio::time::sleep(Duration::from_millis(50)).await;
    println!("ready");
    running.await.expect("the bus ran until the signal");
    println!("handled {}", count.load(Ordering::SeqCst));
}
