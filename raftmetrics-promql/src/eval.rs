//! Evaluates a checked expression ([`crate::plan`]) at one time or at every step of a
//! range, over the series its selectors read, with Prometheus 2's semantics:
//!
//! - an instant selector takes each series' latest sample in `[t - 5m, t]` (the lookback
//!   delta, inclusive at both ends), stamped with the evaluation time;
//! - a range selector `[r]` takes the samples in `[t - r, t]`, inclusive at both ends;
//! - `offset` moves both back;
//! - `rate`, `increase` and `delta` extrapolate to the window's ends as Prometheus does
//!   (at most half an average interval past the first and last samples, and not below
//!   zero for counters), `rate` and `increase` adding back counter resets;
//! - arithmetic drops the metric name, so do functions (except `last_over_time`) and
//!   aggregations; comparisons without `bool` filter and keep it.
//!
//! Pure: the series come in ([`Data`]), the value goes out.

use std::collections::{BTreeMap, HashMap};

use promql_parser::label::Labels as LabelList;
use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::{
    AggregateExpr, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, VectorSelector,
};

use crate::error::{PromError, Result};
use crate::plan::{
    LOOKBACK_MILLIS, offset_millis, pushable_aggregate, pushdown_key, selector_key, unparen,
};
use crate::value::{Labels, METRIC_NAME, Sample, Series, Value, Window};

/// The series each selector read, by [`selector_key`], timestamps in microseconds.
pub type Data = HashMap<String, Vec<Series>>;

/// The samples of a pushed-down call at each evaluation time (milliseconds).
pub type Steps = HashMap<i64, Vec<Sample>>;

/// The partial state of `sum`, `avg`, `min`, `max` and `count` over some of a group's
/// values: merged from several stores, it gives the aggregation over all of them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Partial {
    pub sum: f64,
    pub count: u64,
    /// As Prometheus' `min`: NaN only when every value is NaN.
    pub min: f64,
    pub max: f64,
}

impl Partial {
    fn of(v: f64) -> Partial {
        Partial {
            sum: v,
            count: 1,
            min: v,
            max: v,
        }
    }

    fn merge(&mut self, other: &Partial) {
        self.sum += other.sum;
        self.count += other.count;
        if other.min < self.min || self.min.is_nan() {
            self.min = other.min;
        }
        if other.max > self.max || self.max.is_nan() {
            self.max = other.max;
        }
    }

    /// The value of aggregation `op` (one of [`crate::plan::MERGEABLE_AGGREGATIONS`]).
    fn value(&self, op: TokenId) -> f64 {
        match op {
            token::T_SUM => self.sum,
            token::T_COUNT => self.count as f64,
            token::T_AVG => self.sum / self.count as f64,
            token::T_MIN => self.min,
            _ => self.max,
        }
    }
}

/// What a store answers for a pushed-down expression: a call's series at each step, or an
/// aggregation's partial states per group at each step.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum PushedResult {
    Series(RangeResult),
    Groups(Vec<(Labels, Vec<(i64, Partial)>)>),
}

impl PushedResult {
    /// Its points (series × steps, or groups × steps).
    pub fn points(&self) -> usize {
        match self {
            PushedResult::Series(r) => r.iter().map(|(_, p)| p.len()).sum(),
            PushedResult::Groups(g) => g.iter().map(|(_, p)| p.len()).sum(),
        }
    }
}

/// What an evaluation reads: the raw series of its selectors, and the results of its
/// pushed-down calls and aggregations (by [`crate::plan::pushdown_key`]).
#[derive(Debug, Default)]
pub struct Inputs {
    pub series: Data,
    pub pushed: HashMap<String, Steps>,
    /// Merged partial states of pushed-down aggregations: per group, per step.
    pub groups: HashMap<String, HashMap<Labels, BTreeMap<i64, Partial>>>,
}

impl Inputs {
    /// Inputs of raw series only.
    pub fn raw(series: Data) -> Inputs {
        Inputs {
            series,
            ..Inputs::default()
        }
    }

    /// Adds one store's result for the pushed-down expression `key`: a call's series (not
    /// in any other store's result), or partial states, merged with the other stores'.
    pub fn add_pushed(&mut self, key: &str, result: PushedResult) {
        match result {
            PushedResult::Series(series) => {
                let steps = self.pushed.entry(key.to_string()).or_default();
                for (labels, points) in series {
                    for (t, value) in points {
                        steps.entry(t).or_default().push(Sample {
                            labels: labels.clone(),
                            value,
                        });
                    }
                }
            }
            PushedResult::Groups(groups) => {
                let merged = self.groups.entry(key.to_string()).or_default();
                for (labels, points) in groups {
                    let steps = merged.entry(labels).or_default();
                    for (t, partial) in points {
                        steps
                            .entry(t)
                            .and_modify(|p| p.merge(&partial))
                            .or_insert(partial);
                    }
                }
            }
        }
    }

    fn is_pushed(&self) -> bool {
        !self.pushed.is_empty() || !self.groups.is_empty()
    }
}

/// What a store evaluates of a pushed-down expression ([`crate::plan::PushDown`]) over its
/// own series: a call's series at each step, or, for an aggregation of mergeable partial
/// states, those states per group and step.
pub fn pushed(
    expr: &Expr,
    inputs: &Inputs,
    start: i64,
    end: i64,
    step: i64,
) -> Result<PushedResult> {
    let Expr::Aggregate(agg) = unparen(expr) else {
        return Ok(PushedResult::Series(range(expr, inputs, start, end, step)?));
    };
    if pushable_aggregate(agg).is_none() {
        return Ok(PushedResult::Series(range(expr, inputs, start, end, step)?));
    }
    let inner = range(&agg.expr, inputs, start, end, step)?;
    let mut groups: HashMap<Labels, BTreeMap<i64, Partial>> = HashMap::new();
    for (labels, points) in inner {
        let steps = groups
            .entry(group_labels(&labels, agg.modifier.as_ref()))
            .or_default();
        for (t, v) in points {
            let one = Partial::of(v);
            steps.entry(t).and_modify(|p| p.merge(&one)).or_insert(one);
        }
    }
    Ok(PushedResult::Groups(
        groups
            .into_iter()
            .map(|(labels, steps)| (labels, steps.into_iter().collect()))
            .collect(),
    ))
}

/// The labels of an aggregation's group for a series with `labels`: those listed by `by`,
/// all but those listed by `without` and the metric name, or none.
fn group_labels(labels: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    match modifier {
        None => Labels::new(),
        Some(LabelModifier::Include(keep)) => labels
            .iter()
            .filter(|(k, _)| contains(keep, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(LabelModifier::Exclude(drop)) => labels
            .iter()
            .filter(|(k, _)| *k != METRIC_NAME && !contains(drop, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Most points a range query's answer may hold (series × steps).
pub const MAX_RESULT_POINTS: usize = 1_000_000;

const MICROS_PER_MILLI: i64 = 1_000;

/// The result of a range query: per series (labels, sorted) its `(time in ms, value)` at
/// each step where it had one.
pub type RangeResult = Vec<(Labels, Vec<(i64, f64)>)>;

/// Evaluates `expr` at `t` (milliseconds).
pub fn instant(expr: &Expr, inputs: &Inputs, t: i64) -> Result<Value> {
    let value = Evaluator { inputs }.eval(expr, t)?;
    if let Value::Vector(samples) = &value {
        check_unique(samples)?;
    }
    Ok(value)
}

/// Evaluates `expr` at `start`, `start + step`, ... `end` (milliseconds): a scalar or an
/// instant vector at each step, gathered per series.
pub fn range(expr: &Expr, inputs: &Inputs, start: i64, end: i64, step: i64) -> Result<RangeResult> {
    if let Some(result) = range_function_by_series(expr, inputs, start, end, step)? {
        return Ok(result);
    }
    let evaluator = Evaluator { inputs };
    let mut series: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut points = 0usize;
    let mut t = start;
    while t <= end {
        match evaluator.eval(expr, t)? {
            Value::Scalar(v) => series.entry(Labels::new()).or_default().push((t, v)),
            Value::Vector(samples) => {
                check_unique(&samples)?;
                for s in samples {
                    series.entry(s.labels).or_default().push((t, s.value));
                }
            }
            other => {
                return Err(PromError::bad(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    other.type_name()
                )));
            }
        }
        points = series.values().map(Vec::len).sum();
        if points > MAX_RESULT_POINTS {
            return Err(too_many_points());
        }
        t += step;
    }
    let _ = points;
    Ok(series.into_iter().collect())
}

/// A range function of a range selector (what the stores evaluate for a pushed-down call)
/// over all steps, series by series: the same answer as step by step, without a vector per
/// step. `None` when `expr` is not such a call, or when two series would answer under one
/// label set (step by step then says whether they collide at a step, as Prometheus does).
fn range_function_by_series(
    expr: &Expr,
    inputs: &Inputs,
    start: i64,
    end: i64,
    step: i64,
) -> Result<Option<RangeResult>> {
    let Expr::Call(call) = unparen(expr) else {
        return Ok(None);
    };
    if inputs.is_pushed() || !crate::plan::pushable(call) {
        return Ok(None);
    }
    let name = call.func.name;
    let (q, ms) = match call.args.args.as_slice() {
        [m] => (0.0, &**m),
        [q, m] => match &**q {
            Expr::NumberLiteral(n) => (n.val, &**m),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    let Expr::MatrixSelector(ms) = ms else {
        return Ok(None);
    };
    let keep_name = name == "last_over_time";
    let range_seconds = ms.range.as_secs_f64();
    let evaluator = Evaluator { inputs };
    let series = evaluator.series(&ms.vs);
    let mut out: RangeResult = Vec::new();
    let mut total = 0usize;
    for s in series {
        let mut points = Vec::new();
        let mut t = start;
        while t <= end {
            let bounds = window_bounds(ms, t);
            let r = s.range(bounds.0, bounds.1);
            if !r.is_empty() {
                let (ts, vs) = (&s.timestamps[r.clone()], &s.values[r]);
                if let Some(v) = range_value(name, ts, vs, bounds, range_seconds, q) {
                    points.push((t, v));
                }
            }
            t += step;
        }
        total += points.len();
        if total > MAX_RESULT_POINTS {
            return Err(too_many_points());
        }
        if !points.is_empty() {
            let labels = if keep_name {
                s.labels.clone()
            } else {
                drop_name(s.labels.clone())
            };
            out.push((labels, points));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if out.windows(2).any(|w| w[0].0 == w[1].0) {
        return Ok(None);
    }
    Ok(Some(out))
}

fn too_many_points() -> PromError {
    PromError::TooLarge(format!(
        "the answer would hold more than {MAX_RESULT_POINTS} points (series × steps); narrow the selection or increase step"
    ))
}

fn check_unique(samples: &[Sample]) -> Result<()> {
    if samples.len() < 2 {
        return Ok(());
    }
    let mut seen = std::collections::HashSet::with_capacity(samples.len());
    for s in samples {
        if !seen.insert(&s.labels) {
            return Err(PromError::execution(
                "vector cannot contain metrics with the same labelset",
            ));
        }
    }
    Ok(())
}

struct Evaluator<'a> {
    inputs: &'a Inputs,
}

fn drop_name(mut labels: Labels) -> Labels {
    labels.remove(METRIC_NAME);
    labels
}

fn is_comparison(op: TokenId) -> bool {
    matches!(
        op,
        token::T_EQLC | token::T_NEQ | token::T_GTR | token::T_LSS | token::T_GTE | token::T_LTE
    )
}

/// `lhs op rhs`: the value and whether to keep it (comparisons keep the left value when
/// they hold).
fn binop(op: TokenId, lhs: f64, rhs: f64) -> (f64, bool) {
    match op {
        token::T_ADD => (lhs + rhs, true),
        token::T_SUB => (lhs - rhs, true),
        token::T_MUL => (lhs * rhs, true),
        token::T_DIV => (lhs / rhs, true),
        token::T_MOD => (lhs % rhs, true),
        token::T_POW => (lhs.powf(rhs), true),
        token::T_EQLC => (lhs, lhs == rhs),
        token::T_NEQ => (lhs, lhs != rhs),
        token::T_GTR => (lhs, lhs > rhs),
        token::T_LSS => (lhs, lhs < rhs),
        token::T_GTE => (lhs, lhs >= rhs),
        token::T_LTE => (lhs, lhs <= rhs),
        _ => (f64::NAN, false),
    }
}

/// Go's `math.Max` / `math.Min`: NaN wins.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// Prometheus' `quantile`: linear interpolation between the closest ranks.
pub fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Prometheus' `extrapolatedRate`: `rate` (counter, per second), `increase` (counter) and
/// `delta` (gauge) of the samples (`timestamps`, `values`) in `[range_start, range_end]`
/// (microseconds).
fn extrapolated_rate(
    timestamps: &[i64],
    values: &[f64],
    (range_start, range_end): (i64, i64),
    range_seconds: f64,
    counter: bool,
    per_second: bool,
) -> Option<f64> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let (first_t, last_t) = (timestamps[0], timestamps[n - 1]);
    let (first_v, last_v) = (values[0], values[n - 1]);
    let mut result = last_v - first_v;
    if counter {
        let mut last = 0.0;
        for &v in values {
            if v < last {
                result += last;
            }
            last = v;
        }
    }
    let seconds = |micros: i64| micros as f64 / 1e6;
    let mut to_start = seconds(first_t - range_start);
    let to_end = seconds(range_end - last_t);
    let sampled = seconds(last_t - first_t);
    let average = sampled / (n - 1) as f64;
    if counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average / 2.0
    };
    result *= interval / sampled;
    if per_second {
        result /= range_seconds;
    }
    Some(result)
}

/// Prometheus' `instantValue`: `irate` from the last two samples.
fn irate(timestamps: &[i64], values: &[f64]) -> Option<f64> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let (last, previous) = (values[n - 1], values[n - 2]);
    let result = if last < previous {
        last
    } else {
        last - previous
    };
    let interval = timestamps[n - 1] - timestamps[n - 2];
    if interval == 0 {
        return None;
    }
    Some(result / (interval as f64 / 1e6))
}

/// A range function (`name`, parameter `q` for `quantile_over_time`) over one window's
/// samples in `bounds` (microseconds) of a range of `range_seconds`.
fn range_value(
    name: &str,
    timestamps: &[i64],
    values: &[f64],
    bounds: (i64, i64),
    range_seconds: f64,
    q: f64,
) -> Option<f64> {
    match name {
        "rate" => extrapolated_rate(timestamps, values, bounds, range_seconds, true, true),
        "increase" => extrapolated_rate(timestamps, values, bounds, range_seconds, true, false),
        "delta" => extrapolated_rate(timestamps, values, bounds, range_seconds, false, false),
        "irate" => irate(timestamps, values),
        _ => over_time(name, values, q),
    }
}

/// Prometheus' mean of `values` (not empty): incremental, each value divided by the count
/// before it is added (no overflow of a sum), with its rules for infinities.
fn prom_mean(values: &[f64]) -> f64 {
    let (mut mean, mut count) = (0.0_f64, 0.0_f64);
    for &v in values {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        mean += v / count - mean / count;
    }
    mean
}

/// Prometheus' minimum of `values` (not empty): NaN only when every value is NaN.
fn prom_min(values: &[f64]) -> f64 {
    values[1..]
        .iter()
        .fold(values[0], |m, &v| if v < m || m.is_nan() { v } else { m })
}

/// Prometheus' maximum of `values` (not empty): NaN only when every value is NaN.
fn prom_max(values: &[f64]) -> f64 {
    values[1..]
        .iter()
        .fold(values[0], |m, &v| if v > m || m.is_nan() { v } else { m })
}

/// The `*_over_time` functions over one window's values.
fn over_time(name: &str, values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(match name {
        "avg_over_time" => prom_mean(values),
        "sum_over_time" => values.iter().sum(),
        "count_over_time" => values.len() as f64,
        "min_over_time" => prom_min(values),
        "max_over_time" => prom_max(values),
        "last_over_time" => values[values.len() - 1],
        "quantile_over_time" => quantile(q, &mut values.to_vec()),
        _ => return None,
    })
}

impl Evaluator<'_> {
    fn series(&self, vs: &VectorSelector) -> &[Series] {
        self.inputs
            .series
            .get(&selector_key(vs))
            .map_or(&[][..], Vec::as_slice)
    }

    fn eval(&self, expr: &Expr, t: i64) -> Result<Value> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(samples) => Ok(Value::Vector(
                    samples
                        .into_iter()
                        .map(|s| Sample {
                            labels: drop_name(s.labels),
                            value: -s.value,
                        })
                        .collect(),
                )),
                other => Err(PromError::bad(format!(
                    "unary expression only allowed on expressions of type scalar or instant vector, got {:?}",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(_) if self.inputs.is_pushed() => {
                match self.inputs.pushed.get(&pushdown_key(expr)) {
                    Some(steps) => Ok(Value::Vector(steps.get(&t).cloned().unwrap_or_default())),
                    None => match expr {
                        Expr::VectorSelector(vs) => Ok(Value::Vector(self.select(vs, t))),
                        _ => unreachable!("a selector"),
                    },
                }
            }
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.select(vs, t))),
            Expr::MatrixSelector(ms) => Ok(Value::Matrix(self.windows(ms, t))),
            Expr::Call(_) | Expr::Aggregate(_) if self.inputs.is_pushed() => {
                let key = pushdown_key(expr);
                if let Some(steps) = self.inputs.pushed.get(&key) {
                    return Ok(Value::Vector(steps.get(&t).cloned().unwrap_or_default()));
                }
                match (expr, self.inputs.groups.get(&key)) {
                    (Expr::Aggregate(agg), Some(groups)) => {
                        let op = agg.op.id();
                        Ok(Value::Vector(
                            groups
                                .iter()
                                .filter_map(|(labels, steps)| {
                                    steps.get(&t).map(|p| Sample {
                                        labels: labels.clone(),
                                        value: p.value(op),
                                    })
                                })
                                .collect(),
                        ))
                    }
                    (Expr::Aggregate(agg), None) => self.aggregate(agg, t),
                    (Expr::Call(call), _) => self.call(call, t),
                    _ => unreachable!("only calls and aggregations reach here"),
                }
            }
            Expr::Call(call) => self.call(call, t),
            Expr::Aggregate(agg) => self.aggregate(agg, t),
            Expr::Binary(bin) => self.binary(bin, t),
            Expr::Subquery(_) | Expr::Extension(_) => {
                Err(PromError::bad("not supported here: subquery"))
            }
        }
    }

    fn scalar(&self, expr: &Expr, t: i64) -> Result<f64> {
        match self.eval(expr, t)? {
            Value::Scalar(v) => Ok(v),
            other => Err(PromError::bad(format!(
                "expected a scalar, got {}",
                other.type_name()
            ))),
        }
    }

    fn vector(&self, expr: &Expr, t: i64) -> Result<Vec<Sample>> {
        match self.eval(expr, t)? {
            Value::Vector(v) => Ok(v),
            other => Err(PromError::bad(format!(
                "expected an instant vector, got {}",
                other.type_name()
            ))),
        }
    }

    fn select(&self, vs: &VectorSelector, t: i64) -> Vec<Sample> {
        let reference = (t - offset_millis(&vs.offset)) * MICROS_PER_MILLI;
        let from = reference - LOOKBACK_MILLIS * MICROS_PER_MILLI;
        self.series(vs)
            .iter()
            .filter_map(|s| {
                let r = s.range(from, reference);
                (!r.is_empty()).then(|| Sample {
                    labels: s.labels.clone(),
                    value: s.values[r.end - 1],
                })
            })
            .collect()
    }

    fn windows(&self, ms: &MatrixSelector, t: i64) -> Vec<Window> {
        let (start, end) = window_bounds(ms, t);
        self.series(&ms.vs)
            .iter()
            .filter_map(|s| {
                let r = s.range(start, end);
                (!r.is_empty()).then(|| Window {
                    labels: s.labels.clone(),
                    timestamps: s.timestamps[r.clone()].to_vec(),
                    values: s.values[r].to_vec(),
                })
            })
            .collect()
    }

    fn call(&self, call: &Call, t: i64) -> Result<Value> {
        let name = call.func.name;
        let args = &call.args.args;
        let arg = |i: usize| -> Result<&Expr> {
            args.get(i)
                .map(|a| &**a)
                .ok_or_else(|| PromError::bad(format!("{name}: missing argument {}", i + 1)))
        };
        match name {
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "vector" => Ok(Value::Vector(vec![Sample {
                labels: Labels::new(),
                value: self.scalar(arg(0)?, t)?,
            }])),
            "scalar" => {
                let v = self.vector(arg(0)?, t)?;
                Ok(Value::Scalar(if v.len() == 1 {
                    v[0].value
                } else {
                    f64::NAN
                }))
            }
            "abs" | "round" | "clamp_min" | "clamp_max" => {
                let v = self.vector(arg(0)?, t)?;
                let param = match name {
                    "round" => match args.get(1) {
                        Some(a) => self.scalar(a, t)?,
                        None => 1.0,
                    },
                    "clamp_min" | "clamp_max" => self.scalar(arg(1)?, t)?,
                    _ => 0.0,
                };
                let f = |x: f64| match name {
                    "abs" => x.abs(),
                    "round" => {
                        let inverse = 1.0 / param;
                        (x * inverse + 0.5).floor() / inverse
                    }
                    "clamp_min" => go_max(param, x),
                    _ => go_min(param, x),
                };
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|s| Sample {
                            labels: drop_name(s.labels),
                            value: f(s.value),
                        })
                        .collect(),
                ))
            }
            _ => self.range_function(call, t),
        }
    }

    fn range_function(&self, call: &Call, t: i64) -> Result<Value> {
        let name = call.func.name;
        let args = &call.args.args;
        let (q, matrix) = if name == "quantile_over_time" {
            (self.scalar(&args[0], t)?, &args[1])
        } else {
            (0.0, &args[0])
        };
        let ms = match unparen(matrix) {
            Expr::MatrixSelector(ms) => ms,
            _ => {
                return Err(PromError::bad(format!(
                    "{name}: expected a range vector selector"
                )));
            }
        };
        let bounds = window_bounds(ms, t);
        let range_seconds = ms.range.as_secs_f64();
        let keep_name = name == "last_over_time";
        let mut out = Vec::new();
        for w in self.windows(ms, t) {
            let value = range_value(name, &w.timestamps, &w.values, bounds, range_seconds, q);
            if let Some(value) = value {
                let labels = if keep_name {
                    w.labels
                } else {
                    drop_name(w.labels)
                };
                out.push(Sample { labels, value });
            }
        }
        Ok(Value::Vector(out))
    }

    fn aggregate(&self, agg: &AggregateExpr, t: i64) -> Result<Value> {
        let op = agg.op.id();
        let param = match &agg.param {
            Some(p) => Some(self.scalar(p, t)?),
            None => None,
        };
        let samples = self.vector(&agg.expr, t)?;
        let group_of = |labels: &Labels| group_labels(labels, agg.modifier.as_ref());
        let mut order: Vec<Labels> = Vec::new();
        let mut groups: HashMap<Labels, Vec<Sample>> = HashMap::new();
        for s in samples {
            let key = group_of(&s.labels);
            match groups.get_mut(&key) {
                Some(members) => members.push(s),
                None => {
                    order.push(key.clone());
                    groups.insert(key, vec![s]);
                }
            }
        }
        let mut out = Vec::new();
        for key in order {
            let members = groups.remove(&key).unwrap_or_default();
            match op {
                token::T_TOPK | token::T_BOTTOMK => {
                    let k = param.unwrap_or(0.0);
                    if k.is_nan() || k < 1.0 {
                        continue;
                    }
                    let k = (k.min(members.len() as f64)) as usize;
                    let mut members = members;
                    let top = op == token::T_TOPK;
                    // NaN is never preferred; the first seen wins a tie.
                    members.sort_by(|a, b| {
                        use std::cmp::Ordering;
                        match (a.value.is_nan(), b.value.is_nan()) {
                            (true, true) => Ordering::Equal,
                            (true, false) => Ordering::Greater,
                            (false, true) => Ordering::Less,
                            _ if top => b.value.partial_cmp(&a.value).unwrap_or(Ordering::Equal),
                            _ => a.value.partial_cmp(&b.value).unwrap_or(Ordering::Equal),
                        }
                    });
                    out.extend(members.into_iter().take(k));
                }
                _ => {
                    let values: Vec<f64> = members.iter().map(|s| s.value).collect();
                    let value = match op {
                        token::T_SUM => values.iter().sum(),
                        token::T_COUNT => values.len() as f64,
                        token::T_AVG => prom_mean(&values),
                        token::T_MIN => prom_min(&values),
                        token::T_MAX => prom_max(&values),
                        token::T_QUANTILE => {
                            let mut values = values;
                            quantile(param.unwrap_or(f64::NAN), &mut values)
                        }
                        _ => {
                            return Err(PromError::bad(format!(
                                "not supported here: aggregation {}",
                                agg.op
                            )));
                        }
                    };
                    out.push(Sample { labels: key, value });
                }
            }
        }
        Ok(Value::Vector(out))
    }

    fn binary(&self, bin: &BinaryExpr, t: i64) -> Result<Value> {
        let op = bin.op.id();
        let returns_bool = bin.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&bin.lhs, t)?;
        let rhs = self.eval(&bin.rhs, t)?;
        let as_bool = |keep: bool| if keep { 1.0 } else { 0.0 };
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let (v, keep) = binop(op, l, r);
                Ok(Value::Scalar(if is_comparison(op) {
                    as_bool(keep)
                } else {
                    v
                }))
            }
            (Value::Vector(v), Value::Scalar(s)) => {
                Ok(Value::Vector(vector_scalar(op, v, s, false, returns_bool)))
            }
            (Value::Scalar(s), Value::Vector(v)) => {
                Ok(Value::Vector(vector_scalar(op, v, s, true, returns_bool)))
            }
            (Value::Vector(l), Value::Vector(r)) => {
                let matching = bin.modifier.as_ref().and_then(|m| m.matching.as_ref());
                Ok(Value::Vector(vector_vector(
                    op,
                    l,
                    r,
                    matching,
                    returns_bool,
                )?))
            }
            (l, r) => Err(PromError::bad(format!(
                "binary expression must contain only scalar and instant vector types, got {} and {}",
                l.type_name(),
                r.type_name()
            ))),
        }
    }
}

fn contains(list: &LabelList, name: &str) -> bool {
    list.labels.iter().any(|l| l == name)
}

/// A range selector's window at `t`: `[t - offset - range, t - offset]` in microseconds.
fn window_bounds(ms: &MatrixSelector, t: i64) -> (i64, i64) {
    let end = t - offset_millis(&ms.vs.offset);
    let start = end - ms.range.as_millis() as i64;
    (start * MICROS_PER_MILLI, end * MICROS_PER_MILLI)
}

fn vector_scalar(
    op: TokenId,
    v: Vec<Sample>,
    s: f64,
    swap: bool,
    returns_bool: bool,
) -> Vec<Sample> {
    let comparison = is_comparison(op);
    v.into_iter()
        .filter_map(|sample| {
            let (l, r) = if swap {
                (s, sample.value)
            } else {
                (sample.value, s)
            };
            let (mut value, mut keep) = binop(op, l, r);
            if comparison && swap {
                value = r;
            }
            if returns_bool {
                value = if keep { 1.0 } else { 0.0 };
                keep = true;
            }
            keep.then(|| Sample {
                labels: if !comparison || returns_bool {
                    drop_name(sample.labels)
                } else {
                    sample.labels
                },
                value,
            })
        })
        .collect()
}

/// The labels a one-to-one match compares: those listed by `on`, or all but those listed
/// by `ignoring` and the metric name.
fn signature(labels: &Labels, matching: Option<&LabelModifier>) -> Labels {
    match matching {
        Some(LabelModifier::Include(on)) => labels
            .iter()
            .filter(|(k, _)| contains(on, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(LabelModifier::Exclude(ignoring)) => labels
            .iter()
            .filter(|(k, _)| *k != METRIC_NAME && !contains(ignoring, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => drop_name(labels.clone()),
    }
}

fn vector_vector(
    op: TokenId,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    matching: Option<&LabelModifier>,
    returns_bool: bool,
) -> Result<Vec<Sample>> {
    let comparison = is_comparison(op);
    let mut right: HashMap<Labels, Sample> = HashMap::with_capacity(rhs.len());
    for s in rhs {
        let sig = signature(&s.labels, matching);
        if right.contains_key(&sig) {
            return Err(PromError::execution(format!(
                "found duplicate series for the match group {} on the right hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side",
                show(&sig)
            )));
        }
        right.insert(sig, s);
    }
    let mut matched = std::collections::HashSet::new();
    let mut out = Vec::new();
    for l in lhs {
        let sig = signature(&l.labels, matching);
        let Some(r) = right.get(&sig) else { continue };
        let (mut value, mut keep) = binop(op, l.value, r.value);
        if returns_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if !keep {
            continue;
        }
        if !matched.insert(sig.clone()) {
            return Err(PromError::execution(format!(
                "multiple matches for labels {}: many-to-one matching must be explicit (group_left/group_right)",
                show(&sig)
            )));
        }
        let mut labels = l.labels;
        if !comparison || returns_bool {
            labels.remove(METRIC_NAME);
        }
        match matching {
            Some(LabelModifier::Include(on)) => labels.retain(|k, _| contains(on, k)),
            Some(LabelModifier::Exclude(ignoring)) => labels.retain(|k, _| !contains(ignoring, k)),
            None => {}
        }
        out.push(Sample { labels, value });
    }
    Ok(out)
}

fn show(labels: &Labels) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests;
