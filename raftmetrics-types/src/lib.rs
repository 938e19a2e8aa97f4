//! # raftmetrics-types
//!
//! The vocabulary RaftMetrics speaks on the wire and in its API, with nothing heavy behind
//! it: points and their validation ([`model`], [`series`]), timestamps ([`time`]), the
//! query model ([`query`]), mergeable partial aggregates and results ([`aggregate`],
//! [`sketch`]), what an export selects and the pages it is read in ([`export`]), the
//! [`Partitioner`], batch ids ([`idempotency`]), the request and response bodies of the
//! HTTP API ([`api`]), the bincode [`codec`] and the one [`Error`].
//!
//! `raftmetrics-core` (the engine: DuckDB store, raft) re-exports every module here at the
//! same path, so `raftmetrics_core::model::Point` and `raftmetrics_types::model::Point` are
//! one type. `raftmetrics-client` depends on this crate only, so a program that talks to a
//! cluster compiles no DuckDB and no raft (ADR 022).
//!
//! ```
//! use raftmetrics_types::{Agg, Point, Query, Timestamp, codec, model};
//!
//! let t = Timestamp::parse("2024-01-20T15:00:00Z").unwrap();
//! let point = Point::new("cpu_usage", 42.5).at(t).tag("host", "web-1");
//! let records = model::validate_batch(vec![point.clone()], t, &model::Limits::default())?;
//! assert_eq!(records[0].value, 42.5);
//! let back: Vec<Point> = codec::decode(&codec::encode(&vec![point])?)?;
//! assert_eq!(back[0].metric, "cpu_usage");
//!
//! let query = Query::from_params(&[("metric", "cpu_usage"), ("agg", "avg,p95")])?;
//! assert_eq!(query.aggs, [Agg::Avg, Agg::Percentile(9500)]);
//! # Ok::<(), raftmetrics_types::Error>(())
//! ```

pub mod aggregate;
pub mod api;
pub mod codec;
pub mod error;
pub mod export;
pub mod idempotency;
mod insert_body;
pub mod model;
pub mod partition;
pub mod query;
pub mod series;
pub mod sketch;
pub mod time;

pub use aggregate::{
    AggValue, BucketResult, Coverage, GroupResult, PartialAggregate, PartialState, QueryResult,
    TimedValue,
};
pub use error::{Error, ErrorCode, FieldError, Result};
pub use idempotency::BatchId;
pub use model::{Limits, Point, Record, Tags};
pub use partition::{HashPartitioner, PartitionId, Partitioner};
pub use query::{Agg, Consistency, OrderBy, OrderKey, Query, ValueFilter};
pub use series::Series;
pub use sketch::{Sketch, SketchConfig};
pub use time::Timestamp;
