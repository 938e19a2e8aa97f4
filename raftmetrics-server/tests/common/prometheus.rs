//! A real Prometheus server for tests: Debian's `prometheus` (or the binary named by
//! `RAFTMETRICS_PROMETHEUS`) as a child process on a free loopback port, with its own
//! configuration and data directory, and the few requests the tests make of it.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The Prometheus server binary (`RAFTMETRICS_PROMETHEUS`, by default
/// `/usr/bin/prometheus`), or why there is none. Prints its version.
pub fn binary() -> Result<PathBuf, String> {
    let path = std::env::var_os("RAFTMETRICS_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    let out = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| format!("no prometheus at {}: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!("{} --version failed", path.display()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", text.lines().next().unwrap_or_default());
    Ok(path)
}

/// `(count, sum, min, max)` of samples; `min`, `max` are `None` for none.
pub type SampleStats = (u64, f64, Option<f64>, Option<f64>);

/// A Prometheus server of the test: killed when dropped if still running.
pub struct Prometheus {
    pub child: tokio::process::Child,
    pub port: u16,
    pub dir: PathBuf,
    pub http: reqwest::Client,
}

impl Prometheus {
    /// Starts `binary` in `dir` with the configuration text `config` (written to
    /// `dir/prometheus.yml`; files it names must be in `dir` already), its TSDB in
    /// `dir/tsdb`, the lifecycle API on and the flags `extra` (e.g.
    /// `--web.enable-remote-write-receiver`), on a free loopback port; waits until it is
    /// ready.
    pub async fn start(binary: &Path, dir: &Path, config: &str, extra: &[&str]) -> Prometheus {
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap();
        // A port the kernel just handed out may be taken again before Prometheus binds it:
        // a few attempts.
        for attempt in 1..=3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
            let child = tokio::process::Command::new(binary)
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-lifecycle")
                .arg("--log.level=info")
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("start prometheus");
            let mut p = Prometheus {
                child,
                port,
                dir: dir.to_path_buf(),
                http: http.clone(),
            };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                if let Some(status) = p.child.try_wait().unwrap() {
                    let log = p.log();
                    if attempt < 3 && log.contains("address already in use") {
                        break;
                    }
                    panic!("prometheus exited during startup ({status}):\n{log}");
                }
                if let Ok(resp) = p.http.get(p.url("/-/ready")).send().await
                    && resp.status() == 200
                {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if p.child.try_wait().unwrap().is_none() {
                panic!("prometheus not ready after 60 s:\n{}", p.log());
            }
        }
        unreachable!("prometheus found no free port in 3 attempts")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What it wrote to its standard error.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The value of the one series `query` answers at `time` (Unix seconds); `None` when
    /// it answers none.
    pub async fn scalar(&self, query: &str, time: f64) -> Option<f64> {
        let resp = self
            .http
            .get(self.url("/api/v1/query"))
            .query(&[("query", query), ("time", &format!("{time:.3}"))])
            .send()
            .await
            .expect("prometheus query");
        let body = super::json_of(resp).await;
        assert_eq!(body["status"], "success", "{query}: {body}");
        let result = body["data"]["result"].as_array().expect("a vector");
        assert!(result.len() <= 1, "{query}: more than one series: {body}");
        let value = result.first()?["value"][1].as_str().expect("a sample");
        Some(value.parse().expect("a number"))
    }

    /// `(count, sum, min, max)` of the samples of `selector` in the hour up to `time`.
    pub async fn stats(&self, selector: &str, time: f64) -> SampleStats {
        let over = |f: &str| format!("{f}_over_time({selector}[1h])");
        let count = self.scalar(&over("count"), time).await.unwrap_or(0.0);
        let sum = self.scalar(&over("sum"), time).await.unwrap_or(0.0);
        let min = self.scalar(&over("min"), time).await;
        let max = self.scalar(&over("max"), time).await;
        (count as u64, sum, min, max)
    }

    /// Prometheus' own metrics (its remote write counters tell what it sent or gave up).
    pub async fn own_metrics(&self) -> String {
        let resp = self.http.get(self.url("/metrics")).send().await;
        match resp {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("(no metrics: {e})"),
        }
    }

    /// Sends SIGTERM and waits for the exit, at most `limit`.
    pub async fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let pid = self.child.id().expect("prometheus is running") as i32;
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM prometheus");
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|r| r.expect("wait for prometheus"))
    }
}
