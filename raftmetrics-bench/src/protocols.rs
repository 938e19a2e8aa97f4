//! `protocols`: the insert rate of the InfluxDB line protocol through `POST /write` beside
//! bincode through the typed client, side by side on one local cluster: the same dataset,
//! connections and batch size, runs alternating so that both see the same machine, each
//! run on intervals of its own (nothing is sent twice).

use std::path::PathBuf;
use std::sync::Arc;

use raftmetrics_client::Format;

use crate::cluster::{ClusterSpec, LocalCluster};
use crate::error::Result;
use crate::generator::Dataset;
use crate::load::{self, LoadSpec, Span};

/// The line protocol's goal: at least this fraction of bincode's rate.
pub const GOAL_RATIO: f64 = 0.7;

/// What to run.
pub struct ProtocolsOptions {
    pub dataset: Arc<Dataset>,
    /// Intervals of each run.
    pub intervals: u64,
    pub connections: usize,
    pub batch: usize,
    /// Rounds of (bincode, line protocol).
    pub rounds: u32,
    pub workers: u16,
    pub partitions: u32,
    pub server_bin: PathBuf,
}

/// Runs the rounds and prints each run's rate and the ratio of the medians; true when the
/// goal is met.
pub async fn run(o: &ProtocolsOptions) -> Result<bool> {
    let cluster = LocalCluster::start(ClusterSpec {
        server_bin: o.server_bin.clone(),
        workers: o.workers,
        replication_factor: 1,
        partitions: o.partitions,
        cluster_secret: None,
        spare_workers: 0,
    })
    .await?;
    let mut next = 0u64;
    let (mut bincode, mut lines) = (Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        for line_protocol in [false, true] {
            let label = if line_protocol {
                "line protocol"
            } else {
                "bincode"
            };
            let spec = LoadSpec {
                connections: o.connections,
                batch: o.batch,
                format: Format::Bincode,
                line_protocol,
                rate: None,
                label: format!("{label} {round}"),
            };
            let span = Span {
                first: next,
                count: o.intervals,
            };
            next += o.intervals;
            let report = load::run(
                &cluster.url,
                &cluster.token,
                Arc::clone(&o.dataset),
                span,
                &spec,
            )
            .await?;
            let rate = report.points_per_second();
            println!(
                "round {round}: {label:<13} {:>10} points in {:>6.2} s: {:>9.0} points/s, p99 {:?}",
                report.points,
                report.elapsed.as_secs_f64(),
                rate,
                report.latency(0.99)
            );
            if line_protocol {
                lines.push(rate);
            } else {
                bincode.push(rate);
            }
        }
    }
    let (b, l) = (median(&mut bincode), median(&mut lines));
    let ratio = l / b.max(1e-9);
    let met = ratio >= GOAL_RATIO;
    println!(
        "median: bincode {b:.0} points/s, line protocol {l:.0} points/s: {ratio:.2}x of bincode \
         (goal >= {GOAL_RATIO}x: {})",
        if met { "met" } else { "NOT met" }
    );
    Ok(met)
}

fn median(rates: &mut [f64]) -> f64 {
    rates.sort_by(f64::total_cmp);
    match rates.len() {
        0 => 0.0,
        n if n % 2 == 1 => rates[n / 2],
        n => (rates[n / 2 - 1] + rates[n / 2]) / 2.0,
    }
}
