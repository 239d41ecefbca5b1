//! The edge of the gRPC front: one tower layer that every call passes before reaching a service.
//!
//! It gives each call a request id (taken from `x-request-id` or generated, echoed in the
//! response metadata and carried by the tracing span), checks `x-zen-contract-version` (and
//! echoes the version used), reads
//! the peer's identity from its verified client certificate, and records per-method metrics.
//! What it learns travels to the services as a [`RequestContext`] in the request extensions.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, HeaderValue};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};
use tracing::Instrument;
use zen_security::PeerIdentity;

use super::contract::{ContractVersions, CONTRACT_VERSION_HEADER};

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The client address a trusted relay (the gateway) attests for the person or tool behind it;
/// the same name as the gateway's `zen_gateway::CLIENT_ADDRESS_METADATA`.
pub const CLIENT_ADDRESS_HEADER: &str = "x-zen-client-address";
const MAX_REQUEST_ID_LEN: usize = 128;

/// What the edge knows about a call; services read it from the request extensions.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: String,
    pub contract_version: String,
    /// Who is calling, as one address: the direct peer's, or, for calls relayed by a service
    /// identity (the gateway), the address that relay attests. Every per-address limit and
    /// every audit record uses this.
    pub client_address: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// The verified client certificate's identity; `None` if it names no Zen identity.
    pub peer: Option<PeerIdentity>,
}

/// Builds [`GrpcEdge`] services.
#[derive(Clone)]
pub struct GrpcEdgeLayer {
    versions: Arc<ContractVersions>,
}

impl GrpcEdgeLayer {
    pub fn new(versions: ContractVersions) -> Self {
        Self {
            versions: Arc::new(versions),
        }
    }
}

impl<S> Layer<S> for GrpcEdgeLayer {
    type Service = GrpcEdge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcEdge {
            inner,
            versions: self.versions.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcEdge<S> {
    inner: S,
    versions: Arc<ContractVersions>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for GrpcEdge<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = request.uri().path().to_owned();
        let started = Instant::now();

        let request_id = match request_id(request.headers()) {
            Ok(id) => id,
            Err(status) => return Box::pin(respond(status, None, method, started)),
        };
        let stated = request
            .headers()
            .get(CONTRACT_VERSION_HEADER)
            .map(|v| v.to_str().unwrap_or("(not text)"));
        let contract_version = match self.versions.resolve(stated) {
            Ok(version) => version,
            Err(message) => {
                let status = tonic::Status::invalid_argument(message);
                return Box::pin(respond(status, Some(request_id), method, started));
            }
        };

        let tls = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let peer = tls
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().cloned())
            .and_then(|leaf| PeerIdentity::from_certificate_der(&leaf).ok());
        let direct = tls
            .and_then(|info| info.get_ref().remote_addr())
            .map(|a| a.ip());
        let client_address = client_address(peer.as_ref(), request.headers(), direct);
        let version_used = contract_version.clone();
        let context = RequestContext {
            request_id: request_id.clone(),
            contract_version,
            client_address,
            user_agent: request
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            peer,
        };
        // OpenTelemetry's RPC server conventions; `otel.*` fields name and classify the span
        // when traces are exported, `request_id` / `method` / `peer` are for the logs.
        let rpc = method.trim_start_matches('/');
        let (rpc_service, rpc_method) = rpc.split_once('/').unwrap_or((rpc, ""));
        let span = tracing::info_span!(
            "grpc",
            otel.name = %rpc,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %rpc_service,
            rpc.method = %rpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
            zen.request_id = %request_id,
            zen.tenant_id = tracing::field::Empty,
            request_id = %request_id,
            method = %method,
            peer = context.peer.as_ref().map(|p| p.to_string()).unwrap_or_default(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        crate::telemetry::continue_trace(&span, request.headers());
        request.extensions_mut().insert(context);

        Box::pin(
            async move {
                let mut response = inner.call(request).await?;
                let headers = response.headers_mut();
                if let Ok(value) = HeaderValue::from_str(&request_id) {
                    headers.insert(REQUEST_ID_HEADER, value);
                }
                if let Ok(value) = HeaderValue::from_str(&version_used) {
                    headers.insert(CONTRACT_VERSION_HEADER, value);
                }
                record(&method, response.headers(), started);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// The call's client address: what a relaying service (the gateway) attests in
/// [`CLIENT_ADDRESS_HEADER`], else the direct peer. Only a service identity may attest: from
/// an agent, an operator or an unknown certificate the header is ignored, so no caller can
/// choose the address its limits and audit records are keyed on.
fn client_address(
    peer: Option<&PeerIdentity>,
    headers: &HeaderMap,
    direct: Option<IpAddr>,
) -> Option<IpAddr> {
    let attested = matches!(peer, Some(PeerIdentity::Service { .. }))
        .then(|| headers.get(CLIENT_ADDRESS_HEADER))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    attested.or(direct)
}

/// The caller's request id if it gave a usable one, a fresh one if it gave none.
fn request_id(headers: &HeaderMap) -> Result<String, tonic::Status> {
    match headers.get(REQUEST_ID_HEADER) {
        None => Ok(uuid::Uuid::new_v4().to_string()),
        Some(value) => {
            let text = value.to_str().unwrap_or_default();
            let usable = !text.is_empty()
                && text.len() <= MAX_REQUEST_ID_LEN
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
            if usable {
                Ok(text.to_owned())
            } else {
                Err(tonic::Status::invalid_argument(format!(
                    "{REQUEST_ID_HEADER} must be 1 to {MAX_REQUEST_ID_LEN} characters from [A-Za-z0-9._:-]"
                )))
            }
        }
    }
}

async fn respond<E>(
    status: tonic::Status,
    request_id: Option<String>,
    method: String,
    started: Instant,
) -> Result<http::Response<tonic::body::Body>, E> {
    tracing::info!(method = %method, code = ?status.code(), "refused at the edge: {}", status.message());
    let mut response = status.into_http::<tonic::body::Body>();
    if let Some(value) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    record(&method, response.headers(), started);
    Ok(response)
}

/// Counts the call and its duration by method and gRPC code. Errors answered before the body
/// ("trailers-only") carry `grpc-status` in the headers; otherwise the call reached its
/// handler's success path and is counted as OK (a failure mid-stream is not seen here).
fn record(method: &str, headers: &HeaderMap, started: Instant) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok);
    // Inside the call's span (a refusal before it was made records on no span).
    let span = tracing::Span::current();
    span.record("rpc.grpc.status_code", code as i32);
    if !matches!(
        code,
        tonic::Code::Ok
            | tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::AlreadyExists
            | tonic::Code::PermissionDenied
            | tonic::Code::FailedPrecondition
            | tonic::Code::Unauthenticated
            | tonic::Code::OutOfRange
            | tonic::Code::Cancelled
    ) {
        // Server-side failures only, as OpenTelemetry's RPC conventions say.
        span.record("otel.status_code", "ERROR");
    }
    let labels = [("method", method.to_owned()), ("code", format!("{code:?}"))];
    metrics::counter!("zen_grpc_requests_total", &labels).increment(1);
    metrics::histogram!("zen_grpc_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_service_may_attest_the_client_address() {
        let direct: IpAddr = "10.0.0.9".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            CLIENT_ADDRESS_HEADER,
            HeaderValue::from_static("203.0.113.7"),
        );
        let gateway = PeerIdentity::Service {
            name: "gateway".into(),
        };
        let agent = PeerIdentity::Agent {
            tenant_id: uuid::Uuid::now_v7(),
            cluster_id: uuid::Uuid::now_v7(),
        };
        assert_eq!(
            client_address(Some(&gateway), &headers, Some(direct)),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            client_address(Some(&agent), &headers, Some(direct)),
            Some(direct)
        );
        assert_eq!(client_address(None, &headers, Some(direct)), Some(direct));
        headers.insert(CLIENT_ADDRESS_HEADER, HeaderValue::from_static("not-an-ip"));
        assert_eq!(
            client_address(Some(&gateway), &headers, Some(direct)),
            Some(direct)
        );
    }

    #[test]
    fn request_ids_are_taken_generated_or_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_id(&headers).unwrap().len(), 36);
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("req-42"));
        assert_eq!(request_id(&headers).unwrap(), "req-42");
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert_eq!(
            request_id(&headers).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
