//! The operator CLI: `zen login`, then `zen tenant|member|invite|cluster|token|source|
//! remediation|event|audit …` as the logged-in person, over Zen's public REST API (the gateway,
//! the same routes `curl` uses). The session (base URL and tokens) lives in a file readable only
//! by its owner: `$ZEN_CLI_CONFIG`, else `$XDG_CONFIG_HOME/zen/cli.json`, else
//! `~/.config/zen/cli.json`.
//!
//! Exit codes (stable, for scripts): see [`Failure`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Columns of the scalar fields (lists: one row per item).
    Table,
    /// The API's JSON answer, pretty-printed.
    Json,
    /// The same as YAML.
    Yaml,
    /// Only the id of the object (for a bootstrap token: the token), for `$(…)` in scripts.
    Id,
}

/// A failed call, with the exit code scripts can branch on:
/// 3 not logged in or token refused (401), 4 permission denied (403), 5 not found (404),
/// 6 invalid argument (400, 422), 7 conflict or precondition (409, 412), 8 Zen unreachable or
/// unavailable (5xx, connection errors), 9 a watch ended before it saw what it waited for;
/// 1 anything else, 2 a usage error (from the argument parser).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn from_status(status: u16, body: &str) -> Self {
        let code = match status {
            401 => 3,
            403 => 4,
            404 => 5,
            400 | 422 => 6,
            409 | 412 => 7,
            500..=599 => 8,
            _ => 1,
        };
        let detail = serde_json::from_str::<Value>(body)
            .ok()
            .map(|p| {
                let title = p["title"].as_str().unwrap_or_default().to_owned();
                let detail = p["detail"].as_str().unwrap_or_default();
                let code = p["code"].as_str().unwrap_or_default();
                format!("{title}: {detail} ({code})")
            })
            .unwrap_or_else(|| body.chars().take(300).collect());
        Self::new(code, format!("HTTP {status}: {detail}"))
    }
}

/// The stored session of `zen login`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Session {
    pub url: String,
    pub username: String,
    pub access_token: String,
    pub refresh_token: String,
}

/// Where the session lives.
pub fn session_path() -> PathBuf {
    if let Some(path) = std::env::var_os("ZEN_CLI_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("zen").join("cli.json")
}

fn load_session() -> Result<Session, Failure> {
    let path = session_path();
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Failure::new(
            3,
            format!(
                "not logged in (no session in {}): run `zen login`",
                path.display()
            ),
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Failure::new(3, format!("{} is not a session: {e}", path.display())))
}

fn save_session(session: &Session) -> anyhow::Result<PathBuf> {
    let path = session_path();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(session)?;
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        file.write_all(text.as_bytes())?;
    }
    #[cfg(not(unix))]
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A REST client for one session.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// The logged-in client.
    pub fn from_session() -> anyhow::Result<Self> {
        let session = load_session()?;
        Self::new(&session.url, Some(session.access_token))
    }

    /// One call; mutating calls carry a fresh `x-request-id` (the idempotency key).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if method != reqwest::Method::GET {
            request = request.header("x-request-id", uuid::Uuid::new_v4().to_string());
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::new(8, format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| Failure::new(8, format!("reading the answer of {url}: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(Failure::from_status(status, &text));
        }
        if text.trim().is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_str(&text)
            .map_err(|e| Failure::new(1, format!("the answer of {url} is not JSON: {e}")))
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, Failure> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

/// `zen login`: a local-login session stored for the other commands.
pub async fn login(url: &str, username: &str, password: &str) -> anyhow::Result<Session> {
    let client = Client::new(url, None)?;
    let answer = client
        .post(
            "/auth/local/login",
            json!({"username": username, "password": password}),
        )
        .await?;
    let session = Session {
        url: url.trim_end_matches('/').to_owned(),
        username: username.to_owned(),
        access_token: answer["token"]["accessToken"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        refresh_token: answer["token"]["refreshToken"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    if session.access_token.is_empty() {
        return Err(Failure::new(1, "the login answer holds no access token").into());
    }
    let path = save_session(&session)?;
    eprintln!(
        "logged in as {username} at {}; session in {}",
        session.url,
        path.display()
    );
    Ok(session)
}

/// Prints an answer. `object` names the member holding the object (`tenant`, `cluster` …) or,
/// for lists, the array member (`tenants` …); `id` names the object's id field.
pub fn print(answer: &Value, output: Output, object: &str, id: &str) -> anyhow::Result<()> {
    let inner = if object.is_empty() {
        answer
    } else {
        answer.get(object).unwrap_or(&Value::Null)
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(answer)?),
        Output::Yaml => print!("{}", to_yaml(answer)),
        Output::Id => match inner {
            Value::Array(items) => {
                for item in items {
                    println!("{}", item[id].as_str().unwrap_or_default());
                }
            }
            Value::Null => println!("{}", answer[id].as_str().unwrap_or_default()),
            other => println!("{}", other[id].as_str().unwrap_or_default()),
        },
        Output::Table => match inner {
            Value::Array(items) => print!("{}", table(items)),
            Value::Null => print!("{}", table(std::slice::from_ref(answer))),
            other => print!("{}", table(std::slice::from_ref(other))),
        },
    }
    Ok(())
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The columns worth a terminal's width, per kind of object (named by its id field).
fn preferred_columns(items: &[Value]) -> Option<&'static [&'static str]> {
    const KINDS: &[(&str, &[&str])] = &[
        (
            "remediationId",
            &["remediationId", "status", "risk", "title", "version"],
        ),
        ("sourceId", &["sourceId", "name", "enabled", "url"]),
        (
            "eventId",
            &["eventId", "severity", "type", "title", "count"],
        ),
        (
            "recordId",
            &[
                "sequence",
                "action",
                "outcome",
                "resourceType",
                "createTime",
            ],
        ),
        (
            "clusterId",
            &["clusterId", "name", "status", "connectionState"],
        ),
        ("inviteId", &["inviteId", "email", "role", "expireTime"]),
        ("tenantId", &["tenantId", "name", "status"]),
    ];
    let first = items.first()?;
    KINDS
        .iter()
        .find(|(id, _)| {
            first.get(*id).is_some() && (*id != "tenantId" || first.get("role").is_none())
        })
        .map(|(_, columns)| *columns)
        .or_else(|| first.get("role").map(|_| &["userId", "email", "role"][..]))
}

/// A plain text table: the kind's preferred columns, else every scalar member (in first-seen
/// order).
pub fn table(items: &[Value]) -> String {
    let mut columns: Vec<String> = preferred_columns(items)
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    let curated = !columns.is_empty();
    for item in items.iter().filter(|_| !curated) {
        if let Value::Object(map) = item {
            for (key, value) in map {
                if scalar(value).is_some() && !columns.contains(key) {
                    columns.push(key.clone());
                }
            }
        }
    }
    if columns.is_empty() {
        return if items.is_empty() {
            "(none)\n".into()
        } else {
            "(no scalar fields; use --output json)\n".into()
        };
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            columns
                .iter()
                .map(|c| item.get(c).and_then(scalar).unwrap_or_default())
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut text = cells
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        text.truncate(text.trim_end().len());
        text + "\n"
    };
    let mut out = line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in rows {
        out += &line(row);
    }
    out
}

/// A small YAML emitter for JSON values (block style; strings always quoted as JSON strings,
/// which YAML accepts).
pub fn to_yaml(value: &Value) -> String {
    fn emit(value: &Value, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, v) in map {
                    let key = Value::String(key.clone()).to_string();
                    match v {
                        Value::Object(m) if !m.is_empty() => {
                            out.push_str(&format!("{pad}{key}:\n"));
                            emit(v, indent + 2, out);
                        }
                        Value::Array(a) if !a.is_empty() => {
                            out.push_str(&format!("{pad}{key}:\n"));
                            emit(v, indent + 2, out);
                        }
                        _ => out.push_str(&format!("{pad}{key}: {}\n", inline(v))),
                    }
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for item in items {
                    match item {
                        Value::Object(m) if !m.is_empty() => {
                            let mut nested = String::new();
                            emit(item, indent + 2, &mut nested);
                            out.push_str(&format!("{pad}- {}", &nested[indent + 2..]));
                        }
                        Value::Array(a) if !a.is_empty() => {
                            out.push_str(&format!("{pad}-\n"));
                            emit(item, indent + 2, out);
                        }
                        _ => out.push_str(&format!("{pad}- {}\n", inline(item))),
                    }
                }
            }
            other => out.push_str(&format!("{pad}{}\n", inline(other))),
        }
    }
    fn inline(value: &Value) -> String {
        match value {
            Value::Object(_) => "{}".into(),
            Value::Array(_) => "[]".into(),
            other => other.to_string(),
        }
    }
    let mut out = String::new();
    emit(value, 0, &mut out);
    out
}

/// `zen event watch`: the tenant's events (and remediation changes) over the WebSocket watch,
/// one JSON line each; heartbeats are not printed. Ends after `count` messages (0: never) or
/// when `timeout` passes without reaching it (exit code 9).
pub async fn watch(
    tenant: &str,
    after_event: Option<&str>,
    count: usize,
    timeout: Duration,
    output: Output,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let session = load_session()?;
    let ws_base = session
        .url
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let mut url = format!("{ws_base}/v1/tenants/{tenant}/events:watch");
    if let Some(event) = after_event {
        url += &format!("?resumeAfterEventId={event}");
    }
    let mut request = url
        .into_client_request()
        .context("building the watch request")?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", session.access_token)
            .parse()
            .context("the stored token is not a header value")?,
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut stream, _) =
        tokio::time::timeout_at(deadline, tokio_tungstenite::connect_async(request))
            .await
            .map_err(|_| Failure::new(9, "timed out connecting to the watch"))?
            .map_err(|e| Failure::new(8, format!("cannot open the watch: {e}")))?;
    eprintln!("watching tenant {tenant}");
    let mut seen = 0usize;
    loop {
        let next = if count == 0 {
            stream.next().await
        } else {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return Err(Failure::new(
                        9,
                        format!("the watch saw {seen} of {count} messages before the timeout"),
                    )
                    .into())
                }
            }
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text.to_string(),
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                return Err(Failure::new(8, format!("the watch closed: {why}")).into());
            }
            None => return Err(Failure::new(8, "the watch ended").into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(Failure::new(8, format!("the watch failed: {e}")).into()),
        };
        let message: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if message.get("heartbeat").is_some() {
            continue;
        }
        if let Some(error) = message.get("error") {
            return Err(
                Failure::new(4, format!("the watch was refused: {}", error["detail"])).into(),
            );
        }
        match output {
            Output::Yaml => print!("---\n{}", to_yaml(&message)),
            Output::Table => {
                let (kind, object) = if let Some(e) = message.get("event") {
                    ("event", e)
                } else if let Some(r) = message.get("remediation") {
                    ("remediation", r)
                } else {
                    ("other", &message)
                };
                let id = object["eventId"]
                    .as_str()
                    .or(object["remediationId"].as_str())
                    .unwrap_or_default();
                let what = object["title"].as_str().unwrap_or_default();
                let state = object["severity"]
                    .as_str()
                    .or(object["status"].as_str())
                    .unwrap_or_default();
                println!("{kind}\t{id}\t{state}\t{what}");
            }
            _ => println!("{}", serde_json::to_string(&message)?),
        }
        seen += 1;
        if count > 0 && seen >= count {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_scalars_in_aligned_columns() {
        let text = table(&[
            json!({"a": "t1", "name": "acme", "labels": {"a": "b"}}),
            json!({"a": "t22", "name": "b", "enabled": true}),
        ]);
        assert_eq!(text, "A    NAME  ENABLED\nt1   acme\nt22  b     true\n");
        let text = table(&[json!({"tenantId": "t1", "name": "acme", "status": "ACTIVE", "x": 1})]);
        assert_eq!(text, "TENANTID  NAME  STATUS\nt1        acme  ACTIVE\n");
    }

    #[test]
    fn yaml_nests_objects_and_lists() {
        let text = to_yaml(&json!({"a": {"b": [1, {"c": "d", "e": []}]}, "f": null}));
        assert_eq!(
            text,
            "\"a\":\n  \"b\":\n    - 1\n    - \"c\": \"d\"\n      \"e\": []\n\"f\": null\n"
        );
    }

    #[test]
    fn statuses_map_to_stable_exit_codes() {
        let codes: Vec<u8> = [401, 403, 404, 400, 409, 503, 418]
            .iter()
            .map(|s| Failure::from_status(*s, "{}").code)
            .collect();
        assert_eq!(codes, [3, 4, 5, 6, 7, 8, 1]);
    }
}

/// The nouns and verbs of the operator CLI (clap), and their dispatch.
pub mod commands {
    use super::*;
    use clap::Subcommand;

    fn enc(segment: &str) -> String {
        segment
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    /// The tenant every tenant-scoped command works in (`--tenant` or `ZEN_TENANT`).
    #[derive(Clone, Debug, clap::Args)]
    pub struct TenantArg {
        /// The tenant's id.
        #[arg(long, env = "ZEN_TENANT")]
        pub tenant: String,
    }

    #[derive(Subcommand)]
    pub enum TenantCommand {
        /// Create a tenant (platform admins); you become its owner.
        Create {
            /// A DNS label, unique on the platform.
            name: String,
            #[arg(long)]
            display_name: Option<String>,
        },
        /// List the tenants you belong to (all of them for platform admins).
        List,
        /// Show one tenant.
        Get { tenant_id: String },
    }

    #[derive(Subcommand)]
    pub enum MemberCommand {
        /// List the tenant's members and their roles.
        List(TenantArg),
    }

    #[derive(Clone, Copy, clap::ValueEnum)]
    pub enum Role {
        Viewer,
        Approver,
        Admin,
        Owner,
    }

    #[derive(Subcommand)]
    pub enum InviteCommand {
        /// Invite someone by e-mail with a role; prints the invite and its one-time token.
        Create {
            #[command(flatten)]
            tenant: TenantArg,
            #[arg(long)]
            email: String,
            #[arg(long, value_enum)]
            role: Role,
        },
        /// Accept an invite as the logged-in person (whose e-mail it names).
        Accept {
            invite_id: String,
            /// The invite's one-time token.
            #[arg(long, env = "ZEN_INVITE_TOKEN", hide_env_values = true)]
            token: String,
        },
    }

    #[derive(Subcommand)]
    pub enum ClusterCommand {
        /// Register a cluster in the tenant.
        Create {
            #[command(flatten)]
            tenant: TenantArg,
            name: String,
        },
        /// List the tenant's clusters.
        List(TenantArg),
        /// Show one cluster.
        Get {
            #[command(flatten)]
            tenant: TenantArg,
            cluster_id: String,
        },
    }

    #[derive(Subcommand)]
    pub enum TokenCommand {
        /// Create a one-time bootstrap token for `zen agent bootstrap` (`-o id` prints the token).
        Create {
            #[command(flatten)]
            tenant: TenantArg,
            #[arg(long)]
            cluster: String,
            /// Lifetime in seconds (default: the server's, 1 hour).
            #[arg(long)]
            ttl_seconds: Option<u64>,
        },
    }

    #[derive(Clone, Copy, clap::ValueEnum)]
    pub enum Scheme {
        ZenHmac,
        StandardWebhooks,
        Github,
        Stripe,
        Slack,
        Shopify,
        Bearer,
    }

    impl Scheme {
        fn proto(self) -> &'static str {
            match self {
                Scheme::ZenHmac => "WEBHOOK_SCHEME_ZEN_HMAC",
                Scheme::StandardWebhooks => "WEBHOOK_SCHEME_STANDARD_WEBHOOKS",
                Scheme::Github => "WEBHOOK_SCHEME_GITHUB",
                Scheme::Stripe => "WEBHOOK_SCHEME_STRIPE",
                Scheme::Slack => "WEBHOOK_SCHEME_SLACK",
                Scheme::Shopify => "WEBHOOK_SCHEME_SHOPIFY",
                Scheme::Bearer => "WEBHOOK_SCHEME_BEARER",
            }
        }
    }

    #[derive(Subcommand)]
    pub enum SourceCommand {
        /// Register a webhook source; `-o json` shows its URL and, once, its secret.
        Create {
            #[command(flatten)]
            tenant: TenantArg,
            /// A DNS label; becomes the events' source name.
            name: String,
            #[arg(long, value_enum)]
            scheme: Scheme,
            /// An EventMapping in proto3 JSON (e.g. mappings/falco.json).
            #[arg(long)]
            mapping: Option<PathBuf>,
            /// Read the secret from standard input instead of letting Zen generate one.
            #[arg(long)]
            secret_stdin: bool,
        },
        /// List the tenant's webhook sources.
        List(TenantArg),
    }

    #[derive(Subcommand)]
    pub enum RemediationCommand {
        /// Propose a remediation from a JSON file (a `Remediation` in proto3 JSON).
        Propose {
            #[command(flatten)]
            tenant: TenantArg,
            #[arg(long)]
            file: PathBuf,
        },
        /// List the tenant's remediations.
        List(TenantArg),
        /// Show one remediation.
        Get {
            #[command(flatten)]
            tenant: TenantArg,
            remediation_id: String,
        },
        /// Approve the remediation's current version as the logged-in person.
        Approve {
            #[command(flatten)]
            tenant: TenantArg,
            remediation_id: String,
            #[arg(long, default_value = "")]
            comment: String,
        },
        /// Wait until the remediation reaches a status (e.g. SUCCEEDED); exit 9 on timeout.
        Wait {
            #[command(flatten)]
            tenant: TenantArg,
            remediation_id: String,
            /// The status name, with or without the REMEDIATION_STATUS_ prefix.
            #[arg(long)]
            status: String,
            #[arg(long, default_value_t = 60)]
            timeout_seconds: u64,
        },
    }

    #[derive(Subcommand)]
    pub enum EventCommand {
        /// List the tenant's stored events, newest first.
        List {
            #[command(flatten)]
            tenant: TenantArg,
            #[arg(long, default_value_t = 50)]
            page_size: u32,
        },
        /// Follow the tenant's events live (WebSocket), one line per event or remediation change.
        Watch {
            #[command(flatten)]
            tenant: TenantArg,
            /// Start after the change that stored this event (default: from now on).
            #[arg(long)]
            after_event: Option<String>,
            /// Stop after this many messages (0: follow until interrupted).
            #[arg(long, default_value_t = 0)]
            count: usize,
            /// With --count: give up (exit 9) after this many seconds.
            #[arg(long, default_value_t = 60)]
            timeout_seconds: u64,
        },
    }

    pub async fn tenant(command: TenantCommand, output: Output) -> anyhow::Result<()> {
        let client = Client::from_session()?;
        match command {
            TenantCommand::Create { name, display_name } => {
                let mut tenant = json!({"name": name});
                if let Some(d) = display_name {
                    tenant["displayName"] = json!(d);
                }
                let answer = client.post("/v1/tenants", tenant).await?;
                print(&answer, output, "tenant", "tenantId")
            }
            TenantCommand::List => {
                let answer = client.get("/v1/tenants").await?;
                print(&answer, output, "tenants", "tenantId")
            }
            TenantCommand::Get { tenant_id } => {
                let answer = client
                    .get(&format!("/v1/tenants/{}", enc(&tenant_id)))
                    .await?;
                print(&answer, output, "tenant", "tenantId")
            }
        }
    }

    pub async fn member(command: MemberCommand, output: Output) -> anyhow::Result<()> {
        let client = Client::from_session()?;
        match command {
            MemberCommand::List(t) => {
                let answer = client
                    .get(&format!("/v1/tenants/{}/members", enc(&t.tenant)))
                    .await?;
                print(&answer, output, "members", "userId")
            }
        }
    }

    pub async fn invite(command: InviteCommand, output: Output) -> anyhow::Result<()> {
        let client = Client::from_session()?;
        match command {
            InviteCommand::Create {
                tenant,
                email,
                role,
            } => {
                let role = match role {
                    Role::Viewer => "ROLE_VIEWER",
                    Role::Approver => "ROLE_APPROVER",
                    Role::Admin => "ROLE_ADMIN",
                    Role::Owner => "ROLE_OWNER",
                };
                let answer = client
                    .post(
                        &format!("/v1/tenants/{}/invites", enc(&tenant.tenant)),
                        json!({"email": email, "role": role}),
                    )
                    .await?;
                if output == Output::Id {
                    // What the invitee needs: the invite's id and its token.
                    println!(
                        "{} {}",
                        answer["invite"]["inviteId"].as_str().unwrap_or_default(),
                        answer["token"].as_str().unwrap_or_default()
                    );
                    return Ok(());
                }
                print(&answer, output, "", "")
            }
            InviteCommand::Accept { invite_id, token } => {
                let answer = client
                    .post(
                        &format!("/v1/invites/{}:accept", enc(&invite_id)),
                        json!({"token": token}),
                    )
                    .await?;
                print(&answer, output, "member", "userId")
            }
        }
    }

    pub async fn cluster(command: ClusterCommand, output: Output) -> anyhow::Result<()> {
        let client = Client::from_session()?;
        match command {
            ClusterCommand::Create { tenant, name } => {
                let answer = client
                    .post(
                        &format!("/v1/tenants/{}/clusters", enc(&tenant.tenant)),
                        json!({"name": name}),
                    )
                    .await?;
                print(&answer, output, "cluster", "clusterId")
            }
            ClusterCommand::List(t) => {
                let answer = client
                    .get(&format!("/v1/tenants/{}/clusters", enc(&t.tenant)))
                    .await?;
                print(&answer, output, "clusters", "clusterId")
            }
            ClusterCommand::Get { tenant, cluster_id } => {
                let answer = client
                    .get(&format!(
                        "/v1/tenants/{}/clusters/{}",
                        enc(&tenant.tenant),
                        enc(&cluster_id)
                    ))
                    .await?;
                print(&answer, output, "cluster", "clusterId")
            }
        }
    }

    pub async fn token(command: TokenCommand, output: Output) -> anyhow::Result<()> {
        let client = Client::from_session()?;
        match command {
            TokenCommand::Create {
                tenant,
                cluster,
                ttl_seconds,
            } => {
                let mut body = json!({});
                if let Some(ttl) = ttl_seconds {
                    body["ttl"] = json!(format!("{ttl}s"));
                }
                let answer = client
                    .post(
                        &format!(
                            "/v1/tenants/{}/clusters/{}/bootstrapTokens",
                            enc(&tenant.tenant),
                            enc(&cluster)
                        ),
                        body,
                    )
                    .await?;
                print(&answer, output, "", "token")
            }
        }
    }

    pub async fn source(command: SourceCommand, output: Output) -> anyhow::Result<()> {
        let client = Client::from_session()?;
        match command {
            SourceCommand::Create {
                tenant,
                name,
                scheme,
                mapping,
                secret_stdin,
            } => {
                let mut source = json!({
                    "name": name, "enabled": true,
                    "verification": {"scheme": scheme.proto()},
                });
                if let Some(path) = mapping {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    source["mapping"] = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", path.display()))?;
                }
                if secret_stdin {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    source["secret"] = json!(line.trim_end_matches(['\r', '\n']));
                }
                let answer = client
                    .post(
                        &format!("/v1/tenants/{}/webhookSources", enc(&tenant.tenant)),
                        source,
                    )
                    .await?;
                print(&answer, output, "webhookSource", "sourceId")
            }
            SourceCommand::List(t) => {
                let answer = client
                    .get(&format!("/v1/tenants/{}/webhookSources", enc(&t.tenant)))
                    .await?;
                print(&answer, output, "webhookSources", "sourceId")
            }
        }
    }

    pub async fn remediation(command: RemediationCommand, output: Output) -> anyhow::Result<()> {
        let client = Client::from_session()?;
        let path = |tenant: &TenantArg, id: &str| {
            format!(
                "/v1/tenants/{}/remediations/{}",
                enc(&tenant.tenant),
                enc(id)
            )
        };
        match command {
            RemediationCommand::Propose { tenant, file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let body: Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", file.display()))?;
                let answer = client
                    .post(
                        &format!("/v1/tenants/{}/remediations", enc(&tenant.tenant)),
                        body,
                    )
                    .await?;
                print(&answer, output, "remediation", "remediationId")
            }
            RemediationCommand::List(t) => {
                let answer = client
                    .get(&format!("/v1/tenants/{}/remediations", enc(&t.tenant)))
                    .await?;
                print(&answer, output, "remediations", "remediationId")
            }
            RemediationCommand::Get {
                tenant,
                remediation_id,
            } => {
                let answer = client.get(&path(&tenant, &remediation_id)).await?;
                print(&answer, output, "remediation", "remediationId")
            }
            RemediationCommand::Approve {
                tenant,
                remediation_id,
                comment,
            } => {
                let current = client.get(&path(&tenant, &remediation_id)).await?;
                let version = current["remediation"]["version"].clone();
                let answer = client
                    .post(
                        &format!("{}:approve", path(&tenant, &remediation_id)),
                        json!({"version": version, "comment": comment}),
                    )
                    .await?;
                print(&answer, output, "remediation", "remediationId")
            }
            RemediationCommand::Wait {
                tenant,
                remediation_id,
                status,
                timeout_seconds,
            } => {
                let wanted = format!(
                    "REMEDIATION_STATUS_{}",
                    status
                        .to_ascii_uppercase()
                        .trim_start_matches("REMEDIATION_STATUS_")
                );
                let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_seconds);
                loop {
                    let answer = client.get(&path(&tenant, &remediation_id)).await?;
                    let now = answer["remediation"]["status"].as_str().unwrap_or_default();
                    if now == wanted {
                        return print(&answer, output, "remediation", "remediationId");
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Failure::new(
                            9,
                            format!("remediation {remediation_id} is {now}, not {wanted}"),
                        )
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    pub async fn event(command: EventCommand, output: Output) -> anyhow::Result<()> {
        match command {
            EventCommand::List { tenant, page_size } => {
                let client = Client::from_session()?;
                let answer = client
                    .get(&format!(
                        "/v1/tenants/{}/events?pageSize={page_size}",
                        enc(&tenant.tenant)
                    ))
                    .await?;
                print(&answer, output, "events", "eventId")
            }
            EventCommand::Watch {
                tenant,
                after_event,
                count,
                timeout_seconds,
            } => {
                watch(
                    &tenant.tenant,
                    after_event.as_deref(),
                    count,
                    Duration::from_secs(timeout_seconds),
                    output,
                )
                .await
            }
        }
    }

    /// `zen audit list`: the tenant's audit records (the nil UUID: the platform's).
    pub async fn audit_list(tenant: &str, page_size: u32, output: Output) -> anyhow::Result<()> {
        let client = Client::from_session()?;
        let answer = client
            .get(&format!(
                "/v1/tenants/{}/auditLogs?pageSize={page_size}",
                enc(tenant)
            ))
            .await?;
        print(&answer, output, "auditRecords", "recordId")
    }
}
