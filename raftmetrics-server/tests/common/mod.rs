//! A real local cluster for integration tests: `raftmetrics-server dev` as a child process,
//! which starts the control node and the workers as processes of their own on loopback.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
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

pub struct DevCluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub workers: u16,
    dev: Child,
    pub http: reqwest::Client,
}

/// A base port such that the control and worker HTTP ports and their node-to-node ports
/// (+1000) are all free.
fn free_base(workers: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 200) as u16;
    loop {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = 20_000 + ((seed + k * 37) % 400) * 40;
        let ports = (0..=workers).flat_map(|i| [base + i, base + i + 1000]);
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
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_base(workers);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftmetrics-server"));
        cmd.args([
            "dev",
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
            dev,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        };
        cluster.wait_healthy(Duration::from_secs(120)).await;
        cluster
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn worker_url(&self, id: u16, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port + id)
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

    /// Sends SIGKILL to worker `id`.
    pub fn kill_worker(&self, id: u64) {
        let node = self
            .nodes()
            .into_iter()
            .find(|n| n.role == "worker" && n.id == id)
            .expect("worker in nodes.json");
        kill(Pid::from_raw(node.pid), Signal::SIGKILL).expect("kill -9 worker");
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
        let nodes = std::fs::read_to_string(self.nodes_path())
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let _ = kill(Pid::from_raw(self.dev.id() as i32), Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.dev.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.dev.kill();
        let _ = self.dev.wait();
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
