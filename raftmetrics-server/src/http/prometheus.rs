//! The Prometheus HTTP query API on a node that serves queries, as Grafana's Prometheus
//! data source calls it: `GET|POST /api/v1/query`, `/api/v1/query_range`,
//! `/api/v1/labels`, `/api/v1/label/{name}/values`, `/api/v1/series`,
//! `GET /api/v1/status/buildinfo` and `/api/v1/metadata` (empty: no metric metadata is
//! stored).
//!
//! Parameters come from the query string and, for `POST`, from an
//! `application/x-www-form-urlencoded` body, as Prometheus reads them. The expression is
//! planned by [`raftmetrics_promql::plan`], each raw selector's series are read through the
//! node's export ([`Frontend::export`]: the selector's metric and exact label values select
//! series in the stores, every matcher is checked here), and the evaluation runs on a
//! blocking thread. A partition without a live replica leaves its series out, and the
//! answer says which partitions in `warnings`; `allow_partial=false` refuses such an answer
//! instead (503).
//!
//! Range functions of a selector (`rate(m[5m])`, `max_over_time(m[1h])`, ...) are pushed
//! down (ADR 027): each partition's replica evaluates them over its own series at every step
//! ([`Frontend::evaluate`]), so only per-step results travel, not points; so are instant
//! selectors (as the latest sample in the lookback); a `sum`, `avg`, `min`, `max` or
//! `count` of one goes down with it, and only partial states per group and step travel. A
//! range selector outside a function reads raw points through the export.
//!
//! Bounds: a range query evaluates at most 11,000 steps and answers at most
//! [`raftmetrics_promql::eval::MAX_RESULT_POINTS`] points; a query reads at most
//! [`crate::promql::MAX_SAMPLES`] raw samples and a selector at most
//! [`crate::promql::MAX_SERIES`] series; a query stops at its `timeout` or the node's
//! request timeout, whichever is shorter. Metric names: see [`crate::promql`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use raftmetrics_core::Timestamp;
use raftmetrics_core::export::ExportRequest;
use raftmetrics_promql::eval::{self, Inputs, PushedResult};
use raftmetrics_promql::params::{duration_text, parse_duration, parse_time, range_steps};
use raftmetrics_promql::plan::{Fetch, Plan, plan_pushed, series_selector};
use raftmetrics_promql::{Labels, PromError, Series, render};
use serde_json::json;

use super::error::ApiError;
use crate::frontend::Frontend;
use crate::promql::{EvaluateError, Gather, MAX_SERIES, selection};

/// The query API's routes over `frontend` (a node that serves queries).
pub fn routes<F: Frontend>(frontend: Arc<F>) -> Router {
    Router::new()
        .route("/api/v1/query", get(query::<F>).post(query::<F>))
        .route(
            "/api/v1/query_range",
            get(query_range::<F>).post(query_range::<F>),
        )
        .route("/api/v1/labels", get(labels::<F>).post(labels::<F>))
        .route("/api/v1/label/{name}/values", get(label_values::<F>))
        .route("/api/v1/series", get(series::<F>).post(series::<F>))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/metadata", get(metadata))
        .with_state(frontend)
}

/// An answer of this API: a success body, or an error in its shape.
enum Answer {
    Ok(String),
    Err(PromError),
    /// An error of the node (unavailable, timed out), answered in the Prometheus shape by
    /// the error layer.
    Node(ApiError),
}

impl From<PromError> for Answer {
    fn from(e: PromError) -> Self {
        Answer::Err(e)
    }
}

impl From<raftmetrics_core::error::Error> for Answer {
    fn from(e: raftmetrics_core::error::Error) -> Self {
        Answer::Node(e.into())
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Answer::Ok(body) => (StatusCode::OK, body),
            Answer::Err(e) => (
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                json!({"status": "error", "errorType": e.error_type(), "error": e.to_string()})
                    .to_string(),
            ),
            Answer::Node(e) => return e.into_response(),
        };
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// The parameters of a request: a form body's, then the query string's (a body's value
/// wins, as in Prometheus, which reads them with Go's `Request.FormValue`).
#[derive(Debug)]
struct Params(Vec<(String, String)>);

impl Params {
    fn read(
        method: &Method,
        headers: &HeaderMap,
        query: Option<String>,
        body: &Bytes,
    ) -> Result<Params, PromError> {
        let mut params: Vec<(String, String)> = Vec::new();
        if *method == Method::POST && !body.is_empty() {
            let form = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            if !form {
                return Err(PromError::bad(
                    "a POST body must be application/x-www-form-urlencoded",
                ));
            }
            params = serde_urlencoded::from_bytes(body)
                .map_err(|e| PromError::bad(format!("invalid form body: {e}")))?;
        }
        if let Some(q) = query {
            let from_url: Vec<(String, String)> = serde_urlencoded::from_str(&q)
                .map_err(|e| PromError::bad(format!("invalid query string: {e}")))?;
            params.extend(from_url);
        }
        Ok(Params(params))
    }

    /// The first value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn time(&self, name: &str) -> Result<Option<i64>, PromError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                parse_time(v)
                    .map_err(|e| PromError::bad(format!("invalid parameter \"{name}\": {e}")))
            })
            .transpose()
    }

    fn query(&self) -> &str {
        self.get("query").unwrap_or_default()
    }

    fn allow_partial(&self) -> Result<bool, PromError> {
        match self.get("allow_partial") {
            None | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(PromError::bad(format!(
                "invalid parameter \"allow_partial\": {other:?} must be true or false"
            ))),
        }
    }

    /// The query's deadline: its `timeout` if shorter than the node's.
    fn deadline(&self, node_timeout: Duration) -> Result<Duration, PromError> {
        match self.get("timeout").filter(|v| !v.is_empty()) {
            None => Ok(node_timeout),
            Some(t) => {
                let millis = parse_duration(t)
                    .map_err(|e| PromError::bad(format!("invalid parameter \"timeout\": {e}")))?;
                Ok(node_timeout.min(Duration::from_millis(millis.max(0) as u64)))
            }
        }
    }
}

fn now_millis() -> i64 {
    Timestamp::now().as_micros().div_euclid(1_000)
}

/// What the stores hold for a plan: the raw series of its selectors, the results of its
/// pushed-down calls, and the warnings of a partial read.
struct Read {
    inputs: Inputs,
    warnings: Vec<String>,
}

fn missing_warning(missing: &[u32]) -> String {
    let list: Vec<String> = missing.iter().map(u32::to_string).collect();
    format!(
        "partial answer: partitions {} have no live replica; their series are missing",
        list.join(", ")
    )
}

/// Reads the series `fetch` selects, with their samples, through the node's export;
/// `samples` counts the samples read by the query so far.
async fn read_fetch<F: Frontend>(
    frontend: &Arc<F>,
    fetch: &Fetch,
    allow_partial: bool,
    samples: &mut usize,
    warnings: &mut BTreeSet<String>,
) -> Result<Vec<Series>, Answer> {
    let Some(selection) = selection(fetch) else {
        return Ok(Vec::new());
    };
    let mut export = Arc::clone(frontend)
        .export(ExportRequest {
            selection,
            allow_partial,
        })
        .await?;
    if !export.missing.is_empty() {
        warnings.insert(missing_warning(&export.missing));
    }
    let mut gather = Gather::new(fetch);
    while let Some(page) = export.pages.recv().await {
        gather.page(page?, samples)?;
    }
    Ok(gather.finish())
}

/// Everything `plan` reads: its pushed-down calls evaluated by the workers, its other
/// selectors read raw.
async fn read_all<F: Frontend>(
    frontend: &Arc<F>,
    plan: &Plan,
    range: (i64, i64, i64),
    allow_partial: bool,
) -> Result<Read, Answer> {
    let mut inputs = Inputs::default();
    let mut samples = 0usize;
    let mut warnings = BTreeSet::new();
    // The pushed-down parts at once: each is a read of its own on the workers.
    let mut evaluations = tokio::task::JoinSet::new();
    for (key, down) in &plan.pushdowns {
        let (frontend, key, text) = (Arc::clone(frontend), key.clone(), down.text.clone());
        evaluations
            .spawn(async move { (key, frontend.evaluate(text, range, allow_partial).await) });
    }
    while let Some(joined) = evaluations.join_next().await {
        let (key, evaluated) = joined
            .map_err(|e| Answer::Node(ApiError::internal(format!("evaluation failed: {e}"))))?;
        let evaluated = evaluated.map_err(|e| match e {
            EvaluateError::Query(e) => Answer::Err(e),
            EvaluateError::Node(e) => Answer::from(e),
        })?;
        if !evaluated.missing.is_empty() {
            warnings.insert(missing_warning(&evaluated.missing));
        }
        for result in evaluated.results {
            inputs.add_pushed(&key, result);
        }
    }
    for (key, fetch) in &plan.fetches {
        let series =
            read_fetch(frontend, fetch, allow_partial, &mut samples, &mut warnings).await?;
        inputs.series.insert(key.clone(), series);
    }
    Ok(Read {
        inputs,
        warnings: warnings.into_iter().collect(),
    })
}

/// Runs `work` within `deadline`.
async fn within<T>(
    deadline: Duration,
    work: impl Future<Output = Result<T, Answer>>,
) -> Result<T, Answer> {
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| {
            Err(PromError::Timeout(format!("query timed out after {deadline:?}")).into())
        })
}

/// Evaluates on a blocking thread: a large range query is CPU work.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PromError> + Send + 'static,
) -> Result<T, Answer> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Answer::from),
        Err(e) => Err(Answer::Node(ApiError::internal(format!(
            "evaluation failed: {e}"
        )))),
    }
}

async fn answer(work: impl Future<Output = Result<String, Answer>>) -> Answer {
    match work.await {
        Ok(body) => Answer::Ok(body),
        Err(e) => e,
    }
}

/// `GET|POST /api/v1/query`: `query`, `time` (default now), `timeout`.
async fn query<F: Frontend>(
    State(frontend): State<Arc<F>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Answer {
    answer(async {
        let params = Params::read(&method, &headers, raw, &body)?;
        let t = params.time("time")?.unwrap_or_else(now_millis);
        let deadline = params.deadline(frontend.request_timeout())?;
        let allow_partial = params.allow_partial()?;
        let plan = plan_pushed(params.query(), t, t)?;
        within(deadline, async {
            let read = read_all(&frontend, &plan, (t, t, 1), allow_partial).await?;
            let warnings = read.warnings;
            let expr = plan.expr;
            let inputs = read.inputs;
            blocking(move || {
                let value = eval::instant(&expr, &inputs, t)?;
                Ok(render::instant(&value, t, &warnings))
            })
            .await
        })
        .await
    })
    .await
}

/// `GET|POST /api/v1/query_range`: `query`, `start`, `end`, `step`, `timeout`.
async fn query_range<F: Frontend>(
    State(frontend): State<Arc<F>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Answer {
    answer(async {
        let params = Params::read(&method, &headers, raw, &body)?;
        let start = params.time("start")?.ok_or_else(|| {
            PromError::bad("invalid parameter \"start\": cannot parse \"\" to a valid timestamp")
        })?;
        let end = params.time("end")?.ok_or_else(|| {
            PromError::bad("invalid parameter \"end\": cannot parse \"\" to a valid timestamp")
        })?;
        let step = parse_duration(params.get("step").unwrap_or_default())
            .map_err(|e| PromError::bad(format!("invalid parameter \"step\": {e}")))?;
        let (start, end, step) = range_steps(start, end, step)?;
        let deadline = params.deadline(frontend.request_timeout())?;
        let allow_partial = params.allow_partial()?;
        let plan = plan_pushed(params.query(), start, end)?;
        within(deadline, async {
            let read = read_all(&frontend, &plan, (start, end, step), allow_partial).await?;
            let warnings = read.warnings;
            let expr = plan.expr;
            let inputs = read.inputs;
            blocking(move || {
                let result = eval::range(&expr, &inputs, start, end, step)?;
                Ok(render::range(&result, &warnings))
            })
            .await
        })
        .await
    })
    .await
}

/// The series the `match[]` selectors of a listing select over `start`..`end` (default:
/// from the epoch to a year from now), every series without `match[]` when `required` is
/// false. The workers find them: each selector goes down as `last_over_time` over the
/// whole range at `end`, which answers one value per series that has a point in it.
async fn listed<F: Frontend>(
    frontend: &Arc<F>,
    params: &Params,
    required: bool,
) -> Result<(Vec<Labels>, Vec<String>), Answer> {
    const YEAR_MILLIS: i64 = 365 * 86_400_000;
    let from = params.time("start")?.unwrap_or(0);
    let to = params
        .time("end")?
        .unwrap_or_else(|| now_millis() + YEAR_MILLIS);
    if to < from {
        return Err(PromError::bad(
            "invalid parameter \"end\": end timestamp must not be before start time",
        )
        .into());
    }
    let allow_partial = params.allow_partial()?;
    let mut selectors = Vec::new();
    for text in params.all("match[]") {
        selectors.push(series_selector(text)?);
    }
    if selectors.is_empty() {
        if required {
            return Err(PromError::bad("no match[] parameter provided").into());
        }
        selectors.push(series_selector("{__name__=~\".+\"}")?);
    }
    let mut all = BTreeSet::new();
    let mut warnings = BTreeSet::new();
    for matchers in &selectors {
        let text = format!(
            "last_over_time({{{}}}[{}])",
            matchers
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            duration_text(to - from)
        );
        let evaluated = Arc::clone(frontend)
            .evaluate(text, (to, to, 1), allow_partial)
            .await
            .map_err(|e| match e {
                EvaluateError::Query(e) => Answer::Err(e),
                EvaluateError::Node(e) => Answer::from(e),
            })?;
        if !evaluated.missing.is_empty() {
            warnings.insert(missing_warning(&evaluated.missing));
        }
        for result in evaluated.results {
            if let PushedResult::Series(series) = result {
                all.extend(series.into_iter().map(|(labels, _)| labels));
            }
            if all.len() > MAX_SERIES {
                return Err(PromError::TooLarge(format!(
                    "the selection holds more than {MAX_SERIES} series; narrow it"
                ))
                .into());
            }
        }
    }
    Ok((all.into_iter().collect(), warnings.into_iter().collect()))
}

async fn listing<F: Frontend>(
    frontend: Arc<F>,
    method: Method,
    headers: HeaderMap,
    raw: Option<String>,
    body: Bytes,
    required: bool,
    render_series: impl FnOnce(Vec<Labels>, Vec<String>) -> String,
) -> Answer {
    answer(async {
        let params = Params::read(&method, &headers, raw, &body)?;
        let deadline = params.deadline(frontend.request_timeout())?;
        within(deadline, async {
            let (series, warnings) = listed(&frontend, &params, required).await?;
            Ok(render_series(series, warnings))
        })
        .await
    })
    .await
}

/// `GET|POST /api/v1/labels`: the label names of the selected series, `__name__` among them.
async fn labels<F: Frontend>(
    State(frontend): State<Arc<F>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Answer {
    listing(
        frontend,
        method,
        headers,
        raw,
        body,
        false,
        |series, warnings| {
            let names: BTreeSet<&str> = series
                .iter()
                .flat_map(|s| s.keys().map(String::as_str))
                .collect();
            render::strings(names, &warnings)
        },
    )
    .await
}

/// `GET /api/v1/label/{name}/values`: the values of one label over the selected series.
async fn label_values<F: Frontend>(
    State(frontend): State<Arc<F>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Answer {
    listing(
        frontend,
        method,
        headers,
        raw,
        body,
        false,
        move |series, warnings| {
            let values: BTreeSet<&str> = series
                .iter()
                .filter_map(|s| s.get(&name).map(String::as_str))
                .collect();
            render::strings(values, &warnings)
        },
    )
    .await
}

/// `GET|POST /api/v1/series`: the label sets of the series `match[]` selects.
async fn series<F: Frontend>(
    State(frontend): State<Arc<F>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Answer {
    listing(
        frontend,
        method,
        headers,
        raw,
        body,
        true,
        |series, warnings| render::series(&series, &warnings),
    )
    .await
}

/// `GET /api/v1/status/buildinfo`: the version Grafana reads to pick its query features.
/// RaftMetrics answers with the Prometheus version whose semantics it follows.
async fn buildinfo() -> Answer {
    Answer::Ok(render::data(&json!({
        "version": PROMETHEUS_SEMANTICS,
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
        "application": "raftmetrics",
        "raftmetricsVersion": env!("CARGO_PKG_VERSION"),
    })))
}

/// The Prometheus version whose query semantics the evaluator follows.
pub const PROMETHEUS_SEMANTICS: &str = "2.42.0";

/// `GET /api/v1/metadata`: no metric metadata is stored (remote write's is dropped).
async fn metadata() -> Answer {
    Answer::Ok(render::data(&json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h
    }

    #[test]
    fn a_form_body_wins_over_the_query_string_as_in_prometheus() {
        let body = Bytes::from_static(b"query=up%7Bjob%3D%22a%22%7D&time=2");
        let p = Params::read(&Method::POST, &form(), Some("time=1&step=15".into()), &body).unwrap();
        assert_eq!(p.query(), "up{job=\"a\"}");
        assert_eq!(p.get("time"), Some("2"));
        assert_eq!(p.get("step"), Some("15"));
        // A GET's body is not read; a POST body of another type is refused.
        let p = Params::read(&Method::GET, &form(), Some("time=1".into()), &body).unwrap();
        assert_eq!(p.get("time"), Some("1"));
        let err = Params::read(&Method::POST, &HeaderMap::new(), None, &body).unwrap_err();
        assert_eq!(err.error_type(), "bad_data");
    }

    #[test]
    fn times_timeouts_and_partial_answers_are_checked() {
        let p = Params::read(
            &Method::GET,
            &HeaderMap::new(),
            Some("time=abc&timeout=2s&allow_partial=maybe".into()),
            &Bytes::new(),
        )
        .unwrap();
        assert!(p.time("time").unwrap_err().to_string().contains("\"time\""));
        assert_eq!(
            p.deadline(Duration::from_secs(30)).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.deadline(Duration::from_secs(1)).unwrap(),
            Duration::from_secs(1)
        );
        assert!(p.allow_partial().is_err());
    }
}
