//! A replica killed with SIGKILL, again and again, under webhook load: three `zen serve`
//! processes (the real binary) share one PostgreSQL database and Redis; 32 senders post signed
//! deliveries to all three in turn, retrying a delivery that got no answer or a 5xx on the next
//! replica with exactly the same request (same id, signature and body), as webhook providers
//! do; every 3 s the third replica is killed with `kill -9` and started again. Afterwards
//! every delivery acknowledged (2xx) is stored, exactly once, under the event id it was
//! acknowledged with, and the tenant's audit chain verifies.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use support::drill::{sign_in_root, webhook_target, WebhookTarget};
use support::process::ZenProcess;
use support::{test_redis_url, TestDatabase, ZenUnderTest};

const SENDERS: usize = 32;
const LOAD: Duration = Duration::from_secs(20);
const KILL_EVERY: Duration = Duration::from_secs(3);

/// One delivery, signed once: every retry sends exactly these bytes.
struct Delivery {
    nonce: String,
    timestamp: String,
    signature: String,
    body: String,
}

fn delivery(secret: &str, nonce: String) -> Delivery {
    use hmac::{KeyInit, Mac};
    let body = json!({ "alert": nonce }).to_string();
    let timestamp = chrono::Utc::now().timestamp();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{nonce}.").as_bytes());
    mac.update(body.as_bytes());
    Delivery {
        signature: hex::encode(mac.finalize().into_bytes()),
        timestamp: timestamp.to_string(),
        nonce,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_no_acknowledged_delivery() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let Some(redis) = test_redis_url().await else {
        return;
    };
    let common = vec![
        "--database-url".to_owned(),
        database.url.clone(),
        "--redis-url".to_owned(),
        redis,
        "--local-login".to_owned(),
        "true".to_owned(),
    ];
    let first = ZenProcess::spawn(&common).await;
    let mut replica = common.clone();
    replica.extend(first.replica_args());
    let second = ZenProcess::spawn(&replica).await;
    let victim = ZenProcess::spawn(&replica).await;
    let WebhookTarget {
        http,
        tenant_id,
        source_id,
        secret,
        ..
    } = webhook_target(&first, "kill9", json!({ "rateLimitPerSecond": 100000 })).await;

    let urls = Arc::new(RwLock::new(vec![
        first.http_url(&format!("/webhooks/{source_id}")),
        second.http_url(&format!("/webhooks/{source_id}")),
        victim.http_url(&format!("/webhooks/{source_id}")),
    ]));
    // Delivery nonce -> the event id it was acknowledged with.
    let acknowledged = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let retries = Arc::new(Mutex::new(0usize));
    let started = Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|worker| {
            let (urls, acknowledged, retries, secret) = (
                urls.clone(),
                acknowledged.clone(),
                retries.clone(),
                secret.clone(),
            );
            tokio::spawn(async move {
                let client = Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut n = 0usize;
                let mut turn = worker;
                while started.elapsed() < LOAD {
                    n += 1;
                    let d = delivery(&secret, format!("w{worker}-{n}"));
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        turn += 1;
                        let url = {
                            let urls = urls.read().unwrap();
                            urls[turn % urls.len()].clone()
                        };
                        let answer = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("x-timestamp", &d.timestamp)
                            .header("x-nonce", &d.nonce)
                            .header("x-signature", &d.signature)
                            .body(d.body.clone())
                            .send()
                            .await;
                        match answer {
                            Ok(response) if response.status().is_success() => {
                                let answer: Value = response.json().await.unwrap();
                                let id = answer["eventIds"][0].as_str().unwrap().to_owned();
                                acknowledged.lock().unwrap().insert(d.nonce.clone(), id);
                                break;
                            }
                            Ok(response)
                                if response.status().is_server_error()
                                    || response.status() == StatusCode::TOO_MANY_REQUESTS => {}
                            Ok(response) => panic!(
                                "delivery {}: {} {}",
                                d.nonce,
                                response.status(),
                                response.text().await.unwrap_or_default()
                            ),
                            // Connection refused or reset: the replica was killed.
                            Err(_) => {}
                        }
                        *retries.lock().unwrap() += 1;
                        assert!(
                            Instant::now() < deadline,
                            "delivery {} never acknowledged",
                            d.nonce
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();

    // The killer: kill -9 the third replica every few seconds and start it again.
    let mut victim = Some(victim);
    let mut kills = 0;
    while started.elapsed() < LOAD {
        tokio::time::sleep(KILL_EVERY).await;
        victim.take().unwrap().kill();
        kills += 1;
        let next = ZenProcess::spawn(&replica).await;
        urls.write().unwrap()[2] = next.http_url(&format!("/webhooks/{source_id}"));
        victim = Some(next);
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    let retries = *retries.lock().unwrap();
    eprintln!(
        "{} deliveries acknowledged, {retries} retries, {kills} kills in {:?}",
        acknowledged.len(),
        started.elapsed()
    );
    assert!(kills >= 3, "the victim was killed {kills} times");
    assert!(acknowledged.len() > 100, "the load ran");

    // Every acknowledged delivery is stored once, under the id it was acknowledged with.
    let token = sign_in_root(&http, &second).await;
    let mut stored: HashMap<String, usize> = HashMap::new();
    let mut page_token = String::new();
    loop {
        let response = http
            .get(second.http_url(&format!(
                "/v1/tenants/{tenant_id}/events?webhookSourceId={source_id}&pageSize=500&pageToken={page_token}"
            )))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let page: Value = response.json().await.unwrap();
        for event in page["events"].as_array().into_iter().flatten() {
            *stored
                .entry(event["eventId"].as_str().unwrap().to_owned())
                .or_default() += event["count"].as_i64().unwrap_or(1) as usize;
        }
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => page_token = next.to_owned(),
            _ => break,
        }
    }
    let ids: HashSet<&String> = acknowledged.values().collect();
    assert_eq!(
        ids.len(),
        acknowledged.len(),
        "two deliveries were acknowledged with one event id"
    );
    for (nonce, id) in &acknowledged {
        assert_eq!(
            stored.get(id),
            Some(&1),
            "delivery {nonce} (event {id}) is not stored exactly once"
        );
    }

    // The audit chain verifies.
    let verified: Value = http
        .post(second.http_url(&format!("/v1/tenants/{tenant_id}/auditLogs:verify")))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["ok"], true, "{verified}");

    drop(victim);
    first.stop().await;
    second.stop().await;
    database.drop_database().await;
}
