//! The values a PromQL expression evaluates to, and how the HTTP API writes numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The label of a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// A series' labels, its metric name under [`METRIC_NAME`]; sorted by name, as Prometheus
/// orders them.
pub type Labels = BTreeMap<String, String>;

/// One stored series as a selector reads it: its labels and its samples, ascending by time
/// (microseconds since the epoch).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub timestamps: Vec<i64>,
    pub values: Vec<f64>,
}

impl Series {
    /// The index range of the samples with `from <= t <= to`.
    pub fn range(&self, from: i64, to: i64) -> std::ops::Range<usize> {
        let start = self.timestamps.partition_point(|&t| t < from);
        let end = self.timestamps.partition_point(|&t| t <= to);
        start..end.max(start)
    }

    /// Sorts the samples by time (stably: of two samples at one time the later read wins
    /// where one sample is taken).
    pub fn sort(&mut self) {
        if self.timestamps.is_sorted() {
            return;
        }
        let mut order: Vec<usize> = (0..self.timestamps.len()).collect();
        order.sort_by_key(|&i| self.timestamps[i]);
        self.timestamps = order.iter().map(|&i| self.timestamps[i]).collect();
        self.values = order.iter().map(|&i| self.values[i]).collect();
    }
}

/// A sample of an instant vector: a series' labels and one value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

/// A range vector's series at one evaluation time: labels and the samples in the window.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub labels: Labels,
    pub timestamps: Vec<i64>,
    pub values: Vec<f64>,
}

/// The value of an expression at one evaluation time.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<Window>),
}

impl Value {
    /// Prometheus' name of the value's type, as its error messages spell it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "instant vector",
            Value::Matrix(_) => "range vector",
        }
    }
}

/// Writes `v` as the HTTP API writes a sample value: the shortest decimal that reads back
/// as the same double, never with an exponent, and `NaN`, `+Inf`, `-Inf`.
pub fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Writes a time in milliseconds as the HTTP API does: seconds, and a three-digit fraction
/// when there is one (`1700000000`, `1700000000.250`).
pub fn write_time(out: &mut String, millis: i64) {
    let (sign, millis) = if millis < 0 {
        ("-", millis.unsigned_abs())
    } else {
        ("", millis as u64)
    };
    let _ = write!(out, "{sign}{}", millis / 1000);
    let fraction = millis % 1000;
    if fraction != 0 {
        let _ = write!(out, ".{fraction:03}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: f64) -> String {
        let mut s = String::new();
        write_value(&mut s, v);
        s
    }

    fn time(t: i64) -> String {
        let mut s = String::new();
        write_time(&mut s, t);
        s
    }

    #[test]
    fn values_are_written_as_go_formats_them() {
        assert_eq!(value(1.0), "1");
        assert_eq!(value(0.1), "0.1");
        assert_eq!(value(-2.5), "-2.5");
        assert_eq!(value(1e21), "1000000000000000000000");
        assert_eq!(value(1e-7), "0.0000001");
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(-0.0), "-0");
    }

    #[test]
    fn times_are_seconds_with_milliseconds() {
        assert_eq!(time(1_700_000_000_000), "1700000000");
        assert_eq!(time(1_700_000_000_250), "1700000000.250");
        assert_eq!(time(1_700_000_000_005), "1700000000.005");
        assert_eq!(time(-1_500), "-1.500");
    }

    #[test]
    fn a_range_is_inclusive_at_both_ends() {
        let s = Series {
            labels: Labels::new(),
            timestamps: vec![10, 20, 30, 40],
            values: vec![1.0, 2.0, 3.0, 4.0],
        };
        assert_eq!(s.range(20, 30), 1..3);
        assert_eq!(s.range(21, 29), 2..2);
        assert_eq!(s.range(0, 5), 0..0);
        assert_eq!(s.range(41, 50), 4..4);
    }
}
