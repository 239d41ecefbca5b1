//! The retention janitor (docs/RETENTION.md): deletes what each tenant's retention windows
//! (or the platform defaults) no longer keep, in bounded batches, on one replica at a time.
//!
//! Every replica runs the loop; a run starts only on the replica that takes the `retention`
//! lease in the store, and only when the last run (on any replica) finished more than one
//! interval ago. A replica killed mid-run leaves a lease that expires after [`LEASE_TTL`]; the
//! next replica to ask then takes over. Each batch is its own short transaction, so a run never
//! holds a lock that ingest would wait on for longer than one batch.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;
use zen_store::{PageRequest, Retention, Scope, Store, TenantFilter};

use crate::audit_archive::SigningKey;

/// The lease's name in `janitor_leases`.
pub const LEASE: &str = "retention";
/// How long a lease outlives its last renewal; a run renews it between batches.
pub const LEASE_TTL: Duration = Duration::from_secs(300);
/// How often the loop asks whether a run is due.
const POLL: Duration = Duration::from_secs(60);

/// The janitor's configuration.
#[derive(Clone, Debug)]
pub struct RetentionSettings {
    /// Time between the end of one run and the start of the next; zero turns the janitor off.
    pub interval: Duration,
    /// Rows per delete statement.
    pub batch_size: i64,
    /// Rest between batches, so concurrent writes get the database between them.
    pub pause: Duration,
    /// The windows of a tenant that sets none of its own.
    pub defaults: Retention,
    /// Audit records older than this many days are exported (signed) to `audit_archive_dir`
    /// and then deleted; 0 keeps the audit log whole.
    pub audit_days: i32,
    pub audit_archive_dir: Option<PathBuf>,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            interval: Duration::from_secs(3600),
            batch_size: 1000,
            pause: Duration::from_millis(10),
            defaults: Retention {
                events_days: 90,
                receipts_days: 30,
                remediations_days: 365,
                dead_letters_days: 90,
            },
            audit_days: 0,
            audit_archive_dir: None,
        }
    }
}

/// What one run deleted, per table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub tenants: u64,
    pub events: u64,
    pub event_changes: u64,
    pub event_receipts: u64,
    pub remediations: u64,
    pub dead_letters: u64,
    pub audit_logs: u64,
}

impl RunReport {
    fn add(&mut self, table: Table, n: u64) {
        let slot = match table {
            Table::Events => &mut self.events,
            Table::EventChanges => &mut self.event_changes,
            Table::EventReceipts => &mut self.event_receipts,
            Table::Remediations => &mut self.remediations,
            Table::DeadLetters => &mut self.dead_letters,
            Table::AuditLogs => &mut self.audit_logs,
        };
        *slot += n;
        metrics::counter!("zen_retention_deleted_total", "table" => table.name()).increment(n);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Events,
    EventChanges,
    EventReceipts,
    Remediations,
    DeadLetters,
    AuditLogs,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::EventChanges => "event_changes",
            Table::EventReceipts => "event_receipts",
            Table::Remediations => "remediations",
            Table::DeadLetters => "dead_letters",
            Table::AuditLogs => "audit_logs",
        }
    }
}

/// How long one delete statement should hold the database. On SQLite a writer waits for the
/// janitor's statement to finish (one writer at a time), so this bounds what the janitor adds
/// to an ingest's latency.
const STATEMENT_BUDGET: Duration = Duration::from_millis(25);
/// The smallest batch the janitor shrinks to.
const MIN_BATCH: i64 = 50;

/// The next batch size: halved when the last statement took longer than
/// [`STATEMENT_BUDGET`], doubled (up to `max`) when it took less than half of it.
fn next_batch(limit: i64, took: Duration, max: i64) -> i64 {
    if took > STATEMENT_BUDGET {
        (limit / 2).max(MIN_BATCH.min(max))
    } else if took < STATEMENT_BUDGET / 2 {
        limit.saturating_mul(2).min(max)
    } else {
        limit
    }
}

/// The janitor of one replica.
pub struct Janitor {
    store: Store,
    settings: RetentionSettings,
    /// This replica's lease holder name.
    holder: String,
    audit_key: Option<Arc<SigningKey>>,
}

impl Janitor {
    pub fn new(
        store: Store,
        settings: RetentionSettings,
        audit_key: Option<Arc<SigningKey>>,
    ) -> Janitor {
        Janitor {
            store,
            settings,
            holder: format!("replica-{}", Uuid::now_v7()),
            audit_key,
        }
    }

    /// Runs forever (abort the task to stop it): a run whenever one is due and the lease is
    /// free.
    pub fn spawn(self) -> Option<tokio::task::JoinHandle<()>> {
        if self.settings.interval.is_zero() {
            tracing::info!("retention janitor disabled (ZEN_RETENTION_INTERVAL_SECS=0)");
            return None;
        }
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL.min(self.settings.interval));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(error) = self.run_if_due(Utc::now()).await {
                    tracing::warn!(error = %format!("{error:#}"), "retention run failed; retrying at the next interval");
                }
            }
        }))
    }

    /// One run when it is due and this replica gets the lease; `None` otherwise.
    pub async fn run_if_due(&self, now: DateTime<Utc>) -> anyhow::Result<Option<RunReport>> {
        let interval = chrono::Duration::from_std(self.settings.interval)?;
        if !self.lease(now, now - interval).await? {
            return Ok(None);
        }
        let started = Instant::now();
        let result = self.run(now).await;
        // Finished or failed, the next run waits an interval (a failing run does not hammer
        // the database every poll).
        let mut tx = self.store.begin(&Scope::platform_admin(None)).await?;
        // On the run's own clock (`now` is the wall clock except in tests).
        let finished = now + chrono::Duration::from_std(started.elapsed())?;
        tx.janitor()
            .finish_lease(LEASE, &self.holder, finished)
            .await?;
        tx.commit().await?;
        metrics::gauge!("zen_retention_last_run_timestamp_seconds")
            .set(finished.timestamp() as f64);
        metrics::gauge!("zen_retention_last_run_duration_seconds")
            .set(started.elapsed().as_secs_f64());
        let report = result?;
        tracing::info!(
            ?report,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "retention run finished"
        );
        Ok(Some(report))
    }

    /// Takes or renews the lease; false when another replica holds it (or no run is due).
    async fn lease(&self, now: DateTime<Utc>, due_before: DateTime<Utc>) -> anyhow::Result<bool> {
        let until = now + chrono::Duration::from_std(LEASE_TTL)?;
        let mut tx = self.store.begin(&Scope::platform_admin(None)).await?;
        let taken = tx
            .janitor()
            .take_lease(LEASE, &self.holder, now, until, due_before)
            .await?;
        tx.commit().await?;
        Ok(taken)
    }

    /// One run over every tenant, deleted ones included (their data expires too).
    pub async fn run(&self, now: DateTime<Utc>) -> anyhow::Result<RunReport> {
        let mut report = RunReport::default();
        let mut renewed = Instant::now();
        let mut page = PageRequest::first(200);
        loop {
            let tenants = {
                let mut tx = self.store.begin_read(&Scope::platform_admin(None)).await?;
                tx.tenants()
                    .list(
                        &TenantFilter {
                            include_deleted: true,
                            ..Default::default()
                        },
                        &page,
                    )
                    .await?
            };
            for tenant in &tenants.items {
                // Renew between tenants once a minute: a long run keeps its lease, and a run
                // whose lease was taken over (this replica stalled past LEASE_TTL) stops.
                if renewed.elapsed() > POLL {
                    anyhow::ensure!(
                        self.lease(Utc::now(), Utc::now() + chrono::Duration::days(36_500))
                            .await?,
                        "the retention lease was taken over by another replica"
                    );
                    renewed = Instant::now();
                }
                let windows = tenant.retention.or(self.settings.defaults);
                self.prune_tenant(tenant.id, windows, now, &mut report)
                    .await?;
                report.tenants += 1;
            }
            match tenants.next_page_token {
                Some(token) => page.page_token = Some(token),
                None => break,
            }
        }
        if let (Some(dir), Some(key), true) = (
            &self.settings.audit_archive_dir,
            &self.audit_key,
            self.settings.audit_days > 0,
        ) {
            self.archive_audit(dir, key, now, &mut report).await?;
        }
        Ok(report)
    }

    /// Deletes one tenant's expired rows, table by table, oldest first.
    async fn prune_tenant(
        &self,
        tenant: Uuid,
        windows: Retention,
        now: DateTime<Utc>,
        report: &mut RunReport,
    ) -> anyhow::Result<()> {
        let cutoff = |days: i32| now - chrono::Duration::days(days.into());
        // Remediations first: the events they named are free once they are gone.
        self.drain(
            tenant,
            Table::Remediations,
            cutoff(windows.remediations_days),
            report,
        )
        .await?;
        self.drain(tenant, Table::Events, cutoff(windows.events_days), report)
            .await?;
        self.drain(
            tenant,
            Table::EventReceipts,
            cutoff(windows.receipts_days),
            report,
        )
        .await?;
        self.drain(
            tenant,
            Table::DeadLetters,
            cutoff(windows.dead_letters_days),
            report,
        )
        .await?;
        // Superseded change rows, swept by seq range (each range one short statement).
        let scope = Scope::tenant(tenant, None);
        let last = {
            let mut tx = self.store.begin_read(&scope).await?;
            tx.janitor().last_change_seq().await?
        };
        let (mut from, mut span) = (0, self.settings.batch_size);
        while from < last {
            let started = Instant::now();
            let to = from.saturating_add(span).min(last);
            let mut tx = self.store.begin(&scope).await?;
            let n = tx.janitor().prune_changes(from, to).await?;
            tx.commit().await?;
            report.add(Table::EventChanges, n);
            from = to;
            span = next_batch(span, started.elapsed(), self.settings.batch_size);
            self.rest().await;
        }
        Ok(())
    }

    /// Repeats one bounded delete until a batch comes back short.
    async fn drain(
        &self,
        tenant: Uuid,
        table: Table,
        before: DateTime<Utc>,
        report: &mut RunReport,
    ) -> anyhow::Result<()> {
        let scope = Scope::tenant(tenant, None);
        let mut limit = self.settings.batch_size;
        loop {
            let started = Instant::now();
            let mut tx = self.store.begin(&scope).await?;
            let janitor = tx.janitor();
            let n = match table {
                Table::Events => janitor.prune_events(before, limit).await?,
                Table::EventReceipts => janitor.prune_receipts(before, limit).await?,
                Table::Remediations => janitor.prune_remediations(before, limit).await?,
                Table::DeadLetters => janitor.prune_dead_letters(before, limit).await?,
                Table::EventChanges | Table::AuditLogs => unreachable!("not drained by age"),
            };
            tx.commit().await?;
            report.add(table, n);
            if n < limit as u64 {
                return Ok(());
            }
            limit = next_batch(limit, started.elapsed(), self.settings.batch_size);
            self.rest().await;
        }
    }

    /// Exports each chain's records older than the audit window to signed segments, then
    /// deletes them (docs/RETENTION.md, "Audit log").
    async fn archive_audit(
        &self,
        dir: &std::path::Path,
        key: &SigningKey,
        now: DateTime<Utc>,
        report: &mut RunReport,
    ) -> anyhow::Result<()> {
        let before = now - chrono::Duration::days(self.settings.audit_days.into());
        let chains = {
            let mut tx = self.store.begin_read(&Scope::platform_admin(None)).await?;
            tx.audit().heads().await?
        };
        for head in chains {
            let exported = crate::audit_archive::export(
                &self.store,
                key,
                head.tenant_id,
                before,
                dir,
                Some(self.settings.batch_size),
            )
            .await?;
            if let Some(exported) = exported {
                tracing::info!(
                    tenant = %head.tenant_id,
                    file = %exported.path.display(),
                    through_seq = exported.summary.last_seq,
                    "audit segment exported"
                );
                report.add(Table::AuditLogs, exported.pruned);
            }
        }
        Ok(())
    }

    async fn rest(&self) {
        if !self.settings.pause.is_zero() {
            tokio::time::sleep(self.settings.pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_to_the_statement_budget_and_grow_back() {
        let slow = STATEMENT_BUDGET * 3;
        let fast = STATEMENT_BUDGET / 4;
        assert_eq!(next_batch(1000, slow, 1000), 500);
        assert_eq!(next_batch(60, slow, 1000), MIN_BATCH);
        assert_eq!(next_batch(MIN_BATCH, slow, 1000), MIN_BATCH);
        assert_eq!(
            next_batch(10, slow, 10),
            10,
            "never above the configured size"
        );
        assert_eq!(next_batch(500, fast, 1000), 1000);
        assert_eq!(next_batch(1000, fast, 1000), 1000);
        assert_eq!(next_batch(400, STATEMENT_BUDGET, 1000), 400);
    }
}
