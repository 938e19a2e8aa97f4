//! Decoders of the insert formats other systems speak: each turns a request body into
//! [`Point`](raftmetrics_core::Point)s (pure functions: bytes in, points or an error out, no
//! I/O), which then pass the one validation gate,
//! [`validate_batch`](raftmetrics_core::model::validate_batch), like every other insert.

pub mod line_protocol;
pub mod remote_write;
