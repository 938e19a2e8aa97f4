//! An in-process network for tests and simulations.
//!
//! [`SimNetwork`] connects nodes of one process: each node sends with the [`Transport`] returned
//! by [`SimNetwork::endpoint`] and receives through the [`Deliver`] callback it registered
//! (in practice a closure calling [`crate::raft::NodeHandle::step`]). The network can misbehave
//! on purpose: it drops, duplicates and delays messages (different delays reorder them) as
//! configured by a [`FaultConfig`], and it can cut links one way, partition sets of nodes and
//! isolate nodes.
//!
//! # Frames and snapshot chunks
//!
//! The network moves [`Frame`]s. By default every message is one frame. With
//! [`FaultConfig::snapshot_chunk_bytes`] set, [`chunk::split`] turns each large snapshot
//! message into chunks when it is sent, and every frame (whole message or chunk) meets the
//! faults on its own: it may be dropped, duplicated, delayed or cut like a message. At the
//! destination, chunks go through that node's [`Reassembler`] (held by the network, used
//! under its lock but never while a receiver runs), and only complete messages reach the
//! [`Deliver`] callback: a lost chunk loses the snapshot (until the sender resends it; chunks
//! that did arrive still count, see [`chunk`]). Partial snapshots to a node are forgotten
//! when it is unregistered.
//!
//! # Determinism
//!
//! Fault decisions come from a small PRNG (SplitMix64) seeded by [`SimNetwork::new`]. Every
//! frame draws the same fixed number of values (four: drop, duplicate, delay, duplicate's
//! delay), in send order (a split message's chunks in `seq` order), whatever the outcome and
//! whatever the cuts, so the same seed, the same fault configuration and the same sequence of
//! sends give the same drop / duplicate / delay decisions. Without chunking a frame is a
//! message, so the draws are the same as before chunking existed; with it, a snapshot draws
//! four values per chunk, and how many chunks it has depends only on its size. Concurrent
//! senders are ordered by who takes the network's lock first. Delivery itself runs on a background thread against the
//! wall clock, so *when* a message arrives (and therefore the interleaving of deliveries with
//! later sends, cuts and restarts) is not deterministic.
//!
//! # Delivery
//!
//! One background thread keeps the in-flight messages in a heap ordered by due time (then send
//! order) and sleeps on a condvar until the earliest is due. It then takes every due message,
//! groups them by destination (keeping their order) and calls each destination's [`Deliver`]
//! once, without holding any lock of the network, so callbacks may send, cut or re-register.
//! With equal delays (e.g. [`FaultConfig::reliable`]) messages from one sender to one
//! destination arrive in send order.
//!
//! Cuts, isolation and unregistered destinations drop a frame when it is sent and again when
//! it is due, so a frame in flight when a cut is made is dropped. At most [`MAX_IN_FLIGHT`]
//! frames (duplicates included) are in flight; beyond that new ones are dropped. All drops
//! are counted in [`NetStats::dropped`].

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::chunk::{self, Frame, Reassembler};
use super::transport::{Envelope, NodeId, Transport};

/// Where delivered messages go: the receiving node's inbox (in practice `NodeHandle::step`).
pub type Deliver = Arc<dyn Fn(Vec<Envelope>) + Send + Sync>;

/// Most frames in flight at once (duplicates included); beyond it new frames are dropped.
pub const MAX_IN_FLIGHT: usize = 100_000;

/// Most bytes of snapshot chunks a destination holds while reassembling.
pub const REASSEMBLY_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Most partial snapshots a destination holds while reassembling.
pub const REASSEMBLY_MAX_SNAPSHOTS: usize = 64;

/// How the network misbehaves. Probabilities are per frame (a message, or a snapshot chunk
/// when [`FaultConfig::snapshot_chunk_bytes`] is set); values `<= 0` (or NaN) never fire,
/// values `>= 1` always do.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// Probability that a message is lost.
    pub drop_probability: f64,
    /// Probability that a message (not dropped) is delivered twice, each copy with its own
    /// delay.
    pub duplicate_probability: f64,
    /// Smallest delay, in milliseconds.
    pub min_delay_ms: u64,
    /// Largest delay, in milliseconds (inclusive; taken as `min_delay_ms` when smaller).
    /// Delays are uniform per message, so different delays reorder messages.
    pub max_delay_ms: u64,
    /// `Some(n)`: snapshot messages with more than `n` bytes of data travel as chunks of at
    /// most `n` bytes, each meeting the faults on its own, and are delivered once complete.
    /// `None`: every message travels whole.
    pub snapshot_chunk_bytes: Option<usize>,
}

impl FaultConfig {
    /// No drops, no duplicates, no delay: messages arrive once and in send order.
    pub fn reliable() -> Self {
        Self {
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            min_delay_ms: 0,
            max_delay_ms: 0,
            snapshot_chunk_bytes: None,
        }
    }
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self::reliable()
    }
}

/// Counters of a [`SimNetwork`], in frames, since it was created. Without
/// [`FaultConfig::snapshot_chunk_bytes`] a frame is a message (an envelope); with it, a large
/// snapshot message is as many frames as it has chunks.
///
/// `sent + duplicated == delivered + dropped + in_flight` at every snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames made of the messages handed to [`Transport::send`] by the endpoints.
    pub sent: u64,
    /// Of `sent`, the snapshot chunks.
    pub chunks_sent: u64,
    /// Copies that reached their destination: whole messages handed to the receiver's
    /// [`Deliver`], chunks handed to its reassembler.
    pub delivered: u64,
    /// Snapshot messages rebuilt from chunks and handed to a receiver's [`Deliver`].
    pub reassembled: u64,
    /// Copies lost: by fault, cut, isolation, unregistered destination, overflow or shutdown.
    pub dropped: u64,
    /// Extra copies created by the duplicate fault.
    pub duplicated: u64,
    /// Copies waiting for their due time.
    pub in_flight: u64,
}

/// A simulated network of nodes. Cheap to clone (Arc inside); every clone and every endpoint
/// shares the same network. The delivery thread ends when the last clone and the last
/// endpoint are dropped, or at [`SimNetwork::shutdown`].
///
/// A receiver that holds an endpoint or a clone of the network (directly, or through a node
/// that holds its transport) forms a reference cycle: call [`SimNetwork::shutdown`] to break
/// it, it drops all receivers and in-flight messages.
#[derive(Clone)]
pub struct SimNetwork {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for SimNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNetwork")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Held by every clone and endpoint; its drop ends the delivery thread.
struct Owner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Shared with the delivery thread.
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// True while the delivery thread runs.
    running: AtomicBool,
}

struct State {
    rng: SplitMix64,
    faults: FaultConfig,
    receivers: HashMap<NodeId, Deliver>,
    /// One-way cuts `(from, to)`.
    cuts: HashSet<(NodeId, NodeId)>,
    /// Nodes cut from everyone, both ways.
    isolated: HashSet<NodeId>,
    queue: BinaryHeap<InFlight>,
    /// Per destination: snapshot chunks waiting for the rest of their snapshot.
    reassemblers: HashMap<NodeId, Reassembler>,
    next_seq: u64,
    stats: NetStats,
    shutdown: bool,
}

impl State {
    fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.cuts.contains(&(from, to))
            || (from != to && (self.isolated.contains(&from) || self.isolated.contains(&to)))
    }

    fn reachable(&self, from: NodeId, to: NodeId) -> bool {
        !self.shutdown && !self.blocked(from, to) && self.receivers.contains_key(&to)
    }

    fn delay(&mut self) -> Duration {
        let min = self.faults.min_delay_ms;
        let max = self.faults.max_delay_ms.max(min);
        let draw = self.rng.next_u64();
        let ms = match (max - min).checked_add(1) {
            Some(span) => min + draw % span,
            None => draw, // the whole u64 range
        };
        Duration::from_millis(ms)
    }

    /// Takes everything that must be dropped outside the lock.
    fn take_all(&mut self) -> (HashMap<NodeId, Deliver>, BinaryHeap<InFlight>) {
        let receivers = std::mem::take(&mut self.receivers);
        let queue = std::mem::take(&mut self.queue);
        self.reassemblers.clear();
        self.stats.dropped += queue.len() as u64;
        self.stats.in_flight = 0;
        (receivers, queue)
    }
}

/// A frame copy waiting for its due time.
struct InFlight {
    due: Instant,
    seq: u64,
    from: NodeId,
    to: NodeId,
    frame: Frame,
}

impl InFlight {
    fn key(&self) -> (Instant, u64) {
        (self.due, self.seq)
    }
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    /// Reversed: the max-heap yields the earliest due time, then the earliest send.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.key().cmp(&self.key())
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, good enough for fault injection.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimNetwork {
    /// A network whose fault decisions are drawn from `seed`. Spawns the delivery thread.
    pub fn new(seed: u64, faults: FaultConfig) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rng: SplitMix64(seed),
                faults,
                receivers: HashMap::new(),
                cuts: HashSet::new(),
                isolated: HashSet::new(),
                queue: BinaryHeap::new(),
                reassemblers: HashMap::new(),
                next_seq: 0,
                stats: NetStats::default(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            running: AtomicBool::new(true),
        });
        let for_thread = Arc::clone(&shared);
        let thread = match thread::Builder::new()
            .name("sim-network".into())
            .spawn(move || delivery_loop(&for_thread))
        {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::error!(%error, "sim network: cannot spawn the delivery thread, every message will be dropped");
                shared.running.store(false, Ordering::SeqCst);
                lock(&shared.state).shutdown = true;
                None
            }
        };
        Self {
            owner: Arc::new(Owner {
                shared,
                thread: Mutex::new(thread),
            }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// Routes messages for `node` to `deliver`, replacing any previous receiver (a restarted
    /// node). Messages already in flight to `node` go to the new receiver. Ignored after
    /// [`SimNetwork::shutdown`].
    pub fn register(&self, node: NodeId, deliver: Deliver) {
        let old = {
            let mut state = lock(&self.shared().state);
            if state.shutdown {
                return; // `deliver` (a parameter) is dropped after the guard is released
            }
            state.receivers.insert(node, deliver)
        };
        drop(old); // outside the lock: dropping a receiver may run arbitrary code
    }

    /// Takes `node` down: messages to it are dropped, at send and at delivery, and the
    /// snapshot chunks it was reassembling are forgotten.
    pub fn unregister(&self, node: NodeId) {
        let (old, partial) = {
            let mut state = lock(&self.shared().state);
            (
                state.receivers.remove(&node),
                state.reassemblers.remove(&node),
            )
        };
        drop((old, partial));
    }

    /// The [`Transport`] node `from` sends with.
    pub fn endpoint(&self, from: NodeId) -> Arc<dyn Transport> {
        Arc::new(Endpoint {
            from,
            network: self.clone(),
        })
    }

    /// Replaces the fault configuration; applies to messages sent from now on.
    pub fn set_faults(&self, faults: FaultConfig) {
        lock(&self.shared().state).faults = faults;
    }

    /// The current fault configuration.
    pub fn faults(&self) -> FaultConfig {
        lock(&self.shared().state).faults.clone()
    }

    /// Cuts both directions between every node of `a` and every node of `b` (a node in both
    /// sets keeps talking to itself).
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut state = lock(&self.shared().state);
        for &x in a {
            for &y in b {
                if x != y {
                    state.cuts.insert((x, y));
                    state.cuts.insert((y, x));
                }
            }
        }
    }

    /// Cuts the link from `from` to `to`, one way.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        lock(&self.shared().state).cuts.insert((from, to));
    }

    /// Cuts `node` from every other node, both ways, including nodes registered later.
    pub fn isolate(&self, node: NodeId) {
        lock(&self.shared().state).isolated.insert(node);
    }

    /// Removes all cuts, partitions and isolations; the fault configuration is unchanged.
    pub fn heal(&self) {
        let mut state = lock(&self.shared().state);
        state.cuts.clear();
        state.isolated.clear();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetStats {
        lock(&self.shared().state).stats
    }

    /// Stops the network: drops every in-flight message (counted as dropped) and every
    /// receiver, ends the delivery thread and waits for it (unless called from a receiver,
    /// on the delivery thread itself). Later sends are dropped. Idempotent.
    pub fn shutdown(&self) {
        stop(self.shared());
        let handle = lock(&self.owner.thread).take();
        if let Some(handle) = handle {
            if handle.thread().id() == thread::current().id() {
                return; // the thread ends after this callback returns
            }
            if handle.join().is_err() {
                tracing::error!("sim network: the delivery thread panicked");
            }
        }
    }

    fn send_from(&self, from: NodeId, to: NodeId, batch: Vec<Envelope>) {
        let shared = self.shared();
        let mut state = lock(&shared.state);
        let was_first = state.queue.peek().map(|head| head.due);
        let now = Instant::now();
        let chunking = state.faults.snapshot_chunk_bytes;
        let frames = batch
            .into_iter()
            .flat_map(|envelope| match chunking {
                Some(max) => chunk::split(envelope, max),
                None => vec![Frame::Message(envelope)],
            })
            .collect::<Vec<_>>();
        for frame in frames {
            state.stats.sent += 1;
            if matches!(frame, Frame::SnapshotChunk(_)) {
                state.stats.chunks_sent += 1;
            }
            // Always the same draws per frame, so decisions depend only on seed and sends.
            let drop_draw = state.rng.next_f64();
            let dup_draw = state.rng.next_f64();
            let delay = state.delay();
            let dup_delay = state.delay();
            if drop_draw < state.faults.drop_probability || !state.reachable(from, to) {
                state.stats.dropped += 1;
                continue;
            }
            let mut copies = vec![(delay, frame)];
            if dup_draw < state.faults.duplicate_probability {
                state.stats.duplicated += 1;
                let copy = copies[0].1.clone();
                copies.push((dup_delay, copy));
            }
            for (delay, frame) in copies {
                let Some(due) = now.checked_add(delay) else {
                    state.stats.dropped += 1; // due beyond what the clock can represent
                    continue;
                };
                if state.queue.len() >= MAX_IN_FLIGHT {
                    state.stats.dropped += 1;
                    continue;
                }
                let seq = state.next_seq;
                state.next_seq += 1;
                state.queue.push(InFlight {
                    due,
                    seq,
                    from,
                    to,
                    frame,
                });
                state.stats.in_flight += 1;
            }
        }
        let head = state.queue.peek().map(|head| head.due);
        drop(state);
        if head.is_some() && head != was_first {
            shared.wake.notify_one();
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // The last clone and endpoint are gone: end the thread without waiting for it (we may
        // be running on it, inside a receiver that held the last clone).
        stop(&self.shared);
    }
}

/// Marks the network shut down and wakes the delivery thread; drops receivers and queued
/// messages outside the lock.
fn stop(shared: &Shared) {
    let taken = {
        let mut state = lock(&shared.state);
        state.shutdown = true;
        state.take_all()
    };
    shared.wake.notify_all();
    drop(taken);
}

/// The [`Transport`] of one node of a [`SimNetwork`].
struct Endpoint {
    from: NodeId,
    network: SimNetwork,
}

impl Transport for Endpoint {
    fn send(&self, to: NodeId, batch: Vec<Envelope>) {
        if !batch.is_empty() {
            self.network.send_from(self.from, to, batch);
        }
    }
}

/// One destination's share of the due messages.
struct Batch {
    deliver: Deliver,
    to: NodeId,
    envelopes: Vec<Envelope>,
}

fn delivery_loop(shared: &Shared) {
    let mut state = lock(&shared.state);
    loop {
        if state.shutdown {
            break;
        }
        let now = Instant::now();
        let wait = match state.queue.peek() {
            None => None,
            Some(head) if head.due > now => Some(head.due - now),
            Some(_) => {
                let batches = take_due(&mut state, now);
                drop(state);
                for batch in batches {
                    let Batch {
                        deliver,
                        to,
                        envelopes,
                    } = batch;
                    // A panicking receiver must not stop the network; the panic hook reports it.
                    if catch_unwind(AssertUnwindSafe(|| deliver(envelopes))).is_err() {
                        tracing::error!(node = to, "sim network: a receiver panicked");
                    }
                }
                state = lock(&shared.state);
                continue;
            }
        };
        state = match wait {
            None => shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
            Some(timeout) => {
                shared
                    .wake
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
    drop(state);
    shared.running.store(false, Ordering::SeqCst);
}

/// Pops every frame due at `now`, drops those that became unreachable, passes chunks through
/// their destination's reassembler and groups the messages by destination, keeping their
/// order.
fn take_due(state: &mut State, now: Instant) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    while state.queue.peek().is_some_and(|head| head.due <= now) {
        let Some(InFlight {
            from, to, frame, ..
        }) = state.queue.pop()
        else {
            break;
        };
        state.stats.in_flight -= 1;
        if state.blocked(from, to) || !state.receivers.contains_key(&to) {
            state.stats.dropped += 1;
            continue;
        }
        state.stats.delivered += 1;
        let envelope = match frame {
            Frame::Message(envelope) => envelope,
            chunk @ Frame::SnapshotChunk(_) => {
                let rebuilt = state
                    .reassemblers
                    .entry(to)
                    .or_insert_with(|| {
                        Reassembler::new(REASSEMBLY_MAX_BYTES, REASSEMBLY_MAX_SNAPSHOTS)
                    })
                    .accept(chunk);
                let Some(envelope) = rebuilt else {
                    continue;
                };
                state.stats.reassembled += 1;
                envelope
            }
        };
        let Some(deliver) = state.receivers.get(&to) else {
            continue; // checked above
        };
        match batches.iter_mut().find(|batch| batch.to == to) {
            Some(batch) => batch.envelopes.push(envelope),
            None => batches.push(Batch {
                deliver: Arc::clone(deliver),
                to,
                envelopes: vec![envelope],
            }),
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Message;

    /// A message whose `index` identifies it.
    fn msg(from: NodeId, to: NodeId, id: u64) -> Envelope {
        Envelope {
            group: 7,
            message: Message {
                from,
                to,
                index: id,
                ..Default::default()
            },
        }
    }

    type Inbox = Arc<Mutex<Vec<Envelope>>>;

    fn receiver() -> (Inbox, Deliver) {
        let inbox: Inbox = Arc::default();
        let sink = Arc::clone(&inbox);
        (
            inbox,
            Arc::new(move |batch: Vec<Envelope>| sink.lock().unwrap().extend(batch)),
        )
    }

    fn ids(inbox: &Inbox) -> Vec<u64> {
        inbox
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.message.index)
            .collect()
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until nothing is in flight and every delivered copy reached one of `inboxes`.
    fn settle(net: &SimNetwork, inboxes: &[&Inbox]) {
        wait_until("the network to settle", || {
            let stats = net.stats();
            let received: usize = inboxes.iter().map(|i| i.lock().unwrap().len()).sum();
            stats.in_flight == 0 && received as u64 == stats.delivered
        });
        let s = net.stats();
        assert_eq!(
            s.sent + s.duplicated,
            s.delivered + s.dropped + s.in_flight,
            "{s:?}"
        );
    }

    fn faults(drop: f64, dup: f64, min: u64, max: u64) -> FaultConfig {
        FaultConfig {
            drop_probability: drop,
            duplicate_probability: dup,
            min_delay_ms: min,
            max_delay_ms: max,
            snapshot_chunk_bytes: None,
        }
    }

    #[test]
    fn reliable_delivers_everything_in_order() {
        let net = SimNetwork::new(1, FaultConfig::reliable());
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        let tx = net.endpoint(1);
        for start in (0..1000).step_by(10) {
            tx.send(2, (start..start + 10).map(|i| msg(1, 2, i)).collect());
        }
        settle(&net, &[&inbox]);
        assert_eq!(ids(&inbox), (0..1000).collect::<Vec<_>>());
        let s = net.stats();
        assert_eq!(
            (s.sent, s.delivered, s.dropped, s.duplicated),
            (1000, 1000, 0, 0)
        );
        assert!(
            inbox
                .lock()
                .unwrap()
                .iter()
                .all(|e| e.group == 7 && e.message.to == 2)
        );
    }

    #[test]
    fn drop_probability_one_drops_all() {
        let net = SimNetwork::new(2, faults(1.0, 0.0, 0, 0));
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        let tx = net.endpoint(1);
        for id in 0..500 {
            tx.send(2, vec![msg(1, 2, id)]);
        }
        settle(&net, &[&inbox]);
        assert!(ids(&inbox).is_empty());
        assert_eq!(net.stats().dropped, 500);
    }

    #[test]
    fn drop_probability_drops_a_share() {
        let net = SimNetwork::new(3, faults(0.3, 0.0, 0, 0));
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        let tx = net.endpoint(1);
        for id in 0..2000 {
            tx.send(2, vec![msg(1, 2, id)]);
        }
        settle(&net, &[&inbox]);
        let s = net.stats();
        assert!((400..=800).contains(&s.dropped), "{s:?}");
        assert_eq!(ids(&inbox).len() as u64, 2000 - s.dropped);
        // Survivors keep their order with zero delay.
        let got = ids(&inbox);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn duplicates_are_delivered_and_counted() {
        let net = SimNetwork::new(4, faults(0.0, 0.5, 0, 0));
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        let tx = net.endpoint(1);
        for id in 0..1000 {
            tx.send(2, vec![msg(1, 2, id)]);
        }
        settle(&net, &[&inbox]);
        let s = net.stats();
        assert!((350..=650).contains(&s.duplicated), "{s:?}");
        assert_eq!(s.delivered, 1000 + s.duplicated);
        let got = ids(&inbox);
        assert_eq!(got.len() as u64, s.delivered);
        let mut counts: HashMap<u64, u64> = HashMap::new();
        for id in got {
            *counts.entry(id).or_default() += 1;
        }
        assert_eq!(counts.len(), 1000);
        assert_eq!(
            counts.values().filter(|&&c| c == 2).count() as u64,
            s.duplicated
        );
        assert!(counts.values().all(|&c| c == 1 || c == 2));
    }

    #[test]
    fn delays_reorder_and_everything_arrives() {
        let net = SimNetwork::new(5, faults(0.0, 0.0, 0, 20));
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        let tx = net.endpoint(1);
        let started = Instant::now();
        for id in 0..200 {
            tx.send(2, vec![msg(1, 2, id)]);
        }
        settle(&net, &[&inbox]);
        assert!(started.elapsed() < Duration::from_secs(5));
        let got = ids(&inbox);
        assert!(
            got.windows(2).any(|w| w[0] > w[1]),
            "no reordering: {got:?}"
        );
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn delays_are_respected() {
        let net = SimNetwork::new(6, faults(0.0, 0.0, 50, 50));
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        let sent_at = Instant::now();
        net.endpoint(1).send(2, vec![msg(1, 2, 0)]);
        settle(&net, &[&inbox]);
        assert!(sent_at.elapsed() >= Duration::from_millis(50));
        assert_eq!(ids(&inbox), vec![0]);
    }

    /// Three nodes, each with an inbox; returns the network, inboxes and endpoints.
    fn trio() -> (SimNetwork, Vec<Inbox>, Vec<Arc<dyn Transport>>) {
        let net = SimNetwork::new(7, FaultConfig::reliable());
        let mut inboxes = Vec::new();
        let mut endpoints = Vec::new();
        for node in 1..=3 {
            let (inbox, deliver) = receiver();
            net.register(node, deliver);
            inboxes.push(inbox);
            endpoints.push(net.endpoint(node));
        }
        (net, inboxes, endpoints)
    }

    /// Sends one message along every ordered pair and returns which pairs got through.
    fn reachability(
        net: &SimNetwork,
        inboxes: &[Inbox],
        endpoints: &[Arc<dyn Transport>],
    ) -> HashSet<(NodeId, NodeId)> {
        for inbox in inboxes {
            inbox.lock().unwrap().clear();
        }
        let before = net.stats().delivered;
        for from in 1..=3u64 {
            for to in 1..=3u64 {
                if from != to {
                    endpoints[(from - 1) as usize].send(to, vec![msg(from, to, from * 10 + to)]);
                }
            }
        }
        wait_until("reachability probes", || {
            let s = net.stats();
            let received: usize = inboxes.iter().map(|i| i.lock().unwrap().len()).sum();
            s.in_flight == 0 && received as u64 == s.delivered - before
        });
        inboxes
            .iter()
            .flat_map(|i| {
                i.lock()
                    .unwrap()
                    .iter()
                    .map(|e| (e.message.from, e.message.to))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn all_pairs() -> HashSet<(NodeId, NodeId)> {
        [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)]
            .into_iter()
            .collect()
    }

    #[test]
    fn partition_cut_isolate_heal() {
        let (net, inboxes, eps) = trio();
        assert_eq!(reachability(&net, &inboxes, &eps), all_pairs());

        net.partition(&[1], &[2, 3]);
        assert_eq!(
            reachability(&net, &inboxes, &eps),
            [(2, 3), (3, 2)].into_iter().collect()
        );
        net.heal();
        assert_eq!(reachability(&net, &inboxes, &eps), all_pairs());

        net.cut(1, 2); // one way: 2 -> 1 still works
        let mut expected = all_pairs();
        expected.remove(&(1, 2));
        assert_eq!(reachability(&net, &inboxes, &eps), expected);
        net.heal();

        net.isolate(3);
        assert_eq!(
            reachability(&net, &inboxes, &eps),
            [(1, 2), (2, 1)].into_iter().collect()
        );
        // Isolation also covers nodes registered after it.
        let (late, deliver) = receiver();
        net.register(4, deliver);
        eps[2].send(4, vec![msg(3, 4, 1)]);
        net.endpoint(4).send(3, vec![msg(4, 3, 2)]);
        net.heal();
        assert_eq!(reachability(&net, &inboxes, &eps), all_pairs());
        assert!(ids(&late).is_empty());
        assert_eq!(net.faults(), FaultConfig::reliable());
        let s = net.stats();
        assert_eq!(
            s.sent + s.duplicated,
            s.delivered + s.dropped + s.in_flight,
            "{s:?}"
        );
    }

    #[test]
    fn in_flight_messages_are_dropped_when_cut_or_unregistered() {
        let net = SimNetwork::new(8, faults(0.0, 0.0, 100, 100));
        let (inbox2, deliver2) = receiver();
        let (inbox3, deliver3) = receiver();
        net.register(2, deliver2);
        net.register(3, deliver3);
        let tx = net.endpoint(1);
        tx.send(2, vec![msg(1, 2, 1), msg(1, 2, 2)]);
        tx.send(3, vec![msg(1, 3, 3)]);
        net.endpoint(2).send(1, vec![msg(2, 1, 4)]); // node 1 is not registered
        assert_eq!(net.stats().in_flight, 3);
        assert_eq!(net.stats().dropped, 1);
        net.cut(1, 2);
        net.unregister(3);
        settle(&net, &[&inbox2, &inbox3]);
        assert!(ids(&inbox2).is_empty() && ids(&inbox3).is_empty());
        assert_eq!(net.stats().dropped, 4);
        assert_eq!(net.stats().delivered, 0);

        tx.send(3, vec![msg(1, 3, 5)]); // 3 is unregistered: dropped at send
        net.register(
            3,
            Arc::new({
                let inbox3 = Arc::clone(&inbox3);
                move |batch: Vec<Envelope>| inbox3.lock().unwrap().extend(batch)
            }),
        );
        net.cut(1, 3);
        tx.send(3, vec![msg(1, 3, 6)]); // dropped at send
        net.heal();
        // A message in flight across a cut that heals before it is due gets through.
        tx.send(3, vec![msg(1, 3, 7)]);
        net.cut(1, 3);
        net.heal();
        settle(&net, &[&inbox2, &inbox3]);
        assert_eq!(ids(&inbox3), vec![7]);
        assert_eq!(net.stats().dropped, 6);
    }

    #[test]
    fn unregister_and_reregister() {
        let net = SimNetwork::new(9, FaultConfig::reliable());
        let (first, deliver) = receiver();
        net.register(2, deliver);
        let tx = net.endpoint(1);
        tx.send(2, vec![msg(1, 2, 1)]);
        settle(&net, &[&first]);
        net.unregister(2);
        tx.send(2, vec![msg(1, 2, 2)]);
        settle(&net, &[&first]);
        let (second, deliver) = receiver();
        net.register(2, deliver);
        tx.send(2, vec![msg(1, 2, 3)]);
        // Re-registering replaces the receiver.
        let (third, deliver) = receiver();
        settle(&net, &[&first, &second]);
        net.register(2, deliver);
        tx.send(2, vec![msg(1, 2, 4)]);
        settle(&net, &[&first, &second, &third]);
        assert_eq!(
            (ids(&first), ids(&second), ids(&third)),
            (vec![1], vec![3], vec![4])
        );
        assert_eq!(net.stats().dropped, 1);
    }

    /// The ids dropped over 500 single-message sends with drop probability 0.5.
    fn dropped_ids(seed: u64) -> Vec<u64> {
        let net = SimNetwork::new(seed, faults(0.5, 0.0, 0, 0));
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        let tx = net.endpoint(1);
        for id in 0..500 {
            tx.send(2, vec![msg(1, 2, id)]);
        }
        settle(&net, &[&inbox]);
        let got: HashSet<u64> = ids(&inbox).into_iter().collect();
        (0..500).filter(|id| !got.contains(id)).collect()
    }

    #[test]
    fn same_seed_same_decisions() {
        let a = dropped_ids(42);
        let b = dropped_ids(42);
        assert!(!a.is_empty() && a.len() < 500);
        assert_eq!(a, b);
        assert_ne!(a, dropped_ids(43));
    }

    #[test]
    fn receivers_may_call_back_into_the_network() {
        // Ping-pong between 1 and 2 from inside the callbacks, then a callback cuts the link.
        let net = SimNetwork::new(10, FaultConfig::reliable());
        let count = Arc::new(Mutex::new(0u64));
        for (me, peer) in [(1u64, 2u64), (2, 1)] {
            let tx = net.endpoint(me);
            let net_in_callback = net.clone();
            let count = Arc::clone(&count);
            net.register(
                me,
                Arc::new(move |batch: Vec<Envelope>| {
                    for e in batch {
                        let n = {
                            let mut c = count.lock().unwrap();
                            *c += 1;
                            *c
                        };
                        if n == 100 {
                            net_in_callback.isolate(me);
                        }
                        tx.send(peer, vec![msg(me, peer, e.message.index + 1)]);
                    }
                }),
            );
        }
        net.endpoint(1).send(2, vec![msg(1, 2, 0)]);
        wait_until("the ping-pong to stop", || net.stats().dropped == 1);
        assert_eq!(*count.lock().unwrap(), 100);
        // Receivers hold clones of the network: shutdown breaks the cycle.
        net.shutdown();
        assert!(!net.shared().running.load(Ordering::SeqCst));
    }

    #[test]
    fn bounded_in_flight() {
        let net = SimNetwork::new(11, faults(0.0, 0.0, 60_000, 60_000));
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        let tx = net.endpoint(1);
        let total = MAX_IN_FLIGHT as u64 + 5;
        for start in (0..total).step_by(1000) {
            tx.send(
                2,
                (start..(start + 1000).min(total))
                    .map(|i| msg(1, 2, i))
                    .collect(),
            );
        }
        let s = net.stats();
        assert_eq!(
            (s.sent, s.in_flight, s.dropped),
            (total, MAX_IN_FLIGHT as u64, 5)
        );
        net.shutdown();
        let s = net.stats();
        assert_eq!((s.in_flight, s.dropped, s.delivered), (0, total, 0));
        assert!(ids(&inbox).is_empty());
    }

    #[test]
    fn shutdown_stops_the_thread() {
        let net = SimNetwork::new(12, faults(0.0, 0.0, 1000, 1000));
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        let tx = net.endpoint(1);
        tx.send(2, vec![msg(1, 2, 1)]);
        let clone = net.clone();
        clone.shutdown();
        assert!(!net.shared().running.load(Ordering::SeqCst));
        assert_eq!(Arc::strong_count(&inbox), 1, "receivers are released");
        tx.send(2, vec![msg(1, 2, 2)]);
        net.register(2, Arc::new(|_| {}));
        net.shutdown(); // idempotent
        let s = net.stats();
        assert_eq!((s.sent, s.dropped, s.delivered, s.in_flight), (2, 2, 0, 0));
    }

    #[test]
    fn dropping_the_last_handle_stops_the_thread() {
        let net = SimNetwork::new(13, FaultConfig::reliable());
        let shared = Arc::clone(&net.owner.shared);
        let (_inbox, deliver) = receiver();
        net.register(2, deliver);
        let tx = net.endpoint(1);
        let clone = net.clone();
        drop(net);
        drop(clone);
        tx.send(2, vec![msg(1, 2, 1)]);
        assert!(
            shared.running.load(Ordering::SeqCst),
            "an endpoint keeps it alive"
        );
        drop(tx);
        wait_until("the delivery thread to end", || {
            !shared.running.load(Ordering::SeqCst)
        });
    }

    /// A snapshot message of `len` bytes of data at `index`.
    fn snapshot(from: NodeId, to: NodeId, index: u64, len: usize) -> Envelope {
        let mut e = msg(from, to, index);
        e.message
            .set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
        let mut snap = raft::eraftpb::Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = 2;
        snap.set_data(
            (0..len)
                .map(|i| (i * 31 + index as usize) as u8)
                .collect::<Vec<_>>()
                .into(),
        );
        e.message.set_snapshot(snap);
        e
    }

    fn chunked(drop: f64, dup: f64, max_delay: u64, chunk: usize) -> FaultConfig {
        FaultConfig {
            snapshot_chunk_bytes: Some(chunk),
            ..faults(drop, dup, 0, max_delay)
        }
    }

    #[test]
    fn snapshots_travel_in_chunks() {
        let net = SimNetwork::new(15, chunked(0.0, 0.0, 0, 1000));
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        let big = snapshot(1, 2, 2, 10_500);
        let small = snapshot(1, 2, 4, 1000); // within the chunk size: whole
        net.endpoint(1).send(
            2,
            vec![msg(1, 2, 1), big.clone(), msg(1, 2, 3), small.clone()],
        );
        wait_until("the messages", || {
            net.stats().in_flight == 0 && inbox.lock().unwrap().len() == 4
        });
        let got = inbox.lock().unwrap().clone();
        assert_eq!(got, vec![msg(1, 2, 1), big, msg(1, 2, 3), small]);
        let s = net.stats();
        assert_eq!(
            (s.sent, s.chunks_sent, s.delivered, s.reassembled, s.dropped),
            (14, 11, 14, 1, 0)
        );
    }

    /// Which of 60 snapshots (5 chunks each) sent over a lossy, duplicating, reordering
    /// network arrived; every one that arrived is intact.
    fn snapshots_through(seed: u64) -> Vec<u64> {
        let net = SimNetwork::new(seed, chunked(0.25, 0.2, 3, 1000));
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        let tx = net.endpoint(1);
        for index in 0..60 {
            tx.send(2, vec![snapshot(1, 2, index, 4_500)]);
            // One snapshot at a time, as a leader does: the next one replaces a partial one.
            wait_until("the network to drain", || net.stats().in_flight == 0);
        }
        let s = net.stats();
        assert_eq!(s.chunks_sent, 300);
        assert_eq!(s.sent + s.duplicated, s.delivered + s.dropped, "{s:?}");
        let got = inbox.lock().unwrap().clone();
        for e in &got {
            assert_eq!(*e, snapshot(1, 2, e.message.index, 4_500));
        }
        assert_eq!(got.len() as u64, s.reassembled);
        let mut indexes: Vec<u64> = got.iter().map(|e| e.message.index).collect();
        indexes.dedup(); // a duplicated last chunk may complete a snapshot twice
        indexes
    }

    #[test]
    fn a_lost_chunk_loses_the_snapshot() {
        let a = snapshots_through(16);
        assert!(!a.is_empty() && a.len() < 60, "{a:?}");
        assert_eq!(a, snapshots_through(16), "same seed, same snapshots");
    }

    #[test]
    fn odd_fault_configs_do_not_panic() {
        let net = SimNetwork::new(14, faults(f64::NAN, 2.0, 5, 1));
        let (inbox, deliver) = receiver();
        net.register(2, deliver);
        net.endpoint(1).send(2, vec![msg(1, 2, 1)]);
        settle(&net, &[&inbox]);
        assert_eq!(ids(&inbox), vec![1, 1]);
        // Huge delays: due far in the future (or unrepresentable, then dropped).
        net.set_faults(faults(0.0, 0.0, u64::MAX - 1, u64::MAX));
        net.endpoint(1).send(2, vec![msg(1, 2, 2)]);
        net.set_faults(faults(0.0, 0.0, 0, u64::MAX));
        net.endpoint(1).send(2, vec![msg(1, 2, 3)]);
        thread::sleep(Duration::from_millis(20));
        let s = net.stats();
        assert_eq!((s.delivered, s.in_flight + s.dropped), (2, 2), "{s:?}");
        net.shutdown();
        assert_eq!(ids(&inbox), vec![1, 1]);
    }
}
