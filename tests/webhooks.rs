//! Webhook sources end to end over HTTP, the way a tenant admin and a third-party tool see
//! them: Zen in-process on real sockets, sources managed through REST with a signed-in admin,
//! deliveries posted to `/webhooks/{id}` and verified by the ingest service behind the gateway.
//! The `zen-hmac` scheme is Zen's own, so these tests sign with the `hmac` crate; the provider
//! schemes are checked against the providers' own libraries in
//! tests/conformance/test_webhooks.py. Two replicas sharing PostgreSQL and Redis share replay
//! memory and configuration changes.

mod support;

use std::time::Duration;

use hmac::{KeyInit, Mac};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use support::drill::zen_hmac;
use support::{
    create_local_user_as_operator, http_client, request_id, two_replicas, TestZen, PASSWORD,
};
use zen::config::{GlobalArgs, ServeArgs};

const LEGACY_KEY: &str = "legacy-agent-master-key-of-at-least-32-chars";

fn serve_args() -> ServeArgs {
    ServeArgs {
        local_login: Some(true),
        legacy_agent_key: Some(LEGACY_KEY.into()),
        ..Default::default()
    }
}

async fn body(response: Response, status: StatusCode) -> Value {
    let got = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A platform admin signed in over REST with a tenant of their own.
struct Admin {
    http: Client,
    token: String,
    tenant_id: String,
}

impl Admin {
    async fn new(zen: &TestZen, tenant: &str) -> Self {
        create_local_user_as_operator(zen, "root", true).await;
        Self::login(zen, Some(tenant)).await
    }

    async fn login(zen: &TestZen, tenant: Option<&str>) -> Self {
        let http = http_client();
        let login = http
            .post(zen.http_url("/auth/local/login"))
            .json(&json!({ "username": "root", "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        let token = body(login, StatusCode::OK).await["token"]["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let tenant_id = match tenant {
            Some(name) => {
                let created = http
                    .post(zen.http_url("/v1/tenants"))
                    .bearer_auth(&token)
                    .header("X-Request-Id", request_id())
                    .json(&json!({ "name": name }))
                    .send()
                    .await
                    .unwrap();
                body(created, StatusCode::OK).await["tenant"]["tenantId"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
            None => String::new(),
        };
        Self {
            http,
            token,
            tenant_id,
        }
    }

    async fn post(&self, zen: &TestZen, path: &str, payload: &Value) -> Response {
        self.http
            .post(zen.http_url(&format!("/v1/tenants/{}{path}", self.tenant_id)))
            .bearer_auth(&self.token)
            .header("X-Request-Id", request_id())
            .json(payload)
            .send()
            .await
            .unwrap()
    }

    async fn patch(&self, zen: &TestZen, path: &str, payload: &Value) -> Response {
        self.http
            .patch(zen.http_url(&format!("/v1/tenants/{}{path}", self.tenant_id)))
            .bearer_auth(&self.token)
            .header("X-Request-Id", request_id())
            .json(payload)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, zen: &TestZen, path: &str) -> Value {
        let response = self
            .http
            .get(zen.http_url(&format!("/v1/tenants/{}{path}", self.tenant_id)))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        body(response, StatusCode::OK).await
    }

    /// Creates a source; returns (source, secret).
    async fn create_source(&self, zen: &TestZen, source: Value) -> (Value, String) {
        let created = body(
            self.post(zen, "/webhookSources", &source).await,
            StatusCode::OK,
        )
        .await;
        let secret = created["secret"]
            .as_str()
            .expect("the secret, once")
            .to_owned();
        (created["webhookSource"].clone(), secret)
    }

    async fn events_of(&self, zen: &TestZen, source_id: &str) -> Vec<Value> {
        self.get(zen, &format!("/events?webhookSourceId={source_id}"))
            .await["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// A source's recent deliveries as `(outcome, http status, reason)`, newest first, once `count`
/// of them are logged (they are written off the delivery's path).
async fn deliveries_of(
    admin: &Admin,
    zen: &TestZen,
    source_id: &str,
    count: usize,
) -> Vec<(String, i64, String)> {
    let started = std::time::Instant::now();
    loop {
        let listed = admin
            .get(zen, &format!("/webhookSources/{source_id}/deliveries"))
            .await;
        let deliveries: Vec<(String, i64, String)> = listed["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|d| {
                (
                    d["outcome"].as_str().unwrap_or_default().to_owned(),
                    d["httpStatus"].as_i64().unwrap_or_default(),
                    d["reason"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        if deliveries.len() >= count || started.elapsed() > std::time::Duration::from_secs(10) {
            return deliveries;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Posts a `zen-hmac` delivery signed with `secret`.
async fn deliver(
    http: &Client,
    zen: &TestZen,
    source_id: &str,
    secret: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Response {
    http.post(zen.http_url(&format!("/webhooks/{source_id}")))
        .header("content-type", "application/json")
        .header("x-timestamp", timestamp.to_string())
        .header("x-nonce", nonce)
        .header("x-signature", zen_hmac(secret, timestamp, nonce, body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

fn zen_hmac_source(name: &str) -> Value {
    json!({ "name": name, "enabled": true, "verification": { "scheme": "WEBHOOK_SCHEME_ZEN_HMAC" } })
}

#[tokio::test]
async fn sources_are_managed_with_checked_settings_and_secrets_shown_once() {
    let zen = TestZen::start_with(GlobalArgs::default(), serve_args()).await;
    let admin = Admin::new(&zen, "acme").await;

    let (source, secret) = admin
        .create_source(
            &zen,
            json!({
                "name": "scanner",
                "displayName": "Nightly scanner",
                "enabled": true,
                "verification": { "scheme": "WEBHOOK_SCHEME_ZEN_HMAC" },
                "rateLimitPerSecond": 50,
            }),
        )
        .await;
    assert!(secret.len() >= 32, "a generated secret: {secret}");
    let id = source["sourceId"].as_str().unwrap();
    assert!(source["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/webhooks/{id}")));
    assert_eq!(source["timestampTolerance"], "300s", "{source}");
    assert_eq!(source["dedupWindow"], "86400s", "{source}");
    assert_eq!(source["secrets"].as_array().unwrap().len(), 1);
    let read = admin.get(&zen, &format!("/webhookSources/{id}")).await;
    assert!(
        !read.to_string().contains(&secret),
        "the secret never comes back"
    );
    admin.create_source(&zen, zen_hmac_source("alpha")).await;
    admin.create_source(&zen, zen_hmac_source("zulu")).await;
    // Ordered by name, page by page.
    let first = admin.get(&zen, "/webhookSources?pageSize=1").await;
    assert_eq!(first["webhookSources"][0]["name"], "alpha", "{first}");
    let token = first["nextPageToken"].as_str().unwrap();
    let second = admin
        .get(
            &zen,
            &format!("/webhookSources?pageSize=1&pageToken={token}"),
        )
        .await;
    assert_eq!(second["webhookSources"][0]["name"], "scanner", "{second}");

    // Bad settings are field violations naming the field.
    for (payload, field) in [
        (
            json!({ "name": "a-source", "verification": {} }),
            "webhook_source.verification.scheme",
        ),
        (
            // A cross-field rule (CEL) names the message it applies to.
            json!({ "name": "a-source", "verification": { "scheme": "WEBHOOK_SCHEME_GENERIC_HMAC" } }),
            "webhook_source.verification",
        ),
        (
            json!({ "name": "a-source", "verification": { "scheme": "WEBHOOK_SCHEME_GITHUB" }, "secret": "short" }),
            "webhook_source.secret",
        ),
        (
            json!({ "name": "a-source", "verification": { "scheme": "WEBHOOK_SCHEME_GITHUB" },
                    "jsonSchema": { "type": "no-such-type" } }),
            "webhook_source.json_schema",
        ),
        (
            json!({ "name": "a-source", "verification": { "scheme": "WEBHOOK_SCHEME_GITHUB" },
                    "mapping": { "fields": [{ "target": "MAPPED_FIELD_TITLE", "pointer": "no-slash" }] } }),
            "webhook_source.mapping.fields[0].pointer",
        ),
    ] {
        let problem = body(
            admin.post(&zen, "/webhookSources", &payload).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{problem}"))
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        // The gateway names fields as JSON does (lowerCamel), the service as the proto does.
        let plain = |f: &str| f.replace('_', "").to_ascii_lowercase();
        assert!(
            fields.iter().any(|f| plain(f).starts_with(&plain(field))),
            "{payload}: expected a violation of {field}, got {problem}"
        );
    }

    // The answer holding the secret is never kept for an idempotent replay.
    let key = request_id();
    let create = |name: &'static str| {
        admin
            .http
            .post(zen.http_url(&format!("/v1/tenants/{}/webhookSources", admin.tenant_id)))
            .bearer_auth(&admin.token)
            .header("X-Request-Id", key.clone())
            .json(&zen_hmac_source(name))
            .send()
    };
    body(create("once").await.unwrap(), StatusCode::OK).await;
    let repeat = body(create("once").await.unwrap(), StatusCode::CONFLICT).await;
    assert_eq!(repeat["reason"], "ANSWER_NOT_REPLAYABLE", "{repeat}");
    assert!(repeat.get("secret").is_none());

    // A source of one tenant does not exist under another's path.
    let other = Admin::login(&zen, Some("other")).await;
    let foreign = other
        .http
        .get(zen.http_url(&format!(
            "/v1/tenants/{}/webhookSources/{id}",
            other.tenant_id
        )))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);

    // The scheme cannot change under the source's secrets.
    let rescheme = admin
        .patch(
            &zen,
            &format!("/webhookSources/{id}?updateMask=verification"),
            &json!({ "verification": { "scheme": "WEBHOOK_SCHEME_BEARER" }, "version": source["version"] }),
        )
        .await;
    assert_eq!(rescheme.status(), StatusCode::BAD_REQUEST);

    // Partial update with a mask; the version is checked.
    let updated = body(
        admin
            .patch(
                &zen,
                &format!("/webhookSources/{id}?updateMask=rateLimitPerSecond,enabled"),
                &json!({ "rateLimitPerSecond": 7, "enabled": false, "version": source["version"] }),
            )
            .await,
        StatusCode::OK,
    )
    .await["webhookSource"]
        .clone();
    assert_eq!(updated["rateLimitPerSecond"], 7);
    assert_ne!(updated["enabled"], true);
    let stale = admin
        .patch(
            &zen,
            &format!("/webhookSources/{id}?updateMask=enabled"),
            &json!({ "enabled": true, "version": source["version"] }),
        )
        .await;
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    // Without a mask, the fields the body names change, proto3 defaults included; a field
    // that cannot change (the name) sent back with the resource is left out of the mask.
    let cleared = body(
        admin
            .patch(
                &zen,
                &format!("/webhookSources/{id}"),
                &json!({ "rateLimitPerSecond": 0, "name": "scanner", "version": updated["version"] }),
            )
            .await,
        StatusCode::OK,
    )
    .await["webhookSource"]
        .clone();
    assert!(
        cleared.get("rateLimitPerSecond").is_none_or(|v| v == 0),
        "{cleared}"
    );
    assert_ne!(cleared["enabled"], true, "untouched: {cleared}");

    // A disabled source refuses deliveries; deletion makes it unknown.
    let http = http_client();
    let refused = deliver(&http, &zen, id, &secret, now(), "n-1", b"{}").await;
    assert_eq!(
        refused.status(),
        StatusCode::BAD_REQUEST,
        "FAILED_PRECONDITION"
    );
    let deleted = admin
        .http
        .delete(zen.http_url(&format!(
            "/v1/tenants/{}/webhookSources/{id}",
            admin.tenant_id
        )))
        .bearer_auth(&admin.token)
        .header("X-Request-Id", request_id())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let gone = deliver(&http, &zen, id, &secret, now(), "n-2", b"{}").await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let unknown = deliver(&http, &zen, &request_id(), &secret, now(), "n-3", b"{}").await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    zen.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn deliveries_are_verified_deduplicated_and_refused_generically() {
    let zen = TestZen::start_with(GlobalArgs::default(), serve_args()).await;
    let admin = Admin::new(&zen, "acme").await;
    let (source, secret) = admin.create_source(&zen, zen_hmac_source("alerts")).await;
    let id = source["sourceId"].as_str().unwrap();
    let http = http_client();
    let payload = br#"{"alert":"port scan","severity":"high"}"#;

    let accepted = deliver(&http, &zen, id, &secret, now(), "delivery-1", payload).await;
    let accepted = body(accepted, StatusCode::ACCEPTED).await;
    assert_eq!(
        accepted["outcome"], "DELIVERY_OUTCOME_ACCEPTED",
        "{accepted}"
    );
    let event_id = accepted["eventIds"][0].as_str().unwrap().to_owned();

    // The same delivery again (a retry): 200, no second event.
    let again = deliver(&http, &zen, id, &secret, now(), "delivery-1", payload).await;
    let again = body(again, StatusCode::OK).await;
    assert_eq!(again["outcome"], "DELIVERY_OUTCOME_DUPLICATE", "{again}");
    assert_eq!(again["eventIds"][0], event_id.as_str());
    // The same delivery id with another body: a replay, refused.
    let replay = deliver(&http, &zen, id, &secret, now(), "delivery-1", b"{\"x\":1}").await;
    assert_eq!(replay.status(), StatusCode::CONFLICT);

    // Tampered body, wrong secret, stale timestamp, missing header: one generic answer.
    let mut answers = Vec::new();
    let tampered = http
        .post(zen.http_url(&format!("/webhooks/{id}")))
        .header("content-type", "application/json")
        .header("x-timestamp", now().to_string())
        .header("x-nonce", "delivery-2")
        .header(
            "x-signature",
            zen_hmac(&secret, now(), "delivery-2", payload),
        )
        .body(&b"{\"alert\":\"nothing to see\"}"[..])
        .send()
        .await
        .unwrap();
    answers.push(tampered);
    answers.push(
        deliver(
            &http,
            &zen,
            id,
            "not-the-secret-at-all",
            now(),
            "delivery-3",
            payload,
        )
        .await,
    );
    answers.push(
        deliver(
            &http,
            &zen,
            id,
            &secret,
            now() - 3600,
            "delivery-4",
            payload,
        )
        .await,
    );
    answers.push(
        http.post(zen.http_url(&format!("/webhooks/{id}")))
            .header("content-type", "application/json")
            .body(payload.to_vec())
            .send()
            .await
            .unwrap(),
    );
    let mut details = Vec::new();
    for answer in answers {
        let problem = body(answer, StatusCode::UNAUTHORIZED).await;
        details.push(problem["detail"].clone());
    }
    assert!(details.windows(2).all(|w| w[0] == w[1]), "{details:?}");

    let events = admin.events_of(&zen, id).await;
    assert_eq!(
        events.len(),
        1,
        "only the verified delivery is stored: {events:?}"
    );
    assert_eq!(events[0]["webhookSourceId"], id);
    assert_eq!(events[0]["details"]["alert"], "port scan");

    // GitHub's delivery id header is not signed: a captured request replayed with a fresh id
    // is still the same delivery.
    let (github, github_secret) = admin
        .create_source(
            &zen,
            json!({ "name": "github", "enabled": true,
                    "verification": { "scheme": "WEBHOOK_SCHEME_GITHUB" } }),
        )
        .await;
    let github_id = github["sourceId"].as_str().unwrap();
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(github_secret.as_bytes()).unwrap();
    mac.update(payload);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let mut outcomes = Vec::new();
    for delivery in ["gh-1", "gh-forged-2"] {
        let r = http
            .post(zen.http_url(&format!("/webhooks/{github_id}")))
            .header("content-type", "application/json")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", &signature)
            .body(payload.to_vec())
            .send()
            .await
            .unwrap();
        outcomes.push(r.status());
    }
    assert_eq!(outcomes, [StatusCode::ACCEPTED, StatusCode::OK]);
    assert_eq!(admin.events_of(&zen, github_id).await.len(), 1);

    // Not JSON: 400 after verification.
    let not_json = deliver(&http, &zen, id, &secret, now(), "delivery-5", b"not json").await;
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);

    // Every accepted and refused delivery is in the tenant's audit chain, which verifies.
    let audit = admin
        .get(
            &zen,
            &format!("/auditLogs?action=webhook.receive&resourceId={id}&pageSize=100"),
        )
        .await;
    let records = audit["auditRecords"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let outcome = |o: &str| records.iter().filter(|r| r["outcome"] == o).count();
    assert_eq!(
        outcome("AUDIT_OUTCOME_SUCCESS"),
        2,
        "stored and redelivered: {audit}"
    );
    assert_eq!(
        outcome("AUDIT_OUTCOME_DENIED"),
        5,
        "replay and four failures: {audit}"
    );
    assert!(records
        .iter()
        .all(|r| r["actor"]["type"] == "ACTOR_TYPE_WEBHOOK_SOURCE" && r["actor"]["id"] == id));
    let verified = body(
        admin.post(&zen, "/auditLogs:verify", &json!({})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(verified["ok"], true, "{verified}");

    // The source's recent deliveries say what became of each, newest first, with the status
    // the sender got and the precise reason of each refusal (the sender saw only the generic
    // one).
    let logged = deliveries_of(&admin, &zen, id, 8).await;
    let expected = [
        ("DELIVERY_OUTCOME_REFUSED", 400, "invalid"),
        ("DELIVERY_OUTCOME_REFUSED", 401, "missing_header"),
        ("DELIVERY_OUTCOME_REFUSED", 401, "stale_timestamp"),
        ("DELIVERY_OUTCOME_REFUSED", 401, "bad_signature"),
        ("DELIVERY_OUTCOME_REFUSED", 401, "bad_signature"),
        ("DELIVERY_OUTCOME_REFUSED", 409, "replayed"),
        ("DELIVERY_OUTCOME_DUPLICATE", 200, ""),
        ("DELIVERY_OUTCOME_ACCEPTED", 202, ""),
    ]
    .map(|(o, s, r)| (o.to_owned(), s, r.to_owned()));
    assert_eq!(logged, expected);
    // The tenant is told the precise failure the sender was not.
    let refused = admin
        .get(&zen, &format!("/webhookSources/{id}/deliveries"))
        .await["deliveries"][3]
        .clone();
    assert_eq!(
        refused["message"], "no signature matches any secret",
        "{refused}"
    );
    let listed = admin
        .get(&zen, &format!("/webhookSources/{id}/deliveries?pageSize=1"))
        .await;
    let newest = &listed["deliveries"];
    assert_eq!(newest.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(newest[0]["bodyBytes"], "8", "{listed}");
    let oldest = admin
        .get(&zen, &format!("/webhookSources/{id}/deliveries"))
        .await["deliveries"][7]
        .clone();
    assert_eq!(oldest["eventIds"][0], event_id.as_str(), "{oldest}");
    // GitHub's own delivery ids are shown.
    let github_log = admin
        .get(&zen, &format!("/webhookSources/{github_id}/deliveries"))
        .await;
    let ids: Vec<&str> = github_log["deliveries"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["senderDeliveryId"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ids, ["gh-forged-2", "gh-1"], "{github_log}");
    // Another tenant's admin cannot read them: the source is not theirs.
    let stranger = Admin::login(&zen, Some("umbrella")).await;
    let foreign = stranger
        .http
        .get(zen.http_url(&format!(
            "/v1/tenants/{}/webhookSources/{id}/deliveries",
            stranger.tenant_id
        )))
        .bearer_auth(&stranger.token)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    zen.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_until_it_expires() {
    let zen = TestZen::start_with(GlobalArgs::default(), serve_args()).await;
    let admin = Admin::new(&zen, "acme").await;
    let (source, first) = admin.create_source(&zen, zen_hmac_source("rotating")).await;
    let id = source["sourceId"].as_str().unwrap();
    let http = http_client();

    let rotated = body(
        admin
            .post(
                &zen,
                &format!("/webhookSources/{id}:rotateSecret"),
                &json!({}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let second = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert!(rotated["oldSecretExpireTime"].is_string(), "{rotated}");
    assert_eq!(
        rotated["webhookSource"]["secrets"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    for (n, secret) in [&first, &second].into_iter().enumerate() {
        let r = deliver(&http, &zen, id, secret, now(), &format!("r-{n}"), b"{}").await;
        assert_eq!(
            r.status(),
            StatusCode::ACCEPTED,
            "secret {n} verifies in the overlap"
        );
    }

    // A rotation with no overlap retires every earlier secret at once.
    let third = body(
        admin
            .post(
                &zen,
                &format!("/webhookSources/{id}:rotateSecret"),
                &json!({ "oldSecretTtl": "0s", "secret": "a-secret-the-tool-chose-0123" }),
            )
            .await,
        StatusCode::OK,
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(third, "a-secret-the-tool-chose-0123");
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (n, secret) in [&first, &second].into_iter().enumerate() {
        let r = deliver(&http, &zen, id, secret, now(), &format!("s-{n}"), b"{}").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "secret {n} expired");
    }
    let r = deliver(&http, &zen, id, &third, now(), "s-3", b"{}").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    zen.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn schema_mapping_and_rate_limit_apply_to_payloads() {
    let zen = TestZen::start_with(GlobalArgs::default(), serve_args()).await;
    let admin = Admin::new(&zen, "acme").await;
    let falco: Value =
        serde_json::from_str(&std::fs::read_to_string("mappings/falco.json").unwrap()).unwrap();
    let (source, secret) = admin
        .create_source(
            &zen,
            json!({
                "name": "falco",
                "enabled": true,
                "verification": { "scheme": "WEBHOOK_SCHEME_ZEN_HMAC" },
                "jsonSchema": {
                    "type": "object",
                    "required": ["rule", "priority"],
                    "properties": { "priority": { "type": "string" } }
                },
                "mapping": falco,
                "rateLimitPerSecond": 3,
            }),
        )
        .await;
    let id = source["sourceId"].as_str().unwrap();
    let http = http_client();

    let invalid = deliver(
        &http,
        &zen,
        id,
        &secret,
        now(),
        "m-0",
        br#"{"priority": 5}"#,
    )
    .await;
    let problem = body(invalid, StatusCode::BAD_REQUEST).await;
    assert_eq!(problem["reason"], "SCHEMA_VALIDATION_FAILED", "{problem}");
    assert!(
        problem["errors"].as_array().unwrap().len() >= 2,
        "{problem}"
    );

    let alert = json!({
        "uuid": "6a1e2f6e-0b7e-4a35-9a4e-5d2a8c1f0b11",
        "rule": "Terminal shell in container",
        "priority": "Warning",
        "output": "A shell was spawned in a container",
        "time": "2026-11-28T10:00:00.000000000Z",
        "output_fields": { "k8s.ns.name": "payments", "k8s.pod.name": "api-7d9f", "container.id": "abc" }
    });
    let bytes = serde_json::to_vec(&alert).unwrap();
    let stored = deliver(&http, &zen, id, &secret, now(), "m-1", &bytes).await;
    body(stored, StatusCode::ACCEPTED).await;
    let events = admin.events_of(&zen, id).await;
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event["type"], "Terminal shell in container", "{event}");
    assert_eq!(event["severity"], "SEVERITY_MEDIUM", "{event}");
    assert_eq!(event["resource"]["namespace"], "payments", "{event}");
    assert_eq!(event["resource"]["name"], "api-7d9f", "{event}");
    assert_eq!(
        event["sourceEventId"],
        "6a1e2f6e-0b7e-4a35-9a4e-5d2a8c1f0b11"
    );

    // Past the source's rate limit: 429 with Retry-After, nothing stored for those.
    let mut limited = 0;
    for n in 0..12 {
        let r = deliver(
            &http,
            &zen,
            id,
            &secret,
            now(),
            &format!("burst-{n}"),
            &bytes,
        )
        .await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().get("retry-after").is_some());
            limited += 1;
        }
    }
    assert!(limited > 0, "a burst of 12 past a limit of 3/s is limited");
    zen.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn legacy_agents_post_signed_batches_for_their_cluster() {
    let zen = TestZen::start_with(GlobalArgs::default(), serve_args()).await;
    let admin = Admin::new(&zen, "acme").await;
    let cluster = body(
        admin
            .post(&zen, "/clusters", &json!({ "name": "legacy-edge" }))
            .await,
        StatusCode::OK,
    )
    .await["cluster"]
        .clone();
    let cluster_id = cluster["clusterId"].as_str().unwrap();
    let key = zen::grpc::services::webhooks::Webhooks::legacy_cluster_key(
        LEGACY_KEY,
        admin.tenant_id.parse().unwrap(),
        cluster_id.parse().unwrap(),
    );
    let batch = serde_json::to_vec(&json!({ "events": [
        { "agentEventId": "l-1", "source": "EVENT_SOURCE_FALCO", "type": "shell", "severity": "SEVERITY_HIGH" },
        { "agentEventId": "l-2", "source": "EVENT_SOURCE_TRIVY", "type": "cve" }
    ]}))
    .unwrap();
    let post = |key: String, nonce: &'static str, body: Vec<u8>| {
        let http = admin.http.clone();
        let url = zen.http_url("/agent/v1/events");
        let (tenant, cluster) = (admin.tenant_id.clone(), cluster_id.to_owned());
        async move {
            let ts = now();
            http.post(url)
                .header("content-type", "application/json")
                .header("x-request-id", request_id())
                .header("x-zen-contract-version", "v1")
                .header("x-zen-tenant-id", tenant)
                .header("x-zen-cluster-id", cluster)
                .header("x-timestamp", ts.to_string())
                .header("x-nonce", nonce)
                .header("x-signature", zen_hmac(&key, ts, nonce, &body))
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = body(
        post(key.clone(), "b-1", batch.clone()).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let acks = first["acks"].as_array().unwrap();
    assert_eq!(acks[0]["outcome"], "EVENT_OUTCOME_ACCEPTED", "{first}");
    assert_eq!(
        acks[1]["outcome"], "EVENT_OUTCOME_REJECTED",
        "no severity: {first}"
    );
    let resent = body(
        post(key.clone(), "b-2", batch.clone()).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(
        resent["acks"][0]["outcome"], "EVENT_OUTCOME_DUPLICATE",
        "{resent}"
    );
    let wrong = post("0".repeat(64), "b-3", batch.clone()).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let replay = post(key, "b-1", b"{\"events\":[]}".to_vec()).await;
    assert_eq!(replay.status(), StatusCode::CONFLICT);
    // A key for a cluster that does not exist verifies but stores nothing: 404.
    let ghost = uuid::Uuid::new_v4();
    let ghost_key = zen::grpc::services::webhooks::Webhooks::legacy_cluster_key(
        LEGACY_KEY,
        admin.tenant_id.parse().unwrap(),
        ghost,
    );
    let ts = now();
    let missing = admin
        .http
        .post(zen.http_url("/agent/v1/events"))
        .header("content-type", "application/json")
        .header("x-request-id", request_id())
        .header("x-zen-tenant-id", &admin.tenant_id)
        .header("x-zen-cluster-id", ghost.to_string())
        .header("x-timestamp", ts.to_string())
        .header("x-nonce", "g-1")
        .header("x-signature", zen_hmac(&ghost_key, ts, "g-1", &batch))
        .body(batch.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    zen.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_replicas_share_replay_memory_and_configuration() {
    let Some((a, b, database)) = two_replicas(serve_args()).await else {
        return;
    };

    let admin = Admin::new(&a, "acme").await;
    let (source, secret) = admin.create_source(&a, zen_hmac_source("shared")).await;
    let id = source["sourceId"].as_str().unwrap();
    let http = http_client();
    let payload = br#"{"finding":"open bucket"}"#;
    let ts = now();
    let first = deliver(&http, &a, id, &secret, ts, "shared-1", payload).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    // Replica B has seen nothing locally, yet knows the delivery id.
    let redelivered = deliver(&http, &b, id, &secret, ts, "shared-1", payload).await;
    assert_eq!(
        body(redelivered, StatusCode::OK).await["outcome"],
        "DELIVERY_OUTCOME_DUPLICATE"
    );
    let replayed = deliver(
        &http,
        &b,
        id,
        &secret,
        ts,
        "shared-1",
        b"{\"finding\":\"x\"}",
    )
    .await;
    assert_eq!(replayed.status(), StatusCode::CONFLICT);

    // A change made through A applies to B's next request.
    let disabled = admin
        .patch(
            &a,
            &format!("/webhookSources/{id}?updateMask=enabled"),
            &json!({ "enabled": false, "version": source["version"] }),
        )
        .await;
    assert_eq!(disabled.status(), StatusCode::OK);
    let refused = deliver(&http, &b, id, &secret, now(), "shared-2", payload).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(admin.events_of(&a, id).await.len(), 1);
    // Both replicas write one log per source, read through either.
    let logged = deliveries_of(&admin, &a, id, 4).await;
    let outcomes: Vec<(&str, i64, &str)> = logged
        .iter()
        .map(|(o, s, r)| (o.as_str(), *s, r.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("DELIVERY_OUTCOME_REFUSED", 400, "disabled"),
            ("DELIVERY_OUTCOME_REFUSED", 409, "replayed"),
            ("DELIVERY_OUTCOME_DUPLICATE", 200, ""),
            ("DELIVERY_OUTCOME_ACCEPTED", 202, ""),
        ]
    );

    b.running.shutdown().await.unwrap();
    a.running.shutdown().await.unwrap();
    database.drop_database().await;
}

/// Polls `attempt` (each try with a fresh nonce) until it answers `want`; panics after 1 s.
async fn within_a_second<F, Fut>(what: &str, want: StatusCode, mut attempt: F)
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let started = std::time::Instant::now();
    for n in 0.. {
        let got = attempt(format!("{what}-{n}-{}", uuid::Uuid::new_v4()))
            .await
            .status();
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: still {got} after 1 s (want {want})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replicas deliver from an in-process snapshot of each source (its secrets opened, its
/// tenant's status), and a change made through one replica is in effect on the other within a
/// second: a secret rotated, a source disabled and enabled again, the tenant suspended and
/// resumed. A delivery signed with a secret rotated a moment ago is never refused for a stale
/// snapshot.
#[tokio::test]
async fn changes_through_one_replica_reach_the_others_snapshots_within_a_second() {
    let Some((a, b, database)) = two_replicas(serve_args()).await else {
        return;
    };
    let admin = Admin::new(&a, "snapshots").await;
    let (source, first) = admin.create_source(&a, zen_hmac_source("snap")).await;
    let id = source["sourceId"].as_str().unwrap();
    let http = http_client();
    // B reads the source once; later deliveries come from its snapshot.
    for n in 0..3 {
        let r = deliver(&http, &b, id, &first, now(), &format!("warm-{n}"), b"{}").await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }

    // A secret rotated through A (no overlap) verifies on B at once, the old one stops.
    let rotated = body(
        admin
            .post(
                &a,
                &format!("/webhookSources/{id}:rotateSecret"),
                &json!({ "oldSecretTtl": "0s" }),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let second = rotated["secret"].as_str().unwrap().to_owned();
    let r = deliver(&http, &b, id, &second, now(), "rotated-0", b"{}").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "the new secret on B");
    within_a_second("old secret", StatusCode::UNAUTHORIZED, |nonce| {
        let (http, b, secret) = (&http, &b, &first);
        async move { deliver(http, b, id, secret, now(), &nonce, b"{}").await }
    })
    .await;

    // Disabled and enabled again through A.
    let version =
        admin.get(&a, &format!("/webhookSources/{id}")).await["webhookSource"]["version"].clone();
    let disabled = admin
        .patch(
            &a,
            &format!("/webhookSources/{id}?updateMask=enabled"),
            &json!({ "enabled": false, "version": version }),
        )
        .await;
    let version = body(disabled, StatusCode::OK).await["webhookSource"]["version"].clone();
    within_a_second("disabled", StatusCode::BAD_REQUEST, |nonce| {
        let (http, b, secret) = (&http, &b, &second);
        async move { deliver(http, b, id, secret, now(), &nonce, b"{}").await }
    })
    .await;
    let enabled = admin
        .patch(
            &a,
            &format!("/webhookSources/{id}?updateMask=enabled"),
            &json!({ "enabled": true, "version": version }),
        )
        .await;
    assert_eq!(enabled.status(), StatusCode::OK);
    within_a_second("enabled", StatusCode::ACCEPTED, |nonce| {
        let (http, b, secret) = (&http, &b, &second);
        async move { deliver(http, b, id, secret, now(), &nonce, b"{}").await }
    })
    .await;

    // The tenant suspended and resumed through A.
    let tenant_path = format!("/v1/tenants/{}", admin.tenant_id);
    let tenant = admin
        .http
        .get(a.http_url(&tenant_path))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    let version = body(tenant, StatusCode::OK).await["tenant"]["version"].clone();
    let suspended = admin
        .http
        .post(a.http_url(&format!("{tenant_path}:suspend")))
        .bearer_auth(&admin.token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "version": version, "reason": "snapshot test" }))
        .send()
        .await
        .unwrap();
    let version = body(suspended, StatusCode::OK).await["tenant"]["version"].clone();
    within_a_second("suspended", StatusCode::BAD_REQUEST, |nonce| {
        let (http, b, secret) = (&http, &b, &second);
        async move { deliver(http, b, id, secret, now(), &nonce, b"{}").await }
    })
    .await;
    let resumed = admin
        .http
        .post(a.http_url(&format!("{tenant_path}:resume")))
        .bearer_auth(&admin.token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "version": version }))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
    within_a_second("resumed", StatusCode::ACCEPTED, |nonce| {
        let (http, b, secret) = (&http, &b, &second);
        async move { deliver(http, b, id, secret, now(), &nonce, b"{}").await }
    })
    .await;

    b.running.shutdown().await.unwrap();
    a.running.shutdown().await.unwrap();
    database.drop_database().await;
}

/// Signature brute-forcing leaves a trace whatever the headers: every badly signed delivery,
/// sent with a 2,000-character User-Agent, is refused and has its own denied record, the
/// User-Agent cut at 1,024 characters.
#[tokio::test]
async fn badly_signed_deliveries_with_hostile_headers_are_each_audited() {
    let zen = TestZen::start_with(GlobalArgs::default(), serve_args()).await;
    let admin = Admin::new(&zen, "acme").await;
    let (source, _secret) = admin.create_source(&zen, zen_hmac_source("alerts")).await;
    let id = source["sourceId"].as_str().unwrap();
    let http = http_client();
    let agent = "B".repeat(2000);
    for attempt in 0..5 {
        let body = br#"{"alert":"guess"}"#;
        let response = http
            .post(zen.http_url(&format!("/webhooks/{id}")))
            .header("content-type", "application/json")
            .header("user-agent", agent.as_str())
            .header("x-timestamp", now().to_string())
            .header("x-nonce", format!("guess-{attempt}"))
            .header("x-signature", zen_hmac("not-the-secret", now(), "x", body))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
    }
    let audit = admin
        .get(
            &zen,
            &format!("/auditLogs?action=webhook.receive&resourceId={id}&pageSize=100"),
        )
        .await;
    let denied: Vec<&Value> = audit["auditRecords"]
        .as_array()
        .map(|records| {
            records
                .iter()
                .filter(|r| r["outcome"] == "AUDIT_OUTCOME_DENIED")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(denied.len(), 5, "{audit}");
    for record in denied {
        assert_eq!(
            record["userAgent"].as_str().unwrap().len(),
            1024,
            "{record}"
        );
    }
    zen.running.shutdown().await.unwrap();
}
