//! Export: what `GET /api/v1/export` reads and the pages it is read in.
//!
//! An export selects series by metric and tag filters and points by time range (a
//! [`Selection`]: the `/aggregate` parameters `metric`, `from`, `to`, `tags`, `hosts`,
//! `datacenters`, parsed by [`crate::query::Query::from_params`], so the same rules and
//! messages apply) and reads each partition in pages of at most [`MAX_PAGE_POINTS`] points,
//! ordered by series id, timestamp and value. A page ends with a [`Cursor`] that says where
//! the next one starts. Series ids are the same on every replica of a partition, so a cursor
//! from one replica continues on another.
//!
//! [`PageBuilder`] is the one place that turns the rows of a page into an [`ExportPage`]
//! and decides its cursor; a store only reads rows.

use serde::{Deserialize, Serialize};

use crate::error::{Error, FieldError, Result};
use crate::model::Tags;
use crate::query::{Query, TagFilter, filters_match};
use crate::time::Timestamp;

/// Most points one page of an export carries. A page is read, sent between nodes and
/// written out whole, a few at a time per export; at this size its node-to-node frame stays
/// under 128 KiB (about 17 bytes a point, plus the series' names and tags), an allocation
/// the server's allocator serves from memory it reuses.
pub const MAX_PAGE_POINTS: usize = 5_000;

/// The parameters [`ExportRequest::from_params`] takes.
pub const EXPORT_PARAMS: &[&str] = &[
    "metric",
    "from",
    "to",
    "tags",
    "hosts",
    "datacenters",
    "allow_partial",
];

/// The series and points an export reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// The metrics, each once; empty: every metric.
    pub metrics: Vec<String>,
    /// All must hold (AND); a filter holds when the tag matches any of its patterns (`*`
    /// wildcards), as in a [`Query`].
    pub filters: Vec<TagFilter>,
    /// Inclusive start; unbounded when `None`.
    pub from: Option<Timestamp>,
    /// Exclusive end; unbounded when `None`.
    pub to: Option<Timestamp>,
}

impl Selection {
    /// Every point of every series.
    pub fn everything() -> Self {
        Selection::default()
    }

    /// Whether the series `metric` with `tags` is selected.
    pub fn matches(&self, metric: &str, tags: &Tags) -> bool {
        self.matches_metric(metric) && filters_match(&self.filters, tags)
    }

    /// Whether `metric` is one of the selected metrics.
    pub fn matches_metric(&self, metric: &str) -> bool {
        self.metrics.is_empty() || self.metrics.iter().any(|m| m == metric)
    }

    /// `[from, to)` in microseconds, open ends made explicit.
    pub fn time_range_micros(&self) -> (i64, i64) {
        (
            self.from.unwrap_or(Timestamp::MIN).as_micros(),
            self.to.unwrap_or(Timestamp::MAX).as_micros(),
        )
    }

    /// Checks the bounds a [`Query`] has on the same fields: at most 64 valid metric names,
    /// each once; at most 64 filter values of at most 256 bytes; `from` before `to`.
    pub fn validate(&self) -> Result<()> {
        self.as_query().validate()
    }

    /// The query with this selection's fields (every metric stands for itself in `metric`).
    fn as_query(&self) -> Query {
        let mut q = Query::new(if self.metrics.is_empty() {
            EVERY_METRIC.to_string()
        } else {
            self.metrics.join(",")
        });
        q.filters = self.filters.clone();
        q.from = self.from;
        q.to = self.to;
        q
    }
}

/// A stand-in metric name for parsing and checking a selection of every metric with the
/// query's rules (a query always names a metric).
const EVERY_METRIC: &str = "every-metric";

/// An export as `GET /api/v1/export` asks for it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportRequest {
    pub selection: Selection,
    /// Whether to export what the live replicas hold when a partition has none (default
    /// false: such an export is refused before it starts).
    pub allow_partial: bool,
}

impl ExportRequest {
    /// Parses the parameters of [`EXPORT_PARAMS`] (already percent-decoded): `metric` (one
    /// or more, comma-separated; every metric when absent), `from`, `to`, `tags`, `hosts`,
    /// `datacenters` and `allow_partial` with the rules and messages of
    /// [`Query::from_params`]. Any other parameter is refused; every bad one is reported.
    pub fn from_params<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> Result<ExportRequest> {
        let mut errors = Vec::new();
        let mut forwarded: Vec<(&str, &str)> = Vec::with_capacity(params.len() + 1);
        let mut every_metric = true;
        for (key, value) in params {
            let (key, value) = (key.as_ref(), value.as_ref());
            if !EXPORT_PARAMS.contains(&key) {
                errors.push(FieldError::new(
                    key,
                    format!(
                        "unknown parameter; an export takes {}",
                        EXPORT_PARAMS.join(", ")
                    ),
                ));
                continue;
            }
            every_metric &= key != "metric";
            forwarded.push((key, value));
        }
        if every_metric {
            forwarded.push(("metric", EVERY_METRIC));
        }
        match Query::from_params(&forwarded) {
            Ok(q) if errors.is_empty() => Ok(ExportRequest {
                selection: Selection {
                    metrics: if every_metric {
                        Vec::new()
                    } else {
                        q.metrics().into_iter().map(str::to_string).collect()
                    },
                    filters: q.filters,
                    from: q.from,
                    to: q.to,
                },
                // Refused unless asked for (a query's default is to allow it).
                allow_partial: q.allow_partial
                    && params.iter().any(|(k, _)| k.as_ref() == "allow_partial"),
            }),
            Ok(_) => Err(Error::Validation(errors)),
            Err(Error::Validation(more)) => {
                errors.extend(more);
                Err(Error::Validation(errors))
            }
            Err(e) => Err(e),
        }
    }
}

/// Where the next page of a partition starts: after the first `skip` points (in value
/// order) of series `series_id` at `timestamp_micros`, which earlier pages held, so points
/// of one series at one timestamp split over two pages are each exported once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub series_id: u64,
    pub timestamp_micros: i64,
    pub skip: u64,
}

impl Cursor {
    /// The start of series `series_id`.
    pub fn start_of(series_id: u64) -> Cursor {
        Cursor {
            series_id,
            timestamp_micros: i64::MIN,
            skip: 0,
        }
    }
}

/// Consecutive points of one series in a page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportSeries {
    pub metric: String,
    pub tags: Tags,
    /// Microseconds since the epoch, ascending.
    pub timestamps: Vec<i64>,
    /// One per timestamp.
    pub values: Vec<f64>,
}

/// One page of a partition's export.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportPage {
    /// In series id order; a series may continue on the next page.
    pub series: Vec<ExportSeries>,
    /// Where the next page starts; `None`: the partition is done.
    pub next: Option<Cursor>,
}

impl ExportPage {
    /// Points in the page.
    pub fn points(&self) -> usize {
        self.series.iter().map(|s| s.values.len()).sum()
    }
}

/// Builds a page from rows read after `after` in the order (series id, timestamp, value),
/// at most `limit` of them, and decides where the next page starts.
pub struct PageBuilder {
    after: Option<Cursor>,
    limit: usize,
    rows: usize,
    page: ExportPage,
    /// The series id of the last series in `page`.
    last_series: Option<u64>,
    /// The last row's series id and timestamp, and how many rows of the page share them.
    last: Option<(u64, i64)>,
    run: u64,
}

impl PageBuilder {
    /// A page of at most `limit` (at least 1) points after `after` (from the start when
    /// `None`).
    pub fn new(after: Option<Cursor>, limit: usize) -> Self {
        PageBuilder {
            after,
            limit: limit.max(1),
            rows: 0,
            page: ExportPage::default(),
            last_series: None,
            last: None,
            run: 0,
        }
    }

    /// Whether the page holds `limit` points.
    pub fn is_full(&self) -> bool {
        self.rows >= self.limit
    }

    /// Adds the next row; `describe` gives the series' metric and tags when the row starts
    /// a new series in this page.
    pub fn push(
        &mut self,
        series_id: u64,
        timestamp_micros: i64,
        value: f64,
        describe: impl FnOnce() -> Result<(String, Tags)>,
    ) -> Result<()> {
        if self.is_full() {
            return Err(Error::Internal(format!(
                "an export page got more than its {} rows",
                self.limit
            )));
        }
        if self.last_series != Some(series_id) {
            let (metric, tags) = describe()?;
            self.page.series.push(ExportSeries {
                metric,
                tags,
                timestamps: Vec::new(),
                values: Vec::new(),
            });
            self.last_series = Some(series_id);
        }
        let series = self.page.series.last_mut().expect("pushed above");
        series.timestamps.push(timestamp_micros);
        series.values.push(value);
        self.rows += 1;
        if self.last == Some((series_id, timestamp_micros)) {
            self.run += 1;
        } else {
            self.last = Some((series_id, timestamp_micros));
            self.run = 1;
        }
        Ok(())
    }

    /// The page. When it is full, the next one starts after its last row; otherwise at
    /// `next_series` (the first selected series the reader left for a later page), or
    /// nowhere: the partition is done.
    pub fn finish(mut self, next_series: Option<u64>) -> ExportPage {
        self.page.next = match self.last {
            Some((series_id, timestamp_micros)) if self.is_full() => {
                let earlier = self
                    .after
                    .filter(|a| a.series_id == series_id && a.timestamp_micros == timestamp_micros)
                    .map_or(0, |a| a.skip);
                Some(Cursor {
                    series_id,
                    timestamp_micros,
                    skip: earlier + self.run,
                })
            }
            _ => next_series.map(Cursor::start_of),
        };
        self.page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages `rows` (sorted by series, timestamp, value) the way a store does: a row is after
    /// the cursor when its (series, timestamp) is not before the cursor's, minus the first
    /// `skip` rows at exactly the cursor's.
    fn read_page(rows: &[(u64, i64, f64)], after: Option<Cursor>, limit: usize) -> ExportPage {
        let skip = after.map_or(0, |a| a.skip) as usize;
        let mut b = PageBuilder::new(after, limit);
        for &(s, t, v) in rows
            .iter()
            .filter(|(s, t, _)| after.is_none_or(|a| (*s, *t) >= (a.series_id, a.timestamp_micros)))
            .skip(skip)
            .take(limit)
        {
            b.push(s, t, v, || Ok((format!("m{s}"), Tags::new())))
                .unwrap();
        }
        b.finish(None)
    }

    fn export_all(rows: &[(u64, i64, f64)], limit: usize) -> (Vec<(u64, i64, f64)>, usize) {
        let mut out = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = read_page(rows, after, limit);
            pages += 1;
            assert!(page.points() <= limit);
            for s in &page.series {
                let id: u64 = s.metric[1..].parse().unwrap();
                for (t, v) in s.timestamps.iter().zip(&s.values) {
                    out.push((id, *t, *v));
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return (out, pages),
            }
            assert!(pages < 10_000, "paging does not end");
        }
    }

    #[test]
    fn pages_cover_every_row_once_even_with_equal_timestamps_across_a_boundary() {
        // Series 1 has five points at one timestamp, two of them equal.
        let rows: Vec<(u64, i64, f64)> = vec![
            (1, 10, 0.5),
            (1, 20, 1.0),
            (1, 20, 1.0),
            (1, 20, 2.0),
            (1, 20, 3.0),
            (1, 20, 4.0),
            (1, 30, 0.0),
            (4, 5, 7.0),
            (4, 5, 8.0),
            (9, -3, 1.0),
        ];
        let mut sorted = rows.clone();
        sorted.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2)));
        for limit in 1..=12 {
            let (out, pages) = export_all(&sorted, limit);
            assert_eq!(out, sorted, "limit {limit}");
            assert!(
                pages <= sorted.len() / limit + 2,
                "limit {limit}: {pages} pages"
            );
        }
    }

    #[test]
    fn a_full_page_continues_after_its_last_row_and_a_short_one_at_the_next_series() {
        let mut b = PageBuilder::new(None, 3);
        for (s, t) in [(1, 5), (2, 7), (2, 7)] {
            b.push(s, t, 0.0, || Ok(("m".into(), Tags::new()))).unwrap();
        }
        assert!(b.is_full());
        assert!(b.push(2, 8, 0.0, || unreachable!()).is_err());
        let page = b.finish(Some(99));
        assert_eq!(page.series.len(), 2);
        assert_eq!(
            page.next,
            Some(Cursor {
                series_id: 2,
                timestamp_micros: 7,
                skip: 2
            })
        );
        // The run continues from the cursor: skips add up.
        let after = page.next;
        let mut b = PageBuilder::new(after, 1);
        b.push(2, 7, 1.0, || Ok(("m".into(), Tags::new()))).unwrap();
        assert_eq!(b.finish(None).next.unwrap().skip, 3);
        // Not full: the next page starts at the series the reader left out, or nowhere.
        let b = PageBuilder::new(None, 3);
        assert_eq!(b.finish(Some(42)).next, Some(Cursor::start_of(42)));
        assert_eq!(PageBuilder::new(None, 3).finish(None).next, None);
    }

    #[test]
    fn parameters_follow_the_query_rules() {
        let r = ExportRequest::from_params::<&str, &str>(&[]).unwrap();
        assert_eq!(r.selection, Selection::everything());
        assert!(!r.allow_partial);
        let r = ExportRequest::from_params(&[
            ("metric", "cpu,mem"),
            ("hosts", "web-*"),
            ("tags", "env:prod"),
            ("from", "2024-01-20"),
            ("to", "2024-01-21T00:00:00Z"),
            ("allow_partial", "true"),
        ])
        .unwrap();
        assert_eq!(r.selection.metrics, ["cpu", "mem"]);
        assert_eq!(r.selection.filters.len(), 2);
        assert!(r.allow_partial);
        let mut tags = Tags::new();
        tags.insert("host".into(), "web-1".into());
        tags.insert("env".into(), "prod".into());
        assert!(r.selection.matches("mem", &tags));
        assert!(!r.selection.matches("disk", &tags));
        tags.insert("env".into(), "dev".into());
        assert!(!r.selection.matches("cpu", &tags));
        assert!(Selection::everything().matches("anything", &Tags::new()));
        let fields = match ExportRequest::from_params(&[
            ("metric", "bad name"),
            ("agg", "avg"),
            ("from", "2024-01-02"),
            ("to", "2024-01-01"),
        ]) {
            Err(Error::Validation(f)) => f.into_iter().map(|f| f.field).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let mut fields = fields;
        fields.sort();
        assert_eq!(fields, ["agg", "metric", "to"]);
    }

    #[test]
    fn a_selection_has_the_bounds_of_a_query() {
        assert!(Selection::everything().validate().is_ok());
        let many = Selection {
            metrics: (0..65).map(|i| format!("m{i}")).collect(),
            ..Selection::default()
        };
        assert!(many.validate().is_err());
        let backwards = Selection {
            from: Some(Timestamp::from_micros(10)),
            to: Some(Timestamp::from_micros(5)),
            ..Selection::default()
        };
        assert!(backwards.validate().is_err());
    }
}
