//! CPU time of processes, from `/proc/<pid>/stat` (Linux).
//!
//! `utime + stime` covers every thread of a process. Cluster processes are measured from
//! outside by their pids; this process reads its own entry (`/proc/self/stat`), which is
//! what `getrusage(RUSAGE_SELF)` reports too.

use crate::error::{BenchError, Result};

/// Units of the times in `/proc/<pid>/stat`: `USER_HZ`, which the Linux ABI fixes at 100 on
/// every architecture it exports clock ticks to user space for.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) used so far by process `pid`, or by this process when `None`.
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(&path).map_err(BenchError::io(format!("read {path}")))?;
    parse_stat(&text).ok_or_else(|| BenchError::Cluster(format!("cannot parse {path}")))
}

/// `utime + stime` of a `stat` line, in seconds. The command name (field 2) is in
/// parentheses and may contain spaces, so fields are counted after the last `)`.
fn parse_stat(text: &str) -> Option<f64> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state (3), ppid (4), ... utime (14), stime (15).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// CPU seconds of a set of processes and of this one, taken together.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuSample {
    /// Sum over the measured processes.
    pub processes: f64,
    /// This process (the load generator).
    pub this: f64,
}

impl CpuSample {
    /// Reads the CPU time of `pids` and of this process now.
    pub fn take(pids: &[u32]) -> Result<CpuSample> {
        let mut processes = 0.0;
        for &pid in pids {
            processes += cpu_seconds(Some(pid))?;
        }
        Ok(CpuSample {
            processes,
            this: cpu_seconds(None)?,
        })
    }

    /// What was used between `earlier` and `self`.
    pub fn since(self, earlier: CpuSample) -> CpuSample {
        CpuSample {
            processes: self.processes - earlier.processes,
            this: self.this - earlier.this,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_odd_names() {
        let line = "4242 (raft metrics) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 \
                    12 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(line), Some(3.25));
        assert_eq!(parse_stat("garbage"), None);
        assert!(cpu_seconds(None).expect("own stat") >= 0.0);
    }
}
