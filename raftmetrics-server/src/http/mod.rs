//! The public HTTP API: one module per protocol over [`crate::frontend::Frontend`] (`seed`:
//! the API reference's JSON and bincode endpoints; `influx`: the line protocol's writes;
//! `remote_write`: Prometheus remote write; `export`: points out as JSON lines or CSV;
//! `import`: the export's JSON lines back in; `prometheus`: the Prometheus query API and
//! its PromQL subset; `console`: the control node's web console, a static page), and the shared layers: the error format and its per-protocol shapes, authentication, rate
//! limits, body codecs, the `/aggregate` document, the layer stack and the bounded
//! listener.

pub mod auth;
pub mod body;
pub mod console;
pub mod error;
pub mod export;
pub mod import;
pub mod influx;
pub mod listener;
pub mod prometheus;
pub mod rate_limit;
pub mod remote_write;
pub mod render;
pub mod seed;
pub mod stack;
