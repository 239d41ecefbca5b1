//! Redis stopped for 15 s under webhook load, on a private Redis (never the shared one): every
//! delivery is answered within 3 s, only 202 or 503 with `Retry-After`; deliveries are accepted
//! again within 2 s of Redis's return; every 202 is stored; the tenant's audit chain verifies.
//! Needs `redis-server` and `redis-cli` on the PATH (in CI their absence is a failure).

mod support;

use std::time::Duration;

use support::drill::{redis_answers, start_redis, stop_redis, webhook_outage_drill, PrivateRedis};

const OUTAGE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_under_load_is_answered_fast_and_loses_nothing() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let port = redis.0;
    webhook_outage_drill(
        &["--redis-url".into(), redis.url()],
        "Redis",
        OUTAGE,
        || {
            stop_redis(port);
            true
        },
        || async move { start_redis(port) && redis_answers(port).await },
    )
    .await;
    drop(redis);
}
