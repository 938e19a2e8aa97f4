//! Replication benchmark: committed points/s through three in-process replicas (raft-engine
//! logs with fsync, DuckDB stores on disk behind them, as on a worker; simulated loopback
//! network) against unreplicated store inserts (DuckDB's own log) of the same batches,
//! measured in the same run.
//!
//! `cargo bench --bench raft [-- POINTS]` (default 400,000 points).
//! All three replicas share this machine's cores, so the ratio is a lower bound of what
//! three machines would do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmetrics_core::Point;
use raftmetrics_core::Timestamp;
use raftmetrics_core::model::{Limits, Record, validate_batch};
use raftmetrics_core::raft::{
    FaultConfig, NodeConfig, NodeHandle, RaftLog, RaftNode, Role, SimNetwork,
};
use raftmetrics_core::store::conformance::SplitMix;
use raftmetrics_core::store::{DuckDbStore, PartitionWrite, Store};

const GROUPS: u32 = 8;
const BATCH: usize = 1_000;
const CLIENTS: usize = 16;

fn batches(n: usize) -> Vec<(u32, Vec<Record>)> {
    let mut rng = SplitMix(7);
    let t0 = Timestamp::parse("2024-01-01T00:00:00Z")
        .unwrap()
        .as_micros();
    (0..n / BATCH)
        .map(|b| {
            let group = (b as u32) % GROUPS;
            let points = (0..BATCH)
                .map(|i| {
                    let host = rng.below(100);
                    Point::new("usage_user", rng.next_f64() * 100.0)
                        .at(Timestamp::from_micros(t0 + (b * BATCH + i) as i64 * 1_000))
                        .tag("hostname", format!("host_{host}"))
                })
                .collect();
            (
                group,
                validate_batch(points, Timestamp::now(), &Limits::default()).unwrap(),
            )
        })
        .collect()
}

fn unreplicated(dir: &std::path::Path, batches: &[(u32, Vec<Record>)]) -> Duration {
    let store = DuckDbStore::open(dir.join("plain.duckdb")).unwrap();
    let start = Instant::now();
    for (i, (group, records)) in batches.iter().enumerate() {
        store
            .apply(&[PartitionWrite::new(*group, i as u64 + 1, records)])
            .unwrap();
    }
    start.elapsed()
}

async fn replicated(
    dir: &std::path::Path,
    batches: Vec<(u32, Vec<Record>)>,
) -> (Duration, Vec<RaftNode>) {
    let net = SimNetwork::new(1, FaultConfig::reliable());
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let store: Arc<dyn Store> =
            Arc::new(DuckDbStore::open_behind_log(dir.join(format!("node-{id}.duckdb"))).unwrap());
        let log = RaftLog::open(&dir.join(format!("raft-{id}"))).unwrap();
        let mut cfg = NodeConfig::new(id);
        cfg.tick_interval_ms = 50;
        cfg.proposal_timeout_ms = 60_000;
        let node = RaftNode::start(cfg, log, store, net.endpoint(id)).unwrap();
        let h = node.handle();
        net.register(id, Arc::new(move |b| h.step(b)));
        nodes.push(node);
    }
    for n in &nodes {
        for g in 0..GROUPS {
            n.handle().create_group(g, vec![1, 2, 3]).await.unwrap();
        }
    }
    // Spread leadership: group g campaigns on node g % 3.
    for g in 0..GROUPS {
        nodes[g as usize % 3].handle().campaign(g).await.unwrap();
    }
    let mut leaders: Vec<Option<NodeHandle>> = vec![None; GROUPS as usize];
    while leaders.iter().any(Option::is_none) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for n in &nodes {
            for s in n.handle().status().await.unwrap() {
                if s.role == Role::Leader {
                    leaders[s.group as usize] = Some(n.handle());
                }
            }
        }
    }
    let leaders: Arc<Vec<NodeHandle>> = Arc::new(leaders.into_iter().map(Option::unwrap).collect());
    let queue = Arc::new(std::sync::Mutex::new(batches));
    let start = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (queue, leaders) = (queue.clone(), leaders.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let Some((group, records)) = queue.lock().unwrap().pop() else {
                    break;
                };
                leaders[group as usize]
                    .propose(group, records)
                    .await
                    .unwrap();
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    (start.elapsed(), nodes)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(400_000);
    let dir = tempfile::tempdir().unwrap();
    let batches = batches(n);
    let points = batches.len() * BATCH;
    let plain = unreplicated(dir.path(), &batches);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (raft, nodes) = runtime.block_on(replicated(dir.path(), batches));
    for node in nodes {
        node.shutdown();
    }
    let rate = |d: Duration| points as f64 / d.as_secs_f64();
    println!(
        "## Replication ({points} points, batches of {BATCH}, {CLIENTS} concurrent clients, {GROUPS} partitions)"
    );
    println!("| writer | points/s | ratio |");
    println!("|---|---:|---:|");
    println!(
        "| unreplicated DuckDbStore::apply (reference) | {:.0} | 1.00 |",
        rate(plain)
    );
    println!(
        "| 3 replicas, raft-engine fsync, acknowledged after apply | {:.0} | {:.2} (goal >= 0.35) |",
        rate(raft),
        plain.as_secs_f64() / raft.as_secs_f64()
    );
}
