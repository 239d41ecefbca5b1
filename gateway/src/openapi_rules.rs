//! protovalidate (`buf.validate`) rules as JSON Schema in the OpenAPI document.
//!
//! The field, message and oneof options are read as extensions from the descriptor pool and
//! walked generically. What JSON Schema can say exactly becomes keywords (lengths, patterns,
//! formats, ranges, `enum`, item and pair counts, oneofs); the rest (ranges of 64-bit
//! integers, which travel as strings, beyond `gte 0` / `gt 0` / `required`, which become
//! patterns; durations, timestamps, byte lengths, CEL rules) goes into the description. The aim is that the schema accepts exactly what the server accepts: a field
//! without presence whose rules refuse its zero value is `required` (leaving it out sends the
//! zero value), and `IGNORE_IF_ZERO_VALUE` lets the zero value through.

use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, ExtensionDescriptor, FieldDescriptor, Kind,
    MessageDescriptor, OneofDescriptor, Value,
};
use serde_json::{json, Map, Value as Json};

/// The canonical text form of a UUID.
pub(crate) const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// 64-bit integers travel as JSON strings; at most 18 (signed) or 19 (unsigned) digits keep
/// them in range.
pub(crate) const INT64_PATTERN: &str = "^-?[0-9]{1,18}$";
pub(crate) const UINT64_PATTERN: &str = "^[0-9]{1,19}$";
const INT64_NON_NEGATIVE_PATTERN: &str = "^[0-9]{1,18}$";
const INT64_POSITIVE_PATTERN: &str = "^0*[1-9][0-9]{0,17}$";
const INT64_NON_ZERO_PATTERN: &str = "^-?0*[1-9][0-9]{0,17}$";
const UINT64_NON_ZERO_PATTERN: &str = "^0*[1-9][0-9]{0,18}$";
/// A `google.protobuf.Duration` in JSON: seconds with an `s` suffix. Eleven digits stay inside
/// the type's range (±315,576,000,000 s).
pub(crate) const DURATION_PATTERN: &str = "^-?[0-9]{1,11}(\\.[0-9]{1,9})?s$";
const DURATION_NON_NEGATIVE_PATTERN: &str = "^[0-9]{1,11}(\\.[0-9]{1,9})?s$";
const FIELD_EXT: &str = "buf.validate.field";
const MESSAGE_EXT: &str = "buf.validate.message";
const ONEOF_EXT: &str = "buf.validate.oneof";
/// `buf.validate.Ignore`.
const IGNORE_IF_ZERO_VALUE: i32 = 1;
const IGNORE_ALWAYS: i32 = 3;

/// What the rules of one field mean for the enclosing message or parameter list.
#[derive(Debug, Default)]
pub(crate) struct FieldOutcome {
    /// The field must be present in the JSON (explicit `required`, or a field without
    /// presence whose rules refuse the zero value).
    pub required: bool,
    /// Sentences for the description (CEL rules, rules JSON Schema cannot express).
    pub notes: Vec<String>,
}

pub(crate) struct Rules {
    field: Option<ExtensionDescriptor>,
    message: Option<ExtensionDescriptor>,
    oneof: Option<ExtensionDescriptor>,
}

fn ext_message(
    options: &DynamicMessage,
    ext: &Option<ExtensionDescriptor>,
) -> Option<DynamicMessage> {
    let ext = ext.as_ref()?;
    if !options.has_extension(ext) {
        return None;
    }
    match options.get_extension(ext).into_owned() {
        Value::Message(m) => Some(m),
        _ => None,
    }
}

fn get(m: &DynamicMessage, name: &str) -> Option<Value> {
    if m.has_field_by_name(name) {
        m.get_field_by_name(name).map(|v| v.into_owned())
    } else {
        None
    }
}

fn get_bool(m: &DynamicMessage, name: &str) -> bool {
    get(m, name).and_then(|v| v.as_bool()).unwrap_or(false)
}

fn get_message(m: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    match get(m, name)? {
        Value::Message(m) => Some(m),
        _ => None,
    }
}

fn get_list(m: &DynamicMessage, name: &str) -> Vec<Value> {
    match get(m, name) {
        Some(Value::List(l)) => l,
        _ => Vec::new(),
    }
}

/// A scalar rule value as JSON (numbers stay numbers, messages take their proto3 JSON form).
fn to_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => json!(b),
        Value::I32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::U64(n) => json!(n),
        // Through the shortest decimal form, so 0.1f32 stays 0.1.
        Value::F32(n) => json!(n.to_string().parse::<f64>().unwrap_or(f64::from(*n))),
        Value::F64(n) => json!(n),
        Value::String(s) => json!(s),
        Value::Bytes(b) => json!(format!("{b:?}")),
        Value::EnumNumber(n) => json!(n),
        Value::Message(m) => serde_json::to_value(m).unwrap_or(Json::Null),
        Value::List(l) => Json::Array(l.iter().map(to_json).collect()),
        Value::Map(_) => Json::Null,
    }
}

fn render(v: &Value) -> String {
    match to_json(v) {
        Json::String(s) => format!("`{s}`"),
        other => format!("`{other}`"),
    }
}

/// A field-mask path in JSON spelling: each `snake_case` segment in lowerCamelCase.
fn json_path(path: &str) -> String {
    path.split('.')
        .map(crate::problem::lower_camel)
        .collect::<Vec<_>>()
        .join(".")
}

/// Escapes a literal for an ECMA-262 (and RE2) pattern.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn as_f64(j: &Json) -> Option<f64> {
    j.as_f64()
}

/// Adds one keyword to a schema: a keyword already there with another value is combined
/// (the stricter bound, or both under `allOf`).
pub(crate) fn add(obj: &mut Map<String, Json>, key: &str, value: Json) {
    let Some(old) = obj.get(key).cloned() else {
        obj.insert(key.to_owned(), value);
        return;
    };
    if old == value {
        return;
    }
    let stricter_max = [
        "minLength",
        "minItems",
        "minProperties",
        "minimum",
        "exclusiveMinimum",
    ];
    let stricter_min = [
        "maxLength",
        "maxItems",
        "maxProperties",
        "maximum",
        "exclusiveMaximum",
    ];
    if let (Some(a), Some(b)) = (as_f64(&old), as_f64(&value)) {
        if stricter_max.contains(&key) {
            if b > a {
                obj.insert(key.to_owned(), value);
            }
            return;
        }
        if stricter_min.contains(&key) {
            if b < a {
                obj.insert(key.to_owned(), value);
            }
            return;
        }
    }
    let all = obj.entry("allOf").or_insert_with(|| json!([]));
    if let Json::Array(items) = all {
        let mut m = Map::new();
        m.insert(key.to_owned(), value);
        items.push(Json::Object(m));
    }
}

/// Merges constraint keywords into a field's schema (a bare `$ref` becomes `allOf`).
pub(crate) fn merge(schema: &mut Json, constraints: Map<String, Json>) {
    if constraints.is_empty() {
        return;
    }
    if let Json::Object(obj) = schema {
        if obj.contains_key("$ref") {
            let reference = obj.remove("$ref").unwrap_or(Json::Null);
            let mut all = vec![json!({"$ref": reference})];
            all.push(Json::Object(constraints));
            obj.insert("allOf".into(), Json::Array(all));
            return;
        }
        for (k, v) in constraints {
            add(obj, &k, v);
        }
    }
}

/// JSON equality with numbers compared by value (`0` equals `0.0`).
fn json_eq(a: &Json, b: &Json) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

/// Whether a value passes the keywords this module emits (used on zero values only; formats
/// refuse the empty string, unknown keywords pass).
fn accepts(schema: &Json, v: &Json) -> bool {
    let Json::Object(s) = schema else {
        return true;
    };
    s.iter().all(|(k, rule)| match k.as_str() {
        "const" => json_eq(rule, v),
        "enum" => rule
            .as_array()
            .is_some_and(|a| a.iter().any(|r| json_eq(r, v))),
        "not" => !accepts(rule, v),
        "anyOf" => rule
            .as_array()
            .is_none_or(|a| a.iter().any(|r| accepts(r, v))),
        "allOf" => rule
            .as_array()
            .is_none_or(|a| a.iter().all(|r| accepts(r, v))),
        "oneOf" => rule
            .as_array()
            .is_none_or(|a| a.iter().filter(|r| accepts(r, v)).count() == 1),
        "minLength" | "maxLength" => match (v.as_str(), rule.as_u64()) {
            (Some(text), Some(n)) => {
                let len = text.chars().count() as u64;
                if k == "minLength" {
                    len >= n
                } else {
                    len <= n
                }
            }
            _ => true,
        },
        "pattern" => match (v.as_str(), rule.as_str()) {
            (Some(text), Some(p)) => regex::Regex::new(p).map_or(true, |r| r.is_match(text)),
            _ => true,
        },
        "format" => match v.as_str() {
            Some("") => rule == "uri-reference",
            _ => true,
        },
        "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
            match (v.as_f64(), rule.as_f64()) {
                (Some(x), Some(b)) => match k.as_str() {
                    "minimum" => x >= b,
                    "maximum" => x <= b,
                    "exclusiveMinimum" => x > b,
                    _ => x < b,
                },
                _ => true,
            }
        }
        "minItems" => v
            .as_array()
            .is_none_or(|a| rule.as_u64().is_none_or(|n| a.len() as u64 >= n)),
        "maxItems" => v
            .as_array()
            .is_none_or(|a| rule.as_u64().is_none_or(|n| a.len() as u64 <= n)),
        "minProperties" => v
            .as_object()
            .is_none_or(|a| rule.as_u64().is_none_or(|n| a.len() as u64 >= n)),
        "maxProperties" => v
            .as_object()
            .is_none_or(|a| rule.as_u64().is_none_or(|n| a.len() as u64 <= n)),
        _ => true,
    })
}

/// The value's kind as seen by a rule set: a singular field, a list item or a map value.
#[derive(Clone)]
struct Target(Kind);

impl Target {
    fn kind(&self) -> &Kind {
        &self.0
    }

    /// The proto3 JSON zero value, where the schema can name it.
    fn zero(&self) -> Option<Json> {
        Some(match self.kind() {
            Kind::String | Kind::Bytes => json!(""),
            Kind::Bool => json!(false),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!("0")
            }
            Kind::Enum(e) => json!(zero_name(e)),
            Kind::Message(_) => return None,
            _ => json!(0),
        })
    }
}

fn zero_name(e: &EnumDescriptor) -> String {
    e.get_value(0)
        .or_else(|| e.values().next())
        .map(|v| v.name().to_owned())
        .unwrap_or_default()
}

/// Numbers JSON carries as numbers (64-bit integers travel as strings).
fn json_number(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Int32
            | Kind::Sint32
            | Kind::Sfixed32
            | Kind::Uint32
            | Kind::Fixed32
            | Kind::Float
            | Kind::Double
    )
}

/// `const`, `gt`/`gte`/`lt`/`lte`, `in`, `not_in` of a numeric (or duration/timestamp) rule
/// set as JSON Schema keywords; the names it used are returned.
fn range_constraints(rules: &DynamicMessage, c: &mut Map<String, Json>) -> Vec<&'static str> {
    let mut used = vec!["const", "gt", "gte", "lt", "lte", "in", "not_in"];
    if let Some(v) = get(rules, "const") {
        add(c, "const", to_json(&v));
    }
    let lower = [("gt", "exclusiveMinimum"), ("gte", "minimum")]
        .into_iter()
        .find_map(|(r, k)| get(rules, r).map(|v| (k, to_json(&v))));
    let upper = [("lt", "exclusiveMaximum"), ("lte", "maximum")]
        .into_iter()
        .find_map(|(r, k)| get(rules, r).map(|v| (k, to_json(&v))));
    match (lower, upper) {
        (Some((lk, lv)), Some((uk, uv)))
            if as_f64(&uv).zip(as_f64(&lv)).is_some_and(|(u, l)| u < l) =>
        {
            // protovalidate: an upper bound below the lower one means "outside the range".
            add(c, "anyOf", json!([{lk: lv}, {uk: uv}]));
        }
        (l, u) => {
            for (k, v) in l.into_iter().chain(u) {
                add(c, k, v);
            }
        }
    }
    let values: Vec<Json> = get_list(rules, "in").iter().map(to_json).collect();
    if !values.is_empty() {
        add(c, "enum", Json::Array(values));
    }
    let values: Vec<Json> = get_list(rules, "not_in").iter().map(to_json).collect();
    if !values.is_empty() {
        add(c, "not", json!({"enum": values}));
    }
    used.push("example");
    used
}

/// Readable sentences for rules kept in the description.
fn range_notes(rules: &DynamicMessage) -> Vec<String> {
    let mut parts = Vec::new();
    if let Some(v) = get(rules, "const") {
        parts.push(format!("must equal {}", render(&v)));
    }
    let lower = [("gt", ">"), ("gte", "≥")]
        .into_iter()
        .find_map(|(r, s)| get(rules, r).map(|v| (s, v)));
    let upper = [("lt", "<"), ("lte", "≤")]
        .into_iter()
        .find_map(|(r, s)| get(rules, r).map(|v| (s, v)));
    match (&lower, &upper) {
        (Some((ls, lv)), Some((us, uv))) => {
            let outside = as_f64(&to_json(uv))
                .zip(as_f64(&to_json(lv)))
                .is_some_and(|(u, l)| u < l);
            let joint = if outside { "or" } else { "and" };
            parts.push(format!(
                "must be {ls} {} {joint} {us} {}",
                render(lv),
                render(uv)
            ));
        }
        (Some((s, v)), None) | (None, Some((s, v))) => {
            parts.push(format!("must be {s} {}", render(v)))
        }
        _ => {}
    }
    let list = get_list(rules, "in");
    if !list.is_empty() {
        parts.push(format!(
            "must be one of {}",
            list.iter().map(render).collect::<Vec<_>>().join(", ")
        ));
    }
    let list = get_list(rules, "not_in");
    if !list.is_empty() {
        parts.push(format!(
            "must not be one of {}",
            list.iter().map(render).collect::<Vec<_>>().join(", ")
        ));
    }
    let mut notes = Vec::new();
    if !parts.is_empty() {
        notes.push(format!("Value {}.", parts.join("; ")));
    }
    notes
}

/// The rules of a set that no mapping used, as sentences.
fn leftover_notes(rules: &DynamicMessage, used: &[&str]) -> Vec<String> {
    rules
        .fields()
        .filter(|(f, _)| !used.contains(&f.name()) && f.name() != "example")
        .map(|(f, v)| format!("Rule `{}`: {}.", f.name(), render(v)))
        .collect()
}

fn cel_notes(rules: &DynamicMessage, prefix: &str) -> Vec<String> {
    let mut notes = Vec::new();
    for rule in get_list(rules, "cel") {
        let Value::Message(rule) = rule else { continue };
        let text = |n: &str| {
            get(&rule, n)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let (id, message, expression) = (text("id"), text("message"), text("expression"));
        let what = if message.is_empty() {
            format!("`{expression}`")
        } else {
            message
        };
        if id.is_empty() {
            notes.push(format!("{prefix}Rule: {what}"));
        } else {
            notes.push(format!("{prefix}Rule `{id}`: {what}"));
        }
    }
    for expression in get_list(rules, "cel_expression") {
        if let Some(e) = expression.as_str() {
            notes.push(format!("{prefix}Rule: `{e}`"));
        }
    }
    notes
}

/// The type-specific rules of one value (`string`, `int32`, `enum`, ...).
fn value_constraints(
    rules: &DynamicMessage,
    target: &Target,
    c: &mut Map<String, Json>,
    hidden: &mut Map<String, Json>,
    notes: &mut Vec<String>,
) {
    let kind = target.kind();
    let set = rules
        .fields()
        .find(|(f, _)| f.containing_oneof().is_some_and(|o| o.name() == "type"))
        .map(|(f, v)| (f.name().to_owned(), v.clone()));
    let Some((name, Value::Message(r))) = set else {
        return;
    };
    match (name.as_str(), kind) {
        ("string", Kind::String) => string_constraints(&r, c, notes),
        ("enum", Kind::Enum(e)) => {
            let mut allowed: Vec<(i32, String)> = e
                .values()
                .map(|v| (v.number(), v.name().to_owned()))
                .collect();
            let total = allowed.len();
            if let Some(n) = get(&r, "const").and_then(|v| v.as_i32()) {
                allowed.retain(|(num, _)| *num == n);
            }
            let ins: Vec<i32> = get_list(&r, "in")
                .iter()
                .filter_map(Value::as_i32)
                .collect();
            if !ins.is_empty() {
                allowed.retain(|(num, _)| ins.contains(num));
            }
            let outs: Vec<i32> = get_list(&r, "not_in")
                .iter()
                .filter_map(Value::as_i32)
                .collect();
            allowed.retain(|(num, _)| !outs.contains(num));
            if allowed.len() != total {
                add(c, "enum", enum_values(&allowed));
            }
            notes.extend(leftover_notes(
                &r,
                &["const", "in", "not_in", "defined_only"],
            ));
        }
        ("bool", Kind::Bool) => {
            if let Some(v) = get(&r, "const") {
                add(c, "const", to_json(&v));
            }
        }
        (_, k) if json_number(k) => {
            let used = range_constraints(&r, c);
            notes.extend(leftover_notes(&r, &used));
        }
        (
            "int64" | "uint64" | "sint64" | "fixed64" | "sfixed64",
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64,
        ) => {
            // JSON strings: `gte 0` and `gt 0` become patterns, the rest of the range goes in
            // the description; it is still evaluated to know whether the zero value passes.
            let unsigned = matches!(kind, Kind::Uint64 | Kind::Fixed64);
            let is_zero = |v: Option<Value>| v.is_some_and(|v| to_json(&v).as_f64() == Some(0.0));
            if is_zero(get(&r, "gt")) {
                let p = if unsigned {
                    UINT64_NON_ZERO_PATTERN
                } else {
                    INT64_POSITIVE_PATTERN
                };
                add(c, "pattern", json!(p));
            } else if is_zero(get(&r, "gte")) && !unsigned {
                add(c, "pattern", json!(INT64_NON_NEGATIVE_PATTERN));
            }
            let used = range_constraints(&r, hidden);
            notes.extend(range_notes(&r));
            notes.extend(leftover_notes(&r, &used));
        }
        ("duration", _) => {
            // JSON strings like `1.5s`: a lower bound of zero drops the minus sign; the rest of
            // the range goes in the description.
            let zero = |m: DynamicMessage| {
                get(&m, "seconds").and_then(|v| v.as_i64()).unwrap_or(0) == 0
                    && get(&m, "nanos").and_then(|v| v.as_i32()).unwrap_or(0) == 0
            };
            if get_message(&r, "gte").is_some_and(zero) {
                add(c, "pattern", json!(DURATION_NON_NEGATIVE_PATTERN));
            }
            let used = ["const", "gt", "gte", "lt", "lte", "in", "not_in"];
            notes.extend(range_notes(&r));
            notes.extend(leftover_notes(&r, &used));
        }
        ("field_mask", _) => {
            // The mask's JSON form: comma-separated lowerCamelCase paths, each one of `in`.
            let paths: Vec<String> = get_list(&r, "in")
                .iter()
                .filter_map(|v| v.as_str().map(json_path))
                .collect();
            if !paths.is_empty() {
                let one = format!(
                    "(?:{})",
                    paths
                        .iter()
                        .map(|p| regex_escape(p))
                        .collect::<Vec<_>>()
                        .join("|")
                );
                add(c, "pattern", json!(format!("^(?:{one}(?:,{one})*)?$")));
            }
            notes.extend(leftover_notes(&r, &["in"]));
        }
        ("timestamp", _) => {
            let used = ["const", "gt", "gte", "lt", "lte", "in", "not_in"];
            notes.extend(range_notes(&r));
            notes.extend(leftover_notes(&r, &used));
        }
        _ => notes.extend(leftover_notes(&r, &[])),
    }
}

fn string_constraints(r: &DynamicMessage, c: &mut Map<String, Json>, notes: &mut Vec<String>) {
    let mut used: Vec<&str> = Vec::new();
    let mut mark = |n: &'static str| used.push(n);
    if let Some(v) = get(r, "const") {
        add(c, "const", to_json(&v));
        mark("const");
    }
    if let Some(n) = get(r, "len").and_then(|v| v.as_u64()) {
        add(c, "minLength", json!(n));
        add(c, "maxLength", json!(n));
        mark("len");
    }
    if let Some(n) = get(r, "min_len").and_then(|v| v.as_u64()) {
        add(c, "minLength", json!(n));
        mark("min_len");
    }
    if let Some(n) = get(r, "max_len").and_then(|v| v.as_u64()) {
        add(c, "maxLength", json!(n));
        mark("max_len");
    }
    let mut patterns = Vec::new();
    if let Some(p) = get(r, "pattern").and_then(|v| v.as_str().map(str::to_owned)) {
        patterns.push(p);
        mark("pattern");
    }
    if let Some(p) = get(r, "prefix").and_then(|v| v.as_str().map(str::to_owned)) {
        patterns.push(format!("^{}", regex_escape(&p)));
        mark("prefix");
    }
    if let Some(p) = get(r, "suffix").and_then(|v| v.as_str().map(str::to_owned)) {
        patterns.push(format!("{}$", regex_escape(&p)));
        mark("suffix");
    }
    if let Some(p) = get(r, "contains").and_then(|v| v.as_str().map(str::to_owned)) {
        patterns.push(regex_escape(&p));
        mark("contains");
    }
    if let Some(p) = get(r, "not_contains").and_then(|v| v.as_str().map(str::to_owned)) {
        add(c, "not", json!({"pattern": regex_escape(&p)}));
        mark("not_contains");
    }
    let values = get_list(r, "in");
    if !values.is_empty() {
        add(c, "enum", Json::Array(values.iter().map(to_json).collect()));
        mark("in");
    }
    let values = get_list(r, "not_in");
    if !values.is_empty() {
        add(
            c,
            "not",
            json!({"enum": values.iter().map(to_json).collect::<Vec<_>>()}),
        );
        mark("not_in");
    }
    let flag = |n: &str| get_bool(r, n);
    for (rule, format) in [
        ("email", "email"),
        ("hostname", "hostname"),
        ("uri", "uri"),
        ("uri_ref", "uri-reference"),
        ("ipv4", "ipv4"),
        ("ipv6", "ipv6"),
    ] {
        if flag(rule) {
            add(c, "format", json!(format));
            mark(rule);
        }
    }
    if flag("ip") {
        add(c, "anyOf", json!([{"format": "ipv4"}, {"format": "ipv6"}]));
        mark("ip");
    }
    if flag("uuid") {
        add(c, "format", json!("uuid"));
        patterns.insert(0, UUID_PATTERN.to_owned());
        mark("uuid");
    }
    if flag("tuuid") {
        patterns.push("^[0-9a-fA-F]{32}$".to_owned());
        mark("tuuid");
    }
    if flag("ulid") {
        patterns.push("^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$".to_owned());
        mark("ulid");
    }
    for p in patterns {
        add(c, "pattern", json!(p));
    }
    // Set well-known flags that are false say nothing.
    let leftover: Vec<String> = r
        .fields()
        .filter(|(f, v)| {
            !used.contains(&f.name())
                && f.name() != "example"
                && f.name() != "strict"
                && v.as_bool() != Some(false)
        })
        .map(|(f, v)| match v {
            Value::Bool(true) => format!("Must be a valid `{}`.", f.name()),
            v => format!("Rule `{}`: {}.", f.name(), render(v)),
        })
        .collect();
    notes.extend(leftover);
}

/// The names and the numbers of enum values (proto3 JSON takes either).
fn enum_values(allowed: &[(i32, String)]) -> Json {
    let mut out: Vec<Json> = allowed.iter().map(|(_, n)| json!(n)).collect();
    out.extend(allowed.iter().map(|(n, _)| json!(n)));
    Json::Array(out)
}

/// The schema of a value's zero value (an enum's zero is its first name or `0`).
fn zero_schema(target: &Target) -> Option<Json> {
    match target.kind() {
        Kind::Enum(e) => Some(json!({"enum": [zero_name(e), 0]})),
        _ => target.zero().map(|z| json!({"const": z})),
    }
}

/// What a "required field is missing" check of a field without presence refuses, as keywords:
/// the zero value of a scalar, an empty list or map (nothing for fields with presence).
pub(crate) fn non_zero_field(field: &FieldDescriptor) -> Map<String, Json> {
    let mut c = Map::new();
    if field.is_map() {
        add(&mut c, "minProperties", json!(1));
    } else if field.is_list() {
        add(&mut c, "minItems", json!(1));
    } else if !field.supports_presence() {
        non_zero(&Target(field.kind()), &mut c);
    }
    c
}

/// The constraint a `required` rule adds to a value without presence (non-zero).
fn non_zero(target: &Target, c: &mut Map<String, Json>) {
    match target.kind() {
        Kind::String | Kind::Bytes => add(c, "minLength", json!(1)),
        Kind::Bool => add(c, "const", json!(true)),
        Kind::Enum(e) => {
            let allowed: Vec<(i32, String)> = e
                .values()
                .filter(|v| v.number() != 0)
                .map(|v| (v.number(), v.name().to_owned()))
                .collect();
            add(c, "enum", enum_values(&allowed));
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            add(c, "pattern", json!(INT64_NON_ZERO_PATTERN))
        }
        Kind::Uint64 | Kind::Fixed64 => add(c, "pattern", json!(UINT64_NON_ZERO_PATTERN)),
        Kind::Message(_) => {}
        _ => add(c, "not", json!({"const": 0})),
    }
}

/// Applies one rule set (`FieldRules`) to one value schema; returns whether the zero value of
/// the value is refused.
fn apply_value(
    rules: &DynamicMessage,
    target: &Target,
    schema: &mut Json,
    notes: &mut Vec<String>,
    note_prefix: &str,
) -> bool {
    apply_value_ignoring(
        rules,
        target,
        schema,
        notes,
        note_prefix,
        ignore_of(rules, 0),
        false,
    )
}

/// The value kind inside a `google.protobuf.*Value` wrapper (rules apply to it when set).
fn wrapped_kind(kind: &Kind) -> Option<Kind> {
    let Kind::Message(m) = kind else {
        return None;
    };
    Some(match m.full_name() {
        "google.protobuf.DoubleValue" => Kind::Double,
        "google.protobuf.FloatValue" => Kind::Float,
        "google.protobuf.Int64Value" => Kind::Int64,
        "google.protobuf.UInt64Value" => Kind::Uint64,
        "google.protobuf.Int32Value" => Kind::Int32,
        "google.protobuf.UInt32Value" => Kind::Uint32,
        "google.protobuf.BoolValue" => Kind::Bool,
        "google.protobuf.StringValue" => Kind::String,
        "google.protobuf.BytesValue" => Kind::Bytes,
        _ => return None,
    })
}

/// `ignore` of a rule set, or the default when it is not given.
fn ignore_of(rules: &DynamicMessage, default: i32) -> i32 {
    get(rules, "ignore")
        .and_then(|v| v.as_enum_number())
        .unwrap_or(default)
}

fn apply_value_ignoring(
    rules: &DynamicMessage,
    target: &Target,
    schema: &mut Json,
    notes: &mut Vec<String>,
    note_prefix: &str,
    ignore: i32,
    wrapper: bool,
) -> bool {
    if ignore == IGNORE_ALWAYS {
        return false;
    }
    let mut c = Map::new();
    let mut hidden = Map::new();
    let mut own_notes = cel_notes(rules, note_prefix);
    value_constraints(rules, target, &mut c, &mut hidden, &mut own_notes);
    if get_bool(rules, "required") && !wrapper {
        non_zero(target, &mut c);
    }
    let refused = target.zero().is_some_and(|z| {
        let number_zero = json!(0);
        !accepts(&Json::Object(c.clone()), &z) || !accepts(&Json::Object(hidden), &number_zero)
    });
    if ignore == IGNORE_IF_ZERO_VALUE {
        if let Some(z) = target.zero() {
            if !c.is_empty() {
                let zero = zero_schema(target).unwrap_or_else(|| json!({"const": z}));
                c = Map::from_iter([("anyOf".to_owned(), json!([zero, Json::Object(c)]))]);
            }
            if !own_notes.is_empty() {
                own_notes.push(format!("{note_prefix}These rules do not apply to `{z}`."));
            }
        }
    }
    if wrapper {
        // `null` is an unset wrapper: no rules apply, unless the field is required.
        if !c.is_empty() {
            c = Map::from_iter([(
                "anyOf".to_owned(),
                json!([{"type": "null"}, Json::Object(c)]),
            )]);
        }
        if get_bool(rules, "required") {
            add(&mut c, "not", json!({"type": "null"}));
        }
        merge(schema, c);
        notes.extend(own_notes);
        return false;
    }
    merge(schema, c);
    notes.extend(own_notes);
    refused && ignore != IGNORE_IF_ZERO_VALUE
}

impl Rules {
    pub(crate) fn new(pool: &DescriptorPool) -> Self {
        Self {
            field: pool.get_extension_by_name(FIELD_EXT),
            message: pool.get_extension_by_name(MESSAGE_EXT),
            oneof: pool.get_extension_by_name(ONEOF_EXT),
        }
    }

    fn field_rules(&self, field: &FieldDescriptor) -> Option<DynamicMessage> {
        ext_message(&field.options(), &self.field)
    }

    fn in_message_oneof(&self, field: &FieldDescriptor) -> bool {
        let Some(rules) = ext_message(&field.parent_message().options(), &self.message) else {
            return false;
        };
        get_list(&rules, "oneof").iter().any(|rule| {
            rule.as_message().is_some_and(|r| {
                get_list(r, "fields")
                    .iter()
                    .any(|n| n.as_str() == Some(field.name()))
            })
        })
    }

    /// The paths a FieldMask field's `field_mask.in` rule allows (proto spelling), if any.
    pub(crate) fn field_mask_in(&self, field: &FieldDescriptor) -> Option<Vec<String>> {
        let rules = self.field_rules(field)?;
        let mask = get_message(&rules, "field_mask")?;
        let paths: Vec<String> = get_list(&mask, "in")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        (!paths.is_empty()).then_some(paths)
    }

    /// True when a real oneof must have one member set.
    pub(crate) fn oneof_required(&self, oneof: &OneofDescriptor) -> bool {
        ext_message(&oneof.options(), &self.oneof).is_some_and(|r| get_bool(&r, "required"))
    }

    /// Applies a field's rules to its schema (array and map schemas get item, key and value
    /// rules inside).
    pub(crate) fn apply_field(&self, field: &FieldDescriptor, schema: &mut Json) -> FieldOutcome {
        let mut out = FieldOutcome::default();
        let Some(rules) = self.field_rules(field) else {
            return out;
        };
        // A field named by a `(buf.validate.message).oneof` is IGNORE_IF_ZERO_VALUE unless it
        // says otherwise.
        let default = if self.in_message_oneof(field) {
            IGNORE_IF_ZERO_VALUE
        } else {
            0
        };
        let ignore = ignore_of(&rules, default);
        if ignore == IGNORE_ALWAYS {
            return out;
        }
        let explicit = get_bool(&rules, "required");
        if !field.is_list() && !field.is_map() {
            let wrapped = wrapped_kind(&field.kind());
            let refused = apply_value_ignoring(
                &rules,
                &Target(wrapped.clone().unwrap_or_else(|| field.kind())),
                schema,
                &mut out.notes,
                "",
                ignore,
                wrapped.is_some(),
            );
            out.required = if field.supports_presence() {
                explicit
            } else {
                explicit || (ignore == 0 && refused)
            };
            return out;
        }
        out.notes.extend(cel_notes(&rules, ""));
        let mut c = Map::new();
        let zero;
        if field.is_map() {
            zero = json!({});
            let Kind::Message(entry) = field.kind() else {
                return out;
            };
            if let Some(r) = get_message(&rules, "map") {
                if let Some(n) = get(&r, "min_pairs").and_then(|v| v.as_u64()) {
                    add(&mut c, "minProperties", json!(n));
                }
                if let Some(n) = get(&r, "max_pairs").and_then(|v| v.as_u64()) {
                    add(&mut c, "maxProperties", json!(n));
                }
                if let Some(keys) = get_message(&r, "keys") {
                    let key_kind = entry.map_entry_key_field().kind();
                    if key_kind == Kind::String {
                        let mut names = json!({});
                        apply_value(
                            &keys,
                            &Target(key_kind),
                            &mut names,
                            &mut out.notes,
                            "Each key: ",
                        );
                        if names.as_object().is_some_and(|o| !o.is_empty()) {
                            add(&mut c, "propertyNames", names);
                        }
                    } else {
                        // Non-string keys are numbers or booleans written as strings: the
                        // rules are only described.
                        let text = serde_json::to_string(&keys).unwrap_or_default();
                        out.notes.push(format!("Each key: rules `{text}`."));
                    }
                }
                if let Some(values) = get_message(&r, "values") {
                    let value_kind = entry.map_entry_value_field().kind();
                    if let Some(v) = schema.get_mut("additionalProperties") {
                        apply_value(
                            &values,
                            &Target(value_kind),
                            v,
                            &mut out.notes,
                            "Each value: ",
                        );
                    }
                }
                out.notes.extend(leftover_notes(
                    &r,
                    &["min_pairs", "max_pairs", "keys", "values"],
                ));
            }
            if explicit {
                add(&mut c, "minProperties", json!(1));
            }
        } else {
            zero = json!([]);
            if let Some(r) = get_message(&rules, "repeated") {
                if let Some(n) = get(&r, "min_items").and_then(|v| v.as_u64()) {
                    add(&mut c, "minItems", json!(n));
                }
                if let Some(n) = get(&r, "max_items").and_then(|v| v.as_u64()) {
                    add(&mut c, "maxItems", json!(n));
                }
                if get_bool(&r, "unique") {
                    add(&mut c, "uniqueItems", json!(true));
                }
                if let Some(items) = get_message(&r, "items") {
                    if let Some(v) = schema.get_mut("items") {
                        apply_value(
                            &items,
                            &Target(field.kind()),
                            v,
                            &mut out.notes,
                            "Each item: ",
                        );
                    }
                }
                out.notes.extend(leftover_notes(
                    &r,
                    &["min_items", "max_items", "unique", "items"],
                ));
            }
            if explicit {
                add(&mut c, "minItems", json!(1));
            }
        }
        let refused = !accepts(&Json::Object(c.clone()), &zero);
        if ignore == IGNORE_IF_ZERO_VALUE && !c.is_empty() {
            let empty = if field.is_map() {
                json!({"maxProperties": 0})
            } else {
                json!({"maxItems": 0})
            };
            c = Map::from_iter([("anyOf".to_owned(), json!([empty, Json::Object(c)]))]);
        }
        merge(schema, c);
        out.required = explicit || (ignore == 0 && refused);
        out
    }

    /// Message-level rules: CEL rules as sentences (returned), oneofs (real ones and
    /// `(buf.validate.message).oneof`) as `oneOf` / `not anyOf` clauses on the schema.
    /// `present` says which fields the schema lists (path-bound ones are left out).
    pub(crate) fn apply_message(
        &self,
        desc: &MessageDescriptor,
        present: &dyn Fn(&FieldDescriptor) -> bool,
        schema: &mut Json,
    ) -> Vec<String> {
        let mut clauses = Vec::new();
        for oneof in desc.oneofs().filter(|o| !o.is_synthetic()) {
            let members: Vec<FieldDescriptor> = oneof.fields().collect();
            if members.iter().any(|f| !present(f)) {
                continue;
            }
            let set: Vec<Json> = members
                .iter()
                .map(|f| json!({"required": [f.json_name()]}))
                .collect();
            clauses.extend(one_clause(set, self.oneof_required(&oneof)));
        }
        let mut notes = Vec::new();
        if let Some(rules) = ext_message(&desc.options(), &self.message) {
            notes.extend(cel_notes(&rules, ""));
            for rule in get_list(&rules, "oneof") {
                let Value::Message(rule) = rule else { continue };
                let names: Vec<String> = get_list(&rule, "fields")
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
                let fields: Vec<FieldDescriptor> = names
                    .iter()
                    .filter_map(|n| desc.get_field_by_name(n))
                    .collect();
                if fields.len() != names.len() || fields.iter().any(|f| !present(f)) {
                    continue;
                }
                let set: Vec<Json> = fields.iter().map(is_set).collect();
                clauses.extend(one_clause(set, get_bool(&rule, "required")));
                notes.push(format!(
                    "{} of {} may be set.",
                    if get_bool(&rule, "required") {
                        "Exactly one"
                    } else {
                        "At most one"
                    },
                    fields
                        .iter()
                        .map(|f| format!("`{}`", f.json_name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if let Json::Object(obj) = schema {
            match clauses.len() {
                0 => {}
                1 => {
                    if let Some(Json::Object(clause)) = clauses.pop() {
                        for (k, v) in clause {
                            add(obj, &k, v);
                        }
                    }
                }
                _ => {
                    if let Json::Array(all) = obj.entry("allOf").or_insert_with(|| json!([])) {
                        all.extend(clauses);
                    }
                }
            }
        }
        notes
    }
}

/// "Field is set" for `(buf.validate.message).oneof`: present and, without presence, not the
/// zero value.
fn is_set(field: &FieldDescriptor) -> Json {
    let name = field.json_name();
    if field.supports_presence() {
        return json!({"required": [name]});
    }
    let zero = if field.is_map() {
        json!({"maxProperties": 0})
    } else if field.is_list() {
        json!({"maxItems": 0})
    } else {
        let target = Target(field.kind());
        match target.zero() {
            Some(Json::String(s)) if s == "0" => json!({"pattern": "^-?0+$"}),
            Some(_) => zero_schema(&target).unwrap_or(Json::Null),
            None => return json!({"required": [name]}),
        }
    };
    json!({"required": [name], "properties": {name: {"not": zero}}})
}

/// Exactly one (`required`) or at most one of the members.
fn one_clause(set: Vec<Json>, required: bool) -> Option<Json> {
    if required {
        return Some(json!({"oneOf": set}));
    }
    if set.len() < 2 {
        return None;
    }
    let mut pairs = Vec::new();
    for i in 0..set.len() {
        for j in i + 1..set.len() {
            let only_required = |s: &Json| {
                s.as_object()
                    .is_some_and(|o| o.len() == 1 && o.contains_key("required"))
            };
            if only_required(&set[i]) && only_required(&set[j]) {
                let mut names = set[i]["required"].as_array().cloned().unwrap_or_default();
                names.extend(set[j]["required"].as_array().cloned().unwrap_or_default());
                pairs.push(json!({"required": names}));
            } else {
                pairs.push(json!({"allOf": [set[i], set[j]]}));
            }
        }
    }
    Some(json!({"not": {"anyOf": pairs}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped_for_patterns() {
        assert_eq!(regex_escape("a.b*(c)"), "a\\.b\\*\\(c\\)");
        assert_eq!(regex_escape("zen-1/x"), "zen-1/x");
    }

    #[test]
    fn keywords_combine_strictly() {
        let mut obj = Map::new();
        add(&mut obj, "minLength", json!(1));
        add(&mut obj, "minLength", json!(3));
        add(&mut obj, "maxLength", json!(10));
        add(&mut obj, "maxLength", json!(20));
        add(&mut obj, "pattern", json!("^a"));
        add(&mut obj, "pattern", json!("b$"));
        assert_eq!(
            Json::Object(obj),
            json!({"minLength": 3, "maxLength": 10, "pattern": "^a", "allOf": [{"pattern": "b$"}]})
        );
        let mut schema = json!({"$ref": "#/x"});
        merge(&mut schema, Map::from_iter([("enum".into(), json!(["A"]))]));
        assert_eq!(schema, json!({"allOf": [{"$ref": "#/x"}, {"enum": ["A"]}]}));
    }

    #[test]
    fn zero_values_are_judged_by_the_emitted_keywords() {
        let uuid = json!({"format": "uuid", "pattern": UUID_PATTERN});
        assert!(!accepts(&uuid, &json!("")));
        assert!(accepts(
            &json!({"anyOf": [{"const": ""}, uuid]}),
            &json!("")
        ));
        assert!(!accepts(&json!({"exclusiveMinimum": 0}), &json!(0)));
        assert!(accepts(&json!({"minimum": 0, "maximum": 9}), &json!(0)));
        assert!(!accepts(&json!({"not": {"const": 0}}), &json!(0.0)));
        assert!(accepts(&json!({"pattern": "^[a-z]*$"}), &json!("")));
        assert!(!accepts(&json!({"minItems": 1}), &json!([])));
        assert!(accepts(&json!({"maxProperties": 3}), &json!({})));
    }

    #[test]
    fn int64_patterns_stay_in_range() {
        let m = |p: &str, v: &str| regex::Regex::new(p).unwrap().is_match(v);
        assert!(m(INT64_PATTERN, "-999999999999999999"));
        assert!(!m(INT64_PATTERN, "9223372036854775808"));
        assert!(!m(INT64_PATTERN, "1e3"));
        assert!(m(UINT64_PATTERN, "9999999999999999999"));
        assert!(!m(UINT64_PATTERN, "18446744073709551616"));
        assert!(!m(UINT64_PATTERN, "-1"));
        assert!(m(INT64_NON_NEGATIVE_PATTERN, "0") && !m(INT64_NON_NEGATIVE_PATTERN, "-1"));
        assert!(m(INT64_POSITIVE_PATTERN, "007") && !m(INT64_POSITIVE_PATTERN, "0"));
        assert!(!m(INT64_POSITIVE_PATTERN, "-5"));
        assert!(m(INT64_NON_ZERO_PATTERN, "-5") && !m(INT64_NON_ZERO_PATTERN, "-000"));
        assert!(m(UINT64_NON_ZERO_PATTERN, "1") && !m(UINT64_NON_ZERO_PATTERN, "00"));
        // `required` on an int64 refuses "0" through the same keywords.
        let mut c = Map::new();
        non_zero(&Target(Kind::Int64), &mut c);
        assert!(!accepts(&Json::Object(c.clone()), &json!("0")));
        assert!(accepts(&Json::Object(c), &json!("-3")));
    }

    #[test]
    fn enum_restrictions_name_and_number() {
        let allowed = vec![(1, "A".to_owned()), (2, "B".to_owned())];
        assert_eq!(enum_values(&allowed), json!(["A", "B", 1, 2]));
    }

    #[test]
    fn oneof_clauses() {
        let set = vec![json!({"required": ["a"]}), json!({"required": ["b"]})];
        assert_eq!(
            one_clause(set.clone(), true),
            Some(json!({"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}))
        );
        assert_eq!(
            one_clause(set, false),
            Some(json!({"not": {"anyOf": [{"required": ["a", "b"]}]}}))
        );
        assert_eq!(one_clause(vec![json!({"required": ["a"]})], false), None);
    }
}
