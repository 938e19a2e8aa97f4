//! The embedded engine: RaftMetrics in one process, no network, no replication.
//!
//! ```no_run
//! use raftmetrics_core::{Engine, EngineConfig, Point, Query, Agg};
//!
//! let engine = Engine::open_in_memory(EngineConfig::default())?;
//! engine.insert(vec![Point::new("cpu_usage", 75.5).tag("host", "server-1")])?;
//! let mut query = Query::new("cpu_usage");
//! query.aggs = vec![Agg::Avg, Agg::P95];
//! let result = engine.query(&query)?;
//! println!("avg = {:?}", result.get(Agg::Avg));
//!
//! // Per host that went above 90: its latest reading above 90 and how many there were.
//! let hot = Query {
//!     aggs: vec![Agg::Last, Agg::Count],
//!     group_by: vec!["host".into()],
//!     ..Query::new("cpu_usage").value_gt(90.0)
//! };
//! for group in engine.query(&hot)?.groups {
//!     println!("{:?}: {:?}", group.key, group.aggregations);
//! }
//! # Ok::<(), raftmetrics_core::Error>(())
//! ```
//!
//! The engine uses the same pieces as a cluster node: points are validated, routed to
//! virtual partitions by the [`HashPartitioner`], applied to the [`Store`] with a
//! per-partition index, queried as partial states per partition, merged and finalized.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::aggregate::{Coverage, PartialAggregate, QueryResult, finalize};
use crate::error::{Error, Result};
use crate::idempotency::{BatchId, IdSpan};
use crate::model::{Limits, Point, Record, validate_batch};
use crate::partition::{HashPartitioner, PartitionId, Partitioner};
use crate::query::Query;
use crate::sketch::SketchConfig;
use crate::store::{DuckDbStore, PartitionWrite, Store};
use crate::time::Timestamp;

/// Settings of an engine (and, later, of a cluster).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Number of virtual partitions; fixed for the life of the data.
    pub partitions: u32,
    /// Relative error of percentiles.
    pub sketch: SketchConfig,
    /// Bounds on points and batches.
    pub limits: Limits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            partitions: 16,
            sketch: SketchConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// What an insert did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsertReport {
    /// Points stored.
    pub points: usize,
    /// Partitions written, ascending.
    pub partitions: Vec<PartitionId>,
}

/// An embedded, single-process RaftMetrics.
pub struct Engine {
    store: Arc<dyn Store>,
    partitioner: HashPartitioner,
    config: EngineConfig,
    /// Serializes writers so that each partition's indexes increase without gaps.
    write_lock: Mutex<()>,
}

impl Engine {
    /// Opens (or creates) an engine whose data lives in the DuckDB file at `path`.
    pub fn open(path: impl AsRef<Path>, config: EngineConfig) -> Result<Self> {
        Self::with_store(Arc::new(DuckDbStore::open(path)?), config)
    }

    /// An engine whose data lives in memory only.
    pub fn open_in_memory(config: EngineConfig) -> Result<Self> {
        Self::with_store(Arc::new(DuckDbStore::open_in_memory()?), config)
    }

    /// An engine over any [`Store`].
    pub fn with_store(store: Arc<dyn Store>, config: EngineConfig) -> Result<Self> {
        let partitioner = HashPartitioner::new(config.partitions)?;
        if let Some(&p) = store
            .partitions()?
            .iter()
            .find(|&&p| p >= config.partitions)
        {
            return Err(Error::InvalidRequest(format!(
                "the store holds partition {p}, but the engine is configured with {} partitions",
                config.partitions
            )));
        }
        Ok(Engine {
            store,
            partitioner,
            config,
            write_lock: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The partition a partition key routes to.
    pub fn partition_of(&self, key: &str) -> PartitionId {
        self.partitioner.partition_of(key)
    }

    /// Validates and stores a batch: all points or none.
    pub fn insert(&self, points: Vec<Point>) -> Result<InsertReport> {
        let records = validate_batch(points, Timestamp::now(), &self.config.limits)?;
        self.insert_records(records)
    }

    /// [`Engine::insert`] of a batch named `id`: a batch with an id already stored (within
    /// the window of [`crate::idempotency`]) is not stored again, and the call succeeds.
    pub fn insert_with_id(&self, id: &BatchId, points: Vec<Point>) -> Result<InsertReport> {
        let records = validate_batch(points, Timestamp::now(), &self.config.limits)?;
        self.write(Some(id), records)
    }

    /// Stores records that [`validate_batch`] produced.
    pub fn insert_records(&self, records: Vec<Record>) -> Result<InsertReport> {
        self.write(None, records)
    }

    fn write(&self, id: Option<&BatchId>, records: Vec<Record>) -> Result<InsertReport> {
        let count = records.len();
        let mut by_partition: std::collections::BTreeMap<PartitionId, Vec<Record>> =
            std::collections::BTreeMap::new();
        for r in records {
            by_partition
                .entry(self.partitioner.partition_of(r.partition_key()))
                .or_default()
                .push(r);
        }
        let _guard = self
            .write_lock
            .lock()
            .map_err(|_| Error::Internal("engine write lock poisoned".into()))?;
        let now = Timestamp::now().as_micros();
        let spans: Vec<Vec<IdSpan>> = by_partition
            .values()
            .map(|records| {
                id.map(|id| IdSpan {
                    id: id.clone(),
                    start: 0,
                    len: records.len() as u32,
                })
                .into_iter()
                .collect()
            })
            .collect();
        let mut writes = Vec::with_capacity(by_partition.len());
        for ((&partition, records), ids) in by_partition.iter().zip(&spans) {
            let index = self.store.applied_index(partition)? + 1;
            writes.push(PartitionWrite {
                ids,
                proposed_at_micros: now,
                ..PartitionWrite::new(partition, index, records)
            });
        }
        self.store.apply(&writes)?;
        Ok(InsertReport {
            points: count,
            partitions: by_partition.into_keys().collect(),
        })
    }

    /// Answers a query over all partitions.
    pub fn query(&self, query: &Query) -> Result<QueryResult> {
        query.validate()?;
        let all: Vec<PartitionId> = (0..self.config.partitions).collect();
        let partial = self.compute(&all, query)?;
        Ok(finalize(
            query,
            &self.config.sketch,
            &partial,
            Coverage::complete(),
        ))
    }

    /// Partial states of a query over some partitions (what a worker returns).
    pub fn compute(&self, partitions: &[PartitionId], query: &Query) -> Result<PartialAggregate> {
        self.store.compute(partitions, query, &self.config.sketch)
    }
}
