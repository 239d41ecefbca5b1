//! Allowed read-only calls share audit transactions (group commit) and still each leave their
//! decision in the tenant's chain: many concurrent reads through the gateway, on SQLite and on
//! PostgreSQL, then exactly one `authz.decide` record per read and a chain that verifies; and
//! the roles those decisions reuse for a second: a removed member is refused at once on the
//! replica that removed them and within a second on another.

mod support;

use serde_json::{json, Value};
use support::drill::{assert_chain_verifies, webhook_target, WebhookTarget};
use support::{TestDatabase, TestZen};

const READS: usize = 200;
const CALLERS: usize = 32;

async fn concurrent_reads_are_each_recorded(zen: &TestZen) {
    let WebhookTarget {
        http,
        token,
        tenant_id,
        ..
    } = webhook_target(zen, "reads", json!({})).await;
    let method = "/zen.tenancy.v1.TenancyService/GetTenant";
    let before = count_decisions(zen, &http, &token, &tenant_id, method).await;

    let workers: Vec<_> = (0..CALLERS)
        .map(|worker| {
            let (http, url, token) = (
                http.clone(),
                zen.http_url(&format!("/v1/tenants/{tenant_id}")),
                token.clone(),
            );
            tokio::spawn(async move {
                for _ in (worker..READS).step_by(CALLERS) {
                    let response = http.get(&url).bearer_auth(&token).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    // Counting reads the log too (ListAuditLogs is itself a read): count the target method.
    let after = count_decisions(zen, &http, &token, &tenant_id, method).await;
    assert_eq!(after - before, READS, "one decision per read");

    assert_chain_verifies(&http, zen, &token, &tenant_id).await;
}

/// `authz.decide` records of `method` in the tenant's chain.
async fn count_decisions(
    zen: &TestZen,
    http: &reqwest::Client,
    token: &str,
    tenant_id: &str,
    method: &str,
) -> usize {
    let mut count = 0;
    let mut page_token = String::new();
    loop {
        let page: Value = http
            .get(zen.http_url(&format!(
                "/v1/tenants/{tenant_id}/auditLogs?action=authz.decide&pageSize=500&pageToken={page_token}"
            )))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        count += page["auditRecords"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["resourceId"] == method && r["outcome"] == "AUDIT_OUTCOME_SUCCESS")
            .count();
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => page_token = next.to_owned(),
            _ => return count,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_are_each_recorded_on_sqlite() {
    let zen = TestZen::start_with(
        zen::config::GlobalArgs::default(),
        zen::config::ServeArgs {
            local_login: Some(true),
            ..Default::default()
        },
    )
    .await;
    concurrent_reads_are_each_recorded(&zen).await;
    zen.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_are_each_recorded_on_postgres() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let zen = TestZen::start_with(
        zen::config::GlobalArgs {
            database_url: Some(database.url.clone()),
            ..Default::default()
        },
        zen::config::ServeArgs {
            local_login: Some(true),
            ..Default::default()
        },
    )
    .await;
    concurrent_reads_are_each_recorded(&zen).await;
    zen.stop().await;
    database.drop_database().await;
}

async fn login(http: &reqwest::Client, zen: &TestZen, username: &str) -> String {
    let login: Value = http
        .post(zen.http_url("/auth/local/login"))
        .json(&json!({ "username": username, "password": support::PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    login["token"]["accessToken"].as_str().unwrap().to_owned()
}

/// Roles read for authorization are reused for up to a second: a removal through one replica
/// is in effect at once there, and within a second on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_member_is_refused_on_every_replica_within_a_second() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let Some(redis_url) = support::test_redis_url().await else {
        database.drop_database().await;
        return;
    };
    let global = zen::config::GlobalArgs {
        database_url: Some(database.url.clone()),
        redis_url: Some(redis_url),
        ..Default::default()
    };
    let serve = zen::config::ServeArgs {
        local_login: Some(true),
        public_url: Some("http://zen.replicas.test".into()),
        ..Default::default()
    };
    let a = TestZen::start_with(global.clone(), serve.clone()).await;
    let (mut global_b, mut serve_b) = (global, serve);
    a.share_identity(&mut global_b, &mut serve_b);
    let b = TestZen::start_with(global_b, serve_b).await;

    let WebhookTarget {
        http,
        token: root,
        tenant_id,
        ..
    } = webhook_target(&a, "replicas", json!({})).await;
    support::create_local_user_as_operator(&a, "gina", false).await;
    let invite: Value = http
        .post(a.http_url(&format!("/v1/tenants/{tenant_id}/invites")))
        .bearer_auth(&root)
        .header("X-Request-Id", support::request_id())
        .json(&json!({ "email": "gina@example.test", "role": "ROLE_VIEWER" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let gina = login(&http, &b, "gina").await;
    let accepted: Value = http
        .post(b.http_url(&format!(
            "/v1/invites/{}:accept",
            invite["invite"]["inviteId"].as_str().unwrap()
        )))
        .bearer_auth(&gina)
        .header("X-Request-Id", support::request_id())
        .json(&json!({ "token": invite["token"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let gina_id = accepted["member"]["userId"].as_str().unwrap().to_owned();
    let read = |zen: &TestZen| {
        http.get(zen.http_url(&format!("/v1/tenants/{tenant_id}")))
            .bearer_auth(&gina)
            .send()
    };
    // Both replicas have just read gina's role.
    assert_eq!(read(&a).await.unwrap().status(), 200);
    assert_eq!(read(&b).await.unwrap().status(), 200);

    let removed = http
        .delete(a.http_url(&format!("/v1/tenants/{tenant_id}/members/{gina_id}")))
        .bearer_auth(&root)
        .header("X-Request-Id", support::request_id())
        .send()
        .await
        .unwrap();
    assert!(removed.status().is_success(), "{}", removed.status());
    let removed_at = std::time::Instant::now();
    assert_eq!(
        read(&a).await.unwrap().status(),
        403,
        "at once on replica A"
    );
    loop {
        let status = read(&b).await.unwrap().status();
        if status == 403 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            removed_at.elapsed() < std::time::Duration::from_secs(1),
            "replica B still serves a removed member after {:?}",
            removed_at.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!(
        "refused on replica B {:?} after the removal",
        removed_at.elapsed()
    );
    a.stop().await;
    b.stop().await;
    database.drop_database().await;
}
