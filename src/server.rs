//! `zen serve`: composes the store, the mutual-TLS gRPC front and the HTTP side, and drains
//! both on SIGTERM.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use zen_security::jwt::{KeyRing, CLOCK_SKEW};
use zen_store::Store;

use crate::auth::{Auth, AuthSettings};
use crate::authz::PolicyTable;
use crate::config::{Config, Environment};
use crate::console;
use crate::grpc::authorize::AuthzLayer;
use crate::grpc::contract::ContractVersions;
use crate::grpc::edge::GrpcEdgeLayer;
use crate::grpc::services;
use crate::http::{self, HttpState};
use crate::http_edge;
use crate::idempotency::{CacheIdempotency, TokenPrincipal};
use crate::readiness::{self, Readiness};
use crate::{proto, store, telemetry, tls};

/// Prefix of every key and channel Zen puts in the shared cache.
const CACHE_PREFIX: &str = "zen:";
/// `aud` of Zen's access tokens.
pub const TOKEN_AUDIENCE: &str = "zen";

/// The key ring sealing webhook secrets: `ZEN_WEBHOOK_SECRET_KEYS`, or in development a key
/// file created under the data dir on first start (production refuses to start without the
/// setting, see `Config::validate_for_serve`).
fn webhook_sealer(config: &Config) -> anyhow::Result<zen_webhook::SecretSealer> {
    if let Some(keys) = &config.webhook_secret_keys {
        return zen_webhook::SecretSealer::from_config(keys).context("ZEN_WEBHOOK_SECRET_KEYS");
    }
    let path = config.data_dir.join("keys").join("webhook-secret-keys");
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let line = format!("dev:{}\n", zen_webhook::SecretSealer::generate_key());
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(mut file) => std::io::Write::write_all(&mut file, line.as_bytes())?,
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    let keys =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    zen_webhook::SecretSealer::from_config(keys.trim())
        .with_context(|| format!("the webhook secret keys in {}", path.display()))
}

/// The OIDC client of the configured providers, redirecting to `<public-url>/auth/callback/<name>`.
fn oidc_providers(
    config: &Config,
    cache: Arc<dyn zen_cache::Cache>,
) -> anyhow::Result<Option<zen_oidc::Oidc>> {
    if config.oidc_providers.is_empty() {
        return Ok(None);
    }
    let providers = config
        .oidc_providers
        .iter()
        .map(|p| zen_oidc::ProviderConfig {
            name: p.name.clone(),
            issuer_url: p.issuer_url.clone(),
            client_id: p.client_id.clone(),
            client_secret: p.client_secret.clone(),
            scopes: p.scopes.clone(),
            redirect_url: format!("{}/auth/callback/{}", config.public_url, p.name),
        })
        .collect();
    Ok(Some(
        zen_oidc::Oidc::new(providers, cache).context("configuring the OIDC providers")?,
    ))
}

/// How often the gRPC health status follows the dependency checks.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// The largest header list the gRPC front takes (h2 `SETTINGS_MAX_HEADER_LIST_SIZE`): well
/// above what the gateway forwards (`zen_gateway::MAX_HEADER_BYTES`).
const MAX_GRPC_HEADER_LIST_BYTES: u32 = 256 * 1024;

/// A started Zen: both servers accept connections until [`Running::shutdown`].
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The admin listener (metrics, deep health).
    pub admin_addr: SocketAddr,
    grace: Duration,
    /// Set first on SIGTERM: the HTTP listeners stop accepting and long-lived streams end.
    draining: watch::Sender<bool>,
    /// Set once the HTTP side has drained: the gRPC front stops (the gateway's in-flight
    /// requests still make their call to it until then).
    grpc_stopping: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
    admin: JoinHandle<std::io::Result<()>>,
    health_driver: JoinHandle<()>,
    health_reporter: HealthReporter,
    /// The retention janitor (`None` when turned off).
    janitor: Option<JoinHandle<()>>,
    /// The read replica's freshness monitor (`None` without a replica).
    replica_monitor: Option<JoinHandle<()>>,
    store: Arc<Store>,
}

/// The audit signing key, when the janitor exports audit segments (development creates one;
/// production must be given it).
fn audit_signing_key(
    config: &Config,
) -> anyhow::Result<Option<Arc<crate::audit_archive::SigningKey>>> {
    if config.retention.audit_days == 0 {
        return Ok(None);
    }
    let create = config.environment == crate::config::Environment::Development;
    Ok(Some(Arc::new(crate::audit_archive::SigningKey::load(
        &config.audit_signing_key,
        create,
    )?)))
}

/// Runs Zen until `shutdown` completes, then drains for at most the configured grace period.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let running = start(config).await?;
    eprintln!(
        "zen serving gRPC (mTLS) on {}, HTTP on {} and admin (metrics) on {}",
        running.grpc_addr, running.http_addr, running.admin_addr
    );
    shutdown.await;
    running.shutdown().await
}

/// Opens the store, binds both addresses and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    config.validate_for_serve()?;
    // The recorder first: background tasks started below record from their first moment.
    let metrics = telemetry::metrics_handle();
    tls::ensure_dev_pki(&config)?;
    let tls_config = tls::server_tls_config(&config)?;
    let versions = ContractVersions::from_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .map_err(anyhow::Error::msg)
        .context("reading the contract versions")?;
    let policies = PolicyTable::from_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .map_err(anyhow::Error::msg)
        .context("reading the authorization policies")?;
    let store = Arc::new(store::open(&config).await?);
    // Not part of readiness: a replica that is down or lagging only sends lists to the primary.
    let replica_monitor = store.spawn_replica_monitor(zen_store::replica::FRESHNESS_INTERVAL);
    let cache = zen_cache::connect_with(
        config.redis_url.as_deref(),
        CACHE_PREFIX,
        zen_cache::RedisOptions {
            command_timeout: config.limits.dependency_timeout,
            ..Default::default()
        },
    )
    .await
    .context("connecting to the cache (ZEN_REDIS_URL)")?;
    let keys = KeyRing::open(
        &config.jwt_keys_dir,
        config.access_token_ttl + CLOCK_SKEW,
        config.environment == Environment::Development,
    )
    .context("loading the JWT signing keys")?;
    let auth = Arc::new(Auth::new(
        AuthSettings {
            issuer: config.public_url.clone(),
            audience: TOKEN_AUDIENCE.into(),
            access_ttl: config.access_token_ttl,
            session_ttl: config.session_ttl,
        },
        keys,
        cache.clone(),
        store.clone(),
    ));
    let oidc = oidc_providers(&config, cache.clone())?;
    let readiness = Arc::new(Readiness::new(store.clone(), cache.clone()));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;

    // Bind both sockets before serving anything, so an address in use fails the start.
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the HTTP address {}", config.http_addr))?;
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", config.admin_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (draining, _) = watch::channel(false);
    let (grpc_stopping, _) = watch::channel(false);
    let drained = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|draining| *draining).await;
    };

    // Snapshots of roles and webhook sources, cleared on every replica when they change.
    let invalidations = crate::snapshot::Invalidations::start(cache.clone());
    // One limiter for every entry point, shared by the replicas through the cache.
    let limiter = Arc::new(crate::limits::RateLimiter::new(
        cache.clone(),
        config.rate_limits.clone(),
    ));
    let router = Server::builder()
        // Room for the metadata the gateway forwards (it refuses larger headers with 431
        // before calling), so no HTTP request can fail on the gRPC hop for its headers alone.
        .http2_max_header_list_size(MAX_GRPC_HEADER_LIST_BYTES)
        .tls_config(tls_config)
        .context("configuring TLS")?
        .layer(GrpcEdgeLayer::new(versions))
        .layer(AuthzLayer::new(
            policies,
            store.clone(),
            auth.clone(),
            limiter.clone(),
            invalidations.clone(),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let router = services::register(
        router,
        services::Dependencies {
            invalidations,
            store: store.clone(),
            cache: cache.clone(),
            auth: auth.clone(),
            oidc,
            local_login: config.local_login,
            limiter,
            default_quotas: config.default_quotas,
            ca: tls::agent_ca(&config)?.map(Arc::new),
            ingest: services::IngestSettings {
                fold_window: config.event_fold_window,
                discard: config.bench_discard_events,
                agent_certificate_validity: config.agent_cert_validity,
                watch: services::watch::WatchLimits {
                    per_caller: config.limits.watch_max_per_caller,
                    per_tenant: config.limits.watch_max_per_tenant,
                    slow_consumer_grace: config.limits.slow_consumer_grace,
                },
                drain: crate::drain::Drain::new(draining.subscribe()),
                ..Default::default()
            },
            webhooks: services::WebhookSettings {
                sealer: Arc::new(webhook_sealer(&config)?),
                public_url: config.public_url.clone(),
                legacy_agent_key: config.legacy_agent_key.clone(),
                fold_window: config.event_fold_window,
            },
            remediation: config.remediation.clone(),
        },
    );
    // Small messages must not wait for Nagle's algorithm (40 ms with delayed ACKs).
    let incoming =
        tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let grpc = tokio::spawn(
        router.serve_with_incoming_shutdown(incoming, drained(grpc_stopping.subscribe())),
    );

    let gateway = zen_gateway::Gateway::new(
        proto::FILE_DESCRIPTOR_SET,
        tls::gateway_channel(&config, grpc_addr)?,
        zen_gateway::GatewayConfig {
            max_body_bytes: config.gateway.max_body_bytes,
            allowed_origins: config.gateway.allowed_origins.clone(),
            idempotency: Some(Arc::new(CacheIdempotency::new(cache.clone()))),
            authenticator: Some(Arc::new(TokenPrincipal::new(auth.clone()))),
            trusted_proxies: config.gateway.trusted_proxies.clone(),
            websocket: zen_gateway::WebSocketConfig {
                slow_consumer_grace: config.limits.slow_consumer_grace,
                write_timeout: config.limits.stream_write_timeout,
                ..Default::default()
            },
            trace_context: telemetry::tracing_enabled().then(|| {
                Arc::new(telemetry::current_context_headers) as zen_gateway::TraceContextFn
            }),
            ..Default::default()
        },
    )
    .context("building the REST gateway from the contracts")?;
    // The public listener: liveness and readiness first, everything else is the gateway's
    // (it answers unknown paths with a 404 problem). Metrics and deep health live on the
    // admin listener only: the public one faces the internet for webhooks, and metric labels
    // name webhook sources.
    let state = HttpState {
        readiness: readiness.clone(),
        metrics,
        store: store.clone(),
    };
    // The web console: its pages and session endpoints, and in front of the gateway the
    // session layer that turns the console's cookie into the bearer the gateway relays.
    let console = console::Console::new(
        gateway.router(),
        cache.clone(),
        console::ConsoleConfig {
            secure_cookies: config.public_url.starts_with("https://"),
            local_login: config.local_login,
            providers: config
                .oidc_providers
                .iter()
                .map(|p| p.name.clone())
                .collect(),
            session_ttl: config.session_ttl,
            grpc_port: grpc_addr.port(),
        },
    );
    let app = http::public_router(state.clone())
        .merge(console::router(console.clone()))
        .fallback_service(gateway.router().layer(axum::middleware::from_fn_with_state(
            console,
            console::relay,
        )))
        .layer(axum::middleware::from_fn(http_edge::observe));
    let admin = tokio::spawn(
        axum::serve(admin_listener, http::admin_router(state))
            .with_graceful_shutdown(drained(draining.subscribe()))
            .into_future(),
    );
    let send_buffer = config.limits.http_send_buffer;
    let http = tokio::spawn(
        axum::serve(
            http_listener.tap_io(move |tcp| {
                let _ = tcp.set_nodelay(true);
                // Bounds what a client that stops reading holds in the kernel.
                if send_buffer > 0 {
                    let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(send_buffer);
                }
            }),
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(drained(draining.subscribe()))
        .into_future(),
    );
    let health_driver = tokio::spawn(readiness::drive_grpc_health(
        readiness,
        health_reporter.clone(),
        HEALTH_INTERVAL,
    ));
    let janitor = crate::retention::Janitor::new(
        (*store).clone(),
        config.retention.clone(),
        audit_signing_key(&config)?,
    )
    .spawn();
    tracing::info!(%grpc_addr, %http_addr, %admin_addr, database = ?store.kind(), "zen is serving");
    Ok(Running {
        grpc_addr,
        http_addr,
        admin_addr,
        grace: config.shutdown_grace,
        draining,
        grpc_stopping,
        grpc,
        http,
        admin,
        health_driver,
        health_reporter,
        janitor,
        replica_monitor,
        store,
    })
}

impl Running {
    /// Reports NOT_SERVING, stops accepting HTTP, ends the long-lived streams (watches and
    /// agent sessions end with a "reconnect" answer), lets in-flight HTTP requests finish, then
    /// stops the gRPC front once its own in-flight calls are done, all within the grace period;
    /// whatever is left then is cut off. HTTP drains before gRPC because an HTTP request still
    /// in flight makes its call to this replica's gRPC front.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!(grace = ?self.grace, "draining");
        self.health_driver.abort();
        // A run stopped mid-batch loses nothing: each batch is its own transaction, and the
        // lease expires for the next replica.
        if let Some(janitor) = &self.janitor {
            janitor.abort();
        }
        if let Some(monitor) = &self.replica_monitor {
            monitor.abort();
        }
        readiness::set_not_serving(&self.health_reporter).await;
        let _ = self.draining.send(true);
        let grpc_abort = self.grpc.abort_handle();
        let http_abort = self.http.abort_handle();
        // Nothing long-lived runs on the admin listener: it stops with the rest.
        self.admin.abort();
        let grpc_stopping = self.grpc_stopping;
        let drained = tokio::time::timeout(self.grace, async {
            let http = self.http.await;
            let _ = grpc_stopping.send(true);
            let grpc = self.grpc.await;
            grpc?.context("serving gRPC")?;
            http?.context("serving HTTP")?;
            anyhow::Ok(())
        })
        .await;
        match drained {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "calls still in flight after the grace period were cut off");
                grpc_abort.abort();
                http_abort.abort();
            }
        }
        self.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed when this is called (not when
/// the future is first polled), so a signal that arrives while Zen is still starting is not
/// lost to the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {}
                () = wait(interrupt) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
