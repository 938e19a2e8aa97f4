//! What a partition's log entry carries: the records of one or more client batches, the
//! ids of the batches that have one, and when the leader proposed it.
//!
//! # Format
//!
//! `0xFF 0x02`, then the [`LogEntry`] in the [`crate::codec`] encoding, its records in the
//! dictionary encoding of [`crate::series::records_codec`] (each series once). Older
//! entries still decode: `0xFF 0x01` (every record with its own metric, tags and partition
//! key), and before batch ids existed a bare record list, whose first byte (a length) is
//! never `0xFF`.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::Result;
use crate::idempotency::{BatchId, IdSpan, check_spans};
use crate::model::{Record, Tags, series_partition_key};
use crate::series::{self, Series};
use crate::time::Timestamp;

/// Leading bytes of an entry in the current format.
const FORMAT_V2: [u8; 2] = [0xFF, 0x02];
/// Leading bytes of an entry whose records each carry their series.
const FORMAT_V1: [u8; 2] = [0xFF, 0x01];

/// One partition log entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When the leader proposed the entry, µs since the epoch: the clock of the partition's
    /// batch id window.
    pub proposed_at_micros: i64,
    /// The records of every batch, one batch after another.
    #[serde(with = "series::records_codec")]
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

/// A record as `0xFF 0x01` entries and older ones carry it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RecordV1 {
    metric: String,
    tags: Tags,
    timestamp: Timestamp,
    value: f64,
    partition_key: String,
}

impl From<RecordV1> for Record {
    fn from(r: RecordV1) -> Record {
        let custom = (r.partition_key != series_partition_key(&r.metric, &r.tags))
            .then_some(r.partition_key);
        Record {
            series: series::intern(Series::new(r.metric, r.tags, custom)),
            timestamp: r.timestamp,
            value: r.value,
        }
    }
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct EntryV1 {
    proposed_at_micros: i64,
    records: Vec<RecordV1>,
    ids: Vec<IdSpan>,
}

/// About what a record takes encoded (a series number, a varint timestamp, a value).
const RECORD_BYTES_ESTIMATE: usize = 20;

/// Encodes an entry, into a buffer no larger than the encoding: the entry is kept as it is
/// in raft's log, the node's entry caches and the messages to followers, so the spare
/// capacity of a grown buffer (up to half of it) would be held with it.
pub fn encode_entry(entry: &LogEntry) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(
        FORMAT_V2.len() + entry.records.len().saturating_mul(RECORD_BYTES_ESTIMATE),
    );
    out.extend_from_slice(&FORMAT_V2);
    codec::encode_into(&mut out, entry)?;
    out.shrink_to_fit();
    Ok(out)
}

/// Decodes an entry, checking that its id spans lie within its records.
pub fn decode_entry(data: &[u8]) -> Result<LogEntry> {
    let entry = if let Some(rest) = data.strip_prefix(&FORMAT_V2) {
        codec::decode(rest)?
    } else if let Some(rest) = data.strip_prefix(&FORMAT_V1) {
        let v1: EntryV1 = codec::decode(rest)?;
        LogEntry {
            proposed_at_micros: v1.proposed_at_micros,
            records: upgrade(v1.records),
            ids: v1.ids,
        }
    } else {
        LogEntry {
            records: upgrade(codec::decode(data)?),
            ..LogEntry::default()
        }
    };
    check_spans(&entry.ids, entry.records.len())?;
    Ok(entry)
}

fn upgrade(records: Vec<RecordV1>) -> Vec<Record> {
    records.into_iter().map(Record::from).collect()
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

        assert_eq!(bytes[..2], FORMAT_V2);
    }

    #[test]
    fn an_encoded_entry_holds_no_spare_capacity() {
        for n in [1, 1_000, 20_000] {
            let mut entry = LogEntry::default();
            entry.push_batch(None, records(n));
            let bytes = encode_entry(&entry).unwrap();
            assert_eq!(bytes.capacity(), bytes.len(), "{n} records");
            assert_eq!(decode_entry(&bytes).unwrap(), entry);
        }
    }

    fn v1(records: &[Record]) -> Vec<RecordV1> {
        records
            .iter()
            .map(|r| RecordV1 {
                metric: r.metric().into(),
                tags: r.tags().clone(),
                timestamp: r.timestamp,
                value: r.value,
                partition_key: r.partition_key().into(),
            })
            .collect()
    }

    #[test]
    fn older_entries_still_decode() {
        let keyed = validate_batch(
            vec![Point::new("cpu", 1.0).tag("host", "a").partition_key("k")],
            Timestamp::from_micros(10),
            &Limits::default(),
        )
        .unwrap();
        let mut all = records(3);
        all.extend(keyed);
        let old = codec::encode(&v1(&all)).unwrap();
        let decoded = decode_entry(&old).unwrap();
        assert_eq!(decoded.records, all);
        assert_eq!(decoded.records[3].series.custom_key(), Some("k"));
        assert_eq!(decoded.records[0].series.custom_key(), None);
        assert!(decoded.ids.is_empty());

        let span = IdSpan {
            id: BatchId::parse("b").unwrap(),
            start: 1,
            len: 2,
        };
        let mut bytes = FORMAT_V1.to_vec();
        codec::encode_into(
            &mut bytes,
            &EntryV1 {
                proposed_at_micros: 7,
                records: v1(&all),
                ids: vec![span.clone()],
            },
        )
        .unwrap();
        let decoded = decode_entry(&bytes).unwrap();
        assert_eq!(decoded.records, all);
        assert_eq!(decoded.ids, vec![span]);
        assert_eq!(decoded.proposed_at_micros, 7);
    }

    #[test]
    fn spans_beyond_the_records_are_refused() {
        let mut entry = LogEntry::default();
        entry.push_batch(Some(BatchId::parse("a").unwrap()), records(1));
        entry.ids[0].len = 2;
        let mut bytes = FORMAT_V2.to_vec();
        codec::encode_into(&mut bytes, &entry).unwrap();
        assert!(decode_entry(&bytes).is_err());
    }
}
