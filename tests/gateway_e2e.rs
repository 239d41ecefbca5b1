//! The REST gateway end to end, as an HTTP client sees it: Zen in-process on real sockets, the
//! gateway calling the gRPC front over mutual TLS as its service identity, people signed in
//! with bearer JWTs from the local login. After one operator call (creating the first
//! platform-admin user over the admin mTLS channel) everything goes through HTTP with reqwest:
//! path/query/body binding, proto3 JSON, problem documents and their statuses, the header
//! rules, idempotent replay, the public endpoints, and idempotency across two replicas sharing
//! PostgreSQL and Redis.

mod support;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use support::{
    create_local_user_as_operator, http_client, request_id, test_redis_url, TestDatabase, TestZen,
    PASSWORD,
};
use zen::config::{GlobalArgs, ServeArgs};

/// The gateway's body limit in these tests (the default is 1 MiB).
const MAX_BODY_BYTES: usize = 64 * 1024;

fn serve_args() -> ServeArgs {
    ServeArgs {
        local_login: Some(true),
        max_body_bytes: Some(MAX_BODY_BYTES),
        ..Default::default()
    }
}

async fn start() -> TestZen {
    TestZen::start_with(GlobalArgs::default(), serve_args()).await
}

/// The body of a successful JSON answer.
async fn json_ok(response: Response) -> Value {
    json_with_status(response, StatusCode::OK).await
}

async fn json_with_status(response: Response, status: StatusCode) -> Value {
    let got = response.status();
    let content_type = content_type(response.headers());
    let body = response.text().await.expect("body");
    assert_eq!(got, status, "unexpected status; body: {body}");
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type}; body: {body}"
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The problem document of an error answer, checked for its media type and `status` member.
async fn problem(response: Response, status: StatusCode) -> Value {
    let got = response.status();
    let content_type = content_type(response.headers());
    let body = response.text().await.expect("body");
    assert_eq!(got, status, "unexpected status; body: {body}");
    assert_eq!(
        content_type, "application/problem+json",
        "an error must be a problem document; body: {body}"
    );
    let problem: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(problem["status"], status.as_u16(), "{problem}");
    for member in ["type", "title", "detail", "code"] {
        assert!(problem.get(member).is_some(), "no `{member}` in {problem}");
    }
    problem
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Every object key in a response is lowerCamelCase (map keys of `labels` and `metadata` are
/// data, not field names).
fn assert_lower_camel(value: &Value, path: &str) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                assert!(
                    !key.contains('_') && key.chars().next().is_some_and(|c| c.is_lowercase()),
                    "`{path}.{key}` is not lowerCamelCase"
                );
                if key != "labels" && key != "metadata" {
                    assert_lower_camel(child, &format!("{path}.{key}"));
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                assert_lower_camel(item, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

/// Signs in over REST and returns the access token.
async fn login(http: &Client, zen: &TestZen, username: &str) -> String {
    let response = http
        .post(zen.http_url("/auth/local/login"))
        .json(&json!({ "username": username, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let body = json_ok(response).await;
    assert_eq!(body["token"]["tokenType"], "Bearer", "{body}");
    assert_eq!(body["user"]["username"], username, "{body}");
    body["token"]["accessToken"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

/// `POST /v1/tenants` as a platform admin; returns the tenant.
async fn create_tenant(http: &Client, zen: &TestZen, token: &str, name: &str) -> Value {
    let response = http
        .post(zen.http_url("/v1/tenants"))
        .bearer_auth(token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "name": name, "displayName": format!("{name} inc.") }))
        .send()
        .await
        .unwrap();
    json_ok(response).await["tenant"].clone()
}

async fn post_cluster(
    http: &Client,
    zen: &TestZen,
    token: &str,
    tenant_id: &str,
    body: &Value,
) -> Response {
    http.post(zen.http_url(&format!("/v1/tenants/{tenant_id}/clusters")))
        .bearer_auth(token)
        .header("X-Request-Id", request_id())
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn create_cluster(
    http: &Client,
    zen: &TestZen,
    token: &str,
    tenant_id: &str,
    name: &str,
) -> Value {
    let body = json!({
        "name": name,
        "apiEndpoint": "https://k8s.example:6443",
        "labels": { "env": "prod" },
    });
    json_ok(post_cluster(http, zen, token, tenant_id, &body).await).await["cluster"].clone()
}

/// A platform admin signed in over REST, owning a fresh tenant.
struct Admin {
    http: Client,
    token: String,
    tenant_id: String,
}

async fn admin_with_tenant(zen: &TestZen) -> Admin {
    create_local_user_as_operator(zen, "root", true).await;
    let http = http_client();
    let token = login(&http, zen, "root").await;
    let tenant = create_tenant(&http, zen, &token, "acme").await;
    Admin {
        tenant_id: tenant["tenantId"].as_str().unwrap().to_owned(),
        http,
        token,
    }
}

#[tokio::test]
async fn resources_bind_path_query_and_body_and_answer_proto3_json() {
    let zen = start().await;
    create_local_user_as_operator(&zen, "root", true).await;
    let http = http_client();
    let token = login(&http, &zen, "root").await;

    // Create a tenant: `body: "tenant"`, lowerCamel in and out, int64 as a string.
    let trace_id = request_id();
    let response = http
        .post(zen.http_url("/v1/tenants"))
        .bearer_auth(&token)
        .header("X-Request-Id", &trace_id)
        .json(&json!({ "name": "acme", "displayName": "Acme Inc." }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "x-request-id").as_deref(),
        Some(trace_id.as_str())
    );
    let body = json_ok(response).await;
    assert_lower_camel(&body, "");
    let tenant = &body["tenant"];
    let tenant_id = tenant["tenantId"].as_str().unwrap().to_owned();
    assert_eq!(tenant["name"], "acme");
    assert_eq!(tenant["displayName"], "Acme Inc.");
    assert_eq!(tenant["status"], "TENANT_STATUS_ACTIVE", "enums by name");
    assert_eq!(tenant["version"], "1", "int64 is a JSON string");
    assert!(
        tenant["quotas"]["maxEventsPerDay"].as_str().is_some(),
        "int64 quotas are strings: {tenant}"
    );
    assert!(tenant["createTime"].as_str().unwrap().ends_with('Z'));

    // Clusters: path variable + body field; OUTPUT_ONLY fields sent by the client are dropped.
    let forged = json!({
        "name": "alpha-one",
        "clusterId": "forged",
        "status": "CLUSTER_STATUS_READY",
        "apiEndpoint": "https://alpha.example:6443",
        "labels": { "env": "prod", "team_name": "a" },
    });
    let alpha_one = json_ok(post_cluster(&http, &zen, &token, &tenant_id, &forged).await).await
        ["cluster"]
        .clone();
    assert_lower_camel(&alpha_one, "cluster");
    assert_ne!(alpha_one["clusterId"], "forged");
    assert_eq!(alpha_one["status"], "CLUSTER_STATUS_PROVISIONING");
    assert_eq!(alpha_one["tenantId"], tenant_id.as_str());
    assert_eq!(alpha_one["labels"]["team_name"], "a", "map keys are data");
    assert_eq!(alpha_one["version"], "1");
    let alpha_two = create_cluster(&http, &zen, &token, &tenant_id, "alpha-two").await;
    create_cluster(&http, &zen, &token, &tenant_id, "beta-one").await;

    // List with query parameters (lowerCamel), one page at a time: the prefix filter and the
    // page token bind from the query; pages come in name order, as the contract says.
    let clusters_url = zen.http_url(&format!("/v1/tenants/{tenant_id}/clusters"));
    let mut seen = Vec::new();
    let mut page_token = String::new();
    for page_number in 1.. {
        let mut query = vec![("pageSize", "1"), ("namePrefix", "alpha")];
        if !page_token.is_empty() {
            query.push(("pageToken", &page_token));
        }
        let page = json_ok(
            http.get(&clusters_url)
                .bearer_auth(&token)
                .query(&query)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let clusters = page["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 1, "page {page_number}: {page}");
        seen.push(clusters[0]["name"].as_str().unwrap().to_owned());
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => page_token = next.to_owned(),
            _ => break,
        }
        assert!(page_number < 3, "more pages than clusters: {seen:?}");
    }
    assert_eq!(seen, ["alpha-one", "alpha-two"]);
    // snake_case parameter names work too.
    let page = json_ok(
        http.get(format!("{clusters_url}?page_size=5&name_prefix=beta"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page["clusters"].as_array().unwrap().len(), 1, "{page}");

    // Get by two path variables.
    let alpha_two_id = alpha_two["clusterId"].as_str().unwrap();
    let cluster_url = zen.http_url(&format!("/v1/tenants/{tenant_id}/clusters/{alpha_two_id}"));
    let got = json_ok(
        http.get(&cluster_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got["cluster"], alpha_two);

    // PATCH: path + body field + `updateMask` from the query; fields outside the mask stay.
    // A partial update (AIP-134) need not resend the resource's REQUIRED, immutable `name`.
    let patched = json_ok(
        http.patch(format!("{cluster_url}?updateMask=displayName"))
            .bearer_auth(&token)
            .header("X-Request-Id", request_id())
            .json(&json!({
                "displayName": "Alpha Two",
                "apiEndpoint": "https://not-in-the-mask.example",
                "version": "1",
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(patched["cluster"]["displayName"], "Alpha Two");
    assert_eq!(
        patched["cluster"]["apiEndpoint"], alpha_two["apiEndpoint"],
        "outside the mask"
    );
    assert_eq!(patched["cluster"]["version"], "2");

    // The version read is stale now: 409 with the current one.
    let stale = problem(
        http.patch(format!("{cluster_url}?updateMask=displayName"))
            .bearer_auth(&token)
            .header("X-Request-Id", request_id())
            .json(&json!({ "displayName": "Late", "version": "1" }))
            .send()
            .await
            .unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(stale["code"], "ABORTED", "{stale}");
    assert_eq!(stale["reason"], "VERSION_MISMATCH", "{stale}");
    assert_eq!(stale["metadata"]["current_version"], "2", "{stale}");

    // Mask paths in snake_case (as grpc-gateway takes them), under a snake_case parameter.
    let snake = json_ok(
        http.patch(format!(
            "{cluster_url}?update_mask=display_name,api_endpoint"
        ))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        .json(&json!({
            "displayName": "Alpha 2",
            "apiEndpoint": "https://alpha-two.example",
            "version": "2",
        }))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(snake["cluster"]["displayName"], "Alpha 2");
    assert_eq!(snake["cluster"]["apiEndpoint"], "https://alpha-two.example");
    assert_eq!(snake["cluster"]["version"], "3");
    // A path naming no field of the resource is a 400 naming it, before any call.
    let unknown = problem(
        http.patch(format!("{cluster_url}?updateMask=displayName,nope"))
            .bearer_auth(&token)
            .header("X-Request-Id", request_id())
            .json(&json!({ "displayName": "Never", "version": "3" }))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(unknown["errors"][0]["field"], "updateMask", "{unknown}");
    let message = unknown["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("`nope`") && message.contains("zen.tenancy.v1.Cluster"),
        "{unknown}"
    );

    // The signed-in person, and their membership as the tenant's creator.
    let me = json_ok(
        http.get(zen.http_url("/v1/users/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(me["user"]["platformAdmin"], true, "{me}");
    assert_eq!(me["memberships"][0]["tenantId"], tenant_id.as_str(), "{me}");
    assert_eq!(me["memberships"][0]["role"], "ROLE_OWNER", "{me}");
    zen.stop().await;
}

#[tokio::test]
async fn errors_are_problem_documents_with_the_right_status() {
    let zen = start().await;
    let Admin {
        http,
        token,
        tenant_id,
    } = admin_with_tenant(&zen).await;
    let clusters = format!("/v1/tenants/{tenant_id}/clusters");
    create_cluster(&http, &zen, &token, &tenant_id, "prod").await;

    // 400: a bad cluster name, named by its JSON path.
    let bad = problem(
        post_cluster(
            &http,
            &zen,
            &token,
            &tenant_id,
            &json!({ "name": "Not_A_DNS_Label!" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(bad["code"], "INVALID_ARGUMENT", "{bad}");
    assert_eq!(bad["errors"][0]["field"], "cluster.name", "{bad}");
    assert!(bad["errors"][0]["message"].as_str().is_some(), "{bad}");

    // 400: a REQUIRED field missing (checked by the gateway before any call).
    let missing = problem(
        post_cluster(
            &http,
            &zen,
            &token,
            &tenant_id,
            &json!({ "displayName": "x" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(missing["reason"], "INVALID_FIELDS", "{missing}");
    assert_eq!(missing["errors"][0]["field"], "cluster.name", "{missing}");

    // 400: an unknown JSON field, by its JSON path; invalid JSON; an unknown query parameter.
    let unknown = problem(
        post_cluster(
            &http,
            &zen,
            &token,
            &tenant_id,
            &json!({ "name": "other", "colour": "blue" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(unknown["errors"][0]["field"], "cluster.colour", "{unknown}");
    let invalid = http
        .post(zen.http_url(&clusters))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        .header(CONTENT_TYPE, "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    problem(invalid, StatusCode::BAD_REQUEST).await;
    let query = problem(
        http.get(zen.http_url(&format!("{clusters}?colour=blue")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(query["errors"][0]["field"], "colour", "{query}");

    // 401: no token, or a token that is not one.
    let anonymous = problem(
        http.get(zen.http_url(&clusters)).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(anonymous["code"], "UNAUTHENTICATED", "{anonymous}");
    let forged = problem(
        http.get(zen.http_url(&clusters))
            .bearer_auth("not.a.token")
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(forged["code"], "UNAUTHENTICATED", "{forged}");

    // 403: a viewer may read clusters but not create one. The viewer is created, invited and
    // joins over REST.
    json_ok(
        http.post(zen.http_url("/v1/users"))
            .bearer_auth(&token)
            .header("X-Request-Id", request_id())
            .json(&json!({
                "username": "vera",
                "email": "vera@example.test",
                "password": PASSWORD,
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let invite = json_ok(
        http.post(zen.http_url(&format!("/v1/tenants/{tenant_id}/invites")))
            .bearer_auth(&token)
            .header("X-Request-Id", request_id())
            .json(&json!({ "email": "vera@example.test", "role": "ROLE_VIEWER" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let vera = login(&http, &zen, "vera").await;
    let invite_id = invite["invite"]["inviteId"].as_str().unwrap();
    let member = json_ok(
        http.post(zen.http_url(&format!("/v1/invites/{invite_id}:accept")))
            .bearer_auth(&vera)
            .header("X-Request-Id", request_id())
            .json(&json!({ "token": invite["token"] }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(member["member"]["role"], "ROLE_VIEWER", "{member}");
    json_ok(
        http.get(zen.http_url(&clusters))
            .bearer_auth(&vera)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let denied = problem(
        post_cluster(&http, &zen, &vera, &tenant_id, &json!({ "name": "mine" })).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(denied["code"], "PERMISSION_DENIED", "{denied}");
    assert_eq!(denied["reason"], "ROLE_TOO_LOW", "{denied}");
    assert_eq!(denied["type"], "https://zen.dev/problems/role-too-low");

    // 404: no route; and a route to a resource that does not exist.
    let no_route = problem(
        http.get(zen.http_url("/v1/no-such-thing"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(no_route["type"], "https://zen.dev/problems/route-not-found");
    let unknown_id = uuid::Uuid::new_v4();
    problem(
        http.get(zen.http_url(&format!("{clusters}/{unknown_id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;

    // 405: the path exists, the method does not; `Allow` lists the ones that do.
    let response = http
        .delete(zen.http_url(&clusters))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        .send()
        .await
        .unwrap();
    let allow = header(&response, "allow").unwrap_or_default();
    let wrong_method = problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(
        wrong_method["type"],
        "https://zen.dev/problems/method-not-allowed"
    );
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "Allow: {allow}"
    );

    // 409: the name is taken.
    let duplicate = problem(
        post_cluster(&http, &zen, &token, &tenant_id, &json!({ "name": "prod" })).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(duplicate["code"], "ALREADY_EXISTS", "{duplicate}");

    // 413: a body over the limit (declared length, and chunked-free plain body).
    let huge = json!({ "name": "huge", "displayName": "x".repeat(MAX_BODY_BYTES) });
    let too_large = problem(
        post_cluster(&http, &zen, &token, &tenant_id, &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(
        too_large["type"],
        "https://zen.dev/problems/payload-too-large"
    );

    // 415: JSON body under another media type.
    let wrong_type = problem(
        http.post(zen.http_url(&clusters))
            .bearer_auth(&token)
            .header("X-Request-Id", request_id())
            .header(CONTENT_TYPE, "text/plain")
            .body(r#"{"name": "typed"}"#)
            .send()
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    assert_eq!(
        wrong_type["type"],
        "https://zen.dev/problems/unsupported-media-type"
    );
    // `application/*+json` is JSON too.
    json_ok(
        http.post(zen.http_url(&clusters))
            .bearer_auth(&token)
            .header("X-Request-Id", request_id())
            .header(CONTENT_TYPE, "application/merge-patch+json")
            .body(r#"{"name": "typed"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    zen.stop().await;
}

#[tokio::test]
async fn request_headers_are_checked_before_the_call() {
    let zen = start().await;
    let Admin {
        http,
        token,
        tenant_id,
    } = admin_with_tenant(&zen).await;
    let clusters = zen.http_url(&format!("/v1/tenants/{tenant_id}/clusters"));

    // X-Request-Id is required on mutating calls, and must be well-formed.
    let missing = problem(
        http.post(&clusters)
            .bearer_auth(&token)
            .json(&json!({ "name": "no-id" }))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(missing["reason"], "REQUEST_ID_MISSING", "{missing}");
    let malformed = problem(
        http.post(&clusters)
            .bearer_auth(&token)
            .header("X-Request-Id", "has spaces/and slashes")
            .json(&json!({ "name": "no-id" }))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(malformed["reason"], "REQUEST_ID_MISSING", "{malformed}");
    // ... but not on reads, where one is generated and echoed.
    let response = http
        .get(&clusters)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(header(&response, "x-request-id").is_some_and(|id| !id.is_empty()));
    json_ok(response).await;

    // An unknown contract version is refused, naming the supported ones.
    let response = http
        .get(&clusters)
        .bearer_auth(&token)
        .header("X-Zen-Contract-Version", "v99")
        .header("X-Request-Id", "trace-v99")
        .send()
        .await
        .unwrap();
    let version = problem(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(
        version["reason"], "CONTRACT_VERSION_UNSUPPORTED",
        "{version}"
    );
    assert_eq!(version["metadata"]["supported"], "v1", "{version}");
    assert!(
        version["detail"].as_str().unwrap().contains("v1"),
        "{version}"
    );
    assert_eq!(
        version["instance"], "trace-v99",
        "the request id: {version}"
    );
    let response = http
        .get(&clusters)
        .bearer_auth(&token)
        .header("X-Zen-Contract-Version", "v1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "x-zen-contract-version").as_deref(),
        Some("v1")
    );
    json_ok(response).await;

    // X-Tenant-Id must be the tenant addressed.
    let other = uuid::Uuid::new_v4().to_string();
    let mismatch = problem(
        http.get(&clusters)
            .bearer_auth(&token)
            .header("X-Tenant-Id", &other)
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(mismatch["reason"], "TENANT_MISMATCH", "{mismatch}");
    let mismatch = problem(
        http.post(&clusters)
            .bearer_auth(&token)
            .header("X-Request-Id", request_id())
            .header("X-Tenant-Id", &other)
            .json(&json!({ "name": "elsewhere" }))
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(mismatch["reason"], "TENANT_MISMATCH", "{mismatch}");
    json_ok(
        http.get(&clusters)
            .bearer_auth(&token)
            .header("X-Tenant-Id", &tenant_id)
            .send()
            .await
            .unwrap(),
    )
    .await;
    zen.stop().await;
}

/// Sends `body` (raw JSON text) as a new cluster with the given request id.
async fn post_with_id(
    http: &Client,
    url: &str,
    token: &str,
    request_id: &str,
    body: &str,
) -> Response {
    http.post(url)
        .bearer_auth(token)
        .header("X-Request-Id", request_id)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn cluster_names(http: &Client, url: &str, token: &str) -> Vec<String> {
    json_ok(http.get(url).bearer_auth(token).send().await.unwrap()).await["clusters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_request_id_replays_its_first_answer() {
    let zen = start().await;
    let Admin {
        http,
        token,
        tenant_id,
    } = admin_with_tenant(&zen).await;
    let clusters = zen.http_url(&format!("/v1/tenants/{tenant_id}/clusters"));
    let key = request_id();

    let first = post_with_id(
        &http,
        &clusters,
        &token,
        &key,
        r#"{"name": "once", "displayName": "Once"}"#,
    )
    .await;
    assert_eq!(header(&first, "idempotent-replayed"), None);
    let first = json_ok(first).await;

    // The same request (other key order, other spelling of the field name) is the same
    // payload: the stored answer comes back without a second call.
    let again = post_with_id(
        &http,
        &clusters,
        &token,
        &key,
        r#"{ "display_name": "Once", "name": "once" }"#,
    )
    .await;
    assert_eq!(
        header(&again, "idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(&again, "x-request-id").as_deref(),
        Some(key.as_str())
    );
    assert_eq!(json_ok(again).await, first);
    assert_eq!(cluster_names(&http, &clusters, &token).await, ["once"]);

    // The same key with another payload is a conflict, and creates nothing.
    let reused = problem(
        post_with_id(&http, &clusters, &token, &key, r#"{"name": "twice"}"#).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(reused["reason"], "IDEMPOTENCY_KEY_REUSED", "{reused}");
    assert_eq!(cluster_names(&http, &clusters, &token).await, ["once"]);

    // Errors below 500 are stored too: replaying a refused request refuses it again, even
    // once the cause is gone.
    let key = request_id();
    let taken = post_with_id(&http, &clusters, &token, &key, r#"{"name": "once"}"#).await;
    problem(taken, StatusCode::CONFLICT).await;
    let replayed = post_with_id(&http, &clusters, &token, &key, r#"{"name": "once"}"#).await;
    assert_eq!(
        header(&replayed, "idempotent-replayed").as_deref(),
        Some("true")
    );
    problem(replayed, StatusCode::CONFLICT).await;
    zen.stop().await;
}

#[tokio::test]
async fn public_endpoints_answer_without_a_token() {
    let zen = start().await;
    let http = http_client();

    let openapi = json_ok(
        http.get(zen.http_url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    let operation = &openapi["paths"]["/v1/tenants/{tenant_id}/clusters"]["post"];
    assert_eq!(operation["operationId"], "TenancyService_CreateCluster");
    assert_eq!(
        openapi["paths"]["/.well-known/jwks.json"]["get"]["security"],
        json!([]),
        "public operations need no credentials"
    );

    let jwks = json_ok(
        http.get(zen.http_url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA", "{jwks}");
    assert_eq!(key["alg"], "RS256", "{jwks}");
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()), "{jwks}");
    assert!(key.get("d").is_none(), "never the private part: {jwks}");

    // An unknown OIDC provider (none is configured): 404, as a problem even for a browser.
    let response = http
        .get(zen.http_url("/auth/login?provider=nope"))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    let unknown = problem(response, StatusCode::NOT_FOUND).await;
    assert_eq!(unknown["reason"], "UNKNOWN_PROVIDER", "{unknown}");

    // Enrollment with a token that was never issued.
    let enrollment = problem(
        http.post(zen.http_url("/v1/agents/bootstrap"))
            .header("X-Request-Id", request_id())
            .json(&json!({
                "bootstrapToken": "zbt.not-a-real-token",
                "csrPem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            }))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        enrollment["reason"], "BOOTSTRAP_TOKEN_INVALID",
        "{enrollment}"
    );

    // A wrong password is a 401 problem, whatever the user.
    let refused = problem(
        http.post(zen.http_url("/auth/local/login"))
            .json(&json!({ "username": "nobody", "password": "wrong password" }))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(refused["code"], "UNAUTHENTICATED", "{refused}");
    zen.stop().await;
}

/// Without a bearer token, a request through the gateway must not run with the gateway's own
/// service identity: methods open to services (audit logs, events, token validation) are for
/// internal services calling over mTLS, not for anonymous HTTP clients.
#[tokio::test]
async fn anonymous_http_clients_do_not_inherit_the_gateway_identity() {
    let zen = start().await;
    let Admin {
        http,
        token,
        tenant_id,
    } = admin_with_tenant(&zen).await;
    let reads = [
        format!("/v1/tenants/{tenant_id}/auditLogs"),
        format!("/v1/tenants/{tenant_id}/events"),
    ];
    for path in &reads {
        let response = http.get(zen.http_url(path)).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "anonymous GET {path} must be refused; got {status}: {body}"
        );
    }
    let response = http
        .post(zen.http_url(&format!("/v1/tenants/{tenant_id}/auditLogs:verify")))
        .header("X-Request-Id", request_id())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "anonymous POST auditLogs:verify must be refused; got {status}: {body}"
    );
    let response = http
        .post(zen.http_url("/auth/validate"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "anonymous POST /auth/validate must be refused; got {status}: {body}"
    );
    zen.stop().await;
}

/// Two replicas on one PostgreSQL database and one Redis, sharing the PKI and the JWT keys: a
/// token issued by one is honoured by the other, and an `X-Request-Id` first seen by one is
/// replayed by the other without creating anything twice.
#[tokio::test]
async fn idempotency_holds_across_replicas_sharing_postgres_and_redis() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let Some(redis_url) = test_redis_url().await else {
        database.drop_database().await;
        return;
    };
    let global = GlobalArgs {
        database_url: Some(database.url.clone()),
        redis_url: Some(redis_url),
        ..Default::default()
    };
    // One public URL, the issuer of every replica's tokens.
    let serve = ServeArgs {
        public_url: Some("http://zen.replicas.test".into()),
        ..serve_args()
    };
    let a = TestZen::start_with(global.clone(), serve.clone()).await;
    let (mut global_b, mut serve_b) = (global, serve);
    a.share_identity(&mut global_b, &mut serve_b);
    let b = TestZen::start_with(global_b, serve_b).await;
    assert_ne!(a.running.http_addr, b.running.http_addr);

    create_local_user_as_operator(&a, "root", true).await;
    let http = http_client();
    let token = login(&http, &a, "root").await;
    let tenant = create_tenant(&http, &b, &token, "replicated").await;
    let tenant_id = tenant["tenantId"].as_str().unwrap();
    let path = format!("/v1/tenants/{tenant_id}/clusters");
    let body = r#"{"name": "shared", "labels": {"replica": "a"}}"#;
    let key = request_id();

    let first = post_with_id(&http, &a.http_url(&path), &token, &key, body).await;
    assert_eq!(header(&first, "idempotent-replayed"), None);
    let first = json_ok(first).await;

    let replayed = post_with_id(&http, &b.http_url(&path), &token, &key, body).await;
    assert_eq!(
        header(&replayed, "idempotent-replayed").as_deref(),
        Some("true"),
        "replica B must replay what replica A stored"
    );
    assert_eq!(json_ok(replayed).await, first);

    let reused = problem(
        post_with_id(
            &http,
            &b.http_url(&path),
            &token,
            &key,
            r#"{"name": "other"}"#,
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(reused["reason"], "IDEMPOTENCY_KEY_REUSED", "{reused}");

    for replica in [&a, &b] {
        assert_eq!(
            cluster_names(&http, &replica.http_url(&path), &token).await,
            ["shared"],
            "exactly one cluster, seen by both replicas"
        );
    }
    b.stop().await;
    a.stop().await;
    database.drop_database().await;
}
