//! Readiness, `GET /ready`: whether a node can serve inserts and complete answers now.
//!
//! `/health` is liveness: it answers 200 whenever the process serves HTTP, with a body that
//! says `starting`, `degraded` or `healthy`. `/ready` answers 200 only when the node is
//! ready, and otherwise 503 in the API's error format with what is missing, so that a load
//! balancer, an orchestrator or a script can wait on the status code alone.
//!
//! The decision is a pure function of what the node knows ([`control`], [`worker`]); the
//! handlers only gather that and render the answer ([`Readiness::respond`]).

use std::collections::HashMap;
use std::time::Duration;

use axum::response::Response;
use raftmetrics_core::PartitionId;
use raftmetrics_core::api::ReadyResponse;
use raftmetrics_core::raft::{NodeId, ReplicaStatus, Role};
use serde_json::{Map, json};

use crate::http::body::{Format, respond};
use crate::http::error::ApiError;

/// Most partition numbers listed in a 503 body (`details.missing_count` has them all).
const MAX_LISTED: usize = 1000;

/// What a node decided about its readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// `control` or `worker`.
    pub role: &'static str,
    pub node_id: u64,
    /// Partitions that must have a leader that answers.
    pub partitions_total: u32,
    /// Of those, the ones without one, ascending.
    pub missing: Vec<PartitionId>,
    /// What else keeps the node from being ready (no placement yet, no cluster view).
    pub problems: Vec<String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.missing.is_empty() && self.problems.is_empty()
    }

    /// 200 with a [`ReadyResponse`] in `format`, or 503 RAFT_ERROR naming what is missing.
    pub fn respond(self, format: Format) -> Result<Response, ApiError> {
        let led = self.partitions_total - self.missing.len() as u32;
        if self.is_ready() {
            let ready = ReadyResponse {
                status: "ready".into(),
                role: self.role.into(),
                node_id: self.node_id,
                partitions_total: self.partitions_total,
                partitions_led: led,
            };
            return Ok(respond(format, &ready));
        }
        let mut message = self.problems.first().cloned().unwrap_or_default();
        if !self.missing.is_empty() {
            let shown: Vec<String> = self.missing.iter().take(8).map(u32::to_string).collect();
            let more = if self.missing.len() > 8 { ", ..." } else { "" };
            if !message.is_empty() {
                message.push_str("; ");
            }
            message.push_str(&format!(
                "{} of {} partitions have no leader that answers (partitions {}{more})",
                self.missing.len(),
                self.partitions_total,
                shown.join(", ")
            ));
        }
        let mut details = Map::new();
        details.insert("role".into(), json!(self.role));
        details.insert("partitions_total".into(), json!(self.partitions_total));
        details.insert("partitions_led".into(), json!(led));
        details.insert("missing_count".into(), json!(self.missing.len()));
        details.insert(
            "missing_partitions".into(),
            json!(self.missing.iter().take(MAX_LISTED).collect::<Vec<_>>()),
        );
        details.insert("problems".into(), json!(self.problems));
        Err(ApiError::not_ready(
            format!("Not ready: {message}"),
            details,
        ))
    }
}

/// A control node's readiness: the partitions are placed and every partition has a leader
/// among its replicas on a live worker. `leaders` maps partitions to the live worker that
/// last reported leading them; `registered` workers of the `min_workers` placing waits for.
pub fn control(
    node_id: u64,
    partitions: u32,
    placement: &[Vec<NodeId>],
    leaders: &HashMap<PartitionId, NodeId>,
    registered: usize,
    min_workers: usize,
) -> Readiness {
    let mut problems = Vec::new();
    let missing = if placement.is_empty() {
        problems.push(format!(
            "the partitions are not placed yet ({registered} of the {min_workers} workers \
             placing waits for have registered)"
        ));
        (0..partitions).collect()
    } else {
        (0..partitions)
            .filter(|p| {
                let replicas = placement.get(*p as usize);
                !leaders
                    .get(p)
                    .is_some_and(|l| replicas.is_some_and(|r| r.contains(l)))
            })
            .collect()
    };
    Readiness {
        role: "control",
        node_id,
        partitions_total: partitions,
        missing,
        problems,
    }
}

/// A worker's readiness: it has the cluster view with a placement, and every partition
/// placed on it has a replica here that leads, or that heard from its leader within
/// `leader_silence`. `placement` is `None` before the first cluster view.
pub fn worker(
    node_id: NodeId,
    placement: Option<&[Vec<NodeId>]>,
    statuses: &[ReplicaStatus],
    leader_silence: Duration,
) -> Readiness {
    let mut problems = Vec::new();
    let mine: Vec<PartitionId> = match placement {
        None => {
            problems.push("no cluster view from the control node yet".to_string());
            Vec::new()
        }
        Some([]) => {
            problems.push("the control node has not placed the partitions yet".to_string());
            Vec::new()
        }
        Some(placement) => placement
            .iter()
            .enumerate()
            .filter(|(_, replicas)| replicas.contains(&node_id))
            .map(|(p, _)| p as PartitionId)
            .collect(),
    };
    let by_group: HashMap<PartitionId, &ReplicaStatus> =
        statuses.iter().map(|s| (s.group, s)).collect();
    let silence_ms = u64::try_from(leader_silence.as_millis()).unwrap_or(u64::MAX);
    let missing = mine
        .iter()
        .copied()
        .filter(|p| {
            !by_group.get(p).is_some_and(|s| {
                s.role == Role::Leader
                    || (s.leader_id != 0
                        && s.last_heartbeat_ms_ago.is_some_and(|ms| ms <= silence_ms))
            })
        })
        .collect();
    Readiness {
        role: "worker",
        node_id,
        partitions_total: mine.len() as u32,
        missing,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(group: PartitionId, role: Role, leader: NodeId, heard: Option<u64>) -> ReplicaStatus {
        ReplicaStatus {
            group,
            node: 1,
            role,
            term: 2,
            leader_id: leader,
            commit_index: 5,
            applied_index: 5,
            first_index: 1,
            last_index: 5,
            voters: vec![1, 2, 3],
            learners: vec![],
            voters_outgoing: vec![],
            last_heartbeat_ms_ago: heard,
            snapshots_installed: 0,
        }
    }

    #[test]
    fn a_control_node_is_ready_once_every_placed_partition_has_a_live_leader() {
        let placement = vec![vec![1, 2], vec![2, 3], vec![3, 1]];
        let none = control(1, 3, &[], &HashMap::new(), 1, 3);
        assert!(!none.is_ready());
        assert_eq!(none.missing, vec![0, 1, 2]);
        assert!(
            none.problems[0].contains("1 of the 3 workers"),
            "{:?}",
            none.problems
        );

        // Partition 1's leader is unknown; partition 2's reported leader is not one of its
        // replicas (an old report): both missing.
        let leaders: HashMap<_, _> = [(0, 2), (2, 2)].into_iter().collect();
        let some = control(1, 3, &placement, &leaders, 3, 3);
        assert_eq!((some.missing.clone(), some.problems.len()), (vec![1, 2], 0));
        assert!(!some.is_ready());

        let leaders: HashMap<_, _> = [(0, 2), (1, 3), (2, 1)].into_iter().collect();
        assert!(control(1, 3, &placement, &leaders, 3, 3).is_ready());
    }

    #[test]
    fn a_worker_is_ready_once_its_replicas_know_a_leader_that_answers() {
        let silence = Duration::from_secs(2);
        assert!(!worker(1, None, &[], silence).is_ready());
        assert!(!worker(1, Some(&[]), &[], silence).is_ready());
        let placement = vec![vec![1, 2], vec![2, 3], vec![3, 1]];
        // Partition 1 is not placed here; 0 leads; 2 has not been created yet.
        let r = worker(
            1,
            Some(&placement),
            &[status(0, Role::Leader, 1, Some(0))],
            silence,
        );
        assert_eq!((r.partitions_total, r.missing.clone()), (2, vec![2]));
        // A follower whose leader went quiet for longer than the silence is not ready.
        let quiet = [
            status(0, Role::Leader, 1, Some(0)),
            status(2, Role::Follower, 3, Some(2_500)),
        ];
        assert_eq!(
            worker(1, Some(&placement), &quiet, silence).missing,
            vec![2]
        );
        let candidate = [
            status(0, Role::Leader, 1, Some(0)),
            status(2, Role::Candidate, 0, None),
        ];
        assert!(!worker(1, Some(&placement), &candidate, silence).is_ready());
        let fine = [
            status(0, Role::Leader, 1, Some(0)),
            status(2, Role::Follower, 3, Some(150)),
        ];
        assert!(worker(1, Some(&placement), &fine, silence).is_ready());
        // A worker placed on no partition is ready with nothing to lead.
        let elsewhere = vec![vec![2, 3]];
        let r = worker(1, Some(&elsewhere), &[], silence);
        assert!(r.is_ready() && r.partitions_total == 0);
    }

    #[test]
    fn not_ready_is_a_503_naming_what_is_missing() {
        let r = Readiness {
            role: "control",
            node_id: 1,
            partitions_total: 16,
            missing: (0..10).collect(),
            problems: vec![],
        };
        let err = r.respond(Format::Json).expect_err("not ready");
        assert_eq!(err.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.to_string().contains("10 of 16 partitions"), "{err}");
        assert!(err.to_string().contains("7, ..."), "{err}");
    }
}
