use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
struct OrderShipped {
    order_id: String,
}

// Attributes split over several `#[event]` lines are merged.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "order.cancelled")]
#[event(version = 3)]
struct OrderCancelled;

fn main() {
    // The name defaults to the type name, the topic to the name, the version to 1.
    assert_eq!(OrderShipped::NAME, "OrderShipped");
    assert_eq!(OrderShipped::TOPIC, "OrderShipped");
    assert_eq!(OrderShipped::VERSION, 1);
    let shipped = OrderShipped {
        order_id: "XYZ-123".into(),
    };
    assert_eq!(shipped.partition_key(), None);
    assert_eq!(shipped.order_id, "XYZ-123");

    assert_eq!(OrderCancelled::NAME, "order.cancelled");
    assert_eq!(OrderCancelled::TOPIC, "order.cancelled");
    assert_eq!(OrderCancelled::VERSION, 3);
    assert_eq!(OrderCancelled.partition_key(), None);
}
