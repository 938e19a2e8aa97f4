//! The public HTTP API's shared layers: the error format, authentication, rate limits, body
//! codecs, the `/aggregate` document and the layer stack.

pub mod auth;
pub mod body;
pub mod error;
pub mod rate_limit;
pub mod render;
pub mod stack;
