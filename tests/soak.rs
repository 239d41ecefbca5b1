//! Soak: the real `zen` binary on PostgreSQL and Redis under signed webhook load paced at half
//! the peak it measured itself (16 senders, one connection each), for `ZEN_SOAK_SECONDS`
//! (default 180: the CI version; the full drill is 1800, `scripts/drills.sh --soak`). Every 10 s it samples resident memory, open file
//! descriptors, connection-pool waiters and the p99 of the answers of those 10 s, and prints
//! the row. Afterwards: nothing but 202 was answered, every 202 is stored, the audit chain
//! verifies, and none of the samples grows: the last resident size and descriptor count are
//! within a margin of the largest of the first half (after a 30 s warm-up), no pool waiter is
//! left, and the last p99 is within 3 times the median p99 (+20 ms).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::json;
use support::drill::{assert_chain_verifies, deliver, stored_events, webhook_target};
use support::process::ZenProcess;
use support::{test_redis_url, TestDatabase, ZenUnderTest};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const WARM_UP: Duration = Duration::from_secs(30);
const SENDERS: usize = 16;

fn soak_duration() -> Duration {
    let seconds = std::env::var("ZEN_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(seconds)
}

/// One row of the soak's table.
#[derive(Debug)]
struct Sample {
    at: Duration,
    rss_mib: f64,
    fds: usize,
    pool_waiting: f64,
    answered: usize,
    p99_ms: f64,
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The value of `zen_db_pool_connections{state="waiting"}` in the admin scrape.
async fn pool_waiting(zen: &ZenProcess) -> f64 {
    let text = reqwest::get(zen.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("zen_db_pool_connections") && l.contains("state=\"waiting\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn p99(latencies: &mut [Duration]) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort();
    let i = ((latencies.len() as f64) * 0.99).ceil() as usize - 1;
    latencies[i.min(latencies.len() - 1)].as_secs_f64() * 1000.0
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_the_peak_for_a_while_grows_nothing() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let Some(redis) = test_redis_url().await else {
        return;
    };
    let zen = ZenProcess::spawn(&[
        "--database-url".into(),
        database.url.clone(),
        "--redis-url".into(),
        redis,
        "--local-login".into(),
        "true".into(),
    ])
    .await;
    let target = webhook_target(&zen, "soak", json!({ "rateLimitPerSecond": 1000000 })).await;
    let url = zen.http_url(&format!("/webhooks/{}", target.source_id));
    let client = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // The peak: 5 s of closed-loop load from every sender.
    let peak_for = Duration::from_secs(5);
    let started = Instant::now();
    let peak_senders: Vec<_> = (0..SENDERS)
        .map(|worker| {
            let (client, url, secret) = (client.clone(), url.clone(), target.secret.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while started.elapsed() < peak_for {
                    n += 1;
                    let nonce = format!("peak-{worker}-{n}");
                    let body = json!({ "alert": nonce }).to_string();
                    let r = deliver(&client, &url, &secret, &nonce, body).await.unwrap();
                    assert_eq!(r.status(), StatusCode::ACCEPTED);
                }
                n
            })
        })
        .collect();
    let mut peak_count = 0;
    for s in peak_senders {
        peak_count += s.await.unwrap();
    }
    let peak = peak_count as f64 / peak_for.as_secs_f64();
    let rate = peak / 2.0;

    // Half the peak, paced: each sender has one connection of its own and sends on its own
    // schedule, one delivery at a time (a late answer delays its next tick rather than opening
    // another connection, so the server's descriptors measure the server, not the load).
    let soak = soak_duration();
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let accepted = Arc::new(Mutex::new(0usize));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(SENDERS as f64 / rate);
    let senders: Vec<_> = (0..SENDERS)
        .map(|worker| {
            let client = Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let (url, secret) = (url.clone(), target.secret.clone());
            let (latencies, failures, accepted) =
                (latencies.clone(), failures.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Spread the senders over one interval.
                tokio::time::sleep(interval * worker as u32 / SENDERS as u32).await;
                let mut n = 0usize;
                while started.elapsed() < soak {
                    ticker.tick().await;
                    n += 1;
                    let nonce = format!("soak-{worker}-{n}");
                    let body = json!({ "alert": nonce }).to_string();
                    let sent = Instant::now();
                    match deliver(&client, &url, &secret, &nonce, body).await {
                        Ok(r) if r.status() == StatusCode::ACCEPTED => {
                            latencies.lock().unwrap().push(sent.elapsed());
                            *accepted.lock().unwrap() += 1;
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{nonce}: {}", r.status())),
                        Err(e) => failures.lock().unwrap().push(format!("{nonce}: {e}")),
                    }
                }
            })
        })
        .collect();

    let pid = zen.pid();
    let mut samples = vec![];
    eprintln!(
        "soak: peak {peak:.0} deliveries/s, soaking at {rate:.0}/s for {soak:?}\n\
         {:>6} {:>9} {:>5} {:>12} {:>9} {:>8}",
        "t (s)", "RSS MiB", "fds", "pool waiting", "answered", "p99 ms"
    );
    while started.elapsed() < soak {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let mut window = std::mem::take(&mut *latencies.lock().unwrap());
        let sample = Sample {
            at: started.elapsed(),
            rss_mib: zen.resident_bytes() as f64 / (1024.0 * 1024.0),
            fds: open_fds(pid),
            pool_waiting: pool_waiting(&zen).await,
            answered: window.len(),
            p99_ms: p99(&mut window),
        };
        eprintln!(
            "{:>6.0} {:>9.1} {:>5} {:>12} {:>9} {:>8.1}",
            sample.at.as_secs_f64(),
            sample.rss_mib,
            sample.fds,
            sample.pool_waiting,
            sample.answered,
            sample.p99_ms
        );
        samples.push(sample);
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );

    // Nothing grows.
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at >= WARM_UP).collect();
    assert!(
        steady.len() >= 4,
        "too short a soak to judge: {} samples",
        steady.len()
    );
    let first_half = &steady[..steady.len() / 2];
    let last = steady.last().unwrap();
    let rss_early = first_half.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    let fds_early = first_half.iter().map(|s| s.fds).max().unwrap();
    let mut p99s: Vec<f64> = steady.iter().map(|s| s.p99_ms).collect();
    p99s.sort_by(f64::total_cmp);
    let median_p99 = p99s[p99s.len() / 2];
    let rss_slope = slope(
        &steady
            .iter()
            .map(|s| (s.at.as_secs_f64(), s.rss_mib))
            .collect::<Vec<_>>(),
    ) * 3600.0;
    eprintln!(
        "soak: RSS trend {rss_slope:+.1} MiB/h; last RSS {:.1} MiB (largest of the first half {rss_early:.1}); \
         fds {} ({fds_early}); p99 last {:.1} ms, median {median_p99:.1} ms",
        last.rss_mib, last.fds, last.p99_ms
    );
    assert!(
        last.rss_mib <= rss_early + 24.0,
        "resident memory grew: {:.1} MiB, {rss_early:.1} MiB in the first half",
        last.rss_mib
    );
    assert!(
        last.fds <= fds_early + 16,
        "open descriptors grew: {}, {fds_early} in the first half",
        last.fds
    );
    assert_eq!(
        last.pool_waiting, 0.0,
        "callers waiting for a pooled connection"
    );
    assert!(
        last.p99_ms <= median_p99 * 3.0 + 20.0,
        "p99 grew: {:.1} ms, median {median_p99:.1} ms",
        last.p99_ms
    );

    // Every 202 is stored; the chain verifies.
    let stored = stored_events(
        &target.http,
        &zen,
        &target.token,
        &target.tenant_id,
        &format!("webhookSourceId={}", target.source_id),
    )
    .await;
    let accepted = *accepted.lock().unwrap();
    eprintln!(
        "soak: {accepted} deliveries stored at {:.0}/s",
        accepted as f64 / soak.as_secs_f64()
    );
    assert_eq!(
        stored.len(),
        peak_count + accepted,
        "stored vs acknowledged"
    );
    assert_chain_verifies(&target.http, &zen, &target.token, &target.tenant_id).await;
    zen.stop().await;
    database.drop_database().await;
}
