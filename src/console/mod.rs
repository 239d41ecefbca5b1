//! The web console: plain ES modules embedded in the binary (`console/` at the repository root),
//! served at `/` and `/console/…` on the public listener, and the Backend-for-Frontend session
//! ([`session`]) through which the browser uses the REST/WebSocket API without ever holding a
//! token. The pages call the same REST routes as any API client; nothing here knows a domain
//! type. See `docs/CONSOLE.md`.

mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use zen_cache::Cache;

pub use session::relay;

/// The console's Content-Security-Policy: scripts, styles and connections only from Zen itself
/// (`'self'` covers `ws:`/`wss:` to the same host in CSP 3), no inline script or style, no
/// framing, forms only back to Zen.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// How the console behaves.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// `Secure` cookies (and the `__Host-` name): true when Zen's public URL is `https://`.
    pub secure_cookies: bool,
    /// Whether local (username/password) login is offered.
    pub local_login: bool,
    /// Names of the configured OIDC providers, offered on the sign-in page.
    pub providers: Vec<String>,
    /// Longest life of a console session (the refresh token's life bounds it too).
    pub session_ttl: Duration,
    /// Port of the gRPC front, for the `zen agent bootstrap` command shown at enrollment.
    pub grpc_port: u16,
}

/// The console's shared state: the gateway it relays to and where sessions live.
pub struct Console {
    /// The gateway's router, called in-process for sign-in, refresh and sign-out.
    gateway: Router,
    cache: Arc<dyn Cache>,
    config: ConsoleConfig,
}

impl Console {
    pub fn new(gateway: Router, cache: Arc<dyn Cache>, config: ConsoleConfig) -> Arc<Self> {
        Arc::new(Self {
            gateway,
            cache,
            config,
        })
    }
}

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $path)),
        }
    };
}

/// Every file the console serves; a new file under `console/` is added here (the build fails on
/// a listed file that does not exist, and a test checks that none is missing from this list).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("assets/app.js", "text/javascript; charset=utf-8"),
    asset!("assets/api.js", "text/javascript; charset=utf-8"),
    asset!("assets/pages.js", "text/javascript; charset=utf-8"),
    asset!("assets/style.css", "text/css; charset=utf-8"),
    asset!("assets/favicon.svg", "image/svg+xml"),
    asset!(
        "vendor/htm-preact-standalone.module.js",
        "text/javascript; charset=utf-8"
    ),
];

/// Webhook source presets: a provider's verification scheme with a mapping from `mappings/`.
fn presets() -> serde_json::Value {
    let mapping = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
    json!({ "presets": [
        {
            "id": "github",
            "label": "GitHub security alerts",
            "name": "github",
            "scheme": "WEBHOOK_SCHEME_GITHUB",
            "mapping": mapping(include_str!("../../mappings/github-security-alerts.json")),
            "help": "In the repository or organization: Settings → Webhooks → Add webhook; content type application/json; events: code scanning, Dependabot and secret scanning alerts.",
        },
        {
            "id": "falco",
            "label": "Falco / Falcosidekick",
            "name": "falco",
            "scheme": "WEBHOOK_SCHEME_BEARER",
            "mapping": mapping(include_str!("../../mappings/falco.json")),
            "help": "Falco: http_output with json_output: true, or Falcosidekick's webhook output, with the header Authorization: Bearer <secret>.",
        },
        {
            "id": "standard",
            "label": "Standard Webhooks (no mapping)",
            "name": "standard",
            "scheme": "WEBHOOK_SCHEME_STANDARD_WEBHOOKS",
            "mapping": null,
            "help": "Any sender that signs with Standard Webhooks 1.0; payloads must already be Zen events.",
        },
    ]})
}

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The headers of every console response: the strict CSP and the usual hardening.
async fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        // Revalidate every time: a new binary serves new assets at the same paths.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn serve(asset: &'static Asset) -> Response {
    ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
}

/// The page shell for `/` and every `/console/…` deep link: the pages route on the client.
async fn index() -> Response {
    serve(find("index.html").expect("index.html is embedded"))
}

async fn asset(Path(path): Path<String>) -> Response {
    match find(&format!("assets/{path}")) {
        Some(a) => serve(a),
        None => not_found(),
    }
}

async fn vendor(Path(path): Path<String>) -> Response {
    match find(&format!("vendor/{path}")) {
        Some(a) => serve(a),
        None => not_found(),
    }
}

fn not_found() -> Response {
    zen_gateway::Problem::new(tonic::Code::NotFound, "no such console file").into_response()
}

async fn config(State(console): State<Arc<Console>>) -> Response {
    Json(json!({
        "localLogin": console.config.local_login,
        "providers": console.config.providers,
        "grpcPort": console.config.grpc_port,
    }))
    .into_response()
}

/// The console's own routes: pages, assets, presets and the session endpoints. Mount before
/// the gateway (which answers everything else) and wrap the gateway with [`relay`].
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(index))
        .route("/console/{*page}", get(index))
        .route("/console/assets/{*path}", get(asset))
        .route("/console/vendor/{*path}", get(vendor))
        .route("/console/presets.json", get(|| async { Json(presets()) }))
        .merge(
            Router::new()
                .route("/console/session/config", get(config))
                .route("/console/session", get(session::current))
                .route("/console/session/login", post(session::login))
                .route("/console/session/logout", post(session::logout))
                .route("/console/session/oidc/{provider}", get(session::begin_oidc))
                // Answers about a session are never cached.
                .layer(axum::middleware::map_response(no_store)),
        )
        .with_state(console)
        .layer(axum::middleware::map_response(harden))
}

/// A problem answer (RFC 9457) with an explicit status.
fn problem(status: StatusCode, code: tonic::Code, slug: &str, detail: &str) -> Response {
    zen_gateway::Problem::new(code, detail)
        .with_status(status)
        .with_type(slug)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_console_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut missing = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let served = rel.ends_with(".js")
                    || rel.ends_with(".css")
                    || rel.ends_with(".html")
                    || rel.ends_with(".svg");
                if served && find(&rel).is_none() {
                    missing.push(rel);
                }
            }
        }
        assert!(missing.is_empty(), "add these to ASSETS: {missing:?}");
    }

    #[test]
    fn presets_carry_their_mappings() {
        let presets = presets();
        let list = presets["presets"].as_array().unwrap();
        assert!(list
            .iter()
            .filter(|p| p["id"] != "standard")
            .all(|p| p["mapping"].is_object()));
    }

    #[test]
    fn the_policy_allows_no_inline_script() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self'"));
    }
}
