//! The route table: every `google.api.http` binding (and its `additional_bindings`) of every
//! unary or server-streaming method in the descriptor set, with the per-method options the
//! gateway acts on (`zen.common.v1.policy`, `zen.common.v1.http_response`,
//! `zen.common.v1.http_binding`).

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};

use crate::template::PathTemplate;
use crate::GatewayError;

pub(crate) const HTTP_BODY: &str = "google.api.HttpBody";
const HTTP_RULE_EXT: &str = "google.api.http";
const POLICY_EXT: &str = "zen.common.v1.policy";
const HTTP_RESPONSE_EXT: &str = "zen.common.v1.http_response";
const HTTP_BINDING_EXT: &str = "zen.common.v1.http_binding";
pub(crate) const FIELD_BEHAVIOR_EXT: &str = "google.api.field_behavior";
/// `CALLER_KIND_PUBLIC` of `zen.common.v1.CallerKind`.
const CALLER_KIND_PUBLIC: i32 = 1;
/// `HTTP_REQUEST_BINDING_HEADERS` of `zen.common.v1.HttpRequestBinding`.
const BINDING_HEADERS: i32 = 1;

/// A public description of one REST route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// The HTTP method (`GET`, `POST`, ... or a custom kind).
    pub http_method: String,
    /// The path template as written in the rule (`/v1/tenants/{tenant_id}:suspend`).
    pub path_template: String,
    /// The gRPC path called (`/zen.tenancy.v1.TenancyService/SuspendTenant`).
    pub grpc_path: String,
    /// The `body` of the rule: `None`, `Some("*")` or `Some(field)`.
    pub body: Option<String>,
    /// The `response_body` of the rule, if any.
    pub response_body: Option<String>,
    /// True for server-streaming methods (NDJSON, SSE or WebSocket).
    pub server_streaming: bool,
    /// True when `X-Request-Id` is required and idempotent replay applies.
    pub mutating: bool,
    /// True when the method's policy allows only `CALLER_KIND_PUBLIC` callers.
    pub public: bool,
}

/// Where the request body goes.
#[derive(Debug, Clone)]
pub(crate) enum BodyBinding {
    None,
    /// `body: "*"`.
    All,
    /// `body: "field"`.
    Field(FieldDescriptor),
}

#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub info: RouteInfo,
    pub template: PathTemplate,
    pub method: MethodDescriptor,
    pub body: BodyBinding,
    pub response_body: Option<FieldDescriptor>,
    pub redirect_field: Option<FieldDescriptor>,
    /// Extra 2xx statuses the service may choose (`success_statuses` of the response rule).
    pub success_statuses: Vec<u16>,
    /// The success answer holds a secret shown once: never kept for replay.
    pub not_replayable: bool,
    pub headers_field: Option<FieldDescriptor>,
    /// Position in descriptor order (routes are matched most specific first).
    pub index: usize,
}

impl Route {
    /// True when the body is JSON (as opposed to none or a raw `google.api.HttpBody`).
    pub fn json_body(&self) -> bool {
        match &self.body {
            BodyBinding::None => false,
            BodyBinding::All => self.method.input().full_name() != HTTP_BODY,
            BodyBinding::Field(f) => !is_http_body(f),
        }
    }
}

pub(crate) fn is_http_body(field: &FieldDescriptor) -> bool {
    !field.is_list() && matches!(field.kind(), Kind::Message(m) if m.full_name() == HTTP_BODY)
}

/// Reads every binding of the pool.
pub(crate) fn build_routes(pool: &DescriptorPool) -> Result<Vec<Route>, GatewayError> {
    let Some(http_ext) = pool.get_extension_by_name(HTTP_RULE_EXT) else {
        return Ok(Vec::new());
    };
    let policy_ext = pool.get_extension_by_name(POLICY_EXT);
    let response_ext = pool.get_extension_by_name(HTTP_RESPONSE_EXT);
    let binding_ext = pool.get_extension_by_name(HTTP_BINDING_EXT);
    let mut routes = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http_ext) {
                continue;
            }
            if method.is_client_streaming() {
                // Client-streaming and bidi methods have no REST mapping.
                continue;
            }
            let Value::Message(rule) = options.get_extension(&http_ext).into_owned() else {
                continue;
            };
            let (callers, mutating_opt, has_policy) = match &policy_ext {
                Some(ext) if options.has_extension(ext) => {
                    match options.get_extension(ext).as_ref() {
                        Value::Message(p) => (
                            enum_list(p, "callers"),
                            p.get_field_by_name("mutating")
                                .and_then(|v| v.as_bool())
                                .unwrap_or(false),
                            true,
                        ),
                        _ => (Vec::new(), false, false),
                    }
                }
                _ => (Vec::new(), false, false),
            };
            let redirect_field = match &response_ext {
                Some(ext) if options.has_extension(ext) => {
                    match options.get_extension(ext).as_ref() {
                        Value::Message(r) => {
                            let name = string_field(r, "redirect_field");
                            if name.is_empty() {
                                None
                            } else {
                                Some(method.output().get_field_by_name(&name).ok_or_else(|| {
                                invalid(&method, format!("redirect_field `{name}` is not a field of the response"))
                            })?)
                            }
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            let success_statuses: Vec<u16> = match &response_ext {
                Some(ext) if options.has_extension(ext) => {
                    match options.get_extension(ext).as_ref() {
                        Value::Message(r) => match r
                            .get_field_by_name("success_statuses")
                            .map(|v| v.into_owned())
                        {
                            Some(Value::List(list)) => list
                                .iter()
                                .filter_map(Value::as_u32)
                                .map(|s| {
                                    u16::try_from(s)
                                        .ok()
                                        .filter(|s| (200..300).contains(s))
                                        .ok_or_else(|| {
                                            invalid(
                                                &method,
                                                format!("success status {s} is not a 2xx status"),
                                            )
                                        })
                                })
                                .collect::<Result<_, _>>()?,
                            _ => Vec::new(),
                        },
                        _ => Vec::new(),
                    }
                }
                _ => Vec::new(),
            };
            let not_replayable = match &response_ext {
                Some(ext) if options.has_extension(ext) => {
                    match options.get_extension(ext).as_ref() {
                        Value::Message(r) => r
                            .get_field_by_name("not_replayable")
                            .and_then(|v| v.as_bool())
                            .unwrap_or(false),
                        _ => false,
                    }
                }
                _ => false,
            };
            let headers_field = binding_ext.as_ref().and_then(|ext| {
                method.input().fields().find(|f| {
                    let o = f.options();
                    o.has_extension(ext)
                        && o.get_extension(ext).as_enum_number() == Some(BINDING_HEADERS)
                        && f.is_map()
                })
            });
            let mut rules = vec![rule.clone()];
            if let Some(Value::List(extra)) = rule
                .get_field_by_name("additional_bindings")
                .map(|v| v.into_owned())
            {
                for r in extra {
                    if let Value::Message(m) = r {
                        rules.push(m);
                    }
                }
            }
            for rule in rules {
                let route = build_route(
                    &method,
                    &rule,
                    &callers,
                    has_policy,
                    mutating_opt,
                    redirect_field.clone(),
                    headers_field.clone(),
                    routes.len(),
                )?;
                let route = Route {
                    success_statuses: success_statuses.clone(),
                    not_replayable,
                    ..route
                };
                routes.push(route);
            }
        }
    }
    Ok(routes)
}

#[allow(clippy::too_many_arguments)]
fn build_route(
    method: &MethodDescriptor,
    rule: &DynamicMessage,
    callers: &[i32],
    has_policy: bool,
    mutating_opt: bool,
    redirect_field: Option<FieldDescriptor>,
    headers_field: Option<FieldDescriptor>,
    index: usize,
) -> Result<Route, GatewayError> {
    let mut http_method = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        let path = string_field(rule, verb);
        if rule.has_field_by_name(verb) {
            http_method = Some((verb.to_ascii_uppercase(), path));
        }
    }
    if rule.has_field_by_name("custom") {
        if let Some(Value::Message(custom)) =
            rule.get_field_by_name("custom").map(|v| v.into_owned())
        {
            http_method = Some((
                string_field(&custom, "kind").to_ascii_uppercase(),
                string_field(&custom, "path"),
            ));
        }
    }
    let (http_method, path) =
        http_method.ok_or_else(|| invalid(method, "http rule has no pattern".into()))?;
    if http_method.is_empty() || http::Method::from_bytes(http_method.as_bytes()).is_err() {
        return Err(invalid(method, format!("bad HTTP method `{http_method}`")));
    }
    let template = PathTemplate::parse(&path).map_err(|e| invalid(method, e))?;
    let input = method.input();
    for var in &template.variables {
        let field = resolve_path(&input, &var.field_path).map_err(|e| invalid(method, e))?;
        if field.is_list() || field.is_map() || matches!(field.kind(), Kind::Message(_)) {
            return Err(invalid(
                method,
                format!(
                    "path variable `{}` must be a singular scalar field",
                    var.field_path.join(".")
                ),
            ));
        }
    }
    let body_name = string_field(rule, "body");
    let body = match body_name.as_str() {
        "" => BodyBinding::None,
        "*" => BodyBinding::All,
        name => BodyBinding::Field(
            input
                .get_field_by_name(name)
                .ok_or_else(|| invalid(method, format!("body field `{name}` not found")))?,
        ),
    };
    let response_body_name = string_field(rule, "response_body");
    let response_body = if response_body_name.is_empty() {
        None
    } else {
        Some(
            method
                .output()
                .get_field_by_name(&response_body_name)
                .ok_or_else(|| {
                    invalid(
                        method,
                        format!("response_body field `{response_body_name}` not found"),
                    )
                })?,
        )
    };
    let mutating = if has_policy {
        mutating_opt
    } else {
        matches!(http_method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    };
    let public = !callers.is_empty() && callers.iter().all(|c| *c == CALLER_KIND_PUBLIC);
    Ok(Route {
        info: RouteInfo {
            http_method,
            path_template: path,
            grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
            body: (!body_name.is_empty()).then_some(body_name),
            response_body: (!response_body_name.is_empty()).then_some(response_body_name),
            server_streaming: method.is_server_streaming(),
            mutating,
            public,
        },
        template,
        method: method.clone(),
        body,
        response_body,
        redirect_field,
        success_statuses: Vec::new(),
        not_replayable: false,
        headers_field,
        index,
    })
}

fn invalid(method: &MethodDescriptor, message: String) -> GatewayError {
    GatewayError::InvalidRule {
        method: method.full_name().to_owned(),
        message,
    }
}

fn string_field(msg: &DynamicMessage, name: &str) -> String {
    msg.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn enum_list(msg: &DynamicMessage, name: &str) -> Vec<i32> {
    match msg.get_field_by_name(name).map(|v| v.into_owned()) {
        Some(Value::List(values)) => values.iter().filter_map(Value::as_enum_number).collect(),
        _ => Vec::new(),
    }
}

/// Resolves a dotted field path (proto or JSON names) from a message.
pub(crate) fn resolve_path(
    root: &MessageDescriptor,
    path: &[String],
) -> Result<FieldDescriptor, String> {
    let mut desc = root.clone();
    let mut found = None;
    for (i, seg) in path.iter().enumerate() {
        let field = find_field(&desc, seg).ok_or_else(|| {
            format!(
                "`{}` is not a field of {}",
                path.join("."),
                root.full_name()
            )
        })?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => desc = m,
                _ => {
                    return Err(format!(
                        "`{}` does not name a nested message field",
                        path[..=i].join(".")
                    ))
                }
            }
        }
        found = Some(field);
    }
    found.ok_or_else(|| "empty field path".to_owned())
}

/// A field by proto name or JSON name.
pub(crate) fn find_field(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
}
