//! What the raft log engine measures of itself, for `GET /metrics`.
//!
//! raft-engine records its write and fsync latencies, write sizes, log file counts and
//! memory in the process-wide registry of the `prometheus` crate (families named
//! `raft_engine_*`: `raft_engine_write_duration_seconds`,
//! `raft_engine_sync_log_duration_seconds`, `raft_engine_log_file_count`, ...). A family
//! appears once the engine first uses it. Labels are the engine's own (`type="append"` or
//! `"rewrite"` for the log queues); the node is the scrape target's.

/// The prefix of every family raft-engine registers.
pub const FAMILY_PREFIX: &str = "raft_engine_";

/// raft-engine's families in the Prometheus text exposition format (empty before the engine
/// recorded anything).
pub fn render() -> String {
    let families: Vec<_> = prometheus::gather()
        .into_iter()
        .filter(|family| family.get_name().starts_with(FAMILY_PREFIX))
        .collect();
    let mut out = Vec::new();
    // Encoding into memory fails only on a family without metrics, which gather() omits.
    if prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{RaftLog, WriteBatch};

    #[test]
    fn a_write_shows_in_the_engine_s_families() {
        let dir = tempfile::tempdir().unwrap();
        let log = RaftLog::open(dir.path()).unwrap();
        let group = log.group(7).unwrap();
        let mut batch = WriteBatch::new();
        let entry = raft::eraftpb::Entry {
            index: 1,
            term: 1,
            ..Default::default()
        };
        group.stage_append(&mut batch, &[entry]).unwrap();
        log.write(&mut batch, true).unwrap();
        let text = render();
        for family in [
            "# TYPE raft_engine_write_duration_seconds histogram",
            "raft_engine_write_duration_seconds_count ",
            "raft_engine_sync_log_duration_seconds_bucket{le=",
        ] {
            assert!(text.contains(family), "{family} missing from:\n{text}");
        }
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .all(|l| l.starts_with(FAMILY_PREFIX)),
            "only raft-engine's families"
        );
    }
}
