use async_trait::async_trait;
use uuid::Uuid;

use super::SqlTx;
use crate::db::{args, now, Row, Sql};
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::page::{time_token, Page, PageRequest};
use crate::repo::TenantRepo;
use crate::scope::Scope;
use crate::validate;

macro_rules! tenant_cols {
    () => {
        "id, name, display_name, status, max_clusters, requests_per_second, \
         max_events_per_day, created_at, updated_at, created_by, updated_by, deleted_at"
    };
}
pub(crate) use tenant_cols;

pub(crate) fn tenant_from(r: &Row) -> Result<Tenant> {
    Ok(Tenant {
        id: r.uuid("id")?,
        name: r.text("name")?,
        display_name: r.text("display_name")?,
        status: r.parse("status")?,
        quotas: Quotas {
            max_clusters: r.get("max_clusters")?,
            requests_per_second: r.get("requests_per_second")?,
            max_events_per_day: r.get("max_events_per_day")?,
        },
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
        created_by: r.opt_uuid("created_by")?,
        updated_by: r.opt_uuid("updated_by")?,
        deleted_at: r.opt_ts("deleted_at")?,
    })
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
    /// per-tenant mutex behind the quota and last-owner rules. Returns
    /// `(status, max_clusters)` of the live tenant.
    pub(crate) async fn lock_tenant(&mut self, id: Uuid) -> Result<(TenantStatus, i32)> {
        let row = self
            .conn
            .fetch_optional(
                "SELECT status, max_clusters FROM tenants \
                 WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
                args![id],
            )
            .await?
            .ok_or(StoreError::NotFound { what: "tenant" })?;
        Ok((row.parse("status")?, row.get("max_clusters")?))
    }
}

#[async_trait]
impl TenantRepo for SqlTx {
    async fn create(&mut self, new: NewTenant, owner: Uuid) -> Result<Tenant> {
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
        self.conn
            .execute(
                "INSERT INTO tenant_members (tenant_id, user_id, role, joined_at, invited_by) \
                 VALUES ($1, $2, 'owner', $3, NULL)",
                args![id, owner, at],
            )
            .await
            .map_err(|e| e.on_foreign_key("user"))?;
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
            sql.push(
                " AND EXISTS (SELECT 1 FROM tenant_members m \
                 WHERE m.tenant_id = tenants.id AND m.user_id = ",
            )
            .bind(user)
            .push(")");
        }
        self.one(sql.text, sql.args, "tenant", tenant_from).await
    }

    async fn list(&mut self, filter: &TenantFilter, page: &PageRequest) -> Result<Page<Tenant>> {
        let limit = page.limit();
        let mut sql = Sql::new(concat!("SELECT ", tenant_cols!(), " FROM tenants WHERE "));
        match filter.status {
            Some(s) => sql.push("status = ").bind(s.as_str()),
            None => sql.push("deleted_at IS NULL"),
        };
        if !self.scope.platform_admin {
            match (self.scope.user_id, self.scope.tenant_id) {
                (Some(user), _) => sql
                    .push(
                        " AND EXISTS (SELECT 1 FROM tenant_members m \
                         WHERE m.tenant_id = tenants.id AND m.user_id = ",
                    )
                    .bind(user)
                    .push(")"),
                (None, Some(tenant)) => sql.push(" AND id = ").bind(tenant),
                (None, None) => {
                    return Ok(Page {
                        items: vec![],
                        next_page_token: None,
                    })
                }
            };
        }
        if let Some((at, id)) = page.time_cursor()? {
            sql.push(" AND (created_at, id) < (")
                .bind(at)
                .push(", ")
                .bind(id)
                .push(")");
        }
        sql.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .bind(limit + 1);
        let items = self.all(sql.text, sql.args, tenant_from).await?;
        Ok(Page::from_overfetch(items, limit, |t| {
            time_token(t.created_at, t.id)
        }))
    }

    async fn update(&mut self, id: Uuid, update: TenantUpdate) -> Result<Tenant> {
        self.check_tenant(id)?;
        if let Some(d) = &update.display_name {
            validate::text("display_name", d.trim(), 200, false)?;
        }
        check_quotas(
            update.max_clusters,
            update.requests_per_second,
            update.max_events_per_day,
        )?;
        self.one(
            concat!(
                "UPDATE tenants SET display_name = COALESCE($2, display_name), \
                 max_clusters = COALESCE($3, max_clusters), \
                 requests_per_second = COALESCE($4, requests_per_second), \
                 max_events_per_day = COALESCE($5, max_events_per_day), \
                 updated_at = $6, updated_by = $7 \
                 WHERE id = $1 AND deleted_at IS NULL RETURNING ",
                tenant_cols!()
            ),
            args![
                id,
                update.display_name.map(|d| d.trim().to_owned()),
                update.max_clusters,
                update.requests_per_second,
                update.max_events_per_day,
                now(),
                self.scope.user_id
            ],
            "tenant",
            tenant_from,
        )
        .await
    }

    async fn set_status(&mut self, id: Uuid, status: TenantStatus) -> Result<Tenant> {
        self.check_tenant(id)?;
        if status == TenantStatus::Deleted {
            return Err(StoreError::invalid(
                "status",
                "use soft_delete to delete a tenant",
            ));
        }
        self.one(
            concat!(
                "UPDATE tenants SET status = $2, updated_at = $3, updated_by = $4 \
                 WHERE id = $1 AND deleted_at IS NULL RETURNING ",
                tenant_cols!()
            ),
            args![id, status.as_str(), now(), self.scope.user_id],
            "tenant",
            tenant_from,
        )
        .await
    }

    async fn soft_delete(&mut self, id: Uuid) -> Result<Tenant> {
        self.check_tenant(id)?;
        let at = now();
        let tenant = self
            .one(
                concat!(
                    "UPDATE tenants SET status = 'deleted', deleted_at = $2, updated_at = $2, \
                     updated_by = $3 WHERE id = $1 AND deleted_at IS NULL RETURNING ",
                    tenant_cols!()
                ),
                args![id, at, self.scope.user_id],
                "tenant",
                tenant_from,
            )
            .await?;
        // The tenant's clusters go with it (their names become reusable too).
        self.conn
            .execute(
                "UPDATE clusters SET status = 'deleting', deleted_at = $2, updated_at = $2 \
                 WHERE tenant_id = $1 AND deleted_at IS NULL",
                args![id, at],
            )
            .await?;
        Ok(tenant)
    }
}
