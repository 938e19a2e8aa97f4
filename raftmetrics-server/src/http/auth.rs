//! Token authentication for every public endpoint: `Authorization: Bearer <token>`, or the
//! schemes InfluxDB clients send, `Token <token>` (2.x) and `Basic` with the token as the
//! password (1.x; the user name is ignored).
//!
//! [`TokenSet`] keeps only the SHA-256 hashes of the configured tokens. A presented token is
//! hashed and compared with every stored hash in constant time (no early exit over the set),
//! so neither the comparison nor the position of a match leaks through timing.
//!
//! [`require_bearer`] is the middleware (`axum::middleware::from_fn_with_state(tokens,
//! require_bearer)`). It refuses, with 401 AUTH_ERROR:
//! - a token-like parameter in the query string (`token`, `access_token`, `auth`, any key
//!   ending in `token`, `api_key`, ...), even when the header is right: URLs end up in logs,
//!   so such a token must be treated as leaked (`token_status: "query_string_not_allowed"`);
//! - no `Authorization` header, or a scheme other than Bearer, Token or Basic (`"missing"`);
//! - a malformed or unknown bearer token (`"invalid"`).
//!
//! On success the request carries a [`TokenId`] extension (for the rate limiter and logs).

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::error::{ApiError, TokenStatus};

/// Longest accepted token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Most tokens a node accepts (bounds the token set and the rate limiter's state).
pub const MAX_TOKENS: usize = 10_000;

/// Query keys that are refused outright (compared after percent-decoding, lower case).
/// Any key ending in `token` is refused as well.
const FORBIDDEN_QUERY_KEYS: &[&str] = &[
    "auth",
    "authorization",
    "bearer",
    "jwt",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    // InfluxDB 1.x's password parameter (its clients can send the token there).
    "p",
    "password",
];

/// Why a configured token is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is empty.
    #[error("must not be empty")]
    Empty,
    /// The token has whitespace, control or non-ASCII characters (it must fit an HTTP header).
    #[error("must be printable ASCII without whitespace")]
    BadCharacter,
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("must be at most {MAX_TOKEN_BYTES} bytes")]
    TooLong,
}

/// Checks that `token` can be configured: non-empty, at most [`MAX_TOKEN_BYTES`], printable
/// ASCII without whitespace.
pub fn check_token(token: &str) -> Result<(), TokenError> {
    if token.is_empty() {
        Err(TokenError::Empty)
    } else if token.len() > MAX_TOKEN_BYTES {
        Err(TokenError::TooLong)
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        Err(TokenError::BadCharacter)
    } else {
        Ok(())
    }
}

/// Why a [`TokenSet`] cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenSetError {
    /// No token was given: every request would be refused.
    #[error("no auth tokens configured")]
    Empty,
    /// More than [`MAX_TOKENS`] distinct tokens.
    #[error("more than {MAX_TOKENS} auth tokens")]
    TooMany,
    /// The token at this position (0-based) is not acceptable.
    #[error("auth token #{} {reason}", .index + 1)]
    BadToken { index: usize, reason: TokenError },
    /// Two different tokens have the same [`TokenId`] (astronomically unlikely).
    #[error("two auth tokens share the id {0}; replace one of them")]
    IdCollision(TokenId),
}

/// A short, non-reversible name of a token: the first 8 bytes of its SHA-256 hash, shown as
/// 16 hex digits. Safe for logs; the key of the per-token rate limit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId([u8; 8]);

impl TokenId {
    fn from_hash(hash: &[u8; 32]) -> Self {
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash[..8]);
        TokenId(id)
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

/// The accepted bearer tokens, stored as SHA-256 hashes only. Cheap to clone (shared).
#[derive(Clone)]
pub struct TokenSet {
    hashes: Arc<[[u8; 32]]>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("tokens", &self.hashes.len())
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl TokenSet {
    /// Hashes the given tokens (duplicates count once). Each must pass [`check_token`]; at
    /// least one and at most [`MAX_TOKENS`] distinct tokens.
    pub fn new<I, S>(tokens: I) -> Result<Self, TokenSetError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut hashes: Vec<[u8; 32]> = Vec::new();
        for (index, token) in tokens.into_iter().enumerate() {
            let token = token.as_ref();
            check_token(token).map_err(|reason| TokenSetError::BadToken { index, reason })?;
            let hash = sha256(token.as_bytes());
            if hashes.contains(&hash) {
                continue;
            }
            if hashes.len() == MAX_TOKENS {
                return Err(TokenSetError::TooMany);
            }
            hashes.push(hash);
        }
        if hashes.is_empty() {
            return Err(TokenSetError::Empty);
        }
        let mut ids: Vec<TokenId> = hashes.iter().map(TokenId::from_hash).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(TokenSetError::IdCollision(pair[0]));
        }
        Ok(TokenSet {
            hashes: hashes.into(),
        })
    }

    /// Number of distinct tokens.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Never true for a set built by [`TokenSet::new`].
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The ids of all configured tokens.
    pub fn ids(&self) -> impl Iterator<Item = TokenId> + '_ {
        self.hashes.iter().map(TokenId::from_hash)
    }

    /// The id of `presented` if it is one of the tokens. The hash of `presented` is compared
    /// with every stored hash in constant time, without stopping at a match.
    pub fn verify(&self, presented: &str) -> Option<TokenId> {
        if presented.is_empty() || presented.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let hash = sha256(presented.as_bytes());
        let mut found = Choice::from(0u8);
        for stored in self.hashes.iter() {
            found |= stored[..].ct_eq(&hash[..]);
        }
        bool::from(found).then(|| TokenId::from_hash(&hash))
    }
}

/// Decides whether a request may pass: the query string, then the `Authorization` header.
pub fn authenticate(
    tokens: &TokenSet,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<TokenId, TokenStatus> {
    if uri.query().is_some_and(query_carries_token) {
        return Err(TokenStatus::QueryStringNotAllowed);
    }
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(TokenStatus::Missing);
    };
    if values.next().is_some() {
        return Err(TokenStatus::Invalid);
    }
    let Ok(value) = value.to_str() else {
        return Err(TokenStatus::Invalid);
    };
    let value = value.trim();
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    let rest = rest.trim_start_matches([' ', '\t']);
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        tokens.verify(rest).ok_or(TokenStatus::Invalid)
    } else if scheme.eq_ignore_ascii_case("basic") {
        let password = basic_password(rest).ok_or(TokenStatus::Invalid)?;
        tokens.verify(&password).ok_or(TokenStatus::Invalid)
    } else {
        Err(TokenStatus::Missing)
    }
}

/// The password of `Basic` credentials (`base64(user:password)`), when they decode.
fn basic_password(credentials: &str) -> Option<String> {
    use base64::Engine as _;
    if credentials.len() > 2 * MAX_TOKEN_BYTES {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

/// Middleware: bearer authentication (see the module docs). Use with
/// `axum::middleware::from_fn_with_state(token_set, require_bearer)`.
pub async fn require_bearer(
    State(tokens): State<TokenSet>,
    mut request: Request,
    next: Next,
) -> Response {
    match authenticate(&tokens, request.uri(), request.headers()) {
        Ok(id) => {
            request.extensions_mut().insert(id);
            next.run(request).await
        }
        Err(status) => {
            tracing::debug!(
                path = request.uri().path(),
                token_status = status.as_str(),
                "authentication refused"
            );
            ApiError::auth(status).into_response()
        }
    }
}

/// True when some query key names a token (`token`, `access_token`, `auth`, ...), after
/// percent-decoding and lower-casing. Both `&` and `;` separate pairs.
fn query_carries_token(query: &str) -> bool {
    query.split(['&', ';']).any(|pair| {
        let raw_key = pair.split('=').next().unwrap_or_default();
        let key = decode_key(raw_key);
        let key = key.trim_end_matches("[]");
        key.ends_with("token") || FORBIDDEN_QUERY_KEYS.contains(&key)
    })
}

/// Percent-decodes a query key (`+` is a space; a bad escape stays as it is) and lower-cases
/// it. The key's length is bounded by the server's URI limit.
fn decode_key(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::extract::Extension;
    use axum::http::{Request as HttpRequest, StatusCode};
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use serde_json::Value;
    use tower::ServiceExt;

    const GOOD: &str = "s3cret-token-1";
    const OTHER: &str = "s3cret-token-2";

    fn app() -> Router {
        let tokens = TokenSet::new([GOOD, OTHER]).expect("tokens");
        Router::new()
            .route(
                "/x",
                get(|Extension(id): Extension<TokenId>| async move { id.to_string() }),
            )
            .layer(from_fn_with_state(tokens, require_bearer))
    }

    async fn call(uri: &str, auth: Option<&str>) -> (StatusCode, Option<String>, String) {
        let mut req = HttpRequest::get(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = app()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (
            status,
            challenge,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    async fn refused(uri: &str, auth: Option<&str>) -> String {
        let (status, challenge, body) = call(uri, auth).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} {auth:?}");
        let challenge = challenge.expect("WWW-Authenticate");
        assert!(challenge.starts_with("Bearer realm=\"raftmetrics\""));
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body["code"], "AUTH_ERROR");
        body["details"]["token_status"]
            .as_str()
            .expect("token_status")
            .to_string()
    }

    #[tokio::test]
    async fn valid_token_passes_with_token_id() {
        let (status, _, body) = call("/x", Some(&format!("Bearer {GOOD}"))).await;
        assert_eq!(status, StatusCode::OK);
        let expected = TokenSet::new([GOOD])
            .expect("tokens")
            .ids()
            .next()
            .expect("id");
        assert_eq!(body, expected.to_string());
        assert_eq!(body.len(), 16);
        assert!(!body.contains(GOOD));
        // The scheme is case-insensitive; extra spaces before the token are tolerated.
        let (status, _, _) = call("/x", Some(&format!("bearer   {OTHER}"))).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn missing_header_is_refused() {
        assert_eq!(refused("/x", None).await, "missing");
    }

    #[tokio::test]
    async fn other_schemes_are_refused() {
        assert_eq!(refused("/x", Some("Digest abc")).await, "missing");
        assert_eq!(refused("/x", Some(GOOD)).await, "missing");
    }

    #[tokio::test]
    async fn influx_clients_schemes_carry_the_token() {
        use base64::Engine as _;
        let basic = |user_pass: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pass)
            )
        };
        for header in [
            format!("Token {GOOD}"),
            format!("token {GOOD}"),
            basic(&format!("anyone:{GOOD}")),
            basic(&format!(":{GOOD}")),
        ] {
            let (status, _, _) = call("/x", Some(&header)).await;
            assert_eq!(status, StatusCode::OK, "{header}");
        }
        // A wrong password, no password, or credentials that do not decode.
        assert_eq!(refused("/x", Some(&basic("user:pass"))).await, "invalid");
        assert_eq!(refused("/x", Some(&basic(GOOD))).await, "invalid");
        assert_eq!(refused("/x", Some("Basic %%%")).await, "invalid");
        assert_eq!(refused("/x", Some("Token nope")).await, "invalid");
        // InfluxDB 1.x's password parameter is a token in the query string.
        let header = format!("Bearer {GOOD}");
        assert_eq!(
            refused("/x?u=me&p=secret", Some(&header)).await,
            "query_string_not_allowed"
        );
    }

    #[tokio::test]
    async fn unknown_or_malformed_token_is_refused() {
        assert_eq!(refused("/x", Some("Bearer nope")).await, "invalid");
        assert_eq!(refused("/x", Some("Bearer")).await, "invalid");
        assert_eq!(refused("/x", Some("Bearer ")).await, "invalid");
        let prefix = &GOOD[..GOOD.len() - 1];
        assert_eq!(
            refused("/x", Some(&format!("Bearer {prefix}"))).await,
            "invalid"
        );
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            refused("/x", Some(&format!("Bearer {long}"))).await,
            "invalid"
        );
    }

    #[tokio::test]
    async fn token_in_query_string_is_refused_even_with_a_good_header() {
        let header = format!("Bearer {GOOD}");
        for uri in [
            "/x?token=abc",
            "/x?access_token=abc",
            "/x?auth=abc",
            "/x?metric=cpu&ACCESS_TOKEN=abc",
            "/x?%61ccess_token=abc",
            "/x?api_key=abc",
            "/x?id_token",
            "/x?a=1;token=2",
        ] {
            assert_eq!(
                refused(uri, Some(&header)).await,
                "query_string_not_allowed",
                "{uri}"
            );
        }
        assert_eq!(
            refused("/x?token=abc", None).await,
            "query_string_not_allowed"
        );
    }

    #[tokio::test]
    async fn ordinary_query_strings_pass() {
        let header = format!("Bearer {GOOD}");
        let uri = "/x?metric=cpu_usage&window=1h&tags=env:prod&tokens_total=3&key=token";
        let (status, _, _) = call(uri, Some(&header)).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[test]
    fn token_set_stores_hashes_only() {
        let set = TokenSet::new([GOOD, GOOD, OTHER]).expect("tokens");
        assert_eq!(set.len(), 2);
        assert!(!format!("{set:?}").contains(GOOD));
        assert!(set.verify(GOOD).is_some());
        assert!(set.verify("s3cret-token-3").is_none());
        assert_ne!(set.verify(GOOD), set.verify(OTHER));
        assert!(set.hashes.iter().all(|h| h != GOOD.as_bytes()));
    }

    #[test]
    fn token_set_refuses_bad_tokens() {
        assert_eq!(
            TokenSet::new(Vec::<String>::new()).err(),
            Some(TokenSetError::Empty)
        );
        assert_eq!(
            TokenSet::new(["ok", ""]).err(),
            Some(TokenSetError::BadToken {
                index: 1,
                reason: TokenError::Empty
            })
        );
        assert_eq!(
            TokenSet::new(["has space"]).err(),
            Some(TokenSetError::BadToken {
                index: 0,
                reason: TokenError::BadCharacter
            })
        );
        assert_eq!(
            TokenSet::new(["tab\there"]).err().map(|e| e.to_string()),
            Some("auth token #1 must be printable ASCII without whitespace".into())
        );
    }

    #[test]
    fn query_key_decoding() {
        assert!(query_carries_token("token"));
        assert!(query_carries_token("x=1&Auth_Token=2"));
        assert!(query_carries_token("token[]=1"));
        assert!(!query_carries_token("%zz=1&%"));
        assert!(!query_carries_token("metric=token"));
        assert!(query_carries_token(&format!("{}token=1", "a".repeat(100))));
        assert!(query_carries_token("%41PI%5fKEY=1"));
    }
}
