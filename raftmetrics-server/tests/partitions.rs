//! Network partitions between real processes: the control node and three workers, each in a
//! Linux network namespace of its own ([`common::netns`]), the network between them cut with
//! iptables while a writer runs. After each cut heals, the set checker
//! ([`batches::check`]) proves that every acknowledged batch is stored exactly once and no
//! batch in part, and the workers' replicas are compared. While the network is cut, strong
//! counts through the control node must be complete with at least every batch acknowledged
//! before the query began, or flagged partial: never silently short.
//!
//! The cuts: a partition's leader cut off from both other workers both ways; the same
//! leader cut one way (it receives nothing from them), then the next one the other way (it
//! sends nothing to them); the control node cut off from a worker that leads nothing. A
//! leader stays cut off long enough for the other two to elect a new one and take writes.
//!
//! Three workers, replication factor 3, four partitions. Needs root (`cargo test --release
//! --workspace --test partitions`); without it the tests say so and pass, unless
//! `RAFTMETRICS_REQUIRE_NETNS=1`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::batches;
use common::netns::{self, Cut, NetnsCluster, Node};
use common::probes::{Prober, check_probes};
use raftmetrics_core::PartitionId;

const PARTS: u32 = 4;
const WORKERS: u16 = 3;
/// The key whose partition's leader the cuts isolate.
const KEY: &str = "key-0";
const WRITE_PAUSE: Duration = Duration::from_millis(60);
/// How long a leader stays cut off: an election timeout (1 to 2 s) plus the control node's
/// wait for the write caught on the old leader (`WRITE_ATTEMPT_TIMEOUT`, 5 s), with room for
/// writes to the new leader before the cut heals.
const LEADER_CUT: Duration = Duration::from_secs(8);

async fn cluster() -> Option<NetnsCluster> {
    if !netns::available() {
        return None;
    }
    let c = NetnsCluster::start(WORKERS, 3, PARTS).await;
    c.client.wait_partitions_led(PARTS).await;
    Some(c)
}

/// The batches the writer sends to `partition`: batch `n` goes to `key-{n % KEYS}`.
struct Watched {
    partition: PartitionId,
    residues: Vec<u64>,
}

impl Watched {
    fn new(c: &NetnsCluster, partition: PartitionId) -> Watched {
        let residues = (0..batches::KEYS)
            .filter(|r| c.partition_of(&format!("key-{r}"), PARTS) == partition)
            .collect();
        Watched {
            partition,
            residues,
        }
    }

    fn holds(&self, o: &batches::Outcome) -> bool {
        self.residues.contains(&(o.n % batches::KEYS))
    }

    /// Who acknowledged the partition's batches between `from` and `to`.
    fn acks(&self, log: &[batches::Outcome], from: Instant, to: Instant) -> Vec<String> {
        log.iter()
            .filter(|o| self.holds(o) && o.at > from && o.at < to)
            .filter_map(|o| o.acked_by.clone())
            .collect()
    }
}

/// What the writer saw of the cut from `fault` to `healed`: batches sent and acknowledged
/// meanwhile, and how long after the fault the first write of all and the first write to
/// the `watched` partition were acknowledged by another worker than `cut_off`.
fn summary(
    log: &[batches::Outcome],
    fault: Instant,
    healed: Instant,
    watched: &Watched,
    cut_off: u64,
) -> String {
    let during: Vec<_> = log
        .iter()
        .filter(|o| o.at > fault && o.at < healed)
        .collect();
    let old = format!("worker-{cut_off}");
    let partition_resumed = log
        .iter()
        .find(|o| {
            watched.holds(o) && o.at > fault && o.acked_by.as_ref().is_some_and(|w| *w != old)
        })
        .map(|o| o.at - fault);
    format!(
        "{} batches in all, {} acknowledged; during the cut {} sent, {} acknowledged; writes \
         resumed {:?} after the fault, partition {}'s {partition_resumed:?} after",
        log.len(),
        log.iter().filter(|o| o.acked_by.is_some()).count(),
        during.len(),
        during.iter().filter(|o| o.acked_by.is_some()).count(),
        batches::resumed_after(log, fault),
        watched.partition,
    )
}

/// After the cuts healed: the set checker, then every replica holds what the cluster
/// answers.
async fn check_after_heal(c: &NetnsCluster, metric: &str, log: &[batches::Outcome]) {
    c.client.wait_partitions_led(PARTS).await;
    let stored = batches::check_replicated_at(&c.client, metric, log, &c.compute_urls()).await;
    assert!(stored > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_off_from_its_peers_both_ways() {
    const METRIC: &str = "cut_both";
    let Some(c) = cluster().await else { return };
    let watched = Watched::new(&c, c.partition_of(KEY, PARTS));
    let partition = watched.partition;
    let writer = batches::Writer::start(Arc::clone(&c.client), METRIC, WRITE_PAUSE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let prober = Prober::start(Arc::clone(&c.client), METRIC);
    let leaders = c.leaders().await;
    let leader = leaders[&partition];
    let fault = Instant::now();
    c.cut(Node::Worker(leader), &c.others(leader), Cut::Both);
    let new_leader = c
        .wait_new_leader(partition, leader, Duration::from_secs(10))
        .await
        .expect("the majority side elects a new leader");
    let elected = fault.elapsed();
    tokio::time::sleep(LEADER_CUT.saturating_sub(fault.elapsed())).await;
    c.heal();
    let healed = Instant::now();
    let probes = prober.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = writer.stop().await;
    let acks = watched.acks(&log, fault, healed);
    let answers = check_probes(&probes, &log, fault);
    eprintln!(
        "leader {leader} of partition {partition} (leaders {leaders:?}) cut off both ways for \
         {:?}: {}; worker {new_leader} led after {elected:?}; the partition's batches \
         acknowledged during the cut by {acks:?}; counts during the cut: {answers:?}",
        healed - fault,
        summary(&log, fault, healed, &watched, leader),
    );
    let old = format!("worker-{leader}");
    assert!(
        acks.iter().any(|w| *w != old),
        "the cut-off leader's partition must take writes under a new leader"
    );
    check_after_heal(&c, METRIC, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_one_way_then_the_other() {
    const METRIC: &str = "cut_one_way";
    let Some(c) = cluster().await else { return };
    let watched = Watched::new(&c, c.partition_of(KEY, PARTS));
    let partition = watched.partition;
    let writer = batches::Writer::start(Arc::clone(&c.client), METRIC, WRITE_PAUSE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let prober = Prober::start(Arc::clone(&c.client), METRIC);
    let mut windows = Vec::new();
    for how in [Cut::Inbound, Cut::Outbound] {
        let leaders = c.leaders().await;
        let leader = leaders[&partition];
        let fault = Instant::now();
        c.cut(Node::Worker(leader), &c.others(leader), how);
        let new_leader = c
            .wait_new_leader(partition, leader, Duration::from_secs(10))
            .await;
        let elected = fault.elapsed();
        tokio::time::sleep(LEADER_CUT.saturating_sub(fault.elapsed())).await;
        c.heal();
        let healed = Instant::now();
        windows.push((how, leaders, new_leader, elected, fault, healed));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let probes = prober.stop().await;
    let log = writer.stop().await;
    let answers = check_probes(&probes, &log, windows[0].4);
    for (how, leaders, new_leader, elected, fault, healed) in windows {
        let leader = leaders[&partition];
        let acks = watched.acks(&log, fault, healed);
        eprintln!(
            "leader {leader} of partition {partition} (leaders {leaders:?}) cut {how:?} for \
             {:?}: {}; new leader {new_leader:?} after {elected:?}; the partition's batches \
             acknowledged during the cut by {acks:?}",
            healed - fault,
            summary(&log, fault, healed, &watched, leader),
        );
        assert!(
            new_leader.is_some(),
            "no new leader while leader {leader} was cut {how:?} from its peers"
        );
        let old = format!("worker-{leader}");
        assert!(
            acks.iter().any(|w| *w != old),
            "the partition must take writes under a new leader during the {how:?} cut"
        );
    }
    eprintln!("counts during the cuts: {answers:?}");
    check_after_heal(&c, METRIC, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_node_cut_off_from_one_follower() {
    const METRIC: &str = "cut_control";
    let Some(c) = cluster().await else { return };
    let watched = Watched::new(&c, c.partition_of(KEY, PARTS));
    // A worker that leads no partition: the control node loses one replica of each
    // partition, never a leader. When every worker leads something, the one that leads the
    // fewest is made to step down first, cut off from its peers until the others lead
    // everything.
    let claims = c.leader_claims().await;
    let leads = |w: u64| claims.values().flatten().filter(|&&(l, _)| l == w).count();
    let follower = (1..=u64::from(WORKERS))
        .min_by_key(|&w| leads(w))
        .expect("workers");
    if leads(follower) > 0 {
        c.cut(Node::Worker(follower), &c.others(follower), Cut::Both);
        let start = Instant::now();
        loop {
            let claims = c.leader_claims().await;
            let all_elsewhere = claims.len() == PARTS as usize
                && claims.values().all(|v| v.len() == 1 && v[0].0 != follower);
            if all_elsewhere {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "worker {follower} still leads: {claims:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.heal();
        eprintln!(
            "worker {follower} made to step down first ({:?})",
            start.elapsed()
        );
    }
    c.client.wait_partitions_led(PARTS).await;
    let writer = batches::Writer::start(Arc::clone(&c.client), METRIC, WRITE_PAUSE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let prober = Prober::start(Arc::clone(&c.client), METRIC);
    let fault = Instant::now();
    c.cut(Node::Control, &[Node::Worker(follower)], Cut::Both);
    // The control node stops hearing the worker's heartbeats: it counts it as down.
    let start = Instant::now();
    while c.healthy_workers().await != Some(u64::from(WORKERS) - 1) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the control node still counts worker {follower} as live"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let noticed = fault.elapsed();
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(fault.elapsed())).await;
    c.heal();
    let healed = Instant::now();
    let probes = prober.stop().await;
    let start = Instant::now();
    while c.healthy_workers().await != Some(u64::from(WORKERS)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "worker {follower} does not come back after the cut healed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = healed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = writer.stop().await;
    let answers = check_probes(&probes, &log, fault);
    let during: Vec<_> = log
        .iter()
        .filter(|o| o.at > fault && o.at < healed)
        .collect();
    let failed: Vec<u64> = during
        .iter()
        .filter(|o| o.acked_by.is_none())
        .map(|o| o.n)
        .collect();
    eprintln!(
        "control node cut off from worker {follower} for {:?}: {}; counted down after \
         {noticed:?}, back {back:?} after the heal; {} batches during the cut, failed: \
         {failed:?}; counts during the cut: {answers:?}",
        healed - fault,
        summary(&log, fault, healed, &watched, follower),
        during.len(),
    );
    // The leaders are all reachable: no write needs the cut-off worker.
    assert!(
        failed.is_empty(),
        "writes failed during the cut: {failed:?}"
    );
    assert!(!during.is_empty());
    check_after_heal(&c, METRIC, &log).await;
}
