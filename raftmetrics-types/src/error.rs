//! The one error type of RaftMetrics (`raftmetrics-types`, re-exported by `raftmetrics-core`).
//!
//! Every failure a caller can see is one of these variants. Each variant has a stable
//! [`ErrorCode`] (the seed API's `code` field); transports map codes to their own status
//! codes in one place (the server's HTTP layer), never by matching on messages.

use serde::{Deserialize, Serialize};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One invalid field of a request, named so that a client can point at it.
///
/// `field` is a path such as `key`, `from`, or `points[3].tags.host` for the fourth point
/// of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub error: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            error: error.into(),
        }
    }
}

/// Stable machine-readable error codes, as in the API reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    InvalidRequest,
    ValidationError,
    AuthError,
    RateLimitExceeded,
    NotFound,
    RaftError,
    StorageError,
    InternalError,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::InvalidRequest,
        ErrorCode::ValidationError,
        ErrorCode::AuthError,
        ErrorCode::RateLimitExceeded,
        ErrorCode::NotFound,
        ErrorCode::RaftError,
        ErrorCode::StorageError,
        ErrorCode::InternalError,
    ];

    /// The code a JSON error body names (`"RAFT_ERROR"`), if it is one.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The code as it appears in the JSON error body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::AuthError => "AUTH_ERROR",
            ErrorCode::RateLimitExceeded => "RATE_LIMIT_EXCEEDED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::RaftError => "RAFT_ERROR",
            ErrorCode::StorageError => "STORAGE_ERROR",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }
}

/// Everything that can go wrong in the core engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is well formed but some fields break the rules; every bad field is listed.
    #[error("invalid request parameters: {}", summarize(.0))]
    Validation(Vec<FieldError>),
    /// The request cannot be understood at all (bad encoding, unknown shape).
    #[error("{0}")]
    InvalidRequest(String),
    /// The named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The storage engine failed; nothing of the failed operation was kept.
    #[error("storage error during {operation}: {reason}")]
    Storage {
        operation: &'static str,
        reason: String,
    },
    /// Consensus could not be reached or this replica cannot serve the request.
    #[error("consensus error: {0}")]
    Raft(String),
    /// This replica is not the leader of the partition; `leader` is the node that is, when
    /// known. The request may be retried there.
    #[error("not the leader of partition {partition} (leader: {leader:?})")]
    NotLeader { partition: u32, leader: Option<u64> },
    /// A bug or an unexpected state; the message is for logs, not for clients.
    #[error("internal error: {0}")]
    Internal(String),
}

fn summarize(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.error))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The stable code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Validation(_) => ErrorCode::ValidationError,
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Storage { .. } => ErrorCode::StorageError,
            Error::Raft(_) | Error::NotLeader { .. } => ErrorCode::RaftError,
            Error::Internal(_) => ErrorCode::InternalError,
        }
    }

    /// A validation error about a single field.
    pub fn field(field: impl Into<String>, error: impl Into<String>) -> Self {
        Error::Validation(vec![FieldError::new(field, error)])
    }

    /// A storage failure (`STORAGE_ERROR`): `operation` failed for `err`. Built by the
    /// engine's stores and raft log.
    #[doc(hidden)]
    pub fn storage(operation: &'static str, err: impl std::fmt::Display) -> Self {
        Error::Storage {
            operation,
            reason: err.to_string(),
        }
    }
}
