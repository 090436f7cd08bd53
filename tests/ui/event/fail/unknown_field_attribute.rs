use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid")]
struct OrderPaid {
    #[event(partition)]
    order_id: String,
}

fn main() {}
