//! The elastic cluster on real processes: a worker joins under load and gets its share, a
//! worker is drained, a dead worker's replicas are re-created elsewhere, and a partition of
//! one replica moves; every time the set checker proves each acknowledged batch stored
//! exactly once, and every strong count asked during the moves was complete or flagged
//! partial, never short of what was acknowledged nor above what was sent.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::batches::{self, Progress, Writer};
use common::{DevCluster, TOKEN, TOKEN_B, TOKEN_C};
use serde_json::Value;

const SECRET: &str = "elastic-test-cluster-secret-0123456789";

/// A worker started by hand, as an operator would, killed when dropped.
struct HandWorker(Child);

impl Drop for HandWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts worker `id` by hand on the ports `dev` would give it, pointed at the cluster's
/// control node with its secret and tokens.
fn start_worker(c: &DevCluster, id: u16) -> HandWorker {
    let port = c.port + id;
    let dir = c.dir.path().join(format!("hand-worker-{id}"));
    let child = Command::new(env!("CARGO_BIN_EXE_raftmetrics-server"))
        .args([
            "worker".to_string(),
            format!("--node-id={id}"),
            format!("--port={port}"),
            format!("--internal-port={}", port + 1000),
            format!("--data-dir={}", dir.display()),
            "--bind-host=127.0.0.1".into(),
            "--advertise-host=127.0.0.1".into(),
        ])
        .env_clear()
        .env("CONTROL_HOST", format!("127.0.0.1:{}", c.port + 1000))
        .env("CLUSTER_SECRET", SECRET)
        .env("AUTH_TOKENS", format!("{TOKEN},{TOKEN_B},{TOKEN_C}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a worker");
    HandWorker(child)
}

/// A `dev` cluster whose secret is known (so a worker can be started by hand) and whose
/// rate limit the test's writers stay under, with `extra` flags.
async fn cluster(workers: u16, rf: u32, partitions: u32, extra: &[&str]) -> Arc<DevCluster> {
    let mut args = vec![
        "--cluster-secret",
        SECRET,
        "--rate-limit-per-minute",
        "100000",
    ];
    args.extend_from_slice(extra);
    Arc::new(DevCluster::start(workers, rf, partitions, &args).await)
}

async fn admin(c: &DevCluster) -> Value {
    let (s, doc) = c.get_json(&c.url("/admin/workers")).await;
    assert_eq!(s, 200, "{doc}");
    doc
}

fn worker(doc: &Value, id: u64) -> &Value {
    doc["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .unwrap_or_else(|| panic!("worker {id} in {doc}"))
}

/// Waits until `done(doc)` holds for `GET /admin/workers`, for up to `limit`.
async fn wait_admin(
    c: &DevCluster,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let doc = admin(c).await;
        if done(&doc) {
            eprintln!("{what}: after {:.1} s", start.elapsed().as_secs_f64());
            return doc;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}: {doc:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Active workers hold `per ± 1` replicas and lead within one of even; nothing moves.
fn balanced(doc: &Value, workers: &[u64], partitions: u64, replicas_each: u64) -> bool {
    if !doc["moves"].as_array().is_some_and(Vec::is_empty) {
        return false;
    }
    let even_leaders = partitions / workers.len() as u64;
    workers.iter().all(|id| {
        let w = worker(doc, *id);
        let r = w["replicas"].as_u64().unwrap_or(0);
        let l = w["leaders"].as_u64().unwrap_or(0);
        w["state"] == "active"
            && r + 1 >= replicas_each
            && r <= replicas_each + 1
            && l + 1 >= even_leaders
            && l <= even_leaders + 1
    })
}

/// Asks strong counts until stopped, and checks each complete one against what the writer
/// had acknowledged before it was asked and sent after it was answered.
struct CountWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl CountWatch {
    fn start(c: Arc<DevCluster>, metric: &'static str, progress: Arc<Progress>) -> CountWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut complete, mut partial) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let (acked_before, _) = progress.read();
                    let url = c.url(&format!(
                        "/aggregate?metric={metric}&agg=count&consistency=strong"
                    ));
                    let (s, doc) = c.get_json(&url).await;
                    let (_, sent_after) = progress.read();
                    if s == 200 && doc["is_partial"] == false {
                        let count = doc["aggregations"]["count"].as_u64().unwrap_or(0);
                        assert!(
                            count >= acked_before,
                            "a complete strong count {count} is short of the {acked_before} \
                             points acknowledged before it: {doc}"
                        );
                        assert!(
                            count <= sent_after,
                            "a strong count {count} is above the {sent_after} points sent"
                        );
                        complete += 1;
                    } else {
                        partial += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                (complete, partial)
            })
        };
        CountWatch { stop, task }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("count watcher")
    }
}

/// Every replica holds all its partition's points: the workers' own counts add up to the
/// replication factor times the cluster's count.
async fn replicas_complete(c: &DevCluster, workers: &[u16], metric: &str, rf: u64) {
    let total = batches::strong_count(c, metric).await;
    let start = Instant::now();
    loop {
        let mut sum = 0;
        for id in workers {
            let (s, doc) = c
                .post_json(
                    &c.worker_url(*id, "/compute"),
                    &serde_json::json!({"metric": metric, "aggregations": ["count"]}),
                )
                .await;
            assert_eq!(s, 200, "{doc}");
            sum += doc["count"].as_u64().unwrap();
        }
        if sum == rf * total {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "replicas hold {sum} points, want {rf} x {total}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn placement(doc: &Value) -> Vec<BTreeSet<u64>> {
    doc["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_u64().unwrap())
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joins_under_load_then_one_is_drained() {
    let c = cluster(3, 3, 16, &["--max-moves", "2"]).await;
    let metric = "elastic_join";
    let writer = Writer::start(Arc::clone(&c), metric, Duration::from_millis(20));
    let watch = CountWatch::start(Arc::clone(&c), metric, Arc::clone(&writer.progress));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Scale out: a fourth worker started by hand joins and gets its share, 12 ± 1 replicas
    // each, leaders within one of even.
    let _w4 = start_worker(&c, 4);
    let doc = wait_admin(
        &c,
        "rebalanced onto worker 4",
        Duration::from_secs(180),
        |d| {
            d["workers"].as_array().is_some_and(|w| w.len() == 4)
                && balanced(d, &[1, 2, 3, 4], 16, 12)
        },
    )
    .await;
    assert!(doc["epoch"].as_u64().unwrap() > 1, "{doc}");
    for replicas in placement(&doc) {
        assert_eq!(
            replicas.len(),
            3,
            "every partition keeps 3 distinct voters: {doc}"
        );
    }
    let (s, health) = c.get_json(&c.url("/health")).await;
    assert_eq!(s, 200);
    assert_eq!(health["moves_in_flight"], 0, "{health}");
    let text = c.metrics_text().await;
    assert!(
        text.contains("raftmetrics_moves_total{result=\"finished\"}"),
        "{text}"
    );
    assert!(
        text.contains("raftmetrics_worker_replicas{worker=\"4\"}"),
        "{text}"
    );

    // Drain worker 1 (a leader of some partitions) while writes go on: it ends with no
    // replicas, every partition keeps 3.
    let leads = worker(&admin(&c).await, 1)["leaders"].as_u64().unwrap();
    assert!(leads > 0, "worker 1 leads partitions before its drain");
    let (s, doc) = c
        .post_json(&c.url("/admin/workers/1/drain"), &Value::Null)
        .await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(doc["state"], "draining", "{doc}");
    let doc = wait_admin(&c, "worker 1 drained", Duration::from_secs(180), |d| {
        worker(d, 1)["state"] == "drained" && d["moves"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert_eq!(worker(&doc, 1)["replicas"], 0, "{doc}");
    for replicas in placement(&doc) {
        assert_eq!(replicas.len(), 3, "{doc}");
        assert!(!replicas.contains(&1), "{doc}");
    }
    // Draining the next one would leave 2 workers for 3 replicas: refused, nothing changes.
    let (s, doc) = c
        .post_json(&c.url("/admin/workers/2/drain"), &Value::Null)
        .await;
    assert_eq!(s, 400, "{doc}");
    assert_eq!(doc["code"], "INVALID_REQUEST");
    assert_eq!(worker(&admin(&c).await, 2)["state"], "active");

    let log = writer.stop().await;
    let (complete, partial) = watch.stop().await;
    let stored = batches::check(&c, metric, &log).await;
    eprintln!(
        "{stored} batches stored of {} sent; strong counts during the moves: {complete} \
         complete, {partial} partial",
        log.len()
    );
    assert!(complete > 0);
    assert!(log.iter().filter(|o| o.acked_by.is_some()).count() as f64 > 0.9 * log.len() as f64);
    replicas_complete(&c, &[1, 2, 3, 4], metric, 3).await;

    // The drained worker is forgotten.
    let resp = c
        .http
        .delete(c.url("/admin/workers/1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc = admin(&c).await;
    assert!(
        doc["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["id"] != 1),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_replicas_are_recreated_so_a_second_loss_keeps_the_majority() {
    let c = cluster(4, 3, 16, &["--dead-worker-timeout", "4s"]).await;
    let metric = "elastic_replace";
    let before = admin(&c).await;
    let original = placement(&before);
    // Partitions on both workers 1 and 2: without re-replication, losing both leaves them
    // one replica of three.
    let threatened: Vec<usize> = original
        .iter()
        .enumerate()
        .filter(|(_, r)| r.contains(&1) && r.contains(&2))
        .map(|(p, _)| p)
        .collect();
    assert!(!threatened.is_empty(), "{before}");
    eprintln!("partitions that would lose their majority: {threatened:?}");
    let writer = Writer::start(Arc::clone(&c), metric, Duration::from_millis(20));
    let watch = CountWatch::start(Arc::clone(&c), metric, Arc::clone(&writer.progress));
    tokio::time::sleep(Duration::from_secs(1)).await;

    c.kill_worker(1);
    let doc = wait_admin(&c, "worker 1 replaced", Duration::from_secs(180), |d| {
        worker(d, 1)["state"] == "dead"
            && worker(d, 1)["replicas"] == 0
            && d["moves"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    for replicas in placement(&doc) {
        assert_eq!(replicas.len(), 3, "{doc}");
        assert!(!replicas.contains(&1), "{doc}");
    }
    c.wait_partitions_led(16).await;

    // A second original worker: every partition, the threatened ones included, still has
    // two live replicas of three, so writes and complete answers go on.
    c.kill_worker(2);
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (s, doc) = c
        .get_json(&c.url(&format!(
            "/aggregate?metric={metric}&agg=count&consistency=strong"
        )))
        .await;
    assert_eq!(s, 200, "{doc}");
    let log = writer.stop().await;
    let resumed = batches::resumed_after(&log, killed);
    assert!(
        resumed.is_some(),
        "no write acknowledged after the second kill"
    );
    let (complete, partial) = watch.stop().await;
    let stored = batches::check(&c, metric, &log).await;
    eprintln!("{stored} batches stored; strong counts: {complete} complete, {partial} partial");
    // Each threatened partition takes a write and answers completely.
    let mut by_partition: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..400 {
        let point =
            raftmetrics_core::Point::new("elastic_probe", 1.0).partition_key(format!("probe-{i}"));
        let resp = c
            .post_bincode(&c.url("/insert"), TOKEN, &[point], Duration::from_secs(20))
            .await
            .expect("probe insert");
        assert_eq!(resp.status(), 200, "probe {i} after two workers were lost");
        let ack: raftmetrics_core::api::InsertResponse =
            raftmetrics_core::codec::decode(&resp.bytes().await.unwrap()).unwrap();
        *by_partition
            .entry(u64::from(ack.partition.unwrap()))
            .or_default() += 1;
        if threatened
            .iter()
            .all(|p| by_partition.contains_key(&(*p as u64)))
        {
            break;
        }
    }
    for p in &threatened {
        assert!(
            by_partition.contains_key(&(*p as u64)),
            "no write reached partition {p}"
        );
    }
    let probes: u64 = by_partition.values().sum();
    assert_eq!(batches::strong_count(&c, "elastic_probe").await, probes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_of_one_replica_moves_with_its_data() {
    let c = cluster(2, 1, 8, &[]).await;
    let metric = "elastic_rf1";
    let writer = Writer::start(Arc::clone(&c), metric, Duration::from_millis(20));
    let watch = CountWatch::start(Arc::clone(&c), metric, Arc::clone(&writer.progress));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _w3 = start_worker(&c, 3);
    let doc = wait_admin(
        &c,
        "rebalanced onto worker 3",
        Duration::from_secs(120),
        |d| {
            d["workers"].as_array().is_some_and(|w| w.len() == 3)
                && d["moves"].as_array().is_some_and(Vec::is_empty)
                && [1, 2, 3].iter().all(|id| {
                    let r = worker(d, *id)["replicas"].as_u64().unwrap_or(0);
                    (2..=3).contains(&r)
                })
        },
    )
    .await;
    for replicas in placement(&doc) {
        assert_eq!(replicas.len(), 1, "{doc}");
    }
    let log = writer.stop().await;
    let (complete, partial) = watch.stop().await;
    let stored = batches::check(&c, metric, &log).await;
    eprintln!("{stored} batches stored; strong counts: {complete} complete, {partial} partial");
    replicas_complete(&c, &[1, 2, 3], metric, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_interrupted_by_kills_finish_or_roll_back() {
    let c = cluster(3, 3, 16, &["--dead-worker-timeout", "4s"]).await;
    let metric = "elastic_interrupted";
    let writer = Writer::start(Arc::clone(&c), metric, Duration::from_millis(20));
    let mut w4 = Some(start_worker(&c, 4));
    // Moves in flight: kill -9 the control node, start it again.
    wait_admin(&c, "moves in flight", Duration::from_secs(60), |d| {
        d["moves"].as_array().is_some_and(|m| !m.is_empty())
    })
    .await;
    c.restart("control", 1, Duration::from_millis(500)).await;
    // Then the target of the moves, worker 4, while moves are again in flight: it is
    // declared dead, its moves finish or roll back.
    wait_admin(
        &c,
        "moves in flight after the restart",
        Duration::from_secs(60),
        |d| d["moves"].as_array().is_some_and(|m| !m.is_empty()),
    )
    .await;
    drop(w4.take());
    let doc = wait_admin(
        &c,
        "worker 4 dead, no move left",
        Duration::from_secs(90),
        |d| worker(d, 4)["state"] == "dead" && d["moves"].as_array().is_some_and(Vec::is_empty),
    )
    .await;
    assert!(doc["joint"].as_array().is_some_and(Vec::is_empty), "{doc}");
    for replicas in placement(&doc) {
        assert_eq!(replicas.len(), 3, "{doc}");
    }
    // Worker 4 back (same data directory): active again, the rebalance completes.
    let _w4 = start_worker(&c, 4);
    let doc = wait_admin(
        &c,
        "rebalanced after the kills",
        Duration::from_secs(180),
        |d| balanced(d, &[1, 2, 3, 4], 16, 12) && d["joint"].as_array().is_some_and(Vec::is_empty),
    )
    .await;
    for replicas in placement(&doc) {
        assert_eq!(replicas.len(), 3, "{doc}");
    }
    assert!(
        doc["learners"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l.as_array().unwrap().is_empty())
    );
    let log = writer.stop().await;
    let stored = batches::check(&c, metric, &log).await;
    eprintln!("{stored} batches stored of {} sent", log.len());
    replicas_complete(&c, &[1, 2, 3, 4], metric, 3).await;
}
