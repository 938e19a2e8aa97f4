//! `export`: moves the dataset out of one cluster and into another, as a user would. The
//! first cluster is loaded over bincode; `GET /api/v1/export?precision=us` streams it to a
//! file while the resident memory of the control node and of the workers is sampled (every
//! 20 ms, from `/proc`); the file is then posted to a fresh cluster's `POST /api/v1/import`,
//! ten lines a request (an export line holds at most 10,000 points, a request at most
//! 100,000), each request under an `Idempotency-Key` of its own; and both clusters answer
//! the same aggregates: count, sum, min and max per metric and host, and per metric and
//! hour.
//!
//! What it shows: an export's memory does not grow with its size (the control node holds a
//! few pages, not the points), and an export re-imports into an equal cluster.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftmetrics_client::{Agg, Client, Format, Query};

use crate::cluster::{ClusterSpec, LocalCluster};
use crate::error::{BenchError, Result};
use crate::generator::{Dataset, FIELDS};
use crate::load::{self, LoadSpec, Span};

/// Lines of the export per import request: at most 10 x 10,000 points, a batch's limit.
pub const LINES_PER_IMPORT: usize = 10;
/// How often the control node's memory is read during the export.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Relative tolerance of sums (summation order differs between clusters).
const SUM_TOLERANCE: f64 = 1e-9;

/// What to run.
pub struct ExportOptions {
    pub dataset: Arc<Dataset>,
    pub intervals: u64,
    pub connections: usize,
    pub batch: usize,
    pub workers: u16,
    pub replication_factor: u32,
    pub partitions: u32,
    pub server_bin: PathBuf,
    /// Where the export is written [default: a temporary file].
    pub out: Option<PathBuf>,
}

/// Runs the scenario and prints its figures; true when both clusters answer alike.
pub async fn run(o: &ExportOptions) -> Result<bool> {
    let spec = ClusterSpec {
        server_bin: o.server_bin.clone(),
        workers: o.workers,
        replication_factor: o.replication_factor,
        partitions: o.partitions,
        cluster_secret: None,
        spare_workers: 0,
    };
    let first = LocalCluster::start(spec.clone()).await?;
    let load = LoadSpec {
        connections: o.connections,
        batch: o.batch,
        format: Format::Bincode,
        line_protocol: false,
        rate: None,
        label: "load".into(),
    };
    let span = Span {
        first: 0,
        count: o.intervals,
    };
    let loaded = load::run(
        &first.url,
        &first.token,
        Arc::clone(&o.dataset),
        span,
        &load,
    )
    .await?;
    println!(
        "loaded {} points in {:.1} s ({:.0} points/s)",
        loaded.points,
        loaded.elapsed.as_secs_f64(),
        loaded.points_per_second()
    );

    let dir = tempfile::tempdir().map_err(BenchError::io("create a temp dir"))?;
    let path = o
        .out
        .clone()
        .unwrap_or_else(|| dir.path().join("export.jsonl"));
    let control = first.control_pid()?;
    let workers: Vec<u32> = first
        .pids()?
        .into_iter()
        .filter(|&p| p != control && p != first.dev_pid())
        .collect();
    let exported = export_to(&first, &path, control, &workers).await?;
    println!(
        "exported {} points in {} lines ({:.1} MiB) in {:.1} s ({:.0} points/s)",
        exported.points,
        exported.lines,
        exported.bytes as f64 / (1 << 20) as f64,
        exported.elapsed.as_secs_f64(),
        exported.points as f64 / exported.elapsed.as_secs_f64().max(1e-9)
    );
    println!(
        "RSS before the export and its peak during it: control node {:.1} -> {:.1} MiB \
         (+{:.1} MiB), workers {:.1} -> {:.1} MiB (+{:.1} MiB); the points alone, at 16 bytes \
         each, would take {:.1} MiB",
        mib(exported.control.before),
        mib(exported.control.peak),
        mib(exported.control.growth()),
        mib(exported.workers.before),
        mib(exported.workers.peak),
        mib(exported.workers.growth()),
        (exported.points * 16) as f64 / (1 << 20) as f64
    );
    if exported.points != loaded.points {
        println!(
            "MISMATCH: {} points loaded, {} exported",
            loaded.points, exported.points
        );
        return Ok(false);
    }

    let second = LocalCluster::start(spec).await?;
    let imported = import_from(&second, &path, o.connections).await?;
    println!(
        "imported {} points in {} requests into a fresh cluster in {:.1} s ({:.0} points/s)",
        imported.points,
        imported.requests,
        imported.elapsed.as_secs_f64(),
        imported.points as f64 / imported.elapsed.as_secs_f64().max(1e-9)
    );
    let (a, b) = (
        first.client(Format::Bincode)?,
        second.client(Format::Bincode)?,
    );
    let mut agree = true;
    for (what, params) in comparisons() {
        let query = Query::from_params(&params)
            .map_err(|e| BenchError::Config(format!("bad comparison query {params:?}: {e}")))?;
        let (left, right) = (
            answer_rows(&a, &query).await?,
            answer_rows(&b, &query).await?,
        );
        let differences = compare(&left, &right);
        println!(
            "{what}: {} rows, {}",
            left.len(),
            if differences.is_empty() {
                "the same on both clusters".to_string()
            } else {
                format!("DIFFERENT: {}", differences.join("; "))
            }
        );
        agree &= differences.is_empty() && !left.is_empty();
    }
    Ok(agree)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What the export measured.
struct Exported {
    points: u64,
    lines: u64,
    bytes: u64,
    elapsed: Duration,
    control: Rss,
    workers: Rss,
}

/// Resident memory of a set of processes (summed), in KiB: before the export and the
/// highest sample during it.
struct Rss {
    before: u64,
    peak: u64,
}

impl Rss {
    fn growth(&self) -> u64 {
        self.peak.saturating_sub(self.before)
    }
}

/// Samples the summed RSS of `pids` every [`SAMPLE_EVERY`] until told to stop.
struct Sampler {
    before: u64,
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pids: Vec<u32>) -> Result<Sampler> {
        let before = rss_sum_kib(&pids)?;
        let peak = Arc::new(AtomicU64::new(before));
        let done = Arc::new(AtomicBool::new(false));
        let task = {
            let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    if let Ok(kib) = rss_sum_kib(&pids) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::time::sleep(SAMPLE_EVERY).await;
                }
            })
        };
        Ok(Sampler {
            before,
            peak,
            done,
            task,
        })
    }

    async fn stop(self) -> Rss {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        Rss {
            before: self.before,
            peak: self.peak.load(Ordering::Relaxed),
        }
    }
}

/// Streams the whole export of `cluster` into `path`, sampling the RSS of the `control`
/// node and of the `workers` meanwhile.
async fn export_to(
    cluster: &LocalCluster,
    path: &Path,
    control: u32,
    workers: &[u32],
) -> Result<Exported> {
    let http = reqwest::Client::new();
    let control_rss = Sampler::start(vec![control])?;
    let workers_rss = Sampler::start(workers.to_vec())?;
    let started = Instant::now();
    let mut resp = http
        .get(format!("{}/api/v1/export?precision=us", cluster.url))
        .bearer_auth(&cluster.token)
        .send()
        .await
        .map_err(|e| BenchError::Cluster(format!("export: {e}")))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(BenchError::Cluster(format!("export: {status}: {body}")));
    }
    let file = std::fs::File::create(path)
        .map_err(BenchError::io(format!("create {}", path.display())))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut counter = LineCounter::default();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BenchError::Cluster(format!("export stopped: {e}")))?
    {
        counter.feed(&chunk)?;
        out.write_all(&chunk)
            .map_err(BenchError::io("write the export"))?;
    }
    let elapsed = started.elapsed();
    let (control, workers) = (control_rss.stop().await, workers_rss.stop().await);
    out.flush().map_err(BenchError::io("write the export"))?;
    counter.finish()?;
    Ok(Exported {
        points: counter.points,
        lines: counter.lines,
        bytes: counter.bytes,
        elapsed,
        control,
        workers,
    })
}

/// Counts the lines and points of a JSON lines export as it arrives, and refuses an error
/// line (an export that stopped).
#[derive(Default)]
struct LineCounter {
    partial: Vec<u8>,
    lines: u64,
    points: u64,
    bytes: u64,
}

impl LineCounter {
    fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        self.bytes += chunk.len() as u64;
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..end]);
            let line = std::mem::take(&mut self.partial);
            self.line(&line)?;
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    fn line(&mut self, line: &[u8]) -> Result<()> {
        let doc: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| BenchError::Cluster(format!("an export line is not JSON: {e}")))?;
        if let Some(error) = doc.get("error") {
            return Err(BenchError::Cluster(format!("the export stopped: {error}")));
        }
        let values = doc["values"]
            .as_array()
            .ok_or_else(|| BenchError::Cluster("an export line without values".into()))?;
        self.lines += 1;
        self.points += values.len() as u64;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if self.partial.is_empty() {
            Ok(())
        } else {
            Err(BenchError::Cluster(
                "the export ends inside a line: cut off".into(),
            ))
        }
    }
}

/// The summed `VmRSS` of `pids`, in KiB.
fn rss_sum_kib(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&p| rss_kib(p)).sum()
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(BenchError::io(format!("read /proc/{pid}/status")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::Cluster(format!("no VmRSS in /proc/{pid}/status")))
}

/// What the import measured.
struct Imported {
    points: u64,
    requests: u64,
    elapsed: Duration,
}

/// Posts the lines of `path` to `cluster`'s import, [`LINES_PER_IMPORT`] a request, over
/// `connections` concurrent requests; each request is sent under its own `Idempotency-Key`
/// and retried (under the same key) on a 503 or a connection error.
async fn import_from(cluster: &LocalCluster, path: &Path, connections: usize) -> Result<Imported> {
    let file =
        std::fs::File::open(path).map_err(BenchError::io(format!("open {}", path.display())))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/import?precision=us", cluster.url);
    let mut in_flight = tokio::task::JoinSet::new();
    let (mut points, mut requests) = (0u64, 0u64);
    let started = Instant::now();
    loop {
        let mut body = Vec::new();
        let mut lines = 0;
        while lines < LINES_PER_IMPORT {
            let before = body.len();
            let n = reader
                .read_until(b'\n', &mut body)
                .map_err(BenchError::io("read the export"))?;
            if n == 0 {
                break;
            }
            if body[before..].iter().all(u8::is_ascii_whitespace) {
                body.truncate(before);
                continue;
            }
            points += count_values(&body[before..])?;
            lines += 1;
        }
        if lines == 0 {
            break;
        }
        while in_flight.len() >= connections.max(1) {
            finished(in_flight.join_next().await)?;
        }
        let (http, url, token) = (http.clone(), url.clone(), cluster.token.clone());
        let key = format!("bench-import-{requests}");
        requests += 1;
        in_flight.spawn(async move { post_import(&http, &url, &token, &key, body).await });
    }
    while let Some(done) = in_flight.join_next().await {
        finished(Some(done))?;
    }
    Ok(Imported {
        points,
        requests,
        elapsed: started.elapsed(),
    })
}

fn finished(done: Option<std::result::Result<Result<()>, tokio::task::JoinError>>) -> Result<()> {
    match done {
        None => Ok(()),
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(BenchError::Cluster(format!("an import task failed: {e}"))),
    }
}

/// The number of values of one export line.
fn count_values(line: &[u8]) -> Result<u64> {
    let doc: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| BenchError::Cluster(format!("an export line is not JSON: {e}")))?;
    doc["values"]
        .as_array()
        .map(|v| v.len() as u64)
        .ok_or_else(|| BenchError::Cluster("an export line without values".into()))
}

/// Most attempts of one import request.
const IMPORT_ATTEMPTS: u32 = 5;

async fn post_import(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    key: &str,
    body: Vec<u8>,
) -> Result<()> {
    let body = bytes::Bytes::from(body);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent = http
            .post(url)
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await;
        let retry = match sent {
            Ok(resp) if resp.status().as_u16() == 204 => return Ok(()),
            Ok(resp) if resp.status().as_u16() == 503 || resp.status().as_u16() == 429 => {
                format!("{}", resp.status())
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                return Err(BenchError::Cluster(format!(
                    "import {key}: {status}: {text}"
                )));
            }
            Err(e) => e.to_string(),
        };
        if attempt >= IMPORT_ATTEMPTS {
            return Err(BenchError::Cluster(format!(
                "import {key}: still failing after {attempt} attempts: {retry}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
}

/// The queries both clusters must answer alike.
fn comparisons() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let metrics = FIELDS.join(",");
    let aggs = "count,sum,min,max".to_string();
    vec![
        (
            "per metric and host",
            vec![
                ("metric", metrics.clone()),
                ("agg", aggs.clone()),
                ("group_by", "metric,hostname".into()),
                ("consistency", "strong".into()),
                ("allow_partial", "false".into()),
            ],
        ),
        (
            "per metric and hour",
            vec![
                ("metric", metrics),
                ("agg", aggs),
                ("group_by", "metric".into()),
                ("window", "1h".into()),
                ("consistency", "strong".into()),
                ("allow_partial", "false".into()),
            ],
        ),
    ]
}

/// An answer's rows: key (group values, bucket start) to (count, sum, min, max).
type Rows = BTreeMap<Vec<String>, [Option<f64>; 4]>;

async fn answer_rows(client: &Client, query: &Query) -> Result<Rows> {
    let answer = client.aggregate(query).await?;
    if !answer.is_complete() {
        return Err(BenchError::Cluster("a comparison answer is partial".into()));
    }
    let (result, _) = answer.into_parts();
    let values = |aggs: &[raftmetrics_client::raftmetrics_types::AggValue]| {
        [Agg::Count, Agg::Sum, Agg::Min, Agg::Max]
            .map(|agg| aggs.iter().find(|v| v.agg == agg).and_then(|v| v.value))
    };
    let mut rows = Rows::new();
    for group in &result.groups {
        let key: Vec<String> = group
            .key
            .iter()
            .map(|(_, v)| v.clone().unwrap_or_default())
            .collect();
        if group.buckets.is_empty() {
            rows.insert(key, values(&group.aggregations));
        } else {
            for bucket in &group.buckets {
                let mut key = key.clone();
                key.push(bucket.start.to_rfc3339());
                rows.insert(key, values(&bucket.aggregations));
            }
        }
    }
    Ok(rows)
}

/// The differences between two answers: counts, minima and maxima exactly, sums within
/// [`SUM_TOLERANCE`] relative; at most five are named.
fn compare(left: &Rows, right: &Rows) -> Vec<String> {
    let mut out = Vec::new();
    if left.len() != right.len() {
        out.push(format!("{} rows against {}", left.len(), right.len()));
    }
    for (key, l) in left {
        let Some(r) = right.get(key) else {
            out.push(format!("{key:?} missing"));
            continue;
        };
        let same = l.iter().zip(r).enumerate().all(|(i, (a, b))| match (a, b) {
            (Some(a), Some(b)) if i == 1 => (a - b).abs() <= SUM_TOLERANCE * a.abs().max(1.0),
            (a, b) => a == b,
        });
        if !same {
            out.push(format!("{key:?}: {l:?} against {r:?}"));
        }
    }
    out.truncate(5);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_follows_lines_across_chunks_and_refuses_an_error_line() {
        let text = "{\"metric\":{\"__name__\":\"a\"},\"values\":[1,2],\"timestamps\":[1,2]}\n\
                    {\"metric\":{\"__name__\":\"b\"},\"values\":[3],\"timestamps\":[3]}\n";
        let mut c = LineCounter::default();
        for chunk in text.as_bytes().chunks(7) {
            c.feed(chunk).unwrap();
        }
        c.finish().unwrap();
        assert_eq!((c.lines, c.points, c.bytes), (2, 3, text.len() as u64));
        let mut c = LineCounter::default();
        assert!(c.feed(b"{\"error\":\"export stopped\"}\n").is_err());
        let mut c = LineCounter::default();
        c.feed(&text.as_bytes()[..10]).unwrap();
        assert!(c.finish().is_err(), "cut off inside a line");
    }

    #[test]
    fn answers_compare_exactly_but_for_summation_order() {
        let key = vec!["usage_user".to_string(), "host_1".to_string()];
        let left = Rows::from([(key.clone(), [Some(3.0), Some(1.0e6), Some(0.5), Some(9.0)])]);
        let mut right = left.clone();
        right.get_mut(&key).unwrap()[1] = Some(1.0e6 * (1.0 + 1e-12));
        assert!(compare(&left, &right).is_empty());
        right.get_mut(&key).unwrap()[0] = Some(4.0);
        assert_eq!(compare(&left, &right).len(), 1);
        assert_eq!(compare(&left, &Rows::new()).len(), 2);
    }
}
