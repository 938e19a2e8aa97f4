//! A series' identity (metric, tags, partition key) stored once and shared by its points.
//!
//! A [`Record`](crate::model::Record) holds an `Arc<Series>`, so a batch of 10,000 points
//! over 1,000 series carries 1,000 tag maps, not 10,000. Every series a node meets goes
//! through one process-wide [`intern`]er: validated points, node-to-node writes and log
//! entries all decode to the same `Arc` for the same series, and a series this node has
//! seen before is looked up from the borrowed bytes of a request without allocating.
//!
//! Lists of records travel in a dictionary encoding ([`records_codec`]): the distinct series
//! once, then `(series index, timestamp, value)` per point, in the records' order.
//!
//! # Invariants
//! - Only a valid series is interned: one that passed [`crate::model`]'s checks on the node
//!   that took the point, or that came from a peer or a log entry (which only hold such).
//! - The interner is bounded ([`MAX_INTERNED`]); when full it starts over. Records keep
//!   their `Arc`s, so forgetting costs only a later allocation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, LazyLock, RwLock};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{Record, Tags, series_partition_key};
use crate::time::Timestamp;

/// Most series the interner remembers before it starts over.
pub const MAX_INTERNED: usize = 200_000;

/// A series: a metric with its tags, and the key that chooses its partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    metric: String,
    tags: Tags,
    /// The partition key the client gave, if any.
    custom_key: Option<String>,
    /// `custom_key`, or the series identity ([`series_partition_key`]).
    partition_key: String,
}

impl Series {
    /// A series; without `custom_key` it is partitioned by its identity.
    pub fn new(metric: impl Into<String>, tags: Tags, custom_key: Option<String>) -> Self {
        let metric = metric.into();
        let partition_key = match &custom_key {
            Some(k) => k.clone(),
            None => series_partition_key(&metric, &tags),
        };
        Series {
            metric,
            tags,
            custom_key,
            partition_key,
        }
    }

    pub fn metric(&self) -> &str {
        &self.metric
    }

    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    /// The key the partitioner hashes.
    pub fn partition_key(&self) -> &str {
        &self.partition_key
    }

    /// The partition key the client gave, if any.
    pub fn custom_key(&self) -> Option<&str> {
        self.custom_key.as_deref()
    }

    /// The series identity without the partition key ([`series_partition_key`]): what a
    /// store keys its series by.
    pub fn identity(&self) -> Cow<'_, str> {
        match self.custom_key {
            None => Cow::Borrowed(&self.partition_key),
            Some(_) => Cow::Owned(series_partition_key(&self.metric, &self.tags)),
        }
    }

    fn same_as<'a>(
        &self,
        metric: &str,
        tags: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
        custom_key: Option<&str>,
    ) -> bool {
        self.metric == metric
            && self.custom_key.as_deref() == custom_key
            && self.tags.len() == tags.len()
            && self
                .tags
                .iter()
                .zip(tags)
                .all(|((k, v), (k2, v2))| k == k2 && v == v2)
    }
}

/// Encoded as `(metric, tags, custom_key)`: the partition key is derived again on decode.
impl Serialize for Series {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(3)?;
        t.serialize_element(&self.metric)?;
        t.serialize_element(&self.tags)?;
        t.serialize_element(&self.custom_key)?;
        t.end()
    }
}

/// Text borrowed from the input when the decoder allows it.
pub(crate) struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A tag map as it was encoded: pairs in the encoder's order, not checked for order or
/// duplicates (see [`TagPairs::canonical`]).
pub(crate) struct TagPairs<'a>(pub Vec<(Text<'a>, Text<'a>)>);

/// Tags on one point a decoder reserves room for before it has seen them.
const TAG_CAPACITY_HINT: usize = 16;

impl<'de: 'a, 'a> Deserialize<'de> for TagPairs<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = TagPairs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of tags")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs =
                    Vec::with_capacity(map.size_hint().unwrap_or(0).min(TAG_CAPACITY_HINT));
                while let Some(pair) = map.next_entry::<Text<'a>, Text<'a>>()? {
                    pairs.push(pair);
                }
                Ok(TagPairs(pairs))
            }
        }
        deserializer.deserialize_map(V(std::marker::PhantomData))
    }
}

impl TagPairs<'_> {
    /// Whether the keys are strictly ascending, as a [`Tags`] map yields them.
    pub fn is_canonical(&self) -> bool {
        self.0.windows(2).all(|w| w[0].0.0 < w[1].0.0)
    }

    /// The pairs as a [`Tags`] map (a repeated key keeps its last value).
    pub fn to_tags(&self) -> Tags {
        self.0
            .iter()
            .map(|(k, v)| (k.0.to_string(), v.0.to_string()))
            .collect()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone {
        self.0.iter().map(|(k, v)| (&*k.0, &*v.0))
    }
}

/// The interner: series by a hash of their identity.
///
/// The hash is foldhash's, seeded at random once per process: a point's series is hashed
/// on every insert (twenty-odd short strings for a TSBS point), where SipHash took a fifth
/// of decoding a bincode body (docs/benchmarks.md, fix 21). A colliding hash costs a
/// comparison, never a wrong series, and the map is bounded ([`MAX_INTERNED`]). Lookups
/// share the lock; only a new series takes it alone.
struct Interner {
    hasher: foldhash::fast::RandomState,
    series: RwLock<HashMap<u64, Vec<Arc<Series>>>>,
}

static INTERNER: LazyLock<Interner> = LazyLock::new(|| Interner {
    hasher: foldhash::fast::RandomState::default(),
    series: RwLock::new(HashMap::new()),
});

impl Interner {
    fn hash<'a>(
        &self,
        metric: &str,
        tags: impl Iterator<Item = (&'a str, &'a str)>,
        custom_key: Option<&str>,
    ) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(metric.as_bytes());
        h.write_u8(0xff);
        for (k, v) in tags {
            h.write(k.as_bytes());
            h.write_u8(0xfe);
            h.write(v.as_bytes());
            h.write_u8(0xff);
        }
        match custom_key {
            Some(k) => {
                h.write_u8(1);
                h.write(k.as_bytes());
            }
            None => h.write_u8(0),
        }
        h.finish()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Vec<Arc<Series>>>> {
        self.series.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Vec<Arc<Series>>>> {
        self.series.write().unwrap_or_else(|p| p.into_inner())
    }

    fn find<'a>(
        &self,
        hash: u64,
        metric: &str,
        tags: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
        custom_key: Option<&str>,
    ) -> Option<Arc<Series>> {
        find_in(&self.read(), hash, metric, tags, custom_key)
    }

    fn insert(&self, hash: u64, series: Series) -> Arc<Series> {
        let mut map = self.write();
        let tags = series.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        if let Some(found) = find_in(&map, hash, &series.metric, tags, series.custom_key()) {
            return found;
        }
        if map.len() >= MAX_INTERNED {
            map.clear();
        }
        let series = Arc::new(series);
        map.entry(hash).or_default().push(Arc::clone(&series));
        series
    }
}

/// The series of `map` under `hash` that is `(metric, tags, custom_key)`.
fn find_in<'a>(
    map: &HashMap<u64, Vec<Arc<Series>>>,
    hash: u64,
    metric: &str,
    tags: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
    custom_key: Option<&str>,
) -> Option<Arc<Series>> {
    map.get(&hash)?
        .iter()
        .find(|s| s.same_as(metric, tags.clone(), custom_key))
        .cloned()
}

/// The shared copy of the series `(metric, tags, custom_key)` if this node knows it; `tags`
/// must be in ascending key order without repeats.
pub fn lookup<'a>(
    metric: &str,
    tags: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
    custom_key: Option<&str>,
) -> Option<Arc<Series>> {
    let interner = &*INTERNER;
    let hash = interner.hash(metric, tags.clone(), custom_key);
    interner.find(hash, metric, tags, custom_key)
}

/// The shared copy of `series`: the one already known, else `series` itself from now on.
pub fn intern(series: Series) -> Arc<Series> {
    let interner = &*INTERNER;
    let hash = interner.hash(
        &series.metric,
        series.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        series.custom_key.as_deref(),
    );
    interner.insert(hash, series)
}

/// A series as encoded, with borrowed text where possible.
struct SeriesParts<'a>(Text<'a>, TagPairs<'a>, Option<Text<'a>>);

impl<'de> Deserialize<'de> for SeriesParts<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeriesParts<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a series (metric, tags, partition key)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let metric = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let tags = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let key = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(2, &self))?;
                Ok(SeriesParts(metric, tags, key))
            }
        }
        deserializer.deserialize_tuple(3, V)
    }
}

/// A decoded series, interned.
struct Interned(Arc<Series>);

impl<'de> Deserialize<'de> for Interned {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let SeriesParts(metric, tags, key) = SeriesParts::deserialize(deserializer)?;
        let key = key.as_ref().map(|k| &*k.0);
        if tags.is_canonical()
            && let Some(found) = lookup(&metric.0, tags.iter(), key)
        {
            return Ok(Interned(found));
        }
        let series = Series::new(
            metric.0.into_owned(),
            tags.to_tags(),
            key.map(str::to_owned),
        );
        Ok(Interned(intern(series)))
    }
}

/// The dictionary encoding of a record list, for `#[serde(with = "...")]` on a
/// `Vec<Record>`: `(series, rows)` where `series` lists each distinct series once (distinct
/// by `Arc`, which interning makes the same as distinct by value) and `rows` holds
/// `(index into series, timestamp, value)` per record, in order.
pub mod records_codec {
    use super::*;

    struct SeriesList<'a>(&'a [&'a Series]);

    impl Serialize for SeriesList<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
            for s in self.0 {
                seq.serialize_element(*s)?;
            }
            seq.end()
        }
    }

    struct Rows<'a> {
        records: &'a [Record],
        index: &'a HashMap<*const Series, u32>,
    }

    impl Serialize for Rows<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(Some(self.records.len()))?;
            for r in self.records {
                let i = self.index[&Arc::as_ptr(&r.series)];
                seq.serialize_element(&(i, r.timestamp, r.value))?;
            }
            seq.end()
        }
    }

    pub fn serialize<S: Serializer>(records: &[Record], serializer: S) -> Result<S::Ok, S::Error> {
        let mut index: HashMap<*const Series, u32> = HashMap::new();
        let mut distinct: Vec<&Series> = Vec::new();
        for r in records {
            index.entry(Arc::as_ptr(&r.series)).or_insert_with(|| {
                distinct.push(&r.series);
                (distinct.len() - 1) as u32
            });
        }
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&SeriesList(&distinct))?;
        t.serialize_element(&Rows {
            records,
            index: &index,
        })?;
        t.end()
    }

    /// Rows resolved against the series decoded before them.
    struct RowsSeed<'a>(&'a [Arc<Series>]);

    impl<'de> DeserializeSeed<'de> for RowsSeed<'_> {
        type Value = Vec<Record>;
        fn deserialize<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for RowsSeed<'_> {
        type Value = Vec<Record>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of (series, timestamp, value)")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // The hint is the encoder's claim: bounded, the rest grows as rows arrive.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some((i, timestamp, value)) = seq.next_element::<(u32, Timestamp, f64)>()? {
                let series = self.0.get(i as usize).ok_or_else(|| {
                    de::Error::custom(format!(
                        "record names series {i} of a list of {}",
                        self.0.len()
                    ))
                })?;
                out.push(Record {
                    series: Arc::clone(series),
                    timestamp,
                    value,
                });
            }
            Ok(out)
        }
    }

    struct Whole;

    impl<'de> Visitor<'de> for Whole {
        type Value = Vec<Record>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("records as (series, rows)")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let series: Vec<Interned> = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(0, &self))?;
            let series: Vec<Arc<Series>> = series.into_iter().map(|s| s.0).collect();
            seq.next_element_seed(RowsSeed(&series))?
                .ok_or_else(|| de::Error::invalid_length(1, &self))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Record>, D::Error> {
        deserializer.deserialize_tuple(2, Whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Wrapped(#[serde(with = "records_codec")] Vec<Record>);

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn interning_shares_equal_series_and_tells_keys_apart() {
        let a = intern(Series::new("cpu", tags(&[("host", "a")]), None));
        let b = intern(Series::new("cpu", tags(&[("host", "a")]), None));
        assert!(Arc::ptr_eq(&a, &b));
        let keyed = intern(Series::new("cpu", tags(&[("host", "a")]), Some("k".into())));
        assert!(!Arc::ptr_eq(&a, &keyed));
        assert_eq!(keyed.partition_key(), "k");
        assert_eq!(keyed.identity(), a.identity());
        let found = lookup("cpu", [("host", "a")].into_iter(), None).unwrap();
        assert!(Arc::ptr_eq(&a, &found));
        assert!(lookup("cpu", [("host", "b")].into_iter(), None).is_none());
    }

    #[test]
    fn record_lists_round_trip_in_order_with_each_series_once() {
        let a = intern(Series::new(
            "mem",
            tags(&[("host", "a"), ("dc", "x")]),
            None,
        ));
        let b = Arc::new(Series::new("mem", tags(&[("host", "b")]), Some("p".into())));
        let records: Vec<Record> = (0..6)
            .map(|i| Record {
                series: Arc::clone(if i % 3 == 0 { &b } else { &a }),
                timestamp: Timestamp::from_micros(i),
                value: i as f64 / 2.0,
            })
            .collect();
        let bytes = codec::encode(&Wrapped(records.clone())).unwrap();
        let back: Wrapped = codec::decode(&bytes).unwrap();
        assert_eq!(back.0, records);
        // Decoded series are the interned ones.
        assert!(Arc::ptr_eq(&back.0[1].series, &a));
        assert!(Arc::ptr_eq(&back.0[0].series, &back.0[3].series));
        // Two series and six rows: the tags are not repeated per record.
        let one_series = codec::encode(&Wrapped(records[1..3].to_vec())).unwrap();
        assert!(bytes.len() < one_series.len() * 4, "{} bytes", bytes.len());
    }

    #[test]
    fn a_row_naming_a_missing_series_is_refused() {
        let a = Arc::new(Series::new("m", Tags::new(), None));
        let records = vec![Record {
            series: a,
            timestamp: Timestamp::from_micros(1),
            value: 1.0,
        }];
        let mut bytes = codec::encode(&Wrapped(records)).unwrap();
        // The last row is its series index, its timestamp (one varint byte) and its value
        // (8 bytes): make the index point past the list.
        let at = bytes.len() - 10;
        assert_eq!(bytes[at], 0);
        bytes[at] = 5;
        assert!(codec::decode::<Wrapped>(&bytes).is_err());
    }
}
