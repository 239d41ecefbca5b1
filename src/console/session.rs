//! The console's Backend-for-Frontend session.
//!
//! The browser never sees a token. Signing in (local login, or an OIDC authorization-code +
//! PKCE flow that Zen runs and ends with a redirect to the console) stores the session's token
//! set in the shared cache under a random id, and hands the browser only that id, in an
//! `HttpOnly`, `SameSite=Strict` cookie (`Secure`, named `__Host-zen_session`, when Zen's public
//! URL is `https://`). [`relay`] sits in front of the gateway: a request that carries the cookie
//! and no `Authorization` header gets the session's access token as its bearer (refreshed when
//! it is about to expire), so every REST route and the `events:watch` WebSocket work unchanged.
//! Requests that bring their own `Authorization` header pass untouched: the API keeps accepting
//! bearer tokens.
//!
//! CSRF: every state-changing request authenticated by the cookie must come from Zen's own
//! origin (`Sec-Fetch-Site` / `Origin`) and carry the session's CSRF token in `X-CSRF-Token`;
//! a WebSocket upgrade must come from Zen's own origin. Sign-out revokes Zen's session (its
//! refresh token and every access token die at once) and forgets the console session.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tonic::Code;
use tower::ServiceExt;

use super::{problem, Console};

/// The header carrying the session's CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
const KEY_PREFIX: &str = "console-session:";
/// Refresh the access token when it has less than this left.
const REFRESH_MARGIN: i64 = 60;
/// How long one replica may hold a session's refresh (others wait for its result).
const REFRESH_LOCK: Duration = Duration::from_secs(10);
/// Largest body the sign-in endpoint reads.
const MAX_LOGIN_BODY: usize = 16 * 1024;

/// What the cache holds for one console session.
#[derive(Serialize, Deserialize, Clone)]
struct Record {
    access_token: String,
    /// Unix seconds.
    access_expires_at: i64,
    /// The access token's lifetime in seconds, as issued.
    #[serde(default)]
    access_ttl: i64,
    refresh_token: String,
    csrf: String,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    hex::encode(bytes)
}

/// The cache key of a cookie value: the cookie itself is never stored.
fn key(cookie: &str) -> String {
    format!(
        "{KEY_PREFIX}{}",
        hex::encode(Sha256::digest(cookie.as_bytes()))
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Console {
    fn cookie_name(&self) -> &'static str {
        if self.config.secure_cookies {
            "__Host-zen_session"
        } else {
            "zen_session"
        }
    }

    /// The session cookie's value, if the request carries one of the right shape.
    fn cookie(&self, headers: &HeaderMap) -> Option<String> {
        let name = self.cookie_name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_owned())
            .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    fn set_cookie(&self, value: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.config.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
            self.cookie_name(),
            max_age.as_secs()
        ))
        .expect("a valid header value")
    }

    fn clear_cookie(&self) -> HeaderValue {
        self.set_cookie("", Duration::ZERO)
    }

    async fn load(&self, cookie: &str) -> Option<Record> {
        let raw = self.cache.get(&key(cookie)).await.ok()??;
        serde_json::from_slice(&raw).ok()
    }

    /// Calls the gateway in-process, as the browser's request would have (same client address
    /// and forwarding headers), and returns the status and the body.
    async fn call(
        &self,
        from: &HeaderMap,
        peer: Option<ConnectInfo<std::net::SocketAddr>>,
        method: Method,
        uri: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Bytes) {
        let mut request = Request::builder().method(method.clone()).uri(uri);
        for name in ["forwarded", "x-forwarded-for", "user-agent"] {
            if let Some(v) = from.get(name) {
                request = request.header(name, v);
            }
        }
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if method != Method::GET {
            request = request.header("x-request-id", uuid::Uuid::new_v4().to_string());
        }
        let body = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).expect("a valid request");
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        let response = match self.gateway.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (status, bytes)
    }

    /// Stores a fresh token set (`TokenSet` JSON) as a new session; returns the cookie value
    /// and how long it lives.
    async fn open(&self, token: &Value) -> Result<(String, Record, Duration), Response> {
        let record = record_of(token, random_hex()).ok_or_else(|| {
            problem(
                StatusCode::BAD_GATEWAY,
                Code::Internal,
                "console-session",
                "sign-in returned no token set",
            )
        })?;
        let ttl = ttl_of(token).min(self.config.session_ttl);
        let cookie = random_hex();
        self.cache
            .set(
                &key(&cookie),
                &serde_json::to_vec(&record).expect("serializable"),
                ttl,
            )
            .await
            .map_err(|_| unavailable())?;
        Ok((cookie, record, ttl))
    }

    /// The session's access token, refreshed first when it is about to expire. `None`: the
    /// session is gone (expired, signed out, or its refresh was refused).
    async fn access_token(
        &self,
        cookie: &str,
        from: &HeaderMap,
        peer: Option<ConnectInfo<std::net::SocketAddr>>,
    ) -> Option<Record> {
        let record = self.load(cookie).await?;
        if !record.needs_refresh() {
            return Some(record);
        }
        // One refresh per session across replicas: a second use of a rotated refresh token
        // would revoke the whole session. The others wait for the winner's result.
        let lock = format!("{}:refresh", key(cookie));
        if !self
            .cache
            .set_if_absent(&lock, b"1", REFRESH_LOCK)
            .await
            .ok()?
        {
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let current = self.load(cookie).await?;
                if current.access_token != record.access_token {
                    return Some(current);
                }
            }
            return None;
        }
        let (status, body) = self
            .call(
                from,
                peer,
                Method::POST,
                "/auth/refresh",
                None,
                Some(json!({ "refreshToken": record.refresh_token })),
            )
            .await;
        let refreshed = (status == StatusCode::OK)
            .then(|| serde_json::from_slice::<Value>(&body).ok())
            .flatten()
            .and_then(|v| {
                let token = v.get("token")?.clone();
                Some((record_of(&token, record.csrf.clone())?, ttl_of(&token)))
            });
        let result = match refreshed {
            Some((next, ttl)) => {
                let stored = self
                    .cache
                    .set(
                        &key(cookie),
                        &serde_json::to_vec(&next).expect("serializable"),
                        ttl.min(self.config.session_ttl),
                    )
                    .await;
                stored.ok().map(|_| next)
            }
            None => {
                let _ = self.cache.delete(&key(cookie)).await;
                None
            }
        };
        let _ = self.cache.delete(&lock).await;
        result
    }
}

impl Record {
    /// Whether the access token is close enough to its end to be replaced before use: within
    /// a minute of it, or within half its lifetime when that is shorter.
    fn needs_refresh(&self) -> bool {
        let margin = REFRESH_MARGIN.min(self.access_ttl / 2);
        self.access_expires_at - now() <= margin
    }
}

fn record_of(token: &Value, csrf: String) -> Option<Record> {
    Some(Record {
        access_token: token.get("accessToken")?.as_str()?.to_owned(),
        access_expires_at: now() + token.get("expiresIn")?.as_i64()?,
        access_ttl: token.get("expiresIn")?.as_i64()?,
        refresh_token: token.get("refreshToken")?.as_str()?.to_owned(),
        csrf,
    })
}

fn ttl_of(token: &Value) -> Duration {
    Duration::from_secs(
        token
            .get("refreshExpiresIn")
            .and_then(Value::as_u64)
            .unwrap_or(3600),
    )
}

fn unavailable() -> Response {
    let mut r = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        Code::Unavailable,
        "unavailable",
        "the session store is unavailable; try again",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// A refused request. Its body is never read, so the connection is closed after the answer
/// (a client reusing it would otherwise race the server dropping it).
fn forbidden(detail: &str) -> Response {
    let mut r = problem(
        StatusCode::FORBIDDEN,
        Code::PermissionDenied,
        "csrf",
        detail,
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn no_session() -> Response {
    problem(
        StatusCode::UNAUTHORIZED,
        Code::Unauthenticated,
        "no-session",
        "not signed in",
    )
}

/// Whether a browser request comes from Zen's own pages: `Sec-Fetch-Site` (sent by every
/// current browser) must be `same-origin`, and `Origin`, when present, must name the host the
/// request was sent to. Non-browser clients send neither and are judged by the CSRF token.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site") {
        if site != "same-origin" {
            return false;
        }
    }
    match (text("origin"), text("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                == Some(host)
        }
        (Some(_), None) => false,
    }
}

fn peer_of(extensions: &Extensions) -> Option<ConnectInfo<std::net::SocketAddr>> {
    extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .copied()
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A browser navigation (as opposed to an API client asking for JSON).
fn is_navigation(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    text("sec-fetch-mode") == Some("navigate")
        || text("accept").is_some_and(|a| a.contains("text/html"))
}

/// Where to continue after sign-in: a path of the console, never another site.
fn continue_at(return_to: Option<&str>) -> String {
    match return_to {
        Some(p)
            if (p == "/" || p.starts_with("/console"))
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.chars().any(char::is_control) =>
        {
            p.to_owned()
        }
        _ => "/console/".to_owned(),
    }
}

/// Percent-encoding of a query value (unreserved characters pass).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The middleware in front of the gateway: swaps the session cookie for the bearer it relays,
/// enforces the CSRF rules, and ends browser OIDC callbacks with a redirect to the console.
pub async fn relay(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    if parts.method == Method::GET
        && parts.uri.path().starts_with("/auth/callback/")
        && is_navigation(&parts.headers)
    {
        return oidc_callback(&console, Request::from_parts(parts, body), next).await;
    }
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let Some(cookie) = console.cookie(&parts.headers) else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let upgrade = is_upgrade(&parts.headers);
    if (!is_safe(&parts.method) || upgrade) && !same_origin(&parts.headers) {
        return forbidden("cross-site request refused");
    }
    let peer = peer_of(&parts.extensions);
    let Some(record) = console.access_token(&cookie, &parts.headers, peer).await else {
        // The session ended (expired, signed out elsewhere, refresh refused): the request goes
        // on without credentials (public routes still answer, the others say 401) and the
        // browser forgets the cookie.
        parts.headers.remove(header::COOKIE);
        let mut r = next.run(Request::from_parts(parts, body)).await;
        r.headers_mut()
            .append(header::SET_COOKIE, console.clear_cookie());
        return r;
    };
    if !is_safe(&parts.method) {
        let presented = parts
            .headers
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !constant_time_eq(presented, record.csrf.as_bytes()) {
            return forbidden("missing or wrong X-CSRF-Token");
        }
    }
    let bearer = HeaderValue::from_str(&format!("Bearer {}", record.access_token))
        .expect("a token is a valid header value");
    parts.headers.insert(header::AUTHORIZATION, bearer);
    // The gateway never needs the browser's cookies.
    parts.headers.remove(header::COOKIE);
    next.run(Request::from_parts(parts, body)).await
}

/// The parameters of an authorization response that CompleteLogin reads. Providers add others
/// (`iss` per RFC 9207, `session_state`, Google's `scope`, `authuser`, `hd`, `prompt`), which
/// the contract does not name and the gateway would refuse as unknown.
const CALLBACK_PARAMETERS: [&str; 4] = ["code", "state", "error", "error_description"];

fn callback_query(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            CALLBACK_PARAMETERS.contains(&name)
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn oidc_callback(console: &Console, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let query = callback_query(parts.uri.query().unwrap_or_default());
    let uri = format!("{}?{query}", parts.uri.path());
    match uri.parse() {
        Ok(uri) => parts.uri = uri,
        Err(_) => return Redirect::to("/console/?login_error=bad%20callback").into_response(),
    }
    let response = next.run(Request::from_parts(parts, body)).await;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != StatusCode::OK {
        let why = value
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or("sign-in failed");
        return Redirect::to(&format!("/console/?login_error={}", encode(why))).into_response();
    }
    let Some(token) = value.get("token") else {
        return Redirect::to("/console/?login_error=no%20token").into_response();
    };
    let (cookie, _, ttl) = match console.open(token).await {
        Ok(opened) => opened,
        Err(r) => return r,
    };
    let mut r =
        Redirect::to(&continue_at(value.get("returnTo").and_then(Value::as_str))).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, console.set_cookie(&cookie, ttl));
    r
}

/// The signed-in user, their tenants and the CSRF token the pages send back.
async fn describe(
    console: &Console,
    headers: &HeaderMap,
    peer: Option<ConnectInfo<std::net::SocketAddr>>,
    record: &Record,
) -> Response {
    let (status, body) = console
        .call(
            headers,
            peer,
            Method::GET,
            "/v1/users/me",
            Some(&record.access_token),
            None,
        )
        .await;
    if status != StatusCode::OK {
        return relay_problem(status, body);
    }
    let mut me: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!({}));
    me["csrfToken"] = Value::String(record.csrf.clone());
    axum::Json(me).into_response()
}

fn relay_problem(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, zen_gateway::PROBLEM_CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// `GET /console/session`: who is signed in (401 when nobody).
pub async fn current(
    State(console): State<Arc<Console>>,
    extensions: Extensions,
    headers: HeaderMap,
) -> Response {
    let peer = peer_of(&extensions);
    let Some(cookie) = console.cookie(&headers) else {
        return no_session();
    };
    match console.access_token(&cookie, &headers, peer).await {
        Some(record) => describe(&console, &headers, peer, &record).await,
        None => {
            let mut r = no_session();
            r.headers_mut()
                .insert(header::SET_COOKIE, console.clear_cookie());
            r
        }
    }
}

/// `POST /console/session/login` with `{"username", "password"}`: local sign-in.
pub async fn login(
    State(console): State<Arc<Console>>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer_of(&extensions);
    // A login CSRF (signing the victim in as the attacker) is refused like any other: only
    // Zen's own pages may post here, and only JSON (which a cross-site form cannot send).
    if !same_origin(&headers) {
        return forbidden("cross-site request refused");
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            "unsupported-media-type",
            "send the credentials as application/json",
        );
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_LOGIN_BODY).await else {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::InvalidArgument,
            "payload-too-large",
            "the sign-in body is too large",
        );
    };
    let Ok(credentials) = serde_json::from_slice::<Value>(&bytes) else {
        return problem(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            "invalid-json",
            "the body is not JSON",
        );
    };
    let (status, body) = console
        .call(
            &headers,
            peer,
            Method::POST,
            "/auth/local/login",
            None,
            Some(json!({
                "username": credentials.get("username").cloned().unwrap_or(Value::Null),
                "password": credentials.get("password").cloned().unwrap_or(Value::Null),
            })),
        )
        .await;
    if status != StatusCode::OK {
        return relay_problem(status, body);
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(token) = value.get("token") else {
        return no_session();
    };
    let (cookie, record, ttl) = match console.open(token).await {
        Ok(opened) => opened,
        Err(r) => return r,
    };
    let mut r = describe(&console, &headers, peer, &record).await;
    r.headers_mut()
        .insert(header::SET_COOKIE, console.set_cookie(&cookie, ttl));
    r
}

/// `POST /console/session/logout`: ends Zen's session and forgets the console's.
pub async fn logout(
    State(console): State<Arc<Console>>,
    extensions: Extensions,
    headers: HeaderMap,
) -> Response {
    let peer = peer_of(&extensions);
    if !same_origin(&headers) {
        return forbidden("cross-site request refused");
    }
    if let Some(cookie) = console.cookie(&headers) {
        if let Some(record) = console.load(&cookie).await {
            let presented = headers
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !constant_time_eq(presented, record.csrf.as_bytes()) {
                return forbidden("missing or wrong X-CSRF-Token");
            }
            // Revoke by refresh token: it works even when the access token has expired.
            let (status, body) = console
                .call(
                    &headers,
                    peer,
                    Method::POST,
                    "/auth/logout",
                    None,
                    Some(json!({ "refreshToken": record.refresh_token })),
                )
                .await;
            if !status.is_success() && status != StatusCode::UNAUTHORIZED {
                return relay_problem(status, body);
            }
            if console.cache.delete(&key(&cookie)).await.is_err() {
                return unavailable();
            }
        }
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, console.clear_cookie());
    r
}

#[derive(Deserialize)]
pub struct BeginQuery {
    return_to: Option<String>,
}

/// `GET /console/session/oidc/{provider}`: starts the provider's authorization-code + PKCE flow
/// (Zen keeps the verifier, state and nonce) and sends the browser to the provider.
pub async fn begin_oidc(
    State(console): State<Arc<Console>>,
    extensions: Extensions,
    Path(provider): Path<String>,
    Query(query): Query<BeginQuery>,
    headers: HeaderMap,
) -> Response {
    let peer = peer_of(&extensions);
    let return_to = continue_at(query.return_to.as_deref());
    let uri = format!(
        "/auth/login?provider={}&returnTo={}",
        encode(&provider),
        encode(&return_to)
    );
    let (status, body) = console
        .call(&headers, peer, Method::GET, &uri, None, None)
        .await;
    // BeginLogin answers browsers with a redirect already; its body names the URL either way.
    if !(status.is_success() || status.is_redirection()) {
        return relay_problem(status, body);
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match value.get("authorizationUrl").and_then(Value::as_str) {
        Some(url) => Redirect::to(url).into_response(),
        None => problem(
            StatusCode::BAD_GATEWAY,
            Code::Internal,
            "oidc",
            "the provider gave no authorization URL",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// Eight requests arrive at once with an expired access token: the refresh token (single
    /// use, as Zen's are) is spent exactly once and every request carries the new token.
    #[tokio::test]
    async fn concurrent_requests_refresh_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        use axum::routing::{get, post};
        use axum::{Json, Router};

        use crate::console::{router, Console, ConsoleConfig};

        let refreshes = Arc::new(AtomicUsize::new(0));
        let counter = refreshes.clone();
        let token = |n: usize, ttl: u64| {
            json!({"accessToken": format!("a{n}"), "expiresIn": ttl,
                   "refreshToken": format!("r{n}"), "refreshExpiresIn": 3600})
        };
        let gateway = Router::new()
            .route(
                "/auth/local/login",
                post(move || async move { Json(json!({ "token": token(0, 0) })) }),
            )
            .route(
                "/auth/refresh",
                post(move |Json(body): Json<Value>| {
                    let counter = counter.clone();
                    async move {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        if body["refreshToken"] != format!("r{n}") {
                            return (StatusCode::UNAUTHORIZED, Json(json!({})));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        (StatusCode::OK, Json(json!({ "token": token(n + 1, 3600) })))
                    }
                }),
            )
            .route(
                "/v1/users/me",
                get(|| async { Json(json!({"user": {"userId": "u"}})) }),
            )
            .route(
                "/v1/echo",
                get(|headers: HeaderMap| async move {
                    headers
                        .get(header::AUTHORIZATION)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default()
                }),
            );
        let cache = zen_cache::connect(None, "test:").await.unwrap();
        let console = Console::new(
            gateway.clone(),
            cache,
            ConsoleConfig {
                secure_cookies: false,
                local_login: true,
                providers: vec![],
                session_ttl: Duration::from_secs(3600),
                grpc_port: 7443,
            },
        );
        let app = router(console.clone())
            .fallback_service(gateway.layer(axum::middleware::from_fn_with_state(console, relay)));
        let login = app
            .clone()
            .oneshot(
                Request::post("/console/session/login")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(r#"{"username": "u", "password": "p"}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(login.status(), StatusCode::OK);
        let set_cookie = login.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
        assert!(!set_cookie.contains("Secure"));
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let calls = (0..8).map(|_| {
            let app = app.clone();
            let cookie = cookie.clone();
            async move {
                let r = app
                    .oneshot(
                        Request::get("/v1/echo")
                            .header(header::COOKIE, cookie)
                            .body(Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let status = r.status();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8(body.to_vec()).unwrap())
            }
        });
        for (status, bearer) in futures::future::join_all(calls).await {
            assert_eq!((status, bearer.as_str()), (StatusCode::OK, "Bearer a1"));
        }
        assert_eq!(refreshes.load(Ordering::SeqCst), 1);
        // A state-changing request without the CSRF token never reaches the gateway.
        let r = app
            .oneshot(
                Request::post("/v1/echo")
                    .header(header::COOKIE, cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn only_zen_own_pages_are_same_origin() {
        assert!(same_origin(&headers(&[("host", "zen.example")])));
        assert!(same_origin(&headers(&[
            ("host", "zen.example"),
            ("origin", "https://zen.example"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "zen.example"),
            ("origin", "https://evil.example"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "zen.example"),
            ("sec-fetch-site", "cross-site"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "zen.example"),
            ("sec-fetch-site", "same-site"),
        ])));
    }

    #[test]
    fn sign_in_continues_only_inside_the_console() {
        assert_eq!(
            continue_at(Some("/console/t/x/events")),
            "/console/t/x/events"
        );
        assert_eq!(continue_at(Some("//evil.example")), "/console/");
        assert_eq!(continue_at(Some("https://evil.example")), "/console/");
        assert_eq!(continue_at(Some("/console\\..")), "/console/");
        assert_eq!(continue_at(None), "/console/");
    }

    #[test]
    fn callbacks_keep_only_what_complete_login_reads() {
        assert_eq!(
            callback_query("code=a%2Fb&state=s&iss=http%3A%2F%2Fidp&session_state=x&scope=openid"),
            "code=a%2Fb&state=s"
        );
        assert_eq!(
            callback_query("error=access_denied&error_description=no&state=s"),
            "error=access_denied&error_description=no&state=s"
        );
    }

    #[test]
    fn encoding_escapes_everything_but_unreserved() {
        assert_eq!(encode("/console/?a=b&c"), "%2Fconsole%2F%3Fa%3Db%26c");
    }
}
