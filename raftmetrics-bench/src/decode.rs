//! `decode`: what the node that takes an insert spends reading one bincode body of TSBS
//! points into records, on one thread, with no cluster: `validate_encoded_batch`, which
//! every `/insert` in bincode runs (decoding each point's text in place, checking it, and
//! finding its series among those the process knows).
//!
//! The body is the dataset's first `--batch` points, encoded as the client encodes them.
//! After one warm-up pass, each of `--rounds` rounds decodes it for about a second; the
//! median round is reported as nanoseconds per point and points per second of one core.
//! The first pass interns the batch's series, as a node that has seen the hosts before
//! has them: the rounds measure known series, the common case under steady ingest.

use std::time::{Duration, Instant};

use raftmetrics_core::model::validate_encoded_batch;
use raftmetrics_core::time::Timestamp;
use raftmetrics_core::{Limits, Point, codec};

use crate::error::{BenchError, Result};
use crate::generator::Dataset;
use crate::report::{Table, thousands};

/// How long one round decodes for, about.
const ROUND: Duration = Duration::from_secs(1);

pub struct DecodeOptions<'a> {
    pub dataset: &'a Dataset,
    pub batch: usize,
    pub rounds: usize,
}

/// One round's figures.
struct Round {
    nanos_per_point: f64,
}

/// Runs `decode` and prints its table.
pub fn run(o: &DecodeOptions<'_>) -> Result<bool> {
    if o.batch == 0 {
        return Err(BenchError::Config("--batch must be at least 1".into()));
    }
    let intervals = o.dataset.intervals_for(o.batch as u64).saturating_add(1);
    let points: Vec<Point> = o
        .dataset
        .samples(0, intervals)
        .take(o.batch)
        .map(|s| o.dataset.point(&s))
        .collect();
    let body = codec::encode(&points).map_err(|e| BenchError::Config(e.to_string()))?;
    // Every point's timestamp is before this.
    let now = Timestamp::from_micros(
        o.dataset
            .time_of(intervals)
            .as_micros()
            .saturating_add(3_600_000_000),
    );
    let limits = Limits {
        max_batch_points: limits_for(o.batch),
        ..Limits::default()
    };
    let decode = || {
        validate_encoded_batch(&body, now, &limits)
            .map(|records| records.len())
            .map_err(|e| BenchError::Config(format!("the body does not decode: {e}")))
    };
    let decoded = decode()?;
    if decoded != points.len() {
        return Err(BenchError::Config(format!(
            "{decoded} records from {} points",
            points.len()
        )));
    }
    let mut rounds = Vec::with_capacity(o.rounds.max(1));
    for _ in 0..o.rounds.max(1) {
        let started = Instant::now();
        let mut passes = 0u64;
        while started.elapsed() < ROUND {
            std::hint::black_box(decode()?);
            passes += 1;
        }
        let nanos = started.elapsed().as_nanos() as f64;
        rounds.push(Round {
            nanos_per_point: nanos / (passes as f64 * points.len() as f64),
        });
    }
    rounds.sort_by(|a, b| a.nanos_per_point.total_cmp(&b.nanos_per_point));
    let median = &rounds[rounds.len() / 2];
    let mut table = Table::new(&[
        "body",
        "points",
        "bytes",
        "ns per point",
        "points/s, one core",
    ]);
    table.row(vec![
        "bincode insert, TSBS cpu-only".into(),
        thousands(points.len() as f64),
        thousands(body.len() as f64),
        format!("{:.1}", median.nanos_per_point),
        thousands(1e9 / median.nanos_per_point),
    ]);
    println!(
        "\n## Decoding an insert body (median of {} rounds)\n\n{}",
        rounds.len(),
        table.render()
    );
    Ok(true)
}

/// The batch bound that admits a body of `batch` points.
fn limits_for(batch: usize) -> usize {
    batch.max(Limits::default().max_batch_points)
}
