use eventflow::{subscribe, Event, Handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
pub struct OrderPaid {
    pub order_id: String,
}

#[subscribe]
async fn send_confirmation(event: OrderPaid) -> Result<(), std::io::Error> {
    let _ = event.order_id;
    Ok(())
}

mod billing {
    use super::OrderPaid;

    // A boxed error works too: anything `Into<BoxError>`.
    #[eventflow::subscribe()]
    pub async fn invoice(event: OrderPaid) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let _ = event.order_id;
        Ok(())
    }
}

fn main() {
    // Without `group`, each handler is its own group, named after its path.
    let options = send_confirmation.options();
    assert_eq!(options.name, concat!(module_path!(), "::send_confirmation"));
    assert_eq!(options.group, options.name);
    assert_eq!(options.retries, None);

    let options = billing::invoice.options();
    assert_eq!(options.name, concat!(module_path!(), "::billing::invoice"));
    assert_eq!(options.group, options.name);
}
