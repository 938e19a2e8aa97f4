//! The cluster metadata ([`ClusterState`]: the versioned placement, the workers' states, the
//! moves in flight), kept in a Raft group of the control nodes.
//!
//! The group runs on the core's [`RaftNode`] with its own raft-engine log and DuckDB store in
//! each control node's data directory, separate from any partition. A control node alone is
//! a one-voter group (raft id [`CONTROL_RAFT_ID`]); with `--control-peers`, control node `k`
//! is voter `k` of a group of 3 or 5, its messages carried by [`MetadataTransport`] over the
//! node-to-node wire (ADR 021).
//!
//! Every change is a [`Command`], one log entry of one record: metric [`COMMAND_METRIC`], tag
//! `seq` (its position, from 1) and tag `command` (the command in JSON). Only the group's
//! leader commits, and only after a read-index round has shown it still leads a majority
//! and has applied everything committed before ([`MetadataLog::commit`]); it numbers the
//! command after the last one it applied. The state is the fold of the commands whose `seq`
//! continues the sequence, in `seq` order, ties broken by the order they were applied in
//! ([`accepted`]): a command proposed on a stale base (by a leader deposed meanwhile, or
//! resent after an unknown outcome) repeats a `seq` already taken and is skipped, the same
//! way on every control node. Every control node folds the commands its store applied, so
//! followers serve the committed state too ([`MetadataLog::refresh`]).
//!
//! A data directory written before commands existed holds the placement as records of
//! metric [`PLACEMENT_METRIC`] (tags `partition`, `replica`, `worker`, written once); it is
//! read as the first command, a [`Command::Place`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
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
use crate::rpc::{CONTROL_WIRE_ID, control_wire_id, is_control_wire_id};
use crate::wire::tcp_transport::TcpTransport;

/// The metadata group's id (in the control node's own log, not a partition).
pub const METADATA_GROUP: PartitionId = 0;

/// The raft id of a control node alone in its metadata group.
pub const CONTROL_RAFT_ID: NodeId = 1;

/// Metric of command records.
pub const COMMAND_METRIC: &str = "meta_command";

/// Metric of the placement records of data directories written before commands.
pub const PLACEMENT_METRIC: &str = "placement";

/// How long opening a group of one waits for it to elect its leader.
const ELECTION_WAIT: Duration = Duration::from_secs(15);

/// How long a commit waits for the read-index round that proves leadership; a leader cut
/// off from its peers fails it.
const LEADERSHIP_WAIT: Duration = Duration::from_secs(3);

/// How long a commit waits for its entry to be committed and applied here.
const PROPOSE_WAIT: Duration = Duration::from_secs(10);

/// A single-voter group has no one to talk to.
struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, _to: NodeId, _batch: Vec<Envelope>) {}
}

/// The metadata group's messages between control nodes: voter `k` is control node `k`, at
/// wire id [`control_wire_id`]`(k)` on the node-to-node connections.
pub struct MetadataTransport {
    tcp: TcpTransport,
}

impl MetadataTransport {
    /// Carries messages over `tcp`, whose local id is this control node's wire id.
    pub fn new(tcp: TcpTransport) -> Self {
        MetadataTransport { tcp }
    }

    /// Control node `k` (its voter id) is at `addr`.
    pub fn set_peer(&self, k: NodeId, addr: SocketAddr) {
        self.tcp.set_peer(control_wire_id(k), addr);
    }

    /// Inbound messages of the metadata group, from wire ids to voter ids; anything else
    /// (another group, a node that is not a control node) is dropped.
    pub fn inbound(batch: Vec<Envelope>) -> Vec<Envelope> {
        batch
            .into_iter()
            .filter(|e| {
                e.group == METADATA_GROUP
                    && is_control_wire_id(e.message.get_to())
                    && is_control_wire_id(e.message.get_from())
            })
            .map(|mut e| {
                let (to, from) = (e.message.get_to(), e.message.get_from());
                e.message.set_to(to - CONTROL_WIRE_ID);
                e.message.set_from(from - CONTROL_WIRE_ID);
                e
            })
            .collect()
    }
}

impl Transport for MetadataTransport {
    fn send(&self, to: NodeId, batch: Vec<Envelope>) {
        let batch = batch
            .into_iter()
            .map(|mut e| {
                let (to, from) = (e.message.get_to(), e.message.get_from());
                e.message.set_to(control_wire_id(to));
                e.message.set_from(control_wire_id(from));
                e
            })
            .collect();
        self.tcp.send(control_wire_id(to), batch);
    }
}

/// Who is in the metadata group.
pub struct Membership {
    /// This node's voter id.
    pub me: NodeId,
    /// Every voter (this node included).
    pub voters: Vec<NodeId>,
    /// How messages reach the other voters.
    pub transport: Arc<dyn Transport>,
}

impl Membership {
    /// A control node alone: a one-voter group.
    pub fn alone() -> Membership {
        Membership {
            me: CONTROL_RAFT_ID,
            voters: vec![CONTROL_RAFT_ID],
            transport: Arc::new(NoPeers),
        }
    }
}

/// The folded state, with what it was folded from.
#[derive(Clone, Default)]
struct Folded {
    state: ClusterState,
    /// The accepted commands, in order (a placement of an older data directory first).
    commands: Vec<Command>,
    /// The `seq` the next command takes.
    next_seq: u64,
    /// The applied index the store had reached when it was read.
    applied: u64,
}

/// The metadata group of a control node.
pub struct MetadataLog {
    node: Option<RaftNode>,
    handle: NodeHandle,
    store: Arc<DuckDbStore>,
    voters: usize,
    /// The state after every command this node applied.
    folded: Mutex<Folded>,
    /// Serializes commits and refreshes, so the state here follows the log's order.
    committing: tokio::sync::Mutex<()>,
}

impl MetadataLog {
    /// Opens (creating it if needed) the metadata group in `dir` as a voter of `membership`.
    /// A group of one waits until it leads; a larger one returns at once (its leader is
    /// elected once the transport delivers the peers' messages).
    pub async fn open(dir: &Path, membership: Membership) -> Result<MetadataLog> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Storage {
            operation: "create metadata directory",
            reason: e.to_string(),
        })?;
        let store = Arc::new(DuckDbStore::open(dir.join("metadata.duckdb"))?);
        let log = RaftLog::open(&dir.join("raft"))?;
        let node = RaftNode::start(
            NodeConfig::new(membership.me),
            log,
            Arc::clone(&store) as Arc<dyn Store>,
            membership.transport,
        )?;
        let handle = node.handle();
        let group = handle
            .status()
            .await?
            .into_iter()
            .find(|s| s.group == METADATA_GROUP);
        match group {
            None => {
                handle
                    .create_group(METADATA_GROUP, membership.voters.clone())
                    .await?
            }
            Some(g) => {
                let mut had: Vec<NodeId> = g.voters.iter().chain(&g.learners).copied().collect();
                had.sort_unstable();
                let mut want = membership.voters.clone();
                want.sort_unstable();
                if had != want {
                    return Err(Error::InvalidRequest(format!(
                        "this control node's metadata group has the voters {had:?}, but                          --control-peers makes {want:?}; the control nodes of a cluster are                          fixed when it is created"
                    )));
                }
            }
        }
        let meta = MetadataLog {
            node: Some(node),
            handle,
            store,
            voters: membership.voters.len(),
            folded: Mutex::new(Folded::default()),
            committing: tokio::sync::Mutex::new(()),
        };
        if meta.voters == 1 {
            meta.wait_leader().await?;
        }
        meta.refresh().await?;
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

    /// Delivers inbound messages of the metadata group (see [`MetadataTransport::inbound`]).
    pub fn step(&self, batch: Vec<Envelope>) {
        let batch = MetadataTransport::inbound(batch);
        if !batch.is_empty() {
            self.handle.step(batch);
        }
    }

    /// How many voters the group has.
    pub fn voters(&self) -> usize {
        self.voters
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

    fn lock_folded(&self) -> std::sync::MutexGuard<'_, Folded> {
        self.folded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster state after every command this node applied.
    pub fn state(&self) -> ClusterState {
        self.lock_folded().state.clone()
    }

    /// The placement epoch of [`MetadataLog::state`], without copying the state (every
    /// insert and query asks for it).
    pub fn epoch(&self) -> u64 {
        self.lock_folded().state.epoch
    }

    /// Folds again what the store applied since the last fold (nothing to do when its
    /// applied index has not moved).
    pub async fn refresh(&self) -> Result<()> {
        let _one_at_a_time = self.committing.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<()> {
        let applied = self.status().await?.applied_index;
        if applied == self.lock_folded().applied && applied != 0 {
            return Ok(());
        }
        let (commands, next_seq) = self.commands()?;
        let state = ClusterState::fold(&commands);
        *self.lock_folded() = Folded {
            state,
            commands,
            next_seq,
            applied,
        };
        Ok(())
    }

    /// Whether this node can decide now: it leads the group, a majority still follows it
    /// (a read-index round), and it has applied everything committed before. Its state is
    /// then the group's newest.
    pub async fn confirm_leadership(&self) -> Result<()> {
        let status = self.status().await?;
        if status.role != Role::Leader {
            return Err(Error::Raft(format!(
                "this control node does not lead the metadata group (leader: {})",
                match status.leader_id {
                    0 => "none known".to_string(),
                    k => format!("control node {k}"),
                }
            )));
        }
        tokio::time::timeout(LEADERSHIP_WAIT, self.handle.read_index(METADATA_GROUP))
            .await
            .map_err(|_| {
                Error::Raft(
                    "the metadata leader could not confirm a majority of the control nodes in                      time"
                        .into(),
                )
            })??;
        Ok(())
    }

    /// Commits `command` on the group's leader (one log entry, committed and applied here
    /// before this returns) and answers the state after it. A command the state refuses
    /// (see [`ClusterState::apply`]) is not proposed: the error says why. On a node that
    /// does not lead, or cannot show that it still does, nothing is proposed.
    pub async fn commit(&self, command: Command) -> Result<ClusterState> {
        let _one_at_a_time = self.committing.lock().await;
        self.confirm_leadership().await?;
        self.refresh_locked().await?;
        let (mut next, seq) = {
            let folded = self.lock_folded();
            (folded.state.clone(), folded.next_seq)
        };
        next.apply(&command).map_err(Error::InvalidRequest)?;
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
        let proposed = tokio::time::timeout(
            PROPOSE_WAIT,
            self.handle.propose(METADATA_GROUP, vec![record]),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::Raft(
                "a metadata command was not committed in time; its outcome is unknown".into(),
            ))
        });
        // Whatever the answer, the store decides what was accepted.
        let refreshed = self.refresh_locked().await;
        proposed?;
        refreshed?;
        let folded = self.lock_folded();
        let index = usize::try_from(seq - 1).unwrap_or(usize::MAX);
        if folded.commands.get(index) == Some(&command) {
            Ok(folded.state.clone())
        } else {
            Err(Error::Raft(format!(
                "metadata command {seq} was superseded by another leader's; it was not applied"
            )))
        }
    }

    /// The accepted commands in the group's store, in order (a placement of an older data
    /// directory first, as a [`Command::Place`]), and the `seq` the next command takes.
    fn commands(&self) -> Result<(Vec<Command>, u64)> {
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
        let legacy = self.legacy_placement(&snap)?.map(|voters| Command::Place {
            replication_factor: voters.first().map_or(0, |r| r.len() as u32),
            voters,
        });
        Ok(accepted(legacy, commands))
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

/// The commands that count, in order, and the `seq` the next one takes: a placement of an
/// older data directory (which counts as `seq` 1) then, in `(seq, series id)` order, each
/// command whose `seq` is the next one. A series id grows in the order the store applied the
/// commands, so of two commands proposed with the same `seq` the first committed counts, and
/// the other (proposed on a base that it did not follow) is skipped, on every control node.
pub fn accepted(
    legacy: Option<Command>,
    commands: BTreeMap<(u64, u64), Command>,
) -> (Vec<Command>, u64) {
    let mut out: Vec<Command> = legacy.into_iter().collect();
    let mut next = out.len() as u64 + 1;
    for ((seq, _), command) in commands {
        if seq == next {
            out.push(command);
            next += 1;
        }
    }
    (out, next)
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
            let meta = MetadataLog::open(dir.path(), Membership::alone())
                .await
                .unwrap();
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
        let meta = MetadataLog::open(dir.path(), Membership::alone())
            .await
            .unwrap();
        assert_eq!(meta.state(), expected);
        // Commands go on after the restart in the same order.
        let state = meta.commit(Command::FinishMove { id: 0 }).await.unwrap();
        assert_eq!(state.placement[1].voters, vec![2, 4]);
        drop(meta);
        let meta = MetadataLog::open(dir.path(), Membership::alone())
            .await
            .unwrap();
        assert_eq!(meta.state().placement[1].voters, vec![2, 4]);
        assert_eq!(meta.state().epoch, 3);
    }

    #[test]
    fn a_command_on_a_stale_base_is_skipped() {
        let join = |worker| Command::Join { worker };
        let mut commands = BTreeMap::new();
        commands.insert((1, 10), join(1));
        // Two proposed as seq 2: the one applied first (lower series id) counts.
        commands.insert((2, 12), join(3));
        commands.insert((2, 11), join(2));
        commands.insert((3, 13), join(4));
        // A gap: nothing after it counts until its seq is reached.
        commands.insert((5, 14), join(5));
        let (out, next) = accepted(None, commands.clone());
        assert_eq!(out, vec![join(1), join(2), join(4)]);
        assert_eq!(next, 4);
        // An older placement counts as seq 1: the command proposed as seq 1 is then stale.
        let place = Command::Place {
            replication_factor: 1,
            voters: vec![vec![1]],
        };
        let (out, next) = accepted(Some(place.clone()), commands);
        assert_eq!(out, vec![place, join(2), join(4)]);
        assert_eq!(next, 4);
    }

    #[test]
    fn metadata_messages_travel_under_control_wire_ids() {
        let mut message = raft::eraftpb::Message::default();
        message.set_to(control_wire_id(2));
        message.set_from(control_wire_id(3));
        let keep = Envelope {
            group: METADATA_GROUP,
            message: message.clone(),
        };
        let mut from_worker = message.clone();
        from_worker.set_from(7);
        let batch = vec![
            keep,
            Envelope { group: 4, message },
            Envelope {
                group: METADATA_GROUP,
                message: from_worker,
            },
        ];
        let inbound = MetadataTransport::inbound(batch);
        assert_eq!(inbound.len(), 1);
        assert_eq!(
            (inbound[0].message.get_to(), inbound[0].message.get_from()),
            (2, 3)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_placement_written_before_commands_is_read_as_the_first() {
        let dir = tempfile::tempdir().unwrap();
        {
            let meta = MetadataLog::open(dir.path(), Membership::alone())
                .await
                .unwrap();
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
        let meta = MetadataLog::open(dir.path(), Membership::alone())
            .await
            .unwrap();
        let state = meta.state();
        assert_eq!(state.replication_factor, 2);
        assert_eq!(state.placement[1].voters, vec![2, 1]);
        assert_eq!(state.epoch, 1);
        // A new command comes after it.
        meta.commit(Command::Join { worker: 3 }).await.unwrap();
        drop(meta);
        let meta = MetadataLog::open(dir.path(), Membership::alone())
            .await
            .unwrap();
        assert_eq!(meta.state().workers.len(), 3);
    }
}
