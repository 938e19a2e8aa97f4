//! `peers`: RaftMetrics beside VictoriaMetrics and InfluxDB 1.x on the same machine, the
//! same points and the same query set.
//!
//! Each system runs alone, one after the other, each in a temporary directory of its own and
//! on loopback ports of its own: a local RaftMetrics cluster (as `protocols` starts it), then
//! VictoriaMetrics, then InfluxDB, each a child process killed when dropped (so on an error or
//! Ctrl-C too). A peer whose binary is missing is skipped.
//!
//! Each is loaded with the dataset's points over the same connections and batch size:
//! RaftMetrics in bincode through the typed client (as `ingest`), the peers with line
//! protocol bodies built once before the runs, the same bytes for both, through the same
//! load tool. A load's time runs from its first request until every point is queryable:
//! after the last acknowledgement, a count of all points is asked until it equals the
//! points sent (RaftMetrics: the complete `consistency=strong` count of `ingest`;
//! VictoriaMetrics: `sum(count_over_time(...))` over the data's range, with its response
//! cache off; InfluxDB: `count` of each field). Then:
//! - server CPU-seconds per million points: `utime + stime` of the server's processes over
//!   the load (RaftMetrics: `dev` and every node), from `/proc`;
//! - data on disk: the allocated size of the server's data directories once it stops
//!   changing after the load (the same for 5 s, checked every second, at most 60 s);
//! - the query set of `queries.rs`, a warm-up then the median of `--runs` each, and each
//!   peer's answers against RaftMetrics' where their meaning agrees (see `plan.rs`,
//!   `victoria.rs`, `influx.rs`);
//! - peak RSS: `VmHWM` of the server's processes, added up, at the end;
//! - peak PSS: the largest sum of the processes' proportional sets, sampled every 0.5 s
//!   from the start of the load ([`PssPeak`]). A page several processes share, such as
//!   the code of the one binary all RaftMetrics nodes run, counts once in it, and in the
//!   RSS of each.

mod influx;
pub(crate) mod plan;
mod victoria;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use raftmetrics_client::{Agg, Format};

use crate::cluster::{ClusterSpec, LocalCluster};
use crate::cpu::CpuSample;
use crate::error::{BenchError, Result};
use crate::generator::Dataset;
use crate::load::{self, LineBodies, LineTarget, LoadSpec, Span};
use crate::queries::{self, Case, PERCENTILE_TOLERANCE, Row};
use crate::report::{Table, millis, ratio, thousands};
use crate::suite;
use plan::Plan;

/// How long a peer gets to answer its health check after it starts.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// How long a peer gets to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How long after the last acknowledgement every point must be queryable.
const QUERYABLE_LIMIT: Duration = Duration::from_secs(300);
/// How long the data directories get to stop changing...
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// ...that is, to keep one size for this long: longer than RaftMetrics takes to save a
/// store once writes stop and delete the log files that held its points (2 s, then 1 s).
const SETTLED_FOR: Duration = Duration::from_secs(5);
/// Relative tolerance of VictoriaMetrics' values (it keeps about 12 significant digits).
const VICTORIA_TOLERANCE: f64 = 1e-9;
/// Relative tolerance of sums and averages (summation order).
const SUM_TOLERANCE: f64 = 1e-9;
/// Lines of a peer's log quoted in an error.
const LOG_TAIL_LINES: usize = 20;

/// The line printed beside the table.
pub const DURABILITY: &str = "Durability differs: RaftMetrics fsyncs its Raft log before it \
    acknowledges a write; VictoriaMetrics does not (it answers once the points are in memory \
    and writes them out in the background); InfluxDB 1.x fsyncs its WAL \
    before it answers (wal-fsync-delay 0s, its default).";

/// Where the peers' binaries are.
#[derive(Clone, Debug)]
pub struct PeerBins {
    pub victoria_metrics: PathBuf,
    pub influxd: PathBuf,
}

impl PeerBins {
    /// Whether at least one of them is installed.
    pub fn any(&self) -> bool {
        self.victoria_metrics.is_file() || self.influxd.is_file()
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct PeersOptions {
    pub dataset: Arc<Dataset>,
    pub intervals: u64,
    pub connections: usize,
    pub batch: usize,
    pub runs: usize,
    pub rounds: u32,
    pub workers: u16,
    pub partitions: u32,
    pub server_bin: PathBuf,
    pub bins: PeerBins,
}

/// A server process of a peer, in a temporary directory; stopped when dropped (SIGTERM,
/// then SIGKILL after a grace period).
pub struct Server {
    name: &'static str,
    child: Child,
    _dir: tempfile::TempDir,
    data_dirs: Vec<PathBuf>,
    log: PathBuf,
    pub url: String,
}

/// The JSON body of an answer to a request that `what` names; an error for a failed request,
/// a status other than 2xx, or a body that is not JSON.
pub async fn json_answer(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<serde_json::Value> {
    let answer = request
        .send()
        .await
        .map_err(|e| BenchError::Task(format!("{what}: {e}")))?;
    let status = answer.status();
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| BenchError::Task(format!("{what}: {e}")))?;
    let text = || String::from_utf8_lossy(&bytes).into_owned();
    if !status.is_success() {
        return Err(BenchError::Task(format!(
            "{what} answered {status}: {}",
            text()
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| BenchError::Task(format!("{what} answered no JSON ({e}): {}", text())))
}

/// A free loopback port (free when asked; the server binds it just after).
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(BenchError::io("find a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(BenchError::io("find a free port"))?
        .port())
}

impl Server {
    /// Starts `bin` with the arguments `args` makes for its directory and waits until `GET
    /// url + health` answers 2xx; `data_dirs` names the directories that hold its data.
    async fn start(
        name: &'static str,
        bin: &Path,
        url: String,
        health: &str,
        args: impl FnOnce(&Path) -> Vec<String>,
        data_dirs: impl FnOnce(&Path) -> Vec<PathBuf>,
    ) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("raftmetrics-bench-{}-", name.to_lowercase()))
            .tempdir()
            .map_err(BenchError::io("create a temporary directory"))?;
        let log = dir.path().join("server.log");
        let out = File::create(&log).map_err(BenchError::io("create a server log"))?;
        let err = out
            .try_clone()
            .map_err(BenchError::io("open a server log"))?;
        let child = Command::new(bin)
            .args(args(dir.path()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(BenchError::io(format!("start {}", bin.display())))?;
        let mut server = Server {
            name,
            child,
            data_dirs: data_dirs(dir.path()),
            _dir: dir,
            log,
            url,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| BenchError::Task(e.to_string()))?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(BenchError::Cluster(format!(
                    "{name} exited during startup ({status}); its log ends with:\n{}",
                    server.log_tail()
                )));
            }
            match http.get(format!("{}{health}", server.url)).send().await {
                Ok(r) if r.status().is_success() => return Ok(server),
                _ if started.elapsed() > STARTUP_LIMIT => {
                    return Err(BenchError::Cluster(format!(
                        "{name} did not answer {health} in {} s; its log ends with:\n{}",
                        STARTUP_LIMIT.as_secs(),
                        server.log_tail()
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop in time: killed", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes allocated on disk under `path` (files' blocks, as `du` counts them).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            total += disk_usage(&entry.path());
        }
    }
    total
}

/// The size of `dirs` once it stops changing (the same in every check, a second apart, for
/// [`SETTLED_FOR`]), or after [`SETTLE_LIMIT`].
async fn settled_disk_usage(dirs: &[PathBuf]) -> u64 {
    let size = || dirs.iter().map(|d| disk_usage(d)).sum::<u64>();
    let started = Instant::now();
    let mut last = size();
    let mut since = Instant::now();
    while started.elapsed() < SETTLE_LIMIT && since.elapsed() < SETTLED_FOR {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = size();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

/// The `<field>:  <n> kB` line of a `/proc` file, in bytes.
fn proc_kib(text: &str, field: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `field` of `/proc/<pid>/<file>` of each of `pids`, added up, in bytes.
fn proc_sum(pids: &[u32], file: &str, field: &str) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok())
        .filter_map(|text| proc_kib(&text, field))
        .sum()
}

/// Peak resident set of `pids`, added up, in bytes.
fn peak_rss(pids: &[u32]) -> u64 {
    proc_sum(pids, "status", "VmHWM")
}

/// Proportional set of `pids` now (each shared page split between the processes that map
/// it), added up, in bytes.
fn pss(pids: &[u32]) -> u64 {
    proc_sum(pids, "smaps_rollup", "Pss")
}

/// How often [`PssPeak`] samples.
const PSS_EVERY: Duration = Duration::from_millis(500);

/// The largest [`pss`] of some processes seen by a task that samples it every
/// [`PSS_EVERY`] until [`PssPeak::finish`]. Processes of one binary share its code pages,
/// which `VmHWM` counts in each of them; the proportional set counts them once.
struct PssPeak {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

impl PssPeak {
    fn start(pids: Vec<u32>) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(pss(&pids));
                tokio::select! {
                    _ = &mut stopped => return peak.max(pss(&pids)),
                    _ = tokio::time::sleep(PSS_EVERY) => {}
                }
            }
        });
        PssPeak { stop, task }
    }

    async fn finish(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

/// The `--data-dir` of a process, from its command line.
fn data_dir_of(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--data-dir=") {
            Some(dir) => Some(PathBuf::from(dir)),
            None if a == "--data-dir" => args.get(i + 1).map(PathBuf::from),
            None => None,
        })
}

/// The directories of `dirs` that hold no other of them (`dev`'s holds its nodes').
fn innermost(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter()
        .filter(|d| !dirs.iter().any(|o| o != *d && o.starts_with(d)))
        .cloned()
        .collect()
}

/// What one system measured.
#[derive(Clone, Debug, Default)]
struct Measures {
    /// Points per second of each round, until every point was queryable.
    rates: Vec<f64>,
    /// Points per second of each round, until the last acknowledgement.
    ack_rates: Vec<f64>,
    /// Server CPU-seconds per million points of each round.
    cpu_per_million: Vec<f64>,
    /// How long after the last acknowledgement every point was queryable (last round).
    queryable_after: Duration,
    disk: u64,
    rss: u64,
    /// Largest proportional set of the server's processes, sampled ([`PssPeak`]).
    pss: u64,
    /// Per case: median time and rows, or why the case did not run.
    queries: Vec<std::result::Result<(Duration, Vec<Row>), String>>,
}

/// Which system, for the measurement loop.
#[derive(Clone, Copy, Debug, PartialEq)]
enum System {
    RaftMetrics,
    VictoriaMetrics,
    InfluxDb,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::RaftMetrics => "RaftMetrics",
            System::VictoriaMetrics => "VictoriaMetrics",
            System::InfluxDb => "InfluxDB",
        }
    }
}

/// How a peer's answer compares with RaftMetrics'.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    /// InfluxDB: counts, minima and maxima exact, sums and averages to 1e-9; its exact
    /// percentiles against RaftMetrics' sketch, within the sketch's 1%.
    Influx,
    /// VictoriaMetrics: counts exact, other values to 1e-9 (its decimal storage);
    /// percentiles estimated from histograms: reported, not checked.
    Victoria,
}

/// Compares a peer's rows with RaftMetrics'. `Ok(note)`: they agree where they should
/// (the note gives the percentiles' largest relative difference); `Err(why)` otherwise.
fn compare(
    aggs: &[Agg],
    raftmetrics: &[Row],
    peer: &[Row],
    policy: Policy,
) -> std::result::Result<String, String> {
    if raftmetrics.len() != peer.len() {
        return Err(format!(
            "{} rows from RaftMetrics, {} from the peer",
            raftmetrics.len(),
            peer.len()
        ));
    }
    if peer.is_empty() {
        return Err("no rows at all".into());
    }
    let mut worst: f64 = 0.0;
    for (ours, theirs) in raftmetrics.iter().zip(peer) {
        if ours.key != theirs.key {
            return Err(format!("row {:?} against {:?}", ours.key, theirs.key));
        }
        for ((agg, a), b) in aggs.iter().zip(&ours.values).zip(&theirs.values) {
            let (a, b) = match (a, b) {
                (None, None) => continue,
                (Some(a), Some(b)) => (*a, *b),
                _ => {
                    return Err(format!(
                        "{agg} of {:?}: RaftMetrics {a:?}, peer {b:?}",
                        ours.key
                    ));
                }
            };
            let relative = |tolerance: f64| (a - b).abs() <= tolerance * a.abs().max(b.abs());
            let ok = match (agg, policy) {
                (Agg::Percentile(_), _) => {
                    if b != 0.0 {
                        worst = worst.max((a - b).abs() / b.abs());
                    }
                    policy == Policy::Victoria
                        || (a - b).abs() <= PERCENTILE_TOLERANCE * b.abs() + 1e-12
                }
                (Agg::Count, _) => a == b,
                (Agg::Min | Agg::Max | Agg::Last | Agg::First, Policy::Influx) => a == b,
                (Agg::Min | Agg::Max | Agg::Last | Agg::First, Policy::Victoria) => {
                    relative(VICTORIA_TOLERANCE)
                }
                (Agg::Sum | Agg::Avg, _) => relative(SUM_TOLERANCE),
            };
            if !ok {
                return Err(format!(
                    "{agg} of {:?}: RaftMetrics {a}, peer {b}",
                    ours.key
                ));
            }
        }
    }
    let has_percentiles = aggs.iter().any(|a| a.is_percentile());
    Ok(match (has_percentiles, policy) {
        (false, Policy::Influx) => "same".into(),
        (false, Policy::Victoria) => "same (to 1e-9)".into(),
        (true, Policy::Influx) => format!(
            "RaftMetrics within {:.2}% of exact percentile()",
            worst * 100.0
        ),
        (true, Policy::Victoria) => format!(
            "approximate: up to {:.2}% from RaftMetrics (histogram_quantile), not checked",
            worst * 100.0
        ),
    })
}

/// The outcome of `peers`: the table's figures.
pub struct PeersReport {
    cases: Vec<Case>,
    raftmetrics: Measures,
    victoria: Option<Measures>,
    influx: Option<Measures>,
    /// Per case, each peer's comparison (`None`: the peer did not run).
    victoria_answers: Vec<std::result::Result<String, String>>,
    influx_answers: Vec<std::result::Result<String, String>>,
    points: u64,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn seconds_as_millis(seconds: f64) -> String {
    millis(Duration::from_secs_f64(seconds))
}

/// A row of the table: the figure of each system (RaftMetrics, VictoriaMetrics, InfluxDB;
/// `None`: did not run), RaftMetrics' against each peer's, and the peers' answers.
fn figure_row(
    table: &mut Table,
    systems: [Option<&Measures>; 3],
    name: String,
    value: &dyn Fn(&Measures) -> Option<f64>,
    show: &dyn Fn(f64) -> String,
    answers: [String; 2],
) {
    let figure = |m: Option<&Measures>| m.and_then(value);
    let ours = figure(systems[0]);
    let cell = |m: Option<&Measures>| figure(m).map(show).unwrap_or_else(|| "-".into());
    let versus = |m: Option<&Measures>| match (ours, figure(m)) {
        (Some(a), Some(b)) if b > 0.0 => ratio(a / b),
        _ => "-".into(),
    };
    let [victoria_answers, influx_answers] = answers;
    table.row(vec![
        name,
        cell(systems[0]),
        cell(systems[1]),
        versus(systems[1]),
        cell(systems[2]),
        versus(systems[2]),
        victoria_answers,
        influx_answers,
    ]);
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

impl PeersReport {
    /// Whether every answer that should agree with RaftMetrics' does.
    pub fn answers_agree(&self) -> bool {
        let ok = |answers: &[std::result::Result<String, String>], ran: bool| {
            !ran || answers.iter().all(|a| a.is_ok())
        };
        ok(&self.victoria_answers, self.victoria.is_some())
            && ok(&self.influx_answers, self.influx.is_some())
    }

    /// The table: each figure of each system, and RaftMetrics' against each peer's.
    pub fn table(&self) -> Table {
        let mut table = Table::new(&[
            "measure",
            "RaftMetrics",
            "VictoriaMetrics",
            "RaftMetrics / VictoriaMetrics",
            "InfluxDB",
            "RaftMetrics / InfluxDB",
            "VictoriaMetrics answers",
            "InfluxDB answers",
        ])
        .text_columns(&[6, 7]);
        let systems = [
            Some(&self.raftmetrics),
            self.victoria.as_ref(),
            self.influx.as_ref(),
        ];
        let none = || [String::new(), String::new()];
        figure_row(
            &mut table,
            systems,
            format!(
                "ingest, points/s until all queryable ({} points)",
                thousands(self.points as f64)
            ),
            &|m| Some(median(&m.rates)),
            &thousands,
            none(),
        );
        figure_row(
            &mut table,
            systems,
            "points/s until the last acknowledgement".into(),
            &|m| Some(median(&m.ack_rates)),
            &thousands,
            none(),
        );
        figure_row(
            &mut table,
            systems,
            "every point queryable after the last ack".into(),
            &|m| Some(m.queryable_after.as_secs_f64()),
            &seconds_as_millis,
            none(),
        );
        figure_row(
            &mut table,
            systems,
            "server CPU-s per million points".into(),
            &|m| Some(median(&m.cpu_per_million)),
            &|v| format!("{v:.2}"),
            none(),
        );
        let answer = |a: Option<&std::result::Result<String, String>>, ran: bool| match (ran, a) {
            (false, _) | (true, None) => "-".to_string(),
            (true, Some(Ok(note))) => note.clone(),
            (true, Some(Err(why))) => format!("DIFFER: {why}"),
        };
        for (i, case) in self.cases.iter().enumerate() {
            figure_row(
                &mut table,
                systems,
                format!("{}, median", case.name),
                &|m| match m.queries.get(i) {
                    Some(Ok((d, _))) => Some(d.as_secs_f64()),
                    _ => None,
                },
                &seconds_as_millis,
                [
                    answer(self.victoria_answers.get(i), self.victoria.is_some()),
                    answer(self.influx_answers.get(i), self.influx.is_some()),
                ],
            );
        }
        figure_row(
            &mut table,
            systems,
            "data on disk after load".into(),
            &|m| Some(m.disk as f64),
            &|b| megabytes(b as u64),
            none(),
        );
        figure_row(
            &mut table,
            systems,
            "peak RSS of the server processes".into(),
            &|m| Some(m.rss as f64),
            &|b| megabytes(b as u64),
            none(),
        );
        figure_row(
            &mut table,
            systems,
            "peak PSS of the server processes (sampled every 0.5 s)".into(),
            &|m| Some(m.pss as f64),
            &|b| megabytes(b as u64),
            none(),
        );
        table
    }

    pub fn print(&self) {
        println!(
            "\n## Beside VictoriaMetrics and InfluxDB\n\n{}",
            self.table().render()
        );
        println!("{DURABILITY}");
        println!(
            "Query translations (see raftmetrics-bench/src/peers/): VictoriaMetrics' percentiles \
             come from histogram buckets (approximate, not checked); InfluxDB's percentile() is \
             exact; its ranks round (floor(n*p+0.5)) where RaftMetrics' are nearest-rank."
        );
    }
}

/// Loads RaftMetrics and measures it; its query rows are the answers the peers are checked
/// against.
async fn measure_raftmetrics(o: &PeersOptions, cases: &[Case], queries: bool) -> Result<Measures> {
    let cluster = LocalCluster::start(ClusterSpec {
        server_bin: o.server_bin.clone(),
        workers: o.workers,
        replication_factor: 1,
        partitions: o.partitions,
        cluster_secret: None,
        spare_workers: 0,
    })
    .await?;
    let pids = cluster.pids()?;
    let pss_peak = PssPeak::start(pids.clone());
    let spec = LoadSpec {
        connections: o.connections,
        batch: o.batch,
        format: Format::Bincode,
        line_protocol: false,
        rate: None,
        label: "RaftMetrics".into(),
    };
    let span = Span {
        first: 0,
        count: o.intervals,
    };
    let measured =
        suite::measure_load(&cluster.url, &cluster.token, &pids, &o.dataset, span, &spec).await?;
    let points = measured.report.points;
    let mut m = Measures {
        rates: vec![measured.report.points_per_second()],
        ack_rates: vec![
            points as f64
                / measured
                    .report
                    .elapsed
                    .saturating_sub(measured.queryable_after)
                    .as_secs_f64()
                    .max(1e-9),
        ],
        cpu_per_million: vec![measured.cpu.processes / (points as f64 / 1e6).max(1e-9)],
        queryable_after: measured.queryable_after,
        ..Measures::default()
    };
    let dirs: Vec<PathBuf> = pids.iter().filter_map(|&p| data_dir_of(p)).collect();
    m.disk = settled_disk_usage(&innermost(&dirs)).await;
    if queries {
        let client = cluster.client(Format::Bincode)?;
        for case in cases {
            eprintln!("RaftMetrics: query {}...", case.name);
            let (time, rows) =
                queries::time_runs(o.runs, || async { case.run_cluster(&client).await }).await?;
            m.queries.push(Ok((time, rows)));
        }
    }
    m.rss = peak_rss(&pids);
    m.pss = pss_peak.finish().await;
    Ok(m)
}

/// Loads a peer with `bodies` and measures it.
async fn measure_peer(
    o: &PeersOptions,
    system: System,
    bodies: &Arc<LineBodies>,
    cases: &[Case],
    queries: bool,
) -> Result<Measures> {
    let server = match system {
        System::VictoriaMetrics => victoria::start(&o.bins.victoria_metrics).await?,
        _ => influx::start(&o.bins.influxd).await?,
    };
    let path = match system {
        System::VictoriaMetrics => victoria::write_path().to_string(),
        _ => influx::write_path(),
    };
    let target = LineTarget {
        url: format!("{}{path}", server.url),
        auth: None,
    };
    let spec = LoadSpec {
        connections: o.connections,
        batch: o.batch,
        format: Format::Bincode,
        line_protocol: true,
        rate: None,
        label: system.name().into(),
    };
    let http = reqwest::Client::new();
    let (start, end) = (
        o.dataset.config.start.as_micros(),
        o.dataset.time_of(o.intervals).as_micros(),
    );
    let count = || async {
        match system {
            System::VictoriaMetrics => victoria::count(&http, &server.url, start, end).await,
            _ => influx::count(&http, &server.url).await,
        }
    };
    let pids = [server.pid()];
    let pss_peak = PssPeak::start(pids.to_vec());
    let before = CpuSample::take(&pids)?;
    let report =
        load::run_line_bodies(&target, Arc::clone(bodies), Arc::clone(&o.dataset), &spec).await?;
    let acked = Instant::now();
    let sent = bodies.points();
    loop {
        let stored = count().await?;
        if stored == sent {
            break;
        }
        if stored > sent {
            return Err(BenchError::Cluster(format!(
                "{}: {sent} points sent, {stored} counted",
                system.name()
            )));
        }
        if acked.elapsed() > QUERYABLE_LIMIT {
            return Err(BenchError::Cluster(format!(
                "{}: {stored} of {sent} points queryable {} s after the last acknowledgement",
                system.name(),
                QUERYABLE_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queryable_after = acked.elapsed();
    let cpu = CpuSample::take(&pids)?.since(before);
    eprintln!(
        "  {}: every point queryable {:.1} ms after the last acknowledgement",
        system.name(),
        queryable_after.as_secs_f64() * 1e3
    );
    let elapsed = report.elapsed + queryable_after;
    let mut m = Measures {
        rates: vec![report.points as f64 / elapsed.as_secs_f64().max(1e-9)],
        ack_rates: vec![report.points_per_second()],
        cpu_per_million: vec![cpu.processes / (report.points as f64 / 1e6).max(1e-9)],
        queryable_after,
        ..Measures::default()
    };
    m.disk = settled_disk_usage(&server.data_dirs).await;
    if queries {
        for case in cases {
            eprintln!("{}: query {}...", system.name(), case.name);
            let plan = match Plan::new(case, start, end) {
                Ok(p) => p,
                Err(why) => {
                    m.queries.push(Err(format!("not translated: {why}")));
                    continue;
                }
            };
            let timed = queries::time_runs(o.runs, || async {
                match system {
                    System::VictoriaMetrics => victoria::run(&http, &server.url, &plan).await,
                    _ => influx::run(&http, &server.url, &plan).await,
                }
            })
            .await;
            m.queries.push(timed.map_err(|e| e.to_string()));
        }
    }
    m.rss = peak_rss(&pids);
    m.pss = pss_peak.finish().await;
    drop(server);
    Ok(m)
}

/// Runs `peers`: each system alone, `o.rounds` times (the query set in the last round);
/// `Err` when no peer is installed.
pub async fn run(o: &PeersOptions) -> Result<PeersReport> {
    let mut systems = vec![System::RaftMetrics];
    for (system, bin) in [
        (System::VictoriaMetrics, &o.bins.victoria_metrics),
        (System::InfluxDb, &o.bins.influxd),
    ] {
        if bin.is_file() {
            systems.push(system);
        } else {
            eprintln!(
                "skipping {}: {} is not installed",
                system.name(),
                bin.display()
            );
        }
    }
    if systems.len() == 1 {
        return Err(BenchError::Config(format!(
            "neither peer is installed ({} and {} are missing): `apt-get install \
             victoria-metrics influxdb`, or pass --victoria-metrics-bin / --influxd-bin",
            o.bins.victoria_metrics.display(),
            o.bins.influxd.display()
        )));
    }
    let cases = queries::cases(&o.dataset, o.intervals)?;
    let span = Span {
        first: 0,
        count: o.intervals,
    };
    eprintln!("building the line protocol bodies...");
    let dataset = Arc::clone(&o.dataset);
    let batch = o.batch;
    let bodies = Arc::new(
        tokio::task::spawn_blocking(move || LineBodies::build(&dataset, span, batch))
            .await
            .map_err(|e| BenchError::Task(e.to_string()))??,
    );
    eprintln!(
        "{} points in {} of line protocol",
        thousands(bodies.points() as f64),
        megabytes(bodies.bytes())
    );
    let rounds = o.rounds.max(1);
    let mut results: Vec<Option<Measures>> = vec![None; 3];
    for round in 1..=rounds {
        let last = round == rounds;
        for &system in &systems {
            eprintln!("round {round}: {}", system.name());
            let m = match system {
                System::RaftMetrics => measure_raftmetrics(o, &cases, last).await?,
                peer => measure_peer(o, peer, &bodies, &cases, last).await?,
            };
            let slot = &mut results[system as usize];
            match slot {
                Some(all) => {
                    all.rates.extend(m.rates);
                    all.ack_rates.extend(m.ack_rates);
                    all.cpu_per_million.extend(m.cpu_per_million);
                    if last {
                        *all = Measures {
                            rates: std::mem::take(&mut all.rates),
                            ack_rates: std::mem::take(&mut all.ack_rates),
                            cpu_per_million: std::mem::take(&mut all.cpu_per_million),
                            ..m
                        };
                    }
                }
                None => *slot = Some(m),
            }
        }
    }
    let [raftmetrics, victoria, influx] = <[Option<Measures>; 3]>::try_from(results)
        .map_err(|_| BenchError::Task("three systems".into()))?;
    let raftmetrics = raftmetrics.ok_or_else(|| BenchError::Task("RaftMetrics ran".into()))?;
    let answers = |peer: &Option<Measures>, policy: Policy| -> Vec<_> {
        let Some(peer) = peer else {
            return Vec::new();
        };
        cases
            .iter()
            .enumerate()
            .map(
                |(i, case)| match (&raftmetrics.queries[i], &peer.queries[i]) {
                    (Ok((_, ours)), Ok((_, theirs))) => {
                        compare(&case.queries[0].aggs, ours, theirs, policy)
                    }
                    (Err(e), _) => Err(format!("RaftMetrics: {e}")),
                    (_, Err(e)) => Err(e.clone()),
                },
            )
            .collect()
    };
    let victoria_answers = answers(&victoria, Policy::Victoria);
    let influx_answers = answers(&influx, Policy::Influx);
    Ok(PeersReport {
        cases,
        raftmetrics,
        victoria,
        influx,
        victoria_answers,
        influx_answers,
        points: bodies.points(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, values: &[Option<f64>]) -> Row {
        Row {
            key: vec![key.into()],
            values: values.to_vec(),
        }
    }

    #[test]
    fn influx_answers_must_match_exactly_where_exact() {
        let aggs = [Agg::Max, Agg::Avg, Agg::Count];
        let ours = [row("a", &[Some(1.5), Some(2.0), Some(3.0)])];
        let close = [row("a", &[Some(1.5), Some(2.0 + 1e-12), Some(3.0)])];
        assert_eq!(
            compare(&aggs, &ours, &close, Policy::Influx).unwrap(),
            "same"
        );
        let off = [row("a", &[Some(1.5 + 1e-12), Some(2.0), Some(3.0)])];
        assert!(compare(&aggs, &ours, &off, Policy::Influx).is_err());
        // VictoriaMetrics' stored decimals: extrema to 1e-9, counts exact.
        assert!(compare(&aggs, &ours, &off, Policy::Victoria).is_ok());
        let miscount = [row("a", &[Some(1.5), Some(2.0), Some(4.0)])];
        assert!(compare(&aggs, &ours, &miscount, Policy::Victoria).is_err());
        let other_key = [row("b", &[Some(1.5), Some(2.0), Some(3.0)])];
        assert!(compare(&aggs, &ours, &other_key, Policy::Influx).is_err());
        assert!(compare(&aggs, &ours, &[], Policy::Influx).is_err());
        let missing = [row("a", &[None, Some(2.0), Some(3.0)])];
        assert!(compare(&aggs, &ours, &missing, Policy::Influx).is_err());
    }

    #[test]
    fn percentiles_are_checked_against_influx_and_reported_for_victoria() {
        let aggs = [Agg::P95];
        let ours = [row("a", &[Some(99.0)])];
        let exact = [row("a", &[Some(99.5)])];
        let note = compare(&aggs, &ours, &exact, Policy::Influx).unwrap();
        assert!(note.contains("0.50%"), "{note}");
        let far = [row("a", &[Some(90.0)])];
        assert!(compare(&aggs, &ours, &far, Policy::Influx).is_err());
        let note = compare(&aggs, &ours, &far, Policy::Victoria).unwrap();
        assert!(note.contains("approximate: up to 10.00%"), "{note}");
    }

    #[test]
    fn proc_status_and_cmdline_are_read() {
        let status = "Name:\tx\nVmPeak:\t  2000 kB\nVmHWM:\t  1536 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(proc_kib(status, "VmHWM"), Some(1536 * 1024));
        assert_eq!(proc_kib("Name: x", "VmHWM"), None);
        assert!(peak_rss(&[std::process::id()]) > 0);
        let rollup = "55d0-7ff rw-p 0 00:00 0 [rollup]\nRss:\t 3000 kB\nPss:\t  2100 kB\n";
        assert_eq!(proc_kib(rollup, "Pss"), Some(2100 * 1024));
        assert_eq!(proc_kib(rollup, "Ps"), None);
        assert_eq!(proc_kib("Rss: 1 kB", "Pss"), None);
        assert!(pss(&[std::process::id()]) > 0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        let dirs = [
            PathBuf::from("/d/cluster"),
            PathBuf::from("/d/cluster/worker-1"),
            PathBuf::from("/d/cluster/control-1"),
        ];
        assert_eq!(innermost(&dirs), dirs[1..]);
        assert_eq!(data_dir_of(std::process::id()), None);
    }

    #[test]
    fn disk_usage_counts_allocated_blocks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 100_000]).unwrap();
        let used = disk_usage(dir.path());
        assert!(used >= 100_000, "{used}");
        assert_eq!(disk_usage(&dir.path().join("absent")), 0);
    }
}
