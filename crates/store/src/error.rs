//! The one error type of this crate.
//!
//! Each variant maps to one gRPC status code at the service edge:
//!
//! | variant            | gRPC code             |
//! |--------------------|-----------------------|
//! | `NotFound`         | `NOT_FOUND`           |
//! | `AlreadyExists`    | `ALREADY_EXISTS`      |
//! | `Conflict`         | `ABORTED` (retryable) |
//! | `VersionMismatch`  | `ABORTED` (re-read, then retry) |
//! | `Precondition`     | `FAILED_PRECONDITION` (`code` in the error info) |
//! | `QuotaExceeded`    | `RESOURCE_EXHAUSTED`  |
//! | `Invalid`          | `INVALID_ARGUMENT`    |
//! | `PermissionDenied` | `PERMISSION_DENIED`   |
//! | `Migration`        | `FAILED_PRECONDITION` (at start: refuse to serve) |
//! | `WritesRefused`    | `UNAVAILABLE` (disk full or read-only: retry later) |
//! | `Database`         | `UNAVAILABLE` / `INTERNAL` |

use std::borrow::Cow;

/// The stable codes of [`StoreError::Precondition`]: clients branch on
/// these (gRPC `ErrorInfo.reason`), never on the human-readable text.
pub mod precondition {
    /// Demoting or removing the last owner of a tenant.
    pub const LAST_OWNER: &str = "LAST_OWNER";
    /// Accepting an invite that was already accepted, or has expired.
    pub const INVITE_NOT_PENDING: &str = "INVITE_NOT_PENDING";
    /// Consuming a bootstrap token that was already used, has expired, or
    /// whose cluster was deleted.
    pub const BOOTSTRAP_TOKEN_INVALID: &str = "BOOTSTRAP_TOKEN_INVALID";
    /// Work that needs an active tenant (creating or updating clusters,
    /// issuing invites and bootstrap tokens, enrolling an agent) in a
    /// suspended one.
    pub const TENANT_SUSPENDED: &str = "TENANT_SUSPENDED";
    /// Any other transition the current state of a resource does not allow.
    pub const INVALID_STATE: &str = "INVALID_STATE";

    /// Every code, for exhaustive mapping tests.
    pub const ALL: &[&str] = &[
        LAST_OWNER,
        INVITE_NOT_PENDING,
        BOOTSTRAP_TOKEN_INVALID,
        TENANT_SUSPENDED,
        INVALID_STATE,
    ];
}

/// Result alias used across the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Errors returned by the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist, or exists outside the caller's scope (the two
    /// are deliberately indistinguishable).
    #[error("{what} not found")]
    NotFound { what: &'static str },

    /// A unique constraint refused the write (name taken, duplicate member …).
    #[error("{what} already exists")]
    AlreadyExists { what: &'static str },

    /// A concurrent transaction got in the way (serialization failure,
    /// deadlock, SQLite busy). Retrying the whole unit of work may succeed.
    #[error("conflict: {reason}")]
    Conflict { reason: Cow<'static, str> },

    /// An optimistic-concurrency check failed: the caller's
    /// `expected_version` is not the row's. `current` is the version now
    /// stored; re-read the row and retry the edit on top of it.
    #[error("{what} was changed concurrently (current version {current})")]
    VersionMismatch { what: &'static str, current: i64 },

    /// The operation is valid but the current state forbids it. `code` is
    /// one of the stable [`precondition`] codes (a machine-readable reason
    /// for clients); `reason` is for people.
    #[error("failed precondition ({code}): {reason}")]
    Precondition {
        code: &'static str,
        reason: Cow<'static, str>,
    },

    /// A tenant quota would be exceeded.
    #[error("quota exceeded: {what} (limit {limit})")]
    QuotaExceeded { what: &'static str, limit: i64 },

    /// An argument is malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: Cow<'static, str>,
    },

    /// The database refused the statement for lack of privilege, or a
    /// row-level security policy refused a row: a scoping bug upstream.
    #[error("permission denied: {reason}")]
    PermissionDenied { reason: String },

    /// The schema is not in a state this binary can serve (pending, dirty,
    /// unknown or modified migrations).
    #[error("migrations: {reason}")]
    Migration { reason: String },

    /// The database answers but cannot write: `reason` is `"full"` (no space left: SQLite's
    /// `SQLITE_FULL`, PostgreSQL's `disk_full`), `"read_only"` (a read-only file or file
    /// system, or a PostgreSQL that became a standby) or `"io_error"` (SQLite could not use
    /// its files). Nothing was committed; the same request succeeds once the operator has
    /// freed space or made the volume writable again.
    #[error("the database refuses writes ({reason}): {detail}")]
    WritesRefused {
        reason: &'static str,
        detail: String,
    },

    /// Any other database error (connectivity, syntax, …).
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        StoreError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// A [`StoreError::Precondition`]; `code` is one of [`precondition`]'s.
    pub(crate) fn precondition(code: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        StoreError::Precondition {
            code,
            reason: reason.into(),
        }
    }

    /// The database file at `path` could not be opened for writing: `os` says why.
    pub(crate) fn writes_refused_at_open(path: &std::path::Path, os: std::io::Error) -> Self {
        let reason = match os.raw_os_error() {
            Some(30) => "read_only", // EROFS
            Some(28) => "full",      // ENOSPC
            _ => "io_error",
        };
        StoreError::WritesRefused {
            reason,
            detail: format!(
                "cannot write the database file {}: {os}{}",
                path.display(),
                if reason == "read_only" {
                    " (a read-only file system: mount the data volume read-write)"
                } else {
                    ""
                }
            ),
        }
    }

    fn writes_refused(reason: &'static str, detail: &str) -> Self {
        StoreError::WritesRefused {
            reason,
            detail: detail.to_owned(),
        }
    }

    /// The precondition code, when this is a [`StoreError::Precondition`].
    pub fn precondition_code(&self) -> Option<&'static str> {
        match self {
            StoreError::Precondition { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when the database could not be reached (no connection within the pool's acquire
    /// timeout, a connection lost or refused, the server shutting down): nothing was
    /// committed, and the same request may succeed once the database is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(error) => match error {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_) => true,
                // admin_shutdown, crash_shutdown, cannot_connect_now, connection exceptions
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
                _ => false,
            },
            _ => false,
        }
    }

    /// Why the database refused to write, for a [`StoreError::WritesRefused`].
    pub fn write_refusal(&self) -> Option<&'static str> {
        match self {
            StoreError::WritesRefused { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// True when retrying the whole transaction may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// Turn a unique violation into `AlreadyExists { what }`; leave others.
    pub(crate) fn on_unique(self, what: &'static str) -> Self {
        match &self {
            StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                StoreError::AlreadyExists { what }
            }
            _ => self,
        }
    }

    /// Turn a foreign-key violation into `NotFound { what }`; leave others.
    pub(crate) fn on_foreign_key(self, what: &'static str) -> Self {
        match &self {
            StoreError::Database(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                StoreError::NotFound { what }
            }
            _ => self,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            let code = db.code().unwrap_or_default();
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                // PostgreSQL / CockroachDB SQLSTATEs.
                match code.as_ref() {
                    "40001" | "40P01" => {
                        return StoreError::Conflict {
                            reason: format!("concurrent transaction: {}", db.message()).into(),
                        }
                    }
                    // character_not_in_repertoire / untranslatable_character: a NUL (or
                    // bytes that are not UTF-8) in a text value. The gRPC front refuses such
                    // input first; this keeps any path it misses a 400 rather than a 503.
                    "22021" | "22P05" => {
                        return StoreError::Invalid {
                            field: "text",
                            reason: "must not contain NUL characters".into(),
                        }
                    }
                    "53100" => return StoreError::writes_refused("full", db.message()),
                    "25006" => return StoreError::writes_refused("read_only", db.message()),
                    // insufficient_privilege: missing GRANT, or a row-level
                    // security policy refused a new row.
                    "42501" => {
                        return StoreError::PermissionDenied {
                            reason: db.message().to_owned(),
                        }
                    }
                    _ => {}
                }
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite extended result codes: the primary code is the low
                // byte. 5 = SQLITE_BUSY, 6 = SQLITE_LOCKED.
                if let Ok(n) = code.parse::<i64>() {
                    match n & 0xff {
                        5 | 6 => {
                            return StoreError::Conflict {
                                reason: format!("database busy: {}", db.message()).into(),
                            }
                        }
                        13 => return StoreError::writes_refused("full", db.message()),
                        8 => return StoreError::writes_refused("read_only", db.message()),
                        10 => return StoreError::writes_refused("io_error", db.message()),
                        _ => {}
                    }
                }
            }
        }
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => StoreError::from(e),
            other => StoreError::Migration {
                reason: other.to_string(),
            },
        }
    }
}
