//! `promql`: the query set through the Prometheus query API (`/api/v1/query`,
//! `/api/v1/query_range`) beside the same queries through the seed API (`GET /aggregate`),
//! on one cluster holding the dataset, with the answers compared where they mean the same.
//!
//! Each case of `queries.rs` is resolved against the data (see `peers/plan.rs`: fields,
//! exact tag filters, groups, and each bucket's exact `[lo, hi)`) and translated into
//! standard PromQL, the subset the control node evaluates (Prometheus 2.42's semantics, no
//! MetricsQL extensions). The series are the stored ones: metric `usage_user`, the host's
//! tags as labels.
//!
//! Bucket alignment. Prometheus 2's range selector `[r]` evaluated at `t` reads the samples
//! in `[t - r, t]`, both ends included, and evaluation times are milliseconds. The seed
//! API's bucket starting at `b` holds `[b, b + w)`, that is `[b, b + w - 1 ms]` in
//! milliseconds: the window `[w - 1 ms]` shifted by `offset -(w - 1 ms)` and evaluated at
//! `b`. A range query over the whole buckets runs at `start` = the first one's start and
//! `step` = `w`, so its sample times are the buckets' starts. (The `[w] offset -(w - 1 ms)`
//! of VictoriaMetrics' left-open windows would read `[b - 1 ms, b + w - 1 ms]` here, one
//! millisecond too early.) A bucket cut by the query's range (`[lo, hi)` inside it) is an
//! instant query of its own at `hi - 1 ms` over `[hi - lo - 1 ms]`, and a query without
//! buckets one instant query at `to - 1 ms` over `[to - from - 1 ms]`. The requests of one
//! case are sent at once; its time is that of all of them. Each form is timed as the median
//! of `--runs` after a warm-up, the runs of the two forms alternating ([`time_pair`]).
//!
//! Aggregations across series: max and min of the per-series `max_over_time` /
//! `min_over_time`, sum and count as sums of `sum_over_time` / `count_over_time`, avg as
//! their quotient (the mean of all points of a group, whatever its series hold), last as
//! the max of `last_over_time` (the same as the seed API's `last` when a group is one
//! series, as a host's `usage_user` is). Groups are `by (...)`; a group by metric is one
//! request per metric, since a range function drops the metric name. A max above a bound
//! (`value_gt`) is each series' `max_over_time` kept when above it, then the max of those:
//! a series' max above the bound is the max of its points above it, and a series without
//! such a point drops out, as its group does in the seed API.
//!
//! No faithful form: a count of the points above a bound (`high-cpu-all`) filters points
//! before counting them, which PromQL says only with a subquery
//! (`count_over_time((usage_user > 90)[12h:10s])`), not supported here, and which samples
//! at its step instead of reading every point; percentiles over all points of a group
//! (`quantile_over_time` is per series, `quantile by` across series at one instant).
//!
//! And the rate row: `sum by (datacenter) (rate(usage_user[5m]))` over all the data at a
//! step of 5 minutes, beside `/aggregate?metric=usage_user&agg=sum&group_by=datacenter&
//! window=5m` over the same range: both read every point of `usage_user`; the goal is
//! PromQL within 2x of the seed API. Their values differ in meaning (per-second rates
//! against sums of readings), so only their groups and steps are compared.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmetrics_client::{Agg, Client, Format, Query, Timestamp};
use serde_json::Value;

use crate::cluster::{ClusterSpec, LocalCluster};
use crate::error::{BenchError, Result};
use crate::generator::Dataset;
use crate::load::{LoadSpec, Span};
use crate::peers::json_answer;
use crate::peers::plan::{Bucket, Plan, Rows};
use crate::queries::{self, Case, Row};
use crate::report::{Table, millis, ratio, verdict};
use crate::suite;

/// Relative tolerance of every compared value (summation order).
const TOLERANCE: f64 = 1e-9;
/// The rate row's goal: PromQL within this factor of the seed API on the same points.
pub const GOAL_RATIO: f64 = 2.0;
/// The step and rate window of the rate row, milliseconds.
const RATE_STEP_MS: i64 = 5 * 60 * 1000;

/// One HTTP request of a translated case, and where its answer goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `/api/v1/query` or `/api/v1/query_range`.
    pub path: &'static str,
    pub params: Vec<(&'static str, String)>,
    /// The field (metric) the expression reads.
    pub field: String,
    /// Which aggregation of the plan it answers.
    pub agg: usize,
    /// The bucket start (microseconds) of an instant query for one bucket.
    pub bucket: Option<i64>,
}

impl Request {
    /// The PromQL text.
    pub fn query(&self) -> &str {
        self.params
            .iter()
            .find(|(k, _)| *k == "query")
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Milliseconds as the seconds the API's `time`, `start`, `end` and `step` take.
pub fn seconds(millis: i64) -> String {
    format!("{}.{:03}", millis.div_euclid(1000), millis.rem_euclid(1000))
}

/// A label value in double quotes (also for MetricsQL, `peers/victoria.rs`).
pub(crate) fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A literal alternative of a regular expression (RE2, fully anchored by PromQL).
pub(crate) fn regex_literal(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether `name` can be written bare as a metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
fn bare_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The series selector of one field (a stored `.` reads as `:`) and the plan's filters.
pub fn selector(field: &str, filters: &[(String, Vec<String>)]) -> String {
    let name = field.replace('.', ":");
    let mut matchers = Vec::new();
    let head = if bare_name(&name) {
        name
    } else {
        matchers.push(format!("__name__={}", quoted(&name)));
        String::new()
    };
    for (key, values) in filters {
        match values.as_slice() {
            [one] => matchers.push(format!("{key}={}", quoted(one))),
            many => {
                let alts: Vec<String> = many.iter().map(|v| regex_literal(v)).collect();
                matchers.push(format!("{key}=~{}", quoted(&alts.join("|"))));
            }
        }
    }
    if matchers.is_empty() {
        head
    } else {
        format!("{head}{{{}}}", matchers.join(", "))
    }
}

/// Why a plan (or one of its aggregations) has no faithful PromQL form, if it has none.
pub fn refusal(plan: &Plan) -> Option<String> {
    plan.aggs.iter().find_map(|&agg| refused(plan, agg))
}

fn refused(plan: &Plan, agg: Agg) -> Option<String> {
    let bounds = plan.values.bounds();
    let bounded = bounds.iter().any(Option::is_some);
    match agg {
        Agg::Percentile(_) => Some(
            "quantile_over_time is per series and quantile by (...) across series at one \
             instant: neither is a percentile of all points of a group"
                .into(),
        ),
        Agg::First => Some("first: Prometheus 2.42 has no first_over_time".into()),
        Agg::Count if bounded => {
            let condition: Vec<String> = [">", ">=", "<", "<="]
                .iter()
                .zip(bounds)
                .filter_map(|(op, b)| b.map(|b| format!("{op} {b}")))
                .collect();
            let condition = condition.join(" and ");
            Some(format!(
                "counting readings {condition} needs a subquery, \
                 count_over_time((m {condition})[r:step]), not supported (and it samples at its \
                 step instead of reading every point)"
            ))
        }
        Agg::Max
            if matches!(
                bounds,
                [Some(_), None, None, None] | [None, Some(_), None, None]
            ) =>
        {
            None
        }
        Agg::Min
            if matches!(
                bounds,
                [None, None, Some(_), None] | [None, None, None, Some(_)]
            ) =>
        {
            None
        }
        _ if bounded => Some(format!(
            "{agg} of the points within a bound filters points first: a subquery, not supported"
        )),
        _ => None,
    }
}

/// The PromQL of aggregation `agg` of the plan over `field`, with range selectors of
/// `range_ms` shifted by `offset_ms` (negative: later). `Err`: no faithful form.
pub fn expression(
    plan: &Plan,
    field: &str,
    agg: Agg,
    range_ms: i64,
    offset_ms: i64,
) -> Result<String, String> {
    if let Some(why) = refused(plan, agg) {
        return Err(why);
    }
    if range_ms < 1 {
        return Err(format!("a window of {range_ms} ms"));
    }
    let offset = if offset_ms == 0 {
        String::new()
    } else {
        format!(" offset {offset_ms}ms")
    };
    let range = format!("{}[{range_ms}ms]{offset}", selector(field, &plan.filters));
    let labels: Vec<&str> = plan
        .group_by
        .iter()
        .filter(|g| *g != "metric")
        .map(String::as_str)
        .collect();
    let by = if labels.is_empty() {
        String::new()
    } else {
        format!(" by ({})", labels.join(", "))
    };
    let over = |f: &str| format!("{f}({range})");
    let values = &plan.values;
    Ok(match agg {
        Agg::Max if values.gt.is_some() || values.ge.is_some() => {
            let (op, b) = match (values.gt, values.ge) {
                (Some(b), _) => (">", b),
                (_, b) => (">=", b.unwrap_or_default()),
            };
            format!("max{by} ({} {op} {b})", over("max_over_time"))
        }
        Agg::Min if values.lt.is_some() || values.le.is_some() => {
            let (op, b) = match (values.lt, values.le) {
                (Some(b), _) => ("<", b),
                (_, b) => ("<=", b.unwrap_or_default()),
            };
            format!("min{by} ({} {op} {b})", over("min_over_time"))
        }
        Agg::Max => format!("max{by} ({})", over("max_over_time")),
        Agg::Min => format!("min{by} ({})", over("min_over_time")),
        Agg::Sum => format!("sum{by} ({})", over("sum_over_time")),
        Agg::Count => format!("sum{by} ({})", over("count_over_time")),
        Agg::Avg => format!(
            "sum{by} ({}) / sum{by} ({})",
            over("sum_over_time"),
            over("count_over_time")
        ),
        Agg::Last => format!("max{by} ({})", over("last_over_time")),
        Agg::First | Agg::Percentile(_) => return Err(format!("{agg}: no PromQL form")),
    })
}

/// The first millisecond at or after `micros`.
fn ceil_millis(micros: i64) -> i64 {
    micros.div_euclid(1000) + i64::from(micros.rem_euclid(1000) != 0)
}

/// The instant query of the points in `[lo, hi)` (microseconds): at the last millisecond
/// before `hi`, over a range reaching back to `lo`.
fn instant(plan: &Plan, field: &str, i: usize, lo: i64, hi: i64) -> Result<Request, String> {
    let at = ceil_millis(hi) - 1;
    let range = at - ceil_millis(lo);
    Ok(Request {
        path: "/api/v1/query",
        params: vec![
            ("query", expression(plan, field, plan.aggs[i], range, 0)?),
            ("time", seconds(at)),
        ],
        field: field.to_string(),
        agg: i,
        bucket: None,
    })
}

/// The requests of a plan (see the module's comment for the windows); `Err`: why it has no
/// faithful PromQL form.
pub fn requests(plan: &Plan) -> Result<Vec<Request>, String> {
    if let Some(why) = refusal(plan) {
        return Err(why);
    }
    let fields: Vec<&String> = if plan.by_metric() {
        plan.fields.iter().collect()
    } else {
        plan.fields.iter().take(1).collect()
    };
    let mut out = Vec::new();
    for field in fields {
        for i in 0..plan.aggs.len() {
            let Some(w) = plan.window else {
                out.push(instant(plan, field, i, plan.from, plan.to)?);
                continue;
            };
            if w % 1000 != 0 || w < 2000 {
                return Err(format!(
                    "buckets of {w} µs: not whole milliseconds, or shorter than 2 ms"
                ));
            }
            let full = |b: &&Bucket| b.lo == b.start && b.hi == b.start + w;
            let whole: Vec<&Bucket> = plan.buckets.iter().filter(full).collect();
            if let (Some(first), Some(last)) = (whole.first(), whole.last()) {
                let w_ms = w / 1000;
                out.push(Request {
                    path: "/api/v1/query_range",
                    params: vec![
                        (
                            "query",
                            expression(plan, field, plan.aggs[i], w_ms - 1, -(w_ms - 1))?,
                        ),
                        ("start", seconds(first.start.div_euclid(1000))),
                        ("end", seconds(last.start.div_euclid(1000))),
                        ("step", seconds(w_ms)),
                    ],
                    field: field.clone(),
                    agg: i,
                    bucket: None,
                });
            }
            for b in plan.buckets.iter().filter(|b| !full(b)) {
                let mut r = instant(plan, field, i, b.lo, b.hi)?;
                r.bucket = Some(b.start);
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Adds the answer to `request` to `rows`, keyed as the seed API's rows are.
pub fn add_answer(plan: &Plan, request: &Request, answer: &Value, rows: &mut Rows) -> Result<()> {
    let bad = |why: &str| BenchError::Task(format!("the PromQL API answered {why}: {answer}"));
    if answer["status"] != "success" {
        return Err(bad("an error"));
    }
    if answer["warnings"].as_array().is_some_and(|w| !w.is_empty()) {
        return Err(bad("with warnings (a partial answer)"));
    }
    let result = answer["data"]["result"]
        .as_array()
        .ok_or_else(|| bad("no result"))?;
    for series in result {
        let labels: BTreeMap<String, String> = series["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let samples: Vec<&Value> = match series["values"].as_array() {
            Some(values) => values.iter().collect(),
            None => vec![&series["value"]],
        };
        for sample in samples {
            let value = sample[1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| bad("a sample without a value"))?;
            let bucket = match (plan.window, request.bucket) {
                (None, _) => None,
                (Some(_), Some(b)) => Some(b),
                (Some(_), None) => {
                    let t = sample[0]
                        .as_f64()
                        .ok_or_else(|| bad("a sample without time"))?;
                    Some((t * 1000.0).round() as i64 * 1000)
                }
            };
            rows.set(
                plan.key(&request.field, |k| labels.get(k).cloned(), bucket),
                plan.aggs.len(),
                request.agg,
                Some(value),
            );
        }
    }
    Ok(())
}

/// A client of the Prometheus query API of the control node at `url`.
#[derive(Clone)]
pub struct PromClient {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl PromClient {
    pub fn new(url: &str, token: &str) -> Result<PromClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| BenchError::Task(format!("an HTTP client: {e}")))?;
        Ok(PromClient {
            http,
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// One request's JSON answer (a status other than 2xx is an error).
    pub async fn ask(&self, path: &str, params: &[(&'static str, String)]) -> Result<Value> {
        let request = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .form(params);
        json_answer(request, "PromQL query").await
    }

    /// Sends the plan's requests at once; the rows, as the seed API gives them.
    pub async fn run(&self, plan: &Plan, requests: &[Request]) -> Result<Vec<Row>> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, r) in requests.iter().enumerate() {
            let client = self.clone();
            let (path, params) = (r.path, r.params.clone());
            tasks.spawn(async move { (i, client.ask(path, &params).await) });
        }
        let mut rows = Rows::default();
        while let Some(joined) = tasks.join_next().await {
            let (i, answer) = joined.map_err(|e| BenchError::Task(e.to_string()))?;
            add_answer(plan, &requests[i], &answer?, &mut rows)?;
        }
        Ok(plan.finish(rows.into_rows()))
    }
}

/// Compares the PromQL rows with the seed API's: the same keys, every value within
/// [`TOLERANCE`] relative. `Ok`: `same` when every value is equal, `same (to 1e-9)` when
/// within the tolerance.
pub fn compare(seed: &[Row], promql: &[Row]) -> std::result::Result<String, String> {
    if seed.len() != promql.len() {
        return Err(format!(
            "{} rows from the seed API, {} from PromQL",
            seed.len(),
            promql.len()
        ));
    }
    if seed.is_empty() {
        return Err("no rows at all".into());
    }
    let mut exact = true;
    for (ours, theirs) in seed.iter().zip(promql) {
        if ours.key != theirs.key {
            return Err(format!("row {:?} against {:?}", ours.key, theirs.key));
        }
        for (a, b) in ours.values.iter().zip(&theirs.values) {
            match (a, b) {
                (None, None) => {}
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) if (a - b).abs() <= TOLERANCE * a.abs().max(b.abs()) => {
                    exact = false;
                }
                _ => {
                    return Err(format!("{:?}: seed API {a:?}, PromQL {b:?}", ours.key));
                }
            }
        }
    }
    Ok(if exact { "same" } else { "same (to 1e-9)" }.into())
}

/// The rate row: PromQL's query and range parameters, and the seed API's query, over the
/// data in `[start, end)` (microseconds). The range query's steps end the 5-minute windows
/// `[t - 5m, t]` that cover the data; the seed API's buckets are `[b, b + 5m)`.
pub fn rate_row(start: i64, end: i64) -> Result<(Vec<(&'static str, String)>, Query)> {
    let (first, last) = (ceil_millis(start), ceil_millis(end));
    let steps = (last - first + RATE_STEP_MS - 1) / RATE_STEP_MS;
    let params = vec![
        (
            "query",
            "sum by (datacenter) (rate(usage_user[5m]))".to_string(),
        ),
        ("start", seconds(first + RATE_STEP_MS)),
        ("end", seconds(first + steps.max(1) * RATE_STEP_MS)),
        ("step", seconds(RATE_STEP_MS)),
    ];
    let rfc3339 = |micros: i64| Timestamp::from_micros(micros).to_rfc3339();
    let query = Query::from_params(&[
        ("metric", "usage_user".to_string()),
        ("agg", "sum".to_string()),
        ("group_by", "datacenter".to_string()),
        ("window", "5m".to_string()),
        ("from", rfc3339(start)),
        ("to", rfc3339(end)),
    ])
    .map_err(|e| BenchError::Config(format!("the rate row's query: {e}")))?;
    Ok((params, query))
}

/// The `(datacenter, window start in ms)` pairs of the rate row's PromQL answer (a step
/// at `t` covers `[t - 5m, t]`).
fn rate_keys(answer: &Value) -> std::result::Result<BTreeSet<(String, i64)>, String> {
    if answer["status"] != "success" {
        return Err(format!("PromQL answered an error: {answer}"));
    }
    let mut keys = BTreeSet::new();
    for series in answer["data"]["result"].as_array().into_iter().flatten() {
        let dc = series["metric"]["datacenter"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for sample in series["values"].as_array().into_iter().flatten() {
            let t = sample[0].as_f64().ok_or("a sample without time")?;
            keys.insert((dc.clone(), (t * 1000.0).round() as i64 - RATE_STEP_MS));
        }
    }
    Ok(keys)
}

/// The `(datacenter, bucket start in ms)` pairs of the seed API's answer.
fn seed_keys(result: &raftmetrics_client::QueryResult) -> BTreeSet<(String, i64)> {
    let mut keys = BTreeSet::new();
    for g in &result.groups {
        let dc = g
            .key
            .iter()
            .find(|(k, _)| k == "datacenter")
            .and_then(|(_, v)| v.clone())
            .unwrap_or_default();
        for b in &g.buckets {
            keys.insert((dc.clone(), b.start.as_micros().div_euclid(1000)));
        }
    }
    keys
}

/// What one case measured.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Both forms ran: their median times, the rows, the requests PromQL took and how the
    /// answers compare.
    Ran {
        seed: Duration,
        promql: Duration,
        rows: usize,
        requests: usize,
        answers: std::result::Result<String, String>,
    },
    /// No faithful PromQL form, and why.
    NotTranslated(String),
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct PromqlRow {
    pub name: String,
    /// The PromQL of the case's first request (or empty).
    pub promql: String,
    pub outcome: Outcome,
}

/// The rate row.
#[derive(Clone, Debug)]
pub struct RateRow {
    pub promql: String,
    pub steps: usize,
    pub seed: Duration,
    pub promql_time: Duration,
    pub answers: std::result::Result<String, String>,
}

impl RateRow {
    pub fn ratio(&self) -> f64 {
        self.promql_time.as_secs_f64() / self.seed.as_secs_f64().max(1e-9)
    }

    pub fn goal_met(&self) -> bool {
        self.ratio() <= GOAL_RATIO
    }
}

/// What `promql` found.
#[derive(Clone, Debug)]
pub struct PromqlReport {
    pub rows: Vec<PromqlRow>,
    pub rate: RateRow,
}

impl PromqlReport {
    /// Whether every compared answer agreed.
    pub fn answers_agree(&self) -> bool {
        self.rate.answers.is_ok()
            && self.rows.iter().all(|r| match &r.outcome {
                Outcome::Ran { answers, .. } => answers.is_ok(),
                Outcome::NotTranslated(_) => true,
            })
    }

    pub fn table(&self) -> Table {
        let mut table = Table::new(&[
            "query",
            "requests",
            "rows",
            "seed API",
            "PromQL",
            "PromQL / seed API",
            "answers",
            "goal",
        ])
        .text_columns(&[6, 7]);
        for r in &self.rows {
            match &r.outcome {
                Outcome::Ran {
                    seed,
                    promql,
                    rows,
                    requests,
                    answers,
                } => table.row(vec![
                    r.name.clone(),
                    requests.to_string(),
                    rows.to_string(),
                    millis(*seed),
                    millis(*promql),
                    ratio(promql.as_secs_f64() / seed.as_secs_f64().max(1e-9)),
                    match answers {
                        Ok(note) => note.clone(),
                        Err(why) => format!("DIFFER: {why}"),
                    },
                    String::new(),
                ]),
                Outcome::NotTranslated(why) => table.row(vec![
                    r.name.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("no faithful PromQL form: {why}"),
                    String::new(),
                ]),
            }
        }
        let rate = &self.rate;
        table.row(vec![
            format!("{}, all points, step 5m", rate.promql),
            "1".into(),
            rate.steps.to_string(),
            millis(rate.seed),
            millis(rate.promql_time),
            ratio(rate.ratio()),
            match &rate.answers {
                Ok(note) => note.clone(),
                Err(why) => format!("DIFFER: {why}"),
            },
            format!("<= {GOAL_RATIO:.0}x: {}", verdict(rate.goal_met())),
        ]);
        table
    }

    pub fn print(&self) {
        println!(
            "\n## PromQL beside the seed API\n\n{}",
            self.table().render()
        );
        println!("PromQL forms (the first request of each case):");
        for r in &self.rows {
            if !r.promql.is_empty() {
                println!("- {}: {}", r.name, r.promql);
            }
        }
        println!(
            "- rate row: {} against \
             /aggregate?metric=usage_user&agg=sum&group_by=datacenter&window=5m",
            self.rate.promql
        );
    }
}

/// Runs every case through both APIs of the cluster at `url` (holding exactly the dataset's
/// `intervals`), the median of `runs` after a warm-up each, then the rate row.
pub async fn measure(
    url: &str,
    token: &str,
    dataset: &Dataset,
    intervals: u64,
    runs: usize,
) -> Result<PromqlReport> {
    let client = Client::builder(url)
        .token(token)
        .format(Format::Bincode)
        .build()?;
    let prom = PromClient::new(url, token)?;
    let (start, end) = (
        dataset.config.start.as_micros(),
        dataset.time_of(intervals).as_micros(),
    );
    let cases = queries::cases(dataset, intervals)?;
    let mut rows = Vec::new();
    for case in &cases {
        rows.push(measure_case(case, &client, &prom, start, end, runs).await?);
    }
    eprintln!("PromQL: the rate by datacenter...");
    let (params, query) = rate_row(start, end)?;
    let ((seed, seed_answer), (promql_time, answer)) = time_pair(
        runs,
        || async { Ok(client.aggregate(&query).await?.into_complete()?) },
        || async { prom.ask("/api/v1/query_range", &params).await },
    )
    .await?;
    let theirs = rate_keys(&answer);
    let ours = seed_keys(&seed_answer);
    let steps = theirs.as_ref().map_or(0, |k| k.len());
    let answers = theirs.and_then(|theirs| {
        if theirs == ours && !ours.is_empty() {
            let groups: BTreeSet<&String> = ours.iter().map(|(g, _)| g).collect();
            Ok(format!(
                "the same {} groups and {} windows (values not compared: rates against sums)",
                groups.len(),
                ours.len() / groups.len().max(1)
            ))
        } else {
            Err(format!(
                "{} (datacenter, window) pairs from the seed API, {} from PromQL, {} in common",
                ours.len(),
                theirs.len(),
                ours.intersection(&theirs).count()
            ))
        }
    });
    Ok(PromqlReport {
        rows,
        rate: RateRow {
            promql: params[0].1.clone(),
            steps,
            seed,
            promql_time,
            answers,
        },
    })
}

async fn measure_case(
    case: &Case,
    client: &Client,
    prom: &PromClient,
    start: i64,
    end: i64,
    runs: usize,
) -> Result<PromqlRow> {
    let translated = Plan::new(case, start, end).and_then(|plan| {
        let requests = requests(&plan)?;
        Ok((plan, requests))
    });
    let (plan, requests) = match translated {
        Ok(t) => t,
        Err(why) => {
            return Ok(PromqlRow {
                name: case.name.to_string(),
                promql: String::new(),
                outcome: Outcome::NotTranslated(why),
            });
        }
    };
    eprintln!("PromQL: query {}...", case.name);
    let ((seed, ours), (promql, theirs)) = time_pair(
        runs,
        || async { case.run_cluster(client).await },
        || async { prom.run(&plan, &requests).await },
    )
    .await?;
    Ok(PromqlRow {
        name: case.name.to_string(),
        promql: requests
            .first()
            .map(|r| r.query().to_string())
            .unwrap_or_default(),
        outcome: Outcome::Ran {
            seed,
            promql,
            rows: ours.len(),
            requests: requests.len(),
            answers: compare(&ours, &theirs),
        },
    })
}

/// The median time and last answer of `runs` timed calls of `a` and of `b`, after one
/// untimed warm-up call of each; the timed calls alternate, `a` then `b`, so that both see
/// the same machine (other work on it comes and goes).
pub async fn time_pair<A, FA, TA, B, FB, TB>(
    runs: usize,
    mut a: A,
    mut b: B,
) -> Result<((Duration, TA), (Duration, TB))>
where
    A: FnMut() -> FA,
    FA: std::future::Future<Output = Result<TA>>,
    B: FnMut() -> FB,
    FB: std::future::Future<Output = Result<TB>>,
{
    let mut last_a = a().await?;
    let mut last_b = b().await?;
    let (mut times_a, mut times_b) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        last_a = a().await?;
        times_a.push(started.elapsed());
        let started = Instant::now();
        last_b = b().await?;
        times_b.push(started.elapsed());
    }
    let median = |mut times: Vec<Duration>| {
        times.sort_unstable();
        times[times.len() / 2]
    };
    Ok(((median(times_a), last_a), (median(times_b), last_b)))
}

/// Options of `promql`.
pub struct PromqlOptions {
    pub dataset: Arc<Dataset>,
    pub intervals: u64,
    pub runs: usize,
    /// A running cluster (URL, token) and whether to load the dataset into it; `None`: a
    /// local cluster started and loaded here.
    pub target: Option<(String, String, bool)>,
    pub connections: usize,
    pub batch: usize,
    pub format: Format,
    pub workers: u16,
    pub partitions: u32,
    pub server_bin: Option<PathBuf>,
}

/// Runs `promql`: a cluster (started here, or the one given), the dataset loaded, the
/// measurements.
pub async fn run(o: &PromqlOptions) -> Result<PromqlReport> {
    let mut cluster = None;
    let (url, token, load) = match &o.target {
        Some((url, token, load)) => (url.clone(), token.clone(), *load),
        None => {
            let server_bin = match &o.server_bin {
                Some(bin) => bin.clone(),
                None => crate::cluster::default_server_bin()?,
            };
            let started = LocalCluster::start(ClusterSpec {
                server_bin,
                workers: o.workers,
                replication_factor: 1,
                partitions: o.partitions,
                cluster_secret: None,
                spare_workers: 0,
            })
            .await?;
            let target = (started.url.clone(), started.token.clone(), true);
            cluster = Some(started);
            target
        }
    };
    if load {
        let points = o.intervals * o.dataset.points_per_interval();
        eprintln!(
            "loading {points} points ({} hosts)...",
            o.dataset.config.scale
        );
        let pids = match &cluster {
            Some(c) => c.pids()?,
            None => Vec::new(),
        };
        let spec = LoadSpec {
            connections: o.connections,
            batch: o.batch,
            format: o.format,
            line_protocol: false,
            rate: None,
            label: "load".into(),
        };
        let span = Span {
            first: 0,
            count: o.intervals,
        };
        let measured = suite::measure_load(&url, &token, &pids, &o.dataset, span, &spec).await?;
        eprintln!("  {:.0} points/s", measured.report.points_per_second());
    }
    let report = measure(&url, &token, &o.dataset, o.intervals, o.runs).await?;
    drop(cluster);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::Config;
    use crate::peers::plan::buckets;
    use raftmetrics_client::ValueFilter;

    const MIN: i64 = 60_000_000;
    const T0: i64 = 1_451_606_400_000_000;

    fn plan(group_by: &[&str], aggs: Vec<Agg>, window: Option<i64>, from: i64, to: i64) -> Plan {
        Plan {
            fields: vec!["usage_user".into()],
            group_by: group_by.iter().map(|g| g.to_string()).collect(),
            filters: vec![("hostname".into(), vec!["host_3".into()])],
            values: ValueFilter::default(),
            aggs,
            from,
            to,
            window,
            buckets: window.map(|w| buckets(from, to, w)).unwrap_or_default(),
            newest: None,
        }
    }

    fn param<'a>(r: &'a Request, name: &str) -> &'a str {
        r.params
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    #[test]
    fn whole_buckets_are_one_range_query_whose_windows_start_at_the_steps() {
        let p = plan(&[], vec![Agg::Max], Some(MIN), T0, T0 + 60 * MIN);
        let r = requests(&p).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].path, "/api/v1/query_range");
        // At b, [59999ms] offset -59999ms reads [b, b + 59.999 s]: the bucket [b, b + 1m).
        assert_eq!(
            r[0].query(),
            "max (max_over_time(usage_user{hostname=\"host_3\"}[59999ms] offset -59999ms))"
        );
        assert_eq!(param(&r[0], "start"), "1451606400.000");
        assert_eq!(param(&r[0], "end"), "1451609940.000");
        assert_eq!(param(&r[0], "step"), "60.000");
    }

    #[test]
    fn cut_buckets_are_instant_queries_over_their_part() {
        // 00:00:30 to 01:00:30: a cut first and last bucket, 59 whole ones.
        let from = T0 + 30_000_000;
        let p = plan(
            &["hostname"],
            vec![Agg::Avg],
            Some(MIN),
            from,
            from + 60 * MIN,
        );
        let r = requests(&p).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(param(&r[0], "start"), "1451606460.000");
        assert_eq!(param(&r[0], "end"), "1451609940.000");
        assert_eq!(r[1].bucket, Some(T0));
        // [00:00:30, 00:01:00) is [00:00:30, 00:00:59.999]: 29.999 s back from 59.999.
        assert_eq!(param(&r[1], "time"), "1451606459.999");
        assert_eq!(
            r[1].query(),
            "sum by (hostname) (sum_over_time(usage_user{hostname=\"host_3\"}[29999ms])) / \
             sum by (hostname) (count_over_time(usage_user{hostname=\"host_3\"}[29999ms]))"
        );
        assert_eq!(r[2].bucket, Some(T0 + 60 * MIN));
        assert_eq!(param(&r[2], "time"), "1451610029.999");
        // A query without buckets: one instant query over the whole range.
        let whole = plan(&["hostname"], vec![Agg::Last], None, T0, T0 + 24 * 60 * MIN);
        let r = requests(&whole).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].path, "/api/v1/query");
        assert_eq!(
            r[0].query(),
            "max by (hostname) (last_over_time(usage_user{hostname=\"host_3\"}[86399999ms]))"
        );
        assert_eq!(param(&r[0], "time"), "1451692799.999");
    }

    #[test]
    fn a_group_by_metric_is_one_request_per_metric() {
        let mut p = plan(
            &["metric"],
            vec![Agg::Max],
            Some(60 * MIN),
            T0,
            T0 + 120 * MIN,
        );
        p.fields = vec!["usage_user".into(), "usage_idle".into()];
        p.filters = vec![("hostname".into(), vec!["host_1".into(), "host.2".into()])];
        let r = requests(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[1].query(),
            "max (max_over_time(usage_idle{hostname=~\"host_1|host\\\\.2\"}[3599999ms] \
             offset -3599999ms))"
        );
        assert_eq!(
            (r[0].field.as_str(), r[1].field.as_str()),
            ("usage_user", "usage_idle")
        );
        // Keys: the metric, then the bucket, as the seed API's rows.
        assert_eq!(
            p.key(&r[1].field, |_| None, Some(T0)),
            ["usage_idle", &T0.to_string()]
        );
        assert_eq!(selector("cpu.load", &[]), "cpu:load");
        assert_eq!(selector("1x", &[]), "{__name__=\"1x\"}");
    }

    #[test]
    fn bounds_translate_where_a_series_max_says_them() {
        let range = 12 * 60 * MIN;
        let mut hosts = plan(&["hostname"], vec![Agg::Max], None, T0, T0 + range);
        hosts.filters.clear();
        hosts.values.gt = Some(90.0);
        assert_eq!(
            requests(&hosts).unwrap()[0].query(),
            "max by (hostname) (max_over_time(usage_user[43199999ms]) > 90)"
        );
        hosts.values = ValueFilter {
            le: Some(2.5),
            ..ValueFilter::default()
        };
        hosts.aggs = vec![Agg::Min];
        assert_eq!(
            expression(&hosts, "usage_user", Agg::Min, 1000, 0).unwrap(),
            "min by (hostname) (min_over_time(usage_user[1000ms]) <= 2.5)"
        );
        // A max below a bound, or an average within one, filters points first.
        assert!(expression(&hosts, "usage_user", Agg::Max, 1000, 0).is_err());
        assert!(expression(&hosts, "usage_user", Agg::Avg, 1000, 0).is_err());
    }

    #[test]
    fn the_set_s_cases_translate_or_say_why_not() {
        let d = Dataset::new(Config::new(1, 10));
        let intervals = 5_000;
        let (start, end) = (d.config.start.as_micros(), d.time_of(intervals).as_micros());
        let cases = queries::cases(&d, intervals).unwrap();
        let outcome = |name: &str| {
            let case = cases.iter().find(|c| c.name == name).unwrap();
            let plan = Plan::new(case, start, end).unwrap();
            requests(&plan)
        };
        let why = outcome("high-cpu-all").unwrap_err();
        assert!(why.contains("subquery"), "{why}");
        let why = outcome("p95-p99-by-datacenter").unwrap_err();
        assert!(why.contains("quantile_over_time"), "{why}");
        for name in [
            "single-groupby-1-1-1",
            "double-groupby-1",
            "cpu-max-all-8",
            "high-cpu-hosts",
            "lastpoint",
            "groupby-orderby-limit",
        ] {
            let r = outcome(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!r.is_empty(), "{name}");
            for request in &r {
                // Standard PromQL of the subset: no MetricsQL rollups or modifiers.
                let q = request.query();
                assert!(
                    !q.contains("keep_metric_names") && !q.contains("_gt_"),
                    "{q}"
                );
                assert!(raftmetrics_promql::plan::plan(q, 0, 0).is_ok(), "{q}");
            }
        }
        // One request per field for the ten fields.
        assert_eq!(
            outcome("cpu-max-all-8")
                .unwrap()
                .iter()
                .map(|r| &r.field)
                .collect::<BTreeSet<_>>()
                .len(),
            10
        );
        // The newest five buckets: a range query, and an instant query for a cut last one.
        let newest = outcome("groupby-orderby-limit").unwrap();
        assert!(newest[0].path == "/api/v1/query_range" || newest.len() == 1);
    }

    #[test]
    fn answers_become_rows_keyed_like_the_seed_api() {
        let p = plan(
            &["hostname"],
            vec![Agg::Max, Agg::Count],
            Some(MIN),
            T0 + 30_000_000,
            T0 + 2 * MIN,
        );
        let reqs = requests(&p).unwrap();
        let mut rows = Rows::default();
        let range: Value = serde_json::json!({"status": "success", "data": {"resultType": "matrix",
            "result": [{"metric": {"hostname": "host_3"}, "values": [[1451606460, "42.5"]]}]}});
        let instant: Value = serde_json::json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {"hostname": "host_3"}, "value": [1451606459.999, "3"]}]}});
        let range_req = reqs
            .iter()
            .find(|r| r.agg == 0 && r.bucket.is_none())
            .unwrap();
        let cut_req = reqs
            .iter()
            .find(|r| r.agg == 1 && r.bucket.is_some())
            .unwrap();
        add_answer(&p, range_req, &range, &mut rows).unwrap();
        add_answer(&p, cut_req, &instant, &mut rows).unwrap();
        let out = p.finish(rows.into_rows());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].key, ["host_3", &T0.to_string()]);
        assert_eq!(out[0].values, [None, Some(3.0)]);
        assert_eq!(out[1].key, ["host_3", &(T0 + MIN).to_string()]);
        assert_eq!(out[1].values, [Some(42.5), None]);
        let error: Value = serde_json::json!({"status": "error", "error": "bad"});
        assert!(add_answer(&p, range_req, &error, &mut Rows::default()).is_err());
        let partial: Value = serde_json::json!({"status": "success", "warnings": ["partial"],
            "data": {"resultType": "matrix", "result": []}});
        assert!(add_answer(&p, range_req, &partial, &mut Rows::default()).is_err());
    }

    #[tokio::test]
    async fn timed_calls_alternate_after_one_warm_up_each() {
        let log = std::sync::Mutex::new(String::new());
        let log = &log;
        let ((_, a), (_, b)) = time_pair(
            3,
            move || async move {
                log.lock().unwrap().push('a');
                Ok(1)
            },
            move || async move {
                log.lock().unwrap().push('b');
                Ok("two")
            },
        )
        .await
        .unwrap();
        assert_eq!((a, b), (1, "two"));
        assert_eq!(*log.lock().unwrap(), "abababab");
    }

    #[test]
    fn answers_compare_to_1e9() {
        let row = |k: &str, v: Option<f64>| Row {
            key: vec![k.into()],
            values: vec![v],
        };
        let seed = [row("a", Some(2.0)), row("b", None)];
        assert_eq!(compare(&seed, &seed).unwrap(), "same");
        let close = [row("a", Some(2.0 + 1e-12)), row("b", None)];
        assert_eq!(compare(&seed, &close).unwrap(), "same (to 1e-9)");
        let off = [row("a", Some(2.001)), row("b", None)];
        assert!(compare(&seed, &off).is_err());
        assert!(compare(&seed, &seed[..1]).is_err());
        assert!(compare(&[], &[]).is_err());
        let other = [row("a", Some(2.0)), row("c", None)];
        assert!(compare(&seed, &other).is_err());
    }

    #[test]
    fn the_rate_row_covers_the_data_with_five_minute_windows() {
        // 27 h 46 min 40 s of data: 334 windows, the last one cut by the data's end.
        let end = T0 + 100_000_000_000;
        let (params, query) = rate_row(T0, end).unwrap();
        assert_eq!(params[0].1, "sum by (datacenter) (rate(usage_user[5m]))");
        assert_eq!(params[1].1, "1451606700.000");
        assert_eq!(params[2].1, seconds(T0 / 1000 + 334 * RATE_STEP_MS));
        assert_eq!(params[3].1, "300.000");
        assert_eq!(query.window_micros, Some(5 * MIN));
        assert_eq!(query.group_by, ["datacenter"]);
        assert_eq!(query.aggs, [Agg::Sum]);
        assert_eq!(
            (
                query.from.map(|t| t.as_micros()),
                query.to.map(|t| t.as_micros())
            ),
            (Some(T0), Some(end))
        );
        let answer = serde_json::json!({"status": "success", "data": {"resultType": "matrix",
            "result": [{"metric": {"datacenter": "eu-1a"},
                        "values": [[1451606700, "0.1"], [1451607000, "0.2"]]}]}});
        let keys = rate_keys(&answer).unwrap();
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            [
                ("eu-1a".to_string(), T0 / 1000),
                ("eu-1a".to_string(), T0 / 1000 + RATE_STEP_MS)
            ]
        );
    }
}
