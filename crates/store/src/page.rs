//! Keyset pagination with opaque page tokens.
//!
//! Most lists are ordered newest first on `(created_at, id)` (audit: on
//! `seq`); lists whose contract names another order (tenants and clusters
//! by name, members by email) are ordered on `(text key, id)` with
//! [`TextKeyset`]. A page token names the last row returned. The next page
//! is the rows strictly after it in that order, so rows inserted or deleted
//! between calls never cause duplicates or misses among the rows that stay.
//! Tokens are hex so they survive URLs and headers unescaped; their content
//! is not an API.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{Row, Sql};
use crate::error::{Result, StoreError};
use crate::repos::SqlTx;
use crate::store::BackendKind;

/// Default page size when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Larger requests are clamped to this.
pub const MAX_PAGE_SIZE: u32 = 500;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// 0 means [`DEFAULT_PAGE_SIZE`]; clamped to [`MAX_PAGE_SIZE`].
    pub page_size: u32,
    /// The `next_page_token` of the previous page; `None` for the first page.
    pub page_token: Option<String>,
}

impl PageRequest {
    pub fn first(page_size: u32) -> Self {
        PageRequest {
            page_size,
            page_token: None,
        }
    }

    pub fn next(page_size: u32, token: impl Into<String>) -> Self {
        PageRequest {
            page_size,
            page_token: Some(token.into()),
        }
    }

    pub(crate) fn limit(&self) -> i64 {
        i64::from(match self.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        })
    }

    /// Decoded `(created_at, id)` cursor, if any.
    pub(crate) fn time_cursor(&self) -> Result<Option<(DateTime<Utc>, Uuid)>, StoreError> {
        let Some(raw) = self.token()? else {
            return Ok(None);
        };
        let bad = || StoreError::invalid("page_token", "malformed page token");
        let rest = raw.strip_prefix("t1|").ok_or_else(bad)?;
        let (micros, id) = rest.split_once('|').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
        let id = Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(Some((at, id)))
    }

    /// Decoded `(text key, id)` cursor, if any.
    pub(crate) fn text_cursor(&self) -> Result<Option<(String, Uuid)>, StoreError> {
        let Some(raw) = self.token()? else {
            return Ok(None);
        };
        let bad = || StoreError::invalid("page_token", "malformed page token");
        // The key may hold `|` (an email can); the id after the last one cannot.
        let (key, id) = raw
            .strip_prefix("k1|")
            .and_then(|rest| rest.rsplit_once('|'))
            .ok_or_else(bad)?;
        let id = Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(Some((key.to_owned(), id)))
    }

    /// Decoded `seq` cursor, if any.
    pub(crate) fn seq_cursor(&self) -> Result<Option<i64>, StoreError> {
        let Some(raw) = self.token()? else {
            return Ok(None);
        };
        raw.strip_prefix("s1|")
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| StoreError::invalid("page_token", "malformed page token"))
    }

    fn token(&self) -> Result<Option<String>, StoreError> {
        match self.page_token.as_deref() {
            None | Some("") => Ok(None),
            // A token is ours only if it decodes to the printable text we encoded: a NUL or
            // other control character (which PostgreSQL cannot even compare) is malformed.
            Some(t) => hex::decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|text| !text.chars().any(char::is_control))
                .map(Some)
                .ok_or_else(|| StoreError::invalid("page_token", "malformed page token")),
        }
    }
}

pub(crate) fn time_token(at: DateTime<Utc>, id: Uuid) -> String {
    hex::encode(format!("t1|{}|{}", at.timestamp_micros(), id))
}

pub(crate) fn text_token(key: &str, id: Uuid) -> String {
    hex::encode(format!("k1|{key}|{id}"))
}

pub(crate) fn seq_token(seq: i64) -> String {
    hex::encode(format!("s1|{seq}"))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// `None` on the last page.
    pub next_page_token: Option<String>,
}

impl<T> Page<T> {
    /// Build a page from up to `limit + 1` fetched rows: the extra row only
    /// says that another page exists.
    pub(crate) fn from_overfetch(
        mut items: Vec<T>,
        limit: i64,
        token: impl Fn(&T) -> String,
    ) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next_page_token = if items.len() > limit {
            items.truncate(limit);
            items.last().map(token)
        } else {
            None
        };
        Page {
            items,
            next_page_token,
        }
    }
}

/// The key of a list ordered by a text expression, ascending, ties broken
/// by a UUID column. Text compares bytewise on both backends (`COLLATE "C"`
/// on PostgreSQL, SQLite's default BINARY), so the order does not depend on
/// the database's locale and is the same on both; UUIDs compare as their
/// lowercase text on SQLite and as bytes on PostgreSQL, which agree.
#[derive(Clone, Copy)]
pub(crate) struct TextKeyset {
    /// The key on PostgreSQL, `COLLATE "C"` included where it matters.
    pub postgres: &'static str,
    /// The same key on SQLite (which has no "C" collation; BINARY is it).
    pub sqlite: &'static str,
    /// The tiebreak column.
    pub id: &'static str,
}

/// Lists ordered by their `name` column (tenants, clusters, webhook sources).
pub(crate) const BY_NAME: TextKeyset = TextKeyset::column(r#"name COLLATE "C""#, "name");

impl TextKeyset {
    /// `column`, bytewise.
    pub(crate) const fn column(postgres: &'static str, sqlite: &'static str) -> Self {
        TextKeyset {
            postgres,
            sqlite,
            id: "id",
        }
    }

    fn key(&self, backend: BackendKind) -> &'static str {
        match backend {
            BackendKind::Postgres => self.postgres,
            BackendKind::Sqlite => self.sqlite,
        }
    }
}

impl SqlTx {
    /// Finish and run a list ordered by `keyset`: the page token's
    /// condition, the order, and a limit one row past the page (that extra
    /// row only says whether a next page exists). `key` gives a row's key
    /// exactly as the SQL expression computes it, for the next token.
    pub(crate) async fn text_page<T: Send>(
        &mut self,
        mut sql: Sql,
        page: &PageRequest,
        keyset: TextKeyset,
        map: fn(&Row) -> Result<T>,
        key: fn(&T) -> (String, Uuid),
    ) -> Result<Page<T>> {
        let limit = page.limit();
        let expr = keyset.key(self.conn.backend());
        if let Some((after, id)) = page.text_cursor()? {
            sql.push(" AND (")
                .push(expr)
                .push(", ")
                .push(keyset.id)
                .push(") > (")
                .bind(after)
                .push(", ")
                .bind(id)
                .push(")");
        }
        sql.push(" ORDER BY ")
            .push(expr)
            .push(", ")
            .push(keyset.id)
            .push(" LIMIT ")
            .bind(limit + 1);
        let rows = self.conn.fetch_all(sql.text, sql.args).await?;
        let items = rows.iter().map(map).collect::<Result<Vec<T>>>()?;
        Ok(Page::from_overfetch(items, limit, |item| {
            let (k, id) = key(item);
            text_token(&k, id)
        }))
    }
}
