//! The control role: the public API, the worker registry, the placement of partitions,
//! write routing and query fan-out.
//!
//! Workers register over node-to-node TCP and repeat the registration as a heartbeat (with
//! the status of their replicas). Once [`ControlArgs::min_workers`] workers registered, the
//! control node places every partition on `replication_factor` workers (partition `p` on
//! the sorted workers `p, p+1, ...` modulo their number) and records the placement in its
//! metadata Raft group ([`crate::metadata`]) before any worker learns it; it never changes
//! afterwards, so a restarted control node hands out the same placement. Workers that
//! register later hold no partitions.
//!
//! Inserts are validated whole, split by partition and proposed to each partition's leader
//! ([`crate::router`]). Queries go to one live replica per partition (the leader when known),
//! one request per live worker, each with the query deadline; partitions whose worker failed
//! are asked of another replica that answered while time remains; what is still missing is
//! reported in the answer's coverage.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router as HttpRouter;
use axum::body::Bytes;
use axum::extract::{Query as QueryParams, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use raftmetrics_core::aggregate::{Coverage, PartialAggregate, finalize};
use raftmetrics_core::api::{
    self, AnalyticsResponse, DEFAULT_METRIC, HealthResponse, RaftHealth, StorageHealth,
    WorkerCounts,
};
use raftmetrics_core::error::Error;
use raftmetrics_core::model::Limits;
use raftmetrics_core::query::{Consistency, Query};
use raftmetrics_core::raft::{NodeId, ReplicaStatus, Role as RaftRole};
use raftmetrics_core::{Agg, HashPartitioner, PartitionId, SketchConfig, codec};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::{ControlArgs, default_replication_factor};
use crate::error::ServerError;
use crate::http::body::{Format, respond, response_format};
use crate::http::error::ApiError;
use crate::http::render::aggregate_document;
use crate::http::stack;
use crate::ingest::Ingest;
use crate::metadata::{MetadataLog, Placement};
use crate::metrics::{Metrics, Outcome};
use crate::router::Router;
use crate::rpc::{
    CONTROL_WIRE_ID, ClusterView, MAX_WORKER_ID, Registration, RemoteError, Request,
    Response as RpcResponse, RpcClient, RpcConfig, WorkerInfo, encode_response, resolve,
};
use crate::wire::frame::ClusterAuth;
use crate::wire::tcp_transport::{Endpoints, RpcHandler, ServeConfig, ServeStats, serve_node};
use crate::worker::CLUSTER_ID;

/// A worker not heard from for this long is considered down.
pub const LIVENESS: Duration = Duration::from_millis(2_000);

/// Deadline of each worker's part of a query.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(3_000);

/// Most workers the registry keeps.
const MAX_WORKERS: usize = 1024;

struct WorkerEntry {
    info: WorkerInfo,
    addr: SocketAddr,
    last_seen: Instant,
    replicas: Vec<ReplicaStatus>,
    storage_bytes: u64,
}

/// The running control node.
pub struct Control {
    started: Instant,
    node_id: u64,
    partitions: u32,
    replication_factor: Option<u32>,
    min_workers: usize,
    registry: Mutex<BTreeMap<NodeId, WorkerEntry>>,
    placement: Mutex<Option<Placement>>,
    /// Serializes placing, so two registrations cannot both place.
    placing: tokio::sync::Mutex<()>,
    metadata: MetadataLog,
    router: Arc<Router>,
    rpc: Arc<RpcClient>,
    partitioner: HashPartitioner,
    limits: Limits,
    sketch: SketchConfig,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
}

/// Runs the control node until `shutdown` completes.
pub async fn run(
    args: ControlArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let data_dir = args.data_dir();
    std::fs::create_dir_all(&data_dir).map_err(ServerError::io(format!(
        "create data directory {}",
        data_dir.display()
    )))?;
    let secret = args
        .node
        .cluster_secret()
        .ok_or_else(|| ServerError::Config("CLUSTER_SECRET is required".into()))?;
    let auth = ClusterAuth::new(CLUSTER_ID, secret.expose())?;
    let metadata = MetadataLog::open(&data_dir.join("metadata")).await?;
    let placement = metadata.placement()?;
    if let Some(p) = &placement
        && p.partitions() != args.partitions
    {
        return Err(ServerError::Config(format!(
            "this cluster was created with {} partitions, but PARTITIONS is {}; the partition \
             count is fixed when a cluster is created",
            p.partitions(),
            args.partitions
        )));
    }
    let rpc = Arc::new(RpcClient::new(
        CONTROL_WIRE_ID,
        auth.clone(),
        RpcConfig::default(),
    ));
    let control = Arc::new(Control {
        started: Instant::now(),
        node_id: args.node_id,
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        min_workers: args.min_workers() as usize,
        registry: Mutex::new(BTreeMap::new()),
        placement: Mutex::new(placement),
        placing: tokio::sync::Mutex::new(()),
        metadata,
        router: Arc::new(Router::new(None, Arc::clone(&rpc))),
        rpc,
        partitioner: HashPartitioner::new(args.partitions)?,
        limits: Limits::default(),
        sketch: SketchConfig::default(),
        metrics: Arc::new(Metrics::new("control", args.node_id)),
        request_timeout: args.node.http.request_timeout(),
    });
    let bind = &args.node.bind_host;
    let internal = TcpListener::bind((bind.as_str(), args.internal_port()))
        .await
        .map_err(ServerError::io(format!(
            "bind node-to-node port {}",
            args.internal_port()
        )))?;
    let http = TcpListener::bind((bind.as_str(), args.port))
        .await
        .map_err(ServerError::io(format!("bind HTTP port {}", args.port)))?;
    info!(
        port = args.port,
        internal = args.internal_port(),
        partitions = args.partitions,
        min_workers = control.min_workers,
        "control node starting"
    );

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let endpoints = Endpoints {
        auth,
        local: CONTROL_WIRE_ID,
        // The control node holds no replicas: raft traffic addressed to it is dropped.
        deliver: Arc::new(|_| {}),
        rpc: Some(rpc_handler(Arc::clone(&control))),
    };
    let internal_task = tokio::spawn(serve_node(
        internal,
        endpoints,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
        ServeConfig::default(),
        control
            .metrics
            .export_node_listener(Arc::new(ServeStats::default())),
    ));
    let served = stack::serve(
        http,
        routes(Arc::clone(&control)),
        &args.node.http,
        args.rate_limit_per_minute,
        Arc::clone(&control.metrics),
        shutdown,
    )
    .await;
    info!("control node stopping");
    let _ = stop_tx.send(true);
    let _ = internal_task.await;
    served
}

/// Partition `p` on the sorted workers `p, p+1, ..., p+rf-1` (modulo their number).
pub fn place(workers: &[NodeId], partitions: u32, replication_factor: u32) -> Vec<Vec<NodeId>> {
    let mut sorted = workers.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    (0..partitions as usize)
        .map(|p| {
            (0..replication_factor as usize)
                .map(|i| sorted[(p + i) % n])
                .collect()
        })
        .collect()
}

impl Control {
    fn lock_registry(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, WorkerEntry>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn register(&self, peer: NodeId, reg: Registration) -> Result<ClusterView, Error> {
        let id = reg.worker.id;
        if id == 0 || id > MAX_WORKER_ID || id != peer {
            return Err(Error::InvalidRequest(format!(
                "node {peer} cannot register as worker {id}"
            )));
        }
        let addr = resolve(&reg.worker.internal_addr)
            .await
            .map_err(Error::InvalidRequest)?;
        self.router.learn(&reg.replicas);
        let workers: Vec<NodeId> = {
            let mut registry = self.lock_registry();
            if !registry.contains_key(&id) && registry.len() >= MAX_WORKERS {
                return Err(Error::InvalidRequest("too many workers".into()));
            }
            if registry.get(&id).is_none_or(|e| e.info != reg.worker) {
                info!(worker = id, http = %reg.worker.http_addr,
                    internal = %reg.worker.internal_addr, "worker registered");
                self.rpc.forget(id);
            }
            registry.insert(
                id,
                WorkerEntry {
                    info: reg.worker,
                    addr,
                    last_seen: Instant::now(),
                    replicas: reg.replicas,
                    storage_bytes: reg.storage_bytes,
                },
            );
            registry.keys().copied().collect()
        };
        self.maybe_place(&workers).await?;
        let view = self.view();
        let addrs: HashMap<NodeId, SocketAddr> = self
            .lock_registry()
            .iter()
            .map(|(id, e)| (*id, e.addr))
            .collect();
        self.router.set_view(view.clone(), &addrs);
        Ok(view)
    }

    /// Places the partitions once enough workers registered: recorded in the metadata
    /// group before anyone learns it.
    async fn maybe_place(&self, workers: &[NodeId]) -> Result<(), Error> {
        let _placing = self.placing.lock().await;
        let placed = self
            .placement
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if placed || workers.len() < self.min_workers {
            return Ok(());
        }
        let rf = self
            .replication_factor
            .unwrap_or_else(|| default_replication_factor(workers.len()));
        if rf as usize > workers.len() {
            return Ok(());
        }
        let placement = Placement {
            replicas: place(workers, self.partitions, rf),
        };
        self.metadata.record(&placement).await?;
        info!(workers = ?workers, replication_factor = rf, "partitions placed");
        *self.placement.lock().unwrap_or_else(|p| p.into_inner()) = Some(placement);
        Ok(())
    }

    fn view(&self) -> ClusterView {
        let placement = self.placement.lock().unwrap_or_else(|p| p.into_inner());
        ClusterView {
            partitions: self.partitions,
            replication_factor: placement.as_ref().map_or(0, Placement::replication_factor),
            placement: placement
                .as_ref()
                .map(|p| p.replicas.clone())
                .unwrap_or_default(),
            workers: self
                .lock_registry()
                .values()
                .map(|e| e.info.clone())
                .collect(),
        }
    }

    /// What each live worker last reported as applied, per partition and worker.
    fn applied_indexes(&self) -> HashMap<(PartitionId, NodeId), u64> {
        let registry = self.lock_registry();
        registry
            .iter()
            .filter(|(_, e)| e.last_seen.elapsed() <= LIVENESS)
            .flat_map(|(id, e)| {
                e.replicas
                    .iter()
                    .map(move |st| ((st.group, *id), st.applied_index))
            })
            .collect()
    }

    /// Live workers and, per partition, the live leader with the highest term.
    fn liveness(
        &self,
    ) -> (
        HashMap<NodeId, SocketAddr>,
        HashMap<PartitionId, NodeId>,
        usize,
    ) {
        let registry = self.lock_registry();
        let mut live = HashMap::new();
        let mut leaders: HashMap<PartitionId, (u64, NodeId)> = HashMap::new();
        for (id, e) in registry.iter() {
            if e.last_seen.elapsed() > LIVENESS {
                continue;
            }
            live.insert(*id, e.addr);
            for st in e.replicas.iter().filter(|s| s.role == RaftRole::Leader) {
                let slot = leaders.entry(st.group).or_insert((st.term, *id));
                if st.term > slot.0 {
                    *slot = (st.term, *id);
                }
            }
        }
        let total = registry.len();
        (
            live,
            leaders.into_iter().map(|(p, (_, n))| (p, n)).collect(),
            total,
        )
    }

    /// Partial aggregates of `query` from the workers, and which part of the data answered.
    async fn fan_out(&self, query: &Query) -> (PartialAggregate, Coverage) {
        let (live, leaders, total) = self.liveness();
        let placement = self.router.view().map(|v| v.placement).unwrap_or_default();
        let strong = query.consistency == Consistency::Strong;
        let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
        let mut merged = PartialAggregate::default();
        let mut missing: Vec<PartitionId> = Vec::new();
        let mut responded: HashSet<NodeId> = HashSet::new();
        let mut failed: HashSet<NodeId> = HashSet::new();
        if placement.is_empty() {
            missing = (0..self.partitions).collect();
        }
        // Round 1: one live replica per partition (the leader when known, else the one that
        // reported the most applied entries), and every live worker is asked (an empty list
        // still tells whether it answers).
        let applied = self.applied_indexes();
        let mut plan: BTreeMap<NodeId, Vec<PartitionId>> =
            live.keys().map(|id| (*id, Vec::new())).collect();
        for (p, replicas) in placement.iter().enumerate() {
            let p = p as PartitionId;
            let leader = leaders.get(&p).filter(|l| replicas.contains(l));
            let freshest = || {
                replicas
                    .iter()
                    .copied()
                    .filter(|r| live.contains_key(r))
                    .rev()
                    .max_by_key(|r| applied.get(&(p, *r)).copied().unwrap_or(0))
            };
            let pick = leader.copied().or_else(freshest);
            match pick {
                Some(w) => plan.entry(w).or_default().push(p),
                None => missing.push(p),
            }
        }
        let mut tried: HashMap<PartitionId, Vec<NodeId>> = HashMap::new();
        for round in 0..2 {
            let mut retry: Vec<PartitionId> = Vec::new();
            let mut calls = tokio::task::JoinSet::new();
            for (worker, partitions) in std::mem::take(&mut plan) {
                for p in &partitions {
                    tried.entry(*p).or_default().push(worker);
                }
                let Some(addr) = live.get(&worker).copied() else {
                    retry.extend(partitions);
                    continue;
                };
                let rpc = Arc::clone(&self.rpc);
                let request = Request::Compute {
                    partitions: partitions.clone(),
                    query: query.clone(),
                    strong,
                };
                let metrics = Arc::clone(&self.metrics);
                calls.spawn(async move {
                    let started = Instant::now();
                    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let answer = rpc.call(worker, addr, &request, timeout).await;
                    metrics.observe_rpc("compute", started.elapsed());
                    (worker, partitions, answer)
                });
            }
            while let Some(joined) = calls.join_next().await {
                let Ok((worker, partitions, answer)) = joined else {
                    continue;
                };
                match answer {
                    Ok(RpcResponse::Computed {
                        partial,
                        missing: not_here,
                    }) => {
                        responded.insert(worker);
                        merged.merge(partial);
                        retry.extend(not_here);
                    }
                    Ok(other) => {
                        warn!(worker, round, answer = ?other, "worker could not compute");
                        responded.insert(worker);
                        retry.extend(partitions);
                    }
                    Err(e) => {
                        warn!(worker, round, error = %e, "worker did not answer a query");
                        failed.insert(worker);
                        retry.extend(partitions);
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            if round == 1 || tokio::time::Instant::now() >= deadline {
                missing.extend(retry);
                break;
            }
            // Round 2: another replica that answered (or is live) for each missing partition.
            for p in retry {
                let replicas = placement.get(p as usize).cloned().unwrap_or_default();
                let already = tried.get(&p).cloned().unwrap_or_default();
                let next = replicas
                    .iter()
                    .copied()
                    .find(|r| !already.contains(r) && !failed.contains(r) && live.contains_key(r));
                match next {
                    Some(w) => plan.entry(w).or_default().push(p),
                    None => missing.push(p),
                }
            }
            if plan.is_empty() {
                break;
            }
        }
        missing.sort_unstable();
        missing.dedup();
        let coverage = Coverage {
            is_partial: !missing.is_empty(),
            total_nodes: total as u32,
            responding_nodes: responded.len() as u32,
            missing_partitions: missing,
        };
        (merged, coverage)
    }

    /// Answers `query` over the cluster, refusing a partial answer unless allowed.
    async fn query(&self, query: &Query) -> Result<raftmetrics_core::QueryResult, Error> {
        query.validate()?;
        let (partial, coverage) = self.fan_out(query).await;
        if coverage.is_partial {
            self.metrics.inc_query(Outcome::Partial);
            if !query.allow_partial {
                return Err(Error::Raft(format!(
                    "partial answer refused (allow_partial=false): partitions {:?} unavailable, \
                     {} of {} workers responding",
                    coverage.missing_partitions, coverage.responding_nodes, coverage.total_nodes
                )));
            }
        } else {
            self.metrics.inc_query(Outcome::Ok);
        }
        Ok(finalize(query, &self.sketch, &partial, coverage))
    }

    /// Whether the cluster can take inserts and give complete answers ([`crate::ready`]).
    fn readiness(&self) -> crate::ready::Readiness {
        let (_, leaders, registered) = self.liveness();
        let placement = self
            .placement
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| p.replicas.clone())
            .unwrap_or_default();
        crate::ready::control(
            self.node_id,
            self.partitions,
            &placement,
            &leaders,
            registered,
            self.min_workers,
        )
    }

    async fn health(&self) -> HealthResponse {
        let (live, leaders, total) = self.liveness();
        let placed = self
            .placement
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        let available = leaders.len() as u32;
        let stored = self
            .lock_registry()
            .values()
            .map(|e| e.storage_bytes)
            .sum::<u64>();
        let metadata = self.metadata.status().await.ok();
        self.metrics
            .set_workers(live.len() as u64, (total - live.len()) as u64);
        let status = if !placed {
            "starting"
        } else if live.len() == total && available == self.partitions {
            "healthy"
        } else {
            "degraded"
        };
        let uptime = self.started.elapsed().as_secs();
        HealthResponse {
            status: status.into(),
            role: "control".into(),
            node_id: self.node_id,
            uptime: api::format_uptime(uptime),
            uptime_secs: uptime,
            worker_nodes: Some(WorkerCounts {
                total: total as u32,
                healthy: live.len() as u32,
            }),
            partitions_available: Some(available),
            partitions_total: self.partitions,
            // The workers' storage, summed over replicas.
            storage: Some(StorageHealth {
                total_size: api::format_bytes(stored),
                free_space: None,
                total_bytes: stored,
            }),
            // The metadata group's replica on this node.
            raft_status: RaftHealth {
                role: metadata
                    .as_ref()
                    .map_or("unknown", |s| role_name(s.role))
                    .into(),
                term: metadata.as_ref().map_or(0, |s| s.term),
                last_log_index: metadata.as_ref().map_or(0, |s| s.last_index),
                leader_id: metadata
                    .as_ref()
                    .filter(|s| s.leader_id != 0)
                    .map(|s| format!("node-{}", s.leader_id)),
                last_heartbeat: metadata
                    .as_ref()
                    .and_then(|s| s.last_heartbeat_ms_ago)
                    .map(api::heard_at),
                leading: u32::from(
                    metadata
                        .as_ref()
                        .is_some_and(|s| s.role == RaftRole::Leader),
                ),
                replicas: u32::from(metadata.is_some()),
            },
        }
    }
}

fn rpc_handler(control: Arc<Control>) -> RpcHandler {
    Arc::new(move |peer, body| {
        let control = Arc::clone(&control);
        Box::pin(async move {
            let response = match codec::decode::<Request>(&body) {
                Ok(Request::Register(reg)) => match control.register(peer, reg).await {
                    Ok(view) => RpcResponse::View(view),
                    Err(e) => RpcResponse::Error(RemoteError::from(&e)),
                },
                Ok(_) => RpcResponse::Error(RemoteError::from(&Error::InvalidRequest(
                    "the control node only takes registrations".into(),
                ))),
                Err(e) => RpcResponse::Error(RemoteError::from(&e)),
            };
            encode_response(&response)
        })
    })
}

fn routes(control: Arc<Control>) -> HttpRouter {
    HttpRouter::new()
        .route("/insert", post(insert))
        .route("/metrics", post(insert).get(metrics))
        .route("/aggregate", get(aggregate))
        .route("/analytics", get(analytics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(control)
}

async fn insert(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ingest = Ingest {
        router: &control.router,
        partitioner: &control.partitioner,
        limits: &control.limits,
        metrics: &control.metrics,
        timeout: control.request_timeout,
    };
    ingest.handle(&headers, &body, || None).await
}

async fn aggregate(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let query = Query::from_params(&params)?;
    let result = control.query(&query).await.inspect_err(|_| {
        control.metrics.inc_query(Outcome::Error);
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

async fn analytics(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    QueryParams(mut params): QueryParams<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    params.retain(|(k, _)| k != "agg");
    params.push(("agg".into(), "avg,count".into()));
    if !params.iter().any(|(k, _)| k == "metric") {
        params.push(("metric".into(), DEFAULT_METRIC.into()));
    }
    let query = Query::from_params(&params)?;
    let result = control.query(&query).await?;
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

async fn health(State(control): State<Arc<Control>>, headers: HeaderMap) -> Response {
    respond(
        response_format(&headers, Format::Json),
        &control.health().await,
    )
}

async fn ready(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    control
        .readiness()
        .respond(response_format(&headers, Format::Json))
}

/// The name of a raft role in `/health`.
pub fn role_name(role: RaftRole) -> &'static str {
    match role {
        RaftRole::Leader => "leader",
        RaftRole::Follower => "follower",
        RaftRole::Candidate => "candidate",
        RaftRole::PreCandidate => "pre_candidate",
    }
}

async fn metrics(State(control): State<Arc<Control>>) -> impl IntoResponse {
    let _ = control.health().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        control.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_spreads_replicas_over_distinct_workers() {
        let p = place(&[3, 1, 2], 6, 2);
        assert_eq!(p[0], vec![1, 2]);
        assert_eq!(p[1], vec![2, 3]);
        assert_eq!(p[2], vec![3, 1]);
        for replicas in &p {
            let set: HashSet<_> = replicas.iter().collect();
            assert_eq!(set.len(), 2);
        }
        let per_worker = |w| p.iter().filter(|r| r.contains(&w)).count();
        assert_eq!((per_worker(1), per_worker(2), per_worker(3)), (4, 4, 4));
    }
}
