//! Mapping rules and the ready presets in `mappings/`, applied to realistic payloads
//! (`tests/fixtures/`).

use std::path::PathBuf;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zen_webhook::mapping::{Category, Severity, Target};
use zen_webhook::{map, MapDefaults, Mapping};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn preset(name: &str) -> Mapping {
    let text = std::fs::read_to_string(repo_root().join("mappings").join(name)).unwrap();
    let mapping: Mapping = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    mapping
        .validate()
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    mapping
}

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn defaults() -> MapDefaults {
    MapDefaults {
        type_name: "my-source".into(),
        delivery_id: Some("delivery-1".into()),
        received: Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap(),
    }
}

fn sha(joined: &str) -> String {
    hex::encode(Sha256::digest(joined.as_bytes()))
}

fn time(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn github_code_scanning_alert() {
    let events = map(
        Some(&preset("github-security-alerts.json")),
        &fixture("github-code-scanning-alert.json"),
        &defaults(),
    )
    .unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.r#type, "js/sql-injection");
    assert_eq!(e.title, "Database query built from user-controlled sources");
    assert_eq!(
        e.severity,
        Severity::Critical,
        "security_severity_level wins over rule.severity"
    );
    assert_eq!(e.category, Category::Security);
    assert_eq!(
        e.detect_time,
        time("2026-11-20T10:15:30Z"),
        "updated_at is null: created_at"
    );
    assert_eq!(e.source_event_id.as_deref(), Some("delivery-1"));
    assert_eq!(
        (e.resource.kind.as_str(), e.resource.name.as_str()),
        ("GitHubRepository", "octo-org/payments")
    );
    assert_eq!(e.resource.uid, "R_kgDOAK9XFQ");
    assert_eq!(
        e.details["alert"]["number"], 42,
        "details default to the whole payload"
    );
    assert_eq!(
        e.fingerprint.as_deref(),
        Some(sha("octo-org/payments|42|https://github.com/octo-org/payments/security/code-scanning/42").as_str())
    );
}

#[test]
fn github_code_scanning_alert_without_security_severity_uses_rule_severity() {
    let mut payload = fixture("github-code-scanning-alert.json");
    payload["alert"]["rule"]
        .as_object_mut()
        .unwrap()
        .remove("security_severity_level");
    payload["alert"]["rule"]["severity"] = json!("warning");
    let e = &map(
        Some(&preset("github-security-alerts.json")),
        &payload,
        &defaults(),
    )
    .unwrap()[0];
    assert_eq!(e.severity, Severity::Medium);
}

#[test]
fn github_dependabot_alert() {
    let e = &map(
        Some(&preset("github-security-alerts.json")),
        &fixture("github-dependabot-alert.json"),
        &defaults(),
    )
    .unwrap()[0];
    assert_eq!(e.r#type, "GHSA-35jh-r3h4-6jhm");
    assert_eq!(e.title, "Command Injection in lodash");
    assert_eq!(e.severity, Severity::High);
    assert_eq!(e.detect_time, time("2026-11-21T08:00:05Z"));
    let mut moderate = fixture("github-dependabot-alert.json");
    moderate["alert"]["security_advisory"]["severity"] = json!("moderate");
    let e = &map(
        Some(&preset("github-security-alerts.json")),
        &moderate,
        &defaults(),
    )
    .unwrap()[0];
    assert_eq!(
        e.severity,
        Severity::Medium,
        "GitHub's `moderate` is MEDIUM"
    );
}

#[test]
fn github_secret_scanning_alert() {
    let e = &map(
        Some(&preset("github-security-alerts.json")),
        &fixture("github-secret-scanning-alert.json"),
        &defaults(),
    )
    .unwrap()[0];
    assert_eq!(e.r#type, "github_personal_access_token");
    assert_eq!(e.title, "GitHub Personal Access Token");
    assert_eq!(
        e.severity,
        Severity::High,
        "no severity in the payload: the preset's default"
    );
    // Alert numbers are per kind: a secret scanning alert #3 and a code scanning alert #3 in
    // the same repository must not fold together.
    let mut code = fixture("github-code-scanning-alert.json");
    code["alert"]["number"] = json!(3);
    let c = &map(
        Some(&preset("github-security-alerts.json")),
        &code,
        &defaults(),
    )
    .unwrap()[0];
    assert_ne!(e.fingerprint, c.fingerprint);
}

#[test]
fn falco() {
    let e = &map(
        Some(&preset("falco.json")),
        &fixture("falco.json"),
        &defaults(),
    )
    .unwrap()[0];
    assert_eq!(e.r#type, "Terminal shell in container");
    assert!(e.title.contains("A shell was spawned"));
    assert_eq!(e.severity, Severity::Low, "Notice");
    assert_eq!(e.detect_time, time("2026-11-23T10:31:12.345678901Z"));
    assert_eq!(
        e.source_event_id.as_deref(),
        Some("6a4c1f3e-7b2d-4e8f-9a0b-1c2d3e4f5a6b")
    );
    assert_eq!(
        (
            e.resource.api_version.as_str(),
            e.resource.kind.as_str(),
            e.resource.namespace.as_str(),
            e.resource.name.as_str()
        ),
        ("v1", "Pod", "shop", "checkout-7d9f8b6c5-x2x9q")
    );
    assert_eq!(
        e.fingerprint.as_deref(),
        Some(
            sha("Terminal shell in container|shop|checkout-7d9f8b6c5-x2x9q|3ad7b26ded6d").as_str()
        )
    );
    for (priority, severity) in [
        ("Critical", Severity::Critical),
        ("Error", Severity::High),
        ("Warning", Severity::Medium),
        ("Debug", Severity::Info),
        ("emergency", Severity::Critical),
    ] {
        let mut p = fixture("falco.json");
        p["priority"] = json!(priority);
        assert_eq!(
            map(Some(&preset("falco.json")), &p, &defaults()).unwrap()[0].severity,
            severity,
            "{priority}"
        );
    }
}

#[test]
fn presets_are_the_contracts_json_and_round_trip() {
    for name in ["github-security-alerts.json", "falco.json"] {
        let original: Value = serde_json::from_str(
            &std::fs::read_to_string(repo_root().join("mappings").join(name)).unwrap(),
        )
        .unwrap();
        let mapping = preset(name);
        assert_eq!(
            serde_json::to_value(&mapping).unwrap(),
            original,
            "{name} re-serializes to itself"
        );
    }
}

#[test]
fn no_mapping_gives_one_raw_event_with_defaults() {
    let payload = json!({"anything": [1, 2, 3]});
    let events = map(None, &payload, &defaults()).unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.r#type, "my-source");
    assert_eq!(e.title, "");
    assert_eq!(
        (e.severity, e.category),
        (Severity::Info, Category::Security)
    );
    assert_eq!(e.detect_time, defaults().received);
    assert_eq!(e.source_event_id.as_deref(), Some("delivery-1"));
    assert_eq!(Value::Object(e.details.clone()), payload);
    assert_eq!(e.fingerprint, None);
    // A non-object payload is kept under `value`.
    let e = &map(None, &json!([1, 2]), &defaults()).unwrap()[0];
    assert_eq!(e.details["value"], json!([1, 2]));
}

#[test]
fn items_pointer_gives_one_event_per_element() {
    let mapping: Mapping = serde_json::from_value(json!({
        "itemsPointer": "/findings",
        "fields": [
            {"target": "MAPPED_FIELD_SEVERITY", "pointer": "/sev"},
            {"target": "TITLE", "pointer": "/msg"},
            {"target": 4, "defaultValue": "event_category_compliance"},
            {"target": "MAPPED_FIELD_DETECT_TIME", "pointer": "/at"},
            {"target": "MAPPED_FIELD_DETAILS", "pointer": "/extra"}
        ],
        "fingerprintPointers": ["/msg", "/missing"]
    }))
    .unwrap();
    mapping.validate().unwrap();
    let payload = json!({"findings": [
        {"sev": "SEVERITY_CRITICAL", "msg": "a", "at": 1790000000, "extra": {"k": 1}},
        {"sev": 2, "msg": "b", "at": 1790000000.5},
        {"sev": "4", "msg": "c"}
    ]});
    let events = map(Some(&mapping), &payload, &defaults()).unwrap();
    assert_eq!(
        events.iter().map(|e| e.severity).collect::<Vec<_>>(),
        [Severity::Critical, Severity::Low, Severity::High]
    );
    assert!(events.iter().all(|e| e.category == Category::Compliance));
    assert_eq!(
        events[0].detect_time,
        Utc.timestamp_opt(1_790_000_000, 0).unwrap()
    );
    assert_eq!(
        events[1].detect_time,
        Utc.timestamp_opt(1_790_000_000, 500_000_000).unwrap()
    );
    assert_eq!(events[2].detect_time, defaults().received);
    assert_eq!(Value::Object(events[0].details.clone()), json!({"k": 1}));
    assert_eq!(events[1].details["msg"], "b", "no /extra: the whole item");
    assert_eq!(
        events[0].fingerprint.as_deref(),
        Some(sha("a|").as_str()),
        "missing values are empty"
    );
    assert!(map(Some(&mapping), &json!({"findings": []}), &defaults())
        .unwrap()
        .is_empty());
}

#[test]
fn mapping_errors_say_which_pointer_and_what() {
    let mapping: Mapping = serde_json::from_value(json!({
        "items_pointer": "/items",
        "fields": [{"target": "MAPPED_FIELD_SEVERITY", "pointer": "/level"}]
    }))
    .unwrap();
    let err = map(
        Some(&mapping),
        &json!({"items": [{"level": "LOW"}, {"level": "bogus"}]}),
        &defaults(),
    )
    .unwrap_err();
    assert_eq!(err.item, Some(1));
    assert_eq!(err.pointer, "/level");
    assert!(err.message.contains("\"bogus\" is not a severity"), "{err}");
    assert_eq!(err.to_string(), format!("item 1: /level: {}", err.message));

    let err = map(
        Some(&mapping),
        &json!({"items": {"not": "an array"}}),
        &defaults(),
    )
    .unwrap_err();
    assert!(err.message.contains("array"), "{err}");
    let err = map(Some(&mapping), &json!({}), &defaults()).unwrap_err();
    assert_eq!(err.pointer, "/items");

    let details: Mapping = serde_json::from_value(
        json!({"fields": [{"target": "MAPPED_FIELD_DETAILS", "pointer": "/d"}]}),
    )
    .unwrap();
    let err = map(Some(&details), &json!({"d": "text"}), &defaults()).unwrap_err();
    assert!(err.message.contains("not a JSON object"), "{err}");
    let time: Mapping = serde_json::from_value(
        json!({"fields": [{"target": "MAPPED_FIELD_DETECT_TIME", "pointer": "/t"}]}),
    )
    .unwrap();
    assert!(map(Some(&time), &json!({"t": "yesterday"}), &defaults()).is_err());
    assert!(
        map(Some(&time), &json!({"t": 1790000000000i64}), &defaults()).is_err(),
        "milliseconds are refused, not misread"
    );
}

#[test]
fn invalid_mappings_are_refused_at_configuration_time() {
    let mapping: Mapping = serde_json::from_value(json!({
        "itemsPointer": "items",
        "fields": [
            {"target": "MAPPED_FIELD_TYPE", "pointer": "/a~2"},
            {"target": "MAPPED_FIELD_SEVERITY", "defaultValue": "URGENT"},
            {"target": "MAPPED_FIELD_CATEGORY", "pointer": "/c", "valueMap": {"x": "NOPE"}},
            {"target": "MAPPED_FIELD_TITLE"}
        ],
        "fingerprintPointers": [""]
    }))
    .unwrap();
    let fields: Vec<String> = mapping
        .validate()
        .unwrap_err()
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "items_pointer",
            "fields[0].pointer",
            "fields[1].default_value",
            "fields[2].value_map[\"x\"]",
            "fields[3]",
            "fingerprint_pointers[0]"
        ]
    );
    assert!(serde_json::from_value::<Mapping>(
        json!({"fields": [{"target": "MAPPED_FIELD_NOPE"}]})
    )
    .is_err());
    assert!(serde_json::from_value::<Mapping>(json!({"unknownMember": 1})).is_err());
}

#[test]
fn targets_parse_from_any_spelling() {
    assert_eq!(
        Target::from_name("MAPPED_FIELD_RESOURCE_NAME"),
        Some(Target::ResourceName)
    );
    assert_eq!(
        Target::from_name("resource_name"),
        Some(Target::ResourceName)
    );
    assert_eq!(Target::from_number(12), Some(Target::Details));
    assert_eq!(Target::Details.number(), 12);
    assert_eq!(Target::from_number(0), None);
    assert_eq!(
        Severity::parse(&json!("severity_medium")),
        Some(Severity::Medium)
    );
    assert_eq!(Severity::parse(&json!(6)), None);
    assert_eq!(Category::parse(&json!("Cost")), Some(Category::Cost));
}
