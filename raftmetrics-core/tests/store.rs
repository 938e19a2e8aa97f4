//! The Store conformance suite on both DuckDB flavours, and what only a file can show.

use std::sync::atomic::{AtomicU32, Ordering};

use raftmetrics_core::model::{Limits, validate_batch};
use raftmetrics_core::store::{DuckDbStore, PartitionWrite, Store, conformance};
use raftmetrics_core::{Point, Query, SketchConfig, Timestamp};

#[test]
fn conformance_in_memory() {
    conformance::run(&|| Box::new(DuckDbStore::open_in_memory().unwrap()));
}

/// The conformance suite on a new file per case, opened with `open`.
fn conformance_on_files(open: fn(std::path::PathBuf) -> raftmetrics_core::Result<DuckDbStore>) {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicU32::new(0);
    conformance::run(&|| {
        let path = dir
            .path()
            .join(format!("store-{}.duckdb", n.fetch_add(1, Ordering::SeqCst)));
        Box::new(open(path).unwrap())
    });
}

#[test]
fn conformance_file_backed() {
    conformance_on_files(DuckDbStore::open);
}

#[test]
fn conformance_file_behind_a_log() {
    conformance_on_files(DuckDbStore::open_behind_log);
}

fn records(n: usize) -> Vec<raftmetrics_core::Record> {
    let points = (0..n)
        .map(|i| {
            Point::new("cpu", i as f64)
                .at(Timestamp::from_micros(1_700_000_000_000_000 + i as i64))
                .tag("host", format!("h{}", i % 7))
        })
        .collect();
    validate_batch(points, Timestamp::now(), &Limits::default()).unwrap()
}

#[test]
fn reopening_a_file_keeps_data_series_and_applied_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.duckdb");
    let rows = records(1_000);
    let digest = {
        let store = DuckDbStore::open(&path).unwrap();
        store
            .apply(&[
                PartitionWrite::new(2, 41, &rows[..600]),
                PartitionWrite::new(5, 7, &rows[600..]),
            ])
            .unwrap();
        store.digest(2).unwrap()
    };
    let store = DuckDbStore::open(&path).unwrap();
    assert_eq!(store.applied_index(2).unwrap(), 41);
    assert_eq!(store.applied_index(5).unwrap(), 7);
    assert_eq!(store.partitions().unwrap(), vec![2, 5]);
    assert_eq!(store.digest(2).unwrap(), digest);
    // Replaying the last entry after a restart is a no-op...
    assert_eq!(
        store
            .apply(&[PartitionWrite::new(2, 41, &rows[..600])])
            .unwrap(),
        vec![false]
    );
    assert_eq!(store.digest(2).unwrap(), digest);
    // ...and the next one reuses the series the catalog reloaded (no duplicate series).
    store
        .apply(&[PartitionWrite::new(2, 42, &rows[..10])])
        .unwrap();
    let snapshot = store.export_partition(2).unwrap();
    let mut ids: Vec<u64> = snapshot.series.iter().map(|s| s.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 7, "seven hosts, seven series");
    let mut q = Query::new("cpu");
    q.group_by = vec!["host".into()];
    let got = store
        .compute(&[2, 5], &q, &SketchConfig::default())
        .unwrap();
    assert_eq!(got.groups.len(), 7);
    assert_eq!(got.count(), 1_010);
}

#[test]
fn appender_rows_roll_back_with_their_transaction() {
    // The store relies on DuckDB appenders taking part in the open transaction: rows and the
    // applied index commit together or not at all.
    let mut conn = duckdb::Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE t (v BIGINT)").unwrap();
    {
        let tx = conn.transaction().unwrap();
        let mut app = tx.appender("t").unwrap();
        for i in 0..1000i64 {
            app.append_row([i]).unwrap();
        }
        app.flush().unwrap();
        drop(app);
        tx.rollback().unwrap();
    }
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn batch_ids_survive_reopening_the_file() {
    use raftmetrics_core::{BatchId, Engine, EngineConfig};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.duckdb");
    let id = BatchId::parse("import-2024-01-20").unwrap();
    let batch = || -> Vec<Point> {
        (0..50)
            .map(|i| {
                Point::new("cpu", f64::from(i))
                    .at(Timestamp::from_micros(1_700_000_000_000_000 + i64::from(i)))
                    .partition_key(format!("k{}", i % 7))
            })
            .collect()
    };
    let count = |engine: &Engine| {
        let q = Query::from_params(&[("metric", "cpu"), ("agg", "count")]).unwrap();
        engine.query(&q).unwrap().get(raftmetrics_core::Agg::Count)
    };
    {
        let engine = Engine::open(&path, EngineConfig::default()).unwrap();
        engine.insert_with_id(&id, batch()).unwrap();
        engine.insert_with_id(&id, batch()).unwrap();
        assert_eq!(count(&engine), Some(50.0));
    }
    let engine = Engine::open(&path, EngineConfig::default()).unwrap();
    engine.insert_with_id(&id, batch()).unwrap();
    assert_eq!(count(&engine), Some(50.0), "the id is remembered on disk");
    engine.insert(batch()).unwrap();
    assert_eq!(count(&engine), Some(100.0), "a batch without an id is new");
}

/// The write-ahead log is folded into the file by the store's own thread once it passes
/// 16 MiB, not left to grow and not left to a commit on the write path; the data stays.
#[test]
fn the_write_ahead_log_is_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.duckdb");
    let wal = dir.path().join("node.duckdb.wal");
    let store = DuckDbStore::open(&path).unwrap();
    let batch = records(10_000);
    let mut grew_past = false;
    let mut index = 0;
    // About 25 bytes of log per point: 120 batches (30 MB) take it well past the threshold.
    for _ in 0..120 {
        index += 1;
        store
            .apply(&[PartitionWrite::new(0, index, &batch)])
            .unwrap();
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        grew_past |= size >= 16 * 1024 * 1024;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if size < 16 * 1024 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log is still {size} bytes"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        grew_past,
        "the log never reached the threshold: the test proves nothing"
    );
    assert_eq!(store.digest(0).unwrap().rows, 1_200_000);
    drop(store);
    let store = DuckDbStore::open(&path).unwrap();
    assert_eq!(store.applied_index(0).unwrap(), 120);
    assert_eq!(store.digest(0).unwrap().rows, 1_200_000);
}

/// Points of two metrics over hosts `h0..h6`, values 0, 1, 2, ...
fn two_metrics(n: usize, first: i64) -> Vec<raftmetrics_core::Record> {
    let points = (0..n)
        .map(|i| {
            let metric = if i % 3 == 0 { "mem" } else { "cpu" };
            Point::new(metric, i as f64)
                .at(Timestamp::from_micros(first + i as i64))
                .tag("host", format!("h{}", i % 7))
        })
        .collect();
    validate_batch(points, Timestamp::now(), &Limits::default()).unwrap()
}

/// Count and sum of `metric` in `partitions`, overall and per host (a query read by a
/// filter on the metric), and of host h3 alone (read by a join on its series).
fn answers(store: &DuckDbStore, partitions: &[u32], metric: &str) -> Vec<(String, u64, f64)> {
    let cfg = SketchConfig::default();
    let mut out = Vec::new();
    for params in [
        vec![("metric", metric)],
        vec![("metric", metric), ("group_by", "host")],
        vec![("metric", metric), ("hosts", "h3")],
    ] {
        let mut params = params;
        params.push(("agg", "count,sum"));
        let q = Query::from_params(&params).unwrap();
        let partial = store.compute(partitions, &q, &cfg).unwrap();
        for (group, buckets) in &partial.groups {
            for state in buckets.values() {
                out.push((format!("{params:?} {group:?}"), state.count, state.sum));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_file_from_before_metric_numbers_gets_them_on_opening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.duckdb");
    let old = two_metrics(3_000, 1_700_000_000_000_000);
    let new = two_metrics(900, 1_700_000_100_000_000);
    // What a store that always had metric numbers answers.
    let write_old = |store: &DuckDbStore| {
        store
            .apply(&[
                PartitionWrite::new(1, 1, &old[..2_000]),
                PartitionWrite::new(4, 1, &old[2_000..]),
            ])
            .unwrap();
    };
    let want = {
        let store = DuckDbStore::open_in_memory().unwrap();
        write_old(&store);
        store.apply(&[PartitionWrite::new(1, 2, &new)]).unwrap();
        (
            answers(&store, &[1], "cpu"),
            answers(&store, &[1, 4], "mem"),
        )
    };
    // Overall, seven hosts and h3 alone, for each.
    assert_eq!((want.0.len(), want.1.len()), (9, 9));
    write_old(&DuckDbStore::open(&path).unwrap());
    // The layout files had before: no metric_id in either table.
    {
        let conn = duckdb::Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE rm_points DROP COLUMN metric_id;
             ALTER TABLE rm_series DROP COLUMN metric_id;
             CHECKPOINT;",
        )
        .unwrap();
    }
    {
        let store = DuckDbStore::open(&path).unwrap();
        store.apply(&[PartitionWrite::new(1, 2, &new)]).unwrap();
        assert_eq!(answers(&store, &[1], "cpu"), want.0);
        assert_eq!(answers(&store, &[1, 4], "mem"), want.1);
    }
    // Numbered once: opening again changes nothing.
    let store = DuckDbStore::open(&path).unwrap();
    assert_eq!(answers(&store, &[1], "cpu"), want.0);
    assert_eq!(answers(&store, &[1, 4], "mem"), want.1);
}

/// What a crash leaves of a store behind a log: the file as its last checkpoint wrote it.
/// DuckDB writes such a file only in checkpoints, so a copy taken while the store is open
/// and no checkpoint runs is that image.
fn crash_image(path: &std::path::Path, n: u32) -> DuckDbStore {
    let copy = path.with_file_name(format!("crash-{n}.duckdb"));
    std::fs::copy(path, &copy).unwrap();
    assert!(
        !path.with_extension("duckdb.wal").exists(),
        "a store behind a log writes no write-ahead log"
    );
    DuckDbStore::open_behind_log(&copy).unwrap()
}

/// A store behind a log reports as durable exactly what a crash keeps: each checkpoint
/// saves every applied index committed before it; writes after it are gone from a crash
/// image, and the durable index tells the log in front to keep them. An import and a drop
/// are durable when they return; a clean close saves everything.
#[test]
fn a_store_behind_a_log_reports_what_a_crash_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.duckdb");
    let rows = records(3_000);
    let store = DuckDbStore::open_behind_log(&path).unwrap();
    for index in 1..=10 {
        let part = &rows[(index as usize - 1) * 100..index as usize * 100];
        store
            .apply(&[
                PartitionWrite::new(1, index, part),
                PartitionWrite::new(2, index + 100, part),
            ])
            .unwrap();
    }
    assert_eq!(store.applied_index(1).unwrap(), 10);
    assert_eq!(
        store.durable_index(1).unwrap(),
        0,
        "nothing checkpointed yet"
    );
    let image = crash_image(&path, 0);
    assert_eq!(image.applied_index(1).unwrap(), 0);
    assert!(image.partitions().unwrap().is_empty());
    drop(image);

    store.checkpoint().unwrap();
    assert_eq!(store.durable_index(1).unwrap(), 10);
    assert_eq!(store.durable_index(2).unwrap(), 110);
    let saved = store.digest(1).unwrap();
    for index in 11..=15 {
        let part = &rows[(index as usize - 1) * 100..index as usize * 100];
        store.apply(&[PartitionWrite::new(1, index, part)]).unwrap();
    }
    assert_eq!(store.applied_index(1).unwrap(), 15);
    assert_eq!(store.durable_index(1).unwrap(), 10, "11..=15 are not saved");
    let image = crash_image(&path, 1);
    assert_eq!(image.applied_index(1).unwrap(), 10);
    assert_eq!(image.digest(1).unwrap(), saved);
    // Replaying the log from the durable index rebuilds what the crash took.
    for index in 11..=15 {
        let part = &rows[(index as usize - 1) * 100..index as usize * 100];
        image.apply(&[PartitionWrite::new(1, index, part)]).unwrap();
    }
    assert_eq!(image.digest(1).unwrap(), store.digest(1).unwrap());
    drop(image);

    // An import and a drop are saved before they return.
    let mut snapshot = store.export_partition(1).unwrap();
    snapshot.partition = 3;
    snapshot.applied_index = 77;
    snapshot.series.clear();
    snapshot.points.clear();
    store.import_partition(&snapshot).unwrap();
    store.drop_partition(2).unwrap();
    assert_eq!(store.durable_index(3).unwrap(), 77);
    assert_eq!(store.durable_index(2).unwrap(), 0);
    assert_eq!(
        store.durable_index(1).unwrap(),
        15,
        "the import saved 11..=15 too"
    );
    let image = crash_image(&path, 2);
    assert_eq!(image.partitions().unwrap(), vec![1, 3]);
    assert_eq!(image.applied_index(3).unwrap(), 77);
    assert_eq!(image.applied_index(1).unwrap(), 15);
    drop(image);

    // A clean close saves everything.
    store
        .apply(&[PartitionWrite::new(1, 16, &rows[2_900..])])
        .unwrap();
    let digest = store.digest(1).unwrap();
    drop(store);
    let store = DuckDbStore::open_behind_log(&path).unwrap();
    assert_eq!(store.applied_index(1).unwrap(), 16);
    assert_eq!(store.durable_index(1).unwrap(), 16);
    assert_eq!(store.digest(1).unwrap(), digest);

    // Abandoning closes as a crash would: what no checkpoint saved is gone.
    store
        .apply(&[PartitionWrite::new(1, 17, &rows[..100])])
        .unwrap();
    store.abandon();
    let store = DuckDbStore::open_behind_log(&path).unwrap();
    assert_eq!(store.applied_index(1).unwrap(), 16);
    assert_eq!(store.digest(1).unwrap(), digest);
}

/// A store behind a log whose checkpointing thread has not saved 2,560,000 rows saves in
/// the write that passes them (the thread polls every 100 ms and cannot have run between
/// the commit and the check here).
#[test]
fn a_store_behind_a_log_saves_in_its_writer_past_the_backstop() {
    let dir = tempfile::tempdir().unwrap();
    let store = DuckDbStore::open_behind_log(dir.path().join("replica.duckdb")).unwrap();
    let rows = records(100_000);
    let small: Vec<_> = (1..=3)
        .map(|p| PartitionWrite::new(p, 1, &rows[..10]))
        .collect();
    store.apply(&small).unwrap();
    assert_eq!(
        store.durable_index(1).unwrap(),
        0,
        "30 rows wait for the thread"
    );
    let large: Vec<_> = (1..=26).map(|p| PartitionWrite::new(p, 2, &rows)).collect();
    store.apply(&large).unwrap();
    for p in 1..=26 {
        assert_eq!(store.durable_index(p).unwrap(), 2, "partition {p}");
    }
}

/// A file written with DuckDB's log can be opened behind a log: what its write-ahead log
/// held is replayed and saved on opening.
#[test]
fn a_file_with_a_write_ahead_log_opens_behind_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.duckdb");
    let rows = records(500);
    let copy = dir.path().join("copy.duckdb");
    {
        // A crash image of a store with DuckDB's log: the file and its log, copied open.
        let store = DuckDbStore::open(&path).unwrap();
        store.apply(&[PartitionWrite::new(4, 9, &rows)]).unwrap();
        std::fs::copy(&path, &copy).unwrap();
        let wal = std::fs::copy(
            path.with_extension("duckdb.wal"),
            copy.with_extension("duckdb.wal"),
        );
        assert!(wal.unwrap() > 0, "the write is in the write-ahead log");
    }
    let path = copy;
    let store = DuckDbStore::open_behind_log(&path).unwrap();
    assert!(
        !path.with_extension("duckdb.wal").exists(),
        "replayed and saved"
    );
    assert_eq!(store.applied_index(4).unwrap(), 9);
    assert_eq!(store.durable_index(4).unwrap(), 9);
    assert_eq!(store.digest(4).unwrap().rows, 500);
    let image = crash_image(&path, 0);
    assert_eq!(image.digest(4).unwrap().rows, 500);
}
