//! The apply stage of a node: a thread of its own that writes committed entries to the store
//! and answers the proposals they complete.
//!
//! The raft loop hands over committed entries once the log holds them durably, and goes on
//! persisting and replicating while the store writes. Whatever waits when the applier is
//! free again becomes one store transaction, so that a transaction's fixed cost (DuckDB's
//! appender flush and commit) is shared by as many entries as arrived meanwhile, up to a
//! bound. Hand-overs are applied in the order they were made, which is each group's log
//! order.
//!
//! A hand-over is urgent when someone waits for it: a proposal's caller, or a group this
//! node leads (linearizable reads are served by leaders). Entries only followed here wait up
//! to [`LAZY_WAIT`] for more to join them, and go with the next urgent one at the latest, so a
//! follower's store trails its log by at most that much and pays one transaction for what
//! would otherwise be several.
//!
//! The applier never waits for the loop: it publishes how far each group is applied in
//! [`Progress`] and nudges the loop with a command it may drop (the loop also looks at every
//! iteration). The loop waits for the applier only on a full queue (backpressure) and at a
//! [`Applier::barrier`], before it replaces or drops a partition's data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::entry::LogEntry;
use crate::error::{Error, Result};
use crate::partition::PartitionId;
use crate::store::{PartitionWrite, Store};

/// Hand-overs the queue holds before the loop waits (each is one loop pass's entries).
const QUEUE_CAPACITY: usize = 256;
/// Most records in one store transaction; what is left waits for the next.
const MAX_RECORDS_PER_TRANSACTION: usize = 200_000;
/// Most hand-overs in one store transaction.
const MAX_HANDOVERS_PER_TRANSACTION: usize = 64;
/// How long entries nobody waits for may wait for others to share their transaction.
pub(super) const LAZY_WAIT: Duration = Duration::from_millis(20);

pub(super) type Reply = oneshot::Sender<Result<u64>>;

/// A committed entry to apply, with the callers waiting for it.
pub(super) struct Applying {
    pub group: PartitionId,
    pub index: u64,
    /// Empty for conf changes and empty entries: they only advance the applied index.
    pub entry: LogEntry,
    pub replies: Vec<Reply>,
}

enum Task {
    Apply {
        entries: Vec<Applying>,
        urgent: bool,
    },
    /// Answered once everything handed over before it is applied.
    Barrier(std::sync::mpsc::SyncSender<()>),
}

/// How far the applier got, read by the loop.
#[derive(Default)]
pub(super) struct Progress {
    /// Per group, the newest applied index not yet taken by the loop.
    pub applied: HashMap<PartitionId, u64>,
    /// Set when a store write failed; the applier has stopped.
    pub failed: Option<String>,
}

pub(super) struct Applier {
    tx: Option<SyncSender<Task>>,
    progress: Arc<Mutex<Progress>>,
    abort: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Applier {
    /// Starts the applier of node `id`; `wake` is called (it must not block) after each
    /// transaction, so the loop takes the progress soon.
    pub fn start(
        id: u64,
        store: Arc<dyn Store>,
        wake: impl Fn() + Send + 'static,
    ) -> Result<Applier> {
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let progress = Arc::new(Mutex::new(Progress::default()));
        let abort = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            store,
            progress: Arc::clone(&progress),
            abort: Arc::clone(&abort),
            wake: Box::new(wake),
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-apply-{id}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| Error::Internal(format!("spawn apply thread: {e}")))?;
        Ok(Applier {
            tx: Some(tx),
            progress,
            abort,
            thread: Some(thread),
        })
    }

    fn send(&self, task: Task) -> Result<()> {
        let stopped = || Error::Raft("the apply thread has stopped".into());
        self.tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(task)
            .map_err(|_| {
                self.failure()
                    .map_or_else(stopped, |why| Error::storage("apply", why))
            })
    }

    /// Queues committed entries, `urgent` when someone waits for them (see the module
    /// docs); waits only while the queue is full.
    pub fn hand_over(&self, entries: Vec<Applying>, urgent: bool) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.send(Task::Apply { entries, urgent })
    }

    /// Waits until everything handed over so far is applied (or the applier stopped).
    pub fn barrier(&self) -> Result<()> {
        let (tx, rx) = sync_channel(1);
        self.send(Task::Barrier(tx))?;
        rx.recv().map_err(|_| match self.failure() {
            Some(why) => Error::storage("apply", why),
            None => Error::Raft("the apply thread has stopped".into()),
        })
    }

    /// Takes the applied indexes published since the last call; an error once a store write
    /// failed.
    pub fn take_progress(&self) -> Result<HashMap<PartitionId, u64>> {
        let mut p = self.progress.lock().map_err(|_| poisoned())?;
        if let Some(why) = &p.failed {
            return Err(Error::storage("apply", why.clone()));
        }
        Ok(std::mem::take(&mut p.applied))
    }

    fn failure(&self) -> Option<String> {
        self.progress.lock().ok().and_then(|p| p.failed.clone())
    }

    /// Makes the thread end without applying what is still queued (a crash).
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }
}

impl Drop for Applier {
    /// Ends the thread once it has applied what is queued (unless aborted), and waits.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn poisoned() -> Error {
    Error::Internal("apply progress lock poisoned".into())
}

struct Worker {
    store: Arc<dyn Store>,
    progress: Arc<Mutex<Progress>>,
    abort: Arc<AtomicBool>,
    wake: Box<dyn Fn() + Send>,
}

impl Worker {
    fn run(self, rx: Receiver<Task>) {
        let mut next = rx.recv().ok();
        while let Some(first) = next.take() {
            let lazy_until = Instant::now() + LAZY_WAIT;
            let mut batch: Vec<Vec<Applying>> = Vec::new();
            let mut records = 0usize;
            let mut urgent = false;
            let mut barrier = None;
            let mut task = Some(first);
            while let Some(t) = task.take() {
                match t {
                    Task::Apply { entries, urgent: u } => {
                        records += entries.iter().map(|a| a.entry.records.len()).sum::<usize>();
                        batch.push(entries);
                        urgent |= u;
                    }
                    Task::Barrier(done) => {
                        barrier = Some(done);
                        break;
                    }
                }
                if records >= MAX_RECORDS_PER_TRANSACTION
                    || batch.len() >= MAX_HANDOVERS_PER_TRANSACTION
                {
                    break;
                }
                task = match rx.try_recv() {
                    Ok(t) => Some(t),
                    // Nobody waits yet: give others until `lazy_until` to join.
                    Err(TryRecvError::Empty) if !urgent => rx
                        .recv_timeout(lazy_until.saturating_duration_since(Instant::now()))
                        .ok(),
                    Err(_) => None,
                };
            }
            if self.abort.load(Ordering::SeqCst) {
                return;
            }
            if !batch.is_empty() && !self.apply(batch) {
                return;
            }
            if let Some(done) = barrier {
                let _ = done.send(());
            }
            next = rx.recv().ok();
        }
    }

    /// One store transaction for `batch`; false when it failed (the applier stops).
    fn apply(&self, batch: Vec<Vec<Applying>>) -> bool {
        let entries: Vec<Applying> = batch.into_iter().flatten().collect();
        let writes: Vec<PartitionWrite<'_>> = entries
            .iter()
            .map(|a| PartitionWrite {
                partition: a.group,
                index: a.index,
                records: &a.entry.records,
                ids: &a.entry.ids,
                proposed_at_micros: a.entry.proposed_at_micros,
            })
            .collect();
        let result = self.store.apply(&writes);
        drop(writes);
        let ok = match &result {
            Ok(_) => {
                // Published before the callers hear: a caller that asks the loop next finds
                // the progress there.
                if let Ok(mut p) = self.progress.lock() {
                    for a in &entries {
                        let i = p.applied.entry(a.group).or_insert(a.index);
                        *i = (*i).max(a.index);
                    }
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "applying committed entries failed; the node stops");
                if let Ok(mut p) = self.progress.lock() {
                    p.failed = Some(e.to_string());
                }
                false
            }
        };
        for a in entries {
            for reply in a.replies {
                let answer = match &result {
                    Ok(_) => Ok(a.index),
                    Err(e) => Err(Error::Raft(format!(
                        "partition {}: applying the write failed: {e}",
                        a.group
                    ))),
                };
                let _ = reply.send(answer);
            }
        }
        (self.wake)();
        ok
    }
}
