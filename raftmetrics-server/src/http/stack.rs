//! The layers every public router gets, in order from the outside: request metrics, the
//! request deadline, bearer authentication, the per-token rate limit, the body size limit (announced, then read),
//! and the API-format fallbacks for unknown routes; outermost, error bodies of other
//! protocols' endpoints are rewritten in their shape. Routes that carry no data (the web
//! console's page and assets) may be served beside them without a token ([`with_open`]).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};

use super::auth::{TokenSet, require_bearer};
use super::error::{
    ApiError, fallback_method_not_allowed, fallback_not_found, panic_response, reshape_errors,
};
use super::listener::{self, Bounds, ListenerStats};
use super::rate_limit::{RateLimiter, limit_per_token};
use crate::metrics::{Metrics, track_requests};
use tower_http::catch_panic::CatchPanicLayer;

/// What the layers need.
#[derive(Clone)]
pub struct StackConfig {
    pub tokens: TokenSet,
    pub rate_limit_per_minute: NonZeroU32,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// Wraps `routes` in the public layers.
pub fn public(routes: Router, config: StackConfig) -> Router {
    let limiter = RateLimiter::new(config.rate_limit_per_minute, &config.tokens);
    routes
        .fallback(fallback_not_found)
        .method_not_allowed_fallback(fallback_method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(from_fn_with_state(config.max_body_bytes, announced_length))
        .layer(from_fn_with_state(limiter, limit_per_token))
        .layer(from_fn_with_state(config.tokens.clone(), require_bearer))
        .layer(from_fn_with_state(config.request_timeout, deadline))
        .layer(from_fn_with_state(config.metrics, track_requests))
        .layer(axum::middleware::from_fn(reshape_errors))
}

/// `public` (routes already behind the public layers) beside `open`: routes answered without
/// a token, outside every layer but the request metrics. Only for what carries no data (the
/// web console's static page and assets); every other path, unknown ones included, still
/// goes through `public`'s layers and fallbacks.
pub fn with_open(public: Router, open: Router, metrics: Arc<Metrics>) -> Router {
    public.merge(
        open.method_not_allowed_fallback(fallback_method_not_allowed)
            .layer(from_fn_with_state(metrics, track_requests)),
    )
}

/// Serves `routes` behind the public layers on `listener` until `shutdown` completes, within
/// the connection bounds of `http` (`super::listener`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Router,
    http: &crate::config::HttpArgs,
    rate_limit_per_minute: u32,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::error::ServerError> {
    serve_with_open(
        listener,
        routes,
        Router::new(),
        http,
        rate_limit_per_minute,
        metrics,
        shutdown,
    )
    .await
}

/// [`serve`], with `open` served beside the public layers without a token ([`with_open`]).
pub async fn serve_with_open(
    listener: tokio::net::TcpListener,
    routes: Router,
    open: Router,
    http: &crate::config::HttpArgs,
    rate_limit_per_minute: u32,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::error::ServerError> {
    use crate::error::ServerError;
    let tokens = TokenSet::new(http.tokens())
        .map_err(|e| ServerError::Config(format!("auth tokens: {e}")))?;
    let stats = Arc::new(ListenerStats::default());
    metrics.export_http_listener(Arc::clone(&stats));
    let app = public(
        routes,
        StackConfig {
            tokens,
            rate_limit_per_minute: NonZeroU32::new(rate_limit_per_minute)
                .unwrap_or(NonZeroU32::MIN),
            max_body_bytes: http.max_body_bytes,
            request_timeout: http.request_timeout(),
            metrics: Arc::clone(&metrics),
        },
    );
    let app = with_open(app, open, metrics);
    listener::serve(listener, app, Bounds::from(http), stats, shutdown)
        .await
        .map_err(ServerError::io("serve HTTP"))
}

/// Middleware: refuses a body whose announced `Content-Length` is over the limit before
/// reading any of it (bodies without a length are cut at the limit while read).
async fn announced_length(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(len) if len > limit as u64 => {
            ApiError::payload_too_large(Some(limit as u64)).into_response()
        }
        _ => next.run(request).await,
    }
}

/// Middleware: answers 504 when the handler does not finish within the deadline.
async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout(limit).into_response(),
    }
}
