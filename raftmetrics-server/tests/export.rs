//! Export on a real cluster: `GET /api/v1/export` (JSON lines) and `/api/v1/export/csv`
//! give back exactly the points inserted (with filters and time ranges too), the JSON lines
//! imported into a fresh cluster through `POST /api/v1/import` make it answer the same
//! aggregates and export the same points, an export over a cluster without live replicas is
//! refused or partial as asked, and a large export holds a few pages at a time on the
//! control node (its peak RSS, read from `/proc`) and survives a worker killed in the middle.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{DevCluster, TOKEN};
use raftmetrics_core::partition::stable_hash;
use raftmetrics_core::{Point, Tags, Timestamp};
use serde_json::Value;

const T0_MS: i64 = 1_705_708_800_000; // 2024-01-20T00:00:00Z

/// A point as compared here: metric, tags, timestamp (µs), value bits.
type Row = (String, Tags, i64, u64);

fn row(p: &Point) -> Row {
    (
        p.metric.clone(),
        p.tags.clone(),
        p.timestamp.expect("timestamped").as_micros(),
        p.value.to_bits(),
    )
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

/// A few thousand points over four metrics: `cpu` (six hosts in two datacenters, with a few
/// repeated timestamps), `mem`, `disk.io` (tag values with `,` `;` `=` `"` `\`) and `fine`
/// (timestamps that are not whole milliseconds).
fn small_data() -> Vec<Point> {
    let mut points = Vec::new();
    let at_ms = |ms: i64| Timestamp::from_micros(ms * 1_000);
    for (h, host) in ["web-1", "web-2", "web-3", "web-4", "api-1", "api-2"]
        .iter()
        .enumerate()
    {
        let dc = if h % 2 == 0 { "us-west" } else { "us-east" };
        for i in 0..300i64 {
            points.push(
                Point::new("cpu", (h as f64) * 10.0 + (i % 17) as f64 * 0.25)
                    .at(at_ms(T0_MS + i * 60_000))
                    .tag("host", *host)
                    .tag("datacenter", dc),
            );
        }
        // Points of one series at one timestamp: all of them are kept.
        for dup in 0..3 {
            points.push(
                Point::new("cpu", -1.0 - dup as f64)
                    .at(at_ms(T0_MS + 120_000))
                    .tag("host", *host)
                    .tag("datacenter", dc),
            );
        }
    }
    for host in ["web-1", "web-2", "web-3"] {
        for i in 0..300i64 {
            points.push(
                Point::new("mem", 1e6 + i as f64)
                    .at(at_ms(T0_MS + i * 30_000))
                    .tag("host", host)
                    .tag("datacenter", "us-west"),
            );
        }
    }
    for note in ["a,b;c=\"d\"", "back\\slash;"] {
        for i in 0..150i64 {
            points.push(
                Point::new("disk.io", i as f64 / 8.0)
                    .at(at_ms(T0_MS + i * 1_000))
                    .tag("host", "db-1")
                    .tag("note", note),
            );
        }
    }
    for i in 0..20i64 {
        points.push(
            Point::new("fine", i as f64)
                .at(Timestamp::from_micros(T0_MS * 1_000 + i * 1_234))
                .tag("host", "web-1"),
        );
    }
    points
}

async fn insert(c: &DevCluster, points: &[Point]) {
    for batch in points.chunks(50_000) {
        let resp = c
            .post_bincode(&c.url("/insert"), TOKEN, batch, Duration::from_secs(60))
            .await
            .expect("insert");
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    }
}

/// An export's answer: status, the missing-partitions header, the body, and whether the
/// response was cut off (it stopped with an error line).
struct Answer {
    status: u16,
    missing: Option<String>,
    body: String,
    cut_off: bool,
}

/// `GET path`, the body read to its end or to where it was cut off.
async fn fetch(c: &DevCluster, path: &str) -> Answer {
    let mut resp = c
        .http
        .get(c.url(path))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("export request");
    let status = resp.status().as_u16();
    let missing = resp
        .headers()
        .get("raftmetrics-missing-partitions")
        .map(|v| v.to_str().unwrap().to_string());
    let mut body = Vec::new();
    let cut_off = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    Answer {
        status,
        missing,
        body: String::from_utf8(body).expect("UTF-8"),
        cut_off,
    }
}

/// `GET path`: a complete answer.
async fn get(c: &DevCluster, path: &str) -> Answer {
    let answer = fetch(c, path).await;
    assert!(!answer.cut_off, "{path} was cut off: {}", answer.body);
    answer
}

/// The points of a JSON lines export; `micros`: its timestamps are µs (`precision=us`).
fn parse_json_lines(body: &str, micros: bool, max_rows: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for line in body.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("error").is_none(), "an error line: {line}");
        let mut metric = String::new();
        let mut tags = Tags::new();
        for (k, val) in v["metric"].as_object().expect("metric object") {
            let val = val.as_str().expect("label values are strings").to_string();
            if k == "__name__" {
                metric = val;
            } else {
                tags.insert(k.clone(), val);
            }
        }
        let values = v["values"].as_array().expect("values");
        let stamps = v["timestamps"].as_array().expect("timestamps");
        assert_eq!(values.len(), stamps.len(), "{line}");
        assert!(!values.is_empty() && values.len() <= max_rows, "{line}");
        for (value, t) in values.iter().zip(stamps) {
            let t = t.as_i64().expect("integer timestamp");
            let micros_ts = if micros { t } else { t * 1_000 };
            rows.push((
                metric.clone(),
                tags.clone(),
                micros_ts,
                value.as_f64().expect("number").to_bits(),
            ));
        }
    }
    rows
}

/// The fields of one CSV record (RFC 4180 quoting).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// The tags of a CSV `tags` field: `k=v;k2=v2`, `\` escaping `;` and `\` in values.
fn csv_tags(field: &str) -> Tags {
    let mut tags = Tags::new();
    let mut pairs = vec![String::new()];
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => pairs
                .last_mut()
                .unwrap()
                .push(chars.next().expect("escaped")),
            ';' => pairs.push(String::new()),
            c => pairs.last_mut().unwrap().push(c),
        }
    }
    for pair in pairs.iter().filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').expect("key=value");
        tags.insert(k.to_string(), v.to_string());
    }
    tags
}

fn parse_csv(body: &str) -> Vec<Row> {
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("metric,timestamp,value,tags"));
    lines
        .map(|line| {
            let f = csv_fields(line);
            assert_eq!(f.len(), 4, "{line}");
            assert_ne!(f[0], "#error", "an error record: {line}");
            let ts = Timestamp::parse(&f[1]).expect("RFC 3339").as_micros();
            let value: f64 = f[2].parse().expect("number");
            (f[0].clone(), csv_tags(&f[3]), ts, value.to_bits())
        })
        .collect()
}

fn select(points: &[Point], keep: impl Fn(&Point) -> bool) -> Vec<Row> {
    sorted(points.iter().filter(|p| keep(p)).map(row).collect())
}

fn ms_floor(mut r: Row) -> Row {
    r.2 = r.2.div_euclid(1_000) * 1_000;
    r
}

/// `/aggregate` of every metric, grouped by metric and host: group → (count, min, max, sum).
async fn aggregates(c: &DevCluster) -> BTreeMap<String, (u64, f64, f64, f64)> {
    let (status, doc) = c
        .get_json(&c.url(
            "/aggregate?metric=cpu,mem,disk.io,fine&agg=count,sum,min,max&group_by=metric,host",
        ))
        .await;
    assert_eq!(status, 200, "{doc}");
    doc["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            let a = &g["aggregations"];
            (
                g["key"].to_string(),
                (
                    a["count"].as_u64().unwrap(),
                    a["min"].as_f64().unwrap(),
                    a["max"].as_f64().unwrap(),
                    a["sum"].as_f64().unwrap(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exports_exactly_the_points_inserted_and_they_import_elsewhere_alike() {
    let c = DevCluster::start(3, 3, 8, &[]).await;
    let points = small_data();
    insert(&c, &points).await;
    let all = select(&points, |_| true);
    assert!(all.len() > 3_000);

    // Everything, exactly (microseconds), then in VictoriaMetrics' milliseconds.
    let a = get(&c, "/api/v1/export?precision=us").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.missing, None);
    assert_eq!(sorted(parse_json_lines(&a.body, true, 10_000)), all);
    let exact_lines = a.body;
    let a = get(&c, "/api/v1/export").await;
    assert_eq!(a.status, 200);
    let floored = sorted(all.iter().cloned().map(ms_floor).collect());
    assert_eq!(sorted(parse_json_lines(&a.body, false, 10_000)), floored);

    // Filters and time ranges select what /aggregate's would.
    let from = Timestamp::from_micros((T0_MS + 3_600_000) * 1_000);
    let to = Timestamp::from_micros((T0_MS + 4 * 3_600_000) * 1_000);
    let a = get(
        &c,
        &format!(
            "/api/v1/export?precision=us&metric=cpu&hosts=web-*&from={}&to={}",
            from.to_rfc3339(),
            to.to_rfc3339()
        ),
    )
    .await;
    let want = select(&points, |p| {
        p.metric == "cpu"
            && p.tags["host"].starts_with("web-")
            && p.timestamp.unwrap() >= from
            && p.timestamp.unwrap() < to
    });
    assert!(!want.is_empty());
    assert_eq!(sorted(parse_json_lines(&a.body, true, 10_000)), want);
    let a = get(
        &c,
        "/api/v1/export?precision=us&metric=cpu,mem&datacenters=us-west&tags=host:web-*&max_rows_per_line=7",
    )
    .await;
    let want = select(&points, |p| {
        (p.metric == "cpu" || p.metric == "mem")
            && p.tags.get("datacenter").map(String::as_str) == Some("us-west")
            && p.tags["host"].starts_with("web-")
    });
    assert_eq!(sorted(parse_json_lines(&a.body, true, 7)), want);
    assert!(a.body.lines().count() >= want.len() / 7);
    let a = get(&c, "/api/v1/export?metric=nothing").await;
    assert_eq!((a.status, a.body.as_str()), (200, ""));

    // CSV: exact timestamps, tags escaped and quoted.
    let a = get(&c, "/api/v1/export/csv").await;
    assert_eq!(a.status, 200);
    assert_eq!(sorted(parse_csv(&a.body)), all);
    let a = get(&c, "/api/v1/export/csv?metric=disk.io&tags=note:a*").await;
    let want = select(&points, |p| {
        p.metric == "disk.io" && p.tags["note"].starts_with('a')
    });
    assert_eq!(want.len(), 150);
    assert_eq!(sorted(parse_csv(&a.body)), want);
    let a = get(&c, "/api/v1/export/csv?metric=cpu&to=2000-01-01").await;
    assert_eq!(a.body, "metric,timestamp,value,tags\n");

    // Errors come before the stream, in the Prometheus API's shape.
    for bad in [
        "/api/v1/export?metric=bad%20name",
        "/api/v1/export?match[]=cpu",
        "/api/v1/export?precision=ns",
        "/api/v1/export/csv?precision=us",
        "/api/v1/export?from=2024-01-02&to=2024-01-01",
    ] {
        let (status, body) = c.get_json(&c.url(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["status"], "error", "{bad}: {body}");
        assert_eq!(body["errorType"], "bad_data", "{bad}: {body}");
    }
    let resp = c.http.get(c.url("/api/v1/export")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let (status, _) = c.get_json(&c.worker_url(1, "/api/v1/export")).await;
    assert_eq!(status, 404, "a worker serves no exports");

    // The JSON lines, imported into a fresh cluster through POST /api/v1/import a few lines
    // a request, make it answer alike.
    let d = DevCluster::start(3, 3, 8, &[]).await;
    let lines: Vec<&str> = exact_lines.lines().collect();
    let mut imported = 0;
    for (i, chunk) in lines.chunks(7).enumerate() {
        let body = chunk.join("\n");
        imported += chunk.len();
        // Every request is sent twice under one Idempotency-Key: stored once.
        for _ in 0..2 {
            let resp = c
                .http
                .post(d.url("/api/v1/import?precision=us"))
                .header("Authorization", format!("Bearer {TOKEN}"))
                .header("Idempotency-Key", format!("import-{i}"))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 204, "{}", resp.text().await.unwrap());
        }
    }
    assert_eq!(imported, lines.len());
    let (first, second) = (aggregates(&c).await, aggregates(&d).await);
    assert_eq!(first.len(), 6 + 3 + 1 + 1, "{first:?}");
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    for (group, (count, min, max, sum)) in &first {
        let other = second[group];
        assert_eq!((*count, *min, *max), (other.0, other.1, other.2), "{group}");
        assert!(
            (sum - other.3).abs() <= 1e-9 * sum.abs().max(1.0),
            "{group}: {sum} vs {}",
            other.3
        );
    }
    assert_eq!(
        sorted(parse_json_lines(
            &get(&d, "/api/v1/export?precision=us").await.body,
            true,
            10_000
        )),
        all,
        "the second cluster exports what the first did"
    );

    // Every worker killed: while the control node still counts them live (heartbeats are
    // 2 s old at most), the export starts, no replica answers its first page, and the
    // answer ends with an error line and is cut off. Once it knows, the export is refused
    // before the stream, or, allowed to be partial, is empty and names what it left out.
    for id in 1..=3 {
        d.kill_worker(id);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = fetch(&d, "/api/v1/export").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.cut_off, "an export that stopped is cut off: {}", a.body);
    let last: Value = serde_json::from_str(a.body.lines().last().expect("an error line")).unwrap();
    let error = last["error"].as_str().expect("an error line");
    assert!(error.contains("could not be read"), "{error}");
    assert_eq!(a.body.lines().count(), 1, "{}", a.body);
    let a = fetch(&d, "/api/v1/export/csv").await;
    if a.status == 200 {
        assert!(a.cut_off && a.body.lines().last().unwrap().starts_with("#error,,,\""));
    }
    let start = Instant::now();
    loop {
        let a = fetch(&d, "/api/v1/export").await;
        if a.status == 503 {
            let body: Value = serde_json::from_str(&a.body).unwrap();
            assert_eq!(body["errorType"], "unavailable", "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still exporting without workers: {} {}",
            a.status,
            a.body
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let a = get(&d, "/api/v1/export?allow_partial=true").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "");
    assert_eq!(a.missing.as_deref(), Some("0,1,2,3,4,5,6,7"));
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The large data set: `hosts` series of `per_host` points each, one a second.
fn large_batch(hosts: std::ops::Range<u32>, per_host: i64) -> Vec<Point> {
    let mut points = Vec::with_capacity(hosts.len() * per_host as usize);
    for h in hosts {
        let host = format!("h{h:04}");
        for i in 0..per_host {
            points.push(
                Point::new("load", ((h as i64 * 7 + i) % 1_000) as f64 * 0.5)
                    .at(Timestamp::from_micros((T0_MS + i * 1_000) * 1_000))
                    .tag("host", host.clone()),
            );
        }
    }
    points
}

/// An order-free digest of exported points: their count and a sum of their hashes.
#[derive(Debug, Default, PartialEq, Eq)]
struct Digest {
    points: u64,
    hash: u64,
}

impl Digest {
    fn add(&mut self, host: &str, ts_ms: i64, value: f64) {
        self.points += 1;
        self.hash = self
            .hash
            .wrapping_add(stable_hash(&format!("{host}|{ts_ms}|{}", value.to_bits())));
    }
}

/// Reads a JSON lines export chunk by chunk into a digest; `on_progress` hears the bytes read
/// so far. Returns the digest and the body's size.
/// Starts `GET /api/v1/export?{query}` and checks that it answers 200; the body is read by
/// the caller.
async fn start_export(c: &DevCluster, query: &str) -> reqwest::Response {
    let resp = c
        .http
        .get(c.url(&format!("/api/v1/export?{query}")))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 200, "export?{query}");
    resp
}

async fn stream_digest(resp: reqwest::Response, mut on_progress: impl FnMut(u64)) -> (Digest, u64) {
    let mut resp = resp;
    let mut digest = Digest::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut bytes = 0u64;
    while let Some(chunk) = resp.chunk().await.expect("the export completes") {
        bytes += chunk.len() as u64;
        pending.extend_from_slice(&chunk);
        let complete = pending
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        for line in pending[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let v: Value = serde_json::from_slice(line).expect("a JSON line");
            assert!(v.get("error").is_none(), "an error line: {v}");
            let host = v["metric"]["host"].as_str().unwrap();
            assert_eq!(v["metric"]["__name__"], "load");
            for (value, t) in v["values"]
                .as_array()
                .unwrap()
                .iter()
                .zip(v["timestamps"].as_array().unwrap())
            {
                digest.add(host, t.as_i64().unwrap(), value.as_f64().unwrap());
            }
        }
        pending.drain(..complete);
        on_progress(bytes);
    }
    assert!(pending.is_empty(), "the last line ends with a newline");
    (digest, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_export_holds_a_few_pages_at_a_time_and_survives_a_worker_killed() {
    const HOSTS: u32 = 4_000;
    const PER_HOST: i64 = 1_000;
    let c = DevCluster::start(3, 3, 8, &[]).await;
    let started = Instant::now();
    // Every point, those of hosts h0000 to h0999 and those of h1000 to h1999.
    let (mut want, mut want_h0, mut want_h1) =
        (Digest::default(), Digest::default(), Digest::default());
    for first in (0..HOSTS).step_by(50) {
        let batch = large_batch(first..first + 50, PER_HOST);
        for p in &batch {
            let ts_ms = p.timestamp.unwrap().as_micros() / 1_000;
            want.add(&p.tags["host"], ts_ms, p.value);
            match first / 1_000 {
                0 => want_h0.add(&p.tags["host"], ts_ms, p.value),
                1 => want_h1.add(&p.tags["host"], ts_ms, p.value),
                _ => {}
            }
        }
        // Through the workers (which forward to the leaders), so that the control node's
        // memory before the export is not what an insert left.
        let worker = 1 + (first / 50) as u16 % 3;
        let resp = c
            .post_bincode(
                &c.worker_url(worker, "/insert"),
                TOKEN,
                &batch,
                Duration::from_secs(60),
            )
            .await
            .expect("insert");
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    }
    println!(
        "inserted {} points in {:.1?}",
        want.points,
        started.elapsed()
    );

    // A first export: the control node's allocator sets up its buffers for it (once per
    // process; about 10 MiB here, measured and printed, not bounded by this test).
    let pid = c.node("control", 1).pid;
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let (first_baseline, _) = rss_kib(pid);
    let resp = start_export(&c, "metric=load&hosts=h1*").await;
    let (first, first_bytes) = stream_digest(resp, |_| {}).await;
    assert_eq!(first, want_h1);
    let (_, first_hwm) = rss_kib(pid);
    println!(
        "first export of {} points ({:.1} MiB): the control node's RSS grew by {} KiB",
        first.points,
        first_bytes as f64 / (1024.0 * 1024.0),
        first_hwm.saturating_sub(first_baseline)
    );

    // The control node's peak RSS during an export of everything, from a reset of its
    // high-water mark, also sampled.
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let (baseline, hwm_before) = rss_kib(pid);
    let sampled_peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&sampled_peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid).0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let export_started = Instant::now();
    let resp = start_export(&c, "metric=load").await;
    let (got, json_bytes) = stream_digest(resp, |_| {}).await;
    let export_time = export_started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (_, hwm_after) = rss_kib(pid);
    assert_eq!(got, want, "the export holds exactly the points inserted");
    let peak = if reset {
        hwm_after.max(sampled_peak.load(Ordering::Relaxed))
    } else {
        sampled_peak.load(Ordering::Relaxed)
    };
    let growth_kib = peak.saturating_sub(baseline);
    let bound_kib = json_bytes / 1024 / 4;
    println!(
        "export of {} points: {:.1} MiB of JSON lines in {export_time:.1?}; control node RSS \
         {baseline} KiB before, peak {peak} KiB (VmHWM {hwm_before} -> {hwm_after} KiB, \
         high-water mark reset: {reset}): growth {growth_kib} KiB, bound {bound_kib} KiB \
         (a quarter of the JSON)",
        got.points,
        json_bytes as f64 / (1024.0 * 1024.0),
    );
    assert!(
        growth_kib < bound_kib,
        "the control node grew by {growth_kib} KiB during an export of {json_bytes} bytes"
    );

    // A worker killed in the middle of an export: its partitions' next pages come from
    // other replicas, from where it stopped.
    let resp = start_export(&c, "metric=load&hosts=h0*").await;
    let mut killed = false;
    let (again, _) = stream_digest(resp, |read| {
        if !killed && read > first_bytes / 3 {
            c.kill_worker(2);
            killed = true;
        }
    })
    .await;
    assert!(killed);
    assert_eq!(
        again, want_h0,
        "the same points with a worker killed halfway"
    );
}
