//! The operational HTTP routes. The public listener (which the REST gateway and webhooks
//! share) answers liveness and readiness; the admin listener (`--admin-addr`, loopback by
//! default) adds metrics and deep health, which must not face the internet: metric labels
//! name webhook sources, whose ids are the secret part of their URLs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::readiness::{Health, Readiness};

#[derive(Clone)]
pub struct HttpState {
    pub readiness: Arc<Readiness>,
    pub metrics: PrometheusHandle,
    pub store: Arc<zen_store::Store>,
}

/// The public listener's own routes (no authentication); the gateway adds its own after these.
pub fn public_router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/readyz", get(ready))
        .with_state(state)
}

/// The admin listener: the public probes, deep health and the Prometheus scrape.
pub fn admin_router(state: HttpState) -> Router {
    public_router(state.clone()).merge(
        Router::new()
            .route("/health/database", get(database))
            .route("/metrics", get(metrics))
            .with_state(state),
    )
}

/// Liveness: 200 while the process runs.
async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: 200 only when every dependency answers and migrations are applied.
async fn ready(State(state): State<HttpState>) -> Response {
    let report = state.readiness.check().await;
    let status = if report.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if report.ready() { "ready" } else { "not_ready" },
        "checks": report.checks,
    });
    (status, Json(body)).into_response()
}

/// The database in depth, for operators chasing a readiness failure or a slow Zen: a ping
/// (its latency), the migrations, the pool (connections by state, callers waiting) and the
/// slowest recent statements (PostgreSQL's `pg_stat_statements` when the extension is there,
/// otherwise Zen's own timing of the last 15 minutes). 503 when the database does not answer
/// or its schema is not Zen's; `degraded` when it answers slowly or every connection is busy
/// with callers waiting.
async fn database(State(state): State<HttpState>) -> Response {
    let (ping, migrations) = tokio::join!(
        state.readiness.check_database(),
        state.readiness.check_migrations()
    );
    let pool = state.store.pool_stats();
    let (source, slowest) = match state.store.pg_stat_statements(10).await {
        Some(statements) => ("pg_stat_statements", statements),
        None => ("zen", zen_store::slowest_recent()),
    };
    let exhausted = pool.waiting > 0 && pool.in_use >= pool.max;
    let health = if ping.status == Health::Unhealthy || migrations.status == Health::Unhealthy {
        Health::Unhealthy
    } else if ping.status == Health::Degraded || exhausted {
        Health::Degraded
    } else {
        Health::Healthy
    };
    let status = if health == Health::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "status": health,
        "backend": format!("{:?}", state.store.kind()).to_lowercase(),
        "ping": ping,
        "migrations": migrations,
        "pool": pool,
        "slowest_statements": { "source": source, "statements": slowest },
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let pool = state.store.pool_stats();
    for (label, value) in [
        ("idle", u64::from(pool.idle)),
        ("in_use", u64::from(pool.in_use)),
        ("max", u64::from(pool.max)),
        ("waiting", pool.waiting),
    ] {
        metrics::gauge!("zen_db_pool_connections", "state" => label).set(value as f64);
    }
    let mut text = state.metrics.render();
    // Read from the store at scrape time, so every replica shows the same clusters and a
    // deleted cluster's series ends with it.
    text.push_str(&crate::cluster_metrics::render(&state.store).await);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
