//! A multi-raft node: every partition replica a node holds, driven by one thread.
//!
//! The loop, in order, each iteration:
//! 1. wait for a command or the next tick; drain a bounded number of commands (inbound raft
//!    messages, proposals, membership changes, reads, status);
//! 2. tick every replica when a tick is due;
//! 3. propose the queued writes of each group, many client batches per log entry;
//! 4. collect the `Ready` of every replica: send leader messages at once; install a received
//!    snapshot into the store (data first, log metadata second); stage new entries, hard
//!    state and conf changes of committed entries into ONE log write for all groups (group
//!    commit), fsynced when any Ready asks for it;
//! 5. answer the client writes whose entries committed (they are durable on a majority,
//!    this node included: ADR 014), and hand the committed entries of all groups to the
//!    node's applier (only after the log write, so the store is never ahead of the durable
//!    log), which writes them to the store on its own thread, many hand-overs per
//!    transaction, and answers the proposals that wait for their application;
//! 6. send the messages that had to wait for persistence, `advance_append`, hand over what
//!    the light ready committed; compact logs by [`super::compaction`]: never past what
//!    the store reports durable (a store behind the log saves at checkpoints), keeping on
//!    a leader what followers still need, within bounds.
//!
//! Each iteration also takes the applier's progress: applied indexes (`advance_apply_to`,
//! reads waiting for them) or its failure (the loop stops). See [`super::apply`].
//!
//! Every proposal is answered: committed or applied (with its index), or an error (not
//! leader with a hint, dropped, superseded by another leader's entry, leadership lost or
//! timed out with an unknown outcome, node stopped). Queues are bounded; when full, callers
//! get an error instead of waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::MessageType;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, Snapshot, SnapshotMetadata,
};
use raft::{Config, ProgressState, RawNode, SnapshotStatus, StateRole, Storage as _};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::apply::{Applier, Applying};
use super::compaction::{self, CompactionLimits, LogSpan};
use super::entry::{LogEntry, decode_entry, encode_entry};
use super::log::{GroupStorage, RaftLog, WriteBatch};
use super::logger::raft_logger;
use super::transport::{Envelope, NodeId, Transport};
use crate::codec;
use crate::error::{Error, Result};
use crate::idempotency::BatchId;
use crate::model::Record;
use crate::partition::PartitionId;
use crate::store::{PartitionSnapshot, Store};
use crate::time::Timestamp;

/// Settings of a node's raft loop. Units are in the names.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub tick_interval_ms: u64,
    /// Ticks without a heartbeat before a follower campaigns.
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Most records in one log entry; queued batches beyond it go into further entries.
    pub max_entry_records: usize,
    /// Most proposals (and reads) waiting for their entry per group.
    pub max_pending_per_group: usize,
    /// After this, a waiting proposal is answered with a timeout (outcome unknown).
    pub proposal_timeout_ms: u64,
    /// Compact a group's log once this many entries can go...
    pub compact_threshold_entries: u64,
    /// ...or entries of this many bytes ([`super::compaction`]).
    pub compact_threshold_bytes: u64,
    /// A leader keeps at most this many of the newest applied entries for followers behind...
    pub compact_keep_entries: u64,
    /// ...of at most this many bytes.
    pub compact_keep_bytes: u64,
    /// Bound of the command queue.
    pub inbox_capacity: usize,
    /// Most commands handled per loop iteration.
    pub max_commands_per_iteration: usize,
    /// fsync the raft log when raft-rs asks for it (turn off only in tests of speed).
    pub sync_log: bool,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// A snapshot sent to a follower that has not taken effect after this long is reported
    /// failed, so the leader sends a new one (a transport may lose it).
    pub snapshot_timeout_ms: u64,
}

impl NodeConfig {
    pub fn new(id: NodeId) -> Self {
        NodeConfig {
            id,
            tick_interval_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_entry_records: 20_000,
            max_pending_per_group: 10_000,
            proposal_timeout_ms: 10_000,
            compact_threshold_entries: 2_000,
            compact_threshold_bytes: 1 << 20,
            compact_keep_entries: 500,
            compact_keep_bytes: 16 << 20,
            inbox_capacity: 16_384,
            max_commands_per_iteration: 4_096,
            sync_log: true,
            max_size_per_msg: 4 * 1024 * 1024,
            max_inflight_msgs: 64,
            snapshot_timeout_ms: 10_000,
        }
    }
}

/// Role of a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    Candidate,
    PreCandidate,
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// What a replica reports about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub group: PartitionId,
    pub node: NodeId,
    pub role: Role,
    pub term: u64,
    /// 0 when unknown.
    pub leader_id: NodeId,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The voters of the configuration being left, while the group is in a joint
    /// configuration (empty otherwise).
    #[serde(default)]
    pub voters_outgoing: Vec<NodeId>,
    /// Milliseconds since the leader was last heard from (0 on the leader itself).
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Snapshots this replica installed since the node started.
    pub snapshots_installed: u64,
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// When a proposal is answered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ack {
    /// Once its entry is committed and written to this node's log (client writes, ADR 014).
    Committed,
    /// Once its entry is applied to this node's store.
    Applied,
}

/// How often the loop asks raft-engine to delete fully compacted log files...
const PURGE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and how soon after a compaction, so that disk space follows the log.
const PURGE_AFTER_COMPACTION: Duration = Duration::from_secs(1);

enum Command {
    Step(Vec<Envelope>),
    Propose {
        group: PartitionId,
        id: Option<BatchId>,
        records: Vec<Record>,
        ack: Ack,
        reply: Reply<u64>,
    },
    CreateGroup {
        group: PartitionId,
        voters: Vec<NodeId>,
        reply: Reply<()>,
    },
    RemoveGroup {
        group: PartitionId,
        reply: Reply<()>,
    },
    ChangeMembership {
        group: PartitionId,
        change: ConfChangeV2,
        reply: Reply<u64>,
    },
    TransferLeader {
        group: PartitionId,
        to: NodeId,
        reply: Reply<()>,
    },
    Campaign {
        group: PartitionId,
        reply: Reply<()>,
    },
    ReadIndex {
        group: PartitionId,
        reply: Reply<u64>,
    },
    CaughtUp {
        group: PartitionId,
        reply: Reply<u64>,
    },
    Compact {
        group: PartitionId,
        reply: Reply<u64>,
    },
    Status {
        reply: Reply<Vec<ReplicaStatus>>,
    },
    Stop {
        clean: bool,
    },
    /// The applier made progress (see [`Driver::take_applied`]).
    Wake,
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    id: NodeId,
    tx: SyncSender<Command>,
    /// Set when the loop's thread ends, however it ends (stop, error or panic).
    stopped: Arc<AtomicBool>,
}

impl NodeHandle {
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Whether the node's loop has ended (stopped, or failed on an error it logged, such as
    /// a log or store write that failed), so that it will answer nothing any more.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => Error::Raft(format!("node {} is overloaded", self.id)),
            TrySendError::Disconnected(_) => Error::Raft(format!("node {} is stopped", self.id)),
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply))?;
        rx.await
            .map_err(|_| Error::Raft(format!("node {} stopped before answering", self.id)))?
    }

    /// Delivers inbound raft messages. Never blocks: when the node's queue is full the
    /// messages are dropped (Raft retransmits).
    pub fn step(&self, messages: Vec<Envelope>) {
        let _ = self.tx.try_send(Command::Step(messages));
    }

    /// Replicates `records` into `group` and waits until they are applied on this node, so
    /// that this node's store holds them when it answers. Returns the log index of the entry
    /// that carried them.
    pub async fn propose(&self, group: PartitionId, records: Vec<Record>) -> Result<u64> {
        self.call(|reply| Command::Propose {
            group,
            id: None,
            records,
            ack: Ack::Applied,
            reply,
        })
        .await
    }

    /// Replicates a client batch, which may carry an id, into `group`, and answers once its
    /// entry is committed: durable in the logs of a majority of the group, and so applied by
    /// every replica in log order whatever fails next (ADR 014). The stores may not hold it
    /// yet: [`NodeHandle::read_index`] and [`NodeHandle::caught_up`] wait until they do. A
    /// batch whose id the group already applied is not stored again, and is answered like a
    /// stored one (see [`crate::idempotency`]). Returns the log index of the entry.
    pub async fn propose_batch(
        &self,
        group: PartitionId,
        id: Option<BatchId>,
        records: Vec<Record>,
    ) -> Result<u64> {
        self.call(|reply| Command::Propose {
            group,
            id,
            records,
            ack: Ack::Committed,
            reply,
        })
        .await
    }

    /// Creates a replica of `group` here. With `voters`, the group starts with that
    /// membership (every initial replica is created with the same list); without, the replica
    /// waits to be added by the group's leader and catches up by snapshot.
    pub async fn create_group(&self, group: PartitionId, voters: Vec<NodeId>) -> Result<()> {
        self.call(|reply| Command::CreateGroup {
            group,
            voters,
            reply,
        })
        .await
    }

    /// Removes the replica of `group` from this node, with its log and its data.
    pub async fn remove_group(&self, group: PartitionId) -> Result<()> {
        self.call(|reply| Command::RemoveGroup { group, reply })
            .await
    }

    /// Proposes a membership change (on the leader); answers once it is applied here.
    pub async fn change_membership(&self, group: PartitionId, change: ConfChangeV2) -> Result<u64> {
        self.call(|reply| Command::ChangeMembership {
            group,
            change,
            reply,
        })
        .await
    }

    /// Asks the leader of `group` to hand leadership to `to`.
    pub async fn transfer_leader(&self, group: PartitionId, to: NodeId) -> Result<()> {
        self.call(|reply| Command::TransferLeader { group, to, reply })
            .await
    }

    /// Starts an election for `group` on this node.
    pub async fn campaign(&self, group: PartitionId) -> Result<()> {
        self.call(|reply| Command::Campaign { group, reply }).await
    }

    /// A linearizable read barrier: answers with an index once this replica has applied
    /// everything committed before the call (raft read-index).
    pub async fn read_index(&self, group: PartitionId) -> Result<u64> {
        self.call(|reply| Command::ReadIndex { group, reply }).await
    }

    /// A local read barrier: answers with this replica's commit index at the call once its
    /// store has applied that far. On a leader, that covers every write it acknowledged
    /// before the call; it asks no other node, so a deposed leader or a lagging follower may
    /// still be behind the group (use [`NodeHandle::read_index`] for that).
    pub async fn caught_up(&self, group: PartitionId) -> Result<u64> {
        self.call(|reply| Command::CaughtUp { group, reply }).await
    }

    /// Compacts the group's log up to its applied index now, or to what its store has saved
    /// when that is less ([`crate::store::Store::durable_index`]); answers the new first
    /// index.
    pub async fn compact(&self, group: PartitionId) -> Result<u64> {
        self.call(|reply| Command::Compact { group, reply }).await
    }

    /// The status of every replica on this node.
    pub async fn status(&self) -> Result<Vec<ReplicaStatus>> {
        self.call(|reply| Command::Status { reply }).await
    }
}

/// Membership change helpers.
pub fn add_learner(node: NodeId) -> ConfChangeV2 {
    single_change(raft::eraftpb::ConfChangeType::AddLearnerNode, node)
}

pub fn add_voter(node: NodeId) -> ConfChangeV2 {
    single_change(raft::eraftpb::ConfChangeType::AddNode, node)
}

pub fn remove_node(node: NodeId) -> ConfChangeV2 {
    single_change(raft::eraftpb::ConfChangeType::RemoveNode, node)
}

/// One joint-consensus change: `add` becomes a voter and `remove` leaves the group. The
/// group enters the joint configuration (old and new voters both need a majority) and
/// leaves it by itself once that is committed (raft-rs's automatic leave).
pub fn replace_voter(add: NodeId, remove: NodeId) -> ConfChangeV2 {
    let mut cc = add_voter(add);
    let mut out = raft::eraftpb::ConfChangeSingle::default();
    out.set_change_type(raft::eraftpb::ConfChangeType::RemoveNode);
    out.node_id = remove;
    cc.mut_changes().push(out);
    cc
}

/// Leaves a joint configuration (the empty change).
pub fn leave_joint() -> ConfChangeV2 {
    ConfChangeV2::default()
}

fn single_change(kind: raft::eraftpb::ConfChangeType, node: NodeId) -> ConfChangeV2 {
    let mut single = raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc
}

/// Sets its flag when dropped: at the end of the loop's thread, also when it unwinds.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A running node. Dropping it stops the loop like [`RaftNode::crash`].
pub struct RaftNode {
    handle: NodeHandle,
    thread: Option<JoinHandle<()>>,
}

impl RaftNode {
    /// Starts the node: recovers every group found in `log`, then serves commands.
    pub fn start(
        config: NodeConfig,
        log: RaftLog,
        store: Arc<dyn Store>,
        transport: Arc<dyn Transport>,
    ) -> Result<RaftNode> {
        if config.id == 0 {
            return Err(Error::InvalidRequest("node id 0 is reserved".into()));
        }
        let (tx, rx) = sync_channel(config.inbox_capacity);
        let wake = tx.clone();
        let applier = Applier::start(config.id, Arc::clone(&store), move || {
            let _ = wake.try_send(Command::Wake);
        })?;
        let mut driver = Driver {
            logger: raft_logger(config.id),
            config,
            log,
            store,
            transport,
            replicas: HashMap::new(),
            next_read_ctx: 1,
            applier,
            compacted: false,
        };
        for group in driver.log.groups()? {
            let group = PartitionId::try_from(group)
                .map_err(|_| Error::Internal(format!("raft log holds group {group}")))?;
            driver.recover_group(group)?;
        }
        let id = driver.config.id;
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = SetOnDrop(Arc::clone(&stopped));
        let thread = std::thread::Builder::new()
            .name(format!("raft-node-{id}"))
            .spawn(move || {
                let _flag = flag;
                driver.run(rx)
            })
            .map_err(|e| Error::Internal(format!("spawn raft thread: {e}")))?;
        Ok(RaftNode {
            handle: NodeHandle { id, tx, stopped },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the loop after the current iteration, answering waiting callers with an error.
    pub fn shutdown(mut self) {
        self.stop(true);
    }

    /// Stops the loop abruptly: nothing is answered or flushed beyond what every iteration
    /// already made durable. What a restart must cope with.
    pub fn crash(mut self) {
        self.stop(false);
    }

    fn stop(&mut self, clean: bool) {
        // A full queue must not keep a stop from getting through.
        let _ = self.handle.tx.send(Command::Stop { clean });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RaftNode {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop(false);
        }
    }
}

/// A proposal (or membership change) waiting for its entry to be applied.
struct Pending {
    index: u64,
    term: u64,
    replies: Vec<Reply<u64>>,
    /// When the replies are sent: at commit, or once the store applied the entry.
    ack: Ack,
    deadline: Instant,
    /// The entry as proposed: applied from here once committed, instead of decoding the
    /// log's copy (the entry at this index and term is this one).
    entry: Option<LogEntry>,
}

/// A write waiting to be proposed in the loop's next pass.
struct QueuedWrite {
    id: Option<BatchId>,
    records: Vec<Record>,
    ack: Ack,
    reply: Reply<u64>,
}

struct PendingRead {
    ctx: u64,
    /// Set once raft answered the read index.
    index: Option<u64>,
    reply: Reply<u64>,
    deadline: Instant,
}

struct Replica {
    group: PartitionId,
    node: RawNode<GroupStorage>,
    storage: GroupStorage,
    pending: VecDeque<Pending>,
    reads: Vec<PendingRead>,
    queued: Vec<QueuedWrite>,
    queued_changes: Vec<(ConfChangeV2, Reply<u64>)>,
    applied: u64,
    last_leader_contact: Option<Instant>,
    /// Followers this leader sent a snapshot to, and when.
    snapshots_sent: HashMap<NodeId, Instant>,
    snapshots_installed: u64,
}

impl Replica {
    fn leader_hint(&self) -> Option<NodeId> {
        let l = self.node.raft.leader_id;
        (l != 0).then_some(l)
    }

    fn waiting(&self) -> usize {
        self.pending.len() + self.reads.len() + self.queued.len()
    }
}

struct Driver {
    config: NodeConfig,
    logger: slog::Logger,
    log: RaftLog,
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    replicas: HashMap<PartitionId, Replica>,
    next_read_ctx: u64,
    /// Dropped with the driver at the end of the loop's thread: it applies what is queued
    /// (unless aborted) and joins, so a stopped node no longer writes to its store.
    applier: Applier,
    /// A log was compacted since the last purge of log files.
    compacted: bool,
}

/// Committed entries of one group, decoded, waiting to be applied.
struct Committed {
    group: PartitionId,
    /// `(index, term, entry)`; conf changes and empty entries carry an empty entry.
    entries: Vec<(u64, u64, LogEntry)>,
}

fn raft_err(e: raft::Error) -> Error {
    Error::Raft(e.to_string())
}

impl Driver {
    fn raft_config(&self, applied: u64) -> Config {
        Config {
            id: self.config.id,
            election_tick: self.config.election_ticks,
            heartbeat_tick: self.config.heartbeat_ticks,
            applied,
            max_size_per_msg: self.config.max_size_per_msg,
            max_inflight_msgs: self.config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..Config::default()
        }
    }

    /// Builds the replica of `group` from its durable state, reconciling the log with the
    /// store: a snapshot installed in the store but not yet recorded in the log is recorded
    /// now, and a commit index behind the store's applied index is raised to it.
    fn recover_group(&mut self, group: PartitionId) -> Result<()> {
        let storage = self.log.group(u64::from(group))?;
        let applied = self.store.applied_index(group)?;
        let last = storage.last_index().map_err(raft_err)?;
        let mut batch = WriteBatch::new();
        if applied > last {
            let meta_bytes = self.store.snapshot_meta(group)?;
            let meta = SnapshotMetadata::parse_from_bytes(&meta_bytes).map_err(|e| {
                Error::Internal(format!("group {group}: unreadable snapshot metadata: {e}"))
            })?;
            if meta.index != applied {
                return Err(Error::Storage {
                    operation: "recover replica",
                    reason: format!(
                        "partition {group}: the data file applied the log up to index \
                         {applied}, but the raft log ends at {last}: the raft log lost \
                         writes (a damaged or replaced log directory). Rebuild this \
                         node's replicas from the others (docs/operations.md, \"A damaged \
                         raft log\")"
                    ),
                });
            }
            storage.stage_snapshot_metadata(&mut batch, &meta)?;
        } else if applied > storage.hard_state().commit {
            storage.stage_commit_index(&mut batch, applied)?;
        }
        if !batch.is_empty() {
            self.log.write(&mut batch, true)?;
        }
        self.add_replica(group, storage, applied)
    }

    fn add_replica(
        &mut self,
        group: PartitionId,
        storage: GroupStorage,
        applied: u64,
    ) -> Result<()> {
        let store = self.store.clone();
        storage.set_snapshot_provider(Arc::new(move |gs: &GroupStorage, _request_index| {
            let data = store.export_partition(group)?;
            let meta = gs.snapshot_metadata(data.applied_index)?;
            let mut snapshot = Snapshot::default();
            snapshot.set_data(codec::encode(&data)?.into());
            snapshot.set_metadata(meta);
            Ok(snapshot)
        }));
        let config = self.raft_config(applied);
        let node = RawNode::new(&config, storage.clone(), &self.logger).map_err(raft_err)?;
        self.replicas.insert(
            group,
            Replica {
                group,
                node,
                storage,
                pending: VecDeque::new(),
                reads: Vec::new(),
                queued: Vec::new(),
                queued_changes: Vec::new(),
                applied,
                last_leader_contact: None,
                snapshots_sent: HashMap::new(),
                snapshots_installed: 0,
            },
        );
        Ok(())
    }

    fn run(mut self, rx: Receiver<Command>) {
        let tick = Duration::from_millis(self.config.tick_interval_ms.max(1));
        let mut next_tick = Instant::now() + tick;
        let mut next_purge = Instant::now() + PURGE_INTERVAL;
        let mut last_purge = Instant::now();
        loop {
            let now = Instant::now();
            let first = match rx.recv_timeout(next_tick.saturating_duration_since(now)) {
                Ok(cmd) => Some(cmd),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if let Err(e) = self.take_applied() {
                self.stop_on(e);
                return;
            }
            let mut handled = 0;
            let mut next = first;
            while let Some(cmd) = next {
                if let Command::Stop { clean } = cmd {
                    if clean {
                        self.fail_all("node is shutting down");
                    } else {
                        self.applier.abort();
                    }
                    return;
                }
                self.handle(cmd);
                handled += 1;
                next = if handled < self.config.max_commands_per_iteration {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if Instant::now() >= next_tick {
                for r in self.replicas.values_mut() {
                    r.node.tick();
                }
                next_tick = Instant::now() + tick;
            }
            if Instant::now() >= next_purge
                || (self.compacted && last_purge.elapsed() >= PURGE_AFTER_COMPACTION)
            {
                // Log files whose entries every group has compacted away are deleted.
                if let Err(e) = self.log.purge_expired_files() {
                    tracing::warn!(node = self.config.id, error = %e, "raft log purge failed");
                }
                self.compacted = false;
                last_purge = Instant::now();
                next_purge = last_purge + PURGE_INTERVAL;
            }
            if let Err(e) = self.process() {
                self.stop_on(e);
                return;
            }
        }
    }

    /// Storage failures are not survivable in-process: stop, answer everyone.
    fn stop_on(&mut self, e: Error) {
        tracing::error!(node = self.config.id, error = %e, "raft node stops");
        self.fail_all(&format!("node stopped after an error: {e}"));
    }

    /// Takes the applier's progress: raises applied indexes, lets raft-rs know, answers the
    /// reads that waited for them. An error when the applier failed.
    fn take_applied(&mut self) -> Result<()> {
        for (group, index) in self.applier.take_progress()? {
            let Some(r) = self.replicas.get_mut(&group) else {
                continue;
            };
            r.applied = r.applied.max(index);
            sync_applied(r);
            answer_reads(r);
        }
        Ok(())
    }

    fn fail_all(&mut self, why: &str) {
        for r in self.replicas.values_mut() {
            fail_replica(r, why);
        }
    }

    fn handle(&mut self, cmd: Command) {
        let max_pending = self.config.max_pending_per_group;
        match cmd {
            Command::Step(envelopes) => {
                for env in envelopes {
                    let Some(r) = self.replicas.get_mut(&env.group) else {
                        continue;
                    };
                    if env.message.from == r.node.raft.leader_id {
                        r.last_leader_contact = Some(Instant::now());
                    }
                    // Messages for another node or a stale/unknown peer are refused by raft-rs.
                    if env.message.to == self.config.id {
                        let _ = r.node.step(env.message);
                    }
                }
            }
            Command::Propose {
                group,
                id,
                records,
                ack,
                reply,
            } => match self.replicas.get_mut(&group) {
                None => {
                    let _ = reply.send(Err(Error::NotFound(format!(
                        "partition {group} on node {}",
                        self.config.id
                    ))));
                }
                Some(r) if r.node.raft.state != StateRole::Leader => {
                    let _ = reply.send(Err(Error::NotLeader {
                        partition: group,
                        leader: r.leader_hint(),
                    }));
                }
                Some(r) if r.waiting() >= max_pending => {
                    let _ = reply.send(Err(Error::Raft(format!(
                        "partition {group}: too many writes waiting"
                    ))));
                }
                Some(r) => r.queued.push(QueuedWrite {
                    id,
                    records,
                    ack,
                    reply,
                }),
            },
            Command::CreateGroup {
                group,
                voters,
                reply,
            } => {
                let _ = reply.send(self.create_group(group, voters));
            }
            Command::RemoveGroup { group, reply } => {
                let _ = reply.send(self.remove_group(group));
            }
            Command::ChangeMembership {
                group,
                change,
                reply,
            } => match self.replicas.get_mut(&group) {
                None => {
                    let _ = reply.send(Err(Error::NotFound(format!("partition {group}"))));
                }
                Some(r) if r.node.raft.state != StateRole::Leader => {
                    let _ = reply.send(Err(Error::NotLeader {
                        partition: group,
                        leader: r.leader_hint(),
                    }));
                }
                Some(r) => r.queued_changes.push((change, reply)),
            },
            Command::TransferLeader { group, to, reply } => {
                let result = match self.replicas.get_mut(&group) {
                    None => Err(Error::NotFound(format!("partition {group}"))),
                    Some(r) => {
                        r.node.transfer_leader(to);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            Command::Campaign { group, reply } => {
                let result = match self.replicas.get_mut(&group) {
                    None => Err(Error::NotFound(format!("partition {group}"))),
                    Some(r) => r.node.campaign().map_err(raft_err),
                };
                let _ = reply.send(result);
            }
            Command::ReadIndex { group, reply } => match self.replicas.get_mut(&group) {
                None => {
                    let _ = reply.send(Err(Error::NotFound(format!("partition {group}"))));
                }
                Some(r) if r.waiting() >= max_pending => {
                    let _ = reply.send(Err(Error::Raft(format!(
                        "partition {group}: too many reads waiting"
                    ))));
                }
                Some(r) => {
                    let ctx = self.next_read_ctx;
                    self.next_read_ctx += 1;
                    r.node.read_index(ctx.to_be_bytes().to_vec());
                    // The read will wait for the store to reach its index.
                    self.applier.hurry();
                    r.reads.push(PendingRead {
                        ctx,
                        index: None,
                        reply,
                        deadline: Instant::now()
                            + Duration::from_millis(self.config.proposal_timeout_ms),
                    });
                }
            },
            Command::CaughtUp { group, reply } => match self.replicas.get_mut(&group) {
                None => {
                    let _ = reply.send(Err(Error::NotFound(format!("partition {group}"))));
                }
                // Bounded by reads alone: writes waiting must not make queries partial.
                Some(r) if r.reads.len() >= max_pending => {
                    let _ = reply.send(Err(Error::Raft(format!(
                        "partition {group}: too many reads waiting"
                    ))));
                }
                Some(r) => {
                    // No raft round: the index is known now. The context is never one raft
                    // answers (those come from `next_read_ctx`).
                    r.reads.push(PendingRead {
                        ctx: u64::MAX,
                        index: Some(r.node.raft.raft_log.committed),
                        reply,
                        deadline: Instant::now()
                            + Duration::from_millis(self.config.proposal_timeout_ms),
                    });
                    answer_reads(r);
                    if !r.reads.is_empty() {
                        self.applier.hurry();
                    }
                }
            },
            Command::Compact { group, reply } => {
                let result = match self.replicas.get(&group) {
                    None => Err(Error::NotFound(format!("partition {group}"))),
                    Some(r) => self
                        .compactable(r)
                        .and_then(|to| r.storage.compact(to))
                        .and_then(|_| r.storage.first_index().map_err(raft_err)),
                };
                let _ = reply.send(result);
            }
            Command::Status { reply } => {
                let mut all: Vec<ReplicaStatus> =
                    self.replicas.values().map(|r| self.status_of(r)).collect();
                all.sort_by_key(|s| s.group);
                let _ = reply.send(Ok(all));
            }
            Command::Stop { .. } | Command::Wake => {}
        }
    }

    fn status_of(&self, r: &Replica) -> ReplicaStatus {
        let raft = &r.node.raft;
        let conf = r.storage.conf_state();
        let leader = raft.state == StateRole::Leader;
        ReplicaStatus {
            group: r.group,
            node: self.config.id,
            role: raft.state.into(),
            term: raft.term,
            leader_id: raft.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: r.applied,
            first_index: r.storage.first_index().unwrap_or(0),
            last_index: raft.raft_log.last_index(),
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            voters_outgoing: conf.voters_outgoing.clone(),
            last_heartbeat_ms_ago: if leader {
                Some(0)
            } else {
                r.last_leader_contact
                    .map(|t| t.elapsed().as_millis() as u64)
            },
            snapshots_installed: r.snapshots_installed,
        }
    }

    fn create_group(&mut self, group: PartitionId, voters: Vec<NodeId>) -> Result<()> {
        if self.replicas.contains_key(&group) {
            return Err(Error::InvalidRequest(format!(
                "partition {group} already has a replica on node {}",
                self.config.id
            )));
        }
        let storage = self.log.group(u64::from(group))?;
        if !voters.is_empty() {
            let cs = ConfState {
                voters,
                ..ConfState::default()
            };
            let mut batch = WriteBatch::new();
            storage.stage_conf_state(&mut batch, &cs)?;
            self.log.write(&mut batch, true)?;
        }
        let applied = self.store.applied_index(group)?;
        self.add_replica(group, storage, applied)
    }

    fn remove_group(&mut self, group: PartitionId) -> Result<()> {
        if !self.replicas.contains_key(&group) {
            return Err(Error::NotFound(format!("partition {group}")));
        }
        // Nothing of the group may reach the store after its data is dropped.
        self.applier.barrier()?;
        self.take_applied()?;
        let Some(mut r) = self.replicas.remove(&group) else {
            return Err(Error::NotFound(format!("partition {group}")));
        };
        fail_replica(&mut r, "the replica was removed from this node");
        self.log.remove_group(u64::from(group))?;
        self.store.drop_partition(group)
    }

    /// Steps 3 to 6 of the loop (see the module docs).
    fn process(&mut self) -> Result<()> {
        self.propose_queued();
        let now = Instant::now();
        let snapshot_timeout = Duration::from_millis(self.config.snapshot_timeout_ms);
        for r in self.replicas.values_mut() {
            expire(r, now);
            watch_snapshots(r, now, snapshot_timeout);
        }
        let mut outbox: HashMap<NodeId, Vec<Envelope>> = HashMap::new();
        let mut batch = WriteBatch::new();
        let mut sync = false;
        let mut committed = Vec::new();
        let mut readies = Vec::new();
        let groups: Vec<PartitionId> = self.replicas.keys().copied().collect();
        for group in groups {
            let Some(r) = self.replicas.get_mut(&group) else {
                continue;
            };
            if !r.node.has_ready() {
                continue;
            }
            let mut rd = r.node.ready();
            if rd.ss().is_some_and(|ss| ss.raft_state != StateRole::Leader) {
                stepped_down(r);
            }
            let messages = rd.take_messages();
            for m in &messages {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    r.snapshots_sent.insert(m.to, Instant::now());
                }
            }
            queue_messages(&mut outbox, group, messages);
            if !rd.snapshot().is_empty() {
                // The snapshot replaces what the applier may still be writing.
                self.applier.barrier()?;
                install_snapshot(self.store.as_ref(), r, rd.snapshot(), &mut batch)?;
            }
            let entries = rd.take_committed_entries();
            committed.push(decode_committed(r, entries, &mut batch)?);
            r.storage.stage_append(&mut batch, rd.entries())?;
            if let Some(hs) = rd.hs() {
                r.storage.stage_hard_state(&mut batch, hs)?;
            }
            for rs in rd.take_read_states() {
                note_read_state(r, &rs.request_ctx, rs.index);
            }
            sync |= rd.must_sync();
            readies.push((group, rd));
        }
        self.flush(&mut outbox);
        if !batch.is_empty() {
            self.log.write(&mut batch, sync && self.config.sync_log)?;
        }
        self.hand_over(committed)?;
        let mut later = Vec::new();
        for (group, rd) in readies {
            let Some(r) = self.replicas.get_mut(&group) else {
                continue;
            };
            let mut rd = rd;
            queue_messages(&mut outbox, group, rd.take_persisted_messages());
            let mut light = r.node.advance_append(rd);
            // An installed snapshot moved `applied`.
            sync_applied(r);
            queue_messages(&mut outbox, group, light.take_messages());
            let entries = light.take_committed_entries();
            if !entries.is_empty() {
                later.push(decode_committed(r, entries, &mut batch)?);
            }
        }
        if !batch.is_empty() {
            self.log.write(&mut batch, self.config.sync_log)?;
        }
        self.hand_over(later)?;
        self.flush(&mut outbox);
        self.destroy_removed()?;
        self.maybe_compact()?;
        Ok(())
    }

    /// A replica whose group no longer lists this node (it was removed by a membership
    /// change) stops taking part: it is dropped with its log and data, and its waiting
    /// callers are answered. The remaining members elect a leader without it.
    fn destroy_removed(&mut self) -> Result<()> {
        let me = self.config.id;
        let removed: Vec<PartitionId> = self
            .replicas
            .values()
            .filter(|r| {
                let cs = r.storage.conf_state();
                let initialized = !cs.voters.is_empty() || !cs.learners.is_empty();
                initialized
                    && !cs.voters.contains(&me)
                    && !cs.learners.contains(&me)
                    && !cs.voters_outgoing.contains(&me)
            })
            .map(|r| r.group)
            .collect();
        for group in removed {
            tracing::info!(
                node = me,
                group,
                "replica removed from its group; dropping it"
            );
            self.remove_group(group)?;
        }
        Ok(())
    }

    fn propose_queued(&mut self) {
        let timeout = Duration::from_millis(self.config.proposal_timeout_ms);
        let max_records = self.config.max_entry_records.max(1);
        for r in self.replicas.values_mut() {
            for (change, reply) in std::mem::take(&mut r.queued_changes) {
                match r.node.propose_conf_change(vec![], change) {
                    Ok(()) => track(r, vec![reply], Ack::Applied, timeout, None),
                    Err(e) => {
                        let _ = reply.send(Err(proposal_error(r, e)));
                    }
                }
            }
            let queued = std::mem::take(&mut r.queued);
            let mut entry = LogEntry::default();
            let mut replies = Vec::new();
            let mut entry_ack = Ack::Committed;
            let flush =
                |r: &mut Replica, entry: &mut LogEntry, replies: &mut Vec<Reply<u64>>, ack: Ack| {
                    if replies.is_empty() {
                        return;
                    }
                    let taken = std::mem::take(replies);
                    let mut proposed = std::mem::take(entry);
                    proposed.proposed_at_micros = Timestamp::now().as_micros();
                    let result = encode_entry(&proposed).and_then(|data| {
                        r.node
                            .propose(vec![], data)
                            .map_err(|e| proposal_error(r, e))
                    });
                    match result {
                        Ok(()) => track(r, taken, ack, timeout, Some(proposed)),
                        Err(e) => {
                            for reply in taken {
                                let _ = reply.send(Err(clone_error(&e)));
                            }
                        }
                    }
                };
            for QueuedWrite {
                id,
                records: batch,
                ack,
                reply,
            } in queued
            {
                // An entry's callers are all answered alike, so a change of `ack` starts one.
                if !replies.is_empty()
                    && (ack != entry_ack || entry.records.len() + batch.len() > max_records)
                {
                    flush(r, &mut entry, &mut replies, entry_ack);
                }
                entry_ack = ack;
                entry.push_batch(id, batch);
                replies.push(reply);
            }
            flush(r, &mut entry, &mut replies, entry_ack);
        }
    }

    fn flush(&self, outbox: &mut HashMap<NodeId, Vec<Envelope>>) {
        for (to, batch) in outbox.drain() {
            if !batch.is_empty() {
                self.transport.send(to, batch);
            }
        }
    }

    /// Hands committed entries of all groups to the applier, with the proposals that wait
    /// for their application; proposals acknowledged at commit are answered now, as are
    /// those their entries superseded. Urgent when a proposal or a read waits for the store;
    /// a read that comes later makes the applier hurry.
    fn hand_over(&mut self, committed: Vec<Committed>) -> Result<()> {
        let mut applying = Vec::new();
        let mut urgent = false;
        for c in committed {
            let Some(r) = self.replicas.get_mut(&c.group) else {
                continue;
            };
            urgent |= !r.reads.is_empty();
            for (index, term, entry) in c.entries {
                let mut replies = Vec::new();
                while r.pending.front().is_some_and(|p| p.index <= index) {
                    let Some(p) = r.pending.pop_front() else {
                        break;
                    };
                    if p.index == index && p.term == term {
                        match p.ack {
                            // Committed, and in this node's log since the write before
                            // this hand-over (ADR 014).
                            Ack::Committed => {
                                for reply in p.replies {
                                    let _ = reply.send(Ok(index));
                                }
                            }
                            Ack::Applied => replies.extend(p.replies),
                        }
                    } else {
                        for reply in p.replies {
                            let _ = reply.send(Err(Error::Raft(format!(
                                "partition {}: the write was superseded by another leader's entry; retry",
                                c.group
                            ))));
                        }
                    }
                }
                urgent |= !replies.is_empty();
                applying.push(Applying {
                    group: c.group,
                    index,
                    entry,
                    replies,
                });
            }
        }
        self.applier.hand_over(applying, urgent)
    }

    fn maybe_compact(&mut self) -> Result<()> {
        let limits = CompactionLimits {
            threshold_entries: self.config.compact_threshold_entries,
            threshold_bytes: self.config.compact_threshold_bytes,
            keep_entries: self.config.compact_keep_entries,
            keep_bytes: self.config.compact_keep_bytes,
        };
        for r in self.replicas.values() {
            let first = r.storage.first_index().map_err(raft_err)?;
            let durable = self.compactable(r)?;
            if durable < first {
                continue;
            }
            let raft = &r.node.raft;
            let followers_need = (raft.state == StateRole::Leader)
                .then(|| {
                    raft.prs()
                        .iter()
                        .filter(|&(&id, _)| id != self.config.id)
                        .map(|(_, p)| p.matched + 1)
                        .min()
                })
                .flatten();
            let span = LogSpan {
                first,
                applied: r.applied,
                durable,
                followers_need,
            };
            if let Some(to) = r
                .storage
                .with_log_bytes(|bytes| compaction::compact_to(span, &limits, bytes))
            {
                r.storage.compact(to)?;
                self.compacted = true;
            }
        }
        Ok(())
    }

    /// How far the replica's log may be compacted: to what its store has applied and
    /// will not lose in a crash (a store behind the log saves writes at checkpoints).
    fn compactable(&self, r: &Replica) -> Result<u64> {
        Ok(r.applied.min(self.store.durable_index(r.group)?))
    }
}

/// Tells raft-rs how far the replica is applied (never past what its log holds durably).
fn sync_applied(r: &mut Replica) {
    let log = &r.node.raft.raft_log;
    let to = r.applied.min(log.committed).min(log.persisted);
    if to > log.applied {
        r.node.advance_apply_to(to);
    }
}

fn fail_replica(r: &mut Replica, why: &str) {
    let err = || Error::Raft(format!("partition {}: {why}", r.group));
    for p in r.pending.drain(..) {
        for reply in p.replies {
            let _ = reply.send(Err(err()));
        }
    }
    for read in r.reads.drain(..) {
        let _ = read.reply.send(Err(err()));
    }
    for w in r.queued.drain(..) {
        let _ = w.reply.send(Err(err()));
    }
    for (_, reply) in r.queued_changes.drain(..) {
        let _ = reply.send(Err(err()));
    }
}

/// Answers at once the proposals of a replica that stopped leading: their entries may still
/// be committed by the next leader or be replaced, so their outcome is unknown, and a caller
/// that can resend (under a batch id) should not wait for the proposal timeout to learn it.
fn stepped_down(r: &mut Replica) {
    for p in r.pending.drain(..) {
        for reply in p.replies {
            let _ = reply.send(Err(Error::Raft(format!(
                "partition {}: this node stopped leading before the write committed (outcome unknown)",
                r.group
            ))));
        }
    }
}

fn track(
    r: &mut Replica,
    replies: Vec<Reply<u64>>,
    ack: Ack,
    timeout: Duration,
    entry: Option<LogEntry>,
) {
    let index = r.node.raft.raft_log.last_index();
    let term = r.node.raft.term;
    r.pending.push_back(Pending {
        index,
        term,
        replies,
        ack,
        deadline: Instant::now() + timeout,
        entry,
    });
}

/// The entry this node proposed at `index` in `term`, if it still waits for it.
fn take_proposed(r: &mut Replica, index: u64, term: u64) -> Option<LogEntry> {
    r.pending
        .iter_mut()
        .take_while(|p| p.index <= index)
        .find(|p| p.index == index && p.term == term)
        .and_then(|p| p.entry.take())
}

fn proposal_error(r: &Replica, e: raft::Error) -> Error {
    match e {
        raft::Error::ProposalDropped => Error::NotLeader {
            partition: r.group,
            leader: r.leader_hint(),
        },
        other => raft_err(other),
    }
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::NotLeader { partition, leader } => Error::NotLeader {
            partition: *partition,
            leader: *leader,
        },
        other => Error::Raft(other.to_string()),
    }
}

/// Answers proposals and reads that waited too long. A timed-out write may still be applied
/// later: its outcome is unknown to the caller.
fn expire(r: &mut Replica, now: Instant) {
    while r.pending.front().is_some_and(|p| p.deadline <= now) {
        if let Some(p) = r.pending.pop_front() {
            for reply in p.replies {
                let _ = reply.send(Err(Error::Raft(format!(
                    "partition {}: timed out waiting for the write to commit (outcome unknown)",
                    r.group
                ))));
            }
        }
    }
    let group = r.group;
    r.reads.retain_mut(|read| {
        if read.deadline > now {
            return true;
        }
        let (reply, _) = oneshot::channel();
        let reply = std::mem::replace(&mut read.reply, reply);
        let _ = reply.send(Err(Error::Raft(format!(
            "partition {group}: read index timed out"
        ))));
        false
    });
}

/// raft-rs waits for a snapshot's outcome before replicating to that follower again; a lost
/// snapshot message would stall it forever. A snapshot that has not taken effect in time is
/// reported failed, and the leader sends a fresh one.
fn watch_snapshots(r: &mut Replica, now: Instant, timeout: Duration) {
    if r.snapshots_sent.is_empty() {
        return;
    }
    let mut failed = Vec::new();
    r.snapshots_sent.retain(|&peer, &mut sent| {
        let waiting = r
            .node
            .raft
            .prs()
            .get(peer)
            .is_some_and(|p| p.state == ProgressState::Snapshot);
        if waiting && now.duration_since(sent) > timeout {
            failed.push(peer);
            return false;
        }
        waiting
    });
    for peer in failed {
        tracing::warn!(
            group = r.group,
            peer,
            "snapshot not installed in time; resending"
        );
        r.node.report_snapshot(peer, SnapshotStatus::Failure);
    }
}

fn note_read_state(r: &mut Replica, ctx: &[u8], index: u64) {
    let Ok(bytes) = <[u8; 8]>::try_from(ctx) else {
        return;
    };
    let ctx = u64::from_be_bytes(bytes);
    if let Some(read) = r.reads.iter_mut().find(|read| read.ctx == ctx) {
        read.index = Some(index);
    }
    answer_reads(r);
}

fn answer_reads(r: &mut Replica) {
    let applied = r.applied;
    let mut i = 0;
    while i < r.reads.len() {
        if r.reads[i].index.is_some_and(|idx| idx <= applied) {
            let read = r.reads.swap_remove(i);
            let _ = read.reply.send(Ok(read.index.unwrap_or(applied)));
        } else {
            i += 1;
        }
    }
}

fn queue_messages(
    outbox: &mut HashMap<NodeId, Vec<Envelope>>,
    group: PartitionId,
    messages: Vec<Message>,
) {
    for message in messages {
        outbox
            .entry(message.to)
            .or_default()
            .push(Envelope { group, message });
    }
}

/// Installs a snapshot received from the leader: the data goes into the store first (with
/// the snapshot metadata, atomically), then the log records it. A crash in between is
/// repaired by `recover_group`.
fn install_snapshot(
    store: &dyn Store,
    r: &mut Replica,
    snapshot: &Snapshot,
    batch: &mut WriteBatch,
) -> Result<()> {
    let meta = snapshot.get_metadata();
    let mut data: PartitionSnapshot = codec::decode(snapshot.get_data())?;
    if data.partition != r.group || data.applied_index != meta.index {
        return Err(Error::Internal(format!(
            "snapshot for partition {} at {} does not match group {} at {}",
            data.partition, data.applied_index, r.group, meta.index
        )));
    }
    data.meta = meta
        .write_to_bytes()
        .map_err(|e| Error::Internal(format!("encode snapshot metadata: {e}")))?;
    store.import_partition(&data)?;
    r.storage.stage_snapshot_metadata(batch, meta)?;
    r.applied = meta.index;
    r.snapshots_installed += 1;
    tracing::info!(
        group = r.group,
        index = meta.index,
        rows = data.points.len(),
        "installed snapshot"
    );
    Ok(())
}

/// Decodes committed entries; conf changes are applied to the raw node now and their new
/// conf state staged into `batch`, so membership is durable before the store moves past it.
fn decode_committed(
    r: &mut Replica,
    entries: Vec<Entry>,
    batch: &mut WriteBatch,
) -> Result<Committed> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let entry = match e.get_entry_type() {
            EntryType::EntryNormal if e.data.is_empty() => LogEntry::default(),
            EntryType::EntryNormal => match take_proposed(r, e.index, e.term) {
                Some(entry) => entry,
                None => decode_entry(&e.data)?,
            },
            EntryType::EntryConfChange => {
                let cc = ConfChange::parse_from_bytes(&e.data)
                    .map_err(|err| Error::Internal(format!("bad conf change: {err}")))?;
                apply_conf_change(r, &cc, batch)?;
                LogEntry::default()
            }
            EntryType::EntryConfChangeV2 => {
                let cc = ConfChangeV2::parse_from_bytes(&e.data)
                    .map_err(|err| Error::Internal(format!("bad conf change: {err}")))?;
                apply_conf_change(r, &cc, batch)?;
                LogEntry::default()
            }
        };
        out.push((e.index, e.term, entry));
    }
    Ok(Committed {
        group: r.group,
        entries: out,
    })
}

fn apply_conf_change(
    r: &mut Replica,
    cc: &impl raft_proto::ConfChangeI,
    batch: &mut WriteBatch,
) -> Result<()> {
    match r.node.apply_conf_change(cc) {
        Ok(cs) => r.storage.stage_conf_state(batch, &cs),
        // An invalid change (e.g. removing the last voter) is skipped, as raft-rs does.
        Err(e) => {
            tracing::warn!(group = r.group, error = %e, "conf change refused");
            Ok(())
        }
    }
}
