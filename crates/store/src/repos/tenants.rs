use async_trait::async_trait;
use uuid::Uuid;

use super::{push_name_prefix, SqlTx};
use crate::db::{args, now, Row, Sql};
use crate::error::{precondition, Result, StoreError};
use crate::model::*;
use crate::page::{Page, PageRequest, BY_NAME};
use crate::repo::TenantRepo;
use crate::scope::Scope;
use crate::validate;

macro_rules! tenant_cols {
    () => {
        "id, name, display_name, status, suspend_reason, max_clusters, requests_per_second, \
         max_events_per_day, retention_events_days, retention_receipts_days, \
         retention_remediations_days, retention_dead_letters_days, version, created_at, \
         updated_at, created_by, updated_by, deleted_at"
    };
}
pub(crate) use tenant_cols;

pub(crate) fn tenant_from(r: &Row) -> Result<Tenant> {
    Ok(Tenant {
        id: r.uuid("id")?,
        name: r.text("name")?,
        display_name: r.text("display_name")?,
        status: r.parse("status")?,
        suspend_reason: r.opt_text("suspend_reason")?,
        quotas: Quotas {
            max_clusters: r.get("max_clusters")?,
            requests_per_second: r.get("requests_per_second")?,
            max_events_per_day: r.get("max_events_per_day")?,
        },
        retention: Retention {
            events_days: r.get("retention_events_days")?,
            receipts_days: r.get("retention_receipts_days")?,
            remediations_days: r.get("retention_remediations_days")?,
            dead_letters_days: r.get("retention_dead_letters_days")?,
        },
        version: r.get("version")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
        created_by: r.opt_uuid("created_by")?,
        updated_by: r.opt_uuid("updated_by")?,
        deleted_at: r.opt_ts("deleted_at")?,
    })
}

/// Tenants are listed by name (the contract's order), bytewise; the id
/// breaks ties between a live tenant and deleted ones of the same name.
/// Restrict a `tenants` query to the tenants `user` is a member of.
fn member_of(sql: &mut Sql, user: Uuid) -> &mut Sql {
    sql.push(
        " AND EXISTS (SELECT 1 FROM tenant_members m \
         WHERE m.tenant_id = tenants.id AND m.user_id = ",
    )
    .bind(user)
    .push(")")
}

fn check_quotas(max_clusters: Option<i32>, rps: Option<i32>, events: Option<i64>) -> Result<()> {
    if let Some(v) = max_clusters {
        validate::non_negative("max_clusters", v.into())?;
    }
    if let Some(v) = rps {
        validate::non_negative("requests_per_second", v.into())?;
    }
    if let Some(v) = events {
        validate::non_negative("max_events_per_day", v)?;
    }
    Ok(())
}

impl SqlTx {
    /// Lock the scope's tenant row for the rest of the transaction: the
    /// per-tenant mutex behind the quota and last-owner rules. `NO KEY`
    /// so that foreign-key checks of concurrent inserts referencing the
    /// tenant (events, members) are not blocked by it. Returns
    /// `(status, max_clusters)` of the live tenant.
    pub(crate) async fn lock_tenant(&mut self, id: Uuid) -> Result<(TenantStatus, i32)> {
        let row = self
            .conn
            .fetch_optional(
                "SELECT status, max_clusters FROM tenants \
                 WHERE id = $1 AND deleted_at IS NULL FOR NO KEY UPDATE",
                args![id],
            )
            .await?
            .ok_or(StoreError::NotFound { what: "tenant" })?;
        Ok((row.parse("status")?, row.get("max_clusters")?))
    }

    /// [`Self::lock_tenant`], and the tenant must be active: suspended is
    /// `Precondition` `TENANT_SUSPENDED` (deleted is already `NotFound`).
    /// Returns `max_clusters`. Holding the lock to the end of the
    /// transaction orders the work after or before a concurrent status
    /// change, never across it.
    pub(crate) async fn lock_active_tenant(&mut self, id: Uuid) -> Result<i32> {
        match self.lock_tenant(id).await? {
            (TenantStatus::Active, max_clusters) => Ok(max_clusters),
            (status, _) => Err(StoreError::precondition(
                precondition::TENANT_SUSPENDED,
                format!("the tenant is {status}"),
            )),
        }
    }
}

/// The probe behind a versioned tenant UPDATE that matched nothing.
const TENANT_VERSION: &str = "SELECT version FROM tenants WHERE id = $1 AND deleted_at IS NULL";

#[async_trait]
impl TenantRepo for SqlTx {
    async fn create(&mut self, new: NewTenant, owner: Option<Uuid>) -> Result<Tenant> {
        validate::dns_label("name", &new.name)?;
        let display_name = validate::display_name(&new.display_name, &new.name)?;
        let q = new.quotas;
        check_quotas(
            Some(q.max_clusters),
            Some(q.requests_per_second),
            Some(q.max_events_per_day),
        )?;
        if self.scope.tenant_id.is_some() {
            return Err(StoreError::invalid(
                "scope",
                "a tenant is created from a scope without a tenant",
            ));
        }
        let id = Uuid::now_v7();
        let at = now();
        let actor = self.scope.user_id;
        // The transaction now acts inside the new tenant (RLS WITH CHECK).
        self.rescope(Scope {
            tenant_id: Some(id),
            ..self.scope.clone()
        })
        .await?;
        let row = self
            .conn
            .fetch_one(
                concat!(
                    "INSERT INTO tenants (id, name, display_name, status, max_clusters, \
                     requests_per_second, max_events_per_day, created_at, updated_at, \
                     created_by, updated_by) \
                     VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, $7, $8, $8) RETURNING ",
                    tenant_cols!()
                ),
                args![
                    id,
                    new.name,
                    display_name,
                    q.max_clusters,
                    q.requests_per_second,
                    q.max_events_per_day,
                    at,
                    actor
                ],
            )
            .await
            .map_err(|e| e.on_unique("tenant"))?;
        if let Some(owner) = owner {
            self.conn
                .execute(
                    "INSERT INTO tenant_members (tenant_id, user_id, role, joined_at, invited_by) \
                     VALUES ($1, $2, 'owner', $3, NULL)",
                    args![id, owner, at],
                )
                .await
                .map_err(|e| e.on_foreign_key("user"))?;
        }
        tenant_from(&row)
    }

    async fn get(&mut self, id: Uuid) -> Result<Tenant> {
        let mut sql = Sql::new(concat!(
            "SELECT ",
            tenant_cols!(),
            " FROM tenants WHERE id = "
        ));
        sql.bind(id);
        if self.check_tenant(id).is_err() {
            let user = self
                .scope
                .user_id
                .ok_or(StoreError::NotFound { what: "tenant" })?;
            member_of(&mut sql, user);
        }
        self.one(sql.text, sql.args, "tenant", tenant_from).await
    }

    async fn list(&mut self, filter: &TenantFilter, page: &PageRequest) -> Result<Page<Tenant>> {
        let mut sql = Sql::new(concat!("SELECT ", tenant_cols!(), " FROM tenants WHERE "));
        match (filter.status, filter.include_deleted) {
            (Some(s), _) => sql.push("status = ").bind(s.as_str()),
            (None, false) => sql.push("deleted_at IS NULL"),
            (None, true) => sql.push("1 = 1"),
        };
        push_name_prefix(&mut sql, "name", filter.name_prefix.as_deref())?;
        if !self.scope.platform_admin {
            match (self.scope.user_id, self.scope.tenant_id) {
                (Some(user), _) => member_of(&mut sql, user),
                (None, Some(tenant)) => sql.push(" AND id = ").bind(tenant),
                (None, None) => {
                    return Ok(Page {
                        items: vec![],
                        next_page_token: None,
                    })
                }
            };
        }
        self.text_page(sql, page, BY_NAME, tenant_from, |t| (t.name.clone(), t.id))
            .await
    }

    async fn update(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
        update: TenantUpdate,
    ) -> Result<Tenant> {
        self.check_tenant(id)?;
        if let Some(d) = &update.display_name {
            validate::text("display_name", d.trim(), 200, false)?;
        }
        check_quotas(
            update.max_clusters,
            update.requests_per_second,
            update.max_events_per_day,
        )?;
        if let Some(retention) = &update.retention {
            retention.check()?;
        }
        let retention = update.retention;
        let row = self
            .conn
            .fetch_optional(
                concat!(
                    "UPDATE tenants SET display_name = COALESCE($2, display_name), \
                     max_clusters = COALESCE($3, max_clusters), \
                     requests_per_second = COALESCE($4, requests_per_second), \
                     max_events_per_day = COALESCE($5, max_events_per_day), \
                     updated_at = $6, updated_by = $7, version = version + 1, \
                     retention_events_days = COALESCE($9, retention_events_days), \
                     retention_receipts_days = COALESCE($10, retention_receipts_days), \
                     retention_remediations_days = COALESCE($11, retention_remediations_days), \
                     retention_dead_letters_days = COALESCE($12, retention_dead_letters_days) \
                     WHERE id = $1 AND deleted_at IS NULL AND ($8 IS NULL OR version = $8) \
                     RETURNING ",
                    tenant_cols!()
                ),
                args![
                    id,
                    update.display_name.map(|d| d.trim().to_owned()),
                    update.max_clusters,
                    update.requests_per_second,
                    update.max_events_per_day,
                    now(),
                    self.scope.user_id,
                    expected_version,
                    retention.map(|r| r.events_days),
                    retention.map(|r| r.receipts_days),
                    retention.map(|r| r.remediations_days),
                    retention.map(|r| r.dead_letters_days)
                ],
            )
            .await?;
        match row {
            Some(row) => tenant_from(&row),
            None => {
                self.explain_miss(TENANT_VERSION, args![id], "tenant", expected_version)
                    .await
            }
        }
    }

    async fn set_status(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
        status: TenantStatus,
        reason: Option<String>,
    ) -> Result<Tenant> {
        self.check_tenant(id)?;
        if status == TenantStatus::Deleted {
            return Err(StoreError::invalid(
                "status",
                "use soft_delete to delete a tenant",
            ));
        }
        // The reason belongs to the suspension: reactivating clears it.
        let reason = match status {
            TenantStatus::Suspended => reason
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty()),
            _ => None,
        };
        validate::opt_text("reason", reason.as_deref(), 1000)?;
        let row = self
            .conn
            .fetch_optional(
                concat!(
                    "UPDATE tenants SET status = $2, suspend_reason = $3, updated_at = $4, \
                     updated_by = $5, version = version + 1 \
                     WHERE id = $1 AND deleted_at IS NULL AND ($6 IS NULL OR version = $6) \
                     RETURNING ",
                    tenant_cols!()
                ),
                args![
                    id,
                    status.as_str(),
                    reason,
                    now(),
                    self.scope.user_id,
                    expected_version
                ],
            )
            .await?;
        match row {
            Some(row) => tenant_from(&row),
            None => {
                self.explain_miss(TENANT_VERSION, args![id], "tenant", expected_version)
                    .await
            }
        }
    }

    async fn soft_delete(&mut self, id: Uuid, expected_version: Option<i64>) -> Result<Tenant> {
        self.check_tenant(id)?;
        let at = now();
        let row = self
            .conn
            .fetch_optional(
                concat!(
                    "UPDATE tenants SET status = 'deleted', suspend_reason = NULL, \
                     deleted_at = $2, updated_at = $2, updated_by = $3, version = version + 1 \
                     WHERE id = $1 AND deleted_at IS NULL AND ($4 IS NULL OR version = $4) \
                     RETURNING ",
                    tenant_cols!()
                ),
                args![id, at, self.scope.user_id, expected_version],
            )
            .await?;
        let tenant = match row {
            Some(row) => tenant_from(&row)?,
            None => {
                return self
                    .explain_miss(TENANT_VERSION, args![id], "tenant", expected_version)
                    .await
            }
        };
        // The tenant's clusters go with it (their names become reusable too).
        self.conn
            .execute(
                "UPDATE clusters SET status = 'deleting', deleted_at = $2, updated_at = $2, \
                 version = version + 1 WHERE tenant_id = $1 AND deleted_at IS NULL",
                args![id, at],
            )
            .await?;
        Ok(tenant)
    }
}
