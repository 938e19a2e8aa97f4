//! Every decoder that reads bytes from outside, fed random and mutated input for a bounded
//! number of cases: JSON and bincode insert bodies, InfluxDB line protocol bodies and their
//! gzip encoding, import (JSON lines) bodies, query parameters, node-to-node frames, the
//! compute calls and answers they carry (queries with value bounds, states of `last` and
//! `first`) and raft entries. None may panic;
//! each answers a value or an error, and a lying length prefix costs no memory.
//!
//! Inputs are both raw random bytes and valid encodings with bytes flipped, cut or inserted,
//! which reach deeper into the decoders than noise. Cases are fixed in number
//! ([`CASES`], or `DECODER_CASES` to run longer) so the suite stays bounded.

use axum::body::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use raftmetrics_core::SketchConfig;
use raftmetrics_core::aggregate::{Coverage, PartialAggregate, finalize};
use raftmetrics_core::model::Point;
use raftmetrics_core::model::{Limits, Record, validate_batch};
use raftmetrics_core::query::Query;
use raftmetrics_core::raft::decode_entry;
use raftmetrics_core::raft::{LogEntry, encode_entry};
use raftmetrics_core::time::Timestamp;
use raftmetrics_server::http::body::{Format, decode_records};
use raftmetrics_server::rpc::{Request, Response};
use raftmetrics_server::wire::frame::{
    HEADER_LEN, MAGIC, PROTOCOL_VERSION, WireMessage, encode_frame, read_frame_limited,
};

/// Cases per property unless `DECODER_CASES` says otherwise.
const CASES: u32 = 20_000;

fn config() -> Config {
    let cases = std::env::var("DECODER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// The points of a valid insert body.
fn bincode_body_points() -> Vec<Point> {
    vec![
        Point::new("cpu_usage", 75.5)
            .at(Timestamp::from_micros(1_705_764_600_000_000))
            .tag("host", "server-1")
            .tag("datacenter", "us-west"),
        Point::new("mem", -2.0).partition_key("user123"),
    ]
}

/// A valid bincode insert body.
fn bincode_points() -> Vec<u8> {
    raftmetrics_core::codec::encode(&bincode_body_points()).expect("encode")
}

const JSON_BODIES: [&str; 3] = [
    r#"{"partition_key": "user123", "value": 42.5}"#,
    r#"[{"key": "cpu_usage", "value": 75.5, "timestamp": "2024-01-20T15:30:00Z",
        "tags": {"host": "server-1", "datacenter": "us-west"}}]"#,
    r#"{"metric": "m", "value": 1e308, "metadata": {"a": "b"}, "timestamp": 1705764600}"#,
];

/// `base` with a few bytes flipped, a cut and an insertion, driven by `ops`.
fn mutate(base: &[u8], ops: &[(u16, u8, u8)]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for &(at, byte, op) in ops {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let i = usize::from(at) % bytes.len();
        match op % 4 {
            0 => bytes[i] = byte,
            1 => bytes[i] ^= 1 << (byte % 8),
            2 => bytes.truncate(i),
            _ => bytes.insert(i, byte),
        }
    }
    bytes
}

fn mutations() -> impl Strategy<Value = Vec<(u16, u8, u8)>> {
    prop::collection::vec(any::<(u16, u8, u8)>(), 1..8)
}

/// Reads one frame from `bytes` with a small body limit.
fn read_frame_from(bytes: &[u8]) -> Result<WireMessage, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut reader = bytes;
    runtime
        .block_on(read_frame_limited(&mut reader, 64 * 1024))
        .map_err(|e| e.to_string())
}

/// Keys the query parser knows, and some it does not.
const PARAM_KEYS: [&str; 24] = [
    "value_gt",
    "value_ge",
    "value_lt",
    "value_le",
    "metric",
    "key",
    "from",
    "to",
    "window",
    "step",
    "rolling",
    "allow_partial",
    "consistency",
    "tags",
    "hosts",
    "datacenters",
    "agg",
    "group_by",
    "order_by",
    "limit",
    "token",
    "",
    "agg ",
    "unknown",
];

fn param_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.:*,=-]{0,24}",
        Just("p99.9".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("99999999999999999999h".to_string()),
        Just("2024-01-20T15:30:00Z".to_string()),
        Just("value:desc".to_string()),
        Just("last:desc".to_string()),
        Just("last,first,p95".to_string()),
        Just("90".to_string()),
        Just("-1.5e300".to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("1e400".to_string()),
        any::<String>(),
    ]
}

/// A query with every kind of field set, value bounds and `last`/`first` among them.
fn full_query() -> Query {
    Query::from_params(&[
        ("metric", "usage_user,usage_system"),
        ("from", "2024-01-20T00:00:00Z"),
        ("to", "2024-01-21T00:00:00Z"),
        ("window", "1h"),
        ("rolling", "true"),
        ("step", "10m"),
        ("tags", "env:prod"),
        ("hosts", "web-*"),
        ("agg", "last,first,avg,p99.9"),
        ("group_by", "hostname"),
        ("order_by", "last:desc"),
        ("limit", "10"),
        ("value_gt", "90"),
        ("value_ge", "-0.5"),
        ("value_lt", "1e300"),
        ("value_le", "100"),
    ])
    .expect("a valid query")
}

/// A compute call between nodes, as bincode.
fn compute_call() -> Vec<u8> {
    raftmetrics_core::codec::encode(&Request::Compute {
        partitions: vec![0, 3, 7],
        query: full_query(),
        strong: true,
    })
    .expect("encode")
}

/// A compute answer between nodes with `last` and `first` states, as bincode.
fn computed_answer() -> Vec<u8> {
    let cfg = SketchConfig::default();
    let mut partial = PartialAggregate::default();
    for (i, (ts, v)) in [(5, 91.0), (5, 99.0), (2, 93.5)].into_iter().enumerate() {
        partial
            .state_mut(vec![Some(format!("host_{}", i % 2))], 3_600_000_000)
            .add_at(&cfg, ts, v, true);
    }
    raftmetrics_core::codec::encode(&Response::Computed {
        partial,
        missing: vec![1],
    })
    .expect("encode")
}

/// An insert body decoded and validated as an insert is.
fn decode_points(format: Format, body: &Bytes) -> Result<Vec<Record>, String> {
    decode_records(format, body, Timestamp::now(), &Limits::default()).map_err(|e| e.to_string())
}

/// A valid raft entry over two series.
fn entry_bytes() -> Vec<u8> {
    let points: Vec<Point> = bincode_body_points();
    let records = validate_batch(points, Timestamp::now(), &Limits::default()).expect("valid");
    let mut entry = LogEntry::default();
    entry.push_batch(None, records);
    encode_entry(&entry).expect("encoded")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_entries_decode_or_fail_cleanly(ops in mutations()) {
        let bytes = mutate(&entry_bytes(), &ops);
        if let Ok(entry) = decode_entry(&bytes) {
            // A record costs at least 10 bytes: series index, timestamp, value.
            prop_assert!(entry.records.len() <= bytes.len() / 10, "records conjured");
        }
    }

    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let body = Bytes::from(bytes.clone());
        let _ = decode_points(Format::Bincode, &body);
        let _ = decode_points(Format::Json, &body);
        let _ = decode_entry(&bytes);
        let _ = raftmetrics_core::codec::decode::<WireMessage>(&bytes);
        let _ = read_frame_from(&bytes);
    }

    #[test]
    fn mutated_bincode_bodies_decode_or_fail_cleanly(ops in mutations()) {
        let bytes = mutate(&bincode_points(), &ops);
        if let Ok(points) = decode_points(Format::Bincode, &Bytes::from(bytes)) {
            prop_assert!(points.len() <= 2, "a mutation cannot conjure points");
        }
    }

    #[test]
    fn mutated_json_bodies_decode_or_fail_cleanly(which in 0usize..3, ops in mutations()) {
        let bytes = mutate(JSON_BODIES[which].as_bytes(), &ops);
        let _ = decode_points(Format::Json, &Bytes::from(bytes));
    }

    #[test]
    fn mutated_frames_decode_or_fail_cleanly(ops in mutations()) {
        let frame = encode_frame(&WireMessage::Call { id: 7, body: bincode_points() })
            .expect("frame");
        let _ = read_frame_from(&mutate(&frame, &ops));
    }

    #[test]
    fn a_lying_length_prefix_is_refused_before_any_allocation(len in any::<u32>(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = Vec::with_capacity(HEADER_LEN + tail.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.push(PROTOCOL_VERSION);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&tail);
        // The reader holds only `tail`: a frame claiming more either is refused for its size
        // or ends early; it never waits for or allocates the claimed length.
        let result = read_frame_from(&bytes);
        if len as usize > tail.len() {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn mutated_compute_calls_decode_or_fail_cleanly(ops in mutations()) {
        let bytes = mutate(&compute_call(), &ops);
        if let Ok(Request::Compute { query, .. }) = raftmetrics_core::codec::decode::<Request>(&bytes) {
            // A worker validates what it decoded before it computes: bounds that are not
            // finite never reach a store.
            if query.validate().is_ok() {
                prop_assert!(query.values.bounds().iter().flatten().all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn mutated_compute_answers_decode_or_fail_cleanly(ops in mutations()) {
        let bytes = mutate(&computed_answer(), &ops);
        if let Ok(Response::Computed { partial, .. }) = raftmetrics_core::codec::decode::<Response>(&bytes) {
            // Whatever a state holds, merging and finalizing it answers. (Tumbling buckets:
            // rolling windows span the range between buckets, which mutated keys stretch.)
            let mut query = full_query();
            query.rolling = false;
            query.step_micros = None;
            let mut merged = PartialAggregate::default();
            merged.merge(partial.clone());
            merged.merge(partial);
            let _ = finalize(&query, &SketchConfig::default(), &merged, Coverage::complete());
        }
    }

    #[test]
    fn query_parameters_parse_or_fail_cleanly(
        with_metric in any::<bool>(),
        params in prop::collection::vec((0usize..PARAM_KEYS.len(), param_value()), 0..6)
    ) {
        // Half the cases name a metric, so that some parse and the round trip is exercised.
        let params: Vec<(&str, String)> = with_metric
            .then(|| ("metric", "cpu_usage".to_string()))
            .into_iter()
            .chain(params.into_iter().map(|(k, v)| (PARAM_KEYS[k], v)))
            .collect();
        if let Ok(query) = Query::from_params(&params) {
            // What parses is valid and survives its own encoding.
            prop_assert!(query.validate().is_ok());
            let again = Query::from_params(&query.to_params());
            prop_assert_eq!(again.ok(), Some(query));
        }
    }
}

// Prometheus remote write: snappy-compressed protobuf, mutated before and after compression.

use raftmetrics_server::decode::remote_write::{
    self, Exemplar, Histogram, Label, MetricMetadata, RemoteWriteLimits, STALE_NAN_BITS, Sample,
    TimeSeries, WriteRequest,
};

/// A valid remote write request: two series, one with an exemplar and a native histogram, a
/// staleness marker and a metadata entry.
fn remote_write_request() -> WriteRequest {
    let label = |name: &str, value: &str| Label {
        name: name.into(),
        value: value.into(),
    };
    WriteRequest {
        timeseries: vec![
            TimeSeries {
                labels: vec![
                    label("__name__", "http_requests_total"),
                    label("instance", "web-1:9090"),
                    label("job", "api"),
                ],
                samples: vec![
                    Sample {
                        value: 1.5,
                        timestamp: 1_705_764_600_000,
                    },
                    Sample {
                        value: f64::from_bits(STALE_NAN_BITS),
                        timestamp: 1_705_764_615_000,
                    },
                ],
                exemplars: vec![Exemplar {
                    labels: vec![label("trace_id", "4bf92f3577b34da6")],
                    value: 1.0,
                    timestamp: 1_705_764_600_000,
                }],
                histograms: vec![Histogram {
                    count_int: 3,
                    sum: 4.5,
                    schema: 0,
                    positive_deltas: vec![1, 1],
                    timestamp: 1_705_764_600_000,
                }],
            },
            TimeSeries {
                labels: vec![label("__name__", "job:up:sum"), label("job", "api")],
                samples: vec![Sample {
                    value: 2.0,
                    timestamp: 1_705_764_600_000,
                }],
                ..TimeSeries::default()
            },
        ],
        metadata: vec![MetricMetadata {
            r#type: 1,
            metric_family_name: "http_requests_total".into(),
            help: "Requests served.".into(),
            unit: String::new(),
        }],
    }
}

/// Snappy block compression of `bytes`.
fn snappy(bytes: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(bytes)
        .expect("compress")
}

/// Checks what a remote write decode answered: the counts agree with the points, and no
/// more samples were read than the limit and the bytes allow.
fn check_remote_write(
    limits: &RemoteWriteLimits,
    decompressed_at_most: usize,
    result: Result<(Vec<Point>, remote_write::RemoteWriteStats), raftmetrics_core::Error>,
) -> Result<(), TestCaseError> {
    if let Ok((points, stats)) = result {
        prop_assert_eq!(points.len() as u64, stats.samples);
        let read = stats.samples + stats.stale_skipped + stats.non_finite_skipped;
        prop_assert!(read <= limits.max_samples as u64, "over the sample limit");
        // A sample costs at least 2 bytes (its key and length).
        prop_assert!(
            read as usize <= decompressed_at_most / 2,
            "samples conjured"
        );
    }
    Ok(())
}

/// Small bounds, so that the limits are reached by the fuzzed inputs too.
fn small_remote_write_limits() -> RemoteWriteLimits {
    RemoteWriteLimits {
        max_decompressed_bytes: 4096,
        max_samples: 64,
        max_text_bytes: 16 * 1024,
        ..RemoteWriteLimits::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic_the_remote_write_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        for limits in [RemoteWriteLimits::default(), small_remote_write_limits()] {
            // As a body, and as the protobuf inside a valid snappy block.
            let result = remote_write::decode(&bytes, &limits);
            check_remote_write(&limits, bytes.len() * 22, result)?;
            let result = remote_write::decode(&snappy(&bytes), &limits);
            check_remote_write(&limits, bytes.len(), result)?;
        }
    }

    #[test]
    fn mutated_remote_write_bodies_decode_or_fail_cleanly(ops in mutations()) {
        let limits = RemoteWriteLimits::default();
        let body = mutate(&remote_write::encode(&remote_write_request()), &ops);
        let result = remote_write::decode(&body, &limits);
        check_remote_write(&limits, body.len() * 22, result)?;
    }

    #[test]
    fn mutated_remote_write_protobuf_decodes_or_fails_cleanly(ops in mutations()) {
        use prost::Message;
        let bytes = mutate(&remote_write_request().encode_to_vec(), &ops);
        for limits in [RemoteWriteLimits::default(), small_remote_write_limits()] {
            let result = remote_write::decode(&snappy(&bytes), &limits);
            check_remote_write(&limits, bytes.len(), result)?;
        }
    }

    #[test]
    fn a_lying_snappy_header_is_refused_before_decompressing(
        declared in any::<u32>(),
        tail in prop::collection::vec(any::<u8>(), 0..64)
    ) {
        let limits = small_remote_write_limits();
        let mut body = Vec::with_capacity(5 + tail.len());
        let mut n = declared;
        while n >= 0x80 {
            body.push((n as u8) | 0x80);
            n >>= 7;
        }
        body.push(n as u8);
        body.extend_from_slice(&tail);
        let result = remote_write::decode(&body, &limits);
        if declared as usize > limits.max_decompressed_bytes || declared as usize > tail.len() * 64 {
            prop_assert!(result.is_err());
        }
    }
}

/// The costliest requests within the default bounds are decoded or refused in bounded time:
/// the most samples over one series, and the most text per point.
#[test]
fn the_largest_remote_write_requests_take_bounded_time() {
    let limits = RemoteWriteLimits::default();
    let label = |name: String, value: String| Label { name, value };
    let samples = vec![
        Sample {
            value: 1.0,
            timestamp: 1_705_764_600_000,
        };
        limits.max_samples
    ];
    let small = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![label("__name__".into(), "m".into())],
            samples: samples.clone(),
            ..TimeSeries::default()
        }],
        metadata: vec![],
    };
    let mut labels = vec![label("__name__".into(), "m".repeat(255))];
    for i in 1..limits.max_labels {
        labels.push(label(
            format!("{i:0>width$}", width = limits.max_label_name_bytes),
            "v".repeat(limits.max_label_value_bytes),
        ));
    }
    let wide = WriteRequest {
        timeseries: vec![TimeSeries {
            labels,
            samples,
            ..TimeSeries::default()
        }],
        metadata: vec![],
    };
    let started = std::time::Instant::now();
    let (points, _) = remote_write::decode(&remote_write::encode(&small), &limits).expect("small");
    assert_eq!(points.len(), limits.max_samples);
    let wide = remote_write::decode(&remote_write::encode(&wide), &limits);
    assert!(wide.is_err(), "the text of the points is over its budget");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// The line protocol decoder and gzip bodies: random bytes, random text of the protocol's own
/// characters, mutated valid bodies, and a round trip of generated lines through the
/// protocol's escaping.
mod line_protocol {
    use super::{config, mutate, mutations};
    use proptest::prelude::*;
    use raftmetrics_core::model::{Limits, Point};
    use raftmetrics_core::time::Timestamp;
    use raftmetrics_server::decode::line_protocol::{
        LineProtocolOptions, Precision, decode, decode_records, gunzip_bounded,
    };
    use std::collections::BTreeMap;
    use std::io::Write;

    /// What a gzip body may inflate to in these tests.
    const GZIP_LIMIT: usize = 64 * 1024;

    fn opts() -> LineProtocolOptions {
        LineProtocolOptions::new(Timestamp::now(), &Limits::default())
    }

    /// Valid bodies that use every part of the protocol.
    const BODIES: [&str; 4] = [
        "cpu,host=server-1,dc=us-west usage_idle=93.5,usage_user=1.5e0 1705764600000000000\n\
         mem,host=server-1 used=123456i,free=42u,swapping=f 1705764600000000000\n",
        "# comment\r\n\r\nweather,location=us\\,midwest,season=summer\\ time temp=82,ok=t\r\n\
         disk,path=C:\\\\,k\\=1=a\\ b used_percent=-0.5 1705764600\r\n",
        "net,iface=eth0 bytes=1i,drops=0u,up=TRUE,ratio=.25\n  net,iface=lo bytes=2i  \n",
        "m v=1\nm s=\"a \\\" b\",v=2 3\nm v=NaN\nm,a=1,a=2 v=1\n",
    ];

    /// The protocol's own characters, to make random text that is nearly line protocol.
    const ALPHABET: &[u8] = b"mv,= \\\"\n\r#.-+eEiutTf0123456789\t\xc3\xa9";

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("gzip");
        encoder.finish().expect("gzip")
    }

    /// A field value and the number it must decode to.
    #[derive(Clone, Debug)]
    enum Value {
        Float(f64),
        Int(i64),
        UInt(u64),
        Bool(usize, bool),
    }

    impl Value {
        fn text(&self) -> String {
            const TRUE: [&str; 5] = ["t", "T", "true", "True", "TRUE"];
            const FALSE: [&str; 5] = ["f", "F", "false", "False", "FALSE"];
            match self {
                // Rust's shortest round-trip form, with or without an exponent.
                Value::Float(v) if v.abs() > 1e15 => format!("{v:e}"),
                Value::Float(v) => format!("{v}"),
                Value::Int(v) => format!("{v}i"),
                Value::UInt(v) => format!("{v}u"),
                Value::Bool(form, true) => TRUE[form % 5].to_string(),
                Value::Bool(form, false) => FALSE[form % 5].to_string(),
            }
        }

        fn number(&self) -> f64 {
            match self {
                Value::Float(v) => *v,
                Value::Int(v) => *v as f64,
                Value::UInt(v) => *v as f64,
                Value::Bool(_, b) => f64::from(u8::from(*b)),
            }
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(Value::Float),
            (-1e6f64..1e6).prop_map(Value::Float),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            (0usize..5, any::<bool>()).prop_map(|(f, b)| Value::Bool(f, b)),
        ]
    }

    /// A generated line: names the model accepts for the metric, any text for tags.
    #[derive(Clone, Debug)]
    struct GenLine {
        measurement: String,
        tags: BTreeMap<String, String>,
        fields: BTreeMap<String, Value>,
        timestamp: Option<i64>,
    }

    fn tag_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9_.-]{1,8}",
            // Every character that needs escaping, and backslashes before anything.
            "[a-z ,=\\\\\"#\t\u{e9}\u{1f600}]{1,12}",
            any::<String>().prop_filter("no newline", |s| !s.is_empty() && !s.contains('\n')),
        ]
    }

    fn gen_line() -> impl Strategy<Value = GenLine> {
        (
            "[a-zA-Z0-9_.-]{1,16}",
            prop::collection::btree_map(tag_text(), tag_text(), 0..5),
            prop::collection::btree_map("[a-zA-Z0-9_.-]{1,16}", value(), 1..5),
            prop::option::of(any::<i64>()),
        )
            .prop_map(|(measurement, tags, fields, timestamp)| GenLine {
                measurement,
                tags,
                fields,
                timestamp,
            })
    }

    /// `text` with a backslash before each of `special`.
    fn escape(text: &str, special: &[char]) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if special.contains(&c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    impl GenLine {
        fn encode(&self) -> String {
            let names = [',', '=', ' ', '\\'];
            let mut line = escape(&self.measurement, &[',', ' ', '\\']);
            for (k, v) in &self.tags {
                line.push(',');
                line.push_str(&escape(k, &names));
                line.push('=');
                line.push_str(&escape(v, &names));
            }
            let fields: Vec<String> = self
                .fields
                .iter()
                .map(|(k, v)| format!("{}={}", escape(k, &names), v.text()))
                .collect();
            line.push(' ');
            line.push_str(&fields.join(","));
            if let Some(ts) = self.timestamp {
                line.push_str(&format!(" {ts}"));
            }
            line
        }

        fn points(&self, now: Timestamp) -> Vec<Point> {
            let at = self
                .timestamp
                .map_or(now, |ns| Timestamp::from_micros(ns.div_euclid(1000)));
            self.fields
                .iter()
                .map(|(f, v)| Point {
                    metric: format!("{}_{f}", self.measurement),
                    value: v.number(),
                    timestamp: Some(at),
                    tags: self.tags.clone(),
                    partition_key: None,
                })
                .collect()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn random_bytes_never_panic_the_line_protocol_decoders(
            bytes in prop::collection::vec(any::<u8>(), 0..512)
        ) {
            let _ = decode(&bytes, &opts());
            let _ = decode_records(&bytes, &opts(), &Limits::default());
            if let Ok(out) = gunzip_bounded(&bytes, GZIP_LIMIT) {
                prop_assert!(out.len() <= GZIP_LIMIT);
            }
        }

        #[test]
        fn random_protocol_text_decodes_or_fails_cleanly(
            picks in prop::collection::vec(0..ALPHABET.len(), 0..256),
            precision in prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h"]),
        ) {
            let bytes: Vec<u8> = picks.into_iter().map(|i| ALPHABET[i]).collect();
            let mut o = opts();
            o.precision = Precision::parse(precision).expect("known precision");
            if let Ok(points) = decode(&bytes, &o) {
                // A point costs at least 3 bytes (`k=1`).
                prop_assert!(points.len() * 3 <= bytes.len(), "points conjured");
                prop_assert!(points.iter().all(|p| p.value.is_finite()));
            }
        }

        #[test]
        fn mutated_line_protocol_bodies_decode_or_fail_cleanly(
            which in 0usize..BODIES.len(),
            ops in mutations(),
        ) {
            let bytes = mutate(BODIES[which].as_bytes(), &ops);
            if let Ok(points) = decode(&bytes, &opts()) {
                prop_assert!(points.len() * 3 <= bytes.len(), "points conjured");
                prop_assert!(points.iter().all(|p| p.value.is_finite()));
            }
            let _ = decode_records(&bytes, &opts(), &Limits::default());
        }

        #[test]
        fn mutated_gzip_bodies_inflate_within_the_limit_or_fail(
            which in 0usize..BODIES.len(),
            ops in mutations(),
        ) {
            let bytes = mutate(&gzip(BODIES[which].as_bytes()), &ops);
            if let Ok(out) = gunzip_bounded(&bytes, GZIP_LIMIT) {
                prop_assert!(out.len() <= GZIP_LIMIT);
                let _ = decode(&out, &opts());
            }
        }

        #[test]
        fn generated_lines_round_trip_through_escaping(
            lines in prop::collection::vec(gen_line(), 1..6),
            crlf in any::<bool>(),
            comments in any::<bool>(),
        ) {
            let o = opts();
            let end = if crlf { "\r\n" } else { "\n" };
            let mut body = String::new();
            let mut want = Vec::new();
            for line in &lines {
                if comments {
                    body.push_str("# a comment, with = and \\ and \"");
                    body.push_str(end);
                    body.push_str(end);
                }
                body.push_str(&line.encode());
                body.push_str(end);
                want.extend(line.points(o.default_time));
            }
            let got = decode(body.as_bytes(), &o);
            prop_assert!(got.is_ok(), "{body:?}: {got:?}");
            prop_assert_eq!(got.ok(), Some(want));
        }
    }
}

/// The import decoder (`POST /api/v1/import`, JSON lines in the export's shape).
mod import {
    use super::{config, mutate, mutations};
    use proptest::prelude::*;
    use raftmetrics_core::model::Limits;
    use raftmetrics_core::time::Timestamp;
    use raftmetrics_server::decode::import::decode_records;
    use raftmetrics_server::export::Precision;
    use serde_json::json;

    const NOW: i64 = 1_705_764_600_000_000;
    const BODY: &str = "{\"metric\":{\"__name__\":\"cpu\",\"host\":\"a\"},\"values\":[1.5,2,-3e2],\"timestamps\":[1705708800000,1705708860000,1705708920000]}\n{\"metric\":{\"__name__\":\"mem\"},\"values\":[0],\"timestamps\":[1705708800001]}\n";

    fn decode(bytes: &[u8], precision: Precision) -> Result<usize, String> {
        decode_records(
            bytes,
            precision,
            Timestamp::from_micros(NOW),
            &Limits::default(),
        )
        .map(|records| {
            assert!(records.iter().all(|r| r.value.is_finite()));
            records.len()
        })
        .map_err(|e| e.to_string())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn random_bytes_never_panic_the_import_decoder(
            bytes in prop::collection::vec(any::<u8>(), 0..512)
        ) {
            let _ = decode(&bytes, Precision::Millis);
        }

        #[test]
        fn mutated_import_bodies_decode_or_fail_cleanly(ops in mutations(), micros in any::<bool>()) {
            let bytes = mutate(BODY.as_bytes(), &ops);
            let precision = if micros { Precision::Micros } else { Precision::Millis };
            if let Ok(points) = decode(&bytes, precision) {
                // A point costs at least 2 bytes of values and 2 of timestamps (`1,`).
                prop_assert!(points * 4 <= bytes.len(), "points conjured");
            }
        }

        #[test]
        fn generated_series_round_trip(
            series in prop::collection::vec(
                (
                    "[a-z][a-z0-9_.]{0,8}",
                    prop::collection::btree_map("[a-z][a-z0-9_]{0,5}", "[ -~]{1,8}", 0..4),
                    prop::collection::vec((-1e300f64..1e300, 0i64..1_705_000_000_000), 1..20),
                ),
                1..5,
            )
        ) {
            let mut body = String::new();
            let mut want = Vec::new();
            for (name, tags, points) in &series {
                let mut metric = serde_json::Map::new();
                metric.insert("__name__".into(), json!(name));
                for (k, v) in tags {
                    metric.insert(k.clone(), json!(v));
                }
                let values: Vec<f64> = points.iter().map(|p| p.0).collect();
                let timestamps: Vec<i64> = points.iter().map(|p| p.1).collect();
                body.push_str(&json!({"metric": metric, "values": values, "timestamps": timestamps}).to_string());
                body.push('\n');
                for (v, t) in points {
                    want.push((name.clone(), tags.clone(), *v, t * 1_000));
                }
            }
            let records = decode_records(body.as_bytes(), Precision::Millis, Timestamp::from_micros(NOW), &Limits::default());
            let records = match records {
                Ok(r) => r,
                Err(e) => return Err(TestCaseError::fail(format!("{e}: {body}"))),
            };
            let got: Vec<_> = records
                .iter()
                .map(|r| (r.series.metric().to_string(), r.series.tags().clone(), r.value, r.timestamp.as_micros()))
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
