//! Redis stopped for 30 s, and restarted, under webhook load, on a private Redis (never the
//! shared one): every delivery is answered within 3 s, only 202 or 503 with `Retry-After`; Zen
//! reports unready while Redis is gone and ready again by itself, without a restart;
//! deliveries are accepted again within 2 s of Redis's return; every 202 is stored; the
//! tenant's audit chain verifies. Needs `redis-server` and `redis-cli` on the PATH (in CI
//! their absence is a failure).

mod support;

use std::time::Duration;

use support::drill::{
    redis_answers, start_redis, stop_redis, webhook_outage_drill, Outage, PrivateRedis,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_under_load_is_answered_fast_and_loses_nothing() {
    let _one = support::drill::one_at_a_time().await;
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let port = redis.0;
    webhook_outage_drill(
        &["--redis-url".into(), redis.url()],
        Outage::down_for("Redis", Duration::from_secs(30)),
        || {
            stop_redis(port);
            true
        },
        || async move { start_redis(port) && redis_answers(port).await },
    )
    .await;
    drop(redis);
}

/// Redis restarted at once (empty: no persistence): every connection, subscription, session,
/// nonce and rate-limit window is gone, and Zen carries on without a restart of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_under_load_loses_nothing() {
    let _one = support::drill::one_at_a_time().await;
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let port = redis.0;
    webhook_outage_drill(
        &["--redis-url".into(), redis.url()],
        Outage::restart("Redis"),
        || {
            stop_redis(port);
            true
        },
        || async move { start_redis(port) && redis_answers(port).await },
    )
    .await;
    drop(redis);
}
