//! The Redis backend (fred 10), shared by every replica.
//!
//! - Commands go through a small pool of multiplexed connections. Each
//!   operation is one command (`SET NX PX`, `GETDEL`, ...) or one Lua script
//!   (compare-and-swap, increment), so it is atomic on the server.
//! - Commands are never retried by the client (`max_command_attempts = 1`):
//!   a retried `INCR` or compare-and-swap after a lost reply would count
//!   twice or report a success as a failure. Callers see
//!   [`CacheError::Unavailable`] instead, whose outcome is unknown.
//! - Pub/sub uses one dedicated subscriber connection per cache. It tracks
//!   its channels and resubscribes after a reconnect; one dispatcher task
//!   fans each message out to the process's local subscribers through a
//!   bounded broadcast channel per Redis channel.
//! - Behind a Sentinel, the cache asks a Sentinel for the primary every 500 ms and
//!   reconnects when it names another one (`follow_sentinel_primary`).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use fred::bytes::Bytes;
use fred::clients::{Pool, SubscriberClient};
use fred::interfaces::{
    ClientLike, EventInterface, KeysInterface, ListInterface, LuaInterface, PubsubInterface,
};
use fred::prelude::{Builder, Config, Expiration, ReconnectPolicy, SetOptions, Value};
use fred::types::config::{Server, ServerConfig};
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Message};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use crate::subscription::Subscription;
use crate::{ttl_millis, Cache, CacheError, Rate, RateDecision, Result};

/// `CAS key has_expected expected new ttl_ms` → 1 when swapped, else 0.
/// `GET` answers `false` for a missing key, which equals no string.
const CAS_LUA: &str = r#"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
"#;

/// `INCR key window_ms` → the new count. The expiry is set by the first
/// increment of a window (and repaired if the key somehow has none), never
/// extended by later ones.
const INCR_LUA: &str = r#"
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return count
"#;

/// `ADD key delta window_ms` → the new value; the expiry is set when the key has
/// none (its first add), never extended.
const ADD_LUA: &str = r#"
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"#;

/// `PUSH key item keep ttl_ms`: a capped list (see `Cache::push_capped`).
const PUSH_CAPPED_LUA: &str = r#"
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// `GCRA key interval_us burst cost` → `{allowed, remaining, retry_after_us,
/// reset_after_us}` on the server's clock, in microseconds (see `memory::gcra`,
/// its twin). Lua numbers are doubles: microseconds since 1970 fit exactly.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  local remaining = math.floor((now - (tat - burst * interval)) / interval)
  if remaining > burst then remaining = burst end
  if remaining < 0 then remaining = 0 end
  return {0, remaining, allow_at - now, tat - now}
end
if cost > 0 then
  local ttl_ms = math.max(1, math.ceil((new_tat - now) / 1000))
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl_ms)
end
local remaining = math.floor((now - allow_at) / interval)
if remaining > burst then remaining = burst end
return {1, remaining, 0, new_tat - now}
"#;

/// Connection settings of a [`RedisCache`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Connections for commands (each one multiplexes). Default 4.
    pub pool_size: usize,
    /// Longest wait for any command's reply, including while reconnecting.
    /// Default 5 s.
    pub command_timeout: Duration,
    /// Longest wait for a TCP (and TLS) connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Messages buffered per subscribed channel for its slowest local
    /// subscriber. Default 1024.
    pub channel_capacity: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            pool_size: 4,
            command_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            channel_capacity: 1024,
        }
    }
}

/// The cache on Redis. Cheap to clone; clones and
/// [`with_prefix`](Self::with_prefix) views share the connections, which are
/// closed when the last one is dropped.
#[derive(Clone)]
pub struct RedisCache {
    prefix: String,
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    pubsub: Arc<PubSub>,
    cas: Script,
    incr: Script,
    push_capped: Script,
    gcra: Script,
    add: Script,
    tasks: Vec<JoinHandle<()>>,
    /// Sentinel only: dropped with the cache, which ends `follow_sentinel_primary` (after it
    /// has closed its connection to the Sentinel).
    _following: Option<watch::Sender<()>>,
}

/// The subscriber connection and the local fan-out.
struct PubSub {
    client: SubscriberClient,
    /// Full channel name → local fan-out, present while someone in the
    /// process listens (or is about to).
    senders: RwLock<HashMap<String, Local>>,
    /// Serialises SUBSCRIBE/UNSUBSCRIBE with the bookkeeping above.
    manage: tokio::sync::Mutex<()>,
    capacity: usize,
}

struct Local {
    tx: broadcast::Sender<Vec<u8>>,
    /// SUBSCRIBE succeeded. False while it is in flight, or after it failed
    /// or its caller gave up: the next `subscribe` then sends it again.
    active: bool,
}

type Senders = HashMap<String, Local>;

impl PubSub {
    fn read(&self) -> RwLockReadGuard<'_, Senders> {
        self.senders.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Senders> {
        self.senders.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Unsubscribe from `channel` if nobody in the process listens any more.
    async fn release(&self, channel: &str) {
        let _guard = self.manage.lock().await;
        let unused = {
            let mut senders = self.write();
            let unused = senders
                .get(channel)
                .is_some_and(|local| local.tx.receiver_count() == 0);
            if unused {
                senders.remove(channel);
            }
            unused
        };
        if unused {
            if let Err(error) = self.client.unsubscribe(channel.to_owned()).await {
                tracing::debug!(%error, "redis UNSUBSCRIBE failed");
            }
        }
    }
}

/// Fan messages from the subscriber connection out to local subscribers.
async fn dispatch(pubsub: Arc<PubSub>, mut messages: broadcast::Receiver<Message>) {
    loop {
        match messages.recv().await {
            Ok(message) => {
                let Some(payload) = message.value.into_owned_bytes() else {
                    continue;
                };
                if let Some(local) = pubsub.read().get(&*message.channel) {
                    let _ = local.tx.send(payload);
                }
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::warn!(skipped, "redis pub/sub dispatcher lagged; messages dropped");
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// How often the cache asks a Sentinel which server is the primary (see
/// [`follow_sentinel_primary`]).
const SENTINEL_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Sentinel deployments only. fred asks the Sentinels for the primary when it connects, and only
/// then. After a `SENTINEL FAILOVER` the former primary stays a primary, and keeps accepting
/// writes, until a Sentinel next looks at it (every 10 s), turns it into a replica and closes
/// its clients' connections. Until then the cache would write where nobody reads, and those
/// writes (nonces, sessions, counters) are lost when the former primary resynchronises. So every
/// 500 ms this asks a Sentinel for the primary, and reconnects the pool and the subscriber when
/// they are connected elsewhere: reconnecting asks the Sentinels again.
async fn follow_sentinel_primary(
    sentinels: Vec<Config>,
    service: String,
    options: RedisOptions,
    pool: Pool,
    subscriber: SubscriberClient,
    mut stop: watch::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(SENTINEL_CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The Sentinel being asked; when it stops answering, the next one of `sentinels` in turn.
    let mut asking: Option<fred::clients::Client> = None;
    let mut next = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // The cache was dropped (the sender with it).
            _ = stop.changed() => break,
        }
        let client = match asking.take() {
            Some(client) if client.is_connected() => client,
            stale => {
                if let Some(stale) = stale {
                    let _ = stale.quit().await;
                }
                let Some(config) = sentinels.get(next % sentinels.len().max(1)) else {
                    break;
                };
                next += 1;
                match sentinel_client(config.clone(), &options).await {
                    Ok(client) => client,
                    Err(error) => {
                        tracing::debug!(%error, "a Redis Sentinel cannot be reached");
                        continue;
                    }
                }
            }
        };
        let named = client
            .custom::<Value, _>(
                CustomCommand::new_static("SENTINEL", ClusterHash::FirstKey, false),
                vec!["GET-MASTER-ADDR-BY-NAME", service.as_str()],
            )
            .await;
        let primary = match named {
            Ok(Value::Array(parts)) => match &parts[..] {
                [host, port] => host
                    .as_string()
                    .zip(port.as_string().and_then(|p| p.parse::<u16>().ok())),
                _ => None,
            },
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(%error, "a Redis Sentinel did not answer");
                let _ = client.quit().await;
                continue;
            }
        };
        asking = Some(client);
        let Some((host, port)) = primary else {
            continue;
        };
        let elsewhere =
            |servers: Vec<Server>| servers.iter().any(|s| *s.host != *host || s.port != port);
        if elsewhere(pool.active_connections()) || elsewhere(subscriber.active_connections()) {
            tracing::warn!(
                primary = %format_args!("{host}:{port}"),
                "the Redis Sentinel names another primary; reconnecting to it"
            );
            if let Err(error) = pool.force_reconnection().await {
                tracing::debug!(%error, "reconnecting the Redis pool");
            }
            if let Err(error) = subscriber.force_reconnection().await {
                tracing::debug!(%error, "reconnecting the Redis subscriber");
            }
        }
    }
    if let Some(client) = asking {
        let _ = client.quit().await;
    }
}

/// A connection to one Sentinel, with the deployment's timeouts and no reconnection of its
/// own (the caller moves on to the next Sentinel instead).
async fn sentinel_client(
    config: Config,
    options: &RedisOptions,
) -> std::result::Result<fred::clients::Client, fred::error::Error> {
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|perf| perf.default_command_timeout = options.command_timeout)
        .with_connection_config(|conn| {
            conn.connection_timeout = options.connect_timeout;
            conn.internal_command_timeout = options.connect_timeout;
            conn.max_command_attempts = 1;
        });
    let client = builder.build()?;
    client.init().await?;
    Ok(client)
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // End every open subscription's stream.
        self.pubsub.write().clear();
        let pool = self.pool.clone();
        let subscriber = self.pubsub.client.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = pool.quit().await;
            });
        }
    }
}

/// Parse a `redis://`, `rediss://`, `redis-cluster://` or `redis-sentinel://` URL into a fred
/// config, without echoing the URL (it may contain a password) in errors.
///
/// - `redis-cluster://[user:password@]host:port[?node=host:port&node=…]`: a Redis Cluster;
///   any known nodes, the others are discovered.
/// - `redis-sentinel://[user:password@]host[:port][/db]?sentinelServiceName=NAME[&node=…]`: the
///   primary that the named Sentinel service points to (the host and `node`s are sentinels).
fn config_from_url(url: &str) -> Result<Config> {
    const EXPECTED: &str =
        "expected redis://, rediss://, redis-cluster://, redis-sentinel:// or memory://";
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or_default();
    match scheme {
        "redis" => Config::from_url_centralized(url)
            .map_err(|e| CacheError::InvalidUrl(format!("redis:// URL: {}", e.details()))),
        "rediss" => tls_config_from_url(url),
        "redis-cluster" => Config::from_url_clustered(url)
            .map_err(|e| CacheError::InvalidUrl(format!("redis-cluster:// URL: {}", e.details()))),
        "redis-sentinel" => Config::from_url_sentinel(url)
            .map_err(|e| CacheError::InvalidUrl(format!("redis-sentinel:// URL: {}", e.details()))),
        "" => Err(CacheError::InvalidUrl(EXPECTED.into())),
        other => Err(CacheError::InvalidUrl(format!(
            "unsupported scheme {other:?}: {EXPECTED}"
        ))),
    }
}

#[cfg(feature = "tls")]
fn tls_config_from_url(url: &str) -> Result<Config> {
    use fred::prelude::TlsConnector;

    // fred's own rediss:// handling builds a rustls config with the process
    // default crypto provider, which panics when none can be chosen; parse
    // as plain redis:// and attach a ring-based config instead.
    let plain = format!("redis://{}", &url["rediss://".len()..]);
    let mut config = Config::from_url_centralized(&plain)
        .map_err(|e| CacheError::InvalidUrl(format!("rediss:// URL: {}", e.details())))?;
    let mut roots = rustls::RootCertStore::empty();
    let native = fred::rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // Skip unparsable system certificates rather than fail.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(CacheError::InvalidUrl(
            "rediss://: no system root certificates found".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CacheError::InvalidUrl(format!("rediss://: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.tls = Some(TlsConnector::from(tls).into());
    Ok(config)
}

#[cfg(not(feature = "tls"))]
fn tls_config_from_url(_url: &str) -> Result<Config> {
    Err(CacheError::InvalidUrl(
        "rediss:// needs zen-cache's `tls` feature".into(),
    ))
}

impl RedisCache {
    /// Connect to `url` (`redis://[user:password@]host[:port][/db]` or
    /// `rediss://…`). Both the command pool and the subscriber connection
    /// are established before this returns.
    pub async fn connect(url: &str, key_prefix: &str, options: RedisOptions) -> Result<RedisCache> {
        let config = config_from_url(url)?;
        // Sentinel: one config per Sentinel, to ask it for the primary (as a client of its own).
        let sentinels = match &config.server {
            ServerConfig::Sentinel {
                hosts,
                service_name,
                ..
            } => {
                let sentinels: Vec<Config> = hosts
                    .iter()
                    .map(|host| Config {
                        server: ServerConfig::Centralized {
                            server: host.clone(),
                        },
                        database: None,
                        ..config.clone()
                    })
                    .collect();
                Some((sentinels, service_name.clone()))
            }
            _ => None,
        };
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|perf| {
                perf.default_command_timeout = options.command_timeout;
                // The subscriber's message stream, drained by `dispatch`.
                perf.broadcast_channel_capacity = options.channel_capacity.max(64);
            })
            .with_connection_config(|conn| {
                conn.connection_timeout = options.connect_timeout;
                conn.internal_command_timeout = options.connect_timeout;
                conn.max_command_attempts = 1;
            })
            // Reconnect forever, backing off from 100 ms to 1 s: a Redis that comes back is
            // used again within about a second.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 1_000, 2));

        let pool = builder
            .build_pool(options.pool_size.max(1))
            .map_err(CacheError::from_fred)?;
        pool.init().await.map_err(CacheError::from_fred)?;

        let subscriber = match builder.build_subscriber_client() {
            Ok(subscriber) => subscriber,
            Err(error) => {
                let _ = pool.quit().await;
                return Err(CacheError::from_fred(error));
            }
        };
        if let Err(error) = subscriber.init().await {
            let _ = pool.quit().await;
            return Err(CacheError::from_fred(error));
        }

        let pubsub = Arc::new(PubSub {
            client: subscriber,
            senders: RwLock::new(HashMap::new()),
            manage: tokio::sync::Mutex::new(()),
            capacity: options.channel_capacity.max(1),
        });
        let resubscriber = pubsub.client.manage_subscriptions();
        // Take the receiver now, so no message can precede the dispatcher.
        let messages = pubsub.client.message_rx();
        let dispatcher = tokio::spawn(dispatch(Arc::clone(&pubsub), messages));
        let following = sentinels.map(|(sentinels, service)| {
            let (stop, stopped) = watch::channel(());
            tokio::spawn(follow_sentinel_primary(
                sentinels,
                service,
                options.clone(),
                pool.clone(),
                pubsub.client.clone(),
                stopped,
            ));
            stop
        });
        tracing::debug!(pool_size = pool.size(), "redis cache connected");

        Ok(RedisCache {
            prefix: key_prefix.to_owned(),
            shared: Arc::new(Shared {
                pool,
                pubsub,
                cas: Script::from_lua(CAS_LUA),
                incr: Script::from_lua(INCR_LUA),
                push_capped: Script::from_lua(PUSH_CAPPED_LUA),
                gcra: Script::from_lua(GCRA_LUA),
                add: Script::from_lua(ADD_LUA),
                tasks: vec![resubscriber, dispatcher],
                _following: following,
            }),
        })
    }

    /// A connection for the next command, or `Unavailable` at once while the client is not
    /// connected (Redis down, reconnecting): commands fail fast instead of each waiting out the
    /// command timeout, so a request that makes several is still answered promptly. The client
    /// keeps reconnecting in the background.
    fn connected(&self) -> Result<&fred::clients::Client> {
        let client = self.shared.pool.next();
        if client.is_connected() {
            return Ok(client);
        }
        // Some connections may be back before others.
        self.shared
            .pool
            .clients()
            .iter()
            .find(|c| c.is_connected())
            .ok_or_else(|| CacheError::Unavailable("not connected to Redis".into()))
    }

    /// Another view of the same connections under a different key prefix.
    pub fn with_prefix(&self, key_prefix: &str) -> RedisCache {
        RedisCache {
            prefix: key_prefix.to_owned(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// The key prefix of this view.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Delete every key under this view's prefix (`SCAN MATCH` + `UNLINK`);
    /// returns how many were deleted. Refused for an empty prefix, which
    /// would empty the whole database. For tests and operators; not atomic
    /// with respect to concurrent writers.
    pub async fn purge(&self) -> Result<u64> {
        if self.prefix.is_empty() {
            return Err(CacheError::InvalidArgument(
                "refusing to purge a cache without a key prefix".into(),
            ));
        }
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let client = self.connected()?;
        if client.is_clustered() {
            // Keys of one call must share a hash slot in a cluster: scan every primary, unlink
            // one key at a time.
            let mut keys = client.scan_cluster_buffered(pattern, Some(500), None);
            let mut deleted = 0u64;
            while let Some(key) = keys.next().await {
                deleted += client
                    .unlink::<u64, _>(key.map_err(CacheError::from_fred)?)
                    .await
                    .map_err(CacheError::from_fred)?;
            }
            return Ok(deleted);
        }
        let mut keys = client.scan_buffered(pattern, Some(500), None);
        let mut batch = Vec::new();
        let mut deleted = 0u64;
        while let Some(key) = keys.next().await {
            batch.push(key.map_err(CacheError::from_fred)?);
            if batch.len() >= 500 {
                deleted += client
                    .unlink::<u64, _>(std::mem::take(&mut batch))
                    .await
                    .map_err(CacheError::from_fred)?;
            }
        }
        if !batch.is_empty() {
            deleted += client
                .unlink::<u64, _>(batch)
                .await
                .map_err(CacheError::from_fred)?;
        }
        Ok(deleted)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// `EVALSHA`, falling back to `EVAL` (which also caches the script on
    /// the server) when the server does not know the script yet.
    async fn eval(&self, script: &Script, key: String, args: Vec<Value>) -> Result<i64> {
        self.eval_as::<i64>(script, key, args).await
    }

    async fn eval_as<R: fred::types::FromValue>(
        &self,
        script: &Script,
        key: String,
        args: Vec<Value>,
    ) -> Result<R> {
        let client = self.connected()?;
        let result = match client
            .evalsha::<R, _, _, _>(script.sha1().clone(), key.clone(), args.clone())
            .await
        {
            Err(error) if error.details().starts_with("NOSCRIPT") => {
                let lua = script.lua().cloned().unwrap_or_default();
                client.eval::<R, _, _, _>(lua, key, args).await
            }
            other => other,
        };
        result.map_err(CacheError::from_fred)
    }
}

/// Escape Redis glob metacharacters.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn bytes(value: &[u8]) -> Value {
    Value::Bytes(Bytes::copy_from_slice(value))
}

fn px(ttl: Duration) -> Result<i64> {
    // ttl_millis is bounded by MAX_TTL, far below i64::MAX.
    Ok(i64::try_from(ttl_millis(ttl)?).unwrap_or(i64::MAX))
}

#[async_trait]
impl Cache for RedisCache {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<()> {
        self.shared
            .pool
            .next()
            .ping::<Value>(None)
            .await
            .map_err(CacheError::from_fred)?;
        if !self.shared.pubsub.client.is_connected() {
            return Err(CacheError::Unavailable(
                "the pub/sub connection is down".into(),
            ));
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let value: Value = self
            .connected()?
            .get(self.full(key))
            .await
            .map_err(CacheError::from_fred)?;
        Ok(value.into_owned_bytes())
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let ttl = px(ttl)?;
        self.connected()?
            .set::<Value, _, _>(
                self.full(key),
                bytes(value),
                Some(Expiration::PX(ttl)),
                None,
                false,
            )
            .await
            .map_err(CacheError::from_fred)?;
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
        let ttl = px(ttl)?;
        let reply: Value = self
            .connected()?
            .set(
                self.full(key),
                bytes(value),
                Some(Expiration::PX(ttl)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(CacheError::from_fred)?;
        Ok(!reply.is_null())
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let value: Value = self
            .connected()?
            .getdel(self.full(key))
            .await
            .map_err(CacheError::from_fred)?;
        Ok(value.into_owned_bytes())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let deleted: u64 = self
            .connected()?
            .del(self.full(key))
            .await
            .map_err(CacheError::from_fred)?;
        Ok(deleted > 0)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Duration,
    ) -> Result<bool> {
        let ttl = px(ttl)?;
        let args = vec![
            Value::from(if expected.is_some() { "1" } else { "0" }),
            bytes(expected.unwrap_or_default()),
            bytes(new),
            Value::from(ttl),
        ];
        let swapped = self.eval(&self.shared.cas, self.full(key), args).await?;
        Ok(swapped == 1)
    }

    async fn increment(&self, key: &str, window: Duration) -> Result<u64> {
        let window = px(window)?;
        let count = self
            .eval(&self.shared.incr, self.full(key), vec![Value::from(window)])
            .await?;
        u64::try_from(count).map_err(|_| CacheError::NotAnInteger)
    }

    async fn add(&self, key: &str, delta: i64, window: Duration) -> Result<i64> {
        let window = px(window)?;
        self.eval(
            &self.shared.add,
            self.full(key),
            vec![Value::from(delta), Value::from(window)],
        )
        .await
    }

    async fn push_capped(&self, key: &str, item: &[u8], keep: usize, ttl: Duration) -> Result<()> {
        if keep == 0 {
            return Err(CacheError::InvalidArgument(
                "a capped list keeps at least one item".into(),
            ));
        }
        let ttl = px(ttl)?;
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let args = vec![bytes(item), Value::from(keep), Value::from(ttl)];
        self.eval(&self.shared.push_capped, self.full(key), args)
            .await?;
        Ok(())
    }

    async fn newest(&self, key: &str, limit: usize) -> Result<Vec<Vec<u8>>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let last = i64::try_from(limit - 1).unwrap_or(i64::MAX);
        let items: Vec<Value> = self
            .connected()?
            .lrange(self.full(key), 0, last)
            .await
            .map_err(CacheError::from_fred)?;
        Ok(items
            .into_iter()
            .filter_map(Value::into_owned_bytes)
            .collect())
    }

    async fn rate_limit(&self, key: &str, rate: Rate, cost: u32) -> Result<RateDecision> {
        let interval = i64::try_from(rate.interval.as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        let args = vec![
            Value::from(interval),
            Value::from(i64::from(rate.burst.max(1))),
            Value::from(i64::from(cost)),
        ];
        let reply: Vec<i64> = self
            .eval_as(&self.shared.gcra, self.full(key), args)
            .await?;
        let [allowed, remaining, retry_after, reset_after] = reply[..] else {
            return Err(CacheError::Backend(format!(
                "the rate limit script answered {reply:?}"
            )));
        };
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Ok(RateDecision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            retry_after: micros(retry_after),
            reset_after: micros(reset_after),
        })
    }

    async fn publish(&self, channel: &str, message: &[u8]) -> Result<()> {
        self.connected()?
            .publish::<Value, _, _>(self.full(channel), bytes(message))
            .await
            .map_err(CacheError::from_fred)?;
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription> {
        let full = self.full(channel);
        let pubsub = &self.shared.pubsub;
        let _guard = pubsub.manage.lock().await;

        let (receiver, active) = {
            let mut senders = pubsub.write();
            let local = senders.entry(full.clone()).or_insert_with(|| Local {
                tx: broadcast::channel(pubsub.capacity).0,
                active: false,
            });
            (local.tx.subscribe(), local.active)
        };

        // Built before SUBSCRIBE so that a failure or a cancelled caller
        // releases the channel again (on a task: `release` takes `manage`).
        let on_drop = {
            let pubsub: Weak<PubSub> = Arc::downgrade(pubsub);
            let runtime = tokio::runtime::Handle::try_current().ok();
            let full = full.clone();
            Box::new(move || {
                if let (Some(pubsub), Some(runtime)) = (pubsub.upgrade(), runtime) {
                    runtime.spawn(async move { pubsub.release(&full).await });
                }
            })
        };
        let subscription = Subscription::new(channel, receiver, Some(on_drop));

        if !active {
            if !pubsub.client.is_connected() {
                // Fail fast rather than queue behind a reconnect.
                return Err(CacheError::Unavailable(
                    "the pub/sub connection is down".into(),
                ));
            }
            pubsub
                .client
                .subscribe(full.clone())
                .await
                .map_err(CacheError::from_fred)?;
            // fred resolves SUBSCRIBE once it is written, not when the server
            // has processed it. A PING on the same connection is answered
            // after the SUBSCRIBE, so from here on no message is missed. In a
            // cluster, fred sends SUBSCRIBE to the node owning the hash slot of
            // the client's id: the PING must go there too, not to any node.
            let same_node = fred::types::config::Options {
                cluster_hash: pubsub.client.is_clustered().then(|| {
                    fred::types::ClusterHash::Custom(fred::util::redis_keyslot(
                        pubsub.client.id().as_bytes(),
                    ))
                }),
                ..Default::default()
            };
            pubsub
                .client
                .with_options(&same_node)
                .ping::<Value>(None)
                .await
                .map_err(CacheError::from_fred)?;
            if let Some(local) = pubsub.write().get_mut(&full) {
                local.active = true;
            }
        }
        Ok(subscription)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a Redis Cluster the keys of one command must share a hash slot. Every script takes
    /// exactly one key (`eval_as` passes one), so none can span slots.
    #[test]
    fn every_script_touches_one_key() {
        for lua in [CAS_LUA, INCR_LUA, ADD_LUA, PUSH_CAPPED_LUA, GCRA_LUA] {
            assert!(lua.contains("KEYS[1]"), "{lua}");
            assert!(!lua.contains("KEYS[2]"), "{lua}");
        }
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(
            glob_escape("zen-test:ab*c?[x]\\"),
            "zen-test:ab\\*c\\?\\[x\\]\\\\"
        );
        assert_eq!(glob_escape("zen:"), "zen:");
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        for bad in [
            "",
            "localhost:6379",
            "http://u:secret@h",
            // A Sentinel URL must name its service.
            "redis-sentinel://u:secret@h:26379",
            "rediss-cluster://u:secret@h:7000",
        ] {
            let error = config_from_url(bad).unwrap_err();
            assert!(matches!(error, CacheError::InvalidUrl(_)), "{bad}: {error}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        assert!(config_from_url("redis://127.0.0.1:6379/2").is_ok());
        assert!(config_from_url("redis://:pw@127.0.0.1").is_ok());
        let cluster =
            config_from_url("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001").unwrap();
        assert!(cluster.server.is_clustered());
        let sentinel =
            config_from_url("redis-sentinel://127.0.0.1:26379?sentinelServiceName=zen").unwrap();
        assert!(sentinel.server.is_sentinel());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_needs_the_tls_feature() {
        let error = config_from_url("rediss://:secret@cache.example:6380").unwrap_err();
        assert!(matches!(error, CacheError::InvalidUrl(_)), "{error}");
        assert!(!error.to_string().contains("secret"));
    }

    /// A connection to the test Redis, or `None` (skip) when unreachable
    /// and `CI` is unset.
    async fn test_redis(prefix: &str) -> Option<RedisCache> {
        let url = std::env::var("ZEN_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        match RedisCache::connect(&url, prefix, RedisOptions::default()).await {
            Ok(cache) => Some(cache),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("Redis at {url} is unreachable and CI is set: {e}")
            }
            Err(e) => {
                eprintln!("SKIP: Redis at {url} is unreachable ({e}); set ZEN_TEST_REDIS_URL");
                None
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_last_subscription_unsubscribes() {
        let prefix = format!("zen-test:unit-{}:", std::process::id());
        let Some(cache) = test_redis(&prefix).await else {
            return;
        };
        let pubsub = Arc::clone(&cache.shared.pubsub);
        let a = cache.subscribe("ch").await.unwrap();
        let b = cache.subscribe("ch").await.unwrap();
        let full = format!("{prefix}ch");
        assert!(pubsub
            .client
            .tracked_channels()
            .iter()
            .any(|c| **c == *full));
        drop(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pubsub.read().len(), 1, "still one subscriber");
        drop(b);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !pubsub.read().is_empty() || !pubsub.client.tracked_channels().is_empty() {
            assert!(std::time::Instant::now() < deadline, "not unsubscribed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Dropping the cache ends open subscriptions.
        let mut open = cache.subscribe("other").await.unwrap();
        drop(cache);
        let end = tokio::time::timeout(Duration::from_secs(5), open.recv()).await;
        assert_eq!(end, Ok(None));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn rediss_builds_a_tls_config() {
        match config_from_url("rediss://:pw@cache.example:6380") {
            Ok(config) => assert!(config.tls.is_some()),
            // A machine without system roots: a clean error, not a panic.
            Err(CacheError::InvalidUrl(message)) => assert!(message.contains("root")),
            Err(other) => panic!("{other}"),
        }
    }
}
