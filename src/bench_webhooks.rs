//! `zen bench webhooks`: verified-and-stored webhook deliveries per second through the gateway,
//! per verification scheme, against a no-op HTTP handler on the same server, in one run.
//!
//! For each database it starts a Zen in-process (real sockets; the gateway calls the ingest
//! service over mTLS as in production), creates a tenant and one source per scheme (the operator's
//! admin identity over gRPC), and posts N unique, correctly signed deliveries per scheme from C
//! keep-alive HTTP/1.1 connections. Only 202 (verified and committed) counts as stored; every
//! other answer is reported. The ceiling is the same load against `GET /health`, a handler that
//! only answers. After the run Zen is stopped and the events of each source are counted in the
//! database with a fresh connection: that count must equal the 202s. Then the delivery's own
//! database work is run straight through the store (no HTTP, no gRPC), to show which part of a
//! delivery the rate is spent on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::Utc;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;
use zen_security::PkiFiles;
use zen_store::{
    AuditOutcome, EventFilter, NewAuditRecord, NewEvent, PageRequest, Scope, Store, TenantUpdate,
};

use crate::bench::{percentile, start_zen};
use crate::proto::zen::ingest::v1 as pb;
use crate::server;

/// The verification schemes a run can cover, in the order they are measured by default.
pub const ALL_SCHEMES: [&str; 9] = [
    "zen-hmac",
    "standard-webhooks",
    "github",
    "stripe",
    "slack",
    "shopify",
    "generic-hmac",
    "bearer",
    "basic",
];

/// Load shape.
#[derive(Clone, Debug)]
pub struct WebhookLoad {
    /// Deliveries per scheme (and requests of the ceiling).
    pub deliveries: usize,
    /// Concurrent keep-alive connections, each with one request in flight.
    pub concurrency: usize,
    /// Scheme names from [`ALL_SCHEMES`].
    pub schemes: Vec<String>,
    /// When not 0, the first scheme is measured once more while this many WebSocket watchers
    /// of the tenant's events are connected and never read (the slow-consumer drill).
    pub stuck_watchers: usize,
    /// The shared cache (`zen --redis-url … bench webhooks`); `None`: the in-memory cache.
    pub redis_url: Option<String>,
}

impl WebhookLoad {
    /// Checks the scheme names (each known, none twice).
    pub fn validate(&self) -> anyhow::Result<()> {
        for (i, scheme) in self.schemes.iter().enumerate() {
            if !ALL_SCHEMES.contains(&scheme.as_str()) {
                anyhow::bail!(
                    "unknown scheme `{scheme}`; known: {}",
                    ALL_SCHEMES.join(", ")
                );
            }
            if self.schemes[..i].contains(scheme) {
                anyhow::bail!("scheme `{scheme}` is listed twice");
            }
        }
        if self.schemes.is_empty() {
            anyhow::bail!("no scheme to measure");
        }
        Ok(())
    }
}

/// One measured line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub requests: usize,
    /// The status that counts as success (202 for deliveries, 200 for the ceiling).
    pub success_status: u16,
    pub successes: usize,
    /// Every other status; `0` counts requests that got no answer at all, `1` store-only
    /// operations that failed.
    pub others: BTreeMap<u16, usize>,
    /// Events found in the database afterwards (deliveries only).
    pub stored: Option<usize>,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Row {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.successes as f64 / self.seconds
    }

    fn others_text(&self) -> String {
        if self.others.is_empty() {
            return "-".into();
        }
        self.others
            .iter()
            .map(|(status, n)| match status {
                0 => format!("no answer x{n}"),
                1 => format!("failed x{n}"),
                s => format!("{s} x{n}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The figures of one database.
#[derive(Debug)]
pub struct DatabaseFigures {
    pub database: String,
    pub ceiling: Row,
    pub schemes: Vec<Row>,
    pub store: Vec<Row>,
}

impl DatabaseFigures {
    /// Whether every 202 has its event in the database, and nothing more.
    pub fn durable(&self) -> bool {
        self.schemes.iter().all(|r| r.stored == Some(r.successes))
    }

    /// The table, as Markdown (also readable as plain text).
    pub fn table(&self) -> String {
        let ceiling = self.ceiling.rate();
        let mut out = format!(
            "{}\n\n| run | requests | ok | other answers | stored | per s | of ceiling | p50 ms | p99 ms |\n\
             |---|---:|---:|---|---:|---:|---:|---:|---:|\n",
            self.database
        );
        let mut line = |r: &Row, share: bool| {
            out.push_str(&format!(
                "| {} | {} | {}{} | {} | {} | {:.0} | {} | {:.2} | {:.2} |\n",
                r.label,
                r.requests,
                r.successes,
                match r.success_status {
                    0 => String::new(),
                    s => format!(" ({s})"),
                },
                r.others_text(),
                r.stored.map_or("-".into(), |n| n.to_string()),
                r.rate(),
                if share {
                    format!("{:.0} %", 100.0 * r.rate() / ceiling)
                } else {
                    "-".into()
                },
                r.p50_ms,
                r.p99_ms,
            ));
        };
        line(&self.ceiling, true);
        for r in &self.schemes {
            line(r, true);
        }
        for r in &self.store {
            line(r, false);
        }
        out
    }
}

/// A source created for the run, with what a sender needs to sign for it.
struct BenchSource {
    scheme: &'static str,
    id: String,
    secret: String,
}

const BASIC_USERNAME: &str = "bench";

fn verification(scheme: &str) -> pb::WebhookVerification {
    use pb::webhook_verification::Config;
    let (scheme, config) = match scheme {
        "zen-hmac" => (pb::WebhookScheme::ZenHmac, None),
        "standard-webhooks" => (pb::WebhookScheme::StandardWebhooks, None),
        "github" => (pb::WebhookScheme::Github, None),
        "stripe" => (pb::WebhookScheme::Stripe, None),
        "slack" => (pb::WebhookScheme::Slack, None),
        "shopify" => (pb::WebhookScheme::Shopify, None),
        "bearer" => (pb::WebhookScheme::Bearer, None),
        "basic" => (
            pb::WebhookScheme::Basic,
            Some(Config::Basic(pb::BasicAuthConfig {
                username: BASIC_USERNAME.into(),
            })),
        ),
        // A generic scheme shaped like most in-house ones: signed timestamp and delivery id.
        _ => (
            pb::WebhookScheme::GenericHmac,
            Some(Config::GenericHmac(pb::GenericHmacConfig {
                signature_header: "x-bench-signature".into(),
                algorithm: pb::HmacAlgorithm::Sha256 as i32,
                encoding: pb::SignatureEncoding::Hex as i32,
                signature_prefix: "sha256=".into(),
                signed_content: "{timestamp}.{delivery_id}.{body}".into(),
                timestamp_header: "x-bench-timestamp".into(),
                delivery_id_header: "x-bench-delivery".into(),
            })),
        ),
    };
    pb::WebhookVerification {
        scheme: scheme as i32,
        config,
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Delivery `index` of `run` for `source`: its headers and body, signed as the provider would.
/// Every delivery has its own id (or, for schemes without one, its own body), so none is a
/// duplicate and each stores one new event.
fn signed_delivery(
    source: &BenchSource,
    run: &str,
    index: usize,
) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let id = format!("{run}-{index}");
    let body = format!(
        r#"{{"id":"evt_{id}","type":"bench.delivery","title":"bench delivery {index}","severity":"high"}}"#
    )
    .into_bytes();
    let ts = Utc::now().timestamp().to_string();
    let secret = source.secret.as_bytes();
    let headers = match source.scheme {
        "zen-hmac" => {
            let sig = hmac_sha256(secret, &[ts.as_bytes(), b".", id.as_bytes(), b".", &body]);
            vec![
                ("x-timestamp", ts),
                ("x-nonce", id),
                ("x-signature", hex::encode(sig)),
            ]
        }
        "standard-webhooks" => {
            let key = STANDARD
                .decode(source.secret.trim_start_matches("whsec_"))
                .expect("a generated whsec_ secret is base64");
            let msg_id = format!("msg_{id}");
            let sig = hmac_sha256(&key, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", &body]);
            vec![
                ("webhook-id", msg_id),
                ("webhook-timestamp", ts),
                ("webhook-signature", format!("v1,{}", STANDARD.encode(sig))),
            ]
        }
        "github" => vec![
            (
                "x-hub-signature-256",
                format!("sha256={}", hex::encode(hmac_sha256(secret, &[&body]))),
            ),
            ("x-github-delivery", id),
            ("x-github-event", "ping".into()),
        ],
        // The delivery id is the payload's `id`.
        "stripe" => {
            let sig = hmac_sha256(secret, &[ts.as_bytes(), b".", &body]);
            vec![(
                "stripe-signature",
                format!("t={ts},v1={}", hex::encode(sig)),
            )]
        }
        "slack" => {
            let sig = hmac_sha256(secret, &[b"v0:", ts.as_bytes(), b":", &body]);
            vec![
                ("x-slack-request-timestamp", ts),
                ("x-slack-signature", format!("v0={}", hex::encode(sig))),
            ]
        }
        "shopify" => vec![
            (
                "x-shopify-hmac-sha256",
                STANDARD.encode(hmac_sha256(secret, &[&body])),
            ),
            ("x-shopify-webhook-id", id),
        ],
        "generic-hmac" => {
            let sig = hmac_sha256(secret, &[ts.as_bytes(), b".", id.as_bytes(), b".", &body]);
            vec![
                ("x-bench-signature", format!("sha256={}", hex::encode(sig))),
                ("x-bench-timestamp", ts),
                ("x-bench-delivery", id),
            ]
        }
        "bearer" => vec![("authorization", format!("Bearer {}", source.secret))],
        _ => vec![(
            "authorization",
            format!(
                "Basic {}",
                STANDARD.encode(format!("{BASIC_USERNAME}:{}", source.secret))
            ),
        )],
    };
    (headers, body)
}

/// A source's rate limit is capped by its tenant's `requests_per_second` quota (100 by
/// default): raised here so neither limit refuses a delivery, while both are still checked on
/// every delivery as in production.
async fn raise_quotas(database_url: &str, tenant: Uuid) -> anyhow::Result<()> {
    let store = Store::connect(database_url).await?;
    let mut tx = store.begin(&Scope::platform_admin(None)).await?;
    tx.tenants()
        .update(
            tenant,
            None,
            TenantUpdate {
                requests_per_second: Some(1_000_000),
                max_events_per_day: Some(1_000_000_000),
                ..Default::default()
            },
        )
        .await?;
    tx.commit().await?;
    store.close().await;
    Ok(())
}

/// A gRPC channel with the operator's admin identity (`pki/admin.crt`).
async fn admin_channel(
    running: &server::Running,
    pki: &PkiFiles,
) -> anyhow::Result<tonic::transport::Channel> {
    crate::bench::mtls_channel(running.grpc_addr, &pki.dir, "admin").await
}

/// One source per scheme, each with a rate limit far above what the run can send (so the
/// limiter counts every delivery, as in production, but never refuses one).
async fn create_sources(
    channel: tonic::transport::Channel,
    tenant: Uuid,
    schemes: &[String],
    suffix: &str,
) -> anyhow::Result<Vec<BenchSource>> {
    let mut client = pb::ingest_service_client::IngestServiceClient::new(channel);
    let mut sources = Vec::new();
    for name in schemes {
        let scheme = ALL_SCHEMES
            .iter()
            .copied()
            .find(|s| s == name)
            .context("unknown scheme")?;
        let created = client
            .create_webhook_source(pb::CreateWebhookSourceRequest {
                tenant_id: tenant.to_string(),
                webhook_source: Some(pb::WebhookSource {
                    name: format!("bench-{scheme}{suffix}"),
                    enabled: true,
                    verification: Some(verification(scheme)),
                    rate_limit_per_second: 1_000_000,
                    ..Default::default()
                }),
            })
            .await
            .with_context(|| format!("creating the {scheme} source"))?
            .into_inner();
        sources.push(BenchSource {
            scheme,
            id: created
                .webhook_source
                .context("no source in the answer")?
                .source_id,
            secret: created.secret,
        });
    }
    Ok(sources)
}

/// Builds request `index` on a worker's own client.
type MakeRequest = dyn Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync;

/// `requests` requests from `concurrency` workers, each on its own keep-alive HTTP/1.1
/// connection with one request in flight. Connections are opened (with a `GET /health`) before
/// the clock starts. Latency is from sending to the last byte of the answer.
async fn drive(
    base: &str,
    label: String,
    requests: usize,
    concurrency: usize,
    success_status: u16,
    make: Arc<MakeRequest>,
) -> anyhow::Result<Row> {
    let next = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(30))
            .build()?;
        let (next, ready, make, health) = (
            next.clone(),
            ready.clone(),
            make.clone(),
            format!("{base}/health"),
        );
        workers.push(tokio::spawn(async move {
            let warm = client.get(&health).send().await;
            ready.wait().await;
            warm?.bytes().await?;
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= requests {
                    break;
                }
                let request = make(&client, index);
                let at = Instant::now();
                let status = match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        match response.bytes().await {
                            Ok(_) => status,
                            Err(_) => 0,
                        }
                    }
                    Err(_) => 0,
                };
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                *statuses.entry(status).or_default() += 1;
            }
            anyhow::Ok((latencies, statuses))
        }));
    }
    ready.wait().await;
    collect(label, requests, success_status, Instant::now(), workers).await
}

/// What each worker measured: latencies (ms) and the count of each status it got.
type WorkerFigures = anyhow::Result<(Vec<f64>, BTreeMap<u16, usize>)>;

/// Waits for `workers` and makes their figures one row (the rate is over the time since
/// `started`).
async fn collect(
    label: String,
    requests: usize,
    success_status: u16,
    started: Instant,
    workers: Vec<tokio::task::JoinHandle<WorkerFigures>>,
) -> anyhow::Result<Row> {
    let mut latencies = Vec::with_capacity(requests);
    let mut others = BTreeMap::new();
    for worker in workers {
        let (l, s) = worker.await??;
        latencies.extend(l);
        for (status, n) in s {
            *others.entry(status).or_default() += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let successes = others.remove(&success_status).unwrap_or(0);
    Ok(Row {
        label,
        requests,
        success_status,
        successes,
        others,
        stored: None,
        seconds,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    })
}

/// [`drive`] for gRPC: `concurrency` tasks share one HTTP/2 channel (as the gateway does) and
/// post `requests` signed deliveries to `IngestService.ReceiveWebhook`; an answer counts as
/// the HTTP status the gateway would give it.
async fn drive_grpc(
    channel: tonic::transport::Channel,
    label: String,
    requests: usize,
    concurrency: usize,
    source: Arc<BenchSource>,
    run: String,
) -> anyhow::Result<Row> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let mut client = pb::ingest_service_client::IngestServiceClient::new(channel.clone());
        let (next, source, run) = (next.clone(), source.clone(), run.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= requests {
                    break;
                }
                let (headers, body) = signed_delivery(&source, &run, index);
                let mut headers: std::collections::HashMap<String, String> = headers
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect();
                headers.insert("content-type".into(), "application/json".into());
                let request = pb::ReceiveWebhookRequest {
                    source_id: source.id.clone(),
                    body: Some(crate::proto::google::api::HttpBody {
                        content_type: "application/json".into(),
                        data: body,
                        extensions: Vec::new(),
                    }),
                    headers,
                };
                let at = Instant::now();
                let status = match client.receive_webhook(request).await {
                    Ok(response) => {
                        if response.get_ref().outcome == pb::DeliveryOutcome::Accepted as i32 {
                            202
                        } else {
                            200
                        }
                    }
                    Err(status) => zen_gateway::http_status(status.code()).as_u16(),
                };
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                *statuses.entry(status).or_default() += 1;
            }
            anyhow::Ok((latencies, statuses))
        }));
    }
    collect(label, requests, 202, started, workers).await
}

/// Events stored for each source, counted page by page with a fresh connection.
async fn count_events(
    database_url: &str,
    tenant: Uuid,
    sources: &[BenchSource],
) -> anyhow::Result<Vec<usize>> {
    let store = Store::connect(database_url).await?;
    let mut counts = Vec::new();
    for source in sources {
        let mut tx = store.begin_read(&Scope::tenant(tenant, None)).await?;
        let filter = EventFilter {
            source_name: Some(source.id.clone()),
            ..Default::default()
        };
        let mut page = PageRequest::first(zen_store::MAX_PAGE_SIZE);
        let mut count = 0;
        loop {
            let found = tx.events().list(&filter, &page).await?;
            count += found.items.len();
            match found.next_page_token {
                Some(token) => page.page_token = Some(token),
                None => break,
            }
        }
        counts.push(count);
    }
    store.close().await;
    Ok(counts)
}

/// The tenant's audit chain, verified after the run as `zen audit verify` would: the
/// benchmark fails when it does not verify. Returns the records checked.
async fn verify_audit_chain(database_url: &str, tenant: Uuid) -> anyhow::Result<u64> {
    let store = Store::connect(database_url).await?;
    let mut tx = store.begin_read(&Scope::tenant(tenant, None)).await?;
    let verification = tx.audit().verify_chain(tenant).await?;
    tx.commit().await?;
    store.close().await;
    match verification.problem {
        None => Ok(verification.records_checked),
        Some(problem) => anyhow::bail!("the tenant's audit chain does not verify: {problem:?}"),
    }
}

/// What one delivery does in the database, straight through the store.
#[derive(Clone, Copy)]
enum StoreWork {
    /// The reads before verification: source, tenant, secrets (one read-only transaction).
    Reads,
    /// The write transaction of `batch` deliveries: their events, the source's last delivery
    /// time, one audit record per delivery (when `audit`).
    Write { audit: bool, batch: usize },
}

/// `requests` deliveries' worth of `work` from `concurrency` writers, no HTTP and no gRPC.
async fn store_ceiling(
    database_url: &str,
    tenant: Uuid,
    source: Uuid,
    requests: usize,
    concurrency: usize,
    work: StoreWork,
    label: String,
) -> anyhow::Result<Row> {
    let store = Arc::new(Store::connect(database_url).await?);
    let next = Arc::new(AtomicUsize::new(0));
    let run = Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (store, next, run) = (store.clone(), next.clone(), run.clone());
        workers.push(tokio::spawn(async move {
            let scope = Scope::tenant(tenant, None);
            let mut latencies = Vec::new();
            let mut failures = 0;
            loop {
                let step = match work {
                    StoreWork::Reads => 1,
                    StoreWork::Write { batch, .. } => batch,
                };
                let first = next.fetch_add(step, Ordering::Relaxed);
                if first >= requests {
                    break;
                }
                let indexes = first..(first + step).min(requests);
                let count = indexes.len();
                let at = Instant::now();
                let done = match work {
                    StoreWork::Reads => reads(&store, &scope, tenant, source).await,
                    StoreWork::Write { audit, .. } => {
                        write(&store, &scope, source, &run, indexes, audit).await
                    }
                };
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                if done.is_err() {
                    failures += count;
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut failures = 0;
    for worker in workers {
        let (l, f) = worker.await?;
        latencies.extend(l);
        failures += f;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    store.close().await;
    Ok(Row {
        label,
        requests,
        success_status: 0,
        successes: requests - failures,
        others: if failures > 0 {
            BTreeMap::from([(1, failures)])
        } else {
            BTreeMap::new()
        },
        stored: None,
        seconds,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    })
}

async fn reads(store: &Store, scope: &Scope, tenant: Uuid, source: Uuid) -> zen_store::Result<()> {
    let mut tx = store.begin_read(scope).await?;
    tx.webhook_sources().get(source).await?;
    tx.tenants().get(tenant).await?;
    tx.webhook_sources().secrets(source, Utc::now()).await?;
    Ok(())
}

async fn write(
    store: &Store,
    scope: &Scope,
    source: Uuid,
    run: &str,
    indexes: std::ops::Range<usize>,
    audit: bool,
) -> zen_store::Result<()> {
    let now = Utc::now();
    let ids: Vec<String> = indexes.map(|i| format!("store-{run}-{i}")).collect();
    let events: Vec<NewEvent> = ids
        .iter()
        .map(|id| NewEvent {
            source: "webhook".into(),
            source_name: Some(format!("store-ceiling-{run}")),
            category: "security".into(),
            severity: 4,
            event_type: "bench.delivery".into(),
            title: format!("bench delivery {id}"),
            resource: serde_json::json!({}),
            details: serde_json::json!({ "id": id }),
            fingerprint: id.clone(),
            detected_at: now,
            source_event_id: id.clone(),
        })
        .collect();
    let mut tx = store.begin(scope).await?;
    tx.events()
        .ingest(None, &events, Duration::from_secs(3600), now)
        .await?;
    tx.webhook_sources().record_delivery(source, now).await?;
    // One record per delivery, appended together as the group commit does.
    let records = ids
        .iter()
        .filter(|_| audit)
        .map(|id| {
            let mut record = NewAuditRecord::new(
                "webhook_source",
                "webhook.receive",
                "webhook_source",
                AuditOutcome::Success,
            );
            record.actor_id = Some(source.to_string());
            record.resource_id = Some(source.to_string());
            record.request_id = Some(Uuid::new_v4().to_string());
            record.details = serde_json::json!({ "delivery_id": id, "events": 1 });
            record
        })
        .collect();
    tx.audit().append_all(records).await?;
    tx.commit().await
}

/// `zen bench webhooks` on one database: every measurement, printed as it completes, then the
/// table.
pub async fn webhooks(
    database: &str,
    database_url: &str,
    load: &WebhookLoad,
) -> anyhow::Result<DatabaseFigures> {
    load.validate()?;
    let dir = tempfile::tempdir()?;
    let (running, config, tenant, _) = start_zen(
        dir.path(),
        database_url,
        load.redis_url.as_deref(),
        false,
        0,
    )
    .await
    .context("starting Zen")?;
    raise_quotas(database_url, tenant).await?;
    let pki = PkiFiles::new(config.pki_dir());
    let channel = admin_channel(&running, &pki).await?;
    let mut sources = create_sources(channel.clone(), tenant, &load.schemes, "").await?;
    if load.stuck_watchers > 0 {
        // A source of its own, so that each row's stored events can be counted apart.
        sources
            .extend(create_sources(channel.clone(), tenant, &load.schemes[..1], "-watched").await?);
    }
    // The first scheme once more, straight to the gRPC service (a source of its own too).
    sources.extend(create_sources(channel.clone(), tenant, &load.schemes[..1], "-grpc").await?);
    let direct = sources.pop().expect("the gRPC row's source");
    let base = format!("http://{}", running.http_addr);

    let health = format!("{base}/health");
    let ceiling = drive(
        &base,
        "no-op ceiling: GET /health".into(),
        load.deliveries,
        load.concurrency,
        200,
        Arc::new(move |client: &reqwest::Client, _| client.get(&health)),
    )
    .await
    .context("ceiling run")?;
    println!(
        "{database}: {:<36} {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
        ceiling.label,
        ceiling.rate(),
        ceiling.p50_ms,
        ceiling.p99_ms
    );

    let run = Uuid::new_v4().simple().to_string();
    let mut schemes = Vec::new();
    let mut watchers = Vec::new();
    for (k, source) in sources.iter().enumerate() {
        let url = format!("{base}/webhooks/{}", source.id);
        let mut label = format!("{}: POST /webhooks/{{id}}", source.scheme);
        if k == load.schemes.len() {
            watchers = stuck_watchers(&channel, &running, tenant, load.stuck_watchers).await?;
            label = format!("{}, {} stuck watchers", source.scheme, watchers.len());
        }
        let source = Arc::new(BenchSource {
            scheme: source.scheme,
            id: source.id.clone(),
            secret: source.secret.clone(),
        });
        // Delivery ids differ across sources too, so no two events share a source event id.
        let run = format!("{run}-{k}");
        let make = Arc::new(move |client: &reqwest::Client, index: usize| {
            let (headers, body) = signed_delivery(&source, &run, index);
            let mut request = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request
        });
        let row = drive(&base, label, load.deliveries, load.concurrency, 202, make).await?;
        println!(
            "{database}: {:<36} {:>8.0} stored/s ({:.0} % of the ceiling)  p50 {:>7.2} ms  p99 {:>7.2} ms  other answers: {}",
            row.label,
            row.rate(),
            100.0 * row.rate() / ceiling.rate(),
            row.p50_ms,
            row.p99_ms,
            row.others_text()
        );
        schemes.push(row);
    }
    // What the HTTP -> gRPC hop costs: the first scheme's deliveries sent by a gRPC client over
    // the gateway's own mTLS channel to `IngestService.ReceiveWebhook`, as the gateway relays
    // them (headers in the map, the body as an `HttpBody`).
    let grpc = crate::tls::gateway_channel(&config, running.grpc_addr)?;
    let row = drive_grpc(
        grpc,
        format!("{}: gRPC ReceiveWebhook, no HTTP hop", direct.scheme),
        load.deliveries,
        load.concurrency,
        Arc::new(BenchSource {
            scheme: direct.scheme,
            id: direct.id.clone(),
            secret: direct.secret.clone(),
        }),
        format!("{run}-grpc"),
    )
    .await?;
    println!(
        "{database}: {:<36} {:>8.0} stored/s  p50 {:>7.2} ms  p99 {:>7.2} ms  other answers: {}",
        row.label,
        row.rate(),
        row.p50_ms,
        row.p99_ms,
        row.others_text()
    );
    let via_http = schemes.first().map(Row::rate).unwrap_or_default();
    if via_http > 0.0 && row.rate() > 0.0 {
        println!(
            "{database}: the HTTP -> gRPC hop costs {:.0} µs of the server per delivery ({:.0} % of a delivery through HTTP)",
            1e6 * (1.0 / via_http - 1.0 / row.rate()),
            100.0 * (1.0 - via_http / row.rate()),
        );
    }
    schemes.push(row);
    sources.push(direct);
    if !watchers.is_empty() {
        let with = schemes[schemes.len() - 2].rate();
        let without = schemes[0].rate();
        let open = still_open(watchers).await;
        println!(
            "{database}: with {} stuck watchers: {:.0} % of the rate without them; {open} of them \
             still open after the run",
            load.stuck_watchers,
            100.0 * with / without,
        );
    }
    running.shutdown().await?;

    // Durability: what the database holds after Zen is gone.
    let counts = count_events(database_url, tenant, &sources)
        .await
        .context("counting stored events")?;
    for (row, count) in schemes.iter_mut().zip(counts) {
        row.stored = Some(count);
    }
    let records = verify_audit_chain(database_url, tenant)
        .await
        .context("verifying the audit chain")?;
    println!("{database}: the tenant's audit chain verifies ({records} records)");

    // The delivery's database work alone, with as many writers as the server's store pool:
    // one transaction per delivery with and without the audit append, and batches of
    // STORE_BATCH deliveries per transaction (what a group commit does).
    let source = Uuid::parse_str(&sources[0].id)?;
    let requests = load.deliveries.min(STORE_REQUESTS);
    let mut store = Vec::new();
    for (work, writers, label) in [
        (
            StoreWork::Reads,
            STORE_WRITERS,
            "store only: the delivery's reads".to_owned(),
        ),
        (
            StoreWork::Write {
                audit: false,
                batch: 1,
            },
            STORE_WRITERS,
            "store only: 1 delivery per tx, no audit".to_owned(),
        ),
        (
            StoreWork::Write {
                audit: true,
                batch: 1,
            },
            STORE_WRITERS,
            "store only: 1 delivery per tx".to_owned(),
        ),
        (
            StoreWork::Write {
                audit: true,
                batch: STORE_BATCH,
            },
            1,
            format!("store only: {STORE_BATCH} deliveries per tx"),
        ),
    ] {
        let row = store_ceiling(
            database_url,
            tenant,
            source,
            requests,
            writers,
            work,
            format!("{label} ({writers} writers)"),
        )
        .await
        .with_context(|| label.clone())?;
        println!(
            "{database}: {:<48} {:>8.0} per s  p50 {:>7.2} ms  p99 {:>7.2} ms",
            row.label,
            row.rate(),
            row.p50_ms,
            row.p99_ms
        );
        store.push(row);
    }
    Ok(DatabaseFigures {
        database: database.to_owned(),
        ceiling,
        schemes,
        store,
    })
}

/// Watchers of the slow-consumer drill: WebSocket watches of the tenant's events through the
/// gateway, each with a 4 KiB receive buffer, that are never read. Opened by platform admins
/// signed in with local login, 50 per user (under the default per-caller cap).
async fn stuck_watchers(
    channel: &tonic::transport::Channel,
    running: &server::Running,
    tenant: Uuid,
    count: usize,
) -> anyhow::Result<Vec<StuckWatcher>> {
    use crate::proto::zen::auth::v1 as auth;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    const PER_USER: usize = 50;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let password = Uuid::new_v4().simple().to_string();
    let mut watchers = Vec::with_capacity(count);
    for user in 0..count.div_ceil(PER_USER) {
        let username = format!("watcher-{user}-{}", &password[..8]);
        let mut request = tonic::Request::new(auth::CreateLocalUserRequest {
            username: username.clone(),
            email: format!("{username}@bench.invalid"),
            password: password.clone(),
            platform_admin: true,
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("x-request-id", Uuid::new_v4().to_string().parse()?);
        auth::auth_service_client::AuthServiceClient::new(channel.clone())
            .create_local_user(request)
            .await
            .context("creating a watcher's user")?;
        let login: serde_json::Value = http
            .post(format!("http://{}/auth/local/login", running.http_addr))
            .json(&serde_json::json!({ "username": username, "password": password }))
            .send()
            .await?
            .error_for_status()
            .context("signing a watcher in")?
            .json()
            .await?;
        let token = login["token"]["accessToken"]
            .as_str()
            .context("no access token")?
            .to_owned();
        for _ in 0..PER_USER.min(count - watchers.len()) {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(4096)?;
            let stream = socket.connect(running.http_addr).await?;
            let mut request = format!(
                "ws://{}/v1/tenants/{tenant}/events:watch",
                running.http_addr
            )
            .into_client_request()?;
            request.headers_mut().insert(
                "sec-websocket-protocol",
                format!("bearer, {token}").parse()?,
            );
            let (socket, _) = tokio_tungstenite::client_async(request, stream)
                .await
                .context("opening a watch")?;
            watchers.push(socket);
        }
    }
    Ok(watchers)
}

type StuckWatcher = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// How many of the stuck watchers the server left open: each is read to its end, and one that
/// stays quiet for 3 s without having been closed counts as open.
async fn still_open(watchers: Vec<StuckWatcher>) -> usize {
    use futures::StreamExt;
    let open = futures::future::join_all(watchers.into_iter().map(|mut socket| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(3), socket.next()).await {
                Err(_) => return true,
                Ok(None | Some(Err(_))) => return false,
                Ok(Some(Ok(message))) if message.is_close() => return false,
                Ok(Some(Ok(_))) => {}
            }
        }
    }))
    .await;
    open.into_iter().filter(|open| *open).count()
}

/// Writers of the store-only runs: the size of Zen's default store pool, which is what bounds
/// the server's own concurrency in the database.
const STORE_WRITERS: usize = 10;
/// Deliveries per transaction of the batched store-only run (one writer, as one committer per
/// tenant would).
const STORE_BATCH: usize = 64;
/// At most this many operations per store-only run: enough for a steady rate.
const STORE_REQUESTS: usize = 5000;
