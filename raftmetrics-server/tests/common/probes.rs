//! Queries sent while a fault is injected, and what their answers may be: complete with
//! every batch acknowledged before the query began (strong reads), or flagged partial, or an
//! error; never silently short, never more than was sent, never a batch in part.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::DevCluster;

/// One count through the control node.
#[derive(Debug)]
pub struct Probe {
    pub strong: bool,
    pub began: Instant,
    pub ended: Instant,
    /// 0 when the request itself failed (no connection: the control node is down).
    pub status: u16,
    pub count: u64,
    pub partial: bool,
}

/// Counts `metric` through the control node, one query after another, alternating strong
/// and eventual reads, until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<Probe>>,
}

impl Prober {
    pub fn start(c: Arc<DevCluster>, metric: &'static str) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let url = |consistency: &str| {
                    c.url(&format!(
                        "/aggregate?metric={metric}&agg=count&consistency={consistency}"
                    ))
                };
                let mut probes = Vec::new();
                let mut strong = true;
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let consistency = if strong { "strong" } else { "eventual" };
                    let answer = c
                        .http
                        .get(url(consistency))
                        .bearer_auth(super::TOKEN)
                        .send()
                        .await;
                    let (status, doc) = match answer {
                        Ok(resp) => (resp.status().as_u16(), super::json_of(resp).await),
                        Err(_) => (0, serde_json::Value::Null),
                    };
                    probes.push(Probe {
                        strong,
                        began,
                        ended: Instant::now(),
                        status,
                        count: doc["aggregations"]["count"].as_u64().unwrap_or(0),
                        partial: doc["is_partial"] == true,
                    });
                    strong = !strong;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                probes
            })
        };
        Prober { stop, task }
    }

    pub async fn stop(self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("prober task")
    }
}

/// How the counts during a fault went.
#[derive(Debug, Default)]
pub struct Answers {
    /// Strong reads: complete, flagged partial, refused (not 200).
    pub strong: (usize, usize, usize),
    /// Eventual reads: the same.
    pub eventual: (usize, usize, usize),
    /// Complete eventual answers short of what was acknowledged before they began (allowed:
    /// an eventual read may be served by a lagging replica): when they began, after the
    /// first cut, and how many batches they missed.
    pub eventual_short: Vec<(Duration, u64)>,
}

/// Holds every complete answer in `probes` to the writer's `log`: with strong reads, at
/// least every batch acknowledged before the query began; with either, at most every batch
/// sent before it ended, and whole batches only.
pub fn check_probes(probes: &[Probe], log: &[super::batches::Outcome], fault: Instant) -> Answers {
    let mut answers = Answers::default();
    for p in probes {
        let tally = if p.strong {
            &mut answers.strong
        } else {
            &mut answers.eventual
        };
        if p.status != 200 {
            tally.2 += 1;
            continue;
        }
        if p.partial {
            tally.1 += 1;
            continue;
        }
        tally.0 += 1;
        let acked_before = log
            .iter()
            .filter(|o| o.acked_by.is_some() && o.at < p.began)
            .count() as u64;
        // The batch in flight when the query ended may be stored too.
        let sent_by_end = log.iter().filter(|o| o.at < p.ended).count() as u64 + 1;
        if !p.strong {
            let short = acked_before.saturating_sub(p.count / super::batches::BATCH);
            if short > 0 {
                let at = p.began.saturating_duration_since(fault);
                answers.eventual_short.push((at, short));
            }
        }
        assert!(
            !p.strong || p.count >= acked_before * super::batches::BATCH,
            "a complete strong answer is short: {} points, but {acked_before} batches were \
             acknowledged before the query began ({p:?})",
            p.count
        );
        assert!(
            p.count <= sent_by_end * super::batches::BATCH,
            "more points than sent: {} > {sent_by_end} batches ({p:?})",
            p.count
        );
        assert_eq!(
            p.count % super::batches::BATCH,
            0,
            "a batch counted in part: {p:?}"
        );
    }
    assert!(
        answers.strong.0 > 0,
        "no complete strong answer during the fault: {probes:?}"
    );
    answers
}
