//! Talks to a running RaftMetrics cluster: inserts a batch, queries it, prints health.
//!
//! ```sh
//! RAFTMETRICS_TOKEN=... cargo run --release --example client
//! ```
//!
//! `RAFTMETRICS_URL` names the control node (default `http://127.0.0.1:8080`), or several
//! separated by commas, which the client fails over between when one cannot be reached,
//! times out or answers 503:
//!
//! ```sh
//! RAFTMETRICS_URL=http://127.0.0.1:8080,http://127.0.0.1:8084,http://127.0.0.1:8085 \
//!   RAFTMETRICS_TOKEN=... cargo run --release --example client
//! ```
//!
//! `RAFTMETRICS_FORMAT=json` switches from bincode to JSON.

use std::process::ExitCode;
use std::time::Duration;

use raftmetrics_client::{Agg, Answer, Client, Error, Point, Query, QueryResult, Timestamp};

const METRIC: &str = "example_cpu_usage";
const DATACENTERS: [&str; 3] = ["us-west", "us-east", "eu-central"];
const HOSTS_PER_DATACENTER: usize = 3;
const POINTS_PER_HOST: i64 = 40;

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("RAFTMETRICS_URL")
        .unwrap_or_else(|_| raftmetrics_client::DEFAULT_URL.to_string());
    let Ok(token) = std::env::var("RAFTMETRICS_TOKEN") else {
        eprintln!(
            "error: RAFTMETRICS_TOKEN is not set; export the bearer token of the cluster, e.g.\n  \
             RAFTMETRICS_TOKEN=... cargo run --release --example client"
        );
        return ExitCode::from(2);
    };
    let json = std::env::var("RAFTMETRICS_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    match run(&url, &token, json).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for field in e.validation_fields() {
                eprintln!("  {}: {}", field.field, field.error);
            }
            if let Some(wait) = e.retry_after() {
                eprintln!("  the server asks to retry after {wait:?}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, token: &str, json: bool) -> Result<(), Error> {
    let mut builder = Client::builder(url)
        .token(token)
        .timeout(Duration::from_secs(30));
    if json {
        builder = builder.json();
    }
    let client = builder.build()?;
    println!(
        "control nodes: {} ({:?})",
        client.base_urls().join(", "),
        client.format()
    );
    // A cluster that is still starting (or has lost partitions' majorities) answers 503 on
    // /ready, naming what is missing: wait until every partition has a leader.
    let ready = client.wait_ready(Duration::from_secs(60)).await?;
    println!(
        "ready: {} of {} partitions led, answered by {}",
        ready.partitions_led,
        ready.partitions_total,
        client.base_url()
    );

    // A few hundred points: one a minute over the last 40 minutes, per host.
    let start = Timestamp::now().as_micros() - POINTS_PER_HOST * 60_000_000;
    let mut batch = Vec::new();
    for (d, datacenter) in DATACENTERS.iter().enumerate() {
        for h in 0..HOSTS_PER_DATACENTER {
            let host = format!("{datacenter}-web-{h}");
            for minute in 0..POINTS_PER_HOST {
                let wave = ((minute as f64) / 6.0 + h as f64).sin();
                let value = 30.0 + 15.0 * d as f64 + 10.0 * wave;
                batch.push(
                    Point::new(METRIC, value)
                        .at(Timestamp::from_micros(start + minute * 60_000_000))
                        .tag("host", host.clone())
                        .tag("datacenter", *datacenter),
                );
            }
        }
    }
    let inserted = client.insert_batch(batch).await?;
    println!(
        "inserted {} points into partitions {:?}: {}",
        inserted.points, inserted.partitions, inserted.message
    );

    let query = Query {
        from: Some(Timestamp::from_micros(start)),
        aggs: vec![Agg::Avg, Agg::Max, Agg::P95],
        group_by: vec!["datacenter".into()],
        ..Query::new(METRIC)
    };
    let answer = client.aggregate(&query).await?;
    match &answer {
        Answer::Complete(_) => println!("\naggregate (complete answer):"),
        Answer::Partial { coverage, .. } => println!(
            "\naggregate (PARTIAL answer: {} of {} nodes responded, partitions {:?} missing):",
            coverage.responding_nodes, coverage.total_nodes, coverage.missing_partitions
        ),
    }
    print_result(answer.value());

    let analytics = client.analytics(Some(METRIC)).await?;
    println!(
        "\nanalytics: average {:?} over {} points (partial: {})",
        analytics.value().average,
        analytics.value().count,
        analytics.is_partial()
    );

    // Asked of the node in use (the one that answered last).
    let health = client.health().await?;
    println!(
        "\nhealth of {}: {} ({} node {}, up {}), partitions {}/{}, workers {}",
        client.base_url(),
        health.status,
        health.role,
        health.node_id,
        health.uptime,
        health
            .partitions_available
            .map_or("?".to_string(), |n| n.to_string()),
        health.partitions_total,
        health
            .worker_nodes
            .as_ref()
            .map_or("?".to_string(), |w| format!(
                "{}/{} healthy",
                w.healthy, w.total
            )),
    );
    Ok(())
}

fn print_result(result: &QueryResult) {
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    println!(
        "  {:<12} {:>8} {:>8} {:>8}",
        "datacenter", "avg", "max", "p95"
    );
    for group in &result.groups {
        let name = group
            .key
            .first()
            .and_then(|(_, v)| v.as_deref())
            .unwrap_or("(none)");
        let get =
            |agg| raftmetrics_client::raftmetrics_types::aggregate::find(&group.aggregations, agg);
        println!(
            "  {:<12} {:>8} {:>8} {:>8}",
            name,
            show(get(Agg::Avg)),
            show(get(Agg::Max)),
            show(get(Agg::P95))
        );
    }
    println!(
        "  {:<12} {:>8} {:>8} {:>8}",
        "all",
        show(result.get(Agg::Avg)),
        show(result.get(Agg::Max)),
        show(result.get(Agg::P95))
    );
    if let Some(p) = &result.percentiles {
        println!(
            "  (percentiles by {}, relative error at most {})",
            p.method, p.relative_error
        );
    }
}
