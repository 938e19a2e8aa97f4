//! A query of the set as the peers are asked it: what `/aggregate` asks RaftMetrics, resolved
//! against the data's time range into fields, exact tag filters, groups, aggregations and
//! the buckets with the exact part of each that holds points (`[lo, hi)`), so that each
//! peer's translation can select exactly the points RaftMetrics aggregates.
//!
//! Bounds on values (`value_gt`, ...) travel with the plan; each peer translates the ones it
//! can say exactly and refuses the others.
//!
//! The rows the peers' answers become have RaftMetrics' keys (see `queries::Row`): the group
//! values in `group_by` order (`metric` as the field's name), then a bucket's start in
//! microseconds when the query has buckets.

use raftmetrics_client::raftmetrics_types::query::OrderKey;
use raftmetrics_client::{Agg, ValueFilter};

use crate::queries::{Case, Row};

/// The line protocol measurement the load tool writes (`cpu`): VictoriaMetrics names the
/// series `cpu_<field>`, InfluxDB keeps the fields in measurement `cpu`.
pub const MEASUREMENT: &str = "cpu";

/// A bucket: its start (the row key) and the part of it that holds the query's points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub start: i64,
    /// Inclusive, microseconds.
    pub lo: i64,
    /// Exclusive, microseconds.
    pub hi: i64,
}

/// A query of the set, ready for translation.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Fields (RaftMetrics metrics), at least one.
    pub fields: Vec<String>,
    /// `metric` or tag keys, in RaftMetrics' order.
    pub group_by: Vec<String>,
    /// Tag key and the exact values it may take.
    pub filters: Vec<(String, Vec<String>)>,
    /// Bounds on the points' values.
    pub values: ValueFilter,
    pub aggs: Vec<Agg>,
    /// Points in `[from, to)`, microseconds.
    pub from: i64,
    pub to: i64,
    /// Bucket width in microseconds, when the rows are buckets.
    pub window: Option<i64>,
    /// The buckets, in time order, when the rows are buckets.
    pub buckets: Vec<Bucket>,
    /// Newest buckets first, this many (`order_by=key:desc&limit=n`); `buckets` holds them.
    pub newest: Option<usize>,
}

impl Plan {
    /// The plan of `case` over data in `[data_start, data_end)`; `Err` says what has no
    /// translation.
    pub fn new(case: &Case, data_start: i64, data_end: i64) -> Result<Plan, String> {
        let [q] = case.queries.as_slice() else {
            return Err("more than one query".into());
        };
        if q.rolling {
            return Err("rolling windows".into());
        }
        let fields: Vec<String> = q.metrics().iter().map(|m| m.to_string()).collect();
        let by_metric = q.group_by.iter().any(|g| g == "metric");
        if fields.len() > 1 && !by_metric {
            return Err("several metrics merged into one aggregate".into());
        }
        let mut filters = Vec::new();
        for f in &q.filters {
            if f.patterns.iter().any(|p| p.contains(['*', '?'])) {
                return Err(format!("a wildcard filter on {}", f.key));
            }
            filters.push((f.key.clone(), f.patterns.clone()));
        }
        let from = q.from.map_or(data_start, |t| t.as_micros().max(data_start));
        let to = q.to.map_or(data_end, |t| t.as_micros().min(data_end));
        let newest = match (q.order_by, q.limit) {
            (None, None) => None,
            (Some(o), Some(n)) if o.key == OrderKey::Key && o.descending => Some(n),
            _ => return Err("an order or limit other than the newest buckets".into()),
        };
        let window = q.window_micros;
        if newest.is_some() && window.is_none() {
            return Err("a limit without buckets".into());
        }
        let mut buckets = window.map(|w| buckets(from, to, w)).unwrap_or_default();
        if let Some(n) = newest {
            buckets.drain(..buckets.len().saturating_sub(n));
        }
        let from = buckets.first().map_or(from, |b| b.lo);
        Ok(Plan {
            fields,
            group_by: q.group_by.clone(),
            filters,
            values: q.values,
            aggs: q.aggs.clone(),
            from,
            to,
            window,
            buckets,
            newest,
        })
    }

    /// Whether the rows are keyed by metric (the field).
    pub fn by_metric(&self) -> bool {
        self.group_by.iter().any(|g| g == "metric")
    }

    /// The row key of a group (`value_of` gives a group tag's value, `metric` is the
    /// field's) and bucket.
    pub fn key(
        &self,
        field: &str,
        value_of: impl Fn(&str) -> Option<String>,
        bucket: Option<i64>,
    ) -> Vec<String> {
        self.group_by
            .iter()
            .map(|g| {
                if g == "metric" {
                    field.to_string()
                } else {
                    value_of(g).unwrap_or_default()
                }
            })
            .chain(bucket.map(|b| b.to_string()))
            .collect()
    }

    /// Rows as RaftMetrics gives them: sorted by key.
    pub fn finish(&self, mut rows: Vec<Row>) -> Vec<Row> {
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }
}

/// The buckets of width `w` (aligned on the epoch, as RaftMetrics' are) that `[from, to)`
/// touches, each with the part of it inside.
pub fn buckets(from: i64, to: i64, w: i64) -> Vec<Bucket> {
    let mut out = Vec::new();
    let mut start = from.div_euclid(w) * w;
    while start < to {
        out.push(Bucket {
            start,
            lo: start.max(from),
            hi: (start + w).min(to),
        });
        start += w;
    }
    out
}

/// Rows gathered from answers that come a value at a time (one aggregation of one group and
/// bucket).
#[derive(Default)]
pub struct Rows {
    rows: std::collections::BTreeMap<Vec<String>, Vec<Option<f64>>>,
}

impl Rows {
    /// Sets value `agg` (of `aggs`) of the row `key`.
    pub fn set(&mut self, key: Vec<String>, aggs: usize, agg: usize, value: Option<f64>) {
        let values = self.rows.entry(key).or_insert_with(|| vec![None; aggs]);
        values[agg] = value;
    }

    pub fn into_rows(self) -> Vec<Row> {
        self.rows
            .into_iter()
            .map(|(key, values)| Row { key, values })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{Config, Dataset};
    use crate::queries;

    const MIN: i64 = 60_000_000;

    #[test]
    fn buckets_cut_at_the_range() {
        let b = buckets(30_000_000, 2 * MIN + 10_000_000, MIN);
        assert_eq!(
            b,
            [
                Bucket {
                    start: 0,
                    lo: 30_000_000,
                    hi: MIN
                },
                Bucket {
                    start: MIN,
                    lo: MIN,
                    hi: 2 * MIN
                },
                Bucket {
                    start: 2 * MIN,
                    lo: 2 * MIN,
                    hi: 2 * MIN + 10_000_000
                },
            ]
        );
        assert_eq!(buckets(MIN, 2 * MIN, MIN).len(), 1);
        assert!(buckets(MIN, MIN, MIN).is_empty());
    }

    #[test]
    fn every_case_of_the_set_has_a_plan() {
        let d = Dataset::new(Config::new(1, 10));
        let intervals = 5_000;
        let (start, end) = (d.config.start.as_micros(), d.time_of(intervals).as_micros());
        let cases = queries::cases(&d, intervals).unwrap();
        for c in &cases {
            let p = Plan::new(c, start, end).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert!(
                p.from >= start && p.to <= end && p.from < p.to,
                "{}",
                c.name
            );
            if let Some(w) = p.window {
                let first = p.buckets.first().unwrap();
                let last = p.buckets.last().unwrap();
                assert_eq!((first.lo, last.hi), (p.from, p.to), "{}", c.name);
                assert!(p.buckets.iter().all(|b| b.start % w == 0 && b.lo < b.hi));
            }
        }
        let by_name = |n: &str| {
            let c = cases.iter().find(|c| c.name == n).unwrap();
            Plan::new(c, start, end).unwrap()
        };
        let last = by_name("lastpoint");
        assert_eq!(
            (last.aggs.as_slice(), last.window),
            ([Agg::Last].as_slice(), None)
        );
        assert_eq!((last.from, last.to), (start, end));
        let newest = by_name("groupby-orderby-limit");
        assert_eq!(newest.newest, Some(5));
        assert_eq!(newest.buckets.len(), 5);
        let all8 = by_name("cpu-max-all-8");
        assert!(all8.by_metric());
        assert_eq!(all8.fields.len(), 10);
        assert_eq!(all8.filters[0].1.len(), 8);
        let high = by_name("high-cpu-all");
        assert_eq!(
            (high.values.gt, high.aggs.as_slice()),
            (Some(90.0), [Agg::Count].as_slice())
        );
        let hosts = by_name("high-cpu-hosts");
        assert_eq!(
            (hosts.values.gt, hosts.group_by.as_slice()),
            (Some(90.0), ["hostname".to_string()].as_slice())
        );
        assert_eq!((hosts.from, hosts.to), (high.from, high.to));
        let p = by_name("p95-p99-by-datacenter");
        assert_eq!((p.from, p.to), (start, end));
        assert_eq!(p.key("usage_user", |_| Some("eu".into()), None), ["eu"]);
        assert_eq!(
            all8.key("usage_idle", |_| None, Some(7)),
            ["usage_idle", "7"]
        );
    }

    #[test]
    fn finishing_sorts() {
        let d = Dataset::new(Config::new(1, 10));
        let cases = queries::cases(&d, 5_000).unwrap();
        let hosts = cases.iter().find(|c| c.name == "high-cpu-hosts").unwrap();
        let plan = Plan::new(hosts, 0, d.time_of(5_000).as_micros()).unwrap();
        let mut rows = Rows::default();
        rows.set(vec!["host_2".into()], 1, 0, Some(95.0));
        rows.set(vec!["host_1".into()], 1, 0, Some(91.0));
        let out = plan.finish(rows.into_rows());
        let keys: Vec<&str> = out.iter().map(|r| r.key[0].as_str()).collect();
        assert_eq!(keys, ["host_1", "host_2"]);
    }
}
