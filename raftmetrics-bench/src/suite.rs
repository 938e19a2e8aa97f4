//! The measurements shared by the subcommands, and `all`: the whole benchmark in one command.
//!
//! `all` generates the dataset once (by seed), then:
//! 1. writes it into one plain DuckDB file with the raw Appender (the ingest reference);
//! 2. starts a local cluster with replication factor 1, loads the same points at full load,
//!    runs the query set on it and on the plain DuckDB file, checks the answers agree, runs
//!    the query set through PromQL beside the seed API (`promql`, unless `--skip-promql`),
//!    then measures the rate of smaller requests (`--half-load-batch`) and offers half of it
//!    for a while to measure the acknowledgement latency at half load, and loads more points
//!    over JSON;
//! 3. starts a cluster with replication factor 3 and does the same full and half loads;
//! 4. unless `--skip-peers`, runs `peers` (beside VictoriaMetrics and InfluxDB) when either
//!    is installed;
//! 5. prints the tables, every result as a ratio to its reference.
//!
//! Points written after the query set (half load, JSON) continue the same walks after the
//! end of the dataset, so the queries see exactly the reference's points.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use raftmetrics_client::{Agg, Client, Format, Query};

use crate::cluster::{ClusterSpec, LocalCluster};
use crate::cpu::CpuSample;
use crate::error::{BenchError, Result};
use crate::generator::{Dataset, FIELDS};
use crate::load::{self, LoadReport, LoadSpec, Span};
use crate::peers::{self, PeerBins, PeersOptions, PeersReport};
use crate::promql::{self, PromqlReport};
use crate::queries::{self, Case};
use crate::reference::{IngestTiming, Reference};
use crate::report::{IngestRow, QueryRow, ingest_table, query_table};

/// Ingest goal at replication factor 1: at least this fraction of the raw Appender...
pub const RF1_GOAL_RATIO: f64 = 0.4;
/// ...and at least this many points per second.
pub const RF1_GOAL_RATE: f64 = 400_000.0;
/// Replication factor 3 (fsync) against factor 1.
pub const RF3_GOAL_RATIO: f64 = 0.35;
/// Acknowledgement p99 at half load.
pub const HALF_LOAD_P99_GOAL: Duration = Duration::from_millis(30);

/// A load run and the CPU it cost.
pub struct Measured {
    pub report: LoadReport,
    pub cpu: CpuSample,
    /// How long after the last acknowledgement every acknowledged point was queryable
    /// (counted in the report's time).
    pub queryable_after: Duration,
}

/// Runs `spec` over `span` against the cluster at `url`, measuring the CPU time of `pids`
/// (the cluster's processes) and of this process around it. The run ends when the cluster
/// can answer for every point it acknowledged (see [`settle`]), and its rate counts that
/// time too.
pub async fn measure_load(
    url: &str,
    token: &str,
    pids: &[u32],
    dataset: &Arc<Dataset>,
    span: Span,
    spec: &LoadSpec,
) -> Result<Measured> {
    let before = CpuSample::take(pids)?;
    let mut report = load::run(url, token, Arc::clone(dataset), span, spec).await?;
    let settled = settle(url, token, report.points).await?;
    eprintln!(
        "  {}: every acknowledged point queryable {:.1} ms after the last acknowledgement",
        spec.label,
        settled.as_secs_f64() * 1e3
    );
    report.elapsed += settled;
    let cpu = CpuSample::take(pids)?.since(before);
    Ok(Measured {
        report,
        cpu,
        queryable_after: settled,
    })
}

/// Waits until the cluster answers for everything it acknowledged: a complete strong count
/// of all ten fields, at least `acknowledged`. A partition's leader answers a strong query
/// after a read index, once its store has applied that far; writes are acknowledged when
/// committed (ADR 014), so the stores may still be applying the last ones. Answers how long
/// that took.
async fn settle(url: &str, token: &str, acknowledged: u64) -> Result<Duration> {
    let started = std::time::Instant::now();
    let client = Client::builder(url).token(token).build()?;
    let Some(stored) = strong_count(&client).await? else {
        return Err(BenchError::Cluster(
            "a strong count of every point was answered partially".into(),
        ));
    };
    let elapsed = started.elapsed();
    if stored < acknowledged {
        return Err(BenchError::Cluster(format!(
            "{acknowledged} points acknowledged, but a strong count finds {stored}"
        )));
    }
    Ok(elapsed)
}

/// A strong count of every point of the dataset's ten fields; `None` when the answer was
/// partial (some partition had no replica answering).
pub async fn strong_count(client: &Client) -> Result<Option<u64>> {
    let query = Query::from_params(&[
        ("metric", FIELDS.join(",")),
        ("agg", "count".to_string()),
        ("consistency", "strong".to_string()),
    ])
    .map_err(|e| BenchError::Config(format!("the count query: {e}")))?;
    let answer = client.aggregate(&query).await?;
    if !answer.is_complete() {
        return Ok(None);
    }
    let (result, _) = answer.into_parts();
    Ok(Some(result.get(Agg::Count).unwrap_or(0.0) as u64))
}

/// An ingest table row of a load run.
pub fn load_row(
    name: String,
    measured: &Measured,
    reference_rate: f64,
    goal: Option<(String, bool)>,
    cluster_cpu: bool,
) -> IngestRow {
    let r = &measured.report;
    IngestRow {
        name,
        points: r.points,
        points_per_second: r.points_per_second(),
        reference_rate,
        latency: Some((r.latency(0.5), r.latency(0.99))),
        cpu_cluster: cluster_cpu.then_some(measured.cpu.processes),
        cpu_loader: measured.cpu.this,
        goal,
    }
}

/// The ingest table row of the raw Appender reference.
pub fn reference_row(timing: &IngestTiming) -> IngestRow {
    let rate = timing.points as f64 / timing.elapsed.as_secs_f64().max(1e-9);
    IngestRow {
        name: "raw Appender, one DuckDB file (reference)".into(),
        points: timing.points,
        points_per_second: rate,
        reference_rate: rate,
        latency: None,
        cpu_cluster: None,
        cpu_loader: timing.cpu_seconds,
        goal: None,
    }
}

/// Writes the reference file in a blocking thread.
pub async fn build_reference(
    path: &Path,
    dataset: &Arc<Dataset>,
    intervals: u64,
    batch: usize,
) -> Result<(Reference, IngestTiming)> {
    let path = path.to_path_buf();
    let dataset = Arc::clone(dataset);
    eprintln!("writing the plain DuckDB reference...");
    tokio::task::spawn_blocking(move || {
        Reference::ingest(
            &path,
            &dataset,
            Span {
                first: 0,
                count: intervals,
            },
            batch,
        )
    })
    .await
    .map_err(|e| BenchError::Task(e.to_string()))?
}

/// Runs every case on the cluster and on the reference (median of `runs` after a warm-up
/// each) and checks the answers.
pub async fn run_queries(
    cases: &[Case],
    client: &Client,
    reference: &Reference,
    runs: usize,
) -> Result<Vec<QueryRow>> {
    let mut rows = Vec::new();
    for case in cases {
        eprintln!("query {}...", case.name);
        let (reference_time, theirs) = queries::time_runs(runs, || async {
            tokio::task::block_in_place(|| case.run_reference(&reference.conn))
        })
        .await?;
        let (cluster_time, ours) =
            queries::time_runs(runs, || async { case.run_cluster(client).await }).await?;
        let answers = case
            .check(&ours, &theirs)
            .map(|()| {
                if case.has_percentiles() {
                    format!(
                        "within {:.2}% of exact quantile_disc",
                        100.0 * case.worst_percentile_error(&ours, &theirs)
                    )
                } else {
                    "same".to_string()
                }
            })
            .map_err(|e| e.to_string());
        rows.push(QueryRow {
            name: case.name.to_string(),
            description: case.description.clone(),
            rows: ours.len(),
            reference: reference_time,
            cluster: cluster_time,
            answers,
        });
    }
    Ok(rows)
}

/// Options of `all`.
#[derive(Clone, Debug)]
pub struct AllOptions {
    pub dataset: Arc<Dataset>,
    /// Whole intervals of the dataset (its points: `intervals × scale × 10`).
    pub intervals: u64,
    pub connections: usize,
    pub batch: usize,
    pub runs: usize,
    /// How long the half-load phases offer points.
    pub half_load: Duration,
    /// Points per request in the half-load phases.
    pub half_load_batch: usize,
    /// Points sent over JSON after the queries (0: none).
    pub json_points: u64,
    pub workers: u16,
    pub partitions: u32,
    pub server_bin: std::path::PathBuf,
    pub skip_rf3: bool,
    /// Whether to run the query set through PromQL beside the seed API on the factor-1
    /// cluster.
    pub promql: bool,
    /// The peers to compare with at the end (`peers`), when one of them is installed;
    /// `None`: skipped.
    pub peers: Option<PeerBins>,
}

/// What `all` found: the two tables and whether every answer agreed.
pub struct AllReport {
    pub ingest: Vec<IngestRow>,
    pub queries: Vec<QueryRow>,
    /// PromQL beside the seed API, when run.
    pub promql: Option<PromqlReport>,
    /// Beside VictoriaMetrics and InfluxDB, when run.
    pub peers: Option<PeersReport>,
}

impl AllReport {
    /// Whether every answer of the cluster matched the reference's.
    pub fn answers_agree(&self) -> bool {
        self.queries.iter().all(|q| q.answers.is_ok())
            && self.promql.as_ref().is_none_or(|p| p.answers_agree())
            && self.peers.as_ref().is_none_or(|p| p.answers_agree())
    }

    pub fn print(&self) {
        println!("\n## Ingest\n\n{}", ingest_table(&self.ingest).render());
        println!("## Queries\n\n{}", query_table(&self.queries).render());
        if let Some(promql) = &self.promql {
            promql.print();
        }
        if let Some(peers) = &self.peers {
            peers.print();
        }
    }
}

fn intervals_for_rate(dataset: &Dataset, rate: f64, time: Duration) -> u64 {
    ((rate * time.as_secs_f64()) / dataset.points_per_interval() as f64).ceil() as u64
}

/// The acknowledgement latency at half load, from interval `first`. Half load is half of
/// what the cluster takes with the same requests (batches of `o.half_load_batch`), so it is
/// measured first: a closed loop of `o.connections` connections for about `o.half_load`
/// (sized by `estimate`, a rate measured before), then an open loop at half its rate for
/// `o.half_load`. Answers both table rows (the second judged against the p99 goal) and the
/// intervals sent.
async fn half_load(
    o: &AllOptions,
    cluster: &LocalCluster,
    pids: &[u32],
    name: &str,
    first: u64,
    estimate: f64,
    reference_rate: f64,
) -> Result<([IngestRow; 2], u64)> {
    let batch = o.half_load_batch;
    let spec = |label: String, rate: Option<f64>| LoadSpec {
        connections: o.connections,
        batch,
        format: Format::Bincode,
        line_protocol: false,
        rate,
        label,
    };
    let count = intervals_for_rate(&o.dataset, estimate, o.half_load);
    let span = Span { first, count };
    let full_spec = spec(format!("{name} x {batch}"), None);
    let full = measure_load(
        &cluster.url,
        &cluster.token,
        pids,
        &o.dataset,
        span,
        &full_spec,
    )
    .await?;
    let capacity = full.report.points_per_second();
    let full_row = load_row(
        format!("cluster {name}, bincode, {} conn x {batch}", o.connections),
        &full,
        reference_rate,
        None,
        true,
    );
    let rate = capacity / 2.0;
    let half_count = intervals_for_rate(&o.dataset, rate, o.half_load);
    let span = Span {
        first: first + count,
        count: half_count,
    };
    let half_spec = spec(format!("{name} half load"), Some(rate));
    let half = measure_load(
        &cluster.url,
        &cluster.token,
        pids,
        &o.dataset,
        span,
        &half_spec,
    )
    .await?;
    let p99 = half.report.latency(0.99);
    let half_row = load_row(
        format!("cluster {name}, bincode, half load ({rate:.0}/s, batches of {batch})"),
        &half,
        reference_rate,
        Some(("p99 <= 30 ms".into(), p99 <= HALF_LOAD_P99_GOAL)),
        true,
    );
    Ok(([full_row, half_row], count + half_count))
}

/// Runs the whole benchmark.
pub async fn run_all(o: &AllOptions) -> Result<AllReport> {
    let dataset = &o.dataset;
    let total = o.intervals * dataset.points_per_interval();
    eprintln!(
        "{total} points: {} hosts x 10 fields x {} intervals of {} s (seed {})",
        dataset.config.scale,
        o.intervals,
        dataset.config.interval_micros / 1_000_000,
        dataset.config.seed
    );
    let dir = tempfile::Builder::new()
        .prefix("raftmetrics-bench-reference-")
        .tempdir()
        .map_err(BenchError::io("create a temporary directory"))?;
    let (reference, timing) = build_reference(
        &dir.path().join("reference.duckdb"),
        dataset,
        o.intervals,
        o.batch,
    )
    .await?;
    let mut ingest = vec![reference_row(&timing)];
    let reference_rate = ingest[0].points_per_second;
    let spec = |label: &str, format: Format| LoadSpec {
        connections: o.connections,
        batch: o.batch,
        format,
        line_protocol: false,
        rate: None,
        label: label.to_string(),
    };

    // Replication factor 1: full load, queries, half load, JSON.
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
    let mut next = 0u64;
    let full = measure_load(
        &cluster.url,
        &cluster.token,
        &pids,
        dataset,
        Span {
            first: next,
            count: o.intervals,
        },
        &spec("rf=1 bincode", Format::Bincode),
    )
    .await?;
    next += o.intervals;
    let rf1_rate = full.report.points_per_second();
    let met = rf1_rate >= RF1_GOAL_RATIO * reference_rate && rf1_rate >= RF1_GOAL_RATE;
    ingest.push(load_row(
        format!(
            "cluster rf=1, bincode, {} conn x {}",
            o.connections, o.batch
        ),
        &full,
        reference_rate,
        Some((">= 0.40x and >= 400k/s".into(), met)),
        true,
    ));

    let cases = queries::cases(dataset, o.intervals)?;
    let client = cluster.client(Format::Bincode)?;
    let query_rows = run_queries(&cases, &client, &reference, o.runs).await?;
    // Before more points are written: the cluster holds exactly the dataset.
    let promql = if o.promql {
        Some(promql::measure(&cluster.url, &cluster.token, dataset, o.intervals, o.runs).await?)
    } else {
        None
    };

    let (rows, sent) =
        half_load(o, &cluster, &pids, "rf=1", next, rf1_rate, reference_rate).await?;
    ingest.extend(rows);
    next += sent;

    if o.json_points > 0 {
        let json = measure_load(
            &cluster.url,
            &cluster.token,
            &pids,
            dataset,
            Span {
                first: next,
                count: dataset.intervals_for(o.json_points),
            },
            &spec("rf=1 json", Format::Json),
        )
        .await?;
        ingest.push(load_row(
            format!("cluster rf=1, JSON, {} conn x {}", o.connections, o.batch),
            &json,
            reference_rate,
            None,
            true,
        ));
    }
    drop(client);
    drop(cluster);

    // Replication factor 3 (every write fsynced by a majority before it is acknowledged).
    if !o.skip_rf3 {
        let cluster = LocalCluster::start(ClusterSpec {
            server_bin: o.server_bin.clone(),
            workers: o.workers.max(3),
            replication_factor: 3,
            partitions: o.partitions,
            cluster_secret: None,
            spare_workers: 0,
        })
        .await?;
        let pids = cluster.pids()?;
        let full = measure_load(
            &cluster.url,
            &cluster.token,
            &pids,
            dataset,
            Span {
                first: 0,
                count: o.intervals,
            },
            &spec("rf=3 bincode", Format::Bincode),
        )
        .await?;
        let rf3_rate = full.report.points_per_second();
        ingest.push(load_row(
            format!(
                "cluster rf=3, bincode, {} conn x {} ({:.2}x rf=1)",
                o.connections,
                o.batch,
                rf3_rate / rf1_rate
            ),
            &full,
            reference_rate,
            Some((
                ">= 0.35x rf=1".into(),
                rf3_rate >= RF3_GOAL_RATIO * rf1_rate,
            )),
            true,
        ));
        let (rows, _) = half_load(
            o,
            &cluster,
            &pids,
            "rf=3",
            o.intervals,
            rf3_rate,
            reference_rate,
        )
        .await?;
        ingest.extend(rows);
    }

    // Beside VictoriaMetrics and InfluxDB, when either is installed.
    let peers = match &o.peers {
        Some(bins) if bins.any() => Some(
            peers::run(&PeersOptions {
                dataset: Arc::clone(dataset),
                intervals: o.intervals,
                connections: o.connections,
                batch: o.batch,
                runs: o.runs,
                rounds: 1,
                workers: o.workers,
                partitions: o.partitions,
                server_bin: o.server_bin.clone(),
                bins: bins.clone(),
            })
            .await?,
        ),
        Some(_) => {
            eprintln!("neither VictoriaMetrics nor InfluxDB is installed: skipping the peers");
            None
        }
        None => None,
    };
    Ok(AllReport {
        ingest,
        queries: query_rows,
        promql,
        peers,
    })
}
