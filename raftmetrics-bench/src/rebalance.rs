//! `rebalance`: a cluster scaled out from 3 to 4 workers under steady ingest, in one run.
//!
//! 1. Starts a local cluster of 3 workers at replication factor 3 with a cluster secret of
//!    its own (so that a worker can be started by hand), and loads the dataset's points
//!    (closed loop).
//! 2. Offers a steady open loop (a fixed rate, batches of `batch` points over `connections`
//!    connections) after the dataset's points. After a warm-up, the baseline window
//!    measures it with 3 workers and no move.
//! 3. Starts a 4th worker by hand, as an operator would, with the same load running. The
//!    control node moves replicas to it by Raft membership changes (ADR 020). The window
//!    of the moves runs from the start of that worker until `GET /admin/workers` shows no
//!    move in flight and every worker holding its share of replicas (12 ± 1 of 48 with 16
//!    partitions), and measures the same load.
//! 4. Stops the load and checks that a strong count of the cluster finds exactly the points
//!    acknowledged (batch ids make every acknowledged batch stored once, and nothing is
//!    stored that was not acknowledged when no request failed).
//!
//! The numbers that mean something are the ratios of the moves window to the baseline of
//! the same run: rate acknowledged and acknowledgement p99. Bytes moved are the new worker's
//! data directory once balanced: the snapshots it received, and the raft log and the rows
//! of the writes its replicas took since.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use raftmetrics_client::Format;
use serde_json::Value;
use tokio::time::Instant;

use crate::cluster::{self, ClusterSpec, HandWorker, LocalCluster};
use crate::error::{BenchError, Result};
use crate::generator::Dataset;
use crate::load::{self, LoadReport, LoadSpec, Span, Stop, Window};
use crate::report::{Table, millis, ratio, thousands};
use crate::suite;

/// Workers before the scale-out; the one started by hand is the next id.
const WORKERS_BEFORE: u16 = 3;
const REPLICATION_FACTOR: u32 = 3;
/// Deadline of one admin or metrics request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the admin document is read while waiting.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long the cluster gets to answer a complete strong count at the end.
const COUNT_LIMIT: Duration = Duration::from_secs(60);
/// Points offered beyond the windows, so that the load never runs out before it is stopped.
const STEADY_MARGIN: Duration = Duration::from_secs(30);
/// The moves counter of the control node's `GET /metrics`.
const MOVES_FINISHED: &str = "raftmetrics_moves_total{result=\"finished\"}";
const MOVES_FAILED: &str = "raftmetrics_moves_total{result=\"failed\"}";

/// Options of `rebalance`.
#[derive(Clone, Debug)]
pub struct RebalanceOptions {
    pub dataset: Arc<Dataset>,
    /// Whole intervals of the dataset loaded first.
    pub intervals: u64,
    pub preload_connections: usize,
    pub preload_batch: usize,
    pub preload_format: Format,
    /// Points per second offered by the steady load.
    pub rate: f64,
    pub connections: usize,
    /// Points per request of the steady load.
    pub batch: usize,
    /// Steady load before the baseline window starts.
    pub warmup: Duration,
    pub baseline: Duration,
    /// Longest wait for the cluster to be balanced after the new worker starts.
    pub rebalance_limit: Duration,
    /// Most points the steady load offers.
    pub max_steady_points: u64,
    pub partitions: u32,
    pub server_bin: PathBuf,
    /// Where to write the steady load's requests (send time and latency), if anywhere.
    pub latency_log: Option<PathBuf>,
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct RebalanceReport {
    pub rate_offered: f64,
    pub connections: usize,
    pub batch: usize,
    pub baseline: Window,
    pub during: Window,
    /// From the start of the new worker until balanced.
    pub rebalance: Duration,
    /// Moves finished and rolled back during the rebalance (the control node's counters).
    pub moves_finished: u64,
    pub moves_failed: u64,
    /// Placement epochs committed during the rebalance.
    pub epochs: u64,
    /// The new worker's data directory once balanced.
    pub bytes_moved: u64,
    /// Replicas per worker once balanced, by id.
    pub replicas: Vec<(u64, u64)>,
    /// Points acknowledged in all (preload and steady load).
    pub acknowledged: u64,
    /// A complete strong count at the end.
    pub stored: u64,
}

impl RebalanceReport {
    /// Whether the cluster holds exactly what it acknowledged.
    pub fn consistent(&self) -> bool {
        self.stored == self.acknowledged
    }

    /// The two tables: the windows side by side, and the rebalance itself.
    pub fn tables(&self) -> (Table, Table) {
        let mut windows = Table::new(&[
            "window",
            "seconds",
            "requests",
            "points/s",
            "ratio",
            "ack p50",
            "ack p99",
            "p99 ratio",
        ]);
        let base = &self.baseline;
        for (name, w) in [
            (
                format!(
                    "baseline, 3 workers ({}/s offered, {} conn x {})",
                    thousands(self.rate_offered),
                    self.connections,
                    self.batch
                ),
                base,
            ),
            ("during the moves to a 4th worker".to_string(), &self.during),
        ] {
            windows.row(vec![
                name,
                format!("{:.1}", w.seconds),
                thousands(w.requests as f64),
                thousands(w.points_per_second()),
                ratio(w.points_per_second() / base.points_per_second().max(1e-9)),
                millis(w.p50),
                millis(w.p99),
                ratio(w.p99.as_secs_f64() / base.p99.as_secs_f64().max(1e-9)),
            ]);
        }
        let mut moves = Table::new(&[
            "rebalance",
            "seconds",
            "moves",
            "epochs",
            "replicas per worker",
            "MB moved",
            "MB/s",
            "points stored",
            "strong count = acknowledged",
        ])
        .text_columns(&[4, 8]);
        let mb = self.bytes_moved as f64 / 1e6;
        let replicas: Vec<String> = self
            .replicas
            .iter()
            .map(|(id, n)| format!("{id}:{n}"))
            .collect();
        moves.row(vec![
            "3 -> 4 workers, rf=3".into(),
            format!("{:.1}", self.rebalance.as_secs_f64()),
            if self.moves_failed == 0 {
                self.moves_finished.to_string()
            } else {
                format!(
                    "{} ({} rolled back)",
                    self.moves_finished, self.moves_failed
                )
            },
            self.epochs.to_string(),
            replicas.join(" "),
            format!("{mb:.1}"),
            format!("{:.1}", mb / self.rebalance.as_secs_f64().max(1e-9)),
            thousands(self.stored as f64),
            format!(
                "{} ({} acknowledged)",
                if self.consistent() { "yes" } else { "NO" },
                thousands(self.acknowledged as f64)
            ),
        ]);
        (windows, moves)
    }

    pub fn print(&self) {
        let (windows, moves) = self.tables();
        println!("\n## Steady ingest before and during a rebalance\n");
        println!("{}", windows.render());
        println!("{}", moves.render());
    }
}

/// One worker as `GET /admin/workers` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerLoad {
    pub id: u64,
    pub state: String,
    pub live: bool,
    pub replicas: u64,
    pub leaders: u64,
}

/// What the rebalance waits on, from `GET /admin/workers`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminSummary {
    pub epoch: u64,
    pub moves_in_flight: usize,
    pub workers: Vec<WorkerLoad>,
}

impl AdminSummary {
    pub fn parse(doc: &Value) -> Result<AdminSummary> {
        let bad = |what: &str| BenchError::Cluster(format!("/admin/workers: {what} in {doc}"));
        let workers = doc["workers"]
            .as_array()
            .ok_or_else(|| bad("no workers list"))?
            .iter()
            .map(|w| {
                Ok(WorkerLoad {
                    id: w["id"].as_u64().ok_or_else(|| bad("a worker without id"))?,
                    state: w["state"].as_str().unwrap_or_default().to_string(),
                    live: w["live"].as_bool().unwrap_or(false),
                    replicas: w["replicas"].as_u64().unwrap_or(0),
                    leaders: w["leaders"].as_u64().unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdminSummary {
            epoch: doc["epoch"].as_u64().ok_or_else(|| bad("no epoch"))?,
            moves_in_flight: doc["moves"]
                .as_array()
                .ok_or_else(|| bad("no moves list"))?
                .len(),
            workers,
        })
    }

    /// No move in flight, exactly `workers` workers, all active and live, together holding
    /// `replicas` replicas, each within one of an even share (12 ± 1 for 48 on 4).
    pub fn balanced(&self, workers: usize, replicas: u64) -> bool {
        if self.moves_in_flight != 0 || self.workers.len() != workers || workers == 0 {
            return false;
        }
        let (low, high) = (replicas / workers as u64, replicas.div_ceil(workers as u64));
        self.workers.iter().all(|w| {
            w.state == "active" && w.live && w.replicas + 1 >= low && w.replicas <= high + 1
        }) && self.workers.iter().map(|w| w.replicas).sum::<u64>() == replicas
    }
}

/// The value of one series (name and labels, exactly as written) of a Prometheus text
/// exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
        value.parse().ok()
    })
}

/// Bytes of the regular files under `path` (symbolic links not followed).
pub fn dir_size(path: &Path) -> Result<u64> {
    let mut total = 0;
    let entries =
        std::fs::read_dir(path).map_err(BenchError::io(format!("list {}", path.display())))?;
    for entry in entries {
        let entry = entry.map_err(BenchError::io(format!("list {}", path.display())))?;
        let kind = entry
            .file_type()
            .map_err(BenchError::io(format!("stat {}", entry.path().display())))?;
        if kind.is_dir() {
            total += dir_size(&entry.path())?;
        } else if kind.is_file() {
            // A file removed since it was listed (a raft log file recycled) counts nothing.
            total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Authenticated GETs of the control node's admin document and metrics.
struct Admin {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Admin {
    fn new(cluster: &LocalCluster) -> Result<Admin> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| BenchError::Cluster(format!("an HTTP client: {e}")))?;
        Ok(Admin {
            http,
            url: cluster.url.clone(),
            token: cluster.token.clone(),
        })
    }

    async fn get(&self, path: &str) -> Result<String> {
        let failed = |e: reqwest::Error| BenchError::Cluster(format!("GET {path}: {e}"));
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        let body = response.text().await.map_err(failed)?;
        if !status.is_success() {
            return Err(BenchError::Cluster(format!("GET {path}: {status}: {body}")));
        }
        Ok(body)
    }

    async fn summary(&self) -> Result<AdminSummary> {
        let text = self.get("/admin/workers").await?;
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| BenchError::Cluster(format!("/admin/workers is not JSON: {e}")))?;
        AdminSummary::parse(&doc)
    }

    /// Moves finished and failed so far.
    async fn moves(&self) -> Result<(u64, u64)> {
        let text = self.get("/metrics").await?;
        let read = |series| metric_value(&text, series).unwrap_or(0.0) as u64;
        Ok((read(MOVES_FINISHED), read(MOVES_FAILED)))
    }
}

/// Aborts a task when dropped, so an early error leaves no load running.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The steady load's outcome when it ended before it was stopped.
async fn ended_early(load: &mut AbortOnDrop<Result<LoadReport>>, when: &str) -> BenchError {
    match (&mut load.0).await {
        Ok(Err(e)) => e,
        Ok(Ok(r)) => BenchError::Config(format!(
            "the steady load ran out of points ({}) {when}: raise --max-steady-points",
            r.points
        )),
        Err(e) => BenchError::Task(e.to_string()),
    }
}

/// Waits until the new worker has its share, for up to `o.rebalance_limit`; fails early
/// when the worker or the load stops.
async fn wait_balanced(
    o: &RebalanceOptions,
    admin: &Admin,
    worker: &mut HandWorker,
    load: &mut AbortOnDrop<Result<LoadReport>>,
) -> Result<AdminSummary> {
    let started = Instant::now();
    let workers = usize::from(WORKERS_BEFORE) + 1;
    let replicas = u64::from(o.partitions) * u64::from(REPLICATION_FACTOR);
    let mut last = None;
    let mut shown = Instant::now();
    loop {
        if let Some(status) = worker.exited() {
            return Err(BenchError::Cluster(format!(
                "worker {} exited ({status}); its log ends with:\n{}",
                worker.id,
                worker.log_tail()
            )));
        }
        if load.0.is_finished() {
            return Err(ended_early(load, "during the rebalance").await);
        }
        // A request that fails while the control node is busy is asked again.
        match admin.summary().await {
            Ok(summary) if summary.balanced(workers, replicas) => return Ok(summary),
            Ok(summary) => last = Some(summary),
            Err(e) => eprintln!("  {e}"),
        }
        if shown.elapsed() >= Duration::from_secs(5) {
            shown = Instant::now();
            if let Some(s) = &last {
                let held: Vec<String> = s
                    .workers
                    .iter()
                    .map(|w| format!("{}:{}", w.id, w.replicas))
                    .collect();
                eprintln!(
                    "  rebalancing, {:.0} s: epoch {}, {} moves in flight, replicas {}",
                    started.elapsed().as_secs_f64(),
                    s.epoch,
                    s.moves_in_flight,
                    held.join(" ")
                );
            }
        }
        if started.elapsed() >= o.rebalance_limit {
            return Err(BenchError::Cluster(format!(
                "not balanced within {} s: {last:?}",
                o.rebalance_limit.as_secs()
            )));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A complete strong count, asked until one is answered, for up to [`COUNT_LIMIT`].
async fn final_count(cluster: &LocalCluster) -> Result<u64> {
    let client = cluster.client(Format::Bincode)?;
    let started = Instant::now();
    loop {
        match suite::strong_count(&client).await {
            Ok(Some(n)) => return Ok(n),
            Ok(None) => eprintln!("  the strong count was partial; asking again"),
            Err(e) => eprintln!("  the strong count failed ({e}); asking again"),
        }
        if started.elapsed() >= COUNT_LIMIT {
            return Err(BenchError::Cluster(format!(
                "no complete strong count within {} s",
                COUNT_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Steady points offered: enough for every window and the longest rebalance, at most the cap.
fn steady_points(o: &RebalanceOptions) -> u64 {
    let time = o.warmup + o.baseline + o.rebalance_limit + STEADY_MARGIN;
    ((o.rate * time.as_secs_f64()) as u64).min(o.max_steady_points)
}

/// Runs the scenario.
pub async fn run(o: &RebalanceOptions) -> Result<RebalanceReport> {
    if !(o.rate.is_finite() && o.rate > 0.0) {
        return Err(BenchError::Config("--rate must be above zero".into()));
    }
    let dataset = &o.dataset;
    let cluster = LocalCluster::start(ClusterSpec {
        server_bin: o.server_bin.clone(),
        workers: WORKERS_BEFORE,
        replication_factor: REPLICATION_FACTOR,
        partitions: o.partitions,
        cluster_secret: Some(cluster::random_secret()?),
        spare_workers: 1,
    })
    .await?;
    let admin = Admin::new(&cluster)?;

    let preload = load::run(
        &cluster.url,
        &cluster.token,
        Arc::clone(dataset),
        Span {
            first: 0,
            count: o.intervals,
        },
        &LoadSpec {
            connections: o.preload_connections,
            batch: o.preload_batch,
            format: o.preload_format,
            line_protocol: false,
            rate: None,
            label: "preload".into(),
        },
    )
    .await?;

    let steady = steady_points(o);
    let span = Span {
        first: o.intervals,
        count: dataset.intervals_for(steady).max(1),
    };
    let spec = LoadSpec {
        connections: o.connections,
        batch: o.batch,
        format: Format::Bincode,
        line_protocol: false,
        rate: Some(o.rate),
        label: "steady".into(),
    };
    let stop = Stop::default();
    let mut steady_load = AbortOnDrop(tokio::spawn({
        let (url, token) = (cluster.url.clone(), cluster.token.clone());
        let (dataset, stop) = (Arc::clone(dataset), stop.clone());
        async move { load::run_until(&url, &token, dataset, span, &spec, &stop).await }
    }));

    // Warm-up and baseline: 3 workers, no move.
    let baseline_until = Instant::now() + o.warmup + o.baseline;
    while Instant::now() < baseline_until {
        if steady_load.0.is_finished() {
            return Err(ended_early(&mut steady_load, "before the baseline ended").await);
        }
        tokio::time::sleep(POLL_EVERY.min(baseline_until - Instant::now())).await;
    }
    let before = admin.summary().await?;
    if before.moves_in_flight != 0 {
        return Err(BenchError::Cluster(format!(
            "moves in flight before the new worker started: {before:?}"
        )));
    }
    let (finished_before, failed_before) = admin.moves().await?;

    // Scale out.
    let joined_at = Instant::now();
    eprintln!("starting worker {} by hand", WORKERS_BEFORE + 1);
    let mut worker = cluster.start_worker(WORKERS_BEFORE + 1)?;
    let after = wait_balanced(o, &admin, &mut worker, &mut steady_load).await?;
    let balanced_at = Instant::now();
    let bytes_moved = dir_size(&worker.dir)?;
    eprintln!(
        "balanced after {:.1} s",
        (balanced_at - joined_at).as_secs_f64()
    );
    stop.stop();
    let report = match (&mut steady_load.0).await {
        Ok(r) => r?,
        Err(e) => return Err(BenchError::Task(e.to_string())),
    };
    let (finished_after, failed_after) = admin.moves().await?;

    let since_start = |at: Instant| at.saturating_duration_since(report.started);
    eprintln!(
        "on the steady load's clock: baseline {:.1}-{:.1} s, moves {:.1}-{:.1} s",
        o.warmup.as_secs_f64(),
        since_start(joined_at).as_secs_f64(),
        since_start(joined_at).as_secs_f64(),
        since_start(balanced_at).as_secs_f64()
    );
    if let Some(path) = &o.latency_log {
        let write = || -> std::io::Result<()> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
            report.write_timeline(&mut out)?;
            std::io::Write::flush(&mut out)
        };
        write().map_err(BenchError::io("write the latency log"))?;
    }
    let baseline = report.window(o.warmup, since_start(joined_at));
    let during = report.window(since_start(joined_at), since_start(balanced_at));
    let acknowledged = preload.points + report.points;
    let stored = final_count(&cluster).await?;
    Ok(RebalanceReport {
        rate_offered: o.rate,
        connections: o.connections,
        batch: o.batch,
        baseline,
        during,
        rebalance: balanced_at - joined_at,
        moves_finished: finished_after.saturating_sub(finished_before),
        moves_failed: failed_after.saturating_sub(failed_before),
        epochs: after.epoch.saturating_sub(before.epoch),
        bytes_moved,
        replicas: after.workers.iter().map(|w| (w.id, w.replicas)).collect(),
        acknowledged,
        stored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(moves: usize, replicas: &[u64]) -> Value {
        let workers: Vec<Value> = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| {
                serde_json::json!({"id": i + 1, "state": "active", "live": true,
                    "replicas": r, "leaders": 4, "moves": []})
            })
            .collect();
        let moves: Vec<Value> = (0..moves)
            .map(|id| serde_json::json!({"id": id, "partition": 5, "from": 2, "to": 4}))
            .collect();
        serde_json::json!({"epoch": 14, "replication_factor": 3, "workers": workers,
            "moves": moves, "placement": [], "learners": [], "joint": []})
    }

    #[test]
    fn balanced_means_no_move_and_every_worker_within_one_of_its_share() {
        let parse = |d: &Value| AdminSummary::parse(d).unwrap();
        assert!(parse(&doc(0, &[12, 12, 12, 12])).balanced(4, 48));
        assert!(parse(&doc(0, &[13, 11, 12, 12])).balanced(4, 48));
        // A move in flight, a worker short of its share, the new worker not listed yet.
        assert!(!parse(&doc(1, &[12, 12, 12, 12])).balanced(4, 48));
        assert!(!parse(&doc(0, &[14, 14, 10, 10])).balanced(4, 48));
        assert!(!parse(&doc(0, &[16, 16, 16])).balanced(4, 48));
        assert!(parse(&doc(0, &[16, 16, 16])).balanced(3, 48));
        // A learner still counted beside the voters it replaces.
        assert!(!parse(&doc(0, &[13, 13, 12, 12])).balanced(4, 48));
        let mut d = doc(0, &[12, 12, 12, 12]);
        d["workers"][3]["state"] = "draining".into();
        assert!(!parse(&d).balanced(4, 48));
        d["workers"][3]["state"] = "active".into();
        d["workers"][3]["live"] = false.into();
        assert!(!parse(&d).balanced(4, 48));

        let s = parse(&doc(2, &[12, 11]));
        assert_eq!(s.epoch, 14);
        assert_eq!(s.moves_in_flight, 2);
        assert_eq!(
            s.workers[1],
            WorkerLoad {
                id: 2,
                state: "active".into(),
                live: true,
                replicas: 11,
                leaders: 4
            }
        );
        assert!(AdminSummary::parse(&serde_json::json!({"epoch": 1})).is_err());
    }

    #[test]
    fn reads_one_series_of_a_prometheus_exposition() {
        let text = "# HELP raftmetrics_moves_total Replica moves.\n\
                    # TYPE raftmetrics_moves_total counter\n\
                    raftmetrics_moves_total{result=\"started\"} 13\n\
                    raftmetrics_moves_total{result=\"finished\"} 12\n\
                    raftmetrics_moves_total{result=\"failed\"} 0\n\
                    raftmetrics_moves_total_other{result=\"finished\"} 99\n";
        assert_eq!(metric_value(text, MOVES_FINISHED), Some(12.0));
        assert_eq!(metric_value(text, MOVES_FAILED), Some(0.0));
        assert_eq!(metric_value(text, "raftmetrics_moves_total"), None);
        assert_eq!(metric_value("", MOVES_FINISHED), None);
    }

    #[test]
    fn sums_the_files_of_a_directory_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir_all(dir.path().join("raft/log")).unwrap();
        std::fs::write(dir.path().join("raft/log/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(dir.path()).unwrap(), 123);
        assert!(dir_size(&dir.path().join("missing")).is_err());
    }

    fn window(seconds: f64, points: u64, p50_ms: u64, p99_ms: u64) -> Window {
        Window {
            seconds,
            requests: points / 1_000,
            points,
            p50: Duration::from_millis(p50_ms),
            p99: Duration::from_millis(p99_ms),
        }
    }

    #[test]
    fn the_tables_put_the_moves_beside_the_baseline_of_the_same_run() {
        let report = RebalanceReport {
            rate_offered: 30_000.0,
            connections: 4,
            batch: 1_000,
            baseline: window(20.0, 600_000, 10, 20),
            during: window(40.0, 1_080_000, 12, 50),
            rebalance: Duration::from_secs(40),
            moves_finished: 12,
            moves_failed: 1,
            epochs: 37,
            bytes_moved: 200_000_000,
            replicas: vec![(1, 12), (2, 12), (3, 12), (4, 12)],
            acknowledged: 2_700_000,
            stored: 2_700_000,
        };
        assert!(report.consistent());
        let (windows, moves) = report.tables();
        let windows = windows.render();
        let lines: Vec<&str> = windows.lines().collect();
        assert!(
            lines[2].starts_with("| baseline, 3 workers (30,000/s offered, 4 conn x 1000) |"),
            "{windows}"
        );
        let cells = |line: &str| -> Vec<String> {
            line.split('|')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        };
        assert_eq!(
            cells(lines[2])[1..],
            [
                "20.0", "600", "30,000", "1.00x", "10.0 ms", "20.0 ms", "1.00x"
            ]
        );
        assert_eq!(
            cells(lines[3])[1..],
            [
                "40.0", "1,080", "27,000", "0.90x", "12.0 ms", "50.0 ms", "2.50x"
            ]
        );
        let moves = moves.render();
        let row = cells(moves.lines().nth(2).unwrap());
        assert_eq!(
            row,
            [
                "3 -> 4 workers, rf=3",
                "40.0",
                "12 (1 rolled back)",
                "37",
                "1:12 2:12 3:12 4:12",
                "200.0",
                "5.0",
                "2,700,000",
                "yes (2,700,000 acknowledged)"
            ]
        );
        let short = RebalanceReport {
            stored: 2_699_000,
            ..report
        };
        assert!(!short.consistent());
        assert!(short.tables().1.render().contains("NO (2,700,000"));
    }

    #[test]
    fn the_steady_load_is_capped() {
        let o = RebalanceOptions {
            dataset: Arc::new(Dataset::new(crate::generator::Config::new(1, 20))),
            intervals: 10,
            preload_connections: 8,
            preload_batch: 10_000,
            preload_format: Format::Bincode,
            rate: 10_000.0,
            connections: 4,
            batch: 1_000,
            warmup: Duration::from_secs(2),
            baseline: Duration::from_secs(20),
            rebalance_limit: Duration::from_secs(300),
            max_steady_points: 50_000_000,
            partitions: 16,
            server_bin: PathBuf::from("raftmetrics-server"),
            latency_log: None,
        };
        assert_eq!(steady_points(&o), 3_520_000);
        let capped = RebalanceOptions {
            max_steady_points: 1_000_000,
            ..o
        };
        assert_eq!(steady_points(&capped), 1_000_000);
    }
}
