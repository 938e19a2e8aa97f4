//! The worker role: partition replicas in DuckDB, replicated by Raft, served over HTTP and
//! node-to-node TCP.
//!
//! At start a worker opens its DuckDB file and raft log (recovering every replica it had),
//! listens on its node-to-node port (raft messages and internal RPC) and its HTTP port, and
//! registers with the control node. Registration repeats every [`HEARTBEAT`] as the
//! heartbeat: it carries the status of every replica, and the answer is the cluster view
//! (the placement of partitions and the workers' addresses). A replica named in the
//! placement but missing here is created with the placement's voters.
//!
//! HTTP: `POST /insert` (partitions this worker does not lead are forwarded to their
//! leaders), `POST /compute` (only what this worker holds), `GET /health`, `GET /metrics`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router as HttpRouter;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use raftmetrics_core::aggregate::{Coverage, finalize};
use raftmetrics_core::api::{
    self, ComputeRequest, ComputeResponse, HealthResponse, RaftHealth, StorageHealth,
};
use raftmetrics_core::error::Error;
use raftmetrics_core::export::{Cursor, ExportPage, ExportRequest, MAX_PAGE_POINTS, Selection};
use raftmetrics_core::model::{Limits, Record};
use raftmetrics_core::query::Query;
use raftmetrics_core::raft::{
    NodeConfig, NodeHandle, NodeId, RaftLog, RaftNode, ReplicaStatus, Role as RaftRole,
    add_learner, leave_joint, remove_node, replace_voter,
};
use raftmetrics_core::{
    Agg, BatchId, DuckDbStore, HashPartitioner, PartitionId, SketchConfig, Store, codec,
};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::WorkerArgs;
use crate::error::ServerError;
use crate::frontend::Frontend;
use crate::http::body::{Format, request_format, respond, response_format};
use crate::http::error::ApiError;
use crate::http::stack;
use crate::identity;
use crate::metrics::Metrics;
use crate::promql::EvaluateError;
use crate::router::{BatchOutcome, Router, write_batch};
use crate::rpc::{
    CONTROL_WIRE_ID, ClusterView, MAX_SHARES, Membership, Registration, RemoteError, Request,
    Response as RpcResponse, RpcClient, RpcConfig, Share, WorkerInfo, encode_response, resolve,
};
use crate::wire::frame::ClusterAuth;
use crate::wire::tcp_transport::{
    Endpoints, RpcHandler, ServeConfig, ServeStats, TcpTransport, TransportConfig, serve_node,
};

/// How often a worker registers with (heartbeats to) the control node.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// A follower whose leader has been silent for longer is not ready (`GET /ready`): twice
/// the raft election timeout's lower bound, past which a new election has begun.
pub const LEADER_SILENCE: Duration = Duration::from_secs(2);

/// Default control node-to-node port when `--control-host` names none.
pub const DEFAULT_CONTROL_INTERNAL_PORT: u16 = 9080;

/// Cluster id every node of a cluster shares (the secret is what proves membership).
pub const CLUSTER_ID: &str = "raftmetrics";

/// A running worker.
pub struct Worker {
    id: NodeId,
    started: Instant,
    store: Arc<DuckDbStore>,
    node: NodeHandle,
    transport: Arc<TcpTransport>,
    router: Arc<Router>,
    rpc: Arc<RpcClient>,
    limits: Limits,
    sketch: SketchConfig,
    metrics: Arc<Metrics>,
    info: WorkerInfo,
    /// The node-to-node addresses of every control node.
    control_hosts: Vec<String>,
    data_dir: PathBuf,
    /// Replicas this node has (recovered or created).
    groups: Mutex<HashSet<PartitionId>>,
    /// When a control node last answered.
    control_seen: Mutex<Option<Instant>>,
    /// The epoch of the newest cluster view applied.
    epoch: Mutex<u64>,
    /// Serializes applying views (one heartbeat loop per control node).
    applying: tokio::sync::Mutex<()>,
    request_timeout: Duration,
    protocols: crate::frontend::Protocols,
}

/// Runs a worker until `shutdown` completes.
pub async fn run(
    args: WorkerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let data_dir = args.data_dir();
    std::fs::create_dir_all(&data_dir).map_err(ServerError::io(format!(
        "create data directory {}",
        data_dir.display()
    )))?;
    let id = identity::worker_id(args.node_id, &data_dir)?;
    let advertise = identity::advertise_host(&args.node.advertise_host).await?;
    let db_path = args.db_path();
    if let Some(parent) = db_path.parent() {
        std::fs::create_dir_all(parent).map_err(ServerError::io("create DB_PATH directory"))?;
    }
    let secret = args
        .node
        .cluster_secret()
        .ok_or_else(|| ServerError::Config("CLUSTER_SECRET is required".into()))?;
    let auth = ClusterAuth::new(CLUSTER_ID, secret.expose())?;
    // The raft log holds every write durably; the store saves at checkpoints (ADR 017).
    let store = Arc::new(DuckDbStore::open_behind_log(&db_path)?);
    let log = RaftLog::open(&data_dir.join("raft"))?;
    let transport = Arc::new(TcpTransport::new(
        id,
        auth.clone(),
        TransportConfig::default(),
    )?);
    let raft = RaftNode::start(
        NodeConfig::new(id),
        log,
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::clone(&transport) as Arc<dyn raftmetrics_core::raft::Transport>,
    )?;
    let node = raft.handle();
    let rpc = Arc::new(RpcClient::new(id, auth.clone(), RpcConfig::default()));
    let router = Arc::new(Router::new(Some(node.clone()), Arc::clone(&rpc)));
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
    let recovered: HashSet<PartitionId> = node.status().await?.iter().map(|s| s.group).collect();
    let worker = Arc::new(Worker {
        id,
        started: Instant::now(),
        store,
        node: node.clone(),
        transport,
        router,
        rpc,
        limits: Limits::default(),
        sketch: SketchConfig::default(),
        metrics: Arc::new(Metrics::new("worker", id)),
        info: WorkerInfo {
            id,
            http_addr: format!("{advertise}:{}", args.port),
            internal_addr: format!("{advertise}:{}", args.internal_port()),
        },
        control_hosts: control_addresses(&args.control_host),
        data_dir,
        groups: Mutex::new(recovered),
        control_seen: Mutex::new(None),
        epoch: Mutex::new(0),
        applying: tokio::sync::Mutex::new(()),
        request_timeout: args.node.http.request_timeout(),
        protocols: crate::frontend::Protocols::of(&args.node.http),
    });
    info!(id, db = %db_path.display(), http = %worker.info.http_addr,
        internal = %worker.info.internal_addr, control = ?worker.control_hosts, "worker starting");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let deliver_node = node.clone();
    let endpoints = Endpoints {
        auth,
        local: id,
        deliver: Arc::new(move |batch| deliver_node.step(batch)),
        rpc: Some(rpc_handler(Arc::clone(&worker))),
    };
    let internal_task = tokio::spawn(serve_node(
        internal,
        endpoints,
        stopped(stop_rx.clone()),
        ServeConfig::default(),
        worker
            .metrics
            .export_node_listener(Arc::new(ServeStats::default())),
    ));
    let heartbeat_task = tokio::spawn(heartbeat_loop(Arc::clone(&worker), stop_rx.clone()));
    // A raft node that stopped (after a storage failure it cannot survive, such as a full
    // disk) does not come back in this process: the worker stops too, with an error, so that
    // its supervisor starts it again, which recovers its replicas from its data directory.
    let (failed_tx, failed_rx) = tokio::sync::watch::channel(None::<String>);
    let watch_task = tokio::spawn(watch_raft(node.clone(), failed_tx, stop_rx.clone()));
    let shutdown = {
        let mut failed = failed_rx.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                _ = failed.wait_for(Option::is_some) => {}
            }
        }
    };

    let served = stack::serve(
        http,
        routes(Arc::clone(&worker)),
        &args.node.http,
        args.rate_limit_per_minute,
        Arc::clone(&worker.metrics),
        shutdown,
    )
    .await;
    info!(id, "worker stopping");
    let _ = stop_tx.send(true);
    let _ = heartbeat_task.await;
    let _ = watch_task.await;
    let _ = internal_task.await;
    drop(worker);
    raft.shutdown();
    served?;
    let failed = failed_rx.borrow().clone();
    match failed {
        Some(why) => Err(ServerError::Core(Error::Raft(why))),
        None => Ok(()),
    }
}

/// A ticker of [`HEARTBEAT`] that skips beats it missed rather than bursting.
fn heartbeat_ticker() -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(HEARTBEAT);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Waits for the next beat of `ticker`; false once `stop` is set.
async fn next_beat(
    ticker: &mut tokio::time::Interval,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = ticker.tick() => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// Checks every [`HEARTBEAT`] that the raft node still runs; when it has stopped, says why
/// through `failed` and returns.
async fn watch_raft(
    node: NodeHandle,
    failed: tokio::sync::watch::Sender<Option<String>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = heartbeat_ticker();
    while next_beat(&mut ticker, &mut stop).await {
        if node.is_stopped() {
            let why = "the raft node of this worker stopped after the error it logged (a \
                       storage failure such as a full disk, or a panic), so the worker stops \
                       too; started again, it recovers its replicas from its data directory"
                .to_string();
            warn!("raft node stopped; the worker stops");
            let _ = failed.send(Some(why));
            return;
        }
    }
}

/// `host[:port]` of every control node's node-to-node listener (`127.0.0.1` when none is
/// given; the default port when a host has none).
fn control_addresses(hosts: &[String]) -> Vec<String> {
    if hosts.is_empty() {
        return vec![format!("127.0.0.1:{DEFAULT_CONTROL_INTERNAL_PORT}")];
    }
    hosts
        .iter()
        .map(|host| {
            if host
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                host.clone()
            } else {
                format!("{host}:{DEFAULT_CONTROL_INTERNAL_PORT}")
            }
        })
        .collect()
}

/// One heartbeat loop per control node, so that a control node that does not answer never
/// delays the heartbeats the others hear.
async fn heartbeat_loop(worker: Arc<Worker>, stop: tokio::sync::watch::Receiver<bool>) {
    let mut loops = tokio::task::JoinSet::new();
    for host in worker.control_hosts.clone() {
        let (worker, mut stop) = (Arc::clone(&worker), stop.clone());
        loops.spawn(async move {
            let mut ticker = heartbeat_ticker();
            while next_beat(&mut ticker, &mut stop).await {
                if let Err(e) = worker.heartbeat(&host).await {
                    debug!(control = %host, error = %e, "heartbeat to a control node failed");
                }
            }
        });
    }
    loops.join_all().await;
}

impl Worker {
    /// Registers with (or heartbeats to) the control node at `host` and applies the view it
    /// answers with, unless a newer one was applied already.
    async fn heartbeat(&self, host: &str) -> Result<(), String> {
        let statuses = self.node.status().await.map_err(|e| e.to_string())?;
        // The replicas this node has now (a replica removed from its group drops itself).
        *self.groups.lock().unwrap_or_else(|p| p.into_inner()) =
            statuses.iter().map(|s| s.group).collect();
        self.router.learn(&statuses);
        self.metrics.observe_raft(&statuses);
        let storage_bytes = self.store.storage_bytes().unwrap_or(0);
        self.metrics.set_storage_bytes(storage_bytes);
        let epoch = *self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        let request = Request::Register(Registration {
            worker: self.info.clone(),
            replicas: statuses,
            storage_bytes,
            epoch,
        });
        let control = resolve(host).await?;
        let answer = self
            .rpc
            .call(CONTROL_WIRE_ID, control, &request, HEARTBEAT * 4)
            .await
            .map_err(|e| e.to_string())?;
        match answer {
            RpcResponse::View(view) => {
                *self.control_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                let _one_at_a_time = self.applying.lock().await;
                self.apply_view(view).await;
                Ok(())
            }
            RpcResponse::Error(e) => Err(e.message),
            other => Err(format!("unexpected answer to a registration: {other:?}")),
        }
    }

    /// Connects to the view's workers, creates the replicas placed here and drops the ones
    /// placed here no longer. A view older than the newest one applied is ignored.
    async fn apply_view(&self, view: ClusterView) {
        {
            let mut epoch = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
            if view.epoch < *epoch {
                debug!(
                    epoch = view.epoch,
                    newest = *epoch,
                    "ignoring an older cluster view"
                );
                return;
            }
            *epoch = view.epoch;
        }
        let mut addrs: HashMap<NodeId, SocketAddr> = HashMap::new();
        for w in &view.workers {
            match resolve(&w.internal_addr).await {
                Ok(addr) => {
                    addrs.insert(w.id, addr);
                    if w.id != self.id {
                        self.transport.set_peer(w.id, addr);
                    }
                }
                Err(e) => warn!(worker = w.id, error = %e, "cannot resolve a worker"),
            }
        }
        let placed = !view.placement.is_empty();
        let mine: Vec<(PartitionId, Vec<NodeId>)> = (0..view.placement.len() as PartitionId)
            .filter(|p| view.holders(*p).any(|w| w == self.id))
            .map(|p| {
                let founders = view.founders.get(p as usize).cloned().unwrap_or_default();
                // Only a founder starts the group with its voters; any other replica starts
                // empty and is brought up to date by the leader (snapshot, then log).
                let voters = if founders.contains(&self.id) {
                    founders
                } else {
                    Vec::new()
                };
                (p, voters)
            })
            .collect();
        let gone: Vec<PartitionId> = if placed {
            self.held()
                .into_iter()
                .filter(|p| !view.holders(*p).any(|w| w == self.id))
                .collect()
        } else {
            Vec::new()
        };
        self.router.set_view(view, &addrs);
        for (partition, voters) in mine {
            let exists = self
                .groups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&partition);
            if exists {
                continue;
            }
            match self.node.create_group(partition, voters.clone()).await {
                Ok(()) => {
                    info!(partition, ?voters, "created partition replica");
                    self.groups
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(partition);
                }
                Err(e) => warn!(partition, error = %e, "cannot create partition replica"),
            }
        }
        // Replicas moved away (the group removed this node before the placement said so):
        // their log and rows go.
        for partition in gone {
            match self.node.remove_group(partition).await {
                Ok(()) => {
                    info!(
                        partition,
                        "dropped a partition replica placed elsewhere now"
                    );
                }
                // It dropped itself when it applied its removal.
                Err(Error::NotFound(_)) => {}
                Err(e) => {
                    warn!(partition, error = %e, "cannot drop a partition replica");
                    continue;
                }
            }
            self.groups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&partition);
        }
    }

    fn held(&self) -> Vec<PartitionId> {
        let mut v: Vec<_> = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    fn partitioner(&self) -> Result<HashPartitioner, Error> {
        let view = self.router.view().ok_or_else(|| {
            Error::Raft("this worker has not received the cluster view yet".into())
        })?;
        HashPartitioner::new(view.partitions)
    }

    /// Proposes every share to its local replica, all at once, and answers each.
    async fn write_many(&self, shares: Vec<Share>) -> RpcResponse {
        if shares.len() > MAX_SHARES {
            return RpcResponse::Error(RemoteError::from(&Error::InvalidRequest(format!(
                "{} shares in one write; at most {MAX_SHARES}",
                shares.len()
            ))));
        }
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let count = shares.len();
        for (i, share) in shares.into_iter().enumerate() {
            let node = self.node.clone();
            tasks.spawn(async move {
                let result = node
                    .propose_batch(share.partition, share.id, share.records)
                    .await;
                (i, result)
            });
        }
        let mut results: Vec<Result<u64, RemoteError>> = (0..count)
            .map(|_| {
                Err(RemoteError::from(&Error::Internal(
                    "share not proposed".into(),
                )))
            })
            .collect();
        while let Some(joined) = tasks.join_next().await {
            let Ok((i, result)) = joined else { continue };
            self.metrics.inc_proposal(result.is_ok());
            if result.is_ok() {
                self.metrics.observe_commit(started.elapsed());
            }
            results[i] = result.map_err(|e| RemoteError::from(&e));
        }
        RpcResponse::WrittenMany(results)
    }

    async fn handle_rpc(&self, request: Request) -> RpcResponse {
        match request {
            Request::Write {
                partition,
                id,
                records,
            } => {
                let started = Instant::now();
                let result = self.node.propose_batch(partition, id, records).await;
                self.metrics.inc_proposal(result.is_ok());
                match result {
                    Ok(index) => {
                        self.metrics.observe_commit(started.elapsed());
                        RpcResponse::Written { index }
                    }
                    Err(e) => RpcResponse::Error(RemoteError::from(&e)),
                }
            }
            Request::WriteMany(shares) => self.write_many(shares).await,
            Request::Compute {
                partitions,
                query,
                strong,
            } => match self.compute(&partitions, query, strong).await {
                Ok((partial, missing)) => RpcResponse::Computed { partial, missing },
                Err(e) => RpcResponse::Error(RemoteError::from(&e)),
            },
            Request::Export {
                partition,
                selection,
                after,
                limit,
            } => match self.export_page(partition, selection, after, limit).await {
                Ok(page) => RpcResponse::Exported(page),
                Err(e) => RpcResponse::Error(RemoteError::from(&e)),
            },
            Request::Evaluate {
                partitions,
                text,
                start,
                end,
                step,
            } => match self.evaluate(partitions, text, (start, end, step)).await {
                Ok(result) => RpcResponse::Evaluated(result),
                Err(EvaluateError::Query(e)) => RpcResponse::QueryRefused(e),
                Err(EvaluateError::Node(e)) => RpcResponse::Error(RemoteError::from(&e)),
            },
            Request::ChangeMembership { partition, change } => {
                let cc = match change {
                    Membership::AddLearner(n) => add_learner(n),
                    Membership::Replace { add, remove } => replace_voter(add, remove),
                    Membership::Remove(n) => remove_node(n),
                    Membership::LeaveJoint => leave_joint(),
                };
                match self.node.change_membership(partition, cc).await {
                    Ok(_) => {
                        info!(partition, ?change, "membership changed");
                        RpcResponse::Done
                    }
                    Err(e) => RpcResponse::Error(RemoteError::from(&e)),
                }
            }
            Request::Compact { partition } => match self.compact(partition).await {
                Ok(first) => {
                    info!(
                        partition,
                        first_index = first,
                        "log compacted for a new replica"
                    );
                    RpcResponse::Done
                }
                Err(e) => RpcResponse::Error(RemoteError::from(&e)),
            },
            Request::TransferLeader { partition, to } => {
                match self.node.transfer_leader(partition, to).await {
                    Ok(()) => RpcResponse::Done,
                    Err(e) => RpcResponse::Error(RemoteError::from(&e)),
                }
            }
            Request::Register(_) | Request::Admin(_) => {
                RpcResponse::Error(RemoteError::from(&Error::InvalidRequest(
                    "registrations and admin writes go to a control node".into(),
                )))
            }
        }
    }

    /// Saves the store and compacts `partition`'s log as far as it saved; answers the log's
    /// new first index.
    async fn compact(&self, partition: PartitionId) -> Result<u64, Error> {
        self.node.caught_up(partition).await?;
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.checkpoint())
            .await
            .map_err(|e| Error::Internal(format!("checkpoint task: {e}")))??;
        self.node.compact(partition).await
    }

    /// Partial aggregates over the asked partitions this worker can answer for.
    async fn compute(
        &self,
        partitions: &[PartitionId],
        query: Query,
        strong: bool,
    ) -> Result<(raftmetrics_core::PartialAggregate, Vec<PartitionId>), Error> {
        query.validate()?;
        let held: HashSet<PartitionId> = self.held().into_iter().collect();
        let statuses: HashMap<PartitionId, ReplicaStatus> = if strong {
            self.node
                .status()
                .await?
                .into_iter()
                .map(|s| (s.group, s))
                .collect()
        } else {
            HashMap::new()
        };
        // Writes are acknowledged at commit (ADR 014): wait until the store holds what this
        // replica knows is committed, or all of the group's (read index, on its leader) for a
        // strong query. Every partition's wait is asked at once, so the loop answers them
        // together.
        let mut missing = Vec::new();
        let mut waits = tokio::task::JoinSet::new();
        for &p in partitions {
            if !held.contains(&p) {
                missing.push(p);
                continue;
            }
            if strong && !statuses.get(&p).is_some_and(|s| s.role == RaftRole::Leader) {
                missing.push(p);
                continue;
            }
            let node = self.node.clone();
            waits.spawn(async move {
                let ready = if strong {
                    node.read_index(p).await
                } else {
                    node.caught_up(p).await
                };
                (p, ready.is_ok())
            });
        }
        let mut answer = Vec::new();
        while let Some(joined) = waits.join_next().await {
            let (p, ready) =
                joined.map_err(|e| Error::Internal(format!("read barrier task: {e}")))?;
            if ready {
                answer.push(p);
            } else {
                missing.push(p);
            }
        }
        answer.sort_unstable();
        missing.sort_unstable();
        let store = Arc::clone(&self.store);
        let sketch = self.sketch;
        let partial = tokio::task::spawn_blocking(move || store.compute(&answer, &query, &sketch))
            .await
            .map_err(|e| Error::Internal(format!("compute task: {e}")))??;
        Ok((partial, missing))
    }

    /// One page of an export of `partition`, once this replica applied what it knows is
    /// committed (as a default query waits).
    async fn export_page(
        &self,
        partition: PartitionId,
        selection: Selection,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<ExportPage, Error> {
        selection.validate()?;
        if !self.held().contains(&partition) {
            return Err(Error::NotFound(format!(
                "this worker holds no replica of partition {partition}"
            )));
        }
        self.node.caught_up(partition).await?;
        let store = Arc::clone(&self.store);
        let limit = (limit as usize).clamp(1, MAX_PAGE_POINTS);
        tokio::task::spawn_blocking(move || store.export_page(partition, &selection, after, limit))
            .await
            .map_err(|e| Error::Internal(format!("export task: {e}")))?
    }

    /// A pushed-down PromQL call over the series of `partitions`, which this worker holds
    /// ([`Request::Evaluate`]), read once each replica applied what it knows is committed.
    async fn evaluate(
        &self,
        partitions: Vec<PartitionId>,
        text: String,
        range: (i64, i64, i64),
    ) -> Result<raftmetrics_promql::eval::PushedResult, EvaluateError> {
        let held = self.held();
        if let Some(p) = partitions.iter().find(|p| !held.contains(p)) {
            return Err(
                Error::NotFound(format!("this worker holds no replica of partition {p}")).into(),
            );
        }
        for &p in &partitions {
            self.node.caught_up(p).await?;
        }
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            crate::promql::evaluate_pushed(&text, range, |selection, max| {
                store.read_series(&partitions, selection, max)
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("evaluation task: {e}")))?
    }

    async fn health(&self) -> HealthResponse {
        let statuses = self.node.status().await.unwrap_or_default();
        let leading = statuses
            .iter()
            .filter(|s| s.role == RaftRole::Leader)
            .count();
        let term = statuses.iter().map(|s| s.term).max().unwrap_or(0);
        let last = statuses.iter().map(|s| s.last_index).max().unwrap_or(0);
        let leader = statuses
            .iter()
            .find(|s| s.leader_id != 0 && s.role != RaftRole::Leader);
        let heard = statuses
            .iter()
            .filter_map(|s| s.last_heartbeat_ms_ago)
            .min();
        let total = self.store.storage_bytes().unwrap_or(0);
        let control_ok = self
            .control_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < HEARTBEAT * 6);
        let status = match (control_ok, self.router.view().is_some()) {
            (_, false) => "starting",
            (true, true) => "healthy",
            (false, true) => "degraded",
        };
        let uptime = self.started.elapsed().as_secs();
        HealthResponse {
            status: status.into(),
            role: "worker".into(),
            node_id: self.id,
            uptime: api::format_uptime(uptime),
            uptime_secs: uptime,
            worker_nodes: None,
            partitions_available: None,
            epoch: None,
            moves_in_flight: None,
            partitions_total: self.router.view().map_or(0, |v| v.partitions),
            storage: Some(StorageHealth {
                total_size: api::format_bytes(total),
                free_space: free_space(&self.data_dir).map(api::format_bytes),
                total_bytes: total,
            }),
            raft_status: RaftHealth {
                role: if leading > 0 { "leader" } else { "follower" }.into(),
                term,
                last_log_index: last,
                leader_id: leader.map(|s| format!("node-{}", s.leader_id)),
                last_heartbeat: heard.map(api::heard_at),
                leading: leading as u32,
                replicas: statuses.len() as u32,
                commit_index: None,
            },
            control_plane: None,
        }
    }
}

/// Free bytes of the file system holding `dir`, when known.
#[cfg(target_os = "linux")]
fn free_space(dir: &std::path::Path) -> Option<u64> {
    nix::sys::statvfs::statvfs(dir)
        .ok()
        .map(|s| s.blocks_available() * s.fragment_size())
}

#[cfg(not(target_os = "linux"))]
fn free_space(_dir: &std::path::Path) -> Option<u64> {
    None
}

fn rpc_handler(worker: Arc<Worker>) -> RpcHandler {
    Arc::new(move |_peer, body| {
        let worker = Arc::clone(&worker);
        Box::pin(async move {
            let response = match codec::decode::<Request>(&body) {
                Ok(request) => worker.handle_rpc(request).await,
                Err(e) => RpcResponse::Error(RemoteError::from(&e)),
            };
            encode_response(&response)
        })
    })
}

fn routes(worker: Arc<Worker>) -> HttpRouter {
    let own = HttpRouter::new()
        .route("/compute", post(compute))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Arc::clone(&worker));
    crate::http::seed::routes(Arc::clone(&worker))
        .merge(crate::http::influx::routes(Arc::clone(&worker)))
        .merge(crate::http::remote_write::routes(Arc::clone(&worker)))
        .merge(crate::http::import::routes(worker))
        .merge(own)
}

impl Frontend for Worker {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    fn protocols(&self) -> &crate::frontend::Protocols {
        &self.protocols
    }

    /// Inserts taken by a worker are split by partition and sent to each partition's
    /// leader like the control node's.
    async fn write(
        &self,
        id: BatchId,
        records: Vec<Record>,
        deadline: std::time::Instant,
    ) -> Result<BatchOutcome, Error> {
        let partitioner = self.partitioner()?;
        write_batch(&self.router, &partitioner, Some(id), records, deadline).await
    }

    fn serves_queries(&self) -> bool {
        false
    }

    async fn query(&self, _query: &Query) -> Result<raftmetrics_core::QueryResult, Error> {
        Err(Error::NotFound(
            "a worker answers no cluster queries: ask a control node".into(),
        ))
    }

    async fn export(
        self: Arc<Self>,
        _request: ExportRequest,
    ) -> Result<crate::frontend::Export, Error> {
        Err(Error::NotFound(
            "a worker serves no exports: ask a control node".into(),
        ))
    }

    fn storage_size(&self) -> Option<String> {
        Some(api::format_bytes(self.store.storage_bytes().unwrap_or(0)))
    }
}

async fn compute(
    State(worker): State<Arc<Worker>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let request: ComputeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ComputeRequest::default()
    } else {
        match request_format(&headers)? {
            Format::Json => ComputeRequest::from_json(&body)?,
            Format::Bincode => codec::decode(&body)?,
        }
    };
    if request.group_by.len() > 1 {
        return Err(Error::field("group_by", "at most one tag on a worker").into());
    }
    let query = api::compute_query(&request)?;
    let held = worker.held();
    let (partial, _) = worker.compute(&held, query.clone(), false).await?;
    let result = finalize(&query, &worker.sketch, &partial, Coverage::complete());
    let named = |values: &[raftmetrics_core::AggValue]| -> BTreeMap<String, Option<f64>> {
        values
            .iter()
            .map(|v| (v.agg.to_string(), v.value))
            .collect()
    };
    let groups = result
        .groups
        .iter()
        .map(|g| {
            let key = g
                .key
                .first()
                .and_then(|(_, v)| v.clone())
                .unwrap_or_default();
            (key, named(&g.aggregations))
        })
        .collect();
    let response = ComputeResponse {
        metric: result.metric.clone(),
        results: named(&result.aggregations),
        groups,
        average: result.get(Agg::Avg),
        count: result.get(Agg::Count).unwrap_or(0.0) as u64,
        partitions: held,
        computation_time_ms: started.elapsed().as_millis() as u64,
    };
    Ok(respond(response_format(&headers, Format::Json), &response))
}

async fn ready(
    State(worker): State<Arc<Worker>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let statuses = worker.node.status().await?;
    let view = worker.router.view();
    crate::ready::worker(
        worker.id,
        view.as_ref().map(|v| v.placement.as_slice()),
        &statuses,
        LEADER_SILENCE,
    )
    .respond(response_format(&headers, Format::Json))
}

async fn health(State(worker): State<Arc<Worker>>, headers: HeaderMap) -> Response {
    let h = worker.health().await;
    respond(response_format(&headers, Format::Json), &h)
}

async fn metrics(State(worker): State<Arc<Worker>>) -> impl IntoResponse {
    if let Ok(statuses) = worker.node.status().await {
        worker.metrics.observe_raft(&statuses);
    }
    worker
        .metrics
        .set_storage_bytes(worker.store.storage_bytes().unwrap_or(0));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        worker.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;

    impl raftmetrics_core::raft::Transport for Nowhere {
        fn send(&self, _to: NodeId, _batch: Vec<raftmetrics_core::raft::Envelope>) {}
    }

    #[tokio::test]
    async fn a_stopped_raft_node_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DuckDbStore::open(dir.path().join("store.duckdb")).unwrap());
        let log = RaftLog::open(&dir.path().join("raft")).unwrap();
        let raft = RaftNode::start(NodeConfig::new(1), log, store, Arc::new(Nowhere)).unwrap();
        let node = raft.handle();
        assert!(node.status().await.is_ok());
        assert!(!node.is_stopped());
        raft.shutdown();
        assert!(node.is_stopped());
        assert!(node.status().await.is_err());
    }
}
