//! The consume half: a bus whose handler decodes each event, next to a raw
//! `StreamConsumer` doing the same decode and commit policy.

use super::*;

#[derive(Clone, Default)]
struct Clock {
    handled: Arc<AtomicU64>,
    /// When the first event was handled, and the allocations made until then.
    first: Arc<Mutex<Option<(Instant, u64)>>>,
    last: Arc<Mutex<Option<(Instant, u64)>>>,
}

/// One consume run: events per second and Rust heap allocations per handled event.
pub struct Consumed {
    rate: f64,
    allocations: f64,
}

impl Clock {
    fn tick(&self, n: u64) {
        let now = Instant::now();
        self.first
            .lock()
            .unwrap()
            .get_or_insert_with(|| (now, alloc::count()));
        if self.handled.fetch_add(1, Ordering::AcqRel) + 1 == n {
            *self.last.lock().unwrap() = Some((now, alloc::count()));
        }
    }

    fn done(&self) -> bool {
        self.last.lock().unwrap().is_some()
    }

    fn result(&self, n: usize) -> Consumed {
        let (first, first_allocations) = self.first.lock().unwrap().unwrap();
        let (last, last_allocations) = self.last.lock().unwrap().unwrap();
        Consumed {
            rate: (n - 1) as f64 / (last - first).as_secs_f64(),
            allocations: (last_allocations - first_allocations) as f64 / (n - 1) as f64,
        }
    }
}

#[derive(Clone)]
struct Expect(u64, Clock);

#[subscribe(group = "reader")]
async fn reader(event: Happened, State(expect): State<Expect>) -> Result<(), std::io::Error> {
    std::hint::black_box(&event);
    expect.1.tick(expect.0);
    Ok(())
}

/// Fills a fresh topic with `n` eventflow events.
async fn fill(n: usize, prefix: &str) {
    let bus = EventBus::builder()
        .transport(kafka(prefix))
        .start()
        .await
        .unwrap();
    let events: Vec<Happened> = (0..n).map(event).collect();
    for chunk in events.chunks(10_000) {
        for result in join_all(chunk.iter().map(|e| bus.publish(e))).await {
            result.expect("filling the topic");
        }
    }
    bus.shutdown().await;
}

pub async fn consume_eventflow(n: usize, prefix: &str) -> Consumed {
    fill(n, prefix).await;
    let clock = Clock::default();
    let kafka = Kafka::builder(brokers())
        .topic_prefix(format!("{prefix}."))
        .group_prefix(format!("{prefix}."))
        .start_from(eventflow_kafka::StartFrom::Earliest)
        .build()
        .unwrap();
    let bus = EventBus::builder()
        .transport(kafka)
        .state(Expect(n as u64, clock.clone()))
        .handler(reader)
        .start()
        .await
        .unwrap();
    while !clock.done() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bus.shutdown().await;
    clock.result(n)
}

pub async fn consume_raw(n: usize, prefix: &str) -> Consumed {
    fill(n, prefix).await;
    let topic = kafka(prefix).kafka_topic("bench");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{prefix}.raw"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let clock = Clock::default();
    for i in 0..n {
        let message = consumer.recv().await.expect("consuming");
        // What eventflow reads of each message besides the payload: the id, name and
        // content type of the `eventflow` header, and the key.
        let metadata = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "eventflow"))
            .and_then(|h| std::str::from_utf8(h.value?).ok())
            .expect("an eventflow header");
        let mut fields = metadata.splitn(8, ';');
        let id = uuid::Uuid::parse_str(fields.nth(1).unwrap()).unwrap();
        let name = fields.next().unwrap().to_owned();
        let content_type = fields.nth(4).unwrap().to_owned();
        let key = message.key().map(|k| String::from_utf8(k.to_vec()).unwrap());
        let event: Happened = serde_json::from_slice(message.payload().unwrap()).unwrap();
        std::hint::black_box((&event, id, name, content_type, key));
        clock.tick(n as u64);
        if i % 256 == 255 || i == n - 1 {
            consumer.commit_message(&message, CommitMode::Async).unwrap();
        }
    }
    clock.result(n)
}

pub fn report_consume(eventflow: &[Consumed], raw: &[Consumed]) {
    let rate = |runs: &[Consumed]| median(runs.iter().map(|r| r.rate));
    let allocations = |runs: &[Consumed]| median(runs.iter().map(|r| r.allocations));
    let (e, r) = (rate(eventflow), rate(raw));
    println!("consume (medians):");
    println!(
        "  eventflow          {e:>9.0} events/s   {:>5.1} allocs/event",
        allocations(eventflow)
    );
    println!(
        "  raw StreamConsumer {r:>9.0} events/s   {:>5.1} allocs/event",
        allocations(raw)
    );
    let ratio = e / r;
    let verdict = if ratio >= TARGET_CONSUME_RATIO {
        "meets"
    } else {
        "MISSES"
    };
    println!("  ratio {ratio:.2}: {verdict} the target of {TARGET_CONSUME_RATIO}x");
    println!(
        "    eventflow runs: {:?}",
        eventflow.iter().map(|r| r.rate.round()).collect::<Vec<_>>()
    );
    println!(
        "    raw runs:       {:?}",
        raw.iter().map(|r| r.rate.round()).collect::<Vec<_>>()
    );
}
