//! Readiness on real processes: `GET /ready` is 503 (naming what is missing) before the
//! partitions are placed and led, 200 after, 503 again when partitions lose their majority;
//! `dev` prints its banner and writes `nodes.json` only once the cluster is ready; the
//! control node's `/health` reports its metadata group's Raft state.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TOKEN, free_base, json_of};
use raftmetrics_client::{Client, Error as ClientError};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

const SECRET: &str = "ready-test-cluster-secret-0123456789";

/// A node started by hand, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[String]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_raftmetrics-server"))
        .args(args)
        .env_clear()
        .env("AUTH_TOKENS", TOKEN)
        .env("CLUSTER_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a node");
    Proc(child)
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Option<String>, Value) {
    let resp = http
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry, json_of(resp).await)
}

async fn wait_listening(port: u16) {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(start.elapsed() < Duration::from_secs(30), "port {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_before_placement_and_200_once_every_partition_is_led() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base(3);
    let partitions = 8;
    let control = start(&[
        "control".into(),
        format!("--port={base}"),
        format!("--internal-port={}", base + 1000),
        format!("--data-dir={}", dir.path().join("control").display()),
        format!("--partitions={partitions}"),
        "--replication-factor=3".into(),
        "--min-workers=3".into(),
        "--bind-host=127.0.0.1".into(),
    ]);
    let worker = |i: u16| {
        start(&[
            "worker".into(),
            format!("--node-id={i}"),
            format!("--port={}", base + i),
            format!("--internal-port={}", base + i + 1000),
            format!("--data-dir={}", dir.path().join(format!("w{i}")).display()),
            format!("--control-host=127.0.0.1:{}", base + 1000),
            "--bind-host=127.0.0.1".into(),
            "--advertise-host=127.0.0.1".into(),
        ])
    };
    wait_listening(base).await;
    let http = reqwest::Client::new();
    let url = |port: u16, path: &str| format!("http://127.0.0.1:{port}{path}");
    let client = Client::builder(url(base, ""))
        .token(TOKEN)
        .build()
        .expect("client");

    // No worker yet: not placed, every partition missing, in the API's error format.
    let (status, retry, body) = get(&http, &url(base, "/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(body["error"], true);
    assert_eq!(body["code"], "RAFT_ERROR");
    assert_eq!(body["details"]["missing_count"], partitions);
    assert_eq!(body["details"]["partitions_led"], 0);
    let problem = body["details"]["problems"][0].as_str().unwrap_or_default();
    assert!(problem.contains("not placed"), "{body}");
    // /health is liveness: 200, its body says the cluster is starting.
    let (status, _, health) = get(&http, &url(base, "/health")).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("starting")));
    // The client sees the 503, and gives up waiting after its timeout.
    let err = client.ready().await.expect_err("not ready");
    assert_eq!(err.status(), Some(503), "{err}");
    match client.wait_ready(Duration::from_millis(600)).await {
        Err(ClientError::NotReady {
            last: Some(last), ..
        }) => {
            assert_eq!(last.status(), Some(503))
        }
        other => panic!("wait_ready before placement: {other:?}"),
    }

    // Two of the three workers placing waits for: still not ready.
    let w1 = worker(1);
    let w2 = worker(2);
    wait_listening(base + 1).await;
    wait_listening(base + 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _, body) = get(&http, &url(base, "/ready")).await;
    assert_eq!(status, 503, "{body}");
    let problem = body["details"]["problems"][0].as_str().unwrap_or_default();
    assert!(problem.contains("2 of the 3 workers"), "{body}");
    // A worker without placement is not ready either.
    let (status, _, body) = get(&http, &url(base + 1, "/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["details"]["role"], "worker");

    // The third worker: placed, then led; the client's wait ends with every partition led.
    let w3 = worker(3);
    let ready = client
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("the cluster becomes ready");
    assert_eq!(
        (
            ready.status.as_str(),
            ready.partitions_total,
            ready.partitions_led
        ),
        ("ready", partitions, partitions)
    );
    // Ready means an insert is acknowledged and a strong count is complete right away.
    let ack = client
        .insert_batch(vec![raftmetrics_client::Point::new("ready_m", 1.0)])
        .await
        .expect("insert once ready");
    assert_eq!(ack.points, 1);
    for i in 1..=3 {
        let worker_client = Client::builder(url(base + i, ""))
            .token(TOKEN)
            .build()
            .unwrap();
        let r = worker_client
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("worker ready");
        assert_eq!(
            (r.role.as_str(), r.partitions_total),
            ("worker", partitions)
        );
    }

    // The control node's raft_status is its metadata group's: it leads it, with the
    // placement in its log.
    let (_, _, health) = get(&http, &url(base, "/health")).await;
    let raft = &health["raft_status"];
    assert_eq!(raft["role"], "leader", "{health}");
    assert_eq!(raft["leader_id"], "node-1", "{health}");
    assert!(raft["term"].as_u64().unwrap() >= 1, "{health}");
    assert!(raft["last_log_index"].as_u64().unwrap() >= 2, "{health}");
    assert_eq!(
        (raft["leading"].as_u64(), raft["replicas"].as_u64()),
        (Some(1), Some(1))
    );

    // Two of three workers gone: no partition has a majority, its leader steps down, and
    // /ready says so (while /health still answers 200).
    drop(w1);
    drop(w2);
    let start = Instant::now();
    loop {
        let (status, _, body) = get(&http, &url(base, "/ready")).await;
        if status == 503 && body["details"]["missing_count"] == partitions {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still ready after losing the majority: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, body) = get(&http, &url(base + 3, "/ready")).await;
    assert_eq!(status, 503, "the lone worker: {body}");
    let (status, _, _) = get(&http, &url(base, "/health")).await;
    assert_eq!(status, 200);
    drop(w3);
    drop(control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_its_banner_and_writes_nodes_json_only_once_ready() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_base(3);
    let data = dir.path().join("cluster");
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_raftmetrics-server"))
        .args([
            "dev",
            "--partitions",
            "32",
            "--port",
            &port.to_string(),
            "--data-dir",
        ])
        .arg(&data)
        .env("AUTH_TOKENS", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start dev");
    let mut lines = tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines();
    let (banner_tx, mut banner_rx) = tokio::sync::mpsc::channel::<String>(64);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if banner_tx.send(line).await.is_err() {
                break;
            }
        }
    });
    let http = reqwest::Client::new();
    let ready_url = format!("http://127.0.0.1:{port}/ready");
    let nodes = data.join("nodes.json");
    let start = Instant::now();
    let mut seen_not_ready = 0;
    let banner = loop {
        // nodes.json, once written, means ready: the cluster was ready before it.
        if nodes.exists() {
            let (status, _, body) = get(&http, &ready_url).await;
            assert_eq!(status, 200, "nodes.json written before ready: {body}");
        } else if let Ok(resp) = http.get(&ready_url).bearer_auth(TOKEN).send().await
            && resp.status() == 503
        {
            seen_not_ready += 1;
        }
        match tokio::time::timeout(Duration::from_millis(20), banner_rx.recv()).await {
            Ok(Some(line)) if line.contains("dev cluster is up") => break line,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("dev exited before its banner"),
        }
        assert!(start.elapsed() < Duration::from_secs(90), "no banner");
    };
    // The banner came after readiness: /ready answers 200 and nodes.json lists the nodes.
    let (status, _, body) = get(&http, &ready_url).await;
    assert_eq!(status, 200, "banner before ready: {body}");
    assert_eq!(body["partitions_led"], 32);
    assert!(banner.contains("3 worker(s)"), "{banner}");
    assert!(banner.contains("replication factor 3"), "{banner}");
    let listed: Value = serde_json::from_str(&std::fs::read_to_string(&nodes).unwrap()).unwrap();
    assert_eq!(listed["nodes"].as_array().map(Vec::len), Some(4));
    eprintln!("/ready answered 503 {seen_not_ready} time(s) before the banner");
    // SIGTERM, so that dev stops the nodes it started; a SIGKILL would leave them running.
    if let Some(pid) = dev.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(30), dev.wait())
        .await
        .is_err()
    {
        let _ = dev.start_kill();
        let _ = dev.wait().await;
        panic!("dev did not stop within 30 s of SIGTERM");
    }
}
