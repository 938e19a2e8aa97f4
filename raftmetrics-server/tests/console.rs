//! The web console (`GET /` on a control node) in a real browser: Debian's headless
//! Chromium, driven over the Chrome DevTools Protocol (a websocket), against a real
//! cluster holding known points.
//!
//! The browser loads the page without a token, is refused with a wrong token, signs in
//! with the right one (typed into the login field), runs an `/aggregate` query grouped by
//! a tag and a PromQL query over a custom range, and shows the cluster, before and after a
//! worker is killed; after each step the DOM is read back: the chart's series paths, their
//! points and the gap in one series' line, the table's rows and values, the workers and
//! partitions (in red once under-replicated). The token must be nowhere but in the page's
//! memory: not in local or session storage, a cookie, the URL, the DOM or a requested URL.
//! No script error and no Content Security Policy violation may be reported. Screenshots
//! are saved under the target directory and their paths printed.
//!
//! Without Chromium (`RAFTMETRICS_CHROMIUM`, by default `/usr/bin/chromium`) the test says
//! why and passes, unless `RAFTMETRICS_REQUIRE_CLIENTS=1`: then it fails. `.ci/run`
//! installs it and sets that.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{DevCluster, TOKEN};
use futures_util::{SinkExt, StreamExt};
use raftmetrics_core::Timestamp;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const METRIC: &str = "console_cpu";
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// Points per series, one a minute.
const POINTS: i64 = 20;
const WAIT: Duration = Duration::from_secs(30);

/// A missing client: a failure under `RAFTMETRICS_REQUIRE_CLIENTS=1`, otherwise a skip
/// that says why.
fn missing_client(why: &str) {
    if std::env::var("RAFTMETRICS_REQUIRE_CLIENTS").as_deref() == Ok("1") {
        panic!("{why} (RAFTMETRICS_REQUIRE_CLIENTS=1: the clients must be installed)");
    }
    eprintln!("SKIPPED: {why}; set RAFTMETRICS_REQUIRE_CLIENTS=1 to fail instead");
}

/// The Chromium binary, or why there is none.
fn chromium() -> Result<PathBuf, String> {
    let path = std::env::var_os("RAFTMETRICS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !path.exists() {
        return Err(format!("no Chromium at {}", path.display()));
    }
    Ok(path)
}

/// A headless Chromium with a profile of its own; stopped when dropped.
struct Browser {
    child: Child,
    /// Its DevTools websocket (`ws://127.0.0.1:<port>/devtools/browser/<id>`).
    ws_url: String,
    /// The last lines it wrote to stderr, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(path: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(path)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--remote-debugging-port=0",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--password-store=basic",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        let stderr = child.stderr.take().expect("chromium stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let kept = Arc::clone(&log);
        // Reads stderr to its end (so Chromium never blocks on a full pipe), handing over
        // the DevTools address once it appears.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://")
                    && line.contains("DevTools listening on")
                {
                    let _ = tx.send(line[at..].trim().to_string());
                }
                let mut kept = kept.lock().unwrap();
                kept.push(line);
                if kept.len() > 200 {
                    kept.remove(0);
                }
            }
        });
        let mut browser = Browser {
            child,
            ws_url: String::new(),
            log,
            _profile: profile,
        };
        match rx.recv_timeout(WAIT) {
            Ok(url) => browser.ws_url = url,
            Err(_) => panic!(
                "Chromium did not print its DevTools address within {WAIT:?}:\n{}",
                browser.log()
            ),
        }
        browser
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A page (tab) of the browser, driven over the browser's DevTools websocket through a
/// flattened session.
struct Page {
    socket: Socket,
    next_id: u64,
    session: Option<String>,
    /// Events received so far (`Runtime.exceptionThrown`, `Log.entryAdded`, ...).
    events: Vec<Value>,
}

impl Page {
    async fn open(ws_url: &str) -> Page {
        let (socket, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .expect("connect to the DevTools websocket");
        let mut page = Page {
            socket,
            next_id: 0,
            session: None,
            events: Vec::new(),
        };
        let target = page
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        page.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("session id")
                .to_string(),
        );
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({})).await;
        }
        page
    }

    /// Sends a command (to the page's session once attached) and waits for its answer.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send a DevTools command");
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {WAIT:?}"))
                .expect("the DevTools websocket closed")
                .expect("read the DevTools websocket");
            let Message::Text(text) = frame else { continue };
            let value: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if value["id"] == json!(id) {
                if let Some(error) = value.get("error") {
                    panic!("{method} failed: {error}");
                }
                return value["result"].clone();
            }
            if value.get("method").is_some() {
                self.events.push(value);
            }
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    async fn eval(&mut self, expression: &str) -> Value {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = answer.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        answer["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    async fn wait_for(&mut self, expression: &str, what: &str) {
        let deadline = Instant::now() + WAIT;
        while self.eval(expression).await != json!(true) {
            if Instant::now() > deadline {
                let status = self
                    .eval("document.getElementById('status')?.textContent")
                    .await;
                panic!("{what}: not within {WAIT:?} (page status: {status})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A left click in the middle of the element `selector`, as a user's mouse makes it.
    async fn click(&mut self, selector: &str) {
        let found = self
            .eval(&format!(
                "(() => {{ const el = document.querySelector({sel}); if (!el) return null;
                   el.scrollIntoView({{block: 'center'}}); const r = el.getBoundingClientRect();
                   return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
                sel = json!(selector)
            ))
            .await;
        let (x, y) = match found.as_array().map(Vec::as_slice) {
            Some([x, y]) => (x.clone(), y.clone()),
            _ => panic!("no element {selector} to click"),
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Clicks into the field `selector`, selects what it holds and types `text` over it.
    async fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector).await;
        self.eval(&format!(
            "document.querySelector({}).select()",
            json!(selector)
        ))
        .await;
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// Clicks Run and waits until the page has drawn the answer.
    async fn run_query(&mut self) {
        let before = self
            .eval("Number(document.body.dataset.run || 0)")
            .await
            .as_u64()
            .expect("run counter");
        self.click("#run").await;
        self.wait_for(
            &format!(
                "Number(document.body.dataset.run) > {before} \
                 && document.body.dataset.state !== 'running'"
            ),
            "the query's answer",
        )
        .await;
        let state = self.eval("document.body.dataset.state").await;
        let status = self
            .eval("document.getElementById('status').textContent")
            .await;
        assert_eq!(state, "done", "the query failed: {status}");
        eprintln!("query answered: {status}");
    }

    /// Saves a PNG of the whole page to `path`.
    async fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::write(path, png).expect("write the screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    /// The chart's series as (label, points, subpaths).
    async fn chart(&mut self) -> Vec<(String, u64, usize)> {
        let series = self
            .eval(
                "[...document.querySelectorAll('#chart svg path[data-series]')].map(p => \
                 [p.dataset.label, Number(p.dataset.points), \
                  (p.getAttribute('d').match(/M/g) || []).length])",
            )
            .await;
        series
            .as_array()
            .expect("series")
            .iter()
            .map(|s| {
                (
                    s[0].as_str().expect("label").to_string(),
                    s[1].as_u64().expect("points"),
                    s[2].as_u64().expect("subpaths") as usize,
                )
            })
            .collect()
    }

    /// The table's rows as (series, time in ms, value text).
    async fn table(&mut self) -> BTreeSet<(String, i64, String)> {
        let rows = self
            .eval(
                "[...document.querySelectorAll('#table tbody tr')].map(tr => \
                 [tr.cells[0].textContent, Number(tr.dataset.time), tr.cells[2].textContent])",
            )
            .await;
        rows.as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r[0].as_str().expect("series").to_string(),
                    r[1].as_i64().expect("time"),
                    r[2].as_str().expect("value").to_string(),
                )
            })
            .collect()
    }

    /// Asserts that the token is in none of the places a page can keep or leak it.
    async fn assert_token_kept_in_memory_only(&mut self) {
        let places = self
            .eval(
                "({local: Object.keys(localStorage).map(k => k + '=' + localStorage.getItem(k)).join(';'),
                   session: Object.keys(sessionStorage).map(k => k + '=' + sessionStorage.getItem(k)).join(';'),
                   cookie: document.cookie,
                   url: location.href,
                   field: document.getElementById('token').value,
                   dom: document.documentElement.outerHTML,
                   requested: performance.getEntriesByType('resource').map(e => e.name).join(' ')})",
            )
            .await;
        for (place, text) in places.as_object().expect("places") {
            assert!(
                !text.as_str().unwrap_or_default().contains(TOKEN),
                "the token is in the page's {place}"
            );
        }
    }
}

/// The value of host `h`'s point `k` (distinct per series).
fn value(h: usize, k: i64) -> i64 {
    (h as i64 + 1) * 100 + k
}

/// Whether host `h` has its point `k`: the last host has none for eight minutes
/// ([`GAP`]), longer than PromQL's five-minute lookback, so its line is broken in two.
fn has_point(h: usize, k: i64) -> bool {
    h + 1 < HOSTS.len() || !GAP.contains(&k)
}

/// The minutes without a point of the last host.
const GAP: std::ops::RangeInclusive<i64> = 5..=12;

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the epoch (UTC): a `datetime-local` value.
fn local_input(secs: i64) -> String {
    Timestamp::from_micros(secs * 1_000_000).to_rfc3339_micros()[..19].to_string()
}

/// The rows the table must hold for the points written, `label` naming a host's series:
/// (series, time in ms, value).
fn rows_of(times: &[i64], label: impl Fn(&str) -> String) -> BTreeSet<(String, i64, String)> {
    let mut rows = BTreeSet::new();
    for (h, host) in HOSTS.iter().enumerate() {
        for (k, t) in times.iter().enumerate() {
            if has_point(h, k as i64) {
                rows.insert((label(host), t * 1000, value(h, k as i64).to_string()));
            }
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_headless_browser() {
    let chromium = match chromium() {
        Ok(path) => path,
        Err(why) => return missing_client(&why),
    };
    let c = DevCluster::start(3, 3, 8, &[]).await;

    // The page and its assets need no token; the API still does.
    let page = c.http.get(c.url("/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert_eq!(
        header("content-security-policy"),
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
         connect-src 'self'"
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("cache-control"), "no-store");
    for path in ["/console.js", "/console.css"] {
        let asset = c.http.get(c.url(path)).send().await.expect("asset");
        assert_eq!(asset.status(), 200, "{path}");
    }
    for path in [
        "/health",
        "/admin/workers",
        "/aggregate?metric=x",
        "/api/v1/query_range?query=x",
        "/nothing",
    ] {
        let refused = c.http.get(c.url(path)).send().await.expect("request");
        assert_eq!(refused.status(), 401, "{path} without a token");
    }

    // Known points: three series, one point a minute for POINTS minutes (the last host's
    // with a gap), the last one on the minute boundary a minute or two ago.
    let now = Timestamp::now().as_micros() / 1_000_000;
    let last = (now / 60 - 1) * 60;
    let times: Vec<i64> = (0..POINTS).map(|k| last - (POINTS - 1 - k) * 60).collect();
    let mut points = Vec::new();
    for (h, host) in HOSTS.iter().enumerate() {
        for (k, t) in times.iter().enumerate() {
            if has_point(h, k as i64) {
                points.push(json!({"metric": METRIC, "value": value(h, k as i64),
                    "timestamp": Timestamp::from_micros(t * 1_000_000).to_rfc3339(),
                    "tags": {"host": host}}));
            }
        }
    }
    let (status, body) = c.post_json(&c.url("/insert"), &json!(points)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["points"], json!(points.len()));
    let gapped = POINTS as u64 - GAP.count() as u64;

    let browser = Browser::launch(&chromium);
    let mut page = Page::open(&browser.ws_url).await;
    page.call(
        "Emulation.setTimezoneOverride",
        json!({"timezoneId": "UTC"}),
    )
    .await;
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 1100, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    // Content Security Policy violations, as the page itself sees them (from its start).
    page.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({"source": "window.cspViolations = []; document.addEventListener(\
            'securitypolicyviolation', e => window.cspViolations.push(\
            e.violatedDirective + ' ' + e.blockedURI));"}),
    )
    .await;
    page.call("Page.navigate", json!({"url": c.url("/")})).await;
    page.wait_for(
        "document.readyState === 'complete' && !!document.getElementById('token') \
         && !document.getElementById('login').hidden",
        "the login form",
    )
    .await;

    // A wrong token: refused, the login stays.
    page.type_into("#token", "not-a-configured-token").await;
    page.click("#login-submit").await;
    page.wait_for(
        "document.getElementById('login-error').textContent.includes('refused')",
        "the refusal of a wrong token",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('query-view').hidden")
            .await,
        true
    );

    // The right token.
    page.type_into("#token", TOKEN).await;
    page.click("#login-submit").await;
    page.wait_for(
        "!document.getElementById('query-view').hidden && document.getElementById('login').hidden",
        "the query view after signing in",
    )
    .await;
    page.assert_token_kept_in_memory_only().await;

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    // `/aggregate`: the metric by host, one bucket a minute over the last hour. A bucket
    // per point; the gap breaks the last host's line in two.
    page.click("#mode-aggregate").await;
    page.type_into("#metric", METRIC).await;
    page.type_into("#group-by", "host").await;
    page.type_into("#agg", "avg").await;
    page.type_into("#step", "1m").await;
    page.run_query().await;
    let label = |host: &str| format!("avg({METRIC}){{host=\"{host}\"}}");
    assert_eq!(
        page.chart().await,
        vec![
            (label("h1"), POINTS as u64, 1),
            (label("h2"), POINTS as u64, 1),
            (label("h3"), gapped, 2),
        ],
        "a line per host: (label, points, pieces)"
    );
    assert_eq!(page.table().await, rows_of(&times, label));
    assert_eq!(
        page.eval("document.querySelectorAll('#legend li').length")
            .await,
        json!(HOSTS.len())
    );
    page.screenshot(&shots.join("aggregate.png")).await;

    // PromQL: the metric itself over exactly the points' span, a step a minute. A series
    // holds its last value for five minutes (the lookback), so the last host's line runs
    // on into the gap and breaks where the lookback ends.
    page.click("#mode-promql").await;
    page.type_into("#promql", METRIC).await;
    page.eval(&format!(
        "(() => {{ const range = document.getElementById('range'); range.value = 'custom';
           range.dispatchEvent(new Event('change'));
           document.getElementById('from').value = '{}';
           document.getElementById('to').value = '{}'; }})()",
        local_input(times[0]),
        local_input(last)
    ))
    .await;
    page.type_into("#step", "60s").await;
    page.run_query().await;
    let label = |host: &str| format!("{METRIC}{{host=\"{host}\"}}");
    let chart = page.chart().await;
    assert_eq!(
        chart[..2],
        [
            (label("h1"), POINTS as u64, 1),
            (label("h2"), POINTS as u64, 1)
        ]
    );
    let (h3, h3_points, h3_pieces) = &chart[2];
    assert_eq!((h3.as_str(), *h3_pieces), (label("h3").as_str(), 2));
    assert!(
        (gapped..POINTS as u64).contains(h3_points),
        "{h3_points} points"
    );
    let table = page.table().await;
    let written = rows_of(&times, label);
    assert!(written.is_subset(&table), "every point is in the table");
    let before_gap = value(HOSTS.len() - 1, GAP.start() - 1).to_string();
    for extra in table.difference(&written) {
        assert_eq!(
            (extra.0.as_str(), extra.2.as_str()),
            (label("h3").as_str(), before_gap.as_str()),
            "only the lookback into the gap adds rows"
        );
    }
    page.screenshot(&shots.join("promql.png")).await;

    // The cluster: three live active workers, every partition with its live replicas.
    page.click("#nav-cluster").await;
    page.wait_for(
        "document.getElementById('cluster-view').dataset.loaded === 'true' \
         && document.querySelectorAll('#workers tbody tr').length === 3 \
         && document.querySelectorAll('#partitions tbody tr.bad').length === 0",
        "the cluster page",
    )
    .await;
    let workers = "[...document.querySelectorAll('#workers tbody tr')].map(tr => \
         [tr.dataset.worker, tr.cells[2].textContent, tr.cells[3].textContent, tr.className])";
    assert_eq!(
        page.eval(workers).await,
        json!([
            ["1", "active", "yes", ""],
            ["2", "active", "yes", ""],
            ["3", "active", "yes", ""]
        ])
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#partitions tbody tr').length")
            .await,
        json!(8)
    );
    // Replica lag: a number of log entries for every worker and partition, from
    // `/admin/workers`.
    assert_eq!(
        page.eval(
            "[...document.querySelectorAll('#workers tbody tr')].map(tr => tr.cells[8].textContent)
               .concat([...document.querySelectorAll('#partitions tbody tr')]
                 .map(tr => tr.cells[5].textContent))
               .every(t => /^[0-9]+$/.test(t))"
        )
        .await,
        json!(true)
    );
    page.assert_token_kept_in_memory_only().await;

    // Worker 3 killed: it is no longer live and every partition, with two of its three
    // replicas live, is under-replicated; all in red once the page refreshes by itself.
    c.kill_worker(3);
    page.wait_for(
        "(() => { const dead = document.querySelector('#workers tr[data-worker=\"3\"]');
           return !!dead && dead.classList.contains('bad') && dead.cells[3].textContent === 'no'
             && [...document.querySelectorAll('#partitions tbody tr')].every(tr =>
                  tr.classList.contains('bad') && tr.cells[4].textContent === 'under-replicated'
                  && tr.cells[3].textContent === '2 of 3'); })()",
        "worker 3 dead and the partitions under-replicated on the cluster page",
    )
    .await;
    page.screenshot(&shots.join("cluster.png")).await;

    // Signing out forgets the token: the login is back.
    page.click("#logout").await;
    page.wait_for(
        "!document.getElementById('login').hidden && document.getElementById('cluster-view').hidden",
        "the login after signing out",
    )
    .await;

    // No script error, no Content Security Policy violation.
    assert_eq!(page.eval("window.cspViolations").await, json!([]));
    let problems: Vec<&Value> = page
        .events
        .iter()
        .filter(|e| {
            e["method"] == "Runtime.exceptionThrown"
                || (e["method"] == "Log.entryAdded"
                    && e.to_string().contains("Content Security Policy"))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "the page reported: {problems:?}\n{}",
        browser.log()
    );
}
