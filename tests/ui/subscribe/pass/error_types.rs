use eventflow::{subscribe, Event, Handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
struct OrderPaid {
    order_id: String,
}

// Any error that converts into `eventflow::BoxError`, written out or through an alias.
#[subscribe]
async fn io_error(event: OrderPaid) -> Result<(), std::io::Error> {
    let _ = event;
    Ok(())
}

#[subscribe]
async fn io_alias(event: OrderPaid) -> std::io::Result<()> {
    let _ = event;
    Ok(())
}

#[subscribe]
async fn message(event: OrderPaid) -> Result<(), String> {
    Err(format!("no stock for {}", event.order_id))
}

#[subscribe]
async fn static_message(event: OrderPaid) -> Result<(), &'static str> {
    let _ = event;
    Err("no stock")
}

#[subscribe]
async fn boxed(event: OrderPaid) -> Result<(), eventflow::BoxError> {
    let _ = event;
    Ok(())
}

fn main() {
    // Each is a handler: the signature is all that is checked here.
    assert_eq!(io_error.options().retries, None);
    assert_eq!(io_alias.options().retries, None);
    assert_eq!(message.options().retries, None);
    assert_eq!(static_message.options().retries, None);
    assert_eq!(boxed.options().retries, None);
}
