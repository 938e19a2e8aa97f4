//! A local cluster for a benchmark run: `raftmetrics-server dev` as a child process, in a
//! temporary data directory, on free ports, with a token of its own.
//!
//! The `dev` process starts the control node and the workers as processes of their own and
//! lists them (with their pids) in `<data dir>/nodes.json`. Dropping a [`LocalCluster`] stops
//! them all: SIGTERM to `dev` (which stops its nodes), then SIGKILL to whatever is left.
//!
//! A cluster started with a cluster secret can take more workers started by hand
//! ([`LocalCluster::start_worker`]), as an operator scales a cluster out.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use raftmetrics_client::{Client, Format};

use crate::error::{BenchError, Result};

/// How long a new cluster gets to report `healthy`.
const STARTUP_LIMIT: Duration = Duration::from_secs(120);
/// How long `dev` gets to stop its nodes after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Requests per minute per token: high enough that the rate limiter never shapes a run.
const RATE_LIMIT_PER_MINUTE: u32 = 100_000_000;
/// Lowest and highest base port tried.
const PORT_RANGE: (u16, u16) = (21_000, 29_000);
/// Base ports tried before giving up.
const PORT_ATTEMPTS: u16 = 200;
/// Lines of the cluster's log quoted in an error.
const LOG_TAIL_LINES: usize = 20;

/// What cluster to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub server_bin: PathBuf,
    pub workers: u16,
    pub replication_factor: u32,
    pub partitions: u32,
    /// The node-to-node secret, so that workers can be started by hand; `dev` draws one of
    /// its own when `None`.
    pub cluster_secret: Option<String>,
    /// Workers that may be started by hand later: their ports are checked free too.
    pub spare_workers: u16,
}

/// A running local cluster; stopped when dropped.
pub struct LocalCluster {
    dev: Child,
    dir: tempfile::TempDir,
    /// The control node's HTTP port; worker `i` listens on `port + i`, and every node's
    /// node-to-node port is its HTTP port + 1000.
    port: u16,
    cluster_secret: Option<String>,
    server_bin: PathBuf,
    pub url: String,
    pub token: String,
}

/// A worker started by hand with [`LocalCluster::start_worker`]; stopped when dropped
/// (SIGTERM, then SIGKILL after a grace period).
pub struct HandWorker {
    child: Child,
    pub id: u16,
    /// Its data directory.
    pub dir: PathBuf,
    log: PathBuf,
}

/// The server binary next to this executable (`target/release/raftmetrics-server` when both
/// were built by cargo).
pub fn default_server_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(BenchError::io("find this executable"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    Ok(dir.join("raftmetrics-server"))
}

/// A base port such that the control and worker HTTP ports and their node-to-node ports
/// (+1000) are all free now.
fn free_base_port(workers: u16) -> Result<u16> {
    let span = PORT_RANGE.1 - PORT_RANGE.0;
    let seed = (std::process::id() % u32::from(span)) as u16;
    for attempt in 0..PORT_ATTEMPTS {
        let base = PORT_RANGE.0 + (seed.wrapping_add(attempt.wrapping_mul(97))) % span;
        let free = (0..=workers)
            .flat_map(|i| [base + i, base + i + 1000])
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return Ok(base);
        }
    }
    Err(BenchError::Cluster(
        "no free ports for a local cluster".into(),
    ))
}

/// A random token (`bench_` + 32 hex digits) from the kernel's generator.
fn random_token() -> Result<String> {
    Ok(format!("bench_{}", random_hex()?))
}

/// A random cluster secret (`bench-secret-` + 32 hex digits), for
/// [`ClusterSpec::cluster_secret`].
pub fn random_secret() -> Result<String> {
    Ok(format!("bench-secret-{}", random_hex()?))
}

/// 16 random bytes from the kernel's generator, as 32 hex digits.
fn random_hex() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(BenchError::io("read /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl LocalCluster {
    /// Starts the cluster and waits until every partition has a live leader.
    pub async fn start(spec: ClusterSpec) -> Result<LocalCluster> {
        if !spec.server_bin.is_file() {
            return Err(BenchError::ServerBinary(spec.server_bin.clone()));
        }
        let dir = tempfile::Builder::new()
            .prefix("raftmetrics-bench-")
            .tempdir()
            .map_err(BenchError::io("create a temporary data directory"))?;
        let port = free_base_port(spec.workers + spec.spare_workers)?;
        let token = random_token()?;
        let log_path = dir.path().join("cluster.log");
        let log = File::create(&log_path).map_err(BenchError::io("create cluster.log"))?;
        let log_err = log
            .try_clone()
            .map_err(BenchError::io("open cluster.log"))?;
        let mut dev = Command::new(&spec.server_bin);
        if let Some(secret) = &spec.cluster_secret {
            dev.env("CLUSTER_SECRET", secret);
        }
        let dev = dev
            .arg("dev")
            .args(["--workers", &spec.workers.to_string()])
            .args(["--replication-factor", &spec.replication_factor.to_string()])
            .args(["--partitions", &spec.partitions.to_string()])
            .args(["--port", &port.to_string()])
            .args([
                "--rate-limit-per-minute",
                &RATE_LIMIT_PER_MINUTE.to_string(),
            ])
            .arg("--data-dir")
            .arg(dir.path().join("cluster"))
            .env("AUTH_TOKENS", &token)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(BenchError::io(format!(
                "start {}",
                spec.server_bin.display()
            )))?;
        let mut cluster = LocalCluster {
            dev,
            dir,
            port,
            cluster_secret: spec.cluster_secret.clone(),
            server_bin: spec.server_bin.clone(),
            url: format!("http://127.0.0.1:{port}"),
            token,
        };
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    /// A client of the control node.
    pub fn client(&self, format: Format) -> Result<Client> {
        Ok(Client::builder(&self.url)
            .token(&self.token)
            .format(format)
            .build()?)
    }

    /// Starts worker `id` by hand, as an operator scaling the cluster out would: its own
    /// ports (those `dev` would give worker `id`) and data directory, pointed at the control
    /// node with the cluster's secret and token. It registers on its own; the control node
    /// then moves replicas to it.
    pub fn start_worker(&self, id: u16) -> Result<HandWorker> {
        let Some(secret) = &self.cluster_secret else {
            return Err(BenchError::Config(
                "a worker can be started by hand only in a cluster started with a secret".into(),
            ));
        };
        let server_bin = &self.server_bin;
        let port = self.port + id;
        let dir = self.dir.path().join(format!("hand-worker-{id}"));
        std::fs::create_dir_all(&dir)
            .map_err(BenchError::io(format!("create {}", dir.display())))?;
        let log_path = self.dir.path().join(format!("hand-worker-{id}.log"));
        let log = File::create(&log_path).map_err(BenchError::io("create a worker log"))?;
        let log_err = log
            .try_clone()
            .map_err(BenchError::io("open a worker log"))?;
        let child = Command::new(server_bin)
            .arg("worker")
            .arg(format!("--node-id={id}"))
            .arg(format!("--port={port}"))
            .arg(format!("--internal-port={}", port + 1000))
            .arg(format!("--data-dir={}", dir.display()))
            .arg("--bind-host=127.0.0.1")
            .arg("--advertise-host=127.0.0.1")
            .arg(format!("--rate-limit-per-minute={RATE_LIMIT_PER_MINUTE}"))
            .env_clear()
            .env("CONTROL_HOST", format!("127.0.0.1:{}", self.port + 1000))
            .env("CLUSTER_SECRET", secret)
            .env("AUTH_TOKENS", &self.token)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(BenchError::io(format!("start {}", server_bin.display())))?;
        Ok(HandWorker {
            child,
            id,
            dir,
            log: log_path,
        })
    }

    fn nodes_path(&self) -> PathBuf {
        self.dir.path().join("cluster").join("nodes.json")
    }

    /// The pid of the `dev` process that started the nodes.
    pub fn dev_pid(&self) -> u32 {
        self.dev.id()
    }

    /// The pid of the control node (the first one, with several).
    pub fn control_pid(&self) -> Result<u32> {
        let path = self.nodes_path();
        let text = std::fs::read_to_string(&path)
            .map_err(BenchError::io(format!("read {}", path.display())))?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| BenchError::Cluster(format!("{} is not JSON: {e}", path.display())))?;
        doc["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["role"] == "control")
            .and_then(|n| n["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| BenchError::Cluster(format!("no control node in {}", path.display())))
    }

    /// The pids of every process of the cluster: `dev` and the nodes it started.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let mut pids = vec![self.dev.id()];
        pids.extend(nodes_json_pids(&self.nodes_path())?);
        Ok(pids)
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let client = Client::builder(&self.url)
            .token(&self.token)
            .format(Format::Json)
            .timeout(Duration::from_secs(2))
            .build()?;
        let started = Instant::now();
        let mut last = String::from("no answer");
        while started.elapsed() < STARTUP_LIMIT {
            if let Ok(Some(status)) = self.dev.try_wait() {
                return Err(BenchError::Cluster(format!(
                    "dev exited during startup ({status}); its log ends with:\n{}",
                    self.log_tail()
                )));
            }
            if self.nodes_path().exists() {
                match client.health().await {
                    Ok(h) if h.status == "healthy" => return Ok(()),
                    Ok(h) => last = format!("status {}", h.status),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(BenchError::Cluster(format!(
            "not healthy after {} s ({last}); its log ends with:\n{}",
            STARTUP_LIMIT.as_secs(),
            self.log_tail()
        )))
    }

    /// The last lines of the cluster's output.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("cluster.log"))
    }
}

impl HandWorker {
    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its output.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for HandWorker {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// The `pid` of every node listed in a dev cluster's `nodes.json`.
pub fn nodes_json_pids(path: &Path) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path)
        .map_err(BenchError::io(format!("read {}", path.display())))?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BenchError::Cluster(format!("{} is not JSON: {e}", path.display())))?;
    let nodes = doc["nodes"]
        .as_array()
        .ok_or_else(|| BenchError::Cluster(format!("{} has no nodes list", path.display())))?;
    nodes
        .iter()
        .map(|n| {
            n["pid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| BenchError::Cluster(format!("a node without a pid: {n}")))
        })
        .collect()
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let nodes = nodes_json_pids(&self.nodes_path()).unwrap_or_default();
        let _ = kill(Pid::from_raw(self.dev.id() as i32), Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = self.dev.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.dev.kill();
        let _ = self.dev.wait();
        for pid in nodes {
            // Already gone after a clean stop; this only catches nodes left behind.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}
