//! What a partition's log entry carries: the records of one or more client batches, the
//! ids of the batches that have one, and when the leader proposed it.
//!
//! # Format
//!
//! `0xFF 0x01`, then the [`LogEntry`] in the [`crate::codec`] encoding. Entries written
//! before batch ids existed are a bare record list, whose first byte (a length) is never
//! `0xFF`; they still decode, as entries without ids.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::Result;
use crate::idempotency::{BatchId, IdSpan, check_spans};
use crate::model::Record;

/// Leading bytes of an entry in the current format.
const FORMAT_V1: [u8; 2] = [0xFF, 0x01];

/// One partition log entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When the leader proposed the entry, µs since the epoch: the clock of the partition's
    /// batch id window.
    pub proposed_at_micros: i64,
    /// The records of every batch, one batch after another.
    pub records: Vec<Record>,
    /// The batches among `records` that carry an id, in order.
    pub ids: Vec<IdSpan>,
}

impl LogEntry {
    /// Appends a client batch.
    pub fn push_batch(&mut self, id: Option<BatchId>, records: Vec<Record>) {
        if let Some(id) = id {
            self.ids.push(IdSpan {
                id,
                start: self.records.len() as u32,
                len: records.len() as u32,
            });
        }
        self.records.extend(records);
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.ids.is_empty()
    }
}

/// Encodes an entry.
pub fn encode_entry(entry: &LogEntry) -> Result<Vec<u8>> {
    let mut out = FORMAT_V1.to_vec();
    codec::encode_into(&mut out, entry)?;
    Ok(out)
}

/// Decodes an entry, checking that its id spans lie within its records.
pub fn decode_entry(data: &[u8]) -> Result<LogEntry> {
    match data.strip_prefix(&FORMAT_V1) {
        Some(rest) => {
            let entry: LogEntry = codec::decode(rest)?;
            check_spans(&entry.ids, entry.records.len())?;
            Ok(entry)
        }
        None => Ok(LogEntry {
            records: codec::decode(data)?,
            ..LogEntry::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Limits, Point, validate_batch};
    use crate::time::Timestamp;

    fn records(n: usize) -> Vec<Record> {
        let points = (0..n)
            .map(|i| Point::new("cpu", i as f64).at(Timestamp::from_micros(i as i64 + 1)))
            .collect();
        validate_batch(points, Timestamp::from_micros(10), &Limits::default()).unwrap()
    }

    #[test]
    fn entries_round_trip_and_old_entries_still_decode() {
        let mut entry = LogEntry {
            proposed_at_micros: 1_700_000_000_000_000,
            ..LogEntry::default()
        };
        entry.push_batch(None, records(2));
        entry.push_batch(Some(BatchId::parse("retry-1").unwrap()), records(3));
        assert_eq!(entry.ids[0].start, 2);
        assert_eq!(entry.ids[0].len, 3);
        let bytes = encode_entry(&entry).unwrap();
        assert_eq!(decode_entry(&bytes).unwrap(), entry);

        let old = codec::encode(&records(4)).unwrap();
        let decoded = decode_entry(&old).unwrap();
        assert_eq!(decoded.records, records(4));
        assert!(decoded.ids.is_empty());
    }

    #[test]
    fn spans_beyond_the_records_are_refused() {
        let mut entry = LogEntry::default();
        entry.push_batch(Some(BatchId::parse("a").unwrap()), records(1));
        entry.ids[0].len = 2;
        let mut bytes = FORMAT_V1.to_vec();
        codec::encode_into(&mut bytes, &entry).unwrap();
        assert!(decode_entry(&bytes).is_err());
    }
}
