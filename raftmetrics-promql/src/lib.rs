//! RaftMetrics' PromQL subset, as the Prometheus HTTP API serves it: the parameter forms
//! ([`params`]), a plan of what an expression reads ([`plan`]), a pure evaluator with
//! Prometheus 2's semantics ([`eval`]) and the API's JSON answers ([`render`]).
//!
//! The expression is parsed by `promql-parser` (Prometheus' grammar); everything outside
//! the subset (see [`plan::RANGE_FUNCTIONS`] and [`plan::OTHER_FUNCTIONS`]) is refused as `bad_data`, naming the construct. The
//! server reads what the plan lists and hands the series to the evaluator; nothing here
//! does I/O.

pub mod error;
pub mod eval;
pub mod params;
pub mod plan;
pub mod render;
pub mod value;

pub use error::PromError;
pub use promql_parser::label::{MatchOp, Matcher};
pub use value::{Labels, METRIC_NAME, Series, Value};
