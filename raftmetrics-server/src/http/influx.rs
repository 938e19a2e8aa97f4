//! InfluxDB line protocol writes, for Telegraf and the InfluxDB client libraries:
//! `POST /write` (InfluxDB 1.x: `db`, `rp`, `precision`, `consistency`, `u`) and
//! `POST /api/v2/write` (2.x: `org`, `orgID`, `bucket`, `precision`), the body plain or
//! `Content-Encoding: gzip`. Answered `204 No Content` once every point is stored, like
//! every insert (validated whole, stored under its `Idempotency-Key` or a new batch id).
//!
//! Database, retention policy, organisation and bucket are accepted and not used: a cluster
//! is one namespace. A line `cpu,host=a usage_idle=3,usage_user=1 <ts>` stores the points
//! `cpu_usage_idle` and `cpu_usage_user` (the separator is `INFLUX_FIELD_SEPARATOR`) with
//! the tag `host=a`; see [`crate::decode::line_protocol`] for the field types and escapes.
//! Errors are answered in InfluxDB's shape (`{"code": "invalid", "message": ...}`, see
//! [`super::error::ErrorShape`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use raftmetrics_core::Timestamp;
use raftmetrics_core::error::Error;

use super::body::{batch_id, inflated, known_params};
use super::error::ApiError;
use crate::decode::line_protocol::{LineProtocolOptions, Precision, decode_records};
use crate::frontend::{self, Frontend};

/// The query parameters of `/write` (InfluxDB 1.x).
const V1_PARAMS: &[&str] = &["db", "rp", "precision", "consistency", "u"];
/// The query parameters of `/api/v2/write`.
const V2_PARAMS: &[&str] = &["org", "orgID", "bucket", "precision"];

/// The line protocol's write routes over `frontend`.
pub fn routes<F: Frontend>(frontend: Arc<F>) -> Router {
    Router::new()
        .route("/write", post(write_v1::<F>))
        .route("/api/v2/write", post(write_v2::<F>))
        .with_state(frontend)
}

async fn write_v1<F: Frontend>(
    State(frontend): State<Arc<F>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    write(&*frontend, &headers, &params, V1_PARAMS, &body).await
}

async fn write_v2<F: Frontend>(
    State(frontend): State<Arc<F>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    write(&*frontend, &headers, &params, V2_PARAMS, &body).await
}

/// Checks the parameters against `known`, inflates the body, decodes and validates it whole,
/// and stores it.
async fn write<F: Frontend>(
    frontend: &F,
    headers: &HeaderMap,
    params: &[(String, String)],
    known: &[&str],
    body: &Bytes,
) -> Result<Response, ApiError> {
    let precision = precision(params, known)?;
    let body = inflated(headers, body, frontend.protocols().max_body_bytes)?;
    let mut opts = LineProtocolOptions::new(Timestamp::now(), frontend.limits());
    opts.precision = precision;
    opts.separator = frontend.protocols().influx_separator.clone();
    let records = decode_records(&body, &opts, frontend.limits())?;
    let id = batch_id(headers)?;
    frontend::insert(frontend, id, records).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The `precision` parameter (nanoseconds when absent); any parameter not in `known` is
/// refused, each repeated one too.
fn precision(params: &[(String, String)], known: &[&str]) -> Result<Precision, Error> {
    let mut errors = Vec::new();
    let mut precision = Precision::Ns;
    for (key, value) in known_params(params, known, &mut errors) {
        if key == "precision" {
            match Precision::parse(value) {
                Ok(p) => precision = p,
                Err(Error::Validation(fields)) => errors.extend(fields),
                Err(e) => return Err(e),
            }
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
    fn parameters_are_the_protocol_version_s_own() {
        assert_eq!(
            precision(
                &params(&[("db", "telegraf"), ("precision", "s")]),
                V1_PARAMS
            )
            .unwrap(),
            Precision::S
        );
        assert_eq!(
            precision(&params(&[("org", "o"), ("bucket", "b")]), V2_PARAMS).unwrap(),
            Precision::Ns
        );
        for (pairs, known) in [
            (vec![("bucket", "b")], V1_PARAMS),
            (vec![("db", "x")], V2_PARAMS),
            (vec![("precision", "weeks")], V1_PARAMS),
            (vec![("precision", "s"), ("precision", "ms")], V2_PARAMS),
        ] {
            let err = precision(&params(&pairs), known).expect_err("refused");
            assert!(matches!(err, Error::Validation(_)), "{pairs:?}: {err}");
        }
    }
}
