use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid")]
struct OrderPaid {
    #[event(key)]
    order_id: Vec<u8>,
}

fn main() {}
