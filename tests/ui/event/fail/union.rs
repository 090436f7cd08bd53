use eventflow::Event;

#[derive(Event)]
union Amount {
    cents: u64,
    units: f64,
}

fn main() {}
