//! SQLite on a volume that fills up under webhook load, then is read-only: the real `zen`
//! binary with its database on a small tmpfs of its own. While the volume is full every
//! delivery is refused with 503, `Retry-After` and a problem that says what is wrong (never a
//! 500, never a 202 that is not stored); once space is freed, deliveries are accepted again
//! without a restart. On the volume remounted read-only (Linux refuses that while the database
//! is open for writing, so Zen is stopped first), `zen serve` refuses to start, saying why,
//! and changes nothing; writable again, it starts, every 202 is stored, the audit chain
//! verifies and `PRAGMA integrity_check` finds the database intact. Needs root (to mount the
//! tmpfs); in CI its absence is a failure.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use support::drill::{assert_chain_verifies, deliver, stored_events, webhook_target};
use support::process::ZenProcess;
use support::ZenUnderTest;

/// A tmpfs mounted for the test, unmounted however it ends.
struct SmallVolume {
    dir: tempfile::TempDir,
}

impl SmallVolume {
    fn mount(size: &str) -> Option<SmallVolume> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "a tmpfs could not be mounted in CI (the drill runs as root)"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        Some(SmallVolume { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, mode: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success(), "remount {mode}");
    }

    /// Fills what is left of the volume with a file; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        // The last partial chunk, byte by byte in pages, so that not even a page is left.
        while file.write_all(&chunk[..512]).is_ok() {}
        path
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

struct Answer {
    sent: Duration,
    status: StatusCode,
    retry_after: bool,
    detail: String,
    event_id: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_or_read_only_sqlite_volume_refuses_writes_clearly_and_recovers() {
    let Some(volume) = SmallVolume::mount("32m") else {
        return;
    };
    let database = volume.path().join("zen.db");
    let args = [
        "--database-url".into(),
        format!("sqlite://{}", database.display()),
        "--local-login".into(),
        "true".into(),
    ];
    let data_dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let zen = ZenProcess::spawn_on(data_dir.clone(), &args).await;
    let target = webhook_target(&zen, "disk", json!({ "rateLimitPerSecond": 100000 })).await;

    // Phases, from the start of the load: writable 2 s, full 4 s, freed 4 s.
    let phase = Duration::from_secs(2);
    let total = phase * 5;
    let started = Instant::now();
    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let senders: Vec<_> = (0..4)
        .map(|worker| {
            let client = Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let url = zen.http_url(&format!("/webhooks/{}", target.source_id));
            let (secret, answers) = (target.secret.clone(), answers.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while started.elapsed() < total {
                    n += 1;
                    let nonce = format!("w{worker}-{n}");
                    // 4 KiB bodies: the volume's last pages go quickly.
                    let body = json!({ "alert": nonce, "pad": "x".repeat(4096) }).to_string();
                    let sent = started.elapsed();
                    let response = deliver(&client, &url, &secret, &nonce, body)
                        .await
                        .unwrap_or_else(|e| panic!("delivery {nonce} at {sent:?}: {e}"));
                    let status = response.status();
                    let retry_after = response.headers().contains_key("retry-after");
                    let text = response.text().await.unwrap_or_default();
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    answers.lock().unwrap().push(Answer {
                        sent,
                        status,
                        retry_after,
                        detail: v["detail"].as_str().unwrap_or(&text).to_owned(),
                        event_id: v["eventIds"][0].as_str().map(str::to_owned),
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(phase).await;
    let filler = volume.fill();
    let full_at = started.elapsed();
    tokio::time::sleep(phase * 2).await;
    std::fs::remove_file(&filler).unwrap();
    let freed_at = started.elapsed();
    for sender in senders {
        if let Err(error) = sender.await {
            panic!("{error}\nthe server's log:\n{}", zen.log_tail());
        }
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());

    for a in &answers {
        match a.status {
            StatusCode::ACCEPTED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(a.retry_after, "503 without Retry-After at {:?}", a.sent);
            }
            other => panic!("{other} at {:?}: {}\n{}", a.sent, a.detail, zen.log_tail()),
        }
    }
    // Refused while full, saying why.
    let refused_in = |from: Duration, to: Duration| -> Vec<&Answer> {
        answers
            .iter()
            .filter(|a| a.sent > from + Duration::from_millis(500) && a.sent < to)
            .collect()
    };
    let while_full = refused_in(full_at, freed_at);
    assert!(!while_full.is_empty());
    // (Some may still be stored: SQLite reuses the space its write-ahead log already holds.)
    assert!(
        while_full
            .iter()
            .any(|a| a.detail.contains("no space left")),
        "{:?}",
        while_full.first().map(|a| &a.detail)
    );
    // Accepted again within 2 s of the space coming back, without a restart.
    let late: Vec<(Duration, &str)> = answers
        .iter()
        .filter(|a| a.sent > freed_at + Duration::from_secs(2))
        .filter(|a| a.status != StatusCode::ACCEPTED)
        .map(|a| (a.sent, a.detail.as_str()))
        .collect();
    assert!(
        late.is_empty(),
        "still refused after space was freed at {freed_at:?}: {late:?}\n{}",
        zen.log_tail()
    );

    let accepted: Vec<&str> = answers
        .iter()
        .filter_map(|a| a.event_id.as_deref())
        .collect();
    eprintln!(
        "{} deliveries, {} accepted, {} refused while full, saying {:?}",
        answers.len(),
        accepted.len(),
        while_full.len(),
        while_full.first().map(|a| &a.detail),
    );
    zen.stop().await;

    // Read-only: refused at start, saying why, and nothing changed.
    let before = std::fs::read(&database).unwrap();
    volume.remount("ro");
    let log = ZenProcess::start_fails(data_dir.clone(), &args).await;
    let last = log.lines().last().unwrap_or_default().to_owned();
    assert!(
        last.contains("read-only") || last.contains("readonly"),
        "the refusal does not say the database is read-only: {last}"
    );
    volume.remount("rw");
    assert!(
        std::fs::read(&database).unwrap() == before,
        "the database changed"
    );
    eprintln!("started on a read-only volume: {last}");

    // Writable again: it starts, and everything acknowledged is there.
    let zen = ZenProcess::spawn_on(data_dir, &args).await;
    let token = support::drill::sign_in_root(&target.http, &zen).await;
    let stored = stored_events(
        &target.http,
        &zen,
        &token,
        &target.tenant_id,
        &format!("webhookSourceId={}", target.source_id),
    )
    .await;
    for id in &accepted {
        assert_eq!(stored.get(*id), Some(&1), "accepted event {id}");
    }
    assert_eq!(
        stored.len(),
        accepted.len(),
        "stored events nobody was told of"
    );
    assert_chain_verifies(&target.http, &zen, &token, &target.tenant_id).await;
    zen.stop().await;

    let integrity = integrity_check(&database).await;
    assert_eq!(integrity, "ok");
    drop(volume);
}

/// `PRAGMA integrity_check` on the database file, with Zen stopped.
async fn integrity_check(database: &Path) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", database.display()))
        .await
        .unwrap();
    let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(r,)| r)
        .collect::<Vec<_>>()
        .join("\n")
}
