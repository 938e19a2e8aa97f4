//! The cluster, end to end: real `raftmetrics-server` processes on loopback (started by the
//! `dev` role), real TCP between them, real DuckDB files, real SIGKILL. Every aggregate is
//! checked against the same points in one plain DuckDB.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{DevCluster, TOKEN, TOKEN_B, TOKEN_C, batches};
use duckdb::{Connection, params};
use raftmetrics_core::api::AnalyticsResponse;
use raftmetrics_core::model::{Limits, validate_batch};
use raftmetrics_core::{HashPartitioner, Partitioner, Point, Timestamp, codec};
use serde_json::{Value, json};

const T0: i64 = 1_705_708_800_000_000; // 2024-01-20T00:00:00Z

/// The same points in one plain DuckDB, with the partition each lands on.
struct Oracle {
    db: Connection,
}

impl Oracle {
    fn new() -> Self {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE pts(metric VARCHAR, dc VARCHAR, host VARCHAR, ts BIGINT, value DOUBLE, part INTEGER)",
        )
        .unwrap();
        Oracle { db }
    }

    fn add(&self, points: &[Point], partitions: u32) {
        let records =
            validate_batch(points.to_vec(), Timestamp::now(), &Limits::default()).unwrap();
        let partitioner = HashPartitioner::new(partitions).unwrap();
        let mut app = self.db.appender("pts").unwrap();
        for r in records {
            app.append_row(params![
                r.metric(),
                r.tags().get("datacenter").cloned(),
                r.tags().get("host").cloned(),
                r.timestamp.as_micros(),
                r.value,
                partitioner.partition_of(r.partition_key()) as i32
            ])
            .unwrap();
        }
    }

    /// `(count, sum, min, max, avg, p50, p95, p99)` of `metric` over `parts` (all if None),
    /// grouped by datacenter when `by_dc`.
    fn stats(
        &self,
        metric: &str,
        parts: Option<&[u32]>,
        by_dc: bool,
    ) -> BTreeMap<String, [f64; 8]> {
        let part_filter = part_filter(parts);
        let key = if by_dc { "dc" } else { "'all'" };
        let sql = format!(
            "SELECT {key}, count(*)::DOUBLE, sum(value), min(value), max(value), avg(value), \
             quantile_disc(value, 0.5), quantile_disc(value, 0.95), quantile_disc(value, 0.99) \
             FROM pts WHERE metric = ? {part_filter} GROUP BY 1"
        );
        let mut stmt = self.db.prepare(&sql).unwrap();
        let rows = stmt
            .query_map(params![metric], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    [
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ],
                ))
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    }
}

/// The SQL condition selecting `parts` (`AND part IN (...)`); empty for all partitions.
fn part_filter(parts: Option<&[u32]>) -> String {
    match parts {
        Some(ps) => format!(
            "AND part IN ({})",
            ps.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => String::new(),
    }
}

impl Oracle {
    /// `(count, last, first)` of `metric`'s points with a value above `above` (every point
    /// when `None`) over `parts` (all if None), by `key` (a column, or `'all'`). `last` and
    /// `first` by DuckDB's ordered aggregates: the greatest value at the greatest timestamp,
    /// the smallest at the smallest.
    fn picks(
        &self,
        metric: &str,
        parts: Option<&[u32]>,
        key: &str,
        above: Option<f64>,
    ) -> BTreeMap<String, (f64, f64, f64)> {
        let part_filter = part_filter(parts);
        let sql = format!(
            "SELECT {key}, count(*)::DOUBLE, last(value ORDER BY ts, value), \
             first(value ORDER BY ts, value) \
             FROM pts WHERE metric = ? AND value > ? {part_filter} GROUP BY 1"
        );
        let mut stmt = self.db.prepare(&sql).unwrap();
        let rows = stmt
            .query_map(params![metric, above.unwrap_or(f64::MIN)], |r| {
                Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?)))
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    }
}

/// Checks `count`, `last` and `first` of an `aggregations` object: exact.
fn check_picks(got: &Value, want: (f64, f64, f64), what: &str) {
    let g = |name: &str| {
        got[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: no {name} in {got}"))
    };
    assert_eq!(
        (g("count"), g("last"), g("first")),
        want,
        "{what}: count, last, first"
    );
}

/// Points at a few shared timestamps (before, inside and after the range of
/// [`cpu_points`]) from many hosts, so on several partitions, with values that repeat:
/// `last` and `first` must break the ties by value.
fn tie_points() -> Vec<Point> {
    let mut out = Vec::new();
    for (k, ts) in [
        T0 - 1_000_000,
        T0 + 1_800 * 1_000_000,
        T0 + 10_000 * 1_000_000,
    ]
    .into_iter()
    .enumerate()
    {
        for i in 0..30usize {
            let value = [95.0, -30.0, 50.0, 91.5, 0.0, 12.25][(i * 7 + k) % 6];
            out.push(
                Point::new("cpu_usage", value)
                    .at(Timestamp::from_micros(ts))
                    .tag("host", format!("web-{}", i % 13))
                    .tag("datacenter", ["us-west", "us-east", "eu-central"][i % 3]),
            );
        }
    }
    out
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

/// Checks an `aggregations` object against oracle stats.
fn check_aggs(got: &Value, want: &[f64; 8], what: &str) {
    let names = ["count", "sum", "min", "max", "avg"];
    for (i, name) in names.iter().enumerate() {
        let g = got[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: no {name} in {got}"));
        assert!(
            close(g, want[i], 1e-9),
            "{what}: {name} {g} != oracle {}",
            want[i]
        );
    }
    // Percentiles: within the sketch's 1% relative error of DuckDB's quantile_disc.
    for (i, name) in ["p50", "p95", "p99"].iter().enumerate() {
        let g = got[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: no {name} in {got}"));
        assert!(
            close(g, want[5 + i], 0.0101),
            "{what}: {name} {g} vs oracle {}",
            want[5 + i]
        );
    }
}

fn cpu_points(n: usize, seed: u64) -> Vec<Point> {
    let mut x = seed;
    (0..n)
        .map(|i| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let host = format!("web-{}", i % 13);
            let dc = ["us-west", "us-east", "eu-central"][i % 3];
            let value = ((x >> 33) % 10_000) as f64 / 100.0 - 20.0;
            Point::new("cpu_usage", value)
                .at(Timestamp::from_micros(T0 + i as i64 * 1_000_000))
                .tag("host", host)
                .tag("datacenter", dc)
        })
        .collect()
}

async fn post_bincode(c: &DevCluster, url: &str, points: &[Point]) -> reqwest::Response {
    c.post_bincode(url, TOKEN, points, Duration::from_secs(30))
        .await
        .unwrap()
}

/// Announces a JSON body of `len` bytes to `/insert` without sending it: the server must
/// refuse it from the length alone. Raw TCP, because the server answers (and closes)
/// before the body is sent, which an HTTP client reports as a broken pipe.
async fn oversized_insert(c: &DevCluster, len: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
        .await
        .unwrap();
    let head = format!(
        "POST /insert HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json = body
        .find('{')
        .and_then(|i| serde_json::from_str(body[i..].trim_end_matches(|ch: char| ch != '}')).ok());
    (status, json.unwrap_or(Value::Null))
}

async fn count_of(c: &DevCluster, metric: &str) -> u64 {
    let (s, body) = c
        .get_json(&c.url(&format!("/aggregate?metric={metric}&agg=count")))
        .await;
    assert_eq!(s, 200, "{body}");
    body["aggregations"]["count"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_errors_limits_and_partial_answers_with_two_workers() {
    const PARTS: u32 = 8;
    let c = DevCluster::start(2, 1, PARTS, &["--max-body-bytes", "1048576"]).await;
    let oracle = Oracle::new();

    // --- Auth: no token, wrong token, token in the query string.
    let resp = c.http.get(c.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let body: Value = common::json_of(resp).await;
    assert_eq!(body["code"], "AUTH_ERROR");
    assert_eq!(body["error"], true);
    let resp = c
        .http
        .get(c.url("/health"))
        .bearer_auth("nope-not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .http
        .get(c.url(&format!("/aggregate?metric=cpu_usage&token={TOKEN}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .http
        .post(c.worker_url(1, "/compute"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "workers require the token too");

    // --- The seed's flow: inserts through the control node; same key, same partition/worker.
    let (s, first) = c
        .post_json(
            &c.url("/insert"),
            &json!({"partition_key": "user123", "value": 42.5}),
        )
        .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["success"], true);
    oracle.add(&[Point::new("value", 42.5).partition_key("user123")], PARTS);
    for v in [1.0, 2.0] {
        let (s, again) = c
            .post_json(
                &c.url("/insert"),
                &json!({"partition_key": "user123", "value": v}),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(again["partition"], first["partition"]);
        assert_eq!(again["worker_node"], first["worker_node"]);
        oracle.add(&[Point::new("value", v).partition_key("user123")], PARTS);
    }
    let mut keyed = Vec::new();
    for i in 0..40 {
        keyed.push(Point::new("value", i as f64).partition_key(format!("user{i:03}")));
    }
    let body: Vec<Value> = keyed
        .iter()
        .map(|p| json!({"partition_key": p.partition_key, "value": p.value}))
        .collect();
    let (s, resp) = c.post_json(&c.url("/insert"), &Value::Array(body)).await;
    assert_eq!(s, 200, "{resp}");
    assert_eq!(resp["points"], 40);
    oracle.add(&keyed, PARTS);

    // Each worker's /compute shows only what it holds; together they hold everything once.
    let mut held: HashMap<u16, Vec<u32>> = HashMap::new();
    let mut total = 0;
    for w in 1..=2u16 {
        let (s, comp) = c.post_json(&c.worker_url(w, "/compute"), &json!({})).await;
        assert_eq!(s, 200, "{comp}");
        let parts: Vec<u32> = comp["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap() as u32)
            .collect();
        let want = oracle.stats("value", Some(&parts), false);
        let want_count = want.get("all").map_or(0.0, |s| s[0]);
        assert_eq!(
            comp["count"].as_f64().unwrap(),
            want_count,
            "worker {w} compute {comp}"
        );
        if let Some(s) = want.get("all") {
            assert!(close(comp["average"].as_f64().unwrap(), s[4], 1e-9));
        }
        total += comp["count"].as_u64().unwrap();
        held.insert(w, parts);
    }
    assert_eq!(total, 43);
    let all: BTreeSet<u32> = held.values().flatten().copied().collect();
    assert_eq!(all.len(), PARTS as usize);
    assert_eq!(
        held[&1].len() + held[&2].len(),
        PARTS as usize,
        "replication factor 1: disjoint"
    );
    let p123 = first["partition"].as_u64().unwrap() as u32;
    let owner = if held[&1].contains(&p123) { 1 } else { 2 };
    assert_eq!(first["worker_node"], format!("worker-{owner}"));

    // A worker forwards an insert for a partition it does not hold to the leader.
    let other = 3 - owner;
    let (s, fwd) = c
        .post_json(
            &c.worker_url(other, "/insert"),
            &json!({"partition_key": "user123", "value": 7.0}),
        )
        .await;
    assert_eq!(s, 200, "{fwd}");
    assert_eq!(fwd["partition"].as_u64().unwrap() as u32, p123);
    assert_eq!(fwd["worker_node"], format!("worker-{owner}"));
    oracle.add(&[Point::new("value", 7.0).partition_key("user123")], PARTS);

    // --- Thousands of points per request on both codecs.
    let cpu = cpu_points(6_000, 7);
    let resp = post_bincode(&c, &c.url("/insert"), &cpu[..4_000]).await;
    assert_eq!(resp.status(), 200);
    let ack: raftmetrics_core::api::InsertResponse =
        codec::decode(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(ack.points, 4_000);
    let json_batch: Vec<Value> = cpu[4_000..]
        .iter()
        .map(|p| json!({"key": p.metric, "value": p.value, "timestamp": p.timestamp, "tags": p.tags}))
        .collect();
    let (s, resp) = c
        .post_json(&c.url("/metrics"), &Value::Array(json_batch))
        .await;
    assert_eq!(s, 200, "{resp}");
    oracle.add(&cpu, PARTS);

    // --- Aggregates against the oracle.
    let aggs = "agg=avg,min,max,sum,count,p50,p95,p99";
    let (s, doc) = c
        .get_json(&c.url(&format!(
            "/aggregate?metric=cpu_usage&{aggs}&group_by=datacenter"
        )))
        .await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(doc["is_partial"], false);
    assert_eq!(doc["total_nodes"], 2);
    assert_eq!(doc["responding_nodes"], 2);
    assert_eq!(doc["percentiles"]["method"], "ddsketch");
    check_aggs(
        &doc["aggregations"],
        &oracle.stats("cpu_usage", None, false)["all"],
        "overall",
    );
    for (dc, want) in oracle.stats("cpu_usage", None, true) {
        check_aggs(&doc["by_datacenter"][&dc], &want, &dc);
    }
    let (s, win) = c
        .get_json(&c.url("/aggregate?metric=cpu_usage&agg=count&window=1h&from=2024-01-20T00:00:00Z&to=2024-01-20T02:00:00Z"))
        .await;
    assert_eq!(s, 200, "{win}");
    let buckets = win["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 2);
    assert_eq!(buckets[0]["aggregations"]["count"], 3_600);

    // --- last and first with ties at equal timestamps across partitions, and value bounds.
    let ties = tie_points();
    let resp = post_bincode(&c, &c.url("/insert"), &ties).await;
    assert_eq!(resp.status(), 200);
    oracle.add(&ties, PARTS);
    for above in [None, Some(40.0), Some(90.0)] {
        let bound = above.map_or(String::new(), |v| format!("&value_gt={v}"));
        let (s, doc) = c
            .get_json(&c.url(&format!(
                "/aggregate?metric=cpu_usage&agg=count,last,first&group_by=datacenter{bound}"
            )))
            .await;
        assert_eq!(s, 200, "{doc}");
        let want = oracle.picks("cpu_usage", None, "'all'", above);
        check_picks(
            &doc["aggregations"],
            want["all"],
            &format!("overall {bound}"),
        );
        let by_dc = oracle.picks("cpu_usage", None, "dc", above);
        assert_eq!(doc["by_datacenter"].as_object().unwrap().len(), by_dc.len());
        for (dc, want) in by_dc {
            check_picks(&doc["by_datacenter"][&dc], want, &format!("{dc} {bound}"));
        }
        // Each worker's /compute: what it holds, with the same bounds in its JSON body.
        for (w, parts) in &held {
            let mut body = json!({"metric": "cpu_usage", "aggregations": ["last", "first"]});
            if let Some(v) = above {
                body["value_gt"] = json!(v);
            }
            let (s, comp) = c.post_json(&c.worker_url(*w, "/compute"), &body).await;
            assert_eq!(s, 200, "{comp}");
            match oracle
                .picks("cpu_usage", Some(parts.as_slice()), "'all'", above)
                .get("all")
            {
                Some(want) => check_picks(&comp["results"], *want, &format!("worker {w} {bound}")),
                None => assert_eq!(comp["count"], 0, "{comp}"),
            }
        }
    }
    // TSBS high-cpu: the hosts with any reading above 90, ordered by their latest one.
    let (s, doc) = c
        .get_json(&c.url(
            "/aggregate?metric=cpu_usage&agg=last,count&group_by=host&value_gt=90&order_by=last:desc",
        ))
        .await;
    assert_eq!(s, 200, "{doc}");
    let hot = oracle.picks("cpu_usage", None, "host", Some(90.0));
    let groups = doc["groups"].as_array().unwrap();
    assert_eq!(groups.len(), hot.len(), "{doc}");
    assert!(!hot.is_empty());
    let lasts: Vec<f64> = groups
        .iter()
        .map(|g| g["aggregations"]["last"].as_f64().unwrap())
        .collect();
    assert!(lasts.windows(2).all(|w| w[0] >= w[1]), "{lasts:?}");
    for g in groups {
        let host = g["key"]["host"].as_str().unwrap();
        let (count, last, _) = hot[host];
        assert_eq!(g["aggregations"]["count"].as_f64(), Some(count), "{host}");
        assert_eq!(g["aggregations"]["last"].as_f64(), Some(last), "{host}");
    }
    // Bad bounds: every one named, on /aggregate and on a worker's /compute.
    let (s, e) = c
        .get_json(
            &c.url("/aggregate?metric=cpu_usage&value_gt=abc&value_lt=NaN&value_ge=inf&agg=last"),
        )
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("VALIDATION_ERROR")),
        "{e}"
    );
    let fields: Vec<&str> = e["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["value_gt", "value_lt", "value_ge"], "{e}");
    let (s, e) = c
        .post_json(
            &c.worker_url(1, "/compute"),
            &json!({"value_gt": "abc", "value_le": "90"}),
        )
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("VALIDATION_ERROR")),
        "{e}"
    );
    assert_eq!(e["details"]["fields"].as_array().unwrap().len(), 2, "{e}");

    // --- Bad input: clear errors, nothing stored.
    let before = count_of(&c, "cpu_usage").await;
    let (s, e) = c
        .post_json(
            &c.url("/insert"),
            &json!({"key": "cpu usage!", "value": 1.0}),
        )
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("VALIDATION_ERROR")),
        "{e}"
    );
    let (s, e) = c
        .post_json(
            &c.url("/insert"),
            &json!({"key": "cpu_usage", "value": 1.0, "timestamp": "yesterday"}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["code"] == "VALIDATION_ERROR" || e["code"] == "INVALID_REQUEST",
        "{e}"
    );
    let mut with_nan = cpu_points(50, 99);
    with_nan[17].value = f64::NAN;
    let resp = post_bincode(&c, &c.url("/insert"), &with_nan).await;
    assert_eq!(resp.status(), 400);
    let e: Value = common::json_of(resp).await;
    assert_eq!(e["code"], "VALIDATION_ERROR");
    assert!(
        e["details"]["fields"][0]["field"]
            .as_str()
            .unwrap()
            .contains("points[17]"),
        "{e}"
    );
    let (s, e) = c
        .post_json(&c.url("/insert"), &json!([{"key": "cpu_usage", "value": 1.0}, {"key": "bad name", "value": 2.0}, {"key": "cpu_usage", "value": "NaN"}]))
        .await;
    assert_eq!(s, 400, "{e}");
    let (status, e) = oversized_insert(&c, 2 * 1024 * 1024).await;
    assert_eq!(status, 413, "{e}");
    assert_eq!(e["code"], "INVALID_REQUEST");
    let (s, e) = c
        .get_json(&c.url("/aggregate?metric=cpu_usage&window=7x&from=never"))
        .await;
    assert_eq!((s, e["code"].as_str()), (400, Some("VALIDATION_ERROR")));
    assert_eq!(e["details"]["fields"].as_array().unwrap().len(), 2, "{e}");
    assert_eq!(
        count_of(&c, "cpu_usage").await,
        before,
        "a refused request stored something"
    );

    // --- Health and Prometheus metrics.
    let (s, h) = c.get_json(&c.url("/health")).await;
    assert_eq!(s, 200);
    assert_eq!(h["worker_nodes"]["total"], 2);
    assert_eq!(h["worker_nodes"]["healthy"], 2);
    let (s, wh) = c.get_json(&c.worker_url(1, "/health")).await;
    assert_eq!(s, 200, "{wh}");
    assert!(wh["storage"]["total_size"].is_string());
    let text = c.metrics_text().await;
    assert!(text.contains("raftmetrics_http_requests_total"), "{text}");
    let text = c
        .http
        .get(c.worker_url(1, "/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("raftmetrics_raft_leader"), "{text}");
    // Beside the node's own families, the raft log engine's: its writes and fsyncs, counted.
    let synced = text
        .lines()
        .find_map(|l| l.strip_prefix("raft_engine_sync_log_duration_seconds_count "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(synced.is_some_and(|n| n > 0), "no fsyncs counted: {text}");
    assert!(
        text.contains("# TYPE raft_engine_write_duration_seconds histogram"),
        "{text}"
    );

    // --- Rate limits are per token: exhaust TOKEN_C, TOKEN_B is untouched.
    let mut limited = None;
    for _ in 0..1_100 {
        let resp = c
            .http
            .get(c.url("/health"))
            .bearer_auth(TOKEN_C)
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("1000 requests per minute must be enforced");
    assert!(resp.headers().contains_key("retry-after"));
    let e: Value = common::json_of(resp).await;
    assert_eq!(e["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(e["details"]["limit"], 1000);
    let resp = c
        .http
        .get(c.url("/health"))
        .bearer_auth(TOKEN_B)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "another token must not be limited");

    // --- Kill -9 worker 2: answers are partial, over worker 1's partitions only.
    c.kill_worker(2);
    let survivors = held[&1].clone();
    let started = Instant::now();
    let (s, doc) = c
        .get_json(&c.url(&format!(
            "/aggregate?metric=cpu_usage&{aggs}&group_by=datacenter"
        )))
        .await;
    assert_eq!(s, 200, "{doc}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answer took {:?}",
        started.elapsed()
    );
    assert_eq!(doc["is_partial"], true, "{doc}");
    assert_eq!(doc["total_nodes"], 2);
    assert_eq!(doc["responding_nodes"], 1);
    let missing: Vec<u32> = doc["missing_partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(missing, held[&2]);
    check_aggs(
        &doc["aggregations"],
        &oracle.stats("cpu_usage", Some(&survivors), false)["all"],
        "partial",
    );
    for (dc, want) in oracle.stats("cpu_usage", Some(&survivors), true) {
        check_aggs(&doc["by_datacenter"][&dc], &want, &format!("partial {dc}"));
    }
    let (s, e) = c
        .get_json(&c.url("/aggregate?metric=cpu_usage&allow_partial=false"))
        .await;
    assert_eq!(s, 503, "{e}");
    assert_eq!(e["code"], "RAFT_ERROR");

    let resp = c
        .http
        .get(c.url("/analytics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let a: AnalyticsResponse = codec::decode(&resp.bytes().await.unwrap()).unwrap();
    assert!(a.is_partial);
    assert_eq!((a.total_nodes, a.responding_nodes), (2, 1));
    let want = oracle.stats("value", Some(&survivors), false);
    match want.get("all") {
        Some(s) => {
            assert_eq!(a.count as f64, s[0]);
            assert!(close(a.average.unwrap(), s[4], 1e-9));
        }
        None => assert_eq!(a.count, 0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_continuous_inserts_loses_and_duplicates_nothing() {
    const PARTS: u32 = 4;
    let c = Arc::new(DevCluster::start(3, 3, PARTS, &[]).await);
    // One writer: batches of BATCH points, each batch in one partition (its own key), each
    // point with a unique value; it remembers which batches were acknowledged and by whom.
    let writer = batches::Writer::start(Arc::clone(&c), "ingest", Duration::from_millis(60));
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.wait_partitions_led(PARTS).await;
    // Kill the worker that acknowledges a write to the partition of `key-0`.
    let victim = c.leader_of("key-0").await;
    let killed_at = Instant::now();
    c.kill_worker(victim);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let log = writer.stop().await;

    let resumed = batches::resumed_after(&log, killed_at)
        .expect("writes must resume after the leader is killed");
    eprintln!(
        "writes resumed {resumed:?} after the kill; {} batches, {} acknowledged",
        log.len(),
        log.iter().filter(|o| o.acked_by.is_some()).count()
    );
    assert!(
        log.iter()
            .any(|o| o.acked_by.is_some() && o.at > killed_at && o.n % batches::KEYS == 0),
        "the killed leader's partition must take writes again"
    );
    // Every acknowledged batch is present exactly once; a failed batch is absent or whole.
    batches::check(&c, "ingest", &log).await;
    let (_, doc) = c
        .get_json(&c.url("/aggregate?metric=ingest&agg=count&consistency=strong"))
        .await;
    assert_eq!(doc["total_nodes"], 3);
    assert_eq!(doc["responding_nodes"], 2);
    // Eventual reads are complete too once the survivors caught up.
    let (s, doc) = c
        .get_json(&c.url("/aggregate?metric=ingest&agg=count"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(doc["is_partial"], false);
}
