//! The `zen` binary itself: `zen serve` on an empty data dir comes up on the embedded defaults,
//! creates its development PKI, answers `/health`, and drains to exit 0 on SIGTERM.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serve_on_an_empty_data_dir_comes_up_and_drains_on_sigterm() {
    let data_dir = tempfile::tempdir().unwrap();
    let (grpc_port, http_port, admin_port) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_zen"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir.path())
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{grpc_port}"))
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("--admin-addr")
        .arg(format!("127.0.0.1:{admin_port}"))
        .env_remove("ZEN_DATABASE_URL")
        .env_remove("ZEN_ENV")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("http://127.0.0.1:{http_port}/health");
    let healthy = loop {
        if let Ok(response) = reqwest::blocking::get(&url) {
            break response.status();
        }
        assert!(
            Instant::now() < deadline,
            "zen serve never answered /health"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "zen serve exited early"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(healthy, 200);
    for file in [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "admin.crt",
        "admin.key",
    ] {
        assert!(data_dir.path().join("pki").join(file).is_file(), "{file}");
    }
    assert!(data_dir.path().join("zen.db").is_file());

    let term = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "zen serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn production_without_certificates_is_a_clear_start_error() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_zen"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("ZEN_ENV", "production")
        .env("ZEN_DATABASE_URL", "postgres://zen@127.0.0.1:1/zen")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("never generates certificates"), "{stderr}");
    assert!(
        !data_dir.path().join("pki").exists(),
        "nothing may be generated"
    );
}
