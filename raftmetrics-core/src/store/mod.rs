//! The worker's storage: where a node keeps the partitions it holds.
//!
//! [`Store`] is the seam between the engine (or a Raft replica) and a database. The one
//! implementation is [`DuckDbStore`]; [`conformance`] is the suite every implementation must
//! pass. The contract, in short:
//! - a write carries the log index of its partition; a write whose index is not above the
//!   partition's applied index changes nothing, so replaying a log is harmless;
//! - the rows and the new applied index are committed in the same transaction, and all
//!   writes of one [`Store::apply`] call commit together or not at all;
//! - queries return mergeable [`PartialAggregate`]s, never finalized values;
//! - a client batch named by a batch id ([`crate::idempotency`]) is stored once: a write
//!   whose span names an id the partition remembers skips that span's records, and the
//!   remembered ids are committed with the rows and travel in snapshots;
//! - a partition can be exported and imported whole (what a Raft snapshot carries), and
//!   its points read in bounded pages that continue on any replica (an export);
//! - a write is durable at commit, or, for a store behind a log, once
//!   [`Store::durable_index`] reaches it; an import or a drop is durable when it returns.

mod checkpointer;
mod duckdb;

pub mod conformance;

use serde::{Deserialize, Serialize};

pub use self::duckdb::DuckDbStore;
use crate::aggregate::PartialAggregate;
use crate::error::Result;
use crate::export::{Cursor, ExportPage, Selection};
use crate::idempotency::{IdRow, IdSpan};
use crate::model::{Record, Tags};
use crate::partition::PartitionId;
use crate::query::Query;
use crate::sketch::SketchConfig;

/// The records of one log entry for one partition.
#[derive(Clone, Copy, Debug)]
pub struct PartitionWrite<'a> {
    pub partition: PartitionId,
    /// Log index of the entry; must be above the partition's applied index to take effect.
    pub index: u64,
    /// May be empty: the entry then only advances the applied index.
    pub records: &'a [Record],
    /// The client batches among `records` that carry a batch id, in order and without
    /// overlap (empty when none does).
    pub ids: &'a [IdSpan],
    /// When the entry was proposed, µs (the leader's clock): the clock of the partition's
    /// id window. Only read when `ids` is not empty.
    pub proposed_at_micros: i64,
}

impl<'a> PartitionWrite<'a> {
    /// A write of `records` that carries no batch id.
    pub fn new(partition: PartitionId, index: u64, records: &'a [Record]) -> Self {
        PartitionWrite {
            partition,
            index,
            records,
            ids: &[],
            proposed_at_micros: 0,
        }
    }
}

/// A series of a partition, as carried in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesRow {
    pub id: u64,
    pub metric: String,
    pub tags: Tags,
}

/// One stored value, as carried in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointRow {
    pub series_id: u64,
    pub timestamp_micros: i64,
    pub value: f64,
}

/// The whole content of a partition at an applied index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub partition: PartitionId,
    pub applied_index: u64,
    /// Opaque metadata stored with an imported snapshot and returned by
    /// [`Store::snapshot_meta`] (the Raft driver keeps the snapshot's term and membership
    /// here, so a crash between installing the data and updating the log is recoverable).
    pub meta: Vec<u8>,
    pub series: Vec<SeriesRow>,
    pub points: Vec<PointRow>,
    /// The batch ids the partition remembers.
    pub ids: Vec<IdRow>,
}

/// A summary that two replicas of a partition share exactly when they hold the same data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDigest {
    pub applied_index: u64,
    pub rows: u64,
    /// Order-independent checksum over (metric, tags, timestamp, value) of every row.
    pub checksum: u64,
}

impl PartitionSnapshot {
    /// The digest of this snapshot's content.
    pub fn digest(&self) -> PartitionDigest {
        let series: std::collections::HashMap<u64, u64> = self
            .series
            .iter()
            .map(|s| {
                let key = crate::model::series_partition_key(&s.metric, &s.tags);
                (s.id, crate::partition::stable_hash(&key))
            })
            .collect();
        let mut checksum = 0u64;
        for p in &self.points {
            let mut bytes = [0u8; 24];
            bytes[..8]
                .copy_from_slice(&series.get(&p.series_id).copied().unwrap_or(0).to_le_bytes());
            bytes[8..16].copy_from_slice(&p.timestamp_micros.to_le_bytes());
            bytes[16..].copy_from_slice(&p.value.to_bits().to_le_bytes());
            checksum = checksum.wrapping_add(xxhash_rust::xxh3::xxh3_64(&bytes));
        }
        PartitionDigest {
            applied_index: self.applied_index,
            rows: self.points.len() as u64,
            checksum,
        }
    }
}

/// Durable storage of partitions. Implementations are shared between threads.
pub trait Store: Send + Sync {
    /// Applies writes atomically: all writes whose index is above their partition's applied
    /// index are stored, with the new applied indexes, in one transaction. Returns, per
    /// write, whether it took effect (`false`: already applied, nothing changed).
    fn apply(&self, writes: &[PartitionWrite<'_>]) -> Result<Vec<bool>>;

    /// The index of the last entry applied to `partition` (0 when none).
    fn applied_index(&self, partition: PartitionId) -> Result<u64>;

    /// The applied index of `partition` that a crash of the process or the machine cannot
    /// take back (at most [`Store::applied_index`]). A log in front of the store must keep
    /// every entry after it. A store durable at every commit returns its applied index.
    fn durable_index(&self, partition: PartitionId) -> Result<u64> {
        self.applied_index(partition)
    }

    /// Partial aggregates of `query` over the given partitions: of the points its metrics,
    /// filters, time range and value bounds select, a state per group and bucket, carrying
    /// what its aggregations need (the latest and earliest point only for `last` and
    /// `first`).
    fn compute(
        &self,
        partitions: &[PartitionId],
        query: &Query,
        sketch: &SketchConfig,
    ) -> Result<PartialAggregate>;

    /// One page of an export of `partition`: the points of the series `selection` selects
    /// within its time range, in the order (series id, timestamp, value), starting at
    /// `after` (at the beginning when `None`), at most `limit` of them, and where the next
    /// page starts ([`crate::export::PageBuilder`]). Series ids are the same on every
    /// replica, so a cursor from one replica's page continues on another's. Points written
    /// while an export runs may or may not be in it. A store may read ahead and keep a
    /// bounded number of rows for the next page.
    fn export_page(
        &self,
        partition: PartitionId,
        selection: &Selection,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<ExportPage>;

    /// Every point of the series `selection` selects in `partitions` within its time range,
    /// series by series (a series routes to one partition; a store holding the same series
    /// in two partitions gives it twice), each series' points in the order
    /// (timestamp, value), the series in no particular order: one read for all of them.
    /// Refused with [`Error::InvalidRequest`] past `max_points` points (nothing is kept of a
    /// read that goes past). The read of a pushed-down PromQL evaluation, which needs each
    /// series whole and no cursor.
    fn read_series(
        &self,
        partitions: &[PartitionId],
        selection: &Selection,
        max_points: usize,
    ) -> Result<Vec<crate::export::ExportSeries>>;

    /// The partitions this store holds anything for (data or an applied index), ascending.
    fn partitions(&self) -> Result<Vec<PartitionId>>;

    /// Everything `partition` holds, at its applied index.
    fn export_partition(&self, partition: PartitionId) -> Result<PartitionSnapshot>;

    /// Replaces everything `partition` holds with `snapshot`, atomically.
    fn import_partition(&self, snapshot: &PartitionSnapshot) -> Result<()>;

    /// The `meta` of the last snapshot imported into `partition` (empty if none).
    fn snapshot_meta(&self, partition: PartitionId) -> Result<Vec<u8>>;

    /// Removes a partition and its applied index (when a replica moves away).
    fn drop_partition(&self, partition: PartitionId) -> Result<()>;

    /// Row count and checksum of a partition.
    fn digest(&self, partition: PartitionId) -> Result<PartitionDigest> {
        Ok(self.export_partition(partition)?.digest())
    }

    /// Bytes the store occupies.
    fn storage_bytes(&self) -> Result<u64>;
}
