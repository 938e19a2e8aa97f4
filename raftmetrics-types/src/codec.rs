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

    #[test]
    fn queries_and_partial_states_round_trip_with_value_bounds_and_last_first() {
        use crate::aggregate::{PartialAggregate, TimedValue};
        use crate::query::{Agg, Query};
        use crate::sketch::SketchConfig;

        let query = Query {
            aggs: vec![Agg::Last, Agg::First, Agg::P95],
            ..Query::new("usage_user")
                .value_gt(90.0)
                .value_le(-0.0)
                .value_ge(f64::MIN_POSITIVE)
        };
        let bytes = encode(&query).unwrap();
        assert_eq!(decode::<Query>(&bytes).unwrap(), query);
        let mut partial = PartialAggregate::default();
        let cfg = SketchConfig::default();
        partial
            .state_mut(vec![Some("host_1".into())], 0)
            .add_at(&cfg, -5, 91.25, true);
        partial.state_mut(vec![None], 7).add(&cfg, 3.0, false);
        let bytes = encode(&partial).unwrap();
        let back = decode::<PartialAggregate>(&bytes).unwrap();
        assert_eq!(back, partial);
        let state = &back.groups[&vec![Some("host_1".to_string())]][&0];
        assert_eq!(state.last, Some(TimedValue::new(-5, 91.25)));
        assert_eq!(state.first, state.last);
        assert_eq!(back.groups[&vec![None]][&7].last, None);
    }
}
