//! The CloudEvents headers, exactly as written, and what is read from them.

use std::time::{Duration, UNIX_EPOCH};

use rdkafka::message::Headers;

use super::*;
use crate::config::{KafkaBuilder, WireFormat};
use crate::wire::decode;

const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A follow-up with every field set to a known value.
fn known() -> Envelope {
    let mut envelope = Envelope::new("order.paid", 3, "orders", "application/json", r#"{"total":1}"#);
    envelope.id = Uuid::parse_str("0190a8f4-c3d2-7c1e-9b3f-5a7d2e4c6b8a").unwrap();
    envelope.correlation_id = Uuid::parse_str("0190a8f4-0000-7000-8000-000000000001").unwrap();
    envelope.causation_id = Some(Uuid::parse_str("0190a8f4-0000-7000-8000-000000000002").unwrap());
    envelope.timestamp = UNIX_EPOCH + Duration::from_nanos(1_795_308_000_914_000_000);
    envelope.key = Some("order-1".into());
    envelope.headers.clear();
    envelope.headers.insert("traceparent", TRACE);
    envelope.headers.insert("tenant", "acme");
    envelope.headers.insert("X-Request", "r-9");
    envelope
}

fn pairs(headers: &OwnedHeaders) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            let value = String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap();
            (h.key.to_owned(), value)
        })
        .collect()
}

fn read(headers: &OwnedHeaders, key: Option<&str>) -> Result<Envelope, String> {
    decode(
        Some(headers),
        "orders",
        key.map(str::as_bytes),
        Some(b"{}"),
        Some(1_700_000_000_123),
    )
}

fn cloudevents_config() -> KafkaBuilder {
    KafkaBuilder::new("localhost:9092").wire_format(WireFormat::CloudEvents)
}

#[test]
fn an_event_is_written_in_binary_mode_with_these_exact_headers() {
    let headers = encode(&known(), None);
    let expected = [
        ("ce_specversion", "1.0"),
        ("ce_id", "0190a8f4-c3d2-7c1e-9b3f-5a7d2e4c6b8a"),
        ("ce_source", "/orders"),
        ("ce_type", "order.paid"),
        ("ce_time", "2026-11-22T00:40:00.914Z"),
        ("content-type", "application/json"),
        ("ce_eventversion", "3"),
        ("ce_partitionkey", "order-1"),
        ("ce_correlationid", "0190a8f4-0000-7000-8000-000000000001"),
        ("ce_causationid", "0190a8f4-0000-7000-8000-000000000002"),
        ("X-Request", "r-9"),
        ("ce_tenant", "acme"),
        ("ce_traceparent", TRACE),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(pairs(&headers), expected);
}

#[test]
fn the_configured_source_is_written_and_a_forwarded_source_kept() {
    let headers = encode(&known(), Some("https://shop.example.com/checkout"));
    assert!(pairs(&headers).contains(&("ce_source".into(), "https://shop.example.com/checkout".into())));
    let mut forwarded = known();
    forwarded.headers.insert(SOURCE, "urn:legacy-billing");
    let headers = encode(&forwarded, Some("https://shop.example.com/checkout"));
    let sources: Vec<_> = pairs(&headers).into_iter().filter(|(k, _)| k == SOURCE).collect();
    assert_eq!(
        sources,
        [("ce_source".to_owned(), "urn:legacy-billing".to_owned())]
    );
}

#[test]
fn an_envelope_survives_the_round_trip() {
    let envelope = known();
    let mut read_back = decode(
        Some(&encode(&envelope, None)),
        "orders",
        Some(b"order-1"),
        Some(&envelope.payload),
        None,
    )
    .unwrap();
    assert_eq!(
        read_back.headers.remove(SOURCE).as_deref(),
        Some("/orders"),
        "the source is kept"
    );
    assert_eq!(read_back, envelope);
}

#[test]
fn the_format_is_chosen_per_bus_and_per_topic() {
    let envelope = known();
    let keys = |config: &KafkaBuilder| -> Vec<String> {
        crate::wire::encode(&envelope, config)
            .iter()
            .map(|h| h.key.to_owned())
            .collect()
    };
    let compact = KafkaBuilder::new("localhost:9092");
    assert_eq!(
        keys(&compact)[0],
        "eventflow",
        "the default is the compact header"
    );
    assert_eq!(keys(&cloudevents_config())[0], "ce_specversion");
    let orders_only = compact.clone().topic_format("orders", WireFormat::CloudEvents);
    assert_eq!(keys(&orders_only)[0], "ce_specversion");
    let other_topic = compact.topic_format("payments", WireFormat::CloudEvents);
    assert_eq!(keys(&other_topic)[0], "eventflow");
    let back_to_compact = cloudevents_config().topic_format("orders", WireFormat::Eventflow);
    assert_eq!(keys(&back_to_compact)[0], "eventflow");
}

/// What a CloudEvents SDK in another language sends: only the required attributes.
fn foreign(id: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(header(SPECVERSION, "1.0"))
        .insert(header(ID, id))
        .insert(header(SOURCE, "https://billing.example.com"))
        .insert(header(TYPE, "invoice.sent"))
}

#[test]
fn a_minimal_foreign_cloudevent_is_read_with_the_defaults() {
    let id = Uuid::now_v7();
    let envelope = read(&foreign(&id.to_string()), None).unwrap();
    assert_eq!(envelope.id, id);
    assert_eq!(envelope.name, "invoice.sent");
    assert_eq!(envelope.version, 1, "no ce_eventversion: version 1");
    assert_eq!(envelope.content_type, "application/json");
    assert_eq!(
        envelope.correlation_id, id,
        "no correlation id: the flow starts here"
    );
    assert_eq!(envelope.causation_id, None);
    assert_eq!(envelope.key, None);
    assert_eq!(
        envelope.timestamp,
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        "no ce_time: the Kafka timestamp"
    );
    assert_eq!(envelope.headers.get(SOURCE), Some("https://billing.example.com"));
}

#[test]
fn extensions_offsets_and_the_partition_key_are_read() {
    let headers = foreign(&Uuid::now_v7().to_string())
        .insert(header(TIME, "2026-12-01T09:39:13.5+01:00"))
        .insert(header("content-type", "text/plain; charset=utf-8"))
        .insert(header(PARTITION_KEY, "customer-7"))
        .insert(header(TRACEPARENT, TRACE))
        .insert(header("ce_tenant", "acme"))
        .insert(header(SUBJECT, "invoice-12"));
    let envelope = read(&headers, None).unwrap();
    assert_eq!(
        envelope.timestamp,
        UNIX_EPOCH + Duration::from_millis(1_796_114_353_500),
        "2026-12-01T08:39:13.5Z"
    );
    assert_eq!(envelope.content_type, "text/plain; charset=utf-8");
    assert_eq!(
        envelope.key.as_deref(),
        Some("customer-7"),
        "no Kafka key: the partitionkey"
    );
    assert_eq!(
        envelope.headers.get("traceparent"),
        Some(TRACE),
        "ce_traceparent is the trace context"
    );
    assert_eq!(envelope.headers.get("tenant"), Some("acme"));
    assert_eq!(envelope.headers.get(SUBJECT), Some("invoice-12"));
    let keyed = read(&headers, Some("kafka-key")).unwrap();
    assert_eq!(keyed.key.as_deref(), Some("kafka-key"), "the Kafka key wins");
}

#[test]
fn an_id_that_is_not_a_uuid_gets_a_stable_uuid_and_is_kept() {
    let first = read(&foreign("A234-1234-1234"), None).unwrap();
    let again = read(&foreign("A234-1234-1234"), None).unwrap();
    let other = read(&foreign("A234-1234-1235"), None).unwrap();
    assert_eq!(first.id, again.id, "a redelivery has the same id");
    assert_ne!(first.id, other.id);
    assert_eq!(first.id.get_version_num(), 8);
    assert_eq!(first.headers.get(ID), Some("A234-1234-1234"));
}

#[test]
fn a_malformed_cloudevent_is_refused_with_the_reason() {
    let id = Uuid::now_v7().to_string();
    let cases = [
        (
            foreign(&id).insert(header(TIME, "yesterday")),
            "not an RFC 3339 timestamp",
        ),
        (
            foreign(&id).insert(header(TIME, "2026-02-30T00:00:00Z")),
            "no such date",
        ),
        (
            foreign(&id).insert(header(TIME, "2026-02-03T00:00:00")),
            "needs a 'Z' or an offset",
        ),
        (
            foreign(&id).insert(header(EVENT_VERSION, "two")),
            "not a version number",
        ),
        (
            foreign(&id).insert(header(CORRELATION_ID, "nope")),
            "`ce_correlationid` is not a UUID",
        ),
        (
            OwnedHeaders::new()
                .insert(header(SPECVERSION, "1.0"))
                .insert(header(ID, &id)),
            "no `ce_type` header",
        ),
        (
            OwnedHeaders::new()
                .insert(header(SPECVERSION, "0.3"))
                .insert(header(ID, &id))
                .insert(header(TYPE, "a")),
            "does not read (it reads 1.x)",
        ),
    ];
    for (headers, expected) in cases {
        let error = read(&headers, None).unwrap_err();
        assert!(error.contains(expected), "{expected:?} not in: {error}");
    }
}

#[test]
fn the_compact_header_wins_and_stray_ce_headers_are_kept_as_they_are() {
    let envelope = Envelope::new("order.placed", 1, "orders", "application/json", "{}");
    let headers = crate::wire::encode(&envelope, &KafkaBuilder::new("localhost:9092"))
        .insert(header(SPECVERSION, "1.0"))
        .insert(header("ce_tenant", "acme"));
    let read_back = read(&headers, None).unwrap();
    assert_eq!(read_back.id, envelope.id);
    assert_eq!(read_back.headers.get("ce_tenant"), Some("acme"));
    assert_eq!(read_back.headers.get(SPECVERSION), Some("1.0"));
}

#[test]
fn times_are_written_to_the_precision_they_have_and_read_back() {
    for (nanos, text) in [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400_000_000_000, "2000-02-29T00:00:00Z"),
        (1_795_308_000_914_000_000, "2026-11-22T00:40:00.914Z"),
        (1_795_308_000_914_500_000, "2026-11-22T00:40:00.914500Z"),
        (1_795_308_000_000_000_007, "2026-11-22T00:40:00.000000007Z"),
        (4_102_444_799_999_999_999, "2099-12-31T23:59:59.999999999Z"),
    ] {
        assert_eq!(time::write(nanos, &mut [0; time::MAX_LEN]), text);
        assert_eq!(
            time::parse(text),
            Ok(UNIX_EPOCH + Duration::from_nanos(nanos)),
            "{text}"
        );
    }
    assert_eq!(
        time::parse("1969-12-31t23:59:59.5z"),
        Ok(UNIX_EPOCH - Duration::from_millis(500))
    );
}
