//! The one error type of the server's processes (startup and shutdown). Request errors are
//! [`crate::http::error::ApiError`]; node-to-node errors are [`crate::rpc::RpcError`].

use raftmetrics_core::Error as CoreError;

use crate::wire::frame::WireError;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl ServerError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
        let what = what.into();
        move |source| ServerError::Io { what, source }
    }
}
