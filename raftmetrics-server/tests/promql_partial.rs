//! The Prometheus query API when a partition has no live replica: a 2-worker cluster at
//! replication factor 1 loses a worker to `kill -9`. A query answers over the partitions
//! left, with a warning naming the missing ones (the same ones `/aggregate` reports), and
//! with the same count `/aggregate` gives over them; `allow_partial=false` refuses it with
//! 503 `unavailable`. Both paths are covered: what the workers evaluate (`count_over_time`
//! and `count` of a selector, pushed down) and a range selector read raw through the
//! export (an instant query's matrix).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::DevCluster;
use raftmetrics_core::time::Timestamp;
use serde_json::{Value, json};

const HOSTS: usize = 24;
const POINTS_PER_HOST: usize = 6;

/// The partitions a warning names (`partitions 3, 7 have no live replica`).
fn named_partitions(warnings: &Value) -> BTreeSet<u64> {
    warnings
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|w| w.split("partitions ").nth(1))
        .flat_map(|rest| {
            rest.split(" have")
                .next()
                .unwrap_or_default()
                .split(", ")
                .filter_map(|p| p.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn value_of(doc: &Value) -> f64 {
    doc["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no single value in {doc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_without_a_partition_s_replicas_is_partial_and_says_which() {
    let c = DevCluster::start(2, 1, 8, &[]).await;
    let now_micros = Timestamp::now().as_micros();
    let at = |k: usize| Timestamp::from_micros(now_micros - (k as i64 + 1) * 30_000_000);
    let points: Vec<Value> = (0..HOSTS)
        .flat_map(|h| {
            (0..POINTS_PER_HOST).map(move |k| {
                json!({
                    "metric": "temp",
                    "value": (h * 10 + k) as f64,
                    "timestamp": at(k).to_rfc3339(),
                    "tags": {"host": format!("h{h}")},
                })
            })
        })
        .collect();
    let (s, doc) = c.post_json(&c.url("/insert"), &Value::Array(points)).await;
    assert_eq!(s, 200, "{doc}");
    let time = (now_micros / 1_000_000).to_string();
    let from = Timestamp::from_micros(now_micros - 3_600_000_000).to_rfc3339();
    let to = Timestamp::from_micros(now_micros + 1).to_rfc3339();
    let query = |q: &str, extra: &str| {
        c.url(&format!(
            "/api/v1/query?query={}&time={time}{extra}",
            urlencode(q)
        ))
    };
    let pushed = "sum(count_over_time(temp[1h]))";
    let series = "count(temp)";
    let raw = "temp[1h]";
    let points_of = |doc: &Value| -> usize {
        doc["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("no matrix in {doc}"))
            .iter()
            .map(|s| s["values"].as_array().map_or(0, Vec::len))
            .sum()
    };

    // Whole: every point and every series, no warning.
    let (s, doc) = c.get_json(&query(pushed, "")).await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(value_of(&doc), (HOSTS * POINTS_PER_HOST) as f64, "{doc}");
    assert!(doc.get("warnings").is_none(), "{doc}");
    let (s, doc) = c.get_json(&query(series, "")).await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(value_of(&doc), HOSTS as f64, "{doc}");
    let (s, doc) = c.get_json(&query(raw, "")).await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(points_of(&doc), HOSTS * POINTS_PER_HOST, "{doc}");

    c.kill_worker(2);

    // What `/aggregate` reports over the partitions left: its count and missing partitions.
    let aggregate = c.url(&format!(
        "/aggregate?metric=temp&agg=count&from={}&to={}",
        urlencode(&from),
        urlencode(&to)
    ));
    let (s, agg) = c.get_json(&aggregate).await;
    assert_eq!(s, 200, "{agg}");
    assert_eq!(agg["is_partial"], true, "{agg}");
    let missing: BTreeSet<u64> = agg["missing_partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(!missing.is_empty());
    let left = agg["aggregations"]["count"].as_f64().unwrap();
    assert!(left < (HOSTS * POINTS_PER_HOST) as f64, "{agg}");

    // Pushed down: at once, partial, naming the same partitions.
    let (s, doc) = c.get_json(&query(pushed, "")).await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(value_of(&doc), left, "{doc}");
    assert_eq!(named_partitions(&doc["warnings"]), missing, "{doc}");
    let (s, doc) = c.get_json(&query(pushed, "&allow_partial=false")).await;
    assert_eq!(s, 503, "{doc}");
    assert_eq!(doc["status"], "error", "{doc}");
    assert_eq!(doc["errorType"], "unavailable", "{doc}");

    let (s, doc) = c.get_json(&query(series, "")).await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(value_of(&doc) * POINTS_PER_HOST as f64, left, "{doc}");
    assert_eq!(named_partitions(&doc["warnings"]), missing, "{doc}");

    // Raw: once the control node no longer counts the worker as live (a page asked of it
    // before then fails the query with 503), partial with the same warning.
    let deadline = Instant::now() + Duration::from_secs(60);
    let doc = loop {
        let (s, doc) = c.get_json(&query(raw, "")).await;
        if s == 200 {
            break doc;
        }
        assert_eq!(s, 503, "{doc}");
        assert!(Instant::now() < deadline, "still refused: {doc}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(named_partitions(&doc["warnings"]), missing, "{doc}");
    assert_eq!(points_of(&doc) as f64, left, "{doc}");
    let (s, doc) = c.get_json(&query(raw, "&allow_partial=false")).await;
    assert_eq!(s, 503, "{doc}");
    assert_eq!(doc["errorType"], "unavailable", "{doc}");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
