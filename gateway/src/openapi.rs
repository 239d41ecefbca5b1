//! The OpenAPI 3.1 document generated from the routes and descriptors: paths and operations
//! from the http rules, schemas from the messages (proto3 JSON types), descriptions from the
//! proto comments, `required` / `readOnly` / `writeOnly` from field behaviours, and the
//! problem document for every error response.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost_reflect::{DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{json, Map, Value as Json};

use crate::openapi_rules::{
    merge, non_zero_field, Rules, INT64_PATTERN, UINT64_PATTERN, UUID_PATTERN,
};
use crate::routes::{is_http_body, BodyBinding, Route, FIELD_BEHAVIOR_EXT, HTTP_BODY};
use crate::transcode::Behaviors;
use crate::GatewayConfig;

const INPUT_ONLY: i32 = 4;
const STANDARD_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Leading comments of descriptors, by (file, path).
struct Comments {
    by_file: HashMap<String, HashMap<Vec<i32>, String>>,
}

impl Comments {
    fn new(pool: &DescriptorPool) -> Self {
        let mut by_file = HashMap::new();
        for file in pool.files() {
            let mut map = HashMap::new();
            if let Some(info) = &file.file_descriptor_proto().source_code_info {
                for loc in &info.location {
                    if let Some(c) = &loc.leading_comments {
                        let text = c
                            .lines()
                            .map(str::trim)
                            .collect::<Vec<_>>()
                            .join("\n")
                            .trim()
                            .to_owned();
                        if !text.is_empty() {
                            map.insert(loc.path.clone(), text);
                        }
                    }
                }
            }
            by_file.insert(file.name().to_owned(), map);
        }
        Self { by_file }
    }

    fn get(&self, file: &str, path: &[i32]) -> Option<&str> {
        self.by_file.get(file)?.get(path).map(String::as_str)
    }
}

struct Builder<'a> {
    comments: Comments,
    behaviors: &'a Behaviors,
    rules: Rules,
    input_only: BTreeSet<String>,
    schemas: BTreeMap<String, Json>,
    /// Messages to write as components, and whether as the partial form.
    pending: Vec<(MessageDescriptor, bool)>,
    /// Whether message references made now are to partial forms: inside the body of an update
    /// (AIP-134), where the gateway does not demand nested REQUIRED fields.
    relaxed: bool,
}

/// Whether a request is an update with a field mask, whose nested REQUIRED fields the gateway
/// does not demand (see `transcode::build_request`).
fn is_partial_update(input: &MessageDescriptor) -> bool {
    input.get_field_by_name("update_mask").is_some_and(
        |f| matches!(f.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask"),
    )
}

/// The component name of a message's schema, or of its partial form.
fn component_name(desc: &MessageDescriptor, partial: bool) -> String {
    if partial {
        format!("{}.Partial", desc.full_name())
    } else {
        desc.full_name().to_owned()
    }
}

pub(crate) fn document(
    pool: &DescriptorPool,
    routes: &[Route],
    behaviors: &Behaviors,
    config: &GatewayConfig,
    versions: &[String],
) -> Json {
    let mut b = Builder {
        comments: Comments::new(pool),
        behaviors,
        rules: Rules::new(pool),
        input_only: input_only_fields(pool),
        schemas: BTreeMap::new(),
        pending: Vec::new(),
        relaxed: false,
    };
    let mut ordered: Vec<&Route> = routes.iter().collect();
    ordered.sort_by_key(|r| r.index);

    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    // OpenAPI forbids two templated paths that differ only in parameter names: routes of the
    // same shape share the first spelling seen.
    let mut shapes: HashMap<String, (String, Vec<String>)> = HashMap::new();
    let mut operation_ids: HashMap<String, usize> = HashMap::new();
    let mut records: Vec<OpRecord> = Vec::new();
    for route in ordered {
        let own_path = route.template.openapi_path();
        let own_names: Vec<String> = route
            .template
            .variables
            .iter()
            .map(|v| v.field_path.join("."))
            .collect();
        let shape = shape_of(&own_path);
        let (path, names) = shapes
            .entry(shape)
            .or_insert_with(|| (own_path.clone(), own_names.clone()))
            .clone();
        let base_id = format!(
            "{}_{}",
            route.method.parent_service().name(),
            route.method.name()
        );
        let n = operation_ids.entry(base_id.clone()).or_insert(0);
        let operation_id = if *n == 0 {
            base_id
        } else {
            format!("{base_id}_{n}")
        };
        *n += 1;
        let op = b.operation(route, &operation_id, &names);
        let item = paths.entry(path.clone()).or_default();
        let method = route.info.http_method.to_ascii_lowercase();
        if STANDARD_METHODS.contains(&method.as_str()) {
            records.push(OpRecord {
                path,
                method: method.clone(),
                operation_id,
                names,
                route,
            });
            item.insert(method, op);
        } else {
            // OpenAPI 3.1 has no custom methods: they are listed under an extension.
            let custom = item.entry("x-custom-methods").or_insert_with(|| json!({}));
            custom[route.info.http_method.as_str()] = op;
        }
    }

    add_links(&records, &mut paths);

    while let Some((desc, partial)) = b.pending.pop() {
        let name = component_name(&desc, partial);
        if !b.schemas.contains_key(&name) {
            b.relaxed = partial;
            let schema = b.message_schema_mode(&desc, &[], !partial);
            b.relaxed = false;
            b.schemas.insert(name, schema);
        }
    }
    let mut schemas: Map<String, Json> = b.schemas.into_iter().collect();
    schemas.insert("Problem".into(), problem_schema());
    schemas.insert("JsonValue".into(), json_value_schema());

    let version_schema = if versions.is_empty() {
        json!({"type": "string"})
    } else {
        json!({"type": "string", "enum": versions})
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": config.api_title,
            "version": config.api_version,
            "description": "Generated from the contracts' google.api.http rules. Errors are RFC 9457 problem documents (application/problem+json).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "parameters": {
                "ContractVersion": {
                    "name": "X-Zen-Contract-Version", "in": "header", "required": false,
                    "description": "Contract version to use; the newest supported one when absent.",
                    "schema": version_schema
                },
                "RequestId": {
                    "name": "X-Request-Id", "in": "header", "required": false,
                    "description": "Request id, echoed in the response; generated when absent.",
                    "schema": request_id_schema()
                },
                "RequestIdRequired": {
                    "name": "X-Request-Id", "in": "header", "required": true,
                    "description": "Idempotency key of this mutating call: the same id and request within 24 h replays the first response (Idempotent-Replayed: true); the same id with another request is 409.",
                    "schema": request_id_schema()
                },
                "TenantId": {
                    "name": "X-Tenant-Id", "in": "header", "required": false,
                    "description": "When present, must equal the addressed tenant and the caller's tenant.",
                    "schema": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN}
                }
            },
            "responses": {
                "Problem": {
                    "description": "An error, as an RFC 9457 problem document.",
                    "headers": {
                        "X-Request-Id": {"schema": {"type": "string"}},
                        "Retry-After": {"description": "Seconds to wait (429, 503).", "schema": {"type": "integer"}},
                        "RateLimit-Policy": {"description": "429: the limit that was exceeded, as `\"<limit>\";q=<burst>;w=<seconds to refill>` (draft-ietf-httpapi-ratelimit-headers).", "schema": {"type": "string"}},
                        "RateLimit": {"description": "429: the state of that limit, as `\"<limit>\";r=<remaining>;t=<seconds until whole>`.", "schema": {"type": "string"}}
                    },
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
                }
            }
        },
        "security": [{"bearer": []}],
    })
}

/// One operation listed under a standard method, for links.
struct OpRecord<'r> {
    path: String,
    method: String,
    operation_id: String,
    /// Path parameter names as the document spells them.
    names: Vec<String>,
    route: &'r Route,
}

/// OpenAPI links from each create (`POST P`) to the operations on what it made (`P/{x}`, and
/// `P/{x}:verb`): the parameters `P` has come from the request path, `{x}` from the field of
/// the response with the same JSON name (top level, or one message field down).
fn add_links(records: &[OpRecord], paths: &mut BTreeMap<String, Map<String, Json>>) {
    for create in records {
        if create.method != "post" || create.route.info.server_streaming {
            continue;
        }
        let Some(response) = response_message(create.route) else {
            continue;
        };
        let shape = shape_of(&create.path);
        let child = format!("{shape}/{{}}");
        let mut links = Map::new();
        for target in records {
            let target_shape = shape_of(&target.path);
            let is_child = target_shape == child
                || target_shape
                    .strip_prefix(&format!("{child}:"))
                    .is_some_and(|verb| !verb.is_empty() && !verb.contains(['/', '{']));
            if !is_child
                || target.names.len() != create.names.len() + 1
                || target.route.info.server_streaming
            {
                continue;
            }
            let Some(var) = target.route.template.variables.last() else {
                continue;
            };
            let Ok(field) =
                crate::routes::resolve_path(&target.route.method.input(), &var.field_path)
            else {
                continue;
            };
            let Some(pointer) = response_pointer(&response, field.json_name()) else {
                continue;
            };
            let mut parameters = Map::new();
            for (theirs, ours) in target.names.iter().zip(&create.names) {
                parameters.insert(theirs.clone(), json!(format!("$request.path.{ours}")));
            }
            if let Some(last) = target.names.last() {
                parameters.insert(last.clone(), json!(format!("$response.body#{pointer}")));
            }
            links.insert(
                target.operation_id.clone(),
                json!({
                    "operationId": target.operation_id,
                    "parameters": parameters,
                    "description": format!("`{}` of the created resource.", target.operation_id),
                }),
            );
        }
        if links.is_empty() {
            continue;
        }
        let Some(Json::Object(responses)) = paths
            .get_mut(&create.path)
            .and_then(|item| item.get_mut(&create.method))
            .and_then(|op| op.get_mut("responses"))
        else {
            continue;
        };
        for (code, response) in responses.iter_mut() {
            if code.starts_with('2') && response.get("content").is_some() {
                response["links"] = Json::Object(links.clone());
            }
        }
    }
}

/// The message a route's success body is, if JSON.
fn response_message(route: &Route) -> Option<MessageDescriptor> {
    let desc = match &route.response_body {
        Some(f) if f.is_list() || f.is_map() => return None,
        Some(f) => match f.kind() {
            Kind::Message(m) => m,
            _ => return None,
        },
        None => route.method.output(),
    };
    (desc.full_name() != HTTP_BODY && wkt_schema(&desc).is_none()).then_some(desc)
}

/// JSON pointer to a singular scalar field named `json_name`, at the top or one level down.
fn response_pointer(desc: &MessageDescriptor, json_name: &str) -> Option<String> {
    let scalar =
        |f: &FieldDescriptor| !f.is_list() && !f.is_map() && !matches!(f.kind(), Kind::Message(_));
    if let Some(f) = desc
        .fields()
        .find(|f| f.json_name() == json_name && scalar(f))
    {
        return Some(format!("/{}", f.json_name()));
    }
    desc.fields().find_map(|outer| match outer.kind() {
        Kind::Message(m) if !outer.is_list() && !outer.is_map() && wkt_schema(&m).is_none() => m
            .fields()
            .find(|f| f.json_name() == json_name && scalar(f))
            .map(|f| format!("/{}/{}", outer.json_name(), f.json_name())),
        _ => None,
    })
}

fn request_id_schema() -> Json {
    json!({"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._:-]{1,128}$"})
}

fn shape_of(path: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '{' => {
                depth += 1;
                out.push_str("{}");
            }
            '}' => depth -= 1,
            _ if depth > 0 => {}
            c => out.push(c),
        }
    }
    out
}

fn input_only_fields(pool: &DescriptorPool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(ext) = pool.get_extension_by_name(FIELD_BEHAVIOR_EXT) else {
        return out;
    };
    for message in pool.all_messages() {
        for field in message.fields() {
            let options = field.options();
            if options.has_extension(&ext) {
                if let prost_reflect::Value::List(l) = options.get_extension(&ext).as_ref() {
                    if l.iter().any(|v| v.as_enum_number() == Some(INPUT_ONLY)) {
                        out.insert(field.full_name().to_owned());
                    }
                }
            }
        }
    }
    out
}

/// Strings without NUL (U+0000): the server refuses NUL in every string, JSON ones included.
const NO_NUL: &str = "^[^\\u0000]*$";

/// Any JSON value (`google.protobuf.Struct` / `Value` / `ListValue`), with the rule the server
/// applies inside it too: no NUL in a string or an object key, at any depth.
fn json_value_schema() -> Json {
    json!({
        "description": "Any JSON value; its strings and object keys must not contain NUL (U+0000).",
        "type": ["object", "array", "string", "number", "boolean", "null"],
        "pattern": NO_NUL,
        "propertyNames": {"pattern": NO_NUL},
        "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        "items": {"$ref": "#/components/schemas/JsonValue"}
    })
}

fn problem_schema() -> Json {
    json!({
        "type": "object",
        "description": "RFC 9457 problem details, extended with the gRPC code, the google.rpc.ErrorInfo reason and metadata, and google.rpc.BadRequest field violations.",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string", "description": "https://zen.dev/problems/<reason-or-code>"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string", "description": "The request id."},
            "code": {"type": "string", "enum": [
                "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                "UNAUTHENTICATED"]},
            "reason": {"type": "string"},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": {"type": "string", "description": "JSON (lowerCamelCase) field path."},
                        "message": {"type": "string"}
                    }
                }
            }
        }
    })
}

fn problem_ref() -> Json {
    json!({"$ref": "#/components/responses/Problem"})
}

impl Builder<'_> {
    fn describe(&self, file: &str, path: &[i32]) -> Option<String> {
        self.comments.get(file, path).map(str::to_owned)
    }

    fn message_ref(&mut self, desc: &MessageDescriptor) -> Json {
        if let Some(s) = wkt_schema(desc) {
            return s;
        }
        let partial = self.relaxed && self.has_required(desc, &mut BTreeSet::new());
        let name = component_name(desc, partial);
        if !self.schemas.contains_key(&name)
            && !self
                .pending
                .iter()
                .any(|(p, q)| component_name(p, *q) == name)
        {
            self.pending.push((desc.clone(), partial));
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    /// Whether a message or one below it has REQUIRED fields (its partial form differs).
    fn has_required(&self, desc: &MessageDescriptor, seen: &mut BTreeSet<String>) -> bool {
        if !seen.insert(desc.full_name().to_owned()) || wkt_schema(desc).is_some() {
            return false;
        }
        desc.fields().any(|f| {
            (self.behaviors.is_required(&f) && f.containing_oneof().is_none())
                || match f.kind() {
                    Kind::Message(m) => self.has_required(&m, seen),
                    _ => false,
                }
        })
    }

    fn enum_schema(&self, desc: &EnumDescriptor) -> Json {
        // Proto3 JSON takes an enum value by name or by number.
        let names: Vec<String> = desc.values().map(|v| v.name().to_owned()).collect();
        let numbers: Vec<i32> = desc.values().map(|v| v.number()).collect();
        let mut s = json!({"anyOf": [
            {"type": "string", "enum": names},
            {"type": "integer", "enum": numbers}
        ]});
        let mut doc = self
            .describe(desc.parent_file().name(), desc.path())
            .unwrap_or_default();
        let values: Vec<String> = desc
            .values()
            .filter_map(|v| {
                self.describe(v.parent_file().name(), v.path())
                    .map(|c| format!("- `{}`: {}", v.name(), c.replace('\n', " ")))
            })
            .collect();
        if !values.is_empty() {
            if !doc.is_empty() {
                doc.push_str("\n\n");
            }
            doc.push_str(&values.join("\n"));
        }
        if !doc.is_empty() {
            s["description"] = Json::String(doc);
        }
        s
    }

    fn kind_schema(&mut self, kind: &Kind) -> Json {
        match kind {
            Kind::Double => json!({"type": "number", "format": "double"}),
            Kind::Float => json!({"type": "number", "format": "float"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295u64})
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({"type": "string", "format": "int64", "pattern": INT64_PATTERN})
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "format": "uint64", "pattern": UINT64_PATTERN})
            }
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
            Kind::Enum(e) => {
                if !self.schemas.contains_key(e.full_name()) {
                    let schema = self.enum_schema(e);
                    self.schemas.insert(e.full_name().to_owned(), schema);
                }
                json!({"$ref": format!("#/components/schemas/{}", e.full_name())})
            }
            Kind::Message(m) => self.message_ref(m),
        }
    }

    fn field_schema(&mut self, field: &FieldDescriptor) -> Json {
        self.field_schema_required(field, true).0
    }

    /// A field's schema, and whether its validation rules make it required. `strict`: a
    /// REQUIRED field (google.api.field_behavior) refuses what the gateway counts as missing
    /// (the zero value, an empty list or map).
    fn field_schema_required(&mut self, field: &FieldDescriptor, strict: bool) -> (Json, bool) {
        let mut schema = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("map fields are entry messages")
            };
            let value = self.kind_schema(&entry.map_entry_value_field().kind());
            json!({"type": "object", "additionalProperties": value})
        } else if field.is_list() {
            json!({"type": "array", "items": self.kind_schema(&field.kind())})
        } else {
            self.kind_schema(&field.kind())
        };
        let outcome = self.rules.apply_field(field, &mut schema);
        if strict && self.behaviors.is_required(field) && field.containing_oneof().is_none() {
            merge(&mut schema, non_zero_field(field));
        }
        let mut doc = self
            .describe(field.parent_file().name(), field.path())
            .unwrap_or_default();
        if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
            let members: Vec<String> = oneof
                .fields()
                .map(|f| format!("`{}`", f.json_name()))
                .collect();
            if !doc.is_empty() {
                doc.push_str("\n\n");
            }
            doc.push_str(&format!(
                "Part of oneof `{}`: {} of {} is set.",
                oneof.name(),
                if self.rules.oneof_required(&oneof) {
                    "exactly one"
                } else {
                    "at most one"
                },
                members.join(", ")
            ));
        }
        push_notes(&mut doc, &outcome.notes);
        if let Json::Object(obj) = &mut schema {
            if !doc.is_empty() {
                obj.insert("description".into(), Json::String(doc));
            }
            if self.behaviors.is_output_only(field) {
                obj.insert("readOnly".into(), Json::Bool(true));
            }
            if self.input_only.contains(field.full_name()) {
                obj.insert("writeOnly".into(), Json::Bool(true));
            }
        }
        (schema, outcome.required)
    }

    /// A message's schema without some top-level fields (those bound by the path).
    fn message_schema_except(&mut self, desc: &MessageDescriptor, skip: &[u32]) -> Json {
        self.message_schema_mode(desc, skip, true)
    }

    /// A message's schema; `strict`: its REQUIRED fields are demanded (not in the partial
    /// form). Unknown fields are refused by the gateway, so none are allowed.
    fn message_schema_mode(
        &mut self,
        desc: &MessageDescriptor,
        skip: &[u32],
        strict: bool,
    ) -> Json {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in desc.fields() {
            if skip.contains(&field.number()) {
                continue;
            }
            let (schema, rules_required) = self.field_schema_required(&field, strict);
            properties.insert(field.json_name().to_owned(), schema);
            if (strict && self.behaviors.is_required(&field) && field.containing_oneof().is_none())
                || rules_required
            {
                required.push(Json::String(field.json_name().to_owned()));
            }
        }
        let mut schema = json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false
        });
        if !required.is_empty() {
            schema["required"] = Json::Array(required);
        }
        let notes = self
            .rules
            .apply_message(desc, &|f| !skip.contains(&f.number()), &mut schema);
        let mut doc = self
            .describe(desc.parent_file().name(), desc.path())
            .unwrap_or_default();
        push_notes(&mut doc, &notes);
        if !doc.is_empty() {
            schema["description"] = Json::String(doc);
        }
        schema
    }

    /// An update's body keeps only what can be sent: the fields its `update_mask` rule
    /// (`field_mask.in`) lets change, and those a PATCH without a mask leaves out of the mask
    /// it derives from the body (OUTPUT_ONLY, IMMUTABLE, `version`/`etag`: sending back a
    /// resource read earlier works). Anything else would be refused as a mask path.
    fn only_updatable(
        &self,
        input: &MessageDescriptor,
        resource: &MessageDescriptor,
        schema: &mut Json,
    ) {
        let Some(mask) = input.get_field_by_name("update_mask") else {
            return;
        };
        let Some(paths) = self.rules.field_mask_in(&mask) else {
            return;
        };
        let tops: BTreeSet<&str> = paths
            .iter()
            .map(|p| p.split('.').next().unwrap_or(p))
            .collect();
        let keep: BTreeSet<String> = resource
            .fields()
            .filter(|f| {
                tops.contains(f.name())
                    || self.behaviors.is_output_only(f)
                    || self.behaviors.is_immutable(f)
                    || matches!(f.name(), "version" | "etag")
            })
            .map(|f| f.json_name().to_owned())
            .collect();
        if let Some(Json::Object(properties)) = schema.get_mut("properties") {
            properties.retain(|name, _| keep.contains(name));
        }
        if let Some(Json::Array(required)) = schema.get_mut("required") {
            required.retain(|name| name.as_str().is_some_and(|n| keep.contains(n)));
        }
    }

    fn operation(&mut self, route: &Route, operation_id: &str, names: &[String]) -> Json {
        let method = &route.method;
        let input = method.input();
        let partial = is_partial_update(&input);
        let doc = self
            .describe(method.parent_file().name(), method.path())
            .unwrap_or_default();
        let summary = doc
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .replace('\n', " ");
        let mut params = Vec::new();
        // Path parameters.
        let mut bound_top: Vec<u32> = Vec::new();
        let mut bound_paths: Vec<Vec<u32>> = Vec::new();
        for (i, var) in route.template.variables.iter().enumerate() {
            let field = crate::routes::resolve_path(&input, &var.field_path).ok();
            let mut schema = match &field {
                Some(f) => self.kind_schema(&f.kind()),
                None => json!({"type": "string"}),
            };
            let pattern = route.template.variable_pattern(var);
            let mut description = field
                .as_ref()
                .and_then(|f| self.describe(f.parent_file().name(), f.path()))
                .unwrap_or_default();
            if pattern != "*" {
                description.push_str(&format!(" Matches `{pattern}`."));
            }
            if let Json::Object(obj) = &mut schema {
                obj.remove("description");
                if pattern == "*" && obj.get("type") == Some(&json!("string")) {
                    obj.insert("pattern".into(), json!("^[^/]+$"));
                }
            }
            if let Some(f) = &field {
                let outcome = self.rules.apply_field(f, &mut schema);
                push_notes(&mut description, &outcome.notes);
            }
            params.push(json!({
                "name": names.get(i).cloned().unwrap_or_else(|| var.field_path.join(".")),
                "in": "path",
                "required": true,
                "description": description.trim(),
                "schema": schema,
            }));
            let numbers = numbers_of(&input, &var.field_path);
            if let Some(first) = numbers.first() {
                bound_top.push(*first);
            }
            bound_paths.push(numbers);
        }
        // Query parameters: unbound scalar leaves.
        if !matches!(route.body, BodyBinding::All) {
            let body_number = match &route.body {
                BodyBinding::Field(f) => Some(f.number()),
                _ => None,
            };
            let mut leaves = Vec::new();
            collect_query_leaves(&input, "", &[], 0, &mut leaves);
            for (name, numbers, field) in leaves {
                if Some(numbers[0]) == body_number
                    || bound_paths.iter().any(|b| numbers.starts_with(b))
                    || route.headers_field.as_ref().map(|f| f.number()) == Some(numbers[0])
                    || self.behaviors.is_output_only(&field)
                {
                    continue;
                }
                // Nested REQUIRED fields of an update are not demanded.
                let strict = numbers.len() == 1 || !partial;
                let (mut schema, leaf_required) = self.field_schema_required(&field, strict);
                // Required when the leaf and every message field above it are.
                let top_required = numbers.len() == 1
                    && self.behaviors.is_required(&field)
                    && field.containing_oneof().is_none();
                let mut required = leaf_required || top_required;
                let mut current = input.clone();
                for number in &numbers[..numbers.len() - 1] {
                    let Some(f) = current.get_field(*number) else {
                        break;
                    };
                    let mut scratch = json!({});
                    required &= self.rules.apply_field(&f, &mut scratch).required;
                    match f.kind() {
                        Kind::Message(m) => current = m,
                        _ => break,
                    }
                }
                let description = schema
                    .as_object_mut()
                    .and_then(|o| o.remove("description"))
                    .unwrap_or(Json::String(String::new()));
                if let Json::Object(o) = &mut schema {
                    o.remove("readOnly");
                    o.remove("writeOnly");
                }
                params.push(json!({
                    "name": name,
                    "in": "query",
                    "required": required,
                    "description": description,
                    "schema": schema,
                }));
            }
        }
        params.push(json!({"$ref": "#/components/parameters/ContractVersion"}));
        params.push(if route.info.mutating {
            json!({"$ref": "#/components/parameters/RequestIdRequired"})
        } else {
            json!({"$ref": "#/components/parameters/RequestId"})
        });
        params.push(json!({"$ref": "#/components/parameters/TenantId"}));

        let mut op = json!({
            "operationId": operation_id,
            "tags": [method.parent_service().name()],
            "parameters": params,
            "x-grpc-method": route.info.grpc_path,
        });
        if !summary.is_empty() {
            op["summary"] = Json::String(summary);
        }
        if !doc.is_empty() {
            op["description"] = Json::String(doc);
        }
        // Request body.
        let body = match &route.body {
            BodyBinding::None => None,
            BodyBinding::All if input.full_name() == HTTP_BODY => Some(raw_body()),
            BodyBinding::All => {
                let mut skip = bound_top.clone();
                if let Some(f) = &route.headers_field {
                    skip.push(f.number());
                }
                let schema = if partial {
                    // The request's own REQUIRED fields are demanded, nested ones are not.
                    self.relaxed = true;
                    let schema = self.message_schema_except(&input, &skip);
                    self.relaxed = false;
                    schema
                } else if skip.is_empty() {
                    self.message_ref(&input)
                } else {
                    self.message_schema_except(&input, &skip)
                };
                Some(json_body(schema))
            }
            BodyBinding::Field(f) if is_http_body(f) => Some(raw_body()),
            BodyBinding::Field(f)
                if partial
                    && !f.is_list()
                    && !f.is_map()
                    && matches!(f.kind(), Kind::Message(m) if wkt_schema(&m).is_none()) =>
            {
                // An update: the resource, inline, without its REQUIRED fields demanded.
                let Kind::Message(m) = f.kind() else {
                    unreachable!("checked above")
                };
                self.relaxed = true;
                let mut schema = self.message_schema_mode(&m, &[], false);
                self.relaxed = false;
                self.only_updatable(&input, &m, &mut schema);
                Some(json_body(schema))
            }
            BodyBinding::Field(f) => {
                let mut schema = self.field_schema(f);
                let mut description = None;
                if let Json::Object(o) = &mut schema {
                    o.remove("readOnly");
                    // Beside a bare `$ref` the field's words belong to the request body: a
                    // sibling of `$ref` there makes some generators lose the referenced type.
                    if o.contains_key("$ref") {
                        description = o.remove("description");
                    }
                }
                let mut body = json_body(schema);
                if let Some(description) = description {
                    body["description"] = description;
                }
                Some(body)
            }
        };
        if let Some(body) = body {
            op["requestBody"] = body;
        }
        // Responses.
        let output = method.output();
        let success_schema = match &route.response_body {
            Some(f) if is_http_body(f) => None,
            Some(f) => Some(self.field_schema(f)),
            None if output.full_name() == HTTP_BODY => None,
            None => Some(self.message_ref(&output)),
        };
        let mut responses = Map::new();
        let ok = if route.info.server_streaming {
            let item = success_schema.unwrap_or(json!({}));
            json!({
                "description": "A stream of messages: newline-delimited JSON (`{\"result\": ...}` per line, `{\"error\": <problem>}` last on failure), server-sent events with `Accept: text/event-stream`, or a WebSocket with an upgrade request.",
                "content": {
                    "application/x-ndjson": {"schema": {
                        "type": "object",
                        "properties": {"result": item, "error": {"$ref": "#/components/schemas/Problem"}}
                    }},
                    "text/event-stream": {"schema": {"type": "string"}}
                }
            })
        } else {
            match success_schema {
                Some(schema) => json!({
                    "description": "Success.",
                    "headers": {"X-Request-Id": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": schema}}
                }),
                None => json!({
                    "description": "Success: the raw body.",
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}
                }),
            }
        };
        for status in &route.success_statuses {
            responses.insert(status.to_string(), ok.clone());
        }
        responses.insert("200".into(), ok);
        if route.redirect_field.is_some() {
            responses.insert(
                "302".into(),
                json!({
                    "description": "Redirect (unless Accept prefers application/json).",
                    "headers": {"Location": {"schema": {"type": "string"}}}
                }),
            );
        }
        let mut codes = vec![
            "400", "401", "403", "404", "405", "409", "429", "500", "501", "503", "504",
        ];
        if !matches!(route.body, BodyBinding::None) {
            codes.extend(["413", "415"]);
        }
        codes.sort();
        for code in codes {
            responses.insert(code.into(), problem_ref());
        }
        responses.insert("default".into(), problem_ref());
        op["responses"] = Json::Object(responses);
        if route.info.public {
            op["security"] = json!([]);
        }
        op
    }
}

/// Appends sentences to a description, a blank line apart from what is there.
fn push_notes(doc: &mut String, notes: &[String]) {
    if notes.is_empty() {
        return;
    }
    if !doc.is_empty() {
        doc.push_str("\n\n");
    }
    doc.push_str(&notes.join("\n"));
}

fn json_body(schema: Json) -> Json {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn raw_body() -> Json {
    json!({"required": true, "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}})
}

fn numbers_of(desc: &MessageDescriptor, path: &[String]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut current = desc.clone();
    for seg in path {
        let Some(f) = crate::routes::find_field(&current, seg) else {
            break;
        };
        out.push(f.number());
        if let Kind::Message(m) = f.kind() {
            current = m;
        }
    }
    out
}

/// Scalar (or scalar-list, or scalar-like well-known type) leaves reachable through singular
/// message fields, named by JSON path.
fn collect_query_leaves(
    desc: &MessageDescriptor,
    prefix: &str,
    numbers: &[u32],
    depth: usize,
    out: &mut Vec<(String, Vec<u32>, FieldDescriptor)>,
) {
    for field in desc.fields() {
        if field.is_map() {
            continue;
        }
        let name = format!("{prefix}{}", field.json_name());
        let mut nums = numbers.to_vec();
        nums.push(field.number());
        match field.kind() {
            Kind::Message(m)
                if wkt_schema(&m).is_some()
                    && m.full_name() != "google.protobuf.Struct"
                    && m.full_name() != "google.protobuf.Value"
                    && m.full_name() != "google.protobuf.ListValue"
                    && m.full_name() != "google.protobuf.Any"
                    && m.full_name() != "google.protobuf.Empty" =>
            {
                if !field.is_list() {
                    out.push((name, nums, field));
                }
            }
            Kind::Message(m) => {
                if !field.is_list() && depth < 3 && m.full_name() != HTTP_BODY {
                    collect_query_leaves(&m, &format!("{name}."), &nums, depth + 1, out);
                }
            }
            _ => out.push((name, nums, field)),
        }
    }
}

/// Schemas of well-known types with a special JSON form.
fn wkt_schema(desc: &MessageDescriptor) -> Option<Json> {
    let wrapper = |t: &str, f: Option<&str>| {
        let mut s = json!({"type": [t, "null"]});
        if let Some(f) = f {
            s["format"] = json!(f);
        }
        s
    };
    Some(match desc.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": crate::openapi_rules::DURATION_PATTERN, "description": "Duration in seconds with an `s` suffix, e.g. `1.5s`."})
        }
        "google.protobuf.FieldMask" => {
            json!({"type": "string", "description": "Comma-separated lowerCamelCase field paths."})
        }
        "google.protobuf.Struct" => json!({
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}
        }),
        "google.protobuf.Value" => json!({"$ref": "#/components/schemas/JsonValue"}),
        "google.protobuf.ListValue" => {
            json!({"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}})
        }
        "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "required": ["@type"],
            "properties": {"@type": {"type": "string"}},
            "additionalProperties": true
        }),
        "google.protobuf.DoubleValue" => wrapper("number", Some("double")),
        "google.protobuf.FloatValue" => wrapper("number", Some("float")),
        "google.protobuf.Int64Value" => {
            let mut s = wrapper("string", Some("int64"));
            s["pattern"] = json!(INT64_PATTERN);
            s
        }
        "google.protobuf.UInt64Value" => {
            let mut s = wrapper("string", Some("uint64"));
            s["pattern"] = json!(UINT64_PATTERN);
            s
        }
        "google.protobuf.Int32Value" => wrapper("integer", Some("int32")),
        "google.protobuf.UInt32Value" => wrapper("integer", None),
        "google.protobuf.BoolValue" => wrapper("boolean", None),
        "google.protobuf.StringValue" => wrapper("string", None),
        "google.protobuf.BytesValue" => wrapper("string", Some("byte")),
        _ => return None,
    })
}
