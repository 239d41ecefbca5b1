//! The caller's scope: which tenant, which user, and whether the caller is a
//! platform administrator. Every transaction is opened for one scope; the
//! repositories filter by it in SQL and, on PostgreSQL, the same values are
//! handed to row-level security as transaction-local settings.

use uuid::Uuid;

/// The tenant id of the platform-level audit chain (actions with no tenant).
pub const PLATFORM_TENANT: Uuid = Uuid::nil();

/// Who is acting, and on which tenant.
///
/// * `tenant_id`: the tenant every tenant-scoped repository works in. `None`
///   means "no tenant": tenant-scoped repositories refuse to work (clusters,
///   members …) and the audit repository writes to the platform chain
///   ([`PLATFORM_TENANT`]).
/// * `user_id`: the acting user, if any. Lets a user see their own
///   memberships and tenants without a tenant scope, and write their own
///   `users` row.
/// * `platform_admin`: the escape hatch for platform-admin operations
///   (listing all tenants …). On PostgreSQL it sets `app.platform_admin = on`,
///   which the RLS policies honour. Give it only to verified platform admins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub tenant_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub platform_admin: bool,
}

impl Scope {
    /// No tenant, no user: only the platform audit chain and `users` reads.
    pub fn anonymous() -> Self {
        Scope::default()
    }

    /// A user acting outside any tenant (login, listing their tenants,
    /// creating a tenant).
    pub fn user(user_id: Uuid) -> Self {
        Scope {
            user_id: Some(user_id),
            ..Scope::default()
        }
    }

    /// A caller acting inside one tenant (a user, an agent or a service).
    pub fn tenant(tenant_id: Uuid, user_id: Option<Uuid>) -> Self {
        Scope {
            tenant_id: Some(tenant_id),
            user_id,
            platform_admin: false,
        }
    }

    /// A verified platform administrator (optionally a specific user).
    pub fn platform_admin(user_id: Option<Uuid>) -> Self {
        Scope {
            tenant_id: None,
            user_id,
            platform_admin: true,
        }
    }

    /// The same scope, inside `tenant_id`.
    pub fn with_tenant(mut self, tenant_id: Uuid) -> Self {
        self.tenant_id = Some(tenant_id);
        self
    }

    /// The audit chain this scope writes to: its tenant, or the platform chain.
    pub fn chain_tenant(&self) -> Uuid {
        self.tenant_id.unwrap_or(PLATFORM_TENANT)
    }
}
