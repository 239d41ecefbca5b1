//! Redis-only behaviour: `connect()` as the app calls it (two independent
//! clients, i.e. two replicas), URL handling, outages and resubscription.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{redis_url, Harness, Kind};
use zen_cache::{connect, Cache, CacheError, RedisCache, RedisOptions};

const LONG: Duration = Duration::from_secs(60);

async fn recv(sub: &mut zen_cache::Subscription) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("message within 5 s")
        .expect("subscription ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_connected_replicas_see_each_others_keys_and_messages() {
    let Some(h) = Harness::new(Kind::Redis).await else {
        return;
    };
    let url = redis_url();
    let one = connect(Some(&url), &h.base).await.expect("replica one");
    let two = connect(Some(&url), &h.base).await.expect("replica two");
    assert_eq!(one.backend(), "redis");
    assert_eq!(two.backend(), "redis");

    one.set("idem:req-1", b"response", LONG).await.unwrap();
    assert_eq!(
        two.get("idem:req-1").await.unwrap().as_deref(),
        Some(&b"response"[..])
    );
    assert!(!two
        .set_if_absent("idem:req-1", b"other", LONG)
        .await
        .unwrap());
    assert!(two
        .compare_and_swap("idem:req-1", Some(b"response"), b"v2", LONG)
        .await
        .unwrap());
    assert!(!one
        .compare_and_swap("idem:req-1", Some(b"response"), b"v3", LONG)
        .await
        .unwrap());
    assert_eq!(one.increment("rl", LONG).await.unwrap(), 1);
    assert_eq!(two.increment("rl", LONG).await.unwrap(), 2);
    assert_eq!(
        two.take("idem:req-1").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    assert_eq!(one.take("idem:req-1").await.unwrap(), None);

    let mut on_one = one.subscribe("watch").await.unwrap();
    let mut on_two = two.subscribe("watch").await.unwrap();
    one.publish("watch", b"from one").await.unwrap();
    two.publish("watch", b"from two").await.unwrap();
    for sub in [&mut on_one, &mut on_two] {
        assert_eq!(recv(sub).await, b"from one");
        assert_eq!(recv(sub).await, b"from two");
    }
}

#[tokio::test]
async fn connect_picks_the_backend_from_the_url() {
    let memory = connect(None, "p:").await.unwrap();
    assert_eq!(memory.backend(), "memory");
    let memory = connect(Some("memory://"), "p:").await.unwrap();
    assert_eq!(memory.backend(), "memory");

    for bad in [
        "",
        "127.0.0.1:6379",
        "postgres://u:secret@h/db",
        "redis-sentinel://h",
    ] {
        let error = connect(Some(bad), "p:").await.err().expect(bad);
        assert!(matches!(error, CacheError::InvalidUrl(_)), "{bad}: {error}");
        assert!(!error.to_string().contains("secret"));
    }
}

#[tokio::test]
async fn unreachable_redis_is_unavailable() {
    // Port 1 on loopback: connection refused, at once.
    let started = Instant::now();
    let error = connect(Some("redis://:secret@127.0.0.1:1"), "p:")
        .await
        .err()
        .expect("must fail");
    assert!(error.is_unavailable(), "{error:?}");
    assert!(!error.to_string().contains("secret"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn purge_deletes_only_its_prefix() {
    let Some(h) = Harness::new(Kind::Redis).await else {
        return;
    };
    let open = |sub: &str| {
        let prefix = format!("{}{sub}", h.base);
        async move {
            RedisCache::connect(&redis_url(), &prefix, RedisOptions::default())
                .await
                .unwrap()
        }
    };
    let a = open("a:").await;
    let ab = a.with_prefix(&format!("{}ab:", h.base)); // not under "a:"
    for i in 0..1200 {
        a.set(&format!("k{i}"), b"v", LONG).await.unwrap();
    }
    ab.set("k", b"v", LONG).await.unwrap();
    assert_eq!(a.purge().await.unwrap(), 1200);
    assert_eq!(a.get("k1").await.unwrap(), None);
    assert_eq!(ab.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(matches!(
        a.with_prefix("").purge().await,
        Err(CacheError::InvalidArgument(_))
    ));
}

// ------------------------------------------------- outage and resubscription

/// A private `redis-server` on a free port, killed on drop.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> std::io::Result<PrivateRedis> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(PrivateRedis {
            port,
            child: Some(child),
        })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survives_a_server_restart_and_resubscribes() {
    let port = free_port();
    let mut server = match PrivateRedis::start(port) {
        Ok(server) => server,
        Err(e) => {
            // Needs the redis-server binary, not just a reachable Redis.
            eprintln!("SKIP: cannot start a private redis-server ({e})");
            return;
        }
    };
    server.wait_ready().await;

    let options = RedisOptions {
        command_timeout: Duration::from_secs(1),
        ..RedisOptions::default()
    };
    let cache: Arc<dyn Cache> = Arc::new(
        RedisCache::connect(&server.url(), "zen-test:restart:", options)
            .await
            .expect("connect private redis"),
    );
    let publisher =
        RedisCache::connect(&server.url(), "zen-test:restart:", RedisOptions::default())
            .await
            .unwrap();
    // A fresh server knows no script: EVALSHA falls back to EVAL.
    assert_eq!(cache.increment("n", LONG).await.unwrap(), 1);
    assert!(cache.compare_and_swap("c", None, b"1", LONG).await.unwrap());
    let mut sub = cache.subscribe("ch").await.unwrap();
    publisher.publish("ch", b"before").await.unwrap();
    assert_eq!(recv(&mut sub).await, b"before");

    server.stop();
    // While down: a prompt, typed error rather than a hang.
    let started = Instant::now();
    let error = cache.get("k").await.expect_err("get while down");
    assert!(error.is_unavailable(), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(cache.ping().await.is_err());

    let _server = PrivateRedis::start(port).expect("restart redis-server");
    _server.wait_ready().await;

    // Commands recover once the client has reconnected.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if cache.set("k", b"v", LONG).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnect within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    // The restarted server lost its script cache (and its data) too.
    assert_eq!(cache.increment("n", LONG).await.unwrap(), 1);
    assert!(cache.compare_and_swap("c", None, b"1", LONG).await.unwrap());

    // The subscription resumes (messages published before the resubscribe
    // completes are lost, as with any Redis pub/sub client).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = publisher.publish("ch", b"after").await;
        match tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
            Ok(Some(message)) => {
                assert_eq!(message, b"after");
                break;
            }
            Ok(None) => panic!("subscription ended"),
            Err(_) => assert!(Instant::now() < deadline, "no resubscribe within 20 s"),
        }
    }
    cache.ping().await.expect("ping after recovery");
}
