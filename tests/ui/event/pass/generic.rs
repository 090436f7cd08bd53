use eventflow::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "entity.changed", topic = "entities")]
struct Changed<T> {
    #[event(key)]
    id: u64,
    value: T,
}

fn main() {
    assert_eq!(<Changed<String>>::NAME, "entity.changed");
    assert_eq!(<Changed<u32>>::TOPIC, "entities");
    let changed = Changed {
        id: 42,
        value: String::from("new"),
    };
    assert_eq!(changed.partition_key().as_deref(), Some("42"));
    assert_eq!(changed.value, "new");
}
