use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid", version = 0)]
struct OrderPaid {
    order_id: String,
}

fn main() {}
