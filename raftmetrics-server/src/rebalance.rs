//! The rebalancer's planner: which replicas move next and which leaderships change hands.
//!
//! A replica moves by Raft membership changes: the target joins the partition's group as a
//! learner, catches up, and is promoted by joint consensus in place of the source, which then
//! leaves. This module only decides; a runner on the control node carries the moves out and
//! tells the planner, on its next call, which ones are still running (`in_flight`).
//!
//! Everything here is a pure function of its arguments: no I/O, no clock, no randomness.
//! Maps are [`BTreeMap`]s and every choice breaks ties by the lowest id, so the same state
//! always gives the same plan.
//!
//! # What a plan contains
//! [`plan_moves`] returns the moves to start now, in priority order:
//! 1. [`MoveReason::Replace`]: a voter on a `Dead` worker (or on a worker the map does not
//!    know, which is treated as dead) is replaced on an `Active` worker. Partitions with the
//!    smallest majority margin come first (fewest live voters), then by partition id.
//! 2. [`MoveReason::Drain`]: a voter on a `Draining` worker moves to an `Active` one, by
//!    partition id.
//! 3. [`MoveReason::Balance`]: only when no replace or drain work could be started even with
//!    unlimited concurrency, a voter moves from the most loaded `Active` worker to the least
//!    loaded one while they differ by more than one replica.
//!
//! A partition gets at most one move at a time, a target never already holds the partition,
//! and [`MoveLimits`] bound the moves running in the cluster and on each worker. A partition
//! whose live voters (on `Active` or `Draining` workers) are not a majority of its voters gets
//! no move at all: a membership change needs a quorum of the current configuration, so such a
//! move could never finish and would only hold a slot. Nor does a partition every `Active`
//! worker already holds. Both are left to the runner to report (see [`blocked_partitions`]).
//!
//! # Convergence
//! Replace and drain moves take replicas off non-`Active` workers for good, so there are
//! finitely many. Balance counts every worker's replicas as they will be once the moves in
//! flight and those planned in the same call have finished (a source has given its replica
//! up, a target holds it), and only moves a replica between workers whose counts differ by
//! at least two. Each such move lowers the sum of the squared counts by at least two, so a
//! plan applied and planned again reaches a balanced cluster and then plans nothing.
//! Leader transfers converge by the same argument on leaderships.

use std::collections::{BTreeMap, BTreeSet};

use raftmetrics_core::PartitionId;
use raftmetrics_core::raft::NodeId;
use serde::{Deserialize, Serialize};

/// What the control node knows of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    /// Serving, and a target for new replicas.
    Active,
    /// Still serving, but its replicas are being moved off.
    Draining,
    /// Drained: it holds nothing and may be stopped.
    Drained,
    /// Gone: its replicas are replaced elsewhere.
    Dead,
}

/// One partition's replicas: voters, and learners being caught up by a move in flight.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicas {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// Why a replica moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveReason {
    /// The source is dead: the move restores a live voter.
    Replace,
    /// The source is draining.
    Drain,
    /// Both are active: the move evens out the replicas per worker.
    Balance,
}

/// Move one replica of `partition` from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveSpec {
    pub partition: PartitionId,
    pub from: NodeId,
    pub to: NodeId,
    pub reason: MoveReason,
}

/// How many moves may run at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveLimits {
    /// Moves running in the whole cluster.
    pub max_in_flight: usize,
    /// Moves a worker takes part in, as source or target. A dead source does not count: it
    /// does nothing in the move.
    pub max_per_worker: usize,
}

impl Default for MoveLimits {
    fn default() -> Self {
        MoveLimits {
            max_in_flight: 2,
            max_per_worker: 1,
        }
    }
}

/// Why [`plan_moves`] leaves a partition alone although a replica of it sits on a `Dead` or
/// `Draining` worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Blocked {
    /// Its live voters are not a majority of its voters: no membership change can commit.
    NoQuorum,
    /// Every `Active` worker already holds it.
    NoTarget,
}

fn state_of(workers: &BTreeMap<NodeId, WorkerState>, w: NodeId) -> Option<WorkerState> {
    workers.get(&w).copied()
}

fn is_active(workers: &BTreeMap<NodeId, WorkerState>, w: NodeId) -> bool {
    state_of(workers, w) == Some(WorkerState::Active)
}

/// Dead, or unknown to the control node (which is treated the same way).
fn is_gone(workers: &BTreeMap<NodeId, WorkerState>, w: NodeId) -> bool {
    matches!(state_of(workers, w), None | Some(WorkerState::Dead))
}

/// A voter that takes part in the partition's quorum: on an `Active` or `Draining` worker.
fn is_live(workers: &BTreeMap<NodeId, WorkerState>, w: NodeId) -> bool {
    matches!(
        state_of(workers, w),
        Some(WorkerState::Active | WorkerState::Draining)
    )
}

fn live_voters(r: &Replicas, workers: &BTreeMap<NodeId, WorkerState>) -> usize {
    r.voters.iter().filter(|&&w| is_live(workers, w)).count()
}

/// Whether the live voters are a majority of the voters, so a membership change can commit.
fn has_quorum(r: &Replicas, workers: &BTreeMap<NodeId, WorkerState>) -> bool {
    live_voters(r, workers) > r.voters.len() / 2
}

/// The replace or drain work a partition asks for, if any: Replace when a voter is dead,
/// else Drain when one is draining.
fn evacuation(r: &Replicas, workers: &BTreeMap<NodeId, WorkerState>) -> Option<MoveReason> {
    if r.voters.iter().any(|&w| is_gone(workers, w)) {
        Some(MoveReason::Replace)
    } else if r
        .voters
        .iter()
        .any(|&w| state_of(workers, w) == Some(WorkerState::Draining))
    {
        Some(MoveReason::Drain)
    } else {
        None
    }
}

fn partition_id(index: usize) -> PartitionId {
    PartitionId::try_from(index).expect("partition ids fit in u32")
}

/// The state of one [`plan_moves`] call: what is running, what is planned, and the counts
/// both change.
struct Planner<'a> {
    placement: &'a [Replicas],
    workers: &'a BTreeMap<NodeId, WorkerState>,
    limits: &'a MoveLimits,
    /// Moves in flight and planned.
    running: usize,
    /// Moves each worker takes part in, in flight and planned (a dead source excluded).
    busy: BTreeMap<NodeId, usize>,
    /// Partitions with a move in flight or planned.
    moving: BTreeSet<PartitionId>,
    /// Workers holding each partition: voters, learners, and the targets and sources of
    /// moves in flight or planned.
    holders: Vec<BTreeSet<NodeId>>,
    /// Replicas per `Active` worker as targets are chosen (rule 4): a move's target already
    /// holds its replica, its source still does.
    load: BTreeMap<NodeId, usize>,
    /// Replicas per `Active` worker once every move in flight or planned has finished: a
    /// move's target holds its replica, its source no longer does. Balance decides on these.
    projected: BTreeMap<NodeId, usize>,
    planned: Vec<MoveSpec>,
}

impl<'a> Planner<'a> {
    fn new(
        placement: &'a [Replicas],
        workers: &'a BTreeMap<NodeId, WorkerState>,
        in_flight: &[MoveSpec],
        limits: &'a MoveLimits,
    ) -> Self {
        let mut holders: Vec<BTreeSet<NodeId>> = placement
            .iter()
            .map(|r| r.voters.iter().chain(&r.learners).copied().collect())
            .collect();
        let mut after = holders.clone();
        let mut busy = BTreeMap::new();
        let mut moving = BTreeSet::new();
        for m in in_flight {
            *busy.entry(m.to).or_insert(0) += 1;
            if !is_gone(workers, m.from) {
                *busy.entry(m.from).or_insert(0) += 1;
            }
            moving.insert(m.partition);
            let i = m.partition as usize;
            if i < placement.len() {
                holders[i].insert(m.to);
                holders[i].insert(m.from);
                after[i].insert(m.to);
                after[i].remove(&m.from);
            }
        }
        let count = |sets: &[BTreeSet<NodeId>]| -> BTreeMap<NodeId, usize> {
            workers
                .iter()
                .filter(|&(_, &s)| s == WorkerState::Active)
                .map(|(&w, _)| (w, sets.iter().filter(|set| set.contains(&w)).count()))
                .collect()
        };
        Planner {
            placement,
            workers,
            limits,
            running: in_flight.len(),
            busy,
            moving,
            load: count(&holders),
            projected: count(&after),
            holders,
            planned: Vec::new(),
        }
    }

    fn room(&self) -> bool {
        self.running < self.limits.max_in_flight
    }

    fn has_capacity(&self, w: NodeId) -> bool {
        self.busy.get(&w).copied().unwrap_or(0) < self.limits.max_per_worker
    }

    /// The `Active` worker with the fewest replicas (rule 4 counts, lowest id on a tie) that
    /// does not hold `partition`, and has capacity when `capacity` is asked for.
    fn target(&self, partition: usize, capacity: bool) -> Option<NodeId> {
        self.load
            .iter()
            .filter(|&(w, _)| !self.holders[partition].contains(w))
            .filter(|&(&w, _)| !capacity || self.has_capacity(w))
            .min_by_key(|&(&w, &n)| (n, w))
            .map(|(&w, _)| w)
    }

    fn record(&mut self, m: MoveSpec) {
        self.running += 1;
        *self.busy.entry(m.to).or_insert(0) += 1;
        if !is_gone(self.workers, m.from) {
            *self.busy.entry(m.from).or_insert(0) += 1;
        }
        self.moving.insert(m.partition);
        self.holders[m.partition as usize].insert(m.to);
        if let Some(n) = self.load.get_mut(&m.to) {
            *n += 1;
        }
        if let Some(n) = self.projected.get_mut(&m.to) {
            *n += 1;
        }
        if let Some(n) = self.projected.get_mut(&m.from) {
            *n = n.saturating_sub(1);
        }
        self.planned.push(m);
    }

    /// Plans replace and drain moves; answers whether any such work is waiting (planned now
    /// or held back only by the limits).
    fn evacuate(&mut self, replication_factor: usize) -> bool {
        // (reason, majority margin, partition): Replace sorts before Drain.
        let mut work: Vec<(MoveReason, isize, usize)> = Vec::new();
        for (i, r) in self.placement.iter().enumerate() {
            if self.moving.contains(&partition_id(i)) {
                continue;
            }
            let Some(reason) = evacuation(r, self.workers) else {
                continue;
            };
            if !has_quorum(r, self.workers) || self.target(i, false).is_none() {
                continue; // blocked (rule 6); see `blocked_partitions`
            }
            let margin = match reason {
                // Live voters beyond a majority of the replication factor.
                MoveReason::Replace => {
                    live_voters(r, self.workers) as isize - (replication_factor / 2 + 1) as isize
                }
                _ => 0,
            };
            work.push((reason, margin, i));
        }
        work.sort_by_key(|&(reason, margin, i)| (reason != MoveReason::Replace, margin, i));
        let pending = !work.is_empty();
        for (reason, _, i) in work {
            if !self.room() {
                break;
            }
            let mut sources: Vec<NodeId> = self.placement[i].voters.clone();
            sources.sort_unstable();
            let from = sources.into_iter().find(|&w| match reason {
                MoveReason::Replace => is_gone(self.workers, w),
                _ => {
                    state_of(self.workers, w) == Some(WorkerState::Draining) && self.has_capacity(w)
                }
            });
            let (Some(from), Some(to)) = (from, self.target(i, true)) else {
                continue;
            };
            self.record(MoveSpec {
                partition: partition_id(i),
                from,
                to,
                reason,
            });
        }
        pending
    }

    /// Plans balance moves until the projected counts of the workers that can still take
    /// part differ by at most one, or the limits are reached.
    fn balance(&mut self) {
        while self.room() {
            let Some(m) = self.next_balance() else {
                return;
            };
            self.record(m);
        }
    }

    fn next_balance(&self) -> Option<MoveSpec> {
        let mut ready: Vec<(usize, NodeId)> = self
            .projected
            .iter()
            .filter(|&(&w, _)| self.has_capacity(w))
            .map(|(&w, &n)| (n, w))
            .collect();
        // Least loaded first, lowest id on a tie.
        ready.sort_unstable();
        let mut sources = ready.clone();
        // Most loaded first, lowest id on a tie.
        sources.sort_unstable_by_key(|&(n, w)| (std::cmp::Reverse(n), w));
        for &(most, from) in &sources {
            for &(least, to) in &ready {
                if most < least + 2 {
                    break;
                }
                if let Some(i) = self.movable(from, to) {
                    return Some(MoveSpec {
                        partition: partition_id(i),
                        from,
                        to,
                        reason: MoveReason::Balance,
                    });
                }
            }
        }
        None
    }

    /// The lowest partition `from` holds as a voter that `to` does not hold, with no move
    /// running and a quorum.
    fn movable(&self, from: NodeId, to: NodeId) -> Option<usize> {
        self.placement.iter().enumerate().position(|(i, r)| {
            r.voters.contains(&from)
                && !self.holders[i].contains(&to)
                && !self.moving.contains(&partition_id(i))
                && has_quorum(r, self.workers)
        })
    }
}

/// The moves to start now, beyond those in `in_flight` (which are running and count against
/// `limits`). `placement[p]` holds partition `p`'s replicas.
///
/// - A partition with a move in flight, or one planned earlier in the same call, gets none.
/// - A move's source is a voter of its partition; its target is an `Active` worker holding no
///   replica (voter or learner) of it: the one with the fewest replicas, counting the targets
///   of moves in flight as holding theirs and their sources as still holding theirs, with the
///   lowest id on a tie, among those the limits leave room on.
/// - At most `limits.max_in_flight` moves run in all, and a worker takes part (as source or
///   target) in at most `limits.max_per_worker`. A dead source does not count against its own
///   limit.
/// - Replace moves come first: partitions with the fewest live voters (on `Active` or
///   `Draining` workers) beyond a majority of `replication_factor`, then by id. Drain moves
///   follow, by partition id. A partition with a replica to replace or drain that cannot get
///   one now (no quorum, or every `Active` worker holds it) is skipped; [`blocked_partitions`]
///   names them.
/// - Balance moves are planned only when no replace or drain move is waiting, limits aside:
///   from the most loaded `Active` worker to the least loaded one (counts as they will be once
///   the running and planned moves finish), while they differ by more than one, the lowest
///   partition the target does not hold first.
/// - A `Drained` worker is never a source or a target; a learner with no move in flight (the
///   remains of an abandoned move) is never a source either.
pub fn plan_moves(
    placement: &[Replicas],
    workers: &BTreeMap<NodeId, WorkerState>,
    in_flight: &[MoveSpec],
    replication_factor: usize,
    limits: &MoveLimits,
) -> Vec<MoveSpec> {
    let mut planner = Planner::new(placement, workers, in_flight, limits);
    let pending = planner.evacuate(replication_factor);
    if !pending {
        planner.balance();
    }
    planner.planned
}

/// The partitions [`plan_moves`] leaves alone although they have a voter on a `Dead` (or
/// unknown) or `Draining` worker, and why, by partition id. Partitions with a move in flight
/// are not listed. A runner reports these: a partition without quorum needs its dead workers
/// back, one without a target needs more `Active` workers.
pub fn blocked_partitions(
    placement: &[Replicas],
    workers: &BTreeMap<NodeId, WorkerState>,
    in_flight: &[MoveSpec],
) -> Vec<(PartitionId, Blocked)> {
    let limits = MoveLimits {
        max_in_flight: usize::MAX,
        max_per_worker: usize::MAX,
    };
    let planner = Planner::new(placement, workers, in_flight, &limits);
    placement
        .iter()
        .enumerate()
        .filter(|&(i, r)| {
            !planner.moving.contains(&partition_id(i)) && evacuation(r, workers).is_some()
        })
        .filter_map(|(i, r)| {
            if !has_quorum(r, workers) {
                Some((partition_id(i), Blocked::NoQuorum))
            } else if planner.target(i, false).is_none() {
                Some((partition_id(i), Blocked::NoTarget))
            } else {
                None
            }
        })
        .collect()
}

/// Leadership transfers that spread partition leaders evenly over the `Active` workers, at
/// most `max` of them, as `(partition, new leader)`.
///
/// First every leader on a worker that is not `Active` hands over (by partition id), then,
/// while a worker leads at least two more partitions than a voter of one of them, one of its
/// partitions moves to that voter: the most loaded worker first (lowest id on a tie), to the
/// voter leading the fewest (then the lowest partition id, then the lowest voter id). Such a
/// worker always exists while one leads more than `ceil(leaders / active workers)` and the
/// voters allow it. A new leader is always a voter of the partition on an `Active` worker;
/// the counts include the transfers returned before it. Partitions beyond `placement` are
/// ignored.
pub fn plan_leader_transfers(
    placement: &[Replicas],
    leaders: &BTreeMap<PartitionId, NodeId>,
    workers: &BTreeMap<NodeId, WorkerState>,
    max: usize,
) -> Vec<(PartitionId, NodeId)> {
    let mut current: BTreeMap<PartitionId, NodeId> = leaders
        .iter()
        .filter(|&(&p, _)| (p as usize) < placement.len())
        .map(|(&p, &l)| (p, l))
        .collect();
    let mut counts: BTreeMap<NodeId, usize> = workers
        .iter()
        .filter(|&(_, &s)| s == WorkerState::Active)
        .map(|(&w, _)| (w, 0))
        .collect();
    for l in current.values() {
        if let Some(n) = counts.get_mut(l) {
            *n += 1;
        }
    }
    let active_voters = |p: PartitionId| -> Vec<NodeId> {
        let mut v: Vec<NodeId> = placement[p as usize]
            .voters
            .iter()
            .copied()
            .filter(|&w| is_active(workers, w))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut transfers = Vec::new();

    // Leaders on workers that are not Active hand over first.
    let stranded: Vec<PartitionId> = current
        .iter()
        .filter(|&(_, &l)| !is_active(workers, l))
        .map(|(&p, _)| p)
        .collect();
    for p in stranded {
        if transfers.len() >= max {
            return transfers;
        }
        let Some(to) = active_voters(p).into_iter().min_by_key(|w| (counts[w], *w)) else {
            continue;
        };
        *counts.get_mut(&to).expect("active") += 1;
        current.insert(p, to);
        transfers.push((p, to));
    }

    // Then the most loaded Active workers hand over to voters leading at least two fewer.
    while transfers.len() < max {
        let mut loaded: Vec<(usize, NodeId)> = counts.iter().map(|(&w, &n)| (n, w)).collect();
        loaded.sort_unstable_by_key(|&(n, w)| (std::cmp::Reverse(n), w));
        let next = loaded.iter().find_map(|&(most, from)| {
            current
                .iter()
                .filter(|&(_, &l)| l == from)
                .flat_map(|(&p, _)| {
                    active_voters(p)
                        .into_iter()
                        .filter(|&v| v != from && counts[&v] + 2 <= most)
                        .map(move |v| (p, v))
                })
                .min_by_key(|&(p, v)| (counts[&v], p, v))
                .map(|(p, v)| (from, p, v))
        });
        let Some((from, p, to)) = next else {
            break;
        };
        *counts.get_mut(&from).expect("active") -= 1;
        *counts.get_mut(&to).expect("active") += 1;
        current.insert(p, to);
        transfers.push((p, to));
    }
    transfers
}

/// Replicas per worker (voters and learners both count), for every worker in `workers` (0 when
/// none).
pub fn replica_counts(
    placement: &[Replicas],
    workers: &BTreeMap<NodeId, WorkerState>,
) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = workers.keys().map(|&w| (w, 0)).collect();
    for r in placement {
        let holders: BTreeSet<NodeId> = r.voters.iter().chain(&r.learners).copied().collect();
        for w in holders {
            if let Some(n) = counts.get_mut(&w) {
                *n += 1;
            }
        }
    }
    counts
}

/// Whether the cluster is balanced: no worker that is not `Active` (draining, drained, dead,
/// or unknown to `workers`) holds a replica, and the `Active` workers' replica counts differ
/// by at most one.
pub fn is_balanced(placement: &[Replicas], workers: &BTreeMap<NodeId, WorkerState>) -> bool {
    let stranded = placement
        .iter()
        .flat_map(|r| r.voters.iter().chain(&r.learners))
        .any(|&w| !is_active(workers, w));
    if stranded {
        return false;
    }
    let counts = replica_counts(placement, workers);
    let active = counts
        .iter()
        .filter(|&(&w, _)| is_active(workers, w))
        .map(|(_, &n)| n);
    match (active.clone().min(), active.max()) {
        (Some(min), Some(max)) => max - min <= 1,
        _ => true,
    }
}

/// Whether `worker` may start draining: the `Active` workers other than it must number at
/// least `replication_factor`, so every partition keeps its replicas on distinct workers.
/// Draining a worker that already drains (or has drained) is allowed; a dead or unknown one
/// is refused, as its replicas are replaced, not drained. With no partition placed, any known
/// worker may drain.
pub fn can_drain(
    placement: &[Replicas],
    workers: &BTreeMap<NodeId, WorkerState>,
    replication_factor: usize,
    worker: NodeId,
) -> Result<(), String> {
    match state_of(workers, worker) {
        None => return Err(format!("cannot drain worker {worker}: it is not known")),
        Some(WorkerState::Dead) => {
            return Err(format!(
                "cannot drain worker {worker}: it is dead, so its replicas are replaced instead"
            ));
        }
        Some(WorkerState::Draining | WorkerState::Drained) => return Ok(()),
        Some(WorkerState::Active) => {}
    }
    if placement.is_empty() {
        return Ok(());
    }
    let remaining = workers
        .iter()
        .filter(|&(&w, &s)| w != worker && s == WorkerState::Active)
        .count();
    if remaining < replication_factor {
        return Err(format!(
            "cannot drain worker {worker}: {remaining} active worker(s) would remain, fewer than \
             the replication factor {replication_factor}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::MoveReason::{Balance, Drain, Replace};
    use super::WorkerState::{Active, Dead, Drained, Draining};
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, FileFailurePersistence};

    fn mv(partition: PartitionId, from: NodeId, to: NodeId, reason: MoveReason) -> MoveSpec {
        MoveSpec {
            partition,
            from,
            to,
            reason,
        }
    }

    fn cluster(states: &[(NodeId, WorkerState)]) -> BTreeMap<NodeId, WorkerState> {
        states.iter().copied().collect()
    }

    fn all_active(ids: impl IntoIterator<Item = NodeId>) -> BTreeMap<NodeId, WorkerState> {
        ids.into_iter().map(|w| (w, Active)).collect()
    }

    fn voters(parts: &[&[NodeId]]) -> Vec<Replicas> {
        parts
            .iter()
            .map(|v| Replicas {
                voters: v.to_vec(),
                learners: Vec::new(),
            })
            .collect()
    }

    /// Partition `p` on workers `p, p+1, ..., p+rf-1` of `1..=n` (modulo n), like the
    /// control node's first placement.
    fn round_robin(n: usize, partitions: usize, rf: usize) -> Vec<Replicas> {
        (0..partitions)
            .map(|p| Replicas {
                voters: (0..rf).map(|i| ((p + i) % n + 1) as NodeId).collect(),
                learners: Vec::new(),
            })
            .collect()
    }

    fn limits(max_in_flight: usize, max_per_worker: usize) -> MoveLimits {
        MoveLimits {
            max_in_flight,
            max_per_worker,
        }
    }

    // ---- the rules every plan obeys, checked on every call of the simulations ----

    /// Rules 1, 2, 6 and the source's state for `new`, planned given `in_flight`.
    fn check_plan(
        placement: &[Replicas],
        workers: &BTreeMap<NodeId, WorkerState>,
        in_flight: &[MoveSpec],
        new: &[MoveSpec],
        limits: &MoveLimits,
    ) {
        let all: Vec<&MoveSpec> = in_flight.iter().chain(new).collect();
        assert!(
            all.len() <= limits.max_in_flight,
            "{} moves running, limit {}: {all:?}",
            all.len(),
            limits.max_in_flight
        );
        let mut per_worker: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut partitions = BTreeSet::new();
        for m in &all {
            *per_worker.entry(m.to).or_insert(0) += 1;
            if !is_gone(workers, m.from) {
                *per_worker.entry(m.from).or_insert(0) += 1;
            }
            assert!(
                partitions.insert(m.partition),
                "two moves of partition {}: {all:?}",
                m.partition
            );
        }
        for (w, n) in per_worker {
            assert!(
                n <= limits.max_per_worker,
                "worker {w} in {n} moves, limit {}: {all:?}",
                limits.max_per_worker
            );
        }
        for m in new {
            let r = &placement[m.partition as usize];
            assert_eq!(
                workers.get(&m.to),
                Some(&Active),
                "target not active: {m:?}"
            );
            assert!(
                !r.voters.contains(&m.to) && !r.learners.contains(&m.to),
                "target already holds the partition: {m:?} on {r:?}"
            );
            assert!(
                r.voters.contains(&m.from),
                "source not a voter: {m:?} on {r:?}"
            );
            assert!(
                has_quorum(r, workers),
                "move without quorum: {m:?} on {r:?}"
            );
            let source = workers.get(&m.from).copied();
            match m.reason {
                Replace => assert!(matches!(source, None | Some(Dead)), "{m:?}"),
                Drain => assert_eq!(source, Some(Draining), "{m:?}"),
                Balance => assert_eq!(source, Some(Active), "{m:?}"),
            }
        }
    }

    /// Where a move is: the target is a learner, then a voter beside the source (joint
    /// consensus), then the source has left.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Stage {
        Learner,
        Joint,
    }

    /// A cluster whose runner carries out every planned move, each stage taking a number of
    /// rounds from `delays` (cycled); with no delays, a move is applied as soon as planned.
    struct Sim {
        placement: Vec<Replicas>,
        workers: BTreeMap<NodeId, WorkerState>,
        rf: usize,
        limits: MoveLimits,
        delays: Vec<usize>,
        next_delay: usize,
        /// Moves running: the move, its stage, rounds left in it, the partition's live voters
        /// when it started.
        running: Vec<(MoveSpec, Stage, usize, usize)>,
        moves: Vec<MoveSpec>,
        rounds: usize,
    }

    impl Sim {
        fn new(
            placement: Vec<Replicas>,
            workers: BTreeMap<NodeId, WorkerState>,
            rf: usize,
            limits: MoveLimits,
            delays: Vec<usize>,
        ) -> Self {
            Sim {
                placement,
                workers,
                rf,
                limits,
                delays,
                next_delay: 0,
                running: Vec::new(),
                moves: Vec::new(),
                rounds: 0,
            }
        }

        fn delay(&mut self) -> usize {
            let d = self.delays[self.next_delay % self.delays.len()];
            self.next_delay += 1;
            d
        }

        fn in_flight(&self) -> Vec<MoveSpec> {
            self.running.iter().map(|(m, ..)| m.clone()).collect()
        }

        fn live(&self, p: PartitionId) -> usize {
            live_voters(&self.placement[p as usize], &self.workers)
        }

        /// Stage by stage, as the runner does it.
        fn advance(&mut self) {
            let mut still = Vec::new();
            for (m, stage, left, live) in std::mem::take(&mut self.running) {
                if left > 1 {
                    still.push((m, stage, left - 1, live));
                    continue;
                }
                let r = &mut self.placement[m.partition as usize];
                match stage {
                    Stage::Learner => {
                        r.learners.retain(|&w| w != m.to);
                        r.voters.push(m.to);
                        let d = self.delay();
                        still.push((m, Stage::Joint, d, live));
                    }
                    Stage::Joint => {
                        r.voters.retain(|&w| w != m.from);
                        // Rule 7: a finished move has not lowered the live voters.
                        assert!(self.live(m.partition) >= live, "{m:?} lowered live voters");
                    }
                }
            }
            self.running = still;
        }

        fn apply_now(&mut self, m: &MoveSpec) {
            let live = self.live(m.partition);
            let r = &mut self.placement[m.partition as usize];
            r.voters.retain(|&w| w != m.from);
            r.voters.push(m.to);
            assert!(self.live(m.partition) >= live, "{m:?} lowered live voters");
        }

        /// One round: running moves advance, then a plan, checked, is started. Answers whether
        /// anything is left to do.
        fn round(&mut self) -> bool {
            self.rounds += 1;
            self.advance();
            let in_flight = self.in_flight();
            let plan = plan_moves(
                &self.placement,
                &self.workers,
                &in_flight,
                self.rf,
                &self.limits,
            );
            check_plan(
                &self.placement,
                &self.workers,
                &in_flight,
                &plan,
                &self.limits,
            );
            for m in &plan {
                if self.delays.is_empty() {
                    self.apply_now(m);
                } else {
                    let live = self.live(m.partition);
                    self.placement[m.partition as usize].learners.push(m.to);
                    let d = self.delay();
                    self.running.push((m.clone(), Stage::Learner, d, live));
                }
            }
            self.moves.extend(plan.iter().cloned());
            !plan.is_empty() || !self.running.is_empty()
        }

        /// Runs until nothing is planned and nothing runs; panics after `max_rounds`.
        fn run(&mut self, max_rounds: usize) {
            while self.round() {
                assert!(
                    self.rounds < max_rounds,
                    "no convergence in {max_rounds} rounds"
                );
            }
            // Settled: planning again plans nothing.
            assert_eq!(
                plan_moves(&self.placement, &self.workers, &[], self.rf, &self.limits),
                vec![]
            );
            for r in &self.placement {
                assert!(r.learners.is_empty(), "{r:?}");
                let distinct: BTreeSet<_> = r.voters.iter().collect();
                assert_eq!(distinct.len(), r.voters.len(), "duplicate replicas: {r:?}");
            }
        }

        fn counts(&self) -> BTreeMap<NodeId, usize> {
            replica_counts(&self.placement, &self.workers)
        }
    }

    // ---- balance ----

    #[test]
    fn a_balanced_cluster_plans_nothing() {
        let workers = all_active(1..=4);
        let placement = round_robin(4, 16, 3);
        assert!(is_balanced(&placement, &workers));
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &MoveLimits::default()),
            vec![]
        );
    }

    #[test]
    fn a_new_worker_gets_one_move_at_a_time_under_default_limits() {
        // 3 workers hold all 16 partitions; worker 4 joins. Every move targets worker 4, and
        // it takes part in one move at a time.
        let workers = all_active(1..=4);
        let placement = round_robin(3, 16, 3);
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &MoveLimits::default()),
            vec![mv(0, 1, 4, Balance)]
        );
        // With room for two moves per worker: the second source is the most loaded worker
        // counting the first move as done (1 has given a replica up), and skips partition 0,
        // which is moving.
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &limits(2, 2)),
            vec![mv(0, 1, 4, Balance), mv(1, 2, 4, Balance)]
        );
        // A move in flight fills worker 4: nothing more under the default limits.
        assert_eq!(
            plan_moves(
                &placement,
                &workers,
                &[mv(0, 1, 4, Balance)],
                3,
                &MoveLimits::default()
            ),
            vec![]
        );
        // With the move in flight counted as done, the next one comes from worker 2.
        assert_eq!(
            plan_moves(
                &placement,
                &workers,
                &[mv(0, 1, 4, Balance)],
                3,
                &limits(2, 2)
            ),
            vec![mv(1, 2, 4, Balance)]
        );
    }

    #[test]
    fn three_to_four_workers_at_rf3_converges_in_twelve_moves() {
        let mut sim = Sim::new(
            round_robin(3, 16, 3),
            all_active(1..=4),
            3,
            MoveLimits::default(),
            Vec::new(),
        );
        sim.run(100);
        assert!(is_balanced(&sim.placement, &sim.workers));
        for n in sim.counts().values() {
            assert!((11..=13).contains(n), "{:?}", sim.counts());
        }
        // 48 replicas over 4 workers: exactly 12 each, reached with the fewest moves (all to
        // the new worker, none undone), one per round since worker 4 is in every move.
        assert_eq!(
            sim.counts(),
            BTreeMap::from([(1, 12), (2, 12), (3, 12), (4, 12)])
        );
        assert_eq!(sim.moves.len(), 12);
        assert!(sim.moves.iter().all(|m| m.to == 4 && m.reason == Balance));
        assert_eq!(
            sim.rounds, 13,
            "12 rounds with a move, one that finds nothing"
        );
        for r in &sim.placement {
            assert_eq!(r.voters.len(), 3);
        }
    }

    #[test]
    fn three_to_four_workers_converges_with_moves_that_take_time() {
        for delays in [vec![1], vec![2, 1, 3], vec![3]] {
            let mut sim = Sim::new(
                round_robin(3, 16, 3),
                all_active(1..=4),
                3,
                MoveLimits::default(),
                delays.clone(),
            );
            sim.run(500);
            assert_eq!(
                sim.counts(),
                BTreeMap::from([(1, 12), (2, 12), (3, 12), (4, 12)]),
                "delays {delays:?}"
            );
            assert_eq!(sim.moves.len(), 12, "delays {delays:?}");
            for r in &sim.placement {
                assert_eq!(r.voters.len(), 3);
            }
        }
    }

    #[test]
    fn two_new_workers_share_the_moves_within_the_limits() {
        // 3 → 5 workers: two moves at once, each with its own source and target.
        let workers = all_active(1..=5);
        let placement = round_robin(3, 16, 3);
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &MoveLimits::default()),
            vec![mv(0, 1, 4, Balance), mv(1, 2, 5, Balance)]
        );
        let mut sim = Sim::new(placement, workers, 3, MoveLimits::default(), vec![2, 1]);
        sim.run(500);
        assert!(
            is_balanced(&sim.placement, &sim.workers),
            "{:?}",
            sim.counts()
        );
        // 48 over 5: 10 or 9 each, so the two new workers received 19 or 20.
        let received = sim.counts()[&4] + sim.counts()[&5];
        assert_eq!(sim.moves.len(), received);
    }

    #[test]
    fn rf1_balances_and_drains_the_only_replica() {
        // RF 1, 6 partitions on workers 1 and 2; worker 3 joins.
        let workers = all_active(1..=3);
        let placement = round_robin(2, 6, 1);
        assert_eq!(
            plan_moves(&placement, &workers, &[], 1, &limits(2, 1)),
            vec![mv(0, 1, 3, Balance)]
        );
        let mut sim = Sim::new(placement, workers, 1, limits(2, 1), vec![1]);
        sim.run(100);
        assert_eq!(sim.counts(), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
        assert_eq!(sim.moves.len(), 2);

        // Now worker 2 drains: its two partitions go to 1 and 3, one at a time (worker 2 is
        // the source of both).
        sim.workers.insert(2, Draining);
        let first = plan_moves(&sim.placement, &sim.workers, &[], 1, &sim.limits);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].from, first[0].reason), (2, Drain));
        sim.run(100);
        assert_eq!(sim.counts(), BTreeMap::from([(1, 3), (2, 0), (3, 3)]));
        assert!(is_balanced(&sim.placement, &sim.workers));
        for r in &sim.placement {
            assert_eq!(r.voters.len(), 1);
        }
    }

    #[test]
    fn rf1_partition_on_a_dead_worker_is_left_to_the_runner() {
        // Its only voter is gone: no membership change can commit, so no move is planned and
        // no slot is spent on it; the other partitions still balance.
        let workers = cluster(&[(1, Dead), (2, Active), (3, Active)]);
        let placement = voters(&[&[1], &[2], &[2], &[2], &[3]]);
        assert_eq!(
            blocked_partitions(&placement, &workers, &[]),
            vec![(0, Blocked::NoQuorum)]
        );
        assert_eq!(
            plan_moves(&placement, &workers, &[], 1, &MoveLimits::default()),
            vec![mv(1, 2, 3, Balance)]
        );
    }

    // ---- drain ----

    #[test]
    fn drain_plans_the_lowest_partitions_of_the_draining_worker_first() {
        let workers = cluster(&[(1, Active), (2, Active), (3, Active), (4, Draining)]);
        let placement = round_robin(4, 16, 3);
        // Worker 4 holds partitions 1, 2, 3, 5, ...; it is the source of every move, so one
        // at a time. Partition 1 is on 2, 3, 4: the only target is 1.
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &MoveLimits::default()),
            vec![mv(1, 4, 1, Drain)]
        );
        // With room on the source, partition 2 (on 3, 4, 1) can only go to 2, and 3 (on 4,
        // 1, 2) to 3; the global limit stops at two.
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &limits(2, 2)),
            vec![mv(1, 4, 1, Drain), mv(2, 4, 2, Drain)]
        );
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &limits(8, 8)),
            vec![
                mv(1, 4, 1, Drain),
                mv(2, 4, 2, Drain),
                mv(3, 4, 3, Drain),
                mv(5, 4, 1, Drain),
                mv(6, 4, 2, Drain),
                mv(7, 4, 3, Drain),
                mv(9, 4, 1, Drain),
                mv(10, 4, 2, Drain),
            ]
        );
    }

    #[test]
    fn drain_moves_everything_off_within_the_limits() {
        for (lim, delays) in [
            (MoveLimits::default(), vec![]),
            (MoveLimits::default(), vec![2, 1]),
            (limits(3, 2), vec![1, 3]),
        ] {
            let workers = cluster(&[(1, Active), (2, Active), (3, Active), (4, Draining)]);
            let mut sim = Sim::new(round_robin(4, 16, 3), workers, 3, lim.clone(), delays);
            sim.run(500);
            assert_eq!(
                sim.counts(),
                BTreeMap::from([(1, 16), (2, 16), (3, 16), (4, 0)]),
                "{lim:?}"
            );
            assert!(is_balanced(&sim.placement, &sim.workers));
            assert_eq!(
                sim.moves.len(),
                12,
                "each of worker 4's replicas moved once"
            );
            assert!(sim.moves.iter().all(|m| m.from == 4 && m.reason == Drain));
            for r in &sim.placement {
                assert_eq!(r.voters.len(), 3);
            }
        }
    }

    #[test]
    fn drain_to_a_fifth_worker_picks_the_least_loaded_target() {
        // Worker 5 is new and empty: every drained replica goes there first, until the loads
        // even out.
        let workers = cluster(&[
            (1, Active),
            (2, Active),
            (3, Active),
            (4, Draining),
            (5, Active),
        ]);
        let placement = round_robin(4, 16, 3);
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &limits(2, 2)),
            vec![mv(1, 4, 5, Drain), mv(2, 4, 5, Drain)]
        );
        let mut sim = Sim::new(placement, workers, 3, MoveLimits::default(), vec![1, 2]);
        sim.run(500);
        assert!(
            is_balanced(&sim.placement, &sim.workers),
            "{:?}",
            sim.counts()
        );
        assert_eq!(sim.counts()[&4], 0);
    }

    #[test]
    fn drain_before_balance() {
        // Workers 5 and 6 are new and worker 4 drains. Worker 4 is busy after one drain move,
        // so the other drain moves wait; a balance move (1 → 6) would fit the limits but is
        // not planned while drain work waits.
        let workers = cluster(&[
            (1, Active),
            (2, Active),
            (3, Active),
            (4, Draining),
            (5, Active),
            (6, Active),
        ]);
        let placement = round_robin(4, 16, 3);
        let plan = plan_moves(&placement, &workers, &[], 3, &limits(4, 1));
        assert_eq!(plan, vec![mv(1, 4, 5, Drain)]);
    }

    #[test]
    fn a_drained_worker_is_neither_source_nor_target() {
        let workers = cluster(&[(1, Active), (2, Active), (3, Drained), (4, Active)]);
        // Worker 3 is drained but (wrongly) still listed on partition 0: it is not moved, and
        // as it is no live voter, partition 0 (one live voter of two) has no quorum and stays
        // put too. Worker 4, the emptiest, takes balance moves from 1, the most loaded.
        let placement = voters(&[&[1, 3], &[1, 2], &[1, 2], &[1, 2]]);
        let plan = plan_moves(&placement, &workers, &[], 2, &limits(4, 4));
        assert!(plan.iter().all(|m| m.from != 3 && m.to != 3), "{plan:?}");
        assert_eq!(plan, vec![mv(1, 1, 4, Balance), mv(2, 1, 4, Balance)]);
        assert!(!is_balanced(&placement, &workers));
    }

    // ---- replace ----

    #[test]
    fn a_dead_worker_at_rf3_with_4_workers_is_replaced() {
        // Worker 4 died. Partition p sits on p+1, p+2, p+3 (mod 4): each partition it held
        // has one target, the worker it did not hold. A dead source does not count against
        // its own limit, so two moves from worker 4 start together.
        let workers = cluster(&[(1, Active), (2, Active), (3, Active), (4, Dead)]);
        let placement = round_robin(4, 8, 3);
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &MoveLimits::default()),
            vec![mv(1, 4, 1, Replace), mv(2, 4, 2, Replace)]
        );
        let mut sim = Sim::new(placement, workers, 3, MoveLimits::default(), vec![1, 2]);
        sim.run(500);
        assert!(is_balanced(&sim.placement, &sim.workers));
        assert_eq!(sim.moves.len(), 6, "the six partitions worker 4 held");
        assert!(sim.moves.iter().all(|m| m.from == 4 && m.reason == Replace));
        for r in &sim.placement {
            let mut v = r.voters.clone();
            v.sort_unstable();
            assert_eq!(v, vec![1, 2, 3]);
        }
    }

    #[test]
    fn the_most_threatened_partitions_are_replaced_first() {
        // RF 3; worker 4 died, and 5 earlier. Workers 1, 2, 3 and the new 6 are active.
        // Partitions 0 and 2 have two live voters of three: one more failure loses their
        // majority (margin 0). Partition 1 was left with four voters by an interrupted move;
        // with three live its margin is 1, so it comes after 2 despite its lower id.
        // Partition 3 has one live voter of three: no quorum, nothing can be done for it.
        let workers = cluster(&[
            (1, Active),
            (2, Active),
            (3, Active),
            (4, Dead),
            (5, Dead),
            (6, Active),
        ]);
        let placement = voters(&[&[1, 2, 4], &[1, 2, 3, 4], &[2, 3, 4], &[1, 4, 5]]);
        assert_eq!(
            blocked_partitions(&placement, &workers, &[]),
            vec![(3, Blocked::NoQuorum)]
        );
        // All at once: 6 is the emptiest target of each.
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &limits(8, 8)),
            vec![
                mv(0, 4, 6, Replace),
                mv(2, 4, 6, Replace),
                mv(1, 4, 6, Replace)
            ]
        );
        // Two at a time: partition 1 waits.
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &limits(2, 8)),
            vec![mv(0, 4, 6, Replace), mv(2, 4, 6, Replace)]
        );
        // One move per worker: 6 is taken by partition 0, so partition 2 goes to 1, the
        // other worker not holding it.
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &limits(2, 1)),
            vec![mv(0, 4, 6, Replace), mv(2, 4, 1, Replace)]
        );
    }

    #[test]
    fn fewest_live_voters_first_at_rf5() {
        // RF 5 on 7 workers; 6 and 7 died. Partition 1 lost both (3 live: margin 0) and goes
        // before partition 0, which lost one (4 live: margin 1), despite its higher id.
        let mut states: Vec<(NodeId, WorkerState)> = (1..=5).map(|w| (w, Active)).collect();
        states.extend([(6, Dead), (7, Dead), (8, Active)]);
        let workers = cluster(&states);
        let placement = voters(&[&[1, 2, 3, 4, 6], &[1, 2, 3, 6, 7], &[1, 2, 3, 4, 5]]);
        // One move at a time: partition 1, whose lowest dead voter is 6, to the emptiest
        // worker not holding it (8 has nothing).
        assert_eq!(
            plan_moves(&placement, &workers, &[], 5, &limits(1, 1)),
            vec![mv(1, 6, 8, Replace)]
        );
        // Two at a time: 8 is then busy, so partition 0 goes to 5 (one replica; 4 has two).
        assert_eq!(
            plan_moves(&placement, &workers, &[], 5, &limits(2, 1)),
            vec![mv(1, 6, 8, Replace), mv(0, 6, 5, Replace)]
        );
        let mut sim = Sim::new(placement, workers, 5, limits(2, 1), vec![1, 2]);
        sim.run(500);
        assert!(
            is_balanced(&sim.placement, &sim.workers),
            "{:?}",
            sim.counts()
        );
        for r in &sim.placement {
            assert_eq!(r.voters.len(), 5);
            assert!(r.voters.iter().all(|&w| w != 6 && w != 7));
        }
    }

    #[test]
    fn replace_before_drain() {
        let workers = cluster(&[
            (1, Active),
            (2, Active),
            (3, Draining),
            (4, Dead),
            (5, Active),
        ]);
        // Partition 0 drains from 3; partition 1 replaces 4 and has priority.
        let placement = voters(&[&[1, 2, 3], &[1, 2, 4]]);
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &limits(1, 1)),
            vec![mv(1, 4, 5, Replace)]
        );
        // Both, when the limits allow, but not on the same target: 5 is busy, so partition 0
        // has no target with room yet.
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &limits(2, 1)),
            vec![mv(1, 4, 5, Replace)]
        );
        // A partition with a dead and a draining voter is replaced first.
        let placement = voters(&[&[1, 3, 4]]);
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &limits(2, 2)),
            vec![mv(0, 4, 2, Replace)]
        );
    }

    #[test]
    fn a_worker_missing_from_the_map_is_replaced_like_a_dead_one() {
        let workers = all_active(1..=4);
        let placement = voters(&[&[1, 2, 9]]);
        assert_eq!(
            plan_moves(&placement, &workers, &[], 3, &MoveLimits::default()),
            vec![mv(0, 9, 3, Replace)]
        );
        assert!(!is_balanced(&placement, &workers));
    }

    // ---- in flight ----

    #[test]
    fn moves_in_flight_count_against_the_limits_and_block_their_partition() {
        let workers = cluster(&[
            (1, Active),
            (2, Active),
            (3, Active),
            (4, Dead),
            (5, Active),
        ]);
        let mut placement = voters(&[&[1, 2, 4], &[1, 3, 4], &[2, 3, 4]]);
        // Partition 0's replacement is running: 5 is a learner of it.
        placement[0].learners.push(5);
        let running = [mv(0, 4, 5, Replace)];
        // Partition 0 has its move. Partition 1 could go to 2 or 5; 5 is busy, so 2. The
        // global limit of 2 is then reached and partition 2 waits.
        assert_eq!(
            plan_moves(&placement, &workers, &running, 3, &MoveLimits::default()),
            vec![mv(1, 4, 2, Replace)]
        );
        // Two in flight: nothing more.
        let running = [mv(0, 4, 5, Replace), mv(1, 4, 2, Replace)];
        assert_eq!(
            plan_moves(&placement, &workers, &running, 3, &MoveLimits::default()),
            vec![]
        );
        // With more room: 5 holds one replica (its learner of partition 0) and 2 holds two,
        // so partition 1 goes to 5; 5 is then full, so partition 2 goes to 1 rather than 5.
        assert_eq!(
            plan_moves(
                &placement,
                &workers,
                &[mv(0, 4, 5, Replace)],
                3,
                &limits(3, 2)
            ),
            vec![mv(1, 4, 5, Replace), mv(2, 4, 1, Replace)]
        );
    }

    #[test]
    fn a_move_in_flight_not_yet_visible_in_the_placement_still_counts() {
        // The runner started 0: 1 → 4 but the placement does not show the learner yet. Worker
        // 4 already counts as holding partition 0 (no second replica there) and, under the
        // projected counts, worker 1 as having given it up: 1 has 3, 2 and 3 have 4, 4 has 1.
        // So 2 and 3 each give one to 4, and all end with 3; nothing more comes from 1.
        let workers = all_active(1..=4);
        let placement = round_robin(3, 4, 3);
        let plan = plan_moves(
            &placement,
            &workers,
            &[mv(0, 1, 4, Balance)],
            3,
            &limits(4, 4),
        );
        assert_eq!(plan, vec![mv(1, 2, 4, Balance), mv(2, 3, 4, Balance)]);
    }

    // ---- can_drain ----

    #[test]
    fn can_drain_refuses_when_too_few_workers_would_remain() {
        let placement = round_robin(3, 4, 3);
        let workers = all_active(1..=3);
        let err = can_drain(&placement, &workers, 3, 2).unwrap_err();
        assert!(
            err.contains("worker 2") && err.contains("replication factor 3"),
            "{err}"
        );

        let workers = all_active(1..=4);
        assert_eq!(can_drain(&placement, &workers, 3, 2), Ok(()));

        // A dead worker and one already draining do not count as remaining.
        let workers = cluster(&[
            (1, Active),
            (2, Active),
            (3, Active),
            (4, Dead),
            (5, Draining),
        ]);
        assert!(can_drain(&placement, &workers, 3, 1).is_err());
        assert_eq!(can_drain(&placement, &workers, 2, 1), Ok(()));
        // Draining again is fine; a dead or unknown worker is refused.
        assert_eq!(can_drain(&placement, &workers, 3, 5), Ok(()));
        assert!(
            can_drain(&placement, &workers, 3, 4)
                .unwrap_err()
                .contains("dead")
        );
        assert!(
            can_drain(&placement, &workers, 3, 9)
                .unwrap_err()
                .contains("not known")
        );
        // RF 1: the last Active worker cannot drain, the one before it can.
        let workers = all_active(1..=2);
        assert_eq!(can_drain(&placement, &workers, 1, 1), Ok(()));
        let workers = cluster(&[(1, Draining), (2, Active)]);
        assert!(can_drain(&placement, &workers, 1, 2).is_err());
    }

    // ---- counts and balance ----

    #[test]
    fn replica_counts_list_every_worker_and_count_learners() {
        let workers = cluster(&[(1, Active), (2, Active), (3, Dead), (4, Active)]);
        let mut placement = voters(&[&[1, 2], &[1, 3], &[9, 1]]);
        placement[0].learners.push(4);
        assert_eq!(
            replica_counts(&placement, &workers),
            BTreeMap::from([(1, 3), (2, 1), (3, 1), (4, 1)])
        );
        assert!(!is_balanced(&placement, &workers));
        assert_eq!(
            replica_counts(&[], &workers),
            BTreeMap::from([(1, 0), (2, 0), (3, 0), (4, 0)])
        );
        assert!(is_balanced(&[], &workers));
    }

    #[test]
    fn is_balanced_looks_at_active_spread_and_stranded_replicas() {
        let workers = all_active(1..=3);
        assert!(is_balanced(&voters(&[&[1, 2], &[3]]), &workers));
        assert!(!is_balanced(&voters(&[&[1, 2], &[1]]), &workers));
        let workers = cluster(&[(1, Active), (2, Active), (3, Draining)]);
        assert!(!is_balanced(&voters(&[&[1, 3]]), &workers));
        assert!(is_balanced(&voters(&[&[1, 2]]), &workers));
    }

    #[test]
    fn types_round_trip_through_json() {
        let m = mv(3, 1, 2, Drain);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<MoveSpec>(&json).unwrap(), m);
        let l = MoveLimits::default();
        assert_eq!(l, limits(2, 1));
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<MoveLimits>(&json).unwrap(), l);
        let r = Replicas {
            voters: vec![1, 2],
            learners: vec![3],
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Replicas>(&json).unwrap(), r);
        let json = serde_json::to_string(&Draining).unwrap();
        assert_eq!(
            serde_json::from_str::<WorkerState>(&json).unwrap(),
            Draining
        );
    }

    // ---- leader transfers ----

    /// Applies transfers until none is planned; answers the rounds taken.
    fn spread_leaders(
        placement: &[Replicas],
        leaders: &mut BTreeMap<PartitionId, NodeId>,
        workers: &BTreeMap<NodeId, WorkerState>,
        max: usize,
        max_rounds: usize,
    ) -> usize {
        let mut rounds = 0;
        loop {
            let transfers = plan_leader_transfers(placement, leaders, workers, max);
            assert!(transfers.len() <= max);
            if transfers.is_empty() {
                return rounds;
            }
            for (p, to) in transfers {
                assert!(placement[p as usize].voters.contains(&to), "{p} → {to}");
                assert_eq!(workers.get(&to), Some(&Active), "{p} → {to}");
                leaders.insert(p, to);
            }
            rounds += 1;
            assert!(rounds < max_rounds, "leaders did not settle");
        }
    }

    fn leader_counts(
        leaders: &BTreeMap<PartitionId, NodeId>,
        workers: &BTreeMap<NodeId, WorkerState>,
    ) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = workers
            .iter()
            .filter(|&(_, &s)| s == Active)
            .map(|(&w, _)| (w, 0))
            .collect();
        for l in leaders.values() {
            if let Some(n) = counts.get_mut(l) {
                *n += 1;
            }
        }
        counts
    }

    #[test]
    fn leaders_on_one_worker_spread_to_within_one() {
        let workers = all_active(1..=4);
        let placement = round_robin(4, 16, 3);
        // Every partition led by its first voter that is worker 1 or 2 (1 when it can).
        let mut leaders: BTreeMap<PartitionId, NodeId> = placement
            .iter()
            .enumerate()
            .map(|(p, r)| {
                let l = if r.voters.contains(&1) { 1 } else { 2 };
                (p as PartitionId, l)
            })
            .collect();
        assert_eq!(leader_counts(&leaders, &workers)[&1], 12);
        // The first call: worker 1 (12) hands its lowest partition with an idle voter to the
        // voter leading the fewest, lowest id first: partition 0 (1, 2, 3) to 3.
        assert_eq!(
            plan_leader_transfers(&placement, &leaders, &workers, 1),
            vec![(0, 3)]
        );
        let rounds = spread_leaders(&placement, &mut leaders, &workers, 2, 50);
        assert_eq!(
            leader_counts(&leaders, &workers),
            BTreeMap::from([(1, 4), (2, 4), (3, 4), (4, 4)])
        );
        // Worker 1 sheds at least 8 leaderships, 2 per call: 4 calls at best.
        assert!(rounds <= 8, "{rounds} rounds");
    }

    #[test]
    fn leaders_on_draining_or_dead_workers_move_first() {
        let workers = cluster(&[(1, Active), (2, Active), (3, Draining), (4, Dead)]);
        let placement = voters(&[&[1, 2, 3], &[1, 3, 4], &[1, 2, 4], &[3, 4]]);
        let leaders = BTreeMap::from([(0, 1), (1, 3), (2, 4), (3, 3)]);
        // Partition 1 (led by draining 3): its only Active voter is 1. Partition 2 (dead 4):
        // 2 leads nothing, 1 leads two now. Partition 3 has no Active voter: left alone.
        assert_eq!(
            plan_leader_transfers(&placement, &leaders, &workers, 5),
            vec![(1, 1), (2, 2)]
        );
        // With room for one transfer only, the stranded leader goes first even though worker
        // 1 is the most loaded.
        assert_eq!(
            plan_leader_transfers(&placement, &leaders, &workers, 1),
            vec![(1, 1)]
        );
        assert_eq!(
            plan_leader_transfers(&placement, &leaders, &workers, 0),
            vec![]
        );
    }

    #[test]
    fn leaders_already_spread_stay() {
        let workers = all_active(1..=3);
        let placement = round_robin(3, 7, 3);
        let leaders = BTreeMap::from([(0, 1), (1, 2), (2, 3), (3, 1), (4, 2), (5, 3), (6, 1)]);
        assert_eq!(
            plan_leader_transfers(&placement, &leaders, &workers, 4),
            vec![]
        );
    }

    // ---- properties ----

    fn state() -> impl Strategy<Value = WorkerState> {
        prop_oneof![8 => Just(Active), 2 => Just(Draining), 2 => Just(Dead), 1 => Just(Drained)]
    }

    type Case = (BTreeMap<NodeId, WorkerState>, usize, Vec<Replicas>);

    /// A random cluster: worker states, replication factor, and a placement of distinct
    /// voters on workers that are not drained (fewer than RF when not enough are).
    fn cluster_case() -> impl Strategy<Value = Case> {
        (1usize..=7)
            .prop_flat_map(|n| {
                (
                    prop::collection::vec(state(), n),
                    1usize..=n.min(5),
                    prop::collection::vec(prop::collection::vec(any::<u32>(), n), 0..=24),
                )
            })
            .prop_map(|(states, rf, orders)| {
                let workers: BTreeMap<NodeId, WorkerState> = states
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| (i as NodeId + 1, s))
                    .collect();
                let placement = orders
                    .into_iter()
                    .map(|keys| {
                        let mut ids: Vec<(u32, NodeId)> = keys
                            .into_iter()
                            .zip(1..)
                            .filter(|&(_, w)| workers[&w] != Drained)
                            .collect();
                        ids.sort_unstable();
                        Replicas {
                            voters: ids.into_iter().take(rf).map(|(_, w)| w).collect(),
                            learners: Vec::new(),
                        }
                    })
                    .filter(|r| !r.voters.is_empty())
                    .collect();
                (workers, rf, placement)
            })
    }

    fn config() -> Config {
        Config {
            cases: 1024,
            failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
            ..Config::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn plans_converge_without_breaking_a_rule(
            (workers, rf, placement) in cluster_case(),
            max_in_flight in 1usize..=4,
            max_per_worker in 1usize..=3,
            delays in prop::collection::vec(1usize..=3, 0..=4),
        ) {
            let sizes: Vec<usize> = placement.iter().map(|r| r.voters.len()).collect();
            let replicas: usize = sizes.iter().sum();
            let active = |w: &NodeId| workers.get(w) == Some(&Active);
            // Moves off non-Active workers, at most one per such voter, and balance moves,
            // each lowering the sum of squared Active counts by at least 2, which each of the
            // others raises by at most 2 * replicas + 1.
            let evacuations = placement.iter().flat_map(|r| &r.voters).filter(|w| !active(w)).count();
            let squares: usize = replica_counts(&placement, &workers)
                .iter()
                .filter(|(w, _)| active(w))
                .map(|(_, n)| n * n)
                .sum();
            let most_moves = evacuations + (squares + evacuations * (2 * replicas + 1)) / 2;

            let lim = limits(max_in_flight, max_per_worker);
            let mut sim = Sim::new(placement, workers.clone(), rf, lim, delays.clone());
            sim.run(20 * (most_moves + 2) * 7);
            prop_assert!(sim.moves.len() <= most_moves, "{} moves", sim.moves.len());
            let after: Vec<usize> = sim.placement.iter().map(|r| r.voters.len()).collect();
            prop_assert_eq!(&after, &sizes, "a partition's voter count changed");
            let blocked = blocked_partitions(&sim.placement, &sim.workers, &[]);
            if blocked.is_empty() {
                prop_assert!(
                    is_balanced(&sim.placement, &sim.workers),
                    "settled unbalanced and unblocked: {:?} {:?}",
                    sim.counts(),
                    sim.placement
                );
            }
            // Whatever is left on a non-Active worker is blocked.
            for (p, r) in sim.placement.iter().enumerate() {
                if r.voters.iter().any(|w| !active(w) && workers.get(w) != Some(&Drained)) {
                    prop_assert!(blocked.iter().any(|&(b, _)| b as usize == p), "{p}: {r:?}");
                }
            }
        }

        #[test]
        fn leader_transfers_converge(
            (workers, _rf, placement) in cluster_case(),
            picks in prop::collection::vec(any::<usize>(), 24),
            max in 1usize..=4,
        ) {
            let mut leaders: BTreeMap<PartitionId, NodeId> = placement
                .iter()
                .enumerate()
                .map(|(p, r)| (p as PartitionId, r.voters[picks[p] % r.voters.len()]))
                .collect();
            let n = leaders.len();
            spread_leaders(&placement, &mut leaders, &workers, max, n * n + n + 2);
            // Settled: no partition with an Active voter is led from elsewhere, and no leader
            // leads two more than an Active voter of one of its partitions.
            let counts = leader_counts(&leaders, &workers);
            for (&p, &l) in &leaders {
                let r = &placement[p as usize];
                let active_voters: Vec<NodeId> = r
                    .voters
                    .iter()
                    .copied()
                    .filter(|w| workers.get(w) == Some(&Active))
                    .collect();
                if !is_active(&workers, l) {
                    prop_assert!(active_voters.is_empty(), "{p} stranded on {l}");
                } else {
                    for v in active_voters {
                        prop_assert!(counts[&v] + 2 > counts[&l], "{p}: {l} → {v} {counts:?}");
                    }
                }
            }
        }
    }
}
