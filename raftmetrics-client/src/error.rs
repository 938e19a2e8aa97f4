//! The client's error type.

use std::time::Duration;

use raftmetrics_types::api::ErrorBody;
use raftmetrics_types::{Coverage, ErrorCode, FieldError};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a call to the cluster can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a non-2xx status.
    ///
    /// `code` is the body's `code` mapped to an [`ErrorCode`]. When the body carries no code,
    /// or one this client does not know (`raw_code` keeps the text as sent), `code` falls back
    /// to what the status says: see [`code_for_status`].
    #[error("HTTP {status} {}: {message}", raw_code_or(.raw_code, .code))]
    Api {
        status: u16,
        code: ErrorCode,
        /// The `code` string exactly as the server sent it (empty when the body had none).
        raw_code: String,
        message: String,
        /// The body's `details` (`null` when absent); for `VALIDATION_ERROR`,
        /// `{"fields": [{"field", "error"}]}` (see [`Error::validation_fields`]).
        details: serde_json::Value,
        /// The `Retry-After` header (whole seconds), on 429 and 503 answers.
        retry_after: Option<Duration>,
    },
    /// The request did not complete: connection refused or reset, timeout, bad response
    /// framing.
    #[error("transport error: {0}")]
    Transport(TransportError),
    /// A 2xx response whose body could not be decoded as the expected type.
    #[error("cannot decode the response: {0}")]
    Decode(String),
    /// The request body could not be encoded (e.g. a non-finite value in JSON mode).
    #[error("cannot encode the request: {0}")]
    Encode(String),
    /// A response body was larger than the configured limit; it was not read further.
    #[error("response body exceeds the limit of {limit} bytes")]
    ResponseTooLarge { limit: usize },
    /// The client was configured wrongly (bad URL, missing token, ...).
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
    /// A partial answer was refused by [`crate::Answer::into_complete`].
    #[error(
        "partial answer: {} of {} nodes responded, partitions {:?} missing",
        .coverage.responding_nodes,
        .coverage.total_nodes,
        .coverage.missing_partitions
    )]
    Partial { coverage: Coverage },
    /// [`crate::Client::wait_ready`] gave up: no node was ready within `waited`; `last` is
    /// the last answer (a 503 naming what is missing) or failure, if any came.
    #[error("no node was ready within {waited:?}{}", .last.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotReady {
        waited: Duration,
        last: Option<Box<Error>>,
    },
    /// A client of several control nodes tried each of them once for a request, and each
    /// failed in a way that hands the request on to the next node
    /// ([`Error::is_failover`]: no connection, a timeout, or `503`). `tried` is the number of
    /// nodes asked, `url` the base URL of the last one and `last` its failure.
    ///
    /// The accessors ([`Error::status`], [`Error::code`], [`Error::retry_after`],
    /// [`Error::is_retryable`], ...) answer for `last`. A client of one node returns that
    /// node's failure itself instead.
    #[error("all {tried} nodes failed; the last, {url}: {last}")]
    AllNodesFailed {
        tried: usize,
        url: String,
        last: Box<Error>,
    },
}

fn raw_code_or<'a>(raw: &'a str, code: &ErrorCode) -> &'a str {
    if raw.is_empty() { code.as_str() } else { raw }
}

impl Error {
    /// The failure of the last node tried: `last` of an [`Error::AllNodesFailed`], else
    /// this error.
    fn last_node(&self) -> &Error {
        match self {
            Error::AllNodesFailed { last, .. } => last.last_node(),
            other => other,
        }
    }

    /// The HTTP status of an [`Error::Api`].
    pub fn status(&self) -> Option<u16> {
        match self.last_node() {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code of an [`Error::Api`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self.last_node() {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// How long the server asked to wait before retrying (429, 503), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.last_node() {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The request was refused by the rate limiter (`429 RATE_LIMIT_EXCEEDED`).
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(429) || self.code() == Some(ErrorCode::RateLimitExceeded)
    }

    /// The token was missing, unknown or not allowed (`401`/`403`, `AUTH_ERROR`).
    pub fn is_auth_error(&self) -> bool {
        matches!(self.status(), Some(401 | 403)) || self.code() == Some(ErrorCode::AuthError)
    }

    /// Whether a client of several control nodes sends the request on to the next node
    /// after this failure: the node could not be reached, the request timed out or failed
    /// in transit ([`Error::Transport`]), or the node answered `503`. An
    /// [`Error::AllNodesFailed`] is one too. Other errors are the cluster's answer and are
    /// returned without asking another node.
    pub fn is_failover(&self) -> bool {
        matches!(
            self.last_node(),
            Error::Transport(_) | Error::Api { status: 503, .. }
        )
    }

    /// The request itself was wrong (`INVALID_REQUEST` or `VALIDATION_ERROR`); retrying it
    /// unchanged will fail again.
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self.code(),
            Some(ErrorCode::InvalidRequest | ErrorCode::ValidationError)
        )
    }

    /// The partial answer refused by [`crate::Answer::into_complete`].
    pub fn is_partial(&self) -> bool {
        matches!(self, Error::Partial { .. })
    }

    /// Whether the same request may succeed later: rate limited, service unavailable (e.g. a
    /// partition without a leader, or a partial answer with `allow_partial=false`), bad
    /// gateway or gateway timeout, or a transport failure (connection refused, timeout).
    ///
    /// An insert sent again must carry the same `Idempotency-Key` to be stored once, even
    /// when its first attempt was stored but its answer lost; the client's own retries and
    /// failovers do so.
    pub fn is_retryable(&self) -> bool {
        match self.last_node() {
            Error::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            Error::Transport(_) | Error::NotReady { .. } => true,
            _ => false,
        }
    }

    /// The invalid fields of a `VALIDATION_ERROR` (`details.fields`), e.g.
    /// `points[3].metric` or `from`. Empty for any other error.
    pub fn validation_fields(&self) -> Vec<FieldError> {
        let Error::Api { details, .. } = self.last_node() else {
            return Vec::new();
        };
        details
            .get("fields")
            .and_then(|f| serde_json::from_value::<Vec<FieldError>>(f.clone()).ok())
            .unwrap_or_default()
    }

    /// Builds the error of a non-2xx response from its status, `Retry-After` header and body.
    pub(crate) fn from_response(status: u16, retry_after: Option<&str>, body: &[u8]) -> Error {
        let retry_after = retry_after.and_then(parse_retry_after);
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(body) => {
                let code = parse_code(&body.code).unwrap_or_else(|| code_for_status(status));
                Error::Api {
                    status,
                    code,
                    raw_code: body.code,
                    message: body.message,
                    details: body.details,
                    retry_after,
                }
            }
            // Not our error body (a proxy, or a rejection before the API layer): keep what
            // the body says, bounded.
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let mut message: String = text.trim().chars().take(1_000).collect();
                if message.is_empty() {
                    message = format!("HTTP status {status} without an error body");
                }
                Error::Api {
                    status,
                    code: code_for_status(status),
                    raw_code: String::new(),
                    message,
                    details: serde_json::Value::Null,
                    retry_after,
                }
            }
        }
    }
}

/// Maps a `code` string of an error body to an [`ErrorCode`]; `None` when unknown.
pub fn parse_code(code: &str) -> Option<ErrorCode> {
    ErrorCode::parse(code)
}

/// The code assumed for an error answer without a known `code`: `401`/`403` →
/// `AUTH_ERROR`, `404` → `NOT_FOUND`, `429` → `RATE_LIMIT_EXCEEDED`, `422` →
/// `VALIDATION_ERROR`, other `4xx` → `INVALID_REQUEST`, `503` → `RAFT_ERROR`, anything else
/// → `INTERNAL_ERROR`.
pub fn code_for_status(status: u16) -> ErrorCode {
    match status {
        401 | 403 => ErrorCode::AuthError,
        404 => ErrorCode::NotFound,
        422 => ErrorCode::ValidationError,
        429 => ErrorCode::RateLimitExceeded,
        400..=499 => ErrorCode::InvalidRequest,
        503 => ErrorCode::RaftError,
        _ => ErrorCode::InternalError,
    }
}

/// `Retry-After` in whole seconds (the only form the server sends).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A failure below HTTP: connecting, sending, timing out, reading.
///
/// Its message spells out the whole chain of causes (`error sending request for url (...):
/// client error (Connect): tcp connect error: Connection refused`), so it has no
/// [`source`](std::error::Error::source) of its own.
#[derive(Debug)]
pub struct TransportError(reqwest::Error);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = std::error::Error::source(&self.0);
        while let Some(cause) = source {
            let text = cause.to_string();
            if text != last {
                write!(f, ": {text}")?;
            }
            last = text;
            source = cause.source();
        }
        Ok(())
    }
}

impl std::error::Error for TransportError {}

impl TransportError {
    /// The request timed out (the client's timeout or the connect timeout).
    pub fn is_timeout(&self) -> bool {
        self.0.is_timeout()
    }

    /// The connection could not be established (refused, unreachable, DNS).
    pub fn is_connect(&self) -> bool {
        self.0.is_connect()
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        Error::Transport(TransportError(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_validation_errors() {
        let body =
            br#"{"error":true,"code":"VALIDATION_ERROR","message":"invalid request parameters",
            "details":{"fields":[{"field":"points[3].metric","error":"must match pattern"},
                                 {"field":"from","error":"must be a valid ISO 8601 timestamp"}]}}"#;
        let err = Error::from_response(400, None, body);
        assert_eq!(err.status(), Some(400));
        assert_eq!(err.code(), Some(ErrorCode::ValidationError));
        assert!(err.is_invalid_request() && !err.is_retryable() && !err.is_rate_limited());
        let fields = err.validation_fields();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].field, "points[3].metric");
        assert_eq!(
            fields[1],
            FieldError::new("from", "must be a valid ISO 8601 timestamp")
        );
        assert_eq!(
            err.to_string(),
            "HTTP 400 VALIDATION_ERROR: invalid request parameters"
        );
    }

    #[test]
    fn decodes_rate_limits_with_retry_after() {
        let body = br#"{"error":true,"code":"RATE_LIMIT_EXCEEDED","message":"slow down","details":{"limit":100}}"#;
        let err = Error::from_response(429, Some("7"), body);
        assert!(err.is_rate_limited() && err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert!(err.validation_fields().is_empty());
        let Error::Api { details, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(details["limit"], 100);
        // A date or garbage is not a number of seconds.
        let err = Error::from_response(503, Some("Wed, 21 Oct 2015 07:28:00 GMT"), body);
        assert_eq!(err.retry_after(), None);
    }

    #[test]
    fn maps_every_known_code_and_falls_back_on_unknown_ones() {
        for code in ErrorCode::ALL {
            assert_eq!(parse_code(code.as_str()), Some(code));
        }
        let body = br#"{"error":true,"code":"SHINY_NEW_CODE","message":"m"}"#;
        let err = Error::from_response(409, None, body);
        let Error::Api {
            code,
            raw_code,
            details,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*code, ErrorCode::InvalidRequest);
        assert_eq!(raw_code, "SHINY_NEW_CODE");
        assert!(details.is_null());
        assert_eq!(err.to_string(), "HTTP 409 SHINY_NEW_CODE: m");
    }

    #[test]
    fn survives_bodies_that_are_not_error_bodies() {
        let err = Error::from_response(401, None, b"");
        assert!(err.is_auth_error());
        assert_eq!(err.code(), Some(ErrorCode::AuthError));
        let err = Error::from_response(502, None, b"<html>Bad Gateway</html>");
        assert_eq!(err.code(), Some(ErrorCode::InternalError));
        assert!(err.is_retryable());
        assert!(err.to_string().contains("Bad Gateway"));
        let err = Error::from_response(413, None, &[b'x'; 100_000]);
        let Error::Api { message, .. } = err else {
            panic!()
        };
        assert_eq!(message.len(), 1_000);
        // A partial answer refused by the server is an ordinary API error.
        let body = br#"{"error":true,"code":"RAFT_ERROR","message":"partial answer","details":{"missing_partitions":[3]}}"#;
        let err = Error::from_response(503, Some("1"), body);
        assert_eq!(err.code(), Some(ErrorCode::RaftError));
        assert!(err.is_retryable() && !err.is_partial());
    }

    #[test]
    fn all_nodes_failed_answers_for_the_last_node() {
        let body = br#"{"error":true,"code":"RAFT_ERROR","message":"no leader"}"#;
        let last = Error::from_response(503, Some("2"), body);
        assert!(last.is_failover());
        let err = Error::AllNodesFailed {
            tried: 3,
            url: "http://10.0.0.3:8080/".into(),
            last: Box::new(last),
        };
        assert_eq!(
            err.to_string(),
            "all 3 nodes failed; the last, http://10.0.0.3:8080/: HTTP 503 RAFT_ERROR: no leader"
        );
        assert_eq!(err.status(), Some(503));
        assert_eq!(err.code(), Some(ErrorCode::RaftError));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
        assert!(err.is_retryable() && err.is_failover());
        assert!(!err.is_rate_limited() && !err.is_auth_error() && !err.is_invalid_request());
        // Only unreachable nodes, timeouts and 503 hand a request on.
        for status in [400, 401, 404, 429, 500, 502, 504] {
            assert!(
                !Error::from_response(status, None, b"").is_failover(),
                "{status}"
            );
        }
        assert!(!Error::Decode("x".into()).is_failover());
    }
}
