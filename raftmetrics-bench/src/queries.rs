//! The query set, after TSBS's cpu-only queries, each as `/aggregate` queries for the cluster
//! and as plain SQL for the reference, with the check that both answer the same.
//!
//! | name | what |
//! |---|---|
//! | `single-groupby-1-1-1` | max of `usage_user` of one host over one hour, by minute |
//! | `double-groupby-1` | avg of `usage_user` per host per hour over 12 hours |
//! | `cpu-max-all-8` | max of all ten fields of 8 hosts per hour over 8 hours (one query over the ten metrics, grouped by metric) |
//! | `high-cpu-all` | the number of readings of `usage_user` above 90 in 12 hours (`agg=count&value_gt=90`) |
//! | `high-cpu-hosts` | the hosts with a reading of `usage_user` above 90 in the same 12 hours, with their max |
//! | `lastpoint` | the last `usage_user` of every host (`agg=last`), over all the data |
//! | `groupby-orderby-limit` | max of `usage_user` by minute, the last 5 minutes before a time |
//! | `p95-p99-by-datacenter` | p95 and p99 of `usage_user` per datacenter, all points |
//!
//! TSBS's `high-cpu-all` returns every reading above 90 in the range; the query model
//! aggregates, so the set asks the number of those readings (the reference: `count(*) ...
//! WHERE value > 90`) and, as `high-cpu-hosts`, which hosts had them and their max (`GROUP BY
//! hostname` over the same `WHERE`). `lastpoint` is the latest reading of each host; the
//! reference breaks a tie of timestamps as the query model does, by the greatest value
//! (`last(value ORDER BY ts, value)`, where `arg_max(value, ts)` would return whichever tied
//! row its scan meets first).
//!
//! Hosts and time ranges are drawn from the seed, inside the data's time range (a range
//! longer than the data is cut to it). Answers must agree: counts, minima and maxima exactly,
//! sums and averages within 1e-9 relative (summation order), percentiles within 1% relative
//! of DuckDB's exact `quantile_disc` (the nearest-rank definition the query model uses).

use std::time::{Duration, Instant};

use duckdb::Connection;
use duckdb::types::Value;
use raftmetrics_client::raftmetrics_types::{AggValue, BucketResult};
use raftmetrics_client::{Agg, Client, Query, QueryResult, Timestamp};

use crate::error::{BenchError, Result};
use crate::generator::{Dataset, FIELDS, Rng};

/// Where the query parameters' stream is derived from the seed.
const QUERY_STREAM: u64 = 0x5155_4552_595f_5354;
const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;
/// Relative tolerance of percentiles: the sketch's guaranteed relative error.
pub const PERCENTILE_TOLERANCE: f64 = 0.01;
/// Relative tolerance of sums and averages (floating-point summation order).
const SUM_TOLERANCE: f64 = 1e-9;

/// One query of the set.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    /// What it asks, with its parameters.
    pub description: String,
    /// Sent to the cluster at once; their rows are keyed by metric when there are several.
    pub queries: Vec<Query>,
    /// The reference: key columns (VARCHAR) then value columns (DOUBLE), in `aggs` order.
    pub sql: String,
    key_columns: usize,
}

/// A row of an answer: its key (metric, group values, bucket start) and its values.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: Vec<String>,
    pub values: Vec<Option<f64>>,
}

fn query(params: &[(&str, String)]) -> Result<Query> {
    Query::from_params(params)
        .map_err(|e| BenchError::Config(format!("bad benchmark query {params:?}: {e}")))
}

fn rfc3339(micros: i64) -> String {
    Timestamp::from_micros(micros).to_rfc3339()
}

/// Whole-bucket expression of `ts` for a width in microseconds.
fn bucket_sql(width: i64) -> String {
    format!("CAST((ts // {width}) * {width} AS VARCHAR)")
}

/// The query set for the data of `dataset` in intervals `0..intervals`.
pub fn cases(dataset: &Dataset, intervals: u64) -> Result<Vec<Case>> {
    let mut rng = Rng::new(dataset.config.seed ^ QUERY_STREAM);
    let start = dataset.config.start.as_micros();
    let end = dataset.time_of(intervals).as_micros();
    let step = dataset.config.interval_micros;
    let scale = u64::from(dataset.config.scale);
    // A range of `len` inside the data, aligned to the interval; cut to the data when longer.
    let window = |rng: &mut Rng, len: i64| -> (i64, i64) {
        let len = len.min(end - start);
        let slots = ((end - start - len) / step) as u64;
        let from = start + rng.below(slots + 1) as i64 * step;
        (from, from + len)
    };
    let hours = |micros: i64| micros as f64 / HOUR as f64;

    let mut cases = Vec::new();

    let host = format!("host_{}", rng.below(scale));
    let (from, to) = window(&mut rng, HOUR);
    cases.push(Case {
        name: "single-groupby-1-1-1",
        description: format!(
            "max(usage_user) of {host}, {:.1} h by 1 min",
            hours(to - from)
        ),
        queries: vec![query(&[
            ("metric", "usage_user".into()),
            ("agg", "max".into()),
            ("tags", format!("hostname:{host}")),
            ("window", "1m".into()),
            ("from", rfc3339(from)),
            ("to", rfc3339(to)),
        ])?],
        sql: format!(
            "SELECT {}, max(value) FROM points WHERE metric = 'usage_user' AND hostname = '{host}'
             AND ts >= {from} AND ts < {to} GROUP BY ALL",
            bucket_sql(MINUTE)
        ),
        key_columns: 1,
    });

    let (from, to) = window(&mut rng, 12 * HOUR);
    cases.push(Case {
        name: "double-groupby-1",
        description: format!(
            "avg(usage_user) per host per hour, {:.1} h",
            hours(to - from)
        ),
        queries: vec![query(&[
            ("metric", "usage_user".into()),
            ("agg", "avg".into()),
            ("group_by", "hostname".into()),
            ("window", "1h".into()),
            ("from", rfc3339(from)),
            ("to", rfc3339(to)),
        ])?],
        sql: format!(
            "SELECT hostname, {}, avg(value) FROM points WHERE metric = 'usage_user'
             AND ts >= {from} AND ts < {to} GROUP BY ALL",
            bucket_sql(HOUR)
        ),
        key_columns: 2,
    });

    let mut hosts: Vec<u64> = Vec::new();
    while hosts.len() < 8.min(scale as usize) {
        let h = rng.below(scale);
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    let filter = hosts
        .iter()
        .map(|h| format!("hostname:host_{h}"))
        .collect::<Vec<_>>()
        .join(",");
    let in_list = hosts
        .iter()
        .map(|h| format!("'host_{h}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let (from, to) = window(&mut rng, 8 * HOUR);
    cases.push(Case {
        name: "cpu-max-all-8",
        description: format!(
            "max of 10 fields, {} hosts, per hour, {:.1} h",
            hosts.len(),
            hours(to - from)
        ),
        queries: vec![query(&[
            ("metric", FIELDS.join(",")),
            ("group_by", "metric".into()),
            ("agg", "max".into()),
            ("tags", filter.clone()),
            ("window", "1h".into()),
            ("from", rfc3339(from)),
            ("to", rfc3339(to)),
        ])?],
        sql: format!(
            "SELECT metric, {}, max(value) FROM points WHERE hostname IN ({in_list})
             AND ts >= {from} AND ts < {to} GROUP BY ALL",
            bucket_sql(HOUR)
        ),
        key_columns: 2,
    });

    let (from, to) = window(&mut rng, 12 * HOUR);
    cases.push(Case {
        name: "high-cpu-all",
        description: format!("readings of usage_user > 90, {:.1} h", hours(to - from)),
        queries: vec![query(&[
            ("metric", "usage_user".into()),
            ("agg", "count".into()),
            ("value_gt", "90".into()),
            ("from", rfc3339(from)),
            ("to", rfc3339(to)),
        ])?],
        sql: format!(
            "SELECT count(*) FROM points WHERE metric = 'usage_user' AND value > 90
             AND ts >= {from} AND ts < {to}"
        ),
        key_columns: 0,
    });
    cases.push(Case {
        name: "high-cpu-hosts",
        description: format!(
            "hosts with usage_user > 90 and their max, {:.1} h",
            hours(to - from)
        ),
        queries: vec![query(&[
            ("metric", "usage_user".into()),
            ("agg", "max".into()),
            ("group_by", "hostname".into()),
            ("value_gt", "90".into()),
            ("from", rfc3339(from)),
            ("to", rfc3339(to)),
        ])?],
        sql: format!(
            "SELECT hostname, max(value) FROM points WHERE metric = 'usage_user' AND value > 90
             AND ts >= {from} AND ts < {to} GROUP BY hostname"
        ),
        key_columns: 1,
    });

    cases.push(Case {
        name: "lastpoint",
        description: "last usage_user per host, all points".into(),
        queries: vec![query(&[
            ("metric", "usage_user".into()),
            ("agg", "last".into()),
            ("group_by", "hostname".into()),
        ])?],
        sql: "SELECT hostname, last(value ORDER BY ts, value) FROM points
              WHERE metric = 'usage_user' GROUP BY hostname"
            .into(),
        key_columns: 1,
    });

    let (_, to) = window(&mut rng, HOUR);
    cases.push(Case {
        name: "groupby-orderby-limit",
        description: "max(usage_user) by minute, last 5 minutes before a time".into(),
        queries: vec![query(&[
            ("metric", "usage_user".into()),
            ("agg", "max".into()),
            ("window", "1m".into()),
            ("to", rfc3339(to)),
            ("order_by", "key:desc".into()),
            ("limit", "5".into()),
        ])?],
        sql: format!(
            "SELECT CAST(b AS VARCHAR), m FROM (
               SELECT (ts // {MINUTE}) * {MINUTE} AS b, max(value) AS m FROM points
               WHERE metric = 'usage_user' AND ts < {to} GROUP BY b ORDER BY b DESC LIMIT 5)"
        ),
        key_columns: 1,
    });

    cases.push(Case {
        name: "p95-p99-by-datacenter",
        description: "p95, p99 of usage_user per datacenter, all points".into(),
        queries: vec![query(&[
            ("metric", "usage_user".into()),
            ("agg", "p95,p99".into()),
            ("group_by", "datacenter".into()),
        ])?],
        sql: "SELECT datacenter, quantile_disc(value, 0.95), quantile_disc(value, 0.99)
              FROM points WHERE metric = 'usage_user' GROUP BY datacenter"
            .into(),
        key_columns: 1,
    });
    Ok(cases)
}

impl Case {
    /// The aggregations of every value column.
    fn aggs(&self) -> &[Agg] {
        &self.queries[0].aggs
    }

    /// Runs the case's queries on the cluster at once; their rows, sorted by key.
    pub async fn run_cluster(&self, client: &Client) -> Result<Vec<Row>> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, q) in self.queries.iter().enumerate() {
            let client = client.clone();
            let q = q.clone();
            tasks.spawn(async move { (i, client.aggregate(&q).await) });
        }
        let mut results: Vec<Option<QueryResult>> = vec![None; self.queries.len()];
        while let Some(joined) = tasks.join_next().await {
            let (i, answer) = joined.map_err(|e| BenchError::Task(e.to_string()))?;
            results[i] = Some(answer?.into_complete()?);
        }
        let mut rows = Vec::new();
        for result in results.into_iter().flatten() {
            rows.extend(self.rows_of(&result));
        }
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(rows)
    }

    fn rows_of(&self, result: &QueryResult) -> Vec<Row> {
        let q = &self.queries[0];
        let prefix: Vec<String> = if self.queries.len() > 1 {
            vec![result.metric.clone()]
        } else {
            Vec::new()
        };
        let values =
            |aggs: &[AggValue]| -> Vec<Option<f64>> { aggs.iter().map(|a| a.value).collect() };
        let bucket_rows = |key: &[String], buckets: &[BucketResult]| {
            buckets
                .iter()
                .map(|b| Row {
                    key: key
                        .iter()
                        .cloned()
                        .chain([b.start.as_micros().to_string()])
                        .collect(),
                    values: values(&b.aggregations),
                })
                .collect::<Vec<_>>()
        };
        let mut rows = Vec::new();
        if q.group_by.is_empty() {
            if q.window_micros.is_some() {
                rows = bucket_rows(&prefix, &result.buckets);
            } else {
                rows.push(Row {
                    key: prefix,
                    values: values(&result.aggregations),
                });
            }
        } else {
            for g in &result.groups {
                let key: Vec<String> = prefix
                    .iter()
                    .cloned()
                    .chain(g.key.iter().map(|(_, v)| v.clone().unwrap_or_default()))
                    .collect();
                match q.window_micros {
                    Some(_) => rows.extend(bucket_rows(&key, &g.buckets)),
                    None => rows.push(Row {
                        key,
                        values: values(&g.aggregations),
                    }),
                }
            }
        }
        rows
    }

    /// Runs the reference SQL; its rows, sorted by key.
    pub fn run_reference(&self, conn: &Connection) -> Result<Vec<Row>> {
        let mut stmt = conn.prepare(&self.sql)?;
        let width = self.key_columns + self.aggs().len();
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut key = Vec::with_capacity(self.key_columns);
            let mut values = Vec::with_capacity(width - self.key_columns);
            for i in 0..width {
                let v: Value = row.get(i)?;
                if i < self.key_columns {
                    key.push(match v {
                        Value::Text(s) => s,
                        Value::Null => String::new(),
                        other => format!("{other:?}"),
                    });
                } else {
                    values.push(number(&v));
                }
            }
            out.push(Row { key, values });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Whether the cluster's rows match the reference's; `Err` says where they differ.
    pub fn check(&self, cluster: &[Row], reference: &[Row]) -> Result<()> {
        let fail = |why: String| Err(BenchError::Mismatch(format!("{}: {why}", self.name)));
        if cluster.len() != reference.len() {
            return fail(format!(
                "{} rows from the cluster, {} from the reference",
                cluster.len(),
                reference.len()
            ));
        }
        if cluster.is_empty() {
            return fail("no rows at all".into());
        }
        for (ours, theirs) in cluster.iter().zip(reference) {
            if ours.key != theirs.key {
                return fail(format!("row {:?} against {:?}", ours.key, theirs.key));
            }
            for ((agg, a), b) in self.aggs().iter().zip(&ours.values).zip(&theirs.values) {
                if !agrees(*agg, *a, *b) {
                    return fail(format!(
                        "{agg} of {:?}: cluster {a:?}, reference {b:?}",
                        ours.key
                    ));
                }
            }
        }
        Ok(())
    }

    /// Largest relative difference of percentiles between the two answers (0 without any).
    pub fn worst_percentile_error(&self, cluster: &[Row], reference: &[Row]) -> f64 {
        let mut worst: f64 = 0.0;
        for (ours, theirs) in cluster.iter().zip(reference) {
            for ((agg, a), b) in self.aggs().iter().zip(&ours.values).zip(&theirs.values) {
                if let (true, Some(a), Some(b)) = (agg.is_percentile(), a, b)
                    && *b != 0.0
                {
                    worst = worst.max((a - b).abs() / b.abs());
                }
            }
        }
        worst
    }

    /// Whether the case asks for percentiles.
    pub fn has_percentiles(&self) -> bool {
        self.aggs().iter().any(|a| a.is_percentile())
    }
}

fn number(v: &Value) -> Option<f64> {
    match *v {
        Value::Double(d) => Some(d),
        Value::Float(f) => Some(f64::from(f)),
        Value::BigInt(i) => Some(i as f64),
        Value::HugeInt(i) => Some(i as f64),
        Value::Int(i) => Some(f64::from(i)),
        Value::UBigInt(i) => Some(i as f64),
        _ => None,
    }
}

/// Whether two values of `agg` agree within its tolerance.
fn agrees(agg: Agg, cluster: Option<f64>, reference: Option<f64>) -> bool {
    match (cluster, reference) {
        (None, None) => true,
        (Some(a), Some(b)) => match agg {
            Agg::Count | Agg::Min | Agg::Max | Agg::Last | Agg::First => a == b,
            Agg::Sum | Agg::Avg => (a - b).abs() <= SUM_TOLERANCE * a.abs().max(b.abs()).max(1.0),
            Agg::Percentile(_) => (a - b).abs() <= PERCENTILE_TOLERANCE * b.abs() + 1e-12,
        },
        _ => false,
    }
}

/// Median and answer of `runs` timed calls of `f`, after one untimed warm-up call.
pub async fn time_runs<F, Fut, T>(runs: usize, mut f: F) -> Result<(Duration, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut last = f().await?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        last = f().await?;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    Ok((times[times.len() / 2], last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::Config;

    #[test]
    fn tolerances_follow_the_aggregation() {
        assert!(agrees(Agg::Max, Some(90.5), Some(90.5)));
        assert!(!agrees(Agg::Max, Some(90.5), Some(90.500001)));
        assert!(agrees(Agg::Avg, Some(1.0 + 1e-12), Some(1.0)));
        assert!(agrees(Agg::P95, Some(99.0), Some(99.9)));
        assert!(!agrees(Agg::P95, Some(98.0), Some(99.9)));
        assert!(!agrees(Agg::Count, None, Some(1.0)));
        assert!(agrees(Agg::Avg, None, None));
    }

    #[test]
    fn every_case_is_a_valid_query_inside_the_data() {
        let d = Dataset::new(Config::new(1, 10));
        let intervals = 500;
        let cases = cases(&d, intervals).expect("cases");
        assert_eq!(cases.len(), 8);
        let end = d.time_of(intervals);
        for c in &cases {
            assert!(!c.queries.is_empty(), "{}", c.name);
            for q in &c.queries {
                q.validate().expect("valid");
                assert!(q.from.is_none_or(|f| f >= d.config.start), "{}", c.name);
                assert!(q.to.is_none_or(|t| t <= end), "{}", c.name);
            }
        }
        // cpu-max-all: one query over the ten fields, grouped by metric.
        assert_eq!(cases[2].queries.len(), 1);
        assert_eq!(cases[2].queries[0].metrics(), FIELDS);
        assert_eq!(cases[2].queries[0].group_by, ["metric"]);
        // The same seed draws the same parameters.
        let again = super::cases(&d, intervals).expect("cases");
        assert_eq!(cases[0].sql, again[0].sql);
        // The TSBS forms: readings above 90, the hosts that had them, the last point.
        let by_name = |n: &str| cases.iter().find(|c| c.name == n).expect(n);
        let (high, hosts) = (by_name("high-cpu-all"), by_name("high-cpu-hosts"));
        assert_eq!(high.queries[0].aggs, [Agg::Count]);
        assert_eq!(high.queries[0].values.gt, Some(90.0));
        assert!(high.queries[0].group_by.is_empty());
        assert_eq!(hosts.queries[0].values.gt, Some(90.0));
        assert_eq!(hosts.queries[0].group_by, ["hostname"]);
        assert_eq!(
            (high.queries[0].from, high.queries[0].to),
            (hosts.queries[0].from, hosts.queries[0].to)
        );
        let last = &by_name("lastpoint").queries[0];
        assert_eq!(last.aggs, [Agg::Last]);
        assert_eq!((last.from, last.to, last.window_micros), (None, None, None));
    }

    #[test]
    fn references_select_above_the_bound_and_break_ties_by_value() {
        let d = Dataset::new(Config::new(1, 10));
        let cases = cases(&d, 500).expect("cases");
        let by_name = |n: &str| cases.iter().find(|c| c.name == n).expect(n);
        let high = by_name("high-cpu-all");
        let from = high.queries[0].from.expect("from").as_micros();
        let conn = Connection::open_in_memory().expect("duckdb");
        conn.execute_batch(
            "CREATE TABLE points (metric VARCHAR, hostname VARCHAR, datacenter VARCHAR,
             ts BIGINT, value DOUBLE)",
        )
        .expect("table");
        let rows: [(&str, &str, i64, f64); 8] = [
            ("usage_user", "host_1", from, 95.0),
            ("usage_user", "host_1", from + 10, 90.0),
            ("usage_user", "host_2", from + 10, 91.0),
            ("usage_user", "host_2", from - 10, 99.0),
            ("usage_idle", "host_2", from + 20, 99.0),
            // Two points of host_3 at its latest time: `last` is the greater.
            ("usage_user", "host_3", from + 30, 7.0),
            ("usage_user", "host_3", from + 30, 8.0),
            ("usage_user", "host_3", from + 30, 5.0),
        ];
        for (metric, host, ts, value) in rows {
            conn.execute(
                "INSERT INTO points VALUES (?, ?, 'dc', ?, ?)",
                duckdb::params![metric, host, ts, value],
            )
            .expect("insert");
        }
        let row = |key: &[&str], v: f64| Row {
            key: key.iter().map(|k| k.to_string()).collect(),
            values: vec![Some(v)],
        };
        assert_eq!(high.run_reference(&conn).unwrap(), [row(&[], 2.0)]);
        assert_eq!(
            by_name("high-cpu-hosts").run_reference(&conn).unwrap(),
            [row(&["host_1"], 95.0), row(&["host_2"], 91.0)]
        );
        assert_eq!(
            by_name("lastpoint").run_reference(&conn).unwrap(),
            [
                row(&["host_1"], 90.0),
                row(&["host_2"], 91.0),
                row(&["host_3"], 8.0)
            ]
        );
    }
}
