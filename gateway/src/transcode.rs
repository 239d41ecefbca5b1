//! HTTP request -> request message (path, query, body, headers), input discipline
//! (OUTPUT_ONLY cleared, REQUIRED present, enums known), and response message -> HTTP body.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use http::HeaderMap;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MapKey,
    MessageDescriptor, ReflectMessage, SerializeOptions, Value,
};
use serde_json::Value as Json;
use tonic::Code;

use crate::problem::{json_field_path, FieldError, Problem};
use crate::routes::{find_field, BodyBinding, Route, FIELD_BEHAVIOR_EXT, HTTP_BODY};
use crate::template::Captures;

/// `google.api.FieldBehavior` values the gateway acts on.
const REQUIRED: i32 = 2;
const OUTPUT_ONLY: i32 = 3;
const IMMUTABLE: i32 = 5;

/// Field behaviours of every field of the pool, by field full name.
#[derive(Debug, Default)]
pub(crate) struct Behaviors {
    required: HashSet<String>,
    output_only: HashSet<String>,
    immutable: HashSet<String>,
}

impl Behaviors {
    pub fn from_pool(pool: &DescriptorPool) -> Self {
        let mut out = Behaviors::default();
        let Some(ext) = pool.get_extension_by_name(FIELD_BEHAVIOR_EXT) else {
            return out;
        };
        for message in pool.all_messages() {
            for field in message.fields() {
                let options = field.options();
                if !options.has_extension(&ext) {
                    continue;
                }
                let values: Vec<i32> = match options.get_extension(&ext).as_ref() {
                    Value::List(list) => list.iter().filter_map(Value::as_enum_number).collect(),
                    Value::EnumNumber(n) => vec![*n],
                    _ => Vec::new(),
                };
                if values.contains(&REQUIRED) {
                    out.required.insert(field.full_name().to_owned());
                }
                if values.contains(&OUTPUT_ONLY) {
                    out.output_only.insert(field.full_name().to_owned());
                }
                if values.contains(&IMMUTABLE) {
                    out.immutable.insert(field.full_name().to_owned());
                }
            }
        }
        out
    }

    pub fn is_required(&self, field: &FieldDescriptor) -> bool {
        self.required.contains(field.full_name())
    }

    pub fn is_output_only(&self, field: &FieldDescriptor) -> bool {
        self.output_only.contains(field.full_name())
    }

    pub fn is_immutable(&self, field: &FieldDescriptor) -> bool {
        self.immutable.contains(field.full_name())
    }
}

/// What the request offers to fill the message with.
pub(crate) struct Input<'a> {
    pub captures: Captures,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

fn invalid(errors: Vec<FieldError>) -> Problem {
    let detail = if errors.len() == 1 {
        format!("invalid field `{}`: {}", errors[0].field, errors[0].message)
    } else {
        format!("{} invalid fields", errors.len())
    };
    Problem::new(Code::InvalidArgument, detail)
        .with_reason("INVALID_FIELDS")
        .with_errors(errors)
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Builds and validates the request message of a route.
pub(crate) fn build_request(
    route: &Route,
    input: Input<'_>,
    behaviors: &Behaviors,
) -> Result<DynamicMessage, Problem> {
    let desc = route.method.input();
    let content_type = input
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let mut msg = match &route.body {
        BodyBinding::All if desc.full_name() == HTTP_BODY => {
            http_body(&desc, &content_type, input.body.clone())
        }
        BodyBinding::All => parse_json(&desc, &input.body, None, route)?,
        BodyBinding::Field(f) if crate::routes::is_http_body(f) => {
            let Kind::Message(body_desc) = f.kind() else {
                unreachable!("is_http_body checked the kind")
            };
            let mut msg = DynamicMessage::new(desc.clone());
            msg.set_field(
                f,
                Value::Message(http_body(&body_desc, &content_type, input.body.clone())),
            );
            msg
        }
        BodyBinding::Field(f) => parse_json(&desc, &input.body, Some(f), route)?,
        BodyBinding::None => DynamicMessage::new(desc.clone()),
    };

    let mut errors = Vec::new();
    // Path variables win over anything in the body.
    let mut bound: Vec<Vec<u32>> = Vec::new();
    for (path, value) in &input.captures {
        match resolve_chain(&desc, path) {
            Ok(chain) => {
                bound.push(chain.iter().map(FieldDescriptor::number).collect());
                if let Err(e) =
                    set_from_strings(&mut msg, &chain, std::slice::from_ref(value), route)
                {
                    errors.push(field_error(json_chain(&chain), e));
                }
            }
            Err(e) => errors.push(field_error(path.join("."), e)),
        }
    }

    // Query parameters fill whatever the path and body do not bind.
    if let Some(query) = input.query.filter(|q| !q.is_empty()) {
        let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match grouped.iter_mut().find(|(key, _)| *key == k) {
                Some((_, values)) => values.push(v.into_owned()),
                None => grouped.push((k.into_owned(), vec![v.into_owned()])),
            }
        }
        for (key, values) in grouped {
            let segments: Vec<String> = key.split('.').map(str::to_owned).collect();
            let chain = match resolve_chain(&desc, &segments) {
                Ok(chain) => chain,
                Err(_) => {
                    errors.push(field_error(key.clone(), "unknown query parameter"));
                    continue;
                }
            };
            let numbers: Vec<u32> = chain.iter().map(FieldDescriptor::number).collect();
            let body_bound = match &route.body {
                BodyBinding::All => true,
                BodyBinding::Field(f) => numbers[0] == f.number(),
                BodyBinding::None => false,
            };
            if body_bound
                || bound
                    .iter()
                    .any(|b| numbers.starts_with(b) || b.starts_with(&numbers))
            {
                errors.push(field_error(
                    json_chain(&chain),
                    "bound by the path or the body; not accepted as a query parameter",
                ));
                continue;
            }
            if let Err(e) = set_from_strings(&mut msg, &chain, &values, route) {
                errors.push(field_error(json_chain(&chain), e));
            }
        }
    }

    if let Some(field) = &route.headers_field {
        let mut map: HashMap<MapKey, Value> = HashMap::new();
        for name in input.headers.keys() {
            let joined = input
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            map.insert(
                MapKey::String(name.as_str().to_owned()),
                Value::String(joined),
            );
        }
        msg.set_field(field, Value::Map(map));
    }

    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    mask_from_body(&mut msg, route, &input.body, behaviors);
    clear_output_only(&mut msg, behaviors);
    // AIP-134: an update with a field mask is partial, so the resource's own REQUIRED fields
    // (often IMMUTABLE too) are not demanded again; the request's top-level ones still are.
    let partial_update = msg
        .descriptor()
        .get_field_by_name("update_mask")
        .is_some_and(|f| matches!(f.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask"));
    check(&msg, "", behaviors, !partial_update, &mut errors);
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    Ok(msg)
}

/// A PATCH that names no `update_mask` changes the fields its JSON body names, as
/// grpc-gateway does: the mask is built from the body object's top-level keys, so a value
/// that is also proto3's default (`false`, `0`, `""`) is still applied. Fields that cannot be
/// updated (OUTPUT_ONLY, IMMUTABLE) and the optimistic-concurrency `version`/`etag` are left
/// out, so sending back a whole resource read earlier works.
fn mask_from_body(msg: &mut DynamicMessage, route: &Route, body: &[u8], behaviors: &Behaviors) {
    if route.info.http_method != "PATCH" {
        return;
    }
    let BodyBinding::Field(resource_field) = &route.body else {
        return;
    };
    let Kind::Message(resource) = resource_field.kind() else {
        return;
    };
    let Some(mask_field) = msg.descriptor().get_field_by_name("update_mask") else {
        return;
    };
    if !matches!(mask_field.kind(), Kind::Message(m) if m.full_name() == FIELD_MASK)
        || msg.has_field(&mask_field)
    {
        return;
    }
    let Ok(Json::Object(object)) = serde_json::from_slice::<Json>(body) else {
        return;
    };
    let paths: Vec<Value> = object
        .keys()
        .filter_map(|key| {
            resource
                .fields()
                .find(|f| f.json_name() == key || f.name() == key)
        })
        .filter(|f| {
            !behaviors.is_output_only(f)
                && !behaviors.is_immutable(f)
                && !matches!(f.name(), "version" | "etag")
        })
        .map(|f| Value::String(f.name().to_owned()))
        .collect();
    if paths.is_empty() {
        return;
    }
    let Kind::Message(mask_desc) = mask_field.kind() else {
        return;
    };
    let mut mask = DynamicMessage::new(mask_desc);
    mask.set_field_by_name("paths", Value::List(paths));
    msg.set_field(&mask_field, Value::Message(mask));
}

fn http_body(desc: &MessageDescriptor, content_type: &str, data: Bytes) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    msg.set_field_by_name("content_type", Value::String(content_type.to_owned()));
    msg.set_field_by_name("data", Value::Bytes(data));
    msg
}

/// Parses a JSON body into the request message (`body: "*"`) or into one of its fields.
fn parse_json(
    desc: &MessageDescriptor,
    body: &[u8],
    field: Option<&FieldDescriptor>,
    route: &Route,
) -> Result<DynamicMessage, Problem> {
    let json: Json = if body.iter().all(u8::is_ascii_whitespace) {
        Json::Object(Default::default())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            Problem::new(
                Code::InvalidArgument,
                format!("the request body is not valid JSON: {e}"),
            )
            .with_reason("INVALID_FIELDS")
        })?
    };
    let mut json = match field {
        None => json,
        Some(f) => {
            let mut obj = serde_json::Map::new();
            obj.insert(f.name().to_owned(), json);
            Json::Object(obj)
        }
    };
    let mut errors = Vec::new();
    normalize_json_masks(desc, &mut json, "", route, &mut errors);
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(json, &mut track);
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(desc.clone(), de, &options).map_err(|e| {
        let path = track.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.to_string();
        let (field, message) = match message
            .strip_prefix("unrecognized field name '")
            .and_then(|rest| rest.strip_suffix('\''))
        {
            Some(name) => (
                if path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                },
                "unknown field".to_owned(),
            ),
            None => (path, message),
        };
        invalid(vec![field_error(
            json_field_path(Some(desc), &field),
            message,
        )])
    })
}

/// Resolves a dotted path into the chain of fields; every link but the last must be a singular
/// message.
fn resolve_chain(
    desc: &MessageDescriptor,
    path: &[String],
) -> Result<Vec<FieldDescriptor>, String> {
    let mut chain = Vec::with_capacity(path.len());
    let mut current = desc.clone();
    for (i, seg) in path.iter().enumerate() {
        let field = find_field(&current, seg)
            .ok_or_else(|| format!("`{}` is not a field", path[..=i].join(".")))?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() && !is_scalar_wkt(&m) => {
                    current = m
                }
                _ => return Err(format!("`{}` is not a message field", path[..=i].join("."))),
            }
        }
        chain.push(field);
    }
    Ok(chain)
}

fn json_chain(chain: &[FieldDescriptor]) -> String {
    chain
        .iter()
        .map(FieldDescriptor::json_name)
        .collect::<Vec<_>>()
        .join(".")
}

/// Well-known message types whose JSON form is a scalar (settable from one string).
fn is_scalar_wkt(desc: &MessageDescriptor) -> bool {
    matches!(
        desc.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

const FIELD_MASK: &str = "google.protobuf.FieldMask";

/// The message whose fields the paths of the `FieldMask` field `mask` name, when the gateway
/// can tell: an `update_mask` (AIP-134) names fields of the resource being updated, which is
/// the route's body field when the body is one field of the request, else the one singular
/// non-well-known message field beside the mask. Other masks (`read_mask`...) have no
/// target the descriptors reveal; their paths are only respelled, not checked.
fn mask_target(mask: &FieldDescriptor, route: &Route) -> Option<MessageDescriptor> {
    if mask.name() != "update_mask" {
        return None;
    }
    let holder = mask.parent_message();
    let singular_message = |f: &FieldDescriptor| match f.kind() {
        Kind::Message(m) if !f.is_list() && !f.is_map() => Some(m),
        _ => None,
    };
    if holder == &route.method.input() {
        if let BodyBinding::Field(body) = &route.body {
            if let Some(m) = singular_message(body) {
                return Some(m);
            }
        }
    }
    let mut resources = holder
        .fields()
        .filter_map(|f| singular_message(&f))
        .filter(|m| !m.full_name().starts_with("google.protobuf."));
    match (resources.next(), resources.next()) {
        (Some(m), None) => Some(m),
        _ => None,
    }
}

/// `display_name` → `displayName`: the JSON spelling of a field-mask path segment. `None`
/// when the proto name has none (an uppercase letter, or `_` not followed by a lowercase
/// letter), as in the proto3 JSON mapping.
fn mask_camel(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match c {
            '_' => match chars.next() {
                Some(n) if n.is_ascii_lowercase() => out.push(n.to_ascii_uppercase()),
                _ => return None,
            },
            c if c.is_ascii_uppercase() => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// `displayName` → `display_name`; a segment already in snake_case is kept.
fn mask_snake(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() + 4);
    for c in segment.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// One path of a field mask, each segment in lowerCamel or snake_case, resolved against
/// `target` when known, and answered in lowerCamel (the proto3 JSON form the parser turns
/// back into the proto names). Errors name the path.
fn mask_path(path: &str, target: Option<&MessageDescriptor>) -> Result<String, String> {
    /// Where the next segment is looked up.
    enum Next {
        /// No known target: segments are only respelled.
        Anything,
        FieldsOf(MessageDescriptor),
        /// The previous segment was a scalar, list or map field; the text says which.
        Nothing(String),
    }
    let mut next = match target {
        Some(m) => Next::FieldsOf(m.clone()),
        None => Next::Anything,
    };
    let mut out = Vec::new();
    for segment in path.split('.') {
        if segment.is_empty() {
            return Err(format!("`{path}` has an empty segment"));
        }
        // Taken out and put back (a list, map or scalar field puts back `Nothing`).
        let name = match std::mem::replace(&mut next, Next::Anything) {
            Next::Anything => mask_snake(segment),
            Next::Nothing(why) => return Err(format!("`{path}`: {why} (a mask names it whole)")),
            Next::FieldsOf(message) => {
                let field = find_field(&message, segment)
                    .or_else(|| message.get_field_by_name(&mask_snake(segment)))
                    .ok_or_else(|| {
                        let at = if path == segment {
                            String::new()
                        } else {
                            format!("`{path}`: ")
                        };
                        format!("{at}`{segment}` is not a field of {}", message.full_name())
                    })?;
                next = match field.kind() {
                    _ if field.is_map() => Next::Nothing(format!("`{}` is a map", field.name())),
                    _ if field.is_list() => {
                        Next::Nothing(format!("`{}` is repeated", field.name()))
                    }
                    Kind::Message(m) => Next::FieldsOf(m),
                    _ => Next::Nothing(format!("`{}` has no fields", field.name())),
                };
                field.name().to_owned()
            }
        };
        let camel = mask_camel(&name)
            .filter(|camel| mask_snake(camel) == name)
            .ok_or_else(|| format!("`{path}`: `{segment}` is not a field-mask path segment"))?;
        out.push(camel);
    }
    Ok(out.join("."))
}

/// A field mask as text (`a.b,c`), paths in lowerCamel or snake_case (grpc-gateway takes
/// both), as the canonical proto3 JSON string. Every path that names no field of `target`
/// is listed in the error.
fn normalize_mask(raw: &str, target: Option<&MessageDescriptor>) -> Result<String, String> {
    let mut paths = Vec::new();
    let mut bad = Vec::new();
    for path in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match mask_path(path, target) {
            Ok(p) => paths.push(p),
            Err(e) => bad.push(e),
        }
    }
    if bad.is_empty() {
        Ok(paths.join(","))
    } else {
        Err(bad.join("; "))
    }
}

/// Rewrites every `FieldMask` string of a JSON request (at any depth) with
/// [`normalize_mask`] before the proto3 JSON parser, which takes lowerCamel paths only,
/// sees it. Keys naming no field are left for the parser to reject.
fn normalize_json_masks(
    desc: &MessageDescriptor,
    json: &mut Json,
    prefix: &str,
    route: &Route,
    errors: &mut Vec<FieldError>,
) {
    let Json::Object(obj) = json else { return };
    for (key, value) in obj.iter_mut() {
        let Some(field) = find_field(desc, key) else {
            continue;
        };
        let path = format!("{prefix}{}", field.json_name());
        let item_kind = if field.is_map() {
            match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            }
        } else {
            field.kind()
        };
        let Kind::Message(item) = item_kind else {
            continue;
        };
        let mut visit = |value: &mut Json, path: String| {
            if item.full_name() == FIELD_MASK {
                if let Json::String(text) = value {
                    match normalize_mask(text, mask_target(&field, route).as_ref()) {
                        Ok(n) => *text = n,
                        Err(e) => errors.push(field_error(path, e)),
                    }
                }
            } else if !skip_recursion(&item) {
                normalize_json_masks(&item, value, &format!("{path}."), route, errors);
            }
        };
        match value {
            Json::Array(items) if field.is_list() => {
                for (i, v) in items.iter_mut().enumerate() {
                    visit(v, format!("{path}[{i}]"));
                }
            }
            Json::Object(entries) if field.is_map() => {
                for (k, v) in entries.iter_mut() {
                    visit(v, format!("{path}[{k}]"));
                }
            }
            other if !field.is_list() && !field.is_map() => visit(other, path),
            _ => {}
        }
    }
}

/// Converts one textual value into the JSON the proto3 JSON parser expects for the field.
fn text_to_json(field: &FieldDescriptor, raw: &str, route: &Route) -> Result<Json, String> {
    let boolean = |raw: &str| match raw {
        "true" | "True" | "TRUE" | "1" => Ok(Json::Bool(true)),
        "false" | "False" | "FALSE" | "0" => Ok(Json::Bool(false)),
        _ => Err(format!("`{raw}` is not a boolean")),
    };
    match field.kind() {
        Kind::Bool => boolean(raw),
        // A number in its canonical decimal form (`2`, `-1`; not `+2` or `02`) is a value's
        // number, anything else a name; unknown numbers and names are refused later.
        Kind::Enum(_) => Ok(canonical_integer(raw)
            .map(Json::from)
            .unwrap_or_else(|| Json::String(raw.to_owned()))),
        Kind::Message(m) if m.full_name() == "google.protobuf.BoolValue" => boolean(raw),
        Kind::Message(m) if m.full_name() == FIELD_MASK => {
            normalize_mask(raw, mask_target(field, route).as_ref()).map(Json::String)
        }
        Kind::Message(m) if !is_scalar_wkt(&m) => Err(format!(
            "`{}` is a message; set its fields one by one",
            field.json_name()
        )),
        _ => Ok(Json::String(raw.to_owned())),
    }
}

/// An integer written as JSON would write it.
fn canonical_integer(raw: &str) -> Option<i64> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && raw != "-0";
    canonical.then(|| raw.parse().ok()).flatten()
}

/// Sets the field at the end of `chain` from textual values (one, or several for a repeated
/// field), using the proto3 JSON parser for the conversion.
fn set_from_strings(
    msg: &mut DynamicMessage,
    chain: &[FieldDescriptor],
    values: &[String],
    route: &Route,
) -> Result<(), String> {
    let (leaf, parents) = chain.split_last().ok_or("empty field path")?;
    if leaf.is_map() {
        return Err("map fields cannot be set from the path or the query".into());
    }
    let json = if leaf.is_list() {
        Json::Array(
            values
                .iter()
                .map(|v| text_to_json(leaf, v, route))
                .collect::<Result<_, _>>()?,
        )
    } else {
        if values.len() > 1 {
            return Err("given more than once but not repeated".into());
        }
        text_to_json(leaf, &values[0], route)?
    };
    let mut obj = serde_json::Map::new();
    obj.insert(leaf.name().to_owned(), json);
    let tmp = DynamicMessage::deserialize_with_options(
        leaf.parent_message().clone(),
        Json::Object(obj),
        &DeserializeOptions::new(),
    )
    .map_err(|e| e.to_string())?;
    let value = tmp.get_field(leaf).into_owned();
    let mut current = msg;
    for parent in parents {
        current = match current.get_field_mut(parent) {
            Value::Message(m) => m,
            _ => return Err("not a message".into()),
        };
    }
    current.set_field(leaf, value);
    Ok(())
}

fn skip_recursion(desc: &MessageDescriptor) -> bool {
    desc.full_name().starts_with("google.protobuf.")
}

/// AIP-203: OUTPUT_ONLY fields sent by a client are ignored.
pub(crate) fn clear_output_only(msg: &mut DynamicMessage, behaviors: &Behaviors) {
    let to_clear: Vec<FieldDescriptor> = msg
        .fields()
        .filter(|(f, _)| behaviors.is_output_only(f))
        .map(|(f, _)| f)
        .collect();
    for f in to_clear {
        msg.clear_field(&f);
    }
    for (_, value) in msg.fields_mut() {
        match value {
            Value::Message(m) if !skip_recursion(&m.descriptor()) => {
                clear_output_only(m, behaviors)
            }
            Value::List(items) => {
                for item in items {
                    if let Value::Message(m) = item {
                        if !skip_recursion(&m.descriptor()) {
                            clear_output_only(m, behaviors);
                        }
                    }
                }
            }
            Value::Map(entries) => {
                for item in entries.values_mut() {
                    if let Value::Message(m) = item {
                        if !skip_recursion(&m.descriptor()) {
                            clear_output_only(m, behaviors);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn present(msg: &DynamicMessage, field: &FieldDescriptor) -> bool {
    if !msg.has_field(field) {
        return false;
    }
    match msg.get_field(field).as_ref() {
        Value::List(l) => !l.is_empty(),
        Value::Map(m) => !m.is_empty(),
        _ => true,
    }
}

/// REQUIRED fields present, enum values known; recursive over set sub-messages.
fn check(
    msg: &DynamicMessage,
    prefix: &str,
    behaviors: &Behaviors,
    nested_required: bool,
    errors: &mut Vec<FieldError>,
) {
    let desc = msg.descriptor();
    let top_level = prefix.is_empty();
    for field in desc.fields() {
        if (top_level || nested_required)
            && behaviors.is_required(&field)
            && field.containing_oneof().is_none()
            && !present(msg, &field)
        {
            errors.push(field_error(
                format!("{prefix}{}", field.json_name()),
                "required field is missing",
            ));
        }
    }
    for (field, value) in msg.fields() {
        let path = format!("{prefix}{}", field.json_name());
        let item_kind = if field.is_map() {
            match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            }
        } else {
            field.kind()
        };
        let visit = |value: &Value, path: String, errors: &mut Vec<FieldError>| match value {
            Value::Message(m) if !skip_recursion(&m.descriptor()) => {
                check(m, &format!("{path}."), behaviors, nested_required, errors)
            }
            Value::EnumNumber(n) => {
                if let Kind::Enum(e) = &item_kind {
                    if e.get_value(*n).is_none() {
                        errors.push(field_error(
                            path,
                            format!("{n} is not a value of {}", e.full_name()),
                        ));
                    }
                }
            }
            _ => {}
        };
        match value {
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    visit(item, format!("{path}[{i}]"), errors);
                }
            }
            Value::Map(entries) => {
                for (key, item) in entries {
                    let key = match key {
                        MapKey::String(s) => s.clone(),
                        MapKey::Bool(b) => b.to_string(),
                        MapKey::I32(n) => n.to_string(),
                        MapKey::I64(n) => n.to_string(),
                        MapKey::U32(n) => n.to_string(),
                        MapKey::U64(n) => n.to_string(),
                    };
                    visit(item, format!("{path}[{key}]"), errors);
                }
            }
            other => visit(other, path, errors),
        }
    }
}

/// Proto3 JSON serialization as grpc-gateway does it: lowerCamel names, enums by name, 64-bit
/// integers as strings, default values omitted (set fields with presence are emitted).
pub(crate) fn to_json(msg: &DynamicMessage) -> Json {
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(true)
        .skip_default_fields(true);
    msg.serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(Json::Null)
}

/// The JSON of one field of a response (`response_body`).
pub(crate) fn field_json(msg: &DynamicMessage, field: &FieldDescriptor) -> Json {
    if let Json::Object(mut obj) = to_json(msg) {
        if let Some(v) = obj.remove(field.json_name()) {
            return v;
        }
    }
    if field.is_list() {
        return Json::Array(Vec::new());
    }
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(true)
        .skip_default_fields(false);
    match msg.serialize_with_options(serde_json::value::Serializer, &options) {
        Ok(Json::Object(mut obj)) => match obj.remove(field.json_name()) {
            Some(Json::Null) | None => Json::Object(Default::default()),
            Some(v) => v,
        },
        _ => Json::Null,
    }
}

/// A JSON value with object keys sorted, as text: the canonical form hashed for idempotency
/// fingerprints.
pub(crate) fn canonical_json(value: &Json) -> String {
    fn write(value: &Json, out: &mut String) {
        match value {
            Json::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Json::String(k.clone()).to_string());
                    out.push(':');
                    write(&map[k], out);
                }
                out.push('}');
            }
            Json::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::{canonical_integer, mask_path};

    #[test]
    fn enum_numbers_in_text_are_canonical_integers() {
        assert_eq!(canonical_integer("2"), Some(2));
        assert_eq!(canonical_integer("0"), Some(0));
        assert_eq!(canonical_integer("-1"), Some(-1));
        for other in ["+2", "02", "-0", "2.0", "", "-", "COLOR_RED", " 2"] {
            assert_eq!(canonical_integer(other), None, "{other}");
        }
    }

    #[test]
    fn mask_paths_without_a_target_are_only_respelled() {
        assert_eq!(mask_path("display_name", None).unwrap(), "displayName");
        assert_eq!(mask_path("displayName", None).unwrap(), "displayName");
        assert_eq!(
            mask_path("main_part.partName", None).unwrap(),
            "mainPart.partName"
        );
        // Proto names the proto3 JSON mapping cannot spell are refused rather than mangled.
        for bad in ["foo_1bar", "foo__bar", "trailing_", "a..b"] {
            assert!(mask_path(bad, None).is_err(), "{bad}");
        }
    }
}
