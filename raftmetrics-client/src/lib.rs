//! # raftmetrics-client
//!
//! A typed async Rust SDK for a RaftMetrics cluster, speaking the bincode API. It shares its
//! request and result types with [`raftmetrics_core`] ([`Point`], [`Query`], [`QueryResult`]),
//! so a program can move between the embedded engine and a cluster without changing types.
//! The network client arrives with the server.

pub use raftmetrics_core::{Point, Query, QueryResult};
