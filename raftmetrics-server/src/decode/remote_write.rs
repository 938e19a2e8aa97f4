//! Prometheus remote write 1.0: the body Prometheus, vmagent and the OpenTelemetry
//! Collector's `prometheusremotewrite` exporter send, turned into [`Point`]s.
//!
//! A body is a `prometheus.WriteRequest` protobuf message compressed with the snappy *block*
//! format (not the framed one). Each series becomes one point per sample:
//!
//! - the `__name__` label is the metric, mapped by [`prometheus_metric_name`]: every `:`
//!   becomes `.` (`job:http_requests:rate5m` is stored and queried as
//!   `job.http_requests.rate5m`), because metric names here match `^[a-zA-Z0-9_.-]{1,255}$`.
//!   Classic Prometheus names (`[a-zA-Z_:][a-zA-Z0-9_:]*`) hold no `.`, so the mapping is
//!   one to one over them: two different Prometheus names never land on one metric, and the
//!   original is read back by turning `.` into `:`. A series without `__name__` refuses the
//!   request;
//! - every other label is a tag, its name unchanged. A label with an empty value is absent
//!   (as in Prometheus) and is dropped; a label named twice refuses the request;
//! - a sample's timestamp (milliseconds since the epoch) becomes microseconds;
//! - a sample whose value is Prometheus' staleness marker (the NaN with bits
//!   [`STALE_NAN_BITS`]) is skipped and counted as `stale_skipped`; any other NaN or
//!   infinity is skipped and counted as `non_finite_skipped` (stored values are finite).
//!
//! Metadata, exemplars and native histograms are counted and dropped: they are skipped over
//! in the wire bytes without being decoded. Unknown fields are skipped, as protobuf wants.
//!
//! Bounds ([`RemoteWriteLimits`]) hold before anything is allocated for them: the
//! uncompressed length the snappy header declares is checked against the limit, and
//! against what the compressed bytes could possibly expand to, before decompressing; the
//! request is then walked field by field, so a length that claims more bytes than remain is
//! an error rather than an allocation, labels and samples are refused as soon as one too
//! many is seen, and the text the points will carry (each point owns a copy of its series'
//! name and tags) is budgeted before it is copied.
//!
//! Decoding is pure: bytes in, points or an error out. The points still pass
//! [`validate_batch`](raftmetrics_core::model::validate_batch), the one validation gate; an
//! empty list is a valid answer (a request holding only metadata or staleness markers), which
//! the caller acknowledges without writing anything.

use prost::Message;
use raftmetrics_core::error::Error;
use raftmetrics_core::model::{Limits, MAX_METRIC_BYTES, Point, Tags};
use raftmetrics_core::time::Timestamp;

pub use proto::{Exemplar, Histogram, Label, MetricMetadata, Sample, TimeSeries, WriteRequest};

/// The label that holds a series' metric name.
pub const NAME_LABEL: &str = "__name__";

/// The bits of the NaN Prometheus writes as a staleness marker: "this series ended".
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The most a snappy block can expand: a 3-byte copy element writes at most 64 bytes, and no
/// element writes more per byte of input.
const MAX_SNAPPY_EXPANSION: usize = 22;

/// The messages of remote write 1.0 (`prometheus/prompb/types.proto` and `remote.proto`),
/// written by hand so that no protobuf compiler is needed to build.
///
/// [`decode`] reads the wire bytes of `WriteRequest` and `TimeSeries` itself and decodes
/// only [`Label`] and [`Sample`] through these types; the others are here to write requests
/// (tests, load generators) and carry only the fields those need.
pub mod proto {
    /// `prometheus.WriteRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
        #[prost(message, repeated, tag = "3")]
        pub metadata: Vec<MetricMetadata>,
    }

    /// `prometheus.TimeSeries`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub exemplars: Vec<Exemplar>,
        #[prost(message, repeated, tag = "4")]
        pub histograms: Vec<Histogram>,
    }

    /// `prometheus.Label`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `prometheus.Sample`: a value at a time in milliseconds since the epoch.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }

    /// `prometheus.Exemplar`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Exemplar {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(double, tag = "2")]
        pub value: f64,
        #[prost(int64, tag = "3")]
        pub timestamp: i64,
    }

    /// `prometheus.Histogram` (a native histogram), some of its fields.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Histogram {
        #[prost(uint64, tag = "1")]
        pub count_int: u64,
        #[prost(double, tag = "3")]
        pub sum: f64,
        #[prost(sint32, tag = "4")]
        pub schema: i32,
        #[prost(sint64, repeated, tag = "12")]
        pub positive_deltas: Vec<i64>,
        #[prost(int64, tag = "15")]
        pub timestamp: i64,
    }

    /// `prometheus.MetricMetadata`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricMetadata {
        /// `prometheus.MetricMetadata.MetricType`.
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        #[prost(string, tag = "2")]
        pub metric_family_name: String,
        #[prost(string, tag = "4")]
        pub help: String,
        #[prost(string, tag = "5")]
        pub unit: String,
    }
}

/// Bounds on one remote write request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteWriteLimits {
    /// Most bytes the decompressed `WriteRequest` may take.
    pub max_decompressed_bytes: usize,
    /// Most samples in one request, counting those skipped (staleness markers, non-finite).
    pub max_samples: usize,
    /// Most labels on one series, `__name__` included.
    pub max_labels: usize,
    /// Longest label name, in bytes.
    pub max_label_name_bytes: usize,
    /// Longest label value other than the metric name, in bytes.
    pub max_label_value_bytes: usize,
    /// Most bytes of metric names and tags over all decoded points: each point owns a copy
    /// of its series' text, so this bounds the memory of the answer.
    pub max_text_bytes: usize,
}

impl RemoteWriteLimits {
    /// Default bound on the decompressed request.
    pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 32 * 1024 * 1024;
    /// Default bound on the text of the decoded points.
    pub const DEFAULT_MAX_TEXT_BYTES: usize = 64 * 1024 * 1024;

    /// The bounds that follow from the point limits: samples as points in a batch, labels
    /// as tags plus `__name__`, label names and values as tag keys and values.
    pub fn from_limits(limits: &Limits) -> Self {
        RemoteWriteLimits {
            max_decompressed_bytes: Self::DEFAULT_MAX_DECOMPRESSED_BYTES,
            max_samples: limits.max_batch_points,
            max_labels: limits.max_tags.saturating_add(1),
            max_label_name_bytes: limits.max_tag_key_bytes,
            max_label_value_bytes: limits.max_tag_value_bytes,
            max_text_bytes: Self::DEFAULT_MAX_TEXT_BYTES,
        }
    }
}

impl Default for RemoteWriteLimits {
    fn default() -> Self {
        Self::from_limits(&Limits::default())
    }
}

/// What one request held besides its points.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteWriteStats {
    /// Samples that became points.
    pub samples: u64,
    /// Series read.
    pub series: u64,
    /// Metadata entries, dropped.
    pub metadata_ignored: u64,
    /// Exemplars, dropped.
    pub exemplars_ignored: u64,
    /// Native histogram samples, dropped.
    pub histograms_ignored: u64,
    /// Staleness markers, skipped.
    pub stale_skipped: u64,
    /// Other NaN and infinite samples, skipped.
    pub non_finite_skipped: u64,
}

/// A Prometheus metric name as a metric here: every `:` becomes `.`; nothing else changes
/// (what still breaks the metric name rule is refused by validation).
pub fn prometheus_metric_name(name: &str) -> String {
    name.replace(':', ".")
}

/// The points of a remote write body (snappy-compressed `WriteRequest`), in the order of
/// its series and samples, and what was counted and dropped on the way.
pub fn decode(
    body: &[u8],
    limits: &RemoteWriteLimits,
) -> Result<(Vec<Point>, RemoteWriteStats), Error> {
    let bytes = decompress(body, limits)?;
    let mut decoder = Decoder {
        limits,
        stats: RemoteWriteStats::default(),
        points: Vec::new(),
        samples_seen: 0,
        text_bytes: 0,
        samples: Vec::new(),
    };
    let mut wire = Wire::new(&bytes);
    let mut index = 0usize;
    while !wire.is_empty() {
        let (field, wire_type) = wire.key().map_err(malformed)?;
        match (field, wire_type) {
            (1, WireType::Len) => {
                let series = wire.len_delimited().map_err(malformed)?;
                decoder.series(index, series)?;
                index += 1;
            }
            (3, WireType::Len) => {
                wire.len_delimited().map_err(malformed)?;
                decoder.stats.metadata_ignored += 1;
            }
            (1 | 3, _) => {
                return Err(malformed(format!(
                    "field {field} of WriteRequest must be length-delimited"
                )));
            }
            _ => wire.skip(wire_type).map_err(malformed)?,
        }
    }
    Ok((decoder.points, decoder.stats))
}

/// A snappy block (no framing) to `WriteRequest` bytes, refusing a declared length over the
/// limit, or over what the input could expand to, before allocating it.
fn decompress(body: &[u8], limits: &RemoteWriteLimits) -> Result<Vec<u8>, Error> {
    if body.is_empty() {
        return Err(malformed(
            "empty; expected a snappy-compressed WriteRequest",
        ));
    }
    let declared = snap::raw::decompress_len(body)
        .map_err(|e| malformed(format!("not snappy block-compressed: {e}")))?;
    if declared > limits.max_decompressed_bytes {
        return Err(malformed(format!(
            "decompresses to {declared} bytes, more than the limit of {} bytes",
            limits.max_decompressed_bytes
        )));
    }
    if declared > body.len().saturating_mul(MAX_SNAPPY_EXPANSION) {
        return Err(malformed(format!(
            "the snappy header declares {declared} bytes, more than {} compressed bytes can hold",
            body.len()
        )));
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| malformed(format!("not snappy block-compressed: {e}")))
}

fn malformed(reason: impl std::fmt::Display) -> Error {
    Error::InvalidRequest(format!("remote write body: {reason}"))
}

/// The state of one request's decoding.
struct Decoder<'l> {
    limits: &'l RemoteWriteLimits,
    stats: RemoteWriteStats,
    points: Vec<Point>,
    /// Samples read so far, skipped ones included.
    samples_seen: usize,
    /// Bytes of metric names and tags in `points`.
    text_bytes: usize,
    /// The samples of the current series (reused).
    samples: Vec<Sample>,
}

impl Decoder<'_> {
    /// One `TimeSeries` message: its labels and samples become points.
    fn series(&mut self, index: usize, bytes: &[u8]) -> Result<(), Error> {
        self.stats.series += 1;
        let field = |name: &str| format!("timeseries[{index}].{name}");
        let wire_error = |e: String| malformed(format!("timeseries[{index}]: {e}"));
        let mut metric: Option<String> = None;
        let mut tags = Tags::new();
        let mut labels = 0usize;
        self.samples.clear();
        let mut wire = Wire::new(bytes);
        while !wire.is_empty() {
            let (number, wire_type) = wire.key().map_err(wire_error)?;
            match (number, wire_type) {
                (1, WireType::Len) => {
                    let label = wire.len_delimited().map_err(wire_error)?;
                    labels += 1;
                    let label = self.label(label, labels, &field)?;
                    self.add_label(label, &mut metric, &mut tags, &field)?;
                }
                (2, WireType::Len) => {
                    let sample = wire.len_delimited().map_err(wire_error)?;
                    self.samples_seen += 1;
                    if self.samples_seen > self.limits.max_samples {
                        return Err(Error::field(
                            "samples",
                            format!(
                                "a request may hold at most {} samples",
                                self.limits.max_samples
                            ),
                        ));
                    }
                    let sample = Sample::decode(sample).map_err(|e| {
                        malformed(format!(
                            "timeseries[{index}].samples[{}]: {e}",
                            self.samples.len()
                        ))
                    })?;
                    self.samples.push(sample);
                }
                (3, WireType::Len) => {
                    wire.len_delimited().map_err(wire_error)?;
                    self.stats.exemplars_ignored += 1;
                }
                (4, WireType::Len) => {
                    wire.len_delimited().map_err(wire_error)?;
                    self.stats.histograms_ignored += 1;
                }
                (1..=4, _) => {
                    return Err(wire_error(format!(
                        "field {number} of TimeSeries must be length-delimited"
                    )));
                }
                _ => wire.skip(wire_type).map_err(wire_error)?,
            }
        }
        let Some(metric) = metric else {
            return Err(Error::field(
                field("labels"),
                format!("a series must have a non-empty {NAME_LABEL} label"),
            ));
        };
        self.points_of(index, metric, tags)
    }

    /// The `number`th label of a series (from 1), refused before decoding when over a bound.
    fn label(
        &self,
        bytes: &[u8],
        number: usize,
        field: &dyn Fn(&str) -> String,
    ) -> Result<Label, Error> {
        let at = number - 1;
        if number > self.limits.max_labels {
            return Err(Error::field(
                field("labels"),
                format!(
                    "a series may have at most {} labels, {NAME_LABEL} included",
                    self.limits.max_labels
                ),
            ));
        }
        // Two strings and their keys and lengths; a longer label breaks a bound below.
        let longest = self.limits.max_label_name_bytes.max(NAME_LABEL.len())
            + self.limits.max_label_value_bytes.max(MAX_METRIC_BYTES)
            + 2 * (1 + 10);
        if bytes.len() > longest {
            return Err(Error::field(
                field(&format!("labels[{at}]")),
                format!("a label may take at most {longest} bytes"),
            ));
        }
        Label::decode(bytes)
            .map_err(|e| malformed(format!("{}: {e}", field(&format!("labels[{at}]")))))
    }

    /// A label into the series' metric or tags.
    fn add_label(
        &self,
        label: Label,
        metric: &mut Option<String>,
        tags: &mut Tags,
        field: &dyn Fn(&str) -> String,
    ) -> Result<(), Error> {
        let Label { name, value } = label;
        if name == NAME_LABEL {
            if metric.is_some() {
                return Err(Error::field(
                    field("labels"),
                    format!("the label {NAME_LABEL} appears twice"),
                ));
            }
            if value.len() > MAX_METRIC_BYTES {
                return Err(Error::field(
                    field("labels"),
                    format!("a metric name may take at most {MAX_METRIC_BYTES} bytes"),
                ));
            }
            if !value.is_empty() {
                *metric = Some(prometheus_metric_name(&value));
            }
            return Ok(());
        }
        if name.is_empty() || name.len() > self.limits.max_label_name_bytes {
            return Err(Error::field(
                field("labels"),
                format!(
                    "label names must be 1 to {} bytes",
                    self.limits.max_label_name_bytes
                ),
            ));
        }
        if value.len() > self.limits.max_label_value_bytes {
            return Err(Error::field(
                field(&format!("labels.{name}")),
                format!(
                    "label values may take at most {} bytes",
                    self.limits.max_label_value_bytes
                ),
            ));
        }
        if value.is_empty() {
            // An empty label value is no label.
            return Ok(());
        }
        if tags.contains_key(&name) {
            return Err(Error::field(
                field("labels"),
                format!("the label {name} appears twice"),
            ));
        }
        tags.insert(name, value);
        Ok(())
    }

    /// The points of a series from its samples.
    fn points_of(&mut self, index: usize, metric: String, tags: Tags) -> Result<(), Error> {
        let text = metric.len() + tags.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let mut kept = 0usize;
        for sample in &self.samples {
            if sample.value.to_bits() == STALE_NAN_BITS {
                self.stats.stale_skipped += 1;
            } else if !sample.value.is_finite() {
                self.stats.non_finite_skipped += 1;
            } else {
                kept += 1;
            }
        }
        self.text_bytes = text
            .checked_mul(kept)
            .and_then(|t| t.checked_add(self.text_bytes))
            .filter(|&t| t <= self.limits.max_text_bytes)
            .ok_or_else(|| {
                Error::field(
                    "timeseries",
                    format!(
                        "the request's points would carry more than {} bytes of names and tags",
                        self.limits.max_text_bytes
                    ),
                )
            })?;
        self.points.reserve(kept);
        for (at, sample) in self.samples.iter().enumerate() {
            if !sample.value.is_finite() {
                continue;
            }
            let micros = sample.timestamp.checked_mul(1000).ok_or_else(|| {
                Error::field(
                    format!("timeseries[{index}].samples[{at}].timestamp"),
                    "milliseconds out of range",
                )
            })?;
            self.points.push(Point {
                metric: metric.clone(),
                value: sample.value,
                timestamp: Some(Timestamp::from_micros(micros)),
                tags: tags.clone(),
                partition_key: None,
            });
        }
        self.stats.samples += kept as u64;
        Ok(())
    }
}

/// A protobuf wire type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WireType {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

/// A reader of protobuf wire bytes: keys, varints, and fields skipped or sliced out without
/// copying. Every length is checked against what remains.
struct Wire<'a> {
    bytes: &'a [u8],
}

impl<'a> Wire<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Wire { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for (i, &byte) in self.bytes.iter().enumerate().take(10) {
            if i == 9 && byte > 1 {
                return Err("a varint overflows 64 bits".into());
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return Ok(value);
            }
        }
        Err(if self.bytes.len() < 10 {
            "truncated varint".into()
        } else {
            "a varint overflows 64 bits".into()
        })
    }

    /// A field's number and wire type.
    fn key(&mut self) -> Result<(u32, WireType), String> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| (1..=0x1fff_ffff).contains(&n))
            .ok_or_else(|| format!("invalid field number {}", key >> 3))?;
        let wire_type = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::Len,
            5 => WireType::Fixed32,
            3 | 4 => return Err(format!("field {number} is a group, which is not supported")),
            other => return Err(format!("field {number} has invalid wire type {other}")),
        };
        Ok((number, wire_type))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], String> {
        match usize::try_from(len) {
            Ok(n) if n <= self.bytes.len() => {
                let (head, tail) = self.bytes.split_at(n);
                self.bytes = tail;
                Ok(head)
            }
            _ => Err(format!(
                "a field declares {len} bytes but only {} remain",
                self.bytes.len()
            )),
        }
    }

    /// The bytes of a length-delimited field.
    fn len_delimited(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        self.take(len)
    }

    /// Skips the value of a field of `wire_type`.
    fn skip(&mut self, wire_type: WireType) -> Result<(), String> {
        match wire_type {
            WireType::Varint => self.varint().map(drop),
            WireType::Fixed64 => self.take(8).map(drop),
            WireType::Len => self.len_delimited().map(drop),
            WireType::Fixed32 => self.take(4).map(drop),
        }
    }
}

/// A remote write body: `request` encoded and snappy block-compressed.
pub fn encode(request: &WriteRequest) -> Vec<u8> {
    let bytes = request.encode_to_vec();
    // Compressing into a buffer of `max_compress_len` cannot fail below snappy's 4 GiB input
    // bound, which a request built in memory does not approach.
    snap::raw::Encoder::new()
        .compress_vec(&bytes)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmetrics_core::error::ErrorCode;

    fn label(name: &str, value: &str) -> Label {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }

    fn sample(value: f64, timestamp: i64) -> Sample {
        Sample { value, timestamp }
    }

    fn series(labels: &[(&str, &str)], samples: Vec<Sample>) -> TimeSeries {
        TimeSeries {
            labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
            samples,
            ..TimeSeries::default()
        }
    }

    fn request(timeseries: Vec<TimeSeries>) -> WriteRequest {
        WriteRequest {
            timeseries,
            metadata: vec![],
        }
    }

    fn decode_default(body: &[u8]) -> Result<(Vec<Point>, RemoteWriteStats), Error> {
        decode(body, &RemoteWriteLimits::default())
    }

    /// The error's text, asserting it is of `code`.
    fn error_of(result: Result<(Vec<Point>, RemoteWriteStats), Error>, code: ErrorCode) -> String {
        let err = result.expect_err("the body is refused");
        assert_eq!(err.code(), code, "{err}");
        err.to_string()
    }

    /// Snappy of raw protobuf bytes.
    fn compress(bytes: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(bytes).unwrap()
    }

    #[test]
    fn series_become_points() {
        let body = encode(&request(vec![
            series(
                &[
                    ("__name__", "http_requests_total"),
                    ("job", "api"),
                    ("instance", "web-1:9090"),
                    ("empty", ""),
                ],
                vec![
                    sample(1.5, 1_705_764_600_000),
                    sample(-2.0, 1_705_764_615_123),
                ],
            ),
            series(
                &[("job", "api"), ("__name__", "job:http_requests:rate5m")],
                vec![sample(0.25, 1_705_764_600_000)],
            ),
        ]));
        let (points, stats) = decode_default(&body).unwrap();
        let tags: Tags = [("instance", "web-1:9090"), ("job", "api")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            points,
            vec![
                Point {
                    metric: "http_requests_total".into(),
                    value: 1.5,
                    timestamp: Some(Timestamp::from_micros(1_705_764_600_000_000)),
                    tags: tags.clone(),
                    partition_key: None,
                },
                Point {
                    metric: "http_requests_total".into(),
                    value: -2.0,
                    timestamp: Some(Timestamp::from_micros(1_705_764_615_123_000)),
                    tags,
                    partition_key: None,
                },
                Point::new("job.http_requests.rate5m", 0.25)
                    .at(Timestamp::from_micros(1_705_764_600_000_000))
                    .tag("job", "api"),
            ]
        );
        assert_eq!(
            stats,
            RemoteWriteStats {
                samples: 3,
                series: 2,
                ..RemoteWriteStats::default()
            }
        );
        // What came out passes the validation gate.
        let now = Timestamp::from_micros(1_705_764_700_000_000);
        raftmetrics_core::model::validate_batch(points, now, &Limits::default()).unwrap();
    }

    #[test]
    fn metric_names_map_colons_to_dots() {
        assert_eq!(prometheus_metric_name("a:b_c:d"), "a.b_c.d");
        assert_eq!(prometheus_metric_name("up"), "up");
        assert_eq!(prometheus_metric_name(":x"), ".x");
    }

    #[test]
    fn metadata_exemplars_and_histograms_are_counted_and_dropped() {
        let mut ts = series(&[("__name__", "m")], vec![sample(1.0, 1000)]);
        ts.exemplars = vec![
            Exemplar {
                labels: vec![label("trace_id", "abc")],
                value: 1.0,
                timestamp: 1000,
            };
            2
        ];
        ts.histograms = vec![Histogram {
            count_int: 3,
            sum: 4.5,
            schema: -1,
            positive_deltas: vec![1, -1, 2],
            timestamp: 1000,
        }];
        let only_histograms = TimeSeries {
            samples: vec![],
            histograms: vec![Histogram::default(); 3],
            ..series(&[("__name__", "h")], vec![])
        };
        let req = WriteRequest {
            timeseries: vec![ts, only_histograms],
            metadata: vec![MetricMetadata {
                r#type: 1,
                metric_family_name: "m".into(),
                help: "a counter".into(),
                unit: "seconds".into(),
            }],
        };
        let (points, stats) = decode_default(&encode(&req)).unwrap();
        assert_eq!(points.len(), 1);
        assert_eq!(
            stats,
            RemoteWriteStats {
                samples: 1,
                series: 2,
                metadata_ignored: 1,
                exemplars_ignored: 2,
                histograms_ignored: 4,
                ..RemoteWriteStats::default()
            }
        );
        let metadata_only = WriteRequest {
            timeseries: vec![],
            metadata: req.metadata.clone(),
        };
        let (points, stats) = decode_default(&encode(&metadata_only)).unwrap();
        assert!(points.is_empty());
        assert_eq!(stats.metadata_ignored, 1);
    }

    #[test]
    fn staleness_markers_and_non_finite_values_are_skipped() {
        let stale = f64::from_bits(STALE_NAN_BITS);
        assert!(stale.is_nan());
        let body = encode(&request(vec![series(
            &[("__name__", "m")],
            vec![
                sample(stale, 1000),
                sample(f64::NAN, 2000),
                sample(f64::INFINITY, 3000),
                sample(f64::NEG_INFINITY, 4000),
                sample(7.0, 5000),
            ],
        )]));
        let (points, stats) = decode_default(&body).unwrap();
        assert_eq!(
            points,
            vec![Point::new("m", 7.0).at(Timestamp::from_micros(5_000_000))]
        );
        assert_eq!(stats.stale_skipped, 1);
        assert_eq!(stats.non_finite_skipped, 3);
        assert_eq!(stats.samples, 1);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut bytes =
            request(vec![series(&[("__name__", "m")], vec![sample(1.0, 1)])]).encode_to_vec();
        // Field 9 of every wire type appended to the WriteRequest.
        bytes.extend_from_slice(&[9 << 3, 0x96, 0x01]);
        bytes.extend_from_slice(&[(9 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        bytes.extend_from_slice(&[(9 << 3) | 2, 2, b'h', b'i']);
        bytes.extend_from_slice(&[(9 << 3) | 5, 1, 2, 3, 4]);
        let (points, _) = decode_default(&compress(&bytes)).unwrap();
        assert_eq!(points.len(), 1);
    }

    #[test]
    fn bodies_that_are_not_snappy_are_refused() {
        for body in [
            &b""[..],
            b"\xff\xff\xff\xff\xff\xff",
            b"plain text, not snappy",
        ] {
            let text = error_of(decode_default(body), ErrorCode::InvalidRequest);
            assert!(text.starts_with("remote write body: "), "{text}");
        }
        // Framed snappy is not the block format.
        let mut framed = snap::write::FrameEncoder::new(Vec::new());
        std::io::Write::write_all(&mut framed, b"hello").unwrap();
        let framed = framed.into_inner().unwrap();
        error_of(decode_default(&framed), ErrorCode::InvalidRequest);
    }

    #[test]
    fn truncated_snappy_is_refused() {
        let body = encode(&request(vec![series(
            &[("__name__", "m"), ("host", "a")],
            vec![sample(1.0, 1); 20],
        )]));
        for cut in 1..body.len() {
            let text = error_of(decode_default(&body[..cut]), ErrorCode::InvalidRequest);
            assert!(text.starts_with("remote write body: "), "{text}");
        }
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_decompressing() {
        let limits = RemoteWriteLimits {
            max_decompressed_bytes: 1024,
            ..RemoteWriteLimits::default()
        };
        // A header declaring 1 GiB, followed by a little data.
        let mut body = vec![0x80, 0x80, 0x80, 0x80, 0x04];
        body.extend_from_slice(&[0; 16]);
        let text = error_of(decode(&body, &limits), ErrorCode::InvalidRequest);
        assert!(text.contains("more than the limit of 1024 bytes"), "{text}");
        // Within the limit, but more than 21 bytes of input could expand to.
        let body = [0x80, 0x08, 0, 0];
        let text = error_of(decode(&body, &limits), ErrorCode::InvalidRequest);
        assert!(text.contains("compressed bytes can hold"), "{text}");
        // A real body over the limit.
        let big = encode(&request(vec![series(
            &[("__name__", "m"), ("host", &"x".repeat(200))],
            vec![sample(1.0, 1); 200],
        )]));
        error_of(decode(&big, &limits), ErrorCode::InvalidRequest);
        assert!(decode_default(&big).is_ok());
    }

    #[test]
    fn garbage_protobuf_is_refused() {
        for bytes in [
            &b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
            b"\x0b",
            b"\x08",
            b"\x00\x01",
            b"\x0a\x02\x0f\x00",
            b"\x0a\x04\x12\x02\x09\x01",
        ] {
            let text = error_of(decode_default(&compress(bytes)), ErrorCode::InvalidRequest);
            assert!(text.starts_with("remote write body: "), "{text}");
        }
        // A label that is not UTF-8.
        let bytes = [0x0a, 0x06, 0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe];
        error_of(decode_default(&compress(&bytes)), ErrorCode::InvalidRequest);
    }

    #[test]
    fn a_length_that_lies_is_refused() {
        // A series claiming 2^62 bytes, then a series claiming 100 bytes with 3 left.
        let mut huge = vec![0x0a];
        huge.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        huge.extend_from_slice(&[0; 4]);
        let text = error_of(decode_default(&compress(&huge)), ErrorCode::InvalidRequest);
        assert!(
            text.contains("declares 4611686018427387904 bytes"),
            "{text}"
        );
        let short = [0x0a, 100, 0x0a, 0x01, 0x00];
        let text = error_of(decode_default(&compress(&short)), ErrorCode::InvalidRequest);
        assert!(
            text.contains("declares 100 bytes but only 3 remain"),
            "{text}"
        );
        // A label inside a series that claims more than its series holds.
        let inner = [0x0a, 0x03, 0x0a, 0x50, 0x00];
        let text = error_of(decode_default(&compress(&inner)), ErrorCode::InvalidRequest);
        assert!(text.contains("timeseries[0]"), "{text}");
    }

    #[test]
    fn a_series_without_a_name_is_refused() {
        for labels in [
            &[("job", "api")][..],
            &[("__name__", ""), ("job", "api")],
            &[],
        ] {
            let body = encode(&request(vec![series(labels, vec![sample(1.0, 1)])]));
            let text = error_of(decode_default(&body), ErrorCode::ValidationError);
            assert!(text.contains("timeseries[0].labels"), "{text}");
            assert!(text.contains("__name__"), "{text}");
        }
    }

    #[test]
    fn repeated_labels_are_refused() {
        for labels in [
            &[("__name__", "a"), ("__name__", "b")][..],
            &[("__name__", "a"), ("job", "x"), ("job", "y")],
        ] {
            let body = encode(&request(vec![series(labels, vec![sample(1.0, 1)])]));
            let text = error_of(decode_default(&body), ErrorCode::ValidationError);
            assert!(text.contains("appears twice"), "{text}");
        }
    }

    #[test]
    fn too_many_samples_are_refused() {
        let limits = RemoteWriteLimits {
            max_samples: 5,
            ..RemoteWriteLimits::default()
        };
        let body = |per_series: usize| {
            encode(&request(vec![
                series(&[("__name__", "a")], vec![sample(1.0, 1); per_series]),
                series(&[("__name__", "b")], vec![sample(1.0, 1); per_series]),
            ]))
        };
        assert_eq!(decode(&body(2), &limits).unwrap().0.len(), 4);
        let text = error_of(decode(&body(3), &limits), ErrorCode::ValidationError);
        assert!(text.contains("at most 5 samples"), "{text}");
        // Staleness markers count: they were sent.
        let stale = encode(&request(vec![series(
            &[("__name__", "a")],
            vec![sample(f64::from_bits(STALE_NAN_BITS), 1); 6],
        )]));
        error_of(decode(&stale, &limits), ErrorCode::ValidationError);
    }

    #[test]
    fn labels_are_bounded() {
        let limits = RemoteWriteLimits::from_limits(&Limits {
            max_tags: 2,
            ..Limits::default()
        });
        assert_eq!(limits.max_labels, 3);
        let ok = encode(&request(vec![series(
            &[("__name__", "m"), ("a", "1"), ("b", "2")],
            vec![sample(1.0, 1)],
        )]));
        assert!(decode(&ok, &limits).is_ok());
        let many = encode(&request(vec![series(
            &[("__name__", "m"), ("a", "1"), ("b", "2"), ("c", "3")],
            vec![sample(1.0, 1)],
        )]));
        let text = error_of(decode(&many, &limits), ErrorCode::ValidationError);
        assert!(text.contains("at most 3 labels"), "{text}");
        let long_value = "v".repeat(limits.max_label_value_bytes + 1);
        let long_name = "n".repeat(limits.max_label_name_bytes + 1);
        let long_metric = "m".repeat(MAX_METRIC_BYTES + 1);
        let huge = "h".repeat(100_000);
        for labels in [
            vec![("__name__", "m"), ("a", long_value.as_str())],
            vec![("__name__", "m"), (long_name.as_str(), "1")],
            vec![("__name__", long_metric.as_str())],
            vec![("__name__", "m"), ("a", huge.as_str())],
        ] {
            let body = encode(&request(vec![series(&labels, vec![sample(1.0, 1)])]));
            error_of(decode(&body, &limits), ErrorCode::ValidationError);
        }
        // The longest metric name and tag value pass.
        let longest_metric = "m".repeat(MAX_METRIC_BYTES);
        let longest_value = "v".repeat(limits.max_label_value_bytes);
        let body = encode(&request(vec![series(
            &[("__name__", &longest_metric), ("a", &longest_value)],
            vec![sample(1.0, 1)],
        )]));
        assert!(decode(&body, &limits).is_ok());
    }

    #[test]
    fn the_text_of_the_points_is_bounded() {
        let limits = RemoteWriteLimits {
            max_text_bytes: 1000,
            ..RemoteWriteLimits::default()
        };
        // 1 + 4 + 95 = 100 bytes per point.
        let value = "v".repeat(95);
        let body = |samples: usize| {
            encode(&request(vec![series(
                &[("__name__", "m"), ("host", &value)],
                vec![sample(1.0, 1); samples],
            )]))
        };
        assert_eq!(decode(&body(10), &limits).unwrap().0.len(), 10);
        let text = error_of(decode(&body(11), &limits), ErrorCode::ValidationError);
        assert!(text.contains("more than 1000 bytes"), "{text}");
    }

    #[test]
    fn timestamps_that_overflow_are_refused() {
        let body = encode(&request(vec![series(
            &[("__name__", "m")],
            vec![sample(1.0, 1), sample(1.0, i64::MAX / 999)],
        )]));
        let text = error_of(decode_default(&body), ErrorCode::ValidationError);
        assert!(
            text.contains("timeseries[0].samples[1].timestamp"),
            "{text}"
        );
        // Negative times decode; validation refuses them.
        let body = encode(&request(vec![series(
            &[("__name__", "m")],
            vec![sample(1.0, -5)],
        )]));
        let (points, _) = decode_default(&body).unwrap();
        assert_eq!(points[0].timestamp, Some(Timestamp::from_micros(-5000)));
    }
}
