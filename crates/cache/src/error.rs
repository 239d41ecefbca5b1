//! The crate's one error type.

/// `Result` with [`CacheError`].
pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// What can go wrong in the cache. Messages never contain connection URLs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The cache URL is malformed or names an unsupported scheme.
    #[error("invalid cache URL: {0}")]
    InvalidUrl(String),
    /// A caller error: zero or oversized TTL, purge of an unprefixed cache.
    #[error("invalid cache argument: {0}")]
    InvalidArgument(String),
    /// The backend cannot be reached (connection refused or lost, timeout).
    /// For a mutating call the outcome is unknown.
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with an error.
    #[error("cache backend error: {0}")]
    Backend(String),
    /// `increment` on a key that holds something other than a counter.
    #[error("cache value is not an integer counter")]
    NotAnInteger,
    /// The in-memory cache reached its entry or byte bound (see
    /// `MemoryOptions`); nothing was written.
    #[error("in-memory cache is full: {0}")]
    Full(String),
}

impl CacheError {
    /// True when the backend could not be reached: callers that may degrade
    /// (e.g. a readiness probe) test this rather than matching variants.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CacheError::Unavailable(_))
    }

    pub(crate) fn from_fred(error: fred::error::Error) -> CacheError {
        use fred::error::ErrorKind;
        let details = error.details();
        match error.kind() {
            ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Backpressure => {
                CacheError::Unavailable(error.to_string())
            }
            #[cfg(feature = "tls")]
            ErrorKind::Tls => CacheError::Unavailable(error.to_string()),
            ErrorKind::Url | ErrorKind::Config => CacheError::InvalidUrl(details.to_owned()),
            _ if details.contains("not an integer") || details.contains("overflow") => {
                CacheError::NotAnInteger
            }
            _ => CacheError::Backend(error.to_string()),
        }
    }
}
