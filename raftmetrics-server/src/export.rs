//! An export over the workers: which replicas are read for each partition (pure planning,
//! [`plan`]) and the runner that reads every partition page by page into a bounded channel
//! ([`run`]).
//!
//! Each partition is read from one live replica, the one a query's first round picks
//! ([`crate::fan_out::first_round`]: its leader, else the freshest live voter), then, if
//! that replica fails a page, from its other live voters: a page's cursor names series ids
//! and timestamps, which every replica shares, so the next replica goes on where the failed
//! one stopped. Partitions are read one after the other in ascending order and a page is
//! asked for only once the channel has room for it, so an export holds a few pages at a
//! time whatever its size. When no replica answers a page, the error is the channel's last
//! item.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use raftmetrics_core::PartitionId;
use raftmetrics_core::error::Error;
use raftmetrics_core::export::{Cursor, ExportPage, Selection};
use raftmetrics_core::raft::NodeId;
use tokio::sync::mpsc;
use tracing::warn;

use crate::fan_out::{Known, first_round};
use crate::rpc::Request;

/// The unit of the timestamps of JSON lines, exported and imported (the `precision`
/// parameter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Milliseconds (VictoriaMetrics' unit, `ms`): exported rounded down.
    #[default]
    Millis,
    /// Microseconds (`us`): exactly what is stored.
    Micros,
}

impl Precision {
    /// What [`Precision::parse`] takes, for an error message.
    pub const EXPECTED: &'static str = "must be ms or us";

    /// `ms` or `us`.
    pub fn parse(text: &str) -> Option<Precision> {
        match text {
            "ms" => Some(Precision::Millis),
            "us" => Some(Precision::Micros),
            _ => None,
        }
    }

    /// A stored timestamp in this unit, rounded toward negative infinity.
    pub fn of_micros(self, micros: i64) -> i64 {
        match self {
            Precision::Millis => micros.div_euclid(1_000),
            Precision::Micros => micros,
        }
    }

    /// A timestamp in this unit in microseconds; `None` when it does not fit.
    pub fn to_micros(self, value: i64) -> Option<i64> {
        match self {
            Precision::Millis => value.checked_mul(1_000),
            Precision::Micros => Some(value),
        }
    }
}

/// Pages of an export waiting in its channel: one, so that the next page is read while the
/// last one is written out, and no more.
pub const PAGES_IN_FLIGHT: usize = 1;

/// Most replicas asked for one page before the export stops.
pub const MAX_ATTEMPTS_PER_PAGE: usize = 3;

/// Per partition, the live replicas to read it from, preferred first; and the partitions
/// no live replica holds, ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportPlan {
    pub replicas: BTreeMap<PartitionId, Vec<NodeId>>,
    pub missing: Vec<PartitionId>,
}

/// The replicas of every partition: round 1's choice of a query, then the partition's other
/// live voters in placement order.
pub fn plan(known: &Known<'_>) -> ExportPlan {
    let first = first_round(known);
    let mut replicas: BTreeMap<PartitionId, Vec<NodeId>> = BTreeMap::new();
    for (worker, partitions) in &first.asks {
        for p in partitions {
            replicas.entry(*p).or_default().push(*worker);
        }
    }
    if let Some(view) = known.view {
        for (p, order) in replicas.iter_mut() {
            let voters = view.placement.get(*p as usize).into_iter().flatten();
            for v in voters {
                if known.live.contains(v) && !order.contains(v) {
                    order.push(*v);
                }
            }
        }
    }
    ExportPlan {
        replicas,
        missing: first.missing,
    }
}

/// How the runner reaches the workers.
pub trait Workers: Send + Sync + 'static {
    /// The live replicas of `partition` with their node-to-node addresses, preferred first,
    /// as the node knows them now.
    fn replicas(&self, partition: PartitionId) -> Vec<(NodeId, SocketAddr)>;

    /// Asks `worker` for one page ([`Request::Export`]).
    fn page(
        &self,
        worker: NodeId,
        addr: SocketAddr,
        request: Request,
    ) -> impl Future<Output = Result<ExportPage, Error>> + Send;
}

/// Reads `partitions` in order, each page by page from its first replica that answers, into
/// `pages`. Stops after sending an error (no replica answered a page), or as soon as the
/// receiver is gone (the client left).
pub async fn run<W: Workers>(
    workers: Arc<W>,
    partitions: Vec<PartitionId>,
    selection: Selection,
    limit: u32,
    pages: mpsc::Sender<Result<ExportPage, Error>>,
) {
    for partition in partitions {
        let mut after: Option<Cursor> = None;
        // Replicas that failed a page of this partition are not asked again for it.
        let mut failed: HashSet<NodeId> = HashSet::new();
        loop {
            if pages.is_closed() {
                return;
            }
            let request = Request::Export {
                partition,
                selection: selection.clone(),
                after,
                limit,
            };
            let page = match read_page(&*workers, partition, request, &mut failed).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = pages.send(Err(e)).await;
                    return;
                }
            };
            let next = page.next;
            if !page.series.is_empty() && pages.send(Ok(page)).await.is_err() {
                return;
            }
            match next {
                Some(cursor) => after = Some(cursor),
                None => break,
            }
        }
    }
}

/// One page from the first replica of `partition` that answers, at most
/// [`MAX_ATTEMPTS_PER_PAGE`] asked.
async fn read_page<W: Workers>(
    workers: &W,
    partition: PartitionId,
    request: Request,
    failed: &mut HashSet<NodeId>,
) -> Result<ExportPage, Error> {
    let mut asked = 0;
    while asked < MAX_ATTEMPTS_PER_PAGE {
        let Some((worker, addr)) = workers
            .replicas(partition)
            .into_iter()
            .find(|(w, _)| !failed.contains(w))
        else {
            break;
        };
        asked += 1;
        match workers.page(worker, addr, request.clone()).await {
            Ok(page) => return Ok(page),
            Err(e) => {
                warn!(worker, partition, error = %e, "a worker did not answer an export page");
                failed.insert(worker);
            }
        }
    }
    Err(Error::Raft(format!(
        "export stopped: partition {partition} could not be read \
         ({asked} replicas asked, none answered)"
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use raftmetrics_core::Tags;
    use raftmetrics_core::export::ExportSeries;

    use super::*;
    use crate::rpc::ClusterView;

    fn view(placement: Vec<Vec<NodeId>>) -> ClusterView {
        ClusterView {
            epoch: 1,
            partitions: placement.len() as u32,
            replication_factor: 3,
            founders: placement.clone(),
            learners: vec![vec![]; placement.len()],
            placement,
            workers: Vec::new(),
        }
    }

    #[test]
    fn a_partition_is_read_from_round_one_s_choice_then_its_other_live_voters() {
        let v = view(vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 4, 5]]);
        let live: HashSet<NodeId> = [1, 2, 3].into();
        let leaders: HashMap<PartitionId, NodeId> = [(0, 3)].into();
        let plan = plan(&Known {
            view: Some(&v),
            partitions: 3,
            live: &live,
            leaders: &leaders,
            applied: &HashMap::new(),
        });
        assert_eq!(plan.replicas[&0], vec![3, 1, 2]);
        assert_eq!(plan.replicas[&1], vec![2, 3, 1]);
        // Only one voter of partition 2 is live.
        assert_eq!(plan.replicas[&2], vec![3]);
        assert!(plan.missing.is_empty());
        let live: HashSet<NodeId> = [1, 2].into();
        let plan = super::plan(&Known {
            view: Some(&v),
            partitions: 3,
            live: &live,
            leaders: &HashMap::new(),
            applied: &HashMap::new(),
        });
        assert_eq!(plan.missing, vec![2]);
        assert!(!plan.replicas.contains_key(&2));
    }

    /// Workers that serve a partition's points from memory, `per_page` at a time, and fail
    /// the pages the test says.
    struct Fake {
        /// Per partition, its points as (series id, timestamp).
        data: BTreeMap<PartitionId, Vec<(u64, i64)>>,
        replicas: Vec<NodeId>,
        /// Workers that fail every call after the first `fail_after` calls (of all workers).
        failing: HashSet<NodeId>,
        fail_after: usize,
        calls: Mutex<Vec<(NodeId, PartitionId, Option<Cursor>)>>,
    }

    impl Workers for Fake {
        fn replicas(&self, _: PartitionId) -> Vec<(NodeId, SocketAddr)> {
            let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
            self.replicas.iter().map(|w| (*w, addr)).collect()
        }

        async fn page(
            &self,
            worker: NodeId,
            _: SocketAddr,
            request: Request,
        ) -> Result<ExportPage, Error> {
            let Request::Export {
                partition,
                after,
                limit,
                ..
            } = request
            else {
                panic!("an export asks for pages only");
            };
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push((worker, partition, after));
                calls.len()
            };
            if self.failing.contains(&worker) && n > self.fail_after {
                return Err(Error::Raft("down".into()));
            }
            let points = &self.data[&partition];
            let start = after.map_or(0, |c| c.skip as usize);
            let end = (start + limit as usize).min(points.len());
            let page = ExportPage {
                series: points[start..end]
                    .iter()
                    .map(|(s, t)| ExportSeries {
                        metric: format!("p{partition}s{s}"),
                        tags: Tags::new(),
                        timestamps: vec![*t],
                        values: vec![0.0],
                    })
                    .collect(),
                // The fake's cursor is simply the position.
                next: (end < points.len()).then_some(Cursor {
                    series_id: 0,
                    timestamp_micros: 0,
                    skip: end as u64,
                }),
            };
            Ok(page)
        }
    }

    fn fake(replicas: Vec<NodeId>, failing: &[NodeId], fail_after: usize) -> Arc<Fake> {
        let data = (0..3)
            .map(|p| (p, (0..(5 + p as i64)).map(|i| (p as u64, i)).collect()))
            .collect();
        Arc::new(Fake {
            data,
            replicas,
            failing: failing.iter().copied().collect(),
            fail_after,
            calls: Mutex::new(Vec::new()),
        })
    }

    async fn collect(
        workers: Arc<Fake>,
        partitions: Vec<PartitionId>,
    ) -> Vec<Result<ExportPage, Error>> {
        let (tx, mut rx) = mpsc::channel(PAGES_IN_FLIGHT);
        tokio::spawn(run(workers, partitions, Selection::everything(), 2, tx));
        let mut out = Vec::new();
        while let Some(item) = rx.recv().await {
            out.push(item);
        }
        out
    }

    fn names(pages: &[Result<ExportPage, Error>]) -> Vec<String> {
        pages
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .flat_map(|p| {
                p.series
                    .iter()
                    .map(|s| format!("{}@{}", s.metric, s.timestamps[0]))
            })
            .collect()
    }

    #[tokio::test]
    async fn partitions_are_read_in_order_page_by_page_each_cursor_passed_on() {
        let workers = fake(vec![7, 8], &[], 0);
        let pages = collect(Arc::clone(&workers), vec![0, 2]).await;
        let got = names(&pages);
        let want: Vec<String> = [(0, 5), (2, 7)]
            .iter()
            .flat_map(|(p, n)| (0..*n).map(move |i| format!("p{p}s{p}@{i}")))
            .collect();
        assert_eq!(got, want);
        // Pages of two: 3 for partition 0, 4 for partition 2, all from the first replica.
        let calls = workers.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 7);
        assert!(calls.iter().all(|(w, _, _)| *w == 7));
        assert_eq!(calls[0].2, None);
        assert_eq!(calls[1].2.map(|c| c.skip), Some(2));
        assert_eq!(calls[3], (7, 2, None));
    }

    #[tokio::test]
    async fn a_failed_page_is_asked_again_of_another_replica_from_the_same_cursor() {
        // Worker 7 fails from its third call on: partition 0's third page goes to 8.
        let workers = fake(vec![7, 8], &[7], 2);
        let pages = collect(Arc::clone(&workers), vec![0]).await;
        assert!(pages.iter().all(Result::is_ok));
        assert_eq!(names(&pages).len(), 5, "every point once");
        let calls = workers.calls.lock().unwrap().clone();
        let (failed, retried) = (&calls[2], &calls[3]);
        assert_eq!((failed.0, retried.0), (7, 8));
        assert_eq!(failed.2, retried.2, "the same cursor");
    }

    #[tokio::test]
    async fn when_no_replica_answers_the_error_is_the_last_item() {
        let workers = fake(vec![7, 8], &[7, 8], 1);
        let pages = collect(Arc::clone(&workers), vec![0, 1]).await;
        assert_eq!(pages.len(), 2);
        assert!(pages[0].is_ok());
        let err = pages[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("partition 0 could not be read"), "{err}");
        // Partition 1 was never asked for.
        let calls = workers.calls.lock().unwrap().clone();
        assert!(calls.iter().all(|(_, p, _)| *p == 0));
    }

    #[tokio::test]
    async fn the_runner_stops_when_the_client_leaves() {
        let workers = fake(vec![7], &[], 0);
        let (tx, mut rx) = mpsc::channel(PAGES_IN_FLIGHT);
        let task = tokio::spawn(run(
            Arc::clone(&workers),
            vec![0, 1, 2],
            Selection::everything(),
            1,
            tx,
        ));
        assert!(rx.recv().await.is_some());
        drop(rx);
        task.await.unwrap();
        // One page taken, one waiting in the channel, at most one more being read.
        assert!(workers.calls.lock().unwrap().len() <= 3);
    }
}
