//! Configuration: one documented struct, filled from flags, `ZEN_*` environment variables, an
//! optional TOML file and built-in defaults, in that order of precedence, and validated before
//! anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where Zen runs: development generates what it lacks; production refuses to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Options every subcommand understands.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct GlobalArgs {
    /// TOML configuration file; flags and environment variables override its values.
    #[arg(long, env = "ZEN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the embedded database and the development PKI.
    #[arg(long, env = "ZEN_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// `postgres://…` or `sqlite://…`; default `sqlite://<data-dir>/zen.db`.
    #[arg(long, env = "ZEN_DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// `development` (default) or `production`.
    #[arg(long = "env", env = "ZEN_ENV", global = true, value_enum)]
    pub environment: Option<Environment>,
    /// `json` (default) or `text`.
    #[arg(long, env = "ZEN_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Directory of the RS256 signing keys (default `<data-dir>/keys/jwt`).
    #[arg(long, env = "ZEN_JWT_KEYS_DIR", global = true)]
    pub jwt_keys_dir: Option<PathBuf>,
    /// Shared cache: `redis://host:port/db`, `rediss://…`, a Redis Cluster
    /// (`redis-cluster://host:port?node=host:port…`) or a Sentinel-managed primary
    /// (`redis-sentinel://sentinel:26379?sentinelServiceName=NAME`); unset means an in-process
    /// memory cache.
    #[arg(long, env = "ZEN_REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// The Ed25519 key (PKCS#8) that signs exported audit segments (default
    /// `<data-dir>/keys/audit-ed25519.pk8`, created on first use in development only).
    #[arg(long, env = "ZEN_AUDIT_SIGNING_KEY", global = true)]
    pub audit_signing_key: Option<PathBuf>,
}

/// Options of `zen serve`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// A PostgreSQL streaming replica (`postgres://…`) that serves list pages while its replay
    /// is within about a second of the primary; gets, watches, writes and authorization stay on
    /// the primary (docs/STORAGE.md). Default none: everything reads the primary.
    #[arg(long, env = "ZEN_DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,
    /// Address of the mutual-TLS gRPC front.
    #[arg(long, env = "ZEN_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Address of the public HTTP side (REST gateway, WebSocket, webhooks, `/health`,
    /// `/ready`).
    #[arg(long, env = "ZEN_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Address of the admin listener: `/metrics` and deep health (`/health/database`), never
    /// served on the public listener (default 127.0.0.1:9464).
    #[arg(long, env = "ZEN_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose `Forwarded` /
    /// `X-Forwarded-For` headers name the client; from any other peer they are ignored
    /// (default none: the direct peer is the client).
    #[arg(long, env = "ZEN_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Apply pending migrations at start (default true).
    #[arg(long, env = "ZEN_AUTO_MIGRATE")]
    pub auto_migrate: Option<bool>,
    /// CA bundle that client certificates must chain to (default `<data-dir>/pki/ca.crt`).
    #[arg(long, env = "ZEN_TLS_CA_CERT")]
    pub tls_ca_cert: Option<PathBuf>,
    /// Server certificate chain, PEM (default `<data-dir>/pki/server.crt`).
    #[arg(long, env = "ZEN_TLS_SERVER_CERT")]
    pub tls_server_cert: Option<PathBuf>,
    /// Server private key, PEM (default `<data-dir>/pki/server.key`).
    #[arg(long, env = "ZEN_TLS_SERVER_KEY")]
    pub tls_server_key: Option<PathBuf>,
    /// The platform CA's private key, to sign agent certificates at enrollment (default
    /// `<data-dir>/pki/ca.key` in development; without it, enrollment is off).
    #[arg(long, env = "ZEN_TLS_CA_KEY")]
    pub tls_ca_key: Option<PathBuf>,
    /// Validity of agent certificates in hours (default 168 = 7 days).
    #[arg(long, env = "ZEN_AGENT_CERT_VALIDITY_HOURS")]
    pub agent_cert_validity_hours: Option<u64>,
    /// The gateway's client identity toward the gRPC front (default `<data-dir>/pki/gateway.crt`
    /// and `.key`, issued on first start in development).
    #[arg(long, env = "ZEN_GATEWAY_CERT")]
    pub gateway_cert: Option<PathBuf>,
    #[arg(long, env = "ZEN_GATEWAY_KEY")]
    pub gateway_key: Option<PathBuf>,
    /// Name the gateway expects on the gRPC front's certificate (default `localhost`).
    #[arg(long, env = "ZEN_GATEWAY_SERVER_NAME")]
    pub gateway_server_name: Option<String>,
    /// Origins allowed by CORS, comma-separated (default none).
    #[arg(long, env = "ZEN_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Largest request body the gateway accepts, in bytes (default 1 MiB).
    #[arg(long, env = "ZEN_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Benchmarks only: ack agent events without storing them (the framework's ceiling).
    #[arg(long, env = "ZEN_BENCH_DISCARD_EVENTS", hide = true)]
    pub bench_discard_events: Option<bool>,
    /// Events with the same fingerprint within this many seconds fold into one (default 3600).
    #[arg(long, env = "ZEN_EVENT_FOLD_WINDOW_SECONDS")]
    pub event_fold_window_seconds: Option<u64>,
    /// Seconds that in-flight calls and streams get to finish after SIGTERM.
    #[arg(long, env = "ZEN_SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// The URL people and tools use to reach Zen's HTTP side; the `iss` of access tokens and
    /// the base of OIDC redirect URLs (default `http://<http-addr>`).
    #[arg(long, env = "ZEN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Lifetime of access tokens in seconds (default 900).
    #[arg(long, env = "ZEN_ACCESS_TOKEN_TTL_SECONDS")]
    pub access_token_ttl_seconds: Option<u64>,
    /// Lifetime of a login session (refresh-token family) in seconds (default 30 days).
    #[arg(long, env = "ZEN_SESSION_TTL_SECONDS")]
    pub session_ttl_seconds: Option<u64>,
    /// Allow username/password login for local users (development only).
    #[arg(long, env = "ZEN_LOCAL_LOGIN")]
    pub local_login: Option<bool>,
    /// OIDC providers as a JSON array of {name, issuer_url, client_id, client_secret, scopes}.
    #[arg(long, env = "ZEN_OIDC_PROVIDERS", hide_env_values = true)]
    pub oidc_providers: Option<String>,
    /// Keys sealing webhook secrets at rest: comma-separated `<key-id>:<base64 32 bytes>`, the
    /// first seals, all open (default: a key file under the data dir, development only).
    #[arg(long, env = "ZEN_WEBHOOK_SECRET_KEYS", hide_env_values = true)]
    pub webhook_secret_keys: Option<String>,
    /// Enables `POST /agent/v1/events`: the key every cluster's legacy HMAC key derives from.
    #[arg(long, env = "ZEN_LEGACY_AGENT_KEY", hide_env_values = true)]
    pub legacy_agent_key: Option<String>,
    /// How often the remediation dispatcher looks for due work, in ms (default 1000).
    #[arg(long, env = "ZEN_REMEDIATION_POLL_MS")]
    pub remediation_poll_ms: Option<u64>,
    /// First retry delay of an unacknowledged remediation command, in ms; doubles per attempt
    /// (default 2000).
    #[arg(long, env = "ZEN_REMEDIATION_BACKOFF_BASE_MS")]
    pub remediation_backoff_base_ms: Option<u64>,
    /// Cap of the retry delay, in ms (default 300000).
    #[arg(long, env = "ZEN_REMEDIATION_BACKOFF_MAX_MS")]
    pub remediation_backoff_max_ms: Option<u64>,
    /// How often expired proposals are swept and backlog gauges refreshed, in ms (default 10000).
    #[arg(long, env = "ZEN_REMEDIATION_SWEEP_MS")]
    pub remediation_sweep_ms: Option<u64>,
    /// Time an agent has to start executing a command it received, in ms (default 600000).
    #[arg(long, env = "ZEN_REMEDIATION_COMMAND_DEADLINE_MS")]
    pub remediation_command_deadline_ms: Option<u64>,
    // --- Slow consumers and dependency outages (see docs/RELIABILITY.md) ---
    /// Longest wait for a PostgreSQL connection from the pool and for a Redis reply, in ms;
    /// past it the request is answered 503 with Retry-After (default 2000).
    #[arg(long, env = "ZEN_DEPENDENCY_TIMEOUT_MS")]
    pub dependency_timeout_ms: Option<u64>,
    /// Event watches (WebSocket or WatchEvents) one caller may hold open on one replica
    /// (default 64).
    #[arg(long, env = "ZEN_WATCH_MAX_PER_CALLER")]
    pub watch_max_per_caller: Option<usize>,
    /// Event watches of one tenant on one replica, all callers together (default 1024).
    #[arg(long, env = "ZEN_WATCH_MAX_PER_TENANT")]
    pub watch_max_per_tenant: Option<usize>,
    // --- Rate limits (see docs/LIMITS.md); each allows bursts of twice its rate ---
    /// Requests per second per client address on anonymous endpoints: sign-in, token refresh,
    /// agent bootstrap (default 10).
    #[arg(long, env = "ZEN_RATE_LIMIT_ANONYMOUS_RPS")]
    pub rate_limit_anonymous_rps: Option<u32>,
    /// Webhook requests per second per client address that fail verification (default 5).
    #[arg(long, env = "ZEN_RATE_LIMIT_UNVERIFIED_WEBHOOKS_RPS")]
    pub rate_limit_unverified_webhooks_rps: Option<u32>,
    /// API calls per second per person (default 50).
    #[arg(long, env = "ZEN_RATE_LIMIT_USER_RPS")]
    pub rate_limit_user_rps: Option<u32>,
    /// Event batches per second per cluster (default 50).
    #[arg(long, env = "ZEN_RATE_LIMIT_CLUSTER_RPS")]
    pub rate_limit_cluster_rps: Option<u32>,
    /// Requests per second of a tenant created without quotas of its own (default 100; 0:
    /// unlimited). Tenants keep what they were created with; a platform admin changes a
    /// tenant's quotas with UpdateTenant.
    #[arg(long, env = "ZEN_DEFAULT_TENANT_REQUESTS_PER_SECOND")]
    pub default_tenant_requests_per_second: Option<i32>,
    /// Events stored per UTC day of a tenant created without quotas of its own (default
    /// 1000000).
    #[arg(long, env = "ZEN_DEFAULT_TENANT_MAX_EVENTS_PER_DAY")]
    pub default_tenant_max_events_per_day: Option<i64>,
    /// Clusters of a tenant created without quotas of its own (default 10).
    #[arg(long, env = "ZEN_DEFAULT_TENANT_MAX_CLUSTERS")]
    pub default_tenant_max_clusters: Option<i32>,
    /// How long a stream's bounded send buffer may stay full before its consumer is closed as
    /// too slow, in ms (default 2000).
    #[arg(long, env = "ZEN_SLOW_CONSUMER_GRACE_MS")]
    pub slow_consumer_grace_ms: Option<u64>,
    /// How long one WebSocket frame may take to be written before the client is dropped, in
    /// ms (default 10000).
    #[arg(long, env = "ZEN_STREAM_WRITE_TIMEOUT_MS")]
    pub stream_write_timeout_ms: Option<u64>,
    /// Kernel send buffer of each HTTP connection, in bytes, bounding what a client that does
    /// not read can hold in the kernel (default 65536, which Linux doubles; 0 leaves the
    /// kernel's autotuning).
    #[arg(long, env = "ZEN_HTTP_SEND_BUFFER_BYTES")]
    pub http_send_buffer_bytes: Option<usize>,
    // --- Retention (see docs/RETENTION.md); a tenant's own windows override the defaults ---
    /// Seconds between the end of one janitor run and the start of the next, on whichever
    /// replica holds the lease (default 3600; 0 turns the janitor off).
    #[arg(long, env = "ZEN_RETENTION_INTERVAL_SECS")]
    pub retention_interval_secs: Option<u64>,
    /// Rows per janitor delete statement (default 1000).
    #[arg(long, env = "ZEN_RETENTION_BATCH_SIZE")]
    pub retention_batch_size: Option<i64>,
    /// Days events are kept after they were received (default 90).
    #[arg(long, env = "ZEN_RETENTION_EVENTS_DAYS")]
    pub retention_events_days: Option<i32>,
    /// Days idempotency receipts are kept (default 30, at least 7: the resend bound).
    #[arg(long, env = "ZEN_RETENTION_RECEIPTS_DAYS")]
    pub retention_receipts_days: Option<i32>,
    /// Days finished remediations (with their approvals, dispatches, runs) are kept after
    /// their last change (default 365).
    #[arg(long, env = "ZEN_RETENTION_REMEDIATIONS_DAYS")]
    pub retention_remediations_days: Option<i32>,
    /// Days dead letters are kept (default 90).
    #[arg(long, env = "ZEN_RETENTION_DEAD_LETTERS_DAYS")]
    pub retention_dead_letters_days: Option<i32>,
    /// Days audit records stay in the database; older ones are exported to signed segments in
    /// ZEN_AUDIT_ARCHIVE_DIR and then deleted (default 0: the audit log is kept whole).
    #[arg(long, env = "ZEN_RETENTION_AUDIT_DAYS")]
    pub retention_audit_days: Option<i32>,
    /// Where the janitor writes exported audit segments (needed with ZEN_RETENTION_AUDIT_DAYS).
    #[arg(long, env = "ZEN_AUDIT_ARCHIVE_DIR")]
    pub audit_archive_dir: Option<PathBuf>,
}

/// The TOML file: every key optional, named as the flags with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    database_read_url: Option<String>,
    env: Option<Environment>,
    log_format: Option<LogFormat>,
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    trusted_proxies: Option<String>,
    auto_migrate: Option<bool>,
    tls_ca_cert: Option<PathBuf>,
    tls_server_cert: Option<PathBuf>,
    tls_server_key: Option<PathBuf>,
    tls_ca_key: Option<PathBuf>,
    gateway_cert: Option<PathBuf>,
    gateway_key: Option<PathBuf>,
    gateway_server_name: Option<String>,
    allowed_origins: Option<Vec<String>>,
    max_body_bytes: Option<usize>,
    agent_cert_validity_hours: Option<u64>,
    event_fold_window_seconds: Option<u64>,
    shutdown_grace_seconds: Option<u64>,
    jwt_keys_dir: Option<PathBuf>,
    redis_url: Option<String>,
    public_url: Option<String>,
    access_token_ttl_seconds: Option<u64>,
    session_ttl_seconds: Option<u64>,
    local_login: Option<bool>,
    #[serde(default)]
    oidc_providers: Vec<OidcProvider>,
    webhook_secret_keys: Option<String>,
    legacy_agent_key: Option<String>,
    remediation_poll_ms: Option<u64>,
    remediation_backoff_base_ms: Option<u64>,
    remediation_backoff_max_ms: Option<u64>,
    remediation_sweep_ms: Option<u64>,
    remediation_command_deadline_ms: Option<u64>,
    dependency_timeout_ms: Option<u64>,
    watch_max_per_caller: Option<usize>,
    watch_max_per_tenant: Option<usize>,
    rate_limit_anonymous_rps: Option<u32>,
    rate_limit_unverified_webhooks_rps: Option<u32>,
    rate_limit_user_rps: Option<u32>,
    rate_limit_cluster_rps: Option<u32>,
    default_tenant_requests_per_second: Option<i32>,
    default_tenant_max_events_per_day: Option<i64>,
    default_tenant_max_clusters: Option<i32>,
    slow_consumer_grace_ms: Option<u64>,
    stream_write_timeout_ms: Option<u64>,
    http_send_buffer_bytes: Option<usize>,
    audit_signing_key: Option<PathBuf>,
    retention_interval_secs: Option<u64>,
    retention_batch_size: Option<i64>,
    retention_events_days: Option<i32>,
    retention_receipts_days: Option<i32>,
    retention_remediations_days: Option<i32>,
    retention_dead_letters_days: Option<i32>,
    retention_audit_days: Option<i32>,
    audit_archive_dir: Option<PathBuf>,
}

/// One OIDC provider (Google, Okta, Azure AD, Keycloak … are all just issuers). The redirect
/// URL is `<public-url>/auth/callback/<name>`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProvider {
    pub name: String,
    pub issuer_url: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Files of the server's TLS identity and the CA that client certificates must chain to.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    /// The CA's key, when this server may sign agent certificates.
    pub ca_key: Option<PathBuf>,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// All three were left at their defaults under the data dir, so the development PKI may
    /// create them.
    pub defaults: bool,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub environment: Environment,
    pub log_format: LogFormat,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// A PostgreSQL read replica for list pages (`None`: the primary serves every read).
    pub database_read_url: Option<String>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The admin listener (metrics, deep health).
    pub admin_addr: SocketAddr,
    pub auto_migrate: bool,
    pub tls: TlsFiles,
    pub shutdown_grace: Duration,
    pub jwt_keys_dir: PathBuf,
    pub redis_url: Option<String>,
    pub public_url: String,
    pub access_token_ttl: Duration,
    pub session_ttl: Duration,
    pub local_login: bool,
    pub oidc_providers: Vec<OidcProvider>,
    pub agent_cert_validity: Duration,
    pub event_fold_window: Duration,
    pub gateway: GatewaySettings,
    /// Benchmarks only (never in production): acks without storing.
    pub bench_discard_events: bool,
    /// `ZEN_WEBHOOK_SECRET_KEYS`; `None` means the development key file under the data dir.
    pub webhook_secret_keys: Option<String>,
    /// `ZEN_LEGACY_AGENT_KEY`; `None` turns the legacy agent endpoint off.
    pub legacy_agent_key: Option<String>,
    /// Remediation dispatch and expiry timings.
    pub remediation: crate::remediation::RemediationSettings,
    /// Slow consumers and dependency outages.
    pub limits: LimitSettings,
    /// Platform-wide rate limits.
    pub rate_limits: crate::limits::RateLimitSettings,
    /// The quotas of a tenant created without its own.
    pub default_quotas: zen_store::Quotas,
    /// The retention janitor.
    pub retention: crate::retention::RetentionSettings,
    /// The key that signs exported audit segments.
    pub audit_signing_key: PathBuf,
}

/// What a slow consumer or a dependency outage may cost (docs/RELIABILITY.md).
#[derive(Clone, Debug)]
pub struct LimitSettings {
    /// PostgreSQL pool acquire and Redis command timeout.
    pub dependency_timeout: Duration,
    pub watch_max_per_caller: usize,
    pub watch_max_per_tenant: usize,
    pub slow_consumer_grace: Duration,
    pub stream_write_timeout: Duration,
    /// `SO_SNDBUF` of HTTP connections; 0: the kernel's default.
    pub http_send_buffer: usize,
}

/// How the built-in gateway reaches the gRPC front, and what it accepts.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The files were left at their defaults, so development may issue them.
    pub defaults: bool,
    pub server_name: String,
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
    /// Proxies whose forwarding headers name the client address.
    pub trusted_proxies: zen_gateway::TrustedProxies,
}

/// A configuration problem, worded for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the configuration file {path} is invalid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:7443";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9464";
const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 20;

impl Config {
    /// Resolves the configuration from flags/environment (already parsed by clap) and the file.
    pub fn resolve(global: &GlobalArgs, serve: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &global.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let environment = global
            .environment
            .or(file.env)
            .unwrap_or(Environment::Development);
        let data_dir = global
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("zen-data"));
        let database_url_given = global
            .database_url
            .clone()
            .or(file.database_url)
            .filter(|url| !url.trim().is_empty());
        let pki_dir = data_dir.join("pki");
        let ca_cert = serve.tls_ca_cert.clone().or(file.tls_ca_cert);
        let server_cert = serve.tls_server_cert.clone().or(file.tls_server_cert);
        let server_key = serve.tls_server_key.clone().or(file.tls_server_key);
        let tls_defaults = ca_cert.is_none() && server_cert.is_none() && server_key.is_none();
        let oidc_providers = match &serve.oidc_providers {
            Some(json) => serde_json::from_str(json).map_err(|e| {
                ConfigError::Invalid(format!(
                    "ZEN_OIDC_PROVIDERS is not a valid JSON array of providers: {e}"
                ))
            })?,
            None => file.oidc_providers,
        };
        let http_addr = serve
            .http_addr
            .or(file.http_addr)
            .unwrap_or_else(|| DEFAULT_HTTP_ADDR.parse().expect("valid default"));
        let config = Config {
            environment,
            log_format: global
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Json),
            database_url: database_url_given
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("zen.db").display())),
            database_read_url: serve
                .database_read_url
                .clone()
                .or(file.database_read_url)
                .filter(|url| !url.trim().is_empty()),
            grpc_addr: serve
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| DEFAULT_GRPC_ADDR.parse().expect("valid default")),
            http_addr,
            admin_addr: serve
                .admin_addr
                .or(file.admin_addr)
                .unwrap_or_else(|| DEFAULT_ADMIN_ADDR.parse().expect("valid default")),
            auto_migrate: serve.auto_migrate.or(file.auto_migrate).unwrap_or(true),
            tls: TlsFiles {
                ca_key: serve
                    .tls_ca_key
                    .clone()
                    .or(file.tls_ca_key)
                    .or_else(|| tls_defaults.then(|| pki_dir.join("ca.key"))),
                ca_cert: ca_cert.unwrap_or_else(|| pki_dir.join("ca.crt")),
                server_cert: server_cert.unwrap_or_else(|| pki_dir.join("server.crt")),
                server_key: server_key.unwrap_or_else(|| pki_dir.join("server.key")),
                defaults: tls_defaults,
            },
            shutdown_grace: Duration::from_secs(
                serve
                    .shutdown_grace_seconds
                    .or(file.shutdown_grace_seconds)
                    .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECONDS),
            ),
            jwt_keys_dir: global
                .jwt_keys_dir
                .clone()
                .or(file.jwt_keys_dir)
                .unwrap_or_else(|| data_dir.join("keys").join("jwt")),
            redis_url: global
                .redis_url
                .clone()
                .or(file.redis_url)
                .filter(|url| !url.trim().is_empty()),
            public_url: serve
                .public_url
                .clone()
                .or(file.public_url)
                .unwrap_or_else(|| format!("http://{http_addr}"))
                .trim_end_matches('/')
                .to_owned(),
            access_token_ttl: Duration::from_secs(
                serve
                    .access_token_ttl_seconds
                    .or(file.access_token_ttl_seconds)
                    .unwrap_or(900),
            ),
            session_ttl: Duration::from_secs(
                serve
                    .session_ttl_seconds
                    .or(file.session_ttl_seconds)
                    .unwrap_or(30 * 24 * 3600),
            ),
            local_login: serve.local_login.or(file.local_login).unwrap_or(false),
            bench_discard_events: serve.bench_discard_events.unwrap_or(false),
            gateway: {
                let cert = serve.gateway_cert.clone().or(file.gateway_cert);
                let key = serve.gateway_key.clone().or(file.gateway_key);
                GatewaySettings {
                    defaults: cert.is_none() && key.is_none(),
                    cert: cert.unwrap_or_else(|| pki_dir.join("gateway.crt")),
                    key: key.unwrap_or_else(|| pki_dir.join("gateway.key")),
                    server_name: serve
                        .gateway_server_name
                        .clone()
                        .or(file.gateway_server_name)
                        .unwrap_or_else(|| "localhost".into()),
                    allowed_origins: serve
                        .allowed_origins
                        .clone()
                        .or(file.allowed_origins)
                        .unwrap_or_default(),
                    max_body_bytes: serve
                        .max_body_bytes
                        .or(file.max_body_bytes)
                        .unwrap_or(1024 * 1024),
                    trusted_proxies: zen_gateway::TrustedProxies::parse(
                        serve
                            .trusted_proxies
                            .as_deref()
                            .or(file.trusted_proxies.as_deref())
                            .unwrap_or_default(),
                    )
                    .map_err(|e| {
                        ConfigError::Invalid(format!(
                            "ZEN_TRUSTED_PROXIES / --trusted-proxies: {e}"
                        ))
                    })?,
                }
            },
            agent_cert_validity: Duration::from_secs(
                3600 * serve
                    .agent_cert_validity_hours
                    .or(file.agent_cert_validity_hours)
                    .unwrap_or(168),
            ),
            event_fold_window: Duration::from_secs(
                serve
                    .event_fold_window_seconds
                    .or(file.event_fold_window_seconds)
                    .unwrap_or(3600),
            ),
            oidc_providers,
            webhook_secret_keys: serve
                .webhook_secret_keys
                .clone()
                .or(file.webhook_secret_keys)
                .filter(|k| !k.trim().is_empty()),
            remediation: {
                // Flags > environment (read by clap into the flags, or directly when the
                // arguments were built in code) > file > defaults.
                let env = crate::remediation::RemediationSettings::from_env();
                let pick = |flag: Option<u64>, file: Option<u64>, fallback: Duration| {
                    flag.or(file)
                        .filter(|ms| *ms > 0)
                        .map_or(fallback, Duration::from_millis)
                };
                crate::remediation::RemediationSettings {
                    poll_interval: pick(
                        serve.remediation_poll_ms,
                        file.remediation_poll_ms,
                        env.poll_interval,
                    ),
                    backoff_base: pick(
                        serve.remediation_backoff_base_ms,
                        file.remediation_backoff_base_ms,
                        env.backoff_base,
                    ),
                    backoff_max: pick(
                        serve.remediation_backoff_max_ms,
                        file.remediation_backoff_max_ms,
                        env.backoff_max,
                    ),
                    sweep_interval: pick(
                        serve.remediation_sweep_ms,
                        file.remediation_sweep_ms,
                        env.sweep_interval,
                    ),
                    command_deadline: pick(
                        serve.remediation_command_deadline_ms,
                        file.remediation_command_deadline_ms,
                        env.command_deadline,
                    ),
                }
            },
            limits: LimitSettings {
                dependency_timeout: Duration::from_millis(
                    serve
                        .dependency_timeout_ms
                        .or(file.dependency_timeout_ms)
                        .unwrap_or(2000),
                ),
                watch_max_per_caller: serve
                    .watch_max_per_caller
                    .or(file.watch_max_per_caller)
                    .unwrap_or(64),
                watch_max_per_tenant: serve
                    .watch_max_per_tenant
                    .or(file.watch_max_per_tenant)
                    .unwrap_or(1024),
                slow_consumer_grace: Duration::from_millis(
                    serve
                        .slow_consumer_grace_ms
                        .or(file.slow_consumer_grace_ms)
                        .unwrap_or(2000),
                ),
                stream_write_timeout: Duration::from_millis(
                    serve
                        .stream_write_timeout_ms
                        .or(file.stream_write_timeout_ms)
                        .unwrap_or(10_000),
                ),
                http_send_buffer: serve
                    .http_send_buffer_bytes
                    .or(file.http_send_buffer_bytes)
                    .unwrap_or(64 * 1024),
            },
            rate_limits: {
                let rate = |given: Option<u32>, default: u32| {
                    let rps = given.unwrap_or(default).max(1);
                    zen_cache::Rate::per_second(rps, rps.saturating_mul(2))
                };
                crate::limits::RateLimitSettings {
                    anonymous: rate(
                        serve
                            .rate_limit_anonymous_rps
                            .or(file.rate_limit_anonymous_rps),
                        10,
                    ),
                    unverified_webhooks: rate(
                        serve
                            .rate_limit_unverified_webhooks_rps
                            .or(file.rate_limit_unverified_webhooks_rps),
                        5,
                    ),
                    user: rate(serve.rate_limit_user_rps.or(file.rate_limit_user_rps), 50),
                    cluster: rate(
                        serve.rate_limit_cluster_rps.or(file.rate_limit_cluster_rps),
                        50,
                    ),
                    tenant_burst_seconds: 2,
                }
            },
            default_quotas: {
                let defaults = zen_store::Quotas::default();
                zen_store::Quotas {
                    max_clusters: serve
                        .default_tenant_max_clusters
                        .or(file.default_tenant_max_clusters)
                        .unwrap_or(defaults.max_clusters),
                    requests_per_second: serve
                        .default_tenant_requests_per_second
                        .or(file.default_tenant_requests_per_second)
                        .unwrap_or(defaults.requests_per_second),
                    max_events_per_day: serve
                        .default_tenant_max_events_per_day
                        .or(file.default_tenant_max_events_per_day)
                        .unwrap_or(defaults.max_events_per_day),
                }
            },
            retention: {
                let defaults = crate::retention::RetentionSettings::default();
                let days = |flag: Option<i32>, file: Option<i32>, default: i32| {
                    flag.or(file).unwrap_or(default)
                };
                crate::retention::RetentionSettings {
                    interval: serve
                        .retention_interval_secs
                        .or(file.retention_interval_secs)
                        .map_or(defaults.interval, Duration::from_secs),
                    batch_size: serve
                        .retention_batch_size
                        .or(file.retention_batch_size)
                        .unwrap_or(defaults.batch_size),
                    pause: defaults.pause,
                    defaults: zen_store::Retention {
                        events_days: days(
                            serve.retention_events_days,
                            file.retention_events_days,
                            defaults.defaults.events_days,
                        ),
                        receipts_days: days(
                            serve.retention_receipts_days,
                            file.retention_receipts_days,
                            defaults.defaults.receipts_days,
                        ),
                        remediations_days: days(
                            serve.retention_remediations_days,
                            file.retention_remediations_days,
                            defaults.defaults.remediations_days,
                        ),
                        dead_letters_days: days(
                            serve.retention_dead_letters_days,
                            file.retention_dead_letters_days,
                            defaults.defaults.dead_letters_days,
                        ),
                    },
                    audit_days: days(serve.retention_audit_days, file.retention_audit_days, 0),
                    audit_archive_dir: serve.audit_archive_dir.clone().or(file.audit_archive_dir),
                }
            },
            audit_signing_key: global
                .audit_signing_key
                .clone()
                .or(file.audit_signing_key)
                .unwrap_or_else(|| data_dir.join("keys").join("audit-ed25519.pk8")),
            legacy_agent_key: serve
                .legacy_agent_key
                .clone()
                .or(file.legacy_agent_key)
                .filter(|k| !k.trim().is_empty()),
            data_dir,
        };
        config.validate(database_url_given.is_some())?;
        Ok(config)
    }

    /// The janitor's settings: every window within what a tenant may set itself, and an
    /// archive directory wherever audit records are to leave the database.
    fn validate_retention(&self) -> Result<(), ConfigError> {
        let r = &self.retention;
        if !(1..=100_000).contains(&r.batch_size) {
            return Err(ConfigError::Invalid(
                "ZEN_RETENTION_BATCH_SIZE must be between 1 and 100000".into(),
            ));
        }
        for (name, days) in [
            ("ZEN_RETENTION_EVENTS_DAYS", r.defaults.events_days),
            ("ZEN_RETENTION_RECEIPTS_DAYS", r.defaults.receipts_days),
            (
                "ZEN_RETENTION_REMEDIATIONS_DAYS",
                r.defaults.remediations_days,
            ),
            (
                "ZEN_RETENTION_DEAD_LETTERS_DAYS",
                r.defaults.dead_letters_days,
            ),
        ] {
            if days == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at least 1 (a platform default of 0 days would delete \
                     everything)"
                )));
            }
        }
        if let Err(e) = r.defaults.check() {
            return Err(ConfigError::Invalid(format!(
                "the platform retention defaults (ZEN_RETENTION_*_DAYS): {e}"
            )));
        }
        if !(0..=zen_store::Retention::MAX_DAYS).contains(&r.audit_days) {
            return Err(ConfigError::Invalid(format!(
                "ZEN_RETENTION_AUDIT_DAYS must be between 0 and {}",
                zen_store::Retention::MAX_DAYS
            )));
        }
        if r.audit_days > 0 && r.audit_archive_dir.is_none() {
            return Err(ConfigError::Invalid(
                "ZEN_RETENTION_AUDIT_DAYS needs ZEN_AUDIT_ARCHIVE_DIR: audit records leave the \
                 database only as signed segments written there"
                    .into(),
            ));
        }
        Ok(())
    }

    fn validate(&self, database_url_given: bool) -> Result<(), ConfigError> {
        let url = &self.database_url;
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            return Err(ConfigError::Invalid(format!(
                "ZEN_DATABASE_URL `{}` is not supported: use postgres://USER@HOST/DB or sqlite://PATH",
                redact_url(url)
            )));
        }
        if let Some(read_url) = &self.database_read_url {
            let postgres = |u: &str| u.starts_with("postgres://") || u.starts_with("postgresql://");
            if !postgres(url) {
                return Err(ConfigError::Invalid(format!(
                    "ZEN_DATABASE_READ_URL needs a PostgreSQL ZEN_DATABASE_URL (a read replica is \
                     a PostgreSQL standby; `{}` has none): unset ZEN_DATABASE_READ_URL / \
                     --database-read-url",
                    redact_url(url)
                )));
            }
            if !postgres(read_url) {
                return Err(ConfigError::Invalid(format!(
                    "ZEN_DATABASE_READ_URL `{}` is not supported: use postgres://USER@HOST/DB \
                     (a PostgreSQL standby of ZEN_DATABASE_URL)",
                    redact_url(read_url)
                )));
            }
        }
        for (a, b, a_name, b_name) in [
            (self.grpc_addr, self.http_addr, "gRPC", "HTTP"),
            (self.admin_addr, self.http_addr, "admin", "HTTP"),
            (self.admin_addr, self.grpc_addr, "admin", "gRPC"),
        ] {
            if a == b && a.port() != 0 {
                return Err(ConfigError::Invalid(format!(
                    "the {a_name} and {b_name} addresses are both {a}; give them different \
                     ports (--grpc-addr / ZEN_GRPC_ADDR, --http-addr / ZEN_HTTP_ADDR, \
                     --admin-addr / ZEN_ADMIN_ADDR)"
                )));
            }
        }
        self.validate_retention()?;
        let limits = &self.limits;
        if limits.dependency_timeout < Duration::from_millis(100)
            || limits.dependency_timeout > Duration::from_secs(60)
        {
            return Err(ConfigError::Invalid(
                "ZEN_DEPENDENCY_TIMEOUT_MS must be between 100 and 60000".into(),
            ));
        }
        if limits.watch_max_per_caller == 0 || limits.watch_max_per_tenant == 0 {
            return Err(ConfigError::Invalid(
                "ZEN_WATCH_MAX_PER_CALLER and ZEN_WATCH_MAX_PER_TENANT must be at least 1".into(),
            ));
        }
        if limits.slow_consumer_grace < Duration::from_millis(100)
            || limits.slow_consumer_grace > Duration::from_secs(600)
            || limits.stream_write_timeout < Duration::from_millis(100)
            || limits.stream_write_timeout > Duration::from_secs(600)
        {
            return Err(ConfigError::Invalid(
                "ZEN_SLOW_CONSUMER_GRACE_MS and ZEN_STREAM_WRITE_TIMEOUT_MS must be between 100 and 600000".into(),
            ));
        }
        if limits.http_send_buffer != 0 && limits.http_send_buffer < 4096 {
            return Err(ConfigError::Invalid(
                "ZEN_HTTP_SEND_BUFFER_BYTES must be 0 (kernel default) or at least 4096".into(),
            ));
        }
        if self.shutdown_grace > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid(
                "ZEN_SHUTDOWN_GRACE_SECONDS must be at most 3600".into(),
            ));
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return Err(ConfigError::Invalid(format!(
                "ZEN_PUBLIC_URL `{}` must start with http:// or https://",
                redact_url(&self.public_url)
            )));
        }
        if self.access_token_ttl < Duration::from_secs(60)
            || self.access_token_ttl > Duration::from_secs(24 * 3600)
        {
            return Err(ConfigError::Invalid(
                "ZEN_ACCESS_TOKEN_TTL_SECONDS must be between 60 and 86400".into(),
            ));
        }
        if self.agent_cert_validity < Duration::from_secs(3600)
            || self.agent_cert_validity > Duration::from_secs(90 * 24 * 3600)
        {
            return Err(ConfigError::Invalid(
                "ZEN_AGENT_CERT_VALIDITY_HOURS must be between 1 and 2160".into(),
            ));
        }
        if self.session_ttl < self.access_token_ttl {
            return Err(ConfigError::Invalid(
                "ZEN_SESSION_TTL_SECONDS must be at least the access-token lifetime".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for provider in &self.oidc_providers {
            let valid_name = !provider.name.is_empty()
                && provider
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid_name || !names.insert(provider.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "OIDC provider name `{}` must be unique and use a-z, 0-9 and '-'",
                    provider.name
                )));
            }
        }
        if let Some(url) = &self.redis_url {
            let schemes = [
                "redis://",
                "rediss://",
                "redis-cluster://",
                "redis-sentinel://",
            ];
            if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
                return Err(ConfigError::Invalid(format!(
                    "ZEN_REDIS_URL `{}` must start with redis://, rediss://, redis-cluster:// or \
                     redis-sentinel://",
                    redact_url(url)
                )));
            }
        }
        if self.environment == Environment::Production && self.bench_discard_events {
            return Err(ConfigError::Invalid(
                "ZEN_BENCH_DISCARD_EVENTS drops events; ZEN_ENV=production refuses it".into(),
            ));
        }
        if self.environment == Environment::Production && self.local_login {
            return Err(ConfigError::Invalid(
                "ZEN_LOCAL_LOGIN is for development; ZEN_ENV=production refuses it".into(),
            ));
        }
        if self.environment == Environment::Production && !database_url_given {
            return Err(ConfigError::Invalid(
                "ZEN_ENV=production needs an explicit ZEN_DATABASE_URL".into(),
            ));
        }
        Ok(())
    }

    /// Checks what only `zen serve` needs: in production, the TLS files must be given, exist
    /// and keep their private key private.
    pub fn validate_for_serve(&self) -> Result<(), ConfigError> {
        if self.environment != Environment::Production {
            return Ok(());
        }
        if self.tls.defaults {
            return Err(ConfigError::Invalid(
                "ZEN_ENV=production never generates certificates: set ZEN_TLS_CA_CERT, \
                 ZEN_TLS_SERVER_CERT and ZEN_TLS_SERVER_KEY to the files of your PKI"
                    .into(),
            ));
        }
        for path in [
            &self.tls.ca_cert,
            &self.tls.server_cert,
            &self.tls.server_key,
        ] {
            if !path.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "ZEN_ENV=production: {} does not exist or is not a file",
                    path.display()
                )));
            }
        }
        reject_weak_key_permissions(&self.tls.server_key)?;
        if !self.gateway.cert.is_file() || !self.gateway.key.is_file() {
            return Err(ConfigError::Invalid(format!(
                "ZEN_ENV=production: the gateway identity {} / {} is missing (ZEN_GATEWAY_CERT, \
                 ZEN_GATEWAY_KEY; issue one with `zen pki issue --name gateway --role service`)",
                self.gateway.cert.display(),
                self.gateway.key.display()
            )));
        }
        reject_weak_key_permissions(&self.gateway.key)?;
        if self.webhook_secret_keys.is_none() {
            return Err(ConfigError::Invalid(
                "ZEN_ENV=production: set ZEN_WEBHOOK_SECRET_KEYS (`<key-id>:<base64 32 bytes>`, \
                 the same on every replica; `zen keys webhook-key` prints a new one): webhook \
                 secrets are sealed with it"
                    .into(),
            ));
        }
        if let Some(key) = &self.legacy_agent_key {
            if key.len() < 32 {
                return Err(ConfigError::Invalid(
                    "ZEN_ENV=production: ZEN_LEGACY_AGENT_KEY must be at least 32 characters"
                        .into(),
                ));
            }
        }
        for provider in &self.oidc_providers {
            if provider.client_secret.len() < 16 || !provider.issuer_url.starts_with("https://") {
                return Err(ConfigError::Invalid(format!(
                    "ZEN_ENV=production: OIDC provider `{}` needs an https issuer and a client \
                     secret of at least 16 characters",
                    provider.name
                )));
            }
        }
        let has_keys = std::fs::read_dir(&self.jwt_keys_dir)
            .map(|mut entries| {
                entries.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "pem")))
            })
            .unwrap_or(false);
        if !has_keys {
            return Err(ConfigError::Invalid(format!(
                "ZEN_ENV=production never generates signing keys: {} holds no JWT keys \
                 (create one with `zen keys rotate-jwt --jwt-keys-dir {}`)",
                self.jwt_keys_dir.display(),
                self.jwt_keys_dir.display()
            )));
        }
        Ok(())
    }

    /// The PKI directory of the development defaults.
    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }
}

/// A private key that others may read is a weak secret in production. As PostgreSQL does for
/// its TLS key: owner-only (0600) is fine, and so is group-readable (0640 or stricter) when
/// root owns the file, which is how Kubernetes mounts Secrets for a non-root pod (`fsGroup`).
fn reject_weak_key_permissions(path: &Path) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path)
            .map_err(|e| ConfigError::Invalid(format!("cannot stat {}: {e}", path.display())))?;
        let mode = metadata.mode() & 0o777;
        let private = mode & 0o077 == 0 || (metadata.uid() == 0 && mode & 0o037 == 0);
        if !private {
            return Err(ConfigError::Invalid(format!(
                "ZEN_ENV=production: the private key {} is too open (mode {mode:o}); allow at \
                 most 0600, or 0640 when owned by root (`chmod 600 {}`)",
                path.display(),
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

/// Hides the credentials of a URL (database, cache, any other) for messages and logs: the
/// password of the user-info part (`user:***@`, or `***@` when the user-info is a bare
/// token) and the value of any `password`/`secret`/`token`-like query parameter. A string
/// that is not `scheme://…` but holds an `@` is not shown at all, since where its secret
/// sits is unknown.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return if url.contains('@') || url.contains('?') {
            "<not a URL: hidden>".into()
        } else {
            url.to_owned()
        };
    };
    let (head, query) = match url.find('?') {
        Some(q) if q > scheme_end => (&url[..q], Some(&url[q + 1..])),
        _ => (url, None),
    };
    let mut out = match head.rfind('@') {
        Some(at) if at > scheme_end => {
            let userinfo = &head[scheme_end + 3..at];
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{}{user}{}", &head[..scheme_end + 3], &head[at..])
        }
        _ => head.to_owned(),
    };
    if let Some(query) = query {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_secret_name(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&masked.join("&"));
    }
    out
}

/// Whether a setting or parameter named `name` carries a secret.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "credential", "auth"]
        .iter()
        .any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_configuration() {
        let config = Config::resolve(&GlobalArgs::default(), &ServeArgs::default()).unwrap();
        assert_eq!(config.environment, Environment::Development);
        assert_eq!(config.grpc_addr.to_string(), DEFAULT_GRPC_ADDR);
        assert_eq!(config.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert!(config.database_url.starts_with("sqlite://zen-data/"));
        assert!(config.tls.defaults);
    }

    #[test]
    fn production_refuses_generated_certificates_and_implicit_database() {
        let global = GlobalArgs {
            environment: Some(Environment::Production),
            ..Default::default()
        };
        let err = Config::resolve(&global, &ServeArgs::default()).unwrap_err();
        assert!(err.to_string().contains("ZEN_DATABASE_URL"), "{err}");
        let global = GlobalArgs {
            environment: Some(Environment::Production),
            database_url: Some("postgres://zen@db/zen".into()),
            ..Default::default()
        };
        let config = Config::resolve(&global, &ServeArgs::default()).unwrap();
        let err = config.validate_for_serve().unwrap_err();
        assert!(err.to_string().contains("never generates"), "{err}");
    }

    #[test]
    fn file_values_yield_to_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zen.toml");
        std::fs::write(
            &path,
            "grpc_addr = \"127.0.0.1:9000\"\nhttp_addr = \"127.0.0.1:9001\"\n",
        )
        .unwrap();
        let global = GlobalArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let serve = ServeArgs {
            http_addr: Some("127.0.0.1:9002".parse().unwrap()),
            ..Default::default()
        };
        let config = Config::resolve(&global, &serve).unwrap();
        assert_eq!(config.grpc_addr.port(), 9000);
        assert_eq!(config.http_addr.port(), 9002);

        std::fs::write(&path, "grpc_adr = \"x\"\n").unwrap();
        let err = Config::resolve(&global, &ServeArgs::default()).unwrap_err();
        assert!(err.to_string().contains("grpc_adr"), "{err}");
    }

    #[test]
    fn retention_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zen.toml");
        std::fs::write(
            &path,
            "retention_events_days = 30\nretention_batch_size = 500\n",
        )
        .unwrap();
        let global = GlobalArgs {
            config: Some(path),
            ..Default::default()
        };
        let config = Config::resolve(&global, &ServeArgs::default()).unwrap();
        assert_eq!(config.retention.defaults.events_days, 30);
        assert_eq!(config.retention.defaults.receipts_days, 30);
        assert_eq!(config.retention.batch_size, 500);
        for (serve, says) in [
            (
                ServeArgs {
                    retention_receipts_days: Some(3),
                    ..Default::default()
                },
                "retention.receipts_days",
            ),
            (
                ServeArgs {
                    retention_events_days: Some(0),
                    ..Default::default()
                },
                "ZEN_RETENTION_EVENTS_DAYS",
            ),
            (
                ServeArgs {
                    retention_audit_days: Some(365),
                    ..Default::default()
                },
                "ZEN_AUDIT_ARCHIVE_DIR",
            ),
            (
                ServeArgs {
                    retention_batch_size: Some(0),
                    ..Default::default()
                },
                "ZEN_RETENTION_BATCH_SIZE",
            ),
        ] {
            let err = Config::resolve(&GlobalArgs::default(), &serve).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn unsupported_database_urls_are_named_without_password() {
        let global = GlobalArgs {
            database_url: Some("mysql://root:hunter2@db/zen".into()),
            ..Default::default()
        };
        let err = Config::resolve(&global, &ServeArgs::default()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("mysql://root:***@db/zen"), "{message}");
        assert!(!message.contains("hunter2"));
    }

    #[test]
    fn a_read_replica_needs_postgresql_on_both_sides() {
        let resolve = |primary: Option<&str>, replica: &str| {
            let global = GlobalArgs {
                database_url: primary.map(str::to_owned),
                ..Default::default()
            };
            let serve = ServeArgs {
                database_read_url: Some(replica.to_owned()),
                ..Default::default()
            };
            Config::resolve(&global, &serve)
        };
        let config = resolve(
            Some("postgres://zen@db/zen"),
            "postgres://zen@db-replica/zen",
        )
        .unwrap();
        assert_eq!(
            config.database_read_url.as_deref(),
            Some("postgres://zen@db-replica/zen")
        );
        // SQLite (the default) has no replica.
        let err = resolve(None, "postgres://zen@db-replica/zen").unwrap_err();
        assert!(err.to_string().contains("ZEN_DATABASE_READ_URL"), "{err}");
        assert!(err.to_string().contains("sqlite://"), "{err}");
        let err = resolve(Some("postgres://zen@db/zen"), "sqlite://replica.db").unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        // Named without its password.
        let err = resolve(
            Some("postgres://zen@db/zen"),
            "mysql://zen:hunter2@db-replica/zen",
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // Empty means none, as for the other URLs.
        let config = resolve(None, " ").unwrap();
        assert_eq!(config.database_read_url, None);
    }

    #[test]
    fn urls_lose_every_credential() {
        for (url, secret) in [
            ("postgres://zen:hunter2@db/zen?sslmode=require", "hunter2"),
            ("redis://:hunter2@cache:6379/0", "hunter2"),
            ("rediss://hunter2@cache:6380", "hunter2"),
            ("postgres://db/zen?user=zen&password=hunter2", "hunter2"),
            ("postgres:hunter2@db", "hunter2"),
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{url} -> {shown}");
        }
        assert_eq!(
            redact_url("postgres://zen:x@db:5432/zen?sslmode=require"),
            "postgres://zen:***@db:5432/zen?sslmode=require"
        );
    }
}
