//! The JSON shape of `GET /aggregate` answers (the API reference's document).
//!
//! ```json
//! {"metric": "cpu_usage",
//!  "aggregations": {"avg": 68.5, "max": 92.1, "count": 1440, "p95": 85.3},
//!  "is_partial": false, "total_nodes": 2, "responding_nodes": 2, "missing_partitions": [],
//!  "percentiles": {"method": "ddsketch", "relative_error": 0.01},
//!  "by_datacenter": {"us-west": {"avg": 70.2, "count": 720}},
//!  "groups": [{"key": {"datacenter": "us-west"}, "aggregations": {...}, "buckets": [...]}],
//!  "buckets": [{"start": "...", "end": "...", "aggregations": {...}}]}
//! ```
//! `by_<tag>` appears when grouping by exactly one tag (series without the tag are only in
//! `groups`, with a `null` key value); `groups` for any grouping; `buckets` with `window`
//! (per group when grouped). `count` is an integer; undefined values are `null`.

use raftmetrics_core::aggregate::{AggValue, BucketResult, QueryResult};
use raftmetrics_core::query::Agg;
use serde_json::{Map, Value, json};

fn number(agg: Agg, value: Option<f64>) -> Value {
    match value {
        None => Value::Null,
        Some(v) if agg == Agg::Count && v.fract() == 0.0 && v.abs() < 9.0e15 => json!(v as i64),
        Some(v) => serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
    }
}

/// `{"avg": 1.5, "count": 3}`.
pub fn aggregations(values: &[AggValue]) -> Value {
    let mut map = Map::new();
    for v in values {
        map.insert(v.agg.to_string(), number(v.agg, v.value));
    }
    Value::Object(map)
}

fn buckets(list: &[BucketResult]) -> Value {
    Value::Array(
        list.iter()
            .map(|b| {
                json!({
                    "start": b.start,
                    "end": b.end,
                    "aggregations": aggregations(&b.aggregations),
                })
            })
            .collect(),
    )
}

/// The `/aggregate` JSON document of `result`.
pub fn aggregate_document(result: &QueryResult, group_by: &[String], windowed: bool) -> Value {
    let mut doc = Map::new();
    doc.insert("metric".into(), json!(result.metric));
    doc.insert("aggregations".into(), aggregations(&result.aggregations));
    doc.insert("is_partial".into(), json!(result.coverage.is_partial));
    doc.insert("total_nodes".into(), json!(result.coverage.total_nodes));
    doc.insert(
        "responding_nodes".into(),
        json!(result.coverage.responding_nodes),
    );
    doc.insert(
        "missing_partitions".into(),
        json!(result.coverage.missing_partitions),
    );
    if let Some(p) = &result.percentiles {
        doc.insert(
            "percentiles".into(),
            json!({"method": p.method, "relative_error": p.relative_error}),
        );
    }
    if !group_by.is_empty() {
        if let [tag] = group_by {
            let mut by = Map::new();
            for g in &result.groups {
                if let Some((_, Some(value))) = g.key.first() {
                    by.insert(value.clone(), aggregations(&g.aggregations));
                }
            }
            doc.insert(format!("by_{tag}"), Value::Object(by));
        }
        let groups = result
            .groups
            .iter()
            .map(|g| {
                let key: Map<String, Value> = g
                    .key
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_ref().map_or(Value::Null, |v| json!(v))))
                    .collect();
                let mut obj = Map::new();
                obj.insert("key".into(), Value::Object(key));
                obj.insert("aggregations".into(), aggregations(&g.aggregations));
                if windowed {
                    obj.insert("buckets".into(), buckets(&g.buckets));
                }
                Value::Object(obj)
            })
            .collect();
        doc.insert("groups".into(), Value::Array(groups));
    } else if windowed {
        doc.insert("buckets".into(), buckets(&result.buckets));
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmetrics_core::aggregate::{Coverage, GroupResult};

    #[test]
    fn one_tag_groups_also_appear_by_tag() {
        let result = QueryResult {
            metric: "cpu".into(),
            aggregations: vec![
                AggValue {
                    agg: Agg::Avg,
                    value: Some(1.5),
                },
                AggValue {
                    agg: Agg::Count,
                    value: Some(2.0),
                },
            ],
            groups: vec![GroupResult {
                key: vec![("dc".into(), Some("west".into()))],
                aggregations: vec![AggValue {
                    agg: Agg::Count,
                    value: Some(2.0),
                }],
                buckets: vec![],
            }],
            buckets: vec![],
            percentiles: None,
            coverage: Coverage::complete(),
        };
        let doc = aggregate_document(&result, &["dc".into()], false);
        assert_eq!(doc["aggregations"]["count"], json!(2));
        assert_eq!(doc["aggregations"]["avg"], json!(1.5));
        assert_eq!(doc["by_dc"]["west"]["count"], json!(2));
        assert_eq!(doc["groups"][0]["key"]["dc"], json!("west"));
        assert_eq!(doc["is_partial"], json!(false));
    }
}
