//! InfluxDB 1.x (1.6): its configuration file, its process and the query set in InfluxQL.
//!
//! Points arrive by line protocol at `POST /write?db=bench&precision=u` into measurement
//! `cpu`, one field per `usage_*` and the host's tags. A query is one `SELECT` over
//! `[from, to)` (`time >= from AND time < to`, nanosecond literals) with one column per field
//! and aggregation, `GROUP BY time(w)` (buckets on the epoch, as RaftMetrics') and the group
//! tags, `fill(none)`. Aggregations: `count`, `min`, `max`, `sum`, `mean`, `last`, `first`,
//! and `percentile(f, p)`, which InfluxDB computes exactly from the sorted points (the
//! element of rank `floor(n * p + 0.5)`, where RaftMetrics' nearest rank is `ceil(n * p)`);
//! `groupby-orderby-limit` is TSBS's form, `time < to ... ORDER BY time DESC LIMIT 5`. Bounds
//! on values are conditions on the field (`"usage_user" > 90`), as TSBS's `high-cpu-all`
//! puts them; with several fields a condition would select rows of all of them, so bounds
//! are translated for one field only.

use std::path::Path;

use raftmetrics_client::Agg;
use serde_json::Value;

use super::plan::{MEASUREMENT, Plan, Rows};
use super::{Server, free_port, json_answer};
use crate::error::{BenchError, Result};
use crate::generator::FIELDS;
use crate::queries::Row;

/// The database the points go to.
pub const DATABASE: &str = "bench";

/// The configuration file of a server with its files under `dir`, HTTP on loopback port
/// `http`, and the RPC service of backup and restore (`bind-address`, 8088 by default) moved
/// to loopback port `rpc`. Usage reporting, the `_internal` monitor database, continuous
/// queries, subscriptions and every other listener are off; storage settings are
/// InfluxDB's defaults (among them `wal-fsync-delay = "0s"`: the WAL is fsynced before a
/// write is answered).
pub fn config(dir: &Path, http: u16, rpc: u16) -> String {
    let d = dir.display();
    format!(
        r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"

[meta]
  dir = "{d}/meta"
  logging-enabled = false

[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http}"
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false

[ifql]
  enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"#
    )
}

/// Starts `influxd` with [`config`] in a directory of its own and creates [`DATABASE`].
pub async fn start(bin: &Path) -> Result<Server> {
    let (http, rpc) = (free_port()?, free_port()?);
    let server = Server::start(
        "InfluxDB",
        bin,
        format!("http://127.0.0.1:{http}"),
        "/ping",
        |dir| {
            let path = dir.join("influxdb.conf");
            // Written here, before the process starts; an error shows as its failed start.
            let _ = std::fs::write(&path, config(dir, http, rpc));
            vec!["-config".into(), path.display().to_string()]
        },
        |dir| vec![dir.join("meta"), dir.join("data"), dir.join("wal")],
    )
    .await?;
    let create = reqwest::Client::new()
        .post(format!("{}/query", server.url))
        .form(&[("q", format!("CREATE DATABASE {DATABASE}"))]);
    let answer = json_answer(create, "InfluxDB: CREATE DATABASE").await?;
    statement_error(&answer)?;
    Ok(server)
}

/// The write endpoint of line protocol with microsecond timestamps.
pub fn write_path() -> String {
    format!("/write?db={DATABASE}&precision=u")
}

/// An identifier in double quotes.
fn ident(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A string literal in single quotes.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The InfluxQL of a plan.
pub fn statement(plan: &Plan) -> Result<String, String> {
    let mut columns = Vec::new();
    for f in &plan.fields {
        let f = ident(f);
        for agg in &plan.aggs {
            columns.push(match agg {
                Agg::Count => format!("count({f})"),
                Agg::Min => format!("min({f})"),
                Agg::Max => format!("max({f})"),
                Agg::Sum => format!("sum({f})"),
                Agg::Avg => format!("mean({f})"),
                // Over one series per group these are RaftMetrics' `last` and `first`; over
                // several with points at the same time, InfluxDB picks one of them where
                // RaftMetrics takes the greatest (smallest) value.
                Agg::Last => format!("last({f})"),
                Agg::First => format!("first({f})"),
                Agg::Percentile(hundredths) => {
                    format!("percentile({f}, {})", f64::from(*hundredths) / 100.0)
                }
            });
        }
    }
    let mut conditions = Vec::new();
    for (key, values) in &plan.filters {
        let alts: Vec<String> = values
            .iter()
            .map(|v| format!("{} = {}", ident(key), literal(v)))
            .collect();
        conditions.push(if alts.len() == 1 {
            alts[0].clone()
        } else {
            format!("({})", alts.join(" OR "))
        });
    }
    if !plan.values.is_empty() {
        let [field] = plan.fields.as_slice() else {
            return Err("bounds on values over several fields".into());
        };
        let ops = [">", ">=", "<", "<="];
        for (op, bound) in ops.into_iter().zip(plan.values.bounds()) {
            if let Some(b) = bound {
                conditions.push(format!("{} {op} {b}", ident(field)));
            }
        }
    }
    if plan.newest.is_none() {
        conditions.push(format!("time >= {}", plan.from * 1000));
    }
    conditions.push(format!("time < {}", plan.to * 1000));
    let mut group = Vec::new();
    if let Some(w) = plan.window {
        group.push(format!("time({w}u)"));
    }
    group.extend(
        plan.group_by
            .iter()
            .filter(|g| *g != "metric")
            .map(|g| ident(g)),
    );
    let mut text = format!(
        "SELECT {} FROM {} WHERE {}",
        columns.join(", "),
        ident(MEASUREMENT),
        conditions.join(" AND ")
    );
    if !group.is_empty() {
        text.push_str(&format!(" GROUP BY {}", group.join(", ")));
    }
    if plan.window.is_some() {
        text.push_str(" fill(none)");
    }
    if let Some(n) = plan.newest {
        text.push_str(&format!(" ORDER BY time DESC LIMIT {n}"));
    }
    Ok(text)
}

/// The error of the first statement of an answer, if any.
fn statement_error(answer: &Value) -> Result<()> {
    if let Some(e) = answer["error"]
        .as_str()
        .or_else(|| answer["results"][0]["error"].as_str())
    {
        return Err(BenchError::Task(format!("InfluxDB: {e}")));
    }
    Ok(())
}

/// The rows of an answer (`epoch=u`) to [`statement`].
pub fn rows_of(plan: &Plan, answer: &Value) -> Result<Vec<Row>> {
    statement_error(answer)?;
    let per_field = plan.aggs.len();
    let mut rows = Rows::default();
    let series = answer["results"][0]["series"].as_array();
    for s in series.into_iter().flatten() {
        let tags = &s["tags"];
        let value_of = |k: &str| tags[k].as_str().map(str::to_string);
        for values in s["values"].as_array().into_iter().flatten() {
            let bucket = match plan.window {
                Some(_) => Some(values[0].as_i64().ok_or_else(|| {
                    BenchError::Task(format!("InfluxDB: a row without time: {values}"))
                })?),
                None => None,
            };
            for (i, field) in plan.fields.iter().enumerate() {
                let key = plan.key(field, value_of, bucket);
                for a in 0..per_field {
                    let v = values[1 + i * per_field + a].as_f64();
                    rows.set(key.clone(), per_field, a, v);
                }
            }
        }
    }
    Ok(plan.finish(rows.into_rows()))
}

/// Runs a plan's statement against `url`; the rows, as RaftMetrics gives them.
pub async fn run(http: &reqwest::Client, url: &str, plan: &Plan) -> Result<Vec<Row>> {
    let q = statement(plan).map_err(BenchError::Config)?;
    let answer = query(http, url, &q).await?;
    rows_of(plan, &answer)
}

async fn query(http: &reqwest::Client, url: &str, q: &str) -> Result<Value> {
    let request =
        http.post(format!("{url}/query"))
            .form(&[("db", DATABASE), ("epoch", "u"), ("q", q)]);
    json_answer(request, "InfluxDB query").await
}

/// Points stored of the dataset's ten fields: a `count` of each, added up.
pub async fn count(http: &reqwest::Client, url: &str) -> Result<u64> {
    let columns: Vec<String> = FIELDS
        .iter()
        .map(|f| format!("count({})", ident(f)))
        .collect();
    let q = format!("SELECT {} FROM {}", columns.join(", "), ident(MEASUREMENT));
    let answer = query(http, url, &q).await?;
    statement_error(&answer)?;
    let row = &answer["results"][0]["series"][0]["values"][0];
    Ok((1..=FIELDS.len())
        .map(|i| row[i].as_u64().unwrap_or(0))
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::plan::buckets;
    use raftmetrics_client::ValueFilter;

    const MIN: i64 = 60_000_000;
    const T0: i64 = 1_451_606_400_000_000;

    #[test]
    fn the_config_moves_every_listener_to_loopback() {
        let text = config(Path::new("/tmp/x"), 18086, 18088);
        assert!(text.contains("bind-address = \"127.0.0.1:18088\""));
        assert!(text.contains("bind-address = \"127.0.0.1:18086\""));
        assert!(text.contains("dir = \"/tmp/x/meta\""));
        assert!(text.contains("wal-dir = \"/tmp/x/wal\""));
        assert!(text.contains("reporting-disabled = true"));
        assert!(!text.contains(":8088") && !text.contains(":8086\""));
        // Every bind address is on loopback.
        for line in text.lines().filter(|l| l.contains("bind-address")) {
            assert!(line.contains("127.0.0.1:"), "{line}");
        }
    }

    #[test]
    fn statements_follow_the_plan() {
        let from = T0 + 30_000_000;
        let p = Plan {
            fields: vec!["usage_user".into()],
            group_by: vec!["hostname".into()],
            filters: vec![("hostname".into(), vec!["host_1".into(), "host_2".into()])],
            values: ValueFilter::default(),
            aggs: vec![Agg::Avg, Agg::P95],
            from,
            to: from + MIN,
            window: Some(MIN),
            buckets: buckets(from, from + MIN, MIN),
            newest: None,
        };
        assert_eq!(
            statement(&p).unwrap(),
            "SELECT mean(\"usage_user\"), percentile(\"usage_user\", 95) FROM \"cpu\" WHERE \
             (\"hostname\" = 'host_1' OR \"hostname\" = 'host_2') AND \
             time >= 1451606430000000000 AND time < 1451606490000000000 \
             GROUP BY time(60000000u), \"hostname\" fill(none)"
        );
        let newest = Plan {
            group_by: Vec::new(),
            filters: Vec::new(),
            aggs: vec![Agg::Max],
            newest: Some(5),
            ..p.clone()
        };
        assert_eq!(
            statement(&newest).unwrap(),
            "SELECT max(\"usage_user\") FROM \"cpu\" WHERE time < 1451606490000000000 \
             GROUP BY time(60000000u) fill(none) ORDER BY time DESC LIMIT 5"
        );
        let last = Plan {
            window: None,
            buckets: Vec::new(),
            filters: Vec::new(),
            aggs: vec![Agg::Last],
            ..p.clone()
        };
        assert_eq!(
            statement(&last).unwrap(),
            "SELECT last(\"usage_user\") FROM \"cpu\" WHERE time >= 1451606430000000000 AND \
             time < 1451606490000000000 GROUP BY \"hostname\""
        );
        assert_eq!(literal("it's"), "'it\\'s'");
    }

    #[test]
    fn value_bounds_are_conditions_on_the_field() {
        let from = T0;
        let to = T0 + 12 * 60 * MIN;
        let high = Plan {
            fields: vec!["usage_user".into()],
            group_by: Vec::new(),
            filters: Vec::new(),
            values: ValueFilter {
                gt: Some(90.0),
                ..ValueFilter::default()
            },
            aggs: vec![Agg::Count],
            from,
            to,
            window: None,
            buckets: Vec::new(),
            newest: None,
        };
        assert_eq!(
            statement(&high).unwrap(),
            "SELECT count(\"usage_user\") FROM \"cpu\" WHERE \"usage_user\" > 90 AND \
             time >= 1451606400000000000 AND time < 1451649600000000000"
        );
        let hosts = Plan {
            group_by: vec!["hostname".into()],
            aggs: vec![Agg::Max],
            ..high.clone()
        };
        assert_eq!(
            statement(&hosts).unwrap(),
            "SELECT max(\"usage_user\") FROM \"cpu\" WHERE \"usage_user\" > 90 AND \
             time >= 1451606400000000000 AND time < 1451649600000000000 GROUP BY \"hostname\""
        );
        let all = Plan {
            values: ValueFilter {
                gt: None,
                ge: Some(-1.5),
                lt: None,
                le: Some(2e3),
            },
            ..high.clone()
        };
        assert!(
            statement(&all)
                .unwrap()
                .contains("WHERE \"usage_user\" >= -1.5 AND \"usage_user\" <= 2000 AND time")
        );
        let fields = Plan {
            fields: vec!["usage_user".into(), "usage_idle".into()],
            group_by: vec!["metric".into()],
            ..high.clone()
        };
        assert!(statement(&fields).is_err());
        // An answer without a time bucket: the time column is InfluxDB's, not a key.
        let answer = serde_json::json!({"results": [{"statement_id": 0, "series": [
            {"name": "cpu", "tags": {"hostname": "host_2"}, "columns": ["time", "max"],
             "values": [[T0 + MIN, 97.5]]},
            {"name": "cpu", "tags": {"hostname": "host_1"}, "columns": ["time", "max"],
             "values": [[T0, 91.25]]}]}]});
        let rows = rows_of(&hosts, &answer).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].key.as_slice(), rows[0].values.as_slice()),
            (["host_1".to_string()].as_slice(), [Some(91.25)].as_slice())
        );
        assert_eq!(rows[1].values, [Some(97.5)]);
    }

    #[test]
    fn answers_become_rows_keyed_like_raftmetrics() {
        let p = Plan {
            fields: vec!["usage_user".into(), "usage_idle".into()],
            group_by: vec!["metric".into()],
            filters: Vec::new(),
            values: ValueFilter::default(),
            aggs: vec![Agg::Max],
            from: T0,
            to: T0 + 2 * MIN,
            window: Some(MIN),
            buckets: buckets(T0, T0 + 2 * MIN, MIN),
            newest: None,
        };
        let answer = serde_json::json!({"results": [{"statement_id": 0, "series": [{
            "name": "cpu", "columns": ["time", "max", "max_1"],
            "values": [[T0, 1.5, 2.5], [T0 + MIN, 3.5, null]]}]}]});
        let rows = rows_of(&p, &answer).unwrap();
        let keys: Vec<Vec<String>> = rows.iter().map(|r| r.key.clone()).collect();
        assert_eq!(
            keys,
            [
                vec!["usage_idle".to_string(), T0.to_string()],
                vec!["usage_idle".to_string(), (T0 + MIN).to_string()],
                vec!["usage_user".to_string(), T0.to_string()],
                vec!["usage_user".to_string(), (T0 + MIN).to_string()],
            ]
        );
        assert_eq!(rows[0].values, [Some(2.5)]);
        assert_eq!(rows[1].values, [None]);
        assert_eq!(rows[3].values, [Some(3.5)]);
        let error = serde_json::json!({"results": [{"statement_id": 0, "error": "boom"}]});
        assert!(rows_of(&p, &error).is_err());
    }
}
