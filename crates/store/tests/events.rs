//! Security events: idempotent, folding batch ingestion, lists, the tail
//! watchers follow, tenant isolation. Every test runs on SQLite and on
//! PostgreSQL (see `common::conformance!`).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use common::Harness;
use zen_store::*;

const HOUR: Duration = Duration::from_secs(3600);

// ------------------------------------------------------------------ helpers

/// A tenant with an owner, a scope in it, and one cluster.
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

async fn add_cluster(h: &Harness, scope: &Scope, name: &str) -> Cluster {
    let mut tx = h.tx(scope).await;
    let c = tx
        .clusters()
        .create(NewCluster {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    c
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn ev(id: &str, fingerprint: &str) -> NewEvent {
    NewEvent {
        source_event_id: id.into(),
        source: "falco".into(),
        source_name: Some("falco-node-1".into()),
        category: "security".into(),
        severity: 4,
        event_type: "terminal-shell-in-container".into(),
        title: format!("Shell spawned ({fingerprint})"),
        resource: json!({"api_version": "v1", "kind": "Pod", "namespace": "prod", "name": "web-0", "uid": "u-1"}),
        details: json!({"delivery": id, "proc": {"name": "bash", "pid": 4242}}),
        fingerprint: fingerprint.into(),
        detected_at: t0() - Span::seconds(5) + Span::nanoseconds(123_456_789),
    }
}

fn hook(id: &str, fingerprint: &str, source: &str) -> NewEvent {
    NewEvent {
        source: "webhook".into(),
        source_name: Some(source.into()),
        category: "compliance".into(),
        severity: 2,
        ..ev(id, fingerprint)
    }
}

async fn ingest(
    h: &Harness,
    scope: &Scope,
    cluster: Option<Uuid>,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Vec<EventOutcome> {
    try_ingest(h, scope, cluster, events, HOUR, now)
        .await
        .expect("ingest")
}

async fn try_ingest(
    h: &Harness,
    scope: &Scope,
    cluster: Option<Uuid>,
    events: &[NewEvent],
    window: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<EventOutcome>> {
    let mut tx = h.tx(scope).await;
    let out = tx.events().ingest(cluster, events, window, now).await?;
    tx.commit().await?;
    Ok(out)
}

async fn get(h: &Harness, scope: &Scope, id: Uuid) -> Event {
    let mut tx = h.store.begin_read(scope).await.unwrap();
    tx.events().get(id).await.expect("get event")
}

async fn tail(h: &Harness, scope: &Scope, after: i64, limit: i64) -> Vec<Event> {
    let mut tx = h.store.begin_read(scope).await.unwrap();
    tx.events().tail(after, limit).await.expect("tail")
}

async fn count_rows(h: &Harness, table: &str, tenant: Uuid) -> i64 {
    h.raw_i64(&format!(
        "SELECT count(*) FROM {table} WHERE tenant_id = '{tenant}'"
    ))
    .await
}

fn accepted(o: EventOutcome) -> Uuid {
    match o {
        EventOutcome::Accepted { event_id } => event_id,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid(r: Result<Vec<EventOutcome>>, want: &str) {
    match r {
        Err(StoreError::Invalid { field, .. }) if field == want => {}
        other => panic!("expected Invalid {{ field: {want} }}, got {other:?}"),
    }
}

// ------------------------------------------------------------------ ingest

async fn ingest_accepts_folds_and_dedups_within_a_batch(h: &Harness) {
    let (t, scope, c) = setup(h, "acme").await;
    let now = t0();
    let batch = [
        ev("a", "fp-1"),
        ev("b", "fp-1"),
        ev("a", "fp-1"),
        ev("c", "fp-2"),
        ev("b", "fp-1"),
        ev("d", "fp-1"),
    ];
    let out = ingest(h, &scope, Some(c.id), &batch, now).await;
    assert_eq!(out.len(), batch.len());
    let x = accepted(out[0]);
    assert_eq!(out[1], EventOutcome::Folded { event_id: x });
    assert_eq!(out[2], EventOutcome::Duplicate { event_id: x });
    let y = accepted(out[3]);
    assert_ne!(x, y);
    assert_eq!(out[4], EventOutcome::Duplicate { event_id: x });
    assert_eq!(out[5], EventOutcome::Folded { event_id: x });

    let e = get(h, &scope, x).await;
    assert_eq!(e.tenant_id, t.id);
    assert_eq!(e.cluster_id, Some(c.id));
    assert_eq!(e.count, 3, "a, b, d");
    assert_eq!(e.source_event_id, "a");
    assert_eq!(e.source, "falco");
    assert_eq!(e.source_name.as_deref(), Some("falco-node-1"));
    assert_eq!(e.category, "security");
    assert_eq!(e.severity, 4);
    assert_eq!(e.event_type, "terminal-shell-in-container");
    assert_eq!(e.title, "Shell spawned (fp-1)");
    assert_eq!(e.resource, batch[0].resource);
    // The latest occurrence's details; the first occurrence's detection time.
    assert_eq!(e.details, batch[5].details);
    assert_eq!(
        e.detected_at.timestamp_micros(),
        batch[0].detected_at.timestamp_micros()
    );
    assert_eq!((e.received_at, e.last_seen_at), (now, now));
    assert_eq!(get(h, &scope, y).await.count, 1);
    assert_eq!(count_rows(h, "events", t.id).await, 2);
    assert_eq!(count_rows(h, "event_receipts", t.id).await, 4);
    // Seqs follow the batch order.
    let seqs: Vec<(Uuid, i64)> = tail(h, &scope, 0, 100)
        .await
        .iter()
        .map(|e| (e.id, e.seq))
        .collect();
    assert_eq!(seqs.len(), 2);
    assert_eq!(seqs[0].0, x);
    assert!(seqs[0].1 < seqs[1].1);

    // An empty batch is a no-op.
    assert!(ingest(h, &scope, Some(c.id), &[], now).await.is_empty());
}

async fn ingest_is_idempotent_across_batches(h: &Harness) {
    let (t, scope, c) = setup(h, "acme").await;
    let now = t0();
    let x = accepted(ingest(h, &scope, Some(c.id), &[ev("a", "fp")], now).await[0]);
    let out = ingest(
        h,
        &scope,
        Some(c.id),
        &[ev("b", "fp")],
        now + Span::seconds(1),
    )
    .await;
    assert_eq!(out, [EventOutcome::Folded { event_id: x }]);
    assert_eq!(get(h, &scope, x).await.count, 2);

    // Resending any subset, in any order, changes nothing; a new id in the
    // same batch still folds.
    let later = now + Span::seconds(2);
    let out = ingest(
        h,
        &scope,
        Some(c.id),
        &[ev("b", "fp"), ev("c", "fp"), ev("a", "fp")],
        later,
    )
    .await;
    assert_eq!(
        out,
        [
            EventOutcome::Duplicate { event_id: x },
            EventOutcome::Folded { event_id: x },
            EventOutcome::Duplicate { event_id: x },
        ]
    );
    let e = get(h, &scope, x).await;
    assert_eq!(e.count, 3);
    assert_eq!(e.last_seen_at, later);
    assert_eq!(e.received_at, now);

    // A resend after the fold: Duplicate, count unchanged, nothing moves.
    let seq = e.seq;
    let out = ingest(
        h,
        &scope,
        Some(c.id),
        &[ev("c", "fp"), ev("b", "fp")],
        later + Span::seconds(1),
    )
    .await;
    assert_eq!(
        out,
        [
            EventOutcome::Duplicate { event_id: x },
            EventOutcome::Duplicate { event_id: x },
        ]
    );
    let e = get(h, &scope, x).await;
    assert_eq!((e.count, e.seq, e.last_seen_at), (3, seq, later));
    // A resend whose fingerprint changed is still the same delivery.
    let out = ingest(h, &scope, Some(c.id), &[ev("a", "other-fp")], later).await;
    assert_eq!(out, [EventOutcome::Duplicate { event_id: x }]);
    assert_eq!(count_rows(h, "events", t.id).await, 1);

    // A rolled-back batch leaves no receipt: its resend is accepted.
    let mut tx = h.tx(&scope).await;
    tx.events()
        .ingest(Some(c.id), &[ev("r", "fp-r")], HOUR, later)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let out = ingest(h, &scope, Some(c.id), &[ev("r", "fp-r")], later).await;
    accepted(out[0]);
}

async fn ingest_fold_window_expires(h: &Harness) {
    let (_, scope, c) = setup(h, "acme").await;
    let window = Duration::from_secs(600);
    let now = t0();
    let run = |events: Vec<NewEvent>, at: DateTime<Utc>| {
        let scope = scope.clone();
        async move {
            try_ingest(h, &scope, Some(c.id), &events, window, at)
                .await
                .unwrap()
        }
    };
    let x = accepted(run(vec![ev("a", "fp")], now).await[0]);
    // Inside the window (measured from the row's last_seen_at, which moves).
    let at = now + Span::seconds(590);
    assert_eq!(
        run(vec![ev("b", "fp")], at).await,
        [EventOutcome::Folded { event_id: x }]
    );
    let at = at + Span::seconds(600);
    assert_eq!(
        run(vec![ev("c", "fp")], at).await,
        [EventOutcome::Folded { event_id: x }]
    );
    // Past it: a new row, which later occurrences fold into.
    let at = at + Span::seconds(601);
    let y = accepted(run(vec![ev("d", "fp"), ev("e", "fp")], at).await[0]);
    assert_ne!(x, y);
    assert_eq!(get(h, &scope, y).await.count, 2);
    assert_eq!(
        run(vec![ev("f", "fp")], at + Span::seconds(1)).await,
        [EventOutcome::Folded { event_id: y }]
    );
    assert_eq!(get(h, &scope, x).await.count, 3);
    assert_eq!(get(h, &scope, y).await.count, 3);
    // The resend of a delivery folded into the old row still names it.
    assert_eq!(
        run(vec![ev("b", "fp")], at + Span::seconds(2)).await,
        [EventOutcome::Duplicate { event_id: x }]
    );
    // A zero window folds nothing across batches (but within one it does).
    let out = try_ingest(
        h,
        &scope,
        Some(c.id),
        &[ev("g", "fp"), ev("h", "fp")],
        Duration::ZERO,
        at + Span::seconds(3),
    )
    .await
    .unwrap();
    let z = accepted(out[0]);
    assert_eq!(out[1], EventOutcome::Folded { event_id: z });
    // A huge window is not an error.
    let out = try_ingest(
        h,
        &scope,
        Some(c.id),
        &[ev("i", "fp")],
        Duration::MAX,
        at + Span::seconds(4),
    )
    .await
    .unwrap();
    assert_eq!(out, [EventOutcome::Folded { event_id: z }]);
    // A `now` earlier than the row's last_seen_at (a replica's clock
    // behind) never moves last_seen_at back.
    let before = get(h, &scope, z).await.last_seen_at;
    run(vec![ev("j", "fp")], at).await;
    assert_eq!(get(h, &scope, z).await.last_seen_at, before);
}

async fn ingest_origins_are_separate(h: &Harness) {
    let (t, scope, c1) = setup(h, "acme").await;
    let c2 = add_cluster(h, &scope, "acme-c2").await;
    let now = t0();
    // The same delivery id and fingerprint from four origins: four events.
    let a = accepted(ingest(h, &scope, Some(c1.id), &[ev("1", "fp")], now).await[0]);
    let b = accepted(ingest(h, &scope, Some(c2.id), &[ev("1", "fp")], now).await[0]);
    let w1 = accepted(ingest(h, &scope, None, &[hook("1", "fp", "github")], now).await[0]);
    let w2 = accepted(ingest(h, &scope, None, &[hook("1", "fp", "gitlab")], now).await[0]);
    assert_eq!(
        [a, b, w1, w2].iter().collect::<HashSet<_>>().len(),
        4,
        "distinct events"
    );
    let e = get(h, &scope, w1).await;
    assert_eq!(e.cluster_id, None);
    assert_eq!(e.source, "webhook");
    assert_eq!(e.source_name.as_deref(), Some("github"));
    assert_eq!(e.category, "compliance");
    // A webhook source attached to a cluster keeps its own origin.
    let out = ingest(h, &scope, Some(c1.id), &[hook("1", "fp", "github")], now).await;
    assert_eq!(out, [EventOutcome::Duplicate { event_id: w1 }]);
    let out = ingest(h, &scope, Some(c1.id), &[hook("2", "fp", "github")], now).await;
    assert_eq!(out, [EventOutcome::Folded { event_id: w1 }]);
    // One batch can span origins (webhook sources by name).
    let out = ingest(
        h,
        &scope,
        None,
        &[hook("3", "fp", "github"), hook("3", "fp", "gitlab")],
        now,
    )
    .await;
    assert_eq!(
        out,
        [
            EventOutcome::Folded { event_id: w1 },
            EventOutcome::Folded { event_id: w2 }
        ]
    );
    assert_eq!(get(h, &scope, w1).await.count, 3);
    assert_eq!(count_rows(h, "events", t.id).await, 4);
}

async fn ingest_validates_and_stores_nothing_on_error(h: &Harness) {
    let (t, scope, c) = setup(h, "acme").await;
    let (_, _, other) = setup(h, "other").await;
    let now = t0();
    let good = ev("ok", "fp");
    let cases: Vec<(&str, NewEvent)> = vec![
        (
            "source_event_id",
            NewEvent {
                source_event_id: String::new(),
                ..good.clone()
            },
        ),
        (
            "source_event_id",
            NewEvent {
                source_event_id: "x".repeat(257),
                ..good.clone()
            },
        ),
        (
            "source_event_id",
            NewEvent {
                source_event_id: "a\0b".into(),
                ..good.clone()
            },
        ),
        (
            "source",
            NewEvent {
                source: "nessus".into(),
                ..good.clone()
            },
        ),
        (
            "category",
            NewEvent {
                category: "runtime".into(),
                ..good.clone()
            },
        ),
        (
            "severity",
            NewEvent {
                severity: 0,
                ..good.clone()
            },
        ),
        (
            "severity",
            NewEvent {
                severity: 6,
                ..good.clone()
            },
        ),
        (
            "event_type",
            NewEvent {
                event_type: String::new(),
                ..good.clone()
            },
        ),
        (
            "event_type",
            NewEvent {
                event_type: "t".repeat(1025),
                ..good.clone()
            },
        ),
        (
            "title",
            NewEvent {
                title: "é".repeat(1025),
                ..good.clone()
            },
        ),
        (
            "fingerprint",
            NewEvent {
                fingerprint: String::new(),
                ..good.clone()
            },
        ),
        (
            "fingerprint",
            NewEvent {
                fingerprint: "f".repeat(257),
                ..good.clone()
            },
        ),
        (
            "source_name",
            NewEvent {
                source_name: Some("n".repeat(257)),
                ..good.clone()
            },
        ),
        (
            "details",
            NewEvent {
                details: json!({"blob": "x".repeat(256 * 1024)}),
                ..good.clone()
            },
        ),
        (
            "details",
            NewEvent {
                details: json!(["not", "an", "object"]),
                ..good.clone()
            },
        ),
        (
            "details",
            NewEvent {
                details: json!({"nul": "a\u{0}b"}),
                ..good.clone()
            },
        ),
        (
            "resource",
            NewEvent {
                resource: json!("pod/web-0"),
                ..good.clone()
            },
        ),
        (
            "detected_at",
            NewEvent {
                detected_at: Utc.with_ymd_and_hms(1969, 12, 31, 0, 0, 0).unwrap(),
                ..good.clone()
            },
        ),
    ];
    for (field, bad) in cases {
        // The bad event sits behind a good one: the whole batch is refused.
        let r = try_ingest(h, &scope, Some(c.id), &[good.clone(), bad], HOUR, now).await;
        assert_invalid(r, field);
    }
    // Limits are inclusive.
    let edge = NewEvent {
        source_event_id: "é".repeat(256),
        event_type: "t".repeat(1024),
        title: String::new(),
        fingerprint: "f".repeat(256),
        details: serde_json::Value::Null,
        resource: serde_json::Value::Null,
        ..good.clone()
    };
    let x = accepted(ingest(h, &scope, Some(c.id), &[edge], now).await[0]);
    let e = get(h, &scope, x).await;
    assert_eq!((e.details, e.resource), (json!({}), json!({})));

    // A webhook event needs its source name; so does an event without a cluster.
    let r = try_ingest(
        h,
        &scope,
        None,
        &[NewEvent {
            source_name: None,
            ..hook("w", "fp", "s")
        }],
        HOUR,
        now,
    )
    .await;
    assert_invalid(r, "source_name");
    let r = try_ingest(
        h,
        &scope,
        None,
        &[NewEvent {
            source_name: None,
            ..good.clone()
        }],
        HOUR,
        now,
    )
    .await;
    assert_invalid(r, "source_name");
    // Too many, a bad `now`, no tenant scope.
    let big = NewEvent {
        details: json!({"blob": "x".repeat(255 * 1024)}),
        ..good.clone()
    };
    let heavy: Vec<NewEvent> = (0..260)
        .map(|i| NewEvent {
            source_event_id: format!("heavy-{i}"),
            ..big.clone()
        })
        .collect();
    assert_invalid(
        try_ingest(h, &scope, Some(c.id), &heavy, HOUR, now).await,
        "events",
    );
    let many = vec![good.clone(); MAX_INGEST_BATCH + 1];
    assert_invalid(
        try_ingest(h, &scope, Some(c.id), &many, HOUR, now).await,
        "events",
    );
    let r = try_ingest(
        h,
        &scope,
        Some(c.id),
        std::slice::from_ref(&good),
        HOUR,
        Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
    )
    .await;
    assert_invalid(r, "now");
    let mut tx = h.tx(&Scope::anonymous()).await;
    let err = tx
        .events()
        .ingest(Some(c.id), std::slice::from_ref(&good), HOUR, now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid { field: "scope", .. }),
        "{err:?}"
    );
    drop(tx);
    // Unknown cluster, or another tenant's: NotFound.
    for cluster in [Uuid::now_v7(), other.id] {
        let r = try_ingest(
            h,
            &scope,
            Some(cluster),
            std::slice::from_ref(&good),
            HOUR,
            now,
        )
        .await;
        assert!(
            matches!(r, Err(StoreError::NotFound { what: "cluster" })),
            "{r:?}"
        );
    }
    // Only the edge event was stored, with one receipt.
    assert_eq!(count_rows(h, "events", t.id).await, 1);
    assert_eq!(count_rows(h, "event_receipts", t.id).await, 1);
}

// ------------------------------------------------------------------ reading

async fn list_filters_and_pages(h: &Harness) {
    let (t, scope, c1) = setup(h, "acme").await;
    let c2 = add_cluster(h, &scope, "acme-c2").await;
    let sources = ["trivy", "kyverno", "falco", "kube-bench", "audit", "custom"];
    let categories = [
        "security",
        "compliance",
        "operations",
        "performance",
        "cost",
    ];
    // 5 batches at different receive times, 3 origins, 90 events, some
    // sharing a receive time (the id breaks the tie).
    let mut n = 0;
    for b in 0..5i64 {
        let now = t0() + Span::minutes(b);
        for (cluster, origin) in [(Some(c1.id), "c1"), (Some(c2.id), "c2"), (None, "hook")] {
            let batch: Vec<NewEvent> = (0..6)
                .map(|i| {
                    n += 1;
                    let e = NewEvent {
                        source: sources[n % 6].into(),
                        category: categories[n % 5].into(),
                        severity: (n % 5 + 1) as i16,
                        ..ev(&format!("{origin}-{b}-{i}"), &format!("fp-{b}-{i}"))
                    };
                    if cluster.is_none() {
                        hook(&e.source_event_id, &e.fingerprint, "src")
                    } else {
                        e
                    }
                })
                .collect();
            ingest(h, &scope, cluster, &batch, now).await;
        }
    }
    let all = tail(h, &scope, 0, 1000).await;
    assert_eq!(all.len(), 90);

    let filters = vec![
        EventFilter::default(),
        EventFilter {
            cluster_id: Some(c2.id),
            ..Default::default()
        },
        EventFilter {
            source: Some("webhook".into()),
            ..Default::default()
        },
        EventFilter {
            source: Some("trivy".into()),
            category: Some("cost".into()),
            ..Default::default()
        },
        EventFilter {
            min_severity: Some(4),
            cluster_id: Some(c1.id),
            ..Default::default()
        },
        EventFilter {
            since: Some(t0() + Span::minutes(1)),
            until: Some(t0() + Span::minutes(3)),
            ..Default::default()
        },
    ];
    for filter in filters {
        let mut want: Vec<&Event> = all
            .iter()
            .filter(|e| {
                filter.cluster_id.is_none_or(|c| e.cluster_id == Some(c))
                    && filter.source.as_ref().is_none_or(|s| &e.source == s)
                    && filter.category.as_ref().is_none_or(|c| &e.category == c)
                    && filter.min_severity.is_none_or(|s| e.severity >= s)
                    && filter.since.is_none_or(|s| e.received_at >= s)
                    && filter.until.is_none_or(|u| e.received_at < u)
            })
            .collect();
        want.sort_by_key(|e| std::cmp::Reverse((e.received_at, e.id)));
        let want: Vec<Uuid> = want.iter().map(|e| e.id).collect();
        assert!(!want.is_empty(), "{filter:?} selects something");
        let mut got = Vec::new();
        let mut page = PageRequest::first(7);
        loop {
            let mut tx = h.store.begin_read(&scope).await.unwrap();
            let p = tx.events().list(&filter, &page).await.unwrap();
            assert!(p.items.len() <= 7);
            got.extend(p.items.iter().map(|e| e.id));
            match p.next_page_token {
                Some(tok) => page = PageRequest::next(7, tok),
                None => break,
            }
        }
        assert_eq!(got, want, "{filter:?}");
    }

    // Events arriving between pages do not disturb the pages that follow.
    let mut tx = h.store.begin_read(&scope).await.unwrap();
    let first = tx
        .events()
        .list(&EventFilter::default(), &PageRequest::first(40))
        .await
        .unwrap();
    drop(tx);
    ingest(
        h,
        &scope,
        Some(c1.id),
        &[ev("late", "fp-late")],
        t0() + Span::minutes(10),
    )
    .await;
    let mut tx = h.store.begin_read(&scope).await.unwrap();
    let second = tx
        .events()
        .list(
            &EventFilter::default(),
            &PageRequest::next(100, first.next_page_token.unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(first.items.len() + second.items.len(), 90);
    let ids: HashSet<Uuid> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 90);
    // Bad filters and tokens.
    for (filter, field) in [
        (
            EventFilter {
                source: Some("nessus".into()),
                ..Default::default()
            },
            "source",
        ),
        (
            EventFilter {
                category: Some("x".into()),
                ..Default::default()
            },
            "category",
        ),
        (
            EventFilter {
                min_severity: Some(9),
                ..Default::default()
            },
            "min_severity",
        ),
    ] {
        let err = tx
            .events()
            .list(&filter, &PageRequest::first(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid { field: f, .. } if *f == field),
            "{err:?}"
        );
    }
    let err = tx
        .events()
        .list(&EventFilter::default(), &PageRequest::next(10, "zz"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
    assert_eq!(count_rows(h, "events", t.id).await, 91);
}

async fn tail_follows_inserts_and_folds(h: &Harness) {
    let (_, scope, c) = setup(h, "acme").await;
    let mut tx = h.store.begin_read(&scope).await.unwrap();
    assert_eq!(tx.events().last_seq().await.unwrap(), 0);
    assert!(tx.events().tail(0, 10).await.unwrap().is_empty());
    drop(tx);

    let now = t0();
    let batch: Vec<NewEvent> = (0..5)
        .map(|i| ev(&format!("e{i}"), &format!("fp{i}")))
        .collect();
    let ids: Vec<Uuid> = ingest(h, &scope, Some(c.id), &batch, now)
        .await
        .into_iter()
        .map(accepted)
        .collect();
    let all = tail(h, &scope, 0, 100).await;
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let mut tx = h.store.begin_read(&scope).await.unwrap();
    let last = tx.events().last_seq().await.unwrap();
    drop(tx);
    assert_eq!(last, all[4].seq);
    // after_seq and limit.
    let part = tail(h, &scope, all[1].seq, 2).await;
    assert_eq!(part.iter().map(|e| e.id).collect::<Vec<_>>(), &ids[2..4]);
    assert!(tail(h, &scope, last, 10).await.is_empty());
    assert_eq!(tail(h, &scope, -5, 1).await.len(), 1);

    // A fold moves the event to the end of the tail, with its new count;
    // a batch of duplicates adds nothing.
    ingest(h, &scope, Some(c.id), &[ev("x", "fp1")], now).await;
    ingest(
        h,
        &scope,
        Some(c.id),
        &[ev("x", "fp1"), ev("e3", "fp3")],
        now,
    )
    .await;
    let after = tail(h, &scope, last, 10).await;
    assert_eq!(after.len(), 1);
    assert_eq!((after[0].id, after[0].count), (ids[1], 2));
    assert!(after[0].seq > last);
    let all = tail(h, &scope, 0, 100).await;
    assert_eq!(all.len(), 5, "each event once, at its latest seq");
    assert_eq!(all[4].id, ids[1]);
    let mut tx = h.store.begin_read(&scope).await.unwrap();
    assert_eq!(tx.events().last_seq().await.unwrap(), after[0].seq);
    // Limits: at least 1, at most MAX_TAIL_LIMIT.
    assert!(matches!(
        tx.events().tail(0, 0).await.unwrap_err(),
        StoreError::Invalid { field: "limit", .. }
    ));
    assert_eq!(tx.events().tail(0, i64::MAX).await.unwrap().len(), 5);
}

// ------------------------------------------------------------------ isolation

async fn tenants_never_see_each_others_events(h: &Harness) {
    let (a, sa, ca) = setup(h, "tenant-a").await;
    let (b, sb, cb) = setup(h, "tenant-b").await;
    let now = t0();
    let ea = accepted(ingest(h, &sa, Some(ca.id), &[ev("1", "fp")], now).await[0]);
    // Same ids, fingerprints and webhook source names in B: independent.
    let eb = accepted(ingest(h, &sb, Some(cb.id), &[ev("1", "fp")], now).await[0]);
    let wa = accepted(ingest(h, &sa, None, &[hook("1", "fp", "s")], now).await[0]);
    let wb = accepted(ingest(h, &sb, None, &[hook("1", "fp", "s")], now).await[0]);
    ingest(h, &sb, None, &[hook("2", "fp", "s")], now).await;

    let mut tx = h.store.begin_read(&sa).await.unwrap();
    for id in [eb, wb] {
        assert!(matches!(
            tx.events().get(id).await.unwrap_err(),
            StoreError::NotFound { what: "event" }
        ));
    }
    let listed = tx
        .events()
        .list(&EventFilter::default(), &PageRequest::first(100))
        .await
        .unwrap();
    assert_eq!(
        listed.items.iter().map(|e| e.id).collect::<HashSet<_>>(),
        HashSet::from([ea, wa])
    );
    assert!(listed.items.iter().all(|e| e.tenant_id == a.id));
    let tailed = tx.events().tail(0, 100).await.unwrap();
    assert_eq!(tailed.len(), 2);
    assert!(tailed.iter().all(|e| e.tenant_id == a.id));
    // Another tenant's cluster in a filter: nothing.
    let none = tx
        .events()
        .list(
            &EventFilter {
                cluster_id: Some(cb.id),
                ..Default::default()
            },
            &PageRequest::first(10),
        )
        .await
        .unwrap();
    assert!(none.items.is_empty());
    drop(tx);
    // Each tenant has its own sequence.
    let mut tx = h.store.begin_read(&sb).await.unwrap();
    assert_eq!(get(h, &sb, wb).await.count, 2);
    assert_eq!(tx.events().tail(0, 100).await.unwrap().len(), 2);
    assert!(tx.events().last_seq().await.unwrap() >= 2);
    drop(tx);
    assert_eq!(count_rows(h, "events", a.id).await, 2);
    assert_eq!(count_rows(h, "events", b.id).await, 2);
}

async fn remediations_reference_events_of_their_own_tenant(h: &Harness) {
    let (a, sa, ca) = setup(h, "tenant-a").await;
    let (_, sb, cb) = setup(h, "tenant-b").await;
    let now = t0();
    let ev_a = accepted(ingest(h, &sa, Some(ca.id), &[ev("1", "fp")], now).await[0]);
    let ev_b = accepted(ingest(h, &sb, Some(cb.id), &[ev("1", "fp")], now).await[0]);
    let remediate = |event: Uuid| {
        format!(
            "INSERT INTO remediations (id, tenant_id, cluster_id, event_id, status, created_at) \
             VALUES ('{}', '{}', '{}', '{event}', 'proposed', '2026-01-01T00:00:00.000000Z')",
            Uuid::now_v7(),
            a.id,
            ca.id
        )
    };
    h.raw(&remediate(ev_a))
        .await
        .expect("same-tenant remediation");
    // Even behind the application's back, the database refuses tenant A's
    // remediation for tenant B's event.
    let err = h.raw(&remediate(ev_b)).await.unwrap_err();
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
    assert_eq!(count_rows(h, "remediations", a.id).await, 1);
}

// ------------------------------------------------------------------ concurrency

/// Agents resending overlapping batches concurrently, and a watcher
/// following the tail meanwhile: every delivery counted exactly once, one
/// row per fingerprint, and the watcher ends up with every event at its
/// final count (seqs become visible in order, so it never skips one).
async fn concurrent_ingest_counts_once_and_tail_misses_nothing(h: &Harness) {
    let (t, scope, c) = setup(h, "acme").await;
    let now = t0();
    let writers = 4;
    let rounds = 6;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    let watcher = {
        let (store, scope, done) = (h.store.clone(), scope.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen: HashMap<Uuid, (i64, i64)> = HashMap::new();
            let mut after = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let mut tx = store.begin_read(&scope).await.unwrap();
                let batch = tx.events().tail(after, 50).await.unwrap();
                drop(tx);
                for e in &batch {
                    assert!(e.seq > after);
                    after = e.seq;
                    seen.insert(e.id, (e.seq, e.count));
                }
                if batch.is_empty() {
                    if finished {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };

    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, scope) = (h.store.clone(), scope.clone());
        tasks.push(tokio::spawn(async move {
            for r in 0..rounds {
                // Each writer sends deliveries r*10..r*10+20 (overlapping
                // its previous round and the other writers'), spread over
                // 7 fingerprints.
                let batch: Vec<NewEvent> = (r * 10..r * 10 + 20)
                    .map(|i| ev(&format!("d{i}"), &format!("fp{}", (i + w) % 7)))
                    .collect();
                loop {
                    let mut tx = store.begin(&scope).await.unwrap();
                    let res = tx.events().ingest(Some(c.id), &batch, HOUR, now).await;
                    let res = match res {
                        Ok(o) => tx.commit().await.map(|_| o),
                        Err(e) => Err(e),
                    };
                    match res {
                        Ok(o) => {
                            assert_eq!(o.len(), batch.len());
                            break;
                        }
                        Err(e) if e.is_retryable() => continue,
                        Err(e) => panic!("ingest: {e:?}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = watcher.await.unwrap();

    let deliveries = (rounds - 1) * 10 + 20;
    let all = tail(h, &scope, 0, 1000).await;
    let total: i64 = all.iter().map(|e| e.count).sum();
    assert_eq!(total, deliveries as i64, "each delivery counted once");
    assert_eq!(
        count_rows(h, "event_receipts", t.id).await,
        deliveries as i64
    );
    let fps: HashSet<&str> = all.iter().map(|e| e.fingerprint.as_str()).collect();
    assert_eq!(fps.len(), all.len(), "one row per fingerprint");
    let last: BTreeMap<Uuid, (i64, i64)> = all.iter().map(|e| (e.id, (e.seq, e.count))).collect();
    let seen: BTreeMap<Uuid, (i64, i64)> = seen.into_iter().collect();
    assert_eq!(seen, last, "the watcher saw every event at its final state");
}

// ------------------------------------------------------------------ rate

/// Not a pass/fail test: prints the ingest rate of this backend (run with
/// `--nocapture`, and `--release` for figures worth quoting). 20 batches of
/// 500 new events, one transaction each, then the same with every event
/// folding into an existing row, then 4 concurrent writers (one tenant
/// each).
async fn ingest_rate(h: &Harness) {
    const BATCHES: usize = 20;
    const SIZE: usize = 500;
    let (_, scope, c) = setup(h, "bench").await;
    let batch = |prefix: &'static str, b: usize, fold: bool| -> Vec<NewEvent> {
        (0..SIZE)
            .map(|i| {
                let fp = if fold {
                    format!("fp-{i}")
                } else {
                    format!("fp-{b}-{i}")
                };
                let mut e = ev(&format!("{prefix}-{b}-{i}"), &fp);
                e.details = json!({
                    "rule": "Terminal shell in container",
                    "output": format!("A shell was spawned in a container (user=root container={b}-{i} shell=bash parent=runc cmdline=bash -il)"),
                    "priority": "Warning",
                    "tags": ["container", "shell", "mitre_execution"],
                    "fields": {"container.id": format!("{i:012x}"), "proc.pid": i, "k8s.ns.name": "prod"}
                });
                e
            })
            .collect()
    };
    let run = |prefix: &'static str, fold: bool, scope: Scope, cluster: Uuid, store: Store| async move {
        let batches: Vec<Vec<NewEvent>> = (0..BATCHES).map(|b| batch(prefix, b, fold)).collect();
        let start = Instant::now();
        for (b, events) in batches.iter().enumerate() {
            let mut tx = store.begin(&scope).await.unwrap();
            let out = tx
                .events()
                .ingest(
                    Some(cluster),
                    events,
                    HOUR,
                    t0() + Span::milliseconds(b as i64),
                )
                .await
                .unwrap();
            tx.commit().await.unwrap();
            assert_eq!(out.len(), SIZE);
        }
        start.elapsed()
    };
    let kind = format!("{:?}", h.kind);
    // One un-timed batch first: the first statements of a fresh database
    // pay for catalog caches and plans.
    let mut tx = h.tx(&scope).await;
    tx.events()
        .ingest(Some(c.id), &batch("x", 999, false), HOUR, t0())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let new = run("n", false, scope.clone(), c.id, h.store.clone()).await;
    let n = (BATCHES * SIZE) as f64;
    println!(
        "RATE {kind}: {BATCHES} x {SIZE} new events in {:.3}s = {:.0} events/s",
        new.as_secs_f64(),
        n / new.as_secs_f64()
    );
    // Rows fp-0..fp-499 exist after this warm-up run; then every event folds.
    run("w", true, scope.clone(), c.id, h.store.clone()).await;
    let folded = run("f", true, scope.clone(), c.id, h.store.clone()).await;
    println!(
        "RATE {kind}: {BATCHES} x {SIZE} folding events in {:.3}s = {:.0} events/s",
        folded.as_secs_f64(),
        n / folded.as_secs_f64()
    );
    let mut tenants = Vec::new();
    for w in 0..4 {
        let (_, s, c) = setup(h, &format!("bench-{w}")).await;
        tenants.push((s, c.id));
    }
    let start = Instant::now();
    let tasks: Vec<_> = tenants
        .into_iter()
        .map(|(s, c)| tokio::spawn(run("p", false, s, c, h.store.clone())))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let par = start.elapsed();
    println!(
        "RATE {kind}: 4 writers x {BATCHES} x {SIZE} new events in {:.3}s = {:.0} events/s",
        par.as_secs_f64(),
        4.0 * n / par.as_secs_f64()
    );
}

conformance!(
    ingest_accepts_folds_and_dedups_within_a_batch,
    ingest_is_idempotent_across_batches,
    ingest_fold_window_expires,
    ingest_origins_are_separate,
    ingest_validates_and_stores_nothing_on_error,
    list_filters_and_pages,
    tail_follows_inserts_and_folds,
    tenants_never_see_each_others_events,
    remediations_reference_events_of_their_own_tenant,
    concurrent_ingest_counts_once_and_tail_misses_nothing,
    ingest_rate,
);
