use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.paid", version = 2, topic = "orders")]
struct OrderPaid {
    #[event(key)]
    order_id: String,
    total_cents: u64,
}

fn main() {
    assert_eq!(OrderPaid::NAME, "order.paid");
    assert_eq!(OrderPaid::VERSION, 2);
    assert_eq!(OrderPaid::TOPIC, "orders");
    let paid = OrderPaid {
        order_id: "XYZ-123".into(),
        total_cents: 4200,
    };
    assert_eq!(paid.partition_key().as_deref(), Some("XYZ-123"));
    assert_eq!(paid.total_cents, 4200);
}
