//! The HTTP API's success answers: `{"status":"success","data":...,"warnings":[...]}`.
//! Written by hand: a range answer can hold up to [`crate::eval::MAX_RESULT_POINTS`]
//! points, each a `[time, "value"]` pair.

use crate::eval::RangeResult;
use crate::value::{Labels, Value, write_time, write_value};

fn push_str(out: &mut String, s: &str) {
    // A JSON string of any text cannot fail to serialize.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn push_labels(out: &mut String, labels: &Labels) {
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, k);
        out.push(':');
        push_str(out, v);
    }
    out.push('}');
}

fn push_point(out: &mut String, millis: i64, value: f64) {
    out.push('[');
    write_time(out, millis);
    out.push_str(",\"");
    write_value(out, value);
    out.push_str("\"]");
}

fn envelope(data: &str, warnings: &[String]) -> String {
    let mut out = String::with_capacity(data.len() + 64);
    out.push_str("{\"status\":\"success\",\"data\":");
    out.push_str(data);
    if !warnings.is_empty() {
        out.push_str(",\"warnings\":[");
        for (i, w) in warnings.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_str(&mut out, w);
        }
        out.push(']');
    }
    out.push('}');
    out
}

/// The answer of an instant query evaluated at `millis`.
pub fn instant(value: &Value, millis: i64, warnings: &[String]) -> String {
    let mut d = String::new();
    match value {
        Value::Scalar(v) => {
            d.push_str("{\"resultType\":\"scalar\",\"result\":");
            push_point(&mut d, millis, *v);
        }
        Value::String(s) => {
            d.push_str("{\"resultType\":\"string\",\"result\":[");
            write_time(&mut d, millis);
            d.push(',');
            push_str(&mut d, s);
            d.push(']');
        }
        Value::Vector(samples) => {
            d.push_str("{\"resultType\":\"vector\",\"result\":[");
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    d.push(',');
                }
                d.push_str("{\"metric\":");
                push_labels(&mut d, &s.labels);
                d.push_str(",\"value\":");
                push_point(&mut d, millis, s.value);
                d.push('}');
            }
            d.push(']');
        }
        Value::Matrix(windows) => {
            let mut sorted: Vec<_> = windows.iter().collect();
            sorted.sort_by(|a, b| a.labels.cmp(&b.labels));
            d.push_str("{\"resultType\":\"matrix\",\"result\":[");
            for (i, w) in sorted.iter().enumerate() {
                if i > 0 {
                    d.push(',');
                }
                d.push_str("{\"metric\":");
                push_labels(&mut d, &w.labels);
                d.push_str(",\"values\":[");
                for (j, (t, v)) in w.timestamps.iter().zip(&w.values).enumerate() {
                    if j > 0 {
                        d.push(',');
                    }
                    push_point(&mut d, t.div_euclid(1_000), *v);
                }
                d.push_str("]}");
            }
            d.push(']');
        }
    }
    d.push('}');
    envelope(&d, warnings)
}

/// The answer of a range query.
pub fn range(result: &RangeResult, warnings: &[String]) -> String {
    let mut d = String::from("{\"resultType\":\"matrix\",\"result\":[");
    for (i, (labels, points)) in result.iter().enumerate() {
        if i > 0 {
            d.push(',');
        }
        d.push_str("{\"metric\":");
        push_labels(&mut d, labels);
        d.push_str(",\"values\":[");
        for (j, (t, v)) in points.iter().enumerate() {
            if j > 0 {
                d.push(',');
            }
            push_point(&mut d, *t, *v);
        }
        d.push_str("]}");
    }
    d.push_str("]}");
    envelope(&d, warnings)
}

/// A list of strings (`/api/v1/labels`, `/api/v1/label/{name}/values`).
pub fn strings<'a>(items: impl IntoIterator<Item = &'a str>, warnings: &[String]) -> String {
    let mut d = String::from("[");
    for (i, s) in items.into_iter().enumerate() {
        if i > 0 {
            d.push(',');
        }
        push_str(&mut d, s);
    }
    d.push(']');
    envelope(&d, warnings)
}

/// A list of label sets (`/api/v1/series`).
pub fn series<'a>(items: impl IntoIterator<Item = &'a Labels>, warnings: &[String]) -> String {
    let mut d = String::from("[");
    for (i, labels) in items.into_iter().enumerate() {
        if i > 0 {
            d.push(',');
        }
        push_labels(&mut d, labels);
    }
    d.push(']');
    envelope(&d, warnings)
}

/// Any other answer whose data is already JSON (`buildinfo`, `metadata`).
pub fn data(json: &serde_json::Value) -> String {
    envelope(&json.to_string(), &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Sample;

    #[test]
    fn answers_are_prometheus_json() {
        let mut labels = Labels::new();
        labels.insert("__name__".into(), "up".into());
        labels.insert("job".into(), "a\"b".into());
        let v = Value::Vector(vec![Sample {
            labels: labels.clone(),
            value: 1.5,
        }]);
        let text = instant(&v, 1_700_000_000_500, &["partial".into()]);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["status"], "success");
        assert_eq!(json["data"]["resultType"], "vector");
        assert_eq!(json["data"]["result"][0]["metric"]["job"], "a\"b");
        assert_eq!(json["data"]["result"][0]["value"][0], 1_700_000_000.5);
        assert_eq!(json["data"]["result"][0]["value"][1], "1.5");
        assert_eq!(json["warnings"][0], "partial");
        let text = range(&vec![(labels, vec![(1000, f64::NAN), (2000, 2.0)])], &[]);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["data"]["result"][0]["values"][0][1], "NaN");
        assert!(json.get("warnings").is_none());
        let text = instant(&Value::Scalar(f64::INFINITY), 1000, &[]);
        assert_eq!(
            text,
            "{\"status\":\"success\",\"data\":{\"resultType\":\"scalar\",\"result\":[1,\"+Inf\"]}}"
        );
    }
}
