//! A private PostgreSQL cluster for the drills that stop, restart or replicate the database
//! (never the shared one on 5432). Needs the PostgreSQL 15 binaries under
//! /usr/lib/postgresql/15/bin and a `postgres` system user when run as root (initdb refuses
//! root).

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether this process runs as root (the PostgreSQL tools then run as `postgres`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

/// Runs a PostgreSQL tool, as the `postgres` user when this runs as root; true on success.
pub fn pg(tool: &str, args: &[&str]) -> bool {
    let program = format!("{PG_BIN}/{tool}");
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &program]);
        c
    } else {
        Command::new(&program)
    };
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A cluster in a temporary directory of its own, stopped and removed however the test ends.
pub struct PrivatePostgres {
    dir: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    /// `initdb` and start on `port`; `None` where the binaries cannot run.
    pub fn create(port: u16) -> Option<Self> {
        let this = Self::empty(port)?;
        let data = this.data();
        if !pg("initdb", &["-D", &data, "-U", "postgres", "--auth=trust"]) {
            return None;
        }
        this.start().then_some(this)
    }

    /// A directory owned by `postgres` for a cluster on `port`, with nothing in it yet.
    pub fn empty(port: u16) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("zen-pg-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let _ = Command::new("chown")
            .args(["postgres:postgres", dir.to_str()?])
            .status();
        Some(PrivatePostgres { dir, port })
    }

    /// `create`, or in CI a failure (there the binaries are part of the machine); `None`
    /// elsewhere, after saying why the test is skipped.
    pub fn create_or_skip(port: u16) -> Option<Self> {
        let postgres = Self::create(port);
        if postgres.is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "a private PostgreSQL could not be started in CI"
            );
            eprintln!("skipped: a private PostgreSQL could not be started");
        }
        postgres
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    /// The socket directory and port, for `pg_ctl -o`.
    fn options(&self) -> String {
        format!("-p {} -k {}", self.port, self.dir.display())
    }

    pub fn start(&self) -> bool {
        pg(
            "pg_ctl",
            &["-D", &self.data(), "-o", &self.options(), "-w", "start"],
        )
    }

    pub fn stop(&self) -> bool {
        pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
    }

    /// `pg_ctl restart -m fast`: every connection is closed, the server is back when this
    /// returns.
    pub fn restart(&self) -> bool {
        pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &self.options(),
                "-m",
                "fast",
                "-w",
                "restart",
            ],
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
