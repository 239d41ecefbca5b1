//! RFC 9457 problem details, and the gRPC status to HTTP mapping (grpc-gateway's table).

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use prost_reflect::{Kind, MessageDescriptor};
use serde::Serialize;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Base of the `type` URI of every problem.
pub const PROBLEM_TYPE_BASE: &str = "https://zen.dev/problems/";
/// Content type of problem documents.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
const GENERIC_DETAIL: &str = "The server failed to process the request. Retrying may help; if the problem persists, contact support with the request id.";

/// One field-level error.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// Field path in JSON (lowerCamelCase) spelling, e.g. `thing.parts[0].name`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An RFC 9457 problem document plus the headers that go with it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// `https://zen.dev/problems/<reason-or-code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary (the HTTP reason phrase).
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Human-readable explanation.
    pub detail: String,
    /// The request id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// gRPC code name, e.g. `INVALID_ARGUMENT`.
    pub code: String,
    /// `google.rpc.ErrorInfo` reason, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `google.rpc.ErrorInfo` metadata, if any.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Field violations (`google.rpc.BadRequest`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds for `Retry-After`, if any.
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// `Allow` header for 405.
    #[serde(skip)]
    pub allow: Option<String>,
    /// The IETF `RateLimit-Policy` and `RateLimit` field values of a rate-limited request
    /// (draft-ietf-httpapi-ratelimit-headers), from the ErrorInfo's metadata.
    #[serde(skip)]
    pub rate_limit: Option<(String, String)>,
}

impl Problem {
    /// A problem for a gRPC code with a detail text.
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        let status = http_status(code);
        Self {
            type_uri: format!("{PROBLEM_TYPE_BASE}{}", kebab(code_name(code))),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            instance: String::new(),
            code: code_name(code).to_owned(),
            reason: None,
            metadata: Default::default(),
            errors: Vec::new(),
            retry_after: None,
            allow: None,
            rate_limit: None,
        }
    }

    /// Sets the HTTP status independently of the gRPC code (413, 415, 405, 404 ...).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status.as_u16();
        self.title = status.canonical_reason().unwrap_or("Error").to_owned();
        self
    }

    /// Sets the ErrorInfo reason (and the `type` URI derived from it).
    pub fn with_reason(mut self, reason: &str) -> Self {
        self.type_uri = format!("{PROBLEM_TYPE_BASE}{}", kebab(reason));
        self.reason = Some(reason.to_owned());
        self
    }

    /// Sets the problem `type` slug without a reason.
    pub fn with_type(mut self, slug: &str) -> Self {
        self.type_uri = format!("{PROBLEM_TYPE_BASE}{slug}");
        self
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn with_instance(mut self, request_id: &str) -> Self {
        self.instance = request_id.to_owned();
        self
    }

    /// Builds the problem for a gRPC status, reading its `google.rpc` details.
    /// `request` names the request message so violation paths get their JSON spelling.
    pub fn from_status(status: &Status, request: Option<&MessageDescriptor>) -> Self {
        let code = status.code();
        let detail = match code {
            Code::Internal | Code::Unknown | Code::DataLoss => GENERIC_DETAIL.to_owned(),
            _ if status.message().is_empty() => http_status(code)
                .canonical_reason()
                .unwrap_or("Error")
                .to_owned(),
            _ => status.message().to_owned(),
        };
        let mut problem = Problem::new(code, detail);
        if let Some(info) = status.get_details_error_info() {
            if !info.reason.is_empty() {
                problem = problem.with_reason(&info.reason);
            }
            // Reasons that name an HTTP condition no gRPC code has: a service that takes raw
            // HTTP bodies (webhooks) refuses a media type or a size with them.
            match info.reason.as_str() {
                "UNSUPPORTED_MEDIA_TYPE" => {
                    problem = problem.with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
                }
                "PAYLOAD_TOO_LARGE" => problem = problem.with_status(StatusCode::PAYLOAD_TOO_LARGE),
                _ => {}
            }
            // A rate limit or a quota (RATE_LIMITED, EVENT_QUOTA_EXCEEDED) states itself.
            if let (Some(policy), Some(state)) = (
                info.metadata.get("ratelimit_policy"),
                info.metadata.get("ratelimit"),
            ) {
                problem.rate_limit = Some((policy.clone(), state.clone()));
            }
            if !matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
                problem.metadata = info.metadata.into_iter().collect();
            }
        }
        if let Some(bad) = status.get_details_bad_request() {
            problem.errors = bad
                .field_violations
                .into_iter()
                .map(|v| FieldError {
                    field: json_field_path(request, &v.field),
                    message: v.description,
                })
                .collect();
        }
        if matches!(code, Code::ResourceExhausted | Code::Unavailable) {
            let delay = status
                .get_details_retry_info()
                .and_then(|r| r.retry_delay)
                .map(ceil_secs)
                .unwrap_or(1);
            problem.retry_after = Some(delay.max(1));
        }
        problem
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status_code(), self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        insert_rate_limit(headers, self.rate_limit.as_ref());
        if let Some(allow) = &self.allow {
            if let Ok(v) = HeaderValue::from_str(allow) {
                headers.insert(header::ALLOW, v);
            }
        }
        response
    }
}

/// The IETF `RateLimit-Policy` and `RateLimit` headers of a rate-limited answer.
pub(crate) fn insert_rate_limit(
    headers: &mut http::HeaderMap,
    rate_limit: Option<&(String, String)>,
) {
    if let Some((policy, state)) = rate_limit {
        if let (Ok(policy), Ok(state)) =
            (HeaderValue::from_str(policy), HeaderValue::from_str(state))
        {
            headers.insert("ratelimit-policy", policy);
            headers.insert("ratelimit", state);
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// grpc-gateway's `HTTPStatusFromCode`.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The canonical upper-case name of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn kebab(s: &str) -> String {
    s.to_ascii_lowercase().replace('_', "-")
}

/// Converts a proto field path (`thing.main_part.display_name`, `parts[0].name`) into its
/// JSON spelling, following the request message's fields where they are known and
/// lowerCamel-casing the rest.
pub fn json_field_path(root: Option<&MessageDescriptor>, path: &str) -> String {
    let mut desc = root.cloned();
    let mut out = Vec::new();
    for seg in path.split('.') {
        let (name, suffix) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        let field = desc
            .as_ref()
            .and_then(|d| crate::routes::find_field(d, name));
        let json = match &field {
            Some(f) => f.json_name().to_owned(),
            None => lower_camel(name),
        };
        desc = match field.map(|f| f.kind()) {
            Some(Kind::Message(m)) => {
                if m.is_map_entry() {
                    match m.map_entry_value_field().kind() {
                        Kind::Message(v) => Some(v),
                        _ => None,
                    }
                } else {
                    Some(m)
                }
            }
            _ => None,
        };
        out.push(format!("{json}{suffix}"));
    }
    out.join(".")
}

/// `snake_case` to `lowerCamelCase`, as protoc derives JSON names.
pub fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(http_status(Code::Aborted), StatusCode::CONFLICT);
        assert_eq!(http_status(Code::OutOfRange), StatusCode::BAD_REQUEST);
        assert_eq!(
            http_status(Code::DataLoss),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn camel() {
        assert_eq!(lower_camel("display_name"), "displayName");
        assert_eq!(
            json_field_path(None, "main_part.display_name[0]"),
            "mainPart.displayName[0]"
        );
    }
}
