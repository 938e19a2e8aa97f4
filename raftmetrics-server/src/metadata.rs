//! The control node's cluster metadata (the placement of partition replicas), kept in a Raft
//! group of its own.
//!
//! The group runs on the core's [`RaftNode`] with its own raft-engine log and DuckDB store in
//! the control node's data directory, separate from any partition. Today the group has one
//! voter (the control node), so a placement is durable once its entry is committed and
//! applied; adding control nodes as voters (with a transport between them) is what control
//! node failover will build on.
//!
//! The placement is stored as one record per replica: metric [`PLACEMENT_METRIC`], tags
//! `partition`, `replica` (its position) and `worker`. It is written once, in one entry, so
//! it is either absent or whole.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmetrics_core::error::{Error, Result};
use raftmetrics_core::model::{Record, Tags};
use raftmetrics_core::raft::{
    Envelope, NodeConfig, NodeHandle, NodeId, RaftLog, RaftNode, ReplicaStatus, Role, Transport,
};
use raftmetrics_core::series::Series;
use raftmetrics_core::{DuckDbStore, PartitionId, Store, Timestamp};

/// The metadata group's id (in the control node's own log, not a partition).
pub const METADATA_GROUP: PartitionId = 0;

/// The control node's id in the metadata group.
pub const CONTROL_RAFT_ID: NodeId = 1;

/// Metric of placement records.
pub const PLACEMENT_METRIC: &str = "placement";

/// How long opening waits for the group to elect its leader.
const ELECTION_WAIT: Duration = Duration::from_secs(15);

/// The placement: `replicas[p]` holds partition `p`'s workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub replicas: Vec<Vec<NodeId>>,
}

impl Placement {
    pub fn partitions(&self) -> u32 {
        self.replicas.len() as u32
    }

    pub fn replication_factor(&self) -> u32 {
        self.replicas.first().map_or(0, |r| r.len() as u32)
    }
}

/// A single-voter group has no one to talk to.
struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, _to: NodeId, _batch: Vec<Envelope>) {}
}

/// The metadata group of a control node.
pub struct MetadataLog {
    node: Option<RaftNode>,
    handle: NodeHandle,
    store: Arc<DuckDbStore>,
}

impl MetadataLog {
    /// Opens (creating it if needed) the metadata group in `dir` and waits until it leads.
    pub async fn open(dir: &Path) -> Result<MetadataLog> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Storage {
            operation: "create metadata directory",
            reason: e.to_string(),
        })?;
        let store = Arc::new(DuckDbStore::open(dir.join("metadata.duckdb"))?);
        let log = RaftLog::open(&dir.join("raft"))?;
        let node = RaftNode::start(
            NodeConfig::new(CONTROL_RAFT_ID),
            log,
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::new(NoPeers),
        )?;
        let handle = node.handle();
        let exists = handle
            .status()
            .await?
            .iter()
            .any(|s| s.group == METADATA_GROUP);
        if !exists {
            handle
                .create_group(METADATA_GROUP, vec![CONTROL_RAFT_ID])
                .await?;
        }
        let meta = MetadataLog {
            node: Some(node),
            handle,
            store,
        };
        meta.wait_leader().await?;
        Ok(meta)
    }

    async fn wait_leader(&self) -> Result<()> {
        let start = Instant::now();
        let mut campaigned = false;
        while start.elapsed() < ELECTION_WAIT {
            let leads = self.handle.status().await?.iter().any(|s| {
                s.group == METADATA_GROUP && s.role == Role::Leader && s.applied_index >= 1
            });
            if leads {
                return Ok(());
            }
            if !campaigned {
                let _ = self.handle.campaign(METADATA_GROUP).await;
                campaigned = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::Raft(
            "the metadata group elected no leader in time".into(),
        ))
    }

    /// The status of this node's replica of the metadata group (role, term, leader, log
    /// indexes), as `/health` reports it.
    pub async fn status(&self) -> Result<ReplicaStatus> {
        self.handle
            .status()
            .await?
            .into_iter()
            .find(|s| s.group == METADATA_GROUP)
            .ok_or_else(|| Error::Raft("this node holds no replica of the metadata group".into()))
    }

    /// The placement recorded in the group, if any.
    pub fn placement(&self) -> Result<Option<Placement>> {
        let snap = self.store.export_partition(METADATA_GROUP)?;
        let series: BTreeMap<u64, &Tags> = snap
            .series
            .iter()
            .filter(|s| s.metric == PLACEMENT_METRIC)
            .map(|s| (s.id, &s.tags))
            .collect();
        let mut cells: BTreeMap<(u32, u32), NodeId> = BTreeMap::new();
        for p in &snap.points {
            let Some(tags) = series.get(&p.series_id) else {
                continue;
            };
            let field = |k: &str| -> Result<u64> {
                tags.get(k)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| Error::Internal(format!("placement record without a valid {k}")))
            };
            let partition = field("partition")? as u32;
            let replica = field("replica")? as u32;
            cells.insert((partition, replica), field("worker")?);
        }
        if cells.is_empty() {
            return Ok(None);
        }
        let mut replicas: Vec<Vec<NodeId>> = Vec::new();
        for ((partition, replica), worker) in cells {
            if partition as usize == replicas.len() {
                replicas.push(Vec::new());
            }
            if partition as usize + 1 != replicas.len() {
                return Err(Error::Internal(format!(
                    "placement records skip partitions before {partition}"
                )));
            }
            let row = replicas.last_mut().expect("a row per partition so far");
            if replica as usize != row.len() {
                return Err(Error::Internal(format!(
                    "placement of partition {partition} skips replica {}",
                    row.len()
                )));
            }
            row.push(worker);
        }
        Ok(Some(Placement { replicas }))
    }

    /// Records `placement` (one log entry, committed and applied before this returns).
    pub async fn record(&self, placement: &Placement) -> Result<()> {
        let mut records = Vec::new();
        for (p, workers) in placement.replicas.iter().enumerate() {
            for (i, w) in workers.iter().enumerate() {
                let tags: Tags = [
                    ("partition".to_string(), p.to_string()),
                    ("replica".to_string(), i.to_string()),
                    ("worker".to_string(), w.to_string()),
                ]
                .into_iter()
                .collect();
                let series = Series::new(PLACEMENT_METRIC, tags, Some(PLACEMENT_METRIC.into()));
                records.push(Record::new(
                    Arc::new(series),
                    Timestamp::from_micros(0),
                    0.0,
                ));
            }
        }
        self.handle.propose(METADATA_GROUP, records).await?;
        Ok(())
    }
}

impl Drop for MetadataLog {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn placement_survives_a_restart_of_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let placement = Placement {
            replicas: vec![vec![1, 2], vec![2, 3], vec![3, 1]],
        };
        {
            let meta = MetadataLog::open(dir.path()).await.unwrap();
            assert_eq!(meta.placement().unwrap(), None);
            meta.record(&placement).await.unwrap();
            assert_eq!(meta.placement().unwrap(), Some(placement.clone()));
        }
        let meta = MetadataLog::open(dir.path()).await.unwrap();
        let got = meta.placement().unwrap().unwrap();
        assert_eq!(got, placement);
        assert_eq!((got.partitions(), got.replication_factor()), (3, 2));
    }
}
