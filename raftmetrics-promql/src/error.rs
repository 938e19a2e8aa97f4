//! What a PromQL request can fail with, as the Prometheus HTTP API classifies it.

/// An error of a PromQL request. The variant decides the answer's `errorType` and status:
/// [`PromError::BadData`] is `bad_data` (400), [`PromError::Execution`] is `execution`
/// (422), [`PromError::TooLarge`] is `execution` (422) too, as Prometheus answers a query
/// over its sample limit, and [`PromError::Timeout`] is `timeout` (503).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum PromError {
    /// The request is malformed, or asks for something this subset does not evaluate.
    #[error("{0}")]
    BadData(String),
    /// The expression is valid but its evaluation failed (for example, a one-to-one match
    /// that found several series on one side).
    #[error("{0}")]
    Execution(String),
    /// The query would load or return more than the stated bounds.
    #[error("{0}")]
    TooLarge(String),
    /// The query did not finish within its timeout.
    #[error("{0}")]
    Timeout(String),
}

impl PromError {
    /// A `bad_data` error.
    pub fn bad(message: impl Into<String>) -> Self {
        PromError::BadData(message.into())
    }

    /// An `execution` error.
    pub fn execution(message: impl Into<String>) -> Self {
        PromError::Execution(message.into())
    }

    /// The answer's `errorType`.
    pub fn error_type(&self) -> &'static str {
        match self {
            PromError::BadData(_) => "bad_data",
            PromError::Execution(_) | PromError::TooLarge(_) => "execution",
            PromError::Timeout(_) => "timeout",
        }
    }

    /// The answer's HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            PromError::BadData(_) => 400,
            PromError::Execution(_) | PromError::TooLarge(_) => 422,
            PromError::Timeout(_) => 503,
        }
    }
}

pub type Result<T, E = PromError> = std::result::Result<T, E>;
