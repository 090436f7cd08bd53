//! The checkout: one `OrderPaid` fact, four independent consumers.
//!
//! ```text
//! cargo run --example checkout
//! ```
//!
//! Inventory reserves stock, Notification sends the confirmation mail, Shipping books a
//! courier and Loyalty adds points. None of them knows about the others; each is its own
//! consumer group and receives every order.

use std::time::Duration;

use eventflow::{subscribe, Context, Event, EventBus, InProcess};
use serde::{Deserialize, Serialize};

/// An order was paid.
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "order.paid", version = 1, topic = "orders")]
struct OrderPaid {
    #[event(key)]
    order_id: String,
    user_id: String,
    total_amount: u64,
}

type Result = std::result::Result<(), std::io::Error>;

#[subscribe(group = "inventory")]
async fn reserve_stock(order: OrderPaid, ctx: Context) -> Result {
    tokio::time::sleep(Duration::from_millis(5)).await;
    say(
        "inventory",
        format!("reserved stock for {}", order.order_id),
        &ctx,
    );
    Ok(())
}

#[subscribe(group = "notification")]
async fn send_confirmation(order: OrderPaid, ctx: Context) -> Result {
    say(
        "notification",
        format!("mailed {} about {}", order.user_id, order.order_id),
        &ctx,
    );
    Ok(())
}

#[subscribe(group = "shipping")]
async fn book_courier(order: OrderPaid, ctx: Context) -> Result {
    tokio::time::sleep(Duration::from_millis(2)).await;
    say(
        "shipping",
        format!("booked a courier for {}", order.order_id),
        &ctx,
    );
    Ok(())
}

#[subscribe(group = "loyalty", retries = 5)]
async fn add_points(order: OrderPaid, ctx: Context) -> Result {
    let points = order.total_amount / 100;
    say(
        "loyalty",
        format!("{} earned {points} points", order.user_id),
        &ctx,
    );
    Ok(())
}

/// Prints one line of the trace: who reacted to which event.
fn say(group: &str, what: String, ctx: &Context) {
    println!(
        "  {:<14} {what:<34} event …{}",
        format!("[{group}]"),
        short(ctx.event_id())
    );
}

/// The last hex digits of an event id, enough to tell events apart in the trace.
fn short(id: uuid::Uuid) -> String {
    id.simple().to_string()[24..].to_owned()
}

#[tokio::main]
async fn main() -> std::result::Result<(), eventflow::Error> {
    eventflow_examples::init_tracing();
    let transport = InProcess::new();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .discovered_handlers()
        .start()
        .await?;
    let mut groups: Vec<&str> = bus.groups().collect();
    groups.sort_unstable();
    println!("consumer groups: {}", groups.join(", "));

    for (order_id, user_id, total_amount) in [
        ("XYZ-123", "alice", 4_200),
        ("XYZ-124", "bob", 12_900),
        ("XYZ-125", "carol", 999),
    ] {
        let order = OrderPaid {
            order_id: order_id.into(),
            user_id: user_id.into(),
            total_amount,
        };
        let id = bus.publish(&order).await?;
        println!("published order.paid for {order_id:<25} event …{}", short(id));
    }

    transport.wait_idle().await;
    println!("every consumer handled every order");
    bus.shutdown().await;
    Ok(())
}
