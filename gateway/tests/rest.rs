//! The gateway through real HTTP in front of a real tonic server: routing, JSON mapping,
//! input discipline, headers, errors, raw bodies, redirects and streaming.

mod common;

use std::time::Duration;

use common::{config, start};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn echo(body: &Value) -> Value {
    serde_json::from_str(body["requestJson"].as_str().expect("requestJson")).unwrap()
}

fn problem_fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"]
        .as_str()
        .unwrap()
        .starts_with("https://zen.dev/problems/"));
    assert!(body["title"].is_string() && body["detail"].is_string() && body["code"].is_string());
    if body.get("instance").is_some() {
        assert_eq!(body["instance"], request_id.as_str());
    }
    body
}

#[tokio::test]
async fn get_with_path_variables_renders_proto3_json() {
    let h = start(config()).await;
    let r = h
        .client
        .get(h.url("/v1/tenants/t1/things/th%201"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert_eq!(headers["x-zen-contract-version"], "v1");
    let generated_id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated_id.len(), 36, "a UUID is generated for reads");
    let body: Value = r.json().await.unwrap();
    let thing = &body["thing"];
    assert_eq!(thing["thingId"], "th 1");
    assert_eq!(thing["displayName"], "Thing th 1");
    assert_eq!(thing["color"], "COLOR_GREEN");
    assert_eq!(thing["sizeBytes"], "1099511627776", "int64 as a string");
    assert_eq!(thing["version"], "3");
    assert_eq!(thing["createTime"], "2023-11-14T22:13:20Z");
    assert_eq!(thing["labels"], json!({"env": "prod"}));
    assert_eq!(
        thing["count"], 0,
        "a set optional field is emitted even at its default"
    );
    assert!(thing.get("userId").is_none(), "unset fields are omitted");
    assert!(
        thing.get("parts").is_none(),
        "empty repeated fields are omitted"
    );
    assert_eq!(body["etag"], "e1");

    let call = h.state.last("GetThing").unwrap();
    assert_eq!(call.request, json!({"tenantId": "t1", "thingId": "th 1"}));
    assert_eq!(call.metadata["x-request-id"], generated_id);
}

#[tokio::test]
async fn additional_binding_with_response_body() {
    let h = start(config()).await;
    let body: Value = h
        .client
        .get(h.url("/v1/things/abc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["thingId"], "abc",
        "response_body renders the field alone"
    );
    assert!(body.get("etag").is_none());
    assert_eq!(
        h.state.last("GetThing").unwrap().request,
        json!({"thingId": "abc"})
    );
}

#[tokio::test]
async fn multi_segment_and_nested_path_variables() {
    let h = start(config()).await;
    let body: Value = h
        .client
        .get(h.url("/v1/projects/p1/things/a/b%2Fc?view=full"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        echo(&body),
        json!({"name": "projects/p1/things/a/b%2Fc", "view": "full"})
    );
    let body: Value = h
        .client
        .get(h.url("/v1/nested/r1/items/k%3A1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        echo(&body),
        json!({"ref": {"id": "r1", "inner": {"key": "k:1"}}})
    );
}

#[tokio::test]
async fn custom_verb_with_whole_body_and_custom_method() {
    let h = start(config()).await;
    let r = h
        .client
        .post(h.url("/v1/tenants/t1/things/th1:suspend"))
        .header("x-request-id", "req-suspend-1")
        .json(&json!({"reason": "maintenance", "version": "3", "thing_id": "ignored"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-suspend-1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        echo(&body),
        json!({"tenantId": "t1", "thingId": "th1", "reason": "maintenance", "version": "3"}),
        "path variables win over the body"
    );

    let r = h
        .client
        .request(Method::from_bytes(b"PURGE").unwrap(), h.url("/v1/cache/k1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(echo(&body), json!({"key": "k1"}));
}

#[tokio::test]
async fn query_parameters_fill_unbound_fields() {
    let h = start(config()).await;
    let q = "query=a%20b&tags=x&tags=y&color=COLOR_RED&exact=true&big=9007199254740993\
             &ubig=18446744073709551615&ratio=0.5&filter.minSize=10&filter.colors=1\
             &filter.colors=COLOR_GREEN&since=2024-01-01T00:00:00Z&within=1.5s&limit=7\
             &mask=a.b,c&page_size=20&blob=aGk%3D";
    let r = h
        .client
        .get(h.url(&format!("/v1/search?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        echo(&body),
        json!({
            "query": "a b", "tags": ["x", "y"], "color": "COLOR_RED", "exact": true,
            "big": "9007199254740993", "ubig": "18446744073709551615", "ratio": 0.5,
            "filter": {"minSize": "10", "colors": ["COLOR_RED", "COLOR_GREEN"]},
            "since": "2024-01-01T00:00:00Z", "within": "1.500s", "limit": 7,
            "mask": "a.b,c", "pageSize": 20, "blob": "aGk="
        })
    );
    // Enum by number.
    let body: Value = h
        .client
        .get(h.url("/v1/search?color=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo(&body), json!({"color": "COLOR_GREEN"}));
    // A number the enum does not define, or one not in canonical form, is refused.
    for bad in ["7", "-1", "+2", "02", "2.0"] {
        let r = h
            .client
            .get(h.url(&format!("/v1/search?color={bad}")))
            .send()
            .await
            .unwrap();
        let body = assert_problem(r, 400).await;
        assert_eq!(problem_fields(&body), vec!["color"], "{bad}");
    }

    // Unknown parameters, bad values: 400 listing each.
    let r = h
        .client
        .get(h.url("/v1/search?nope=1&color=PURPLE&exact=maybe&query=a&query=b"))
        .send()
        .await
        .unwrap();
    let body = assert_problem(r, 400).await;
    assert_eq!(body["code"], "INVALID_ARGUMENT");
    assert_eq!(body["reason"], "INVALID_FIELDS");
    let mut fields = problem_fields(&body);
    fields.sort();
    assert_eq!(fields, vec!["color", "exact", "nope", "query"]);
}

#[tokio::test]
async fn field_mask_paths_in_either_spelling() {
    let h = start(config()).await;
    let masks = |h: &common::Harness| h.state.update_masks.lock().unwrap().clone();
    let patch = |query: &str, id: &str| {
        h.client
            .patch(h.url(&format!("/v1/tenants/t1/things/th1?{query}")))
            .header("x-request-id", id)
            .json(&json!({"displayName": "New"}))
    };

    // Query: lowerCamel, snake_case and both in one mask, under either parameter name; the
    // server receives proto field paths. `update_mask` names fields of the body field (Thing).
    for (i, query) in [
        "updateMask=displayName,mainPart.name,sizeBytes",
        "update_mask=display_name,main_part.name,size_bytes",
        "updateMask=display_name,%20mainPart.name%20,size_bytes",
    ]
    .iter()
    .enumerate()
    {
        let r = patch(query, &format!("mask-{i}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{query}: {}", r.text().await.unwrap());
        assert_eq!(
            masks(&h).last().unwrap(),
            &["display_name", "main_part.name", "size_bytes"],
            "{query}"
        );
    }

    // Paths naming no field of Thing, or going inside a scalar, list or map: one 400 field
    // violation on the mask naming each bad path; nothing reaches gRPC.
    let calls = masks(&h).len();
    let body = assert_problem(
        patch(
            "updateMask=displayName,nope,main_part.bogus,labels.env,parts.name,color.x,display_name..x",
            "mask-bad",
        )
        .send()
        .await
        .unwrap(),
        400,
    )
    .await;
    assert_eq!(body["reason"], "INVALID_FIELDS");
    assert_eq!(problem_fields(&body), vec!["updateMask"]);
    let message = body["errors"][0]["message"].as_str().unwrap();
    for expected in [
        "`nope` is not a field of zen.gateway.test.v1.Thing",
        "`main_part.bogus`: `bogus` is not a field of zen.gateway.test.v1.Part",
        "`labels.env`: `labels` is a map",
        "`parts.name`: `parts` is repeated",
        "`color.x`: `color` has no fields",
        "`display_name..x` has an empty segment",
    ] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
    assert!(
        !message.contains("`displayName`"),
        "good paths are not listed"
    );
    assert_eq!(masks(&h).len(), calls, "invalid masks never reach gRPC");

    // JSON body (`body: "*"`): the same rules, the violation named by its JSON path.
    let post = |body: Value, id: &str| {
        h.client
            .post(h.url("/v1/tenants/t1/things:update"))
            .header("x-request-id", id)
            .json(&body)
    };
    let r = post(
        json!({"thing": {"displayName": "New"}, "update_mask": "display_name,mainPart"}),
        "mask-body-1",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(masks(&h).last().unwrap(), &["display_name", "main_part"]);
    let body = assert_problem(
        post(
            json!({"thing": {"displayName": "New"}, "updateMask": "displayName,mainPart.weight"}),
            "mask-body-2",
        )
        .send()
        .await
        .unwrap(),
        400,
    )
    .await;
    assert_eq!(problem_fields(&body), vec!["updateMask"]);
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("`mainPart.weight`: `weight` is not a field of zen.gateway.test.v1.Part"));

    // A mask with no resource to check against (Search's `mask`) is only respelled.
    let body: Value = h
        .client
        .get(h.url("/v1/search?mask=display_name,mainPart.part_name,x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo(&body)["mask"], "displayName,mainPart.partName,x");
}

#[tokio::test]
async fn routing_misses_are_404_and_405_problems() {
    let h = start(config()).await;
    let body = assert_problem(
        h.client
            .get(h.url("/v1/nothing/here"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(body["type"], "https://zen.dev/problems/route-not-found");

    let r = h
        .client
        .put(h.url("/v1/tenants/t1/things/th1"))
        .send()
        .await
        .unwrap();
    let allow = r.headers()["allow"].to_str().unwrap().to_owned();
    assert_problem(r, 405).await;
    let mut allowed: Vec<&str> = allow.split(", ").collect();
    allowed.sort();
    assert_eq!(allowed, vec!["DELETE", "GET", "PATCH"]);

    // A path with a known custom verb is that route's path: another method is 405, not a
    // match of the verb-less `PATCH .../things/{thing_id}` with `th1:suspend` as the id.
    let r = h
        .client
        .patch(h.url("/v1/tenants/t1/things/th1:suspend"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    assert_problem(r, 405).await;

    // Client-streaming methods are not exposed, even with an http rule.
    assert_problem(
        h.client
            .post(h.url("/v1/uploads"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(h
        .gateway
        .routes()
        .iter()
        .all(|r| !r.grpc_path.ends_with("/Upload")));
}

#[tokio::test]
async fn json_body_field_binding_and_unknown_fields() {
    let h = start(config()).await;
    let post = |body: Value, id: &str| {
        h.client
            .post(h.url("/v1/tenants/t1/things"))
            .header("x-request-id", id)
            .json(&body)
    };
    let r = post(
        json!({"display_name": "One", "color": "COLOR_RED", "sizeBytes": "12", "labels": {"a": "b"},
               "parts": [{"name": "p", "quantity": 2}], "userId": "u1", "ttl": "3600s",
               "details": {"k": [1, "two", null]}, "thingId": "client-chosen", "version": "9",
               "createTime": "2020-01-01T00:00:00Z"}),
        "create-1",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["thing"]["thingId"], "th-1");
    assert_eq!(body["callCount"], "1");
    let seen = h.state.last("CreateThing").unwrap().request;
    let thing = &seen["thing"];
    assert_eq!(thing["displayName"], "One");
    assert_eq!(thing["details"], json!({"k": [1.0, "two", null]}));
    assert!(
        thing.get("thingId").is_none(),
        "OUTPUT_ONLY fields are ignored on input"
    );
    assert!(thing.get("version").is_none());
    assert!(thing.get("createTime").is_none());
    assert_eq!(seen["tenantId"], "t1");

    let body = assert_problem(
        post(json!({"displayName": "x", "bogus": 1}), "create-2")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(problem_fields(&body), vec!["thing.bogus"]);
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown field"));

    let body = assert_problem(
        post(
            json!({"displayName": "x", "mainPart": {"name": "n", "weight": 1}}),
            "create-3",
        )
        .send()
        .await
        .unwrap(),
        400,
    )
    .await;
    assert_eq!(problem_fields(&body), vec!["thing.mainPart.weight"]);

    let r = h
        .client
        .post(h.url("/v1/tenants/t1/things"))
        .header("x-request-id", "create-4")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(r, 400).await;
    assert_eq!(
        h.state.count("CreateThing"),
        1,
        "invalid input never reaches gRPC"
    );
}

#[tokio::test]
async fn field_behavior_and_enum_validation_list_every_violation() {
    let h = start(config()).await;
    let r = h
        .client
        .post(h.url("/v1/tenants/t1/things"))
        .header("x-request-id", "v-1")
        .json(&json!({"parts": [{"quantity": 1}, {"name": "ok"}], "mainPart": {}, "color": 7}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(r, 400).await;
    let mut fields = problem_fields(&body);
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "thing.color",
            "thing.displayName",
            "thing.mainPart.name",
            "thing.parts[0].name"
        ]
    );
    // A REQUIRED top-level message that is absent, and a REQUIRED field satisfied by the path.
    let r = h
        .client
        .post(h.url("/v1/tenants/t1/things:suspend"))
        .send()
        .await
        .unwrap();
    // `things:suspend` is not a thing route: the custom verb needs a thing id.
    assert_problem(r, 404).await;
    let r = h
        .client
        .post(h.url("/v1/tenants/t1/things/x:suspend"))
        .header("x-request-id", "v-2")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(r, 400).await;
    assert_eq!(problem_fields(&body), vec!["reason"]);
    assert_eq!(
        h.state.count("CreateThing") + h.state.count("SuspendThing"),
        0
    );
}

#[tokio::test]
async fn body_size_and_media_type() {
    let mut cfg = config();
    cfg.max_body_bytes = 1024;
    let h = start(cfg).await;
    let big = json!({"displayName": "x".repeat(2000)});
    let body = assert_problem(
        h.client
            .post(h.url("/v1/tenants/t1/things"))
            .header("x-request-id", "big-1")
            .json(&big)
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    assert_eq!(body["type"], "https://zen.dev/problems/payload-too-large");
    // Chunked (no Content-Length) is cut off at the limit as well.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 400]))),
    );
    let r = h
        .client
        .post(h.url("/v1/tenants/t1/things"))
        .header("x-request-id", "big-2")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_problem(r, 413).await;

    let body = assert_problem(
        h.client
            .post(h.url("/v1/tenants/t1/things"))
            .header("x-request-id", "ct-1")
            .header("content-type", "text/plain")
            .body(r#"{"displayName": "x"}"#)
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;
    assert_eq!(
        body["type"],
        "https://zen.dev/problems/unsupported-media-type"
    );
    // `+json` types and parameters are fine.
    let r = h
        .client
        .post(h.url("/v1/tenants/t1/things"))
        .header("x-request-id", "ct-2")
        .header(
            "content-type",
            "application/merge-patch+json; charset=utf-8",
        )
        .body(r#"{"displayName": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn http_body_fields_take_raw_bytes_and_headers() {
    let h = start(config()).await;
    let r = h
        .client
        .post(h.url("/hooks/src-1"))
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-signature", "v1=abc")
        .header("x-multi", "a")
        .body("hello, raw world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["contentType"], "text/plain; charset=utf-8");
    assert_eq!(body["bodyText"], "hello, raw world");
    assert_eq!(body["sourceId"], "src-1");
    assert_eq!(body["headers"]["x-signature"], "v1=abc");
    assert_eq!(body["headers"]["content-type"], "text/plain; charset=utf-8");

    let r = h.client.get(h.url("/v1/files/f1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv");
    assert_eq!(r.text().await.unwrap(), "a,b\n1,2\n");
}

#[tokio::test]
async fn redirect_rule_for_browsers_json_for_api_clients() {
    let h = start(config()).await;
    let r = h
        .client
        .get(h.url("/v1/login?returnTo=/x"))
        .header("accept", "text/html,*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(
        r.headers()["location"],
        "https://idp.example/authorize?state=s1"
    );
    let r = h
        .client
        .get(h.url("/v1/login"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["state"], "s1");
}

#[tokio::test]
async fn headers_are_checked_and_forwarded_as_metadata() {
    let h = start(config()).await;
    let r = h
        .client
        .get(h.url("/v1/tenants/t1/things/a"))
        .header("authorization", "Bearer tok.en.value")
        .header("x-request-id", "abc:DEF_1.2-3")
        .header("x-zen-contract-version", "v1")
        .header("x-tenant-id", "t1")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("tracestate", "zen=1")
        .header("user-agent", "zen-test/1.0")
        .header("x-forwarded-for", "203.0.113.7")
        .header("cookie", "secret=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let md = h.state.last("GetThing").unwrap().metadata;
    assert_eq!(md["authorization"], "Bearer tok.en.value");
    assert_eq!(md["x-request-id"], "abc:DEF_1.2-3");
    assert_eq!(md["x-zen-contract-version"], "v1");
    assert_eq!(md["x-tenant-id"], "t1");
    assert_eq!(
        md["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(md["tracestate"], "zen=1");
    assert_eq!(md["user-agent"].split(' ').next().unwrap(), "zen-test/1.0");
    // From an untrusted peer the client's own X-Forwarded-For is ignored: the peer is the
    // client, attested as such; forwarding headers never travel further.
    assert_eq!(md["x-zen-client-address"], "127.0.0.1");
    assert!(
        !md.contains_key("cookie") && !md.contains_key("x-forwarded-for"),
        "only the listed headers are forwarded"
    );

    let body = assert_problem(
        h.client
            .get(h.url("/v1/tenants/t1/things/a"))
            .header("x-zen-contract-version", "v9")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(body["reason"], "CONTRACT_VERSION_UNSUPPORTED");
    assert!(body["detail"].as_str().unwrap().contains("v1"));
    assert_eq!(body["metadata"]["supported"], "v1");

    // X-Request-Id: required on mutating calls (by policy, or by verb without a policy),
    // and well-formed everywhere.
    let body = assert_problem(
        h.client
            .post(h.url("/v1/tenants/t1/things"))
            .json(&json!({"displayName": "x"}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(body["reason"], "REQUEST_ID_MISSING");
    let body = assert_problem(
        h.client
            .delete(h.url("/v1/tenants/t1/things/a"))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(body["reason"], "REQUEST_ID_MISSING");
    for bad in ["has space", &"x".repeat(129), "semi;colon"] {
        let body = assert_problem(
            h.client
                .get(h.url("/v1/tenants/t1/things/a"))
                .header("x-request-id", bad)
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
        assert_eq!(body["reason"], "REQUEST_ID_MISSING");
    }
    // A public POST whose policy says it does not mutate needs no id.
    let r = h
        .client
        .post(h.url("/hooks/s"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.state.count("CreateThing"), 0);
}

#[tokio::test]
async fn grpc_status_maps_to_http_problems() {
    let h = start(config()).await;
    let table = [
        (1, 499, "CANCELLED"),
        (2, 500, "UNKNOWN"),
        (3, 400, "INVALID_ARGUMENT"),
        (4, 504, "DEADLINE_EXCEEDED"),
        (5, 404, "NOT_FOUND"),
        (6, 409, "ALREADY_EXISTS"),
        (7, 403, "PERMISSION_DENIED"),
        (8, 429, "RESOURCE_EXHAUSTED"),
        (9, 400, "FAILED_PRECONDITION"),
        (10, 409, "ABORTED"),
        (11, 400, "OUT_OF_RANGE"),
        (12, 501, "UNIMPLEMENTED"),
        (13, 500, "INTERNAL"),
        (14, 503, "UNAVAILABLE"),
        (15, 500, "DATA_LOSS"),
        (16, 401, "UNAUTHENTICATED"),
    ];
    for (code, status, name) in table {
        let r = h
            .client
            .get(h.url(&format!("/v1/fail/{code}?message=secret%20db%20password")))
            .header("x-request-id", format!("fail-{code}"))
            .send()
            .await
            .unwrap();
        let retry_after = r.headers().get("retry-after").cloned();
        let body = assert_problem(r, status).await;
        assert_eq!(body["code"], name);
        assert_eq!(body["instance"], format!("fail-{code}"));
        let generic = matches!(code, 2 | 13 | 15);
        assert_eq!(
            body["detail"].as_str().unwrap().contains("secret"),
            !generic,
            "{name}: internals never leak"
        );
        if matches!(code, 8 | 14) {
            assert_eq!(
                retry_after.unwrap(),
                "1",
                "{name}: Retry-After defaults to 1"
            );
        } else {
            assert!(retry_after.is_none());
        }
    }

    let r = h
        .client
        .get(h.url(
            "/v1/fail/8?message=slow%20down&reason=RATE_LIMITED&retrySeconds=7\
             &violations=thing.display_name:too%20long&violations=parts%5B0%5D.quantity:negative",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "7");
    let body = assert_problem(r, 429).await;
    assert_eq!(body["reason"], "RATE_LIMITED");
    assert_eq!(body["type"], "https://zen.dev/problems/rate-limited");
    assert_eq!(body["detail"], "slow down");
    assert_eq!(body["metadata"]["current_version"], "4");
    assert_eq!(
        body["errors"],
        json!([
            {"field": "thing.displayName", "message": "too long"},
            {"field": "parts[0].quantity", "message": "negative"}
        ])
    );
    let body = assert_problem(
        h.client
            .get(h.url("/v1/tenants/t/things/missing"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(body["type"], "https://zen.dev/problems/not-found");
    assert_eq!(body["detail"], "thing missing not found");
}

#[tokio::test]
async fn server_streaming_as_ndjson_and_sse() {
    let h = start(config()).await;
    let r = h
        .client
        .get(h.url("/v1/tenants/t1/things:watch?count=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], json!({"result": {"seq": "1", "tenantId": "t1"}}));
    assert_eq!(lines[2]["result"]["seq"], "3");

    let text = h
        .client
        .get(h.url("/v1/tenants/t1/things:watch?count=2&failCode=9"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["error"]["code"], "FAILED_PRECONDITION");
    assert_eq!(lines[2]["error"]["status"], 400);

    let r = h
        .client
        .get(h.url("/v1/tenants/t1/things:watch?count=2&failCode=9"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3);
    assert!(events[0].starts_with("event: message\ndata: {"));
    let data: Value = serde_json::from_str(events[1].split("data: ").nth(1).unwrap()).unwrap();
    assert_eq!(data, json!({"seq": "2", "tenantId": "t1"}));
    assert!(events[2].starts_with("event: error\ndata: "));

    // An error before the first message is a plain problem with its status.
    let r = h
        .client
        .get(h.url("/v1/tenants/denied/things:watch"))
        .send()
        .await
        .unwrap();
    assert_problem(r, 403).await;
}

#[tokio::test]
async fn idempotent_replay_mismatch_and_concurrency() {
    let h = start(config()).await;
    let create = |id: &str, body: Value| {
        h.client
            .post(h.url("/v1/tenants/t1/things"))
            .header("x-request-id", id)
            .header("authorization", "Bearer user-a")
            .json(&body)
    };
    let first = create("idem-1", json!({"displayName": "A"}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.text().await.unwrap();

    let again = create("idem-1", json!({"displayName": "A"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["x-request-id"], "idem-1");
    assert_eq!(again.headers()["content-type"], "application/json");
    assert_eq!(again.text().await.unwrap(), first_body);
    assert_eq!(h.state.creates.load(std::sync::atomic::Ordering::SeqCst), 1);

    let body = assert_problem(
        create("idem-1", json!({"displayName": "B"}))
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    assert_eq!(body["reason"], "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(body["code"], "ALREADY_EXISTS");

    // Another caller with the same id is another key.
    let other = h
        .client
        .post(h.url("/v1/tenants/t1/things"))
        .header("x-request-id", "idem-1")
        .header("authorization", "Bearer user-b")
        .json(&json!({"displayName": "B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(other.headers().get("idempotent-replayed").is_none());

    // Concurrent duplicate while the first is in flight.
    let slow = create("idem-2", json!({"displayName": "S"}));
    let slow = tokio::spawn(async move { slow.query(&[("delayMs", "600")]).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let body = assert_problem(
        h.client
            .post(h.url("/v1/tenants/t1/things?delayMs=600"))
            .header("x-request-id", "idem-2")
            .header("authorization", "Bearer user-a")
            .json(&json!({"displayName": "S"}))
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    assert_eq!(body["reason"], "IDEMPOTENCY_KEY_IN_PROGRESS");
    assert_eq!(slow.await.unwrap().status(), 200);

    // A 5xx releases the key; the retry runs again. A 4xx is stored and replayed.
    let before = h.state.count("CreateThing");
    let r = create("idem-3", json!({"displayName": "F"}))
        .query(&[("failCode", "14")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = create("idem-3", json!({"displayName": "F"}))
        .query(&[("failCode", "14")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("idempotent-replayed").is_none());
    assert_eq!(h.state.count("CreateThing"), before + 2);
    let r = create("idem-4", json!({"displayName": "F"}))
        .query(&[("failCode", "6")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = create("idem-4", json!({"displayName": "F"}))
        .query(&[("failCode", "6")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(h.state.count("CreateThing"), before + 3);
}

#[tokio::test]
async fn cors_only_for_configured_origins() {
    let mut cfg = config();
    cfg.allowed_origins = vec!["https://ui.zen.example".into()];
    let h = start(cfg).await;
    let r = h
        .client
        .request(Method::OPTIONS, h.url("/v1/tenants/t1/things"))
        .header("origin", "https://ui.zen.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "x-request-id, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://ui.zen.example"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let r = h
        .client
        .get(h.url("/v1/tenants/t1/things/a"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = h
        .client
        .get(h.url("/v1/tenants/t1/things/a"))
        .header("origin", "https://ui.zen.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://ui.zen.example"
    );
    assert!(r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-request-id"));
}

#[tokio::test]
async fn unreachable_upstream_is_503_without_internals() {
    let mut h = start(config()).await;
    // A gateway whose channel points at a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let gateway = zen_gateway::Gateway::new(common::DESCRIPTORS, channel, config()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, gateway.router()).await.unwrap() });
    h.base = format!("http://{addr}");
    let r = h
        .client
        .get(h.url("/v1/tenants/t/things/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    let body = assert_problem(r, 503).await;
    assert_eq!(body["code"], "UNAVAILABLE");
    assert!(!body["detail"].as_str().unwrap().contains(&port.to_string()));
}

#[tokio::test]
async fn the_client_address_is_attested() {
    let h = start(config()).await;
    h.client
        .get(h.url("/v1/tenants/t1/things/a"))
        .send()
        .await
        .unwrap();
    let md = h.state.last("GetThing").unwrap().metadata;
    assert_eq!(md["x-zen-client-address"], "127.0.0.1");
    assert!(!md.contains_key("authorization"));

    // Behind a trusted proxy (here: loopback), the first untrusted hop from the right.
    let mut trusting = config();
    trusting.trusted_proxies = zen_gateway::TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
    let h = start(trusting).await;
    h.client
        .get(h.url("/v1/tenants/t1/things/a"))
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.1.1")
        .send()
        .await
        .unwrap();
    let md = h.state.last("GetThing").unwrap().metadata;
    assert_eq!(md["x-zen-client-address"], "203.0.113.7");
}

#[tokio::test]
async fn oversized_headers_are_431_before_anything_is_called() {
    let h = start(config()).await;
    for (name, size) in [
        ("authorization", zen_gateway::MAX_FORWARDED_HEADER_BYTES + 1),
        ("user-agent", 16 * 1024),
        ("x-something-else", zen_gateway::MAX_HEADER_BYTES + 1),
    ] {
        let r = h
            .client
            .get(h.url("/v1/tenants/t1/things/a"))
            .header(name, "a".repeat(size))
            .send()
            .await
            .unwrap();
        let body = assert_problem(r, 431).await;
        assert_eq!(body["reason"], "HEADERS_TOO_LARGE", "{name}: {body}");
    }
    assert!(h.state.last("GetThing").is_none(), "nothing reached gRPC");
}
