//! JSON lines in the export's shape (`POST /api/v1/import`): what `GET /api/v1/export`
//! writes, and what VictoriaMetrics' `/api/v1/export` and `/api/v1/import` speak, read back
//! as points.
//!
//! One line `{"metric":{"__name__":"cpu","host":"a"},"values":[1.5,2],"timestamps":[1705708800000,1705708860000]}`
//! becomes one point per value: the metric `__name__`, the other labels as tags, the value
//! at the timestamp of the same position, in the request's [`Precision`] (milliseconds
//! unless told). Everything here is pure (bytes in, points or an error out).
//!
//! # Rules
//!
//! - Each line is one JSON object with exactly the keys `metric` (an object of string
//!   labels, `__name__` among them, no label twice), `values` (numbers) and `timestamps`
//!   (integers), the two arrays of one length, at least one. Lines end at `\n` (a `\r`
//!   before it is dropped); blank lines are skipped. A line `{"error": ...}`, which ends an
//!   export that stopped, is refused like any other malformed line: an export cut short is
//!   not imported as if it were whole.
//! - Values are finite by construction (JSON has no `NaN`); a number that overflows `f64` is
//!   refused. A timestamp that does not fit in microseconds is refused.
//! - The points then pass [`validate_batch`] like every other insert; its errors are named by
//!   line (`line 3`, `tag "host": ...`).
//!
//! # Errors and bounds
//!
//! One bad line refuses the whole request: nothing is stored. Up to 100 bad lines are listed,
//! each a [`FieldError`] named `line N` (1-based, blank lines counted); errors about the body
//! as a whole are named `body`. A body yields at most `max_points` points (a batch's limit);
//! the body's own size is bounded by the HTTP layer. To import more, send the lines in
//! several requests (an export's lines hold at most 10,000 points each).

use std::collections::BTreeSet;
use std::fmt;

use raftmetrics_core::error::Error;
use raftmetrics_core::model::{Limits, Point, Record, Tags, validate_batch};
use raftmetrics_core::time::Timestamp;
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};

use super::{BadLines, name_lines, quote};
use crate::export::Precision;

/// The label that names the metric.
pub const NAME_LABEL: &str = "__name__";

/// One line as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    metric: Labels,
    values: Vec<f64>,
    timestamps: Vec<i64>,
}

/// The `metric` object: string labels, each once.
struct Labels(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Labels, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = Labels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string labels")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let mut labels: Vec<(String, String)> = Vec::new();
                let mut seen = BTreeSet::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "label {} is given twice",
                            quote(&key)
                        )));
                    }
                    labels.push((key, value));
                }
                Ok(Labels(labels))
            }
        }
        deserializer.deserialize_map(LabelsVisitor)
    }
}

/// The points of a body, in order (one per value of each line), validated as one insert with
/// `now` as the time of receipt. A body with no points is refused, as an empty batch is.
pub fn decode_records(
    body: &[u8],
    precision: Precision,
    now: Timestamp,
    limits: &Limits,
) -> Result<Vec<Record>, Error> {
    let (points, lines) = decode_lines(body, precision, limits.max_batch_points)?;
    validate_batch(points, now, limits).map_err(|e| name_lines(e, &lines))
}

/// The points of a body and, for each, the 1-based line it came from.
fn decode_lines(
    body: &[u8],
    precision: Precision,
    max_points: usize,
) -> Result<(Vec<Point>, Vec<usize>), Error> {
    let mut points = Vec::new();
    let mut lines = Vec::new();
    let mut errors = BadLines::default();
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match parse_line(raw, precision) {
            // Once a line is bad nothing will be stored: the rest is only checked.
            Ok(line) if errors.is_empty() => {
                if points.len() + line.len() > max_points {
                    return Err(Error::field(
                        "body",
                        format!(
                            "at most {max_points} points per request (one per value of each \
                             line); send the lines in several requests"
                        ),
                    ));
                }
                lines.resize(points.len() + line.len(), number);
                points.extend(line);
            }
            Ok(_) => {}
            Err(message) => {
                if !errors.add(number, message) {
                    break;
                }
            }
        }
    }
    errors.or_ok((points, lines))
}

/// The points of one line.
fn parse_line(raw: &[u8], precision: Precision) -> Result<Vec<Point>, String> {
    let line: Line = serde_json::from_slice(raw).map_err(|e| {
        format!(
            "not a line of the export's shape ({{\"metric\":{{...}},\"values\":[...],\
             \"timestamps\":[...]}}): {e}"
        )
    })?;
    let mut metric = None;
    let mut tags = Tags::new();
    for (key, value) in line.metric.0 {
        if key == NAME_LABEL {
            metric = Some(value);
        } else {
            tags.insert(key, value);
        }
    }
    let metric = metric.ok_or_else(|| format!("metric has no {NAME_LABEL:?} label"))?;
    if line.values.len() != line.timestamps.len() {
        return Err(format!(
            "{} values but {} timestamps: each value needs its timestamp",
            line.values.len(),
            line.timestamps.len()
        ));
    }
    if line.values.is_empty() {
        return Err("values and timestamps are empty".into());
    }
    let mut points = Vec::with_capacity(line.values.len());
    for (value, t) in line.values.into_iter().zip(line.timestamps) {
        let micros = precision.to_micros(t).ok_or_else(|| {
            format!(
                "timestamp {t} is out of range in {}",
                match precision {
                    Precision::Millis => "milliseconds",
                    Precision::Micros => "microseconds",
                }
            )
        })?;
        points.push(Point {
            metric: metric.clone(),
            value,
            timestamp: Some(Timestamp::from_micros(micros)),
            tags: tags.clone(),
            partition_key: None,
        });
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::MAX_BAD_LINES;

    const NOW: i64 = 1_705_764_600_000_000;

    fn limits() -> Limits {
        Limits::default()
    }

    /// A record as (metric, value, microseconds, tags).
    type Flat = (String, f64, i64, Vec<(String, String)>);

    fn decode(body: &str, precision: Precision) -> Result<Vec<Record>, Error> {
        decode_records(
            body.as_bytes(),
            precision,
            Timestamp::from_micros(NOW),
            &limits(),
        )
    }

    fn fields(err: Error) -> Vec<(String, String)> {
        match err {
            Error::Validation(fields) => fields.into_iter().map(|f| (f.field, f.error)).collect(),
            other => panic!("not a validation error: {other}"),
        }
    }

    #[test]
    fn each_value_is_a_point_of_the_line_s_series() {
        let body = "{\"metric\":{\"__name__\":\"cpu\",\"host\":\"a\"},\"values\":[1.5,2],\
                    \"timestamps\":[1705708800000,1705708860000]}\r\n\n  \n\
                    {\"timestamps\":[1705708800001],\"values\":[-3e2],\"metric\":{\"__name__\":\"mem\"}}";
        let records = decode(body, Precision::Millis).unwrap();
        let got: Vec<Flat> = records
            .iter()
            .map(|r| {
                (
                    r.series.metric().to_string(),
                    r.value,
                    r.timestamp.as_micros(),
                    r.series
                        .tags()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            })
            .collect();
        let host_a = vec![("host".to_string(), "a".to_string())];
        assert_eq!(
            got,
            vec![
                ("cpu".into(), 1.5, 1_705_708_800_000_000, host_a.clone()),
                ("cpu".into(), 2.0, 1_705_708_860_000_000, host_a),
                ("mem".into(), -300.0, 1_705_708_800_001_000, vec![]),
            ]
        );
        let micros = decode(
            "{\"metric\":{\"__name__\":\"cpu\"},\"values\":[1],\"timestamps\":[1705708800000123]}",
            Precision::Micros,
        )
        .unwrap();
        assert_eq!(micros[0].timestamp.as_micros(), 1_705_708_800_000_123);
    }

    #[test]
    fn a_bad_line_refuses_the_body_and_is_named() {
        let good =
            "{\"metric\":{\"__name__\":\"cpu\"},\"values\":[1],\"timestamps\":[1705708800000]}";
        for (bad, says) in [
            (
                "{\"metric\":{\"host\":\"a\"},\"values\":[1],\"timestamps\":[1705708800000]}",
                "__name__",
            ),
            (
                "{\"metric\":{\"__name__\":\"cpu\"},\"values\":[1,2],\"timestamps\":[1705708800000]}",
                "2 values but 1 timestamps",
            ),
            (
                "{\"metric\":{\"__name__\":\"cpu\"},\"values\":[],\"timestamps\":[]}",
                "empty",
            ),
            (
                "{\"metric\":{\"__name__\":\"cpu\"},\"values\":[\"1\"],\"timestamps\":[1705708800000]}",
                "invalid type",
            ),
            (
                "{\"metric\":{\"__name__\":\"cpu\"},\"values\":[1e999],\"timestamps\":[1705708800000]}",
                "export's shape",
            ),
            (
                "{\"metric\":{\"__name__\":\"cpu\"},\"values\":[1],\"timestamps\":[1.5]}",
                "invalid type",
            ),
            (
                "{\"metric\":{\"__name__\":\"cpu\"},\"values\":[1],\"timestamps\":[9223372036854775807]}",
                "out of range",
            ),
            (
                "{\"metric\":{\"__name__\":\"cpu\",\"__name__\":\"mem\"},\"values\":[1],\"timestamps\":[1705708800000]}",
                "given twice",
            ),
            (
                "{\"metric\":{\"__name__\":\"cpu\",\"host\":1},\"values\":[1],\"timestamps\":[1705708800000]}",
                "invalid type",
            ),
            (
                "{\"metric\":{\"__name__\":\"cpu\"},\"values\":[1],\"timestamps\":[1705708800000],\"x\":1}",
                "unknown field",
            ),
            (
                "{\"error\":\"partition 3 could not be read\"}",
                "unknown field",
            ),
            (
                "{\"metric\":{\"__name__\":\"cpu\"},\"values\":[1],\"timestamps\":[17057088",
                "EOF",
            ),
            (
                "{\"metric\":{\"__name__\":\"bad name\"},\"values\":[1],\"timestamps\":[1705708800000]}",
                "metric",
            ),
            (
                "{\"metric\":{\"__name__\":\"cpu\",\"bad key\":\"a\"},\"values\":[1],\"timestamps\":[1705708800000]}",
                "tag keys must match",
            ),
            ("[1,2]", "export's shape"),
        ] {
            let body = format!("{good}\n\n{bad}\n{good}");
            let err = decode(&body, Precision::Millis).expect_err(bad);
            let fields = fields(err);
            assert_eq!(fields.len(), 1, "{bad}: {fields:?}");
            assert_eq!(fields[0].0, "line 3", "{bad}: {fields:?}");
            assert!(fields[0].1.contains(says), "{bad}: {fields:?}");
        }
    }

    #[test]
    fn a_body_holds_at_most_a_batch_and_at_least_one_point() {
        let mut limits = limits();
        limits.max_batch_points = 3;
        let line = "{\"metric\":{\"__name__\":\"cpu\"},\"values\":[1,2],\"timestamps\":[1705708800000,1705708800001]}";
        let now = Timestamp::from_micros(NOW);
        assert_eq!(
            decode_records(line.as_bytes(), Precision::Millis, now, &limits)
                .unwrap()
                .len(),
            2
        );
        let err = decode_records(
            format!("{line}\n{line}").as_bytes(),
            Precision::Millis,
            now,
            &limits,
        )
        .unwrap_err();
        assert_eq!(fields(err)[0].0, "body");
        let err = decode_records(b"\n \n", Precision::Millis, now, &limits).unwrap_err();
        assert_eq!(fields(err)[0].0, "body");
    }

    #[test]
    fn many_bad_lines_stop_at_a_hundred() {
        let body = "x\n".repeat(1_000);
        let fields = fields(decode(&body, Precision::Millis).unwrap_err());
        assert_eq!(fields.len(), MAX_BAD_LINES + 1);
        assert_eq!(fields.last().unwrap().0, "body");
    }
}
