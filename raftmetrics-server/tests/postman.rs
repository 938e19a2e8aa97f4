//! The Postman collection at the repository root (`RaftMetrics.postman_collection.json`), run
//! against a real local cluster: every request in order, with the collection's variables
//! pointed at the cluster, and every assertion of every test script checked.
//!
//! Test scripts are written with four statement forms only, one per line, which are real
//! Postman/Chai assertions and are read here with plain string handling (see
//! [`parse_statement`]); any other line fails this test, so the collection and this runner
//! cannot drift apart. The collection must also cover every route of both roles ([`ROUTES`],
//! itself checked against the routers in `src/control.rs`, `src/worker.rs` and the protocol
//! modules under `src/http/`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{DevCluster, TOKEN};
use serde_json::{Value, json};

const COLLECTION: &str = include_str!("../../RaftMetrics.postman_collection.json");
const SCHEMA: &str = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json";
const FOLDERS: [&str; 4] = ["Control", "Worker 1", "Worker 2", "Errors"];

/// Every public route: (role, method, path).
const ROUTES: &[(&str, &str, &str)] = &[
    ("control", "POST", "/insert"),
    ("control", "POST", "/metrics"),
    ("control", "GET", "/metrics"),
    ("control", "GET", "/aggregate"),
    ("control", "GET", "/analytics"),
    ("control", "GET", "/health"),
    ("control", "GET", "/ready"),
    ("control", "GET", "/admin/workers"),
    ("control", "POST", "/admin/workers/{id}/drain"),
    ("control", "DELETE", "/admin/workers/{id}"),
    ("control", "POST", "/write"),
    ("control", "POST", "/api/v2/write"),
    ("control", "POST", "/api/v1/write"),
    ("control", "POST", "/api/v1/import"),
    ("control", "GET", "/api/v1/export"),
    ("control", "GET", "/api/v1/export/csv"),
    ("worker", "POST", "/insert"),
    ("worker", "POST", "/write"),
    ("worker", "POST", "/api/v2/write"),
    ("worker", "POST", "/api/v1/write"),
    ("worker", "POST", "/api/v1/import"),
    ("worker", "POST", "/compute"),
    ("worker", "GET", "/health"),
    ("worker", "GET", "/ready"),
    ("worker", "GET", "/metrics"),
];

/// Routes whose success changes the cluster's shape (a drain moves replicas, a removal
/// forgets a worker): the collection shows them refused, and `tests/elastic.rs` runs them
/// for real. They count as covered with any asserted status.
const SHAPE_CHANGING: &[(&str, &str)] = &[
    ("POST", "/admin/workers/{id}/drain"),
    ("DELETE", "/admin/workers/{id}"),
];

/// Routes whose bodies a collection cannot hold: Prometheus remote write takes snappy
/// compressed protobuf, and a Postman body is text. The collection shows one refused, in
/// the Prometheus API's error shape; `tests/protocols.rs` runs a real Prometheus server's
/// remote write. They count as covered with any asserted status.
const BINARY_BODIES: &[(&str, &str)] = &[("POST", "/api/v1/write")];

/// Whether `path` matches the route `template` (`{name}` segments match any one segment).
fn template_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}') && !b.is_empty()))
}

/// The collection's URL variables and the role of the node each names.
const NODES: [(&str, &str); 3] = [
    ("control_url", "control"),
    ("worker1_url", "worker"),
    ("worker2_url", "worker"),
];

/// One assertion of a test script.
#[derive(Debug, PartialEq)]
enum Check {
    /// `pm.response.to.have.status(N)`
    Status(u16),
    /// `pm.expect(pm.response.json()).to.have.nested.property(path[, value])`
    Property { path: String, value: Option<Value> },
    /// `pm.expect(pm.response.text()).to.include(text)`
    Includes(String),
}

/// Parses one line of a test script: `pm.test("<name>", () => <assertion>);`.
fn parse_statement(line: &str) -> Result<(String, Check), String> {
    let inner = line
        .strip_prefix("pm.test(")
        .and_then(|s| s.strip_suffix(");"))
        .ok_or("not a `pm.test(...);` statement")?;
    let mut stream = serde_json::Deserializer::from_str(inner).into_iter::<Value>();
    let Some(Ok(Value::String(name))) = stream.next() else {
        return Err("the test name must be a string literal".into());
    };
    let body = inner[stream.byte_offset()..]
        .strip_prefix(", () => ")
        .ok_or("expected `, () => ` after the test name")?;
    let call = |prefix: &str| body.strip_prefix(prefix).and_then(|s| s.strip_suffix(')'));
    let check = if let Some(code) = call("pm.response.to.have.status(") {
        Check::Status(code.parse().map_err(|_| format!("bad status {code:?}"))?)
    } else if let Some(args) = call("pm.expect(pm.response.json()).to.have.nested.property(") {
        let args: Vec<Value> = serde_json::from_str(&format!("[{args}]"))
            .map_err(|e| format!("arguments are not JSON literals: {e}"))?;
        match <[Value; 1]>::try_from(args.clone()) {
            Ok([Value::String(path)]) => Check::Property { path, value: None },
            _ => match <[Value; 2]>::try_from(args) {
                Ok([Value::String(path), value]) if !value.is_object() && !value.is_array() => {
                    Check::Property {
                        path,
                        value: Some(value),
                    }
                }
                _ => return Err("expected a path, then at most one primitive value".into()),
            },
        }
    } else if let Some(arg) = call("pm.expect(pm.response.text()).to.include(") {
        match serde_json::from_str(arg) {
            Ok(Value::String(text)) => Check::Includes(text),
            _ => return Err("to.include takes one string literal".into()),
        }
    } else {
        return Err("unknown assertion".into());
    };
    Ok((name, check))
}

/// The value at a Chai nested path (`a.b[0].c`, or `a.b.0.c`); `Some(Null)` when present
/// but null.
fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.replace('[', ".[")
        .split('.')
        .filter(|s| !s.is_empty())
        .try_fold(doc, |v, seg| {
            let key = seg
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or(seg);
            match v {
                Value::Object(map) => map.get(key),
                Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            }
        })
}

/// Chai's `===` on JSON primitives.
fn strictly_equal(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => got == want,
    }
}

/// Why `check` fails on a response, if it does.
fn failure(check: &Check, status: u16, body: &str) -> Option<String> {
    match check {
        Check::Status(want) => (status != *want).then(|| format!("status {status}, want {want}")),
        Check::Property { path, value } => {
            let Ok(doc) = serde_json::from_str::<Value>(body) else {
                return Some("the response is not JSON".into());
            };
            match (lookup(&doc, path), value) {
                (None, _) => Some(format!("no property {path}")),
                (Some(got), Some(want)) if !strictly_equal(got, want) => {
                    Some(format!("{path} is {got}, want {want}"))
                }
                _ => None,
            }
        }
        Check::Includes(text) => (!body.contains(text.as_str()))
            .then(|| format!("the response does not include {text:?}")),
    }
}

/// `{{name}}` replaced by the variable's value.
fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    assert!(!out.contains("{{"), "unknown variable in {text:?}");
    out
}

/// The (method, path) pairs a router declares: lines `.route("/path", post(a).get(b))`.
/// The text of the function starting with `signature` in `source`, to its closing brace.
fn fn_text<'a>(source: &'a str, signature: &str) -> &'a str {
    let start = source
        .find(signature)
        .expect("the function is in the source");
    let end = source[start..]
        .find("\n}\n")
        .map_or(source.len(), |e| start + e + 3);
    &source[start..end]
}

fn declared_routes(source: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for rest in source.split(".route(\"").skip(1) {
        let rest = rest.lines().next().unwrap_or_default();
        let (path, handlers) = rest.split_once('"').expect("a quoted route path");
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = handlers
                .match_indices(&format!("{method}("))
                .any(|(i, _)| !handlers[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
            if called {
                routes.insert((method.to_uppercase(), path.to_string()));
            }
        }
    }
    routes
}

/// Every request of the collection in order, with its folder.
fn requests(collection: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for folder in collection["item"].as_array().expect("folders") {
        let name = folder["name"].as_str().expect("folder name");
        assert!(
            folder.get("event").is_none() && folder.get("auth").is_none(),
            "{name}: folder-level scripts and auth are not supported here"
        );
        for item in folder["item"].as_array().expect("a folder's requests") {
            assert!(item.get("item").is_none(), "{name}: nested folders");
            let title = item["name"].as_str().expect("request name");
            out.push((format!("{name} / {title}"), item));
        }
    }
    out
}

/// The test-script assertions of a request.
fn checks(item: &Value) -> Result<Vec<(String, Check)>, String> {
    let events = item["event"].as_array().ok_or("no events")?;
    if events.iter().any(|e| e["listen"] != "test") {
        return Err("only test scripts are run here (no pre-request scripts)".into());
    }
    let script = events
        .iter()
        .find(|e| e["listen"] == "test")
        .ok_or("no test script")?;
    let lines = script["script"]["exec"]
        .as_array()
        .ok_or("no script lines")?;
    lines
        .iter()
        .map(|l| {
            let line = l.as_str().ok_or("a script line is not a string")?;
            parse_statement(line).map_err(|e| format!("{e}: {line}"))
        })
        .collect()
}

/// Checks that `url.raw` says what `host`, `path` and `query` say (Postman sends the parts).
fn check_url_parts(url: &Value) -> Result<(), String> {
    let raw = url["raw"].as_str().ok_or("no url.raw")?;
    let part = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let host: Vec<String> = url["host"]
        .as_array()
        .ok_or("no url.host")?
        .iter()
        .map(part)
        .collect();
    let path: Vec<String> = url["path"]
        .as_array()
        .ok_or("no url.path")?
        .iter()
        .map(part)
        .collect();
    let mut built = format!("{}/{}", host.join("."), path.join("/"));
    if let Some(query) = url["query"].as_array() {
        let pairs: Vec<String> = query
            .iter()
            .map(|q| format!("{}={}", part(&q["key"]), part(&q["value"])))
            .collect();
        built = format!("{built}?{}", pairs.join("&"));
    }
    (built == raw)
        .then_some(())
        .ok_or(format!("url.raw {raw:?} but its parts say {built:?}"))
}

/// Sends one request of the collection; answers the status and the body text.
async fn send(
    c: &DevCluster,
    request: &Value,
    default_auth: &Value,
    vars: &BTreeMap<String, String>,
) -> (u16, String) {
    let method = request["method"].as_str().expect("method");
    let url = substitute(request["url"]["raw"].as_str().expect("url.raw"), vars);
    let mut req = c.http.request(method.parse().expect("HTTP method"), url);
    for h in request["header"].as_array().into_iter().flatten() {
        if h["disabled"] != true {
            let (key, value) = (h["key"].as_str().expect("header key"), &h["value"]);
            req = req.header(key, substitute(value.as_str().expect("header"), vars));
        }
    }
    let auth = request.get("auth").unwrap_or(default_auth);
    match auth["type"].as_str() {
        Some("noauth") => {}
        Some("bearer") => {
            let token = auth["bearer"]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["key"] == "token"))
                .and_then(|e| e["value"].as_str())
                .expect("a bearer token");
            req = req.bearer_auth(substitute(token, vars));
        }
        other => panic!("unsupported auth type {other:?}"),
    }
    if let Some(body) = request.get("body") {
        assert_eq!(body["mode"], "raw", "only raw bodies");
        req = req.body(substitute(body["raw"].as_str().expect("raw body"), vars));
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Counts the points of an acknowledged insert body per metric.
fn count_points(body: &str, written: &mut BTreeMap<String, u64>) {
    let doc: Value = serde_json::from_str(body).expect("insert bodies are JSON");
    let points = match doc {
        Value::Array(points) => points,
        point => vec![point],
    };
    for p in points {
        let metric = p.get("metric").or_else(|| p.get("key"));
        let metric = metric.and_then(Value::as_str).unwrap_or("value");
        *written.entry(metric.to_string()).or_default() += 1;
    }
}

/// Counts the points of an acknowledged line protocol body per metric (`<measurement>_<field>`;
/// the collection's lines use no escapes and no string fields).
fn count_lines(body: &str, written: &mut BTreeMap<String, u64>) {
    for line in body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut parts = line.split(' ');
        let measurement = parts
            .next()
            .unwrap_or_default()
            .split(',')
            .next()
            .unwrap_or_default();
        for field in parts.next().expect("a field set").split(',') {
            let name = field.split('=').next().unwrap_or_default();
            *written.entry(format!("{measurement}_{name}")).or_default() += 1;
        }
    }
}

/// Counts the points of an acknowledged import body (JSON lines) per metric.
fn count_imported(body: &str, written: &mut BTreeMap<String, u64>) {
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let doc: Value = serde_json::from_str(line).expect("import lines are JSON");
        let metric = doc["metric"]["__name__"].as_str().expect("a __name__");
        let values = doc["values"].as_array().expect("values").len() as u64;
        *written.entry(metric.to_string()).or_default() += values;
    }
}

/// Waits until every acknowledged point can be read through the control node and on every
/// worker (with two workers and replication factor 2, each holds every partition).
async fn wait_readable(c: &DevCluster, written: &BTreeMap<String, u64>) {
    let start = Instant::now();
    'poll: loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "acknowledged points not readable after 20 s: {written:?}"
        );
        for (metric, &n) in written {
            let (_, doc) = c
                .get_json(&c.url(&format!("/aggregate?metric={metric}&agg=count")))
                .await;
            let mut counts = vec![doc["aggregations"]["count"].as_u64()];
            for w in 1..=c.workers {
                let query = json!({"metric": metric, "aggregations": ["count"]});
                let (_, doc) = c.post_json(&c.worker_url(w, "/compute"), &query).await;
                counts.push(doc["count"].as_u64());
            }
            if counts.iter().any(|&got| got != Some(n)) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'poll;
            }
        }
        return;
    }
}

#[test]
fn statement_forms_parse() {
    let ok = [
        (
            r#"pm.test("status", () => pm.response.to.have.status(200));"#,
            Check::Status(200),
        ),
        (
            r#"pm.test("code", () => pm.expect(pm.response.json()).to.have.nested.property("code", "AUTH_ERROR"));"#,
            Check::Property {
                path: "code".into(),
                value: Some(json!("AUTH_ERROR")),
            },
        ),
        (
            r#"pm.test("a, b", () => pm.expect(pm.response.json()).to.have.nested.property("a.b[0]"));"#,
            Check::Property {
                path: "a.b[0]".into(),
                value: None,
            },
        ),
        (
            r#"pm.test("up", () => pm.expect(pm.response.text()).to.include("node_up"));"#,
            Check::Includes("node_up".into()),
        ),
    ];
    for (line, want) in ok {
        assert_eq!(parse_statement(line).expect(line).1, want);
    }
    for bad in [
        r#"pm.test("status", () => pm.response.to.have.status(200))"#,
        r#"pm.test("x", () => pm.expect(pm.response.json()).to.have.property("a"));"#,
        r#"pm.test("x", () => pm.expect(pm.response.json()).to.have.nested.property("a", {"b": 1}));"#,
        r#"pm.test("x", function () { pm.response.to.have.status(200); });"#,
        "",
    ] {
        assert!(parse_statement(bad).is_err(), "{bad}");
    }
    let doc = json!({"a": {"b": [{"c": null}, 5]}});
    assert_eq!(lookup(&doc, "a.b[0].c"), Some(&Value::Null));
    assert_eq!(lookup(&doc, "a.b.1"), Some(&json!(5)));
    assert_eq!(lookup(&doc, "a.b[2]"), None);
    assert!(strictly_equal(&json!(66), &json!(66.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postman_collection_runs_against_a_cluster() {
    let collection: Value = serde_json::from_str(COLLECTION).expect("the collection is JSON");
    assert_eq!(collection["info"]["schema"], SCHEMA);
    assert!(
        collection.get("event").is_none(),
        "collection-level scripts are not run here"
    );
    let folders: Vec<&str> = collection["item"]
        .as_array()
        .expect("folders")
        .iter()
        .map(|f| f["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(folders, FOLDERS);
    let declared: BTreeSet<String> = collection["variable"]
        .as_array()
        .expect("collection variables")
        .iter()
        .map(|v| v["key"].as_str().expect("variable key").to_string())
        .collect();
    let expected: BTreeSet<String> = NODES
        .iter()
        .map(|(var, _)| var.to_string())
        .chain(["token".to_string()])
        .collect();
    assert_eq!(declared, expected, "collection variables");

    // The route list is the routers' own: each role's own routes, and the API reference's
    // (`http/seed.rs`: inserts on both roles, queries on the control node).
    // The other protocols' modules: writes on both roles, exports on the control node.
    let seed = include_str!("../src/http/seed.rs");
    let writes = [
        fn_text(include_str!("../src/http/influx.rs"), "pub fn routes"),
        fn_text(include_str!("../src/http/remote_write.rs"), "pub fn routes"),
        fn_text(include_str!("../src/http/import.rs"), "pub fn routes"),
    ]
    .concat();
    let control = [
        include_str!("../src/control.rs"),
        fn_text(seed, "fn insert_routes"),
        fn_text(seed, "fn query_routes"),
        &writes,
        fn_text(include_str!("../src/http/export.rs"), "pub fn routes"),
    ]
    .concat();
    let worker = [
        include_str!("../src/worker.rs"),
        fn_text(seed, "fn insert_routes"),
        &writes,
    ]
    .concat();
    for (role, source) in [("control", control.as_str()), ("worker", worker.as_str())] {
        let listed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .filter(|(r, _, _)| *r == role)
            .map(|(_, m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(
            declared_routes(source),
            listed,
            "the {role} routes changed: update ROUTES and the collection"
        );
    }

    // Every request is described, has a test script in the known forms, a status
    // assertion, and URL parts that agree with its raw URL; every route is covered.
    let all = requests(&collection);
    let mut covered: BTreeSet<(&str, String, String)> = BTreeSet::new();
    for (name, item) in &all {
        let request = &item["request"];
        let described = request["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty());
        assert!(described, "{name}: no description");
        let checks = checks(item).unwrap_or_else(|e| panic!("{name}: {e}"));
        let status = checks.iter().find_map(|(_, c)| match c {
            Check::Status(s) => Some(*s),
            _ => None,
        });
        let status = status.unwrap_or_else(|| panic!("{name}: no status assertion"));
        check_url_parts(&request["url"]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let raw = request["url"]["raw"].as_str().unwrap_or_default();
        let Some((var, rest)) = NODES.iter().find_map(|(var, _)| {
            raw.strip_prefix(&format!("{{{{{var}}}}}"))
                .map(|r| (*var, r))
        }) else {
            panic!("{name}: the URL starts with none of the node variables: {raw}");
        };
        let path = rest.split('?').next().unwrap_or_default().to_string();
        let method = request["method"].as_str().unwrap_or_default().to_string();
        let shape_changing = SHAPE_CHANGING
            .iter()
            .find(|(m, t)| *m == method && template_matches(t, &path));
        let binary = BINARY_BODIES.contains(&(method.as_str(), path.as_str()));
        if let Some((_, template)) = shape_changing {
            covered.insert((var, method, template.to_string()));
        } else if binary || (200..300).contains(&status) {
            covered.insert((var, method, path));
        }
    }
    for (var, role) in NODES {
        for (_, method, path) in ROUTES.iter().filter(|(r, _, _)| *r == role) {
            assert!(
                covered.contains(&(var, method.to_string(), path.to_string())),
                "no successful {method} {path} on {{{{{var}}}}} in the collection"
            );
        }
    }

    // Run it against a real cluster: two workers, every partition on both.
    let c = DevCluster::start(2, 2, 8, &[]).await;
    let vars: BTreeMap<String, String> = BTreeMap::from([
        ("control_url".into(), format!("http://127.0.0.1:{}", c.port)),
        (
            "worker1_url".into(),
            format!("http://127.0.0.1:{}", c.port + 1),
        ),
        (
            "worker2_url".into(),
            format!("http://127.0.0.1:{}", c.port + 2),
        ),
        ("token".into(), TOKEN.into()),
    ]);
    let mut written: BTreeMap<String, u64> = BTreeMap::new();
    let mut stored_keys: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut unread = false;
    let mut failures = Vec::new();
    let mut assertions = 0;
    for (name, item) in &all {
        let request = &item["request"];
        let method = request["method"].as_str().unwrap_or_default();
        let raw = request["url"]["raw"].as_str().unwrap_or_default();
        let path = raw.split('?').next().unwrap_or_default();
        let seed_write =
            method == "POST" && (path.ends_with("/insert") || path.ends_with("/metrics"));
        let other_write = method == "POST"
            && ["/write", "/api/v2/write", "/api/v1/import"]
                .iter()
                .any(|p| path.ends_with(p) && !path.ends_with("/api/v1/write"));
        let write = seed_write || other_write;
        if !write && unread {
            wait_readable(&c, &written).await;
            unread = false;
        }
        let (status, body) = send(&c, request, &collection["auth"], &vars).await;
        // A batch resent under an Idempotency-Key already stored adds nothing.
        let key = request["header"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| {
                h["key"]
                    .as_str()
                    .is_some_and(|k| k.eq_ignore_ascii_case("idempotency-key"))
            })
            .and_then(|h| h["value"].as_str());
        let repeated = key.is_some_and(|k| stored_keys.contains(k));
        let body_text = request["body"]["raw"].as_str().unwrap_or_default();
        if seed_write && status == 200 && !repeated {
            stored_keys.extend(key.map(str::to_string));
            count_points(body_text, &mut written);
            unread = true;
        } else if other_write && status == 204 && !repeated {
            stored_keys.extend(key.map(str::to_string));
            if path.ends_with("/api/v1/import") {
                count_imported(body_text, &mut written);
            } else {
                count_lines(body_text, &mut written);
            }
            unread = true;
        }
        let checks = checks(item).expect("checked above");
        let failed: Vec<String> = checks
            .iter()
            .filter_map(|(test, check)| {
                failure(check, status, &body).map(|f| format!("{test}: {f}"))
            })
            .collect();
        assertions += checks.len();
        println!(
            "{status} {name} ({}/{} passed)",
            checks.len() - failed.len(),
            checks.len()
        );
        if !failed.is_empty() {
            let body: String = body.chars().take(600).collect();
            failures.push(format!(
                "{name}:\n  {}\n  body: {body}",
                failed.join("\n  ")
            ));
        }
    }
    println!("{} requests, {assertions} assertions", all.len());
    assert!(failures.is_empty(), "failed:\n{}", failures.join("\n"));
}
