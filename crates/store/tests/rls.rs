//! PostgreSQL row-level security: the database itself keeps tenants apart,
//! whatever SQL the application role runs.

mod common;

use chrono::Utc;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use common::Harness;
use zen_store::*;

const TENANT_TABLES: &[&str] = &[
    "tenants",
    "tenant_members",
    "invites",
    "clusters",
    "bootstrap_tokens",
    "events",
    "event_changes",
    "event_receipts",
    "event_seq_heads",
    "remediations",
    "audit_logs",
    "audit_chain_heads",
];

async fn pg() -> Option<Harness> {
    Harness::new(BackendKind::Postgres, true).await
}

fn security_event(id: &str, fingerprint: &str) -> NewEvent {
    NewEvent {
        source_event_id: id.into(),
        source: "falco".into(),
        category: "security".into(),
        severity: 4,
        event_type: "shell".into(),
        fingerprint: fingerprint.into(),
        detected_at: Utc::now(),
        ..Default::default()
    }
}

/// Two tenants with a cluster, a bootstrap token, two events folded into
/// one (an event, two receipts, a sequence head) and an audit record each.
async fn two_tenants(h: &Harness) -> [(Tenant, Cluster); 2] {
    let mut out = Vec::new();
    for name in ["alpha", "beta"] {
        let mut tx = h.tx(&Scope::anonymous()).await;
        let owner = tx
            .users()
            .create_local(NewLocalUser {
                username: format!("{name}-owner"),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut tx = h.tx(&Scope::user(owner.id)).await;
        let t = tx
            .tenants()
            .create(
                NewTenant {
                    name: name.into(),
                    ..Default::default()
                },
                Some(owner.id),
            )
            .await
            .unwrap();
        let c = tx
            .clusters()
            .create(NewCluster {
                name: format!("{name}-cluster"),
                ..Default::default()
            })
            .await
            .unwrap();
        tx.bootstrap_tokens()
            .create(
                NewBootstrapToken {
                    cluster_id: c.id,
                    expires_at: Utc::now() + chrono::Duration::hours(1),
                    created_by: None,
                },
                &format!("token-{}", Uuid::new_v4()),
            )
            .await
            .unwrap();
        tx.events()
            .ingest(
                Some(c.id),
                &[security_event("e-1", "fp-1"), security_event("e-2", "fp-1")],
                std::time::Duration::from_secs(3600),
                Utc::now(),
            )
            .await
            .unwrap();
        tx.audit()
            .append(NewAuditRecord::new(
                "user",
                "cluster.create",
                "cluster",
                AuditOutcome::Success,
            ))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        out.push((t, c));
    }
    out.try_into().unwrap()
}

/// A transaction on the application pool with the given RLS settings
/// (`None`: the setting is never set).
async fn app_tx(
    pool: &PgPool,
    tenant: Option<Uuid>,
    admin: bool,
) -> Transaction<'static, Postgres> {
    let mut tx = pool.begin().await.unwrap();
    if let Some(t) = tenant {
        sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
            .bind(t.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    if admin {
        sqlx::query("SELECT set_config('app.platform_admin', 'on', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx
}

async fn count(tx: &mut Transaction<'static, Postgres>, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&mut **tx)
        .await
        .unwrap()
}

/// Run `query` and expect PostgreSQL to refuse it for privilege / RLS
/// (SQLSTATE 42501).
async fn refused(
    tx: &mut Transaction<'static, Postgres>,
    query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
) -> sqlx::Error {
    let err = query.execute(&mut **tx).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{err}");
    err
}

fn sqlstate(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.code().unwrap_or_default().into_owned(),
        other => format!("{other}"),
    }
}

#[tokio::test]
async fn app_pool_runs_as_a_role_subject_to_rls() {
    let Some(h) = pg().await else { return };
    let pool = h.store.pg_app_pool().unwrap();
    let (user, superuser, bypass): (String, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(user, DEFAULT_APP_ROLE);
    assert!(!superuser && !bypass);

    for table in TENANT_TABLES.iter().chain(&["users"]) {
        let (enabled, forced, owner): (bool, bool, String) = sqlx::query_as(
            "SELECT relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner)::text \
             FROM pg_class WHERE relname = $1 AND relnamespace = 'public'::regnamespace",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap();
        assert!(enabled && forced, "{table}: RLS must be enabled and forced");
        assert_ne!(
            owner, DEFAULT_APP_ROLE,
            "{table}: the app role must not own it"
        );
    }

    // Without SET ROLE the pool runs as the URL's user; bad role names are refused.
    let plain = Store::connect_with(
        &h.url,
        StoreOptions {
            app_role: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(plain.pg_app_pool().unwrap())
        .await
        .unwrap();
    assert_ne!(who, DEFAULT_APP_ROLE);
    plain.close().await;
    let err = Store::connect_with(
        &h.url,
        StoreOptions {
            app_role: Some("zen_app; DROP TABLE users".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "app_role",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn rls_keeps_tenants_apart() {
    let Some(h) = pg().await else { return };
    let [(a, ca), (b, cb)] = two_tenants(&h).await;
    let pool = h.store.pg_app_pool().unwrap();

    let mut tx = app_tx(pool, Some(a.id), false).await;
    // An unscoped SELECT returns only tenant A's rows.
    let tenants: Vec<Uuid> = sqlx::query_scalar("SELECT tenant_id FROM clusters")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, vec![a.id]);
    for table in TENANT_TABLES {
        let column = if *table == "tenants" {
            "id"
        } else {
            "tenant_id"
        };
        let foreign: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE {column} <> $1"
        )))
        .bind(a.id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(foreign, 0, "{table} leaks another tenant's rows");
    }
    assert!(count(&mut tx, "tenant_members").await >= 1);
    // An UPDATE or DELETE of B's rows touches nothing.
    let n = sqlx::query("UPDATE clusters SET display_name = 'pwned' WHERE id = $1")
        .bind(cb.id)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 0);
    let n = sqlx::query("DELETE FROM bootstrap_tokens WHERE tenant_id = $1")
        .bind(b.id)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 0);
    // Moving A's row into B is refused by WITH CHECK.
    refused(
        &mut tx,
        sqlx::query("UPDATE clusters SET tenant_id = $1 WHERE id = $2")
            .bind(b.id)
            .bind(ca.id),
    )
    .await;
    tx.rollback().await.unwrap();

    // An INSERT naming tenant B is refused by the database.
    let mut tx = app_tx(pool, Some(a.id), false).await;
    let err = refused(
        &mut tx,
        sqlx::query(
            "INSERT INTO clusters (id, tenant_id, name, display_name, status, created_at, \
             updated_at) VALUES ($1, $2, 'sneaky', 'sneaky', 'ready', now(), now())",
        )
        .bind(Uuid::now_v7())
        .bind(b.id),
    )
    .await;
    assert!(err.to_string().contains("row-level security"), "{err}");
    tx.rollback().await.unwrap();

    // Forging B's audit chain is refused too.
    let mut tx = app_tx(pool, Some(a.id), false).await;
    let forged = sqlx::query("UPDATE audit_chain_heads SET last_seq = 0 WHERE tenant_id = $1")
        .bind(b.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(forged.rows_affected(), 0);
    tx.rollback().await.unwrap();

    // With no setting at all: zero rows everywhere (fail closed).
    let mut tx = app_tx(pool, None, false).await;
    for table in TENANT_TABLES {
        assert_eq!(
            count(&mut tx, table).await,
            0,
            "{table} visible without a tenant"
        );
    }
    // users stay readable (login), but not writable without a user setting.
    assert!(count(&mut tx, "users").await >= 2);
    refused(
        &mut tx,
        sqlx::query(
            "INSERT INTO users (id, issuer, subject, created_at, updated_at) \
             VALUES ($1, 'x', 'y', now(), now())",
        )
        .bind(Uuid::now_v7()),
    )
    .await;
    tx.rollback().await.unwrap();

    // The platform-admin escape sees both.
    let mut tx = app_tx(pool, None, true).await;
    assert_eq!(count(&mut tx, "clusters").await, 2);
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn settings_do_not_leak_across_pooled_connections() {
    let Some(h) = pg().await else { return };
    let [(a, _), _] = two_tenants(&h).await;
    // One connection, so the raw query below reuses the store's connection.
    let store = Store::connect_with(
        &h.url,
        StoreOptions {
            max_connections: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut tx = store.begin(&Scope::tenant(a.id, None)).await.unwrap();
    assert_eq!(tx.clusters().count_live().await.unwrap(), 1);
    tx.commit().await.unwrap();
    let pool = store.pg_app_pool().unwrap();
    let setting: Option<String> =
        sqlx::query_scalar("SELECT NULLIF(current_setting('app.current_tenant_id', true), '')")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(setting, None);
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM clusters")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(visible, 0);
    store.close().await;
}

async fn remediate(
    tx: &mut Transaction<'static, Postgres>,
    tenant: Uuid,
    cluster: Uuid,
    event: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO remediations (id, tenant_id, cluster_id, event_id, status, created_at) \
         VALUES ($1, $2, $3, $4, 'proposed', now())",
    )
    .bind(Uuid::now_v7())
    .bind(tenant)
    .bind(cluster)
    .bind(event)
    .execute(&mut **tx)
    .await
    .map(drop)
}

#[tokio::test]
async fn cross_tenant_remediation_refused_even_for_platform_admin() {
    let Some(h) = pg().await else { return };
    let [(a, ca), (b, cb)] = two_tenants(&h).await;
    let pool = h.store.pg_app_pool().unwrap();
    let mut tx = app_tx(pool, None, true).await;
    let insert_event =
        "INSERT INTO events (id, tenant_id, cluster_id, seq, origin, source_event_id, source, \
        category, severity, type, fingerprint, detected_at, received_at, last_seen_at) \
        VALUES ($1, $2, $3, 1000, $3::text, $1::text, 'falco', 'security', 4, 'shell', 'fp', \
        now(), now(), now())";
    let (ev_a, ev_b) = (Uuid::now_v7(), Uuid::now_v7());
    for (ev, t, c) in [(ev_a, a.id, ca.id), (ev_b, b.id, cb.id)] {
        sqlx::query(insert_event)
            .bind(ev)
            .bind(t)
            .bind(c)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    remediate(&mut tx, a.id, ca.id, ev_a).await.unwrap();
    tx.commit().await.unwrap();

    // Tenant A's remediation for tenant B's event: the composite foreign
    // key refuses it although the admin escape lets RLS pass every row.
    let mut tx = app_tx(pool, None, true).await;
    let err = remediate(&mut tx, a.id, ca.id, ev_b).await.unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "23503",
        "foreign key violation expected: {err}"
    );
    tx.rollback().await.unwrap();

    let mut tx = app_tx(pool, None, true).await;
    let leaks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM remediations r JOIN events e ON e.id = r.event_id \
         WHERE r.tenant_id <> e.tenant_id",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(leaks, 0);
    assert_eq!(count(&mut tx, "remediations").await, 1);
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn store_scoping_matches_rls() {
    let Some(h) = pg().await else { return };
    let [(a, _), (b, cb)] = two_tenants(&h).await;
    // A store transaction of tenant A cannot reach B's cluster even by id,
    // and a platform admin scoped to B can.
    let mut tx = h.tx(&Scope::tenant(a.id, None)).await;
    assert!(matches!(
        tx.clusters().get(cb.id).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    tx.rollback().await.unwrap();
    let mut tx = h.tx(&Scope::platform_admin(None).with_tenant(b.id)).await;
    assert_eq!(tx.clusters().get(cb.id).await.unwrap().id, cb.id);
    let all = tx
        .tenants()
        .list(&TenantFilter::default(), &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);
}

#[tokio::test]
async fn rls_guards_events_changes_receipts_and_sequence_heads() {
    let Some(h) = pg().await else { return };
    let [(a, ca), (b, _)] = two_tenants(&h).await;
    let pool = h.store.pg_app_pool().unwrap();

    let mut tx = app_tx(pool, Some(a.id), false).await;
    for table in [
        "events",
        "event_changes",
        "event_receipts",
        "event_seq_heads",
    ] {
        let tenants: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT tenant_id FROM {table}"
        )))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        assert_eq!(tenants, vec![a.id], "{table}");
    }
    // B's rows cannot be changed: folding into them, rewinding the
    // sequence or re-pointing receipts touches nothing.
    for sql in [
        "UPDATE events SET count = count + 1 WHERE tenant_id = $1",
        "UPDATE event_seq_heads SET last_seq = 0 WHERE tenant_id = $1",
        "UPDATE event_receipts SET event_id = gen_random_uuid() WHERE tenant_id = $1",
        "DELETE FROM event_changes WHERE tenant_id = $1",
        "DELETE FROM event_receipts WHERE tenant_id = $1",
    ] {
        let n = sqlx::query(sql)
            .bind(b.id)
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 0, "{sql}");
    }
    tx.rollback().await.unwrap();

    // Writing rows into B is refused by WITH CHECK.
    let inserts = [
        "INSERT INTO event_receipts (tenant_id, origin, source_event_id, event_id, received_at) \
         VALUES ($1, 'webhook:x', 'd-1', gen_random_uuid(), now())",
        "INSERT INTO event_changes (tenant_id, seq, event_id) VALUES ($1, 1, gen_random_uuid())",
        "INSERT INTO event_seq_heads (tenant_id, last_seq, updated_at) VALUES ($1, 0, now()) \
         ON CONFLICT (tenant_id) DO UPDATE SET last_seq = 0",
        "INSERT INTO events (id, tenant_id, seq, origin, source_event_id, source, category, \
         severity, type, fingerprint, detected_at, received_at, last_seen_at) \
         VALUES (gen_random_uuid(), $1, 999, 'webhook:x', 'd-1', 'custom', 'security', 1, 't', \
         'fp', now(), now(), now())",
    ];
    for sql in inserts {
        let mut tx = app_tx(pool, Some(a.id), false).await;
        refused(&mut tx, sqlx::query(sql).bind(b.id)).await;
        tx.rollback().await.unwrap();
    }
    // Moving A's event into B is refused too.
    let mut tx = app_tx(pool, Some(a.id), false).await;
    refused(
        &mut tx,
        sqlx::query("UPDATE events SET tenant_id = $1, cluster_id = NULL WHERE cluster_id = $2")
            .bind(b.id)
            .bind(ca.id),
    )
    .await;
    tx.rollback().await.unwrap();

    // The store's own reads agree.
    let mut tx = h.tx(&Scope::tenant(a.id, None)).await;
    let events = tx.events().tail(0, 100).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].count, 2);
    assert!(events.iter().all(|e| e.tenant_id == a.id));
}
