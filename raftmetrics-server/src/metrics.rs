//! This node's own metrics in the Prometheus text exposition format (version 0.0.4).
//!
//! One [`Metrics`] per process, shared as `Arc<Metrics>`: the HTTP layer records every
//! request through the [`track_requests`] middleware, the node's code calls the setters and
//! incrementers (points inserted, query outcomes, RPC round trips, Raft proposals and commit
//! times, worker liveness), a periodic task feeds [`Metrics::observe_raft`] with the Raft
//! replica statuses, and `GET /metrics` answers with [`Metrics::render`] (or use
//! [`serve_metrics`] as the handler).
//!
//! The exposition is hand-rolled: counters and gauges without labels are atomics, labeled
//! series live in small mutex-guarded maps. Every label set is bounded: `route` is the
//! matched axum route template (never the raw path; requests no route matched count under
//! `route="other"`), `method` is one of the standard methods or `other`, `status` is the
//! status class (`2xx`, `4xx`, ...), `code` the numeric status code, `op` a caller-chosen
//! static name, `partition` a partition id this node holds. Each labeled family also has a
//! hard cap on its distinct label values ([`MAX_LABEL_VALUES`]); past it, new values are
//! counted under `other`.
//!
//! Families (all prefixed `raftmetrics_`):
//!
//! | family | type | labels |
//! | --- | --- | --- |
//! | `node_up`, `node_info` | gauge | `role`, `node_id` (`node_info` also `version`) |
//! | `uptime_seconds`, `storage_bytes` | gauge | |
//! | `http_requests_total` | counter | `route`, `method`, `status` |
//! | `http_request_duration_seconds` | histogram | `route` |
//! | `http_errors_total` | counter | `route`, `code` |
//! | `points_inserted_total` | counter | |
//! | `remote_write_dropped_total` | counter | `kind` = `metadata`, `exemplar`, `histogram`, `stale`, `non_finite` |
//! | `insert_batches_total`, `queries_total` | counter | `result` = `ok`, `partial`, `error` |
//! | `rpc_round_trip_seconds` | histogram | `op` |
//! | `workers` | gauge | `state` = `healthy`, `unhealthy` (only once set, i.e. on control) |
//! | `raft_proposals_total` | counter | `result` = `ok`, `error` |
//! | `raft_commit_seconds` | histogram | |
//! | `raft_leader`, `raft_term`, `raft_applied_index` | gauge | `partition` |
//! | `raft_elections_total` | counter | |
//! | `raft_state_changes_total` | counter | `to` = `leader`, `follower`, `candidate`, `precandidate` |
//! | `connections_open` | gauge | `listener` = `http`, `node` |
//! | `connections_accepted_total`, `connections_refused_total`, `connections_evicted_total` | counter | `listener` |
//! | `connections_timed_out_total` | counter | `listener`, `timeout` = `header`, `idle` (`http`); `handshake`, `idle` (`node`) |
//!
//! The connection families appear for a listener once it is exported
//! ([`Metrics::export_http_listener`], [`Metrics::export_node_listener`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use raftmetrics_core::PartitionId;
use raftmetrics_core::raft::{ReplicaStatus, Role};

use crate::http::listener::ListenerStats;
use crate::wire::tcp_transport::ServeStats;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `route` label of requests that no route matched.
pub const OTHER_ROUTE: &str = "other";

/// Most distinct values of a free-form label (`route`, `op`) per family; further values are
/// counted under `other`.
pub const MAX_LABEL_VALUES: usize = 256;

/// Upper bounds (seconds) of the HTTP request duration histogram.
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds (seconds) of the RPC round-trip and Raft commit histograms.
const FAST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Outcome of an insert batch or a query: the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything succeeded.
    Ok,
    /// Part of it succeeded (some points rejected, some partitions unavailable).
    Partial,
    /// It failed.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Partial, Outcome::Error];

    /// The label value: `ok`, `partial` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<bool> for Outcome {
    /// `true` is [`Outcome::Ok`], `false` [`Outcome::Error`].
    fn from(ok: bool) -> Self {
        if ok { Outcome::Ok } else { Outcome::Error }
    }
}

/// A histogram with fixed bucket bounds, updated with atomics.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Writes `<name>_bucket`, `_sum` and `_count` with the labels `labels` (already
    /// formatted `k="v"` pairs, comma-separated, possibly empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(count.load(Ordering::Relaxed));
            let le = match self.bounds.get(i) {
                Some(b) => format_float(*b),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", format_float(sum));
        // `_count` is the `+Inf` bucket, so the two always agree.
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// What the node remembers of one Raft group between observations.
#[derive(Clone, Copy, Debug)]
struct GroupState {
    role: Role,
    term: u64,
    applied_index: u64,
}

/// Reads one per-partition gauge out of a [`GroupState`].
type GroupGauge = fn(&GroupState) -> u64;

/// Per-route HTTP statistics.
#[derive(Debug)]
struct RouteStats {
    /// `(method, status class)` → requests.
    requests: BTreeMap<(&'static str, &'static str), u64>,
    /// Status code → responses with that code (only codes >= 400).
    errors: BTreeMap<u16, u64>,
    duration: Histogram,
}

impl RouteStats {
    fn new() -> Self {
        RouteStats {
            requests: BTreeMap::new(),
            errors: BTreeMap::new(),
            duration: Histogram::new(HTTP_BUCKETS),
        }
    }
}

/// The `role="...",node_id="..."` label pair of this node, escaped once.
#[derive(Debug)]
struct Identity {
    role: String,
    node_id: u64,
    labels: String,
}

/// What a Prometheus remote write request may carry that is not stored: metadata,
/// exemplars, native histogram samples, staleness markers, other NaN or infinite samples.
pub const REMOTE_WRITE_DROPPED: [&str; 5] =
    ["metadata", "exemplar", "histogram", "stale", "non_finite"];

/// This process's metrics. Create one with [`Metrics::new`] and share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    identity: Identity,
    started: Instant,
    storage_bytes: AtomicU64,
    points_inserted: AtomicU64,
    remote_write_dropped: [AtomicU64; REMOTE_WRITE_DROPPED.len()],
    insert_batches: [AtomicU64; 3],
    queries: [AtomicU64; 3],
    workers_set: AtomicBool,
    workers_healthy: AtomicU64,
    workers_unhealthy: AtomicU64,
    proposals_ok: AtomicU64,
    proposals_error: AtomicU64,
    commit: Histogram,
    elections: AtomicU64,
    /// Indexed by [`role_index`].
    state_changes: [AtomicU64; 4],
    http: Mutex<BTreeMap<String, RouteStats>>,
    rpc: Mutex<BTreeMap<String, Arc<Histogram>>>,
    raft: Mutex<BTreeMap<PartitionId, GroupState>>,
    listeners: Mutex<Listeners>,
    /// The control node's replica moves (exposed once set).
    moves: Mutex<Option<Moves>>,
    control_plane: Mutex<Option<ControlPlane>>,
}

/// What a control node reports of the metadata group.
#[derive(Clone, Copy, Debug)]
pub struct ControlPlane {
    /// This node leads the metadata group and confirmed it last round.
    pub deciding: bool,
    /// Some leader of the metadata group is known here.
    pub leader_known: bool,
    pub term: u64,
    pub commit_index: u64,
    /// The placement epoch this node serves from.
    pub epoch: u64,
}

/// What the control node reports of replica moves.
#[derive(Clone, Debug, Default)]
struct Moves {
    in_flight: u64,
    started: u64,
    finished: u64,
    failed: u64,
    replicas: BTreeMap<u64, usize>,
}

/// The listeners whose connection counters are exported.
#[derive(Debug, Default)]
struct Listeners {
    http: Option<Arc<ListenerStats>>,
    node: Option<Arc<ServeStats>>,
}

/// One listener's connection counters as the exposition shows them.
struct ConnectionSample {
    listener: &'static str,
    open: u64,
    accepted: u64,
    refused: u64,
    evicted: u64,
    /// `(timeout label, connections closed by it)`.
    timed_out: [(&'static str, u64); 2],
}

/// The Raft roles in the order of [`Metrics::state_changes`].
const ROLES: [Role; 4] = [
    Role::Leader,
    Role::Follower,
    Role::Candidate,
    Role::PreCandidate,
];

fn role_index(role: Role) -> usize {
    match role {
        Role::Leader => 0,
        Role::Follower => 1,
        Role::Candidate => 2,
        Role::PreCandidate => 3,
    }
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "precandidate",
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Metrics {
    /// Metrics of the node `node_id` running `role` (`control`, `worker`).
    pub fn new(role: &str, node_id: u64) -> Self {
        let labels = format!(
            "role=\"{}\",node_id=\"{node_id}\"",
            escape_label_value(role)
        );
        Metrics {
            identity: Identity {
                role: role.to_string(),
                node_id,
                labels,
            },
            started: Instant::now(),
            storage_bytes: AtomicU64::new(0),
            points_inserted: AtomicU64::new(0),
            remote_write_dropped: Default::default(),
            insert_batches: Default::default(),
            queries: Default::default(),
            workers_set: AtomicBool::new(false),
            workers_healthy: AtomicU64::new(0),
            workers_unhealthy: AtomicU64::new(0),
            proposals_ok: AtomicU64::new(0),
            proposals_error: AtomicU64::new(0),
            commit: Histogram::new(FAST_BUCKETS),
            elections: AtomicU64::new(0),
            state_changes: Default::default(),
            http: Mutex::new(BTreeMap::new()),
            rpc: Mutex::new(BTreeMap::new()),
            raft: Mutex::new(BTreeMap::new()),
            listeners: Mutex::new(Listeners::default()),
            moves: Mutex::new(None),
            control_plane: Mutex::new(None),
        }
    }

    /// The role given to [`Metrics::new`].
    pub fn role(&self) -> &str {
        &self.identity.role
    }

    /// The node id given to [`Metrics::new`].
    pub fn node_id(&self) -> u64 {
        self.identity.node_id
    }

    /// Exports the counters of the public HTTP listener as the `raftmetrics_connections_*`
    /// families with `listener="http"`.
    pub fn export_http_listener(&self, stats: Arc<ListenerStats>) {
        lock(&self.listeners).http = Some(stats);
    }

    /// Exports the connection counters of the node-to-node listener as the
    /// `raftmetrics_connections_*` families with `listener="node"`; answers `stats`, to be
    /// handed to the listener.
    pub fn export_node_listener(&self, stats: Arc<ServeStats>) -> Arc<ServeStats> {
        lock(&self.listeners).node = Some(Arc::clone(&stats));
        stats
    }

    /// Sets `raftmetrics_storage_bytes`: bytes this node's stores take on disk.
    pub fn set_storage_bytes(&self, bytes: u64) {
        self.storage_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Adds to `raftmetrics_remote_write_dropped_total{kind}` (`kind` one of
    /// [`REMOTE_WRITE_DROPPED`]).
    pub fn add_remote_write_dropped(&self, kind: &str, count: u64) {
        if let Some(i) = REMOTE_WRITE_DROPPED.iter().position(|k| *k == kind) {
            self.remote_write_dropped[i].fetch_add(count, Ordering::Relaxed);
        }
    }

    /// Adds to `raftmetrics_points_inserted_total`.
    pub fn add_points_inserted(&self, points: u64) {
        self.points_inserted.fetch_add(points, Ordering::Relaxed);
    }

    /// Counts one insert batch in `raftmetrics_insert_batches_total{result}`.
    pub fn inc_insert_batch(&self, result: impl Into<Outcome>) {
        self.insert_batches[result.into().index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one query in `raftmetrics_queries_total{result}`.
    pub fn inc_query(&self, result: impl Into<Outcome>) {
        self.queries[result.into().index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Records one node-to-node RPC round trip of the operation `op` (a fixed name such as
    /// `write` or `compute`) in `raftmetrics_rpc_round_trip_seconds{op}`.
    pub fn observe_rpc(&self, op: &str, elapsed: Duration) {
        let histogram = {
            let mut rpc = lock(&self.rpc);
            match rpc.get(op) {
                Some(h) => Arc::clone(h),
                None => {
                    let key = if rpc.len() < MAX_LABEL_VALUES {
                        op
                    } else {
                        OTHER_ROUTE
                    };
                    Arc::clone(
                        rpc.entry(key.to_string())
                            .or_insert_with(|| Arc::new(Histogram::new(FAST_BUCKETS))),
                    )
                }
            }
        };
        histogram.observe(elapsed);
    }

    /// Sets `raftmetrics_workers{state}`: registered workers that are healthy and unhealthy
    /// (control node). The family is only exposed once this has been called.
    pub fn set_workers(&self, healthy: u64, unhealthy: u64) {
        self.workers_healthy.store(healthy, Ordering::Relaxed);
        self.workers_unhealthy.store(unhealthy, Ordering::Relaxed);
        self.workers_set.store(true, Ordering::Relaxed);
    }

    /// Sets the control node's metadata group families: `raftmetrics_metadata_deciding`,
    /// `raftmetrics_metadata_leader_known`, `raftmetrics_metadata_term`,
    /// `raftmetrics_metadata_commit_index` and `raftmetrics_placement_epoch`.
    pub fn set_control_plane(&self, plane: ControlPlane) {
        *lock(&self.control_plane) = Some(plane);
    }

    /// Sets the control node's move families: `raftmetrics_moves_in_flight`,
    /// `raftmetrics_moves_total{result}` (`started`, `finished`, `failed`: rolled back) and
    /// `raftmetrics_worker_replicas{worker}` (replicas placed per worker).
    pub fn set_moves(
        &self,
        in_flight: u64,
        (started, finished, failed): (u64, u64, u64),
        replicas: &BTreeMap<u64, usize>,
    ) {
        *lock(&self.moves) = Some(Moves {
            in_flight,
            started,
            finished,
            failed,
            replicas: replicas.clone(),
        });
    }

    fn render_moves(&self, out: &mut String) {
        let Some(m) = lock(&self.moves).clone() else {
            return;
        };
        family(
            out,
            "raftmetrics_moves_in_flight",
            "gauge",
            "Replica moves in flight (control node).",
        );
        let _ = writeln!(out, "raftmetrics_moves_in_flight {}", m.in_flight);
        family(
            out,
            "raftmetrics_moves_total",
            "counter",
            "Replica moves started, finished and failed (rolled back) since the control node started.",
        );
        for (result, n) in [
            ("started", m.started),
            ("finished", m.finished),
            ("failed", m.failed),
        ] {
            let _ = writeln!(out, "raftmetrics_moves_total{{result=\"{result}\"}} {n}");
        }
        family(
            out,
            "raftmetrics_worker_replicas",
            "gauge",
            "Partition replicas placed on each worker (voters and learners).",
        );
        for (worker, n) in &m.replicas {
            let _ = writeln!(
                out,
                "raftmetrics_worker_replicas{{worker=\"{worker}\"}} {n}"
            );
        }
    }

    /// Counts one Raft proposal in `raftmetrics_raft_proposals_total{result}`.
    pub fn inc_proposal(&self, ok: bool) {
        let counter = if ok {
            &self.proposals_ok
        } else {
            &self.proposals_error
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a proposal took to commit (and apply) in
    /// `raftmetrics_raft_commit_seconds`.
    pub fn observe_commit(&self, elapsed: Duration) {
        self.commit.observe(elapsed);
    }

    /// Updates the per-partition Raft gauges from this node's replica statuses, and counts
    /// `raftmetrics_raft_elections_total` (a group's term rose since the previous call) and
    /// `raftmetrics_raft_state_changes_total{to}` (a replica's role changed since the previous
    /// call). A group seen for the first time only sets the baseline; groups missing from
    /// `statuses` are forgotten (their gauges disappear).
    pub fn observe_raft(&self, statuses: &[ReplicaStatus]) {
        let mut raft = lock(&self.raft);
        let mut next = BTreeMap::new();
        for s in statuses {
            if let Some(prev) = raft.get(&s.group) {
                if s.term > prev.term {
                    self.elections.fetch_add(1, Ordering::Relaxed);
                }
                if s.role != prev.role {
                    self.state_changes[role_index(s.role)].fetch_add(1, Ordering::Relaxed);
                }
            }
            next.insert(
                s.group,
                GroupState {
                    role: s.role,
                    term: s.term,
                    applied_index: s.applied_index,
                },
            );
        }
        *raft = next;
    }

    /// Records one HTTP request: `route` is the matched route template (or [`OTHER_ROUTE`]).
    /// [`track_requests`] calls this for every request.
    pub fn record_request(
        &self,
        route: &str,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        let class = status_class(status);
        let mut http = lock(&self.http);
        let route = if http.contains_key(route) || http.len() < MAX_LABEL_VALUES {
            route
        } else {
            OTHER_ROUTE
        };
        if !http.contains_key(route) {
            http.insert(route.to_string(), RouteStats::new());
        }
        let Some(stats) = http.get_mut(route) else {
            return;
        };
        *stats.requests.entry((method, class)).or_insert(0) += 1;
        if status.as_u16() >= 400 {
            *stats.errors.entry(status.as_u16()).or_insert(0) += 1;
        }
        stats.duration.observe(elapsed);
    }

    /// The exposition text of every family.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let id = &self.identity.labels;

        family(
            &mut out,
            "raftmetrics_node_up",
            "gauge",
            "1 while the node runs.",
        );
        let _ = writeln!(out, "raftmetrics_node_up{{{id}}} 1");
        family(
            &mut out,
            "raftmetrics_node_info",
            "gauge",
            "Constant 1, labeled with the node's role, id and version.",
        );
        let _ = writeln!(
            out,
            "raftmetrics_node_info{{{id},version=\"{}\"}} 1",
            escape_label_value(env!("CARGO_PKG_VERSION"))
        );
        family(
            &mut out,
            "raftmetrics_uptime_seconds",
            "gauge",
            "Seconds since the node started.",
        );
        let _ = writeln!(
            out,
            "raftmetrics_uptime_seconds {}",
            format_float(self.started.elapsed().as_secs_f64())
        );
        family(
            &mut out,
            "raftmetrics_storage_bytes",
            "gauge",
            "Bytes the node's stores take on disk.",
        );
        let _ = writeln!(
            out,
            "raftmetrics_storage_bytes {}",
            self.storage_bytes.load(Ordering::Relaxed)
        );

        self.render_http(&mut out);
        self.render_operations(&mut out);
        self.render_raft(&mut out);
        self.render_connections(&mut out);
        self.render_moves(&mut out);
        // The raft log engine's own write and fsync latencies, sizes and file counts.
        out.push_str(&raftmetrics_core::raft::engine_metrics::render());
        out
    }

    fn render_connections(&self, out: &mut String) {
        let mut samples = Vec::with_capacity(2);
        {
            let listeners = lock(&self.listeners);
            if let Some(http) = &listeners.http {
                let c = http.snapshot();
                samples.push(ConnectionSample {
                    listener: "http",
                    open: c.open,
                    accepted: c.accepted,
                    refused: c.refused,
                    evicted: c.evicted,
                    timed_out: [("header", c.header_timeouts), ("idle", c.idle_timeouts)],
                });
            }
            if let Some(node) = &listeners.node {
                let c = node.snapshot();
                samples.push(ConnectionSample {
                    listener: "node",
                    open: c.connections_open,
                    accepted: c.connections_accepted,
                    refused: c.connections_refused,
                    evicted: c.connections_evicted,
                    timed_out: [
                        ("handshake", c.handshake_timeouts),
                        ("idle", c.idle_timeouts),
                    ],
                });
            }
        }
        type Value = fn(&ConnectionSample) -> u64;
        let families: [(&str, &str, &str, Value); 4] = [
            (
                "raftmetrics_connections_open",
                "gauge",
                "Connections open now, by listener.",
                |c| c.open,
            ),
            (
                "raftmetrics_connections_accepted_total",
                "counter",
                "Connections accepted and served, by listener.",
                |c| c.accepted,
            ),
            (
                "raftmetrics_connections_refused_total",
                "counter",
                "Connections closed at once because the listener's cap was reached (http: every \
                 connection had a request in flight; node: every authenticated slot was taken).",
                |c| c.refused,
            ),
            (
                "raftmetrics_connections_evicted_total",
                "counter",
                "Connections closed to make room for a new one (http: the longest idle; node: \
                 the oldest still in the handshake).",
                |c| c.evicted,
            ),
        ];
        for (name, kind, help, value) in families {
            family(out, name, kind, help);
            for c in &samples {
                let _ = writeln!(out, "{name}{{listener=\"{}\"}} {}", c.listener, value(c));
            }
        }
        family(
            out,
            "raftmetrics_connections_timed_out_total",
            "counter",
            "Connections closed by a timeout, by listener and timeout (header: a request head \
             not complete in time; handshake: no valid hello in time; idle: nothing received).",
        );
        for c in &samples {
            for (timeout, n) in c.timed_out {
                let _ = writeln!(
                    out,
                    "raftmetrics_connections_timed_out_total{{listener=\"{}\",timeout=\"{timeout}\"}} {n}",
                    c.listener
                );
            }
        }
    }

    fn render_http(&self, out: &mut String) {
        let http = lock(&self.http);
        family(
            out,
            "raftmetrics_http_requests_total",
            "counter",
            "HTTP requests by matched route, method and status class.",
        );
        for (route, stats) in http.iter() {
            let route = escape_label_value(route);
            for ((method, class), n) in &stats.requests {
                let _ = writeln!(
                    out,
                    "raftmetrics_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{class}\"}} {n}"
                );
            }
        }
        family(
            out,
            "raftmetrics_http_request_duration_seconds",
            "histogram",
            "HTTP request duration by matched route.",
        );
        for (route, stats) in http.iter() {
            let labels = format!("route=\"{}\"", escape_label_value(route));
            stats
                .duration
                .render(out, "raftmetrics_http_request_duration_seconds", &labels);
        }
        family(
            out,
            "raftmetrics_http_errors_total",
            "counter",
            "HTTP responses with status >= 400 by matched route and status code.",
        );
        for (route, stats) in http.iter() {
            let route = escape_label_value(route);
            for (code, n) in &stats.errors {
                let _ = writeln!(
                    out,
                    "raftmetrics_http_errors_total{{route=\"{route}\",code=\"{code}\"}} {n}"
                );
            }
        }
    }

    fn render_operations(&self, out: &mut String) {
        family(
            out,
            "raftmetrics_remote_write_dropped_total",
            "counter",
            "Parts of Prometheus remote write requests not stored, by kind.",
        );
        for (kind, count) in REMOTE_WRITE_DROPPED.iter().zip(&self.remote_write_dropped) {
            let _ = writeln!(
                out,
                "raftmetrics_remote_write_dropped_total{{kind=\"{kind}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        family(
            out,
            "raftmetrics_points_inserted_total",
            "counter",
            "Points accepted by inserts.",
        );
        let _ = writeln!(
            out,
            "raftmetrics_points_inserted_total {}",
            self.points_inserted.load(Ordering::Relaxed)
        );
        family(
            out,
            "raftmetrics_insert_batches_total",
            "counter",
            "Insert batches by result.",
        );
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "raftmetrics_insert_batches_total{{result=\"{}\"}} {}",
                o.as_str(),
                self.insert_batches[o.index()].load(Ordering::Relaxed)
            );
        }
        family(
            out,
            "raftmetrics_queries_total",
            "counter",
            "Queries by result.",
        );
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "raftmetrics_queries_total{{result=\"{}\"}} {}",
                o.as_str(),
                self.queries[o.index()].load(Ordering::Relaxed)
            );
        }
        family(
            out,
            "raftmetrics_rpc_round_trip_seconds",
            "histogram",
            "Node-to-node RPC round trips by operation.",
        );
        for (op, h) in lock(&self.rpc).iter() {
            let labels = format!("op=\"{}\"", escape_label_value(op));
            h.render(out, "raftmetrics_rpc_round_trip_seconds", &labels);
        }
        if self.workers_set.load(Ordering::Relaxed) {
            family(
                out,
                "raftmetrics_workers",
                "gauge",
                "Registered workers by liveness.",
            );
            let _ = writeln!(
                out,
                "raftmetrics_workers{{state=\"healthy\"}} {}",
                self.workers_healthy.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "raftmetrics_workers{{state=\"unhealthy\"}} {}",
                self.workers_unhealthy.load(Ordering::Relaxed)
            );
        }
        if let Some(plane) = *lock(&self.control_plane) {
            for (name, help, value) in [
                (
                    "raftmetrics_metadata_deciding",
                    "1 while this control node leads the metadata group and confirmed it with a majority.",
                    u64::from(plane.deciding),
                ),
                (
                    "raftmetrics_metadata_leader_known",
                    "1 while this control node knows a leader of the metadata group (placement changes can be made).",
                    u64::from(plane.leader_known),
                ),
                (
                    "raftmetrics_metadata_term",
                    "The metadata group's Raft term on this control node.",
                    plane.term,
                ),
                (
                    "raftmetrics_metadata_commit_index",
                    "The metadata group's commit index on this control node.",
                    plane.commit_index,
                ),
                (
                    "raftmetrics_placement_epoch",
                    "The placement epoch this control node serves from.",
                    plane.epoch,
                ),
            ] {
                family(out, name, "gauge", help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
    }

    fn render_raft(&self, out: &mut String) {
        family(
            out,
            "raftmetrics_raft_proposals_total",
            "counter",
            "Raft proposals by result.",
        );
        let _ = writeln!(
            out,
            "raftmetrics_raft_proposals_total{{result=\"ok\"}} {}",
            self.proposals_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "raftmetrics_raft_proposals_total{{result=\"error\"}} {}",
            self.proposals_error.load(Ordering::Relaxed)
        );
        family(
            out,
            "raftmetrics_raft_commit_seconds",
            "histogram",
            "Time from proposing a Raft entry to its commit.",
        );
        self.commit
            .render(out, "raftmetrics_raft_commit_seconds", "");
        family(
            out,
            "raftmetrics_raft_elections_total",
            "counter",
            "Term increases seen in this node's Raft groups.",
        );
        let _ = writeln!(
            out,
            "raftmetrics_raft_elections_total {}",
            self.elections.load(Ordering::Relaxed)
        );
        family(
            out,
            "raftmetrics_raft_state_changes_total",
            "counter",
            "Role changes of this node's Raft replicas, by new role.",
        );
        for role in ROLES {
            let _ = writeln!(
                out,
                "raftmetrics_raft_state_changes_total{{to=\"{}\"}} {}",
                role_label(role),
                self.state_changes[role_index(role)].load(Ordering::Relaxed)
            );
        }

        let raft = lock(&self.raft);
        let gauges: [(&str, &str, GroupGauge); 3] = [
            (
                "raftmetrics_raft_leader",
                "1 if this node leads the partition's Raft group, else 0.",
                |g| u64::from(g.role == Role::Leader),
            ),
            (
                "raftmetrics_raft_term",
                "Current Raft term of the partition's replica on this node.",
                |g| g.term,
            ),
            (
                "raftmetrics_raft_applied_index",
                "Last Raft log index applied by the partition's replica on this node.",
                |g| g.applied_index,
            ),
        ];
        for (name, help, value) in gauges {
            family(out, name, "gauge", help);
            for (partition, g) in raft.iter() {
                let _ = writeln!(out, "{name}{{partition=\"{partition}\"}} {}", value(g));
            }
        }
    }
}

/// Axum middleware recording `raftmetrics_http_requests_total`,
/// `raftmetrics_http_request_duration_seconds` and `raftmetrics_http_errors_total` under the
/// matched route template. Install it with
/// `router.layer(axum::middleware::from_fn_with_state(metrics, track_requests))` so that
/// it sees [`MatchedPath`]. A request whose future is dropped before it answers (client gone)
/// is not counted.
pub async fn track_requests(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics.record_request(
        route.as_ref().map_or(OTHER_ROUTE, MatchedPath::as_str),
        &method,
        response.status(),
        started.elapsed(),
    );
    response
}

/// Handler of `GET /metrics`: the exposition with its content type.
pub async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        metrics.render(),
    )
        .into_response()
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `# HELP` text: `\` → `\\`, newline → `\n`.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value or `le` bound as Prometheus reads it.
fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    fn status(group: PartitionId, role: Role, term: u64, applied: u64) -> ReplicaStatus {
        ReplicaStatus {
            group,
            node: 1,
            role,
            term,
            leader_id: if role == Role::Leader { 1 } else { 0 },
            commit_index: applied,
            applied_index: applied,
            first_index: 1,
            last_index: applied,
            voters: vec![1, 2, 3],
            learners: Vec::new(),
            voters_outgoing: Vec::new(),
            last_heartbeat_ms_ago: None,
            snapshots_installed: 0,
        }
    }

    /// The value of the sample line that starts with `series ` exactly.
    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_string)
    }

    #[test]
    fn render_has_node_and_operation_families() {
        let m = Metrics::new("worker", 3);
        m.set_storage_bytes(4096);
        m.add_points_inserted(10);
        m.add_points_inserted(5);
        m.inc_insert_batch(Outcome::Ok);
        m.inc_insert_batch(Outcome::Partial);
        m.inc_insert_batch(false);
        m.inc_query(Outcome::Error);
        m.inc_query(Outcome::Ok);
        m.inc_query(Outcome::Ok);
        m.inc_proposal(true);
        m.inc_proposal(false);
        m.inc_proposal(true);
        m.observe_rpc("write", Duration::from_millis(3));
        let text = m.render();

        for name in [
            "raftmetrics_node_up",
            "raftmetrics_node_info",
            "raftmetrics_uptime_seconds",
            "raftmetrics_storage_bytes",
            "raftmetrics_http_requests_total",
            "raftmetrics_http_request_duration_seconds",
            "raftmetrics_http_errors_total",
            "raftmetrics_points_inserted_total",
            "raftmetrics_insert_batches_total",
            "raftmetrics_queries_total",
            "raftmetrics_rpc_round_trip_seconds",
            "raftmetrics_raft_proposals_total",
            "raftmetrics_raft_commit_seconds",
            "raftmetrics_raft_leader",
            "raftmetrics_raft_term",
            "raftmetrics_raft_applied_index",
            "raftmetrics_raft_elections_total",
            "raftmetrics_raft_state_changes_total",
            "raftmetrics_connections_open",
            "raftmetrics_connections_accepted_total",
            "raftmetrics_connections_refused_total",
            "raftmetrics_connections_evicted_total",
            "raftmetrics_connections_timed_out_total",
        ] {
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{name} HELP in\n{text}"
            );
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name} TYPE"
            );
        }
        let s = |series: &str| sample(&text, series);
        assert_eq!(
            s("raftmetrics_node_up{role=\"worker\",node_id=\"3\"}").as_deref(),
            Some("1")
        );
        assert_eq!(s("raftmetrics_storage_bytes").as_deref(), Some("4096"));
        assert_eq!(
            s("raftmetrics_points_inserted_total").as_deref(),
            Some("15")
        );
        assert_eq!(
            s("raftmetrics_insert_batches_total{result=\"partial\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            s("raftmetrics_insert_batches_total{result=\"error\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            s("raftmetrics_queries_total{result=\"ok\"}").as_deref(),
            Some("2")
        );
        assert_eq!(
            s("raftmetrics_queries_total{result=\"error\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            s("raftmetrics_raft_proposals_total{result=\"ok\"}").as_deref(),
            Some("2")
        );
        assert_eq!(
            s("raftmetrics_raft_proposals_total{result=\"error\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            s("raftmetrics_rpc_round_trip_seconds_count{op=\"write\"}").as_deref(),
            Some("1")
        );
        assert!(text.contains("# TYPE raftmetrics_raft_commit_seconds histogram"));
        assert!(text.contains("# TYPE raftmetrics_points_inserted_total counter"));
        // Connection samples only for exported listeners.
        assert!(!text.contains("listener=\""), "{text}");
        // Workers are only exposed once set (control node).
        assert!(!text.contains("raftmetrics_workers"));
        m.set_workers(2, 1);
        m.set_control_plane(ControlPlane {
            deciding: true,
            leader_known: true,
            term: 4,
            commit_index: 17,
            epoch: 3,
        });
        let text = m.render();
        assert_eq!(
            sample(&text, "raftmetrics_metadata_deciding").as_deref(),
            Some("1")
        );
        assert_eq!(
            sample(&text, "raftmetrics_metadata_commit_index").as_deref(),
            Some("17")
        );
        assert_eq!(
            sample(&text, "raftmetrics_placement_epoch").as_deref(),
            Some("3")
        );
        assert_eq!(
            sample(&text, "raftmetrics_workers{state=\"healthy\"}").as_deref(),
            Some("2")
        );
        assert_eq!(
            sample(&text, "raftmetrics_workers{state=\"unhealthy\"}").as_deref(),
            Some("1")
        );
        let http = Arc::new(ListenerStats::default());
        http.open.store(3, Ordering::Relaxed);
        http.accepted.store(3000, Ordering::Relaxed);
        http.refused.store(2, Ordering::Relaxed);
        http.evicted.store(1990, Ordering::Relaxed);
        http.header_timeouts.store(1000, Ordering::Relaxed);
        http.idle_timeouts.store(7, Ordering::Relaxed);
        m.export_http_listener(Arc::clone(&http));
        let node = m.export_node_listener(Arc::default());
        node.connections_open.store(4, Ordering::Relaxed);
        node.connections_accepted.store(70, Ordering::Relaxed);
        node.connections_evicted.store(6, Ordering::Relaxed);
        node.handshake_timeouts.store(5, Ordering::Relaxed);
        node.idle_timeouts.store(1, Ordering::Relaxed);
        let text = m.render();
        let s = |series: &str| sample(&text, series);
        for (series, value) in [
            ("raftmetrics_connections_open{listener=\"http\"}", "3"),
            (
                "raftmetrics_connections_accepted_total{listener=\"http\"}",
                "3000",
            ),
            (
                "raftmetrics_connections_refused_total{listener=\"http\"}",
                "2",
            ),
            (
                "raftmetrics_connections_evicted_total{listener=\"http\"}",
                "1990",
            ),
            (
                "raftmetrics_connections_timed_out_total{listener=\"http\",timeout=\"header\"}",
                "1000",
            ),
            (
                "raftmetrics_connections_timed_out_total{listener=\"http\",timeout=\"idle\"}",
                "7",
            ),
            ("raftmetrics_connections_open{listener=\"node\"}", "4"),
            (
                "raftmetrics_connections_accepted_total{listener=\"node\"}",
                "70",
            ),
            (
                "raftmetrics_connections_refused_total{listener=\"node\"}",
                "0",
            ),
            (
                "raftmetrics_connections_evicted_total{listener=\"node\"}",
                "6",
            ),
            (
                "raftmetrics_connections_timed_out_total{listener=\"node\",timeout=\"handshake\"}",
                "5",
            ),
            (
                "raftmetrics_connections_timed_out_total{listener=\"node\",timeout=\"idle\"}",
                "1",
            ),
        ] {
            assert_eq!(s(series).as_deref(), Some(value), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE raftmetrics_connections_open gauge"));
        assert!(text.contains("# TYPE raftmetrics_connections_evicted_total counter"));
        // Every non-comment line is `series value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("sample line");
            assert!(
                value.parse::<f64>().is_ok() || value == "+Inf",
                "bad value in {line:?}"
            );
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new("control", 1);
        for ms in [0.05, 0.3, 0.3, 4.0, 20_000.0] {
            m.observe_commit(Duration::from_secs_f64(ms / 1000.0));
        }
        let text = m.render();
        let buckets: Vec<(String, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("raftmetrics_raft_commit_seconds_bucket{le=\""))
            .map(|l| {
                let (le, rest) = l.split_once("\"} ").expect("bucket line");
                (le.to_string(), rest.parse().expect("count"))
            })
            .collect();
        assert_eq!(buckets.len(), FAST_BUCKETS.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        let at = |le: &str| buckets.iter().find(|(l, _)| l == le).map(|(_, n)| *n);
        assert_eq!(at("0.0001"), Some(1));
        assert_eq!(at("0.0005"), Some(3));
        assert_eq!(at("0.005"), Some(4));
        assert_eq!(at("10"), Some(4));
        assert_eq!(at("+Inf"), Some(5));
        assert_eq!(
            sample(&text, "raftmetrics_raft_commit_seconds_count").as_deref(),
            Some("5")
        );
        let sum: f64 = sample(&text, "raftmetrics_raft_commit_seconds_sum")
            .expect("sum")
            .parse()
            .expect("float");
        assert!((sum - 20.00465).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let m = Metrics::new("wor\"ker", 2);
        m.record_request(
            "/x/\"{id}\"\\\n",
            &Method::GET,
            StatusCode::OK,
            Duration::from_millis(1),
        );
        let text = m.render();
        assert!(
            text.contains("raftmetrics_node_up{role=\"wor\\\"ker\",node_id=\"2\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "raftmetrics_http_requests_total{route=\"/x/\\\"{id}\\\"\\\\\\n\",method=\"GET\",status=\"2xx\"} 1"
            ),
            "{text}"
        );
        // No raw newline leaked into a sample line.
        assert!(text.lines().all(|l| l.starts_with('#') || l.contains(' ')));
    }

    #[test]
    fn observe_raft_counts_each_election_and_state_change_once() {
        let m = Metrics::new("worker", 1);
        m.observe_raft(&[
            status(0, Role::Follower, 1, 5),
            status(1, Role::Leader, 1, 7),
        ]);
        let text = m.render();
        assert_eq!(
            sample(&text, "raftmetrics_raft_elections_total").as_deref(),
            Some("0")
        );
        assert_eq!(
            sample(&text, "raftmetrics_raft_leader{partition=\"1\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            sample(&text, "raftmetrics_raft_leader{partition=\"0\"}").as_deref(),
            Some("0")
        );

        // Group 0: new term, this node became leader.
        let next = [status(0, Role::Leader, 2, 9), status(1, Role::Leader, 1, 8)];
        m.observe_raft(&next);
        m.observe_raft(&next); // Nothing changed: nothing more is counted.
        let text = m.render();
        let s = |series: &str| sample(&text, series);
        assert_eq!(s("raftmetrics_raft_elections_total").as_deref(), Some("1"));
        assert_eq!(
            s("raftmetrics_raft_state_changes_total{to=\"leader\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            s("raftmetrics_raft_state_changes_total{to=\"follower\"}").as_deref(),
            Some("0")
        );
        assert_eq!(
            s("raftmetrics_raft_leader{partition=\"0\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            s("raftmetrics_raft_term{partition=\"0\"}").as_deref(),
            Some("2")
        );
        assert_eq!(
            s("raftmetrics_raft_applied_index{partition=\"1\"}").as_deref(),
            Some("8")
        );

        // Group 1 dropped from this node: its gauges go away.
        m.observe_raft(&[status(0, Role::Follower, 3, 10)]);
        let text = m.render();
        assert!(!text.contains("partition=\"1\""), "{text}");
        assert_eq!(
            sample(&text, "raftmetrics_raft_elections_total").as_deref(),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                "raftmetrics_raft_state_changes_total{to=\"follower\"}"
            )
            .as_deref(),
            Some("1")
        );
    }

    #[test]
    fn labeled_families_are_bounded() {
        let m = Metrics::new("worker", 1);
        for i in 0..(MAX_LABEL_VALUES + 10) {
            m.record_request(
                &format!("/r{i}"),
                &Method::from_bytes(b"BREW").expect("method"),
                StatusCode::IM_A_TEAPOT,
                Duration::ZERO,
            );
            m.observe_rpc(&format!("op{i}"), Duration::ZERO);
        }
        assert_eq!(lock(&m.http).len(), MAX_LABEL_VALUES + 1);
        assert_eq!(lock(&m.rpc).len(), MAX_LABEL_VALUES + 1);
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                "raftmetrics_http_requests_total{route=\"other\",method=\"other\",status=\"4xx\"}"
            )
            .as_deref(),
            Some("10")
        );
        assert_eq!(
            sample(
                &text,
                "raftmetrics_http_errors_total{route=\"other\",code=\"418\"}"
            )
            .as_deref(),
            Some("10")
        );
    }

    #[tokio::test]
    async fn middleware_records_the_matched_route_not_the_raw_path() {
        let metrics = Arc::new(Metrics::new("control", 1));
        let app = Router::new()
            .route("/v1/series/{name}", get(|| async { "ok" }))
            .route(
                "/v1/fail",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
            )
            .route("/metrics", get(serve_metrics))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&metrics),
                track_requests,
            ))
            .with_state(Arc::clone(&metrics));

        for uri in [
            "/v1/series/cpu",
            "/v1/series/mem",
            "/v1/fail",
            "/no/such/path",
        ] {
            let req = axum::http::Request::builder()
                .uri(uri)
                .body(Body::empty())
                .expect("request");
            app.clone().oneshot(req).await.expect("response");
        }
        let req = axum::http::Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(CONTENT_TYPE.as_bytes())
        );

        let text = metrics.render();
        let s = |series: &str| sample(&text, series);
        assert_eq!(
            s("raftmetrics_http_requests_total{route=\"/v1/series/{name}\",method=\"GET\",status=\"2xx\"}")
                .as_deref(),
            Some("2"),
            "{text}"
        );
        assert!(!text.contains("/v1/series/cpu"), "raw path leaked:\n{text}");
        assert_eq!(
            s("raftmetrics_http_requests_total{route=\"/v1/fail\",method=\"GET\",status=\"5xx\"}")
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            s("raftmetrics_http_errors_total{route=\"/v1/fail\",code=\"503\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            s("raftmetrics_http_requests_total{route=\"other\",method=\"GET\",status=\"4xx\"}")
                .as_deref(),
            Some("1")
        );
        assert!(!text.contains("/no/such/path"));
        assert_eq!(
            s("raftmetrics_http_errors_total{route=\"other\",code=\"404\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            s("raftmetrics_http_request_duration_seconds_count{route=\"/v1/series/{name}\"}")
                .as_deref(),
            Some("2")
        );
        assert_eq!(
            s("raftmetrics_http_request_duration_seconds_bucket{route=\"/v1/series/{name}\",le=\"+Inf\"}")
                .as_deref(),
            Some("2")
        );
    }
}
