//! `zen-bench-gateway`: what the REST gateway adds to a unary call.
//!
//! Starts one Zen in this process (fresh data dir under the system temp dir, loopback ports,
//! local login on), signs a platform admin in and creates a tenant, then drives the same RPCs
//! at a fixed concurrency two ways against that one server:
//!
//! * **direct**: gRPC over mutual TLS with the gateway's own service certificate, the way the
//!   gateway itself calls (one HTTP/2 connection, multiplexed), bearer token in `authorization`;
//! * **gateway**: HTTP/1.1 + JSON to the gateway (keep-alive pool), which transcodes and makes
//!   that same gRPC call.
//!
//! Scenarios: `grpc.health.v1.Health/Check` (direct only: outside the domain, so neither
//! authorized nor audited — the floor of an mTLS round trip), `AuthService.GetJwks` (public;
//! one audit record per call on the platform chain) and `TenancyService.GetTenant` as a signed-in
//! person (token check, session lookup, user and role reads, one audit record on the tenant's
//! chain). Scenarios run in interleaved rounds; it prints requests/s, p50 and p99 per scenario
//! and concurrency, then what the gateway adds. See docs/BENCHMARKS.md ("Gateway overhead").
//!
//! ```sh
//! cargo build --release --bin zen-bench-gateway
//! target/release/zen-bench-gateway --concurrency 1,16 --seconds 10 --rounds 3
//! target/release/zen-bench-gateway --tmp-dir /dev/shm      # SQLite without the disk's fsync
//! target/release/zen-bench-gateway --database-url postgres://… --redis-url redis://…
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;
use zen::config::{Config, GlobalArgs, LogFormat, ServeArgs};
use zen::proto::zen::auth::v1 as auth;
use zen::proto::zen::tenancy::v1 as tenancy;

/// Measures a unary RPC called directly over mTLS gRPC against the same RPC through the REST
/// gateway, on one in-process Zen.
#[derive(Parser, Debug)]
#[command(name = "zen-bench-gateway")]
struct Args {
    /// Concurrent callers (comma-separated for several runs).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 16])]
    concurrency: Vec<usize>,
    /// Measured seconds per scenario and concurrency.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured seconds before each measurement.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Rounds over all scenarios per concurrency; a scenario's figures merge its rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Database of the server under test (default: SQLite in the temporary data dir).
    #[arg(long)]
    database_url: Option<String>,
    /// Where the temporary data dir (SQLite database, PKI, keys) is made (default: the system
    /// temp dir). `/dev/shm` takes the disk's fsync out of every audited call.
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// Shared cache of the server under test (default: in-process memory cache).
    #[arg(long)]
    redis_url: Option<String>,
    /// Runtime worker threads, shared by the server and the load (default: one per core).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Scenarios to run: health, jwks, tenant (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["health".to_owned(), "jwks".to_owned(), "tenant".to_owned()])]
    scenarios: Vec<String>,
}

const PASSWORD: &str = "bench password for the gateway";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = builder.build().context("starting the runtime")?;
    runtime.block_on(run(args))
}

/// What a scenario calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    GrpcHealth,
    GrpcJwks,
    HttpJwks,
    GrpcTenant,
    HttpTenant,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::GrpcHealth => "direct  Health/Check (no authz, no audit)",
            Target::GrpcJwks => "direct  AuthService.GetJwks",
            Target::HttpJwks => "gateway GET /.well-known/jwks.json",
            Target::GrpcTenant => "direct  TenancyService.GetTenant (bearer)",
            Target::HttpTenant => "gateway GET /v1/tenants/{id} (bearer)",
        }
    }
}

/// Everything a caller needs; cheap to clone (channels and pools are shared).
#[derive(Clone)]
struct Clients {
    grpc: Channel,
    http: reqwest::Client,
    jwks_url: String,
    tenant_url: String,
    tenant_id: String,
    bearer: MetadataValue<tonic::metadata::Ascii>,
    /// GetTenant calls answered with success (warm-up included): each must have its decision
    /// in the tenant's audit chain afterwards.
    tenant_reads: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Clients {
    async fn call(&self, target: Target) -> anyhow::Result<()> {
        match target {
            Target::GrpcHealth => {
                tonic_health::pb::health_client::HealthClient::new(self.grpc.clone())
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await?;
            }
            Target::GrpcJwks => {
                let keys = auth::auth_service_client::AuthServiceClient::new(self.grpc.clone())
                    .get_jwks(with_request_id(auth::GetJwksRequest {}))
                    .await?
                    .into_inner()
                    .keys;
                if keys.is_empty() {
                    bail!("no keys");
                }
            }
            Target::GrpcTenant => {
                let mut request = with_request_id(tenancy::GetTenantRequest {
                    tenant_id: self.tenant_id.clone(),
                });
                request
                    .metadata_mut()
                    .insert("authorization", self.bearer.clone());
                tenancy::tenancy_service_client::TenancyServiceClient::new(self.grpc.clone())
                    .get_tenant(request)
                    .await?;
            }
            Target::HttpJwks => {
                let response = self.http.get(&self.jwks_url).send().await?;
                check_http(response).await?;
            }
            Target::HttpTenant => {
                let response = self
                    .http
                    .get(&self.tenant_url)
                    .header(
                        reqwest::header::AUTHORIZATION,
                        self.bearer.to_str().unwrap_or_default(),
                    )
                    .send()
                    .await?;
                check_http(response).await?;
            }
        }
        if matches!(target, Target::GrpcTenant | Target::HttpTenant) {
            self.tenant_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The allowed GetTenant decisions in `tenant_id`'s audit chain, read after the run through
/// the store, with the chain verified.
async fn recorded_reads(database_url: &str, tenant_id: &str) -> anyhow::Result<u64> {
    use zen_store::{AuditFilter, AuditOutcome, PageRequest, Scope, Store, MAX_PAGE_SIZE};
    let tenant = uuid::Uuid::parse_str(tenant_id)?;
    let store = Store::connect(database_url).await?;
    let mut tx = store.begin_read(&Scope::tenant(tenant, None)).await?;
    let verification = tx.audit().verify_chain(tenant).await?;
    if let Some(problem) = verification.problem {
        bail!("the tenant's audit chain does not verify: {problem:?}");
    }
    let filter = AuditFilter {
        action: Some("authz.decide".into()),
        resource_type: Some("method".into()),
        resource_id: Some("/zen.tenancy.v1.TenancyService/GetTenant".into()),
        outcome: Some(AuditOutcome::Success),
        ..Default::default()
    };
    let mut page = PageRequest::first(MAX_PAGE_SIZE);
    let mut count = 0;
    loop {
        let found = tx.audit().list(&filter, &page).await?;
        count += found.items.len() as u64;
        match found.next_page_token {
            Some(token) => page = PageRequest::next(MAX_PAGE_SIZE, token),
            None => break,
        }
    }
    tx.commit().await?;
    store.close().await;
    Ok(count)
}

/// A request carrying an `x-request-id`, as the gateway sends on every call.
fn with_request_id<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(id) = uuid::Uuid::new_v4().to_string().parse() {
        request.metadata_mut().insert("x-request-id", id);
    }
    request
}

async fn check_http(response: reqwest::Response) -> anyhow::Result<()> {
    let status = response.status();
    // Read the whole body: its transfer is part of the call.
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// One measured run.
struct Measurement {
    target: Target,
    concurrency: usize,
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Measurement {
    /// Adds another run of the same scenario (latencies are sorted again before use).
    fn absorb(&mut self, other: Measurement) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies.len()) - 1;
        self.latencies[index].as_secs_f64() * 1000.0
    }
}

/// Runs `concurrency` callers of `target` for `warmup` (discarded) and then `duration`.
async fn measure(
    clients: &Clients,
    target: Target,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Measurement {
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(64 * 1024);
            let mut errors = 0u64;
            let mut first_error = None;
            loop {
                let begin = Instant::now();
                if begin >= stop_at {
                    break;
                }
                let result = clients.call(target).await;
                let end = Instant::now();
                if begin < measure_from || end > stop_at {
                    continue;
                }
                match result {
                    Ok(()) => latencies.push(end - begin),
                    Err(error) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{error:#}"));
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut measurement = Measurement {
        target,
        concurrency,
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
        elapsed: duration,
    };
    for task in tasks {
        let (latencies, errors, first_error) = task.await.expect("a caller task panicked");
        measurement.latencies.extend(latencies);
        measurement.errors += errors;
        if measurement.first_error.is_none() {
            measurement.first_error = first_error;
        }
    }
    measurement.latencies.sort_unstable();
    measurement
}

async fn run(args: Args) -> anyhow::Result<()> {
    let parent = args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let data_dir = parent.join(format!("zen-bench-{}", uuid::Uuid::new_v4()));
    let result = bench(&args, &data_dir).await;
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

async fn bench(args: &Args, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let global = GlobalArgs {
        data_dir: Some(data_dir.to_owned()),
        database_url: args.database_url.clone(),
        redis_url: args.redis_url.clone(),
        log_format: Some(LogFormat::Json),
        ..Default::default()
    };
    let serve = ServeArgs {
        grpc_addr: Some("127.0.0.1:0".parse()?),
        http_addr: Some("127.0.0.1:0".parse()?),
        admin_addr: Some("127.0.0.1:0".parse()?),
        local_login: Some(true),
        shutdown_grace_seconds: Some(5),
        // The gateway's overhead is measured, not the rate limits (docs/LIMITS.md).
        rate_limit_anonymous_rps: Some(1_000_000),
        rate_limit_user_rps: Some(1_000_000),
        default_tenant_requests_per_second: Some(0),
        ..Default::default()
    };
    let config = Config::resolve(&global, &serve)?;
    zen::telemetry::init_logging(config.log_format);
    let database = zen::config::redact_url(&config.database_url);
    let cache = if config.redis_url.is_some() {
        "redis"
    } else {
        "memory"
    };
    let database_url = config.database_url.clone();
    let running = zen::server::start(config).await?;
    let pki = data_dir.join("pki");
    let http_base = format!("http://{}", running.http_addr);

    let admin = connect(running.grpc_addr, &pki, "admin").await?;
    let request = with_request_id(auth::CreateLocalUserRequest {
        username: "bench".into(),
        email: "bench@example.test".into(),
        password: PASSWORD.into(),
        platform_admin: true,
        ..Default::default()
    });
    auth::auth_service_client::AuthServiceClient::new(admin)
        .create_local_user(request)
        .await
        .context("creating the bench user")?;

    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let login: serde_json::Value = http
        .post(format!("{http_base}/auth/local/login"))
        .json(&serde_json::json!({ "username": "bench", "password": PASSWORD }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["token"]["accessToken"]
        .as_str()
        .context("no access token in the login answer")?
        .to_owned();
    let tenant: serde_json::Value = http
        .post(format!("{http_base}/v1/tenants"))
        .bearer_auth(&token)
        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
        .json(&serde_json::json!({ "name": "bench" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let tenant_id = tenant["tenant"]["tenantId"]
        .as_str()
        .context("no tenant id")?
        .to_owned();

    let clients = Clients {
        // The gateway's own identity, issued at start: the direct calls are the gateway's calls.
        grpc: connect(running.grpc_addr, &pki, "gateway").await?,
        http,
        jwks_url: format!("{http_base}/.well-known/jwks.json"),
        tenant_url: format!("{http_base}/v1/tenants/{tenant_id}"),
        tenant_id,
        bearer: format!("Bearer {token}").parse()?,
        tenant_reads: Default::default(),
    };

    let mut targets = Vec::new();
    for scenario in &args.scenarios {
        match scenario.as_str() {
            "health" => targets.push(Target::GrpcHealth),
            "jwks" => targets.extend([Target::GrpcJwks, Target::HttpJwks]),
            "tenant" => targets.extend([Target::GrpcTenant, Target::HttpTenant]),
            other => bail!("unknown scenario `{other}` (health, jwks, tenant)"),
        }
    }
    for target in &targets {
        clients
            .call(*target)
            .await
            .with_context(|| format!("a first call of {}", target.label()))?;
    }

    println!(
        "zen-bench-gateway: {} cores, {} worker threads, database {database}, cache {cache}, {} rounds of {} s per scenario after {} s warm-up",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.worker_threads
            .map_or_else(|| "default".to_owned(), |n| n.to_string()),
        args.rounds.max(1),
        args.seconds,
        args.warmup_seconds,
    );
    println!(
        "{:<44} {:>5} {:>9} {:>9} {:>8} {:>8} {:>7}",
        "scenario", "conc", "requests", "req/s", "p50 ms", "p99 ms", "errors"
    );
    let mut results = Vec::new();
    for &concurrency in &args.concurrency {
        // Rounds interleave the scenarios, so drift (a growing audit log, other load on the
        // machine) is shared between them instead of landing on whichever ran last.
        let mut merged: Vec<Measurement> = Vec::new();
        for _ in 0..args.rounds.max(1) {
            for &target in &targets {
                let m = measure(
                    &clients,
                    target,
                    concurrency.max(1),
                    Duration::from_secs(args.warmup_seconds),
                    Duration::from_secs(args.seconds.max(1)),
                )
                .await;
                match merged.iter_mut().find(|x| x.target == target) {
                    Some(x) => x.absorb(m),
                    None => merged.push(m),
                }
            }
        }
        for mut m in merged {
            m.latencies.sort_unstable();
            println!(
                "{:<44} {:>5} {:>9} {:>9.0} {:>8.3} {:>8.3} {:>7}",
                m.target.label(),
                m.concurrency,
                m.latencies.len(),
                m.rps(),
                m.percentile_ms(50.0),
                m.percentile_ms(99.0),
                m.errors
            );
            if let Some(error) = &m.first_error {
                println!("    first error: {error}");
            }
            results.push(m);
        }
    }

    println!();
    println!("gateway overhead (gateway minus direct, same RPC, same concurrency):");
    let mut all_met = true;
    for (direct, via) in [
        (Target::GrpcJwks, Target::HttpJwks),
        (Target::GrpcTenant, Target::HttpTenant),
    ] {
        for &concurrency in &args.concurrency {
            let find = |t: Target| {
                results
                    .iter()
                    .find(|m| m.target == t && m.concurrency == concurrency.max(1))
            };
            let (Some(d), Some(g)) = (find(direct), find(via)) else {
                continue;
            };
            let p50 = g.percentile_ms(50.0) - d.percentile_ms(50.0);
            let p99 = g.percentile_ms(99.0) - d.percentile_ms(99.0);
            let ratio = g.rps() / d.rps();
            let met = p50 < 0.5 && ratio >= 0.6;
            all_met &= met;
            println!(
                "  {:<28} c={:<3} p50 {:+.3} ms, p99 {:+.3} ms, throughput {:.0}% of direct ({:.0} vs {:.0} req/s) -> {}",
                direct.label().trim_start_matches("direct").trim(),
                concurrency,
                p50,
                p99,
                ratio * 100.0,
                g.rps(),
                d.rps(),
                if met { "goal met" } else { "goal NOT met" }
            );
        }
    }
    if let Some(health) = results.iter().find(|m| m.target == Target::GrpcHealth) {
        if let Some(jwks) = results
            .iter()
            .find(|m| m.target == Target::GrpcJwks && m.concurrency == health.concurrency)
        {
            println!(
                "  authorization + audit on the direct path (GetJwks minus Health/Check, c={}): p50 {:+.3} ms, throughput {:.0}% of Health/Check",
                health.concurrency,
                jwks.percentile_ms(50.0) - health.percentile_ms(50.0),
                jwks.rps() / health.rps() * 100.0
            );
        }
    }
    println!(
        "goal (gateway adds < 0.5 ms at p50 and keeps >= 60% of direct throughput): {}",
        if all_met { "met" } else { "NOT met" }
    );
    let failed: u64 = results.iter().map(|m| m.errors).sum();
    running.shutdown().await?;
    // Every authorized read left its decision in the audit log (they are group-committed
    // before the answer), and the chain still verifies.
    let reads = clients
        .tenant_reads
        .load(std::sync::atomic::Ordering::Relaxed);
    if reads > 0 {
        let recorded = recorded_reads(&database_url, &clients.tenant_id).await?;
        println!(
            "audit: {recorded} allowed GetTenant decisions recorded for {reads} successful calls; the tenant's chain verifies"
        );
        if recorded < reads {
            bail!(
                "{} GetTenant calls have no decision in the audit log",
                reads - recorded
            );
        }
    }
    if failed > 0 {
        bail!("{failed} calls failed");
    }
    Ok(())
}

/// An mTLS channel to the gRPC front with the identity `<pki>/<name>.crt|.key`.
async fn connect(
    addr: std::net::SocketAddr,
    pki: &std::path::Path,
    name: &str,
) -> anyhow::Result<Channel> {
    zen::bench::mtls_channel(addr, pki, name).await
}
