//! Authorization: who may call what.
//!
//! The table is declarative and lives in the contracts: every RPC carries a
//! `(zen.common.v1.policy)` method option (allowed caller kinds, minimum tenant role,
//! platform-admin only, mutating). [`PolicyTable`] reads it from the descriptor set at start;
//! an RPC without a policy is refused (fail closed). [`decide`] is the single decision function;
//! the [`AuthzLayer`] applies it to every call in front of every service.

use std::collections::HashMap;
use std::fmt;

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};
use uuid::Uuid;
use zen_security::PeerIdentity;
use zen_store::Role;

use crate::grpc::edge::RequestContext;

const POLICY_EXTENSION: &str = "zen.common.v1.policy";

/// The service identity of the REST gateway (`spiffe://zen/service/gateway`).
pub const GATEWAY_IDENTITY: &str = "gateway";

/// Kinds of callers, as `zen.common.v1.CallerKind` numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallerKind {
    Public = 1,
    User = 2,
    Agent = 3,
    Service = 4,
    Operator = 5,
}

impl CallerKind {
    fn from_number(number: i32) -> Option<Self> {
        Some(match number {
            1 => CallerKind::Public,
            2 => CallerKind::User,
            3 => CallerKind::Agent,
            4 => CallerKind::Service,
            5 => CallerKind::Operator,
            _ => return None,
        })
    }
}

/// The policy of one RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodPolicy {
    pub callers: Vec<CallerKind>,
    /// Minimum role of a user caller in the addressed tenant.
    pub min_role: Option<Role>,
    pub platform_admin: bool,
    pub mutating: bool,
    /// The service authenticates each request itself and audits that decision with its
    /// change (webhooks): the interceptor records no decision of its own when it allows.
    pub audits_own_authentication: bool,
}

/// Every RPC's policy, keyed by gRPC path (`/zen.tenancy.v1.TenancyService/CreateCluster`).
#[derive(Clone, Debug)]
pub struct PolicyTable {
    methods: HashMap<String, (MethodDescriptor, Option<MethodPolicy>)>,
}

impl PolicyTable {
    /// Reads every `zen.*` method's policy from an encoded descriptor set. Methods without a
    /// policy are kept (as `None`) so the matrix test can name them.
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Self, String> {
        let pool = DescriptorPool::decode(bytes).map_err(|e| e.to_string())?;
        let extension = pool
            .get_extension_by_name(POLICY_EXTENSION)
            .ok_or_else(|| format!("the contracts do not define {POLICY_EXTENSION}"))?;
        let mut methods = HashMap::new();
        for service in pool
            .services()
            .filter(|s| s.package_name().starts_with("zen."))
        {
            for method in service.methods() {
                let options = method.options();
                let policy = if options.has_extension(&extension) {
                    match options.get_extension(&extension).as_message() {
                        Some(message) => Some(parse_policy(message)?),
                        None => None,
                    }
                } else {
                    None
                };
                methods.insert(
                    format!("/{}/{}", service.full_name(), method.name()),
                    (method.clone(), policy),
                );
            }
        }
        Ok(Self { methods })
    }

    /// The policy of a gRPC path; `None` when the RPC has none (or is unknown).
    pub fn get(&self, path: &str) -> Option<&MethodPolicy> {
        self.methods
            .get(path)
            .and_then(|(_, policy)| policy.as_ref())
    }

    /// The method's descriptor (its request message, whether it streams).
    pub fn method(&self, path: &str) -> Option<&MethodDescriptor> {
        self.methods.get(path).map(|(method, _)| method)
    }

    /// Every known `zen.*` RPC path.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }
}

fn parse_policy(message: &DynamicMessage) -> Result<MethodPolicy, String> {
    let field = |name: &str| message.get_field_by_name(name);
    let callers = match field("callers").as_deref() {
        Some(Value::List(values)) => values
            .iter()
            .filter_map(Value::as_enum_number)
            .map(|n| CallerKind::from_number(n).ok_or(format!("unknown caller kind {n}")))
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    let min_role = match field("min_role").and_then(|v| v.as_enum_number()) {
        None | Some(0) => None,
        Some(1) => Some(Role::Viewer),
        Some(2) => Some(Role::Approver),
        Some(3) => Some(Role::Admin),
        Some(4) => Some(Role::Owner),
        Some(n) => return Err(format!("unknown role {n}")),
    };
    let flag = |name: &str| field(name).and_then(|v| v.as_bool()).unwrap_or(false);
    Ok(MethodPolicy {
        callers,
        min_role,
        platform_admin: flag("platform_admin"),
        mutating: flag("mutating"),
        audits_own_authentication: flag("audits_own_authentication"),
    })
}

/// Orders roles: viewer < approver < admin < owner.
pub fn rank(role: Role) -> u8 {
    match role {
        Role::Viewer => 1,
        Role::Approver => 2,
        Role::Admin => 3,
        Role::Owner => 4,
    }
}

/// Who is calling, as established by the edge (certificate) and, for people, their token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An operator certificate: a platform admin.
    Operator { name: String },
    /// An internal service acting for itself.
    Service { name: String },
    /// A cluster agent.
    Agent { tenant_id: Uuid, cluster_id: Uuid },
    /// A person; `platform_admin` comes from the database, not the token.
    User { user_id: Uuid, platform_admin: bool },
    /// Nobody we know (public routes only).
    Anonymous,
}

impl Caller {
    /// The caller named by the client certificate alone. People, who present bearer tokens
    /// through the gateway, are identified by the authorization layer on top of this.
    ///
    /// The gateway is a relay, never a principal: a call it makes without a person's token is
    /// an anonymous HTTP client's call, so its service identity lends no rights to anyone.
    pub fn from_context(context: &RequestContext) -> Self {
        match &context.peer {
            Some(PeerIdentity::Service { name }) if name == GATEWAY_IDENTITY => Caller::Anonymous,
            Some(PeerIdentity::Admin { name }) => Caller::Operator { name: name.clone() },
            Some(PeerIdentity::Service { name }) => Caller::Service { name: name.clone() },
            Some(PeerIdentity::Agent {
                tenant_id,
                cluster_id,
            }) => Caller::Agent {
                tenant_id: *tenant_id,
                cluster_id: *cluster_id,
            },
            None => Caller::Anonymous,
        }
    }

    pub fn kind(&self) -> CallerKind {
        match self {
            Caller::Operator { .. } => CallerKind::Operator,
            Caller::Service { .. } => CallerKind::Service,
            Caller::Agent { .. } => CallerKind::Agent,
            Caller::User { .. } => CallerKind::User,
            Caller::Anonymous => CallerKind::Public,
        }
    }

    pub fn is_platform_admin(&self) -> bool {
        matches!(
            self,
            Caller::Operator { .. }
                | Caller::User {
                    platform_admin: true,
                    ..
                }
        )
    }

    /// The user behind the call, if it is a person.
    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Caller::User { user_id, .. } => Some(*user_id),
            _ => None,
        }
    }

    /// `(actor_type, actor_id)` for audit records, as `zen.audit.v1.ActorType` describes
    /// them: certificates are named by their identity URI, people by their user id.
    pub fn actor(&self) -> (&'static str, String) {
        match self {
            Caller::Operator { name } => {
                ("service", PeerIdentity::Admin { name: name.clone() }.uri())
            }
            Caller::Service { name } => (
                "service",
                PeerIdentity::Service { name: name.clone() }.uri(),
            ),
            Caller::Agent { cluster_id, .. } => ("agent", cluster_id.to_string()),
            Caller::User { user_id, .. } => ("user", user_id.to_string()),
            Caller::Anonymous => ("user", String::new()),
        }
    }
}

/// Why a call was refused; the message is safe to return to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    NoPolicy,
    CallerNotAllowed(CallerKind),
    PlatformAdminOnly,
    NotAMember,
    RoleTooLow { needed: Role, has: Role },
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::NoPolicy => write!(f, "this method has no authorization policy"),
            Denial::CallerNotAllowed(kind) => {
                write!(f, "callers of kind {kind:?} may not call this method")
            }
            Denial::PlatformAdminOnly => write!(f, "only platform admins may call this method"),
            Denial::NotAMember => write!(f, "the caller is not a member of this tenant"),
            Denial::RoleTooLow { needed, has } => write!(
                f,
                "this method needs the {needed} role or higher; the caller is {has}"
            ),
        }
    }
}

impl Denial {
    /// The `zen.common.v1.ErrorReason` name of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::NoPolicy | Denial::CallerNotAllowed(_) => "CALLER_NOT_ALLOWED",
            Denial::PlatformAdminOnly => "PLATFORM_ADMIN_REQUIRED",
            Denial::NotAMember => "NOT_A_MEMBER",
            Denial::RoleTooLow { .. } => "ROLE_TOO_LOW",
        }
    }
}

/// The decision for one call. `role` is the caller's role in the addressed tenant, read from
/// the database (for users); the token's claims are never consulted for it.
pub fn decide(
    policy: Option<&MethodPolicy>,
    caller: &Caller,
    role: Option<Role>,
) -> Result<(), Denial> {
    let policy = policy.ok_or(Denial::NoPolicy)?;
    let kind = caller.kind();
    if !policy.callers.contains(&kind) && !policy.callers.contains(&CallerKind::Public) {
        return Err(Denial::CallerNotAllowed(kind));
    }
    if policy.platform_admin && !caller.is_platform_admin() {
        return Err(Denial::PlatformAdminOnly);
    }
    if let (Some(needed), Caller::User { .. }) = (policy.min_role, caller) {
        if caller.is_platform_admin() {
            return Ok(());
        }
        let has = role.ok_or(Denial::NotAMember)?;
        if rank(has) < rank(needed) {
            return Err(Denial::RoleTooLow { needed, has });
        }
    }
    Ok(())
}
