//! The suite every [`Store`] implementation must pass.
//!
//! Call [`run`] from a test with a factory that makes a fresh, empty store:
//!
//! ```no_run
//! use raftmetrics_core::store::{DuckDbStore, conformance};
//! conformance::run(&|| Box::new(DuckDbStore::open_in_memory().unwrap()));
//! ```
//!
//! Failures panic with a message naming the broken rule.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::{PartitionSnapshot, PartitionWrite, Store};
use crate::aggregate::{PartialAggregate, PartialState, WHOLE_RANGE};
use crate::error::{Error, Result};
use crate::export::{Cursor, ExportPage, Selection};
use crate::idempotency::{BatchId, IdSpan, WINDOW_MICROS};
use crate::model::{Record, Tags};
use crate::partition::PartitionId;
use crate::query::{Agg, Query, TagFilter, ValueFilter};
use crate::series::{self, Series};
use crate::sketch::SketchConfig;
use crate::time::Timestamp;

/// Makes a fresh, empty store.
pub type Factory<'a> = &'a dyn Fn() -> Box<dyn Store>;

/// Runs every check against fresh stores from `make`.
pub fn run(make: Factory<'_>) {
    applies_and_tracks_the_applied_index(&*make());
    replaying_an_applied_index_changes_nothing(&*make());
    a_call_is_atomic_across_partitions(&*make());
    computes_exact_partial_states(&*make());
    last_first_and_value_bounds_are_exact(&*make());
    keeps_partitions_apart(&*make());
    hostile_strings_are_data(&*make());
    export_import_round_trips(&*make(), &*make());
    drop_partition_forgets_everything(&*make());
    a_batch_id_is_stored_once(&*make(), &*make());
    one_query_covers_several_metrics(&*make());
    exports_in_pages_that_continue_on_another_replica(&*make(), &*make());
    reads_whole_series_of_several_partitions(&*make());
}

/// A real store behind a wrapper that counts its write transactions, can hold them shut,
/// and can make them fail: for tests of what waits for a store and what happens when a
/// write to it fails.
pub struct Observed<S: Store> {
    pub inner: S,
    /// Calls of `apply`, counted before the gate.
    pub entered: AtomicUsize,
    /// Calls of `apply` that passed the gate.
    pub transactions: AtomicUsize,
    /// Held by a test to keep writes waiting.
    pub gate: Mutex<()>,
    /// When set, writes fail (as on a full disk) without reaching `inner`.
    pub fail: AtomicBool,
}

impl<S: Store> Observed<S> {
    pub fn new(inner: S) -> Self {
        Observed {
            inner,
            entered: AtomicUsize::new(0),
            transactions: AtomicUsize::new(0),
            gate: Mutex::new(()),
            fail: AtomicBool::new(false),
        }
    }
}

impl<S: Store> Store for Observed<S> {
    fn apply(&self, writes: &[PartitionWrite<'_>]) -> Result<Vec<bool>> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let _open = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        self.transactions.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::storage("insert", "disk full (Observed::fail)"));
        }
        self.inner.apply(writes)
    }
    fn applied_index(&self, p: PartitionId) -> Result<u64> {
        self.inner.applied_index(p)
    }
    fn durable_index(&self, p: PartitionId) -> Result<u64> {
        self.inner.durable_index(p)
    }
    fn compute(&self, p: &[PartitionId], q: &Query, s: &SketchConfig) -> Result<PartialAggregate> {
        self.inner.compute(p, q, s)
    }
    fn export_page(
        &self,
        p: PartitionId,
        s: &Selection,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<ExportPage> {
        self.inner.export_page(p, s, after, limit)
    }
    fn read_series(
        &self,
        p: &[PartitionId],
        s: &Selection,
        max_points: usize,
    ) -> Result<Vec<crate::export::ExportSeries>> {
        self.inner.read_series(p, s, max_points)
    }
    fn partitions(&self) -> Result<Vec<PartitionId>> {
        self.inner.partitions()
    }
    fn export_partition(&self, p: PartitionId) -> Result<PartitionSnapshot> {
        self.inner.export_partition(p)
    }
    fn import_partition(&self, s: &PartitionSnapshot) -> Result<()> {
        self.inner.import_partition(s)
    }
    fn snapshot_meta(&self, p: PartitionId) -> Result<Vec<u8>> {
        self.inner.snapshot_meta(p)
    }
    fn drop_partition(&self, p: PartitionId) -> Result<()> {
        self.inner.drop_partition(p)
    }
    fn storage_bytes(&self) -> Result<u64> {
        self.inner.storage_bytes()
    }
}

/// A small deterministic generator (SplitMix64), so the suite needs no RNG crate.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn record(metric: &str, host: &str, dc: &str, ts_secs: i64, value: f64) -> Record {
    let mut tags = Tags::new();
    tags.insert("host".into(), host.into());
    tags.insert("datacenter".into(), dc.into());
    Record::new(
        series::intern(Series::new(metric, tags, Some(metric.into()))),
        Timestamp::from_micros(ts_secs * 1_000_000),
        value,
    )
}

fn sample(seed: u64, n: usize) -> Vec<Record> {
    let mut rng = SplitMix(seed);
    (0..n)
        .map(|_| {
            let host = format!("web-{}", rng.below(5));
            let dc = ["us-west", "us-east", "eu"][rng.below(3) as usize];
            let value = (rng.next_f64() - 0.2) * 1000.0;
            record(
                "cpu",
                &host,
                dc,
                1_700_000_000 + rng.below(7200) as i64,
                value,
            )
        })
        .collect()
}

fn write(p: PartitionId, index: u64, records: &[Record]) -> PartitionWrite<'_> {
    PartitionWrite::new(p, index, records)
}

fn everything(metric: &str) -> Query {
    let mut q = Query::new(metric);
    q.aggs = vec![Agg::Count, Agg::Sum, Agg::Min, Agg::Max, Agg::P50];
    q
}

fn total(p: &PartialAggregate) -> PartialState {
    let mut t = PartialState::default();
    for s in p.groups.values().flat_map(|b| b.values()) {
        t.merge(s);
    }
    t
}

fn count_in(store: &dyn Store, partitions: &[PartitionId], metric: &str) -> u64 {
    let cfg = SketchConfig::default();
    store
        .compute(partitions, &everything(metric), &cfg)
        .expect("compute")
        .count()
}

fn applies_and_tracks_the_applied_index(store: &dyn Store) {
    assert_eq!(
        store.applied_index(3).unwrap(),
        0,
        "a new partition starts at index 0"
    );
    let rows = sample(1, 100);
    assert_eq!(store.apply(&[write(3, 5, &rows)]).unwrap(), vec![true]);
    assert_eq!(store.applied_index(3).unwrap(), 5);
    assert_eq!(
        store.apply(&[write(3, 6, &[])]).unwrap(),
        vec![true],
        "empty entries advance the index"
    );
    assert_eq!(store.applied_index(3).unwrap(), 6);
    assert_eq!(store.partitions().unwrap(), vec![3]);
    assert_eq!(count_in(store, &[3], "cpu"), 100);
}

fn replaying_an_applied_index_changes_nothing(store: &dyn Store) {
    let rows = sample(2, 50);
    store
        .apply(&[write(0, 1, &rows), write(0, 2, &rows)])
        .unwrap();
    let before = store.digest(0).unwrap();
    assert_eq!(
        store
            .apply(&[write(0, 1, &rows), write(0, 2, &rows)])
            .unwrap(),
        vec![false, false],
        "replayed entries report that they were already applied"
    );
    assert_eq!(
        store.digest(0).unwrap(),
        before,
        "a replay must not change the data"
    );
    assert_eq!(count_in(store, &[0], "cpu"), 100);
    assert_eq!(store.apply(&[write(0, 3, &rows)]).unwrap(), vec![true]);
    assert_eq!(count_in(store, &[0], "cpu"), 150);
}

fn a_call_is_atomic_across_partitions(store: &dyn Store) {
    let rows = sample(3, 10);
    store.apply(&[write(1, 1, &rows)]).unwrap();
    // Partition 2 is new, partition 1 is replayed: only partition 2 changes.
    assert_eq!(
        store
            .apply(&[write(2, 1, &rows), write(1, 1, &rows)])
            .unwrap(),
        vec![true, false]
    );
    assert_eq!(count_in(store, &[1], "cpu"), 10);
    assert_eq!(count_in(store, &[2], "cpu"), 10);
    assert_eq!(store.applied_index(2).unwrap(), 1);
}

fn computes_exact_partial_states(store: &dyn Store) {
    let cfg = SketchConfig::default();
    let rows = sample(4, 2_000);
    store
        .apply(&[write(0, 1, &rows[..1000]), write(1, 1, &rows[1000..])])
        .unwrap();
    let mut q = everything("cpu");
    q.group_by = vec!["datacenter".into()];
    q.window_micros = Some(600 * 1_000_000);
    q.from = Some(Timestamp::from_micros(1_700_000_600 * 1_000_000));
    let got = store.compute(&[0, 1], &q, &cfg).unwrap();
    let mut want = PartialAggregate::default();
    for r in rows.iter().filter(|r| r.timestamp >= q.from.unwrap()) {
        let bucket = r.timestamp.as_micros() / q.window_micros.unwrap() * q.window_micros.unwrap();
        want.state_mut(q.group_key(r.metric(), r.tags()), bucket)
            .add(&cfg, r.value, true);
    }
    assert_eq!(
        got.groups.keys().collect::<Vec<_>>(),
        want.groups.keys().collect::<Vec<_>>()
    );
    for (group, buckets) in &want.groups {
        for (bucket, w) in buckets {
            let g = &got.groups[group][bucket];
            assert_eq!(g.count, w.count, "count of {group:?}/{bucket}");
            assert_eq!(
                (g.min, g.max),
                (w.min, w.max),
                "min/max of {group:?}/{bucket}"
            );
            assert!(
                (g.sum - w.sum).abs() <= 1e-9 * w.sum.abs().max(1.0),
                "sum of {group:?}/{bucket}"
            );
            for agg in [
                Agg::P50,
                Agg::P95,
                Agg::Percentile(0),
                Agg::Percentile(10_000),
            ] {
                let (gv, wv) = (g.value(agg, &cfg).unwrap(), w.value(agg, &cfg).unwrap());
                assert!(
                    (gv - wv).abs() <= 2.0 * cfg.alpha() * wv.abs() + 1e-12,
                    "{agg} of {group:?}/{bucket}: store {gv}, expected {wv}"
                );
            }
        }
    }
    // Without a window everything lands in one bucket.
    let whole = store.compute(&[0, 1], &everything("cpu"), &cfg).unwrap();
    assert_eq!(whole.groups.len(), 1);
    assert!(whole.groups[&Vec::new()].contains_key(&WHOLE_RANGE));
    assert_eq!(total(&whole).count, 2_000);
    assert!(
        store
            .compute(&[0, 1], &everything("mem"), &cfg)
            .unwrap()
            .groups
            .is_empty()
    );
}

fn keeps_partitions_apart(store: &dyn Store) {
    let a = sample(5, 30);
    let b = sample(6, 70);
    store.apply(&[write(7, 1, &a), write(8, 1, &b)]).unwrap();
    assert_eq!(count_in(store, &[7], "cpu"), 30);
    assert_eq!(count_in(store, &[8], "cpu"), 70);
    assert_eq!(count_in(store, &[7, 8], "cpu"), 100);
    assert_eq!(count_in(store, &[9], "cpu"), 0);
    assert_eq!(count_in(store, &[], "cpu"), 0);
    // Grouped by tag, and with a tag filter, too.
    let mut q = everything("cpu");
    q.group_by = vec!["datacenter".into()];
    let grouped = store.compute(&[7], &q, &SketchConfig::default()).unwrap();
    assert_eq!(total(&grouped).count, 30);
    q.filters = vec![TagFilter {
        key: "datacenter".into(),
        patterns: vec!["*".into()],
    }];
    let filtered = store.compute(&[8], &q, &SketchConfig::default()).unwrap();
    assert_eq!(total(&filtered).count, 70);
}

/// Strings that would change a query if they were ever pasted into SQL.
pub const HOSTILE: [&str; 4] = [
    "x' OR 1=1--",
    "\"; DROP TABLE points; --",
    "read_csv('/etc/passwd')",
    "'; DROP TABLE rm_points; --",
];

fn hostile_strings_are_data(store: &dyn Store) {
    let cfg = SketchConfig::default();
    let mut rows = Vec::new();
    for (i, s) in HOSTILE.iter().enumerate() {
        rows.push(record("cpu", s, s, 1_700_000_000 + i as i64, i as f64));
    }
    rows.push(record("cpu", "plain", "plain", 1_700_000_100, 100.0));
    store.apply(&[write(0, 1, &rows)]).unwrap();
    for (i, s) in HOSTILE.iter().enumerate() {
        let mut q = everything("cpu");
        q.filters = vec![TagFilter {
            key: "host".into(),
            patterns: vec![s.to_string()],
        }];
        let got = total(&store.compute(&[0], &q, &cfg).unwrap());
        assert_eq!(
            (got.count, got.sum),
            (1, i as f64),
            "filter {s:?} must match only itself"
        );
        let mut q = everything("cpu");
        q.group_by = vec!["host".into()];
        let groups = store.compute(&[0], &q, &cfg).unwrap();
        assert!(
            groups.groups.contains_key(&vec![Some(s.to_string())]),
            "group {s:?}"
        );
    }
    let mut q = everything(HOSTILE[0]);
    q.metric = HOSTILE[0].into();
    assert!(store.compute(&[0], &q, &cfg).unwrap().groups.is_empty());
    assert_eq!(
        count_in(store, &[0], "cpu"),
        5,
        "no row was lost or dropped"
    );
}

fn export_import_round_trips(source: &dyn Store, target: &dyn Store) {
    let cfg = SketchConfig::default();
    let rows = sample(7, 500);
    source
        .apply(&[write(4, 9, &rows), write(5, 1, &rows[..10])])
        .unwrap();
    let mut snapshot = source.export_partition(4).unwrap();
    assert_eq!(snapshot.applied_index, 9);
    assert!(snapshot.meta.is_empty());
    snapshot.meta = b"term 3".to_vec();
    assert_eq!(snapshot.points.len(), 500);
    // The target already holds other data for partition 4: the import replaces it.
    target.apply(&[write(4, 30, &sample(8, 40))]).unwrap();
    target.import_partition(&snapshot).unwrap();
    assert_eq!(target.digest(4).unwrap(), source.digest(4).unwrap());
    assert_eq!(target.applied_index(4).unwrap(), 9);
    assert_eq!(target.snapshot_meta(4).unwrap(), b"term 3".to_vec());
    let q = everything("cpu");
    let (a, b) = (
        total(&source.compute(&[4], &q, &cfg).unwrap()),
        total(&target.compute(&[4], &q, &cfg).unwrap()),
    );
    assert_eq!((a.count, a.min, a.max), (b.count, b.min, b.max));
    // Writes after an import extend the imported series consistently on both sides.
    let more = sample(9, 20);
    source.apply(&[write(4, 10, &more)]).unwrap();
    target.apply(&[write(4, 10, &more)]).unwrap();
    assert_eq!(target.digest(4).unwrap(), source.digest(4).unwrap());
    let (mut a, b) = (
        source.export_partition(4).unwrap(),
        target.export_partition(4).unwrap(),
    );
    a.meta = b.meta.clone();
    assert_eq!(
        a, b,
        "replicas that apply the same entries hold identical partitions"
    );
}

fn drop_partition_forgets_everything(store: &dyn Store) {
    let rows = sample(10, 20);
    store
        .apply(&[write(6, 2, &rows), write(1, 1, &rows)])
        .unwrap();
    store.drop_partition(6).unwrap();
    assert_eq!(store.applied_index(6).unwrap(), 0);
    assert_eq!(count_in(store, &[6], "cpu"), 0);
    assert_eq!(count_in(store, &[1], "cpu"), 20);
    assert_eq!(store.partitions().unwrap(), vec![1]);
}

fn span(id: &str, start: u32, len: u32) -> IdSpan {
    IdSpan {
        id: BatchId::parse(id).expect("valid id"),
        start,
        len,
    }
}

fn with_ids<'a>(
    p: PartitionId,
    index: u64,
    records: &'a [Record],
    ids: &'a [IdSpan],
    at: i64,
) -> PartitionWrite<'a> {
    PartitionWrite {
        ids,
        proposed_at_micros: at,
        ..PartitionWrite::new(p, index, records)
    }
}

fn a_batch_id_is_stored_once(store: &dyn Store, replica: &dyn Store) {
    const T: i64 = 1_700_000_000_000_000;
    let rows = sample(11, 60);
    let first = [span("a", 0, 10), span("b", 10, 10)];
    // Records 20..30 carry no id.
    store
        .apply(&[with_ids(2, 1, &rows[..30], &first, T)])
        .unwrap();
    assert_eq!(count_in(store, &[2], "cpu"), 30);

    // "a" again (a retry) beside a new batch "c": only "c" is stored.
    let retry: Vec<Record> = rows[..10].iter().chain(&rows[30..40]).cloned().collect();
    let second = [span("a", 0, 10), span("c", 10, 10)];
    // In one call, two entries carrying "d": stored once. An id is per partition: "a" in
    // partition 3 is another batch.
    let third = [span("d", 0, 5)];
    let in_three = [span("a", 0, 5)];
    store
        .apply(&[
            with_ids(2, 2, &retry, &second, T + 1),
            with_ids(2, 3, &rows[40..45], &third, T + 2),
            with_ids(2, 4, &rows[40..45], &third, T + 3),
            with_ids(3, 1, &rows[45..50], &in_three, T + 3),
        ])
        .unwrap();
    assert_eq!(
        count_in(store, &[2], "cpu"),
        45,
        "a retried batch id must not be stored twice"
    );
    assert_eq!(count_in(store, &[3], "cpu"), 5);

    // A call that fails stores nothing and remembers none of its ids.
    let bad = [span("e", 0, 5), span("f", 3, 5)];
    let fresh = [span("e", 0, 5)];
    assert!(
        store
            .apply(&[
                with_ids(2, 5, &rows[50..55], &fresh, T + 4),
                with_ids(3, 2, &rows[50..55], &bad, T + 4),
            ])
            .is_err(),
        "overlapping spans are refused"
    );
    assert_eq!(store.applied_index(2).unwrap(), 4);
    store
        .apply(&[with_ids(2, 5, &rows[50..55], &fresh, T + 4)])
        .unwrap();
    assert_eq!(
        count_in(store, &[2], "cpu"),
        50,
        "an id of a failed call is not remembered"
    );

    // The ids travel in a snapshot: the replica recognises "b" as the source does.
    let snapshot = store.export_partition(2).unwrap();
    let mut remembered: Vec<&str> = snapshot.ids.iter().map(|r| r.id.as_str()).collect();
    remembered.sort_unstable();
    assert_eq!(remembered, ["a", "b", "c", "d", "e"]);
    replica.import_partition(&snapshot).unwrap();
    let again = [span("b", 0, 10)];
    for s in [store, replica] {
        s.apply(&[with_ids(2, 6, &rows[10..20], &again, T + 5)])
            .unwrap();
    }
    assert_eq!(count_in(replica, &[2], "cpu"), 50);
    assert_eq!(
        store.export_partition(2).unwrap(),
        replica.export_partition(2).unwrap()
    );

    // Past the window (by the entries' clock) an id is forgotten, on both replicas alike.
    let late = T + 5 + WINDOW_MICROS + 1;
    for s in [store, replica] {
        s.apply(&[with_ids(2, 7, &rows[..10], &first[..1], late)])
            .unwrap();
    }
    assert_eq!(count_in(store, &[2], "cpu"), 60);
    let (a, b) = (
        store.export_partition(2).unwrap(),
        replica.export_partition(2).unwrap(),
    );
    assert_eq!(a, b, "replicas decide alike");
    assert_eq!(a.ids.len(), 1, "only the new row of \"a\" is remembered");

    // Dropping a partition forgets its ids.
    store.drop_partition(2).unwrap();
    store
        .apply(&[with_ids(2, 1, &rows[..10], &first[..1], late)])
        .unwrap();
    assert_eq!(count_in(store, &[2], "cpu"), 10);
}

/// `last` and `first` with ties at equal timestamps (points of several series at one
/// second, duplicates of one series among them) and value bounds, alone and together,
/// against states built point by point.
fn last_first_and_value_bounds_are_exact(store: &dyn Store) {
    let cfg = SketchConfig::default();
    let mut rows = sample(13, 1_500);
    // Ten seconds shared by many points: every group's latest and earliest second holds
    // several, with different values, and some exact duplicates.
    let mut rng = SplitMix(14);
    for r in rows.iter_mut() {
        let second = 1_700_000_000
            + [0, 1, 2, 3, 7_196, 7_197, 7_198, 7_199, 3_600, 60][rng.below(10) as usize];
        let value = (rng.below(21) as f64 - 10.0) * 5.0;
        *r = Record::new(
            r.series.clone(),
            Timestamp::from_micros(second * 1_000_000),
            value,
        );
    }
    store
        .apply(&[write(0, 1, &rows[..700]), write(1, 1, &rows[700..])])
        .unwrap();
    let bounds = [
        ValueFilter::default(),
        ValueFilter {
            gt: Some(0.0),
            ..ValueFilter::default()
        },
        ValueFilter {
            ge: Some(-25.0),
            le: Some(25.0),
            ..ValueFilter::default()
        },
        ValueFilter {
            gt: Some(-10.0),
            ge: Some(-20.0),
            lt: Some(40.0),
            le: Some(45.0),
        },
        ValueFilter {
            gt: Some(30.0),
            lt: Some(-30.0),
            ..ValueFilter::default()
        },
    ];
    for values in bounds {
        for (group_by, window) in [(vec![], None), (vec!["host".to_string()], Some(3_600))] {
            let mut q = Query::new("cpu");
            q.aggs = vec![Agg::Last, Agg::First, Agg::Count, Agg::Max];
            q.values = values;
            q.group_by = group_by;
            q.window_micros = window.map(|w| w * 1_000_000);
            let got = store.compute(&[0, 1], &q, &cfg).unwrap();
            let mut want = PartialAggregate::default();
            for r in rows.iter().filter(|r| values.matches(r.value)) {
                let bucket = match q.window_micros {
                    Some(w) => r.timestamp.as_micros() / w * w,
                    None => WHOLE_RANGE,
                };
                want.state_mut(q.group_key(r.metric(), r.tags()), bucket)
                    .add_at(&cfg, r.timestamp.as_micros(), r.value, false);
            }
            assert_eq!(
                got.groups.keys().collect::<Vec<_>>(),
                want.groups.keys().collect::<Vec<_>>(),
                "groups of {q:?}"
            );
            for (group, buckets) in &want.groups {
                assert_eq!(
                    got.groups[group].keys().collect::<Vec<_>>(),
                    buckets.keys().collect::<Vec<_>>(),
                    "buckets of {group:?} in {q:?}"
                );
                for (bucket, w) in buckets {
                    let g = &got.groups[group][bucket];
                    assert_eq!(
                        (g.count, g.max, g.last, g.first),
                        (w.count, w.max, w.last, w.first),
                        "{group:?}/{bucket} of {q:?}"
                    );
                }
            }
        }
    }
    // Without `last` and `first` asked, states carry neither.
    let got = total(&store.compute(&[0, 1], &everything("cpu"), &cfg).unwrap());
    assert_eq!((got.last, got.first), (None, None));
}

fn one_query_covers_several_metrics(store: &dyn Store) {
    let cfg = SketchConfig::default();
    let mut rows = sample(12, 300);
    for (i, r) in rows.iter_mut().enumerate() {
        let metric = ["cpu", "mem", "disk"][i % 3];
        let series = Series::new(metric, r.tags().clone(), Some(metric.into()));
        *r = Record::new(series::intern(series), r.timestamp, r.value);
    }
    store
        .apply(&[write(0, 1, &rows[..150]), write(1, 1, &rows[150..])])
        .unwrap();
    let mut q = everything("cpu,mem");
    q.group_by = vec!["metric".into(), "datacenter".into()];
    let got = store.compute(&[0, 1], &q, &cfg).unwrap();
    let mut want = PartialAggregate::default();
    for r in rows.iter().filter(|r| r.metric() != "disk") {
        want.state_mut(q.group_key(r.metric(), r.tags()), WHOLE_RANGE)
            .add(&cfg, r.value, true);
    }
    assert_eq!(
        got.groups.keys().collect::<Vec<_>>(),
        want.groups.keys().collect::<Vec<_>>(),
        "groups by metric name, then tag"
    );
    for (group, buckets) in &want.groups {
        let (g, w) = (&got.groups[group][&WHOLE_RANGE], &buckets[&WHOLE_RANGE]);
        assert_eq!(
            (g.count, g.min, g.max),
            (w.count, w.min, w.max),
            "{group:?}"
        );
    }
    // Without group_by=metric, the metrics' points are aggregated together.
    let both = total(
        &store
            .compute(&[0, 1], &everything("cpu,mem"), &cfg)
            .unwrap(),
    );
    let cpu = total(&store.compute(&[0, 1], &everything("cpu"), &cfg).unwrap());
    let mem = total(&store.compute(&[0, 1], &everything("mem"), &cfg).unwrap());
    assert_eq!(both.count, cpu.count + mem.count);
    assert_eq!(both.max, cpu.max.max(mem.max));
}

/// A point as an export reports it: metric, tags, timestamp, value (as bits, to sort).
type Exported = (String, Tags, i64, u64);

/// Every point of `selection` in `partition`, read in pages of `limit` from `stores` in
/// turn (page `k` from `stores[k % len]`).
fn export_by_pages(
    stores: &[&dyn Store],
    partition: PartitionId,
    selection: &Selection,
    limit: usize,
) -> Vec<Exported> {
    let mut out = Vec::new();
    let mut after = None;
    for k in 0.. {
        let page = stores[k % stores.len()]
            .export_page(partition, selection, after, limit)
            .expect("export page");
        assert!(page.points() <= limit, "a page holds at most its limit");
        for s in &page.series {
            assert!(
                s.timestamps.windows(2).all(|w| w[0] <= w[1]),
                "timestamps ascend within a series"
            );
            for (t, v) in s.timestamps.iter().zip(&s.values) {
                out.push((s.metric.clone(), s.tags.clone(), *t, v.to_bits()));
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(k < 100_000, "paging must end");
    }
    out.sort();
    out
}

fn exports_in_pages_that_continue_on_another_replica(source: &dyn Store, replica: &dyn Store) {
    let mut rows = sample(21, 400);
    for (i, r) in rows.iter_mut().enumerate() {
        let metric = ["cpu", "mem"][i % 2];
        let series = Series::new(metric, r.tags().clone(), Some(metric.into()));
        *r = Record::new(series::intern(series), r.timestamp, r.value);
    }
    // Several points of one series at one timestamp, equal ones among them.
    let twin = rows[0].clone();
    for value in [twin.value, twin.value, -1.0, 1e9] {
        rows.push(Record::new(twin.series.clone(), twin.timestamp, value));
    }
    source
        .apply(&[write(3, 1, &rows[..300]), write(8, 1, &rows[300..350])])
        .unwrap();
    source.apply(&[write(3, 2, &rows[350..])]).unwrap();
    // The replica numbers its rows differently (other data came first), and holds the
    // partition by a snapshot.
    replica.apply(&[write(9, 1, &sample(22, 50))]).unwrap();
    replica
        .import_partition(&source.export_partition(3).unwrap())
        .unwrap();
    let snapshot = source.export_partition(3).unwrap();
    let series: std::collections::HashMap<u64, (String, Tags)> = snapshot
        .series
        .iter()
        .map(|s| (s.id, (s.metric.clone(), s.tags.clone())))
        .collect();
    let t = |secs: i64| Some(Timestamp::from_micros((1_700_000_000 + secs) * 1_000_000));
    let selections = [
        Selection::everything(),
        Selection {
            metrics: vec!["mem".into()],
            ..Selection::default()
        },
        Selection {
            filters: vec![TagFilter {
                key: "host".into(),
                patterns: vec!["web-1".into(), "web-3*".into()],
            }],
            from: t(1_000),
            to: t(5_000),
            ..Selection::default()
        },
        Selection {
            metrics: vec!["disk".into()],
            ..Selection::default()
        },
    ];
    for selection in &selections {
        let (from, to) = selection.time_range_micros();
        let mut want: Vec<Exported> = snapshot
            .points
            .iter()
            .filter(|p| p.timestamp_micros >= from && p.timestamp_micros < to)
            .filter_map(|p| {
                let (metric, tags) = &series[&p.series_id];
                selection.matches(metric, tags).then(|| {
                    (
                        metric.clone(),
                        tags.clone(),
                        p.timestamp_micros,
                        p.value.to_bits(),
                    )
                })
            })
            .collect();
        want.sort();
        for limit in [1, 2, 7, 64, 100_000] {
            // From one replica, and from both in turn.
            for stores in [&[source][..], &[source, replica], &[replica]] {
                let got = export_by_pages(stores, 3, selection, limit);
                assert_eq!(
                    got.len(),
                    want.len(),
                    "{selection:?} in pages of {limit}: every selected point once"
                );
                assert_eq!(got, want, "{selection:?} in pages of {limit}");
            }
        }
    }
    // Pages after a partition's content was replaced (a snapshot installed) hold the new
    // content, whatever the store read ahead before: here points later than any, so after
    // the cursor.
    let page = replica
        .export_page(3, &Selection::everything(), None, 5)
        .unwrap();
    let later = Timestamp::from_micros(1_900_000_000_000_000);
    let more: Vec<Record> = rows[..5]
        .iter()
        .map(|r| Record::new(r.series.clone(), later, 0.5))
        .collect();
    source.apply(&[write(3, 3, &more)]).unwrap();
    let fresh = source.export_partition(3).unwrap();
    replica.import_partition(&fresh).unwrap();
    let rest = replica
        .export_page(3, &Selection::everything(), page.next, 1_000_000)
        .unwrap();
    assert_eq!(page.points() + rest.points(), fresh.points.len());
    // Nothing of another partition, and nothing of a partition the store does not hold.
    let other = export_by_pages(&[source], 8, &Selection::everything(), 1_000);
    assert_eq!(other.len(), 50);
    assert!(export_by_pages(&[source], 77, &Selection::everything(), 10).is_empty());
}

/// `read_series`: every selected point of the partitions asked, once, each series whole in
/// (timestamp, value) order; nothing of the others; refused past its bound.
fn reads_whole_series_of_several_partitions(store: &dyn Store) {
    let mut rows = sample(31, 600);
    for (i, r) in rows.iter_mut().enumerate() {
        let metric = ["cpu", "mem"][i % 2];
        let series = Series::new(metric, r.tags().clone(), Some(metric.into()));
        *r = Record::new(series::intern(series), r.timestamp, r.value);
    }
    // Several points of one series at one timestamp.
    let twin = rows[0].clone();
    for value in [twin.value, -1.0, 1e9] {
        rows.push(Record::new(twin.series.clone(), twin.timestamp, value));
    }
    // Written out of time order, in three transactions over three partitions.
    store
        .apply(&[write(1, 1, &rows[..250]), write(2, 1, &rows[250..400])])
        .unwrap();
    store.apply(&[write(1, 2, &rows[400..500])]).unwrap();
    store.apply(&[write(3, 1, &rows[500..])]).unwrap();
    let t = |secs: i64| Some(Timestamp::from_micros((1_700_000_000 + secs) * 1_000_000));
    let selections = [
        Selection::everything(),
        Selection {
            metrics: vec!["mem".into()],
            ..Selection::default()
        },
        Selection {
            metrics: vec!["cpu".into()],
            filters: vec![TagFilter {
                key: "host".into(),
                patterns: vec!["web-1".into(), "web-3*".into()],
            }],
            from: t(1_000),
            to: t(5_000),
        },
        Selection {
            metrics: vec!["disk".into()],
            ..Selection::default()
        },
    ];
    let in_partition = |i: usize| match i {
        0..250 | 400..500 => 1,
        250..400 => 2,
        _ => 3,
    };
    for selection in &selections {
        for partitions in [&[1u32][..], &[1, 2], &[1, 2, 3], &[4]] {
            let (from, to) = selection.time_range_micros();
            let mut want: Vec<Exported> = rows
                .iter()
                .enumerate()
                .filter(|(i, _)| partitions.contains(&in_partition(*i)))
                .map(|(_, r)| r)
                .filter(|r| {
                    let ts = r.timestamp.as_micros();
                    ts >= from && ts < to && selection.matches(r.metric(), r.tags())
                })
                .map(|r| {
                    (
                        r.metric().to_string(),
                        r.tags().clone(),
                        r.timestamp.as_micros(),
                        r.value.to_bits(),
                    )
                })
                .collect();
            want.sort();
            let series = store
                .read_series(partitions, selection, 10_000)
                .expect("read series");
            let mut got = Vec::new();
            for s in &series {
                assert!(!s.timestamps.is_empty(), "no empty series");
                assert!(
                    s.timestamps
                        .windows(2)
                        .zip(s.values.windows(2))
                        .all(|(t, v)| t[0] < t[1] || (t[0] == t[1] && v[0] <= v[1])),
                    "a series in (timestamp, value) order"
                );
                for (t, v) in s.timestamps.iter().zip(&s.values) {
                    got.push((s.metric.clone(), s.tags.clone(), *t, v.to_bits()));
                }
            }
            got.sort();
            assert_eq!(got, want, "{selection:?} in {partitions:?}");
        }
    }
    let refused = store.read_series(&[1, 2, 3], &Selection::everything(), 100);
    assert!(
        matches!(refused, Err(Error::InvalidRequest(_))),
        "{refused:?}"
    );
}
