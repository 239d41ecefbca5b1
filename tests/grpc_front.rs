//! The mutual-TLS gRPC front, end to end over real sockets and real TLS.

mod support;

use std::time::Duration;

use support::{connect, TestZen};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use zen::grpc::services::SERVICE_NAMES;

async fn health(channel: tonic::transport::Channel, service: &str) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// Waits until the health driver has published SERVING for every service. (The server as a
/// whole, `""`, is SERVING from the start, before the driver's first check has registered the
/// services, so it cannot tell that the driver ran.)
async fn wait_serving(zen: &TestZen) {
    for _ in 0..100 {
        let mut serving = true;
        for service in SERVICE_NAMES.iter().copied().chain([""]) {
            serving &= matches!(health(zen.admin().await, service).await, Ok(s) if s == ServingStatus::Serving as i32);
        }
        if serving {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("zen never reported SERVING");
}

#[tokio::test]
async fn admin_identity_sees_every_service_serving() {
    let zen = TestZen::start().await;
    wait_serving(&zen).await;
    for service in SERVICE_NAMES {
        let status = health(zen.admin().await, service).await.unwrap();
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    let unknown = health(zen.admin().await, "zen.nope.v1.Nope")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    zen.stop().await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let zen = TestZen::start().await;
    wait_serving(&zen).await;
    let pki = zen.pki();
    // TLS 1.3 lets the client finish its side of the handshake before the server checks the
    // certificate, so the refusal may surface at connect or at the first call.
    let refused = match connect(zen.running.grpc_addr, &pki.join("ca.crt"), None).await {
        Err(_) => true,
        Ok(channel) => health(channel, "").await.is_err(),
    };
    assert!(refused, "a client without a certificate got an answer");
    zen.stop().await;
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let zen = TestZen::start().await;
    wait_serving(&zen).await;
    let other = tempfile::tempdir().unwrap();
    let other_pki = zen_security::PkiFiles::new(other.path());
    other_pki.create_dev(&["localhost".into()]).unwrap();
    // Trust Zen's CA (so the server is fine) but present the other CA's admin identity.
    let result = match connect(
        zen.running.grpc_addr,
        &zen.pki().join("ca.crt"),
        Some((&other_pki.cert("admin"), &other_pki.key("admin"))),
    )
    .await
    {
        Err(_) => None,
        Ok(channel) => health(channel, "").await.ok(),
    };
    assert_eq!(result, None, "a foreign client certificate got an answer");
    zen.stop().await;
}

#[tokio::test]
async fn issued_service_identity_is_accepted() {
    let zen = TestZen::start().await;
    wait_serving(&zen).await;
    let files = zen_security::PkiFiles::new(zen.pki());
    let ca = files.load_ca().unwrap();
    let gateway = zen_security::PeerIdentity::Service {
        name: "gateway".into(),
    };
    let issued = ca.issue_client(&gateway, Duration::from_secs(600)).unwrap();
    files.write_identity("gateway", &issued).unwrap();
    let channel = zen.channel_as("gateway").await.unwrap();
    assert_eq!(
        health(channel, "").await.unwrap(),
        ServingStatus::Serving as i32
    );
    zen.stop().await;
}

#[tokio::test]
async fn reflection_lists_every_zen_service_in_both_versions() {
    use tokio_stream::StreamExt;
    let zen = TestZen::start().await;

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Req;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Resp;
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1Req::ListServices(String::new())),
    };
    let mut responses = V1::new(zen.admin().await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(response)) = responses.next().await else {
        panic!("no v1 reflection answer")
    };
    let Some(V1Resp::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected v1 answer")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in SERVICE_NAMES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }

    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AReq;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AResp;
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AReq::ListServices(String::new())),
    };
    let mut responses = V1Alpha::new(zen.admin().await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(response)) = responses.next().await else {
        panic!("no v1alpha reflection answer")
    };
    let Some(AResp::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected v1alpha answer")
    };
    assert_eq!(
        list.service
            .iter()
            .filter(|s| s.name.starts_with("zen."))
            .count(),
        5
    );
    zen.stop().await;
}

/// Calls `grpc.health.v1.Health/Check` with extra metadata; the contract-version check sits
/// at the edge, in front of every service.
async fn health_with_metadata(
    zen: &TestZen,
    metadata: &[(&'static str, &'static str)],
) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    HealthClient::new(zen.admin().await).check(request).await
}

#[tokio::test]
async fn contract_versions_and_request_ids_are_enforced_at_the_edge() {
    let zen = TestZen::start().await;
    wait_serving(&zen).await;

    let refused = health_with_metadata(&zen, &[("x-zen-contract-version", "v0")])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("supported: v1"),
        "{}",
        refused.message()
    );

    let answered = health_with_metadata(
        &zen,
        &[
            ("x-zen-contract-version", "v1"),
            ("x-request-id", "req-123"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        answered.metadata().get("x-request-id").unwrap(),
        "req-123",
        "the request id is echoed"
    );

    let generated = health_with_metadata(&zen, &[]).await.unwrap();
    let id = generated
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);

    let bad_id = health_with_metadata(&zen, &[("x-request-id", "a b")])
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    zen.stop().await;
}

#[tokio::test]
async fn http_side_reports_health_readiness_and_metrics() {
    let zen = TestZen::start().await;
    wait_serving(&zen).await;
    let http = reqwest::Client::new();

    let health = http.get(zen.http_url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    for path in ["/ready", "/readyz"] {
        let ready = http.get(zen.http_url(path)).send().await.unwrap();
        assert_eq!(ready.status(), 200, "{path}");
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["status"], "ready");
        for dependency in ["database", "migrations", "cache"] {
            assert_eq!(body["checks"][dependency]["status"], "healthy", "{body}");
        }
    }
    let database: serde_json::Value = http
        .get(zen.admin_url("/health/database"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(database["status"], "healthy");

    let metrics = http
        .get(zen.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "zen_grpc_requests_total{method=\"/grpc.health.v1.Health/Check\",code=\"Ok\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("zen_grpc_request_duration_seconds_bucket"));
    zen.stop().await;
}
