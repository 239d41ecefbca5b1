//! Rate limits: one limiter for every entry point, shared by the replicas through the cache.
//!
//! Each request spends units of a GCRA budget (`zen_cache::Cache::rate_limit`) keyed by who
//! spends it ([`Subject`]): a client address for anonymous endpoints (sign-in, token refresh,
//! agent bootstrap) and for webhook requests that fail verification, a person for API calls,
//! a tenant for everything done in it (its `requests_per_second` quota), a webhook source for
//! its own `rate_limit_per_second`, an agent's cluster for its event batches.
//!
//! When the shared cache cannot be reached the limiter fails in a stated direction per subject
//! ([`Subject::fails_open`]): anonymous callers of sign-in, refresh and bootstrap fail closed
//! (refused with 503 and `Retry-After`: no unmetered password guessing), everything else fails
//! open onto a per-replica limiter with the same rate, so a tenant keeps working within its
//! limit (times the number of replicas) while Redis is down. Both are counted in
//! `zen_rate_limit_cache_errors_total{subject,mode}` and logged.
//!
//! A refusal is `RESOURCE_EXHAUSTED` with `RetryInfo` and an `ErrorInfo` (`RATE_LIMITED`) whose
//! metadata carries the IETF `RateLimit-Policy` and `RateLimit` field values
//! (draft-ietf-httpapi-ratelimit-headers); the gateway turns them into those headers and a 429
//! with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;
use zen_cache::{Cache, MemoryCache, Rate, RateDecision};
use zen_store::{Quotas, Scope, Store};

use crate::grpc::services::support::ERROR_DOMAIN;

/// Who spends a budget.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An anonymous caller of a public endpoint, by client address.
    Address(IpAddr),
    /// A client address whose webhook deliveries failed verification.
    UnverifiedWebhooks(IpAddr),
    /// A signed-in person, across tenants.
    User(Uuid),
    /// A tenant: its `requests_per_second` quota.
    Tenant(Uuid),
    /// A webhook source's own limit.
    Source { tenant_id: Uuid, source_id: Uuid },
    /// An agent's event batches.
    Cluster { tenant_id: Uuid, cluster_id: Uuid },
}

impl Subject {
    /// The label of metrics and the name in the `RateLimit` header fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Address(_) => "address",
            Subject::UnverifiedWebhooks(_) => "unverified_webhooks",
            Subject::User(_) => "user",
            Subject::Tenant(_) => "tenant",
            Subject::Source { .. } => "source",
            Subject::Cluster { .. } => "cluster",
        }
    }

    fn key(&self) -> String {
        match self {
            Subject::Address(a) => format!("rl:addr:{a}"),
            Subject::UnverifiedWebhooks(a) => format!("rl:unverified:{a}"),
            Subject::User(u) => format!("rl:user:{u}"),
            Subject::Tenant(t) => format!("rl:tenant:{t}"),
            Subject::Source {
                tenant_id,
                source_id,
            } => format!("rl:source:{tenant_id}:{source_id}"),
            Subject::Cluster {
                tenant_id,
                cluster_id,
            } => format!("rl:cluster:{tenant_id}:{cluster_id}"),
        }
    }

    /// Whether a request may go on, metered per replica, when the shared cache is down.
    /// Anonymous callers of sign-in, refresh and bootstrap may not: an outage must not open
    /// the door to a flood of password guesses. Webhook requests may, metered per address on
    /// each replica: their senders prove themselves by signature, and a delivery refused for
    /// want of Redis is one the sender must retry (the outage drills keep them flowing).
    pub fn fails_open(&self) -> bool {
        !matches!(self, Subject::Address(_))
    }
}

/// Platform-wide limits (`zen serve --rate-limit-*`); tenants' own come from their quotas.
#[derive(Clone, Debug)]
pub struct RateLimitSettings {
    /// Per client address on anonymous endpoints (sign-in, refresh, bootstrap).
    pub anonymous: Rate,
    /// Per client address for webhook requests that fail verification.
    pub unverified_webhooks: Rate,
    /// Per person, over all their API calls.
    pub user: Rate,
    /// Per cluster, its agent's event batches.
    pub cluster: Rate,
    /// A tenant's burst, in seconds of its `requests_per_second`.
    pub tenant_burst_seconds: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            anonymous: Rate::per_second(10, 30),
            unverified_webhooks: Rate::per_second(5, 20),
            user: Rate::per_second(50, 100),
            cluster: Rate::per_second(50, 200),
            tenant_burst_seconds: 2,
        }
    }
}

impl RateLimitSettings {
    /// A tenant's rate from its quota; `None` when the quota is 0 (unlimited).
    pub fn tenant_rate(&self, requests_per_second: i32) -> Option<Rate> {
        let rps = u32::try_from(requests_per_second).ok().filter(|r| *r > 0)?;
        Some(Rate::per_second(
            rps,
            rps.saturating_mul(self.tenant_burst_seconds.max(1)),
        ))
    }
}

/// A refused request: what was exceeded and when to come back.
#[derive(Clone, Debug)]
pub struct Limited {
    pub subject: &'static str,
    pub rate: Rate,
    pub decision: RateDecision,
    /// The shared cache was down and the subject fails closed.
    pub unavailable: bool,
    /// The tenant's daily event quota (`rate.burst` events per UTC day) is used up.
    pub daily_quota: bool,
}

impl Limited {
    /// `RateLimit-Policy` field value: the burst (`q`) over the time it takes to refill (`w`).
    pub fn policy_header(&self) -> String {
        let window = (self.rate.interval * self.rate.burst).as_secs().max(1);
        format!("\"{}\";q={};w={window}", self.subject, self.rate.burst)
    }

    /// `RateLimit` field value: what is left (`r`) and seconds until it is whole again (`t`).
    pub fn ratelimit_header(&self) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.subject,
            self.decision.remaining,
            ceil_secs(self.decision.reset_after)
        )
    }

    pub fn retry_after(&self) -> Duration {
        self.decision.retry_after.max(Duration::from_millis(1))
    }

    /// The gRPC answer (the gateway maps it to 429 or 503 with the headers).
    pub fn status(&self) -> Status {
        let mut details = ErrorDetails::with_retry_info(Some(self.retry_after()));
        if self.unavailable {
            details.set_error_info(
                "RATE_LIMITER_UNAVAILABLE",
                ERROR_DOMAIN,
                HashMap::from([("limit".to_owned(), self.subject.to_owned())]),
            );
            return Status::with_error_details(
                Code::Unavailable,
                "the rate limiter cannot be reached; retry later",
                details,
            );
        }
        details.set_error_info(
            if self.daily_quota {
                "EVENT_QUOTA_EXCEEDED"
            } else {
                "RATE_LIMITED"
            },
            ERROR_DOMAIN,
            HashMap::from([
                ("limit".to_owned(), self.subject.to_owned()),
                ("ratelimit_policy".to_owned(), self.policy_header()),
                ("ratelimit".to_owned(), self.ratelimit_header()),
            ]),
        );
        if self.daily_quota {
            return Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "the tenant's quota of {} events per UTC day is used up; it resets at midnight UTC, in {} s",
                    self.rate.burst,
                    ceil_secs(self.retry_after())
                ),
                details,
            );
        }
        let per_second = 1.0 / self.rate.interval.as_secs_f64();
        Status::with_error_details(
            Code::ResourceExhausted,
            format!(
                "rate limit of this {} exceeded ({per_second:.0} requests per second, bursts of {}); retry in {} s",
                self.subject,
                self.rate.burst,
                ceil_secs(self.retry_after())
            ),
            details,
        )
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// How often a cache failure of the limiter is logged (it is counted every time).
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a tenant's quotas are used before they are read again: a change made through one
/// replica applies on every replica within this.
const QUOTAS_TTL: Duration = Duration::from_secs(1);

pub struct RateLimiter {
    shared: Arc<dyn Cache>,
    /// The per-replica fallback of subjects that fail open.
    local: MemoryCache,
    settings: RateLimitSettings,
    started: Instant,
    last_logged_ms: AtomicU64,
    quotas: Mutex<HashMap<Uuid, (Instant, Quotas)>>,
}

impl RateLimiter {
    pub fn new(shared: Arc<dyn Cache>, settings: RateLimitSettings) -> Self {
        Self {
            shared,
            local: MemoryCache::new("local-limits:"),
            settings,
            started: Instant::now(),
            last_logged_ms: AtomicU64::new(0),
            quotas: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    /// Spends `cost` units of `subject`'s budget at `rate`.
    pub async fn check(&self, subject: &Subject, rate: Rate, cost: u32) -> Result<(), Limited> {
        let Some(decision) = self.decide(subject, rate, cost).await? else {
            return Ok(());
        };
        if decision.allowed {
            return Ok(());
        }
        Err(self.limited(subject, rate, decision))
    }

    /// Whether one unit of `subject`'s budget is left, without spending it.
    pub async fn peek(&self, subject: &Subject, rate: Rate) -> Result<(), Limited> {
        // A cost of 0 is always allowed; what is left says whether one more unit would be.
        let Some(decision) = self.decide(subject, rate, 0).await? else {
            return Ok(());
        };
        if decision.remaining >= 1 {
            return Ok(());
        }
        let refill = rate.interval * rate.burst.saturating_sub(1);
        let decision = RateDecision {
            allowed: false,
            remaining: 0,
            retry_after: decision.reset_after.saturating_sub(refill),
            reset_after: decision.reset_after,
        };
        Err(self.limited(subject, rate, decision))
    }

    fn limited(&self, subject: &Subject, rate: Rate, decision: RateDecision) -> Limited {
        metrics::counter!("zen_rate_limited_total", "subject" => subject.kind()).increment(1);
        Limited {
            subject: subject.kind(),
            rate,
            decision,
            unavailable: false,
            daily_quota: false,
        }
    }

    /// The shared budget's decision; when the cache is down, the fallback of the subject's
    /// direction (a refusal, or the per-replica budget's decision). `None`: not metered (the
    /// per-replica budget is full).
    async fn decide(
        &self,
        subject: &Subject,
        rate: Rate,
        cost: u32,
    ) -> Result<Option<RateDecision>, Limited> {
        let key = subject.key();
        let error = match self.shared.rate_limit(&key, rate, cost).await {
            Ok(decision) => return Ok(Some(decision)),
            Err(error) => error,
        };
        let mode = if subject.fails_open() {
            "fail_open"
        } else {
            "fail_closed"
        };
        metrics::counter!("zen_rate_limit_cache_errors_total",
            "subject" => subject.kind(), "mode" => mode)
        .increment(1);
        self.log_cache_error(&error, mode);
        if !subject.fails_open() {
            return Err(Limited {
                subject: subject.kind(),
                rate,
                decision: RateDecision {
                    allowed: false,
                    remaining: 0,
                    retry_after: Duration::from_secs(1),
                    reset_after: Duration::from_secs(1),
                },
                unavailable: true,
                daily_quota: false,
            });
        }
        // The local cache is full: metering stops before serving does.
        Ok(self.local.rate_limit(&key, rate, cost).await.ok())
    }

    /// Spends one unit of the tenant's `requests_per_second` quota (nothing when it is 0).
    pub async fn tenant(&self, store: &Store, tenant_id: Uuid) -> Result<(), LimitError> {
        let quotas = self.quotas(store, tenant_id).await?;
        self.tenant_with(tenant_id, &quotas)
            .await
            .map_err(LimitError::Limited)
    }

    /// [`RateLimiter::tenant`] with the tenant's quotas as the caller read them.
    pub async fn tenant_with(&self, tenant_id: Uuid, quotas: &Quotas) -> Result<(), Limited> {
        match self.settings.tenant_rate(quotas.requests_per_second) {
            Some(rate) => self.check(&Subject::Tenant(tenant_id), rate, 1).await,
            None => Ok(()),
        }
    }

    /// Counts `count` events against the tenant's `max_events_per_day` (UTC days; 0:
    /// unlimited); refused, and not counted, when they would go over it. The counter lives in
    /// the cache, one key per tenant and day; when the cache has lost it (a restart of the
    /// memory cache, a Redis flush), it starts again from the events the store holds for the
    /// day. When the cache is down, the quota is not enforced (fail open, counted in
    /// `zen_rate_limit_cache_errors_total{subject="daily_events"}`).
    /// `quotas` are the tenant's as the caller read them.
    pub async fn reserve_events(
        &self,
        store: &Store,
        tenant_id: Uuid,
        quotas: &Quotas,
        count: usize,
    ) -> Result<(), Limited> {
        let max = quotas.max_events_per_day;
        if max <= 0 || count == 0 {
            return Ok(());
        }
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        let now = chrono::Utc::now();
        let day_start = now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
        let until_midnight = (day_start + chrono::Duration::days(1) - now)
            .to_std()
            .unwrap_or_default();
        let key = daily_key(tenant_id, now);
        // The counter outlives its day by an hour: late reservations of the day find it.
        let window = until_midnight + Duration::from_secs(3600);
        // One cache call per batch or delivery: add first; a counter this call created (the
        // day's first events, or a counter the cache lost) then takes in what the store already
        // holds for the day.
        let counted = async {
            let total = self.shared.add(&key, count, window).await?;
            if total != count {
                return Ok(total);
            }
            let stored = async {
                let mut tx = store.begin_read(&Scope::tenant(tenant_id, None)).await?;
                tx.events().count_received_since(day_start).await
            };
            // The store unreadable: counting from 0 errs on the side of the tenant.
            match stored.await.unwrap_or(0) {
                0 => Ok(total),
                stored => self.shared.add(&key, stored, window).await,
            }
        };
        let total = match counted.await {
            Ok(total) => total,
            Err(error) => {
                metrics::counter!("zen_rate_limit_cache_errors_total",
                    "subject" => "daily_events", "mode" => "fail_open")
                .increment(1);
                self.log_cache_error(&error, "fail_open");
                return Ok(());
            }
        };
        if total <= max {
            return Ok(());
        }
        let _ = self.shared.add(&key, -count, window).await;
        metrics::counter!("zen_rate_limited_total", "subject" => "daily_events").increment(1);
        let burst = u32::try_from(max).unwrap_or(u32::MAX);
        Err(Limited {
            subject: "daily_events",
            rate: Rate {
                interval: Duration::from_secs(86_400) / burst.max(1),
                burst,
            },
            decision: RateDecision {
                allowed: false,
                remaining: u32::try_from((max - (total - count)).max(0)).unwrap_or(0),
                retry_after: until_midnight,
                reset_after: until_midnight,
            },
            unavailable: false,
            daily_quota: true,
        })
    }

    /// Gives back events counted by [`RateLimiter::reserve_events`] that were not stored after
    /// all (the store failed).
    pub async fn release_events(&self, tenant_id: Uuid, count: usize) {
        let key = daily_key(tenant_id, chrono::Utc::now());
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        if let Ok(Some(_)) = self.shared.get(&key).await {
            let _ = self
                .shared
                .add(&key, -count, Duration::from_secs(25 * 3600))
                .await;
        }
    }

    /// A tenant's quotas, read at most once per [`QUOTAS_TTL`] per replica.
    pub async fn quotas(&self, store: &Store, tenant_id: Uuid) -> Result<Quotas, LimitError> {
        {
            let cached = self.quotas.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((read_at, quotas)) = cached.get(&tenant_id) {
                if read_at.elapsed() < QUOTAS_TTL {
                    return Ok(*quotas);
                }
            }
        }
        let read = async {
            let mut tx = store.begin_read(&Scope::tenant(tenant_id, None)).await?;
            tx.tenants().get(tenant_id).await
        };
        let tenant = read.await.map_err(LimitError::Store)?;
        let mut cached = self.quotas.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.len() > 100_000 {
            cached.clear();
        }
        cached.insert(tenant_id, (Instant::now(), tenant.quotas));
        Ok(tenant.quotas)
    }

    fn log_cache_error(&self, error: &zen_cache::CacheError, mode: &str) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64)
            && self
                .last_logged_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(%error, mode, "the shared rate limiter is unavailable");
        }
    }
}

fn daily_key(tenant_id: Uuid, now: chrono::DateTime<chrono::Utc>) -> String {
    format!("quota:events:{tenant_id}:{}", now.format("%Y%m%d"))
}

/// Why a tenant's budget could not be spent.
#[derive(Debug)]
pub enum LimitError {
    Limited(Limited),
    Store(zen_store::StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_follow_the_draft() {
        let limited = Limited {
            subject: "tenant",
            rate: Rate::per_second(100, 200),
            decision: RateDecision {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_millis(10),
                reset_after: Duration::from_millis(1_990),
            },
            unavailable: false,
            daily_quota: false,
        };
        assert_eq!(limited.policy_header(), "\"tenant\";q=200;w=2");
        assert_eq!(limited.ratelimit_header(), "\"tenant\";r=0;t=2");
        let status = limited.status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(10))
        );
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "RATE_LIMITED");
        assert_eq!(info.metadata["ratelimit_policy"], "\"tenant\";q=200;w=2");
    }

    #[test]
    fn strangers_fail_closed_and_known_callers_open() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(!Subject::Address(ip).fails_open());
        assert!(Subject::UnverifiedWebhooks(ip).fails_open());
        assert!(Subject::User(Uuid::nil()).fails_open());
        assert!(Subject::Tenant(Uuid::nil()).fails_open());
        assert!(RateLimitSettings::default().tenant_rate(0).is_none());
        assert_eq!(
            RateLimitSettings::default().tenant_rate(100),
            Some(Rate::per_second(100, 200))
        );
    }

    /// A cache that is down: every call fails.
    struct Down;

    #[async_trait::async_trait]
    impl Cache for Down {
        fn backend(&self) -> &'static str {
            "down"
        }
        async fn ping(&self) -> zen_cache::Result<()> {
            Err(down())
        }
        async fn get(&self, _: &str) -> zen_cache::Result<Option<Vec<u8>>> {
            Err(down())
        }
        async fn set(&self, _: &str, _: &[u8], _: Duration) -> zen_cache::Result<()> {
            Err(down())
        }
        async fn set_if_absent(&self, _: &str, _: &[u8], _: Duration) -> zen_cache::Result<bool> {
            Err(down())
        }
        async fn take(&self, _: &str) -> zen_cache::Result<Option<Vec<u8>>> {
            Err(down())
        }
        async fn delete(&self, _: &str) -> zen_cache::Result<bool> {
            Err(down())
        }
        async fn compare_and_swap(
            &self,
            _: &str,
            _: Option<&[u8]>,
            _: &[u8],
            _: Duration,
        ) -> zen_cache::Result<bool> {
            Err(down())
        }
        async fn increment(&self, _: &str, _: Duration) -> zen_cache::Result<u64> {
            Err(down())
        }
        async fn add(&self, _: &str, _: i64, _: Duration) -> zen_cache::Result<i64> {
            Err(down())
        }
        async fn push_capped(
            &self,
            _: &str,
            _: &[u8],
            _: usize,
            _: Duration,
        ) -> zen_cache::Result<()> {
            Err(down())
        }
        async fn newest(&self, _: &str, _: usize) -> zen_cache::Result<Vec<Vec<u8>>> {
            Err(down())
        }
        async fn rate_limit(&self, _: &str, _: Rate, _: u32) -> zen_cache::Result<RateDecision> {
            Err(down())
        }
        async fn publish(&self, _: &str, _: &[u8]) -> zen_cache::Result<()> {
            Err(down())
        }
        async fn subscribe(&self, _: &str) -> zen_cache::Result<zen_cache::Subscription> {
            Err(down())
        }
    }

    fn down() -> zen_cache::CacheError {
        zen_cache::CacheError::Unavailable("down".into())
    }

    #[tokio::test]
    async fn a_down_cache_closes_to_strangers_and_meters_others_locally() {
        let limiter = RateLimiter::new(Arc::new(Down), RateLimitSettings::default());
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let refused = limiter
            .check(&Subject::Address(ip), Rate::per_second(10, 10), 1)
            .await
            .unwrap_err();
        assert!(refused.unavailable);
        assert_eq!(refused.status().code(), Code::Unavailable);
        // A person goes on, within the same rate counted on this replica.
        let user = Subject::User(Uuid::new_v4());
        let rate = Rate::per_second(1, 3);
        for _ in 0..3 {
            limiter.check(&user, rate, 1).await.unwrap();
        }
        let limited = limiter.check(&user, rate, 1).await.unwrap_err();
        assert!(!limited.unavailable);
        assert_eq!(limited.status().code(), Code::ResourceExhausted);
    }
}
