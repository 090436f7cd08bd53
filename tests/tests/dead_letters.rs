//! Dead-letter operations on the bus (replay a group in order, discard, purge, count),
//! sequenced dead letters (later events of a dead-lettered key parked behind it, released
//! in order, across a restart), and messages that are not eventflow events, on the
//! in-process transport.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventflow::store::SqliteStore;
use eventflow::{subscribe, Backoff, Envelope, Error, EventBus, InProcess, MemoryStore, State};
use eventflow_tests::{eventually, remove_db, temp_db, within, OrderPaid, Recorder};

/// Keys the CRM refuses while they are in the set.
#[derive(Clone, Default)]
struct Refused(Arc<Mutex<HashSet<String>>>);

impl Refused {
    fn of(keys: &[&str]) -> Self {
        Refused(Arc::new(Mutex::new(keys.iter().map(|k| k.to_string()).collect())))
    }

    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

#[subscribe(group = "crm", retries = 0)]
async fn crm(
    event: OrderPaid,
    State(rec): State<Recorder>,
    State(refused): State<Refused>,
) -> Result<(), String> {
    if refused.0.lock().unwrap().contains(&event.order_id) {
        return Err(format!("CRM refuses {}", event.order_id));
    }
    rec.record("crm", &event);
    Ok(())
}

#[subscribe(group = "audit")]
async fn audit(event: OrderPaid, State(rec): State<Recorder>) -> Result<(), String> {
    rec.record("audit", &event);
    Ok(())
}

fn order(key: &str, seq: u64) -> OrderPaid {
    OrderPaid {
        order_id: key.to_owned(),
        seq,
    }
}

fn quick() -> Backoff {
    Backoff::exponential(Duration::from_millis(1), Duration::from_millis(5))
}

async fn start(transport: &InProcess, rec: &Recorder, refused: &Refused, sequenced: bool) -> EventBus {
    let mut builder = EventBus::builder()
        .transport(transport.clone())
        .backoff(quick())
        .state(rec.clone())
        .state(refused.clone())
        .handler(crm)
        .handler(audit);
    if sequenced {
        builder = builder.sequenced_dead_letters("crm");
    }
    builder.start().await.unwrap()
}

/// The sequence numbers of `key` a group handled, in handling order.
fn of_key(rec: &Recorder, group: &str, key: &str) -> Vec<u64> {
    rec.seen(group)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, seq)| seq)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_counted_replayed_in_order_discarded_and_purged() {
    let transport = InProcess::new();
    let (rec, refused) = (Recorder::default(), Refused::of(&["a"]));
    let bus = start(&transport, &rec, &refused, false).await;
    // One key, so one partition: the group gives up on them in this order.
    for (key, seq) in [("a", 1), ("a", 2), ("a", 3), ("ok", 4)] {
        bus.publish(&order(key, seq)).await.unwrap();
    }
    within(5, "the groups to finish", transport.wait_idle()).await;
    let counts = bus.dead_letter_counts().await.unwrap();
    assert_eq!(counts.get("crm"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("audit"), None, "{counts:?}");

    // Replaying while the CRM still refuses: all stay, in their order.
    let replayed = bus.replay_dead_letters("crm").await.unwrap();
    assert_eq!((replayed.handled, replayed.still_dead), (0, 3));
    let letters = bus.dead_letters(Some("crm")).await.unwrap();
    let seqs: Vec<_> = letters
        .iter()
        .map(|l| {
            serde_json::from_slice::<OrderPaid>(&l.envelope.payload)
                .unwrap()
                .seq
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(letters[0].attempts, 2, "attempts add up: {:?}", letters[0]);

    let discarded = bus.discard_dead_letter(letters[1].id).await.unwrap();
    assert_eq!(discarded.id, letters[1].id);
    assert!(matches!(
        bus.discard_dead_letter(letters[1].id).await,
        Err(Error::DeadLetterNotFound(_))
    ));

    refused.clear();
    let replayed = bus.replay_dead_letters("crm").await.unwrap();
    assert_eq!((replayed.handled, replayed.still_dead), (2, 0));
    assert_eq!(of_key(&rec, "crm", "ok"), [4]);
    assert_eq!(
        of_key(&rec, "crm", "a"),
        [1, 3],
        "replayed in their original order"
    );
    assert!(bus.dead_letter_counts().await.unwrap().is_empty());

    refused.0.lock().unwrap().insert("d".into());
    bus.publish(&order("d", 9)).await.unwrap();
    bus.publish(&order("d", 10)).await.unwrap();
    within(5, "the groups to finish", transport.wait_idle()).await;
    assert_eq!(bus.purge_dead_letters("crm").await.unwrap(), 2);
    assert_eq!(bus.purge_dead_letters("crm").await.unwrap(), 0);
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequenced_group_parks_later_events_of_the_key_and_releases_them_in_order() {
    let transport = InProcess::new();
    let (rec, refused) = (Recorder::default(), Refused::of(&["k"]));
    let bus = start(&transport, &rec, &refused, true).await;
    bus.publish(&order("k", 1)).await.unwrap();
    within(5, "the groups to finish", transport.wait_idle()).await;
    // The CRM would take these, but they must not overtake event 1.
    refused.clear();
    for (key, seq) in [("k", 2), ("other", 3), ("k", 4)] {
        bus.publish(&order(key, seq)).await.unwrap();
    }
    within(5, "the groups to finish", transport.wait_idle()).await;
    assert_eq!(of_key(&rec, "crm", "other"), [3], "other keys flow on");
    assert!(
        of_key(&rec, "crm", "k").is_empty(),
        "nothing of `k` overtook event 1"
    );
    assert_eq!(
        of_key(&rec, "audit", "k"),
        [1, 2, 4],
        "other groups are not affected"
    );
    let letters = bus.dead_letters(Some("crm")).await.unwrap();
    assert_eq!(letters.len(), 3);
    assert_eq!(letters[0].parked_behind(), None);
    assert!(letters[0].error.contains("CRM refuses k"), "{}", letters[0].error);
    for parked in &letters[1..] {
        assert_eq!(parked.parked_behind(), Some(letters[0].id));
        assert_eq!(parked.attempts, 0, "a parked event was not handled");
    }

    bus.replay_dead_letter(letters[0].id).await.unwrap();
    assert_eq!(
        of_key(&rec, "crm", "k"),
        [1, 2, 4],
        "released in order behind event 1"
    );
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    // The key is free again.
    bus.publish(&order("k", 5)).await.unwrap();
    within(5, "the groups to finish", transport.wait_idle()).await;
    assert_eq!(of_key(&rec, "crm", "k"), [1, 2, 4, 5]);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarding_the_head_letter_releases_what_is_parked_behind_it() {
    let transport = InProcess::new();
    let (rec, refused) = (Recorder::default(), Refused::of(&["k"]));
    let bus = start(&transport, &rec, &refused, true).await;
    bus.publish(&order("k", 1)).await.unwrap();
    within(5, "the groups to finish", transport.wait_idle()).await;
    refused.clear();
    bus.publish(&order("k", 2)).await.unwrap();
    bus.publish(&order("k", 3)).await.unwrap();
    within(5, "the groups to finish", transport.wait_idle()).await;
    let head = bus.dead_letters(Some("crm")).await.unwrap()[0].id;
    bus.discard_dead_letter(head).await.unwrap();
    assert_eq!(
        of_key(&rec, "crm", "k"),
        [2, 3],
        "event 1 dropped, the rest handled in order"
    );
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_event_that_fails_again_keeps_the_rest_parked_behind_it() {
    let transport = InProcess::new();
    let (rec, refused) = (Recorder::default(), Refused::of(&["k"]));
    let bus = start(&transport, &rec, &refused, true).await;
    for seq in 1..=3 {
        bus.publish(&order("k", seq)).await.unwrap();
    }
    within(5, "the groups to finish", transport.wait_idle()).await;
    let letters = bus.dead_letters(Some("crm")).await.unwrap();
    assert_eq!(letters.len(), 3);
    // Discarding event 1 while the CRM still refuses `k`: event 2 fails again and holds 3.
    bus.discard_dead_letter(letters[0].id).await.unwrap();
    let left = bus.dead_letters(Some("crm")).await.unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!(left[0].id, letters[1].id);
    assert_eq!(left[0].parked_behind(), None, "event 2 is the head now");
    assert_eq!(
        left[1].parked_behind(),
        Some(letters[1].id),
        "event 3 waits for event 2"
    );
    refused.clear();
    let replayed = bus.replay_dead_letters("crm").await.unwrap();
    assert_eq!((replayed.handled, replayed.still_dead), (2, 0));
    assert_eq!(of_key(&rec, "crm", "k"), [2, 3]);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_survive_a_restart() {
    let path = temp_db();
    let (rec, refused) = (Recorder::default(), Refused::of(&["k"]));
    let open = || async {
        EventBus::builder()
            .transport(InProcess::new())
            .storage(SqliteStore::open(&path).await.unwrap())
            .backoff(quick())
            .state(rec.clone())
            .state(refused.clone())
            .handler(crm)
            .sequenced_dead_letters("crm")
            .start()
            .await
            .unwrap()
    };
    let bus = open().await;
    let mut work = bus.begin().await.unwrap();
    work.publish(&order("k", 1)).await.unwrap();
    work.commit().await.unwrap();
    within(5, "event 1 dead-lettered", async {
        while bus.dead_letters(Some("crm")).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    bus.shutdown().await;

    refused.clear();
    let bus = open().await;
    let mut work = bus.begin().await.unwrap();
    work.publish(&order("k", 2)).await.unwrap();
    work.publish(&order("other", 3)).await.unwrap();
    work.commit().await.unwrap();
    eventually(5, "the other key", || rec.seen("crm").len() == 1).await;
    within(5, "event 2 parked", async {
        while bus.dead_letters(Some("crm")).await.unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let letters = bus.dead_letters(Some("crm")).await.unwrap();
    assert_eq!(
        letters[1].parked_behind(),
        Some(letters[0].id),
        "parked after the restart"
    );
    bus.replay_dead_letter(letters[0].id).await.unwrap();
    assert_eq!(of_key(&rec, "crm", "k"), [1, 2]);
    bus.shutdown().await;
    remove_db(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_an_eventflow_event_is_listed_raw_and_can_only_be_discarded() {
    let transport = InProcess::new();
    let (rec, refused) = (Recorder::default(), Refused::default());
    let bus = EventBus::builder()
        .transport(transport.clone())
        .dead_letters(MemoryStore::new())
        .state(rec.clone())
        .state(refused.clone())
        .handler(crm)
        .handler(audit)
        .start()
        .await
        .unwrap();
    let mut garbage = Envelope::new(
        Envelope::FOREIGN,
        0,
        "orders",
        "application/octet-stream",
        &b"\xff\x00garbage"[..],
    );
    garbage
        .headers
        .insert(Envelope::FOREIGN_REASON, "no `eventflow` header");
    bus.publish_envelope(garbage).await.unwrap();
    bus.publish(&order("ok", 1)).await.unwrap();
    within(5, "the groups to finish", transport.wait_idle()).await;
    assert_eq!(rec.seen("crm").len(), 1, "the real event after the garbage");
    let counts = bus.dead_letter_counts().await.unwrap();
    assert_eq!(
        (counts.get("crm"), counts.get("audit")),
        (Some(&1), Some(&1)),
        "{counts:?}"
    );
    let letter = &bus.dead_letters(Some("crm")).await.unwrap()[0];
    assert!(letter.is_foreign());
    assert_eq!(&letter.envelope.payload[..], b"\xff\x00garbage", "kept raw");
    assert!(letter.error.contains("no `eventflow` header"), "{}", letter.error);
    let refused_replay = bus.replay_dead_letter(letter.id).await.unwrap_err();
    assert!(
        refused_replay.to_string().contains("cannot be replayed"),
        "{refused_replay}"
    );
    bus.discard_dead_letter(letter.id).await.unwrap();
    assert_eq!(bus.dead_letters(Some("crm")).await.unwrap().len(), 0);
    bus.shutdown().await;
}

/// A reading from a sensor that may be NaN.
#[derive(eventflow::Event, serde::Serialize, serde::Deserialize, Clone, Debug)]
#[event(name = "sensor.read", topic = "sensors")]
struct SensorRead {
    #[event(key)]
    sensor: String,
    celsius: f64,
}

/// The sensors whose readings the thermostat handled.
#[derive(Clone, Default)]
struct Sensors(Arc<Mutex<Vec<String>>>);

#[subscribe(group = "thermostat")]
async fn thermostat(event: SensorRead, State(sensors): State<Sensors>) -> Result<(), String> {
    sensors.0.lock().unwrap().push(event.sensor);
    Ok(())
}

/// JSON has no NaN: serde_json writes it as `null`, so the publish succeeds and the
/// handler's decode fails. The dead letter says what the `null` most likely was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_with_nan_is_dead_lettered_with_a_reason_naming_nan() {
    let sensors = Sensors::default();
    let bus = EventBus::builder()
        .state(sensors.clone())
        .handler(thermostat)
        .start()
        .await
        .unwrap();
    for (sensor, celsius) in [("kitchen", 21.5), ("cellar", f64::NAN), ("attic", 30.0)] {
        let read = SensorRead {
            sensor: sensor.into(),
            celsius,
        };
        bus.publish(&read).await.expect("serde_json encodes NaN as null");
    }
    within(10, "every reading handled or dead-lettered", bus.settled())
        .await
        .unwrap();
    let letters = bus.dead_letters(Some("thermostat")).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let error = &letters[0].error;
    assert!(
        error.contains("NaN") && error.contains("`null`"),
        "the reason should say the null was a non-finite float: {error}"
    );
    let mut handled = sensors.0.lock().unwrap().clone();
    handled.sort();
    assert_eq!(handled, ["attic", "kitchen"]);
    bus.shutdown().await;
}
