//! Durable Raft log storage of a node, built on TiKV's `raft-engine`.
//!
//! One [`RaftLog`] per node owns one raft-engine instance (one directory, one append-only
//! log shared by every partition replica of the node). Each Raft group (replica) gets a
//! [`GroupStorage`], the raft-rs [`raft::Storage`] of that group.
//!
//! # What is stored, per group (raft-engine "region" = group id)
//!
//! * the log entries (`LogBatch::add_entries`),
//! * `hs`: the [`HardState`], `cs`: the [`ConfState`],
//! * `tr`: the truncated point as a [`SnapshotMetadata`] with only `index` and `term` set:
//!   every entry up to `index` has been discarded (compacted, or replaced by a snapshot of
//!   the state machine), and `term` is kept so that `term(index)` still answers. The first
//!   available entry is `index + 1`.
//!
//! # Writing: stage, then one write for many groups
//!
//! A replica driver stages the changes of a raft-rs `Ready` into a [`WriteBatch`]
//! (`stage_snapshot_metadata`, `stage_append`, `stage_hard_state`, `stage_conf_state`,
//! `stage_commit_index`), possibly for many groups, then calls [`RaftLog::write`] once
//! (group commit: one append and at most one fsync for all of them).
//!
//! # Caching and durability
//!
//! Each group keeps in memory its metadata (hard state, conf state, truncated point, last
//! index) and a bounded cache of its most recent entries; older entries are read from
//! raft-engine (whose index is in memory; the data comes from the log files). Staging does
//! not touch that cache: staged changes only live in the [`WriteBatch`] (which validates
//! them against the group's state as projected by everything staged before). `write`
//! takes the cache lock of every group in the batch (in group-id order), re-validates the
//! staged changes against the current state, writes the batch to raft-engine (fsync if
//! `sync`), and only then applies the changes to the caches before releasing the locks.
//! So raft-rs, which reads through [`raft::Storage`], never sees a change that is not
//! written (and, with `sync = true`, durable), and never sees the engine and the cache
//! disagree; until the write, raft-rs still holds the staged entries in its own unstable
//! log. A failed write changes nothing that readers can see.
//!
//! Rules for callers: at most one `WriteBatch` in flight per group (the replica driver
//! owns its group's writes), `write` with `sync = Ready::must_sync()`, and
//! [`GroupStorage::compact`] only up to the applied index, and only up to what the store
//! will not lose in a crash ([`crate::store::Store::durable_index`]).

use std::cmp;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command, LogBatch, MessageExt, ReadableSize, RecoveryMode};

use crate::error::{Error, Result};

type Engine = raft_engine::Engine;

/// Key of a group's [`HardState`].
const KEY_HARD_STATE: &[u8] = b"hs";
/// Key of a group's [`ConfState`].
const KEY_CONF_STATE: &[u8] = b"cs";
/// Key of a group's truncated point (a [`SnapshotMetadata`] with `index` and `term`).
const KEY_TRUNCATED: &[u8] = b"tr";

/// Bytes of recent entries each group keeps in memory. Raft reads the tail of the log
/// (unapplied entries, entries for followers that keep up) far more than the rest; older
/// entries are read from the log files.
const DEFAULT_ENTRY_CACHE_BYTES: usize = 4 << 20;

/// Size at which raft-engine starts a new log file ([`RaftLog::open`]).
pub const LOG_FILE_BYTES: u64 = 4 << 20;

/// Size of a node's log files past which raft-engine deletes those it no longer needs
/// ([`RaftLog::open`]).
pub const PURGE_THRESHOLD_BYTES: u64 = 16 << 20;

/// Builds a snapshot for raft-rs when a follower is too far behind (see
/// [`GroupStorage::set_snapshot_provider`]). Receives the group's storage (so that it can
/// call [`GroupStorage::snapshot_metadata`] without capturing, and leaking, a clone of it)
/// and raft-rs's `request_index`: the snapshot's index must be at least that.
pub type SnapshotProvider = Arc<dyn Fn(&GroupStorage, u64) -> Result<Snapshot> + Send + Sync>;

/// Tells raft-engine how to find the index of a raft-rs entry.
struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn mutex_lock<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A [`SnapshotMetadata`] with only `index` and `term` (how the truncated point is stored).
fn truncated_point(index: u64, term: u64) -> SnapshotMetadata {
    SnapshotMetadata {
        index,
        term,
        ..Default::default()
    }
}

fn removed_error(group_id: u64) -> Error {
    Error::NotFound(format!("raft group {group_id} (removed from this node)"))
}

fn entry_size(e: &Entry) -> u64 {
    u64::from(e.compute_size())
}

/// One node's Raft log: a raft-engine instance shared by all the Raft groups of the node.
///
/// Cheap to clone; all clones share the engine. The engine (and its directory lock) is
/// released when the last `RaftLog` clone, [`GroupStorage`] and [`WriteBatch`] holding
/// staged changes are dropped.
#[derive(Clone)]
pub struct RaftLog {
    inner: Arc<LogInner>,
}

struct LogInner {
    engine: Arc<Engine>,
    /// Loaded groups. Every `group(id)` call returns a handle on the same cache.
    groups: Mutex<HashMap<u64, Arc<GroupShared>>>,
    entry_cache_bytes: usize,
}

impl fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftLog")
            .field("dir", &self.inner.engine.path())
            .finish_non_exhaustive()
    }
}

impl RaftLog {
    /// Opens (creating it if needed) the Raft log in `dir`, replaying its files.
    ///
    /// Configuration choices (raft-engine defaults otherwise):
    /// * `target_file_size` [`LOG_FILE_BYTES`] (default 128 MiB): files are the unit of
    ///   purging, so smaller files give disk space back sooner.
    /// * `purge_threshold` [`PURGE_THRESHOLD_BYTES`] (default 10 GiB): raft-engine deletes
    ///   no file, however compacted, until its files together are larger than this. Past
    ///   it, [`RaftLog::purge_expired_files`] deletes every file whose entries are all
    ///   compacted, rewrites the few live entries of old files so that they can go too, and
    ///   names the groups whose many live entries keep old files. So this is what a log at
    ///   rest may keep on disk (docs/benchmarks.md, fix 20).
    /// * `recovery_mode` tolerate-tail-corruption: a torn last write (crash during an
    ///   append) is dropped on recovery. Such a write was never acknowledged as synced, so
    ///   dropping it is correct. Damage anywhere else fails the open, with nothing changed:
    ///   in the newest append file `check_log_tails` finds it (the engine alone would drop
    ///   everything from the damage on); in older files the engine refuses a damaged batch
    ///   on recovery, and a damaged entry when it is read.
    /// * `recovery_threads` 2: the machines have 2 cores.
    /// * `enable_log_recycle` off: purged files are deleted instead of being kept for reuse,
    ///   so disk usage follows the live log, above the purge threshold.
    /// * batches above 8 KiB are LZ4-compressed (the default).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_cache(dir, DEFAULT_ENTRY_CACHE_BYTES)
    }

    fn open_with_cache(dir: &Path, entry_cache_bytes: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::storage("create raft log directory", e))?;
        let dir_str = dir.to_str().ok_or_else(|| {
            Error::storage(
                "open raft log",
                format!("directory {} is not valid UTF-8", dir.display()),
            )
        })?;
        let cfg = raft_engine::Config {
            dir: dir_str.to_owned(),
            target_file_size: ReadableSize(LOG_FILE_BYTES),
            purge_threshold: ReadableSize(PURGE_THRESHOLD_BYTES),
            recovery_mode: RecoveryMode::TolerateTailCorruption,
            recovery_threads: 2,
            batch_compression_threshold: ReadableSize::kb(8),
            enable_log_recycle: false,
            ..Default::default()
        };
        check_log_tails(dir)?;
        let engine = Engine::open(cfg)
            .map_err(|e| Error::storage("open raft log", format!("{}: {e}", dir.display())))?;
        tracing::info!(
            dir = %dir.display(),
            groups = engine.raft_groups().len(),
            "raft log opened"
        );
        Ok(Self {
            inner: Arc::new(LogInner {
                engine: Arc::new(engine),
                groups: Mutex::new(HashMap::new()),
                entry_cache_bytes,
            }),
        })
    }

    /// The storage of group `group_id`: its persisted state, or an empty state (first index
    /// 1, last index 0, default hard and conf states) if it has none. Every call for the
    /// same group returns a handle on the same cache.
    pub fn group(&self, group_id: u64) -> Result<GroupStorage> {
        let mut groups = mutex_lock(&self.inner.groups);
        if let Some(shared) = groups.get(&group_id) {
            return Ok(GroupStorage {
                shared: Arc::clone(shared),
            });
        }
        let state = load_group_state(&self.inner.engine, group_id)?;
        tracing::debug!(
            group_id,
            first_index = state.view.truncated_index + 1,
            last_index = state.view.last_index,
            "raft group loaded"
        );
        let shared = Arc::new(GroupShared {
            id: group_id,
            engine: Arc::clone(&self.inner.engine),
            entry_cache_bytes: self.inner.entry_cache_bytes,
            state: RwLock::new(state),
            snapshot_provider: Mutex::new(None),
        });
        groups.insert(group_id, Arc::clone(&shared));
        Ok(GroupStorage { shared })
    }

    /// Ids (ascending) of the groups with any persisted state, e.g. to restart their
    /// replicas after the node restarts.
    pub fn groups(&self) -> Result<Vec<u64>> {
        let mut ids = self.inner.engine.raft_groups();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Writes everything staged in `batch` (any number of groups) as one atomic
    /// raft-engine write; `sync` makes it durable (fsync) before returning, as raft-rs
    /// requires when `Ready::must_sync()` is true.
    ///
    /// The changes become visible through the groups' [`GroupStorage`] only after the
    /// write succeeded. Whatever the outcome, `batch` is empty afterwards. On error nothing
    /// of the batch is visible and no group changed; raft-rs cannot redo a `Ready`, so the
    /// replicas concerned must be treated as failed. Errors: a staged change no longer fits
    /// the group's current state (e.g. the group was removed, or compacted past staged
    /// entries) or the engine failed.
    pub fn write(&self, batch: &mut WriteBatch, sync: bool) -> Result<()> {
        let poisoned = batch.poisoned.take();
        let mut pending = std::mem::take(&mut batch.groups);
        let mut log = std::mem::take(&mut batch.log);
        if let Some(reason) = poisoned {
            return Err(Error::Internal(format!(
                "raft log write batch is unusable after a failed staging: {reason}"
            )));
        }
        if pending.is_empty() {
            return Ok(());
        }
        // Lock every group of the batch in one global order so that concurrent writers
        // cannot deadlock; readers of these groups wait until the caches are updated.
        pending.sort_by_key(|p| (p.group.id, Arc::as_ptr(&p.group) as usize));
        let (groups, ops): (Vec<Arc<GroupShared>>, Vec<Vec<Op>>) =
            pending.into_iter().map(|p| (p.group, p.ops)).unzip();
        let mut guards: Vec<RwLockWriteGuard<'_, GroupState>> =
            groups.iter().map(|g| write_lock(&g.state)).collect();
        for ((group, ops), state) in groups.iter().zip(&ops).zip(&guards) {
            if state.removed {
                return Err(removed_error(group.id));
            }
            let mut view = state.view.clone();
            for op in ops {
                view.validate(group.id, op)?;
                view.apply(op);
            }
        }
        let bytes = self
            .inner
            .engine
            .write(&mut log, sync)
            .map_err(|e| Error::storage("raft log write", e))?;
        for ((group, ops), state) in groups.iter().zip(ops).zip(guards.iter_mut()) {
            for op in ops {
                state.apply(op, group.entry_cache_bytes);
            }
        }
        drop(guards);
        tracing::trace!(bytes, sync, "raft log batch written");
        Ok(())
    }

    /// Drops every piece of state of `group_id` (its replica left this node), durably.
    ///
    /// Handles on the group obtained before see it as removed: staging and raft-rs reads
    /// fail with [`Error::NotFound`] (as a `raft::Error` for reads), and a [`WriteBatch`]
    /// with staged changes for it fails as a whole. A later [`RaftLog::group`] call starts
    /// the group afresh.
    pub fn remove_group(&self, group_id: u64) -> Result<()> {
        let mut groups = mutex_lock(&self.inner.groups);
        let shared = groups.get(&group_id).cloned();
        let mut state = shared.as_ref().map(|s| write_lock(&s.state));
        let mut batch = LogBatch::default();
        batch.add_command(group_id, Command::Clean);
        self.inner
            .engine
            .write(&mut batch, true)
            .map_err(|e| Error::storage("raft log remove group", e))?;
        if let Some(state) = state.as_mut() {
            state.removed = true;
            state.cache.clear();
            state.cache_bytes = 0;
            state.bytes.clear();
        }
        drop(state);
        if let Some(shared) = shared {
            // Drop the provider too: it may hold things that refer back to the group.
            *mutex_lock(&shared.snapshot_provider) = None;
        }
        groups.remove(&group_id);
        tracing::info!(group_id, "raft group removed");
        Ok(())
    }

    /// Lets raft-engine delete log files that hold no live data any more (and, above the
    /// purge threshold, rewrite the live entries of the oldest files). Call it periodically
    /// (e.g. every 10 s) from a background task. Returns the groups whose old entries keep
    /// the oldest files alive: their replicas should compact (or snapshot) soon.
    pub fn purge_expired_files(&self) -> Result<Vec<u64>> {
        self.inner
            .engine
            .purge_expired_files()
            .map_err(|e| Error::storage("raft log purge", e))
    }
}

/// The start of every raft-engine log file (raft-engine 0.4, `file_pipe_log/format.rs`),
/// followed by a big-endian `u64` format version and, from version 2, a `u64` alignment.
const LOG_FILE_MAGIC: &[u8] = b"RAFT-LOG-FILE-HEADER-9986AB3E47F320B394C8E84916EB0ED5";
/// A batch header (raft-engine 0.4, `log_batch.rs`): big-endian `u64`s
/// `len << 8 | compression` and the offset of the footer within the batch.
const BATCH_HEADER_LEN: usize = 16;
/// Both the entries block and the footer of a batch end with a little-endian CRC-32 (the
/// footer's, from format version 2, XOR the low 32 bits of the file's sequence number).
const BATCH_CHECKSUM_LEN: usize = 4;

/// Damage before the end of a log file: at `at`, with an intact batch after it at `next`.
#[derive(Debug, PartialEq)]
struct LogDamage {
    at: usize,
    next: usize,
}

/// Refuses a raft log whose newest files are damaged anywhere but in their last write.
///
/// On recovery, raft-engine's `TolerateTailCorruption` drops everything from the first
/// damaged batch of a queue's newest file to the end of that file, wherever in the file the
/// damage is: a torn last append (the intended case) and damage half-way through the file
/// look alike to it. Dropping written batches that come after the damage would silently
/// undo writes that were synced and acknowledged: entries this replica counted towards a
/// commit, its votes. So before the engine opens the directory, the newest file of the
/// append queue is read here; if an intact batch follows the first damaged one, the damage is not
/// a torn last write and the open fails, naming the file, with nothing changed. A single
/// writer (the replica driver) appends to the log one batch per write, so a torn write
/// damages the last batch only.
fn check_log_tails(dir: &Path) -> Result<()> {
    let read_error = |path: &Path, e: std::io::Error| {
        Error::storage("open raft log", format!("read {}: {e}", path.display()))
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return Err(read_error(dir, e)),
    };
    // The newest file of the append queue (`<seq>.raftlog`, sequence numbers in 16 digits),
    // where every write goes. The rewrite queue (`.rewrite`, written only when old files are
    // purged, far past this module's tests) is left to the engine.
    let mut newest: Option<(u64, std::path::PathBuf)> = None;
    for entry in entries {
        let entry = entry.map_err(|e| read_error(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let seq = name
            .strip_suffix(".raftlog")
            .filter(|digits| digits.len() == 16)
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(seq) = seq
            && newest.as_ref().is_none_or(|(s, _)| seq > *s)
        {
            newest = Some((seq, entry.path()));
        }
    }
    if let Some((seq, path)) = newest {
        let bytes = std::fs::read(&path).map_err(|e| read_error(&path, e))?;
        if let Some(damage) = damage_before_end(&bytes, seq) {
            return Err(Error::storage(
                "open raft log",
                format!(
                    "{} is damaged at byte {} and intact writes follow it from byte {}: this \
                     is not a torn last write (the only damage recovery drops), so the log \
                     was left as it is and the node does not start. Restore this node's data \
                     directory from a backup, or rebuild its replicas (docs/operations.md, \
                     \"A damaged raft log\")",
                    path.display(),
                    damage.at,
                    damage.next
                ),
            ));
        }
    }
    Ok(())
}

/// Where `bytes`, a raft-engine log file with sequence number `seq`, is damaged, when an
/// intact batch follows the damage; `None` when the file is intact or damaged only in its
/// last batch (zeros after the data are space the engine allocated ahead of its writes).
fn damage_before_end(bytes: &[u8], seq: u64) -> Option<LogDamage> {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let be_u64 = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let signed = Some(seq as u32);
    let version = LOG_FILE_MAGIC.len();
    let header = bytes
        .starts_with(LOG_FILE_MAGIC)
        .then(|| (be_u64(version), be_u64(version + 8)));
    let (start, signature) = match header {
        Some((Some(1), _)) => (version + 8, None),
        Some((Some(2), Some(0))) => (version + 16, signed),
        // A layout with alignment padding, which this module never writes: left to the
        // engine.
        Some((Some(2), Some(_))) => return None,
        // A damaged file header: any intact batch in the file is a write after it.
        _ => {
            return (version + 8..end)
                .find(|&next| {
                    intact_batch(bytes, next, signed).is_some()
                        || intact_batch(bytes, next, None).is_some()
                })
                .map(|next| LogDamage { at: 0, next });
        }
    };
    let mut at = start;
    while let Some(len) = intact_batch(bytes, at, signature) {
        at += len;
    }
    if at >= end {
        return None;
    }
    (at + 1..end)
        .find(|&next| intact_batch(bytes, next, signature).is_some())
        .map(|next| LogDamage { at, next })
}

/// The length of the batch at `at` when it is whole and both its checksums match (the
/// footer's XOR `signature`).
fn intact_batch(bytes: &[u8], at: usize, signature: Option<u32>) -> Option<usize> {
    let header = bytes.get(at..at.checked_add(BATCH_HEADER_LEN)?)?;
    let word = u64::from_be_bytes(header[..8].try_into().ok()?);
    let footer = usize::try_from(u64::from_be_bytes(header[8..].try_into().ok()?)).ok()?;
    let len = usize::try_from(word >> 8).ok()?;
    if (word & 0xFF) > 1 || footer < BATCH_HEADER_LEN || footer > len {
        return None;
    }
    let batch = bytes.get(at..at.checked_add(len)?)?;
    let checked = |block: &[u8], signature: Option<u32>| -> bool {
        let Some(split) = block
            .len()
            .checked_sub(BATCH_CHECKSUM_LEN)
            .filter(|&n| n > 0)
        else {
            return false;
        };
        let (data, sum) = block.split_at(split);
        let stored = u32::from_le_bytes(sum.try_into().unwrap_or_default());
        crc32(data) == stored ^ signature.unwrap_or(0)
    };
    let entries = &batch[BATCH_HEADER_LEN..footer];
    let entries_ok = entries.is_empty() || checked(entries, None);
    (entries_ok && checked(&batch[footer..], signature)).then_some(len)
}

/// CRC-32 (IEEE 802.3, reflected), the checksum of raft-engine's batches.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// Reads a group's persisted state from the engine.
fn load_group_state(engine: &Engine, group_id: u64) -> Result<GroupState> {
    let hard_state = engine
        .get_message::<HardState>(group_id, KEY_HARD_STATE)
        .map_err(|e| Error::storage("raft log read hard state", e))?
        .unwrap_or_default();
    let conf_state = engine
        .get_message::<ConfState>(group_id, KEY_CONF_STATE)
        .map_err(|e| Error::storage("raft log read conf state", e))?
        .unwrap_or_default();
    let (truncated_index, truncated_term) = engine
        .get_message::<SnapshotMetadata>(group_id, KEY_TRUNCATED)
        .map_err(|e| Error::storage("raft log read truncated state", e))?
        .map_or((0, 0), |m| (m.index, m.term));
    let last_index = match (engine.first_index(group_id), engine.last_index(group_id)) {
        (Some(first), Some(last)) => {
            if first > truncated_index + 1 {
                return Err(Error::storage(
                    "raft log load group",
                    format!(
                        "group {group_id}: entries start at {first} but the log is only \
                         truncated up to {truncated_index}"
                    ),
                ));
            }
            if first <= truncated_index {
                // Entries the truncated point says are gone (cannot happen with this module's
                // writes, which record both together): drop them so that appends stay
                // contiguous for the engine.
                let mut batch = LogBatch::default();
                batch.add_command(
                    group_id,
                    Command::Compact {
                        index: truncated_index + 1,
                    },
                );
                engine
                    .write(&mut batch, false)
                    .map_err(|e| Error::storage("raft log load group", e))?;
            }
            cmp::max(last, truncated_index)
        }
        _ => truncated_index,
    };
    Ok(GroupState {
        removed: false,
        view: View {
            truncated_index,
            truncated_term,
            last_index,
            hard_state,
            conf_state,
        },
        cache: VecDeque::new(),
        cache_bytes: 0,
        // Sizes of the entries already in the log are not known without reading them.
        bytes: LogBytes::unknown(last_index - truncated_index),
    })
}

/// A group's metadata: the durable one (in [`GroupState`]) or the one projected by the
/// changes staged in a [`WriteBatch`].
#[derive(Clone, Debug)]
struct View {
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
    hard_state: HardState,
    conf_state: ConfState,
}

/// One staged change of one group.
#[derive(Debug)]
enum Op {
    /// Non-empty, contiguous entries; replaces the log from the first one's index on.
    Append(Vec<Entry>),
    HardState(HardState),
    ConfState(ConfState),
    /// Log truncated at (`index`, `term`) and emptied: the engine compacts below `clear_to`,
    /// which must be past the last entry.
    Snapshot {
        index: u64,
        term: u64,
        clear_to: u64,
    },
}

impl View {
    /// Checks that `op` can be applied to this state (what raft-rs's `MemStorage` asserts).
    fn validate(&self, group_id: u64, op: &Op) -> Result<()> {
        match op {
            Op::Append(entries) => {
                let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                    return Ok(());
                };
                if last.index < first.index
                    || last.index - first.index + 1 != entries.len() as u64
                    || entries.windows(2).any(|w| w[1].index != w[0].index + 1)
                {
                    return Err(Error::Internal(format!(
                        "raft group {group_id}: appended entries are not contiguous"
                    )));
                }
                if first.index <= self.truncated_index {
                    return Err(Error::Internal(format!(
                        "raft group {group_id}: cannot overwrite compacted entries: log \
                         truncated at {}, append starts at {}",
                        self.truncated_index, first.index
                    )));
                }
                if first.index > self.last_index + 1 {
                    return Err(Error::Internal(format!(
                        "raft group {group_id}: append at {} would leave a hole after the last \
                         index {}",
                        first.index, self.last_index
                    )));
                }
                Ok(())
            }
            Op::Snapshot {
                index, clear_to, ..
            } => {
                if *index <= self.truncated_index {
                    return Err(Error::Internal(format!(
                        "raft group {group_id}: snapshot at {index} is out of date: log already \
                         truncated at {}",
                        self.truncated_index
                    )));
                }
                if *clear_to <= self.last_index {
                    return Err(Error::Internal(format!(
                        "raft group {group_id}: the log changed since the snapshot was staged"
                    )));
                }
                Ok(())
            }
            Op::HardState(_) | Op::ConfState(_) => Ok(()),
        }
    }

    /// Applies a validated `op`.
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(entries) => {
                if let Some(last) = entries.last() {
                    self.last_index = last.index;
                }
            }
            Op::HardState(hs) => self.hard_state = hs.clone(),
            Op::ConfState(cs) => self.conf_state = cs.clone(),
            Op::Snapshot { index, term, .. } => {
                self.truncated_index = *index;
                self.truncated_term = *term;
                self.last_index = *index;
            }
        }
    }
}

/// The durable state of a group, as raft-rs sees it.
struct GroupState {
    /// Set by [`RaftLog::remove_group`]; the handle is dead.
    removed: bool,
    view: View,
    /// The most recent entries: a contiguous run ending at `view.last_index` (or empty).
    cache: VecDeque<Entry>,
    cache_bytes: u64,
    /// The bytes of the log's entries, for compaction by bytes.
    bytes: LogBytes,
}

/// The sizes of a log's entries ([`entry_size`]; 0 for those it held when the group was
/// loaded), as running totals from the first entry on, so that the bytes of any run of
/// entries are one subtraction.
#[derive(Default)]
struct LogBytes {
    /// The running total before the first entry.
    base: u64,
    /// `ends[k]`: the running total through the log's `k`-th entry.
    ends: VecDeque<u64>,
}

impl LogBytes {
    /// `n` entries of unknown size.
    fn unknown(n: u64) -> Self {
        LogBytes {
            base: 0,
            ends: std::iter::repeat_n(0, n as usize).collect(),
        }
    }

    /// Keeps the first `n` entries, then adds `sizes`.
    fn replace_after(&mut self, n: usize, sizes: impl Iterator<Item = u64>) {
        self.ends.truncate(n);
        let mut total = self.ends.back().copied().unwrap_or(self.base);
        for size in sizes {
            total += size;
            self.ends.push_back(total);
        }
    }

    /// Drops the first `n` entries.
    fn drop_first(&mut self, n: usize) {
        let n = n.min(self.ends.len());
        if n > 0 {
            self.base = self.ends[n - 1];
            self.ends.drain(..n);
        }
    }

    fn clear(&mut self) {
        *self = LogBytes::default();
    }

    /// Bytes of the entries at positions `from..=to` that the log holds.
    fn between(&self, from: usize, to: usize) -> u64 {
        let Some(last) = self.ends.len().checked_sub(1) else {
            return 0;
        };
        let to = to.min(last);
        if from > to {
            return 0;
        }
        let before = from.checked_sub(1).map_or(self.base, |k| self.ends[k]);
        self.ends[to] - before
    }
}

impl GroupState {
    /// Index of the first cached entry (`last_index + 1` when the cache is empty).
    fn cache_first(&self) -> u64 {
        self.view.last_index + 1 - self.cache.len() as u64
    }

    /// Applies a validated, written `op` to metadata and cache.
    fn apply(&mut self, op: Op, cache_limit: usize) {
        self.view.apply(&op);
        match op {
            Op::Append(entries) => {
                let Some(first) = entries.first().map(|e| e.index) else {
                    return;
                };
                self.bytes.replace_after(
                    (first - self.view.truncated_index - 1) as usize,
                    entries.iter().map(entry_size),
                );
                // The cache still ends at the old last index: cut it where the new run
                // starts, then add the run.
                let old_cache_first = match self.cache.front() {
                    Some(e) => e.index,
                    None => first,
                };
                if first <= old_cache_first {
                    self.cache.clear();
                    self.cache_bytes = 0;
                } else {
                    let keep = (first - old_cache_first) as usize;
                    while self.cache.len() > keep {
                        if let Some(e) = self.cache.pop_back() {
                            self.cache_bytes -= entry_size(&e);
                        }
                    }
                }
                for e in entries {
                    self.cache_bytes += entry_size(&e);
                    self.cache.push_back(e);
                }
                let limit = cache_limit as u64;
                while self.cache_bytes > limit {
                    match self.cache.pop_front() {
                        Some(e) => self.cache_bytes -= entry_size(&e),
                        None => break,
                    }
                }
            }
            Op::Snapshot { .. } => {
                self.cache.clear();
                self.cache_bytes = 0;
                self.bytes.clear();
            }
            Op::HardState(_) | Op::ConfState(_) => {}
        }
    }

    /// Drops cached entries and sizes up to `index` (compaction), before the truncated
    /// point moves there.
    fn cache_compact(&mut self, index: u64) {
        self.bytes
            .drop_first(index.saturating_sub(self.view.truncated_index) as usize);
        while self.cache.front().is_some_and(|e| e.index <= index) {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= entry_size(&e);
            }
        }
    }
}

/// Changes staged for one [`RaftLog::write`], for any number of groups.
#[derive(Default)]
pub struct WriteBatch {
    log: LogBatch,
    groups: Vec<PendingGroup>,
    /// Set if staging failed after it had started filling `log`; the batch cannot be written.
    poisoned: Option<String>,
}

struct PendingGroup {
    group: Arc<GroupShared>,
    /// The group's state once everything staged so far is applied.
    view: View,
    ops: Vec<Op>,
}

impl fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBatch")
            .field(
                "groups",
                &self.groups.iter().map(|p| p.group.id).collect::<Vec<_>>(),
            )
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// True if nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(|p| p.ops.is_empty()) && self.poisoned.is_none()
    }

    fn pending(&self, group: &Arc<GroupShared>) -> Option<&PendingGroup> {
        self.groups.iter().find(|p| Arc::ptr_eq(&p.group, group))
    }
}

struct GroupShared {
    id: u64,
    engine: Arc<Engine>,
    entry_cache_bytes: usize,
    state: RwLock<GroupState>,
    snapshot_provider: Mutex<Option<SnapshotProvider>>,
}

/// Why an entry or term could not be read.
enum LookupError {
    Compacted(u64),
    Unavailable(u64),
    Failed(Error),
}

impl LookupError {
    fn into_error(self, group_id: u64) -> Error {
        match self {
            LookupError::Compacted(index) => Error::Internal(format!(
                "raft group {group_id}: log entry {index} is compacted"
            )),
            LookupError::Unavailable(index) => Error::Internal(format!(
                "raft group {group_id}: log entry {index} is not in the log yet"
            )),
            LookupError::Failed(e) => e,
        }
    }
}

impl From<LookupError> for raft::Error {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::Compacted(_) => raft::Error::Store(StorageError::Compacted),
            LookupError::Unavailable(_) => raft::Error::Store(StorageError::Unavailable),
            LookupError::Failed(e) => raft::Error::Store(StorageError::Other(Box::new(e))),
        }
    }
}

fn raft_removed_error(group_id: u64) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(removed_error(group_id))))
}

/// The raft-rs storage of one group. Cheap to clone; all clones share one cache.
#[derive(Clone)]
pub struct GroupStorage {
    shared: Arc<GroupShared>,
}

impl fmt::Debug for GroupStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupStorage")
            .field("group_id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl GroupStorage {
    pub fn group_id(&self) -> u64 {
        self.shared.id
    }

    /// The group's durable hard state (staged, unwritten changes are not included).
    pub fn hard_state(&self) -> HardState {
        read_lock(&self.shared.state).view.hard_state.clone()
    }

    /// The group's durable conf state (staged, unwritten changes are not included).
    pub fn conf_state(&self) -> ConfState {
        read_lock(&self.shared.state).view.conf_state.clone()
    }

    /// The group's state as projected by the changes already staged in `batch`.
    fn staged_view(&self, batch: &WriteBatch) -> Result<View> {
        if let Some(p) = batch.pending(&self.shared) {
            return Ok(p.view.clone());
        }
        let state = read_lock(&self.shared.state);
        if state.removed {
            return Err(removed_error(self.shared.id));
        }
        Ok(state.view.clone())
    }

    /// Validates `ops` against the staged view, lets `fill` add them to the engine batch,
    /// and records them.
    fn stage<F>(&self, batch: &mut WriteBatch, ops: Vec<Op>, fill: F) -> Result<()>
    where
        F: FnOnce(&mut LogBatch, u64) -> Result<()>,
    {
        if let Some(reason) = &batch.poisoned {
            return Err(Error::Internal(format!(
                "raft log write batch is unusable after a failed staging: {reason}"
            )));
        }
        let mut view = self.staged_view(batch)?;
        for op in &ops {
            view.validate(self.shared.id, op)?;
            view.apply(op);
        }
        if let Err(e) = fill(&mut batch.log, self.shared.id) {
            // The engine batch may hold part of the change: it must not be written.
            batch.poisoned = Some(e.to_string());
            return Err(e);
        }
        match batch
            .groups
            .iter_mut()
            .find(|p| Arc::ptr_eq(&p.group, &self.shared))
        {
            Some(p) => {
                p.view = view;
                p.ops.extend(ops);
            }
            None => batch.groups.push(PendingGroup {
                group: Arc::clone(&self.shared),
                view,
                ops,
            }),
        }
        Ok(())
    }

    /// Stages entries of a `Ready` (`Ready::entries()`). Entries must be contiguous, start
    /// after the truncated point and at most right after the last entry (staged ones
    /// included); those from the first one's index on replace the existing suffix (raft's
    /// conflicting-suffix truncation).
    pub fn stage_append(&self, batch: &mut WriteBatch, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.stage(batch, vec![Op::Append(entries.to_vec())], |log, id| {
            log.add_entries::<EntryExt>(id, entries)
                .map_err(|e| Error::storage("stage raft log entries", e))
        })
    }

    /// Stages a new hard state (`Ready::hs()`).
    pub fn stage_hard_state(&self, batch: &mut WriteBatch, hs: &HardState) -> Result<()> {
        self.stage(batch, vec![Op::HardState(hs.clone())], |log, id| {
            log.put_message(id, KEY_HARD_STATE.to_vec(), hs)
                .map_err(|e| Error::storage("stage raft hard state", e))
        })
    }

    /// Stages a new commit index (`LightReady::commit_index()`) into the hard state staged
    /// so far (or the durable one). Use this rather than changing [`Self::hard_state`],
    /// which does not include staged changes.
    pub fn stage_commit_index(&self, batch: &mut WriteBatch, commit: u64) -> Result<()> {
        let mut hs = self.staged_view(batch)?.hard_state;
        hs.commit = commit;
        self.stage_hard_state(batch, &hs)
    }

    /// Stages a new conf state (after `RawNode::apply_conf_change`).
    pub fn stage_conf_state(&self, batch: &mut WriteBatch, cs: &ConfState) -> Result<()> {
        self.stage(batch, vec![Op::ConfState(cs.clone())], |log, id| {
            log.put_message(id, KEY_CONF_STATE.to_vec(), cs)
                .map_err(|e| Error::storage("stage raft conf state", e))
        })
    }

    /// Stages the metadata of a snapshot from a `Ready` (the state machine restores the
    /// data itself): the state machine now holds everything up to (`meta.index`,
    /// `meta.term`). The whole log is discarded (first index becomes `meta.index + 1`, last
    /// index `meta.index`), the conf state becomes `meta.conf_state`, and the hard state's
    /// commit and term are raised to at least the snapshot's (as `MemStorage` does; a hard
    /// state staged afterwards replaces it). Stage it before the `Ready`'s entries.
    /// Fails if `meta.index` is not past the truncated point (snapshot out of date).
    pub fn stage_snapshot_metadata(
        &self,
        batch: &mut WriteBatch,
        meta: &SnapshotMetadata,
    ) -> Result<()> {
        let view = self.staged_view(batch)?;
        let clear_to = cmp::max(view.last_index, meta.index) + 1;
        let mut hs = view.hard_state.clone();
        hs.commit = cmp::max(hs.commit, meta.index);
        hs.term = cmp::max(hs.term, meta.term);
        let cs = meta.get_conf_state().clone();
        let truncated = truncated_point(meta.index, meta.term);
        let ops = vec![
            Op::Snapshot {
                index: meta.index,
                term: meta.term,
                clear_to,
            },
            Op::HardState(hs.clone()),
            Op::ConfState(cs.clone()),
        ];
        self.stage(batch, ops, |log, id| {
            let map = |e| Error::storage("stage raft snapshot metadata", e);
            log.put_message(id, KEY_TRUNCATED.to_vec(), &truncated)
                .map_err(map)?;
            log.add_command(id, Command::Compact { index: clear_to });
            log.put_message(id, KEY_HARD_STATE.to_vec(), &hs)
                .map_err(map)?;
            log.put_message(id, KEY_CONF_STATE.to_vec(), &cs)
                .map_err(map)
        })
    }

    /// Discards the entries up to `index` (which must be applied: the caller guarantees
    /// it), remembering (`index`, its term) as the truncated point so that `term(index)`
    /// still answers; the first index becomes `index + 1`. Written right away, without
    /// fsync (losing a compaction in a crash only keeps entries longer). Compacting at or
    /// below the truncated point does nothing; past the last index is an error.
    pub fn compact(&self, index: u64) -> Result<()> {
        let id = self.shared.id;
        let mut state = write_lock(&self.shared.state);
        if state.removed {
            return Err(removed_error(id));
        }
        if index <= state.view.truncated_index {
            return Ok(());
        }
        if index > state.view.last_index {
            return Err(Error::Internal(format!(
                "raft group {id}: cannot compact to {index}, past the last index {}",
                state.view.last_index
            )));
        }
        let term = self
            .term_locked(&state, index)
            .map_err(|e| e.into_error(id))?;
        let truncated = truncated_point(index, term);
        let mut batch = LogBatch::default();
        batch
            .put_message(id, KEY_TRUNCATED.to_vec(), &truncated)
            .map_err(|e| Error::storage("raft log compact", e))?;
        batch.add_command(id, Command::Compact { index: index + 1 });
        self.shared
            .engine
            .write(&mut batch, false)
            .map_err(|e| Error::storage("raft log compact", e))?;
        state.cache_compact(index);
        state.view.truncated_index = index;
        state.view.truncated_term = term;
        tracing::debug!(group_id = id, index, term, "raft log compacted");
        Ok(())
    }

    /// Calls `f` with the bytes of the log's entries: `bytes(from, to)` is the size of the
    /// entries `from..=to` that the log holds, 0 counted for those it held when the group
    /// was loaded (their sizes are not known without reading them); one subtraction. The
    /// group's state stays read-locked during `f`.
    pub fn with_log_bytes<R>(&self, f: impl FnOnce(&dyn Fn(u64, u64) -> u64) -> R) -> R {
        let state = read_lock(&self.shared.state);
        let first = state.view.truncated_index + 1;
        let position = |i: u64| usize::try_from(i.saturating_sub(first)).unwrap_or(usize::MAX);
        let bytes = |from: u64, to: u64| {
            if to < first || to < from {
                return 0;
            }
            state.bytes.between(position(from), position(to))
        };
        f(&bytes)
    }

    /// Metadata for a snapshot of the state machine at `index` (usually its applied
    /// index): `index`, the term of that entry, and the current conf state. For a
    /// [`SnapshotProvider`]. Fails if `index` is compacted away (below the truncated point)
    /// or past the last index.
    pub fn snapshot_metadata(&self, index: u64) -> Result<SnapshotMetadata> {
        let id = self.shared.id;
        let state = read_lock(&self.shared.state);
        if state.removed {
            return Err(removed_error(id));
        }
        let term = self
            .term_locked(&state, index)
            .map_err(|e| e.into_error(id))?;
        let mut meta = truncated_point(index, term);
        meta.set_conf_state(state.view.conf_state.clone());
        Ok(meta)
    }

    /// Sets what builds snapshots for raft-rs ([`raft::Storage::snapshot`]); usually the
    /// replica driver, from its state machine: metadata from [`Self::snapshot_metadata`]
    /// at its applied index, data from its store. Without a provider, or when it fails,
    /// `snapshot()` answers `SnapshotTemporarilyUnavailable` and raft-rs retries later.
    pub fn set_snapshot_provider(&self, provider: SnapshotProvider) {
        *mutex_lock(&self.shared.snapshot_provider) = Some(provider);
    }

    fn term_locked(&self, state: &GroupState, index: u64) -> Result<u64, LookupError> {
        let view = &state.view;
        if index == view.truncated_index {
            return Ok(view.truncated_term);
        }
        if index < view.truncated_index {
            return Err(LookupError::Compacted(index));
        }
        if index > view.last_index {
            return Err(LookupError::Unavailable(index));
        }
        let cache_first = state.cache_first();
        if index >= cache_first
            && let Some(e) = state.cache.get((index - cache_first) as usize)
        {
            return Ok(e.term);
        }
        match self
            .shared
            .engine
            .get_entry::<EntryExt>(self.shared.id, index)
        {
            Ok(Some(e)) => Ok(e.term),
            Ok(None) => Err(LookupError::Failed(Error::storage(
                "raft log read entry",
                format!(
                    "group {}: entry {index} missing from the engine",
                    self.shared.id
                ),
            ))),
            Err(e) => Err(LookupError::Failed(Error::storage(
                "raft log read entry",
                e,
            ))),
        }
    }

    fn entries_locked(
        &self,
        state: &GroupState,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, LookupError> {
        let id = self.shared.id;
        if low <= state.view.truncated_index {
            return Err(LookupError::Compacted(low));
        }
        if high > state.view.last_index + 1 {
            return Err(LookupError::Unavailable(high - 1));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let limit = max_size.filter(|&m| m != raft::NO_LIMIT);
        let cache_first = state.cache_first();
        let mut out = Vec::new();
        let mut size = 0u64;
        if low < cache_first {
            let end = cmp::min(high, cache_first);
            let engine_limit = limit.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
            // raft-engine's size limit has raft's `limit_size` semantics: at least one
            // entry, then entries while the running total stays within the limit.
            let fetched = self
                .shared
                .engine
                .fetch_entries_to::<EntryExt>(id, low, end, engine_limit, &mut out)
                .map_err(|e| LookupError::Failed(Error::storage("raft log read entries", e)))?;
            if fetched as u64 != end - low {
                if limit.is_none() || fetched == 0 {
                    return Err(LookupError::Failed(Error::storage(
                        "raft log read entries",
                        format!(
                            "group {id}: entries [{low}, {end}) expected, the engine has \
                             {fetched} of them"
                        ),
                    )));
                }
                raft::util::limit_size(&mut out, limit);
                return Ok(out);
            }
            size = out.iter().map(entry_size).sum();
        }
        if high > cache_first {
            let start = cmp::max(low, cache_first);
            let from = (start - cache_first) as usize;
            let to = (high - cache_first) as usize;
            for e in state.cache.range(from..to) {
                let s = entry_size(e);
                if limit.is_some_and(|max| !out.is_empty() && size + s > max) {
                    break;
                }
                size += s;
                out.push(e.clone());
            }
        }
        Ok(out)
    }
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let state = read_lock(&self.shared.state);
        if state.removed {
            return Err(raft_removed_error(self.shared.id));
        }
        Ok(RaftState::new(
            state.view.hard_state.clone(),
            state.view.conf_state.clone(),
        ))
    }

    /// Entries `[low, high)`, at most `max_size` bytes but at least one (raft's
    /// `limit_size`). `Compacted` below the first index; `Unavailable` (rather than a panic
    /// as in `MemStorage`) past the last index. Entries are always read synchronously, so
    /// the context is not needed and `LogTemporarilyUnavailable` is never returned.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let state = read_lock(&self.shared.state);
        if state.removed {
            return Err(raft_removed_error(self.shared.id));
        }
        Ok(self.entries_locked(&state, low, high, max_size)?)
    }

    /// The term of entry `idx`: known for `first_index() - 1` (the truncated point) up to
    /// `last_index()`; `Compacted` below, `Unavailable` above.
    fn term(&self, idx: u64) -> raft::Result<u64> {
        let state = read_lock(&self.shared.state);
        if state.removed {
            return Err(raft_removed_error(self.shared.id));
        }
        Ok(self.term_locked(&state, idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        let state = read_lock(&self.shared.state);
        if state.removed {
            return Err(raft_removed_error(self.shared.id));
        }
        Ok(state.view.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        let state = read_lock(&self.shared.state);
        if state.removed {
            return Err(raft_removed_error(self.shared.id));
        }
        Ok(state.view.last_index)
    }

    /// A snapshot from the provider (see [`GroupStorage::set_snapshot_provider`]);
    /// `SnapshotTemporarilyUnavailable` without one, if it fails, or if its snapshot is
    /// older than `request_index` (raft-rs then retries later instead of panicking).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let id = self.shared.id;
        if read_lock(&self.shared.state).removed {
            return Err(raft_removed_error(id));
        }
        let unavailable = raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        // Not called under the state lock: the provider calls back into this storage.
        let provider = mutex_lock(&self.shared.snapshot_provider).clone();
        let Some(provider) = provider else {
            return Err(unavailable);
        };
        match provider(self, request_index) {
            Ok(snapshot) if snapshot.get_metadata().index >= request_index => {
                tracing::debug!(
                    group_id = id,
                    to,
                    index = snapshot.get_metadata().index,
                    "raft snapshot built"
                );
                Ok(snapshot)
            }
            Ok(snapshot) => {
                tracing::warn!(
                    group_id = id,
                    to,
                    index = snapshot.get_metadata().index,
                    request_index,
                    "snapshot provider returned a snapshot older than requested"
                );
                Err(unavailable)
            }
            Err(e) => {
                tracing::warn!(group_id = id, to, error = %e, "snapshot provider failed");
                Err(unavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use raft::eraftpb::{EntryType, Message, MessageType};
    use raft::{RawNode, SnapshotStatus, StateRole, Storage};
    use tempfile::TempDir;

    use super::*;

    fn new_entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn data_entry(index: u64, term: u64, data: Vec<u8>) -> Entry {
        let mut e = new_entry(index, term);
        e.data = data.into();
        e
    }

    fn conf(voters: &[u64]) -> ConfState {
        ConfState::from((voters.to_vec(), Vec::<u64>::new()))
    }

    fn hard(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn meta(index: u64, term: u64, voters: &[u64]) -> SnapshotMetadata {
        let mut m = truncated_point(index, term);
        m.set_conf_state(conf(voters));
        m
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    fn compacted<T>() -> raft::Result<T> {
        Err(raft::Error::Store(StorageError::Compacted))
    }

    fn unavailable<T>() -> raft::Result<T> {
        Err(raft::Error::Store(StorageError::Unavailable))
    }

    fn all_entries(g: &GroupStorage) -> Vec<Entry> {
        let first = g.first_index().unwrap();
        let last = g.last_index().unwrap();
        g.entries(first, last + 1, None, ctx()).unwrap()
    }

    /// Stages with `f` and writes the batch with fsync.
    fn write_with(log: &RaftLog, f: impl FnOnce(&mut WriteBatch)) {
        let mut batch = WriteBatch::new();
        f(&mut batch);
        log.write(&mut batch, true).unwrap();
        assert!(batch.is_empty());
    }

    /// The shape of raft-rs's `MemStorage` test fixtures: the log is truncated at (2, 2)
    /// (a snapshot) and holds `ents` after it.
    fn fixture(log: &RaftLog, group: u64, ents: &[Entry]) -> GroupStorage {
        let g = log.group(group).unwrap();
        write_with(log, |b| {
            g.stage_snapshot_metadata(b, &meta(2, 2, &[1])).unwrap();
            g.stage_append(b, ents).unwrap();
        });
        g
    }

    fn ents_3_to(last: u64) -> Vec<Entry> {
        (3..=last).map(|i| new_entry(i, i)).collect()
    }

    /// Cache sizes: everything cached, nothing cached (every read from the engine), and a
    /// cache holding only the last two fixture entries (reads spanning engine and cache).
    fn cache_sizes() -> Vec<usize> {
        let two = (entry_size(&new_entry(5, 5)) + entry_size(&new_entry(6, 6))) as usize;
        vec![DEFAULT_ENTRY_CACHE_BYTES, 0, two]
    }

    #[test]
    fn fresh_group_is_empty_like_a_new_mem_storage() {
        let dir = TempDir::new().unwrap();
        let log = RaftLog::open(dir.path()).unwrap();
        let g = log.group(9).unwrap();
        assert_eq!(g.group_id(), 9);
        let state = g.initial_state().unwrap();
        assert!(!state.initialized());
        assert_eq!(state.hard_state, HardState::default());
        assert_eq!(g.first_index(), Ok(1));
        assert_eq!(g.last_index(), Ok(0));
        assert_eq!(g.term(0), Ok(0));
        assert_eq!(g.term(1), unavailable());
        assert_eq!(g.entries(1, 1, None, ctx()), Ok(vec![]));
        assert!(log.groups().unwrap().is_empty(), "loading writes nothing");
    }

    #[test]
    fn term_first_and_last_index_follow_mem_storage_semantics() {
        for cache in cache_sizes() {
            let dir = TempDir::new().unwrap();
            let log = RaftLog::open_with_cache(dir.path(), cache).unwrap();
            let g = fixture(&log, 1, &ents_3_to(5));
            assert_eq!(g.term(1), compacted(), "cache {cache}");
            assert_eq!(g.term(2), Ok(2), "the truncated point keeps its term");
            assert_eq!(g.term(3), Ok(3));
            assert_eq!(g.term(4), Ok(4));
            assert_eq!(g.term(5), Ok(5));
            assert_eq!(g.term(6), unavailable());
            assert_eq!(g.first_index(), Ok(3));
            assert_eq!(g.last_index(), Ok(5));

            write_with(&log, |b| g.stage_append(b, &[new_entry(6, 5)]).unwrap());
            assert_eq!(g.last_index(), Ok(6));
            assert_eq!(g.term(6), Ok(5));

            g.compact(4).unwrap();
            assert_eq!(g.first_index(), Ok(5));
            assert_eq!(g.term(4), Ok(4));
            assert_eq!(g.term(3), compacted());
            assert_eq!(g.last_index(), Ok(6));
        }
    }

    fn check_entries_table(g: &GroupStorage, ents: &[Entry], what: &str) {
        let size = |e: &Entry| entry_size(e);
        let max = u64::MAX;
        type Case = (u64, u64, Option<u64>, raft::Result<Vec<Entry>>);
        let cases: Vec<Case> = vec![
            (2, 6, Some(max), compacted()),
            (3, 4, Some(max), Ok(vec![new_entry(3, 3)])),
            (4, 5, Some(max), Ok(vec![new_entry(4, 4)])),
            (4, 6, Some(max), Ok(vec![new_entry(4, 4), new_entry(5, 5)])),
            (4, 7, None, Ok(ents[1..].to_vec())),
            (4, 7, Some(max), Ok(ents[1..].to_vec())),
            // Even if max_size is zero, the first entry is returned.
            (4, 7, Some(0), Ok(vec![new_entry(4, 4)])),
            (
                4,
                7,
                Some(size(&ents[1]) + size(&ents[2])),
                Ok(vec![new_entry(4, 4), new_entry(5, 5)]),
            ),
            (
                4,
                7,
                Some(size(&ents[1]) + size(&ents[2]) + size(&ents[3]) / 2),
                Ok(vec![new_entry(4, 4), new_entry(5, 5)]),
            ),
            (
                4,
                7,
                Some(size(&ents[1]) + size(&ents[2]) + size(&ents[3]) - 1),
                Ok(vec![new_entry(4, 4), new_entry(5, 5)]),
            ),
            (
                4,
                7,
                Some(size(&ents[1]) + size(&ents[2]) + size(&ents[3])),
                Ok(ents[1..].to_vec()),
            ),
            (3, 7, Some(size(&ents[0])), Ok(vec![new_entry(3, 3)])),
            (5, 5, None, Ok(vec![])),
            // Past the last index: an error rather than MemStorage's panic.
            (4, 8, None, unavailable()),
        ];
        for (i, (lo, hi, max_size, want)) in cases.into_iter().enumerate() {
            let got = g.entries(lo, hi, max_size, ctx());
            assert_eq!(got, want, "{what}: case #{i} [{lo}, {hi}) max {max_size:?}");
        }
    }

    #[test]
    fn entries_honor_bounds_and_max_size_from_cache_and_engine() {
        for cache in cache_sizes() {
            let dir = TempDir::new().unwrap();
            let ents = ents_3_to(6);
            {
                let log = RaftLog::open_with_cache(dir.path(), cache).unwrap();
                let g = fixture(&log, 1, &ents);
                check_entries_table(&g, &ents, &format!("cache {cache}"));
            }
            // After a restart the cache is cold: everything comes from the engine.
            let log = RaftLog::open_with_cache(dir.path(), cache).unwrap();
            let g = log.group(1).unwrap();
            check_entries_table(&g, &ents, &format!("cache {cache}, reopened"));
        }
    }

    #[test]
    fn append_replaces_the_conflicting_suffix() {
        let ents = ents_3_to(5);
        let cases = [
            (ents_3_to(5), ents_3_to(5)),
            (
                vec![new_entry(3, 3), new_entry(4, 6), new_entry(5, 6)],
                vec![new_entry(3, 3), new_entry(4, 6), new_entry(5, 6)],
            ),
            (
                vec![
                    new_entry(3, 3),
                    new_entry(4, 4),
                    new_entry(5, 5),
                    new_entry(6, 5),
                ],
                vec![
                    new_entry(3, 3),
                    new_entry(4, 4),
                    new_entry(5, 5),
                    new_entry(6, 5),
                ],
            ),
            // Truncate the existing entries and append.
            (
                vec![new_entry(4, 5)],
                vec![new_entry(3, 3), new_entry(4, 5)],
            ),
            // Direct append.
            (
                vec![new_entry(6, 6)],
                vec![
                    new_entry(3, 3),
                    new_entry(4, 4),
                    new_entry(5, 5),
                    new_entry(6, 6),
                ],
            ),
        ];
        for cache in cache_sizes() {
            let dir = TempDir::new().unwrap();
            {
                let log = RaftLog::open_with_cache(dir.path(), cache).unwrap();
                for (i, (append, want)) in cases.iter().enumerate() {
                    let g = fixture(&log, i as u64 + 1, &ents);
                    write_with(&log, |b| g.stage_append(b, append).unwrap());
                    assert_eq!(&all_entries(&g), want, "cache {cache}, case #{i}");
                    assert_eq!(g.last_index(), Ok(want.last().unwrap().index));
                }
                // Both in one batch: the second append truncates what the first staged.
                let g = fixture(&log, 100, &ents);
                write_with(&log, |b| {
                    g.stage_append(b, &[new_entry(6, 6), new_entry(7, 6)])
                        .unwrap();
                    g.stage_append(b, &[new_entry(5, 7)]).unwrap();
                });
                assert_eq!(
                    all_entries(&g),
                    vec![new_entry(3, 3), new_entry(4, 4), new_entry(5, 7)]
                );
            }
            // The engine dropped the replaced entries too.
            let log = RaftLog::open_with_cache(dir.path(), cache).unwrap();
            for (i, (_, want)) in cases.iter().enumerate() {
                let g = log.group(i as u64 + 1).unwrap();
                assert_eq!(&all_entries(&g), want, "cache {cache}, reopened case #{i}");
            }
            let g = log.group(100).unwrap();
            assert_eq!(g.last_index(), Ok(5));
            assert_eq!(g.term(5), Ok(7));
        }
    }

    #[test]
    fn append_rejects_compacted_overlap_holes_and_gaps() {
        let dir = TempDir::new().unwrap();
        let log = RaftLog::open(dir.path()).unwrap();
        let g = fixture(&log, 1, &ents_3_to(5));
        let mut b = WriteBatch::new();
        // Overwriting compacted entries is not allowed.
        assert!(matches!(
            g.stage_append(&mut b, &[new_entry(2, 3), new_entry(3, 3)]),
            Err(Error::Internal(_))
        ));
        // Neither is a hole after the last entry, nor a gap inside the entries.
        assert!(g.stage_append(&mut b, &[new_entry(7, 5)]).is_err());
        assert!(
            g.stage_append(&mut b, &[new_entry(6, 5), new_entry(8, 5)])
                .is_err()
        );
        assert!(b.is_empty(), "rejected changes are not staged");
        // Validation sees what is already staged in the batch.
        g.stage_append(&mut b, &[new_entry(6, 5)]).unwrap();
        assert!(g.stage_append(&mut b, &[new_entry(8, 5)]).is_err());
        g.stage_append(&mut b, &[new_entry(7, 5)]).unwrap();
        assert!(!b.is_empty());
        log.write(&mut b, true).unwrap();
        assert_eq!(g.last_index(), Ok(7));
        assert_eq!(all_entries(&g).len(), 5);
    }

    #[test]
    fn compaction_discards_the_prefix_and_keeps_the_truncated_term() {
        for cache in cache_sizes() {
            let dir = TempDir::new().unwrap();
            {
                let log = RaftLog::open_with_cache(dir.path(), cache).unwrap();
                let g = fixture(&log, 1, &ents_3_to(6));
                g.compact(2).unwrap(); // at the truncated point: nothing to do
                g.compact(1).unwrap();
                assert_eq!(g.first_index(), Ok(3));

                g.compact(4).unwrap();
                assert_eq!(g.first_index(), Ok(5));
                assert_eq!(g.term(4), Ok(4));
                assert_eq!(g.term(3), compacted());
                assert_eq!(g.entries(4, 6, None, ctx()), compacted());
                assert_eq!(
                    g.entries(5, 7, None, ctx()),
                    Ok(vec![new_entry(5, 5), new_entry(6, 6)])
                );
                assert!(g.compact(7).is_err(), "past the last index");

                // Compacting everything leaves an empty log that still appends after it.
                g.compact(6).unwrap();
                assert_eq!(g.first_index(), Ok(7));
                assert_eq!(g.last_index(), Ok(6));
                assert_eq!(g.term(6), Ok(6));
                assert_eq!(g.entries(7, 7, None, ctx()), Ok(vec![]));
                write_with(&log, |b| g.stage_append(b, &[new_entry(7, 6)]).unwrap());
                assert_eq!(g.term(7), Ok(6));
                // Appending below the truncated point is refused.
                let mut b = WriteBatch::new();
                assert!(g.stage_append(&mut b, &[new_entry(6, 9)]).is_err());
            }
            let log = RaftLog::open_with_cache(dir.path(), cache).unwrap();
            let g = log.group(1).unwrap();
            assert_eq!(g.first_index(), Ok(7), "cache {cache}");
            assert_eq!(g.last_index(), Ok(7));
            assert_eq!(g.term(6), Ok(6));
            assert_eq!(g.term(5), compacted());
            assert_eq!(all_entries(&g), vec![new_entry(7, 6)]);
        }
    }

    /// Bytes of the files under `dir`.
    fn dir_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn compacted_files_are_deleted_once_past_the_purge_threshold() {
        let dir = TempDir::new().unwrap();
        let log = RaftLog::open(dir.path()).unwrap();
        let g = log.group(1).unwrap();
        // Entries that LZ4 cannot shrink, 1.5 purge thresholds of them.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = |n: usize| {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect::<Vec<u8>>()
        };
        let entry_bytes = 256 * 1024;
        let count = (PURGE_THRESHOLD_BYTES * 3 / 2) / entry_bytes as u64;
        for i in 1..=count {
            write_with(&log, |b| {
                g.stage_append(b, &[data_entry(i, 1, noise(entry_bytes))])
                    .unwrap()
            });
        }
        let before = dir_bytes(dir.path());
        assert!(before > PURGE_THRESHOLD_BYTES, "{before} bytes written");
        // Nothing compacted: nothing goes.
        log.purge_expired_files().unwrap();
        assert!(dir_bytes(dir.path()) >= before);
        g.compact(count - 1).unwrap();
        log.purge_expired_files().unwrap();
        let after = dir_bytes(dir.path());
        assert!(
            after <= 2 * LOG_FILE_BYTES,
            "{after} bytes left of {before} with one entry live"
        );
        assert_eq!(all_entries(&g).len(), 1);
    }

    #[test]
    fn entry_sizes_follow_appends_overwrites_compaction_and_reopen() {
        let dir = TempDir::new().unwrap();
        let sizes = |g: &GroupStorage, range: std::ops::RangeInclusive<u64>| {
            g.with_log_bytes(|bytes| range.map(|i| bytes(i, i)).collect::<Vec<_>>())
        };
        let total =
            |g: &GroupStorage, from: u64, to: u64| g.with_log_bytes(|bytes| bytes(from, to));
        {
            let log = RaftLog::open(dir.path()).unwrap();
            let ents: Vec<Entry> = (3..=6)
                .map(|i| data_entry(i, 3, vec![0; i as usize * 10]))
                .collect();
            let g = fixture(&log, 1, &ents);
            let want: Vec<u64> = ents.iter().map(entry_size).collect();
            // Outside the log: 0.
            assert_eq!(sizes(&g, 2..=7), [vec![0], want.clone(), vec![0]].concat());
            assert_eq!(total(&g, 1, 9), want.iter().sum::<u64>());
            assert_eq!(total(&g, 4, 5), want[1] + want[2]);
            assert_eq!(total(&g, 5, 4), 0);
            // An append from 5 on replaces 5 and 6.
            let newer = data_entry(5, 4, vec![1; 500]);
            write_with(&log, |b| {
                g.stage_append(b, std::slice::from_ref(&newer)).unwrap()
            });
            assert_eq!(
                sizes(&g, 3..=6),
                vec![want[0], want[1], entry_size(&newer), 0]
            );
            g.compact(3).unwrap();
            assert_eq!(sizes(&g, 3..=5), vec![0, want[1], entry_size(&newer)]);
            assert_eq!(total(&g, 1, 9), want[1] + entry_size(&newer));
        }
        // Entries in the log when the group is loaded count 0; new ones their size.
        let log = RaftLog::open(dir.path()).unwrap();
        let g = log.group(1).unwrap();
        let next = data_entry(6, 4, vec![2; 100]);
        write_with(&log, |b| {
            g.stage_append(b, std::slice::from_ref(&next)).unwrap()
        });
        assert_eq!(sizes(&g, 4..=6), vec![0, 0, entry_size(&next)]);
        assert_eq!(total(&g, 1, 6), entry_size(&next));
    }

    #[test]
    fn snapshot_metadata_replaces_the_log() {
        let dir = TempDir::new().unwrap();
        {
            let log = RaftLog::open(dir.path()).unwrap();
            let g = fixture(&log, 1, &ents_3_to(6));
            write_with(&log, |b| g.stage_hard_state(b, &hard(6, 1, 5)).unwrap());

            let mut b = WriteBatch::new();
            g.stage_snapshot_metadata(&mut b, &meta(10, 8, &[1, 2, 3]))
                .unwrap();
            g.stage_append(&mut b, &[new_entry(11, 8), new_entry(12, 8)])
                .unwrap();
            // Nothing is visible before the write.
            assert_eq!(g.first_index(), Ok(3));
            assert_eq!(g.conf_state(), conf(&[1]));
            log.write(&mut b, true).unwrap();

            assert_eq!(g.first_index(), Ok(11));
            assert_eq!(g.last_index(), Ok(12));
            assert_eq!(g.term(10), Ok(8));
            assert_eq!(g.term(9), compacted());
            assert_eq!(g.entries(10, 12, None, ctx()), compacted());
            assert_eq!(all_entries(&g), vec![new_entry(11, 8), new_entry(12, 8)]);
            assert_eq!(g.conf_state(), conf(&[1, 2, 3]));
            assert_eq!(g.hard_state(), hard(8, 1, 10));

            // Out of date: at or below the truncated point.
            let mut b = WriteBatch::new();
            assert!(
                g.stage_snapshot_metadata(&mut b, &meta(10, 8, &[1]))
                    .is_err()
            );
            assert!(
                g.stage_snapshot_metadata(&mut b, &meta(5, 5, &[1]))
                    .is_err()
            );
            // A snapshot inside the log discards the entries after it too (MemStorage).
            g.stage_snapshot_metadata(&mut b, &meta(11, 8, &[1, 2]))
                .unwrap();
            log.write(&mut b, true).unwrap();
            assert_eq!(g.first_index(), Ok(12));
            assert_eq!(g.last_index(), Ok(11));
            assert_eq!(g.term(11), Ok(8));
            assert_eq!(g.term(12), unavailable());
            // The commit never goes backwards; the hard state staged after a snapshot wins.
            write_with(&log, |b| {
                g.stage_snapshot_metadata(b, &meta(20, 9, &[1, 2])).unwrap();
                g.stage_hard_state(b, &hard(10, 2, 20)).unwrap();
                g.stage_append(b, &[new_entry(21, 10)]).unwrap();
            });
            assert_eq!(g.hard_state(), hard(10, 2, 20));
        }
        let log = RaftLog::open(dir.path()).unwrap();
        let g = log.group(1).unwrap();
        assert_eq!(g.first_index(), Ok(21));
        assert_eq!(g.last_index(), Ok(21));
        assert_eq!(g.term(20), Ok(9));
        assert_eq!(all_entries(&g), vec![new_entry(21, 10)]);
        assert_eq!(g.conf_state(), conf(&[1, 2]));
        assert_eq!(g.hard_state(), hard(10, 2, 20));
    }

    #[test]
    fn snapshot_comes_from_the_provider_or_is_temporarily_unavailable() {
        let dir = TempDir::new().unwrap();
        {
            let log = RaftLog::open(dir.path()).unwrap();
            let g = fixture(&log, 1, &ents_3_to(6));
            write_with(&log, |b| g.stage_conf_state(b, &conf(&[1, 2, 3])).unwrap());
            let temporarily = Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
            assert_eq!(g.snapshot(0, 2), temporarily);

            g.set_snapshot_provider(Arc::new(|s: &GroupStorage, _request: u64| {
                let mut snap = Snapshot::default();
                snap.set_metadata(s.snapshot_metadata(5)?);
                snap.data = b"state machine at 5".to_vec().into();
                Ok(snap)
            }));
            let snap = g.snapshot(0, 2).unwrap();
            assert_eq!(snap.get_metadata().index, 5);
            assert_eq!(snap.get_metadata().term, 5);
            assert_eq!(snap.get_metadata().get_conf_state(), &conf(&[1, 2, 3]));
            assert_eq!(&snap.data[..], b"state machine at 5");
            assert_eq!(g.snapshot(5, 2).unwrap(), snap);
            // Older than requested: raft must retry later.
            assert_eq!(g.snapshot(6, 2), temporarily);

            g.set_snapshot_provider(Arc::new(|_: &GroupStorage, _: u64| {
                Err(Error::Internal("store busy".into()))
            }));
            assert_eq!(g.snapshot(0, 2), temporarily);

            assert_eq!(g.snapshot_metadata(2).unwrap().term, 2);
            assert!(g.snapshot_metadata(1).is_err());
            assert!(g.snapshot_metadata(7).is_err());
        }
        // The provider does not keep the engine alive (no reference cycle).
        let log = RaftLog::open(dir.path()).unwrap();
        assert_eq!(log.group(1).unwrap().last_index(), Ok(6));
    }

    #[test]
    fn staged_changes_are_invisible_until_written() {
        let dir = TempDir::new().unwrap();
        {
            let log = RaftLog::open(dir.path()).unwrap();
            let g = log.group(1).unwrap();
            let mut b = WriteBatch::new();
            assert!(b.is_empty());
            g.stage_conf_state(&mut b, &conf(&[1])).unwrap();
            g.stage_append(&mut b, &[new_entry(1, 1), new_entry(2, 1)])
                .unwrap();
            g.stage_hard_state(&mut b, &hard(1, 1, 0)).unwrap();
            g.stage_commit_index(&mut b, 2).unwrap();
            assert!(!b.is_empty());
            assert_eq!(g.last_index(), Ok(0));
            assert_eq!(g.hard_state(), HardState::default());
            assert!(!g.initial_state().unwrap().initialized());
            log.write(&mut b, true).unwrap();
            assert_eq!(g.last_index(), Ok(2));
            // The commit was staged on top of the staged hard state, not the durable one.
            assert_eq!(g.hard_state(), hard(1, 1, 2));
            assert!(g.initial_state().unwrap().initialized());
            // A batch that is dropped unwritten leaves no trace.
            let mut dropped = WriteBatch::new();
            g.stage_append(&mut dropped, &[new_entry(3, 1)]).unwrap();
            drop(dropped);
            assert_eq!(g.last_index(), Ok(2));
        }
        let log = RaftLog::open(dir.path()).unwrap();
        let g = log.group(1).unwrap();
        assert_eq!(g.last_index(), Ok(2));
        assert_eq!(g.hard_state(), hard(1, 1, 2));
    }

    #[test]
    fn failed_write_changes_no_group() {
        let dir = TempDir::new().unwrap();
        {
            let log = RaftLog::open(dir.path()).unwrap();
            let a = log.group(1).unwrap();
            let b_group = log.group(2).unwrap();
            write_with(&log, |b| {
                a.stage_append(b, &[new_entry(1, 1)]).unwrap();
                b_group.stage_append(b, &[new_entry(1, 1)]).unwrap();
            });
            let mut batch = WriteBatch::new();
            a.stage_append(&mut batch, &[new_entry(2, 1)]).unwrap();
            a.stage_hard_state(&mut batch, &hard(1, 0, 1)).unwrap();
            b_group
                .stage_append(&mut batch, &[new_entry(2, 1)])
                .unwrap();
            log.remove_group(2).unwrap();
            assert!(matches!(
                log.write(&mut batch, true),
                Err(Error::NotFound(_))
            ));
            assert!(batch.is_empty());
            assert_eq!(a.last_index(), Ok(1), "nothing of the batch is visible");
            assert_eq!(a.hard_state(), HardState::default());
            // Stale handles on the removed group fail instead of serving old state.
            assert!(b_group.last_index().is_err());
            assert!(b_group.term(1).is_err());
            assert!(b_group.compact(1).is_err());
            let mut batch = WriteBatch::new();
            assert!(matches!(
                b_group.stage_append(&mut batch, &[new_entry(2, 1)]),
                Err(Error::NotFound(_))
            ));
            // The group can start afresh.
            assert_eq!(log.group(2).unwrap().last_index(), Ok(0));
        }
        let log = RaftLog::open(dir.path()).unwrap();
        assert_eq!(log.groups().unwrap(), vec![1]);
        let a = log.group(1).unwrap();
        assert_eq!(a.last_index(), Ok(1));
        assert_eq!(a.hard_state(), HardState::default());
    }

    #[test]
    fn state_of_many_groups_survives_reopen_without_shutdown() {
        let dir = TempDir::new().unwrap();
        let ids = [3u64, 7, 11, 1000];
        let mut expected = BTreeMap::new();
        {
            let log = RaftLog::open(dir.path()).unwrap();
            let groups: Vec<_> = ids.iter().map(|&id| log.group(id).unwrap()).collect();
            // One batch, several groups, each with its own log length and states.
            write_with(&log, |b| {
                for (n, g) in groups.iter().enumerate() {
                    let n = n as u64;
                    let entries: Vec<Entry> = (1..=10 + n * 5)
                        .map(|i| {
                            data_entry(i, 1 + i / 4, format!("g{} e{i}", g.group_id()).into_bytes())
                        })
                        .collect();
                    g.stage_conf_state(b, &conf(&[1, 2, 3 + n])).unwrap();
                    g.stage_append(b, &entries).unwrap();
                    g.stage_hard_state(b, &hard(5 + n, 1 + n % 3, 4 + n))
                        .unwrap();
                }
            });
            for g in &groups {
                expected.insert(
                    g.group_id(),
                    (
                        g.initial_state().unwrap(),
                        g.first_index().unwrap(),
                        g.last_index().unwrap(),
                        all_entries(g),
                    ),
                );
            }
            // Dropped here with no shutdown of any kind.
        }
        let log = RaftLog::open(dir.path()).unwrap();
        assert_eq!(log.groups().unwrap(), ids.to_vec());
        for (&id, (state, first, last, entries)) in &expected {
            let g = log.group(id).unwrap();
            let got = g.initial_state().unwrap();
            assert_eq!(got.hard_state, state.hard_state, "group {id}");
            assert_eq!(got.conf_state, state.conf_state, "group {id}");
            assert!(got.initialized());
            assert_eq!(g.first_index(), Ok(*first));
            assert_eq!(g.last_index(), Ok(*last));
            assert_eq!(&all_entries(&g), entries, "group {id}");
            assert_eq!(g.term(*last), Ok(entries.last().unwrap().term));
        }
        assert_eq!(expected[&1000].2, 25);
    }

    #[test]
    fn compaction_and_removal_survive_reopen() {
        let dir = TempDir::new().unwrap();
        let entries: Vec<Entry> = (1..=20).map(|i| new_entry(i, 1 + i / 7)).collect();
        {
            let log = RaftLog::open(dir.path()).unwrap();
            let (a, b) = (log.group(1).unwrap(), log.group(2).unwrap());
            write_with(&log, |batch| {
                for g in [&a, &b] {
                    g.stage_append(batch, &entries).unwrap();
                    g.stage_hard_state(batch, &hard(3, 1, 20)).unwrap();
                }
            });
            a.compact(10).unwrap();
            log.remove_group(2).unwrap();
            log.remove_group(77).unwrap(); // never written: nothing to remove
            assert_eq!(log.groups().unwrap(), vec![1]);
        }
        let log = RaftLog::open(dir.path()).unwrap();
        assert_eq!(log.groups().unwrap(), vec![1]);
        let a = log.group(1).unwrap();
        assert_eq!(a.first_index(), Ok(11));
        assert_eq!(a.last_index(), Ok(20));
        assert_eq!(a.term(10), Ok(entries[9].term));
        assert_eq!(a.term(9), compacted());
        assert_eq!(a.entries(10, 12, None, ctx()), compacted());
        assert_eq!(all_entries(&a), entries[10..].to_vec());
        let b = log.group(2).unwrap();
        assert_eq!(b.last_index(), Ok(0));
        assert_eq!(b.hard_state(), HardState::default());
        assert!(!b.initial_state().unwrap().initialized());
    }

    #[test]
    fn concurrent_readers_never_see_engine_and_cache_disagree() {
        let dir = TempDir::new().unwrap();
        // A cache of about two entries: most reads go to the engine.
        let log = RaftLog::open_with_cache(dir.path(), 2 * 64).unwrap();
        let g = log.group(1).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (g, stop) = (g.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let last = g.last_index().unwrap();
                        let low = last.saturating_sub(7 + r).max(1);
                        for res in [
                            g.entries(low, last + 1, None, ctx()),
                            g.entries(low, last + 1, Some(100), ctx()),
                        ] {
                            match res {
                                Ok(ents) => {
                                    for (i, e) in ents.iter().enumerate() {
                                        assert_eq!(e.index, low + i as u64);
                                        assert_eq!(
                                            &e.data[..],
                                            format!("{}@{}", e.index, e.term).as_bytes()
                                        );
                                    }
                                    reads += 1;
                                }
                                // The log moved between the two calls: legitimate.
                                Err(raft::Error::Store(StorageError::Compacted))
                                | Err(raft::Error::Store(StorageError::Unavailable)) => {}
                                Err(e) => panic!("inconsistent read: {e}"),
                            }
                        }
                        match g.term(low) {
                            Ok(_)
                            | Err(raft::Error::Store(StorageError::Compacted))
                            | Err(raft::Error::Store(StorageError::Unavailable)) => {}
                            Err(e) => panic!("inconsistent term: {e}"),
                        }
                    }
                    reads
                })
            })
            .collect();
        let entry = |i: u64, t: u64| data_entry(i, t, format!("{i}@{t}").into_bytes());
        let mut last = 0;
        for round in 1..=300u64 {
            // Append 4, then every third round overwrite the last 2 with a newer term.
            write_with(&log, |b| {
                let ents: Vec<Entry> = (last + 1..=last + 4).map(|i| entry(i, round)).collect();
                g.stage_append(b, &ents).unwrap();
            });
            last += 4;
            if round % 3 == 0 {
                write_with(&log, |b| {
                    g.stage_append(b, &[entry(last - 1, round + 1), entry(last, round + 1)])
                        .unwrap();
                });
            }
            if round % 10 == 0 {
                g.compact(last - 6).unwrap();
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        assert_eq!(g.last_index(), Ok(1200));
        assert_eq!(g.first_index(), Ok(1195));
    }

    /// Bytes that LZ4 cannot shrink much.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    fn stage_round(log: &RaftLog, round: u64, sync: bool) {
        let mut b = WriteBatch::new();
        for id in 1..=3 {
            let g = log.group(id).unwrap();
            let entries: Vec<Entry> = (round * 5 + 1..=round * 5 + 5)
                .map(|i| data_entry(i, round + 1, noise(id * 1000 + i, 2048)))
                .collect();
            g.stage_append(&mut b, &entries).unwrap();
            g.stage_hard_state(&mut b, &hard(round + 1, id, round * 5 + 5))
                .unwrap();
        }
        log.write(&mut b, sync).unwrap();
    }

    fn append_file(dir: &Path) -> PathBuf {
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files.into_iter().next().unwrap()
    }

    /// Where the written data of the (preallocated, zero-filled) log file ends.
    fn data_end(file: &Path) -> usize {
        let bytes = std::fs::read(file).unwrap();
        bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
    }

    #[test]
    fn one_write_for_three_groups_is_all_or_nothing() {
        // All: after a synced write and a crash, every group has its part.
        let dir = TempDir::new().unwrap();
        {
            let log = RaftLog::open(dir.path()).unwrap();
            stage_round(&log, 0, true);
            stage_round(&log, 1, true);
        }
        let log = RaftLog::open(dir.path()).unwrap();
        assert_eq!(log.groups().unwrap(), vec![1, 2, 3]);
        for id in 1..=3 {
            let g = log.group(id).unwrap();
            assert_eq!(g.last_index(), Ok(10));
            assert_eq!(g.hard_state(), hard(2, id, 10));
            let entries = all_entries(&g);
            assert_eq!(
                entries[9].data.as_ref(),
                noise(id * 1000 + 10, 2048).as_slice()
            );
        }
        drop(log);

        // Nothing: the same write torn in the middle (a crash while it was being written)
        // is dropped for all three groups on recovery.
        let dir = TempDir::new().unwrap();
        let (before, after) = {
            let log = RaftLog::open(dir.path()).unwrap();
            stage_round(&log, 0, true);
            let before = data_end(&append_file(dir.path()));
            stage_round(&log, 1, true);
            (before, data_end(&append_file(dir.path())))
        };
        assert!(after > before + 3 * 5 * 2048 / 2, "{before}..{after}");
        let file = append_file(dir.path());
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[(before + after) / 2] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();

        let log = RaftLog::open(dir.path()).unwrap();
        for id in 1..=3 {
            let g = log.group(id).unwrap();
            assert_eq!(g.last_index(), Ok(5), "group {id}");
            assert_eq!(g.hard_state(), hard(1, id, 5), "group {id}");
            assert_eq!(all_entries(&g).len(), 5);
        }
        // And the log goes on from there.
        stage_round(&log, 1, true);
        assert_eq!(log.group(2).unwrap().last_index(), Ok(10));
    }

    // ---- Driving real raft-rs nodes -------------------------------------------------

    const GROUP: u64 = 42;

    fn logger() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    fn raft_config(id: u64) -> raft::Config {
        let cfg = raft::Config {
            id,
            election_tick: 10,
            heartbeat_tick: 3,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        cfg.validate().unwrap();
        cfg
    }

    /// The replica's state machine: the proposals applied, in order.
    #[derive(Default)]
    struct StateMachine {
        applied: u64,
        values: Vec<Vec<u8>>,
    }

    fn encode_values(values: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    fn decode_values(mut data: &[u8]) -> Vec<Vec<u8>> {
        let mut values = Vec::new();
        while !data.is_empty() {
            let len = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
            values.push(data[4..4 + len].to_vec());
            data = &data[4 + len..];
        }
        values
    }

    struct Replica {
        log: RaftLog,
        storage: GroupStorage,
        node: RawNode<GroupStorage>,
        sm: Arc<Mutex<StateMachine>>,
    }

    impl Replica {
        /// Opens the node's Raft log in `dir`, bootstraps the group with `voters` if it has
        /// no state yet, and starts a RawNode on it (state machine rebuilt from the log).
        fn start(id: u64, dir: &Path, voters: &[u64]) -> Replica {
            let log = RaftLog::open(dir).unwrap();
            let storage = log.group(GROUP).unwrap();
            if !storage.initial_state().unwrap().initialized() {
                write_with(&log, |b| {
                    storage.stage_conf_state(b, &conf(voters)).unwrap()
                });
            }
            let sm = Arc::new(Mutex::new(StateMachine::default()));
            let provider_sm = Arc::clone(&sm);
            storage.set_snapshot_provider(Arc::new(move |s: &GroupStorage, _request| {
                let sm = provider_sm.lock().unwrap();
                let mut snap = Snapshot::default();
                snap.set_metadata(s.snapshot_metadata(sm.applied)?);
                snap.data = encode_values(&sm.values).into();
                Ok(snap)
            }));
            let node = RawNode::new(&raft_config(id), storage.clone(), &logger()).unwrap();
            Replica {
                log,
                storage,
                node,
                sm,
            }
        }

        fn apply(&self, entries: Vec<Entry>) {
            let mut sm = self.sm.lock().unwrap();
            for e in entries {
                if e.index <= sm.applied {
                    continue;
                }
                if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                    sm.values.push(e.data.to_vec());
                }
                sm.applied = e.index;
            }
        }

        /// Handles one Ready in the order raft-rs documents; returns the messages to send.
        fn handle_ready(&mut self) -> Vec<Message> {
            let mut out = Vec::new();
            if !self.node.has_ready() {
                return out;
            }
            let mut ready = self.node.ready();
            // 1. A leader may send before persisting.
            out.extend(ready.take_messages());
            let mut batch = WriteBatch::new();
            // 2. Snapshot: storage metadata + state machine.
            if !ready.snapshot().is_empty() {
                let snap = ready.snapshot().clone();
                self.storage
                    .stage_snapshot_metadata(&mut batch, snap.get_metadata())
                    .unwrap();
                let mut sm = self.sm.lock().unwrap();
                sm.values = decode_values(&snap.data);
                sm.applied = snap.get_metadata().index;
            }
            // 3. Committed entries.
            self.apply(ready.take_committed_entries());
            // 4. New entries and hard state, persisted together.
            self.storage
                .stage_append(&mut batch, ready.entries())
                .unwrap();
            if let Some(hs) = ready.hs() {
                self.storage.stage_hard_state(&mut batch, hs).unwrap();
            }
            self.log.write(&mut batch, ready.must_sync()).unwrap();
            // 5. Messages that had to wait for persistence.
            out.extend(ready.take_persisted_messages());
            // 6. Advance, then the light ready.
            let mut light = self.node.advance(ready);
            if let Some(commit) = light.commit_index() {
                let mut batch = WriteBatch::new();
                self.storage.stage_commit_index(&mut batch, commit).unwrap();
                self.log.write(&mut batch, false).unwrap();
            }
            out.extend(light.take_messages());
            self.apply(light.take_committed_entries());
            self.node.advance_apply();
            out
        }

        fn values(&self) -> Vec<Vec<u8>> {
            self.sm.lock().unwrap().values.clone()
        }

        fn is_leader(&self) -> bool {
            self.node.raft.state == StateRole::Leader
        }
    }

    /// Replicas wired by hand: messages are delivered in memory (except to or from an
    /// isolated node).
    struct Cluster {
        dirs: BTreeMap<u64, TempDir>,
        replicas: BTreeMap<u64, Replica>,
        isolated: Option<u64>,
    }

    impl Cluster {
        fn new(ids: &[u64]) -> Cluster {
            let dirs: BTreeMap<u64, TempDir> = ids
                .iter()
                .map(|&id| (id, TempDir::new().unwrap()))
                .collect();
            let mut cluster = Cluster {
                dirs,
                replicas: BTreeMap::new(),
                isolated: None,
            };
            cluster.start_all();
            cluster
        }

        fn start_all(&mut self) {
            let ids: Vec<u64> = self.dirs.keys().copied().collect();
            for (&id, dir) in &self.dirs {
                self.replicas
                    .insert(id, Replica::start(id, dir.path(), &ids));
            }
        }

        /// Simulates a crash of every node (no shutdown) and restarts them from disk.
        fn restart_all(&mut self) {
            self.replicas.clear();
            self.start_all();
        }

        fn node(&mut self, id: u64) -> &mut Replica {
            self.replicas.get_mut(&id).unwrap()
        }

        /// Handles Readies and delivers messages until nothing moves.
        fn pump(&mut self) {
            for _ in 0..10_000 {
                let mut msgs = Vec::new();
                for r in self.replicas.values_mut() {
                    msgs.extend(r.handle_ready());
                }
                if msgs.is_empty() && !self.replicas.values().any(|r| r.node.has_ready()) {
                    return;
                }
                for m in msgs {
                    if self.isolated.is_some_and(|id| id == m.to || id == m.from) {
                        continue;
                    }
                    let (from, to) = (m.from, m.to);
                    let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
                    self.node(to).node.step(m).unwrap();
                    if is_snapshot {
                        self.node(from)
                            .node
                            .report_snapshot(to, SnapshotStatus::Finish);
                    }
                }
            }
            panic!("the cluster did not settle");
        }

        fn elect(&mut self, id: u64) {
            self.node(id).node.campaign().unwrap();
            self.pump();
            assert!(self.node(id).is_leader(), "node {id} should lead");
        }

        fn propose(&mut self, leader: u64, from: usize, count: usize) {
            for i in from..from + count {
                self.node(leader)
                    .node
                    .propose(vec![], format!("value {i}").into_bytes())
                    .unwrap();
                if i % 10 == 9 {
                    self.pump();
                }
            }
            self.pump();
        }

        fn heartbeat(&mut self, leader: u64) {
            for _ in 0..3 {
                self.node(leader).node.tick();
            }
            self.pump();
        }
    }

    fn expected_values(count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| format!("value {i}").into_bytes())
            .collect()
    }

    #[test]
    fn raw_node_single_voter_restarts_from_disk() {
        let mut cluster = Cluster::new(&[1]);
        cluster.elect(1);
        cluster.propose(1, 0, 100);
        let r = cluster.node(1);
        assert_eq!(r.values(), expected_values(100));
        // Index 1 is the new leader's empty entry.
        assert_eq!(r.storage.last_index(), Ok(101));
        let hs = r.storage.hard_state();
        assert_eq!((hs.term, hs.vote, hs.commit), (1, 1, 101));
        let entries = all_entries(&r.storage);

        cluster.restart_all();
        cluster.pump(); // re-applies the committed log
        let r = cluster.node(1);
        assert_eq!(r.storage.hard_state(), hs);
        assert_eq!(r.storage.initial_state().unwrap().hard_state, hs);
        assert_eq!(all_entries(&r.storage), entries);
        assert_eq!(r.values(), expected_values(100));
        assert!(!r.is_leader());

        cluster.elect(1);
        cluster.propose(1, 100, 10);
        let r = cluster.node(1);
        assert_eq!(r.node.raft.term, 2);
        assert_eq!(r.storage.last_index(), Ok(112));
        assert_eq!(r.storage.hard_state().commit, 112);
        assert_eq!(r.values(), expected_values(110));
    }

    #[test]
    fn three_raw_nodes_replicate_restart_and_elect_a_new_leader() {
        let ids = [1, 2, 3];
        let mut cluster = Cluster::new(&ids);
        cluster.elect(1);
        cluster.propose(1, 0, 100);
        let mut before = BTreeMap::new();
        for id in ids {
            let r = cluster.node(id);
            assert_eq!(r.values(), expected_values(100), "node {id}");
            assert_eq!(r.storage.last_index(), Ok(101));
            before.insert(id, (r.storage.hard_state(), all_entries(&r.storage)));
        }
        assert_eq!(before[&1].1, before[&2].1);
        assert_eq!(before[&1].1, before[&3].1);
        let old_term = cluster.node(1).node.raft.term;

        cluster.restart_all();
        for id in ids {
            let r = cluster.node(id);
            let (hs, entries) = &before[&id];
            assert_eq!(&r.storage.hard_state(), hs, "node {id}");
            assert_eq!(&r.storage.initial_state().unwrap().hard_state, hs);
            assert_eq!(r.storage.conf_state(), conf(&ids));
            assert_eq!(&all_entries(&r.storage), entries, "node {id}");
        }
        cluster.pump();

        cluster.elect(2);
        assert!(cluster.node(2).node.raft.term > old_term);
        cluster.propose(2, 100, 20);
        let leader_log = all_entries(&cluster.node(2).storage);
        assert_eq!(leader_log.len(), 122);
        for id in ids {
            let r = cluster.node(id);
            assert_eq!(r.values(), expected_values(120), "node {id}");
            assert_eq!(all_entries(&r.storage), leader_log, "node {id}");
            assert_eq!(r.storage.hard_state().commit, 122);
        }
    }

    #[test]
    fn lagging_follower_catches_up_through_a_snapshot() {
        let ids = [1, 2, 3];
        let mut cluster = Cluster::new(&ids);
        cluster.elect(1);
        cluster.propose(1, 0, 20);
        cluster.isolated = Some(3);
        cluster.propose(1, 20, 50);
        for id in [1, 2] {
            let r = cluster.node(id);
            let applied = r.sm.lock().unwrap().applied;
            assert_eq!(applied, 71);
            r.storage.compact(applied).unwrap();
            assert_eq!(r.storage.first_index(), Ok(72));
        }
        assert_eq!(cluster.node(3).values(), expected_values(20));

        cluster.isolated = None;
        cluster.propose(1, 70, 1);
        for _ in 0..5 {
            cluster.heartbeat(1);
        }
        let r = cluster.node(3);
        assert_eq!(r.values(), expected_values(71));
        // Node 3's log now starts after the snapshot it installed.
        let first = r.storage.first_index().unwrap();
        assert!(first > 22, "first index {first}");
        assert_eq!(r.storage.last_index(), Ok(72));
        assert_eq!(r.storage.term(first - 1), Ok(1));
        let (hs, entries) = (r.storage.hard_state(), all_entries(&r.storage));
        assert_eq!(hs.commit, 72);

        // And that survives a restart of its log.
        let dir = cluster.dirs[&3].path().to_path_buf();
        cluster.replicas.remove(&3);
        let log = RaftLog::open(&dir).unwrap();
        let g = log.group(GROUP).unwrap();
        assert_eq!(g.first_index(), Ok(first));
        assert_eq!(g.hard_state(), hs);
        assert_eq!(all_entries(&g), entries);
        assert_eq!(g.conf_state(), conf(&ids));
    }

    /// Writes `writes` batches to group 1 of a new log in `dir`, one entry and a hard state
    /// each, closes the log and returns its only file.
    fn log_file_with_writes(dir: &Path, writes: u64) -> PathBuf {
        {
            let log = RaftLog::open(dir).unwrap();
            let g = log.group(1).unwrap();
            for i in 1..=writes {
                write_with(&log, |b| {
                    g.stage_append(b, &[data_entry(i, 1, vec![i as u8; 300])])
                        .unwrap();
                    g.stage_hard_state(b, &hard(1, 1, i)).unwrap();
                });
            }
        }
        append_file(dir)
    }

    /// Where the written data in the bytes of a log file ends (what follows is zeros).
    fn bytes_end(bytes: &[u8]) -> usize {
        bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
    }

    fn last_index_after_reopen(dir: &Path) -> Result<u64> {
        let log = RaftLog::open(dir)?;
        let last = log.group(1)?.last_index().unwrap();
        Ok(last)
    }

    #[test]
    fn crc32_is_the_ieee_checksum() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_damaged_last_write_is_dropped_on_reopen() {
        // Cut short, overwritten, or followed by space allocated ahead (zeros).
        type Damage = fn(&mut Vec<u8>);
        let cases: [(&str, Damage, u64); 4] = [
            ("cut short", |b| b.truncate(bytes_end(b) - 10), 9),
            (
                "overwritten",
                |b| {
                    let end = bytes_end(b);
                    b[end - 12..end - 4].iter_mut().for_each(|x| *x = !*x);
                },
                9,
            ),
            (
                "its header overwritten",
                |b| {
                    // The first file's batches are signed with its sequence number, 1.
                    let (mut at, mut last) = (LOG_FILE_MAGIC.len() + 16, 0);
                    while let Some(len) = intact_batch(b, at, Some(1)) {
                        (last, at) = (at, at + len);
                    }
                    b[last..last + 8].iter_mut().for_each(|x| *x = !*x);
                },
                9,
            ),
            ("followed by zeros", |b| b.resize(b.len() + 4096, 0), 10),
        ];
        for (what, damage, last) in cases {
            let dir = TempDir::new().unwrap();
            let file = log_file_with_writes(dir.path(), 10);
            let mut bytes = std::fs::read(&file).unwrap();
            damage(&mut bytes);
            std::fs::write(&file, &bytes).unwrap();
            assert_eq!(last_index_after_reopen(dir.path()).unwrap(), last, "{what}");
        }
    }

    #[test]
    fn damage_before_the_last_write_fails_the_open_and_changes_nothing() {
        type Place = fn(usize) -> usize;
        let places: [(&str, Place); 3] = [
            ("the middle", |end| end / 2),
            ("the first batch", |_| LOG_FILE_MAGIC.len() + 16 + 20),
            ("the file header", |_| 3),
        ];
        for (what, place) in places {
            let dir = TempDir::new().unwrap();
            let file = log_file_with_writes(dir.path(), 10);
            let mut bytes = std::fs::read(&file).unwrap();
            let at = place(bytes_end(&bytes));
            bytes[at..at + 16].iter_mut().for_each(|x| *x = !*x);
            std::fs::write(&file, &bytes).unwrap();
            let err = last_index_after_reopen(dir.path()).unwrap_err();
            let name = file.file_name().unwrap().to_str().unwrap();
            assert!(
                matches!(&err, Error::Storage { reason, .. } if reason.contains(name)),
                "{what}: {err}"
            );
            assert_eq!(std::fs::read(&file).unwrap(), bytes, "{what}: file changed");
        }
    }
}
