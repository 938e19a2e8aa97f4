//! The data model and its validation: the one place that decides what a valid point is.
//!
//! Every codec (JSON, bincode, the embedded API) turns its input into [`Point`]s and calls
//! [`validate_batch`]; only the [`Record`]s it returns reach a partition or a store. A batch
//! with one bad point is refused whole, and the error names every bad field with the point's
//! index (`points[3].metric`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, FieldError, Result};
use crate::time::{MICROS_PER_SECOND, Timestamp};

/// Tag set of a point: sorted, so equal sets compare and hash equally.
pub type Tags = BTreeMap<String, String>;

/// A metric point as clients send it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Metric name, `^[a-zA-Z0-9_.-]{1,255}$`.
    pub metric: String,
    /// The measurement; must be finite.
    pub value: f64,
    /// When it was measured; the receiving node's clock if absent.
    pub timestamp: Option<Timestamp>,
    /// Dimensions such as `host` and `datacenter`.
    pub tags: Tags,
    /// Routes the point to a partition; defaults to the series identity (metric + tags).
    pub partition_key: Option<String>,
}

impl Point {
    /// A point with no tags, no timestamp and the default partition key.
    pub fn new(metric: impl Into<String>, value: f64) -> Self {
        Point {
            metric: metric.into(),
            value,
            timestamp: None,
            tags: Tags::new(),
            partition_key: None,
        }
    }

    pub fn at(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }
}

/// A validated point with its timestamp resolved and its partition key decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub metric: String,
    pub tags: Tags,
    pub timestamp: Timestamp,
    pub value: f64,
    pub partition_key: String,
}

/// The identity of a series as a partition key: the metric and its sorted tags, separated by
/// ASCII unit/record separators (which tags may not contain, so the encoding is unambiguous).
pub fn series_partition_key(metric: &str, tags: &Tags) -> String {
    let mut key = String::with_capacity(metric.len() + tags.len() * 16);
    key.push_str(metric);
    for (k, v) in tags {
        key.push('\u{1e}');
        key.push_str(k);
        key.push('\u{1f}');
        key.push_str(v);
    }
    key
}

/// Bounds on what a point and a batch may hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Most points in one batch.
    pub max_batch_points: usize,
    /// Most tags on one point.
    pub max_tags: usize,
    /// Longest tag key, in bytes.
    pub max_tag_key_bytes: usize,
    /// Longest tag value, in bytes.
    pub max_tag_value_bytes: usize,
    /// Longest partition key, in bytes.
    pub max_partition_key_bytes: usize,
    /// How far past the receiving node's clock a timestamp may lie, in seconds.
    pub max_future_skew_secs: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_points: 100_000,
            max_tags: 32,
            max_tag_key_bytes: 128,
            max_tag_value_bytes: 256,
            max_partition_key_bytes: 255,
            max_future_skew_secs: 600,
        }
    }
}

/// Longest metric name, in bytes.
pub const MAX_METRIC_BYTES: usize = 255;

/// `^[a-zA-Z0-9_.-]{1,255}$`: the rule for metric names.
pub fn is_valid_metric_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_METRIC_BYTES && name.bytes().all(is_name_byte)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Checks a metric name, returning the seed's constraint text on failure.
pub fn check_metric_name(name: &str) -> std::result::Result<(), String> {
    if is_valid_metric_name(name) {
        Ok(())
    } else {
        Err("must match pattern ^[a-zA-Z0-9_.-]{1,255}$".to_string())
    }
}

fn has_control_char(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn check_tag_key(key: &str, limits: &Limits) -> std::result::Result<(), String> {
    if key.is_empty() || key.len() > limits.max_tag_key_bytes || !key.bytes().all(is_name_byte) {
        return Err(format!(
            "tag keys must match ^[a-zA-Z0-9_.-]{{1,{}}}$",
            limits.max_tag_key_bytes
        ));
    }
    Ok(())
}

fn check_text(text: &str, max_bytes: usize, what: &str) -> std::result::Result<(), String> {
    if text.is_empty() || text.len() > max_bytes {
        return Err(format!("{what} must be 1 to {max_bytes} bytes"));
    }
    if has_control_char(text) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}

/// Validates a batch and resolves it into records. Points without a timestamp get `now`.
///
/// Either every point is valid and all records are returned in order, or nothing is
/// returned and the error lists every bad field of every bad point.
pub fn validate_batch(points: Vec<Point>, now: Timestamp, limits: &Limits) -> Result<Vec<Record>> {
    if points.is_empty() {
        return Err(Error::field(
            "points",
            "a batch must hold at least one point",
        ));
    }
    if points.len() > limits.max_batch_points {
        return Err(Error::field(
            "points",
            format!(
                "a batch may hold at most {} points",
                limits.max_batch_points
            ),
        ));
    }
    let latest = now.as_micros().saturating_add(
        limits
            .max_future_skew_secs
            .saturating_mul(MICROS_PER_SECOND),
    );
    let mut errors = Vec::new();
    let mut records = Vec::with_capacity(points.len());
    for (i, point) in points.into_iter().enumerate() {
        let field = |name: &str| format!("points[{i}].{name}");
        if let Err(e) = check_metric_name(&point.metric) {
            errors.push(FieldError::new(field("metric"), e));
        }
        if !point.value.is_finite() {
            errors.push(FieldError::new(field("value"), "must be a finite number"));
        }
        let timestamp = point.timestamp.unwrap_or(now);
        if timestamp < Timestamp::EPOCH {
            errors.push(FieldError::new(
                field("timestamp"),
                "must not be before 1970-01-01T00:00:00Z",
            ));
        } else if timestamp.as_micros() > latest {
            errors.push(FieldError::new(
                field("timestamp"),
                format!(
                    "must not be more than {}s in the future",
                    limits.max_future_skew_secs
                ),
            ));
        }
        if point.tags.len() > limits.max_tags {
            errors.push(FieldError::new(
                field("tags"),
                format!("at most {} tags per point", limits.max_tags),
            ));
        }
        for (k, v) in &point.tags {
            if let Err(e) = check_tag_key(k, limits) {
                errors.push(FieldError::new(field("tags"), e));
            } else if let Err(e) = check_text(v, limits.max_tag_value_bytes, "tag values") {
                errors.push(FieldError::new(field(&format!("tags.{k}")), e));
            }
        }
        if let Some(key) = &point.partition_key
            && let Err(e) = check_text(key, limits.max_partition_key_bytes, "partition keys")
        {
            errors.push(FieldError::new(field("partition_key"), e));
        }
        if errors.is_empty() {
            let partition_key = point
                .partition_key
                .unwrap_or_else(|| series_partition_key(&point.metric, &point.tags));
            records.push(Record {
                metric: point.metric,
                tags: point.tags,
                timestamp,
                value: point.value,
                partition_key,
            });
        }
        // Bound the error list: a huge bad batch must not make a huge error body.
        if errors.len() >= 100 {
            errors.push(FieldError::new(
                "points",
                "too many errors; stopped checking",
            ));
            break;
        }
    }
    if errors.is_empty() {
        Ok(records)
    } else {
        Err(Error::Validation(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::parse("2024-01-20T15:30:00Z").unwrap()
    }

    fn fields(err: Error) -> Vec<String> {
        match err {
            Error::Validation(f) => f.into_iter().map(|f| f.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_good_batch_and_fills_defaults() {
        let p = Point::new("cpu_usage", 75.5).tag("host", "server-1");
        let records = validate_batch(vec![p.clone()], now(), &Limits::default()).unwrap();
        assert_eq!(records[0].timestamp, now());
        assert_eq!(
            records[0].partition_key,
            series_partition_key("cpu_usage", &p.tags)
        );
        let keyed = p.partition_key("user123");
        let records = validate_batch(vec![keyed], now(), &Limits::default()).unwrap();
        assert_eq!(records[0].partition_key, "user123");
    }

    #[test]
    fn names_every_bad_field_with_its_index() {
        let good = Point::new("ok", 1.0);
        let bad = Point::new("bad name", f64::NAN)
            .at(Timestamp::from_micros(-1))
            .tag("host", "");
        let err = validate_batch(vec![good, bad], now(), &Limits::default()).unwrap_err();
        assert_eq!(
            fields(err),
            vec![
                "points[1].metric",
                "points[1].value",
                "points[1].timestamp",
                "points[1].tags.host"
            ]
        );
    }

    #[test]
    fn refuses_far_future_and_accepts_old_history() {
        let limits = Limits::default();
        let future = Timestamp::from_micros(now().as_micros() + 601 * MICROS_PER_SECOND);
        assert!(validate_batch(vec![Point::new("m", 1.0).at(future)], now(), &limits).is_err());
        let near = Timestamp::from_micros(now().as_micros() + 599 * MICROS_PER_SECOND);
        assert!(validate_batch(vec![Point::new("m", 1.0).at(near)], now(), &limits).is_ok());
        let old = Timestamp::EPOCH;
        assert!(validate_batch(vec![Point::new("m", 1.0).at(old)], now(), &limits).is_ok());
    }

    #[test]
    fn bounds_batches_and_tags() {
        let limits = Limits {
            max_batch_points: 2,
            max_tags: 1,
            ..Limits::default()
        };
        let three = vec![Point::new("m", 1.0); 3];
        assert_eq!(
            fields(validate_batch(three, now(), &limits).unwrap_err()),
            vec!["points"]
        );
        assert_eq!(
            fields(validate_batch(vec![], now(), &limits).unwrap_err()),
            vec!["points"]
        );
        let two_tags = Point::new("m", 1.0).tag("a", "1").tag("b", "2");
        assert_eq!(
            fields(validate_batch(vec![two_tags], now(), &limits).unwrap_err()),
            vec!["points[0].tags"]
        );
        let long = Point::new("m", 1.0).tag("a", "x".repeat(257));
        assert!(validate_batch(vec![long], now(), &Limits::default()).is_err());
        let ctl = Point::new("m", 1.0).partition_key("a\u{1f}b");
        assert!(validate_batch(vec![ctl], now(), &Limits::default()).is_err());
    }
}
