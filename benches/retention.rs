//! What the retention janitor costs concurrent ingest (docs/BENCHMARKS.md, "Retention").
//!
//!   cargo bench --bench retention                       # 1,000,000 old events per backend
//!   ZEN_BENCH_RETENTION_EVENTS=200000 cargo bench --bench retention
//!   ZEN_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres  (the default)
//!
//! Per backend (SQLite in a temp dir; PostgreSQL on a scratch database when reachable): loads
//! N events received 100 days ago through the store's own ingest, then runs 4 agents each
//! ingesting a batch of 100 fresh events every 100 ms (4,000 events/s offered), first for 20 s
//! without a janitor, then while a janitor deletes the old events (the default settings:
//! batches of 1000, a 10 ms rest). It prints ingest
//! throughput and batch latency (p50, p99) of both runs, the janitor's delete rate, and the
//! ceiling from the same run: an empty transaction's latency (begin + commit, the database's
//! round trip with nothing to write). On PostgreSQL it then measures the alternative the
//! janitor does not use: dropping day partitions of a range-partitioned copy versus batched
//! deletes of the same rows.
//!
//! Run by `cargo test --all-targets` too (without `--bench`): then a smoke run of 2,000 events
//! on SQLite checks that the benchmark itself works.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;
use zen::retention::{Janitor, RetentionSettings};
use zen_store::{NewCluster, NewEvent, NewLocalUser, NewTenant, Retention, Scope, Store};

struct Plan {
    old_events: usize,
    writers: usize,
    batch: usize,
    /// Each writer sends one batch per `pace` (an agent's steady flow, not a flood: a flood
    /// would measure who wins SQLite's single write lock, not what the janitor costs).
    pace: Duration,
    /// How long the no-janitor run lasts; the janitor run lasts as long as the janitor.
    baseline: Duration,
    postgres: Option<String>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let plan = if bench {
        Plan {
            old_events: std::env::var("ZEN_BENCH_RETENTION_EVENTS")
                .ok()
                .map(|n| n.parse())
                .transpose()?
                .unwrap_or(1_000_000),
            writers: 4,
            batch: 100,
            pace: Duration::from_millis(100),
            baseline: Duration::from_secs(20),
            postgres: Some(
                std::env::var("ZEN_BENCH_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            ),
        }
    } else {
        Plan {
            old_events: 2_000,
            writers: 2,
            batch: 10,
            pace: Duration::from_millis(20),
            baseline: Duration::from_millis(300),
            postgres: None,
        }
    };
    let dir = tempfile::tempdir()?;
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    let mut rows = vec![measure("SQLite", &sqlite, &plan).await?];
    if let Some(admin) = &plan.postgres {
        let plan = &plan;
        match zen::bench::with_scratch_postgres(admin, |url| async move {
            let row = measure("PostgreSQL", &url, plan).await?;
            partitions_versus_deletes(&url, plan.old_events).await?;
            Ok(row)
        })
        .await
        {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("PostgreSQL skipped: {e:#}"),
        }
    }
    println!("\n| database | old events | ingest without janitor | ingest with janitor | p99 ratio | janitor | empty transaction p99 (ceiling) |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
    if !bench {
        let row = &rows[0];
        anyhow::ensure!(
            row.deleted as usize == plan.old_events,
            "the janitor deleted {} of {}",
            row.deleted,
            plan.old_events
        );
    }
    Ok(())
}

struct Row {
    database: &'static str,
    old_events: usize,
    without: Load,
    with: Load,
    deleted: u64,
    janitor: Duration,
    ceiling_p99: Duration,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "| {} | {} | {} | {} | {:.2}× | {} deleted in {:.1} s ({:.0}/s) | {:.1} ms |",
            self.database,
            self.old_events,
            self.without,
            self.with,
            self.with.p99.as_secs_f64() / self.without.p99.as_secs_f64().max(1e-9),
            self.deleted,
            self.janitor.as_secs_f64(),
            self.deleted as f64 / self.janitor.as_secs_f64().max(1e-9),
            self.ceiling_p99.as_secs_f64() * 1000.0
        )
    }
}

struct Load {
    events_per_second: f64,
    p50: Duration,
    p99: Duration,
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} events/s, p50 {:.1} ms, p99 {:.1} ms",
            self.events_per_second,
            self.p50.as_secs_f64() * 1000.0,
            self.p99.as_secs_f64() * 1000.0
        )
    }
}

fn event(tag: &str, i: usize, at: chrono::DateTime<Utc>) -> NewEvent {
    NewEvent {
        source_event_id: format!("{tag}-{i}"),
        source: "falco".into(),
        source_name: Some("falco-node-1".into()),
        category: "security".into(),
        severity: 3,
        event_type: "terminal-shell-in-container".into(),
        title: "Shell spawned in a container".into(),
        resource: json!({"api_version": "v1", "kind": "Pod", "namespace": "prod", "name": format!("web-{}", i % 500)}),
        details: json!({"proc": {"name": "bash", "pid": i, "cmdline": "bash -i"}, "user": "root"}),
        fingerprint: format!("{tag}-fp-{i}"),
        detected_at: at,
    }
}

async fn measure(database: &'static str, url: &str, plan: &Plan) -> anyhow::Result<Row> {
    let store = Store::connect(url).await?;
    store.migrate().await?;
    let (tenant, cluster) = setup(&store).await?;
    let scope = Scope::tenant(tenant, None);

    let old = Utc::now() - chrono::Duration::days(100);
    let started = Instant::now();
    for chunk in (0..plan.old_events).collect::<Vec<_>>().chunks(5_000) {
        let events: Vec<NewEvent> = chunk.iter().map(|&i| event("old", i, old)).collect();
        let mut tx = store.begin(&scope).await?;
        tx.events()
            .ingest(Some(cluster), &events, Duration::from_secs(60), old)
            .await?;
        tx.commit().await?;
    }
    eprintln!(
        "{database}: loaded {} old events in {:.1} s",
        plan.old_events,
        started.elapsed().as_secs_f64()
    );

    let ceiling_p99 = {
        let mut latencies = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            let tx = store.begin(&scope).await?;
            tx.commit().await?;
            latencies.push(t.elapsed());
        }
        percentile(&mut latencies, 0.99)
    };

    let stop = Arc::new(AtomicBool::new(false));
    let without = {
        let writers = writers(&store, scope.clone(), cluster, plan, "a", stop.clone());
        tokio::time::sleep(plan.baseline).await;
        stop.store(true, Ordering::SeqCst);
        collect(writers).await?
    };

    stop.store(false, Ordering::SeqCst);
    let janitor = Janitor::new(
        store.clone(),
        RetentionSettings {
            defaults: Retention {
                events_days: 30,
                receipts_days: 30,
                remediations_days: 365,
                dead_letters_days: 30,
            },
            ..Default::default()
        },
        None,
    );
    let writers_running = writers(&store, scope.clone(), cluster, plan, "b", stop.clone());
    let started = Instant::now();
    let report = janitor.run(Utc::now()).await?;
    let janitor_time = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let with = collect(writers_running).await?;
    store.close().await;
    Ok(Row {
        database,
        old_events: plan.old_events,
        without,
        with,
        deleted: report.events,
        janitor: janitor_time,
        ceiling_p99,
    })
}

async fn setup(store: &Store) -> anyhow::Result<(Uuid, Uuid)> {
    let mut tx = store.begin(&Scope::anonymous()).await?;
    let owner = tx
        .users()
        .create_local(NewLocalUser {
            username: "bench-owner".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            ..Default::default()
        })
        .await?;
    tx.commit().await?;
    let mut tx = store.begin(&Scope::user(owner.id)).await?;
    let tenant = tx
        .tenants()
        .create(
            NewTenant {
                name: "bench".into(),
                ..Default::default()
            },
            Some(owner.id),
        )
        .await?;
    let cluster = tx
        .clusters()
        .create(NewCluster {
            name: "bench-c1".into(),
            ..Default::default()
        })
        .await?;
    tx.commit().await?;
    Ok((tenant.id, cluster.id))
}

type Writers = Vec<tokio::task::JoinHandle<anyhow::Result<(usize, Vec<Duration>, Duration)>>>;

/// `plan.writers` agents, each ingesting batches of fresh events until `stop`.
fn writers(
    store: &Store,
    scope: Scope,
    cluster: Uuid,
    plan: &Plan,
    run: &str,
    stop: Arc<AtomicBool>,
) -> Writers {
    (0..plan.writers)
        .map(|w| {
            let (store, scope, stop, batch, pace) = (
                store.clone(),
                scope.clone(),
                stop.clone(),
                plan.batch,
                plan.pace,
            );
            let tag = format!("{run}{w}");
            tokio::spawn(async move {
                let started = Instant::now();
                let (mut sent, mut latencies) = (0, Vec::new());
                let mut tick = tokio::time::interval(pace);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                while !stop.load(Ordering::SeqCst) {
                    // Latency counts from when the batch was due, not when it was sent, so a
                    // stall delays the batches behind it in the figures too.
                    let due = tick.tick().await;
                    let now = Utc::now();
                    let events: Vec<NewEvent> =
                        (sent..sent + batch).map(|i| event(&tag, i, now)).collect();
                    let mut tx = store.begin(&scope).await?;
                    tx.events()
                        .ingest(Some(cluster), &events, Duration::from_secs(60), now)
                        .await
                        .context("ingest")?;
                    tx.commit().await?;
                    latencies.push(due.elapsed());
                    sent += batch;
                }
                Ok((sent, latencies, started.elapsed()))
            })
        })
        .collect()
}

async fn collect(writers: Writers) -> anyhow::Result<Load> {
    let (mut events, mut latencies, mut elapsed) = (0, Vec::new(), Duration::ZERO);
    for w in writers {
        let (sent, mut l, took) = w.await??;
        events += sent;
        latencies.append(&mut l);
        elapsed = elapsed.max(took);
    }
    Ok(Load {
        events_per_second: events as f64 / elapsed.as_secs_f64().max(1e-9),
        p50: percentile(&mut latencies, 0.50),
        p99: percentile(&mut latencies, 0.99),
    })
}

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// PostgreSQL only: the same number of rows removed by dropping day partitions of a
/// range-partitioned table, and by the janitor's kind of batched delete on a plain one.
async fn partitions_versus_deletes(url: &str, rows: usize) -> anyhow::Result<()> {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let days = 10;
    conn.execute(
        "CREATE TABLE p_events (tenant_id uuid NOT NULL, id uuid NOT NULL, received_at \
         timestamptz NOT NULL, body jsonb NOT NULL) PARTITION BY RANGE (received_at)",
    )
    .await?;
    for d in 0..days {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE p_events_{d} PARTITION OF p_events FOR VALUES FROM \
             ('2026-01-01'::timestamptz + interval '{d} days') TO \
             ('2026-01-01'::timestamptz + interval '{} days')",
            d + 1
        )))
        .await?;
    }
    conn.execute(
        "CREATE TABLE plain_events (tenant_id uuid NOT NULL, id uuid NOT NULL, received_at \
         timestamptz NOT NULL, body jsonb NOT NULL)",
    )
    .await?;
    conn.execute("CREATE INDEX plain_events_received ON plain_events (tenant_id, received_at)")
        .await?;
    let fill = format!(
        "SELECT '00000000-0000-0000-0000-000000000001'::uuid, gen_random_uuid(), \
         '2026-01-01'::timestamptz + (i * interval '{} seconds'), \
         jsonb_build_object('i', i, 'proc', 'bash') FROM generate_series(0, {}) AS i",
        (days * 86_400) as f64 / rows as f64,
        rows - 1
    );
    conn.execute(sqlx::AssertSqlSafe(format!("INSERT INTO p_events {fill}")))
        .await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO plain_events {fill}"
    )))
    .await?;
    conn.execute("VACUUM ANALYZE plain_events").await?;
    // Half of the rows: the five oldest days.
    let t = Instant::now();
    for d in 0..days / 2 {
        conn.execute(sqlx::AssertSqlSafe(format!("DROP TABLE p_events_{d}")))
            .await?;
    }
    let dropped = t.elapsed();
    let t = Instant::now();
    let mut deleted = 0;
    loop {
        let done = conn
            .execute(
                "DELETE FROM plain_events WHERE ctid IN (SELECT ctid FROM plain_events WHERE \
                 tenant_id = '00000000-0000-0000-0000-000000000001' AND received_at < \
                 '2026-01-06' ORDER BY received_at LIMIT 1000)",
            )
            .await?
            .rows_affected();
        deleted += done;
        if done < 1000 {
            break;
        }
    }
    let batched = t.elapsed();
    println!(
        "\nPostgreSQL, {} of {rows} rows ({} days of {days}): DROP of {} day partitions {:.1} ms; \
         batched DELETE (1000 per statement) {:.1} s",
        deleted,
        days / 2,
        days / 2,
        dropped.as_secs_f64() * 1000.0,
        batched.as_secs_f64()
    );
    Ok(())
}
