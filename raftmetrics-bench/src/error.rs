//! The one error type of the benchmark tool.

use std::path::PathBuf;

/// Why a benchmark could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options make no benchmark.
    #[error("{0}")]
    Config(String),
    /// A request to the cluster failed.
    #[error("cluster request failed: {0}")]
    Client(#[from] raftmetrics_client::Error),
    /// The plain DuckDB reference failed.
    #[error("reference DuckDB: {0}")]
    DuckDb(#[from] duckdb::Error),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The server binary to start a cluster with is not there.
    #[error(
        "server binary {0} not found: build it with `cargo build --release --bin raftmetrics-server` \
         or pass --server-bin"
    )]
    ServerBinary(PathBuf),
    /// The local cluster did not start or stopped.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The cluster and the reference disagree on an answer.
    #[error("answers differ: {0}")]
    Mismatch(String),
    /// A background task failed.
    #[error("task failed: {0}")]
    Task(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

impl BenchError {
    /// An [`BenchError::Io`] naming what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}

/// Results of this crate.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
