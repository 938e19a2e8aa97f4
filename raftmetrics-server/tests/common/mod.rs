//! A real local cluster for integration tests: `raftmetrics-server dev` as a child process,
//! which starts the control node(s) and the workers as processes of their own on loopback.

#![allow(dead_code)]

pub mod batches;
pub mod netns;
pub mod probes;
pub mod prometheus;

use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub const TOKEN: &str = "test-token-alpha-0001";
pub const TOKEN_B: &str = "test-token-bravo-0002";
pub const TOKEN_C: &str = "test-token-charlie-0003";

/// A node as `nodes.json` lists it.
#[derive(Clone, Debug)]
pub struct Node {
    pub role: String,
    pub id: u64,
    pub pid: i32,
    pub http_port: u16,
}

/// The JSON body of a response (`Null` when it is not JSON).
pub async fn json_of(resp: reqwest::Response) -> Value {
    let bytes = resp.bytes().await.expect("body");
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// How a node was started, read from `/proc` by [`DevCluster::kill_node`]: what starting it
/// again takes.
#[derive(Clone, Debug)]
pub struct NodeLaunch {
    pub role: String,
    pub id: u64,
    pub http_port: u16,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

pub struct DevCluster {
    pub dir: tempfile::TempDir,
    /// HTTP port of control node 1 (worker i is on `port + i`).
    pub port: u16,
    pub workers: u16,
    /// Control nodes (1, 3 or 5): control node j > 1 is on `port + workers + j - 1`.
    pub controls: u16,
    /// The `dev` process; `None` for a cluster made by [`DevCluster::attach`].
    dev: Option<Child>,
    /// The address the HTTP ports are reached at: loopback for `dev`.
    host: IpAddr,
    pub http: reqwest::Client,
    /// Nodes started again by [`DevCluster::restart`] (not children of `dev`): role, id.
    restarted: std::sync::Mutex<Vec<(String, u64, Child)>>,
}

/// A base port such that the control and worker HTTP ports and their node-to-node ports
/// (+1000) are all free, for one control node.
pub fn free_base(workers: u16) -> u16 {
    free_base_for(workers, 1)
}

/// A base port such that the HTTP ports of `dev --workers workers --control-nodes controls`
/// (control node 1 on the base, worker i on base + i, control node j > 1 on
/// base + workers + j - 1) and their node-to-node ports (+1000) are all free.
pub fn free_base_for(workers: u16, controls: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 200) as u16;
    let last = workers + controls.max(1) - 1;
    loop {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = 20_000 + ((seed + k * 37) % 400) * 40;
        let ports = (0..=last).flat_map(|i| [base + i, base + i + 1000]);
        let free = ports
            .clone()
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
}

impl DevCluster {
    /// Starts `dev` with `workers` workers and waits until every partition has a leader.
    pub async fn start(workers: u16, rf: u32, partitions: u32, extra: &[&str]) -> DevCluster {
        Self::start_ha(1, workers, rf, partitions, extra).await
    }

    /// Starts `dev` with `controls` control nodes (1, 3 or 5: one metadata group) and
    /// `workers` workers, and waits until every partition has a leader.
    pub async fn start_ha(
        controls: u16,
        workers: u16,
        rf: u32,
        partitions: u32,
        extra: &[&str],
    ) -> DevCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_base_for(workers, controls);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftmetrics-server"));
        cmd.arg("dev");
        if controls != 1 {
            cmd.args(["--control-nodes", &controls.to_string()]);
        }
        cmd.args([
            "--workers",
            &workers.to_string(),
            "--replication-factor",
            &rf.to_string(),
            "--partitions",
            &partitions.to_string(),
            "--port",
            &port.to_string(),
            "--data-dir",
        ])
        .arg(dir.path().join("cluster"))
        .args(extra)
        .env("AUTH_TOKENS", format!("{TOKEN},{TOKEN_B},{TOKEN_C}"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        let dev = cmd.spawn().expect("spawn raftmetrics-server dev");
        let cluster = DevCluster {
            dir,
            port,
            workers,
            controls,
            dev: Some(dev),
            host: Ipv4Addr::LOCALHOST.into(),
            restarted: std::sync::Mutex::new(Vec::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        };
        cluster.wait_healthy(Duration::from_secs(120)).await;
        cluster
    }

    /// A client of a cluster started by other means, whose control node's HTTP API is at
    /// `host:port`: [`DevCluster::url`], the requests, [`DevCluster::leader_of`],
    /// [`DevCluster::wait_partitions_led`] and the writer and set checker of [`batches`]
    /// work on it; it owns no process and stops nothing when dropped. The helpers that read
    /// `nodes.json` (nodes, signals, restarts) and [`DevCluster::worker_url`] (which assumes
    /// `dev`'s ports) do not apply.
    pub fn attach(host: IpAddr, port: u16, workers: u16) -> DevCluster {
        DevCluster {
            dir: tempfile::tempdir().expect("temp dir"),
            port,
            workers,
            controls: 1,
            dev: None,
            host,
            restarted: std::sync::Mutex::new(Vec::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .no_proxy()
                .build()
                .expect("http client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.port)
    }

    pub fn worker_url(&self, id: u16, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.port + id)
    }

    /// HTTP port of control node `j` (1-based), as `dev` assigns them: the base port for
    /// the first, after the workers' ports for the others.
    pub fn control_port(&self, j: u16) -> u16 {
        assert!(
            (1..=self.controls).contains(&j),
            "control node {j} of {}",
            self.controls
        );
        if j == 1 {
            self.port
        } else {
            self.port + self.workers + j - 1
        }
    }

    /// `path` on control node `j`.
    pub fn control_url(&self, j: u16, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.control_port(j))
    }

    /// The base URL (`http://host:port`) of every control node, in id order.
    pub fn control_urls(&self) -> Vec<String> {
        (1..=self.controls)
            .map(|j| self.control_url(j, ""))
            .collect()
    }

    pub fn nodes_path(&self) -> PathBuf {
        self.dir.path().join("cluster").join("nodes.json")
    }

    pub fn nodes(&self) -> Vec<Node> {
        let text = std::fs::read_to_string(self.nodes_path()).expect("nodes.json");
        let doc: Value = serde_json::from_str(&text).expect("nodes.json is JSON");
        doc["nodes"]
            .as_array()
            .expect("nodes array")
            .iter()
            .map(|n| Node {
                role: n["role"].as_str().unwrap().to_string(),
                id: n["id"].as_u64().unwrap(),
                pid: n["pid"].as_i64().unwrap() as i32,
                http_port: n["http_port"].as_u64().unwrap() as u16,
            })
            .collect()
    }

    /// The node `role`/`id` as `nodes.json` lists it, with the pid of its latest start.
    pub fn node(&self, role: &str, id: u64) -> Node {
        let mut node = self
            .nodes()
            .into_iter()
            .find(|n| n.role == role && n.id == id)
            .unwrap_or_else(|| panic!("{role} {id} in nodes.json"));
        let restarted = self.restarted.lock().unwrap();
        if let Some((_, _, child)) = restarted
            .iter()
            .rev()
            .find(|(r, i, _)| r == role && *i == id)
        {
            node.pid = child.id() as i32;
        }
        node
    }

    /// Sends `signal` to the node `role`/`id`.
    pub fn signal(&self, role: &str, id: u64, signal: Signal) {
        let node = self.node(role, id);
        kill(Pid::from_raw(node.pid), signal).expect("signal a node");
    }

    /// Sends SIGKILL to worker `id`.
    pub fn kill_worker(&self, id: u64) {
        self.signal("worker", id, Signal::SIGKILL);
    }

    /// Kills the node `role`/`id` with SIGKILL and, `down` later, starts it again as its
    /// supervisor would: the same program, command line and environment (read from `/proc`),
    /// the same data directory. Waits until it listens on its HTTP port again.
    pub async fn restart(&self, role: &str, id: u64, down: Duration) {
        let launch = self.kill_node(role, id).await;
        tokio::time::sleep(down).await;
        self.relaunch(&launch, None).await;
    }

    /// The data directory `dev` gave the node `role`/`id`: `<dev dir>/control` (control
    /// node 1), `<dev dir>/control-<id>` (the other control nodes) or
    /// `<dev dir>/worker-<id>`.
    pub fn data_dir(&self, role: &str, id: u64) -> PathBuf {
        let cluster = self.dir.path().join("cluster");
        match (role, id) {
            ("control", 1) => cluster.join("control"),
            _ => cluster.join(format!("{role}-{id}")),
        }
    }

    /// Reads how the node `role`/`id` was started (program, command line and environment,
    /// from `/proc`), kills it with SIGKILL and waits until it is gone. The answer starts it
    /// again ([`DevCluster::relaunch`]), once the test has done what it wanted to its files.
    pub async fn kill_node(&self, role: &str, id: u64) -> NodeLaunch {
        let node = self.node(role, id);
        let read = |what: &str| {
            std::fs::read(format!("/proc/{}/{what}", node.pid)).expect("read /proc of the node")
        };
        let split = |bytes: Vec<u8>| -> Vec<String> {
            bytes
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let launch = NodeLaunch {
            role: role.to_string(),
            id,
            http_port: node.http_port,
            argv: split(read("cmdline")),
            env: split(read("environ"))
                .iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        kill(Pid::from_raw(node.pid), Signal::SIGKILL).expect("kill -9 the node");
        let gone = Instant::now();
        // Gone, or a zombie its parent has not reaped yet: either way its files are closed.
        while std::fs::read_to_string(format!("/proc/{}/stat", node.pid))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(
                gone.elapsed() < Duration::from_secs(10),
                "the node survived SIGKILL"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        launch
    }

    /// Starts a node stopped by [`DevCluster::kill_node`] again, as its supervisor would,
    /// with its standard error appended to `stderr` (inherited when `None`). Waits until it
    /// listens on its HTTP port; panics, with what it wrote, if it exits first.
    pub async fn relaunch(&self, launch: &NodeLaunch, stderr: Option<&Path>) {
        let child = self.spawn_launch(launch, stderr);
        let pid = child.id();
        self.restarted
            .lock()
            .unwrap()
            .push((launch.role.clone(), launch.id, child));
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", launch.http_port)).is_err() {
            let exited = self
                .restarted
                .lock()
                .unwrap()
                .iter_mut()
                .find(|(_, _, c)| c.id() == pid)
                .and_then(|(_, _, c)| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let said = stderr
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default();
                panic!(
                    "{} {} exited during startup ({status}): {said}",
                    launch.role, launch.id
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} {} does not listen again",
                launch.role,
                launch.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a node stopped by [`DevCluster::kill_node`] again, expecting it to stop on its
    /// own: waits up to `limit` for it to exit and returns its exit status, with its
    /// standard error written to `stderr`. `None` (and the node killed) when it still runs
    /// after `limit`.
    pub async fn relaunch_to_exit(
        &self,
        launch: &NodeLaunch,
        stderr: &Path,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.spawn_launch(launch, Some(stderr));
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for the node") {
                return Some(status);
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How the node `role`/`id` last started by [`DevCluster::relaunch`] (or
    /// [`DevCluster::restart`]) exited; `None` while it runs.
    pub fn exited(&self, role: &str, id: u64) -> Option<std::process::ExitStatus> {
        let mut restarted = self.restarted.lock().unwrap();
        let (_, _, child) = restarted
            .iter_mut()
            .rev()
            .find(|(r, i, _)| r == role && *i == id)?;
        child.try_wait().ok().flatten()
    }

    fn spawn_launch(&self, launch: &NodeLaunch, stderr: Option<&Path>) -> Child {
        let err = match stderr {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("open the node's stderr file"),
            ),
            None => Stdio::inherit(),
        };
        Command::new(&launch.argv[0])
            .args(&launch.argv[1..])
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start the node again")
    }

    /// Waits until the control node knows a live leader for each of `partitions`.
    pub async fn wait_partitions_led(&self, partitions: u32) {
        let start = Instant::now();
        loop {
            let (s, body) = self.get_json(&self.url("/health")).await;
            if s == 200 && body["partitions_available"] == partitions {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "partitions without a leader: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// POSTs `points` in bincode to `url` with `token`, asking for a bincode answer.
    pub async fn post_bincode(
        &self,
        url: &str,
        token: &str,
        points: &[raftmetrics_core::Point],
        timeout: Duration,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .header("accept", "application/octet-stream")
            .timeout(timeout)
            .body(raftmetrics_core::codec::encode(&points).expect("encode"))
            .send()
            .await
    }

    /// The worker that leads the partition of `key` (the one that acknowledges a write to it).
    pub async fn leader_of(&self, key: &str) -> u64 {
        let probe = [raftmetrics_core::Point::new("probe", 1.0).partition_key(key)];
        let resp = self
            .post_bincode(&self.url("/insert"), TOKEN, &probe, Duration::from_secs(30))
            .await
            .expect("probe insert");
        assert_eq!(resp.status(), 200);
        let ack: raftmetrics_core::api::InsertResponse =
            raftmetrics_core::codec::decode(&resp.bytes().await.unwrap()).unwrap();
        ack.worker_node
            .expect("acknowledging worker")
            .trim_start_matches("worker-")
            .parse()
            .expect("worker id")
    }

    /// The control node's Prometheus text (`GET /metrics`).
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text")
    }

    /// `method` `url` with the test token, an empty body and `timeout`: the status and the
    /// JSON body (`Null` when it is not JSON), or why no answer came.
    pub async fn try_request(
        &self,
        method: reqwest::Method,
        url: &str,
        timeout: Duration,
    ) -> Result<(u16, Value), String> {
        let resp = self
            .http
            .request(method, url)
            .bearer_auth(TOKEN)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok((resp.status().as_u16(), json_of(resp).await))
    }

    /// The JSON body of a 200 answer to `GET url` within `timeout`; `None` otherwise.
    pub async fn get_ok(&self, url: &str, timeout: Duration) -> Option<Value> {
        match self.try_request(reqwest::Method::GET, url, timeout).await {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    pub async fn get_json(&self, url: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        (resp.status().as_u16(), json_of(resp).await)
    }

    pub async fn post_json(&self, url: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap())
            .send()
            .await
            .expect("request");
        (resp.status().as_u16(), json_of(resp).await)
    }

    /// The control node (1-based) whose replica of the metadata group is its leader, by
    /// their `GET /health` (`raft_status.role`); `None` when none says so (an election, or
    /// the leader unreachable).
    pub async fn metadata_leader(&self) -> Option<u16> {
        for j in 1..=self.controls {
            let health = self
                .get_ok(&self.control_url(j, "/health"), Duration::from_secs(2))
                .await;
            if health.is_some_and(|h| h["raft_status"]["role"] == "leader") {
                return Some(j);
            }
        }
        None
    }

    /// Waits until `dev` has written `nodes.json` (a control node answered `/ready`) and
    /// control node 1 reports a healthy cluster.
    async fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        let mut last = Value::Null;
        while start.elapsed() < limit {
            if self.nodes_path().exists()
                && let Ok(resp) = self
                    .http
                    .get(self.url("/health"))
                    .bearer_auth(TOKEN)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                && let Ok(bytes) = resp.bytes().await
                && let Ok(body) = serde_json::from_slice::<Value>(&bytes)
            {
                if body["status"] == "healthy" {
                    return;
                }
                last = body;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("cluster not healthy after {limit:?}; last health: {last}");
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Ok(mut restarted) = self.restarted.lock() {
            for (_, _, child) in restarted.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let nodes = std::fs::read_to_string(self.nodes_path())
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let Some(dev) = self.dev.as_mut() else {
            return;
        };
        let _ = kill(Pid::from_raw(dev.id() as i32), Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = dev.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = dev.kill();
        let _ = dev.wait();
        if let Some(doc) = nodes
            && let Some(list) = doc["nodes"].as_array()
        {
            for n in list {
                if let Some(pid) = n["pid"].as_i64() {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
    }
}
