//! What every service adapter needs: the authorized call (caller, request context, scope,
//! audit records), the one mapping from store errors to gRPC statuses with `google.rpc`
//! details, and conversions between generated and domain types.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use uuid::Uuid;
use zen_store::{
    AuditOutcome, NewAuditRecord, PageRequest, ReadFuture, Role, Scope, Store, StoreError, Tx,
};

use crate::authz::Caller;
use crate::grpc::authorize::Authorized;
use crate::grpc::edge::RequestContext;
use crate::proto::zen::common::v1 as common;

/// The error domain of every `google.rpc.ErrorInfo` Zen sends.
pub const ERROR_DOMAIN: &str = "zen";

/// One authorized call, as the edge and the authorization layer established it.
#[derive(Clone, Debug)]
pub struct Call {
    pub caller: Caller,
    /// The caller's role in the addressed tenant, when the authorization layer resolved one.
    pub role: Option<Role>,
    pub context: RequestContext,
}

impl Call {
    /// Reads the call from the request extensions; a request that did not pass the layers
    /// (a wiring bug) is refused rather than served unauthenticated.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, Status> {
        let authorized = request
            .extensions()
            .get::<Authorized>()
            .ok_or_else(|| Status::internal("the call was not authorized"))?;
        let context = request
            .extensions()
            .get::<RequestContext>()
            .cloned()
            .ok_or_else(|| Status::internal("the call has no request context"))?;
        Ok(Self {
            caller: authorized.caller.clone(),
            role: authorized.role,
            context,
        })
    }

    /// The store scope of this caller inside `tenant_id` (or outside any tenant).
    pub fn scope(&self, tenant_id: Option<Uuid>) -> Scope {
        Scope {
            tenant_id,
            user_id: self.caller.user_id(),
            platform_admin: self.caller.is_platform_admin(),
        }
    }

    /// A read-only transaction in this caller's scope inside `tenant_id` (or none).
    pub async fn read(
        &self,
        store: &Store,
        tenant_id: Option<Uuid>,
    ) -> Result<Box<dyn Tx>, Status> {
        store
            .begin_read(&self.scope(tenant_id))
            .await
            .map_err(|e| store_status(e, ""))
    }

    /// A list page read in this caller's scope inside `tenant_id` (or none), on the read
    /// replica while it is fresh, else on the primary (`Store::read_stale`): for `List*` calls
    /// only, whose callers accept a page a couple of seconds old. Gets, watches and anything a
    /// decision rests on use [`Call::read`] (always the primary), so a create followed by a get
    /// sees the create.
    pub async fn list<T, F>(
        &self,
        store: &Store,
        tenant_id: Option<Uuid>,
        read: F,
    ) -> Result<T, Status>
    where
        T: Send,
        F: for<'t> Fn(&'t mut dyn Tx) -> ReadFuture<'t, T> + Send + Sync,
    {
        store
            .read_stale(&self.scope(tenant_id), read)
            .await
            .map_err(|e| store_status(e, ""))
    }

    /// An audit record of this call, filled with actor and request context.
    pub fn audit(
        &self,
        action: &str,
        resource_type: &str,
        resource_id: impl ToString,
        outcome: AuditOutcome,
        details: serde_json::Value,
    ) -> NewAuditRecord {
        audit_record(
            &self.caller,
            Some(&self.context),
            action,
            resource_type,
            resource_id,
            outcome,
            details,
        )
    }

    /// Runs a mutation (which appends its own success record in its transaction); when it
    /// fails, records the failure in the same chain so refused changes are audited too.
    pub async fn audited<T>(
        &self,
        store: &Store,
        scope: &Scope,
        action: &str,
        resource_type: &str,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let result = work.await;
        if let Err(status) = &result {
            let record = self.audit(
                action,
                resource_type,
                "",
                AuditOutcome::Failure,
                serde_json::json!({ "code": format!("{:?}", status.code()), "message": status.message() }),
            );
            append_audit(store, scope, record, "failed_mutation").await;
        }
        result
    }
}

/// Appends a record of something refused or failed, outside the work's own transaction: the
/// answer is already decided (a refusal stays a refusal), so this never fails the call. A
/// concurrent-append conflict is retried; a record that still cannot be written is logged and
/// counted in `zen_audit_records_lost_total{kind}` so an operator can alert on it.
pub async fn append_audit(
    store: &Store,
    scope: &Scope,
    record: NewAuditRecord,
    kind: &'static str,
) -> bool {
    const ATTEMPTS: u32 = 4;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let write = async {
            let mut tx = store.begin(scope).await?;
            tx.audit().append(record.clone()).await?;
            tx.commit().await
        };
        match write.await {
            Ok(()) => return true,
            Err(error) if error.is_retryable() && attempt < ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(10 << attempt)).await;
            }
            Err(error) => {
                tracing::error!(%error, kind, action = %record.action, "an audit record was lost");
                metrics::counter!("zen_audit_records_lost_total", "kind" => kind).increment(1);
                return false;
            }
        }
    }
}

/// An audit record of `caller`'s action, with the request context when there is one.
pub fn audit_record(
    caller: &Caller,
    context: Option<&RequestContext>,
    action: &str,
    resource_type: &str,
    resource_id: impl ToString,
    outcome: AuditOutcome,
    details: serde_json::Value,
) -> NewAuditRecord {
    let (actor_type, actor_id) = caller.actor();
    let mut record = NewAuditRecord::new(actor_type, action, resource_type, outcome);
    record.actor_id = Some(actor_id).filter(|id| !id.is_empty());
    record.resource_id = Some(resource_id.to_string()).filter(|id| !id.is_empty());
    record.details = details;
    if let Some(context) = context {
        record.request_id = Some(context.request_id.clone());
        record.client_address = context.client_address.map(|a| a.to_string());
        record.user_agent = context.user_agent.clone();
    }
    record
}

/// What a mutation hands back to [`Call::mutate`]: its result, and what the audit record of
/// the change says about it.
pub struct Mutation<T> {
    pub value: T,
    pub resource_id: String,
    pub details: serde_json::Value,
}

impl<T> Mutation<T> {
    pub fn new(value: T, resource_id: impl ToString, details: serde_json::Value) -> Self {
        Self {
            value,
            resource_id: resource_id.to_string(),
            details,
        }
    }
}

/// A unit of work inside one transaction.
pub type Work<'t, T> = Pin<Box<dyn Future<Output = Result<Mutation<T>, Status>> + Send + 't>>;

impl Call {
    /// Runs `work` in a transaction of `scope`, appends the success record of `action` in the
    /// same transaction and commits: the change and its audit record land together or not at
    /// all. A failure is audited too (see [`Call::audited`]).
    pub async fn mutate<T, F>(
        &self,
        store: &Store,
        scope: &Scope,
        action: &str,
        resource_type: &str,
        work: F,
    ) -> Result<T, Status>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> Work<'t, T>,
    {
        self.audited(store, scope, action, resource_type, async {
            let mut tx = store.begin(scope).await.map_err(|e| store_status(e, ""))?;
            let done = work(tx.as_mut()).await?;
            let record = self.audit(
                action,
                resource_type,
                done.resource_id,
                AuditOutcome::Success,
                done.details,
            );
            tx.audit()
                .append(record)
                .await
                .map_err(|e| store_status(e, ""))?;
            tx.commit().await.map_err(|e| store_status(e, ""))?;
            Ok(done.value)
        })
        .await
    }
}

/// Maps a store error to the gRPC status the contracts promise. `field_prefix` turns the
/// store's field names into request paths (`name` -> `cluster.name`).
pub fn store_status(error: StoreError, field_prefix: &str) -> Status {
    match error {
        StoreError::NotFound { what } => Status::with_error_details(
            Code::NotFound,
            format!("{what} not found"),
            ErrorDetails::with_resource_info(what, "", "", "not found or not visible to the caller"),
        ),
        StoreError::AlreadyExists { what } => Status::with_error_details(
            Code::AlreadyExists,
            format!("{what} already exists"),
            ErrorDetails::with_resource_info(what, "", "", "already exists"),
        ),
        StoreError::Conflict { reason } => {
            let mut details = ErrorDetails::with_retry_info(Some(std::time::Duration::from_millis(100)));
            details.set_error_info("CONFLICT", ERROR_DOMAIN, HashMap::new());
            Status::with_error_details(
                Code::Aborted,
                format!("concurrent change, retry: {reason}"),
                details,
            )
        }
        StoreError::VersionMismatch { what, current } => Status::with_error_details(
            Code::Aborted,
            format!("the {what} changed since it was read (current version {current}); read it again and retry"),
            ErrorDetails::with_error_info(
                "VERSION_MISMATCH",
                ERROR_DOMAIN,
                HashMap::from([("current_version".to_owned(), current.to_string())]),
            ),
        ),
        StoreError::Precondition { code, reason } => {
            let mut details = ErrorDetails::with_error_info(code, ERROR_DOMAIN, HashMap::new());
            details.add_precondition_failure_violation(code, "", reason.to_string());
            Status::with_error_details(Code::FailedPrecondition, reason.to_string(), details)
        }
        StoreError::QuotaExceeded { what, limit } => {
            let mut details = ErrorDetails::with_error_info(
                "QUOTA_EXCEEDED",
                ERROR_DOMAIN,
                HashMap::from([("limit".to_owned(), limit.to_string())]),
            );
            details.add_quota_failure_violation(what, format!("the limit is {limit}"));
            Status::with_error_details(
                Code::ResourceExhausted,
                format!("quota exceeded: {what} (limit {limit})"),
                details,
            )
        }
        StoreError::Invalid { field, reason } => {
            let path = if field_prefix.is_empty() || field == "page_token" {
                field.to_owned()
            } else {
                format!("{field_prefix}.{field}")
            };
            invalid(&[(&path, &reason)])
        }
        StoreError::PermissionDenied { reason } => {
            tracing::error!(%reason, "the database refused a scoped statement");
            Status::permission_denied("permission denied")
        }
        StoreError::Migration { reason } => {
            tracing::error!(%reason, "schema not current");
            Status::unavailable("the database schema is not current; retry later")
        }
        error @ (StoreError::Database(_) | StoreError::WritesRefused { .. }) => {
            database_down(&error)
        }
    }
}

/// UNAVAILABLE with a one-second `RetryInfo` (503 + `Retry-After: 1` at the gateway) for a
/// database that cannot be reached; the outage is logged once, not per request.
pub fn database_down(error: &StoreError) -> Status {
    if let Some(reason) = error.write_refusal() {
        return writes_refused(reason, error);
    }
    if error.is_unavailable() {
        crate::outage::DATABASE.failed(error);
    } else {
        tracing::error!(%error, "database error");
    }
    Status::with_error_details(
        Code::Unavailable,
        "the database is unavailable; retry later",
        ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1))),
    )
}

/// UNAVAILABLE for a database that answers but cannot write (disk full, read-only): the
/// caller is told what is wrong and to come back later (503 + `Retry-After: 5`); the operator
/// sees `zen_database_write_refusals_total{reason}` and one log line every 10 s at most.
fn writes_refused(reason: &'static str, error: &StoreError) -> Status {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_LOGGED: AtomicU64 = AtomicU64::new(0);
    metrics::counter!("zen_database_write_refusals_total", "reason" => reason).increment(1);
    let now = chrono::Utc::now().timestamp() as u64;
    let last = LAST_LOGGED.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST_LOGGED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::error!(%error, reason, "the database refuses writes; answering 503 until it accepts them again");
    }
    let message = match reason {
        "full" => "the database has no space left to store this; nothing was stored, retry later",
        "read_only" => "the database is read-only at the moment; nothing was stored, retry later",
        _ => "the database could not use its disk; nothing was stored, retry later",
    };
    Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(5))),
    )
}

/// INVALID_ARGUMENT with one field violation per `(field path, description)`.
pub fn invalid(violations: &[(&str, &str)]) -> Status {
    let fields: Vec<FieldViolation> = violations
        .iter()
        .map(|(field, description)| FieldViolation::new(*field, *description))
        .collect();
    let message = violations
        .iter()
        .map(|(field, description)| format!("{field}: {description}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::with_bad_request(fields);
    details.set_error_info("INVALID_FIELDS", ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// PERMISSION_DENIED with a `zen.common.v1.ErrorReason`.
pub fn denied(reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        Code::PermissionDenied,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
    )
}

/// AIP-158 page request: 0 is the default size (the contract's rules refuse negative sizes).
pub fn page_request(page_size: i32, page_token: &str) -> PageRequest {
    let size = u32::try_from(page_size).unwrap_or(0);
    if page_token.is_empty() {
        PageRequest::first(size)
    } else {
        PageRequest::next(size, page_token)
    }
}

/// JSON to `google.protobuf.Struct`; anything but an object becomes `{"value": …}`.
pub fn json_to_struct(value: serde_json::Value) -> Option<prost_types::Struct> {
    let fields = match value {
        serde_json::Value::Null => return None,
        serde_json::Value::Object(map) => map,
        other => serde_json::Map::from_iter([("value".to_owned(), other)]),
    };
    Some(prost_types::Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    })
}

/// JSON to `google.protobuf.Value`.
pub fn json_to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// `google.protobuf.Value` to JSON (non-finite numbers become null).
pub fn value_to_json(value: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::ListValue(list)) => list.values.into_iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect(),
        ),
    }
}

/// `google.protobuf.Struct` to a JSON object (`{}` when unset).
pub fn struct_to_json(value: Option<prost_types::Struct>) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .map(|s| {
                s.fields
                    .into_iter()
                    .map(|(k, v)| (k, value_to_json(v)))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn opt_timestamp(at: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    at.map(timestamp)
}

/// An optional timestamp field as chrono.
pub fn time_field(
    field: &str,
    value: Option<prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, Status> {
    value
        .map(|t| {
            DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(u32::MAX))
                .ok_or_else(|| invalid(&[(field, "is not a valid time")]))
        })
        .transpose()
}

/// A duration as chrono: absent or zero is `default`, longer than `max` is shortened to `max`
/// (as AIP-158 does with page sizes: the response states what was applied). The contract's
/// rules refuse negative durations.
pub fn duration_field(
    field: &str,
    value: Option<&prost_types::Duration>,
    default: chrono::Duration,
    max: chrono::Duration,
) -> Result<chrono::Duration, Status> {
    let Some(value) = value else {
        return Ok(default);
    };
    if value.seconds < 0 || value.nanos < 0 {
        return Err(crate::grpc::validate::unchecked(field));
    }
    // Seconds beyond chrono's range are longer than any maximum.
    let duration = chrono::Duration::try_seconds(value.seconds)
        .map(|d| d + chrono::Duration::nanoseconds(i64::from(value.nanos)))
        .unwrap_or(max);
    if duration.is_zero() {
        return Ok(default);
    }
    Ok(duration.min(max))
}

pub fn role_to_proto(role: Role) -> common::Role {
    match role {
        Role::Viewer => common::Role::Viewer,
        Role::Approver => common::Role::Approver,
        Role::Admin => common::Role::Admin,
        Role::Owner => common::Role::Owner,
    }
}

/// A required role field.
pub fn role_field(field: &str, value: i32) -> Result<Role, Status> {
    match common::Role::try_from(value) {
        Ok(common::Role::Viewer) => Ok(Role::Viewer),
        Ok(common::Role::Approver) => Ok(Role::Approver),
        Ok(common::Role::Admin) => Ok(Role::Admin),
        Ok(common::Role::Owner) => Ok(Role::Owner),
        // The contract's rules (required, enum.defined_only) refuse both.
        Ok(common::Role::Unspecified) | Err(_) => Err(crate::grpc::validate::unchecked(field)),
    }
}

/// A secret for the caller to keep: `<prefix>.<tenant-id>.<64 hex chars of randomness>`.
/// The tenant id lets the holder's later call be scoped before the secret is looked up; only
/// the secret's hash is stored.
pub fn tenant_secret(prefix: &str, tenant_id: Uuid) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    format!("{prefix}.{tenant_id}.{}", hex::encode(bytes))
}

/// The tenant id inside a secret made by [`tenant_secret`], if it is well formed.
pub fn tenant_of_secret(prefix: &str, secret: &str) -> Option<Uuid> {
    let mut parts = secret.splitn(3, '.');
    if parts.next()? != prefix {
        return None;
    }
    let tenant = Uuid::parse_str(parts.next()?).ok()?;
    let random = parts.next()?;
    (random.len() == 64 && random.bytes().all(|b| b.is_ascii_hexdigit())).then_some(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_carry_their_tenant_and_nothing_else_parses() {
        let tenant = Uuid::new_v4();
        let secret = tenant_secret("zbt", tenant);
        assert_eq!(tenant_of_secret("zbt", &secret), Some(tenant));
        assert_eq!(tenant_of_secret("zinv", &secret), None);
        assert_eq!(tenant_of_secret("zbt", "zbt.nope.00"), None);
        assert_ne!(secret, tenant_secret("zbt", tenant));
    }

    #[test]
    fn store_errors_keep_their_meaning_at_the_edge() {
        let status = store_status(
            StoreError::Invalid {
                field: "name",
                reason: "must be a DNS label".into(),
            },
            "cluster",
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad_request = status.get_details_bad_request().unwrap();
        assert_eq!(bad_request.field_violations[0].field, "cluster.name");

        let status = store_status(
            StoreError::VersionMismatch {
                what: "cluster",
                current: 7,
            },
            "",
        );
        assert_eq!(status.code(), Code::Aborted);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "VERSION_MISMATCH");
        assert_eq!(info.metadata["current_version"], "7");
    }
}
