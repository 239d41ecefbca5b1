//! `zen bench validation`: the cost of checking a request against its contract
//! ([`crate::grpc::validate::check`]) on the webhook and read paths, next to the cost of decoding
//! the same request (which the authorization layer did before the rules existed), per call.

use std::time::Instant;

use prost::Message;
use prost_reflect::DynamicMessage;

use crate::proto::zen::ingest::v1 as pb;
use crate::proto::zen::tenancy::v1 as tenancy;

/// One request shape: its name and encoded bytes.
struct Shape {
    name: &'static str,
    message: &'static str,
    bytes: Vec<u8>,
}

fn shapes() -> Vec<Shape> {
    let tenant = "7d1f4f4e-3c55-4d47-9a8b-0b6c1f2d9e10".to_owned();
    let mut headers = std::collections::HashMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("x-timestamp", "1764950400"),
        ("x-nonce", "b6f1d1c2-5d1a-4a57-8b0e-3b2c9f0e7a11"),
        (
            "x-signature",
            "v1=0f3c5e0b9a7d4c2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e",
        ),
        ("user-agent", "zen-bench/1"),
    ] {
        headers.insert(k.to_owned(), v.to_owned());
    }
    vec![
        Shape {
            name: "ReceiveWebhook (1 KiB body, 5 headers)",
            message: "zen.ingest.v1.ReceiveWebhookRequest",
            bytes: pb::ReceiveWebhookRequest {
                source_id: "5a0c7c1e-8f0b-4d8e-9a6e-1f2b3c4d5e6f".into(),
                body: Some(crate::proto::google::api::HttpBody {
                    content_type: "application/json".into(),
                    data: vec![b'x'; 1024],
                    extensions: Vec::new(),
                }),
                headers,
            }
            .encode_to_vec(),
        },
        Shape {
            name: "GetEvent",
            message: "zen.ingest.v1.GetEventRequest",
            bytes: pb::GetEventRequest {
                tenant_id: tenant.clone(),
                event_id: "0b9d2a44-6a39-4f0e-8f4c-2a9b5d7e1c33".into(),
            }
            .encode_to_vec(),
        },
        Shape {
            name: "ListEvents (4 filters)",
            message: "zen.ingest.v1.ListEventsRequest",
            bytes: pb::ListEventsRequest {
                tenant_id: tenant.clone(),
                page_size: 50,
                cluster_id: "2c7e9f10-4b6a-4c1d-8e2f-3a4b5c6d7e8f".into(),
                min_severity: 3,
                r#type: "falco.rule".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        },
        Shape {
            name: "GetCluster",
            message: "zen.tenancy.v1.GetClusterRequest",
            bytes: tenancy::GetClusterRequest {
                tenant_id: tenant,
                cluster_id: "2c7e9f10-4b6a-4c1d-8e2f-3a4b5c6d7e8f".into(),
            }
            .encode_to_vec(),
        },
    ]
}

/// Nanoseconds per call of `f`, after a warm-up (the validator compiles a message's rules on
/// first use).
fn per_call(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations.min(1_000) {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

/// The table printed by `zen bench validation`.
pub fn run(iterations: u32) -> anyhow::Result<String> {
    let pool = &crate::proto::DESCRIPTOR_POOL;
    let mut out = format!(
        "zen bench validation: {iterations} calls per shape, one thread\n\n\
         | request | decode (ns/call) | contract check (ns/call) |\n|---|---:|---:|\n"
    );
    for shape in shapes() {
        let descriptor = pool
            .get_message_by_name(shape.message)
            .ok_or_else(|| anyhow::anyhow!("{} is not in the contracts", shape.message))?;
        let message = DynamicMessage::decode(descriptor.clone(), shape.bytes.as_slice())?;
        crate::grpc::validate::check(&message)
            .map_err(|status| anyhow::anyhow!("{}: {}", shape.name, status.message()))?;
        let decode = per_call(iterations, || {
            std::hint::black_box(
                DynamicMessage::decode(descriptor.clone(), shape.bytes.as_slice()).ok(),
            );
        });
        let check = per_call(iterations, || {
            std::hint::black_box(crate::grpc::validate::check(&message).is_ok());
        });
        out.push_str(&format!("| {} | {decode:.0} | {check:.0} |\n", shape.name));
    }
    // An agent's event arrives typed inside a batch and is checked on its own (re-encoded and
    // decoded for the rules, so one bad event does not sink the batch).
    let event = pb::AgentEvent {
        agent_event_id: "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f".into(),
        source: pb::EventSource::Falco as i32,
        category: pb::EventCategory::Security as i32,
        severity: crate::proto::zen::common::v1::Severity::High as i32,
        r#type: "Terminal shell in container".into(),
        title: "A shell was spawned in a container with an attached terminal".into(),
        resource: Some(crate::proto::zen::common::v1::KubernetesResource {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: "payments".into(),
            name: "api-7d9f8c6b5-x2k4q".into(),
            uid: "0c3f2e1d-9b8a-4c7d-8e6f-5a4b3c2d1e0f".into(),
        }),
        ..Default::default()
    };
    assert!(crate::grpc::validate::broken_rules("zen.ingest.v1.AgentEvent", &event).is_none());
    let typed = per_call(iterations, || {
        std::hint::black_box(crate::grpc::validate::broken_rules(
            "zen.ingest.v1.AgentEvent",
            &event,
        ));
    });
    out.push_str(&format!(
        "| AgentEvent in a batch (typed: encode, decode and check) | - | {typed:.0} |\n"
    ));
    Ok(out)
}
