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
/// `size(i)` is the size of entry `i` in bytes, for `span.first <= i <= span.applied`.
pub fn compact_to(
    span: LogSpan,
    limits: &CompactionLimits,
    size: impl Fn(u64) -> u64,
) -> Option<u64> {
    let mut to = span.durable.min(span.applied);
    if let Some(need) = span.followers_need {
        // The oldest entry kept for followers: walk back from the newest applied one while
        // a follower needs it and the bounds allow.
        let mut oldest = span.applied.saturating_add(1);
        let mut bytes = 0u64;
        while oldest > span.first
            && oldest > need
            && span.applied + 1 - oldest < limits.keep_entries
        {
            let s = size(oldest - 1);
            if bytes.saturating_add(s) > limits.keep_bytes {
                break;
            }
            bytes += s;
            oldest -= 1;
        }
        to = to.min(oldest - 1);
    }
    if to < span.first {
        return None;
    }
    if to - span.first + 1 >= limits.threshold_entries {
        return Some(to);
    }
    let mut bytes = 0u64;
    for i in span.first..=to {
        bytes = bytes.saturating_add(size(i));
        if bytes >= limits.threshold_bytes {
            return Some(to);
        }
    }
    None
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

    fn span(first: u64, applied: u64, durable: u64, need: Option<u64>) -> LogSpan {
        LogSpan {
            first,
            applied,
            durable,
            followers_need: need,
        }
    }

    fn sized(bytes: u64) -> impl Fn(u64) -> u64 {
        move |_| bytes
    }

    #[test]
    fn a_follower_compacts_to_what_its_store_holds_durably() {
        assert_eq!(
            compact_to(span(1, 50, 30, None), &LIMITS, sized(1)),
            Some(30)
        );
        assert_eq!(
            compact_to(span(1, 50, 80, None), &LIMITS, sized(1)),
            Some(50)
        );
    }

    #[test]
    fn nothing_goes_below_the_thresholds() {
        // 9 small entries can go: fewer than 10, and 900 bytes < 1,000.
        assert_eq!(compact_to(span(1, 50, 9, None), &LIMITS, sized(100)), None);
        // The same entries, bigger: their bytes reach the threshold.
        assert_eq!(
            compact_to(span(1, 50, 9, None), &LIMITS, sized(120)),
            Some(9)
        );
        // Ten entries, however small.
        assert_eq!(
            compact_to(span(1, 50, 10, None), &LIMITS, sized(0)),
            Some(10)
        );
        // Nothing durable past the first entry.
        assert_eq!(
            compact_to(span(20, 50, 19, None), &LIMITS, sized(1_000)),
            None
        );
    }

    #[test]
    fn a_leader_keeps_what_followers_need_within_the_bounds() {
        // Followers need 47 on: everything before it can go.
        assert_eq!(
            compact_to(span(1, 50, 50, Some(47)), &LIMITS, sized(10)),
            Some(46)
        );
        // A follower needs 20 on: at most 5 entries are kept (46..=50).
        assert_eq!(
            compact_to(span(1, 50, 50, Some(20)), &LIMITS, sized(10)),
            Some(45)
        );
        // ...and at most 300 bytes: 3 entries of 100.
        assert_eq!(
            compact_to(span(1, 50, 50, Some(20)), &LIMITS, sized(100)),
            Some(47)
        );
        // One entry bigger than the byte bound: nothing is kept for the follower.
        assert_eq!(
            compact_to(span(1, 50, 50, Some(20)), &LIMITS, sized(301)),
            Some(50)
        );
        // Followers that have everything: nothing is kept.
        assert_eq!(
            compact_to(span(1, 50, 50, Some(51)), &LIMITS, sized(10)),
            Some(50)
        );
        // The store's durable index bounds it before the followers do.
        assert_eq!(
            compact_to(span(1, 50, 30, Some(45)), &LIMITS, sized(10)),
            Some(30)
        );
    }

    #[test]
    fn what_is_kept_for_followers_counts_toward_no_threshold() {
        // Followers need 48 on; 47 entries can go: enough.
        assert_eq!(
            compact_to(span(1, 50, 50, Some(48)), &LIMITS, sized(1)),
            Some(47)
        );
        // The log starts at 40: 8 entries of 1 byte can go, below both thresholds.
        assert_eq!(
            compact_to(span(40, 50, 50, Some(48)), &LIMITS, sized(1)),
            None
        );
    }

    #[test]
    fn sizes_are_read_per_entry() {
        // Entries 46..=50 are big, the rest small: the byte bound keeps only 49 and 50.
        let size = |i: u64| if i >= 46 { 150 } else { 1 };
        assert_eq!(
            compact_to(span(1, 50, 50, Some(1)), &LIMITS, size),
            Some(48)
        );
    }
}
