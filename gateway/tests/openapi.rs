//! The OpenAPI document: structure, schemas, security, and that the real Zen contracts load.

mod common;

use std::collections::BTreeSet;

use common::{config, start};
use serde_json::{json, Value};
use zen_gateway::{Gateway, GatewayConfig};

/// Every `$ref` in the document resolves.
fn check_refs(doc: &Value, node: &Value, broken: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let pointer = r.strip_prefix('#').unwrap_or("!");
                if doc.pointer(pointer).is_none() {
                    broken.push(r.clone());
                }
            }
            for v in map.values() {
                check_refs(doc, v, broken);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v, broken)),
        _ => {}
    }
}

/// Runs `openapi-spec-validator` (PyPI; in the project's dev requirements) on the document
/// when it is installed; prints why not otherwise.
fn external_validator(doc: &Value, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("{name}-openapi.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        eprintln!(
            "openapi-spec-validator not installed; structural checks only ({})",
            file.display()
        );
        return;
    }
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator rejected {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Structural checks an OpenAPI 3.1 validator would make on the parts we generate.
fn validate(doc: &Value) {
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut broken = Vec::new();
    check_refs(doc, doc, &mut broken);
    assert!(broken.is_empty(), "unresolved refs: {broken:?}");
    let mut operation_ids = BTreeSet::new();
    let mut shapes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(path.starts_with('/'));
        let shape: String = {
            let mut depth = 0;
            path.chars()
                .filter(|c| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => return depth == 0,
                    }
                    false
                })
                .collect()
        };
        assert!(
            shapes.insert(shape),
            "two paths differ only in parameter names: {path}"
        );
        let names: BTreeSet<String> = path
            .split('{')
            .skip(1)
            .map(|s| s.split('}').next().unwrap().to_owned())
            .collect();
        let mut ops: Vec<(String, &Value)> = item
            .as_object()
            .unwrap()
            .iter()
            .filter(|(m, _)| !m.starts_with("x-"))
            .map(|(m, op)| (m.clone(), op))
            .collect();
        if let Some(custom) = item.get("x-custom-methods").and_then(Value::as_object) {
            ops.extend(custom.iter().map(|(m, op)| (m.clone(), op)));
        }
        for (method, op) in ops {
            assert!(
                ["get", "put", "post", "delete", "patch", "options", "head", "trace"]
                    .contains(&method.as_str())
                    || method.chars().all(|c| c.is_ascii_uppercase()),
                "{method}"
            );
            assert!(operation_ids.insert(op["operationId"].as_str().unwrap().to_owned()));
            let path_params: BTreeSet<String> = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| {
                    assert_eq!(p["required"], true);
                    p["name"].as_str().unwrap().to_owned()
                })
                .collect();
            assert_eq!(path_params, names, "path parameters of {method} {path}");
            for p in op["parameters"].as_array().unwrap() {
                assert!(
                    p.get("$ref").is_some() || (p["schema"].is_object() && p["name"].is_string())
                );
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("200") && responses.contains_key("default"));
            for (code, r) in responses {
                assert!(code == "default" || code.parse::<u16>().is_ok());
                assert!(r.get("$ref").is_some() || r["description"].is_string());
            }
        }
    }
}

#[tokio::test]
async fn openapi_document_describes_the_routes() {
    let h = start(config()).await;
    let doc: Value = h
        .client
        .get(h.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc, h.gateway.openapi());
    validate(&doc);
    external_validator(&doc, "test");
    let paths = &doc["paths"];

    // Custom verb, path params, mutating header, body binding, field docs.
    let suspend = &paths["/v1/tenants/{tenant_id}/things/{thing_id}:suspend"]["post"];
    assert_eq!(suspend["operationId"], "TestService_SuspendThing");
    assert_eq!(
        suspend["summary"],
        "Suspends a thing (custom verb, whole-body binding)."
    );
    let params = suspend["parameters"].as_array().unwrap();
    assert!(params.contains(&json!({"$ref": "#/components/parameters/RequestIdRequired"})));
    let body = &suspend["requestBody"]["content"]["application/json"]["schema"];
    assert!(
        body["properties"].get("tenantId").is_none(),
        "path-bound fields leave the body"
    );
    assert_eq!(body["required"], json!(["reason"]));
    assert_eq!(body["properties"]["version"]["type"], "string");
    assert_eq!(body["properties"]["version"]["format"], "int64");
    assert_eq!(
        suspend["responses"]["415"],
        json!({"$ref": "#/components/responses/Problem"})
    );

    // Query parameters of unbound scalar fields, nested with JSON names; enums; repeated.
    let search = &paths["/v1/search"]["get"];
    assert_eq!(
        search["security"],
        json!([]),
        "PUBLIC-only methods need no token"
    );
    let query: Vec<&Value> = search["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .collect();
    let names: Vec<&str> = query.iter().map(|p| p["name"].as_str().unwrap()).collect();
    for expected in [
        "query",
        "tags",
        "color",
        "filter.minSize",
        "filter.colors",
        "since",
        "pageSize",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let tags = query.iter().find(|p| p["name"] == "tags").unwrap();
    assert_eq!(tags["schema"]["type"], "array");
    let since = query.iter().find(|p| p["name"] == "since").unwrap();
    assert_eq!(since["schema"]["format"], "date-time");

    // Streaming, raw bodies, redirects.
    let watch = &paths["/v1/tenants/{tenant_id}/things:watch"]["get"];
    assert!(watch["responses"]["200"]["content"]["application/x-ndjson"].is_object());
    let download = &paths["/v1/files/{file_id}"]["get"];
    assert!(download["responses"]["200"]["content"]["*/*"].is_object());
    let hook = &paths["/hooks/{source_id}"]["post"];
    assert!(hook["requestBody"]["content"]["*/*"].is_object());
    assert!(paths["/v1/login"]["get"]["responses"]["302"].is_object());
    assert!(paths["/v1/cache/{key}"]["x-custom-methods"]["PURGE"].is_object());
    assert!(paths.get("/v1/uploads").is_none());
    // Additional bindings get their own operation id.
    assert_eq!(
        paths["/v1/things/{thing_id}"]["get"]["operationId"],
        "TestService_GetThing_1"
    );
    // UpdateThing's `{thing.thing_id}` shares the spelling of the same-shaped path.
    assert!(paths["/v1/tenants/{tenant_id}/things/{thing_id}"]["patch"].is_object());

    // Schemas: proto3 JSON types, behaviours, comments, oneofs, maps.
    let thing = &doc["components"]["schemas"]["zen.gateway.test.v1.Thing"];
    assert_eq!(thing["description"], "A resource.");
    assert_eq!(thing["required"], json!(["displayName"]));
    let props = &thing["properties"];
    assert_eq!(props["thingId"]["readOnly"], true);
    assert_eq!(props["sizeBytes"]["type"], "string");
    assert_eq!(props["createTime"]["format"], "date-time");
    assert_eq!(props["labels"]["additionalProperties"]["type"], "string");
    assert_eq!(props["parts"]["type"], "array");
    assert_eq!(props["details"]["type"], "object");
    assert_eq!(props["ttl"]["type"], "string");
    assert!(props["userId"]["description"]
        .as_str()
        .unwrap()
        .contains("oneof `owner`"));
    assert_eq!(
        props["color"]["$ref"],
        "#/components/schemas/zen.gateway.test.v1.Color"
    );
    let color = &doc["components"]["schemas"]["zen.gateway.test.v1.Color"];
    // By name or by number.
    assert_eq!(
        color["anyOf"],
        json!([
            {"type": "string", "enum": ["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_GREEN"]},
            {"type": "integer", "enum": [0, 1, 2]}
        ])
    );
    assert!(color["description"].is_string());
    // Unknown fields are refused; 64-bit integers stay in range; a REQUIRED string refuses
    // "" (the gateway counts it missing).
    assert_eq!(thing["additionalProperties"], false);
    assert_eq!(props["sizeBytes"]["pattern"], "^-?[0-9]{1,18}$");
    assert_eq!(props["displayName"]["minLength"], 1);
    assert_eq!(
        props["labels"]["additionalProperties"],
        json!({"type": "string"})
    );

    // An update (update_mask) does not demand the resource's REQUIRED fields: the PATCH body
    // is the resource inline without them, the whole-body binding refers to its partial form.
    let patch = &paths["/v1/tenants/{tenant_id}/things/{thing_id}"]["patch"]["requestBody"]
        ["content"]["application/json"]["schema"];
    assert!(patch.get("$ref").is_none());
    assert!(patch.get("required").is_none());
    assert_eq!(patch["additionalProperties"], false);
    assert!(patch["properties"]["displayName"]
        .get("minLength")
        .is_none());
    let update = &paths["/v1/tenants/{tenant_id}/things:update"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"];
    assert_eq!(update["additionalProperties"], false);
    assert_eq!(
        update["properties"]["thing"]["$ref"],
        "#/components/schemas/zen.gateway.test.v1.Thing.Partial"
    );
    let partial = &doc["components"]["schemas"]["zen.gateway.test.v1.Thing.Partial"];
    assert!(partial.get("required").is_none());
    assert_eq!(partial["additionalProperties"], false);
    assert!(doc["components"]["schemas"]["Problem"]["properties"]["errors"].is_object());
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

fn zen_descriptor_set() -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let mut files = Vec::new();
    let mut stack = vec![root.join("zen")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                files.push(path.strip_prefix(&root).unwrap().to_owned());
            }
        }
    }
    files.sort();
    let mut compiler = protox::Compiler::new([&root]).unwrap();
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files).unwrap();
    compiler.encode_file_descriptor_set()
}

#[tokio::test]
async fn zen_contracts_load_and_document() {
    let channel = tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy();
    let gateway = Gateway::new(&zen_descriptor_set(), channel, GatewayConfig::default())
        .expect("Zen's http rules are all servable");
    assert_eq!(gateway.supported_contract_versions(), ["v1"]);
    let routes = gateway.routes();
    let find = |grpc: &str| routes.iter().find(|r| r.grpc_path == grpc);
    let suspend = find("/zen.tenancy.v1.TenancyService/SuspendTenant").expect("suspend route");
    assert_eq!(suspend.path_template, "/v1/tenants/{tenant_id}:suspend");
    assert!(suspend.mutating);
    let watch = find("/zen.ingest.v1.IngestService/WatchEvents").expect("watch route");
    assert!(watch.server_streaming);
    assert!(find("/zen.ingest.v1.IngestService/ConnectAgent").is_none());
    let webhook = find("/zen.ingest.v1.IngestService/ReceiveWebhook").unwrap();
    assert!(webhook.public && !webhook.mutating);
    let doc = gateway.openapi();
    validate(&doc);
    external_validator(&doc, "zen");
    assert_eq!(
        doc["paths"]["/.well-known/jwks.json"]["get"]["security"],
        json!([])
    );
    // The gateway refuses unknown fields, and 64-bit integers that overflow.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["zen.auth.v1.LocalLoginRequest"]["additionalProperties"],
        false
    );
    assert_eq!(
        schemas["zen.audit.v1.VerifyChainResponse"]["properties"]["lastSequence"]["pattern"],
        "^-?[0-9]{1,18}$"
    );
    assert_eq!(
        schemas["zen.tenancy.v1.Tenant"]["properties"]["version"]["allOf"],
        json!([{"pattern": "^[0-9]{1,18}$"}])
    );
}

fn rules_document() -> Value {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut compiler =
        protox::Compiler::new([dir.join("tests/rules_proto"), dir.join("../proto")]).unwrap();
    compiler.include_imports(true).include_source_info(true);
    compiler
        .open_files(["zen/gateway/rules/v1/rules.proto"])
        .unwrap();
    let channel = tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy();
    let gateway = Gateway::new(
        &compiler.encode_file_descriptor_set(),
        channel,
        GatewayConfig::default(),
    )
    .expect("the rules contract is servable");
    gateway.openapi()
}

/// Every schema keyword the generator writes is well formed: patterns compile, `required`
/// names listed properties, combinators are non-empty arrays, bounds are numbers.
fn check_schemas(node: &Value, at: &str, problems: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(p) = map.get("pattern") {
                match p.as_str().map(regex::Regex::new) {
                    Some(Ok(_)) => {}
                    _ => problems.push(format!("{at}: bad pattern {p}")),
                }
            }
            for k in ["allOf", "anyOf", "oneOf"] {
                if let Some(v) = map.get(k) {
                    if v.as_array().is_none_or(|a| a.is_empty()) {
                        problems.push(format!("{at}: empty {k}"));
                    }
                }
            }
            for k in [
                "minLength",
                "maxLength",
                "minItems",
                "maxItems",
                "minProperties",
                "maxProperties",
            ] {
                if let Some(v) = map.get(k) {
                    if !v.is_u64() {
                        problems.push(format!("{at}: {k} is {v}"));
                    }
                }
            }
            if let (Some(Value::Array(required)), Some(Value::Object(props))) =
                (map.get("required"), map.get("properties"))
            {
                for r in required {
                    if !r.as_str().is_some_and(|r| props.contains_key(r)) {
                        problems.push(format!("{at}: required {r} is not a property"));
                    }
                }
            }
            for (k, v) in map {
                check_schemas(v, &format!("{at}/{k}"), problems);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_schemas(v, &format!("{at}/{i}"), problems);
            }
        }
        _ => {}
    }
}

fn assert_schemas_sound(doc: &Value) {
    let mut problems = Vec::new();
    check_schemas(doc, "#", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

const UUID: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

#[tokio::test]
async fn validation_rules_become_json_schema() {
    let doc = rules_document();
    validate(&doc);
    assert_schemas_sound(&doc);
    external_validator(&doc, "rules");
    let widget = &doc["components"]["schemas"]["zen.gateway.rules.v1.Widget"];
    let props = &widget["properties"];

    // IGNORE_IF_ZERO_VALUE uuid: the empty string passes too.
    assert_eq!(
        props["widgetId"],
        json!({
            "type": "string",
            "description": "Server-assigned id.",
            "anyOf": [{"const": ""}, {"format": "uuid", "pattern": UUID}]
        })
    );
    // Lengths and a pattern; refusing "" makes it required (leaving it out sends "").
    assert_eq!(props["name"]["minLength"], 1);
    assert_eq!(props["name"]["maxLength"], 63);
    assert_eq!(props["name"]["pattern"], "^[a-z][a-z0-9-]*$");
    // An enum without its zero value: the shared enum narrowed.
    assert_eq!(
        props["shade"]["allOf"],
        json!([
            {"$ref": "#/components/schemas/zen.gateway.rules.v1.Shade"},
            {"enum": ["SHADE_LIGHT", "SHADE_DARK", 1, 2]}
        ])
    );
    // An int32 range.
    assert_eq!(props["replicas"]["exclusiveMinimum"], 0);
    assert_eq!(props["replicas"]["maximum"], 10);
    // int64 (a JSON string): the range is described; 0 passes, so not required.
    assert!(props["size"]["description"]
        .as_str()
        .unwrap()
        .contains("≥ `0`"));
    assert!(props["size"].get("minimum").is_none());
    // ... but `gte 0` is a pattern, on top of the bounded digits of every int64.
    assert_eq!(props["size"]["pattern"], "^-?[0-9]{1,18}$");
    assert_eq!(
        props["size"]["allOf"],
        json!([{"pattern": "^[0-9]{1,18}$"}])
    );
    // Unknown fields are refused.
    assert_eq!(widget["additionalProperties"], false);
    assert!(props["timeout"]["description"]
        .as_str()
        .unwrap()
        .contains("≥ `1s` and ≤ `60s`"));
    assert_eq!(widget["required"], json!(["name", "shade", "replicas"]));
    // A wrapper: null is unset, the rules apply to the value.
    assert_eq!(
        props["nickname"]["anyOf"],
        json!([{"type": "null"}, {"maxLength": 10}])
    );
    // Repeated: counts, uniqueness and item rules.
    assert_eq!(props["tags"]["maxItems"], 5);
    assert_eq!(props["tags"]["uniqueItems"], true);
    assert_eq!(
        props["tags"]["items"],
        json!({"type": "string", "minLength": 1, "maxLength": 20})
    );
    // Map: pairs, keys and values.
    assert_eq!(props["labels"]["maxProperties"], 8);
    assert_eq!(props["labels"]["propertyNames"], json!({"maxLength": 32}));
    assert_eq!(props["labels"]["additionalProperties"]["maxLength"], 64);
    // CEL rules are described.
    assert!(props["contact"]["description"]
        .as_str()
        .unwrap()
        .contains("Rule `contact.domain`: contact must be at example.com"));
    assert!(widget["description"]
        .as_str()
        .unwrap()
        .contains("Rule `widget.contact_or_pager`: a contact or a pager is needed"));
    assert_eq!(props["archiveUrl"]["format"], "uri");
    // Oneofs: required (exactly one), plain (at most one), and a message oneof rule over
    // fields without presence (set means present and not empty).
    assert_eq!(
        widget["allOf"],
        json!([
            {"oneOf": [{"required": ["image"]}, {"required": ["archiveUrl"]}]},
            {"not": {"anyOf": [{"required": ["note", "memo"]}]}},
            {"not": {"anyOf": [{"allOf": [
                {"required": ["contact"], "properties": {"contact": {"not": {"const": ""}}}},
                {"required": ["pager"], "properties": {"pager": {"not": {"const": ""}}}}
            ]}]}}
        ])
    );
    assert!(props["image"]["description"]
        .as_str()
        .unwrap()
        .contains("exactly one of `image`, `archiveUrl` is set"));

    // Parameters: path (uuid on top of the segment pattern), required query string,
    // IGNORE_IF_ZERO_VALUE `in`.
    let list = &doc["paths"]["/v1/tenants/{tenant_id}/widgets"]["get"];
    let param = |op: &Value, name: &str| {
        op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("parameter {name}"))
    };
    let tenant = param(list, "tenant_id");
    assert_eq!(tenant["schema"]["format"], "uuid");
    assert_eq!(tenant["schema"]["allOf"], json!([{"pattern": UUID}]));
    let filter = param(list, "filter");
    assert_eq!(filter["required"], true);
    assert_eq!(filter["schema"]["minLength"], 1);
    let page = param(list, "pageSize");
    assert_eq!(page["required"], false);
    assert_eq!(page["schema"]["maximum"], 100);
    let view = param(list, "view");
    assert_eq!(view["required"], false);
    assert_eq!(
        view["schema"]["anyOf"],
        json!([{"const": ""}, {"enum": ["BASIC", "FULL"]}])
    );
    // The create's required body.
    let create = &doc["paths"]["/v1/tenants/{tenant_id}/widgets"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/zen.gateway.rules.v1.Widget"
    );

    // Headers.
    assert_eq!(
        doc["components"]["parameters"]["TenantId"]["schema"],
        json!({"type": "string", "format": "uuid", "pattern": UUID})
    );
    assert_eq!(
        doc["components"]["parameters"]["RequestId"]["schema"]["pattern"],
        "^[A-Za-z0-9._:-]{1,128}$"
    );

    // Links from the create to the get and delete of what it made, with the document's
    // parameter names (DeleteWidget's `{tenant}` shares the `{tenant_id}` spelling).
    let links = &create["responses"]["200"]["links"];
    for op in ["RulesService_GetWidget", "RulesService_DeleteWidget"] {
        assert_eq!(links[op]["operationId"], op);
        assert_eq!(
            links[op]["parameters"],
            json!({
                "tenant_id": "$request.path.tenant_id",
                "widget_id": "$response.body#/widget/widgetId"
            })
        );
    }
    assert_eq!(links.as_object().unwrap().len(), 2);
    assert!(list["responses"]["200"].get("links").is_none());
}

#[tokio::test]
async fn generated_schemas_are_sound() {
    let test_doc = Gateway::new(
        common::DESCRIPTORS,
        tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy(),
        GatewayConfig::default(),
    )
    .unwrap()
    .openapi();
    assert_schemas_sound(&test_doc);
    // The test contract's create links to the operations on the thing it made.
    let links =
        &test_doc["paths"]["/v1/tenants/{tenant_id}/things"]["post"]["responses"]["200"]["links"];
    assert_eq!(
        links["TestService_GetThing"]["parameters"]["thing_id"],
        "$response.body#/thing/thingId"
    );
    assert!(links["TestService_UpdateThing"].is_object());
    assert!(links["TestService_SuspendThing"].is_object());
    let zen = Gateway::new(
        &zen_descriptor_set(),
        tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy(),
        GatewayConfig::default(),
    )
    .unwrap()
    .openapi();
    assert_schemas_sound(&zen);
    serde_json::from_str::<Value>(&serde_json::to_string(&zen).unwrap()).unwrap();
}
