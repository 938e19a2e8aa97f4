//! The references measured in the same run: the same points written into one plain DuckDB
//! file with the raw duckdb-rs Appender (the ingest reference), then the same queries as
//! plain SQL on that file (the query reference).
//!
//! The table has one row per point, every tag as a column:
//! `points(metric, hostname, region, datacenter, rack, os, arch, team, service,
//! service_version, service_environment, ts, value)`, `ts` in microseconds since the epoch.
//! Points are appended in batches of the load tool's size, one transaction per batch, as a
//! program writing straight to DuckDB would; generating the samples is not timed.

use std::path::Path;
use std::time::{Duration, Instant};

use duckdb::{Connection, params};

use crate::error::Result;
use crate::generator::{Dataset, FIELDS};
use crate::load::Span;

const SCHEMA: &str = "CREATE TABLE points (
    metric VARCHAR, hostname VARCHAR, region VARCHAR, datacenter VARCHAR, rack VARCHAR,
    os VARCHAR, arch VARCHAR, team VARCHAR, service VARCHAR, service_version VARCHAR,
    service_environment VARCHAR, ts BIGINT, value DOUBLE)";

/// The plain DuckDB database holding every point.
pub struct Reference {
    pub conn: Connection,
}

/// What writing the reference took.
#[derive(Clone, Copy, Debug)]
pub struct IngestTiming {
    pub points: u64,
    /// Time spent appending and committing (generation excluded).
    pub elapsed: Duration,
    /// CPU seconds of this process over the whole write (generating the samples, which
    /// allocates nothing per point, included).
    pub cpu_seconds: f64,
}

impl Reference {
    /// Creates the database at `path` and writes intervals `span` of `dataset` into it.
    pub fn ingest(
        path: &Path,
        dataset: &Dataset,
        span: Span,
        batch: usize,
    ) -> Result<(Reference, IngestTiming)> {
        let conn = Connection::open(path)?;
        conn.execute_batch(SCHEMA)?;
        let mut samples = dataset.samples(span.first, span.count);
        let mut elapsed = Duration::ZERO;
        let mut points = 0u64;
        let cpu_before = crate::cpu::cpu_seconds(None)?;
        loop {
            let chunk = samples.take_batch(batch.max(1));
            if chunk.is_empty() {
                break;
            }
            let started = Instant::now();
            let tx = conn.unchecked_transaction()?;
            {
                let mut app = tx.appender("points")?;
                for s in &chunk {
                    let v = &dataset.hosts[s.host as usize].values;
                    app.append_row(params![
                        FIELDS[usize::from(s.field)],
                        v[0],
                        v[1],
                        v[2],
                        v[3],
                        v[4],
                        v[5],
                        v[6],
                        v[7],
                        v[8],
                        v[9],
                        s.ts,
                        s.value
                    ])?;
                }
            }
            tx.commit()?;
            elapsed += started.elapsed();
            points += chunk.len() as u64;
        }
        let cpu_seconds = crate::cpu::cpu_seconds(None)? - cpu_before;
        conn.execute_batch("CHECKPOINT")?;
        Ok((
            Reference { conn },
            IngestTiming {
                points,
                elapsed,
                cpu_seconds,
            },
        ))
    }
}
