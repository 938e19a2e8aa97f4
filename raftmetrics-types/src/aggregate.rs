//! Mergeable partial aggregate states and their finalization.
//!
//! A store computes, for every (group, time bucket) it holds, a [`PartialState`]: count,
//! sum, min, max, when percentiles are asked for a [`Sketch`], and when `last` or `first`
//! is asked for the latest or earliest point ([`TimedValue`]). States from any number of
//! partitions merge associatively and commutatively ([`PartialAggregate::merge`]); only
//! then does [`finalize`] compute averages (`sum / count`) and percentiles (from the merged
//! sketch). There is never an average of averages nor a percentile of percentiles.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::partition::PartitionId;
use crate::query::{Agg, GroupKey, OrderBy, OrderKey, Query};
use crate::sketch::{Sketch, SketchConfig};
use crate::time::Timestamp;

/// Partial aggregate over a set of values; merge, then finalize.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialState {
    pub count: u64,
    pub sum: f64,
    /// `+inf` while empty.
    pub min: f64,
    /// `-inf` while empty.
    pub max: f64,
    /// Present when the query asks for percentiles.
    pub sketch: Option<Sketch>,
    /// The latest point ([`TimedValue::latest`]); present when the query asks for `last`
    /// and the state holds a point.
    pub last: Option<TimedValue>,
    /// The earliest point ([`TimedValue::earliest`]); present when the query asks for
    /// `first` and the state holds a point.
    pub first: Option<TimedValue>,
}

impl Default for PartialState {
    fn default() -> Self {
        PartialState {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sketch: None,
            last: None,
            first: None,
        }
    }
}

/// A point's timestamp (µs since the epoch) and value: the state of `last` and `first`.
///
/// Several points may share a timestamp (the store keeps duplicates), so a timestamp alone
/// does not decide which point is the latest. Points are ordered by timestamp, then by
/// value ([`f64::total_cmp`]): `last` is the value of the greatest point in that order (at
/// the greatest timestamp, the greatest value), `first` of the smallest (at the smallest
/// timestamp, the smallest value). Both are a maximum or minimum of a total order, so they
/// merge associatively and commutatively and never depend on partitioning or merge order.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimedValue {
    pub micros: i64,
    pub value: f64,
}

impl TimedValue {
    pub fn new(micros: i64, value: f64) -> Self {
        TimedValue { micros, value }
    }

    /// Timestamp first, then value.
    fn order(&self, other: &TimedValue) -> std::cmp::Ordering {
        self.micros
            .cmp(&other.micros)
            .then(self.value.total_cmp(&other.value))
    }

    /// The later of two points (of equal timestamps, the greater value); either may be
    /// absent.
    pub fn latest(a: Option<TimedValue>, b: Option<TimedValue>) -> Option<TimedValue> {
        match (a, b) {
            (Some(x), Some(y)) => Some(if y.order(&x).is_gt() { y } else { x }),
            (x, None) => x,
            (None, y) => y,
        }
    }

    /// The earlier of two points (of equal timestamps, the smaller value); either may be
    /// absent.
    pub fn earliest(a: Option<TimedValue>, b: Option<TimedValue>) -> Option<TimedValue> {
        match (a, b) {
            (Some(x), Some(y)) => Some(if y.order(&x).is_lt() { y } else { x }),
            (x, None) => x,
            (None, y) => y,
        }
    }
}

impl PartialState {
    /// Adds one value (used by tests and by in-memory stores; DuckDB computes states in SQL).
    pub fn add(&mut self, cfg: &SketchConfig, value: f64, with_sketch: bool) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if with_sketch {
            self.sketch.get_or_insert_with(Sketch::new).add(cfg, value);
        }
    }

    /// Adds one point at `micros`: [`PartialState::add`], and the point counts for `last`
    /// and `first`.
    pub fn add_at(&mut self, cfg: &SketchConfig, micros: i64, value: f64, with_sketch: bool) {
        self.add(cfg, value, with_sketch);
        let point = Some(TimedValue::new(micros, value));
        self.last = TimedValue::latest(self.last, point);
        self.first = TimedValue::earliest(self.first, point);
    }

    /// Folds `other` into `self`. Associative and commutative (sums up to floating-point
    /// rounding).
    pub fn merge(&mut self, other: &PartialState) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if let Some(theirs) = &other.sketch {
            self.sketch.get_or_insert_with(Sketch::new).merge(theirs);
        }
        self.last = TimedValue::latest(self.last, other.last);
        self.first = TimedValue::earliest(self.first, other.first);
    }

    /// The final value of one aggregation; `None` where it is undefined (no values, a
    /// percentile without a sketch, `last` or `first` without their point).
    pub fn value(&self, agg: Agg, cfg: &SketchConfig) -> Option<f64> {
        let any = self.count > 0;
        match agg {
            Agg::Count => Some(self.count as f64),
            Agg::Sum => Some(self.sum),
            Agg::Avg => any.then(|| self.sum / self.count as f64),
            Agg::Min => any.then_some(self.min),
            Agg::Max => any.then_some(self.max),
            Agg::Last => self.last.map(|p| p.value),
            Agg::First => self.first.map(|p| p.value),
            // The sketch answers a bucket's representative value; the true quantile lies
            // within [min, max], so clamping only ever moves the answer closer to it. Stores
            // compute min and max with every sketch (`Query::needs_extremes`), so the answer
            // does not depend on the other aggregations asked; a state without them (±inf,
            // which no store sends with a sketch) is not clamped.
            Agg::Percentile(_) => self
                .sketch
                .as_ref()?
                .quantile(cfg, agg.quantile()?)
                .map(|q| {
                    if self.min <= self.max {
                        q.clamp(self.min, self.max)
                    } else {
                        q
                    }
                }),
        }
    }
}

/// Bucket key used when a query has no window: everything is in one bucket.
pub const WHOLE_RANGE: i64 = i64::MIN;

/// Partial states of a query, by group and bucket start (microseconds; [`WHOLE_RANGE`]
/// without a window). What a store returns and what the query coordinator merges.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialAggregate {
    pub groups: BTreeMap<GroupKey, BTreeMap<i64, PartialState>>,
}

impl PartialAggregate {
    /// The state of one (group, bucket), created empty on first use.
    pub fn state_mut(&mut self, group: GroupKey, bucket: i64) -> &mut PartialState {
        self.groups
            .entry(group)
            .or_default()
            .entry(bucket)
            .or_default()
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: PartialAggregate) {
        for (group, buckets) in other.groups {
            let mine = self.groups.entry(group).or_default();
            for (bucket, state) in buckets {
                match mine.get_mut(&bucket) {
                    Some(s) => s.merge(&state),
                    None => {
                        mine.insert(bucket, state);
                    }
                }
            }
        }
    }

    /// Total number of values covered.
    pub fn count(&self) -> u64 {
        self.groups
            .values()
            .flat_map(|b| b.values())
            .map(|s| s.count)
            .sum()
    }
}

/// One finalized aggregation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggValue {
    pub agg: Agg,
    /// `None` where undefined (e.g. the average of no values).
    pub value: Option<f64>,
}

/// A time bucket (tumbling) or window (rolling): `[start, end)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketResult {
    pub start: Timestamp,
    pub end: Timestamp,
    pub aggregations: Vec<AggValue>,
}

/// One group of a grouped query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupResult {
    /// `(tag, value)` for each `group_by` tag; `None` where the series lacks the tag.
    pub key: Vec<(String, Option<String>)>,
    /// Over the whole time range.
    pub aggregations: Vec<AggValue>,
    /// Per bucket, when the query has a window.
    pub buckets: Vec<BucketResult>,
}

/// How percentiles were computed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PercentileMethod {
    /// Always `"ddsketch"`: log-bucket sketch, nearest-rank quantiles.
    pub method: String,
    /// Guaranteed relative error bound of every percentile.
    pub relative_error: f64,
}

/// Which part of the data answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub is_partial: bool,
    pub total_nodes: u32,
    pub responding_nodes: u32,
    pub missing_partitions: Vec<PartitionId>,
}

impl Coverage {
    /// Everything answered on a single node.
    pub fn complete() -> Self {
        Coverage {
            is_partial: false,
            total_nodes: 1,
            responding_nodes: 1,
            missing_partitions: Vec::new(),
        }
    }
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    pub metric: String,
    /// Over everything the query selected (all groups, the whole range, before `limit`).
    pub aggregations: Vec<AggValue>,
    /// With `group_by`: groups, ordered and limited.
    pub groups: Vec<GroupResult>,
    /// With `window` and no `group_by`: buckets, ordered and limited.
    pub buckets: Vec<BucketResult>,
    /// Present when percentiles were asked for.
    pub percentiles: Option<PercentileMethod>,
    pub coverage: Coverage,
}

impl QueryResult {
    /// The overall value of one aggregation.
    pub fn get(&self, agg: Agg) -> Option<f64> {
        find(&self.aggregations, agg)
    }
}

/// The value of `agg` in a finalized list.
pub fn find(values: &[AggValue], agg: Agg) -> Option<f64> {
    values.iter().find(|v| v.agg == agg).and_then(|v| v.value)
}

fn values(state: &PartialState, query: &Query, cfg: &SketchConfig) -> Vec<AggValue> {
    query
        .aggs
        .iter()
        .map(|&agg| AggValue {
            agg,
            value: state.value(agg, cfg),
        })
        .collect()
}

fn merged<'a>(states: impl IntoIterator<Item = &'a PartialState>) -> PartialState {
    let mut total = PartialState::default();
    for s in states {
        total.merge(s);
    }
    total
}

/// Turns the buckets of one group into finalized buckets or rolling windows, in time order.
fn finalize_buckets(
    buckets: &BTreeMap<i64, PartialState>,
    query: &Query,
    cfg: &SketchConfig,
) -> Vec<BucketResult> {
    let Some(window) = query.window_micros else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if !query.rolling {
        for (&start, state) in buckets {
            out.push(BucketResult {
                start: Timestamp::from_micros(start),
                end: Timestamp::from_micros(start.saturating_add(window)),
                aggregations: values(state, query, cfg),
            });
        }
        return out;
    }
    // Rolling: windows [end - window, end) for every step boundary `end` from the end of
    // the first sub-bucket with data to the end of the last one.
    let step = query.step_micros().unwrap_or(window);
    let (Some(&first), Some(&last)) = (buckets.keys().next(), buckets.keys().next_back()) else {
        return out;
    };
    let mut end = first.saturating_add(step);
    let last_end = last.saturating_add(step);
    while end <= last_end {
        let start = end.saturating_sub(window);
        let state = merged(buckets.range(start..end).map(|(_, s)| s));
        if state.count > 0 {
            out.push(BucketResult {
                start: Timestamp::from_micros(start),
                end: Timestamp::from_micros(end),
                aggregations: values(&state, query, cfg),
            });
        }
        end = end.saturating_add(step);
    }
    out
}

fn sort_key(values: &[AggValue], order: &OrderBy) -> Option<f64> {
    match order.key {
        OrderKey::Agg(agg) => find(values, agg),
        OrderKey::Key => None,
    }
}

/// Sorts rows by `order_by`: by an aggregation's value (undefined values last), ties and
/// `key` ordering by the row key ascending (or descending with `key:desc`).
fn order_rows<T>(rows: &mut [T], order: Option<&OrderBy>, vals: impl Fn(&T) -> &[AggValue]) {
    let Some(order) = order else { return };
    if order.key == OrderKey::Key {
        if order.descending {
            rows.reverse();
        }
        return;
    }
    // Rows arrive in key order; a stable sort keeps key order among ties.
    rows.sort_by(
        |a, b| match (sort_key(vals(a), order), sort_key(vals(b), order)) {
            (Some(x), Some(y)) => {
                let ord = x.total_cmp(&y);
                if order.descending { ord.reverse() } else { ord }
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        },
    );
}

/// Finalizes merged partial states into the answer of `query`.
pub fn finalize(
    query: &Query,
    cfg: &SketchConfig,
    partial: &PartialAggregate,
    coverage: Coverage,
) -> QueryResult {
    let total = merged(partial.groups.values().flat_map(|b| b.values()));
    let mut groups = Vec::new();
    let mut buckets = Vec::new();
    if query.group_by.is_empty() {
        if let Some(only) = partial.groups.get(&Vec::new()) {
            buckets = finalize_buckets(only, query, cfg);
        }
        order_rows(&mut buckets, query.order_by.as_ref(), |b| &b.aggregations);
        if let Some(limit) = query.limit {
            buckets.truncate(limit);
        }
    } else {
        for (key, group_buckets) in &partial.groups {
            let state = merged(group_buckets.values());
            groups.push(GroupResult {
                key: query
                    .group_by
                    .iter()
                    .cloned()
                    .zip(key.iter().cloned())
                    .collect(),
                aggregations: values(&state, query, cfg),
                buckets: finalize_buckets(group_buckets, query, cfg),
            });
        }
        order_rows(&mut groups, query.order_by.as_ref(), |g| &g.aggregations);
        if let Some(limit) = query.limit {
            groups.truncate(limit);
        }
    }
    QueryResult {
        metric: query.metric.clone(),
        aggregations: values(&total, query, cfg),
        groups,
        buckets,
        percentiles: query.needs_sketch().then(|| PercentileMethod {
            method: "ddsketch".to_string(),
            relative_error: cfg.alpha(),
        }),
        coverage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MICROS_PER_SECOND;

    fn state(values: &[f64]) -> PartialState {
        let cfg = SketchConfig::default();
        let mut s = PartialState::default();
        for &v in values {
            s.add(&cfg, v, true);
        }
        s
    }

    #[test]
    fn empty_state_finalizes_to_undefined() {
        let cfg = SketchConfig::default();
        let s = PartialState::default();
        assert_eq!(s.value(Agg::Count, &cfg), Some(0.0));
        assert_eq!(s.value(Agg::Sum, &cfg), Some(0.0));
        for agg in [Agg::Avg, Agg::Min, Agg::Max, Agg::P50] {
            assert_eq!(s.value(agg, &cfg), None, "{agg}");
        }
    }

    #[test]
    fn percentiles_stay_within_min_and_max() {
        let cfg = SketchConfig::default();
        let s = state(&[42.5, 42.5]);
        for agg in [Agg::P50, Agg::P95, Agg::P99] {
            assert_eq!(s.value(agg, &cfg), Some(42.5), "{agg}");
        }
        let s = state(&[1.0, 2.0, 1000.0]);
        let p99 = s.value(Agg::P99, &cfg).expect("p99");
        assert!(
            p99 <= 1000.0 && (p99 - 1000.0).abs() <= 1000.0 * 0.01,
            "{p99}"
        );
    }

    #[test]
    fn average_is_never_an_average_of_averages() {
        let cfg = SketchConfig::default();
        let mut a = state(&[1.0, 1.0, 1.0]);
        a.merge(&state(&[10.0]));
        assert_eq!(a.value(Agg::Avg, &cfg), Some(13.0 / 4.0));
        assert_eq!(a.value(Agg::Min, &cfg), Some(1.0));
        assert_eq!(a.value(Agg::Max, &cfg), Some(10.0));
    }

    #[test]
    fn last_and_first_break_timestamp_ties_by_value() {
        let cfg = SketchConfig::default();
        let points = [
            (5, 1.0),
            (9, 3.0),
            (9, 7.0),
            (9, -2.0),
            (1, 4.0),
            (1, -6.0),
            (1, 0.5),
        ];
        let mut s = PartialState::default();
        for (t, v) in points {
            s.add_at(&cfg, t, v, false);
        }
        assert_eq!(s.value(Agg::Last, &cfg), Some(7.0));
        assert_eq!(s.value(Agg::First, &cfg), Some(-6.0));
        assert_eq!(s.last, Some(TimedValue::new(9, 7.0)));
        assert_eq!(s.first, Some(TimedValue::new(1, -6.0)));
        // One point per state, merged in either direction: the same answer.
        let single: Vec<PartialState> = points
            .iter()
            .map(|&(t, v)| {
                let mut s = PartialState::default();
                s.add_at(&cfg, t, v, false);
                s
            })
            .collect();
        let mut forward = PartialState::default();
        single.iter().for_each(|x| forward.merge(x));
        let mut backward = PartialState::default();
        single.iter().rev().for_each(|x| backward.merge(x));
        assert_eq!(forward, backward);
        assert_eq!(forward.value(Agg::Last, &cfg), Some(7.0));
        // Undefined without points, and in a state computed without them.
        let empty = PartialState::default();
        assert_eq!(empty.value(Agg::Last, &cfg), None);
        assert_eq!(empty.value(Agg::First, &cfg), None);
        assert_eq!(state(&[1.0]).value(Agg::Last, &cfg), None);
    }

    mod last_first_props {
        use proptest::prelude::*;

        use super::super::*;

        /// Few timestamps and values, so that ties are the rule.
        fn points() -> impl Strategy<Value = Vec<(i64, f64, usize)>> {
            prop::collection::vec(
                (
                    0i64..6,
                    prop_oneof![(-3i32..4).prop_map(f64::from), -1e9..1e9f64],
                    0usize..5,
                ),
                0..40,
            )
        }

        fn parts(points: &[(i64, f64, usize)]) -> Vec<PartialState> {
            let cfg = SketchConfig::default();
            let mut parts = vec![PartialState::default(); 5];
            for &(t, v, p) in points {
                parts[p].add_at(&cfg, t, v, false);
            }
            parts
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn last_and_first_merge_in_any_order_and_grouping(
                points in points(),
                order in Just((0usize..5).collect::<Vec<_>>()).prop_shuffle(),
            ) {
                let cfg = SketchConfig::default();
                let parts = parts(&points);
                // Left fold in a shuffled order.
                let mut folded = PartialState::default();
                for &i in &order {
                    folded.merge(&parts[i]);
                }
                // (a ⋅ b) ⋅ (c ⋅ (d ⋅ e)): another grouping.
                let mut ab = parts[order[0]].clone();
                ab.merge(&parts[order[1]]);
                let mut de = parts[order[3]].clone();
                de.merge(&parts[order[4]]);
                let mut cde = parts[order[2]].clone();
                cde.merge(&de);
                ab.merge(&cde);
                prop_assert_eq!(folded.last, ab.last);
                prop_assert_eq!(folded.first, ab.first);
                // The rule, by brute force over every point.
                let want_last = points
                    .iter()
                    .map(|&(t, v, _)| (t, v))
                    .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
                let want_first = points
                    .iter()
                    .map(|&(t, v, _)| (t, v))
                    .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
                prop_assert_eq!(folded.value(Agg::Last, &cfg), want_last.map(|p| p.1));
                prop_assert_eq!(folded.value(Agg::First, &cfg), want_first.map(|p| p.1));
                prop_assert_eq!(folded.last.map(|p| p.micros), want_last.map(|p| p.0));
                prop_assert_eq!(folded.first.map(|p| p.micros), want_first.map(|p| p.0));
            }
        }
    }

    #[test]
    fn rolling_windows_merge_sub_buckets() {
        let cfg = SketchConfig::default();
        let minute = 60 * MICROS_PER_SECOND;
        let mut q = Query::new("m");
        q.aggs = vec![Agg::Count, Agg::Sum];
        q.window_micros = Some(3 * minute);
        q.rolling = true;
        q.step_micros = Some(minute);
        let mut p = PartialAggregate::default();
        for (bucket, v) in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 8.0)] {
            p.state_mut(vec![], bucket * minute).merge(&state(&[v]));
        }
        let r = finalize(&q, &cfg, &p, Coverage::complete());
        let got: Vec<(i64, Option<f64>)> = r
            .buckets
            .iter()
            .map(|b| (b.end.as_micros() / minute, find(&b.aggregations, Agg::Sum)))
            .collect();
        // Windows end at 1..=6; the one ending at 5 ([2,5)) holds 4.0; none is empty.
        assert_eq!(
            got,
            vec![
                (1, Some(1.0)),
                (2, Some(3.0)),
                (3, Some(7.0)),
                (4, Some(6.0)),
                (5, Some(4.0)),
                (6, Some(8.0))
            ]
        );
        assert_eq!(r.get(Agg::Sum), Some(15.0));
    }

    #[test]
    fn order_and_limit_apply_after_merge_with_stable_ties() {
        let cfg = SketchConfig::default();
        let mut q = Query::new("m");
        q.aggs = vec![Agg::Max];
        q.group_by = vec!["host".into()];
        q.order_by = Some(OrderBy {
            key: OrderKey::Agg(Agg::Max),
            descending: true,
        });
        q.limit = Some(2);
        let mut a = PartialAggregate::default();
        let mut b = PartialAggregate::default();
        a.state_mut(vec![Some("h1".into())], WHOLE_RANGE)
            .merge(&state(&[5.0]));
        a.state_mut(vec![Some("h2".into())], WHOLE_RANGE)
            .merge(&state(&[1.0]));
        b.state_mut(vec![Some("h2".into())], WHOLE_RANGE)
            .merge(&state(&[9.0]));
        b.state_mut(vec![Some("h3".into())], WHOLE_RANGE)
            .merge(&state(&[5.0]));
        a.merge(b);
        let r = finalize(&q, &cfg, &a, Coverage::complete());
        let keys: Vec<_> = r
            .groups
            .iter()
            .map(|g| g.key[0].1.clone().unwrap())
            .collect();
        assert_eq!(keys, vec!["h2", "h1"]);
        assert_eq!(r.get(Agg::Max), Some(9.0));
    }
}
