//! The repository implementations: one body of SQL for both backends,
//! running on [`SqlTx`]. Backend differences live in [`crate::db`].

mod audit;
mod clusters;
mod invites;
mod members;
mod tenants;
mod tokens;
mod users;

use std::borrow::Cow;

use async_trait::async_trait;
use uuid::Uuid;

use crate::db::{Arg, Conn, Row};
use crate::error::{Result, StoreError};
use crate::repo::*;
use crate::scope::Scope;

/// The transaction behind every `Box<dyn Tx>`: a backend connection in a
/// transaction, and the scope it was opened for.
pub(crate) struct SqlTx {
    pub(crate) conn: Conn,
    pub(crate) scope: Scope,
}

impl SqlTx {
    pub(crate) async fn open(mut conn: Conn, scope: Scope) -> Result<Self> {
        conn.apply_scope(&scope).await?;
        Ok(SqlTx { conn, scope })
    }

    /// The scope's tenant, required by tenant-scoped repositories.
    fn tenant(&self) -> Result<Uuid> {
        self.scope
            .tenant_id
            .ok_or_else(|| StoreError::invalid("scope", "this operation needs a tenant scope"))
    }

    /// Change the scope for the rest of the transaction (tenant creation,
    /// user login), in code and in the RLS settings.
    async fn rescope(&mut self, scope: Scope) -> Result<()> {
        self.conn.apply_scope(&scope).await?;
        self.scope = scope;
        Ok(())
    }

    /// The one row `sql` returns, mapped; `NotFound { what }` when none.
    async fn one<T: Send>(
        &mut self,
        sql: impl Into<Cow<'static, str>> + Send,
        args: Vec<Arg>,
        what: &'static str,
        map: fn(&Row) -> Result<T>,
    ) -> Result<T> {
        let row = self
            .conn
            .fetch_optional(sql, args)
            .await?
            .ok_or(StoreError::NotFound { what })?;
        map(&row)
    }

    /// Every row `sql` returns, mapped.
    async fn all<T: Send>(
        &mut self,
        sql: impl Into<Cow<'static, str>> + Send,
        args: Vec<Arg>,
        map: fn(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = self.conn.fetch_all(sql, args).await?;
        rows.iter().map(map).collect()
    }

    /// `id` is the scope's tenant, or the caller is platform admin.
    fn check_tenant(&self, id: Uuid) -> Result<()> {
        if self.scope.platform_admin || self.scope.tenant_id == Some(id) {
            Ok(())
        } else {
            Err(StoreError::NotFound { what: "tenant" })
        }
    }
}

#[async_trait]
impl Tx for SqlTx {
    fn scope(&self) -> &Scope {
        &self.scope
    }
    fn tenants(&mut self) -> &mut dyn TenantRepo {
        self
    }
    fn users(&mut self) -> &mut dyn UserRepo {
        self
    }
    fn members(&mut self) -> &mut dyn MemberRepo {
        self
    }
    fn invites(&mut self) -> &mut dyn InviteRepo {
        self
    }
    fn clusters(&mut self) -> &mut dyn ClusterRepo {
        self
    }
    fn bootstrap_tokens(&mut self) -> &mut dyn BootstrapTokenRepo {
        self
    }
    fn audit(&mut self) -> &mut dyn AuditRepo {
        self
    }
    async fn commit(self: Box<Self>) -> Result<()> {
        self.conn.commit().await
    }
    async fn rollback(self: Box<Self>) -> Result<()> {
        self.conn.rollback().await
    }
}
