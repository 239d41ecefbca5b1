//! The test OpenID Provider (`tests/oidc/provider.mjs`, npm `oidc-provider`) as a child
//! process, and a browser-less login through its dev interactions.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const CLIENT_ID: &str = "zen";
pub const CLIENT_SECRET: &str = "zen-test-secret";

/// The repository root: the nearest ancestor of the test's crate holding the provider script
/// (this module is also used by the root package's tests).
fn repo_root() -> PathBuf {
    let start = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .find(|dir| dir.join("tests/oidc/provider.mjs").is_file())
        .map(PathBuf::from)
        .unwrap_or(start)
}

/// Why the provider cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let root = repo_root();
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => return Some("`node` is not on PATH (Debian package nodejs)".into()),
    }
    if !root
        .join("node_modules/oidc-provider/package.json")
        .exists()
    {
        return Some(format!(
            "node_modules/oidc-provider is missing: run `npm ci` in {}",
            root.display()
        ));
    }
    None
}

/// `None` (after printing why) when node or the package is missing and `CI` is not set;
/// panics when `CI` is set.
pub fn prerequisites_or_skip(test: &str) -> bool {
    match missing_prerequisite() {
        None => true,
        Some(reason) if std::env::var_os("CI").is_some() => {
            panic!("{test}: the OIDC test provider cannot run: {reason}")
        }
        Some(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            false
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProviderOptions {
    pub port: u16,
    pub redirect_uri: String,
    pub auth_method: &'static str,
    pub tamper: &'static str,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            port: 0,
            // Never connected to: the login stops at the redirect to it.
            redirect_uri: "http://127.0.0.1:9/auth/callback/test".into(),
            auth_method: "client_secret_basic",
            tamper: "none",
        }
    }
}

/// A running `tests/oidc/provider.mjs`; killed on drop. Its stderr is kept and printed if
/// the test panics.
pub struct TestProvider {
    pub issuer: String,
    pub port: u16,
    pub redirect_uri: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestProvider {
    pub async fn start(options: ProviderOptions) -> TestProvider {
        let root = repo_root();
        let mut child = Command::new("node")
            .current_dir(&root)
            .arg("tests/oidc/provider.mjs")
            .args(["--port", &options.port.to_string()])
            .args(["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET])
            .args(["--redirect-uri", &options.redirect_uri])
            .args(["--auth-method", options.auth_method])
            .args(["--tamper", options.tamper])
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node tests/oidc/provider.mjs");

        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });

        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            other => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "test provider did not start ({other:?}); stderr:\n{}",
                    log.lock().unwrap().join("\n")
                )
            }
        };
        // Keep draining stdout (a closed pipe would kill the provider on its next write).
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let announced: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad first line {line:?}: {e}"));
        TestProvider {
            issuer: announced["issuer"].as_str().unwrap().to_owned(),
            port: announced["port"].as_u64().unwrap() as u16,
            redirect_uri: options.redirect_uri,
            child,
            log,
        }
    }

    /// Switch the tamper mode (see the header of tests/oidc/provider.mjs).
    pub async fn set_tamper(&self, mode: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}/__test/tamper?mode={mode}", self.issuer))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "set tamper mode {mode}");
    }

    /// Request counters: discovery, jwks, token.
    pub async fn stats(&self) -> serde_json::Value {
        let body = reqwest::Client::new()
            .get(format!("{}/__test/stats", self.issuer))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    /// Stop the provider now (and wait for it to exit).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(log) = self.log.lock() {
                eprintln!("--- test provider stderr ---\n{}", log.join("\n"));
            }
        }
    }
}

/// `code` and `state` of the authorization response.
#[derive(Clone, Debug)]
pub struct Callback {
    pub code: String,
    pub state: String,
    pub iss: Option<String>,
}

/// Drive a browser-less login: follow `authorization_url` through the provider's dev
/// interactions (login form with `login` as the login name, then consent) until the provider
/// redirects to `redirect_uri`, which is not followed; return its `code` and `state`.
pub async fn login(authorization_url: &str, redirect_uri: &str, login: &str) -> Callback {
    let prefix = redirect_uri.to_owned();
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.url().as_str().starts_with(&prefix) {
                attempt.stop()
            } else if attempt.previous().len() > 10 {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        }))
        .build()
        .unwrap();

    let mut response = browser.get(authorization_url).send().await.unwrap();
    for _ in 0..6 {
        let status = response.status();
        if status.is_redirection() {
            let location = response.headers()["location"].to_str().unwrap().to_owned();
            assert!(
                location.starts_with(redirect_uri),
                "unexpected redirect to {location}"
            );
            let url = reqwest::Url::parse(&location).unwrap();
            let param = |name: &str| {
                url.query_pairs()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
            };
            if let Some(error) = param("error") {
                panic!(
                    "provider answered error={error} ({:?})",
                    param("error_description")
                );
            }
            return Callback {
                code: param("code").expect("code in the redirect"),
                state: param("state").expect("state in the redirect"),
                iss: param("iss"),
            };
        }
        let page_url = response.url().clone();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "{status} at {page_url}: {body}");
        let action = form_action(&body).unwrap_or_else(|| page_url.to_string());
        let form: Vec<(&str, &str)> = if body.contains(r#"name="prompt" value="login""#) {
            vec![("prompt", "login"), ("login", login), ("password", "any")]
        } else if body.contains(r#"name="prompt" value="consent""#) {
            vec![("prompt", "consent")]
        } else {
            panic!("unexpected page at {page_url}: {body}");
        };
        response = browser.post(&action).form(&form).send().await.unwrap();
    }
    panic!("the login did not reach the redirect URI");
}

fn form_action(html: &str) -> Option<String> {
    let start = html.find("<form")?;
    let rest = &html[start..];
    let at = rest.find("action=\"")? + "action=\"".len();
    let end = rest[at..].find('"')?;
    Some(rest[at..at + end].replace("&amp;", "&"))
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
