//! A query over the cluster: which worker is asked for which partitions (pure planning,
//! [`first_round`] and [`retry_round`]), and the runner that asks them within the query
//! deadline, merges their partial aggregates and says which partitions no replica answered
//! for ([`fan_out`]).
//!
//! Round 1 reads every partition from exactly one live replica: the reported leader when it
//! holds the partition (a voter, or the target of a move being promoted), else the live
//! voter that reported the most applied entries; every live worker is asked, an empty list
//! still telling whether it answers. Round 2 asks, for each partition whose worker failed or
//! could not answer, another live voter not tried and not failed. What is still unanswered
//! is missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmetrics_core::PartitionId;
use raftmetrics_core::aggregate::{Coverage, PartialAggregate};
use raftmetrics_core::query::{Consistency, Query};
use raftmetrics_core::raft::NodeId;
use tracing::warn;

use crate::metrics::Metrics;
use crate::rpc::{ClusterView, Request, Response as RpcResponse, RpcClient};

/// Who is asked for what, and what no live replica can answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per worker, the partitions it is asked for, ascending.
    pub asks: BTreeMap<NodeId, Vec<PartitionId>>,
    /// Partitions no live replica can answer for, ascending.
    pub missing: Vec<PartitionId>,
}

/// What the control node knows when it plans round 1.
pub struct Known<'a> {
    /// The committed view (placement and learners); `None` before placement.
    pub view: Option<&'a ClusterView>,
    /// Partitions to read: every one when the view holds none.
    pub partitions: u32,
    /// Workers heard from within the liveness window.
    pub live: &'a HashSet<NodeId>,
    /// Per partition, the live worker reporting leadership with the highest term.
    pub leaders: &'a HashMap<PartitionId, NodeId>,
    /// What each live worker last reported as applied, per (partition, worker).
    pub applied: &'a HashMap<(PartitionId, NodeId), u64>,
}

/// Round 1: one live replica per partition, every live worker asked.
pub fn first_round(known: &Known<'_>) -> Plan {
    let mut plan = Plan {
        asks: known.live.iter().map(|w| (*w, Vec::new())).collect(),
        missing: Vec::new(),
    };
    let Some(view) = known.view.filter(|v| !v.placement.is_empty()) else {
        plan.missing = (0..known.partitions).collect();
        return plan;
    };
    for (p, voters) in view.placement.iter().enumerate() {
        let p = p as PartitionId;
        let leader = known
            .leaders
            .get(&p)
            .copied()
            .filter(|l| view.holders(p).any(|h| h == *l));
        let freshest = || {
            voters
                .iter()
                .copied()
                .filter(|r| known.live.contains(r))
                .rev()
                .max_by_key(|r| known.applied.get(&(p, *r)).copied().unwrap_or(0))
        };
        match leader.or_else(freshest) {
            Some(w) => plan.asks.entry(w).or_default().push(p),
            None => plan.missing.push(p),
        }
    }
    plan
}

/// Round 2: for each partition of `retry`, another live voter that was neither tried for it
/// nor failed.
pub fn retry_round(
    view: Option<&ClusterView>,
    retry: &[PartitionId],
    tried: &HashMap<PartitionId, Vec<NodeId>>,
    failed: &HashSet<NodeId>,
    live: &HashSet<NodeId>,
) -> Plan {
    let mut plan = Plan::default();
    for p in retry {
        let voters = view
            .and_then(|v| v.placement.get(*p as usize))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let already = tried.get(p).map(Vec::as_slice).unwrap_or_default();
        let next = voters
            .iter()
            .copied()
            .find(|r| !already.contains(r) && !failed.contains(r) && live.contains(r));
        match next {
            Some(w) => plan.asks.entry(w).or_default().push(*p),
            None => plan.missing.push(*p),
        }
    }
    plan.missing.sort_unstable();
    plan
}

/// How to reach the workers and count the calls.
pub struct Runner<'a> {
    pub rpc: &'a Arc<RpcClient>,
    pub metrics: &'a Arc<Metrics>,
    /// Live workers and their node-to-node addresses.
    pub addrs: &'a HashMap<NodeId, SocketAddr>,
    /// Workers registered (live or not), for the coverage's `total_nodes`.
    pub registered: usize,
}

/// Asks the workers for the partial aggregates of `query` (two rounds at most, within
/// `timeout`), merges them, and says which part of the data answered.
pub async fn fan_out(
    runner: &Runner<'_>,
    known: &Known<'_>,
    query: &Query,
    timeout: Duration,
) -> (PartialAggregate, Coverage) {
    let strong = query.consistency == Consistency::Strong;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut merged = PartialAggregate::default();
    let mut responded: HashSet<NodeId> = HashSet::new();
    let mut failed: HashSet<NodeId> = HashSet::new();
    let mut tried: HashMap<PartitionId, Vec<NodeId>> = HashMap::new();
    let Plan {
        asks: mut plan,
        mut missing,
    } = first_round(known);
    for round in 0..2 {
        let mut retry: Vec<PartitionId> = Vec::new();
        let mut calls = tokio::task::JoinSet::new();
        for (worker, partitions) in std::mem::take(&mut plan) {
            for p in &partitions {
                tried.entry(*p).or_default().push(worker);
            }
            let Some(addr) = runner.addrs.get(&worker).copied() else {
                retry.extend(partitions);
                continue;
            };
            let rpc = Arc::clone(runner.rpc);
            let request = Request::Compute {
                partitions: partitions.clone(),
                query: query.clone(),
                strong,
            };
            let metrics = Arc::clone(runner.metrics);
            calls.spawn(async move {
                let started = Instant::now();
                let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
                let answer = rpc.call(worker, addr, &request, timeout).await;
                metrics.observe_rpc("compute", started.elapsed());
                (worker, partitions, answer)
            });
        }
        while let Some(joined) = calls.join_next().await {
            let Ok((worker, partitions, answer)) = joined else {
                continue;
            };
            match answer {
                Ok(RpcResponse::Computed {
                    partial,
                    missing: not_here,
                }) => {
                    responded.insert(worker);
                    merged.merge(partial);
                    retry.extend(not_here);
                }
                Ok(other) => {
                    warn!(worker, round, answer = ?other, "worker could not compute");
                    responded.insert(worker);
                    retry.extend(partitions);
                }
                Err(e) => {
                    warn!(worker, round, error = %e, "worker did not answer a query");
                    failed.insert(worker);
                    retry.extend(partitions);
                }
            }
        }
        if retry.is_empty() {
            break;
        }
        if round == 1 || tokio::time::Instant::now() >= deadline {
            missing.extend(retry);
            break;
        }
        let next = retry_round(known.view, &retry, &tried, &failed, known.live);
        missing.extend(next.missing);
        plan = next.asks;
        if plan.is_empty() {
            break;
        }
    }
    missing.sort_unstable();
    missing.dedup();
    let coverage = Coverage {
        is_partial: !missing.is_empty(),
        total_nodes: runner.registered as u32,
        responding_nodes: responded.len() as u32,
        missing_partitions: missing,
    };
    (merged, coverage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(placement: Vec<Vec<NodeId>>, learners: Vec<Vec<NodeId>>) -> ClusterView {
        ClusterView {
            epoch: 1,
            partitions: placement.len() as u32,
            replication_factor: placement.first().map_or(0, |r| r.len() as u32),
            founders: placement.clone(),
            placement,
            learners,
            workers: Vec::new(),
        }
    }

    fn set(ids: &[NodeId]) -> HashSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn every_partition_is_read_once_from_its_leader_or_the_freshest_live_voter() {
        let v = view(
            vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]],
            vec![vec![], vec![], vec![]],
        );
        let live = set(&[1, 2, 3, 4]);
        // Partition 0 led by 2; partition 1's reported leader 4 holds no replica; partition
        // 2 has none: the voter with the most applied entries answers.
        let leaders: HashMap<PartitionId, NodeId> = [(0, 2), (1, 4)].into();
        let applied: HashMap<(PartitionId, NodeId), u64> = [
            ((1, 1), 9),
            ((1, 2), 7),
            ((2, 3), 5),
            ((2, 1), 5),
            ((2, 2), 1),
        ]
        .into();
        let plan = first_round(&Known {
            view: Some(&v),
            partitions: 3,
            live: &live,
            leaders: &leaders,
            applied: &applied,
        });
        assert!(plan.missing.is_empty());
        // Every live worker is asked, with an empty list when it reads nothing.
        assert_eq!(plan.asks[&4], Vec::<PartitionId>::new());
        assert_eq!(plan.asks[&2], vec![0]);
        assert_eq!(plan.asks[&1], vec![1]);
        // A tie goes to the voter listed first.
        assert_eq!(plan.asks[&3], vec![2]);
        let read: usize = plan.asks.values().map(Vec::len).sum();
        assert_eq!(read, 3);
    }

    #[test]
    fn a_learner_leading_after_a_promotion_is_read_and_a_partition_without_live_voters_is_missing()
    {
        let v = view(vec![vec![1, 2], vec![3, 4]], vec![vec![5], vec![]]);
        let live = set(&[1, 5]);
        let leaders: HashMap<PartitionId, NodeId> = [(0, 5)].into();
        let plan = first_round(&Known {
            view: Some(&v),
            partitions: 2,
            live: &live,
            leaders: &leaders,
            applied: &HashMap::new(),
        });
        assert_eq!(plan.asks[&5], vec![0]);
        assert_eq!(plan.asks[&1], Vec::<PartitionId>::new());
        assert_eq!(plan.missing, vec![1]);
    }

    #[test]
    fn before_placement_every_partition_is_missing() {
        let plan = first_round(&Known {
            view: None,
            partitions: 4,
            live: &set(&[1]),
            leaders: &HashMap::new(),
            applied: &HashMap::new(),
        });
        assert_eq!(plan.missing, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_retry_goes_to_another_live_voter_never_tried_nor_failed() {
        let v = view(vec![vec![1, 2, 3], vec![1, 2, 3]], vec![vec![], vec![]]);
        let tried: HashMap<PartitionId, Vec<NodeId>> = [(0, vec![1]), (1, vec![1])].into();
        // 2 failed on another partition: not asked again; 3 is live.
        let plan = retry_round(Some(&v), &[0, 1], &tried, &set(&[1, 2]), &set(&[2, 3]));
        assert_eq!(plan.asks[&3], vec![0, 1]);
        assert!(plan.missing.is_empty());
        // Nobody left: missing.
        let plan = retry_round(Some(&v), &[1], &tried, &set(&[1, 2, 3]), &set(&[2, 3]));
        assert!(plan.asks.is_empty());
        assert_eq!(plan.missing, vec![1]);
    }
}
