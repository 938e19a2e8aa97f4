//! The typed client against a real cluster (bincode and JSON), including partial answers
//! after a worker is killed and typed errors.

mod common;

use common::{DevCluster, TOKEN};
use raftmetrics_client::{Answer, Client};
use raftmetrics_core::{Agg, ErrorCode, OrderBy, OrderKey, Point, Query, Timestamp};

const T0: i64 = 1_705_708_800_000_000;

fn points(n: usize) -> Vec<Point> {
    (0..n)
        .map(|i| {
            Point::new("latency_ms", (i % 97) as f64 + 0.5)
                .at(Timestamp::from_micros(T0 + i as i64 * 1_000_000))
                .tag("host", format!("api-{}", i % 5))
                .tag("datacenter", if i % 2 == 0 { "us-west" } else { "us-east" })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_client_round_trips_and_reports_partiality() {
    let c = DevCluster::start(2, 1, 8, &[]).await;
    let bin = Client::builder(c.url("")).token(TOKEN).build().unwrap();
    let json = Client::builder(c.url(""))
        .token(TOKEN)
        .json()
        .build()
        .unwrap();

    let batch = points(3_000);
    let (west, east): (Vec<&Point>, Vec<&Point>) = batch
        .iter()
        .partition(|p| p.tags["datacenter"] == "us-west");
    let ack = bin.insert_batch(batch[..2_000].to_vec()).await.unwrap();
    assert_eq!(ack.points, 2_000);
    let ack = json.insert_batch(batch[2_000..].to_vec()).await.unwrap();
    assert_eq!(ack.points, 1_000);
    json.insert(Point::new("value", 4.0).partition_key("k"))
        .await
        .unwrap();

    let mut q = Query::new("latency_ms");
    q.aggs = vec![Agg::Count, Agg::Sum, Agg::Avg, Agg::Max];
    q.group_by = vec!["datacenter".into()];
    let answer = bin.aggregate(&q).await.unwrap();
    let Answer::Complete(result) = answer else {
        panic!("a healthy cluster must answer completely: {answer:?}")
    };
    assert_eq!(result.get(Agg::Count), Some(3_000.0));
    let sum: f64 = batch.iter().map(|p| p.value).sum();
    assert_eq!(result.get(Agg::Sum), Some(sum));
    for g in &result.groups {
        let dc = g.key[0].1.as_deref().unwrap();
        let members = if dc == "us-west" { &west } else { &east };
        let count = raftmetrics_core::aggregate::find(&g.aggregations, Agg::Count);
        assert_eq!(count, Some(members.len() as f64), "{dc}");
    }
    // One query over two metrics, grouped by metric name then tag, merged across workers.
    let both = Query::from_params(&[
        ("metric", "latency_ms,value"),
        ("agg", "count,max"),
        ("group_by", "metric,datacenter"),
    ])
    .unwrap();
    let result = bin.aggregate(&both).await.unwrap().into_complete().unwrap();
    let count_of = |metric: &str, dc: Option<&str>| {
        result
            .groups
            .iter()
            .find(|g| g.key[0].1.as_deref() == Some(metric) && g.key[1].1.as_deref() == dc)
            .and_then(|g| raftmetrics_core::aggregate::find(&g.aggregations, Agg::Count))
    };
    assert_eq!(
        count_of("latency_ms", Some("us-west")),
        Some(west.len() as f64)
    );
    assert_eq!(
        count_of("latency_ms", Some("us-east")),
        Some(east.len() as f64)
    );
    assert_eq!(count_of("value", None), Some(1.0));
    assert_eq!(result.get(Agg::Count), Some(3_001.0));

    // last and first with a value bound, by host, ordered by the latest value.
    let hot = Query {
        aggs: vec![Agg::Last, Agg::First, Agg::Count],
        group_by: vec!["host".into()],
        order_by: Some(OrderBy {
            key: OrderKey::Agg(Agg::Last),
            descending: true,
        }),
        ..Query::new("latency_ms").value_gt(50.0).value_le(90.0)
    };
    let result = bin.aggregate(&hot).await.unwrap().into_complete().unwrap();
    let selected: Vec<&Point> = batch
        .iter()
        .filter(|p| p.value > 50.0 && p.value <= 90.0)
        .collect();
    let pick = |points: &[&Point], latest: bool| {
        let key = |p: &&&Point| (p.timestamp.unwrap().as_micros(), p.value);
        let chosen = if latest {
            points
                .iter()
                .max_by(|a, b| key(a).partial_cmp(&key(b)).unwrap())
        } else {
            points
                .iter()
                .min_by(|a, b| key(a).partial_cmp(&key(b)).unwrap())
        };
        chosen.map(|p| p.value)
    };
    assert_eq!(result.get(Agg::Count), Some(selected.len() as f64));
    assert_eq!(result.get(Agg::Last), pick(&selected, true));
    assert_eq!(result.get(Agg::First), pick(&selected, false));
    assert_eq!(result.groups.len(), 5);
    let mut previous = f64::INFINITY;
    for g in &result.groups {
        let host = g.key[0].1.as_deref().unwrap();
        let mine: Vec<&Point> = selected
            .iter()
            .copied()
            .filter(|p| p.tags["host"] == host)
            .collect();
        let last = raftmetrics_core::aggregate::find(&g.aggregations, Agg::Last);
        assert_eq!(last, pick(&mine, true), "{host}");
        assert_eq!(
            raftmetrics_core::aggregate::find(&g.aggregations, Agg::First),
            pick(&mine, false),
            "{host}"
        );
        assert!(last.unwrap() <= previous, "ordered by last, descending");
        previous = last.unwrap();
    }

    let a = json.analytics(None).await.unwrap().into_complete().unwrap();
    assert_eq!((a.count, a.average), (1, Some(4.0)));
    let h = bin.health().await.unwrap();
    assert_eq!(h.worker_nodes.unwrap().healthy, 2);

    // Typed errors: validation names the field, a wrong token is an auth error.
    let mut bad = points(3);
    bad[1].value = f64::NAN;
    let err = bin.insert_batch(bad).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ValidationError), "{err}");
    assert!(
        err.validation_fields()[0].field.contains("points[1]"),
        "{err}"
    );
    let wrong = Client::builder(c.url(""))
        .token("not-the-token")
        .build()
        .unwrap();
    assert!(wrong.health().await.unwrap_err().is_auth_error());

    // A killed worker: the answer is partial, and saying so is part of its type.
    c.kill_worker(2);
    let answer = bin.aggregate(&q).await.unwrap();
    assert!(answer.is_partial(), "{answer:?}");
    let Answer::Partial { value, coverage } = answer else {
        unreachable!()
    };
    assert_eq!((coverage.total_nodes, coverage.responding_nodes), (2, 1));
    assert!(value.get(Agg::Count).unwrap() < 3_000.0);
    q.allow_partial = false;
    let err = bin.aggregate(&q).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RaftError), "{err}");
}
