//! A handler failing with a transient error (a write conflict with a concurrent unit of
//! work, a busy database) is run again without spending its retries; one failing with it
//! without end is dead-lettered once the uncounted attempts and then its retries are spent.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventflow::{subscribe, Backoff, Context, Error, EventBus, InProcess, State};
use eventflow_tests::{within, OrderPaid};

/// Attempts seen, and how many of the first ones fail with a transient error.
#[derive(Clone, Default)]
struct Conflicts {
    attempts: Arc<AtomicU32>,
    failing: u32,
    last_attempt: Arc<AtomicU32>,
}

#[subscribe(group = "ledger")]
async fn book(_: OrderPaid, ctx: Context, State(c): State<Conflicts>) -> Result<(), Error> {
    c.last_attempt.store(ctx.attempt(), Ordering::SeqCst);
    if c.attempts.fetch_add(1, Ordering::SeqCst) < c.failing {
        return Err(Error::Transient(
            "write conflict with a concurrent unit of work".into(),
        ));
    }
    Ok(())
}

async fn bus(conflicts: &Conflicts, retries: u32) -> (EventBus, InProcess) {
    let transport = InProcess::new();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .backoff(Backoff::exponential(
            Duration::from_millis(1),
            Duration::from_millis(2),
        ))
        .retries(retries)
        .state(conflicts.clone())
        .handler(book)
        .start()
        .await
        .unwrap();
    (bus, transport)
}

fn order() -> OrderPaid {
    OrderPaid {
        order_id: "order-1".into(),
        seq: 1,
    }
}

#[tokio::test]
async fn transient_failures_do_not_spend_the_retries() {
    let conflicts = Conflicts {
        failing: 10,
        ..Conflicts::default()
    };
    let (bus, transport) = bus(&conflicts, 0).await;
    bus.publish(&order()).await.unwrap();
    within(30, "the handler to finish", transport.wait_idle()).await;
    bus.settled().await.unwrap();
    assert_eq!(
        conflicts.attempts.load(Ordering::SeqCst),
        11,
        "ten conflicts, then handled"
    );
    assert_eq!(
        conflicts.last_attempt.load(Ordering::SeqCst),
        11,
        "the context counts every attempt"
    );
    assert!(
        bus.dead_letters(None).await.unwrap().is_empty(),
        "with retries(0), ten transient failures are not a dead letter"
    );
    bus.shutdown().await;
}

#[tokio::test]
async fn an_endless_transient_failure_is_dead_lettered_after_the_retries() {
    let conflicts = Conflicts {
        failing: u32::MAX,
        ..Conflicts::default()
    };
    let (bus, _transport) = bus(&conflicts, 1).await;
    bus.publish(&order()).await.unwrap();
    let letter = within(60, "the dead letter", async {
        loop {
            if let Some(letter) = bus.dead_letters(Some("ledger")).await.unwrap().pop() {
                return letter;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let expected = Error::TRANSIENT_RETRIES + 2; // uncounted, then the first try and one retry
    assert_eq!(letter.attempts, expected);
    assert_eq!(conflicts.attempts.load(Ordering::SeqCst), expected);
    assert!(letter.error.contains("write conflict"), "{}", letter.error);
    bus.shutdown().await;
}
