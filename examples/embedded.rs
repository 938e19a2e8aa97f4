//! The embedded engine: load a few thousand points into a DuckDB file and print grouped
//! analytics, all in this process.
//!
//! Run with `cargo run --release --example embedded [PATH]` (default: a temporary file).

use raftmetrics_core::aggregate::find;
use raftmetrics_core::{Agg, Engine, EngineConfig, Point, Query, Timestamp};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("raftmetrics-embedded.duckdb"));
    let _ = std::fs::remove_file(&path);
    let engine = Engine::open(&path, EngineConfig::default())?;

    // 6 hosts in 2 datacenters, one point per minute for 8 hours: 2,880 points.
    let start = Timestamp::parse("2024-01-20T08:00:00Z")?;
    let mut batch = Vec::new();
    for (h, host) in ["web-1", "web-2", "web-3", "api-1", "api-2", "db-1"]
        .iter()
        .enumerate()
    {
        let datacenter = if h % 2 == 0 { "us-west" } else { "us-east" };
        let mut level = 30.0 + 8.0 * h as f64;
        for minute in 0..480i64 {
            // A deterministic wobble with a daily-ish swell and an occasional spike.
            level += ((minute * 7 + h as i64 * 13) % 11) as f64 * 0.2 - 1.0;
            level = level.clamp(1.0, 99.0);
            let spike = if (minute + h as i64 * 37) % 97 == 0 {
                35.0
            } else {
                0.0
            };
            batch.push(
                Point::new("cpu_usage", (level + spike).min(100.0))
                    .at(Timestamp::from_micros(
                        start.as_micros() + minute * 60_000_000,
                    ))
                    .tag("host", *host)
                    .tag("datacenter", datacenter),
            );
        }
    }
    let report = engine.insert(batch)?;
    println!(
        "stored {} points in {} partitions of {}",
        report.points,
        report.partitions.len(),
        path.display()
    );

    let by_datacenter = Query::from_params(&[
        ("metric", "cpu_usage"),
        ("agg", "avg,min,max,count,p95"),
        ("group_by", "datacenter"),
    ])?;
    let result = engine.query(&by_datacenter)?;
    println!("\ncpu_usage by datacenter");
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>6} {:>8}",
        "dc", "avg", "min", "max", "count", "p95"
    );
    for g in &result.groups {
        let v = |a| find(&g.aggregations, a).unwrap_or(f64::NAN);
        println!(
            "{:<10} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>8.2}",
            g.key[0].1.as_deref().unwrap_or("-"),
            v(Agg::Avg),
            v(Agg::Min),
            v(Agg::Max),
            v(Agg::Count),
            v(Agg::P95)
        );
    }

    let top = Query::from_params(&[
        ("metric", "cpu_usage"),
        ("hosts", "web-*,api-*"),
        ("agg", "p99,avg"),
        ("group_by", "host"),
        ("order_by", "p99:desc"),
        ("limit", "3"),
    ])?;
    println!("\ntop 3 web/api hosts by p99");
    for g in engine.query(&top)?.groups {
        println!(
            "{:<8} p99 {:>7.2}  avg {:>7.2}",
            g.key[0].1.as_deref().unwrap_or("-"),
            find(&g.aggregations, Agg::P99).unwrap_or(f64::NAN),
            find(&g.aggregations, Agg::Avg).unwrap_or(f64::NAN)
        );
    }

    let hourly = Query::from_params(&[
        ("metric", "cpu_usage"),
        ("window", "1h"),
        ("agg", "avg,max"),
        ("datacenters", "us-west"),
    ])?;
    println!("\nus-west hourly");
    for b in engine.query(&hourly)?.buckets {
        println!(
            "{}  avg {:>6.2}  max {:>6.2}",
            b.start,
            find(&b.aggregations, Agg::Avg).unwrap_or(f64::NAN),
            find(&b.aggregations, Agg::Max).unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
