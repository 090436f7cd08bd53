use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid", topic = "orders/paid")]
struct OrderPaid {
    order_id: String,
}

fn main() {}
