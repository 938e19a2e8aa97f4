//! # raftmetrics-core
//!
//! The transport-agnostic heart of RaftMetrics, a distributed metrics analytics system:
//! the data model and its validation ([`model`]), the [`Partitioner`], the worker
//! [`Store`] on DuckDB, mergeable partial aggregates ([`aggregate`], [`sketch`]), the query
//! model ([`query`]), and an embedded single-process [`Engine`]. No HTTP and no sockets live
//! here; the server crate wires these pieces to the network. The data model, queries,
//! aggregates, API bodies and codec are defined in `raftmetrics-types` and re-exported here
//! at the same paths.
//!
//! A tour, as a program that embeds the engine would use it:
//!
//! ```
//! use raftmetrics_core::{Agg, Engine, EngineConfig, Point, Query, Timestamp};
//!
//! let engine = Engine::open_in_memory(EngineConfig::default())?;
//! let t0 = Timestamp::parse("2024-01-20T15:00:00Z").unwrap();
//! let mut batch = Vec::new();
//! for (i, host) in ["web-1", "web-2", "api-1"].iter().enumerate() {
//!     for minute in 0..60 {
//!         let at = Timestamp::from_micros(t0.as_micros() + minute * 60_000_000);
//!         batch.push(
//!             Point::new("cpu_usage", 10.0 * (i as f64 + 1.0) + minute as f64 / 10.0)
//!                 .at(at)
//!                 .tag("host", *host)
//!                 .tag("datacenter", if i < 2 { "us-west" } else { "us-east" }),
//!         );
//!     }
//! }
//! engine.insert(batch)?;
//!
//! // The same parameters as `GET /aggregate?...`.
//! let query = Query::from_params(&[
//!     ("metric", "cpu_usage"),
//!     ("hosts", "web-*"),
//!     ("agg", "avg,max,count,p95"),
//!     ("group_by", "host"),
//!     ("order_by", "max:desc"),
//! ])?;
//! let result = engine.query(&query)?;
//! assert_eq!(result.get(Agg::Count), Some(120.0));
//! assert_eq!(result.groups[0].key[0].1.as_deref(), Some("web-2"));
//! # Ok::<(), raftmetrics_core::Error>(())
//! ```

pub mod engine;
pub mod priority;
pub mod raft;
pub mod store;

// The vocabulary lives in `raftmetrics-types` (no DuckDB, no raft, so the client can depend
// on it alone; ADR 022) and is re-exported here at the same paths.
pub use raftmetrics_types::{
    aggregate, api, codec, error, export, idempotency, model, partition, query, series, sketch,
    time,
};

pub use aggregate::{
    AggValue, BucketResult, Coverage, GroupResult, PartialAggregate, PartialState, QueryResult,
    TimedValue,
};
pub use engine::{Engine, EngineConfig, InsertReport};
pub use error::{Error, ErrorCode, FieldError, Result};
pub use idempotency::BatchId;
pub use model::{Limits, Point, Record, Tags};
pub use partition::{HashPartitioner, PartitionId, Partitioner};
pub use query::{Agg, Consistency, OrderBy, OrderKey, Query, ValueFilter};
pub use series::Series;
pub use sketch::{Sketch, SketchConfig};
pub use store::{DuckDbStore, Store};
pub use time::Timestamp;
