//! Redis failovers under webhook load, on private deployments (never the shared Redis): a
//! Redis Cluster of 3 primaries with a replica each, whose primary is failed over by
//! `CLUSTER FAILOVER` on its replica or killed with SIGKILL (its replica promoted once the
//! cluster's node timeout has passed), and a Sentinel-managed primary with a replica, failed over
//! by `SENTINEL FAILOVER`. Zen (the real binary) is not restarted: every delivery is answered
//! within 3 s, only 202 or 503 with `Retry-After`; deliveries are accepted again within a bound
//! of the failover's completion; `/ready` is true again; every 202 is stored exactly once; the
//! tenant's audit chain verifies. Needs `redis-server` and `redis-cli` on the PATH (in CI their
//! absence is a failure).

mod support;

// The launchers the cache crate's own tests use.
#[path = "../crates/cache/tests/common/servers.rs"]
mod servers;

use std::time::Duration;

use servers::{cluster_failover, kill_server, RedisCluster, RedisSentinel};
use support::drill::{webhook_failover_drill, Failover};

/// The cluster's node timeout: a primary that does not answer for this long is failed, and
/// its replica promoted. Short, so that the drill stays short; long enough that a loaded
/// machine does not fail a healthy node.
const NODE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long after a failover completes deliveries may still be refused: the client reconnects
/// with a backoff of at most 1 s (docs/RELIABILITY.md) and then reads the cluster's slots
/// again; a second more for a loaded machine.
const SETTLE: Duration = Duration::from_secs(2);

fn report(what: &str, f: &Failover) {
    eprintln!(
        "{what}: {} deliveries, {} accepted (202), {} refused (503), slowest answer {:?}; \
         failover took {:?}; accepting again {:?} after the trigger (last refusal sent {:?} \
         past the completion); /ready false in {} of {} samples (every 250 ms)",
        f.deliveries,
        f.accepted,
        f.refused,
        f.slowest,
        f.took,
        f.accepting_again_after,
        f.refused_past_completion,
        f.unready_samples,
        f.samples
    );
}

/// The failover drill on a Redis Cluster of 3 primaries with a replica each: `trigger` gets a
/// primary and its replica, and the failover is complete once that replica serves its slots.
/// `None` where the cluster cannot be started (a skip outside CI).
async fn cluster_drill(what: &str, trigger: impl FnOnce(u16, u16) -> bool) -> Option<Failover> {
    let cluster = RedisCluster::start_with(1, NODE_TIMEOUT)?;
    let (primary, replica) = cluster.primary_and_replica();
    let failover = webhook_failover_drill(
        &["--redis-url".into(), cluster.url()],
        "Redis Cluster",
        SETTLE,
        || trigger(primary, replica),
        || cluster.failed_over_to(replica),
    )
    .await;
    report(what, &failover);
    Some(failover)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinated_cluster_failover_under_load_loses_nothing() {
    // One drill at a time: a machine busy with three Redis deployments could miss a node
    // timeout (and fail over a healthy primary) or the 3 s answer bound for reasons of its own.
    let _one = support::drill::one_at_a_time().await;
    let Some(failover) =
        cluster_drill("CLUSTER FAILOVER", |_, replica| cluster_failover(replica)).await
    else {
        return;
    };
    // Coordinated: the primary hands over once its replica has caught up, no timeout involved.
    assert!(failover.took < Duration::from_secs(5), "{failover:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_primary_killed_under_load_fails_over_and_loses_nothing() {
    let _one = support::drill::one_at_a_time().await;
    let Some(failover) = cluster_drill("primary killed (SIGKILL)", |primary, _| {
        kill_server(primary)
    })
    .await
    else {
        return;
    };
    // The failure is detected after the node timeout; the replica waits 0.5-1 s, is elected
    // and takes the slots over: a few seconds more at most.
    assert!(
        failover.took < NODE_TIMEOUT + Duration::from_secs(5),
        "{failover:?}"
    );
    assert!(
        failover.refused > 0,
        "the kill went unnoticed: {failover:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_under_load_is_followed_without_a_restart() {
    let _one = support::drill::one_at_a_time().await;
    let Some(sentinel) = RedisSentinel::start_with(1) else {
        return;
    };
    let (primary, replicas) = sentinel.ports();
    let replica = replicas[0];
    // Complete once Zen has left the former primary too: it must follow the Sentinel rather
    // than wait for the Sentinel to close its connections.
    let failover = webhook_failover_drill(
        &["--redis-url".into(), sentinel.url()],
        "Redis Sentinel",
        SETTLE,
        || sentinel.failover(),
        || sentinel.followed_to(replica, primary),
    )
    .await;
    report("SENTINEL FAILOVER", &failover);
    // The Sentinel switches in about a second; Zen asks it every 500 ms. A Zen that waited to
    // be disconnected would take the Sentinel's 10 s look at the former primary.
    assert!(failover.took < Duration::from_secs(5), "{failover:?}");
    drop(sentinel);
}
