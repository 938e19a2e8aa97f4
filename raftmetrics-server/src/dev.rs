//! The `dev` role: a whole local cluster as child processes of this executable.
//!
//! [`run`] starts `--control-nodes` control nodes (1, 3 or 5) and `--workers` worker nodes
//! on 127.0.0.1, each a child process running `raftmetrics-server control …` /
//! `raftmetrics-server worker …` with its own data directory under the dev data directory
//! (`<DIR>/control`, `<DIR>/control-<j>`, `<DIR>/worker-<i>`):
//!
//! | node | HTTP port | node-to-node port |
//! | --- | --- | --- |
//! | control (id 1) | `--port` P | P + 1000 |
//! | worker i (1..=W) | P + i | P + i + 1000 |
//! | control-j (id j, 2..=C) | P + W + j - 1 | P + W + j - 1 + 1000 |
//!
//! With more than one control node, every control node gets `--control-peers` (the
//! node-to-node addresses of all of them, in id order: one metadata Raft group), and every
//! worker gets all of them in `--control-host`.
//!
//! Secrets reach the children through the environment (`AUTH_TOKENS`, `CLUSTER_SECRET`),
//! never their command line; every other configuration variable ([`ENV_VARS`],
//! `NODE_ROLE`) is removed from their environment so that a `NODE_ID` or `DB_PATH` meant
//! for the parent cannot leak into them. Without `--auth-tokens`, one random token is made
//! (`rm_` + 64 hex digits); without `--cluster-secret`, a random secret. The token is
//! written to `<DIR>/token` (mode 0600) and, when it was generated, printed once.
//!
//! The children's output is copied to this process's stdout/stderr line by line, each line
//! prefixed with the node's name (`[worker-2] …`) and cut at [`MAX_LINE_BYTES`].
//! Once every node accepts TCP connections on its HTTP port and a control node (any of them:
//! the metadata leader need not be control node 1) answers `GET /ready` with 200 (the
//! partitions are placed and every one has a leader that answers, [`crate::ready`]),
//! `<DIR>/nodes.json` lists the nodes (role, id, pid, ports) for scripts and a banner shows
//! the URLs. A node that exits
//! while the cluster runs is reported and not restarted (stopping nodes on purpose to watch
//! the cluster cope is the point); Ctrl-C or SIGTERM sends SIGTERM to every live node,
//! waits up to [`STOP_GRACE`], then kills the rest.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{DevArgs, ENV_VARS, INTERNAL_PORT_OFFSET, NODE_ROLE_VAR, Secret};
use crate::identity;

/// How long [`run`] waits for every node to accept connections on its HTTP port, and then
/// again for the cluster to be ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often [`wait_ready`] asks the control nodes whether the cluster is ready.
const READY_POLL: Duration = Duration::from_millis(100);
/// How long nodes get to stop after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest line of a node's output that is copied; the rest of the line is dropped.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Host every dev node binds to and advertises.
const HOST: &str = "127.0.0.1";
/// Prefix of generated auth tokens.
const TOKEN_PREFIX: &str = "rm_";
/// Random bytes in a generated token or cluster secret.
const RANDOM_BYTES: usize = 32;
/// Longest `AUTH_TOKENS` value handed to a node (Linux caps one variable at 128 KiB).
const MAX_TOKENS_ENV_BYTES: usize = 64 * 1024;
/// Lines of node output buffered per stream before the copiers wait.
const OUTPUT_QUEUE: usize = 1024;
/// How often running nodes are checked for exits.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(250);

/// Why the dev cluster could not run.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The path of this executable is unknown.
    #[error("cannot find this executable to start the nodes: {0}")]
    CurrentExe(#[source] io::Error),
    /// The options do not make a cluster (e.g. ports past 65535).
    #[error("{0}")]
    Plan(String),
    /// A port a node needs is taken.
    #[error(
        "port {port} of {node} is already in use (is another dev cluster running?); \
         pick another --port"
    )]
    PortInUse { node: String, port: u16 },
    /// The auth tokens cannot be handed to the nodes.
    #[error("{0}")]
    Tokens(String),
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A node process could not be started.
    #[error("cannot start {node}: {source}")]
    Spawn {
        node: String,
        #[source]
        source: io::Error,
    },
    /// A node exited before it accepted connections.
    #[error("{node} (pid {pid}) exited during startup: {status}")]
    EarlyExit {
        node: String,
        pid: u32,
        status: ExitStatus,
    },
    /// Some nodes did not accept connections in time.
    #[error("{} did not accept connections within {} s", .nodes.join(", "), .timeout.as_secs())]
    StartupTimeout {
        nodes: Vec<String>,
        timeout: Duration,
    },
    /// The nodes run, but no control node answered `GET /ready` with 200 in time.
    #[error("the cluster was not ready within {} s: {last}", .timeout.as_secs())]
    NotReady { last: String, timeout: Duration },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> DevError {
    let what = what.into();
    move |source| DevError::Io { what, source }
}

/// The role of a dev node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Control,
    Worker,
}

impl NodeKind {
    /// `control` or `worker`: the subcommand and the `role` of `nodes.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Control => "control",
            NodeKind::Worker => "worker",
        }
    }
}

/// One node to start: what [`plan`] decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildSpec {
    pub kind: NodeKind,
    pub id: u64,
    pub http_port: u16,
    pub internal_port: u16,
    pub data_dir: PathBuf,
    /// The executable (this one).
    pub program: PathBuf,
    /// The arguments after the program, starting with the subcommand.
    pub args: Vec<OsString>,
}

impl ChildSpec {
    /// `control` (control node 1), `control-<id>` (the other control nodes) or
    /// `worker-<id>`: the prefix of its output lines and its data directory.
    pub fn name(&self) -> String {
        node_name(self.kind, self.id)
    }

    /// The node's public URL.
    pub fn url(&self) -> String {
        format!("http://{HOST}:{}", self.http_port)
    }
}

/// The name of node `kind`/`id` (see [`ChildSpec::name`]). Control node 1 keeps the plain
/// `control`, so a dev directory made with one control node still works.
fn node_name(kind: NodeKind, id: u64) -> String {
    match (kind, id) {
        (NodeKind::Control, 1) => "control".to_string(),
        (NodeKind::Control, id) => format!("control-{id}"),
        (NodeKind::Worker, id) => format!("worker-{id}"),
    }
}

/// The nodes of the cluster `args` describes, the control nodes first (in id order), then
/// the workers: ports, data directories and command lines. Fails when a port would pass
/// 65535 or two nodes would share a port.
pub fn plan(args: &DevArgs, exe: &Path) -> Result<Vec<ChildSpec>, DevError> {
    if args.workers == 0 {
        return Err(DevError::Plan("--workers must be at least 1".into()));
    }
    if args.control_nodes == 0 {
        return Err(DevError::Plan("--control-nodes must be at least 1".into()));
    }
    let dir = args.data_dir();
    let (control_limit, worker_limit) = args.rate_limits();
    let http = &args.http;
    let common = |limit: u32| -> Vec<String> {
        vec![
            format!("--bind-host={HOST}"),
            format!("--advertise-host={HOST}"),
            format!("--rate-limit-per-minute={limit}"),
            format!("--max-body-bytes={}", http.max_body_bytes),
            format!("--request-timeout-ms={}", http.request_timeout_ms),
            format!("--header-read-timeout-ms={}", http.header_read_timeout_ms),
            format!("--idle-timeout-ms={}", http.idle_timeout_ms),
            format!("--max-connections={}", http.max_connections),
        ]
    };

    // The control nodes' ports first: each one's command line lists all of them.
    let mut controls: Vec<(u16, u16, u16)> = Vec::with_capacity(usize::from(args.control_nodes));
    for j in 1..=args.control_nodes {
        let name = node_name(NodeKind::Control, u64::from(j));
        let port = args.control_port(j).ok_or_else(|| {
            DevError::Plan(format!(
                "the HTTP port of {name} would be past 65535; pick a lower --port"
            ))
        })?;
        let internal = offset_port(port, INTERNAL_PORT_OFFSET, &name, "internal")?;
        controls.push((j, port, internal));
    }
    let control_addrs = controls
        .iter()
        .map(|&(_, _, internal)| format!("{HOST}:{internal}"))
        .collect::<Vec<_>>()
        .join(",");

    let mut specs = Vec::with_capacity(controls.len() + usize::from(args.workers));
    for &(j, port, internal) in &controls {
        let id = u64::from(j);
        let data_dir = dir.join(node_name(NodeKind::Control, id));
        let mut control_args: Vec<OsString> = vec![
            "control".into(),
            format!("--node-id={id}").into(),
            format!("--port={port}").into(),
            format!("--internal-port={internal}").into(),
            path_arg("--data-dir", &data_dir),
        ];
        if controls.len() > 1 {
            control_args.push(format!("--control-peers={control_addrs}").into());
        }
        control_args.extend([
            format!("--partitions={}", args.partitions).into(),
            format!("--replication-factor={}", args.replication_factor()).into(),
            format!("--min-workers={}", args.workers).into(),
            format!("--dead-worker-timeout={}", args.moves.dead_worker_timeout).into(),
            format!("--max-moves={}", args.moves.max_moves).into(),
            format!("--max-moves-per-worker={}", args.moves.max_moves_per_worker).into(),
        ]);
        control_args.extend(common(control_limit).into_iter().map(OsString::from));
        specs.push(ChildSpec {
            kind: NodeKind::Control,
            id,
            http_port: port,
            internal_port: internal,
            data_dir,
            program: exe.to_path_buf(),
            args: control_args,
        });
    }

    for i in 1..=args.workers {
        let name = format!("worker-{i}");
        let port = offset_port(args.port, i, &name, "HTTP")?;
        let internal = offset_port(port, INTERNAL_PORT_OFFSET, &name, "internal")?;
        let data_dir = dir.join(&name);
        let mut worker_args: Vec<OsString> = vec![
            "worker".into(),
            format!("--node-id={i}").into(),
            format!("--port={port}").into(),
            format!("--internal-port={internal}").into(),
            path_arg("--data-dir", &data_dir),
            format!("--control-host={control_addrs}").into(),
        ];
        worker_args.extend(common(worker_limit).into_iter().map(OsString::from));
        specs.push(ChildSpec {
            kind: NodeKind::Worker,
            id: u64::from(i),
            http_port: port,
            internal_port: internal,
            data_dir,
            program: exe.to_path_buf(),
            args: worker_args,
        });
    }

    let mut seen = HashSet::new();
    for spec in &specs {
        for port in [spec.http_port, spec.internal_port] {
            if !seen.insert(port) {
                return Err(DevError::Plan(format!(
                    "port {port} of {} is used by another node; use fewer workers",
                    spec.name()
                )));
            }
        }
    }
    Ok(specs)
}

fn offset_port(base: u16, offset: u16, node: &str, which: &str) -> Result<u16, DevError> {
    base.checked_add(offset).ok_or_else(|| {
        DevError::Plan(format!(
            "the {which} port of {node} would be {base} + {offset}, past 65535; pick a lower --port"
        ))
    })
}

fn path_arg(flag: &str, path: &Path) -> OsString {
    let mut arg = OsString::from(format!("{flag}="));
    arg.push(path.as_os_str());
    arg
}

/// The secrets handed to every node.
#[derive(Clone, Debug)]
pub struct Secrets {
    /// Accepted bearer tokens; the first is the one written to `<DIR>/token`.
    pub tokens: Vec<Secret>,
    /// Whether the token was generated here (and so must be shown to the user).
    pub generated_token: bool,
    pub cluster_secret: Secret,
}

impl Secrets {
    /// The configured tokens and secret, generating what is missing with `random` (which
    /// returns fresh random bytes).
    pub fn new(
        args: &DevArgs,
        mut random: impl FnMut() -> io::Result<[u8; RANDOM_BYTES]>,
    ) -> Result<Self, DevError> {
        let random_hex = |random: &mut dyn FnMut() -> io::Result<[u8; RANDOM_BYTES]>| {
            random()
                .map(|bytes| hex(&bytes))
                .map_err(io_error("cannot read random bytes from /dev/urandom"))
        };
        let (tokens, generated_token) = if args.http.auth_tokens.is_empty() {
            let token = format!("{TOKEN_PREFIX}{}", random_hex(&mut random)?);
            (vec![Secret::from(token)], true)
        } else {
            (args.http.auth_tokens.clone(), false)
        };
        let cluster_secret = match &args.cluster_secret {
            Some(s) => s.clone(),
            None => Secret::from(random_hex(&mut random)?),
        };
        let secrets = Secrets {
            tokens,
            generated_token,
            cluster_secret,
        };
        secrets.tokens_env()?;
        Ok(secrets)
    }

    /// The value of `AUTH_TOKENS` for the nodes: the tokens joined by `,`.
    fn tokens_env(&self) -> Result<String, DevError> {
        if self.tokens.iter().any(|t| t.expose().contains(',')) {
            return Err(DevError::Tokens(
                "an auth token contains ',': dev hands tokens to its nodes as the \
                 comma-separated AUTH_TOKENS"
                    .into(),
            ));
        }
        let joined = self
            .tokens
            .iter()
            .map(Secret::expose)
            .collect::<Vec<_>>()
            .join(",");
        if joined.len() > MAX_TOKENS_ENV_BYTES {
            return Err(DevError::Tokens(format!(
                "the auth tokens take more than {MAX_TOKENS_ENV_BYTES} bytes; dev hands them \
                 to its nodes in one environment variable"
            )));
        }
        Ok(joined)
    }

    /// The token users should send.
    pub fn primary_token(&self) -> &Secret {
        &self.tokens[0]
    }
}

/// Hex digits of `bytes`.
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Fresh random bytes from the kernel.
fn urandom() -> io::Result<[u8; RANDOM_BYTES]> {
    let mut bytes = [0u8; RANDOM_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Environment variables removed from every node's environment: the configuration ones and
/// `NODE_ROLE` (the node's configuration comes from its command line and the secrets below).
pub fn removed_env_vars() -> impl Iterator<Item = &'static str> {
    ENV_VARS
        .iter()
        .map(|&(var, _)| var)
        .chain(std::iter::once(NODE_ROLE_VAR))
}

/// The command that starts `spec`: its environment cleaned, the secrets in `AUTH_TOKENS`
/// and `CLUSTER_SECRET`, stdin closed, stdout and stderr piped.
fn command(spec: &ChildSpec, secrets: &Secrets) -> Result<Command, DevError> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args);
    for var in removed_env_vars() {
        cmd.env_remove(var);
    }
    cmd.env("AUTH_TOKENS", secrets.tokens_env()?)
        .env("CLUSTER_SECRET", secrets.cluster_secret.expose())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok(cmd)
}

/// One entry of `nodes.json`.
#[derive(Debug, Serialize)]
struct NodeEntry {
    role: NodeKind,
    id: u64,
    pid: u32,
    http_port: u16,
    internal_port: u16,
    url: String,
    data_dir: String,
}

/// `nodes.json`.
#[derive(Debug, Serialize)]
struct NodesFile {
    /// Control node 1's URL.
    url: String,
    /// Every control node's URL, in id order.
    control_urls: Vec<String>,
    partitions: u32,
    replication_factor: u32,
    token_file: String,
    nodes: Vec<NodeEntry>,
}

/// The pretty-printed `nodes.json` of the started `nodes` (spec and pid). It holds no
/// secret: the token is in `token_file`.
pub fn nodes_json(args: &DevArgs, token_file: &Path, nodes: &[(&ChildSpec, u32)]) -> String {
    let file = NodesFile {
        url: format!("http://{HOST}:{}", args.port),
        control_urls: nodes
            .iter()
            .filter(|(spec, _)| spec.kind == NodeKind::Control)
            .map(|(spec, _)| spec.url())
            .collect(),
        partitions: args.partitions,
        replication_factor: args.replication_factor(),
        token_file: token_file.display().to_string(),
        nodes: nodes
            .iter()
            .map(|&(spec, pid)| NodeEntry {
                role: spec.kind,
                id: spec.id,
                pid,
                http_port: spec.http_port,
                internal_port: spec.internal_port,
                url: spec.url(),
                data_dir: spec.data_dir.display().to_string(),
            })
            .collect(),
    };
    let mut json = serde_json::to_string_pretty(&file).unwrap_or_else(|_| "{}".to_string());
    json.push('\n');
    json
}

/// Writes `contents` to `path` atomically (see [`identity::write_atomic`]).
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), DevError> {
    identity::write_atomic(path, contents, mode)
        .map_err(io_error(format!("cannot write {}", path.display())))
}

/// The banner printed once the cluster is ready.
fn banner(
    args: &DevArgs,
    specs: &[&ChildSpec],
    secrets: &Secrets,
    nodes_file: &Path,
    token_file: &Path,
) -> String {
    let mut s = String::new();
    let controls = specs
        .iter()
        .filter(|spec| spec.kind == NodeKind::Control)
        .count();
    let _ = writeln!(
        s,
        "\nRaftMetrics dev cluster is up: {controls} control node{}, {} worker(s), {} \
         partitions, replication factor {}",
        if controls == 1 { "" } else { "s" },
        args.workers,
        args.partitions,
        args.replication_factor()
    );
    for spec in specs {
        let _ = writeln!(s, "  {:<10} {}", spec.name(), spec.url());
    }
    let _ = writeln!(s, "  nodes:     {}", nodes_file.display());
    let _ = writeln!(s, "  token:     {}", token_file.display());
    if secrets.generated_token {
        let _ = writeln!(
            s,
            "\n  export RAFTMETRICS_TOKEN={}",
            secrets.primary_token().expose()
        );
    } else {
        let _ = writeln!(
            s,
            "\n  export RAFTMETRICS_TOKEN=$(cat {})",
            token_file.display()
        );
    }
    let _ = writeln!(
        s,
        "\nStop a node to watch the cluster cope; Ctrl-C stops the cluster."
    );
    s
}

/// Copies `reader` to `out` line by line, each line prefixed with `prefix` and cut at
/// [`MAX_LINE_BYTES`]. Keeps reading (and drops lines) when `out` is closed, so the node
/// never blocks on a full pipe.
async fn copy_lines<R: AsyncRead + Unpin>(
    reader: R,
    prefix: &str,
    out: &mpsc::Sender<Vec<u8>>,
) -> io::Result<()> {
    let mut reader = BufReader::new(reader);
    let mut line: Vec<u8> = Vec::new();
    let mut truncated = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            if !line.is_empty() || truncated {
                emit_line(prefix, &line, truncated, out).await;
            }
            return Ok(());
        }
        let (chunk, consumed, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        if chunk.len() > room {
            line.extend_from_slice(&chunk[..room]);
            truncated = true;
        } else {
            line.extend_from_slice(chunk);
        }
        reader.consume(consumed);
        if end {
            emit_line(prefix, &line, truncated, out).await;
            line.clear();
            truncated = false;
        }
    }
}

async fn emit_line(prefix: &str, line: &[u8], truncated: bool, out: &mpsc::Sender<Vec<u8>>) {
    let mut full = Vec::with_capacity(prefix.len() + line.len() + 16);
    full.extend_from_slice(prefix.as_bytes());
    full.extend_from_slice(line);
    if truncated {
        full.extend_from_slice(" [line truncated]".as_bytes());
    }
    full.push(b'\n');
    // A closed output only means nobody reads any more; keep draining the node.
    let _ = out.send(full).await;
}

fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut writer: W,
    mut lines: mpsc::Receiver<Vec<u8>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            if writer.write_all(&line).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
    })
}

/// The nodes' output: one writer task per stream, one copier task per node stream.
struct Output {
    stdout: mpsc::Sender<Vec<u8>>,
    stderr: mpsc::Sender<Vec<u8>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Output {
    fn start() -> Self {
        let (stdout, out_rx) = mpsc::channel(OUTPUT_QUEUE);
        let (stderr, err_rx) = mpsc::channel(OUTPUT_QUEUE);
        Output {
            stdout,
            stderr,
            tasks: vec![
                spawn_writer(tokio::io::stdout(), out_rx),
                spawn_writer(tokio::io::stderr(), err_rx),
            ],
        }
    }

    /// Starts copying `child`'s piped stdout and stderr.
    fn attach(&mut self, name: &str, child: &mut Child) {
        let prefix = format!("[{name}] ");
        if let Some(pipe) = child.stdout.take() {
            let (prefix, out) = (prefix.clone(), self.stdout.clone());
            self.tasks.push(tokio::spawn(async move {
                let _ = copy_lines(pipe, &prefix, &out).await;
            }));
        }
        if let Some(pipe) = child.stderr.take() {
            let out = self.stderr.clone();
            self.tasks.push(tokio::spawn(async move {
                let _ = copy_lines(pipe, &prefix, &out).await;
            }));
        }
    }

    /// Lets the copiers drain what the (stopped) nodes wrote, for at most `timeout`.
    async fn finish(self, timeout: Duration) {
        let Output {
            stdout,
            stderr,
            tasks,
        } = self;
        drop((stdout, stderr));
        let deadline = Instant::now() + timeout;
        for task in tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                break;
            }
        }
    }
}

/// A started node.
struct Node {
    spec: ChildSpec,
    pid: u32,
    child: Child,
    /// Set once the process has exited and been reaped.
    exited: Option<ExitStatus>,
}

impl Node {
    fn spawn(spec: ChildSpec, secrets: &Secrets, output: &mut Output) -> Result<Node, DevError> {
        let name = spec.name();
        let spawn_error = |source| DevError::Spawn {
            node: name.clone(),
            source,
        };
        let mut child = command(&spec, secrets)?.spawn().map_err(spawn_error)?;
        let pid = child
            .id()
            .ok_or_else(|| spawn_error(io::Error::other("no pid")))?;
        output.attach(&name, &mut child);
        tracing::debug!(node = %name, pid, "started");
        Ok(Node {
            spec,
            pid,
            child,
            exited: None,
        })
    }

    fn is_live(&self) -> bool {
        self.exited.is_none()
    }

    /// Reaps the process if it has exited; returns the status the first time.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                Some(status)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(node = %self.spec.name(), pid = self.pid, error = %e, "cannot check node");
                None
            }
        }
    }

    /// Sends `signal` to the process if it is still ours (not yet reaped, so its pid cannot
    /// have been reused).
    fn signal(&self, signal: Signal) {
        if !self.is_live() {
            return;
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return;
        };
        if let Err(e) = kill(Pid::from_raw(pid), signal) {
            tracing::debug!(node = %self.spec.name(), pid, error = %e, "cannot signal node");
        }
    }
}

/// SIGINT and SIGTERM.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> Result<Self, DevError> {
        let what = "cannot install the SIGINT/SIGTERM handlers";
        Ok(StopSignals {
            int: signal(SignalKind::interrupt()).map_err(io_error(what))?,
            term: signal(SignalKind::terminate()).map_err(io_error(what))?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Fails when a port of the plan is taken, before any node starts.
fn check_ports_free(specs: &[ChildSpec]) -> Result<(), DevError> {
    for spec in specs {
        for port in [spec.http_port, spec.internal_port] {
            if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                return Err(DevError::PortInUse {
                    node: spec.name(),
                    port,
                });
            }
        }
    }
    Ok(())
}

/// The first node that exited, as an error.
fn exited(nodes: &mut [Node]) -> Option<DevError> {
    nodes.iter_mut().find_map(|node| {
        node.poll_exit().map(|status| DevError::EarlyExit {
            node: node.spec.name(),
            pid: node.pid,
            status,
        })
    })
}

/// Waits until a control node of `nodes` (any of them) answers `GET /ready` with 200 to
/// `token`. Fails when a node exits first, or when `timeout` passes.
async fn wait_ready(nodes: &mut [Node], token: &str, timeout: Duration) -> Result<(), DevError> {
    let deadline = Instant::now() + timeout;
    let ports: Vec<(String, u16)> = nodes
        .iter()
        .filter(|n| n.spec.kind == NodeKind::Control)
        .map(|n| (n.spec.name(), n.spec.http_port))
        .collect();
    loop {
        if let Some(e) = exited(nodes) {
            return Err(e);
        }
        let token = token.to_string();
        let ports = ports.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let mut why = Vec::new();
            for (name, port) in &ports {
                match crate::healthcheck::check_path(*port, "/ready", Some(&token)) {
                    Ok(()) => return Ok(()),
                    Err(e) if ports.len() == 1 => why.push(e),
                    Err(e) => why.push(format!("{name}: {e}")),
                }
            }
            if why.is_empty() {
                why.push("no control node".to_string());
            }
            Err(why.join("; "))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let last = match answer {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(DevError::NotReady { last, timeout });
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// Waits until every node accepts a TCP connection on its HTTP port. Fails when a node
/// exits first, or when `timeout` passes.
async fn wait_listening(nodes: &mut [Node], timeout: Duration) -> Result<(), DevError> {
    let deadline = Instant::now() + timeout;
    let mut ready = vec![false; nodes.len()];
    loop {
        for (node, ready) in nodes.iter_mut().zip(ready.iter_mut()) {
            if let Some(status) = node.poll_exit() {
                return Err(DevError::EarlyExit {
                    node: node.spec.name(),
                    pid: node.pid,
                    status,
                });
            }
            if !*ready {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, node.spec.http_port));
                let connect = tokio::net::TcpStream::connect(addr);
                *ready = matches!(
                    tokio::time::timeout(Duration::from_millis(500), connect).await,
                    Ok(Ok(_))
                );
            }
        }
        if ready.iter().all(|&r| r) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DevError::StartupTimeout {
                nodes: nodes
                    .iter()
                    .zip(&ready)
                    .filter(|(_, r)| !**r)
                    .map(|(n, _)| n.spec.name())
                    .collect(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reports nodes that exit while the cluster runs, until a stop signal arrives.
async fn supervise(nodes: &mut [Node], signals: &mut StopSignals) -> &'static str {
    let mut tick = tokio::time::interval(SUPERVISE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut all_gone_reported = false;
    loop {
        tokio::select! {
            sig = signals.recv() => return sig,
            _ = tick.tick() => {}
        }
        for node in nodes.iter_mut() {
            if let Some(status) = node.poll_exit() {
                tracing::warn!(
                    role = node.spec.kind.as_str(),
                    id = node.spec.id,
                    pid = node.pid,
                    %status,
                    "{} exited ({status}); it is not restarted, the cluster goes on without it",
                    node.spec.name()
                );
            }
        }
        if !all_gone_reported && nodes.iter().all(|n| !n.is_live()) {
            all_gone_reported = true;
            tracing::warn!("every node has exited; Ctrl-C to leave");
        }
    }
}

/// Stops every live node: SIGTERM, up to `grace` to exit, then SIGKILL.
async fn shutdown(nodes: &mut [Node], grace: Duration) {
    for node in nodes.iter() {
        node.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        for node in nodes.iter_mut() {
            if let Some(status) = node.poll_exit() {
                tracing::info!(node = %node.spec.name(), pid = node.pid, %status, "node stopped");
            }
        }
        if nodes.iter().all(|n| !n.is_live()) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in nodes.iter_mut().filter(|n| n.is_live()) {
        tracing::warn!(
            node = %node.spec.name(),
            pid = node.pid,
            "did not stop within {} s; killing it",
            grace.as_secs()
        );
        let _ = node.child.start_kill();
        match node.child.wait().await {
            Ok(status) => node.exited = Some(status),
            Err(e) => tracing::warn!(node = %node.spec.name(), error = %e, "cannot reap node"),
        }
    }
}

/// Creates the data directory and the nodes' directories.
fn prepare_dirs(dir: &Path, specs: &[ChildSpec]) -> Result<(), DevError> {
    for d in std::iter::once(dir).chain(specs.iter().map(|s| s.data_dir.as_path())) {
        std::fs::create_dir_all(d).map_err(io_error(format!(
            "cannot create the directory {}",
            d.display()
        )))?;
    }
    Ok(())
}

/// Runs the dev cluster until SIGINT or SIGTERM; see the module documentation.
pub async fn run(args: DevArgs) -> Result<(), DevError> {
    let exe = std::env::current_exe().map_err(DevError::CurrentExe)?;
    let dir = args.data_dir();
    std::fs::create_dir_all(&dir).map_err(io_error(format!(
        "cannot create the directory {}",
        dir.display()
    )))?;
    let dir = std::fs::canonicalize(&dir).map_err(io_error(format!(
        "cannot resolve the directory {}",
        dir.display()
    )))?;
    let args = DevArgs {
        data_dir: Some(dir.clone()),
        ..args
    };
    let specs = plan(&args, &exe)?;
    let secrets = Secrets::new(&args, urandom)?;
    prepare_dirs(&dir, &specs)?;
    check_ports_free(&specs)?;

    let token_file = dir.join("token");
    let mut token = secrets.primary_token().expose().as_bytes().to_vec();
    token.push(b'\n');
    write_atomic(&token_file, &token, 0o600)?;

    let mut signals = StopSignals::new()?;
    let mut output = Output::start();
    let mut nodes: Vec<Node> = Vec::with_capacity(specs.len());
    let result = start(
        &args,
        specs,
        &secrets,
        &mut nodes,
        &mut output,
        &mut signals,
    )
    .await;
    let stop_reason = match result {
        Ok(Started::Up { nodes_file }) => {
            let specs: Vec<&ChildSpec> = nodes.iter().map(|n| &n.spec).collect();
            print!(
                "{}",
                banner(&args, &specs, &secrets, &nodes_file, &token_file)
            );
            let _ = io::stdout().flush();
            let urls = |kind: NodeKind| {
                specs
                    .iter()
                    .filter(|s| s.kind == kind)
                    .map(|s| s.url())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            tracing::info!(
                url = %format!("http://{HOST}:{}", args.port),
                controls = %urls(NodeKind::Control),
                workers = %urls(NodeKind::Worker),
                nodes_file = %nodes_file.display(),
                token_file = %token_file.display(),
                "dev cluster is up"
            );
            Ok(supervise(&mut nodes, &mut signals).await)
        }
        Ok(Started::Interrupted(sig)) => Ok(sig),
        Err(e) => Err(e),
    };
    match &stop_reason {
        Ok(sig) => tracing::info!("{sig}: stopping the dev cluster"),
        Err(e) => tracing::error!(error = %e, "dev cluster failed to start; stopping it"),
    }
    shutdown(&mut nodes, STOP_GRACE).await;
    output.finish(Duration::from_secs(2)).await;
    stop_reason.map(|_| ())
}

/// How [`start`] ended.
enum Started {
    /// Every node is up; `nodes.json` is at this path.
    Up { nodes_file: PathBuf },
    /// A stop signal arrived first.
    Interrupted(&'static str),
}

/// Spawns the nodes into `nodes`, waits until the cluster is ready, then writes
/// `nodes.json`.
async fn start(
    args: &DevArgs,
    specs: Vec<ChildSpec>,
    secrets: &Secrets,
    nodes: &mut Vec<Node>,
    output: &mut Output,
    signals: &mut StopSignals,
) -> Result<Started, DevError> {
    for spec in specs {
        nodes.push(Node::spawn(spec, secrets, output)?);
    }
    let token = secrets.primary_token().expose().to_string();
    let up = async {
        wait_listening(nodes, STARTUP_TIMEOUT).await?;
        wait_ready(nodes, &token, STARTUP_TIMEOUT).await
    };
    tokio::select! {
        ready = up => ready?,
        sig = signals.recv() => return Ok(Started::Interrupted(sig)),
    }
    let dir = args.data_dir();
    let nodes_file = dir.join("nodes.json");
    let entries: Vec<(&ChildSpec, u32)> = nodes.iter().map(|n| (&n.spec, n.pid)).collect();
    let json = nodes_json(args, &dir.join("token"), &entries);
    write_atomic(&nodes_file, json.as_bytes(), 0o644)?;
    Ok(Started::Up { nodes_file })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Role, parse_from_env_and_args};
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn dev_args(extra: &[&str], env: &[(&str, &str)]) -> DevArgs {
        let mut argv = vec!["raftmetrics-server", "dev"];
        argv.extend_from_slice(extra);
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cli: Cli =
            parse_from_env_and_args(argv, &|k: &str| env.get(k).cloned()).expect("dev args");
        match cli.role {
            Role::Dev(d) => d,
            other => panic!("not dev: {other:?}"),
        }
    }

    fn default_args() -> DevArgs {
        dev_args(
            &["--data-dir", "/tmp/rm-dev", "--workers", "3"],
            &[("AUTH_TOKENS", "tok-1")],
        )
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_str().expect("utf-8").to_string())
            .collect()
    }

    #[test]
    fn plan_assigns_ports_dirs_and_command_lines() {
        let args = default_args();
        let exe = Path::new("/bin/raftmetrics-server");
        let specs = plan(&args, exe).expect("plan");
        assert_eq!(specs.len(), 4);
        let summary: Vec<(String, u64, u16, u16)> = specs
            .iter()
            .map(|s| (s.name(), s.id, s.http_port, s.internal_port))
            .collect();
        assert_eq!(
            summary,
            [
                ("control".to_string(), 1, 8080, 9080),
                ("worker-1".to_string(), 1, 8081, 9081),
                ("worker-2".to_string(), 2, 8082, 9082),
                ("worker-3".to_string(), 3, 8083, 9083),
            ]
        );
        assert!(specs.iter().all(|s| s.program == exe));
        assert_eq!(specs[2].data_dir, Path::new("/tmp/rm-dev/worker-2"));

        assert_eq!(
            strings(&specs[0].args),
            [
                "control",
                "--node-id=1",
                "--port=8080",
                "--internal-port=9080",
                "--data-dir=/tmp/rm-dev/control",
                "--partitions=16",
                "--replication-factor=3",
                "--min-workers=3",
                "--dead-worker-timeout=5m",
                "--max-moves=2",
                "--max-moves-per-worker=1",
                "--bind-host=127.0.0.1",
                "--advertise-host=127.0.0.1",
                "--rate-limit-per-minute=1000",
                "--max-body-bytes=67108864",
                "--request-timeout-ms=30000",
                "--header-read-timeout-ms=10000",
                "--idle-timeout-ms=60000",
                "--max-connections=1024",
            ]
        );
        assert_eq!(
            strings(&specs[2].args),
            [
                "worker",
                "--node-id=2",
                "--port=8082",
                "--internal-port=9082",
                "--data-dir=/tmp/rm-dev/worker-2",
                "--control-host=127.0.0.1:9080",
                "--bind-host=127.0.0.1",
                "--advertise-host=127.0.0.1",
                "--rate-limit-per-minute=5000",
                "--max-body-bytes=67108864",
                "--request-timeout-ms=30000",
                "--header-read-timeout-ms=10000",
                "--idle-timeout-ms=60000",
                "--max-connections=1024",
            ]
        );
        let all = specs
            .iter()
            .flat_map(|s| strings(&s.args))
            .collect::<Vec<_>>();
        assert!(
            !all.iter().any(|a| a.contains("tok-1")),
            "no secret in argv"
        );
    }

    /// The role each planned command line parses as (with the secrets in the environment,
    /// as the nodes get them).
    fn parse_planned(spec: &ChildSpec) -> Role {
        let env = [
            ("AUTH_TOKENS", "tok"),
            ("CLUSTER_SECRET", "0123456789abcdef0"),
        ];
        let env = |k: &str| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        };
        let mut argv = vec![OsString::from("raftmetrics-server")];
        argv.extend(spec.args.iter().cloned());
        parse_from_env_and_args(argv, &env)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", spec.name()))
            .role
    }

    #[test]
    fn planned_command_lines_parse_as_their_roles() {
        for controls in ["1", "3", "5"] {
            let args = dev_args(
                &["--data-dir", "/tmp/rm-dev", "--control-nodes", controls],
                &[("AUTH_TOKENS", "tok-1")],
            );
            for spec in plan(&args, Path::new("/x")).expect("plan") {
                let role = parse_planned(&spec);
                assert_eq!(role.name(), spec.kind.as_str());
                match role {
                    Role::Control(c) => {
                        assert_eq!(c.node_id, spec.id);
                        assert_eq!(c.port, spec.http_port);
                        assert_eq!(c.internal_port(), spec.internal_port);
                        assert_eq!(c.data_dir(), spec.data_dir);
                    }
                    Role::Worker(w) => {
                        assert_eq!(w.node_id, Some(spec.id));
                        assert_eq!(w.port, spec.http_port);
                        assert_eq!(w.internal_port(), spec.internal_port);
                        assert_eq!(w.data_dir(), spec.data_dir);
                    }
                    other => panic!("{} parses as {}", spec.name(), other.name()),
                }
            }
        }
    }

    #[test]
    fn three_control_nodes_form_one_group_and_every_worker_knows_them() {
        let args = dev_args(
            &[
                "--data-dir",
                "/tmp/rm-dev",
                "--workers",
                "3",
                "--control-nodes",
                "3",
            ],
            &[("AUTH_TOKENS", "tok-1")],
        );
        let specs = plan(&args, Path::new("/x")).expect("plan");
        let summary: Vec<(String, NodeKind, u64, u16, u16)> = specs
            .iter()
            .map(|s| (s.name(), s.kind, s.id, s.http_port, s.internal_port))
            .collect();
        let node = |name: &str, kind: NodeKind, id: u64, http: u16, internal: u16| {
            (name.to_string(), kind, id, http, internal)
        };
        assert_eq!(
            summary,
            [
                node("control", NodeKind::Control, 1, 8080, 9080),
                node("control-2", NodeKind::Control, 2, 8084, 9084),
                node("control-3", NodeKind::Control, 3, 8085, 9085),
                node("worker-1", NodeKind::Worker, 1, 8081, 9081),
                node("worker-2", NodeKind::Worker, 2, 8082, 9082),
                node("worker-3", NodeKind::Worker, 3, 8083, 9083),
            ]
        );
        for spec in &specs {
            assert_eq!(spec.data_dir, Path::new("/tmp/rm-dev").join(spec.name()));
        }
        let peers = ["127.0.0.1:9080", "127.0.0.1:9084", "127.0.0.1:9085"];
        let expected_peers: Vec<(u64, String)> =
            (1u64..).zip(peers.iter().map(|p| p.to_string())).collect();
        for spec in &specs {
            let argv = strings(&spec.args);
            match parse_planned(spec) {
                Role::Control(c) => {
                    assert_eq!(c.node_id, spec.id);
                    assert_eq!(c.control_peers, peers, "{}", spec.name());
                    assert_eq!(c.peers(), expected_peers, "{}", spec.name());
                    assert_eq!(c.min_workers(), 3);
                    assert!(argv.contains(&format!("--control-peers={}", peers.join(","))));
                }
                Role::Worker(w) => {
                    assert_eq!(w.control_host, peers, "{}", spec.name());
                    assert!(argv.contains(&format!("--control-host={}", peers.join(","))));
                }
                other => panic!("{} parses as {}", spec.name(), other.name()),
            }
        }

        // One control node: no peers list, the worker knows the one control node.
        let specs = plan(&default_args(), Path::new("/x")).expect("plan");
        assert!(
            !specs
                .iter()
                .flat_map(|s| strings(&s.args))
                .any(|a| a.starts_with("--control-peers"))
        );
        let Role::Worker(w) = parse_planned(&specs[1]) else {
            panic!("not a worker")
        };
        assert_eq!(w.control_host, ["127.0.0.1:9080"]);
    }

    #[test]
    fn plan_fails_cleanly_on_port_overflow() {
        let mut args = default_args();
        args.port = 64_600;
        let err = plan(&args, Path::new("/x")).expect_err("overflow");
        assert!(err.to_string().contains("control"), "{err}");
        assert!(err.to_string().contains("65535"), "{err}");

        // Control fits; worker-2's internal port (64_536 + 1000) does not.
        args.port = 64_534;
        let err = plan(&args, Path::new("/x")).expect_err("overflow");
        assert!(matches!(err, DevError::Plan(_)));
        assert!(err.to_string().contains("worker-2"), "{err}");

        // Three control nodes: control-3 comes after the workers, its internal port last.
        args.control_nodes = 3;
        args.port = 64_531;
        let err = plan(&args, Path::new("/x")).expect_err("overflow");
        assert!(err.to_string().contains("control-3"), "{err}");
        args.control_nodes = 1;

        args.port = 8080;
        args.workers = 0;
        assert!(plan(&args, Path::new("/x")).is_err());
        // 1000 workers would put worker 1000's HTTP port on control's internal port.
        args.workers = 1000;
        args.port = 1024;
        let err = plan(&args, Path::new("/x")).expect_err("collision");
        assert!(err.to_string().contains("another node"), "{err}");
    }

    #[test]
    fn nodes_get_a_clean_environment_with_the_secrets() {
        let args = dev_args(
            &["--cluster-secret", "0123456789abcdef-secret"],
            &[("AUTH_TOKENS", "tok-a,tok-b")],
        );
        let secrets = Secrets::new(&args, || panic!("nothing to generate")).expect("secrets");
        assert!(!secrets.generated_token);
        let spec = &plan(&args, Path::new("/x")).expect("plan")[1];
        let cmd = command(spec, &secrets).expect("command");
        let envs: HashMap<String, Option<String>> = cmd
            .as_std()
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        for var in [
            "NODE_ID",
            "DB_PATH",
            "PORT",
            "DATA_DIR",
            "NODE_ROLE",
            "AUTH_TOKENS_FILE",
        ] {
            assert_eq!(envs.get(var), Some(&None), "{var} must be removed");
        }
        assert_eq!(
            envs.get("AUTH_TOKENS"),
            Some(&Some("tok-a,tok-b".to_string()))
        );
        assert_eq!(
            envs.get("CLUSTER_SECRET"),
            Some(&Some("0123456789abcdef-secret".to_string()))
        );
        assert!(!envs.contains_key("RUST_LOG"), "RUST_LOG is inherited");
        assert_eq!(removed_env_vars().count(), ENV_VARS.len() + 1);
    }

    #[test]
    fn missing_secrets_are_generated() {
        let mut args = default_args();
        args.http.auth_tokens.clear();
        args.cluster_secret = None;
        let mut calls = 0u8;
        let secrets = Secrets::new(&args, || {
            calls += 1;
            Ok([calls; RANDOM_BYTES])
        })
        .expect("secrets");
        assert!(secrets.generated_token);
        assert_eq!(
            secrets.primary_token().expose(),
            format!("rm_{}", "01".repeat(RANDOM_BYTES))
        );
        assert_eq!(secrets.cluster_secret.expose(), "02".repeat(RANDOM_BYTES));

        // Real randomness: well-formed and different every time.
        let a = Secrets::new(&args, urandom).expect("secrets");
        let b = Secrets::new(&args, urandom).expect("secrets");
        let token = a.primary_token().expose();
        assert_eq!(token.len(), 3 + 2 * RANDOM_BYTES);
        assert!(token[3..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(crate::http::auth::check_token(token).is_ok());
        assert_ne!(a.primary_token(), b.primary_token());
        assert_ne!(a.cluster_secret, b.cluster_secret);

        args.http.auth_tokens = vec![Secret::from("has,comma".to_string())];
        assert!(matches!(
            Secrets::new(&args, urandom),
            Err(DevError::Tokens(_))
        ));
    }

    #[test]
    fn nodes_json_lists_the_nodes_without_secrets() {
        let args = default_args();
        let specs = plan(&args, Path::new("/x")).expect("plan");
        let entries: Vec<(&ChildSpec, u32)> = specs.iter().zip(100u32..).collect();
        let text = nodes_json(&args, Path::new("/tmp/rm-dev/token"), &entries);
        assert!(!text.contains("tok-1"));
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["url"], "http://127.0.0.1:8080");
        assert_eq!(v["partitions"], 16);
        assert_eq!(v["replication_factor"], 3);
        assert_eq!(v["token_file"], "/tmp/rm-dev/token");
        let nodes = v["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0]["role"], "control");
        assert_eq!(nodes[0]["id"], 1);
        assert_eq!(nodes[0]["pid"], 100);
        assert_eq!(nodes[0]["http_port"], 8080);
        assert_eq!(nodes[0]["internal_port"], 9080);
        assert_eq!(nodes[3]["role"], "worker");
        assert_eq!(nodes[3]["id"], 3);
        assert_eq!(nodes[3]["http_port"], 8083);
        assert_eq!(nodes[3]["url"], "http://127.0.0.1:8083");
        assert_eq!(
            v["control_urls"],
            serde_json::json!(["http://127.0.0.1:8080"])
        );

        // Three control nodes: each listed with its id and ports, ids per role.
        let args = dev_args(
            &["--data-dir", "/tmp/rm-dev", "--control-nodes", "3"],
            &[("AUTH_TOKENS", "tok-1")],
        );
        let specs = plan(&args, Path::new("/x")).expect("plan");
        let entries: Vec<(&ChildSpec, u32)> = specs.iter().zip(100u32..).collect();
        let text = nodes_json(&args, Path::new("/tmp/rm-dev/token"), &entries);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["url"], "http://127.0.0.1:8080");
        assert_eq!(
            v["control_urls"],
            serde_json::json!([
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8084",
                "http://127.0.0.1:8085"
            ])
        );
        let nodes = v["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 6);
        let listed: Vec<(&str, u64, u64, u64, u64)> = nodes
            .iter()
            .map(|n| {
                (
                    n["role"].as_str().expect("role"),
                    n["id"].as_u64().expect("id"),
                    n["pid"].as_u64().expect("pid"),
                    n["http_port"].as_u64().expect("port"),
                    n["internal_port"].as_u64().expect("internal port"),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("control", 1, 100, 8080, 9080),
                ("control", 2, 101, 8084, 9084),
                ("control", 3, 102, 8085, 9085),
                ("worker", 1, 103, 8081, 9081),
                ("worker", 2, 104, 8082, 9082),
                ("worker", 3, 105, 8083, 9083),
            ]
        );
        assert_eq!(nodes[2]["data_dir"], "/tmp/rm-dev/control-3");
    }

    #[test]
    fn files_are_written_atomically_with_their_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = dir.path().join("token");
        std::fs::write(&token, "old").expect("write");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomic(&token, b"rm_secret\n", 0o600).expect("write");
        assert_eq!(
            std::fs::read_to_string(&token).expect("read"),
            "rm_secret\n"
        );
        let mode = std::fs::metadata(&token)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("token.tmp").exists());
    }

    #[test]
    fn banner_shows_urls_and_only_a_generated_token() {
        let mut args = default_args();
        let specs = plan(&args, Path::new("/x")).expect("plan");
        let refs: Vec<&ChildSpec> = specs.iter().collect();
        let given = Secrets::new(&args, urandom).expect("secrets");
        let text = banner(
            &args,
            &refs,
            &given,
            Path::new("/d/nodes.json"),
            Path::new("/d/token"),
        );
        assert!(text.contains("http://127.0.0.1:8080"));
        assert!(text.contains("worker-3"));
        assert!(text.contains("http://127.0.0.1:8083"));
        assert!(text.contains("/d/nodes.json"));
        assert!(!text.contains("tok-1"));
        assert!(text.contains("export RAFTMETRICS_TOKEN=$(cat /d/token)"));

        args.http.auth_tokens.clear();
        let generated = Secrets::new(&args, urandom).expect("secrets");
        let text = banner(
            &args,
            &refs,
            &generated,
            Path::new("/d/nodes.json"),
            Path::new("/d/token"),
        );
        assert!(text.contains(&format!(
            "export RAFTMETRICS_TOKEN={}",
            generated.primary_token().expose()
        )));
        assert!(text.contains("1 control node, 3 worker(s)"), "{text}");

        // Every control node's URL.
        args.control_nodes = 3;
        let specs = plan(&args, Path::new("/x")).expect("plan");
        let refs: Vec<&ChildSpec> = specs.iter().collect();
        let text = banner(
            &args,
            &refs,
            &generated,
            Path::new("/d/nodes.json"),
            Path::new("/d/token"),
        );
        assert!(text.contains("3 control nodes, 3 worker(s)"), "{text}");
        for (name, url) in [
            ("control ", "http://127.0.0.1:8080"),
            ("control-2", "http://127.0.0.1:8084"),
            ("control-3", "http://127.0.0.1:8085"),
        ] {
            assert!(
                text.lines().any(|l| l.contains(name) && l.contains(url)),
                "{name} {url}: {text}"
            );
        }
    }

    #[tokio::test]
    async fn output_lines_are_prefixed_and_bounded() {
        let long = "x".repeat(MAX_LINE_BYTES + 100);
        let input = format!("hello\n\n{long}\ntail without newline");
        let (tx, mut rx) = mpsc::channel(16);
        copy_lines(input.as_bytes(), "[worker-2] ", &tx)
            .await
            .expect("copy");
        drop(tx);
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(String::from_utf8(line).expect("utf-8"));
        }
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "[worker-2] hello\n");
        assert_eq!(lines[1], "[worker-2] \n");
        assert_eq!(
            lines[2],
            format!(
                "[worker-2] {} [line truncated]\n",
                "x".repeat(MAX_LINE_BYTES)
            )
        );
        assert_eq!(lines[3], "[worker-2] tail without newline\n");

        // A closed output does not stop the draining.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        copy_lines("a\nb\nc\n".as_bytes(), "", &tx)
            .await
            .expect("copy");
    }

    fn sh_node(id: u64, script: &str, output: &mut Output) -> Node {
        sh_node_as(NodeKind::Worker, id, script, output)
    }

    fn sh_node_as(kind: NodeKind, id: u64, script: &str, output: &mut Output) -> Node {
        let spec = ChildSpec {
            kind,
            id,
            http_port: 1,
            internal_port: 2,
            data_dir: PathBuf::from("/nonexistent"),
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
        };
        let secrets = Secrets {
            tokens: vec![Secret::from("t".to_string())],
            generated_token: false,
            cluster_secret: Secret::from("s".repeat(16)),
        };
        Node::spawn(spec, &secrets, output).expect("spawn sh")
    }

    #[tokio::test]
    async fn shutdown_terminates_then_kills() {
        let mut output = Output::start();
        let mut nodes = vec![
            sh_node(1, "exec sleep 30", &mut output),
            // Ignores SIGTERM: must be killed after the grace period.
            sh_node(2, "trap '' TERM; while true; do sleep 1; done", &mut output),
            sh_node(3, "exit 3", &mut output),
        ];
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        shutdown(&mut nodes, Duration::from_millis(700)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(nodes.iter().all(|n| !n.is_live()));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(nodes[0].exited.and_then(|s| s.signal()), Some(15));
        assert_eq!(nodes[1].exited.and_then(|s| s.signal()), Some(9));
        assert_eq!(nodes[2].exited.and_then(|s| s.code()), Some(3));
        output.finish(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_node_exiting_during_startup_is_named() {
        let mut output = Output::start();
        let mut nodes = vec![sh_node(7, "exit 2", &mut output)];
        let err = wait_listening(&mut nodes, Duration::from_secs(5))
            .await
            .expect_err("early exit");
        assert!(
            matches!(&err, DevError::EarlyExit { node, .. } if node == "worker-7"),
            "{err}"
        );
        output.finish(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn startup_waits_for_the_http_port() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut output = Output::start();
        let mut node = sh_node(1, "exec sleep 30", &mut output);
        node.spec.http_port = port;
        let mut nodes = vec![node];
        wait_listening(&mut nodes, Duration::from_secs(5))
            .await
            .expect("ready");
        drop(listener);
        // A port nobody listens on times out, naming the node.
        let free = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        nodes[0].spec.http_port = free;
        let err = wait_listening(&mut nodes, Duration::from_millis(300))
            .await
            .expect_err("timeout");
        assert!(err.to_string().contains("worker-1"), "{err}");
        shutdown(&mut nodes, Duration::from_secs(2)).await;
        output.finish(Duration::from_secs(1)).await;
    }

    /// A server on `listener` answering `GET /ready` with 503 to the first `not_ready`
    /// requests and 200 after; counts the requests that carried `token`.
    fn serve_ready(
        listener: std::net::TcpListener,
        not_ready: usize,
        token: &'static str,
    ) -> std::thread::JoinHandle<usize> {
        std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let mut with_token = 0;
            for i in 0.. {
                let Ok((mut s, _)) = listener.accept() else {
                    break;
                };
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                assert!(request.starts_with("GET /ready "), "{request}");
                if request.contains(&format!("Authorization: Bearer {token}\r\n")) {
                    with_token += 1;
                }
                let reply = if i < not_ready {
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                };
                let _ = s.write_all(reply.as_bytes());
                if i >= not_ready {
                    break;
                }
            }
            with_token
        })
    }

    #[tokio::test]
    async fn startup_waits_for_the_control_node_to_be_ready() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = serve_ready(listener, 3, "tok-ready");
        let mut output = Output::start();
        let mut node = sh_node_as(NodeKind::Control, 1, "exec sleep 30", &mut output);
        node.spec.http_port = port;
        let mut nodes = vec![node];
        wait_ready(&mut nodes, "tok-ready", Duration::from_secs(10))
            .await
            .expect("ready after three 503s");
        assert_eq!(
            server.join().expect("server"),
            4,
            "every request had the token"
        );

        // Never ready: the error says so with the last answer.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        nodes[0].spec.http_port = listener.local_addr().expect("addr").port();
        let _server = serve_ready(listener, usize::MAX, "tok-ready");
        let err = wait_ready(&mut nodes, "tok-ready", Duration::from_millis(500))
            .await
            .expect_err("not ready");
        assert!(
            matches!(&err, DevError::NotReady { last, .. } if last.contains("503")),
            "{err}"
        );
        shutdown(&mut nodes, Duration::from_secs(2)).await;
        output.finish(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn startup_takes_ready_from_any_control_node() {
        // Control node 1 never ready, control node 2 ready after one 503; the worker's port
        // is not asked.
        let never = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let never_port = never.local_addr().expect("addr").port();
        let _never = serve_ready(never, usize::MAX, "tok-any");
        let ready = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let ready_port = ready.local_addr().expect("addr").port();
        let server = serve_ready(ready, 1, "tok-any");
        let unasked = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let unasked_port = unasked.local_addr().expect("addr").port();

        let mut output = Output::start();
        let mut c1 = sh_node_as(NodeKind::Control, 1, "exec sleep 30", &mut output);
        c1.spec.http_port = never_port;
        let mut c2 = sh_node_as(NodeKind::Control, 2, "exec sleep 30", &mut output);
        c2.spec.http_port = ready_port;
        let mut w1 = sh_node(1, "exec sleep 30", &mut output);
        w1.spec.http_port = unasked_port;
        let mut nodes = vec![c1, c2, w1];
        wait_ready(&mut nodes, "tok-any", Duration::from_secs(10))
            .await
            .expect("ready through control-2");
        assert_eq!(server.join().expect("server"), 2);
        unasked.set_nonblocking(true).expect("nonblocking");
        assert!(unasked.accept().is_err(), "the worker was asked for /ready");

        // None ready: the last answers of both are named.
        drop(nodes.remove(1));
        let gone = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut c3 = sh_node_as(NodeKind::Control, 3, "exec sleep 30", &mut output);
        c3.spec.http_port = gone;
        nodes.insert(1, c3);
        let err = wait_ready(&mut nodes, "tok-any", Duration::from_millis(500))
            .await
            .expect_err("not ready");
        assert!(
            matches!(&err, DevError::NotReady { last, .. }
                if last.contains("control: ") && last.contains("503")
                    && last.contains("control-3: cannot connect")),
            "{err}"
        );
        shutdown(&mut nodes, Duration::from_secs(2)).await;
        output.finish(Duration::from_secs(1)).await;
    }
}
