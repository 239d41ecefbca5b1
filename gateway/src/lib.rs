//! Zen's REST/WebSocket gateway: a generic translator from HTTP+JSON to gRPC, driven only by
//! the `google.api.http` rules, field behaviours and Zen method options found in an encoded
//! `FileDescriptorSet`. It knows no domain types.
//!
//! ```no_run
//! # async fn demo(descriptor_set: &[u8], channel: tonic::transport::Channel) -> Result<(), zen_gateway::GatewayError> {
//! use zen_gateway::{Gateway, GatewayConfig};
//! let gateway = Gateway::new(descriptor_set, channel, GatewayConfig::default())?;
//! let app: axum::Router = gateway.router(); // serve with connect info (the client address)
//! # Ok(()) }
//! ```
//!
//! See `docs/GATEWAY.md` for the behaviour in full.

// `Problem` is the error of every request step; it is only built on the error path, so its
// size (a few strings) is not worth a box on every `?`.
#![allow(clippy::result_large_err)]

mod client_address;
mod codec;
mod handler;
mod idempotency;
mod openapi;
mod openapi_rules;
mod problem;
mod routes;
mod template;
mod transcode;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::{HeaderName, HeaderValue, Method};
use prost_reflect::DescriptorPool;
use tonic::transport::Channel;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use client_address::{TrustedProxies, CLIENT_ADDRESS_METADATA};
pub use handler::{
    Authenticator, MatchedRoute, Principal, HTTP_STATUS_METADATA, MAX_FORWARDED_HEADER_BYTES,
    MAX_HEADER_BYTES,
};
pub use idempotency::{
    Claim, IdempotencyStore, MemoryIdempotencyStore, StoreError, StoredResponse,
};
pub use problem::{http_status, FieldError, Problem, PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE};
pub use routes::RouteInfo;

/// Errors building a [`Gateway`].
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The descriptor set does not decode.
    #[error("invalid descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// A method's `google.api.http` rule cannot be served.
    #[error("invalid http rule on {method}: {message}")]
    InvalidRule {
        /// Full name of the method.
        method: String,
        /// What is wrong.
        message: String,
    },
    /// Two rules bind the same HTTP method and path template.
    #[error("duplicate route {0}")]
    DuplicateRoute(String),
}

/// WebSocket settings (server-streaming methods reached with an upgrade).
#[derive(Debug, Clone)]
pub struct WebSocketConfig {
    /// Messages buffered for one client; when the buffer stays full for `slow_consumer_grace`
    /// the client is closed as too slow (1008).
    pub send_buffer: usize,
    /// The same buffer's bound in bytes (JSON text), whichever is reached first.
    pub send_buffer_bytes: usize,
    /// How long a full send buffer is tolerated (absorbs bursts, e.g. a resumed watch).
    pub slow_consumer_grace: Duration,
    /// Interval between server pings.
    pub ping_interval: Duration,
    /// How long to wait for `{"authorization": "Bearer ..."}` when no `bearer` subprotocol was
    /// offered.
    pub auth_timeout: Duration,
    /// How long one frame may take to be written before the client is dropped.
    pub write_timeout: Duration,
    /// How long the last frames (a close, an error) may take to be written; a client that has
    /// not read them by then is dropped without them.
    pub close_timeout: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            send_buffer: 256,
            send_buffer_bytes: 256 * 1024,
            slow_consumer_grace: Duration::from_secs(2),
            ping_interval: Duration::from_secs(20),
            auth_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
        }
    }
}

/// How the gateway behaves.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Largest request body accepted (413 above); 1 MiB by default.
    pub max_body_bytes: usize,
    /// Origins allowed by CORS (exact `scheme://host[:port]`); empty disables CORS.
    pub allowed_origins: Vec<String>,
    /// Accepted `X-Zen-Contract-Version` values; empty means derive them from the enum
    /// `zen.common.v1.ContractVersion` of the descriptor set (`CONTRACT_VERSION_V1` -> `v1`).
    pub supported_contract_versions: Vec<String>,
    /// Where idempotency keys live; `None` disables replay (X-Request-Id is still required on
    /// mutating calls).
    pub idempotency: Option<Arc<dyn IdempotencyStore>>,
    /// How long a completed mutating call's response is replayed (24 h).
    pub idempotency_ttl: Duration,
    /// Who a bearer token names, for idempotency: a stored answer is replayed only after the
    /// caller authenticated, and only to the principal that caused it. `None`: every caller
    /// with the same `Authorization` header value is one principal (tokens are then checked
    /// only by the gRPC front, and a replay does not wait for it).
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` are believed when computing the client
    /// address; empty: the direct peer is the client.
    pub trusted_proxies: TrustedProxies,
    /// Deadline of a unary call (sent as `grpc-timeout`); 30 s by default.
    pub request_timeout: Duration,
    /// WebSocket settings.
    pub websocket: WebSocketConfig,
    /// `info.title` of the OpenAPI document.
    pub api_title: String,
    /// `info.version` of the OpenAPI document.
    pub api_version: String,
    /// The trace context headers (W3C `traceparent`, `tracestate`) of the current span, added
    /// to every call to the gRPC front so the inner hop continues the caller's trace; `None`
    /// when traces are not exported.
    pub trace_context: Option<TraceContextFn>,
}

/// See [`GatewayConfig::trace_context`].
pub type TraceContextFn = Arc<dyn Fn() -> std::collections::HashMap<String, String> + Send + Sync>;

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            allowed_origins: Vec::new(),
            supported_contract_versions: Vec::new(),
            idempotency: None,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            authenticator: None,
            trusted_proxies: TrustedProxies::default(),
            request_timeout: Duration::from_secs(30),
            websocket: WebSocketConfig::default(),
            api_title: "Zen API".to_owned(),
            api_version: "v1".to_owned(),
            trace_context: None,
        }
    }
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("allowed_origins", &self.allowed_origins)
            .field(
                "supported_contract_versions",
                &self.supported_contract_versions,
            )
            .field("idempotency", &self.idempotency.is_some())
            .field("idempotency_ttl", &self.idempotency_ttl)
            .field("authenticator", &self.authenticator.is_some())
            .field("trusted_proxies", &self.trusted_proxies)
            .field("request_timeout", &self.request_timeout)
            .field("websocket", &self.websocket)
            .field("trace_context", &self.trace_context.is_some())
            .finish()
    }
}

impl Inner {
    /// Adds the current trace context to a call's metadata (see [`GatewayConfig::trace_context`]).
    pub(crate) fn add_trace_context(&self, metadata: &mut tonic::metadata::MetadataMap) {
        let Some(context) = &self.config.trace_context else {
            return;
        };
        for (name, value) in context() {
            let key = tonic::metadata::MetadataKey::from_bytes(name.as_bytes());
            if let (Ok(key), Ok(value)) = (key, value.parse()) {
                metadata.insert(key, value);
            }
        }
    }
}

pub(crate) struct Inner {
    pub routes: Vec<routes::Route>,
    pub infos: Vec<RouteInfo>,
    pub channel: Channel,
    pub config: GatewayConfig,
    pub behaviors: transcode::Behaviors,
    pub supported_versions: Vec<String>,
    pub openapi: serde_json::Value,
}

/// The REST/WebSocket gateway over one gRPC channel.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.inner.infos.len())
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Request headers the gateway reads; allowed by CORS.
pub const REQUEST_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "x-request-id",
    "x-zen-contract-version",
    "x-tenant-id",
    "traceparent",
    "tracestate",
];

/// Response headers exposed to browsers by CORS.
pub const EXPOSED_HEADERS: [&str; 5] = [
    "x-request-id",
    "x-zen-contract-version",
    "idempotent-replayed",
    "retry-after",
    "location",
];

impl Gateway {
    /// Loads the routes of `descriptor_set` (an encoded `FileDescriptorSet` with custom options
    /// and source info kept) and prepares to call them over `channel`.
    pub fn new(
        descriptor_set: &[u8],
        channel: Channel,
        config: GatewayConfig,
    ) -> Result<Self, GatewayError> {
        let pool = DescriptorPool::decode(descriptor_set)?;
        let mut routes = routes::build_routes(&pool)?;
        let mut seen = std::collections::HashSet::new();
        for r in &routes {
            let key = format!("{} {}", r.info.http_method, r.template.openapi_path());
            if !seen.insert(key.clone()) {
                return Err(GatewayError::DuplicateRoute(key));
            }
        }
        // Most specific first: verbs, then literal segments, then single-segment wildcards.
        routes.sort_by(|a, b| {
            b.template
                .specificity()
                .cmp(&a.template.specificity())
                .then(a.index.cmp(&b.index))
        });
        let supported_versions = if config.supported_contract_versions.is_empty() {
            pool.get_enum_by_name("zen.common.v1.ContractVersion")
                .map(|e| {
                    e.values()
                        .filter(|v| v.number() != 0)
                        .filter_map(|v| {
                            v.name()
                                .strip_prefix("CONTRACT_VERSION_")
                                .map(str::to_ascii_lowercase)
                        })
                        .collect()
                })
                .unwrap_or_default()
        } else {
            config.supported_contract_versions.clone()
        };
        let behaviors = transcode::Behaviors::from_pool(&pool);
        let mut infos: Vec<RouteInfo> = Vec::with_capacity(routes.len());
        let mut by_index: Vec<&routes::Route> = routes.iter().collect();
        by_index.sort_by_key(|r| r.index);
        for r in by_index {
            infos.push(r.info.clone());
        }
        let openapi = openapi::document(&pool, &routes, &behaviors, &config, &supported_versions);
        Ok(Self {
            inner: Arc::new(Inner {
                routes,
                infos,
                channel,
                config,
                behaviors,
                supported_versions,
                openapi,
            }),
        })
    }

    /// The routes served, in descriptor order.
    pub fn routes(&self) -> &[RouteInfo] {
        &self.inner.infos
    }

    /// The OpenAPI 3.1 document of the routes (also served at `GET /openapi.json`).
    pub fn openapi(&self) -> serde_json::Value {
        self.inner.openapi.clone()
    }

    /// Contract versions accepted in `X-Zen-Contract-Version`.
    pub fn supported_contract_versions(&self) -> &[String] {
        &self.inner.supported_versions
    }

    /// The router to mount: every route of the descriptor set, `GET /openapi.json`, CORS for
    /// the configured origins, and security headers on every response. Anything it does not
    /// route is answered with a 404 problem, so mount it as the fallback of a larger router
    /// (`app.fallback_service(gateway.router())`) or merge it into one that has no fallback.
    pub fn router(&self) -> Router {
        let openapi = self.inner.openapi.clone();
        let mut router = Router::new()
            .route(
                "/openapi.json",
                get(move || {
                    let doc = openapi.clone();
                    async move { axum::Json(doc) }
                }),
            )
            .fallback(handler::handle)
            .with_state(self.inner.clone());
        if !self.inner.config.allowed_origins.is_empty() {
            let origins: Vec<HeaderValue> = self
                .inner
                .config
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            let mut methods: Vec<Method> = self
                .inner
                .infos
                .iter()
                .filter_map(|r| Method::from_bytes(r.http_method.as_bytes()).ok())
                .collect();
            methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            methods.dedup();
            let cors = CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods(methods)
                .allow_headers(REQUEST_HEADERS.map(HeaderName::from_static))
                .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
                .max_age(Duration::from_secs(600));
            router = router.layer(cors);
        }
        // Outermost, so CORS preflight answers carry the security headers too.
        router.layer(axum::middleware::map_response(handler::security_headers))
    }
}
