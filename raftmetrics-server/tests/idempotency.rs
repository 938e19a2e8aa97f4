//! Idempotent inserts on a real cluster (three workers, replication factor 3): a batch sent
//! again under the same `Idempotency-Key` is stored once, across a partition leader's death
//! and a control-node restart; the typed client resends under the same id when an answer is
//! lost, and the batch is still stored once.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DevCluster, TOKEN, batches};
use raftmetrics_client::Client;
use raftmetrics_core::{BatchId, Point, Timestamp};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PARTS: u32 = 4;
const T0: i64 = 1_705_708_800_000_000;
/// The client's key of the batch sent again and again.
const ORDERS_KEY: &str = "orders-2024-01-20-batch-7";

/// `n` points of `metric`, over 16 partition keys (so over every partition), values 1..=n.
fn batch(metric: &str, n: usize) -> Vec<Point> {
    (0..n)
        .map(|i| {
            Point::new(metric, (i + 1) as f64)
                .at(Timestamp::from_micros(T0 + i as i64))
                .tag("host", format!("h-{}", i % 3))
                .partition_key(format!("key-{}", i % 16))
        })
        .collect()
}

/// Count and sum of `metric`, read with strong reads (asked again while flagged partial,
/// as it may be right after a worker dies).
async fn stored(c: &DevCluster, metric: &str) -> (u64, f64) {
    let aggs = batches::strong_aggregations(c, metric, "count,sum").await;
    (
        aggs["count"].as_u64().unwrap(),
        aggs["sum"].as_f64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_id_is_stored_once_across_a_leader_death_and_a_control_restart() {
    let c = DevCluster::start(3, 3, PARTS, &[]).await;
    c.wait_partitions_led(PARTS).await;
    let client = Client::builder(c.url("")).token(TOKEN).build().unwrap();
    let points = batch("orders", 64);
    let expected = (64, (1..=64).sum::<u64>() as f64);
    let id = BatchId::parse(ORDERS_KEY).unwrap();

    let ack = client
        .insert_batch_with_id(&id, points.clone())
        .await
        .unwrap();
    assert_eq!(ack.points, 64);
    assert_eq!(ack.partitions.len(), PARTS as usize, "{ack:?}");
    // Sends the batch again under its key; it must still be stored once.
    let resend = |when: &'static str| {
        let (client, id, points, c) = (&client, &id, &points, &c);
        async move {
            client
                .insert_batch_with_id(id, points.clone())
                .await
                .unwrap();
            assert_eq!(stored(c, "orders").await, expected, "{when}");
        }
    };
    resend("sent twice, stored once").await;

    // The same points without an id are another batch each time.
    client.insert_batch(batch("plain", 10)).await.unwrap();
    client.insert_batch(batch("plain", 10)).await.unwrap();
    assert_eq!(stored(&c, "plain").await.0, 20);

    // The leader of a partition dies: its successor remembers the id.
    let leader = c.leader_of("key-0").await;
    c.kill_worker(leader);
    c.wait_partitions_led(PARTS).await;
    assert_ne!(c.leader_of("key-0").await, leader);
    resend("after a leader change").await;

    // A restarted control node forgets nothing that matters: the workers remember.
    c.restart("control", 1, Duration::from_millis(200)).await;
    c.wait_partitions_led(PARTS).await;
    resend("after a control restart").await;

    // JSON with the header by hand: the same id is the same batch, whatever the format.
    let body: Vec<_> = points
        .iter()
        .map(|p| {
            json!({
                "metric": p.metric,
                "value": p.value,
                "timestamp": p.timestamp.unwrap().to_rfc3339(),
                "tags": p.tags,
                "partition_key": p.partition_key,
            })
        })
        .collect();
    let post_json = |key: &'static str| {
        c.http
            .post(c.url("/insert"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(serde_json::to_vec(&body).unwrap())
            .send()
    };
    let resp = post_json(ORDERS_KEY).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        stored(&c, "orders").await,
        expected,
        "JSON with the same id"
    );

    // A malformed id refuses the whole request.
    let resp = post_json("two words").await.unwrap();
    assert_eq!(resp.status(), 400);
    let doc = common::json_of(resp).await;
    assert_eq!(doc["code"], "INVALID_REQUEST", "{doc}");
    assert_eq!(stored(&c, "orders").await, expected);
}

/// A proxy in front of `upstream` that, for the first `lose` connections, passes the request
/// on, waits for the answer, records its status line and closes the connection without
/// passing the answer back: the client sees a lost connection after the server acted.
async fn lossy_proxy(upstream: SocketAddr, lose: usize) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lost = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&lost);
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                continue;
            };
            n += 1;
            if n > lose {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                continue;
            }
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let (mut client_read, _client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                let forward = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(k) = client_read.read(&mut buf).await {
                        if k == 0 || server_write.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                    std::future::pending::<()>().await
                };
                let answer = async {
                    let mut buf = vec![0u8; 4096];
                    let k = server_read.read(&mut buf).await.unwrap_or(0);
                    String::from_utf8_lossy(&buf[..k])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string()
                };
                let status = tokio::select! {
                    _ = forward => unreachable!(),
                    status = answer => status,
                };
                record.lock().unwrap().push(status);
                // Dropping both halves closes the client's connection unanswered.
            });
        }
    });
    (addr, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_resends_a_lost_answer_under_the_same_id() {
    let c = DevCluster::start(3, 3, PARTS, &[]).await;
    c.wait_partitions_led(PARTS).await;
    let upstream: SocketAddr = format!("127.0.0.1:{}", c.port).parse().unwrap();
    let (proxy, lost) = lossy_proxy(upstream, 2).await;
    let client = Client::builder(format!("http://{proxy}"))
        .token(TOKEN)
        .insert_retries(3)
        .build()
        .unwrap();
    let points = batch("payments", 200);
    let ack = client.insert_batch(points).await.unwrap();
    assert_eq!(ack.points, 200);
    let lost = lost.lock().unwrap().clone();
    assert_eq!(lost.len(), 2, "two answers were lost on the way");
    for status in &lost {
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "the lost attempts were stored: {status:?}"
        );
    }
    // Stored by the first attempt, recognised by the second and the third.
    let sum = (1..=200).sum::<u64>() as f64;
    assert_eq!(stored(&c, "payments").await, (200, sum));

    // Without retries the loss is the caller's to see.
    let (proxy, _) = lossy_proxy(upstream, 1).await;
    let once = Client::builder(format!("http://{proxy}"))
        .token(TOKEN)
        .insert_retries(0)
        .build()
        .unwrap();
    let err = once.insert_batch(batch("refunds", 5)).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}
