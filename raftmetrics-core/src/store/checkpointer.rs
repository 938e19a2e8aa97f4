//! Checkpoints a DuckDB file from a thread of its own, so that no write runs one.
//!
//! DuckDB folds what it committed into the database file in a checkpoint, by default in
//! the commit that takes its write-ahead log past 16 MiB: that write then paid for the
//! whole checkpoint (a few hundred milliseconds with 10 million points stored). Here a
//! thread of the store checkpoints instead, when [`Trigger`] says enough is waiting;
//! DuckDB's own automatic checkpoint stays as a backstop at a larger size
//! ([`BACKSTOP_WAL_AUTOCHECKPOINT`]). A commit that arrives while a checkpoint runs still
//! waits for DuckDB's locks (see docs/benchmarks.md); how long each checkpoint took is
//! logged at debug level.
//!
//! A store behind a log (a Raft replica, ADR 017) has DuckDB write no log of its own: what
//! it commits is saved by the next checkpoint, and [`Saved`] records, per partition, the
//! applied index that checkpoint saved, which is how far the log in front may be compacted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use duckdb::Connection;

use crate::partition::PartitionId;

/// Log size past which the thread checkpoints a store with DuckDB's log.
pub const WAL_THRESHOLD_BYTES: u64 = 16 * 1024 * 1024;
/// Rows (plus one per write) committed since the last checkpoint past which the thread
/// checkpoints a store behind a log: about what 16 MiB of DuckDB's log held for small
/// transactions (25 bytes a point). Large appends logged less per point, so under large
/// batches checkpoints now come more often than with the log (docs/benchmarks.md, fix 17);
/// 2,560,000 rows measured no better.
pub const UNSAVED_ROWS_THRESHOLD: u64 = 640_000;
/// A store behind a log with anything unsaved is checkpointed at least this often, so that
/// a crash replays little.
pub const SAVE_AT_LEAST_EVERY: Duration = Duration::from_secs(30);
/// A store behind a log with anything unsaved is checkpointed once nothing more was
/// committed for this long: when a burst of writes ends, its log in front can be compacted
/// and its files deleted soon after, rather than the disk holding the points twice until
/// [`SAVE_AT_LEAST_EVERY`] (docs/benchmarks.md, fix 20).
pub const SAVE_WHEN_QUIET_FOR: Duration = Duration::from_secs(2);
/// DuckDB's own automatic checkpoint, for when the thread falls behind.
pub const BACKSTOP_WAL_AUTOCHECKPOINT: &str = "256MB";
/// Unsaved rows of a store behind a log past which its writer checkpoints itself, for when
/// the thread falls behind (DuckDB's automatic checkpoint counts its log, which such a
/// store does not write): four times [`UNSAVED_ROWS_THRESHOLD`].
pub const BACKSTOP_UNSAVED_ROWS: u64 = 4 * UNSAVED_ROWS_THRESHOLD;
/// How often the thread looks at what is waiting.
const POLL: Duration = Duration::from_millis(100);

/// When the thread checkpoints.
pub enum Trigger {
    /// DuckDB logs every commit to this write-ahead log file: checkpoint once it holds
    /// [`WAL_THRESHOLD_BYTES`].
    WalFile(PathBuf),
    /// DuckDB logs nothing (a store behind a log): checkpoint once [`UNSAVED_ROWS_THRESHOLD`]
    /// rows wait, anything has waited [`SAVE_AT_LEAST_EVERY`], or nothing was committed for
    /// [`SAVE_WHEN_QUIET_FOR`] after something was.
    Unsaved(Arc<Saved>),
}

/// What the checkpoints of a store behind a log have saved.
pub struct Saved {
    /// Held across a checkpoint and the recording of what it saved, so that the thread's
    /// checkpoints and those a store runs itself (after an import or a drop) never
    /// interleave.
    one_at_a_time: Mutex<()>,
    /// Per partition, the applied index the last checkpoint saved.
    durable: RwLock<HashMap<PartitionId, u64>>,
    /// Rows (plus one per write) committed since the last checkpoint began.
    unsaved: AtomicU64,
    /// The store's committed applied indexes.
    applied: Arc<RwLock<HashMap<PartitionId, u64>>>,
}

impl Saved {
    /// For a store whose file holds everything it committed so far (just checkpointed).
    pub fn new(applied: Arc<RwLock<HashMap<PartitionId, u64>>>) -> Self {
        let durable = applied.read().map(|a| a.clone()).unwrap_or_default();
        Saved {
            one_at_a_time: Mutex::new(()),
            durable: RwLock::new(durable),
            unsaved: AtomicU64::new(0),
            applied,
        }
    }

    /// The applied index of `partition` the last checkpoint saved (0 when none).
    pub fn durable_index(&self, partition: PartitionId) -> u64 {
        let durable = self.durable.read().unwrap_or_else(|p| p.into_inner());
        durable.get(&partition).copied().unwrap_or(0)
    }

    /// Counts a committed write of `rows` rows.
    pub fn committed(&self, rows: u64) {
        self.unsaved
            .fetch_add(rows.saturating_add(1), Ordering::SeqCst);
    }

    /// Rows (plus one per write) committed since the last checkpoint began.
    pub fn unsaved(&self) -> u64 {
        self.unsaved.load(Ordering::SeqCst)
    }

    /// Checkpoints the database through `conn` and records what that saved: every applied
    /// index committed before it began. An index committed while it runs may be saved too,
    /// but is only recorded by the next one.
    pub fn checkpoint(&self, conn: &Connection) -> duckdb::Result<()> {
        self.checkpoint_with(conn, "CHECKPOINT")
    }

    /// [`Saved::checkpoint`] that waits for the write transactions of other connections
    /// to finish instead of being refused by them (`FORCE CHECKPOINT`): for the saves that
    /// must happen before their caller returns (a partition dropped or imported, the store
    /// closed), which hold the writer lock, so no new write begins meanwhile.
    pub fn checkpoint_waiting(&self, conn: &Connection) -> duckdb::Result<()> {
        self.checkpoint_with(conn, "FORCE CHECKPOINT")
    }

    fn checkpoint_with(&self, conn: &Connection, statement: &str) -> duckdb::Result<()> {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        let committed = self
            .applied
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let rows = self.unsaved();
        conn.execute_batch(statement)?;
        *self.durable.write().unwrap_or_else(|p| p.into_inner()) = committed;
        self.unsaved.fetch_sub(rows, Ordering::SeqCst);
        Ok(())
    }
}

/// The checkpointing thread; stopped and joined on drop.
pub struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database of `conn` (a connection of its own).
    pub fn start(conn: Connection, trigger: Trigger) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("duckdb-checkpoint".into())
            .spawn(move || {
                crate::priority::lower_current_thread();
                run(&conn, &trigger, &flag)
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

fn run(conn: &Connection, trigger: &Trigger, stop: &(Mutex<bool>, Condvar)) {
    let (lock, wake) = stop;
    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut last = Instant::now();
    // The unsaved count at the last poll, and since when it has not moved.
    let mut quiet = (0u64, Instant::now());
    loop {
        stopped = wake
            .wait_timeout(stopped, POLL)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if *stopped {
            return;
        }
        let waiting = match trigger {
            Trigger::WalFile(wal) => {
                let size = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
                (size >= WAL_THRESHOLD_BYTES).then_some(size)
            }
            Trigger::Unsaved(saved) => {
                let rows = saved.unsaved();
                if rows != quiet.0 {
                    quiet = (rows, Instant::now());
                }
                (rows >= UNSAVED_ROWS_THRESHOLD
                    || (rows > 0
                        && (last.elapsed() >= SAVE_AT_LEAST_EVERY
                            || quiet.1.elapsed() >= SAVE_WHEN_QUIET_FOR)))
                    .then_some(rows)
            }
        };
        let Some(waiting) = waiting else { continue };
        // Not under the stop lock: a drop waits for at most this one checkpoint.
        drop(stopped);
        let started = Instant::now();
        let done = match trigger {
            Trigger::WalFile(_) => conn.execute_batch("CHECKPOINT"),
            Trigger::Unsaved(saved) => saved.checkpoint(conn),
        };
        match done {
            Ok(()) => {
                last = Instant::now();
                tracing::debug!(
                    waiting,
                    took_ms = started.elapsed().as_millis() as u64,
                    "checkpointed"
                )
            }
            // A write in progress can make DuckDB refuse; the next poll tries again.
            Err(e) => tracing::debug!(error = %e, "checkpoint deferred"),
        }
        stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
