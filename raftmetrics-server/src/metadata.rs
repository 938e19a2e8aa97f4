//! The control node's cluster metadata ([`ClusterState`]: the versioned placement, the
//! workers' states, the moves in flight), kept in a Raft group of its own.
//!
//! The group runs on the core's [`RaftNode`] with its own raft-engine log and DuckDB store in
//! the control node's data directory, separate from any partition. Today the group has one
//! voter (the control node), so a change is durable once its entry is committed and applied;
//! adding control nodes as voters (with a transport between them) is what control node
//! failover will build on.
//!
//! Every change is a [`Command`], one log entry of one record: metric [`COMMAND_METRIC`], tag
//! `seq` (its position, from 1) and tag `command` (the command in JSON). The state is the fold
//! of the commands in `seq` order ([`ClusterState::fold`]), so it is rebuilt the same on every
//! opening. A data directory written before commands existed holds the placement as records
//! of metric [`PLACEMENT_METRIC`] (tags `partition`, `replica`, `worker`, written once); it is
//! read as the first command, a [`Command::Place`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmetrics_core::error::{Error, Result};
use raftmetrics_core::model::{Record, Tags};
use raftmetrics_core::raft::{
    Envelope, NodeConfig, NodeHandle, NodeId, RaftLog, RaftNode, ReplicaStatus, Role, Transport,
};
use raftmetrics_core::series::Series;
use raftmetrics_core::{DuckDbStore, PartitionId, Store, Timestamp};

use crate::cluster_state::{ClusterState, Command};

/// The metadata group's id (in the control node's own log, not a partition).
pub const METADATA_GROUP: PartitionId = 0;

/// The control node's id in the metadata group.
pub const CONTROL_RAFT_ID: NodeId = 1;

/// Metric of command records.
pub const COMMAND_METRIC: &str = "meta_command";

/// Metric of the placement records of data directories written before commands.
pub const PLACEMENT_METRIC: &str = "placement";

/// How long opening waits for the group to elect its leader.
const ELECTION_WAIT: Duration = Duration::from_secs(15);

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
    /// The state after every command committed so far, and how many there are.
    state: Mutex<(ClusterState, u64)>,
    /// Serializes commits, so the state here follows the log's order.
    committing: tokio::sync::Mutex<()>,
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
            state: Mutex::new((ClusterState::default(), 0)),
            committing: tokio::sync::Mutex::new(()),
        };
        meta.wait_leader().await?;
        let commands = meta.commands()?;
        let count = commands.len() as u64;
        *meta.lock_state() = (ClusterState::fold(&commands), count);
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

    fn lock_state(&self) -> std::sync::MutexGuard<'_, (ClusterState, u64)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster state after every command committed so far.
    pub fn state(&self) -> ClusterState {
        self.lock_state().0.clone()
    }

    /// Commits `command` (one log entry, committed and applied before this returns) and
    /// answers the state after it. A command the state refuses (see [`ClusterState::apply`])
    /// is not proposed: the error says why.
    pub async fn commit(&self, command: Command) -> Result<ClusterState> {
        let _one_at_a_time = self.committing.lock().await;
        let (mut next, count) = self.lock_state().clone();
        next.apply(&command).map_err(Error::InvalidRequest)?;
        let seq = count + 1;
        let json = serde_json::to_string(&command)
            .map_err(|e| Error::Internal(format!("encode a metadata command: {e}")))?;
        let tags: Tags = [
            ("seq".to_string(), seq.to_string()),
            ("command".to_string(), json),
        ]
        .into_iter()
        .collect();
        let series = Series::new(COMMAND_METRIC, tags, Some(COMMAND_METRIC.into()));
        let record = Record::new(
            Arc::new(series),
            Timestamp::from_micros(seq as i64),
            seq as f64,
        );
        if let Err(e) = self.handle.propose(METADATA_GROUP, vec![record]).await {
            // The outcome may be unknown: what the store holds decides.
            let commands = self.commands()?;
            let count = commands.len() as u64;
            *self.lock_state() = (ClusterState::fold(&commands), count);
            return Err(e);
        }
        *self.lock_state() = (next.clone(), seq);
        Ok(next)
    }

    /// Every command in the group's store, in order (a placement of an older data directory
    /// first, as a [`Command::Place`]).
    fn commands(&self) -> Result<Vec<Command>> {
        let snap = self.store.export_partition(METADATA_GROUP)?;
        let mut commands: BTreeMap<(u64, u64), Command> = BTreeMap::new();
        for s in snap.series.iter().filter(|s| s.metric == COMMAND_METRIC) {
            let seq: u64 = s
                .tags
                .get("seq")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::Internal("metadata command without a seq".into()))?;
            let command = s
                .tags
                .get("command")
                .and_then(|v| serde_json::from_str(v).ok())
                .ok_or_else(|| Error::Internal(format!("metadata command {seq} cannot be read")))?;
            commands.insert((seq, s.id), command);
        }
        let mut out = Vec::with_capacity(commands.len() + 1);
        if let Some(voters) = self.legacy_placement(&snap)? {
            out.push(Command::Place {
                replication_factor: voters.first().map_or(0, |r| r.len() as u32),
                voters,
            });
        }
        out.extend(commands.into_values());
        Ok(out)
    }

    /// The placement records of a data directory written before commands, if any.
    fn legacy_placement(
        &self,
        snap: &raftmetrics_core::store::PartitionSnapshot,
    ) -> Result<Option<Vec<Vec<NodeId>>>> {
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
        Ok(Some(replicas))
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
    use crate::rebalance::{MoveReason, MoveSpec, WorkerState};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_state_survives_a_restart_of_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let voters = vec![vec![1, 2], vec![2, 3], vec![3, 1]];
        let expected = {
            let meta = MetadataLog::open(dir.path()).await.unwrap();
            assert!(!meta.state().is_placed());
            meta.commit(Command::Place {
                replication_factor: 2,
                voters: voters.clone(),
            })
            .await
            .unwrap();
            meta.commit(Command::Join { worker: 4 }).await.unwrap();
            // Refused by the state: nothing is proposed.
            assert!(meta.commit(Command::Join { worker: 4 }).await.is_err());
            let spec = MoveSpec {
                partition: 1,
                from: 3,
                to: 4,
                reason: MoveReason::Balance,
            };
            meta.commit(Command::StartMove { spec }).await.unwrap();
            let state = meta
                .commit(Command::SetWorkerState {
                    worker: 1,
                    state: WorkerState::Draining,
                })
                .await
                .unwrap();
            assert_eq!(state.epoch, 2);
            assert_eq!(state.placement[1].learners, vec![4]);
            state
        };
        let meta = MetadataLog::open(dir.path()).await.unwrap();
        assert_eq!(meta.state(), expected);
        // Commands go on after the restart in the same order.
        let state = meta.commit(Command::FinishMove { id: 0 }).await.unwrap();
        assert_eq!(state.placement[1].voters, vec![2, 4]);
        drop(meta);
        let meta = MetadataLog::open(dir.path()).await.unwrap();
        assert_eq!(meta.state().placement[1].voters, vec![2, 4]);
        assert_eq!(meta.state().epoch, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_placement_written_before_commands_is_read_as_the_first() {
        let dir = tempfile::tempdir().unwrap();
        {
            let meta = MetadataLog::open(dir.path()).await.unwrap();
            // The records an older version wrote: one per replica, in one entry.
            let mut records = Vec::new();
            for (p, workers) in [[1u64, 2], [2, 1]].iter().enumerate() {
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
            meta.handle.propose(METADATA_GROUP, records).await.unwrap();
        }
        let meta = MetadataLog::open(dir.path()).await.unwrap();
        let state = meta.state();
        assert_eq!(state.replication_factor, 2);
        assert_eq!(state.placement[1].voters, vec![2, 1]);
        assert_eq!(state.epoch, 1);
        // A new command comes after it.
        meta.commit(Command::Join { worker: 3 }).await.unwrap();
        drop(meta);
        let meta = MetadataLog::open(dir.path()).await.unwrap();
        assert_eq!(meta.state().workers.len(), 3);
    }
}
