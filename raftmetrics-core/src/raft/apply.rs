//! The apply stage of a node: a thread of its own that writes committed entries to the store
//! and answers the proposals that wait for their application (client writes are answered
//! at commit by the loop, ADR 014; membership changes and internal writes wait for the
//! store).
//!
//! The raft loop hands over committed entries once the log holds them durably, and goes on
//! persisting and replicating while the store writes. Whatever waits when the applier is
//! free again becomes one store transaction, so that a transaction's fixed cost (DuckDB's
//! appender flush and commit) is shared by as many entries as arrived meanwhile, up to a
//! bound. Hand-overs are applied in the order they were made, which is each group's log
//! order.
//!
//! A hand-over is urgent when someone waits for it: a proposal's caller or a read. Other
//! entries (client writes, acknowledged at commit) wait up to [`LAZY_WAIT`] for more to join
//! them, and go at once when an urgent one comes or the loop asks the applier to hurry (a
//! read arrived that waits for the store), so a store trails its log by at most that much
//! and pays one transaction for what would otherwise be several.
//!
//! The applier never waits for the loop: it publishes how far each group is applied in
//! [`Progress`] and nudges the loop (at most once until the loop takes the progress) with a
//! command it may drop (the loop also looks at every iteration). The loop waits for the
//! applier only when its queue is full or holds [`MAX_BACKLOG_RECORDS`] records not yet
//! applied (backpressure: a store trails its log by at most that much), and at a
//! [`Applier::barrier`], before it replaces or drops a partition's data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::entry::LogEntry;
use crate::error::{Error, Result};
use crate::partition::PartitionId;
use crate::store::{PartitionWrite, Store};

/// Hand-overs the queue holds before the loop waits (each is one loop pass's entries).
const QUEUE_CAPACITY: usize = 256;
/// Records handed over and not yet applied before the loop waits: how far a store may trail
/// its log (writes are acknowledged at commit, ADR 014), and the memory that costs.
const MAX_BACKLOG_RECORDS: usize = 1_000_000;
/// Most records in one store transaction; what is left waits for the next.
const MAX_RECORDS_PER_TRANSACTION: usize = 200_000;
/// Most hand-overs in one store transaction.
const MAX_HANDOVERS_PER_TRANSACTION: usize = 64;
/// How long entries nobody waits for may wait for others to share their transaction.
const LAZY_WAIT: Duration = Duration::from_millis(100);

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
        /// Records in `entries` (counted once, by the loop).
        records: usize,
    },
    /// Answered once everything handed over before it is applied.
    Barrier(std::sync::mpsc::SyncSender<()>),
    /// Someone waits for what was handed over: stop waiting for more.
    Hurry,
}

/// How far the applier got, read by the loop.
#[derive(Default)]
struct Progress {
    /// Per group, the newest applied index not yet taken by the loop.
    applied: HashMap<PartitionId, u64>,
    /// Set when a store write failed; the applier has stopped.
    failed: Option<String>,
}

/// Records handed over and not yet applied, with the condition the loop waits on.
#[derive(Default)]
struct Backlog {
    records: Mutex<usize>,
    shrunk: Condvar,
}

pub(super) struct Applier {
    tx: Option<SyncSender<Task>>,
    backlog: Arc<Backlog>,
    progress: Arc<Mutex<Progress>>,
    /// Set from a wake-up until the loop takes the progress.
    woken: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Applier {
    /// Starts the applier of node `id`; `wake` is called (it must not block) after a
    /// transaction when the loop has taken the progress since the last call, so it takes it
    /// again soon.
    pub fn start(
        id: u64,
        store: Arc<dyn Store>,
        wake: impl Fn() + Send + 'static,
    ) -> Result<Applier> {
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let progress = Arc::new(Mutex::new(Progress::default()));
        let abort = Arc::new(AtomicBool::new(false));
        let woken = Arc::new(AtomicBool::new(false));
        let backlog = Arc::new(Backlog::default());
        let worker = Worker {
            store,
            backlog: Arc::clone(&backlog),
            progress: Arc::clone(&progress),
            abort: Arc::clone(&abort),
            woken: Arc::clone(&woken),
            wake: Box::new(wake),
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-apply-{id}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| Error::Internal(format!("spawn apply thread: {e}")))?;
        Ok(Applier {
            tx: Some(tx),
            backlog,
            progress,
            woken,
            abort,
            thread: Some(thread),
        })
    }

    fn send(&self, task: Task) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| self.stopped())?;
        tx.send(task).map_err(|_| self.stopped())
    }

    /// Why the thread is gone: the store failure that stopped it, if that is what did.
    fn stopped(&self) -> Error {
        match self.progress.lock().ok().and_then(|p| p.failed.clone()) {
            Some(why) => Error::storage("apply", why),
            None => Error::Raft("the apply thread has stopped".into()),
        }
    }

    /// Queues committed entries, `urgent` when someone waits for them (see the module
    /// docs); waits only while the queue is full or holds [`MAX_BACKLOG_RECORDS`].
    pub fn hand_over(&self, entries: Vec<Applying>, urgent: bool) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let records: usize = entries.iter().map(|a| a.entry.records.len()).sum();
        {
            let mut backlog = self.backlog.records.lock().map_err(|_| poisoned())?;
            while *backlog > 0 && *backlog + records > MAX_BACKLOG_RECORDS {
                if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                    return Err(self.stopped());
                }
                backlog = self
                    .backlog
                    .shrunk
                    .wait_timeout(backlog, Duration::from_millis(100))
                    .map_err(|_| poisoned())?
                    .0;
            }
            *backlog += records;
        }
        self.send(Task::Apply {
            entries,
            urgent,
            records,
        })
    }

    /// Asks the applier to write what it holds now rather than wait for more to join it;
    /// never waits (when the queue is full, the applier is busy anyway).
    pub fn hurry(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Task::Hurry);
        }
    }

    /// Waits until everything handed over so far is applied (or the applier stopped).
    pub fn barrier(&self) -> Result<()> {
        let (tx, rx) = sync_channel(1);
        self.send(Task::Barrier(tx))?;
        rx.recv().map_err(|_| self.stopped())
    }

    /// Takes the applied indexes published since the last call; an error once a store write
    /// failed.
    pub fn take_progress(&self) -> Result<HashMap<PartitionId, u64>> {
        self.woken.store(false, Ordering::SeqCst);
        let mut p = self.progress.lock().map_err(|_| poisoned())?;
        if let Some(why) = &p.failed {
            return Err(Error::storage("apply", why.clone()));
        }
        Ok(std::mem::take(&mut p.applied))
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
    backlog: Arc<Backlog>,
    progress: Arc<Mutex<Progress>>,
    abort: Arc<AtomicBool>,
    woken: Arc<AtomicBool>,
    wake: Box<dyn Fn() + Send>,
}

impl Worker {
    fn run(self, rx: Receiver<Task>) {
        crate::priority::lower_current_thread();
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
                    Task::Apply {
                        entries,
                        urgent: u,
                        records: n,
                    } => {
                        records += n;
                        batch.push(entries);
                        urgent |= u;
                    }
                    Task::Hurry => urgent = true,
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
            if !batch.is_empty() && !self.apply(batch, records) {
                return;
            }
            if let Some(done) = barrier {
                let _ = done.send(());
            }
            next = rx.recv().ok();
        }
    }

    /// One store transaction for `batch` of `records` records; false when it failed (the
    /// applier stops).
    fn apply(&self, batch: Vec<Vec<Applying>>, records: usize) -> bool {
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
        if let Ok(mut backlog) = self.backlog.records.lock() {
            *backlog = backlog.saturating_sub(records);
            self.backlog.shrunk.notify_all();
        }
        if !self.woken.swap(true, Ordering::SeqCst) {
            (self.wake)();
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Record, Tags};
    use crate::series::{self, Series};
    use crate::store::DuckDbStore;
    use crate::store::conformance::Observed;
    use crate::time::Timestamp;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn observed() -> Arc<Observed<DuckDbStore>> {
        Arc::new(Observed::new(DuckDbStore::open_in_memory().unwrap()))
    }

    fn entry(n: usize) -> LogEntry {
        let series = series::intern(Series::new("cpu", Tags::new(), None));
        LogEntry {
            records: (0..n)
                .map(|i| Record::new(Arc::clone(&series), Timestamp::from_micros(i as i64), 1.0))
                .collect(),
            ..LogEntry::default()
        }
    }

    /// One hand-over of one entry of `group` at `index`; its reply's receiver.
    fn one(group: PartitionId, index: u64) -> (Vec<Applying>, oneshot::Receiver<Result<u64>>) {
        let (reply, rx) = oneshot::channel();
        let applying = Applying {
            group,
            index,
            entry: entry(10),
            replies: vec![reply],
        };
        (vec![applying], rx)
    }

    #[test]
    fn what_waits_while_the_store_is_busy_becomes_one_transaction() {
        let store = observed();
        let applier = Applier::start(1, store.clone(), || {}).unwrap();
        let gate = store.gate.lock().unwrap();
        let (first, first_rx) = one(1, 1);
        applier.hand_over(first, true).unwrap();
        // The applier takes the first hand-over and waits at the store.
        while store.entered.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut waiting = Vec::new();
        for (group, index) in [(1, 2), (2, 1), (1, 3), (3, 1)] {
            let (h, rx) = one(group, index);
            applier.hand_over(h, true).unwrap();
            waiting.push((index, rx));
        }
        drop(gate);
        applier.barrier().unwrap();
        assert_eq!(first_rx.blocking_recv().unwrap().unwrap(), 1);
        for (index, rx) in waiting {
            assert_eq!(rx.blocking_recv().unwrap().unwrap(), index);
        }
        // The first hand-over alone, then the four that queued behind it together.
        assert_eq!(store.transactions.load(Ordering::SeqCst), 2);
        assert_eq!(store.applied_index(1).unwrap(), 3);
        assert_eq!(store.applied_index(2).unwrap(), 1);
        assert_eq!(store.applied_index(3).unwrap(), 1);
        let progress = applier.take_progress().unwrap();
        assert_eq!(progress.get(&1), Some(&3));
        assert_eq!(progress.get(&3), Some(&1));
        assert!(applier.take_progress().unwrap().is_empty());
    }

    #[test]
    fn entries_nobody_waits_for_are_applied_without_an_urgent_one() {
        let store = observed();
        let woken = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&woken);
        let applier = Applier::start(1, store.clone(), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        let applying = vec![Applying {
            group: 4,
            index: 7,
            entry: entry(3),
            replies: Vec::new(),
        }];
        applier.hand_over(applying, false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.applied_index(4).unwrap() < 7 {
            assert!(
                Instant::now() < deadline,
                "a lazy hand-over was never applied"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // Published for the loop, which was woken.
        applier.barrier().unwrap();
        assert_eq!(applier.take_progress().unwrap().get(&4), Some(&7));
        assert!(woken.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn a_failed_store_write_answers_the_callers_and_stops_the_applier() {
        let store = observed();
        store.fail.store(true, Ordering::SeqCst);
        let applier = Applier::start(1, store.clone(), || {}).unwrap();
        let (h, rx) = one(1, 1);
        applier.hand_over(h, true).unwrap();
        let answer = rx.blocking_recv().unwrap();
        assert!(answer.unwrap_err().to_string().contains("disk full"));
        let err = applier.take_progress().unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        // Once its thread has ended, nothing is taken any more, and the loop learns why.
        let deadline = Instant::now() + Duration::from_secs(10);
        let refused = loop {
            let (h, _rx) = one(1, 2);
            match applier.hand_over(h, true) {
                Err(e) => break e,
                Ok(()) => {
                    assert!(
                        Instant::now() < deadline,
                        "a failed applier kept taking work"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        };
        assert!(refused.to_string().contains("disk full"), "{refused}");
        assert_eq!(store.inner.applied_index(1).unwrap(), 0);
    }
}
