//! `raftmetrics-bench`: TSBS-style data, a load tool, and ingest and query benchmarks of a
//! RaftMetrics cluster against plain DuckDB measured in the same run.
//!
//! ```text
//! raftmetrics-bench all                      # everything, on a local cluster it starts
//! raftmetrics-bench generate --points 1000   # the data, as JSON lines
//! raftmetrics-bench ingest --url URL --token T --connections 8 --batch 10000
//! raftmetrics-bench query --url URL --token T
//! raftmetrics-bench rebalance --points 1000000 --rate 30000   # 3 -> 4 workers under load
//! raftmetrics-bench peers --points 1000000   # beside VictoriaMetrics and InfluxDB
//! raftmetrics-bench export --scale 100 --points 10000000   # export, re-import, compare
//! raftmetrics-bench promql --scale 100 --points 10000000   # PromQL beside the seed API
//! ```
//!
//! See `docs/benchmarks.md` for what is measured and the results.

mod cluster;
mod cpu;
mod decode;
mod error;
mod export;
mod generator;
mod load;
mod peers;
mod promql;
mod protocols;
mod queries;
mod rebalance;
mod reference;
mod report;
mod suite;

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use raftmetrics_client::raftmetrics_types::api::JsonPoint;
use raftmetrics_client::{Client, Format};
use tokio::signal::unix::{SignalKind, signal};

use crate::error::{BenchError, Result};
use crate::generator::{Config, Dataset};
use crate::load::{LoadSpec, Span};
use crate::report::{ingest_table, query_table};

#[derive(Parser, Debug)]
#[command(name = "raftmetrics-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Times decoding one bincode insert body of the dataset's points into records on one
    /// thread, as the node that takes an insert does (no cluster).
    Decode {
        #[command(flatten)]
        data: DataArgs,
        /// Points in the body.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Rounds of about a second each (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Writes the dataset as JSON lines (the API's point format), for inspection.
    Generate {
        #[command(flatten)]
        data: DataArgs,
        /// Output file [default: standard output].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Loads a running cluster with the dataset and reports rate, latency and CPU, beside
    /// the raw Appender reference on the same points.
    Ingest {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// First interval to send (to continue after an earlier run without duplicates).
        #[arg(long, default_value_t = 0)]
        first_interval: u64,
        /// Points per second to offer (open loop); as fast as acknowledged when absent.
        #[arg(long)]
        rate: Option<f64>,
        /// The dev cluster's nodes.json, to count the cluster's CPU time.
        #[arg(long)]
        nodes_json: Option<PathBuf>,
        /// Skip the raw Appender reference.
        #[arg(long)]
        no_reference: bool,
        /// Write every request's send time and latency to this CSV file.
        #[arg(long)]
        latency_log: Option<PathBuf>,
    },
    /// Runs the query set on a running cluster that holds the dataset (loaded by `ingest`
    /// with the same data options) and on plain DuckDB, and compares the answers.
    Query {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        data: DataArgs,
        /// Timed runs per query (the median is reported), after one warm-up.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// The query set through the Prometheus query API (PromQL) beside the same queries
    /// through `/aggregate`, on a local cluster it starts and loads (or, with `--url`, on a
    /// running one holding the dataset): median times, their ratio, and whether the answers
    /// agree; then `sum by (datacenter) (rate(usage_user[5m]))` over all the data against
    /// its `/aggregate` counterpart.
    Promql {
        /// Hosts.
        #[arg(long, default_value_t = 100)]
        scale: u32,
        /// Points (rounded down to whole intervals of scale x 10 points).
        #[arg(long, default_value_t = 1_000_000)]
        points: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        load: LoadArgs,
        /// Timed runs per query (the median is reported), after one warm-up.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// A running cluster's control node, holding the dataset (loaded by `ingest` with
        /// the same data options, or by `--load`) [default: a local cluster started here].
        #[arg(long)]
        url: Option<String>,
        #[arg(long, env = "RAFTMETRICS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Load the dataset into the cluster of `--url` first.
        #[arg(long, requires = "url")]
        load_data: bool,
        /// Workers of the local cluster (replication factor 1).
        #[arg(long, default_value_t = 2)]
        workers: u16,
        #[arg(long, default_value_t = 16)]
        partitions: u32,
        /// The server binary [default: raftmetrics-server next to this executable].
        #[arg(long)]
        server_bin: Option<PathBuf>,
    },
    /// The whole benchmark on local clusters it starts and stops: references, ingest at
    /// replication factors 1 and 3, the query set, the query set through PromQL.
    All {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// Timed runs per query (the median is reported), after one warm-up.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds of each half-load phase (and about as long for the full load before it).
        #[arg(long, default_value_t = 10)]
        half_load_secs: u64,
        /// Points per request in the half-load phases; half load is half the rate the cluster
        /// takes with requests of this size, measured just before.
        #[arg(long, default_value_t = 1_000)]
        half_load_batch: usize,
        /// Points sent over JSON at replication factor 1 (0: skip).
        #[arg(long, default_value_t = 200_000)]
        json_points: u64,
        /// Workers of the replication factor 1 cluster (factor 3 uses at least 3).
        #[arg(long, default_value_t = 2)]
        workers: u16,
        #[arg(long, default_value_t = 16)]
        partitions: u32,
        /// The server binary [default: raftmetrics-server next to this executable].
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Skip the replication factor 3 cluster.
        #[arg(long)]
        skip_rf3: bool,
        /// Skip the query set through PromQL (`promql`, on the replication factor 1
        /// cluster).
        #[arg(long)]
        skip_promql: bool,
        /// Skip the comparison with VictoriaMetrics and InfluxDB (run when either is
        /// installed).
        #[arg(long)]
        skip_peers: bool,
        #[command(flatten)]
        peers: PeerArgs,
    },
    /// Scales a local cluster out from 3 to 4 workers (replication factor 3) under a steady
    /// open-loop ingest, and compares its rate and acknowledgement latency during the
    /// replica moves with a baseline before them. The load options are those of the
    /// preload of the dataset's points.
    Rebalance {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// Points per second offered by the steady load.
        #[arg(long, default_value_t = 50_000.0)]
        rate: f64,
        /// Connections of the steady load.
        #[arg(long, default_value_t = 4)]
        steady_connections: usize,
        /// Points per request of the steady load.
        #[arg(long, default_value_t = 1_000)]
        steady_batch: usize,
        /// Seconds of steady load before the baseline window.
        #[arg(long, default_value_t = 3)]
        warmup_secs: u64,
        /// Seconds of the baseline window (3 workers, no move).
        #[arg(long, default_value_t = 20)]
        baseline_secs: u64,
        /// Longest wait, in seconds, for the 4th worker to get its share.
        #[arg(long, default_value_t = 300)]
        rebalance_limit_secs: u64,
        /// Most points the steady load offers.
        #[arg(long, default_value_t = 20_000_000)]
        max_steady_points: u64,
        #[arg(long, default_value_t = 16)]
        partitions: u32,
        /// The server binary [default: raftmetrics-server next to this executable].
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Write every steady request's send time and latency to this CSV file.
        #[arg(long)]
        latency_log: Option<PathBuf>,
    },
    /// Exports a loaded cluster through `GET /api/v1/export` while sampling the control
    /// node's memory, imports the export into a fresh cluster through `POST /api/v1/import`,
    /// and compares the two clusters' aggregates.
    Export {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, default_value_t = 2)]
        workers: u16,
        #[arg(long, default_value_t = 1)]
        replication_factor: u32,
        #[arg(long, default_value_t = 16)]
        partitions: u32,
        /// Keep the export in this file [default: a temporary file].
        #[arg(long)]
        out: Option<PathBuf>,
        /// The server binary [default: raftmetrics-server next to this executable].
        #[arg(long)]
        server_bin: Option<PathBuf>,
    },
    /// The insert rate of the InfluxDB line protocol (`POST /write`) beside bincode through
    /// the typed client, alternating runs on one local cluster (replication factor 1); each
    /// run sends the dataset's `--points`.
    Protocols {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// Rounds of one bincode and one line protocol run.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        #[arg(long, default_value_t = 2)]
        workers: u16,
        #[arg(long, default_value_t = 16)]
        partitions: u32,
        /// The server binary [default: raftmetrics-server next to this executable].
        #[arg(long)]
        server_bin: Option<PathBuf>,
    },
    /// RaftMetrics beside VictoriaMetrics and InfluxDB 1.x on this machine: each started
    /// alone and loaded with the dataset's points (same connections and batch size), then
    /// ingest rate, server CPU per million points, the query set (answers checked against
    /// RaftMetrics' where their meaning agrees), data on disk and peak RSS. A peer whose
    /// binary is missing is skipped.
    Peers {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// Timed runs per query (the median is reported), after one warm-up.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Loads of every system, each into a fresh one (the median rate is reported; the
        /// queries run after the last).
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// Workers of the RaftMetrics cluster (replication factor 1).
        #[arg(long, default_value_t = 2)]
        workers: u16,
        #[arg(long, default_value_t = 16)]
        partitions: u32,
        /// The server binary [default: raftmetrics-server next to this executable].
        #[arg(long)]
        server_bin: Option<PathBuf>,
        #[command(flatten)]
        peers: PeerArgs,
    },
}

/// Where the peers of `peers` are installed.
#[derive(Args, Debug, Clone)]
struct PeerArgs {
    /// VictoriaMetrics' single-node binary (Debian package `victoria-metrics`).
    #[arg(long, default_value = "/usr/bin/victoria-metrics")]
    victoria_metrics_bin: PathBuf,
    /// InfluxDB 1.x's server binary (Debian package `influxdb`).
    #[arg(long, default_value = "/usr/bin/influxd")]
    influxd_bin: PathBuf,
}

impl PeerArgs {
    fn bins(&self) -> peers::PeerBins {
        peers::PeerBins {
            victoria_metrics: self.victoria_metrics_bin.clone(),
            influxd: self.influxd_bin.clone(),
        }
    }
}

/// Which data.
#[derive(Args, Debug, Clone)]
struct DataArgs {
    /// Hosts.
    #[arg(long, default_value_t = 20)]
    scale: u32,
    /// Points (rounded down to whole intervals of scale x 10 points).
    #[arg(long, default_value_t = 1_000_000)]
    points: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl DataArgs {
    fn dataset(&self) -> Result<(Arc<Dataset>, u64)> {
        if self.scale == 0 {
            return Err(BenchError::Config("--scale must be at least 1".into()));
        }
        let dataset = Dataset::new(Config::new(self.seed, self.scale));
        let intervals = dataset.intervals_for(self.points);
        Ok((Arc::new(dataset), intervals))
    }
}

/// Which cluster.
#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// The control node.
    #[arg(long, default_value = raftmetrics_client::DEFAULT_URL)]
    url: String,
    #[arg(long, env = "RAFTMETRICS_TOKEN", hide_env_values = true)]
    token: String,
}

/// How to load it.
#[derive(Args, Debug, Clone)]
struct LoadArgs {
    /// Concurrent connections, each sending one batch at a time.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Points per request.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Body format of inserts.
    #[arg(long, value_enum, default_value_t = FormatArg::Bincode)]
    format: FormatArg,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    Bincode,
    Json,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Bincode => Format::Bincode,
            FormatArg::Json => Format::Json,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let outcome = runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).map_err(BenchError::io("catch SIGTERM"))?;
        // Dropping the command's future on a signal stops any cluster it started.
        tokio::select! {
            result = run(cli.command) => result,
            _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
            _ = term.recv() => Err(BenchError::Interrupted),
        }
    });
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs a command; `Ok(false)` when it ran but some answer disagreed with the reference.
async fn run(command: Command) -> Result<bool> {
    match command {
        Command::Generate { data, out } => generate(&data, out).map(|()| true),
        Command::Decode {
            data,
            batch,
            rounds,
        } => {
            let (dataset, _) = data.dataset()?;
            decode::run(&decode::DecodeOptions {
                dataset: &dataset,
                batch,
                rounds,
            })
        }
        Command::Ingest {
            target,
            data,
            load,
            first_interval,
            rate,
            nodes_json,
            no_reference,
            latency_log,
        } => {
            let (dataset, intervals) = data.dataset()?;
            let mut rows = Vec::new();
            let mut reference_rate = None;
            let dir = tempfile::tempdir().map_err(BenchError::io("create a temp dir"))?;
            if !no_reference {
                let (_, timing) = suite::build_reference(
                    &dir.path().join("reference.duckdb"),
                    &dataset,
                    intervals,
                    load.batch,
                )
                .await?;
                rows.push(suite::reference_row(&timing));
                reference_rate = Some(rows[0].points_per_second);
            }
            let pids = match &nodes_json {
                Some(path) => cluster::nodes_json_pids(path)?,
                None => Vec::new(),
            };
            let spec = LoadSpec {
                connections: load.connections,
                batch: load.batch,
                format: load.format.into(),
                line_protocol: false,
                rate,
                label: "ingest".into(),
            };
            let span = Span {
                first: first_interval,
                count: intervals,
            };
            let measured =
                suite::measure_load(&target.url, &target.token, &pids, &dataset, span, &spec)
                    .await?;
            if let Some(path) = &latency_log {
                let write = || -> std::io::Result<()> {
                    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
                    measured.report.write_timeline(&mut out)?;
                    std::io::Write::flush(&mut out)
                };
                write().map_err(BenchError::io("write the latency log"))?;
            }
            let own_rate = measured.report.points_per_second();
            rows.push(suite::load_row(
                format!(
                    "cluster, {}, {} conn x {}",
                    format!("{:?}", load.format).to_lowercase(),
                    load.connections,
                    load.batch
                ),
                &measured,
                reference_rate.unwrap_or(own_rate),
                None,
                nodes_json.is_some(),
            ));
            println!("{}", ingest_table(&rows).render());
            Ok(true)
        }
        Command::Query { target, data, runs } => {
            let (dataset, intervals) = data.dataset()?;
            let dir = tempfile::tempdir().map_err(BenchError::io("create a temp dir"))?;
            let (reference, _) = suite::build_reference(
                &dir.path().join("reference.duckdb"),
                &dataset,
                intervals,
                10_000,
            )
            .await?;
            let client = Client::builder(&target.url).token(&target.token).build()?;
            let cases = queries::cases(&dataset, intervals)?;
            let rows = suite::run_queries(&cases, &client, &reference, runs).await?;
            println!("{}", query_table(&rows).render());
            Ok(rows.iter().all(|r| r.answers.is_ok()))
        }
        Command::All {
            data,
            load,
            runs,
            half_load_secs,
            half_load_batch,
            json_points,
            workers,
            partitions,
            server_bin,
            skip_rf3,
            skip_promql,
            skip_peers,
            peers,
        } => {
            let (dataset, intervals) = data.dataset()?;
            let server_bin = server_bin.map_or_else(cluster::default_server_bin, Ok)?;
            let options = suite::AllOptions {
                dataset,
                intervals,
                connections: load.connections,
                batch: load.batch,
                runs,
                half_load: Duration::from_secs(half_load_secs),
                half_load_batch,
                json_points,
                workers,
                partitions,
                server_bin,
                skip_rf3,
                promql: !skip_promql,
                peers: (!skip_peers).then(|| peers.bins()),
            };
            let report = suite::run_all(&options).await?;
            report.print();
            Ok(report.answers_agree())
        }
        Command::Promql {
            scale,
            points,
            seed,
            load,
            runs,
            url,
            token,
            load_data,
            workers,
            partitions,
            server_bin,
        } => {
            let data = DataArgs {
                scale,
                points,
                seed,
            };
            let (dataset, intervals) = data.dataset()?;
            let target = match (url, token) {
                (Some(url), Some(token)) => Some((url, token, load_data)),
                (Some(_), None) => {
                    return Err(BenchError::Config(
                        "--url needs --token (or RAFTMETRICS_TOKEN)".into(),
                    ));
                }
                (None, _) => None,
            };
            let options = promql::PromqlOptions {
                dataset,
                intervals,
                runs,
                target,
                connections: load.connections,
                batch: load.batch,
                format: load.format.into(),
                workers,
                partitions,
                server_bin,
            };
            let report = promql::run(&options).await?;
            report.print();
            Ok(report.answers_agree())
        }
        Command::Rebalance {
            data,
            load,
            rate,
            steady_connections,
            steady_batch,
            warmup_secs,
            baseline_secs,
            rebalance_limit_secs,
            max_steady_points,
            partitions,
            server_bin,
            latency_log,
        } => {
            let (dataset, intervals) = data.dataset()?;
            let server_bin = server_bin.map_or_else(cluster::default_server_bin, Ok)?;
            if baseline_secs == 0 || steady_connections == 0 || steady_batch == 0 {
                return Err(BenchError::Config(
                    "--baseline-secs, --steady-connections and --steady-batch must be at least 1"
                        .into(),
                ));
            }
            let options = rebalance::RebalanceOptions {
                dataset,
                intervals,
                preload_connections: load.connections,
                preload_batch: load.batch,
                preload_format: load.format.into(),
                rate,
                connections: steady_connections,
                batch: steady_batch,
                warmup: Duration::from_secs(warmup_secs),
                baseline: Duration::from_secs(baseline_secs),
                rebalance_limit: Duration::from_secs(rebalance_limit_secs),
                max_steady_points,
                partitions,
                server_bin,
                latency_log,
            };
            let report = rebalance::run(&options).await?;
            report.print();
            Ok(report.consistent())
        }
        Command::Export {
            data,
            load,
            workers,
            replication_factor,
            partitions,
            out,
            server_bin,
        } => {
            let (dataset, intervals) = data.dataset()?;
            let server_bin = server_bin.map_or_else(cluster::default_server_bin, Ok)?;
            let options = export::ExportOptions {
                dataset,
                intervals,
                connections: load.connections,
                batch: load.batch,
                workers,
                replication_factor,
                partitions,
                server_bin,
                out,
            };
            export::run(&options).await
        }
        Command::Protocols {
            data,
            load,
            rounds,
            workers,
            partitions,
            server_bin,
        } => {
            let (dataset, intervals) = data.dataset()?;
            let server_bin = server_bin.map_or_else(cluster::default_server_bin, Ok)?;
            let options = protocols::ProtocolsOptions {
                dataset,
                intervals,
                connections: load.connections,
                batch: load.batch,
                rounds: rounds.max(1),
                workers,
                partitions,
                server_bin,
            };
            protocols::run(&options).await
        }
        Command::Peers {
            data,
            load,
            runs,
            rounds,
            workers,
            partitions,
            server_bin,
            peers,
        } => {
            let (dataset, intervals) = data.dataset()?;
            let server_bin = server_bin.map_or_else(cluster::default_server_bin, Ok)?;
            let options = peers::PeersOptions {
                dataset,
                intervals,
                connections: load.connections,
                batch: load.batch,
                runs,
                rounds: rounds.max(1),
                workers,
                partitions,
                server_bin,
                bins: peers.bins(),
            };
            let report = peers::run(&options).await?;
            report.print();
            Ok(report.answers_agree())
        }
    }
}

/// Writes the dataset as JSON lines.
fn generate(data: &DataArgs, out: Option<PathBuf>) -> Result<()> {
    let (dataset, intervals) = data.dataset()?;
    let sink: Box<dyn Write> = match &out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(BenchError::io(format!("create {}", path.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = BufWriter::new(sink);
    for sample in dataset.samples(0, intervals) {
        let point = dataset.point(&sample);
        let line = JsonPoint {
            metric: Some(point.metric),
            value: point.value,
            timestamp: point.timestamp,
            tags: Some(point.tags),
            partition_key: None,
        };
        serde_json::to_writer(&mut sink, &line).map_err(|e| BenchError::Io {
            what: "write a point".into(),
            source: e.into(),
        })?;
        sink.write_all(b"\n")
            .map_err(BenchError::io("write a point"))?;
    }
    sink.flush().map_err(BenchError::io("write the points"))
}
