//! The control role: the public API, the worker registry, the placement of partitions,
//! write routing and query fan-out.
//!
//! A cluster has 1, 3 or 5 control nodes, the voters of the metadata Raft group
//! ([`crate::metadata`], ADR 021). Every control node serves the public API from the
//! committed placement it holds; only the metadata group's leader decides (places, admits
//! workers, declares them dead or drained, drives moves), and only after confirming its
//! leadership with a majority each round. Admin writes on another control node are forwarded
//! to the leader. A control node whose placement is older than the epoch workers report
//! answers inserts and queries with 503 rather than route them by a replaced placement.
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router as HttpRouter;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use raftmetrics_core::aggregate::{Coverage, PartialAggregate, finalize};
use raftmetrics_core::api::{self, HealthResponse, RaftHealth, StorageHealth, WorkerCounts};
use raftmetrics_core::error::Error;
use raftmetrics_core::export::{ExportPage, ExportRequest, MAX_PAGE_POINTS};
use raftmetrics_core::model::Limits;
use raftmetrics_core::model::Record;
use raftmetrics_core::query::Query;
use raftmetrics_core::raft::{NodeId, ReplicaStatus, Role as RaftRole};
use raftmetrics_core::{BatchId, HashPartitioner, PartitionId, SketchConfig, codec};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::cluster_state::{ClusterState, Command, MoveRecord};
use crate::config::{ControlArgs, default_replication_factor};
use crate::error::ServerError;
use crate::frontend::{Evaluated, Export, Frontend};
use crate::http::body::{Format, respond, response_format};
use crate::http::error::ApiError;
use crate::http::stack;
use crate::metadata::{Membership as MetadataMembership, MetadataLog, MetadataTransport};
use crate::metrics::{Metrics, Outcome};
use crate::mover::{Action, Mover, Observed, next_action};
use crate::promql::EvaluateError;
use crate::rebalance::{
    WorkerState, is_balanced, plan_leader_transfers, plan_moves, replica_counts,
};
use crate::router::{BatchOutcome, Router, write_batch};
use crate::rpc::{
    AdminRequest, ClusterView, MAX_WORKER_ID, Membership, Registration, RemoteError, Request,
    Response as RpcResponse, RpcClient, RpcConfig, WorkerInfo, control_wire_id, encode_response,
    resolve,
};
use crate::wire::frame::ClusterAuth;
use crate::wire::tcp_transport::{
    Endpoints, RpcHandler, ServeConfig, ServeStats, TcpTransport, TransportConfig, serve_node,
};
use crate::worker::CLUSTER_ID;

/// A worker not heard from for this long is considered down.
pub const LIVENESS: Duration = Duration::from_millis(2_000);

/// Deadline of each worker's part of a query.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(3_000);

/// Deadline of one move action (a membership change or leader transfer) on a worker.
const ACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Most workers the registry keeps.
const MAX_WORKERS: usize = 1024;

/// Deadline of an admin write forwarded to the metadata leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the other control nodes' addresses are resolved again (a container's address
/// may change when it restarts).
const PEER_RESOLVE_EVERY: Duration = Duration::from_secs(10);

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
    /// Serializes placing, so two registrations cannot both place.
    placing: tokio::sync::Mutex<()>,
    metadata: MetadataLog,
    /// The other control nodes: (control node id, node-to-node address); empty alone.
    peers: Vec<(NodeId, String)>,
    /// The metadata group's transport between control nodes (none alone).
    meta_transport: Option<Arc<MetadataTransport>>,
    /// When the peers' addresses were last resolved.
    peers_resolved: Mutex<Option<Instant>>,
    /// Whether the last round confirmed this node's leadership of the metadata group.
    leading: std::sync::atomic::AtomicBool,
    /// The newest placement epoch a worker reported in its heartbeat.
    newest_worker_epoch: std::sync::atomic::AtomicU64,
    /// Replica moves and leader transfers ([`crate::mover`]).
    mover: crate::mover::Mover,
    router: Arc<Router>,
    rpc: Arc<RpcClient>,
    partitioner: HashPartitioner,
    limits: Limits,
    sketch: SketchConfig,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
    protocols: crate::frontend::Protocols,
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
    let peers = args.peers();
    // Alone, a control node is voter 1 of its own group whatever its id.
    let me = if peers.is_empty() { 1 } else { args.node_id };
    let wire_id = control_wire_id(me);
    let (membership, meta_transport) = if peers.is_empty() {
        (MetadataMembership::alone(), None)
    } else {
        let tcp = TcpTransport::new(wire_id, auth.clone(), TransportConfig::default())?;
        let transport = Arc::new(MetadataTransport::new(tcp));
        let membership = MetadataMembership {
            me,
            voters: peers.iter().map(|(k, _)| *k).collect(),
            transport: Arc::clone(&transport) as Arc<dyn raftmetrics_core::raft::Transport>,
        };
        (membership, Some(transport))
    };
    let metadata = MetadataLog::open(&data_dir.join("metadata"), membership).await?;
    let peers: Vec<(NodeId, String)> = peers.into_iter().filter(|(k, _)| *k != me).collect();
    let state = metadata.state();
    if state.is_placed() && state.placement.len() != args.partitions as usize {
        return Err(ServerError::Config(format!(
            "this cluster was created with {} partitions, but PARTITIONS is {}; the partition \
             count is fixed when a cluster is created",
            state.placement.len(),
            args.partitions
        )));
    }
    let rpc = Arc::new(RpcClient::new(wire_id, auth.clone(), RpcConfig::default()));
    let control = Arc::new(Control {
        started: Instant::now(),
        node_id: args.node_id,
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        min_workers: args.min_workers() as usize,
        registry: Mutex::new(BTreeMap::new()),
        placing: tokio::sync::Mutex::new(()),
        metadata,
        peers,
        meta_transport,
        peers_resolved: Mutex::new(None),
        leading: std::sync::atomic::AtomicBool::new(false),
        newest_worker_epoch: std::sync::atomic::AtomicU64::new(0),
        mover: crate::mover::Mover::new(args.mover_config()),
        router: Arc::new(Router::new(None, Arc::clone(&rpc))),
        rpc,
        partitioner: HashPartitioner::new(args.partitions)?,
        limits: Limits::default(),
        sketch: SketchConfig::default(),
        metrics: Arc::new(Metrics::new("control", args.node_id)),
        request_timeout: args.node.http.request_timeout(),
        protocols: crate::frontend::Protocols::of(&args.node.http),
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
        control_nodes = control.metadata.voters(),
        "control node starting"
    );
    control.resolve_peers().await;

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mover_task = tokio::spawn(mover_loop(Arc::clone(&control), stop_rx.clone()));
    let deliver_to = Arc::clone(&control);
    let endpoints = Endpoints {
        auth,
        local: wire_id,
        // The control node holds no partition replicas: only the metadata group's messages
        // are taken.
        deliver: Arc::new(move |batch| deliver_to.metadata.step(batch)),
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
    // The web console's page and assets carry no data: served without a token.
    let served = stack::serve_with_open(
        http,
        routes(Arc::clone(&control)),
        crate::http::console::routes(),
        &args.node.http,
        args.rate_limit_per_minute,
        Arc::clone(&control.metrics),
        shutdown,
    )
    .await;
    info!("control node stopping");
    let _ = stop_tx.send(true);
    let _ = internal_task.await;
    let _ = mover_task.await;
    served
}

/// Runs [`Control::tick`] every [`crate::mover::TICK`] until `stop`.
async fn mover_loop(control: Arc<Control>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(crate::mover::TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        control.tick().await;
    }
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

/// The status of `partition` on its leader: a live worker reporting leadership, the highest
/// term first.
fn leader_status<'a>(
    statuses: &'a HashMap<(PartitionId, NodeId), ReplicaStatus>,
    partition: PartitionId,
    live: &BTreeSet<NodeId>,
) -> Option<&'a ReplicaStatus> {
    live.iter()
        .filter_map(|w| statuses.get(&(partition, *w)))
        .filter(|s| s.role == RaftRole::Leader)
        .max_by_key(|s| s.term)
}

impl Control {
    fn lock_registry(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, WorkerEntry>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the last round confirmed that this node leads the metadata group.
    fn is_leading(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves the other control nodes' addresses for the metadata group's transport, at
    /// most every [`PEER_RESOLVE_EVERY`].
    async fn resolve_peers(&self) {
        let Some(transport) = &self.meta_transport else {
            return;
        };
        {
            let mut last = self
                .peers_resolved
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < PEER_RESOLVE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        for (k, addr) in &self.peers {
            match resolve(addr).await {
                Ok(resolved) => transport.set_peer(*k, resolved),
                Err(e) => debug!(control = k, error = %e, "cannot resolve a control node yet"),
            }
        }
    }

    /// Drops from the registry the workers the committed state forgot that no longer
    /// heartbeat (the metadata leader forgot them; the others learn it from the log).
    fn forget_unknown(&self) {
        let state = self.metadata.state();
        if !state.is_placed() {
            return;
        }
        self.lock_registry()
            .retain(|id, e| state.workers.contains_key(id) || e.last_seen.elapsed() <= LIVENESS);
    }

    /// Refuses to route by a placement that a newer epoch replaced: when a worker reports an
    /// epoch newer than the state here (after reading the group's log once more), this node
    /// has not caught up with the metadata group, and answers 503 so that the client asks
    /// another control node.
    async fn check_current(&self) -> Result<(), Error> {
        let newest = self
            .newest_worker_epoch
            .load(std::sync::atomic::Ordering::Relaxed);
        if self.metadata.epoch() >= newest {
            return Ok(());
        }
        let _ = self.metadata.refresh().await;
        let held = self.metadata.epoch();
        if held >= newest {
            self.refresh_view();
            return Ok(());
        }
        Err(Error::Raft(format!(
            "this control node holds placement epoch {held}, but workers already follow epoch \
             {newest}: it has not caught up with the metadata group (cut off from a majority \
             of the control nodes?); ask another control node"
        )))
    }

    /// Carries out an admin write on the metadata leader: here when this node leads,
    /// otherwise forwarded to the leader the group names.
    async fn admin(&self, request: AdminRequest) -> Result<serde_json::Value, Error> {
        if self.metadata.voters() == 1 || self.metadata.confirm_leadership().await.is_ok() {
            return self.admin_here(request).await;
        }
        let leader = self.metadata.status().await?.leader_id;
        let addr = self
            .peers
            .iter()
            .find(|(k, _)| *k == leader)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| {
                Error::Raft(
                    "the metadata group has no leader now (a majority of the control nodes \
                     is unreachable): placement changes wait"
                        .into(),
                )
            })?;
        let addr = resolve(&addr).await.map_err(Error::Raft)?;
        let answer = self
            .rpc
            .call(
                control_wire_id(leader),
                addr,
                &Request::Admin(request),
                FORWARD_TIMEOUT,
            )
            .await
            .map_err(|e| Error::Raft(format!("forwarding to the metadata leader: {e}")))?;
        match answer {
            RpcResponse::Document(json) => serde_json::from_str(&json)
                .map_err(|e| Error::Internal(format!("the metadata leader's answer: {e}"))),
            RpcResponse::Error(e) => Err(Error::from(e)),
            other => Err(Error::Internal(format!(
                "unexpected answer from the metadata leader: {other:?}"
            ))),
        }
    }

    /// Carries out an admin write on this node, which must lead the metadata group.
    async fn admin_here(&self, request: AdminRequest) -> Result<serde_json::Value, Error> {
        match request {
            AdminRequest::Drain(id) => self.drain(id).await,
            AdminRequest::Forget(id) => self.forget(id).await,
        }
    }

    /// Starts draining worker `id` (its state goes `draining`, then `drained`). Refused when
    /// the other active workers could not hold every partition's replicas.
    async fn drain(&self, id: NodeId) -> Result<serde_json::Value, Error> {
        let state = self.metadata.state();
        let Some(current) = state.worker_state(id) else {
            return Err(Error::NotFound(format!("worker {id}")));
        };
        crate::rebalance::can_drain(
            &state.placement,
            &state.worker_states(),
            state.replication_factor as usize,
            id,
        )
        .map_err(Error::InvalidRequest)?;
        if current == WorkerState::Active {
            self.metadata
                .commit(Command::SetWorkerState {
                    worker: id,
                    state: WorkerState::Draining,
                })
                .await?;
            info!(worker = id, "worker draining");
        }
        Ok(self.worker_document(id, &self.leader_commits()))
    }

    /// Forgets a drained or dead worker that holds no replica.
    async fn forget(&self, id: NodeId) -> Result<serde_json::Value, Error> {
        if self.metadata.state().worker_state(id).is_none() {
            return Err(Error::NotFound(format!("worker {id}")));
        }
        self.metadata.commit(Command::Forget { worker: id }).await?;
        self.lock_registry().remove(&id);
        self.rpc.forget(id);
        info!(worker = id, "worker forgotten");
        Ok(serde_json::json!({"removed": id}))
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
        self.newest_worker_epoch
            .fetch_max(reg.epoch, std::sync::atomic::Ordering::Relaxed);
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
        // Only the metadata leader decides; the others answer from the committed state.
        if self.is_leading() {
            self.maybe_place(&workers).await?;
            self.admit(id).await;
        }
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
        if self.metadata.state().is_placed() || workers.len() < self.min_workers {
            return Ok(());
        }
        let rf = self
            .replication_factor
            .unwrap_or_else(|| default_replication_factor(workers.len()));
        if rf as usize > workers.len() {
            return Ok(());
        }
        self.metadata
            .commit(Command::Place {
                replication_factor: rf,
                voters: place(workers, self.partitions, rf),
            })
            .await?;
        info!(workers = ?workers, replication_factor = rf, "partitions placed");
        Ok(())
    }

    /// Records a worker that registers after the placement as active: a newcomer joins
    /// (and gets its share by rebalancing), a dead worker that came back is active again
    /// (it dropped the replicas placed elsewhere meanwhile).
    async fn admit(&self, worker: NodeId) {
        let state = self.metadata.state();
        if !state.is_placed() {
            return;
        }
        let command = match state.worker_state(worker) {
            None => Command::Join { worker },
            Some(WorkerState::Dead) => Command::SetWorkerState {
                worker,
                state: WorkerState::Active,
            },
            Some(_) => return,
        };
        match self.metadata.commit(command.clone()).await {
            Ok(_) => info!(worker, ?command, "worker admitted"),
            Err(e) => warn!(worker, error = %e, "cannot record a worker"),
        }
    }

    /// The cluster view of the committed state and the registered workers.
    fn view(&self) -> ClusterView {
        let state = self.metadata.state();
        ClusterView {
            epoch: state.epoch,
            partitions: self.partitions,
            replication_factor: state.replication_factor,
            placement: state.placement.iter().map(|r| r.voters.clone()).collect(),
            learners: state.placement.iter().map(|r| r.learners.clone()).collect(),
            founders: state.founders.clone(),
            workers: self
                .lock_registry()
                .values()
                .map(|e| e.info.clone())
                .collect(),
        }
    }

    /// Tells the router about the committed state (after a change, before the next
    /// heartbeat does).
    fn refresh_view(&self) {
        let addrs: HashMap<NodeId, SocketAddr> = self
            .lock_registry()
            .iter()
            .map(|(id, e)| (*id, e.addr))
            .collect();
        self.router.set_view(self.view(), &addrs);
    }

    /// One round of the elastic cluster: declare dead and drained workers, drive every move
    /// in flight one step ([`crate::mover::next_action`]), start the moves the planner asks
    /// for ([`crate::rebalance::plan_moves`]), and spread leaders once nothing moves.
    async fn tick(&self) {
        if let Err(e) = self.metadata.refresh().await {
            warn!(error = %e, "cannot read the metadata group's state");
        }
        self.resolve_peers().await;
        self.forget_unknown();
        self.refresh_view();
        let leading = self.metadata.confirm_leadership().await.is_ok();
        let was = self
            .leading
            .swap(leading, std::sync::atomic::Ordering::Relaxed);
        if leading != was {
            info!(leading, "metadata leadership changed");
        }
        if !leading {
            return;
        }
        let state = self.metadata.state();
        if !state.is_placed() {
            return;
        }
        self.declare_workers(&state).await;
        let state = self.metadata.state();
        let (live, statuses) = self.reports();
        let in_flight: BTreeSet<u64> = state.moves.keys().copied().collect();
        self.mover.retain(&in_flight);
        for record in state.moves.values() {
            let p = record.spec.partition;
            let leader = leader_status(&statuses, p, &live);
            let target = statuses
                .get(&(p, record.spec.to))
                .filter(|_| live.contains(&record.spec.to));
            let joint = leader.is_some_and(|l| !l.voters_outgoing.is_empty());
            let observed = Observed {
                leader,
                target,
                target_state: state.worker_state(record.spec.to),
                live: live.clone(),
                joint_for: self.mover.joint_for(p, joint),
            };
            let action = next_action(record, &observed);
            self.act(record, action).await;
        }
        // New moves, within the limits.
        let state = self.metadata.state();
        let workers = state.worker_states();
        let plan = plan_moves(
            &state.placement,
            &workers,
            &state.move_specs(),
            state.replication_factor as usize,
            &self.mover.config.limits,
        );
        for spec in plan {
            match self
                .metadata
                .commit(Command::StartMove { spec: spec.clone() })
                .await
            {
                Ok(_) => {
                    Mover::count(&self.mover.started);
                    info!(partition = spec.partition, from = spec.from, to = spec.to,
                        reason = ?spec.reason, "replica move started");
                }
                Err(e) => warn!(?spec, error = %e, "cannot start a replica move"),
            }
        }
        let state = self.metadata.state();
        self.refresh_view();
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        self.metrics.set_moves(
            state.moves.len() as u64,
            (
                count(&self.mover.started),
                count(&self.mover.finished),
                count(&self.mover.failed),
            ),
            &replica_counts(&state.placement, &state.worker_states()),
        );
        // Leaders, once every move is done, for a while after a rebalance, one paced
        // round at a time.
        if state.moves.is_empty()
            && is_balanced(&state.placement, &state.worker_states())
            && self.mover.may_spread()
        {
            let leaders: BTreeMap<PartitionId, NodeId> = (0..state.placement.len() as u32)
                .filter_map(|p| leader_status(&statuses, p, &live).map(|s| (p, s.node)))
                .collect();
            for (p, to) in plan_leader_transfers(&state.placement, &leaders, &workers, 2) {
                let Some(&from) = leaders.get(&p) else {
                    continue;
                };
                let request = Request::TransferLeader { partition: p, to };
                if let Err(e) = self.ask(from, &request).await {
                    debug!(partition = p, from, to, error = %e, "leader transfer not done");
                }
            }
        }
    }

    /// Declares workers dead (not heard from for the dead-worker timeout) and drained
    /// (draining, with nothing left on them).
    async fn declare_workers(&self, state: &ClusterState) {
        let timeout = self.mover.config.dead_worker_timeout;
        let silent: HashMap<NodeId, Duration> = {
            let registry = self.lock_registry();
            state
                .workers
                .keys()
                .map(|w| {
                    let last = registry.get(w).map_or(self.started, |e| e.last_seen);
                    (*w, last.elapsed())
                })
                .collect()
        };
        for (worker, record) in &state.workers {
            let next = match record.state {
                WorkerState::Active | WorkerState::Draining if silent[worker] > timeout => {
                    WorkerState::Dead
                }
                WorkerState::Draining
                    if state.replicas_on(*worker) == 0
                        && !state
                            .moves
                            .values()
                            .any(|m| m.spec.from == *worker || m.spec.to == *worker) =>
                {
                    WorkerState::Drained
                }
                _ => continue,
            };
            let command = Command::SetWorkerState {
                worker: *worker,
                state: next,
            };
            match self.metadata.commit(command).await {
                Ok(_) => info!(worker, state = ?next, "worker state changed"),
                Err(e) => warn!(worker, error = %e, "cannot record a worker's state"),
            }
        }
    }

    /// Live workers, and every live worker's replica statuses by (partition, worker).
    fn reports(
        &self,
    ) -> (
        BTreeSet<NodeId>,
        HashMap<(PartitionId, NodeId), ReplicaStatus>,
    ) {
        let registry = self.lock_registry();
        let mut live = BTreeSet::new();
        let mut statuses = HashMap::new();
        for (id, e) in registry.iter() {
            if e.last_seen.elapsed() > LIVENESS {
                continue;
            }
            live.insert(*id);
            for st in &e.replicas {
                statuses.insert((st.group, *id), st.clone());
            }
        }
        (live, statuses)
    }

    /// Carries out `action` for the move `record`.
    async fn act(&self, record: &MoveRecord, action: Action) {
        let p = record.spec.partition;
        let (to, from) = (record.spec.to, record.spec.from);
        let membership = |change| Request::ChangeMembership {
            partition: p,
            change,
        };
        let (leader, request) = match &action {
            Action::Wait => return,
            Action::Advance(step) => {
                let command = Command::Advance {
                    id: record.id,
                    step: *step,
                };
                if let Err(e) = self.metadata.commit(command).await {
                    warn!(id = record.id, error = %e, "cannot record a move's step");
                }
                return;
            }
            Action::Finish => {
                match self
                    .metadata
                    .commit(Command::FinishMove { id: record.id })
                    .await
                {
                    Ok(_) => {
                        Mover::count(&self.mover.finished);
                        self.mover.moved();
                        info!(partition = p, from, to, "replica move finished");
                    }
                    Err(e) => warn!(id = record.id, error = %e, "cannot finish a move"),
                }
                return;
            }
            Action::Abort(reason) => {
                let command = Command::AbortMove {
                    id: record.id,
                    reason: reason.clone(),
                };
                match self.metadata.commit(command).await {
                    Ok(_) => {
                        Mover::count(&self.mover.failed);
                        warn!(partition = p, from, to, reason, "replica move rolled back");
                    }
                    Err(e) => warn!(id = record.id, error = %e, "cannot roll a move back"),
                }
                return;
            }
            Action::Compact { leader } => (*leader, Request::Compact { partition: p }),
            Action::AddLearner { leader } => (*leader, membership(Membership::AddLearner(to))),
            Action::Replace { leader } => (
                *leader,
                membership(Membership::Replace {
                    add: to,
                    remove: from,
                }),
            ),
            Action::LeaveJoint { leader } => (*leader, membership(Membership::LeaveJoint)),
            Action::RemoveLearner { leader } => (*leader, membership(Membership::Remove(to))),
            Action::TransferLeader { leader, to } => (
                *leader,
                Request::TransferLeader {
                    partition: p,
                    to: *to,
                },
            ),
        };
        if !self.mover.should_send(record.id, &action) {
            return;
        }
        match self.ask(leader, &request).await {
            Ok(()) => debug!(partition = p, ?action, "move action done"),
            Err(e) => debug!(partition = p, ?action, error = %e, "move action not done yet"),
        }
    }

    /// Sends `request` to `worker` and waits for [`RpcResponse::Done`].
    async fn ask(&self, worker: NodeId, request: &Request) -> Result<(), String> {
        let addr = self
            .lock_registry()
            .get(&worker)
            .map(|e| e.addr)
            .ok_or_else(|| format!("worker {worker} is not registered"))?;
        match self.rpc.call(worker, addr, request, ACTION_TIMEOUT).await {
            Ok(RpcResponse::Done) => Ok(()),
            Ok(RpcResponse::Error(e)) => Err(e.message),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
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

    /// Partial aggregates of `query` from the workers, and which part of the data answered
    /// ([`crate::fan_out`]).
    async fn fan_out(&self, query: &Query) -> (PartialAggregate, Coverage) {
        let (addrs, leaders, registered) = self.liveness();
        let view = self.router.view();
        let live: HashSet<NodeId> = addrs.keys().copied().collect();
        let applied = self.applied_indexes();
        let known = crate::fan_out::Known {
            view: view.as_ref(),
            partitions: self.partitions,
            live: &live,
            leaders: &leaders,
            applied: &applied,
        };
        let runner = crate::fan_out::Runner {
            rpc: &self.rpc,
            metrics: &self.metrics,
            addrs: &addrs,
            registered,
        };
        crate::fan_out::fan_out(&runner, &known, query, QUERY_TIMEOUT).await
    }

    /// Which live replicas an export reads each partition from, and their addresses
    /// ([`crate::export::plan`]).
    fn export_plan(&self) -> (crate::export::ExportPlan, HashMap<NodeId, SocketAddr>) {
        let (addrs, leaders, _) = self.liveness();
        let view = self.router.view();
        let live: HashSet<NodeId> = addrs.keys().copied().collect();
        let applied = self.applied_indexes();
        let plan = crate::export::plan(&crate::fan_out::Known {
            view: view.as_ref(),
            partitions: self.partitions,
            live: &live,
            leaders: &leaders,
            applied: &applied,
        });
        (plan, addrs)
    }

    /// Answers `query` over the cluster, refusing a partial answer unless allowed.
    async fn query(&self, query: &Query) -> Result<raftmetrics_core::QueryResult, Error> {
        query.validate()?;
        self.check_current().await?;
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

    /// The commit index each partition's live leader last reported.
    fn leader_commits(&self) -> HashMap<PartitionId, u64> {
        let (live, statuses) = self.reports();
        statuses
            .keys()
            .map(|(p, _)| *p)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|p| leader_status(&statuses, p, &live).map(|s| (p, s.commit_index)))
            .collect()
    }

    /// One worker as `GET /admin/workers` lists it (`leader_commits`: see
    /// [`Control::leader_commits`]).
    fn worker_document(
        &self,
        id: NodeId,
        leader_commits: &HashMap<PartitionId, u64>,
    ) -> serde_json::Value {
        let state = self.metadata.state();
        let registry = self.lock_registry();
        let entry = registry.get(&id);
        // Per replica this worker reported, the entries its store is behind the partition
        // leader's commit index (where a live leader reported one).
        let lag: BTreeMap<String, u64> = entry.map_or_else(BTreeMap::new, |e| {
            e.replicas
                .iter()
                .filter_map(|s| {
                    leader_commits
                        .get(&s.group)
                        .map(|c| (s.group.to_string(), c.saturating_sub(s.applied_index)))
                })
                .collect()
        });
        let leaders = entry.map_or(0, |e| {
            e.replicas
                .iter()
                .filter(|s| s.role == RaftRole::Leader)
                .count()
        });
        let ago = entry.map(|e| e.last_seen.elapsed());
        let status = match state.worker_state(id) {
            Some(WorkerState::Active) => "active",
            Some(WorkerState::Draining) => "draining",
            Some(WorkerState::Drained) => "drained",
            Some(WorkerState::Dead) => "dead",
            None => "unplaced",
        };
        serde_json::json!({
            "id": id,
            "http_addr": entry.map(|e| e.info.http_addr.clone()),
            "internal_addr": entry.map(|e| e.info.internal_addr.clone()),
            "state": status,
            "live": ago.is_some_and(|a| a <= LIVENESS),
            "last_heartbeat": ago.map(|a| api::heard_at(u64::try_from(a.as_millis()).unwrap_or(u64::MAX))),
            "replicas": state.replicas_on(id),
            "leaders": leaders,
            "replica_lag": lag,
            "max_replica_lag": lag.values().max().copied().unwrap_or(0),
            "moves": state.moves.values()
                .filter(|m| m.spec.from == id || m.spec.to == id)
                .map(|m| m.id)
                .collect::<Vec<_>>(),
        })
    }

    /// `GET /admin/workers`.
    fn workers_document(&self) -> serde_json::Value {
        let state = self.metadata.state();
        // Partitions whose leader reports a joint configuration (a move being promoted).
        let (live, statuses) = self.reports();
        let joint: Vec<PartitionId> = (0..state.placement.len() as PartitionId)
            .filter(|p| {
                leader_status(&statuses, *p, &live).is_some_and(|s| !s.voters_outgoing.is_empty())
            })
            .collect();
        let mut ids: BTreeSet<NodeId> = state.workers.keys().copied().collect();
        ids.extend(self.lock_registry().keys().copied());
        let commits = self.leader_commits();
        let moves: Vec<serde_json::Value> = state
            .moves
            .values()
            .map(|m| {
                serde_json::json!({
                    "id": m.id,
                    "partition": m.spec.partition,
                    "from": m.spec.from,
                    "to": m.spec.to,
                    "reason": format!("{:?}", m.spec.reason).to_lowercase(),
                    "step": format!("{:?}", m.step).to_lowercase(),
                })
            })
            .collect();
        serde_json::json!({
            "epoch": state.epoch,
            "replication_factor": state.replication_factor,
            "workers": ids.into_iter().map(|id| self.worker_document(id, &commits)).collect::<Vec<_>>(),
            "moves": moves,
            "placement": state.placement.iter().map(|r| r.voters.clone()).collect::<Vec<_>>(),
            "learners": state.placement.iter().map(|r| r.learners.clone()).collect::<Vec<_>>(),
            "joint": joint,
        })
    }

    /// Whether the cluster can take inserts and give complete answers ([`crate::ready`]).
    fn readiness(&self) -> crate::ready::Readiness {
        let (_, leaders, registered) = self.liveness();
        // A leader may be the target of a move being promoted: voters and learners count.
        let placement: Vec<Vec<NodeId>> = self
            .metadata
            .state()
            .placement
            .iter()
            .map(|r| r.voters.iter().chain(&r.learners).copied().collect())
            .collect();
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
        let state = self.metadata.state();
        let placed = state.is_placed();
        let available = leaders.len() as u32;
        let stored = self
            .lock_registry()
            .values()
            .map(|e| e.storage_bytes)
            .sum::<u64>();
        let metadata = self.metadata.status().await.ok();
        self.metrics
            .set_workers(live.len() as u64, (total - live.len()) as u64);
        let control_plane = self.control_plane(metadata.as_ref(), state.epoch);
        self.metrics
            .set_control_plane(crate::metrics::ControlPlane {
                deciding: control_plane.deciding,
                leader_known: control_plane.leader.is_some(),
                term: metadata.as_ref().map_or(0, |s| s.term),
                commit_index: control_plane.commit_index,
                epoch: state.epoch,
            });
        let status = if !placed {
            "starting"
        } else if live.len() == total
            && available == self.partitions
            && control_plane.problem.is_none()
        {
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
            epoch: Some(state.epoch),
            moves_in_flight: Some(state.moves.len() as u32),
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
                commit_index: metadata.as_ref().map(|s| s.commit_index),
            },
            control_plane: Some(control_plane),
        }
    }

    /// The control plane as this node sees it, for `/health`.
    fn control_plane(
        &self,
        metadata: Option<&ReplicaStatus>,
        epoch: u64,
    ) -> raftmetrics_core::api::ControlPlaneHealth {
        let voters = self.metadata.voters() as u32;
        let leader = metadata.map(|s| s.leader_id).filter(|l| *l != 0);
        let deciding = self.is_leading();
        let newest = self
            .newest_worker_epoch
            .load(std::sync::atomic::Ordering::Relaxed);
        let problem = if metadata.is_none() {
            Some("the metadata group's replica on this node does not answer".to_string())
        } else if leader.is_none() {
            Some(format!(
                "this control node knows no leader of the metadata group: it reaches fewer \
                 than {} of the {voters} control nodes (itself included); inserts and queries \
                 go on from the committed placement, placement changes (rebalancing, drains, \
                 dead workers) wait",
                voters / 2 + 1
            ))
        } else if newest > epoch {
            Some(format!(
                "this node holds placement epoch {epoch}, workers follow epoch {newest}: it \
                 has not caught up with the metadata group and refuses inserts and queries"
            ))
        } else {
            None
        };
        raftmetrics_core::api::ControlPlaneHealth {
            control_nodes: voters,
            leader,
            deciding,
            placement_changes: leader.is_some(),
            commit_index: metadata.map_or(0, |s| s.commit_index),
            applied_index: metadata.map_or(0, |s| s.applied_index),
            epoch,
            newest_worker_epoch: newest,
            problem,
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
                // Forwarded by another control node: carried out here or refused, never
                // forwarded again.
                Ok(Request::Admin(request)) if crate::rpc::is_control_wire_id(peer) => {
                    let done = match control.metadata.confirm_leadership().await {
                        Ok(()) => control.admin_here(request).await,
                        Err(e) => Err(e),
                    };
                    match done.and_then(|doc| {
                        serde_json::to_string(&doc)
                            .map_err(|e| Error::Internal(format!("encode an answer: {e}")))
                    }) {
                        Ok(json) => RpcResponse::Document(json),
                        Err(e) => RpcResponse::Error(RemoteError::from(&e)),
                    }
                }
                Ok(_) => RpcResponse::Error(RemoteError::from(&Error::InvalidRequest(
                    "the control node only takes registrations and, from control nodes, \
                     admin writes"
                        .into(),
                ))),
                Err(e) => RpcResponse::Error(RemoteError::from(&e)),
            };
            encode_response(&response)
        })
    })
}

fn routes(control: Arc<Control>) -> HttpRouter {
    let own = HttpRouter::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/admin/workers", get(admin_workers))
        .route("/admin/workers/{id}", axum::routing::delete(admin_forget))
        .route("/admin/workers/{id}/drain", post(admin_drain))
        .with_state(Arc::clone(&control));
    crate::http::seed::routes(Arc::clone(&control))
        .merge(crate::http::influx::routes(Arc::clone(&control)))
        .merge(crate::http::remote_write::routes(Arc::clone(&control)))
        .merge(crate::http::import::routes(Arc::clone(&control)))
        .merge(crate::http::prometheus::routes(Arc::clone(&control)))
        .merge(crate::http::export::routes(control))
        .merge(own)
}

impl Frontend for Control {
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

    async fn write(
        &self,
        id: BatchId,
        records: Vec<Record>,
        deadline: Instant,
    ) -> Result<BatchOutcome, Error> {
        self.check_current().await?;
        write_batch(&self.router, &self.partitioner, Some(id), records, deadline).await
    }

    fn serves_queries(&self) -> bool {
        true
    }

    async fn query(&self, query: &Query) -> Result<raftmetrics_core::QueryResult, Error> {
        Control::query(self, query).await
    }

    async fn evaluate(
        self: Arc<Self>,
        text: String,
        range: (i64, i64, i64),
        allow_partial: bool,
    ) -> Result<Evaluated, EvaluateError> {
        self.check_current().await?;
        let (plan, _) = self.export_plan();
        if !plan.missing.is_empty() && !allow_partial {
            return Err(Error::Raft(format!(
                "partial answer refused (allow_partial=false): partitions {:?} have no live replica",
                plan.missing
            ))
            .into());
        }
        let (results, unanswered) = self.evaluate_all(&plan.replicas, &text, range).await?;
        if !unanswered.is_empty() && !allow_partial {
            return Err(Error::Raft(format!(
                "partial answer refused (allow_partial=false): no replica of partitions {unanswered:?} answered"
            ))
            .into());
        }
        let mut missing = plan.missing;
        missing.extend(unanswered);
        missing.sort_unstable();
        let points: usize = results.iter().map(|r| r.points()).sum();
        if points > raftmetrics_promql::eval::MAX_RESULT_POINTS {
            return Err(raftmetrics_promql::PromError::TooLarge(format!(
                "the answer would hold more than {} points (series × steps); narrow the selection or increase step",
                raftmetrics_promql::eval::MAX_RESULT_POINTS
            ))
            .into());
        }
        Ok(Evaluated { results, missing })
    }

    async fn export(self: Arc<Self>, request: ExportRequest) -> Result<Export, Error> {
        request.selection.validate()?;
        self.check_current().await?;
        let (plan, _) = self.export_plan();
        if !plan.missing.is_empty() && !request.allow_partial {
            return Err(Error::Raft(format!(
                "export refused (allow_partial=false): partitions {:?} have no live replica",
                plan.missing
            )));
        }
        let partitions: Vec<PartitionId> = plan.replicas.keys().copied().collect();
        let (pages, rx) = tokio::sync::mpsc::channel(crate::export::PAGES_IN_FLIGHT);
        tokio::spawn(crate::export::run(
            Arc::clone(&self),
            partitions,
            request.selection,
            MAX_PAGE_POINTS as u32,
            pages,
        ));
        Ok(Export {
            pages: rx,
            missing: plan.missing,
        })
    }
}

impl Control {
    /// A pushed-down PromQL expression on `partitions`, all asked of `worker` at once
    /// ([`Request::Evaluate`]): the result, or why the worker did not give it (`Ok(Err)`:
    /// the query's fault, not to be asked again elsewhere).
    async fn evaluate_on(
        &self,
        worker: NodeId,
        addr: SocketAddr,
        partitions: Vec<PartitionId>,
        text: String,
        (start, end, step): (i64, i64, i64),
    ) -> Result<Result<raftmetrics_promql::eval::PushedResult, EvaluateError>, String> {
        let request = Request::Evaluate {
            partitions,
            text,
            start,
            end,
            step,
        };
        let started = Instant::now();
        let answer = self
            .rpc
            .call(worker, addr, &request, self.request_timeout)
            .await;
        self.metrics.observe_rpc("evaluate", started.elapsed());
        match answer {
            Ok(RpcResponse::Evaluated(result)) => Ok(Ok(result)),
            Ok(RpcResponse::QueryRefused(e)) => Ok(Err(e.into())),
            Ok(RpcResponse::Error(e)) => Err(e.message),
            Ok(_) => Err("answered an evaluation with something else".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A pushed-down PromQL expression on `partitions`, each worker asked once for the partitions
    /// it is preferred for; the partitions of a worker that did not answer are asked of
    /// their other live replicas one by one. The results, and the partitions no replica
    /// answered for (the answer is partial without them).
    async fn evaluate_all(
        self: &Arc<Self>,
        replicas: &BTreeMap<PartitionId, Vec<NodeId>>,
        text: &str,
        range: (i64, i64, i64),
    ) -> Result<
        (
            Vec<raftmetrics_promql::eval::PushedResult>,
            Vec<PartitionId>,
        ),
        EvaluateError,
    > {
        use crate::export::Workers;
        let mut by_worker: BTreeMap<NodeId, Vec<PartitionId>> = BTreeMap::new();
        for (&p, workers) in replicas {
            if let Some(&w) = workers.first() {
                by_worker.entry(w).or_default().push(p);
            }
        }
        let (addrs, _, _) = self.liveness();
        let mut asks = tokio::task::JoinSet::new();
        for (worker, partitions) in by_worker {
            let (control, addr, text) = (
                Arc::clone(self),
                addrs.get(&worker).copied(),
                text.to_string(),
            );
            asks.spawn(async move {
                let answer = match addr {
                    Some(addr) => {
                        control
                            .evaluate_on(worker, addr, partitions.clone(), text, range)
                            .await
                    }
                    None => Err("no address".into()),
                };
                (worker, partitions, answer)
            });
        }
        let mut result = Vec::new();
        let mut retry: Vec<(NodeId, PartitionId)> = Vec::new();
        let mut unanswered = Vec::new();
        while let Some(joined) = asks.join_next().await {
            let (worker, partitions, answer) =
                joined.map_err(|e| Error::Internal(format!("evaluation task: {e}")))?;
            match answer {
                Ok(Ok(part)) => result.push(part),
                Ok(Err(refused)) => return Err(refused),
                Err(why) => {
                    warn!(worker, ?partitions, error = %why, "a worker did not evaluate a query");
                    retry.extend(partitions.into_iter().map(|p| (worker, p)));
                }
            }
        }
        for (failed, partition) in retry {
            let mut done = false;
            for (worker, addr) in self
                .replicas(partition)
                .into_iter()
                .filter(|(w, _)| *w != failed)
            {
                match self
                    .evaluate_on(worker, addr, vec![partition], text.to_string(), range)
                    .await
                {
                    Ok(Ok(part)) => {
                        result.push(part);
                        done = true;
                        break;
                    }
                    Ok(Err(refused)) => return Err(refused),
                    Err(why) => {
                        warn!(worker, partition, error = %why, "a worker did not evaluate a query");
                    }
                }
            }
            if !done {
                unanswered.push(partition);
            }
        }
        Ok((result, unanswered))
    }
}

/// An export reads each page from a partition's live replicas as the control node knows
/// them at that moment.
impl crate::export::Workers for Control {
    fn replicas(&self, partition: PartitionId) -> Vec<(NodeId, SocketAddr)> {
        let (plan, addrs) = self.export_plan();
        plan.replicas
            .get(&partition)
            .into_iter()
            .flatten()
            .filter_map(|w| addrs.get(w).map(|a| (*w, *a)))
            .collect()
    }

    async fn page(
        &self,
        worker: NodeId,
        addr: SocketAddr,
        request: Request,
    ) -> Result<ExportPage, Error> {
        let started = Instant::now();
        let answer = self
            .rpc
            .call(worker, addr, &request, self.request_timeout)
            .await;
        self.metrics.observe_rpc("export", started.elapsed());
        match answer {
            Ok(RpcResponse::Exported(page)) => Ok(page),
            Ok(RpcResponse::Error(e)) => Err(e.into()),
            Ok(_) => Err(Error::Internal(
                "a worker answered an export page with something else".into(),
            )),
            Err(e) => Err(Error::Raft(e.to_string())),
        }
    }
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

/// `GET /admin/workers`: every worker the cluster knows, with its state, its last
/// heartbeat, the replicas and leaderships it holds, and the moves in flight.
async fn admin_workers(State(control): State<Arc<Control>>) -> Response {
    axum::Json(control.workers_document()).into_response()
}

fn worker_id(raw: &str) -> Result<NodeId, ApiError> {
    raw.parse::<NodeId>()
        .ok()
        .filter(|id| (1..=MAX_WORKER_ID).contains(id))
        .ok_or_else(|| {
            ApiError::from(Error::InvalidRequest(format!(
                "worker id must be a number in 1..={MAX_WORKER_ID}"
            )))
        })
}

/// `POST /admin/workers/{id}/drain`: moves every replica off the worker (its state goes
/// `draining`, then `drained`). Refused when the other active workers could not hold every
/// partition's replicas. On a control node that does not lead the metadata group, forwarded
/// to the one that does.
async fn admin_drain(
    State(control): State<Arc<Control>>,
    axum::extract::Path(raw): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let id = worker_id(&raw)?;
    let document = control.admin(AdminRequest::Drain(id)).await?;
    Ok(axum::Json(document).into_response())
}

/// `DELETE /admin/workers/{id}`: forgets a drained or dead worker that holds no replica
/// (forwarded to the metadata leader like a drain).
async fn admin_forget(
    State(control): State<Arc<Control>>,
    axum::extract::Path(raw): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let id = worker_id(&raw)?;
    let document = control.admin(AdminRequest::Forget(id)).await?;
    Ok(axum::Json(document).into_response())
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
