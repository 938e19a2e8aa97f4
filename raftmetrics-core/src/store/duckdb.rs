//! [`Store`] on DuckDB: one database (file or in-memory) per node, holding every partition
//! the node has.
//!
//! Tables (identifiers are fixed here; user data only ever travels as bound parameters):
//! - `rm_series(partition_id, series_id, sid, metric, tags, metric_id)`: one row per series
//!   (metric + tag set); `tags` is the tag map as JSON. `series_id = partition << 40 | n`,
//!   where n counts the partition's series in apply order, so replicas that apply the same
//!   log agree (snapshots carry it). `sid` is a dense store-local number, which keeps the
//!   point table narrow and lets DuckDB join it against a query's selection quickly.
//!   `metric_id` is a store-local number of the metric, the same for all its series.
//! - `rm_points(partition_id, sid, ts, value, metric_id)`: one row per point; `ts` in µs;
//!   `metric_id` is its series'. A query that selects every series of its metrics filters
//!   on `metric_id` while DuckDB scans, instead of joining every point against the
//!   selection. Files written before the column existed get it filled in when opened.
//! - `rm_partitions(partition_id, applied_index, meta)`: one row per partition the store
//!   holds, with the opaque metadata of the last imported snapshot. `applied_index` is the
//!   index the row was written with (files written before `rm_applied` existed keep it
//!   current).
//! - `rm_applied(indexes)`: one row, every partition's applied index (the codec encoding of
//!   a sorted `(partition, index)` list), rewritten by every write: one statement per write
//!   however many partitions it touches. It overrides `rm_partitions.applied_index`.
//! - `rm_batch_ids(partition_id, batch_id, at_micros)`: the batch ids each partition
//!   remembers ([`crate::idempotency`]); mirrored in memory as one [`IdWindow`] per
//!   partition, which decides, while the rows are committed with the points.
//!
//! Series are resolved and filtered in memory (a catalog loaded at open), so tag filters and
//! wildcards are plain Rust string matching and never reach SQL. Aggregates are computed in
//! SQL: the time range and value bounds (`value_gt`, ...) are conditions of the `WHERE`
//! clause with bound parameters, and `last`/`first` the greatest and smallest
//! `(ts, value)` struct of each row. Writes go through the
//! Appender inside one transaction with the applied index. External file access is disabled
//! and the configuration locked once the schema exists.
//!
//! A file opened with [`DuckDbStore::open`] is durable at every commit (DuckDB's
//! write-ahead log). One opened with [`DuckDbStore::open_behind_log`] sits behind a log
//! that already holds every write durably (a Raft replica): DuckDB writes no log, a commit
//! is saved by the next checkpoint, and [`Store::durable_index`] says how far that is, so
//! the log in front keeps what a crash would take from the store (ADR 017).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use duckdb::types::Value;
use duckdb::{Connection, params};

use super::checkpointer::{
    BACKSTOP_UNSAVED_ROWS, BACKSTOP_WAL_AUTOCHECKPOINT, Checkpointer, Saved, Trigger,
};
use super::{PartitionSnapshot, PartitionWrite, PointRow, SeriesRow, Store};
use crate::aggregate::{PartialAggregate, PartialState, TimedValue, WHOLE_RANGE};
use crate::codec;
use crate::error::{Error, Result};
use crate::export::{Cursor, ExportPage, ExportSeries, PageBuilder, Selection};
use crate::idempotency::{BatchId, IdRow, IdWindow, check_spans};
use crate::model::{Record, Tags, series_partition_key};
use crate::partition::PartitionId;
use crate::query::{Agg, GroupKey, Query};
use crate::series::Series;
use crate::sketch::{Sketch, SketchConfig};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rm_series (
    partition_id UINTEGER NOT NULL,
    series_id UBIGINT NOT NULL,
    sid UINTEGER NOT NULL,
    metric VARCHAR NOT NULL,
    tags VARCHAR NOT NULL,
    metric_id UINTEGER
);
CREATE TABLE IF NOT EXISTS rm_points (
    partition_id UINTEGER NOT NULL,
    sid UINTEGER NOT NULL,
    ts BIGINT NOT NULL,
    value DOUBLE NOT NULL,
    metric_id UINTEGER
);
CREATE TABLE IF NOT EXISTS rm_partitions (
    partition_id UINTEGER PRIMARY KEY,
    applied_index UBIGINT NOT NULL,
    meta BLOB
);
CREATE TABLE IF NOT EXISTS rm_applied (
    indexes BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rm_batch_ids (
    partition_id UINTEGER NOT NULL,
    batch_id VARCHAR NOT NULL,
    at_micros BIGINT NOT NULL
);
";

/// Adds `metric_id` to the series and point rows of a file written before it existed: every
/// metric is numbered, and every row takes its metric's number. One transaction.
const ADD_METRIC_IDS: &str = "
BEGIN;
ALTER TABLE rm_series ADD COLUMN metric_id UINTEGER;
UPDATE rm_series SET metric_id = m.id
  FROM (SELECT metric, (row_number() OVER (ORDER BY metric) - 1)::UINTEGER AS id
          FROM (SELECT DISTINCT metric FROM rm_series)) m
 WHERE rm_series.metric = m.metric;
ALTER TABLE rm_points ADD COLUMN metric_id UINTEGER;
UPDATE rm_points SET metric_id = s.metric_id FROM rm_series s WHERE rm_points.sid = s.sid;
COMMIT;
";

/// Most metrics one query may name and still be read by a filter on `metric_id` (one
/// placeholder each).
const MAX_METRICS_BY_ID: usize = 16;
/// Most partitions one query may ask and still be read by a filter on `metric_id` (one
/// `partition_id` placeholder each, when the filter needs them).
const MAX_PARTITIONS_BY_ID: usize = 256;

/// Bits of a series id below the partition number.
const SERIES_BITS: u32 = 40;

/// Most series one partition may hold.
pub const MAX_SERIES_PER_PARTITION: u64 = 1 << SERIES_BITS;

/// Idle read connections kept for reuse.
const READER_POOL: usize = 8;

/// The name a file opened behind a log is attached under (DuckDB attaches it to an
/// in-memory database to open it without its write-ahead log).
const ATTACHED: &str = "rm_store";

/// How a store's commits become durable.
enum Durability {
    /// In memory only: never.
    Memory,
    /// At commit, in DuckDB's write-ahead log (this file).
    OwnLog(std::path::PathBuf),
    /// At the next checkpoint; a log in front holds every write until then.
    BehindLog,
}

fn series_id(partition: PartitionId, n: u64) -> u64 {
    (u64::from(partition) << SERIES_BITS) | n
}

/// The store-local numbers of one series.
#[derive(Clone, Copy, Debug)]
struct SeriesIds {
    sid: u32,
    metric: u32,
}

/// The series of one partition, in memory.
#[derive(Default)]
struct PartitionCatalog {
    /// Series key → its store-local numbers.
    by_key: HashMap<String, SeriesIds>,
    /// Metric → (sid, series id, tags) of its series.
    by_metric: HashMap<String, Vec<(u32, u64, Tags)>>,
    /// Next per-partition series number.
    next: u64,
}

impl PartitionCatalog {
    fn insert(&mut self, key: String, ids: SeriesIds, row: SeriesRow) {
        self.next = self.next.max((row.id & (MAX_SERIES_PER_PARTITION - 1)) + 1);
        self.by_key.insert(key, ids);
        self.by_metric
            .entry(row.metric)
            .or_default()
            .push((ids.sid, row.id, row.tags));
    }
}

/// The store's metric numbers (mirrors the `metric_id` of `rm_series`).
#[derive(Default)]
struct MetricIds {
    ids: HashMap<String, u32>,
    next: u32,
}

impl MetricIds {
    fn insert(&mut self, metric: String, id: u32) {
        self.next = self.next.max(id.saturating_add(1));
        self.ids.insert(metric, id);
    }
}

/// Hands out metric numbers within one write; what it allocated is made known by
/// [`DuckDbStore::publish_metrics`] once the write committed.
struct MetricAllocator<'a> {
    known: &'a MetricIds,
    new: HashMap<String, u32>,
    next: u32,
}

impl<'a> MetricAllocator<'a> {
    fn new(known: &'a MetricIds) -> Self {
        MetricAllocator {
            known,
            new: HashMap::new(),
            next: known.next,
        }
    }

    fn id(&mut self, metric: &str) -> Result<u32> {
        if let Some(&id) = self.known.ids.get(metric).or_else(|| self.new.get(metric)) {
            return Ok(id);
        }
        let id = self.next;
        self.next = id
            .checked_add(1)
            .ok_or_else(|| Error::storage("insert", "the store holds too many metrics"))?;
        self.new.insert(metric.to_string(), id);
        Ok(id)
    }

    /// What was allocated, to publish after the commit.
    fn into_new(self) -> HashMap<String, u32> {
        self.new
    }
}

/// Most rows an export reads from DuckDB at once. Each read scans the partition's rows; the
/// pages after the one asked for are served from memory, kept for the next request.
const EXPORT_READ_AHEAD: usize = 50_000;
/// Most reads kept for their next page (the oldest goes first), so a store holds at most
/// this many times [`EXPORT_READ_AHEAD`] rows for exports.
const EXPORT_KEPT_READS: usize = 8;
/// How long a kept read waits for its next page.
const EXPORT_KEPT_FOR: Duration = Duration::from_secs(60);

/// Rows of an export read ahead of the pages asked for, waiting for the page at `at`.
struct ReadAhead {
    partition: PartitionId,
    selection: Selection,
    at: Option<Cursor>,
    /// (series id, timestamp, value), in export order.
    rows: VecDeque<(u64, i64, f64)>,
    /// The metric and tags of the read's series, by ascending series id.
    series: Vec<(u64, String, Tags)>,
    /// Whether `rows` run to the end of the read's series, so that after them the next page
    /// starts at `next_series` (or nowhere).
    complete: bool,
    next_series: Option<u64>,
    kept_at: Instant,
}

impl ReadAhead {
    fn describe(&self, id: u64) -> Result<(String, Tags)> {
        self.series
            .binary_search_by_key(&id, |s| s.0)
            .map(|at| (self.series[at].1.clone(), self.series[at].2.clone()))
            .map_err(|_| Error::Internal(format!("an export read unselected series {id}")))
    }
}

/// A [`Store`] in one DuckDB database.
pub struct DuckDbStore {
    /// Checkpoints a file-backed database off the write path; stopped first on drop.
    checkpointer: Option<Checkpointer>,
    /// What checkpoints saved, for a store behind a log.
    saved: Option<Arc<Saved>>,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    catalog: RwLock<HashMap<PartitionId, PartitionCatalog>>,
    /// Metric numbers; only changed under the writer lock.
    metrics: RwLock<MetricIds>,
    /// Next store-local sid; only changed under the writer lock.
    next_sid: AtomicU32,
    /// Committed applied index per partition (mirrors `rm_applied`).
    applied: Arc<RwLock<HashMap<PartitionId, u64>>>,
    /// Remembered batch ids per partition (mirrors `rm_batch_ids`); only used under the
    /// writer lock.
    windows: Mutex<HashMap<PartitionId, IdWindow>>,
    /// Exports' rows read ahead of their pages.
    export_reads: Mutex<Vec<ReadAhead>>,
}

fn storage(operation: &'static str) -> impl Fn(duckdb::Error) -> Error {
    move |e| Error::storage(operation, e)
}

fn poisoned<T>(_: T) -> Error {
    Error::Internal("a store lock was poisoned by a panic".to_string())
}

impl DuckDbStore {
    /// Opens (or creates) a database file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut wal = path.as_os_str().to_owned();
        wal.push(".wal");
        Self::init(
            Connection::open(path).map_err(storage("open"))?,
            Durability::OwnLog(wal.into()),
        )
    }

    /// Opens (or creates) a database file for a store behind a log that holds every write
    /// durably until [`Store::durable_index`] passes it (a Raft replica): DuckDB writes no
    /// log of its own, so a commit costs no log write and no fsync, and a crash takes the
    /// store back to its last checkpoint. A write-ahead log left by [`DuckDbStore::open`]
    /// is replayed, and everything is checkpointed before this returns.
    pub fn open_behind_log(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let path = path
            .to_str()
            .ok_or_else(|| Error::storage("open", format!("{} is not UTF-8", path.display())))?;
        let conn = Connection::open_in_memory().map_err(storage("open"))?;
        conn.execute_batch(&format!(
            "ATTACH '{}' AS {ATTACHED} (RECOVERY_MODE NO_WAL_WRITES); USE {ATTACHED};",
            path.replace('\'', "''")
        ))
        .map_err(storage("open"))?;
        Self::init(conn, Durability::BehindLog)
    }

    /// A database that lives in memory only.
    pub fn open_in_memory() -> Result<Self> {
        Self::init(
            Connection::open_in_memory().map_err(storage("open"))?,
            Durability::Memory,
        )
    }

    /// Creates the schema, configures the connection and loads the in-memory state; for a
    /// file, starts the checkpointing thread.
    fn init(conn: Connection, durability: Durability) -> Result<Self> {
        conn.execute_batch(SCHEMA)
            .map_err(storage("create schema"))?;
        let has_metric_ids: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM duckdb_columns()
                 WHERE database_name = current_database()
                   AND table_name = 'rm_points' AND column_name = 'metric_id'",
                [],
                |row| row.get(0),
            )
            .map_err(storage("read schema"))?;
        if !has_metric_ids && let Err(e) = conn.execute_batch(ADD_METRIC_IDS) {
            // Nothing of it stays: the file is as it was.
            let _ = conn.execute_batch("ROLLBACK");
            return Err(Error::storage("add metric numbers", e));
        }
        if !matches!(durability, Durability::Memory) {
            conn.execute_batch(&format!(
                "SET wal_autocheckpoint = '{BACKSTOP_WAL_AUTOCHECKPOINT}';"
            ))
            .map_err(storage("configure"))?;
        }
        if matches!(durability, Durability::BehindLog) {
            // The schema, and whatever an older write-ahead log held, saved before any
            // write that only the log in front holds. Closing saves through
            // `Saved::checkpoint` (see `Drop`), so that `abandon` can leave it out.
            conn.execute_batch("CHECKPOINT; PRAGMA disable_checkpoint_on_shutdown;")
                .map_err(storage("checkpoint"))?;
        }
        // The writer connection only appends, updates rows by key and deletes by partition:
        // DuckDB's optimizer has nothing to gain there, and it ran for every statement and
        // every appender flush of a write (readers are other connections and keep it).
        conn.execute_batch(
            "PRAGMA disable_optimizer; \
             SET enable_external_access = false; SET lock_configuration = true;",
        )
        .map_err(storage("configure"))?;
        let attached = matches!(durability, Durability::BehindLog);
        let mut store = DuckDbStore {
            checkpointer: None,
            saved: None,
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            catalog: RwLock::new(HashMap::new()),
            metrics: RwLock::new(MetricIds::default()),
            applied: Arc::new(RwLock::new(HashMap::new())),
            next_sid: AtomicU32::new(0),
            windows: Mutex::new(HashMap::new()),
            export_reads: Mutex::new(Vec::new()),
        };
        {
            let conn = store.writer.lock().map_err(poisoned)?;
            store.load_catalog(&conn, None)?;
            store.load_windows(&conn)?;
        }
        store.load_applied()?;
        let trigger = match durability {
            Durability::Memory => None,
            Durability::OwnLog(wal) => Some(Trigger::WalFile(wal)),
            Durability::BehindLog => {
                let saved = Arc::new(Saved::new(Arc::clone(&store.applied)));
                store.saved = Some(Arc::clone(&saved));
                Some(Trigger::Unsaved(saved))
            }
        };
        if let Some(trigger) = trigger {
            let own = {
                let conn = store.writer.lock().map_err(poisoned)?;
                connect(&conn, attached)?
            };
            store.checkpointer = Some(
                Checkpointer::start(own, trigger)
                    .map_err(|e| Error::storage("start checkpoints", e))?,
            );
        }
        Ok(store)
    }

    /// Saves everything committed so far to the file now (a checkpoint). A store behind a
    /// log then reports the applied indexes it saved as durable.
    pub fn checkpoint(&self) -> Result<()> {
        let conn = self.writer.lock().map_err(poisoned)?;
        self.checkpoint_locked(&conn)
    }

    /// Closes the store as a crash would: one behind a log keeps only what its checkpoints
    /// saved, and the log in front replays the rest when it is opened again (tests of
    /// recovery use this). Any other store closes as usual: it is durable at commit.
    pub fn abandon(mut self) {
        self.saved = None;
    }

    /// The backstop of a store behind a log, after a write, under the writer lock: when
    /// the checkpointing thread could not save for [`BACKSTOP_UNSAVED_ROWS`] rows (each of
    /// its attempts met a write in progress), the writer saves itself, so that neither the
    /// log in front nor what a crash replays grows without bound. The write is committed
    /// either way: a failed save is retried by the next write or checkpoint.
    fn save_if_starved(&self, conn: &Connection) {
        let Some(saved) = &self.saved else { return };
        if saved.unsaved() < BACKSTOP_UNSAVED_ROWS {
            return;
        }
        let started = std::time::Instant::now();
        match saved.checkpoint(conn) {
            Ok(()) => tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "the checkpointing thread fell behind: the writer checkpointed"
            ),
            Err(e) => tracing::warn!(error = %e, "backstop checkpoint failed"),
        }
    }

    /// [`DuckDbStore::checkpoint`], under the writer lock.
    /// Saves now, under the writer lock (`conn` is the writer): a checkpoint that waits for
    /// other connections' write transactions rather than being refused by them, since its
    /// callers (an import, a drop, closing, [`DuckDbStore::checkpoint`]) must not fail for
    /// a write that merely happened to be in progress elsewhere.
    fn checkpoint_locked(&self, conn: &Connection) -> Result<()> {
        match &self.saved {
            Some(saved) => saved.checkpoint_waiting(conn),
            None => conn.execute_batch("FORCE CHECKPOINT"),
        }
        .map_err(storage("checkpoint"))
    }

    /// (Re)loads the series catalog of one partition, or of all.
    fn load_catalog(&self, conn: &Connection, only: Option<PartitionId>) -> Result<()> {
        let mut stmt = conn
            .prepare(
                "SELECT partition_id, series_id, sid, metric, tags, metric_id FROM rm_series
                 WHERE ?::UINTEGER IS NULL OR partition_id = ? ORDER BY series_id",
            )
            .map_err(storage("load series"))?;
        let rows = stmt
            .query_map(params![only, only], |row| {
                Ok((
                    row.get::<_, u32>(0)?,
                    row.get::<_, u64>(1)?,
                    row.get::<_, u32>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, u32>(5)?,
                ))
            })
            .map_err(storage("load series"))?;
        let mut loaded: HashMap<PartitionId, PartitionCatalog> = HashMap::new();
        let mut metrics = self.metrics.write().map_err(poisoned)?;
        for row in rows {
            let (partition, id, sid, metric, tags, metric_id) =
                row.map_err(storage("load series"))?;
            self.next_sid
                .fetch_max(sid.saturating_add(1), Ordering::SeqCst);
            let tags: Tags = serde_json::from_str(&tags).map_err(|e| {
                Error::storage("load series", format!("bad tags of series {id}: {e}"))
            })?;
            let key = series_partition_key(&metric, &tags);
            metrics.insert(metric.clone(), metric_id);
            let ids = SeriesIds {
                sid,
                metric: metric_id,
            };
            loaded
                .entry(partition)
                .or_default()
                .insert(key, ids, SeriesRow { id, metric, tags });
        }
        drop(metrics);
        let mut catalog = self.catalog.write().map_err(poisoned)?;
        match only {
            Some(p) => {
                catalog.remove(&p);
                if let Some(c) = loaded.remove(&p) {
                    catalog.insert(p, c);
                }
            }
            None => *catalog = loaded,
        }
        Ok(())
    }

    /// (Re)loads every partition's id window from `rm_batch_ids`.
    fn load_windows(&self, conn: &Connection) -> Result<()> {
        let mut stmt = conn
            .prepare("SELECT partition_id, batch_id, at_micros FROM rm_batch_ids")
            .map_err(storage("load batch ids"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, u32>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(storage("load batch ids"))?;
        let mut by_partition: HashMap<PartitionId, Vec<IdRow>> = HashMap::new();
        for row in rows {
            let (partition, id, at_micros) = row.map_err(storage("load batch ids"))?;
            let id = BatchId::parse(&id).map_err(|e| Error::storage("load batch ids", e))?;
            by_partition
                .entry(partition)
                .or_default()
                .push(IdRow { id, at_micros });
        }
        *self.windows.lock().map_err(poisoned)? = by_partition
            .into_iter()
            .map(|(p, rows)| (p, IdWindow::from_rows(rows)))
            .collect();
        Ok(())
    }

    fn load_applied(&self) -> Result<()> {
        let conn = self.writer.lock().map_err(poisoned)?;
        let mut stmt = conn
            .prepare("SELECT partition_id, applied_index FROM rm_partitions")
            .map_err(storage("load applied indexes"))?;
        let rows = stmt
            .query_map([], |row| Ok((row.get::<_, u32>(0)?, row.get::<_, u64>(1)?)))
            .map_err(storage("load applied indexes"))?;
        let mut loaded = rows
            .collect::<Result<HashMap<_, _>, _>>()
            .map_err(storage("load applied indexes"))?;
        let current: Option<Vec<u8>> = conn
            .query_row("SELECT indexes FROM rm_applied", [], |row| row.get(0))
            .map(Some)
            .or_else(|e| match e {
                duckdb::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(storage("load applied indexes"))?;
        if let Some(bytes) = current {
            let indexes: Vec<(PartitionId, u64)> =
                codec::decode(&bytes).map_err(|e| Error::storage("load applied indexes", e))?;
            loaded.extend(indexes);
        }
        *self.applied.write().map_err(poisoned)? = loaded;
        Ok(())
    }

    fn cached_applied(&self, partition: PartitionId) -> Result<u64> {
        let applied = self.applied.read().map_err(poisoned)?;
        Ok(applied.get(&partition).copied().unwrap_or(0))
    }

    fn reader(&self) -> Result<PooledReader<'_>> {
        let pooled = self.readers.lock().map_err(poisoned)?.pop();
        let conn = match pooled {
            Some(c) => c,
            None => connect(
                &*self.writer.lock().map_err(poisoned)?,
                self.saved.is_some(),
            )?,
        };
        Ok(PooledReader {
            conn: Some(conn),
            store: self,
        })
    }

    /// The snapshot metadata of a partition, as committed (empty for a partition the store
    /// has never seen or that never imported a snapshot).
    fn partition_meta(conn: &Connection, partition: PartitionId) -> Result<Vec<u8>> {
        let mut stmt = conn
            .prepare_cached("SELECT meta FROM rm_partitions WHERE partition_id = ?")
            .map_err(storage("read partition state"))?;
        let mut rows = stmt
            .query(params![partition])
            .map_err(storage("read partition state"))?;
        match rows.next().map_err(storage("read partition state"))? {
            Some(row) => Ok(row
                .get::<_, Option<Vec<u8>>>(0)
                .map_err(storage("read partition state"))?
                .unwrap_or_default()),
            None => Ok(Vec::new()),
        }
    }

    /// Records applied indexes inside the caller's transaction: `changes` on top of the
    /// committed ones (`applied`), without `removed`. A partition new to the store gets its
    /// `rm_partitions` row; every write rewrites the one `rm_applied` row.
    fn set_applied_indexes(
        conn: &Connection,
        applied: &HashMap<PartitionId, u64>,
        changes: &[(PartitionId, u64)],
        removed: Option<PartitionId>,
    ) -> Result<()> {
        let mut all: BTreeMap<PartitionId, u64> = applied
            .iter()
            .filter(|(p, _)| Some(**p) != removed)
            .map(|(p, i)| (*p, *i))
            .collect();
        for &(p, i) in changes {
            if !applied.contains_key(&p) {
                conn.prepare_cached(
                    "INSERT INTO rm_partitions (partition_id, applied_index) VALUES (?, ?)",
                )
                .and_then(|mut s| s.execute(params![p, i]))
                .map_err(storage("write applied index"))?;
            }
            all.insert(p, i);
        }
        let merged: Vec<(PartitionId, u64)> = all.into_iter().collect();
        let bytes = codec::encode(&merged)?;
        let updated = conn
            .prepare_cached("UPDATE rm_applied SET indexes = ?")
            .and_then(|mut s| s.execute(params![bytes]))
            .map_err(storage("write applied index"))?;
        if updated == 0 {
            conn.prepare_cached("INSERT INTO rm_applied (indexes) VALUES (?)")
                .and_then(|mut s| s.execute(params![bytes]))
                .map_err(storage("write applied index"))?;
        }
        Ok(())
    }
}

impl Drop for DuckDbStore {
    fn drop(&mut self) {
        // A store behind a log saves what it committed when it closes (DuckDB's own
        // checkpoint at shutdown is off for it).
        if self.saved.is_some() {
            let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = self.checkpoint_locked(&conn) {
                tracing::warn!(error = %e, "closing the store saved nothing: its log replays");
            }
        }
    }
}

/// Another connection to the database of `conn`, using the attached file when `attached`.
fn connect(conn: &Connection, attached: bool) -> Result<Connection> {
    let other = conn.try_clone().map_err(storage("connect"))?;
    if attached {
        other
            .execute_batch(&format!("USE {ATTACHED}"))
            .map_err(storage("connect"))?;
    }
    Ok(other)
}

/// How an aggregation finds the points of the selected series.
enum Source {
    /// Joins the points against the selection: comma-separated sids and the group of each.
    Join { series: String, groups: String },
    /// Every series of these metrics in these partitions is selected (the query filters no
    /// tag): a filter on `metric_id` and `partition_id`, evaluated while DuckDB scans;
    /// `partitions` empty when the query asked every partition the store holds (DuckDB
    /// turns a list of several into a join). With `by_sid`, rows come per series (the
    /// caller maps them to their groups); without, the selection is one group, numbered 0.
    Metrics {
        ids: Vec<u32>,
        partitions: Vec<PartitionId>,
        by_sid: bool,
    },
}

/// An aggregation over the selected series, grouped by group (or series) and time bucket.
/// The text is assembled from constant fragments only; every value is a bound parameter,
/// supplied by [`AggregateSql::args`] in the order the placeholders appear.
struct AggregateSql {
    text: String,
    width: Option<i64>,
    from: Option<i64>,
    to: Option<i64>,
    /// The query's value bounds that are given, in the order of their placeholders.
    bounds: Vec<f64>,
    /// With [`AggregateSql::at_times`]: the (group, timestamp) pairs read, as two
    /// comma-separated lists.
    times: Option<(String, String)>,
    /// The text before the point of the optional join of [`AggregateSql::at_times`], the
    /// text after it, and the group expression.
    parts: (String, String, &'static str),
}

/// The condition on `p.value` of each bound of a [`crate::query::ValueFilter`], in the
/// order of [`crate::query::ValueFilter::bounds`].
const VALUE_CONDITIONS: [&str; 4] = ["p.value > ?", "p.value >= ?", "p.value < ?", "p.value <= ?"];

impl AggregateSql {
    fn new(query: &Query, source: &Source, aggregates: &str) -> Self {
        let width = query.bucket_micros();
        let from = query.from.map(|t| t.as_micros());
        let to = query.to.map(|t| t.as_micros());
        let bucket = if width.is_some() {
            "(p.ts // ?) * ?"
        } else {
            "0::BIGINT"
        };
        let mut conds = Vec::new();
        let (group, join) = match source {
            Source::Join { .. } => (
                "q.group_id",
                "JOIN (SELECT unnest(string_split(?, ','))::UINTEGER AS sid,
                              unnest(string_split(?, ','))::UINTEGER AS group_id) q
                   ON p.sid = q.sid",
            ),
            Source::Metrics {
                ids,
                partitions,
                by_sid,
            } => {
                let placeholders = |n: usize| vec!["?"; n].join(", ");
                conds.push(format!("p.metric_id IN ({})", placeholders(ids.len())));
                if !partitions.is_empty() {
                    conds.push(format!(
                        "p.partition_id IN ({})",
                        placeholders(partitions.len())
                    ));
                }
                (if *by_sid { "p.sid" } else { "0::UINTEGER" }, "")
            }
        };
        if from.is_some() {
            conds.push("p.ts >= ?".into());
        }
        if to.is_some() {
            conds.push("p.ts < ?".into());
        }
        let mut bounds = Vec::new();
        for (cond, bound) in VALUE_CONDITIONS.iter().zip(query.values.bounds()) {
            if let Some(v) = bound {
                conds.push((*cond).into());
                bounds.push(v);
            }
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let head = format!(
            "SELECT {group} AS g, {bucket} AS b, {aggregates}
             FROM rm_points p {join}"
        );
        let tail = format!(
            "
             {filter}
             GROUP BY ALL"
        );
        AggregateSql {
            text: format!("{head}{tail}"),
            width,
            from,
            to,
            bounds,
            times: None,
            parts: (head, tail, group),
        }
    }

    /// Keeps only the points of the given (group, timestamp) pairs: `groups` and `times`
    /// are comma-separated lists of one length, the groups numbered as this statement
    /// numbers them.
    fn at_times(&mut self, groups: String, times: String) {
        let (head, tail, group) = &self.parts;
        self.text = format!(
            "{head}
             JOIN (SELECT unnest(string_split(?, ','))::UINTEGER AS tg,
                          unnest(string_split(?, ','))::BIGINT AS tt) t
               ON {group} = t.tg AND p.ts = t.tt{tail}"
        );
        self.times = Some((groups, times));
    }

    fn args(&self, ln_gamma: Option<f64>, source: &Source) -> Vec<Value> {
        let mut args = Vec::with_capacity(7);
        if let Some(w) = self.width {
            args.extend([Value::BigInt(w), Value::BigInt(w)]);
        }
        args.extend(ln_gamma.map(Value::Double));
        if let Source::Join { series, groups } = source {
            args.extend([Value::Text(series.clone()), Value::Text(groups.clone())]);
        }
        if let Some((groups, times)) = &self.times {
            args.extend([Value::Text(groups.clone()), Value::Text(times.clone())]);
        }
        if let Source::Metrics {
            ids, partitions, ..
        } = source
        {
            args.extend(ids.iter().map(|&id| Value::UInt(id)));
            args.extend(partitions.iter().map(|&p| Value::UInt(p)));
        }
        args.extend(self.from.map(Value::BigInt));
        args.extend(self.to.map(Value::BigInt));
        args.extend(self.bounds.iter().map(|&v| Value::Double(v)));
        args
    }
}

/// The (timestamp, value) pair in columns `at` and `at + 1` of an aggregate row; `None`
/// where the query did not ask for it (both `NULL`).
fn timed(row: &duckdb::Row<'_>, at: usize) -> Result<Option<TimedValue>> {
    let micros: Option<i64> = row.get(at).map_err(storage("query"))?;
    let value: Option<f64> = row.get(at + 1).map_err(storage("query"))?;
    Ok(micros.zip(value).map(|(t, v)| TimedValue::new(t, v)))
}

/// A row of an aggregate that asks for `last` or `first`, waiting for the values at its
/// latest and earliest timestamps.
struct TimedRow {
    /// The group (or series, see [`Source::Metrics`]) as the statement numbered it.
    g: u32,
    b: i64,
    state: PartialState,
    last: Option<i64>,
    first: Option<i64>,
}

/// A read connection that goes back to the pool when dropped.
struct PooledReader<'a> {
    conn: Option<Connection>,
    store: &'a DuckDbStore,
}

impl std::ops::Deref for PooledReader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl Drop for PooledReader<'_> {
    fn drop(&mut self) {
        if let (Some(conn), Ok(mut pool)) = (self.conn.take(), self.store.readers.lock())
            && pool.len() < READER_POOL
        {
            pool.push(conn);
        }
    }
}

/// New series met while applying, before they are committed.
struct NewSeries {
    partition: PartitionId,
    key: String,
    ids: SeriesIds,
    row: SeriesRow,
}

/// Hands out store-local sids within one write; committed by storing `next` back.
struct SidAllocator {
    next: u32,
}

impl SidAllocator {
    fn take(&mut self) -> Result<u32> {
        let sid = self.next;
        self.next = sid
            .checked_add(1)
            .ok_or_else(|| Error::storage("insert", "the store holds too many series"))?;
        Ok(sid)
    }
}

impl DuckDbStore {
    /// Reads up to `read_limit` rows of an export of `partition` from `after` on: the
    /// selected series from the cursor's on, in series id order, at most `read_limit` of
    /// them (tags matched here, in Rust), then their rows after the cursor, in order, by a
    /// join on them (bound parameters only).
    fn read_export(
        &self,
        partition: PartitionId,
        selection: &Selection,
        after: Option<Cursor>,
        read_limit: usize,
    ) -> Result<ReadAhead> {
        let first = after.map_or(0, |a| a.series_id);
        let (window, next_series) = {
            let catalog = self.catalog.read().map_err(poisoned)?;
            let mut chosen: Vec<(u64, u32, &str, &Tags)> = match catalog.get(&partition) {
                None => Vec::new(),
                Some(cat) => cat
                    .by_metric
                    .iter()
                    .filter(|(metric, _)| selection.matches_metric(metric))
                    .flat_map(|(metric, series)| {
                        series
                            .iter()
                            .map(move |(sid, id, tags)| (*id, *sid, metric.as_str(), tags))
                    })
                    .filter(|(id, _, metric, tags)| *id >= first && selection.matches(metric, tags))
                    .collect(),
            };
            // The first series left out starts the read after this one's rows.
            let next_series = if chosen.len() > read_limit {
                chosen.select_nth_unstable_by_key(read_limit, |c| c.0);
                let left_out = chosen[read_limit].0;
                chosen.truncate(read_limit);
                Some(left_out)
            } else {
                None
            };
            chosen.sort_unstable_by_key(|c| c.0);
            let window: Vec<(u64, u32, String, Tags)> = chosen
                .into_iter()
                .map(|(id, sid, metric, tags)| (id, sid, metric.to_string(), tags.clone()))
                .collect();
            (window, next_series)
        };
        let mut read = ReadAhead {
            partition,
            selection: selection.clone(),
            at: after,
            rows: VecDeque::new(),
            series: Vec::new(),
            complete: true,
            next_series,
            kept_at: Instant::now(),
        };
        if window.is_empty() {
            return Ok(read);
        }
        let (mut sids, mut ids) = (String::new(), String::new());
        for (id, sid, _, _) in &window {
            if !sids.is_empty() {
                sids.push(',');
                ids.push(',');
            }
            sids.push_str(&sid.to_string());
            ids.push_str(&id.to_string());
        }
        read.series = window
            .into_iter()
            .map(|(id, _, metric, tags)| (id, metric, tags))
            .collect();
        let (from, to) = selection.time_range_micros();
        // The first `skip` rows at the cursor's series and timestamp were on earlier pages.
        let cursor = after.unwrap_or(Cursor::start_of(0));
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT q.series_id, p.ts, p.value FROM rm_points p
                 JOIN (SELECT unnest(string_split(?, ','))::UINTEGER AS sid,
                              unnest(string_split(?, ','))::UBIGINT AS series_id) q
                   ON p.sid = q.sid
                 WHERE p.partition_id = ? AND p.ts >= ? AND p.ts < ?
                   AND (q.series_id <> ? OR p.ts >= ?)
                 ORDER BY q.series_id, p.ts, p.value
                 LIMIT ? OFFSET ?",
            )
            .map_err(storage("export page"))?;
        let mut rows = stmt
            .query(params![
                sids,
                ids,
                partition,
                from,
                to,
                cursor.series_id,
                cursor.timestamp_micros,
                read_limit as i64,
                cursor.skip as i64
            ])
            .map_err(storage("export page"))?;
        while let Some(row) = rows.next().map_err(storage("export page"))? {
            read.rows.push_back((
                row.get(0).map_err(storage("export page"))?,
                row.get(1).map_err(storage("export page"))?,
                row.get(2).map_err(storage("export page"))?,
            ));
        }
        read.complete = read.rows.len() < read_limit;
        Ok(read)
    }

    /// [`Store::read_series`]: the selected series from the catalog, then their points in one
    /// statement without an order (a filter on `metric_id` while DuckDB scans when the
    /// selection filters no tag, else a join on the series), gathered per series and
    /// sorted here: most points arrive in time order, which sorting meets in one pass.
    fn read_selected_series(
        &self,
        partitions: &[PartitionId],
        selection: &Selection,
        max_points: usize,
    ) -> Result<Vec<ExportSeries>> {
        let mut out: Vec<ExportSeries> = Vec::new();
        let mut index_of_sid: HashMap<u32, usize> = HashMap::new();
        // Whether the partitions asked are every partition the store holds series of: the
        // statement then needs no filter on them.
        let every_partition;
        {
            let catalog = self.catalog.read().map_err(poisoned)?;
            every_partition = catalog.keys().all(|p| partitions.contains(p));
            for cat in partitions.iter().filter_map(|p| catalog.get(p)) {
                for (metric, series) in &cat.by_metric {
                    if !selection.matches_metric(metric) {
                        continue;
                    }
                    for (sid, _, tags) in series {
                        if selection.matches(metric, tags) {
                            index_of_sid.insert(*sid, out.len());
                            out.push(ExportSeries {
                                metric: metric.clone(),
                                tags: tags.clone(),
                                timestamps: Vec::new(),
                                values: Vec::new(),
                            });
                        }
                    }
                }
            }
        }
        if out.is_empty() {
            return Ok(out);
        }
        let metric_ids: Vec<u32> = {
            let known = self.metrics.read().map_err(poisoned)?;
            selection
                .metrics
                .iter()
                .filter_map(|m| known.ids.get(m).copied())
                .collect()
        };
        let by_metric = selection.filters.is_empty()
            && !selection.metrics.is_empty()
            && metric_ids.len() == selection.metrics.len()
            && metric_ids.len() <= MAX_METRICS_BY_ID
            && partitions.len() <= MAX_PARTITIONS_BY_ID;
        let (from, to) = selection.time_range_micros();
        let limit = max_points.saturating_add(1) as i64;
        let conn = self.reader()?;
        let mut args: Vec<duckdb::types::Value> = Vec::new();
        let text = if by_metric {
            args.extend(metric_ids.iter().map(|&id| duckdb::types::Value::UInt(id)));
            // DuckDB turns a list of several partitions into a join; a series read of a
            // partition not asked is dropped below, by its sid.
            let partition_filter = if every_partition {
                String::new()
            } else {
                args.extend(partitions.iter().map(|&p| duckdb::types::Value::UInt(p)));
                format!(
                    "AND p.partition_id IN ({})",
                    vec!["?"; partitions.len()].join(", ")
                )
            };
            format!(
                "SELECT p.sid, p.ts, p.value FROM rm_points p
                 WHERE p.metric_id IN ({}) {partition_filter} AND p.ts >= ? AND p.ts < ?
                 LIMIT ?",
                vec!["?"; metric_ids.len()].join(", "),
            )
        } else {
            // Store-local series numbers are unique across partitions.
            let sids: Vec<String> = index_of_sid.keys().map(u32::to_string).collect();
            args.push(duckdb::types::Value::Text(sids.join(",")));
            "SELECT p.sid, p.ts, p.value FROM rm_points p
             JOIN (SELECT unnest(string_split(?, ','))::UINTEGER AS sid) q ON p.sid = q.sid
             WHERE p.ts >= ? AND p.ts < ?
             LIMIT ?"
                .to_string()
        };
        args.push(duckdb::types::Value::BigInt(from));
        args.push(duckdb::types::Value::BigInt(to));
        args.push(duckdb::types::Value::BigInt(limit));
        let mut stmt = conn.prepare_cached(&text).map_err(storage("read series"))?;
        // Columns at a time (Arrow), not a value at a time.
        let batches = stmt
            .query_arrow(duckdb::params_from_iter(args))
            .map_err(storage("read series"))?;
        // Series index by sid, dense (store-local sids are numbered from 0): a lookup per
        // point costs an array read.
        let max_sid = index_of_sid.keys().copied().max().unwrap_or(0) as usize;
        let mut slot_of_sid = vec![u32::MAX; max_sid + 1];
        for (&sid, &i) in &index_of_sid {
            slot_of_sid[sid as usize] = i as u32;
        }
        let mut read = 0usize;
        for batch in batches {
            read += batch.num_rows();
            if read > max_points {
                return Err(Error::InvalidRequest(format!(
                    "the selection holds more than {max_points} points in partitions {partitions:?}"
                )));
            }
            let column = |i: usize| batch.column(i).as_any();
            let (Some(sids), Some(ts), Some(values)) = (
                column(0).downcast_ref::<duckdb::arrow::array::UInt32Array>(),
                column(1).downcast_ref::<duckdb::arrow::array::Int64Array>(),
                column(2).downcast_ref::<duckdb::arrow::array::Float64Array>(),
            ) else {
                return Err(Error::storage("read series", "unexpected column types"));
            };
            for ((sid, t), v) in sids.values().iter().zip(ts.values()).zip(values.values()) {
                // A series not selected (written since the catalog was read, or of a
                // partition not asked) is not part of this read.
                let i = slot_of_sid.get(*sid as usize).copied().unwrap_or(u32::MAX);
                if i != u32::MAX {
                    let s = &mut out[i as usize];
                    s.timestamps.push(*t);
                    s.values.push(*v);
                }
            }
        }
        out.retain(|s| !s.timestamps.is_empty());
        for s in &mut out {
            let ordered = s
                .timestamps
                .windows(2)
                .zip(s.values.windows(2))
                .all(|(t, v)| t[0] < t[1] || (t[0] == t[1] && v[0] <= v[1]));
            if !ordered {
                let mut points: Vec<(i64, f64)> = s
                    .timestamps
                    .iter()
                    .copied()
                    .zip(s.values.iter().copied())
                    .collect();
                points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
                s.timestamps = points.iter().map(|p| p.0).collect();
                s.values = points.iter().map(|p| p.1).collect();
            }
        }
        Ok(out)
    }

    /// The rows read ahead for the page of `partition` and `selection` at `at`, if kept.
    fn take_read_ahead(
        &self,
        partition: PartitionId,
        selection: &Selection,
        at: Option<Cursor>,
    ) -> Result<Option<ReadAhead>> {
        let mut kept = self.export_reads.lock().map_err(poisoned)?;
        kept.retain(|r| r.kept_at.elapsed() < EXPORT_KEPT_FOR);
        let found = kept
            .iter()
            .position(|r| r.partition == partition && r.at == at && r.selection == *selection);
        Ok(found.map(|i| kept.swap_remove(i)))
    }

    /// Keeps `read` for its next page; the oldest kept read goes when there are too many.
    fn keep_read_ahead(&self, mut read: ReadAhead) -> Result<()> {
        read.kept_at = Instant::now();
        let mut kept = self.export_reads.lock().map_err(poisoned)?;
        kept.push(read);
        if kept.len() > EXPORT_KEPT_READS
            && let Some(oldest) = (0..kept.len()).min_by_key(|i| kept[*i].kept_at)
        {
            kept.swap_remove(oldest);
        }
        Ok(())
    }

    /// Forgets the reads kept for `partition` (its content was replaced or dropped).
    fn forget_read_ahead(&self, partition: PartitionId) -> Result<()> {
        self.export_reads
            .lock()
            .map_err(poisoned)?
            .retain(|r| r.partition != partition);
        Ok(())
    }

    /// Makes metric numbers allocated by a committed write known.
    fn publish_metrics(&self, new: HashMap<String, u32>) -> Result<()> {
        if !new.is_empty() {
            let mut metrics = self.metrics.write().map_err(poisoned)?;
            for (metric, id) in new {
                metrics.insert(metric, id);
            }
        }
        Ok(())
    }

    fn apply_locked(
        &self,
        conn: &mut Connection,
        windows: &mut HashMap<PartitionId, IdWindow>,
        writes: &[PartitionWrite<'_>],
    ) -> Result<Vec<bool>> {
        let tx = conn.transaction().map_err(storage("begin"))?;
        let mut applied = Vec::with_capacity(writes.len());
        let mut new_series: Vec<NewSeries> = Vec::new();
        let indexes: Vec<(PartitionId, u64)>;
        let next_sid: u32;
        let new_metrics: HashMap<String, u32>;
        {
            let catalog = self.catalog.read().map_err(poisoned)?;
            let metrics = self.metrics.read().map_err(poisoned)?;
            let mut metric_ids = MetricAllocator::new(&metrics);
            let mut pending: HashMap<PartitionId, HashMap<String, SeriesIds>> = HashMap::new();
            let mut next: HashMap<PartitionId, u64> = HashMap::new();
            let mut last_index: HashMap<PartitionId, u64> = HashMap::new();
            // Batch ids to remember, and per partition the newest time through which
            // remembered ids are forgotten.
            let mut new_ids: Vec<(PartitionId, IdRow)> = Vec::new();
            let mut forget: HashMap<PartitionId, i64> = HashMap::new();
            let mut points = PointColumns::default();
            let mut sids = SidAllocator {
                next: self.next_sid.load(Ordering::SeqCst),
            };
            for w in writes {
                let current = match last_index.get(&w.partition) {
                    Some(&i) => i,
                    None => self.cached_applied(w.partition)?,
                };
                if w.index <= current {
                    applied.push(false);
                    continue;
                }
                last_index.insert(w.partition, w.index);
                applied.push(true);
                let mut duplicate = Vec::new();
                if !w.ids.is_empty() {
                    check_spans(w.ids, w.records.len()).map_err(|e| Error::storage("insert", e))?;
                    let window = windows.entry(w.partition).or_default();
                    let d = window.decide(w.ids, w.proposed_at_micros);
                    duplicate.clone_from(&d.duplicate);
                    new_ids.extend(d.added.iter().map(|row| (w.partition, row.clone())));
                    if let Some(through) = d.forget_through {
                        let t = forget.entry(w.partition).or_insert(through);
                        *t = (*t).max(through);
                    }
                    window.commit(d);
                }
                let cat = catalog.get(&w.partition);
                let pending = pending.entry(w.partition).or_default();
                // Records of one series share their `Arc`: its numbers are found once.
                let mut ids_of: HashMap<*const Series, SeriesIds> = HashMap::new();
                for r in kept(w, &duplicate).into_iter().flatten() {
                    let ids = match ids_of.get(&Arc::as_ptr(&r.series)) {
                        Some(&ids) => ids,
                        None => {
                            let key = r.series.identity();
                            let known = cat
                                .and_then(|c| c.by_key.get(&*key))
                                .or_else(|| pending.get(&*key))
                                .copied();
                            let ids = match known {
                                Some(ids) => ids,
                                None => {
                                    let n = next
                                        .entry(w.partition)
                                        .or_insert_with(|| cat.map_or(0, |c| c.next));
                                    if *n >= MAX_SERIES_PER_PARTITION {
                                        return Err(Error::storage(
                                            "insert",
                                            "partition holds too many series",
                                        ));
                                    }
                                    let id = series_id(w.partition, *n);
                                    *n += 1;
                                    let ids = SeriesIds {
                                        sid: sids.take()?,
                                        metric: metric_ids.id(r.metric())?,
                                    };
                                    pending.insert(key.to_string(), ids);
                                    new_series.push(NewSeries {
                                        partition: w.partition,
                                        key: key.into_owned(),
                                        ids,
                                        row: SeriesRow {
                                            id,
                                            metric: r.metric().to_owned(),
                                            tags: r.tags().clone(),
                                        },
                                    });
                                    ids
                                }
                            };
                            ids_of.insert(Arc::as_ptr(&r.series), ids);
                            ids
                        }
                    };
                    points.push(w.partition, ids, r.timestamp.as_micros(), r.value);
                }
            }
            points.append(&tx).map_err(storage("insert"))?;
            if !new_ids.is_empty() {
                let mut ids = tx
                    .appender("rm_batch_ids")
                    .map_err(storage("insert batch ids"))?;
                for (p, row) in &new_ids {
                    ids.append_row(params![p, row.id.as_str(), row.at_micros])
                        .map_err(storage("insert batch ids"))?;
                }
                ids.flush().map_err(storage("insert batch ids"))?;
            }
            // After the inserts: a threshold may cover ids stored by an earlier write of
            // this call, exactly as the in-memory window forgot them.
            for (p, through) in forget {
                tx.execute(
                    "DELETE FROM rm_batch_ids WHERE partition_id = ? AND at_micros <= ?",
                    params![p, through],
                )
                .map_err(storage("forget batch ids"))?;
            }
            if !new_series.is_empty() {
                let mut series = tx.appender("rm_series").map_err(storage("insert series"))?;
                for s in &new_series {
                    let tags = serde_json::to_string(&s.row.tags)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    series
                        .append_row(params![
                            s.partition,
                            s.row.id,
                            s.ids.sid,
                            s.row.metric,
                            tags,
                            s.ids.metric
                        ])
                        .map_err(storage("insert series"))?;
                }
                series.flush().map_err(storage("insert series"))?;
            }
            indexes = last_index.into_iter().collect();
            let applied = self.applied.read().map_err(poisoned)?;
            Self::set_applied_indexes(&tx, &applied, &indexes, None)?;
            next_sid = sids.next;
            new_metrics = metric_ids.into_new();
        }
        tx.commit().map_err(storage("commit"))?;
        self.next_sid.store(next_sid, Ordering::SeqCst);
        self.applied.write().map_err(poisoned)?.extend(indexes);
        if let Some(saved) = &self.saved {
            // After the applied indexes: a checkpoint that counts these rows saved has
            // read them.
            saved.committed(writes.iter().map(|w| w.records.len() as u64).sum());
        }
        self.publish_metrics(new_metrics)?;
        if !new_series.is_empty() {
            let mut catalog = self.catalog.write().map_err(poisoned)?;
            for s in new_series {
                catalog
                    .entry(s.partition)
                    .or_default()
                    .insert(s.key, s.ids, s.row);
            }
        }
        Ok(applied)
    }
}

/// Rows of a snapshot's points gathered before they are appended, at most.
const IMPORT_CHUNK_ROWS: usize = 100_000;

/// Point rows gathered a column at a time, appended to `rm_points` as one Arrow batch:
/// DuckDB's appender bound every value of a row appended alone (`append_row`), which took
/// most of an apply transaction's time (docs/benchmarks.md, fix 23).
#[derive(Default)]
struct PointColumns {
    partition: Vec<u32>,
    sid: Vec<u32>,
    ts: Vec<i64>,
    value: Vec<f64>,
    metric: Vec<u32>,
}

impl PointColumns {
    fn push(&mut self, partition: PartitionId, ids: SeriesIds, ts: i64, value: f64) {
        self.partition.push(partition);
        self.sid.push(ids.sid);
        self.ts.push(ts);
        self.value.push(value);
        self.metric.push(ids.metric);
    }

    /// Appends the rows to `rm_points` in `conn`'s transaction (nothing when there are none).
    fn append(self, conn: &Connection) -> duckdb::Result<()> {
        use duckdb::arrow::array::{ArrayRef, Float64Array, Int64Array, UInt32Array};
        use duckdb::arrow::datatypes::{DataType, Field, Schema};
        use duckdb::arrow::record_batch::RecordBatch;

        if self.ts.is_empty() {
            return Ok(());
        }
        // The table's columns, in order, with their DuckDB types' Arrow counterparts.
        let schema = Schema::new(vec![
            Field::new("partition_id", DataType::UInt32, false),
            Field::new("sid", DataType::UInt32, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
            Field::new("metric_id", DataType::UInt32, true),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(self.partition)),
            Arc::new(UInt32Array::from(self.sid)),
            Arc::new(Int64Array::from(self.ts)),
            Arc::new(Float64Array::from(self.value)),
            Arc::new(UInt32Array::from(self.metric)),
        ];
        let batch = RecordBatch::try_new(Arc::new(schema), columns)
            .map_err(|e| duckdb::Error::ToSqlConversionFailure(Box::new(e)))?;
        let mut appender = conn.appender("rm_points")?;
        appender.append_record_batch(batch)?;
        appender.flush()
    }
}

/// The records of `w` that are stored: all, minus the spans `duplicate` names.
fn kept<'a>(w: &PartitionWrite<'a>, duplicate: &[usize]) -> Vec<&'a [Record]> {
    let mut parts = Vec::with_capacity(duplicate.len() + 1);
    let mut from = 0usize;
    for &i in duplicate {
        let span = &w.ids[i];
        let start = span.start as usize;
        parts.push(&w.records[from..start]);
        from = start + span.len as usize;
    }
    parts.push(&w.records[from..]);
    parts
}

impl Store for DuckDbStore {
    fn apply(&self, writes: &[PartitionWrite<'_>]) -> Result<Vec<bool>> {
        let mut conn = self.writer.lock().map_err(poisoned)?;
        let mut windows = self.windows.lock().map_err(poisoned)?;
        let result = self.apply_locked(&mut conn, &mut windows, writes);
        drop(windows);
        match &result {
            // The windows may hold decisions of the rolled-back transaction.
            Err(_) => self.load_windows(&conn)?,
            Ok(_) => self.save_if_starved(&conn),
        }
        result
    }

    fn applied_index(&self, partition: PartitionId) -> Result<u64> {
        self.cached_applied(partition)
    }

    fn durable_index(&self, partition: PartitionId) -> Result<u64> {
        match &self.saved {
            Some(saved) => Ok(saved.durable_index(partition)),
            None => self.cached_applied(partition),
        }
    }

    fn compute(
        &self,
        partitions: &[PartitionId],
        query: &Query,
        sketch: &SketchConfig,
    ) -> Result<PartialAggregate> {
        // How DuckDB finds the points: by a filter on metric (and partition) when the query
        // filters no tag, so that every series of its metrics is selected, also one written
        // since the catalog was read; else by joining the selection, passed as bound
        // parameters.
        let metrics = query.metrics();
        let metric_ids: Vec<u32> = {
            let known = self.metrics.read().map_err(poisoned)?;
            metrics
                .iter()
                .filter_map(|m| known.ids.get(*m).copied())
                .collect()
        };
        let by_filter = query.filters.is_empty()
            && !metric_ids.is_empty()
            && metric_ids.len() <= MAX_METRICS_BY_ID
            && partitions.len() <= MAX_PARTITIONS_BY_ID;
        // 1. Select series and assign groups in memory: for the join, the sids and their
        // groups as text; for the filter, the group of each sid.
        let mut groups: Vec<GroupKey> = Vec::new();
        let mut group_ids: HashMap<GroupKey, u32> = HashMap::new();
        let (mut series_list, mut group_list) = (String::new(), String::new());
        let mut group_of_sid: HashMap<u32, u32> = HashMap::new();
        {
            let catalog = self.catalog.read().map_err(poisoned)?;
            let catalog = &*catalog;
            let metrics = &metrics;
            let selected = partitions.iter().flat_map(|p| {
                metrics.iter().filter_map(move |m| {
                    catalog
                        .get(p)
                        .and_then(|c| c.by_metric.get(*m))
                        .map(|series| (*m, series))
                })
            });
            for (metric, candidates) in selected {
                for (sid, _, tags) in candidates {
                    if !query.matches(metric, tags) {
                        continue;
                    }
                    let key = query.group_key(metric, tags);
                    let next = groups.len() as u32;
                    let gid = *group_ids.entry(key.clone()).or_insert_with(|| {
                        groups.push(key);
                        next
                    });
                    if by_filter {
                        group_of_sid.insert(*sid, gid);
                        continue;
                    }
                    if !series_list.is_empty() {
                        series_list.push(',');
                        group_list.push(',');
                    }
                    series_list.push_str(&sid.to_string());
                    group_list.push_str(&gid.to_string());
                }
            }
        }
        let mut out = PartialAggregate::default();
        if groups.is_empty() {
            return Ok(out);
        }
        // 2. Aggregate in DuckDB, reading one snapshot: the partitions the store holds are
        // read from the same snapshot as the points (a write adds its partition's
        // `rm_partitions` row in the transaction of its points).
        // One statement alone reads one snapshot without a transaction of its own: the
        // transaction (two statements more) is only for the filter's read of the partitions
        // held, and for the second statement of a sketch or of `last` and `first`.
        // `last` and `first` by a second statement (see below): without buckets.
        let at_times =
            query.bucket_micros().is_none() && (query.needs_last() || query.needs_first());
        let reader = self.reader()?;
        let transaction;
        let conn: &Connection = if by_filter || query.needs_sketch() || at_times {
            transaction = reader.unchecked_transaction().map_err(storage("query"))?;
            &transaction
        } else {
            &reader
        };
        let source = if by_filter {
            let held = conn
                .prepare_cached("SELECT partition_id FROM rm_partitions")
                .and_then(|mut s| {
                    s.query_map([], |row| row.get::<_, PartitionId>(0))?
                        .collect::<std::result::Result<Vec<_>, _>>()
                })
                .map_err(storage("query"))?;
            let every_partition = held.iter().all(|p| partitions.contains(p));
            Source::Metrics {
                ids: metric_ids,
                partitions: if every_partition {
                    Vec::new()
                } else {
                    partitions.to_vec()
                },
                // Rows of series written since the catalog was read count too: in one
                // group only when the query has no groups they could fall outside of.
                by_sid: !query.group_by.is_empty(),
            }
        } else {
            Source::Join {
                series: series_list,
                groups: group_list,
            }
        };
        // The group of a result row; `None` for a series written since the catalog was
        // read, whose tags this query has not seen (the join leaves it out too).
        let group_of = |g: u32| -> Option<GroupKey> {
            let gid = match source {
                Source::Metrics { by_sid: true, .. } => *group_of_sid.get(&g)?,
                _ => g,
            };
            groups.get(gid as usize).cloned()
        };
        let bucket_key = |b: i64| {
            if query.bucket_micros().is_some() {
                b
            } else {
                WHOLE_RANGE
            }
        };
        let mut timed_rows: Vec<TimedRow> = Vec::new();
        {
            // Only the aggregates the query needs; the others keep their neutral values.
            // Minimum and maximum come with every percentile (`Query::needs_extremes`).
            // `last` and `first`, each a (timestamp, value) pair: the greatest and smallest
            // pair, so a tie of timestamps goes to the greater (smaller) value whatever order
            // DuckDB reads the rows in (`TimedValue`). Without buckets, here only the
            // greatest and smallest timestamp, and the value at it from a second statement
            // that reads only those timestamps ([`AggregateSql::at_times`]); with buckets,
            // whose timestamps span the whole range, the pair here, a struct compared field
            // by field (DuckDB computes each of the two aggregates once, for both fields).
            let pair = |extreme: &str| {
                if at_times {
                    format!("{extreme}(p.ts), NULL::DOUBLE")
                } else {
                    format!(
                        "struct_extract({extreme}(struct_pack(t := p.ts, v := p.value)), 't'),
                         struct_extract({extreme}(struct_pack(t := p.ts, v := p.value)), 'v')"
                    )
                }
            };
            let columns = format!(
                "count(*), {}, {}, {}, {}",
                if query.aggs.iter().any(|a| matches!(a, Agg::Sum | Agg::Avg)) {
                    "sum(p.value)"
                } else {
                    "0::DOUBLE"
                },
                if query.needs_extremes() {
                    "min(p.value), max(p.value)"
                } else {
                    "'inf'::DOUBLE, '-inf'::DOUBLE"
                },
                if query.needs_last() {
                    pair("max")
                } else {
                    "NULL::BIGINT, NULL::DOUBLE".to_string()
                },
                if query.needs_first() {
                    pair("min")
                } else {
                    "NULL::BIGINT, NULL::DOUBLE".to_string()
                },
            );
            let sql = AggregateSql::new(query, &source, &columns);
            let mut stmt = conn.prepare_cached(&sql.text).map_err(storage("query"))?;
            let mut rows = stmt
                .query(duckdb::params_from_iter(sql.args(None, &source)))
                .map_err(storage("query"))?;
            while let Some(row) = rows.next().map_err(storage("query"))? {
                let count = row.get::<_, i64>(2).map_err(storage("query"))? as u64;
                if count == 0 {
                    // Grouped by constants only, DuckDB answers one row even when no point
                    // is selected (the sum and extremes of nothing are NULL).
                    continue;
                }
                let g: u32 = row.get(0).map_err(storage("query"))?;
                let b: i64 = row.get(1).map_err(storage("query"))?;
                let mut state = PartialState {
                    count,
                    sum: row.get(3).map_err(storage("query"))?,
                    min: row.get(4).map_err(storage("query"))?,
                    max: row.get(5).map_err(storage("query"))?,
                    sketch: query.needs_sketch().then(Sketch::new),
                    last: None,
                    first: None,
                };
                let (last, first) = if at_times {
                    (
                        row.get::<_, Option<i64>>(6).map_err(storage("query"))?,
                        row.get::<_, Option<i64>>(8).map_err(storage("query"))?,
                    )
                } else {
                    state.last = timed(row, 6)?;
                    state.first = timed(row, 8)?;
                    (None, None)
                };
                if last.is_none() && first.is_none() {
                    if let Some(key) = group_of(g) {
                        out.state_mut(key, bucket_key(b)).merge(&state);
                    }
                } else {
                    timed_rows.push(TimedRow {
                        g,
                        b,
                        state,
                        last,
                        first,
                    });
                }
            }
        }
        if !timed_rows.is_empty() {
            // The values at each row's latest and earliest timestamps: of the points of the
            // row's group (or series) at exactly that timestamp, the greatest (for `last`) and
            // the smallest (for `first`), so a tie of timestamps goes to the greater
            // (smaller) value whatever order DuckDB reads the rows in (`TimedValue`). A
            // join on (group, timestamp) against the pairs wanted: DuckDB pushes their range
            // of timestamps into the scan, which then skips the row groups outside it. A
            // group's buckets are disjoint in time, so a pair names its bucket.
            let (mut groups_text, mut times_text) = (String::new(), String::new());
            for row in &timed_rows {
                for t in [row.last, row.first].into_iter().flatten() {
                    if !groups_text.is_empty() {
                        groups_text.push(',');
                        times_text.push(',');
                    }
                    groups_text.push_str(&row.g.to_string());
                    times_text.push_str(&t.to_string());
                }
            }
            let mut sql =
                AggregateSql::new(query, &source, "p.ts AS t, max(p.value), min(p.value)");
            sql.at_times(groups_text, times_text);
            let mut stmt = conn.prepare_cached(&sql.text).map_err(storage("query"))?;
            let mut rows = stmt
                .query(duckdb::params_from_iter(sql.args(None, &source)))
                .map_err(storage("query"))?;
            let mut values: HashMap<(u32, i64), (f64, f64)> = HashMap::new();
            while let Some(row) = rows.next().map_err(storage("query"))? {
                let g: u32 = row.get(0).map_err(storage("query"))?;
                let t: i64 = row.get(2).map_err(storage("query"))?;
                let greatest: f64 = row.get(3).map_err(storage("query"))?;
                let smallest: f64 = row.get(4).map_err(storage("query"))?;
                values.insert((g, t), (greatest, smallest));
            }
            for TimedRow {
                g,
                b,
                mut state,
                last,
                first,
            } in timed_rows
            {
                let value_at = |t: i64, pick: fn((f64, f64)) -> f64| -> Result<TimedValue> {
                    let found = values.get(&(g, t)).copied().ok_or_else(|| {
                        Error::Internal(format!(
                            "a query found no point of group {g} at its own latest or \
                             earliest timestamp {t}"
                        ))
                    })?;
                    Ok(TimedValue::new(t, pick(found)))
                };
                state.last = last.map(|t| value_at(t, |v| v.0)).transpose()?;
                state.first = first.map(|t| value_at(t, |v| v.1)).transpose()?;
                if let Some(key) = group_of(g) {
                    out.state_mut(key, bucket_key(b)).merge(&state);
                }
            }
        }
        if query.needs_sketch() {
            // Sketch buckets: sign, then ceil(ln|v| / ln gamma), exactly SketchConfig::index_of.
            let sql = AggregateSql::new(
                query,
                &source,
                "sign(p.value)::TINYINT AS s,
                 CASE WHEN p.value = 0 THEN 0
                      ELSE ceil(ln(abs(p.value)) / ?::DOUBLE)::INTEGER END AS i,
                 count(*)",
            );
            let mut stmt = conn.prepare_cached(&sql.text).map_err(storage("query"))?;
            let args = sql.args(Some(sketch.ln_gamma()), &source);
            let mut rows = stmt
                .query(duckdb::params_from_iter(args))
                .map_err(storage("query"))?;
            while let Some(row) = rows.next().map_err(storage("query"))? {
                let g: u32 = row.get(0).map_err(storage("query"))?;
                let b: i64 = row.get(1).map_err(storage("query"))?;
                let sign: i8 = row.get(2).map_err(storage("query"))?;
                let index: i32 = row.get(3).map_err(storage("query"))?;
                let count = row.get::<_, i64>(4).map_err(storage("query"))? as u64;
                if let Some(key) = group_of(g) {
                    out.state_mut(key, bucket_key(b))
                        .sketch
                        .get_or_insert_with(Sketch::new)
                        .add_bucket(sign, index, count);
                }
            }
        }
        Ok(out)
    }

    fn export_page(
        &self,
        partition: PartitionId,
        selection: &Selection,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<ExportPage> {
        let limit = limit.max(1);
        // The rows read ahead for this page by an earlier call, if they reach far enough;
        // else a read from DuckDB of up to `EXPORT_READ_AHEAD` rows.
        let kept = self
            .take_read_ahead(partition, selection, after)?
            .filter(|r| r.complete || r.rows.len() >= limit);
        let mut read = match kept {
            Some(read) => read,
            None => self.read_export(partition, selection, after, limit.max(EXPORT_READ_AHEAD))?,
        };
        let mut page = PageBuilder::new(after, limit);
        while !page.is_full() {
            let Some((id, ts, value)) = read.rows.pop_front() else {
                break;
            };
            page.push(id, ts, value, || read.describe(id))?;
        }
        let full = page.is_full();
        let page = page.finish(read.next_series);
        // What is left waits for the next page (a page that is not full ended the read).
        if full && (!read.rows.is_empty() || read.complete) {
            read.at = page.next;
            self.keep_read_ahead(read)?;
        }
        Ok(page)
    }

    fn read_series(
        &self,
        partitions: &[PartitionId],
        selection: &Selection,
        max_points: usize,
    ) -> Result<Vec<ExportSeries>> {
        self.read_selected_series(partitions, selection, max_points)
    }

    fn partitions(&self) -> Result<Vec<PartitionId>> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare_cached("SELECT partition_id FROM rm_partitions ORDER BY 1")
            .map_err(storage("list partitions"))?;
        let rows = stmt
            .query_map([], |row| row.get::<_, u32>(0))
            .map_err(storage("list partitions"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(storage("list partitions"))
    }

    fn export_partition(&self, partition: PartitionId) -> Result<PartitionSnapshot> {
        let mut conn = self.writer.lock().map_err(poisoned)?;
        // One transaction, so the rows and the applied index are from the same moment.
        let tx = conn.transaction().map_err(storage("export"))?;
        // Under the writer lock the in-memory applied index is the committed one.
        let applied_index = self.cached_applied(partition)?;
        let meta = Self::partition_meta(&tx, partition)?;
        let series = {
            let mut stmt = tx
                .prepare("SELECT series_id, metric, tags FROM rm_series WHERE partition_id = ? ORDER BY series_id")
                .map_err(storage("export"))?;
            let rows = stmt
                .query_map(params![partition], |row| {
                    Ok((
                        row.get::<_, u64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })
                .map_err(storage("export"))?;
            let mut series = Vec::new();
            for row in rows {
                let (id, metric, tags) = row.map_err(storage("export"))?;
                let tags = serde_json::from_str(&tags).map_err(|e| Error::storage("export", e))?;
                series.push(SeriesRow { id, metric, tags });
            }
            series
        };
        let points = {
            let mut stmt = tx
                .prepare(
                    "SELECT s.series_id, p.ts, p.value FROM rm_points p
                     JOIN rm_series s ON p.partition_id = s.partition_id AND p.sid = s.sid
                     WHERE p.partition_id = ?
                     ORDER BY s.series_id, p.ts, p.value",
                )
                .map_err(storage("export"))?;
            let rows = stmt
                .query_map(params![partition], |row| {
                    Ok(PointRow {
                        series_id: row.get(0)?,
                        timestamp_micros: row.get(1)?,
                        value: row.get(2)?,
                    })
                })
                .map_err(storage("export"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(storage("export"))?
        };
        tx.commit().map_err(storage("export"))?;
        // Under the writer lock, so the window is the one committed with these rows.
        let ids = self
            .windows
            .lock()
            .map_err(poisoned)?
            .get(&partition)
            .map(|w| w.rows().cloned().collect())
            .unwrap_or_default();
        Ok(PartitionSnapshot {
            partition,
            applied_index,
            meta,
            series,
            points,
            ids,
        })
    }

    fn import_partition(&self, snapshot: &PartitionSnapshot) -> Result<()> {
        let p = snapshot.partition;
        self.forget_read_ahead(p)?;
        if let Some(s) = snapshot
            .series
            .iter()
            .find(|s| s.id >> SERIES_BITS != u64::from(p))
        {
            return Err(Error::InvalidRequest(format!(
                "snapshot of partition {p} holds series {} of another partition",
                s.id
            )));
        }
        {
            let mut conn = self.writer.lock().map_err(poisoned)?;
            let tx = conn.transaction().map_err(storage("import"))?;
            tx.execute("DELETE FROM rm_points WHERE partition_id = ?", params![p])
                .map_err(storage("import"))?;
            tx.execute("DELETE FROM rm_series WHERE partition_id = ?", params![p])
                .map_err(storage("import"))?;
            tx.execute(
                "DELETE FROM rm_batch_ids WHERE partition_id = ?",
                params![p],
            )
            .map_err(storage("import"))?;
            {
                let mut ids = tx.appender("rm_batch_ids").map_err(storage("import"))?;
                for row in &snapshot.ids {
                    ids.append_row(params![p, row.id.as_str(), row.at_micros])
                        .map_err(storage("import"))?;
                }
                ids.flush().map_err(storage("import"))?;
            }
            let mut sids = SidAllocator {
                next: self.next_sid.load(Ordering::SeqCst),
            };
            let metrics = self.metrics.read().map_err(poisoned)?;
            let mut metric_ids = MetricAllocator::new(&metrics);
            let mut ids_of: HashMap<u64, SeriesIds> = HashMap::with_capacity(snapshot.series.len());
            {
                let mut series = tx.appender("rm_series").map_err(storage("import"))?;
                for s in &snapshot.series {
                    let ids = SeriesIds {
                        sid: sids.take()?,
                        metric: metric_ids.id(&s.metric)?,
                    };
                    if ids_of.insert(s.id, ids).is_some() {
                        return Err(Error::InvalidRequest(format!(
                            "snapshot of partition {p} lists series {} twice",
                            s.id
                        )));
                    }
                    let tags = serde_json::to_string(&s.tags)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    series
                        .append_row(params![p, s.id, ids.sid, s.metric, tags, ids.metric])
                        .map_err(storage("import"))?;
                }
                series.flush().map_err(storage("import"))?;
                let mut points = PointColumns::default();
                for r in &snapshot.points {
                    let ids = ids_of.get(&r.series_id).ok_or_else(|| {
                        Error::InvalidRequest(format!(
                            "snapshot of partition {p} has points of unknown series {}",
                            r.series_id
                        ))
                    })?;
                    points.push(p, *ids, r.timestamp_micros, r.value);
                    if points.ts.len() >= IMPORT_CHUNK_ROWS {
                        std::mem::take(&mut points)
                            .append(&tx)
                            .map_err(storage("import"))?;
                    }
                }
                points.append(&tx).map_err(storage("import"))?;
            }
            {
                let applied = self.applied.read().map_err(poisoned)?;
                Self::set_applied_indexes(&tx, &applied, &[(p, snapshot.applied_index)], None)?;
            }
            tx.execute(
                "UPDATE rm_partitions SET meta = ? WHERE partition_id = ?",
                params![snapshot.meta, p],
            )
            .map_err(storage("import"))?;
            let new_metrics = metric_ids.into_new();
            drop(metrics);
            tx.commit().map_err(storage("import"))?;
            self.next_sid.store(sids.next, Ordering::SeqCst);
            self.publish_metrics(new_metrics)?;
            self.applied
                .write()
                .map_err(poisoned)?
                .insert(p, snapshot.applied_index);
            self.windows
                .lock()
                .map_err(poisoned)?
                .insert(p, IdWindow::from_rows(snapshot.ids.clone()));
            // Still under the writer lock, so no write sees the old catalog of `p`.
            self.load_catalog(&conn, Some(p))?;
            if self.saved.is_some() {
                // The log in front drops what the snapshot replaces: save it now.
                self.checkpoint_locked(&conn)?;
            }
            Ok(())
        }
    }

    fn drop_partition(&self, partition: PartitionId) -> Result<()> {
        self.forget_read_ahead(partition)?;
        {
            let mut conn = self.writer.lock().map_err(poisoned)?;
            let tx = conn.transaction().map_err(storage("drop partition"))?;
            for table in ["rm_points", "rm_series", "rm_partitions", "rm_batch_ids"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE partition_id = ?"),
                    params![partition],
                )
                .map_err(storage("drop partition"))?;
            }
            {
                let applied = self.applied.read().map_err(poisoned)?;
                Self::set_applied_indexes(&tx, &applied, &[], Some(partition))?;
            }
            tx.commit().map_err(storage("drop partition"))?;
            self.applied.write().map_err(poisoned)?.remove(&partition);
            self.windows.lock().map_err(poisoned)?.remove(&partition);
            if self.saved.is_some() {
                // The log in front is gone already: the partition must not come back.
                self.checkpoint_locked(&conn)?;
            }
        }
        self.catalog.write().map_err(poisoned)?.remove(&partition);
        Ok(())
    }

    fn snapshot_meta(&self, partition: PartitionId) -> Result<Vec<u8>> {
        let conn = self.reader()?;
        Self::partition_meta(&conn, partition)
    }

    fn storage_bytes(&self) -> Result<u64> {
        let conn = self.reader()?;
        conn.query_row(
            "SELECT (total_blocks * block_size)::UBIGINT FROM pragma_database_size()
             WHERE database_name = current_database()",
            [],
            |row| row.get(0),
        )
        .map_err(storage("database size"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_access_and_configuration_are_locked() {
        let store = DuckDbStore::open_in_memory().unwrap();
        let conn = store.writer.lock().unwrap();
        for sql in [
            "SELECT * FROM read_csv('/etc/passwd')",
            "COPY rm_points TO '/tmp/rm_points_leak.csv'",
            "SET enable_external_access = true",
            "INSTALL httpfs",
        ] {
            assert!(conn.execute_batch(sql).is_err(), "{sql} must be refused");
        }
        assert!(!std::path::Path::new("/tmp/rm_points_leak.csv").exists());
    }

    #[test]
    fn store_is_shareable_between_threads() {
        fn is<T: Send + Sync>() {}
        is::<DuckDbStore>();
    }
}
