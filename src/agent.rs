//! `zen agent`: the reference cluster agent.
//!
//! - `bootstrap` generates a key, sends a CSR with a one-time bootstrap token to
//!   `POST /v1/agents/bootstrap` on Zen's HTTP side, and stores the identity it gets back.
//! - `run` keeps a `ConnectAgent` stream up over mutual TLS (reconnecting with backoff), sends
//!   events read as JSON lines, resends every batch not yet acked after a reconnect (the event
//!   ids make that idempotent), and executes the remediation commands it receives through an
//!   operator's `--exec-hook` (see [`Executor`] and docs/REMEDIATION.md).

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::Instrument;

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
    run_with_hook(files, input, options, None).await
}

/// [`run`], executing remediation commands with `exec_hook` (none: every command is reported
/// failed with "no executor configured").
pub async fn run_with_hook(
    files: &AgentFiles,
    input: impl AsyncRead + Unpin + Send + 'static,
    options: RunOptions,
    exec_hook: Option<PathBuf>,
) -> anyhow::Result<RunSummary> {
    let (executor, mut reports) = Executor::new(exec_hook, files.dir.join("executions.json"));
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
            &executor,
            &mut reports,
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
// The connection's state lives in the caller across reconnects; each piece is its own argument.
#[allow(clippy::too_many_arguments)]
async fn stream_once(
    files: &AgentFiles,
    pending: &mut BTreeMap<String, pb::EventBatch>,
    batches: &mut mpsc::Receiver<pb::EventBatch>,
    input_done: &mut bool,
    summary: &mut RunSummary,
    options: &RunOptions,
    executor: &Executor,
    reports: &mut mpsc::UnboundedReceiver<pb::RemediationReport>,
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
        capabilities: vec!["events".into(), "remediation.exec-hook".into()],
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
            Some(report) = reports.recv() => {
                tx.send(send(Payload::RemediationReport(report))).await?;
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
                        "attempt": command.attempt,
                    }));
                    executor.handle(command);
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

// ----------------------------------------------------------------- remediation executor

/// What an exec hook prints on stdout.
#[derive(Debug, Default, Deserialize)]
pub struct HookResult {
    /// Whether the action was applied.
    pub success: bool,
    #[serde(default)]
    pub message: String,
    /// Verification probes the hook ran after applying.
    #[serde(default)]
    pub probes: Vec<HookProbe>,
    /// proto3 JSON of a `RemediationAction` restoring the prior state (for an APPLY without
    /// a rollback action).
    #[serde(default)]
    pub rollback_action: Option<serde_json::Value>,
}

/// One probe result of an exec hook.
#[derive(Debug, Default, Deserialize)]
pub struct HookProbe {
    pub name: String,
    pub success: bool,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub message: String,
}

/// Runs remediation commands, once per execution id. It remembers the latest report of every
/// execution it started, in memory and in `state_file`: a command sent again after a reconnect
/// is answered with the latest phase instead of running twice, and an execution a previous
/// process left unfinished is reported FAILED (its outcome is unknown) rather than run again
/// or forgotten. Reports go out on the current stream, or the next one if it broke.
pub struct Executor {
    hook: Option<PathBuf>,
    state_file: PathBuf,
    known: std::sync::Arc<std::sync::Mutex<BTreeMap<String, pb::RemediationReport>>>,
    reports: mpsc::UnboundedSender<pb::RemediationReport>,
}

impl Executor {
    pub fn new(
        hook: Option<PathBuf>,
        state_file: PathBuf,
    ) -> (Self, mpsc::UnboundedReceiver<pb::RemediationReport>) {
        let (reports, rx) = mpsc::unbounded_channel();
        let finished: BTreeMap<String, serde_json::Value> = std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let known = finished
            .into_iter()
            .filter_map(|(id, value)| {
                crate::grpc::services::remediation::message_from_json::<pb::RemediationReport>(
                    "zen.ingest.v1.RemediationReport",
                    &value,
                )
                .ok()
                .map(|report| (id, interrupted(report)))
            })
            .collect();
        (
            Self {
                hook,
                state_file,
                known: std::sync::Arc::new(std::sync::Mutex::new(known)),
                reports,
            },
            rx,
        )
    }

    /// Takes a command: a known execution gets its latest report again; a new one runs.
    pub fn handle(&self, command: pb::RemediationCommand) {
        // The execution continues the server's dispatch trace, and its reports carry the
        // execution's own context back (empty when this agent exports no traces).
        let span = crate::telemetry::traced(|| {
            tracing::info_span!(
            "remediation.execute",
            otel.kind = "consumer",
            zen.remediation_id = %command.remediation_id,
            zen.execution_id = %command.execution_id,
            zen.attempt = i64::from(command.attempt),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            )
        });
        crate::telemetry::continue_from_map(&span, &command.trace_context);
        let trace_context = span.in_scope(crate::telemetry::current_context_headers);
        {
            let mut known = self.known.lock().expect("executions lock");
            if let Some(latest) = known.get(&command.execution_id) {
                let _ = self.reports.send(latest.clone());
                return;
            }
            let received = pb::RemediationReport {
                trace_context: trace_context.clone(),
                ..report(&command, pb::ExecutionPhase::Received)
            };
            known.insert(command.execution_id.clone(), received.clone());
            let _ = self.reports.send(received);
        }
        save_known(&self.known, &self.state_file);
        let hook = self.hook.clone();
        let known = self.known.clone();
        let reports = self.reports.clone();
        let state_file = self.state_file.clone();
        tokio::spawn(
            async move {
                let update = |mut r: pb::RemediationReport| {
                    r.trace_context = trace_context.clone();
                    known
                        .lock()
                        .expect("executions lock")
                        .insert(r.execution_id.clone(), r.clone());
                    save_known(&known, &state_file);
                    let _ = reports.send(r);
                };
                let past_deadline = command.deadline.as_ref().is_some_and(|d| {
                    chrono::DateTime::from_timestamp(d.seconds, 0)
                        .is_some_and(|d| d < chrono::Utc::now())
                });
                let last = if past_deadline {
                    failed(
                        &command,
                        "the command's deadline passed before it could start",
                    )
                } else if let Some(hook) = hook {
                    update(report(&command, pb::ExecutionPhase::Executing));
                    match run_hook(&hook, &command).await {
                        Ok(result) => {
                            if !result.probes.is_empty() {
                                update(report(&command, pb::ExecutionPhase::Verifying));
                            }
                            finish(&command, result)
                        }
                        Err(error) => failed(&command, &format!("exec hook: {error:#}")),
                    }
                } else {
                    failed(&command, "no executor configured")
                };
                update(last);
            }
            .instrument(span),
        );
    }
}

fn report(command: &pb::RemediationCommand, phase: pb::ExecutionPhase) -> pb::RemediationReport {
    pb::RemediationReport {
        remediation_id: command.remediation_id.clone(),
        execution_id: command.execution_id.clone(),
        phase: phase as i32,
        report_time: Some(crate::grpc::services::support::timestamp(chrono::Utc::now())),
        ..Default::default()
    }
}

fn failed(command: &pb::RemediationCommand, message: &str) -> pb::RemediationReport {
    pb::RemediationReport {
        error_message: message.into(),
        ..report(command, pb::ExecutionPhase::Failed)
    }
}

/// The final report from a hook's result.
fn finish(command: &pb::RemediationCommand, result: HookResult) -> pb::RemediationReport {
    use crate::grpc::services::support::timestamp;
    let passed = result.success && result.probes.iter().all(|p| p.success);
    let ended = chrono::Utc::now();
    let total: u64 = result.probes.iter().map(|p| p.duration_ms).sum();
    let verification = (!result.probes.is_empty()).then(|| pb::VerificationReport {
        probes: result
            .probes
            .iter()
            .map(|p| crate::proto::zen::remediation::v1::ProbeResult {
                name: p.name.clone(),
                success: p.success,
                duration: Some(prost_types::Duration {
                    seconds: (p.duration_ms / 1000) as i64,
                    nanos: ((p.duration_ms % 1000) * 1_000_000) as i32,
                }),
                message: p.message.clone(),
            })
            .collect(),
        start_time: Some(timestamp(
            ended - chrono::Duration::milliseconds(i64::try_from(total).unwrap_or(0)),
        )),
        end_time: Some(timestamp(ended)),
    });
    let mut message = result.message;
    if !passed && message.is_empty() {
        message = if result.success {
            "a verification probe failed".into()
        } else {
            "the action was not applied".into()
        };
    }
    pb::RemediationReport {
        verification,
        error_message: if passed { String::new() } else { message },
        rollback_action: result.rollback_action.and_then(|v| {
            crate::grpc::services::remediation::message_from_json(
                "zen.remediation.v1.RemediationAction",
                &v,
            )
            .ok()
        }),
        ..report(
            command,
            if passed {
                pb::ExecutionPhase::Succeeded
            } else {
                pb::ExecutionPhase::Failed
            },
        )
    }
}

/// Runs the hook with the command as proto3 JSON on stdin and parses its stdout.
async fn run_hook(hook: &Path, command: &pb::RemediationCommand) -> anyhow::Result<HookResult> {
    let input = crate::grpc::services::remediation::message_to_json(
        "zen.ingest.v1.RemediationCommand",
        command,
    )
    .to_string();
    let hook = hook.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(&hook)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", hook.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        let result: HookResult = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "{} exited with {} and printed no JSON result",
                hook.display(),
                output.status
            )
        })?;
        Ok(result)
    })
    .await?
}

/// A report remembered from a previous process: unfinished means interrupted.
fn interrupted(r: pb::RemediationReport) -> pb::RemediationReport {
    match pb::ExecutionPhase::try_from(r.phase) {
        Ok(pb::ExecutionPhase::Succeeded | pb::ExecutionPhase::Failed) => r,
        _ => pb::RemediationReport {
            phase: pb::ExecutionPhase::Failed as i32,
            error_message: "the agent restarted during the execution; its outcome is unknown"
                .into(),
            report_time: Some(crate::grpc::services::support::timestamp(chrono::Utc::now())),
            ..r
        },
    }
}

/// Persists the latest report of every execution (best effort: without the file a restarted
/// agent could run an execution again).
fn save_known(known: &std::sync::Mutex<BTreeMap<String, pb::RemediationReport>>, path: &Path) {
    let finished: BTreeMap<String, serde_json::Value> = known
        .lock()
        .expect("executions lock")
        .iter()
        .map(|(id, r)| {
            (
                id.clone(),
                crate::grpc::services::remediation::message_to_json(
                    "zen.ingest.v1.RemediationReport",
                    r,
                ),
            )
        })
        .collect();
    if let Ok(text) = serde_json::to_string(&finished) {
        let _ = std::fs::write(path, text);
    }
}
