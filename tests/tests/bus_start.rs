//! What `start()` refuses, before any event flows: a handler's missing state, relay
//! settings that cannot work, and two handlers of one event in one group.

use std::time::Duration;

use eventflow::{subscribe, EventBus, MemoryStore, RelaySettings, State};
use eventflow_tests::{OrderPaid, Recorder};

type Result = std::result::Result<(), String>;

#[subscribe(group = "inventory")]
async fn inventory(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    rec.record("inventory", &event);
    Ok(())
}

#[subscribe(group = "slow")]
async fn slow(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    rec.record("slow", &event);
    Ok(())
}

#[subscribe(group = "slow")]
async fn slow_ordered_as_slow(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    rec.record("slow", &event);
    Ok(())
}

#[tokio::test]
async fn start_fails_when_a_handler_needs_state_the_bus_lacks() {
    let error = EventBus::builder().handler(inventory).start().await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("State<eventflow_tests::Recorder>"), "{message}");
    assert!(message.contains(".state(value)"), "{message}");
}

#[tokio::test]
async fn start_fails_on_a_relay_lease_or_poll_interval_of_zero() {
    for (settings, named) in [
        (
            RelaySettings::default().lease(Duration::ZERO),
            "RelaySettings::lease",
        ),
        (
            RelaySettings::default().poll_interval(Duration::ZERO),
            "RelaySettings::poll_interval",
        ),
    ] {
        let error = EventBus::builder()
            .storage(MemoryStore::new())
            .relay(settings)
            .start()
            .await
            .unwrap_err();
        assert!(matches!(error, eventflow::Error::Config(_)), "{error:?}");
        assert!(error.to_string().contains(named), "{error}");
    }
}

#[tokio::test]
async fn start_fails_when_one_group_has_two_handlers_for_one_event() {
    let error = EventBus::builder()
        .state(Recorder::default())
        .handler(slow)
        .handler(slow_ordered_as_slow)
        .start()
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("both handle `order.paid` in group `slow`"),
        "{error}"
    );
}
