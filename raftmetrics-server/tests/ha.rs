//! Several control nodes (one metadata Raft group of three): the metadata leader killed
//! while a client with every control node's URL writes and queries, a drain whose control
//! node is killed halfway, and two of three control nodes down. Real processes started by
//! `dev --control-nodes 3`, real kills; the set checker holds every acknowledged batch to
//! exactly once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::batches::{self, Outcome};
use common::{DevCluster, TOKEN_B};
use raftmetrics_client::{Agg, Answer, Client, Consistency, Query};
use raftmetrics_core::BatchId;
use serde_json::Value;

/// What a client task saw: when each call succeeded or failed.
#[derive(Default)]
struct Seen {
    ok: Vec<Instant>,
    failed: Vec<(Instant, String)>,
}

impl Seen {
    /// The longest time without a success that overlaps `at` (from the last success before
    /// `at` to the first after it); `None` when nothing succeeded after `at`.
    fn gap_around(&self, at: Instant) -> Option<Duration> {
        let before = self.ok.iter().filter(|t| **t <= at).max()?;
        let after = self.ok.iter().filter(|t| **t > at).min()?;
        Some(*after - *before)
    }
}

fn client(c: &DevCluster) -> Client {
    Client::builder(c.control_urls().join(","))
        .token(TOKEN_B)
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("client")
}

/// Strong counts of `metric` through `client` until `stop`: each complete answer must lie
/// between what was acknowledged before it was asked and what was sent by its answer.
fn start_reader(
    client: Client,
    metric: &'static str,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut q = Query::new(metric);
        q.aggs = vec![Agg::Count];
        q.consistency = Consistency::Strong;
        while !stop.load(Ordering::Relaxed) {
            let acked_before = progress.acked.load(Ordering::SeqCst);
            let answer = client.aggregate(&q).await;
            let sent_after = progress.sent.load(Ordering::SeqCst);
            let at = Instant::now();
            match answer {
                Ok(Answer::Complete(result)) => {
                    let count = result.get(Agg::Count).unwrap_or(0.0) as u64;
                    assert!(
                        count >= acked_before && count <= sent_after,
                        "a strong count of {count} outside [{acked_before}, {sent_after}]"
                    );
                    seen.ok.push(at);
                }
                Ok(partial) => seen.failed.push((at, format!("partial: {partial:?}"))),
                Err(e) => seen.failed.push((at, e.to_string())),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    })
}

/// Points sent and acknowledged so far, read by [`start_reader`].
#[derive(Default)]
struct Progress {
    sent: std::sync::atomic::AtomicU64,
    acked: std::sync::atomic::AtomicU64,
}

/// Writes batch after batch through `client`, each under its own `Idempotency-Key` (which
/// the client keeps when it fails over), until `stop`, counting in `progress`.
fn start_writer(
    client: Client,
    metric: &'static str,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> tokio::task::JoinHandle<(Vec<Outcome>, Seen)> {
    tokio::spawn(async move {
        let mut log = Vec::new();
        let mut seen = Seen::default();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            progress.sent.fetch_add(batches::BATCH, Ordering::SeqCst);
            let id = BatchId::parse(&format!("ha-{metric}-{n}")).expect("batch id");
            let answer = client
                .insert_batch_with_id(&id, batches::batch(metric, n))
                .await;
            let at = Instant::now();
            let acked_by = match answer {
                Ok(ack) => {
                    progress.acked.fetch_add(batches::BATCH, Ordering::SeqCst);
                    seen.ok.push(at);
                    Some(ack.worker_node.unwrap_or_default())
                }
                Err(e) => {
                    seen.failed.push((at, e.to_string()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    None
                }
            };
            log.push(Outcome { n, acked_by, at });
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (log, seen)
    })
}

/// `GET /health` of control node `j` (JSON), `None` when it does not answer.
async fn health(c: &DevCluster, j: u16) -> Option<Value> {
    c.get_ok(&c.control_url(j, "/health"), Duration::from_secs(2))
        .await
}

/// Waits (at most `limit`) until some control node other than those in `except` reports
/// that it decides (leads the metadata group and confirmed it); answers which.
async fn wait_decider(c: &DevCluster, except: &[u16], limit: Duration) -> u16 {
    let start = Instant::now();
    loop {
        for j in 1..=3u16 {
            if except.contains(&j) {
                continue;
            }
            if let Some(h) = health(c, j).await
                && h["control_plane"]["deciding"] == true
            {
                return j;
            }
        }
        assert!(
            start.elapsed() < limit,
            "no control node decides after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most `limit`) until every control node in `nodes` reports the same metadata
/// commit index and epoch, and answers them.
async fn wait_converged(c: &DevCluster, nodes: &[u16], limit: Duration) -> (u64, u64) {
    let start = Instant::now();
    loop {
        let mut seen = Vec::new();
        for j in nodes {
            if let Some(h) = health(c, *j).await {
                let plane = &h["control_plane"];
                seen.push((
                    plane["commit_index"].as_u64().unwrap_or(0),
                    plane["epoch"].as_u64().unwrap_or(0),
                    plane["leader"].as_u64(),
                ));
            }
        }
        if seen.len() == nodes.len()
            && seen.iter().all(|s| (s.0, s.1) == (seen[0].0, seen[0].1))
            && seen.iter().all(|s| s.2.is_some())
        {
            return (seen[0].0, seen[0].1);
        }
        assert!(
            start.elapsed() < limit,
            "control nodes {nodes:?} did not converge in {limit:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_leader_killed_while_a_client_writes_and_queries() {
    let c = DevCluster::start_ha(3, 3, 3, 8, &[]).await;
    let leader = wait_decider(&c, &[], Duration::from_secs(30)).await;
    let metric = "ha_leader_killed";
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let writer = start_writer(client(&c), metric, Arc::clone(&stop), Arc::clone(&progress));
    let reader = start_reader(client(&c), metric, Arc::clone(&stop), Arc::clone(&progress));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let launch = c.kill_node("control", u64::from(leader)).await;
    let killed = Instant::now();
    let next = wait_decider(&c, &[leader], Duration::from_secs(30)).await;
    let elected = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(6)).await;

    // Started again, it catches up with the metadata group.
    c.relaunch(&launch, None).await;
    let (commit, epoch) = wait_converged(&c, &[1, 2, 3], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (log, written) = writer.await.expect("writer");
    let read = reader.await.expect("reader");

    let write_gap = written
        .gap_around(killed)
        .expect("writes went on after the kill");
    let read_gap = read
        .gap_around(killed)
        .expect("strong queries went on after the kill");
    eprintln!(
        "control {leader} killed; control {next} decides after {elected:?}; longest pause \
         around the kill: writes {write_gap:?}, strong queries {read_gap:?}; {} writes and \
         {} queries failed; converged at commit {commit}, epoch {epoch}",
        written.failed.len(),
        read.failed.len()
    );
    assert!(
        write_gap < Duration::from_secs(5),
        "writes paused {write_gap:?}: {:?}",
        written.failed
    );
    assert!(
        read_gap < Duration::from_secs(5),
        "strong queries paused {read_gap:?}: {:?}",
        read.failed
    );
    let stored = batches::check(&c, metric, &log).await;
    let acked = log.iter().filter(|o| o.acked_by.is_some()).count();
    assert!(acked > 50, "only {acked} batches acknowledged");
    assert!(stored >= acked);
    // The restarted node answers from the state it caught up with.
    let (s, doc) = c
        .get_json(&c.control_url(
            leader,
            &format!("/aggregate?metric={metric}&agg=count&consistency=strong"),
        ))
        .await;
    assert_eq!(s, 200, "{doc}");
    assert_eq!(
        doc["aggregations"]["count"].as_u64(),
        Some(stored as u64 * batches::BATCH),
        "{doc}"
    );
}

/// The `/admin/workers` document of control node `j`.
async fn workers_doc(c: &DevCluster, j: u16) -> Option<Value> {
    c.get_ok(&c.control_url(j, "/admin/workers"), Duration::from_secs(3))
        .await
}

fn worker_entry(doc: &Value, id: u64) -> Value {
    doc["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["id"] == id))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_goes_on_after_its_control_node_is_killed() {
    let c = DevCluster::start_ha(3, 4, 3, 8, &[]).await;
    let leader = wait_decider(&c, &[], Duration::from_secs(30)).await;
    let metric = "ha_drain";
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(
        client(&c),
        metric,
        Arc::clone(&stop),
        Arc::new(Progress::default()),
    );
    let before = workers_doc(&c, leader).await.expect("admin/workers");
    let replicas_before = worker_entry(&before, 4)["replicas"].as_u64().unwrap();
    assert!(replicas_before > 2, "{before}");

    // Started on the metadata leader itself, which is then killed halfway.
    let (s, doc) = c
        .post_json(
            &c.control_url(leader, "/admin/workers/4/drain"),
            &Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{doc}");
    let start = Instant::now();
    loop {
        let doc = workers_doc(&c, leader).await.expect("admin/workers");
        let left = worker_entry(&doc, 4)["replicas"].as_u64().unwrap();
        if left < replicas_before && left > 0 {
            break;
        }
        assert!(left > 0, "the drain finished before the kill: {doc}");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the drain does not progress: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _launch = c.kill_node("control", u64::from(leader)).await;
    let killed = Instant::now();
    let next = wait_decider(&c, &[leader], Duration::from_secs(30)).await;

    let start = Instant::now();
    let done = loop {
        if let Some(doc) = workers_doc(&c, next).await {
            let w = worker_entry(&doc, 4);
            if w["state"] == "drained" && w["replicas"] == 0 && doc["moves"] == Value::Array(vec![])
            {
                break doc;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the new metadata leader did not finish the drain"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "control {leader} killed mid-drain; control {next} finished it {:?} after the kill",
        killed.elapsed()
    );
    // Every partition still has three voters, none of them on worker 4.
    for voters in done["placement"].as_array().unwrap() {
        let voters: Vec<u64> = voters
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(voters.len(), 3, "{done}");
        assert!(!voters.contains(&4), "{done}");
    }
    stop.store(true, Ordering::Relaxed);
    let (log, _) = writer.await.expect("writer");
    // The set checker reads through control node 1; ask a live one when 1 was killed.
    let checker = if leader == 1 {
        DevCluster::attach(
            std::net::Ipv4Addr::LOCALHOST.into(),
            c.control_port(next),
            c.workers,
        )
    } else {
        DevCluster::attach(std::net::Ipv4Addr::LOCALHOST.into(), c.port, c.workers)
    };
    batches::check(&checker, metric, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_of_three_control_nodes_down_the_survivor_serves() {
    let c = DevCluster::start_ha(3, 3, 3, 8, &[]).await;
    let leader = wait_decider(&c, &[], Duration::from_secs(30)).await;
    let survivor = (1..=3u16).find(|j| *j != leader).unwrap();
    let down: Vec<u16> = (1..=3u16).filter(|j| *j != survivor).collect();
    let mut launches = Vec::new();
    for j in &down {
        launches.push(c.kill_node("control", u64::from(*j)).await);
    }
    let metric = "ha_survivor";
    let only = Client::builder(c.control_url(survivor, ""))
        .token(TOKEN_B)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    // Inserts and queries through the survivor, from the committed placement.
    let mut acked = 0u64;
    for n in 0..20u64 {
        let id = BatchId::parse(&format!("survivor-{n}")).unwrap();
        only.insert_batch_with_id(&id, batches::batch(metric, n))
            .await
            .expect("an insert through the survivor");
        acked += batches::BATCH;
    }
    let mut q = Query::new(metric);
    q.aggs = vec![Agg::Count, Agg::Sum];
    q.consistency = Consistency::Strong;
    let answer = only
        .aggregate(&q)
        .await
        .expect("a query through the survivor");
    let Answer::Complete(result) = answer else {
        panic!("partial through the survivor: {answer:?}")
    };
    assert_eq!(result.get(Agg::Count), Some(acked as f64));
    let want: f64 = (0..acked).map(|v| v as f64).sum();
    assert_eq!(result.get(Agg::Sum), Some(want));

    // /health says what is wrong: no metadata leader, placement changes wait.
    let start = Instant::now();
    let h = loop {
        let h = health(&c, survivor).await.expect("the survivor's health");
        if h["control_plane"]["leader"].is_null() {
            break h;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the survivor still names a leader: {h}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["control_plane"]["placement_changes"], false, "{h}");
    assert_eq!(h["control_plane"]["deciding"], false, "{h}");
    assert!(
        h["control_plane"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("placement changes")),
        "{h}"
    );
    let (s, doc) = c
        .post_json(
            &c.control_url(survivor, "/admin/workers/3/drain"),
            &Value::Null,
        )
        .await;
    assert_eq!(
        s, 503,
        "a placement change without a metadata leader: {doc}"
    );
    assert_eq!(doc["code"], "RAFT_ERROR", "{doc}");

    // Back: a leader is elected again and every node converges.
    for launch in &launches {
        c.relaunch(launch, None).await;
    }
    wait_decider(&c, &[], Duration::from_secs(30)).await;
    wait_converged(&c, &[1, 2, 3], Duration::from_secs(30)).await;
    let h = health(&c, survivor).await.expect("health");
    assert_eq!(h["control_plane"]["placement_changes"], true, "{h}");
}
