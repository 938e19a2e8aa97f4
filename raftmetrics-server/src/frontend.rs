//! The seam between the public protocols and the node that serves them.
//!
//! A protocol module (`http/seed.rs` for the API reference's JSON and bincode endpoints, one
//! module per other protocol) decodes its requests into validated records or a [`Query`],
//! asks the node through [`Frontend`], and renders the answer, or the error, in its own
//! shape. The control node implements it with its router and query fan-out, a worker with
//! its router (inserts only); the handlers are written once for both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmetrics_core::error::Error;
use raftmetrics_core::export::{ExportPage, ExportRequest};
use raftmetrics_core::model::{Limits, Record};
use raftmetrics_core::query::Query;
use raftmetrics_core::{BatchId, PartitionId, QueryResult};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::promql::EvaluateError;
use crate::router::BatchOutcome;

/// The options of the protocols other than the API reference's.
#[derive(Clone, Debug)]
pub struct Protocols {
    /// Between a line protocol measurement and its field in a metric name.
    pub influx_separator: String,
    /// Most bytes a compressed body may inflate to (the body limit).
    pub max_body_bytes: usize,
}

impl Protocols {
    /// The options of `http`.
    pub fn of(http: &crate::config::HttpArgs) -> Protocols {
        Protocols {
            influx_separator: http.influx_field_separator.clone(),
            max_body_bytes: http.max_body_bytes,
        }
    }
}

/// An export under way ([`Frontend::export`]).
pub struct Export {
    /// The pages, partition after partition in ascending order, each partition's in its
    /// order (series id, timestamp, value). An error is the last item: the export stopped
    /// there. The channel holds [`crate::export::PAGES_IN_FLIGHT`] pages: the node reads the
    /// next one only once the previous one was taken.
    pub pages: mpsc::Receiver<Result<ExportPage, Error>>,
    /// Partitions left out because no live replica holds them (a partial export).
    pub missing: Vec<PartitionId>,
}

/// A pushed-down call's result over the cluster ([`Frontend::evaluate`]).
pub struct Evaluated {
    /// What each worker asked answered (see [`raftmetrics_promql::eval::Inputs::add_pushed`]).
    pub results: Vec<raftmetrics_promql::eval::PushedResult>,
    /// Partitions left out because no live replica holds them (a partial answer).
    pub missing: Vec<PartitionId>,
}

/// What the protocols need from the node that serves them.
pub trait Frontend: Send + Sync + 'static {
    /// The limits points are validated against.
    fn limits(&self) -> &Limits;

    /// The node's metrics.
    fn metrics(&self) -> &Arc<Metrics>;

    /// The deadline of one request.
    fn request_timeout(&self) -> Duration;

    /// The options of the other protocols.
    fn protocols(&self) -> &Protocols;

    /// Stores validated `records` under batch `id` by `deadline`: every partition's share
    /// through its leader, each stored once (see [`crate::router::write_batch`]).
    fn write(
        &self,
        id: BatchId,
        records: Vec<Record>,
        deadline: Instant,
    ) -> impl Future<Output = Result<BatchOutcome, Error>> + Send;

    /// Whether this node answers queries over the cluster (a control node does; a worker
    /// computes partial aggregates for a control node instead).
    fn serves_queries(&self) -> bool;

    /// Answers `query` over the cluster, refusing a partial answer unless the query allows
    /// it.
    fn query(&self, query: &Query) -> impl Future<Output = Result<QueryResult, Error>> + Send;

    /// Starts an export of what `request` selects over the cluster (a node that serves
    /// queries). Refused before anything is read when the node's placement is stale or, unless
    /// the request allows a partial export, when a partition has no live replica; otherwise
    /// the pages follow in the returned [`Export`] as they are read.
    fn export(
        self: Arc<Self>,
        request: ExportRequest,
    ) -> impl Future<Output = Result<Export, Error>> + Send;

    /// Evaluates a pushed-down PromQL expression (`text`, a range function of one selector
    /// or a mergeable aggregation of one; see [`raftmetrics_promql::plan::PushDown`]) on
    /// every partition, each on one of its live
    /// replicas (a node that serves queries), at `start`, `start + step`, ... `end`
    /// (milliseconds). Refused when the node's placement is stale or, unless `allow_partial`,
    /// when a partition has no live replica.
    fn evaluate(
        self: Arc<Self>,
        text: String,
        range: (i64, i64, i64),
        allow_partial: bool,
    ) -> impl Future<Output = Result<Evaluated, EvaluateError>> + Send {
        let _ = (text, range, allow_partial);
        async {
            Err(EvaluateError::Node(Error::InvalidRequest(
                "this node does not serve queries".into(),
            )))
        }
    }

    /// The node's storage size, when an insert's answer reports it (a worker's).
    fn storage_size(&self) -> Option<String> {
        None
    }
}

/// The one insert path of every protocol: stores validated `records` through `frontend`
/// under `id` within the request deadline, and counts the request and its points.
pub async fn insert<F: Frontend>(
    frontend: &F,
    id: BatchId,
    records: Vec<Record>,
) -> Result<BatchOutcome, Error> {
    let started = Instant::now();
    let outcome = frontend
        .write(id, records, started + frontend.request_timeout())
        .await;
    let metrics = frontend.metrics();
    metrics.observe_rpc("write", started.elapsed());
    metrics.inc_insert_batch(outcome.is_ok());
    let outcome = outcome?;
    metrics.add_points_inserted(outcome.points as u64);
    Ok(outcome)
}
