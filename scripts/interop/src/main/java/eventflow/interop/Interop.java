package eventflow.interop;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.List;
import java.util.Properties;
import java.util.UUID;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * A Java service next to eventflow, on nothing but the official Kafka client: it produces an
 * eventflow event the way the eventflow-kafka docs tell a foreign producer to, in either wire
 * format, and reads back events eventflow published, parsing their metadata with the JDK.
 *
 * <pre>
 * produce BROKERS TOPIC eventflow|cloudevents ID CORRELATION CAUSATION KEY PAYLOAD TRACEPARENT
 *     prints "sent TIME_NANOS"
 * consume BROKERS TOPICS COUNT TIMEOUT_SECONDS (topics comma-separated)
 *     prints, per message: "message", "key K", "header NAME VALUE"..., the metadata as this
 *     program parsed it ("meta FIELD VALUE"...), "value PAYLOAD", "end" (tab-separated)
 * </pre>
 *
 * Exits with status 1 and the reason on stderr when a message cannot be parsed or the
 * messages do not arrive in time.
 */
public final class Interop {
    public static void main(String[] args) throws Exception {
        if (args.length == 10 && args[0].equals("produce")) {
            produce(args[1], args[2], args[3], args[4], args[5], args[6], args[7], args[8], args[9]);
        } else if (args.length == 5 && args[0].equals("consume")) {
            consume(args[1], args[2], Integer.parseInt(args[3]), Integer.parseInt(args[4]));
        } else {
            System.err.println("usage: produce BROKERS TOPIC FORMAT ID CORRELATION CAUSATION KEY PAYLOAD TRACEPARENT"
                    + " | consume BROKERS TOPIC COUNT TIMEOUT_SECONDS");
            System.exit(2);
        }
    }

    static void produce(String brokers, String topic, String format, String id, String correlation,
            String causation, String key, String payload, String traceparent) throws Exception {
        Properties config = new Properties();
        config.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        config.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        config.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        config.put(ProducerConfig.ACKS_CONFIG, "all");
        Instant now = Instant.now();
        long nanos = now.getEpochSecond() * 1_000_000_000L + now.getNano();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(config)) {
            ProducerRecord<String, String> record = new ProducerRecord<>(topic, key, payload);
            Headers headers = record.headers();
            switch (format) {
                case "eventflow" -> {
                    String value = String.join(";", "1", id, "order.paid", "1", Long.toString(nanos),
                            correlation, causation, "application/json");
                    put(headers, "eventflow", value);
                    put(headers, "traceparent", traceparent);
                    put(headers, "tenant", "acme");
                }
                case "cloudevents" -> {
                    put(headers, "ce_specversion", "1.0");
                    put(headers, "ce_id", id);
                    put(headers, "ce_source", "https://billing.example.com/java");
                    put(headers, "ce_type", "order.paid");
                    // An offset other than Z, as many producers write.
                    put(headers, "ce_time", now.atOffset(ZoneOffset.ofHours(2))
                            .format(DateTimeFormatter.ISO_OFFSET_DATE_TIME));
                    put(headers, "content-type", "application/json");
                    put(headers, "ce_partitionkey", key);
                    put(headers, "ce_correlationid", correlation);
                    put(headers, "ce_causationid", causation);
                    put(headers, "ce_traceparent", traceparent);
                    put(headers, "ce_tenant", "acme");
                }
                default -> throw new IllegalArgumentException("unknown format " + format);
            }
            producer.send(record).get();
        }
        System.out.println("sent\t" + nanos);
    }

    static void put(Headers headers, String key, String value) {
        headers.add(key, value.getBytes(StandardCharsets.UTF_8));
    }

    static void consume(String brokers, String topic, int count, int timeoutSeconds) {
        Properties config = new Properties();
        config.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        config.put(ConsumerConfig.GROUP_ID_CONFIG, "interop-" + UUID.randomUUID());
        config.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        config.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        config.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        config.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        int seen = 0;
        long deadline = System.nanoTime() + timeoutSeconds * 1_000_000_000L;
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(config)) {
            consumer.subscribe(List.of(topic.split(",")));
            while (seen < count) {
                if (System.nanoTime() > deadline) {
                    fail("read " + seen + " of " + count + " messages from " + topic + " in "
                            + timeoutSeconds + " s");
                }
                for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(200))) {
                    print(record);
                    seen++;
                }
            }
        }
    }

    static void print(ConsumerRecord<byte[], byte[]> record) {
        StringBuilder out = new StringBuilder("message\n");
        out.append("key\t").append(text(record.key())).append('\n');
        for (Header header : record.headers()) {
            out.append("header\t").append(header.key()).append('\t').append(text(header.value())).append('\n');
        }
        Header compact = record.headers().lastHeader("eventflow");
        Header specversion = record.headers().lastHeader("ce_specversion");
        if (compact != null) {
            String[] fields = text(compact.value()).split(";", 8);
            if (fields.length != 8 || !fields[0].equals("1")) {
                fail("the eventflow header is not in format 1 with 8 fields: " + text(compact.value()));
            }
            String[] names = {"format", "id", "name", "version", "time", "correlation", "causation", "content-type"};
            for (int i = 1; i < 8; i++) {
                out.append("meta\t").append(names[i]).append('\t').append(fields[i]).append('\n');
            }
            UUID.fromString(hyphenated(fields[1]));
        } else if (specversion != null) {
            String time = text(record.headers().lastHeader("ce_time").value());
            Instant at = OffsetDateTime.parse(time, DateTimeFormatter.ISO_OFFSET_DATE_TIME).toInstant();
            out.append("meta\ttime\t").append(at.getEpochSecond() * 1_000_000_000L + at.getNano()).append('\n');
            out.append("meta\tid\t").append(UUID.fromString(text(record.headers().lastHeader("ce_id").value())))
                    .append('\n');
        } else {
            fail("a message with neither the eventflow header nor ce_specversion");
        }
        out.append("value\t").append(text(record.value())).append("\nend");
        System.out.println(out);
    }

    /** The 32 hex digits eventflow writes, in the form java.util.UUID parses. */
    static String hyphenated(String simple) {
        if (simple.length() != 32) {
            return simple;
        }
        return simple.substring(0, 8) + "-" + simple.substring(8, 12) + "-" + simple.substring(12, 16) + "-"
                + simple.substring(16, 20) + "-" + simple.substring(20);
    }

    static String text(byte[] bytes) {
        return bytes == null ? "" : new String(bytes, StandardCharsets.UTF_8);
    }

    static void fail(String why) {
        System.err.println("interop: " + why);
        System.exit(1);
    }
}
