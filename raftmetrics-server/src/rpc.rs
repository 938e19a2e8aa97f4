//! Internal RPC between nodes: requests, answers, and a pooled client.
//!
//! Calls travel as [`WireMessage::Call`] / [`WireMessage::Reply`] frames on authenticated
//! node-to-node connections (the same handshake as raft traffic, see [`crate::wire`]). A
//! connection carries one call at a time; [`RpcClient`] keeps a few idle connections per
//! peer and opens more when calls overlap.
//!
//! Errors say whether a request may have taken effect: [`RpcError::NotSent`] means it
//! certainly did not (no connection), anything after the request was written is
//! [`RpcError::Unknown`]. Only the first is safe to retry for writes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use raftmetrics_core::aggregate::PartialAggregate;
use raftmetrics_core::error::{Error, ErrorCode, FieldError};
use raftmetrics_core::export::{Cursor, ExportPage, Selection};
use raftmetrics_core::model::Record;
use raftmetrics_core::query::Query;
use raftmetrics_core::raft::{NodeId, ReplicaStatus};
use raftmetrics_core::series::records_codec;
use raftmetrics_core::{BatchId, PartitionId, codec};
use serde::{Deserialize, Serialize};
use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::wire::frame::{ClusterAuth, WireError, WireMessage, read_frame, write_frame};
use crate::wire::tcp_transport::client_handshake;

/// "Any control node" on the node-to-node wire: a worker calls its control nodes by address
/// under this id, and the handshake accepts whichever control node answers there
/// ([`is_control_wire_id`]). Control node `k` is [`control_wire_id`]`(k)`. Control ids never
/// collide with a worker's, which are at most [`MAX_WORKER_ID`].
pub const CONTROL_WIRE_ID: NodeId = 1 << 63;

/// Most control nodes a cluster has (voters of the metadata group).
pub const MAX_CONTROL_NODES: u64 = 5;

/// Control node `k`'s (1-based) id on the node-to-node wire.
pub fn control_wire_id(k: u64) -> NodeId {
    CONTROL_WIRE_ID + k
}

/// Whether `id` is a control node's wire id (not [`CONTROL_WIRE_ID`] itself).
pub fn is_control_wire_id(id: NodeId) -> bool {
    id > CONTROL_WIRE_ID && id <= CONTROL_WIRE_ID + MAX_CONTROL_NODES
}

/// Whether the node that answered a handshake as `got` is the node that was called as
/// `expected`: the same id, or any control node when [`CONTROL_WIRE_ID`] was called.
pub fn answers_for(expected: NodeId, got: NodeId) -> bool {
    got == expected || (expected == CONTROL_WIRE_ID && is_control_wire_id(got))
}

/// Largest worker node id.
pub const MAX_WORKER_ID: u64 = (1 << 62) - 1;

/// A worker as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: NodeId,
    /// `host:port` of the public HTTP API.
    pub http_addr: String,
    /// `host:port` of the node-to-node listener.
    pub internal_addr: String,
}

/// What the control node tells workers: where every partition's replicas live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The placement's version ([`crate::cluster_state::ClusterState::epoch`]); a node
    /// ignores a view older than the one it holds.
    pub epoch: u64,
    pub partitions: u32,
    pub replication_factor: u32,
    /// `placement[p]`: the workers holding a voter of partition `p` (empty until enough
    /// workers registered).
    pub placement: Vec<Vec<NodeId>>,
    /// `learners[p]`: the target of partition `p`'s move in flight, while it catches up.
    pub learners: Vec<Vec<NodeId>>,
    /// `founders[p]`: the voters partition `p` was created with, while no move has touched
    /// it; only these create their replica with the group's voters, every other replica
    /// starts empty and catches up from the leader.
    pub founders: Vec<Vec<NodeId>>,
    pub workers: Vec<WorkerInfo>,
}

impl ClusterView {
    /// Voters and learners of `partition`: the replicas a worker keeps.
    pub fn holders(&self, partition: PartitionId) -> impl Iterator<Item = NodeId> + '_ {
        let at = partition as usize;
        self.placement
            .get(at)
            .into_iter()
            .chain(self.learners.get(at))
            .flatten()
            .copied()
    }
}

/// A membership change the control node asks of a partition's leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Membership {
    /// Add a learner (an empty replica that catches up by snapshot, then log).
    AddLearner(NodeId),
    /// One joint-consensus change: `add` becomes a voter and `remove` leaves (raft leaves
    /// the joint configuration by itself once it is committed).
    Replace { add: NodeId, remove: NodeId },
    /// Remove a replica (a learner whose move was rolled back).
    Remove(NodeId),
    /// Leave a joint configuration (when the automatic leave did not happen).
    LeaveJoint,
}

/// A worker's registration, repeated as its heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub worker: WorkerInfo,
    pub replicas: Vec<ReplicaStatus>,
    pub storage_bytes: u64,
    /// The epoch of the newest cluster view the worker applied: a control node holding an
    /// older placement knows it is behind.
    pub epoch: u64,
}

/// A request from one node to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Worker → control: register or heartbeat; answered with [`Response::View`].
    Register(Registration),
    /// → the leader of `partition`: propose and wait until applied. A batch with an `id`
    /// the partition already applied is answered as written and not stored again.
    Write {
        partition: PartitionId,
        id: Option<BatchId>,
        #[serde(with = "records_codec")]
        records: Vec<Record>,
    },
    /// → a worker: the shares of one insert whose partitions it leads, proposed together;
    /// answered with [`Response::WrittenMany`], one result per share, in order. At most
    /// [`MAX_SHARES`] shares.
    WriteMany(Vec<Share>),
    /// → a worker: partial aggregates over the given partitions it holds; with `strong`,
    /// only from replicas that lead and after a read-index round.
    Compute {
        partitions: Vec<PartitionId>,
        query: Query,
        strong: bool,
    },
    /// Control → the leader of `partition`: propose a membership change; answered with
    /// [`Response::Done`] once applied there.
    ChangeMembership {
        partition: PartitionId,
        change: Membership,
    },
    /// Control → the leader of `partition`: hand leadership to `to`.
    TransferLeader { partition: PartitionId, to: NodeId },
    /// Control → the leader of `partition`: save the store and compact the partition's log
    /// (before a replica is added, so that it is sent a snapshot).
    Compact { partition: PartitionId },
    /// Control → the metadata leader: an admin write taken by another control node;
    /// answered with [`Response::Document`].
    Admin(AdminRequest),
    /// → a worker: one page of an export of `partition`, which it holds: at most `limit`
    /// points (capped at [`raftmetrics_core::export::MAX_PAGE_POINTS`]) of `selection`
    /// from `after` on, read once the replica applied what it knows is committed; answered
    /// with [`Response::Exported`]. (Last, so that the earlier variants keep their
    /// encoding.)
    Export {
        partition: PartitionId,
        selection: Selection,
        after: Option<Cursor>,
        limit: u32,
    },
    /// → a worker: a PromQL range function of one selector, or a mergeable aggregation of
    /// one (`text`, see [`raftmetrics_promql::plan::PushDown`]) evaluated over the series of `partitions`,
    /// which it holds, at `start`, `start + step`, ... `end` (milliseconds), once each
    /// replica applied what it knows is committed, in one read of its store; answered with
    /// [`Response::Evaluated`], or [`Response::QueryRefused`] when the expression fails.
    Evaluate {
        partitions: Vec<PartitionId>,
        text: String,
        start: i64,
        end: i64,
        step: i64,
    },
}

/// An admin write of `/admin/workers`, carried out by the metadata group's leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// `POST /admin/workers/{id}/drain`.
    Drain(NodeId),
    /// `DELETE /admin/workers/{id}`.
    Forget(NodeId),
}

/// Most shares in one [`Request::WriteMany`].
pub const MAX_SHARES: usize = 4096;

/// One partition's share of an insert, under the insert's batch id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub partition: PartitionId,
    pub id: Option<BatchId>,
    #[serde(with = "records_codec")]
    pub records: Vec<Record>,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    View(ClusterView),
    /// A JSON document (the answer to a forwarded [`Request::Admin`]).
    Document(String),
    /// Applied at this log index.
    Written {
        index: u64,
    },
    /// Per share of a [`Request::WriteMany`]: applied at this log index, or why not.
    WrittenMany(Vec<Result<u64, RemoteError>>),
    /// `missing`: asked-for partitions this worker could not answer for.
    Computed {
        partial: PartialAggregate,
        missing: Vec<PartitionId>,
    },
    /// A [`Request::ChangeMembership`] or [`Request::TransferLeader`] was carried out.
    Done,
    Error(RemoteError),
    /// A page of a [`Request::Export`] (last, so that the earlier variants keep their
    /// encoding).
    Exported(ExportPage),
    /// The result of a [`Request::Evaluate`]: per series its `(time, value)` at each step,
    /// or per group the aggregation's partial state at each step.
    Evaluated(raftmetrics_promql::eval::PushedResult),
    /// A [`Request::Evaluate`] whose expression failed (the query's fault, not the node's).
    QueryRefused(raftmetrics_promql::PromError),
}

/// A core error carried over the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
    pub fields: Vec<FieldError>,
    /// Not the leader: partition and leader hint.
    pub not_leader: Option<(u32, Option<u64>)>,
}

impl From<&Error> for RemoteError {
    fn from(e: &Error) -> Self {
        RemoteError {
            code: e.code(),
            message: e.to_string(),
            fields: match e {
                Error::Validation(f) => f.clone(),
                _ => Vec::new(),
            },
            not_leader: match e {
                Error::NotLeader { partition, leader } => Some((*partition, *leader)),
                _ => None,
            },
        }
    }
}

impl From<RemoteError> for Error {
    fn from(r: RemoteError) -> Self {
        if let Some((partition, leader)) = r.not_leader {
            return Error::NotLeader { partition, leader };
        }
        match r.code {
            ErrorCode::ValidationError => Error::Validation(r.fields),
            ErrorCode::InvalidRequest => Error::InvalidRequest(r.message),
            ErrorCode::NotFound => Error::NotFound(r.message),
            ErrorCode::RaftError => Error::Raft(r.message),
            ErrorCode::StorageError => Error::Storage {
                operation: "remote",
                reason: r.message,
            },
            _ => Error::Internal(r.message),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The request was never written: it certainly had no effect.
    #[error("could not reach node {node} at {addr}: {reason}")]
    NotSent {
        node: NodeId,
        addr: SocketAddr,
        reason: String,
    },
    /// The request was written but no answer came: it may or may not have taken effect.
    #[error("no answer from node {node} at {addr}: {reason}")]
    Unknown {
        node: NodeId,
        addr: SocketAddr,
        reason: String,
    },
}

/// Settings of an [`RpcClient`].
#[derive(Clone, Debug)]
pub struct RpcConfig {
    pub connect_timeout: Duration,
    /// Idle connections kept per peer.
    pub max_idle_per_peer: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            connect_timeout: Duration::from_secs(2),
            max_idle_per_peer: 8,
        }
    }
}

/// Idle connections by peer.
type IdlePool = HashMap<(NodeId, SocketAddr), Vec<BufReader<TcpStream>>>;

/// Calls other nodes; cheap to share (`Arc`).
pub struct RpcClient {
    local: NodeId,
    auth: ClusterAuth,
    config: RpcConfig,
    idle: Mutex<IdlePool>,
    next_id: AtomicU64,
}

impl RpcClient {
    pub fn new(local: NodeId, auth: ClusterAuth, config: RpcConfig) -> Self {
        RpcClient {
            local,
            auth,
            config,
            idle: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Sends `request` to node `node` at `addr` and waits at most `timeout` for the answer.
    pub async fn call(
        &self,
        node: NodeId,
        addr: SocketAddr,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        let not_sent = |reason: String| RpcError::NotSent { node, addr, reason };
        let body = codec::encode(request).map_err(|e| not_sent(e.to_string()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = WireMessage::Call { id, body };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut conn = match self.take_idle(node, addr) {
            Some(c) => c,
            None => tokio::time::timeout_at(deadline, self.dial(node, addr))
                .await
                .map_err(|_| not_sent("connect timed out".into()))?
                .map_err(|e| not_sent(e.to_string()))?,
        };
        let exchange = async {
            write_frame(conn.get_mut(), &frame).await?;
            loop {
                match read_frame(&mut conn).await? {
                    WireMessage::Reply { id: got, body } if got == id => return Ok(body),
                    WireMessage::Reply { .. } => continue,
                    other => {
                        return Err(WireError::Unexpected {
                            expected: "reply",
                            got: other.kind(),
                        });
                    }
                }
            }
        };
        let unknown = |reason: String| RpcError::Unknown { node, addr, reason };
        let body = match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) => return Err(unknown("timed out".into())),
            Ok(Err(e)) => return Err(unknown(e.to_string())),
            Ok(Ok(body)) => body,
        };
        self.put_idle(node, addr, conn);
        codec::decode(&body).map_err(|e| unknown(format!("undecodable answer: {e}")))
    }

    async fn dial(
        &self,
        node: NodeId,
        addr: SocketAddr,
    ) -> Result<BufReader<TcpStream>, WireError> {
        let mut stream =
            tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| WireError::Timeout("connect"))??;
        tokio::time::timeout(
            self.config.connect_timeout,
            client_handshake(&mut stream, &self.auth, self.local, node),
        )
        .await
        .map_err(|_| WireError::Timeout("handshake"))??;
        Ok(BufReader::with_capacity(64 * 1024, stream))
    }

    /// An idle connection that the peer has not closed.
    fn take_idle(&self, node: NodeId, addr: SocketAddr) -> Option<BufReader<TcpStream>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(&(node, addr))?;
        while let Some(conn) = conns.pop() {
            let mut probe = [0u8; 1];
            // An idle connection has nothing to read: data or EOF means it is unusable.
            if let Err(e) = conn.get_ref().try_read(&mut probe)
                && e.kind() == std::io::ErrorKind::WouldBlock
                && conn.buffer().is_empty()
            {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, node: NodeId, addr: SocketAddr, conn: BufReader<TcpStream>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.entry((node, addr)).or_default();
        if conns.len() < self.config.max_idle_per_peer {
            conns.push(conn);
        }
    }

    /// Forgets the idle connections to `node` (after it moved or restarted).
    pub fn forget(&self, node: NodeId) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(n, _), _| *n != node);
    }
}

/// Encodes a response; an encoding failure becomes an error response.
pub fn encode_response(response: &Response) -> Vec<u8> {
    codec::encode(response).unwrap_or_else(|e| {
        let err = Response::Error(RemoteError::from(&Error::Internal(format!(
            "encode rpc answer: {e}"
        ))));
        codec::encode(&err).unwrap_or_default()
    })
}

/// Resolves `host:port` to one socket address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_control_node_answers_for_the_control_id_and_nothing_else_does() {
        for k in 1..=MAX_CONTROL_NODES {
            assert!(is_control_wire_id(control_wire_id(k)));
            assert!(answers_for(CONTROL_WIRE_ID, control_wire_id(k)));
            assert!(answers_for(control_wire_id(k), control_wire_id(k)));
        }
        // A named node is that node only.
        assert!(!answers_for(control_wire_id(1), control_wire_id(2)));
        assert!(!answers_for(7, 8));
        // A worker never answers for the control nodes, nor the control id for itself.
        assert!(!answers_for(CONTROL_WIRE_ID, 7));
        assert!(!answers_for(CONTROL_WIRE_ID, MAX_WORKER_ID));
        assert!(!is_control_wire_id(CONTROL_WIRE_ID));
        assert!(!is_control_wire_id(control_wire_id(MAX_CONTROL_NODES + 1)));
    }
}
