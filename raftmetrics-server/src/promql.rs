//! What the Prometheus query API ([`crate::http::prometheus`]) needs from the nodes: the
//! export selection a PromQL selector reads, series gathered from export pages, and the
//! pushed-down evaluation of a range function ([`raftmetrics_promql::plan::PushDown`]) on
//! a worker, over one partition it holds.
//!
//! Metric names: a stored name's `.` reads as `:` in PromQL (remote write stores `:` as
//! `.`, see [`crate::decode::remote_write`]), so `job:requests:rate5m` selects what was
//! written under that name.

use std::collections::BTreeMap;

use raftmetrics_core::Timestamp;
use raftmetrics_core::error::Error;
use raftmetrics_core::export::{ExportPage, ExportSeries, Selection};
use raftmetrics_core::query::TagFilter;
use raftmetrics_promql::eval::{self, Inputs, PushedResult};
use raftmetrics_promql::plan::{Fetch, plan};

use raftmetrics_promql::{Labels, METRIC_NAME, MatchOp, PromError, Series};

/// Most samples one query reads from the stores, raw or on a worker for a pushed-down
/// call (Prometheus' `query.max-samples` counts samples held at once; this counts every
/// sample read).
pub const MAX_SAMPLES: usize = 10_000_000;

/// Most series one selector reads.
pub const MAX_SERIES: usize = 100_000;

/// The stored metric a PromQL metric name reads (`:` is stored as `.`).
pub fn stored_metric(name: &str) -> String {
    name.replace(':', ".")
}

/// The PromQL metric name of a stored metric.
pub fn promql_metric(stored: &str) -> String {
    stored.replace('.', ":")
}

/// The export selection that reads at least the series `fetch` selects over its range
/// (`None`: no stored series can match, such as a metric name no store accepts). The
/// metric and the exact label values select series in the stores; every matcher is
/// checked again by [`Gather`].
pub fn selection(fetch: &Fetch) -> Option<Selection> {
    let mut metrics: Vec<String> = fetch.metric().map(stored_metric).into_iter().collect();
    let mut filters: Vec<TagFilter> = fetch
        .exact_labels()
        .filter(|(_, v)| !v.contains('*'))
        .map(|(k, v)| TagFilter {
            key: k.to_string(),
            patterns: vec![v.to_string()],
        })
        .collect();
    // A regex that is an alternation of literals (`host_1|host_2`) selects exactly those
    // values: the store can select by them too.
    for m in &fetch.matchers {
        let MatchOp::Re(_) = m.op else { continue };
        let Some(values) = literal_alternatives(&m.value) else {
            continue;
        };
        if m.name == METRIC_NAME {
            if metrics.is_empty() {
                metrics = values.iter().map(|v| stored_metric(v)).collect();
                metrics.sort();
                metrics.dedup();
            }
        } else {
            filters.push(TagFilter {
                key: m.name.clone(),
                patterns: values,
            });
        }
    }
    let mut selection = Selection {
        metrics,
        filters,
        from: Some(Timestamp::from_micros(fetch.from.saturating_mul(1_000))),
        to: Some(Timestamp::from_micros(
            fetch.to.saturating_mul(1_000).saturating_add(1),
        )),
    };
    if selection.validate().is_ok() {
        return Some(selection);
    }
    // Filters beyond a selection's bounds (too many, too long) are left to the check here.
    selection.filters.clear();
    selection.validate().is_ok().then_some(selection)
}

/// The alternatives of a regex that is only literals joined by `|` (letters, digits, `_`,
/// `-` and `:`, none of them special in a regex, none empty), which a fully anchored match
/// accepts exactly; `None` for any other regex.
fn literal_alternatives(regex: &str) -> Option<Vec<String>> {
    let literal = |a: &str| {
        !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':')
    };
    let values: Vec<String> = regex.split('|').map(str::to_string).collect();
    values.iter().all(|v| literal(v)).then_some(values)
}

/// The message of a query over [`MAX_SAMPLES`], Prometheus' own.
pub const TOO_MANY_SAMPLES: &str =
    "query processing would load too many samples into memory in query execution";

/// Series gathered from export pages: those every matcher of the fetch selects, with
/// their samples, counted against the bounds.
pub struct Gather<'a> {
    fetch: &'a Fetch,
    series: BTreeMap<Labels, Series>,
}

impl<'a> Gather<'a> {
    pub fn new(fetch: &'a Fetch) -> Self {
        Gather {
            fetch,
            series: BTreeMap::new(),
        }
    }

    /// Takes one page; `samples` counts the samples read so far, across a query.
    pub fn page(&mut self, page: ExportPage, samples: &mut usize) -> Result<(), PromError> {
        for s in page.series {
            let mut labels: Labels = s.tags;
            labels.insert(METRIC_NAME.to_string(), promql_metric(&s.metric));
            if !self.fetch.matches(&labels) {
                continue;
            }
            *samples += s.timestamps.len();
            if *samples > MAX_SAMPLES {
                return Err(PromError::TooLarge(TOO_MANY_SAMPLES.into()));
            }
            let entry = self
                .series
                .entry(labels)
                .or_insert_with_key(|labels| Series {
                    labels: labels.clone(),
                    ..Series::default()
                });
            entry.timestamps.extend_from_slice(&s.timestamps);
            entry.values.extend_from_slice(&s.values);
            if self.series.len() > MAX_SERIES {
                return Err(PromError::TooLarge(format!(
                    "the selection holds more than {MAX_SERIES} series; narrow it"
                )));
            }
        }
        Ok(())
    }

    /// The series, each sorted by time.
    pub fn finish(self) -> Vec<Series> {
        self.series
            .into_values()
            .map(|mut s| {
                s.sort();
                s
            })
            .collect()
    }
}

/// A pushed-down expression's result over some partitions: `text` (a range function of
/// one selector, or a mergeable aggregation of one; see
/// [`raftmetrics_promql::plan::PushDown`]) evaluated at `start`, `start + step`, ... `end` (milliseconds) over the series
/// `read` returns for the selector's selection (whole series, at most [`MAX_SAMPLES`]
/// points: [`raftmetrics_core::Store::read_series`]).
pub fn evaluate_pushed(
    text: &str,
    (start, end, step): (i64, i64, i64),
    read: impl FnOnce(&Selection, usize) -> Result<Vec<ExportSeries>, Error>,
) -> Result<PushedResult, EvaluateError> {
    let plan = plan(text, start, end)?;
    let mut fetches = plan.fetches.iter();
    let (Some((key, fetch)), None) = (fetches.next(), fetches.next()) else {
        return Err(
            PromError::bad(format!("{text:?} is not a range function of one selector")).into(),
        );
    };
    let mut gather = Gather::new(fetch);
    if let Some(selection) = selection(fetch) {
        let series = read(&selection, MAX_SAMPLES).map_err(|e| match e {
            Error::InvalidRequest(_) => {
                EvaluateError::Query(PromError::TooLarge(TOO_MANY_SAMPLES.into()))
            }
            other => EvaluateError::Node(other),
        })?;
        let mut samples = 0usize;
        gather.page(ExportPage { series, next: None }, &mut samples)?;
    }
    let mut inputs = Inputs::default();
    inputs.series.insert(key.clone(), gather.finish());
    Ok(eval::pushed(&plan.expr, &inputs, start, end, step)?)
}

/// Why a pushed-down evaluation failed: the query, or the node.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error(transparent)]
    Query(#[from] PromError),
    #[error(transparent)]
    Node(#[from] Error),
}

#[cfg(test)]
mod tests {
    use raftmetrics_promql::plan::plan;

    use super::*;

    fn selection_of(query: &str) -> Selection {
        let p = plan(query, 0, 0).unwrap();
        selection(p.fetches.values().next().unwrap()).unwrap()
    }

    #[test]
    fn alternations_of_literals_select_in_the_store() {
        let s = selection_of("m{host=~\"host_1|host_2\", dc=\"east\"}");
        assert_eq!(s.metrics, vec!["m".to_string()]);
        assert!(s.filters.contains(&TagFilter {
            key: "host".into(),
            patterns: vec!["host_1".into(), "host_2".into()],
        }));
        assert!(s.filters.contains(&TagFilter {
            key: "dc".into(),
            patterns: vec!["east".into()],
        }));
        let s = selection_of("{__name__=~\"a:b|c\", x=\"1\"}");
        assert_eq!(s.metrics, vec!["a.b".to_string(), "c".to_string()]);
        // Anything else is left to the check on what the store returns: a superset.
        for query in [
            "m{host=~\"host.1\"}",
            "m{host=~\"host_1|\"}",
            "m{host=~\"h*\"}",
            "m{host!~\"a|b\"}",
            "m{host=~\"(a|b)\"}",
        ] {
            assert!(selection_of(query).filters.is_empty(), "{query}");
        }
    }
}
