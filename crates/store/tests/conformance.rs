//! The storage conformance suite: every test runs on SQLite and on
//! PostgreSQL (see `common::conformance!`).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{Duration as Days, Utc};
use serde_json::json;
use uuid::Uuid;

use common::Harness;
use zen_store::*;

// ------------------------------------------------------------------ helpers

async fn user(h: &Harness, name: &str) -> Uuid {
    let mut tx = h.tx(&Scope::anonymous()).await;
    let u = tx
        .users()
        .create_local(NewLocalUser {
            username: name.into(),
            email: Some(format!("{name}@example.test")),
            display_name: None,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into(),
        })
        .await
        .expect("create user");
    tx.commit().await.unwrap();
    u.id
}

async fn tenant_with(h: &Harness, name: &str, owner: Uuid, quotas: Quotas) -> Tenant {
    let mut tx = h.tx(&Scope::user(owner)).await;
    let t = tx
        .tenants()
        .create(
            NewTenant {
                name: name.into(),
                display_name: String::new(),
                quotas,
            },
            Some(owner),
        )
        .await
        .expect("create tenant");
    tx.commit().await.unwrap();
    t
}

async fn tenant(h: &Harness, name: &str, owner: Uuid) -> Tenant {
    tenant_with(h, name, owner, Quotas::default()).await
}

/// A user and a tenant they own, and the scope to act in it.
async fn setup(h: &Harness, name: &str) -> (Uuid, Tenant, Scope) {
    let owner = user(h, &format!("{name}-owner")).await;
    let t = tenant(h, name, owner).await;
    let scope = Scope::tenant(t.id, Some(owner));
    (owner, t, scope)
}

async fn cluster(h: &Harness, scope: &Scope, name: &str) -> Result<Cluster> {
    let mut tx = h.tx(scope).await;
    let c = tx
        .clusters()
        .create(NewCluster {
            name: name.into(),
            ..Default::default()
        })
        .await?;
    tx.commit().await?;
    Ok(c)
}

fn audit(action: &str) -> NewAuditRecord {
    let mut r = NewAuditRecord::new("user", action, "cluster", AuditOutcome::Success);
    r.actor_id = Some("u-1".into());
    r
}

async fn append(h: &Harness, scope: &Scope, n: usize) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut tx = h.tx(scope).await;
        let mut r = audit("cluster.update");
        r.resource_id = Some(format!("c-{i}"));
        out.push(tx.audit().append(r).await.expect("append"));
        tx.commit().await.unwrap();
    }
    out
}

async fn verify(h: &Harness, scope: &Scope, tenant: Uuid) -> ChainVerification {
    let mut tx = h.store.begin_read(scope).await.unwrap();
    let v = tx.audit().verify_chain(tenant).await.expect("verify");
    tx.commit().await.unwrap();
    v
}

#[track_caller]
fn assert_precondition(err: &StoreError, code: &str) {
    assert!(
        matches!(err, StoreError::Precondition { code: c, .. } if *c == code),
        "expected Precondition {code}, got {err:?}"
    );
}

fn sql_uuid(id: Uuid) -> String {
    format!("'{id}'")
}

// ------------------------------------------------------------------ tenants

async fn tenant_names_unique_and_reusable_after_soft_delete(h: &Harness) {
    let owner = user(h, "alice").await;
    let t = tenant(h, "acme", owner).await;
    assert_eq!(t.display_name, "acme");
    assert_eq!(t.status, TenantStatus::Active);
    assert_eq!(t.created_by, Some(owner));

    let mut tx = h.tx(&Scope::user(owner)).await;
    let err = tx
        .tenants()
        .create(
            NewTenant {
                name: "acme".into(),
                ..Default::default()
            },
            Some(owner),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { what: "tenant" }),
        "{err:?}"
    );
    tx.rollback().await.unwrap();

    // The creator is the first owner, and the tx was re-scoped to the tenant.
    let mut tx = h.tx(&Scope::tenant(t.id, Some(owner))).await;
    assert_eq!(
        tx.members().role_of(owner).await.unwrap(),
        Some(Role::Owner)
    );
    let deleted = tx.tenants().soft_delete(t.id, None).await.unwrap();
    assert_eq!(deleted.status, TenantStatus::Deleted);
    assert!(deleted.deleted_at.is_some());
    tx.commit().await.unwrap();

    let again = tenant(h, "acme", owner).await;
    assert_ne!(again.id, t.id);

    // Bad names are refused before the database sees them.
    let mut tx = h.tx(&Scope::user(owner)).await;
    let err = tx
        .tenants()
        .create(
            NewTenant {
                name: "Not A Label".into(),
                ..Default::default()
            },
            Some(owner),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid { field: "name", .. }),
        "{err:?}"
    );
}

async fn tenant_get_update_status_and_scope(h: &Harness) {
    let (owner, t, scope) = setup(h, "globex").await;
    let (_, other, _) = setup(h, "initech").await;

    let mut tx = h.tx(&scope).await;
    assert_eq!(tx.tenants().get(t.id).await.unwrap().name, "globex");
    // Another tenant is invisible from this scope.
    let err = tx.tenants().get(other.id).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let err = tx
        .tenants()
        .update(other.id, None, TenantUpdate::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");

    let updated = tx
        .tenants()
        .update(
            t.id,
            Some(t.version),
            TenantUpdate {
                display_name: Some("Globex Corp".into()),
                max_clusters: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.display_name, "Globex Corp");
    assert_eq!(updated.quotas.max_clusters, 3);
    assert_eq!(
        updated.quotas.requests_per_second,
        Quotas::default().requests_per_second
    );
    assert_eq!(updated.updated_by, Some(owner));
    assert!(updated.updated_at >= t.updated_at);
    let err = tx
        .tenants()
        .update(
            t.id,
            None,
            TenantUpdate {
                max_clusters: Some(-1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "max_clusters",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(updated.version, t.version + 1);
    let s = tx
        .tenants()
        .set_status(
            t.id,
            Some(updated.version),
            TenantStatus::Suspended,
            Some("unpaid invoice".into()),
        )
        .await
        .unwrap();
    assert_eq!(s.status, TenantStatus::Suspended);
    assert_eq!(s.suspend_reason.as_deref(), Some("unpaid invoice"));
    assert_eq!(s.version, updated.version + 1);
    tx.commit().await.unwrap();

    // A suspended tenant takes no new clusters.
    let err = cluster(h, &scope, "c1").await.unwrap_err();
    assert_precondition(&err, precondition::TENANT_SUSPENDED);

    // A user outside any tenant sees the tenants they belong to.
    let mut tx = h.tx(&Scope::user(owner)).await;
    assert_eq!(tx.tenants().get(t.id).await.unwrap().id, t.id);
    assert!(tx.tenants().get(other.id).await.is_err());
    let ms = tx.members().memberships(owner).await.unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!((ms[0].tenant.id, ms[0].role), (t.id, Role::Owner));
}

/// Every page of `filter`'s tenant list in `scope`, pages of `size`:
/// `(name, id)` in list order, and the number of pages.
async fn tenant_pages(
    h: &Harness,
    scope: &Scope,
    filter: &TenantFilter,
    size: u32,
) -> (Vec<(String, Uuid)>, usize) {
    let mut seen = Vec::new();
    let mut page = PageRequest::first(size);
    let mut pages = 0;
    loop {
        let mut tx = h.store.begin_read(scope).await.unwrap();
        let p = tx.tenants().list(filter, &page).await.unwrap();
        tx.commit().await.unwrap();
        pages += 1;
        assert!(p.items.len() <= size as usize);
        seen.extend(p.items.iter().map(|t| (t.name.clone(), t.id)));
        match p.next_page_token {
            Some(tok) => page = PageRequest::next(size, tok),
            None => break,
        }
    }
    (seen, pages)
}

async fn tenant_pagination(h: &Harness) {
    let owner = user(h, "pager").await;
    let mut ids = HashSet::new();
    let mut by_name = BTreeMap::new();
    // Created out of name order, so creation order cannot pass for it;
    // `t-9` < `t0` < `t10` < `t2` bytewise (a locale's collation would
    // ignore the hyphen and compare numbers differently).
    for name in ["t5", "t10", "t0", "t-9", "t3", "t2", "t1"] {
        let id = tenant(h, name, owner).await.id;
        ids.insert(id);
        by_name.insert(name, id);
    }
    let loner = user(h, "loner").await;
    let other = tenant(h, "not-mine", loner).await;

    for (scope, expect) in [
        (Scope::user(owner), ids.clone()),
        (Scope::platform_admin(None), {
            let mut all = ids.clone();
            all.insert(other.id);
            all
        }),
    ] {
        let (seen, pages) = tenant_pages(h, &scope, &TenantFilter::default(), 3).await;
        let unique: HashSet<Uuid> = seen.iter().map(|s| s.1).collect();
        assert_eq!(unique.len(), seen.len(), "duplicates across pages");
        assert_eq!(unique, expect, "misses across pages");
        assert_eq!(pages, expect.len().div_ceil(3));
        // By name, bytewise, across the pages (the contract's order).
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        let ours: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| n.starts_with('t'))
            .collect();
        assert_eq!(ours, ["t-9", "t0", "t1", "t10", "t2", "t3", "t5"]);
    }

    // A name held by a live tenant and a deleted one: the id breaks the
    // tie, and a page boundary between the two loses neither.
    let t3 = by_name["t3"];
    let mut tx = h.tx(&Scope::tenant(t3, Some(owner))).await;
    tx.tenants().soft_delete(t3, None).await.unwrap();
    tx.commit().await.unwrap();
    let again = tenant(h, "t3", owner).await;
    let admin = Scope::platform_admin(None);
    let twins = TenantFilter {
        name_prefix: Some("t3".into()),
        include_deleted: true,
        ..Default::default()
    };
    let (seen, pages) = tenant_pages(h, &admin, &twins, 1).await;
    let mut expect = vec![("t3".to_owned(), t3), ("t3".to_owned(), again.id)];
    expect.sort();
    assert_eq!((seen, pages), (expect, 2));
    let (seen, _) = tenant_pages(
        h,
        &admin,
        &TenantFilter {
            include_deleted: true,
            ..Default::default()
        },
        2,
    )
    .await;
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "(name, id) order with deleted tenants");
    assert_eq!(seen.len(), 9);

    let mut tx = h.tx(&Scope::user(owner)).await;
    let err = tx
        .tenants()
        .list(
            &TenantFilter::default(),
            &PageRequest::next(3, "zz-not-hex"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "page_token",
                ..
            }
        ),
        "{err:?}"
    );
}

async fn tenant_versions_refuse_stale_edits(h: &Harness) {
    let (owner, t, scope) = setup(h, "versioned").await;
    assert_eq!(t.version, 1);
    let c = cluster(h, &scope, "edge").await.unwrap();

    let mut tx = h.tx(&scope).await;
    let v2 = tx
        .tenants()
        .update(
            t.id,
            Some(1),
            TenantUpdate {
                display_name: Some("First".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    // A second edit based on version 1 is stale, whatever it changes.
    let err = tx
        .tenants()
        .update(
            t.id,
            Some(1),
            TenantUpdate {
                display_name: Some("Second".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::VersionMismatch {
                what: "tenant",
                current: 2
            }
        ),
        "{err:?}"
    );
    let err = tx
        .tenants()
        .set_status(t.id, Some(1), TenantStatus::Suspended, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::VersionMismatch { current: 2, .. }),
        "{err:?}"
    );
    let err = tx.tenants().soft_delete(t.id, Some(7)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::VersionMismatch { current: 2, .. }),
        "{err:?}"
    );
    // Nothing of the refused edits landed.
    let now = tx.tenants().get(t.id).await.unwrap();
    assert_eq!((now.display_name.as_str(), now.version), ("First", 2));
    assert_eq!(now.status, TenantStatus::Active);

    // `None` does not check, and still bumps.
    let s = tx
        .tenants()
        .set_status(
            t.id,
            None,
            TenantStatus::Suspended,
            Some("  abuse  ".into()),
        )
        .await
        .unwrap();
    assert_eq!((s.version, s.suspend_reason.as_deref()), (3, Some("abuse")));
    // Reactivation clears the reason (a reason given with it is ignored).
    let a = tx
        .tenants()
        .set_status(t.id, Some(3), TenantStatus::Active, Some("ignored".into()))
        .await
        .unwrap();
    assert_eq!((a.status, a.version), (TenantStatus::Active, 4));
    assert_eq!(a.suspend_reason, None);
    tx.commit().await.unwrap();

    // An unknown tenant is NotFound, not a mismatch.
    let mut tx = h.tx(&Scope::platform_admin(None)).await;
    let err = tx
        .tenants()
        .update(Uuid::now_v7(), Some(1), TenantUpdate::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "tenant" }),
        "{err:?}"
    );
    tx.rollback().await.unwrap();

    // Soft delete with the current version; its clusters go too, and their
    // versions move on.
    let mut tx = h.tx(&scope).await;
    let d = tx.tenants().soft_delete(t.id, Some(4)).await.unwrap();
    assert_eq!((d.status, d.version), (TenantStatus::Deleted, 5));
    let gone = tx.clusters().get(c.id).await.unwrap();
    assert!(gone.deleted_at.is_some());
    assert_eq!(gone.version, c.version + 1);
    // A deleted tenant is not found, with or without a version.
    for v in [None, Some(5)] {
        let err = tx
            .tenants()
            .update(t.id, v, TenantUpdate::default())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    }
    tx.commit().await.unwrap();
    let _ = owner;
}

async fn tenant_concurrent_edits_of_one_version_one_wins(h: &Harness) {
    let (_, t, scope) = setup(h, "contended").await;
    // T1 edits version 1 and holds its transaction open; T2 edits version 1
    // meanwhile (on PostgreSQL it waits for T1's row lock, on SQLite for
    // the write lock). T2 must lose and learn T1's version.
    let mut t1 = h.tx(&scope).await;
    t1.tenants()
        .update(
            t.id,
            Some(1),
            TenantUpdate {
                display_name: Some("T1".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (store, scope2, id) = (h.store.clone(), scope.clone(), t.id);
    let t2 = tokio::spawn(async move {
        let mut t2 = store.begin(&scope2).await?;
        let r = t2
            .tenants()
            .update(
                id,
                Some(1),
                TenantUpdate {
                    display_name: Some("T2".into()),
                    ..Default::default()
                },
            )
            .await?;
        t2.commit().await?;
        Ok::<_, StoreError>(r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    t1.commit().await.unwrap();
    let second = t2.await.unwrap();
    assert!(
        matches!(
            second,
            Err(StoreError::VersionMismatch {
                what: "tenant",
                current: 2
            })
        ),
        "{second:?}"
    );
    let mut tx = h.tx(&scope).await;
    let now = tx.tenants().get(t.id).await.unwrap();
    assert_eq!((now.display_name.as_str(), now.version), ("T1", 2));
}

async fn tenant_created_without_owner(h: &Harness) {
    // An operator (a certificate identity: no user) creates the tenant and
    // invites its owner in the same transaction.
    let token = format!("inv-{}", Uuid::new_v4());
    let mut tx = h.tx(&Scope::platform_admin(None)).await;
    let t = tx
        .tenants()
        .create(
            NewTenant {
                name: "ownerless".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!((t.created_by, t.version), (None, 1));
    assert_eq!(tx.scope().tenant_id, Some(t.id), "re-scoped to the tenant");
    assert_eq!(tx.members().count_owners().await.unwrap(), 0);
    let inv = tx
        .invites()
        .create(
            NewInvite {
                email: "founder@example.test".into(),
                role: Role::Owner,
                expires_at: Utc::now() + Days::days(1),
                created_by: None,
            },
            &token,
        )
        .await
        .unwrap();
    let rec = tx
        .audit()
        .append(NewAuditRecord::new(
            "service",
            "tenant.create",
            "tenant",
            AuditOutcome::Success,
        ))
        .await
        .unwrap();
    assert_eq!(rec.tenant_id, t.id);
    tx.commit().await.unwrap();

    let founder = user(h, "founder").await;
    let scope = Scope::tenant(t.id, Some(founder));
    let mut tx = h.tx(&scope).await;
    assert!(tx
        .members()
        .list(&MemberFilter::default(), &PageRequest::first(10))
        .await
        .unwrap()
        .items
        .is_empty());
    let m = tx
        .invites()
        .accept(inv.id, &token, founder, Utc::now())
        .await
        .unwrap();
    assert_eq!(m.role, Role::Owner);
    assert_eq!(tx.members().count_owners().await.unwrap(), 1);
    tx.commit().await.unwrap();
    // The founder now sees it among their tenants.
    let mut tx = h.tx(&Scope::user(founder)).await;
    let ms = tx.members().memberships(founder).await.unwrap();
    assert_eq!((ms.len(), ms[0].tenant.id), (1, t.id));
}

/// Every tenant `filter` lists (one page), sorted by id.
async fn tenant_ids(tx: &mut dyn Tx, filter: TenantFilter) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = tx
        .tenants()
        .list(&filter, &PageRequest::first(100))
        .await
        .unwrap()
        .items
        .iter()
        .map(|t| t.id)
        .collect();
    out.sort();
    out
}

async fn tenant_list_name_prefix_and_deleted(h: &Harness) {
    let owner = user(h, "filterer").await;
    let a1 = tenant(h, "alpha-1", owner).await;
    let a2 = tenant(h, "alpha-2", owner).await;
    let a3 = tenant(h, "alpha-3", owner).await;
    let b = tenant(h, "beta", owner).await;
    let mut tx = h.tx(&Scope::tenant(a3.id, Some(owner))).await;
    tx.tenants().soft_delete(a3.id, None).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = h.tx(&Scope::tenant(b.id, Some(owner))).await;
    tx.tenants()
        .set_status(b.id, None, TenantStatus::Suspended, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    for scope in [Scope::user(owner), Scope::platform_admin(None)] {
        let mut tx = h.store.begin_read(&scope).await.unwrap();
        let sorted = |mut v: Vec<Uuid>| {
            v.sort();
            v
        };
        let prefix = |p: &str| TenantFilter {
            name_prefix: Some(p.into()),
            ..Default::default()
        };
        // Default: every status but deleted.
        assert_eq!(
            tenant_ids(&mut *tx, TenantFilter::default()).await,
            sorted(vec![a1.id, a2.id, b.id])
        );
        assert_eq!(
            tenant_ids(
                &mut *tx,
                TenantFilter {
                    include_deleted: true,
                    ..Default::default()
                }
            )
            .await,
            sorted(vec![a1.id, a2.id, a3.id, b.id])
        );
        assert_eq!(
            tenant_ids(
                &mut *tx,
                TenantFilter {
                    status: Some(TenantStatus::Deleted),
                    ..Default::default()
                }
            )
            .await,
            vec![a3.id]
        );
        assert_eq!(
            tenant_ids(
                &mut *tx,
                TenantFilter {
                    status: Some(TenantStatus::Suspended),
                    ..Default::default()
                }
            )
            .await,
            vec![b.id]
        );
        assert_eq!(
            tenant_ids(&mut *tx, prefix("alpha-")).await,
            sorted(vec![a1.id, a2.id])
        );
        assert_eq!(
            tenant_ids(
                &mut *tx,
                TenantFilter {
                    name_prefix: Some("alpha".into()),
                    include_deleted: true,
                    ..Default::default()
                }
            )
            .await,
            sorted(vec![a1.id, a2.id, a3.id])
        );
        assert_eq!(
            tenant_ids(&mut *tx, prefix("")).await.len(),
            3,
            "empty prefix: no filter"
        );
        // LIKE wildcards are literal ('_' would match '-', '%' anything),
        // and case matters on both backends.
        for p in ["alpha_", "%", "_", "alpha%", "ALPHA", "Beta", "alpha\\"] {
            assert!(
                tenant_ids(&mut *tx, prefix(p)).await.is_empty(),
                "prefix {p:?}"
            );
        }
        tx.commit().await.unwrap();
    }
}

// ------------------------------------------------------------------ users

async fn users_upsert_and_local(h: &Harness) {
    let id = ExternalIdentity {
        issuer: "https://idp.example".into(),
        subject: "sub-1".into(),
        email: Some("Bob@Example.test".into()),
        display_name: Some("Bob".into()),
    };
    let mut tx = h.tx(&Scope::anonymous()).await;
    let first = tx.users().upsert_external(id.clone()).await.unwrap();
    assert_eq!(
        tx.scope().user_id,
        Some(first.id),
        "login binds the tx to the user"
    );
    tx.commit().await.unwrap();

    let mut tx = h.tx(&Scope::anonymous()).await;
    let second = tx
        .users()
        .upsert_external(ExternalIdentity {
            display_name: Some("Robert".into()),
            ..id.clone()
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(second.display_name.as_deref(), Some("Robert"));
    assert!(!second.is_platform_admin);

    let mut tx = h.tx(&Scope::anonymous()).await;
    let by_email = tx.users().get_by_email("bob@example.test").await.unwrap();
    assert_eq!(by_email.id, first.id);
    let by_sub = tx
        .users()
        .get_by_issuer_subject("https://idp.example", "sub-1")
        .await
        .unwrap();
    assert_eq!(by_sub.id, first.id);
    tx.rollback().await.unwrap();

    let carol = user(h, "carol").await;
    let mut tx = h.tx(&Scope::anonymous()).await;
    let u = tx.users().get_by_username("carol").await.unwrap();
    assert_eq!(u.id, carol);
    assert_eq!(u.issuer, LOCAL_ISSUER);
    assert!(u
        .password_hash
        .as_deref()
        .unwrap()
        .starts_with("$argon2id$"));
    assert!(
        !format!("{u:?}").contains("argon2"),
        "Debug must not print the hash"
    );
    assert!(matches!(
        tx.users().get_by_username("nobody").await.unwrap_err(),
        StoreError::NotFound { what: "user" }
    ));
    tx.rollback().await.unwrap();

    let mut tx = h.tx(&Scope::anonymous()).await;
    let err = tx
        .users()
        .create_local(NewLocalUser {
            username: "carol".into(),
            password_hash: "$argon2id$v=19$x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { what: "user" }),
        "{err:?}"
    );
    tx.rollback().await.unwrap();

    let mut tx = h.tx(&Scope::anonymous()).await;
    let err = tx
        .users()
        .create_local(NewLocalUser {
            username: "dave".into(),
            password_hash: "hunter2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "password_hash",
                ..
            }
        ),
        "{err:?}"
    );
    tx.rollback().await.unwrap();

    // Only platform admins grant platform admin.
    let mut tx = h.tx(&Scope::user(carol)).await;
    assert!(matches!(
        tx.users()
            .set_platform_admin(carol, true)
            .await
            .unwrap_err(),
        StoreError::PermissionDenied { .. }
    ));
    tx.rollback().await.unwrap();
    let mut tx = h.tx(&Scope::platform_admin(None)).await;
    assert!(
        tx.users()
            .set_platform_admin(carol, true)
            .await
            .unwrap()
            .is_platform_admin
    );
    tx.commit().await.unwrap();
}

// ------------------------------------------------------------------ members

async fn members_last_owner_rule(h: &Harness) {
    let (owner, t, scope) = setup(h, "owners").await;
    let bob = user(h, "bob").await;

    let mut tx = h.tx(&scope).await;
    assert_eq!(tx.members().count_owners().await.unwrap(), 1);
    let err = tx.members().remove(owner).await.unwrap_err();
    assert_precondition(&err, precondition::LAST_OWNER);
    tx.rollback().await.unwrap();

    let mut tx = h.tx(&scope).await;
    let err = tx
        .members()
        .change_role(owner, Role::Admin)
        .await
        .unwrap_err();
    assert_precondition(&err, precondition::LAST_OWNER);
    tx.rollback().await.unwrap();

    let mut tx = h.tx(&scope).await;
    let m = tx
        .members()
        .add(bob, Role::Viewer, Some(owner))
        .await
        .unwrap();
    assert_eq!(
        (m.tenant_id, m.role, m.invited_by),
        (t.id, Role::Viewer, Some(owner))
    );
    let err = tx.members().add(bob, Role::Admin, None).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { what: "member" }),
        "{err:?}"
    );
    tx.rollback().await.unwrap();

    let mut tx = h.tx(&scope).await;
    tx.members()
        .add(bob, Role::Viewer, Some(owner))
        .await
        .unwrap();
    let err = tx
        .members()
        .add(Uuid::now_v7(), Role::Viewer, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "user" }),
        "{err:?}"
    );
    tx.rollback().await.unwrap();

    let mut tx = h.tx(&scope).await;
    tx.members()
        .add(bob, Role::Viewer, Some(owner))
        .await
        .unwrap();
    tx.members().change_role(bob, Role::Owner).await.unwrap();
    assert_eq!(tx.members().count_owners().await.unwrap(), 2);
    // Now the original owner may step down, and bob is the last one.
    tx.members()
        .change_role(owner, Role::Approver)
        .await
        .unwrap();
    let err = tx.members().remove(bob).await.unwrap_err();
    assert_precondition(&err, precondition::LAST_OWNER);
    tx.rollback().await.unwrap();

    let mut tx = h.tx(&scope).await;
    tx.members().add(bob, Role::Viewer, None).await.unwrap();
    tx.members().remove(bob).await.unwrap();
    assert_eq!(tx.members().role_of(bob).await.unwrap(), None);
    assert!(matches!(
        tx.members().remove(bob).await.unwrap_err(),
        StoreError::NotFound { what: "member" }
    ));
    let list = tx
        .members()
        .list(&MemberFilter::default(), &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    tx.rollback().await.unwrap();
}

async fn members_concurrent_demotions_keep_an_owner(h: &Harness) {
    let (a, _t, scope) = setup(h, "race").await;
    let b = user(h, "second-owner").await;
    let mut tx = h.tx(&scope).await;
    tx.members().add(b, Role::Owner, None).await.unwrap();
    tx.commit().await.unwrap();

    // T1 demotes a and holds its transaction open; T2 tries to demote b
    // meanwhile. Whatever the interleaving, one owner must remain.
    let mut t1 = h.tx(&scope).await;
    t1.members().change_role(a, Role::Admin).await.unwrap();
    let store = h.store.clone();
    let scope2 = scope.clone();
    let t2 = tokio::spawn(async move {
        let mut t2 = store.begin(&scope2).await?;
        t2.members().change_role(b, Role::Admin).await?;
        t2.commit().await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    t1.commit().await.unwrap();
    let second = t2.await.unwrap();
    assert!(
        matches!(
            second,
            Err(StoreError::Precondition {
                code: "LAST_OWNER",
                ..
            })
        ),
        "second demotion must be refused: {second:?}"
    );
    let mut tx = h.tx(&scope).await;
    assert_eq!(tx.members().count_owners().await.unwrap(), 1);
    assert_eq!(tx.members().role_of(b).await.unwrap(), Some(Role::Owner));
}

async fn members_list_pages_filters_and_names(h: &Harness) {
    let (owner, t, scope) = setup(h, "crowd").await;
    let mut tx = h.tx(&Scope::anonymous()).await;
    let named = tx
        .users()
        .create_local(NewLocalUser {
            username: "named".into(),
            email: None,
            display_name: Some("Named Person".into()),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into(),
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = h.tx(&scope).await;
    let m = tx
        .members()
        .add(named.id, Role::Viewer, Some(owner))
        .await
        .unwrap();
    assert_eq!(m.email, None);
    assert_eq!(m.display_name.as_deref(), Some("Named Person"));
    tx.commit().await.unwrap();
    let roles = [
        Role::Viewer,
        Role::Admin,
        Role::Viewer,
        Role::Approver,
        Role::Viewer,
        Role::Admin,
    ];
    // Joined out of email order, so join order cannot pass for it.
    for (i, role) in [5, 2, 0, 4, 1, 3].into_iter().zip(roles) {
        let u = user(h, &format!("member{i}")).await;
        let mut tx = h.tx(&scope).await;
        let m = tx.members().add(u, role, None).await.unwrap();
        assert_eq!(m.email, Some(format!("member{i}@example.test")));
        tx.commit().await.unwrap();
    }
    // An uppercase email sorts among the lowercase ones (case-insensitive
    // email order), not before them all as bytewise order would put it.
    let mut tx = h.tx(&Scope::anonymous()).await;
    let shouty = tx
        .users()
        .create_local(NewLocalUser {
            username: "shouty".into(),
            email: Some("Member3b@Example.test".into()),
            display_name: None,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into(),
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = h.tx(&scope).await;
    tx.members()
        .add(shouty.id, Role::Approver, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Another tenant's members never show up.
    let (_, _, other) = setup(h, "elsewhere").await;
    let mut tx = h.tx(&other).await;
    tx.members().add(named.id, Role::Admin, None).await.unwrap();
    tx.commit().await.unwrap();

    let list_all = |filter: MemberFilter, size: u32| {
        let (store, scope) = (h.store.clone(), scope.clone());
        async move {
            let mut out = Vec::new();
            let mut page = PageRequest::first(size);
            loop {
                let mut tx = store.begin_read(&scope).await.unwrap();
                let p = tx.members().list(&filter, &page).await.unwrap();
                tx.commit().await.unwrap();
                let max = if size == 0 { DEFAULT_PAGE_SIZE } else { size };
                assert!(p.items.len() <= max as usize);
                out.extend(p.items);
                match p.next_page_token {
                    Some(tok) => page = PageRequest::next(size, tok),
                    None => break,
                }
            }
            out
        }
    };

    let all = list_all(MemberFilter::default(), 3).await;
    assert_eq!(all.len(), 9, "owner, named, shouty and six more");
    assert!(all.iter().all(|m| m.tenant_id == t.id));
    // By email across the pages (the contract's order), ASCII case
    // ignored; no email first; no duplicates.
    let emails: Vec<Option<&str>> = all.iter().map(|m| m.email.as_deref()).collect();
    assert_eq!(
        emails,
        [
            None,
            Some("crowd-owner@example.test"),
            Some("member0@example.test"),
            Some("member1@example.test"),
            Some("member2@example.test"),
            Some("member3@example.test"),
            Some("Member3b@Example.test"),
            Some("member4@example.test"),
            Some("member5@example.test"),
        ]
    );
    let ids: HashSet<Uuid> = all.iter().map(|m| m.user_id).collect();
    assert_eq!(ids.len(), all.len(), "duplicates across pages");
    assert_eq!(all[0].display_name.as_deref(), Some("Named Person"));
    assert_eq!(all[1].user_id, owner);
    // Page sizes that split the list elsewhere give the same order.
    for size in [1, 2, 4, 0] {
        let again = list_all(MemberFilter::default(), size).await;
        let again: Vec<Uuid> = again.iter().map(|m| m.user_id).collect();
        let first: Vec<Uuid> = all.iter().map(|m| m.user_id).collect();
        assert_eq!(again, first, "page size {size}");
    }

    let viewers = list_all(
        MemberFilter {
            role: Some(Role::Viewer),
        },
        2,
    )
    .await;
    assert_eq!(viewers.len(), 4);
    assert!(viewers.iter().all(|m| m.role == Role::Viewer));
    let viewer_emails: Vec<_> = viewers.iter().map(|m| m.email.clone()).collect();
    let mut sorted = viewer_emails.clone();
    sorted.sort();
    assert_eq!(viewer_emails, sorted, "filtered pages keep the order");
    let owners = list_all(
        MemberFilter {
            role: Some(Role::Owner),
        },
        0,
    )
    .await;
    assert_eq!(owners.len(), 1);

    // change_role answers with the user's details too.
    let mut tx = h.tx(&scope).await;
    let m = tx
        .members()
        .change_role(named.id, Role::Approver)
        .await
        .unwrap();
    assert_eq!(
        (m.role, m.display_name.as_deref()),
        (Role::Approver, Some("Named Person"))
    );
    assert!(matches!(
        tx.members()
            .change_role(Uuid::now_v7(), Role::Viewer)
            .await
            .unwrap_err(),
        StoreError::NotFound { what: "member" }
    ));
}

// ------------------------------------------------------------------ invites

async fn invites_accept_once_and_not_expired(h: &Harness) {
    let (owner, t, scope) = setup(h, "inviting").await;
    let bob = user(h, "bob").await;
    let carol = user(h, "carol").await;
    let token = format!("inv-{}", Uuid::new_v4());

    let mut tx = h.tx(&scope).await;
    let inv = tx
        .invites()
        .create(
            NewInvite {
                email: "bob@example.test".into(),
                role: Role::Approver,
                expires_at: Utc::now() + Days::days(7),
                created_by: Some(owner),
            },
            &token,
        )
        .await
        .unwrap();
    assert_eq!(inv.tenant_id, t.id);
    assert_eq!(tx.invites().list_pending().await.unwrap().len(), 1);
    tx.commit().await.unwrap();
    // Only the hash is stored.
    let plain = h
        .raw_i64(&format!(
            "SELECT count(*) FROM invites WHERE token_hash = '{token}'"
        ))
        .await;
    assert_eq!(plain, 0);
    assert_eq!(
        h.raw_i64(&format!(
            "SELECT count(*) FROM invites WHERE token_hash = '{}'",
            hash_token(&token)
        ))
        .await,
        1
    );

    let mut tx = h.tx(&scope).await;
    assert_eq!(tx.invites().get(inv.id).await.unwrap(), inv);
    let m = tx
        .invites()
        .accept(inv.id, &token, bob, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        (m.user_id, m.role, m.invited_by),
        (bob, Role::Approver, Some(owner))
    );
    assert_eq!(m.email.as_deref(), Some("bob@example.test"));
    assert!(tx.invites().list_pending().await.unwrap().is_empty());
    let accepted = tx.invites().get(inv.id).await.unwrap();
    assert_eq!(accepted.accepted_by, Some(bob));
    assert!(accepted.accepted_at.is_some());
    tx.commit().await.unwrap();

    let mut tx = h.tx(&scope).await;
    let err = tx
        .invites()
        .accept(inv.id, &token, carol, Utc::now())
        .await
        .unwrap_err();
    assert_precondition(&err, precondition::INVITE_NOT_PENDING);
    tx.rollback().await.unwrap();

    // Expired.
    let token2 = format!("inv-{}", Uuid::new_v4());
    let mut tx = h.tx(&scope).await;
    let inv2 = tx
        .invites()
        .create(
            NewInvite {
                email: "carol@example.test".into(),
                role: Role::Viewer,
                expires_at: Utc::now() + Days::hours(1),
                created_by: None,
            },
            &token2,
        )
        .await
        .unwrap();
    let err = tx
        .invites()
        .accept(inv2.id, &token2, carol, Utc::now() + Days::hours(2))
        .await
        .unwrap_err();
    assert_precondition(&err, precondition::INVITE_NOT_PENDING);
    tx.rollback().await.unwrap();

    // Unknown token, and a token of another tenant, are not found.
    let (_, _, other_scope) = setup(h, "elsewhere").await;
    let mut tx = h.tx(&other_scope).await;
    let err = tx
        .invites()
        .accept(inv2.id, &token2, carol, Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "invite" }),
        "{err:?}"
    );
}

async fn invites_accept_needs_the_invites_own_token(h: &Harness) {
    let (owner, _, scope) = setup(h, "strict").await;
    let bob = user(h, "bob").await;
    let (tok_a, tok_b) = (
        format!("inv-{}", Uuid::new_v4()),
        format!("inv-{}", Uuid::new_v4()),
    );
    let mut tx = h.tx(&scope).await;
    let invite = |email: &'static str| NewInvite {
        email: email.into(),
        role: Role::Viewer,
        expires_at: Utc::now() + Days::days(1),
        created_by: Some(owner),
    };
    let a = tx
        .invites()
        .create(invite("a@example.test"), &tok_a)
        .await
        .unwrap();
    let b = tx
        .invites()
        .create(invite("b@example.test"), &tok_b)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let not_found = |r: Result<Member>| {
        let err = r.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound { what: "invite" }),
            "{err:?}"
        );
    };
    let mut tx = h.tx(&scope).await;
    // Unknown id with a valid token; a's id with b's token; a wrong token.
    not_found(
        tx.invites()
            .accept(Uuid::now_v7(), &tok_a, bob, Utc::now())
            .await,
    );
    not_found(tx.invites().accept(a.id, &tok_b, bob, Utc::now()).await);
    not_found(
        tx.invites()
            .accept(a.id, "not-the-token-at-all", bob, Utc::now())
            .await,
    );
    assert!(matches!(
        tx.invites().get(Uuid::now_v7()).await.unwrap_err(),
        StoreError::NotFound { what: "invite" }
    ));
    // Nothing was used up by the failures.
    assert_eq!(tx.invites().list_pending().await.unwrap().len(), 2);
    tx.invites()
        .accept(a.id, &tok_a, bob, Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Reused: the state is told only to the holder of the right token.
    let carol = user(h, "carol").await;
    let mut tx = h.tx(&scope).await;
    let err = tx
        .invites()
        .accept(a.id, &tok_a, carol, Utc::now())
        .await
        .unwrap_err();
    assert_precondition(&err, precondition::INVITE_NOT_PENDING);
    not_found(tx.invites().accept(a.id, &tok_b, carol, Utc::now()).await);
    tx.rollback().await.unwrap();

    // Concurrent accepts of one invite: one member.
    let dave = user(h, "dave").await;
    let mut tasks = Vec::new();
    for u in [carol, dave] {
        let (store, scope, tok) = (h.store.clone(), scope.clone(), tok_b.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = store.begin(&scope).await?;
            tx.invites().accept(b.id, &tok, u, Utc::now()).await?;
            tx.commit().await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) if e.precondition_code() == Some(precondition::INVITE_NOT_PENDING) => {}
            Err(e) => panic!("unexpected: {e:?}"),
        }
    }
    assert_eq!(ok, 1);
}

// ------------------------------------------------------------------ clusters

async fn clusters_names_quota_and_soft_delete(h: &Harness) {
    let owner = user(h, "ops").await;
    let t = tenant_with(
        h,
        "small",
        owner,
        Quotas {
            max_clusters: 2,
            ..Quotas::default()
        },
    )
    .await;
    let scope = Scope::tenant(t.id, Some(owner));

    let a = cluster(h, &scope, "prod").await.unwrap();
    assert_eq!(a.status, ClusterStatus::Provisioning);
    assert_eq!(a.connection_state, ConnectionState::Unknown);
    assert_eq!(a.tenant_id, t.id);
    assert_eq!(a.metadata, json!({}));
    let err = cluster(h, &scope, "prod").await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { what: "cluster" }),
        "{err:?}"
    );
    cluster(h, &scope, "staging").await.unwrap();
    let err = cluster(h, &scope, "dev").await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::QuotaExceeded {
                what: "clusters",
                limit: 2
            }
        ),
        "{err:?}"
    );

    // Soft delete frees both the quota slot and the name.
    let mut tx = h.tx(&scope).await;
    let d = tx.clusters().soft_delete(a.id, None).await.unwrap();
    assert_eq!(d.status, ClusterStatus::Deleting);
    assert!(d.deleted_at.is_some());
    assert_eq!(tx.clusters().count_live().await.unwrap(), 1);
    assert!(matches!(
        tx.clusters().soft_delete(a.id, None).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    // Still readable by id, not listed.
    assert!(tx.clusters().get(a.id).await.unwrap().deleted_at.is_some());
    tx.commit().await.unwrap();
    let again = cluster(h, &scope, "prod").await.unwrap();
    assert_ne!(again.id, a.id);

    // Another tenant can neither see nor touch it, and may reuse the name.
    let (_, _, other) = setup(h, "other").await;
    let mut tx = h.tx(&other).await;
    assert!(matches!(
        tx.clusters().get(again.id).await.unwrap_err(),
        StoreError::NotFound { what: "cluster" }
    ));
    assert!(matches!(
        tx.clusters()
            .update(again.id, None, ClusterUpdate::default())
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));
    tx.rollback().await.unwrap();
    cluster(h, &other, "prod").await.unwrap();

    // Tenant-scoped repositories need a tenant.
    let mut tx = h.tx(&Scope::user(owner)).await;
    assert!(matches!(
        tx.clusters().count_live().await.unwrap_err(),
        StoreError::Invalid { field: "scope", .. }
    ));
}

async fn clusters_quota_holds_under_concurrency(h: &Harness) {
    let owner = user(h, "ops").await;
    let t = tenant_with(
        h,
        "busy",
        owner,
        Quotas {
            max_clusters: 3,
            ..Quotas::default()
        },
    )
    .await;
    let scope = Scope::tenant(t.id, Some(owner));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = h.store.clone();
        let scope = scope.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = store.begin(&scope).await?;
            tx.clusters()
                .create(NewCluster {
                    name: format!("c{i}"),
                    ..Default::default()
                })
                .await?;
            tx.commit().await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::QuotaExceeded { .. }) => {}
            Err(e) => panic!("unexpected: {e:?}"),
        }
    }
    assert_eq!(ok, 3);
    let mut tx = h.tx(&scope).await;
    assert_eq!(tx.clusters().count_live().await.unwrap(), 3);
}

async fn clusters_list_filter_update_and_pagination(h: &Harness) {
    let owner = user(h, "lister").await;
    let t = tenant_with(
        h,
        "many",
        owner,
        Quotas {
            max_clusters: 50,
            ..Quotas::default()
        },
    )
    .await;
    let scope = Scope::tenant(t.id, Some(owner));
    let mut all = HashSet::new();
    for i in 0..11 {
        let name = if i % 2 == 0 {
            format!("prod-{i}")
        } else {
            format!("dev-{i}")
        };
        all.insert(cluster(h, &scope, &name).await.unwrap().id);
    }
    // Another tenant's clusters never show up.
    let (_, _, other) = setup(h, "noise").await;
    cluster(h, &other, "prod-x").await.unwrap();

    let mut seen = Vec::new();
    let mut names = Vec::new();
    let mut page = PageRequest::first(4);
    loop {
        let mut tx = h.store.begin_read(&scope).await.unwrap();
        let p = tx
            .clusters()
            .list(&ClusterFilter::default(), &page)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        seen.extend(p.items.iter().map(|c| c.id));
        names.extend(p.items.iter().map(|c| c.name.clone()));
        match p.next_page_token {
            Some(tok) => page = PageRequest::next(4, tok),
            None => break,
        }
    }
    assert_eq!(seen.len(), 11);
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), all);
    // By name, bytewise, across the pages (the contract's order), not in
    // creation order (prod-0, dev-1, prod-2, ...).
    assert_eq!(
        names,
        [
            "dev-1", "dev-3", "dev-5", "dev-7", "dev-9", "prod-0", "prod-10", "prod-2", "prod-4",
            "prod-6", "prod-8"
        ]
    );
    // A token of a time-ordered list (or a mangled one) is refused, not
    // misread as a name.
    let hex = |s: String| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for foreign in [
        hex(format!("t1|1700000000000000|{}", seen[0])),
        hex("k1|prod-0|not-a-uuid".into()),
        hex("k1|prod-0".into()),
    ] {
        let mut tx = h.store.begin_read(&scope).await.unwrap();
        let err = tx
            .clusters()
            .list(&ClusterFilter::default(), &PageRequest::next(4, foreign))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Invalid {
                    field: "page_token",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    let mut tx = h.tx(&scope).await;
    let prod = tx
        .clusters()
        .list(
            &ClusterFilter {
                name_prefix: Some("prod-".into()),
                ..Default::default()
            },
            &PageRequest::first(100),
        )
        .await
        .unwrap();
    assert_eq!(prod.items.len(), 6);
    assert!(prod.items.iter().all(|c| c.name.starts_with("prod-")));
    assert!(prod.next_page_token.is_none());
    // A wildcard in the prefix is literal.
    let none = tx
        .clusters()
        .list(
            &ClusterFilter {
                name_prefix: Some("%".into()),
                ..Default::default()
            },
            &PageRequest::first(100),
        )
        .await
        .unwrap();
    assert!(none.items.is_empty());

    let target = prod.items[0].clone();
    let mut labels = BTreeMap::new();
    labels.insert("env".to_owned(), "prod".to_owned());
    let u = tx
        .clusters()
        .update(
            target.id,
            None,
            ClusterUpdate {
                display_name: Some("Production".into()),
                api_endpoint: Some(Some("https://k8s.example:6443".into())),
                labels: Some(labels.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(u.display_name, "Production");
    assert_eq!(u.api_endpoint.as_deref(), Some("https://k8s.example:6443"));
    assert_eq!(u.labels, labels);
    let u = tx
        .clusters()
        .update(
            target.id,
            None,
            ClusterUpdate {
                api_endpoint: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(u.api_endpoint, None);
    assert_eq!(u.display_name, "Production", "untouched fields stay");
    assert_eq!(u.labels, labels);

    let r = tx
        .clusters()
        .record_agent(
            target.id,
            AgentReport {
                connection_state: ConnectionState::Connected,
                agent_version: Some("1.2.3".into()),
                seen_at: Utc::now(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.connection_state, ConnectionState::Connected);
    assert_eq!(r.agent_version.as_deref(), Some("1.2.3"));
    assert!(r.last_seen_at.is_some());
    let s = tx
        .clusters()
        .set_status(target.id, ClusterStatus::Ready)
        .await
        .unwrap();
    assert_eq!(s.status, ClusterStatus::Ready);
    let ready = tx
        .clusters()
        .list(
            &ClusterFilter {
                status: Some(ClusterStatus::Ready),
                ..Default::default()
            },
            &PageRequest::first(100),
        )
        .await
        .unwrap();
    assert_eq!(ready.items.len(), 1);
    assert_eq!(ready.items[0].id, target.id);
    tx.commit().await.unwrap();
}

async fn cluster_versions_ignore_agent_reports(h: &Harness) {
    let (_, _, scope) = setup(h, "cversions").await;
    let c = cluster(h, &scope, "edge").await.unwrap();
    assert_eq!(c.version, 1);
    let mut tx = h.tx(&scope).await;
    let u = tx
        .clusters()
        .update(
            c.id,
            Some(1),
            ClusterUpdate {
                display_name: Some("Edge".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(u.version, 2);
    // A heartbeat changes the row but not its version: the user's edit
    // based on version 2 still goes through.
    let r = tx
        .clusters()
        .record_agent(
            c.id,
            AgentReport {
                connection_state: ConnectionState::Connected,
                agent_version: Some("1.0.0".into()),
                seen_at: Utc::now(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.version, 2);
    let u = tx
        .clusters()
        .update(
            c.id,
            Some(2),
            ClusterUpdate {
                api_endpoint: Some(Some("https://edge:6443".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(u.version, 3);
    assert_eq!(u.connection_state, ConnectionState::Connected);
    let err = tx
        .clusters()
        .update(c.id, Some(2), ClusterUpdate::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::VersionMismatch {
                what: "cluster",
                current: 3
            }
        ),
        "{err:?}"
    );
    // A control-plane status change bumps it.
    let s = tx
        .clusters()
        .set_status(c.id, ClusterStatus::Ready)
        .await
        .unwrap();
    assert_eq!(s.version, 4);
    let err = tx.clusters().soft_delete(c.id, Some(3)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::VersionMismatch { current: 4, .. }),
        "{err:?}"
    );
    let d = tx.clusters().soft_delete(c.id, Some(4)).await.unwrap();
    assert_eq!((d.version, d.status), (5, ClusterStatus::Deleting));
    // Gone: NotFound, not a mismatch.
    for v in [None, Some(5)] {
        let err = tx
            .clusters()
            .update(c.id, v, ClusterUpdate::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound { what: "cluster" }),
            "{err:?}"
        );
    }
    assert!(matches!(
        tx.clusters()
            .update(Uuid::now_v7(), Some(1), ClusterUpdate::default())
            .await
            .unwrap_err(),
        StoreError::NotFound { what: "cluster" }
    ));
}

async fn cluster_concurrent_edits_of_one_version_one_wins(h: &Harness) {
    let (_, _, scope) = setup(h, "crowded").await;
    let c = cluster(h, &scope, "hot").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (store, scope) = (h.store.clone(), scope.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = store.begin(&scope).await?;
            let u = tx
                .clusters()
                .update(
                    c.id,
                    Some(c.version),
                    ClusterUpdate {
                        display_name: Some(format!("writer {i}")),
                        ..Default::default()
                    },
                )
                .await?;
            // Hold the transaction so that the others really overlap.
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.commit().await?;
            Ok::<_, StoreError>(u)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(u) => winners.push(u),
            Err(StoreError::VersionMismatch {
                what: "cluster",
                current,
            }) => assert_eq!(current, c.version + 1),
            Err(e) => panic!("unexpected: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins");
    let mut tx = h.tx(&scope).await;
    let now = tx.clusters().get(c.id).await.unwrap();
    assert_eq!(now.version, c.version + 1);
    assert_eq!(now.display_name, winners[0].display_name);
}

async fn inactive_tenant_refuses_new_work(h: &Harness) {
    let (owner, t, scope) = setup(h, "paused").await;
    let c = cluster(h, &scope, "edge").await.unwrap();
    let token = format!("zbt-{}", Uuid::new_v4());
    let mut tx = h.tx(&scope).await;
    tx.bootstrap_tokens()
        .create(
            NewBootstrapToken {
                cluster_id: c.id,
                expires_at: Utc::now() + Days::hours(1),
                created_by: Some(owner),
            },
            &token,
        )
        .await
        .unwrap();
    tx.tenants()
        .set_status(t.id, None, TenantStatus::Suspended, Some("billing".into()))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let new_token = || NewBootstrapToken {
        cluster_id: c.id,
        expires_at: Utc::now() + Days::hours(1),
        created_by: None,
    };
    let new_invite = || NewInvite {
        email: "late@example.test".into(),
        role: Role::Viewer,
        expires_at: Utc::now() + Days::hours(1),
        created_by: None,
    };
    let suspended = |r: Result<()>| {
        let err = r.unwrap_err();
        assert_precondition(&err, precondition::TENANT_SUSPENDED);
    };
    let mut tx = h.tx(&scope).await;
    suspended(
        tx.clusters()
            .create(NewCluster {
                name: "more".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    );
    suspended(
        tx.clusters()
            .update(c.id, Some(c.version), ClusterUpdate::default())
            .await
            .map(drop),
    );
    suspended(
        tx.invites()
            .create(new_invite(), &format!("inv-{}", Uuid::new_v4()))
            .await
            .map(drop),
    );
    suspended(
        tx.bootstrap_tokens()
            .create(new_token(), &format!("zbt-{}", Uuid::new_v4()))
            .await
            .map(drop),
    );
    // An agent cannot enrol with a valid token; the token stays usable.
    suspended(
        tx.bootstrap_tokens()
            .consume(&token, Utc::now())
            .await
            .map(drop),
    );
    // Agent reports and status changes still work; nothing was bumped by
    // the refusals.
    let r = tx
        .clusters()
        .record_agent(
            c.id,
            AgentReport {
                connection_state: ConnectionState::Disconnected,
                agent_version: None,
                seen_at: Utc::now(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.version, c.version);
    tx.commit().await.unwrap();

    let mut tx = h.tx(&scope).await;
    tx.tenants()
        .set_status(t.id, None, TenantStatus::Active, None)
        .await
        .unwrap();
    let used = tx
        .bootstrap_tokens()
        .consume(&token, Utc::now())
        .await
        .unwrap();
    assert!(used.used_at.is_some());
    tx.commit().await.unwrap();

    // Suspended again: deleting a cluster is still allowed.
    let mut tx = h.tx(&scope).await;
    tx.tenants()
        .set_status(t.id, None, TenantStatus::Suspended, None)
        .await
        .unwrap();
    tx.clusters().soft_delete(c.id, None).await.unwrap();
    tx.commit().await.unwrap();

    // Deleted: the tenant is simply not there.
    let (_, gone, gone_scope) = setup(h, "gone").await;
    let gc = cluster(h, &gone_scope, "edge").await.unwrap();
    let inv_token = format!("inv-{}", Uuid::new_v4());
    let boot_token = format!("zbt-{}", Uuid::new_v4());
    let mut tx = h.tx(&gone_scope).await;
    let inv = tx.invites().create(new_invite(), &inv_token).await.unwrap();
    tx.bootstrap_tokens()
        .create(
            NewBootstrapToken {
                cluster_id: gc.id,
                ..new_token()
            },
            &boot_token,
        )
        .await
        .unwrap();
    tx.tenants().soft_delete(gone.id, None).await.unwrap();
    tx.commit().await.unwrap();
    let late = user(h, "late").await;
    let mut tx = h.tx(&gone_scope).await;
    let tenant_not_found = |r: Result<()>| {
        let err = r.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound { what: "tenant" }),
            "{err:?}"
        );
    };
    tenant_not_found(
        tx.clusters()
            .create(NewCluster {
                name: "more".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    );
    tenant_not_found(
        tx.invites()
            .create(new_invite(), &format!("inv-{}", Uuid::new_v4()))
            .await
            .map(drop),
    );
    tenant_not_found(
        tx.bootstrap_tokens()
            .create(
                NewBootstrapToken {
                    cluster_id: gc.id,
                    ..new_token()
                },
                &format!("zbt-{}", Uuid::new_v4()),
            )
            .await
            .map(drop),
    );
    tenant_not_found(
        tx.invites()
            .accept(inv.id, &inv_token, late, Utc::now())
            .await
            .map(drop),
    );
    // The token's cluster went with the tenant.
    let err = tx
        .bootstrap_tokens()
        .consume(&boot_token, Utc::now())
        .await
        .unwrap_err();
    assert_precondition(&err, precondition::BOOTSTRAP_TOKEN_INVALID);
}

// ------------------------------------------------------------------ bootstrap tokens

async fn bootstrap_tokens_one_use(h: &Harness) {
    let (owner, t, scope) = setup(h, "boot").await;
    let c = cluster(h, &scope, "edge").await.unwrap();
    let token = format!("zbt-{}", Uuid::new_v4());

    let mut tx = h.tx(&scope).await;
    let created = tx
        .bootstrap_tokens()
        .create(
            NewBootstrapToken {
                cluster_id: c.id,
                expires_at: Utc::now() + Days::hours(1),
                created_by: Some(owner),
            },
            &token,
        )
        .await
        .unwrap();
    assert_eq!((created.tenant_id, created.cluster_id), (t.id, c.id));
    assert!(created.used_at.is_none());
    tx.commit().await.unwrap();
    assert_eq!(
        h.raw_i64(&format!(
            "SELECT count(*) FROM bootstrap_tokens WHERE token_hash = '{}'",
            hash_token(&token)
        ))
        .await,
        1,
        "only the SHA-256 is stored"
    );

    // Another tenant cannot consume it.
    let (_, _, other) = setup(h, "thief").await;
    let mut tx = h.tx(&other).await;
    assert!(matches!(
        tx.bootstrap_tokens()
            .consume(&token, Utc::now())
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));
    tx.rollback().await.unwrap();

    let mut tx = h.tx(&scope).await;
    let used = tx
        .bootstrap_tokens()
        .consume(&token, Utc::now())
        .await
        .unwrap();
    assert!(used.used_at.is_some());
    tx.commit().await.unwrap();

    let mut tx = h.tx(&scope).await;
    let err = tx
        .bootstrap_tokens()
        .consume(&token, Utc::now())
        .await
        .unwrap_err();
    assert_precondition(&err, precondition::BOOTSTRAP_TOKEN_INVALID);
    assert!(err.to_string().contains("already used"), "{err}");
    tx.rollback().await.unwrap();
    // Under the wrong tenant scope even a used token is just not found, and
    // so is any token under a tenant that does not exist.
    for wrong in [other.clone(), Scope::tenant(Uuid::now_v7(), None)] {
        let mut tx = h.tx(&wrong).await;
        assert!(matches!(
            tx.bootstrap_tokens()
                .consume(&token, Utc::now())
                .await
                .unwrap_err(),
            StoreError::NotFound {
                what: "bootstrap token"
            }
        ));
        tx.rollback().await.unwrap();
    }

    // Expired.
    let token2 = format!("zbt-{}", Uuid::new_v4());
    let mut tx = h.tx(&scope).await;
    tx.bootstrap_tokens()
        .create(
            NewBootstrapToken {
                cluster_id: c.id,
                expires_at: Utc::now() + Days::minutes(10),
                created_by: None,
            },
            &token2,
        )
        .await
        .unwrap();
    let err = tx
        .bootstrap_tokens()
        .consume(&token2, Utc::now() + Days::minutes(11))
        .await
        .unwrap_err();
    assert_precondition(&err, precondition::BOOTSTRAP_TOKEN_INVALID);
    assert!(err.to_string().contains("expired"), "{err}");
    tx.commit().await.unwrap();

    // Cluster deleted after issuing.
    let mut tx = h.tx(&scope).await;
    tx.clusters().soft_delete(c.id, None).await.unwrap();
    let err = tx
        .bootstrap_tokens()
        .consume(&token2, Utc::now())
        .await
        .unwrap_err();
    assert_precondition(&err, precondition::BOOTSTRAP_TOKEN_INVALID);
    assert!(err.to_string().contains("deleted"), "{err}");
    // And no new token for a deleted cluster.
    let err = tx
        .bootstrap_tokens()
        .create(
            NewBootstrapToken {
                cluster_id: c.id,
                expires_at: Utc::now() + Days::hours(1),
                created_by: None,
            },
            &format!("zbt-{}", Uuid::new_v4()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "cluster" }),
        "{err:?}"
    );
    assert_eq!(
        tx.bootstrap_tokens()
            .list_for_cluster(c.id)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn bootstrap_token_concurrent_consume_once(h: &Harness) {
    let (_, _, scope) = setup(h, "boot-race").await;
    let c = cluster(h, &scope, "edge").await.unwrap();
    let token = format!("zbt-{}", Uuid::new_v4());
    let mut tx = h.tx(&scope).await;
    tx.bootstrap_tokens()
        .create(
            NewBootstrapToken {
                cluster_id: c.id,
                expires_at: Utc::now() + Days::hours(1),
                created_by: None,
            },
            &token,
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, scope, token) = (h.store.clone(), scope.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = store.begin(&scope).await?;
            tx.bootstrap_tokens().consume(&token, Utc::now()).await?;
            tx.commit().await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) if e.precondition_code() == Some(precondition::BOOTSTRAP_TOKEN_INVALID) => {}
            Err(e) => panic!("unexpected: {e:?}"),
        }
    }
    assert_eq!(ok, 1);
}

// ------------------------------------------------------------------ transactions

async fn mutation_and_audit_commit_or_roll_back_together(h: &Harness) {
    let (_, t, scope) = setup(h, "atomic").await;
    let mut tx = h.tx(&scope).await;
    let c = tx
        .clusters()
        .create(NewCluster {
            name: "ghost".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut r = audit("cluster.create");
    r.resource_id = Some(c.id.to_string());
    tx.audit().append(r).await.unwrap();
    tx.rollback().await.unwrap();

    let mut tx = h.tx(&scope).await;
    assert!(tx.clusters().get(c.id).await.is_err());
    let page = tx
        .audit()
        .list(&AuditFilter::default(), &PageRequest::first(10))
        .await
        .unwrap();
    assert!(page.items.is_empty());
    // A dropped transaction rolls back too.
    tx.clusters()
        .create(NewCluster {
            name: "dropped".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    drop(tx);
    let mut tx = h.tx(&scope).await;
    assert_eq!(tx.clusters().count_live().await.unwrap(), 0);
    assert_eq!(verify(h, &scope, t.id).await.head_seq, 0);
}

async fn cross_tenant_remediation_refused_by_foreign_key(h: &Harness) {
    let (_, a, sa) = setup(h, "tenant-a").await;
    let (_, b, sb) = setup(h, "tenant-b").await;
    let ca = cluster(h, &sa, "ca").await.unwrap();
    cluster(h, &sb, "cb").await.unwrap();
    let ev_b = Uuid::now_v7();
    let ts = "'2026-01-01T00:00:00.000000Z'";
    h.raw(&format!(
        "INSERT INTO events (id, tenant_id, cluster_id, seq, origin, source_event_id, source, \
         category, severity, type, fingerprint, detected_at, received_at, last_seen_at) VALUES \
         ({}, {}, NULL, 1, 'webhook:s', 'd-1', 'falco', 'security', 4, 'shell', 'fp', {ts}, \
         {ts}, {ts})",
        sql_uuid(ev_b),
        sql_uuid(b.id)
    ))
    .await
    .unwrap();
    // Even behind the application's back, the database refuses a
    // remediation in tenant A for tenant B's event.
    let err = h
        .raw(&format!(
            "INSERT INTO remediations (id, tenant_id, cluster_id, event_id, status, created_at) \
             VALUES ({}, {}, {}, {}, 'proposed', {ts})",
            sql_uuid(Uuid::now_v7()),
            sql_uuid(a.id),
            sql_uuid(ca.id),
            sql_uuid(ev_b)
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, sqlx::Error::Database(d) if d.is_foreign_key_violation()),
        "{err:?}"
    );
    assert_eq!(
        h.raw_i64(
            "SELECT count(*) FROM remediations r JOIN events e ON e.id = r.event_id \
             WHERE r.tenant_id <> e.tenant_id"
        )
        .await,
        0
    );
}

// ------------------------------------------------------------------ audit

async fn audit_append_list_and_redact(h: &Harness) {
    let (_, t, scope) = setup(h, "audited").await;
    let mut tx = h.tx(&scope).await;
    let mut r = audit("member.add");
    r.resource_type = "member".into();
    r.resource_id = Some("m-1".into());
    r.request_id = Some("req-1".into());
    r.client_address = Some("10.0.0.1".into());
    r.user_agent = Some("zenctl/1.0".into());
    r.details =
        json!({"role": "viewer", "password": "hunter2", "nested": {"api_key": "k", "n": 1.0}});
    let first = tx.audit().append(r).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((first.seq, first.tenant_id), (1, t.id));
    assert_eq!(first.prev_hash, GENESIS_HASH);
    assert_eq!(first.hash, record_hash(&first));
    assert_eq!(
        first.entry.details,
        json!({"role": "viewer", "password": "[REDACTED]", "nested": {"api_key": "[REDACTED]", "n": 1}})
    );

    let more = append(h, &scope, 9).await;
    assert_eq!(more[0].prev_hash, first.hash);
    assert_eq!(more.last().unwrap().seq, 10);

    let mut tx = h.store.begin_read(&scope).await.unwrap();
    // Stored records read back identical (timestamps, JSON) to what was hashed.
    let page = tx
        .audit()
        .list(
            &AuditFilter {
                action: Some("member.add".into()),
                ..Default::default()
            },
            &PageRequest::first(10),
        )
        .await
        .unwrap();
    assert_eq!(page.items, vec![first.clone()]);
    assert!(!format!("{:?}", page.items).contains("hunter2"));
    let by_request = tx
        .audit()
        .list(
            &AuditFilter {
                request_id: Some("req-1".into()),
                ..Default::default()
            },
            &PageRequest::first(10),
        )
        .await
        .unwrap();
    assert_eq!(by_request.items, vec![first.clone()]);

    let page = tx
        .audit()
        .list(
            &AuditFilter {
                resource_type: Some("cluster".into()),
                resource_id: Some("c-3".into()),
                actor_id: Some("u-1".into()),
                ..Default::default()
            },
            &PageRequest::first(10),
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].seq, 5);

    let in_range = tx
        .audit()
        .list(
            &AuditFilter {
                since: Some(more[2].created_at),
                until: Some(more[5].created_at),
                ..Default::default()
            },
            &PageRequest::first(100),
        )
        .await
        .unwrap();
    let seqs: Vec<i64> = in_range.items.iter().map(|r| r.seq).collect();
    assert!(seqs.contains(&4) && !seqs.contains(&7), "{seqs:?}");

    let mut seen = Vec::new();
    let mut page = PageRequest::first(3);
    loop {
        let p = tx
            .audit()
            .list(&AuditFilter::default(), &page)
            .await
            .unwrap();
        seen.extend(p.items.iter().map(|r| r.seq));
        match p.next_page_token {
            Some(tok) => page = PageRequest::next(3, tok),
            None => break,
        }
    }
    assert_eq!(seen, (1..=10).rev().collect::<Vec<_>>());
    tx.commit().await.unwrap();

    assert!(verify(h, &scope, t.id).await.is_ok());

    // JSON that a backend might normalize (jsonb re-orders keys, rewrites
    // numbers) still re-hashes to the stored value after the round trip.
    let mut tx = h.tx(&scope).await;
    let mut r = audit("odd.details");
    r.details = json!({
        "z": 1, "a": {"y": [3, 2, 1], "b": null}, "f": 0.1 + 0.2, "whole": 150.0,
        "big": 1e300, "tiny": 1e-7, "u": u64::MAX, "neg": -5, "s": "é\u{0}😀\"'\\",
        "ten_thousand_keys_sort": {"B": 1, "a": 2, "aa": 3, "ä": 4}
    });
    let odd = tx.audit().append(r).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = h.store.begin_read(&scope).await.unwrap();
    let back = tx
        .audit()
        .list(
            &AuditFilter {
                action: Some("odd.details".into()),
                ..Default::default()
            },
            &PageRequest::first(1),
        )
        .await
        .unwrap();
    assert_eq!(back.items[0].hash, odd.hash);
    assert_eq!(record_hash(&back.items[0]), odd.hash);
    tx.commit().await.unwrap();
    assert!(verify(h, &scope, t.id).await.is_ok());
}

async fn audit_concurrent_appends_never_fork(h: &Harness) {
    let (_, t, scope) = setup(h, "concurrent").await;
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (store, scope) = (h.store.clone(), scope.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let mut tx = store.begin(&scope).await.expect("begin");
                let mut r = audit("cluster.update");
                r.details = json!({"task": task, "i": i});
                tx.audit().append(r).await.expect("append");
                tx.commit().await.expect("commit");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut tx = h.store.begin_read(&scope).await.unwrap();
    let mut seqs = Vec::new();
    let mut page = PageRequest::first(MAX_PAGE_SIZE);
    loop {
        let p = tx
            .audit()
            .list(&AuditFilter::default(), &page)
            .await
            .unwrap();
        seqs.extend(p.items.iter().map(|r| r.seq));
        match p.next_page_token {
            Some(tok) => page = PageRequest::next(MAX_PAGE_SIZE, tok),
            None => break,
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=160).collect::<Vec<_>>());
    tx.commit().await.unwrap();
    let v = verify(h, &scope, t.id).await;
    assert!(v.is_ok(), "{v:?}");
    assert_eq!((v.records_checked, v.head_seq), (160, 160));
}

/// Batches appended with `append_all` (one head lock, one multi-row insert) chain exactly like
/// single appends: interleaved with them and with each other from 8 writers, every seq is used
/// once, each batch is contiguous and in its order, and the chain verifies.
async fn audit_batched_appends_chain_like_single_ones(h: &Harness) {
    let (_, t, scope) = setup(h, "batched").await;
    let mut tx = h.tx(&scope).await;
    assert!(tx.audit().append_all(Vec::new()).await.unwrap().is_empty());
    let single = tx.audit().append(audit("cluster.create")).await.unwrap();
    let batch = tx
        .audit()
        .append_all(
            (0..5)
                .map(|i| {
                    let mut r = audit("cluster.update");
                    r.details = json!({"i": i, "token": "secret"});
                    r.user_agent = Some("x".repeat(2000));
                    r
                })
                .collect(),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6]
    );
    assert_eq!(batch[0].prev_hash, single.hash);
    for pair in batch.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    for (i, r) in batch.iter().enumerate() {
        assert_eq!(r.hash, record_hash(r));
        assert_eq!(r.entry.details["i"], json!(i));
        // Bounded and redacted exactly like a single append.
        assert_eq!(r.entry.details["token"], json!("[REDACTED]"));
        assert_eq!(r.entry.user_agent.as_deref().map(str::len), Some(1024));
    }
    // What the batch returned is what was stored.
    let mut tx = h.store.begin_read(&scope).await.unwrap();
    let page = tx
        .audit()
        .list(&AuditFilter::default(), &PageRequest::first(10))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut stored = page.items;
    stored.reverse();
    assert_eq!(&stored[1..], &batch[..]);

    // 8 writers, each alternating batches of 1..=7 records and single appends.
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (store, scope) = (h.store.clone(), scope.clone());
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            for i in 0..10 {
                let mut tx = store.begin(&scope).await.expect("begin");
                let n = 1 + (task + i) % 7;
                let records: Vec<_> = (0..n)
                    .map(|k| {
                        let mut r = audit("cluster.update");
                        r.details = json!({"task": task, "i": i, "k": k});
                        r
                    })
                    .collect();
                let out = tx.audit().append_all(records).await.expect("append_all");
                for pair in out.windows(2) {
                    assert_eq!(pair[1].seq, pair[0].seq + 1);
                }
                tx.audit()
                    .append(audit("cluster.get"))
                    .await
                    .expect("append");
                tx.commit().await.expect("commit");
                written += n + 1;
            }
            written
        }));
    }
    let mut total = 6;
    for task in tasks {
        total += task.await.unwrap();
    }
    let v = verify(h, &scope, t.id).await;
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(
        (v.records_checked, v.head_seq),
        (total as u64, total as i64)
    );
}

async fn audit_tamper_is_detected(h: &Harness) {
    let (_, t, scope) = setup(h, "tampered").await;
    let recs = append(h, &scope, 6).await;
    assert!(verify(h, &scope, t.id).await.is_ok());

    // Edit a record's action behind the application's back.
    h.tamper(&format!(
        "UPDATE audit_logs SET action = 'cluster.delete' WHERE id = {}",
        sql_uuid(recs[2].id)
    ))
    .await;
    let v = verify(h, &scope, t.id).await;
    let p = v.problem.expect("tamper must be detected");
    assert_eq!(
        (p.seq, p.kind),
        (3, ChainProblemKind::HashMismatch),
        "{p:?}"
    );
    assert_eq!(v.records_checked, 2);
    // Restore it, then delete a middle record.
    h.tamper(&format!(
        "UPDATE audit_logs SET action = 'cluster.update' WHERE id = {}",
        sql_uuid(recs[2].id)
    ))
    .await;
    assert!(verify(h, &scope, t.id).await.is_ok());

    h.tamper(&format!(
        "DELETE FROM audit_logs WHERE id = {}",
        sql_uuid(recs[3].id)
    ))
    .await;
    let p = verify(h, &scope, t.id).await.problem.expect("gap");
    assert_eq!((p.seq, p.kind), (4, ChainProblemKind::Missing), "{p:?}");
}

async fn audit_truncated_tail_is_detected(h: &Harness) {
    let (_, t, scope) = setup(h, "truncated").await;
    let recs = append(h, &scope, 4).await;
    h.tamper(&format!(
        "DELETE FROM audit_logs WHERE id = {}",
        sql_uuid(recs[3].id)
    ))
    .await;
    let v = verify(h, &scope, t.id).await;
    let p = v.problem.expect("missing tail");
    assert_eq!((p.seq, p.kind), (4, ChainProblemKind::Missing), "{p:?}");
    assert_eq!(v.head_seq, 4);

    // A forged record with a recomputed hash still breaks the next link.
    let (_, t2, scope2) = setup(h, "forged").await;
    let recs = append(h, &scope2, 3).await;
    let mut forged = recs[1].clone();
    forged.entry.action = "tenant.delete".into();
    forged.hash = record_hash(&forged);
    h.tamper(&format!(
        "UPDATE audit_logs SET action = 'tenant.delete', hash = '{}' WHERE id = {}",
        forged.hash,
        sql_uuid(forged.id)
    ))
    .await;
    let p = verify(h, &scope2, t2.id)
        .await
        .problem
        .expect("broken link");
    assert_eq!(
        (p.seq, p.kind),
        (3, ChainProblemKind::PrevHashMismatch),
        "{p:?}"
    );
}

async fn audit_app_cannot_rewrite_history(h: &Harness) {
    let (_, _, scope) = setup(h, "append-only").await;
    let recs = append(h, &scope, 1).await;
    match h.kind {
        // SQLite: triggers refuse it even on a raw connection.
        BackendKind::Sqlite => {
            let err = h
                .raw(&format!(
                    "UPDATE audit_logs SET action = 'x' WHERE id = {}",
                    sql_uuid(recs[0].id)
                ))
                .await
                .unwrap_err();
            assert!(err.to_string().contains("append-only"), "{err}");
            assert!(h.raw("DELETE FROM audit_logs").await.is_err());
        }
        // PostgreSQL: the application role has no UPDATE/DELETE privilege.
        BackendKind::Postgres => {
            let pool = h.store.pg_app_pool().unwrap();
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
                .bind(scope.tenant_id.unwrap().to_string())
                .execute(&mut *tx)
                .await
                .unwrap();
            let err = sqlx::query("UPDATE audit_logs SET action = 'x'")
                .execute(&mut *tx)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("permission denied"), "{err}");
        }
    }
}

async fn audit_platform_chain_and_scope(h: &Harness) {
    // No tenant: the platform chain (nil UUID).
    let mut tx = h.tx(&Scope::anonymous()).await;
    let r = tx
        .audit()
        .append(NewAuditRecord::new(
            "anonymous",
            "auth.login",
            "session",
            AuditOutcome::Denied,
        ))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((r.tenant_id, r.seq), (PLATFORM_TENANT, 1));
    assert!(verify(h, &Scope::anonymous(), PLATFORM_TENANT)
        .await
        .is_ok());

    let (_, t, scope) = setup(h, "private").await;
    append(h, &scope, 2).await;
    // A tenant sees neither the platform chain nor another tenant's.
    let mut tx = h.tx(&scope).await;
    assert!(matches!(
        tx.audit().verify_chain(PLATFORM_TENANT).await.unwrap_err(),
        StoreError::PermissionDenied { .. }
    ));
    let heads = tx.audit().heads().await.unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!((heads[0].tenant_id, heads[0].last_seq), (t.id, 2));
    tx.rollback().await.unwrap();
    let mut tx = h.tx(&Scope::anonymous()).await;
    let platform = tx
        .audit()
        .list(&AuditFilter::default(), &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(platform.items.len(), 1);
    assert!(matches!(
        tx.audit().verify_chain(t.id).await.unwrap_err(),
        StoreError::PermissionDenied { .. }
    ));
    tx.rollback().await.unwrap();

    // Platform admins verify any chain and see every head.
    let admin = Scope::platform_admin(None);
    assert!(verify(h, &admin, t.id).await.is_ok());
    let mut tx = h.tx(&admin).await;
    assert_eq!(tx.audit().heads().await.unwrap().len(), 2);
}

// ------------------------------------------------------------------ migrations

async fn migration_status_and_start_check(h: &Harness) {
    // The harness migrated: all applied.
    let s = h.store.check_migrations().await.unwrap();
    assert!(s.is_current());
    assert!(!s.applied.is_empty());
    assert!(s.pending.is_empty());
    // Migrating again is a no-op.
    assert_eq!(h.store.migrate().await.unwrap(), s);

    // A migration this binary does not know: a clear error, no silent drift.
    let blob = match h.kind {
        BackendKind::Postgres => "'\\x00'::bytea",
        BackendKind::Sqlite => "X'00'",
    };
    h.raw(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', true, {blob}, 0)"
    ))
    .await
    .unwrap();
    let s = h.store.migration_status().await.unwrap();
    assert_eq!(s.unknown.len(), 1);
    assert_eq!(s.unknown[0].version, 99990101000000);
    let err = h.store.check_migrations().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Migration { reason } if reason.contains("99990101000000") && reason.contains("does not know")),
        "{err}"
    );
    assert!(matches!(
        h.store.migrate().await.unwrap_err(),
        StoreError::Migration { .. }
    ));
    h.raw("DELETE FROM _sqlx_migrations WHERE version = 99990101000000")
        .await
        .unwrap();

    // Half-applied (dirty).
    h.raw("UPDATE _sqlx_migrations SET success = false WHERE version = 1")
        .await
        .unwrap();
    let err = h.store.check_migrations().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Migration { reason } if reason.contains("dirty")),
        "{err}"
    );
    assert!(matches!(
        h.store.migrate().await.unwrap_err(),
        StoreError::Migration { .. }
    ));
    h.raw("UPDATE _sqlx_migrations SET success = true WHERE version = 1")
        .await
        .unwrap();

    // Edited after being applied.
    h.raw(&format!(
        "UPDATE _sqlx_migrations SET checksum = {blob} WHERE version = 1"
    ))
    .await
    .unwrap();
    let err = h.store.check_migrations().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Migration { reason } if reason.contains("never be edited")),
        "{err}"
    );
}

async fn fresh_database_is_pending_until_migrated(h: &Harness) {
    // `h` is migrated; make a fresh one of the same kind.
    let Some(fresh) = Harness::new(h.kind, false).await else {
        return;
    };
    let s = fresh.store.migration_status().await.unwrap();
    assert!(s.applied.is_empty());
    assert!(!s.pending.is_empty());
    assert_eq!(s.pending[0].version, 1);
    let err = fresh.store.check_migrations().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Migration { reason } if reason.contains("pending")),
        "{err}"
    );
    let after = fresh.store.migrate().await.unwrap();
    assert!(after.is_current());
    assert_eq!(after.applied.len(), s.pending.len());
    fresh.store.check_migrations().await.unwrap();
    fresh.store.ping().await.unwrap();
}

conformance!(
    tenant_names_unique_and_reusable_after_soft_delete,
    tenant_get_update_status_and_scope,
    tenant_pagination,
    tenant_versions_refuse_stale_edits,
    tenant_concurrent_edits_of_one_version_one_wins,
    tenant_created_without_owner,
    tenant_list_name_prefix_and_deleted,
    users_upsert_and_local,
    members_last_owner_rule,
    members_concurrent_demotions_keep_an_owner,
    members_list_pages_filters_and_names,
    invites_accept_once_and_not_expired,
    invites_accept_needs_the_invites_own_token,
    clusters_names_quota_and_soft_delete,
    clusters_quota_holds_under_concurrency,
    clusters_list_filter_update_and_pagination,
    cluster_versions_ignore_agent_reports,
    cluster_concurrent_edits_of_one_version_one_wins,
    inactive_tenant_refuses_new_work,
    bootstrap_tokens_one_use,
    bootstrap_token_concurrent_consume_once,
    mutation_and_audit_commit_or_roll_back_together,
    cross_tenant_remediation_refused_by_foreign_key,
    audit_append_list_and_redact,
    audit_concurrent_appends_never_fork,
    audit_batched_appends_chain_like_single_ones,
    audit_tamper_is_detected,
    audit_truncated_tail_is_detected,
    audit_app_cannot_rewrite_history,
    audit_platform_chain_and_scope,
    migration_status_and_start_check,
    fresh_database_is_pending_until_migrated,
);
