//! # raftmetrics-server
//!
//! The thin shell that runs [`raftmetrics_core`] as a cluster: one binary with the roles
//! `control`, `worker` and `dev`, the public HTTP API (JSON and bincode) and node-to-node
//! TCP. This crate is being built on top of the core engine and its Raft replication; until
//! the binary lands, the embedded engine (`cargo run --release --example embedded`) is the
//! way to run RaftMetrics.
//!
//! Modules so far: [`config`] (environment variables and flags), [`http`] (errors in the API
//! format, bearer auth, per-token rate limits) and [`wire`] (node-to-node frames over TCP).

pub mod config;
pub mod http;
pub mod wire;

pub use raftmetrics_core as core;
