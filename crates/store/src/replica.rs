//! An optional PostgreSQL read replica (a streaming standby) for the reads that tolerate a
//! bounded staleness: list pages. Everything else stays on the primary.
//!
//! Two rules decide, both pure and unit-tested here:
//!
//! * [`route`]: only a [`ReadConsistency::BoundedStaleness`] read may go to the replica, and only
//!   while the replica is fresh. A get after a create, the event watch tail (woken by a commit
//!   notification that can arrive before the standby has replayed the commit), authorization
//!   reads, idempotency, receipts, quotas and every write need [`ReadConsistency::Current`].
//! * [`Freshness::observe`]: the way production load balancers judge a standby (comparing WAL
//!   positions rather than timestamps, which an idle primary does not advance): every tick reads
//!   the primary's `pg_current_wal_lsn()`, then the standby's `pg_last_wal_replay_lsn()`; the
//!   standby is fresh while its replay position has reached the primary's position sampled at
//!   the *previous* tick. A fresh verdict therefore promises that every commit made more than one
//!   tick before it is visible on the standby, and it holds for one tick: a list sees the
//!   database as it was at most about two ticks ago. An idle primary never looks lagging (its
//!   position does not move), and a busy one is not held to a moving target.
//!
//! Anything uncertain counts as not fresh (a failed or timed-out sample, a standby that is not
//! in recovery): lists then go to the primary, and a list that fails on the replica is answered
//! from the primary too, so the replica never causes an error of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::PgPool;

use crate::error::Result;

/// What a read needs to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Every commit acknowledged before the read began: gets (read-your-writes), the watch
    /// tail, authorization (memberships, roles), idempotency, receipts, quotas, and reads
    /// inside a transaction that writes.
    Current,
    /// The database as it was a couple of seconds ago is good enough: list pages, which a
    /// caller re-reads anyway and which page by keyset, so a stale page is consistent in itself.
    BoundedStaleness,
}

/// Which connection pool serves a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPool {
    Primary,
    Replica,
}

impl ReadPool {
    /// The `pool` label of `zen_database_reads_total`.
    pub fn label(self) -> &'static str {
        match self {
            ReadPool::Primary => "primary",
            ReadPool::Replica => "replica",
        }
    }
}

/// Where a read goes: the replica only for a read that tolerates staleness, and only while
/// the replica is fresh (`replica_fresh` is false when there is none).
pub fn route(consistency: ReadConsistency, replica_fresh: bool) -> ReadPool {
    match consistency {
        ReadConsistency::BoundedStaleness if replica_fresh => ReadPool::Replica,
        _ => ReadPool::Primary,
    }
}

/// The outcome of one freshness sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub fresh: bool,
    /// How far the standby's replay is behind the primary's current position, in bytes of
    /// WAL; `None` when either position could not be read.
    pub lag_bytes: Option<u64>,
}

/// The LSN freshness rule, fed one sample per tick (see the module documentation).
#[derive(Debug, Default, Clone)]
pub struct Freshness {
    /// The primary's position at the previous tick: the target of this one.
    previous_primary: Option<u64>,
}

impl Freshness {
    /// Judges one tick's sample: the primary's current WAL position (read first) and the
    /// standby's replay position (read after it), either `None` when it could not be read.
    pub fn observe(&mut self, primary: Option<u64>, replica: Option<u64>) -> Verdict {
        // Without a previous sample (the first tick, or the one after a failed primary
        // sample) the target is the position just read: stricter, never looser.
        let target = self.previous_primary.or(primary);
        self.previous_primary = primary;
        let lag_bytes = match (primary, replica) {
            (Some(p), Some(r)) => Some(p.saturating_sub(r)),
            _ => None,
        };
        // An unreadable primary position leaves the staleness unbounded: not fresh.
        let fresh = primary.is_some() && matches!((replica, target), (Some(r), Some(t)) if r >= t);
        Verdict { fresh, lag_bytes }
    }
}

/// How often the freshness is sampled, and so about half the staleness a list may show.
pub const FRESHNESS_INTERVAL: Duration = Duration::from_secs(1);

/// A read run on whichever pool [`crate::Store::read_stale`] picks: it gets the transaction
/// and returns a future borrowing it.
pub type ReadFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 't>>;

/// The standby's pool and its last verdict.
pub(crate) struct Replica {
    pub(crate) pool: PgPool,
    fresh: AtomicBool,
}

impl Replica {
    pub(crate) fn new(pool: PgPool) -> Self {
        // Not fresh until the first sample says so.
        Replica {
            pool,
            fresh: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_fresh(&self) -> bool {
        self.fresh.load(Ordering::Relaxed)
    }

    pub(crate) fn set_fresh(&self, fresh: bool) {
        self.fresh.store(fresh, Ordering::Relaxed);
    }
}

/// One WAL position read as a byte offset, within `timeout`; `None` when it cannot be read (or
/// is NULL: `pg_last_wal_replay_lsn()` on a server that is not a standby).
pub(crate) async fn lsn(pool: &PgPool, sql: &'static str, timeout: Duration) -> Option<u64> {
    let read = sqlx::query_scalar::<_, Option<i64>>(sql).fetch_one(pool);
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Some(position))) => u64::try_from(position).ok(),
        Ok(Ok(None)) => None,
        Ok(Err(error)) => {
            tracing::debug!(%error, "reading a WAL position failed");
            None
        }
        Err(_) => None,
    }
}

/// The primary's current WAL position, as bytes since `0/0`.
pub(crate) const PRIMARY_LSN: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint";
/// The standby's replay position, as bytes since `0/0` (NULL when not in recovery).
pub(crate) const REPLICA_LSN: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_tolerant_reads_go_to_a_fresh_replica() {
        use ReadConsistency::*;
        assert_eq!(route(BoundedStaleness, true), ReadPool::Replica);
        assert_eq!(route(BoundedStaleness, false), ReadPool::Primary);
        assert_eq!(route(Current, true), ReadPool::Primary);
        assert_eq!(route(Current, false), ReadPool::Primary);
    }

    #[test]
    fn an_idle_primary_never_looks_lagging() {
        let mut f = Freshness::default();
        for _ in 0..5 {
            let v = f.observe(Some(1000), Some(1000));
            assert!(v.fresh);
            assert_eq!(v.lag_bytes, Some(0));
        }
    }

    #[test]
    fn fresh_means_the_previous_primary_position_was_replayed() {
        let mut f = Freshness::default();
        // First tick: the target is the position just read.
        assert!(!f.observe(Some(100), Some(90)).fresh);
        // The primary moved on to 200; the standby replayed past 100 (the previous target).
        let v = f.observe(Some(200), Some(150));
        assert!(v.fresh, "{v:?}");
        assert_eq!(v.lag_bytes, Some(50));
        // The standby stopped at 150 while the primary was at 200 a tick ago: stale.
        assert!(!f.observe(Some(300), Some(150)).fresh);
        // It caught up with what the primary had a tick ago (300): fresh again, although the
        // primary moved on meanwhile.
        assert!(f.observe(Some(400), Some(300)).fresh);
    }

    #[test]
    fn a_paused_standby_stays_fresh_for_at_most_one_more_tick() {
        let mut f = Freshness::default();
        assert!(f.observe(Some(100), Some(100)).fresh);
        // Replay pauses at 100, a commit moves the primary to 120 before the next tick: every
        // commit of the previous tick was replayed, so still fresh...
        assert!(f.observe(Some(120), Some(100)).fresh);
        // ...but not once the target includes the commit.
        let v = f.observe(Some(120), Some(100));
        assert!(!v.fresh);
        assert_eq!(v.lag_bytes, Some(20));
    }

    #[test]
    fn anything_unknown_is_not_fresh() {
        let mut f = Freshness::default();
        assert!(f.observe(Some(100), Some(100)).fresh);
        // The standby cannot be read (down, or not a standby at all).
        let v = f.observe(Some(100), None);
        assert_eq!(
            v,
            Verdict {
                fresh: false,
                lag_bytes: None
            }
        );
        // The primary cannot be read: the staleness has no bound.
        assert!(!f.observe(None, Some(100)).fresh);
        // The tick after a failed primary sample has no previous target: the position just
        // read is the target.
        assert!(!f.observe(Some(130), Some(120)).fresh);
        assert!(f.observe(Some(130), Some(130)).fresh);
    }
}
