//! The public HTTP API's shared layers: the error format, authentication, rate limits, body
//! codecs, the `/aggregate` document, the layer stack and the bounded listener.

pub mod auth;
pub mod body;
pub mod error;
pub mod listener;
pub mod rate_limit;
pub mod render;
pub mod stack;
