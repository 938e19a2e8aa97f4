//! The write protocols with real clients that were not written here, against a real
//! cluster:
//!
//! - the InfluxDB client libraries from PyPI, `influxdb` (1.x API, `POST /write`) and
//!   `influxdb-client` (2.x API, `POST /api/v2/write`), driven by
//!   `tests/clients/influx_write.py`, which reports every point it sent; the cluster's
//!   `/aggregate` answers are checked against the same points in one plain DuckDB;
//! - Debian's Prometheus server, scraping a control node's `GET /metrics` and
//!   remote-writing everything to its `POST /api/v1/write`; the cluster's answers are
//!   checked against the samples Prometheus itself holds (its query API).
//!
//! A test whose client is missing (the venv's python with both libraries, found through
//! `RAFTMETRICS_PYTHON`, by default `~/.cache/raftmetrics/venv/bin/python`; the
//! Prometheus binary, `RAFTMETRICS_PROMETHEUS`, by default `/usr/bin/prometheus`) says why
//! and passes, unless `RAFTMETRICS_REQUIRE_CLIENTS=1`: then it fails. `.ci/run` installs
//! both and sets it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::prometheus::{self, Prometheus, SampleStats};
use common::{DevCluster, TOKEN, TOKEN_B};
use duckdb::{Connection, params};
use serde_json::Value;

/// The directory of the client scripts and configuration templates.
fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// A missing client: a failure under `RAFTMETRICS_REQUIRE_CLIENTS=1`, otherwise a skip
/// that says why.
fn missing_client(why: &str) {
    if std::env::var("RAFTMETRICS_REQUIRE_CLIENTS").as_deref() == Ok("1") {
        panic!("{why} (RAFTMETRICS_REQUIRE_CLIENTS=1: the clients must be installed)");
    }
    eprintln!("SKIPPED: {why}; set RAFTMETRICS_REQUIRE_CLIENTS=1 to fail instead");
}

/// The python of the venv with `influxdb` and `influxdb-client`, or why there is none.
fn python() -> Result<PathBuf, String> {
    let path = match std::env::var_os("RAFTMETRICS_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
            Path::new(&home).join(".cache/raftmetrics/venv/bin/python")
        }
    };
    if !path.exists() {
        return Err(format!("no python at {}", path.display()));
    }
    let probe = std::process::Command::new(&path)
        .args([
            "-c",
            "import importlib.metadata as m; import influxdb, influxdb_client; \
             print(m.version('influxdb'), m.version('influxdb-client'))",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "{} lacks influxdb or influxdb-client: {}",
            path.display(),
            String::from_utf8_lossy(&probe.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ));
    }
    eprintln!(
        "python {}: influxdb, influxdb-client {}",
        path.display(),
        String::from_utf8_lossy(&probe.stdout).trim()
    );
    Ok(path)
}

/// `GET /aggregate` on the control node with `params` (encoded here): the JSON answer of a
/// complete 200 response.
async fn aggregate(c: &DevCluster, params: &[(&str, &str)]) -> Value {
    let resp = c
        .http
        .get(c.url("/aggregate"))
        .query(params)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("aggregate request");
    let status = resp.status();
    let body = common::json_of(resp).await;
    assert_eq!(status, 200, "/aggregate {params:?}: {body}");
    assert_eq!(body["is_partial"], false, "/aggregate {params:?}: {body}");
    body
}

/// `(count, sum, min, max, avg)`; `min`, `max`, `avg` are `None` for no points.
type Stats = (u64, f64, Option<f64>, Option<f64>, Option<f64>);

/// The statistics of an `aggregations` object of `/aggregate`.
fn stats_of(aggs: &Value, what: &str) -> Stats {
    let num = |name: &str| aggs[name].as_f64();
    (
        aggs["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: no integer count in {aggs}")),
        num("sum").unwrap_or_else(|| panic!("{what}: no sum in {aggs}")),
        num("min"),
        num("max"),
        num("avg"),
    )
}

/// Asserts that the cluster's statistics equal the oracle's exactly: every value the
/// clients sent is a dyadic rational of few bits, so every sum is exact in any order.
fn assert_same(got: Stats, want: Stats, what: &str) {
    assert_eq!(
        got, want,
        "{what}: cluster (count, sum, min, max, avg) != plain DuckDB"
    );
}

/// The points the clients sent, in one plain DuckDB: `pts` holds each point, `tags` each
/// of its tags.
struct Oracle {
    db: Connection,
}

impl Oracle {
    fn load(lines: &str) -> (Oracle, BTreeMap<String, BTreeSet<String>>) {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE pts(id INTEGER, metric VARCHAR, ts BIGINT, value DOUBLE);
             CREATE TABLE tags(id INTEGER, key VARCHAR, value VARCHAR);",
        )
        .unwrap();
        // Metric -> the tag keys its points carry.
        let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        {
            let mut pts = db.appender("pts").unwrap();
            let mut tags = db.appender("tags").unwrap();
            for (id, line) in lines.lines().enumerate() {
                let p: Value = serde_json::from_str(line).expect("a JSON point");
                let metric = p["metric"].as_str().expect("metric");
                pts.append_row(params![
                    id as i64,
                    metric,
                    p["ts_us"].as_i64().expect("ts_us"),
                    p["value"].as_f64().expect("value")
                ])
                .unwrap();
                let keys = metrics.entry(metric.to_string()).or_default();
                for (k, v) in p["tags"].as_object().expect("tags") {
                    tags.append_row(params![id as i64, k, v.as_str().expect("tag value")])
                        .unwrap();
                    keys.insert(k.clone());
                }
            }
            pts.flush().unwrap();
            tags.flush().unwrap();
        }
        (Oracle { db }, metrics)
    }

    fn points(&self) -> u64 {
        self.db
            .query_row("SELECT count(*) FROM pts", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    }

    fn rows(&self, sql: &str, args: &[&str]) -> Vec<(Option<String>, Stats)> {
        let mut stmt = self.db.prepare(sql).unwrap();
        let rows = stmt
            .query_map(duckdb::params_from_iter(args), |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    (
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, f64>(2)?,
                        r.get::<_, Option<f64>>(3)?,
                        r.get::<_, Option<f64>>(4)?,
                        r.get::<_, Option<f64>>(5)?,
                    ),
                ))
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    const STATS: &'static str = "count(*), sum(p.value), min(p.value), max(p.value), avg(p.value)";

    /// Over every point of `metric`.
    fn overall(&self, metric: &str) -> Stats {
        let sql = format!(
            "SELECT NULL::VARCHAR, {} FROM pts p WHERE p.metric = ?",
            Self::STATS
        );
        self.rows(&sql, &[metric])[0].1
    }

    /// Per value of the tag `key` (`None`: points without it).
    fn by_tag(&self, metric: &str, key: &str) -> BTreeMap<Option<String>, Stats> {
        let sql = format!(
            "SELECT t.value, {} FROM pts p LEFT JOIN tags t ON t.id = p.id AND t.key = ? \
             WHERE p.metric = ? GROUP BY t.value",
            Self::STATS
        );
        self.rows(&sql, &[key, metric]).into_iter().collect()
    }

    /// Per 10 minute bucket, keyed by its RFC 3339 start.
    fn by_10m(&self, metric: &str) -> BTreeMap<Option<String>, Stats> {
        let sql = format!(
            "SELECT strftime(epoch_ms((p.ts - p.ts % 600000000) // 1000), '%Y-%m-%dT%H:%M:%SZ'), \
             {} FROM pts p WHERE p.metric = ? GROUP BY 1",
            Self::STATS
        );
        self.rows(&sql, &[metric]).into_iter().collect()
    }
}

/// Runs `cmd` to its end within `limit` (killed after it), its output captured.
async fn run_bounded(
    mut cmd: tokio::process::Command,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("wait for {what}: {e}")),
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// The value of the sample of `name` (with exactly `labels`, as written) in the
/// Prometheus text `text`.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name_and_labels)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The value of the first sample of `name` with labels (`name{...} value`) in the
/// Prometheus text `text`.
fn labelled_sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        rest.rsplit_once("} ")?.1.trim().parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_client_libraries_store_what_they_sent() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return missing_client(&why),
    };
    let c = DevCluster::start(3, 3, 8, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let points_path = dir.path().join("points.jsonl");
    let report_path = dir.path().join("report.json");

    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(clients_dir().join("influx_write.py"))
        .args(["--url", &c.url(""), "--token", TOKEN, "--seed", "7"])
        .arg("--points")
        .arg(&points_path)
        .arg("--report")
        .arg(&report_path);
    let out = run_bounded(cmd, Duration::from_secs(180), "influx_write.py").await;
    assert!(
        out.status.success(),
        "influx_write.py failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("the client libraries wrote in {:?}", started.elapsed());

    let lines = std::fs::read_to_string(&points_path).expect("the points the clients sent");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("the report"))
            .expect("the report is JSON");
    let (oracle, metrics) = Oracle::load(&lines);
    let sent = oracle.points();
    assert!(sent > 900, "the clients sent {sent} points");

    // --- How each client authenticated. `influxdb` sends HTTP Basic by default (the token
    // as the password), never the `u`/`p` query parameters; with an `Authorization`
    // header of its own it sends that instead.
    let requests = |client: &str| -> Vec<Value> {
        report["auth"][client]
            .as_array()
            .unwrap_or_else(|| panic!("no requests of {client} in {report}"))
            .clone()
    };
    let default = requests("influxdb_default");
    assert!(default.len() >= 4, "{default:?}");
    for r in &default {
        assert_eq!(r["scheme"], "Basic", "{r}");
        let keys = r["query_keys"].as_array().unwrap();
        assert!(
            !keys.iter().any(|k| k == "p" || k == "u"),
            "the default client sent u/p: {r}"
        );
    }
    for r in requests("influxdb_header") {
        assert_eq!(
            (r["scheme"].as_str(), r["status"].as_u64()),
            (Some("Token"), Some(204)),
            "{r}"
        );
    }
    let query = requests("influxdb_query");
    assert_eq!(query.len(), 1, "{query:?}");
    assert!(query[0]["scheme"].is_null(), "{query:?}");

    // --- Refusals, in InfluxDB's error shape: `{"code", "message"}` and nothing else.
    let refusal = |case: &str| -> (u64, Value) {
        let r = report["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["case"] == case)
            .unwrap_or_else(|| panic!("no refusal {case} in {report}"));
        let body = r["body"].clone();
        let keys: BTreeSet<&str> = body
            .as_object()
            .unwrap_or_else(|| panic!("{case}: the body is not a JSON object: {body}"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, BTreeSet::from(["code", "message"]), "{case}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}: {body}"
        );
        (r["status"].as_u64().unwrap(), body)
    };
    let (status, body) = refusal("influxdb_query_password");
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("query string"),
        "{body}"
    );
    for case in ["influxdb_string_field", "influxdb_client_string_field"] {
        let (status, body) = refusal(case);
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid")),
            "{case}: {body}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("line 2")
                && message.contains("\"note\"")
                && message.contains("string"),
            "{case}: the message must name the line and the field: {body}"
        );
    }
    let (status, body) = refusal("influxdb_client_unknown_token");
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );

    // A refused request stored nothing, its valid points included.
    for metric in ["rejected_good", "rejected_note"] {
        let doc = aggregate(&c, &[("metric", metric), ("agg", "count")]).await;
        assert_eq!(doc["aggregations"]["count"], 0, "{metric}: {doc}");
    }
    let doc = aggregate(
        &c,
        &[
            ("metric", "weather_temp_c"),
            ("agg", "count"),
            ("tags", "site:leak"),
        ],
    )
    .await;
    assert_eq!(
        doc["aggregations"]["count"], 0,
        "the p= write stored: {doc}"
    );
    // Every point the control node accepted is one the clients reported sending.
    let inserted = sample(&c.metrics_text().await, "raftmetrics_points_inserted_total");
    assert_eq!(
        inserted,
        Some(sent as f64),
        "points inserted vs points sent"
    );

    // --- Every metric against the oracle: overall, per value of each of its tags, and
    // per 10 minute bucket (which the timestamps' precisions decide).
    let aggs = "count,sum,min,max,avg";
    let mut checked = 0;
    for (metric, keys) in &metrics {
        let doc = aggregate(&c, &[("metric", metric), ("agg", aggs)]).await;
        assert_same(
            stats_of(&doc["aggregations"], metric),
            oracle.overall(metric),
            metric,
        );
        checked += 1;
        for key in keys {
            let doc = aggregate(&c, &[("metric", metric), ("agg", aggs), ("group_by", key)]).await;
            let want = oracle.by_tag(metric, key);
            let got: BTreeMap<Option<String>, Stats> = doc["groups"]
                .as_array()
                .unwrap_or_else(|| panic!("{metric} by {key}: no groups in {doc}"))
                .iter()
                .map(|g| {
                    let value = g["key"][key.as_str()].as_str().map(str::to_string);
                    let what = format!("{metric} {key}={value:?}");
                    (value, stats_of(&g["aggregations"], &what))
                })
                .collect();
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{metric} grouped by {key}: the groups differ"
            );
            for (value, want) in &want {
                assert_same(got[value], *want, &format!("{metric} {key}={value:?}"));
                checked += 1;
            }
        }
        let doc = aggregate(&c, &[("metric", metric), ("agg", aggs), ("window", "10m")]).await;
        let got: BTreeMap<Option<String>, Stats> = doc["buckets"]
            .as_array()
            .unwrap_or_else(|| panic!("{metric}: no buckets in {doc}"))
            .iter()
            .map(|b| {
                let start = b["start"].as_str().map(str::to_string);
                let what = format!("{metric} bucket {start:?}");
                (start, stats_of(&b["aggregations"], &what))
            })
            .collect();
        let want = oracle.by_10m(metric);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{metric} per 10 minutes: the buckets differ"
        );
        for (start, want) in &want {
            assert_same(got[start], *want, &format!("{metric} bucket {start:?}"));
            checked += 1;
        }
    }
    assert!(metrics.len() >= 10, "metrics: {:?}", metrics.keys());
    eprintln!(
        "{sent} points in {} metrics: {checked} rows equal plain DuckDB's",
        metrics.len()
    );
}

/// The Prometheus configuration for `job` scraping and remote-writing to the control
/// node of `c` with `token`; without the scrape section (scrape configs and rule
/// files) when `scrape` is false.
fn prometheus_config(c: &DevCluster, job: &str, token: &str, scrape: bool) -> String {
    let template = std::fs::read_to_string(clients_dir().join("prometheus.yml.in"))
        .expect("the Prometheus configuration template");
    let mut text = String::new();
    let mut inside = false;
    for line in template.lines() {
        match line.trim() {
            "# scrape:begin" => inside = true,
            "# scrape:end" => inside = false,
            _ if inside && !scrape => {}
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text.replace("@JOB@", job)
        .replace("@TOKEN@", token)
        .replace("@TARGET@", &format!("127.0.0.1:{}", c.port))
        .replace("@WRITE_URL@", &c.url("/api/v1/write"))
}

/// Starts `binary` in `dir` with `config` and the rules for `job` (`rules.yml`, from the
/// template), on a free loopback port, and waits until it is ready.
async fn start_prometheus(binary: &Path, dir: &Path, config: &str, job: &str) -> Prometheus {
    let rules = std::fs::read_to_string(clients_dir().join("rules.yml.in"))
        .expect("the rules template")
        .replace("@JOB@", job);
    std::fs::write(dir.join("rules.yml"), rules).unwrap();
    Prometheus::start(binary, dir, config, &[]).await
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `(count, sum, min, max)` of `metric` with the tag filters `tags` on the cluster.
async fn cluster_stats(c: &DevCluster, metric: &str, tags: &str) -> SampleStats {
    let doc = aggregate(
        c,
        &[
            ("metric", metric),
            ("agg", "count,sum,min,max"),
            ("tags", tags),
        ],
    )
    .await;
    let a = &doc["aggregations"];
    (
        a["count"].as_u64().expect("count"),
        a["sum"].as_f64().unwrap_or(0.0),
        a["min"].as_f64(),
        a["max"].as_f64(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_write_stores_the_samples_prometheus_holds() {
    let binary = match prometheus::binary() {
        Ok(p) => p,
        Err(why) => return missing_client(&why),
    };
    const JOB: &str = "raftmetrics-protocols";
    let c = DevCluster::start(3, 3, 8, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut prom = start_prometheus(
        &binary,
        dir.path(),
        &prometheus_config(&c, JOB, TOKEN_B, true),
        JOB,
    )
    .await;
    eprintln!(
        "prometheus ready on port {} after {:?}",
        prom.port,
        started.elapsed()
    );

    // The series compared: Prometheus' selector, the cluster's metric and tag filters.
    let series = [
        (format!("up{{job=\"{JOB}\"}}"), "up", format!("job:{JOB}")),
        (
            format!(
                "raftmetrics_http_requests_total{{job=\"{JOB}\",route=\"/metrics\",\
                 method=\"GET\",status=\"2xx\"}}"
            ),
            "raftmetrics_http_requests_total",
            format!("job:{JOB},route:/metrics,method:GET,status:2xx"),
        ),
        // A recording rule's name: its colons are stored as dots.
        (
            format!("job:up:sum{{job=\"{JOB}\"}}"),
            "job.up.sum",
            format!("job:{JOB}"),
        ),
    ];

    // Scrape for a while: at least 10 scrapes and 5 rule evaluations held by Prometheus.
    let scraping = Instant::now();
    loop {
        let now = unix_now();
        let scrapes = prom.stats(&series[0].0, now).await.0;
        let rules = prom.stats(&series[2].0, now).await.0;
        if scrapes >= 10 && rules >= 5 {
            eprintln!(
                "{scrapes} scrapes, {rules} rule evaluations after {:?}",
                scraping.elapsed()
            );
            break;
        }
        assert!(
            scraping.elapsed() < Duration::from_secs(60),
            "prometheus holds {scrapes} scrapes and {rules} rule evaluations after 60 s:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Stop scraping and rule evaluation, keep remote write: reload without the scrape
    // section (the reload answers once the configuration is applied).
    std::fs::write(
        dir.path().join("prometheus.yml"),
        prometheus_config(&c, JOB, TOKEN_B, false),
    )
    .unwrap();
    let resp = prom
        .http
        .post(prom.url("/-/reload"))
        .send()
        .await
        .expect("reload prometheus");
    assert_eq!(
        resp.status(),
        200,
        "reload: {}",
        resp.text().await.unwrap_or_default()
    );

    // What Prometheus holds, at one evaluation time after the stop; read until two reads a
    // second apart agree (a scrape that was under way when the reload came may still land).
    let at = unix_now() + 1.0;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut held = Vec::new();
    let settling = Instant::now();
    loop {
        let mut now = Vec::new();
        for (selector, _, _) in &series {
            now.push(prom.stats(selector, at).await);
        }
        if now == held {
            break;
        }
        held = now;
        assert!(
            settling.elapsed() < Duration::from_secs(30),
            "prometheus' samples still change 30 s after scraping stopped: {held:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Remote write delivers the rest: the cluster must come to hold exactly those samples,
    // never more.
    let delivering = Instant::now();
    for ((selector, metric, tags), want) in series.iter().zip(&held) {
        assert!(want.0 > 0, "prometheus holds no samples of {selector}");
        loop {
            let got = cluster_stats(&c, metric, tags).await;
            assert!(
                got.0 <= want.0,
                "{metric} {tags}: the cluster holds {} samples, prometheus {}",
                got.0,
                want.0
            );
            if got.0 == want.0 {
                assert_eq!(
                    got, *want,
                    "{metric} {tags}: cluster (count, sum, min, max) != prometheus'"
                );
                eprintln!("{selector}: {got:?} in both");
                break;
            }
            if delivering.elapsed() > Duration::from_secs(60) {
                let own = prom.own_metrics().await;
                let remote: Vec<&str> = own
                    .lines()
                    .filter(|l| l.starts_with("prometheus_remote_storage_"))
                    .collect();
                panic!(
                    "{metric} {tags}: the cluster holds {got:?} 60 s after scraping stopped, \
                     prometheus {want:?}\nprometheus' remote storage:\n{}\nlog:\n{}",
                    remote.join("\n"),
                    prom.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // Metadata arrives and is counted, not stored; so does the staleness marker (a NaN)
    // Prometheus writes for the recording rule's series when its group goes away. (Removing
    // a whole scrape job writes no end-of-run markers for the target: its loops' context is
    // cancelled first.)
    let counting = Instant::now();
    for kind in ["metadata", "stale"] {
        let line = format!("raftmetrics_remote_write_dropped_total{{kind=\"{kind}\"}}");
        loop {
            let dropped = sample(&c.metrics_text().await, &line).unwrap_or_default() as u64;
            if dropped > 0 {
                eprintln!("{line} {dropped}");
                break;
            }
            assert!(
                counting.elapsed() < Duration::from_secs(30),
                "{line} is still 0 30 s after scraping stopped"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // Every sample Prometheus sent, of every series, is stored once, but the staleness
    // markers and other NaN samples, which are counted instead: the control node's count of
    // inserted points plus those equals Prometheus' count of samples sent, none failed.
    let balancing = Instant::now();
    loop {
        let own = prom.own_metrics().await;
        let sent = labelled_sample(&own, "prometheus_remote_storage_samples_total");
        let failed = labelled_sample(&own, "prometheus_remote_storage_samples_failed_total");
        let text = c.metrics_text().await;
        let inserted = sample(&text, "raftmetrics_points_inserted_total").unwrap_or_default();
        let skipped: f64 = ["stale", "non_finite"]
            .iter()
            .map(|kind| {
                let line = format!("raftmetrics_remote_write_dropped_total{{kind=\"{kind}\"}}");
                sample(&text, &line).unwrap_or_default()
            })
            .sum();
        assert_eq!(
            failed,
            Some(0.0),
            "prometheus failed to send samples:\n{own}"
        );
        assert!(
            inserted + skipped <= sent.unwrap_or_default(),
            "the cluster stored {inserted} and skipped {skipped} samples, prometheus sent \
             {sent:?}"
        );
        if sent.is_some_and(|n| n > 0.0 && n == inserted + skipped) {
            eprintln!("prometheus sent {inserted} + {skipped} samples: {inserted} stored");
            break;
        }
        assert!(
            balancing.elapsed() < Duration::from_secs(30),
            "prometheus sent {sent:?} samples, the cluster stored {inserted} and skipped \
             {skipped}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // SIGTERM: Prometheus stops in time and cleanly; the cluster holds the same.
    let stopping = Instant::now();
    let status = prom.terminate(Duration::from_secs(60)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "prometheus after SIGTERM: {status:?}\n{}",
        prom.log()
    );
    eprintln!("prometheus stopped {:?} after SIGTERM", stopping.elapsed());
    for ((_, metric, tags), want) in series.iter().zip(&held) {
        assert_eq!(
            cluster_stats(&c, metric, tags).await,
            *want,
            "{metric} after the stop"
        );
    }
}
