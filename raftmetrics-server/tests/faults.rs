//! Faults injected into a real cluster while a writer runs: real processes started by `dev`,
//! real SIGKILL, SIGSTOP and SIGCONT, restarts from the same command line and data directory.
//! During each, counts queried through the control node must be complete with every batch
//! acknowledged before the query began, flagged partial, or an error, never silently short
//! ([`common::probes`]). After each, the set checker ([`batches::check_replicated`]) proves that every
//! acknowledged batch is stored exactly once and no batch in part, and the replicas are
//! compared with each other.
//!
//! Three workers, replication factor 3: any one worker may fail.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::probes::{Prober, check_probes};
use common::{DevCluster, batches};
use nix::sys::signal::Signal;

const PARTS: u32 = 4;
const WORKERS: u16 = 3;
const METRIC: &str = "ingest";

async fn cluster() -> Arc<DevCluster> {
    let c = Arc::new(DevCluster::start(WORKERS, 3, PARTS, &[]).await);
    c.wait_partitions_led(PARTS).await;
    c
}

fn summary(log: &[batches::Outcome], fault: Instant) -> String {
    format!(
        "{} batches, {} acknowledged, writes resumed {:?} after the fault",
        log.len(),
        log.iter().filter(|o| o.acked_by.is_some()).count(),
        batches::resumed_after(log, fault)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_node_killed_and_restarted_during_writes() {
    let c = cluster().await;
    let writer = batches::Writer::start(Arc::clone(&c), METRIC, Duration::from_millis(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let prober = Prober::start(Arc::clone(&c), METRIC);
    let fault = Instant::now();
    c.restart("control", 1, Duration::from_secs(1)).await;
    c.wait_partitions_led(PARTS).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = writer.stop().await;
    let answers = check_probes(&prober.stop().await, &log, fault);
    eprintln!(
        "control restart: {}; queries {answers:?}",
        summary(&log, fault)
    );
    assert!(
        log.iter()
            .any(|o| o.acked_by.is_some() && o.at > fault + Duration::from_secs(1)),
        "writes must resume once the control node is back"
    );
    // The placement survived the restart: still every partition, nothing placed twice.
    let (_, health) = c.get_json(&c.url("/health")).await;
    assert_eq!(health["partitions_total"], PARTS, "{health}");
    let stored = batches::check_replicated(&c, METRIC, &log).await;
    assert!(stored > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_killed_then_restarted_catches_up() {
    let c = cluster().await;
    let leader = c.leader_of("key-0").await;
    let follower = (1..=u64::from(WORKERS))
        .find(|&w| w != leader)
        .expect("a follower");
    let writer = batches::Writer::start(Arc::clone(&c), METRIC, Duration::from_millis(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let prober = Prober::start(Arc::clone(&c), METRIC);
    let fault = Instant::now();
    // Down for 4 s while writes go on; then back with its own data directory.
    c.restart("worker", follower, Duration::from_secs(4)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = writer.stop().await;
    let answers = check_probes(&prober.stop().await, &log, fault);
    eprintln!(
        "follower {follower} restart: {}; queries {answers:?}",
        summary(&log, fault)
    );
    assert!(
        log.iter()
            .any(|o| o.acked_by.is_some() && o.at > fault && o.at < fault + Duration::from_secs(4)),
        "writes must go on while one follower of three is down"
    );
    batches::check_replicated(&c, METRIC, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_paused_past_the_election_timeout_then_resumed() {
    let c = cluster().await;
    let leader = c.leader_of("key-0").await;
    let writer = batches::Writer::start(Arc::clone(&c), METRIC, Duration::from_millis(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let prober = Prober::start(Arc::clone(&c), METRIC);
    let fault = Instant::now();
    // Paused longer than an election timeout plus the control node's wait for one write
    // (`WRITE_ATTEMPT_TIMEOUT`): a write caught on the paused leader has an unknown outcome
    // and is resent under its batch id to the new leader, like the next ones.
    c.signal("worker", leader, Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(10)).await;
    c.signal("worker", leader, Signal::SIGCONT);
    let resumed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = writer.stop().await;
    let answers = check_probes(&prober.stop().await, &log, fault);
    eprintln!(
        "leader {leader} paused 10 s: {}; queries {answers:?}",
        summary(&log, fault)
    );
    assert!(
        log.iter().any(|o| o.acked_by.is_some()
            && o.n % batches::KEYS == 0
            && o.at > fault
            && o.at < resumed),
        "the paused leader's partition must take writes under a new leader"
    );
    batches::check_replicated(&c, METRIC, &log).await;
}
