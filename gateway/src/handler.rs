//! The request pipeline: route, check headers, read and transcode the body, claim the
//! idempotency key, call gRPC, render the answer (or the problem).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};
use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use sha2::{Digest, Sha256};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tracing::Instrument;

use crate::codec::DynamicCodec;
use crate::idempotency::{Claim, StoredResponse};
use crate::problem::Problem;
use crate::routes::{Route, HTTP_BODY};
use crate::template::Captures;
use crate::transcode::{self, Input};
use crate::Inner;

pub(crate) const REQUEST_ID: &str = "x-request-id";
const CONTRACT_VERSION: &str = "x-zen-contract-version";
const TENANT_ID: &str = "x-tenant-id";
const REPLAYED: &str = "idempotent-replayed";
/// Response metadata by which a service chooses the HTTP success status.
pub const HTTP_STATUS_METADATA: &str = "x-http-code";

/// The largest request header section accepted (names and values of every line), and the
/// largest single forwarded header: above either the request is refused with 431 before
/// anything else happens, so no header can be too large for the gRPC hop behind the gateway.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
pub const MAX_FORWARDED_HEADER_BYTES: usize = 8 * 1024;

/// Who a bearer token names, as far as the gateway needs to know: enough to replay a stored
/// answer only to the principal that caused it, and only once the token is checked.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync {
    /// The principal behind `authorization` (the header's whole value).
    async fn principal(&self, authorization: &str) -> Principal;
}

/// What an [`Authenticator`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A valid token of this principal (a stable id: the same person with a fresh token is
    /// the same principal).
    Known(String),
    /// Not a valid token (expired, revoked, forged) or the check could not be made: no stored
    /// answer is served; the call goes to the gRPC front, which refuses (and audits) it.
    Unverified,
}

/// The client address computed for a request (see `client_address`), in its extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddress(pub std::net::IpAddr);

/// Headers copied verbatim into gRPC metadata.
const FORWARDED: [&str; 6] = [
    "authorization",
    CONTRACT_VERSION,
    TENANT_ID,
    "traceparent",
    "tracestate",
    "user-agent",
];

/// Security headers added to every response that does not set them itself.
pub(crate) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    ] {
        if !headers.contains_key(name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

/// `X-Request-Id` syntax: 1-128 characters of `[A-Za-z0-9._:-]`.
pub(crate) fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

pub(crate) enum RouteMatch<'a> {
    Found(&'a Route, Captures),
    MethodNotAllowed(Vec<String>),
    NotFound,
}

impl Inner {
    pub(crate) fn find(&self, method: &Method, path: &str) -> RouteMatch<'_> {
        find_route(&self.routes, method, path)
    }
}

/// The route for a request. A path whose custom verb (`...:verb`) some route has and matches
/// is for that route's path: another method is 405, never a match of a verb-less template
/// that would take `id:verb` for the id.
pub(crate) fn find_route<'r>(routes: &'r [Route], method: &Method, path: &str) -> RouteMatch<'r> {
    let with_verb = routes
        .iter()
        .any(|r| r.template.verb.is_some() && r.template.matches(path).is_some());
    let mut allowed: Vec<String> = Vec::new();
    for route in routes
        .iter()
        .filter(|r| !with_verb || r.template.verb.is_some())
    {
        if let Some(captures) = route.template.matches(path) {
            if route.info.http_method == method.as_str() {
                return RouteMatch::Found(route, captures);
            }
            if !allowed.contains(&route.info.http_method) {
                allowed.push(route.info.http_method.clone());
            }
        }
    }
    if allowed.is_empty() {
        RouteMatch::NotFound
    } else {
        RouteMatch::MethodNotAllowed(allowed)
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// A 431 problem when the header section, or one forwarded header, is larger than allowed.
fn oversized_headers(headers: &HeaderMap) -> Option<Problem> {
    let total: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let message = if total > MAX_HEADER_BYTES {
        format!("the request headers take {total} bytes; at most {MAX_HEADER_BYTES} are accepted")
    } else {
        let (name, value) = headers.iter().find(|(name, value)| {
            FORWARDED.contains(&name.as_str()) && value.len() > MAX_FORWARDED_HEADER_BYTES
        })?;
        format!(
            "the {name} header takes {} bytes; at most {MAX_FORWARDED_HEADER_BYTES} are accepted",
            value.len()
        )
    };
    Some(
        Problem::new(Code::InvalidArgument, message)
            .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            .with_type("request-header-fields-too-large")
            .with_reason("HEADERS_TOO_LARGE"),
    )
}

/// The gateway's fallback handler: every REST route.
pub(crate) async fn handle(State(gw): State<Arc<Inner>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Some(problem) = oversized_headers(&parts.headers) {
        let generated = uuid::Uuid::new_v4().to_string();
        return with_request_id(
            close_if_body(
                problem.with_instance(&generated).into_response(),
                declares_body(&parts.headers),
            ),
            &generated,
        );
    }
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied() {
        let address = gw
            .config
            .trusted_proxies
            .client_address(peer.ip(), &parts.headers);
        parts.extensions.insert(ClientAddress(address));
    }
    let incoming_id = header_str(&parts.headers, REQUEST_ID).map(str::to_owned);
    if parts.headers.contains_key(REQUEST_ID) {
        match &incoming_id {
            Some(id) if valid_request_id(id) => {}
            _ => {
                let generated = uuid::Uuid::new_v4().to_string();
                let response = Problem::new(
                    Code::InvalidArgument,
                    "X-Request-Id must be 1 to 128 characters of [A-Za-z0-9._:-]",
                )
                .with_reason("REQUEST_ID_MISSING")
                .with_instance(&generated)
                .into_response();
                return with_request_id(
                    close_if_body(response, declares_body(&parts.headers)),
                    &generated,
                );
            }
        }
    }
    let request_id = incoming_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let has_body = declares_body(&parts.headers);
    let mut matched = None;
    let mut response = match serve(
        &gw,
        parts,
        body,
        &request_id,
        incoming_id.is_some(),
        &mut matched,
    )
    .await
    {
        Ok(response) => response,
        Err(problem) => problem.with_instance(&request_id).into_response(),
    };
    if let Some(template) = matched {
        response.extensions_mut().insert(MatchedRoute(template));
    }
    // A refusal may come before the request's body was read, and an unread body means the
    // server drops the connection after answering: say so, or a client that reuses the
    // connection for its next request races that close and gets no answer at all.
    if response.status().is_client_error() || response.status().is_server_error() {
        response = close_if_body(response, has_body);
    }
    with_request_id(response, &request_id)
}

/// `Connection: close` on a refusal of a request whose body was not read (see [`handle`]).
fn close_if_body(mut response: Response, has_body: bool) -> Response {
    if has_body {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Whether the request says it carries a body (a non-zero `Content-Length`, or chunked).
fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

async fn serve(
    gw: &Arc<Inner>,
    parts: Parts,
    body: Body,
    request_id: &str,
    id_given: bool,
    matched: &mut Option<Arc<str>>,
) -> Result<Response, Problem> {
    let (route, captures) = match gw.find(&parts.method, parts.uri.path()) {
        RouteMatch::Found(route, captures) => {
            *matched = Some(Arc::from(route.info.path_template.as_str()));
            (route, captures)
        }
        RouteMatch::MethodNotAllowed(allowed) => {
            let mut problem = Problem::new(
                Code::Unimplemented,
                format!(
                    "{} is not allowed here; allowed: {}",
                    parts.method,
                    allowed.join(", ")
                ),
            )
            .with_status(StatusCode::METHOD_NOT_ALLOWED)
            .with_type("method-not-allowed");
            problem.allow = Some(allowed.join(", "));
            return Err(problem);
        }
        RouteMatch::NotFound => {
            return Err(Problem::new(
                Code::NotFound,
                format!("no route for {} {}", parts.method, parts.uri.path()),
            )
            .with_type("route-not-found"))
        }
    };

    if let Some(version) = parts.headers.get(CONTRACT_VERSION) {
        let version = version.to_str().unwrap_or_default();
        if !gw.supported_versions.iter().any(|v| v == version) {
            let mut problem = Problem::new(
                Code::InvalidArgument,
                format!(
                    "X-Zen-Contract-Version `{version}` is not supported; supported: {}",
                    gw.supported_versions.join(", ")
                ),
            )
            .with_reason("CONTRACT_VERSION_UNSUPPORTED");
            problem
                .metadata
                .insert("supported".into(), gw.supported_versions.join(","));
            return Err(problem);
        }
    }
    if route.info.mutating && !id_given {
        return Err(Problem::new(
            Code::InvalidArgument,
            "X-Request-Id is required on this mutating call (it is the idempotency key)",
        )
        .with_reason("REQUEST_ID_MISSING"));
    }

    if route.info.server_streaming && crate::ws::is_upgrade(&parts) {
        return crate::ws::upgrade(
            gw.clone(),
            route.clone(),
            captures,
            parts,
            request_id.to_owned(),
        )
        .await;
    }

    // Body: size first (declared, then actual), then media type.
    let limit = gw.config.max_body_bytes;
    let too_large = || {
        Problem::new(
            Code::InvalidArgument,
            format!("the request body exceeds {limit} bytes"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        .with_type("payload-too-large")
    };
    if let Some(len) =
        header_str(&parts.headers, "content-length").and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    if route.json_body() && !bytes.iter().all(u8::is_ascii_whitespace) {
        let ct = header_str(&parts.headers, "content-type").unwrap_or_default();
        if !is_json_media_type(ct) {
            return Err(Problem::new(
                Code::InvalidArgument,
                format!(
                    "the request body must be JSON (application/json); got `{}`",
                    if ct.is_empty() { "no content type" } else { ct }
                ),
            )
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .with_type("unsupported-media-type"));
        }
    }

    let tenant = header_str(&parts.headers, TENANT_ID)
        .map(str::to_owned)
        .or_else(|| {
            captures
                .iter()
                .find(|(path, _)| path.len() == 1 && path[0] == "tenant_id")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_default();
    let message = transcode::build_request(
        route,
        Input {
            captures,
            query: parts.uri.query(),
            headers: &parts.headers,
            body: bytes,
        },
        &gw.behaviors,
    )?;
    let metadata = metadata(&parts, request_id);

    if route.info.server_streaming {
        return stream(gw, route, message, metadata, &parts.headers, request_id).await;
    }

    let accept = header_str(&parts.headers, "accept")
        .unwrap_or_default()
        .to_owned();
    let store = gw
        .config
        .idempotency
        .clone()
        .filter(|_| route.info.mutating);
    let Some(store) = store else {
        return Ok(unary(gw, route, message, metadata, &accept, request_id)
            .await
            .into_response());
    };

    // Idempotent path: claim the key atomically before calling. The key is the principal's:
    // a stored answer goes back only to whoever caused it, and only after their token checks
    // out (a logged-out token gets no replay). A token that does not check out skips the
    // idempotency store and goes to the gRPC front, which refuses and audits it.
    let subject = match header_str(&parts.headers, "authorization") {
        None => "anon".to_owned(),
        Some(auth) => match &gw.config.authenticator {
            None => format!("token:{}", hex::encode(Sha256::digest(auth.as_bytes()))),
            Some(authenticator) => match authenticator.principal(auth).await {
                Principal::Known(id) => format!("principal:{id}"),
                Principal::Unverified => {
                    return Ok(unary(gw, route, message, metadata, &accept, request_id)
                        .await
                        .into_response())
                }
            },
        },
    };
    let key = format!(
        "zen:gw:idem:{}",
        hex::encode(Sha256::digest(
            format!(
                "{}\n{subject}\n{tenant}\n{request_id}",
                route.info.grpc_path
            )
            .as_bytes()
        ))
    );
    let fingerprint = hex::encode(Sha256::digest(
        format!(
            "{} {}\n{}",
            parts.method,
            parts.uri.path(),
            transcode::canonical_json(&transcode::to_json(&message))
        )
        .as_bytes(),
    ));
    let lease = gw.config.request_timeout + Duration::from_secs(10);
    let claim = store.claim(&key, &fingerprint, lease).await.map_err(|e| {
        tracing::warn!(error = %e, "idempotency store unavailable");
        let mut p = Problem::new(
            Code::Unavailable,
            "the idempotency store is unavailable; retry later",
        );
        p.retry_after = Some(1);
        p
    })?;
    match claim {
        Claim::Fresh => {}
        Claim::InProgress => {
            return Err(Problem::new(
                Code::Aborted,
                "a request with this X-Request-Id is in progress; retry after it completes",
            )
            .with_reason("IDEMPOTENCY_KEY_IN_PROGRESS"))
        }
        Claim::Mismatch => {
            return Err(Problem::new(
                Code::AlreadyExists,
                "this X-Request-Id was already used with a different request",
            )
            .with_reason("IDEMPOTENCY_KEY_REUSED"))
        }
        Claim::Replay(stored) => return Ok(replay(stored)),
    }
    // Run the call in its own task: a client that hangs up does not stop the response from
    // being recorded, so its retry replays instead of running twice.
    let gw2 = gw.clone();
    let route2 = route.clone();
    let rid = request_id.to_owned();
    let ttl = gw.config.idempotency_ttl;
    let task = tokio::spawn(
        async move {
            let rendered = unary(&gw2, &route2, message, metadata, &accept, &rid).await;
            let status = rendered.status;
            let retryable = status >= 500 || status == 429 || status == 499;
            let kept = if route2.not_replayable && (200..300).contains(&status) {
                // A secret shown once is not kept anywhere, not even for a replay.
                let problem = Problem::new(
                    Code::AlreadyExists,
                    "a request with this X-Request-Id already succeeded; its answer held a secret \
                 shown only once and is not kept: read the resource, or rotate the secret",
                )
                .with_reason("ANSWER_NOT_REPLAYABLE")
                .with_instance(&rid);
                StoredResponse {
                    status: problem.status,
                    content_type: crate::problem::PROBLEM_CONTENT_TYPE.to_owned(),
                    body: problem.body().to_vec(),
                    request_id: rid,
                    location: None,
                }
            } else {
                StoredResponse {
                    status,
                    content_type: rendered.content_type.clone(),
                    body: rendered.body.to_vec(),
                    request_id: rid,
                    location: rendered.location.clone(),
                }
            };
            let result = if retryable {
                store.release(&key).await
            } else {
                store.complete(&key, kept, ttl).await
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "recording an idempotent response failed");
            }
            rendered
        }
        .in_current_span(),
    );
    match task.await {
        Ok(rendered) => Ok(rendered.into_response()),
        Err(_) => Err(Problem::new(Code::Internal, "call task failed")),
    }
}

fn is_json_media_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn replay(stored: StoredResponse) -> Response {
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&stored.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(location) = stored
        .location
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// gRPC metadata from the HTTP request.
pub(crate) fn metadata(parts: &Parts, request_id: &str) -> MetadataMap {
    let mut md = MetadataMap::new();
    for name in FORWARDED {
        if let Some(value) = parts.headers.get(name) {
            if let Ok(v) = MetadataValue::try_from(value.as_bytes()) {
                md.insert(name, v);
            }
        }
    }
    if let Ok(v) = MetadataValue::try_from(request_id) {
        md.insert(REQUEST_ID, v);
    }
    // The gateway attests who the client is (its service identity makes the front believe
    // it); forwarding headers themselves never travel further.
    if let Some(ClientAddress(address)) = parts.extensions.get::<ClientAddress>() {
        if let Ok(v) = MetadataValue::try_from(address.to_string()) {
            md.insert(crate::client_address::CLIENT_ADDRESS_METADATA, v);
        }
    }
    md
}

/// A rendered unary answer (kept as parts so it can be stored for replay).
pub(crate) struct Rendered {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
    pub location: Option<String>,
    pub contract_version: Option<String>,
}

impl IntoResponse for Rendered {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.content_type) {
            headers.insert(header::CONTENT_TYPE, v);
        }
        if let Some(location) = self
            .location
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            headers.insert(header::LOCATION, location);
        }
        if let Some(v) = self
            .contract_version
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            headers.insert(CONTRACT_VERSION, v);
        }
        response
    }
}

fn problem_rendered(problem: Problem) -> RenderedWithRetry {
    RenderedWithRetry {
        rendered: Rendered {
            status: problem.status,
            content_type: crate::problem::PROBLEM_CONTENT_TYPE.to_owned(),
            body: problem.body(),
            location: None,
            contract_version: None,
        },
        retry_after: problem.retry_after,
        rate_limit: problem.rate_limit,
    }
}

fn grpc_path(route: &Route) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_str(&route.info.grpc_path)
        .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/"))
}

async fn ready(gw: &Inner) -> Result<tonic::client::Grpc<tonic::transport::Channel>, Status> {
    let mut grpc = tonic::client::Grpc::new(gw.channel.clone());
    grpc.ready().await.map_err(|e| {
        tracing::warn!(error = %e, "gRPC front not reachable");
        Status::unavailable("the service is unavailable; retry later")
    })?;
    Ok(grpc)
}

/// Calls a unary method and renders the answer or the problem.
async fn unary(
    gw: &Inner,
    route: &Route,
    message: DynamicMessage,
    metadata: MetadataMap,
    accept: &str,
    request_id: &str,
) -> RenderedWithRetry {
    let timeout = gw.config.request_timeout;
    let span = client_span(gw, route);
    let call = async {
        let mut grpc = ready(gw).await?;
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = metadata;
        gw.add_trace_context(request.metadata_mut());
        request.set_timeout(timeout);
        grpc.unary(
            request,
            grpc_path(route),
            DynamicCodec::new(route.method.output()),
        )
        .await
    };
    let result = match tokio::time::timeout(timeout + Duration::from_secs(1), call)
        .instrument(span.clone())
        .await
    {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded("the call did not finish in time")),
    };
    record_outcome(&span, result.as_ref().err());
    match result {
        Ok(response) => {
            let contract_version = response
                .metadata()
                .get(CONTRACT_VERSION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut rendered = render(route, response.get_ref(), accept);
            rendered.contract_version = contract_version;
            // A service may pick another success status (202 Accepted), as grpc-gateway lets
            // services do with `x-http-code`; only the statuses its contract lists count.
            if let Some(status) = response
                .metadata()
                .get(HTTP_STATUS_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u16>().ok())
                .filter(|s| route.success_statuses.contains(s))
            {
                rendered.status = status;
            }
            RenderedWithRetry {
                rendered,
                retry_after: None,
                rate_limit: None,
            }
        }
        Err(status) => problem_rendered(
            Problem::from_status(&status, Some(&route.method.input())).with_instance(request_id),
        ),
    }
}

/// A rendered answer plus the `Retry-After` of a problem, and the `RateLimit-Policy` /
/// `RateLimit` field values of a rate-limited one.
pub(crate) struct RenderedWithRetry {
    pub rendered: Rendered,
    pub retry_after: Option<u64>,
    pub rate_limit: Option<(String, String)>,
}

impl std::ops::Deref for RenderedWithRetry {
    type Target = Rendered;
    fn deref(&self) -> &Rendered {
        &self.rendered
    }
}

impl IntoResponse for RenderedWithRetry {
    fn into_response(self) -> Response {
        let retry = self.retry_after;
        let mut response = self.rendered.into_response();
        let headers = response.headers_mut();
        if let Some(secs) = retry {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        crate::problem::insert_rate_limit(headers, self.rate_limit.as_ref());
        response
    }
}

fn prefers_json(accept: &str) -> bool {
    accept
        .split(',')
        .map(|p| {
            p.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .any(|m| m == "application/json")
}

/// Renders a response message: raw `google.api.HttpBody`, a redirect, or JSON.
fn render(route: &Route, message: &DynamicMessage, accept: &str) -> Rendered {
    let json_content = "application/json".to_owned();
    // Raw bodies.
    let http_body = match &route.response_body {
        Some(f) if crate::routes::is_http_body(f) => match message.get_field(f).as_ref() {
            Value::Message(m) => Some(m.clone()),
            _ => None,
        },
        None if message.descriptor().full_name() == HTTP_BODY => Some(message.clone()),
        _ => None,
    };
    if let Some(body) = http_body {
        let content_type = body
            .get_field_by_name("content_type")
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let data = body
            .get_field_by_name("data")
            .and_then(|v| v.as_bytes().cloned())
            .unwrap_or_default();
        return Rendered {
            status: 200,
            content_type,
            body: data,
            location: None,
            contract_version: None,
        };
    }
    let json = match &route.response_body {
        Some(f) => transcode::field_json(message, f),
        None => transcode::to_json(message),
    };
    let body = Bytes::from(serde_json::to_vec(&json).unwrap_or_default());
    if let Some(field) = &route.redirect_field {
        if !prefers_json(accept) {
            if let Some(location) = message
                .get_field(field)
                .as_str()
                .filter(|s| !s.is_empty() && HeaderValue::from_str(s).is_ok())
            {
                return Rendered {
                    status: 302,
                    content_type: json_content,
                    body,
                    location: Some(location.to_owned()),
                    contract_version: None,
                };
            }
        }
    }
    Rendered {
        status: 200,
        content_type: json_content,
        body,
        location: None,
        contract_version: None,
    }
}

/// Server streaming as NDJSON (`{"result": ...}` per line, grpc-gateway's framing) or SSE.
async fn stream(
    gw: &Inner,
    route: &Route,
    message: DynamicMessage,
    metadata: MetadataMap,
    headers: &HeaderMap,
    request_id: &str,
) -> Result<Response, Problem> {
    let sse = header_str(headers, "accept")
        .map(|a| a.to_ascii_lowercase().contains("text/event-stream"))
        .unwrap_or(false);
    let request_desc = route.method.input();
    let streaming = open_stream(gw, route, message, metadata)
        .await
        .map_err(|status| Problem::from_status(&status, Some(&request_desc)))?;
    let request_id = request_id.to_owned();
    let body = futures_util::stream::unfold(Some(streaming), move |state| {
        let request_desc = request_desc.clone();
        let request_id = request_id.clone();
        async move {
            let mut streaming = state?;
            match streaming.message().await {
                Ok(Some(msg)) => {
                    let json = transcode::to_json(&msg);
                    let chunk = if sse {
                        format!("event: message\ndata: {json}\n\n")
                    } else {
                        format!("{}\n", serde_json::json!({ "result": json }))
                    };
                    Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from(chunk)),
                        Some(streaming),
                    ))
                }
                Ok(None) => None,
                Err(status) => {
                    let problem = Problem::from_status(&status, Some(&request_desc))
                        .with_instance(&request_id);
                    let json = serde_json::to_value(&problem).unwrap_or_default();
                    let chunk = if sse {
                        format!("event: error\ndata: {json}\n\n")
                    } else {
                        format!("{}\n", serde_json::json!({ "error": json }))
                    };
                    Some((Ok(Bytes::from(chunk)), None))
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(body.boxed()));
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Opens a server stream (no deadline: streams are long-lived).
pub(crate) async fn open_stream(
    gw: &Inner,
    route: &Route,
    message: DynamicMessage,
    metadata: MetadataMap,
) -> Result<tonic::Streaming<DynamicMessage>, Status> {
    let span = client_span(gw, route);
    let opened = async {
        let mut grpc = ready(gw).await?;
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = metadata;
        gw.add_trace_context(request.metadata_mut());
        grpc.server_streaming(
            request,
            grpc_path(route),
            DynamicCodec::new(route.method.output()),
        )
        .await
    }
    .instrument(span.clone())
    .await;
    record_outcome(&span, opened.as_ref().err());
    Ok(opened?.into_inner())
}

/// The span of the gateway's call to the gRPC front (OpenTelemetry's RPC client conventions;
/// `otel.*` fields name and classify it), made only when traces are exported.
fn client_span(gw: &Inner, route: &Route) -> tracing::Span {
    if gw.config.trace_context.is_none() {
        return tracing::Span::none();
    }
    let path = route.info.grpc_path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    tracing::info_span!(
        "gateway",
        otel.name = %path,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

fn record_outcome(span: &tracing::Span, error: Option<&Status>) {
    let code = error.map_or(Code::Ok, Status::code);
    span.record("rpc.grpc.status_code", code as i32);
    if error.is_some() {
        span.record("otel.status_code", "ERROR");
    }
}

/// The route template a request matched (`/v1/tenants/{tenant_id}`), set on the gateway's
/// responses so the HTTP edge can label metrics and spans by template, never by raw path.
#[derive(Clone, Debug)]
pub struct MatchedRoute(pub Arc<str>);
