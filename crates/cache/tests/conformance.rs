//! The cache conformance suite: every test runs on the memory backend and on
//! Redis (see `common::conformance!`), each under its own key prefix.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Harness, Kind};
use zen_cache::{CacheError, Rate, Subscription, MAX_TTL};

const LONG: Duration = Duration::from_secs(60);
const TASKS: usize = 64;

conformance!(
    basic_values,
    invalid_ttls_are_rejected,
    ttl_expiry,
    set_replaces_the_ttl,
    set_if_absent_race_has_one_winner,
    take_is_one_time_under_concurrency,
    compare_and_swap_semantics,
    compare_and_swap_race_has_one_winner,
    compare_and_swap_loses_no_update,
    increment_windows,
    increment_is_atomic,
    counters_add_and_subtract,
    capped_lists,
    capped_list_pushes_lose_nothing_under_concurrency,
    rate_limits_spend_a_burst_and_refill,
    rate_limit_is_atomic,
    publish_reaches_every_subscriber,
    subscription_is_active_when_subscribe_returns,
    unsubscribe_and_resubscribe,
    subscriber_churn_does_not_disturb_others,
    prefix_isolation,
    handles_on_one_backend_share_state,
);

// ------------------------------------------------------------------ helpers

async fn recv(sub: &mut Subscription) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap_or_else(|_| panic!("no message on {} within 5 s", sub.channel()))
        .expect("subscription ended")
}

async fn assert_silent(sub: &mut Subscription) {
    if let Ok(message) = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await {
        panic!("unexpected message on {}: {message:?}", sub.channel());
    }
}

/// Run `f(i)` on `n` tasks at once and collect the results.
async fn race<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let fut = f(i);
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

// -------------------------------------------------------------------- tests

async fn basic_values(h: &Harness) {
    let c = h.cache().await;
    assert_eq!(
        c.backend(),
        match h.kind {
            Kind::Memory => "memory",
            Kind::Redis => "redis",
        }
    );
    c.ping().await.unwrap();

    assert_eq!(c.get("k").await.unwrap(), None);
    c.set("k", b"one", LONG).await.unwrap();
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&b"one"[..]));
    c.set("k", b"two", LONG).await.unwrap();
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&b"two"[..]));

    // Binary-safe, including NUL and invalid UTF-8; empty is not absent.
    let binary = [0u8, 0xff, 0xfe, b'\n', 0, 1, 2];
    c.set("bin", &binary, LONG).await.unwrap();
    assert_eq!(c.get("bin").await.unwrap().as_deref(), Some(&binary[..]));
    c.set("empty", b"", LONG).await.unwrap();
    assert_eq!(c.get("empty").await.unwrap(), Some(Vec::new()));

    // Keys are arbitrary strings.
    c.set("a b:ç/*?[x]", b"odd", LONG).await.unwrap();
    assert_eq!(
        c.get("a b:ç/*?[x]").await.unwrap().as_deref(),
        Some(&b"odd"[..])
    );

    assert!(c.delete("k").await.unwrap());
    assert!(!c.delete("k").await.unwrap());
    assert_eq!(c.get("k").await.unwrap(), None);

    assert_eq!(c.take("bin").await.unwrap().as_deref(), Some(&binary[..]));
    assert_eq!(c.take("bin").await.unwrap(), None);
    assert_eq!(c.get("bin").await.unwrap(), None);
}

async fn invalid_ttls_are_rejected(h: &Harness) {
    let c = h.cache().await;
    let invalid = |r: Result<(), CacheError>| {
        assert!(
            matches!(r, Err(CacheError::InvalidArgument(_))),
            "expected InvalidArgument, got {r:?}"
        )
    };
    for ttl in [Duration::ZERO, MAX_TTL + Duration::from_secs(1)] {
        invalid(c.set("k", b"v", ttl).await);
        invalid(c.set_if_absent("k", b"v", ttl).await.map(|_| ()));
        invalid(c.compare_and_swap("k", None, b"v", ttl).await.map(|_| ()));
        invalid(c.increment("k", ttl).await.map(|_| ()));
    }
    assert_eq!(c.get("k").await.unwrap(), None, "nothing was written");
    // Sub-millisecond TTLs round up to 1 ms rather than fail.
    c.set("k", b"v", Duration::from_micros(10)).await.unwrap();
}

async fn ttl_expiry(h: &Harness) {
    let c = h.cache().await;
    let short = Duration::from_millis(150);
    c.set("gone", b"v", short).await.unwrap();
    c.set("nx", b"v", short).await.unwrap();
    c.set("take", b"v", short).await.unwrap();
    c.set("cas", b"old", short).await.unwrap();
    c.set("kept", b"v", LONG).await.unwrap();
    assert!(c.get("gone").await.unwrap().is_some());

    tokio::time::sleep(Duration::from_millis(400)).await;

    assert_eq!(c.get("gone").await.unwrap(), None);
    assert!(!c.delete("gone").await.unwrap());
    assert_eq!(c.take("take").await.unwrap(), None);
    assert!(c.set_if_absent("nx", b"again", LONG).await.unwrap());
    assert!(!c
        .compare_and_swap("cas", Some(b"old"), b"new", LONG)
        .await
        .unwrap());
    assert!(c.compare_and_swap("cas", None, b"new", LONG).await.unwrap());
    assert_eq!(c.get("cas").await.unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(c.get("kept").await.unwrap().as_deref(), Some(&b"v"[..]));
}

async fn set_replaces_the_ttl(h: &Harness) {
    let c = h.cache().await;
    c.set("k", b"v", Duration::from_millis(150)).await.unwrap();
    c.set("k", b"w", LONG).await.unwrap();
    c.set("j", b"v", LONG).await.unwrap();
    c.set("j", b"w", Duration::from_millis(150)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&b"w"[..]));
    assert_eq!(c.get("j").await.unwrap(), None);
}

async fn set_if_absent_race_has_one_winner(h: &Harness) {
    let c = h.cache().await;
    for round in 0..5 {
        let key = format!("idem:{round}");
        let results = race(TASKS, |i| {
            let (c, key) = (Arc::clone(&c), key.clone());
            async move {
                let won = c
                    .set_if_absent(&key, format!("{i}").as_bytes(), LONG)
                    .await
                    .unwrap();
                (i, won)
            }
        })
        .await;
        let winners: Vec<usize> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let stored = c.get(&key).await.unwrap().unwrap();
        assert_eq!(stored, format!("{}", winners[0]).into_bytes());
        // Later attempts lose too.
        assert!(!c.set_if_absent(&key, b"late", LONG).await.unwrap());
    }
}

async fn take_is_one_time_under_concurrency(h: &Harness) {
    let c = h.cache().await;
    for round in 0..5 {
        let key = format!("state:{round}");
        let value = format!("login-state-{round}").into_bytes();
        c.set(&key, &value, LONG).await.unwrap();
        let results = race(TASKS, |_| {
            let (c, key) = (Arc::clone(&c), key.clone());
            async move { c.take(&key).await.unwrap() }
        })
        .await;
        let got: Vec<_> = results.into_iter().flatten().collect();
        assert_eq!(got, vec![value], "round {round}: exactly one taker");
        assert_eq!(c.get(&key).await.unwrap(), None);
    }
}

async fn compare_and_swap_semantics(h: &Harness) {
    let c = h.cache().await;
    // Absent: only `None` matches.
    assert!(!c
        .compare_and_swap("k", Some(b""), b"x", LONG)
        .await
        .unwrap());
    assert!(!c
        .compare_and_swap("k", Some(b"a"), b"x", LONG)
        .await
        .unwrap());
    assert_eq!(c.get("k").await.unwrap(), None);
    assert!(c.compare_and_swap("k", None, b"a", LONG).await.unwrap());
    // Present: `None` no longer matches, the exact value does.
    assert!(!c.compare_and_swap("k", None, b"b", LONG).await.unwrap());
    assert!(!c
        .compare_and_swap("k", Some(b"A"), b"b", LONG)
        .await
        .unwrap());
    assert!(!c
        .compare_and_swap("k", Some(b"a\0"), b"b", LONG)
        .await
        .unwrap());
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&b"a"[..]));
    assert!(c
        .compare_and_swap("k", Some(b"a"), b"b", LONG)
        .await
        .unwrap());
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&b"b"[..]));

    // An empty value is present, not absent.
    c.set("e", b"", LONG).await.unwrap();
    assert!(!c.compare_and_swap("e", None, b"x", LONG).await.unwrap());
    assert!(c
        .compare_and_swap("e", Some(b""), b"x", LONG)
        .await
        .unwrap());

    // Binary values compare byte for byte.
    let bin = [0u8, 0xff, 0x80];
    c.set("bin", &bin, LONG).await.unwrap();
    assert!(c
        .compare_and_swap("bin", Some(&bin), &[1], LONG)
        .await
        .unwrap());

    // A successful swap sets the TTL.
    assert!(c
        .compare_and_swap("k", Some(b"b"), b"c", Duration::from_millis(150))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.get("k").await.unwrap(), None);
}

async fn compare_and_swap_race_has_one_winner(h: &Harness) {
    let c = h.cache().await;
    for round in 0..5 {
        // From a value...
        let key = format!("family:{round}");
        c.set(&key, b"gen-0", LONG).await.unwrap();
        let results = race(TASKS, |i| {
            let (c, key) = (Arc::clone(&c), key.clone());
            async move {
                let new = format!("gen-1-by-{i}");
                let won = c
                    .compare_and_swap(&key, Some(b"gen-0"), new.as_bytes(), LONG)
                    .await
                    .unwrap();
                (new, won)
            }
        })
        .await;
        let winners: Vec<_> = results.into_iter().filter(|r| r.1).collect();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(
            c.get(&key).await.unwrap().unwrap(),
            winners[0].0.clone().into_bytes()
        );

        // ...and from absent.
        let key = format!("fresh:{round}");
        let results = race(TASKS, |i| {
            let (c, key) = (Arc::clone(&c), key.clone());
            async move {
                c.compare_and_swap(&key, None, format!("{i}").as_bytes(), LONG)
                    .await
                    .unwrap()
            }
        })
        .await;
        assert_eq!(results.iter().filter(|w| **w).count(), 1, "round {round}");
    }
}

async fn compare_and_swap_loses_no_update(h: &Harness) {
    // Optimistic read-modify-write through CAS: every increment lands.
    let c = h.cache().await;
    const WORKERS: usize = 16;
    const EACH: usize = 10;
    race(WORKERS, |_| {
        let c = Arc::clone(&c);
        async move {
            for _ in 0..EACH {
                loop {
                    let current = c.get("counter").await.unwrap();
                    let n: usize = current
                        .as_deref()
                        .map(|v| std::str::from_utf8(v).unwrap().parse().unwrap())
                        .unwrap_or(0);
                    let next = (n + 1).to_string();
                    if c.compare_and_swap("counter", current.as_deref(), next.as_bytes(), LONG)
                        .await
                        .unwrap()
                    {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert_eq!(
        c.get("counter").await.unwrap().unwrap(),
        (WORKERS * EACH).to_string().into_bytes()
    );
}

async fn increment_windows(h: &Harness) {
    let c = h.cache().await;
    let window = Duration::from_millis(400);
    assert_eq!(c.increment("rl", window).await.unwrap(), 1);
    assert_eq!(c.increment("rl", window).await.unwrap(), 2);
    assert_eq!(c.increment("rl", window).await.unwrap(), 3);
    assert_eq!(c.get("rl").await.unwrap().as_deref(), Some(&b"3"[..]));

    // Later increments do not extend the window: it is fixed by the first.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(c.increment("rl", window).await.unwrap(), 4);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(c.get("rl").await.unwrap(), None, "window over");
    assert_eq!(c.increment("rl", window).await.unwrap(), 1, "new window");

    // Windows are per key.
    assert_eq!(c.increment("other", LONG).await.unwrap(), 1);

    // A value written with `set` counts on if it is a number...
    c.set("preset", b"41", LONG).await.unwrap();
    assert_eq!(c.increment("preset", LONG).await.unwrap(), 42);
    // ...and is an error otherwise.
    c.set("text", b"abc", LONG).await.unwrap();
    assert!(matches!(
        c.increment("text", LONG).await,
        Err(CacheError::NotAnInteger)
    ));
    assert_eq!(c.get("text").await.unwrap().as_deref(), Some(&b"abc"[..]));
}

async fn counters_add_and_subtract(h: &Harness) {
    let c = h.cache().await;
    let window = Duration::from_millis(400);
    assert_eq!(c.add("n", 5, window).await.unwrap(), 5);
    assert_eq!(c.add("n", -2, window).await.unwrap(), 3);
    assert_eq!(c.get("n").await.unwrap().as_deref(), Some(&b"3"[..]));
    // The window is the first add's.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(c.add("n", 1, window).await.unwrap(), 4);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(c.get("n").await.unwrap(), None, "window over");
    assert_eq!(c.add("n", -1, LONG).await.unwrap(), -1, "counts from 0");
    // A seeded value counts on; text is an error.
    c.set("seeded", b"41", LONG).await.unwrap();
    assert_eq!(c.add("seeded", 1, LONG).await.unwrap(), 42);
    c.set("text", b"abc", LONG).await.unwrap();
    assert!(matches!(
        c.add("text", 1, LONG).await,
        Err(CacheError::NotAnInteger | CacheError::Backend(_))
    ));
    // Concurrent adds lose nothing.
    race(TASKS, |_| {
        let c = Arc::clone(&c);
        async move { c.add("busy", 3, LONG).await.unwrap() }
    })
    .await;
    assert_eq!(c.add("busy", 0, LONG).await.unwrap(), 3 * TASKS as i64);
}

async fn increment_is_atomic(h: &Harness) {
    let c = h.cache().await;
    let counts = race(TASKS, |_| {
        let c = Arc::clone(&c);
        async move { c.increment("hits", LONG).await.unwrap() }
    })
    .await;
    let counts: BTreeSet<u64> = counts.into_iter().collect();
    assert_eq!(counts, (1..=TASKS as u64).collect::<BTreeSet<_>>());
}

async fn capped_lists(h: &Harness) {
    let c = h.cache().await;
    assert!(c.newest("log", 10).await.unwrap().is_empty(), "absent");
    for i in 0..5u8 {
        // Binary items, an empty one among them.
        let item = if i == 2 { Vec::new() } else { vec![i, 0, 0xff] };
        c.push_capped("log", &item, 3, LONG).await.unwrap();
    }
    assert_eq!(
        c.newest("log", 10).await.unwrap(),
        vec![vec![4, 0, 0xff], vec![3, 0, 0xff], Vec::new()],
        "the newest three, newest first"
    );
    assert_eq!(c.newest("log", 1).await.unwrap(), vec![vec![4, 0, 0xff]]);
    assert!(c.newest("log", 0).await.unwrap().is_empty());
    assert!(matches!(
        c.push_capped("log", b"x", 0, LONG).await,
        Err(CacheError::InvalidArgument(_))
    ));
    assert!(matches!(
        c.push_capped("log", b"x", 3, Duration::ZERO).await,
        Err(CacheError::InvalidArgument(_))
    ));

    // Every push restarts the list's life; without pushes it expires.
    c.push_capped("short", b"a", 3, Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.push_capped("short", b"b", 3, Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.newest("short", 3).await.unwrap().len(), 2, "extended");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(c.newest("short", 3).await.unwrap().is_empty(), "expired");
    assert!(c.delete("log").await.unwrap());
    assert!(c.newest("log", 3).await.unwrap().is_empty(), "deleted");
}

async fn capped_list_pushes_lose_nothing_under_concurrency(h: &Harness) {
    let c = h.cache().await;
    race(TASKS, |i| {
        let c = Arc::clone(&c);
        async move {
            c.push_capped("busy", format!("{i}").as_bytes(), TASKS, LONG)
                .await
                .unwrap()
        }
    })
    .await;
    let items: BTreeSet<Vec<u8>> = c
        .newest("busy", TASKS * 2)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let expected: BTreeSet<Vec<u8>> = (0..TASKS).map(|i| format!("{i}").into_bytes()).collect();
    assert_eq!(items, expected);
    // Past its cap the oldest go.
    c.push_capped("busy", b"one more", TASKS, LONG)
        .await
        .unwrap();
    assert_eq!(c.newest("busy", TASKS * 2).await.unwrap().len(), TASKS);
}

async fn rate_limits_spend_a_burst_and_refill(h: &Harness) {
    let c = h.cache().await;
    // One unit every 100 ms, five at once.
    let rate = Rate::per_second(10, 5);
    for spent in 1..=5u32 {
        let d = c.rate_limit("rl", rate, 1).await.unwrap();
        assert!(d.allowed, "unit {spent} of the burst: {d:?}");
        assert_eq!(d.remaining, 5 - spent, "{d:?}");
    }
    let refused = c.rate_limit("rl", rate, 1).await.unwrap();
    assert!(!refused.allowed, "{refused:?}");
    assert_eq!(refused.remaining, 0);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(100),
        "{refused:?}"
    );
    assert!(
        refused.reset_after <= Duration::from_millis(500),
        "{refused:?}"
    );
    // A refusal spends nothing: after one interval exactly one more unit is there.
    tokio::time::sleep(Duration::from_millis(130)).await;
    assert!(c.rate_limit("rl", rate, 1).await.unwrap().allowed);
    assert!(!c.rate_limit("rl", rate, 1).await.unwrap().allowed);
    // Cost 0 reads without spending; a cost above the burst is never allowed.
    let read = c.rate_limit("rl", rate, 0).await.unwrap();
    assert!(read.allowed && read.remaining == 0, "{read:?}");
    assert!(!c.rate_limit("fresh", rate, 6).await.unwrap().allowed);
    let batch = c.rate_limit("fresh", rate, 5).await.unwrap();
    assert!(batch.allowed && batch.remaining == 0, "{batch:?}");
    // Keys are independent; a quiet key is whole again once its reset has passed.
    assert_eq!(c.rate_limit("other", rate, 1).await.unwrap().remaining, 4);
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(c.rate_limit("rl", rate, 1).await.unwrap().remaining, 4);
}

async fn rate_limit_is_atomic(h: &Harness) {
    let c = h.cache().await;
    // A burst of 20 and a slow refill: of 64 concurrent callers exactly 20 get through.
    let rate = Rate {
        interval: Duration::from_secs(60),
        burst: 20,
    };
    let allowed = race(TASKS, |_| {
        let c = Arc::clone(&c);
        async move { c.rate_limit("shared", rate, 1).await.unwrap().allowed }
    })
    .await;
    assert_eq!(allowed.iter().filter(|a| **a).count(), 20);
}

async fn publish_reaches_every_subscriber(h: &Harness) {
    let c = h.cache().await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(c.subscribe("events").await.unwrap());
    }
    let mut other = c.subscribe("elsewhere").await.unwrap();
    assert_eq!(subs[0].channel(), "events");

    // Nobody listening is not an error.
    c.publish("nobody", b"x").await.unwrap();

    // Binary payloads, and empty ones (a bare wake-up).
    let mut messages: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'm', i, 0xff]).collect();
    messages.push(Vec::new());
    messages.push(b"text".to_vec());
    for m in &messages {
        c.publish("events", m).await.unwrap();
    }
    for sub in &mut subs {
        for m in &messages {
            assert_eq!(&recv(sub).await, m, "in order, complete");
        }
        assert_eq!(sub.missed(), 0);
    }
    assert_silent(&mut other).await;
}

async fn subscription_is_active_when_subscribe_returns(h: &Harness) {
    // Subscribe on one handle (replica), publish at once on another: no
    // message may slip in before the subscription is live on the server.
    let publisher = h.open("live:").await;
    let subscriber = h.open("live:").await;
    let rounds = race(32, |i| {
        let (publisher, subscriber) = (Arc::clone(&publisher), Arc::clone(&subscriber));
        async move {
            let channel = format!("ch-{i}");
            let mut sub = subscriber.subscribe(&channel).await.unwrap();
            publisher.publish(&channel, b"first").await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), sub.recv())
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    for (i, got) in rounds.into_iter().enumerate() {
        assert_eq!(got.as_deref(), Some(&b"first"[..]), "channel ch-{i}");
    }
}

async fn unsubscribe_and_resubscribe(h: &Harness) {
    let c = h.cache().await;
    let mut sub = c.subscribe("ch").await.unwrap();
    c.publish("ch", b"1").await.unwrap();
    assert_eq!(recv(&mut sub).await, b"1");
    drop(sub);
    c.publish("ch", b"into the void").await.unwrap();

    let mut again = c.subscribe("ch").await.unwrap();
    c.publish("ch", b"2").await.unwrap();
    // On Redis a message published just before `subscribe` may still be in
    // flight and reach the new subscriber: only later ones are guaranteed.
    let mut first = recv(&mut again).await;
    if first == b"into the void" {
        first = recv(&mut again).await;
    }
    assert_eq!(first, b"2");

    // Dropped right away, many times: the last subscription still works.
    for _ in 0..20 {
        drop(c.subscribe("ch2").await.unwrap());
    }
    let mut last = c.subscribe("ch2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await; // let releases run
    c.publish("ch2", b"3").await.unwrap();
    assert_eq!(recv(&mut last).await, b"3");
}

async fn subscriber_churn_does_not_disturb_others(h: &Harness) {
    let c = h.cache().await;
    let mut stable = c.subscribe("ch").await.unwrap();
    let churn = {
        let c = Arc::clone(&c);
        tokio::spawn(async move {
            for _ in 0..50 {
                let sub = c.subscribe("ch").await.unwrap();
                tokio::task::yield_now().await;
                drop(sub);
            }
        })
    };
    for i in 0..50u8 {
        c.publish("ch", &[i]).await.unwrap();
        tokio::task::yield_now().await;
    }
    churn.await.unwrap();
    for i in 0..50u8 {
        assert_eq!(recv(&mut stable).await, vec![i]);
    }
}

async fn prefix_isolation(h: &Harness) {
    let a = h.open("a:").await;
    let b = h.open("b:").await;

    a.set("k", b"from-a", LONG).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), None);
    assert!(b.set_if_absent("k", b"from-b", LONG).await.unwrap());
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"from-a"[..]));
    assert!(b.delete("k").await.unwrap());
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"from-a"[..]));
    assert_eq!(b.take("k").await.unwrap(), None);
    assert_eq!(a.increment("n", LONG).await.unwrap(), 1);
    assert_eq!(b.increment("n", LONG).await.unwrap(), 1);
    assert!(b.compare_and_swap("k", None, b"b", LONG).await.unwrap());
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"from-a"[..]));

    let mut on_a = a.subscribe("ch").await.unwrap();
    let mut on_b = b.subscribe("ch").await.unwrap();
    a.publish("ch", b"for-a").await.unwrap();
    assert_eq!(recv(&mut on_a).await, b"for-a");
    assert_silent(&mut on_b).await;
    b.publish("ch", b"for-b").await.unwrap();
    assert_eq!(recv(&mut on_b).await, b"for-b");
    assert_silent(&mut on_a).await;
}

async fn handles_on_one_backend_share_state(h: &Harness) {
    // On Redis: two "replicas" with their own connections. On memory: two
    // handles in one process.
    let one = h.open("shared:").await;
    let two = h.open("shared:").await;

    one.set("session", b"s1", LONG).await.unwrap();
    assert_eq!(
        two.get("session").await.unwrap().as_deref(),
        Some(&b"s1"[..])
    );
    assert_eq!(
        two.take("session").await.unwrap().as_deref(),
        Some(&b"s1"[..])
    );
    assert_eq!(one.get("session").await.unwrap(), None);

    let results = race(TASKS, |i| {
        let c = Arc::clone(if i % 2 == 0 { &one } else { &two });
        async move { c.set_if_absent("nonce", b"seen", LONG).await.unwrap() }
    })
    .await;
    assert_eq!(results.iter().filter(|w| **w).count(), 1);

    let counts = race(TASKS, |i| {
        let c = Arc::clone(if i % 2 == 0 { &one } else { &two });
        async move { c.increment("rate", LONG).await.unwrap() }
    })
    .await;
    assert_eq!(counts.into_iter().max(), Some(TASKS as u64));

    let mut on_two = two.subscribe("fanout").await.unwrap();
    let mut on_one = one.subscribe("fanout").await.unwrap();
    one.publish("fanout", b"hello").await.unwrap();
    assert_eq!(recv(&mut on_two).await, b"hello");
    assert_eq!(recv(&mut on_one).await, b"hello");
    two.publish("fanout", b"back").await.unwrap();
    assert_eq!(recv(&mut on_one).await, b"back");
    assert_eq!(recv(&mut on_two).await, b"back");
}
