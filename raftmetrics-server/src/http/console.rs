//! The control node's web console: one static page (`GET /`) with its script and style
//! sheet, built into the binary. The page carries no data, so it is served without a
//! token ([`super::stack::with_open`]); everything it shows comes from the API, called by
//! the page's script with the token the user types in. That token lives in a variable of
//! the page only (never in storage, a cookie or the URL), so reloading the page signs out.
//!
//! The page: a PromQL query (`/api/v1/query_range`) or an `/aggregate` query over a time
//! range, drawn as an SVG line chart and listed as a table; and the cluster (`/health`,
//! `/admin/workers`). Every answer carries a Content Security Policy that allows only the
//! page's own files and API (no inline script or style), `nosniff` and `no-store`.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The Content Security Policy of the console's answers: its own files, its own API, and
/// `data:` images; no inline script or style.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; connect-src 'self'";

/// The console's routes (unauthenticated: static files only): `GET /`, `GET /console.js`,
/// `GET /console.css`.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
}

/// A static file with the console's security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::http::auth::TokenSet;
    use crate::http::stack::{StackConfig, public, with_open};
    use crate::metrics::Metrics;

    const TOKEN: &str = "console-test-token";

    /// A control node's public router in miniature: one API route behind the layers, the
    /// console beside them.
    fn app() -> Router {
        let metrics = Arc::new(Metrics::new("control", 1));
        let api = Router::new().route("/health", get(|| async { "ok" }));
        let config = StackConfig {
            tokens: TokenSet::new([TOKEN]).expect("token set"),
            rate_limit_per_minute: NonZeroU32::new(1000).expect("non-zero"),
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(5),
            metrics: Arc::clone(&metrics),
        };
        with_open(public(api, config), routes(), metrics)
    }

    async fn send(method: &str, path: &str, token: Option<&str>) -> Response {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        app()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("answer")
    }

    #[tokio::test]
    async fn the_page_and_its_assets_need_no_token_and_carry_the_headers() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/console.js", "text/javascript"),
            ("/console.css", "text/css"),
        ] {
            let response = send("GET", path, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let headers = response.headers();
            let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
            assert!(header(header::CONTENT_TYPE).is_some_and(|v| v.starts_with(kind)));
            assert_eq!(
                header(header::CONTENT_SECURITY_POLICY),
                Some(CONTENT_SECURITY_POLICY)
            );
            assert_eq!(header(header::X_CONTENT_TYPE_OPTIONS), Some("nosniff"));
            assert_eq!(header(header::CACHE_CONTROL), Some("no-store"));
        }
    }

    #[tokio::test]
    async fn every_other_path_still_needs_the_token() {
        for path in ["/health", "/no-such-path", "/console.js/x", "/index.html"] {
            let response = send("GET", path, None).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        }
        assert_eq!(
            send("GET", "/health", Some(TOKEN)).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            send("GET", "/no-such-path", Some(TOKEN)).await.status(),
            StatusCode::NOT_FOUND
        );
        // Another method on the page's path: the API's 405, and nothing served.
        assert_eq!(
            send("POST", "/", None).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn the_page_loads_no_inline_or_outside_code() {
        assert!(INDEX_HTML.contains(r#"<script src="/console.js""#));
        assert!(INDEX_HTML.contains(r#"href="/console.css""#));
        // No inline script, style attribute or style element, nothing from another origin.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains("<style"));
        for text in [INDEX_HTML, CONSOLE_JS, CONSOLE_CSS] {
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("@import") && !text.contains("url("));
        }
        // The token is never stored, and data never goes into markup.
        for banned in [
            "localStorage",
            "sessionStorage",
            "document.cookie",
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!CONSOLE_JS.contains(banned), "console.js uses {banned}");
        }
    }
}
