use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid")]
struct OrderPaid {
    #[event(key)]
    order_id: String,
    #[event(key)]
    customer_id: String,
}

fn main() {}
