//! Retention: the janitor's bounded deletes and its lease (see docs/RETENTION.md).
//!
//! Every delete removes at most `limit` rows, oldest first, in one short statement (plus the
//! children of what it removes), so a run holds no long lock and concurrent ingest only waits
//! for one small statement at a time.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::SqlTx;
use crate::db::{args, micros, Sql};
use crate::error::Result;
use crate::repo::JanitorRepo;

/// Remediation statuses that may be pruned (those `zen::remediation::state::is_terminal` names).
const FINISHED: &str = "('succeeded', 'failed', 'rolled_back', 'rejected', 'cancelled', 'expired')";

/// The tables a finished remediation's rows live in besides `remediations`.
const REMEDIATION_CHILDREN: [&str; 4] = [
    "remediation_approvals",
    "remediation_dispatches",
    "verification_runs",
    "dead_letters",
];

impl SqlTx {
    /// `DELETE FROM <table> WHERE tenant_id = <t> AND <column> IN (<values>)`.
    async fn delete_in(
        &mut self,
        table: &str,
        column: &str,
        values: Vec<crate::db::Arg>,
    ) -> Result<u64> {
        if values.is_empty() {
            return Ok(0);
        }
        let tenant = self.tenant()?;
        let mut sql = Sql::new(&format!("DELETE FROM {table} WHERE tenant_id = "));
        sql.bind(tenant).push(&format!(" AND {column} IN ("));
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(value);
        }
        sql.push(")");
        self.conn.execute(sql.text, sql.args).await
    }
}

#[async_trait]
impl JanitorRepo for SqlTx {
    async fn prune_events(&mut self, before: DateTime<Utc>, limit: i64) -> Result<u64> {
        let tenant = self.tenant()?;
        // An event a remediation still names stays until the remediation goes.
        let rows = self
            .conn
            .fetch_all(
                "DELETE FROM events WHERE tenant_id = $1 AND id IN ( \
                 SELECT e.id FROM events e WHERE e.tenant_id = $1 AND e.received_at < $2 \
                 AND NOT EXISTS (SELECT 1 FROM remediations r \
                 WHERE r.tenant_id = e.tenant_id AND r.event_id = e.id) \
                 ORDER BY e.received_at LIMIT $3) RETURNING seq",
                args![tenant, micros(before), limit],
            )
            .await?;
        let seqs = rows
            .iter()
            .map(|r| r.get::<i64>("seq").map(Into::into))
            .collect::<Result<Vec<_>>>()?;
        let deleted = seqs.len() as u64;
        // The events' current change rows go with them (their superseded ones are swept by
        // `prune_changes`).
        self.delete_in("event_changes", "seq", seqs).await?;
        Ok(deleted)
    }

    async fn prune_changes(&mut self, after_seq: i64, through_seq: i64) -> Result<u64> {
        let tenant = self.tenant()?;
        // A change row whose seq is no longer its event's (the event changed again, or is
        // gone) is skipped by every reader: the newer change carries the event.
        self.conn
            .execute(
                "DELETE FROM event_changes WHERE tenant_id = $1 AND seq > $2 AND seq <= $3 \
                 AND NOT EXISTS (SELECT 1 FROM events e WHERE e.tenant_id = event_changes.tenant_id \
                 AND e.id = event_changes.event_id AND e.seq = event_changes.seq)",
                args![tenant, after_seq, through_seq],
            )
            .await
    }

    async fn last_change_seq(&mut self) -> Result<i64> {
        let tenant = self.tenant()?;
        self.one(
            "SELECT COALESCE(MAX(seq), 0) AS n FROM event_changes WHERE tenant_id = $1",
            args![tenant],
            "tenant",
            |r| r.get("n"),
        )
        .await
    }

    async fn prune_receipts(&mut self, before: DateTime<Utc>, limit: i64) -> Result<u64> {
        let tenant = self.tenant()?;
        self.conn
            .execute(
                "DELETE FROM event_receipts WHERE tenant_id = $1 \
                 AND (origin, source_event_id) IN ( \
                 SELECT origin, source_event_id FROM event_receipts \
                 WHERE tenant_id = $1 AND received_at < $2 ORDER BY received_at LIMIT $3)",
                args![tenant, micros(before), limit],
            )
            .await
    }

    async fn prune_remediations(&mut self, before: DateTime<Utc>, limit: i64) -> Result<u64> {
        let tenant = self.tenant()?;
        let rows = self
            .conn
            .fetch_all(
                format!(
                    "SELECT id FROM remediations WHERE tenant_id = $1 AND status IN {FINISHED} \
                     AND COALESCE(updated_at, created_at) < $2 \
                     ORDER BY COALESCE(updated_at, created_at) LIMIT $3"
                ),
                args![tenant, micros(before), limit],
            )
            .await?;
        let ids = rows
            .iter()
            .map(|r| r.uuid("id").map(Into::into))
            .collect::<Result<Vec<_>>>()?;
        for child in REMEDIATION_CHILDREN {
            self.delete_in(child, "remediation_id", ids.clone()).await?;
        }
        self.delete_in("remediations", "id", ids).await
    }

    async fn prune_dead_letters(&mut self, before: DateTime<Utc>, limit: i64) -> Result<u64> {
        let tenant = self.tenant()?;
        self.conn
            .execute(
                "DELETE FROM dead_letters WHERE tenant_id = $1 AND id IN ( \
                 SELECT id FROM dead_letters WHERE tenant_id = $1 AND created_at < $2 \
                 ORDER BY created_at LIMIT $3)",
                args![tenant, micros(before), limit],
            )
            .await
    }

    async fn take_lease(
        &mut self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        last_run_before: DateTime<Utc>,
    ) -> Result<bool> {
        // Free (expired, or this holder's own) and due; the upsert is one atomic statement,
        // so of two replicas asking at once exactly one gets it.
        let row = self
            .conn
            .fetch_optional(
                "INSERT INTO janitor_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE (janitor_leases.holder = excluded.holder OR janitor_leases.expires_at < $4) \
                 AND (janitor_leases.last_run_at IS NULL OR janitor_leases.last_run_at < $5) \
                 RETURNING holder",
                args![
                    name,
                    holder,
                    micros(until),
                    micros(now),
                    micros(last_run_before)
                ],
            )
            .await?;
        Ok(row.is_some())
    }

    async fn finish_lease(&mut self, name: &str, holder: &str, now: DateTime<Utc>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE janitor_leases SET last_run_at = $3, expires_at = $3 \
                 WHERE name = $1 AND holder = $2",
                args![name, holder, micros(now)],
            )
            .await?;
        Ok(())
    }

    async fn last_run(&mut self, name: &str) -> Result<Option<DateTime<Utc>>> {
        let row = self
            .conn
            .fetch_optional(
                "SELECT last_run_at FROM janitor_leases WHERE name = $1",
                args![name],
            )
            .await?;
        match row {
            Some(r) => r.opt_ts("last_run_at"),
            None => Ok(None),
        }
    }
}
