//! Mergeable relative-error quantile sketch (DDSketch-style logarithmic buckets).
//!
//! With `gamma = (1 + alpha) / (1 - alpha)`, bucket `i` holds the magnitudes in
//! `(gamma^(i-1), gamma^i]`, i.e. `i = ceil(ln(|x|) / ln(gamma))`. Its representative
//! `2 * gamma^i / (gamma + 1) = (1 - alpha) * gamma^i = (1 + alpha) * gamma^(i-1)` is within
//! relative error `alpha` of every magnitude in the bucket (the error is exactly `alpha` at both
//! edges). The bucket index is monotone in the magnitude, so walking the bucket counts in value
//! order finds the bucket that holds the exact rank-`r` value: every rank query is answered
//! within relative error `alpha` of the true value at that rank, whatever the data distribution.
//! Zeros are counted exactly and answered as exactly `0.0`.
//!
//! Merging adds counts bucket by bucket, so it is exact, associative and commutative, and a
//! merged sketch equals (`==`) the sketch of the concatenated data. A [`Sketch`] does not store
//! its [`SketchConfig`]: build, merge and query with the same configuration.
//!
//! Floating point: `ln`, the division and `exp` add a relative error of about `1e-13` at the
//! extreme exponents (values near a bucket edge may land in the neighbouring bucket, and the
//! representative is rounded), so the bound is `alpha + ~1e-13` in practice. For subnormal inputs
//! the representable values are spaced `2^-1074` apart, so rounding the representative may add
//! up to half such a step on top of the relative bound. Counts saturate at `u64::MAX`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Smallest positive subnormal `f64` (`2^-1074`).
const MIN_SUBNORMAL: f64 = f64::from_bits(1);

/// Relative accuracy parameters shared by everyone who builds or merges sketches.
///
/// Serialized as `{"alpha": ...}`; `gamma` and `ln_gamma` are recomputed (and `alpha` checked)
/// on deserialization.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ConfigRepr", into = "ConfigRepr")]
pub struct SketchConfig {
    alpha: f64,
    gamma: f64,
    ln_gamma: f64,
}

#[derive(Serialize, Deserialize)]
struct ConfigRepr {
    alpha: f64,
}

impl TryFrom<ConfigRepr> for SketchConfig {
    type Error = String;
    fn try_from(r: ConfigRepr) -> Result<Self, String> {
        Self::new(r.alpha)
    }
}

impl From<SketchConfig> for ConfigRepr {
    fn from(c: SketchConfig) -> Self {
        ConfigRepr { alpha: c.alpha }
    }
}

impl SketchConfig {
    /// 1 % relative error.
    pub const DEFAULT_ALPHA: f64 = 0.01;
    /// Smallest accepted alpha: below it the bucket index of extreme finite values
    /// (`|ln x| <= 745`) would no longer fit in an `i32`.
    pub const MIN_ALPHA: f64 = 1e-6;

    /// Builds a configuration; `alpha` must be finite with `MIN_ALPHA <= alpha < 0.5`.
    pub fn new(alpha: f64) -> Result<Self, String> {
        if !alpha.is_finite() || !(Self::MIN_ALPHA..0.5).contains(&alpha) {
            return Err(format!(
                "sketch alpha must be finite and in [{:e}, 0.5), got {alpha}",
                Self::MIN_ALPHA
            ));
        }
        Ok(Self::from_valid_alpha(alpha))
    }

    fn from_valid_alpha(alpha: f64) -> Self {
        let gamma = (1.0 + alpha) / (1.0 - alpha);
        Self {
            alpha,
            gamma,
            ln_gamma: gamma.ln(),
        }
    }

    /// Relative accuracy guaranteed for every rank query.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Bucket growth factor `(1 + alpha) / (1 - alpha)`.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// `gamma().ln()`, the divisor used by [`SketchConfig::index_of`].
    pub fn ln_gamma(&self) -> f64 {
        self.ln_gamma
    }

    /// Bucket index of a finite `magnitude > 0`: exactly `ceil(ln(magnitude) / ln_gamma())`,
    /// cast to `i32`. SQL can compute the same index as `ceil(ln(abs(value)) / :ln_gamma)`
    /// (pass `ln_gamma()` with full precision); a different `ln` implementation may put a value
    /// lying within a relative ~1e-13 of a bucket edge into the neighbouring bucket, which keeps the
    /// error within `alpha` up to rounding.
    pub fn index_of(&self, magnitude: f64) -> i32 {
        debug_assert!(
            magnitude > 0.0 && magnitude.is_finite(),
            "bad magnitude {magnitude}"
        );
        (magnitude.ln() / self.ln_gamma).ceil() as i32
    }

    /// Representative magnitude of bucket `index`: `2 * gamma^index / (gamma + 1)`.
    ///
    /// Computed in the log domain, `exp(index * ln_gamma + ln(2 / (gamma + 1)))`, so that it
    /// only overflows when the representative itself exceeds `f64::MAX`; the result is clamped
    /// to `[2^-1074, f64::MAX]`. Clamping never increases the error for an index produced by
    /// `index_of` of a finite value (the clamp bound lies between the value and the ideal
    /// representative), so the result is finite and positive for every `i32`.
    pub fn value_of(&self, index: i32) -> f64 {
        let ln_value = f64::from(index) * self.ln_gamma + (2.0 / (self.gamma + 1.0)).ln();
        ln_value.exp().clamp(MIN_SUBNORMAL, f64::MAX)
    }
}

impl Default for SketchConfig {
    fn default() -> Self {
        Self::from_valid_alpha(Self::DEFAULT_ALPHA)
    }
}

/// Non-empty buckets `index -> count` (count > 0). Held in a `BTreeMap` so that inserting an
/// arbitrary index is O(log n); serialized as the compact sorted list `[[index, count], ...]`
/// (index strictly ascending, counts > 0), which deserialization checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<(i32, u64)>", into = "Vec<(i32, u64)>")]
struct Buckets(BTreeMap<i32, u64>);

impl Buckets {
    fn add(&mut self, index: i32, count: u64) {
        if count > 0 {
            let c = self.0.entry(index).or_insert(0);
            *c = c.saturating_add(count);
        }
    }

    fn total(&self) -> u64 {
        self.0.values().fold(0, |a, &c| a.saturating_add(c))
    }
}

impl From<Buckets> for Vec<(i32, u64)> {
    fn from(b: Buckets) -> Self {
        b.0.into_iter().collect()
    }
}

impl TryFrom<Vec<(i32, u64)>> for Buckets {
    type Error = String;
    fn try_from(v: Vec<(i32, u64)>) -> Result<Self, String> {
        if v.iter().any(|&(_, c)| c == 0) {
            return Err("sketch bucket with zero count".into());
        }
        if v.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err("sketch bucket indices must be strictly ascending".into());
        }
        Ok(Buckets(v.into_iter().collect()))
    }
}

/// The sketch: counts per bucket for positive values, for negative values (by magnitude), and a
/// zero count. See the module documentation for the accuracy guarantee.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sketch {
    positive: Buckets,
    negative: Buckets,
    zero: u64,
}

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one finite value; `0.0` and `-0.0` are counted as zero. NaN and infinities are
    /// ignored (and trip a `debug_assert`).
    pub fn add(&mut self, cfg: &SketchConfig, value: f64) {
        debug_assert!(value.is_finite(), "Sketch::add of non-finite value {value}");
        if !value.is_finite() {
            return;
        }
        if value == 0.0 {
            self.zero = self.zero.saturating_add(1);
        } else if value > 0.0 {
            self.positive.add(cfg.index_of(value), 1);
        } else {
            self.negative.add(cfg.index_of(-value), 1);
        }
    }

    /// Adds `count` values of a pre-computed bucket (e.g. from SQL `GROUP BY`): `sign > 0` for
    /// positive values, `sign < 0` for negative values (index of the magnitude), `sign == 0` for
    /// zeros (`index` ignored). The index must come from [`SketchConfig::index_of`]'s formula.
    /// Repeated calls for the same bucket sum; `count == 0` is a no-op. O(log n).
    pub fn add_bucket(&mut self, sign: i8, index: i32, count: u64) {
        match sign.signum() {
            1 => self.positive.add(index, count),
            -1 => self.negative.add(index, count),
            _ => self.zero = self.zero.saturating_add(count),
        }
    }

    /// Adds all counts of `other` (built with the same config). Exact, associative and
    /// commutative: any merge order yields an equal (`==`) sketch.
    pub fn merge(&mut self, other: &Sketch) {
        for (&i, &c) in &other.positive.0 {
            self.positive.add(i, c);
        }
        for (&i, &c) in &other.negative.0 {
            self.negative.add(i, c);
        }
        self.zero = self.zero.saturating_add(other.zero);
    }

    /// Number of values added.
    pub fn count(&self) -> u64 {
        self.positive
            .total()
            .saturating_add(self.negative.total())
            .saturating_add(self.zero)
    }

    /// True when no value was added.
    pub fn is_empty(&self) -> bool {
        self.zero == 0 && self.positive.0.is_empty() && self.negative.0.is_empty()
    }

    /// Number of non-empty buckets (positive + negative + 1 if there are zeros).
    pub fn bucket_count(&self) -> usize {
        self.positive.0.len() + self.negative.0.len() + usize::from(self.zero > 0)
    }

    /// Value at rank `rank` (0-based, among count() values sorted ascending), within relative
    /// error alpha of the true value at that rank. `None` when `rank >= count()`.
    ///
    /// Order: negative buckets from the largest magnitude (highest index) down, then zeros, then
    /// positive buckets by ascending index; a negative bucket is answered as `-value_of(index)`.
    pub fn value_at_rank(&self, cfg: &SketchConfig, rank: u64) -> Option<f64> {
        let mut seen = 0u64;
        for (&i, &c) in self.negative.0.iter().rev() {
            seen = seen.saturating_add(c);
            if rank < seen {
                return Some(-cfg.value_of(i));
            }
        }
        seen = seen.saturating_add(self.zero);
        if rank < seen {
            return Some(0.0);
        }
        for (&i, &c) in &self.positive.0 {
            seen = seen.saturating_add(c);
            if rank < seen {
                return Some(cfg.value_of(i));
            }
        }
        None
    }

    /// Quantile with the nearest-rank rule: rank = max(1, ceil(q * n)) - 1 where n = count(),
    /// computed exactly as `((q * n as f64).ceil() as u64).max(1) - 1`, clamped to n-1.
    /// q in [0,1]. Returns None when empty or q outside [0,1]/NaN.
    pub fn quantile(&self, cfg: &SketchConfig, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (((q * n as f64).ceil() as u64).max(1) - 1).min(n - 1);
        self.value_at_rank(cfg, rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const QS: [f64; 5] = [0.0, 0.5, 0.95, 0.99, 1.0];
    const ALPHAS: [f64; 5] = [0.001, 0.01, 0.05, 0.2, 0.49];

    fn build(cfg: &SketchConfig, data: &[f64]) -> Sketch {
        let mut s = Sketch::new();
        data.iter().for_each(|&v| s.add(cfg, v));
        s
    }

    /// Relative bound plus the documented one-subnormal-step slack; exact zero must stay zero.
    fn close(est: f64, exact: f64, alpha: f64) -> bool {
        if exact == 0.0 {
            return est == 0.0;
        }
        est.is_finite() && (est - exact).abs() <= alpha * exact.abs() * (1.0 + 1e-9) + MIN_SUBNORMAL
    }

    fn exact_quantile(data: &[f64], q: f64) -> f64 {
        let mut sorted = data.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as u64;
        sorted[(((q * n as f64).ceil() as u64).max(1) - 1).min(n - 1) as usize]
    }

    /// Wide geometric sweep from the smallest subnormal to f64::MAX plus special values.
    fn extreme_values(cfg: &SketchConfig) -> Vec<f64> {
        let mut v = vec![
            MIN_SUBNORMAL,
            3.0 * MIN_SUBNORMAL,
            1e-310,
            f64::MIN_POSITIVE,
            1.0,
        ];
        v.extend([
            1e-300,
            1e300,
            f64::MAX,
            f64::MAX.next_down(),
            f64::MIN_POSITIVE.next_down(),
        ]);
        let mut x = MIN_SUBNORMAL;
        while x < f64::MAX / 1.37 {
            v.push(x);
            x = (x * 1.37).max(x.next_up());
        }
        // Bucket edges gamma^i and their neighbours, over the whole exponent range.
        for i in (-745..=709).map(|e| (f64::from(e) / cfg.ln_gamma()) as i32) {
            let edge = (f64::from(i) * cfg.ln_gamma()).exp();
            if edge > 0.0 && edge.is_finite() {
                v.extend([edge, edge.next_up(), edge.next_down()]);
            }
        }
        v
    }

    #[test]
    fn config_validation() {
        for bad in [0.0, -0.1, 0.5, 0.7, f64::NAN, f64::INFINITY, 1e-7] {
            assert!(SketchConfig::new(bad).is_err(), "{bad} accepted");
        }
        let c = SketchConfig::new(0.01).unwrap();
        assert_eq!(c, SketchConfig::default());
        assert_eq!(c.alpha(), SketchConfig::DEFAULT_ALPHA);
        assert_eq!(c.gamma(), 1.01 / 0.99);
        assert_eq!(c.ln_gamma(), c.gamma().ln());
        assert_eq!(c.index_of(1.0), 0);
        assert_eq!(c.index_of(c.gamma() * 1.0000001), 2);
        let tiny = SketchConfig::new(SketchConfig::MIN_ALPHA).unwrap();
        assert!(tiny.index_of(f64::MAX) < i32::MAX && tiny.index_of(MIN_SUBNORMAL) > i32::MIN);
    }

    #[test]
    fn relative_error_over_full_range() {
        for alpha in ALPHAS.into_iter().chain([SketchConfig::MIN_ALPHA]) {
            let cfg = SketchConfig::new(alpha).unwrap();
            // Floating-point excess ~1e-13 is below alpha*1e-9 only for alpha >= ~1e-4.
            let tol = if alpha < 1e-4 { alpha + 1e-12 } else { alpha };
            for x in extreme_values(&cfg) {
                for v in [x, -x] {
                    let est = build(&cfg, &[v]).quantile(&cfg, 0.5).unwrap();
                    assert!(close(est, v, tol), "alpha {alpha}: {v} -> {est}");
                }
            }
        }
    }

    #[test]
    fn empty_zero_and_out_of_range() {
        let cfg = SketchConfig::default();
        let mut s = Sketch::new();
        assert!(s.is_empty() && s.count() == 0 && s.bucket_count() == 0);
        assert_eq!(s.quantile(&cfg, 0.5), None);
        assert_eq!(s.value_at_rank(&cfg, 0), None);
        s.add(&cfg, 0.0);
        s.add(&cfg, -0.0);
        assert_eq!((s.count(), s.bucket_count()), (2, 1));
        assert_eq!(s.quantile(&cfg, 1.0), Some(0.0));
        for q in [-0.1, 1.1, f64::NAN, f64::INFINITY] {
            assert_eq!(s.quantile(&cfg, q), None);
        }
        assert_eq!(s.value_at_rank(&cfg, 2), None);
    }

    #[test]
    fn mixed_signs_order_and_extremes() {
        let cfg = SketchConfig::default();
        let data = [
            5.0,
            -1e300,
            0.0,
            3e-5,
            -2.0,
            f64::MAX,
            -0.0,
            -1e-320,
            1e-310,
            f64::MIN,
        ];
        let s = build(&cfg, &data);
        let mut sorted = data.to_vec();
        sorted.sort_by(f64::total_cmp);
        for (r, &exact) in sorted.iter().enumerate() {
            let est = s.value_at_rank(&cfg, r as u64).unwrap();
            assert!(close(est, exact, cfg.alpha()), "rank {r}: {exact} -> {est}");
        }
        assert!(close(s.quantile(&cfg, 0.0).unwrap(), f64::MIN, cfg.alpha()));
        assert!(close(s.quantile(&cfg, 1.0).unwrap(), f64::MAX, cfg.alpha()));
        assert_eq!(s.bucket_count(), 9);
    }

    #[test]
    fn nearest_rank_small_n() {
        // Ranks pinned by hand (n, q, rank); several distinguish ceil from round/floor.
        let cfg = SketchConfig::default();
        for (n, q, rank) in [
            (1, 0.5, 0),
            (3, 0.0, 0),
            (3, 1.0, 2),
            (4, 0.3, 1),
            (4, 0.5, 1),
            (5, 0.5, 2),
            (10, 0.91, 9),
            (10, 0.95, 9),
            (11, 0.5, 5),
            (100, 0.99, 98),
        ] {
            let s = build(&cfg, &(0..n).map(|k| 1.1f64.powi(k)).collect::<Vec<_>>());
            let (est, exact) = (s.quantile(&cfg, q).unwrap(), 1.1f64.powi(rank));
            assert!(close(est, exact, 0.01), "n {n} q {q}: {exact} -> {est}");
        }
        // Values 1.1^k are > gamma^2 apart, so matching within alpha pins the exact rank.
        for n in [1, 2, 3, 4, 5, 10, 11, 100] {
            let data: Vec<f64> = (0..n)
                .map(|k| 1.1f64.powi(k) * if k % 3 == 1 { -1.0 } else { 1.0 })
                .collect();
            let s = build(&cfg, &data);
            for q in QS {
                let (est, exact) = (s.quantile(&cfg, q).unwrap(), exact_quantile(&data, q));
                assert!(
                    close(est, exact, cfg.alpha()),
                    "n {n} q {q}: {exact} -> {est}"
                );
            }
        }
    }

    #[test]
    fn add_bucket_sums_and_serde_rejects_invalid() {
        let cfg = SketchConfig::default();
        let mut s = Sketch::new();
        s.add_bucket(1, 7, 2);
        s.add_bucket(1, 7, 3);
        s.add_bucket(-1, 7, 0);
        s.add_bucket(0, 123, 4);
        assert_eq!((s.count(), s.bucket_count()), (9, 2));
        assert_eq!(s.value_at_rank(&cfg, 4), Some(cfg.value_of(7)));
        let bad = r#"{"positive":[[2,1],[1,1]],"negative":[],"zero":0}"#;
        assert!(serde_json::from_str::<Sketch>(bad).is_err());
        let zero = r#"{"positive":[[1,0]],"negative":[],"zero":0}"#;
        assert!(serde_json::from_str::<Sketch>(zero).is_err());
        assert!(serde_json::from_str::<SketchConfig>(r#"{"alpha":0.7}"#).is_err());
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"positive":[[7,5]],"negative":[],"zero":4}"#
        );
    }

    fn value() -> impl Strategy<Value = f64> {
        use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
        prop_oneof![
            3 => (-300.0f64..300.0, any::<bool>()).prop_map(|(e, neg)| if neg { -(10f64.powf(e)) } else { 10f64.powf(e) }),
            2 => POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO,
            1 => prop::sample::select(vec![0.0, -0.0, 1.0, -1.0, 2.5, f64::MAX, f64::MIN, MIN_SUBNORMAL, -f64::MIN_POSITIVE]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_quantile_within_alpha(data in prop::collection::vec(value(), 1..300), q in 0.0f64..=1.0,
                                      alpha in prop::sample::select(ALPHAS.to_vec())) {
            let cfg = SketchConfig::new(alpha).unwrap();
            let s = build(&cfg, &data);
            prop_assert_eq!(s.count(), data.len() as u64);
            for q in QS.into_iter().chain([q]) {
                let (est, exact) = (s.quantile(&cfg, q).unwrap(), exact_quantile(&data, q));
                prop_assert!(close(est, exact, alpha), "q {}: {} -> {}", q, exact, est);
            }
        }

        #[test]
        fn prop_merge_associative_commutative(data in prop::collection::vec((value(), 0..3usize), 0..300)) {
            let cfg = SketchConfig::default();
            let mut parts = [Sketch::new(), Sketch::new(), Sketch::new()];
            data.iter().for_each(|&(v, p)| parts[p].add(&cfg, v));
            let [a, b, c] = parts;
            let (mut abc, mut cab, mut b_ca) = (a.clone(), c.clone(), b.clone());
            abc.merge(&b);
            abc.merge(&c);
            cab.merge(&a);
            cab.merge(&b);
            let mut ca = c.clone();
            ca.merge(&a);
            b_ca.merge(&ca);
            let all = build(&cfg, &data.iter().map(|&(v, _)| v).collect::<Vec<_>>());
            prop_assert_eq!(&abc, &all);
            prop_assert_eq!(&cab, &all);
            prop_assert_eq!(&b_ca, &all);
        }

        #[test]
        fn prop_add_bucket_equals_add(data in prop::collection::vec(value(), 0..300),
                                      alpha in prop::sample::select(ALPHAS.to_vec())) {
            let cfg = SketchConfig::new(alpha).unwrap();
            let mut grouped: BTreeMap<(i8, i32), u64> = BTreeMap::new();
            for &v in &data {
                let key = if v == 0.0 { (0, 0) } else { (v.signum() as i8, cfg.index_of(v.abs())) };
                *grouped.entry(key).or_default() += 1;
            }
            let mut s = Sketch::new();
            for (&(sign, index), &count) in grouped.iter().rev() {
                s.add_bucket(sign, index, count / 2);
                s.add_bucket(sign, index, count - count / 2);
            }
            prop_assert_eq!(s, build(&cfg, &data));
        }

        #[test]
        fn prop_serde_roundtrip(data in prop::collection::vec(value(), 0..300),
                                alpha in prop::sample::select(ALPHAS.to_vec())) {
            let cfg = SketchConfig::new(alpha).unwrap();
            let s = build(&cfg, &data);
            let back: Sketch = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            prop_assert_eq!(back, s);
            let cfg_back: SketchConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
            prop_assert_eq!(cfg_back, cfg);
        }
    }
}
