//! `zen-bench-replicas`: verified, stored webhook deliveries per second with 1, 2 and 3 `zen
//! serve` processes on one PostgreSQL database and Redis, as a deployment scales out.
//!
//! For each replica count it starts that many `zen serve` processes (the `zen` binary next to
//! this one; the first creates the deployment's PKI and keys, the others share them, as a Helm
//! release's pods do), signs a platform admin in, creates a tenant and a `zen-hmac` source,
//! then for `--seconds` posts unique signed deliveries from `--concurrency` keep-alive
//! connections spread evenly over the replicas. The no-op ceiling is the same load on `GET
//! /health`. Afterwards it counts the tenant's events in the database: the count must equal
//! the 202s, or the run fails. See docs/RELIABILITY.md ("Scaling out").
//!
//! ```sh
//! cargo build --release --bin zen --bin zen-bench-replicas
//! target/release/zen-bench-replicas --database-url postgres://postgres@127.0.0.1/zen_bench \
//!     --redis-url redis://127.0.0.1:6379 --replicas 1,2,3 --seconds 10
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hmac::{KeyInit, Mac};
use serde_json::{json, Value};
use zen::proto::zen::auth::v1 as auth;

#[derive(Parser, Debug)]
#[command(name = "zen-bench-replicas")]
struct Args {
    /// PostgreSQL database the replicas share (its schema is migrated by the first replica).
    #[arg(long)]
    database_url: String,
    /// Redis the replicas share.
    #[arg(long)]
    redis_url: String,
    /// Replica counts to measure, in turn.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 2, 3])]
    replicas: Vec<usize>,
    /// Measured seconds per replica count (and for its ceiling).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Keep-alive connections, spread over the replicas.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The `zen` binary (default: the one next to this binary).
    #[arg(long)]
    zen: Option<PathBuf>,
}

const PASSWORD: &str = "bench password for the replicas";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// One `zen serve` child, killed however the benchmark ends.
struct Replica {
    child: Child,
    http: SocketAddr,
    grpc: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts `zen serve` on `data_dir`; `shared` names the first replica's data dir (its PKI,
/// JWT keys and webhook secret keys), for the others.
async fn start_replica(
    zen: &Path,
    args: &Args,
    data_dir: &Path,
    shared: Option<&Path>,
) -> anyhow::Result<Replica> {
    let (http, grpc, admin) = (free_addr()?, free_addr()?, free_addr()?);
    std::fs::create_dir_all(data_dir)?;
    let mut command = Command::new(zen);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--http-addr", &http.to_string()])
        .args(["--grpc-addr", &grpc.to_string()])
        .args(["--admin-addr", &admin.to_string()])
        .args(["--database-url", &args.database_url])
        .args(["--redis-url", &args.redis_url])
        .args(["--local-login", "true"])
        // One issuer for the deployment: a token from one replica is good on the others.
        .args(["--public-url", "http://zen.bench"])
        // Deliveries are measured, not the rate limits (docs/LIMITS.md).
        .env("ZEN_RATE_LIMIT_ANONYMOUS_RPS", "1000000")
        .env("ZEN_RATE_LIMIT_UNVERIFIED_WEBHOOKS_RPS", "1000000")
        .env("ZEN_RATE_LIMIT_USER_RPS", "1000000")
        .env("ZEN_DEFAULT_TENANT_REQUESTS_PER_SECOND", "0")
        .env("ZEN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data_dir.join("zen.log"))?);
    if let Some(first) = shared {
        let pki = first.join("pki");
        let keys = first.join("keys");
        for (flag, file) in [
            ("--tls-ca-cert", pki.join("ca.crt")),
            ("--tls-ca-key", pki.join("ca.key")),
            ("--tls-server-cert", pki.join("server.crt")),
            ("--tls-server-key", pki.join("server.key")),
            ("--gateway-cert", pki.join("gateway.crt")),
            ("--gateway-key", pki.join("gateway.key")),
            ("--jwt-keys-dir", keys.join("jwt")),
        ] {
            command.arg(flag).arg(file);
        }
        let sealing = std::fs::read_to_string(keys.join("webhook-secret-keys"))
            .context("reading the first replica's webhook secret keys")?;
        command.args(["--webhook-secret-keys", sealing.trim()]);
    }
    let mut child = command.spawn().context("starting zen serve")?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("http://{http}/health")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "zen serve exited with {status}: {}",
                std::fs::read_to_string(data_dir.join("zen.log")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("zen serve did not become healthy within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Replica { child, http, grpc })
}

struct Figures {
    successes: usize,
    others: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.successes as f64 / self.seconds
    }
}

/// Closed-loop load for `seconds` from `concurrency` connections, connection `i` on
/// `bases[i % n]`; `make(client, base, n)` builds request number `n`.
async fn drive<F>(bases: &[String], args: &Args, success: u16, make: F) -> anyhow::Result<Figures>
where
    F: Fn(&reqwest::Client, &str, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut workers = vec![];
    for i in 0..args.concurrency {
        let base = bases[i % bases.len()].clone();
        let (make, next) = (make.clone(), next.clone());
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(30))
            .build()?;
        workers.push(tokio::spawn(async move {
            let (mut ok, mut other, mut latencies) = (0usize, 0usize, vec![]);
            while Instant::now() < until {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let sent = Instant::now();
                match make(&client, &base, n).send().await {
                    Ok(r) if r.status().as_u16() == success => {
                        let _ = r.bytes().await;
                        ok += 1;
                        latencies.push(sent.elapsed());
                    }
                    Ok(r) => {
                        let _ = r.bytes().await;
                        other += 1;
                    }
                    Err(_) => other += 1,
                }
            }
            (ok, other, latencies)
        }));
    }
    let (mut successes, mut others, mut latencies) = (0, 0, vec![]);
    for w in workers {
        let (ok, other, l) = w.await?;
        successes += ok;
        others += other;
        latencies.extend(l);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(Figures {
        successes,
        others,
        seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

async fn ok_json(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// Counts the tenant's stored events (as the database's owner: no row-level security).
async fn stored_events(database_url: &str, tenant_id: &str) -> anyhow::Result<i64> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    let tenant: uuid::Uuid = tenant_id.parse()?;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM events WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&mut conn)
        .await?;
    Ok(n)
}

async fn measure(zen: &Path, args: &Args, replicas: usize) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let first_dir = root.path().join("replica-0");
    let mut running = vec![start_replica(zen, args, &first_dir, None).await?];
    for k in 1..replicas {
        let dir = root.path().join(format!("replica-{k}"));
        running.push(start_replica(zen, args, &dir, Some(&first_dir)).await?);
    }
    let bases: Vec<String> = running
        .iter()
        .map(|r| format!("http://{}", r.http))
        .collect();

    let username = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut request = tonic::Request::new(auth::CreateLocalUserRequest {
        username: username.clone(),
        email: format!("{username}@example.test"),
        password: PASSWORD.into(),
        platform_admin: true,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", uuid::Uuid::new_v4().to_string().parse()?);
    let admin = zen::bench::mtls_channel(running[0].grpc, &first_dir.join("pki"), "admin").await?;
    auth::auth_service_client::AuthServiceClient::new(admin)
        .create_local_user(request)
        .await
        .context("creating the bench user")?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let login = ok_json(
        http.post(format!("{}/auth/local/login", bases[0]))
            .json(&json!({ "username": username, "password": PASSWORD }))
            .send()
            .await?,
    )
    .await?;
    let token = login["token"]["accessToken"]
        .as_str()
        .context("no access token")?
        .to_owned();
    let tenant = ok_json(
        http.post(format!("{}/v1/tenants", bases[0]))
            .bearer_auth(&token)
            .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
            .json(&json!({ "name": format!("replicas-{replicas}-{}", uuid::Uuid::new_v4().simple()),
                           "quotas": { "requestsPerSecond": 1000000, "maxEventsPerDay": 1000000000 } }))
            .send()
            .await?,
    )
    .await?;
    let tenant_id = tenant["tenant"]["tenantId"]
        .as_str()
        .context("no tenant id")?
        .to_owned();
    let source = ok_json(
        http.post(format!(
            "{}/v1/tenants/{tenant_id}/webhookSources",
            bases[0]
        ))
        .bearer_auth(&token)
        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
        .json(
            &json!({ "name": "load", "enabled": true, "rateLimitPerSecond": 1000000,
                           "verification": { "scheme": "WEBHOOK_SCHEME_ZEN_HMAC" } }),
        )
        .send()
        .await?,
    )
    .await?;
    let secret = source["secret"].as_str().context("no secret")?.to_owned();
    let source_id = source["webhookSource"]["sourceId"]
        .as_str()
        .context("no source id")?
        .to_owned();
    // Let every replica's snapshot see the new source before the load.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ceiling = drive(&bases, args, 200, |client, base, _| {
        client.get(format!("{base}/health"))
    })
    .await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let stored = drive(&bases, args, 202, move |client, base, n| {
        let nonce = format!("{run}-{n}");
        let body = json!({ "alert": nonce }).to_string();
        let ts = chrono::Utc::now().timestamp();
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(format!("{ts}.{nonce}.").as_bytes());
        mac.update(body.as_bytes());
        client
            .post(format!("{base}/webhooks/{source_id}"))
            .header("content-type", "application/json")
            .header("x-timestamp", ts.to_string())
            .header("x-nonce", &nonce)
            .header("x-signature", hex::encode(mac.finalize().into_bytes()))
            .body(body)
    })
    .await?;
    drop(running);
    let counted = stored_events(&args.database_url, &tenant_id).await?;
    println!(
        "{replicas:>8} {:>14.0} {:>12.0} {:>10.1} % {:>9.2} {:>9.2} {:>8} {:>9}",
        ceiling.rate(),
        stored.rate(),
        100.0 * stored.rate() / ceiling.rate(),
        stored.p50_ms,
        stored.p99_ms,
        stored.others,
        counted
    );
    if counted != stored.successes as i64 {
        bail!(
            "{} deliveries answered 202 but {counted} events are stored",
            stored.successes
        );
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let zen = match &args.zen {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark's directory")?
            .join("zen"),
    };
    if !zen.exists() {
        bail!(
            "{} not found: build it (cargo build --release --bin zen) or pass --zen",
            zen.display()
        );
    }
    println!(
        "zen-bench-replicas: {} s per run, {} connections, PostgreSQL + Redis, {} cores",
        args.seconds,
        args.concurrency,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:>8} {:>14} {:>12} {:>12} {:>9} {:>9} {:>8} {:>9}",
        "replicas",
        "ceiling req/s",
        "stored/s",
        "of ceiling",
        "p50 ms",
        "p99 ms",
        "other",
        "counted"
    );
    for &n in &args.replicas {
        if n == 0 {
            bail!("--replicas: at least 1");
        }
        measure(&zen, &args, n).await?;
    }
    Ok(())
}
