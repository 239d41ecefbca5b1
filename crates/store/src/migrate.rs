//! Embedded, versioned migrations and the start-up check.
//!
//! The SQL lives in `migrations/postgres/` and `migrations/sqlite/` at the
//! repository root and is compiled into the binary. sqlx records applied
//! versions (with a checksum of their text) in `_sqlx_migrations`.
//!
//! On PostgreSQL migrations run on their own connection as the URL's user
//! (the schema owner), never through the `SET ROLE` application pool.
//! sqlx's advisory lock is turned off (CockroachDB has no advisory locks);
//! instead concurrent migrators serialize on a `SELECT … FOR UPDATE` of the
//! single row of `_zen_migration_lock`.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

use crate::error::{Result, StoreError};
use crate::store::{Backend, Store};

fn pg_migrator() -> Migrator {
    let mut m = sqlx::migrate!("../../migrations/postgres");
    m.set_locking(false);
    m
}

fn sqlite_migrator() -> Migrator {
    sqlx::migrate!("../../migrations/sqlite")
}

/// One migration, as the binary knows it or as the database recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    pub version: i64,
    pub description: String,
}

/// Where the database stands against the binary's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Applied successfully and known to the binary with the same checksum.
    pub applied: Vec<MigrationInfo>,
    /// Known to the binary, not applied yet.
    pub pending: Vec<MigrationInfo>,
    /// Recorded as failed part-way (`success = false`): needs a human.
    pub dirty: Vec<MigrationInfo>,
    /// Applied in the database but absent from the binary (the binary is
    /// older than the schema, or a migration file was deleted).
    pub unknown: Vec<MigrationInfo>,
    /// Applied, but the binary's copy has a different checksum (an applied
    /// migration was edited).
    pub modified: Vec<MigrationInfo>,
}

impl MigrationStatus {
    /// Nothing pending and nothing wrong.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.problem().is_none()
    }

    /// A description of what makes the schema unsafe to migrate or serve
    /// (dirty, unknown or modified migrations); pending ones are not a problem.
    pub fn problem(&self) -> Option<String> {
        let list = |v: &[MigrationInfo]| {
            v.iter()
                .map(|m| format!("{} ({})", m.version, m.description))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut problems = Vec::new();
        if !self.dirty.is_empty() {
            problems.push(format!(
                "migration {} failed part-way (dirty): repair the schema by hand, then delete \
                 its row from _sqlx_migrations and migrate again",
                list(&self.dirty)
            ));
        }
        if !self.unknown.is_empty() {
            problems.push(format!(
                "the database has migration {} that this binary does not know: the binary is \
                 older than the schema; deploy the newer binary",
                list(&self.unknown)
            ));
        }
        if !self.modified.is_empty() {
            problems.push(format!(
                "applied migration {} differs from this binary's copy (checksum): applied \
                 migrations must never be edited; add a new migration instead",
                list(&self.modified)
            ));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// A row of `_sqlx_migrations`.
type AppliedRow = (i64, String, bool, Vec<u8>);

const APPLIED_SQL: &str =
    "SELECT version, description, success, checksum FROM _sqlx_migrations ORDER BY version";

fn compare(migrator: &Migrator, applied: Vec<AppliedRow>) -> MigrationStatus {
    let known: BTreeMap<i64, _> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m))
        .collect();
    let info = |version: i64, description: &str| MigrationInfo {
        version,
        description: description.to_owned(),
    };
    let mut status = MigrationStatus::default();
    let mut seen = BTreeSet::new();
    for (version, description, success, checksum) in applied {
        seen.insert(version);
        let entry = info(version, &description);
        match known.get(&version) {
            _ if !success => status.dirty.push(entry),
            None => status.unknown.push(entry),
            Some(m) if *m.checksum != *checksum => status.modified.push(entry),
            Some(_) => status.applied.push(entry),
        }
    }
    status.pending = known
        .values()
        .filter(|m| !seen.contains(&m.version))
        .map(|m| info(m.version, &m.description))
        .collect();
    status
}

impl Store {
    /// Compare the database with the binary's migrations (read-only).
    pub async fn migration_status(&self) -> Result<MigrationStatus> {
        match &self.backend {
            Backend::Postgres { owner, .. } => {
                let mut conn = PgConnection::connect_with(owner).await?;
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
                     WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations')",
                )
                .fetch_one(&mut conn)
                .await?;
                let rows: Vec<AppliedRow> = if exists {
                    sqlx::query_as(APPLIED_SQL).fetch_all(&mut conn).await?
                } else {
                    Vec::new()
                };
                conn.close().await?;
                Ok(compare(&pg_migrator(), rows))
            }
            Backend::Sqlite { pool, .. } => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master \
                     WHERE type = 'table' AND name = '_sqlx_migrations')",
                )
                .fetch_one(pool)
                .await?;
                let rows: Vec<AppliedRow> = if exists {
                    sqlx::query_as(APPLIED_SQL).fetch_all(pool).await?
                } else {
                    Vec::new()
                };
                Ok(compare(&sqlite_migrator(), rows))
            }
        }
    }

    /// The start-up gate: `Ok` only when every migration the binary knows is
    /// applied and none is dirty, unknown or modified. Call it after
    /// [`Store::migrate`] (when auto-migrating) or instead of it.
    pub async fn check_migrations(&self) -> Result<MigrationStatus> {
        let status = self.migration_status().await?;
        if let Some(problem) = status.problem() {
            return Err(StoreError::Migration { reason: problem });
        }
        if !status.pending.is_empty() {
            let versions: Vec<String> = status
                .pending
                .iter()
                .map(|m| m.version.to_string())
                .collect();
            return Err(StoreError::Migration {
                reason: format!(
                    "{} pending migration(s) ({}): run `zen migrate` or enable auto-migrate",
                    status.pending.len(),
                    versions.join(", ")
                ),
            });
        }
        Ok(status)
    }

    /// Apply pending migrations. Refuses (before touching anything) when a
    /// migration is dirty, unknown or modified.
    pub async fn migrate(&self) -> Result<MigrationStatus> {
        match &self.backend {
            Backend::Postgres { owner, .. } => {
                // Serialize concurrent migrators (replicas starting together)
                // without advisory locks: hold a row lock on one connection
                // while another applies the migrations.
                let mut lock = PgConnection::connect_with(owner).await?;
                create_lock_table(&mut lock).await?;
                let mut guard = lock.begin().await?;
                sqlx::query("SELECT id FROM _zen_migration_lock WHERE id = 1 FOR UPDATE")
                    .execute(&mut *guard)
                    .await?;
                let result = async {
                    self.refuse_problems().await?;
                    let mut conn = PgConnection::connect_with(owner).await?;
                    pg_migrator().run(&mut conn).await?;
                    conn.close().await?;
                    Ok::<_, StoreError>(())
                }
                .await;
                guard.commit().await?;
                lock.close().await?;
                result?;
            }
            Backend::Sqlite { pool, .. } => {
                self.refuse_problems().await?;
                sqlite_migrator().run(pool).await?;
            }
        }
        self.migration_status().await
    }

    async fn refuse_problems(&self) -> Result<()> {
        match self.migration_status().await?.problem() {
            Some(problem) => Err(StoreError::Migration { reason: problem }),
            None => Ok(()),
        }
    }
}

async fn create_lock_table(conn: &mut PgConnection) -> Result<()> {
    const DDL: &str = "CREATE TABLE IF NOT EXISTS _zen_migration_lock (id integer PRIMARY KEY)";
    const ROW: &str = "INSERT INTO _zen_migration_lock (id) VALUES (1) ON CONFLICT (id) DO NOTHING";
    // Two first-time migrators can race on CREATE TABLE IF NOT EXISTS
    // (PostgreSQL reports a unique violation in its catalog): retry once.
    if let Err(e) = conn.execute(DDL).await {
        let raced = matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation());
        if !raced {
            return Err(e.into());
        }
        conn.execute(DDL).await?;
    }
    conn.execute(ROW).await?;
    Ok(())
}
