//! The public HTTP listener: its own accept loop, each connection served by hyper with the
//! axum router as the service, and three bounds per listener (ADR 018):
//!
//! - **header-read timeout** ([`Bounds::header_read_timeout`]): a connection with no request
//!   in flight that has begun a request head and not completed it in time is closed. A new
//!   connection counts as beginning a head when it is accepted, so one that sends nothing is
//!   closed too.
//! - **idle timeout** ([`Bounds::idle_timeout`]): a keep-alive connection with no request in
//!   flight and no byte of a new request for that long is closed.
//! - **connection cap** ([`Bounds::max_connections`]): at the cap, a new connection closes the
//!   connection idle the longest among those with no request in flight ([`eviction_choice`];
//!   a connection that never completed a request is idle since it was accepted). When every
//!   open connection has a request in flight, the new connection is closed at once (refused).
//!   So thousands of half-open connections cannot keep a fresh `/health` from an answer.
//!
//! A request is in flight from the moment hyper calls the service until its response body is
//! dropped, i.e. written out or abandoned: a response being written is in flight. Closing a
//! connection with no request in flight writes nothing to it: one that never answered a
//! request (a half-open one) is dropped at once; one that did is shut down through hyper,
//! which first writes out what it still buffers of its last answer (dropped if that takes
//! longer than the header-read timeout).
//!
//! hyper's own `header_read_timeout` is not used (it is switched off explicitly): in hyper
//! 1.12 its timer starts as soon as a keep-alive connection waits for its next request head,
//! so it would also close idle keep-alive connections at the header timeout. Here the clock
//! of a head starts at its first byte, seen by [`TrackedIo`] below hyper.
//!
//! Only HTTP/1 is served (as before, with `axum::serve` and axum's default features).
//!
//! Shutdown is graceful: the loop stops accepting, connections with no request in flight are
//! closed at once, the others finish their request first (hyper's graceful shutdown), and
//! [`serve`] returns when every connection is closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};
use tower::ServiceExt as _;
use tracing::{debug, error, info, warn};

use crate::config::{
    DEFAULT_HEADER_READ_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, HttpArgs,
};

/// The bounds of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Limit for a request head to arrive, from its first byte (from the accept for the
    /// first request of a connection).
    pub header_read_timeout: Duration,
    /// Limit of a keep-alive connection waiting for its next request.
    pub idle_timeout: Duration,
    /// Most open connections (at least 1).
    pub max_connections: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            header_read_timeout: Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl From<&HttpArgs> for Bounds {
    fn from(http: &HttpArgs) -> Self {
        Bounds {
            header_read_timeout: http.header_read_timeout(),
            idle_timeout: http.idle_timeout(),
            max_connections: http.max_connections,
        }
    }
}

/// Counters of a listener, updated as it runs (exported by `crate::metrics::Metrics`).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub(crate) open: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) header_timeouts: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
}

/// The values of a [`ListenerStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerCounters {
    /// Connections open now (a gauge).
    pub open: u64,
    /// Connections accepted and served (evictions made room for some of them).
    pub accepted: u64,
    /// Connections closed at once at the cap, because every open one had a request in
    /// flight.
    pub refused: u64,
    /// Connections closed to make room for a new one.
    pub evicted: u64,
    /// Connections closed because a request head did not arrive in time.
    pub header_timeouts: u64,
    /// Keep-alive connections closed because no new request came in time.
    pub idle_timeouts: u64,
    /// Errors of `accept` itself (e.g. out of file descriptors).
    pub accept_errors: u64,
}

impl ListenerStats {
    /// The current values (each read on its own; not a consistent cut).
    pub fn snapshot(&self) -> ListenerCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ListenerCounters {
            open: get(&self.open),
            accepted: get(&self.accepted),
            refused: get(&self.refused),
            evicted: get(&self.evicted),
            header_timeouts: get(&self.header_timeouts),
            idle_timeouts: get(&self.idle_timeouts),
            accept_errors: get(&self.accept_errors),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the eviction choice and the timeouts see of a connection. Times are offsets from an
/// arbitrary origin (the listener's start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnView {
    /// Requests in flight.
    pub in_flight: u64,
    /// Already being closed (not a candidate for anything).
    pub closing: bool,
    /// When the connection last became idle: its accept, or the end of its last request.
    pub idle_since: Duration,
}

/// The connection to close to make room for a new one: among those with no request in
/// flight (and not already closing), the one idle the longest; of equally long idle ones,
/// the smallest key (connections are numbered in accept order). `None` when every connection
/// has a request in flight: then the new connection is refused.
pub fn eviction_choice<K: Copy + Ord>(conns: impl IntoIterator<Item = (K, ConnView)>) -> Option<K> {
    conns
        .into_iter()
        .filter(|(_, v)| v.in_flight == 0 && !v.closing)
        .min_by_key(|(k, v)| (v.idle_since, *k))
        .map(|(k, _)| k)
}

/// Which bound closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// A request head did not arrive in time.
    Header,
    /// No new request on a keep-alive connection.
    Idle,
}

/// When a connection is to be closed, and why, if nothing happens to it before: never while
/// a request is in flight; `head_started + header_read_timeout` while a request head is
/// arriving (or, for a new connection, from its accept); `idle_since + idle_timeout`
/// otherwise.
pub fn next_timeout(
    in_flight: u64,
    head_started: Option<Duration>,
    idle_since: Duration,
    bounds: &Bounds,
) -> Option<(Duration, Timeout)> {
    if in_flight > 0 {
        return None;
    }
    Some(match head_started {
        Some(t) => (
            t.saturating_add(bounds.header_read_timeout),
            Timeout::Header,
        ),
        None => (
            idle_since.saturating_add(bounds.idle_timeout),
            Timeout::Idle,
        ),
    })
}

/// Raises this process's soft limit of open files to its hard limit, so that connection
/// caps, not the descriptor limit, decide what is refused. Returns the soft limit before and
/// after.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok((soft, hard.max(soft)))
}

/// Nanoseconds since the listener's start; the base of the times kept in atomics.
#[derive(Clone, Copy, Debug)]
struct Clock {
    epoch: Instant,
}

impl Clock {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }
}

/// Set in [`Conn::state`] once the connection is to be closed.
const CLOSING: u64 = 1 << 63;
/// "No time" in [`Conn::head_started`].
const NONE: u64 = u64::MAX;

/// One connection's state, shared by its task, its IO wrapper, its requests and the accept
/// loop.
#[derive(Debug)]
struct Conn {
    /// Requests in flight, with [`CLOSING`] set once it is to be closed. A connection is
    /// claimed for closing only while no request is in flight (0 → `CLOSING`).
    state: AtomicU64,
    /// When it last became idle ([`Clock`] nanoseconds).
    idle_since: AtomicU64,
    /// When the first byte of a request head arrived while idle; [`NONE`] when no head is
    /// arriving. Set to the accept time for a new connection.
    head_started: AtomicU64,
    /// Whether a request on it ended (so an answer may still sit in hyper's buffer).
    answered: AtomicBool,
    /// Wakes the connection's task: a head started, a request ended, or it was evicted.
    wake: Notify,
    clock: Clock,
}

impl Conn {
    fn new(clock: Clock) -> Self {
        let now = clock.now();
        Conn {
            state: AtomicU64::new(0),
            idle_since: AtomicU64::new(now),
            head_started: AtomicU64::new(now),
            answered: AtomicBool::new(false),
            wake: Notify::new(),
            clock,
        }
    }

    fn view(&self) -> ConnView {
        let state = self.state.load(Ordering::Acquire);
        ConnView {
            in_flight: state & !CLOSING,
            closing: state & CLOSING != 0,
            idle_since: Duration::from_nanos(self.idle_since.load(Ordering::Acquire)),
        }
    }

    fn head_started(&self) -> Option<Duration> {
        match self.head_started.load(Ordering::Acquire) {
            NONE => None,
            t => Some(Duration::from_nanos(t)),
        }
    }

    #[cfg(test)]
    fn is_closing(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSING != 0
    }

    fn answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// Claims the connection for closing if no request is in flight and nobody claimed it.
    fn try_close(&self) -> bool {
        self.state
            .compare_exchange(0, CLOSING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Bytes arrived from the client: while idle, the first of them starts a request head.
    fn bytes_arrived(&self) {
        if self.state.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == NONE
        {
            self.head_started.store(self.clock.now(), Ordering::Release);
            self.wake.notify_one();
        }
    }

    /// hyper called the service: the head is complete, a request is in flight until the
    /// returned guard is dropped.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.state.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        InFlight(Arc::clone(self))
    }
}

/// A request in flight on its connection; dropped with the response body (or the response
/// future, when the request is abandoned).
#[derive(Debug)]
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.idle_since.store(conn.clock.now(), Ordering::Release);
        conn.answered.store(true, Ordering::Release);
        conn.state.fetch_sub(1, Ordering::AcqRel);
        conn.wake.notify_one();
    }
}

/// The TCP stream below hyper, noting when request bytes arrive.
struct TrackedIo {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A response body that keeps its request in flight until it is dropped. (Unlike
/// `http_body_util::BodyExt::map_frame`, it passes the size hint on, so a response of known
/// length keeps its `Content-Length`.)
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = <Body as hyper::body::Body>::Data;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What every connection task of a listener shares.
struct Shared {
    app: Router,
    bounds: Bounds,
    stats: Arc<ListenerStats>,
    clock: Clock,
    /// The open connections by number (accept order); an evicted one leaves at once.
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many connections the accept loop tries to claim for eviction before it refuses (a
/// claim fails only when a request started on the chosen connection meanwhile).
const EVICTION_ATTEMPTS: usize = 8;

/// Pause after an accept error other than a connection's own (e.g. out of file descriptors),
/// as `axum::serve` did.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Shortest interval between two warnings that the cap was reached.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

impl Shared {
    /// Registers a new connection, evicting one at the cap; `None` when it is refused.
    /// The flag says whether a connection was evicted for it.
    fn admit(&self, id: u64) -> Option<(Arc<Conn>, bool)> {
        let mut open = lock(&self.open);
        let mut evicted = false;
        if open.len() >= self.bounds.max_connections.max(1) {
            for _ in 0..EVICTION_ATTEMPTS {
                let victim = eviction_choice(open.iter().map(|(k, c)| (*k, c.view())))?;
                let Some(conn) = open.get(&victim) else {
                    break;
                };
                if conn.try_close() {
                    conn.wake.notify_one();
                    open.remove(&victim);
                    evicted = true;
                    break;
                }
            }
            if !evicted {
                return None;
            }
        }
        let conn = Arc::new(Conn::new(self.clock));
        open.insert(id, Arc::clone(&conn));
        Some((conn, evicted))
    }
}

/// Removes a connection from the open set and the gauge when its task ends.
struct Registered {
    shared: Arc<Shared>,
    id: u64,
}

impl Registered {
    /// Leaves the open set (it no longer counts against the cap) while still closing.
    fn leave(&self) {
        lock(&self.shared.open).remove(&self.id);
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.leave();
        self.shared.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `app` on `listener` within `bounds` until `shutdown` completes, then closes
/// gracefully (see the [module documentation](self)); `stats` counts what happens.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    stats: Arc<ListenerStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        app,
        bounds,
        stats,
        clock: Clock {
            epoch: Instant::now(),
        },
        open: Mutex::new(HashMap::new()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut last_cap_warning: Option<Instant> = None;
    let local = listener.local_addr().ok();
    info!(addr = ?local, max_connections = bounds.max_connections,
        header_read_timeout_ms = bounds.header_read_timeout.as_millis() as u64,
        idle_timeout_ms = bounds.idle_timeout.as_millis() as u64, "serving HTTP");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = ended
                    && e.is_panic()
                {
                    warn!(error = %e, "an HTTP connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    next_id += 1;
                    let stats = &shared.stats;
                    let Some((conn, evicted)) = shared.admit(next_id) else {
                        bump(&stats.refused);
                        debug!(%remote, "every connection has a request in flight; refusing");
                        warn_cap(&mut last_cap_warning, stats, &bounds);
                        drop(stream);
                        continue;
                    };
                    if evicted {
                        bump(&stats.evicted);
                        warn_cap(&mut last_cap_warning, stats, &bounds);
                    }
                    bump(&stats.accepted);
                    stats.open.fetch_add(1, Ordering::Relaxed);
                    let registered = Registered { shared: Arc::clone(&shared), id: next_id };
                    tasks.spawn(serve_connection(stream, conn, registered, stop_rx.clone()));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    bump(&shared.stats.accept_errors);
                    error!(error = %e, "accept error");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    info!(addr = ?local, "stopped serving HTTP");
    Ok(())
}

/// Errors of one connection that `accept` reports; the next accept is tried at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Warns that the cap was reached, at most every [`CAP_WARNING_INTERVAL`].
fn warn_cap(last: &mut Option<Instant>, stats: &ListenerStats, bounds: &Bounds) {
    if last.is_some_and(|t| t.elapsed() < CAP_WARNING_INTERVAL) {
        return;
    }
    *last = Some(Instant::now());
    let c = stats.snapshot();
    warn!(
        max_connections = bounds.max_connections,
        evicted_total = c.evicted,
        refused_total = c.refused,
        "HTTP connection cap reached: idle connections are closed for new ones"
    );
}

/// Serves one connection until it closes, times out, is evicted or the listener stops.
///
/// A connection claimed for closing that never answered a request is dropped at once: there
/// is nothing of it to flush. One that did, or that has a request in flight (one that
/// started just as it was evicted), is shut down gracefully: hyper finishes that request,
/// writes out what it still buffers of the last answer, and closes; if that takes longer
/// than the header-read timeout (a client that stopped reading), it is dropped.
async fn serve_connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    registered: Registered,
    mut stop: watch::Receiver<bool>,
) {
    let shared = Arc::clone(&registered.shared);
    let io = TokioIo::new(TrackedIo {
        stream,
        conn: Arc::clone(&conn),
    });
    let app = shared.app.clone();
    let requests = Arc::clone(&conn);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_flight = requests.request_started();
        let response = app.clone().oneshot(request.map(Body::new));
        async move {
            let response = match response.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout is this module's (see the module documentation).
    builder.http1().header_read_timeout(None);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let bounds = shared.bounds;
    let clock = shared.clock;
    let mut stopping = false;
    // Set once the connection is closing gracefully: when it is dropped at the latest.
    let mut drain_until: Option<Instant> = None;
    loop {
        let view = conn.view();
        if view.closing && drain_until.is_none() {
            if view.in_flight == 0 && !conn.answered() {
                break;
            }
            connection.as_mut().graceful_shutdown();
            drain_until = Some(Instant::now() + bounds.header_read_timeout);
        }
        let wake_at = match drain_until {
            Some(until) if Instant::now() >= until => break,
            Some(until) => Some(until),
            None => {
                let due = next_timeout(
                    view.in_flight,
                    conn.head_started(),
                    view.idle_since,
                    &bounds,
                );
                if let Some((at, why)) = due
                    && Duration::from_nanos(clock.now()) >= at
                {
                    if conn.try_close() {
                        registered.leave();
                        let counter = match why {
                            Timeout::Header => &shared.stats.header_timeouts,
                            Timeout::Idle => &shared.stats.idle_timeouts,
                        };
                        bump(counter);
                        debug!(?why, "closing HTTP connection");
                    }
                    // Closing now, by this timeout or by an eviction just made.
                    continue;
                }
                due.map(|(at, _)| clock.instant(u64::try_from(at.as_nanos()).unwrap_or(NONE - 1)))
            }
        };
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    debug!(error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            () = conn.wake.notified() => {}
            () = sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => {}
            _ = stop.changed(), if !stopping => {
                stopping = true;
                if conn.try_close() {
                    registered.leave();
                } else {
                    // A request in flight finishes first.
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
    drop(registered);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(in_flight: u64, idle_since_ms: u64) -> ConnView {
        ConnView {
            in_flight,
            closing: false,
            idle_since: Duration::from_millis(idle_since_ms),
        }
    }

    #[test]
    fn eviction_takes_the_longest_idle_connection_without_a_request() {
        // Key = accept order. 2 is busy although idle the longest before its request.
        let conns = [
            (1, view(0, 500)),
            (2, view(1, 10)),
            (3, view(0, 200)),
            (4, view(0, 900)),
        ];
        assert_eq!(eviction_choice(conns), Some(3));
        // Equally idle: the one accepted first.
        assert_eq!(
            eviction_choice([(7, view(0, 50)), (5, view(0, 50))]),
            Some(5)
        );
        // Half-open connections are idle since their accept; a keep-alive connection whose
        // request ended later is kept over them.
        let conns = [(1, view(0, 100)), (2, view(0, 101)), (3, view(0, 5000))];
        assert_eq!(eviction_choice(conns), Some(1));
    }

    #[test]
    fn eviction_skips_busy_and_closing_connections_and_may_find_none() {
        assert_eq!(eviction_choice([(1, view(2, 0)), (2, view(1, 0))]), None);
        assert_eq!(eviction_choice(std::iter::empty::<(u64, ConnView)>()), None);
        let closing = ConnView {
            closing: true,
            ..view(0, 0)
        };
        assert_eq!(eviction_choice([(1, closing), (2, view(0, 10))]), Some(2));
        assert_eq!(eviction_choice([(1, closing)]), None);
    }

    #[test]
    fn timeouts_follow_the_connection_state() {
        let bounds = Bounds {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4,
        };
        let s = Duration::from_secs;
        // A request in flight: no timeout.
        assert_eq!(next_timeout(1, None, s(5), &bounds), None);
        // A new connection: head "started" at the accept (5 s).
        assert_eq!(
            next_timeout(0, Some(s(5)), s(5), &bounds),
            Some((s(15), Timeout::Header))
        );
        // Keep-alive, idle since 20 s: the idle timeout.
        assert_eq!(
            next_timeout(0, None, s(20), &bounds),
            Some((s(80), Timeout::Idle))
        );
        // The next head began at 70 s: the header timeout from there.
        assert_eq!(
            next_timeout(0, Some(s(70)), s(20), &bounds),
            Some((s(80), Timeout::Header))
        );
    }

    #[test]
    fn connection_state_moves_between_idle_head_and_in_flight() {
        let clock = Clock {
            epoch: Instant::now(),
        };
        let conn = Arc::new(Conn::new(clock));
        assert!(
            conn.head_started().is_some(),
            "a new connection is reading a head"
        );
        let request = conn.request_started();
        assert_eq!(conn.head_started(), None);
        assert_eq!(conn.view().in_flight, 1);
        conn.bytes_arrived(); // a request body: no head
        assert_eq!(conn.head_started(), None);
        assert!(!conn.try_close(), "never claimed with a request in flight");
        assert!(!conn.answered());
        drop(request);
        assert_eq!(conn.view().in_flight, 0);
        assert!(conn.answered(), "closed gracefully from now on");
        conn.bytes_arrived();
        assert!(conn.head_started().is_some(), "the next head");
        assert!(conn.try_close());
        assert!(conn.is_closing() && conn.view().closing);
        assert!(!conn.try_close(), "claimed once");
    }

    #[test]
    fn open_files_limit_is_raised_to_the_hard_limit() {
        let (_, after) = raise_open_files_limit().expect("rlimit");
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .expect("getrlimit");
        assert_eq!((soft, after), (hard, hard));
    }
}
