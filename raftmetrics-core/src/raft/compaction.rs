//! How far a replica compacts its log: a pure decision, tested by its output.
//!
//! A log entry may go once the store holds it durably (applied and saved by a checkpoint,
//! ADR 017). What may go is not all that should: a leader keeps the entries its followers
//! still need, so that a follower a little behind catches up from the log instead of a
//! snapshot of the whole partition, but only within [`CompactionLimits::keep_entries`] and
//! [`CompactionLimits::keep_bytes`]: a follower further behind (or down) gets a snapshot,
//! and the log stays bounded. A follower keeps nothing beyond its store (it serves no
//! entries; should it become leader, a replica behind it gets a snapshot). Compacting
//! writes a record to the log, so it waits until [`CompactionLimits::threshold_entries`]
//! entries or [`CompactionLimits::threshold_bytes`] bytes can go at once.
//!
//! So a log at rest holds less than one threshold per group beyond what lagging followers
//! need, whatever the number of entries it once held.

/// Bounds of [`compact_to`]; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionLimits {
    /// Compact once this many entries can go...
    pub threshold_entries: u64,
    /// ...or once the entries that can go hold this many bytes.
    pub threshold_bytes: u64,
    /// A leader keeps at most this many of the newest applied entries for followers...
    pub keep_entries: u64,
    /// ...holding at most this many bytes.
    pub keep_bytes: u64,
}

/// A replica's log as compaction sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogSpan {
    /// The first entry in the log.
    pub first: u64,
    /// The last entry the store applied.
    pub applied: u64,
    /// The last entry the store holds durably (at most `applied`).
    pub durable: u64,
    /// On a leader, the lowest index a follower still needs (its matched index + 1);
    /// `None` on a follower, or a leader without followers.
    pub followers_need: Option<u64>,
}

/// The index to compact the log to (every entry up to it goes), or `None` to leave it.
/// `bytes(from, to)` is the size in bytes of the entries `from..=to` (a running total's
/// difference, [`crate::raft::GroupStorage::with_log_bytes`]), so the decision costs a
/// few lookups on every pass of the node loop, however long the log.
pub fn compact_to(
    span: LogSpan,
    limits: &CompactionLimits,
    bytes: impl Fn(u64, u64) -> u64,
) -> Option<u64> {
    let mut to = span.durable.min(span.applied);
    if let Some(need) = span.followers_need {
        // The oldest entry kept for followers: the one a follower needs, unless the bounds
        // keep fewer. Fewer entries hold fewer bytes, so the byte bound is a search.
        let end = span.applied.saturating_add(1);
        let (mut lo, mut hi) = (
            need.max(span.first)
                .max(end.saturating_sub(limits.keep_entries))
                .min(end),
            end,
        );
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if bytes(mid, span.applied) <= limits.keep_bytes {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        to = to.min(lo.saturating_sub(1));
    }
    if to < span.first {
        return None;
    }
    (to - span.first + 1 >= limits.threshold_entries
        || bytes(span.first, to) >= limits.threshold_bytes)
        .then_some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CompactionLimits = CompactionLimits {
        threshold_entries: 10,
        threshold_bytes: 1_000,
        keep_entries: 5,
        keep_bytes: 300,
    };

    /// Each case: why, the log (first, applied, durable, what followers need), every
    /// entry's size, and the decision.
    type Case = (
        &'static str,
        (u64, u64, u64, Option<u64>),
        fn(u64) -> u64,
        Option<u64>,
    );

    const CASES: &[Case] = &[
        // A follower compacts to what its store holds durably.
        ("durable before applied", (1, 50, 30, None), |_| 1, Some(30)),
        ("durable past applied", (1, 50, 80, None), |_| 1, Some(50)),
        // Nothing goes below the thresholds.
        ("9 entries, 900 bytes", (1, 50, 9, None), |_| 100, None),
        ("9 entries, 1,080 bytes", (1, 50, 9, None), |_| 120, Some(9)),
        (
            "10 entries, however small",
            (1, 50, 10, None),
            |_| 0,
            Some(10),
        ),
        (
            "nothing durable past the first",
            (20, 50, 19, None),
            |_| 1_000,
            None,
        ),
        // A leader keeps what followers need, within the bounds.
        (
            "followers need 47 on",
            (1, 50, 50, Some(47)),
            |_| 10,
            Some(46),
        ),
        (
            "at most 5 entries kept",
            (1, 50, 50, Some(20)),
            |_| 10,
            Some(45),
        ),
        (
            "at most 300 bytes kept",
            (1, 50, 50, Some(20)),
            |_| 100,
            Some(47),
        ),
        (
            "one entry above the byte bound",
            (1, 50, 50, Some(20)),
            |_| 301,
            Some(50),
        ),
        (
            "followers have everything",
            (1, 50, 50, Some(51)),
            |_| 10,
            Some(50),
        ),
        (
            "a follower ahead of this store",
            (1, 50, 50, Some(60)),
            |_| 10,
            Some(50),
        ),
        (
            "the store bounds it first",
            (1, 50, 30, Some(45)),
            |_| 10,
            Some(30),
        ),
        // What is kept for followers counts toward no threshold.
        ("47 entries can go", (1, 50, 50, Some(48)), |_| 1, Some(47)),
        (
            "8 small entries can go",
            (40, 50, 50, Some(48)),
            |_| 1,
            None,
        ),
        // Sizes are read per entry: 46..=50 are big, so only 49 and 50 are kept.
        (
            "big newest entries",
            (1, 50, 50, Some(1)),
            |i| if i >= 46 { 150 } else { 1 },
            Some(48),
        ),
    ];

    #[test]
    fn the_decision_of_each_case() {
        for &(why, (first, applied, durable, need), size, want) in CASES {
            let span = LogSpan {
                first,
                applied,
                durable,
                followers_need: need,
            };
            let bytes = |from: u64, to: u64| (from..=to).map(size).sum::<u64>();
            assert_eq!(compact_to(span, &LIMITS, bytes), want, "{why}");
        }
    }
}
