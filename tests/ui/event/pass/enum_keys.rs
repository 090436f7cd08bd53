use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "payment", topic = "payments")]
enum Payment {
    Authorized {
        #[event(key)]
        payment_id: String,
        amount_cents: u64,
    },
    Refunded(u64, #[event(key)] u32),
    Settled {
        batch: u32,
    },
    Reset,
}

// No variant, no value: still an event type, for a placeholder in generic code.
#[derive(Event, Serialize, Deserialize)]
enum Never {}

fn main() {
    assert_eq!(Never::NAME, "Never");

    assert_eq!(Payment::NAME, "payment");
    assert_eq!(Payment::TOPIC, "payments");
    assert_eq!(Payment::VERSION, 1);

    let authorized = Payment::Authorized {
        payment_id: "P-1".into(),
        amount_cents: 100,
    };
    assert_eq!(authorized.partition_key().as_deref(), Some("P-1"));
    // The key is the marked field, not the first one.
    assert_eq!(Payment::Refunded(100, 7).partition_key().as_deref(), Some("7"));
    // Variants without a key spread over partitions.
    assert_eq!(Payment::Settled { batch: 3 }.partition_key(), None);
    assert_eq!(Payment::Reset.partition_key(), None);
}
