//! A writer that records every batch it sends and whether it was acknowledged, and the set
//! checker that holds the cluster to it afterwards: every acknowledged batch stored exactly
//! once, no batch stored in part, nothing stored that was not sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use raftmetrics_core::api::InsertResponse;
use raftmetrics_core::{Point, Timestamp, codec};
use tokio::task::JoinHandle;

use super::{DevCluster, TOKEN_B};

/// Points per batch; every point of every batch has its own value.
pub const BATCH: u64 = 100;
/// Partition keys the batches rotate through (batch `n` uses `key-{n % KEYS}`).
pub const KEYS: u64 = 16;
const T0: i64 = 1_705_708_800_000_000; // 2024-01-20T00:00:00Z

/// What became of one batch.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub n: u64,
    /// The worker that acknowledged it; `None` when the write failed or its outcome is
    /// unknown.
    pub acked_by: Option<String>,
    pub at: Instant,
}

/// Batch `n`: values `n*BATCH .. (n+1)*BATCH`, tagged `batch=n`, in partition `key-{n%KEYS}`.
pub fn batch(metric: &str, n: u64) -> Vec<Point> {
    (0..BATCH)
        .map(|i| {
            let v = n * BATCH + i;
            Point::new(metric, v as f64)
                .at(Timestamp::from_micros(T0 + v as i64))
                .tag("batch", n.to_string())
                .partition_key(format!("key-{}", n % KEYS))
        })
        .collect()
}

/// One writer sending batches to the control node one after another, `pause` apart.
pub struct Writer {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<Outcome>>,
    /// Live counts of points sent (the batch in flight included) and acknowledged.
    pub progress: Arc<Progress>,
}

/// What a [`Writer`] has done so far, readable while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Points of every batch sent or being sent.
    pub sent: std::sync::atomic::AtomicU64,
    /// Points of every acknowledged batch.
    pub acked: std::sync::atomic::AtomicU64,
}

impl Progress {
    /// (acknowledged, sent) now.
    pub fn read(&self) -> (u64, u64) {
        (
            self.acked.load(Ordering::SeqCst),
            self.sent.load(Ordering::SeqCst),
        )
    }
}

impl Writer {
    pub fn start(c: Arc<DevCluster>, metric: &'static str, pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let task = {
            let stop = Arc::clone(&stop);
            let progress = Arc::clone(&progress);
            tokio::spawn(async move {
                let mut log = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    progress.sent.fetch_add(BATCH, Ordering::SeqCst);
                    let acked_by = send(&c, metric, n).await;
                    if acked_by.is_some() {
                        progress.acked.fetch_add(BATCH, Ordering::SeqCst);
                    }
                    if acked_by.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    log.push(Outcome {
                        n,
                        acked_by,
                        at: Instant::now(),
                    });
                    n += 1;
                    tokio::time::sleep(pause).await;
                }
                log
            })
        };
        Writer {
            stop,
            task,
            progress,
        }
    }

    /// Stops after the batch in flight and returns every outcome.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer task")
    }
}

async fn send(c: &DevCluster, metric: &str, n: u64) -> Option<String> {
    let sent = c
        .post_bincode(
            &c.url("/insert"),
            TOKEN_B,
            &batch(metric, n),
            Duration::from_secs(20),
        )
        .await
        .ok()?;
    match sent.status().as_u16() {
        200 => {
            let ack: InsertResponse =
                codec::decode(&sent.bytes().await.ok()?).expect("insert answer");
            assert_eq!(ack.points, BATCH);
            Some(ack.worker_node.unwrap_or_default())
        }
        429 => panic!("rate limited: lower the write rate of this test"),
        _ => None,
    }
}

/// How long after `since` the first batch was acknowledged (`None`: none was).
pub fn resumed_after(log: &[Outcome], since: Instant) -> Option<Duration> {
    log.iter()
        .find(|o| o.acked_by.is_some() && o.at > since)
        .map(|o| o.at - since)
}

/// The set checker: reads every batch of `metric` back (strong reads, through the leaders)
/// and panics unless each acknowledged batch is stored exactly once, each failed batch is
/// absent or whole, and no batch was stored that the log does not know. Returns the number
/// of batches stored.
pub async fn check(c: &DevCluster, metric: &str, log: &[Outcome]) -> usize {
    let url = c.url(&format!(
        "/aggregate?metric={metric}&agg=count,sum&group_by=batch&limit=100000&consistency=strong"
    ));
    let (s, doc) = c.get_json(&url).await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(doc["is_partial"], false, "{doc}");
    let stored: HashMap<u64, (u64, f64)> = doc["by_batch"]
        .as_object()
        .map(|groups| {
            groups
                .iter()
                .map(|(k, v)| {
                    (
                        k.parse().expect("batch tag"),
                        (v["count"].as_u64().unwrap(), v["sum"].as_f64().unwrap()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let sent: HashMap<u64, &Outcome> = log.iter().map(|o| (o.n, o)).collect();
    for n in stored.keys() {
        assert!(
            sent.contains_key(n),
            "batch {n} is stored but was never sent"
        );
    }
    for o in log {
        let base = o.n * BATCH;
        let want_sum: f64 = (base..base + BATCH).map(|v| v as f64).sum();
        match (&o.acked_by, stored.get(&o.n)) {
            (Some(_), Some(&(count, sum))) => {
                assert_eq!(count, BATCH, "batch {} stored {count} of its points", o.n);
                assert_eq!(sum, want_sum, "batch {}", o.n);
            }
            (Some(_), None) => panic!("acknowledged batch {} is missing", o.n),
            (None, Some(&(count, _))) => {
                assert_eq!(count, BATCH, "failed batch {} stored in part", o.n)
            }
            (None, None) => {}
        }
    }
    stored.len()
}

/// The `aggregations` of `agg` over `metric` through the control node with strong reads. An
/// answer flagged partial (a leader just changed) is asked again, for up to 15 s.
pub async fn strong_aggregations(c: &DevCluster, metric: &str, agg: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (s, doc) = c
            .get_json(&c.url(&format!(
                "/aggregate?metric={metric}&agg={agg}&consistency=strong"
            )))
            .await;
        assert_eq!(s, 200, "{doc}");
        if doc["is_partial"] == false {
            return doc["aggregations"].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still partial: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The stored points of `metric`, counted with [`strong_aggregations`].
pub async fn strong_count(c: &DevCluster, metric: &str) -> u64 {
    strong_aggregations(c, metric, "count").await["count"]
        .as_u64()
        .unwrap()
}

/// Waits until every worker's `/compute` (at `compute_urls`, one per worker, each holding
/// every partition) answers the same count and sum of `metric`, and returns the count.
async fn replicas_agree_at(c: &DevCluster, metric: &str, compute_urls: &[String]) -> u64 {
    let start = Instant::now();
    loop {
        let mut answers = Vec::new();
        for url in compute_urls {
            let (s, doc) = c
                .post_json(
                    url,
                    &serde_json::json!({"metric": metric, "aggregations": ["count", "sum"]}),
                )
                .await;
            assert_eq!(s, 200, "{doc}");
            answers.push((
                doc["count"].as_u64().unwrap(),
                doc["results"]["sum"].clone(),
            ));
        }
        if answers.iter().all(|a| *a == answers[0]) {
            return answers[0].0;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "replicas disagree: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The set checker ([`check`]), then every replica against the others and against the
/// strong count: each worker's `/compute` (at `compute_urls`; each holds every partition)
/// must answer the same count and sum as the cluster. Returns the batches stored.
pub async fn check_replicated_at(
    c: &DevCluster,
    metric: &str,
    log: &[Outcome],
    compute_urls: &[String],
) -> usize {
    let stored = check(c, metric, log).await;
    assert_eq!(
        replicas_agree_at(c, metric, compute_urls).await,
        strong_count(c, metric).await
    );
    stored
}

/// [`check_replicated_at`] on the workers of a `dev` cluster.
pub async fn check_replicated(c: &DevCluster, metric: &str, log: &[Outcome]) -> usize {
    let urls: Vec<String> = (1..=c.workers)
        .map(|id| c.worker_url(id, "/compute"))
        .collect();
    check_replicated_at(c, metric, log, &urls).await
}
