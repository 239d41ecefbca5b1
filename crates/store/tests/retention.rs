//! Retention (docs/RETENTION.md): per-tenant windows, the janitor's bounded deletes, its lease,
//! and audit checkpoints. Every test runs on SQLite and on PostgreSQL (see
//! `common::conformance!`).

mod common;

use std::time::Duration;

use chrono::{DateTime, Duration as Span, Utc};
use serde_json::json;
use uuid::Uuid;

use common::Harness;
use zen_store::*;

const HOUR: Duration = Duration::from_secs(3600);

// ------------------------------------------------------------------ helpers

/// A tenant with an owner, a tenant scope (no user, as the janitor uses) and one cluster.
async fn setup(h: &Harness, name: &str) -> (Tenant, Scope, Cluster) {
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
            name: format!("{name}-c1"),
            ..Default::default()
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (t.clone(), Scope::tenant(t.id, None), c)
}

fn ev(id: &str, fingerprint: &str, at: DateTime<Utc>) -> NewEvent {
    NewEvent {
        source_event_id: id.into(),
        source: "falco".into(),
        source_name: Some("falco-node-1".into()),
        category: "security".into(),
        severity: 4,
        event_type: "terminal-shell-in-container".into(),
        title: format!("Shell spawned ({fingerprint})"),
        resource: json!({"kind": "Pod", "namespace": "prod", "name": "web-0"}),
        details: json!({"delivery": id}),
        fingerprint: fingerprint.into(),
        detected_at: at,
    }
}

/// Ingests `events` as received at `now`.
async fn ingest(
    h: &Harness,
    scope: &Scope,
    cluster: Uuid,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Vec<EventOutcome> {
    let mut tx = h.tx(scope).await;
    let out = tx
        .events()
        .ingest(Some(cluster), events, HOUR, now)
        .await
        .expect("ingest");
    tx.commit().await.unwrap();
    out
}

fn accepted(o: &EventOutcome) -> Uuid {
    match o {
        EventOutcome::Accepted { event_id } => *event_id,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

async fn count(h: &Harness, table: &str, tenant: Uuid) -> i64 {
    h.raw_i64(&format!(
        "SELECT count(*) FROM {table} WHERE tenant_id = '{tenant}'"
    ))
    .await
}

/// Runs one janitor statement in its own transaction, as the janitor does.
async fn janitor<F>(h: &Harness, scope: &Scope, f: F) -> u64
where
    F: for<'a> FnOnce(
        &'a mut dyn JanitorRepo,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<u64>> + Send + 'a>,
    >,
{
    let mut tx = h.tx(scope).await;
    let n = f(tx.janitor()).await.expect("janitor statement");
    tx.commit().await.unwrap();
    n
}

/// Repeats a bounded delete until it removes fewer than `limit` rows; returns the total and
/// the number of statements.
async fn drain<F>(h: &Harness, scope: &Scope, limit: i64, f: F) -> (u64, u32)
where
    F: for<'a> Fn(
        &'a mut dyn JanitorRepo,
        i64,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64>> + Send + 'a>>,
{
    let (mut total, mut rounds) = (0, 0);
    loop {
        let n = janitor(h, scope, |j| f(j, limit)).await;
        assert!(n <= limit as u64, "a batch removed {n} > {limit} rows");
        total += n;
        rounds += 1;
        if n < limit as u64 {
            return (total, rounds);
        }
    }
}

fn remediation(cluster: Uuid, event: Option<Uuid>, status: RemediationStatus) -> NewRemediation {
    NewRemediation {
        cluster_id: cluster,
        event_id: event,
        title: "Restart web-0".into(),
        description: String::new(),
        action: json!({"type": "restart_pod", "namespace": "prod", "name": "web-0"}),
        rollback_action: None,
        probes: json!([]),
        risk: RiskLevel::Low,
        status,
        required_approvals: 0,
        proposed_by: "test".into(),
        expires_at: None,
    }
}

async fn create_remediation(h: &Harness, scope: &Scope, new: NewRemediation) -> Remediation {
    let mut tx = h.tx(scope).await;
    let r = tx
        .remediations()
        .create(new)
        .await
        .expect("create remediation");
    tx.commit().await.unwrap();
    r
}

/// A timestamp literal both backends compare correctly with stored ones.
fn ts(t: DateTime<Utc>) -> String {
    format!(
        "'{}'",
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}

// ------------------------------------------------------------------ settings

async fn retention_settings_are_checked_and_kept(h: &Harness) {
    let (t, _, _) = setup(h, "keep").await;
    assert_eq!(t.retention, Retention::default(), "0: the platform default");
    let admin = Scope::platform_admin(None);
    let wanted = Retention {
        events_days: 30,
        receipts_days: 7,
        remediations_days: 400,
        dead_letters_days: 14,
    };
    let mut tx = h.tx(&admin).await;
    let updated = tx
        .tenants()
        .update(
            t.id,
            None,
            TenantUpdate {
                retention: Some(wanted),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(updated.retention, wanted);
    let mut tx = h.store.begin_read(&admin).await.unwrap();
    assert_eq!(tx.tenants().get(t.id).await.unwrap().retention, wanted);
    drop(tx);

    for (bad, field) in [
        (
            Retention {
                receipts_days: Retention::MIN_RECEIPTS_DAYS - 1,
                ..wanted
            },
            "retention.receipts_days",
        ),
        (
            Retention {
                events_days: -1,
                ..wanted
            },
            "retention.events_days",
        ),
        (
            Retention {
                dead_letters_days: Retention::MAX_DAYS + 1,
                ..wanted
            },
            "retention.dead_letters_days",
        ),
    ] {
        let mut tx = h.tx(&admin).await;
        let err = tx
            .tenants()
            .update(
                t.id,
                None,
                TenantUpdate {
                    retention: Some(bad),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid { field: f, .. } if *f == field),
            "{bad:?}: {err:?}"
        );
    }
    let defaults = Retention {
        events_days: 90,
        receipts_days: 30,
        remediations_days: 365,
        dead_letters_days: 30,
    };
    let own = Retention {
        events_days: 10,
        ..Retention::default()
    };
    assert_eq!(
        own.or(defaults),
        Retention {
            events_days: 10,
            ..defaults
        }
    );
}

// ------------------------------------------------------------------ events, changes, receipts

async fn old_events_go_in_bounded_batches_unless_a_remediation_names_them(h: &Harness) {
    let (t, scope, c) = setup(h, "prune-events").await;
    let (other, other_scope, other_c) = setup(h, "prune-other").await;
    let now = Utc::now();
    let old = now - Span::days(40);
    let olds: Vec<NewEvent> = (0..7)
        .map(|i| ev(&format!("old-{i}"), &format!("fp-old-{i}"), old))
        .collect();
    let old_ids: Vec<Uuid> = ingest(h, &scope, c.id, &olds, old)
        .await
        .iter()
        .map(accepted)
        .collect();
    ingest(h, &scope, c.id, &[ev("new-0", "fp-new", now)], now).await;
    // Another tenant's old events are not this scope's to delete.
    ingest(h, &other_scope, other_c.id, &[ev("o-0", "fp-o", old)], old).await;
    // A remediation names one old event: it stays while the remediation does.
    create_remediation(
        h,
        &scope,
        remediation(c.id, Some(old_ids[0]), RemediationStatus::PendingApproval),
    )
    .await;

    let before = now - Span::days(30);
    let (deleted, rounds) = drain(h, &scope, 2, |j, limit| {
        Box::pin(j.prune_events(before, limit))
    })
    .await;
    assert_eq!(
        deleted, 6,
        "seven old events less the one a remediation names"
    );
    assert_eq!(rounds, 4, "batches of two: 2, 2, 2, 0");
    assert_eq!(count(h, "events", t.id).await, 2);
    assert_eq!(
        count(h, "event_changes", t.id).await,
        2,
        "the deleted events' change rows went with them"
    );
    assert_eq!(count(h, "events", other.id).await, 1);
    let mut tx = h.store.begin_read(&scope).await.unwrap();
    tx.events()
        .get(old_ids[0])
        .await
        .expect("the named event stays");
    let tail = tx.events().tail(0, 100).await.unwrap();
    assert_eq!(tail.len(), 2, "the tail still reads the kept events");
}

async fn superseded_change_rows_are_swept(h: &Harness) {
    let (t, scope, c) = setup(h, "prune-changes").await;
    let now = Utc::now();
    // Five occurrences of one fingerprint fold into one event: five change rows, one current.
    for i in 0..5 {
        ingest(h, &scope, c.id, &[ev(&format!("f-{i}"), "fp", now)], now).await;
    }
    assert_eq!(count(h, "events", t.id).await, 1);
    assert_eq!(count(h, "event_changes", t.id).await, 5);
    let mut tx = h.tx(&scope).await;
    let last = tx.janitor().last_change_seq().await.unwrap();
    tx.commit().await.unwrap();
    assert!(last >= 5);
    let swept = janitor(h, &scope, |j| Box::pin(j.prune_changes(0, last))).await;
    assert_eq!(swept, 4);
    assert_eq!(count(h, "event_changes", t.id).await, 1);
    let mut tx = h.store.begin_read(&scope).await.unwrap();
    let tail = tx.events().tail(0, 100).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].count, 5);
}

async fn receipts_outlive_resends_then_expire(h: &Harness) {
    let (t, scope, c) = setup(h, "prune-receipts").await;
    let now = Utc::now();
    // Delivered six days ago: inside the shortest receipt window a tenant may set.
    let six_days = now - Span::days(6);
    let first = ingest(h, &scope, c.id, &[ev("d-1", "fp-1", six_days)], six_days).await;
    let event_id = accepted(&first[0]);
    let min_window = now - Span::days(Retention::MIN_RECEIPTS_DAYS.into());
    let (deleted, _) = drain(h, &scope, 100, |j, limit| {
        Box::pin(j.prune_receipts(min_window, limit))
    })
    .await;
    assert_eq!(deleted, 0);
    // The sender resends now: still answered Duplicate, nothing stored twice.
    let resend = ingest(h, &scope, c.id, &[ev("d-1", "fp-1", six_days)], now).await;
    assert!(
        matches!(resend[0], EventOutcome::Duplicate { event_id: id } if id == event_id),
        "{resend:?}"
    );
    assert_eq!(count(h, "events", t.id).await, 1);

    // Past the window the receipt goes (in batches) and the event stays.
    let later = now + Span::days(Retention::MIN_RECEIPTS_DAYS.into());
    for i in 0..3 {
        ingest(
            h,
            &scope,
            c.id,
            &[ev(&format!("d-x{i}"), &format!("fp-x{i}"), six_days)],
            six_days,
        )
        .await;
    }
    assert_eq!(count(h, "event_receipts", t.id).await, 4);
    let (deleted, rounds) = drain(h, &scope, 3, |j, limit| {
        Box::pin(j.prune_receipts(later, limit))
    })
    .await;
    assert_eq!((deleted, rounds), (4, 2));
    assert_eq!(count(h, "event_receipts", t.id).await, 0);
    assert_eq!(count(h, "events", t.id).await, 4);
}

// ------------------------------------------------------------------ remediations, dead letters

async fn finished_remediations_go_with_their_rows(h: &Harness) {
    let (t, scope, c) = setup(h, "prune-remediations").await;
    let now = Utc::now();
    let old = now - Span::days(400);
    let out = ingest(
        h,
        &scope,
        c.id,
        &[ev("r-1", "fp-r1", old), ev("r-2", "fp-r2", old)],
        old,
    )
    .await;
    let done = create_remediation(
        h,
        &scope,
        remediation(c.id, Some(accepted(&out[0])), RemediationStatus::Succeeded),
    )
    .await;
    let running = create_remediation(
        h,
        &scope,
        remediation(c.id, Some(accepted(&out[1])), RemediationStatus::Executing),
    )
    .await;
    let mut tx = h.tx(&scope).await;
    tx.remediations()
        .add_dead_letter(&DeadLetter {
            id: Uuid::now_v7(),
            tenant_id: t.id,
            remediation_id: done.id,
            cluster_id: c.id,
            execution_id: Uuid::now_v7(),
            operation: DispatchOperation::Apply,
            attempts: 3,
            last_error: "agent unreachable".into(),
            created_at: now,
            replayed_at: None,
            replayed_by: None,
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    h.raw(&format!(
        "UPDATE remediations SET updated_at = {}, created_at = {} WHERE tenant_id = '{}'",
        ts(old),
        ts(old),
        t.id
    ))
    .await
    .unwrap();

    let before = now - Span::days(365);
    let (deleted, _) = drain(h, &scope, 10, |j, limit| {
        Box::pin(j.prune_remediations(before, limit))
    })
    .await;
    assert_eq!(deleted, 1, "only the finished one");
    assert_eq!(
        count(h, "dead_letters", t.id).await,
        0,
        "its dead letter went too"
    );
    let mut tx = h.store.begin_read(&scope).await.unwrap();
    assert!(matches!(
        tx.remediations().get(done.id).await,
        Err(StoreError::NotFound { .. })
    ));
    tx.remediations()
        .get(running.id)
        .await
        .expect("running stays");
    drop(tx);
    // Its event is free now.
    let (events, _) = drain(h, &scope, 10, |j, limit| {
        Box::pin(j.prune_events(before, limit))
    })
    .await;
    assert_eq!(events, 1);
    assert_eq!(count(h, "events", t.id).await, 1);
}

async fn old_dead_letters_go(h: &Harness) {
    let (t, scope, c) = setup(h, "prune-letters").await;
    let now = Utc::now();
    let r = create_remediation(
        h,
        &scope,
        remediation(c.id, None, RemediationStatus::Failed),
    )
    .await;
    let mut tx = h.tx(&scope).await;
    for (i, age) in [40, 35, 1].into_iter().enumerate() {
        tx.remediations()
            .add_dead_letter(&DeadLetter {
                id: Uuid::now_v7(),
                tenant_id: t.id,
                remediation_id: r.id,
                cluster_id: c.id,
                execution_id: Uuid::now_v7(),
                operation: DispatchOperation::Apply,
                attempts: i as i32 + 1,
                last_error: "timeout".into(),
                created_at: now - Span::days(age),
                replayed_at: None,
                replayed_by: None,
            })
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let (deleted, rounds) = drain(h, &scope, 1, |j, limit| {
        Box::pin(j.prune_dead_letters(now - Span::days(30), limit))
    })
    .await;
    assert_eq!((deleted, rounds), (2, 3));
    assert_eq!(count(h, "dead_letters", t.id).await, 1);
}

// ------------------------------------------------------------------ the lease

async fn one_janitor_holds_the_lease(h: &Harness) {
    let admin = Scope::platform_admin(None);
    let now = Utc::now();
    let take = |holder: &'static str, at: DateTime<Utc>, due_before: DateTime<Utc>| async move {
        let mut tx = h.tx(&Scope::platform_admin(None)).await;
        let taken = tx
            .janitor()
            .take_lease("retention", holder, at, at + Span::minutes(5), due_before)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        taken
    };
    assert!(take("a", now, now).await, "a free lease");
    assert!(!take("b", now, now).await, "held by a");
    assert!(take("a", now, now).await, "a renews its own");
    let mut tx = h.tx(&admin).await;
    assert_eq!(tx.janitor().last_run("retention").await.unwrap(), None);
    tx.janitor()
        .finish_lease("retention", "a", now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = h.tx(&admin).await;
    let last = tx.janitor().last_run("retention").await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert!((last - now).num_milliseconds().abs() < 2);
    let soon = now + Span::seconds(1);
    assert!(
        !take("b", soon, now - Span::hours(1)).await,
        "free, but not due: the last run is newer than an hour ago"
    );
    assert!(take("b", soon, soon).await, "free and due");
    // b dies holding it: a takes over once it expires, not before.
    assert!(!take("a", soon + Span::minutes(4), soon + Span::minutes(4)).await);
    assert!(take("a", soon + Span::minutes(6), soon + Span::minutes(6)).await);
}

// ------------------------------------------------------------------ audit checkpoints

async fn append_audit(h: &Harness, scope: &Scope, n: usize) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut tx = h.tx(scope).await;
        let mut r = NewAuditRecord::new("user", "cluster.update", "cluster", AuditOutcome::Success);
        r.resource_id = Some(format!("c-{i}"));
        out.push(tx.audit().append(r).await.expect("append"));
        tx.commit().await.unwrap();
    }
    out
}

async fn verify(h: &Harness, scope: &Scope, tenant: Uuid) -> ChainVerification {
    let mut tx = h.store.begin_read(scope).await.unwrap();
    tx.audit().verify_chain(tenant).await.expect("verify")
}

fn checkpoint(record: &AuditRecord) -> AuditCheckpoint {
    AuditCheckpoint {
        tenant_id: record.tenant_id,
        through_seq: record.seq,
        head_hash: record.hash.clone(),
        cut_before: record.created_at + Span::microseconds(1),
        segment_sha256: "0".repeat(64),
        key_id: "test".into(),
        created_at: Utc::now(),
    }
}

async fn audit_records_leave_only_below_a_checkpoint(h: &Harness) {
    let (t, scope, _) = setup(h, "audit-cut").await;
    let (_, other_scope, _) = setup(h, "audit-other").await;
    let records = append_audit(h, &scope, 10).await;
    let mut tx = h.tx(&scope).await;
    assert_eq!(
        tx.audit().prune(t.id, 100).await.unwrap(),
        0,
        "no checkpoint, no prune"
    );
    tx.commit().await.unwrap();

    // Refused: a hash that is not the stored one, and another tenant's chain.
    let mut wrong = checkpoint(&records[3]);
    wrong.head_hash = records[2].hash.clone();
    let mut tx = h.tx(&scope).await;
    let err = tx.audit().add_checkpoint(&wrong).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "head_hash",
                ..
            }
        ),
        "{err:?}"
    );
    drop(tx);
    let mut tx = h.tx(&other_scope).await;
    let err = tx
        .audit()
        .add_checkpoint(&checkpoint(&records[3]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PermissionDenied { .. }),
        "{err:?}"
    );
    drop(tx);

    let mut tx = h.tx(&scope).await;
    tx.audit()
        .add_checkpoint(&checkpoint(&records[3]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = h.tx(&scope).await;
    let err = tx
        .audit()
        .add_checkpoint(&checkpoint(&records[1]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "through_seq",
                ..
            }
        ),
        "a cut never moves back: {err:?}"
    );
    drop(tx);

    let mut pruned = Vec::new();
    loop {
        let mut tx = h.tx(&scope).await;
        let n = tx.audit().prune(t.id, 3).await.unwrap();
        tx.commit().await.unwrap();
        pruned.push(n);
        if n < 3 {
            break;
        }
    }
    assert_eq!(
        pruned,
        vec![3, 1],
        "four records at or below the cut, in batches"
    );
    assert_eq!(count(h, "audit_logs", t.id).await, 6);
    let v = verify(h, &scope, t.id).await;
    assert!(v.problem.is_none(), "{v:?}");
    assert_eq!(v.records_checked, 6, "the kept chain verifies from the cut");

    // The kept chain cannot be deleted behind the checkpoint's back.
    let above = format!(
        "DELETE FROM audit_logs WHERE tenant_id = '{}' AND seq = {}",
        t.id, records[7].seq
    );
    match h.kind {
        BackendKind::Sqlite => {
            let err = h.raw(&above).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{err}");
        }
        BackendKind::Postgres => {
            let pool = h.store.pg_app_pool().unwrap();
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
                .bind(t.id.to_string())
                .execute(&mut *tx)
                .await
                .unwrap();
            let done = sqlx::query(sqlx::AssertSqlSafe(above))
                .execute(&mut *tx)
                .await
                .unwrap();
            assert_eq!(
                done.rows_affected(),
                0,
                "RLS lets no kept record be deleted"
            );
            tx.commit().await.unwrap();
        }
    }
    assert_eq!(count(h, "audit_logs", t.id).await, 6);
    // Removing a kept record is still caught (as an owner with the triggers gone would).
    h.tamper(&format!(
        "DELETE FROM audit_logs WHERE tenant_id = '{}' AND seq = {}",
        t.id, records[6].seq
    ))
    .await;
    let v = verify(h, &scope, t.id).await;
    assert_eq!(v.problem.expect("a gap").seq, records[6].seq);
}

conformance!(
    retention_settings_are_checked_and_kept,
    old_events_go_in_bounded_batches_unless_a_remediation_names_them,
    superseded_change_rows_are_swept,
    receipts_outlive_resends_then_expire,
    finished_remediations_go_with_their_rows,
    old_dead_letters_go,
    one_janitor_holds_the_lease,
    audit_records_leave_only_below_a_checkpoint,
);
