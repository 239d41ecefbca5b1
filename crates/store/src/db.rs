//! The thin layer that lets one body of SQL and row-mapping code run on both
//! backends.
//!
//! Repositories write SQL once (PostgreSQL syntax with `$n` placeholders,
//! which SQLite accepts too), pass arguments as [`Arg`]s and read columns
//! through [`Row`]. Only this module knows how each backend stores the types
//! the dialects disagree on:
//!
//! | type          | PostgreSQL    | SQLite                                         |
//! |---------------|---------------|------------------------------------------------|
//! | `Uuid`        | `uuid`        | `TEXT`, lowercase hyphenated                   |
//! | `DateTime`    | `timestamptz` | `TEXT`, `YYYY-MM-DDTHH:MM:SS.ffffffZ` (fixed width, so text order = time order) |
//! | JSON          | `jsonb`       | `TEXT`                                         |
//! | `bool`        | `boolean`     | `INTEGER` 0/1                                  |
//!
//! and the statement-level differences: `FOR [NO KEY] UPDATE` row locks are
//! dropped on SQLite, whose write transactions (`BEGIN IMMEDIATE`) already
//! serialize writers; and a batch passed as one table ([`Rows`], through
//! [`Sql::rows`]) is `UNNEST` of one array per column on PostgreSQL and
//! `json_each` of one JSON array of rows on SQLite.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Postgres, Row as _, Sqlite};
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::scope::Scope;
use crate::store::BackendKind;

/// A bind argument, typed so that NULLs keep their type on PostgreSQL.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Uuid(Option<Uuid>),
    Text(Option<String>),
    I32(Option<i32>),
    I64(Option<i64>),
    Bool(bool),
    Ts(Option<DateTime<Utc>>),
    Json(Option<Value>),
    /// One column of a [`Rows`] table (PostgreSQL arrays, see [`Sql::rows`]).
    Array(Column),
}

macro_rules! arg_from {
    ($($t:ty => $variant:ident),+ $(,)?) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Self { Arg::$variant(Some(v.into())) }
        }
        impl From<Option<$t>> for Arg {
            fn from(v: Option<$t>) -> Self { Arg::$variant(v.map(Into::into)) }
        }
    )+};
}

arg_from!(
    Uuid => Uuid,
    String => Text,
    &str => Text,
    i32 => I32,
    i64 => I64,
    DateTime<Utc> => Ts,
    Value => Json,
);

impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

/// `args![a, b, c]` builds a `Vec<Arg>`.
macro_rules! args {
    ($($e:expr),* $(,)?) => { vec![$($crate::db::Arg::from($e)),*] };
}
pub(crate) use args;

/// Dynamic SQL with numbered placeholders, for optional filters.
pub(crate) struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

impl Sql {
    pub fn new(text: &str) -> Self {
        Sql {
            text: text.to_owned(),
            args: Vec::new(),
        }
    }

    /// Append SQL text.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Append a placeholder bound to `arg`.
    pub fn bind(&mut self, arg: impl Into<Arg>) -> &mut Self {
        self.args.push(arg.into());
        self.text.push('$');
        self.text.push_str(&self.args.len().to_string());
        self
    }

    /// Append `rows` as a derived table `(SELECT … ) AS <alias>` whose
    /// columns carry the [`Rows`]' names and the store's types (JSON
    /// columns are `json` on PostgreSQL, text on SQLite), in row order.
    pub fn rows(&mut self, backend: BackendKind, alias: &str, rows: Rows) -> &mut Self {
        self.push("(SELECT ");
        match backend {
            BackendKind::Postgres => {
                // UNNEST of several arrays zips them into rows.
                for (i, (name, col)) in rows.cols.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    // `json` (validation only); it casts to `jsonb` on
                    // assignment where a column is `jsonb`.
                    let cast = if matches!(col, Column::Json(_)) {
                        "::json"
                    } else {
                        ""
                    };
                    self.push(&format!("{sep}u.c{i}{cast} AS {name}"));
                }
                self.push(" FROM UNNEST(");
                let names: Vec<String> = (0..rows.cols.len()).map(|i| format!("c{i}")).collect();
                for (i, (_, col)) in rows.cols.into_iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    let ty = col.pg_array_type();
                    self.bind(Arg::Array(col)).push("::").push(ty);
                }
                self.push(") AS u(").push(&names.join(", ")).push(")");
            }
            BackendKind::Sqlite => {
                for (i, (name, _)) in rows.cols.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    self.push(&format!("{sep}json_extract(value, '$[{i}]') AS {name}"));
                }
                let table: Vec<Value> = (0..rows.len())
                    .map(|r| {
                        Value::Array(rows.cols.iter().map(|(_, c)| c.sqlite_cell(r)).collect())
                    })
                    .collect();
                self.push(" FROM json_each(")
                    .bind(Value::Array(table).to_string())
                    .push(")");
            }
        }
        self.push(") AS ").push(alias);
        self
    }
}

/// One column of a table passed as a single bind argument (see [`Rows`]).
/// JSON is pre-serialized text (the store validates its size first).
#[derive(Debug, Clone)]
pub(crate) enum Column {
    Uuid(Vec<Uuid>),
    OptUuid(Vec<Option<Uuid>>),
    Text(Vec<String>),
    OptText(Vec<Option<String>>),
    I16(Vec<i16>),
    I64(Vec<i64>),
    Ts(Vec<DateTime<Utc>>),
    Json(Vec<String>),
}

impl Column {
    /// The PostgreSQL array type the argument is cast to in `UNNEST`.
    fn pg_array_type(&self) -> &'static str {
        match self {
            Column::Uuid(_) | Column::OptUuid(_) => "uuid[]",
            Column::Text(_) | Column::OptText(_) | Column::Json(_) => "text[]",
            Column::I16(_) => "int2[]",
            Column::I64(_) => "int8[]",
            Column::Ts(_) => "timestamptz[]",
        }
    }

    /// Row `i` as a JSON value, in the representation SQLite stores.
    fn sqlite_cell(&self, i: usize) -> Value {
        fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
            v.map_or(Value::Null, f)
        }
        match self {
            Column::Uuid(v) => opt(v.get(i), |u| Value::String(u.hyphenated().to_string())),
            Column::OptUuid(v) => opt(v.get(i).copied().flatten(), |u| {
                Value::String(u.hyphenated().to_string())
            }),
            Column::Text(v) | Column::Json(v) => opt(v.get(i), |t| Value::String(t.clone())),
            Column::OptText(v) => opt(v.get(i).cloned().flatten(), Value::String),
            Column::I16(v) => opt(v.get(i), |n| Value::from(*n)),
            Column::I64(v) => opt(v.get(i), |n| Value::from(*n)),
            Column::Ts(v) => opt(v.get(i), |t| Value::String(format_ts(*t))),
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::Uuid(v) => v.len(),
            Column::OptUuid(v) => v.len(),
            Column::Text(v) | Column::Json(v) => v.len(),
            Column::OptText(v) => v.len(),
            Column::I16(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::Ts(v) => v.len(),
        }
    }
}

/// A table of equally long columns, bound as whole-batch arguments so that
/// a batch is one statement whatever its size: on PostgreSQL one array per
/// column, `UNNEST`ed; on SQLite one JSON array of rows, read with
/// `json_each`. Either way the statement text is the same for every batch
/// size, so it is prepared once per connection.
pub(crate) struct Rows {
    cols: Vec<(&'static str, Column)>,
}

impl Rows {
    pub fn new() -> Self {
        Rows { cols: Vec::new() }
    }

    pub fn col(mut self, name: &'static str, col: Column) -> Self {
        self.cols.push((name, col));
        self
    }

    fn len(&self) -> usize {
        self.cols.first().map_or(0, |(_, c)| c.len())
    }
}

/// Timestamps are stored with microsecond precision on both backends; the
/// store truncates every time it writes so that what it hashes is exactly
/// what it reads back.
pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
}

pub(crate) fn now() -> DateTime<Utc> {
    micros(Utc::now())
}

/// The fixed-width UTC text form used on SQLite and in audit hashes.
pub(crate) fn format_ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| decode_error(format!("bad timestamp {s:?}: {e}")))
}

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| decode_error(format!("bad uuid {s:?}: {e}")))
}

fn parse_json(s: &str) -> Result<Value> {
    serde_json::from_str(s).map_err(|e| decode_error(format!("bad json: {e}")))
}

fn decode_error(msg: String) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(msg.into()))
}

/// Bind every [`Arg`] to a query; `$uuid`, `$ts` and `$json` convert the
/// three types whose storage differs between backends.
macro_rules! bind_all {
    ($query:expr, $args:expr, uuid: $uuid:expr, ts: $ts:expr, json: $json:expr, array: $array:expr) => {{
        let mut q = $query;
        for arg in $args {
            q = match arg {
                Arg::Uuid(v) => q.bind(v.map($uuid)),
                Arg::Text(v) => q.bind(v),
                Arg::I32(v) => q.bind(v),
                Arg::I64(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::Ts(v) => q.bind(v.map($ts)),
                Arg::Json(v) => q.bind(v.map($json)),
                Arg::Array(col) => $array(q, col),
            };
        }
        q
    }};
}

/// Run `$body` with `$q` bound to the prepared query of the matching
/// backend, `$c` to its connection and `$wrap` to the [`Row`] constructor.
macro_rules! with_query {
    ($conn:expr, $sql:expr, $args:expr, |$q:ident, $c:ident, $wrap:ident| $body:expr) => {
        match $conn {
            Conn::Pg(tx) => {
                let $c = &mut **tx;
                let $wrap = Row::Pg;
                let $q = bind_all!(
                    sqlx::query::<Postgres>(AssertSqlSafe($sql)),
                    $args,
                    uuid: |u: Uuid| u,
                    ts: |t: DateTime<Utc>| t,
                    json: sqlx::types::Json,
                    array: bind_pg_array
                );
                $body
            }
            Conn::Sqlite(tx) => {
                let $c = &mut **tx;
                let $wrap = Row::Sqlite;
                let $q = bind_all!(
                    sqlx::query::<Sqlite>(AssertSqlSafe(sqlite_dialect($sql))),
                    $args,
                    uuid: |u: Uuid| u.hyphenated().to_string(),
                    ts: format_ts,
                    json: |v: Value| v.to_string(),
                    array: bind_sqlite_array
                );
                $body
            }
        }
    };
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;
type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

fn bind_pg_array(q: PgQuery<'_>, col: Column) -> PgQuery<'_> {
    match col {
        Column::Uuid(v) => q.bind(v),
        Column::OptUuid(v) => q.bind(v),
        Column::Text(v) | Column::Json(v) => q.bind(v),
        Column::OptText(v) => q.bind(v),
        Column::I16(v) => q.bind(v),
        Column::I64(v) => q.bind(v),
        Column::Ts(v) => q.bind(v),
    }
}

/// [`Sql::rows`] binds SQLite tables as one JSON text; a bare column
/// becomes a JSON array of its cells.
fn bind_sqlite_array(q: SqliteQuery<'_>, col: Column) -> SqliteQuery<'_> {
    let cells: Vec<Value> = (0..col.len()).map(|i| col.sqlite_cell(i)).collect();
    q.bind(Value::Array(cells).to_string())
}

/// SQLite has no row locks: its write transactions (`BEGIN IMMEDIATE`)
/// hold the database lock already, so the locking clause is dropped.
fn sqlite_dialect(sql: Cow<'static, str>) -> Cow<'static, str> {
    const LOCKS: [&str; 2] = [" FOR NO KEY UPDATE", " FOR UPDATE"];
    if LOCKS.iter().any(|l| sql.contains(l)) {
        Cow::Owned(LOCKS.iter().fold(sql.into_owned(), |s, l| s.replace(l, "")))
    } else {
        sql
    }
}

/// An open transaction on one of the backends.
pub(crate) enum Conn {
    Pg(sqlx::Transaction<'static, Postgres>),
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

impl Conn {
    pub fn backend(&self) -> BackendKind {
        match self {
            Conn::Pg(_) => BackendKind::Postgres,
            Conn::Sqlite(_) => BackendKind::Sqlite,
        }
    }

    /// Run a statement, returning the rows it affected.
    pub async fn execute(
        &mut self,
        sql: impl Into<Cow<'static, str>>,
        args: Vec<Arg>,
    ) -> Result<u64> {
        let sql = sql.into();
        let started = std::time::Instant::now();
        let text = sql.clone();
        let result = with_query!(self, sql, args, |q, c, _w| q
            .execute(c)
            .await
            .map(|r| r.rows_affected()));
        crate::stats::record(&text, started.elapsed());
        Ok(result?)
    }

    pub async fn fetch_all(
        &mut self,
        sql: impl Into<Cow<'static, str>>,
        args: Vec<Arg>,
    ) -> Result<Vec<Row>> {
        let sql = sql.into();
        let started = std::time::Instant::now();
        let text = sql.clone();
        let result = with_query!(self, sql, args, |q, c, w| q
            .fetch_all(c)
            .await
            .map(|rows| rows.into_iter().map(w).collect()));
        crate::stats::record(&text, started.elapsed());
        Ok(result?)
    }

    pub async fn fetch_optional(
        &mut self,
        sql: impl Into<Cow<'static, str>>,
        args: Vec<Arg>,
    ) -> Result<Option<Row>> {
        let sql = sql.into();
        let started = std::time::Instant::now();
        let text = sql.clone();
        let result = with_query!(self, sql, args, |q, c, w| q
            .fetch_optional(c)
            .await
            .map(|r| r.map(w)));
        crate::stats::record(&text, started.elapsed());
        Ok(result?)
    }

    pub async fn fetch_one(
        &mut self,
        sql: impl Into<Cow<'static, str>>,
        args: Vec<Arg>,
    ) -> Result<Row> {
        let sql = sql.into();
        let started = std::time::Instant::now();
        let text = sql.clone();
        let result = with_query!(self, sql, args, |q, c, w| q.fetch_one(c).await.map(w));
        crate::stats::record(&text, started.elapsed());
        Ok(result?)
    }

    /// Hand the scope to PostgreSQL's row-level security as transaction-local
    /// settings. No tenant maps to the platform tenant (nil UUID), so an
    /// unscoped transaction sees the platform audit chain and nothing else;
    /// a session that never sets `app.current_tenant_id` sees no rows at all.
    /// SQLite has no RLS: the repositories' own filters are the only guard.
    pub async fn apply_scope(&mut self, scope: &Scope) -> Result<()> {
        if let Conn::Pg(tx) = self {
            sqlx::query(
                "SELECT set_config('app.current_tenant_id', $1, true), \
                        set_config('app.current_user_id', $2, true), \
                        set_config('app.platform_admin', $3, true)",
            )
            .bind(scope.chain_tenant().to_string())
            .bind(scope.user_id.map(|u| u.to_string()).unwrap_or_default())
            .bind(if scope.platform_admin { "on" } else { "off" })
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    pub async fn commit(self) -> Result<()> {
        match self {
            Conn::Pg(tx) => tx.commit().await?,
            Conn::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<()> {
        match self {
            Conn::Pg(tx) => tx.rollback().await?,
            Conn::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

/// A result row of either backend, read by column name.
pub(crate) enum Row {
    Pg(sqlx::postgres::PgRow),
    Sqlite(sqlx::sqlite::SqliteRow),
}

impl Row {
    /// Columns stored the same way on both backends (text, integers, bool).
    pub fn get<T>(&self, col: &str) -> Result<T>
    where
        T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
        T: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
    {
        Ok(match self {
            Row::Pg(r) => r.try_get(col)?,
            Row::Sqlite(r) => r.try_get(col)?,
        })
    }

    pub fn text(&self, col: &str) -> Result<String> {
        self.get(col)
    }

    pub fn opt_text(&self, col: &str) -> Result<Option<String>> {
        self.get(col)
    }

    pub fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>> {
        match self {
            Row::Pg(r) => Ok(r.try_get(col)?),
            Row::Sqlite(r) => r
                .try_get::<Option<String>, _>(col)?
                .map(|s| parse_uuid(&s))
                .transpose(),
        }
    }

    pub fn uuid(&self, col: &str) -> Result<Uuid> {
        self.opt_uuid(col)?.ok_or_else(|| null(col))
    }

    pub fn opt_ts(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        match self {
            Row::Pg(r) => Ok(r.try_get(col)?),
            Row::Sqlite(r) => r
                .try_get::<Option<String>, _>(col)?
                .map(|s| parse_ts(&s))
                .transpose(),
        }
    }

    pub fn ts(&self, col: &str) -> Result<DateTime<Utc>> {
        self.opt_ts(col)?.ok_or_else(|| null(col))
    }

    pub fn json(&self, col: &str) -> Result<Value> {
        match self {
            Row::Pg(r) => Ok(r
                .try_get::<Option<sqlx::types::Json<Value>>, _>(col)?
                .map(|j| j.0)
                .unwrap_or(Value::Null)),
            Row::Sqlite(r) => r
                .try_get::<Option<String>, _>(col)?
                .map(|s| parse_json(&s))
                .transpose()
                .map(Option::unwrap_or_default),
        }
    }

    /// A text column holding one of the crate's string enums.
    pub fn parse<T: std::str::FromStr<Err = StoreError>>(&self, col: &str) -> Result<T> {
        self.text(col)?.parse()
    }
}

fn null(col: &str) -> StoreError {
    decode_error(format!("unexpected NULL in column {col}"))
}
