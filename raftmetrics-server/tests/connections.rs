//! The public HTTP listener's connection bounds on a real cluster (`dev` on loopback): a few
//! thousand connections that send half a request head and stop, against a connection cap
//! below their number and a short header-read timeout. A legitimate client keeps being
//! answered, the server closes every half-open connection, `/metrics` counts it all, and a
//! keep-alive connection lives past the header timeout until the idle timeout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{DevCluster, TOKEN};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Half-open connections opened.
const HALF_OPEN: usize = 3000;
/// The control node's connection cap, below [`HALF_OPEN`].
const CAP: usize = 1000;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// Generous room for a loaded machine on top of a timeout.
const SLACK: Duration = Duration::from_secs(5);
/// What every half-open connection sends: a request head without its final empty line.
const HALF_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n";

/// One round of the legitimate client: when it ended, and what went wrong, if anything.
struct Round {
    at: Instant,
    problem: Option<String>,
}

/// `GET /health` and `POST /insert`, each on a fresh connection.
async fn legitimate_round(client: &reqwest::Client, base: &str, n: u64) -> Option<String> {
    let health = client
        .get(format!("{base}/health"))
        .bearer_auth(TOKEN)
        .send()
        .await;
    match health {
        Ok(r) if r.status() == 200 => {}
        Ok(r) => return Some(format!("/health answered {}", r.status())),
        Err(e) => return Some(format!("/health failed: {e}")),
    }
    let insert = client
        .post(format!("{base}/insert"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(json!({"partition_key": format!("conn-{n}"), "value": n as f64}).to_string())
        .send()
        .await;
    match insert {
        Ok(r) if r.status() == 200 => None,
        Ok(r) => Some(format!("/insert answered {}", r.status())),
        Err(e) => Some(format!("/insert failed: {e}")),
    }
}

/// The value of the sample `series` in a Prometheus exposition.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

async fn metrics(client: &reqwest::Client, base: &str) -> String {
    let resp = client
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("metrics text")
}

fn http(series: &str) -> String {
    format!("raftmetrics_connections_{series}{{listener=\"http\"}}")
}

fn timed_out(timeout: &str) -> String {
    format!("raftmetrics_connections_timed_out_total{{listener=\"http\",timeout=\"{timeout}\"}}")
}

/// Whether the server closed `stream` (EOF or reset) without answering, within `limit`.
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Sends `GET /health` on `stream` and reads one whole response (by its `Content-Length`):
/// the status code.
async fn keep_alive_health(stream: &mut TcpStream) -> u16 {
    let request =
        format!("GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before the whole response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("a Content-Length");
        if body.len() >= length {
            assert!(
                !head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
            return head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_bounded_and_closed() {
    // This process holds thousands of sockets; the nodes raise their own limit at start.
    let (_, limit) = raftmetrics_server::http::listener::raise_open_files_limit().expect("rlimit");
    assert!(limit as usize > HALF_OPEN + 500, "open files limit {limit}");

    let header_ms = HEADER_TIMEOUT.as_millis().to_string();
    let idle_ms = IDLE_TIMEOUT.as_millis().to_string();
    let cap = CAP.to_string();
    let cluster = DevCluster::start(
        1,
        1,
        2,
        &[
            "--header-read-timeout-ms",
            &header_ms,
            "--idle-timeout-ms",
            &idle_ms,
            "--max-connections",
            &cap,
        ],
    )
    .await;
    let base = cluster.url("");
    // A fresh connection for every request: no keep-alive pool.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // (a) The legitimate client, every 100 ms from now until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let legit = {
        let (fresh, base, stop) = (fresh.clone(), base.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut rounds = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let problem = legitimate_round(&fresh, &base, n).await;
                rounds.push(Round {
                    at: Instant::now(),
                    problem,
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            rounds
        })
    };

    // The half-open connections.
    let started = Instant::now();
    let mut half_open = Vec::with_capacity(HALF_OPEN);
    let mut connect_errors = 0;
    for _ in 0..HALF_OPEN {
        match TcpStream::connect(("127.0.0.1", cluster.port)).await {
            Ok(mut s) => {
                // A write can fail when the server already closed the connection for a newer one.
                let _ = s.write_all(HALF_HEAD).await;
                half_open.push(s);
            }
            Err(_) => connect_errors += 1,
        }
    }
    let opened = Instant::now();
    assert_eq!(connect_errors, 0, "connections refused by the OS");
    eprintln!(
        "{HALF_OPEN} half-open connections opened in {:?}",
        opened - started
    );
    // While they are held: the server is at its cap and makes room by eviction.
    let during = metrics(&fresh, &base).await;
    let open_during = sample(&during, &http("open")).expect("open gauge");
    let evicted_during = sample(&during, &http("evicted_total")).expect("evicted");
    eprintln!("while held: open {open_during}, evicted {evicted_during}");
    assert!(evicted_during > 0, "no eviction at the cap:\n{during}");
    assert!(
        open_during <= CAP as u64 + 50,
        "open {open_during} far above the cap"
    );

    // (b) Past the header timeout plus slack, the server closed every one of them.
    tokio::time::sleep_until((opened + HEADER_TIMEOUT + SLACK).into()).await;
    let mut reads = JoinSet::new();
    for mut s in half_open {
        reads.spawn(async move { closed_by_server(&mut s, Duration::from_secs(2)).await });
    }
    let mut still_open = 0;
    while let Some(closed) = reads.join_next().await {
        if !closed.expect("read task") {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "half-open connections the server did not close"
    );

    stop.store(true, Ordering::Relaxed);
    let rounds = legit.await.expect("legitimate client");
    let problems: Vec<&String> = rounds.iter().filter_map(|r| r.problem.as_ref()).collect();
    assert!(
        problems.is_empty(),
        "legitimate requests failed: {problems:?}"
    );
    let held = rounds
        .iter()
        .filter(|r| r.at > started && r.at < opened + HEADER_TIMEOUT)
        .count();
    eprintln!(
        "legitimate rounds: {} in all, {held} while the half-open connections were held",
        rounds.len()
    );
    assert!(
        held >= 3,
        "too few rounds while the connections were held: {held}"
    );

    // (c) The counters: every half-open connection was evicted or timed out, nothing was
    // refused (connections waiting for a head are never busy), and the gauge came back down.
    let text = metrics(&fresh, &base).await;
    let evicted = sample(&text, &http("evicted_total")).expect("evicted");
    let header_timeouts = sample(&text, &timed_out("header")).expect("header timeouts");
    let accepted = sample(&text, &http("accepted_total")).expect("accepted");
    eprintln!("evicted {evicted}, header timeouts {header_timeouts}, accepted {accepted}");
    if opened - started < HEADER_TIMEOUT {
        // None timed out before the last was opened: all but the cap's worth were evicted.
        assert!(
            evicted >= (HALF_OPEN - CAP) as u64,
            "evicted {evicted}:\n{text}"
        );
    }
    assert!(evicted + header_timeouts >= HALF_OPEN as u64, "{text}");
    assert!(header_timeouts > 0, "{text}");
    assert_eq!(sample(&text, &http("refused_total")), Some(0), "{text}");
    assert!(accepted >= (HALF_OPEN + 2 * rounds.len()) as u64, "{text}");
    let down = Instant::now();
    loop {
        let text = metrics(&fresh, &base).await;
        // This request's own connection, and maybe the cluster client's pooled one.
        let open = sample(&text, &http("open")).expect("open gauge");
        if open <= 2 {
            break;
        }
        assert!(
            down.elapsed() < IDLE_TIMEOUT + SLACK,
            "open gauge stays at {open}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // (d) A keep-alive connection that completed a request stays open past the header
    // timeout (and serves another request), then is closed at the idle timeout.
    let idle_before = sample(&metrics(&fresh, &base).await, &timed_out("idle")).expect("idle");
    let mut keep = TcpStream::connect(("127.0.0.1", cluster.port))
        .await
        .expect("connect");
    assert_eq!(keep_alive_health(&mut keep).await, 200);
    let mut buf = [0u8; 64];
    let quiet =
        tokio::time::timeout(HEADER_TIMEOUT + Duration::from_secs(1), keep.read(&mut buf)).await;
    assert!(quiet.is_err(), "closed before the idle timeout: {quiet:?}");
    assert_eq!(keep_alive_health(&mut keep).await, 200);
    let idle_from = Instant::now();
    assert!(
        closed_by_server(&mut keep, IDLE_TIMEOUT + SLACK).await,
        "an idle keep-alive connection was not closed"
    );
    let closed_after = idle_from.elapsed();
    eprintln!("idle keep-alive connection closed after {closed_after:?}");
    assert!(
        closed_after + Duration::from_millis(500) >= IDLE_TIMEOUT,
        "closed after {closed_after:?}, before the idle timeout"
    );
    let idle_after = sample(&metrics(&fresh, &base).await, &timed_out("idle")).expect("idle");
    assert!(
        idle_after > idle_before,
        "idle timeouts {idle_before} -> {idle_after}"
    );
}
