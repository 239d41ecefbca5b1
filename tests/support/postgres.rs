//! A private PostgreSQL cluster for the drills that stop, restart or replicate the database
//! (never the shared one on 5432), and a streaming standby of it. Needs the PostgreSQL 15
//! binaries under /usr/lib/postgresql/15/bin and a `postgres` system user when run as root
//! (initdb refuses root).

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

    /// A streaming standby of this cluster on `port`: `pg_basebackup -R` (which writes
    /// `primary_conninfo` and `standby.signal`), then started. PostgreSQL 15's defaults are all
    /// it needs of the primary (`wal_level = replica`, `max_wal_senders = 10`, and the
    /// `replication` lines `initdb --auth=trust` writes into `pg_hba.conf`); `hot_standby` is on
    /// by default, so it answers read-only queries. `None` when it cannot be made or started.
    pub fn standby(&self, port: u16) -> Option<Self> {
        let standby = Self::empty(port)?;
        let primary_port = self.port.to_string();
        let copied = pg(
            "pg_basebackup",
            &[
                "-D",
                &standby.data(),
                "-R",
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port,
                "-U",
                "postgres",
            ],
        );
        (copied && standby.start()).then_some(standby)
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
