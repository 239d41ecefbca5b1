//! The repository implementations: one body of SQL for both backends,
//! running on [`SqlTx`]. Backend differences live in [`crate::db`].

mod audit;
mod clusters;
pub(crate) mod events;
mod janitor;
mod members;
mod remediations;
mod tenants;
mod tokens;
mod users;
mod webhooks;

use std::borrow::Cow;

use async_trait::async_trait;
use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::db::{Arg, Conn, Row, Sql};
use crate::error::{Result, StoreError};
use crate::page::{time_token, Page, PageRequest};
use crate::repo::*;
use crate::scope::Scope;

/// The key of a keyset-paged list: a timestamp column and a UUID column
/// (SQL expressions), and the direction.
#[derive(Clone, Copy)]
struct Keyset {
    time: &'static str,
    id: &'static str,
    descending: bool,
}

impl Keyset {
    const NEWEST_FIRST: Keyset = Keyset {
        time: "created_at",
        id: "id",
        descending: true,
    };
}

/// `AND <column> LIKE '<prefix>%'` with the prefix taken literally (`\`,
/// `%` and `_` escaped). Names are lowercase ASCII and SQLite's LIKE
/// ignores ASCII case while PostgreSQL's does not, so a prefix with an
/// uppercase letter is answered "no match" on both, without asking.
/// `None` or empty: no condition.
fn push_name_prefix(sql: &mut Sql, column: &str, prefix: Option<&str>) -> Result<()> {
    let Some(prefix) = prefix.filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    crate::validate::text("name_prefix", prefix, 63, false)?;
    if prefix.bytes().any(|b| b.is_ascii_uppercase()) {
        sql.push(" AND 1 = 0");
        return Ok(());
    }
    let mut pattern = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    sql.push(" AND ")
        .push(column)
        .push(" LIKE ")
        .bind(pattern)
        .push(" ESCAPE '\\'");
    Ok(())
}

/// The transaction behind every `Box<dyn Tx>`: a backend connection in a
/// transaction, and the scope it was opened for.
pub(crate) struct SqlTx {
    pub(crate) conn: Conn,
    pub(crate) scope: Scope,
    /// SQLite writers: this process's writer turn, held until the transaction ends (it is
    /// declared after `conn`, so it is released after the commit or rollback).
    pub(crate) write_turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl SqlTx {
    pub(crate) async fn open(mut conn: Conn, scope: Scope) -> Result<Self> {
        conn.apply_scope(&scope).await?;
        Ok(SqlTx {
            conn,
            scope,
            write_turn: None,
        })
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

    /// Finish and run a newest-first list on `(created_at, id)`.
    async fn time_page<T: Send>(
        &mut self,
        sql: Sql,
        page: &PageRequest,
        map: fn(&Row) -> Result<T>,
        key: fn(&T) -> (DateTime<Utc>, Uuid),
    ) -> Result<Page<T>> {
        self.keyset_page(sql, page, Keyset::NEWEST_FIRST, map, key)
            .await
    }

    /// Finish and run a keyset-paged list: the page token's condition on
    /// the key columns, the order, and a limit one row past the page (that
    /// extra row only says whether a next page exists).
    async fn keyset_page<T: Send>(
        &mut self,
        mut sql: Sql,
        page: &PageRequest,
        keyset: Keyset,
        map: fn(&Row) -> Result<T>,
        key: fn(&T) -> (DateTime<Utc>, Uuid),
    ) -> Result<Page<T>> {
        let limit = page.limit();
        let (after, order) = if keyset.descending {
            (" < (", " DESC")
        } else {
            (" > (", "")
        };
        if let Some((at, id)) = page.time_cursor()? {
            sql.push(" AND (")
                .push(keyset.time)
                .push(", ")
                .push(keyset.id)
                .push(")")
                .push(after)
                .bind(at)
                .push(", ")
                .bind(id)
                .push(")");
        }
        sql.push(" ORDER BY ")
            .push(keyset.time)
            .push(order)
            .push(", ")
            .push(keyset.id)
            .push(order)
            .push(" LIMIT ")
            .bind(limit + 1);
        let items = self.all(sql.text, sql.args, map).await?;
        Ok(Page::from_overfetch(items, limit, |item| {
            let (at, id) = key(item);
            time_token(at, id)
        }))
    }

    /// A versioned `UPDATE … RETURNING` matched no row: say why. `probe`
    /// selects the `version` of the same live row: none means the row is
    /// gone (`NotFound`); otherwise its version moved on from `expected`
    /// (`VersionMismatch` with the current one). Under PostgreSQL's READ
    /// COMMITTED the UPDATE re-checks its WHERE against a concurrent
    /// writer's committed row, and this probe reads that same committed
    /// state, so the loser of a race is told the winner's version.
    async fn explain_miss<T>(
        &mut self,
        probe: &'static str,
        args: Vec<Arg>,
        what: &'static str,
        expected: Option<i64>,
    ) -> Result<T> {
        let current: i64 = self.one(probe, args, what, |r| r.get("version")).await?;
        Err(match expected {
            Some(v) if v != current => StoreError::VersionMismatch { what, current },
            // The row is there and matches: it changed under the UPDATE
            // and back, which only a concurrent writer can do. Retry.
            _ => StoreError::Conflict {
                reason: format!("{what} changed concurrently").into(),
            },
        })
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
    fn events(&mut self) -> &mut dyn EventRepo {
        self
    }
    fn remediations(&mut self) -> &mut dyn crate::remediation::RemediationRepo {
        self
    }
    fn webhook_sources(&mut self) -> &mut dyn WebhookSourceRepo {
        self
    }
    fn janitor(&mut self) -> &mut dyn JanitorRepo {
        self
    }
    async fn commit(self: Box<Self>) -> Result<()> {
        self.conn.commit().await
    }
    async fn rollback(self: Box<Self>) -> Result<()> {
        self.conn.rollback().await
    }
}
