//! # raftmetrics-server
//!
//! The thin shell that runs [`raftmetrics_core`] as a cluster: one binary with the roles
//! `control`, `worker` and `dev`, the public HTTP API (JSON and bincode) and node-to-node
//! TCP. This crate is being built on top of the core engine; until then the embedded engine
//! (`cargo run --release --example embedded`) is the way to run RaftMetrics.

pub use raftmetrics_core as core;
