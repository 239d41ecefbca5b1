//! PostgreSQL stopped for 15 s, and restarted (`pg_ctl restart -m fast`), under webhook load,
//! on a private PostgreSQL (never the shared one): every delivery is answered within 3 s, only
//! 202 or 503 with `Retry-After` (never a 500); Zen reports unready while the database is gone
//! and ready again by itself; deliveries are accepted again within 2 s of the database's
//! return; every 202 is stored; the tenant's audit chain verifies. Needs the PostgreSQL 15
//! binaries (tests/support/postgres.rs; in CI their absence is a failure).

mod support;

use std::time::Duration;

use support::drill::{free_port, webhook_outage_drill, Outage};
use support::postgres::PrivatePostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_under_load_is_answered_fast_and_loses_nothing() {
    let _one = support::drill::one_at_a_time().await;
    let Some(postgres) = PrivatePostgres::create_or_skip(free_port()) else {
        return;
    };
    webhook_outage_drill(
        &["--database-url".into(), postgres.url()],
        Outage::down_for("PostgreSQL", Duration::from_secs(15)),
        || postgres.stop(),
        || async { postgres.start() },
    )
    .await;
    drop(postgres);
}

/// A restart closes every pooled connection under Zen's feet: the next statement on each of
/// them fails. Those failures must be answered like an outage (503 + `Retry-After`), and the
/// pool must replace the connections by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restart_under_load_loses_nothing_and_is_never_a_500() {
    let _one = support::drill::one_at_a_time().await;
    let Some(postgres) = PrivatePostgres::create_or_skip(free_port()) else {
        return;
    };
    webhook_outage_drill(
        &["--database-url".into(), postgres.url()],
        Outage::restart("PostgreSQL"),
        || postgres.restart(),
        || async { true },
    )
    .await;
    drop(postgres);
}
