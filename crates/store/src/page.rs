//! Keyset pagination with opaque page tokens.
//!
//! Lists are ordered newest first on `(created_at, id)` (audit: on `seq`),
//! and a page token names the last row returned. The next page is the rows
//! strictly after it in that order, so rows inserted or deleted between
//! calls never cause duplicates or misses among the rows that stay.
//! Tokens are hex so they survive URLs and headers unescaped; their content
//! is not an API.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::StoreError;

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
            Some(t) => hex::decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .map(Some)
                .ok_or_else(|| StoreError::invalid("page_token", "malformed page token")),
        }
    }
}

pub(crate) fn time_token(at: DateTime<Utc>, id: Uuid) -> String {
    hex::encode(format!("t1|{}|{}", at.timestamp_micros(), id))
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
