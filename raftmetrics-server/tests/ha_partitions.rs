//! A network partition inside the control plane: three control nodes forming one metadata
//! Raft group and four workers, each node in a Linux network namespace of its own
//! ([`common::netns`]). The metadata leader is cut off from the other two control nodes
//! (both ways) while the workers still reach every control node and a writer sends batches
//! through a control node on the majority side.
//!
//! What must hold:
//! - the majority elects a new metadata leader and the cut-off one stops deciding
//!   (check-quorum);
//! - placement changes go on on the majority side: a drain requested there completes and the
//!   placement epoch grows;
//! - the cut-off node cannot learn the new commits: its epoch stays where it was and never
//!   passes the majority's; it never decides again while cut; once the workers report the
//!   newer epoch its `/health` names the problem, and every insert or query it answers is
//!   either correct (200) or 503 `RAFT_ERROR`, nothing else;
//! - after the cut heals it catches up: the same epoch, commit index and `/admin/workers`
//!   on all three;
//! - the set checker ([`batches::check`]) proves every acknowledged batch stored exactly
//!   once, through every control node.
//!
//! Needs root (`cargo test --release --workspace --test ha_partitions`); without it the test
//! says so and passes, unless `RAFTMETRICS_REQUIRE_NETNS=1`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::netns::{self, Cut, NetnsCluster, Node};
use common::{DevCluster, TOKEN_C, batches};
use raftmetrics_core::api::InsertResponse;
use raftmetrics_core::codec;
use serde_json::Value;
use tokio::task::JoinHandle;

const CONTROLS: u16 = 3;
const WORKERS: u16 = 4;
const PARTS: u32 = 8;
/// The worker drained while the metadata leader is cut off.
const DRAINED: u64 = 4;
/// The writer's metric (through a control node of the majority).
const METRIC: &str = "ha_cut";
/// The metric of the inserts sent to the cut-off control node.
const LONE_METRIC: &str = "ha_cut_lone";
const WRITE_PAUSE: Duration = Duration::from_millis(60);
/// How long the majority gets to elect a metadata leader, and the cut-off one to step down.
const ELECTION: Duration = Duration::from_secs(20);
/// How long the drain gets to complete.
const DRAIN: Duration = Duration::from_secs(180);
/// How long the cut-off node gets to learn from the workers' heartbeats that they follow a
/// newer epoch.
const LEARN_EPOCH: Duration = Duration::from_secs(30);
/// How long the control nodes get to agree again after the heal.
const CATCH_UP: Duration = Duration::from_secs(60);

async fn cluster() -> Option<NetnsCluster> {
    if !netns::available() {
        return None;
    }
    let c = NetnsCluster::start_ha(CONTROLS, WORKERS, 3, PARTS).await;
    for j in 1..=u64::from(CONTROLS) {
        c.control_client(j).wait_partitions_led(PARTS).await;
    }
    Some(c)
}

/// GET `url` with a short timeout: status and JSON body; `None` when it did not answer.
async fn get(client: &DevCluster, url: &str) -> Option<(u16, Value)> {
    client
        .try_request(reqwest::Method::GET, url, Duration::from_secs(3))
        .await
        .ok()
}

/// `method` `url` with a 20 s limit: status and JSON body; status 0 and the reason when no
/// answer came.
async fn request(client: &DevCluster, method: reqwest::Method, url: &str) -> (u16, Value) {
    client
        .try_request(method, url, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| (0, Value::String(e)))
}

/// `GET /admin/workers` of control node `j`.
async fn admin(c: &NetnsCluster, j: u64) -> Option<Value> {
    match c.get(&c.control_url(j, "/admin/workers")).await {
        Some((200, doc)) => Some(doc),
        _ => None,
    }
}

/// Worker `id` in an `/admin/workers` document.
fn worker(doc: &Value, id: u64) -> &Value {
    doc["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["id"] == id))
        .unwrap_or(&Value::Null)
}

/// What every control node must agree on in `/admin/workers`: the epoch, the placement, the
/// moves and each worker's state and replicas.
fn placement_view(doc: &Value) -> Value {
    let workers: Vec<Value> = doc["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| serde_json::json!([w["id"], w["state"], w["replicas"]]))
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "epoch": doc["epoch"],
        "placement": doc["placement"],
        "moves": doc["moves"],
        "workers": workers,
    })
}

/// Whether `doc` is the API's 503 error body: `{"error": true, "code": "RAFT_ERROR", ...}`.
fn is_raft_error(doc: &Value) -> bool {
    doc["error"] == true && doc["code"] == "RAFT_ERROR" && doc["message"].is_string()
}

/// One `/health` of the cut-off control node, with the majority's epoch asked right after.
#[derive(Debug)]
struct Sample {
    at: Instant,
    /// The cut-off node's `control_plane` (`Null` when it did not answer).
    lone: Value,
    /// The highest epoch the majority's control nodes reported after it.
    majority_epoch: Option<u64>,
}

/// Reads the cut-off node's `/health` and then the majority's, every 200 ms, until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(lone: Arc<DevCluster>, majority: Vec<Arc<DevCluster>>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let lone_cp = match get(&lone, &lone.url("/health")).await {
                        Some((200, body)) => body["control_plane"].clone(),
                        _ => Value::Null,
                    };
                    let mut majority_epoch = None;
                    for m in &majority {
                        if let Some((200, body)) = get(m, &m.url("/health")).await
                            && let Some(e) = body["control_plane"]["epoch"].as_u64()
                        {
                            majority_epoch = majority_epoch.max(Some(e));
                        }
                    }
                    samples.push(Sample {
                        at,
                        lone: lone_cp,
                        majority_epoch,
                    });
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                samples
            })
        };
        Sampler { stop, task }
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("sampler task")
    }
}

/// One request to the cut-off control node.
#[derive(Debug)]
struct Answer {
    insert: bool,
    began: Instant,
    /// 0 when no answer came (connection failure or timeout).
    status: u16,
    /// The query's count, or the insert's batch number.
    value: u64,
    partial: bool,
    body: String,
}

/// Sends the cut-off control node a strong count of the writer's metric and an insert of
/// [`LONE_METRIC`], turn about, every 300 ms, until stopped; holds each answer to what it
/// may be: 200 and correct, or 503 with the API's `RAFT_ERROR` body.
struct LoneProber {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(Vec<Answer>, Vec<batches::Outcome>)>,
}

impl LoneProber {
    fn start(lone: Arc<DevCluster>, progress: Arc<batches::Progress>) -> LoneProber {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut log = Vec::new();
                let mut n = 0u64;
                let mut insert = false;
                while !stop.load(Ordering::Relaxed) {
                    let answer = if insert {
                        let answer = lone_insert(&lone, n).await;
                        log.push(batches::Outcome {
                            n,
                            acked_by: (answer.status == 200).then(|| "control".to_string()),
                            at: Instant::now(),
                        });
                        n += 1;
                        answer
                    } else {
                        lone_count(&lone, &progress).await
                    };
                    answers.push(answer);
                    insert = !insert;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                (answers, log)
            })
        };
        LoneProber { stop, task }
    }

    async fn stop(self) -> (Vec<Answer>, Vec<batches::Outcome>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("lone prober task")
    }
}

/// A strong count of [`METRIC`] on `lone`, checked against what the writer had acknowledged
/// before it began and sent by its end.
async fn lone_count(lone: &DevCluster, progress: &batches::Progress) -> Answer {
    let began = Instant::now();
    let (acked_before, _) = progress.read();
    let url = lone.url(&format!(
        "/aggregate?metric={METRIC}&agg=count&consistency=strong"
    ));
    let (status, doc) = request(lone, reqwest::Method::GET, &url).await;
    let (_, sent_by_end) = progress.read();
    let count = doc["aggregations"]["count"].as_u64().unwrap_or(0);
    let partial = doc["is_partial"] == true;
    match status {
        200 => {
            assert!(
                doc["aggregations"]["count"].is_u64(),
                "a 200 count without a count: {doc}"
            );
            assert!(
                count <= sent_by_end,
                "the cut-off control node counts {count} points, more than the {sent_by_end} \
                 sent: {doc}"
            );
            assert_eq!(count % batches::BATCH, 0, "a batch counted in part: {doc}");
            assert!(
                partial || count >= acked_before,
                "a complete strong count from the cut-off control node is short: {count} < \
                 {acked_before} acknowledged before it began: {doc}"
            );
        }
        503 => assert!(
            is_raft_error(&doc),
            "a 503 count without the RAFT_ERROR body: {doc}"
        ),
        _ => panic!("the cut-off control node answered a count with {status}: {doc}"),
    }
    Answer {
        insert: false,
        began,
        status,
        value: count,
        partial,
        body: doc.to_string(),
    }
}

/// Batch `n` of [`LONE_METRIC`] inserted through `lone`.
async fn lone_insert(lone: &DevCluster, n: u64) -> Answer {
    let began = Instant::now();
    let resp = lone
        .post_bincode(
            &lone.url("/insert"),
            TOKEN_C,
            &batches::batch(LONE_METRIC, n),
            Duration::from_secs(20),
        )
        .await;
    let (status, body) = match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            (
                status,
                r.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
            )
        }
        Err(e) => (0, e.to_string().into_bytes()),
    };
    let shown = match status {
        200 => {
            let ack: InsertResponse = codec::decode(&body).expect("a bincode insert answer");
            assert_eq!(ack.points, batches::BATCH, "{ack:?}");
            format!("{ack:?}")
        }
        503 => {
            let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            assert!(
                is_raft_error(&doc),
                "a 503 insert without the RAFT_ERROR body: {}",
                String::from_utf8_lossy(&body)
            );
            doc.to_string()
        }
        _ => panic!(
            "the cut-off control node answered an insert with {status}: {}",
            String::from_utf8_lossy(&body)
        ),
    };
    Answer {
        insert: true,
        began,
        status,
        value: n,
        partial: false,
        body: shown,
    }
}

/// `POST /admin/workers/{id}/drain` on control node `j`, asked again while it answers 503
/// (the majority may still be settling its leader); answers the final status and body.
async fn drain(c: &NetnsCluster, j: u64, id: u64) -> (u16, Value) {
    let client = c.control_client(j);
    let url = c.control_url(j, &format!("/admin/workers/{id}/drain"));
    let start = Instant::now();
    loop {
        let (status, doc) = request(&client, reqwest::Method::POST, &url).await;
        if !matches!(status, 0 | 503) || start.elapsed() > ELECTION {
            return (status, doc);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Tally of answers: (status, how many), for the queries or the inserts among `answers`.
fn tally(answers: &[&Answer], insert: bool) -> Vec<(u16, usize)> {
    let mut t: Vec<(u16, usize)> = Vec::new();
    for a in answers.iter().filter(|a| a.insert == insert) {
        match t.iter_mut().find(|(s, _)| *s == a.status) {
            Some((_, k)) => *k += 1,
            None => t.push((a.status, 1)),
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_leader_cut_off_from_the_other_control_nodes() {
    let Some(c) = cluster().await else { return };
    let all: Vec<u64> = (1..=u64::from(CONTROLS)).collect();

    // 1. The metadata leader, and a writer through a control node that stays connected.
    let lone = c
        .wait_deciding(&all, ELECTION)
        .await
        .expect("one control node decides placement");
    let majority: Vec<u64> = all.iter().copied().filter(|&j| j != lone).collect();
    let via = majority[0];
    let before = admin(&c, via).await.expect("/admin/workers");
    let epoch0 = before["epoch"].as_u64().expect("epoch");
    let lone_health = c.control_health(lone).await.expect("the leader's /health");
    let lone_epoch0 = lone_health["control_plane"]["epoch"]
        .as_u64()
        .expect("control_plane.epoch");
    assert_eq!(
        worker(&before, DRAINED)["state"],
        "active",
        "worker {DRAINED} before the cut: {before}"
    );
    let writer = batches::Writer::start(c.control_client(via), METRIC, WRITE_PAUSE);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. The leader cut off from the other control nodes; the workers still reach it.
    let sampler = Sampler::start(
        c.control_client(lone),
        majority.iter().map(|&j| c.control_client(j)).collect(),
    );
    let prober = LoneProber::start(c.control_client(lone), Arc::clone(&writer.progress));
    let fault = Instant::now();
    c.cut(Node::control(lone), &c.other_controls(lone), Cut::Both);

    // 3. The majority elects a leader of its own; the cut-off one stops deciding.
    let mut new_leader = None;
    let mut last = Value::Null;
    while fault.elapsed() < ELECTION {
        let decider = c.deciding(&majority).await;
        let lone_cp = c
            .control_health(lone)
            .await
            .map_or(Value::Null, |h| h["control_plane"].clone());
        if let Some(d) = decider
            && lone_cp["deciding"] == false
            && let Some(h) = c.control_health(d).await
            && h["control_plane"]["leader"] == d
        {
            new_leader = Some(d);
            break;
        }
        last = serde_json::json!({"majority deciding": decider, "cut-off node": lone_cp});
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_leader = new_leader.unwrap_or_else(|| {
        panic!(
            "within {ELECTION:?} of the cut, no majority control node decides or control node \
             {lone} still does: {last}"
        )
    });
    let stepped_down = Instant::now();
    let elected = stepped_down - fault;

    // 4. The majority keeps deciding: a drain sent to the majority node that does not lead
    // (forwarded to the one that does) completes, and the epoch grows.
    let follower = majority
        .iter()
        .copied()
        .find(|&j| j != new_leader)
        .expect("two majority nodes");
    let (status, doc) = drain(&c, follower, DRAINED).await;
    assert_eq!(
        status, 200,
        "drain of worker {DRAINED} through control node {follower}: {doc}"
    );
    let drain_sent = Instant::now();
    let mut drained_docs = Vec::new();
    loop {
        drained_docs.clear();
        for &j in &majority {
            if let Some(doc) = admin(&c, j).await {
                drained_docs.push(doc);
            }
        }
        let done = drained_docs.len() == majority.len()
            && drained_docs.iter().all(|d| {
                worker(d, DRAINED)["state"] == "drained"
                    && worker(d, DRAINED)["replicas"] == 0
                    && d["epoch"].as_u64().is_some_and(|e| e > epoch0)
            });
        if done {
            break;
        }
        assert!(
            drain_sent.elapsed() < DRAIN,
            "worker {DRAINED} not drained on the majority within {DRAIN:?}: {drained_docs:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained = drain_sent.elapsed();
    let new_epoch = drained_docs[0]["epoch"].as_u64().expect("epoch");

    // 5. The workers follow the newer epoch and tell the cut-off node so: its /health names
    // the problem, and it still does not decide.
    let learn = Instant::now();
    let lone_cp = loop {
        let cp = c
            .control_health(lone)
            .await
            .map_or(Value::Null, |h| h["control_plane"].clone());
        if cp["newest_worker_epoch"]
            .as_u64()
            .zip(cp["epoch"].as_u64())
            .is_some_and(|(newest, held)| newest > held)
        {
            break cp;
        }
        assert!(
            learn.elapsed() < LEARN_EPOCH,
            "the cut-off control node does not hear of the newer epoch {new_epoch} within \
             {LEARN_EPOCH:?}: {cp}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lone_knows = Instant::now();
    assert_eq!(lone_cp["deciding"], false, "{lone_cp}");
    assert!(
        lone_cp["problem"].is_string(),
        "the cut-off control node holds an old epoch and says nothing: {lone_cp}"
    );
    // Let the prober ask the cut-off node a few more times, now that it knows.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 7. Heal; the cut-off node catches up.
    let (answers, lone_log) = prober.stop().await;
    c.heal();
    let healed = Instant::now();
    let samples = sampler.stop().await;
    loop {
        let mut cps = Vec::new();
        let mut docs = Vec::new();
        for &j in &all {
            cps.push(
                c.control_health(j)
                    .await
                    .map_or(Value::Null, |h| h["control_plane"].clone()),
            );
            docs.push(
                admin(&c, j)
                    .await
                    .map_or(Value::Null, |d| placement_view(&d)),
            );
        }
        let same = |f: &dyn Fn(&Value) -> Value| {
            let first = f(&cps[0]);
            !first.is_null() && cps.iter().all(|cp| f(cp) == first)
        };
        let agree = same(&|cp| cp["epoch"].clone())
            && same(&|cp| cp["commit_index"].clone())
            && !docs[0].is_null()
            && docs.iter().all(|d| *d == docs[0]);
        if agree {
            break;
        }
        let last: Vec<(Value, Value)> = cps.into_iter().zip(docs).collect();
        assert!(
            healed.elapsed() < CATCH_UP,
            "the control nodes do not agree within {CATCH_UP:?} of the heal: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let caught_up = healed.elapsed();

    // 8. The writer's batches and the cut-off node's, each acknowledged one stored once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = writer.stop().await;
    for &j in &all {
        c.control_client(j).wait_partitions_led(PARTS).await;
    }
    let mut stored = Vec::new();
    for &j in &all {
        stored.push(batches::check(&c.control_client(j), METRIC, &log).await);
    }
    assert!(
        stored.iter().all(|&s| s == stored[0] && s > 0),
        "{stored:?}"
    );
    let compute: Vec<String> = (1..=u64::from(WORKERS))
        .filter(|&w| w != DRAINED)
        .map(|w| c.worker_url(w, "/compute"))
        .collect();
    batches::check_replicated_at(&c.control_client(lone), METRIC, &log, &compute).await;
    let lone_stored = batches::check(&c.control_client(via), LONE_METRIC, &lone_log).await;

    // 6. While cut (after it stopped deciding), the cut-off node never decided, and its epoch
    // stayed where it was, never past the majority's.
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at > stepped_down && s.at < healed)
        .collect();
    assert!(!during.is_empty(), "no /health sample during the cut");
    let unanswered = during.iter().filter(|s| s.lone.is_null()).count();
    for s in &during {
        if s.lone.is_null() {
            continue;
        }
        assert_eq!(
            s.lone["deciding"],
            false,
            "the cut-off control node decides again while cut ({:?} after the cut): {}",
            s.at - fault,
            s.lone
        );
        let epoch = s.lone["epoch"].as_u64().expect("control_plane.epoch");
        assert_eq!(
            epoch,
            lone_epoch0,
            "the cut-off control node's epoch moved while cut ({:?} after the cut): {}",
            s.at - fault,
            s.lone
        );
        if let Some(m) = s.majority_epoch {
            assert!(
                epoch <= m,
                "the cut-off control node's epoch {epoch} passes the majority's {m}"
            );
        }
    }
    assert!(
        samples
            .iter()
            .filter(|s| s.at > fault && s.at < healed)
            .all(|s| s.lone["epoch"].as_u64().is_none_or(|e| e == lone_epoch0)),
        "the cut-off control node's epoch moved while cut: {samples:?}"
    );

    // 5. What the cut-off node answered: some of each kind after it knew of the newer epoch.
    // The phases: before the majority's epoch grew, after it grew but before the cut-off
    // node heard of it from the workers, and after.
    let grew_at = samples
        .iter()
        .find(|s| s.at > fault && s.majority_epoch.is_some_and(|m| m > lone_epoch0))
        .map_or(drain_sent + drained, |s| s.at);
    let knew_at = samples
        .iter()
        .find(|s| {
            s.at > fault
                && s.lone["newest_worker_epoch"]
                    .as_u64()
                    .zip(s.lone["epoch"].as_u64())
                    .is_some_and(|(newest, held)| newest > held)
        })
        .map_or(lone_knows, |s| s.at.min(lone_knows));
    let phase = |from: Instant, to: Instant| -> Vec<&Answer> {
        answers
            .iter()
            .filter(|a| a.began >= from && a.began < to)
            .collect()
    };
    let before_grew = phase(fault, grew_at);
    let unheard = phase(grew_at, knew_at.max(grew_at));
    let after = phase(knew_at, healed);
    assert!(
        after.iter().any(|a| a.insert) && after.iter().any(|a| !a.insert),
        "the cut-off control node was not asked both ways after it knew: {answers:?}"
    );
    let served_after: Vec<String> = after
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| {
            format!(
                "{} {}{} ({:?} after the cut)",
                if a.insert { "insert" } else { "count" },
                a.value,
                if a.partial { " partial" } else { "" },
                a.began - fault
            )
        })
        .collect();
    let first_refusal = answers
        .iter()
        .find(|a| a.status == 503)
        .map(|a| (a.began - fault, a.body.clone()));
    let shown = |answers: &[&Answer]| {
        format!(
            "counts {:?}, inserts {:?}",
            tally(answers, false),
            tally(answers, true)
        )
    };

    eprintln!(
        "metadata leader: control node {lone} (epoch {lone_epoch0}), cut off from \
         {majority:?}; control node {new_leader} decided {elected:?} after the cut; the drain \
         of worker {DRAINED} through control node {follower} completed in {drained:?} (epoch \
         {epoch0} -> {new_epoch}); the majority's epoch grew {:?} after the cut, the cut-off \
         node heard of it {:?} after the cut (problem: {}); the cut-off node answered (status, \
         how many) before the epoch grew: {}; after, before it heard: {}; after it heard: {} \
         (served: {served_after:?}); first refusal: {first_refusal:?}; {} /health samples \
         during the cut, {unanswered} unanswered; caught up {caught_up:?} after the heal; \
         writer: {} batches, {} acknowledged, {} stored; the cut-off node's inserts: {} sent, \
         {} acknowledged, {lone_stored} stored",
        grew_at - fault,
        knew_at - fault,
        lone_cp["problem"],
        shown(&before_grew),
        shown(&unheard),
        shown(&after),
        during.len(),
        log.len(),
        log.iter().filter(|o| o.acked_by.is_some()).count(),
        stored[0],
        lone_log.len(),
        lone_log.iter().filter(|o| o.acked_by.is_some()).count(),
    );
}
