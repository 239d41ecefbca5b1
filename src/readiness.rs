//! Dependency checks shared by `/ready`, `/readyz`, `/health/database` and the gRPC health
//! service, so HTTP and gRPC never disagree about whether Zen can serve.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use zen_cache::Cache;
use zen_store::Store;

use crate::grpc::services::SERVICE_NAMES;

/// A dependency answering slower than this is degraded; one not answering within
/// [`CHECK_TIMEOUT`] is unhealthy.
const SLOW: Duration = Duration::from_millis(500);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub status: Health,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub latency_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub checks: BTreeMap<&'static str, Check>,
}

impl Report {
    /// Ready when nothing is unhealthy (degraded still serves).
    pub fn ready(&self) -> bool {
        self.checks.values().all(|c| c.status != Health::Unhealthy)
    }
}

pub struct Readiness {
    store: Arc<Store>,
    cache: Arc<dyn Cache>,
}

impl Readiness {
    pub fn new(store: Arc<Store>, cache: Arc<dyn Cache>) -> Self {
        Self { store, cache }
    }

    pub async fn check(&self) -> Report {
        let cache = timed(async {
            self.cache
                .ping()
                .await
                .map(|()| format!("{} cache answers", self.cache.backend()))
                .map_err(|e| e.to_string())
        });
        let (database, migrations, cache) =
            tokio::join!(self.check_database(), self.check_migrations(), cache);
        // The checks open and close outages too, so the end of one is noticed even when no
        // request comes.
        for (dependency, check) in [
            (&crate::outage::DATABASE, &database),
            (&crate::outage::CACHE, &cache),
        ] {
            match check.status {
                Health::Unhealthy => {
                    dependency.failed(&check.detail.as_deref().unwrap_or("no answer"))
                }
                _ => dependency.reached(),
            }
        }
        let mut checks = BTreeMap::new();
        checks.insert("database", database);
        checks.insert("migrations", migrations);
        checks.insert("cache", cache);
        Report { checks }
    }

    pub async fn check_database(&self) -> Check {
        timed(async {
            self.store
                .ping()
                .await
                .map(|()| format!("{:?} answers", self.store.kind()))
                .map_err(|e| e.to_string())
        })
        .await
    }

    pub async fn check_migrations(&self) -> Check {
        let mut check = timed(async {
            let status = self
                .store
                .migration_status()
                .await
                .map_err(|e| e.to_string())?;
            if status.is_current() {
                Ok(format!("{} applied", status.applied.len()))
            } else {
                Err(status
                    .problem()
                    .unwrap_or_else(|| format!("{} migration(s) pending", status.pending.len())))
            }
        })
        .await;
        // How long the query took says nothing about migrations.
        if check.status == Health::Degraded {
            check.status = Health::Healthy;
        }
        check
    }
}

async fn timed(check: impl std::future::Future<Output = Result<String, String>>) -> Check {
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, check).await;
    let latency = started.elapsed();
    let (status, detail) = match outcome {
        Ok(Ok(detail)) if latency > SLOW => (Health::Degraded, detail),
        Ok(Ok(detail)) => (Health::Healthy, detail),
        Ok(Err(error)) => (Health::Unhealthy, error),
        Err(_) => (
            Health::Unhealthy,
            format!("no answer within {CHECK_TIMEOUT:?}"),
        ),
    };
    Check {
        status,
        detail: Some(detail),
        latency_ms: latency.as_secs_f64() * 1000.0,
    }
}

/// Keeps the gRPC health service in step with the dependency checks: every Zen service (and
/// the server as a whole, `""`) is SERVING while ready and NOT_SERVING otherwise.
pub async fn drive_grpc_health(
    readiness: Arc<Readiness>,
    reporter: HealthReporter,
    interval: Duration,
) {
    let mut last = None;
    loop {
        let serving = readiness.check().await.ready();
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in SERVICE_NAMES.iter().copied().chain([""]) {
                reporter.set_service_status(name, status).await;
            }
            tracing::info!(serving, "gRPC health status changed");
            last = Some(serving);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Marks everything NOT_SERVING, e.g. when draining for shutdown.
pub async fn set_not_serving(reporter: &HealthReporter) {
    for name in SERVICE_NAMES.iter().copied().chain([""]) {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
}
