//! Test harness: a fresh database per test, on SQLite (temp file) or
//! PostgreSQL (`CREATE DATABASE zen_test_<uuid>`, dropped WITH (FORCE) when
//! the harness drops, even if the test panicked).
//!
//! PostgreSQL: `ZEN_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) must name a superuser
//! connection. Unreachable: the test fails when `CI` is set, otherwise it
//! prints why and passes without running.

#![allow(dead_code)]

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor};
use uuid::Uuid;
use zen_store::{BackendKind, Scope, Store};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_url() -> String {
    std::env::var("ZEN_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// Open a raw connection `$c` of the harness's backend, run `$body`
/// (a `Result<_, sqlx::Error>`), close the connection.
macro_rules! with_raw_conn {
    ($h:expr, |$c:ident| $body:expr) => {
        match $h.kind {
            BackendKind::Postgres => {
                async {
                    let mut $c = PgConnectOptions::from_str(&$h.url)?.connect().await?;
                    let out = $body;
                    $c.close().await?;
                    out
                }
                .await
            }
            BackendKind::Sqlite => {
                async {
                    let mut $c = SqliteConnectOptions::from_str(&$h.url)?.connect().await?;
                    let out = $body;
                    $c.close().await?;
                    out
                }
                .await
            }
        }
    };
}

pub struct Harness {
    pub store: Store,
    pub kind: BackendKind,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_db: Option<String>,
}

impl Harness {
    pub async fn new(kind: BackendKind, migrate: bool) -> Option<Harness> {
        let h = match kind {
            BackendKind::Sqlite => Self::sqlite_unmigrated().await,
            BackendKind::Postgres => Self::postgres_unmigrated().await?,
        };
        if migrate {
            h.store.migrate().await.expect("migrate");
        }
        Some(h)
    }

    async fn sqlite_unmigrated() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        // A missing sub-directory too: connect must create it.
        let path = dir.path().join("data").join("zen.db");
        let url = format!("sqlite://{}", path.display());
        let store = Store::connect(&url).await.expect("connect sqlite");
        Harness {
            store,
            kind: BackendKind::Sqlite,
            url,
            _dir: Some(dir),
            pg_db: None,
        }
    }

    async fn postgres_unmigrated() -> Option<Harness> {
        let admin = admin_url();
        let mut conn = match PgConnectOptions::from_str(&admin)
            .expect("ZEN_TEST_POSTGRES_URL")
            .connect()
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if std::env::var_os("CI").is_some() {
                    panic!("PostgreSQL at {admin} is unreachable and CI is set: {e}");
                }
                eprintln!(
                    "SKIP: PostgreSQL at {admin} is unreachable ({e}); set ZEN_TEST_POSTGRES_URL"
                );
                return None;
            }
        };
        let db = format!("zen_test_{}", Uuid::new_v4().simple());
        conn.execute(AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
            .await
            .expect("create database");
        conn.close().await.ok();
        let url = db_url(&admin, &db);
        let store = Store::connect(&url).await.expect("connect postgres");
        Some(Harness {
            store,
            kind: BackendKind::Postgres,
            url,
            _dir: None,
            pg_db: Some(db),
        })
    }

    /// Run SQL on a raw owner connection, behind the store's back (no RLS
    /// role, no scope).
    pub async fn raw(&self, sql: &str) -> Result<u64, sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_owned());
        with_raw_conn!(self, |c| c.execute(sql).await.map(|r| r.rows_affected()))
    }

    /// Like `raw`, but first removes SQLite's append-only triggers, as an
    /// attacker with access to the file would.
    pub async fn tamper(&self, sql: &str) -> u64 {
        if self.kind == BackendKind::Sqlite {
            self.raw("DROP TRIGGER IF EXISTS audit_logs_no_update")
                .await
                .unwrap();
            self.raw("DROP TRIGGER IF EXISTS audit_logs_no_delete")
                .await
                .unwrap();
        }
        self.raw(sql).await.expect("tamper")
    }

    /// One integer from a raw owner connection.
    pub async fn raw_i64(&self, sql: &str) -> i64 {
        let sql = AssertSqlSafe(sql.to_owned());
        with_raw_conn!(self, |c| sqlx::query_scalar(sql).fetch_one(&mut c).await)
            .expect("raw query")
    }

    /// Open a write transaction for `scope` (panics on error).
    pub async fn tx(&self, scope: &Scope) -> Box<dyn zen_store::Tx> {
        self.store.begin(scope).await.expect("begin")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let Some(db) = self.pg_db.take() else { return };
        // Drop the database from a thread with its own runtime: this runs
        // inside (possibly panicking) async tests.
        let admin = admin_url();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut c = PgConnectOptions::from_str(&admin)
                    .expect("admin url")
                    .connect()
                    .await
                    .expect("admin connect");
                c.execute(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
                )))
                .await
                .expect("drop database");
                c.close().await.ok();
            });
        })
        .join()
        .expect("drop database thread");
    }
}

/// `admin` with its database replaced by `db`.
pub fn db_url(admin: &str, db: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin, String::new()),
    };
    let without_db = match base.find("://").map(|i| i + 3) {
        Some(start) => match base[start..].find('/') {
            Some(slash) => &base[..start + slash],
            None => base,
        },
        None => base,
    };
    format!("{without_db}/{db}{query}")
}

/// Instantiate each listed `async fn name(h: &Harness)` as a test on SQLite
/// and on PostgreSQL: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let h = $crate::common::Harness::new(zen_store::BackendKind::Sqlite, true)
                        .await
                        .expect("sqlite harness");
                    super::$name(&h).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(h) = $crate::common::Harness::new(zen_store::BackendKind::Postgres, true).await
                    else {
                        return;
                    };
                    super::$name(&h).await;
                }
            )+
        }
    };
}
