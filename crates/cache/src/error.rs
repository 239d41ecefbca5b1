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
        let converted = Self::classify(error);
        metrics::counter!("zen_cache_errors_total", "kind" => converted.kind()).increment(1);
        converted
    }

    /// A fixed label per variant (`zen_cache_errors_total{kind}`).
    fn kind(&self) -> &'static str {
        match self {
            CacheError::Unavailable(_) => "unavailable",
            CacheError::InvalidUrl(_) => "invalid_url",
            CacheError::NotAnInteger => "not_an_integer",
            CacheError::Backend(_) => "backend",
            CacheError::InvalidArgument(_) => "invalid_argument",
            CacheError::Full(_) => "full",
        }
    }

    fn classify(error: fred::error::Error) -> CacheError {
        use fred::error::ErrorKind;
        let details = error.details();
        // Server replies start with an upper-case code ("ERR …", "LOADING …");
        // fred's own failures are sentences ("Failed to route command.").
        let code = details
            .split_whitespace()
            .next()
            .filter(|c| c.bytes().all(|b| b.is_ascii_uppercase()));
        match (error.kind(), code) {
            (
                ErrorKind::IO
                | ErrorKind::Timeout
                | ErrorKind::Canceled
                | ErrorKind::Backpressure
                | ErrorKind::Routing
                | ErrorKind::Cluster,
                _,
            ) => CacheError::Unavailable(error.to_string()),
            #[cfg(feature = "tls")]
            (ErrorKind::Tls, _) => CacheError::Unavailable(error.to_string()),
            (ErrorKind::Url | ErrorKind::Config, _) => CacheError::InvalidUrl(details.to_owned()),
            (_, Some("LOADING" | "BUSY" | "MASTERDOWN" | "READONLY" | "TRYAGAIN")) => {
                CacheError::Unavailable(error.to_string())
            }
            (_, Some(_)) if details.contains("not an integer") => CacheError::NotAnInteger,
            (_, Some(_)) => CacheError::Backend(error.to_string()),
            // A client-side failure: no connection, too many attempts, ...
            (ErrorKind::Unknown, None) => CacheError::Unavailable(error.to_string()),
            (_, None) => CacheError::Backend(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error, ErrorKind};

    #[test]
    fn fred_errors_are_classified() {
        let class =
            |kind, details: &str| CacheError::from_fred(Error::new(kind, details.to_owned()));
        let unavailable = [
            class(ErrorKind::IO, "Connection refused"),
            class(ErrorKind::Timeout, "Request timed out."),
            class(ErrorKind::Unknown, "Failed to route command."),
            class(ErrorKind::Unknown, "Too many failed write attempts."),
            class(
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
            ),
            class(
                ErrorKind::Unknown,
                "READONLY You can't write against a read only replica.",
            ),
        ];
        for e in unavailable {
            assert!(e.is_unavailable(), "{e:?}");
        }
        assert!(matches!(
            class(
                ErrorKind::Unknown,
                "ERR value is not an integer or out of range"
            ),
            CacheError::NotAnInteger
        ));
        assert!(matches!(
            class(
                ErrorKind::Unknown,
                "ERR Error running script (call to f_x): @user_script:2: ERR value is not an integer or out of range"
            ),
            CacheError::NotAnInteger
        ));
        assert!(matches!(
            class(
                ErrorKind::Unknown,
                "OOM command not allowed when used memory > 'maxmemory'."
            ),
            CacheError::Backend(_)
        ));
        assert!(matches!(
            class(
                ErrorKind::InvalidArgument,
                "WRONGTYPE Operation against a key"
            ),
            CacheError::Backend(_)
        ));
    }
}
