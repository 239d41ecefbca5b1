//! Allowed read-only calls share audit transactions (group commit) and still each leave their
//! decision in the tenant's chain: many concurrent reads through the gateway, on SQLite and on
//! PostgreSQL, then exactly one `authz.decide` record per read and a chain that verifies.

mod support;

use serde_json::{json, Value};
use support::drill::{webhook_target, WebhookTarget};
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

    let verified: Value = http
        .post(zen.http_url(&format!("/v1/tenants/{tenant_id}/auditLogs:verify")))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["ok"], true, "{verified}");
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
