//! Node-to-node communication: length-prefixed frames over TCP.

pub mod frame;
pub mod tcp_transport;
