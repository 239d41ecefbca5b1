//! Dependency outages, reported once each: the first failure to reach PostgreSQL or Redis logs
//! one line and counts one outage (`zen_dependency_outages_total{dependency}`), and
//! `zen_dependency_up{dependency}` drops to 0 until a check reaches it again, which logs one
//! line with the outage's length. Requests that fail meanwhile are answered 503 with
//! `Retry-After` by their service and log nothing more.

use std::fmt::Display;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// One dependency's state.
pub struct Dependency {
    name: &'static str,
    down_since: Mutex<Option<Instant>>,
}

/// The database (PostgreSQL or SQLite).
pub static DATABASE: Dependency = Dependency::new("database");
/// The shared cache (Redis).
pub static CACHE: Dependency = Dependency::new("cache");

impl Dependency {
    const fn new(name: &'static str) -> Self {
        Self {
            name,
            down_since: Mutex::new(None),
        }
    }

    /// A call could not reach the dependency. Logs and counts only the first failure of an
    /// outage.
    pub fn failed(&self, error: &dyn Display) {
        let mut down = self
            .down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if down.is_none() {
            *down = Some(Instant::now());
            drop(down);
            metrics::counter!("zen_dependency_outages_total", "dependency" => self.name)
                .increment(1);
            metrics::gauge!("zen_dependency_up", "dependency" => self.name).set(0.0);
            tracing::error!(dependency = self.name, %error, "dependency unavailable; answering 503 until it is back");
        }
    }

    /// A call reached the dependency: ends an outage, if one was open.
    pub fn reached(&self) {
        let mut down = self
            .down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(since) = down.take() {
            drop(down);
            metrics::gauge!("zen_dependency_up", "dependency" => self.name).set(1.0);
            tracing::warn!(
                dependency = self.name,
                outage_seconds = since.elapsed().as_secs_f64(),
                "dependency reachable again"
            );
        } else {
            drop(down);
            metrics::gauge!("zen_dependency_up", "dependency" => self.name).set(1.0);
        }
    }

    /// Whether an outage is open.
    pub fn is_down(&self) -> bool {
        self.down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}
