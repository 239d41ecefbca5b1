use async_trait::async_trait;
use uuid::Uuid;

use super::tenants::{tenant_cols, tenant_from};
use super::SqlTx;
use crate::db::{args, now, Row, Sql};
use crate::error::{precondition, Result, StoreError};
use crate::model::*;
use crate::page::{Page, PageRequest, TextKeyset};
use crate::repo::MemberRepo;

/// Members joined with their user (`m` and `u`); the `users` RLS policy
/// lets every session read users.
macro_rules! select_members {
    () => {
        "SELECT m.tenant_id, m.user_id, m.role, m.joined_at, m.invited_by, \
         u.email, u.display_name \
         FROM tenant_members m JOIN users u ON u.id = m.user_id \
         WHERE m.tenant_id = "
    };
}

fn member_from(r: &Row) -> Result<Member> {
    Ok(Member {
        tenant_id: r.uuid("tenant_id")?,
        user_id: r.uuid("user_id")?,
        role: r.parse("role")?,
        joined_at: r.ts("joined_at")?,
        invited_by: r.opt_uuid("invited_by")?,
        email: r.opt_text("email")?,
        display_name: r.opt_text("display_name")?,
    })
}

/// Members are listed by email (the contract's order), compared without
/// ASCII case (`lower` folds ASCII only on both backends under a bytewise
/// collation, as `to_ascii_lowercase` does for the page token); members
/// without an email come first. The user id breaks ties.
const BY_EMAIL: TextKeyset = TextKeyset {
    postgres: r#"lower(COALESCE(u.email, '') COLLATE "C")"#,
    sqlite: "lower(COALESCE(u.email, ''))",
    id: "m.user_id",
};

fn email_key(m: &Member) -> (String, Uuid) {
    (
        m.email.as_deref().unwrap_or_default().to_ascii_lowercase(),
        m.user_id,
    )
}

fn membership_from(r: &Row) -> Result<Membership> {
    Ok(Membership {
        tenant: tenant_from(r)?,
        role: r.parse("role")?,
    })
}

impl SqlTx {
    /// Under the tenant row lock, refuse to take the owner role away from
    /// the last owner. Two concurrent demotions serialize on the lock, and
    /// the second counts the owners the first left.
    async fn guard_last_owner(
        &mut self,
        tenant: Uuid,
        user_id: Uuid,
        keeps_owner: bool,
    ) -> Result<()> {
        self.lock_tenant(tenant).await?;
        let current = self
            .role_of(user_id)
            .await?
            .ok_or(StoreError::NotFound { what: "member" })?;
        if current == Role::Owner && !keeps_owner && self.count_owners().await? <= 1 {
            return Err(StoreError::precondition(
                precondition::LAST_OWNER,
                "a tenant must keep at least one owner",
            ));
        }
        Ok(())
    }

    pub(crate) async fn insert_member(
        &mut self,
        user_id: Uuid,
        role: Role,
        invited_by: Option<Uuid>,
    ) -> Result<Member> {
        let tenant = self.tenant()?;
        self.conn
            .execute(
                "INSERT INTO tenant_members (tenant_id, user_id, role, joined_at, invited_by) \
                 VALUES ($1, $2, $3, $4, $5)",
                args![tenant, user_id, role.as_str(), now(), invited_by],
            )
            .await
            .map_err(|e| e.on_unique("member").on_foreign_key("user"))?;
        self.member(tenant, user_id).await
    }

    /// One member of `tenant`, with the user's email and display name.
    async fn member(&mut self, tenant: Uuid, user_id: Uuid) -> Result<Member> {
        self.one(
            concat!(select_members!(), "$1 AND m.user_id = $2"),
            args![tenant, user_id],
            "member",
            member_from,
        )
        .await
    }
}

#[async_trait]
impl MemberRepo for SqlTx {
    async fn list(&mut self, filter: &MemberFilter, page: &PageRequest) -> Result<Page<Member>> {
        let tenant = self.tenant()?;
        let mut sql = Sql::new(select_members!());
        sql.bind(tenant);
        if let Some(role) = filter.role {
            sql.push(" AND m.role = ").bind(role.as_str());
        }
        self.text_page(sql, page, BY_EMAIL, member_from, email_key)
            .await
    }

    async fn memberships(&mut self, user_id: Uuid) -> Result<Vec<Membership>> {
        if !self.scope.platform_admin && self.scope.user_id != Some(user_id) {
            return Err(StoreError::PermissionDenied {
                reason: "memberships of another user".into(),
            });
        }
        // Column names are unambiguous across the two tables.
        self.all(
            concat!(
                "SELECT ",
                tenant_cols!(),
                ", role FROM tenants JOIN tenant_members ON tenant_members.tenant_id = tenants.id \
                 WHERE tenant_members.user_id = $1 AND tenants.deleted_at IS NULL \
                 ORDER BY name"
            ),
            args![user_id],
            membership_from,
        )
        .await
    }

    async fn role_of(&mut self, user_id: Uuid) -> Result<Option<Role>> {
        let tenant = self.tenant()?;
        self.conn
            .fetch_optional(
                // Members of a deleted tenant hold no role in it: everything they could
                // reach there (members, audit, clusters) closes with the tenant.
                "SELECT m.role FROM tenant_members m JOIN tenants t ON t.id = m.tenant_id \
                 WHERE m.tenant_id = $1 AND m.user_id = $2 AND t.deleted_at IS NULL",
                args![tenant, user_id],
            )
            .await?
            .map(|r| r.parse("role"))
            .transpose()
    }

    async fn add(&mut self, user_id: Uuid, role: Role, invited_by: Option<Uuid>) -> Result<Member> {
        self.insert_member(user_id, role, invited_by).await
    }

    async fn change_role(&mut self, user_id: Uuid, role: Role) -> Result<Member> {
        let tenant = self.tenant()?;
        self.guard_last_owner(tenant, user_id, role == Role::Owner)
            .await?;
        let changed = self
            .conn
            .execute(
                "UPDATE tenant_members SET role = $3 WHERE tenant_id = $1 AND user_id = $2",
                args![tenant, user_id, role.as_str()],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::NotFound { what: "member" });
        }
        self.member(tenant, user_id).await
    }

    async fn remove(&mut self, user_id: Uuid) -> Result<()> {
        let tenant = self.tenant()?;
        self.guard_last_owner(tenant, user_id, false).await?;
        self.conn
            .execute(
                "DELETE FROM tenant_members WHERE tenant_id = $1 AND user_id = $2",
                args![tenant, user_id],
            )
            .await?;
        Ok(())
    }

    async fn count_owners(&mut self) -> Result<i64> {
        let tenant = self.tenant()?;
        self.one(
            "SELECT count(*) AS n FROM tenant_members WHERE tenant_id = $1 AND role = 'owner'",
            args![tenant],
            "tenant",
            |r| r.get("n"),
        )
        .await
    }
}
