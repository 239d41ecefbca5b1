//! The recent-deliveries log of each webhook source: what became of the last deliveries
//! (accepted, duplicate, challenge, or refused and why), for the person wiring a sender up.
//!
//! It is a bounded, best-effort diagnostic kept in the shared cache (a capped list per source,
//! so every replica writes to and reads from the same log), never in the store: recording must
//! not add a write to the delivery's commit, and a refused delivery (a flood of bad signatures)
//! must not cost a database write at all. Records are written off the delivery's path by a
//! spawned task, at most [`IN_FLIGHT`] at a time; past that they are dropped and counted
//! (`zen_webhook_delivery_log_dropped_total`), never waited for.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::Semaphore;
use uuid::Uuid;
use zen_cache::Cache;

use crate::proto::zen::ingest::v1 as pb;

/// Deliveries kept per source.
pub const KEEP: usize = 50;
/// How long a source's log lives after its last delivery.
pub const TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Records being written at once; more are dropped.
const IN_FLIGHT: usize = 256;
/// Headers that carry a sender's own delivery id, in the order they are looked for.
const DELIVERY_ID_HEADERS: &[&str] = &[
    "x-github-delivery",
    "x-gitlab-event-uuid",
    "webhook-id",
    "svix-id",
    "x-shopify-webhook-id",
    "x-delivery-id",
    "x-request-id",
];
/// Longest sender delivery id and refusal message kept.
const MAX_TEXT: usize = 256;

#[derive(Clone)]
pub struct DeliveryLog {
    cache: Arc<dyn Cache>,
    in_flight: Arc<Semaphore>,
}

fn key(tenant_id: Uuid, source_id: Uuid) -> String {
    format!("wh:deliveries:{tenant_id}:{source_id}")
}

fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The sender's own id of a delivery, from the first delivery-id header it carries.
pub fn sender_delivery_id<'a>(headers: impl Fn(&str) -> Option<&'a str>) -> String {
    DELIVERY_ID_HEADERS
        .iter()
        .find_map(|name| headers(name).filter(|v| !v.is_empty()))
        .map(clip)
        .unwrap_or_default()
}

impl DeliveryLog {
    pub fn new(cache: Arc<dyn Cache>) -> Self {
        Self {
            cache,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }

    /// Records a delivery without waiting for the cache.
    pub fn record(&self, tenant_id: Uuid, source_id: Uuid, mut delivery: pb::WebhookDelivery) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            metrics::counter!("zen_webhook_delivery_log_dropped_total").increment(1);
            return;
        };
        delivery.message = clip(&delivery.message);
        let cache = self.cache.clone();
        tokio::spawn(async move {
            let item = delivery.encode_to_vec();
            if let Err(error) = cache
                .push_capped(&key(tenant_id, source_id), &item, KEEP, TTL)
                .await
            {
                metrics::counter!("zen_webhook_delivery_log_dropped_total").increment(1);
                tracing::debug!(%error, source = %source_id, "a delivery was not logged");
            }
            drop(permit);
        });
    }

    /// The newest `limit` deliveries of a source (0: all kept), newest first. Items that do not
    /// decode (written by another version) are skipped.
    pub async fn recent(
        &self,
        tenant_id: Uuid,
        source_id: Uuid,
        limit: usize,
    ) -> zen_cache::Result<Vec<pb::WebhookDelivery>> {
        let limit = if limit == 0 { KEEP } else { limit.min(KEEP) };
        let items = self.cache.newest(&key(tenant_id, source_id), limit).await?;
        Ok(items
            .iter()
            .filter_map(|item| pb::WebhookDelivery::decode(item.as_slice()).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_first_delivery_id_header_present_wins() {
        let headers: HashMap<&str, &str> = [("x-request-id", "r-1"), ("x-github-delivery", "gh-1")]
            .into_iter()
            .collect();
        assert_eq!(sender_delivery_id(|n| headers.get(n).copied()), "gh-1");
        assert_eq!(sender_delivery_id(|_| None), "");
        let long = "é".repeat(300);
        let id = sender_delivery_id(|n| (n == "webhook-id").then_some(long.as_str()));
        assert!(id.len() <= MAX_TEXT && id.chars().all(|c| c == 'é'));
    }

    #[tokio::test]
    async fn records_read_back_newest_first_and_per_source() {
        let log = DeliveryLog::new(Arc::new(zen_cache::MemoryCache::new("t:")));
        let (tenant, source, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for status in [202, 401, 200] {
            log.record(
                tenant,
                source,
                pb::WebhookDelivery {
                    http_status: status,
                    ..Default::default()
                },
            );
            // Each record is written by its own task: let it finish so the order is known.
            while log.in_flight.available_permits() < IN_FLIGHT {
                tokio::task::yield_now().await;
            }
        }
        let statuses: Vec<i32> = log
            .recent(tenant, source, 0)
            .await
            .unwrap()
            .iter()
            .map(|d| d.http_status)
            .collect();
        assert_eq!(statuses, [200, 401, 202]);
        assert_eq!(log.recent(tenant, source, 1).await.unwrap().len(), 1);
        assert!(log.recent(tenant, other, 0).await.unwrap().is_empty());
    }
}
