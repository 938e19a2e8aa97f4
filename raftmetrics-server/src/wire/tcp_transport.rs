//! Raft messages between nodes over TCP: [`TcpTransport`] sends, [`serve`] receives.
//!
//! # Sending
//!
//! [`TcpTransport`] implements the core's [`Transport`]. `send` never waits: it pushes the
//! batch into the destination's bounded queue ([`TransportConfig::queue_capacity`] batches)
//! and drops it (counted) when the queue is full or the destination unknown. One tokio task
//! per peer connects to the peer's address, runs the handshake (see [`super::frame`]),
//! then writes the queued batches as [`WireMessage::Raft`] frames, coalescing what is queued
//! into frames of about [`TARGET_FRAME_BYTES`]. A snapshot message larger than
//! [`SNAPSHOT_CHUNK_BYTES`] travels as [`WireMessage::SnapshotChunk`] frames
//! (`raftmetrics_core::raft::chunk`), which the receiver reassembles (bounded per connection)
//! before delivering the message, so a partition is never too large for a frame.
//!
//! After any error the task reconnects with capped, jittered exponential backoff; batches that
//! arrive while it waits to retry are dropped (counted), like a network would lose them, so a
//! peer that comes back is not sent a backlog of stale messages. Raft tolerates all of it. An idle connection carries an empty
//! `Raft` frame every [`TransportConfig::keepalive_interval`] so the receiver's idle timeout
//! does not close it, and the task watches the socket for the peer closing it, so a restarted
//! peer is reconnected at once rather than on the next write.
//!
//! # Receiving
//!
//! [`serve`] accepts connections, sends the challenge, verifies the hello within
//! [`ServeConfig::handshake_timeout`] and from then on reads `Raft` frames (closing a
//! connection silent for [`ServeConfig::idle_timeout`]). Connections still in the handshake
//! and authenticated ones are bounded apart: at most [`ServeConfig::max_handshaking`]
//! connections are in the handshake (at the bound a new connection closes the oldest of
//! them), and at most [`ServeConfig::max_connections`] are authenticated (past it, a
//! connection that passes the handshake is closed at once). A connection counts against
//! `max_connections` only once authenticated, and only a connection still in the handshake
//! is ever closed for a new one, so connections from anyone without the cluster secret can
//! never take the slots of the peers.
//!
//! A frame for another node id is dropped; so is every raft message that does not decode, is
//! not addressed to this node (`to`), or does not come from the authenticated peer (`from`).
//! The rest is handed to the `deliver` callback (in practice `NodeHandle::step`, which never
//! blocks) as one `Vec<Envelope>` per frame. Everything dropped is counted in [`ServeStats`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protobuf::Message as _;
use raft::eraftpb::Message;
use raftmetrics_core::raft::chunk::{self, Frame, Reassembler};
use raftmetrics_core::raft::{Envelope, NodeId, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, trace, warn};

use super::frame::{
    ClusterAuth, MAX_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES, WireError, WireMessage, encode_frame,
    random_nonce, read_frame, read_frame_limited, with_timeout, write_frame,
};

/// Where received raft messages go (in practice a closure calling `NodeHandle::step`).
/// Called on the connection's task: it must not block.
pub type Deliver = Arc<dyn Fn(Vec<Envelope>) + Send + Sync>;

/// Answers one internal RPC call: `(authenticated caller, request body) -> reply body`.
pub type RpcHandler = Arc<
    dyn Fn(NodeId, Vec<u8>) -> std::pin::Pin<Box<dyn Future<Output = Vec<u8>> + Send>>
        + Send
        + Sync,
>;

/// A sender starts a new frame once the current one holds about this many bytes of raft
/// messages (a single larger message gets a frame of its own, up to [`MAX_FRAME_BYTES`]).
pub const TARGET_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Snapshot messages with more data than this travel as chunks of this size
/// ([`WireMessage::SnapshotChunk`]), so no partition is too large for a frame.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Bounds of the snapshot reassembly of one connection.
const REASSEMBLY_MAX_BYTES: usize = 1 << 30;
const REASSEMBLY_MAX_SNAPSHOTS: usize = 8;

/// Upper bound of the encoding overhead of a `Raft` frame's header and fields, and of one
/// message's group and length prefix (varints).
const FRAME_OVERHEAD: usize = 64;
const MESSAGE_OVERHEAD: usize = 16;

macro_rules! counters {
    (
        $(#[$meta:meta])*
        $live:ident => $snap:ident {
            $( $(#[$fmeta:meta])* $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $live {
            $( pub(crate) $field: AtomicU64, )*
        }

        #[doc = concat!("The values of a [`", stringify!($live), "`] at one moment.")]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $snap {
            $( $(#[$fmeta])* pub $field: u64, )*
        }

        impl $live {
            /// The current values (each read on its own; not a consistent cut).
            pub fn snapshot(&self) -> $snap {
                $snap { $( $field: self.$field.load(Ordering::Relaxed), )* }
            }
        }
    };
}

counters! {
    /// Counters of a [`TcpTransport`] (all peers together), updated as it runs.
    TransportStats => TransportCounters {
        /// Batches accepted into a peer queue by `send`.
        batches_queued,
        /// Batches dropped by `send` because the peer's queue was full.
        batches_dropped_queue_full,
        /// Batches dropped by `send` because the destination has no address.
        batches_dropped_unknown_peer,
        /// Batches dropped because the peer was unreachable (queued while waiting to retry).
        batches_dropped_unreachable,
        /// Raft messages written to a socket.
        messages_sent,
        /// Raft messages dropped because they could not fit a frame.
        messages_dropped_oversize,
        /// Raft messages dropped because protobuf could not encode them.
        messages_dropped_encode,
        /// Frames written (keepalives included).
        frames_sent,
        /// Connections that completed the handshake.
        connections_established,
        /// Connection attempts that failed before the handshake (refused, timed out).
        connect_failures,
        /// Handshakes that failed (refused by the peer, wrong peer, protocol errors).
        handshake_failures,
        /// Established connections that ended with an error (peer closed, write failed).
        connection_errors,
    }
}

counters! {
    /// Counters of a [`serve`] loop, updated as it runs.
    ServeStats => ServeCounters {
        /// Connections accepted (each one starts a handshake).
        connections_accepted,
        /// Connections that passed the handshake and were closed at once because
        /// [`ServeConfig::max_connections`] authenticated connections were open.
        connections_refused,
        /// Connections still in the handshake closed to make room for a new one
        /// ([`ServeConfig::max_handshaking`]).
        connections_evicted,
        /// Connections open now, in the handshake or authenticated (a gauge).
        connections_open,
        /// Connections in the handshake now (a gauge).
        connections_handshaking,
        /// Errors of `accept` itself (e.g. out of file descriptors).
        accept_errors,
        /// Connections closed because the handshake failed or timed out.
        handshake_failures,
        /// Of the `handshake_failures`, those that timed out.
        handshake_timeouts,
        /// Authenticated connections (handshake passed).
        handshakes_passed,
        /// Frames read after the handshake (keepalives included).
        frames_received,
        /// Frames dropped because they were addressed to another node.
        frames_dropped_misaddressed,
        /// Raft messages handed to `deliver`.
        messages_delivered,
        /// Raft messages dropped because protobuf could not decode them.
        messages_dropped_malformed,
        /// Raft messages dropped because their `to` is not this node or their `from` is not
        /// the authenticated peer (messages of misaddressed frames included).
        messages_dropped_misaddressed,
        /// Authenticated connections closed because of a bad frame or message.
        protocol_errors,
        /// Authenticated connections closed because they were silent too long.
        idle_timeouts,
    }
}

fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// Counts one in a gauge of [`ServeStats`] while it lives.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn enter(gauge: &'a AtomicU64) -> Self {
        bump(gauge);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Settings of a [`TcpTransport`]. Units are in the names of the types.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Batches queued per peer before `send` drops (at least 1).
    pub queue_capacity: usize,
    /// Limit of one TCP connect.
    pub connect_timeout: Duration,
    /// Limit of the whole handshake once connected.
    pub handshake_timeout: Duration,
    /// Limit of writing one set of coalesced frames; a peer that stops reading is given up.
    pub write_timeout: Duration,
    /// First pause before reconnecting (doubled after each failure, jittered).
    pub backoff_initial: Duration,
    /// Longest pause before reconnecting.
    pub backoff_max: Duration,
    /// An idle connection sends an empty `Raft` frame this often; keep it well below the
    /// receivers' [`ServeConfig::idle_timeout`].
    pub keepalive_interval: Duration,
    /// Most queued batches coalesced into one write (at least 1).
    pub max_batches_per_write: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            queue_capacity: 1024,
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            max_batches_per_write: 64,
        }
    }
}

/// Settings of [`serve`].
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Authenticated connections served at once (at least 1); a connection that passes the
    /// handshake beyond them is closed at once. Connections in the handshake do not count.
    pub max_connections: usize,
    /// Connections in the handshake at once (at least 1); at the bound, a new connection
    /// closes the oldest of them. Authenticated connections are never closed for a new one.
    pub max_handshaking: usize,
    /// Limit from accept to a verified hello.
    pub handshake_timeout: Duration,
    /// An authenticated connection that sends no frame for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_connections: 256,
            max_handshaking: 64,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// What a peer task needs, shared by all of a transport's peers.
#[derive(Clone)]
struct Shared {
    local: NodeId,
    auth: ClusterAuth,
    config: TransportConfig,
    stats: Arc<TransportStats>,
}

struct Peer {
    addr: watch::Sender<SocketAddr>,
    queue: mpsc::Sender<Vec<Envelope>>,
    task: JoinHandle<()>,
}

/// Sends raft messages to other nodes over TCP: a bounded queue and a connection task per
/// peer. See the [module documentation](self).
///
/// Peer tasks run on the tokio runtime given at construction; dropping the transport stops
/// them (queued batches are lost).
pub struct TcpTransport {
    shared: Shared,
    runtime: Handle,
    peers: Mutex<HashMap<NodeId, Peer>>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("local", &self.shared.local)
            .field("peers", &self.peers())
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Creates the transport of node `local`, with no peers yet ([`TcpTransport::set_peer`]).
    ///
    /// Must be called from within a tokio runtime (it keeps a handle to it and spawns the
    /// peer tasks there); elsewhere use [`TcpTransport::with_runtime`]. Fails outside a
    /// runtime, for node id 0, and for a zero queue capacity or batches per write.
    pub fn new(
        local: NodeId,
        auth: ClusterAuth,
        config: TransportConfig,
    ) -> Result<Self, WireError> {
        let runtime = Handle::try_current().map_err(|e| {
            WireError::Config(format!("TcpTransport::new outside a tokio runtime: {e}"))
        })?;
        Self::with_runtime(runtime, local, auth, config)
    }

    /// Like [`TcpTransport::new`], with the runtime given explicitly; callable from any thread.
    pub fn with_runtime(
        runtime: Handle,
        local: NodeId,
        auth: ClusterAuth,
        config: TransportConfig,
    ) -> Result<Self, WireError> {
        if local == 0 {
            return Err(WireError::Config("node id 0 is reserved".into()));
        }
        if config.queue_capacity == 0 || config.max_batches_per_write == 0 {
            return Err(WireError::Config(
                "queue_capacity and max_batches_per_write must be at least 1".into(),
            ));
        }
        Ok(TcpTransport {
            shared: Shared {
                local,
                auth,
                config,
                stats: Arc::new(TransportStats::default()),
            },
            runtime,
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// This node's id.
    pub fn local(&self) -> NodeId {
        self.shared.local
    }

    /// Sets the address of node `id`, starting its connection task if it is new. A changed
    /// address of a known peer makes its task reconnect to the new address at once (queued
    /// batches are kept). Node id 0 is ignored (with a warning).
    pub fn set_peer(&self, id: NodeId, addr: SocketAddr) {
        if id == 0 {
            warn!(%addr, "ignoring peer with the reserved node id 0");
            return;
        }
        let mut peers = self.lock_peers();
        // A task that ended (it only does when it panicked) is replaced below.
        if let Some(peer) = peers.get(&id)
            && !peer.task.is_finished()
        {
            let changed = peer.addr.send_if_modified(|current| {
                let changed = *current != addr;
                *current = addr;
                changed
            });
            if changed {
                info!(peer = id, %addr, "peer address changed");
            }
            return;
        }
        let (addr_tx, addr_rx) = watch::channel(addr);
        let (queue_tx, queue_rx) = mpsc::channel(self.shared.config.queue_capacity);
        let task = self
            .runtime
            .spawn(peer_task(self.shared.clone(), id, queue_rx, addr_rx));
        debug!(peer = id, %addr, "peer added");
        if let Some(old) = peers.insert(
            id,
            Peer {
                addr: addr_tx,
                queue: queue_tx,
                task,
            },
        ) {
            old.task.abort();
        }
    }

    /// Forgets node `id`: its task stops and its queued batches are dropped. Returns whether
    /// it was known.
    pub fn remove_peer(&self, id: NodeId) -> bool {
        let removed = self.lock_peers().remove(&id);
        match removed {
            Some(peer) => {
                peer.task.abort();
                debug!(peer = id, "peer removed");
                true
            }
            None => false,
        }
    }

    /// The known peers and their addresses, sorted by id.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut peers: Vec<_> = self
            .lock_peers()
            .iter()
            .map(|(id, p)| (*id, *p.addr.borrow()))
            .collect();
        peers.sort_unstable();
        peers
    }

    /// The transport's counters.
    pub fn stats(&self) -> TransportCounters {
        self.shared.stats.snapshot()
    }

    fn lock_peers(&self) -> MutexGuard<'_, HashMap<NodeId, Peer>> {
        // The map stays consistent even if a holder panicked: every update is one insert or
        // remove.
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Transport for TcpTransport {
    /// Queues `batch` for node `to` without waiting; drops it (counted) when the queue is
    /// full or the node has no address.
    fn send(&self, to: NodeId, batch: Vec<Envelope>) {
        if batch.is_empty() {
            return;
        }
        let stats = &self.shared.stats;
        let peers = self.lock_peers();
        let Some(peer) = peers.get(&to) else {
            bump(&stats.batches_dropped_unknown_peer);
            trace!(peer = to, "dropping batch for a node without address");
            return;
        };
        match peer.queue.try_send(batch) {
            Ok(()) => bump(&stats.batches_queued),
            Err(TrySendError::Full(_)) => {
                bump(&stats.batches_dropped_queue_full);
                trace!(peer = to, "peer queue full; dropping batch");
            }
            Err(TrySendError::Closed(_)) => bump(&stats.batches_dropped_unreachable),
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        for peer in self.lock_peers().values() {
            peer.task.abort();
        }
    }
}

/// Why a connection's session ended.
enum SessionEnd {
    /// The transport dropped the peer: stop.
    Stopped,
    /// The peer has a new address: reconnect at once.
    AddrChanged,
    /// Something failed: back off, then reconnect.
    Failed(WireError),
}

/// Connects, handshakes and writes to one peer until the transport drops it.
async fn peer_task(
    shared: Shared,
    peer: NodeId,
    mut queue: mpsc::Receiver<Vec<Envelope>>,
    mut addr: watch::Receiver<SocketAddr>,
) {
    let config = &shared.config;
    let stats = &shared.stats;
    let mut backoff = config.backoff_initial.max(Duration::from_millis(1));
    let mut jitter = SplitMix64::new(shared.local, peer);
    let mut failures: u64 = 0;
    loop {
        let target = *addr.borrow_and_update();
        match connect(&shared, peer, target).await {
            Ok(stream) => {
                bump(&stats.connections_established);
                info!(peer, addr = %target, "connected to peer");
                failures = 0;
                backoff = config.backoff_initial.max(Duration::from_millis(1));
                match run_session(&shared, peer, stream, &mut queue, &mut addr).await {
                    SessionEnd::Stopped => return,
                    SessionEnd::AddrChanged => continue,
                    SessionEnd::Failed(e) => {
                        bump(&stats.connection_errors);
                        warn!(peer, addr = %target, error = %e, "connection to peer lost");
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    warn!(peer, addr = %target, error = %e, "cannot reach peer; retrying with backoff");
                } else {
                    debug!(peer, addr = %target, error = %e, failures, "cannot reach peer");
                }
            }
        }

        // Wait before retrying; what is sent meanwhile is lost, as on a broken network.
        let pause = jitter.jittered(backoff);
        backoff = backoff
            .saturating_mul(2)
            .min(config.backoff_max.max(backoff));
        let deadline = Instant::now() + pause;
        loop {
            tokio::select! {
                () = sleep_until(deadline) => break,
                changed = addr.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    backoff = config.backoff_initial.max(Duration::from_millis(1));
                    break;
                }
                batch = queue.recv() => match batch {
                    Some(_) => bump(&stats.batches_dropped_unreachable),
                    None => return,
                },
            }
        }
    }
}

/// Opens a connection to `peer` at `addr` and runs the connecting side of the handshake.
async fn connect(shared: &Shared, peer: NodeId, addr: SocketAddr) -> Result<TcpStream, WireError> {
    let config = &shared.config;
    let connected = with_timeout("connect", config.connect_timeout, async {
        Ok(TcpStream::connect(addr).await?)
    })
    .await;
    let mut stream = match connected {
        Ok(stream) => stream,
        Err(e) => {
            bump(&shared.stats.connect_failures);
            return Err(e);
        }
    };
    let handshake = with_timeout(
        "handshake",
        config.handshake_timeout,
        client_handshake(&mut stream, &shared.auth, shared.local, peer),
    )
    .await;
    match handshake {
        Ok(()) => Ok(stream),
        Err(e) => {
            bump(&shared.stats.handshake_failures);
            Err(e)
        }
    }
}

/// The connecting side of the handshake: answers the challenge as node `local` and checks
/// that the acceptor is node `peer` (or any control node, when `peer` is
/// [`crate::rpc::CONTROL_WIRE_ID`]).
pub(crate) async fn client_handshake(
    stream: &mut TcpStream,
    auth: &ClusterAuth,
    local: NodeId,
    peer: NodeId,
) -> Result<(), WireError> {
    stream.set_nodelay(true)?;
    let nonce = match read_frame_limited(stream, MAX_HANDSHAKE_FRAME_BYTES).await? {
        WireMessage::Challenge { nonce } => nonce,
        other => {
            return Err(WireError::Unexpected {
                expected: "challenge",
                got: other.kind(),
            });
        }
    };
    write_frame(stream, &auth.hello(local, &nonce)).await?;
    match read_frame_limited(stream, MAX_HANDSHAKE_FRAME_BYTES).await {
        Ok(WireMessage::Welcome { node_id }) if crate::rpc::answers_for(peer, node_id) => Ok(()),
        Ok(WireMessage::Welcome { node_id }) => Err(WireError::Handshake(format!(
            "reached node {node_id} instead of node {peer}"
        ))),
        Ok(other) => Err(WireError::Unexpected {
            expected: "welcome",
            got: other.kind(),
        }),
        Err(WireError::Closed) => Err(WireError::Handshake(
            "peer closed the connection after the hello (wrong cluster id or secret, or the \
             peer's connection limit?)"
                .into(),
        )),
        Err(e) => Err(e),
    }
}

/// Writes queued batches to an established connection until something ends it.
async fn run_session(
    shared: &Shared,
    peer: NodeId,
    stream: TcpStream,
    queue: &mut mpsc::Receiver<Vec<Envelope>>,
    addr: &mut watch::Receiver<SocketAddr>,
) -> SessionEnd {
    let config = &shared.config;
    let (mut reader, writer) = stream.into_split();
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut probe = [0u8; 64];
    let mut next_keepalive = Instant::now() + config.keepalive_interval;
    loop {
        tokio::select! {
            batch = queue.recv() => {
                let Some(batch) = batch else { return SessionEnd::Stopped };
                let mut batches = vec![batch];
                while batches.len() < config.max_batches_per_write {
                    match queue.try_recv() {
                        Ok(more) => batches.push(more),
                        Err(_) => break,
                    }
                }
                let (frames, messages) = encode_raft_frames(peer, batches, &shared.stats);
                if let Err(e) = write_frames(shared, &mut writer, &frames).await {
                    return SessionEnd::Failed(e);
                }
                add(&shared.stats.messages_sent, messages);
                next_keepalive = Instant::now() + config.keepalive_interval;
            }
            // The acceptor never writes after the welcome: any readiness means it closed the
            // connection (or broke the protocol).
            read = reader.read(&mut probe) => {
                return SessionEnd::Failed(match read {
                    Ok(0) => WireError::Closed,
                    Ok(_) => WireError::Unexpected { expected: "nothing", got: "data" },
                    Err(e) => WireError::Io(e),
                });
            }
            changed = addr.changed() => {
                return if changed.is_err() { SessionEnd::Stopped } else { SessionEnd::AddrChanged };
            }
            () = sleep_until(next_keepalive) => {
                let keepalive = WireMessage::Raft { to: peer, messages: Vec::new() };
                let frame = match encode_frame(&keepalive) {
                    Ok(frame) => frame,
                    Err(e) => return SessionEnd::Failed(e),
                };
                if let Err(e) = write_frames(shared, &mut writer, &[frame]).await {
                    return SessionEnd::Failed(e);
                }
                trace!(peer, "keepalive sent");
                next_keepalive = Instant::now() + config.keepalive_interval;
            }
        }
    }
}

async fn write_frames(
    shared: &Shared,
    writer: &mut BufWriter<OwnedWriteHalf>,
    frames: &[Vec<u8>],
) -> Result<(), WireError> {
    with_timeout("write", shared.config.write_timeout, async {
        for frame in frames {
            writer.write_all(frame).await?;
        }
        writer.flush().await?;
        Ok(())
    })
    .await?;
    add(&shared.stats.frames_sent, frames.len() as u64);
    Ok(())
}

/// Encodes the messages of `batches` into `Raft` frames for `to` of about
/// [`TARGET_FRAME_BYTES`] each. Returns the frames and the number of messages in them;
/// messages that cannot be encoded or cannot fit a frame are dropped and counted.
fn encode_raft_frames(
    to: NodeId,
    batches: Vec<Vec<Envelope>>,
    stats: &TransportStats,
) -> (Vec<Vec<u8>>, u64) {
    fn finish(
        to: NodeId,
        messages: &mut Vec<(u32, Vec<u8>)>,
        frames: &mut Vec<Vec<u8>>,
        stats: &TransportStats,
    ) -> u64 {
        if messages.is_empty() {
            return 0;
        }
        let count = messages.len() as u64;
        let msg = WireMessage::Raft {
            to,
            messages: std::mem::take(messages),
        };
        match encode_frame(&msg) {
            Ok(frame) => {
                frames.push(frame);
                count
            }
            Err(e) => {
                add(&stats.messages_dropped_oversize, count);
                warn!(peer = to, error = %e, "dropping a frame of raft messages");
                0
            }
        }
    }

    let mut frames = Vec::new();
    let mut current: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut current_bytes = 0usize;
    let mut sent = 0u64;
    for frame in batches
        .into_iter()
        .flatten()
        .flat_map(|e| chunk::split(e, SNAPSHOT_CHUNK_BYTES))
    {
        let envelope = match frame {
            Frame::Message(envelope) => envelope,
            Frame::SnapshotChunk(c) => {
                sent += finish(to, &mut current, &mut frames, stats);
                current_bytes = 0;
                let last = c.seq + 1 == c.total;
                let msg = WireMessage::SnapshotChunk(c);
                match encode_frame(&msg) {
                    Ok(f) => {
                        frames.push(f);
                        sent += u64::from(last);
                    }
                    Err(e) => {
                        bump(&stats.messages_dropped_oversize);
                        warn!(peer = to, error = %e, "dropping a snapshot chunk");
                    }
                }
                continue;
            }
        };
        let bytes = match envelope.message.write_to_bytes() {
            Ok(bytes) => bytes,
            Err(e) => {
                bump(&stats.messages_dropped_encode);
                warn!(peer = to, group = envelope.group, error = %e, "cannot encode raft message");
                continue;
            }
        };
        let size = bytes.len() + MESSAGE_OVERHEAD;
        if size + FRAME_OVERHEAD > MAX_FRAME_BYTES {
            bump(&stats.messages_dropped_oversize);
            warn!(
                peer = to,
                group = envelope.group,
                msg_type = ?envelope.message.get_msg_type(),
                bytes = bytes.len(),
                limit = MAX_FRAME_BYTES,
                "raft message too large for a frame; dropped"
            );
            continue;
        }
        if !current.is_empty() && current_bytes + size > TARGET_FRAME_BYTES {
            sent += finish(to, &mut current, &mut frames, stats);
            current_bytes = 0;
        }
        current_bytes += size;
        current.push((envelope.group, bytes));
    }
    sent += finish(to, &mut current, &mut frames, stats);
    (frames, sent)
}

/// Small PRNG for backoff jitter (SplitMix64); unpredictability is not needed here.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(local: NodeId, peer: NodeId) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        SplitMix64(nanos ^ local.rotate_left(32) ^ peer.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A pause uniformly in `[base / 2, base]`.
    fn jittered(&mut self, base: Duration) -> Duration {
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        let half = nanos / 2;
        Duration::from_nanos(half + self.next() % (nanos - half + 1))
    }
}

/// Accepts raft connections on `listener` until `shutdown` completes, with the default
/// [`ServeConfig`]; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    auth: ClusterAuth,
    local: NodeId,
    deliver: Deliver,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WireError> {
    serve_with(
        listener,
        auth,
        local,
        deliver,
        shutdown,
        ServeConfig::default(),
        Arc::new(ServeStats::default()),
    )
    .await
}

/// Accepts raft connections on `listener` for node `local` until `shutdown` completes, then
/// closes every connection and returns. Each connection must pass the handshake with `auth`;
/// the raft messages it carries to `local` are handed to `deliver`. See the
/// [module documentation](self) for what is dropped; `stats` counts it.
///
/// Fails at once for node id 0, `max_connections` or `max_handshaking` 0, or when the OS
/// random number generator cannot be read (nonces come from it); accept errors are logged and
/// retried.
pub async fn serve_with(
    listener: TcpListener,
    auth: ClusterAuth,
    local: NodeId,
    deliver: Deliver,
    shutdown: impl Future<Output = ()>,
    config: ServeConfig,
    stats: Arc<ServeStats>,
) -> Result<(), WireError> {
    serve_node(
        listener,
        Endpoints {
            auth,
            local,
            deliver,
            rpc: None,
        },
        shutdown,
        config,
        stats,
    )
    .await
}

/// What a node serves on its node-to-node port.
pub struct Endpoints {
    /// Proof every connecting node must give.
    pub auth: ClusterAuth,
    /// This node's id (what the handshake answers).
    pub local: NodeId,
    /// Where raft messages go.
    pub deliver: Deliver,
    /// Answers internal RPC calls; without it a call closes the connection.
    pub rpc: Option<RpcHandler>,
}

/// Like [`serve_with`], also answering [`WireMessage::Call`] frames with `endpoints.rpc`.
/// Calls on one connection are answered in order, one at a time.
pub async fn serve_node(
    listener: TcpListener,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()>,
    config: ServeConfig,
    stats: Arc<ServeStats>,
) -> Result<(), WireError> {
    let Endpoints {
        auth,
        local,
        deliver,
        rpc,
    } = endpoints;
    if local == 0 {
        return Err(WireError::Config("node id 0 is reserved".into()));
    }
    if config.max_connections == 0 || config.max_handshaking == 0 {
        return Err(WireError::Config(
            "max_connections and max_handshaking must be at least 1".into(),
        ));
    }
    random_nonce()?;
    let ctx = Arc::new(ServeCtx {
        auth,
        local,
        deliver,
        rpc,
        slots: Arc::new(Semaphore::new(config.max_connections)),
        handshaking: Mutex::new(BTreeMap::new()),
        config,
        stats,
    });
    let mut next_id = 0u64;
    let mut connections = JoinSet::new();
    let local_addr = listener.local_addr().ok();
    info!(node = local, addr = ?local_addr, "accepting raft connections");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = ended
                    && e.is_panic()
                {
                    warn!(error = %e, "a raft connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    next_id += 1;
                    let evicted = ctx.start_handshake(next_id);
                    bump(&ctx.stats.connections_accepted);
                    connections.spawn(serve_connection(
                        Arc::clone(&ctx),
                        stream,
                        remote,
                        next_id,
                        evicted,
                    ));
                }
                Err(e) => {
                    bump(&ctx.stats.accept_errors);
                    warn!(error = %e, "accept failed");
                    sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    connections.shutdown().await;
    info!(node = local, addr = ?local_addr, "stopped accepting raft connections");
    Ok(())
}

struct ServeCtx {
    auth: ClusterAuth,
    local: NodeId,
    deliver: Deliver,
    rpc: Option<RpcHandler>,
    /// One permit per authenticated connection.
    slots: Arc<Semaphore>,
    /// Connections in the handshake by number (accept order); dropping a sender closes its
    /// connection.
    handshaking: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
    config: ServeConfig,
    stats: Arc<ServeStats>,
}

impl ServeCtx {
    /// Registers connection `id` as in the handshake, first closing the oldest ones in the
    /// handshake at the bound. The answer completes when `id` is closed for a newer one.
    fn start_handshake(&self, id: u64) -> oneshot::Receiver<()> {
        let mut pending = self
            .handshaking
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while pending.len() >= self.config.max_handshaking {
            let Some((_, oldest)) = pending.pop_first() else {
                break;
            };
            drop(oldest);
            bump(&self.stats.connections_evicted);
        }
        let (tx, rx) = oneshot::channel();
        pending.insert(id, tx);
        rx
    }

    /// Connection `id` left the handshake.
    fn end_handshake(&self, id: u64) {
        self.handshaking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

async fn serve_connection(
    ctx: Arc<ServeCtx>,
    mut stream: TcpStream,
    remote: SocketAddr,
    id: u64,
    evicted: oneshot::Receiver<()>,
) {
    let stats = &ctx.stats;
    let _open = Gauge::enter(&stats.connections_open);
    let handshaking = Gauge::enter(&stats.connections_handshaking);
    let handshake = with_timeout(
        "handshake",
        ctx.config.handshake_timeout,
        accept_handshake(&ctx, &mut stream),
    );
    let handshake = tokio::select! {
        biased;
        passed = handshake => Some(passed),
        _ = evicted => None,
    };
    ctx.end_handshake(id);
    drop(handshaking);
    let (peer, _slot) = match handshake {
        Some(Ok(Accepted::Peer(peer, slot))) => (peer, slot),
        Some(Ok(Accepted::Full(peer))) => {
            bump(&stats.handshakes_passed);
            bump(&stats.connections_refused);
            warn!(%remote, peer, max = ctx.config.max_connections,
                "authenticated connection limit reached; closing the new connection");
            return;
        }
        None => {
            debug!(%remote, "closing a connection still in the handshake for a newer one");
            return;
        }
        Some(Err(e)) => {
            bump(&stats.handshake_failures);
            if matches!(e, WireError::Timeout(_)) {
                bump(&stats.handshake_timeouts);
            }
            warn!(%remote, error = %e, "raft connection refused at handshake");
            return;
        }
    };
    bump(&stats.handshakes_passed);
    info!(%remote, peer, "raft connection from peer");
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut reassembler = Reassembler::new(REASSEMBLY_MAX_BYTES, REASSEMBLY_MAX_SNAPSHOTS);
    loop {
        let frame =
            match tokio::time::timeout(ctx.config.idle_timeout, read_frame(&mut reader)).await {
                Ok(Ok(frame)) => frame,
                Ok(Err(WireError::Closed)) => {
                    debug!(%remote, peer, "peer closed the raft connection");
                    return;
                }
                Ok(Err(e)) => {
                    bump(&stats.protocol_errors);
                    warn!(%remote, peer, error = %e, "closing raft connection");
                    return;
                }
                Err(_) => {
                    bump(&stats.idle_timeouts);
                    debug!(%remote, peer, "closing idle raft connection");
                    return;
                }
            };
        bump(&stats.frames_received);
        match frame {
            WireMessage::Raft { to, messages } => receive_raft(&ctx, peer, to, messages),
            WireMessage::SnapshotChunk(chunk) => {
                if chunk.to != ctx.local || chunk.from != peer {
                    bump(&stats.messages_dropped_misaddressed);
                    continue;
                }
                if let Some(envelope) = reassembler.accept(Frame::SnapshotChunk(chunk))
                    && envelope.message.get_to() == ctx.local
                    && envelope.message.get_from() == peer
                {
                    bump(&stats.messages_delivered);
                    (ctx.deliver)(vec![envelope]);
                }
            }
            WireMessage::Call { id, body } if ctx.rpc.is_some() => {
                let Some(handler) = &ctx.rpc else { return };
                let reply = handler(peer, body).await;
                let written = tokio::time::timeout(
                    ctx.config.idle_timeout,
                    write_frame(reader.get_mut(), &WireMessage::Reply { id, body: reply }),
                )
                .await;
                if !matches!(written, Ok(Ok(()))) {
                    debug!(%remote, peer, "could not write an rpc reply; closing");
                    return;
                }
            }
            other => {
                bump(&stats.protocol_errors);
                warn!(%remote, peer, kind = other.kind(),
                    "unexpected message after the handshake; closing raft connection");
                return;
            }
        }
    }
}

/// How a handshake that proved the cluster secret ended.
enum Accepted {
    /// Welcomed, in one of the authenticated slots.
    Peer(NodeId, OwnedSemaphorePermit),
    /// Every authenticated slot was taken: not welcomed.
    Full(NodeId),
}

/// The accepting side of the handshake: the peer is welcomed once it proved the secret and
/// an authenticated slot is free.
async fn accept_handshake(ctx: &ServeCtx, stream: &mut TcpStream) -> Result<Accepted, WireError> {
    stream.set_nodelay(true)?;
    let nonce = random_nonce()?;
    write_frame(stream, &WireMessage::Challenge { nonce }).await?;
    match read_frame_limited(stream, MAX_HANDSHAKE_FRAME_BYTES).await? {
        WireMessage::Hello {
            cluster_id,
            node_id,
            proof,
        } => {
            if !ctx.auth.verify(&cluster_id, node_id, &nonce, &proof) {
                let shown: String = cluster_id.chars().take(64).collect();
                return Err(WireError::Handshake(format!(
                    "node {node_id} of cluster {shown:?} failed the proof"
                )));
            }
            let Ok(slot) = Arc::clone(&ctx.slots).try_acquire_owned() else {
                return Ok(Accepted::Full(node_id));
            };
            write_frame(stream, &WireMessage::Welcome { node_id: ctx.local }).await?;
            Ok(Accepted::Peer(node_id, slot))
        }
        other => Err(WireError::Unexpected {
            expected: "hello",
            got: other.kind(),
        }),
    }
}

fn receive_raft(ctx: &ServeCtx, peer: NodeId, to: NodeId, messages: Vec<(u32, Vec<u8>)>) {
    let stats = &ctx.stats;
    if to != ctx.local {
        bump(&stats.frames_dropped_misaddressed);
        add(&stats.messages_dropped_misaddressed, messages.len() as u64);
        debug!(
            peer,
            to,
            local = ctx.local,
            "dropping a raft frame for another node"
        );
        return;
    }
    let mut envelopes = Vec::with_capacity(messages.len());
    for (group, bytes) in messages {
        match Message::parse_from_bytes(&bytes) {
            Ok(message) if message.get_to() == ctx.local && message.get_from() == peer => {
                envelopes.push(Envelope { group, message });
            }
            Ok(message) => {
                bump(&stats.messages_dropped_misaddressed);
                debug!(
                    peer,
                    group,
                    from = message.get_from(),
                    to = message.get_to(),
                    "dropping a raft message not from the peer to this node"
                );
            }
            Err(e) => {
                bump(&stats.messages_dropped_malformed);
                debug!(peer, group, error = %e, "dropping an undecodable raft message");
            }
        }
    }
    if !envelopes.is_empty() {
        add(&stats.messages_delivered, envelopes.len() as u64);
        (ctx.deliver)(envelopes);
    }
}
