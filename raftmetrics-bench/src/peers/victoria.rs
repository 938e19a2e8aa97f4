//! VictoriaMetrics (single-node, 1.79): its process and the query set in MetricsQL.
//!
//! Points arrive by line protocol at `POST /write?precision=u` and become series
//! `cpu_<field>` with the host's tags as labels.
//!
//! Bucket alignment. A rollup `f(s[w])` evaluated at `t` reads the samples in `(t - w, t]`;
//! RaftMetrics' bucket starting at `b` holds `[b, b + w)`. VictoriaMetrics keeps
//! millisecond timestamps (the data's are whole seconds), so `[b, b + w)` is
//! `(b - 1 ms, b + w - 1 ms]`: the window `[w]` shifted by `offset -(w - 1 ms)` and evaluated
//! at `b`. A range query over whole buckets therefore runs at `start = first b`,
//! `step = w`, and its timestamps are the buckets' starts (multiples of the step, so
//! VictoriaMetrics' own alignment of `start` to the step changes nothing). A bucket cut by
//! the query's range (`[lo, hi)` inside `[b, b + w)`) is an instant query of its own at
//! `hi - 1 ms` over `[hi - lo]`. A query without buckets is one instant query at
//! `to - 1 ms` over `[to - from]`.
//!
//! Aggregations across series: max and min of the per-series `max_over_time` /
//! `min_over_time`, count and sum as sums of `count_over_time` / `sum_over_time`, avg as
//! their quotient, last as the max of `last_over_time` (first as the min of
//! `first_over_time`: RaftMetrics breaks ties of time by value); groups by `by (...)` (the metric by
//! `__name__`, kept through the rollup by `keep_metric_names`).
//!
//! Bounds on values, where a rollup says them exactly: a count above (at most) a bound is the
//! sum of `count_gt_over_time(s[w], b)` (`count_le_over_time`), the groups and buckets
//! without such a point dropped (`> 0`: RaftMetrics has none); the max of the points above
//! (at least) a bound is the series' `max_over_time` kept when above it (`> b`, `>= b`: a
//! series' max above the bound is the max of its points above it, and a series without a
//! point above it drops out), and the min below a bound likewise. MetricsQL has no
//! `count_ge_over_time` or `count_lt_over_time`, and a subquery (`(s > b)[w:step]`) samples
//! at its step rather than reading every point, so other bounds are not translated.
//!
//! Percentiles over many series have no exact form: `histogram_quantile(phi, sum by (...,
//! vmrange) (histogram_over_time(...)))` estimates them from VictoriaMetrics' log buckets
//! (about 18 per decade), so they are approximate.
//!
//! Values: VictoriaMetrics stores a float as a decimal mantissa and exponent and keeps about
//! 12 significant digits (`42.12345678901234` is read back as `42.123456789`), so even its
//! minima and maxima are compared to a relative 1e-9, not exactly.

use std::collections::BTreeMap;
use std::path::Path;

use raftmetrics_client::{Agg, ValueFilter};
use serde_json::Value;

use super::plan::{Bucket, MEASUREMENT, Plan, Rows};
use super::{Server, free_port, json_answer};
use crate::error::{BenchError, Result};
use crate::generator::FIELDS;
// Times, label values and regex literals are written as in PromQL.
use crate::promql::{quoted, regex_literal, seconds};
use crate::queries::Row;

/// One HTTP request of a translated query, and where its answer goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `/api/v1/query` or `/api/v1/query_range`.
    pub path: &'static str,
    pub params: Vec<(&'static str, String)>,
    /// Which aggregation of the plan it answers.
    pub agg: usize,
    /// The bucket start of an instant query for one bucket.
    pub bucket: Option<i64>,
}

/// Starts VictoriaMetrics on a free loopback port with its data in `dir`. No other listener
/// (line protocol over TCP/UDP, Graphite, OpenTSDB) is enabled; retention reaches back to the
/// data's 2016 timestamps; the response cache is off, so that a count polled during a load
/// is never a cached one and every timed query is computed.
pub async fn start(bin: &Path) -> Result<Server> {
    let port = free_port()?;
    Server::start(
        "VictoriaMetrics",
        bin,
        format!("http://127.0.0.1:{port}"),
        "/health",
        |dir| {
            vec![
                format!("-storageDataPath={}", dir.join("data").display()),
                format!("-httpListenAddr=127.0.0.1:{port}"),
                "-retentionPeriod=100y".into(),
                "-search.disableCache".into(),
                "-loggerLevel=WARN".into(),
            ]
        },
        |dir| vec![dir.join("data")],
    )
    .await
}

/// The write endpoint of line protocol with microsecond timestamps.
pub fn write_path() -> &'static str {
    "/write?precision=u"
}

/// The series selector of the plan's fields and filters.
pub fn selector(fields: &[String], filters: &[(String, Vec<String>)]) -> String {
    let mut matchers = Vec::new();
    let name = match fields {
        [one] => format!("{MEASUREMENT}_{one}"),
        many => {
            let names: Vec<String> = many.iter().map(|f| regex_literal(f)).collect();
            matchers.push(format!(
                "__name__=~{}",
                quoted(&format!("{MEASUREMENT}_({})", names.join("|")))
            ));
            String::new()
        }
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
        name
    } else {
        format!("{name}{{{}}}", matchers.join(", "))
    }
}

/// The MetricsQL of aggregation `agg` of the plan over windows of `window_ms` shifted by
/// `offset_ms` (negative: later).
pub fn expression(plan: &Plan, agg: Agg, window_ms: i64, offset_ms: i64) -> Result<String, String> {
    let sel = selector(&plan.fields, &plan.filters);
    let keep = if plan.by_metric() {
        " keep_metric_names"
    } else {
        ""
    };
    let offset = if offset_ms == 0 {
        String::new()
    } else {
        format!(" offset {offset_ms}ms")
    };
    // `f(s[w] offset o, arg)`: a rollup over the window, with the threshold of those that
    // take one.
    let rollup_with = |f: &str, arg: Option<f64>| {
        let arg = arg.map(|a| format!(", {a}")).unwrap_or_default();
        format!("{f}({sel}[{window_ms}ms]{offset}{arg}){keep}")
    };
    let rollup = |f: &str| rollup_with(f, None);
    let labels: Vec<&str> = plan
        .group_by
        .iter()
        .map(|g| {
            if g == "metric" {
                "__name__"
            } else {
                g.as_str()
            }
        })
        .collect();
    let by = if labels.is_empty() {
        String::new()
    } else {
        format!(" by ({})", labels.join(", "))
    };
    if !plan.values.is_empty() {
        return bounded(
            plan,
            agg,
            &rollup_with,
            &by,
            !labels.is_empty() || plan.window.is_some(),
        );
    }
    Ok(match agg {
        Agg::Max => format!("max{by} ({})", rollup("max_over_time")),
        Agg::Min => format!("min{by} ({})", rollup("min_over_time")),
        Agg::Count => format!("sum{by} ({})", rollup("count_over_time")),
        Agg::Sum => format!("sum{by} ({})", rollup("sum_over_time")),
        // RaftMetrics breaks a tie of timestamps by value: the same as the max of the series'
        // last points (the min of their first) when every series of a group has a point at
        // the group's latest (earliest) time.
        Agg::Last => format!("max{by} ({})", rollup("last_over_time")),
        Agg::First => format!("min{by} ({})", rollup("first_over_time")),
        Agg::Avg if plan.by_metric() => {
            return Err("avg grouped by metric (a quotient drops the metric name)".into());
        }
        Agg::Avg => format!(
            "sum{by} ({}) / sum{by} ({})",
            rollup("sum_over_time"),
            rollup("count_over_time")
        ),
        Agg::Percentile(_) => {
            let phi = agg.quantile().unwrap_or(0.5);
            let mut with_range = labels.clone();
            with_range.push("vmrange");
            format!(
                "histogram_quantile({phi}, sum by ({}) ({}))",
                with_range.join(", "),
                rollup("histogram_over_time")
            )
        }
    })
}

/// The MetricsQL of aggregation `agg` over the points inside the plan's value bounds
/// (`rollup` gives a rollup function over the windows, with its threshold; `keyed`: the rows
/// are groups or buckets, which RaftMetrics has only for points inside the bounds).
fn bounded(
    plan: &Plan,
    agg: Agg,
    rollup: &dyn Fn(&str, Option<f64>) -> String,
    by: &str,
    keyed: bool,
) -> Result<String, String> {
    let refused = || {
        let given: Vec<String> = ValueFilter::PARAMS
            .iter()
            .zip(plan.values.bounds())
            .filter_map(|(name, b)| b.map(|b| format!("{name}={b}")))
            .collect();
        format!("{agg} with {}", given.join("&"))
    };
    Ok(match (agg, plan.values.bounds()) {
        (Agg::Count, [Some(b), None, None, None] | [None, None, None, Some(b)]) => {
            let f = if plan.values.gt.is_some() {
                "count_gt_over_time"
            } else {
                "count_le_over_time"
            };
            let inner = rollup(f, Some(b));
            let sum = format!("sum{by} ({inner})");
            if keyed { format!("{sum} > 0") } else { sum }
        }
        (Agg::Max, [Some(b), None, None, None]) => {
            format!("max{by} ({} > {})", rollup("max_over_time", None), b)
        }
        (Agg::Max, [None, Some(b), None, None]) => {
            format!("max{by} ({} >= {})", rollup("max_over_time", None), b)
        }
        (Agg::Min, [None, None, Some(b), None]) => {
            format!("min{by} ({} < {})", rollup("min_over_time", None), b)
        }
        (Agg::Min, [None, None, None, Some(b)]) => {
            format!("min{by} ({} <= {})", rollup("min_over_time", None), b)
        }
        _ => return Err(refused()),
    })
}

/// The requests of a plan (see the module's comment for the windows).
pub fn requests(plan: &Plan) -> Result<Vec<Request>, String> {
    let mut out = Vec::new();
    for (i, &agg) in plan.aggs.iter().enumerate() {
        let Some(w) = plan.window else {
            let window = (plan.to - plan.from) / 1000;
            out.push(Request {
                path: "/api/v1/query",
                params: vec![
                    ("query", expression(plan, agg, window, 0)?),
                    ("time", seconds(plan.to / 1000 - 1)),
                ],
                agg: i,
                bucket: None,
            });
            continue;
        };
        let full = |b: &&Bucket| b.lo == b.start && b.hi == b.start + w;
        let whole: Vec<&Bucket> = plan.buckets.iter().filter(full).collect();
        if let (Some(first), Some(last)) = (whole.first(), whole.last()) {
            let w_ms = w / 1000;
            out.push(Request {
                path: "/api/v1/query_range",
                params: vec![
                    ("query", expression(plan, agg, w_ms, -(w_ms - 1))?),
                    ("start", seconds(first.start / 1000)),
                    ("end", seconds(last.start / 1000)),
                    ("step", format!("{w_ms}ms")),
                    ("nocache", "1".into()),
                ],
                agg: i,
                bucket: None,
            });
        }
        for b in plan.buckets.iter().filter(|b| !full(b)) {
            out.push(Request {
                path: "/api/v1/query",
                params: vec![
                    ("query", expression(plan, agg, (b.hi - b.lo) / 1000, 0)?),
                    ("time", seconds(b.hi / 1000 - 1)),
                ],
                agg: i,
                bucket: Some(b.start),
            });
        }
    }
    Ok(out)
}

/// Adds an answer of `request` to `rows`.
pub fn add_answer(plan: &Plan, request: &Request, answer: &Value, rows: &mut Rows) -> Result<()> {
    let bad = |why: &str| BenchError::Task(format!("VictoriaMetrics answered {why}: {answer}"));
    if answer["status"] != "success" {
        return Err(bad("an error"));
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
        let field = labels
            .get("__name__")
            .and_then(|n| n.strip_prefix(&format!("{MEASUREMENT}_")))
            .map(str::to_string)
            .or_else(|| plan.fields.first().cloned())
            .unwrap_or_default();
        let value_of = |k: &str| labels.get(k).cloned();
        let samples: Vec<&Value> = match series["values"].as_array() {
            Some(values) => values.iter().collect(),
            None => vec![&series["value"]],
        };
        for sample in samples {
            let value = sample[1].as_str().and_then(|v| v.parse::<f64>().ok());
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
            let value = value.filter(|v| v.is_finite());
            rows.set(
                plan.key(&field, value_of, bucket),
                plan.aggs.len(),
                request.agg,
                value,
            );
        }
    }
    Ok(())
}

/// Runs the plan's requests at once against `url`; the rows, as RaftMetrics gives them.
pub async fn run(http: &reqwest::Client, url: &str, plan: &Plan) -> Result<Vec<Row>> {
    let requests = requests(plan).map_err(BenchError::Config)?;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, r) in requests.iter().enumerate() {
        let request = http.post(format!("{url}{}", r.path)).form(&r.params);
        tasks.spawn(async move {
            let answer = json_answer(request, "VictoriaMetrics query").await?;
            Ok::<_, BenchError>((i, answer))
        });
    }
    let mut rows = Rows::default();
    while let Some(joined) = tasks.join_next().await {
        let (i, value) = joined.map_err(|e| BenchError::Task(e.to_string()))??;
        add_answer(plan, &requests[i], &value, &mut rows)?;
    }
    Ok(plan.finish(rows.into_rows()))
}

/// Points stored of the dataset's fields with timestamps in `[from, to)` (microseconds): a
/// sum of `count_over_time` over that window.
pub async fn count(http: &reqwest::Client, url: &str, from: i64, to: i64) -> Result<u64> {
    let fields: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
    let query = format!(
        "sum(count_over_time({}[{}ms]))",
        selector(&fields, &[]),
        (to - from) / 1000
    );
    let params = [
        ("query", query),
        ("time", seconds(to / 1000 - 1)),
        ("nocache", "1".into()),
    ];
    let request = http.post(format!("{url}/api/v1/query")).form(&params);
    let answer = json_answer(request, "VictoriaMetrics count").await?;
    let result = &answer["data"]["result"];
    let Some(first) = result.as_array().and_then(|r| r.first()) else {
        return Ok(0);
    };
    Ok(first["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::plan::buckets;

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

    #[test]
    fn whole_buckets_are_one_range_query_shifted_to_their_start() {
        let p = plan(&[], vec![Agg::Max], Some(MIN), T0, T0 + 60 * MIN);
        let r = requests(&p).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].path, "/api/v1/query_range");
        assert_eq!(
            r[0].params[0].1,
            "max (max_over_time(cpu_usage_user{hostname=\"host_3\"}[60000ms] offset -59999ms))"
        );
        assert_eq!(r[0].params[1].1, "1451606400.000");
        assert_eq!(r[0].params[2].1, "1451609940.000");
        assert_eq!(r[0].params[3].1, "60000ms");
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
        assert_eq!(r[0].params[1].1, "1451606460.000");
        assert_eq!(r[0].params[2].1, "1451609940.000");
        assert_eq!(r[1].bucket, Some(T0));
        // [00:00:30, 00:01:00) is (00:00:29.999, 00:00:59.999].
        assert_eq!(r[1].params[1].1, "1451606459.999");
        assert_eq!(
            r[1].params[0].1,
            "sum by (hostname) (sum_over_time(cpu_usage_user{hostname=\"host_3\"}[30000ms])) / \
             sum by (hostname) (count_over_time(cpu_usage_user{hostname=\"host_3\"}[30000ms]))"
        );
        assert_eq!(r[2].bucket, Some(T0 + 60 * MIN));
        assert_eq!(r[2].params[1].1, "1451610029.999");
    }

    #[test]
    fn groups_by_metric_keep_names_and_percentiles_use_histograms() {
        let mut p = plan(&["metric"], vec![Agg::Max], None, T0, T0 + MIN);
        p.fields = vec!["usage_user".into(), "usage_idle".into()];
        p.filters = vec![("hostname".into(), vec!["host_1".into(), "host_2".into()])];
        let e = expression(&p, Agg::Max, 60_000, 0).unwrap();
        assert_eq!(
            e,
            "max by (__name__) (max_over_time({__name__=~\"cpu_(usage_user|usage_idle)\", \
             hostname=~\"host_1|host_2\"}[60000ms]) keep_metric_names)"
        );
        assert!(expression(&p, Agg::Avg, 60_000, 0).is_err());
        assert_eq!(
            expression(&p, Agg::First, 60_000, 0).unwrap(),
            "min by (__name__) (first_over_time({__name__=~\"cpu_(usage_user|usage_idle)\", \
             hostname=~\"host_1|host_2\"}[60000ms]) keep_metric_names)"
        );
        let mut q = plan(
            &["datacenter"],
            vec![Agg::P95, Agg::P99],
            None,
            T0,
            T0 + MIN,
        );
        q.filters.clear();
        let r = requests(&q).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[1].params[0].1,
            "histogram_quantile(0.99, sum by (datacenter, vmrange) \
             (histogram_over_time(cpu_usage_user[60000ms])))"
        );
        assert_eq!(r[1].params[1].1, "1451606459.999");
        assert_eq!(
            selector(&["a.b".into()], &[("k".into(), vec!["x\"y".into()])]),
            "cpu_a.b{k=\"x\\\"y\"}"
        );
    }

    #[test]
    fn value_bounds_become_rollups_with_thresholds() {
        let range = 12 * 60 * MIN;
        // high-cpu-all: the readings above 90, over every series.
        let mut high = plan(&[], vec![Agg::Count], None, T0, T0 + range);
        high.filters.clear();
        high.values.gt = Some(90.0);
        let r = requests(&high).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].params[0].1,
            "sum (count_gt_over_time(cpu_usage_user[43200000ms], 90))"
        );
        assert_eq!(r[0].params[1].1, "1451649599.999");
        // Per host, a host without a reading above the bound has no row.
        let mut per_host = high.clone();
        per_host.group_by = vec!["hostname".into()];
        per_host.values = ValueFilter {
            le: Some(2.5),
            ..ValueFilter::default()
        };
        assert_eq!(
            expression(&per_host, Agg::Count, 1000, 0).unwrap(),
            "sum by (hostname) (count_le_over_time(cpu_usage_user[1000ms], 2.5)) > 0"
        );
        // high-cpu-hosts: a series' max above the bound is the max of its points above it.
        let mut hosts = plan(&["hostname"], vec![Agg::Max], None, T0, T0 + range);
        hosts.filters.clear();
        hosts.values.gt = Some(90.0);
        assert_eq!(
            requests(&hosts).unwrap()[0].params[0].1,
            "max by (hostname) (max_over_time(cpu_usage_user[43200000ms]) > 90)"
        );
        hosts.values = ValueFilter {
            ge: Some(-1.5),
            ..ValueFilter::default()
        };
        assert_eq!(
            expression(&hosts, Agg::Max, 1000, 0).unwrap(),
            "max by (hostname) (max_over_time(cpu_usage_user[1000ms]) >= -1.5)"
        );
        hosts.values = ValueFilter {
            lt: Some(10.0),
            ..ValueFilter::default()
        };
        assert_eq!(
            expression(&hosts, Agg::Min, 1000, 0).unwrap(),
            "min by (hostname) (min_over_time(cpu_usage_user[1000ms]) < 10)"
        );
        // No exact form: a max below a bound, an average, a count at least a bound, two bounds.
        assert!(expression(&hosts, Agg::Max, 1000, 0).is_err());
        assert!(expression(&hosts, Agg::Avg, 1000, 0).is_err());
        hosts.values = ValueFilter {
            ge: Some(90.0),
            ..ValueFilter::default()
        };
        let why = expression(&hosts, Agg::Count, 1000, 0).unwrap_err();
        assert_eq!(why, "count with value_ge=90");
        hosts.values.lt = Some(95.0);
        assert!(expression(&hosts, Agg::Max, 1000, 0).is_err());
    }

    #[test]
    fn lastpoint_is_each_host_s_last_point_over_the_whole_range() {
        let mut p = plan(&["hostname"], vec![Agg::Last], None, T0, T0 + 24 * 60 * MIN);
        p.filters.clear();
        let r = requests(&p).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].path, "/api/v1/query");
        assert_eq!(
            r[0].params[0].1,
            "max by (hostname) (last_over_time(cpu_usage_user[86400000ms]))"
        );
        assert_eq!(r[0].params[1].1, "1451692799.999");
    }

    #[test]
    fn answers_become_rows_keyed_like_raftmetrics() {
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
    }
}
