//! [`RemediationRepo`] on both backends.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::SqlTx;
use crate::db::{args, micros, now, Row, Sql};
use crate::error::{precondition, Result, StoreError};
use crate::page::{Page, PageRequest};
use crate::remediation::*;
use crate::store::BackendKind;
use crate::validate;

macro_rules! remediation_cols {
    () => {
        "id, tenant_id, cluster_id, event_id, status, version, created_at, title, description, \
         action, rollback_action, probes, risk, status_reason, revision, required_approvals, \
         break_glass, break_glass_justification, proposed_by, updated_at, expires_at, \
         dispatched_at, completed_at, last_error, execution_id, attempts, executed, revised_by"
    };
}

macro_rules! dispatch_cols {
    () => {
        "execution_id, tenant_id, cluster_id, remediation_id, remediation_version, operation, \
         state, attempts, max_attempts, next_attempt_at, last_error, last_phase, created_at, \
         updated_at"
    };
}

macro_rules! dead_letter_cols {
    () => {
        "id, tenant_id, remediation_id, cluster_id, execution_id, operation, attempts, \
         last_error, created_at, replayed_at, replayed_by"
    };
}

fn remediation_from(r: &Row) -> Result<Remediation> {
    let created_at = r.ts("created_at")?;
    Ok(Remediation {
        id: r.uuid("id")?,
        tenant_id: r.uuid("tenant_id")?,
        cluster_id: r.uuid("cluster_id")?,
        event_id: r.opt_uuid("event_id")?,
        title: r.text("title")?,
        description: r.text("description")?,
        action: r.json("action")?,
        rollback_action: Some(r.json("rollback_action")?).filter(|v| !v.is_null()),
        probes: r.json("probes")?,
        risk: r.parse("risk")?,
        status: r.parse("status")?,
        status_reason: r.text("status_reason")?,
        version: r.get("version")?,
        revision: r.get("revision")?,
        required_approvals: r.get("required_approvals")?,
        break_glass: r.get("break_glass")?,
        break_glass_justification: r.text("break_glass_justification")?,
        proposed_by: r.text("proposed_by")?,
        revised_by: r.text("revised_by")?,
        created_at,
        updated_at: r.opt_ts("updated_at")?.unwrap_or(created_at),
        expires_at: r.opt_ts("expires_at")?,
        dispatched_at: r.opt_ts("dispatched_at")?,
        completed_at: r.opt_ts("completed_at")?,
        last_error: r.text("last_error")?,
        execution_id: r.opt_uuid("execution_id")?,
        attempts: r.get("attempts")?,
        executed: r.get("executed")?,
        approvals: Vec::new(),
    })
}

fn approval_from(r: &Row) -> Result<Approval> {
    Ok(Approval {
        approver_id: r.uuid("approver_id")?,
        approver_role: r.parse("approver_role")?,
        comment: r.text("comment")?,
        remediation_version: r.get("remediation_version")?,
        revision: r.get("revision")?,
        created_at: r.ts("created_at")?,
    })
}

fn dispatch_from(r: &Row) -> Result<Dispatch> {
    Ok(Dispatch {
        execution_id: r.uuid("execution_id")?,
        tenant_id: r.uuid("tenant_id")?,
        cluster_id: r.uuid("cluster_id")?,
        remediation_id: r.uuid("remediation_id")?,
        remediation_version: r.get("remediation_version")?,
        operation: r.parse("operation")?,
        state: r.parse("state")?,
        attempts: r.get("attempts")?,
        max_attempts: r.get("max_attempts")?,
        next_attempt_at: r.ts("next_attempt_at")?,
        last_error: r.text("last_error")?,
        last_phase: r.text("last_phase")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

fn run_from(r: &Row) -> Result<VerificationRun> {
    Ok(VerificationRun {
        id: r.uuid("id")?,
        remediation_id: r.uuid("remediation_id")?,
        remediation_version: r.get("remediation_version")?,
        execution_id: r.uuid("execution_id")?,
        result: r.parse("result")?,
        probes: r.json("probes")?,
        started_at: r.opt_ts("started_at")?,
        ended_at: r.opt_ts("ended_at")?,
        created_at: r.ts("created_at")?,
    })
}

fn dead_letter_from(r: &Row) -> Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.uuid("id")?,
        tenant_id: r.uuid("tenant_id")?,
        remediation_id: r.uuid("remediation_id")?,
        cluster_id: r.uuid("cluster_id")?,
        execution_id: r.uuid("execution_id")?,
        operation: r.parse("operation")?,
        attempts: r.get("attempts")?,
        last_error: r.text("last_error")?,
        created_at: r.ts("created_at")?,
        replayed_at: r.opt_ts("replayed_at")?,
        replayed_by: r.opt_text("replayed_by")?,
    })
}

fn policy_from(r: &Row) -> Result<ApprovalPolicy> {
    let windows = match r.json("approval_windows")? {
        Value::Null => Vec::new(),
        v => serde_json::from_value(v)
            .map_err(|e| StoreError::invalid("approval_windows", e.to_string()))?,
    };
    Ok(ApprovalPolicy {
        tenant_id: r.uuid("tenant_id")?,
        required_low: r.get("required_low")?,
        required_medium: r.get("required_medium")?,
        required_high: r.get("required_high")?,
        required_critical: r.get("required_critical")?,
        min_approver_role: r.parse("min_approver_role")?,
        allow_self_approval: r.get("allow_self_approval")?,
        approval_windows: windows,
        pending_expiry_seconds: r.get("pending_expiry_seconds")?,
        auto_rollback_on_failure: r.get("auto_rollback_on_failure")?,
        max_dispatch_attempts: r.get("max_dispatch_attempts")?,
        version: r.get("version")?,
        updated_at: r.opt_ts("updated_at")?,
        updated_by: r.text("updated_by")?,
    })
}

/// Actions, probes and reports are bounded like event details.
const MAX_JSON_BYTES: usize = 64 * 1024;

fn check_json(field: &'static str, value: &Value) -> Result<()> {
    if value.to_string().len() > MAX_JSON_BYTES {
        return Err(StoreError::invalid(
            field,
            format!("must be at most {MAX_JSON_BYTES} bytes as JSON"),
        ));
    }
    Ok(())
}

fn check_remediation_text(title: &str, description: &str) -> Result<()> {
    validate::text("title", title, 200, false)?;
    if description.chars().count() > 10_000 {
        return Err(StoreError::invalid(
            "description",
            "must be at most 10000 characters",
        ));
    }
    Ok(())
}

impl SqlTx {
    async fn load_approvals(&mut self, r: &mut Remediation) -> Result<()> {
        r.approvals = self
            .all(
                "SELECT approver_id, approver_role, comment, remediation_version, revision, \
                 created_at FROM remediation_approvals \
                 WHERE tenant_id = $1 AND remediation_id = $2 AND revision = $3 \
                 ORDER BY created_at, approver_id",
                args![r.tenant_id, r.id, r.revision],
                approval_from,
            )
            .await?;
        Ok(())
    }

    /// The scope's tenant's remediations whose latest change has a seq in
    /// `(after, upto]`, in seq order, at most `limit`, with their approvals:
    /// the remediation half of [`crate::EventRepo::changes`].
    pub(crate) async fn remediations_changed(
        &mut self,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Remediation)>> {
        let tenant = self.tenant()?;
        let rows = self
            .all(
                concat!(
                    "SELECT ",
                    remediation_cols!(),
                    ", seq FROM remediations WHERE tenant_id = $1 AND seq > $2 AND seq <= $3 \
                     ORDER BY seq LIMIT $4"
                ),
                args![tenant, after, upto, limit],
                |r| Ok((r.get::<i64>("seq")?, remediation_from(r)?)),
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, mut r) in rows {
            self.load_approvals(&mut r).await?;
            out.push((seq, r));
        }
        Ok(out)
    }

    async fn fetch_remediation(&mut self, id: Uuid, lock: bool) -> Result<Remediation> {
        let tenant = self.tenant()?;
        let sql = if lock {
            concat!(
                "SELECT ",
                remediation_cols!(),
                " FROM remediations WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
            )
        } else {
            concat!(
                "SELECT ",
                remediation_cols!(),
                " FROM remediations WHERE tenant_id = $1 AND id = $2"
            )
        };
        let mut r = self
            .one(sql, args![tenant, id], "remediation", remediation_from)
            .await?;
        self.load_approvals(&mut r).await?;
        Ok(r)
    }
}

#[async_trait]
impl RemediationRepo for SqlTx {
    async fn create(&mut self, new: NewRemediation) -> Result<Remediation> {
        let tenant = self.tenant()?;
        check_remediation_text(&new.title, &new.description)?;
        check_json("action", &new.action)?;
        if let Some(rollback) = &new.rollback_action {
            check_json("rollback_action", rollback)?;
        }
        check_json("probes", &new.probes)?;
        let at = now();
        let id = Uuid::now_v7();
        // Its place in the tenant's change sequence, for watchers (locks the
        // sequence head to the commit; the new row has no lock to wait for).
        let seq = self.next_change_seq(at).await?;
        let inserted = self
            .conn
            .execute(
                "INSERT INTO remediations (id, tenant_id, cluster_id, event_id, status, version, \
                 created_at, updated_at, title, description, action, rollback_action, probes, \
                 risk, required_approvals, proposed_by, expires_at, seq) \
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                 $16)",
                args![
                    id,
                    tenant,
                    new.cluster_id,
                    new.event_id,
                    new.status.as_str(),
                    at,
                    new.title,
                    new.description,
                    new.action,
                    new.rollback_action,
                    new.probes,
                    new.risk.as_str(),
                    new.required_approvals,
                    new.proposed_by,
                    new.expires_at.map(micros),
                    seq,
                ],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) => {
                let what = if new.event_id.is_some() {
                    "event or cluster"
                } else {
                    "cluster"
                };
                return Err(e.on_foreign_key(what));
            }
        }
        self.fetch_remediation(id, false).await
    }

    async fn get(&mut self, id: Uuid) -> Result<Remediation> {
        self.fetch_remediation(id, false).await
    }

    async fn lock(&mut self, id: Uuid) -> Result<Remediation> {
        self.fetch_remediation(id, true).await
    }

    async fn list(
        &mut self,
        filter: &RemediationFilter,
        page: &PageRequest,
    ) -> Result<Page<Remediation>> {
        let tenant = self.tenant()?;
        let mut sql = Sql::new(concat!(
            "SELECT ",
            remediation_cols!(),
            " FROM remediations WHERE tenant_id = "
        ));
        sql.bind(tenant);
        if let Some(status) = filter.status {
            sql.push(" AND status = ").bind(status.as_str());
        }
        if let Some(cluster) = filter.cluster_id {
            sql.push(" AND cluster_id = ").bind(cluster);
        }
        if let Some(event) = filter.event_id {
            sql.push(" AND event_id = ").bind(event);
        }
        let mut result = self
            .time_page(sql, page, remediation_from, |r| (r.created_at, r.id))
            .await?;
        for r in &mut result.items {
            self.load_approvals(r).await?;
        }
        Ok(result)
    }

    async fn save(&mut self, r: &Remediation, expected_version: i64) -> Result<Remediation> {
        let tenant = self.tenant()?;
        check_remediation_text(&r.title, &r.description)?;
        check_json("action", &r.action)?;
        if let Some(rollback) = &r.rollback_action {
            check_json("rollback_action", rollback)?;
        }
        check_json("probes", &r.probes)?;
        let changed = self
            .conn
            .execute(
                "UPDATE remediations SET version = version + 1, updated_at = $4, status = $5, \
                 status_reason = $6, action = $7, rollback_action = $8, probes = $9, risk = $10, \
                 revision = $11, required_approvals = $12, break_glass = $13, \
                 break_glass_justification = $14, expires_at = $15, dispatched_at = $16, \
                 completed_at = $17, last_error = $18, execution_id = $19, attempts = $20, \
                 executed = $21, revised_by = $22 \
                 WHERE tenant_id = $1 AND id = $2 AND version = $3",
                args![
                    tenant,
                    r.id,
                    expected_version,
                    now(),
                    r.status.as_str(),
                    r.status_reason.clone(),
                    r.action.clone(),
                    r.rollback_action.clone(),
                    r.probes.clone(),
                    r.risk.as_str(),
                    r.revision,
                    r.required_approvals,
                    r.break_glass,
                    r.break_glass_justification.clone(),
                    r.expires_at.map(micros),
                    r.dispatched_at.map(micros),
                    r.completed_at.map(micros),
                    r.last_error.clone(),
                    r.execution_id,
                    r.attempts,
                    r.executed,
                    r.revised_by.clone(),
                ],
            )
            .await?;
        if changed == 0 {
            return self
                .explain_miss(
                    "SELECT version FROM remediations WHERE tenant_id = $1 AND id = $2",
                    args![tenant, r.id],
                    "remediation",
                    Some(expected_version),
                )
                .await;
        }
        // Only now, with the row locked by the update, the next seq of the
        // change sequence: taking the sequence head first could wait on the
        // row while holding the head that the row's holder waits for.
        let seq = self.next_change_seq(now()).await?;
        self.conn
            .execute(
                "UPDATE remediations SET seq = $3 WHERE tenant_id = $1 AND id = $2",
                args![tenant, r.id, seq],
            )
            .await?;
        self.fetch_remediation(r.id, false).await
    }

    async fn add_approval(&mut self, remediation_id: Uuid, approval: &Approval) -> Result<()> {
        let tenant = self.tenant()?;
        validate::text("comment", &approval.comment, 2000, true)?;
        self.conn
            .execute(
                "INSERT INTO remediation_approvals (tenant_id, remediation_id, revision, \
                 approver_id, approver_role, comment, remediation_version, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                args![
                    tenant,
                    remediation_id,
                    approval.revision,
                    approval.approver_id,
                    approval.approver_role.as_str(),
                    approval.comment.clone(),
                    approval.remediation_version,
                    micros(approval.created_at),
                ],
            )
            .await
            .map_err(|e| e.on_unique("approval").on_foreign_key("remediation"))?;
        Ok(())
    }

    async fn policy(&mut self) -> Result<ApprovalPolicy> {
        let tenant = self.tenant()?;
        let row = self
            .conn
            .fetch_optional(
                "SELECT tenant_id, required_low, required_medium, required_high, \
                 required_critical, min_approver_role, allow_self_approval, approval_windows, \
                 pending_expiry_seconds, auto_rollback_on_failure, max_dispatch_attempts, \
                 version, updated_at, updated_by FROM approval_policies WHERE tenant_id = $1",
                args![tenant],
            )
            .await?;
        match row {
            Some(row) => policy_from(&row),
            None => Ok(ApprovalPolicy::defaults(tenant)),
        }
    }

    async fn save_policy(
        &mut self,
        policy: &ApprovalPolicy,
        expected_version: i64,
    ) -> Result<ApprovalPolicy> {
        let tenant = self.tenant()?;
        validate::text("updated_by", &policy.updated_by, 200, true)?;
        let windows = serde_json::to_value(&policy.approval_windows).unwrap_or_default();
        let values = args![
            tenant,
            policy.required_low,
            policy.required_medium,
            policy.required_high,
            policy.required_critical,
            policy.min_approver_role.as_str(),
            policy.allow_self_approval,
            windows,
            policy.pending_expiry_seconds,
            policy.auto_rollback_on_failure,
            policy.max_dispatch_attempts,
            now(),
            policy.updated_by.clone(),
            expected_version,
        ];
        let mut changed = self
            .conn
            .execute(
                "UPDATE approval_policies SET required_low = $2, required_medium = $3, \
                 required_high = $4, required_critical = $5, min_approver_role = $6, \
                 allow_self_approval = $7, approval_windows = $8, \
                 pending_expiry_seconds = $9, auto_rollback_on_failure = $10, \
                 max_dispatch_attempts = $11, updated_at = $12, updated_by = $13, \
                 version = version + 1 WHERE tenant_id = $1 AND version = $14",
                values.clone(),
            )
            .await?;
        if changed == 0 && expected_version == 1 {
            // The defaults are version 1 and have no row: the first change inserts version 2.
            // A concurrent first change hits the primary key and loses like a stale version.
            changed = self
                .conn
                .execute(
                    "INSERT INTO approval_policies (tenant_id, required_low, required_medium, \
                     required_high, required_critical, min_approver_role, allow_self_approval, \
                     approval_windows, pending_expiry_seconds, auto_rollback_on_failure, \
                     max_dispatch_attempts, updated_at, updated_by, version) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 + 1 \
                     WHERE NOT EXISTS (SELECT 1 FROM approval_policies WHERE tenant_id = $1)",
                    values,
                )
                .await
                .map_err(|e| e.on_unique("approval policy"))
                .or_else(|e| match e {
                    StoreError::AlreadyExists { .. } => Ok(0),
                    other => Err(other),
                })?;
        }
        if changed == 0 {
            let current = self.policy().await?.version;
            return Err(StoreError::VersionMismatch {
                what: "approval policy",
                current,
            });
        }
        self.policy().await
    }

    async fn enqueue(&mut self, d: &Dispatch) -> Result<()> {
        let tenant = self.tenant()?;
        self.conn
            .execute(
                concat!(
                    "INSERT INTO remediation_dispatches (",
                    dispatch_cols!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)"
                ),
                args![
                    d.execution_id,
                    tenant,
                    d.cluster_id,
                    d.remediation_id,
                    d.remediation_version,
                    d.operation.as_str(),
                    d.state.as_str(),
                    d.attempts,
                    d.max_attempts,
                    micros(d.next_attempt_at),
                    d.last_error.clone(),
                    d.last_phase.clone(),
                    now(),
                ],
            )
            .await
            .map_err(|e| e.on_foreign_key("remediation or cluster"))?;
        Ok(())
    }

    async fn claim_due(
        &mut self,
        cluster_id: Uuid,
        at: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Dispatch>> {
        let tenant = self.tenant()?;
        // SQLite drops `FOR UPDATE` but would keep `SKIP LOCKED`: spell the
        // lock per backend.
        let lock = match self.conn.backend() {
            BackendKind::Postgres => " FOR UPDATE SKIP LOCKED",
            BackendKind::Sqlite => "",
        };
        let sql = format!(
            concat!(
                "SELECT ",
                dispatch_cols!(),
                " FROM remediation_dispatches WHERE tenant_id = $1 AND cluster_id = $2 \
                 AND state IN ('pending', 'sent') AND next_attempt_at <= $3 \
                 ORDER BY next_attempt_at, execution_id LIMIT $4{}"
            ),
            lock
        );
        self.all(
            sql,
            args![tenant, cluster_id, micros(at), limit.clamp(1, 100)],
            dispatch_from,
        )
        .await
    }

    async fn save_dispatch(&mut self, d: &Dispatch) -> Result<()> {
        let tenant = self.tenant()?;
        let changed = self
            .conn
            .execute(
                "UPDATE remediation_dispatches SET state = $3, attempts = $4, \
                 next_attempt_at = $5, last_error = $6, last_phase = $7, updated_at = $8 \
                 WHERE tenant_id = $1 AND execution_id = $2",
                args![
                    tenant,
                    d.execution_id,
                    d.state.as_str(),
                    d.attempts,
                    micros(d.next_attempt_at),
                    d.last_error.clone(),
                    d.last_phase.clone(),
                    now(),
                ],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::NotFound { what: "execution" });
        }
        Ok(())
    }

    async fn dispatch(&mut self, execution_id: Uuid) -> Result<Dispatch> {
        let tenant = self.tenant()?;
        self.one(
            concat!(
                "SELECT ",
                dispatch_cols!(),
                " FROM remediation_dispatches WHERE tenant_id = $1 AND execution_id = $2 FOR UPDATE"
            ),
            args![tenant, execution_id],
            "execution",
            dispatch_from,
        )
        .await
    }

    async fn requeue_in_flight(&mut self, cluster_id: Uuid, at: DateTime<Utc>) -> Result<u64> {
        let tenant = self.tenant()?;
        self.conn
            .execute(
                "UPDATE remediation_dispatches SET state = 'sent', next_attempt_at = $3, \
                 updated_at = $3 \
                 WHERE tenant_id = $1 AND cluster_id = $2 AND state IN ('sent', 'acked')",
                args![tenant, cluster_id, micros(at)],
            )
            .await
    }

    async fn record_verification(&mut self, run: &VerificationRun) -> Result<bool> {
        let tenant = self.tenant()?;
        check_json("probes", &run.probes)?;
        let inserted = self
            .conn
            .execute(
                "INSERT INTO verification_runs (id, tenant_id, remediation_id, \
                 remediation_version, execution_id, result, probes, started_at, ended_at, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (tenant_id, execution_id) DO NOTHING",
                args![
                    run.id,
                    tenant,
                    run.remediation_id,
                    run.remediation_version,
                    run.execution_id,
                    run.result.as_str(),
                    run.probes.clone(),
                    run.started_at.map(micros),
                    run.ended_at.map(micros),
                    micros(run.created_at),
                ],
            )
            .await?;
        Ok(inserted == 1)
    }

    async fn verification_runs(
        &mut self,
        remediation_id: Uuid,
        page: &PageRequest,
    ) -> Result<Page<VerificationRun>> {
        let tenant = self.tenant()?;
        let mut sql = Sql::new(
            "SELECT id, remediation_id, remediation_version, execution_id, result, probes, \
             started_at, ended_at, created_at FROM verification_runs WHERE tenant_id = ",
        );
        sql.bind(tenant)
            .push(" AND remediation_id = ")
            .bind(remediation_id);
        self.time_page(sql, page, run_from, |r| (r.created_at, r.id))
            .await
    }

    async fn add_dead_letter(&mut self, letter: &DeadLetter) -> Result<()> {
        let tenant = self.tenant()?;
        self.conn
            .execute(
                concat!(
                    "INSERT INTO dead_letters (",
                    dead_letter_cols!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL)"
                ),
                args![
                    letter.id,
                    tenant,
                    letter.remediation_id,
                    letter.cluster_id,
                    letter.execution_id,
                    letter.operation.as_str(),
                    letter.attempts,
                    letter.last_error.clone(),
                    micros(letter.created_at),
                ],
            )
            .await
            .map_err(|e| e.on_foreign_key("remediation or cluster"))?;
        Ok(())
    }

    async fn dead_letter(&mut self, id: Uuid) -> Result<DeadLetter> {
        let tenant = self.tenant()?;
        self.one(
            concat!(
                "SELECT ",
                dead_letter_cols!(),
                " FROM dead_letters WHERE tenant_id = $1 AND id = $2"
            ),
            args![tenant, id],
            "dead letter",
            dead_letter_from,
        )
        .await
    }

    async fn list_dead_letters(
        &mut self,
        filter: &DeadLetterFilter,
        page: &PageRequest,
    ) -> Result<Page<DeadLetter>> {
        let tenant = self.tenant()?;
        let mut sql = Sql::new(concat!(
            "SELECT ",
            dead_letter_cols!(),
            " FROM dead_letters WHERE tenant_id = "
        ));
        sql.bind(tenant);
        if let Some(cluster) = filter.cluster_id {
            sql.push(" AND cluster_id = ").bind(cluster);
        }
        if let Some(remediation) = filter.remediation_id {
            sql.push(" AND remediation_id = ").bind(remediation);
        }
        if !filter.show_replayed {
            sql.push(" AND replayed_at IS NULL");
        }
        self.time_page(sql, page, dead_letter_from, |d| (d.created_at, d.id))
            .await
    }

    async fn mark_replayed(&mut self, id: Uuid, by: &str, at: DateTime<Utc>) -> Result<DeadLetter> {
        let tenant = self.tenant()?;
        let changed = self
            .conn
            .execute(
                "UPDATE dead_letters SET replayed_at = $3, replayed_by = $4 \
                 WHERE tenant_id = $1 AND id = $2 AND replayed_at IS NULL",
                args![tenant, id, micros(at), by],
            )
            .await?;
        let letter = self.dead_letter(id).await?;
        if changed == 0 {
            return Err(StoreError::precondition(
                precondition::INVALID_STATE,
                "the dead letter was already replayed",
            ));
        }
        Ok(letter)
    }

    async fn expired_pending(
        &mut self,
        at: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, Uuid)>> {
        let rows = self
            .conn
            .fetch_all(
                "SELECT tenant_id, id FROM remediations \
                 WHERE status IN ('proposed', 'pending_approval') AND expires_at <= $1 \
                 ORDER BY expires_at LIMIT $2",
                args![micros(at), limit.clamp(1, 1000)],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.uuid("tenant_id")?, r.uuid("id")?)))
            .collect()
    }

    async fn depths(&mut self) -> Result<RemediationDepths> {
        let row = self
            .conn
            .fetch_one(
                "SELECT \
                 (SELECT count(*) FROM remediation_dispatches \
                  WHERE state IN ('pending', 'sent', 'acked')) AS queue, \
                 (SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL) AS dead",
                args![],
            )
            .await?;
        Ok(RemediationDepths {
            queue: row.get("queue")?,
            dead_letters: row.get("dead")?,
        })
    }
}
