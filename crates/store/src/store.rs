//! [`Store`]: connecting to a backend and opening scoped transactions.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor};

use crate::db::Conn;
use crate::error::{Result, StoreError};
use crate::replica::{
    route, Freshness, ReadConsistency, ReadFuture, ReadPool, Replica, PRIMARY_LSN, REPLICA_LSN,
};
use crate::repo::Tx;
use crate::repos::SqlTx;
use crate::scope::Scope;

/// The role the PostgreSQL application pool switches to, created by the
/// first migration.
pub const DEFAULT_APP_ROLE: &str = "zen_app";

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Postgres,
    Sqlite,
}

/// Connection settings; `StoreOptions::default()` suits development.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// PostgreSQL: every pooled connection runs `SET ROLE <app_role>` right
    /// after connecting, so the application is subject to row-level
    /// security even when the URL's user owns the tables. `None` skips it
    /// (when the URL's user is already a non-owner, non-BYPASSRLS role).
    pub app_role: Option<String>,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// SQLite: how long a writer waits for the database lock.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            app_role: Some(DEFAULT_APP_ROLE.to_owned()),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
pub(crate) enum Backend {
    Postgres {
        /// The application pool (`SET ROLE` applied).
        pool: PgPool,
        /// The URL's own user, for migrations.
        owner: Box<PgConnectOptions>,
    },
    Sqlite {
        pool: SqlitePool,
        /// SQLite has one writer at a time. Writers of this process take turns here, first
        /// come first served, before `BEGIN IMMEDIATE`; without it they would race in
        /// SQLite's busy handler, which sleeps up to 100 ms between tries, so a steady writer
        /// (the retention janitor) could starve the others for seconds.
        writer: std::sync::Arc<tokio::sync::Mutex<()>>,
        /// How long a writer waits for its turn (the busy timeout's role across processes).
        busy_timeout: std::time::Duration,
    },
}

/// The storage handle: cheap to clone, shared by all request handlers.
#[derive(Clone)]
pub struct Store {
    pub(crate) backend: Backend,
    /// Callers between asking for a transaction and getting it (shared by clones).
    waiting: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The PostgreSQL standby serving list pages while it is fresh (`crate::replica`).
    replica: Option<std::sync::Arc<Replica>>,
}

/// Prints the backend only: the connect options hold the password.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.kind())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connect with default options. URL forms:
    /// * `postgres://user@host:port/db?…` (also `postgresql://`)
    /// * `sqlite://path/to/zen.db` (relative), `sqlite:///abs/path.db`,
    ///   `sqlite::memory:`; the file and its directory are created if missing.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url, options).await
        } else if url.starts_with("sqlite:") {
            Self::connect_sqlite(url, options).await
        } else {
            Err(StoreError::invalid(
                "database_url",
                "must start with postgres://, postgresql:// or sqlite:",
            ))
        }
    }

    async fn connect_postgres(url: &str, options: StoreOptions) -> Result<Self> {
        let owner = PgConnectOptions::from_str(url)?.application_name("zen");
        // Fail fast on a bad URL or an unreachable server. The pool itself
        // is lazy: on a fresh database the app role does not exist until the
        // first migration, which runs on its own owner connection.
        owner.connect().await?.close().await?;
        let pool = app_pool(owner.clone(), &options)?;
        Ok(Store {
            waiting: Default::default(),
            replica: None,
            backend: Backend::Postgres {
                pool,
                owner: Box::new(owner),
            },
        })
    }

    /// Adds a PostgreSQL standby for list pages (`--database-read-url`): its pool runs as the
    /// same application role under the same row-level security, its transactions are read-only,
    /// and it serves nothing until [`Store::spawn_replica_monitor`] finds it fresh. The pool
    /// connects lazily, so a standby that is down at start only leaves lists on the primary.
    pub fn with_read_replica(mut self, url: &str, options: StoreOptions) -> Result<Self> {
        if self.kind() != BackendKind::Postgres {
            return Err(StoreError::invalid(
                "database_read_url",
                "a read replica needs a PostgreSQL primary",
            ));
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::invalid(
                "database_read_url",
                "must start with postgres:// or postgresql://",
            ));
        }
        let connect = PgConnectOptions::from_str(url)?.application_name("zen-replica");
        let pool = app_pool(connect, &options)?;
        self.replica = Some(std::sync::Arc::new(Replica::new(pool)));
        Ok(self)
    }

    /// Samples the primary's and the standby's WAL positions every `interval`, judges the
    /// standby with [`Freshness`], and publishes the verdict to the routing and to the
    /// `zen_database_replica_fresh` / `zen_database_replica_lag_bytes` gauges. `None` without
    /// a replica. Each position read waits at most `interval`, so a hung server costs a
    /// verdict of "not fresh", never a stalled monitor.
    pub fn spawn_replica_monitor(
        &self,
        interval: std::time::Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let replica = self.replica.clone()?;
        let Backend::Postgres { pool: primary, .. } = &self.backend else {
            return None;
        };
        let primary = primary.clone();
        Some(tokio::spawn(async move {
            let mut freshness = Freshness::default();
            // One log line per change of verdict, the first one included.
            let mut reported = None;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                // The primary first: the standby's position read after it can only be newer,
                // so an idle pair compares equal.
                let primary_lsn = crate::replica::lsn(&primary, PRIMARY_LSN, interval).await;
                let replica_lsn = crate::replica::lsn(&replica.pool, REPLICA_LSN, interval).await;
                let verdict = freshness.observe(primary_lsn, replica_lsn);
                replica.set_fresh(verdict.fresh);
                metrics::gauge!("zen_database_replica_fresh")
                    .set(f64::from(u8::from(verdict.fresh)));
                if let Some(lag) = verdict.lag_bytes {
                    metrics::gauge!("zen_database_replica_lag_bytes").set(lag as f64);
                }
                if reported == Some(verdict.fresh) {
                    continue;
                }
                reported = Some(verdict.fresh);
                if verdict.fresh {
                    tracing::info!(
                        lag_bytes = verdict.lag_bytes,
                        "the read replica is fresh: lists are served by it"
                    );
                } else {
                    tracing::warn!(
                        primary_lsn,
                        replica_lsn,
                        lag_bytes = verdict.lag_bytes,
                        "the read replica is not fresh: lists are served by the primary"
                    );
                }
            }
        }))
    }

    /// Runs `read` (a list page) in a read-only transaction for `scope` on the replica while
    /// it is fresh, else on the primary ([`route`] with [`ReadConsistency::BoundedStaleness`]).
    /// The replica's transaction gets exactly the primary's scope settings (row-level security
    /// included). A read that fails on the replica (it went down, or a query was cancelled by
    /// replay) is run again on the primary, so the replica never fails a caller. Counts the
    /// pool that answered in `zen_database_reads_total{pool}`. Reads that must see the latest
    /// commits use [`Store::begin_read`], which is always the primary.
    pub async fn read_stale<T, F>(&self, scope: &Scope, read: F) -> Result<T>
    where
        T: Send,
        F: for<'t> Fn(&'t mut dyn Tx) -> ReadFuture<'t, T> + Send + Sync,
    {
        let replica = self.replica.as_ref().filter(|r| r.is_fresh());
        if let (Some(replica), ReadPool::Replica) = (
            replica,
            route(ReadConsistency::BoundedStaleness, replica.is_some()),
        ) {
            let attempt = async {
                let conn = Conn::Pg(
                    replica
                        .pool
                        .begin_with("BEGIN TRANSACTION READ ONLY")
                        .await?,
                );
                let mut tx = SqlTx::open(conn, scope.clone()).await?;
                read(&mut tx).await
            };
            match attempt.await {
                Ok(value) => {
                    count_read(ReadPool::Replica);
                    return Ok(value);
                }
                Err(error) => {
                    tracing::debug!(%error, "a list failed on the read replica; reading the primary")
                }
            }
        }
        count_read(ReadPool::Primary);
        let mut tx = self.begin_read(scope).await?;
        read(&mut *tx).await
    }

    async fn connect_sqlite(url: &str, options: StoreOptions) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit survives power loss too ("success means committed").
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout);
        if let Some(dir) = opts.get_filename().parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::invalid(
                        "database_url",
                        format!("cannot create {}: {e}", dir.display()),
                    )
                })?;
            }
        }
        // An in-memory database lives in one shared-cache connection set,
        // where writers get SQLITE_LOCKED instead of waiting: use one
        // connection (tests and throw-away runs only).
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(if in_memory {
                1
            } else {
                options.max_connections
            })
            .acquire_timeout(options.acquire_timeout)
            // A COMMIT that fails for lack of disk space (or an I/O error) makes SQLite roll
            // the transaction back by itself; sqlx's own ROLLBACK then fails and the
            // connection keeps believing a transaction is open, so every later BEGIN on it
            // fails. Such a connection is closed on release instead of going back to the pool
            // (tests/disk_full.rs).
            .after_release(|conn, _| {
                let healthy = !sqlx::Connection::is_in_transaction(conn);
                Box::pin(async move { Ok(healthy) })
            })
            .connect_with(opts.clone())
            .await
            .map_err(|error| unwritable_database(opts.get_filename(), error))?;
        Ok(Store {
            backend: Backend::Sqlite {
                pool,
                writer: Default::default(),
                busy_timeout: options.busy_timeout,
            },
            waiting: Default::default(),
            replica: None,
        })
    }

    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Postgres { .. } => BackendKind::Postgres,
            Backend::Sqlite { .. } => BackendKind::Sqlite,
        }
    }

    /// Open a read-write transaction for `scope`. On PostgreSQL the scope is
    /// set as transaction-local RLS settings; on SQLite the transaction is
    /// `BEGIN IMMEDIATE`, so writers queue (up to `busy_timeout`) instead of
    /// failing when they upgrade a read lock.
    pub async fn begin(&self, scope: &Scope) -> Result<Box<dyn Tx>> {
        let mut turn = None;
        let conn = self
            .acquire(async {
                Ok(match &self.backend {
                    Backend::Postgres { pool, .. } => Conn::Pg(pool.begin().await?),
                    Backend::Sqlite {
                        pool,
                        writer,
                        busy_timeout,
                    } => {
                        turn = Some(
                            tokio::time::timeout(*busy_timeout, writer.clone().lock_owned())
                                .await
                                .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))?,
                        );
                        Conn::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?)
                    }
                })
            })
            .await?;
        let mut tx = SqlTx::open(conn, scope.clone()).await?;
        tx.write_turn = turn;
        Ok(Box::new(tx))
    }

    /// Times getting a connection and beginning its transaction
    /// (`zen_db_pool_acquire_seconds`), counting the callers waiting meanwhile.
    async fn acquire(
        &self,
        begin: impl std::future::Future<Output = Result<Conn>>,
    ) -> Result<Conn> {
        use std::sync::atomic::Ordering;
        let started = std::time::Instant::now();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let conn = begin.await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        metrics::histogram!("zen_db_pool_acquire_seconds").record(started.elapsed().as_secs_f64());
        conn
    }

    /// The pool's connections and waiters right now.
    pub fn pool_stats(&self) -> crate::PoolStats {
        let (size, idle, max) = match &self.backend {
            Backend::Postgres { pool, .. } => (
                pool.size(),
                pool.num_idle(),
                pool.options().get_max_connections(),
            ),
            Backend::Sqlite { pool, .. } => (
                pool.size(),
                pool.num_idle(),
                pool.options().get_max_connections(),
            ),
        };
        let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
        crate::PoolStats {
            size,
            idle,
            in_use: size - idle,
            max,
            waiting: self.waiting.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The slowest statements by mean time from PostgreSQL's `pg_stat_statements`, when the
    /// extension is installed in this database and readable; `None` otherwise (SQLite too).
    pub async fn pg_stat_statements(&self, limit: i64) -> Option<Vec<crate::SlowStatement>> {
        let Backend::Postgres { pool, .. } = &self.backend else {
            return None;
        };
        let rows: Vec<(String, f64, f64)> = sqlx::query_as(
            "SELECT query, mean_exec_time, max_exec_time FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY mean_exec_time DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await
        .ok()?;
        Some(
            rows.into_iter()
                .map(|(query, mean, _max)| crate::SlowStatement {
                    statement: query.chars().take(300).collect(),
                    duration_ms: mean,
                    at: chrono::Utc::now(),
                })
                .collect(),
        )
    }

    /// Open a read-only transaction (PostgreSQL `READ ONLY`; SQLite deferred,
    /// so readers never wait for writers). Writes in it fail.
    pub async fn begin_read(&self, scope: &Scope) -> Result<Box<dyn Tx>> {
        let conn = self
            .acquire(async {
                Ok(match &self.backend {
                    Backend::Postgres { pool, .. } => {
                        Conn::Pg(pool.begin_with("BEGIN TRANSACTION READ ONLY").await?)
                    }
                    Backend::Sqlite { pool, .. } => Conn::Sqlite(pool.begin().await?),
                })
            })
            .await?;
        Ok(Box::new(SqlTx::open(conn, scope.clone()).await?))
    }

    /// A round trip through the application pool (readiness probes).
    pub async fn ping(&self) -> Result<()> {
        match &self.backend {
            Backend::Postgres { pool, .. } => pool.acquire().await?.ping().await?,
            Backend::Sqlite { pool, .. } => pool.acquire().await?.ping().await?,
        }
        Ok(())
    }

    /// Close every pooled connection.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Postgres { pool, .. } => pool.close().await,
            Backend::Sqlite { pool, .. } => pool.close().await,
        }
    }

    /// The PostgreSQL application pool (connections already `SET ROLE`),
    /// for diagnostics and tests. Queries on it without the RLS settings
    /// see no tenant rows.
    #[doc(hidden)]
    pub fn pg_app_pool(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Postgres { pool, .. } => Some(pool),
            Backend::Sqlite { .. } => None,
        }
    }
}

/// A SQLite database that cannot be opened because its file or directory cannot be written (a
/// read-only volume, a full disk, permissions) is named with the operating system's reason,
/// rather than SQLite's bare "unable to open database file".
fn unwritable_database(path: &std::path::Path, error: sqlx::Error) -> StoreError {
    if in_memory_path(path) {
        return error.into();
    }
    let probe = if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
    } else {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        tempfile_probe(dir)
    };
    match probe {
        Err(os) => StoreError::writes_refused_at_open(path, os),
        Ok(()) => error.into(),
    }
}

fn in_memory_path(path: &std::path::Path) -> bool {
    path.as_os_str() == ":memory:" || path.as_os_str().is_empty()
}

/// Whether a file can be created in `dir` (removed at once).
fn tempfile_probe(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".zen-write-probe-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

/// Counts one list read by the pool that serves it.
fn count_read(pool: ReadPool) {
    metrics::counter!("zen_database_reads_total", "pool" => pool.label()).increment(1);
}

/// The lazy PostgreSQL application pool of `options` (`SET ROLE <app_role>` on every new
/// connection), for the primary and for a read replica alike.
fn app_pool(connect: PgConnectOptions, options: &StoreOptions) -> Result<PgPool> {
    let set_role = match &options.app_role {
        Some(role) => {
            let ok = !role.is_empty()
                && role.len() <= 63
                && role
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(StoreError::invalid(
                    "app_role",
                    "must be a lowercase SQL identifier",
                ));
            }
            Some(format!("SET ROLE \"{role}\""))
        }
        None => None,
    };
    Ok(PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .after_connect(move |conn, _meta| {
            let set_role = set_role.clone();
            Box::pin(async move {
                if let Some(stmt) = set_role {
                    conn.execute(AssertSqlSafe(stmt)).await?;
                }
                Ok(())
            })
        })
        .connect_lazy_with(connect))
}
