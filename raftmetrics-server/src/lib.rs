//! # raftmetrics-server
//!
//! The thin shell that runs [`raftmetrics_core`] as a cluster: one binary with the roles
//! `control`, `worker` and `dev`, the public HTTP API (JSON and bincode) and node-to-node
//! TCP.
//!
//! Modules:
//! - [`config`]: environment variables and flags;
//! - [`control`], [`worker`], [`dev`]: the three roles;
//! - [`frontend`]: the seam between the protocols and the node that serves them (both
//!   roles), and the one insert path;
//! - [`router`]: where a partition's writes go (leaders, hints, retries);
//! - [`fan_out`]: a query's plan over the workers (pure) and its runner;
//! - [`export`]: an export's replicas per partition (pure) and its page-by-page runner;
//! - [`promql`]: what the Prometheus query API reads: selections, gathered series, the
//!   pushed-down evaluation on a worker;
//! - [`rpc`]: internal requests between nodes and the pooled client;
//! - [`http`]: the protocols' endpoints, the error format, bearer auth, per-token rate
//!   limits, body codecs;
//! - [`decode`]: insert formats of other systems (InfluxDB line protocol);
//! - [`metrics`]: Prometheus metrics;
//! - [`ready`]: readiness (`GET /ready`), decided by pure functions;
//! - [`cluster_state`], [`metadata`]: the cluster metadata and the Raft group that keeps it;
//! - [`rebalance`]: the pure planner of replica moves and leader transfers;
//! - [`mover`]: the next step of each replica move;
//! - [`wire`]: node-to-node frames and the raft transport over TCP;
//! - [`error`]: the crate's error type.

pub mod cluster_state;
pub mod config;
pub mod control;
pub mod decode;
pub mod dev;
pub mod error;
pub mod export;
pub mod fan_out;
pub mod frontend;
pub mod healthcheck;
pub mod http;
pub mod identity;
pub mod metadata;
pub mod metrics;
pub mod mover;
pub mod promql;
pub mod ready;
pub mod rebalance;
pub mod router;
pub mod rpc;
pub mod wire;
pub mod worker;

pub use raftmetrics_core as core;
