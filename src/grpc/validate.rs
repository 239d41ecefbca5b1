//! The one place a request is checked against its contract: the `buf.validate` rules written on
//! every request message in `proto/` (UUIDs, required fields, lengths, patterns, ranges, enum
//! values, oneofs, CEL), evaluated from the descriptors by `prost-protovalidate`, plus the two
//! rules that hold for every text of every message (no NUL, at most 64 Ki characters).
//!
//! The [`super::authorize`] layer calls [`check`] once the caller is identified and before any
//! policy, store or handler sees the request; the agent stream checks its hello, its reports
//! and each event of a batch with [`broken_rules`] (an event is refused alone). A violation is
//! INVALID_ARGUMENT with one `google.rpc.BadRequest` field violation per broken rule (the
//! gateway turns it into a 400 problem document with `errors[]`). Handlers
//! therefore never re-check what a rule states: they convert (an id the rules proved a UUID is
//! parsed with [`id`]) and apply the product's rules that need state.

use std::collections::HashMap;
use std::sync::LazyLock;

use prost_protovalidate::{Error, Validator};
use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};
use tonic::Status;
use uuid::Uuid;

use super::services::support::invalid;
use crate::proto::DESCRIPTOR_POOL as POOL;

/// Compiled rules, cached per message type on first use.
static VALIDATOR: LazyLock<Validator> = LazyLock::new(Validator::new);

/// The longest text any request field may carry (a PEM CSR, a description, a filter); the
/// contracts bound most fields more tightly.
const MAX_TEXT_CHARS: usize = 64 * 1024;

/// The `message` of every CEL rule in the contracts, by rule id. The validator leaves a
/// message-level rule's message out of its violation; the contract's words are put back.
static CEL_MESSAGES: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
    let mut out = HashMap::new();
    let mut collect = |options: &DynamicMessage, extension: &str| {
        let Some(extension) = POOL.get_extension_by_name(extension) else {
            return;
        };
        if !options.has_extension(&extension) {
            return;
        }
        let rules = options.get_extension(&extension);
        let cel = rules.as_message().and_then(|r| r.get_field_by_name("cel"));
        for rule in cel.as_ref().and_then(|c| c.as_list()).unwrap_or_default() {
            let text = |name: &str| {
                rule.as_message()
                    .and_then(|r| r.get_field_by_name(name))
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            };
            let (id, message) = (text("id"), text("message"));
            if !id.is_empty() && !message.is_empty() {
                out.insert(id, message);
            }
        }
    };
    for message in POOL
        .all_messages()
        .filter(|m| m.full_name().starts_with("zen."))
    {
        collect(&message.options(), "buf.validate.message");
        for field in message.fields() {
            collect(&field.options(), "buf.validate.field");
        }
    }
    out
});

/// Checks `message` against its contract's rules; INVALID_ARGUMENT naming every broken rule.
pub fn check(message: &DynamicMessage) -> Result<(), Status> {
    let violations = violations(message)?;
    if violations.is_empty() {
        return Ok(());
    }
    let pairs: Vec<(&str, &str)> = violations
        .iter()
        .map(|(field, description)| (field.as_str(), description.as_str()))
        .collect();
    Err(invalid(&pairs))
}

/// The answer when a handler meets a value its contract's rules should have refused: the
/// message lost a rule. INTERNAL, logged, never a guess.
pub fn unchecked(field: &str) -> Status {
    tracing::error!(
        field,
        "a request reached its handler with a value its contract should have refused"
    );
    Status::internal(format!(
        "{field} reached the handler unchecked: the contract lacks a rule for it"
    ))
}

/// `(field path, description)` of every rule `message` breaks; INTERNAL when a rule cannot run.
fn violations(message: &DynamicMessage) -> Result<Vec<(String, String)>, Status> {
    let mut violations = texts(message);
    match VALIDATOR.validate(message) {
        Ok(()) => {}
        Err(Error::Validation(error)) => {
            for violation in error.violations() {
                let description = if !violation.message().is_empty() {
                    violation.message().to_owned()
                } else if let Some(message) = CEL_MESSAGES.get(violation.rule_id()) {
                    message.clone()
                } else {
                    format!("breaks the rule {}", violation.rule_id())
                };
                violations.push((violation.field_path(), description));
            }
        }
        // A rule that does not compile or evaluate is a defect of the contracts (the unit tests
        // compile every message's rules), never the caller's fault.
        Err(error) => {
            tracing::error!(%error, message = message.descriptor().full_name(), "a validation rule failed to run");
            return Err(Status::internal(
                "a validation rule of the contract failed to run",
            ));
        }
    }
    Ok(violations)
}

/// The rules a typed message (named `full_name` in the contracts) breaks, one sentence per
/// rule joined with "; " (`None`: it keeps them all). For the items of a stream that are
/// refused one by one (an agent's events) rather than failing the call.
pub fn broken_rules(full_name: &str, message: &impl prost::Message) -> Option<String> {
    let Some(descriptor) = POOL.get_message_by_name(full_name) else {
        // A name the contracts lack would check nothing: refuse instead.
        return Some(format!("{full_name} is not a message of the contracts"));
    };
    let dynamic = match DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()) {
        Ok(dynamic) => dynamic,
        Err(error) => return Some(format!("does not decode as {full_name}: {error}")),
    };
    match violations(&dynamic) {
        Ok(found) if found.is_empty() => None,
        Ok(found) => Some(
            found
                .iter()
                .map(|(field, description)| format!("{field}: {description}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Err(status) => Some(status.message().to_owned()),
    }
}

/// A UUID that the contract's `string.uuid` rule already proved well formed.
pub fn id(field: &str, value: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(value).map_err(|_| unchecked(field))
}

/// A message field the contract marks `required`.
pub fn required<T>(field: &str, value: Option<T>) -> Result<T, Status> {
    value.ok_or_else(|| unchecked(field))
}

/// [`id`] of an optional id: empty means absent.
pub fn optional_id(field: &str, value: &str) -> Result<Option<Uuid>, Status> {
    if value.is_empty() {
        Ok(None)
    } else {
        id(field, value).map(Some)
    }
}

/// Strings (at any depth: nested messages, lists, maps and their keys) holding a NUL, which
/// PostgreSQL cannot store or compare, or longer than [`MAX_TEXT_CHARS`].
fn texts(message: &DynamicMessage) -> Vec<(String, String)> {
    fn walk(message: &DynamicMessage, path: &str, out: &mut Vec<(String, String)>) {
        for (field, value) in message.fields() {
            let name = if path.is_empty() {
                field.name().to_owned()
            } else {
                format!("{path}.{}", field.name())
            };
            value_texts(value, &name, out);
        }
    }
    fn value_texts(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::String(text) => {
                if text.contains('\0') {
                    out.push((path.to_owned(), "must not contain NUL characters".into()));
                } else if text.len() > MAX_TEXT_CHARS && text.chars().count() > MAX_TEXT_CHARS {
                    out.push((path.to_owned(), "must be at most 65536 characters".into()));
                }
            }
            Value::Message(inner) => walk(inner, path, out),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    value_texts(item, &format!("{path}[{i}]"), out);
                }
            }
            Value::Map(entries) => {
                for (key, item) in entries {
                    let key = match key {
                        MapKey::String(k) => {
                            if k.contains('\0') {
                                out.push((
                                    path.to_owned(),
                                    "keys must not contain NUL characters".into(),
                                ));
                            }
                            k.clone()
                        }
                        other => format!("{other:?}"),
                    };
                    value_texts(item, &format!("{path}[{key}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(message, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

    use super::*;

    fn pool() -> DescriptorPool {
        POOL.clone()
    }

    fn request_messages(pool: &DescriptorPool) -> Vec<MessageDescriptor> {
        let mut out: Vec<MessageDescriptor> = pool
            .services()
            .filter(|s| s.full_name().starts_with("zen."))
            .flat_map(|s| {
                s.methods()
                    // The agent stream's messages are the agent protocol's, checked per event.
                    .filter(|m| !m.is_client_streaming())
                    .map(|m| m.input())
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.full_name().cmp(b.full_name()));
        out.dedup_by(|a, b| a.full_name() == b.full_name());
        out
    }

    /// Every rule compiles (CEL included): validating an empty message of each type of the
    /// contracts runs the compiler over all of them, and may only report violations.
    #[test]
    fn every_rule_compiles() {
        let pool = pool();
        for message in pool
            .all_messages()
            .filter(|m| m.full_name().starts_with("zen."))
        {
            match VALIDATOR.validate(&DynamicMessage::new(message.clone())) {
                Ok(()) | Err(Error::Validation(_)) => {}
                Err(error) => panic!("{}: {error}", message.full_name()),
            }
        }
    }

    /// The handlers parse ids with [`id`], which trusts the contract: every `*_id` string a
    /// request can set (at any depth; OUTPUT_ONLY fields are ignored) must carry `string.uuid`,
    /// or a malformed id would be a 500.
    #[test]
    fn every_request_id_field_states_its_uuid_rule() {
        let pool = pool();
        let rule = pool
            .get_extension_by_name("buf.validate.field")
            .expect("buf.validate is in the descriptor set");
        let behavior = pool
            .get_extension_by_name("google.api.field_behavior")
            .expect("field_behavior is in the descriptor set");
        const OUTPUT_ONLY: u32 = 3;
        let output_only = |field: &prost_reflect::FieldDescriptor| {
            let options = field.options();
            options.has_extension(&behavior)
                && options.get_extension(&behavior).as_list().is_some_and(|l| {
                    l.iter()
                        .any(|v| v.as_enum_number() == Some(OUTPUT_ONLY as i32))
                })
        };
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = request_messages(&pool);
        while let Some(message) = stack.pop() {
            if !seen.insert(message.full_name().to_owned()) {
                continue;
            }
            for field in message.fields() {
                if output_only(&field) {
                    continue;
                }
                if let Kind::Message(inner) = field.kind() {
                    if inner.full_name().starts_with("zen.") {
                        stack.push(inner);
                    }
                    continue;
                }
                let name = field.name();
                let not_an_id = matches!(
                    name,
                    // Free text: audit filters name actors and resources of any kind.
                    "request_id" | "actor_id" | "resource_id"
                ) || !name.ends_with("_id");
                if not_an_id || field.kind() != Kind::String {
                    continue;
                }
                let options = field.options();
                let has_uuid = options.has_extension(&rule) && {
                    let rules = options.get_extension(&rule);
                    let string = rules
                        .as_message()
                        .and_then(|r| r.get_field_by_name("string"));
                    let uuid = string
                        .as_ref()
                        .and_then(|s| s.as_message())
                        .and_then(|s| s.get_field_by_name("uuid"));
                    uuid.and_then(|u| u.as_bool()) == Some(true)
                };
                if !has_uuid {
                    missing.push(field.full_name().to_owned());
                }
            }
        }
        assert!(
            missing.is_empty(),
            "id fields without string.uuid: {missing:#?}"
        );
    }

    /// The typed messages the agent stream checks are named right (an unknown name would
    /// check nothing): empty ones break their required rules.
    #[test]
    fn the_agent_protocol_messages_are_checked_by_their_names() {
        use crate::proto::zen::ingest::v1 as pb;
        for broken in [
            broken_rules("zen.ingest.v1.AgentEvent", &pb::AgentEvent::default()),
            broken_rules("zen.ingest.v1.AgentHello", &pb::AgentHello::default()),
            broken_rules(
                "zen.ingest.v1.RemediationReport",
                &pb::RemediationReport::default(),
            ),
        ] {
            assert!(broken.is_some_and(|b| b.contains("required")));
        }
    }

    /// A cross-field (CEL) rule on a message answers with the contract's own words.
    #[test]
    fn a_broken_cel_rule_says_what_its_contract_says() {
        let pool = pool();
        let message = pool
            .get_message_by_name("zen.ingest.v1.WebhookVerification")
            .expect("message");
        let mut verification = DynamicMessage::new(message);
        verification.set_field_by_name("scheme", Value::EnumNumber(7)); // GENERIC_HMAC
        let status = check(&verification).expect_err("refused");
        assert!(
            status
                .message()
                .contains("generic_hmac is required with WEBHOOK_SCHEME_GENERIC_HMAC"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn a_broken_rule_names_its_field_and_nul_is_refused_everywhere() {
        let pool = pool();
        let message = pool
            .get_message_by_name("zen.tenancy.v1.GetClusterRequest")
            .expect("message");
        let mut request = DynamicMessage::new(message);
        request.set_field_by_name("tenant_id", Value::String("not-a-uuid".into()));
        request.set_field_by_name("cluster_id", Value::String("a\0b".into()));
        let status = check(&request).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("tenant_id"),
            "{}",
            status.message()
        );
        assert!(
            status
                .message()
                .contains("cluster_id: must not contain NUL"),
            "{}",
            status.message()
        );
    }
}
