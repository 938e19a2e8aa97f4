//! The data model and its validation: the one place that decides what a valid point is.
//!
//! Every codec (JSON, bincode, the embedded API) turns its input into [`Point`]s and calls
//! [`validate_batch`]; only the [`Record`]s it returns reach a partition or a store. A batch
//! with one bad point is refused whole, and the error names every bad field with the point's
//! index (`points[3].metric`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, FieldError, Result};
use crate::insert_body::{self, TagSet, WireBody, WirePoint};
use crate::series::{self, Series, TagPairs, Text};
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

/// A validated point: its series (shared by all points of the series), its timestamp
/// resolved, its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub series: Arc<Series>,
    pub timestamp: Timestamp,
    pub value: f64,
}

impl Record {
    pub fn new(series: Arc<Series>, timestamp: Timestamp, value: f64) -> Self {
        Record {
            series,
            timestamp,
            value,
        }
    }

    pub fn metric(&self) -> &str {
        self.series.metric()
    }

    pub fn tags(&self) -> &Tags {
        self.series.tags()
    }

    /// The key the partitioner hashes.
    pub fn partition_key(&self) -> &str {
        self.series.partition_key()
    }
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

/// What validation reads of a point: a decoded [`Point`], or a [`PointRef`] borrowed from
/// a bincode body.
trait PointView {
    /// The metric, the value and the timestamp.
    fn reading(&self) -> (&str, f64, Option<Timestamp>);
    /// The shared series if this node knows it (no allocation).
    fn known_series(&self) -> Option<Arc<Series>>;
    /// The series, built from the point's own text (repeated tag keys keep their last
    /// value).
    fn into_series(self) -> Series;
}

/// The known series of a point whose tags are a [`Tags`] map.
fn known_with_map(metric: &str, tags: &Tags, key: Option<&str>) -> Option<Arc<Series>> {
    series::lookup(
        metric,
        tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        key,
    )
}

impl PointView for Point {
    fn reading(&self) -> (&str, f64, Option<Timestamp>) {
        (&self.metric, self.value, self.timestamp)
    }
    fn known_series(&self) -> Option<Arc<Series>> {
        known_with_map(&self.metric, &self.tags, self.partition_key.as_deref())
    }
    fn into_series(self) -> Series {
        Series::new(self.metric, self.tags, self.partition_key)
    }
}

/// A point of a bincode body, its text borrowed from the body: the same encoding as
/// [`Point`], decoded without allocating for a series this node already knows.
#[derive(Deserialize)]
struct PointRef<'a> {
    #[serde(borrow)]
    metric: Text<'a>,
    value: f64,
    timestamp: Option<Timestamp>,
    #[serde(borrow)]
    tags: TagPairs<'a>,
    #[serde(borrow)]
    partition_key: Option<Text<'a>>,
}

impl PointView for PointRef<'_> {
    fn reading(&self) -> (&str, f64, Option<Timestamp>) {
        (&self.metric.0, self.value, self.timestamp)
    }
    fn known_series(&self) -> Option<Arc<Series>> {
        if !self.tags.is_canonical() {
            return None;
        }
        let key = self.partition_key.as_ref().map(|k| &*k.0);
        series::lookup(&self.metric.0, self.tags.iter(), key)
    }
    fn into_series(self) -> Series {
        let key = self.partition_key.map(|k| k.0.into_owned());
        Series::new(self.metric.0.into_owned(), self.tags.to_tags(), key)
    }
}

/// A point whose tag map it shares with other points: the fields of one line of line
/// protocol are one point each, all with the line's tags.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedTagsPoint {
    pub metric: String,
    pub value: f64,
    pub timestamp: Option<Timestamp>,
    pub tags: Arc<Tags>,
}

impl From<SharedTagsPoint> for Point {
    fn from(p: SharedTagsPoint) -> Point {
        Point {
            metric: p.metric,
            value: p.value,
            timestamp: p.timestamp,
            tags: Arc::unwrap_or_clone(p.tags),
            partition_key: None,
        }
    }
}

impl PointView for SharedTagsPoint {
    fn reading(&self) -> (&str, f64, Option<Timestamp>) {
        (&self.metric, self.value, self.timestamp)
    }
    fn known_series(&self) -> Option<Arc<Series>> {
        known_with_map(&self.metric, &self.tags, None)
    }
    fn into_series(self) -> Series {
        Series::new(self.metric, Arc::unwrap_or_clone(self.tags), None)
    }
}

/// A point of a body read by [`insert_body`], with its tags.
struct WireRef<'b, 'a> {
    point: WirePoint<'a>,
    tags: &'b TagSet<'a>,
}

impl PointView for WireRef<'_, '_> {
    fn reading(&self) -> (&str, f64, Option<Timestamp>) {
        (self.point.metric, self.point.value, self.point.timestamp)
    }
    fn known_series(&self) -> Option<Arc<Series>> {
        if !self.tags.canonical {
            return None;
        }
        series::lookup(
            self.point.metric,
            self.tags.pairs.iter().copied(),
            self.point.partition_key,
        )
    }
    fn into_series(self) -> Series {
        let tags = self
            .tags
            .pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Series::new(
            self.point.metric.to_owned(),
            tags,
            self.point.partition_key.map(str::to_owned),
        )
    }
}

/// Validates a batch and resolves it into records. Points without a timestamp get `now`.
///
/// Either every point is valid and all records are returned in order, or nothing is
/// returned and the error lists every bad field of every bad point.
pub fn validate_batch(points: Vec<Point>, now: Timestamp, limits: &Limits) -> Result<Vec<Record>> {
    validate_points(points.into_iter(), now, limits)
}

/// [`validate_batch`] for points that share their tag maps: a tag map is copied only for
/// a series this process does not know yet.
pub fn validate_shared_tags(
    points: Vec<SharedTagsPoint>,
    now: Timestamp,
    limits: &Limits,
) -> Result<Vec<Record>> {
    validate_points(points.into_iter(), now, limits)
}

/// Decodes a bincode insert body (a `Vec<Point>`) and validates it as [`validate_batch`]
/// does, reading each point's text from `bytes` in place: a point of a series this node
/// already knows costs no allocation.
pub fn validate_encoded_batch(
    bytes: &[u8],
    now: Timestamp,
    limits: &Limits,
) -> Result<Vec<Record>> {
    // The common shape of a body is read by hand (a run of points with the same tags reads
    // them once); anything else goes through the codec, whose answer is the reference.
    if bytes.len() <= codec::MAX_ENCODED_BYTES
        && let Some(WireBody { points, tag_sets }) =
            insert_body::decode(bytes, limits.max_batch_points)
    {
        let points = points.into_iter().map(|point| WireRef {
            tags: &tag_sets[point.tags],
            point,
        });
        return validate_points(points, now, limits);
    }
    let points: Vec<PointRef<'_>> = codec::decode(bytes)?;
    validate_points(points.into_iter(), now, limits)
}

fn validate_points<P: PointView>(
    points: impl ExactSizeIterator<Item = P>,
    now: Timestamp,
    limits: &Limits,
) -> Result<Vec<Record>> {
    if points.len() == 0 {
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
    for (i, point) in points.enumerate() {
        let field = |name: &str| format!("points[{i}].{name}");
        // A known series passed the checks of the text once; only the limits, which may
        // differ between engines of one process, are checked again.
        let known = point.known_series().filter(|s| fits(s, limits));
        // A series is only interned when every check of this point passed (its metric name
        // above all): a known series skips them.
        let before = errors.len();
        if known.is_none()
            && let Err(e) = check_metric_name(point.reading().0)
        {
            errors.push(FieldError::new(field("metric"), e));
        }
        let (_, value, timestamp) = point.reading();
        if !value.is_finite() {
            errors.push(FieldError::new(field("value"), "must be a finite number"));
        }
        let timestamp = timestamp.unwrap_or(now);
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
        let series = match known {
            Some(series) => Some(series),
            None => {
                let series = point.into_series();
                check_series_text(&series, limits, &field, &mut errors);
                (errors.len() == before).then(|| series::intern(series))
            }
        };
        if errors.is_empty()
            && let Some(series) = series
        {
            records.push(Record {
                series,
                timestamp,
                value,
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

/// Whether a valid series is within `limits`.
fn fits(series: &Series, limits: &Limits) -> bool {
    series.tags().len() <= limits.max_tags
        && series.tags().iter().all(|(k, v)| {
            k.len() <= limits.max_tag_key_bytes && v.len() <= limits.max_tag_value_bytes
        })
        && series
            .custom_key()
            .is_none_or(|k| k.len() <= limits.max_partition_key_bytes)
}

/// Checks a new series' tags and partition key.
fn check_series_text(
    series: &Series,
    limits: &Limits,
    field: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) {
    let tags = series.tags();
    if tags.len() > limits.max_tags {
        errors.push(FieldError::new(
            field("tags"),
            format!("at most {} tags per point", limits.max_tags),
        ));
    }
    for (k, v) in tags {
        if let Err(e) = check_tag_key(k, limits) {
            errors.push(FieldError::new(field("tags"), e));
        } else if let Err(e) = check_text(v, limits.max_tag_value_bytes, "tag values") {
            errors.push(FieldError::new(field(&format!("tags.{k}")), e));
        }
    }
    if let Some(key) = series.custom_key()
        && let Err(e) = check_text(key, limits.max_partition_key_bytes, "partition keys")
    {
        errors.push(FieldError::new(field("partition_key"), e));
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
            records[0].partition_key(),
            series_partition_key("cpu_usage", &p.tags)
        );
        let keyed = p.partition_key("user123");
        let records = validate_batch(vec![keyed], now(), &Limits::default()).unwrap();
        assert_eq!(records[0].partition_key(), "user123");
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

    /// A point encoded as `Point` is, but with its tags as given: unsorted or repeated.
    #[derive(Serialize)]
    struct RawPoint {
        metric: String,
        value: f64,
        timestamp: Option<Timestamp>,
        tags: Vec<(String, String)>,
        partition_key: Option<String>,
    }

    fn raw(metric: &str, value: f64, tags: &[(&str, &str)], key: Option<&str>) -> RawPoint {
        RawPoint {
            metric: metric.into(),
            value,
            timestamp: Some(Timestamp::from_micros(now().as_micros() - 5)),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            partition_key: key.map(str::to_string),
        }
    }

    /// Reading a bincode body in place gives what decoding it into `Point`s and validating
    /// gives: the same records (sharing the interned series), or the same errors.
    #[test]
    fn bodies_read_in_place_validate_like_decoded_points() {
        let limits = Limits {
            max_tags: 3,
            ..Limits::default()
        };
        let bodies = vec![
            vec![
                raw("cpu", 1.0, &[("host", "a"), ("dc", "x")], None),
                raw("cpu", 2.0, &[("dc", "x"), ("host", "a")], None),
                raw("cpu", 3.0, &[("host", "a"), ("host", "b")], Some("k")),
                raw("cpu", 4.0, &[("dc", "x"), ("host", "a")], None),
            ],
            vec![
                raw("cpu", 1.0, &[("host", "a"), ("dc", "x")], None),
                raw("bad name", f64::INFINITY, &[("host", "")], None),
                raw(
                    "cpu",
                    1.0,
                    &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")],
                    None,
                ),
                raw("cpu", 1.0, &[("a b", "1")], Some("")),
            ],
        ];
        for body in bodies {
            let bytes = codec::encode(&body).unwrap();
            let points: Vec<Point> = codec::decode(&bytes).unwrap();
            let decoded = validate_batch(points, now(), &limits);
            let in_place = validate_encoded_batch(&bytes, now(), &limits);
            match (decoded, in_place) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b);
                    for (x, y) in a.iter().zip(&b) {
                        assert!(Arc::ptr_eq(&x.series, &y.series));
                    }
                    assert!(Arc::ptr_eq(&b[0].series, &b[1].series));
                    assert_eq!(b[2].tags()["host"], "b");
                }
                (Err(a), Err(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
                (a, b) => panic!("{a:?} against {b:?}"),
            }
        }
    }

    /// A series interned under generous limits is still refused under tighter ones.
    #[test]
    fn known_series_are_held_to_the_callers_limits() {
        let p = Point::new("limits_m", 1.0).tag("a", "1").tag("b", "2");
        validate_batch(vec![p.clone()], now(), &Limits::default()).unwrap();
        let tight = Limits {
            max_tags: 1,
            ..Limits::default()
        };
        assert_eq!(
            fields(validate_batch(vec![p], now(), &tight).unwrap_err()),
            vec!["points[0].tags"]
        );
    }

    /// A refused series is not remembered as known: sent again, it is refused again.
    #[test]
    fn a_refused_series_stays_refused() {
        for _ in 0..2 {
            let bad = Point::new("refused#metric", 1.0).tag("host", "a");
            assert_eq!(
                fields(validate_batch(vec![bad], now(), &Limits::default()).unwrap_err()),
                vec!["points[0].metric"]
            );
        }
        let bad_tag = Point::new("refused_tag", 1.0).tag("bad key", "x");
        for _ in 0..2 {
            assert!(validate_batch(vec![bad_tag.clone()], now(), &Limits::default()).is_err());
        }
    }

    /// The hand reader of bincode bodies ([`insert_body`]) against the codec, whose answer is
    /// the reference: every body, well-formed or damaged, gets the same records or the same
    /// error either way.
    mod insert_body_props {
        use proptest::prelude::*;
        use serde::ser::{Serialize, SerializeStruct, Serializer};

        use super::super::*;

        /// What a body gets from the codec alone.
        fn by_codec(bytes: &[u8], now: Timestamp, limits: &Limits) -> Result<Vec<Record>> {
            let points: Vec<PointRef<'_>> = codec::decode(bytes)?;
            validate_points(points.into_iter(), now, limits)
        }

        fn agree(bytes: &[u8], limits: &Limits) -> std::result::Result<(), TestCaseError> {
            let now = Timestamp::from_micros(1_000_000_000_000_000);
            let fast = validate_encoded_batch(bytes, now, limits);
            let slow = by_codec(bytes, now, limits);
            prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
            Ok(())
        }

        fn text() -> impl Strategy<Value = String> {
            prop_oneof!["[a-c]{1,3}", "[a-z_.]{0,6}", "\\PC{0,4}"]
        }

        fn point() -> impl Strategy<Value = Point> {
            (
                text(),
                prop_oneof![-1e3..1e3f64, Just(f64::NAN), any::<f64>()],
                proptest::option::of(-10i64..2_000_000_000_000_000),
                proptest::collection::btree_map(text(), text(), 0..4),
                proptest::option::of(text()),
            )
                .prop_map(|(metric, value, ts, tags, key)| Point {
                    metric,
                    value,
                    timestamp: ts.map(Timestamp::from_micros),
                    tags,
                    partition_key: key,
                })
        }

        /// Points in runs: half of them carry the tags of the point before.
        fn body() -> impl Strategy<Value = Vec<Point>> {
            proptest::collection::vec((point(), any::<bool>()), 0..12).prop_map(|drawn| {
                let mut points: Vec<Point> = Vec::new();
                for (mut p, same) in drawn {
                    if same && let Some(prev) = points.last() {
                        p.tags = prev.tags.clone();
                    }
                    points.push(p);
                }
                points
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]
            #[test]
            fn the_hand_reader_agrees_with_the_codec(
                points in body(),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
                cut in proptest::option::of(any::<prop::sample::Index>()),
                max in 0usize..15,
            ) {
                let limits = Limits { max_batch_points: max, ..Limits::default() };
                let mut bytes = codec::encode(&points).unwrap();
                agree(&bytes, &limits)?;
                for (at, b) in flips {
                    if !bytes.is_empty() {
                        let i = at.index(bytes.len());
                        bytes[i] = b;
                    }
                }
                if let Some(cut) = cut && !bytes.is_empty() {
                    bytes.truncate(cut.index(bytes.len()));
                }
                agree(&bytes, &limits)?;
            }
        }

        /// A point whose tags are encoded in the order given, as another encoder may.
        struct Unsorted(&'static str, Vec<(&'static str, &'static str)>);

        impl Serialize for Unsorted {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                struct Pairs<'a>(&'a [(&'static str, &'static str)]);
                impl Serialize for Pairs<'_> {
                    fn serialize<S: Serializer>(
                        &self,
                        s: S,
                    ) -> std::result::Result<S::Ok, S::Error> {
                        s.collect_map(self.0.iter().copied())
                    }
                }
                let mut p = s.serialize_struct("Point", 5)?;
                p.serialize_field("metric", self.0)?;
                p.serialize_field("value", &1.0f64)?;
                p.serialize_field("timestamp", &Some(Timestamp::from_micros(5)))?;
                p.serialize_field("tags", &Pairs(&self.1))?;
                p.serialize_field("partition_key", &None::<String>)?;
                p.end()
            }
        }

        #[test]
        fn tags_out_of_order_or_repeated_agree_too() {
            let body = vec![
                Unsorted("cpu", vec![("b", "1"), ("a", "2")]),
                Unsorted("mem", vec![("b", "1"), ("a", "2")]),
                Unsorted("cpu", vec![("a", "1"), ("a", "2")]),
                Unsorted("cpu", vec![("a", "2")]),
            ];
            let bytes = codec::encode(&body).unwrap();
            agree(&bytes, &Limits::default()).unwrap();
            let records =
                validate_encoded_batch(&bytes, Timestamp::from_micros(10), &Limits::default())
                    .unwrap();
            // A repeated key keeps its last value: the third point is the fourth's series.
            assert!(Arc::ptr_eq(&records[2].series, &records[3].series));
            assert_eq!(records[0].tags(), records[1].tags());
        }
    }
}
