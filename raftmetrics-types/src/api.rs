//! Request and response bodies of the cluster's HTTP API, shared by the server and the
//! client so both sides agree on one definition.
//!
//! Bodies travel as JSON (`application/json`) or bincode (`application/octet-stream`, see
//! [`crate::codec`]). Bincode is positional: these structs never skip fields, so the same
//! type serves both codecs. Errors are always JSON ([`ErrorBody`]).
//!
//! Inserts accept one point or an array. A JSON point may name its metric `metric` or `key`
//! and its tags `tags` or `metadata` (the API reference uses both); a point without a metric
//! is stored under [`DEFAULT_METRIC`]. Bincode inserts carry `Vec<Point>` directly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, FieldError};
use crate::model::{Point, Tags};
use crate::query::{Query, ValueFilter};
use crate::time::Timestamp;

/// Metric of points sent without one (`{"partition_key": "user123", "value": 42.5}`), and
/// the metric `/analytics` averages when none is named.
pub const DEFAULT_METRIC: &str = "value";

/// Media type of bincode bodies.
pub const BINCODE_MEDIA_TYPE: &str = "application/octet-stream";

/// The request header that names an insert batch, so that sending it again stores it once
/// ([`crate::idempotency`]). Its value is a [`crate::BatchId`].
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// A point in the JSON insert format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonPoint {
    #[serde(default, alias = "key")]
    pub metric: Option<String>,
    pub value: f64,
    #[serde(default)]
    pub timestamp: Option<Timestamp>,
    #[serde(default, alias = "metadata")]
    pub tags: Option<Tags>,
    #[serde(default)]
    pub partition_key: Option<String>,
}

impl From<JsonPoint> for Point {
    fn from(p: JsonPoint) -> Point {
        Point {
            metric: p.metric.unwrap_or_else(|| DEFAULT_METRIC.to_string()),
            value: p.value,
            timestamp: p.timestamp,
            tags: p.tags.unwrap_or_default(),
            partition_key: p.partition_key,
        }
    }
}

/// A JSON insert body: one point or an array of points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JsonInsert {
    One(JsonPoint),
    Many(Vec<JsonPoint>),
}

impl JsonInsert {
    pub fn into_points(self) -> Vec<Point> {
        match self {
            JsonInsert::One(p) => vec![p.into()],
            JsonInsert::Many(ps) => ps.into_iter().map(Point::from).collect(),
        }
    }
}

/// The answer to an insert that succeeded: every point was stored (acknowledged by a Raft
/// quorum of its partition). An insert that fails answers an error instead; when its points
/// spanned several partitions, the partitions that did store their part are named in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InsertResponse {
    pub success: bool,
    pub message: String,
    /// Points stored.
    pub points: u64,
    /// Partitions written, ascending.
    pub partitions: Vec<u32>,
    /// The partition, when all points went to one.
    pub partition: Option<u32>,
    /// The worker leading that partition (`worker-<id>`), when all points went to one.
    pub worker_node: Option<String>,
    /// Size of the worker's storage (worker `/insert` only), e.g. `1.2GB`.
    pub storage_size: Option<String>,
}

/// `GET /analytics`: the average of a metric across the cluster, with its coverage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalyticsResponse {
    pub metric: String,
    /// `None` when no point matched.
    pub average: Option<f64>,
    pub count: u64,
    pub is_partial: bool,
    pub total_nodes: u32,
    pub responding_nodes: u32,
    pub missing_partitions: Vec<u32>,
}

/// A time range in a compute request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    #[serde(default)]
    pub from: Option<Timestamp>,
    #[serde(default)]
    pub to: Option<Timestamp>,
}

/// `POST /compute` on a worker: what the API reference sends. Every field is optional; an
/// empty body computes the average and count of [`DEFAULT_METRIC`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeRequest {
    #[serde(default)]
    pub metric: Option<String>,
    /// `avg`, `min`, `max`, `sum`, `count`, `pNN`.
    #[serde(default)]
    pub aggregations: Vec<String>,
    #[serde(default)]
    pub time_window: Option<TimeWindow>,
    /// At most one tag: the worker answers `groups` keyed by its value.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Bounds on point values, as `/aggregate`'s parameters of the same names: finite
    /// numbers, every one given must hold.
    #[serde(default)]
    pub value_gt: Option<f64>,
    #[serde(default)]
    pub value_ge: Option<f64>,
    #[serde(default)]
    pub value_lt: Option<f64>,
    #[serde(default)]
    pub value_le: Option<f64>,
}

impl ComputeRequest {
    /// Reads a JSON body. A value bound that is not a number is a validation error naming
    /// every such field (`value_gt`, ...), as `/aggregate` reports its parameters; any other
    /// malformed body is an invalid request.
    pub fn from_json(body: &[u8]) -> crate::Result<ComputeRequest> {
        let invalid =
            |e: serde_json::Error| Error::InvalidRequest(format!("invalid compute request: {e}"));
        let doc: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
        if let Some(fields) = doc.as_object() {
            let bad: Vec<FieldError> = ValueFilter::PARAMS
                .iter()
                .filter(|name| {
                    fields
                        .get(**name)
                        .is_some_and(|v| !(v.is_null() || v.is_number()))
                })
                .map(|name| FieldError::new(*name, "must be a finite number"))
                .collect();
            if !bad.is_empty() {
                return Err(Error::Validation(bad));
            }
        }
        serde_json::from_value(doc).map_err(invalid)
    }
}

/// `POST /compute` answer: only what this worker holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeResponse {
    pub metric: String,
    /// Aggregation name → value (`None` where undefined).
    pub results: BTreeMap<String, Option<f64>>,
    /// Group value → aggregation name → value.
    pub groups: BTreeMap<String, BTreeMap<String, Option<f64>>>,
    pub average: Option<f64>,
    pub count: u64,
    /// Partitions this worker holds a replica of.
    pub partitions: Vec<u32>,
    pub computation_time_ms: u64,
}

/// Raft state in a health answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RaftHealth {
    /// Worker: `leader` if it leads any partition, else `follower`. Control: the role of its
    /// replica of the metadata group (`leader`, `follower`, `candidate`, `pre_candidate`).
    pub role: String,
    pub term: u64,
    pub last_log_index: u64,
    /// `node-<id>`, when known.
    pub leader_id: Option<String>,
    /// RFC 3339 time the leader was last heard from.
    pub last_heartbeat: Option<String>,
    /// Groups this node leads / holds.
    pub leading: u32,
    pub replicas: u32,
    /// Control: the metadata group's commit index on this node.
    #[serde(default)]
    pub commit_index: Option<u64>,
}

/// A control node's view of the control plane (the metadata Raft group of the control
/// nodes), in `/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneHealth {
    /// Control nodes in the cluster (voters of the metadata group).
    pub control_nodes: u32,
    /// The metadata group's leader (a control node id), when one is known.
    pub leader: Option<u64>,
    /// Whether this node leads the metadata group (and so decides placement and moves).
    pub deciding: bool,
    /// Whether placement changes (rebalancing, drains, dead workers) can be made now: a
    /// leader is known. Inserts and queries go on without it, from the committed placement.
    pub placement_changes: bool,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The placement epoch this node serves from, and the newest one workers report.
    pub epoch: u64,
    pub newest_worker_epoch: u64,
    /// What is wrong, when something is.
    pub problem: Option<String>,
}

/// `GET /ready` when the node is ready (HTTP 200). Before that the node answers 503 in the
/// API's error format, its `details` naming what is missing (`missing_partitions`,
/// `problems`).
///
/// A control node is ready once the partitions are placed and every partition has a leader
/// on a worker that answers; a worker once it has the cluster view and every replica placed
/// on it exists and knows a leader that answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyResponse {
    /// Always `ready`.
    pub status: String,
    /// `control` or `worker`.
    pub role: String,
    pub node_id: u64,
    /// Partitions that must have a leader: all of them on a control node, the ones placed on
    /// it on a worker.
    pub partitions_total: u32,
    /// Of those, the ones whose leader answers (all of them, when ready).
    pub partitions_led: u32,
}

/// Worker counts in the control node's health answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerCounts {
    pub total: u32,
    pub healthy: u32,
}

/// Storage in a worker's health answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StorageHealth {
    pub total_size: String,
    pub free_space: Option<String>,
    pub total_bytes: u64,
}

/// `GET /health`. `status` is `healthy`, `degraded` (serving with some partitions or
/// workers unavailable) or `starting`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
    pub role: String,
    pub node_id: u64,
    pub uptime: String,
    pub uptime_secs: u64,
    /// Control node only.
    pub worker_nodes: Option<WorkerCounts>,
    /// Control node only: partitions with a known, live leader.
    pub partitions_available: Option<u32>,
    /// Control node only: the placement's epoch (raised by every change of where replicas
    /// live).
    #[serde(default)]
    pub epoch: Option<u64>,
    /// Control node only: replica moves in flight.
    #[serde(default)]
    pub moves_in_flight: Option<u32>,
    pub partitions_total: u32,
    /// Worker only.
    pub storage: Option<StorageHealth>,
    pub raft_status: RaftHealth,
    /// Control node: the control plane (the metadata group of the control nodes).
    #[serde(default)]
    pub control_plane: Option<ControlPlaneHealth>,
}

/// The JSON error body every endpoint answers with on failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: bool,
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: serde_json::Value,
}

/// The RFC 3339 time `ms_ago` milliseconds before now (`raft_status.last_heartbeat`).
pub fn heard_at(ms_ago: u64) -> String {
    let ago = i64::try_from(ms_ago)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    crate::Timestamp::from_micros(crate::Timestamp::now().as_micros().saturating_sub(ago))
        .to_rfc3339()
}

/// `2d 15h 30m` (the API reference's uptime format; seconds below a minute).
pub fn format_uptime(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, m) => format!("{d}d {h}h {m}m"),
    }
}

/// `1.2GB`-style sizes (powers of 1024).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// The query a [`ComputeRequest`] stands for.
pub fn compute_query(req: &ComputeRequest) -> crate::Result<Query> {
    let mut params: Vec<(String, String)> = vec![(
        "metric".into(),
        req.metric.clone().unwrap_or_else(|| DEFAULT_METRIC.into()),
    )];
    let mut aggs = req.aggregations.clone();
    if aggs.is_empty() {
        aggs = vec!["avg".into(), "count".into()];
    }
    for must in ["avg", "count"] {
        if !aggs.iter().any(|a| a == must) {
            aggs.push(must.into());
        }
    }
    params.push(("agg".into(), aggs.join(",")));
    if let Some(w) = &req.time_window {
        if let Some(from) = w.from {
            params.push(("from".into(), from.to_rfc3339()));
        }
        if let Some(to) = w.to {
            params.push(("to".into(), to.to_rfc3339()));
        }
    }
    if !req.group_by.is_empty() {
        params.push(("group_by".into(), req.group_by.join(",")));
    }
    let bounds = [req.value_gt, req.value_ge, req.value_lt, req.value_le];
    for (name, bound) in ValueFilter::PARAMS.iter().zip(bounds) {
        if let Some(v) = bound {
            params.push((name.to_string(), v.to_string()));
        }
    }
    Query::from_params(&params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_insert_accepts_the_seed_shapes() {
        let one: JsonInsert =
            serde_json::from_str(r#"{"partition_key":"user123","value":42.5}"#).unwrap();
        let p = &one.into_points()[0];
        assert_eq!(p.metric, DEFAULT_METRIC);
        assert_eq!(p.partition_key.as_deref(), Some("user123"));
        let many: JsonInsert = serde_json::from_str(
            r#"[{"key":"cpu","value":1,"timestamp":"2024-01-20T15:30:00Z","tags":{"host":"a"}},
                {"metric":"cpu","value":2,"metadata":{"host":"b"}}]"#,
        )
        .unwrap();
        let ps = many.into_points();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[1].tags["host"], "b");
        assert!(serde_json::from_str::<JsonInsert>(r#"{"value":1,"bogus":2}"#).is_err());
    }

    #[test]
    fn compute_request_always_has_avg_and_count() {
        let q = compute_query(&ComputeRequest::default()).unwrap();
        assert_eq!(q.metric, DEFAULT_METRIC);
        assert!(q.aggs.contains(&crate::Agg::Avg) && q.aggs.contains(&crate::Agg::Count));
    }

    #[test]
    fn compute_requests_carry_value_bounds() {
        let req = ComputeRequest::from_json(
            br#"{"metric": "usage_user", "aggregations": ["last", "first"],
                 "value_gt": 90, "value_le": 99.5, "value_lt": null}"#,
        )
        .unwrap();
        let q = compute_query(&req).unwrap();
        assert_eq!(q.values.gt, Some(90.0));
        assert_eq!(q.values.le, Some(99.5));
        assert_eq!(q.values.lt, None);
        assert!(q.aggs.contains(&crate::Agg::Last) && q.aggs.contains(&crate::Agg::First));
        // Every bound that is not a number is named.
        match ComputeRequest::from_json(br#"{"value_gt": "abc", "value_lt": [1], "value_ge": 1}"#) {
            Err(Error::Validation(f)) => assert_eq!(
                f.into_iter().map(|f| f.field).collect::<Vec<_>>(),
                vec!["value_gt", "value_lt"]
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ComputeRequest::from_json(br#"{"value_gt": 1, "colour": 2}"#),
            Err(Error::InvalidRequest(_))
        ));
        // A bound that is not finite (possible in bincode) is refused by the query's rules.
        let req = ComputeRequest {
            value_gt: Some(f64::NAN),
            value_lt: Some(f64::NEG_INFINITY),
            ..ComputeRequest::default()
        };
        match compute_query(&req) {
            Err(Error::Validation(f)) => assert_eq!(
                f.into_iter().map(|f| f.field).collect::<Vec<_>>(),
                vec!["value_gt", "value_lt"]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sizes_and_uptimes_read_like_the_reference() {
        assert_eq!(format_bytes(1_288_490_189), "1.2GB");
        assert_eq!(format_bytes(512), "512B");
        assert_eq!(
            format_uptime(2 * 86_400 + 15 * 3_600 + 30 * 60),
            "2d 15h 30m"
        );
        assert_eq!(format_uptime(42), "42s");
    }
}
