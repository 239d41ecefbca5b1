//! Three replicas behind one address: three `zen serve` processes (the real binary) on one
//! PostgreSQL database and Redis, behind a round-robin TCP balancer, with one new connection
//! per request so that consecutive requests land on different replicas. What one replica
//! knows, the others honour:
//!
//! - **replay protection**: a signed delivery resent unchanged is answered with the event id of
//!   the first, whichever replica gets it; the same delivery id with another body is a 409;
//!   stored once;
//! - **idempotency**: a create repeated with its `X-Request-Id` gets the first answer and
//!   creates one resource;
//! - **rate limits**: a source limited to 30 deliveries/s accepts about that many from a burst
//!   spread over the three, not three times as many;
//! - **remediation dispatch**: a remediation proposed and approved through the balancer is
//!   executed exactly once by an agent connected to one replica only.
//!
//! (Watchers on every replica seeing each event once, in order: tests/gateway_ws.rs; a replica
//! killed or drained under load: tests/kill_replica.rs, tests/drain.rs.)

mod support;

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use support::balancer::{Balancer, Policy};
use support::drill::{
    assert_chain_verifies, enroll_agent, ok, propose, remediating_agent, remediation_status,
    sign_in_root, stored_events, webhook_target, zen_hmac, WebhookTarget,
};
use support::process::{Deployment, ZenProcess};
use support::{create_local_user_as_operator, request_id};

const RATE: usize = 30;

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A client that opens a new connection for every request: the balancer hands each to the
/// next replica.
fn client() -> Client {
    Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post_delivery(
    http: &Client,
    url: &str,
    secret: &str,
    nonce: &str,
    ts: i64,
    body: &str,
) -> (StatusCode, Value) {
    json_of(
        http.post(url)
            .header("content-type", "application/json")
            .header("x-timestamp", ts.to_string())
            .header("x-nonce", nonce)
            .header("x-signature", zen_hmac(secret, ts, nonce, body.as_bytes()))
            .body(body.to_owned())
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_behind_one_address_keep_every_promise() {
    // Remediation dispatch polls quickly in tests.
    std::env::set_var("ZEN_REMEDIATION_POLL_MS", "100");
    let Some(Deployment {
        replicas, database, ..
    }) = Deployment::start(3, &[]).await
    else {
        return;
    };
    let [a, b, c]: [ZenProcess; 3] = replicas.try_into().ok().unwrap();
    let balancer = Balancer::start(
        vec![a.http_addr, b.http_addr, c.http_addr],
        Policy::RoundRobin,
    )
    .await;
    let WebhookTarget {
        token,
        tenant_id,
        source_id,
        secret,
        ..
    } = webhook_target(&a, "three", json!({ "rateLimitPerSecond": 100000 })).await;
    let http = client();
    let url = balancer.url(&format!("/webhooks/{source_id}"));

    // Replay protection: the same delivery three times, then its id with another body.
    let ts = chrono::Utc::now().timestamp();
    let body = json!({ "alert": "once" }).to_string();
    let mut ids = vec![];
    for _ in 0..3 {
        let (status, answer) = post_delivery(&http, &url, &secret, "same-id", ts, &body).await;
        assert!(status.is_success(), "{status}: {answer}");
        ids.push(answer["eventIds"][0].as_str().unwrap().to_owned());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let other = json!({ "alert": "twice" }).to_string();
    let (status, answer) = post_delivery(&http, &url, &secret, "same-id", ts, &other).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let stored = stored_events(
        &http,
        &a,
        &token,
        &tenant_id,
        &format!("webhookSourceId={source_id}"),
    )
    .await;
    assert_eq!(stored.get(&ids[0]), Some(&1));
    assert_eq!(stored.len(), 1);

    // Idempotency: one X-Request-Id, three replicas, one cluster.
    let key = request_id();
    let mut clusters = vec![];
    for _ in 0..3 {
        let created = ok(http
            .post(balancer.url(&format!("/v1/tenants/{tenant_id}/clusters")))
            .bearer_auth(&token)
            .header("X-Request-Id", &key)
            .json(&json!({ "name": "prod" }))
            .send()
            .await
            .unwrap())
        .await;
        clusters.push(created["cluster"]["clusterId"].as_str().unwrap().to_owned());
    }
    assert!(clusters.iter().all(|id| *id == clusters[0]), "{clusters:?}");
    let listed = ok(http
        .get(balancer.url(&format!("/v1/tenants/{tenant_id}/clusters")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(listed["clusters"].as_array().unwrap().len(), 1, "{listed}");
    let cluster_id = clusters[0].clone();

    // Rate limits: 3 x RATE deliveries at once to a source limited to RATE/s.
    let limited = ok(http
        .patch(balancer.url(&format!(
            "/v1/tenants/{tenant_id}/webhookSources/{source_id}?updateMask=rateLimitPerSecond"
        )))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "rateLimitPerSecond": RATE }))
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(
        limited["webhookSource"]["rateLimitPerSecond"], RATE,
        "{limited}"
    );
    // The new limit reaches every replica's snapshot within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let burst_started = Instant::now();
    let burst: Vec<_> = (0..3 * RATE)
        .map(|i| {
            let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
            tokio::spawn(async move {
                let ts = chrono::Utc::now().timestamp();
                let body = json!({ "burst": i }).to_string();
                post_delivery(&http, &url, &secret, &format!("burst-{i}"), ts, &body)
                    .await
                    .0
            })
        })
        .collect();
    let mut statuses = vec![];
    for d in burst {
        statuses.push(d.await.unwrap());
    }
    let burst_took = burst_started.elapsed().as_secs_f64();
    let accepted = statuses.iter().filter(|s| s.is_success()).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(accepted + limited, statuses.len(), "{statuses:?}");
    // The bucket holds one second's worth and refills at RATE while the burst lasts.
    let allowed = RATE as f64 * (1.0 + burst_took) + 2.0;
    assert!(
        (accepted as f64) <= allowed,
        "{accepted} of {} accepted in {burst_took:.2} s at {RATE}/s: the replicas do not share the limit",
        statuses.len()
    );
    assert!(accepted >= RATE / 2, "only {accepted} accepted");

    // Remediation dispatch: the agent holds a stream to the third replica only; the
    // remediation is proposed and approved through the balancer.
    let agent_dir = enroll_agent(
        &http,
        &balancer.url(""),
        &format!("https://{}", c.grpc_addr),
        &token,
        &tenant_id,
        &cluster_id,
    )
    .await;
    let agent = tokio::spawn(remediating_agent(agent_dir.path().to_owned()));
    create_local_user_as_operator(&a, "approver", true).await;
    let approver = {
        let login = ok(http
            .post(balancer.url("/auth/local/login"))
            .json(&json!({ "username": "approver", "password": support::PASSWORD }))
            .send()
            .await
            .unwrap())
        .await;
        login["token"]["accessToken"].as_str().unwrap().to_owned()
    };
    let remediation = propose(
        &http,
        &balancer.url(""),
        &token,
        &tenant_id,
        &cluster_id,
        "RISK_LEVEL_MEDIUM",
    )
    .await;
    let remediation_id = remediation["remediationId"].as_str().unwrap().to_owned();
    let approved = ok(http
        .post(balancer.url(&format!(
            "/v1/tenants/{tenant_id}/remediations/{remediation_id}:approve"
        )))
        .bearer_auth(&approver)
        .header("X-Request-Id", request_id())
        .json(&json!({ "version": remediation["version"], "comment": "ok" }))
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(
        approved["remediation"]["status"], "REMEDIATION_STATUS_APPROVED",
        "{approved}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = remediation_status(
            &http,
            &balancer.url(""),
            &token,
            &tenant_id,
            &remediation_id,
        )
        .await;
        if status == "REMEDIATION_STATUS_SUCCEEDED" || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, "REMEDIATION_STATUS_SUCCEEDED");
    // A moment more for a second dispatch, if any replica were to send one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.abort();
    let log = std::fs::read_to_string(agent_dir.path().join("hook.log")).unwrap_or_default();
    let executions = log.matches(&remediation_id).count();
    assert_eq!(executions, 1, "the hook ran {executions} times:\n{log}");
    eprintln!(
        "three replicas: replayed delivery answered with one event id; one cluster for one \
         X-Request-Id; {accepted} of {} burst deliveries accepted in {burst_took:.2} s at \
         {RATE}/s ({limited} answered 429); remediation executed once by the agent on the \
         third replica; connections per replica: {} / {} / {}",
        statuses.len(),
        balancer.connections_to(0),
        balancer.connections_to(1),
        balancer.connections_to(2)
    );

    let token = sign_in_root(&http, &a).await;
    assert_chain_verifies(&http, &a, &token, &tenant_id).await;
    drop(balancer);
    a.stop().await;
    b.stop().await;
    c.stop().await;
    database.drop_database().await;
}
