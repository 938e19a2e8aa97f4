//! The public HTTP API's shared layers: the error format, authentication, rate limits.

pub mod auth;
pub mod error;
pub mod rate_limit;
