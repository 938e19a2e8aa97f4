//! Raft replication of partitions, transport-agnostic.
//!
//! Each partition is a Raft group (tikv raft-rs); a node runs every replica it holds in one
//! [`RaftNode`] loop over one durable [`RaftLog`] (TiKV's raft-engine) and one
//! [`crate::store::Store`]. Messages leave through a [`Transport`] and arrive through
//! [`NodeHandle::step`]; [`SimNetwork`] is an in-process transport that can drop, delay,
//! duplicate, reorder and partition messages, for tests and simulations. [`chunk`] splits
//! snapshot messages into bounded [`Frame`]s and rebuilds them ([`Reassembler`]), for
//! transports that move bounded frames.

mod apply;
pub mod chunk;
pub mod compaction;
pub mod engine_metrics;
pub mod entry;
pub mod log;
mod logger;
pub mod node;
pub mod sim_network;
pub mod transport;

pub use chunk::{Frame, Reassembler, SnapshotChunk};
pub use entry::{LogEntry, decode_entry, encode_entry};
pub use log::{GroupStorage, RaftLog, WriteBatch};
pub use node::{
    NodeConfig, NodeHandle, RaftNode, ReplicaStatus, Role, add_learner, add_voter, leave_joint,
    remove_node, replace_voter,
};
pub use sim_network::{FaultConfig, SimNetwork};
pub use transport::{Envelope, NodeId, Transport};
