//! Import: `POST /api/v1/import`, points in as JSON lines in the export's shape (what
//! `GET /api/v1/export` writes, and VictoriaMetrics' export and import format), so that an
//! export moves into another cluster, or from VictoriaMetrics into this one, with `curl`.
//!
//! The body is plain or `Content-Encoding: gzip`; `precision=ms` (the default) or `us` gives
//! the timestamps' unit. It is validated whole and stored like every insert (one bad line
//! refuses it, the error names its line; its `Idempotency-Key` honoured), then answered
//! `204 No Content`. A request holds at most a batch's points (100,000 by default): a larger
//! export is imported in several requests, a few lines each (see docs/api.md). Errors are
//! answered in the Prometheus API's shape, like every `/api/v1/` endpoint; see
//! [`crate::decode::import`] for the lines' rules.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use raftmetrics_core::Timestamp;
use raftmetrics_core::error::{Error, FieldError};

use super::body::{batch_id, inflated, known_params};
use super::error::ApiError;
use crate::decode::import::decode_records;
use crate::export::Precision;
use crate::frontend::{self, Frontend};

/// The import route over `frontend`.
pub fn routes<F: Frontend>(frontend: Arc<F>) -> Router {
    Router::new()
        .route("/api/v1/import", post(import::<F>))
        .with_state(frontend)
}

async fn import<F: Frontend>(
    State(frontend): State<Arc<F>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let precision = precision(&params)?;
    let body = inflated(&headers, &body, frontend.protocols().max_body_bytes)?;
    let records = decode_records(&body, precision, Timestamp::now(), frontend.limits())?;
    let id = batch_id(&headers)?;
    frontend::insert(&*frontend, id, records).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The `precision` parameter (milliseconds when absent), given at most once; any other
/// parameter is refused.
fn precision(params: &[(String, String)]) -> Result<Precision, Error> {
    let mut errors = Vec::new();
    let mut precision = Precision::default();
    for (_, value) in known_params(params, &["precision"], &mut errors) {
        match Precision::parse(value) {
            Some(p) => precision = p,
            None => errors.push(FieldError::new("precision", Precision::EXPECTED)),
        }
    }
    if errors.is_empty() {
        Ok(precision)
    } else {
        Err(Error::Validation(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn milliseconds_unless_told() {
        assert_eq!(precision(&[]).unwrap(), Precision::Millis);
        assert_eq!(
            precision(&params(&[("precision", "us")])).unwrap(),
            Precision::Micros
        );
        for bad in [
            vec![("precision", "ns")],
            vec![("precision", "us"), ("precision", "us")],
            vec![("db", "x")],
        ] {
            assert!(
                matches!(precision(&params(&bad)), Err(Error::Validation(_))),
                "{bad:?}"
            );
        }
    }
}
