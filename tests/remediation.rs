//! The remediation workflow end to end over real mTLS, with the reference agent enrolled over
//! HTTP and running an exec hook: proposals, approvals under the policy (self, viewer and
//! stale approvals refused), dispatch while the agent is offline and delivery once it is back,
//! execution and verification, a failing verification rolled back automatically, dead letters
//! after unacknowledged attempts and their replay (by RPC, and by `zen dlq` on the command
//! line), break-glass, and the audit chain holding every step. Runs on SQLite and PostgreSQL
//! (where the dispatch queue is claimed with FOR UPDATE SKIP LOCKED).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use audit::audit_service_client::AuditServiceClient;
use auth::auth_service_client::AuthServiceClient;
use pb::remediation_service_client::RemediationServiceClient;
use support::{TestDatabase, TestZen};
use tenancy::tenancy_service_client::TenancyServiceClient;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;
use zen::config::{GlobalArgs, ServeArgs};
use zen::proto::zen::audit::v1 as audit;
use zen::proto::zen::auth::v1 as auth;
use zen::proto::zen::common::v1::Role;
use zen::proto::zen::ingest::v1 as ingest;
use zen::proto::zen::remediation::v1 as pb;
use zen::proto::zen::tenancy::v1 as tenancy;

const PASSWORD: &str = "correct horse battery staple";

fn with_id<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let id = uuid::Uuid::new_v4().to_string();
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

/// One person, calling through the gateway's identity with their bearer token.
#[derive(Clone)]
struct Person {
    id: String,
    token: String,
    client: RemediationServiceClient<Channel>,
}

impl Person {
    fn req<T>(&self, message: T) -> Request<T> {
        let mut request = with_id(message);
        let bearer: MetadataValue<_> = format!("Bearer {}", self.token).parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        request
    }

    async fn approve(
        &self,
        tenant: &str,
        r: &pb::Remediation,
    ) -> Result<pb::Remediation, tonic::Status> {
        self.client
            .clone()
            .approve_remediation(self.req(pb::ApproveRemediationRequest {
                tenant_id: tenant.into(),
                remediation_id: r.remediation_id.clone(),
                version: r.version,
                comment: format!("looks right to {}", self.id),
            }))
            .await
            .map(|r| r.into_inner().remediation.unwrap())
    }
}

struct Fixture {
    zen: TestZen,
    tenant: String,
    cluster: String,
    alice: Person,
    bob: Person,
    carol: Person,
    victor: Person,
    olivia: Person,
    agent_dir: tempfile::TempDir,
    hook: PathBuf,
    log: PathBuf,
}

/// Small dispatch timings for the tests (read by the server at start; every test in this
/// binary sets the same values, so parallel tests agree).
fn fast_dispatch() {
    for (name, value) in [
        ("ZEN_REMEDIATION_POLL_MS", "100"),
        ("ZEN_REMEDIATION_BACKOFF_BASE_MS", "300"),
        ("ZEN_REMEDIATION_BACKOFF_MAX_MS", "1000"),
        ("ZEN_REMEDIATION_SWEEP_MS", "200"),
    ] {
        std::env::set_var(name, value);
    }
}

async fn person(zen: &TestZen, gateway: &Channel, tenant: &str, name: &str, role: Role) -> Person {
    let user = AuthServiceClient::new(zen.admin().await)
        .create_local_user(with_id(auth::CreateLocalUserRequest {
            username: name.into(),
            email: format!("{name}@example.test"),
            password: PASSWORD.into(),
            ..Default::default()
        }))
        .await
        .expect("create user")
        .into_inner()
        .user
        .unwrap();
    let token = AuthServiceClient::new(gateway.clone())
        .local_login(with_id(auth::LocalLoginRequest {
            username: name.into(),
            password: PASSWORD.into(),
        }))
        .await
        .expect("login")
        .into_inner()
        .token
        .unwrap()
        .access_token;
    let invite = TenancyServiceClient::new(zen.admin().await)
        .create_invite(with_id(tenancy::CreateInviteRequest {
            tenant_id: tenant.into(),
            email: format!("{name}@example.test"),
            role: role as i32,
            ttl: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let person = Person {
        id: user.user_id,
        token,
        client: RemediationServiceClient::new(gateway.clone()),
    };
    TenancyServiceClient::new(gateway.clone())
        .accept_invite(person.req(tenancy::AcceptInviteRequest {
            invite_id: invite.invite.unwrap().invite_id,
            token: invite.token,
        }))
        .await
        .expect("accept invite");
    person
}

/// An exec hook that logs every command it gets and fails its probe when the patch says so.
fn write_hook(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("hook.log");
    let hook = dir.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            r#"#!/bin/sh
input=$(cat)
printf '%s\n' "$input" >> '{log}'
case "$input" in
  *COMMAND_OPERATION_ROLLBACK*) echo '{{"success":true,"message":"restored"}}' ;;
  *slowApply*) sleep 2; echo '{{"success":true,"message":"slow but done"}}' ;;
  *probeShouldFail*) echo '{{"success":true,"probes":[{{"name":"ready","success":false,"duration_ms":12,"message":"0/3 replicas ready"}}]}}' ;;
  *) echo '{{"success":true,"probes":[{{"name":"ready","success":true,"duration_ms":15,"message":"3/3 ready"}}]}}' ;;
esac
"#,
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    (hook, log)
}

async fn setup(database_url: Option<String>) -> Fixture {
    fast_dispatch();
    let zen = TestZen::start_with(
        GlobalArgs {
            database_url,
            ..Default::default()
        },
        ServeArgs {
            local_login: Some(true),
            ..Default::default()
        },
    )
    .await;
    let gateway = zen.service("gateway").await;
    let mut admin = TenancyServiceClient::new(zen.admin().await);
    let tenant = admin
        .create_tenant(with_id(tenancy::CreateTenantRequest {
            tenant: Some(tenancy::Tenant {
                name: "acme".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap()
        .tenant_id;
    let cluster = admin
        .create_cluster(with_id(tenancy::CreateClusterRequest {
            tenant_id: tenant.clone(),
            cluster: Some(tenancy::Cluster {
                name: "prod".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap()
        .cluster_id;
    let token = admin
        .create_bootstrap_token(with_id(tenancy::CreateBootstrapTokenRequest {
            tenant_id: tenant.clone(),
            cluster_id: cluster.clone(),
            ttl: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    let agent_dir = tempfile::tempdir().unwrap();
    zen::agent::bootstrap(
        &zen.http_url(""),
        &format!("https://{}", zen.running.grpc_addr),
        "localhost",
        &token,
        agent_dir.path(),
    )
    .await
    .expect("agent enrolls");
    let (hook, log) = write_hook(agent_dir.path());
    let alice = person(&zen, &gateway, &tenant, "alice", Role::Approver).await;
    let bob = person(&zen, &gateway, &tenant, "bob", Role::Approver).await;
    let carol = person(&zen, &gateway, &tenant, "carol", Role::Approver).await;
    let victor = person(&zen, &gateway, &tenant, "victor", Role::Viewer).await;
    let olivia = person(&zen, &gateway, &tenant, "olivia", Role::Owner).await;
    Fixture {
        zen,
        tenant,
        cluster,
        alice,
        bob,
        carol,
        victor,
        olivia,
        agent_dir,
        hook,
        log,
    }
}

impl Fixture {
    /// Runs the reference agent with the hook until the returned handle is aborted.
    fn start_agent(&self) -> tokio::task::JoinHandle<()> {
        let files = zen::agent::AgentFiles::new(self.agent_dir.path());
        let hook = self.hook.clone();
        tokio::spawn(async move {
            let options = zen::agent::RunOptions {
                batch_size: 10,
                batch_delay: Duration::from_millis(50),
                follow: true,
            };
            let _ =
                zen::agent::run_with_hook(&files, tokio::io::empty(), options, Some(hook)).await;
        })
    }

    fn proposal(
        &self,
        title: &str,
        risk: pb::RiskLevel,
        fail_probe: bool,
    ) -> pb::ProposeRemediationRequest {
        self.proposal_marked(title, risk, if fail_probe { "probeShouldFail" } else { "" })
    }

    /// A proposal whose patch carries `marker` as an annotation (the hook reacts to it).
    fn proposal_marked(
        &self,
        title: &str,
        risk: pb::RiskLevel,
        marker: &str,
    ) -> pb::ProposeRemediationRequest {
        let mut patch = serde_json::json!({
            "spec": {"template": {"spec": {"securityContext": {"runAsNonRoot": true}}}}
        });
        if !marker.is_empty() {
            patch["metadata"] = serde_json::json!({"annotations": {marker: "yes"}});
        }
        let apply = |patch: serde_json::Value| pb::RemediationAction {
            action: Some(pb::remediation_action::Action::ServerSideApply(
                pb::ServerSideApply {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    namespace: "shop".into(),
                    name: "api".into(),
                    patch: zen::grpc::services::support::json_to_struct(patch),
                    ..Default::default()
                },
            )),
        };
        pb::ProposeRemediationRequest {
            tenant_id: self.tenant.clone(),
            remediation: Some(pb::Remediation {
                cluster_id: self.cluster.clone(),
                title: title.into(),
                action: Some(apply(patch)),
                rollback_action: Some(apply(serde_json::json!({
                    "spec": {"template": {"spec": {"securityContext": {"runAsNonRoot": false}}}}
                }))),
                risk: risk as i32,
                ..Default::default()
            }),
        }
    }

    async fn propose(
        &self,
        who: &Person,
        request: pb::ProposeRemediationRequest,
    ) -> pb::Remediation {
        who.client
            .clone()
            .propose_remediation(who.req(request))
            .await
            .expect("propose")
            .into_inner()
            .remediation
            .unwrap()
    }

    async fn get(&self, id: &str) -> pb::Remediation {
        RemediationServiceClient::new(self.zen.admin().await)
            .get_remediation(pb::GetRemediationRequest {
                tenant_id: self.tenant.clone(),
                remediation_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .remediation
            .unwrap()
    }

    /// Polls until the remediation reaches `status` (failing after 15 s with what it is).
    async fn wait_for(&self, id: &str, status: pb::RemediationStatus) -> pb::Remediation {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.get(id).await;
            if r.status == status as i32 {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "remediation {id} stuck in {:?} (last error {:?}), wanted {status:?}",
                pb::RemediationStatus::try_from(r.status),
                r.last_error
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many times the hook ran `execution_id`.
    fn runs_of(&self, execution_id: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(execution_id))
            .count()
    }

    async fn runs(&self, id: &str) -> Vec<pb::VerificationRun> {
        RemediationServiceClient::new(self.zen.admin().await)
            .list_verification_runs(pb::ListVerificationRunsRequest {
                tenant_id: self.tenant.clone(),
                remediation_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .verification_runs
    }

    async fn dead_letters(&self) -> Vec<pb::DeadLetter> {
        RemediationServiceClient::new(self.zen.admin().await)
            .list_dead_letters(pb::ListDeadLettersRequest {
                tenant_id: self.tenant.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .dead_letters
    }
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Approvals: refusals first, then two distinct approvers reach the policy's two for CRITICAL.
async fn approved_by_two(f: &Fixture) -> pb::Remediation {
    let r = f
        .propose(
            &f.alice,
            f.proposal("run api as non-root", pb::RiskLevel::Critical, false),
        )
        .await;
    assert_eq!(r.status, pb::RemediationStatus::Proposed as i32);
    assert_eq!((r.required_approvals, r.version), (2, 1));
    assert_eq!(r.proposed_by, f.alice.id);
    assert_eq!(r.probes.len(), 1, "the default `ready` probe");

    let viewer = f.victor.approve(&f.tenant, &r).await.unwrap_err();
    assert_eq!(
        (viewer.code(), reason(&viewer)),
        (Code::PermissionDenied, "ROLE_TOO_LOW".into())
    );
    let own = f.alice.approve(&f.tenant, &r).await.unwrap_err();
    assert_eq!(
        (own.code(), reason(&own)),
        (Code::PermissionDenied, "SELF_APPROVAL_FORBIDDEN".into())
    );
    let stale = f
        .bob
        .approve(
            &f.tenant,
            &pb::Remediation {
                version: r.version + 1,
                ..r.clone()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        (stale.code(), reason(&stale)),
        (Code::Aborted, "VERSION_MISMATCH".into())
    );

    let once = f.bob.approve(&f.tenant, &r).await.unwrap();
    assert_eq!(once.status, pb::RemediationStatus::PendingApproval as i32);
    assert_eq!(once.approvals.len(), 1);
    let twice = f.bob.approve(&f.tenant, &once).await.unwrap_err();
    assert_eq!(
        (twice.code(), reason(&twice)),
        (Code::AlreadyExists, "ALREADY_APPROVED".into())
    );
    // Approving a stale version is refused even by a new approver.
    let stale = f.carol.approve(&f.tenant, &r).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let done = f.carol.approve(&f.tenant, &once).await.unwrap();
    assert_eq!(done.status, pb::RemediationStatus::Approved as i32);
    assert_eq!(done.approvals.len(), 2);
    assert!(!done.execution_id.is_empty());
    done
}

/// A raw agent stream that takes commands and never reports: every attempt goes unanswered.
async fn mute_agent(
    f: &Fixture,
) -> (
    tokio::sync::mpsc::Sender<ingest::ConnectAgentRequest>,
    tonic::Streaming<ingest::ConnectAgentResponse>,
) {
    let channel = zen::agent::AgentFiles::new(f.agent_dir.path())
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(ingest::ConnectAgentRequest {
        payload: Some(ingest::connect_agent_request::Payload::Hello(
            ingest::AgentHello {
                agent_version: "mute".into(),
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let replies = ingest::ingest_service_client::IngestServiceClient::new(channel)
        .connect_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, replies)
}

async fn remediation_loop(f: &Fixture, replay_with_cli: bool) {
    // ---- propose -> two approvals -> (agent offline: queued) -> agent back -> delivered once
    let r = approved_by_two(f).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let waiting = f.get(&r.remediation_id).await;
    assert_eq!(
        waiting.status,
        pb::RemediationStatus::Approved as i32,
        "no agent: it waits"
    );
    assert_eq!(waiting.attempts, 0);
    let agent = f.start_agent();
    let done = f
        .wait_for(&r.remediation_id, pb::RemediationStatus::Succeeded)
        .await;
    assert_eq!(done.attempts, 1);
    assert!(done.complete_time.is_some() && done.dispatch_time.is_some());
    assert_eq!(f.runs_of(&done.execution_id), 1);
    let runs = f.runs(&r.remediation_id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].result, pb::VerificationResult::Success as i32);
    assert_eq!(runs[0].execution_id, done.execution_id);
    assert_eq!(runs[0].probes[0].name, "ready");
    assert_eq!(runs[0].probes[0].duration.unwrap().nanos, 15_000_000);

    // A reconnect re-sends nothing finished; the hook never runs an execution twice.
    agent.abort();
    let agent = f.start_agent();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(f.runs_of(&done.execution_id), 1);

    // ---- a failing probe: automatic rollback (LOW risk needs no approval by default)
    let r = f
        .propose(&f.bob, f.proposal("tighten api", pb::RiskLevel::Low, true))
        .await;
    assert_eq!(r.status, pb::RemediationStatus::Approved as i32);
    let apply_execution = r.execution_id.clone();
    let rolled = f
        .wait_for(&r.remediation_id, pb::RemediationStatus::RolledBack)
        .await;
    assert_ne!(
        rolled.execution_id, apply_execution,
        "the rollback is its own execution"
    );
    assert_eq!(f.runs_of(&apply_execution), 1);
    assert_eq!(f.runs_of(&rolled.execution_id), 1);
    let runs = f.runs(&r.remediation_id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].result, pb::VerificationResult::Failure as i32);
    assert_eq!(runs[0].probes[0].message, "0/3 replicas ready");

    // ---- break-glass: the owner forces a HIGH one through, flagged for review
    let r = f
        .propose(
            &f.alice,
            f.proposal("emergency fix", pb::RiskLevel::High, false),
        )
        .await;
    let short = f
        .olivia
        .client
        .clone()
        .execute_break_glass(f.olivia.req(pb::ExecuteBreakGlassRequest {
            tenant_id: f.tenant.clone(),
            remediation_id: r.remediation_id.clone(),
            version: r.version,
            justification: "now".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument);
    let forced = f
        .olivia
        .client
        .clone()
        .execute_break_glass(f.olivia.req(pb::ExecuteBreakGlassRequest {
            tenant_id: f.tenant.clone(),
            remediation_id: r.remediation_id.clone(),
            version: r.version,
            justification: "customer data exposed, fixing before the review".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .remediation
        .unwrap();
    assert!(forced.break_glass);
    assert_eq!(forced.status, pb::RemediationStatus::Approved as i32);
    f.wait_for(&r.remediation_id, pb::RemediationStatus::Succeeded)
        .await;

    // ---- dead letter: an agent that never acknowledges, two attempts, then replay
    agent.abort();
    let policy = f
        .olivia
        .client
        .clone()
        .get_approval_policy(f.olivia.req(pb::GetApprovalPolicyRequest {
            tenant_id: f.tenant.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .approval_policy
        .unwrap();
    assert_eq!(policy.max_dispatch_attempts, 5);
    let updated = f
        .olivia
        .client
        .clone()
        .update_approval_policy(f.olivia.req(pb::UpdateApprovalPolicyRequest {
            tenant_id: f.tenant.clone(),
            approval_policy: Some(pb::ApprovalPolicy {
                max_dispatch_attempts: 2,
                version: policy.version,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["max_dispatch_attempts".into()],
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .approval_policy
        .unwrap();
    assert_eq!(
        (updated.max_dispatch_attempts, updated.version),
        (2, policy.version + 1)
    );
    // The approver may not change the policy (owner only).
    let denied = f
        .bob
        .client
        .clone()
        .update_approval_policy(f.bob.req(pb::UpdateApprovalPolicyRequest {
            tenant_id: f.tenant.clone(),
            approval_policy: Some(pb::ApprovalPolicy {
                max_dispatch_attempts: 20,
                version: updated.version,
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Let the aborted agent's stream close before the mute one takes the cluster.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mute, mut commands) = mute_agent(f).await;
    let r = f
        .propose(
            &f.alice,
            f.proposal("never acked", pb::RiskLevel::Low, false),
        )
        .await;
    let failed = f
        .wait_for(&r.remediation_id, pb::RemediationStatus::Failed)
        .await;
    assert_eq!(failed.attempts, 2);
    assert!(
        failed.last_error.contains("not acknowledged"),
        "{}",
        failed.last_error
    );
    let mut sent = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(200), commands.next()).await
    {
        if let Some(ingest::connect_agent_response::Payload::RemediationCommand(c)) =
            message.payload
        {
            sent.push((c.execution_id, c.attempt));
        }
    }
    assert_eq!(
        sent,
        vec![
            (failed.execution_id.clone(), 1),
            (failed.execution_id.clone(), 2)
        ],
        "at least once, with increasing attempts, same execution id"
    );
    drop(mute);
    drop(commands);
    let letters = f.dead_letters().await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (letter.remediation_id.as_str(), letter.attempts),
        (r.remediation_id.as_str(), 2)
    );
    assert!(letter.last_error.contains("not acknowledged"));

    let approver_list = f
        .bob
        .client
        .clone()
        .list_dead_letters(f.bob.req(pb::ListDeadLettersRequest {
            tenant_id: f.tenant.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        approver_list.code(),
        Code::PermissionDenied,
        "dead letters are admin+"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let agent = f.start_agent();
    if replay_with_cli {
        let data_dir = f.zen.data_dir.path();
        let zen_cli = |args: &[&str]| {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_zen"))
                .arg("--data-dir")
                .arg(data_dir)
                .args(args)
                .output()
                .expect("zen runs");
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).unwrap()
        };
        let listed = zen_cli(&["dlq", "list", "--tenant", &f.tenant]);
        assert!(
            listed.contains(&letter.dead_letter_id) && listed.contains("pending"),
            "{listed}"
        );
        let replayed = zen_cli(&[
            "dlq",
            "replay",
            "--tenant",
            &f.tenant,
            &letter.dead_letter_id,
        ]);
        assert!(replayed.contains("approved"), "{replayed}");
    } else {
        let replayed = RemediationServiceClient::new(f.zen.admin().await)
            .replay_dead_letter(with_id(pb::ReplayDeadLetterRequest {
                tenant_id: f.tenant.clone(),
                dead_letter_id: letter.dead_letter_id.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(replayed.dead_letter.unwrap().replay_time.is_some());
        assert_eq!(
            replayed.remediation.unwrap().status,
            pb::RemediationStatus::Approved as i32
        );
    }
    let again = RemediationServiceClient::new(f.zen.admin().await)
        .replay_dead_letter(with_id(pb::ReplayDeadLetterRequest {
            tenant_id: f.tenant.clone(),
            dead_letter_id: letter.dead_letter_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        again.code(),
        Code::FailedPrecondition,
        "a dead letter replays once"
    );
    let done = f
        .wait_for(&r.remediation_id, pb::RemediationStatus::Succeeded)
        .await;
    assert_ne!(done.execution_id, failed.execution_id);
    assert_eq!(f.runs_of(&done.execution_id), 1);
    assert!(f.dead_letters().await.is_empty());
    agent.abort();

    // ---- invalid transitions are FAILED_PRECONDITION
    let rollback_of_pending = f
        .propose(
            &f.alice,
            f.proposal("pending", pb::RiskLevel::Medium, false),
        )
        .await;
    let refused = f
        .bob
        .client
        .clone()
        .request_rollback(f.bob.req(pb::RequestRollbackRequest {
            tenant_id: f.tenant.clone(),
            remediation_id: rollback_of_pending.remediation_id.clone(),
            version: rollback_of_pending.version,
            reason: "why not".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let rejected = f
        .bob
        .client
        .clone()
        .reject_remediation(f.bob.req(pb::RejectRemediationRequest {
            tenant_id: f.tenant.clone(),
            remediation_id: rollback_of_pending.remediation_id.clone(),
            version: rollback_of_pending.version,
            reason: "not now".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .remediation
        .unwrap();
    assert_eq!(rejected.status, pb::RemediationStatus::Rejected as i32);
    let late = f.carol.approve(&f.tenant, &rejected).await.unwrap_err();
    assert_eq!(
        (late.code(), reason(&late)),
        (Code::FailedPrecondition, "INVALID_STATE".into())
    );

    // ---- the audit chain holds and names every step
    let mut audit_client = AuditServiceClient::new(f.zen.admin().await);
    let verified = audit_client
        .verify_chain(audit::VerifyChainRequest {
            tenant_id: f.tenant.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "audit chain broken: {}", verified.reason);
    let mut actions = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audit_client
            .list_audit_logs(audit::ListAuditLogsRequest {
                tenant_id: f.tenant.clone(),
                page_size: 500,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        actions.extend(
            page.audit_records
                .into_iter()
                .map(|a| (a.action, a.outcome)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let success = audit::AuditOutcome::Success as i32;
    for step in [
        "remediation.propose",
        "remediation.approve",
        "remediation.dispatched",
        "remediation.executing",
        "remediation.verifying",
        "remediation.succeeded",
        "remediation.auto_rollback",
        "remediation.rolled_back",
        "remediation.break_glass",
        "approval_policy.update",
        "remediation.dead_lettered",
        "dead_letter.replay",
        "remediation.reject",
    ] {
        assert!(
            actions.iter().any(|(a, o)| a == step && *o == success),
            "no successful {step} in the audit log"
        );
    }
    // The outcome and backlog metrics are exported.
    let metrics = reqwest::get(f.zen.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "zen_remediations_total{status=\"succeeded\"}",
        "zen_remediations_total{status=\"rolled_back\"}",
        "zen_remediation_queue_depth",
        "zen_dlq_depth",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    // Refused approvals are audited too.
    assert!(actions
        .iter()
        .any(|(a, o)| a == "remediation.approve" && *o != success));
}

#[tokio::test]
async fn remediation_loop_on_sqlite() {
    let f = setup(None).await;
    remediation_loop(&f, true).await;
    f.zen.stop().await;
}

#[tokio::test]
async fn remediation_loop_on_postgres() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let f = setup(Some(db.url.clone())).await;
    remediation_loop(&f, false).await;
    f.zen.stop().await;
    db.drop_database().await;
}

/// An agent without a hook reports every command failed; nothing is rolled back (it never
/// applied), and the remediation says why.
#[tokio::test]
async fn an_agent_without_an_executor_reports_failure() {
    let f = setup(None).await;
    let files = zen::agent::AgentFiles::new(f.agent_dir.path());
    let agent = tokio::spawn(async move {
        let options = zen::agent::RunOptions {
            batch_size: 10,
            batch_delay: Duration::from_millis(50),
            follow: true,
        };
        let _ = zen::agent::run(&files, tokio::io::empty(), options).await;
    });
    let r = f
        .propose(&f.alice, f.proposal("no hook", pb::RiskLevel::Low, false))
        .await;
    let failed = f
        .wait_for(&r.remediation_id, pb::RemediationStatus::Failed)
        .await;
    assert_eq!(failed.last_error, "no executor configured");
    assert!(f.runs(&r.remediation_id).await.is_empty());
    let refused = f
        .bob
        .client
        .clone()
        .request_rollback(f.bob.req(pb::RequestRollbackRequest {
            tenant_id: f.tenant.clone(),
            remediation_id: r.remediation_id.clone(),
            version: failed.version,
            reason: "undo".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "it never ran");

    // Approval windows: one that is closed all of today refuses approvals.
    let policy = f
        .olivia
        .client
        .clone()
        .get_approval_policy(f.olivia.req(pb::GetApprovalPolicyRequest {
            tenant_id: f.tenant.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .approval_policy
        .unwrap();
    use chrono::Datelike;
    let tomorrow = chrono::Utc::now().weekday().succ().number_from_monday() as i32;
    let update = |policy: pb::ApprovalPolicy, paths: &[&str]| {
        f.olivia.req(pb::UpdateApprovalPolicyRequest {
            tenant_id: f.tenant.clone(),
            approval_policy: Some(policy),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        })
    };
    let bad_zone = f
        .olivia
        .client
        .clone()
        .update_approval_policy(update(
            pb::ApprovalPolicy {
                approval_windows: vec![pb::ApprovalWindow {
                    days: vec![tomorrow],
                    start_hour: 0,
                    end_hour: 24,
                    time_zone: "Mars/Olympus_Mons".into(),
                }],
                version: policy.version,
                ..Default::default()
            },
            &["approval_windows"],
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_zone.code(), Code::InvalidArgument);
    let closed = f
        .olivia
        .client
        .clone()
        .update_approval_policy(update(
            pb::ApprovalPolicy {
                approval_windows: vec![pb::ApprovalWindow {
                    days: vec![tomorrow],
                    start_hour: 0,
                    end_hour: 24,
                    time_zone: "UTC".into(),
                }],
                pending_expiry: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
                version: policy.version,
                ..Default::default()
            },
            &["approval_windows", "pending_expiry"],
        ))
        .await
        .unwrap()
        .into_inner()
        .approval_policy
        .unwrap();
    let r = f
        .propose(
            &f.alice,
            f.proposal("outside", pb::RiskLevel::Medium, false),
        )
        .await;
    let outside = f.bob.approve(&f.tenant, &r).await.unwrap_err();
    assert_eq!(
        (outside.code(), reason(&outside)),
        (Code::FailedPrecondition, "OUTSIDE_APPROVAL_WINDOW".into())
    );
    // Nobody approved it in time: the sweeper expires it.
    let expired = f
        .wait_for(&r.remediation_id, pb::RemediationStatus::Expired)
        .await;
    assert!(expired.complete_time.is_some());
    // A stale policy version is refused.
    let stale = f
        .olivia
        .client
        .clone()
        .update_approval_policy(update(
            pb::ApprovalPolicy {
                allow_self_approval: true,
                version: policy.version,
                ..Default::default()
            },
            &["allow_self_approval"],
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert_eq!(closed.version, policy.version + 1);
    agent.abort();
    f.zen.stop().await;
}

/// On PostgreSQL: the new tables are under forced RLS and keyed to their tenant, a
/// remediation cannot point at another tenant's cluster, and two dispatchers claiming the same
/// cluster's queue at once never get the same execution (FOR UPDATE SKIP LOCKED).
#[tokio::test]
async fn the_queue_is_tenant_isolated_and_claimed_once_on_postgres() {
    use zen_store::{
        BackendKind, Dispatch, DispatchOperation, DispatchState, NewCluster, NewRemediation,
        NewTenant, RemediationStatus, RiskLevel, Scope, Store, StoreError,
    };
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = Store::connect(&db.url).await.unwrap();
    assert_eq!(store.kind(), BackendKind::Postgres);
    store.migrate().await.unwrap();
    for table in [
        "remediations",
        "remediation_approvals",
        "approval_policies",
        "remediation_dispatches",
        "verification_runs",
        "dead_letters",
    ] {
        let (enabled, forced): (bool, bool) = sqlx::query_as(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class \
             WHERE relname = $1 AND relnamespace = 'public'::regnamespace",
        )
        .bind(table)
        .fetch_one(store.pg_app_pool().unwrap())
        .await
        .unwrap();
        assert!(enabled && forced, "{table}: RLS must be enabled and forced");
    }
    let mut tenants = Vec::new();
    for name in ["tenant-a", "tenant-b"] {
        let mut tx = store.begin(&Scope::platform_admin(None)).await.unwrap();
        let tenant = tx
            .tenants()
            .create(
                NewTenant {
                    name: name.into(),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        let cluster = tx
            .clusters()
            .create(NewCluster {
                name: "prod".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        tx.commit().await.unwrap();
        tenants.push((tenant.id, cluster.id));
    }
    let [(a, cluster_a), (b, cluster_b)] = [tenants[0], tenants[1]];
    let new = |cluster_id| NewRemediation {
        cluster_id,
        event_id: None,
        title: "fix".into(),
        description: String::new(),
        action: serde_json::json!({"serverSideApply": {"name": "api"}}),
        rollback_action: None,
        probes: serde_json::json!([]),
        risk: RiskLevel::Low,
        status: RemediationStatus::Approved,
        required_approvals: 0,
        proposed_by: "test".into(),
        expires_at: None,
    };
    // Another tenant's cluster: refused by the composite foreign key.
    let mut tx = store.begin(&Scope::tenant(a, None)).await.unwrap();
    assert!(matches!(
        tx.remediations().create(new(cluster_b)).await,
        Err(StoreError::NotFound { .. })
    ));
    drop(tx);
    let mut tx = store.begin(&Scope::tenant(a, None)).await.unwrap();
    let r = tx.remediations().create(new(cluster_a)).await.unwrap();
    let now = chrono::Utc::now();
    for _ in 0..2 {
        tx.remediations()
            .enqueue(&Dispatch {
                execution_id: uuid::Uuid::now_v7(),
                tenant_id: a,
                cluster_id: cluster_a,
                remediation_id: r.id,
                remediation_version: 1,
                operation: DispatchOperation::Apply,
                state: DispatchState::Pending,
                attempts: 0,
                max_attempts: 3,
                next_attempt_at: now,
                last_error: String::new(),
                last_phase: String::new(),
                created_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    // Tenant B sees none of it, even naming A's cluster.
    let mut other = store.begin(&Scope::tenant(b, None)).await.unwrap();
    assert!(other
        .remediations()
        .claim_due(cluster_a, chrono::Utc::now(), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        other.remediations().get(r.id).await,
        Err(StoreError::NotFound { .. })
    ));
    drop(other);

    // Two claimers at once: each row goes to exactly one of them.
    let mut first = store.begin(&Scope::tenant(a, None)).await.unwrap();
    let mut second = store.begin(&Scope::tenant(a, None)).await.unwrap();
    let one = first
        .remediations()
        .claim_due(cluster_a, chrono::Utc::now(), 1)
        .await
        .unwrap();
    let two = second
        .remediations()
        .claim_due(cluster_a, chrono::Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!((one.len(), two.len()), (1, 1));
    assert_ne!(one[0].execution_id, two[0].execution_id);
    first.commit().await.unwrap();
    second.commit().await.unwrap();
    store.close().await;
    db.drop_database().await;
}

/// The agent dies while its hook runs: the restarted agent neither runs the execution again
/// nor forgets it; it reports the outcome unknown (FAILED), and nothing is rolled back blind.
#[tokio::test]
async fn an_agent_restarted_mid_execution_neither_reruns_nor_loses_it() {
    let f = setup(None).await;
    let agent = f.start_agent();
    let r = f
        .propose(
            &f.alice,
            f.proposal_marked("slow", pb::RiskLevel::Low, "slowApply"),
        )
        .await;
    let running = f
        .wait_for(&r.remediation_id, pb::RemediationStatus::Executing)
        .await;
    agent.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let agent = f.start_agent();
    let failed = f
        .wait_for(&r.remediation_id, pb::RemediationStatus::Failed)
        .await;
    assert!(
        failed.last_error.contains("restarted"),
        "{}",
        failed.last_error
    );
    assert_eq!(failed.execution_id, running.execution_id);
    // Long enough for the interrupted hook to finish: it ran once, and only once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(f.runs_of(&running.execution_id), 1);
    assert_eq!(
        f.get(&r.remediation_id).await.status,
        pb::RemediationStatus::Failed as i32
    );
    agent.abort();
    f.zen.stop().await;
}

// ----------------------------------------------------------------- WatchEvents

/// A cluster's agent stream (a certificate issued by the test CA), for ingesting events.
struct EventSender {
    tx: tokio::sync::mpsc::Sender<ingest::ConnectAgentRequest>,
    replies: tonic::Streaming<ingest::ConnectAgentResponse>,
    batches: usize,
}

impl EventSender {
    async fn connect(zen: &support::TestZen, tenant_id: &str, cluster_id: &str) -> Self {
        let files = zen_security::PkiFiles::new(zen.pki());
        let name = format!("events-{cluster_id}");
        let identity = zen_security::PeerIdentity::Agent {
            tenant_id: tenant_id.parse().unwrap(),
            cluster_id: cluster_id.parse().unwrap(),
        };
        let issued = files
            .load_ca()
            .unwrap()
            .issue_client(&identity, Duration::from_secs(600))
            .unwrap();
        files.write_identity(&name, &issued).unwrap();
        let channel = support::connect(
            zen.running.grpc_addr,
            &zen.pki().join("ca.crt"),
            Some((&files.cert(&name), &files.key(&name))),
        )
        .await
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(ingest::ConnectAgentRequest {
            payload: Some(ingest::connect_agent_request::Payload::Hello(
                ingest::AgentHello {
                    agent_version: "test".into(),
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
        let mut replies = ingest::ingest_service_client::IngestServiceClient::new(channel)
            .connect_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        match replies.next().await {
            Some(Ok(ingest::ConnectAgentResponse {
                payload: Some(ingest::connect_agent_response::Payload::Hello(_)),
            })) => {}
            other => panic!("expected the server hello, got {other:?}"),
        }
        EventSender {
            tx,
            replies,
            batches: 0,
        }
    }

    /// Ingests one HIGH event titled `title` and waits for its ack (committed).
    async fn send(&mut self, title: &str) {
        self.batches += 1;
        let batch_id = format!("batch-{}", self.batches);
        let event = ingest::AgentEvent {
            agent_event_id: format!("ev-{title}"),
            source: ingest::EventSource::Falco as i32,
            severity: zen::proto::zen::common::v1::Severity::High as i32,
            r#type: "runtime".into(),
            title: title.into(),
            fingerprint: format!("fp-{title}"),
            ..Default::default()
        };
        self.tx
            .send(ingest::ConnectAgentRequest {
                payload: Some(ingest::connect_agent_request::Payload::EventBatch(
                    ingest::EventBatch {
                        batch_id: batch_id.clone(),
                        events: vec![event],
                    },
                )),
            })
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.replies.next()).await {
                Ok(Some(Ok(ingest::ConnectAgentResponse {
                    payload: Some(ingest::connect_agent_response::Payload::BatchAck(ack)),
                }))) => {
                    assert_eq!(ack.batch_id, batch_id);
                    assert_eq!(
                        ack.acks.iter().map(|a| a.outcome).collect::<Vec<_>>(),
                        vec![ingest::EventOutcome::Accepted as i32]
                    );
                    return;
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected an ack, got {other:?}"),
            }
        }
    }
}

/// What a watch message carried: `E <title>` or `R <remediation_id> <status> v<version>`,
/// with its resume token.
type Heard = (String, i64);

fn heard(message: ingest::WatchEventsResponse) -> Option<Heard> {
    use ingest::watch_events_response::Change;
    let token = message
        .resume_token
        .parse::<i64>()
        .expect("a numeric token");
    match message.change? {
        Change::Event(e) => Some((format!("E {}", e.title), token)),
        Change::Remediation(r) => Some((
            format!(
                "R {} {:?} v{}",
                r.remediation_id,
                pb::RemediationStatus::try_from(r.status).unwrap(),
                r.version
            ),
            token,
        )),
        Change::Heartbeat(_) => None,
    }
}

async fn watch(
    f: &Fixture,
    request: ingest::WatchEventsRequest,
) -> tonic::Streaming<ingest::WatchEventsResponse> {
    ingest::ingest_service_client::IngestServiceClient::new(f.zen.admin().await)
        .watch_events(with_id(request))
        .await
        .expect("watch")
        .into_inner()
}

/// The next change (heartbeats skipped), waiting at most `wait`.
async fn next_change(
    stream: &mut tonic::Streaming<ingest::WatchEventsResponse>,
    wait: Duration,
) -> Option<Heard> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(message))) => match heard(message) {
                Some(h) => return Some(h),
                None => continue,
            },
            Ok(other) => panic!("the watch ended: {other:?}"),
        }
    }
}

/// Reads `n` changes, then asserts nothing more arrives for a while.
async fn exactly(
    stream: &mut tonic::Streaming<ingest::WatchEventsResponse>,
    n: usize,
) -> Vec<Heard> {
    let mut got = Vec::new();
    while got.len() < n {
        match next_change(stream, Duration::from_secs(15)).await {
            Some(h) => got.push(h),
            None => panic!("only {got:?} of {n} changes arrived"),
        }
    }
    if let Some(extra) = next_change(stream, Duration::from_millis(2500)).await {
        panic!("after {got:?}, an unexpected {extra:?}");
    }
    got
}

/// `WatchEvents` streams remediation changes with the events, in one order on one resume
/// token: each step is waited for on the live watch (a later change of the same remediation
/// would otherwise supersede it), a resume from the middle receives exactly what followed
/// (each remediation once, at its latest state), `cluster_id` filters remediations too and
/// `min_severity` does not.
async fn watch_interleaves_remediations(f: &Fixture) {
    // Events come from a second cluster with no agent of the first one online, so nothing
    // dispatches the remediation and its approvals are its last changes.
    let events_cluster = TenancyServiceClient::new(f.zen.admin().await)
        .create_cluster(with_id(tenancy::CreateClusterRequest {
            tenant_id: f.tenant.clone(),
            cluster: Some(tenancy::Cluster {
                name: "staging".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap()
        .cluster_id;
    let mut sender = EventSender::connect(&f.zen, &f.tenant, &events_cluster).await;
    let request =
        |cluster_id: &str, min_severity: i32, resume_token: &str| ingest::WatchEventsRequest {
            tenant_id: f.tenant.clone(),
            cluster_id: cluster_id.into(),
            min_severity,
            resume_token: resume_token.into(),
            ..Default::default()
        };
    let mut all = watch(f, request("", 0, "")).await;
    let critical = zen::proto::zen::common::v1::Severity::Critical as i32;
    let mut severe = watch(f, request("", critical, "")).await;
    let mut remediation_cluster = watch(f, request(&f.cluster, 0, "")).await;
    let mut events_only = watch(f, request(&events_cluster, 0, "")).await;

    let mut live = Vec::new();
    let expect = |got: Option<Heard>, want: String, live: &mut Vec<Heard>| {
        let got = got.unwrap_or_else(|| panic!("no change after {live:?}; wanted {want}"));
        assert_eq!(got.0, want, "after {live:?}");
        live.push(got);
    };
    let wait = Duration::from_secs(15);

    sender.send("first").await;
    expect(
        next_change(&mut all, wait).await,
        "E first".into(),
        &mut live,
    );
    let r = f
        .propose(
            &f.alice,
            f.proposal("watch me", pb::RiskLevel::Critical, false),
        )
        .await;
    let id = r.remediation_id.clone();
    expect(
        next_change(&mut all, wait).await,
        format!("R {id} Proposed v1"),
        &mut live,
    );
    sender.send("second").await;
    expect(
        next_change(&mut all, wait).await,
        "E second".into(),
        &mut live,
    );
    let once = f.bob.approve(&f.tenant, &r).await.unwrap();
    expect(
        next_change(&mut all, wait).await,
        format!("R {id} PendingApproval v2"),
        &mut live,
    );
    sender.send("third").await;
    expect(
        next_change(&mut all, wait).await,
        "E third".into(),
        &mut live,
    );
    let done = f.carol.approve(&f.tenant, &once).await.unwrap();
    assert_eq!(done.status, pb::RemediationStatus::Approved as i32);
    expect(
        next_change(&mut all, wait).await,
        format!("R {id} Approved v3"),
        &mut live,
    );
    assert!(
        live.windows(2).all(|w| w[0].1 < w[1].1),
        "tokens increase: {live:?}"
    );
    assert!(next_change(&mut all, Duration::from_millis(1500))
        .await
        .is_none());

    // The approvals travel with the change (the remediation service's own conversion).
    let mut approved = watch(f, request(&f.cluster, 0, &live[4].1.to_string())).await;
    let message = tokio::time::timeout(wait, approved.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match message.change {
        Some(ingest::watch_events_response::Change::Remediation(m)) => {
            assert_eq!(m.approvals.len(), 2);
            assert_eq!(m.cluster_id, f.cluster);
            assert_eq!(m.required_approvals, 2);
        }
        other => panic!("expected the remediation, got {other:?}"),
    }

    // Resuming after the proposal: the events that followed, and the remediation once, at
    // its latest state and seq; then nothing, until something new happens.
    let mut resumed = watch(f, request("", 0, &live[1].1.to_string())).await;
    let got = exactly(&mut resumed, 3).await;
    assert_eq!(
        got,
        vec![live[2].clone(), live[4].clone(), live[5].clone()],
        "resumed after {:?}",
        live[1]
    );
    sender.send("fourth").await;
    let fourth = next_change(&mut resumed, wait)
        .await
        .expect("the new event");
    assert_eq!(fourth.0, "E fourth");
    assert!(fourth.1 > live[5].1);
    // Resuming after the last change: only what is new.
    let mut tail = watch(f, request("", 0, &live[5].1.to_string())).await;
    assert_eq!(exactly(&mut tail, 1).await, vec![fourth.clone()]);

    // Filters. Remediations are not filtered by severity (the events here are HIGH), but by
    // cluster, like events. (These watches were not waited for step by step, so one may have
    // read two changes of the remediation at once and received only the later.)
    let every = [
        format!("R {id} Proposed v1"),
        format!("R {id} PendingApproval v2"),
        format!("R {id} Approved v3"),
    ];
    for stream in [&mut severe, &mut remediation_cluster] {
        let got: Vec<String> = drain(stream).await;
        let mut rest = every.iter();
        assert!(
            got.last() == every.last() && got.iter().all(|h| rest.any(|e| e == h)),
            "{got:?}"
        );
    }
    let theirs: Vec<String> = drain(&mut events_only).await;
    assert_eq!(theirs, ["E first", "E second", "E third", "E fourth"]);
}

/// Everything a watch received until it stayed quiet for a while, without tokens.
async fn drain(stream: &mut tonic::Streaming<ingest::WatchEventsResponse>) -> Vec<String> {
    let mut got = Vec::new();
    while let Some((what, _)) = next_change(stream, Duration::from_millis(2500)).await {
        got.push(what);
    }
    got
}

#[tokio::test]
async fn watch_events_carries_remediation_changes_on_sqlite() {
    let f = setup(None).await;
    watch_interleaves_remediations(&f).await;
    f.zen.stop().await;
}

#[tokio::test]
async fn watch_events_carries_remediation_changes_on_postgres() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let f = setup(Some(db.url.clone())).await;
    watch_interleaves_remediations(&f).await;
    f.zen.stop().await;
    db.drop_database().await;
}

/// Ingest batches and remediation changes committed concurrently: a live watch misses
/// neither kind (the two tables are read at one committed high-water mark), tokens only grow,
/// and a resume from the start gets each event once and each remediation once, approved.
#[tokio::test]
async fn watch_misses_nothing_under_concurrent_changes_on_postgres() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let f = setup(Some(db.url.clone())).await;
    let events_cluster = TenancyServiceClient::new(f.zen.admin().await)
        .create_cluster(with_id(tenancy::CreateClusterRequest {
            tenant_id: f.tenant.clone(),
            cluster: Some(tenancy::Cluster {
                name: "busy".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap()
        .cluster_id;
    let request = |token: &str| ingest::WatchEventsRequest {
        tenant_id: f.tenant.clone(),
        resume_token: token.into(),
        ..Default::default()
    };
    let mut live = watch(&f, request("")).await;
    let mut sender = EventSender::connect(&f.zen, &f.tenant, &events_cluster).await;
    const EVENTS: usize = 40;
    const REMEDIATIONS: usize = 6;
    let ingesting = async {
        for i in 0..EVENTS {
            sender.send(&format!("busy-{i:02}")).await;
        }
    };
    let remediating = async {
        let mut ids = Vec::new();
        for i in 0..REMEDIATIONS {
            let r = f
                .propose(
                    &f.alice,
                    f.proposal(&format!("busy {i}"), pb::RiskLevel::Medium, false),
                )
                .await;
            let approved = f.bob.approve(&f.tenant, &r).await.unwrap();
            assert_eq!(approved.status, pb::RemediationStatus::Approved as i32);
            ids.push(r.remediation_id);
        }
        ids
    };
    let ((), ids) = tokio::join!(ingesting, remediating);
    let want_events: Vec<String> = (0..EVENTS).map(|i| format!("E busy-{i:02}")).collect();
    let mut want_final: Vec<String> = ids.iter().map(|id| format!("R {id} Approved v2")).collect();
    want_final.sort();

    // Live: until every event and every approved state arrived.
    let mut got: Vec<Heard> = Vec::new();
    let done = |got: &[Heard]| {
        want_events
            .iter()
            .chain(&want_final)
            .all(|w| got.iter().any(|(h, _)| h == w))
    };
    while !done(&got) {
        match next_change(&mut live, Duration::from_secs(15)).await {
            Some(h) => got.push(h),
            None => panic!("the live watch stalled after {got:?}"),
        }
    }
    assert!(got.windows(2).all(|w| w[0].1 < w[1].1), "{got:?}");
    let events: Vec<&String> = got
        .iter()
        .map(|(h, _)| h)
        .filter(|h| h.starts_with("E "))
        .collect();
    assert_eq!(events, want_events.iter().collect::<Vec<_>>());

    // Resumed from the start: each once, in its latest state.
    let mut replay = watch(&f, request("0")).await;
    let again = exactly(&mut replay, EVENTS + REMEDIATIONS).await;
    assert!(again.windows(2).all(|w| w[0].1 < w[1].1), "{again:?}");
    let (mut remediations, events): (Vec<String>, Vec<String>) = again
        .into_iter()
        .map(|(h, _)| h)
        .partition(|h| h.starts_with("R "));
    assert_eq!(events, want_events);
    remediations.sort();
    assert_eq!(remediations, want_final);
    f.zen.stop().await;
    db.drop_database().await;
}

/// Whoever authored the current revision counts as a proposer: an approver who rewrites the
/// action cannot then approve it alone, and the original proposer cannot approve either; a
/// third person can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_author_of_a_revision_cannot_approve_it() {
    let f = setup(None).await;
    let proposed = f
        .propose(
            &f.alice,
            f.proposal("tighten api", pb::RiskLevel::Medium, false),
        )
        .await;
    assert_eq!(proposed.required_approvals, 1, "{proposed:?}");
    let action = f
        .proposal("escalate", pb::RiskLevel::Medium, false)
        .remediation
        .unwrap()
        .action;
    let revised = f
        .bob
        .client
        .clone()
        .revise_remediation(f.bob.req(pb::ReviseRemediationRequest {
            tenant_id: f.tenant.clone(),
            remediation_id: proposed.remediation_id.clone(),
            version: proposed.version,
            action,
            comment: "a different action".into(),
            ..Default::default()
        }))
        .await
        .expect("an approver may revise")
        .into_inner()
        .remediation
        .unwrap();
    assert_eq!(revised.revised_by, f.bob.id);
    assert!(revised.version > proposed.version);
    for author in [&f.bob, &f.alice] {
        let refused = author.approve(&f.tenant, &revised).await.unwrap_err();
        assert_eq!(
            (refused.code(), reason(&refused)),
            (Code::PermissionDenied, "SELF_APPROVAL_FORBIDDEN".into()),
            "{} approved a revision they had a hand in",
            author.id
        );
    }
    let approved = f.carol.approve(&f.tenant, &revised).await.unwrap();
    assert_eq!(approved.status, pb::RemediationStatus::Approved as i32);
    f.zen.stop().await;
}
