//! Prometheus remote write 1.0: `POST /api/v1/write`, a snappy-compressed protobuf
//! `WriteRequest` (from Prometheus, vmagent, the OpenTelemetry Collector). Every sample
//! becomes a point of the metric `__name__` (`:` becomes `.`) with the other labels as
//! tags, at its millisecond timestamp; the request is validated whole and stored like every
//! insert, then answered `204 No Content`. Metadata, exemplars and native histograms are
//! not stored, nor are staleness markers and other NaN or infinite samples: they are
//! counted in `raftmetrics_remote_write_dropped_total{kind}`. See
//! [`crate::decode::remote_write`]; errors are answered in the Prometheus API's shape.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use raftmetrics_core::Timestamp;
use raftmetrics_core::error::Error;
use raftmetrics_core::model::validate_batch;

use super::body::batch_id;
use super::error::ApiError;
use crate::decode::remote_write::{RemoteWriteLimits, RemoteWriteStats, decode};
use crate::frontend::{self, Frontend};
use crate::metrics::Metrics;

/// The remote write route over `frontend`.
pub fn routes<F: Frontend>(frontend: Arc<F>) -> Router {
    Router::new()
        .route("/api/v1/write", post(write::<F>))
        .with_state(frontend)
}

async fn write<F: Frontend>(
    State(frontend): State<Arc<F>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or_default().trim();
        if !encoding.eq_ignore_ascii_case("snappy") {
            return Err(Error::InvalidRequest(format!(
                "Content-Encoding {encoding:?} is not supported: remote write bodies are snappy \
                 compressed"
            ))
            .into());
        }
    }
    let mut limits = RemoteWriteLimits::from_limits(frontend.limits());
    limits.max_decompressed_bytes = limits
        .max_decompressed_bytes
        .max(frontend.protocols().max_body_bytes);
    let (points, stats) = decode(&body, &limits)?;
    count_dropped(frontend.metrics(), &stats);
    if points.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let records = validate_batch(points, Timestamp::now(), frontend.limits())?;
    let id = batch_id(&headers)?;
    frontend::insert(&*frontend, id, records).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn count_dropped(metrics: &Metrics, stats: &RemoteWriteStats) {
    for (kind, count) in [
        ("metadata", stats.metadata_ignored),
        ("exemplar", stats.exemplars_ignored),
        ("histogram", stats.histograms_ignored),
        ("stale", stats.stale_skipped),
        ("non_finite", stats.non_finite_skipped),
    ] {
        if count > 0 {
            metrics.add_remote_write_dropped(kind, count);
        }
    }
}
