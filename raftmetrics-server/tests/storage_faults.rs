//! Storage faults on a real cluster (three workers, replication factor 3, processes started
//! by `dev` on loopback) while a writer runs: a worker's data directory that fills up, and
//! a worker's raft log damaged while it is down (a torn last write: cut short, or with
//! garbage in its entries; bytes overwritten well before the end of the log). After each,
//! the set checker ([`batches::check`]) proves that every acknowledged batch is stored
//! exactly once and no batch in part, and the replicas are compared with each other.
//!
//! The full disk is a small tmpfs mounted over the worker's data directory, so that test
//! needs root (and the right to mount); without it, it says so loudly and passes, unless
//! `RAFTMETRICS_REQUIRE_ROOT=1`, which makes it fail instead.

mod common;

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{DevCluster, batches};

const PARTS: u32 = 4;
const WORKERS: u16 = 3;
const METRIC: &str = "ingest";
/// Between two batches of the writer: about 30 batches a second, under the raised rate limit.
const PAUSE: Duration = Duration::from_millis(30);

async fn cluster() -> Arc<DevCluster> {
    let c =
        Arc::new(DevCluster::start(WORKERS, 3, PARTS, &["--rate-limit-per-minute=100000"]).await);
    c.wait_partitions_led(PARTS).await;
    c
}

fn summary(log: &[batches::Outcome], fault: Instant) -> String {
    format!(
        "{} batches, {} acknowledged, {} after the fault",
        log.len(),
        log.iter().filter(|o| o.acked_by.is_some()).count(),
        log.iter()
            .filter(|o| o.acked_by.is_some() && o.at > fault)
            .count(),
    )
}

/// A worker that is not the leader of `key-0`'s partition.
async fn a_follower(c: &DevCluster) -> u64 {
    let leader = c.leader_of("key-0").await;
    (1..=u64::from(WORKERS))
        .find(|&w| w != leader)
        .expect("a follower")
}

/// What a worker's raft node is doing, from its `/health`.
#[derive(Debug, PartialEq)]
enum WorkerState {
    /// Its HTTP port does not answer.
    Down,
    /// It answers, with this many raft replicas running (0 when its raft node stopped).
    Replicas(u64),
}

async fn worker_state(c: &DevCluster, id: u16) -> WorkerState {
    let resp = c
        .http
        .get(c.worker_url(id, "/health"))
        .bearer_auth(common::TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match resp {
        Ok(r) => {
            let doc = common::json_of(r).await;
            WorkerState::Replicas(doc["raft_status"]["replicas"].as_u64().unwrap_or(0))
        }
        Err(_) => WorkerState::Down,
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// A data directory that fills up
// ---------------------------------------------------------------------------------------

/// Size of the small file system.
const DISK_MIB: u64 = 64;
/// Space left free by the filler file: the writes fill it within seconds.
const SLACK: u64 = 192 * 1024;

/// A tmpfs of [`DISK_MIB`] mounted for the test, unmounted (lazily, so even while a
/// process still has files open on it) when dropped, also when the test panics.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts the file system at `path`, or explains loudly why it cannot and answers
    /// `None`; with `RAFTMETRICS_REQUIRE_ROOT=1` it panics instead.
    fn mount(path: &Path) -> Option<SmallDisk> {
        let required = std::env::var("RAFTMETRICS_REQUIRE_ROOT").is_ok_and(|v| v == "1");
        let give_up = |why: String| -> Option<SmallDisk> {
            assert!(
                !required,
                "RAFTMETRICS_REQUIRE_ROOT=1 but the full-disk scenario cannot run: {why}"
            );
            eprintln!(
                "\n**********************************************************************\n\
                 * SKIPPED: the full-disk scenario did not run: {why}\n\
                 * It mounts a tmpfs and needs root; RAFTMETRICS_REQUIRE_ROOT=1 makes\n\
                 * this a failure.\n\
                 **********************************************************************\n"
            );
            None
        };
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root {
            return give_up("not running as root".into());
        }
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DISK_MIB}m"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk {
                path: path.to_path_buf(),
            }),
            Ok(o) => give_up(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => give_up(format!("cannot run mount: {e}")),
        }
    }

    fn free(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.path).expect("statvfs");
        s.blocks_available() * s.fragment_size()
    }

    /// Writes a filler file until only about `slack` bytes are free; returns its path.
    fn fill_leaving(&self, slack: u64) -> PathBuf {
        let path = self.path.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler file");
        let chunk = vec![0xF1u8; 1 << 20];
        loop {
            let free = self.free();
            if free <= slack {
                break;
            }
            let n = (free - slack).min(chunk.len() as u64) as usize;
            if f.write_all(&chunk[..n]).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Copies the directory tree `from` into the existing directory `to`.
fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&target).expect("create dir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_fills_up_then_space_is_freed() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let Some(disk) = SmallDisk::mount(&scratch.path().join("disk")) else {
        return;
    };
    let c = cluster().await;
    const FULL: u16 = 3;
    let full = u64::from(FULL);
    let stderr = scratch.path().join("worker-3.stderr");

    // Worker 3's data directory moves onto the small file system (its path becomes a link
    // to it), and the worker starts again from it.
    let launch = c.kill_node("worker", full).await;
    let dir = c.data_dir("worker", full);
    copy_tree(&dir, &disk.path);
    std::fs::remove_dir_all(&dir).expect("remove the old data directory");
    std::os::unix::fs::symlink(&disk.path, &dir).expect("link the data directory");
    c.relaunch(&launch, Some(&stderr)).await;
    c.wait_partitions_led(PARTS).await;

    let writer = batches::Writer::start(Arc::clone(&c), METRIC, PAUSE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let filler = disk.fill_leaving(SLACK);
    let filled = Instant::now();
    // The raft node logs `raft node stops` with the failed write (DuckDB's or the raft
    // log's, whichever runs out first).
    while !read_lossy(&stderr).contains("raft node stops") {
        assert!(
            filled.elapsed() < Duration::from_secs(30),
            "worker {full} did not run out of space ({} bytes free): {}",
            disk.free(),
            read_lossy(&stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let full_at = Instant::now();
    eprintln!(
        "worker {full} ran out of space {:?} after the filler",
        full_at - filled
    );

    // Its raft node stops at the failed write; the worker stops with it, with an error.
    let status = loop {
        if let Some(status) = c.exited("worker", full) {
            break status;
        }
        assert!(
            full_at.elapsed() < Duration::from_secs(10),
            "worker {full} still runs with a full disk: {:?}",
            worker_state(&c, FULL).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "worker {full} stopped {:?} after running out of space: {status}",
        full_at.elapsed()
    );
    assert!(!status.success(), "worker {full} must stop with an error");

    // Its supervisor starts it again while the disk is still full: it either runs (what it
    // has is intact) or stops again with an error, and never panics.
    let again = c
        .relaunch_to_exit(&launch, &stderr, Duration::from_secs(3))
        .await;
    eprintln!(
        "worker {full} started again on the full disk: {}",
        match again {
            Some(status) => format!("stopped again ({status})"),
            None => "ran for 3 s".into(),
        }
    );

    // Space comes back, and the worker with it.
    std::fs::remove_file(&filler).expect("remove the filler");
    let freed_at = Instant::now();
    c.relaunch(&launch, Some(&stderr)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = writer.stop().await;
    eprintln!("full disk on worker {full}: {}", summary(&log, full_at));
    let said = read_lossy(&stderr);
    let errors: Vec<&str> = said.lines().filter(|l| l.contains("ERROR")).collect();
    eprintln!("worker {full} logged:\n{}", errors.join("\n"));
    assert!(
        ["No space left on device", "StorageFull"]
            .iter()
            .any(|m| said.contains(m))
            && said.contains("the raft node of this worker stopped"),
        "worker {full} must say why it stopped: {said}"
    );
    assert!(
        log.iter()
            .any(|o| o.acked_by.is_some() && o.at > full_at && o.at < freed_at),
        "writes must go on while one worker of three has a full disk"
    );
    assert!(
        !said.contains("panicked"),
        "worker {full} panicked on a full disk: {said}"
    );
    batches::check_replicated(&c, METRIC, &log).await;
    // The worker that had the full disk holds every partition again, and serves.
    assert_eq!(
        worker_state(&c, FULL).await,
        WorkerState::Replicas(u64::from(PARTS)),
        "{said}"
    );
    drop(c);
    drop(disk);
}

// ---------------------------------------------------------------------------------------
// A damaged raft log
// ---------------------------------------------------------------------------------------

/// The newest file of a worker's raft-engine append queue (`<seq>.raftlog`).
fn newest_log_file(raft_dir: &Path) -> PathBuf {
    std::fs::read_dir(raft_dir)
        .expect("raft log directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "raftlog"))
        .max()
        .expect("a raft log file")
}

/// The length of the data of a log file: raft-engine allocates files ahead (zeros), and a
/// killed process leaves that allocation in place.
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// The file header of a raft-engine 0.4 log file (magic, format version 2, alignment). One
/// batch per write follows: big-endian `u64`s `length << 8 | compression` and the offset of
/// its footer, then its entries block (when it carries entries), then its footer.
const LOG_FILE_HEADER_LEN: usize = 69;

/// A write in the bytes of a log file: where it starts, where it ends, and where its footer
/// starts (right after its 16-byte header when it carries no entries).
#[derive(Clone, Copy, Debug)]
struct LoggedWrite {
    start: usize,
    end: usize,
    footer: usize,
}

/// The writes in the bytes of a log file, in order.
fn writes_in(bytes: &[u8]) -> Vec<LoggedWrite> {
    let end = data_end(bytes);
    let mut writes = Vec::new();
    let mut at = LOG_FILE_HEADER_LEN;
    let word = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    while at < end {
        let len = (word(at) >> 8) as usize;
        let footer = word(at + 8) as usize;
        assert!(
            footer >= 16 && footer < len && at + len <= bytes.len(),
            "no write starts at byte {at}"
        );
        writes.push(LoggedWrite {
            start: at,
            end: at + len,
            footer: at + footer,
        });
        at += len;
    }
    writes
}

/// Kills worker `id` and leaves its newest raft log file as a crash during one more append
/// would: after its data, a write that did not complete (a copy of its last write that
/// carries entries, changed by `tear`, which gets the write and the offset of its footer).
/// Starts it again and lets the writer go on for `after`.
async fn torn_write_and_restart(
    c: &DevCluster,
    id: u64,
    what: &str,
    tear: impl FnOnce(&mut Vec<u8>, usize),
    after: Duration,
) {
    let launch = c.kill_node("worker", id).await;
    let file = newest_log_file(&c.data_dir("worker", id).join("raft"));
    let bytes = std::fs::read(&file).expect("read the log file");
    let writes = writes_in(&bytes);
    let last = writes.last().expect("a write");
    let copied = writes
        .iter()
        .rev()
        .find(|w| w.footer > w.start + 16)
        .unwrap_or(last);
    let mut torn = bytes[copied.start..copied.end].to_vec();
    tear(&mut torn, copied.footer - copied.start);
    let mut damaged = bytes[..last.end].to_vec();
    damaged.extend_from_slice(&torn);
    std::fs::write(&file, &damaged).expect("write the log file");
    eprintln!(
        "worker {id}: a torn write of {} bytes ({what}) after {} bytes of data in {}",
        torn.len(),
        last.end,
        file.display()
    );
    c.relaunch(&launch, None).await;
    tokio::time::sleep(after).await;
}

/// Bytes that are not what was there: every byte changed.
fn garbage(original: &[u8]) -> Vec<u8> {
    original.iter().map(|b| !b ^ 0x5A).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_log_tail_cut_short_or_overwritten_then_restarted() {
    let c = cluster().await;
    let follower = a_follower(&c).await;
    let writer = batches::Writer::start(Arc::clone(&c), METRIC, PAUSE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fault = Instant::now();
    // (a) The file ends 10 bytes short of the end of its last write.
    torn_write_and_restart(
        &c,
        follower,
        "its last 10 bytes missing",
        |write, _| write.truncate(write.len() - 10),
        Duration::from_secs(2),
    )
    .await;
    // (b) The file ends with a whole write whose entries are garbage in part (their checksum
    // no longer matches; the engine only checks it for the last write of a file).
    torn_write_and_restart(
        &c,
        follower,
        "8 bytes of garbage in its entries",
        |write, footer| {
            let at = (16 + footer) / 2;
            let junk = garbage(&write[at..at + 8]);
            write[at..at + 8].copy_from_slice(&junk);
        },
        Duration::from_secs(2),
    )
    .await;
    let log = writer.stop().await;
    eprintln!(
        "follower {follower}, torn last write twice: {}",
        summary(&log, fault)
    );
    assert!(
        log.iter().any(|o| o.acked_by.is_some() && o.at > fault),
        "writes must go on"
    );
    batches::check_replicated(&c, METRIC, &log).await;
    assert_eq!(
        worker_state(&c, follower as u16).await,
        WorkerState::Replicas(u64::from(PARTS))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_log_damaged_before_its_end_is_refused_then_rebuilt() {
    let c = cluster().await;
    let follower = a_follower(&c).await;
    let writer = batches::Writer::start(Arc::clone(&c), METRIC, PAUSE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fault = Instant::now();
    let launch = c.kill_node("worker", follower).await;
    let dir = c.data_dir("worker", follower);
    let file = newest_log_file(&dir.join("raft"));
    let mut bytes = std::fs::read(&file).expect("read the log file");
    let end = data_end(&bytes);
    // 64 bytes in the middle of the data: later writes follow them, so this is no torn
    // last write.
    let at = end / 2;
    let junk = garbage(&bytes[at..at + 64]);
    bytes[at..at + 64].copy_from_slice(&junk);
    std::fs::write(&file, &bytes).expect("write the log file");
    let stderr = c.dir.path().join(format!("worker-{follower}.stderr"));
    let status = c
        .relaunch_to_exit(&launch, &stderr, Duration::from_secs(15))
        .await;
    let said = read_lossy(&stderr);
    eprintln!(
        "worker {follower} with its raft log damaged at byte {at} of {end}: {status:?}\n{said}"
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "a worker whose raft log is damaged before its end must refuse to start; it ran: \
         {said}"
    );
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        said.contains("raft log") && said.contains(&name),
        "the error must name the raft log file: {said}"
    );
    assert_eq!(
        std::fs::read(&file).expect("read the log file"),
        bytes,
        "a refused log must be left as it was"
    );

    // Rebuild the replica: its raft log and DuckDB files go (its node id stays). A leader
    // that knew the old replica holds on to how far that replica's log went and would send
    // it a commit index past the end of its new, empty log (raft-rs stops the node on
    // that), so every partition first gets a new leader: the other workers restart too,
    // then the rebuilt one gets its partitions back from the others.
    std::fs::remove_dir_all(dir.join("raft")).expect("remove the raft log");
    for f in ["store.duckdb", "store.duckdb.wal"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let mut others = Vec::new();
    for w in (1..=u64::from(WORKERS)).filter(|&w| w != follower) {
        others.push(c.kill_node("worker", w).await);
    }
    for other in &others {
        c.relaunch(other, None).await;
    }
    c.relaunch(&launch, Some(&stderr)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = writer.stop().await;
    eprintln!(
        "follower {follower}, raft log damaged before its end, rebuilt: {}",
        summary(&log, fault)
    );
    let said = read_lossy(&stderr);
    assert!(!said.contains("panicked"), "{said}");
    batches::check_replicated(&c, METRIC, &log).await;
    assert_eq!(
        worker_state(&c, follower as u16).await,
        WorkerState::Replicas(u64::from(PARTS)),
        "the rebuilt worker holds every partition again: {said}"
    );
    batches::check_replicated(&c, METRIC, &log).await;
}
