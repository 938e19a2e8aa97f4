//! Node configuration: the command line of `raftmetrics-server` and the seed's environment
//! variables.
//!
//! ```text
//! raftmetrics-server control [--node-id 1] [--port 8080] [--worker-hosts h1:8081,h2:8082] ...
//! raftmetrics-server worker  --id 1 --port 8081 [--control-host control:9080] ...
//! raftmetrics-server dev     [--workers 3] [--port 8080] ...
//! ```
//! Every option of `control` and `worker` (and the shared ones of `dev`) can also come from
//! an environment variable ([`ENV_VARS`]: `NODE_ID`, `PORT`, `DB_PATH`, `WORKER_HOSTS`,
//! `CONTROL_HOST`, `AUTH_TOKENS`, ...). A flag on the command line wins over the variable,
//! the variable wins over the default; a variable set to an empty string counts as unset.
//! Without a subcommand, `NODE_ROLE` (`control`, `worker` or `dev`) picks the role.
//!
//! Use [`parse_from_env_and_args`]: it applies the environment, reads the tokens file,
//! merges the tokens and validates everything. The environment is passed in as a function,
//! so nothing here reads the process environment by itself (clap's own `env` support is not
//! used for that reason).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::http::auth::{MAX_TOKENS, check_token};
use crate::rpc::MAX_CONTROL_NODES;

/// Virtual partitions when not configured.
pub const DEFAULT_PARTITIONS: u32 = 16;
/// Most virtual partitions.
pub const MAX_PARTITIONS: u32 = 65_536;
/// Default request body limit: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Default request deadline.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default limit for a request head to arrive, from its first byte (or from the accept).
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default limit of a keep-alive connection waiting for its next request.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default cap of open connections on a node's HTTP port.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default requests per minute and token on a control node (the seed's figure).
pub const DEFAULT_CONTROL_RATE_LIMIT: u32 = 1000;
/// Default requests per minute and token on a worker node (the seed's figure).
pub const DEFAULT_WORKER_RATE_LIMIT: u32 = 5000;
/// Without `--internal-port`, the node-to-node port is the HTTP port plus this.
pub const INTERNAL_PORT_OFFSET: u16 = 1000;
/// Shortest accepted cluster secret, in bytes.
pub const MIN_CLUSTER_SECRET_BYTES: usize = 16;
/// Default replication factor cap: `min(3, workers)`.
pub const MAX_DEFAULT_REPLICATION_FACTOR: u32 = 3;
/// The environment variable that picks the role when no subcommand is given.
pub const NODE_ROLE_VAR: &str = "NODE_ROLE";
/// Environment variables and the long flags they stand for. A variable only applies to the
/// roles that have the flag.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("NODE_ID", "node-id"),
    ("PORT", "port"),
    ("INTERNAL_PORT", "internal-port"),
    ("DB_PATH", "db-path"),
    ("DATA_DIR", "data-dir"),
    ("WORKER_HOSTS", "worker-hosts"),
    ("CONTROL_HOST", "control-host"),
    ("CONTROL_PEERS", "control-peers"),
    ("REPLICATION_FACTOR", "replication-factor"),
    ("PARTITIONS", "partitions"),
    ("AUTH_TOKENS", "auth-tokens"),
    ("AUTH_TOKENS_FILE", "auth-tokens-file"),
    ("CLUSTER_SECRET", "cluster-secret"),
    ("RATE_LIMIT_PER_MINUTE", "rate-limit-per-minute"),
    ("MAX_BODY_BYTES", "max-body-bytes"),
    ("REQUEST_TIMEOUT_MS", "request-timeout-ms"),
    ("HEADER_READ_TIMEOUT_MS", "header-read-timeout-ms"),
    ("IDLE_TIMEOUT_MS", "idle-timeout-ms"),
    ("MAX_CONNECTIONS", "max-connections"),
    ("INFLUX_FIELD_SEPARATOR", "influx-field-separator"),
    ("MIN_WORKERS", "min-workers"),
    ("DEAD_WORKER_TIMEOUT", "dead-worker-timeout"),
    ("MAX_MOVES", "max-moves"),
    ("MAX_MOVES_PER_WORKER", "max-moves-per-worker"),
    ("BIND_HOST", "bind-host"),
    ("ADVERTISE_HOST", "advertise-host"),
];

const MAX_BODY_LIMIT: usize = 1 << 30;
const MAX_REQUEST_TIMEOUT_MS: u64 = 3_600_000;
const MAX_CONNECTION_TIMEOUT_MS: u64 = 3_600_000;
const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;
const MAX_DEV_WORKERS: u16 = 64;
const MAX_HOSTS: usize = 1024;
const MAX_HOST_BYTES: usize = 255;
const MAX_SECRET_BYTES: usize = 4096;
const MAX_TOKENS_FILE_BYTES: u64 = 1 << 20;

/// A secret string (auth token, cluster secret) whose `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The `raftmetrics-server` command line.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "raftmetrics-server",
    version,
    about = "RaftMetrics cluster node: control, worker, or a whole local cluster (dev)",
    after_help = "Without a subcommand, NODE_ROLE=control|worker|dev picks the role. \
                  Every option can also be set by the environment variable in its help."
)]
pub struct Cli {
    /// The role of this process.
    #[command(subcommand)]
    pub role: Role,
}

/// What this process runs.
#[derive(Subcommand, Debug, Clone)]
pub enum Role {
    /// The control node: public API, routing, query planning, cluster metadata.
    Control(ControlArgs),
    /// A worker node: stores partition replicas in DuckDB and computes partial aggregates.
    Worker(WorkerArgs),
    /// A whole cluster in one process: control on --port, workers on the ports after it.
    Dev(DevArgs),
    /// Asks the node on this machine's --port for /health; exit status 0 when it answers
    /// 200 (a container health check).
    Healthcheck(HealthcheckArgs),
}

/// Options of the healthcheck command.
#[derive(Args, Debug, Clone)]
pub struct HealthcheckArgs {
    /// HTTP port of the node to ask, on 127.0.0.1 [env: PORT]
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The node's tokens; the first one is sent.
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Options of the control role.
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    /// Node id, nonzero [env: NODE_ID]
    #[arg(long = "node-id", alias = "id", default_value_t = 1)]
    pub node_id: u64,
    /// HTTP port of the public API [env: PORT]
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Workers known at start, comma-separated host:port (more register themselves)
    /// [env: WORKER_HOSTS]
    #[arg(long, value_delimiter = ',')]
    pub worker_hosts: Vec<String>,
    /// Replicas per partition [default: min(3, workers)] [env: REPLICATION_FACTOR]
    #[arg(long)]
    pub replication_factor: Option<u32>,
    /// Virtual partitions, fixed at cluster creation, 1..=65536 [env: PARTITIONS]
    #[arg(long, default_value_t = DEFAULT_PARTITIONS)]
    pub partitions: u32,
    /// Requests per minute per token [env: RATE_LIMIT_PER_MINUTE]
    #[arg(long, default_value_t = DEFAULT_CONTROL_RATE_LIMIT)]
    pub rate_limit_per_minute: u32,
    /// Workers that must have registered before partitions are placed
    /// [default: max(number of WORKER_HOSTS, replication factor, 1)] [env: MIN_WORKERS]
    #[arg(long)]
    pub min_workers: Option<u32>,
    /// Node-to-node addresses (host:port) of every control node, comma-separated, in node-id
    /// order: the i-th is control node i, and this node is the one of --node-id. 1, 3 or 5
    /// of them make the metadata Raft group's voters [default: this node alone]
    /// [env: CONTROL_PEERS]
    #[arg(long, value_delimiter = ',')]
    pub control_peers: Vec<String>,
    /// How replicas move.
    #[command(flatten)]
    pub moves: MoveArgs,
    /// Options every node has.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Options of the worker role.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Node id, 1..=2^62-1, unique among workers; without it, the id kept in the data
    /// directory, or a new random one kept there (needs --data-dir) [env: NODE_ID]
    #[arg(long = "node-id", alias = "id")]
    pub node_id: Option<u64>,
    /// HTTP port of the public API [env: PORT]
    #[arg(long, default_value_t = 8081)]
    pub port: u16,
    /// Control nodes to register with, comma-separated host:port of their node-to-node
    /// listeners (every control node of the cluster) [default: 127.0.0.1:9080]
    /// [env: CONTROL_HOST]
    #[arg(long, value_delimiter = ',')]
    pub control_host: Vec<String>,
    /// DuckDB file [default: <data-dir>/store.duckdb] [env: DB_PATH]
    #[arg(long)]
    pub db_path: Option<PathBuf>,
    /// Requests per minute per token [env: RATE_LIMIT_PER_MINUTE]
    #[arg(long, default_value_t = DEFAULT_WORKER_RATE_LIMIT)]
    pub rate_limit_per_minute: u32,
    /// Options every node has.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Options shared by control and worker nodes.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Node-to-node TCP port [default: --port + 1000] [env: INTERNAL_PORT]
    #[arg(long)]
    pub internal_port: Option<u16>,
    /// Directory of this node's files [default: data/<role>-<id>] [env: DATA_DIR]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Shared secret of node-to-node connections, at least 16 bytes [env: CLUSTER_SECRET]
    #[arg(long)]
    pub cluster_secret: Option<Secret>,
    /// Address the HTTP and node-to-node listeners bind to [env: BIND_HOST]
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_host: String,
    /// Host other nodes use to reach this one; `auto`: the address this machine's hostname
    /// resolves to (a container's address) [env: ADVERTISE_HOST]
    #[arg(long, default_value = "127.0.0.1")]
    pub advertise_host: String,
    /// Public HTTP options.
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Options of the public HTTP API.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Accepted bearer tokens, comma-separated; after parsing, also those of the tokens file
    /// [env: AUTH_TOKENS]
    #[arg(long, value_delimiter = ',')]
    pub auth_tokens: Vec<Secret>,
    /// File of bearer tokens, one per line, `#` starts a comment line [env: AUTH_TOKENS_FILE]
    #[arg(long)]
    pub auth_tokens_file: Option<PathBuf>,
    /// Largest accepted request body in bytes [env: MAX_BODY_BYTES]
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Deadline of one request in milliseconds [env: REQUEST_TIMEOUT_MS]
    #[arg(long, default_value_t = DEFAULT_REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,
    /// A connection that has begun a request head (or sent nothing since it connected) and
    /// has not completed it in this many milliseconds is closed [env: HEADER_READ_TIMEOUT_MS]
    #[arg(long, default_value_t = DEFAULT_HEADER_READ_TIMEOUT_MS)]
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request for this many milliseconds is closed
    /// [env: IDLE_TIMEOUT_MS]
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT_MS)]
    pub idle_timeout_ms: u64,
    /// Open connections on the HTTP port; at the cap a new connection closes the one idle
    /// the longest, or is refused when every connection has a request in flight
    /// [env: MAX_CONNECTIONS]
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Between a line protocol measurement and its field in a metric name
    /// (`cpu` + `usage_idle` → `cpu_usage_idle`); up to 16 of `a-z A-Z 0-9 _ . -`, or empty
    /// [env: INFLUX_FIELD_SEPARATOR]
    #[arg(long, default_value = "_")]
    pub influx_field_separator: String,
}

/// How the control node moves replicas (rebalancing, draining, replacing dead workers).
#[derive(Args, Debug, Clone)]
pub struct MoveArgs {
    /// A worker not heard from for this long is declared dead and its replicas are
    /// re-created on other workers: a number and a unit, s, m or h (30s, 5m, 1h)
    /// [env: DEAD_WORKER_TIMEOUT]
    #[arg(long, default_value = "5m")]
    pub dead_worker_timeout: String,
    /// Replica moves running at once in the cluster [env: MAX_MOVES]
    #[arg(long, default_value_t = 2)]
    pub max_moves: usize,
    /// Replica moves a worker takes part in at once, as source or target
    /// [env: MAX_MOVES_PER_WORKER]
    #[arg(long, default_value_t = 1)]
    pub max_moves_per_worker: usize,
}

impl MoveArgs {
    /// The dead-worker timeout (checked by parsing).
    pub fn dead_worker_timeout(&self) -> Duration {
        raftmetrics_core::time::parse_duration_micros(&self.dead_worker_timeout)
            .map(|us| Duration::from_micros(us.unsigned_abs()))
            .unwrap_or(Duration::from_secs(300))
    }

    fn finish(&self, problems: &mut Vec<String>) {
        match raftmetrics_core::time::parse_duration_micros(&self.dead_worker_timeout) {
            Ok(us) if us >= 2_000_000 => {}
            Ok(_) => problems.push(
                "--dead-worker-timeout / DEAD_WORKER_TIMEOUT must be at least 2s (the liveness \
                 window)"
                    .into(),
            ),
            Err(e) => problems.push(format!("--dead-worker-timeout / DEAD_WORKER_TIMEOUT {e}")),
        }
        if !(1..=64).contains(&self.max_moves) {
            problems.push("--max-moves / MAX_MOVES must be 1..=64".into());
        }
        if !(1..=64).contains(&self.max_moves_per_worker) {
            problems.push("--max-moves-per-worker / MAX_MOVES_PER_WORKER must be 1..=64".into());
        }
    }

    /// The mover's configuration.
    pub fn mover_config(&self) -> crate::mover::MoverConfig {
        crate::mover::MoverConfig {
            limits: crate::rebalance::MoveLimits {
                max_in_flight: self.max_moves,
                max_per_worker: self.max_moves_per_worker,
            },
            dead_worker_timeout: self.dead_worker_timeout(),
        }
    }
}

/// Options of the dev role (a local cluster in one process).
#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Number of workers, 1..=64 (three, the smallest cluster that keeps writing when one
    /// is lost)
    #[arg(long, default_value_t = 3)]
    pub workers: u16,
    /// Replicas per partition [default: min(3, workers)] [env: REPLICATION_FACTOR]
    #[arg(long)]
    pub replication_factor: Option<u32>,
    /// Virtual partitions, 1..=65536 [env: PARTITIONS]
    #[arg(long, default_value_t = DEFAULT_PARTITIONS)]
    pub partitions: u32,
    /// Directory of all nodes' files [default: data/dev] [env: DATA_DIR]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP port of the first control node; worker i listens on port + i, control node
    /// j > 1 on port + workers + j - 1 [env: PORT]
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Number of control nodes: 1, 3 or 5 (one metadata Raft group of that many voters)
    #[arg(long, default_value_t = 1)]
    pub control_nodes: u16,
    /// Requests per minute per token on every node [default: 1000 control, 5000 workers]
    /// [env: RATE_LIMIT_PER_MINUTE]
    #[arg(long)]
    pub rate_limit_per_minute: Option<u32>,
    /// Node-to-node secret (optional in dev) [env: CLUSTER_SECRET]
    #[arg(long)]
    pub cluster_secret: Option<Secret>,
    /// How the control node moves replicas.
    #[command(flatten)]
    pub moves: MoveArgs,
    /// Public HTTP options.
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A command-line error, or `--help` / `--version` (use [`ConfigError::exit`]).
    #[error("{0}")]
    Cli(#[from] clap::Error),
    /// An environment variable's value does not parse.
    #[error("environment variable {var}: {reason}")]
    Env { var: &'static str, reason: String },
    /// Values that parse but break the rules; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl ConfigError {
    /// Prints the error (or the help) and exits: 0 for `--help`/`--version`, 2 otherwise.
    pub fn exit(&self) -> ! {
        match self {
            ConfigError::Cli(e) => e.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// The default replication factor for a number of workers: `min(3, workers)`, at least 1.
pub fn default_replication_factor(workers: usize) -> u32 {
    u32::try_from(workers)
        .unwrap_or(u32::MAX)
        .clamp(1, MAX_DEFAULT_REPLICATION_FACTOR)
}

impl Role {
    /// The role's name: `control`, `worker` or `dev`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Control(_) => "control",
            Role::Worker(_) => "worker",
            Role::Dev(_) => "dev",
            Role::Healthcheck(_) => "healthcheck",
        }
    }

    /// The public HTTP options of this role.
    pub fn http(&self) -> &HttpArgs {
        match self {
            Role::Control(a) => &a.node.http,
            Role::Worker(a) => &a.node.http,
            Role::Dev(a) => &a.http,
            Role::Healthcheck(a) => &a.http,
        }
    }
}

impl ControlArgs {
    /// The node-to-node port.
    pub fn internal_port(&self) -> u16 {
        self.node.internal_port_for(self.port)
    }

    /// This node's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.node.data_dir_for("control", self.node_id)
    }

    /// The replication factor for a cluster of `workers` workers.
    pub fn replication_factor(&self, workers: usize) -> u32 {
        self.replication_factor
            .unwrap_or_else(|| default_replication_factor(workers))
    }
}

impl ControlArgs {
    /// Workers to wait for before placing partitions.
    pub fn min_workers(&self) -> u32 {
        self.min_workers.unwrap_or_else(|| {
            let hosts = u32::try_from(self.worker_hosts.len()).unwrap_or(u32::MAX);
            hosts.max(self.replication_factor.unwrap_or(1)).max(1)
        })
    }
}

impl WorkerArgs {
    /// The node-to-node port.
    pub fn internal_port(&self) -> u16 {
        self.node.internal_port_for(self.port)
    }

    /// This node's data directory (`--data-dir`, which is required without `--node-id`).
    pub fn data_dir(&self) -> PathBuf {
        match self.node_id {
            Some(id) => self.node.data_dir_for("worker", id),
            None => self.node.data_dir.clone().unwrap_or_else(|| "data".into()),
        }
    }

    /// The DuckDB file.
    pub fn db_path(&self) -> PathBuf {
        self.db_path
            .clone()
            .unwrap_or_else(|| self.data_dir().join("store.duckdb"))
    }
}

impl NodeArgs {
    fn internal_port_for(&self, port: u16) -> u16 {
        self.internal_port
            .unwrap_or_else(|| port.saturating_add(INTERNAL_PORT_OFFSET))
    }

    fn data_dir_for(&self, role: &str, id: u64) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| Path::new("data").join(format!("{role}-{id}")))
    }

    /// The cluster secret (always present after [`parse_from_env_and_args`]).
    pub fn cluster_secret(&self) -> Option<&Secret> {
        self.cluster_secret.as_ref()
    }
}

impl HttpArgs {
    /// All accepted tokens (after [`parse_from_env_and_args`]: the list and the file merged).
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.auth_tokens.iter().map(Secret::expose)
    }

    /// The request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// How long a request head may take to arrive.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// How long a keep-alive connection may wait for its next request.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

impl DevArgs {
    /// The directory under which every node of the dev cluster keeps its files.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| Path::new("data").join("dev"))
    }

    /// The replication factor: explicit, or `min(3, workers)`.
    pub fn replication_factor(&self) -> u32 {
        self.replication_factor
            .unwrap_or_else(|| default_replication_factor(usize::from(self.workers)))
    }

    /// HTTP port of worker `i` (1-based): `port + i`; `None` when out of range.
    pub fn worker_port(&self, i: u16) -> Option<u16> {
        (1..=self.workers)
            .contains(&i)
            .then(|| self.port.checked_add(i))
            .flatten()
    }

    /// HTTP port of control node `j` (1-based): `port` for the first, `port + workers + j -
    /// 1` for the others; `None` when out of range.
    pub fn control_port(&self, j: u16) -> Option<u16> {
        match j {
            1 => Some(self.port),
            j if (2..=self.control_nodes).contains(&j) => self
                .port
                .checked_add(self.workers)
                .and_then(|p| p.checked_add(j - 1)),
            _ => None,
        }
    }

    /// Requests per minute per token: `(control, worker)`.
    pub fn rate_limits(&self) -> (u32, u32) {
        match self.rate_limit_per_minute {
            Some(l) => (l, l),
            None => (DEFAULT_CONTROL_RATE_LIMIT, DEFAULT_WORKER_RATE_LIMIT),
        }
    }
}

/// Parses the command line with the environment `env` (e.g. `&|k| std::env::var(k).ok()`):
/// picks the role from `NODE_ROLE` when no subcommand is given, fills unset options from
/// their variables, reads the tokens file, merges the tokens and validates everything.
pub fn parse_from_env_and_args<I, T>(
    args: I,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if args.is_empty() {
        args.push("raftmetrics-server".into());
    }
    let cmd = Cli::command();

    // The role: the first argument, or NODE_ROLE when the first argument is an option.
    let first = args.get(1).and_then(|a| a.to_str());
    let names_role = first.is_some_and(|a| !a.starts_with('-'));
    let asks_info = first.is_some_and(|a| matches!(a, "-h" | "--help" | "-V" | "--version"));
    if !names_role
        && !asks_info
        && let Some(role) = env(NODE_ROLE_VAR)
    {
        let role = role.trim().to_ascii_lowercase();
        if !matches!(role.as_str(), "control" | "worker" | "dev") {
            return Err(ConfigError::Env {
                var: NODE_ROLE_VAR,
                reason: format!("must be control, worker or dev, not '{role}'"),
            });
        }
        args.insert(1, role.into());
    }

    // The environment: `--flag=value` for every variable whose flag the role has and the
    // command line does not set.
    let mut injected: Vec<(&'static str, &'static str)> = Vec::new();
    let mut extra: Vec<OsString> = Vec::new();
    if let Some(sub) = args
        .get(1)
        .and_then(|a| a.to_str())
        .and_then(|name| cmd.find_subcommand(name))
    {
        let given: Vec<&str> = args.iter().skip(2).filter_map(|a| a.to_str()).collect();
        for &(var, long) in ENV_VARS {
            let Some(arg) = sub.get_arguments().find(|a| a.get_long() == Some(long)) else {
                continue;
            };
            let mut names = vec![long];
            names.extend(arg.get_all_aliases().unwrap_or_default());
            let on_command_line = given.iter().any(|g| {
                names.iter().any(|n| {
                    g.strip_prefix("--")
                        .and_then(|g| g.strip_prefix(n))
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
                })
            });
            if on_command_line {
                continue;
            }
            if let Some(value) = env(var) {
                extra.push(format!("--{long}={value}").into());
                injected.push((var, long));
            }
        }
    }
    args.extend(extra);

    let matches = cmd
        .try_get_matches_from(&args)
        .map_err(|e| env_error(e, &injected))?;
    let mut cli = Cli::from_arg_matches(&matches)?;

    let mut problems = Vec::new();
    match &mut cli.role {
        Role::Control(a) => a.finish(&mut problems),
        Role::Worker(a) => a.finish(&mut problems),
        Role::Dev(a) => a.finish(&mut problems),
        Role::Healthcheck(a) => {
            check_port("--port / PORT", a.port, &mut problems);
            a.http.finish(&mut problems);
        }
    }
    if problems.is_empty() {
        Ok(cli)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// Names the environment variable when a value it supplied does not parse.
fn env_error(e: clap::Error, injected: &[(&'static str, &'static str)]) -> ConfigError {
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => return ConfigError::Cli(e),
    };
    let Some(&(var, _)) = injected.iter().find(|(_, long)| {
        arg.strip_prefix("--")
            .and_then(|a| a.strip_prefix(long))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '=']))
    }) else {
        return ConfigError::Cli(e);
    };
    let reason = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "invalid value".to_string());
    ConfigError::Env { var, reason }
}

impl ControlArgs {
    fn finish(&mut self, problems: &mut Vec<String>) {
        check_node_id(self.node_id, problems);
        check_port("--port / PORT", self.port, problems);
        check_hosts(
            "--worker-hosts / WORKER_HOSTS",
            &mut self.worker_hosts,
            problems,
        );
        check_replication(self.replication_factor, None, problems);
        check_partitions(self.partitions, problems);
        check_rate_limit(self.rate_limit_per_minute, problems);
        check_control_peers(self.node_id, &mut self.control_peers, problems);
        self.moves.finish(problems);
        self.node.finish(self.port, true, problems);
    }

    /// The metadata group's members: `(control node id, node-to-node address)`, this node
    /// included; empty for a control node alone.
    pub fn peers(&self) -> Vec<(u64, String)> {
        if self.control_peers.len() <= 1 {
            return Vec::new();
        }
        (1u64..).zip(self.control_peers.iter().cloned()).collect()
    }

    /// The mover's configuration.
    pub fn mover_config(&self) -> crate::mover::MoverConfig {
        self.moves.mover_config()
    }
}

impl WorkerArgs {
    fn finish(&mut self, problems: &mut Vec<String>) {
        match self.node_id {
            Some(id) => check_node_id(id, problems),
            None if self.node.data_dir.is_none() => problems.push(
                "a worker needs --node-id / NODE_ID, or --data-dir / DATA_DIR where it keeps \
                 a generated id"
                    .into(),
            ),
            None => {}
        }
        check_port("--port / PORT", self.port, problems);
        if self.control_host.len() > MAX_CONTROL_NODES as usize {
            problems.push(format!(
                "--control-host / CONTROL_HOST: at most {MAX_CONTROL_NODES} control nodes"
            ));
        } else {
            check_hosts(
                "--control-host / CONTROL_HOST",
                &mut self.control_host,
                problems,
            );
        }
        check_path("--db-path / DB_PATH", self.db_path.as_deref(), problems);
        check_rate_limit(self.rate_limit_per_minute, problems);
        self.node.finish(self.port, true, problems);
    }
}

impl NodeArgs {
    fn finish(&mut self, port: u16, secret_required: bool, problems: &mut Vec<String>) {
        match self.internal_port {
            Some(p) if p == port => {
                problems.push("--internal-port / INTERNAL_PORT must differ from --port".into())
            }
            Some(p) => check_port("--internal-port / INTERNAL_PORT", p, problems),
            None if port.checked_add(INTERNAL_PORT_OFFSET).is_none() => problems.push(format!(
                "--port {port} leaves no room for the default internal port (port + \
                 {INTERNAL_PORT_OFFSET}); set --internal-port / INTERNAL_PORT"
            )),
            None => {}
        }
        check_path("--data-dir / DATA_DIR", self.data_dir.as_deref(), problems);
        check_secret(self.cluster_secret.as_ref(), secret_required, problems);
        self.http.finish(problems);
    }
}

impl DevArgs {
    fn finish(&mut self, problems: &mut Vec<String>) {
        check_port("--port / PORT", self.port, problems);
        if !(1..=MAX_DEV_WORKERS).contains(&self.workers) {
            problems.push(format!("--workers must be 1..={MAX_DEV_WORKERS}"));
        } else if self.port.checked_add(self.workers).is_none() {
            problems.push(format!(
                "--port {} + {} workers runs past port 65535",
                self.port, self.workers
            ));
        }
        if !matches!(self.control_nodes, 1 | 3 | 5) {
            problems.push("--control-nodes must be 1, 3 or 5".into());
        } else if self.control_port(self.control_nodes).is_none() {
            problems.push(format!(
                "--port {} + {} workers + {} control nodes runs past port 65535",
                self.port, self.workers, self.control_nodes
            ));
        }
        check_replication(self.replication_factor, Some(self.workers), problems);
        check_partitions(self.partitions, problems);
        if let Some(limit) = self.rate_limit_per_minute {
            check_rate_limit(limit, problems);
        }
        check_path("--data-dir / DATA_DIR", self.data_dir.as_deref(), problems);
        self.moves.finish(problems);
        check_secret(self.cluster_secret.as_ref(), false, problems);
        self.http.finish_tokens(false, problems);
    }
}

impl HttpArgs {
    fn finish(&mut self, problems: &mut Vec<String>) {
        self.finish_tokens(true, problems);
    }

    /// Checks the limits and merges the tokens; `tokens_required` is false for `dev`, which
    /// makes a random token when none is given.
    fn finish_tokens(&mut self, tokens_required: bool, problems: &mut Vec<String>) {
        if !(1..=MAX_BODY_LIMIT).contains(&self.max_body_bytes) {
            problems.push(format!(
                "--max-body-bytes / MAX_BODY_BYTES must be 1..={MAX_BODY_LIMIT}"
            ));
        }
        if !(1..=MAX_REQUEST_TIMEOUT_MS).contains(&self.request_timeout_ms) {
            problems.push(format!(
                "--request-timeout-ms / REQUEST_TIMEOUT_MS must be 1..={MAX_REQUEST_TIMEOUT_MS}"
            ));
        }
        if !(1..=MAX_CONNECTION_TIMEOUT_MS).contains(&self.header_read_timeout_ms) {
            problems.push(format!(
                "--header-read-timeout-ms / HEADER_READ_TIMEOUT_MS must be \
                 1..={MAX_CONNECTION_TIMEOUT_MS}"
            ));
        }
        if !(1..=MAX_CONNECTION_TIMEOUT_MS).contains(&self.idle_timeout_ms) {
            problems.push(format!(
                "--idle-timeout-ms / IDLE_TIMEOUT_MS must be 1..={MAX_CONNECTION_TIMEOUT_MS}"
            ));
        }
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&self.max_connections) {
            problems.push(format!(
                "--max-connections / MAX_CONNECTIONS must be 1..={MAX_CONNECTIONS_LIMIT}"
            ));
        }
        let separator = &self.influx_field_separator;
        if separator.len() > 16
            || !separator
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            problems.push(
                "--influx-field-separator / INFLUX_FIELD_SEPARATOR must be at most 16 of \
                 a-z A-Z 0-9 _ . - (it becomes part of metric names)"
                    .into(),
            );
        }
        let mut tokens = Vec::new();
        for (i, token) in std::mem::take(&mut self.auth_tokens)
            .into_iter()
            .enumerate()
        {
            let token = token.expose().trim();
            match check_token(token) {
                Ok(()) => tokens.push(Secret(token.to_string())),
                Err(e) => {
                    problems.push(format!("--auth-tokens / AUTH_TOKENS: token #{} {e}", i + 1))
                }
            }
        }
        if let Some(path) = &self.auth_tokens_file {
            match read_bounded(path, MAX_TOKENS_FILE_BYTES) {
                Ok(text) => tokens.extend(parse_tokens_file(&text, path, problems)),
                Err(e) => problems.push(e),
            }
        }
        let mut seen = HashSet::new();
        tokens.retain(|t| seen.insert(t.clone()));
        if tokens.is_empty() && tokens_required {
            problems.push(
                "no auth tokens configured: every endpoint requires a bearer token; set \
                 --auth-tokens / AUTH_TOKENS or --auth-tokens-file / AUTH_TOKENS_FILE"
                    .into(),
            );
        } else if tokens.len() > MAX_TOKENS {
            problems.push(format!("more than {MAX_TOKENS} auth tokens"));
        }
        self.auth_tokens = tokens;
    }
}

/// Tokens of a tokens file: one per line, surrounding whitespace ignored, blank lines and
/// lines starting with `#` skipped. Problems name the line, never the token.
fn parse_tokens_file(text: &str, path: &Path, problems: &mut Vec<String>) -> Vec<Secret> {
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match check_token(line) {
            Ok(()) => tokens.push(Secret(line.to_string())),
            Err(e) => problems.push(format!(
                "auth tokens file {} line {}: token {e}",
                path.display(),
                n + 1
            )),
        }
    }
    tokens
}

/// Reads a UTF-8 file of at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<String, String> {
    let what = || format!("auth tokens file {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", what()))?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", what()))?;
    if text.len() as u64 > max {
        return Err(format!("{}: larger than {max} bytes", what()));
    }
    Ok(text)
}

fn check_node_id(id: u64, problems: &mut Vec<String>) {
    if id == 0 {
        problems.push("--node-id / NODE_ID must be nonzero".into());
    }
}

fn check_port(what: &str, port: u16, problems: &mut Vec<String>) {
    if port == 0 {
        problems.push(format!("{what} must be 1..=65535"));
    }
}

fn check_partitions(partitions: u32, problems: &mut Vec<String>) {
    if !(1..=MAX_PARTITIONS).contains(&partitions) {
        problems.push(format!(
            "--partitions / PARTITIONS must be 1..={MAX_PARTITIONS}"
        ));
    }
}

fn check_replication(rf: Option<u32>, workers: Option<u16>, problems: &mut Vec<String>) {
    match (rf, workers) {
        (Some(0), _) => {
            problems.push("--replication-factor / REPLICATION_FACTOR must be at least 1".into())
        }
        (Some(rf), Some(workers)) if rf > u32::from(workers) => problems.push(format!(
            "--replication-factor {rf} is more than the {workers} workers"
        )),
        _ => {}
    }
}

fn check_rate_limit(limit: u32, problems: &mut Vec<String>) {
    if limit == 0 {
        problems.push("--rate-limit-per-minute / RATE_LIMIT_PER_MINUTE must be at least 1".into());
    }
}

fn check_path(what: &str, path: Option<&Path>, problems: &mut Vec<String>) {
    if path.is_some_and(|p| p.as_os_str().is_empty()) {
        problems.push(format!("{what} must not be empty"));
    }
}

fn check_secret(secret: Option<&Secret>, required: bool, problems: &mut Vec<String>) {
    const WHAT: &str = "--cluster-secret / CLUSTER_SECRET";
    match secret {
        None if required => problems.push(format!(
            "{WHAT} is required: node-to-node connections must authenticate"
        )),
        None => {}
        Some(s) if s.0.len() < MIN_CLUSTER_SECRET_BYTES => problems.push(format!(
            "{WHAT} must be at least {MIN_CLUSTER_SECRET_BYTES} bytes"
        )),
        Some(s) if s.0.len() > MAX_SECRET_BYTES => {
            problems.push(format!("{WHAT} must be at most {MAX_SECRET_BYTES} bytes"))
        }
        Some(s) if s.0.chars().any(char::is_whitespace) => {
            problems.push(format!("{WHAT} must not contain whitespace"))
        }
        Some(_) => {}
    }
}

/// Checks a list of `host[:port]` entries, trimming each.
fn check_hosts(what: &str, hosts: &mut [String], problems: &mut Vec<String>) {
    if hosts.len() > MAX_HOSTS {
        problems.push(format!("{what}: more than {MAX_HOSTS} hosts"));
        return;
    }
    for (i, host) in hosts.iter_mut().enumerate() {
        check_host(&format!("{what}: host #{}", i + 1), host, problems);
    }
}

/// Checks `--control-peers`: none, or 1, 3 or 5 addresses, distinct, one of them this node's.
fn check_control_peers(node_id: u64, peers: &mut [String], problems: &mut Vec<String>) {
    let what = "--control-peers / CONTROL_PEERS";
    if peers.is_empty() {
        return;
    }
    if !matches!(peers.len(), 1 | 3 | 5) {
        problems.push(format!(
            "{what} must list 1, 3 or 5 control nodes (a majority of an even number is no \
             more available than of one fewer), not {}",
            peers.len()
        ));
        return;
    }
    check_hosts(what, peers, problems);
    if node_id == 0 || node_id > peers.len() as u64 {
        problems.push(format!(
            "--node-id / NODE_ID of a control node must be 1..={} (its place in {what})",
            peers.len()
        ));
    }
    let distinct: HashSet<&String> = peers.iter().collect();
    if distinct.len() != peers.len() {
        problems.push(format!("{what} names an address twice"));
    }
}

/// Checks (and trims) one `host[:port]`.
fn check_host(what: &str, host: &mut String, problems: &mut Vec<String>) {
    *host = host.trim().to_string();
    if host.is_empty() {
        problems.push(format!("{what} is empty"));
    } else if host.len() > MAX_HOST_BYTES || host.chars().any(char::is_whitespace) {
        problems.push(format!(
            "{what} must be at most {MAX_HOST_BYTES} bytes without whitespace"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    const SECRET: &str = "0123456789abcdef-cluster";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// The environment a deployment would set for security.
    fn base_env() -> Vec<(&'static str, &'static str)> {
        vec![("AUTH_TOKENS", "tok-a,tok-b"), ("CLUSTER_SECRET", SECRET)]
    }

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, ConfigError> {
        let mut argv = vec!["raftmetrics-server"];
        argv.extend_from_slice(args);
        parse_from_env_and_args(argv, &env_of(env))
    }

    fn problems(result: Result<Cli, ConfigError>) -> Vec<String> {
        match result {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected invalid configuration, got {other:?}"),
        }
    }

    #[test]
    fn seed_worker_command_line_parses() {
        let cli = Cli::try_parse_from([
            "raftmetrics-server",
            "worker",
            "--id",
            "1",
            "--port",
            "8081",
        ])
        .expect("parse");
        let Role::Worker(w) = cli.role else {
            panic!("not a worker")
        };
        assert_eq!((w.node_id, w.port), (Some(1), 8081));
        assert_eq!(w.rate_limit_per_minute, DEFAULT_WORKER_RATE_LIMIT);
        assert_eq!(w.internal_port(), 9081);

        let cli = parse(&["worker", "--id", "2", "--port", "8082"], &base_env()).expect("parse");
        let Role::Worker(w) = cli.role else {
            panic!("not a worker")
        };
        assert_eq!((w.node_id, w.port), (Some(2), 8082));
        assert_eq!(w.db_path(), Path::new("data/worker-2/store.duckdb"));
    }

    #[test]
    fn control_defaults() {
        let cli = parse(&["control"], &base_env()).expect("parse");
        let Role::Control(c) = cli.role else {
            panic!("not control")
        };
        assert_eq!((c.node_id, c.port, c.internal_port()), (1, 8080, 9080));
        assert_eq!(c.partitions, 16);
        assert_eq!(c.rate_limit_per_minute, 1000);
        assert_eq!(c.node.http.max_body_bytes, 64 * 1024 * 1024);
        assert_eq!(c.node.http.request_timeout(), Duration::from_secs(30));
        assert_eq!(c.replication_factor(2), 2);
        assert_eq!(c.replication_factor(5), 3);
        assert_eq!(c.data_dir(), Path::new("data/control-1"));
        assert_eq!(c.node.http.tokens().collect::<Vec<_>>(), ["tok-a", "tok-b"]);
    }

    #[test]
    fn node_role_picks_the_role_when_no_subcommand_is_given() {
        let mut env = base_env();
        env.extend([("NODE_ROLE", "Worker"), ("NODE_ID", "7")]);
        let cli = parse(&[], &env).expect("parse");
        assert_eq!(cli.role.name(), "worker");
        let cli = parse(&["--port", "9000"], &env).expect("parse");
        let Role::Worker(w) = cli.role else {
            panic!("not a worker")
        };
        assert_eq!((w.node_id, w.port), (Some(7), 9000));
        // A subcommand on the command line wins over NODE_ROLE.
        let cli = parse(&["control"], &env).expect("parse");
        assert_eq!(cli.role.name(), "control");
    }

    #[test]
    fn bad_or_missing_role_is_reported() {
        let env = [("NODE_ROLE", "leader")];
        assert!(matches!(
            parse(&[], &env),
            Err(ConfigError::Env {
                var: "NODE_ROLE",
                ..
            })
        ));
        assert!(matches!(parse(&[], &[]), Err(ConfigError::Cli(_))));
    }

    #[test]
    fn environment_fills_options_and_flags_win() {
        let mut env = base_env();
        env.extend([
            ("NODE_ID", "3"),
            ("PORT", "18081"),
            ("INTERNAL_PORT", "19000"),
            ("DB_PATH", "/tmp/w3.duckdb"),
            ("DATA_DIR", "/tmp/w3"),
            ("CONTROL_HOST", "control:8080, control2:9080"),
            ("WORKER_HOSTS", "w1:8081, w2:8082"),
            ("RATE_LIMIT_PER_MINUTE", "77"),
            ("MAX_BODY_BYTES", "1024"),
            ("REQUEST_TIMEOUT_MS", "500"),
            ("PARTITIONS", "64"),
            ("REPLICATION_FACTOR", "2"),
        ]);
        let cli = parse(&["worker", "--port=18082"], &env).expect("parse");
        let Role::Worker(w) = cli.role else {
            panic!("not a worker")
        };
        assert_eq!(w.node_id, Some(3));
        assert_eq!(w.port, 18082, "the flag wins");
        assert_eq!(w.internal_port(), 19000);
        assert_eq!(w.db_path(), Path::new("/tmp/w3.duckdb"));
        assert_eq!(w.data_dir(), Path::new("/tmp/w3"));
        assert_eq!(w.control_host, vec!["control:8080", "control2:9080"]);
        assert_eq!(w.rate_limit_per_minute, 77);
        assert_eq!(w.node.http.max_body_bytes, 1024);
        assert_eq!(w.node.http.request_timeout_ms, 500);

        let cli = parse(&["control", "--id", "9"], &env).expect("parse");
        let Role::Control(c) = cli.role else {
            panic!("not control")
        };
        assert_eq!(c.node_id, 9, "the alias counts as the flag");
        assert_eq!(c.worker_hosts, ["w1:8081", "w2:8082"]);
        assert_eq!((c.partitions, c.replication_factor(5)), (64, 2));

        // Empty variables count as unset.
        let mut env = base_env();
        env.push(("PORT", ""));
        let cli = parse(&["control"], &env).expect("parse");
        let Role::Control(c) = cli.role else {
            panic!("not control")
        };
        assert_eq!(c.port, 8080);
    }

    #[test]
    fn connection_bounds_have_defaults_flags_variables_and_checks() {
        let cli = parse(&["control"], &base_env()).expect("parse");
        let http = cli.role.http();
        assert_eq!(http.header_read_timeout(), Duration::from_secs(10));
        assert_eq!(http.idle_timeout(), Duration::from_secs(60));
        assert_eq!(http.max_connections, 1024);

        let mut env = base_env();
        env.extend([
            ("HEADER_READ_TIMEOUT_MS", "2500"),
            ("IDLE_TIMEOUT_MS", "7000"),
            ("MAX_CONNECTIONS", "300"),
        ]);
        let cli = parse(&["worker", "--id", "1", "--max-connections=50"], &env).expect("parse");
        let http = cli.role.http();
        assert_eq!(http.header_read_timeout(), Duration::from_millis(2500));
        assert_eq!(http.idle_timeout(), Duration::from_secs(7));
        assert_eq!(http.max_connections, 50, "the flag wins");

        let p = problems(parse(
            &[
                "control",
                "--header-read-timeout-ms",
                "0",
                "--idle-timeout-ms",
                "0",
                "--max-connections",
                "0",
            ],
            &base_env(),
        ));
        let all = p.join("\n");
        for needle in [
            "HEADER_READ_TIMEOUT_MS",
            "IDLE_TIMEOUT_MS",
            "MAX_CONNECTIONS",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        let p = problems(parse(&["dev", "--max-connections", "0"], &[]));
        assert!(p[0].contains("MAX_CONNECTIONS"), "{p:?}");
    }

    #[test]
    fn unparsable_environment_value_names_the_variable() {
        let mut env = base_env();
        env.push(("PORT", "eighty"));
        match parse(&["control"], &env) {
            Err(ConfigError::Env { var, .. }) => assert_eq!(var, "PORT"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse(&["control", "--port", "eighty"], &base_env()),
            Err(ConfigError::Cli(_))
        ));
    }

    #[test]
    fn worker_needs_a_node_id_or_a_data_dir_to_keep_one() {
        let p = problems(parse(&["worker", "--port", "8081"], &base_env()));
        assert!(p.iter().any(|m| m.contains("--node-id / NODE_ID")), "{p:?}");
        let cli = parse(&["worker", "--data-dir", "/data"], &base_env()).expect("parse");
        let Role::Worker(w) = cli.role else {
            panic!("not a worker")
        };
        assert_eq!(w.node_id, None);
        assert_eq!(w.data_dir(), Path::new("/data"));
        assert_eq!(w.db_path(), Path::new("/data/store.duckdb"));
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let p = problems(parse(
            &[
                "control",
                "--node-id",
                "0",
                "--port",
                "0",
                "--partitions",
                "65537",
                "--replication-factor",
                "0",
                "--rate-limit-per-minute",
                "0",
                "--max-body-bytes",
                "0",
                "--worker-hosts",
                "a:1,,b c:2",
            ],
            &base_env(),
        ));
        let all = p.join("\n");
        for needle in [
            "NODE_ID must be nonzero",
            "--port / PORT must be",
            "PARTITIONS must be 1..=65536",
            "REPLICATION_FACTOR must be at least 1",
            "RATE_LIMIT_PER_MINUTE must be at least 1",
            "MAX_BODY_BYTES",
            "host #2 is empty",
            "host #3 must be",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        assert!(parse(&["control", "--partitions", "65536"], &base_env()).is_ok());
        let p = problems(parse(&["control", "--partitions", "0"], &base_env()));
        assert_eq!(p.len(), 1);
        let p = problems(parse(
            &["worker", "--id", "1", "--port", "65000"],
            &base_env(),
        ));
        assert!(p[0].contains("INTERNAL_PORT"), "{p:?}");
    }

    #[test]
    fn tokens_must_be_present_and_clean() {
        let env = [("CLUSTER_SECRET", SECRET)];
        let p = problems(parse(&["control"], &env));
        assert!(p[0].contains("no auth tokens configured"), "{p:?}");

        let env = [
            ("CLUSTER_SECRET", SECRET),
            ("AUTH_TOKENS", "good,,bad\ttoken"),
        ];
        let p = problems(parse(&["control"], &env));
        assert!(
            p.iter().any(|m| m.contains("token #2 must not be empty")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains("token #3 must be printable")),
            "{p:?}"
        );
        assert!(
            p.iter().all(|m| !m.contains("bad\ttoken")),
            "tokens never echoed"
        );

        // Whitespace around list items is trimmed.
        let env = [("CLUSTER_SECRET", SECRET), ("AUTH_TOKENS", " a1 , b2 ")];
        let cli = parse(&["control"], &env).expect("parse");
        assert_eq!(cli.role.http().tokens().collect::<Vec<_>>(), ["a1", "b2"]);
    }

    #[test]
    fn tokens_from_list_and_file_merge() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(
            file,
            "# operators\n\n  file-tok-1  \ntok-a\n# old: revoked\nfile-tok-2"
        )
        .expect("write");
        let path = file.path().to_str().expect("utf-8 path").to_string();
        let env = [
            ("CLUSTER_SECRET", SECRET),
            ("AUTH_TOKENS", "tok-a"),
            ("AUTH_TOKENS_FILE", path.as_str()),
        ];
        let cli = parse(&["worker", "--id", "1"], &env).expect("parse");
        assert_eq!(
            cli.role.http().tokens().collect::<Vec<_>>(),
            ["tok-a", "file-tok-1", "file-tok-2"]
        );
        // The file alone is enough; the flag wins over the variable.
        let cli = parse(
            &["worker", "--id", "1", "--auth-tokens-file", &path],
            &[("CLUSTER_SECRET", SECRET)],
        )
        .expect("parse");
        assert_eq!(cli.role.http().tokens().count(), 3);
        assert!(
            !format!("{cli:?}").contains("file-tok-1"),
            "Debug redacts tokens"
        );
    }

    #[test]
    fn bad_tokens_file_is_reported_by_line() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "ok-token\ntwo words").expect("write");
        let path = file.path().to_str().expect("utf-8 path").to_string();
        let env = [
            ("CLUSTER_SECRET", SECRET),
            ("AUTH_TOKENS_FILE", path.as_str()),
        ];
        let p = problems(parse(&["control"], &env));
        assert!(p.iter().any(|m| m.contains("line 2")), "{p:?}");
        assert!(p.iter().all(|m| !m.contains("two words")));

        let env = [
            ("CLUSTER_SECRET", SECRET),
            ("AUTH_TOKENS_FILE", "/nonexistent/raftmetrics-tokens"),
        ];
        let p = problems(parse(&["control"], &env));
        assert!(
            p.iter()
                .any(|m| m.contains("/nonexistent/raftmetrics-tokens")),
            "{p:?}"
        );
    }

    #[test]
    fn cluster_secret_is_required_and_strong_enough() {
        let env = [("AUTH_TOKENS", "tok")];
        let p = problems(parse(&["control"], &env));
        assert!(p[0].contains("CLUSTER_SECRET is required"), "{p:?}");
        let p = problems(parse(&["control", "--cluster-secret", "short"], &env));
        assert!(p[0].contains("at least 16 bytes"), "{p:?}");
        let cli = parse(&["control", "--cluster-secret", SECRET], &env).expect("parse");
        let Role::Control(c) = cli.role else {
            panic!("not control")
        };
        assert_eq!(c.node.cluster_secret().map(Secret::expose), Some(SECRET));
        assert!(
            !format!("{c:?}").contains(SECRET),
            "Debug redacts the secret"
        );
    }

    #[test]
    fn dev_defaults_and_checks() {
        let env = [("AUTH_TOKENS", "dev-token")];
        let cli = parse(&["dev"], &env).expect("parse");
        let Role::Dev(d) = cli.role else {
            panic!("not dev")
        };
        assert_eq!((d.workers, d.port, d.replication_factor()), (3, 8080, 3));
        assert_eq!(
            (d.worker_port(1), d.worker_port(3), d.worker_port(4)),
            (Some(8081), Some(8083), None)
        );
        assert_eq!(d.rate_limits(), (1000, 5000));
        assert_eq!(d.data_dir(), Path::new("data/dev"));

        let cli = parse(
            &[
                "dev",
                "--workers",
                "5",
                "--replication-factor",
                "3",
                "--data-dir",
                "/tmp/d",
                "--port",
                "7000",
            ],
            &env,
        )
        .expect("parse");
        let Role::Dev(d) = cli.role else {
            panic!("not dev")
        };
        assert_eq!((d.workers, d.replication_factor(), d.port), (5, 3, 7000));

        let p = problems(parse(
            &["dev", "--workers", "2", "--replication-factor", "3"],
            &env,
        ));
        assert!(p[0].contains("more than the 2 workers"), "{p:?}");
        let p = problems(parse(&["dev", "--workers", "0"], &env));
        assert!(p[0].contains("--workers must be"), "{p:?}");
    }

    #[test]
    fn help_is_a_cli_error_to_print() {
        match parse(&["--help"], &[("NODE_ROLE", "worker")]) {
            Err(ConfigError::Cli(e)) => assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn default_replication_factor_is_min_3_workers() {
        assert_eq!(
            [0, 1, 2, 3, 10].map(default_replication_factor),
            [1, 1, 2, 3, 3]
        );
    }

    #[test]
    fn control_peers_are_one_three_or_five_distinct_with_this_node_among_them() {
        let env = base_env();
        let cli = parse(
            &[
                "control",
                "--node-id=2",
                "--control-peers=c1:9080, c2:9080,c3:9080",
            ],
            &env,
        )
        .expect("parse");
        let Role::Control(c) = cli.role else {
            panic!("not a control node")
        };
        assert_eq!(
            c.peers(),
            vec![
                (1, "c1:9080".to_string()),
                (2, "c2:9080".to_string()),
                (3, "c3:9080".to_string())
            ]
        );
        for (args, needle) in [
            (vec!["control", "--control-peers=a:1,b:1"], "1, 3 or 5"),
            (
                vec!["control", "--node-id=4", "--control-peers=a:1,b:1,c:1"],
                "1..=3",
            ),
            (vec!["control", "--control-peers=a:1,a:1,c:1"], "twice"),
        ] {
            let err = parse(&args, &env).expect_err("refused").to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        let alone = parse(&["control"], &env).expect("parse");
        let Role::Control(c) = alone.role else {
            panic!("not a control node")
        };
        assert!(c.peers().is_empty());
    }

    #[test]
    fn dev_control_nodes_come_after_the_workers() {
        let cli = parse(&["dev", "--control-nodes=3"], &[]).expect("parse");
        let Role::Dev(d) = cli.role else {
            panic!("not dev")
        };
        assert_eq!(
            (1..=4).map(|j| d.control_port(j)).collect::<Vec<_>>(),
            vec![Some(8080), Some(8084), Some(8085), None]
        );
        assert_eq!(d.control_port(0), None);
        let err = parse(&["dev", "--control-nodes=2"], &[])
            .expect_err("refused")
            .to_string();
        assert!(err.contains("1, 3 or 5"), "{err}");
    }
}
