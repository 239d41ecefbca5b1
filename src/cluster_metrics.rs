//! Per-cluster series read from the store at scrape time: `zen_clusters_registered` and
//! `zen_cluster_last_heartbeat_timestamp_seconds{tenant,cluster}`.
//!
//! They are rendered here rather than kept in the metrics recorder because the store is the
//! truth every replica shares: an agent's heartbeats reach one replica, yet the alert on a
//! silent cluster must not depend on which one Prometheus asks, and a deleted cluster's series
//! must end instead of going stale. Cardinality is bounded by the registered clusters, and at
//! most [`MAX_CLUSTERS`] (the most recently seen) are listed one by one.

use std::fmt::Write as _;
use std::time::Duration;

use zen_store::{Scope, Store};

/// The most clusters exported with their own series per scrape.
pub const MAX_CLUSTERS: i64 = 10_000;
/// A scrape never waits longer than this for the store; the series are left out then.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The Prometheus text of the per-cluster series (empty when the store does not answer).
pub async fn render(store: &Store) -> String {
    let read = async {
        let mut tx = store.begin_read(&Scope::platform_admin(None)).await?;
        let heartbeats = tx.clusters().heartbeats(MAX_CLUSTERS).await;
        let _ = tx.rollback().await;
        heartbeats
    };
    let heartbeats = match tokio::time::timeout(QUERY_TIMEOUT, read).await {
        Ok(Ok(heartbeats)) => heartbeats,
        Ok(Err(error)) => {
            tracing::debug!(%error, "cluster metrics left out of this scrape");
            return String::new();
        }
        Err(_) => return String::new(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP zen_clusters_registered Live clusters registered, in every tenant (at most {MAX_CLUSTERS} are listed one by one)."
    );
    let _ = writeln!(out, "# TYPE zen_clusters_registered gauge");
    let _ = writeln!(out, "zen_clusters_registered {}", heartbeats.len());
    let _ = writeln!(
        out,
        "# HELP zen_cluster_last_heartbeat_timestamp_seconds When a cluster's agent was last heard from (Unix time); clusters never connected are left out."
    );
    let _ = writeln!(
        out,
        "# TYPE zen_cluster_last_heartbeat_timestamp_seconds gauge"
    );
    for heartbeat in &heartbeats {
        if let Some(seen) = heartbeat.last_seen_at {
            let _ = writeln!(
                out,
                "zen_cluster_last_heartbeat_timestamp_seconds{{tenant=\"{}\",cluster=\"{}\"}} {:.3}",
                heartbeat.tenant_id,
                heartbeat.cluster_id,
                seen.timestamp_millis() as f64 / 1000.0
            );
        }
    }
    out
}
