//! The HTTP client: configuration, requests, response decoding.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use raftmetrics_types::api::{
    AnalyticsResponse, BINCODE_MEDIA_TYPE, HealthResponse, IDEMPOTENCY_KEY_HEADER, InsertResponse,
    JsonPoint, ReadyResponse,
};
use raftmetrics_types::{BatchId, Point, Query, QueryResult, Tags, Timestamp, codec};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::answer::Answer;
use crate::error::{Error, Result};

/// Where a control node listens by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Most base URLs (control nodes) one client takes.
pub const MAX_BASE_URLS: usize = 16;
/// Default limit on one attempt of a request, from sending it to reading the last byte of
/// the answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default limit on establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit on the size of a response body: 256 MiB, the codec's own limit.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = codec::MAX_ENCODED_BYTES;
/// Default number of times an insert is sent again after a retryable failure.
pub const DEFAULT_INSERT_RETRIES: u32 = 3;
/// First pause before sending an insert again; it doubles with every retry, up to
/// [`MAX_RETRY_PAUSE`], and a `Retry-After` answer is honoured when it asks for longer.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(200);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// Error bodies are read up to this size; the rest is dropped.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Largest buffer reserved up front from a `Content-Length`.
const MAX_PREALLOCATION: usize = 16 * 1024 * 1024;
const JSON_MEDIA_TYPE: &str = "application/json";
/// How often [`Client::wait_ready`] asks.
pub const READY_POLL: Duration = Duration::from_millis(200);

/// A point that borrows its metric, tags and partition key, for producers that keep their
/// series and send many points of each ([`Client::insert_refs`]): a batch of them is built
/// without an allocation per point, and is sent exactly as the same [`Point`]s would be.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PointRef<'a> {
    // The fields of `Point`, in its order: both encode alike.
    pub metric: &'a str,
    pub value: f64,
    pub timestamp: Option<Timestamp>,
    pub tags: &'a Tags,
    pub partition_key: Option<&'a str>,
}

impl<'a> From<&'a Point> for PointRef<'a> {
    fn from(p: &'a Point) -> Self {
        PointRef {
            metric: &p.metric,
            value: p.value,
            timestamp: p.timestamp,
            tags: &p.tags,
            partition_key: p.partition_key.as_deref(),
        }
    }
}

/// The body encoding of requests and answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// bincode (`application/octet-stream`), through [`raftmetrics_types::codec`]: compact
    /// and exact, the default.
    #[default]
    Bincode,
    /// JSON (`application/json`), the format of the API reference.
    Json,
}

impl Format {
    /// The media type of this format.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Bincode => BINCODE_MEDIA_TYPE,
            Format::Json => JSON_MEDIA_TYPE,
        }
    }

    /// The format of a `Content-Type` value, if it is one of the two.
    fn of_content_type(value: &str) -> Option<Format> {
        let media = value.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case(BINCODE_MEDIA_TYPE) {
            Some(Format::Bincode)
        } else if media.eq_ignore_ascii_case(JSON_MEDIA_TYPE)
            || media.to_ascii_lowercase().ends_with("+json")
        {
            Some(Format::Json)
        } else {
            None
        }
    }
}

/// Configures a [`Client`]; made by [`Client::builder`] or [`Client::builder_many`].
#[derive(Clone)]
pub struct ClientBuilder {
    /// As given: each entry one URL or a comma-separated list of them.
    base_urls: Vec<String>,
    token: Option<String>,
    format: Format,
    timeout: Duration,
    connect_timeout: Duration,
    max_response_bytes: usize,
    system_proxy: bool,
    insert_retries: u32,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_urls", &self.base_urls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("format", &self.format)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("system_proxy", &self.system_proxy)
            .field("insert_retries", &self.insert_retries)
            .finish()
    }
}

impl ClientBuilder {
    /// The bearer token sent with every request (without the `Bearer ` prefix). Required.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The body format; [`Format::Bincode`] by default.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Speak JSON (`application/json`).
    pub fn json(self) -> Self {
        self.format(Format::Json)
    }

    /// Speak bincode (`application/octet-stream`), the default.
    pub fn bincode(self) -> Self {
        self.format(Format::Bincode)
    }

    /// Limit on one attempt of a request, from sending it to reading the last byte of the
    /// answer; [`DEFAULT_TIMEOUT`] by default. It applies to each node tried: a request that
    /// fails over from a node that timed out gets the full limit again on the next one, so
    /// one call may take up to this limit times the number of base URLs (and times the
    /// attempts of [`ClientBuilder::insert_retries`] for an insert).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Limit on establishing a connection, per node tried; [`DEFAULT_CONNECT_TIMEOUT`] by
    /// default.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Largest response body read; bigger answers fail with [`Error::ResponseTooLarge`].
    /// [`DEFAULT_MAX_RESPONSE_BYTES`] by default.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Go through the proxy named by `HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY`. Off by default:
    /// the client connects to the cluster directly.
    pub fn system_proxy(mut self, enabled: bool) -> Self {
        self.system_proxy = enabled;
        self
    }

    /// How many times an insert is sent again, under the same batch id, after a failure
    /// that may be temporary (a lost connection, a timeout, 429, 502, 503 or 504);
    /// [`DEFAULT_INSERT_RETRIES`] by default, 0 to never retry. The pause between attempts
    /// starts at 200 ms and doubles, up to 5 s, or follows `Retry-After`.
    ///
    /// With several base URLs, each attempt is a round over the nodes (see [`Client`]): a
    /// node that cannot be reached, times out or answers 503 hands the batch on to the next
    /// one at once, and the pause comes only after a round in which every node failed so, or
    /// after a 429, 502 or 504. An insert is thus sent at most `(retries + 1) × URLs` times,
    /// always under the same `Idempotency-Key`.
    pub fn insert_retries(mut self, retries: u32) -> Self {
        self.insert_retries = retries;
        self
    }

    /// Checks the configuration and builds the client.
    ///
    /// Fails with [`Error::InvalidConfig`] when a URL is not a plain `http://` URL without
    /// credentials, query or fragment (`https` needs TLS, which this client is built without),
    /// when there is no URL, an empty entry in a comma-separated list, the same URL twice or
    /// more than [`MAX_BASE_URLS`] of them, or when the token is missing, empty, or contains
    /// whitespace or control characters.
    pub fn build(self) -> Result<Client> {
        let bases = parse_base_urls(&self.base_urls)?;
        let auth = bearer(self.token.as_deref())?;
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::InvalidConfig("timeouts must be above zero".into()));
        }
        if self.max_response_bytes == 0 {
            return Err(Error::InvalidConfig(
                "max_response_bytes must be above zero".into(),
            ));
        }
        let mut http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(concat!("raftmetrics-client/", env!("CARGO_PKG_VERSION")))
            // Never follow a redirect: the token must only ever go to the configured node.
            .redirect(reqwest::redirect::Policy::none());
        if !self.system_proxy {
            http = http.no_proxy();
        }
        let http = http
            .build()
            .map_err(|e| Error::InvalidConfig(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                bases,
                current: AtomicUsize::new(0),
                auth,
                format: self.format,
                max_response_bytes: self.max_response_bytes,
                insert_retries: self.insert_retries,
            }),
        })
    }
}

/// The base URLs of `entries`, each one URL or a comma-separated list of them, in order.
fn parse_base_urls(entries: &[String]) -> Result<Vec<Url>> {
    const EXPECTED: &str = "expected http://host:port, or several separated by commas";
    let mut bases: Vec<Url> = Vec::new();
    for entry in entries {
        for text in entry.split(',') {
            if text.trim().is_empty() {
                return Err(Error::InvalidConfig(format!(
                    "empty base URL in {entry:?}; {EXPECTED}"
                )));
            }
            if bases.len() == MAX_BASE_URLS {
                return Err(Error::InvalidConfig(format!(
                    "more than {MAX_BASE_URLS} base URLs"
                )));
            }
            let url = parse_base_url(text)?;
            if bases.contains(&url) {
                return Err(Error::InvalidConfig(format!(
                    "base URL {url} is given twice"
                )));
            }
            bases.push(url);
        }
    }
    if bases.is_empty() {
        return Err(Error::InvalidConfig(format!("no base URL; {EXPECTED}")));
    }
    Ok(bases)
}

fn parse_base_url(text: &str) -> Result<Url> {
    let bad = |why: &str| Error::InvalidConfig(format!("base URL {text:?} {why}"));
    let mut url = Url::parse(text.trim())
        .map_err(|e| bad(&format!("is not a URL ({e}); expected http://host:port")))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(bad(
                "uses https, but this client is built without TLS; use http://",
            ));
        }
        _ => return Err(bad("must start with http://")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not carry credentials; the token goes in .token()",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    // A path prefix (a node behind a reverse proxy) is kept: endpoints are joined onto it.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

fn bearer(token: Option<&str>) -> Result<HeaderValue> {
    let token = token.ok_or_else(|| {
        Error::InvalidConfig("a bearer token is required: call .token(...)".into())
    })?;
    if token.is_empty() {
        return Err(Error::InvalidConfig("the bearer token is empty".into()));
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::InvalidConfig(
            "the bearer token must be visible ASCII characters, without whitespace or control \
             characters (pass it without the `Bearer ` prefix)"
                .into(),
        ));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| {
        Error::InvalidConfig(format!("the bearer token is not a header value: {e}"))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// A client of a RaftMetrics cluster, through one or several of its control nodes.
///
/// Cheap to clone: clones share one connection pool and the choice of node. Every request
/// carries the bearer token in its `Authorization` header, never in the URL, and redirects
/// are not followed.
///
/// # Several control nodes
///
/// Given several base URLs ([`Client::builder`] with a comma-separated list, or
/// [`Client::builder_many`]), the client sends each request to the node that answered last
/// (the first URL at the start). When that node cannot be reached, times out, or answers
/// `503`, the same request goes to the next URL in the list, round robin, each URL at most
/// once per request; the first node that answers becomes the one later requests start at
/// ([`Client::base_url`]). Any other answer, success or error (`400`, `401`, `404`, `429`,
/// `500`, ...), is returned as it is, without asking another node. When every node failed,
/// the call returns [`Error::AllNodesFailed`], which names how many nodes were tried and
/// carries the last failure.
///
/// This holds for every call: inserts, queries, [`Client::health`] and [`Client::ready`]
/// (which thus describe whichever node answered: see their `node_id`). An insert sent to
/// another node carries the same `Idempotency-Key` as on the first, so it is stored once
/// even when the first node stored it and failed before answering.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The control nodes, in the order given; never empty.
    bases: Vec<Url>,
    /// Index in `bases` of the node that answered last: requests start there.
    current: AtomicUsize,
    auth: HeaderValue,
    format: Format,
    max_response_bytes: usize,
    insert_retries: u32,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_urls", &self.base_urls())
            .field("base_url", &self.base_url())
            .field("format", &self.inner.format)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts configuring a client of the node at `base_url` (e.g. [`DEFAULT_URL`]), or of
    /// several nodes named in it separated by commas
    /// (`"http://10.0.0.1:8080,http://10.0.0.2:8080"`, as an environment variable may carry
    /// them), which the client fails over between (see [`Client`]). At most
    /// [`MAX_BASE_URLS`].
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        Self::builder_many([base_url])
    }

    /// Starts configuring a client of several control nodes, tried in this order, which the
    /// client fails over between (see [`Client`]). Each entry may itself be a
    /// comma-separated list. At most [`MAX_BASE_URLS`]; an empty list fails in
    /// [`ClientBuilder::build`].
    pub fn builder_many<I>(base_urls: I) -> ClientBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        ClientBuilder {
            base_urls: base_urls.into_iter().map(Into::into).collect(),
            token: None,
            format: Format::default(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            system_proxy: false,
            insert_retries: DEFAULT_INSERT_RETRIES,
        }
    }

    /// The base URL of the node in use, ending in `/`: the one that answered last, where the
    /// next request starts (the first URL given, until a request fails over).
    pub fn base_url(&self) -> &str {
        self.inner.bases[self.current()].as_str()
    }

    /// Every base URL, each ending in `/`, in the order given.
    pub fn base_urls(&self) -> Vec<&str> {
        self.inner.bases.iter().map(Url::as_str).collect()
    }

    /// The index of the node in use.
    fn current(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.bases.len()
    }

    /// The body format in use.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    /// Stores one point: `POST /insert`.
    pub async fn insert(&self, point: Point) -> Result<InsertResponse> {
        self.insert_batch(vec![point]).await
    }

    /// Stores a batch of points: `POST /insert`. All or nothing: either every point was
    /// stored (acknowledged by a Raft quorum of its partition) or the call fails; a
    /// `VALIDATION_ERROR` names every bad field (`points[3].metric`, see
    /// [`Error::validation_fields`]).
    ///
    /// The batch goes under a new random batch id ([`Client::insert_batch_with_id`]), so
    /// the client's own retries after a lost answer or a temporary failure store it once.
    pub async fn insert_batch(&self, points: Vec<Point>) -> Result<InsertResponse> {
        self.insert_batch_with_id(&BatchId::random(), points).await
    }

    /// [`Client::insert_batch`] under the caller's batch id (the `Idempotency-Key`
    /// header). The cluster stores a batch id once per partition: sending the same batch
    /// again with the same id, even after this call failed, after a leader change or
    /// through another control node, stores nothing twice. The id must be new for every
    /// different batch; the cluster remembers it for an hour (see the API reference).
    ///
    /// Failures that may be temporary are retried with the same id, up to
    /// [`ClientBuilder::insert_retries`] times; the error of the last attempt is returned.
    /// A batch that fails over to another control node (see [`Client`]) keeps its id too.
    pub async fn insert_batch_with_id(
        &self,
        id: &BatchId,
        points: Vec<Point>,
    ) -> Result<InsertResponse> {
        let refs: Vec<PointRef<'_>> = points.iter().map(PointRef::from).collect();
        self.insert_refs_with_id(id, &refs).await
    }

    /// [`Client::insert_batch`] of borrowed points (see [`PointRef`]).
    pub async fn insert_refs(&self, points: &[PointRef<'_>]) -> Result<InsertResponse> {
        self.insert_refs_with_id(&BatchId::random(), points).await
    }

    /// [`Client::insert_batch_with_id`] of borrowed points (see [`PointRef`]).
    pub async fn insert_refs_with_id(
        &self,
        id: &BatchId,
        points: &[PointRef<'_>],
    ) -> Result<InsertResponse> {
        let format = self.inner.format;
        let body = encode_points(points, format)?;
        let mut pause = FIRST_RETRY_PAUSE;
        let mut attempt = 0u32;
        loop {
            // One round over the nodes; every send, on any node, carries the same id.
            let round = self
                .send(format, |base| {
                    Ok(self
                        .request(base, Method::POST, "insert", &[])?
                        .header(CONTENT_TYPE, format.media_type())
                        .header(IDEMPOTENCY_KEY_HEADER, id.as_str())
                        .body(body.clone()))
                })
                .await;
            match round {
                Err(e) if e.is_retryable() && attempt < self.inner.insert_retries => {
                    attempt += 1;
                    let wait = e.retry_after().map_or(pause, |asked| asked.max(pause));
                    tokio::time::sleep(wait.min(MAX_RETRY_PAUSE)).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
                other => return other,
            }
        }
    }

    /// Runs an analytics query: `GET /aggregate`, with the query's parameters
    /// ([`Query::to_params`]).
    ///
    /// Always asks for bincode, whatever the client's [`Format`]: the JSON answer of
    /// `/aggregate` is a differently shaped document (the API reference's), not a
    /// [`QueryResult`].
    pub async fn aggregate(&self, query: &Query) -> Result<Answer<QueryResult>> {
        let params = query.to_params();
        let result: QueryResult = self
            .send(Format::Bincode, |base| {
                self.request(base, Method::GET, "aggregate", &params)
            })
            .await?;
        Ok(Answer::from(result))
    }

    /// The cluster-wide average of `metric` (of
    /// [`DEFAULT_METRIC`](raftmetrics_types::api::DEFAULT_METRIC) when `None`):
    /// `GET /analytics`.
    pub async fn analytics(&self, metric: Option<&str>) -> Result<Answer<AnalyticsResponse>> {
        let params: Vec<(String, String)> = metric
            .map(|m| vec![("metric".to_string(), m.to_string())])
            .unwrap_or_default();
        self.analytics_params(&params).await
    }

    /// `GET /analytics` with the filters and time range of `query` (its aggregations do not
    /// matter: the answer is the average and count).
    pub async fn analytics_query(&self, query: &Query) -> Result<Answer<AnalyticsResponse>> {
        self.analytics_params(&query.to_params()).await
    }

    async fn analytics_params(
        &self,
        params: &[(String, String)],
    ) -> Result<Answer<AnalyticsResponse>> {
        let response: AnalyticsResponse = self
            .send(self.inner.format, |base| {
                self.request(base, Method::GET, "analytics", params)
            })
            .await?;
        Ok(Answer::from(response))
    }

    /// A node's health: `GET /health`. It answers whenever the node serves HTTP; its
    /// `status` says whether the cluster is `healthy`, `degraded` or `starting`. To know
    /// whether inserts and complete answers can be had now, ask [`Client::ready`].
    ///
    /// It asks the node in use ([`Client::base_url`]) and fails over like any request, so
    /// the answer is that of the first node that answers; its `node_id` and `role` say
    /// which. To ask one particular node, build a client of that node alone.
    pub async fn health(&self) -> Result<HealthResponse> {
        self.send(self.inner.format, |base| {
            self.request(base, Method::GET, "health", &[])
        })
        .await
    }

    /// Whether a node is ready: `GET /ready`. A node that is not ready answers
    /// [`Error::Api`] with status 503, `details` naming the partitions without a leader
    /// that answers (`missing_partitions`) and the other `problems`. With several base
    /// URLs, a 503 passes the question on to the next node, like any request (see
    /// [`Client`]): the answer is the first ready node's, or [`Error::AllNodesFailed`].
    pub async fn ready(&self) -> Result<ReadyResponse> {
        self.send(self.inner.format, |base| {
            self.request(base, Method::GET, "ready", &[])
        })
        .await
    }

    /// Asks [`Client::ready`] until a node is ready or `timeout` has passed, every
    /// [`READY_POLL`]; each time, every base URL is tried until one is ready. A 503 or a
    /// connection failure is waited out; any other error (a refused token, say) is returned
    /// at once. After `timeout`, [`Error::NotReady`] with the last answer.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<ReadyResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, self.ready()).await {
                Ok(Ok(ready)) => return Ok(ready),
                Ok(Err(e)) if e.is_failover() => last = Some(Box::new(e)),
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(READY_POLL.min(left)).await;
        }
        Err(Error::NotReady {
            waited: timeout,
            last,
        })
    }

    /// Sends the request `build` makes for a base URL to the nodes in turn, starting with the
    /// node in use, and decodes its 2xx answer as a `T`. A node that cannot be reached, times
    /// out or answers 503 ([`Error::is_failover`]) hands the request on to the next one; the
    /// first other outcome is returned, and its node becomes the node in use. When every
    /// node failed: the failure itself with one base URL, else [`Error::AllNodesFailed`].
    async fn send<T: DeserializeOwned>(
        &self,
        accept: Format,
        build: impl Fn(&Url) -> Result<reqwest::RequestBuilder>,
    ) -> Result<T> {
        let bases = &self.inner.bases;
        let start = self.current();
        let mut tried = 0;
        loop {
            let index = (start + tried) % bases.len();
            let outcome = self.call(build(&bases[index])?, accept).await;
            tried += 1;
            match outcome {
                Err(e) if e.is_failover() => {
                    if tried < bases.len() {
                        continue;
                    }
                    return Err(if tried == 1 {
                        e
                    } else {
                        Error::AllNodesFailed {
                            tried,
                            url: bases[index].to_string(),
                            last: Box::new(e),
                        }
                    });
                }
                outcome => {
                    // This node answered: later requests start here.
                    self.inner.current.store(index, Ordering::Relaxed);
                    return outcome;
                }
            }
        }
    }

    fn request(
        &self,
        base: &Url,
        method: Method,
        path: &str,
        params: &[(String, String)],
    ) -> Result<reqwest::RequestBuilder> {
        let url = endpoint(base, path, params)?;
        Ok(self
            .inner
            .http
            .request(method, url)
            .header(AUTHORIZATION, self.inner.auth.clone()))
    }

    /// Sends `request` asking for `accept`, and decodes a 2xx answer as a `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        accept: Format,
    ) -> Result<T> {
        let response = request.header(ACCEPT, accept.media_type()).send().await?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // The status matters more than the body: a body that fails to arrive is empty.
            let body = read_body(response, MAX_ERROR_BODY_BYTES, true)
                .await
                .unwrap_or_default();
            return Err(Error::from_response(
                status.as_u16(),
                retry_after.as_deref(),
                &body,
            ));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_body(response, self.inner.max_response_bytes, false).await?;
        decode_body(&body, content_type.as_deref(), accept)
    }
}

/// The URL of endpoint `path` under `base`, with `params` percent-encoded as its query.
fn endpoint(base: &Url, path: &str, params: &[(String, String)]) -> Result<Url> {
    let mut url = base
        .join(path)
        .map_err(|e| Error::InvalidConfig(format!("cannot join {path:?} onto {base}: {e}")))?;
    if !params.is_empty() {
        url.query_pairs_mut().extend_pairs(params);
    }
    Ok(url)
}

/// The body of an insert of `points`.
fn encode_points(points: &[PointRef<'_>], format: Format) -> Result<Vec<u8>> {
    match format {
        Format::Bincode => codec::encode(&points).map_err(|e| Error::Encode(e.to_string())),
        Format::Json => {
            // JSON has no NaN or infinity; serde_json would silently send `null`.
            if let Some(i) = points.iter().position(|p| !p.value.is_finite()) {
                return Err(Error::Encode(format!(
                    "points[{i}].value is {}, which JSON cannot carry",
                    points[i].value
                )));
            }
            let json: Vec<JsonPoint> = points.iter().map(json_point).collect();
            serde_json::to_vec(&json).map_err(|e| Error::Encode(e.to_string()))
        }
    }
}

/// A point in the JSON insert format: `{"metric", "value", "timestamp" (RFC 3339), "tags",
/// "partition_key"}`.
fn json_point(point: &PointRef<'_>) -> JsonPoint {
    JsonPoint {
        metric: Some(point.metric.to_owned()),
        value: point.value,
        timestamp: point.timestamp,
        tags: Some(point.tags.clone()),
        partition_key: point.partition_key.map(str::to_owned),
    }
}

/// Reads a response body of at most `limit` bytes: beyond it, fails with
/// [`Error::ResponseTooLarge`], or with `truncate` keeps the first `limit` bytes.
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
    truncate: bool,
) -> Result<Vec<u8>> {
    let declared = response.content_length().unwrap_or(0);
    if !truncate && declared > limit as u64 {
        return Err(Error::ResponseTooLarge { limit });
    }
    let mut body = Vec::with_capacity((declared as usize).min(limit).min(MAX_PREALLOCATION));
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            if truncate {
                body.extend_from_slice(&chunk[..limit - body.len()]);
                break;
            }
            return Err(Error::ResponseTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Decodes a 2xx body in the format its `Content-Type` names, or the one asked for.
fn decode_body<T: DeserializeOwned>(
    body: &[u8],
    content_type: Option<&str>,
    requested: Format,
) -> Result<T> {
    let format = content_type
        .and_then(Format::of_content_type)
        .unwrap_or(requested);
    let what = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("answer");
    match format {
        Format::Bincode => {
            codec::decode(body).map_err(|e| Error::Decode(format!("{what} from bincode: {e}")))
        }
        Format::Json => serde_json::from_slice(body)
            .map_err(|e| Error::Decode(format!("{what} from JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use raftmetrics_types::api::JsonInsert;
    use raftmetrics_types::{Agg, Consistency, Coverage, Timestamp};

    use super::*;

    fn client(url: &str) -> Client {
        Client::builder(url).token("secret").build().unwrap()
    }

    fn config_error(builder: ClientBuilder) -> String {
        match builder.build() {
            Err(Error::InvalidConfig(why)) => why,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn refuses_bad_configurations() {
        let ok = || Client::builder(DEFAULT_URL).token("t0k3n");
        assert!(ok().build().is_ok());
        assert!(config_error(Client::builder(DEFAULT_URL)).contains("token is required"));
        assert!(config_error(ok().token("")).contains("empty"));
        assert!(config_error(ok().token("Bearer abc")).contains("Bearer"));
        assert!(config_error(ok().token("a\nb")).contains("control"));
        assert!(config_error(ok().token("tökén")).contains("ASCII"));
        assert!(config_error(ok().timeout(Duration::ZERO)).contains("timeouts"));
        assert!(config_error(ok().max_response_bytes(0)).contains("max_response_bytes"));
        for (url, why) in [
            ("127.0.0.1:8080", "http://"),
            ("not a url", "is not a URL"),
            ("https://example.com", "TLS"),
            ("ftp://example.com", "http://"),
            ("http://user:pw@example.com", "credentials"),
            ("http://example.com/?token=x", "query"),
            ("http://example.com/#x", "fragment"),
        ] {
            let why_got = config_error(Client::builder(url).token("t"));
            assert!(why_got.contains(why), "{url}: {why_got}");
        }
    }

    #[test]
    fn takes_several_base_urls() {
        let c = client("http://127.0.0.1:8080, http://10.0.0.2:8084/rm ,http://b:8085");
        let all = [
            "http://127.0.0.1:8080/",
            "http://10.0.0.2:8084/rm/",
            "http://b:8085/",
        ];
        assert_eq!(c.base_urls(), all);
        assert_eq!(c.base_url(), all[0]);
        // An entry of the list may itself be a comma-separated list.
        let many = Client::builder_many([
            "http://127.0.0.1:8080",
            "http://10.0.0.2:8084/rm,http://b:8085",
        ])
        .token("t")
        .build()
        .unwrap();
        assert_eq!(many.base_urls(), all);
        // The node in use moves, the list does not.
        many.inner.current.store(2, Ordering::Relaxed);
        assert_eq!(many.base_url(), all[2]);
        assert_eq!(many.base_urls(), all);
        let debug = format!("{many:?}");
        assert!(
            debug.contains("http://b:8085/") && debug.contains("10.0.0.2"),
            "{debug}"
        );

        let bad = |builder: ClientBuilder| config_error(builder.token("t"));
        assert!(bad(Client::builder_many(Vec::<String>::new())).contains("no base URL"));
        assert!(bad(Client::builder("")).contains("empty base URL"));
        assert!(bad(Client::builder("http://a:1,,http://b:1")).contains("empty base URL"));
        assert!(bad(Client::builder("http://a:1,")).contains("empty base URL"));
        assert!(bad(Client::builder("http://a:1,https://b:1")).contains("TLS"));
        assert!(bad(Client::builder("http://a:1,b:1")).contains("http://"));
        assert!(bad(Client::builder("http://a:1,http://a:1/")).contains("twice"));
        let urls = |n: u16| (0..n).map(|i| format!("http://10.0.0.1:{}", 8000 + i));
        let at_most = Client::builder_many(urls(MAX_BASE_URLS as u16)).token("t");
        assert_eq!(at_most.build().unwrap().base_urls().len(), MAX_BASE_URLS);
        let too_many =
            Client::builder(urls(MAX_BASE_URLS as u16 + 1).collect::<Vec<_>>().join(","));
        assert!(bad(too_many).contains("more than 16"));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let builder = Client::builder(DEFAULT_URL).token("hunter2");
        assert!(!format!("{builder:?}").contains("hunter2"));
        let client = builder.build().unwrap();
        assert!(!format!("{client:?}").contains("hunter2"));
        assert!(client.inner.auth.is_sensitive());
        assert_eq!(client.inner.auth.to_str().unwrap(), "Bearer hunter2");
    }

    #[test]
    fn joins_endpoints_onto_the_base_url() {
        let c = client("http://127.0.0.1:8080");
        assert_eq!(c.base_url(), "http://127.0.0.1:8080/");
        assert_eq!(c.format(), Format::Bincode);
        let url = endpoint(&c.inner.bases[0], "health", &[]).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/health");
        let c = client("http://metrics.internal/raftmetrics");
        let url = endpoint(&c.inner.bases[0], "insert", &[]).unwrap();
        assert_eq!(url.as_str(), "http://metrics.internal/raftmetrics/insert");
    }

    #[test]
    fn encodes_queries_into_urls_that_parse_back() {
        let mut q = Query::from_params(&[
            ("metric", "cpu_usage"),
            ("from", "2024-01-20T00:00:00.5+02:00"),
            ("to", "2024-01-21"),
            ("window", "1h"),
            ("rolling", "true"),
            ("step", "5m"),
            ("hosts", "web-*,api-?"),
            ("tags", "env:a&b=c d,path:/x%2F#y+z"),
            ("agg", "avg,max,p95,p99.9"),
            ("group_by", "datacenter"),
            ("order_by", "p99.9:desc"),
            ("limit", "10"),
            ("allow_partial", "false"),
            ("consistency", "strong"),
        ])
        .unwrap();
        let c = client(DEFAULT_URL);
        let url = endpoint(&c.inner.bases[0], "aggregate", &q.to_params()).unwrap();
        assert_eq!(url.path(), "/aggregate");
        assert!(url.fragment().is_none());
        let query = url.query().unwrap();
        assert!(!query.contains("secret"));
        assert!(query.starts_with("metric=cpu_usage&from=2024-01-19T22%3A00%3A00.500Z&"));
        assert!(query.contains("&agg=avg%2Cmax%2Cp95%2Cp99.9&"));
        let decoded: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(decoded, q.to_params());
        assert_eq!(Query::from_params(&decoded).unwrap(), q);
        // Defaults are not sent.
        q = Query::new("m");
        q.aggs = vec![Agg::Count];
        q.consistency = Consistency::Eventual;
        let url = endpoint(&c.inner.bases[0], "aggregate", &q.to_params()).unwrap();
        assert_eq!(url.query(), Some("metric=m&agg=count"));
        // Value bounds and last/first travel as the parameters of the same names.
        q = Query {
            aggs: vec![Agg::Last, Agg::First],
            ..Query::new("m").value_gt(90.0).value_le(-1.5e-7)
        };
        let url = endpoint(&c.inner.bases[0], "aggregate", &q.to_params()).unwrap();
        assert_eq!(
            url.query(),
            Some("metric=m&agg=last%2Cfirst&value_gt=90&value_le=-0.00000015")
        );
        let decoded: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(Query::from_params(&decoded).unwrap(), q);
    }

    #[tokio::test]
    async fn unreachable_nodes_are_transport_errors() {
        // Nothing listens on port 1: the connection is refused, no server involved.
        let c = Client::builder("http://127.0.0.1:1")
            .token("t")
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let err = c.health().await.unwrap_err();
        let Error::Transport(transport) = &err else {
            panic!("expected a transport error, got {err:?}");
        };
        assert!(transport.is_connect() && !transport.is_timeout());
        assert!(err.is_retryable() && err.status().is_none());
        assert!(err.to_string().contains("127.0.0.1:1/health"), "{err}");
        assert!(!err.to_string().contains("Bearer"), "{err}");
    }

    fn points() -> Vec<Point> {
        vec![
            Point::new("cpu_usage", 75.5)
                .at(Timestamp::parse("2024-01-20T15:30:00.123456Z").unwrap())
                .tag("host", "web-1")
                .tag("datacenter", "us-west"),
            Point::new("mem", -0.25).partition_key("user123"),
            Point::new("disk", 1e300).at(Timestamp::EPOCH),
        ]
    }

    fn encode(points: &[Point], format: Format) -> Result<Vec<u8>> {
        let refs: Vec<PointRef<'_>> = points.iter().map(PointRef::from).collect();
        encode_points(&refs, format)
    }

    #[test]
    fn json_inserts_are_what_the_server_reads() {
        let body = encode(&points(), Format::Json).unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains(r#""timestamp":"2024-01-20T15:30:00.123456Z""#));
        assert!(text.contains(r#""tags":{"datacenter":"us-west","host":"web-1"}"#));
        let parsed: JsonInsert = serde_json::from_slice(&body).unwrap();
        assert!(matches!(parsed, JsonInsert::Many(ref ps) if ps.len() == 3));
        assert_eq!(parsed.into_points(), points());
        let mut nan = points();
        nan[1].value = f64::NAN;
        let err = encode(&nan, Format::Json).unwrap_err();
        assert!(err.to_string().contains("points[1].value"), "{err}");
    }

    #[test]
    fn bincode_inserts_use_the_shared_codec() {
        let body = encode(&points(), Format::Bincode).unwrap();
        assert_eq!(codec::decode::<Vec<Point>>(&body).unwrap(), points());
        // Borrowed points are the same bytes as the points themselves.
        assert_eq!(body, codec::encode(&points()).unwrap());
        // NaN travels in bincode; the server's validation names the field.
        let mut nan = points();
        nan[0].value = f64::NAN;
        assert!(encode(&nan, Format::Bincode).is_ok());
    }

    fn analytics() -> AnalyticsResponse {
        AnalyticsResponse {
            metric: "value".into(),
            average: Some(42.5),
            count: 10,
            is_partial: false,
            total_nodes: 3,
            responding_nodes: 3,
            missing_partitions: vec![],
        }
    }

    #[test]
    fn decodes_by_content_type_then_by_request() {
        let json = serde_json::to_vec(&analytics()).unwrap();
        let bin = codec::encode(&analytics()).unwrap();
        for (body, content_type, requested) in [
            (&json, Some("application/json"), Format::Bincode),
            (
                &json,
                Some("Application/JSON; charset=utf-8"),
                Format::Bincode,
            ),
            (&json, Some("application/problem+json"), Format::Bincode),
            (&json, None, Format::Json),
            (&json, Some("text/plain"), Format::Json),
            (&bin, Some("application/octet-stream"), Format::Json),
            (&bin, None, Format::Bincode),
        ] {
            let got: AnalyticsResponse = decode_body(body, content_type, requested).unwrap();
            assert_eq!(got, analytics(), "{content_type:?} {requested:?}");
        }
        let err = decode_body::<AnalyticsResponse>(&bin[..bin.len() - 1], None, Format::Bincode)
            .unwrap_err();
        assert!(
            matches!(&err, Error::Decode(m) if m.starts_with("AnalyticsResponse from bincode")),
            "{err}"
        );
        let err = decode_body::<AnalyticsResponse>(b"{}", None, Format::Json).unwrap_err();
        assert!(matches!(err, Error::Decode(_)));
    }

    #[test]
    fn query_results_decode_with_their_coverage() {
        let result = QueryResult {
            metric: "cpu".into(),
            aggregations: Vec::new(),
            groups: Vec::new(),
            buckets: Vec::new(),
            percentiles: None,
            coverage: Coverage {
                is_partial: true,
                total_nodes: 3,
                responding_nodes: 2,
                missing_partitions: vec![4],
            },
        };
        let bin = codec::encode(&result).unwrap();
        let decoded: QueryResult =
            decode_body(&bin, Some(BINCODE_MEDIA_TYPE), Format::Json).unwrap();
        let answer = Answer::from(decoded);
        assert_eq!(answer.missing_partitions(), &[4]);
        assert!(answer.into_complete().unwrap_err().is_partial());
    }
}
