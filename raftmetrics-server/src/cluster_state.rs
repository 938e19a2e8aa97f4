//! The cluster's metadata as a deterministic state machine: the versioned placement, the
//! workers' states and the replica moves in flight.
//!
//! Every change is a [`Command`] committed in the control node's metadata Raft group
//! ([`crate::metadata`]); [`ClusterState::apply`] folds commands in log order, so every
//! replica of the metadata group that applied the same commands holds the same state. Each
//! command that changes where replicas live raises the [`ClusterState::epoch`]; a
//! [`crate::rpc::ClusterView`] carries it, and workers and routers ignore views older than the
//! one they hold.
//!
//! A move ([`MoveRecord`]) goes through its [`MoveStep`]s, each recorded before the action it
//! names is taken (ADR 020), so a control node that restarts resumes every move where it was:
//! - `Learner`: the target is placed as a learner (it creates an empty replica) and the
//!   partition's leader is asked to add it as a raft learner; it catches up by snapshot, then
//!   log.
//! - `Promote`: the target caught up; the leader is asked for one joint-consensus change that
//!   adds the target as a voter and removes the source.
//! - finished ([`Command::FinishMove`]): the target is a voter in the placement and the source
//!   is gone from it, so the source drops its files; or rolled back ([`Command::AbortMove`]):
//!   the learner is gone from the placement (and from the group).

use std::collections::BTreeMap;

use raftmetrics_core::PartitionId;
use raftmetrics_core::raft::NodeId;
use serde::{Deserialize, Serialize};

use crate::rebalance::{MoveSpec, Replicas, WorkerState};

/// Most moves the state holds at once (the planner starts far fewer; this bounds a state
/// built from a damaged or hostile log).
pub const MAX_MOVES: usize = 1024;

/// A worker as the metadata group records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub state: WorkerState,
}

/// Where a move stands; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveStep {
    Learner,
    Promote,
}

/// A move in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub id: u64,
    pub spec: MoveSpec,
    pub step: MoveStep,
}

/// One change of the cluster metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The first placement: `voters[p]` founds partition `p`; every named worker is active.
    Place {
        replication_factor: u32,
        voters: Vec<Vec<NodeId>>,
    },
    /// A worker joined (first registration after placement): it is active.
    Join { worker: NodeId },
    /// A worker's state changes (drain, drained, dead, active again).
    SetWorkerState { worker: NodeId, state: WorkerState },
    /// A drained or dead worker that holds no replica is forgotten.
    Forget { worker: NodeId },
    /// A move starts: its target is placed as a learner of the partition.
    StartMove { spec: MoveSpec },
    /// A move reached a later step.
    Advance { id: u64, step: MoveStep },
    /// A move is done: the target is a voter, the source is gone.
    FinishMove { id: u64 },
    /// A move is rolled back: the target is gone from the partition.
    AbortMove { id: u64, reason: String },
}

/// The cluster metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Raised by every change of where replicas live; 0 before the first placement.
    pub epoch: u64,
    pub replication_factor: u32,
    /// `placement[p]`: partition `p`'s voters and the learners of its move in flight.
    pub placement: Vec<Replicas>,
    /// `founders[p]`: the voters partition `p` was created with, while its membership never
    /// changed; empty once a move touched it. Only a founder creates its replica with the
    /// group's voters; every other replica starts empty and catches up from the leader.
    pub founders: Vec<Vec<NodeId>>,
    pub workers: BTreeMap<NodeId, WorkerRecord>,
    /// Moves in flight, by id.
    pub moves: BTreeMap<u64, MoveRecord>,
    pub next_move: u64,
}

impl ClusterState {
    /// Whether the partitions are placed.
    pub fn is_placed(&self) -> bool {
        !self.placement.is_empty()
    }

    /// The state of `worker`, if it is known.
    pub fn worker_state(&self, worker: NodeId) -> Option<WorkerState> {
        self.workers.get(&worker).map(|w| w.state)
    }

    /// Workers by state, as the planner takes them.
    pub fn worker_states(&self) -> BTreeMap<NodeId, WorkerState> {
        self.workers.iter().map(|(id, w)| (*id, w.state)).collect()
    }

    /// The specs of the moves in flight.
    pub fn move_specs(&self) -> Vec<MoveSpec> {
        self.moves.values().map(|m| m.spec.clone()).collect()
    }

    /// Replicas (voters and learners) placed on `worker`.
    pub fn replicas_on(&self, worker: NodeId) -> usize {
        self.placement
            .iter()
            .filter(|r| r.voters.contains(&worker) || r.learners.contains(&worker))
            .count()
    }

    /// Applies `command`; an error leaves the state unchanged (the command is a no-op in
    /// every replica, since every replica decides the same).
    pub fn apply(&mut self, command: &Command) -> Result<(), String> {
        match command {
            Command::Place {
                replication_factor,
                voters,
            } => {
                if self.is_placed() {
                    return Err("the partitions are placed already".into());
                }
                if voters.is_empty() || voters.iter().any(Vec::is_empty) {
                    return Err("a placement names replicas for every partition".into());
                }
                self.replication_factor = *replication_factor;
                self.placement = voters
                    .iter()
                    .map(|v| Replicas {
                        voters: v.clone(),
                        learners: Vec::new(),
                    })
                    .collect();
                self.founders = voters.clone();
                for w in voters.iter().flatten() {
                    self.workers.entry(*w).or_insert(WorkerRecord {
                        state: WorkerState::Active,
                    });
                }
                self.epoch += 1;
            }
            Command::Join { worker } => {
                if self.workers.contains_key(worker) {
                    return Err(format!("worker {worker} is known already"));
                }
                self.workers.insert(
                    *worker,
                    WorkerRecord {
                        state: WorkerState::Active,
                    },
                );
            }
            Command::SetWorkerState { worker, state } => {
                let record = self
                    .workers
                    .get_mut(worker)
                    .ok_or_else(|| format!("no worker {worker}"))?;
                record.state = *state;
            }
            Command::Forget { worker } => {
                let state = self
                    .worker_state(*worker)
                    .ok_or_else(|| format!("no worker {worker}"))?;
                if !matches!(state, WorkerState::Drained | WorkerState::Dead) {
                    return Err(format!(
                        "worker {worker} is {state:?}; only a drained or dead worker can be removed"
                    ));
                }
                let held = self.replicas_on(*worker);
                if held > 0 {
                    return Err(format!(
                        "worker {worker} still holds {held} replicas; they are moved first"
                    ));
                }
                self.workers.remove(worker);
            }
            Command::StartMove { spec } => {
                if self.moves.len() >= MAX_MOVES {
                    return Err("too many moves in flight".into());
                }
                if self.worker_state(spec.to) != Some(WorkerState::Active) {
                    return Err(format!("worker {} is not active", spec.to));
                }
                if self
                    .moves
                    .values()
                    .any(|m| m.spec.partition == spec.partition)
                {
                    return Err(format!("partition {} has a move in flight", spec.partition));
                }
                let replicas = self
                    .placement
                    .get_mut(spec.partition as usize)
                    .ok_or_else(|| format!("no partition {}", spec.partition))?;
                if !replicas.voters.contains(&spec.from) {
                    return Err(format!(
                        "worker {} holds no voter of partition {}",
                        spec.from, spec.partition
                    ));
                }
                if replicas.voters.contains(&spec.to) || replicas.learners.contains(&spec.to) {
                    return Err(format!(
                        "worker {} holds partition {} already",
                        spec.to, spec.partition
                    ));
                }
                replicas.learners.push(spec.to);
                self.founders[spec.partition as usize].clear();
                let id = self.next_move;
                self.next_move += 1;
                self.moves.insert(
                    id,
                    MoveRecord {
                        id,
                        spec: spec.clone(),
                        step: MoveStep::Learner,
                    },
                );
                self.epoch += 1;
            }
            Command::Advance { id, step } => {
                let record = self
                    .moves
                    .get_mut(id)
                    .ok_or_else(|| format!("no move {id}"))?;
                record.step = *step;
            }
            Command::FinishMove { id } => {
                let record = self
                    .moves
                    .remove(id)
                    .ok_or_else(|| format!("no move {id}"))?;
                let spec = &record.spec;
                let replicas = &mut self.placement[spec.partition as usize];
                replicas.learners.retain(|w| *w != spec.to);
                match replicas.voters.iter_mut().find(|w| **w == spec.from) {
                    Some(slot) => *slot = spec.to,
                    None => replicas.voters.push(spec.to),
                }
                self.epoch += 1;
            }
            Command::AbortMove { id, .. } => {
                let record = self
                    .moves
                    .remove(id)
                    .ok_or_else(|| format!("no move {id}"))?;
                let spec = &record.spec;
                self.placement[spec.partition as usize]
                    .learners
                    .retain(|w| *w != spec.to);
                self.epoch += 1;
            }
        }
        Ok(())
    }

    /// The state after `commands`, in order; commands that fail change nothing.
    pub fn fold<'a>(commands: impl IntoIterator<Item = &'a Command>) -> ClusterState {
        let mut state = ClusterState::default();
        for c in commands {
            let _ = state.apply(c);
        }
        state
    }

    /// The partitions of `worker` (voter or learner), ascending.
    pub fn partitions_of(&self, worker: NodeId) -> Vec<PartitionId> {
        self.placement
            .iter()
            .enumerate()
            .filter(|(_, r)| r.voters.contains(&worker) || r.learners.contains(&worker))
            .map(|(p, _)| p as PartitionId)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rebalance::MoveReason;

    fn placed() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(&Command::Place {
            replication_factor: 2,
            voters: vec![vec![1, 2], vec![2, 3], vec![3, 1]],
        })
        .unwrap();
        s
    }

    fn spec(partition: PartitionId, from: NodeId, to: NodeId) -> MoveSpec {
        MoveSpec {
            partition,
            from,
            to,
            reason: MoveReason::Balance,
        }
    }

    #[test]
    fn a_move_places_a_learner_then_replaces_the_source_raising_the_epoch() {
        let mut s = placed();
        assert_eq!((s.epoch, s.workers.len()), (1, 3));
        assert_eq!(s.founders[0], vec![1, 2]);
        s.apply(&Command::Join { worker: 4 }).unwrap();
        assert_eq!(s.epoch, 1, "a join moves nothing");
        s.apply(&Command::StartMove {
            spec: spec(0, 1, 4),
        })
        .unwrap();
        assert_eq!(s.epoch, 2);
        assert_eq!(s.placement[0].learners, vec![4]);
        assert!(
            s.founders[0].is_empty(),
            "partition 0 is no longer as founded"
        );
        assert_eq!(s.founders[1], vec![2, 3]);
        assert_eq!(s.partitions_of(4), vec![0]);
        // One move per partition; a target holds no replica yet; a source is a voter.
        assert!(
            s.apply(&Command::StartMove {
                spec: spec(0, 2, 3)
            })
            .is_err()
        );
        assert!(
            s.apply(&Command::StartMove {
                spec: spec(1, 2, 3)
            })
            .is_err()
        );
        assert!(
            s.apply(&Command::StartMove {
                spec: spec(1, 1, 4)
            })
            .is_err()
        );
        s.apply(&Command::Advance {
            id: 0,
            step: MoveStep::Promote,
        })
        .unwrap();
        assert_eq!(s.moves[&0].step, MoveStep::Promote);
        s.apply(&Command::FinishMove { id: 0 }).unwrap();
        assert_eq!(s.epoch, 3);
        assert_eq!(s.placement[0].voters, vec![4, 2]);
        assert!(s.placement[0].learners.is_empty() && s.moves.is_empty());
        assert_eq!(s.partitions_of(1), vec![2]);
    }

    #[test]
    fn an_aborted_move_leaves_the_partition_as_it_was() {
        let mut s = placed();
        s.apply(&Command::Join { worker: 4 }).unwrap();
        s.apply(&Command::StartMove {
            spec: spec(2, 3, 4),
        })
        .unwrap();
        s.apply(&Command::AbortMove {
            id: 0,
            reason: "target died".into(),
        })
        .unwrap();
        assert_eq!(s.placement[2].voters, vec![3, 1]);
        assert!(s.placement[2].learners.is_empty());
        assert_eq!(s.epoch, 3);
        assert!(s.apply(&Command::FinishMove { id: 0 }).is_err());
    }

    #[test]
    fn only_drained_or_dead_workers_without_replicas_are_forgotten() {
        let mut s = placed();
        assert!(s.apply(&Command::Forget { worker: 1 }).is_err(), "active");
        s.apply(&Command::SetWorkerState {
            worker: 1,
            state: WorkerState::Dead,
        })
        .unwrap();
        let err = s.apply(&Command::Forget { worker: 1 }).unwrap_err();
        assert!(err.contains("still holds 2 replicas"), "{err}");
        s.apply(&Command::Join { worker: 4 }).unwrap();
        for (i, p) in [0, 2].into_iter().enumerate() {
            s.apply(&Command::StartMove {
                spec: spec(p, 1, 4),
            })
            .unwrap();
            s.apply(&Command::FinishMove { id: i as u64 }).unwrap();
        }
        s.apply(&Command::Forget { worker: 1 }).unwrap();
        assert!(!s.workers.contains_key(&1));
    }

    #[test]
    fn folding_the_same_commands_gives_the_same_state() {
        let commands = vec![
            Command::Place {
                replication_factor: 1,
                voters: vec![vec![1], vec![2]],
            },
            Command::Join { worker: 3 },
            Command::StartMove {
                spec: spec(1, 2, 3),
            },
            // Refused (a second move of partition 1): a no-op everywhere.
            Command::StartMove {
                spec: spec(1, 2, 1),
            },
            Command::FinishMove { id: 0 },
        ];
        let a = ClusterState::fold(&commands);
        let b = ClusterState::fold(&commands);
        assert_eq!(a, b);
        assert_eq!(a.placement[1].voters, vec![3]);
        assert_eq!(a.epoch, 3);
    }
}
