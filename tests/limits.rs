//! Rate limits over real sockets (docs/LIMITS.md): anonymous endpoints per client address,
//! people per user, tenants per their `requests_per_second` quota, webhook requests that fail
//! verification per address (so a stranger cannot spend a sender's budget), and a quota changed
//! through one replica applying on the other within a second (PostgreSQL + Redis).

mod support;

use std::time::{Duration, Instant};

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use support::drill::{start_redis, stop_redis, zen_hmac, PrivateRedis};
use support::{
    create_local_user_as_operator, http_client, request_id, two_replicas, TestZen, PASSWORD,
};
use zen::config::{GlobalArgs, ServeArgs};

async fn login(zen: &TestZen) -> String {
    login_as(zen, "root").await
}

async fn login_as(zen: &TestZen, username: &str) -> String {
    let r = http_client()
        .post(zen.http_url("/auth/local/login"))
        .json(&json!({ "username": username, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    body["token"]["accessToken"].as_str().unwrap().to_owned()
}

async fn create_tenant(zen: &TestZen, token: &str, name: &str) -> String {
    let r = http_client()
        .post(zen.http_url("/v1/tenants"))
        .bearer_auth(token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    body["tenant"]["tenantId"].as_str().unwrap().to_owned()
}

/// Asserts a 429 with every header a client needs, naming `limit`.
async fn assert_limited(response: Response, limit: &str) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let retry: u64 = header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(
        header("ratelimit-policy").starts_with(&format!("\"{limit}\";q=")),
        "{}",
        header("ratelimit-policy")
    );
    assert!(
        header("ratelimit").starts_with(&format!("\"{limit}\";r=0;t=")),
        "{}",
        header("ratelimit")
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["reason"], "RATE_LIMITED", "{problem}");
    assert_eq!(problem["metadata"]["limit"], limit, "{problem}");
}

/// Sends `request()` until it is answered 429 (at most `max` times); the statuses before.
async fn until_limited<F, Fut>(max: usize, request: F) -> (Vec<StatusCode>, Response)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let mut before = Vec::new();
    for _ in 0..max {
        let response = request().await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return (before, response);
        }
        before.push(response.status());
    }
    panic!("not limited after {max} requests: {before:?}");
}

#[tokio::test]
async fn anonymous_endpoints_are_limited_per_client_address() {
    let zen = TestZen::start_with(
        GlobalArgs::default(),
        ServeArgs {
            local_login: Some(true),
            rate_limit_anonymous_rps: Some(2),
            trusted_proxies: Some("127.0.0.1/32".into()),
            ..Default::default()
        },
    )
    .await;
    let http = http_client();
    let refresh = |address: &'static str| {
        let http = http.clone();
        let url = zen.http_url("/auth/refresh");
        async move {
            http.post(url)
                .header("X-Forwarded-For", address)
                .json(&json!({ "refreshToken": "not-a-refresh-token" }))
                .send()
                .await
                .unwrap()
        }
    };
    // 2 per second, bursts of 4: the fifth request at once is refused.
    let (before, limited) = until_limited(10, || refresh("198.51.100.7")).await;
    assert_eq!(before.len(), 4, "{before:?}");
    assert!(before.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    assert_limited(limited, "address").await;
    // Another address has its own budget.
    assert_eq!(
        refresh("203.0.113.9").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Half a second later one more unit is back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        refresh("198.51.100.7").await.status(),
        StatusCode::UNAUTHORIZED
    );
    zen.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn people_and_tenants_are_limited() {
    let zen = TestZen::start_with(
        GlobalArgs::default(),
        ServeArgs {
            local_login: Some(true),
            rate_limit_user_rps: Some(5),
            ..Default::default()
        },
    )
    .await;
    create_local_user_as_operator(&zen, "root", true).await;
    let token = login(&zen).await;
    let http = http_client();
    let list = || {
        http.get(zen.http_url("/v1/tenants"))
            .bearer_auth(&token)
            .send()
    };
    let burst = Instant::now();
    let (before, limited) = until_limited(40, || async { list().await.unwrap() }).await;
    // The burst of 10, and what refilled while it was being spent (a loaded machine answers
    // slowly enough for a unit or two to come back).
    let refilled = (burst.elapsed().as_secs_f64() * 5.0).floor() as usize;
    assert!(
        (10..=10 + refilled).contains(&before.len()),
        "5 per second, bursts of 10 (+{refilled} refilled): {before:?}"
    );
    assert_limited(limited, "user").await;

    // A tenant limited to 2 requests per second (bursts of 4), whatever its people's own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tenant = create_tenant(&zen, &token, "metered").await;
    let r = http
        .patch(zen.http_url(&format!(
            "/v1/tenants/{tenant}?updateMask=quotas.requestsPerSecond"
        )))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "quotas": { "requestsPerSecond": 2 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    // The quota is read again within a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let events = || {
        http.get(zen.http_url(&format!("/v1/tenants/{tenant}/events")))
            .bearer_auth(&token)
            .send()
    };
    // Someone outside the tenant naming it in refused calls spends none of its budget.
    create_local_user_as_operator(&zen, "mallory", false).await;
    let mallory = login_as(&zen, "mallory").await;
    for _ in 0..10 {
        let r = http
            .get(zen.http_url(&format!("/v1/tenants/{tenant}/events")))
            .bearer_auth(&mallory)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    let (before, limited) = until_limited(10, || async { events().await.unwrap() }).await;
    assert!(
        (4..=5).contains(&before.len()),
        "the whole burst of 4 (and perhaps one refill): {before:?}"
    );
    assert_limited(limited, "tenant").await;
    // Calls outside the tenant are not its to pay.
    assert_eq!(list().await.unwrap().status(), StatusCode::OK);
    zen.running.shutdown().await.unwrap();
}

async fn deliver(
    http: &Client,
    zen: &TestZen,
    path: &str,
    from: &str,
    signature: &str,
) -> Response {
    let body = format!("{{\"n\":\"{}\"}}", request_id());
    let now = chrono::Utc::now().timestamp();
    let nonce = request_id();
    let signature = if signature.is_empty() {
        "0".repeat(64)
    } else {
        zen_hmac(signature, now, &nonce, body.as_bytes())
    };
    http.post(zen.http_url(path))
        .header("X-Forwarded-For", from)
        .header("content-type", "application/json")
        .header("x-timestamp", now.to_string())
        .header("x-nonce", nonce)
        .header("x-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A stranger who knows a source's URL spends only the budget of their own address: the
/// sender keeps delivering.
#[tokio::test]
async fn forged_deliveries_cannot_spend_the_senders_budget() {
    let zen = TestZen::start_with(
        GlobalArgs::default(),
        ServeArgs {
            local_login: Some(true),
            rate_limit_unverified_webhooks_rps: Some(1),
            trusted_proxies: Some("127.0.0.1/32".into()),
            ..Default::default()
        },
    )
    .await;
    create_local_user_as_operator(&zen, "root", true).await;
    let token = login(&zen).await;
    let tenant = create_tenant(&zen, &token, "hooks").await;
    let http = http_client();
    let created: Value = http
        .post(zen.http_url(&format!("/v1/tenants/{tenant}/webhookSources")))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        .json(
            &json!({ "name": "alerts", "enabled": true, "rateLimitPerSecond": 5,
                       "verification": { "scheme": "WEBHOOK_SCHEME_ZEN_HMAC" } }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let path = format!(
        "/webhooks/{}",
        created["webhookSource"]["sourceId"].as_str().unwrap()
    );

    // The stranger: two forgeries (the burst) are refused as forgeries, then the address is
    // refused before verification.
    let (before, limited) =
        until_limited(20, || deliver(&http, &zen, &path, "198.51.100.7", "")).await;
    assert_eq!(before, [StatusCode::UNAUTHORIZED; 2]);
    assert_limited(limited, "unverified_webhooks").await;
    // The source's recent deliveries show the two forgeries, not the flood refused after them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log: Value = http
        .get(zen.http_url(&format!(
            "/v1/tenants/{tenant}/webhookSources/{}/deliveries",
            created["webhookSource"]["sourceId"].as_str().unwrap()
        )))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reasons: Vec<&str> = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(reasons, ["bad_signature", "bad_signature"], "{log}");
    // The sender, from its own address, still has the source's whole budget: 5 per second.
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            deliver(&http, &zen, &path, "203.0.113.9", &secret)
                .await
                .status(),
        );
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(&statuses[..5], [StatusCode::ACCEPTED; 5], "{statuses:?}");
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    zen.running.shutdown().await.unwrap();
}

/// Two replicas on one PostgreSQL and Redis: the tenant's limit is one budget, and a quota
/// changed through one applies on the other within a second.
#[tokio::test]
async fn replicas_share_budgets_and_quota_changes() {
    let serve = ServeArgs {
        local_login: Some(true),
        rate_limit_user_rps: Some(1000),
        ..Default::default()
    };
    let Some((a, b, database)) = two_replicas(serve).await else {
        return;
    };
    create_local_user_as_operator(&a, "root", true).await;
    let token = login(&a).await;
    let tenant = create_tenant(&a, &token, "shared").await;
    let http = http_client();
    let set_quota = |rps: i32| {
        http.patch(a.http_url(&format!(
            "/v1/tenants/{tenant}?updateMask=quotas.requestsPerSecond"
        )))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "quotas": { "requestsPerSecond": rps } }))
        .send()
    };
    assert_eq!(set_quota(20).await.unwrap().status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // 20 per second, bursts of 40, one budget whichever replica serves: over 3 s, alternating
    // replicas as fast as they answer, about 40 + 3 × 20 = 100 are served (±10 %).
    let started = Instant::now();
    let (mut served, mut limited) = (0, 0);
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let replica = if i % 2 == 0 { &a } else { &b };
        i += 1;
        let r = http
            .get(replica.http_url(&format!("/v1/tenants/{tenant}/events")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::OK => served += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let expected = 40.0 + started.elapsed().as_secs_f64() * 20.0;
    assert!(
        (served as f64 - expected).abs() <= expected * 0.1,
        "served {served}, limited {limited}, expected about {expected:.0}"
    );
    assert!(limited > 0);

    // Lowered through A: B applies it within a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(set_quota(1).await.unwrap().status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (before, response) = until_limited(10, || async {
        http.get(b.http_url(&format!("/v1/tenants/{tenant}/events")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
    })
    .await;
    assert!(before.len() <= 2, "1 per second, bursts of 2: {before:?}");
    assert_limited(response, "tenant").await;
    b.running.shutdown().await.unwrap();
    a.running.shutdown().await.unwrap();
    database.drop_database().await;
}

async fn local_login(zen: &TestZen) -> Response {
    http_client()
        .post(zen.http_url("/auth/local/login"))
        .json(&json!({ "username": "root", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
}

/// Redis stopped during a run: sign-in (anonymous) fails closed with 503 and `Retry-After`,
/// webhook requests go on metered per replica, both counted; sign-in works again once Redis
/// is back. A private Redis, never the shared one.
#[tokio::test]
async fn a_stopped_redis_closes_sign_in_and_leaves_webhooks_metered_locally() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let port = redis.0;
    let zen = TestZen::start_with(
        GlobalArgs {
            redis_url: Some(redis.url()),
            ..Default::default()
        },
        ServeArgs {
            local_login: Some(true),
            rate_limit_anonymous_rps: Some(100),
            rate_limit_unverified_webhooks_rps: Some(100),
            dependency_timeout_ms: Some(500),
            ..Default::default()
        },
    )
    .await;
    create_local_user_as_operator(&zen, "root", true).await;
    assert_eq!(local_login(&zen).await.status(), StatusCode::OK);

    stop_redis(port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = local_login(&zen).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["reason"], "RATE_LIMITER_UNAVAILABLE", "{problem}");
    // A webhook request is metered on this replica instead (then answered as the outage
    // allows: here the unknown source is simply not found).
    let delivery = http_client()
        .post(zen.http_url(&format!("/webhooks/{}", uuid::Uuid::new_v4())))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_ne!(delivery.status(), StatusCode::TOO_MANY_REQUESTS);
    let metrics = reqwest::get(zen.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("zen_rate_limit_cache_errors_total")
                && l.contains("mode=\"fail_closed\"")
                && l.contains("subject=\"address\"")),
        "{metrics}"
    );

    // Redis back: sign-in works again.
    assert!(start_redis(port));
    let started = Instant::now();
    loop {
        let status = local_login(&zen).await.status();
        if status == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "sign-in still {status} after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(redis);
    zen.running.shutdown().await.unwrap();
}

/// Creates a `zen-hmac` source in a tenant whose daily event quota is `max`; returns the
/// delivery path and the secret.
async fn tenant_with_daily_quota(
    zen: &TestZen,
    token: &str,
    name: &str,
    max: i64,
) -> (String, String) {
    let tenant = create_tenant(zen, token, name).await;
    let http = http_client();
    let r = http
        .patch(zen.http_url(&format!(
            "/v1/tenants/{tenant}?updateMask=quotas.maxEventsPerDay"
        )))
        .bearer_auth(token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "quotas": { "maxEventsPerDay": max.to_string() } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let created: Value = http
        .post(zen.http_url(&format!("/v1/tenants/{tenant}/webhookSources")))
        .bearer_auth(token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "name": "alerts", "enabled": true,
                       "verification": { "scheme": "WEBHOOK_SCHEME_ZEN_HMAC" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Quotas are read again within a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    (
        format!(
            "/webhooks/{}",
            created["webhookSource"]["sourceId"].as_str().unwrap()
        ),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

fn seconds_to_midnight() -> i64 {
    let now = chrono::Utc::now();
    let midnight = (now.date_naive() + chrono::Days::new(1))
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    (midnight - now).num_seconds()
}

#[tokio::test]
async fn the_daily_event_quota_refuses_further_events_until_midnight() {
    let zen = TestZen::start_with(
        GlobalArgs::default(),
        ServeArgs {
            local_login: Some(true),
            ..Default::default()
        },
    )
    .await;
    create_local_user_as_operator(&zen, "root", true).await;
    let token = login(&zen).await;
    let (path, secret) = tenant_with_daily_quota(&zen, &token, "daily", 3).await;
    let http = http_client();
    for _ in 0..3 {
        let r = deliver(&http, &zen, &path, "203.0.113.9", &secret).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let refused = deliver(&http, &zen, &path, "203.0.113.9", &secret).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (retry - seconds_to_midnight()).abs() <= 5,
        "Retry-After {retry} s, midnight in {} s",
        seconds_to_midnight()
    );
    assert_eq!(
        refused.headers()["ratelimit-policy"],
        "\"daily_events\";q=3;w=86400"
    );
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["reason"], "EVENT_QUOTA_EXCEEDED", "{problem}");
    zen.running.shutdown().await.unwrap();
}

/// The counter is in the cache; when the cache loses it (here Redis is flushed), it starts
/// again from the events the store holds for the day, so the quota still holds.
#[tokio::test]
async fn the_daily_event_counter_is_rebuilt_from_the_store_when_the_cache_loses_it() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let port = redis.0;
    let zen = TestZen::start_with(
        GlobalArgs {
            redis_url: Some(redis.url()),
            ..Default::default()
        },
        ServeArgs {
            local_login: Some(true),
            ..Default::default()
        },
    )
    .await;
    create_local_user_as_operator(&zen, "root", true).await;
    let token = login(&zen).await;
    let (path, secret) = tenant_with_daily_quota(&zen, &token, "rebuilt", 3).await;
    let http = http_client();
    for _ in 0..2 {
        let r = deliver(&http, &zen, &path, "203.0.113.9", &secret).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let flushed = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "flushall"])
        .status()
        .unwrap();
    assert!(flushed.success());
    let third = deliver(&http, &zen, &path, "203.0.113.9", &secret).await;
    assert_eq!(third.status(), StatusCode::ACCEPTED);
    let fourth = deliver(&http, &zen, &path, "203.0.113.9", &secret).await;
    assert_eq!(fourth.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(redis);
    zen.running.shutdown().await.unwrap();
}
