//! The PostgreSQL read replica (docs/STORAGE.md, "Read replica"), against real databases and
//! the real `zen` binary: a private primary and a streaming standby of it
//! (tests/support/postgres.rs; in CI their absence is a failure), Zen with `--database-url` on
//! the primary and `--database-read-url` on the standby.
//!
//! Which pool answered a list is read from `zen_database_reads_total{pool}` on the admin
//! listener: nothing but this test's own list calls counts there, so the counter's change
//! across one call says where that call went. Assertions that depend on the timing of the
//! freshness check (once a second) are written for either outcome: a list answered by the
//! replica must show the replica's data, one answered by the primary the primary's.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use sqlx::Connection;
use support::drill::{deliver, free_port, stored_events, webhook_target, WebhookTarget};
use support::postgres::PrivatePostgres;
use support::process::ZenProcess;
use support::{create_local_user_as_operator, request_id, ZenUnderTest, PASSWORD};

/// One series of the admin listener's `/metrics` (0 when absent).
async fn metric(http: &Client, zen: &ZenProcess, series: &str) -> f64 {
    let text = http
        .get(zen.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// (list reads answered by the primary, by the replica) so far.
async fn reads(http: &Client, zen: &ZenProcess) -> (f64, f64) {
    (
        metric(http, zen, r#"zen_database_reads_total{pool="primary"}"#).await,
        metric(http, zen, r#"zen_database_reads_total{pool="replica"}"#).await,
    )
}

/// Which pool answered one list of the tenant's events, and what it listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Primary,
    Replica,
}

async fn list_events(
    http: &Client,
    zen: &ZenProcess,
    token: &str,
    tenant_id: &str,
) -> (Pool, HashMap<String, usize>) {
    let before = reads(http, zen).await;
    // One page (`stored_events` reads until the last page; these tenants have a few events).
    let listed = stored_events(http, zen, token, tenant_id, "").await;
    let after = reads(http, zen).await;
    let pool = match (after.0 - before.0, after.1 - before.1) {
        (1.0, 0.0) => Pool::Primary,
        (0.0, 1.0) => Pool::Replica,
        other => panic!("one list, but reads changed by {other:?}"),
    };
    (pool, listed)
}

/// Waits (at most `within`) until the monitor reports the replica fresh.
async fn wait_fresh(http: &Client, zen: &ZenProcess, within: Duration) {
    let deadline = Instant::now() + within;
    while metric(http, zen, "zen_database_replica_fresh").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the replica never became fresh:\n{}",
            zen.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lists the tenant's events until the replica answers (it is fresh, but the list may cross a
/// check); at most 5 tries.
async fn list_on_replica(
    http: &Client,
    zen: &ZenProcess,
    token: &str,
    tenant_id: &str,
) -> HashMap<String, usize> {
    for _ in 0..5 {
        wait_fresh(http, zen, Duration::from_secs(10)).await;
        if let (Pool::Replica, listed) = list_events(http, zen, token, tenant_id).await {
            return listed;
        }
    }
    panic!("five lists while the replica was fresh, none answered by it");
}

/// Lists through the replica until the list shows every one of `events` (at most 5 s: a fresh
/// replica shows every commit older than about two freshness checks).
async fn replica_lists_with(
    http: &Client,
    zen: &ZenProcess,
    token: &str,
    tenant_id: &str,
    events: &[&str],
) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = list_on_replica(http, zen, token, tenant_id).await;
        if events.iter().all(|e| listed.contains_key(*e)) {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "after 5 s the fresh replica still lists {listed:?}, not all of {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Delivers one signed event to the target's source; its stored event id.
async fn store_event(zen: &ZenProcess, target: &WebhookTarget, nonce: &str) -> String {
    let response = deliver(
        &target.http,
        &zen.http_url(&format!("/webhooks/{}", target.source_id)),
        &target.secret,
        nonce,
        json!({ "alert": nonce }).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    answer["eventIds"][0].as_str().unwrap().to_owned()
}

/// A get of one event, which the primary always answers.
async fn get_event(http: &Client, zen: &ZenProcess, token: &str, tenant: &str, event: &str) {
    let response = http
        .get(zen.http_url(&format!("/v1/tenants/{tenant}/events/{event}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "get of {event}");
}

async fn replay(standby: &PrivatePostgres, pause: bool) {
    let mut conn = sqlx::PgConnection::connect(&standby.url()).await.unwrap();
    let call = if pause {
        "SELECT pg_wal_replay_pause()"
    } else {
        "SELECT pg_wal_replay_resume()"
    };
    sqlx::query(call).execute(&mut conn).await.unwrap();
    // Pausing is a request: wait until replay has actually stopped.
    let want = if pause { "paused" } else { "not paused" };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if state == want {
            return;
        }
        assert!(Instant::now() < deadline, "replay is {state}, not {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A person who is no platform admin, with a tenant of their own and a webhook source in it.
async fn second_tenant(zen: &ZenProcess, http: &Client) -> WebhookTarget {
    create_local_user_as_operator(zen, "bob", false).await;
    let login: Value = http
        .post(zen.http_url("/auth/local/login"))
        .json(&json!({ "username": "bob", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"]["accessToken"].as_str().unwrap().to_owned();
    let created: Value = http
        .post(zen.http_url("/v1/tenants"))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "name": "replica-b" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenant_id = created["tenant"]["tenantId"].as_str().unwrap().to_owned();
    let source: Value = http
        .post(zen.http_url(&format!("/v1/tenants/{tenant_id}/webhookSources")))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "name": "b", "enabled": true,
                       "verification": { "scheme": "WEBHOOK_SCHEME_ZEN_HMAC" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    WebhookTarget {
        http: http.clone(),
        token,
        tenant_id,
        source_id: source["webhookSource"]["sourceId"]
            .as_str()
            .unwrap()
            .to_owned(),
        secret: source["secret"].as_str().unwrap().to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_read_a_fresh_replica_and_the_primary_otherwise() {
    let Some(primary) = PrivatePostgres::create_or_skip(free_port()) else {
        return;
    };
    let standby = primary
        .standby(free_port())
        .expect("a streaming standby of the private PostgreSQL starts");
    let zen = ZenProcess::spawn(&[
        "--database-url".into(),
        primary.url(),
        "--database-read-url".into(),
        standby.url(),
        "--local-login".into(),
        "true".into(),
    ])
    .await;
    let a = webhook_target(&zen, "replica-a", json!({ "rateLimitPerSecond": 10000 })).await;
    let http = a.http.clone();
    let (token, tenant) = (a.token.clone(), a.tenant_id.clone());
    let first = store_event(&zen, &a, "a-1").await;

    // Fresh: lists are answered by the replica, which has every event.
    replica_lists_with(&http, &zen, &token, &tenant, &[&first]).await;

    // 1. Replay paused, then an event stored: a get finds it at once (the primary); a list
    // answered by the replica does not show it; within about two checks the replica is no
    // longer fresh and lists are answered by the primary, with the event.
    let mut stale_list_seen = false;
    let mut paused_event = String::new();
    for attempt in 1..=3 {
        wait_fresh(&http, &zen, Duration::from_secs(10)).await;
        replay(&standby, true).await;
        let paused = Instant::now();
        let event = store_event(&zen, &a, &format!("a-paused-{attempt}")).await;
        get_event(&http, &zen, &token, &tenant, &event).await;
        let mut fell_back = None;
        while fell_back.is_none() {
            let (pool, listed) = list_events(&http, &zen, &token, &tenant).await;
            match pool {
                Pool::Replica => {
                    assert!(
                        !listed.contains_key(&event),
                        "the paused replica listed an event stored after the pause"
                    );
                    stale_list_seen = true;
                }
                Pool::Primary => {
                    assert!(listed.contains_key(&event), "the primary lost {event}");
                    fell_back = Some(paused.elapsed());
                }
            }
            assert!(
                paused.elapsed() < Duration::from_secs(5),
                "lists still read the paused replica 5 s after the pause"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let fell_back = fell_back.unwrap();
        eprintln!("attempt {attempt}: lists fell back to the primary {fell_back:?} after the pause (replica listed stale: {stale_list_seen})");
        assert!(
            fell_back < Duration::from_secs(4),
            "lists fell back only after {fell_back:?}"
        );
        assert_eq!(metric(&http, &zen, "zen_database_replica_fresh").await, 0.0);
        assert!(metric(&http, &zen, "zen_database_replica_lag_bytes").await > 0.0);
        // Every list answered by the primary while the replica is stale.
        for _ in 0..3 {
            let (pool, listed) = list_events(&http, &zen, &token, &tenant).await;
            assert_eq!(pool, Pool::Primary);
            assert!(listed.contains_key(&event));
        }
        paused_event = event;
        // 2. Replay resumed: fresh again, lists back on the replica, with everything.
        // Fresh again means the replica replayed what the primary had a check earlier, so
        // the event stored before that is there at once.
        replay(&standby, false).await;
        let listed = list_on_replica(&http, &zen, &token, &tenant).await;
        assert!(listed.contains_key(&paused_event), "{listed:?}");
        assert!(listed.contains_key(&first));
        if stale_list_seen {
            break;
        }
    }
    assert!(
        stale_list_seen,
        "in three tries, no list was answered by the replica while its replay was paused"
    );

    // 4. Tenant isolation on the replica: another person's tenant, listed through the replica,
    // shows its own event and none of the first tenant's; its owner cannot list the first.
    let b = second_tenant(&zen, &http).await;
    let b_event = store_event(&zen, &b, "b-1").await;
    let listed_b = replica_lists_with(&http, &zen, &b.token, &b.tenant_id, &[&b_event]).await;
    assert_eq!(
        listed_b.keys().collect::<Vec<_>>(),
        vec![&b_event],
        "tenant b through the replica"
    );
    let listed_a = list_on_replica(&http, &zen, &token, &tenant).await;
    assert!(
        !listed_a.contains_key(&b_event),
        "tenant a lists tenant b's event"
    );
    assert!(listed_a.contains_key(&first) && listed_a.contains_key(&paused_event));
    let refused = http
        .get(zen.http_url(&format!("/v1/tenants/{tenant}/events")))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap();
    assert!(
        matches!(
            refused.status(),
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
        ),
        "{}",
        refused.status()
    );

    // 3. The replica stopped: lists answer 200 with current data (the primary), `/ready` stays
    // ready, and the replica is reported not fresh.
    assert!(standby.stop(), "the standby stops");
    let stopped = Instant::now();
    let mut latest = String::new();
    let mut slowest = Duration::ZERO;
    let mut n = 0;
    while stopped.elapsed() < Duration::from_secs(5) {
        n += 1;
        latest = store_event(&zen, &a, &format!("a-down-{n}")).await;
        let started = Instant::now();
        let (pool, listed) = list_events(&http, &zen, &token, &tenant).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(pool, Pool::Primary, "a list answered by a stopped replica");
        assert!(listed.contains_key(&latest), "a list missed {latest}");
        let ready = http.get(zen.http_url("/ready")).send().await.unwrap();
        assert_eq!(
            ready.status(),
            StatusCode::OK,
            "unready without the replica"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("replica stopped: {n} lists, slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(3), "a list took {slowest:?}");
    assert_eq!(metric(&http, &zen, "zen_database_replica_fresh").await, 0.0);
    let ready = http.get(zen.http_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(!latest.is_empty());

    // The three series are described as docs/OBSERVABILITY.md lists them.
    let scrape = http
        .get(zen.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (name, kind) in [
        ("zen_database_reads_total", "counter"),
        ("zen_database_replica_fresh", "gauge"),
        ("zen_database_replica_lag_bytes", "gauge"),
    ] {
        assert!(
            scrape.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is not a {kind} in the scrape"
        );
        assert!(
            scrape.contains(&format!("# HELP {name} ")),
            "{name} has no help"
        );
    }

    zen.stop().await;
}
