//! A first look at the raft node: three nodes over a direct in-process transport.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raftmetrics_core::model::{Limits, validate_batch};
use raftmetrics_core::raft::{
    Envelope, NodeConfig, NodeHandle, NodeId, RaftLog, RaftNode, Role, Transport,
};
use raftmetrics_core::store::{DuckDbStore, Store};
use raftmetrics_core::{Point, Timestamp};

#[derive(Default, Clone)]
struct Direct(Arc<RwLock<HashMap<NodeId, NodeHandle>>>);

impl Transport for Direct {
    fn send(&self, to: NodeId, batch: Vec<Envelope>) {
        if let Some(h) = self.0.read().unwrap().get(&to) {
            h.step(batch);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let net = Direct::default();
    let mut nodes = Vec::new();
    let mut stores = Vec::new();
    for id in 1..=3u64 {
        let store: Arc<dyn Store> =
            Arc::new(DuckDbStore::open(dir.path().join(format!("{id}.duckdb"))).unwrap());
        let log = RaftLog::open(&dir.path().join(format!("raft-{id}"))).unwrap();
        let mut cfg = NodeConfig::new(id);
        cfg.tick_interval_ms = 20;
        let node = RaftNode::start(cfg, log, store.clone(), Arc::new(net.clone())).unwrap();
        net.0.write().unwrap().insert(id, node.handle());
        stores.push(store);
        nodes.push(node);
    }
    for n in &nodes {
        n.handle().create_group(7, vec![1, 2, 3]).await.unwrap();
    }
    nodes[0].handle().campaign(7).await.unwrap();
    let leader = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = nodes[0].handle().status().await.unwrap();
        if s[0].role == Role::Leader {
            break nodes[0].handle();
        }
    };
    let t = Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
    for i in 0..50 {
        let points = (0..100)
            .map(|j| {
                Point::new("cpu", (i * 100 + j) as f64)
                    .at(t)
                    .tag("host", "a")
            })
            .collect();
        let records = validate_batch(points, Timestamp::now(), &Limits::default()).unwrap();
        leader.propose(7, records).await.unwrap();
    }
    let idx = leader.read_index(7).await.unwrap();
    assert!(idx > 50);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let digests: Vec<_> = stores.iter().map(|s| s.digest(7).unwrap()).collect();
    assert_eq!(digests[0].rows, 5000);
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], digests[2]);
    for n in nodes {
        n.shutdown();
    }
}
