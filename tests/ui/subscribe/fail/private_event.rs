// A handler is a struct with the function's visibility, and its `Handler::Event` is the
// event type, so a `pub` handler needs an event type at least as visible.
mod orders {
    use eventflow::Event;
    use serde::{Deserialize, Serialize};

    #[derive(Event, Serialize, Deserialize)]
    pub(crate) struct OrderPaid {
        pub order_id: String,
    }

    pub mod handlers {
        use super::OrderPaid;

        #[eventflow::subscribe]
        pub async fn reserve_stock(event: OrderPaid) -> Result<(), std::io::Error> {
            let _ = event.order_id;
            Ok(())
        }
    }
}

fn main() {
    let _ = orders::handlers::reserve_stock;
}
