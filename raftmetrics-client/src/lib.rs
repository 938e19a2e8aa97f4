//! # raftmetrics-client
//!
//! A typed async Rust SDK for the HTTP API of a RaftMetrics cluster. Its request and result
//! types are those of [`raftmetrics_types`] ([`Point`], [`Query`], [`QueryResult`], the
//! bodies of [`raftmetrics_types::api`]), which the embedded engine (`raftmetrics-core`)
//! re-exports, so a program can move between the engine and a cluster without changing
//! types. The client depends on `raftmetrics-types` alone: adding it compiles no DuckDB and no
//! raft.
//!
//! ## Usage
//!
//! ```toml
//! [dependencies]
//! raftmetrics-client = { path = "raftmetrics-client" }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use raftmetrics_client::{Agg, Answer, Client, Point, Query, Timestamp};
//!
//! # async fn run() -> Result<(), raftmetrics_client::Error> {
//! let client = Client::builder("http://127.0.0.1:8080")
//!     .token("my-secret-token")
//!     .timeout(Duration::from_secs(10))
//!     .build()?;
//!
//! // A 200 means every point was stored; a batch that spans partitions is split per
//! // partition, and on an error some partitions may have stored their part.
//! let now = Timestamp::now();
//! let points = vec![
//!     Point::new("cpu_usage", 71.5).at(now).tag("host", "web-1").tag("datacenter", "us-west"),
//!     Point::new("cpu_usage", 64.0).at(now).tag("host", "web-2").tag("datacenter", "us-east"),
//! ];
//! let stored = client.insert_batch(points).await?;
//! println!("stored {} points in partitions {:?}", stored.points, stored.partitions);
//!
//! // The same query as GET /aggregate?metric=cpu_usage&agg=avg,max,p95&group_by=datacenter
//! let query = Query {
//!     aggs: vec![Agg::Avg, Agg::Max, Agg::P95],
//!     group_by: vec!["datacenter".into()],
//!     ..Query::new("cpu_usage")
//! };
//! match client.aggregate(&query).await? {
//!     Answer::Complete(result) => println!("p95: {:?}", result.get(Agg::P95)),
//!     Answer::Partial { value, coverage } => println!(
//!         "partial (partitions {:?} missing): p95 {:?}",
//!         coverage.missing_partitions,
//!         value.get(Agg::P95)
//!     ),
//! }
//!
//! // The hosts that had a reading above 90, each with the latest such reading: value
//! // bounds select points before aggregating; `last` is the value of the latest point.
//! let hot = Query {
//!     aggs: vec![Agg::Last, Agg::Count],
//!     group_by: vec!["host".into()],
//!     ..Query::new("cpu_usage").value_gt(90.0)
//! };
//! for group in client.aggregate(&hot).await?.into_complete()?.groups {
//!     println!("{:?}: {:?}", group.key, group.aggregations);
//! }
//!
//! // Or refuse partial answers outright.
//! let average = client.analytics(Some("cpu_usage")).await?.into_complete()?.average;
//! println!("average: {average:?}");
//!
//! println!("cluster is {}", client.health().await?.status);
//! # Ok(())
//! # }
//! ```
//!
//! ## Queries
//!
//! A [`Query`] is sent as the parameters of `GET /aggregate` ([`Query::to_params`]); the
//! server parses them back with [`Query::from_params`], so a query means the same in the
//! embedded engine and in a cluster (`docs/query.md`). Its aggregations ([`Agg`]) include
//! [`Agg::Last`] and [`Agg::First`]: the value of the latest and the earliest point, a tie
//! of timestamps going to the greatest value for `last` and the smallest for `first`, so
//! the answer never depends on partitioning. [`Query::value_gt`], [`Query::value_ge`],
//! [`Query::value_lt`] and [`Query::value_le`] (the fields of [`ValueFilter`] in
//! [`Query::values`]) keep only points whose value satisfies every bound, before anything
//! is aggregated; bounds must be finite numbers.
//!
//! ## Several control nodes
//!
//! A cluster with several control nodes is reached through all of them: give
//! [`Client::builder`] their URLs separated by commas (as an environment variable such as
//! `RAFTMETRICS_URL` may carry them), or a list to [`Client::builder_many`]; at most
//! [`MAX_BASE_URLS`], each checked like a single one.
//!
//! ```no_run
//! # fn run() -> Result<(), raftmetrics_client::Error> {
//! use raftmetrics_client::Client;
//!
//! let client = Client::builder("http://127.0.0.1:8080,http://127.0.0.1:8084,http://127.0.0.1:8085")
//!     .token("my-secret-token")
//!     .build()?;
//! let same = Client::builder_many(["http://127.0.0.1:8080", "http://127.0.0.1:8084"])
//!     .token("my-secret-token")
//!     .build()?;
//! assert_eq!(same.base_urls().len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! Each request goes to the node that answered last ([`Client::base_url`]). When it cannot
//! be reached, times out or answers `503`, the request goes to the next node in the list,
//! each node at most once per request; any other answer, success or error, is returned as it
//! is. An insert sent to another node carries the same `Idempotency-Key`, so it is stored
//! once even if the first node stored it and failed before answering. The
//! [`timeout`](ClientBuilder::timeout) applies to each node tried. When every node failed,
//! the call returns [`Error::AllNodesFailed`], naming how many nodes were tried, with the
//! last failure.
//!
//! ## Formats
//!
//! Bodies travel as bincode (`application/octet-stream`, through
//! [`raftmetrics_types::codec`]) by default, or as JSON with [`ClientBuilder::json`]. In JSON
//! mode inserts, `/analytics` and `/health` use JSON; **`/aggregate` always asks for
//! bincode**, because its JSON answer is a differently shaped document (the one of the API
//! reference), not a [`QueryResult`]. Error bodies are always JSON. Answers are decoded in
//! the format their `Content-Type` names, and at most
//! [`max_response_bytes`](ClientBuilder::max_response_bytes) (256 MiB by default) are read.
//!
//! ## Many points of the same series
//!
//! A producer that keeps its series (metric and tags) and sends many points of each can
//! build batches of [`PointRef`]s, which borrow the metric, tags and partition key, and send
//! them with [`Client::insert_refs`]: no allocation per point, and the same bytes on the
//! wire as the equivalent [`Point`]s.
//!
//! ## Partial answers
//!
//! A cluster answers a query from the partitions it can reach; when every replica of some
//! partition is down the answer is partial. [`Client::aggregate`] and [`Client::analytics`]
//! return an [`Answer`], whose [`Answer::Partial`] variant carries the [`Coverage`] (which
//! partitions are missing), so partiality cannot go unnoticed. [`Answer::into_complete`]
//! turns a partial answer into [`Error::Partial`]. A query sent with
//! `allow_partial = false` makes the server refuse instead: a `503 RAFT_ERROR`
//! [`Error::Api`] (with several control nodes, a 503 is first taken to the other nodes; when
//! all refuse, [`Error::AllNodesFailed`], whose [`Error::status`] is 503).
//!
//! ## Errors
//!
//! Every failure is an [`Error`]: [`Error::Api`] for a non-2xx answer (status, typed
//! [`ErrorCode`], message, `details`, `Retry-After`), with helpers such as
//! [`Error::is_rate_limited`], [`Error::retry_after`], [`Error::validation_fields`] and
//! [`Error::is_retryable`]; [`Error::Transport`] when the request did not complete;
//! [`Error::AllNodesFailed`] when every control node failed ([`Error::is_failover`]);
//! [`Error::Decode`] for an undecodable answer; [`Error::InvalidConfig`] from
//! [`ClientBuilder::build`].
//!
//! ## Security
//!
//! The token travels only in the `Authorization: Bearer` header, never in a URL; it is
//! redacted from `Debug` output, redirects are never followed (a request fails over only to
//! the configured URLs), and environment proxies are
//! ignored unless [`ClientBuilder::system_proxy`] is set. This client speaks plain HTTP only.

mod answer;
mod client;
mod error;

pub use answer::Answer;
pub use client::{
    Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_INSERT_RETRIES,
    DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT, DEFAULT_URL, Format, MAX_BASE_URLS, PointRef,
    READY_POLL,
};
pub use error::{Error, Result, TransportError, code_for_status, parse_code};

pub use raftmetrics_types;
pub use raftmetrics_types::api::{
    AnalyticsResponse, HealthResponse, InsertResponse, ReadyResponse,
};
pub use raftmetrics_types::{
    Agg, Consistency, Coverage, ErrorCode, FieldError, OrderBy, OrderKey, Point, Query,
    QueryResult, Tags, Timestamp, ValueFilter,
};
