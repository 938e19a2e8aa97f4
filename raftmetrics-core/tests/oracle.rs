//! Oracle tests: seeded data split over several DuckDB stores as partitions, queried through
//! partial states + merge + finalize, must equal one plain DuckDB query over all rows.
//! count/sum/min/max/avg exactly (relative 1e-9), p50/p95/p99 within the sketch's relative
//! error of DuckDB's `quantile_disc`, `last` and `first` exactly (DuckDB's ordered
//! `last(value ORDER BY ts, value)` and `first(value ORDER BY ts, value)`, over data with
//! many points at equal timestamps in different partitions). Value bounds are plain SQL
//! conditions on `value`.

use std::collections::BTreeMap;

use duckdb::{Connection, params};
use raftmetrics_core::aggregate::{
    AggValue, Coverage, PartialAggregate, QueryResult, finalize, find,
};
use raftmetrics_core::model::{Limits, validate_batch};
use raftmetrics_core::partition::{HashPartitioner, Partitioner};
use raftmetrics_core::query::{Agg, OrderKey, Query};
use raftmetrics_core::store::conformance::{HOSTILE, SplitMix};
use raftmetrics_core::store::{DuckDbStore, PartitionWrite, Store};
use raftmetrics_core::{Point, SketchConfig, Timestamp};

const PARTITIONS: u32 = 16;
const STORES: usize = 4;
const T0: i64 = 1_705_708_800_000_000; // 2024-01-20T00:00:00Z
const HOUR: i64 = 3_600_000_000;

struct Fixture {
    stores: Vec<DuckDbStore>,
    oracle: Connection,
    cfg: SketchConfig,
}

/// Synthetic points: several metrics, hosts in three datacenters, an optional `env` tag,
/// values of both signs with zeros and repeats, over two days; plus two real CloudWatch
/// series (heavy-tailed) under their own metrics.
fn points(seed: u64) -> Vec<Point> {
    let mut rng = SplitMix(seed);
    let mut out = Vec::new();
    let hosts: Vec<String> = (0..8)
        .map(|i| format!("web-{i}"))
        .chain((0..4).map(|i| format!("api-{i}")))
        .chain(HOSTILE.iter().map(|s| s.to_string()))
        .collect();
    for _ in 0..12_000 {
        let host = &hosts[rng.below(hosts.len() as u64) as usize];
        let dc = ["us-west", "us-east", "eu-central"][rng.below(3) as usize];
        let metric = ["cpu_usage", "cpu_usage", "cpu_usage", "mem_used"][rng.below(4) as usize];
        let value = match rng.below(10) {
            0 => 0.0,
            1 => -(rng.next_f64() * 50.0),
            2 => (rng.below(5) as f64) * 10.0,
            3 => rng.next_f64() * 1e6,
            _ => 20.0 + rng.next_f64() * 60.0,
        };
        let mut ts = T0 + rng.below(48 * HOUR as u64) as i64;
        if rng.below(3) == 0 {
            // Whole minutes, so that points sit exactly on bucket and range boundaries.
            ts -= ts % 60_000_000;
        }
        let mut p = Point::new(metric, value)
            .at(Timestamp::from_micros(ts))
            .tag("host", host.as_str())
            .tag("datacenter", dc);
        match rng.below(3) {
            0 => p = p.tag("env", "prod"),
            1 => p = p.tag("env", "staging"),
            _ => {}
        }
        out.push(p);
    }
    // A sparse, heavy-tailed metric: few points per group, spread over many orders of
    // magnitude, so that a percentile off by one rank is far outside the error bound.
    for _ in 0..400 {
        let host = &hosts[rng.below(hosts.len() as u64) as usize];
        let ts = T0 + rng.below(48 * HOUR as u64) as i64;
        let value = (rng.next_f64() * 30.0).exp() * if rng.below(5) == 0 { -1.0 } else { 1.0 };
        out.push(
            Point::new("latency_ms", value)
                .at(Timestamp::from_micros(ts))
                .tag("host", host.as_str())
                .tag("datacenter", "us-west"),
        );
    }
    // Ties: points of several series (so several partitions), duplicates of one series
    // among them, at the very first and last timestamps of `cpu_usage` and on bucket
    // boundaries, with different values.
    for ts in [T0, T0 + 48 * HOUR, T0 + 6 * HOUR, T0 + 30 * HOUR - 1] {
        for _ in 0..24 {
            let host = &hosts[rng.below(6) as usize];
            let dc = ["us-west", "us-east", "eu-central"][rng.below(3) as usize];
            let value = (rng.below(9) as f64 - 4.0) * 12.5;
            out.push(
                Point::new("cpu_usage", value)
                    .at(Timestamp::from_micros(ts))
                    .tag("host", host.as_str())
                    .tag("datacenter", dc),
            );
        }
    }
    // A metric of nothing but ties: every point on one of 40 half hours, values from a
    // handful, so that every group and bucket ends and starts with several points.
    for _ in 0..3_000 {
        let host = &hosts[rng.below(hosts.len() as u64) as usize];
        let dc = ["us-west", "us-east", "eu-central"][rng.below(3) as usize];
        let ts = T0 + rng.below(40) as i64 * HOUR / 2;
        let value = rng.below(7) as f64 - 3.0;
        let mut p = Point::new("ties", value)
            .at(Timestamp::from_micros(ts))
            .tag("host", host.as_str())
            .tag("datacenter", dc);
        if rng.below(2) == 0 {
            p = p.tag("env", "prod");
        }
        out.push(p);
    }
    for (file, metric, host) in [
        (
            include_str!("data/ec2_network_in_257a54.csv"),
            "net_in",
            "nab-net",
        ),
        (
            include_str!("data/ec2_cpu_utilization_5f5533.csv"),
            "cpu_usage",
            "nab-cpu",
        ),
    ] {
        for line in file.lines().skip(1) {
            let (ts, value) = line.split_once(',').unwrap();
            out.push(
                Point::new(metric, value.parse().unwrap())
                    .at(Timestamp::parse(ts).unwrap())
                    .tag("host", host)
                    .tag("datacenter", "eu-central")
                    .tag("env", "prod"),
            );
        }
    }
    out
}

fn fixture(seed: u64) -> Fixture {
    let now = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
    let records = validate_batch(points(seed), now, &Limits::default()).unwrap();
    let oracle = Connection::open_in_memory().unwrap();
    oracle
        .execute_batch(
            "CREATE TABLE staging (metric VARCHAR, host VARCHAR, datacenter VARCHAR, env VARCHAR, ts BIGINT, value DOUBLE);",
        )
        .unwrap();
    {
        let mut app = oracle.appender("staging").unwrap();
        for r in &records {
            app.append_row(params![
                r.metric(),
                r.tags().get("host"),
                r.tags().get("datacenter"),
                r.tags().get("env"),
                r.timestamp.as_micros(),
                r.value
            ])
            .unwrap();
        }
    }
    oracle
        .execute_batch(
            "CREATE TABLE pts AS SELECT metric, host, datacenter, env, make_timestamp(ts) AS ts, value FROM staging;",
        )
        .unwrap();
    let partitioner = HashPartitioner::new(PARTITIONS).unwrap();
    let mut by_partition: BTreeMap<u32, Vec<_>> = BTreeMap::new();
    for r in records {
        by_partition
            .entry(partitioner.partition_of(r.partition_key()))
            .or_default()
            .push(r);
    }
    assert!(
        by_partition.len() > 8,
        "data must spread over the partitions"
    );
    let stores: Vec<DuckDbStore> = (0..STORES)
        .map(|_| DuckDbStore::open_in_memory().unwrap())
        .collect();
    for (p, rows) in &by_partition {
        // Several log entries per partition, as replication would deliver them.
        let writes: Vec<PartitionWrite<'_>> = rows
            .chunks(700)
            .enumerate()
            .map(|(i, chunk)| PartitionWrite::new(*p, i as u64 + 1, chunk))
            .collect();
        stores[*p as usize % STORES].apply(&writes).unwrap();
    }
    Fixture {
        stores,
        oracle,
        cfg: SketchConfig::default(),
    }
}

fn cluster(fx: &Fixture, q: &Query) -> QueryResult {
    q.validate().unwrap();
    let mut merged = PartialAggregate::default();
    // Merge in a different order than the stores are numbered: merge order must not matter.
    for (i, store) in fx.stores.iter().enumerate().rev() {
        let owned: Vec<u32> = (0..PARTITIONS)
            .filter(|p| *p as usize % STORES == i)
            .collect();
        merged.merge(store.compute(&owned, q, &fx.cfg).unwrap());
    }
    finalize(q, &fx.cfg, &merged, Coverage::complete())
}

/// One row of the oracle: group values, window start, then count, sum, min, max, avg,
/// p50, p95, p99.
#[derive(Debug, Clone)]
struct Row {
    group: Vec<Option<String>>,
    start: Option<i64>,
    count: u64,
    vals: BTreeMap<Agg, Option<f64>>,
}

fn like_pattern(glob: &str) -> String {
    let mut out = String::new();
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

const ORACLE_AGGS: &str = "count(*), sum(value), min(value), max(value), avg(value),
    quantile_disc(value, 0.5), quantile_disc(value, 0.95), quantile_disc(value, 0.99),
    last(value ORDER BY ts, value), first(value ORDER BY ts, value)";

/// The aggregations of [`ORACLE_AGGS`] after `count(*)`, in order.
const ORACLE_COLUMNS: [Agg; 9] = [
    Agg::Sum,
    Agg::Min,
    Agg::Max,
    Agg::Avg,
    Agg::P50,
    Agg::P95,
    Agg::P99,
    Agg::Last,
    Agg::First,
];

/// Runs the query on the plain DuckDB table, written independently of the engine: SQL
/// filters with LIKE, `time_bucket` for windows, a join against window ends for rolling.
fn oracle(fx: &Fixture, q: &Query, grouped: bool, windowed: bool) -> Vec<Row> {
    let mut conds = vec!["metric = ?".to_string()];
    let mut args: Vec<duckdb::types::Value> = vec![q.metric.clone().into()];
    if let Some(from) = q.from {
        conds.push("ts >= make_timestamp(?::BIGINT)".into());
        args.push(from.as_micros().into());
    }
    if let Some(to) = q.to {
        conds.push("ts < make_timestamp(?::BIGINT)".into());
        args.push(to.as_micros().into());
    }
    for (cond, bound) in ["value > ?", "value >= ?", "value < ?", "value <= ?"]
        .into_iter()
        .zip(q.values.bounds())
    {
        if let Some(v) = bound {
            conds.push(cond.into());
            args.push(v.into());
        }
    }
    for f in &q.filters {
        assert!(["host", "datacenter", "env"].contains(&f.key.as_str()));
        let ors: Vec<String> = f
            .patterns
            .iter()
            .map(|_| format!("{} LIKE ? ESCAPE '\\'", f.key))
            .collect();
        conds.push(format!("({})", ors.join(" OR ")));
        args.extend(f.patterns.iter().map(|p| like_pattern(p).into()));
    }
    let groups: Vec<String> = if grouped { q.group_by.clone() } else { vec![] };
    for g in &groups {
        assert!(["host", "datacenter", "env"].contains(&g.as_str()));
    }
    let gcols = groups.iter().map(|g| format!("{g}, ")).collect::<String>();
    let where_ = conds.join(" AND ");
    let sql = match (windowed, q.rolling) {
        (false, _) => format!(
            "SELECT {gcols} NULL::BIGINT, {ORACLE_AGGS} FROM pts WHERE {where_} GROUP BY ALL"
        ),
        (true, false) => format!(
            "SELECT {gcols} epoch_us(time_bucket(to_microseconds({w}::BIGINT), ts, TIMESTAMP '1970-01-01')), {ORACLE_AGGS}
             FROM pts WHERE {where_} GROUP BY ALL",
            w = q.window_micros.unwrap()
        ),
        (true, true) => {
            let (w, s) = (q.window_micros.unwrap(), q.step_micros().unwrap());
            // Window ends: every step boundary from the end of the first step with data to
            // the end of the last one (per group).
            format!(
                "WITH sel AS (SELECT * FROM pts WHERE {where_}),
                 ext AS (SELECT {gcols} (min(epoch_us(ts)) // {s}) * {s} + {s} AS lo,
                                (max(epoch_us(ts)) // {s}) * {s} + {s} AS hi FROM sel GROUP BY ALL),
                 ends AS (SELECT {gcols} unnest(range(lo, hi + 1, {s})) AS e FROM ext)
                 SELECT {gsel} ends.e - {w}, {ORACLE_AGGS}
                 FROM ends JOIN sel ON epoch_us(sel.ts) >= ends.e - {w} AND epoch_us(sel.ts) < ends.e {gjoin}
                 GROUP BY ALL",
                gsel = groups.iter().map(|g| format!("ends.{g}, ")).collect::<String>(),
                gjoin = groups
                    .iter()
                    .map(|g| format!(" AND ends.{g} IS NOT DISTINCT FROM sel.{g}"))
                    .collect::<String>(),
            )
        }
    };
    let mut stmt = fx.oracle.prepare(&sql).unwrap();
    let n = groups.len();
    let rows = stmt
        .query_map(duckdb::params_from_iter(args), |row| {
            let mut group = Vec::new();
            for i in 0..n {
                group.push(row.get::<_, Option<String>>(i)?);
            }
            let start: Option<i64> = row.get(n)?;
            let count: i64 = row.get(n + 1)?;
            let mut vals = BTreeMap::new();
            for (i, agg) in ORACLE_COLUMNS.into_iter().enumerate() {
                vals.insert(agg, row.get::<_, Option<f64>>(n + 2 + i)?);
            }
            vals.insert(Agg::Count, Some(count as f64));
            Ok(Row {
                group,
                start,
                count: count as u64,
                vals,
            })
        })
        .unwrap();
    let mut rows: Vec<Row> = rows.map(Result::unwrap).filter(|r| r.count > 0).collect();
    rows.sort_by(|a, b| (&a.group, a.start).cmp(&(&b.group, b.start)));
    rows
}

fn close(agg: Agg, got: Option<f64>, want: Option<f64>, alpha: f64) -> bool {
    match (got, want) {
        (None, None) => true,
        (Some(g), Some(w)) if agg.is_percentile() => {
            (g - w).abs() <= alpha * w.abs() * (1.0 + 1e-9)
        }
        // One point's value, exactly.
        (Some(g), Some(w)) if matches!(agg, Agg::Last | Agg::First) => g == w,
        (Some(g), Some(w)) => (g - w).abs() <= 1e-9 * w.abs().max(1e-300) || g == w,
        _ => false,
    }
}

fn check_values(what: &str, got: &[AggValue], want: &Row, q: &Query, alpha: f64) {
    for agg in &q.aggs {
        let (g, w) = (find(got, *agg), want.vals[agg]);
        assert!(
            close(*agg, g, w, alpha),
            "{what}: {agg} = {g:?}, oracle {w:?} (query {q:?})"
        );
    }
}

fn total_row(fx: &Fixture, q: &Query) -> Row {
    oracle(fx, q, false, false)
        .into_iter()
        .next()
        .unwrap_or(Row {
            group: vec![],
            start: None,
            count: 0,
            vals: q
                .aggs
                .iter()
                .map(|&a| (a, None))
                .chain([(Agg::Count, Some(0.0))])
                .collect(),
        })
}

/// Orders oracle rows as the API promises: by the aggregation's value, ties by key.
fn order(rows: &mut [Row], q: &Query) {
    let Some(o) = q.order_by else { return };
    match o.key {
        OrderKey::Key => {
            if o.descending {
                rows.reverse();
            }
        }
        OrderKey::Agg(agg) => rows.sort_by(|a, b| {
            let (x, y) = (a.vals[&agg].unwrap(), b.vals[&agg].unwrap());
            let ord = x.total_cmp(&y);
            if o.descending { ord.reverse() } else { ord }
        }),
    }
}

fn check(fx: &Fixture, q: &Query) -> QueryResult {
    let alpha = fx.cfg.alpha();
    let got = cluster(fx, q);
    let total = total_row(fx, q);
    // Sum of nothing: the engine says 0, SQL says NULL.
    let mut total_vals = total.vals.clone();
    if total.count == 0 {
        total_vals.insert(Agg::Sum, Some(0.0));
    }
    let total = Row {
        vals: total_vals,
        ..total
    };
    check_values("overall", &got.aggregations, &total, q, alpha);
    let windowed = q.window_micros.is_some();
    if !q.group_by.is_empty() {
        let mut want = oracle(fx, q, true, false);
        order(&mut want, q);
        if let Some(limit) = q.limit {
            want.truncate(limit);
        }
        let got_keys: Vec<_> = got
            .groups
            .iter()
            .map(|g| g.key.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>())
            .collect();
        let want_keys: Vec<_> = want.iter().map(|r| r.group.clone()).collect();
        assert_eq!(got_keys, want_keys, "groups of {q:?}");
        for (g, w) in got.groups.iter().zip(&want) {
            check_values(
                &format!("group {:?}", w.group),
                &g.aggregations,
                w,
                q,
                alpha,
            );
        }
        if windowed {
            let want = oracle(fx, q, true, true);
            for g in &got.groups {
                let key: Vec<_> = g.key.iter().map(|(_, v)| v.clone()).collect();
                let mine: Vec<&Row> = want.iter().filter(|r| r.group == key).collect();
                assert_eq!(
                    g.buckets.len(),
                    mine.len(),
                    "buckets of group {key:?} in {q:?}"
                );
                for (b, w) in g.buckets.iter().zip(mine) {
                    assert_eq!(Some(b.start.as_micros()), w.start);
                    check_values(
                        &format!("group {key:?} bucket {}", b.start),
                        &b.aggregations,
                        w,
                        q,
                        alpha,
                    );
                }
            }
        }
    } else if windowed {
        let mut want = oracle(fx, q, false, true);
        order(&mut want, q);
        if let Some(limit) = q.limit {
            want.truncate(limit);
        }
        let starts: Vec<_> = got
            .buckets
            .iter()
            .map(|b| Some(b.start.as_micros()))
            .collect();
        let want_starts: Vec<_> = want.iter().map(|r| r.start).collect();
        assert_eq!(starts, want_starts, "buckets of {q:?}");
        for (b, w) in got.buckets.iter().zip(&want) {
            assert_eq!(
                b.end.as_micros() - b.start.as_micros(),
                q.window_micros.unwrap()
            );
            check_values(&format!("bucket {}", b.start), &b.aggregations, w, q, alpha);
        }
    }
    got
}

fn query(params: &[(&str, &str)]) -> Query {
    let mut all = vec![("agg", "avg,min,max,sum,count,p50,p95,p99,last,first")];
    all.extend_from_slice(params);
    Query::from_params(&all).unwrap()
}

#[test]
fn every_query_shape_matches_plain_duckdb() {
    for seed in [1, 2] {
        let fx = fixture(seed);
        let shapes: Vec<Vec<(&str, &str)>> = vec![
            vec![("metric", "cpu_usage")],
            vec![("metric", "net_in")],
            vec![
                ("metric", "cpu_usage"),
                ("from", "2024-01-20T06:00:00Z"),
                ("to", "2024-01-21T03:30:00Z"),
            ],
            vec![("metric", "cpu_usage"), ("tags", "env:prod")],
            vec![
                ("metric", "cpu_usage"),
                ("tags", "env:prod,env:staging,datacenter:us-*"),
            ],
            vec![("metric", "cpu_usage"), ("hosts", "web-*,api-1")],
            vec![("metric", "cpu_usage"), ("hosts", "*-1*")],
            vec![
                ("metric", "mem_used"),
                ("datacenters", "us-west,eu-central"),
            ],
            vec![("metric", "cpu_usage"), ("group_by", "datacenter,host")],
            vec![("metric", "cpu_usage"), ("group_by", "env")],
            vec![("metric", "cpu_usage"), ("window", "1h")],
            vec![
                ("metric", "cpu_usage"),
                ("window", "5m"),
                ("from", "2024-01-20T10:00:00Z"),
                ("to", "2024-01-20T12:00:00Z"),
            ],
            vec![
                ("metric", "cpu_usage"),
                ("window", "1d"),
                ("group_by", "datacenter"),
            ],
            vec![
                ("metric", "cpu_usage"),
                ("window", "1h"),
                ("rolling", "true"),
                ("step", "10m"),
                ("hosts", "web-*"),
            ],
            vec![("metric", "net_in"), ("window", "1h"), ("rolling", "true")],
            vec![
                ("metric", "mem_used"),
                ("window", "6h"),
                ("rolling", "true"),
                ("step", "1h"),
                ("group_by", "env"),
            ],
            vec![
                ("metric", "cpu_usage"),
                ("group_by", "host"),
                ("order_by", "value:desc"),
                ("limit", "3"),
            ],
            vec![
                ("metric", "cpu_usage"),
                ("group_by", "host"),
                ("order_by", "max:asc"),
                ("limit", "5"),
            ],
            vec![
                ("metric", "cpu_usage"),
                ("group_by", "host"),
                ("order_by", "count:desc"),
                ("limit", "4"),
            ],
            vec![
                ("metric", "cpu_usage"),
                ("group_by", "datacenter,env"),
                ("order_by", "key:desc"),
            ],
            vec![
                ("metric", "cpu_usage"),
                ("window", "1h"),
                ("order_by", "sum:desc"),
                ("limit", "5"),
            ],
            vec![
                ("metric", "cpu_usage"),
                ("tags", "env:prod"),
                ("window", "2h"),
                ("group_by", "host"),
                ("order_by", "min:asc"),
                ("limit", "2"),
            ],
            vec![("metric", "latency_ms")],
            vec![("metric", "latency_ms"), ("group_by", "host")],
            vec![
                ("metric", "latency_ms"),
                ("window", "6h"),
                ("group_by", "host"),
                ("order_by", "p95:desc"),
            ],
            vec![
                ("metric", "latency_ms"),
                ("window", "12h"),
                ("rolling", "true"),
                ("step", "1h"),
            ],
            vec![
                ("metric", "cpu_usage"),
                ("from", "2024-01-20T06:00:00Z"),
                ("to", "2024-01-20T06:10:00Z"),
                ("window", "1m"),
            ],
            // The first or last buckets by start, where the range begins or ends inside a
            // bucket, over dense and sparse data.
            vec![
                ("metric", "cpu_usage"),
                ("window", "1h"),
                ("to", "2024-01-21T10:30:00Z"),
                ("order_by", "key:desc"),
                ("limit", "5"),
            ],
            vec![
                ("metric", "cpu_usage"),
                ("window", "1h"),
                ("from", "2024-01-20T03:20:00Z"),
                ("to", "2024-01-21T00:00:00Z"),
                ("order_by", "key:asc"),
                ("limit", "4"),
            ],
            vec![
                ("metric", "cpu_usage"),
                ("window", "1m"),
                ("to", "2024-01-20T12:00:00Z"),
                ("order_by", "key:desc"),
                ("limit", "5"),
            ],
            vec![
                ("metric", "latency_ms"),
                ("window", "1h"),
                ("from", "2024-01-20T01:00:00Z"),
                ("to", "2024-01-21T20:00:00Z"),
                ("order_by", "key:desc"),
                ("limit", "3"),
            ],
            vec![("metric", "no_such_metric")],
            vec![("metric", "cpu_usage"), ("hosts", "nobody-*")],
        ];
        for shape in shapes {
            check(&fx, &query(&shape));
        }
    }
}

#[test]
fn last_first_and_value_bounds_match_plain_duckdb() {
    let fx = fixture(4);
    let shapes: Vec<Vec<(&str, &str)>> = vec![
        vec![("metric", "ties")],
        vec![("metric", "ties"), ("group_by", "host")],
        vec![("metric", "ties"), ("window", "1h")],
        vec![
            ("metric", "ties"),
            ("window", "3h"),
            ("group_by", "datacenter,env"),
        ],
        vec![
            ("metric", "ties"),
            ("window", "2h"),
            ("rolling", "true"),
            ("step", "30m"),
        ],
        vec![
            ("metric", "ties"),
            ("window", "4h"),
            ("rolling", "true"),
            ("step", "1h"),
            ("group_by", "env"),
        ],
        vec![("metric", "ties"), ("value_ge", "0")],
        vec![
            ("metric", "ties"),
            ("value_gt", "-2"),
            ("value_lt", "2"),
            ("group_by", "host"),
            ("order_by", "last:desc"),
            ("limit", "5"),
        ],
        vec![
            ("metric", "ties"),
            ("group_by", "host"),
            ("order_by", "first:asc"),
        ],
        vec![
            ("metric", "ties"),
            ("window", "1h"),
            ("order_by", "last:desc"),
            ("limit", "7"),
        ],
        vec![
            ("metric", "ties"),
            ("hosts", "web-*"),
            ("from", "2024-01-20T03:00:00Z"),
            ("to", "2024-01-20T15:00:00Z"),
            ("value_le", "1"),
            ("group_by", "datacenter"),
            ("window", "2h"),
        ],
        // TSBS high-cpu: how many readings above 90, and which hosts had one.
        vec![("metric", "cpu_usage"), ("value_gt", "90")],
        vec![
            ("metric", "cpu_usage"),
            ("group_by", "host"),
            ("value_gt", "90"),
        ],
        vec![
            ("metric", "cpu_usage"),
            ("value_gt", "30"),
            ("value_le", "60"),
            ("tags", "env:prod"),
            ("from", "2024-01-20T06:00:00Z"),
            ("to", "2024-01-21T03:30:00Z"),
        ],
        vec![
            ("metric", "cpu_usage"),
            ("value_lt", "0"),
            ("hosts", "web-*"),
            ("window", "6h"),
            ("group_by", "datacenter"),
        ],
        vec![
            ("metric", "cpu_usage"),
            ("value_ge", "20"),
            ("value_le", "20"),
        ],
        vec![
            ("metric", "cpu_usage"),
            ("value_gt", "50"),
            ("value_lt", "10"),
            ("group_by", "host"),
        ],
        vec![
            ("metric", "cpu_usage"),
            ("group_by", "host"),
            ("value_ge", "0"),
            ("order_by", "first:desc"),
        ],
        vec![
            ("metric", "cpu_usage"),
            ("group_by", "datacenter"),
            ("window", "1d"),
        ],
        vec![
            ("metric", "cpu_usage"),
            ("window", "1h"),
            ("order_by", "last:desc"),
            ("limit", "5"),
        ],
        vec![
            ("metric", "latency_ms"),
            ("value_gt", "1000000"),
            ("window", "12h"),
            ("rolling", "true"),
            ("step", "1h"),
        ],
        vec![
            ("metric", "latency_ms"),
            ("value_ge", "-1e9"),
            ("value_lt", "1e9"),
            ("group_by", "host"),
            ("order_by", "p95:desc"),
        ],
    ];
    for shape in shapes {
        check(&fx, &query(&shape));
    }
    // The high-cpu answers say something: some readings are above 90, not all.
    let hot = check(&fx, &query(&[("metric", "cpu_usage"), ("value_gt", "90")]));
    let all = check(&fx, &query(&[("metric", "cpu_usage")]));
    let (hot, all) = (hot.get(Agg::Count).unwrap(), all.get(Agg::Count).unwrap());
    assert!(hot > 0.0 && hot < all, "{hot} of {all}");
    // An empty range is an answer over no points.
    let none = check(
        &fx,
        &query(&[("metric", "ties"), ("value_gt", "5"), ("value_lt", "3")]),
    );
    assert_eq!(none.get(Agg::Count), Some(0.0));
    assert_eq!(none.get(Agg::Last), None);
}

/// The embedded engine answers `last`, `first` and value bounds as the stores and merge do.
#[test]
fn the_engine_answers_last_first_and_value_bounds() {
    let fx = fixture(5);
    let engine =
        raftmetrics_core::Engine::open_in_memory(raftmetrics_core::EngineConfig::default())
            .unwrap();
    let now = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
    let records = validate_batch(points(5), now, &Limits::default()).unwrap();
    engine.insert_records(records).unwrap();
    for shape in [
        vec![("metric", "ties"), ("group_by", "host"), ("value_ge", "-1")],
        vec![
            ("metric", "cpu_usage"),
            ("value_gt", "90"),
            ("window", "6h"),
        ],
    ] {
        let q = query(&shape);
        let got = engine.query(&q).unwrap();
        let want = check(&fx, &q);
        assert_eq!(got.groups.len(), want.groups.len());
        assert_eq!(got.buckets.len(), want.buckets.len());
        for agg in [Agg::Count, Agg::Min, Agg::Max, Agg::Last, Agg::First] {
            assert_eq!(got.get(agg), want.get(agg), "{agg} of {q:?}");
            for (g, w) in got.groups.iter().zip(&want.groups) {
                assert_eq!(g.key, w.key);
                assert_eq!(find(&g.aggregations, agg), find(&w.aggregations, agg));
            }
            for (g, w) in got.buckets.iter().zip(&want.buckets) {
                assert_eq!(g.start, w.start);
                assert_eq!(find(&g.aggregations, agg), find(&w.aggregations, agg));
            }
        }
    }
}

#[test]
fn hostile_strings_are_matched_as_literal_data() {
    let fx = fixture(3);
    for s in HOSTILE {
        let q = query(&[("metric", "cpu_usage"), ("hosts", s)]);
        let got = check(&fx, &q);
        assert!(
            got.get(Agg::Count).unwrap() > 0.0,
            "{s:?} is a host of the data set"
        );
        let q = query(&[
            ("metric", "cpu_usage"),
            ("tags", &format!("host:{s}")),
            ("group_by", "host"),
        ]);
        let got = check(&fx, &q);
        assert_eq!(got.groups.len(), 1);
        assert_eq!(got.groups[0].key[0].1.as_deref(), Some(s));
    }
    // A hostile metric filter is refused before anything runs.
    for s in HOSTILE {
        assert!(Query::from_params(&[("metric", s)]).is_err());
    }
    // And the data is intact.
    let all = check(&fx, &query(&[("metric", "cpu_usage")]));
    assert!(all.get(Agg::Count).unwrap() > 9_000.0);
}
