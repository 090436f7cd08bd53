//! The consume half: a bus whose handler decodes each event, next to a raw
//! `StreamConsumer` doing the same decode and commit policy: eventflow's documented one,
//! the offsets of each polled batch (what is ready, up to 256 records) stored and
//! committed asynchronously once the batch is handled.

use eventflow_kafka::rdkafka::{Offset, TopicPartitionList};
use futures_util::FutureExt;

use super::*;

/// eventflow-kafka's default `max_batch`: the most records a poll returns.
const MAX_BATCH: usize = 256;

#[derive(Clone, Default)]
struct Clock {
    handled: Arc<AtomicU64>,
    /// When the first event was handled, the allocations made until then and the
    /// process's CPU time.
    first: Arc<Mutex<Option<(Instant, u64, Cpu)>>>,
    last: Arc<Mutex<Option<(Instant, u64, Cpu)>>>,
}

/// One consume run: events per second, Rust heap allocations and CPU microseconds (of the
/// whole process) per handled event.
pub struct Consumed {
    rate: f64,
    allocations: f64,
    cpu: f64,
}

impl Clock {
    fn tick(&self, n: u64) {
        let now = Instant::now();
        self.first.lock().unwrap().get_or_insert_with(|| {
            // A mark to attach a profiler to the consuming alone.
            eprintln!("  the first event is handled");
            (now, alloc::count(), Cpu::now())
        });
        if self.handled.fetch_add(1, Ordering::AcqRel) + 1 == n {
            *self.last.lock().unwrap() = Some((now, alloc::count(), Cpu::now()));
        }
    }

    fn done(&self) -> bool {
        self.last.lock().unwrap().is_some()
    }

    fn result(&self, n: usize) -> Consumed {
        let (first, first_allocations, first_cpu) = self.first.lock().unwrap().unwrap();
        let (last, last_allocations, last_cpu) = self.last.lock().unwrap().unwrap();
        Consumed {
            rate: (n - 1) as f64 / (last - first).as_secs_f64(),
            allocations: (last_allocations - first_allocations) as f64 / (n - 1) as f64,
            cpu: (last_cpu.client - first_cpu.client) / (n - 1) as f64 * 1e6,
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

/// `rounds` rounds of the sides `KAFKA_BENCH_SIDES` names (`eventflow`, `raw`; both if
/// unset), each on a fresh topic: the eventflow runs and the raw ones.
pub async fn consume_rounds(n: usize, rounds: usize, id: &str) -> (Vec<Consumed>, Vec<Consumed>) {
    let wanted = std::env::var("KAFKA_BENCH_SIDES").ok();
    let runs = |side: &str| wanted.as_deref().is_none_or(|w| w.contains(side));
    let (mut eventflow, mut raw) = (vec![], vec![]);
    for round in 0..rounds {
        // Alternated, as the publishing sides are rotated: the broker slows down as its log
        // grows, so a side that always ran second would always run on the slower broker.
        let order = match round % 2 {
            0 => ["raw", "eventflow"],
            _ => ["eventflow", "raw"],
        };
        for side in order.into_iter().filter(|side| runs(side)) {
            let prefix = format!("{id}-c{side}{round}");
            match side {
                "raw" => raw.push(consume_raw(n, &prefix).await),
                _ => eventflow.push(consume_eventflow(n, &prefix).await),
            }
            delete_topic(&prefix).await;
        }
    }
    (eventflow, raw)
}

async fn consume_eventflow(n: usize, prefix: &str) -> Consumed {
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

async fn consume_raw(n: usize, prefix: &str) -> Consumed {
    fill(n, prefix).await;
    let topic = kafka(prefix).kafka_topic("bench");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{prefix}.raw"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let clock = Clock::default();
    let mut handled = 0;
    // The next offset to commit per partition, of the batch being handled.
    let mut next: Vec<Option<i64>> = Vec::new();
    while handled < n {
        // eventflow's policy: a batch is what is ready after the first message, up to
        // `max_batch` (256); once it is handled, its partitions' offsets are stored (so
        // that a rebalance or close commits them synchronously) and committed
        // asynchronously, every partition the batch touched.
        let mut batch = 0;
        while batch < MAX_BATCH && handled < n {
            let message = match batch {
                0 => consumer.recv().await,
                _ => match consumer.recv().now_or_never() {
                    Some(message) => message,
                    None => break,
                },
            }
            .expect("consuming");
            // What eventflow reads of each message besides the payload: every field of the
            // `eventflow` header, the key and the other headers (here `traceparent`).
            let headers = message.headers().expect("headers");
            let (mut metadata, mut traceparent) = (None, None);
            for header in headers.iter() {
                let value = std::str::from_utf8(header.value.unwrap_or_default()).unwrap();
                match header.key {
                    "eventflow" => metadata = Some(value),
                    "traceparent" => traceparent = Some(value),
                    _ => {}
                }
            }
            let mut fields = metadata.expect("an eventflow header").splitn(8, ';');
            assert_eq!(fields.next(), Some("1"));
            let id = uuid::Uuid::parse_str(fields.next().unwrap()).unwrap();
            let name = fields.next().unwrap().to_owned();
            let version: u32 = fields.next().unwrap().parse().unwrap();
            let timestamp: u64 = fields.next().unwrap().parse().unwrap();
            let optional_id =
                |field: &str| (!field.is_empty()).then(|| uuid::Uuid::parse_str(field).unwrap());
            let correlation_id = optional_id(fields.next().unwrap()).unwrap_or(id);
            let causation_id = optional_id(fields.next().unwrap());
            let content_type = fields.next().unwrap().to_owned();
            let key = message.key().map(|k| String::from_utf8(k.to_vec()).unwrap());
            std::hint::black_box((id, name, version, timestamp, correlation_id, causation_id));
            std::hint::black_box((content_type, key, traceparent));
            let event: Happened = serde_json::from_slice(message.payload().unwrap()).unwrap();
            std::hint::black_box(&event);
            clock.tick(n as u64);
            let partition = message.partition() as usize;
            if next.len() <= partition {
                next.resize(partition + 1, None);
            }
            next[partition] = Some(message.offset() + 1);
            batch += 1;
            handled += 1;
        }
        let mut offsets = TopicPartitionList::with_capacity(next.len());
        for (partition, offset) in next.iter_mut().enumerate() {
            if let Some(offset) = offset.take() {
                offsets
                    .add_partition_offset(&topic, partition as i32, Offset::Offset(offset))
                    .unwrap();
            }
        }
        consumer.store_offsets(&offsets).unwrap();
        consumer.commit(&offsets, CommitMode::Async).unwrap();
    }
    clock.result(n)
}

pub fn report_consume(eventflow: &[Consumed], raw: &[Consumed]) {
    let rate = |runs: &[Consumed]| median(runs.iter().map(|r| r.rate));
    let allocations = |runs: &[Consumed]| median(runs.iter().map(|r| r.allocations));
    let cpu = |runs: &[Consumed]| median(runs.iter().map(|r| r.cpu));
    println!("consume (medians):");
    if !eventflow.is_empty() {
        println!(
            "  eventflow          {:>9.0} events/s   {:>5.1} allocs/event   CPU us per event {:.2}",
            rate(eventflow),
            allocations(eventflow),
            cpu(eventflow)
        );
    }
    if !raw.is_empty() {
        println!(
            "  raw StreamConsumer {:>9.0} events/s   {:>5.1} allocs/event   CPU us per event {:.2}",
            rate(raw),
            allocations(raw),
            cpu(raw)
        );
    }
    if !eventflow.is_empty() && !raw.is_empty() {
        let ratio = rate(eventflow) / rate(raw);
        let verdict = if ratio >= TARGET_CONSUME_RATIO {
            "meets"
        } else {
            "MISSES"
        };
        println!("  ratio {ratio:.2}: {verdict} the target of {TARGET_CONSUME_RATIO}x");
        // Each round's two runs met the broker in about the same state: their ratio cancels
        // the drift between rounds that the medians above keep.
        let paired = median(eventflow.iter().zip(raw).map(|(e, r)| e.rate / r.rate));
        println!("  median of the rounds' ratios {paired:.2} (for information)");
    }
    println!(
        "    eventflow runs: {:?}",
        eventflow.iter().map(|r| r.rate.round()).collect::<Vec<_>>()
    );
    println!(
        "    raw runs:       {:?}",
        raw.iter().map(|r| r.rate.round()).collect::<Vec<_>>()
    );
}
