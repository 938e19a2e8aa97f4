//! The node-to-node wire format: length-prefixed frames carrying one [`WireMessage`] each.
//!
//! # Frame layout
//!
//! ```text
//! offset  size  field
//! 0       4     magic: the ASCII bytes "RMWF" (RaftMetrics Wire Frame)
//! 4       1     protocol version: PROTOCOL_VERSION (2)
//! 5       4     body length in bytes, u32 big-endian (at most the reader's limit)
//! 9       n     body: raftmetrics_core::codec encoding (bincode 2, standard config) of a
//!               WireMessage
//! ```
//!
//! A reader checks the magic, the version and the length against its limit before it reads
//! (or allocates for) the body, and the body buffer grows only with bytes actually received.
//! Any violation is an error after which the connection is closed: there is no attempt to
//! resynchronise a stream. Frames read before the handshake completes are limited to
//! [`MAX_HANDSHAKE_FRAME_BYTES`]; afterwards to [`MAX_FRAME_BYTES`].
//!
//! # Handshake (challenge-response)
//!
//! 1. The accepting node sends [`WireMessage::Challenge`] with a fresh random 32-byte nonce
//!    (from the OS, see [`random_nonce`]).
//! 2. The connecting node answers [`WireMessage::Hello`] with its cluster id, its node id and
//!    `proof = HMAC-SHA256(secret, "raftmetrics-wire-hello-v1\0" || u32be(len(cluster_id)) ||
//!    cluster_id || u64be(node_id) || nonce)` (see [`ClusterAuth::proof`]).
//! 3. The acceptor recomputes the proof with its own secret and cluster id and compares in
//!    constant time ([`ClusterAuth::verify`]). On success it answers [`WireMessage::Welcome`]
//!    with its own node id; on failure it closes the connection without answering.
//! 4. The connector checks that the welcome names the node it meant to reach, then sends
//!    [`WireMessage::Raft`] frames. The acceptor never sends anything after the welcome.
//!
//! Only the connecting side proves itself: each direction of raft traffic has its own
//! connection, opened by the sender, so every receiver has authenticated its sender. The
//! channel is not encrypted nor integrity-protected after the handshake (no TLS); run the
//! cluster on a trusted network.
//!
//! # Compatibility
//!
//! bincode encodes an enum variant by its index, so variants of [`WireMessage`] are only ever
//! appended, never reordered or removed; an incompatible change bumps [`PROTOCOL_VERSION`].
//! Version 2: node-to-node writes carry their records in the dictionary encoding of
//! `raftmetrics_core::series::records_codec` (each series once).

use std::fs::File;
use std::io::{self, Read};
use std::time::Duration;

use raftmetrics_core::codec;
use raftmetrics_core::raft::{NodeId, SnapshotChunk};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"RMWF";

/// Version of the protocol spoken in the frames; a frame of another version is refused.
pub const PROTOCOL_VERSION: u8 = 2;

/// Length of the frame header: magic, version, body length.
pub const HEADER_LEN: usize = 9;

/// Largest body accepted from an authenticated peer: the core codec's own limit (256 MiB).
///
/// Raft snapshots travel as single raft messages whose data is one codec-encoded partition
/// snapshot (bounded by [`codec::MAX_ENCODED_BYTES`]); a smaller frame limit would make
/// partitions above it impossible to replicate to a new or lagging follower. The buffer for a
/// body grows with the bytes actually received, never to the claimed length up front.
pub const MAX_FRAME_BYTES: usize = codec::MAX_ENCODED_BYTES;

/// Largest body accepted before the handshake has completed (challenge, hello, welcome).
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 4 * 1024;

/// Longest cluster id [`ClusterAuth`] accepts (so a hello always fits in a handshake frame).
pub const MAX_CLUSTER_ID_BYTES: usize = 256;

/// Domain separation of the handshake proof.
const PROOF_DOMAIN: &[u8] = b"raftmetrics-wire-hello-v1\0";

/// Initial capacity of a body buffer; it grows as bytes arrive.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// One message on the node-to-node wire.
///
/// Variants are appended, never reordered (bincode encodes the variant index). Internal RPC
/// (write forwarding to partition leaders, compute requests, worker registration) travels as
/// `Call`/`Reply` pairs whose bodies are the encoded `crate::rpc` types, matched by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireMessage {
    /// Acceptor → connector, first frame of a connection: the nonce to prove knowledge of the
    /// cluster secret against.
    Challenge {
        /// Fresh random bytes, never reused.
        nonce: [u8; 32],
    },
    /// Connector → acceptor: who is connecting, and the proof (see [`ClusterAuth::proof`]).
    Hello {
        /// Cluster the connector belongs to; must equal the acceptor's.
        cluster_id: String,
        /// The connector's node id (never 0).
        node_id: NodeId,
        /// HMAC-SHA256 of the secret over cluster id, node id and the challenge nonce.
        proof: [u8; 32],
    },
    /// Acceptor → connector: the hello was accepted; `node_id` is the acceptor's id.
    Welcome {
        /// The acceptor's node id; the connector closes if it is not the node it dialled.
        node_id: NodeId,
    },
    /// Raft messages for node `to`, each with its group (partition) and its protobuf encoding
    /// (`raft::eraftpb::Message`). An empty list is a keepalive.
    Raft {
        /// Destination node; a receiver drops frames meant for another node.
        to: NodeId,
        /// `(group, protobuf-encoded raft message)` pairs.
        messages: Vec<(u32, Vec<u8>)>,
    },
    /// An internal RPC request (see `crate::rpc`); answered by a `Reply` with the same id
    /// on the same connection.
    Call {
        id: u64,
        /// Encoded `rpc::Request`.
        body: Vec<u8>,
    },
    /// The answer to the `Call` with the same id.
    Reply {
        id: u64,
        /// Encoded `rpc::Response`.
        body: Vec<u8>,
    },
    /// One piece of a large raft snapshot message (`raftmetrics_core::raft::chunk`); the
    /// receiver reassembles the message. `chunk.to` is the destination node.
    SnapshotChunk(SnapshotChunk),
}

impl WireMessage {
    /// Short name of the variant, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            WireMessage::Challenge { .. } => "challenge",
            WireMessage::Hello { .. } => "hello",
            WireMessage::Welcome { .. } => "welcome",
            WireMessage::Raft { .. } => "raft",
            WireMessage::Call { .. } => "call",
            WireMessage::Reply { .. } => "reply",
            WireMessage::SnapshotChunk(_) => "snapshot chunk",
        }
    }
}

/// Everything that can go wrong on the node-to-node wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed (including a frame truncated by the peer closing).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection cleanly, between two frames.
    #[error("connection closed by peer")]
    Closed,
    /// The frame did not start with [`MAGIC`].
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// The frame is of another protocol version.
    #[error("unsupported protocol version {0} (expected {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// The frame (claims to) exceed the size limit.
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Claimed or encoded body length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The body is not a valid encoding of a [`WireMessage`].
    #[error("malformed frame body: {0}")]
    Malformed(String),
    /// A message arrived that the protocol does not allow at this point.
    #[error("unexpected {got} message while expecting {expected}")]
    Unexpected {
        /// What the protocol expected.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// The peer failed (or refused) the handshake.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// An operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The OS random number generator could not be read.
    #[error("cannot read the OS random number generator: {0}")]
    Rng(io::Error),
    /// A constructor was given unusable settings.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Encodes `msg` as one complete frame (header and body).
///
/// Fails when the body would exceed [`MAX_FRAME_BYTES`].
pub fn encode_frame(msg: &WireMessage) -> Result<Vec<u8>, WireError> {
    let body = codec::encode(msg).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(WireError::FrameTooLarge {
            len: body.len() as u64,
            max: MAX_FRAME_BYTES,
        });
    }
    let len = u32::try_from(body.len()).map_err(|_| WireError::FrameTooLarge {
        len: body.len() as u64,
        max: MAX_FRAME_BYTES,
    })?;
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Writes `msg` as one frame and flushes the writer.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    msg: &WireMessage,
) -> Result<(), WireError> {
    let frame = encode_frame(msg)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame whose body is at most [`MAX_FRAME_BYTES`].
///
/// Returns [`WireError::Closed`] when the stream ends cleanly before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<WireMessage, WireError> {
    read_frame_limited(reader, MAX_FRAME_BYTES).await
}

/// Reads one frame whose body is at most `max_body` bytes (capped at [`MAX_FRAME_BYTES`]).
///
/// The header is validated (magic, version, length) before any byte of the body is read; the
/// body buffer grows with the bytes received, so a lying length prefix costs no memory.
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_body: usize,
) -> Result<WireMessage, WireError> {
    let max_body = max_body.min(MAX_FRAME_BYTES);
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            return Err(if filled == 0 {
                WireError::Closed
            } else {
                WireError::Io(io::ErrorKind::UnexpectedEof.into())
            });
        }
        filled += n;
    }
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if header[4] != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion(header[4]));
    }
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > max_body {
        return Err(WireError::FrameTooLarge {
            len: u64::from(len),
            max: max_body,
        });
    }
    let mut body = Vec::with_capacity(len_usize.min(INITIAL_BODY_CAPACITY));
    let read = (&mut *reader)
        .take(u64::from(len))
        .read_to_end(&mut body)
        .await?;
    if read != len_usize {
        return Err(WireError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    codec::decode(&body).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Proof of cluster membership: the cluster id and the shared secret of its nodes.
///
/// `Debug` does not show the secret.
#[derive(Clone)]
pub struct ClusterAuth {
    cluster_id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAuth")
            .field("cluster_id", &self.cluster_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ClusterAuth {
    /// Creates the credentials of a cluster. The secret must not be empty and the cluster id
    /// must be 1 to [`MAX_CLUSTER_ID_BYTES`] bytes.
    pub fn new(cluster_id: impl Into<String>, secret: impl AsRef<[u8]>) -> Result<Self, WireError> {
        let cluster_id = cluster_id.into();
        let secret = secret.as_ref().to_vec();
        if cluster_id.is_empty() || cluster_id.len() > MAX_CLUSTER_ID_BYTES {
            return Err(WireError::Config(format!(
                "cluster id must be 1 to {MAX_CLUSTER_ID_BYTES} bytes, got {}",
                cluster_id.len()
            )));
        }
        if secret.is_empty() {
            return Err(WireError::Config("cluster secret must not be empty".into()));
        }
        Ok(ClusterAuth { cluster_id, secret })
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The proof a node `node_id` of this cluster sends in answer to `nonce`:
    /// `HMAC-SHA256(secret, "raftmetrics-wire-hello-v1\0" || u32be(len(cluster_id)) ||
    /// cluster_id || u64be(node_id) || nonce)`.
    pub fn proof(&self, node_id: NodeId, nonce: &[u8; 32]) -> [u8; 32] {
        proof_for(&self.secret, &self.cluster_id, node_id, nonce)
    }

    /// Whether a hello (`cluster_id`, `node_id`, `proof`) answers `nonce` for this cluster.
    /// The proof is compared in constant time.
    pub fn verify(
        &self,
        cluster_id: &str,
        node_id: NodeId,
        nonce: &[u8; 32],
        proof: &[u8; 32],
    ) -> bool {
        let same_cluster = self.cluster_id.as_bytes().ct_eq(cluster_id.as_bytes());
        // Computed over the claimed cluster id so the time taken does not depend on whether
        // it matched; a different cluster id fails `same_cluster` anyway.
        let expected = proof_for(&self.secret, cluster_id, node_id, nonce);
        let proof_ok = expected.ct_eq(proof);
        bool::from(same_cluster & proof_ok) && node_id != 0
    }

    /// The hello this node (`node_id`) sends in answer to `nonce`.
    pub fn hello(&self, node_id: NodeId, nonce: &[u8; 32]) -> WireMessage {
        WireMessage::Hello {
            cluster_id: self.cluster_id.clone(),
            node_id,
            proof: self.proof(node_id, nonce),
        }
    }
}

fn proof_for(secret: &[u8], cluster_id: &str, node_id: NodeId, nonce: &[u8; 32]) -> [u8; 32] {
    let id_len = u32::try_from(cluster_id.len()).unwrap_or(u32::MAX);
    hmac_sha256(
        secret,
        &[
            PROOF_DOMAIN,
            &id_len.to_be_bytes(),
            cluster_id.as_bytes(),
            &node_id.to_be_bytes(),
            nonce,
        ],
    )
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for ((i, o), k) in ipad.iter_mut().zip(opad.iter_mut()).zip(block_key.iter()) {
        *i ^= k;
        *o ^= k;
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner);
    outer.finalize().into()
}

/// 32 bytes from the OS random number generator (`/dev/urandom`, which never blocks once the
/// kernel's pool is initialised). No user-space fallback: a predictable nonce would let a
/// recorded hello be replayed.
pub fn random_nonce() -> Result<[u8; 32], WireError> {
    let mut nonce = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut nonce))
        .map_err(WireError::Rng)?;
    Ok(nonce)
}

/// Runs `fut` with a deadline; `what` names the operation in the error.
pub(crate) async fn with_timeout<T>(
    what: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, WireError>>,
) -> Result<T, WireError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(WireError::Timeout(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<WireMessage> {
        vec![
            WireMessage::Challenge { nonce: [7; 32] },
            WireMessage::Hello {
                cluster_id: "prod-eu".into(),
                node_id: 3,
                proof: [9; 32],
            },
            WireMessage::Welcome { node_id: 2 },
            WireMessage::Raft {
                to: 2,
                messages: vec![(0, vec![]), (17, vec![1, 2, 3]), (65_535, vec![0; 1000])],
            },
            WireMessage::Raft {
                to: 5,
                messages: vec![],
            },
        ]
    }

    fn header(magic: [u8; 4], version: u8, len: u32) -> Vec<u8> {
        let mut h = magic.to_vec();
        h.push(version);
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    #[tokio::test]
    async fn frame_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let msgs = samples();
        let sent = msgs.clone();
        let writer = tokio::spawn(async move {
            for m in &sent {
                write_frame(&mut a, m).await.unwrap();
            }
            // Dropping `a` ends the stream cleanly.
        });
        for m in &msgs {
            assert_eq!(&read_frame(&mut b).await.unwrap(), m);
        }
        assert!(matches!(read_frame(&mut b).await, Err(WireError::Closed)));
        writer.await.unwrap();

        // The layout is exactly header + codec body.
        let frame = encode_frame(&msgs[2]).unwrap();
        let body = codec::encode(&msgs[2]).unwrap();
        assert_eq!(frame[..4], *b"RMWF");
        assert_eq!(frame[4], PROTOCOL_VERSION);
        assert_eq!(frame[5..9], (body.len() as u32).to_be_bytes());
        assert_eq!(frame[9..], body[..]);
    }

    #[tokio::test]
    async fn oversize_length_prefix_is_refused_without_reading_the_body() {
        for (len, limit) in [
            (u32::MAX, MAX_FRAME_BYTES),
            (MAX_FRAME_BYTES as u32 + 1, MAX_FRAME_BYTES),
            (
                MAX_HANDSHAKE_FRAME_BYTES as u32 + 1,
                MAX_HANDSHAKE_FRAME_BYTES,
            ),
        ] {
            // Only the header is ever written and the writer stays open: a reader that tried
            // to read (or wait for) the body would hang, and one that allocated the claimed
            // length up front would need up to 4 GiB.
            let (mut a, mut b) = tokio::io::duplex(64);
            a.write_all(&header(MAGIC, PROTOCOL_VERSION, len))
                .await
                .unwrap();
            let result =
                tokio::time::timeout(Duration::from_secs(5), read_frame_limited(&mut b, limit))
                    .await
                    .expect("refused at once");
            match result {
                Err(WireError::FrameTooLarge { len: got, max }) => {
                    assert_eq!(got, u64::from(len));
                    assert_eq!(max, limit);
                }
                other => panic!("expected FrameTooLarge, got {other:?}"),
            }
            drop(a);
        }
    }

    #[tokio::test]
    async fn wrong_magic_or_version_is_refused() {
        let good = encode_frame(&WireMessage::Welcome { node_id: 1 }).unwrap();

        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        let err = read_frame(&mut &bad_magic[..]).await.unwrap_err();
        assert!(
            matches!(err, WireError::BadMagic(m) if m == *b"XMWF"),
            "{err:?}"
        );

        let mut bad_version = good.clone();
        bad_version[4] = PROTOCOL_VERSION + 1;
        let err = read_frame(&mut &bad_version[..]).await.unwrap_err();
        assert!(
            matches!(err, WireError::UnsupportedVersion(v) if v == PROTOCOL_VERSION + 1),
            "{err:?}"
        );

        // An HTTP request sent to the wire port is refused at the magic.
        let err = read_frame(&mut &b"GET / HTTP/1.1\r\n\r\n"[..])
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::BadMagic(_)), "{err:?}");

        assert!(read_frame(&mut &good[..]).await.is_ok());
    }

    #[tokio::test]
    async fn truncated_and_malformed_frames_are_errors() {
        let good = encode_frame(&WireMessage::Welcome { node_id: 1 }).unwrap();
        for cut in [1, HEADER_LEN - 1, HEADER_LEN, good.len() - 1] {
            let err = read_frame(&mut &good[..cut]).await.unwrap_err();
            assert!(
                matches!(&err, WireError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
                "cut at {cut}: {err:?}"
            );
        }

        // Trailing bytes inside the body.
        let mut body = codec::encode(&WireMessage::Welcome { node_id: 1 }).unwrap();
        body.push(0);
        let mut frame = header(MAGIC, PROTOCOL_VERSION, body.len() as u32);
        frame.extend_from_slice(&body);
        let err = read_frame(&mut &frame[..]).await.unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)), "{err:?}");

        // Unknown variant index.
        let mut frame = header(MAGIC, PROTOCOL_VERSION, 1);
        frame.push(200);
        let err = read_frame(&mut &frame[..]).await.unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)), "{err:?}");

        // A vector length far beyond the body is refused, not allocated.
        let mut body = vec![3u8, 2]; // Raft { to: 2, ..
        body.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0x7f]); // messages: 2^31 - 1 entries
        let mut frame = header(MAGIC, PROTOCOL_VERSION, body.len() as u32);
        frame.extend_from_slice(&body);
        let err = read_frame(&mut &frame[..]).await.unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 1.
        let mac = hmac_sha256(&[0x0b; 20], &[b"Hi There"]);
        assert_eq!(
            hex(&mac),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 2, the message split in parts.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn proof_binds_secret_cluster_node_and_nonce() {
        let auth = ClusterAuth::new("c1", b"secret").unwrap();
        let nonce = [1u8; 32];
        let proof = auth.proof(4, &nonce);
        assert!(auth.verify("c1", 4, &nonce, &proof));
        assert!(!auth.verify("c2", 4, &nonce, &proof));
        assert!(!auth.verify("c1", 5, &nonce, &proof));
        assert!(!auth.verify("c1", 4, &[2u8; 32], &proof));
        let other = ClusterAuth::new("c1", b"secreT").unwrap();
        assert!(!other.verify("c1", 4, &nonce, &proof));
        assert_ne!(other.proof(4, &nonce), proof);
        // Node 0 is never a valid identity.
        assert!(!auth.verify("c1", 0, &nonce, &auth.proof(0, &nonce)));
        // Ambiguous concatenations do not collide: the cluster id is length-prefixed.
        let a = ClusterAuth::new("ab", b"s").unwrap();
        let b = ClusterAuth::new("a", b"s").unwrap();
        assert_ne!(a.proof(1, &nonce), b.proof(1, &nonce));

        assert!(ClusterAuth::new("", b"s").is_err());
        assert!(ClusterAuth::new("c", b"").is_err());
        assert!(ClusterAuth::new("x".repeat(MAX_CLUSTER_ID_BYTES + 1), b"s").is_err());
        assert!(!format!("{auth:?}").contains("secret\""));
        assert!(format!("{auth:?}").contains("redacted"));
    }

    #[test]
    fn a_hello_with_the_longest_cluster_id_fits_a_handshake_frame() {
        let auth = ClusterAuth::new("x".repeat(MAX_CLUSTER_ID_BYTES), b"s").unwrap();
        let frame = encode_frame(&auth.hello(u64::MAX, &[0; 32])).unwrap();
        assert!(frame.len() - HEADER_LEN <= MAX_HANDSHAKE_FRAME_BYTES);
    }

    #[test]
    fn nonces_are_random() {
        let a = random_nonce().unwrap();
        let b = random_nonce().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0; 32]);
    }
}
