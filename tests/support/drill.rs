//! The webhook outage drill shared by the dependency-outage tests: Zen under signed webhook
//! load while a dependency is stopped and restarted, with the promises checked afterwards
//! (docs/RELIABILITY.md): every delivery answered within 3 s, only 202 or 503 with
//! `Retry-After`; `/ready` false during an outage and true again by itself; 202s again within
//! 2 s of the dependency's return; every 202 stored; the tenant's audit chain verifies.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::process::ZenProcess;
use super::{create_local_user_as_operator, http_client, request_id, ZenUnderTest, PASSWORD};
use hmac::{KeyInit, Mac};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

/// The JSON of a 2xx answer; anything else fails the test with the answer.
pub async fn ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The `zen-hmac` signature of a delivery.
/// The signature of Zen's own `zen-hmac` scheme: HMAC-SHA256 of `{timestamp}.{nonce}.{body}`.
pub fn zen_hmac(secret: &str, timestamp: i64, nonce: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{nonce}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A free loopback port for a private dependency.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Signs in as the operator's `root` user; returns the access token.
pub async fn sign_in_root(http: &Client, zen: &impl ZenUnderTest) -> String {
    let login = ok(http
        .post(zen.http_url("/auth/local/login"))
        .json(&json!({ "username": "root", "password": PASSWORD }))
        .send()
        .await
        .unwrap())
    .await;
    login["token"]["accessToken"].as_str().unwrap().to_owned()
}

/// Posts one `zen-hmac` delivery of `body`, signed now with `secret`.
pub async fn deliver(
    client: &Client,
    url: &str,
    secret: &str,
    nonce: &str,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    let ts = chrono::Utc::now().timestamp();
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-timestamp", ts.to_string())
        .header("x-nonce", nonce)
        .header("x-signature", zen_hmac(secret, ts, nonce, body.as_bytes()))
        .body(body)
        .send()
        .await
}

/// A platform admin's tenant with a `zen-hmac` webhook source, ready for load.
pub struct WebhookTarget {
    pub http: Client,
    pub token: String,
    pub tenant_id: String,
    pub source_id: String,
    pub secret: String,
}

/// Creates the operator's `root` user, signs in, creates tenant `tenant` and a `zen-hmac`
/// source named `load` (with `settings` merged into it).
pub async fn webhook_target(
    zen: &impl ZenUnderTest,
    tenant: &str,
    settings: Value,
) -> WebhookTarget {
    create_local_user_as_operator(zen, "root", true).await;
    let http = http_client();
    let token = sign_in_root(&http, zen).await;
    let created = ok(http
        .post(zen.http_url("/v1/tenants"))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        // A load target: the tenant's default request quota (100/s) would throttle the
        // drills' bursts, which measure loss, not limits.
        .json(&json!({ "name": tenant, "quotas": { "requestsPerSecond": 1000000 } }))
        .send()
        .await
        .unwrap())
    .await;
    let tenant_id = created["tenant"]["tenantId"].as_str().unwrap().to_owned();
    let mut source = json!({ "name": "load", "enabled": true,
                             "verification": { "scheme": "WEBHOOK_SCHEME_ZEN_HMAC" } });
    if let (Some(source), Some(settings)) = (source.as_object_mut(), settings.as_object()) {
        source.extend(settings.clone());
    }
    let source = ok(http
        .post(zen.http_url(&format!("/v1/tenants/{tenant_id}/webhookSources")))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        .json(&source)
        .send()
        .await
        .unwrap())
    .await;
    WebhookTarget {
        secret: source["secret"].as_str().unwrap().to_owned(),
        source_id: source["webhookSource"]["sourceId"]
            .as_str()
            .unwrap()
            .to_owned(),
        http,
        token,
        tenant_id,
    }
}

/// One delivery's fate: when it was sent (since the load began), its status, how long it took.
struct Answer {
    sent: Duration,
    status: StatusCode,
    took: Duration,
    event_id: Option<String>,
}

/// What a drill does to a dependency: stop it for a while, or restart it at once.
pub struct Outage {
    pub dependency: &'static str,
    /// Between `stop` and `restart`; zero for a restart.
    pub down_for: Duration,
}

impl Outage {
    pub fn down_for(dependency: &'static str, down_for: Duration) -> Self {
        Outage {
            dependency,
            down_for,
        }
    }

    pub fn restart(dependency: &'static str) -> Self {
        Self::down_for(dependency, Duration::ZERO)
    }

    /// Long enough that refusals and an unready replica must be seen in between (readiness is
    /// checked every second, each check waiting at most 2 s).
    fn is_long(&self) -> bool {
        self.down_for >= Duration::from_secs(5)
    }
}

/// Zen (the `zen` binary with `args`, local login on) and its webhook load target.
async fn zen_with_target(args: &[String]) -> (ZenProcess, WebhookTarget) {
    let mut args = args.to_vec();
    args.extend(["--local-login".into(), "true".into()]);
    let zen = ZenProcess::spawn(&args).await;
    let target = webhook_target(&zen, "outage", json!({ "rateLimitPerSecond": 10000 })).await;
    (zen, target)
}

/// The drills' load, running until its end (which the drill may move): 8 senders, each
/// waiting for its answer (at most 3 s) and 100 ms before the next delivery, and `/ready`
/// sampled every 250 ms.
struct Load {
    answers: Arc<Mutex<Vec<Answer>>>,
    senders: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    readiness: tokio::task::JoinHandle<Vec<(Duration, bool)>>,
    /// Milliseconds after `started` at which the load stops.
    end_ms: Arc<AtomicU64>,
}

impl Load {
    fn start(zen: &ZenProcess, target: &WebhookTarget, started: Instant, end: Duration) -> Load {
        let end_ms = Arc::new(AtomicU64::new(end.as_millis() as u64));
        let running = {
            let end_ms = end_ms.clone();
            move || started.elapsed() < Duration::from_millis(end_ms.load(Ordering::Relaxed))
        };
        // `/ready` sampled every 250 ms through the load: (when, ready).
        let readiness = {
            let client = Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap();
            let url = zen.http_url("/ready");
            let running = running.clone();
            tokio::spawn(async move {
                let mut samples = vec![];
                while running() {
                    let at = started.elapsed();
                    let ready = client
                        .get(&url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    samples.push((at, ready));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                samples
            })
        };
        let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
        let senders = (0..8)
            .map(|worker| {
                let client = Client::builder()
                    .timeout(Duration::from_secs(3))
                    .build()
                    .unwrap();
                let url = zen.http_url(&format!("/webhooks/{}", target.source_id));
                let (secret, answers) = (target.secret.clone(), answers.clone());
                let running = running.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    while running() {
                        n += 1;
                        let nonce = format!("w{worker}-{n}");
                        let body = json!({ "alert": nonce }).to_string();
                        let sent = started.elapsed();
                        let response = match deliver(&client, &url, &secret, &nonce, body).await {
                            Ok(response) => response,
                            // Reported with the server's log once the senders are joined.
                            Err(e) => return Err(format!("delivery {nonce} at {sent:?}: {e:?}")),
                        };
                        let status = response.status();
                        if status == StatusCode::SERVICE_UNAVAILABLE {
                            assert!(
                                response.headers().contains_key("retry-after"),
                                "503 without Retry-After"
                            );
                        }
                        let text = response.text().await.unwrap_or_default();
                        let event_id = (status == StatusCode::ACCEPTED).then(|| {
                            let v: Value = serde_json::from_str(&text).unwrap();
                            v["eventIds"][0].as_str().unwrap().to_owned()
                        });
                        answers.lock().unwrap().push(Answer {
                            sent,
                            status,
                            took: started.elapsed() - sent,
                            event_id,
                        });
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(())
                })
            })
            .collect();
        Load {
            answers,
            senders,
            readiness,
            end_ms,
        }
    }

    /// Moves the end of the load to `end` after the start.
    fn end_at(&self, end: Duration) {
        self.end_ms.store(end.as_millis() as u64, Ordering::Relaxed);
    }

    /// Waits for the load to end: every answer, and the `/ready` samples.
    async fn finish(self, zen: &ZenProcess) -> (Vec<Answer>, Vec<(Duration, bool)>) {
        for sender in self.senders {
            if let Err(error) = sender.await.unwrap() {
                panic!("{error}\nthe server's log:\n{}", zen.log_tail());
            }
        }
        let answers = std::mem::take(&mut *self.answers.lock().unwrap());
        (answers, self.readiness.await.unwrap())
    }
}

/// Every answer is 202 or 503 (with `Retry-After`, checked as it came) within 3 s.
fn assert_answered_promptly(answers: &[Answer]) {
    for a in answers {
        assert!(
            a.status == StatusCode::ACCEPTED || a.status == StatusCode::SERVICE_UNAVAILABLE,
            "sent at {:?}: {}",
            a.sent,
            a.status
        );
        assert!(
            a.took <= Duration::from_secs(3),
            "sent at {:?}, took {:?}",
            a.sent,
            a.took
        );
    }
}

/// Signs in again (a restarted or failed-over Redis may have lost the session), checks that
/// the tenant's audit chain verifies, and returns the stored webhook events of the source
/// (event id -> occurrences).
async fn stored_after_the_drill(
    zen: &ZenProcess,
    target: &WebhookTarget,
) -> std::collections::HashMap<String, usize> {
    let WebhookTarget {
        http,
        tenant_id,
        source_id,
        ..
    } = target;
    let token = sign_in_root(http, zen).await;
    let stored = stored_events(
        http,
        zen,
        &token,
        tenant_id,
        &format!("webhookSourceId={source_id}"),
    )
    .await;
    assert_chain_verifies(http, zen, &token, tenant_id).await;
    stored
}

/// Runs the `zen` binary with `args` (pointing it at the private dependency), loads it with
/// signed webhooks, calls `stop` after 2 s and `restart` after the outage, and checks every
/// promise.
pub async fn webhook_outage_drill<R, F>(
    args: &[String],
    outage: Outage,
    stop: impl FnOnce() -> bool,
    restart: R,
) where
    R: FnOnce() -> F,
    F: Future<Output = bool>,
{
    let (zen, target) = zen_with_target(args).await;

    let dependency = outage.dependency;
    let started = Instant::now();
    let total = Duration::from_secs(2) + outage.down_for + Duration::from_secs(5);
    let load = Load::start(&zen, &target, started, total);

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(stop(), "stopping the private {dependency}");
    let down_at = started.elapsed();
    tokio::time::sleep(outage.down_for).await;
    assert!(restart().await, "restarting the private {dependency}");
    let back_at = started.elapsed();
    let (answers, readiness) = load.finish(&zen).await;

    assert_answered_promptly(&answers);
    if outage.is_long() {
        let during = answers
            .iter()
            .filter(|a| a.sent > down_at + Duration::from_secs(1) && a.sent + a.took < back_at)
            .count();
        assert!(during > 0, "deliveries were answered during the outage");
        assert!(
            readiness
                .iter()
                .any(|&(at, ready)| !ready && at > down_at && at < back_at),
            "/ready never said not ready while {dependency} was down: {readiness:?}"
        );
    }
    // Ready again by itself within 3 s of the return, and from then on.
    let settled = back_at + Duration::from_secs(3);
    let unready_after: Vec<Duration> = readiness
        .iter()
        .filter(|&&(at, ready)| at > settled && !ready)
        .map(|&(at, _)| at)
        .collect();
    assert!(
        unready_after.is_empty(),
        "not ready more than 3 s after {dependency} returned at {back_at:?}: {unready_after:?}"
    );
    let late_refusals: Vec<_> = answers
        .iter()
        .filter(|a| a.sent > back_at + Duration::from_secs(2) && a.status != StatusCode::ACCEPTED)
        .map(|a| a.sent)
        .collect();
    assert!(
        late_refusals.is_empty(),
        "refused more than 2 s after {dependency} returned at {back_at:?}: {late_refusals:?}"
    );
    let slowest = answers.iter().map(|a| a.took).max().unwrap();
    let accepted: Vec<&str> = answers
        .iter()
        .filter_map(|a| a.event_id.as_deref())
        .collect();
    let refused = answers.len() - accepted.len();
    let unready = readiness.iter().filter(|&&(_, ready)| !ready).count();
    eprintln!(
        "{dependency} {}: {} deliveries, {} accepted, {refused} refused (503), slowest answer \
         {slowest:?}; /ready false in {unready} of {} samples (every 250 ms)",
        if outage.down_for.is_zero() {
            "restart".to_owned()
        } else {
            format!("down {:?}", outage.down_for)
        },
        answers.len(),
        accepted.len(),
        readiness.len()
    );

    // Every 202 is stored.
    let stored = stored_after_the_drill(&zen, &target).await;
    for id in &accepted {
        assert!(
            stored.contains_key(*id),
            "accepted event {id} is not stored"
        );
    }

    zen.stop().await;
}

/// What a failover drill measured (times from the start of the load).
#[derive(Debug)]
pub struct Failover {
    pub deliveries: usize,
    pub accepted: usize,
    pub refused: usize,
    pub slowest: Duration,
    /// From the failover's trigger until the new primary served every slot.
    pub took: Duration,
    /// From the trigger until the first delivery sent after the last refusal (the first 202
    /// "again"); zero when nothing was refused.
    pub accepting_again_after: Duration,
    /// How far past the failover's completion the last refused delivery was sent; zero when
    /// none was refused after it.
    pub refused_past_completion: Duration,
    pub unready_samples: usize,
    pub samples: usize,
}

/// The webhook drill through a failover of the dependency rather than an outage: Zen (the
/// `zen` binary with `args`) under the same load; `trigger` after 2 s; `completed` polled every
/// 100 ms (at most 30 s) until the new primary serves; the load goes on for 6 s more. Checks:
/// every delivery answered within 3 s, 202 or 503 with `Retry-After`; the load overlapped the
/// failover; every delivery sent more than `settle` after the completion accepted; `/ready`
/// true from 3 s after the completion on; every 202 stored exactly once; the tenant's audit
/// chain verifies; Zen stops cleanly (it was never restarted). Returns the figures.
pub async fn webhook_failover_drill(
    args: &[String],
    dependency: &'static str,
    settle: Duration,
    trigger: impl FnOnce() -> bool,
    mut completed: impl FnMut() -> bool,
) -> Failover {
    let (zen, target) = zen_with_target(args).await;
    let started = Instant::now();
    // Ended once the failover is over; the bound is only there for a failover that never is.
    let load = Load::start(&zen, &target, started, Duration::from_secs(60));

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(trigger(), "triggering the {dependency} failover");
    let failed_at = started.elapsed();
    while !completed() {
        assert!(
            started.elapsed() < failed_at + Duration::from_secs(30),
            "the {dependency} failover did not complete within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done_at = started.elapsed();
    load.end_at(done_at + Duration::from_secs(6));
    let (answers, readiness) = load.finish(&zen).await;

    assert_answered_promptly(&answers);
    assert!(
        answers
            .iter()
            .any(|a| a.sent <= done_at && a.sent + a.took >= failed_at),
        "no delivery was under way during the failover ({failed_at:?} to {done_at:?})"
    );
    let last_refused = answers
        .iter()
        .filter(|a| a.status != StatusCode::ACCEPTED)
        .map(|a| a.sent)
        .max();
    let refused_past_completion =
        last_refused.map_or(Duration::ZERO, |at| at.saturating_sub(done_at));
    assert!(
        refused_past_completion <= settle,
        "a delivery sent {refused_past_completion:?} after the {dependency} failover completed \
         (at {done_at:?}) was refused; the bound is {settle:?}"
    );
    let accepting_again_after = last_refused.map_or(Duration::ZERO, |last| {
        answers
            .iter()
            .filter(|a| a.sent > last)
            .map(|a| a.sent)
            .min()
            .expect("a delivery after the last refusal")
            .saturating_sub(failed_at)
    });
    let unready_after: Vec<Duration> = readiness
        .iter()
        .filter(|&&(at, ready)| at > done_at + Duration::from_secs(3) && !ready)
        .map(|&(at, _)| at)
        .collect();
    assert!(
        unready_after.is_empty(),
        "not ready more than 3 s after the {dependency} failover completed at {done_at:?}: \
         {unready_after:?}"
    );

    let accepted: Vec<&str> = answers
        .iter()
        .filter_map(|a| a.event_id.as_deref())
        .collect();
    let stored = stored_after_the_drill(&zen, &target).await;
    for id in &accepted {
        assert_eq!(
            stored.get(*id),
            Some(&1),
            "accepted event {id} is not stored exactly once"
        );
    }
    zen.stop().await;

    Failover {
        deliveries: answers.len(),
        accepted: accepted.len(),
        refused: answers.len() - accepted.len(),
        slowest: answers.iter().map(|a| a.took).max().unwrap(),
        took: done_at - failed_at,
        accepting_again_after,
        refused_past_completion,
        unready_samples: readiness.iter().filter(|&&(_, ready)| !ready).count(),
        samples: readiness.len(),
    }
}

/// The tenant's stored events matching `filter` (a query string), through every page: event id
/// -> how many occurrences it stands for (listed rows, each counting its folded `count`), so
/// that an event stored twice or folded into once more both show as more than 1.
pub async fn stored_events(
    http: &Client,
    zen: &impl ZenUnderTest,
    token: &str,
    tenant_id: &str,
    filter: &str,
) -> std::collections::HashMap<String, usize> {
    let mut stored = std::collections::HashMap::new();
    let mut page_token = String::new();
    loop {
        let page = ok(http
            .get(zen.http_url(&format!(
                "/v1/tenants/{tenant_id}/events?{filter}&pageSize=500&pageToken={page_token}"
            )))
            .bearer_auth(token)
            .send()
            .await
            .unwrap())
        .await;
        for event in page["events"].as_array().into_iter().flatten() {
            // proto3 JSON writes int64 as a string.
            let count = match &event["count"] {
                Value::String(count) => count.parse().unwrap(),
                count => count.as_u64().unwrap_or(1) as usize,
            };
            *stored
                .entry(event["eventId"].as_str().unwrap().to_owned())
                .or_default() += count;
        }
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => page_token = next.to_owned(),
            _ => return stored,
        }
    }
}

/// `POST /v1/tenants/{id}/auditLogs:verify` answers `ok: true`.
pub async fn assert_chain_verifies(
    http: &Client,
    zen: &impl ZenUnderTest,
    token: &str,
    tenant_id: &str,
) {
    let verified = ok(http
        .post(zen.http_url(&format!("/v1/tenants/{tenant_id}/auditLogs:verify")))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(verified["ok"], true, "{verified}");
}

/// Starts a private `redis-server` on `port` (never the shared one), daemonized; false when it
/// cannot be started.
pub fn start_redis(port: u16) -> bool {
    std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn stop_redis(port: u16) {
    let _ = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "shutdown", "nosave"])
        .status();
}

/// Whether the Redis on `port` accepts connections within 5 s.
pub async fn redis_answers(port: u16) -> bool {
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A private `redis-server` on its own port, stopped however the test ends.
pub struct PrivateRedis(pub u16);

impl PrivateRedis {
    /// Starts one on a free port and waits until it answers; `None` where `redis-server`
    /// cannot run (the test then skips; in CI that is a failure).
    pub async fn start() -> Option<PrivateRedis> {
        let port = free_port();
        if start_redis(port) && redis_answers(port).await {
            return Some(PrivateRedis(port));
        }
        stop_redis(port);
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server could not be started in CI"
        );
        eprintln!("skipped: redis-server could not be started");
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.0)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        stop_redis(self.0);
    }
}

/// Enrolls an agent of `cluster_id` as `zen agent bootstrap` does: a bootstrap token created
/// through `http_base` as the bearer of `token`, redeemed there over HTTP; the agent will
/// stream to `grpc_url`. Returns the agent's directory (its key, certificates and state).
pub async fn enroll_agent(
    http: &Client,
    http_base: &str,
    grpc_url: &str,
    token: &str,
    tenant_id: &str,
    cluster_id: &str,
) -> tempfile::TempDir {
    let bootstrap = ok(http
        .post(format!(
            "{http_base}/v1/tenants/{tenant_id}/clusters/{cluster_id}/bootstrapTokens"
        ))
        .bearer_auth(token)
        .header("X-Request-Id", request_id())
        .json(&json!({}))
        .send()
        .await
        .unwrap())
    .await;
    let dir = tempfile::tempdir().unwrap();
    zen::agent::bootstrap(
        http_base,
        grpc_url,
        "localhost",
        bootstrap["token"].as_str().unwrap(),
        dir.path(),
    )
    .await
    .expect("the agent enrolls");
    dir
}

/// Runs the reference agent (`zen agent run --follow`, in-process) enrolled in `dir` until
/// aborted, with an exec hook that appends every command it gets to `dir/hook.log` and
/// reports success with a passing probe.
pub async fn remediating_agent(dir: std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let hook = dir.join("hook.sh");
    let log = dir.join("hook.log");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >> '{log}'\necho >> '{log}'\n\
             echo '{{\"success\":true,\"probes\":[{{\"name\":\"ready\",\"success\":true}}]}}'\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = zen::agent::AgentFiles::new(&dir);
    let options = zen::agent::RunOptions {
        batch_size: 10,
        batch_delay: Duration::from_millis(50),
        follow: true,
    };
    let _ = zen::agent::run_with_hook(&files, tokio::io::empty(), options, Some(hook)).await;
}

/// Proposes a remediation of `cluster_id` (a server-side apply) at `risk` through `http_base`
/// as the bearer of `token`; returns it.
pub async fn propose(
    http: &Client,
    http_base: &str,
    token: &str,
    tenant_id: &str,
    cluster_id: &str,
    risk: &str,
) -> Value {
    ok(http
        .post(format!("{http_base}/v1/tenants/{tenant_id}/remediations"))
        .bearer_auth(token)
        .header("X-Request-Id", request_id())
        .json(&json!({
            "clusterId": cluster_id,
            "title": "run api as non-root",
            "risk": risk,
            "action": { "serverSideApply": {
                "apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop", "name": "api",
                "patch": { "spec": { "template": { "spec": {
                    "securityContext": { "runAsNonRoot": true } } } } }
            } }
        }))
        .send()
        .await
        .unwrap())
    .await["remediation"]
        .clone()
}

/// A remediation's status (`REMEDIATION_STATUS_…`).
pub async fn remediation_status(
    http: &Client,
    http_base: &str,
    token: &str,
    tenant_id: &str,
    remediation_id: &str,
) -> String {
    let got = ok(http
        .get(format!(
            "{http_base}/v1/tenants/{tenant_id}/remediations/{remediation_id}"
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap())
    .await;
    got["remediation"]["status"].as_str().unwrap().to_owned()
}

/// Serializes the drills of one test binary: each measures answer times under its own load,
/// which a second drill running beside it on the same cores would distort.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE_AT_A_TIME.lock().await
}

/// Creates cluster `cluster-{n}` in the tenant as the operator; returns its id.
pub async fn create_cluster(zen: &impl ZenUnderTest, tenant_id: &str, n: usize) -> String {
    use zen::proto::zen::tenancy::v1 as tenancy;
    let mut request = tonic::Request::new(tenancy::CreateClusterRequest {
        tenant_id: tenant_id.into(),
        cluster: Some(tenancy::Cluster {
            name: format!("cluster-{n}"),
            ..Default::default()
        }),
    });
    request
        .metadata_mut()
        .insert("x-request-id", request_id().parse().unwrap());
    tenancy::tenancy_service_client::TenancyServiceClient::new(zen.admin().await)
        .create_cluster(request)
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap()
        .cluster_id
}
