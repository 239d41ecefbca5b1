//! `zen agent`: the reference cluster agent.
//!
//! - `bootstrap` generates a key, sends a CSR with a one-time bootstrap token to
//!   `POST /v1/agents/bootstrap` on Zen's HTTP side, and stores the identity it gets back.
//! - `run` keeps a `ConnectAgent` stream up over mutual TLS (reconnecting with backoff), sends
//!   events read as JSON lines, resends every batch not yet acked after a reconnect (the event
//!   ids make that idempotent), and prints the remediation commands it receives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::proto::zen::common::v1 as common;
use crate::proto::zen::ingest::v1 as pb;
use pb::ingest_service_client::IngestServiceClient;

const IDENTITY_FILE: &str = "agent.json";

/// What `bootstrap` stores next to the key and certificates.
#[derive(Debug, Serialize, Deserialize)]
pub struct AgentConfig {
    pub grpc_url: String,
    /// Name the server certificate is checked against.
    pub server_name: String,
    pub tenant_id: String,
    pub cluster_id: String,
}

/// The files of an enrolled agent.
pub struct AgentFiles {
    pub dir: PathBuf,
}

impl AgentFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn config(&self) -> anyhow::Result<AgentConfig> {
        let path = self.path(IDENTITY_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (run `zen agent bootstrap` first)",
                path.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    /// An mTLS channel to Zen with this agent's identity.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let config = self.config()?;
        let read =
            |name: &str| std::fs::read(self.path(name)).with_context(|| format!("reading {name}"));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt")?))
            .identity(Identity::from_pem(read("agent.crt")?, read("agent.key")?))
            .domain_name(config.server_name.clone());
        Ok(Channel::from_shared(config.grpc_url.clone())?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?)
    }
}

/// `zen agent bootstrap`.
pub async fn bootstrap(
    http_url: &str,
    grpc_url: &str,
    server_name: &str,
    token: &str,
    dir: &Path,
) -> anyhow::Result<AgentConfig> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    let url = format!("{}/v1/agents/bootstrap", http_url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .header("x-request-id", uuid::Uuid::new_v4().to_string())
        .json(&serde_json::json!({
            "bootstrapToken": token,
            "csrPem": csr,
            "agentVersion": env!("CARGO_PKG_VERSION"),
        }))
        .send()
        .await
        .with_context(|| format!("calling {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "enrollment refused ({status}): {}",
            body["detail"].as_str().unwrap_or("no detail")
        );
    }
    let text = |key: &str| body[key].as_str().unwrap_or_default().to_owned();
    std::fs::create_dir_all(dir)?;
    write_private(&dir.join("agent.key"), &key.serialize_pem())?;
    std::fs::write(dir.join("agent.crt"), text("certificateChainPem"))?;
    std::fs::write(dir.join("ca.crt"), text("caBundlePem"))?;
    let config = AgentConfig {
        grpc_url: grpc_url.to_owned(),
        server_name: server_name.to_owned(),
        tenant_id: text("tenantId"),
        cluster_id: text("clusterId"),
    };
    std::fs::write(dir.join(IDENTITY_FILE), serde_json::to_vec_pretty(&config)?)?;
    Ok(config)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())?;
    Ok(())
}

/// One event as operators write it, one JSON object per line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLine {
    pub id: String,
    pub source: String,
    #[serde(default)]
    pub category: Option<String>,
    pub severity: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub fingerprint: String,
}

impl EventLine {
    pub fn into_proto(self) -> anyhow::Result<pb::AgentEvent> {
        let source = pb::EventSource::from_str_name(&format!(
            "EVENT_SOURCE_{}",
            self.source.to_ascii_uppercase().replace('-', "_")
        ))
        .with_context(|| format!("unknown source `{}`", self.source))?;
        let category = match &self.category {
            None => pb::EventCategory::Unspecified,
            Some(c) => pb::EventCategory::from_str_name(&format!(
                "EVENT_CATEGORY_{}",
                c.to_ascii_uppercase()
            ))
            .with_context(|| format!("unknown category `{c}`"))?,
        };
        let severity = common::Severity::from_str_name(&format!(
            "SEVERITY_{}",
            self.severity.to_ascii_uppercase()
        ))
        .with_context(|| format!("unknown severity `{}`", self.severity))?;
        let field = |k: &str| self.resource.get(k).cloned().unwrap_or_default();
        Ok(pb::AgentEvent {
            agent_event_id: self.id.clone(),
            source: source as i32,
            source_name: String::new(),
            category: category as i32,
            severity: severity as i32,
            r#type: self.event_type.clone(),
            title: self.title.clone(),
            resource: Some(common::KubernetesResource {
                api_version: field("api_version"),
                kind: field("kind"),
                namespace: field("namespace"),
                name: field("name"),
                uid: field("uid"),
            }),
            details: crate::grpc::services::support::json_to_struct(serde_json::Value::Object(
                self.details,
            )),
            fingerprint: self.fingerprint,
            detect_time: None,
        })
    }
}

/// Tuning of `zen agent run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub batch_size: usize,
    pub batch_delay: Duration,
    /// Keep the stream open after the input ends (waiting for remediation commands).
    pub follow: bool,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub reconnects: u64,
}

/// `zen agent run`: sends every input event and returns once all are acked (unless
/// following).
pub async fn run(
    files: &AgentFiles,
    input: impl AsyncRead + Unpin + Send + 'static,
    options: RunOptions,
) -> anyhow::Result<RunSummary> {
    // Read and batch the input in its own task; lines that do not parse are reported and
    // skipped, never sent.
    let (batch_tx, mut batch_rx) = mpsc::channel::<pb::EventBatch>(4);
    let reader = tokio::spawn(read_batches(input, batch_tx, options.clone()));
    let mut pending: BTreeMap<String, pb::EventBatch> = BTreeMap::new();
    let mut input_done = false;
    let mut summary = RunSummary::default();
    let mut backoff = Duration::from_millis(250);
    loop {
        match stream_once(
            files,
            &mut pending,
            &mut batch_rx,
            &mut input_done,
            &mut summary,
            &options,
        )
        .await
        {
            Ok(()) => break,
            Err(error) => {
                summary.reconnects += 1;
                // Jittered exponential backoff, capped.
                let jitter =
                    Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 2);
                eprintln!(
                    "agent: stream ended ({error:#}); reconnecting in {:?}",
                    backoff + jitter
                );
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    reader.await??;
    Ok(summary)
}

async fn read_batches(
    input: impl AsyncRead + Unpin,
    out: mpsc::Sender<pb::EventBatch>,
    options: RunOptions,
) -> anyhow::Result<()> {
    let mut lines = BufReader::new(input).lines();
    let mut events = Vec::new();
    let mut number = 0u64;
    let flush = |events: &mut Vec<pb::AgentEvent>| pb::EventBatch {
        batch_id: uuid::Uuid::new_v4().to_string(),
        events: std::mem::take(events),
    };
    loop {
        let line = if events.is_empty() {
            lines.next_line().await?
        } else {
            match tokio::time::timeout(options.batch_delay, lines.next_line()).await {
                Ok(line) => line?,
                Err(_) => {
                    if out.send(flush(&mut events)).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            }
        };
        let Some(line) = line else { break };
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<EventLine>(&line)
            .map_err(anyhow::Error::from)
            .and_then(EventLine::into_proto)
        {
            Ok(event) => events.push(event),
            Err(error) => eprintln!("agent: line {number} skipped: {error:#}"),
        }
        if events.len() >= options.batch_size && out.send(flush(&mut events)).await.is_err() {
            return Ok(());
        }
    }
    if !events.is_empty() {
        let _ = out.send(flush(&mut events)).await;
    }
    Ok(())
}

/// One connection: resend what is pending, then send new batches, until everything is acked
/// and the input is done (`Ok`), or the stream breaks (`Err`, to reconnect).
async fn stream_once(
    files: &AgentFiles,
    pending: &mut BTreeMap<String, pb::EventBatch>,
    batches: &mut mpsc::Receiver<pb::EventBatch>,
    input_done: &mut bool,
    summary: &mut RunSummary,
    options: &RunOptions,
) -> anyhow::Result<()> {
    use pb::connect_agent_request::Payload;
    use pb::connect_agent_response::Payload as Reply;
    let channel = files.connect().await?;
    let (tx, rx) = mpsc::channel::<pb::ConnectAgentRequest>(8);
    let send = |payload| pb::ConnectAgentRequest {
        payload: Some(payload),
    };
    tx.send(send(Payload::Hello(pb::AgentHello {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        capabilities: vec!["events".into()],
        ..Default::default()
    })))
    .await?;
    let mut replies = IngestServiceClient::new(channel)
        .connect_agent(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let max_in_flight = match replies.next().await {
        Some(Ok(pb::ConnectAgentResponse {
            payload: Some(Reply::Hello(hello)),
        })) => hello.max_in_flight_batches.max(1) as usize,
        other => bail!("no server hello: {other:?}"),
    };
    // Unacked batches from the previous connection go first.
    let mut in_flight: BTreeMap<String, Instant> = BTreeMap::new();
    let mut resend: Vec<pb::EventBatch> = pending.values().cloned().collect();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
    loop {
        if *input_done && pending.is_empty() && !options.follow {
            return Ok(());
        }
        let can_send = in_flight.len() < max_in_flight;
        tokio::select! {
            batch = async { resend.pop() }, if can_send && !resend.is_empty() => {
                let batch = batch.expect("non-empty");
                in_flight.insert(batch.batch_id.clone(), Instant::now());
                tx.send(send(Payload::EventBatch(batch))).await?;
            }
            batch = batches.recv(), if can_send && resend.is_empty() && !*input_done => {
                match batch {
                    Some(batch) => {
                        pending.insert(batch.batch_id.clone(), batch.clone());
                        in_flight.insert(batch.batch_id.clone(), Instant::now());
                        tx.send(send(Payload::EventBatch(batch))).await?;
                    }
                    None => *input_done = true,
                }
            }
            _ = heartbeat.tick() => {
                tx.send(send(Payload::Heartbeat(pb::Heartbeat {
                    queue_depth: pending.len() as i64,
                    ..Default::default()
                }))).await?;
            }
            reply = replies.next() => match reply {
                Some(Ok(pb::ConnectAgentResponse { payload: Some(Reply::BatchAck(ack)) })) => {
                    in_flight.remove(&ack.batch_id);
                    if ack.retry_after.is_some() {
                        // Not stored: keep it pending and send it again shortly.
                        if let Some(batch) = pending.get(&ack.batch_id) {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            resend.push(batch.clone());
                        }
                        continue;
                    }
                    pending.remove(&ack.batch_id);
                    for event in ack.acks {
                        match pb::EventOutcome::try_from(event.outcome) {
                            Ok(pb::EventOutcome::Accepted) => summary.accepted += 1,
                            Ok(pb::EventOutcome::Duplicate) => summary.duplicate += 1,
                            _ => {
                                summary.rejected += 1;
                                eprintln!("agent: event {} rejected: {}", event.agent_event_id, event.reason);
                            }
                        }
                    }
                }
                Some(Ok(pb::ConnectAgentResponse { payload: Some(Reply::RemediationCommand(command)) })) => {
                    println!("{}", serde_json::json!({
                        "remediation_command": command.remediation_id,
                        "execution_id": command.execution_id,
                        "version": command.version,
                    }));
                }
                Some(Ok(pb::ConnectAgentResponse { payload: Some(Reply::Goodbye(goodbye)) })) => {
                    bail!("server said goodbye: {}", goodbye.message);
                }
                Some(Ok(_)) => {}
                Some(Err(status)) => bail!("stream error: {status}"),
                None => bail!("the server closed the stream"),
            },
        }
    }
}
