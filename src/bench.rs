//! `zen bench ingest`: durable ingestion throughput and ack latency, in one run.
//!
//! For each database it starts a Zen in-process (real mTLS, real sockets), enrolls N agents
//! with certificates from the run's CA, and has them stream batches as fast as the server acks
//! (each agent keeps the server's in-flight window full). It then measures the same load
//! against a no-op sink (acks without storing: the framework's ceiling), the database's own
//! ceiling (the same batches through the store, no gRPC), and latency at half the peak rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use uuid::Uuid;
use zen_security::{PeerIdentity, PkiFiles};
use zen_store::{NewCluster, NewEvent, NewTenant, Scope, Store};

use crate::config::{Config, GlobalArgs, ServeArgs};
use crate::proto::zen::common::v1 as common;
use crate::proto::zen::ingest::v1 as pb;
use crate::server;

/// Load shape.
#[derive(Clone, Debug)]
pub struct IngestLoad {
    pub agents: usize,
    pub events_per_agent: usize,
    pub batch: usize,
}

/// What one measurement found.
#[derive(Debug)]
pub struct Figures {
    pub label: String,
    pub events: usize,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Figures {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<44} {:>9} events {:>7.2} s {:>9.0} events/s   ack p50 {:>7.2} ms  p99 {:>7.2} ms",
            self.label,
            self.events,
            self.seconds,
            self.rate(),
            self.p50_ms,
            self.p99_ms
        )
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn events(agent: usize, batch: usize, size: usize, run: Uuid) -> Vec<pb::AgentEvent> {
    (0..size)
        .map(|i| pb::AgentEvent {
            agent_event_id: format!("{run}-{agent}-{batch}-{i}"),
            source: pb::EventSource::Trivy as i32,
            severity: common::Severity::High as i32,
            r#type: "vulnerability".into(),
            title: format!("CVE-2026-{:05} in libfoo", (batch * size + i) % 100_000),
            resource: Some(common::KubernetesResource {
                kind: "Deployment".into(),
                namespace: "shop".into(),
                name: format!("svc-{}", i % 50),
                ..Default::default()
            }),
            // Unique fingerprints: every event is a new row (folding would flatter the figure).
            fingerprint: format!("{run}-{agent}-{batch}-{i}"),
            ..Default::default()
        })
        .collect()
}

/// Starts a Zen on `database_url` with the given ingest tuning; returns it and the tenant and
/// cluster ids of `agents` clusters.
pub(crate) async fn start_zen(
    data_dir: &std::path::Path,
    database_url: &str,
    redis_url: Option<&str>,
    discard: bool,
    agents: usize,
) -> anyhow::Result<(server::Running, Config, Uuid, Vec<Uuid>)> {
    let global = GlobalArgs {
        data_dir: Some(data_dir.to_owned()),
        database_url: Some(database_url.to_owned()),
        redis_url: redis_url.map(str::to_owned),
        ..Default::default()
    };
    let serve = ServeArgs {
        grpc_addr: Some("127.0.0.1:0".parse()?),
        http_addr: Some("127.0.0.1:0".parse()?),
        admin_addr: Some("127.0.0.1:0".parse()?),
        bench_discard_events: Some(discard),
        // The slow-consumer drill signs its watchers in.
        local_login: Some(true),
        // Benchmarks measure the write and read paths, not the rate limits (docs/LIMITS.md).
        rate_limit_anonymous_rps: Some(1_000_000),
        rate_limit_unverified_webhooks_rps: Some(1_000_000),
        rate_limit_user_rps: Some(1_000_000),
        rate_limit_cluster_rps: Some(1_000_000),
        ..Default::default()
    };
    let config = Config::resolve(&global, &serve)?;
    let running = server::start(config.clone()).await?;
    let store = Store::connect(database_url).await?;
    let mut tx = store.begin(&Scope::platform_admin(None)).await?;
    let tenant = tx
        .tenants()
        .create(
            NewTenant {
                name: format!("bench-{}", &Uuid::new_v4().simple().to_string()[..8]),
                display_name: String::new(),
                quotas: zen_store::Quotas {
                    max_clusters: (agents as i32).max(10),
                    // Unlimited: the benchmark's load is the point.
                    requests_per_second: 0,
                    max_events_per_day: 0,
                },
            },
            None,
        )
        .await?;
    tx.commit().await?;
    let mut clusters = Vec::new();
    for i in 0..agents {
        let mut tx = store.begin(&Scope::tenant(tenant.id, None)).await?;
        let cluster = tx
            .clusters()
            .create(NewCluster {
                name: format!("cluster-{i}"),
                ..Default::default()
            })
            .await?;
        tx.commit().await?;
        clusters.push(cluster.id);
    }
    store.close().await;
    Ok((running, config, tenant.id, clusters))
}

/// One agent streaming `events_per_agent` events, keeping the server's window full (or pacing
/// batches at `interval`); returns the ack latencies in ms.
async fn agent(
    channel: tonic::transport::Channel,
    index: usize,
    load: IngestLoad,
    interval: Option<Duration>,
    run: Uuid,
) -> anyhow::Result<Vec<f64>> {
    use pb::connect_agent_request::Payload;
    use pb::connect_agent_response::Payload as Reply;
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::ConnectAgentRequest {
        payload: Some(Payload::Hello(pb::AgentHello {
            agent_version: "bench".into(),
            ..Default::default()
        })),
    })
    .await?;
    let mut replies = pb::ingest_service_client::IngestServiceClient::new(channel)
        .connect_agent(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let window = match replies.next().await {
        Some(Ok(pb::ConnectAgentResponse {
            payload: Some(Reply::Hello(hello)),
        })) => hello.max_in_flight_batches.max(1) as usize,
        other => anyhow::bail!("no server hello: {other:?}"),
    };
    let batches = load.events_per_agent.div_ceil(load.batch);
    let mut sent_at = std::collections::HashMap::new();
    let mut latencies = Vec::with_capacity(batches);
    let mut next = 0;
    let mut pacer = interval.map(tokio::time::interval);
    while latencies.len() < batches {
        let can_send = next < batches && sent_at.len() < window;
        // Sending (paced, or as fast as the window allows) and reading acks go on together,
        // so an ack's latency is the server's, not time spent waiting to be read.
        let paced = async {
            if let Some(pacer) = pacer.as_mut() {
                pacer.tick().await;
            }
        };
        tokio::select! {
            () = paced, if can_send => {
                let id = format!("{index}-{next}");
                sent_at.insert(id.clone(), Instant::now());
                tx.send(pb::ConnectAgentRequest {
                    payload: Some(Payload::EventBatch(pb::EventBatch {
                        batch_id: id,
                        events: events(index, next, load.batch, run),
                    })),
                })
                .await?;
                next += 1;
            }
            reply = replies.next() => match reply {
                Some(Ok(pb::ConnectAgentResponse { payload: Some(Reply::BatchAck(ack)) })) => {
                    if ack.retry_after.is_some() {
                        anyhow::bail!("the server could not store a batch");
                    }
                    if let Some(at) = sent_at.remove(&ack.batch_id) {
                        latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                Some(Ok(_)) => {}
                other => anyhow::bail!("stream ended: {other:?}"),
            },
        }
    }
    Ok(latencies)
}

/// N agents against a running Zen.
async fn stream_load(
    running: &server::Running,
    config: &Config,
    tenant: Uuid,
    clusters: &[Uuid],
    load: &IngestLoad,
    interval: Option<Duration>,
    label: String,
) -> anyhow::Result<Figures> {
    let files = PkiFiles::new(config.pki_dir());
    let ca = files.load_ca()?;
    let run = Uuid::new_v4();
    let mut channels = Vec::new();
    for (i, cluster) in clusters.iter().enumerate() {
        let identity = PeerIdentity::Agent {
            tenant_id: tenant,
            cluster_id: *cluster,
        };
        let name = format!("bench-agent-{i}");
        files.write_identity(
            &name,
            &ca.issue_client(&identity, Duration::from_secs(3600))?,
        )?;
        let read = |path: std::path::PathBuf| std::fs::read(path);
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(
                files.ca_cert(),
            )?))
            .identity(tonic::transport::Identity::from_pem(
                read(files.cert(&name))?,
                read(files.key(&name))?,
            ))
            .domain_name("localhost");
        channels.push(
            tonic::transport::Channel::from_shared(format!("https://{}", running.grpc_addr))?
                .tls_config(tls)?
                .connect()
                .await?,
        );
    }
    let started = Instant::now();
    let tasks: Vec<_> = channels
        .into_iter()
        .enumerate()
        .map(|(i, channel)| tokio::spawn(agent(channel, i, load.clone(), interval, run)))
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(Figures {
        label,
        events: load.agents * load.events_per_agent,
        seconds,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    })
}

/// The same batches straight into the store, N writers, no gRPC: the database's ceiling.
async fn store_ceiling(
    database_url: &str,
    tenant: Uuid,
    clusters: &[Uuid],
    load: &IngestLoad,
    label: String,
) -> anyhow::Result<Figures> {
    let store = Arc::new(Store::connect(database_url).await?);
    let run = Uuid::new_v4();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, cluster) in clusters.iter().copied().enumerate() {
        let store = store.clone();
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for b in 0..load.events_per_agent.div_ceil(load.batch) {
                let batch: Vec<NewEvent> = events(i, b, load.batch, run)
                    .into_iter()
                    .map(|e| NewEvent {
                        source_event_id: e.agent_event_id,
                        source: "trivy".into(),
                        source_name: None,
                        category: "security".into(),
                        severity: 4,
                        event_type: e.r#type,
                        title: e.title,
                        resource: serde_json::json!({"kind": "Deployment"}),
                        details: serde_json::json!({}),
                        fingerprint: e.fingerprint,
                        detected_at: Utc::now(),
                    })
                    .collect();
                let at = Instant::now();
                let mut tx = store.begin(&Scope::tenant(tenant, None)).await?;
                tx.events()
                    .ingest(Some(cluster), &batch, Duration::from_secs(3600), Utc::now())
                    .await?;
                tx.commit().await?;
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    store.close().await;
    Ok(Figures {
        label,
        events: load.agents * load.events_per_agent,
        seconds,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    })
}

/// `zen bench ingest`: every measurement for one database, printed as it completes.
pub async fn ingest(database_url: &str, load: IngestLoad) -> anyhow::Result<Vec<Figures>> {
    let name = if database_url.starts_with("sqlite") {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    let mut all = Vec::new();
    let mut report = |figures: Figures| {
        println!("{figures}");
        all.push(figures);
    };

    let dir = tempfile::tempdir()?;
    let (running, config, tenant, clusters) =
        start_zen(dir.path(), database_url, None, false, load.agents).await?;
    let peak = stream_load(
        &running,
        &config,
        tenant,
        &clusters,
        &load,
        None,
        format!("{name}: {} agents, durable acks", load.agents),
    )
    .await
    .context("durable run")?;
    let half_rate = peak.rate() / 2.0;
    report(peak);
    // Half the peak: each agent paces its batches so all together send half the events/s.
    let per_agent_batches_per_second = half_rate / load.agents as f64 / load.batch as f64;
    let interval = Duration::from_secs_f64(1.0 / per_agent_batches_per_second.max(0.1));
    report(
        stream_load(
            &running,
            &config,
            tenant,
            &clusters,
            &load,
            Some(interval),
            format!("{name}: at half the peak rate ({half_rate:.0}/s)"),
        )
        .await
        .context("half-rate run")?,
    );
    running.shutdown().await?;
    report(
        store_ceiling(
            database_url,
            tenant,
            &clusters,
            &load,
            format!("{name}: store batches directly (DB ceiling)"),
        )
        .await
        .context("store ceiling")?,
    );

    let dir = tempfile::tempdir()?;
    let (running, config, tenant, clusters) =
        start_zen(dir.path(), database_url, None, true, load.agents).await?;
    report(
        stream_load(
            &running,
            &config,
            tenant,
            &clusters,
            &load,
            None,
            format!("no-op sink: {} agents (framework ceiling)", load.agents),
        )
        .await
        .context("no-op run")?,
    );
    running.shutdown().await?;
    Ok(all)
}

/// Runs `work` on a scratch database created on `admin_url` (a superuser connection) and
/// dropped afterwards, whatever happens.
pub async fn with_scratch_postgres<F, Fut, T>(admin_url: &str, work: F) -> anyhow::Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    use sqlx::Connection;
    let name = format!("zen_bench_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .context("connecting to --postgres-url")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(admin_url);
    let result = work(format!("{base}/{name}")).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    result
}

/// An mTLS gRPC channel to the Zen at `addr` with the identity `name` (`admin`, `gateway` …)
/// of the PKI in `pki` (a data dir's `pki/`), as the benchmarks call it.
pub async fn mtls_channel(
    addr: std::net::SocketAddr,
    pki: &std::path::Path,
    name: &str,
) -> anyhow::Result<tonic::transport::Channel> {
    let read = |file: std::path::PathBuf| {
        std::fs::read(&file).with_context(|| format!("reading {}", file.display()))
    };
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(
            pki.join("ca.crt"),
        )?))
        .identity(tonic::transport::Identity::from_pem(
            read(pki.join(format!("{name}.crt")))?,
            read(pki.join(format!("{name}.key")))?,
        ))
        .domain_name("localhost");
    Ok(
        tonic::transport::Channel::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?,
    )
}
