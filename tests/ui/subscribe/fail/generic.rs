use eventflow::{subscribe, Event};

#[subscribe(group = "audit")]
async fn audit<E: Event>(event: E) -> Result<(), std::io::Error> {
    let _ = event;
    Ok(())
}

fn main() {}
