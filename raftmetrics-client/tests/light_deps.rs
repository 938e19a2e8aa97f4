//! The client stays light: its normal dependencies (what a program that adds
//! `raftmetrics-client` compiles) include no DuckDB, no raft and not the engine crate
//! (ADR 022). Checked on the dependency graph Cargo resolves for this platform.

use std::path::Path;
use std::process::Command;

/// Crates the client must never pull in: the bundled C++ DuckDB build, the raft stack, and
/// the engine crate that depends on both.
const FORBIDDEN: [&str; 6] = [
    "duckdb",
    "libduckdb-sys",
    "raft",
    "raft-proto",
    "raft-engine",
    "raftmetrics-core",
];

#[test]
fn client_depends_on_no_engine_crate() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--locked", "-e", "normal"])
        .args(["--prefix", "none", "--manifest-path"])
        .arg(&manifest)
        .output();
    let output = match output {
        Ok(output) if output.status.success() => output,
        Ok(output) => {
            println!(
                "skipped: `cargo tree` failed offline: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("skipped: cannot run cargo: {e}");
            return;
        }
    };
    let tree = String::from_utf8(output.stdout).expect("cargo tree prints UTF-8");
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"raftmetrics-client") && names.contains(&"raftmetrics-types"),
        "unexpected `cargo tree` output:\n{tree}"
    );
    let found: Vec<&str> = FORBIDDEN
        .into_iter()
        .filter(|name| names.contains(name))
        .collect();
    assert!(
        found.is_empty(),
        "raftmetrics-client depends on {found:?}; `cargo tree -e normal -i <crate> \
         --manifest-path raftmetrics-client/Cargo.toml` shows the path:\n{tree}"
    );
}
