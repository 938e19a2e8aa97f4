//! Grafana's Prometheus data source against the control node, request for request.
//!
//! Each test replays what Grafana 11.5 sends to a Prometheus server, written byte for byte
//! as Grafana's Go HTTP client writes it (HTTP/1.1 over one kept-alive TCP connection,
//! `Host`, `User-Agent`, `Content-Length` for a body, the `Authorization: Bearer` header of
//! a data source configured with that custom header, `Content-Type:
//! application/x-www-form-urlencoded` for a POST, `Accept-Encoding: gzip`), against a dev
//! cluster loaded with a few series by remote write. Each answer is checked as Grafana reads
//! it (Prometheus' envelope: `status`, `data.resultType`, `[<number>, "<string>"]` pairs)
//! and against the samples written: metric and label names, series, and every value of
//! `rate`, `avg_over_time` and instant selectors computed here from the samples with
//! Prometheus' rules (extrapolation of `rate`, the 5 minute lookback of selectors).
//!
//! Every sequence runs twice: with the data source's HTTP method POST (what the
//! configuration page saves for a new data source) and GET. The same sequences also run
//! against Prometheus itself (Debian's 2.42, loaded with the same samples; skipped when it
//! is missing unless `RAFTMETRICS_REQUIRE_CLIENTS=1`), which holds the requests and the
//! expected answers computed here to what Prometheus answers.
//!
//! # Where the requests come from
//!
//! Grafana 11.5, the Prometheus data source as it is in `grafana/grafana`:
//!
//! - backend (`pkg/promlib`): `healthcheck.go` (`CheckHealth`: the instant query `1+1` over
//!   the time range 1 s to 4 s), `heuristics.go` (`GET api/v1/status/buildinfo`; a
//!   non-empty `data.features` makes the data source a Mimir with a ruler API),
//!   `client/client.go` (`QueryRange`, `QueryInstant`: the form body or query string of
//!   `url.Values.Encode`, sorted by key; `formatTime`: Unix seconds with their fraction,
//!   shortest form; `QueryResource`: the browser's method, query string and body passed
//!   through), `resource/resource.go`, `models/query.go` (`calculatePrometheusInterval`,
//!   `calculateRateInterval`: `max(interval + scrape interval, 4 × scrape interval)` with
//!   the default scrape interval 15 s, `interpolateVariables`: `$__interval` as
//!   `gtime.FormatInterval` (`1m`), `$__rate_interval` as Go's `Duration.String` (`1m0s`,
//!   `1m15s`), `AlignTimeRange`: start and end rounded down to a multiple of the step),
//!   `intervalv2/intervalv2.go` (`Calculate`, `CalculateSafeInterval` with 11,000 points)
//!   and the SDK's `gtime.RoundInterval` table;
//! - frontend (`packages/grafana-prometheus/src`): `datasource.ts` (`init`: `loadRules`,
//!   `areExemplarsAvailable`; `metadataRequest`: the configured method for
//!   `api/v1/query`, `api/v1/query_range`, `api/v1/series`, `api/v1/labels`, GET for the
//!   rest, a POST answered 400 or 405 retried as GET; `_request`: a GET's parameters as
//!   `encodeURIComponent` pairs, a POST's as a form body), `language_provider.ts`
//!   (`start`: metric names, then metadata and label names; `fetchLabelValues`,
//!   `fetchLabels`, `fetchSeriesLabels` with `limit=40000`, `fetchSeries`),
//!   `language_utils.ts` (`getRangeSnapInterval`: start down and end up to the minute for
//!   the default cache level; `getPrometheusTime`: seconds rounded up),
//!   `components/PromQueryField.tsx`, `components/PrometheusMetricsBrowser.tsx`
//!   (`buildSelector`, facetting through `/api/v1/series`, "Validate selector", "Use
//!   query", "Use as rate query"), `metric_find_query.ts` (`label_values(metric, label)`),
//!   `configuration/PromSettings.tsx` (a new data source saves `httpMethod: POST`);
//! - Grafana's frontend core: `app/core/utils/explore.ts` (Explore's default range
//!   `now-1h` to `now`), `features/explore/state/utils.ts` (`loadAndInitDatasource` calls
//!   the data source's `init`), `@grafana/runtime` `utils/fetch.ts` (`parseBody`: a POST's
//!   data as `URLSearchParams`), `@grafana/data` `rangeutil.ts` (`calculateInterval`:
//!   range / max data points rounded, at least the scrape interval).
//!
//! # The sequences
//!
//! (a) "Save & test": `POST /api/v1/query` `query=1%2B1&time=4` (an instant query at 4 s
//! after the epoch: the scalar 2), then `GET /api/v1/status/buildinfo`.
//!
//! (b) Explore (range `now-1h` to `now`, browser in UTC): the data source's `init`:
//! `GET /api/v1/rules` and `POST /api/v1/query_exemplars` `query=test&start=<ms>&end=<ms>`
//! (both optional: Grafana swallows their errors); the code editor's language provider:
//! `GET /api/v1/label/__name__/values?start&end` (the range snapped to the minute), then
//! `GET /api/v1/metadata` and `POST /api/v1/labels` `start&end`; the metrics browser: the
//! same three again and the metric names once more; a metric picked: `POST /api/v1/series`
//! `start&end&match[]=http_requests_total{}&limit=40000`; a label picked: `GET
//! /api/v1/label/job/values?start&end`; a value picked: the series again with
//! `match[]=http_requests_total{job="api"}`; "Validate selector": the series with the
//! range unsnapped and no limit; "Use query", then "Use as rate query": Explore's query
//! type "Both", `POST /api/v1/query_range` (step 15 s, start and end on the step) and `POST
//! /api/v1/query` (`time` with milliseconds) of `http_requests_total{job="api"}`, then of
//! `rate(http_requests_total{job="api"}[1m0s])`; a query typed wrong: 400 `bad_data`.
//!
//! (c) A dashboard over the last 24 hours: the variable `label_values(http_requests_total,
//! job)`: `GET /api/v1/label/job/values?match[]=http_requests_total&start&end`; a time series
//! panel 1,440 pixels wide (1,440 points, interval 1m) with the queries
//! `sum by (job) (rate(http_requests_total[$__rate_interval]))` and
//! `avg_over_time(node_temperature_celsius[$__interval])`: `POST /api/v1/query_range` with
//! `[1m15s]` and `[1m]`, step 60, start and end on the minute.
//!
//! With the method GET, every POST above is a GET with the same parameters in the query
//! string. The browser's cache answers repeated GETs within a minute (metadata within a
//! day), so a real Grafana may send fewer of the repeated requests: all are sent here.
//!
//! No sample lies on the edge of a range selector's window (samples at 7 s past each 15 s,
//! windows ending on whole steps or on a time with milliseconds), so Prometheus 2's closed
//! windows and Prometheus 3's left-open ones give the same answers here; counters start far
//! from zero, so the zero point of `rate`'s extrapolation never applies.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{DevCluster, TOKEN};
use raftmetrics_server::decode::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `User-Agent` of Grafana's data source HTTP client.
const USER_AGENT: &str = "Grafana/11.5.0";
/// The data source's scrape interval (`timeInterval`), unset: Grafana's default.
const SCRAPE_MS: i64 = 15_000;
/// Prometheus' lookback delta for instant selectors.
const LOOKBACK_MS: i64 = 300_000;
/// Explore's graph width in pixels: its queries' max data points.
const EXPLORE_WIDTH: i64 = 1_240;
/// The dashboard panel's width in pixels: its queries' max data points.
const PANEL_WIDTH: i64 = 1_440;
/// `DEFAULT_SERIES_LIMIT` of the metrics browser.
const SERIES_LIMIT: &str = "40000";
/// How long one answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

type Labels = BTreeMap<String, String>;
/// Series of a range query: labels to `(time in ms, value)` pairs.
type Matrix = BTreeMap<Labels, Vec<(i64, f64)>>;
/// Series of an instant query: labels to `(time in ms, value)`.
type Vector = BTreeMap<Labels, (i64, f64)>;

// ---------------------------------------------------------------------------------------
// The data written.

/// One series: its labels (`__name__` included) and samples (ms, value), in time order.
struct Series {
    labels: Labels,
    samples: Vec<(i64, f64)>,
}

impl Series {
    fn name(&self) -> &str {
        &self.labels["__name__"]
    }

    fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    /// Its labels without `__name__`: what functions and aggregations keep.
    fn without_name(&self) -> Labels {
        let mut labels = self.labels.clone();
        labels.remove("__name__");
        labels
    }
}

/// What the tests write, and the "now" Grafana's requests are made at.
struct Dataset {
    /// Grafana's clock: a whole second and 457 ms.
    now_ms: i64,
    series: Vec<Series>,
}

impl Dataset {
    /// Two hours of 15 s scrapes ending 20 to 35 s before `now_ms`: samples at 7 s past each
    /// 15 s of the clock, so that no window of the queries here starts or ends on one.
    fn new(now_ms: i64) -> Dataset {
        let now_s = now_ms.div_euclid(1000);
        let grid = now_s.div_euclid(60) * 60 - 7_200;
        let last = (now_s - 20 - grid - 7).div_euclid(15);
        let reset = last / 2;
        let time = |k: i64| (grid + 7 + 15 * k) * 1000;
        let make = |labels: &[(&str, &str)], value: &dyn Fn(i64) -> f64| Series {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            samples: (0..=last).map(|k| (time(k), value(k))).collect(),
        };
        let series = vec![
            // A counter that restarts halfway (from 300: far from zero, see the module doc).
            make(
                &[
                    ("__name__", "http_requests_total"),
                    ("instance", "api-1:8080"),
                    ("job", "api"),
                ],
                &|k| {
                    let base = if k < reset {
                        1000 + 4 * k
                    } else {
                        300 + 4 * (k - reset)
                    };
                    (base + k % 3) as f64
                },
            ),
            make(
                &[
                    ("__name__", "http_requests_total"),
                    ("instance", "api-2:8080"),
                    ("job", "api"),
                ],
                &|k| 500.0 + 2.5 * k as f64,
            ),
            make(
                &[
                    ("__name__", "http_requests_total"),
                    ("instance", "web-1:8080"),
                    ("job", "web"),
                ],
                &|k| 20.0 + 0.5 * k as f64,
            ),
            make(
                &[
                    ("__name__", "node_temperature_celsius"),
                    ("instance", "api-1:8080"),
                    ("job", "node"),
                    ("sensor", "cpu"),
                ],
                &|k| 40.0 + 0.25 * (k % 8) as f64,
            ),
            // A recording rule's output: a name with colons.
            make(
                &[("__name__", "job:http_requests_total:sum"), ("job", "api")],
                &|k| 1500.0 + 6.5 * k as f64,
            ),
        ];
        Dataset { now_ms, series }
    }

    /// The remote write request of every sample.
    fn write_request(&self) -> WriteRequest {
        WriteRequest {
            timeseries: self
                .series
                .iter()
                .map(|s| TimeSeries {
                    labels: s
                        .labels
                        .iter()
                        .map(|(name, value)| Label {
                            name: name.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                    samples: s
                        .samples
                        .iter()
                        .map(|&(timestamp, value)| Sample { value, timestamp })
                        .collect(),
                    ..TimeSeries::default()
                })
                .collect(),
            ..WriteRequest::default()
        }
    }

    fn metric_names(&self) -> Vec<String> {
        self.values_of("__name__", |_| true)
    }

    fn label_names(&self) -> Vec<String> {
        let names: BTreeSet<&String> = self.series.iter().flat_map(|s| s.labels.keys()).collect();
        names.into_iter().cloned().collect()
    }

    /// The sorted values of `label` over the series `keep` accepts.
    fn values_of(&self, label: &str, keep: impl Fn(&Series) -> bool) -> Vec<String> {
        let values: BTreeSet<&str> = self
            .series
            .iter()
            .filter(|s| keep(s))
            .filter_map(|s| s.label(label))
            .collect();
        values.into_iter().map(str::to_string).collect()
    }

    fn label_sets(&self, keep: impl Fn(&Series) -> bool) -> BTreeSet<Labels> {
        self.series
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.labels.clone())
            .collect()
    }

    fn matching(&self, keep: impl Fn(&Series) -> bool) -> Vec<&Series> {
        self.series.iter().filter(|s| keep(s)).collect()
    }
}

fn requests_of_job(job: &'static str) -> impl Fn(&Series) -> bool {
    move |s| s.name() == "http_requests_total" && s.label("job") == Some(job)
}

fn named(name: &'static str) -> impl Fn(&Series) -> bool {
    move |s| s.name() == name
}

/// Writes `data` to `url` by remote write, as Prometheus does.
async fn remote_write(http: &reqwest::Client, url: &str, data: &Dataset) {
    let resp = http
        .post(url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(remote_write::encode(&data.write_request()))
        .send()
        .await
        .expect("remote write");
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(
        status, 204,
        "remote write to {url} answered {status}: {body}"
    );
}

/// Writes `data` to the control node of `c`.
async fn load(c: &DevCluster, data: &Dataset) {
    remote_write(&c.http, &c.url("/api/v1/write"), data).await;
}

/// Grafana's "now": this second and 457 ms, so that instant queries carry milliseconds.
fn grafana_now_ms() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    ms.div_euclid(1000) * 1000 + 457
}

// ---------------------------------------------------------------------------------------
// Prometheus' answers, computed from the samples.

/// The samples of the window `(end - range, end]` of a range selector. No sample lies on
/// its start, where Prometheus 2 (closed) and 3 (left-open) differ.
fn window(samples: &[(i64, f64)], end_ms: i64, range_ms: i64) -> Vec<(i64, f64)> {
    let start = end_ms - range_ms;
    assert!(
        samples.iter().all(|&(t, _)| t != start),
        "a sample on the start of a window: the data is not as the module doc says"
    );
    samples
        .iter()
        .filter(|&&(t, _)| t > start && t <= end_ms)
        .copied()
        .collect()
}

/// `rate(x[range])` at `end_ms`: Prometheus' `extrapolatedRate` for a counter.
fn rate(samples: &[(i64, f64)], end_ms: i64, range_ms: i64) -> Option<f64> {
    let w = window(samples, end_ms, range_ms);
    if w.len() < 2 {
        return None;
    }
    let (first_t, first_v) = w[0];
    let (last_t, last_v) = w[w.len() - 1];
    // The increase, counter resets added back.
    let mut result = last_v - first_v;
    for pair in w.windows(2) {
        if pair[1].1 < pair[0].1 {
            result += pair[0].1;
        }
    }
    let mut to_start = (first_t - (end_ms - range_ms)) as f64 / 1000.0;
    let mut to_end = (end_ms - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let average = sampled / (w.len() - 1) as f64;
    let threshold = average * 1.1;
    if to_start >= threshold {
        to_start = average / 2.0;
    }
    if result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        assert!(
            to_zero >= to_start,
            "a counter close to zero: the data is not as the module doc says"
        );
    }
    if to_end >= threshold {
        to_end = average / 2.0;
    }
    let factor = (sampled + to_start + to_end) / sampled / (range_ms as f64 / 1000.0);
    Some(result * factor)
}

/// `avg_over_time(x[range])` at `end_ms`.
fn avg_over_time(samples: &[(i64, f64)], end_ms: i64, range_ms: i64) -> Option<f64> {
    let w = window(samples, end_ms, range_ms);
    (!w.is_empty()).then(|| w.iter().map(|&(_, v)| v).sum::<f64>() / w.len() as f64)
}

/// An instant selector at `t_ms`: the latest sample of the lookback window.
fn latest(samples: &[(i64, f64)], t_ms: i64) -> Option<f64> {
    window(samples, t_ms, LOOKBACK_MS).last().map(|&(_, v)| v)
}

/// A range query: `at` evaluated at every step from `start_ms` to `end_ms`; a series has
/// the steps where it has a value.
fn evaluate(
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    at: impl Fn(i64) -> Vec<(Labels, f64)>,
) -> Matrix {
    let mut matrix = Matrix::new();
    let mut t = start_ms;
    while t <= end_ms {
        for (labels, value) in at(t) {
            matrix.entry(labels).or_default().push((t, value));
        }
        t += step_ms;
    }
    matrix
}

/// `sum by (label)` of `values`.
fn sum_by(label: &str, values: Vec<(Labels, f64)>) -> Vec<(Labels, f64)> {
    let mut groups: BTreeMap<Labels, f64> = BTreeMap::new();
    for (labels, value) in values {
        let key: Labels = labels
            .get(label)
            .map(|v| (label.to_string(), v.clone()))
            .into_iter()
            .collect();
        *groups.entry(key).or_default() += value;
    }
    groups.into_iter().collect()
}

// ---------------------------------------------------------------------------------------
// Grafana's arithmetic of times, intervals and steps.

/// A dashboard's or Explore's time range, in ms.
#[derive(Clone, Copy, Debug)]
struct TimeRange {
    from_ms: i64,
    to_ms: i64,
}

fn ceil_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0)
}

/// `getPrometheusTime`: seconds, rounded up.
fn prometheus_time(ms: i64) -> i64 {
    ceil_div(ms, 1000)
}

impl TimeRange {
    fn last(ms: i64, now_ms: i64) -> TimeRange {
        TimeRange {
            from_ms: now_ms - ms,
            to_ms: now_ms,
        }
    }

    /// `getTimeRangeParams`: `start` and `end` in seconds.
    fn params(self) -> [(&'static str, String); 2] {
        [
            ("start", prometheus_time(self.from_ms).to_string()),
            ("end", prometheus_time(self.to_ms).to_string()),
        ]
    }

    /// `getAdjustedInterval` with the default cache level (Low: one minute): the start
    /// rounded down to the minute, the end up.
    fn snapped(self) -> [(&'static str, String); 2] {
        let start = prometheus_time(self.from_ms).div_euclid(60) * 60;
        let mut end = ceil_div(prometheus_time(self.to_ms), 60) * 60;
        if start == end {
            end += 60;
        }
        [("start", start.to_string()), ("end", end.to_string())]
    }
}

/// `roundInterval` (the frontend's `rangeutil` and the backend's `gtime.RoundInterval`
/// share the table): the interval in ms Grafana uses for `ms`.
fn round_interval(ms: f64) -> i64 {
    const TABLE: [(f64, i64); 28] = [
        (10.0, 1),
        (15.0, 10),
        (35.0, 20),
        (75.0, 50),
        (150.0, 100),
        (350.0, 200),
        (750.0, 500),
        (1_500.0, 1_000),
        (3_500.0, 2_000),
        (7_500.0, 5_000),
        (12_500.0, 10_000),
        (17_500.0, 15_000),
        (25_000.0, 20_000),
        (45_000.0, 30_000),
        (90_000.0, 60_000),
        (210_000.0, 120_000),
        (450_000.0, 300_000),
        (750_000.0, 600_000),
        (1_050_000.0, 900_000),
        (1_500_000.0, 1_200_000),
        (2_700_000.0, 1_800_000),
        (5_400_000.0, 3_600_000),
        (9_000_000.0, 7_200_000),
        (16_200_000.0, 10_800_000),
        (32_400_000.0, 21_600_000),
        (86_400_000.0, 43_200_000),
        (172_800_000.0, 86_400_000),
        (604_800_000.0, 86_400_000),
    ];
    TABLE
        .iter()
        .find(|&&(upper, _)| ms <= upper)
        .map(|&(_, interval)| interval)
        .unwrap_or(604_800_000)
}

/// A query of a panel or of Explore as Grafana's backend receives it: the expression with
/// its variables, the range and the max data points.
struct PanelQuery {
    expr: &'static str,
    range: TimeRange,
    max_data_points: i64,
}

impl PanelQuery {
    /// The frontend's `intervalMs` (`rangeUtil.calculateInterval` with the data source's
    /// scrape interval as the lower limit).
    fn interval_ms(&self) -> i64 {
        let raw = (self.range.to_ms - self.range.from_ms) as f64 / self.max_data_points as f64;
        round_interval(raw).max(SCRAPE_MS)
    }

    /// The backend's step (`calculatePrometheusInterval`, the query's min step unset).
    fn step_ms(&self) -> i64 {
        let span = self.range.to_ms - self.range.from_ms;
        let min = self.interval_ms();
        let raw = span / self.max_data_points;
        let calculated = if raw < min {
            min
        } else {
            round_interval(raw as f64)
        };
        let safe = round_interval(span as f64 / 11_000.0);
        calculated.max(safe)
    }

    /// `$__rate_interval`: `max(intervalMs + scrape interval, 4 × scrape interval)`.
    fn rate_interval_ms(&self) -> i64 {
        (self.interval_ms() + SCRAPE_MS).max(4 * SCRAPE_MS)
    }

    /// The expression Prometheus receives (`interpolateVariables`).
    fn expr(&self) -> String {
        self.expr
            .replace(
                "$__rate_interval",
                &go_duration_string(self.rate_interval_ms()),
            )
            .replace("$__interval", &format_interval(self.step_ms()))
    }

    /// The range's start and end rounded down to the step (`AlignTimeRange`, UTC).
    fn aligned(&self) -> (i64, i64) {
        let step = self.step_ms();
        (
            self.range.from_ms.div_euclid(step) * step,
            self.range.to_ms.div_euclid(step) * step,
        )
    }

    /// `QueryRange`: `query`, `start`, `end`, `step`.
    fn range_request(&self, method: HttpMethod) -> Request {
        let (start, end) = self.aligned();
        Request::backend(
            method,
            "/api/v1/query_range",
            &[
                ("query", self.expr()),
                ("start", go_format_time(start)),
                ("end", go_format_time(end)),
                ("step", format!("{}", self.step_ms() as f64 / 1000.0)),
            ],
        )
    }

    /// `QueryInstant`: `query` at the end of the range, unaligned.
    fn instant_request(&self, method: HttpMethod) -> Request {
        Request::backend(
            method,
            "/api/v1/query",
            &[
                ("query", self.expr()),
                ("time", go_format_time(self.range.to_ms)),
            ],
        )
    }
}

/// Go's `time.Duration.String` of a whole number of seconds (`1m0s`, `1m15s`).
fn go_duration_string(ms: i64) -> String {
    assert_eq!(ms % 1000, 0, "whole seconds only");
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60),
    }
}

/// `gtime.FormatInterval`: the largest whole unit (`15s`, `1m`, `2h`).
fn format_interval(ms: i64) -> String {
    const UNITS: [(i64, &str); 6] = [
        (31_536_000_000, "y"),
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    UNITS
        .iter()
        .find(|&&(unit, _)| ms >= unit)
        .map(|&(unit, name)| format!("{}{name}", ms / unit))
        .unwrap_or_else(|| "1ms".to_string())
}

/// The backend's `formatTime`: Unix seconds with their fraction, in the shortest form
/// (`4`, `1736000000`, `1736000000.457`).
fn go_format_time(ms: i64) -> String {
    let seconds = ms.div_euclid(1000) as f64 + (ms.rem_euclid(1000) * 1_000_000) as f64 / 1e9;
    format!("{seconds}")
}

// ---------------------------------------------------------------------------------------
// Encodings: Go's `url.Values.Encode`, the browser's `URLSearchParams` and
// `encodeURIComponent`.

fn escape(s: &str, keep: impl Fn(u8) -> bool, space_as_plus: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || keep(b) {
            out.push(b as char);
        } else if b == b' ' && space_as_plus {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Go's `url.QueryEscape`.
fn go_query_escape(s: &str) -> String {
    escape(s, |b| matches!(b, b'-' | b'_' | b'.' | b'~'), true)
}

/// The `application/x-www-form-urlencoded` serializer of `URLSearchParams`.
fn form_escape(s: &str) -> String {
    escape(s, |b| matches!(b, b'*' | b'-' | b'.' | b'_'), true)
}

/// JavaScript's `encodeURIComponent`.
fn uri_component(s: &str) -> String {
    escape(
        s,
        |b| {
            matches!(
                b,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            )
        },
        false,
    )
}

fn join(params: &[(&str, String)], escape: impl Fn(&str) -> String) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `url.Values.Encode`: sorted by key.
fn go_values_encode(params: &[(&str, String)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    join(&sorted, go_query_escape)
}

// ---------------------------------------------------------------------------------------
// Requests, as Grafana's Go HTTP client writes them.

/// The data source's configured HTTP method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HttpMethod {
    Get,
    Post,
}

struct Request {
    method: &'static str,
    /// Path and query string.
    target: String,
    /// A form body (POST).
    body: Option<String>,
}

impl Request {
    fn get(path: &str, query: &str) -> Request {
        let target = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        Request {
            method: "GET",
            target,
            body: None,
        }
    }

    fn post(path: &str, body: String) -> Request {
        Request {
            method: "POST",
            target: path.to_string(),
            body: Some(body),
        }
    }

    /// A query of the data source's backend (`createQueryRequest`): sorted parameters in
    /// a form body (POST) or in the query string (GET).
    fn backend(method: HttpMethod, path: &str, params: &[(&str, String)]) -> Request {
        let encoded = go_values_encode(params);
        match method {
            HttpMethod::Post => Request::post(path, encoded),
            HttpMethod::Get => Request::get(path, &encoded),
        }
    }

    /// `metadataRequest` of an endpoint that takes both methods (`/api/v1/series`,
    /// `/api/v1/query_exemplars`): the configured method; a POST's parameters as a
    /// `URLSearchParams` body, a GET's as `encodeURIComponent` pairs.
    fn frontend(method: HttpMethod, path: &str, params: &[(&str, String)]) -> Request {
        match method {
            HttpMethod::Post => Request::post(path, join(params, form_escape)),
            HttpMethod::Get => Request::frontend_get(path, params),
        }
    }

    /// `metadataRequest` of a GET-only endpoint (label values, metadata, rules), or the
    /// GET retry of a POST refused with 400 or 405.
    fn frontend_get(path: &str, params: &[(&str, String)]) -> Request {
        Request::get(path, &join(params, uri_component))
    }

    /// `fetchLabels`: its parameters are a `URLSearchParams`, the query string of a GET
    /// or the body of a POST.
    fn labels(method: HttpMethod, params: &[(&str, String)]) -> Request {
        let encoded = join(params, form_escape);
        match method {
            HttpMethod::Post => Request::post("/api/v1/labels", encoded),
            HttpMethod::Get => Request::get("/api/v1/labels", &encoded),
        }
    }

    /// The bytes Go's `net/http` writes: `Host`, `User-Agent`, `Content-Length` for a body,
    /// the other headers sorted, then the transport's `Accept-Encoding: gzip`.
    fn bytes(&self, host: &str) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n",
            self.method, self.target
        );
        if let Some(body) = &self.body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str(&format!("Authorization: Bearer {TOKEN}\r\n"));
        if self.body.is_some() {
            head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        head.push_str("Accept-Encoding: gzip\r\n\r\n");
        let mut bytes = head.into_bytes();
        if let Some(body) = &self.body {
            bytes.extend_from_slice(body.as_bytes());
        }
        bytes
    }

    fn describe(&self) -> String {
        match &self.body {
            Some(body) => format!("{} {} [{body}]", self.method, self.target),
            None => format!("{} {}", self.method, self.target),
        }
    }
}

/// An HTTP answer, its body un-gzipped.
struct Answer {
    /// The step and request, for messages.
    what: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{}: the body is not JSON ({e}): {}", self.what, self.text())
        })
    }

    fn json_content_type(&self) {
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "{}: Content-Type {content_type:?}",
            self.what
        );
    }

    /// A 200 in Prometheus' success envelope: its `data`.
    fn success(&self) -> Value {
        assert_eq!(
            self.status,
            200,
            "{}: status {}: {}",
            self.what,
            self.status,
            self.text()
        );
        self.json_content_type();
        let doc = self.json();
        assert_eq!(doc["status"], "success", "{}: {doc}", self.what);
        for optional in ["warnings", "infos"] {
            if let Some(notes) = doc.get(optional) {
                assert!(
                    notes
                        .as_array()
                        .is_some_and(|a| a.iter().all(Value::is_string)),
                    "{}: {optional} is not a list of strings: {doc}",
                    self.what
                );
            }
        }
        assert!(doc.get("data").is_some(), "{}: no data: {doc}", self.what);
        doc["data"].clone()
    }

    /// An error in Prometheus' shape, as Grafana shows it: `status`, `errorType`, `error`.
    fn prometheus_error(&self, status: u16, error_type: &str) {
        assert_eq!(
            self.status,
            status,
            "{}: status {}: {}",
            self.what,
            self.status,
            self.text()
        );
        self.json_content_type();
        let doc = self.json();
        assert_eq!(doc["status"], "error", "{}: {doc}", self.what);
        assert_eq!(doc["errorType"], error_type, "{}: {doc}", self.what);
        assert!(
            doc["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}: no error message: {doc}",
            self.what
        );
    }

    /// An endpoint Grafana tries and does without: a success whose `data` `shape` accepts,
    /// or a client error Grafana swallows (anything but a refused token or a server error).
    fn optional(&self, shape: impl Fn(&Value) -> bool) {
        eprintln!("{}: answered {} (optional)", self.what, self.status);
        if self.status == 200 {
            let data = self.success();
            assert!(
                shape(&data),
                "{}: data of an unexpected shape: {data}",
                self.what
            );
        } else {
            assert!(
                (400..500).contains(&self.status) && ![401, 403, 429].contains(&self.status),
                "{}: status {}: {}",
                self.what,
                self.status,
                self.text()
            );
        }
    }
}

/// The answer's end was not found before the connection closed: `true` when nothing of an
/// answer had arrived (a kept-alive connection the server had closed: send again).
type ReadError = (bool, String);

/// One HTTP/1.1 connection, kept alive across requests like Go's transport does.
struct Wire {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Wire {
    async fn exchange(&mut self, request: &[u8]) -> Result<Answer, String> {
        for attempt in 0..2 {
            let reused = self.stream.is_some();
            if self.stream.is_none() {
                let stream = TcpStream::connect(&self.addr)
                    .await
                    .map_err(|e| format!("connect to {}: {e}", self.addr))?;
                stream.set_nodelay(true).ok();
                self.stream = Some(stream);
                self.buf.clear();
            }
            let stream = self.stream.as_mut().expect("connected");
            if let Err(e) = stream.write_all(request).await {
                self.stream = None;
                if reused && attempt == 0 {
                    continue;
                }
                return Err(format!("write: {e}"));
            }
            match self.read_answer().await {
                Ok((answer, keep_alive)) => {
                    if !keep_alive {
                        self.stream = None;
                    }
                    return Ok(answer);
                }
                Err((nothing, _)) if nothing && reused && attempt == 0 => {
                    self.stream = None;
                }
                Err((_, e)) => {
                    self.stream = None;
                    return Err(e);
                }
            }
        }
        Err("the connection closed twice before an answer".into())
    }

    /// Reads more bytes; `Ok(0)` at the end of the stream.
    async fn fill(&mut self) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * 1024];
        let stream = self.stream.as_mut().expect("connected");
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Makes sure `n` bytes are buffered.
    async fn need(&mut self, n: usize) -> Result<(), ReadError> {
        while self.buf.len() < n {
            if self.fill().await.map_err(|e| (false, e))? == 0 {
                return Err((false, "the connection closed inside an answer".into()));
            }
        }
        Ok(())
    }

    /// One CRLF-terminated line, taken from the buffer.
    async fn line(&mut self) -> Result<String, ReadError> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill().await.map_err(|e| (false, e))? == 0 {
                return Err((false, "the connection closed inside an answer".into()));
            }
        }
    }

    /// An answer and whether the connection stays open.
    async fn read_answer(&mut self) -> Result<(Answer, bool), ReadError> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match self.fill().await {
                Ok(0) => {
                    return Err((
                        self.buf.is_empty(),
                        "the connection closed before an answer".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err((self.buf.is_empty(), e)),
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| (false, format!("a bad status line: {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        let mut keep_alive =
            version == "HTTP/1.1" && !header("connection").is_some_and(|c| c.contains("close"));
        let body = if status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let size_line = self.line().await?;
                let size_text = size_line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| (false, format!("a bad chunk size: {size_line:?}")))?;
                if size == 0 {
                    while !self.line().await?.is_empty() {}
                    break;
                }
                self.need(size + 2).await?;
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
            body
        } else if let Some(length) = header("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| (false, format!("a bad Content-Length: {length:?}")))?;
            self.need(length).await?;
            self.buf.drain(..length).collect()
        } else {
            keep_alive = false;
            while self.fill().await.map_err(|e| (false, e))? > 0 {}
            std::mem::take(&mut self.buf)
        };
        let body = if header("content-encoding").is_some_and(|e| e.contains("gzip")) {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .map_err(|e| (false, format!("a bad gzip body: {e}")))?;
            plain
        } else {
            body
        };
        let answer = Answer {
            what: String::new(),
            status,
            headers,
            body,
        };
        Ok((answer, keep_alive))
    }
}

/// Grafana's HTTP client for one data source: one connection, the configured method.
struct Grafana {
    method: HttpMethod,
    host: String,
    wire: Wire,
}

impl Grafana {
    /// A data source whose URL is `http://127.0.0.1:{port}`.
    fn new(port: u16, method: HttpMethod) -> Grafana {
        let host = format!("127.0.0.1:{port}");
        Grafana {
            method,
            wire: Wire {
                addr: host.clone(),
                stream: None,
                buf: Vec::new(),
            },
            host,
        }
    }

    async fn send(&mut self, step: &str, request: Request) -> Answer {
        let what = format!(
            "[httpMethod {:?}] {step}: {}",
            self.method,
            request.describe()
        );
        eprintln!("{what}");
        let bytes = request.bytes(&self.host);
        let mut answer = tokio::time::timeout(ANSWER_TIMEOUT, self.wire.exchange(&bytes))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {ANSWER_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        answer.what = what;
        answer
    }

    /// A request of the browser through `metadataRequest`: a POST refused with 400 or 405
    /// is sent again as a GET, as the data source does.
    async fn send_with_get_retry(
        &mut self,
        step: &str,
        path: &str,
        params: &[(&str, String)],
    ) -> Answer {
        let answer = self
            .send(step, Request::frontend(self.method, path, params))
            .await;
        if self.method == HttpMethod::Post && matches!(answer.status, 400 | 405) {
            return self.send(step, Request::frontend_get(path, params)).await;
        }
        answer
    }
}

// ---------------------------------------------------------------------------------------
// Reading answers as Grafana does.

fn strings(data: &Value, what: &str) -> Vec<String> {
    data.as_array()
        .unwrap_or_else(|| panic!("{what}: data is not a list: {data}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{what}: not a string: {v}"))
                .to_string()
        })
        .collect()
}

fn labels_of(metric: &Value, what: &str) -> Labels {
    metric
        .as_object()
        .unwrap_or_else(|| panic!("{what}: labels are not an object: {metric}"))
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("{what}: label value not a string: {metric}"));
            (k.clone(), v.to_string())
        })
        .collect()
}

/// `/api/v1/series`: a list of label sets.
fn series_of(data: &Value, what: &str) -> BTreeSet<Labels> {
    let list = data
        .as_array()
        .unwrap_or_else(|| panic!("{what}: data is not a list: {data}"));
    let sets: BTreeSet<Labels> = list.iter().map(|m| labels_of(m, what)).collect();
    assert_eq!(sets.len(), list.len(), "{what}: a series twice: {data}");
    sets
}

/// `[<time: number>, "<value: string>"]`: time in ms, value.
fn sample_pair(pair: &Value, what: &str) -> (i64, f64) {
    let (t, v) = match pair.as_array().map(Vec::as_slice) {
        Some([t, v]) if t.is_number() && v.is_string() => (t.as_f64(), v.as_str()),
        _ => panic!("{what}: not a [<number>, \"<string>\"] pair: {pair}"),
    };
    let (Some(t), Some(v)) = (t, v) else {
        unreachable!("checked above")
    };
    let v: f64 = v
        .parse()
        .unwrap_or_else(|_| panic!("{what}: value {v:?} is not a number"));
    ((t * 1000.0).round() as i64, v)
}

fn result_of<'a>(data: &'a Value, result_type: &str, what: &str) -> &'a Vec<Value> {
    assert_eq!(data["resultType"], result_type, "{what}: {data}");
    data["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: result is not a list: {data}"))
}

fn matrix_of(data: &Value, what: &str) -> Matrix {
    let mut matrix = Matrix::new();
    for series in result_of(data, "matrix", what) {
        let labels = labels_of(&series["metric"], what);
        let values = series["values"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no values: {series}"))
            .iter()
            .map(|p| sample_pair(p, what))
            .collect();
        assert!(
            matrix.insert(labels, values).is_none(),
            "{what}: a series twice: {data}"
        );
    }
    matrix
}

fn vector_of(data: &Value, what: &str) -> Vector {
    let mut vector = Vector::new();
    for sample in result_of(data, "vector", what) {
        let labels = labels_of(&sample["metric"], what);
        let value = sample_pair(&sample["value"], what);
        assert!(
            vector.insert(labels, value).is_none(),
            "{what}: a series twice: {data}"
        );
    }
    vector
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn assert_matrix(what: &str, got: &Matrix, want: &Matrix) {
    assert!(
        !want.is_empty(),
        "{what}: nothing expected: the test data is wrong"
    );
    let got_keys: Vec<&Labels> = got.keys().collect();
    let want_keys: Vec<&Labels> = want.keys().collect();
    assert_eq!(got_keys, want_keys, "{what}: the series");
    for (labels, want_values) in want {
        let got_values = &got[labels];
        let got_times: Vec<i64> = got_values.iter().map(|p| p.0).collect();
        let want_times: Vec<i64> = want_values.iter().map(|p| p.0).collect();
        assert_eq!(got_times, want_times, "{what}: the steps of {labels:?}");
        for (&(t, g), &(_, w)) in got_values.iter().zip(want_values) {
            assert!(
                close(g, w),
                "{what}: {labels:?} at {t} ms is {g}, Prometheus answers {w}"
            );
        }
    }
}

fn assert_vector(what: &str, got: &Vector, want: &Vector) {
    assert!(
        !want.is_empty(),
        "{what}: nothing expected: the test data is wrong"
    );
    let got_keys: Vec<&Labels> = got.keys().collect();
    let want_keys: Vec<&Labels> = want.keys().collect();
    assert_eq!(got_keys, want_keys, "{what}: the series");
    for (labels, &(t, w)) in want {
        let (got_t, g) = got[labels];
        assert_eq!(got_t, t, "{what}: the time of {labels:?}");
        assert!(
            close(g, w),
            "{what}: {labels:?} is {g}, Prometheus answers {w}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The sequences.

/// (a) "Save & test": the backend's health check, then its heuristics.
async fn save_and_test(g: &mut Grafana) {
    let check = Request::backend(
        g.method,
        "/api/v1/query",
        &[
            ("query", "1+1".to_string()),
            ("time", go_format_time(4_000)),
        ],
    );
    match g.method {
        HttpMethod::Post => assert_eq!(check.body.as_deref(), Some("query=1%2B1&time=4")),
        HttpMethod::Get => assert_eq!(check.target, "/api/v1/query?query=1%2B1&time=4"),
    }
    let answer = g.send("health check: 1+1 at 4 s", check).await;
    let data = answer.success();
    assert_eq!(data["resultType"], "scalar", "{}: {data}", answer.what);
    let (t, v) = sample_pair(&data["result"], &answer.what);
    assert_eq!((t, v), (4_000, 2.0), "{}: {data}", answer.what);

    let answer = g
        .send(
            "heuristics: build information",
            Request::get("/api/v1/status/buildinfo", ""),
        )
        .await;
    let data = answer.success();
    let info = data
        .as_object()
        .unwrap_or_else(|| panic!("{}: data is not an object: {data}", answer.what));
    assert!(
        info.get("version")
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty()),
        "{}: no version: {data}",
        answer.what
    );
    // Grafana reads these into strings: any other type fails the heuristics.
    for field in [
        "version",
        "revision",
        "branch",
        "buildUser",
        "buildDate",
        "goVersion",
    ] {
        if let Some(value) = info.get(field) {
            assert!(
                value.is_string(),
                "{}: {field} is not a string: {data}",
                answer.what
            );
        }
    }
    // Non-empty features make Grafana take the server for Mimir, with a ruler API.
    if let Some(features) = info.get("features") {
        assert!(
            features.as_object().is_some_and(|f| f.is_empty()),
            "{}: features make Grafana take this for Mimir: {data}",
            answer.what
        );
    }
}

/// The language provider's `start`: metric names, then metadata and label names.
async fn language_provider_start(g: &mut Grafana, data: &Dataset, range: TimeRange, who: &str) {
    let snapped = range.snapped();
    let answer = g
        .send(
            &format!("{who}: metric names"),
            Request::frontend_get("/api/v1/label/__name__/values", &snapped),
        )
        .await;
    assert_eq!(
        strings(&answer.success(), &answer.what),
        data.metric_names(),
        "{}",
        answer.what
    );

    let answer = g
        .send(
            &format!("{who}: metadata"),
            Request::frontend_get("/api/v1/metadata", &[]),
        )
        .await;
    let metadata = answer.success();
    let metrics = metadata
        .as_object()
        .unwrap_or_else(|| panic!("{}: data is not an object: {metadata}", answer.what));
    for (metric, entries) in metrics {
        let entries = entries
            .as_array()
            .unwrap_or_else(|| panic!("{}: {metric}: not a list: {metadata}", answer.what));
        for entry in entries {
            for field in ["type", "help"] {
                assert!(
                    entry[field].is_string(),
                    "{}: {metric}: no {field}: {metadata}",
                    answer.what
                );
            }
        }
    }

    let answer = g
        .send(
            &format!("{who}: label names"),
            Request::labels(g.method, &snapped),
        )
        .await;
    assert_eq!(
        strings(&answer.success(), &answer.what),
        data.label_names(),
        "{}",
        answer.what
    );
}

/// (b) Explore: the data source's `init`, the code editor, the metrics browser, the queries
/// it makes, and a query typed wrong.
async fn explore(g: &mut Grafana, data: &Dataset) {
    let now = data.now_ms;
    let range = TimeRange::last(3_600_000, now);

    // The data source's init: recording rules and exemplars, errors swallowed.
    let answer = g
        .send(
            "init: recording rules",
            Request::frontend_get("/api/v1/rules", &[]),
        )
        .await;
    answer.optional(|d| d["groups"].is_array());
    let exemplars = [
        ("query", "test".to_string()),
        ("start", (now - 1_800_000).to_string()),
        ("end", now.to_string()),
    ];
    let answer = g
        .send_with_get_retry(
            "init: exemplars available?",
            "/api/v1/query_exemplars",
            &exemplars,
        )
        .await;
    answer.optional(Value::is_array);

    // The code editor mounts: the language provider starts.
    language_provider_start(g, data, range, "code editor").await;

    // The metrics browser opens: the language provider starts again, then the metric list.
    language_provider_start(g, data, range, "metrics browser").await;
    let snapped = range.snapped();
    let answer = g
        .send(
            "metrics browser: metric list",
            Request::frontend_get("/api/v1/label/__name__/values", &snapped),
        )
        .await;
    assert_eq!(
        strings(&answer.success(), &answer.what),
        data.metric_names(),
        "{}",
        answer.what
    );

    // A metric picked: the labels of its series (`buildSelector` gives `name{}`).
    let [start, end] = snapped.clone();
    let facet = |selector: &str| {
        [
            start.clone(),
            end.clone(),
            ("match[]", selector.to_string()),
            ("limit", SERIES_LIMIT.to_string()),
        ]
    };
    let answer = g
        .send(
            "metrics browser: metric picked",
            Request::frontend(g.method, "/api/v1/series", &facet("http_requests_total{}")),
        )
        .await;
    assert_eq!(
        series_of(&answer.success(), &answer.what),
        data.label_sets(named("http_requests_total")),
        "{}",
        answer.what
    );

    // A label picked: its values.
    let answer = g
        .send(
            "metrics browser: label picked",
            Request::frontend_get("/api/v1/label/job/values", &snapped),
        )
        .await;
    assert_eq!(
        strings(&answer.success(), &answer.what),
        data.values_of("job", |_| true),
        "{}",
        answer.what
    );

    // A value picked: the series facetted again.
    let selector = r#"http_requests_total{job="api"}"#;
    let answer = g
        .send(
            "metrics browser: value picked",
            Request::frontend(g.method, "/api/v1/series", &facet(selector)),
        )
        .await;
    assert_eq!(
        series_of(&answer.success(), &answer.what),
        data.label_sets(requests_of_job("api")),
        "{}",
        answer.what
    );

    // "Validate selector": the series over the range as it is, without a limit.
    let [start, end] = range.params();
    let answer = g
        .send(
            "metrics browser: validate selector",
            Request::frontend(
                g.method,
                "/api/v1/series",
                &[start, end, ("match[]", selector.to_string())],
            ),
        )
        .await;
    assert_eq!(
        series_of(&answer.success(), &answer.what),
        data.label_sets(requests_of_job("api")),
        "{}",
        answer.what
    );

    // "Use query": Explore's "Both" query type, a range query and an instant query.
    let query = PanelQuery {
        expr: r#"http_requests_total{job="api"}"#,
        range,
        max_data_points: EXPLORE_WIDTH,
    };
    assert_eq!(query.step_ms(), 15_000);
    let (from, to) = query.aligned();
    let api = data.matching(requests_of_job("api"));
    let answer = g
        .send("use query: range", query.range_request(g.method))
        .await;
    let want = evaluate(from, to, query.step_ms(), |t| {
        api.iter()
            .filter_map(|s| latest(&s.samples, t).map(|v| (s.labels.clone(), v)))
            .collect()
    });
    assert_matrix(
        &answer.what,
        &matrix_of(&answer.success(), &answer.what),
        &want,
    );
    let answer = g
        .send("use query: instant", query.instant_request(g.method))
        .await;
    let want: Vector = api
        .iter()
        .filter_map(|s| latest(&s.samples, now).map(|v| (s.labels.clone(), (now, v))))
        .collect();
    assert_vector(
        &answer.what,
        &vector_of(&answer.success(), &answer.what),
        &want,
    );

    // "Use as rate query": `$__rate_interval` is 1m0s at a 15 s interval.
    let query = PanelQuery {
        expr: r#"rate(http_requests_total{job="api"}[$__rate_interval])"#,
        range,
        max_data_points: EXPLORE_WIDTH,
    };
    assert_eq!(
        query.expr(),
        r#"rate(http_requests_total{job="api"}[1m0s])"#
    );
    let window_ms = query.rate_interval_ms();
    let answer = g
        .send("use as rate query: range", query.range_request(g.method))
        .await;
    let want = evaluate(from, to, query.step_ms(), |t| {
        api.iter()
            .filter_map(|s| rate(&s.samples, t, window_ms).map(|v| (s.without_name(), v)))
            .collect()
    });
    assert_matrix(
        &answer.what,
        &matrix_of(&answer.success(), &answer.what),
        &want,
    );
    let answer = g
        .send(
            "use as rate query: instant",
            query.instant_request(g.method),
        )
        .await;
    let want: Vector = api
        .iter()
        .filter_map(|s| rate(&s.samples, now, window_ms).map(|v| (s.without_name(), (now, v))))
        .collect();
    assert_vector(
        &answer.what,
        &vector_of(&answer.success(), &answer.what),
        &want,
    );

    // A query typed without its last parenthesis: Prometheus' 400 `bad_data`.
    let typo = PanelQuery {
        expr: "sum by (job) (rate(http_requests_total[$__rate_interval])",
        range,
        max_data_points: EXPLORE_WIDTH,
    };
    let answer = g
        .send("a query typed wrong", typo.range_request(g.method))
        .await;
    answer.prometheus_error(400, "bad_data");
}

/// (c) A dashboard of the last 24 hours: a variable of label values and a time series
/// panel whose queries use `$__rate_interval` and `$__interval`.
async fn dashboard(g: &mut Grafana, data: &Dataset) {
    let now = data.now_ms;
    let range = TimeRange::last(86_400_000, now);

    // The variable `label_values(http_requests_total, job)`.
    let [start, end] = range.params();
    let answer = g
        .send(
            "variable job",
            Request::frontend_get(
                "/api/v1/label/job/values",
                &[("match[]", "http_requests_total".to_string()), start, end],
            ),
        )
        .await;
    assert_eq!(
        strings(&answer.success(), &answer.what),
        data.values_of("job", named("http_requests_total")),
        "{}",
        answer.what
    );

    // Query A: the interval is 1m (24 h over 1,440 points), `$__rate_interval` 1m15s.
    let a = PanelQuery {
        expr: "sum by (job) (rate(http_requests_total[$__rate_interval]))",
        range,
        max_data_points: PANEL_WIDTH,
    };
    assert_eq!((a.interval_ms(), a.step_ms()), (60_000, 60_000));
    assert_eq!(a.expr(), "sum by (job) (rate(http_requests_total[1m15s]))");
    let (from, to) = a.aligned();
    assert_eq!((from % 60_000, to % 60_000), (0, 0));
    let counters = data.matching(named("http_requests_total"));
    let window_ms = a.rate_interval_ms();
    let answer = g.send("panel query A", a.range_request(g.method)).await;
    let want = evaluate(from, to, a.step_ms(), |t| {
        sum_by(
            "job",
            counters
                .iter()
                .filter_map(|s| rate(&s.samples, t, window_ms).map(|v| (s.labels.clone(), v)))
                .collect(),
        )
    });
    assert_matrix(
        &answer.what,
        &matrix_of(&answer.success(), &answer.what),
        &want,
    );

    // Query B: `$__interval` is the step, 1m.
    let b = PanelQuery {
        expr: "avg_over_time(node_temperature_celsius[$__interval])",
        range,
        max_data_points: PANEL_WIDTH,
    };
    assert_eq!(b.expr(), "avg_over_time(node_temperature_celsius[1m])");
    let gauges = data.matching(named("node_temperature_celsius"));
    let answer = g.send("panel query B", b.range_request(g.method)).await;
    let want = evaluate(from, to, b.step_ms(), |t| {
        gauges
            .iter()
            .filter_map(|s| avg_over_time(&s.samples, t, 60_000).map(|v| (s.without_name(), v)))
            .collect()
    });
    assert_matrix(
        &answer.what,
        &matrix_of(&answer.success(), &answer.what),
        &want,
    );
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn grafana_arithmetic_matches_its_source() {
    assert_eq!(go_format_time(4_000), "4");
    assert_eq!(go_format_time(1_736_000_000_457), "1736000000.457");
    assert_eq!(go_duration_string(60_000), "1m0s");
    assert_eq!(go_duration_string(75_000), "1m15s");
    assert_eq!(format_interval(60_000), "1m");
    assert_eq!(format_interval(15_000), "15s");
    assert_eq!(
        go_values_encode(&[("time", "4".into()), ("query", "1+1".into())]),
        "query=1%2B1&time=4"
    );
    assert_eq!(
        join(&[("match[]", r#"up{job="a b"}"#.into())], form_escape),
        "match%5B%5D=up%7Bjob%3D%22a+b%22%7D"
    );
    assert_eq!(
        join(&[("match[]", r#"up{job="a b"}"#.into())], uri_component),
        "match%5B%5D=up%7Bjob%3D%22a%20b%22%7D"
    );
    // Explore: last hour at 1,240 px is 15 s; the last 24 hours at 1,440 px is 1m.
    let now = 1_736_000_000_457;
    let explore = PanelQuery {
        expr: "$__rate_interval",
        range: TimeRange::last(3_600_000, now),
        max_data_points: EXPLORE_WIDTH,
    };
    assert_eq!((explore.interval_ms(), explore.step_ms()), (15_000, 15_000));
    assert_eq!(explore.expr(), "1m0s");
    let panel = PanelQuery {
        expr: "$__interval $__rate_interval",
        range: TimeRange::last(86_400_000, now),
        max_data_points: PANEL_WIDTH,
    };
    assert_eq!(panel.expr(), "1m 1m15s");
    let snapped = TimeRange::last(3_600_000, now).snapped();
    assert_eq!(snapped[0].1, "1735996380");
    assert_eq!(snapped[1].1, "1736000040");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_save_and_test() {
    let c = DevCluster::start(2, 1, 8, &[]).await;
    for method in [HttpMethod::Post, HttpMethod::Get] {
        save_and_test(&mut Grafana::new(c.port, method)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_explore_and_metrics_browser() {
    let c = DevCluster::start(2, 1, 8, &[]).await;
    let data = Dataset::new(grafana_now_ms());
    load(&c, &data).await;
    for method in [HttpMethod::Post, HttpMethod::Get] {
        explore(&mut Grafana::new(c.port, method), &data).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_panel_with_rate_interval() {
    let c = DevCluster::start(2, 1, 8, &[]).await;
    let data = Dataset::new(grafana_now_ms());
    load(&c, &data).await;
    for method in [HttpMethod::Post, HttpMethod::Get] {
        dashboard(&mut Grafana::new(c.port, method), &data).await;
    }
}

/// A missing Prometheus: a failure under `RAFTMETRICS_REQUIRE_CLIENTS=1`, otherwise a skip
/// that says why.
fn missing_prometheus(why: &str) {
    if std::env::var("RAFTMETRICS_REQUIRE_CLIENTS").as_deref() == Ok("1") {
        panic!("{why} (RAFTMETRICS_REQUIRE_CLIENTS=1: Prometheus must be installed)");
    }
    eprintln!("SKIPPED: {why}; set RAFTMETRICS_REQUIRE_CLIENTS=1 to fail instead");
}

/// No scrapes (nothing but the samples written), and an out-of-order window that takes the
/// two hours of history written series after series.
const PROMETHEUS_CONFIG: &str = "\
global:
  scrape_interval: 15s
storage:
  tsdb:
    out_of_order_time_window: 3h
";

/// The same sequences against Prometheus itself (Debian's 2.42, the version whose
/// semantics the control node follows), loaded with the same samples by remote write: the
/// requests are well formed, Grafana's answers are read as it reads Prometheus', and the
/// values computed here are Prometheus' own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_sequences_hold_against_prometheus_itself() {
    let binary = match common::prometheus::binary() {
        Ok(path) => path,
        Err(why) => return missing_prometheus(&why),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut prometheus = common::prometheus::Prometheus::start(
        &binary,
        dir.path(),
        PROMETHEUS_CONFIG,
        &["--web.enable-remote-write-receiver"],
    )
    .await;
    let data = Dataset::new(grafana_now_ms());
    remote_write(&prometheus.http, &prometheus.url("/api/v1/write"), &data).await;
    for method in [HttpMethod::Post, HttpMethod::Get] {
        save_and_test(&mut Grafana::new(prometheus.port, method)).await;
        explore(&mut Grafana::new(prometheus.port, method), &data).await;
        dashboard(&mut Grafana::new(prometheus.port, method), &data).await;
    }
    prometheus.terminate(Duration::from_secs(10)).await;
}
