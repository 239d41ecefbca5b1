//! `zen.tenancy.v1.TenancyService`: tenants, members, invites, clusters, bootstrap tokens.
//!
//! Authorization (caller kinds, platform admin, minimum tenant role) already happened in the
//! authorization layer; the rules here are the ones that depend on the request's content
//! (granting OWNER needs an owner, removing someone else needs an admin). Every mutation and
//! its audit record commit in one transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use serde_json::json;
use tonic::{Request, Response, Status};
use uuid::Uuid;
use zen_store::{
    Cluster, ClusterFilter, ClusterStatus, ClusterUpdate, ConnectionState, Invite, Member,
    MemberFilter, NewBootstrapToken, NewCluster, NewInvite, NewTenant, Quotas, Retention, Role,
    Store, Tenant, TenantFilter, TenantStatus, TenantUpdate,
};

use super::support::{
    denied, duration_field, invalid, opt_timestamp, page_request, role_field, role_to_proto,
    store_status, tenant_of_secret, tenant_secret, timestamp, Call, Mutation,
};
use crate::authz::rank;
use crate::grpc::validate::{id, unchecked};
use crate::proto::zen::tenancy::v1::{self as pb, tenancy_service_server::TenancyService};

/// Prefix of bootstrap tokens (`zbt.<tenant>.<secret>`).
pub const BOOTSTRAP_TOKEN_PREFIX: &str = "zbt";
/// Prefix of invite tokens (`zinv.<tenant>.<secret>`).
pub const INVITE_TOKEN_PREFIX: &str = "zinv";

pub struct TenancyApi {
    store: Arc<Store>,
    /// The quotas of a tenant created without its own (the platform's defaults).
    default_quotas: Quotas,
}

impl TenancyApi {
    pub fn new(store: Arc<Store>, default_quotas: Quotas) -> Self {
        Self {
            store,
            default_quotas,
        }
    }
}

fn store_err(prefix: &'static str) -> impl Fn(zen_store::StoreError) -> Status {
    move |error| store_status(error, prefix)
}

/// AIP-154: a stated version must be current (ABORTED otherwise); 0 means "whatever is
/// current" (the contract's rules refuse negative versions).
fn expected_version(version: i64) -> Option<i64> {
    (version > 0).then_some(version)
}

/// Update-mask paths, or the populated fields when no mask is sent (AIP-134).
fn mask_paths(mask: Option<&prost_types::FieldMask>, populated: &[(&str, bool)]) -> Vec<String> {
    match mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
        _ => populated
            .iter()
            .filter(|(_, set)| *set)
            .map(|(path, _)| (*path).to_owned())
            .collect(),
    }
}

fn tenant_to_proto(tenant: Tenant) -> pb::Tenant {
    pb::Tenant {
        tenant_id: tenant.id.to_string(),
        name: tenant.name,
        display_name: tenant.display_name,
        status: match tenant.status {
            TenantStatus::Active => pb::TenantStatus::Active,
            TenantStatus::Suspended => pb::TenantStatus::Suspended,
            TenantStatus::Deleted => pb::TenantStatus::Deleted,
        } as i32,
        quotas: Some(pb::TenantQuotas {
            max_clusters: tenant.quotas.max_clusters,
            requests_per_second: tenant.quotas.requests_per_second,
            max_events_per_day: tenant.quotas.max_events_per_day,
        }),
        create_time: Some(timestamp(tenant.created_at)),
        update_time: Some(timestamp(tenant.updated_at)),
        created_by: tenant.created_by.map(|u| u.to_string()).unwrap_or_default(),
        delete_time: opt_timestamp(tenant.deleted_at),
        suspend_reason: tenant.suspend_reason.unwrap_or_default(),
        version: tenant.version,
        retention: Some(pb::TenantRetention {
            events_days: tenant.retention.events_days,
            receipts_days: tenant.retention.receipts_days,
            remediations_days: tenant.retention.remediations_days,
            dead_letters_days: tenant.retention.dead_letters_days,
        }),
    }
}

/// `given`'s windows named by `fields` (every window for `retention`) over `current`.
fn merge_retention(
    current: Retention,
    given: &pb::TenantRetention,
    fields: &[String],
) -> Retention {
    let mut merged = current;
    for field in fields {
        let all = field == "retention";
        if all || field == "retention.events_days" {
            merged.events_days = given.events_days;
        }
        if all || field == "retention.receipts_days" {
            merged.receipts_days = given.receipts_days;
        }
        if all || field == "retention.remediations_days" {
            merged.remediations_days = given.remediations_days;
        }
        if all || field == "retention.dead_letters_days" {
            merged.dead_letters_days = given.dead_letters_days;
        }
    }
    merged
}

fn member_to_proto(member: Member) -> pb::Member {
    pb::Member {
        user_id: member.user_id.to_string(),
        tenant_id: member.tenant_id.to_string(),
        email: member.email.unwrap_or_default(),
        display_name: member.display_name.unwrap_or_default(),
        role: role_to_proto(member.role) as i32,
        join_time: Some(timestamp(member.joined_at)),
        invited_by: member.invited_by.map(|u| u.to_string()).unwrap_or_default(),
    }
}

fn invite_to_proto(invite: Invite) -> pb::Invite {
    let state = if invite.accepted_at.is_some() {
        pb::InviteState::Accepted
    } else if invite.expires_at <= Utc::now() {
        pb::InviteState::Expired
    } else {
        pb::InviteState::Pending
    };
    pb::Invite {
        invite_id: invite.id.to_string(),
        tenant_id: invite.tenant_id.to_string(),
        email: invite.email,
        role: role_to_proto(invite.role) as i32,
        state: state as i32,
        invited_by: invite.created_by.map(|u| u.to_string()).unwrap_or_default(),
        create_time: Some(timestamp(invite.created_at)),
        expire_time: Some(timestamp(invite.expires_at)),
        accept_time: opt_timestamp(invite.accepted_at),
    }
}

fn cluster_to_proto(cluster: Cluster) -> pb::Cluster {
    pb::Cluster {
        cluster_id: cluster.id.to_string(),
        tenant_id: cluster.tenant_id.to_string(),
        name: cluster.name,
        display_name: cluster.display_name,
        status: cluster_status_to_proto(cluster.status) as i32,
        status_message: String::new(),
        connection_state: match (cluster.connection_state, cluster.last_seen_at) {
            (ConnectionState::Connected, _) => pb::ConnectionState::Connected,
            (_, None) => pb::ConnectionState::NeverConnected,
            _ => pb::ConnectionState::Disconnected,
        } as i32,
        agent_version: cluster.agent_version.unwrap_or_default(),
        kubernetes_version: String::new(),
        last_seen_time: opt_timestamp(cluster.last_seen_at),
        certificate_expire_time: None,
        api_endpoint: cluster.api_endpoint.unwrap_or_default(),
        labels: cluster.labels.into_iter().collect(),
        create_time: Some(timestamp(cluster.created_at)),
        update_time: Some(timestamp(cluster.updated_at)),
        version: cluster.version,
    }
}

fn cluster_status_to_proto(status: ClusterStatus) -> pb::ClusterStatus {
    match status {
        ClusterStatus::Provisioning => pb::ClusterStatus::Provisioning,
        ClusterStatus::Ready => pb::ClusterStatus::Ready,
        ClusterStatus::Error => pb::ClusterStatus::Error,
        ClusterStatus::Deleting => pb::ClusterStatus::Deleting,
    }
}

fn cluster_status_filter(value: i32) -> Result<Option<ClusterStatus>, Status> {
    // Unknown numbers are refused by the contract's enum.defined_only rule.
    Ok(match pb::ClusterStatus::try_from(value) {
        Ok(pb::ClusterStatus::Unspecified) => None,
        Ok(pb::ClusterStatus::Provisioning) => Some(ClusterStatus::Provisioning),
        Ok(pb::ClusterStatus::Ready) => Some(ClusterStatus::Ready),
        Ok(pb::ClusterStatus::Error) => Some(ClusterStatus::Error),
        Ok(pb::ClusterStatus::Deleting) => Some(ClusterStatus::Deleting),
        Err(_) => return Err(unchecked("status")),
    })
}

/// Quotas as stated (the contract's rules refuse negative limits); 0 means the platform's
/// default.
fn quotas_from_proto(quotas: &pb::TenantQuotas, defaults: &Quotas) -> Quotas {
    let or_default = |value: i64, default: i64| if value == 0 { default } else { value };
    Quotas {
        max_clusters: or_default(quotas.max_clusters.into(), defaults.max_clusters.into()) as i32,
        requests_per_second: or_default(
            quotas.requests_per_second.into(),
            defaults.requests_per_second.into(),
        ) as i32,
        max_events_per_day: or_default(quotas.max_events_per_day, defaults.max_events_per_day),
    }
}

/// The API endpoint, or none when empty (its form is the contract's rule).
fn api_endpoint(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

fn quotas_denied() -> Status {
    denied(
        "PLATFORM_ADMIN_REQUIRED",
        "only a platform admin may set a tenant's quotas; leave `quotas` out (the defaults apply)",
    )
}

/// Whether an invite sent to `invited` may be accepted by a person whose address is `own`:
/// e-mail addresses compare without regard to case (RFC 5321 leaves the local part's case to
/// the receiving server; every mainstream provider ignores it). No address never matches.
fn same_email(invited: &str, own: Option<&str>) -> bool {
    own.is_some_and(|own| own.trim().eq_ignore_ascii_case(invited.trim()))
}

/// What the caller may grant, copied out of the call so units of work can own it.
#[derive(Clone, Copy)]
struct Grantor {
    role: Option<Role>,
    platform_admin: bool,
}

impl Grantor {
    fn of(call: &Call) -> Self {
        Self {
            role: call.role,
            platform_admin: call.caller.is_platform_admin(),
        }
    }

    /// Granting (or taking away) `role` needs at least that role; owners grant OWNER.
    fn check(self, role: Role) -> Result<(), Status> {
        match self.role {
            Some(own) if !self.platform_admin && rank(own) < rank(role) => Err(denied(
                "ROLE_TOO_LOW",
                format!("granting or changing the {role} role needs the {role} role"),
            )),
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl TenancyService for TenancyApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let call = Call::of(&request)?;
        let tenant = request
            .into_inner()
            .tenant
            .ok_or_else(|| unchecked("tenant"))?;
        let quotas = tenant.quotas.unwrap_or_default();
        if quotas != pb::TenantQuotas::default() && !call.caller.is_platform_admin() {
            return Err(quotas_denied());
        }
        let new = NewTenant {
            name: tenant.name,
            display_name: tenant.display_name,
            quotas: quotas_from_proto(&quotas, &self.default_quotas),
        };
        let owner = call.caller.user_id();
        let scope = call.scope(None);
        let created = call
            .mutate(&self.store, &scope, "tenant.create", "tenant", move |tx| {
                Box::pin(async move {
                    let created = tx
                        .tenants()
                        .create(new, owner)
                        .await
                        .map_err(store_err("tenant"))?;
                    let details = json!({ "name": created.name, "quotas": created.quotas });
                    Ok(Mutation::new(
                        tenant_to_proto(created.clone()),
                        created.id,
                        details,
                    ))
                })
            })
            .await?;
        Ok(Response::new(pb::CreateTenantResponse {
            tenant: Some(created),
        }))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let call = Call::of(&request)?;
        let tenant_id = id("tenant_id", &request.get_ref().tenant_id)?;
        let mut tx = call.read(&self.store, Some(tenant_id)).await?;
        let tenant = tx.tenants().get(tenant_id).await.map_err(store_err(""))?;
        Ok(Response::new(pb::GetTenantResponse {
            tenant: Some(tenant_to_proto(tenant)),
        }))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let page = page_request(req.page_size, &req.page_token);
        let status = match pb::TenantStatus::try_from(req.status) {
            Ok(pb::TenantStatus::Unspecified) => None,
            Ok(pb::TenantStatus::Active) => Some(TenantStatus::Active),
            Ok(pb::TenantStatus::Suspended) => Some(TenantStatus::Suspended),
            Ok(pb::TenantStatus::Deleted) => Some(TenantStatus::Deleted),
            Err(_) => return Err(unchecked("status")),
        };
        let filter = TenantFilter {
            status,
            name_prefix: Some(req.name_prefix).filter(|p| !p.is_empty()),
            include_deleted: req.show_deleted,
        };
        let page = call
            .list(&self.store, None, move |tx| {
                let (filter, page) = (filter.clone(), page.clone());
                Box::pin(async move { tx.tenants().list(&filter, &page).await })
            })
            .await?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: page.items.into_iter().map(tenant_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_tenant(
        &self,
        request: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::UpdateTenantResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let tenant = req.tenant.ok_or_else(|| unchecked("tenant"))?;
        let version = expected_version(tenant.version);
        let quotas = tenant.quotas.unwrap_or_default();
        let paths = mask_paths(
            req.update_mask.as_ref(),
            &[
                ("display_name", !tenant.display_name.is_empty()),
                ("quotas", tenant.quotas.is_some()),
                ("retention", tenant.retention.is_some()),
            ],
        );
        let retention = tenant.retention.unwrap_or_default();
        let mut retention_fields = Vec::new();
        // Quotas bound what a tenant may cost the platform: only platform admins set them.
        if paths
            .iter()
            .any(|p| p == "quotas" || p.starts_with("quotas."))
            && !call.caller.is_platform_admin()
        {
            return Err(quotas_denied());
        }
        let mut update = TenantUpdate::default();
        for path in &paths {
            match path.as_str() {
                "display_name" => update.display_name = Some(tenant.display_name.clone()),
                "quotas" => {
                    let quotas = quotas_from_proto(&quotas, &self.default_quotas);
                    update.max_clusters = Some(quotas.max_clusters);
                    update.requests_per_second = Some(quotas.requests_per_second);
                    update.max_events_per_day = Some(quotas.max_events_per_day);
                }
                "quotas.max_clusters" => update.max_clusters = Some(quotas.max_clusters),
                "quotas.requests_per_second" => {
                    update.requests_per_second = Some(quotas.requests_per_second)
                }
                "quotas.max_events_per_day" => {
                    update.max_events_per_day = Some(quotas.max_events_per_day)
                }
                "retention"
                | "retention.events_days"
                | "retention.receipts_days"
                | "retention.remediations_days"
                | "retention.dead_letters_days" => retention_fields.push(path.clone()),
                other => {
                    return Err(invalid(&[(
                        "update_mask",
                        &format!(
                            "`{other}` cannot be updated (display_name, quotas.*, retention.*)"
                        ),
                    )]))
                }
            }
        }
        let scope = call.scope(Some(tenant_id));
        let updated = call
            .mutate(&self.store, &scope, "tenant.update", "tenant", move |tx| {
                Box::pin(async move {
                    if !retention_fields.is_empty() {
                        // Windows not named keep their stored values.
                        let current = tx
                            .tenants()
                            .get(tenant_id)
                            .await
                            .map_err(store_err("tenant"))?;
                        update.retention = Some(merge_retention(
                            current.retention,
                            &retention,
                            &retention_fields,
                        ));
                    }
                    let updated = tx
                        .tenants()
                        .update(tenant_id, version, update)
                        .await
                        .map_err(store_err("tenant"))?;
                    let details = json!({ "fields": paths, "version": updated.version });
                    Ok(Mutation::new(tenant_to_proto(updated), tenant_id, details))
                })
            })
            .await?;
        Ok(Response::new(pb::UpdateTenantResponse {
            tenant: Some(updated),
        }))
    }

    async fn suspend_tenant(
        &self,
        request: Request<pb::SuspendTenantRequest>,
    ) -> Result<Response<pb::SuspendTenantResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let version = expected_version(req.version);
        let tenant = self
            .set_tenant_status(
                &call,
                tenant_id,
                version,
                TenantStatus::Suspended,
                Some(req.reason),
            )
            .await?;
        Ok(Response::new(pb::SuspendTenantResponse {
            tenant: Some(tenant),
        }))
    }

    async fn resume_tenant(
        &self,
        request: Request<pb::ResumeTenantRequest>,
    ) -> Result<Response<pb::ResumeTenantResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let version = expected_version(req.version);
        let tenant = self
            .set_tenant_status(&call, tenant_id, version, TenantStatus::Active, None)
            .await?;
        Ok(Response::new(pb::ResumeTenantResponse {
            tenant: Some(tenant),
        }))
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let version = expected_version(req.version);
        let scope = call.scope(Some(tenant_id));
        let deleted = call
            .mutate(&self.store, &scope, "tenant.delete", "tenant", move |tx| {
                Box::pin(async move {
                    let deleted = tx
                        .tenants()
                        .soft_delete(tenant_id, version)
                        .await
                        .map_err(store_err(""))?;
                    let details = json!({ "name": deleted.name });
                    Ok(Mutation::new(tenant_to_proto(deleted), tenant_id, details))
                })
            })
            .await?;
        Ok(Response::new(pb::DeleteTenantResponse {
            tenant: Some(deleted),
        }))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let page = page_request(req.page_size, &req.page_token);
        let role = if req.role == 0 {
            None
        } else {
            Some(role_field("role", req.role)?)
        };
        let page = call
            .list(&self.store, Some(tenant_id), move |tx| {
                let page = page.clone();
                Box::pin(async move { tx.members().list(&MemberFilter { role }, &page).await })
            })
            .await?;
        Ok(Response::new(pb::ListMembersResponse {
            members: page.items.into_iter().map(member_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn create_invite(
        &self,
        request: Request<pb::CreateInviteRequest>,
    ) -> Result<Response<pb::CreateInviteResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let role = role_field("role", req.role)?;
        let email = req.email;
        let ttl = duration_field(
            "ttl",
            req.ttl.as_ref(),
            chrono::Duration::days(7),
            chrono::Duration::days(30),
        )?;
        Grantor::of(&call).check(role)?;
        let new = NewInvite {
            email,
            role,
            expires_at: Utc::now() + ttl,
            created_by: call.caller.user_id(),
        };
        let token = tenant_secret(INVITE_TOKEN_PREFIX, tenant_id);
        let secret = token.clone();
        let scope = call.scope(Some(tenant_id));
        let invite = call
            .mutate(&self.store, &scope, "member.invite", "invite", move |tx| {
                Box::pin(async move {
                    let invite = tx
                        .invites()
                        .create(new, &secret)
                        .await
                        .map_err(store_err(""))?;
                    let details = json!({ "email": invite.email, "role": invite.role });
                    Ok(Mutation::new(
                        invite_to_proto(invite.clone()),
                        invite.id,
                        details,
                    ))
                })
            })
            .await?;
        Ok(Response::new(pb::CreateInviteResponse {
            invite: Some(invite),
            token,
        }))
    }

    async fn accept_invite(
        &self,
        request: Request<pb::AcceptInviteRequest>,
    ) -> Result<Response<pb::AcceptInviteResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let invite_id = id("invite_id", &req.invite_id)?;
        let user_id = call.caller.user_id().ok_or_else(|| {
            denied(
                "CALLER_NOT_ALLOWED",
                "only a signed-in person can accept an invite",
            )
        })?;
        // The tenant travels inside the token so the lookup runs scoped to it; a malformed
        // token is as unknown as a wrong one.
        let tenant_id = tenant_of_secret(INVITE_TOKEN_PREFIX, &req.token)
            .ok_or_else(|| Status::not_found("invite not found"))?;
        let token = req.token;
        let scope = call.scope(Some(tenant_id));
        let member = call
            .mutate(&self.store, &scope, "member.accept", "invite", move |tx| {
                Box::pin(async move {
                    // Accepting proves the token (and one use); the e-mail check follows in
                    // the same transaction, so a mismatch undoes the membership. Checking after
                    // the token means only the token's holder learns that the address differs.
                    let member = tx
                        .invites()
                        .accept(invite_id, &token, user_id, Utc::now())
                        .await
                        .map_err(store_err(""))?;
                    let invite = tx.invites().get(invite_id).await.map_err(store_err(""))?;
                    let user = tx.users().get(user_id).await.map_err(store_err(""))?;
                    if !same_email(&invite.email, user.email.as_deref()) {
                        return Err(denied(
                            "INVITE_EMAIL_MISMATCH",
                            "this invite was sent to another e-mail address: sign in as the \
                             person it was sent to, or ask for an invite to your own address",
                        ));
                    }
                    let details = json!({ "user_id": user_id, "role": member.role });
                    Ok(Mutation::new(member_to_proto(member), invite_id, details))
                })
            })
            .await?;
        Ok(Response::new(pb::AcceptInviteResponse {
            member: Some(member),
        }))
    }

    async fn update_member_role(
        &self,
        request: Request<pb::UpdateMemberRoleRequest>,
    ) -> Result<Response<pb::UpdateMemberRoleResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let user_id = id("user_id", &req.user_id)?;
        let role = role_field("role", req.role)?;
        let grantor = Grantor::of(&call);
        grantor.check(role)?;
        let scope = call.scope(Some(tenant_id));
        let member = call
            .mutate(
                &self.store,
                &scope,
                "member.role.change",
                "member",
                move |tx| {
                    Box::pin(async move {
                        let current = tx
                            .members()
                            .role_of(user_id)
                            .await
                            .map_err(store_err(""))?
                            .ok_or_else(|| Status::not_found("member not found"))?;
                        // Changing an owner's role is an owner's decision.
                        grantor.check(current)?;
                        let member = tx
                            .members()
                            .change_role(user_id, role)
                            .await
                            .map_err(store_err(""))?;
                        let details = json!({ "from": current, "to": role });
                        Ok(Mutation::new(member_to_proto(member), user_id, details))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::UpdateMemberRoleResponse {
            member: Some(member),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let user_id = id("user_id", &req.user_id)?;
        let leaving_self = call.caller.user_id() == Some(user_id);
        let grantor = Grantor::of(&call);
        if !leaving_self {
            // Anyone may leave; removing someone else is an admin's job.
            grantor.check(Role::Admin)?;
        }
        let scope = call.scope(Some(tenant_id));
        call.mutate(&self.store, &scope, "member.remove", "member", move |tx| {
            Box::pin(async move {
                let current = tx
                    .members()
                    .role_of(user_id)
                    .await
                    .map_err(store_err(""))?
                    .ok_or_else(|| Status::not_found("member not found"))?;
                if !leaving_self {
                    grantor.check(current)?;
                }
                tx.members().remove(user_id).await.map_err(store_err(""))?;
                Ok(Mutation::new((), user_id, json!({ "role": current })))
            })
        })
        .await?;
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }

    async fn create_cluster(
        &self,
        request: Request<pb::CreateClusterRequest>,
    ) -> Result<Response<pb::CreateClusterResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let cluster = req.cluster.ok_or_else(|| unchecked("cluster"))?;
        let new = NewCluster {
            name: cluster.name,
            display_name: cluster.display_name,
            api_endpoint: api_endpoint(&cluster.api_endpoint),
            labels: cluster.labels.into_iter().collect(),
            metadata: serde_json::Value::Null,
        };
        let scope = call.scope(Some(tenant_id));
        let created = call
            .mutate(
                &self.store,
                &scope,
                "cluster.create",
                "cluster",
                move |tx| {
                    Box::pin(async move {
                        let created = tx
                            .clusters()
                            .create(new)
                            .await
                            .map_err(store_err("cluster"))?;
                        let details = json!({ "name": created.name });
                        Ok(Mutation::new(
                            cluster_to_proto(created.clone()),
                            created.id,
                            details,
                        ))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::CreateClusterResponse {
            cluster: Some(created),
        }))
    }

    async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::GetClusterResponse>, Status> {
        let call = Call::of(&request)?;
        let tenant_id = id("tenant_id", &request.get_ref().tenant_id)?;
        let cluster_id = id("cluster_id", &request.get_ref().cluster_id)?;
        let mut tx = call.read(&self.store, Some(tenant_id)).await?;
        let cluster = tx.clusters().get(cluster_id).await.map_err(store_err(""))?;
        Ok(Response::new(pb::GetClusterResponse {
            cluster: Some(cluster_to_proto(cluster)),
        }))
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let page = page_request(req.page_size, &req.page_token);
        let connection_state = pb::ConnectionState::try_from(req.connection_state)
            .map_err(|_| unchecked("connection_state"))?;
        let filter = ClusterFilter {
            status: cluster_status_filter(req.status)?,
            name_prefix: Some(req.name_prefix).filter(|p| !p.is_empty()),
        };
        let page = call
            .list(&self.store, Some(tenant_id), move |tx| {
                let (filter, page) = (filter.clone(), page.clone());
                Box::pin(async move { tx.clusters().list(&filter, &page).await })
            })
            .await?;
        // The connection state changes with every heartbeat, so it filters the page rather
        // than the query; a page may then hold fewer items than asked (AIP-158 allows it).
        let clusters = page
            .items
            .into_iter()
            .map(cluster_to_proto)
            .filter(|c| {
                connection_state == pb::ConnectionState::Unspecified
                    || c.connection_state == connection_state as i32
            })
            .collect();
        Ok(Response::new(pb::ListClustersResponse {
            clusters,
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_cluster(
        &self,
        request: Request<pb::UpdateClusterRequest>,
    ) -> Result<Response<pb::UpdateClusterResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let cluster_id = id("cluster_id", &req.cluster_id)?;
        let cluster = req.cluster.ok_or_else(|| unchecked("cluster"))?;
        let version = expected_version(cluster.version);
        let paths = mask_paths(
            req.update_mask.as_ref(),
            &[
                ("display_name", !cluster.display_name.is_empty()),
                ("api_endpoint", !cluster.api_endpoint.is_empty()),
                ("labels", !cluster.labels.is_empty()),
            ],
        );
        let mut update = ClusterUpdate::default();
        for path in &paths {
            match path.as_str() {
                "display_name" => update.display_name = Some(cluster.display_name.clone()),
                "api_endpoint" => update.api_endpoint = Some(api_endpoint(&cluster.api_endpoint)),
                "labels" => {
                    update.labels = Some(
                        cluster
                            .labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect::<BTreeMap<_, _>>(),
                    )
                }
                other => {
                    return Err(invalid(&[(
                        "update_mask",
                        &format!(
                            "`{other}` cannot be updated (display_name, api_endpoint, labels)"
                        ),
                    )]))
                }
            }
        }
        let scope = call.scope(Some(tenant_id));
        let updated = call
            .mutate(
                &self.store,
                &scope,
                "cluster.update",
                "cluster",
                move |tx| {
                    Box::pin(async move {
                        let updated = tx
                            .clusters()
                            .update(cluster_id, version, update)
                            .await
                            .map_err(store_err("cluster"))?;
                        let details = json!({ "fields": paths, "version": updated.version });
                        Ok(Mutation::new(
                            cluster_to_proto(updated),
                            cluster_id,
                            details,
                        ))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::UpdateClusterResponse {
            cluster: Some(updated),
        }))
    }

    async fn delete_cluster(
        &self,
        request: Request<pb::DeleteClusterRequest>,
    ) -> Result<Response<pb::DeleteClusterResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let cluster_id = id("cluster_id", &req.cluster_id)?;
        let version = expected_version(req.version);
        let scope = call.scope(Some(tenant_id));
        call.mutate(
            &self.store,
            &scope,
            "cluster.delete",
            "cluster",
            move |tx| {
                Box::pin(async move {
                    let deleted = tx
                        .clusters()
                        .soft_delete(cluster_id, version)
                        .await
                        .map_err(store_err(""))?;
                    Ok(Mutation::new(
                        (),
                        cluster_id,
                        json!({ "name": deleted.name }),
                    ))
                })
            },
        )
        .await?;
        Ok(Response::new(pb::DeleteClusterResponse {}))
    }

    async fn create_bootstrap_token(
        &self,
        request: Request<pb::CreateBootstrapTokenRequest>,
    ) -> Result<Response<pb::CreateBootstrapTokenResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let cluster_id = id("cluster_id", &req.cluster_id)?;
        let ttl = duration_field(
            "ttl",
            req.ttl.as_ref(),
            chrono::Duration::hours(1),
            chrono::Duration::hours(24),
        )?;
        let new = NewBootstrapToken {
            cluster_id,
            expires_at: Utc::now() + ttl,
            created_by: call.caller.user_id(),
        };
        let token = tenant_secret(BOOTSTRAP_TOKEN_PREFIX, tenant_id);
        let secret = token.clone();
        let scope = call.scope(Some(tenant_id));
        let created = call
            .mutate(
                &self.store,
                &scope,
                "bootstrap_token.create",
                "cluster",
                move |tx| {
                    Box::pin(async move {
                        let created = tx
                            .bootstrap_tokens()
                            .create(new, &secret)
                            .await
                            .map_err(store_err(""))?;
                        let details =
                            json!({ "token_id": created.id, "expires_at": created.expires_at });
                        Ok(Mutation::new(created, cluster_id, details))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::CreateBootstrapTokenResponse {
            token_id: created.id.to_string(),
            token,
            expire_time: Some(timestamp(created.expires_at)),
        }))
    }
}

impl TenancyApi {
    async fn set_tenant_status(
        &self,
        call: &Call,
        tenant_id: Uuid,
        version: Option<i64>,
        status: TenantStatus,
        reason: Option<String>,
    ) -> Result<pb::Tenant, Status> {
        let action = if status == TenantStatus::Suspended {
            "tenant.suspend"
        } else {
            "tenant.resume"
        };
        let scope = call.scope(Some(tenant_id));
        call.mutate(&self.store, &scope, action, "tenant", move |tx| {
            Box::pin(async move {
                let details = json!({ "reason": reason });
                let tenant = tx
                    .tenants()
                    .set_status(tenant_id, version, status, reason)
                    .await
                    .map_err(store_err(""))?;
                Ok(Mutation::new(tenant_to_proto(tenant), tenant_id, details))
            })
        })
        .await
    }
}
