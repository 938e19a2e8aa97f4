//! Export: points out of the cluster, on a node that serves queries.
//!
//! - `GET /api/v1/export`: JSON lines in VictoriaMetrics' export shape, one line per run of a
//!   series' points, `{"metric":{"__name__":"cpu","host":"a"},"values":[1.5,2.0],
//!   "timestamps":[1705708800000,1705708860000]}`, timestamps in milliseconds (`precision=us`
//!   for microseconds), at most `max_rows_per_line` points (default and most:
//!   [`MAX_ROWS_PER_LINE`]) per line. A series may span several lines.
//! - `GET /api/v1/export/csv`: CSV (RFC 4180) with the header `metric,timestamp,value,tags`;
//!   timestamps in RFC 3339 with six fraction digits, tags as `key=value` pairs joined by
//!   `;` in key order, a `;` or `\` in a value escaped with `\`, the field quoted when it
//!   holds a `,` or `"`.
//!
//! Both take the selection of [`ExportRequest::from_params`] (`metric`, `from`, `to`, `tags`,
//! `hosts`, `datacenters`, `allow_partial`). The answer is streamed as the node reads the
//! partitions page by page ([`crate::export`]), so no process holds more than a few pages.
//! Its status is decided before the first byte: 503 when a partition has no live replica
//! (unless `allow_partial=true`; the partitions left out are then named in the
//! [`MISSING_PARTITIONS_HEADER`] header). When a page cannot be read later on, the last line
//! is an error line (`{"error":"..."}`, or the CSV record `#error,,,"..."`) and, once it had
//! time to leave, the response is cut off without its final chunk, so that no client
//! mistakes it for a complete export, even one that never looks at the last line.
//! Errors before the stream are answered in the Prometheus API's shape, like every
//! `/api/v1/` endpoint.

use std::collections::VecDeque;
use std::future::Future as _;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::get;
use hyper::body::Frame;
use raftmetrics_core::Timestamp;
use raftmetrics_core::error::{Error, FieldError};
use raftmetrics_core::export::{ExportPage, ExportRequest, ExportSeries};
use raftmetrics_core::model::Tags;
use tokio::sync::mpsc;

use super::error::ApiError;
use crate::export::Precision;
use crate::frontend::Frontend;

/// Most points on one JSON line.
pub const MAX_ROWS_PER_LINE: usize = 10_000;

/// The header that names the partitions a partial export left out (`3,5`).
pub const MISSING_PARTITIONS_HEADER: &str = "raftmetrics-missing-partitions";

/// The CSV header line.
pub const CSV_HEADER: &str = "metric,timestamp,value,tags\n";

/// The export routes, on a node that serves queries.
pub fn routes<F: Frontend>(frontend: Arc<F>) -> Router {
    let mut routes = Router::new();
    if frontend.serves_queries() {
        routes = routes
            .route("/api/v1/export", get(export_json::<F>))
            .route("/api/v1/export/csv", get(export_csv::<F>));
    }
    routes.with_state(frontend)
}

/// How exported points are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    Json {
        precision: Precision,
        max_rows_per_line: usize,
    },
    Csv,
}

impl LineFormat {
    fn content_type(self) -> &'static str {
        match self {
            LineFormat::Json { .. } => "application/x-ndjson",
            LineFormat::Csv => "text/csv; charset=utf-8; header=present",
        }
    }

    /// What the body starts with.
    fn header(self) -> Option<&'static str> {
        match self {
            LineFormat::Json { .. } => None,
            LineFormat::Csv => Some(CSV_HEADER),
        }
    }

    /// Appends the lines of `page` to `out`.
    pub fn write_page(self, page: &ExportPage, out: &mut Chunks) {
        for series in &page.series {
            match self {
                LineFormat::Json {
                    precision,
                    max_rows_per_line,
                } => write_json_series(series, precision, max_rows_per_line, out),
                LineFormat::Csv => write_csv_series(series, out),
            }
        }
    }

    /// Appends the line that ends an export that stopped with `message`.
    pub fn write_error(self, message: &str, out: &mut Vec<u8>) {
        match self {
            LineFormat::Json { .. } => {
                out.extend_from_slice(b"{\"error\":");
                json_string(message, out);
                out.extend_from_slice(b"}\n");
            }
            LineFormat::Csv => {
                out.extend_from_slice(b"#error,,,");
                out.extend_from_slice(csv_quoted(message).as_bytes());
                out.push(b'\n');
            }
        }
    }
}

/// Appends `text` as a JSON string.
fn json_string(text: &str, out: &mut Vec<u8>) {
    // Serializing a string into memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// Appends a finite value in its shortest exact decimal form (`1.5`, `2.0`, `1e+300`).
fn number(value: f64, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, &value);
}

/// The bytes of a response in chunks of about [`CHUNK_BYTES`], so that writing a page out
/// needs no buffer of the page's size.
#[derive(Default)]
pub struct Chunks {
    out: Vec<u8>,
    ready: VecDeque<Bytes>,
}

/// The size a response chunk is cut at.
pub const CHUNK_BYTES: usize = 32 * 1024;

impl Chunks {
    /// Sets the chunk being written aside once it reached [`CHUNK_BYTES`].
    fn cut_if_full(&mut self) {
        if self.out.len() >= CHUNK_BYTES {
            self.cut();
        }
    }

    /// Sets the chunk being written aside (when it holds anything).
    fn cut(&mut self) {
        if !self.out.is_empty() {
            let full = std::mem::replace(&mut self.out, Vec::with_capacity(CHUNK_BYTES + 1024));
            self.ready.push_back(Bytes::from(full));
        }
    }

    /// The next complete chunk.
    fn next(&mut self) -> Option<Bytes> {
        self.ready.pop_front()
    }
}

fn write_json_series(
    series: &ExportSeries,
    precision: Precision,
    max_rows_per_line: usize,
    chunks: &mut Chunks,
) {
    let mut head = Vec::with_capacity(64);
    head.extend_from_slice(b"{\"metric\":{\"__name__\":");
    json_string(&series.metric, &mut head);
    for (key, value) in &series.tags {
        head.push(b',');
        json_string(key, &mut head);
        head.push(b':');
        json_string(value, &mut head);
    }
    head.extend_from_slice(b"},\"values\":[");
    let rows = max_rows_per_line.max(1);
    for (values, timestamps) in series
        .values
        .chunks(rows)
        .zip(series.timestamps.chunks(rows))
    {
        chunks.out.extend_from_slice(&head);
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                chunks.out.push(b',');
            }
            number(*v, &mut chunks.out);
            chunks.cut_if_full();
        }
        chunks.out.extend_from_slice(b"],\"timestamps\":[");
        for (i, t) in timestamps.iter().enumerate() {
            if i > 0 {
                chunks.out.push(b',');
            }
            let t = precision.of_micros(*t);
            let _ = write!(chunks.out, "{t}");
            chunks.cut_if_full();
        }
        chunks.out.extend_from_slice(b"]}\n");
    }
}

fn write_csv_series(series: &ExportSeries, chunks: &mut Chunks) {
    let tags = csv_tags(&series.tags);
    for (t, v) in series.timestamps.iter().zip(&series.values) {
        chunks.cut_if_full();
        let out = &mut chunks.out;
        // Metric names are `[a-zA-Z0-9_.-]`: never quoted.
        out.extend_from_slice(series.metric.as_bytes());
        out.push(b',');
        out.extend_from_slice(Timestamp::from_micros(*t).to_rfc3339_micros().as_bytes());
        out.push(b',');
        number(*v, out);
        out.push(b',');
        out.extend_from_slice(tags.as_bytes());
        out.push(b'\n');
    }
}

/// The tags field of a CSV record: `key=value;key=value` (keys are `[a-zA-Z0-9_.-]`; a `;`
/// or `\` in a value is escaped with `\`), quoted when needed.
pub fn csv_tags(tags: &Tags) -> String {
    let mut text = String::new();
    for (i, (key, value)) in tags.iter().enumerate() {
        if i > 0 {
            text.push(';');
        }
        text.push_str(key);
        text.push('=');
        for c in value.chars() {
            if c == ';' || c == '\\' {
                text.push('\\');
            }
            text.push(c);
        }
    }
    if text.contains([',', '"', '\n', '\r']) {
        csv_quoted(&text)
    } else {
        text
    }
}

/// `text` as a quoted CSV field.
fn csv_quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// Splits the parameters into the format's own and the selection's, and parses both; every
/// bad parameter is reported.
fn parse(params: &[(String, String)], csv: bool) -> Result<(LineFormat, ExportRequest), Error> {
    let mut errors = Vec::new();
    let mut precision = Precision::Millis;
    let mut max_rows_per_line = MAX_ROWS_PER_LINE;
    let mut seen: Vec<&str> = Vec::new();
    let mut selection: Vec<(&str, &str)> = Vec::new();
    for (key, value) in params {
        let own = !csv && matches!(key.as_str(), "precision" | "max_rows_per_line");
        if !own {
            selection.push((key, value));
            continue;
        }
        if seen.contains(&key.as_str()) {
            errors.push(FieldError::new(key.clone(), "must be given at most once"));
            continue;
        }
        seen.push(key);
        match (key.as_str(), value.as_str()) {
            ("precision", text) => match Precision::parse(text) {
                Some(p) => precision = p,
                None => errors.push(FieldError::new("precision", Precision::EXPECTED)),
            },
            (_, text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_ROWS_PER_LINE).contains(&n) => max_rows_per_line = n,
                _ => errors.push(FieldError::new(
                    "max_rows_per_line",
                    format!("must be a whole number from 1 to {MAX_ROWS_PER_LINE}"),
                )),
            },
        }
    }
    let request = match ExportRequest::from_params(&selection) {
        Ok(request) if errors.is_empty() => request,
        Ok(_) => return Err(Error::Validation(errors)),
        Err(Error::Validation(more)) => {
            errors.extend(more);
            return Err(Error::Validation(errors));
        }
        Err(e) => return Err(e),
    };
    let format = if csv {
        LineFormat::Csv
    } else {
        LineFormat::Json {
            precision,
            max_rows_per_line,
        }
    };
    Ok((format, request))
}

/// `GET /api/v1/export`.
async fn export_json<F: Frontend>(
    State(frontend): State<Arc<F>>,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (format, request) = parse(&params, false)?;
    export(frontend, format, request).await
}

/// `GET /api/v1/export/csv`.
async fn export_csv<F: Frontend>(
    State(frontend): State<Arc<F>>,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (format, request) = parse(&params, true)?;
    export(frontend, format, request).await
}

/// Starts the export (its errors are the answer) and streams its pages.
async fn export<F: Frontend>(
    frontend: Arc<F>,
    format: LineFormat,
    request: ExportRequest,
) -> Result<Response, ApiError> {
    let export = frontend.export(request).await?;
    let mut response = Response::new(Body::new(ExportBody {
        format,
        header: format.header().map(|h| Bytes::from_static(h.as_bytes())),
        pages: export.pages,
        chunks: Chunks::default(),
        state: BodyState::Streaming,
    }));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if !export.missing.is_empty() {
        let missing = export
            .missing
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if let Ok(value) = HeaderValue::from_str(&missing) {
            headers.insert(MISSING_PARTITIONS_HEADER, value);
        }
    }
    Ok(response)
}

/// Why an export's response was cut off (after its error line).
#[derive(Debug, thiserror::Error)]
#[error("export stopped: {0}")]
pub struct ExportStopped(String);

/// How long the error line has to leave before the response is cut off.
const ERROR_LINE_GRACE: Duration = Duration::from_millis(100);

enum BodyState {
    Streaming,
    /// The error line was handed over: the response is cut off once `grace` elapsed (the
    /// connection writes out what it holds while the body waits).
    CutOff {
        message: String,
        grace: Pin<Box<tokio::time::Sleep>>,
    },
    Done,
}

/// A response body that writes each page as it arrives.
struct ExportBody {
    format: LineFormat,
    header: Option<Bytes>,
    pages: mpsc::Receiver<Result<ExportPage, Error>>,
    /// The last page's bytes not yet handed over.
    chunks: Chunks,
    state: BodyState,
}

impl hyper::body::Body for ExportBody {
    type Data = Bytes;
    type Error = ExportStopped;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExportStopped>>> {
        let this = self.get_mut();
        if let Some(header) = this.header.take() {
            return Poll::Ready(Some(Ok(Frame::data(header))));
        }
        loop {
            if let Some(chunk) = this.chunks.next() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            match std::mem::replace(&mut this.state, BodyState::Done) {
                BodyState::Done => return Poll::Ready(None),
                BodyState::CutOff { message, mut grace } => {
                    if grace.as_mut().poll(cx).is_pending() {
                        this.state = BodyState::CutOff { message, grace };
                        return Poll::Pending;
                    }
                    return Poll::Ready(Some(Err(ExportStopped(message))));
                }
                BodyState::Streaming => match this.pages.poll_recv(cx) {
                    Poll::Pending => {
                        this.state = BodyState::Streaming;
                        return Poll::Pending;
                    }
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Ready(Some(Ok(page))) => {
                        this.state = BodyState::Streaming;
                        this.format.write_page(&page, &mut this.chunks);
                        this.chunks.cut();
                    }
                    Poll::Ready(Some(Err(e))) => {
                        let message = match e {
                            Error::Raft(m) => m,
                            other => other.to_string(),
                        };
                        tracing::warn!(error = %message, "an export stopped");
                        let mut out = Vec::new();
                        this.format.write_error(&message, &mut out);
                        this.state = BodyState::CutOff {
                            message,
                            grace: Box::pin(tokio::time::sleep(ERROR_LINE_GRACE)),
                        };
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.header.is_none()
            && self.chunks.ready.is_empty()
            && matches!(self.state, BodyState::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(metric: &str, tags: &[(&str, &str)], points: &[(i64, f64)]) -> ExportSeries {
        ExportSeries {
            metric: metric.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timestamps: points.iter().map(|p| p.0).collect(),
            values: points.iter().map(|p| p.1).collect(),
        }
    }

    fn text(format: LineFormat, page: &ExportPage) -> String {
        let mut chunks = Chunks::default();
        format.write_page(page, &mut chunks);
        chunks.cut();
        let mut out = Vec::new();
        while let Some(chunk) = chunks.next() {
            assert!(
                chunk.len() < CHUNK_BYTES + 64,
                "chunks are cut near their size"
            );
            out.extend_from_slice(&chunk);
        }
        String::from_utf8(out).unwrap()
    }

    const JSON_MS: LineFormat = LineFormat::Json {
        precision: Precision::Millis,
        max_rows_per_line: MAX_ROWS_PER_LINE,
    };

    #[test]
    fn json_lines_have_victoriametrics_shape() {
        let page = ExportPage {
            series: vec![
                series(
                    "cpu_usage",
                    &[("host", "a"), ("dc", "x\"y")],
                    &[(1_705_708_800_000_123, 1.5), (1_705_708_801_000_000, 2.0)],
                ),
                series("m", &[], &[(999, -0.25)]),
            ],
            next: None,
        };
        assert_eq!(
            text(JSON_MS, &page),
            "{\"metric\":{\"__name__\":\"cpu_usage\",\"dc\":\"x\\\"y\",\"host\":\"a\"},\
             \"values\":[1.5,2.0],\"timestamps\":[1705708800000,1705708801000]}\n\
             {\"metric\":{\"__name__\":\"m\"},\"values\":[-0.25],\"timestamps\":[0]}\n"
        );
        let us = LineFormat::Json {
            precision: Precision::Micros,
            max_rows_per_line: 1,
        };
        let lines = text(us, &page);
        let lines: Vec<serde_json::Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "one point per line");
        assert_eq!(lines[0]["timestamps"][0], 1_705_708_800_000_123i64);
        assert_eq!(lines[1]["metric"]["dc"], "x\"y");
        assert_eq!(lines[1]["values"][0], 2.0);
    }

    #[test]
    fn a_long_series_is_split_into_bounded_lines() {
        let points: Vec<(i64, f64)> = (0..25_001).map(|i| (i * 1_000, i as f64)).collect();
        let page = ExportPage {
            series: vec![series("m", &[("k", "v")], &points)],
            next: None,
        };
        let out = text(JSON_MS, &page);
        let sizes: Vec<usize> = out
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(
                    v["values"].as_array().unwrap().len(),
                    v["timestamps"].as_array().unwrap().len()
                );
                v["values"].as_array().unwrap().len()
            })
            .collect();
        assert_eq!(sizes, vec![10_000, 10_000, 5_001]);
    }

    #[test]
    fn csv_records_quote_and_escape_what_they_must() {
        let page = ExportPage {
            series: vec![
                series(
                    "cpu",
                    &[("host", "a,b"), ("note", "x;y=z\\\"q\"")],
                    &[(1_705_708_800_000_001, 1e300)],
                ),
                series("mem", &[], &[(0, 3.0)]),
                series("disk", &[("host", "web-1"), ("dc", "eu")], &[(5, -1.0)]),
            ],
            next: None,
        };
        assert_eq!(
            text(LineFormat::Csv, &page),
            "cpu,2024-01-20T00:00:00.000001Z,1e+300,\"host=a,b;note=x\\;y=z\\\\\"\"q\"\"\"\n\
             mem,1970-01-01T00:00:00.000000Z,3.0,\n\
             disk,1970-01-01T00:00:00.000005Z,-1.0,dc=eu;host=web-1\n"
        );
        let mut out = Vec::new();
        LineFormat::Csv.write_error("partition 3, gone", &mut out);
        assert_eq!(out, b"#error,,,\"partition 3, gone\"\n");
        let mut out = Vec::new();
        JSON_MS.write_error("partition \"3\"", &mut out);
        assert_eq!(out, b"{\"error\":\"partition \\\"3\\\"\"}\n");
    }

    fn body(format: LineFormat, pages: mpsc::Receiver<Result<ExportPage, Error>>) -> ExportBody {
        ExportBody {
            format,
            header: format.header().map(|h| Bytes::from_static(h.as_bytes())),
            pages,
            chunks: Chunks::default(),
            state: BodyState::Streaming,
        }
    }

    async fn next_frame(body: &mut ExportBody) -> Option<Result<Bytes, ExportStopped>> {
        let frame =
            std::future::poll_fn(|cx| hyper::body::Body::poll_frame(Pin::new(&mut *body), cx))
                .await?;
        Some(frame.map(|f| f.into_data().expect("data frames only")))
    }

    #[tokio::test]
    async fn the_body_writes_each_page_as_it_comes_and_ends_with_the_channel() {
        let (tx, rx) = mpsc::channel(4);
        let mut b = body(LineFormat::Csv, rx);
        assert_eq!(next_frame(&mut b).await.unwrap().unwrap(), CSV_HEADER);
        for v in [1.0, 2.0] {
            let page = ExportPage {
                series: vec![series("m", &[], &[(0, v)])],
                next: None,
            };
            tx.send(Ok(page)).await.unwrap();
        }
        let line = next_frame(&mut b).await.unwrap().unwrap();
        assert_eq!(line, "m,1970-01-01T00:00:00.000000Z,1.0,\n");
        assert_eq!(
            next_frame(&mut b).await.unwrap().unwrap(),
            "m,1970-01-01T00:00:00.000000Z,2.0,\n"
        );
        drop(tx);
        assert!(next_frame(&mut b).await.is_none());
        assert!(hyper::body::Body::is_end_stream(&b));
    }

    #[tokio::test]
    async fn an_error_is_the_last_line_then_the_response_is_cut_off() {
        let (tx, rx) = mpsc::channel(4);
        let mut b = body(JSON_MS, rx);
        let page = ExportPage {
            series: vec![series("m", &[], &[(5_000, 1.0)])],
            next: None,
        };
        tx.send(Ok(page)).await.unwrap();
        tx.send(Err(Error::Raft("partition 2 could not be read".into())))
            .await
            .unwrap();
        assert_eq!(
            next_frame(&mut b).await.unwrap().unwrap(),
            "{\"metric\":{\"__name__\":\"m\"},\"values\":[1.0],\"timestamps\":[5]}\n"
        );
        assert_eq!(
            next_frame(&mut b).await.unwrap().unwrap(),
            "{\"error\":\"partition 2 could not be read\"}\n"
        );
        let started = tokio::time::Instant::now();
        let cut = next_frame(&mut b).await.unwrap().unwrap_err();
        assert!(
            started.elapsed() >= ERROR_LINE_GRACE,
            "the error line has time to leave"
        );
        assert!(cut.to_string().contains("partition 2"), "{cut}");
        assert!(next_frame(&mut b).await.is_none());
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_of_the_format_and_of_the_selection() {
        let (format, request) = parse(
            &params(&[
                ("metric", "cpu"),
                ("precision", "us"),
                ("max_rows_per_line", "500"),
                ("hosts", "web-*"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            format,
            LineFormat::Json {
                precision: Precision::Micros,
                max_rows_per_line: 500
            }
        );
        assert_eq!(request.selection.metrics, ["cpu"]);
        let (format, request) = parse(&params(&[]), true).unwrap();
        assert_eq!(format, LineFormat::Csv);
        assert!(request.selection.metrics.is_empty());
        let bad = |pairs: &[(&str, &str)], csv: bool| match parse(&params(pairs), csv) {
            Err(Error::Validation(f)) => {
                let mut fields: Vec<String> = f.into_iter().map(|f| f.field).collect();
                fields.sort();
                fields
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            bad(
                &[
                    ("precision", "ns"),
                    ("max_rows_per_line", "0"),
                    ("match[]", "cpu")
                ],
                false
            ),
            ["match[]", "max_rows_per_line", "precision"]
        );
        assert_eq!(
            bad(&[("precision", "ms"), ("precision", "us")], false),
            ["precision"]
        );
        // CSV has no precision: its timestamps are exact.
        assert_eq!(bad(&[("precision", "ms")], true), ["precision"]);
    }
}
