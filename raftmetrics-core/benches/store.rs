//! Store benchmark: batch inserts and partial-aggregate queries against plain DuckDB
//! measured in the same run on the same rows.
//!
//! `cargo bench --bench store [-- POINTS]` (default 1,000,000 points).
//! Prints points/s and ratios; asserts nothing about time.

use std::time::{Duration, Instant};

use duckdb::{Connection, params};
use raftmetrics_core::aggregate::{Coverage, PartialAggregate, finalize};
use raftmetrics_core::model::{Limits, Record, validate_batch};
use raftmetrics_core::partition::{HashPartitioner, Partitioner};
use raftmetrics_core::store::conformance::SplitMix;
use raftmetrics_core::store::{DuckDbStore, PartitionWrite, Store};
use raftmetrics_core::{Point, Query, SketchConfig, Timestamp};

const PARTITIONS: u32 = 16;
const BATCH: usize = 10_000;

/// A query: its name, its `/aggregate` parameters, and the equivalent plain SQL.
type Case = (&'static str, Vec<(&'static str, &'static str)>, String);

/// TSBS-like rows: hosts in datacenters, a clamped random walk per host, 10 s apart.
fn rows(n: usize) -> Vec<Record> {
    let hosts = 100;
    let mut rng = SplitMix(42);
    let mut level = vec![50.0f64; hosts];
    let t0 = Timestamp::parse("2024-01-01T00:00:00Z")
        .unwrap()
        .as_micros();
    let points: Vec<Point> = (0..n)
        .map(|i| {
            let h = i % hosts;
            level[h] = (level[h] + rng.next_f64() * 4.0 - 2.0).clamp(0.0, 100.0);
            Point::new("usage_user", level[h])
                .at(Timestamp::from_micros(t0 + (i / hosts) as i64 * 10_000_000))
                .tag("hostname", format!("host_{h}"))
                .tag("datacenter", format!("dc-{}", h % 6))
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    let limits = Limits {
        max_batch_points: n,
        ..Limits::default()
    };
    for chunk in points.chunks(100_000) {
        out.extend(validate_batch(chunk.to_vec(), Timestamp::now(), &limits).unwrap());
    }
    out
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let out = f();
        best = best.min(start.elapsed());
        last = Some(out);
    }
    (best, last.unwrap())
}

fn raw_appender(dir: &std::path::Path, rows: &[Record]) -> (Duration, Connection) {
    let conn = Connection::open(dir.join("reference.duckdb")).unwrap();
    conn.execute_batch(
        "CREATE TABLE points (metric VARCHAR, hostname VARCHAR, datacenter VARCHAR, ts BIGINT, value DOUBLE)",
    )
    .unwrap();
    let start = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut app = tx.appender("points").unwrap();
            for r in chunk {
                app.append_row(params![
                    r.metric(),
                    r.tags()["hostname"],
                    r.tags()["datacenter"],
                    r.timestamp.as_micros(),
                    r.value
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    (start.elapsed(), conn)
}

fn store_insert(dir: &std::path::Path, rows: &[Record]) -> (Duration, DuckDbStore) {
    let store = DuckDbStore::open(dir.join("store.duckdb")).unwrap();
    let partitioner = HashPartitioner::new(PARTITIONS).unwrap();
    // Routing is the caller's work (the engine or a Raft leader); it happens before timing.
    let batches: Vec<Vec<(u32, Vec<Record>)>> = rows
        .chunks(BATCH)
        .map(|chunk| {
            let mut by_partition: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
            for r in chunk {
                by_partition[partitioner.partition_of(r.partition_key()) as usize].push(r.clone());
            }
            (0..PARTITIONS)
                .zip(by_partition)
                .filter(|(_, r)| !r.is_empty())
                .collect()
        })
        .collect();
    let start = Instant::now();
    for (i, batch) in batches.iter().enumerate() {
        let writes: Vec<PartitionWrite<'_>> = batch
            .iter()
            .map(|(p, records)| PartitionWrite::new(*p, i as u64 + 1, records))
            .collect();
        store.apply(&writes).unwrap();
    }
    (start.elapsed(), store)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    eprintln!("generating {n} points...");
    let rows = rows(n);

    let (raw_time, reference) = raw_appender(dir.path(), &rows);
    let (store_time, store) = store_insert(dir.path(), &rows);
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("## Insert ({n} points, batches of {BATCH}, file-backed)");
    println!("| writer | points/s | ratio to raw Appender |");
    println!("|---|---:|---:|");
    println!(
        "| raw duckdb-rs Appender (reference) | {:.0} | 1.00 |",
        rate(raw_time)
    );
    println!(
        "| DuckDbStore::apply | {:.0} | {:.2} (goal >= 0.80) |",
        rate(store_time),
        raw_time.as_secs_f64() / store_time.as_secs_f64()
    );

    let cfg = SketchConfig::default();
    let all: Vec<u32> = (0..PARTITIONS).collect();
    let cases: [Case; 3] = [
        (
            "avg,max by datacenter",
            vec![("metric", "usage_user"), ("agg", "avg,max"), ("group_by", "datacenter")],
            "SELECT datacenter, avg(value), max(value) FROM points WHERE metric = 'usage_user' GROUP BY datacenter".into(),
        ),
        (
            "max per host per hour, hostname host_1*",
            vec![("metric", "usage_user"), ("agg", "max"), ("group_by", "hostname"), ("window", "1h"), ("tags", "hostname:host_1*")],
            "SELECT hostname, time_bucket(INTERVAL 1 HOUR, make_timestamp(ts)), max(value) FROM points
             WHERE metric = 'usage_user' AND hostname LIKE 'host\\_1%' ESCAPE '\\' GROUP BY ALL".into(),
        ),
        (
            "p95,p99 by datacenter",
            vec![("metric", "usage_user"), ("agg", "p95,p99"), ("group_by", "datacenter")],
            "SELECT datacenter, quantile_disc(value, 0.95), quantile_disc(value, 0.99) FROM points
             WHERE metric = 'usage_user' GROUP BY datacenter".into(),
        ),
    ];
    println!("\n## Queries ({n} points; best of 5)");
    println!("| query | plain DuckDB | partial states + merge | ratio |");
    println!("|---|---:|---:|---:|");
    for (name, params, sql) in cases {
        let q = Query::from_params(&params).unwrap();
        let (plain, plain_rows) = best_of(5, || {
            let mut stmt = reference.prepare(&sql).unwrap();
            stmt.query_map([], |_| Ok(())).unwrap().count()
        });
        let (ours, result) = best_of(5, || {
            // One worker holding every partition: one compute call, then merge + finalize.
            let mut merged = PartialAggregate::default();
            merged.merge(store.compute(&all, &q, &cfg).unwrap());
            finalize(&q, &cfg, &merged, Coverage::complete())
        });
        let our_rows: usize = result.groups.iter().map(|g| g.buckets.len().max(1)).sum();
        assert_eq!(
            our_rows, plain_rows,
            "{name}: both sides must produce the same rows"
        );
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.2} (goal <= 1.20) |",
            plain.as_secs_f64() * 1e3,
            ours.as_secs_f64() * 1e3,
            ours.as_secs_f64() / plain.as_secs_f64()
        );
    }
}
