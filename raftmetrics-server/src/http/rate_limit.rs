//! Per-token rate limits.
//!
//! The algorithm is a token bucket per [`TokenId`] with capacity `limit` and a refill of
//! `limit / 60` requests per second, written as GCRA (a "theoretical arrival time" per
//! token): a burst of `limit` requests passes at once, then one request every
//! `60 s / limit`; an idle minute refills the bucket completely. So no token ever makes more
//! than `limit + n` requests in any `1 + n/limit` minutes, and there is no fixed-window edge
//! where two full windows meet.
//!
//! State is one small entry per configured token, created up front from the [`TokenSet`]:
//! it never grows at run time, and unknown tokens (which authentication refuses anyway) have
//! no entry. Each token has its own lock, so one token's traffic never waits on another's.
//!
//! [`limit_per_token`] is the middleware; it runs after [`require_bearer`], which puts the
//! [`TokenId`] into the request. With axum the layer added last runs first:
//! ```text
//! router
//!     .layer(from_fn_with_state(limiter, limit_per_token))
//!     .layer(from_fn_with_state(tokens, require_bearer))
//! ```
//! A refused request gets 429 with `Retry-After` and the seed's `RATE_LIMIT_EXCEEDED` body;
//! its `reset_at` is when the next request will be allowed.
//!
//! [`require_bearer`]: super::auth::require_bearer

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::{TokenId, TokenSet};
use super::error::ApiError;

/// The period the limit is expressed over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The source of monotonic time; tests inject one they can move.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// The token's budget is spent; the next request is allowed after `retry_after`.
    #[error("rate limit exceeded; retry after {retry_after:?}")]
    Limited { retry_after: Duration },
    /// The token id is not one of the configured tokens (a wiring bug: auth must run first).
    #[error("token {0} has no rate-limit state")]
    UnknownToken(TokenId),
}

/// Per-token request budgets. Cheap to clone (shared state).
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    limit: NonZeroU32,
    /// Time between two requests at the sustained rate: `WINDOW / limit`.
    interval: Duration,
    clock: Clock,
    /// One entry per configured token, never added to after construction.
    buckets: HashMap<TokenId, Mutex<Bucket>>,
}

/// GCRA state: the time at which the bucket would be full again (`None`: full).
#[derive(Default)]
struct Bucket {
    full_at: Option<Instant>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit_per_minute", &self.inner.limit)
            .field("tokens", &self.inner.buckets.len())
            .finish()
    }
}

impl RateLimiter {
    /// `limit` requests per minute for each token of `tokens`, on the system's monotonic clock.
    pub fn new(limit: NonZeroU32, tokens: &TokenSet) -> Self {
        Self::with_clock(limit, tokens, Arc::new(Instant::now))
    }

    /// Like [`RateLimiter::new`] with the given clock.
    pub fn with_clock(limit: NonZeroU32, tokens: &TokenSet, clock: Clock) -> Self {
        let buckets = tokens
            .ids()
            .map(|id| (id, Mutex::new(Bucket::default())))
            .collect();
        RateLimiter {
            inner: Arc::new(Inner {
                limit,
                interval: WINDOW / limit.get(),
                clock,
                buckets,
            }),
        }
    }

    /// Requests per minute allowed for each token.
    pub fn limit(&self) -> NonZeroU32 {
        self.inner.limit
    }

    /// Number of tokens with state (the number of configured tokens, fixed).
    pub fn tracked_tokens(&self) -> usize {
        self.inner.buckets.len()
    }

    /// Admits one request of token `id`, or says how long until one is allowed.
    pub fn check(&self, id: TokenId) -> Result<(), RateLimitError> {
        let inner = &*self.inner;
        let bucket = inner
            .buckets
            .get(&id)
            .ok_or(RateLimitError::UnknownToken(id))?;
        let now = (inner.clock)();
        // The state is a plain timestamp, valid even if a holder panicked.
        let mut bucket = bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let base = bucket.full_at.map_or(now, |t| t.max(now));
        // How much of the window is already used, plus this request.
        let used = base.saturating_duration_since(now) + inner.interval;
        if used > WINDOW {
            return Err(RateLimitError::Limited {
                retry_after: used - WINDOW,
            });
        }
        bucket.full_at = Some(base.checked_add(inner.interval).unwrap_or(base));
        Ok(())
    }
}

/// Middleware: per-token rate limit (see the module docs). Use with
/// `axum::middleware::from_fn_with_state(limiter, limit_per_token)` inside
/// [`require_bearer`](super::auth::require_bearer).
pub async fn limit_per_token(
    State(limiter): State<RateLimiter>,
    request: Request,
    next: Next,
) -> Response {
    let Some(id) = request.extensions().get::<TokenId>().copied() else {
        return ApiError::internal("rate limiter reached without an authenticated token id")
            .into_response();
    };
    match limiter.check(id) {
        Ok(()) => next.run(request).await,
        Err(RateLimitError::Limited { retry_after }) => {
            tracing::debug!(token = %id, ?retry_after, "rate limit exceeded");
            ApiError::rate_limited(limiter.limit().get(), retry_after, SystemTime::now())
                .into_response()
        }
        Err(e @ RateLimitError::UnknownToken(_)) => {
            ApiError::internal(e.to_string()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::auth::require_bearer;
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::http::{Request as HttpRequest, StatusCode, header};
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use raftmetrics_core::Timestamp;
    use serde_json::Value;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tower::ServiceExt;

    /// A clock that only moves when told to.
    #[derive(Clone)]
    struct ManualClock {
        start: Instant,
        offset_ms: Arc<AtomicU64>,
    }

    impl ManualClock {
        fn new() -> Self {
            ManualClock {
                start: Instant::now(),
                offset_ms: Arc::new(AtomicU64::new(0)),
            }
        }
        fn advance(&self, d: Duration) {
            let ms = u64::try_from(d.as_millis()).expect("small");
            self.offset_ms.fetch_add(ms, Ordering::SeqCst);
        }
        fn clock(&self) -> Clock {
            let this = self.clone();
            Arc::new(move || {
                this.start + Duration::from_millis(this.offset_ms.load(Ordering::SeqCst))
            })
        }
    }

    const A: &str = "token-a";
    const B: &str = "token-b";

    fn setup(limit: u32) -> (Router, ManualClock, TokenSet) {
        let tokens = TokenSet::new([A, B]).expect("tokens");
        let clock = ManualClock::new();
        let limit = NonZeroU32::new(limit).expect("nonzero");
        let limiter = RateLimiter::with_clock(limit, &tokens, clock.clock());
        let app = Router::new()
            .route("/x", get(|| async { "ok" }))
            .layer(from_fn_with_state(limiter, limit_per_token))
            .layer(from_fn_with_state(tokens.clone(), require_bearer));
        (app, clock, tokens)
    }

    async fn call(app: &Router, token: &str) -> Response {
        let req = HttpRequest::get("/x")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        app.clone().oneshot(req).await.expect("response")
    }

    async fn status(app: &Router, token: &str) -> StatusCode {
        call(app, token).await.status()
    }

    #[tokio::test]
    async fn limit_reached_is_429_for_that_token_only() {
        let (app, _clock, _) = setup(3);
        for _ in 0..3 {
            assert_eq!(status(&app, A).await, StatusCode::OK);
        }
        let resp = call(&app, A).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        // 3 per minute: one request every 20 s.
        assert_eq!(resp.headers()[header::RETRY_AFTER], "20");
        let bytes = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        let body: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
        assert_eq!(body["details"]["limit"], 3);
        assert_eq!(body["details"]["window"], "1m");
        let reset_at = body["details"]["reset_at"].as_str().expect("reset_at");
        let reset_at = Timestamp::parse(reset_at).expect("ISO 8601");
        assert!(reset_at > Timestamp::now());
        // The other token is unaffected.
        for _ in 0..3 {
            assert_eq!(status(&app, B).await, StatusCode::OK);
        }
        assert_eq!(status(&app, B).await, StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn budget_refills_over_the_window() {
        let (app, clock, _) = setup(3);
        for _ in 0..3 {
            assert_eq!(status(&app, A).await, StatusCode::OK);
        }
        assert_eq!(status(&app, A).await, StatusCode::TOO_MANY_REQUESTS);
        // A third of the window gives back one request.
        clock.advance(Duration::from_secs(19));
        assert_eq!(status(&app, A).await, StatusCode::TOO_MANY_REQUESTS);
        clock.advance(Duration::from_secs(1));
        assert_eq!(status(&app, A).await, StatusCode::OK);
        assert_eq!(status(&app, A).await, StatusCode::TOO_MANY_REQUESTS);
        // A full window gives back the whole burst, no more.
        clock.advance(WINDOW);
        for _ in 0..3 {
            assert_eq!(status(&app, A).await, StatusCode::OK);
        }
        assert_eq!(status(&app, A).await, StatusCode::TOO_MANY_REQUESTS);
        // Idle for long: still only a burst of `limit`.
        clock.advance(WINDOW * 10);
        for _ in 0..3 {
            assert_eq!(status(&app, A).await, StatusCode::OK);
        }
        assert_eq!(status(&app, A).await, StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn retry_after_is_time_to_next_allowed_request() {
        let tokens = TokenSet::new([A]).expect("tokens");
        let id = tokens.ids().next().expect("id");
        let clock = ManualClock::new();
        let limiter =
            RateLimiter::with_clock(NonZeroU32::new(1000).expect("nz"), &tokens, clock.clock());
        for _ in 0..1000 {
            assert_eq!(limiter.check(id), Ok(()));
        }
        assert_eq!(
            limiter.check(id),
            Err(RateLimitError::Limited {
                retry_after: Duration::from_millis(60)
            })
        );
        clock.advance(Duration::from_millis(30));
        assert_eq!(
            limiter.check(id),
            Err(RateLimitError::Limited {
                retry_after: Duration::from_millis(30)
            })
        );
        clock.advance(Duration::from_millis(30));
        assert_eq!(limiter.check(id), Ok(()));
    }

    #[test]
    fn state_is_bounded_by_configured_tokens() {
        let tokens = TokenSet::new([A, B]).expect("tokens");
        let limiter = RateLimiter::new(NonZeroU32::new(5).expect("nz"), &tokens);
        assert_eq!(limiter.tracked_tokens(), 2);
        let stranger = TokenSet::new(["token-c"])
            .expect("tokens")
            .ids()
            .next()
            .expect("id");
        assert_eq!(
            limiter.check(stranger),
            Err(RateLimitError::UnknownToken(stranger))
        );
        assert_eq!(limiter.tracked_tokens(), 2);
    }

    #[tokio::test]
    async fn missing_token_id_fails_closed() {
        let tokens = TokenSet::new([A]).expect("tokens");
        let limiter = RateLimiter::new(NonZeroU32::new(5).expect("nz"), &tokens);
        let app = Router::new()
            .route("/x", get(|| async { "ok" }))
            .layer(from_fn_with_state(limiter, limit_per_token));
        let req = HttpRequest::get("/x").body(Body::empty()).expect("request");
        let resp = app.oneshot(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn unauthenticated_requests_do_not_spend_budget() {
        let (app, _clock, _) = setup(1);
        for _ in 0..5 {
            assert_eq!(status(&app, "unknown").await, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(status(&app, A).await, StatusCode::OK);
        assert_eq!(status(&app, A).await, StatusCode::TOO_MANY_REQUESTS);
    }
}
