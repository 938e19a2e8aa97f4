//! How raft messages travel between nodes.
//!
//! The driver hands each loop's outgoing messages to a [`Transport`], batched per destination
//! node. Transports may drop, delay, duplicate or reorder messages: Raft tolerates all of it.
//! Inbound messages reach a node through [`crate::raft::NodeHandle::step`].

use raft::eraftpb::Message;

use crate::partition::PartitionId;

/// Identity of a node in the cluster (never 0: raft-rs reserves it).
pub type NodeId = u64;

/// A raft message of one partition's group, addressed to a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub group: PartitionId,
    /// `message.from` / `message.to` are the node ids of the replicas.
    pub message: Message,
}

/// Sends batches of raft messages to other nodes. Must not block the caller for long:
/// queue, and drop when the destination is unreachable or its queue is full.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, to: NodeId, batch: Vec<Envelope>);
}
