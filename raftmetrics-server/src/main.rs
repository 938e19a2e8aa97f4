//! `raftmetrics-server control|worker|dev|healthcheck`: see [`raftmetrics_server::config`].

use std::io::IsTerminal;
use std::process::ExitCode;

use raftmetrics_server::config::{Role, parse_from_env_and_args};
use raftmetrics_server::{control, dev, healthcheck, worker};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: a request's points and tags are many small,
/// short-lived allocations, which glibc's malloc served at about half of the cluster's CPU
/// time (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match parse_from_env_and_args(std::env::args_os(), &|k| std::env::var(k).ok()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Role::Healthcheck(args) = &cli.role {
        return healthcheck::run(args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,raft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    raise_open_files_limit(cli.role.http().max_connections);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let role = cli.role.name();
    let result = runtime.block_on(async move {
        match cli.role {
            Role::Control(args) => control::run(args, shutdown_signal()).await,
            Role::Worker(args) => worker::run(args, shutdown_signal()).await,
            Role::Dev(args) => dev::run(args)
                .await
                .map_err(|e| raftmetrics_server::error::ServerError::Config(e.to_string())),
            // Answered before the runtime started.
            Role::Healthcheck(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(role, error = %e, "stopped with an error");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit of open files to the hard limit, so that the HTTP connection cap
/// (`max_connections`), not the descriptor limit, is what refuses connections; warns when
/// even the hard limit leaves little room above the cap.
fn raise_open_files_limit(max_connections: usize) {
    match raftmetrics_server::http::listener::raise_open_files_limit() {
        Ok((before, after)) => {
            tracing::info!(
                before,
                after,
                "open files limit (soft) raised to the hard limit"
            );
            let needed = (max_connections as u64).saturating_add(OPEN_FILES_MARGIN);
            if after < needed {
                tracing::warn!(
                    limit = after,
                    max_connections,
                    "the open files limit is close to the HTTP connection cap: accept errors \
                     may come before the cap; raise the hard limit (ulimit -Hn) or lower \
                     --max-connections"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// Descriptors a node needs besides its HTTP connections: node-to-node connections (256
/// authenticated, 64 in the handshake), the raft log, the store, the runtime.
const OPEN_FILES_MARGIN: u64 = 512;

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}
