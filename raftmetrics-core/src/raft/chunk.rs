//! Snapshot messages in bounded pieces.
//!
//! A raft `MsgSnapshot` carries a whole partition (a `codec`-encoded
//! [`crate::store::PartitionSnapshot`]) in its snapshot data. A transport that moves bounded
//! frames splits it with [`split`] and rebuilds it at the destination with a [`Reassembler`];
//! every other message travels whole as [`Frame::Message`].
//!
//! # Format
//!
//! A snapshot whose data is larger than the chunk size becomes `total` [`SnapshotChunk`]s,
//! `seq` `0..total`, each holding at most the chunk size of the data, in order: the data is the
//! concatenation of the chunks' `bytes` by `seq`. Every chunk names its snapshot by
//! `(from, to, group)` and `(snapshot_index, snapshot_term)`. Chunk 0, and only chunk 0, also
//! carries in [`SnapshotChunk::header`] the raft `Message` with its snapshot data emptied,
//! encoded with protobuf's `write_to_bytes`; the receiver parses it and puts the data back,
//! which rebuilds the original message exactly (`==`, and the same protobuf encoding).
//!
//! # Reassembly
//!
//! A [`Reassembler`] keeps at most one partial snapshot per `(from, to, group)` and hands
//! back the envelope once every chunk arrived, in any order; duplicates are ignored. It
//! trusts nothing in a frame: chunks that cannot be part of a valid snapshot are dropped, a
//! completed snapshot whose header does not parse or does not match its chunks is dropped,
//! and the memory held is bounded in bytes and in snapshots (the oldest partial snapshot is
//! evicted first). Nothing here panics on any frame.
//!
//! A resent snapshot with the same index and term continues the partial one: the chunks that
//! arrived the first time count. This relies on the sender producing the same bytes for the
//! same snapshot (the driver's snapshot is a deterministic export of the partition at that
//! index), so a lossy network needs only a few resends to move a large snapshot. A chunk of
//! a different snapshot (another index or term) replaces the partial one: a sender's newer
//! snapshot always wins, and on an ordered transport an older chunk cannot come after it.

use std::collections::{BTreeMap, HashMap};

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use super::transport::{Envelope, NodeId};
use crate::partition::PartitionId;

/// What a chunking transport carries: a whole message, or one piece of a large snapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Message(Envelope),
    SnapshotChunk(SnapshotChunk),
}

/// One piece of a `MsgSnapshot` message (see the module docs for the format).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotChunk {
    pub group: PartitionId,
    /// `message.from` of the snapshot message.
    pub from: NodeId,
    /// `message.to` of the snapshot message.
    pub to: NodeId,
    /// The snapshot's metadata index and term: which snapshot this chunk belongs to.
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    /// This chunk's position, `0..total`.
    pub seq: u32,
    /// Chunks of this snapshot.
    pub total: u32,
    /// Chunk 0 only (empty on the others): the raft `Message` without its snapshot data,
    /// encoded with protobuf's `write_to_bytes`.
    pub header: Vec<u8>,
    /// This chunk's part of the snapshot data; never empty.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for SnapshotChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotChunk")
            .field("group", &self.group)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("snapshot_index", &self.snapshot_index)
            .field("snapshot_term", &self.snapshot_term)
            .field("seq", &self.seq)
            .field("total", &self.total)
            .field("header_len", &self.header.len())
            .field("bytes_len", &self.bytes.len())
            .finish()
    }
}

/// Splits `envelope` into frames. A `MsgSnapshot` whose snapshot data is larger than
/// `max_chunk_bytes` becomes [`Frame::SnapshotChunk`]s of at most `max_chunk_bytes` of data
/// each (at least 1 byte; and, for data beyond `u32::MAX` chunks, larger chunks, so they can
/// be numbered); anything else is one [`Frame::Message`].
pub fn split(envelope: Envelope, max_chunk_bytes: usize) -> Vec<Frame> {
    let message = &envelope.message;
    let data_len = message.get_snapshot().get_data().len();
    if message.get_msg_type() != MessageType::MsgSnapshot || data_len <= max_chunk_bytes {
        return vec![Frame::Message(envelope)];
    }
    let chunk_bytes = max_chunk_bytes
        .max(1)
        .max(data_len.div_ceil(u32::MAX as usize));
    let Ok(total) = u32::try_from(data_len.div_ceil(chunk_bytes)) else {
        return vec![Frame::Message(envelope)];
    };
    let Envelope { group, mut message } = envelope;
    let data = message.mut_snapshot().take_data();
    let header = match message.write_to_bytes() {
        Ok(header) => header,
        Err(error) => {
            tracing::warn!(%error, group, "cannot encode a snapshot header; sending it whole");
            message.mut_snapshot().set_data(data);
            return vec![Frame::Message(Envelope { group, message })];
        }
    };
    let meta = message.get_snapshot().get_metadata();
    let (snapshot_index, snapshot_term) = (meta.index, meta.term);
    let (from, to) = (message.from, message.to);
    let mut header = Some(header);
    (0..total)
        .zip(data.chunks(chunk_bytes))
        .map(|(seq, piece)| {
            Frame::SnapshotChunk(SnapshotChunk {
                group,
                from,
                to,
                snapshot_index,
                snapshot_term,
                seq,
                total,
                header: header.take().unwrap_or_default(),
                bytes: piece.to_vec(),
            })
        })
        .collect()
}

/// `(from, to, group)`: one partial snapshot at most per key.
type Key = (NodeId, NodeId, PartitionId);

/// A snapshot whose chunks are arriving.
struct Partial {
    index: u64,
    term: u64,
    total: u32,
    header: Option<Vec<u8>>,
    pieces: BTreeMap<u32, Vec<u8>>,
    /// Bytes held: pieces and header.
    bytes: usize,
    /// Creation order; the smallest is evicted first.
    age: u64,
}

/// Rebuilds snapshot messages from their chunks, within bounds (see the module docs).
pub struct Reassembler {
    max_bytes: usize,
    max_snapshots: usize,
    partials: HashMap<Key, Partial>,
    /// Sum of `Partial::bytes`.
    bytes: usize,
    next_age: u64,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field("max_bytes", &self.max_bytes)
            .field("max_snapshots", &self.max_snapshots)
            .field("snapshots_in_progress", &self.partials.len())
            .field("bytes_in_progress", &self.bytes)
            .finish()
    }
}

impl Reassembler {
    /// Holds at most `max_bytes_in_progress` bytes of chunks (data and headers) of at most
    /// `max_snapshots_in_progress` partial snapshots. A snapshot larger than the byte bound
    /// is never rebuilt; with `max_snapshots_in_progress == 0` no snapshot is.
    pub fn new(max_bytes_in_progress: usize, max_snapshots_in_progress: usize) -> Self {
        Self {
            max_bytes: max_bytes_in_progress,
            max_snapshots: max_snapshots_in_progress,
            partials: HashMap::new(),
            bytes: 0,
            next_age: 0,
        }
    }

    /// Takes one frame; returns a whole message as is, and a snapshot message once its last
    /// missing chunk arrives. `None` for every other chunk, including dropped ones.
    pub fn accept(&mut self, frame: Frame) -> Option<Envelope> {
        match frame {
            Frame::Message(envelope) => Some(envelope),
            Frame::SnapshotChunk(chunk) => self.accept_chunk(chunk),
        }
    }

    /// Partial snapshots held.
    pub fn snapshots_in_progress(&self) -> usize {
        self.partials.len()
    }

    /// Bytes of chunks held (data and headers).
    pub fn bytes_in_progress(&self) -> usize {
        self.bytes
    }

    /// Whether `chunk` can be part of a snapshot this reassembler could rebuild.
    fn plausible(&self, chunk: &SnapshotChunk, size: usize) -> bool {
        chunk.total > 0
            && chunk.seq < chunk.total
            && !chunk.bytes.is_empty()
            // The header travels on chunk 0 and only there.
            && (chunk.seq == 0) != chunk.header.is_empty()
            && size <= self.max_bytes
            // Every chunk holds at least one byte: more chunks than the byte bound never fit.
            && u64::from(chunk.total) <= u64::try_from(self.max_bytes).unwrap_or(u64::MAX)
            && self.max_snapshots > 0
    }

    fn accept_chunk(&mut self, chunk: SnapshotChunk) -> Option<Envelope> {
        let size = chunk.bytes.len().saturating_add(chunk.header.len());
        if !self.plausible(&chunk, size) {
            return None;
        }
        let key = (chunk.from, chunk.to, chunk.group);
        let same = |p: &Partial| (p.index, p.term) == (chunk.snapshot_index, chunk.snapshot_term);
        match self.partials.get(&key) {
            None => {}
            Some(p) if !same(p) => {
                // A different snapshot from the same sender replaces the partial one.
                self.remove(&key);
            }
            Some(p) if p.total != chunk.total => return None,
            Some(p) if p.pieces.contains_key(&chunk.seq) => return None, // a duplicate
            Some(_) => {}
        }
        if !self.partials.contains_key(&key) {
            while self.partials.len() >= self.max_snapshots {
                if !self.evict_oldest(None) {
                    return None;
                }
            }
            let age = self.next_age;
            self.next_age += 1;
            self.partials.insert(
                key,
                Partial {
                    index: chunk.snapshot_index,
                    term: chunk.snapshot_term,
                    total: chunk.total,
                    header: None,
                    pieces: BTreeMap::new(),
                    bytes: 0,
                    age,
                },
            );
        }
        while self.bytes.saturating_add(size) > self.max_bytes {
            if !self.evict_oldest(Some(key)) {
                // This snapshot alone outgrows the bound: it can never be rebuilt.
                self.remove(&key);
                return None;
            }
        }
        let partial = self.partials.get_mut(&key)?;
        let SnapshotChunk {
            group,
            from,
            to,
            seq,
            header,
            bytes,
            ..
        } = chunk;
        if seq == 0 {
            partial.header = Some(header);
        }
        partial.pieces.insert(seq, bytes);
        partial.bytes += size;
        self.bytes += size;
        if partial.pieces.len() < partial.total as usize {
            return None;
        }
        let partial = self.remove(&key)?;
        rebuild(group, from, to, partial)
    }

    fn remove(&mut self, key: &Key) -> Option<Partial> {
        let partial = self.partials.remove(key)?;
        self.bytes -= partial.bytes;
        Some(partial)
    }

    /// Evicts the oldest partial snapshot other than `keep`; false when there is none.
    fn evict_oldest(&mut self, keep: Option<Key>) -> bool {
        let oldest = self
            .partials
            .iter()
            .filter(|(key, _)| Some(**key) != keep)
            .min_by_key(|(_, p)| p.age)
            .map(|(key, _)| *key);
        match oldest {
            Some(key) => {
                tracing::debug!(
                    from = key.0,
                    to = key.1,
                    group = key.2,
                    "snapshot reassembly: evicting a partial snapshot"
                );
                self.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// The original message of a complete snapshot, if its header is one and matches its chunks.
fn rebuild(group: PartitionId, from: NodeId, to: NodeId, partial: Partial) -> Option<Envelope> {
    let header = partial.header.as_deref()?;
    let Ok(mut message) = Message::parse_from_bytes(header) else {
        tracing::warn!(from, to, group, "snapshot reassembly: unreadable header");
        return None;
    };
    let meta = message.get_snapshot().get_metadata();
    let matches = message.get_msg_type() == MessageType::MsgSnapshot
        && message.from == from
        && message.to == to
        && message.has_snapshot()
        && message.get_snapshot().get_data().is_empty()
        && (meta.index, meta.term) == (partial.index, partial.term);
    if !matches {
        tracing::warn!(
            from,
            to,
            group,
            "snapshot reassembly: the header does not match its chunks"
        );
        return None;
    }
    let header_len = header.len();
    let mut data = Vec::with_capacity(partial.bytes.saturating_sub(header_len));
    for piece in partial.pieces.into_values() {
        data.extend_from_slice(&piece);
    }
    message.mut_snapshot().set_data(data.into());
    Some(Envelope { group, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::SplitMix;
    use raft::eraftpb::{ConfState, Entry, Snapshot, SnapshotMetadata};

    fn snapshot_message(from: NodeId, to: NodeId, index: u64, data: Vec<u8>) -> Envelope {
        let mut conf = ConfState::default();
        conf.set_voters(vec![1, 2, 3]);
        conf.set_learners(vec![4]);
        let mut meta = SnapshotMetadata::default();
        meta.set_conf_state(conf);
        meta.index = index;
        meta.term = 3;
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(meta);
        snapshot.set_data(data.into());
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgSnapshot);
        message.from = from;
        message.to = to;
        message.term = 5;
        message.set_snapshot(snapshot);
        Envelope { group: 9, message }
    }

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = SplitMix(seed);
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }

    fn chunks(frames: Vec<Frame>) -> Vec<SnapshotChunk> {
        frames
            .into_iter()
            .map(|f| match f {
                Frame::SnapshotChunk(c) => c,
                Frame::Message(_) => panic!("expected a chunk"),
            })
            .collect()
    }

    /// Feeds chunks; returns what came out (at most one envelope expected).
    fn feed(r: &mut Reassembler, chunks: impl IntoIterator<Item = SnapshotChunk>) -> Vec<Envelope> {
        chunks
            .into_iter()
            .filter_map(|c| r.accept(Frame::SnapshotChunk(c)))
            .collect()
    }

    fn assert_identical(got: &Envelope, want: &Envelope) {
        assert_eq!(got, want);
        assert_eq!(
            got.message.write_to_bytes().unwrap(),
            want.message.write_to_bytes().unwrap(),
            "the same protobuf encoding"
        );
    }

    #[test]
    fn small_messages_pass_whole() {
        let mut append = Message::default();
        append.set_msg_type(MessageType::MsgAppend);
        append.from = 1;
        append.to = 2;
        append.index = 41;
        let mut entry = Entry::default();
        entry.set_data(vec![7u8; 100_000].into());
        append.mut_entries().push(entry);
        let small_snapshot = snapshot_message(1, 2, 10, data(1000, 1));
        let mut r = Reassembler::new(1 << 20, 4);
        for envelope in [
            Envelope {
                group: 3,
                message: append,
            },
            small_snapshot.clone(),
            Envelope {
                group: 3,
                message: Message::default(),
            },
        ] {
            // Large non-snapshot messages and snapshots within the chunk size stay whole.
            let frames = split(envelope.clone(), 1000);
            assert_eq!(frames, vec![Frame::Message(envelope.clone())]);
            let got = r.accept(frames.into_iter().next().unwrap()).unwrap();
            assert_identical(&got, &envelope);
        }
        assert_eq!(r.snapshots_in_progress(), 0);
    }

    #[test]
    fn snapshot_round_trips_shuffled_and_duplicated() {
        let original = snapshot_message(1, 2, 77, data(100_003, 2));
        let frames = split(original.clone(), 1000);
        assert_eq!(frames.len(), 101);
        let chunks = chunks(frames);
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!((c.seq as usize, c.total), (i, 101));
            assert!(!c.bytes.is_empty() && c.bytes.len() <= 1000);
            assert_eq!(c.header.is_empty(), i != 0);
            assert_eq!((c.group, c.from, c.to), (9, 1, 2));
            assert_eq!((c.snapshot_index, c.snapshot_term), (77, 3));
        }
        let total: usize = chunks.iter().map(|c| c.bytes.len()).sum();
        assert_eq!(total, 100_003);

        // Every chunk twice or three times, shuffled; the last new chunk completes it.
        let mut rng = SplitMix(3);
        let mut delivery: Vec<SnapshotChunk> = chunks
            .iter()
            .flat_map(|c| vec![c.clone(); 2 + rng.below(2) as usize])
            .collect();
        for i in (1..delivery.len()).rev() {
            delivery.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut r = Reassembler::new(1 << 20, 4);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for c in delivery {
            let seq = c.seq;
            let fresh = seen.insert(seq);
            let got = r.accept(Frame::SnapshotChunk(c));
            if seen.len() == 101 && fresh {
                out.push(got.expect("the last missing chunk completes the snapshot"));
            } else if seen.len() < 101 {
                assert!(got.is_none());
                assert!(r.bytes_in_progress() > 0);
            }
        }
        assert_eq!(out.len(), 1);
        assert_identical(&out[0], &original);
        // Duplicates after completion start a partial that holds no more than they do.
        assert!(r.snapshots_in_progress() <= 1);
    }

    #[test]
    fn tiny_and_zero_chunk_sizes() {
        let original = snapshot_message(1, 2, 5, data(300, 4));
        for max in [0, 1, 7, 299] {
            let chunks = chunks(split(original.clone(), max));
            let per = max.max(1);
            assert_eq!(chunks.len(), 300usize.div_ceil(per));
            let mut r = Reassembler::new(1 << 20, 1);
            let out = feed(&mut r, chunks.into_iter().rev());
            assert_eq!(out.len(), 1);
            assert_identical(&out[0], &original);
            assert_eq!((r.bytes_in_progress(), r.snapshots_in_progress()), (0, 0));
        }
    }

    #[test]
    fn a_missing_chunk_gives_nothing() {
        let original = snapshot_message(1, 2, 8, data(10_000, 5));
        let mut chunks = chunks(split(original, 1000));
        chunks.remove(4);
        let mut r = Reassembler::new(1 << 20, 4);
        assert!(feed(&mut r, chunks.clone()).is_empty());
        assert!(feed(&mut r, chunks).is_empty());
        assert_eq!(r.snapshots_in_progress(), 1);
        // Chunk 0 (the header) missing too.
        let mut chunks = self::chunks(split(snapshot_message(3, 2, 8, data(10_000, 5)), 1000));
        chunks.remove(0);
        assert!(feed(&mut r, chunks).is_empty());
        assert_eq!(r.snapshots_in_progress(), 2);
    }

    #[test]
    fn a_resent_snapshot_completes_the_partial_one() {
        let original = snapshot_message(1, 2, 8, data(10_000, 6));
        let chunks = chunks(split(original.clone(), 1000));
        let mut r = Reassembler::new(1 << 20, 4);
        // First send: the even chunks get through; resend: the odd ones.
        let even = chunks.iter().filter(|c| c.seq % 2 == 0).cloned();
        assert!(feed(&mut r, even).is_empty());
        let out = feed(&mut r, chunks.iter().filter(|c| c.seq % 2 == 1).cloned());
        assert_eq!(out.len(), 1);
        assert_identical(&out[0], &original);
    }

    #[test]
    fn a_newer_snapshot_replaces_the_partial_one() {
        let older = snapshot_message(1, 2, 10, data(10_000, 7));
        let newer = snapshot_message(1, 2, 11, data(12_000, 8));
        let old_chunks = chunks(split(older, 1000));
        let new_chunks = chunks(split(newer.clone(), 1000));
        let mut r = Reassembler::new(1 << 20, 4);
        assert!(feed(&mut r, old_chunks[..5].to_vec()).is_empty());
        let held = r.bytes_in_progress();
        // One chunk of the newer snapshot drops the older partial snapshot.
        assert!(feed(&mut r, new_chunks[3..4].to_vec()).is_empty());
        assert!(r.bytes_in_progress() < held);
        assert_eq!(r.snapshots_in_progress(), 1);
        // The rest of the older one (a new partial snapshot again) completes nothing.
        assert!(feed(&mut r, old_chunks[5..].to_vec()).is_empty());
        // The newer one, in full.
        let out = feed(&mut r, new_chunks);
        assert_eq!(out.len(), 1);
        assert_identical(&out[0], &newer);
        assert_eq!(r.snapshots_in_progress(), 0);
        // Different senders, destinations or groups do not interfere.
        let a = snapshot_message(1, 2, 10, data(5_000, 9));
        let b = snapshot_message(3, 2, 12, data(5_000, 10));
        let mut c = snapshot_message(1, 2, 12, data(5_000, 11));
        c.group = 10;
        let mut interleaved: Vec<SnapshotChunk> = Vec::new();
        let (ca, cb, cc) = (
            chunks(split(a.clone(), 1000)),
            chunks(split(b.clone(), 1000)),
            chunks(split(c.clone(), 1000)),
        );
        for i in 0..5 {
            interleaved.extend([ca[i].clone(), cb[i].clone(), cc[i].clone()]);
        }
        assert_eq!(feed(&mut r, interleaved), vec![a, b, c]);
    }

    #[test]
    fn hostile_chunks_are_dropped() {
        let original = snapshot_message(1, 2, 8, data(4_000, 12));
        let good = chunks(split(original.clone(), 1000));
        let mut r = Reassembler::new(1 << 20, 4);
        let mut bad = Vec::new();
        let mut with = |f: &dyn Fn(&mut SnapshotChunk)| {
            let mut c = good[1].clone();
            f(&mut c);
            bad.push(c);
        };
        with(&|c| c.seq = c.total); // seq out of range
        with(&|c| c.seq = u32::MAX);
        with(&|c| c.total = 0); // total 0
        with(&|c| {
            c.seq = 0;
            c.total = 0;
        });
        with(&|c| c.total = u32::MAX); // huge claimed totals
        with(&|c| c.total = (1 << 20) + 1);
        with(&|c| c.bytes.clear()); // an empty chunk
        with(&|c| c.header = vec![1, 2, 3]); // a header off chunk 0
        with(&|c| c.bytes = vec![0; (1 << 20) + 1]); // larger than the bound
        let mut headless = good[0].clone();
        headless.header.clear(); // chunk 0 without its header
        bad.push(headless);
        assert!(feed(&mut r, bad).is_empty());
        assert_eq!((r.bytes_in_progress(), r.snapshots_in_progress()), (0, 0));

        // Mismatched totals: the chunk that disagrees with the partial snapshot is dropped.
        assert!(feed(&mut r, good[..2].to_vec()).is_empty());
        let mut liar = good[2].clone();
        liar.total = 5;
        assert!(feed(&mut r, [liar]).is_empty());
        let mut liar = good[3].clone();
        liar.total = 3;
        liar.seq = 2;
        assert!(feed(&mut r, [liar]).is_empty());
        let out = feed(&mut r, good[2..].to_vec());
        assert_eq!(out.len(), 1);
        assert_identical(&out[0], &original);
    }

    #[test]
    fn hostile_headers_complete_to_nothing() {
        let original = snapshot_message(1, 2, 8, data(3_000, 13));
        let good = chunks(split(original.clone(), 1000));
        let with_header = |header: Vec<u8>| {
            let mut chunks = good.clone();
            chunks[0].header = header;
            let mut r = Reassembler::new(1 << 20, 4);
            let out = feed(&mut r, chunks);
            assert_eq!((r.bytes_in_progress(), r.snapshots_in_progress()), (0, 0));
            out
        };
        let reencode = |f: &dyn Fn(&mut Message)| {
            let mut m = original.message.clone();
            m.mut_snapshot().clear_data();
            f(&mut m);
            m.write_to_bytes().unwrap()
        };
        assert!(with_header(vec![0xff; 40]).is_empty()); // not protobuf
        assert!(with_header(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_empty()); // huge length
        assert!(with_header(reencode(&|m| m.set_msg_type(MessageType::MsgAppend))).is_empty());
        assert!(with_header(reencode(&|m| m.from = 3)).is_empty());
        assert!(with_header(reencode(&|m| m.to = 3)).is_empty());
        assert!(with_header(reencode(&|m| m.mut_snapshot().mut_metadata().index = 9)).is_empty());
        assert!(with_header(reencode(&|m| m.mut_snapshot().mut_metadata().term = 9)).is_empty());
        assert!(with_header(reencode(&|m| m.mut_snapshot().set_data(vec![1].into()))).is_empty());
        assert!(with_header(reencode(&|m| m.clear_snapshot())).is_empty());
        // And the untouched header works.
        let out = with_header(reencode(&|_| {}));
        assert_eq!(out, vec![original]);
    }

    #[test]
    fn the_snapshot_count_bound_evicts_the_oldest() {
        let snapshots: Vec<Envelope> = (1..=3)
            .map(|from| snapshot_message(from, 9, 20, data(5_000, from)))
            .collect();
        let split_all: Vec<Vec<SnapshotChunk>> = snapshots
            .iter()
            .map(|s| chunks(split(s.clone(), 1000)))
            .collect();
        let mut r = Reassembler::new(1 << 20, 2);
        for chunks in &split_all {
            assert!(feed(&mut r, chunks[..4].to_vec()).is_empty());
            assert!(r.snapshots_in_progress() <= 2);
        }
        // The first (oldest) was evicted: its last chunk starts a new partial snapshot, which
        // evicts the second; the third completes.
        assert!(feed(&mut r, split_all[0][4..].to_vec()).is_empty());
        assert_eq!(
            feed(&mut r, split_all[2][4..].to_vec()),
            vec![snapshots[2].clone()]
        );
        assert!(feed(&mut r, split_all[1][4..].to_vec()).is_empty());
        // No snapshot at all with a count bound of zero.
        let mut none = Reassembler::new(1 << 20, 0);
        assert!(feed(&mut none, split_all[0].clone()).is_empty());
        assert_eq!(none.bytes_in_progress(), 0);
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_and_refuses_oversized_snapshots() {
        let a = snapshot_message(1, 9, 20, data(6_000, 14));
        let b = snapshot_message(2, 9, 20, data(6_000, 15));
        let (ca, cb) = (chunks(split(a, 1000)), chunks(split(b.clone(), 1000)));
        let header = ca[0].header.len();
        // Room for one of them (and a bit more), not both.
        let mut r = Reassembler::new(6_000 + header + 3_000, 8);
        assert!(feed(&mut r, ca[..5].to_vec()).is_empty());
        assert!(feed(&mut r, cb[..5].to_vec()).is_empty());
        assert_eq!(r.snapshots_in_progress(), 1, "a was evicted for b");
        assert_eq!(feed(&mut r, cb[5..].to_vec()), vec![b]);
        assert!(feed(&mut r, ca[5..].to_vec()).is_empty());

        // A snapshot larger than the bound is never rebuilt and never holds more than it.
        let big = snapshot_message(3, 9, 20, data(20_000, 16));
        let mut r = Reassembler::new(10_000, 8);
        for c in chunks(split(big, 1000)) {
            assert!(r.accept(Frame::SnapshotChunk(c)).is_none());
            assert!(r.bytes_in_progress() <= 10_000);
        }
    }

    #[test]
    fn random_frames_never_panic_and_stay_bounded() {
        let mut rng = SplitMix(17);
        let real = chunks(split(snapshot_message(1, 2, 3, data(2_000, 18)), 100));
        let mut r = Reassembler::new(5_000, 3);
        for _ in 0..20_000 {
            let mut c = real[rng.below(real.len() as u64) as usize].clone();
            match rng.below(8) {
                0 => c.seq = rng.below(40) as u32,
                1 => c.total = rng.below(40) as u32,
                2 => c.from = rng.below(5),
                3 => c.snapshot_index = rng.below(4),
                4 => c.bytes = data(rng.below(300) as usize, rng.next_u64()),
                5 => c.header = data(rng.below(60) as usize, rng.next_u64()),
                6 => c.group = rng.below(3) as u32,
                _ => {}
            }
            if let Some(e) = r.accept(Frame::SnapshotChunk(c)) {
                assert_eq!(e.message.get_msg_type(), MessageType::MsgSnapshot);
            }
            assert!(r.bytes_in_progress() <= 5_000);
            assert!(r.snapshots_in_progress() <= 3);
            let held: usize = r.partials.values().map(|p| p.bytes).sum();
            assert_eq!(held, r.bytes_in_progress());
        }
    }
}
