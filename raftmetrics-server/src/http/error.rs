//! The one place where errors become HTTP responses.
//!
//! Every failure of the public API leaves the server as an [`ApiError`], whose
//! [`IntoResponse`] writes the seed's JSON body
//! `{"error": true, "code": "...", "message": "...", "details": {...}}` (`details` is always an
//! object, possibly empty) with the status and headers that go with the code:
//!
//! | case | status | code | headers, details |
//! |---|---|---|---|
//! | `Error::Validation` | 400 | VALIDATION_ERROR | `fields: [{field, error}]` |
//! | `Error::InvalidRequest`, bad JSON or query | 400 | INVALID_REQUEST | |
//! | body over the limit | 413 | INVALID_REQUEST | `limit_bytes` when known |
//! | wrong `Content-Type` | 415 | INVALID_REQUEST | `supported` |
//! | method not allowed on a route | 405 | INVALID_REQUEST | |
//! | auth failure | 401 | AUTH_ERROR | `WWW-Authenticate`; `token_status` |
//! | rate limited | 429 | RATE_LIMIT_EXCEEDED | `Retry-After`; `limit`, `window`, `reset_at` |
//! | `Error::NotFound`, unknown route | 404 | NOT_FOUND | |
//! | `Error::Raft`, `Error::NotLeader` | 503 | RAFT_ERROR | `Retry-After`; `retry_after`, leader hint |
//! | `GET /ready` before the node is ready | 503 | RAFT_ERROR | `Retry-After`; `retry_after`, what is missing |
//! | `Error::Storage` | 500 | STORAGE_ERROR | `storage_type`, `operation` |
//! | `Error::Internal` | 500 | INTERNAL_ERROR | none: the detail goes to the log only |
//! | request deadline passed | 504 | INTERNAL_ERROR | `timeout_ms` |
//!
//! Server-side details (storage failure reasons, internal errors) are logged with `tracing`
//! and never written to the body.
//!
//! The other protocols' endpoints answer the same status and headers in their own body
//! shape ([`ErrorShape`], chosen by path in [`reshape_errors`], the outermost layer, so that
//! authentication and rate-limit refusals are shaped too): InfluxDB's
//! `{"code": "invalid", "message": "..."}` on `/write` and `/api/v2/write`, Prometheus'
//! `{"status": "error", "errorType": "bad_data", "error": "..."}` under `/api/v1/`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use raftmetrics_core::{Error, ErrorCode, Timestamp};
use serde_json::{Map, Value, json};

/// The realm announced in `WWW-Authenticate`.
pub const AUTH_REALM: &str = "raftmetrics";
/// Seconds a client should wait before retrying after a consensus error.
pub const RAFT_RETRY_AFTER_SECS: u64 = 1;
/// The rate-limit window as written in the error body.
pub const RATE_LIMIT_WINDOW: &str = "1m";
/// Longest client-visible message or echoed string, in bytes (longer ones are cut).
const MAX_TEXT_BYTES: usize = 1024;
/// Most `details.fields` entries written (core already bounds its lists far below this).
const MAX_FIELDS: usize = 1000;

/// Why a request was refused by bearer authentication (`details.token_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStatus {
    /// No `Authorization` header, or one that does not use the Bearer scheme.
    Missing,
    /// A bearer token that is malformed or not one of the configured tokens.
    Invalid,
    /// A token-like parameter in the query string (refused even with a good header).
    QueryStringNotAllowed,
}

impl TokenStatus {
    /// The value of `details.token_status`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Missing => "missing",
            TokenStatus::Invalid => "invalid",
            TokenStatus::QueryStringNotAllowed => "query_string_not_allowed",
        }
    }
}

/// What went wrong: a core error or one of the failures only the HTTP layer knows.
#[derive(Debug, thiserror::Error)]
pub enum ApiErrorKind {
    /// An error of the core engine; its [`Error::code`] decides the response.
    #[error(transparent)]
    Core(#[from] Error),
    /// Bearer authentication refused the request.
    #[error("authentication failed: {}", .0.as_str())]
    Auth(TokenStatus),
    /// The token's request budget is spent; `retry_after` until the next request is allowed.
    #[error("rate limit of {limit}/min exceeded; retry after {retry_after:?}")]
    RateLimited {
        limit: u32,
        retry_after: Duration,
        /// Wall-clock time at which the error was raised.
        now: SystemTime,
    },
    /// The request body is larger than the configured limit (when known).
    #[error("request body too large")]
    PayloadTooLarge { limit_bytes: Option<u64> },
    /// The request's `Content-Type` is not one the endpoint reads.
    #[error("unsupported media type")]
    UnsupportedMediaType { supported: Vec<String> },
    /// No route matches the path.
    #[error("no route for {method} {path}")]
    RouteNotFound { method: Method, path: String },
    /// The route exists but not for this method.
    #[error("method {method} not allowed for {path}")]
    MethodNotAllowed { method: Method, path: String },
    /// The request did not finish within the server's deadline.
    #[error("request timed out after {after:?}")]
    Timeout { after: Duration },
    /// The node is not ready to serve (`GET /ready`): `message` says why, `details` lists
    /// what is missing.
    #[error("{message}")]
    NotReady {
        message: String,
        details: Map<String, Value>,
    },
}

/// An error on its way to becoming an HTTP response (see the module docs for the mapping).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ApiError(ApiErrorKind);

impl ApiError {
    /// Authentication failed for the given reason (401 AUTH_ERROR).
    pub fn auth(status: TokenStatus) -> Self {
        ApiError(ApiErrorKind::Auth(status))
    }

    /// The token exceeded its limit of `limit` requests per minute; the next request is
    /// allowed after `retry_after`. `now` is the current wall-clock time, from which
    /// `details.reset_at` is computed (429 RATE_LIMIT_EXCEEDED).
    pub fn rate_limited(limit: u32, retry_after: Duration, now: SystemTime) -> Self {
        ApiError(ApiErrorKind::RateLimited {
            limit,
            retry_after,
            now,
        })
    }

    /// The body is larger than `limit_bytes` (413 INVALID_REQUEST).
    pub fn payload_too_large(limit_bytes: Option<u64>) -> Self {
        ApiError(ApiErrorKind::PayloadTooLarge { limit_bytes })
    }

    /// The body's media type is not one of `supported` (415 INVALID_REQUEST).
    pub fn unsupported_media_type<I, S>(supported: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ApiError(ApiErrorKind::UnsupportedMediaType {
            supported: supported.into_iter().map(Into::into).collect(),
        })
    }

    /// No route for this method and path (404 NOT_FOUND).
    pub fn route_not_found(method: Method, path: &str) -> Self {
        ApiError(ApiErrorKind::RouteNotFound {
            method,
            path: bounded(path, 256),
        })
    }

    /// The path exists but not with this method (405 INVALID_REQUEST).
    pub fn method_not_allowed(method: Method, path: &str) -> Self {
        ApiError(ApiErrorKind::MethodNotAllowed {
            method,
            path: bounded(path, 256),
        })
    }

    /// The request missed the server's deadline `after` (504 INTERNAL_ERROR).
    pub fn timeout(after: Duration) -> Self {
        ApiError(ApiErrorKind::Timeout { after })
    }

    /// The node is not ready (503 RAFT_ERROR, with `Retry-After`); `details` says what is
    /// missing.
    pub fn not_ready(message: impl Into<String>, details: Map<String, Value>) -> Self {
        ApiError(ApiErrorKind::NotReady {
            message: bounded(&message.into(), MAX_TEXT_BYTES),
            details,
        })
    }

    /// A bug or unexpected state; `detail` is logged, the client sees a generic message.
    pub fn internal(detail: impl Into<String>) -> Self {
        ApiError(ApiErrorKind::Core(Error::Internal(detail.into())))
    }

    /// What went wrong.
    pub fn kind(&self) -> &ApiErrorKind {
        &self.0
    }

    /// The `code` of the response body.
    pub fn code(&self) -> ErrorCode {
        match &self.0 {
            ApiErrorKind::Core(e) => e.code(),
            ApiErrorKind::Auth(_) => ErrorCode::AuthError,
            ApiErrorKind::RateLimited { .. } => ErrorCode::RateLimitExceeded,
            ApiErrorKind::PayloadTooLarge { .. }
            | ApiErrorKind::UnsupportedMediaType { .. }
            | ApiErrorKind::MethodNotAllowed { .. } => ErrorCode::InvalidRequest,
            ApiErrorKind::RouteNotFound { .. } => ErrorCode::NotFound,
            ApiErrorKind::Timeout { .. } => ErrorCode::InternalError,
            ApiErrorKind::NotReady { .. } => ErrorCode::RaftError,
        }
    }

    /// The HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        match &self.0 {
            ApiErrorKind::Core(e) => match e.code() {
                ErrorCode::ValidationError | ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
                ErrorCode::AuthError => StatusCode::UNAUTHORIZED,
                ErrorCode::RateLimitExceeded => StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::NotFound => StatusCode::NOT_FOUND,
                ErrorCode::RaftError => StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::StorageError | ErrorCode::InternalError => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            ApiErrorKind::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiErrorKind::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiErrorKind::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiErrorKind::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiErrorKind::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiErrorKind::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiErrorKind::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiErrorKind::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Maps an axum extractor rejection by its status: 413 and 415 keep their meaning,
    /// everything else is a 400 INVALID_REQUEST carrying axum's (client-caused) message.
    fn from_rejection(status: StatusCode, text: String) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(None),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::unsupported_media_type(["application/json"])
            }
            _ => ApiError(ApiErrorKind::Core(Error::InvalidRequest(text))),
        }
    }

    /// The body's message and details, and the extra headers. Logs server-side detail.
    fn render(
        &self,
    ) -> (
        String,
        Map<String, Value>,
        Vec<(header::HeaderName, String)>,
    ) {
        let mut details = Map::new();
        let mut headers = Vec::new();
        let message = match &self.0 {
            ApiErrorKind::Core(e) => match e {
                Error::Validation(fields) => {
                    let mut list: Vec<Value> = fields
                        .iter()
                        .take(MAX_FIELDS)
                        .map(|f| {
                            json!({"field": bounded(&f.field, MAX_TEXT_BYTES),
                                   "error": bounded(&f.error, MAX_TEXT_BYTES)})
                        })
                        .collect();
                    if fields.len() > MAX_FIELDS {
                        list.push(json!({"field": "...",
                            "error": format!("{} more errors not shown", fields.len() - MAX_FIELDS)}));
                    }
                    details.insert("fields".into(), Value::Array(list));
                    "Invalid request parameters".to_string()
                }
                Error::InvalidRequest(m) => bounded(m, MAX_TEXT_BYTES),
                Error::NotFound(what) => format!("Not found: {}", bounded(what, MAX_TEXT_BYTES)),
                Error::Storage { operation, reason } => {
                    tracing::error!(operation, reason = %reason, "storage error");
                    details.insert("storage_type".into(), json!("duckdb"));
                    details.insert("operation".into(), json!(operation));
                    format!("Storage operation '{operation}' failed")
                }
                Error::Raft(m) => {
                    tracing::warn!(error = %m, "consensus error");
                    details.insert(
                        "retry_after".into(),
                        json!(format!("{RAFT_RETRY_AFTER_SECS}s")),
                    );
                    headers.push((header::RETRY_AFTER, RAFT_RETRY_AFTER_SECS.to_string()));
                    bounded(&e.to_string(), MAX_TEXT_BYTES)
                }
                Error::NotLeader { partition, leader } => {
                    details.insert("partition".into(), json!(partition));
                    details.insert("leader_id".into(), json!(leader));
                    details.insert(
                        "retry_after".into(),
                        json!(format!("{RAFT_RETRY_AFTER_SECS}s")),
                    );
                    headers.push((header::RETRY_AFTER, RAFT_RETRY_AFTER_SECS.to_string()));
                    format!("Not the leader of partition {partition}")
                }
                Error::Internal(detail) => {
                    tracing::error!(detail = %detail, "internal error");
                    "Internal server error".to_string()
                }
            },
            ApiErrorKind::Auth(status) => {
                details.insert("token_status".into(), json!(status.as_str()));
                let challenge = match status {
                    // RFC 6750 §3.1: no error code when no credentials were offered.
                    TokenStatus::Missing => format!("Bearer realm=\"{AUTH_REALM}\""),
                    TokenStatus::Invalid => {
                        format!("Bearer realm=\"{AUTH_REALM}\", error=\"invalid_token\"")
                    }
                    TokenStatus::QueryStringNotAllowed => {
                        format!("Bearer realm=\"{AUTH_REALM}\", error=\"invalid_request\"")
                    }
                };
                headers.push((header::WWW_AUTHENTICATE, challenge));
                match status {
                    TokenStatus::Missing => {
                        "Authentication required: send 'Authorization: Bearer <token>'"
                    }
                    TokenStatus::Invalid => "Invalid or expired authentication token",
                    TokenStatus::QueryStringNotAllowed => {
                        "Tokens are not accepted in the query string; use the Authorization header"
                    }
                }
                .to_string()
            }
            ApiErrorKind::RateLimited {
                limit,
                retry_after,
                now,
            } => {
                let secs = retry_after_secs(*retry_after);
                let reset = now
                    .checked_add(Duration::from_secs(secs))
                    .unwrap_or(*now)
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let micros = i64::try_from(reset.as_micros()).unwrap_or(i64::MAX);
                details.insert("limit".into(), json!(limit));
                details.insert("window".into(), json!(RATE_LIMIT_WINDOW));
                details.insert(
                    "reset_at".into(),
                    json!(Timestamp::from_micros(micros).to_rfc3339()),
                );
                headers.push((header::RETRY_AFTER, secs.to_string()));
                "Too many requests".to_string()
            }
            ApiErrorKind::PayloadTooLarge { limit_bytes } => match limit_bytes {
                Some(limit) => {
                    details.insert("limit_bytes".into(), json!(limit));
                    format!("Request body is larger than the limit of {limit} bytes")
                }
                None => "Request body is too large".to_string(),
            },
            ApiErrorKind::UnsupportedMediaType { supported } => {
                details.insert("supported".into(), json!(supported));
                format!(
                    "Unsupported Content-Type; expected {}",
                    supported.join(" or ")
                )
            }
            ApiErrorKind::RouteNotFound { method, path } => {
                format!("No endpoint {method} {path}")
            }
            ApiErrorKind::MethodNotAllowed { method, path } => {
                format!("Method {method} is not allowed for {path}")
            }
            ApiErrorKind::Timeout { after } => {
                let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                details.insert("timeout_ms".into(), json!(ms));
                format!("Request did not complete within {ms} ms; its outcome is unknown")
            }
            ApiErrorKind::NotReady {
                message,
                details: missing,
            } => {
                details.extend(missing.clone());
                details.insert(
                    "retry_after".into(),
                    json!(format!("{RAFT_RETRY_AFTER_SECS}s")),
                );
                headers.push((header::RETRY_AFTER, RAFT_RETRY_AFTER_SECS.to_string()));
                message.clone()
            }
        };
        (message, details, headers)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(ApiErrorKind::Core(e))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::from_rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::from_rejection(r.status(), r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        ApiError::from_rejection(r.status(), r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let (message, details, extra) = self.render();
        if status.is_client_error() {
            tracing::debug!(status = status.as_u16(), code = code.as_str(), %message, "request refused");
        }
        let mut headers = HeaderMap::new();
        for (name, value) in extra {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        // The other shapes have no details: the field errors go into their message.
        let fields: Vec<String> = details
            .get("fields")
            .and_then(Value::as_array)
            .map(|fields| {
                fields
                    .iter()
                    .map(|f| {
                        format!(
                            "{}: {}",
                            f["field"].as_str().unwrap_or_default(),
                            f["error"].as_str().unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rendered = Rendered {
            code,
            message: if fields.is_empty() {
                message.clone()
            } else {
                format!("{message}: {}", fields.join("; "))
            },
        };
        let body = json!({
            "error": true,
            "code": code.as_str(),
            "message": message,
            "details": Value::Object(details),
        });
        let mut response = (status, headers, Json(body)).into_response();
        response.extensions_mut().insert(rendered);
        response
    }
}

/// An error response's code and message (with the field errors of a validation error), kept
/// beside its body so that [`reshape_errors`] can write them in another protocol's shape.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub code: ErrorCode,
    pub message: String,
}

/// The body shape of an error answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorShape {
    /// The API reference's `{"error": true, "code", "message", "details"}`.
    Seed,
    /// InfluxDB's `{"code", "message"}` (the line protocol's write endpoints).
    Influx,
    /// The Prometheus HTTP API's `{"status": "error", "errorType", "error"}`.
    Prometheus,
}

impl ErrorShape {
    /// The shape of the endpoint at `path`.
    pub fn for_path(path: &str) -> ErrorShape {
        if path == "/write" || path == "/api/v2/write" {
            ErrorShape::Influx
        } else if path.starts_with("/api/v1/") {
            ErrorShape::Prometheus
        } else {
            ErrorShape::Seed
        }
    }

    /// The body of an error of `status` and `rendered` in this shape (`None`: the seed's,
    /// as written).
    pub fn body(self, status: StatusCode, rendered: &Rendered) -> Option<Value> {
        match self {
            ErrorShape::Seed => None,
            ErrorShape::Influx => {
                let code = match status.as_u16() {
                    400 | 415 => "invalid",
                    401 => "unauthorized",
                    404 => "not found",
                    405 => "method not allowed",
                    413 => "request too large",
                    429 => "too many requests",
                    503 | 504 => "unavailable",
                    _ => "internal error",
                };
                Some(json!({"code": code, "message": rendered.message}))
            }
            ErrorShape::Prometheus => {
                let error_type = match status.as_u16() {
                    404 => "not_found",
                    // Retryable, like a node that cannot answer now (Prometheus has no 429).
                    429 | 503 => "unavailable",
                    504 => "timeout",
                    s if s >= 500 => "internal",
                    _ => "bad_data",
                };
                Some(json!({
                    "status": "error",
                    "errorType": error_type,
                    "error": format!("{}: {}", rendered.code.as_str(), rendered.message),
                }))
            }
        }
    }
}

/// The outermost layer of every public router: an error answer of an endpoint of another
/// protocol is written in that protocol's shape, with the same status and headers.
pub async fn reshape_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let shape = ErrorShape::for_path(request.uri().path());
    let response = next.run(request).await;
    if shape == ErrorShape::Seed {
        return response;
    }
    let Some(rendered) = response.extensions().get::<Rendered>().cloned() else {
        return response;
    };
    let Some(body) = shape.body(response.status(), &rendered) else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut reshaped = Json(body).into_response();
    *reshaped.status_mut() = parts.status;
    for (name, value) in parts.headers.iter() {
        reshaped.headers_mut().insert(name.clone(), value.clone());
    }
    reshaped
}

/// A `Router::fallback` handler: unknown routes answer 404 NOT_FOUND in the API format.
pub async fn fallback_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::route_not_found(method, uri.path())
}

/// A `Router::method_not_allowed_fallback` handler: a known path with a wrong method answers
/// 405 in the API format.
pub async fn fallback_method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method, uri.path())
}

/// What a request answers when its handler panicked (`CatchPanicLayer`): 500
/// INTERNAL_ERROR in the API format, the panic message in the log only. A panic is a bug;
/// this keeps it from also dropping the client's connection.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    ApiError::internal(format!("request handler panicked: {detail}")).into_response()
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
pub fn retry_after_secs(retry_after: Duration) -> u64 {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    secs.max(1)
}

/// `text` cut to at most `max` bytes on a character boundary (with a marker when cut).
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_protocols_get_their_own_error_shape_with_the_field_errors() {
        assert_eq!(ErrorShape::for_path("/write"), ErrorShape::Influx);
        assert_eq!(ErrorShape::for_path("/api/v2/write"), ErrorShape::Influx);
        assert_eq!(
            ErrorShape::for_path("/api/v1/write"),
            ErrorShape::Prometheus
        );
        assert_eq!(ErrorShape::for_path("/insert"), ErrorShape::Seed);
        let response = ApiError::from(Error::Validation(vec![raftmetrics_core::FieldError::new(
            "line 2",
            "field \"x\" has a string value",
        )]))
        .into_response();
        let rendered = response
            .extensions()
            .get::<Rendered>()
            .expect("rendered")
            .clone();
        assert!(
            rendered.message.contains("line 2: field \"x\""),
            "{rendered:?}"
        );
        let influx = ErrorShape::Influx
            .body(StatusCode::BAD_REQUEST, &rendered)
            .unwrap();
        assert_eq!(influx["code"], "invalid");
        assert_eq!(influx["message"], rendered.message.as_str());
        let prometheus = ErrorShape::Prometheus
            .body(StatusCode::BAD_REQUEST, &rendered)
            .unwrap();
        assert_eq!(prometheus["status"], "error");
        assert_eq!(prometheus["errorType"], "bad_data");
        let unavailable = ErrorShape::Prometheus
            .body(StatusCode::SERVICE_UNAVAILABLE, &rendered)
            .unwrap();
        assert_eq!(unavailable["errorType"], "unavailable");
        assert!(
            ErrorShape::Seed
                .body(StatusCode::BAD_REQUEST, &rendered)
                .is_none()
        );
    }
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::extract::DefaultBodyLimit;
    use axum::http::Request;
    use axum::routing::{get, post};
    use raftmetrics_core::FieldError;
    use tower::ServiceExt;

    async fn parts(resp: Response) -> (StatusCode, HeaderMap, Value) {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        let body: Value = serde_json::from_slice(&bytes).expect("json body");
        assert_eq!(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert_eq!(body["error"], json!(true));
        assert!(body["message"].is_string());
        assert!(body["details"].is_object());
        (status, headers, body)
    }

    async fn render(err: impl Into<ApiError>) -> (StatusCode, HeaderMap, Value) {
        parts(err.into().into_response()).await
    }

    #[tokio::test]
    async fn validation_lists_every_field() {
        let err = Error::Validation(vec![
            FieldError::new("from", "must be a valid ISO 8601 timestamp"),
            FieldError::new("window", "must be one of: 1m, 5m, 1h, 1d"),
        ]);
        let (status, _, body) = render(err).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "VALIDATION_ERROR");
        assert_eq!(body["message"], "Invalid request parameters");
        assert_eq!(
            body["details"]["fields"],
            json!([
                {"field": "from", "error": "must be a valid ISO 8601 timestamp"},
                {"field": "window", "error": "must be one of: 1m, 5m, 1h, 1d"},
            ])
        );
    }

    #[tokio::test]
    async fn invalid_request_is_400() {
        let (status, _, body) = render(Error::InvalidRequest("bad encoding".into())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "INVALID_REQUEST");
        assert_eq!(body["message"], "bad encoding");
        assert_eq!(body["details"], json!({}));
    }

    #[tokio::test]
    async fn auth_errors_are_401_with_challenge() {
        for (status, challenge) in [
            (TokenStatus::Missing, "Bearer realm=\"raftmetrics\""),
            (
                TokenStatus::Invalid,
                "Bearer realm=\"raftmetrics\", error=\"invalid_token\"",
            ),
            (
                TokenStatus::QueryStringNotAllowed,
                "Bearer realm=\"raftmetrics\", error=\"invalid_request\"",
            ),
        ] {
            let (code, headers, body) = render(ApiError::auth(status)).await;
            assert_eq!(code, StatusCode::UNAUTHORIZED);
            assert_eq!(body["code"], "AUTH_ERROR");
            assert_eq!(body["details"]["token_status"], status.as_str());
            assert_eq!(headers[header::WWW_AUTHENTICATE], challenge);
        }
    }

    #[tokio::test]
    async fn rate_limited_is_429_with_retry_after_and_reset() {
        let now = UNIX_EPOCH + Duration::from_secs(1_705_764_600); // 2024-01-20T15:30:00Z
        let err = ApiError::rate_limited(1000, Duration::from_millis(59_001), now);
        let (status, headers, body) = render(err).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "60");
        assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
        assert_eq!(body["message"], "Too many requests");
        assert_eq!(
            body["details"],
            json!({"limit": 1000, "window": "1m", "reset_at": "2024-01-20T15:31:00Z"})
        );
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(60)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(20)), 20);
        assert_eq!(retry_after_secs(Duration::from_millis(20_001)), 21);
    }

    #[tokio::test]
    async fn payload_too_large_is_413_invalid_request() {
        let (status, _, body) = render(ApiError::payload_too_large(Some(64))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["code"], "INVALID_REQUEST");
        assert_eq!(body["details"]["limit_bytes"], 64);
    }

    #[tokio::test]
    async fn unsupported_media_type_is_415_invalid_request() {
        let err = ApiError::unsupported_media_type(["application/json", "application/x-bincode"]);
        let (status, _, body) = render(err).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["code"], "INVALID_REQUEST");
        assert_eq!(
            body["details"]["supported"],
            json!(["application/json", "application/x-bincode"])
        );
    }

    #[tokio::test]
    async fn not_found_core_and_route_are_404() {
        let (status, _, body) = render(Error::NotFound("partition 7".into())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "NOT_FOUND");
        assert_eq!(body["message"], "Not found: partition 7");

        let app = Router::new().fallback(fallback_not_found);
        let resp = app
            .oneshot(Request::get("/nope").body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let (status, _, body) = parts(resp).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "NOT_FOUND");
        assert_eq!(body["message"], "No endpoint GET /nope");
    }

    #[tokio::test]
    async fn method_not_allowed_is_405() {
        let app = Router::new().route(
            "/insert",
            post(|| async { "ok" }).fallback(fallback_method_not_allowed),
        );
        let resp = app
            .oneshot(
                Request::get("/insert")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        let (status, _, body) = parts(resp).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["code"], "INVALID_REQUEST");
    }

    #[tokio::test]
    async fn not_leader_is_503_with_leader_hint() {
        let err = Error::NotLeader {
            partition: 3,
            leader: Some(2),
        };
        let (status, headers, body) = render(err).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(body["code"], "RAFT_ERROR");
        assert_eq!(
            body["details"],
            json!({"partition": 3, "leader_id": 2, "retry_after": "1s"})
        );
        let unknown = Error::NotLeader {
            partition: 3,
            leader: None,
        };
        let (_, _, body) = render(unknown).await;
        assert_eq!(body["details"]["leader_id"], Value::Null);
    }

    #[tokio::test]
    async fn raft_error_is_503_with_retry_after() {
        let err = Error::Raft("partition 1: timed out waiting for the write to commit".into());
        let (status, headers, body) = render(err).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(body["code"], "RAFT_ERROR");
        assert_eq!(body["details"], json!({"retry_after": "1s"}));
    }

    #[tokio::test]
    async fn storage_error_is_500_without_reason() {
        let err = Error::Storage {
            operation: "insert",
            reason: "IO Error: /var/lib/secret/path.duckdb: disk full".into(),
        };
        let (status, _, body) = render(err).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["code"], "STORAGE_ERROR");
        assert_eq!(
            body["details"],
            json!({"storage_type": "duckdb", "operation": "insert"})
        );
        assert!(!body.to_string().contains("/var/lib/secret"));
    }

    #[tokio::test]
    async fn internal_error_is_500_and_generic() {
        let (status, _, body) = render(ApiError::internal("lock poisoned at x.rs:12")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["code"], "INTERNAL_ERROR");
        assert_eq!(body["message"], "Internal server error");
        assert_eq!(body["details"], json!({}));
        assert!(!body.to_string().contains("poisoned"));
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_in_the_api_format() {
        let app = Router::new()
            .route(
                "/boom",
                get(|| async {
                    let v: Vec<u8> = Vec::new();
                    v[1].to_string()
                }),
            )
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                panic_response,
            ));
        let resp = app
            .oneshot(Request::get("/boom").body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let (status, _, body) = parts(resp).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["code"], "INTERNAL_ERROR");
        assert_eq!(body["message"], "Internal server error");
    }

    #[tokio::test]
    async fn timeout_is_504() {
        let (status, _, body) = render(ApiError::timeout(Duration::from_millis(30_000))).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(body["code"], "INTERNAL_ERROR");
        assert_eq!(body["details"]["timeout_ms"], 30_000);
    }

    #[tokio::test]
    async fn long_messages_are_cut() {
        let (_, _, body) = render(Error::InvalidRequest("é".repeat(5000))).await;
        let message = body["message"].as_str().expect("message");
        assert!(message.len() <= MAX_TEXT_BYTES + 3);
    }

    #[tokio::test]
    async fn json_rejections_use_the_api_format() {
        async fn handler(
            body: Result<Json<Value>, JsonRejection>,
        ) -> Result<&'static str, ApiError> {
            let Json(_) = body?;
            Ok("ok")
        }
        let app = Router::new()
            .route("/insert", post(handler))
            .layer(DefaultBodyLimit::max(16));
        let send = |content_type: Option<&str>, body: &str| {
            let mut req = Request::post("/insert");
            if let Some(ct) = content_type {
                req = req.header(header::CONTENT_TYPE, ct);
            }
            app.clone()
                .oneshot(req.body(Body::from(body.to_string())).expect("request"))
        };

        let (status, _, body) = parts(send(None, "{}").await.expect("response")).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["code"], "INVALID_REQUEST");

        let resp = send(Some("application/json"), "{nope")
            .await
            .expect("response");
        let (status, _, body) = parts(resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "INVALID_REQUEST");

        let big = format!("{{\"k\": \"{}\"}}", "x".repeat(100));
        let resp = send(Some("application/json"), &big)
            .await
            .expect("response");
        let (status, _, body) = parts(resp).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["code"], "INVALID_REQUEST");

        let resp = send(Some("application/json"), "{}")
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
