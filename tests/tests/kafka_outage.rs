//! A broker outage in the middle of a stream: the broker is stopped for more than 10 s
//! and started again. Events committed through the outbox meanwhile are all delivered
//! once the broker is back, and each takes effect exactly once.
//!
//! Runs its own broker (the `noida-db` binary named by `NOIDA_DB_BIN`, as
//! `scripts/servers.sh` exports it) on a free port, so that stopping it disturbs no other
//! test.

mod kafka_common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::{subscribe, EventBus, MemoryStore, State};
use eventflow_kafka::Kafka;
use eventflow_tests::{eventually, OrderPaid};

/// A private Kafka-protocol broker that can be stopped and started on the same port and
/// data directory.
struct Broker {
    binary: PathBuf,
    port: u16,
    data: PathBuf,
    process: Option<Child>,
}

impl Broker {
    fn start_new() -> Broker {
        let binary = std::env::var_os("NOIDA_DB_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                panic!(
                    "NOIDA_DB_BIN is not set: this test stops and restarts a broker of its own and \
                 needs the noida-db binary; run `scripts/test` (its scripts/servers.sh exports it) \
                 or export NOIDA_DB_BIN=/path/to/noida_db/noida-db"
                )
            });
        assert!(
            binary.is_file(),
            "NOIDA_DB_BIN={} is not a file; point it at the noida-db binary",
            binary.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("finding a free port")
            .port();
        let data = std::env::temp_dir().join(kafka_common::unique("broker"));
        std::fs::create_dir_all(&data).expect("creating the broker's data directory");
        let mut broker = Broker {
            binary,
            port,
            data,
            process: None,
        };
        broker.start();
        broker
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let child = Command::new(&self.binary)
            .args(["start", "--only", "kafka", "--host", "127.0.0.1", "--kafka-port"])
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.address()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the private broker did not listen on {} within 30 s",
                self.address()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        kafka_common::require_broker(&self.address());
    }

    /// Stops the broker as an operator would (SIGTERM), waiting for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.address()).is_ok() {
            assert!(Instant::now() < deadline, "the private broker did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

#[derive(Clone, Default)]
struct Effects(Arc<Mutex<HashMap<u64, u32>>>);

impl Effects {
    fn applied(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[subscribe(group = "ledger")]
async fn ledger(event: OrderPaid, State(effects): State<Effects>) -> Result<(), String> {
    *effects.0.lock().unwrap().entry(event.seq).or_default() += 1;
    Ok(())
}

async fn commit_through_outbox(bus: &EventBus, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let mut work = bus.begin().await.expect("beginning a unit of work");
        work.publish(&OrderPaid {
            order_id: format!("order-{}", seq % 5),
            seq,
        })
        .await
        .unwrap();
        work.commit()
            .await
            .expect("the outbox commits locally whatever the broker does");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_during_a_broker_outage_are_delivered_once_it_is_back() {
    let mut broker = Broker::start_new();
    let name = kafka_common::unique("outage");
    let kafka = Kafka::builder(broker.address())
        .topic_prefix(format!("{name}."))
        .group_prefix(format!("{name}."))
        .partitions(3)
        .delivery_timeout(Duration::from_secs(5))
        .consumer_config("session.timeout.ms", "6000")
        .consumer_config("heartbeat.interval.ms", "500")
        .build()
        .unwrap();
    let effects = Effects::default();
    let bus = EventBus::builder()
        .transport(kafka)
        .storage(MemoryStore::new())
        .state(effects.clone())
        .handler(ledger)
        .start()
        .await
        .unwrap();

    commit_through_outbox(&bus, 0..50).await;
    eventually(60, "the events before the outage", || effects.applied() == 50).await;

    broker.stop();
    let stopped = Instant::now();
    commit_through_outbox(&bus, 50..100).await;
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(stopped.elapsed())).await;
    assert_eq!(
        effects.applied(),
        50,
        "nothing can be delivered while the broker is down"
    );
    broker.start();
    let restarted = Instant::now();

    commit_through_outbox(&bus, 100..120).await;
    // Bounded: a consumer that backs off between polls instead of serving librdkafka's
    // queue once took minutes to rejoin its group (or never did).
    eventually(
        30,
        "every event committed before, during and after the outage, within 30 s of the restart",
        || effects.applied() == 120,
    )
    .await;
    println!("caught up {:?} after the broker restarted", restarted.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let effects = effects.0.lock().unwrap().clone();
    assert_eq!(effects.len(), 120);
    let doubled: Vec<_> = effects.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "effects applied more than once: {doubled:?}");
    bus.shutdown().await;
}
