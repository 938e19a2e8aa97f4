//! The insert path both roles share: decode the body, validate the whole batch (one bad
//! point refuses it before anything is written), write every partition's share through its
//! leader ([`write_batch`]) under the batch's id (its `Idempotency-Key`, or a new one),
//! answer with what was stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;
use raftmetrics_core::api::InsertResponse;
use raftmetrics_core::model::Limits;
use raftmetrics_core::{HashPartitioner, Timestamp};

use crate::http::body::{batch_id, decode_records, request_format, respond, response_format};
use crate::http::error::ApiError;
use crate::metrics::Metrics;
use crate::router::{Router, write_batch};

/// What an insert needs from the node that takes it.
pub struct Ingest<'a> {
    pub router: &'a Arc<Router>,
    pub partitioner: &'a HashPartitioner,
    pub limits: &'a Limits,
    pub metrics: &'a Metrics,
    /// Deadline of the whole write.
    pub timeout: Duration,
}

impl Ingest<'_> {
    /// Stores the points of `body`; `storage_size` fills the answer's field (workers).
    pub async fn handle(
        &self,
        headers: &HeaderMap,
        body: &Bytes,
        storage_size: impl FnOnce() -> Option<String>,
    ) -> Result<Response, ApiError> {
        let format = request_format(headers)?;
        let id = batch_id(headers)?;
        let records = decode_records(format, body, Timestamp::now(), self.limits)?;
        let started = Instant::now();
        let outcome = write_batch(
            self.router,
            self.partitioner,
            Some(id),
            records,
            started + self.timeout,
        )
        .await;
        self.metrics.observe_rpc("write", started.elapsed());
        self.metrics.inc_insert_batch(outcome.is_ok());
        let outcome = outcome?;
        self.metrics.add_points_inserted(outcome.points as u64);
        let single = (outcome.partitions.len() == 1).then(|| outcome.partitions[0]);
        let response = InsertResponse {
            success: true,
            message: if outcome.points == 1 {
                "Metric inserted successfully".into()
            } else {
                format!("{} metrics inserted successfully", outcome.points)
            },
            points: outcome.points as u64,
            partitions: outcome.partitions.iter().map(|(p, _)| *p).collect(),
            partition: single.map(|(p, _)| p),
            worker_node: single.map(|(_, leader)| format!("worker-{leader}")),
            storage_size: storage_size(),
        };
        Ok(respond(response_format(headers, format), &response))
    }
}
