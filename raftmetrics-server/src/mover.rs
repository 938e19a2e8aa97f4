//! Replica moves, carried out: what the control node does next for each move in flight,
//! decided by a pure function ([`next_action`]) of the move's recorded step and of what the
//! workers last reported; the control node's tick ([`crate::control`]) gathers the reports,
//! performs the action and records the steps in the metadata group (ADR 020).
//!
//! One move takes one replica of a partition from `from` to `to`:
//! 1. `Learner` (recorded by [`crate::cluster_state::Command::StartMove`]): the target,
//!    placed as a learner, creates an empty replica; the leader adds it as a raft learner; it
//!    catches up by snapshot, then log. Once it is within [`CATCH_UP_LAG`] entries of the
//!    leader's commit index, `Promote` is recorded.
//! 2. `Promote`: a leader that is the source hands its leadership to another live voter
//!    first (when there is one); then the leader proposes one joint-consensus change that
//!    adds the target as a voter and removes the source; raft leaves the joint configuration
//!    by itself. Once the leader reports the new voters and no joint configuration, the move
//!    is finished (the placement changes; the source has dropped its replica when it applied
//!    its removal, or drops it when it sees the placement).
//! 3. A target that is declared dead before it is a voter rolls the move back: the learner
//!    is removed from the group, then the move is recorded as aborted.
//!
//! Every action is idempotent (adding a learner twice, or a voter that is one, changes
//! nothing), and the next step is only recorded once the reports show the previous one
//! done, so a control node that restarts at any point resumes each move where it was.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftmetrics_core::PartitionId;
use raftmetrics_core::raft::{NodeId, ReplicaStatus};

use crate::cluster_state::{MoveRecord, MoveStep};
use crate::rebalance::{MoveLimits, WorkerState};

/// How often the control node drives moves, declares dead workers and plans.
pub const TICK: Duration = Duration::from_millis(500);

/// A learner this close to the leader's commit index (in entries) is promoted. The joint
/// change commits with a majority of the new voters, so a learner a few entries behind does
/// not hold it up; one far behind would leave the new configuration one replica short of its
/// margin until it caught up.
pub const CATCH_UP_LAG: u64 = 1_000;

/// The same action for the same move is not sent again sooner than this (the workers'
/// reports arrive every 500 ms; the action may be done and not reported yet).
pub const RESEND_AFTER: Duration = Duration::from_secs(2);

/// A joint configuration that the leader did not leave by itself within this long is left
/// explicitly.
pub const JOINT_PATIENCE: Duration = Duration::from_secs(5);

/// Leaders are spread for this long after the last move finished (a rebalance ends with
/// leaders even); outside that window the control node leaves leadership where Raft put
/// it.
pub const SPREAD_WINDOW: Duration = Duration::from_secs(60);

/// One round of leader transfers at most this often: the reports of the last round must
/// arrive before the next one is planned, or transfers would overshoot.
pub const SPREAD_PACE: Duration = Duration::from_secs(3);

/// How the control node moves replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoverConfig {
    pub limits: MoveLimits,
    /// A worker not heard from for this long is declared dead and its replicas replaced.
    pub dead_worker_timeout: Duration,
}

impl Default for MoverConfig {
    fn default() -> Self {
        MoverConfig {
            limits: MoveLimits::default(),
            dead_worker_timeout: Duration::from_secs(300),
        }
    }
}

/// What the workers last reported about one move's partition.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    /// The status of the partition on its leader (a live worker that reports leading it,
    /// the highest term first).
    pub leader: Option<&'a ReplicaStatus>,
    /// The target's status of the partition, when the target is live and reports one.
    pub target: Option<&'a ReplicaStatus>,
    /// The target's recorded state (`None`: forgotten).
    pub target_state: Option<WorkerState>,
    /// Workers heard from within the liveness window.
    pub live: BTreeSet<NodeId>,
    /// How long the leader has reported a joint configuration (zero when it does not).
    pub joint_for: Duration,
}

/// What to do next for a move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing now: waiting for a report, a catch-up or raft.
    Wait,
    /// Ask `leader` to save its store and compact the partition's log, so that the log no
    /// longer starts at the group's first entry: a replica that starts empty must then be
    /// sent a snapshot, which carries the group's voters (the log alone would not: the
    /// founders' first voters are not an entry of it).
    Compact { leader: NodeId },
    /// Ask `leader` to add the target as a learner.
    AddLearner { leader: NodeId },
    /// Record the next step.
    Advance(MoveStep),
    /// Ask `leader` (the source) to hand its leadership to `to` before it is removed.
    TransferLeader { leader: NodeId, to: NodeId },
    /// Ask `leader` for the joint change: target in, source out.
    Replace { leader: NodeId },
    /// Ask `leader` to leave a joint configuration it did not leave by itself.
    LeaveJoint { leader: NodeId },
    /// Ask `leader` to remove the target (a rollback).
    RemoveLearner { leader: NodeId },
    /// Record the move as finished.
    Finish,
    /// Record the move as rolled back.
    Abort(String),
}

fn holds(s: &ReplicaStatus, node: NodeId) -> bool {
    s.voters.contains(&node) || s.learners.contains(&node) || s.voters_outgoing.contains(&node)
}

/// The next action for `m`, from what the workers reported. Pure.
pub fn next_action(m: &MoveRecord, obs: &Observed<'_>) -> Action {
    let (from, to) = (m.spec.from, m.spec.to);
    let target_gone = matches!(obs.target_state, None | Some(WorkerState::Dead));
    let Some(leader) = obs.leader else {
        // Without a leader nothing can change; a gone target with no leader to remove it
        // from waits too (the group may not even have added it).
        return Action::Wait;
    };
    let promoted = leader.voters.contains(&to) && !leader.voters_outgoing.contains(&to);
    match m.step {
        MoveStep::Learner | MoveStep::Promote if target_gone && !leader.voters.contains(&to) => {
            if holds(leader, to) {
                Action::RemoveLearner {
                    leader: leader.node,
                }
            } else {
                Action::Abort(format!("the target, worker {to}, is gone"))
            }
        }
        MoveStep::Learner => {
            if !holds(leader, to) {
                return if leader.first_index <= 1 {
                    Action::Compact {
                        leader: leader.node,
                    }
                } else {
                    Action::AddLearner {
                        leader: leader.node,
                    }
                };
            }
            // Caught up: close to the leader's commit index, and knowing the group's voters
            // (it installed a snapshot or the entries that name them).
            let caught_up = obs.target.is_some_and(|t| {
                let mut theirs = t.voters.clone();
                let mut ours = leader.voters.clone();
                theirs.sort_unstable();
                ours.sort_unstable();
                t.applied_index > 0
                    && t.applied_index + CATCH_UP_LAG >= leader.commit_index
                    && theirs == ours
            });
            if leader.voters.contains(&to) || caught_up {
                Action::Advance(MoveStep::Promote)
            } else {
                Action::Wait
            }
        }
        MoveStep::Promote => {
            if !leader.voters_outgoing.is_empty() {
                return if obs.joint_for >= JOINT_PATIENCE {
                    Action::LeaveJoint {
                        leader: leader.node,
                    }
                } else {
                    Action::Wait
                };
            }
            if promoted && !leader.voters.contains(&from) {
                return Action::Finish;
            }
            if leader.node == from {
                let heir = leader
                    .voters
                    .iter()
                    .copied()
                    .find(|v| *v != from && obs.live.contains(v));
                if let Some(heir) = heir {
                    return Action::TransferLeader {
                        leader: leader.node,
                        to: heir,
                    };
                }
            }
            Action::Replace {
                leader: leader.node,
            }
        }
    }
}

/// The control node's memory of recent actions (not recorded: a restarted control node
/// starts afresh and at worst repeats an idempotent action) and its counters.
#[derive(Default)]
pub struct Mover {
    pub config: MoverConfig,
    /// Move id → the last action sent and when.
    sent: Mutex<HashMap<u64, (Action, Instant)>>,
    /// Partition → since when its leader reports a joint configuration.
    joint_since: Mutex<HashMap<PartitionId, Instant>>,
    /// When the last move finished, and when leaders were last transferred.
    spreading: Mutex<(Option<Instant>, Option<Instant>)>,
    pub started: AtomicU64,
    pub finished: AtomicU64,
    pub failed: AtomicU64,
}

impl Mover {
    pub fn new(config: MoverConfig) -> Self {
        Mover {
            config,
            ..Mover::default()
        }
    }

    /// Whether `action` for move `id` should be sent now (not sent in the last
    /// [`RESEND_AFTER`]); records it as sent when so.
    pub fn should_send(&self, id: u64, action: &Action) -> bool {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, at)) = sent.get(&id)
            && last == action
            && at.elapsed() < RESEND_AFTER
        {
            return false;
        }
        sent.insert(id, (action.clone(), Instant::now()));
        true
    }

    /// Forgets what was sent for moves no longer in flight.
    pub fn retain(&self, in_flight: &BTreeSet<u64>) {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| in_flight.contains(id));
    }

    /// How long `partition`'s leader has reported a joint configuration (`joint` now).
    pub fn joint_for(&self, partition: PartitionId, joint: bool) -> Duration {
        let mut since = self.joint_since.lock().unwrap_or_else(|p| p.into_inner());
        if !joint {
            since.remove(&partition);
            return Duration::ZERO;
        }
        since
            .entry(partition)
            .or_insert_with(Instant::now)
            .elapsed()
    }

    /// Notes that a move finished: leaders are spread for [`SPREAD_WINDOW`] from now.
    pub fn moved(&self) {
        self.spreading.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(Instant::now());
    }

    /// Whether a round of leader transfers may start now (within [`SPREAD_WINDOW`] of the
    /// last finished move and [`SPREAD_PACE`] after the previous round); records it when
    /// so.
    pub fn may_spread(&self) -> bool {
        let mut s = self.spreading.lock().unwrap_or_else(|p| p.into_inner());
        let in_window = s.0.is_some_and(|t| t.elapsed() < SPREAD_WINDOW);
        let paced = s.1.is_none_or(|t| t.elapsed() >= SPREAD_PACE);
        if in_window && paced {
            s.1 = Some(Instant::now());
            return true;
        }
        false
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rebalance::{MoveReason, MoveSpec};
    use raftmetrics_core::raft::Role;

    fn record(step: MoveStep) -> MoveRecord {
        MoveRecord {
            id: 7,
            spec: MoveSpec {
                partition: 3,
                from: 1,
                to: 4,
                reason: MoveReason::Balance,
            },
            step,
        }
    }

    fn status(node: NodeId, voters: &[NodeId], learners: &[NodeId], commit: u64) -> ReplicaStatus {
        ReplicaStatus {
            group: 3,
            node,
            role: Role::Leader,
            term: 4,
            leader_id: node,
            commit_index: commit,
            applied_index: commit,
            first_index: 2,
            last_index: commit,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            voters_outgoing: Vec::new(),
            last_heartbeat_ms_ago: Some(0),
            snapshots_installed: 0,
        }
    }

    fn observed<'a>(
        leader: Option<&'a ReplicaStatus>,
        target: Option<&'a ReplicaStatus>,
    ) -> Observed<'a> {
        Observed {
            leader,
            target,
            target_state: Some(WorkerState::Active),
            live: [1, 2, 3, 4].into_iter().collect(),
            joint_for: Duration::ZERO,
        }
    }

    #[test]
    fn a_learner_is_added_caught_up_then_promoted() {
        let m = record(MoveStep::Learner);
        assert_eq!(next_action(&m, &observed(None, None)), Action::Wait);
        let mut fresh = status(2, &[1, 2, 3], &[], 5_000);
        fresh.first_index = 1;
        assert_eq!(
            next_action(&m, &observed(Some(&fresh), None)),
            Action::Compact { leader: 2 },
            "a log that still holds the group's first entry is compacted first"
        );
        let before = status(2, &[1, 2, 3], &[], 5_000);
        assert_eq!(
            next_action(&m, &observed(Some(&before), None)),
            Action::AddLearner { leader: 2 }
        );
        let added = status(2, &[1, 2, 3], &[4], 5_000);
        // Not reported yet, then far behind: wait.
        assert_eq!(next_action(&m, &observed(Some(&added), None)), Action::Wait);
        let mut behind = status(4, &[1, 2, 3], &[4], 100);
        behind.role = Role::Follower;
        assert_eq!(
            next_action(&m, &observed(Some(&added), Some(&behind))),
            Action::Wait
        );
        let mut close = behind.clone();
        close.applied_index = 5_000 - CATCH_UP_LAG;
        // Close, but not knowing the voters (it replayed a log without them): not yet.
        let mut unaware = close.clone();
        unaware.voters.clear();
        assert_eq!(
            next_action(&m, &observed(Some(&added), Some(&unaware))),
            Action::Wait
        );
        assert_eq!(
            next_action(&m, &observed(Some(&added), Some(&close))),
            Action::Advance(MoveStep::Promote)
        );
    }

    #[test]
    fn promotion_moves_leadership_off_the_source_then_replaces_it_and_finishes() {
        let m = record(MoveStep::Promote);
        let on_source = status(1, &[1, 2, 3], &[4], 9);
        assert_eq!(
            next_action(&m, &observed(Some(&on_source), None)),
            Action::TransferLeader { leader: 1, to: 2 }
        );
        let moved = status(2, &[1, 2, 3], &[4], 9);
        assert_eq!(
            next_action(&m, &observed(Some(&moved), None)),
            Action::Replace { leader: 2 }
        );
        let mut joint = status(2, &[2, 3, 4], &[], 10);
        joint.voters_outgoing = vec![1, 2, 3];
        assert_eq!(next_action(&m, &observed(Some(&joint), None)), Action::Wait);
        let mut stuck = observed(Some(&joint), None);
        stuck.joint_for = JOINT_PATIENCE;
        assert_eq!(next_action(&m, &stuck), Action::LeaveJoint { leader: 2 });
        let done = status(2, &[2, 3, 4], &[], 11);
        assert_eq!(
            next_action(&m, &observed(Some(&done), None)),
            Action::Finish
        );
    }

    #[test]
    fn a_single_replica_moves_with_the_source_leading_the_joint_change() {
        let mut m = record(MoveStep::Promote);
        m.spec.from = 1;
        let alone = status(1, &[1], &[4], 9);
        assert_eq!(
            next_action(&m, &observed(Some(&alone), None)),
            Action::Replace { leader: 1 }
        );
        // After the change the target leads alone.
        let after = status(4, &[4], &[], 12);
        assert_eq!(
            next_action(&m, &observed(Some(&after), None)),
            Action::Finish
        );
    }

    #[test]
    fn a_gone_target_is_removed_then_the_move_aborted() {
        for step in [MoveStep::Learner, MoveStep::Promote] {
            let m = record(step);
            let added = status(2, &[1, 2, 3], &[4], 50);
            let mut obs = observed(Some(&added), None);
            obs.target_state = Some(WorkerState::Dead);
            assert_eq!(next_action(&m, &obs), Action::RemoveLearner { leader: 2 });
            let removed = status(2, &[1, 2, 3], &[], 51);
            let mut obs = observed(Some(&removed), None);
            obs.target_state = None;
            assert!(matches!(next_action(&m, &obs), Action::Abort(_)));
        }
        // Once the target is a voter, the move finishes (a later move replaces it).
        let m = record(MoveStep::Promote);
        let done = status(2, &[2, 3, 4], &[], 60);
        let mut obs = observed(Some(&done), None);
        obs.target_state = Some(WorkerState::Dead);
        assert_eq!(next_action(&m, &obs), Action::Finish);
    }

    #[test]
    fn leaders_are_spread_only_after_moves_and_paced() {
        let mover = Mover::default();
        assert!(
            !mover.may_spread(),
            "no move finished: leadership stays where it is"
        );
        mover.moved();
        assert!(mover.may_spread());
        assert!(!mover.may_spread(), "the next round waits for the reports");
    }

    #[test]
    fn the_same_action_is_not_resent_at_once() {
        let mover = Mover::default();
        let a = Action::AddLearner { leader: 2 };
        assert!(mover.should_send(1, &a));
        assert!(!mover.should_send(1, &a));
        assert!(mover.should_send(1, &Action::Replace { leader: 2 }));
        assert!(mover.should_send(2, &a));
        mover.retain(&BTreeSet::new());
        assert!(mover.should_send(1, &a));
    }
}
