//! `raftmetrics-server healthcheck`: asks the node on this machine for `/health`.
//!
//! Container images carry no HTTP client, so the binary checks itself: a `GET /health` on
//! `127.0.0.1:<port>` with the first configured token, success when the node answers 200
//! within [`TIMEOUT`]. Synchronous and single-shot: it runs in a fresh process per check.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::HealthcheckArgs;

/// Connect, write and read deadline of one check.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Most response bytes read: the status line is all that is needed.
const MAX_RESPONSE_BYTES: u64 = 4096;

/// Runs one check: exit status 0 when the node answers 200, 1 otherwise (with the reason on
/// stderr).
pub fn run(args: &HealthcheckArgs) -> ExitCode {
    match check(args.port, args.http.tokens().next()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("unhealthy: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok` when `GET /health` on `127.0.0.1:port` answers 200.
pub fn check(port: u16, token: Option<&str>) -> Result<(), String> {
    check_path(port, "/health", token)
}

/// `Ok` when `GET <path>` on `127.0.0.1:port` answers 200 within [`TIMEOUT`].
pub fn check_path(port: u16, path: &str, token: Option<&str>) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{auth}\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut response)
        .map_err(|e| format!("no answer: {e}"))?;
    let status_line = response
        .split(|&b| b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(_) => Err(format!("{addr} answered {status_line}")),
        None => Err(format!("{addr} sent no HTTP status line")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server answering `reply`, returning what it received.
    fn serve_once(reply: &'static str) -> (u16, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).expect("read");
            s.write_all(reply.as_bytes()).expect("write");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, handle)
    }

    #[test]
    fn healthy_on_200_with_the_token_sent() {
        let (port, server) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        assert_eq!(check(port, Some("tok-123")), Ok(()));
        let request = server.join().expect("server");
        assert!(request.starts_with("GET /health HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains("Authorization: Bearer tok-123\r\n"),
            "{request}"
        );
    }

    #[test]
    fn unhealthy_on_another_status_or_no_listener() {
        let (port, server) = serve_once("HTTP/1.1 401 Unauthorized\r\n\r\n");
        let err = check(port, None).expect_err("401");
        assert!(err.contains("401"), "{err}");
        server.join().expect("server");
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        assert!(check(port, None).is_err());
    }
}
