//! Checkpoints a DuckDB file from a thread of its own, so that no write runs one.
//!
//! DuckDB folds its write-ahead log into the database file in a checkpoint, by default in
//! the commit that takes the log past 16 MiB: that write then paid for the whole checkpoint
//! (a few hundred milliseconds with 10 million points stored). Here a thread of the store
//! checkpoints whenever the log has grown past [`WAL_THRESHOLD_BYTES`]; DuckDB's own
//! automatic checkpoint stays as a backstop at a larger size
//! ([`BACKSTOP_WAL_AUTOCHECKPOINT`]). A commit that arrives while a checkpoint runs still
//! waits for DuckDB's locks (see docs/benchmarks.md); how long each checkpoint took is
//! logged at debug level.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use duckdb::Connection;

/// Log size past which the thread checkpoints.
pub const WAL_THRESHOLD_BYTES: u64 = 16 * 1024 * 1024;
/// DuckDB's own automatic checkpoint, for when the thread falls behind.
pub const BACKSTOP_WAL_AUTOCHECKPOINT: &str = "256MB";
/// How often the thread looks at the log's size.
const POLL: Duration = Duration::from_millis(100);

/// The checkpointing thread; stopped and joined on drop.
pub struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database of `conn` (a connection of its own), whose
    /// write-ahead log is `wal`.
    pub fn start(conn: Connection, wal: PathBuf) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("duckdb-checkpoint".into())
            .spawn(move || {
                crate::priority::lower_current_thread();
                run(&conn, &wal, &flag)
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

fn run(conn: &Connection, wal: &std::path::Path, stop: &(Mutex<bool>, Condvar)) {
    let (lock, wake) = stop;
    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        stopped = wake
            .wait_timeout(stopped, POLL)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if *stopped {
            return;
        }
        let size = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
        if size < WAL_THRESHOLD_BYTES {
            continue;
        }
        // Not under the stop lock: a drop waits for at most this one checkpoint.
        drop(stopped);
        let started = std::time::Instant::now();
        match conn.execute_batch("CHECKPOINT") {
            Ok(()) => tracing::debug!(
                wal_bytes = size,
                took_ms = started.elapsed().as_millis() as u64,
                "checkpointed"
            ),
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
