//! Every decoder that reads bytes from outside, fed random and mutated input for a bounded
//! number of cases: JSON and bincode insert bodies, query parameters, node-to-node frames and
//! raft entries. None may panic; each answers a value or an error, and a lying length prefix
//! costs no memory.
//!
//! Inputs are both raw random bytes and valid encodings with bytes flipped, cut or inserted,
//! which reach deeper into the decoders than noise. Cases are fixed in number
//! ([`CASES`], or `DECODER_CASES` to run longer) so the suite stays bounded.

use axum::body::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use raftmetrics_core::model::Point;
use raftmetrics_core::model::{Limits, Record, validate_batch};
use raftmetrics_core::query::Query;
use raftmetrics_core::raft::decode_entry;
use raftmetrics_core::raft::{LogEntry, encode_entry};
use raftmetrics_core::time::Timestamp;
use raftmetrics_server::http::body::{Format, decode_records};
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
const PARAM_KEYS: [&str; 20] = [
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
        any::<String>(),
    ]
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
