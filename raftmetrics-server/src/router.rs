//! Where a partition's writes and reads go: the cluster view, leader hints, worker liveness.
//!
//! Both roles route: the control node for every insert and query, a worker for inserts of
//! partitions it does not lead (forwarded to the leader). [`Router::write`] proposes a batch
//! to the partition's leader, following `NotLeader` hints and trying the other replicas
//! while an election runs, until the deadline.
//!
//! A batch with a batch id ([`BatchId`]; the insert path gives every batch one) is stored
//! once however often it is proposed, so it is also retried when its outcome is unknown
//! (connection lost after sending, proposal timeout, a leader change under it). A batch
//! without one is retried only when it certainly was not proposed (no connection, or
//! refused by a non-leader); an unknown outcome is reported as such and never resent. Either
//! way an acknowledged point is stored exactly once.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raftmetrics_core::BatchId;
use raftmetrics_core::error::{Error, Result};
use raftmetrics_core::model::Record;
use raftmetrics_core::raft::{NodeHandle, NodeId, ReplicaStatus, Role};
use raftmetrics_core::{HashPartitioner, PartitionId, Partitioner};
use tracing::debug;

use crate::rpc::{ClusterView, Request, Response, RpcClient, RpcError, Share, WorkerInfo};

/// Pause between rounds of attempts while a partition has no reachable leader.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest wait for one node's answer to a write. A healthy leader answers in milliseconds;
/// a leader that stopped answering (paused, partitioned away) has been replaced after an
/// election timeout or two, so waiting longer only holds the client. The outcome of a write
/// that timed out is unknown and goes back to the client as such.
pub const WRITE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most attempts of one write (each bounded by the deadline too).
const MAX_ATTEMPTS: usize = 200;

/// A worker as the router sees it.
#[derive(Clone, Debug)]
pub struct Peer {
    pub info: WorkerInfo,
    pub addr: Option<SocketAddr>,
}

/// Routing state shared by a node's tasks.
pub struct Router {
    /// This worker's raft node (None on the control node).
    local: Option<NodeHandle>,
    rpc: Arc<RpcClient>,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    view: Option<ClusterView>,
    peers: HashMap<NodeId, Peer>,
    /// Last known leader of each partition.
    leaders: HashMap<PartitionId, NodeId>,
}

impl Router {
    pub fn new(local: Option<NodeHandle>, rpc: Arc<RpcClient>) -> Self {
        Router {
            local,
            rpc,
            state: RwLock::new(State::default()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs a new cluster view with the workers' resolved addresses.
    pub fn set_view(&self, view: ClusterView, addrs: &HashMap<NodeId, SocketAddr>) {
        let mut s = self.write_state();
        s.peers = view
            .workers
            .iter()
            .map(|w| {
                (
                    w.id,
                    Peer {
                        info: w.clone(),
                        addr: addrs.get(&w.id).copied(),
                    },
                )
            })
            .collect();
        s.view = Some(view);
    }

    /// The current view, if any.
    pub fn view(&self) -> Option<ClusterView> {
        self.read().view.clone()
    }

    /// Replicas of `partition` a write may go to: its voters in placement order, then the
    /// target of a move in flight (which may lead once it is promoted, before the placement
    /// says so; as a learner it answers with a leader hint).
    pub fn replicas(&self, partition: PartitionId) -> Vec<NodeId> {
        self.read()
            .view
            .as_ref()
            .map(|v| v.holders(partition).collect())
            .unwrap_or_default()
    }

    pub fn peer(&self, node: NodeId) -> Option<Peer> {
        self.read().peers.get(&node).cloned()
    }

    /// Records `leader` as the leader of `partition`.
    pub fn hint_leader(&self, partition: PartitionId, leader: NodeId) {
        self.write_state().leaders.insert(partition, leader);
    }

    /// Learns leaders from replica statuses (a worker's heartbeat or its own node).
    pub fn learn(&self, statuses: &[ReplicaStatus]) {
        let mut s = self.write_state();
        for st in statuses {
            if st.role == Role::Leader {
                s.leaders.insert(st.group, st.node);
            } else if st.leader_id != 0 {
                s.leaders.entry(st.group).or_insert(st.leader_id);
            }
        }
    }

    /// Last known leader of `partition`.
    pub fn leader(&self, partition: PartitionId) -> Option<NodeId> {
        self.read().leaders.get(&partition).copied()
    }

    fn local_id(&self) -> Option<NodeId> {
        self.local.as_ref().map(NodeHandle::id)
    }

    /// Proposes `records` (the batch `id`, if any) to `partition` and waits until they are
    /// applied on its leader. Answers the leader's id and the log index.
    pub async fn write(
        &self,
        partition: PartitionId,
        id: Option<BatchId>,
        records: Vec<Record>,
        deadline: Instant,
    ) -> Result<(NodeId, u64)> {
        self.write_avoiding(partition, id, records, deadline, None)
            .await
    }

    /// [`Router::write`], not trying `avoid` first (a node that just left the outcome of
    /// this write unknown).
    async fn write_avoiding(
        &self,
        partition: PartitionId,
        id: Option<BatchId>,
        records: Vec<Record>,
        deadline: Instant,
        avoid: Option<NodeId>,
    ) -> Result<(NodeId, u64)> {
        let replicas = self.replicas(partition);
        if replicas.is_empty() {
            return Err(Error::Raft(format!(
                "partition {partition} has no replicas yet: waiting for workers to register"
            )));
        }
        let retry_unknown = id.is_some();
        // Built once: every attempt sends the same request.
        let request = Request::Write {
            partition,
            id,
            records,
        };
        let mut next_replica = 0usize;
        let mut target = self
            .leader(partition)
            .filter(|l| replicas.contains(l) && Some(*l) != avoid);
        // A node that left a write's outcome unknown is not tried next.
        let mut avoid = avoid;
        let mut last_error = String::from("no attempt made");
        for _ in 0..MAX_ATTEMPTS {
            if Instant::now() >= deadline {
                break;
            }
            let node = match target.take() {
                Some(n) => n,
                None => {
                    if replicas.len() > 1
                        && avoid.take() == Some(replicas[next_replica % replicas.len()])
                    {
                        next_replica += 1;
                    }
                    let n = replicas[next_replica % replicas.len()];
                    next_replica += 1;
                    if next_replica.is_multiple_of(replicas.len()) {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    n
                }
            };
            let outcome = self.write_to(node, &request, deadline).await;
            match outcome {
                Ok(index) => {
                    self.hint_leader(partition, node);
                    return Ok((node, index));
                }
                Err(Attempt::Redirect(hint)) => {
                    last_error = format!("node {node} is not the leader");
                    target = hint.filter(|h| *h != node && replicas.contains(h));
                    if let Some(h) = target {
                        self.hint_leader(partition, h);
                    } else {
                        tokio::time::sleep(RETRY_PAUSE / 2).await;
                    }
                }
                Err(Attempt::NotSent(reason)) => {
                    debug!(partition, node, %reason, "write not sent; trying another replica");
                    last_error = reason;
                }
                Err(Attempt::Unknown(e)) if retry_unknown => {
                    debug!(partition, node, error = %e, "write outcome unknown; resending under its batch id");
                    last_error = e.to_string();
                    // Heartbeats may have named a new leader meanwhile.
                    target = self
                        .leader(partition)
                        .filter(|l| *l != node && replicas.contains(l));
                    avoid = Some(node);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(Attempt::Unknown(e) | Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(Error::Raft(format!(
            "partition {partition}: no leader accepted the write before the deadline ({last_error})"
        )))
    }

    async fn write_to(
        &self,
        node: NodeId,
        request: &Request,
        deadline: Instant,
    ) -> std::result::Result<u64, Attempt> {
        if let Some(local) = self.local.as_ref().filter(|h| h.id() == node) {
            let Request::Write {
                partition,
                id,
                records,
            } = request
            else {
                return Err(Attempt::Failed(Error::Internal("not a write".into())));
            };
            return match local
                .propose_batch(*partition, id.clone(), records.clone())
                .await
            {
                Ok(index) => Ok(index),
                Err(e) => Err(Attempt::from_error(e)),
            };
        }
        let Some(addr) = self.peer(node).and_then(|p| p.addr) else {
            return Err(Attempt::NotSent(format!("address of node {node} unknown")));
        };
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(WRITE_ATTEMPT_TIMEOUT);
        match self.rpc.call(node, addr, request, timeout).await {
            Ok(Response::Written { index }) => Ok(index),
            Ok(Response::Error(e)) => Err(Attempt::from_error(Error::from(e))),
            Ok(other) => Err(Attempt::Failed(Error::Internal(format!(
                "unexpected answer to a write: {other:?}"
            )))),
            Err(RpcError::NotSent { reason, .. }) => Err(Attempt::NotSent(reason)),
            Err(e @ RpcError::Unknown { .. }) => Err(Attempt::Unknown(Error::Raft(format!(
                "outcome unknown, the write may or may not be stored: {e}"
            )))),
        }
    }

    /// Whether this node is a replica of `partition`.
    pub fn holds(&self, partition: PartitionId) -> bool {
        self.local_id()
            .is_some_and(|id| self.replicas(partition).contains(&id))
    }
}

/// What a stored batch touched.
#[derive(Clone, Debug)]
pub struct BatchOutcome {
    pub points: usize,
    /// `(partition, leader that stored it)`, ascending by partition.
    pub partitions: Vec<(PartitionId, NodeId)>,
}

/// Splits validated `records` by partition and writes every partition's share through
/// [`Router::write`], all partitions at once, each under the batch `id` (a partition
/// remembers ids on its own, so the shares do not collide). Each partition's share is
/// stored exactly once or not at all; when some partitions fail, the error names the ones
/// that were stored, and resending the whole batch under the same id stores the rest.
pub async fn write_batch(
    router: &Arc<Router>,
    partitioner: &HashPartitioner,
    id: Option<BatchId>,
    records: Vec<Record>,
    deadline: Instant,
) -> Result<BatchOutcome> {
    let points = records.len();
    let mut by_partition: BTreeMap<PartitionId, Vec<Record>> = BTreeMap::new();
    for r in records {
        by_partition
            .entry(partitioner.partition_of(r.partition_key()))
            .or_default()
            .push(r);
    }
    let (mut stored, rest, mut failed) = match &id {
        Some(id) => write_grouped(router, id, by_partition, deadline).await,
        None => (
            Vec::new(),
            by_partition
                .into_iter()
                .map(|(p, r)| (p, r, None))
                .collect(),
            Vec::new(),
        ),
    };
    // Every share not stored yet goes its own way, with redirects and retries.
    let mut tasks = tokio::task::JoinSet::new();
    for (partition, records, avoid) in rest {
        let router = Arc::clone(router);
        let id = id.clone();
        tasks.spawn(async move {
            let written = router
                .write_avoiding(partition, id, records, deadline, avoid)
                .await;
            (partition, written)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((p, Ok((leader, _)))) => stored.push((p, leader)),
            Ok((p, Err(e))) => failed.push((p, e)),
            Err(e) => failed.push((u32::MAX, Error::Internal(format!("write task: {e}")))),
        }
    }
    stored.sort_unstable();
    if failed.is_empty() {
        return Ok(BatchOutcome {
            points,
            partitions: stored,
        });
    }
    failed.sort_by_key(|(p, _)| *p);
    let (first_partition, first) = failed.swap_remove(0);
    if stored.is_empty() && failed.is_empty() {
        return Err(first);
    }
    let stored: Vec<PartitionId> = stored.iter().map(|(p, _)| *p).collect();
    Err(Error::Raft(format!(
        "partition {first_partition} failed ({first}); {} other partition(s) failed; \
         partitions stored: {stored:?}",
        failed.len()
    )))
}

/// First round of an insert's writes: one call per known leader, carrying the shares of all
/// the partitions it leads (a request over 16 partitions and 2 workers is 2 calls, not 16).
/// Answers the shares stored and gives back the others (no known leader, led here, refused,
/// or an unknown outcome: resending them under the batch id is harmless), each with the node
/// not to try first, and the shares whose call failed in a way that lost them.
async fn write_grouped(
    router: &Arc<Router>,
    id: &BatchId,
    shares: BTreeMap<PartitionId, Vec<Record>>,
    deadline: Instant,
) -> (
    Vec<(PartitionId, NodeId)>,
    Vec<Remaining>,
    Vec<(PartitionId, Error)>,
) {
    let mut rest = Vec::new();
    let mut by_leader: BTreeMap<NodeId, Vec<Share>> = BTreeMap::new();
    for (partition, records) in shares {
        let leader = router
            .leader(partition)
            .filter(|l| router.replicas(partition).contains(l) && Some(*l) != router.local_id());
        match leader {
            Some(l) => by_leader.entry(l).or_default().push(Share {
                partition,
                id: Some(id.clone()),
                records,
            }),
            None => rest.push((partition, records, None)),
        }
    }
    let mut calls = tokio::task::JoinSet::new();
    let mut in_call: HashMap<tokio::task::Id, Vec<PartitionId>> = HashMap::new();
    for (node, shares) in by_leader {
        let Some(addr) = router.peer(node).and_then(|p| p.addr) else {
            rest.extend(shares.into_iter().map(|s| (s.partition, s.records, None)));
            continue;
        };
        let partitions: Vec<PartitionId> = shares.iter().map(|s| s.partition).collect();
        let router = Arc::clone(router);
        let call = calls.spawn(async move {
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .min(WRITE_ATTEMPT_TIMEOUT);
            let request = Request::WriteMany(shares);
            let answer = router.rpc.call(node, addr, &request, timeout).await;
            let Request::WriteMany(shares) = request else {
                unreachable!("built above")
            };
            (node, shares, answer)
        });
        in_call.insert(call.id(), partitions);
    }
    let mut stored = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let (node, shares, answer) = match joined {
            Ok(done) => done,
            Err(e) => {
                // The shares went down with the task: reported failed, never dropped.
                for p in in_call.remove(&e.id()).unwrap_or_default() {
                    failed.push((p, Error::Internal(format!("write task: {e}"))));
                }
                continue;
            }
        };
        let results = match answer {
            Ok(Response::WrittenMany(results)) if results.len() == shares.len() => results,
            other => {
                debug!(
                    node,
                    ?other,
                    "grouped write failed; writing its shares one by one"
                );
                let avoid = matches!(other, Err(RpcError::Unknown { .. })).then_some(node);
                rest.extend(shares.into_iter().map(|s| (s.partition, s.records, avoid)));
                continue;
            }
        };
        for (share, result) in shares.into_iter().zip(results) {
            match result {
                Ok(_) => stored.push((share.partition, node)),
                Err(e) => {
                    if let Some((_, Some(hint))) = e.not_leader {
                        router.hint_leader(share.partition, hint);
                    }
                    rest.push((share.partition, share.records, None));
                }
            }
        }
    }
    (stored, rest, failed)
}

/// A share still to write: partition, records, a node not to try first.
type Remaining = (PartitionId, Vec<Record>, Option<NodeId>);

enum Attempt {
    /// Refused by a non-leader (with its hint): not proposed.
    Redirect(Option<NodeId>),
    /// Certainly not delivered.
    NotSent(String),
    /// Maybe proposed, maybe stored: retried only under a batch id.
    Unknown(Error),
    /// A definite error: not retried.
    Failed(Error),
}

impl Attempt {
    /// What a node's error answer to a write means for the next attempt.
    fn from_error(e: Error) -> Attempt {
        match e {
            Error::NotLeader { leader, .. } => Attempt::Redirect(leader),
            Error::NotFound(_) => Attempt::Redirect(None),
            // Timeouts, superseded entries, an overloaded or stopping node: the write may
            // or may not be in the log.
            e @ Error::Raft(_) => Attempt::Unknown(e),
            e => Attempt::Failed(e),
        }
    }
}
