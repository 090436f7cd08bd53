//! Behaviour of the event bus on the in-process transport, through the public API.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventflow::{subscribe, Backoff, Context, Envelope, Event, EventBus, InProcess, State};
use eventflow_tests::{eventually, within, OrderPaid, Recorder};

type Result = std::result::Result<(), String>;

#[subscribe(group = "inventory")]
async fn inventory(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    rec.record("inventory", &event);
    Ok(())
}

#[subscribe(group = "notification")]
async fn notification(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    rec.record("notification", &event);
    Ok(())
}

#[subscribe(group = "shipping")]
async fn shipping(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    rec.record("shipping", &event);
    Ok(())
}

#[subscribe(group = "loyalty")]
async fn loyalty(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    rec.record("loyalty", &event);
    Ok(())
}

fn paid(key: impl Into<String>, seq: u64) -> OrderPaid {
    OrderPaid {
        order_id: key.into(),
        seq,
    }
}

fn quick() -> Backoff {
    Backoff::exponential(Duration::from_millis(1), Duration::from_millis(5))
}

#[tokio::test]
async fn every_group_receives_every_event() {
    let transport = InProcess::new();
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(rec.clone())
        .handler(inventory)
        .handler(notification)
        .handler(shipping)
        .handler(loyalty)
        .start()
        .await
        .unwrap();

    for seq in 0..200 {
        bus.publish(&paid(format!("order-{}", seq % 13), seq))
            .await
            .unwrap();
    }
    within(10, "all groups to finish", transport.wait_idle()).await;

    let all: Vec<u64> = (0..200).collect();
    for group in ["inventory", "notification", "shipping", "loyalty"] {
        assert_eq!(
            rec.sorted_seqs(group),
            all,
            "group {group} missed or doubled events"
        );
    }
    bus.shutdown().await;
}

#[tokio::test]
async fn instances_of_a_group_share_the_work_without_loss_or_duplicates() {
    let transport = InProcess::builder().partitions(12).build();
    let recorders: Vec<Recorder> = (0..3).map(|_| Recorder::default()).collect();
    let mut buses = Vec::new();
    for rec in &recorders {
        let bus = EventBus::builder()
            .transport(transport.clone())
            .state(rec.clone())
            .handler(inventory)
            .start()
            .await
            .unwrap();
        buses.push(bus);
    }

    for seq in 0..1200 {
        buses[0]
            .publish(&paid(format!("order-{seq}"), seq))
            .await
            .unwrap();
    }
    within(10, "the group to finish", transport.wait_idle()).await;

    let mut all = Vec::new();
    for (i, rec) in recorders.iter().enumerate() {
        let share = rec.sorted_seqs("inventory");
        assert!(
            share.len() > 100,
            "instance {i} handled only {} of 1200 events",
            share.len()
        );
        all.extend(share);
    }
    all.sort_unstable();
    assert_eq!(all, (0..1200).collect::<Vec<_>>(), "events lost or handled twice");
    for bus in buses {
        bus.shutdown().await;
    }
}

#[subscribe(group = "ordered")]
async fn slow_ordered(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    // Handlers of different partitions interleave; a key's events must not.
    tokio::time::sleep(Duration::from_micros(fastrand_micros(&event))).await;
    rec.record("ordered", &event);
    Ok(())
}

fn fastrand_micros(event: &OrderPaid) -> u64 {
    (event.seq * 7919) % 300
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_key_are_handled_in_publish_order() {
    let transport = InProcess::builder().partitions(4).build();
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(rec.clone())
        .workers(3)
        .handler(slow_ordered)
        .start()
        .await
        .unwrap();

    // Eight publishers at once, each owning some keys and numbering its events per key.
    let mut publishers = Vec::new();
    for p in 0..8u64 {
        let bus = bus.clone();
        publishers.push(tokio::spawn(async move {
            for n in 0..60u64 {
                let key = format!("order-{p}-{}", n % 5);
                bus.publish(&paid(key, p * 1000 + n)).await.unwrap();
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    within(20, "ordered handling to finish", transport.wait_idle()).await;

    let seen = rec.seen("ordered");
    assert_eq!(seen.len(), 8 * 60);
    let keys: HashSet<&String> = seen.iter().map(|(k, _)| k).collect();
    for key in keys {
        let seqs: Vec<u64> = seen.iter().filter(|(k, _)| k == key).map(|(_, s)| *s).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} handled out of order: {seqs:?}"
        );
    }
    bus.shutdown().await;
}

#[derive(Clone, Default)]
struct Flaky {
    attempts: Arc<AtomicU32>,
    healthy: Arc<AtomicBool>,
}

#[subscribe(group = "crm", retries = 2)]
async fn crm(event: OrderPaid, ctx: Context, State(flaky): State<Flaky>) -> Result {
    flaky.attempts.fetch_add(1, Ordering::SeqCst);
    if flaky.healthy.load(Ordering::SeqCst) {
        return Ok(());
    }
    Err(format!(
        "CRM unreachable for {} (attempt {})",
        event.order_id,
        ctx.attempt()
    ))
}

#[tokio::test]
async fn a_failing_handler_is_retried_then_dead_lettered_and_can_be_replayed() {
    let transport = InProcess::new();
    let flaky = Flaky::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(flaky.clone())
        .backoff(quick())
        .handler(crm)
        .start()
        .await
        .unwrap();

    let id = bus.publish(&paid("order-1", 1)).await.unwrap();
    within(10, "the event to be dead-lettered", transport.wait_idle()).await;

    assert_eq!(flaky.attempts.load(Ordering::SeqCst), 3, "1 attempt + 2 retries");
    let letters = bus.dead_letters(Some("crm")).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.envelope.id, id);
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.group, "crm");
    assert!(
        letter.error.contains("CRM unreachable for order-1 (attempt 3)"),
        "{}",
        letter.error
    );

    // Still failing: the dead letter stays, with the attempts added up.
    bus.replay_dead_letter(letter.id).await.unwrap();
    let letters = bus.dead_letters(Some("crm")).await.unwrap();
    assert_eq!(letters[0].attempts, 6);

    flaky.healthy.store(true, Ordering::SeqCst);
    bus.replay_dead_letter(letter.id).await.unwrap();
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    assert_eq!(flaky.attempts.load(Ordering::SeqCst), 7);
    bus.shutdown().await;
}

#[tokio::test]
async fn a_failing_group_does_not_hold_up_the_others() {
    let transport = InProcess::new();
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(rec.clone())
        .state(Flaky::default())
        .backoff(quick())
        .handler(crm)
        .handler(inventory)
        .handler(notification)
        .start()
        .await
        .unwrap();

    for seq in 0..20 {
        bus.publish(&paid(format!("order-{seq}"), seq)).await.unwrap();
    }
    within(10, "all groups to finish", transport.wait_idle()).await;

    assert_eq!(rec.sorted_seqs("inventory"), (0..20).collect::<Vec<_>>());
    assert_eq!(rec.sorted_seqs("notification"), (0..20).collect::<Vec<_>>());
    assert_eq!(bus.dead_letters(Some("crm")).await.unwrap().len(), 20);
    assert!(bus.dead_letters(Some("inventory")).await.unwrap().is_empty());
    bus.shutdown().await;
}

#[tokio::test]
async fn an_undecodable_payload_is_dead_lettered_and_the_partition_moves_on() {
    let transport = InProcess::builder().partitions(1).build();
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(rec.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap();

    let garbage = Envelope::new(
        OrderPaid::NAME,
        1,
        OrderPaid::TOPIC,
        "application/json",
        "{not json",
    );
    let garbage_id = bus.publish_envelope(garbage).await.unwrap();
    let wrong_shape = Envelope::new(
        OrderPaid::NAME,
        1,
        OrderPaid::TOPIC,
        "application/json",
        r#"{"order":1}"#,
    );
    bus.publish_envelope(wrong_shape).await.unwrap();
    let future = Envelope::new(OrderPaid::NAME, 2, OrderPaid::TOPIC, "application/json", "{}");
    bus.publish_envelope(future).await.unwrap();
    bus.publish(&paid("order-9", 9)).await.unwrap();
    within(10, "the partition to drain", transport.wait_idle()).await;

    assert_eq!(
        rec.sorted_seqs("inventory"),
        vec![9],
        "the good event after the bad ones was handled"
    );
    let letters = bus.dead_letters(Some("inventory")).await.unwrap();
    assert_eq!(letters.len(), 3);
    assert_eq!(letters[0].envelope.id, garbage_id);
    assert_eq!(letters[0].attempts, 0);
    assert!(
        letters[0].error.contains("could not decode event"),
        "{}",
        letters[0].error
    );
    assert!(
        letters[1].error.contains("missing field `order_id`"),
        "{}",
        letters[1].error
    );
    assert!(
        letters[2].error.contains("`order.paid` v2"),
        "{}",
        letters[2].error
    );
    assert!(letters[2].error.contains("expects v1"), "{}", letters[2].error);
    bus.shutdown().await;
}

/// Events that fail between good ones of the same partition: each good one is handled
/// once and in order, each bad one dead-lettered in its place, whichever comes first.
#[tokio::test]
async fn bad_events_among_good_ones_are_dead_lettered_in_place_and_the_rest_handled_in_order() {
    let transport = InProcess::builder().partitions(1).build();
    let rec = Recorder::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(rec.clone())
        .handler(inventory)
        .start()
        .await
        .unwrap();
    let garbage = Envelope::new(
        OrderPaid::NAME,
        1,
        OrderPaid::TOPIC,
        "application/json",
        "{not json",
    );
    let future = Envelope::new(OrderPaid::NAME, 2, OrderPaid::TOPIC, "application/json", "{}");
    bus.publish(&paid("order-1", 1)).await.unwrap();
    bus.publish(&paid("order-2", 2)).await.unwrap();
    let garbage_id = bus.publish_envelope(garbage).await.unwrap();
    bus.publish(&paid("order-3", 3)).await.unwrap();
    let future_id = bus.publish_envelope(future).await.unwrap();
    bus.publish(&paid("order-4", 4)).await.unwrap();
    bus.publish(&paid("order-5", 5)).await.unwrap();
    within(10, "the partition to drain", transport.wait_idle()).await;

    let seqs: Vec<u64> = rec.seen("inventory").into_iter().map(|(_, seq)| seq).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "each good event once, in publish order"
    );
    let letters = bus.dead_letters(Some("inventory")).await.unwrap();
    let ids: Vec<_> = letters.iter().map(|letter| letter.envelope.id).collect();
    assert_eq!(ids, vec![garbage_id, future_id]);
    assert!(
        letters[0].error.contains("could not decode event"),
        "{}",
        letters[0].error
    );
    assert!(letters[1].error.contains("expects v1"), "{}", letters[1].error);
    bus.shutdown().await;
}

#[subscribe(group = "panicky", retries = 1)]
async fn panicky(_event: OrderPaid) -> Result {
    panic!("bug in handler");
}

#[tokio::test]
async fn a_panicking_handler_is_treated_as_a_failure() {
    let transport = InProcess::new();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .backoff(quick())
        .handler(panicky)
        .start()
        .await
        .unwrap();
    bus.publish(&paid("order-1", 1)).await.unwrap();
    bus.publish(&paid("order-2", 2)).await.unwrap();
    within(10, "both events to be dead-lettered", transport.wait_idle()).await;

    let letters = bus.dead_letters(None).await.unwrap();
    assert_eq!(letters.len(), 2);
    assert!(
        letters[0].error.contains("handler panicked: bug in handler"),
        "{}",
        letters[0].error
    );
    assert_eq!(letters[0].attempts, 2);
    bus.shutdown().await;
}

#[derive(Event, serde::Serialize, serde::Deserialize)]
#[event(name = "stock.reserved", topic = "inventory")]
struct StockReserved {
    #[event(key)]
    order_id: String,
}

#[subscribe(group = "reserver")]
async fn reserve(event: OrderPaid, ctx: Context) -> Result {
    ctx.publish(&StockReserved {
        order_id: event.order_id,
    })
    .await
    .map(drop)
    .map_err(|e| e.to_string())
}

#[derive(Clone, Default)]
struct Seen(Arc<std::sync::Mutex<Vec<Envelope>>>);

#[subscribe(group = "audit")]
async fn audit(_event: StockReserved, ctx: Context, State(seen): State<Seen>) -> Result {
    seen.0.lock().unwrap().push(ctx.envelope().clone());
    Ok(())
}

#[tokio::test]
async fn follow_up_events_carry_correlation_causation_and_trace() {
    let transport = InProcess::new();
    let seen = Seen::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(seen.clone())
        .handler(reserve)
        .handler(audit)
        .start()
        .await
        .unwrap();
    let first = bus.envelope(&paid("order-7", 7)).unwrap();
    let (first_id, trace) = (first.id, first.trace_id().unwrap().to_owned());
    bus.publish_envelope(first).await.unwrap();
    eventually(10, "the follow-up event", || !seen.0.lock().unwrap().is_empty()).await;

    let follow_up = seen.0.lock().unwrap()[0].clone();
    assert_eq!(follow_up.name, "stock.reserved");
    assert_eq!(follow_up.key.as_deref(), Some("order-7"));
    assert_eq!(follow_up.correlation_id, first_id);
    assert_eq!(follow_up.causation_id, Some(first_id));
    assert_eq!(follow_up.trace_id(), Some(trace.as_str()));
    bus.shutdown().await;
}

#[derive(Clone, Default)]
struct Gate {
    started: Arc<tokio::sync::Notify>,
    finished: Arc<AtomicBool>,
}

#[subscribe(group = "slow")]
async fn slow(_event: OrderPaid, State(gate): State<Gate>) -> Result {
    gate.started.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.finished.store(true, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn shutdown_lets_running_handlers_finish_and_leaves_the_rest_for_later() {
    let transport = InProcess::builder().partitions(1).build();
    let gate = Gate::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(gate.clone())
        .handler(slow)
        // No time to hand the rest over: the shutdown stops at once (a longer deadline
        // would see the second event handled first).
        .shutdown_timeout(Duration::ZERO)
        .start()
        .await
        .unwrap();
    bus.publish(&paid("a", 1)).await.unwrap();
    bus.publish(&paid("a", 2)).await.unwrap();
    within(5, "the handler to start", gate.started.notified()).await;

    within(5, "shutdown", bus.clone().shutdown()).await;
    assert!(
        gate.finished.load(Ordering::SeqCst),
        "shutdown returned before the running handler finished"
    );
    assert_eq!(
        transport.lag("orders", "slow"),
        1,
        "the first event is committed, the second waits"
    );
    assert!(matches!(
        bus.publish(&paid("a", 3)).await,
        Err(eventflow::Error::Closed)
    ));

    // The next instance of the group picks up where the last one stopped.
    let rec = Recorder::default();
    let again = EventBus::builder()
        .transport(transport.clone())
        .state(rec.clone())
        .handler(slow_ordered_as_slow)
        .start()
        .await
        .unwrap();
    within(10, "the rest to be handled", transport.wait_idle()).await;
    assert_eq!(rec.sorted_seqs("slow"), vec![2]);
    again.shutdown().await;
}

#[subscribe(group = "slow")]
async fn slow_ordered_as_slow(event: OrderPaid, State(rec): State<Recorder>) -> Result {
    rec.record("slow", &event);
    Ok(())
}

#[tokio::test]
async fn a_killed_instance_s_uncommitted_events_go_to_the_survivor() {
    let transport = InProcess::builder().partitions(4).build();
    let survivor_rec = Recorder::default();
    let survivor = EventBus::builder()
        .transport(transport.clone())
        .state(survivor_rec.clone())
        .handler(slow_ordered_as_slow)
        .start()
        .await
        .unwrap();

    // The victim runs on its own runtime, so dropping that runtime kills it mid-handler,
    // without a chance to commit: a crash.
    let gate = Gate::default();
    let victim_transport = transport.clone();
    let victim_gate = gate.clone();
    let victim = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let bus = runtime.block_on(async {
            EventBus::builder()
                .transport(victim_transport)
                .state(victim_gate)
                .handler(slow)
                .start()
                .await
                .unwrap()
        });
        (runtime, bus)
    })
    .join()
    .unwrap();

    for seq in 0..40 {
        survivor
            .publish(&paid(format!("order-{seq}"), seq))
            .await
            .unwrap();
    }
    let (runtime, bus) = victim;
    std::thread::spawn(move || {
        // Long enough for the victim to start handling, too short to finish one event.
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        drop(bus);
        drop(runtime);
    })
    .join()
    .unwrap();
    within(1, "the victim to have started an event", gate.started.notified()).await;
    assert!(
        !gate.finished.load(Ordering::SeqCst),
        "the victim finished an event before it was killed"
    );

    within(10, "the survivor to take over", transport.wait_idle()).await;
    // The victim committed nothing, so the survivor handles every event, each once.
    assert_eq!(survivor_rec.sorted_seqs("slow"), (0..40).collect::<Vec<_>>());
    survivor.shutdown().await;
}
