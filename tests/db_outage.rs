//! PostgreSQL stopped for 15 s under webhook load, on a private PostgreSQL (never the shared
//! one): every delivery is answered within 3 s, only 202 or 503 with `Retry-After`; deliveries
//! are accepted again within 2 s of the database's return; every 202 is stored; the tenant's
//! audit chain verifies. Needs the PostgreSQL 15 binaries under /usr/lib/postgresql/15/bin and
//! a `postgres` system user when run as root (in CI their absence is a failure).

mod support;

use std::process::Command;
use std::time::Duration;

use support::drill::{free_port, webhook_outage_drill};

const OUTAGE: Duration = Duration::from_secs(15);

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a PostgreSQL tool, as the `postgres` user when this runs as root (initdb refuses root).
fn pg(tool: &str, args: &[&str]) -> bool {
    let program = format!("{PG_BIN}/{tool}");
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let mut command = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &program]);
        c
    } else {
        Command::new(&program)
    };
    command
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A private cluster in a temporary directory, stopped and removed however the test ends.
struct PrivatePostgres {
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn create(port: u16) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("zen-pg-outage-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let _ = Command::new("chown")
            .args(["postgres:postgres", dir.to_str()?])
            .status();
        let data = dir.join("data");
        let data = data.to_str()?;
        if !pg("initdb", &["-D", data, "-U", "postgres", "--auth=trust"]) {
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        let this = PrivatePostgres { dir, port };
        this.start().then_some(this)
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    fn start(&self) -> bool {
        let options = format!("-p {} -k {}", self.port, self.dir.display());
        pg(
            "pg_ctl",
            &["-D", &self.data(), "-o", &options, "-w", "start"],
        )
    }

    fn stop(&self) -> bool {
        pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_under_load_is_answered_fast_and_loses_nothing() {
    let port = free_port();
    let Some(postgres) = PrivatePostgres::create(port) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "a private PostgreSQL could not be started in CI"
        );
        eprintln!("skipped: a private PostgreSQL could not be started");
        return;
    };
    webhook_outage_drill(
        &[
            "--database-url".into(),
            format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        ],
        "PostgreSQL",
        OUTAGE,
        || postgres.stop(),
        || async { postgres.start() },
    )
    .await;
    drop(postgres);
}
