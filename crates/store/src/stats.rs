//! What the store can tell about itself for deep health and metrics: the pool's connections
//! and waiters, and Zen's own statement timing (the slowest recent statements), which
//! `/health/database` shows when PostgreSQL's `pg_stat_statements` is not available.
//!
//! Statement timing is process-wide and cheap on the hot path: a statement faster than the
//! slowest ones kept is only compared with an atomic threshold, never locked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How many slow statements are kept, and for how long.
const KEEP: usize = 10;
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Statements are shown up to this many characters (their text never holds values: every
/// value is a bind parameter).
const MAX_TEXT: usize = 300;

/// The pool's state.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open (idle and in use).
    pub size: u32,
    pub idle: u32,
    pub in_use: u32,
    /// The most the pool opens.
    pub max: u32,
    /// Callers waiting for a connection (or for their transaction to begin).
    pub waiting: u64,
}

/// One slow statement execution.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlowStatement {
    pub statement: String,
    pub duration_ms: f64,
    pub at: DateTime<Utc>,
}

struct Slowest {
    /// Microseconds a statement must exceed to be kept once the list is full.
    threshold_us: AtomicU64,
    kept: Mutex<Vec<SlowStatement>>,
}

static SLOWEST: Slowest = Slowest {
    threshold_us: AtomicU64::new(0),
    kept: Mutex::new(Vec::new()),
};

/// Notes one statement's execution time.
pub(crate) fn record(statement: &str, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    if micros <= SLOWEST.threshold_us.load(Ordering::Relaxed) {
        return;
    }
    let Ok(mut kept) = SLOWEST.kept.lock() else {
        return;
    };
    let now = Utc::now();
    prune(&mut kept, now);
    kept.push(SlowStatement {
        statement: normalize(statement),
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        at: now,
    });
    kept.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
    kept.truncate(KEEP);
    set_threshold(&kept);
}

/// The slowest statements of the last 15 minutes, slowest first.
pub fn slowest_recent() -> Vec<SlowStatement> {
    let Ok(mut kept) = SLOWEST.kept.lock() else {
        return Vec::new();
    };
    prune(&mut kept, Utc::now());
    set_threshold(&kept);
    kept.clone()
}

fn prune(kept: &mut Vec<SlowStatement>, now: DateTime<Utc>) {
    let oldest = now - chrono::Duration::from_std(WINDOW).unwrap_or_default();
    kept.retain(|s| s.at >= oldest);
}

fn set_threshold(kept: &[SlowStatement]) {
    let threshold = if kept.len() < KEEP {
        0
    } else {
        kept.last().map_or(0, |s| (s.duration_ms * 1000.0) as u64)
    };
    SLOWEST.threshold_us.store(threshold, Ordering::Relaxed);
}

/// One line, at most [`MAX_TEXT`] characters.
fn normalize(statement: &str) -> String {
    let mut out = String::with_capacity(statement.len().min(MAX_TEXT));
    for word in statement.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() >= MAX_TEXT {
            let mut end = MAX_TEXT;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_slowest_and_normalizes_text() {
        for i in 0..30u64 {
            record(
                &format!("SELECT  {i}\n FROM t"),
                Duration::from_millis(1000 + i),
            );
        }
        let kept = slowest_recent();
        assert_eq!(kept.len(), KEEP);
        assert_eq!(kept[0].statement, "SELECT 29 FROM t");
        assert!(kept
            .windows(2)
            .all(|w| w[0].duration_ms >= w[1].duration_ms));
        // Faster than everything kept: not even locked for.
        record("SELECT fast", Duration::from_micros(10));
        assert!(slowest_recent()
            .iter()
            .all(|s| s.statement != "SELECT fast"));
        assert!(normalize(&"x ".repeat(400)).chars().count() <= MAX_TEXT + 1);
    }
}
