//! The one binary codec: bincode 2 (serde mode), with a size limit and no trailing bytes.
//!
//! Raft log entries, snapshots and (in the server) the bincode API all encode through here,
//! so the wire format and its limits are decided in one place (ADR 005).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest encoded value accepted: 256 MiB.
pub const MAX_ENCODED_BYTES: usize = 256 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ENCODED_BYTES>()
}

/// Encodes `value`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config())
        .map_err(|e| Error::Internal(format!("encode: {e}")))
}

/// Encodes `value` at the end of `out`.
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<()> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| Error::Internal(format!("encode: {e}")))
}

/// Decodes a `T` that must fill `bytes` exactly (text may be borrowed from `bytes`).
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    if bytes.len() > MAX_ENCODED_BYTES {
        return Err(Error::InvalidRequest(format!(
            "encoded value of {} bytes exceeds the limit of {MAX_ENCODED_BYTES}",
            bytes.len()
        )));
    }
    let (value, read) = bincode::serde::borrow_decode_from_slice(bytes, config())
        .map_err(|e| Error::InvalidRequest(format!("malformed binary body: {e}")))?;
    if read != bytes.len() {
        return Err(Error::InvalidRequest(format!(
            "malformed binary body: {} trailing bytes",
            bytes.len() - read
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Point;
    use crate::time::Timestamp;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let points = vec![
            Point::new("cpu", 1.5)
                .at(Timestamp::from_micros(42))
                .tag("host", "a"),
            Point::new("mem", -2.0).partition_key("k"),
        ];
        let bytes = encode(&points).unwrap();
        assert_eq!(decode::<Vec<Point>>(&bytes).unwrap(), points);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode::<Vec<Point>>(&trailing).is_err());
        assert!(decode::<Vec<Point>>(&bytes[..bytes.len() - 1]).is_err());
        // A length prefix claiming far more elements than the body holds is refused, not
        // allocated.
        assert!(decode::<Vec<Point>>(&[0xfc, 0xff, 0xff, 0xff, 0x7f]).is_err());
    }
}
