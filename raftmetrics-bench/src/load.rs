//! The load tool: drives a running cluster with generated points through the typed client.
//!
//! A generator thread steps the dataset's walks into batches of `batch` samples and hands
//! them over a bounded queue (two batches per connection) to `connections` tasks, each with a
//! client (and so a connection) of its own, sending one batch at a time as API points that
//! borrow their metric and tags from the dataset (`PointRef`), and waiting for its
//! acknowledgement. Without a rate, every connection sends its next batch as soon as
//! the previous one is acknowledged (full load), and a batch's latency runs from sending to
//! acknowledgement. With a rate, batch `k` is due at `start + k × batch / rate` (open loop)
//! and its latency runs from when it was due, so time spent waiting for a free connection
//! counts too.
//!
//! The same connections can post InfluxDB line protocol instead, to any write endpoint
//! ([`LineTarget`]: RaftMetrics' `POST /write`, or another system's), either made from the
//! samples as they come or from bodies built once before the run ([`LineBodies`]), so that
//! several systems are sent the same bytes; any 2xx answer acknowledges.
//!
//! A [`Stop`] ends a run early (no batch is taken after it; those queued still go), and
//! [`LoadReport::window`] measures the part of a run that fell within a time window, so one
//! steady load can be measured before and during an event.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use raftmetrics_client::{Client, Format, PointRef};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use crate::error::{BenchError, Result};
use crate::generator::{Dataset, FIELDS, Sample};

/// Longest wait for one insert's acknowledgement.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Batches queued per connection ahead of sending.
const QUEUE_PER_CONNECTION: usize = 2;

/// How to load the cluster.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub connections: usize,
    /// Points per request.
    pub batch: usize,
    pub format: Format,
    /// Send the points as InfluxDB line protocol to `POST /write` (one line per host and
    /// interval with its ten fields, as Telegraf sends them) instead of through the typed
    /// client; `format` is then not used.
    pub line_protocol: bool,
    /// Points per second offered; `None`: as fast as they are acknowledged.
    pub rate: Option<f64>,
    /// Shown in front of the progress bar.
    pub label: String,
}

/// Which part of the dataset to send: intervals `first..first + count`.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub first: u64,
    pub count: u64,
}

/// Ends a run early when set: no batch is taken after it (those queued still go).
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a load run measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub points: u64,
    pub elapsed: Duration,
    /// When the run's clock started (an open loop's batch 0 was due).
    pub started: Instant,
    /// Acknowledgement latency of every request in microseconds, ascending.
    latencies_micros: Vec<u64>,
    /// Every request as (when it was due or sent, from the start; its latency; its points),
    /// times in microseconds, in the order they were sent.
    timeline_micros: Vec<(u64, u64, u64)>,
}

/// The part of a run within a time window: requests due (or sent) in it, and points
/// acknowledged in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub seconds: f64,
    /// Requests due in the window.
    pub requests: u64,
    /// Points whose acknowledgement came within the window.
    pub points: u64,
    /// Acknowledgement latencies of the requests due in the window.
    pub p50: Duration,
    pub p99: Duration,
}

impl Window {
    /// Points acknowledged per second of the window.
    pub fn points_per_second(&self) -> f64 {
        self.points as f64 / self.seconds.max(1e-9)
    }
}

/// The `q` quantile (nearest rank) of ascending microseconds.
fn nearest_rank(sorted_micros: &[u64], q: f64) -> Duration {
    let n = sorted_micros.len();
    if n == 0 {
        return Duration::ZERO;
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    Duration::from_micros(sorted_micros[rank])
}

impl LoadReport {
    /// Acknowledged points per second.
    pub fn points_per_second(&self) -> f64 {
        self.points as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (nearest rank) of the acknowledgement latency.
    pub fn latency(&self, q: f64) -> Duration {
        nearest_rank(&self.latencies_micros, q)
    }

    /// The requests of `from..to` (times from [`LoadReport::started`]): the latencies of
    /// those due in it, and the rate of the points acknowledged in it.
    pub fn window(&self, from: Duration, to: Duration) -> Window {
        let (from, to) = (from.as_micros() as u64, to.as_micros() as u64);
        let mut latencies = Vec::new();
        let mut points = 0;
        for &(sent, latency, n) in &self.timeline_micros {
            if (from..to).contains(&sent) {
                latencies.push(latency);
            }
            if (from..to).contains(&(sent + latency)) {
                points += n;
            }
        }
        latencies.sort_unstable();
        Window {
            seconds: to.saturating_sub(from) as f64 / 1e6,
            requests: latencies.len() as u64,
            points,
            p50: nearest_rank(&latencies, 0.5),
            p99: nearest_rank(&latencies, 0.99),
        }
    }

    /// Writes every request's send time and latency, one `sent_ms,latency_ms` line each, in
    /// the order they were sent: shows whether slow requests come together (a stall) or
    /// spread out (queueing).
    pub fn write_timeline(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(out, "sent_ms,latency_ms")?;
        for &(sent, latency, _) in &self.timeline_micros {
            writeln!(out, "{:.3},{:.3}", sent as f64 / 1e3, latency as f64 / 1e3)?;
        }
        Ok(())
    }
}

/// What a batch carries: samples, sent as the spec says, or a line protocol body built
/// before the run ([`LineBodies`]).
enum Payload {
    Samples(Vec<Sample>),
    Body { points: u64, body: Bytes },
}

impl Payload {
    fn points(&self) -> u64 {
        match self {
            Payload::Samples(s) => s.len() as u64,
            Payload::Body { points, .. } => *points,
        }
    }
}

/// One batch and its place in the sequence.
struct Job {
    seq: u64,
    payload: Payload,
}

/// Where a line protocol body is posted: a write endpoint and its query
/// (`http://127.0.0.1:8086/write?db=bench&precision=u`), with the `Authorization` header to
/// send, if any. RaftMetrics' `POST /write`, VictoriaMetrics' and InfluxDB's all take the
/// same bodies.
#[derive(Clone, Debug)]
pub struct LineTarget {
    pub url: String,
    pub auth: Option<String>,
}

impl LineTarget {
    /// RaftMetrics' `POST /write` at `url`, microsecond timestamps, with a token.
    pub fn raftmetrics(url: &str, token: &str) -> LineTarget {
        LineTarget {
            url: format!("{}/write?precision=u", url.trim_end_matches('/')),
            auth: Some(format!("Token {token}")),
        }
    }
}

/// The line protocol bodies of a span of the dataset, in batches of `batch` points, built
/// once (by [`line_protocol`]) so that several systems can be sent the very same bytes, and
/// no system's run pays for building them.
pub struct LineBodies {
    batches: Vec<(u64, Bytes)>,
}

impl LineBodies {
    /// Builds the bodies of intervals `span` in batches of `batch` samples.
    pub fn build(dataset: &Dataset, span: Span, batch: usize) -> Result<LineBodies> {
        if batch == 0 {
            return Err(BenchError::Config("the batch must be at least 1".into()));
        }
        let mut samples = dataset.samples(span.first, span.count);
        let mut batches = Vec::new();
        loop {
            let chunk = samples.take_batch(batch);
            if chunk.is_empty() {
                break;
            }
            let body = line_protocol(dataset, &chunk);
            batches.push((chunk.len() as u64, Bytes::from(body)));
        }
        Ok(LineBodies { batches })
    }

    /// Points in all bodies.
    pub fn points(&self) -> u64 {
        self.batches.iter().map(|(n, _)| n).sum()
    }

    /// Bytes in all bodies.
    pub fn bytes(&self) -> u64 {
        self.batches.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

/// How the connections of a run send their batches.
#[derive(Clone)]
enum Sender {
    Client(Client),
    Line(LineProtocolSender),
}

impl Sender {
    async fn send(&self, dataset: &Dataset, payload: &Payload) -> Result<()> {
        match (self, payload) {
            (Sender::Line(sender), Payload::Body { body, .. }) => sender.post(body.clone()).await,
            (Sender::Line(sender), Payload::Samples(samples)) => {
                sender
                    .post(Bytes::from(line_protocol(dataset, samples)))
                    .await
            }
            (Sender::Client(client), Payload::Samples(samples)) => {
                // Points borrow their metric and tags from the dataset: a batch of them
                // costs no allocation per point (as a producer that keeps its series
                // would).
                let points: Vec<PointRef<'_>> =
                    samples.iter().map(|s| dataset.point_ref(s)).collect();
                client.insert_refs(&points).await?;
                Ok(())
            }
            (Sender::Client(_), Payload::Body { .. }) => Err(BenchError::Config(
                "a line protocol body cannot go through the typed client".into(),
            )),
        }
    }
}

/// Sends intervals `span` of `dataset` to the cluster at `url` and waits for every
/// acknowledgement. The first failed insert stops the run and is returned.
pub async fn run(
    url: &str,
    token: &str,
    dataset: Arc<Dataset>,
    span: Span,
    spec: &LoadSpec,
) -> Result<LoadReport> {
    run_until(url, token, dataset, span, spec, &Stop::default()).await
}

/// [`run`], ended early by `stop`: the batches taken before it are sent and acknowledged.
pub async fn run_until(
    url: &str,
    token: &str,
    dataset: Arc<Dataset>,
    span: Span,
    spec: &LoadSpec,
    stop: &Stop,
) -> Result<LoadReport> {
    check_spec(spec)?;
    let senders = if spec.line_protocol {
        let sender = LineProtocolSender::new(LineTarget::raftmetrics(url, token));
        vec![Sender::Line(sender); spec.connections]
    } else {
        (0..spec.connections)
            .map(|_| {
                Client::builder(url)
                    .token(token)
                    .format(spec.format)
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .map(Sender::Client)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
    };
    let total = span.count * dataset.points_per_interval();
    let (tx, rx) = mpsc::channel::<Job>(spec.connections * QUEUE_PER_CONNECTION);
    let batch = spec.batch;
    // The walks run from interval 0, so a span far into the dataset takes the generator a
    // while to reach: the clock (and an open loop's schedule) starts once it has.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let generated = Arc::clone(&dataset);
    let stop = stop.clone();
    let producer = std::thread::spawn(move || {
        let mut samples = generated.samples(span.first, span.count);
        let _ = ready_tx.send(());
        for seq in 0.. {
            if stop.is_stopped() {
                break;
            }
            let chunk = samples.take_batch(batch);
            if chunk.is_empty()
                || tx
                    .blocking_send(Job {
                        seq,
                        payload: Payload::Samples(chunk),
                    })
                    .is_err()
            {
                break;
            }
        }
    });
    // An error here means the generator thread died; joining it below reports that.
    let _ = ready_rx.await;
    let outcome = drive(dataset, senders, rx, total, spec).await;
    // The queue's receiver is gone, so the generator stops at its next batch.
    tokio::task::spawn_blocking(move || producer.join())
        .await
        .map_err(|e| BenchError::Task(e.to_string()))?
        .map_err(|_| BenchError::Task("the generator thread panicked".into()))?;
    outcome
}

/// Posts line protocol bodies built before the run to `target`, over `spec.connections`
/// connections (closed or open loop as `spec.rate` says), and waits for every
/// acknowledgement (a 2xx answer). The same path as a line protocol run of [`run`], with
/// the bodies already made.
pub async fn run_line_bodies(
    target: &LineTarget,
    bodies: Arc<LineBodies>,
    dataset: Arc<Dataset>,
    spec: &LoadSpec,
) -> Result<LoadReport> {
    check_spec(spec)?;
    let senders = vec![Sender::Line(LineProtocolSender::new(target.clone())); spec.connections];
    let total = bodies.points();
    let (tx, rx) = mpsc::channel::<Job>(spec.connections * QUEUE_PER_CONNECTION);
    let feeder = tokio::spawn(async move {
        for (seq, (points, body)) in bodies.batches.iter().enumerate() {
            let job = Job {
                seq: seq as u64,
                payload: Payload::Body {
                    points: *points,
                    body: body.clone(),
                },
            };
            if tx.send(job).await.is_err() {
                break;
            }
        }
    });
    let outcome = drive(dataset, senders, rx, total, spec).await;
    feeder.abort();
    let _ = feeder.await;
    outcome
}

fn check_spec(spec: &LoadSpec) -> Result<()> {
    if spec.connections == 0 || spec.batch == 0 {
        return Err(BenchError::Config(
            "connections and batch must be at least 1".into(),
        ));
    }
    if spec.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(BenchError::Config("the rate must be above zero".into()));
    }
    Ok(())
}

/// The connections of a run: each takes the next batch from `rx`, sends it (when it is due,
/// in an open loop) and waits for its acknowledgement, until the queue is empty.
async fn drive(
    dataset: Arc<Dataset>,
    senders: Vec<Sender>,
    rx: mpsc::Receiver<Job>,
    total: u64,
    spec: &LoadSpec,
) -> Result<LoadReport> {
    let batch = spec.batch;
    let rx = Arc::new(Mutex::new(rx));
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = tokio::spawn(show_progress(spec.label.clone(), Arc::clone(&acked), total));
    let mut tasks = tokio::task::JoinSet::new();
    for sender in senders {
        let rx = Arc::clone(&rx);
        let acked = Arc::clone(&acked);
        let dataset = Arc::clone(&dataset);
        let rate = spec.rate;
        tasks.spawn(async move {
            let mut timeline = Vec::new();
            loop {
                let Some(job) = rx.lock().await.recv().await else {
                    break;
                };
                let n = job.payload.points();
                let sent = match rate {
                    Some(rate) => {
                        let due =
                            start + Duration::from_secs_f64(job.seq as f64 * batch as f64 / rate);
                        tokio::time::sleep_until(due).await;
                        due
                    }
                    None => Instant::now(),
                };
                sender.send(&dataset, &job.payload).await?;
                let sent_at = sent.saturating_duration_since(start).as_micros() as u64;
                timeline.push((sent_at, sent.elapsed().as_micros() as u64, n));
                acked.fetch_add(n, Ordering::Relaxed);
            }
            Ok::<_, BenchError>(timeline)
        });
    }
    drop(rx);
    let mut timeline_micros = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(l)) => timeline_micros.extend(l),
            Ok(Err(e)) => {
                failure.get_or_insert(e);
                tasks.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failure.get_or_insert(BenchError::Task(e.to_string()));
                tasks.abort_all();
            }
        }
    }
    let elapsed = start.elapsed();
    progress.abort();
    let _ = progress.await;
    if let Some(e) = failure {
        finish_progress_line();
        return Err(e);
    }
    let points = acked.load(Ordering::Relaxed);
    print_progress(&spec.label, points, total, elapsed, true);
    timeline_micros.sort_unstable();
    let mut latencies_micros: Vec<u64> = timeline_micros.iter().map(|&(_, l, _)| l).collect();
    latencies_micros.sort_unstable();
    Ok(LoadReport {
        points,
        elapsed,
        started: start,
        latencies_micros,
        timeline_micros,
    })
}

/// Redraws the progress bar until aborted: in place on a terminal, as a line every few
/// seconds otherwise.
async fn show_progress(label: String, acked: Arc<AtomicU64>, total: u64) {
    let started = Instant::now();
    let every = if std::io::stderr().is_terminal() {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    loop {
        tokio::time::sleep(every).await;
        print_progress(
            &label,
            acked.load(Ordering::Relaxed),
            total,
            started.elapsed(),
            false,
        );
    }
}

const BAR_WIDTH: usize = 30;

fn print_progress(label: &str, done: u64, total: u64, elapsed: Duration, last: bool) {
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (fraction * BAR_WIDTH as f64).round() as usize;
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    let line = format!(
        "{label:<22} [{}{}] {:>5.1}% {done:>11} points {:>9.0} points/s {:>6.1} s",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        fraction * 100.0,
        rate,
        elapsed.as_secs_f64()
    );
    if std::io::stderr().is_terminal() {
        eprint!("\r{line}{}", if last { "\n" } else { "" });
    } else {
        eprintln!("{line}");
    }
}

/// Ends a progress line cut short by an error.
fn finish_progress_line() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_protocol_puts_a_host_s_fields_of_one_interval_on_one_line() {
        let dataset = Dataset::new(crate::generator::Config::new(1, 2));
        let samples: Vec<Sample> = dataset.samples(0, 2).take_batch(40);
        let text = line_protocol(&dataset, &samples);
        let lines: Vec<&str> = text.lines().collect();
        // 2 hosts x 2 intervals, each line with the ten fields and the interval's time.
        assert_eq!(lines.len(), 4, "{text}");
        for (line, first) in lines.iter().zip([0usize, 10, 20, 30]) {
            let s = &samples[first];
            assert!(line.starts_with("cpu,"), "{line}");
            assert!(line.ends_with(&format!(" {}", s.ts)), "{line}");
            assert_eq!(line.matches("usage_").count(), 10, "{line}");
            assert!(
                line.contains(&format!("{}={}", FIELDS[0], s.value)),
                "{line}"
            );
        }
        let mut out = String::new();
        escape_key(&mut out, "a b,c=d");
        assert_eq!(out, "a\\ b\\,c\\=d");
    }

    #[test]
    fn bodies_built_once_hold_every_point_in_batches() {
        let dataset = Dataset::new(crate::generator::Config::new(1, 3));
        let span = Span { first: 0, count: 4 };
        let bodies = LineBodies::build(&dataset, span, 25).unwrap();
        // 3 hosts x 10 fields x 4 intervals = 120 points: four batches of 25, one of 20.
        assert_eq!(bodies.points(), 120);
        let sizes: Vec<u64> = bodies.batches.iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes, [25, 25, 25, 25, 20]);
        let all: Vec<Sample> = dataset.samples(0, 4).take_batch(1_000);
        let text: String = bodies
            .batches
            .iter()
            .map(|(_, b)| std::str::from_utf8(b).unwrap())
            .collect();
        let fields: usize = text.lines().map(|l| l.matches("usage_").count()).sum();
        assert_eq!(fields, 120);
        assert_eq!(bodies.bytes(), text.len() as u64);
        assert!(text.starts_with(&line_protocol(&dataset, &all[..10])));
        assert!(LineBodies::build(&dataset, span, 0).is_err());
        let target = LineTarget::raftmetrics("http://127.0.0.1:8080/", "t");
        assert_eq!(target.url, "http://127.0.0.1:8080/write?precision=u");
        assert_eq!(target.auth.as_deref(), Some("Token t"));
    }

    #[test]
    fn latency_percentiles_are_nearest_rank() {
        let report = LoadReport {
            points: 1_000,
            elapsed: Duration::from_secs(2),
            started: Instant::now(),
            latencies_micros: (1..=100).collect(),
            timeline_micros: Vec::new(),
        };
        assert_eq!(report.points_per_second(), 500.0);
        assert_eq!(report.latency(0.5), Duration::from_micros(50));
        assert_eq!(report.latency(0.99), Duration::from_micros(99));
        assert_eq!(report.latency(1.0), Duration::from_micros(100));
        assert_eq!(report.latency(0.0), Duration::from_micros(1));
    }

    #[test]
    fn the_timeline_lists_requests_in_the_order_they_were_sent() {
        let report = LoadReport {
            points: 3_000,
            elapsed: Duration::from_secs(1),
            started: Instant::now(),
            latencies_micros: vec![900, 2_000, 45_500],
            timeline_micros: vec![
                (0, 2_000, 1_000),
                (25_000, 45_500, 1_000),
                (50_000, 900, 1_000),
            ],
        };
        let mut out = Vec::new();
        report.write_timeline(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "sent_ms,latency_ms\n0.000,2.000\n25.000,45.500\n50.000,0.900\n"
        );
    }

    #[test]
    fn a_window_takes_the_latencies_of_requests_due_in_it_and_the_points_acked_in_it() {
        let report = LoadReport {
            points: 4_000,
            elapsed: Duration::from_secs(4),
            started: Instant::now(),
            latencies_micros: Vec::new(),
            // Due at 0.5 s, 1.5 s (acked at 2.1 s), 2.5 s and 3.5 s.
            timeline_micros: vec![
                (500_000, 10_000, 1_000),
                (1_500_000, 600_000, 1_000),
                (2_500_000, 30_000, 500),
                (3_500_000, 20_000, 1_000),
            ],
        };
        let first = report.window(Duration::ZERO, Duration::from_secs(2));
        assert_eq!(first.requests, 2);
        assert_eq!(
            first.points, 1_000,
            "the second request was acknowledged after 2 s"
        );
        assert_eq!(first.p50, Duration::from_millis(10));
        assert_eq!(first.p99, Duration::from_millis(600));
        assert_eq!(first.points_per_second(), 500.0);
        let second = report.window(Duration::from_secs(2), Duration::from_secs(4));
        assert_eq!(second.requests, 2);
        assert_eq!(second.points, 2_500);
        assert_eq!(second.p99, Duration::from_millis(30));
        let empty = report.window(Duration::from_secs(9), Duration::from_secs(10));
        assert_eq!((empty.requests, empty.points), (0, 0));
        assert_eq!(empty.p99, Duration::ZERO);
    }
}

/// Posts line protocol bodies to a [`LineTarget`]; any 2xx answer acknowledges.
#[derive(Clone)]
struct LineProtocolSender {
    http: reqwest::Client,
    target: LineTarget,
}

impl LineProtocolSender {
    fn new(target: LineTarget) -> LineProtocolSender {
        LineProtocolSender {
            http: reqwest::Client::new(),
            target,
        }
    }

    async fn post(&self, body: Bytes) -> Result<()> {
        let mut request = self
            .http
            .post(&self.target.url)
            .timeout(REQUEST_TIMEOUT)
            .body(body);
        if let Some(auth) = &self.target.auth {
            request = request.header("Authorization", auth);
        }
        let answer = request
            .send()
            .await
            .map_err(|e| BenchError::Task(format!("line protocol write: {e}")))?;
        let status = answer.status();
        if !status.is_success() {
            let text = answer.text().await.unwrap_or_default();
            return Err(BenchError::Task(format!(
                "line protocol write to {} answered {status}: {text}",
                self.target.url
            )));
        }
        Ok(())
    }
}

/// The line protocol of `samples`: one line per host and timestamp, measurement `cpu`, the
/// host's tags, its fields (`cpu_usage_user`, ... once stored), microsecond timestamps.
pub fn line_protocol(dataset: &Dataset, samples: &[Sample]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(samples.len() * 40);
    let mut current: Option<(u32, i64)> = None;
    for s in samples {
        if current != Some((s.host, s.ts)) {
            if current.is_some() {
                let _ = writeln!(out, " {}", current.map_or(0, |c| c.1));
            }
            current = Some((s.host, s.ts));
            out.push_str("cpu");
            for (k, v) in &dataset.hosts[s.host as usize].tags {
                out.push(',');
                escape_key(&mut out, k);
                out.push('=');
                escape_key(&mut out, v);
            }
            out.push(' ');
        } else {
            out.push(',');
        }
        let _ = write!(out, "{}={}", FIELDS[usize::from(s.field)], s.value);
    }
    if let Some((_, ts)) = current {
        let _ = writeln!(out, " {ts}");
    }
    out
}

/// A tag key or value with the line protocol's escapes (comma, equals sign, space).
fn escape_key(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, ',' | '=' | ' ') {
            out.push('\\');
        }
        out.push(c);
    }
}
