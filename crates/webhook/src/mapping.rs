//! Turning a webhook payload into normalized security events.
//!
//! The types mirror the contract's `EventMapping` and serialize as its proto3 JSON (lowerCamel
//! names; the original snake_case names and enum numbers are accepted too), so the presets in
//! `mappings/*.json` are exactly what a user posts.
//!
//! Several rules may name the same target: they are tried in order and the first that yields a
//! value (its pointer finds a non-null value, or it has a `defaultValue`) wins. That lets one
//! mapping read payloads of several shapes, e.g. GitHub's code scanning, Dependabot and secret
//! scanning alerts, whose severities live at different places.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// How a payload becomes events (the contract's `EventMapping`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mapping {
    /// JSON pointer to an array whose elements each become one event; empty: the whole payload.
    #[serde(
        default,
        alias = "items_pointer",
        skip_serializing_if = "String::is_empty"
    )]
    pub items_pointer: String,
    /// Field rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldMapping>,
    /// Pointers whose values form the fingerprint.
    #[serde(
        default,
        alias = "fingerprint_pointers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub fingerprint_pointers: Vec<String>,
}

/// One rule filling an event field (the contract's `FieldMapping`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldMapping {
    /// The field to fill.
    pub target: Target,
    /// RFC 6901 pointer into the item; empty: use `default_value`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pointer: String,
    /// Used when the pointer is empty or finds nothing (null means none).
    #[serde(
        default,
        alias = "default_value",
        skip_serializing_if = "Value::is_null"
    )]
    pub default_value: Value,
    /// Translation of found string values; values not listed pass unchanged.
    #[serde(
        default,
        alias = "value_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub value_map: BTreeMap<String, String>,
}

/// Event fields a rule can fill (the contract's `MappedField`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Event type.
    Type,
    /// One-line title.
    Title,
    /// Severity.
    Severity,
    /// Category.
    Category,
    /// When it was detected.
    DetectTime,
    /// The sender's id.
    SourceEventId,
    /// Resource API version.
    ResourceApiVersion,
    /// Resource kind.
    ResourceKind,
    /// Resource namespace.
    ResourceNamespace,
    /// Resource name.
    ResourceName,
    /// Resource uid.
    ResourceUid,
    /// Details object.
    Details,
}

impl Target {
    const ALL: [Target; 12] = [
        Target::Type,
        Target::Title,
        Target::Severity,
        Target::Category,
        Target::DetectTime,
        Target::SourceEventId,
        Target::ResourceApiVersion,
        Target::ResourceKind,
        Target::ResourceNamespace,
        Target::ResourceName,
        Target::ResourceUid,
        Target::Details,
    ];

    /// The name without prefix, e.g. `SEVERITY`.
    pub fn short_name(self) -> &'static str {
        match self {
            Target::Type => "TYPE",
            Target::Title => "TITLE",
            Target::Severity => "SEVERITY",
            Target::Category => "CATEGORY",
            Target::DetectTime => "DETECT_TIME",
            Target::SourceEventId => "SOURCE_EVENT_ID",
            Target::ResourceApiVersion => "RESOURCE_API_VERSION",
            Target::ResourceKind => "RESOURCE_KIND",
            Target::ResourceNamespace => "RESOURCE_NAMESPACE",
            Target::ResourceName => "RESOURCE_NAME",
            Target::ResourceUid => "RESOURCE_UID",
            Target::Details => "DETAILS",
        }
    }

    /// The contract's enum number.
    pub fn number(self) -> i32 {
        Target::ALL
            .iter()
            .position(|t| *t == self)
            .map_or(0, |i| i as i32 + 1)
    }

    /// From the contract's enum number (0 and unknown numbers are none).
    pub fn from_number(n: i64) -> Option<Target> {
        usize::try_from(n - 1)
            .ok()
            .and_then(|i| Target::ALL.get(i).copied())
    }

    /// From `MAPPED_FIELD_SEVERITY`, `SEVERITY`, `severity`, ...
    pub fn from_name(name: &str) -> Option<Target> {
        let upper = name.trim().to_ascii_uppercase();
        let short = upper.strip_prefix("MAPPED_FIELD_").unwrap_or(&upper);
        Target::ALL.into_iter().find(|t| t.short_name() == short)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MAPPED_FIELD_{}", self.short_name())
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let target = match &value {
            Value::String(s) => Target::from_name(s),
            Value::Number(n) => n.as_i64().and_then(Target::from_number),
            _ => None,
        };
        target.ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown mapping target {value} (expected e.g. MAPPED_FIELD_SEVERITY)"
            ))
        })
    }
}

/// Severity of an event, ordered from least to most serious.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Severity {
    /// Informational.
    #[default]
    Info = 1,
    /// Low.
    Low = 2,
    /// Medium.
    Medium = 3,
    /// High.
    High = 4,
    /// Critical.
    Critical = 5,
}

impl Severity {
    /// `SEVERITY_HIGH`, `high`, `High`, `4` and `4` as a number all give High.
    pub fn parse(value: &Value) -> Option<Severity> {
        match value {
            Value::Number(n) => n.as_i64().and_then(Severity::from_number),
            Value::String(s) => {
                let upper = s.trim().to_ascii_uppercase();
                let short = upper.strip_prefix("SEVERITY_").unwrap_or(&upper);
                match short {
                    "INFO" => Some(Severity::Info),
                    "LOW" => Some(Severity::Low),
                    "MEDIUM" => Some(Severity::Medium),
                    "HIGH" => Some(Severity::High),
                    "CRITICAL" => Some(Severity::Critical),
                    _ => short.parse::<i64>().ok().and_then(Severity::from_number),
                }
            }
            _ => None,
        }
    }

    fn from_number(n: i64) -> Option<Severity> {
        [
            Severity::Info,
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .get(usize::try_from(n - 1).ok()?)
        .copied()
    }

    /// The contract's enum number (1-5).
    pub fn number(self) -> i32 {
        self as i32
    }
}

/// Broad area of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Category {
    /// Vulnerabilities, threats, intrusions.
    #[default]
    Security = 1,
    /// Policy and benchmark compliance.
    Compliance = 2,
    /// Operational problems.
    Operations = 3,
    /// Performance problems.
    Performance = 4,
    /// Cost and waste.
    Cost = 5,
}

impl Category {
    /// `EVENT_CATEGORY_COMPLIANCE`, `compliance`, ... (any case).
    pub fn parse(value: &Value) -> Option<Category> {
        let s = value.as_str()?;
        let upper = s.trim().to_ascii_uppercase();
        match upper.strip_prefix("EVENT_CATEGORY_").unwrap_or(&upper) {
            "SECURITY" => Some(Category::Security),
            "COMPLIANCE" => Some(Category::Compliance),
            "OPERATIONS" => Some(Category::Operations),
            "PERFORMANCE" => Some(Category::Performance),
            "COST" => Some(Category::Cost),
            _ => None,
        }
    }

    /// The name without prefix, e.g. `SECURITY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Security => "SECURITY",
            Category::Compliance => "COMPLIANCE",
            Category::Operations => "OPERATIONS",
            Category::Performance => "PERFORMANCE",
            Category::Cost => "COST",
        }
    }

    /// The contract's enum number (1-5).
    pub fn number(self) -> i32 {
        self as i32
    }
}

/// The Kubernetes object an event concerns; empty strings for parts not known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// API group and version.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// What [`map`] falls back on when the mapping says nothing.
#[derive(Clone, Debug)]
pub struct MapDefaults {
    /// Event type when none is mapped (the source's name).
    pub type_name: String,
    /// Source event id when none is mapped (the delivery id).
    pub delivery_id: Option<String>,
    /// Detection time when none is mapped (the receive time).
    pub received: DateTime<Utc>,
}

/// One normalized event.
#[derive(Clone, Debug, PartialEq)]
pub struct MappedEvent {
    /// Source-specific kind of event.
    pub r#type: String,
    /// One-line summary (may be empty).
    pub title: String,
    /// Severity.
    pub severity: Severity,
    /// Category.
    pub category: Category,
    /// When it was detected.
    pub detect_time: DateTime<Utc>,
    /// The sender's id of the event, if known.
    pub source_event_id: Option<String>,
    /// The object concerned.
    pub resource: Resource,
    /// Source-specific details (a JSON object).
    pub details: Map<String, Value>,
    /// Lower-case hex SHA-256 of the fingerprint values joined with `|`; none when the mapping
    /// has no fingerprint pointers or none of them finds anything.
    pub fingerprint: Option<String>,
}

/// A payload the mapping cannot turn into events, saying where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{pointer}: {message}", item.map(|i| format!("item {i}: ")).unwrap_or_default())]
pub struct MappingError {
    /// Index of the item in the `items_pointer` array, when there is one.
    pub item: Option<usize>,
    /// The pointer (or target) concerned.
    pub pointer: String,
    /// What was wrong.
    pub message: String,
}

/// A mapping that cannot work, found when a source is created or changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {description}")]
pub struct MappingViolation {
    /// Path of the bad field inside the mapping, e.g. `fields[2].pointer`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// Whether `pointer` is a syntactically valid RFC 6901 JSON pointer (empty is the whole item).
pub fn valid_pointer(pointer: &str) -> bool {
    if pointer.is_empty() {
        return true;
    }
    if !pointer.starts_with('/') {
        return false;
    }
    // `~` must be followed by `0` or `1`.
    let bytes = pointer.as_bytes();
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b != b'~' || matches!(bytes.get(i + 1), Some(b'0' | b'1')))
}

impl Mapping {
    /// Checks the mapping when a source is created or changed; every problem is reported with
    /// the path of the field at fault (relative to the mapping).
    pub fn validate(&self) -> Result<(), Vec<MappingViolation>> {
        let mut errors = Vec::new();
        let mut push = |field: String, description: String| {
            errors.push(MappingViolation { field, description })
        };
        let pointer_problem = "must be empty or an RFC 6901 JSON pointer such as `/alert/severity` (`~0` for `~`, `~1` for `/`)";
        if !valid_pointer(&self.items_pointer) {
            push("items_pointer".into(), pointer_problem.into());
        }
        if self.fields.len() > 64 {
            push("fields".into(), "at most 64 rules".into());
        }
        for (i, rule) in self.fields.iter().enumerate() {
            if !valid_pointer(&rule.pointer) {
                push(format!("fields[{i}].pointer"), pointer_problem.into());
            }
            if rule.pointer.is_empty() && rule.default_value.is_null() {
                push(
                    format!("fields[{i}]"),
                    "needs a pointer or a default_value".into(),
                );
            }
            if !rule.default_value.is_null() {
                if let Err(message) = convert(rule.target, &rule.default_value) {
                    push(format!("fields[{i}].default_value"), message);
                }
            }
            for (from, to) in &rule.value_map {
                if let Err(message) = convert(rule.target, &Value::String(to.clone())) {
                    push(format!("fields[{i}].value_map[{from:?}]"), message);
                }
            }
        }
        if self.fingerprint_pointers.len() > 16 {
            push("fingerprint_pointers".into(), "at most 16 pointers".into());
        }
        for (i, pointer) in self.fingerprint_pointers.iter().enumerate() {
            if pointer.is_empty() || !valid_pointer(pointer) {
                push(
                    format!("fingerprint_pointers[{i}]"),
                    "must be an RFC 6901 JSON pointer such as `/repository/full_name`".into(),
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// A field's value after conversion.
enum Converted {
    Text(String),
    Severity(Severity),
    Category(Category),
    Time(DateTime<Utc>),
    Object(Map<String, Value>),
}

/// Converts a JSON value for `target`, or says why it cannot be.
fn convert(target: Target, value: &Value) -> Result<Converted, String> {
    match target {
        Target::Severity => Severity::parse(value)
            .map(Converted::Severity)
            .ok_or_else(|| {
                format!(
                    "{} is not a severity (INFO, LOW, MEDIUM, HIGH, CRITICAL, or 1 to 5)",
                    short(value)
                )
            }),
        Target::Category => Category::parse(value)
            .map(Converted::Category)
            .ok_or_else(|| {
                format!(
                    "{} is not a category (SECURITY, COMPLIANCE, OPERATIONS, PERFORMANCE or COST)",
                    short(value)
                )
            }),
        Target::DetectTime => parse_time(value)
            .map(Converted::Time)
            .ok_or_else(|| format!("{} is not an RFC 3339 time or Unix seconds", short(value))),
        Target::Details => match value {
            Value::Object(map) => Ok(Converted::Object(map.clone())),
            _ => Err(format!("{} is not a JSON object", short(value))),
        },
        _ => match value {
            Value::String(s) => Ok(Converted::Text(s.clone())),
            Value::Number(n) => Ok(Converted::Text(n.to_string())),
            Value::Bool(b) => Ok(Converted::Text(b.to_string())),
            _ => Err(format!("{} is not a string", short(value))),
        },
    }
}

/// A value quoted for an error message, cut short.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => {
            let secs = n.as_f64()?;
            // Years 1970 to 9999; anything else is a unit mistake (milliseconds) or garbage.
            if !(0.0..253_402_300_800.0).contains(&secs) {
                return None;
            }
            let whole = secs.trunc() as i64;
            let nanos = ((secs - secs.trunc()) * 1e9) as u32;
            Utc.timestamp_opt(whole, nanos).single()
        }
        _ => None,
    }
}

/// The value for `target` in `item` per the rules, converted; `None` when no rule yields one.
fn resolve(
    rules: &[&FieldMapping],
    item: &Value,
    index: Option<usize>,
) -> Result<Option<Converted>, MappingError> {
    for rule in rules {
        let found = if rule.pointer.is_empty() {
            None
        } else {
            item.pointer(&rule.pointer).filter(|v| !v.is_null())
        };
        let (value, pointer) = match found {
            Some(Value::String(s)) => match rule.value_map.get(s) {
                Some(mapped) => (Value::String(mapped.clone()), rule.pointer.clone()),
                None => (Value::String(s.clone()), rule.pointer.clone()),
            },
            Some(other) => (other.clone(), rule.pointer.clone()),
            None if !rule.default_value.is_null() => (
                rule.default_value.clone(),
                format!("{} default_value", rule.target),
            ),
            None => continue,
        };
        return convert(rule.target, &value)
            .map(Some)
            .map_err(|message| MappingError {
                item: index,
                pointer,
                message,
            });
    }
    Ok(None)
}

/// Turns `payload` into events. With no mapping: one event with every default and the whole
/// payload as details. With `items_pointer`: one event per element of that array (an empty
/// array gives no events).
pub fn map(
    mapping: Option<&Mapping>,
    payload: &Value,
    defaults: &MapDefaults,
) -> Result<Vec<MappedEvent>, MappingError> {
    let empty = Mapping::default();
    let mapping = mapping.unwrap_or(&empty);
    if mapping.items_pointer.is_empty() {
        return Ok(vec![map_item(mapping, payload, None, defaults)?]);
    }
    let items = payload
        .pointer(&mapping.items_pointer)
        .ok_or_else(|| MappingError {
            item: None,
            pointer: mapping.items_pointer.clone(),
            message: "items_pointer finds nothing in the payload".into(),
        })?
        .as_array()
        .ok_or_else(|| MappingError {
            item: None,
            pointer: mapping.items_pointer.clone(),
            message: "items_pointer must find an array".into(),
        })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| map_item(mapping, item, Some(i), defaults))
        .collect()
}

fn map_item(
    mapping: &Mapping,
    item: &Value,
    index: Option<usize>,
    defaults: &MapDefaults,
) -> Result<MappedEvent, MappingError> {
    let mut by_target: BTreeMap<Target, Vec<&FieldMapping>> = BTreeMap::new();
    for rule in &mapping.fields {
        by_target.entry(rule.target).or_default().push(rule);
    }
    let get = |target: Target| -> Result<Option<Converted>, MappingError> {
        match by_target.get(&target) {
            Some(rules) => resolve(rules, item, index),
            None => Ok(None),
        }
    };
    let text = |target: Target| -> Result<Option<String>, MappingError> {
        Ok(match get(target)? {
            Some(Converted::Text(s)) => Some(s),
            _ => None,
        })
    };
    let severity = match get(Target::Severity)? {
        Some(Converted::Severity(s)) => s,
        _ => Severity::Info,
    };
    let category = match get(Target::Category)? {
        Some(Converted::Category(c)) => c,
        _ => Category::Security,
    };
    let detect_time = match get(Target::DetectTime)? {
        Some(Converted::Time(t)) => t,
        _ => defaults.received,
    };
    let details = match get(Target::Details)? {
        Some(Converted::Object(map)) => map,
        _ => match item {
            Value::Object(map) => map.clone(),
            // Details are an object; a scalar or array item is kept under `value`.
            other => Map::from_iter([("value".to_owned(), other.clone())]),
        },
    };
    Ok(MappedEvent {
        r#type: text(Target::Type)?
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| defaults.type_name.clone()),
        title: text(Target::Title)?.unwrap_or_default(),
        severity,
        category,
        detect_time,
        source_event_id: text(Target::SourceEventId)?
            .filter(|s| !s.is_empty())
            .or_else(|| defaults.delivery_id.clone()),
        resource: Resource {
            api_version: text(Target::ResourceApiVersion)?.unwrap_or_default(),
            kind: text(Target::ResourceKind)?.unwrap_or_default(),
            namespace: text(Target::ResourceNamespace)?.unwrap_or_default(),
            name: text(Target::ResourceName)?.unwrap_or_default(),
            uid: text(Target::ResourceUid)?.unwrap_or_default(),
        },
        details,
        fingerprint: fingerprint(&mapping.fingerprint_pointers, item),
    })
}

/// SHA-256 (lower-case hex) of the values found at `pointers`, joined with `|`: strings as they
/// are, other values as compact JSON, missing ones as empty strings. None when there are no
/// pointers or none finds anything (folding every event into one would hide them all).
fn fingerprint(pointers: &[String], item: &Value) -> Option<String> {
    if pointers.is_empty() {
        return None;
    }
    let mut any = false;
    let parts: Vec<String> = pointers
        .iter()
        .map(|p| match item.pointer(p) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => {
                any = true;
                s.clone()
            }
            Some(other) => {
                any = true;
                other.to_string()
            }
        })
        .collect();
    any.then(|| hex::encode(Sha256::digest(parts.join("|").as_bytes())))
}
