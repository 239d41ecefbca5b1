//! The adversarial suite: each defect class an outside attacker tried, through real sockets and
//! the gateway as an HTTP client sees it (and, where the backend matters, on SQLite and on
//! PostgreSQL). Every test here failed before its fix.
//!
//! Classes: invites bound to their e-mail; quotas for platform admins only; a deleted tenant
//! closed to its members; login throttling by the real client address (only failures count);
//! hostile headers (1 KB / 16 KB / 64 KB of every forwarded header); hostile filters and page
//! tokens (NUL, invalid UTF-8, 10 KB, garbage); idempotent replays only after authentication
//! and only to the same principal; every refused request audited; operational endpoints off
//! the public listener.

mod support;

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use support::{
    create_local_user_as_operator, http_client, request_id, TestDatabase, TestZen, PASSWORD,
};
use zen::config::{GlobalArgs, ServeArgs};

const NIL_TENANT: &str = "00000000-0000-0000-0000-000000000000";

async fn start_with(database_url: Option<String>, trusted_proxies: Option<&str>) -> TestZen {
    TestZen::start_with(
        GlobalArgs {
            database_url,
            ..Default::default()
        },
        ServeArgs {
            local_login: Some(true),
            trusted_proxies: trusted_proxies.map(str::to_owned),
            ..Default::default()
        },
    )
    .await
}

async fn body(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn reason(problem: &Value) -> String {
    problem["reason"].as_str().unwrap_or_default().to_owned()
}

async fn login_as(
    http: &Client,
    zen: &TestZen,
    username: &str,
    forwarded: Option<&str>,
) -> Response {
    let mut request = http
        .post(zen.http_url("/auth/local/login"))
        .header("x-request-id", request_id())
        .json(&json!({ "username": username, "password": PASSWORD }));
    if let Some(address) = forwarded {
        request = request.header("x-forwarded-for", address);
    }
    request.send().await.unwrap()
}

async fn token(http: &Client, zen: &TestZen, username: &str) -> String {
    let (status, body) = body(login_as(http, zen, username, None).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"]["accessToken"].as_str().unwrap().to_owned()
}

async fn call(
    http: &Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    payload: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = http
        .request(method, url)
        .bearer_auth(token)
        .header("x-request-id", request_id());
    if let Some(payload) = payload {
        request = request.json(&payload);
    }
    body(request.send().await.unwrap()).await
}

async fn create_tenant(http: &Client, zen: &TestZen, token: &str, name: &str) -> String {
    let (status, tenant) = call(
        http,
        reqwest::Method::POST,
        zen.http_url("/v1/tenants"),
        token,
        Some(json!({ "name": name })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tenant}");
    tenant["tenant"]["tenantId"].as_str().unwrap().to_owned()
}

/// Platform audit records (the nil tenant's chain) with this outcome, newest first.
async fn platform_audit(http: &Client, zen: &TestZen, root: &str, query: &str) -> Vec<Value> {
    let (status, page) = call(
        http,
        reqwest::Method::GET,
        zen.http_url(&format!(
            "/v1/tenants/{NIL_TENANT}/auditLogs?pageSize=200&{query}"
        )),
        root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["auditRecords"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn an_invite_is_accepted_only_by_the_person_it_was_sent_to() {
    let zen = start_with(None, None).await;
    let http = http_client();
    for (name, admin) in [("root", true), ("gina", false), ("mallory", false)] {
        create_local_user_as_operator(&zen, name, admin).await;
    }
    let root = token(&http, &zen, "root").await;
    let tenant = create_tenant(&http, &zen, &root, "acme").await;
    let (status, created) = call(
        &http,
        reqwest::Method::POST,
        zen.http_url(&format!("/v1/tenants/{tenant}/invites")),
        &root,
        Some(json!({ "email": "GINA@example.test", "role": "ROLE_ADMIN" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let invite_id = created["invite"]["inviteId"].as_str().unwrap().to_owned();
    let secret = created["token"].as_str().unwrap().to_owned();
    let accept = |who: String| {
        let (http, url, secret) = (
            http.clone(),
            zen.http_url(&format!("/v1/invites/{invite_id}:accept")),
            secret.clone(),
        );
        async move {
            call(
                &http,
                reqwest::Method::POST,
                url,
                &who,
                Some(json!({ "token": secret })),
            )
            .await
        }
    };

    let mallory = token(&http, &zen, "mallory").await;
    let (status, problem) = accept(mallory.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(reason(&problem), "INVITE_EMAIL_MISMATCH", "{problem}");
    // Nothing of the refused accept stayed: mallory is no member, the invite still pending.
    let (status, _) = call(
        &http,
        reqwest::Method::GET,
        zen.http_url(&format!("/v1/tenants/{tenant}/members")),
        &mallory,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let gina = token(&http, &zen, "gina").await;
    let (status, member) = accept(gina).await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["member"]["role"], "ROLE_ADMIN", "{member}");
    zen.stop().await;
}

#[tokio::test]
async fn only_platform_admins_set_quotas() {
    let zen = start_with(None, None).await;
    let http = http_client();
    create_local_user_as_operator(&zen, "owner", false).await;
    let owner = token(&http, &zen, "owner").await;

    let (status, problem) = call(
        &http,
        reqwest::Method::POST,
        zen.http_url("/v1/tenants"),
        &owner,
        Some(json!({ "name": "greedy", "quotas": { "maxClusters": 100000 } })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(reason(&problem), "PLATFORM_ADMIN_REQUIRED", "{problem}");

    let tenant = create_tenant(&http, &zen, &owner, "modest").await;
    let (_, current) = call(
        &http,
        reqwest::Method::GET,
        zen.http_url(&format!("/v1/tenants/{tenant}")),
        &owner,
        None,
    )
    .await;
    let version = current["tenant"]["version"].clone();
    for (mask, patch) in [
        (
            "quotas.maxClusters",
            json!({ "version": version, "quotas": { "maxClusters": 500 } }),
        ),
        (
            "quotas",
            json!({ "version": version, "quotas": { "requestsPerSecond": 9000 } }),
        ),
    ] {
        let (status, problem) = call(
            &http,
            reqwest::Method::PATCH,
            zen.http_url(&format!("/v1/tenants/{tenant}?updateMask={mask}")),
            &owner,
            Some(patch),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{mask}: {problem}");
        assert_eq!(reason(&problem), "PLATFORM_ADMIN_REQUIRED", "{problem}");
    }
    // Without a mask, a body naming quotas is the same request.
    let (status, _) = call(
        &http,
        reqwest::Method::PATCH,
        zen.http_url(&format!("/v1/tenants/{tenant}")),
        &owner,
        Some(json!({ "version": version, "quotas": { "maxClusters": 7 } })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, renamed) = call(
        &http,
        reqwest::Method::PATCH,
        zen.http_url(&format!("/v1/tenants/{tenant}?updateMask=displayName")),
        &owner,
        Some(json!({ "version": version, "displayName": "Modest Ltd" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    zen.stop().await;
}

#[tokio::test]
async fn a_deleted_tenant_is_closed_to_its_members() {
    let zen = start_with(None, None).await;
    let http = http_client();
    create_local_user_as_operator(&zen, "owner", false).await;
    let owner = token(&http, &zen, "owner").await;
    let tenant = create_tenant(&http, &zen, &owner, "doomed").await;
    let reads = ["members", "auditLogs", "clusters", "events"];
    for read in reads {
        let url = zen.http_url(&format!("/v1/tenants/{tenant}/{read}"));
        let (status, _) = call(&http, reqwest::Method::GET, url, &owner, None).await;
        assert_eq!(status, StatusCode::OK, "{read} before the delete");
    }
    let (status, deleted) = call(
        &http,
        reqwest::Method::DELETE,
        zen.http_url(&format!("/v1/tenants/{tenant}")),
        &owner,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    for read in reads {
        let url = zen.http_url(&format!("/v1/tenants/{tenant}/{read}"));
        let (status, problem) = call(&http, reqwest::Method::GET, url, &owner, None).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{read} after the delete: {problem}"
        );
    }
    zen.stop().await;
}

/// Behind a trusted proxy, limits follow the client address it forwards: one address's
/// failures do not lock out another's correct login; successes never count; a limit per
/// account and address stops guessing one password without locking the account elsewhere.
#[tokio::test]
async fn login_limits_follow_the_client_address_and_count_failures_only() {
    let zen = start_with(None, Some("127.0.0.1/32, ::1")).await;
    let http = http_client();
    create_local_user_as_operator(&zen, "root", true).await;
    create_local_user_as_operator(&zen, "ann", false).await;
    let wrong = |user: &'static str, address: &'static str| {
        let http = http.clone();
        let url = zen.http_url("/auth/local/login");
        async move {
            http.post(url)
                .header("x-forwarded-for", address)
                .json(&json!({ "username": user, "password": "wrong" }))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Successes from one address: never throttled.
    for _ in 0..35 {
        let response = login_as(&http, &zen, "ann", Some("198.51.100.1")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    // 30 failures per address (over several accounts, 5 per account), then 429.
    let mut statuses = Vec::new();
    for i in 0..31 {
        let user = ["u1", "u2", "u3", "u4", "u5", "u6", "u7"][i / 5];
        statuses.push(wrong(user, "203.0.113.66").await);
    }
    assert!(
        statuses[..30]
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    assert_eq!(statuses[30], StatusCode::TOO_MANY_REQUESTS);
    // Another client address is not affected.
    let response = login_as(&http, &zen, "ann", Some("203.0.113.67")).await;
    assert_eq!(response.status(), StatusCode::OK);

    // Guessing root's password from one address stops after 5 failures there...
    for _ in 0..5 {
        assert_eq!(wrong("root", "192.0.2.10").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        wrong("root", "192.0.2.10").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let refused = login_as(&http, &zen, "root", Some("192.0.2.10")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // ...while root signs in from elsewhere.
    let response = login_as(&http, &zen, "root", Some("192.0.2.11")).await;
    assert_eq!(response.status(), StatusCode::OK);

    // The refusals name the forwarded address in the audit log.
    let root = token(&http, &zen, "root").await;
    let denied = platform_audit(
        &http,
        &zen,
        &root,
        "action=auth.login&outcome=AUDIT_OUTCOME_DENIED",
    )
    .await;
    assert!(
        denied.iter().any(|r| r["clientAddress"] == "203.0.113.66"),
        "{denied:?}"
    );
    zen.stop().await;
}

/// Without trusted proxies, X-Forwarded-For is the client's own claim and changes nothing.
#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let zen = start_with(None, None).await;
    let http = http_client();
    for i in 0..31u32 {
        let spoofed = format!("203.0.113.{}", i % 250);
        let status = http
            .post(zen.http_url("/auth/local/login"))
            .header("x-forwarded-for", spoofed)
            .json(&json!({ "username": format!("nobody{}", i / 5), "password": "wrong" }))
            .send()
            .await
            .unwrap()
            .status();
        let expected = if i < 30 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(status, expected, "attempt {i}");
    }
    zen.stop().await;
}

/// Every forwarded header at 1 KB, 16 KB and 64 KB: an answer, never a 5xx; above the limit a
/// 431 problem naming it. A long User-Agent is recorded truncated, not refused.
#[tokio::test]
async fn hostile_headers_never_get_a_5xx() {
    let zen = start_with(None, None).await;
    let http = http_client();
    create_local_user_as_operator(&zen, "root", true).await;
    let root = token(&http, &zen, "root").await;
    let tenant = create_tenant(&http, &zen, &root, "acme").await;
    let headers = [
        "authorization",
        "user-agent",
        "traceparent",
        "tracestate",
        "x-tenant-id",
        "x-zen-contract-version",
        "x-request-id",
        "x-forwarded-for",
    ];
    for name in headers {
        for size in [1024usize, 16 * 1024, 64 * 1024] {
            let value = "a".repeat(size);
            for (method, path) in [
                (reqwest::Method::GET, format!("/v1/tenants/{tenant}")),
                (reqwest::Method::POST, "/auth/local/login".to_owned()),
                (reqwest::Method::GET, "/.well-known/jwks.json".to_owned()),
            ] {
                let mut request = http
                    .request(method.clone(), zen.http_url(&path))
                    .json(&json!({ "username": "root", "password": PASSWORD }));
                if name != "x-request-id" {
                    request = request.header("x-request-id", request_id());
                }
                if name != "authorization" {
                    request = request.bearer_auth(&root);
                }
                let response = request.header(name, value.as_str()).send().await.unwrap();
                let status = response.status();
                assert!(
                    !status.is_server_error(),
                    "{method} {path} with a {size}-byte {name}: {status}"
                );
                // Past the limits: 431 (or 400 for a request id, whose own syntax is 1-128
                // characters); X-Forwarded-For is not forwarded, so only the total counts.
                let limited = if name == "x-forwarded-for" {
                    size > zen_gateway::MAX_HEADER_BYTES
                } else {
                    size > zen_gateway::MAX_FORWARDED_HEADER_BYTES
                };
                if limited {
                    assert!(
                        status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                            || status == StatusCode::BAD_REQUEST,
                        "{method} {path} with a {size}-byte {name}: {status}"
                    );
                }
            }
        }
    }

    // A 2,000-character User-Agent is allowed and audited, cut at 1,024 characters.
    let id = request_id();
    let agent = "Z".repeat(2000);
    let response = http
        .get(zen.http_url(&format!("/v1/tenants/{tenant}")))
        .bearer_auth(&root)
        .header("x-request-id", &id)
        .header("user-agent", &agent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, page) = call(
        &http,
        reqwest::Method::GET,
        zen.http_url(&format!("/v1/tenants/{tenant}/auditLogs?requestId={id}")),
        &root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let record = &page["auditRecords"][0];
    assert_eq!(
        record["userAgent"].as_str().unwrap().len(),
        1024,
        "{record}"
    );
    assert_eq!(
        record["details"]["truncated"],
        json!(["user_agent"]),
        "{record}"
    );
    zen.stop().await;
}

async fn hostile_filters(database_url: Option<String>) {
    let zen = start_with(database_url, None).await;
    let http = http_client();
    create_local_user_as_operator(&zen, "root", true).await;
    let root = token(&http, &zen, "root").await;
    let tenant = create_tenant(&http, &zen, &root, "acme").await;
    let nul_token = hex::encode("s1|5\0");
    let long = "x".repeat(10 * 1024);
    let values: [(&str, bool); 6] = [
        ("a%00b", true),
        ("%00", true),
        ("%FF%FE", false),
        (&long, false),
        ("%27%3B%20DROP%20TABLE%20tenants%3B--", false),
        ("%E2%80%AE%F0%9F%92%A5", false),
    ];
    let lists = [
        (
            "auditLogs",
            ["action", "actorId", "resourceType", "requestId"].as_slice(),
        ),
        (
            "events",
            ["type", "severity", "clusterId", "source"].as_slice(),
        ),
        ("members", [].as_slice()),
        ("clusters", [].as_slice()),
        ("remediations", ["clusterId"].as_slice()),
        ("webhookSources", [].as_slice()),
    ];
    for (list, filters) in lists {
        let mut urls: Vec<(String, bool)> = Vec::new();
        for (value, nul) in &values {
            for filter in filters.iter().chain(["pageToken"].iter()) {
                urls.push((
                    format!("/v1/tenants/{tenant}/{list}?{filter}={value}"),
                    *nul,
                ));
            }
        }
        urls.push((
            format!("/v1/tenants/{tenant}/{list}?pageToken={nul_token}"),
            true,
        ));
        urls.push((format!("/v1/tenants/{tenant}/{list}?pageToken=zz%00"), true));
        for (url, nul) in urls {
            let (status, problem) =
                call(&http, reqwest::Method::GET, zen.http_url(&url), &root, None).await;
            assert!(!status.is_server_error(), "{url}: {status} {problem}");
            if nul {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {problem}");
            }
        }
    }
    // Tenant names and prefixes too.
    for url in ["/v1/tenants?namePrefix=a%00", "/v1/tenants?pageToken=%00"] {
        let (status, problem) =
            call(&http, reqwest::Method::GET, zen.http_url(url), &root, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {problem}");
        let field = problem["errors"][0]["field"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!field.is_empty(), "the problem names the field: {problem}");
    }
    zen.stop().await;
}

#[tokio::test]
async fn hostile_filters_and_page_tokens_are_400_on_sqlite() {
    hostile_filters(None).await;
}

#[tokio::test]
async fn hostile_filters_and_page_tokens_are_400_on_postgres() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    hostile_filters(Some(db.url.clone())).await;
    db.drop_database().await;
}

/// A stored answer goes back only to its principal, and only while their token is good.
#[tokio::test]
async fn idempotent_replays_need_a_valid_token_of_the_same_person() {
    let zen = start_with(None, None).await;
    let http = http_client();
    create_local_user_as_operator(&zen, "ann", false).await;
    create_local_user_as_operator(&zen, "bob", false).await;
    let ann = token(&http, &zen, "ann").await;
    let id = request_id();
    let create = |token: String| {
        let (http, url, id) = (http.clone(), zen.http_url("/v1/tenants"), id.clone());
        async move {
            http.post(url)
                .bearer_auth(token)
                .header("x-request-id", id)
                .json(&json!({ "name": "replayed" }))
                .send()
                .await
                .unwrap()
        }
    };
    let first = create(ann.clone()).await;
    assert_eq!(first.status(), StatusCode::OK);
    // The same person with a fresh token: the stored answer.
    let ann_again = token(&http, &zen, "ann").await;
    let replay = create(ann_again).await;
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    // Someone else with the same key: not ann's answer.
    let bob = token(&http, &zen, "bob").await;
    let other = create(bob).await;
    assert!(other.headers().get("idempotent-replayed").is_none());
    assert_eq!(
        other.status(),
        StatusCode::CONFLICT,
        "the name is taken, not replayed"
    );
    // After logout, ann's old token gets nothing stored.
    let response = http
        .post(zen.http_url("/auth/logout"))
        .bearer_auth(&ann)
        .header("x-request-id", request_id())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let stale = create(ann).await;
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    assert!(stale.headers().get("idempotent-replayed").is_none());
    zen.stop().await;
}

/// Every kind of refused request leaves a denied record: no token, a bad token (forged,
/// garbage, alg none), a token through an untrusted relay is covered by the gRPC front tests;
/// a tenant header that does not match, a role too low, a failed login.
#[tokio::test]
async fn every_refused_request_is_audited() {
    let zen = start_with(None, None).await;
    let http = http_client();
    create_local_user_as_operator(&zen, "root", true).await;
    create_local_user_as_operator(&zen, "ann", false).await;
    let root = token(&http, &zen, "root").await;
    let ann = token(&http, &zen, "ann").await;
    let tenant = create_tenant(&http, &zen, &root, "acme").await;
    let none_alg = format!(
        "{}.{}.",
        base64_url(r#"{"alg":"none","typ":"JWT"}"#),
        base64_url(r#"{"sub":"x","exp":9999999999}"#)
    );
    let mut refused = Vec::new();
    for (what, token, tenant_header) in [
        ("no token", None, None),
        ("garbage token", Some("garbage".to_owned()), None),
        ("alg none", Some(none_alg), None),
        (
            "forged signature",
            Some(format!("{}x", &root[..root.len() - 1])),
            None,
        ),
        ("role too low", Some(ann.clone()), None),
        ("tenant mismatch", Some(ann.clone()), Some(tenant.clone())),
    ] {
        let id = request_id();
        let mut request = http
            .get(zen.http_url(&format!("/v1/tenants/{tenant}/members")))
            .header("x-request-id", &id);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(header) = tenant_header {
            request = request.header("x-tenant-id", header);
        }
        let status = request.send().await.unwrap().status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "{what}: {status}"
        );
        refused.push((what, id));
    }
    let wrong_password = request_id();
    let status = http
        .post(zen.http_url("/auth/local/login"))
        .header("x-request-id", &wrong_password)
        .json(&json!({ "username": "ann", "password": "nope" }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    refused.push(("failed login", wrong_password));

    for (what, id) in refused {
        // Recorded in the tenant's chain (decisions about it) or the platform chain (refusals
        // before anyone was identified).
        let mut found = platform_audit(&http, &zen, &root, &format!("requestId={id}")).await;
        let (_, page) = call(
            &http,
            reqwest::Method::GET,
            zen.http_url(&format!("/v1/tenants/{tenant}/auditLogs?requestId={id}")),
            &root,
            None,
        )
        .await;
        found.extend(page["auditRecords"].as_array().cloned().unwrap_or_default());
        assert!(
            found.iter().any(|r| r["outcome"] == "AUDIT_OUTCOME_DENIED"
                || r["outcome"] == "AUDIT_OUTCOME_FAILURE"),
            "{what}: no refusal recorded for request {id}: {found:?}"
        );
    }
    zen.stop().await;
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn metrics_and_deep_health_are_only_on_the_admin_listener() {
    let zen = start_with(None, None).await;
    let http = http_client();
    for path in ["/metrics", "/health/database"] {
        let public = http.get(zen.http_url(path)).send().await.unwrap();
        assert_eq!(
            public.status(),
            StatusCode::NOT_FOUND,
            "{path} on the public listener"
        );
        let admin = http.get(zen.admin_url(path)).send().await.unwrap();
        assert_eq!(
            admin.status(),
            StatusCode::OK,
            "{path} on the admin listener"
        );
    }
    for path in ["/health", "/ready"] {
        let public = http.get(zen.http_url(path)).send().await.unwrap();
        assert_eq!(public.status(), StatusCode::OK, "{path}");
    }
    zen.stop().await;
}
