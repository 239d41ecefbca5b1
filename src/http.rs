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

/// The database alone, for operators chasing a readiness failure.
async fn database(State(state): State<HttpState>) -> Response {
    let check = state.readiness.check_database().await;
    let status = if check.status == Health::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(check)).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
