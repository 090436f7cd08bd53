//! The compact and one-per-field header forms, exactly as written and read back.

use super::*;
use crate::wire::decode;
use crate::KafkaBuilder;
use rdkafka::message::Headers;

/// The compact format, the default.
fn encode(envelope: &Envelope) -> OwnedHeaders {
    crate::wire::encode(envelope, &KafkaBuilder::new("localhost:9092"))
}

fn round_trip(headers: &OwnedHeaders, envelope: &Envelope) -> Envelope {
    decode(
        Some(headers),
        &envelope.topic,
        envelope.key.as_deref().map(str::as_bytes),
        Some(&envelope.payload),
        None,
    )
    .unwrap()
}

fn follow_up() -> Envelope {
    let cause = Envelope::new("order.placed", 1, "orders", "application/json", "{}");
    let mut envelope =
        Envelope::new("order.paid", 3, "orders", "application/json", r#"{"total":1}"#).caused_by(&cause);
    envelope.key = Some("order-1".into());
    envelope.headers.insert("tenant", "acme");
    envelope
}

fn value_of<'a>(headers: &'a OwnedHeaders, key: &str) -> Option<&'a str> {
    let h = headers.iter().find(|h| h.key == key)?;
    std::str::from_utf8(h.value?).ok()
}

#[test]
fn an_envelope_survives_the_round_trip() {
    let first = Envelope::new("order.placed", 1, "orders", "application/json", "{}");
    for envelope in [first, follow_up()] {
        assert_eq!(round_trip(&encode(&envelope), &envelope), envelope);
    }
}

#[test]
fn the_metadata_travels_in_one_header_as_documented() {
    let mut envelope = Envelope::new("order.placed", 2, "orders", "application/json", "{}");
    envelope.key = Some("order-1".into());
    let headers = encode(&envelope);
    let nanos = envelope.timestamp.duration_since(UNIX_EPOCH).unwrap().as_nanos();
    assert_eq!(
        value_of(&headers, EVENTFLOW),
        Some(&*format!(
            "1;{};order.placed;2;{nanos};;;application/json",
            envelope.id.simple()
        )),
        "a flow's first event leaves the correlation and causation ids empty"
    );
    let keys: Vec<&str> = headers.iter().map(|h| h.key).collect();
    assert_eq!(keys, [EVENTFLOW, eventflow::TRACEPARENT]);

    let envelope = follow_up();
    let value = value_of(&encode(&envelope), EVENTFLOW).unwrap().to_owned();
    let fields: Vec<&str> = value.split(';').collect();
    assert_eq!(fields[5], envelope.correlation_id.simple().to_string());
    assert_eq!(fields[6], envelope.causation_id.unwrap().simple().to_string());
}

#[test]
fn an_event_set_by_a_foreign_producer_is_read_with_the_defaults() {
    let id = Uuid::now_v7();
    let headers = OwnedHeaders::new().insert(header(
        EVENTFLOW,
        &format!("1;{id};order.paid;1;;;;application/json; charset=utf-8"),
    ));
    let envelope = decode(
        Some(&headers),
        "orders",
        None,
        Some(b"{}"),
        Some(1_700_000_000_123),
    )
    .unwrap();
    assert_eq!(envelope.id, id, "a hyphenated id is accepted");
    assert_eq!(envelope.name, "order.paid");
    assert_eq!(
        envelope.correlation_id, id,
        "no correlation id: the flow starts here"
    );
    assert_eq!(envelope.causation_id, None);
    assert_eq!(
        envelope.timestamp,
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        "no timestamp: the Kafka timestamp"
    );
    assert_eq!(envelope.content_type, "application/json; charset=utf-8");
}

#[test]
fn messages_with_one_header_per_field_are_still_read() {
    let envelope = follow_up();
    let headers = encode_individually(&envelope);
    assert_eq!(value_of(&headers, NAME), Some("order.paid"));
    assert_eq!(round_trip(&headers, &envelope), envelope);
}

#[test]
fn a_name_with_a_semicolon_is_written_one_header_per_field() {
    let mut envelope = follow_up();
    envelope.name = "odd;name".into();
    let headers = encode(&envelope);
    assert_eq!(value_of(&headers, EVENTFLOW), None);
    assert_eq!(value_of(&headers, NAME), Some("odd;name"));
    assert_eq!(round_trip(&headers, &envelope), envelope);
}

#[test]
fn decimals_are_written_in_full() {
    for n in [0u64, 7, 10, 1_795_308_000_914_000_000, u64::MAX] {
        assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
    }
}

#[test]
fn a_foreign_message_is_refused_with_what_it_lacks() {
    let headers = OwnedHeaders::new().insert(header(ID, &Uuid::now_v7().to_string()));
    let error = decode(Some(&headers), "orders", None, Some(b"hello"), None).unwrap_err();
    assert!(
        error.contains("`eventflow-name`, `eventflow-version`, `content-type`"),
        "{error}"
    );
    assert!(error.contains("`eventflow` header"), "{error}");
    let error = decode(None::<&OwnedHeaders>, "orders", None, Some(b"hello"), None).unwrap_err();
    assert!(error.contains("no headers"), "{error}");
}

#[test]
fn a_malformed_or_newer_eventflow_header_is_refused_with_the_reason() {
    let id = Uuid::now_v7().simple().to_string();
    for (value, expected) in [
        (format!("2;{id};a;1;;;;x"), "format \"2\""),
        (format!("1;{id};a;1"), "ends before the timestamp"),
        (
            "1;not-a-uuid;a;1;;;;x".to_owned(),
            "id in header `eventflow` is not a UUID",
        ),
        (format!("1;{id};a;one;;;;x"), "not a version number"),
    ] {
        let headers = OwnedHeaders::new().insert(header(EVENTFLOW, &value));
        let error = decode(Some(&headers), "orders", None, Some(b"{}"), None).unwrap_err();
        assert!(error.contains(expected), "{value}: {error}");
    }
}

#[test]
fn names_topics_and_content_types_seen_before_are_not_allocated_again() {
    let envelope = follow_up();
    let read = round_trip(&encode(&envelope), &envelope);
    for text in [&read.name, &read.topic, &read.content_type] {
        assert!(
            matches!(text, Cow::Borrowed(_)),
            "{text} is kept once, not per envelope"
        );
    }
    assert_eq!(read, envelope);
    let many: Vec<String> = (0..300).map(|i| format!("ever.new.name.{i}")).collect();
    let kept = many.iter().map(|name| known_text(name)).collect::<Vec<_>>();
    assert!(
        matches!(kept.last(), Some(Cow::Owned(_))),
        "past the limit, owned copies"
    );
    assert_eq!(kept.last().map(|k| &**k), Some("ever.new.name.299"));
}

#[test]
fn the_fields_are_split_as_splitn_splits_them() {
    for text in [
        "",
        "1",
        ";",
        "1;id",
        "1;id;name;1;;;;application/json",
        "1;id;name;1;2;3;4;type;with;semicolons",
        ";;;;;;;",
        ";;;;;;;;;",
        "1;ïd;nämé;1;;;;tÿpe",
    ] {
        let (fields, count) = split_fields(text.as_bytes());
        let expected: Vec<&[u8]> = text.as_bytes().splitn(8, |b| *b == b';').collect();
        assert_eq!(&fields[..count], &expected[..], "{text:?}");
    }
}

#[test]
fn decimals_are_read_as_str_parse_reads_them() {
    for text in [
        "",
        "+",
        "-",
        "0",
        "1",
        "+7",
        "-7",
        "007",
        "1a",
        " 1",
        "1 ",
        "١",
        "1795308000914000000",
        "9999999999999999999",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999",
        "000000000000000000000000001",
    ] {
        assert_eq!(
            parse_decimal(text.as_bytes()),
            text.parse::<u64>().ok(),
            "{text:?}"
        );
    }
}

#[test]
fn the_last_name_and_content_type_are_recalled_only_when_they_match() {
    let mut texts = LastTexts::default();
    for name in ["order.paid", "order.paid", "order.shipped", "", "order.paid"] {
        let recalled = texts.name(name);
        assert_eq!(recalled, name);
        // Kept as the process-wide table keeps it (once, unless the table is full, which
        // another test of this process may have made it).
        let kept = matches!(known_text(name), Cow::Borrowed(_));
        assert_eq!(matches!(recalled, Cow::Borrowed(_)), kept, "{name}");
    }
    assert_eq!(texts.content_type("application/json"), "application/json");
    assert_eq!(texts.content_type("text/plain"), "text/plain");
}

#[test]
fn a_name_or_content_type_that_is_not_utf8_is_refused() {
    let id = Uuid::now_v7().simple().to_string();
    let mut bytes = format!("1;{id};a;1;;;;x").into_bytes();
    assert!(read_metadata(&bytes).is_ok());
    // A lone continuation byte in the name, then in the content type.
    let name_at = 2 + id.len() + 1;
    bytes[name_at] = 0x80;
    let error = read_metadata(&bytes).err().expect("a name that is not UTF-8");
    assert!(
        error.contains("name in header `eventflow` is not UTF-8"),
        "{error}"
    );
    bytes[name_at] = b'a';
    *bytes.last_mut().unwrap() = 0x80;
    let error = read_metadata(&bytes)
        .err()
        .expect("a content type that is not UTF-8");
    assert!(
        error.contains("content type in header `eventflow` is not UTF-8"),
        "{error}"
    );
}

#[test]
fn names_and_content_types_beyond_ascii_travel_in_the_compact_header() {
    let mut envelope = follow_up();
    envelope.name = "bestellung.bezahlt.größe".into();
    envelope.content_type = "application/json; charset=utf-8; note=\"ü\"".into();
    let headers = encode(&envelope);
    assert!(value_of(&headers, EVENTFLOW).is_some(), "the compact form");
    assert_eq!(round_trip(&headers, &envelope), envelope);
}
