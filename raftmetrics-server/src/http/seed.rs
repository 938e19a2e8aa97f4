//! The API reference's endpoints over a [`Frontend`]: `POST /insert` (one point or an
//! array, JSON or bincode) on every node, and on a node that serves queries also
//! `POST /metrics` (the same insert), `GET /aggregate` (JSON or bincode) and
//! `GET /analytics` (the reference's average shape).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query as QueryParams, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use raftmetrics_core::Agg;
use raftmetrics_core::Timestamp;
use raftmetrics_core::api::{AnalyticsResponse, DEFAULT_METRIC, InsertResponse};
use raftmetrics_core::query::Query;

use super::body::{Format, batch_id, decode_records, request_format, respond, response_format};
use super::error::ApiError;
use super::render::aggregate_document;
use crate::frontend::{self, Frontend};
use crate::metrics::Outcome;

/// The routes of the API reference that `frontend` serves.
pub fn routes<F: Frontend>(frontend: Arc<F>) -> Router {
    let mut routes = insert_routes::<F>();
    if frontend.serves_queries() {
        routes = routes.merge(query_routes::<F>());
    }
    routes.with_state(frontend)
}

/// The insert route of every node.
fn insert_routes<F: Frontend>() -> Router<Arc<F>> {
    Router::new().route("/insert", post(insert::<F>))
}

/// The routes of a node that serves queries (a control node): the reference's other
/// insert path, `POST /metrics`, and the queries.
fn query_routes<F: Frontend>() -> Router<Arc<F>> {
    Router::new()
        .route("/metrics", post(insert::<F>))
        .route("/aggregate", get(aggregate::<F>))
        .route("/analytics", get(analytics::<F>))
}

/// `POST /insert`, `POST /metrics`: decodes the body, validates it whole (one bad point
/// refuses it before anything is written), stores it under its `Idempotency-Key` (or a new
/// id), and answers what was stored.
async fn insert<F: Frontend>(
    State(frontend): State<Arc<F>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let format = request_format(&headers)?;
    let id = batch_id(&headers)?;
    let records = decode_records(format, &body, Timestamp::now(), frontend.limits())?;
    let outcome = frontend::insert(&*frontend, id, records).await?;
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
        storage_size: frontend.storage_size(),
    };
    Ok(respond(response_format(&headers, format), &response))
}

/// `GET /aggregate`.
async fn aggregate<F: Frontend>(
    State(frontend): State<Arc<F>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let query = Query::from_params(&params)?;
    let result = frontend.query(&query).await.inspect_err(|_| {
        frontend.metrics().inc_query(Outcome::Error);
    })?;
    Ok(match response_format(&headers, Format::Json) {
        Format::Bincode => respond(Format::Bincode, &result),
        Format::Json => axum::Json(aggregate_document(
            &result,
            &query.group_by,
            query.window_micros.is_some(),
        ))
        .into_response(),
    })
}

/// `GET /analytics`: the average and count of one metric (the reference's default one when
/// none is named), bincode by default.
async fn analytics<F: Frontend>(
    State(frontend): State<Arc<F>>,
    headers: HeaderMap,
    QueryParams(mut params): QueryParams<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    params.retain(|(k, _)| k != "agg");
    params.push(("agg".into(), "avg,count".into()));
    if !params.iter().any(|(k, _)| k == "metric") {
        params.push(("metric".into(), DEFAULT_METRIC.into()));
    }
    let query = Query::from_params(&params)?;
    let result = frontend.query(&query).await?;
    let answer = AnalyticsResponse {
        metric: result.metric.clone(),
        average: result.get(Agg::Avg),
        count: result.get(Agg::Count).unwrap_or(0.0) as u64,
        is_partial: result.coverage.is_partial,
        total_nodes: result.coverage.total_nodes,
        responding_nodes: result.coverage.responding_nodes,
        missing_partitions: result.coverage.missing_partitions.clone(),
    };
    Ok(respond(response_format(&headers, Format::Bincode), &answer))
}
