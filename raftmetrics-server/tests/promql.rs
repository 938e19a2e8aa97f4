//! The Prometheus HTTP query API of the control node against a real Prometheus (Debian's
//! `prometheus` 2.42, whose PromQL semantics are the reference):
//!
//! 1. A Prometheus server (`--web.enable-remote-write-receiver`, no scrape jobs, its own data
//!    directory and port) and a dev cluster of 2 workers receive the same samples by remote
//!    write: deterministic data (a fixed seed) over 150 minutes ending at a minute-aligned
//!    time a little before now, sent in batches ordered by time across all series (Prometheus'
//!    head refuses samples more than an hour older than its newest). The data holds
//!    counters with resets (`http_requests_total{job,instance,code}`, a fractional
//!    `process_cpu_seconds_total`), a series that stops early and one that starts late, a
//!    gauge with gaps longer than the 5 minute lookback (`queue_depth`), a gauge of
//!    fractional values, some series without one of its labels (`node_temperature_celsius`),
//!    and a recording rule's name with colons sampled every 30 s on the minute grid
//!    (`job:requests:rate5m`); the other samples are 10 to 20 s apart with millisecond
//!    jitter. Both must first hold every sample sent.
//! 2. Every query of [`QUERIES`] runs on both as an instant query at each of
//!    [`Data::eval_times`] (the end of the data, a time inside a gap, a sample's exact
//!    timestamp, a sample's timestamp plus exactly the lookback, a time given in RFC 3339)
//!    and as a range query with each of [`Data::ranges`] (steps of 15 s, 60 s and 5 min,
//!    starts not on the step's grid); GET and POST (form body) alternate. The answers must
//!    agree: the same status (and `errorType` for an error), `resultType`, series (label
//!    sets with `__name__`, as sets), timestamps, and values within a relative 1e-9
//!    (1e-12 absolute near 0; NaN equals NaN, infinities by sign), `quantile` and
//!    `quantile_over_time` within a tolerance of their own ([`QUANTILE_TOLERANCE`]).
//!    Every difference is printed (query, parameters, both bodies) and the test fails at
//!    the end with their count.
//! 3. What is outside the supported subset (subqueries, `or`, `and`, `unless`,
//!    `group_left`, `histogram_quantile`, `label_replace`, `@`, ...) is answered by
//!    RaftMetrics with 400 `bad_data` naming the construct (Prometheus answers each:
//!    they are valid PromQL); bad parameters (`step=0`, `start>end`, `time=abc`, more
//!    than 11,000 points per series, ...) get the status and `errorType` Prometheus gives.
//! 4. `/api/v1/labels`, `/api/v1/label/<name>/values` and `/api/v1/series` answer the same
//!    sets as Prometheus; `/api/v1/status/buildinfo` and `/api/v1/metadata` answer in the
//!    envelope; the query API wants the bearer token.
//!
//! Without the Prometheus binary (`RAFTMETRICS_PROMETHEUS`, by default
//! `/usr/bin/prometheus`) the test says why and passes, unless
//! `RAFTMETRICS_REQUIRE_CLIENTS=1`: then it fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::prometheus::{self, Prometheus};
use common::{DevCluster, TOKEN};
use raftmetrics_core::time::Timestamp;
use raftmetrics_server::decode::remote_write::{encode, proto};
use serde_json::Value;

/// A minute, in milliseconds (the unit of sample timestamps).
const MINUTE: i64 = 60_000;
/// How long the data spans.
const SPAN: i64 = 150 * MINUTE;
/// Prometheus' default lookback of instant selectors.
const LOOKBACK: i64 = 5 * MINUTE;
/// Samples per remote write request.
const BATCH: usize = 1_000;
/// The relative tolerance of values.
const EXACT: f64 = 1e-9;
/// The tolerance of `quantile` and `quantile_over_time` values.
const QUANTILE_TOLERANCE: f64 = 1e-9;
/// Below this difference values are equal, whatever their size.
const ABSOLUTE: f64 = 1e-12;

/// The queries compared, with the relative tolerance of their values.
const QUERIES: &[(&str, f64)] = &[
    // Instant selectors and their matchers.
    ("http_requests_total", EXACT),
    ("http_requests_total{job=\"api\"}", EXACT),
    ("http_requests_total{code!=\"200\"}", EXACT),
    ("http_requests_total{code=~\"2..|4..\"}", EXACT),
    ("http_requests_total{instance!~\"a.*|b.*\"}", EXACT),
    // Regexes are anchored: "20" matches no code.
    ("http_requests_total{code=~\"20\"}", EXACT),
    ("{__name__=\"job:requests:rate5m\"}", EXACT),
    ("job:requests:rate5m{job=~\"api|web\"}", EXACT),
    (
        "{__name__=~\"http_requests_total|process_cpu_seconds_total\",job=\"api\"}",
        EXACT,
    ),
    ("{__name__!=\"http_requests_total\",job=\"web\"}", EXACT),
    // Names are matched as Prometheus holds them: with their colons.
    ("{__name__=~\"job:.*\"}", EXACT),
    ("{__name__=\"job.requests.rate5m\"}", EXACT),
    ("{__name__=\"no_such_metric\"}", EXACT),
    // An empty value matches the series without the label.
    ("node_temperature_celsius{zone=\"\"}", EXACT),
    ("node_temperature_celsius{zone!=\"\"}", EXACT),
    ("node_temperature_celsius{zone=~\"north|\"}", EXACT),
    ("node_temperature_celsius{zone!~\"south\"}", EXACT),
    ("queue_depth", EXACT),
    ("queue_depth offset 10m", EXACT),
    // Range selectors: a matrix of the samples themselves as an instant query, refused as
    // a range query.
    ("http_requests_total[5m]", EXACT),
    ("queue_depth{queue=\"email\"}[10m] offset 5m", EXACT),
    ("job:requests:rate5m[2m]", EXACT),
    // Functions of range vectors.
    ("rate(http_requests_total[5m])", EXACT),
    ("rate(http_requests_total{job=\"web\"}[1m])", EXACT),
    // Samples 10 s apart or more: two in the range at most, often fewer (no rate).
    ("rate(http_requests_total[15s])", EXACT),
    ("irate(http_requests_total{job=\"api\"}[2m])", EXACT),
    ("irate(process_cpu_seconds_total[1m])", EXACT),
    ("increase(http_requests_total[10m])", EXACT),
    ("increase(process_cpu_seconds_total[15m] offset 7m)", EXACT),
    ("delta(node_temperature_celsius[10m])", EXACT),
    ("delta(queue_depth[5m])", EXACT),
    // Samples on the range's both edges.
    ("delta(job:requests:rate5m[2m])", EXACT),
    (
        "rate({__name__=~\"http_requests_total|process_cpu_seconds_total\",job=\"api\"}[5m])",
        EXACT,
    ),
    ("avg_over_time(queue_depth[5m])", EXACT),
    (
        "avg_over_time(node_temperature_celsius[20m] offset 1h)",
        EXACT,
    ),
    ("min_over_time(node_temperature_celsius[15m])", EXACT),
    ("max_over_time(queue_depth[30m])", EXACT),
    (
        "max_over_time(process_cpu_seconds_total[1m] offset 1h)",
        EXACT,
    ),
    ("sum_over_time(queue_depth[5m])", EXACT),
    ("count_over_time(queue_depth[5m])", EXACT),
    ("count_over_time(queue_depth[30s])", EXACT),
    ("count_over_time(http_requests_total[1h])", EXACT),
    ("last_over_time(queue_depth[10m])", EXACT),
    ("last_over_time(job:requests:rate5m[1m])", EXACT),
    (
        "quantile_over_time(0.9, node_temperature_celsius[30m])",
        QUANTILE_TOLERANCE,
    ),
    (
        "quantile_over_time(0.5, queue_depth[1h])",
        QUANTILE_TOLERANCE,
    ),
    // Aggregations.
    ("sum(rate(http_requests_total[5m]))", EXACT),
    ("sum by (job) (rate(http_requests_total[5m]))", EXACT),
    ("sum without (instance) (http_requests_total)", EXACT),
    ("sum(http_requests_total) by (code)", EXACT),
    ("avg by (instance) (node_temperature_celsius)", EXACT),
    // Grouped by a label some series lack.
    ("sum by (zone) (node_temperature_celsius)", EXACT),
    (
        "count without (zone, instance) (node_temperature_celsius)",
        EXACT,
    ),
    ("sum(http_requests_total{job=\"no_such_job\"})", EXACT),
    ("avg(job:requests:rate5m)", EXACT),
    ("min(node_temperature_celsius)", EXACT),
    ("min without (code) (http_requests_total)", EXACT),
    ("max by (job) (queue_depth)", EXACT),
    ("max(process_cpu_seconds_total)", EXACT),
    ("count(http_requests_total)", EXACT),
    ("count by (code) (http_requests_total)", EXACT),
    ("count without (queue) (queue_depth)", EXACT),
    (
        "quantile(0.75, node_temperature_celsius)",
        QUANTILE_TOLERANCE,
    ),
    (
        "quantile by (job) (0.5, rate(http_requests_total[5m]))",
        QUANTILE_TOLERANCE,
    ),
    ("quantile(0.1, queue_depth)", QUANTILE_TOLERANCE),
    ("quantile(0, node_temperature_celsius)", QUANTILE_TOLERANCE),
    // Outside [0, 1]: +Inf.
    ("quantile(1.5, queue_depth)", QUANTILE_TOLERANCE),
    ("topk(3, node_temperature_celsius)", EXACT),
    ("topk by (job) (1, rate(http_requests_total[5m]))", EXACT),
    ("bottomk(2, node_temperature_celsius)", EXACT),
    (
        "topk(2, sum by (job) (rate(http_requests_total[5m])))",
        EXACT,
    ),
    ("bottomk(1, rate(process_cpu_seconds_total[5m]))", EXACT),
    ("sum by (queue) (queue_depth offset 1h)", EXACT),
    ("count(node_temperature_celsius > 21)", EXACT),
    ("sum(rate(http_requests_total[5m])) * 60", EXACT),
    // Arithmetic and comparisons between vectors and scalars, and between scalars.
    ("http_requests_total * 2 + 1", EXACT),
    ("http_requests_total * 1e-3", EXACT),
    ("1 - node_temperature_celsius / 100", EXACT),
    ("100 / queue_depth", EXACT),
    ("queue_depth % 3", EXACT),
    // +Inf, -Inf and NaN.
    ("(queue_depth - 10) / 0", EXACT),
    ("http_requests_total % 7", EXACT),
    ("node_temperature_celsius ^ 2", EXACT),
    ("2 ^ 3 ^ 2", EXACT),
    ("(1 + 2) * 3 - 4 / 8", EXACT),
    ("queue_depth > 5", EXACT),
    ("5 < queue_depth", EXACT),
    ("queue_depth > bool 5", EXACT),
    ("queue_depth == 0", EXACT),
    ("node_temperature_celsius <= 21.5", EXACT),
    ("http_requests_total != 0", EXACT),
    ("job:requests:rate5m >= bool 25", EXACT),
    ("1 < bool 2", EXACT),
    // One-to-one matching between vectors.
    (
        "node_temperature_celsius - node_temperature_celsius offset 5m",
        EXACT,
    ),
    (
        "process_cpu_seconds_total / process_cpu_seconds_total offset 30m",
        EXACT,
    ),
    (
        "rate(http_requests_total{code=\"500\"}[5m]) / ignoring(code) \
         rate(http_requests_total{code=\"200\"}[5m])",
        EXACT,
    ),
    (
        "sum by (job) (rate(http_requests_total[5m])) / on(job) job:requests:rate5m",
        EXACT,
    ),
    (
        "http_requests_total{job=\"api\"} + on(instance, code) http_requests_total{job=\"web\"}",
        EXACT,
    ),
    (
        "sum(http_requests_total) / count(http_requests_total)",
        EXACT,
    ),
    ("sum(queue_depth) / on() vector(4)", EXACT),
    (
        "node_temperature_celsius > on(instance) node_temperature_celsius offset 10m",
        EXACT,
    ),
    ("queue_depth >= bool queue_depth offset 5m", EXACT),
    // Other functions, and number literals.
    ("abs(delta(node_temperature_celsius[10m]))", EXACT),
    ("clamp_min(queue_depth, 3)", EXACT),
    ("clamp_max(node_temperature_celsius, 22)", EXACT),
    ("clamp_min(delta(queue_depth[10m]), -1)", EXACT),
    ("round(node_temperature_celsius)", EXACT),
    ("round(rate(http_requests_total[5m]), 0.25)", EXACT),
    ("time()", EXACT),
    ("time() - 60", EXACT),
    ("time() % 3600", EXACT),
    ("vector(1)", EXACT),
    ("vector(time())", EXACT),
    ("scalar(sum(queue_depth))", EXACT),
    // NaN: more than one series.
    ("scalar(queue_depth)", EXACT),
    ("queue_depth > scalar(sum(queue_depth)) / 4", EXACT),
    ("42", EXACT),
    ("1.5e3", EXACT),
    ("-2.5", EXACT),
];

/// Valid PromQL outside the supported subset, and the word RaftMetrics' error must name.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "max_over_time(rate(http_requests_total[5m])[30m:1m])",
        "subquery",
    ),
    ("queue_depth or node_temperature_celsius", "or"),
    ("queue_depth and queue_depth > 3", "and"),
    (
        "http_requests_total unless http_requests_total{code=\"200\"}",
        "unless",
    ),
    (
        "http_requests_total * on(job) group_left job:requests:rate5m",
        "group_left",
    ),
    (
        "histogram_quantile(0.9, rate(http_requests_total[5m]))",
        "histogram_quantile",
    ),
    (
        "label_replace(queue_depth, \"q\", \"$1\", \"queue\", \"(.*)\")",
        "label_replace",
    ),
    ("stddev(queue_depth)", "stddev"),
    ("absent(no_such_metric)", "absent"),
    ("queue_depth @ end()", "@"),
];

/// The words of Prometheus' refusal of a range query of too many points.
const TOO_MANY_POINTS: &str = "exceeded maximum resolution of 11,000 points per timeseries";

/// A missing client: a failure under `RAFTMETRICS_REQUIRE_CLIENTS=1`, otherwise a skip
/// that says why.
fn missing_client(why: &str) {
    if std::env::var("RAFTMETRICS_REQUIRE_CLIENTS").as_deref() == Ok("1") {
        panic!("{why} (RAFTMETRICS_REQUIRE_CLIENTS=1: the clients must be installed)");
    }
    eprintln!("SKIPPED: {why}; set RAFTMETRICS_REQUIRE_CLIENTS=1 to fail instead");
}

// ---------------------------------------------------------------------------------------
// The data.

/// SplitMix64: pseudo-random numbers from a fixed seed, the same on every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED_CAFE_F00D_0001)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A whole number in `0..n`.
    fn below(&mut self, n: u64) -> i64 {
        (self.next_u64() % n) as i64
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A series: its labels (`__name__` included, sorted by name) and its samples
/// (`(ms, value)`, in time order).
struct Series {
    labels: Vec<(String, String)>,
    samples: Vec<(i64, f64)>,
}

impl Series {
    fn new(name: &str, labels: &[(&str, &str)]) -> Series {
        let mut all: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.push(("__name__".into(), name.into()));
        all.sort();
        Series {
            labels: all,
            samples: Vec::new(),
        }
    }

    fn name(&self) -> &str {
        &self.labels.iter().find(|(k, _)| k == "__name__").unwrap().1
    }

    fn has(&self, key: &str, value: &str) -> bool {
        self.labels.iter().any(|(k, v)| k == key && v == value)
    }
}

/// Times (ms), e.g. of counter resets.
type Times<'a> = &'a [i64];

/// Spans of time (`[start, end)`, ms) without samples.
type Gaps<'a> = &'a [(i64, i64)];

/// Sample times from `from` to `to` (inclusive): the first within 10 s of `from`, then
/// 10 to 20 s apart with millisecond jitter; none in a gap (`[start, end)`).
fn jittered_times(rng: &mut Rng, from: i64, to: i64, gaps: Gaps) -> Vec<i64> {
    let mut times = Vec::new();
    let mut t = from + rng.below(10_000);
    while t <= to {
        if !gaps.iter().any(|&(a, b)| t >= a && t < b) {
            times.push(t);
        }
        t += 10_000 + rng.below(10_001);
    }
    times
}

/// The samples both servers receive, and the times the queries are evaluated at.
struct Data {
    /// The first and the last possible sample time; `end` is on the minute.
    start: i64,
    end: i64,
    series: Vec<Series>,
    /// Inside a gap of `queue_depth{queue="email"}`, more than the lookback after its
    /// last sample before the gap.
    gap_time: i64,
    /// The timestamp of a sample of `http_requests_total{job="api",instance="a:8080",
    /// code="200"}`.
    exact_sample: i64,
    /// The last sample of `queue_depth{queue="email"}` before its second gap plus exactly
    /// the lookback: that sample is at the lookback's edge.
    lookback_edge: i64,
}

impl Data {
    fn generate(end: i64) -> Data {
        let start = end - SPAN;
        let ago = |minutes: i64| end - minutes * MINUTE;
        let mut series = Vec::new();

        // Counters of requests: resets to a small value at the given times; one series
        // stops 70 minutes before the end, one starts an hour before it.
        let http: &[(&str, &str, &str, i64, i64, Times)] = &[
            ("api", "a:8080", "200", start, end, &[ago(75)]),
            ("api", "a:8080", "500", start, end, &[]),
            ("api", "b:8080", "200", start, end, &[ago(110), ago(20)]),
            ("api", "b:8080", "500", start, end, &[ago(40)]),
            ("web", "a:8080", "200", start, end, &[]),
            ("web", "c:8080", "404", start, end, &[ago(90), ago(30)]),
            ("web", "e:8080", "500", ago(60), end, &[]),
            ("batch", "d:8080", "200", start, ago(70), &[]),
        ];
        for (i, &(job, instance, code, from, to, resets)) in http.iter().enumerate() {
            let mut rng = Rng::new(100 + i as u64);
            let mut s = Series::new(
                "http_requests_total",
                &[("job", job), ("instance", instance), ("code", code)],
            );
            let mut value = rng.below(1_000) as f64;
            let mut resets = resets.iter().peekable();
            for t in jittered_times(&mut rng, from, to, &[]) {
                if resets.next_if(|&&r| t >= r).is_some() {
                    value = rng.below(6) as f64;
                } else {
                    value += rng.below(21) as f64;
                }
                s.samples.push((t, value));
            }
            series.push(s);
        }

        // A counter of fractional seconds, with one reset.
        let cpu: &[(&str, &str, Times)] = &[
            ("api", "a:8080", &[]),
            ("api", "b:8080", &[ago(50)]),
            ("web", "a:8080", &[]),
        ];
        for (i, &(job, instance, resets)) in cpu.iter().enumerate() {
            let mut rng = Rng::new(200 + i as u64);
            let mut s = Series::new(
                "process_cpu_seconds_total",
                &[("job", job), ("instance", instance)],
            );
            let mut value = 100.0 * rng.unit();
            let mut resets = resets.iter().peekable();
            for t in jittered_times(&mut rng, start, end, &[]) {
                if resets.next_if(|&&r| t >= r).is_some() {
                    value = rng.unit();
                } else {
                    value += 2.5 * rng.unit();
                }
                s.samples.push((t, value));
            }
            series.push(s);
        }

        // A gauge of fractional values; two series have no `zone`, one has a gap longer
        // than the lookback.
        let temperature: &[(&str, Option<&str>, Gaps)] = &[
            ("a:9100", Some("north"), &[]),
            ("b:9100", Some("south"), &[]),
            ("c:9100", None, &[]),
            ("d:9100", None, &[(ago(45), ago(39))]),
        ];
        for (i, &(instance, zone, gaps)) in temperature.iter().enumerate() {
            let mut rng = Rng::new(300 + i as u64);
            let mut labels = vec![("instance", instance)];
            if let Some(zone) = zone {
                labels.push(("zone", zone));
            }
            let mut s = Series::new("node_temperature_celsius", &labels);
            let base = 18.0 + 4.0 * rng.unit();
            for t in jittered_times(&mut rng, start, end, gaps) {
                let wave = 2.0 * ((t - start) as f64 / (20.0 * MINUTE as f64)).sin();
                s.samples.push((t, base + wave + rng.unit()));
            }
            series.push(s);
        }

        // A gauge of whole numbers (zeros included) with gaps: longer than the lookback
        // (email), shorter (sms), none (default); one series stops 20 minutes before the end.
        let queues: &[(&str, i64, Gaps)] = &[
            ("email", end, &[(ago(100), ago(88)), (ago(30), ago(23))]),
            ("sms", end, &[(ago(60), ago(56))]),
            ("push", ago(20), &[]),
            ("default", end, &[]),
        ];
        for (i, &(queue, to, gaps)) in queues.iter().enumerate() {
            let mut rng = Rng::new(400 + i as u64);
            let mut s = Series::new("queue_depth", &[("job", "worker"), ("queue", queue)]);
            let mut value = rng.below(21);
            for t in jittered_times(&mut rng, start, to, gaps) {
                value = (value + rng.below(7) - 3).clamp(0, 20);
                s.samples.push((t, value as f64));
            }
            series.push(s);
        }

        // A recording rule's output: every 30 s on the minute grid, up to the end itself.
        for (i, job) in ["api", "web"].into_iter().enumerate() {
            let mut rng = Rng::new(500 + i as u64);
            let mut s = Series::new("job:requests:rate5m", &[("job", job)]);
            let mut t = start;
            while t <= end {
                s.samples.push((t, 50.0 * rng.unit()));
                t += 30_000;
            }
            series.push(s);
        }

        let find = |name: &str, key: &str, value: &str| -> &Series {
            series
                .iter()
                .find(|s| s.name() == name && s.has(key, value))
                .unwrap()
        };
        let email = find("queue_depth", "queue", "email");
        let last_before = |t: i64| {
            email
                .samples
                .iter()
                .rev()
                .find(|(ts, _)| *ts < t)
                .unwrap()
                .0
        };
        let gap_time = last_before(ago(100)) + LOOKBACK + 3 * MINUTE;
        let lookback_edge = last_before(ago(30)) + LOOKBACK;
        let exact_sample = find("http_requests_total", "code", "200")
            .samples
            .iter()
            .find(|(ts, _)| *ts >= ago(33))
            .unwrap()
            .0;
        Data {
            start,
            end,
            series,
            gap_time,
            exact_sample,
            lookback_edge,
        }
    }

    fn samples(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }

    /// The number of samples of each metric.
    fn samples_by_metric(&self) -> BTreeMap<String, i64> {
        let mut counts = BTreeMap::new();
        for s in &self.series {
            *counts.entry(s.name().to_string()).or_default() += s.samples.len() as i64;
        }
        counts
    }

    /// Remote write requests of at most [`BATCH`] samples, ordered by time across all
    /// series.
    fn write_requests(&self) -> Vec<proto::WriteRequest> {
        let mut all: Vec<(i64, usize, f64)> = self
            .series
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.samples.iter().map(move |&(t, v)| (t, i, v)))
            .collect();
        all.sort_by_key(|&(t, i, _)| (t, i));
        all.chunks(BATCH)
            .map(|chunk| {
                let mut by_series: BTreeMap<usize, Vec<proto::Sample>> = BTreeMap::new();
                for &(timestamp, i, value) in chunk {
                    by_series
                        .entry(i)
                        .or_default()
                        .push(proto::Sample { value, timestamp });
                }
                proto::WriteRequest {
                    timeseries: by_series
                        .into_iter()
                        .map(|(i, samples)| proto::TimeSeries {
                            labels: self.series[i]
                                .labels
                                .iter()
                                .map(|(name, value)| proto::Label {
                                    name: name.clone(),
                                    value: value.clone(),
                                })
                                .collect(),
                            samples,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// The instant queries' evaluation times: what each is, when, and its `time`
    /// parameter.
    fn eval_times(&self) -> Vec<(&'static str, String)> {
        vec![
            ("the end of the data", unix(self.end)),
            ("inside a gap", unix(self.gap_time)),
            ("a sample's timestamp", unix(self.exact_sample)),
            ("a sample plus the lookback", unix(self.lookback_edge)),
            (
                "47 minutes before the end (RFC 3339)",
                rfc3339(self.end - 47 * MINUTE - 123),
            ),
        ]
    }

    /// The range queries' `start`, `end` and `step`: starts off the step's grid, ends
    /// before, at and after the end of the data.
    fn ranges(&self) -> Vec<[String; 3]> {
        vec![
            [
                unix(self.end - 40 * MINUTE + 7_250),
                unix(self.end + MINUTE),
                "15s".into(),
            ],
            [
                unix(self.end - 120 * MINUTE + 13_500),
                unix(self.end),
                "60".into(),
            ],
            [
                rfc3339(self.start - 10 * MINUTE + 41_000),
                rfc3339(self.end + 10 * MINUTE),
                "5m".into(),
            ],
        ]
    }
}

/// Milliseconds as Unix seconds with three decimals.
fn unix(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// Milliseconds as RFC 3339 (UTC).
fn rfc3339(ms: i64) -> String {
    Timestamp::from_micros(ms * 1000).to_rfc3339()
}

/// The data's end: on the minute, 15 minutes before now (so that every evaluation time
/// is in the past).
fn end_of_data() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now - now.rem_euclid(MINUTE) - 15 * MINUTE
}

// ---------------------------------------------------------------------------------------
// The two servers and their answers.

/// A server of the query API: where, and with which token.
struct Target {
    name: &'static str,
    base: String,
    token: Option<&'static str>,
    http: reqwest::Client,
}

/// An HTTP answer: status (0 when none came) and body.
struct Answer {
    status: u16,
    text: String,
    json: Value,
}

impl Target {
    /// `path` with `params`, in the query string (GET) or as a form body (POST).
    async fn call(&self, path: &str, params: &[(&str, String)], post: bool) -> Answer {
        let url = format!("{}{path}", self.base);
        let mut request = if post {
            self.http.post(&url).form(params)
        } else {
            self.http.get(&url).query(params)
        };
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let json = serde_json::from_str(&text).unwrap_or(Value::Null);
                Answer { status, text, json }
            }
            Err(e) => Answer {
                status: 0,
                text: format!("(no answer: {e})"),
                json: Value::Null,
            },
        }
    }

    /// The `data` of a successful answer to `path` with `params` (GET).
    async fn data(&self, path: &str, params: &[(&str, String)]) -> Result<Value, String> {
        let answer = self.call(path, params, false).await;
        if answer.status != 200 || answer.json["status"] != "success" {
            return Err(format!(
                "{}: {path} {params:?} answered {}: {}",
                self.name,
                answer.status,
                clip(&answer.text, 2_000)
            ));
        }
        Ok(answer.json["data"].clone())
    }

    /// The one value `query` answers at `time` (`None`: no series, or not a success).
    async fn value(&self, query: &str, time: i64) -> Option<f64> {
        let data = self
            .data(
                "/api/v1/query",
                &[("query", query.to_string()), ("time", unix(time))],
            )
            .await
            .ok()?;
        let result = data["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        parse_value(&result[0]["value"][1]).ok()
    }
}

/// Bodies of the first this many differences are printed whole, later ones cut.
const WHOLE_BODIES: usize = 20;

/// At most `max` bytes of `text`.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} more bytes)", &text[..cut], text.len() - cut)
}

type Labels = BTreeMap<String, String>;

/// The result of a successful query.
#[derive(Debug)]
enum Outcome {
    Scalar(i64, f64),
    Vector(BTreeMap<Labels, (i64, f64)>),
    Matrix(BTreeMap<Labels, Vec<(i64, f64)>>),
}

/// A timestamp of the API (Unix seconds, a number) in milliseconds.
fn parse_time(v: &Value) -> Result<i64, String> {
    v.as_f64()
        .map(|s| (s * 1000.0).round() as i64)
        .ok_or_else(|| format!("not a timestamp: {v}"))
}

/// A value of the API (a string: a number, `NaN`, `+Inf`, `-Inf`).
fn parse_value(v: &Value) -> Result<f64, String> {
    let text = v
        .as_str()
        .ok_or_else(|| format!("not a string value: {v}"))?;
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text
            .parse::<f64>()
            .map_err(|_| format!("not a number: {text:?}")),
    }
}

/// A `[timestamp, "value"]` pair.
fn parse_point(v: &Value) -> Result<(i64, f64), String> {
    match v.as_array().map(Vec::as_slice) {
        Some([t, value]) => Ok((parse_time(t)?, parse_value(value)?)),
        _ => Err(format!("not a [time, value] pair: {v}")),
    }
}

fn parse_labels(v: &Value) -> Result<Labels, String> {
    let object = v
        .as_object()
        .ok_or_else(|| format!("not a label set: {v}"))?;
    object
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(format!("label {k} is not a string: {v}")),
        })
        .collect()
}

/// The result of a successful answer in Prometheus' envelope.
fn parse_outcome(body: &Value) -> Result<Outcome, String> {
    if body["status"] != "success" {
        return Err(format!("status is {}, not \"success\"", body["status"]));
    }
    let data = &body["data"];
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("scalar") => {
            let (t, v) = parse_point(result)?;
            Ok(Outcome::Scalar(t, v))
        }
        Some("vector") => {
            let mut out = BTreeMap::new();
            for s in result.as_array().ok_or("the vector is not an array")? {
                let labels = parse_labels(&s["metric"])?;
                let point = parse_point(&s["value"])?;
                if out.insert(labels.clone(), point).is_some() {
                    return Err(format!("the series {} twice", show(&labels)));
                }
            }
            Ok(Outcome::Vector(out))
        }
        Some("matrix") => {
            let mut out = BTreeMap::new();
            for s in result.as_array().ok_or("the matrix is not an array")? {
                let labels = parse_labels(&s["metric"])?;
                let points = s["values"]
                    .as_array()
                    .ok_or_else(|| format!("no values of {}", show(&labels)))?
                    .iter()
                    .map(parse_point)
                    .collect::<Result<Vec<_>, _>>()?;
                if out.insert(labels.clone(), points).is_some() {
                    return Err(format!("the series {} twice", show(&labels)));
                }
            }
            Ok(Outcome::Matrix(out))
        }
        other => Err(format!("resultType {other:?}")),
    }
}

fn show(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Values equal within `tolerance` (relative), [`ABSOLUTE`] near 0; NaN equals NaN,
/// infinities equal by sign.
fn close(a: f64, b: f64, tolerance: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= ABSOLUTE.max(tolerance * a.abs().max(b.abs()))
}

/// The differences of two lists of points, at most a few.
fn point_differences(
    what: &str,
    want: &[(i64, f64)],
    got: &[(i64, f64)],
    tolerance: f64,
    out: &mut Vec<String>,
) {
    if want.len() != got.len() {
        out.push(format!(
            "{what}: {} points, Prometheus {}",
            got.len(),
            want.len()
        ));
    }
    for (w, g) in want.iter().zip(got) {
        if w.0 != g.0 {
            out.push(format!(
                "{what}: a point at {} ms, Prometheus at {} ms",
                g.0, w.0
            ));
            break;
        }
        if !close(w.1, g.1, tolerance) {
            out.push(format!("{what} at {} ms: {}, Prometheus {}", w.0, g.1, w.1));
        }
    }
}

/// Series sets of two answers: what one has and the other lacks.
fn series_differences<T>(
    want: &BTreeMap<Labels, T>,
    got: &BTreeMap<Labels, T>,
    out: &mut Vec<String>,
) {
    for labels in want.keys().filter(|l| !got.contains_key(*l)) {
        out.push(format!("missing series {}", show(labels)));
    }
    for labels in got.keys().filter(|l| !want.contains_key(*l)) {
        out.push(format!("extra series {}", show(labels)));
    }
}

/// How RaftMetrics' answer `got` differs from Prometheus' `want` (empty: no difference).
fn differences(want: &Answer, got: &Answer, tolerance: f64) -> Vec<String> {
    let mut out = Vec::new();
    if want.status != 200 {
        if got.status != want.status
            || got.json["status"] != "error"
            || got.json["errorType"] != want.json["errorType"]
        {
            out.push(format!(
                "status {} errorType {}, Prometheus {} errorType {}",
                got.status, got.json["errorType"], want.status, want.json["errorType"]
            ));
        }
        return out;
    }
    if got.status != 200 {
        out.push(format!("status {}, Prometheus 200", got.status));
        return out;
    }
    let want = match parse_outcome(&want.json) {
        Ok(o) => o,
        Err(e) => {
            out.push(format!("Prometheus' answer does not parse: {e}"));
            return out;
        }
    };
    let got = match parse_outcome(&got.json) {
        Ok(o) => o,
        Err(e) => {
            out.push(format!("the answer does not parse: {e}"));
            return out;
        }
    };
    match (&want, &got) {
        (Outcome::Scalar(wt, wv), Outcome::Scalar(gt, gv)) => {
            point_differences(
                "the scalar",
                &[(*wt, *wv)],
                &[(*gt, *gv)],
                tolerance,
                &mut out,
            );
        }
        (Outcome::Vector(w), Outcome::Vector(g)) => {
            series_differences(w, g, &mut out);
            for (labels, wp) in w {
                if let Some(gp) = g.get(labels) {
                    point_differences(&show(labels), &[*wp], &[*gp], tolerance, &mut out);
                }
            }
        }
        (Outcome::Matrix(w), Outcome::Matrix(g)) => {
            series_differences(w, g, &mut out);
            for (labels, wp) in w {
                if let Some(gp) = g.get(labels) {
                    point_differences(&show(labels), wp, gp, tolerance, &mut out);
                }
            }
        }
        _ => out.push(format!(
            "resultType {}, Prometheus {}",
            type_of(&got),
            type_of(&want)
        )),
    }
    out
}

fn type_of(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Scalar(..) => "scalar",
        Outcome::Vector(_) => "vector",
        Outcome::Matrix(_) => "matrix",
    }
}

/// The comparisons made and the differences found.
#[derive(Default)]
struct Report {
    compared: usize,
    failures: Vec<String>,
}

impl Report {
    /// Asks both `path` with `params` and records how RaftMetrics' answer differs.
    async fn compare(
        &mut self,
        prom: &Target,
        rm: &Target,
        path: &str,
        params: &[(&str, String)],
        post: bool,
        tolerance: f64,
    ) {
        let want = prom.call(path, params, post).await;
        let got = rm.call(path, params, post).await;
        self.compared += 1;
        let diffs = differences(&want, &got, tolerance);
        if !diffs.is_empty() {
            let max = if self.failures.len() < WHOLE_BODIES {
                usize::MAX
            } else {
                4_000
            };
            self.fail(format!(
                "{} {path} {params:?}:\n  {}\n  RaftMetrics ({}): {}\n  Prometheus ({}): {}",
                if post { "POST" } else { "GET" },
                diffs
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  "),
                got.status,
                clip(&got.text, max),
                want.status,
                clip(&want.text, max)
            ));
        }
    }

    fn fail(&mut self, what: String) {
        eprintln!("MISMATCH {}: {what}\n", self.failures.len() + 1);
        self.failures.push(what);
    }

    /// Records `what` unless `ok`.
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.compared += 1;
        if !ok {
            self.fail(what());
        }
    }
}

/// Remote-writes `request` to `target`; panics unless it is accepted.
async fn remote_write(target: &Target, request: &proto::WriteRequest) {
    let mut post = target
        .http
        .post(format!("{}/api/v1/write", target.base))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(encode(request));
    if let Some(token) = target.token {
        post = post.bearer_auth(token);
    }
    let resp = post.send().await.expect("remote write");
    let status = resp.status();
    assert!(
        status.is_success(),
        "{}: remote write answered {status}: {}",
        target.name,
        resp.text().await.unwrap_or_default()
    );
}

/// The query of the number of samples of `metric` (at the end of the data).
fn count_query(metric: &str) -> String {
    format!("sum(count_over_time({metric}[{}m]))", SPAN / MINUTE + 30)
}

/// The number of samples of each metric `target` holds, as PromQL counts them (-1: no
/// answer).
async fn held(target: &Target, data: &Data) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for metric in data.samples_by_metric().keys() {
        let n = target
            .value(&count_query(metric), data.end)
            .await
            .unwrap_or(-1.0);
        counts.insert(metric.clone(), n as i64);
    }
    counts
}

/// Whether `error` names `construct`: as a word when it is one, anywhere otherwise.
fn names(error: &str, construct: &str) -> bool {
    let error = error.to_lowercase();
    if construct.chars().all(|c| c.is_alphanumeric() || c == '_') {
        error
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|word| word == construct)
    } else {
        error.contains(construct)
    }
}

/// A set of strings (`/api/v1/labels`, `/api/v1/label/<name>/values`).
fn string_set(data: &Value) -> Result<BTreeSet<String>, String> {
    data.as_array()
        .ok_or_else(|| format!("not an array: {data}"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("not a string: {v}"))
        })
        .collect()
}

/// A set of label sets (`/api/v1/series`).
fn label_sets(data: &Value) -> Result<BTreeSet<Labels>, String> {
    data.as_array()
        .ok_or_else(|| format!("not an array: {data}"))?
        .iter()
        .map(parse_labels)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_answers_as_prometheus_does() {
    let binary = match prometheus::binary() {
        Ok(p) => p,
        Err(why) => return missing_client(&why),
    };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let prometheus = Prometheus::start(
        &binary,
        dir.path(),
        "# No scrape jobs: every sample arrives by remote write.\nglobal:\n  \
         scrape_interval: 15s\n",
        &["--web.enable-remote-write-receiver"],
    )
    .await;
    // Over a thousand requests in well under a minute: the per-token rate limit (1,000 a
    // minute by default) is not what this test is about.
    let c = DevCluster::start(2, 2, 8, &["--rate-limit-per-minute", "100000"]).await;
    eprintln!(
        "prometheus on port {}, a cluster of 2 workers, after {:?}",
        prometheus.port,
        started.elapsed()
    );
    let prom = Target {
        name: "Prometheus",
        base: prometheus.url(""),
        token: None,
        http: prometheus.http.clone(),
    };
    let rm = Target {
        name: "RaftMetrics",
        base: c.url(""),
        token: Some(TOKEN),
        http: c.http.clone(),
    };

    // --- The same samples to both, in time order.
    let data = Data::generate(end_of_data());
    let requests = data.write_requests();
    for request in &requests {
        remote_write(&prom, request).await;
        remote_write(&rm, request).await;
    }
    let sent = data.samples_by_metric();
    eprintln!(
        "{} samples of {} series ({sent:?}) in {} requests, {} to {}",
        data.samples(),
        data.series.len(),
        requests.len(),
        rfc3339(data.start),
        rfc3339(data.end)
    );
    assert_eq!(
        held(&prom, &data).await,
        sent,
        "Prometheus does not hold every sample sent:\n{}",
        prometheus.log()
    );
    let waiting = Instant::now();
    loop {
        let counts = held(&rm, &data).await;
        if counts == sent {
            eprintln!(
                "RaftMetrics holds every sample after {:?}",
                waiting.elapsed()
            );
            break;
        }
        if waiting.elapsed() > Duration::from_secs(60) {
            let params = [
                ("query", count_query("http_requests_total")),
                ("time", unix(data.end)),
            ];
            let last = rm.call("/api/v1/query", &params, false).await;
            panic!(
                "RaftMetrics holds {counts:?} samples 60 s after the writes, not {sent:?} \
                 (-1: no answer); {params:?} answers {}: {}",
                last.status,
                clip(&last.text, 2_000)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The reference follows Prometheus 2's lookback: a sample exactly 5 minutes before
    // the evaluation time is still selected (the edge is inclusive).
    let edge = prom
        .value("queue_depth{queue=\"email\"}", data.lookback_edge)
        .await;
    assert!(
        edge.is_some(),
        "the reference does not select a sample at the lookback's edge: not Prometheus 2?"
    );

    let mut report = Report::default();

    // --- Every query as instant query at every evaluation time and as range query with
    // every step; GET and POST alternate.
    let eval_times = data.eval_times();
    let ranges = data.ranges();
    for (what, time) in &eval_times {
        eprintln!("evaluation time {time}: {what}");
    }
    for [start, end, step] in &ranges {
        eprintln!("range {start} to {end}, step {step}");
    }
    for (q, &(query, tolerance)) in QUERIES.iter().enumerate() {
        for (i, (_, time)) in eval_times.iter().enumerate() {
            let mut params = vec![("query", query.to_string()), ("time", time.clone())];
            if q % 3 == 0 {
                params.push(("timeout", "30s".into()));
            }
            let post = (q + i) % 2 == 1;
            report
                .compare(&prom, &rm, "/api/v1/query", &params, post, tolerance)
                .await;
        }
        for (i, [start, end, step]) in ranges.iter().enumerate() {
            let params = [
                ("query", query.to_string()),
                ("start", start.clone()),
                ("end", end.clone()),
                ("step", step.clone()),
            ];
            let post = (q + i) % 2 == 0;
            report
                .compare(&prom, &rm, "/api/v1/query_range", &params, post, tolerance)
                .await;
        }
    }
    let compared_queries = report.compared;
    eprintln!(
        "{} queries: {compared_queries} answers compared ({} evaluation times, {} ranges)",
        QUERIES.len(),
        eval_times.len(),
        ranges.len()
    );

    // GET and POST of RaftMetrics answer the same (series in any order).
    for query in ["rate(http_requests_total[5m])", "queue_depth > 5", "time()"] {
        let params = [("query", query.to_string()), ("time", unix(data.end))];
        let get = rm.call("/api/v1/query", &params, false).await;
        let post = rm.call("/api/v1/query", &params, true).await;
        let same = get.status == 200 && differences(&get, &post, 0.0).is_empty();
        report.check(same, || {
            format!(
                "{query}: GET answered {} {}, POST {} {}",
                get.status,
                clip(&get.text, 2_000),
                post.status,
                clip(&post.text, 2_000)
            )
        });
    }

    // --- Valid PromQL outside the subset: 400 bad_data naming the construct.
    for &(query, construct) in UNSUPPORTED {
        let params = [("query", query.to_string()), ("time", unix(data.end))];
        let reference = prom.call("/api/v1/query", &params, false).await;
        assert_eq!(
            (reference.status, &reference.json["status"]),
            (200, &Value::from("success")),
            "Prometheus refuses {query}: {}",
            reference.text
        );
        for post in [false, true] {
            let got = rm.call("/api/v1/query", &params, post).await;
            let error = got.json["error"].as_str().unwrap_or_default();
            report.check(
                got.status == 400
                    && got.json["status"] == "error"
                    && got.json["errorType"] == "bad_data"
                    && names(error, construct),
                || {
                    format!(
                        "{query}: want 400 bad_data naming {construct:?}, got {}: {}",
                        got.status, got.text
                    )
                },
            );
        }
        let params = [
            ("query", query.to_string()),
            ("start", unix(data.end - 10 * MINUTE)),
            ("end", unix(data.end)),
            ("step", "60".into()),
        ];
        let got = rm.call("/api/v1/query_range", &params, false).await;
        let error = got.json["error"].as_str().unwrap_or_default();
        report.check(
            got.status == 400 && got.json["errorType"] == "bad_data" && names(error, construct),
            || {
                format!(
                    "range {query}: want 400 bad_data naming {construct:?}, got {}: {}",
                    got.status, got.text
                )
            },
        );
    }

    // --- Bad parameters: the status and errorType Prometheus answers (400 bad_data).
    let end = unix(data.end);
    let hour_before = unix(data.end - 60 * MINUTE);
    let range = |query: &str, start: &str, end: &str, step: Option<&str>| {
        let mut p = vec![
            ("query", query.to_string()),
            ("start", start.to_string()),
            ("end", end.to_string()),
        ];
        if let Some(step) = step {
            p.push(("step", step.to_string()));
        }
        p
    };
    let bad_ranges = [
        range("queue_depth", &hour_before, &end, Some("0")),
        range("queue_depth", &hour_before, &end, Some("-15")),
        range("queue_depth", &hour_before, &end, Some("abc")),
        range("queue_depth", &hour_before, &end, None),
        range("queue_depth", &end, &hour_before, Some("60")),
        range("queue_depth", "abc", &end, Some("60")),
        range("queue_depth", &hour_before, "", Some("60")),
        range("sum(", &hour_before, &end, Some("60")),
    ];
    for params in &bad_ranges {
        report
            .compare(&prom, &rm, "/api/v1/query_range", params, false, EXACT)
            .await;
    }
    let instant = |query: &str, extra: &[(&'static str, &str)]| {
        let mut p = vec![("query", query.to_string())];
        p.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        p
    };
    let bad_instants = [
        instant("queue_depth", &[("time", "abc")]),
        instant("queue_depth", &[("time", &end), ("timeout", "abc")]),
        instant("", &[("time", &end)]),
        instant("sum(", &[("time", &end)]),
        instant("queue_depth{", &[("time", &end)]),
        instant("1 > 2", &[("time", &end)]),
        instant("rate(queue_depth)", &[("time", &end)]),
    ];
    for params in &bad_instants {
        for post in [false, true] {
            report
                .compare(&prom, &rm, "/api/v1/query", params, post, EXACT)
                .await;
        }
    }
    // At most 11,000 steps: (end - start) / step may be 11,000, not more.
    let steps = |n: i64| range("vector(1)", &unix(data.end - n * 1000), &end, Some("1"));
    report
        .compare(
            &prom,
            &rm,
            "/api/v1/query_range",
            &steps(11_000),
            false,
            EXACT,
        )
        .await;
    let too_many = steps(11_001);
    report
        .compare(&prom, &rm, "/api/v1/query_range", &too_many, true, EXACT)
        .await;
    let reference = prom.call("/api/v1/query_range", &too_many, false).await;
    assert!(
        reference.text.contains(TOO_MANY_POINTS),
        "Prometheus: {}",
        reference.text
    );
    let got = rm.call("/api/v1/query_range", &too_many, false).await;
    report.check(
        got.status == 400
            && got.json["errorType"] == "bad_data"
            && got.text.contains(TOO_MANY_POINTS),
        || format!("11,001 steps: got {}: {}", got.status, got.text),
    );

    // --- Label names, label values and series: the same sets.
    let around = [
        ("start", unix(data.start - MINUTE)),
        ("end", unix(data.end + MINUTE)),
    ];
    let last_half_hour = [
        ("start", unix(data.end - 30 * MINUTE)),
        ("end", unix(data.end)),
    ];
    // The reference answers what the data implies: `__name__` among the label names, the
    // metric names with their colons, no series without a sample in the time range.
    let strings =
        |items: &[&str]| -> BTreeSet<String> { items.iter().map(|s| s.to_string()).collect() };
    let reference = |path: &'static str, params: Vec<(&'static str, String)>| {
        let prom = &prom;
        async move {
            prom.data(path, &params)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    assert_eq!(
        string_set(&reference("/api/v1/labels", around.to_vec()).await),
        Ok(strings(&[
            "__name__", "code", "instance", "job", "queue", "zone"
        ]))
    );
    assert_eq!(
        string_set(&reference("/api/v1/label/__name__/values", around.to_vec()).await),
        Ok(data.samples_by_metric().into_keys().collect())
    );
    let recent = |match_: &str| {
        let mut params = last_half_hour.to_vec();
        params.push(("match[]", match_.to_string()));
        params
    };
    let jobs: BTreeSet<String> =
        label_sets(&reference("/api/v1/series", recent("http_requests_total")).await)
            .unwrap()
            .iter()
            .map(|labels| labels["job"].clone())
            .collect();
    assert_eq!(jobs, strings(&["api", "web"]));

    let name_lists: [(&str, &[(&str, String)]); 7] = [
        ("/api/v1/labels", &[]),
        ("/api/v1/labels", &around),
        ("/api/v1/label/job/values", &[]),
        ("/api/v1/label/job/values", &around),
        ("/api/v1/label/__name__/values", &around),
        ("/api/v1/label/zone/values", &around),
        ("/api/v1/label/no_such_label/values", &around),
    ];
    for (path, params) in name_lists {
        let want = prom
            .data(path, params)
            .await
            .and_then(|d| string_set(&d))
            .unwrap_or_else(|e| panic!("{e}"));
        let got = rm.data(path, params).await.and_then(|d| string_set(&d));
        report.check(got.as_ref() == Ok(&want), || {
            format!("{path} {params:?}: {got:?}, Prometheus {want:?}")
        });
    }
    let series_lists: [Vec<(&str, String)>; 3] = [
        [("match[]", "http_requests_total".to_string())]
            .into_iter()
            .chain(around.iter().cloned())
            .collect(),
        // The series that stopped 70 minutes before the end is not listed.
        [("match[]", "http_requests_total".to_string())]
            .into_iter()
            .chain(last_half_hour.iter().cloned())
            .collect(),
        [
            ("match[]", "queue_depth{queue=~\"e.*|sms\"}".to_string()),
            ("match[]", "job:requests:rate5m".to_string()),
        ]
        .into_iter()
        .chain(around.iter().cloned())
        .collect(),
    ];
    for params in &series_lists {
        let want = prom
            .data("/api/v1/series", params)
            .await
            .and_then(|d| label_sets(&d))
            .unwrap_or_else(|e| panic!("{e}"));
        let got = rm
            .data("/api/v1/series", params)
            .await
            .and_then(|d| label_sets(&d));
        report.check(got.as_ref() == Ok(&want), || {
            format!("/api/v1/series {params:?}: {got:?}, Prometheus {want:?}")
        });
    }

    // --- Build information and metadata, in the envelope.
    let build = rm.data("/api/v1/status/buildinfo", &[]).await;
    report.check(
        build
            .as_ref()
            .is_ok_and(|d| d["version"].as_str().is_some_and(|v| !v.is_empty())),
        || format!("/api/v1/status/buildinfo: {build:?}"),
    );
    let metadata = rm.data("/api/v1/metadata", &[]).await;
    report.check(metadata.as_ref().is_ok_and(Value::is_object), || {
        format!("/api/v1/metadata: {metadata:?}")
    });

    // --- The query API wants the token.
    let anonymous = Target {
        name: "RaftMetrics without a token",
        base: c.url(""),
        token: None,
        http: c.http.clone(),
    };
    for path in ["/api/v1/query", "/api/v1/query_range", "/api/v1/labels"] {
        let params = [
            ("query", "vector(1)".to_string()),
            ("time", end.clone()),
            ("start", hour_before.clone()),
            ("end", end.clone()),
            ("step", "60".into()),
        ];
        let got = anonymous.call(path, &params, false).await;
        report.check(got.status == 401, || {
            format!("{path} without a token: {} {}", got.status, got.text)
        });
    }

    eprintln!(
        "{} comparisons and checks, {} of them query answers; {} differences",
        report.compared,
        compared_queries,
        report.failures.len()
    );
    if !report.failures.is_empty() {
        let firsts: Vec<&str> = report
            .failures
            .iter()
            .take(20)
            .map(|f| f.lines().next().unwrap_or_default())
            .collect();
        panic!(
            "{} of {} answers differ from Prometheus' (each printed above); the first:\n{}",
            report.failures.len(),
            report.compared,
            firsts.join("\n")
        );
    }
}

/// An answer with `status` and the JSON `text`.
fn answer(status: u16, text: &str) -> Answer {
    Answer {
        status,
        text: text.to_string(),
        json: serde_json::from_str(text).unwrap(),
    }
}

#[test]
fn answers_compare_as_sets_of_series_within_the_tolerance() {
    let vector = |a: &str, b: &str| {
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[
              {{"metric":{{"__name__":"m","i":"1"}},"value":[1700000000.5,"{a}"]}},
              {{"metric":{{"__name__":"m","i":"2"}},"value":[1700000000.5,"{b}"]}}]}}}}"#
        )
    };
    let want = answer(200, &vector("1000", "NaN"));
    // The same series in another order, values within 1e-9, NaN equal to NaN.
    let reordered = r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"i":"2","__name__":"m"},"value":[1700000000.5,"NaN"]},
        {"metric":{"__name__":"m","i":"1"},"value":[1700000000.5,"1000.0000001"]}]}}"#;
    assert_eq!(
        differences(&want, &answer(200, reordered), EXACT),
        Vec::<String>::new()
    );
    assert_eq!(
        differences(&want, &answer(200, &vector("1000.01", "NaN")), EXACT).len(),
        1
    );
    assert_eq!(
        differences(&want, &answer(200, &vector("1000", "+Inf")), EXACT).len(),
        1
    );
    // A looser tolerance, and the absolute one near 0.
    assert!(differences(&want, &answer(200, &vector("1009", "NaN")), 0.01).is_empty());
    let zero = answer(200, &vector("0", "NaN"));
    assert!(differences(&zero, &answer(200, &vector("1e-13", "NaN")), EXACT).is_empty());
    assert_eq!(
        differences(&zero, &answer(200, &vector("1e-11", "NaN")), EXACT).len(),
        1
    );
    // A series missing, one without `__name__`, another timestamp, another result type.
    let one = r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"__name__":"m","i":"1"},"value":[1700000000.5,"1000"]}]}}"#;
    assert_eq!(differences(&want, &answer(200, one), EXACT).len(), 1);
    let nameless = vector("1000", "NaN").replace(r#""__name__":"m","i":"2""#, r#""i":"2""#);
    assert_eq!(differences(&want, &answer(200, &nameless), EXACT).len(), 2);
    let later = vector("1000", "NaN").replace("1700000000.5", "1700000000.501");
    assert_eq!(differences(&want, &answer(200, &later), EXACT).len(), 2);
    let scalar =
        r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"1"]}}"#;
    assert_eq!(differences(&want, &answer(200, scalar), EXACT).len(), 1);
    // Matrices: the same points in each series.
    let matrix = |v: &str| {
        format!(
            r#"{{"status":"success","data":{{"resultType":"matrix","result":[
              {{"metric":{{}},"values":[[1700000000,"1"],[1700000015,"{v}"]]}}]}}}}"#
        )
    };
    let want = answer(200, &matrix("-Inf"));
    assert!(differences(&want, &answer(200, &matrix("-Inf")), EXACT).is_empty());
    assert_eq!(
        differences(&want, &answer(200, &matrix("2")), EXACT).len(),
        1
    );
    let short = r#"{"status":"success","data":{"resultType":"matrix","result":[
        {"metric":{},"values":[[1700000000,"1"]]}]}}"#;
    assert_eq!(differences(&want, &answer(200, short), EXACT).len(), 1);
    // Errors: the status and errorType.
    let bad = answer(
        400,
        r#"{"status":"error","errorType":"bad_data","error":"x"}"#,
    );
    let same = answer(
        400,
        r#"{"status":"error","errorType":"bad_data","error":"y"}"#,
    );
    let other = answer(
        422,
        r#"{"status":"error","errorType":"execution","error":"x"}"#,
    );
    assert!(differences(&bad, &same, EXACT).is_empty());
    assert_eq!(differences(&bad, &other, EXACT).len(), 1);
    assert_eq!(differences(&want, &bad, EXACT).len(), 1);
}

#[test]
fn an_error_names_a_construct_as_a_word() {
    assert!(names("binary operator \"or\" is not supported", "or"));
    assert!(!names("unsupported function: floor", "or"));
    assert!(names("Subquery is not supported", "subquery"));
    assert!(names("the @ modifier is not supported", "@"));
    assert!(!names("label_replace_x", "label_replace"));
}
