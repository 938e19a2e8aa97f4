//! The README's walkthrough, run as written against a real dev cluster: the `bash` block
//! under "## Try it", with the cluster's ports and data directory substituted and every
//! `curl` made to fail on an HTTP error.

mod common;

use common::DevCluster;

fn walkthrough() -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## Try it")
        .nth(1)
        .expect("README has a 'Try it' section");
    let block = section
        .split("```bash\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a bash block in 'Try it'");
    block.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_works_as_written() {
    let has = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("curl") || !has("jq") || !has("bash") {
        panic!("the README walkthrough needs bash, curl and jq on the PATH");
    }
    // `dev`'s defaults: three workers, every partition on all three.
    let c = DevCluster::start(3, 3, 16, &[]).await;
    let dir = c.dir.path().join("cluster");
    let script = walkthrough()
        .replace("localhost:8080", &format!("127.0.0.1:{}", c.port))
        .replace("localhost:8081", &format!("127.0.0.1:{}", c.port + 1))
        .replace("localhost:8082", &format!("127.0.0.1:{}", c.port + 2))
        .replace("localhost:8083", &format!("127.0.0.1:{}", c.port + 3))
        .replace("data/dev", &dir.display().to_string());
    assert!(script.contains("curl"), "{script}");
    let full = format!(
        "set -euo pipefail\ncurl() {{ command curl --fail-with-body --max-time 20 \"$@\"; echo; }}\n{script}"
    );
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&full)
        .output()
        .await
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walkthrough failed:\n{full}\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every answer is JSON: first the readiness, last the insert made after a worker was
    // killed (acknowledged) and a complete answer that counts it.
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON answer"))
        .collect();
    assert!(answers.len() >= 10, "{stdout}");
    assert_eq!(answers[0]["status"], "ready", "{stdout}");
    assert_eq!(answers[1]["success"], true, "{stdout}");
    let n = answers.len();
    assert_eq!(
        answers[n - 2]["success"],
        true,
        "insert after the kill: {stdout}"
    );
    let last = &answers[n - 1];
    assert_eq!(last["aggregations"]["count"], 2, "{stdout}");
    assert_eq!(last["is_partial"], false, "{stdout}");
    assert_eq!(last["responding_nodes"], 2, "{stdout}");
}
