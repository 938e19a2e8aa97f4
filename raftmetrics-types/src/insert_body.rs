//! A bincode insert body (`Vec<Point>`) read by hand, for speed: a point's tags are read
//! once per run of points that carry the same tags, byte for byte.
//!
//! Agents send a host's readings together: in TSBS's cpu-only data nine points in ten carry
//! the tags of the point before them, and reading those ten tags (twenty strings, their
//! UTF-8 checked) was most of decoding a body (docs/benchmarks.md, fix 22). The encoding
//! is self-delimiting, so when the bytes at the start of a point's tags equal the previous
//! point's encoded tags, they decode to the same tags and end where those ended: the point
//! shares them without reading them.
//!
//! This reader only takes the common shape of a well-formed body. Anything else (a
//! truncated or malformed body, a varint wider than the value, more points than a batch
//! may hold, bytes after the last point) returns `None`, and the caller decodes with the
//! codec, whose answer, value or error, is the reference: the two must agree on every body
//! this one accepts (`tests` here, and the fuzzing of `tests/decoders.rs` in the server).
//!
//! The format (bincode 2, standard configuration, serde mode): unsigned integers as
//! varints (one byte up to 250; then 251, 252 or 253 and the value in 2, 4 or 8
//! little-endian bytes), signed ones zigzag-encoded first; `f64` as 8 little-endian bytes;
//! an `Option` as a byte 0 or 1 and the value; a string as its length and its bytes; a map
//! as its length and its pairs; a struct as its fields in order (`Point`: metric, value,
//! timestamp, tags, partition key).

use std::ops::Range;

use crate::time::Timestamp;

/// Tags a set reserves room for before it has seen them.
const TAG_CAPACITY_HINT: usize = 16;

/// One point of a body, its text borrowed from the body.
pub(crate) struct WirePoint<'a> {
    pub metric: &'a str,
    pub value: f64,
    pub timestamp: Option<Timestamp>,
    /// Which of [`WireBody::tag_sets`].
    pub tags: usize,
    pub partition_key: Option<&'a str>,
}

/// A point's tags as encoded: pairs in the encoder's order, not checked for order or
/// repeats.
pub(crate) struct TagSet<'a> {
    pub pairs: Vec<(&'a str, &'a str)>,
    /// Keys strictly ascending, as a `Tags` map yields them.
    pub canonical: bool,
}

/// A decoded body: the points, and the distinct runs of tags they refer to.
pub(crate) struct WireBody<'a> {
    pub points: Vec<WirePoint<'a>>,
    pub tag_sets: Vec<TagSet<'a>>,
}

/// Reads `bytes` as a `Vec<Point>` of at most `max_points` points; `None` when it is not
/// the common shape of a well-formed body (see the module documentation).
pub(crate) fn decode(bytes: &[u8], max_points: usize) -> Option<WireBody<'_>> {
    let mut r = Reader { bytes, at: 0 };
    let count = usize::try_from(r.varint()?).ok()?;
    if count > max_points {
        return None;
    }
    let mut body = WireBody {
        points: Vec::with_capacity(count),
        tag_sets: Vec::new(),
    };
    // Where the last new tag set was read.
    let mut last: Option<Range<usize>> = None;
    for _ in 0..count {
        let metric = r.str()?;
        let value = f64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let timestamp = match r.byte()? {
            0 => None,
            1 => Some(Timestamp::from_micros(r.signed_varint()?)),
            _ => return None,
        };
        let start = r.at;
        let repeated = last.as_ref().is_some_and(|prev| {
            let len = prev.end - prev.start;
            bytes.get(start..start + len) == bytes.get(prev.clone())
        });
        if repeated {
            r.at += last.as_ref().map_or(0, |prev| prev.end - prev.start);
        } else {
            let n = usize::try_from(r.varint()?).ok()?;
            let mut pairs = Vec::with_capacity(n.min(TAG_CAPACITY_HINT));
            for _ in 0..n {
                pairs.push((r.str()?, r.str()?));
            }
            let canonical = pairs.windows(2).all(|w| w[0].0 < w[1].0);
            body.tag_sets.push(TagSet { pairs, canonical });
            last = Some(start..r.at);
        }
        let partition_key = match r.byte()? {
            0 => None,
            1 => Some(r.str()?),
            _ => return None,
        };
        body.points.push(WirePoint {
            metric,
            value,
            timestamp,
            tags: body.tag_sets.len().checked_sub(1)?,
            partition_key,
        });
    }
    (r.at == bytes.len()).then_some(body)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let taken = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(taken)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn varint(&mut self) -> Option<u64> {
        Some(match self.byte()? {
            b @ 0..=250 => u64::from(b),
            251 => u64::from(u16::from_le_bytes(self.take(2)?.try_into().ok()?)),
            252 => u64::from(u32::from_le_bytes(self.take(4)?.try_into().ok()?)),
            253 => u64::from_le_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        })
    }

    fn signed_varint(&mut self) -> Option<i64> {
        let z = self.varint()?;
        Some(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.varint()?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::model::Point;

    fn point(metric: &str, host: &str, ts: Option<i64>, key: Option<&str>) -> Point {
        let mut p = Point::new(metric, 1.5).tag("host", host).tag("dc", "a");
        p.timestamp = ts.map(Timestamp::from_micros);
        p.partition_key = key.map(str::to_owned);
        p
    }

    #[test]
    fn runs_of_equal_tags_share_one_set() {
        let points = vec![
            point("cpu", "a", Some(1_700_000_000_000_000), None),
            point("mem", "a", Some(-5), None),
            point("cpu", "b", None, Some("k")),
            point("cpu", "a", Some(0), None),
        ];
        let bytes = codec::encode(&points).unwrap();
        let body = decode(&bytes, 10).unwrap();
        assert_eq!(body.tag_sets.len(), 3);
        let tags: Vec<usize> = body.points.iter().map(|p| p.tags).collect();
        assert_eq!(tags, [0, 0, 1, 2]);
        for (p, w) in points.iter().zip(&body.points) {
            assert_eq!(w.metric, p.metric);
            assert_eq!(w.value, p.value);
            assert_eq!(w.timestamp, p.timestamp);
            assert_eq!(w.partition_key, p.partition_key.as_deref());
            let set = &body.tag_sets[w.tags];
            let pairs: Vec<(&str, &str)> = p
                .tags
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(set.pairs, pairs);
            assert!(set.canonical);
        }
    }

    #[test]
    fn anything_unusual_is_left_to_the_codec() {
        let bytes = codec::encode(&vec![point("cpu", "a", Some(7), None)]).unwrap();
        assert!(decode(&bytes, 1).is_some());
        // More points than a batch may hold.
        assert!(decode(&bytes, 0).is_none());
        // Truncated anywhere, or with a byte after the end.
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end], 1).is_none(), "cut at {end}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, 1).is_none());
        // Text that is not UTF-8; an option tag other than 0 or 1; a 128-bit varint.
        let mut bad = bytes.clone();
        bad[2] = 0xff; // the metric's first byte (count 1, length 3, then "cpu")
        assert!(decode(&bad, 1).is_none());
        let mut bad = bytes.clone();
        bad[1 + 1 + 3 + 8] = 2; // the timestamp's option tag
        assert!(decode(&bad, 1).is_none());
        assert!(decode(&[254, 0], 1).is_none());
    }
}
