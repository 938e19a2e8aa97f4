//! Node-to-node TCP: handshake, delivery, dropping and reconnecting, on real loopback sockets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::{Entry, EntryType, Message, MessageType, Snapshot};
use raftmetrics_core::raft::{Envelope, NodeId, Transport};
use raftmetrics_server::wire::frame::{
    ClusterAuth, MAX_HANDSHAKE_FRAME_BYTES, WireError, WireMessage, read_frame_limited, write_frame,
};
use raftmetrics_server::wire::tcp_transport::{
    Deliver, ServeConfig, ServeCounters, ServeStats, TcpTransport, TransportConfig, serve_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(15);

fn auth() -> ClusterAuth {
    ClusterAuth::new("test-cluster", b"correct horse battery staple").unwrap()
}

/// A raft append with some fields and entries set.
fn append(from: NodeId, to: NodeId, index: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.set_from(from);
    m.set_to(to);
    m.set_term(7);
    m.set_log_term(6);
    m.set_index(index);
    m.set_commit(index.saturating_sub(1));
    for i in 0..3 {
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryNormal);
        e.set_term(7);
        e.set_index(index + 1 + i);
        e.set_data(
            format!("payload {from}->{to} #{index}/{i}")
                .into_bytes()
                .into(),
        );
        m.mut_entries().push(e);
    }
    m.set_context(vec![1, 2, 3].into());
    m
}

/// A snapshot message of `bytes` bytes of data (forces frames beyond the 4 MiB target).
fn snapshot(from: NodeId, to: NodeId, bytes: usize) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.set_from(from);
    m.set_to(to);
    m.set_term(3);
    let mut s = Snapshot::default();
    s.set_data(
        (0..bytes)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into(),
    );
    s.mut_metadata().set_index(1000);
    s.mut_metadata().set_term(3);
    s.mut_metadata().mut_conf_state().set_voters(vec![1, 2, 3]);
    m.set_snapshot(s);
    m
}

fn envelope(group: u32, message: Message) -> Envelope {
    Envelope { group, message }
}

/// A listener on `addr` (port 0 for a fresh one) that can be re-created on the same port.
fn bind(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(128).unwrap()
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

struct Server {
    addr: SocketAddr,
    delivered: Arc<Mutex<Vec<Envelope>>>,
    stats: Arc<ServeStats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), WireError>>,
}

impl Server {
    fn start(listener: TcpListener, auth: ClusterAuth, local: NodeId, config: ServeConfig) -> Self {
        Self::start_into(listener, auth, local, config, Arc::default())
    }

    fn start_into(
        listener: TcpListener,
        auth: ClusterAuth,
        local: NodeId,
        config: ServeConfig,
        delivered: Arc<Mutex<Vec<Envelope>>>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let sink = Arc::clone(&delivered);
        let deliver: Deliver = Arc::new(move |batch: Vec<Envelope>| {
            sink.lock().unwrap().extend(batch);
        });
        let stats = Arc::new(ServeStats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(
            listener,
            auth,
            local,
            deliver,
            async move {
                let _ = stopped.await;
            },
            config,
            Arc::clone(&stats),
        ));
        Server {
            addr,
            delivered,
            stats,
            stop: Some(stop),
            task,
        }
    }

    fn delivered(&self) -> Vec<Envelope> {
        self.delivered.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }

    fn stats(&self) -> ServeCounters {
        self.stats.snapshot()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fast_transport() -> TransportConfig {
    TransportConfig {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..TransportConfig::default()
    }
}

/// Connects and reads the challenge.
async fn raw_connect(addr: SocketAddr) -> (TcpStream, [u8; 32]) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    match read_frame_limited(&mut stream, MAX_HANDSHAKE_FRAME_BYTES)
        .await
        .unwrap()
    {
        WireMessage::Challenge { nonce } => (stream, nonce),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// Whether the peer closed `stream` (EOF or reset) within a few seconds, having sent nothing.
async fn closed_without_answer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Whether `stream` is still open: nothing and no EOF arrives for a while.
async fn still_open(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf))
        .await
        .is_err()
}

fn encoded(m: &Message) -> Vec<u8> {
    use protobuf::Message as _;
    m.write_to_bytes().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transports_exchange_raft_messages_both_ways() {
    let (la, lb) = (bind(localhost()), bind(localhost()));
    let a = Server::start(la, auth(), 1, ServeConfig::default());
    let b = Server::start(lb, auth(), 2, ServeConfig::default());
    let ta = TcpTransport::new(1, auth(), fast_transport()).unwrap();
    let tb = TcpTransport::new(2, auth(), fast_transport()).unwrap();
    ta.set_peer(2, b.addr);
    tb.set_peer(1, a.addr);
    assert_eq!(ta.peers(), vec![(2, b.addr)]);

    let mut to_b = Vec::new();
    let mut to_a = Vec::new();
    for i in 0..50u64 {
        let batch_b = vec![
            envelope((i % 7) as u32, append(1, 2, i * 10)),
            envelope(1000 + i as u32, append(1, 2, i * 10 + 5)),
        ];
        let batch_a = vec![envelope((i % 5) as u32, append(2, 1, i))];
        to_b.extend(batch_b.clone());
        to_a.extend(batch_a.clone());
        ta.send(2, batch_b);
        tb.send(1, batch_a);
    }
    // Snapshots larger than SNAPSHOT_CHUNK_BYTES travel as chunks and arrive whole, in order
    // with the other messages.
    let big = vec![
        envelope(3, snapshot(1, 2, 21 << 20)),
        envelope(4, snapshot(1, 2, 6 << 20)),
        envelope(5, append(1, 2, 99_999)),
    ];
    to_b.extend(big.clone());
    ta.send(2, big);

    wait_until("messages at b", || b.count() >= to_b.len()).await;
    wait_until("messages at a", || a.count() >= to_a.len()).await;
    // One connection per direction: order is kept.
    assert_eq!(b.delivered(), to_b);
    assert_eq!(a.delivered(), to_a);

    let sa = ta.stats();
    assert_eq!(sa.batches_queued, 51);
    assert_eq!(sa.messages_sent, to_b.len() as u64);
    assert_eq!(sa.connections_established, 1);
    assert!(sa.frames_sent >= 2, "{sa:?}");
    assert_eq!(tb.stats().messages_sent, to_a.len() as u64);
    let sb = b.stats();
    assert_eq!(sb.handshakes_passed, 1);
    assert_eq!(sb.messages_delivered, to_b.len() as u64);
    assert_eq!(
        sb.messages_dropped_malformed + sb.messages_dropped_misaddressed,
        0
    );

    drop(ta);
    drop(tb);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_and_nothing_is_delivered() {
    let server = Server::start(bind(localhost()), auth(), 2, ServeConfig::default());

    // By hand: the hello with a proof made from another secret is answered by a close.
    let intruder = ClusterAuth::new("test-cluster", b"guess").unwrap();
    let (mut stream, nonce) = raw_connect(server.addr).await;
    write_frame(&mut stream, &intruder.hello(1, &nonce))
        .await
        .unwrap();
    // A raft frame right behind the hello must not be delivered either.
    let _ = write_frame(
        &mut stream,
        &WireMessage::Raft {
            to: 2,
            messages: vec![(0, encoded(&append(1, 2, 1)))],
        },
    )
    .await;
    assert!(closed_without_answer(&mut stream).await);

    // Through a transport with the wrong secret.
    let transport = TcpTransport::new(1, intruder, fast_transport()).unwrap();
    transport.set_peer(2, server.addr);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(600) {
        transport.send(2, vec![envelope(0, append(1, 2, 5))]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until("refused handshakes", || {
        transport.stats().handshake_failures >= 2
    })
    .await;
    assert_eq!(transport.stats().connections_established, 0);
    assert_eq!(transport.stats().messages_sent, 0);
    assert_eq!(server.count(), 0);
    let stats = server.stats();
    assert!(stats.handshake_failures >= 3, "{stats:?}");
    assert_eq!(stats.handshakes_passed, 0);
    assert_eq!(stats.messages_delivered, 0);
    drop(transport);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cluster_id_is_refused_and_nothing_is_delivered() {
    let server = Server::start(bind(localhost()), auth(), 2, ServeConfig::default());

    // Same secret, other cluster.
    let other = ClusterAuth::new("other-cluster", b"correct horse battery staple").unwrap();
    let (mut stream, nonce) = raw_connect(server.addr).await;
    write_frame(&mut stream, &other.hello(1, &nonce))
        .await
        .unwrap();
    assert!(closed_without_answer(&mut stream).await);

    // Right proof for the other cluster id, claiming ours: still refused.
    let (mut stream, nonce) = raw_connect(server.addr).await;
    let WireMessage::Hello { node_id, proof, .. } = other.hello(1, &nonce) else {
        unreachable!()
    };
    let forged = WireMessage::Hello {
        cluster_id: "test-cluster".into(),
        node_id,
        proof,
    };
    write_frame(&mut stream, &forged).await.unwrap();
    assert!(closed_without_answer(&mut stream).await);

    let transport = TcpTransport::new(1, other, fast_transport()).unwrap();
    transport.set_peer(2, server.addr);
    transport.send(2, vec![envelope(0, append(1, 2, 5))]);
    wait_until("refused handshake", || {
        transport.stats().handshake_failures >= 1
    })
    .await;
    assert_eq!(server.count(), 0);
    assert_eq!(server.stats().handshakes_passed, 0);
    assert!(server.stats().handshake_failures >= 3);
    drop(transport);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_the_handshake_are_refused() {
    let server = Server::start(bind(localhost()), auth(), 2, ServeConfig::default());

    // A raft frame instead of a hello.
    let (mut stream, _nonce) = raw_connect(server.addr).await;
    write_frame(
        &mut stream,
        &WireMessage::Raft {
            to: 2,
            messages: vec![(0, encoded(&append(1, 2, 1)))],
        },
    )
    .await
    .unwrap();
    assert!(closed_without_answer(&mut stream).await);

    // Garbage (an HTTP request) instead of a frame.
    let (mut stream, _nonce) = raw_connect(server.addr).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_without_answer(&mut stream).await);

    // A hello frame claiming a body above the handshake limit.
    let (mut stream, _nonce) = raw_connect(server.addr).await;
    let mut header = b"RMWF\x01".to_vec();
    header.extend_from_slice(&(MAX_HANDSHAKE_FRAME_BYTES as u32 + 1).to_be_bytes());
    stream.write_all(&header).await.unwrap();
    assert!(closed_without_answer(&mut stream).await);

    assert_eq!(server.count(), 0);
    assert_eq!(server.stats().handshake_failures, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misaddressed_and_malformed_messages_are_dropped() {
    let server = Server::start(bind(localhost()), auth(), 2, ServeConfig::default());
    let (mut stream, nonce) = raw_connect(server.addr).await;
    write_frame(&mut stream, &auth().hello(7, &nonce))
        .await
        .unwrap();
    match read_frame_limited(&mut stream, MAX_HANDSHAKE_FRAME_BYTES)
        .await
        .unwrap()
    {
        WireMessage::Welcome { node_id } => assert_eq!(node_id, 2),
        other => panic!("expected welcome, got {other:?}"),
    }
    // A frame for node 3 (this is node 2): dropped whole.
    write_frame(
        &mut stream,
        &WireMessage::Raft {
            to: 3,
            messages: vec![
                (0, encoded(&append(7, 3, 1))),
                (1, encoded(&append(7, 3, 2))),
            ],
        },
    )
    .await
    .unwrap();
    // One frame mixing good and bad messages.
    let good = append(7, 2, 40);
    write_frame(
        &mut stream,
        &WireMessage::Raft {
            to: 2,
            messages: vec![
                (0, vec![0xff, 0xff, 0xff]),     // not protobuf
                (1, encoded(&append(8, 2, 10))), // not from the authenticated peer
                (2, encoded(&append(7, 3, 20))), // not to this node
                (9, encoded(&good)),             // fine
            ],
        },
    )
    .await
    .unwrap();
    // A keepalive.
    write_frame(
        &mut stream,
        &WireMessage::Raft {
            to: 2,
            messages: vec![],
        },
    )
    .await
    .unwrap();
    wait_until("the good message", || server.count() == 1).await;
    assert_eq!(server.delivered(), vec![envelope(9, good)]);
    wait_until("three frames", || server.stats().frames_received == 3).await;
    let stats = server.stats();
    assert_eq!(stats.frames_dropped_misaddressed, 1);
    assert_eq!(stats.messages_dropped_misaddressed, 4);
    assert_eq!(stats.messages_dropped_malformed, 1);
    assert_eq!(stats.messages_delivered, 1);

    // A handshake message after the handshake is a protocol error: closed.
    write_frame(&mut stream, &WireMessage::Welcome { node_id: 7 })
        .await
        .unwrap();
    assert!(closed_without_answer(&mut stream).await);
    wait_until("protocol error", || server.stats().protocol_errors == 1).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_from_another_node_is_refused() {
    // The address of "node 2" is actually served by node 3.
    let server = Server::start(bind(localhost()), auth(), 3, ServeConfig::default());
    let transport = TcpTransport::new(1, auth(), fast_transport()).unwrap();
    transport.set_peer(2, server.addr);
    transport.send(2, vec![envelope(0, append(1, 2, 1))]);
    wait_until("refused welcome", || {
        transport.stats().handshake_failures >= 2
    })
    .await;
    assert_eq!(transport.stats().connections_established, 0);
    assert_eq!(server.count(), 0);
    drop(transport);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_again_after_the_peer_restarts() {
    let listener = bind(localhost());
    let addr = listener.local_addr().unwrap();
    let delivered: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let server = Server::start_into(
        listener,
        auth(),
        2,
        ServeConfig::default(),
        Arc::clone(&delivered),
    );
    let transport = TcpTransport::new(1, auth(), fast_transport()).unwrap();
    transport.set_peer(2, addr);

    let mut index = 0u64;
    let mut send_until_delivered = async |label: &str| {
        let before = delivered.lock().unwrap().len();
        let start = Instant::now();
        loop {
            index += 1;
            transport.send(2, vec![envelope(1, append(1, 2, index))]);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if delivered.lock().unwrap().len() > before {
                return;
            }
            assert!(start.elapsed() < WAIT, "no delivery {label}");
        }
    };

    send_until_delivered("before the restart").await;
    server.stop().await;
    // While the peer is down, sending neither blocks nor delivers.
    let down_before = delivered.lock().unwrap().len();
    for i in 0..20 {
        transport.send(2, vec![envelope(1, append(1, 2, 1_000_000 + i))]);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(delivered.lock().unwrap().len(), down_before);

    // The peer comes back on the same port.
    let server = Server::start_into(
        bind(addr),
        auth(),
        2,
        ServeConfig::default(),
        Arc::clone(&delivered),
    );
    send_until_delivered("after the restart").await;
    let stats = transport.stats();
    assert!(stats.connections_established >= 2, "{stats:?}");
    assert!(stats.connection_errors >= 1, "{stats:?}");
    // Everything delivered is a message that was sent, to node 2, from node 1, in order.
    let got = delivered.lock().unwrap().clone();
    assert!(
        got.iter()
            .all(|e| e.message.get_from() == 1 && e.message.get_to() == 2)
    );
    assert!(
        got.windows(2)
            .all(|w| w[0].message.get_index() < w[1].message.get_index())
    );
    drop(transport);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_without_blocking() {
    // A listener that never accepts: connects complete in the kernel, then the handshake waits
    // for a challenge that never comes, so nothing leaves the queue.
    let stuck = bind(localhost());
    let transport = TcpTransport::new(
        1,
        auth(),
        TransportConfig {
            queue_capacity: 16,
            handshake_timeout: Duration::from_secs(30),
            ..TransportConfig::default()
        },
    )
    .unwrap();
    transport.set_peer(2, stuck.local_addr().unwrap());
    let batch = vec![envelope(0, append(1, 2, 1)), envelope(1, append(1, 2, 2))];

    let start = Instant::now();
    for _ in 0..10_000 {
        transport.send(2, batch.clone());
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "10000 sends took {elapsed:?}"
    );

    let stats = transport.stats();
    assert_eq!(
        stats.batches_queued + stats.batches_dropped_queue_full,
        10_000
    );
    assert!(stats.batches_queued <= 16, "{stats:?}");
    assert!(stats.batches_dropped_queue_full >= 10_000 - 16, "{stats:?}");

    // A node without address: dropped and counted, no task.
    transport.send(9, batch.clone());
    assert_eq!(transport.stats().batches_dropped_unknown_peer, 1);
    // Removing the peer stops its task; further sends are unknown-peer drops.
    assert!(transport.remove_peer(2));
    assert!(!transport.remove_peer(2));
    transport.send(2, batch);
    assert_eq!(transport.stats().batches_dropped_unknown_peer, 2);
    drop(stuck);
}

/// Connects, reads the challenge and answers it as node `id`: whether the server welcomed it.
async fn authenticate(addr: SocketAddr, id: NodeId) -> (TcpStream, bool) {
    let (mut stream, nonce) = raw_connect(addr).await;
    write_frame(&mut stream, &auth().hello(id, &nonce))
        .await
        .unwrap();
    let welcomed = matches!(
        read_frame_limited(&mut stream, MAX_HANDSHAKE_FRAME_BYTES).await,
        Ok(WireMessage::Welcome { .. })
    );
    (stream, welcomed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_authenticated_bounds_hold_apart() {
    let server = Server::start(
        bind(localhost()),
        auth(),
        2,
        ServeConfig {
            max_connections: 2,
            max_handshaking: 2,
            handshake_timeout: Duration::from_millis(300),
            ..ServeConfig::default()
        },
    );
    // Two silent connections fill the handshake bound; a third closes the oldest of them and
    // gets its challenge.
    let (mut s1, _) = raw_connect(server.addr).await;
    let (mut s2, _) = raw_connect(server.addr).await;
    let (mut s3, _) = raw_connect(server.addr).await;
    assert!(closed_without_answer(&mut s1).await);
    assert_eq!(server.stats().connections_evicted, 1);
    // The others are closed when the handshake times out.
    assert!(closed_without_answer(&mut s2).await);
    assert!(closed_without_answer(&mut s3).await);
    wait_until("timed-out handshakes", || {
        let s = server.stats();
        s.handshake_failures == 2 && s.handshake_timeouts == 2 && s.connections_handshaking == 0
    })
    .await;

    // Two authenticated connections fill the authenticated slots; a third proves the secret
    // but is not welcomed.
    let (a1, ok1) = authenticate(server.addr, 1).await;
    let (mut a2, ok2) = authenticate(server.addr, 3).await;
    assert!(ok1 && ok2);
    let (mut a3, ok3) = authenticate(server.addr, 4).await;
    assert!(!ok3);
    assert!(closed_without_answer(&mut a3).await);
    assert_eq!(server.stats().connections_refused, 1);
    // Silent connections beyond the handshake bound never touch the authenticated ones.
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(raw_connect(server.addr).await.0);
    }
    wait_until("evictions", || server.stats().connections_evicted == 5).await;
    assert!(
        still_open(&mut a2).await,
        "an authenticated connection was closed"
    );
    // A closed authenticated connection frees its slot.
    drop(a1);
    let mut welcomed = false;
    let start = Instant::now();
    while !welcomed {
        assert!(start.elapsed() < WAIT, "no slot freed");
        welcomed = authenticate(server.addr, 1).await.1;
    }
    let stats = Arc::clone(&server.stats);
    server.stop().await;
    assert_eq!(
        stats.snapshot().connections_open,
        0,
        "stopping closes every connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_never_lock_out_a_peer() {
    // Silent connections are held long: the handshake timeout does not free anything here.
    let server = Server::start(
        bind(localhost()),
        auth(),
        2,
        ServeConfig {
            handshake_timeout: Duration::from_secs(60),
            ..ServeConfig::default()
        },
    );
    let defaults = ServeConfig::default();
    let flood = defaults.max_connections + defaults.max_handshaking + 200;
    let mut silent = Vec::with_capacity(flood);
    for _ in 0..flood {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    wait_until("the flood accepted", || {
        server.stats().connections_accepted == flood as u64
    })
    .await;
    assert_eq!(
        server.stats().connections_evicted,
        (flood - defaults.max_handshaking) as u64
    );
    wait_until("evicted connections closed", || {
        let s = server.stats();
        s.connections_handshaking == defaults.max_handshaking as u64
            && s.connections_open == defaults.max_handshaking as u64
    })
    .await;

    // More silent connections keep arriving, paced, while a real peer connects.
    let addr = server.addr;
    let (stop_flood, mut flood_stopped) = oneshot::channel::<()>();
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let more = {
        let opened = Arc::clone(&opened);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while flood_stopped.try_recv().is_err() && held.len() < 2000 {
                if let Ok(s) = TcpStream::connect(addr).await {
                    held.push(s);
                    opened.store(held.len(), std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            held
        })
    };
    wait_until("the second flood under way", || {
        opened.load(std::sync::atomic::Ordering::Relaxed) >= 100
    })
    .await;
    let transport = TcpTransport::new(1, auth(), fast_transport()).unwrap();
    transport.set_peer(2, server.addr);
    for i in 1..=3 {
        transport.send(2, vec![envelope(0, append(1, 2, i))]);
        wait_until("a message from the peer", || server.count() == i as usize).await;
    }
    let _ = stop_flood.send(());
    let held = more.await.unwrap();
    assert_eq!(transport.stats().connections_established, 1);
    let s = server.stats();
    assert_eq!(s.handshakes_passed, 1, "{s:?}");
    assert_eq!(s.connections_refused, 0);
    // Every silent connection beyond the bound was closed; the peer's stays.
    wait_until("the second flood's evictions", || {
        let s = server.stats();
        s.connections_open == defaults.max_handshaking as u64 + 1
            && s.connections_evicted == s.connections_accepted - 1 - defaults.max_handshaking as u64
    })
    .await;
    assert!(held.len() >= 100, "the second flood ran");
    drop(transport);
    drop(silent);
    drop(held);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_survive_with_keepalives() {
    let server = Server::start(
        bind(localhost()),
        auth(),
        2,
        ServeConfig {
            idle_timeout: Duration::from_millis(400),
            ..ServeConfig::default()
        },
    );
    let transport = TcpTransport::new(
        1,
        auth(),
        TransportConfig {
            keepalive_interval: Duration::from_millis(100),
            ..fast_transport()
        },
    )
    .unwrap();
    transport.set_peer(2, server.addr);
    transport.send(2, vec![envelope(0, append(1, 2, 1))]);
    wait_until("first message", || server.count() == 1).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    transport.send(2, vec![envelope(0, append(1, 2, 2))]);
    wait_until("second message", || server.count() == 2).await;
    assert_eq!(server.stats().idle_timeouts, 0);
    assert_eq!(transport.stats().connections_established, 1);
    assert!(transport.stats().frames_sent >= 5);
    drop(transport);
    server.stop().await;
}

#[tokio::test]
async fn constructors_refuse_bad_settings() {
    assert!(TcpTransport::new(0, auth(), TransportConfig::default()).is_err());
    assert!(
        TcpTransport::new(
            1,
            auth(),
            TransportConfig {
                queue_capacity: 0,
                ..TransportConfig::default()
            }
        )
        .is_err()
    );
    let deliver: Deliver = Arc::new(|_| {});
    let result = serve_with(
        bind(localhost()),
        auth(),
        0,
        deliver,
        async {},
        ServeConfig::default(),
        Arc::default(),
    )
    .await;
    assert!(matches!(result, Err(WireError::Config(_))));
}

#[test]
fn transport_new_outside_a_runtime_is_an_error() {
    assert!(matches!(
        TcpTransport::new(1, auth(), TransportConfig::default()),
        Err(WireError::Config(_))
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = TcpTransport::with_runtime(rt.handle().clone(), 1, auth(), TransportConfig::default())
        .unwrap();
    t.set_peer(2, "127.0.0.1:9".parse().unwrap());
    t.send(2, vec![envelope(0, append(1, 2, 1))]);
    drop(t);
}
