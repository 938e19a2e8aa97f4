//! The query model of `/aggregate`: what to select, how to bucket it, what to compute.
//!
//! A [`Query`] is built from URL parameters by [`Query::from_params`] (the server and the
//! embedded engine share it) or directly in Rust. Stores use [`Query::matches`] and
//! [`Query::group_key`] to select and group series; [`crate::aggregate::finalize`] turns
//! merged partial states into a [`crate::aggregate::QueryResult`]. The exact semantics are
//! written down in `docs/query.md`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, FieldError, Result};
use crate::model::{Tags, check_metric_name};
use crate::time::{MICROS_PER_SECOND, Timestamp, format_duration_micros, parse_duration_micros};

/// Most `group_by` keys in one query.
pub const MAX_GROUP_BY: usize = 8;
/// Most metrics one query names (`metric=a,b,c`).
pub const MAX_METRICS: usize = 64;
/// The `group_by` key that stands for the metric name (before any tag of that name).
pub const METRIC_GROUP_KEY: &str = "metric";
/// Most filter values (tags + hosts + datacenters) in one query.
pub const MAX_FILTERS: usize = 64;
/// Longest filter pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 100_000;
/// Most time buckets a query may produce (per group), so no query can ask for unbounded work.
pub const MAX_BUCKETS: i64 = 100_000;
/// Most sub-buckets one rolling window may span (`window / step`).
pub const MAX_ROLLING_SPAN: i64 = 10_000;

/// An aggregation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Agg {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    /// The value of the latest point: the greatest timestamp; among several points there,
    /// the greatest value.
    Last,
    /// The value of the earliest point: the smallest timestamp; among several points
    /// there, the smallest value.
    First,
    /// A percentile in hundredths of a percent: `Percentile(9500)` is p95, `Percentile(9990)`
    /// is p99.9.
    Percentile(u16),
}

impl Agg {
    pub const P50: Agg = Agg::Percentile(5_000);
    pub const P95: Agg = Agg::Percentile(9_500);
    pub const P99: Agg = Agg::Percentile(9_900);

    /// The quantile in `[0, 1]` of a percentile aggregation.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Agg::Percentile(hundredths) => Some(f64::from(hundredths) / 10_000.0),
            _ => None,
        }
    }

    pub fn is_percentile(self) -> bool {
        matches!(self, Agg::Percentile(_))
    }
}

impl fmt::Display for Agg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Agg::Avg => f.write_str("avg"),
            Agg::Min => f.write_str("min"),
            Agg::Max => f.write_str("max"),
            Agg::Sum => f.write_str("sum"),
            Agg::Count => f.write_str("count"),
            Agg::Last => f.write_str("last"),
            Agg::First => f.write_str("first"),
            Agg::Percentile(h) => {
                let (whole, frac) = (h / 100, h % 100);
                match frac {
                    0 => write!(f, "p{whole}"),
                    f2 if f2 % 10 == 0 => write!(f, "p{whole}.{}", f2 / 10),
                    f2 => write!(f, "p{whole}.{f2:02}"),
                }
            }
        }
    }
}

impl FromStr for Agg {
    type Err = String;

    /// `avg`, `min`, `max`, `sum`, `count`, `last`, `first`, or `pNN` with NN from 0 to 100
    /// and at most two decimals (`p50`, `p99.9`).
    fn from_str(s: &str) -> Result<Self, String> {
        const ERR: &str =
            "must be one of avg, min, max, sum, count, last, first, or pNN (p50, p95, p99, p99.9)";
        match s {
            "avg" => Ok(Agg::Avg),
            "min" => Ok(Agg::Min),
            "max" => Ok(Agg::Max),
            "sum" => Ok(Agg::Sum),
            "count" => Ok(Agg::Count),
            "last" => Ok(Agg::Last),
            "first" => Ok(Agg::First),
            _ => {
                let num = s.strip_prefix('p').ok_or(ERR)?;
                let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
                if whole.is_empty()
                    || whole.len() > 3
                    || frac.len() > 2
                    || !whole
                        .bytes()
                        .chain(frac.bytes())
                        .all(|b| b.is_ascii_digit())
                    || (num.contains('.') && frac.is_empty())
                {
                    return Err(ERR.to_string());
                }
                let whole: u16 = whole.parse().map_err(|_| ERR)?;
                let frac: u16 = format!("{frac:0<2}").parse().map_err(|_| ERR)?;
                let hundredths = whole * 100 + frac;
                if hundredths > 10_000 {
                    return Err(ERR.to_string());
                }
                Ok(Agg::Percentile(hundredths))
            }
        }
    }
}

impl Serialize for Agg {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Agg {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What `order_by` sorts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderKey {
    /// The value of an aggregation (`value` names the first one in `agg`).
    Agg(Agg),
    /// The group key, or the bucket start for buckets.
    Key,
}

/// `order_by=<agg|value|key>[:asc|:desc]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderBy {
    pub key: OrderKey,
    pub descending: bool,
}

/// Read consistency of a query in a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Any live replica may answer (may miss the latest acknowledged writes).
    #[default]
    Eventual,
    /// Partition leaders answer after a Raft read-index round (linearizable).
    Strong,
}

/// A tag filter: the tag `key` must match one of `patterns`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagFilter {
    pub key: String,
    pub patterns: Vec<String>,
}

/// Predicates on the values of points (`value_gt`, `value_ge`, `value_lt`, `value_le`):
/// every bound given must hold. A point is selected by them before any aggregation, so they
/// combine with the metric, tag filters and time range like any other filter. Bounds that
/// no value satisfies (`gt: 5, lt: 3`) select nothing; that is an answer over no points,
/// not an error. Bounds are finite ([`Query::validate`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueFilter {
    /// `value > gt`.
    pub gt: Option<f64>,
    /// `value >= ge`.
    pub ge: Option<f64>,
    /// `value < lt`.
    pub lt: Option<f64>,
    /// `value <= le`.
    pub le: Option<f64>,
}

impl ValueFilter {
    /// The parameter names, in the order of [`ValueFilter::bounds`].
    pub const PARAMS: [&'static str; 4] = ["value_gt", "value_ge", "value_lt", "value_le"];

    /// No bound: every value is selected.
    pub fn is_empty(&self) -> bool {
        self.bounds().iter().all(Option::is_none)
    }

    /// `[gt, ge, lt, le]`, in the order of [`ValueFilter::PARAMS`].
    pub fn bounds(&self) -> [Option<f64>; 4] {
        [self.gt, self.ge, self.lt, self.le]
    }

    fn bound_mut(&mut self, param: &str) -> Option<&mut Option<f64>> {
        match param {
            "value_gt" => Some(&mut self.gt),
            "value_ge" => Some(&mut self.ge),
            "value_lt" => Some(&mut self.lt),
            "value_le" => Some(&mut self.le),
            _ => None,
        }
    }

    /// Whether `value` satisfies every bound.
    pub fn matches(&self, value: f64) -> bool {
        self.gt.is_none_or(|b| value > b)
            && self.ge.is_none_or(|b| value >= b)
            && self.lt.is_none_or(|b| value < b)
            && self.le.is_none_or(|b| value <= b)
    }
}

/// Parses a value bound: a finite decimal number (`90`, `-1.5`, `2e3`); `NaN` and infinities
/// are refused.
fn parse_bound(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{text:?} must be a finite number")),
    }
}

/// An analytics query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// The metric, or several, comma-separated (`usage_user,usage_system`): the query then
    /// covers the points of all of them (`group_by=metric` keeps them apart).
    pub metric: String,
    /// Inclusive start; unbounded when `None`.
    pub from: Option<Timestamp>,
    /// Exclusive end; unbounded when `None`.
    pub to: Option<Timestamp>,
    /// Bucket width in microseconds.
    pub window_micros: Option<i64>,
    /// Sliding windows of `window` advancing by `step` instead of tumbling buckets.
    pub rolling: bool,
    /// Step of rolling windows in microseconds (default: see [`Query::step_micros`]).
    pub step_micros: Option<i64>,
    /// All filters must hold (AND); a filter holds when the tag matches any of its patterns.
    pub filters: Vec<TagFilter>,
    /// Bounds on point values (`value_gt`, ...), applied before aggregation.
    pub values: ValueFilter,
    pub aggs: Vec<Agg>,
    pub group_by: Vec<String>,
    pub order_by: Option<OrderBy>,
    pub limit: Option<usize>,
    /// When false, a partial answer is an error instead.
    pub allow_partial: bool,
    pub consistency: Consistency,
}

/// The values of the `group_by` tags of one group, in `group_by` order (`None`: tag absent).
pub type GroupKey = Vec<Option<String>>;

/// Aggregations computed when a query names none (the API reference's example response).
pub const DEFAULT_AGGS: [Agg; 5] = [Agg::Avg, Agg::Min, Agg::Max, Agg::Count, Agg::P95];

impl Query {
    /// A query over all points of `metric` with the default aggregations.
    pub fn new(metric: impl Into<String>) -> Self {
        Query {
            metric: metric.into(),
            from: None,
            to: None,
            window_micros: None,
            rolling: false,
            step_micros: None,
            filters: Vec::new(),
            values: ValueFilter::default(),
            aggs: DEFAULT_AGGS.to_vec(),
            group_by: Vec::new(),
            order_by: None,
            limit: None,
            allow_partial: true,
            consistency: Consistency::Eventual,
        }
    }

    /// Parses URL query parameters (already percent-decoded). List parameters (`tags`,
    /// `hosts`, `datacenters`, `agg`, `group_by`) take comma-separated values and may repeat;
    /// the others may appear once. Unknown parameters are refused, so typos do not silently
    /// change an answer. Every bad parameter is reported.
    pub fn from_params<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> Result<Query> {
        let mut q = Query::new("");
        let mut errors = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        let mut metric = None;
        let mut aggs: Vec<Agg> = Vec::new();
        let mut window_text = None;
        let mut step_text = None;
        let mut order_text = None;
        for (key, value) in params {
            let (key, value) = (key.as_ref(), value.as_ref());
            let is_list = matches!(key, "tags" | "hosts" | "datacenters" | "agg" | "group_by");
            if !is_list {
                if seen.contains(&key) {
                    errors.push(FieldError::new(key, "must be given at most once"));
                    continue;
                }
                seen.push(key);
            }
            let items = || value.split(',').map(str::trim).filter(|s| !s.is_empty());
            match key {
                "metric" | "key" => metric = Some(value.to_string()),
                "from" => match Timestamp::parse(value) {
                    Ok(t) => q.from = Some(t),
                    Err(e) => errors.push(FieldError::new("from", e)),
                },
                "to" => match Timestamp::parse(value) {
                    Ok(t) => q.to = Some(t),
                    Err(e) => errors.push(FieldError::new("to", e)),
                },
                "window" => window_text = Some(value),
                "step" => step_text = Some(value),
                "rolling" => match parse_bool(value) {
                    Some(b) => q.rolling = b,
                    None => errors.push(FieldError::new("rolling", "must be true or false")),
                },
                "allow_partial" => match parse_bool(value) {
                    Some(b) => q.allow_partial = b,
                    None => errors.push(FieldError::new("allow_partial", "must be true or false")),
                },
                "consistency" => match value {
                    "eventual" => q.consistency = Consistency::Eventual,
                    "strong" => q.consistency = Consistency::Strong,
                    _ => errors.push(FieldError::new("consistency", "must be eventual or strong")),
                },
                "tags" => {
                    for item in items() {
                        match item.split_once(':') {
                            Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                                q.add_filter(k, v);
                            }
                            _ => errors.push(FieldError::new(
                                "tags",
                                format!("{item:?} must have the form key:value"),
                            )),
                        }
                    }
                }
                "hosts" => items().for_each(|h| q.add_filter("host", h)),
                "datacenters" => items().for_each(|d| q.add_filter("datacenter", d)),
                "agg" => {
                    for item in items() {
                        match item.parse::<Agg>() {
                            Ok(a) if !aggs.contains(&a) => aggs.push(a),
                            Ok(_) => {}
                            Err(e) => errors.push(FieldError::new("agg", format!("{item:?} {e}"))),
                        }
                    }
                }
                "group_by" => {
                    for item in items() {
                        if !q.group_by.iter().any(|g| g == item) {
                            q.group_by.push(item.to_string());
                        }
                    }
                }
                "order_by" => order_text = Some(value),
                "value_gt" | "value_ge" | "value_lt" | "value_le" => match parse_bound(value) {
                    Ok(v) => {
                        if let Some(bound) = q.values.bound_mut(key) {
                            *bound = Some(v);
                        }
                    }
                    Err(e) => errors.push(FieldError::new(key, e)),
                },
                "limit" => match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = Some(n),
                    _ => errors.push(FieldError::new(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    )),
                },
                other => errors.push(FieldError::new(other, "unknown parameter")),
            }
        }
        match metric {
            Some(m) => q.metric = m,
            None => errors.push(FieldError::new("metric", "is required")),
        }
        if !aggs.is_empty() {
            q.aggs = aggs;
        }
        if let Some(text) = window_text {
            match parse_duration_micros(text) {
                Ok(w) => q.window_micros = Some(w),
                Err(e) => errors.push(FieldError::new("window", e)),
            }
        }
        if let Some(text) = step_text {
            match parse_duration_micros(text) {
                Ok(s) => q.step_micros = Some(s),
                Err(e) => errors.push(FieldError::new("step", e)),
            }
        }
        if let Some(text) = order_text {
            match parse_order_by(text, &q.aggs) {
                Ok(o) => q.order_by = Some(o),
                Err(e) => errors.push(FieldError::new("order_by", e)),
            }
        }
        if errors.is_empty() {
            q.validate()?;
            Ok(q)
        } else {
            // Report the cross-field rules too, for the fields that parsed.
            if let Err(Error::Validation(more)) = q.validate() {
                let new: Vec<FieldError> = more
                    .into_iter()
                    .filter(|m| !errors.iter().any(|e| e.field == m.field))
                    .collect();
                errors.extend(new);
            }
            Err(Error::Validation(errors))
        }
    }

    /// The URL parameters of this query: the inverse of [`Query::from_params`], so that
    /// `Query::from_params(&q.to_params())` gives back `q` for every query `from_params` can
    /// produce. Only parameters that differ from their defaults are emitted (`metric` always
    /// is), in a fixed order; values are not percent-encoded.
    ///
    /// Filters on `host` and `datacenter` are written as `hosts=` and `datacenters=`, every
    /// other filter as `tags=key:pattern`, one parameter per filter in filter order. Some
    /// queries built by hand have no parameter form and do not survive the round trip:
    /// durations that are not whole seconds, duplicate aggregations or `group_by` keys,
    /// filters without patterns, patterns containing a comma or surrounded by whitespace, and
    /// tag keys containing `:`.
    ///
    /// ```
    /// use raftmetrics_types::{Agg, Query};
    ///
    /// let mut q = Query::new("cpu_usage");
    /// q.aggs = vec![Agg::Avg, Agg::Percentile(9990)];
    /// q.group_by = vec!["datacenter".into()];
    /// assert_eq!(
    ///     q.to_params(),
    ///     [("metric", "cpu_usage"), ("agg", "avg,p99.9"), ("group_by", "datacenter")]
    ///         .map(|(k, v)| (k.to_string(), v.to_string()))
    /// );
    /// assert_eq!(Query::from_params(&q.to_params())?, q);
    /// # Ok::<(), raftmetrics_types::Error>(())
    /// ```
    pub fn to_params(&self) -> Vec<(String, String)> {
        let mut params = vec![("metric".to_string(), self.metric.clone())];
        let mut push = |key: &str, value: String| params.push((key.to_string(), value));
        if let Some(from) = self.from {
            push("from", from.to_rfc3339());
        }
        if let Some(to) = self.to {
            push("to", to.to_rfc3339());
        }
        if let Some(window) = self.window_micros {
            push("window", format_duration_micros(window));
        }
        if self.rolling {
            push("rolling", "true".to_string());
        }
        if let Some(step) = self.step_micros {
            push("step", format_duration_micros(step));
        }
        for filter in self.filters.iter().filter(|f| !f.patterns.is_empty()) {
            match filter.key.as_str() {
                "host" => push("hosts", filter.patterns.join(",")),
                "datacenter" => push("datacenters", filter.patterns.join(",")),
                key => push(
                    "tags",
                    filter
                        .patterns
                        .iter()
                        .map(|p| format!("{key}:{p}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            }
        }
        if self.aggs != DEFAULT_AGGS {
            push("agg", join(&self.aggs));
        }
        if !self.group_by.is_empty() {
            push("group_by", self.group_by.join(","));
        }
        for (name, bound) in ValueFilter::PARAMS.into_iter().zip(self.values.bounds()) {
            if let Some(v) = bound {
                push(name, v.to_string());
            }
        }
        if let Some(order) = self.order_by {
            let key = match order.key {
                OrderKey::Agg(agg) => agg.to_string(),
                OrderKey::Key => "key".to_string(),
            };
            let dir = if order.descending { "desc" } else { "asc" };
            push("order_by", format!("{key}:{dir}"));
        }
        if let Some(limit) = self.limit {
            push("limit", limit.to_string());
        }
        if !self.allow_partial {
            push("allow_partial", "false".to_string());
        }
        if self.consistency == Consistency::Strong {
            push("consistency", "strong".to_string());
        }
        params
    }

    fn add_filter(&mut self, key: &str, pattern: &str) {
        match self.filters.iter_mut().find(|f| f.key == key) {
            Some(f) => f.patterns.push(pattern.to_string()),
            None => self.filters.push(TagFilter {
                key: key.to_string(),
                patterns: vec![pattern.to_string()],
            }),
        }
    }

    /// Checks the rules that involve several fields; every violation is reported.
    pub fn validate(&self) -> Result<()> {
        let mut errors = Vec::new();
        let names: Vec<&str> = self.metric.split(',').collect();
        if names.len() > MAX_METRICS {
            errors.push(FieldError::new(
                "metric",
                format!("at most {MAX_METRICS} metrics"),
            ));
        } else if let Some(e) = names.iter().find_map(|m| check_metric_name(m).err()) {
            errors.push(FieldError::new("metric", e));
        } else if names.len() != self.metrics().len() {
            errors.push(FieldError::new("metric", "names a metric twice"));
        }
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from >= to
        {
            errors.push(FieldError::new("to", "must be after from"));
        }
        if self.aggs.is_empty() {
            errors.push(FieldError::new("agg", "must name at least one aggregation"));
        }
        if self.group_by.len() > MAX_GROUP_BY {
            errors.push(FieldError::new(
                "group_by",
                format!("at most {MAX_GROUP_BY} keys"),
            ));
        }
        let filter_count: usize = self.filters.iter().map(|f| f.patterns.len()).sum();
        if filter_count > MAX_FILTERS {
            errors.push(FieldError::new(
                "tags",
                format!("at most {MAX_FILTERS} filter values"),
            ));
        }
        if self
            .filters
            .iter()
            .any(|f| f.patterns.iter().any(|p| p.len() > MAX_PATTERN_BYTES))
        {
            errors.push(FieldError::new(
                "tags",
                format!("filter patterns may be at most {MAX_PATTERN_BYTES} bytes"),
            ));
        }
        for (name, bound) in ValueFilter::PARAMS.into_iter().zip(self.values.bounds()) {
            if bound.is_some_and(|v| !v.is_finite()) {
                errors.push(FieldError::new(name, "must be a finite number"));
            }
        }
        if let Some(OrderBy {
            key: OrderKey::Agg(a),
            ..
        }) = self.order_by
            && !self.aggs.contains(&a)
        {
            errors.push(FieldError::new("order_by", format!("{a} is not in agg")));
        }
        if self.window_micros.is_some_and(|w| w < MICROS_PER_SECOND) {
            errors.push(FieldError::new("window", "must be at least 1s"));
        }
        if self.rolling {
            match (self.window_micros, self.step_micros()) {
                (None, _) => errors.push(FieldError::new("rolling", "needs a window")),
                (Some(w), Some(s)) if w % s != 0 || w / s > MAX_ROLLING_SPAN => {
                    errors.push(FieldError::new(
                        "step",
                        format!("must divide window, at most {MAX_ROLLING_SPAN} steps per window"),
                    ));
                }
                _ => {}
            }
        } else if self.step_micros.is_some() {
            errors.push(FieldError::new("step", "only applies with rolling=true"));
        }
        if let (Some(width), Some(from), Some(to)) = (self.bucket_micros(), self.from, self.to) {
            let span = (to.as_micros() as i128 - from.as_micros() as i128) / width as i128;
            if span > MAX_BUCKETS as i128 {
                errors.push(FieldError::new(
                    "window",
                    format!("from..to holds more than {MAX_BUCKETS} buckets"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(errors))
        }
    }

    /// Step of rolling windows: as given, or 1m when the window is a whole number of minutes
    /// above 1m, or 1s otherwise.
    pub fn step_micros(&self) -> Option<i64> {
        let window = self.window_micros?;
        Some(self.step_micros.unwrap_or({
            let minute = 60 * MICROS_PER_SECOND;
            if window > minute && window % minute == 0 {
                minute
            } else {
                MICROS_PER_SECOND
            }
        }))
    }

    /// Width of the buckets a store computes: the step for rolling windows, the window for
    /// tumbling ones, `None` without a window.
    pub fn bucket_micros(&self) -> Option<i64> {
        if self.rolling {
            self.step_micros()
        } else {
            self.window_micros
        }
    }

    /// `[from, to)` in microseconds, open ends made explicit.
    pub fn time_range_micros(&self) -> (i64, i64) {
        (
            self.from.unwrap_or(Timestamp::MIN).as_micros(),
            self.to.unwrap_or(Timestamp::MAX).as_micros(),
        )
    }

    /// Whether percentiles are asked for (stores then also compute sketches).
    pub fn needs_sketch(&self) -> bool {
        self.aggs.iter().any(|a| a.is_percentile())
    }

    /// Whether a store computes the latest point of each row (`last`).
    pub fn needs_last(&self) -> bool {
        self.aggs.contains(&Agg::Last)
    }

    /// Whether a store computes the earliest point of each row (`first`).
    pub fn needs_first(&self) -> bool {
        self.aggs.contains(&Agg::First)
    }

    /// Keeps only points whose value is above `bound` (`value_gt`).
    pub fn value_gt(mut self, bound: f64) -> Self {
        self.values.gt = Some(bound);
        self
    }

    /// Keeps only points whose value is at least `bound` (`value_ge`).
    pub fn value_ge(mut self, bound: f64) -> Self {
        self.values.ge = Some(bound);
        self
    }

    /// Keeps only points whose value is below `bound` (`value_lt`).
    pub fn value_lt(mut self, bound: f64) -> Self {
        self.values.lt = Some(bound);
        self
    }

    /// Keeps only points whose value is at most `bound` (`value_le`).
    pub fn value_le(mut self, bound: f64) -> Self {
        self.values.le = Some(bound);
        self
    }

    /// Whether a store computes the minimum and maximum: asked for, or a percentile is,
    /// since a percentile is kept within `[min, max]` of its values
    /// ([`crate::aggregate::PartialState::value`]) whatever else the query asks.
    pub fn needs_extremes(&self) -> bool {
        self.needs_sketch() || self.aggs.iter().any(|a| matches!(a, Agg::Min | Agg::Max))
    }

    /// The metrics the query covers, each once, in the order named.
    pub fn metrics(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for m in self.metric.split(',') {
            if !names.contains(&m) {
                names.push(m);
            }
        }
        names
    }

    /// Whether a series (metric and tags) is selected by this query's metrics and filters.
    /// Filter patterns are matched as literal text except for `*`; they never reach SQL.
    pub fn matches(&self, metric: &str, tags: &Tags) -> bool {
        self.metric.split(',').any(|m| m == metric) && filters_match(&self.filters, tags)
    }

    /// The group a series (metric and tags) belongs to; the key `metric` stands for the
    /// metric name.
    pub fn group_key(&self, metric: &str, tags: &Tags) -> GroupKey {
        self.group_by
            .iter()
            .map(|k| {
                if k == METRIC_GROUP_KEY {
                    Some(metric.to_string())
                } else {
                    tags.get(k).cloned()
                }
            })
            .collect()
    }
}

/// Whether `tags` satisfy every filter (AND): each filter's tag is present and matches one
/// of its patterns ([`wildcard_match`]). Patterns never reach SQL.
pub fn filters_match(filters: &[TagFilter], tags: &Tags) -> bool {
    filters.iter().all(|f| {
        tags.get(&f.key)
            .is_some_and(|v| f.patterns.iter().any(|p| wildcard_match(p, v)))
    })
}

fn join(aggs: &[Agg]) -> String {
    aggs.iter()
        .map(Agg::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn parse_order_by(text: &str, aggs: &[Agg]) -> Result<OrderBy, String> {
    let (name, dir) = text.split_once(':').unwrap_or((text, "asc"));
    let descending = match dir {
        "asc" => false,
        "desc" => true,
        _ => return Err("direction must be asc or desc".to_string()),
    };
    let key = match name {
        "value" => OrderKey::Agg(*aggs.first().ok_or("agg is empty")?),
        "key" | "time" => OrderKey::Key,
        other => OrderKey::Agg(other.parse().map_err(|_| {
            "must be value, key, or an aggregation, then :asc or :desc".to_string()
        })?),
    };
    Ok(OrderBy { key, descending })
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters and every
/// other character stands for itself. Greedy with one backtrack point: at most
/// `pattern.len() * text.len()` steps, and both are bounded (tag values by
/// [`crate::model::Limits`], patterns by [`MAX_PATTERN_BYTES`]).
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(params: &[(&str, &str)]) -> Result<Query> {
        Query::from_params(params)
    }

    fn bad_fields(params: &[(&str, &str)]) -> Vec<String> {
        match parse(params) {
            Err(Error::Validation(f)) => f.into_iter().map(|f| f.field).collect(),
            other => panic!("expected validation error, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_seed_examples() {
        let q = parse(&[
            ("metric", "cpu_usage"),
            ("window", "1h"),
            ("rolling", "true"),
        ])
        .unwrap();
        assert_eq!(q.window_micros, Some(3_600 * MICROS_PER_SECOND));
        assert_eq!(q.step_micros(), Some(60 * MICROS_PER_SECOND));
        assert_eq!(q.bucket_micros(), Some(60 * MICROS_PER_SECOND));
        let q = parse(&[
            ("metric", "cpu_usage"),
            ("from", "2024-01-20T00:00:00Z"),
            ("to", "2024-01-20T23:59:59Z"),
        ])
        .unwrap();
        assert!(q.from.is_some() && q.to.is_some());
        assert_eq!(q.aggs, DEFAULT_AGGS.to_vec());
        let q = parse(&[("metric", "cpu_usage"), ("datacenters", "us-west,us-east")]).unwrap();
        assert_eq!(q.filters[0].key, "datacenter");
        assert_eq!(q.filters[0].patterns, vec!["us-west", "us-east"]);
        let q = parse(&[
            ("metric", "cpu_usage"),
            ("tags", "environment:prod,service:api"),
        ])
        .unwrap();
        assert_eq!(q.filters.len(), 2);
        let q = parse(&[("metric", "cpu_usage"), ("hosts", "web-*,api-*")]).unwrap();
        assert_eq!(q.filters[0].patterns, vec!["web-*", "api-*"]);
        let q = parse(&[("metric", "cpu_usage"), ("agg", "avg,max,p95")]).unwrap();
        assert_eq!(q.aggs, vec![Agg::Avg, Agg::Max, Agg::P95]);
        let q = parse(&[("metric", "cpu_usage"), ("group_by", "datacenter,host")]).unwrap();
        assert_eq!(q.group_by, vec!["datacenter", "host"]);
        let q = parse(&[
            ("metric", "cpu_usage"),
            ("group_by", "host"),
            ("order_by", "value:desc"),
            ("limit", "10"),
        ])
        .unwrap();
        assert_eq!(
            q.order_by,
            Some(OrderBy {
                key: OrderKey::Agg(Agg::Avg),
                descending: true
            })
        );
        assert_eq!(q.limit, Some(10));
    }

    #[test]
    fn reports_every_bad_parameter() {
        let fields = bad_fields(&[
            ("metric", "cpu usage"),
            ("from", "yesterday"),
            ("window", "7x"),
            ("agg", "median"),
            ("limit", "0"),
            ("colour", "blue"),
        ]);
        assert_eq!(
            fields,
            vec!["from", "agg", "limit", "colour", "window", "metric"]
        );
        assert_eq!(bad_fields(&[("window", "1h")]), vec!["metric"]);
        assert_eq!(
            bad_fields(&[("metric", "m"), ("metric", "n")]),
            vec!["metric"]
        );
        assert_eq!(
            bad_fields(&[
                ("metric", "m"),
                ("from", "2024-01-02"),
                ("to", "2024-01-01")
            ]),
            vec!["to"]
        );
        assert_eq!(
            bad_fields(&[("metric", "m"), ("rolling", "true")]),
            vec!["rolling"]
        );
        assert_eq!(
            bad_fields(&[
                ("metric", "m"),
                ("window", "1h"),
                ("rolling", "true"),
                ("step", "7m")
            ]),
            vec!["step"]
        );
        assert_eq!(
            bad_fields(&[("metric", "m"), ("agg", "avg"), ("order_by", "max:desc")]),
            vec!["order_by"]
        );
        assert_eq!(
            bad_fields(&[
                ("metric", "m"),
                ("window", "1s"),
                ("from", "2000-01-01"),
                ("to", "2024-01-01")
            ]),
            vec!["window"]
        );
    }

    #[test]
    fn agg_names_round_trip() {
        for name in [
            "avg", "min", "max", "sum", "count", "last", "first", "p0", "p50", "p95", "p99",
            "p99.9", "p99.99", "p100",
        ] {
            let agg: Agg = name.parse().unwrap();
            assert_eq!(agg.to_string(), name);
        }
        assert_eq!("p99.9".parse::<Agg>().unwrap().quantile(), Some(0.999));
        for bad in [
            "p", "p101", "p-1", "p9.", "p.5", "p99.999", "P50", "mean", "p1e2", "Last", "latest",
        ] {
            assert!(bad.parse::<Agg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn value_bounds_parse_and_bad_ones_are_each_reported() {
        let q = parse(&[
            ("metric", "usage_user"),
            ("agg", "count,last,first"),
            ("value_gt", "90"),
            ("value_le", "-1.5e2"),
            ("order_by", "last:desc"),
        ])
        .unwrap();
        assert_eq!(
            q.values,
            ValueFilter {
                gt: Some(90.0),
                le: Some(-150.0),
                ..ValueFilter::default()
            }
        );
        assert_eq!(q.aggs, vec![Agg::Count, Agg::Last, Agg::First]);
        assert_eq!(
            q.order_by,
            Some(OrderBy {
                key: OrderKey::Agg(Agg::Last),
                descending: true
            })
        );
        let at_most = ValueFilter {
            le: Some(-150.0),
            ..ValueFilter::default()
        };
        assert!(at_most.matches(-150.0) && !at_most.matches(-149.0));
        let above = ValueFilter {
            gt: Some(90.0),
            ..ValueFilter::default()
        };
        assert!(above.matches(90.5) && !above.matches(90.0));
        assert_eq!(
            bad_fields(&[
                ("metric", "m"),
                ("value_gt", "abc"),
                ("value_ge", "NaN"),
                ("value_lt", "inf"),
                ("value_le", "-infinity"),
            ]),
            vec!["value_gt", "value_ge", "value_lt", "value_le"]
        );
        assert_eq!(
            bad_fields(&[("metric", "m"), ("value_gt", "1"), ("value_gt", "2")]),
            vec!["value_gt"]
        );
        assert_eq!(
            bad_fields(&[("metric", "m"), ("value_lt", ""), ("value_ge", "1e400")]),
            vec!["value_lt", "value_ge"]
        );
        assert_eq!(
            bad_fields(&[("metric", "m"), ("agg", "last"), ("order_by", "first")]),
            vec!["order_by"]
        );
        // An empty range is a query over no points, not an error.
        let q = parse(&[("metric", "m"), ("value_gt", "5"), ("value_lt", "3")]).unwrap();
        assert!(!(-10..10).any(|v| q.values.matches(f64::from(v))));
        // A hand-built query with a bound that is not finite is refused too.
        let q = Query::new("m").value_ge(f64::NAN).value_lt(f64::INFINITY);
        match q.validate() {
            Err(Error::Validation(f)) => assert_eq!(
                f.into_iter().map(|f| f.field).collect::<Vec<_>>(),
                vec!["value_ge", "value_lt"]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_query_may_name_several_metrics() {
        let q = parse(&[("metric", "cpu,mem"), ("group_by", "metric,host")]).unwrap();
        assert_eq!(q.metrics(), ["cpu", "mem"]);
        let tags: Tags = [("host".to_string(), "web-1".to_string())].into();
        assert!(q.matches("mem", &tags) && !q.matches("disk", &tags));
        assert_eq!(
            q.group_key("mem", &tags),
            vec![Some("mem".to_string()), Some("web-1".to_string())]
        );
        assert_eq!(bad_fields(&[("metric", "cpu,cpu")]), vec!["metric"]);
        assert_eq!(bad_fields(&[("metric", "cpu,,mem")]), vec!["metric"]);
        assert_eq!(bad_fields(&[("metric", "cpu,bad name")]), vec!["metric"]);
        let many = (0..=MAX_METRICS)
            .map(|i| format!("m{i}"))
            .collect::<Vec<_>>();
        assert_eq!(bad_fields(&[("metric", &many.join(","))]), vec!["metric"]);
    }

    #[test]
    fn wildcards_are_literal_but_for_star() {
        assert!(wildcard_match("web-*", "web-01"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXbYY"));
        assert!(wildcard_match("web-?", "web-?"));
        assert!(!wildcard_match("web-?", "web-1"));
        assert!(!wildcard_match("web-%", "web-1"));
        assert!(!wildcard_match("web-_", "web-1"));
        assert!(wildcard_match("x' OR 1=1--", "x' OR 1=1--"));
        assert!(!wildcard_match("x' OR 1=1--", "web-1"));
        let long = "a".repeat(10_000);
        assert!(!wildcard_match(&format!("{}b", "*a".repeat(50)), &long));
    }

    #[test]
    fn filters_and_groups() {
        let q = parse(&[
            ("metric", "cpu"),
            ("hosts", "web-*"),
            ("datacenters", "us-west"),
            ("group_by", "host,rack"),
        ])
        .unwrap();
        let tags: Tags = [("host", "web-1"), ("datacenter", "us-west")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(q.matches("cpu", &tags));
        assert!(!q.matches("mem", &tags));
        let mut other = tags.clone();
        other.insert("datacenter".into(), "us-east".into());
        assert!(!q.matches("cpu", &other));
        other.remove("datacenter");
        assert!(!q.matches("cpu", &other));
        assert_eq!(
            q.group_key("cpu", &tags),
            vec![Some("web-1".to_string()), None]
        );
    }

    fn round_trip(q: &Query) {
        let params = q.to_params();
        assert_eq!(Query::from_params(&params).unwrap(), *q, "{params:?}");
    }

    #[test]
    fn to_params_inverts_from_params() {
        let q = Query::new("cpu_usage");
        assert_eq!(
            q.to_params(),
            vec![("metric".to_string(), "cpu_usage".to_string())]
        );
        round_trip(&q);
        let cases: &[&[(&str, &str)]] = &[
            &[
                ("metric", "cpu_usage"),
                ("window", "1h"),
                ("rolling", "true"),
            ],
            &[
                ("metric", "cpu_usage"),
                ("window", "90m"),
                ("rolling", "true"),
                ("step", "30s"),
                ("from", "2024-01-20T00:00:00.000123Z"),
                ("to", "2024-01-21"),
            ],
            &[("metric", "m"), ("window", "10s"), ("order_by", "key:desc")],
            &[
                ("metric", "cpu.usage-1"),
                ("hosts", "web-*,api-?"),
                ("tags", "env:prod,service:a*b,env:st%ging,weird:x:y"),
                ("datacenters", "us-*"),
                ("tags", "host:db-1,note:a b&c=d"),
            ],
            &[
                ("metric", "m"),
                ("agg", "p99.9,avg,p50,count,p99.99,p0,p100"),
                ("order_by", "p99.9:desc"),
                ("group_by", "datacenter,host"),
                ("limit", "10"),
            ],
            &[
                ("metric", "m"),
                ("agg", "max,min"),
                ("order_by", "value"),
                ("consistency", "strong"),
                ("allow_partial", "false"),
            ],
            &[("metric", "m"), ("agg", "p95,count,max,min,avg")],
            &[
                ("metric", "m"),
                ("agg", "last,first,count"),
                ("order_by", "last:desc"),
                ("value_gt", "90"),
                ("value_ge", "-0.25"),
                ("value_lt", "1e300"),
                ("value_le", "0.1"),
            ],
            &[("metric", "m"), ("value_le", "-3"), ("group_by", "host")],
            &[
                ("metric", "m"),
                ("consistency", "eventual"),
                ("allow_partial", "true"),
                ("rolling", "false"),
            ],
        ];
        for params in cases {
            round_trip(&Query::from_params(params).unwrap());
        }
        let q = Query::from_params(&[
            ("metric", "m"),
            ("agg", "avg"),
            ("order_by", "value"),
            ("consistency", "strong"),
            ("allow_partial", "false"),
            ("tags", "datacenter:us-*,env:prod"),
            ("hosts", "web-*"),
        ])
        .unwrap();
        let expected: Vec<(String, String)> = [
            ("metric", "m"),
            ("datacenters", "us-*"),
            ("tags", "env:prod"),
            ("hosts", "web-*"),
            ("agg", "avg"),
            ("order_by", "avg:asc"),
            ("allow_partial", "false"),
            ("consistency", "strong"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(q.to_params(), expected);
    }

    mod to_params_props {
        use proptest::prelude::*;

        use super::super::*;

        fn agg() -> impl Strategy<Value = Agg> {
            prop_oneof![
                Just(Agg::Avg),
                Just(Agg::Min),
                Just(Agg::Max),
                Just(Agg::Sum),
                Just(Agg::Count),
                Just(Agg::Last),
                Just(Agg::First),
                (0u16..=10_000).prop_map(Agg::Percentile),
            ]
        }

        fn duration() -> impl Strategy<Value = i64> {
            prop_oneof![
                (1i64..=120).prop_map(|s| s * MICROS_PER_SECOND),
                (1i64..=48).prop_map(|h| h * 3_600 * MICROS_PER_SECOND),
                Just(7 * 86_400 * MICROS_PER_SECOND),
            ]
        }

        fn timestamp() -> impl Strategy<Value = Timestamp> {
            // 1970 to 2100, to the microsecond.
            (0i64..4_102_444_800_000_000).prop_map(Timestamp::from_micros)
        }

        fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
            let mut out = Vec::new();
            for item in items {
                if !out.contains(&item) {
                    out.push(item);
                }
            }
            out
        }

        prop_compose! {
            fn query()(
                metric in "[a-zA-Z0-9_.-]{1,20}",
                from in proptest::option::of(timestamp()),
                // Up to a day after `from`, so that even 1s windows stay under MAX_BUCKETS.
                to_after in proptest::option::of(1i64..=86_400 * MICROS_PER_SECOND),
                window in proptest::option::of(duration()),
                rolling in any::<bool>(),
                step in proptest::option::of(prop_oneof![Just(1i64), Just(60), Just(300)]),
                filters in proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("host".to_string()),
                            Just("datacenter".to_string()),
                            "[a-z_.-]{1,8}",
                        ],
                        proptest::collection::vec("[a-z0-9*?%_'\\-][a-z0-9*?%_ :'\\-]{0,8}[a-z0-9*?%_'\\-]|[a-z*]", 1..4),
                    ),
                    0..4,
                ),
                aggs in proptest::collection::vec(agg(), 1..6),
                group_by in proptest::collection::vec("[a-z_]{1,8}", 0..4),
                order in proptest::option::of((any::<bool>(), any::<prop::sample::Index>(), any::<bool>())),
                limit in proptest::option::of(1usize..=MAX_LIMIT),
                allow_partial in any::<bool>(),
                strong in any::<bool>(),
                values in proptest::array::uniform4(proptest::option::of(prop_oneof![
                    -1e6..1e6f64,
                    any::<f64>().prop_filter("finite", |v| v.is_finite()),
                    Just(0.0),
                ])),
            ) -> Query {
                let aggs = dedup(aggs);
                let mut q = Query::new(metric);
                q.from = from;
                q.to = to_after.map(|after| {
                    let base = from.unwrap_or(Timestamp::from_micros(1_705_708_800_000_000));
                    Timestamp::from_micros(base.as_micros() + after)
                });
                q.window_micros = window;
                q.rolling = rolling && window.is_some();
                q.step_micros = step.filter(|_| q.rolling).map(|s| s * MICROS_PER_SECOND);
                for (key, patterns) in filters {
                    for p in patterns {
                        q.add_filter(&key, &p);
                    }
                }
                q.order_by = order.map(|(by_key, i, descending)| OrderBy {
                    key: if by_key { OrderKey::Key } else { OrderKey::Agg(*i.get(&aggs)) },
                    descending,
                });
                q.aggs = aggs;
                q.group_by = dedup(group_by);
                q.limit = limit;
                q.allow_partial = allow_partial;
                q.consistency = if strong { Consistency::Strong } else { Consistency::Eventual };
                let [gt, ge, lt, le] = values;
                q.values = ValueFilter { gt, ge, lt, le };
                q
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn from_params_of_to_params_is_identity(q in query()) {
                prop_assume!(q.validate().is_ok());
                let params = q.to_params();
                prop_assert_eq!(Query::from_params(&params).unwrap(), q, "{:?}", params);
            }
        }
    }
}
