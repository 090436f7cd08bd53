//! The code the macros generate compiles clean under the strictest lints a user may set.
#![deny(warnings, unused_qualifications)]
#![deny(missing_docs, missing_debug_implementations, unreachable_pub, unused_results)]

use std::sync::{Arc, Mutex};

use eventflow::{subscribe, Context, Event, EventBus, InProcess, State};
use serde::{Deserialize, Serialize};

/// An order was paid.
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "order.paid", version = 2, topic = "orders")]
pub struct OrderPaid {
    #[event(key)]
    order_id: String,
    total_cents: u64,
}

/// Something happened to a payment.
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "payment", topic = "payments")]
pub enum Payment {
    /// The payment was authorized.
    Authorized {
        /// The payment.
        #[event(key)]
        payment_id: String,
    },
    /// The payment was refunded.
    Refunded(#[event(key)] u64),
    /// The day's payments were settled.
    Settled,
}

/// A generic event.
#[derive(Event, Serialize, Deserialize, Debug)]
pub struct Changed<T> {
    #[event(key)]
    id: u64,
    value: T,
}

/// What the handlers saw.
#[derive(Clone, Debug, Default)]
pub struct Seen(Arc<Mutex<Vec<String>>>);

/// Records a paid order.
#[subscribe(group = "inventory", retries = 2)]
pub async fn reserve_stock(
    event: OrderPaid,
    ctx: Context,
    State(seen): State<Seen>,
) -> Result<(), std::io::Error> {
    let entry = format!("{} {} {}", ctx.event_name(), event.order_id, event.total_cents);
    seen.0.lock().unwrap().push(entry);
    Ok(())
}

/// Records a payment.
#[subscribe]
async fn record_payment(event: Payment, State(seen): State<Seen>) -> Result<(), String> {
    let entry = match event {
        Payment::Authorized { payment_id } => payment_id,
        Payment::Refunded(id) => id.to_string(),
        Payment::Settled => "settled".to_owned(),
    };
    seen.0.lock().unwrap().push(entry);
    Ok(())
}

/// Records a change.
#[subscribe(group = "audit")]
async fn record_change(
    event: Changed<String>,
    ctx: Context,
    State(seen): State<Seen>,
) -> Result<(), eventflow::BoxError> {
    let entry = format!("{:?} {} {}", ctx.key(), event.id, event.value);
    seen.0.lock().unwrap().push(entry);
    Ok(())
}

#[tokio::test]
async fn generated_code_is_warning_free_and_works() {
    let transport = InProcess::new();
    let seen = Seen::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(seen.clone())
        .handler(reserve_stock)
        .handler(record_payment)
        .handler(record_change)
        .start()
        .await
        .unwrap();

    let _ = bus
        .publish(&OrderPaid {
            order_id: "XYZ-123".into(),
            total_cents: 4200,
        })
        .await
        .unwrap();
    let _ = bus.publish(&Payment::Refunded(9)).await.unwrap();
    let _ = bus
        .publish(&Changed {
            id: 7,
            value: "new".to_owned(),
        })
        .await
        .unwrap();
    transport.wait_idle().await;

    let mut seen = seen.0.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["9", "Some(\"7\") 7 new", "order.paid XYZ-123 4200"]);
    bus.shutdown().await;
}
