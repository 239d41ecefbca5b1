//! TenancyService and AuditService end to end: real mTLS, the real server, SQLite and
//! PostgreSQL (row-level security on), through the generated client.

mod support;

use audit::audit_service_client::AuditServiceClient;
use pb::tenancy_service_client::TenancyServiceClient;
use support::{TestDatabase, TestZen};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;
use zen::proto::zen::audit::v1 as audit;
use zen::proto::zen::tenancy::v1 as pb;

/// A request carrying a request id, as every mutating call must.
fn req<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let id = uuid::Uuid::new_v4().to_string();
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

async fn create_tenant(
    client: &mut TenancyServiceClient<Channel>,
    name: &str,
    max_clusters: i32,
) -> pb::Tenant {
    client
        .create_tenant(req(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                name: name.into(),
                display_name: format!("{name} inc."),
                quotas: Some(pb::TenantQuotas {
                    max_clusters,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }))
        .await
        .expect("create tenant")
        .into_inner()
        .tenant
        .unwrap()
}

async fn create_cluster(
    client: &mut TenancyServiceClient<Channel>,
    tenant_id: &str,
    name: &str,
) -> Result<pb::Cluster, tonic::Status> {
    client
        .create_cluster(req(pb::CreateClusterRequest {
            tenant_id: tenant_id.into(),
            cluster: Some(pb::Cluster {
                name: name.into(),
                api_endpoint: "https://k8s.example:6443".into(),
                labels: [("env".to_owned(), "prod".to_owned())].into(),
                ..Default::default()
            }),
        }))
        .await
        .map(|r| r.into_inner().cluster.unwrap())
}

/// The whole tenancy flow an operator goes through, then the audit trail it left.
async fn tenancy_flow(zen: &TestZen) {
    let admin = zen.admin().await;
    let mut tenancy = TenancyServiceClient::new(admin.clone());
    let mut audit = AuditServiceClient::new(admin);

    // Tenants: create, read, list, optimistic concurrency, uniqueness, validation.
    let tenant = create_tenant(&mut tenancy, "acme", 2).await;
    assert_eq!(tenant.version, 1);
    assert_eq!(tenant.status, pb::TenantStatus::Active as i32);
    let tid = tenant.tenant_id.clone();
    let got = tenancy
        .get_tenant(pb::GetTenantRequest {
            tenant_id: tid.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(got.name, "acme");

    let duplicate = tenancy
        .create_tenant(req(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                name: "acme".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    let bad_name = tenancy
        .create_tenant(req(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                name: "Not A DNS Label!".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), Code::InvalidArgument);
    let violations = bad_name.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "tenant.name");

    let update = |version: i64| pb::UpdateTenantRequest {
        tenant_id: tid.clone(),
        tenant: Some(pb::Tenant {
            display_name: "ACME Corporation".into(),
            version,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["display_name".into()],
        }),
    };
    let updated = tenancy
        .update_tenant(req(update(1)))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(updated.display_name, "ACME Corporation");
    assert_eq!(updated.version, 2);
    let stale = tenancy.update_tenant(req(update(1))).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert_eq!(
        stale.get_details_error_info().unwrap().reason,
        "VERSION_MISMATCH"
    );
    // AIP-154: no version (0) updates whatever is current; a negative one breaks the contract.
    let unversioned = tenancy
        .update_tenant(req(update(0)))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(unversioned.version, 3);
    let negative = tenancy.update_tenant(req(update(-1))).await.unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);
    assert_eq!(
        negative.get_details_bad_request().unwrap().field_violations[0].field,
        "tenant.version"
    );

    // Clusters: quota, paging, update, delete, name reuse.
    let first = create_cluster(&mut tenancy, &tid, "prod-eu").await.unwrap();
    assert_eq!(first.labels["env"], "prod");
    create_cluster(&mut tenancy, &tid, "prod-us").await.unwrap();
    let over_quota = create_cluster(&mut tenancy, &tid, "staging")
        .await
        .unwrap_err();
    assert_eq!(over_quota.code(), Code::ResourceExhausted);
    assert_eq!(
        over_quota.get_details_error_info().unwrap().reason,
        "QUOTA_EXCEEDED"
    );
    let taken = create_cluster(&mut tenancy, &tid, "prod-eu")
        .await
        .unwrap_err();
    assert!(
        matches!(taken.code(), Code::AlreadyExists | Code::ResourceExhausted),
        "{taken:?}"
    );

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = tenancy
            .list_clusters(pb::ListClustersRequest {
                tenant_id: tid.clone(),
                page_size: 1,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.clusters.len() <= 1);
        seen.extend(page.clusters.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ["prod-eu", "prod-us"]);

    let renamed = tenancy
        .update_cluster(req(pb::UpdateClusterRequest {
            tenant_id: tid.clone(),
            cluster_id: first.cluster_id.clone(),
            cluster: Some(pb::Cluster {
                display_name: "Production EU".into(),
                version: first.version,
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    assert_eq!(renamed.display_name, "Production EU");
    assert_eq!(
        renamed.labels["env"], "prod",
        "fields outside the mask are kept"
    );

    let token = tenancy
        .create_bootstrap_token(req(pb::CreateBootstrapTokenRequest {
            tenant_id: tid.clone(),
            cluster_id: first.cluster_id.clone(),
            ttl: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(token.token.starts_with(&format!("zbt.{tid}.")));

    tenancy
        .delete_cluster(req(pb::DeleteClusterRequest {
            tenant_id: tid.clone(),
            cluster_id: first.cluster_id.clone(),
            version: 0,
        }))
        .await
        .unwrap();
    create_cluster(&mut tenancy, &tid, "prod-eu")
        .await
        .expect("a deleted cluster's name and quota slot are free again");

    // Suspension stops changes inside the tenant.
    tenancy
        .suspend_tenant(req(pb::SuspendTenantRequest {
            tenant_id: tid.clone(),
            reason: "unpaid invoice".into(),
            version: 0,
        }))
        .await
        .unwrap();
    let suspended = create_cluster(&mut tenancy, &tid, "late")
        .await
        .unwrap_err();
    assert_eq!(suspended.code(), Code::FailedPrecondition);
    assert_eq!(
        suspended.get_details_error_info().unwrap().reason,
        "TENANT_SUSPENDED"
    );
    tenancy
        .resume_tenant(req(pb::ResumeTenantRequest {
            tenant_id: tid.clone(),
            version: 0,
        }))
        .await
        .unwrap();

    // Invites hand out their token once.
    let invite = tenancy
        .create_invite(req(pb::CreateInviteRequest {
            tenant_id: tid.clone(),
            email: "owner@acme.example".into(),
            role: zen::proto::zen::common::v1::Role::Owner as i32,
            ttl: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(invite.token.starts_with(&format!("zinv.{tid}.")));

    // Tenants are isolated: another tenant sees none of acme's clusters.
    let other = create_tenant(&mut tenancy, "globex", 5).await;
    let foreign = tenancy
        .get_cluster(pb::GetClusterRequest {
            tenant_id: other.tenant_id.clone(),
            cluster_id: renamed.cluster_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);

    // The audit trail of acme: every mutation, with the request id, on an intact chain.
    let records = audit
        .list_audit_logs(audit::ListAuditLogsRequest {
            tenant_id: tid.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .audit_records;
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    for action in [
        "tenant.create",
        "tenant.update",
        "cluster.create",
        "cluster.update",
        "cluster.delete",
        "bootstrap_token.create",
        "tenant.suspend",
        "tenant.resume",
        "member.invite",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    assert!(records
        .iter()
        .all(|r| !r.request_id.is_empty() && r.hash.len() == 64));
    let failures = records
        .iter()
        .filter(|r| r.outcome == audit::AuditOutcome::Failure as i32)
        .count();
    assert!(failures >= 3, "refused changes are audited too");
    let secrets_leaked = records.iter().any(|r| {
        format!("{:?}", r.details).contains(&token.token)
            || format!("{:?}", r.details).contains(&invite.token)
    });
    assert!(!secrets_leaked, "tokens never reach the audit log");

    let verified = audit
        .verify_chain(audit::VerifyChainRequest {
            tenant_id: tid.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.records_checked, verified.last_sequence);
    assert!(verified.records_checked >= records.len() as i64);
}

#[tokio::test]
async fn tenancy_flow_on_sqlite() {
    let zen = TestZen::start().await;
    tenancy_flow(&zen).await;
    zen.stop().await;
}

#[tokio::test]
async fn tenancy_flow_on_postgres_with_row_level_security() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let zen = TestZen::start_with_database(Some(database.url.clone())).await;
    tenancy_flow(&zen).await;
    zen.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn callers_outside_a_methods_policy_are_refused_and_audited() {
    let zen = TestZen::start().await;
    let files = zen_security::PkiFiles::new(zen.pki());
    let ca = files.load_ca().unwrap();
    let agent = zen_security::PeerIdentity::Agent {
        tenant_id: uuid::Uuid::new_v4(),
        cluster_id: uuid::Uuid::new_v4(),
    };
    let issued = ca
        .issue_client(&agent, std::time::Duration::from_secs(600))
        .unwrap();
    files.write_identity("agent", &issued).unwrap();
    let gateway = zen_security::PeerIdentity::Service {
        name: "gateway".into(),
    };
    let issued = ca
        .issue_client(&gateway, std::time::Duration::from_secs(600))
        .unwrap();
    files.write_identity("gateway", &issued).unwrap();

    // An agent may never create tenants; the gateway's own identity may not act for a person
    // without that person's token.
    for (name, code, reason) in [
        ("agent", Code::PermissionDenied, "CALLER_NOT_ALLOWED"),
        ("gateway", Code::Unauthenticated, "AUTHENTICATION_REQUIRED"),
    ] {
        let mut client = TenancyServiceClient::new(zen.channel_as(name).await.unwrap());
        let refused = client
            .create_tenant(req(pb::CreateTenantRequest {
                tenant: Some(pb::Tenant {
                    name: "sneaky".into(),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{name}");
        assert_eq!(refused.get_details_error_info().unwrap().reason, reason);
    }

    // The operator reads the platform chain: both refusals are there, and it verifies.
    let mut audit = AuditServiceClient::new(zen.admin().await);
    let platform = uuid::Uuid::nil().to_string();
    let denied = audit
        .list_audit_logs(audit::ListAuditLogsRequest {
            tenant_id: platform.clone(),
            outcome: audit::AuditOutcome::Denied as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .audit_records;
    assert!(
        denied.iter().any(
            // Through the gateway without a token: an anonymous caller (user, no id).
            |r| r.resource_id == "/zen.tenancy.v1.TenancyService/CreateTenant"
                && r.actor.as_ref().unwrap().r#type == audit::ActorType::User as i32
                && r.actor.as_ref().unwrap().id.is_empty()
        ),
        "{denied:?}"
    );
    let verified = audit
        .verify_chain(audit::VerifyChainRequest {
            tenant_id: platform,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok);
    zen.stop().await;
}

/// `zen audit verify` on a real data dir: intact, then edited behind Zen's back.
#[tokio::test]
async fn zen_audit_verify_names_the_first_tampered_record() {
    use sqlx::Connection;
    let zen = TestZen::start().await;
    let mut tenancy = TenancyServiceClient::new(zen.admin().await);
    let tenant = create_tenant(&mut tenancy, "acme", 3).await;
    create_cluster(&mut tenancy, &tenant.tenant_id, "prod")
        .await
        .unwrap();
    create_cluster(&mut tenancy, &tenant.tenant_id, "dev")
        .await
        .unwrap();
    let data_dir = zen.data_dir.path().to_owned();
    let verify = |tenant: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_zen"))
            .args(["audit", "verify", "--tenant", tenant, "--data-dir"])
            .arg(&data_dir)
            .env_remove("ZEN_DATABASE_URL")
            .output()
            .unwrap()
    };
    let intact = verify(&tenant.tenant_id);
    assert!(
        intact.status.success(),
        "{}",
        String::from_utf8_lossy(&intact.stderr)
    );
    assert!(String::from_utf8_lossy(&intact.stdout).starts_with("ok"));

    // Someone with the database file rewrites record 3 (the triggers are Zen's, not a lock).
    let url = format!("sqlite://{}", data_dir.join("zen.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("DROP TRIGGER audit_logs_no_update")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_logs SET action = 'cluster.harmless' WHERE tenant_id = $1 AND seq = 3",
    )
    .bind(&tenant.tenant_id)
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    let tampered = verify(&tenant.tenant_id);
    assert_eq!(tampered.status.code(), Some(1));
    let report = String::from_utf8_lossy(&tampered.stdout);
    assert!(
        report.contains("BROKEN") && report.contains("seq 3"),
        "{report}"
    );
    zen.stop().await;
}
