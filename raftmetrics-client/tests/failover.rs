//! Failover between several control nodes, against real HTTP servers on 127.0.0.1: a node
//! that refuses connections, answers 503 or never answers hands the request on to the next
//! one, under the same `Idempotency-Key`; any other answer is returned as it is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmetrics_client::raftmetrics_types::{BatchId, codec};
use raftmetrics_client::{
    AnalyticsResponse, Client, ClientBuilder, Error, InsertResponse, Point, ReadyResponse,
    code_for_status,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a fake node answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// 200 with a valid body for the endpoint.
    Answer,
    /// This status, with an error body in the API's format.
    Status(u16),
    /// Reads the request and never answers.
    Hang,
}

/// A request as a fake node received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Without the query.
    path: String,
    idempotency_key: Option<String>,
    authorization: Option<String>,
}

/// An HTTP/1.1 server on an ephemeral port of 127.0.0.1 that records what it is asked.
struct Node {
    url: String,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Node {
    async fn start(name: &'static str, behaviour: Behaviour) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let behaviour = Arc::new(Mutex::new(behaviour));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (b, s) = (behaviour.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, name, b.clone(), s.clone()));
            }
        });
        Node {
            url,
            behaviour,
            seen,
        }
    }

    /// The base URL as the client reports it.
    fn base(&self) -> String {
        format!("{}/", self.url)
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn asked(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The `Idempotency-Key` of every insert received, in order.
    fn insert_keys(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "POST" && s.path == "/insert")
            .map(|s| {
                s.idempotency_key
                    .expect("an insert without Idempotency-Key")
            })
            .collect()
    }
}

async fn serve(
    mut stream: TcpStream,
    name: &'static str,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let Some((request, body)) = read_request(&mut stream).await else {
        return;
    };
    seen.lock().unwrap().push(request.clone());
    let behaviour = *behaviour.lock().unwrap();
    let (status, body) = match behaviour {
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        Behaviour::Status(status) => (status, error_body(status)),
        Behaviour::Answer => match answer(name, &request.path, &body) {
            Some(body) => (200, body),
            None => (404, error_body(404)),
        },
    };
    let head = format!(
        "HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// Reads one request: its line and headers, then `Content-Length` bytes of body.
async fn read_request(stream: &mut TcpStream) -> Option<(Seen, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?;
    let path = target.split('?').next()?.to_string();
    let mut headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let seen = Seen {
        method,
        path,
        idempotency_key: headers.remove("idempotency-key"),
        authorization: headers.remove("authorization"),
    };
    Some((seen, body))
}

/// The JSON body of a 200 from node `name` on `path`; `None` for an unknown path.
fn answer(name: &str, path: &str, body: &[u8]) -> Option<Vec<u8>> {
    let json = match path {
        "/insert" => {
            let points: Vec<Point> = codec::decode(body).expect("a bincode batch of points");
            serde_json::to_vec(&InsertResponse {
                success: true,
                message: format!("stored by {name}"),
                points: points.len() as u64,
                partitions: vec![0],
                partition: Some(0),
                worker_node: Some("worker-1".into()),
                storage_size: None,
            })
        }
        "/analytics" => serde_json::to_vec(&AnalyticsResponse {
            metric: name.into(),
            average: Some(1.5),
            count: 2,
            is_partial: false,
            total_nodes: 1,
            responding_nodes: 1,
            missing_partitions: vec![],
        }),
        "/ready" => serde_json::to_vec(&ReadyResponse {
            status: "ready".into(),
            role: "control".into(),
            node_id: 1,
            partitions_total: 4,
            partitions_led: 4,
        }),
        _ => return None,
    };
    Some(json.unwrap())
}

fn error_body(status: u16) -> Vec<u8> {
    let code = code_for_status(status).as_str();
    format!(r#"{{"error":true,"code":"{code}","message":"fake node says {status}"}}"#).into_bytes()
}

/// A URL on which nothing listens: the connection is refused.
async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

fn builder(urls: &[&str]) -> ClientBuilder {
    Client::builder(urls.join(","))
        .token("t0k3n")
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(2))
}

fn batch() -> Vec<Point> {
    vec![
        Point::new("cpu_usage", 71.5).tag("host", "web-1"),
        Point::new("cpu_usage", 64.0).tag("host", "web-2"),
    ]
}

#[tokio::test]
async fn a_refused_connection_passes_the_request_to_the_next_node() {
    let dead = dead_url().await;
    let second = Node::start("second", Behaviour::Answer).await;
    let client = builder(&[&dead, &second.url]).build().unwrap();
    assert_eq!(client.base_url(), format!("{dead}/"));

    let ack = client.insert_batch(batch()).await.unwrap();
    assert_eq!((ack.points, ack.message.as_str()), (2, "stored by second"));
    assert_eq!(second.insert_keys().len(), 1);
    // The token goes to every configured node.
    assert_eq!(
        second.seen()[0].authorization.as_deref(),
        Some("Bearer t0k3n")
    );
    assert_eq!(client.base_url(), second.base());
    assert_eq!(client.base_urls(), [format!("{dead}/"), second.base()]);
}

#[tokio::test]
async fn a_503_passes_an_insert_on_under_the_same_idempotency_key() {
    let first = Node::start("first", Behaviour::Status(503)).await;
    let second = Node::start("second", Behaviour::Answer).await;
    // Failover is not a retry: it happens even with retries off.
    let client = builder(&[&first.url, &second.url])
        .insert_retries(0)
        .build()
        .unwrap();

    // A key drawn by the client, before the first attempt.
    let ack = client.insert_batch(batch()).await.unwrap();
    assert_eq!(ack.message, "stored by second");
    let key = first.insert_keys();
    assert_eq!(key.len(), 1);
    assert_eq!(second.insert_keys(), key, "the same key on both nodes");
    assert!(BatchId::parse(&key[0]).is_ok());

    // The caller's key, likewise.
    let first = Node::start("first", Behaviour::Status(503)).await;
    let second = Node::start("second", Behaviour::Answer).await;
    let client = Client::builder_many([&first.url, &second.url])
        .token("t0k3n")
        .insert_retries(0)
        .build()
        .unwrap();
    let id = BatchId::parse("orders-2024-42").unwrap();
    client.insert_batch_with_id(&id, batch()).await.unwrap();
    assert_eq!(first.insert_keys(), ["orders-2024-42"]);
    assert_eq!(second.insert_keys(), ["orders-2024-42"]);

    // Queries fail over the same way.
    let first = Node::start("first", Behaviour::Status(503)).await;
    let second = Node::start("second", Behaviour::Answer).await;
    let client = builder(&[&first.url, &second.url]).build().unwrap();
    let answer = client.analytics(Some("cpu_usage")).await.unwrap();
    assert_eq!(answer.into_complete().unwrap().metric, "second");
    assert_eq!((first.asked(), second.asked()), (1, 1));
}

#[tokio::test]
async fn other_errors_are_returned_without_asking_another_node() {
    for status in [400, 401, 404, 429, 500] {
        let first = Node::start("first", Behaviour::Status(status)).await;
        let second = Node::start("second", Behaviour::Answer).await;
        let client = builder(&[&first.url, &second.url])
            .insert_retries(0)
            .build()
            .unwrap();
        let err = client.insert_batch(batch()).await.unwrap_err();
        assert!(matches!(err, Error::Api { .. }), "{status}: {err:?}");
        assert_eq!(err.status(), Some(status));
        assert!(!err.is_failover());
        let err = client.analytics(None).await.unwrap_err();
        assert_eq!(err.status(), Some(status));
        assert_eq!(first.asked(), 2, "{status}");
        assert_eq!(second.asked(), 0, "{status}: the second node was asked");
        // The node answered: it stays the node in use.
        assert_eq!(client.base_url(), first.base());
    }
    let first = Node::start("first", Behaviour::Status(400)).await;
    let second = Node::start("second", Behaviour::Answer).await;
    let client = builder(&[&first.url, &second.url]).build().unwrap();
    let err = client.insert_batch(batch()).await.unwrap_err();
    assert!(err.is_invalid_request(), "{err}");
    assert_eq!(
        err.to_string(),
        "HTTP 400 INVALID_REQUEST: fake node says 400"
    );
    assert_eq!((first.asked(), second.asked()), (1, 0));
}

#[tokio::test]
async fn a_node_that_never_answers_times_out_and_the_next_one_stores_the_batch() {
    let first = Node::start("first", Behaviour::Hang).await;
    let second = Node::start("second", Behaviour::Answer).await;
    let client = builder(&[&first.url, &second.url]).build().unwrap();
    let started = Instant::now();
    let ack = client.insert_batch(batch()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(ack.message, "stored by second");
    // The timeout is per attempt: the first node used it up, the second had its own.
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The first node may have stored the batch before going silent: the second sees the
    // same key, so the cluster stores it once.
    let key = first.insert_keys();
    assert_eq!(key.len(), 1);
    assert_eq!(second.insert_keys(), key);
    assert_eq!(client.base_url(), second.base());
}

#[tokio::test]
async fn later_requests_start_at_the_node_that_answered_last() {
    let a = Node::start("a", Behaviour::Answer).await;
    let b = Node::start("b", Behaviour::Answer).await;
    let c = Node::start("c", Behaviour::Answer).await;
    let client = builder(&[&a.url, &b.url, &c.url]).build().unwrap();
    let metric = async || client.analytics(None).await.unwrap().into_value().metric;
    let asked = || [a.asked(), b.asked(), c.asked()];

    assert_eq!(metric().await, "a");
    a.set(Behaviour::Status(503));
    assert_eq!(metric().await, "b");
    assert_eq!(asked(), [2, 1, 0]);
    // b is the node in use now: a is not asked again.
    assert_eq!(client.base_url(), b.base());
    assert_eq!(metric().await, "b");
    assert_eq!(asked(), [2, 2, 0]);
    // Round robin from the node in use, wrapping around the list.
    b.set(Behaviour::Status(503));
    assert_eq!(metric().await, "c");
    assert_eq!(asked(), [2, 3, 1]);
    c.set(Behaviour::Status(503));
    a.set(Behaviour::Answer);
    assert_eq!(metric().await, "a");
    assert_eq!(asked(), [3, 3, 2]);
    assert_eq!(client.base_url(), a.base());
    // Clones share the node in use.
    assert_eq!(client.clone().base_url(), a.base());
}

#[tokio::test]
async fn when_every_node_fails_the_error_says_how_many_were_tried() {
    let dead = dead_url().await;
    let busy = Node::start("busy", Behaviour::Status(503)).await;
    let dead_too = dead_url().await;
    let client = builder(&[&dead, &busy.url, &dead_too]).build().unwrap();
    let err = client.analytics(None).await.unwrap_err();
    let Error::AllNodesFailed { tried, url, last } = &err else {
        panic!("expected AllNodesFailed, got {err:?}");
    };
    assert_eq!((*tried, url.as_str()), (3, format!("{dead_too}/").as_str()));
    assert!(matches!(**last, Error::Transport(_)), "{last:?}");
    assert!(err.to_string().starts_with("all 3 nodes failed"), "{err}");
    assert!(err.is_retryable() && err.is_failover());
    assert_eq!(busy.asked(), 1);

    // Inserts: each node once per round, `insert_retries` more rounds, one key throughout.
    let first = Node::start("first", Behaviour::Status(503)).await;
    let second = Node::start("second", Behaviour::Status(503)).await;
    let client = builder(&[&first.url, &second.url])
        .insert_retries(1)
        .build()
        .unwrap();
    let err = client.insert_batch(batch()).await.unwrap_err();
    assert!(
        matches!(err, Error::AllNodesFailed { tried: 2, .. }),
        "{err:?}"
    );
    assert_eq!(err.status(), Some(503));
    assert!(
        err.to_string().starts_with(&format!(
            "all 2 nodes failed; the last, {}/: HTTP 503 RAFT_ERROR",
            second.url
        )),
        "{err}"
    );
    let keys = first.insert_keys();
    assert_eq!(keys.len(), 2, "two rounds");
    assert_eq!(keys[0], keys[1]);
    assert_eq!(second.insert_keys(), keys);

    // With a single URL there is nothing to fail over to: the node's error as it is.
    let only = Node::start("only", Behaviour::Status(503)).await;
    let client = builder(&[&only.url]).build().unwrap();
    let err = client.analytics(None).await.unwrap_err();
    assert!(matches!(err, Error::Api { status: 503, .. }), "{err:?}");
}

#[tokio::test]
async fn wait_ready_asks_every_node() {
    let dead = dead_url().await;
    let starting = Node::start("starting", Behaviour::Status(503)).await;
    let ready = Node::start("ready", Behaviour::Answer).await;
    let client = builder(&[&dead, &starting.url, &ready.url])
        .build()
        .unwrap();
    let answer = client.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer.partitions_led, 4);
    assert_eq!(client.base_url(), ready.base());

    // None ready: waited out, with the last round's failure.
    ready.set(Behaviour::Status(503));
    let err = client
        .wait_ready(Duration::from_millis(700))
        .await
        .unwrap_err();
    let Error::NotReady {
        last: Some(last), ..
    } = &err
    else {
        panic!("expected NotReady, got {err:?}");
    };
    assert!(
        matches!(**last, Error::AllNodesFailed { tried: 3, .. }),
        "{last:?}"
    );
    assert!(
        err.to_string().starts_with("no node was ready within"),
        "{err}"
    );
    assert!(starting.asked() >= 2 && ready.asked() >= 2);
}
