//! Retention end to end (docs/RETENTION.md): tenant admins set their windows over the API, the
//! janitor runs on one replica at a time against a real database (SQLite, and PostgreSQL where
//! it is reachable), reports what it deleted on /metrics, and the audit log leaves the
//! database only as a signed segment that the `zen` binary verifies offline.

mod support;

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use support::{create_local_user_as_operator, http_client, request_id, TestDatabase, TestZen};
use uuid::Uuid;
use zen::config::{Config, GlobalArgs, ServeArgs};
use zen::retention::{Janitor, RetentionSettings};
use zen_store::{NewCluster, NewEvent, Retention, Scope, Store};

async fn start(database_url: Option<String>) -> TestZen {
    TestZen::start_with(
        GlobalArgs {
            database_url,
            ..Default::default()
        },
        ServeArgs {
            local_login: Some(true),
            // The tests drive janitors themselves, with a clock they choose.
            retention_interval_secs: Some(0),
            ..Default::default()
        },
    )
    .await
}

/// Another handle on the database of `zen` (as a second replica would have).
async fn open_store(zen: &TestZen, database_url: Option<String>) -> Store {
    let config = Config::resolve(
        &GlobalArgs {
            data_dir: Some(zen.data_dir.path().to_owned()),
            database_url,
            ..Default::default()
        },
        &ServeArgs::default(),
    )
    .unwrap();
    zen::store::open(&config).await.unwrap()
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
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn token(http: &Client, zen: &TestZen, username: &str) -> String {
    let response = http
        .post(zen.http_url("/auth/local/login"))
        .header("x-request-id", request_id())
        .json(&json!({ "username": username, "password": support::PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["token"]["accessToken"].as_str().unwrap().to_owned()
}

/// An owner signed in, with a tenant of their own.
async fn tenant_with_owner(http: &Client, zen: &TestZen, name: &str) -> (String, Uuid) {
    create_local_user_as_operator(zen, &format!("{name}-owner"), false).await;
    let owner = token(http, zen, &format!("{name}-owner")).await;
    let (status, tenant) = call(
        http,
        reqwest::Method::POST,
        zen.http_url("/v1/tenants"),
        &owner,
        Some(json!({ "name": name })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tenant}");
    let id = tenant["tenant"]["tenantId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (owner, id)
}

#[tokio::test]
async fn tenant_admins_set_their_retention_within_bounds() {
    let zen = start(None).await;
    let http = http_client();
    let (owner, tenant) = tenant_with_owner(&http, &zen, "keeper").await;
    let url = |mask: &str| zen.http_url(&format!("/v1/tenants/{tenant}?updateMask={mask}"));

    let (status, body) = call(
        &http,
        reqwest::Method::PATCH,
        url("retention"),
        &owner,
        Some(json!({ "retention": { "eventsDays": 30, "receiptsDays": 14 } })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tenant"]["retention"]["eventsDays"], 30, "{body}");
    assert_eq!(body["tenant"]["retention"]["receiptsDays"], 14, "{body}");

    // One window at a time: the others keep their values.
    let (status, body) = call(
        &http,
        reqwest::Method::PATCH,
        url("retention.deadLettersDays"),
        &owner,
        Some(json!({ "retention": { "deadLettersDays": 7, "eventsDays": 1 } })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let retention = &body["tenant"]["retention"];
    assert_eq!(
        (
            &retention["eventsDays"],
            &retention["receiptsDays"],
            &retention["deadLettersDays"]
        ),
        (&json!(30), &json!(14), &json!(7)),
        "{body}"
    );

    // Receipts shorter than the resend bound, or windows beyond 100 years: 400, nothing kept.
    for (mask, patch, field) in [
        (
            "retention.receiptsDays",
            json!({ "retention": { "receiptsDays": 3 } }),
            "receipts_days",
        ),
        (
            "retention.eventsDays",
            json!({ "retention": { "eventsDays": 40000 } }),
            "events_days",
        ),
    ] {
        let (status, problem) = call(
            &http,
            reqwest::Method::PATCH,
            url(mask),
            &owner,
            Some(patch),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{mask}: {problem}");
        assert!(problem.to_string().contains(field), "{problem}");
    }
    let (status, current) = call(
        &http,
        reqwest::Method::GET,
        zen.http_url(&format!("/v1/tenants/{tenant}")),
        &owner,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        current["tenant"]["retention"]["receiptsDays"], 14,
        "{current}"
    );
    assert_eq!(
        current["tenant"]["retention"]["eventsDays"], 30,
        "{current}"
    );
    zen.stop().await;
}

fn event(i: usize) -> NewEvent {
    NewEvent {
        source_event_id: format!("e-{i}"),
        source: "falco".into(),
        source_name: Some("falco-node-1".into()),
        category: "security".into(),
        severity: 3,
        event_type: "terminal-shell-in-container".into(),
        title: "Shell spawned".into(),
        resource: json!({"kind": "Pod", "namespace": "prod", "name": format!("web-{i}")}),
        details: json!({}),
        fingerprint: format!("fp-{i}"),
        detected_at: Utc::now(),
    }
}

async fn count(store: &Store, tenant: Uuid) -> usize {
    let mut tx = store
        .begin_read(&Scope::tenant(tenant, None))
        .await
        .unwrap();
    tx.events().tail(0, 1000).await.unwrap().len()
}

fn run_zen(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_zen"))
        .args(args)
        .env_remove("ZEN_DATABASE_URL")
        .output()
        .expect("run zen")
}

async fn janitor_prunes_on_one_replica_and_archives_the_audit_log(database_url: Option<String>) {
    let zen = start(database_url.clone()).await;
    let http = http_client();
    let (owner, tenant) = tenant_with_owner(&http, &zen, "janitor").await;
    // The tenant keeps events 10 days; receipts, remediations and dead letters the defaults.
    let (status, body) = call(
        &http,
        reqwest::Method::PATCH,
        zen.http_url(&format!(
            "/v1/tenants/{tenant}?updateMask=retention.eventsDays"
        )),
        &owner,
        Some(json!({ "retention": { "eventsDays": 10 } })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let store = open_store(&zen, database_url.clone()).await;
    let scope = Scope::tenant(tenant, None);
    let mut tx = store.begin(&scope).await.unwrap();
    let cluster = tx
        .clusters()
        .create(NewCluster {
            name: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let events: Vec<NewEvent> = (0..25).map(event).collect();
    tx.events()
        .ingest(
            Some(cluster.id),
            &events,
            Duration::from_secs(60),
            Utc::now(),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&store, tenant).await, 25);

    let archive = tempfile::tempdir().unwrap();
    let key_path = zen.data_dir.path().join("keys").join("audit-ed25519.pk8");
    let key = std::sync::Arc::new(zen::audit_archive::SigningKey::load(&key_path, true).unwrap());
    let settings = RetentionSettings {
        batch_size: 7,
        defaults: Retention {
            events_days: 365,
            receipts_days: 30,
            remediations_days: 365,
            dead_letters_days: 30,
        },
        audit_days: 30,
        audit_archive_dir: Some(archive.path().to_owned()),
        ..Default::default()
    };
    // Two replicas, each with its own handle on the database, 20 days from now.
    let later = Utc::now() + chrono::Duration::days(20);
    let a = Janitor::new(store.clone(), settings.clone(), Some(key.clone()));
    let b = Janitor::new(
        open_store(&zen, database_url.clone()).await,
        settings,
        Some(key.clone()),
    );
    let (ra, rb) = tokio::join!(a.run_if_due(later), b.run_if_due(later));
    let reports: Vec<_> = [ra.unwrap(), rb.unwrap()].into_iter().flatten().collect();
    assert_eq!(reports.len(), 1, "exactly one replica ran: {reports:?}");
    let report = &reports[0];
    assert_eq!(report.events, 25, "past the tenant's 10 days: {report:?}");
    assert_eq!(report.event_receipts, 0, "receipts keep the 30-day default");
    assert_eq!(count(&store, tenant).await, 0);
    // Not due again within the interval, on either replica.
    assert!(a.run_if_due(later).await.unwrap().is_none());
    assert!(b.run_if_due(later).await.unwrap().is_none());

    let metrics = reqwest::get(zen.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("zen_retention_deleted_total{table=\"events\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("zen_retention_last_run_timestamp_seconds"),
        "{metrics}"
    );

    // Audit records stay 30 days (20 days on: all of them); 60 days on, they leave as segments.
    let much_later = later + chrono::Duration::days(40);
    let report = a.run(much_later).await.unwrap();
    assert!(report.audit_logs > 0, "{report:?}");
    let segments: Vec<_> = std::fs::read_dir(archive.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(&tenant.to_string()))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let segment = &segments[0];

    // The database's chain verifies from the cut, and keeps verifying as it grows.
    let mut tx = store
        .begin_read(&Scope::platform_admin(None))
        .await
        .unwrap();
    let v = tx.audit().verify_chain(tenant).await.unwrap();
    assert!(v.problem.is_none(), "{v:?}");
    assert!(
        v.records_checked >= 1,
        "the export's own record is kept: {v:?}"
    );
    drop(tx);

    // Offline: the binary verifies the segment with the public key alone; one changed byte
    // fails it.
    let public = zen.data_dir.path().join("audit.pub");
    std::fs::write(&public, key.public_key()).unwrap();
    let ok = run_zen(&[
        "audit",
        "verify",
        "--segment",
        segment.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("ok"));
    let mut bytes = std::fs::read(segment).unwrap();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    let tampered = zen.data_dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, &bytes).unwrap();
    let bad = run_zen(&[
        "audit",
        "verify",
        "--segment",
        tampered.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("does not verify"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    check_key_file_mode(&key_path);
    store.close().await;
    zen.stop().await;
}

fn check_key_file_mode(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the private key is readable by its owner only"
        );
    }
}

#[tokio::test]
async fn janitor_on_sqlite() {
    janitor_prunes_on_one_replica_and_archives_the_audit_log(None).await;
}

#[tokio::test]
async fn janitor_on_postgres() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    janitor_prunes_on_one_replica_and_archives_the_audit_log(Some(db.url.clone())).await;
    db.drop_database().await;
}
