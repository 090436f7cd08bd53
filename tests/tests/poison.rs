//! Poison events in the outbox relay, on the in-process transport behind a double that
//! refuses some events for good (as a broker refuses a message over its size limit) or
//! fails for a while (as a broker that is down): a refused event becomes a dead letter of
//! `eventflow.outbox` with the transport's reason, nothing else is held up or lost, and
//! transient failures are retried.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventflow::transport::{Consumer, Transport};
use eventflow::{
    subscribe, BoxFuture, DeadLetter, Envelope, Error, EventBus, InProcess, MemoryStore, Relay, State,
};
use eventflow_tests::{eventually, within, OrderPaid, Recorder};

/// The in-process transport, refusing for good every event whose key starts with `poison`
/// while `refusing` is set, and failing the first `outage` publishes as a broker that is
/// down would.
#[derive(Clone)]
struct Picky {
    inner: InProcess,
    refusing: Arc<AtomicBool>,
    outage: Arc<AtomicU32>,
}

impl Picky {
    fn new() -> Self {
        Picky {
            inner: InProcess::new(),
            refusing: Arc::new(AtomicBool::new(true)),
            outage: Arc::new(AtomicU32::new(0)),
        }
    }
}

const REASON: &str = "message of 3145728 bytes is over the broker's limit of 1048576 bytes";

#[async_trait]
impl Transport for Picky {
    async fn publish(&self, envelope: Envelope) -> Result<(), Error> {
        let down = self
            .outage
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if down {
            return Err(Error::backend("broker not reachable (test outage)"));
        }
        let poison = envelope.key.as_deref().is_some_and(|k| k.starts_with("poison"));
        if poison && self.refusing.load(Ordering::Acquire) {
            return Err(Error::rejected(envelope.id, REASON));
        }
        self.inner.publish(envelope).await
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>, Error> {
        self.inner.subscribe(group, topics).await
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), Error> {
        self.inner.dead_letter(letter).await
    }

    fn until_handled(&self) -> Option<BoxFuture<'static, ()>> {
        self.inner.until_handled()
    }
}

#[subscribe(group = "inventory")]
async fn inventory(event: OrderPaid, State(rec): State<Recorder>) -> Result<(), String> {
    rec.record("inventory", &event);
    Ok(())
}

fn order(key: &str, seq: u64) -> OrderPaid {
    OrderPaid {
        order_id: key.to_owned(),
        seq,
    }
}

async fn bus(transport: &Picky, rec: &Recorder, sequenced: bool) -> EventBus {
    let mut builder = EventBus::builder()
        .transport(transport.clone())
        .storage(MemoryStore::new())
        .state(rec.clone())
        .handler(inventory);
    if sequenced {
        builder = builder.sequenced_dead_letters(Relay::DEAD_LETTER_GROUP);
    }
    builder.start().await.unwrap()
}

/// Commits `events` in one unit of work.
async fn commit(bus: &EventBus, events: &[OrderPaid]) {
    let mut work = bus.begin().await.unwrap();
    for event in events {
        work.publish(event).await.unwrap();
    }
    work.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_transport_refuses_is_dead_lettered_and_the_rest_of_the_batch_is_delivered() {
    let transport = Picky::new();
    let rec = Recorder::default();
    let bus = bus(&transport, &rec, false).await;
    let mut events = vec![order("poison-1", 0)];
    events.extend((1..=5).map(|seq| order(&format!("order-{seq}"), seq)));
    let started = Instant::now();
    commit(&bus, &events).await;

    eventually(5, "the five deliverable events", || {
        rec.seen("inventory").len() == 5
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the deliverable events took {:?}",
        started.elapsed()
    );
    assert_eq!(rec.sorted_seqs("inventory"), [1, 2, 3, 4, 5]);
    let letters = bus.dead_letters(Some(Relay::DEAD_LETTER_GROUP)).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.envelope.key.as_deref(), Some("poison-1"));
    assert!(
        letter.error.contains(REASON),
        "the transport's reason: {}",
        letter.error
    );
    assert!(letter.error.contains("replay"), "what to do: {}", letter.error);

    // The relay goes on: a later commit is delivered.
    commit(&bus, &[order("order-6", 6)]).await;
    eventually(5, "an event committed after the poison", || {
        rec.seen("inventory").len() == 6
    })
    .await;

    // Nothing lost: once the transport takes it, the replayed letter is delivered.
    transport.refusing.store(false, Ordering::Release);
    bus.replay_dead_letter(letter.id).await.unwrap();
    eventually(5, "the replayed poison event", || {
        rec.seen("inventory").len() == 7
    })
    .await;
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_later_events_of_a_refused_events_key_are_delivered() {
    let transport = Picky::new();
    let rec = Recorder::default();
    let bus = bus(&transport, &rec, false).await;
    commit(&bus, &[order("poison-1", 1), order("order-2", 2)]).await;
    eventually(5, "the other key", || rec.seen("inventory").len() == 1).await;
    transport.refusing.store(false, Ordering::Release);
    commit(&bus, &[order("poison-1", 3)]).await;
    eventually(5, "the later event of the refused key", || {
        rec.seen("inventory").len() == 2
    })
    .await;
    assert_eq!(rec.sorted_seqs("inventory"), [2, 3]);
    assert_eq!(bus.dead_letters(None).await.unwrap().len(), 1);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sequenced_dead_letters_later_events_of_the_key_are_parked_and_released_in_order() {
    let transport = Picky::new();
    let rec = Recorder::default();
    let bus = bus(&transport, &rec, true).await;
    // In one batch: the refused event, a later one of its key, and another key.
    commit(
        &bus,
        &[order("poison-1", 1), order("poison-1", 2), order("order-3", 3)],
    )
    .await;
    eventually(5, "the other key", || rec.seen("inventory").len() == 1).await;
    transport.refusing.store(false, Ordering::Release);
    // Committed later, once the transport would take it: still parked behind the first.
    commit(&bus, &[order("poison-1", 4)]).await;
    within(5, "three dead letters", async {
        while bus.dead_letters(None).await.unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let letters = bus.dead_letters(Some(Relay::DEAD_LETTER_GROUP)).await.unwrap();
    let head = &letters[0];
    assert_eq!(head.parked_behind(), None);
    for parked in &letters[1..] {
        assert_eq!(parked.parked_behind(), Some(head.id), "{parked:?}");
        assert!(parked.error.contains("parked behind"), "{}", parked.error);
    }
    assert_eq!(
        rec.sorted_seqs("inventory"),
        [3],
        "nothing of the key overtook the refused event"
    );
    let refused = bus.replay_dead_letter(letters[1].id).await.unwrap_err();
    assert!(refused.to_string().contains("parked behind"), "{refused}");

    bus.replay_dead_letter(head.id).await.unwrap();
    eventually(5, "the released events", || rec.seen("inventory").len() == 4).await;
    let key: Vec<u64> = rec
        .seen("inventory")
        .into_iter()
        .filter(|(key, _)| key == "poison-1")
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(key, [1, 2, 4], "released in commit order");
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_and_dead_letters_nothing() {
    let transport = Picky::new();
    transport.outage.store(3, Ordering::Release);
    let rec = Recorder::default();
    let bus = bus(&transport, &rec, false).await;
    commit(
        &bus,
        &(1..=4)
            .map(|seq| order(&format!("order-{seq}"), seq))
            .collect::<Vec<_>>(),
    )
    .await;
    eventually(10, "the events after the outage", || {
        rec.seen("inventory").len() == 4
    })
    .await;
    assert_eq!(rec.sorted_seqs("inventory"), [1, 2, 3, 4]);
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    within(5, "the group to finish", transport.inner.wait_idle()).await;
    bus.shutdown().await;
}
