//! Test harness: a real tonic server on loopback implementing the test contract, the gateway
//! in front of it over a plain TCP channel, and an axum HTTP server on 127.0.0.1:0.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use zen_gateway::{Gateway, GatewayConfig};

pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_gateway_test_includes.rs"));
}

use pb::zen::gateway::test::v1 as t;
use t::test_service_server::{TestService, TestServiceServer};

/// The test contract's descriptor set, as the gateway receives Zen's.
pub static DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/gateway_test_descriptor.bin"));

/// One call the test server received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub metadata: HashMap<String, String>,
    pub request: serde_json::Value,
}

/// What the test server saw.
#[derive(Default)]
pub struct Recorded {
    pub calls: Mutex<Vec<Call>>,
    pub creates: AtomicI64,
    pub stream_cancelled: AtomicBool,
    /// The `update_mask` paths of every UpdateThing call, as the server received them.
    pub update_masks: Mutex<Vec<Vec<String>>>,
}

impl Recorded {
    pub fn last(&self, method: &str) -> Option<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|c| c.method == method)
            .cloned()
    }

    pub fn count(&self, method: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.method == method)
            .count()
    }
}

struct Svc {
    state: Arc<Recorded>,
    pool: DescriptorPool,
}

impl Svc {
    fn record<T: Message>(&self, method: &str, req: &Request<T>) -> serde_json::Value {
        let desc = self
            .pool
            .get_message_by_name(&format!("zen.gateway.test.v1.{method}Request"))
            .expect("request type");
        let dynamic = DynamicMessage::decode(desc, req.get_ref().encode_to_vec().as_slice())
            .expect("decodes");
        let json = dynamic
            .serialize_with_options(
                serde_json::value::Serializer,
                &SerializeOptions::new().stringify_64_bit_integers(true),
            )
            .expect("serializes");
        let metadata = req
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        self.state.calls.lock().unwrap().push(Call {
            method: method.to_owned(),
            metadata,
            request: json.clone(),
        });
        json
    }

    fn echo<T: Message>(&self, method: &str, req: &Request<T>) -> Response<t::EchoResponse> {
        let json = self.record(method, req);
        Response::new(t::EchoResponse {
            request_json: json.to_string(),
            method: method.to_owned(),
        })
    }
}

fn thing(id: &str) -> t::Thing {
    t::Thing {
        thing_id: id.to_owned(),
        display_name: format!("Thing {id}"),
        color: t::Color::Green as i32,
        size_bytes: 1 << 40,
        create_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        labels: [("env".to_owned(), "prod".to_owned())].into(),
        count: Some(0),
        version: 3,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl TestService for Svc {
    async fn get_thing(
        &self,
        request: Request<t::GetThingRequest>,
    ) -> Result<Response<t::GetThingResponse>, Status> {
        self.record("GetThing", &request);
        let id = request.get_ref().thing_id.clone();
        if id == "missing" {
            return Err(Status::not_found("thing missing not found"));
        }
        let mut response = Response::new(t::GetThingResponse {
            thing: Some(thing(&id)),
            etag: "e1".into(),
        });
        response
            .metadata_mut()
            .insert("x-zen-contract-version", "v1".parse().unwrap());
        Ok(response)
    }

    async fn get_by_name(
        &self,
        request: Request<t::GetByNameRequest>,
    ) -> Result<Response<t::EchoResponse>, Status> {
        Ok(self.echo("GetByName", &request))
    }

    async fn get_nested(
        &self,
        request: Request<t::GetNestedRequest>,
    ) -> Result<Response<t::EchoResponse>, Status> {
        Ok(self.echo("GetNested", &request))
    }

    async fn create_thing(
        &self,
        request: Request<t::CreateThingRequest>,
    ) -> Result<Response<t::CreateThingResponse>, Status> {
        self.record("CreateThing", &request);
        let req = request.into_inner();
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.delay_ms as u64)).await;
        }
        if req.fail_code != 0 {
            return Err(Status::new(req.fail_code.into(), "create failed"));
        }
        let n = self.state.creates.fetch_add(1, Ordering::SeqCst) + 1;
        let mut created = req.thing.unwrap_or_default();
        created.thing_id = format!("th-{n}");
        created.version = 1;
        Ok(Response::new(t::CreateThingResponse {
            thing: Some(created),
            call_count: n,
        }))
    }

    async fn update_thing(
        &self,
        request: Request<t::UpdateThingRequest>,
    ) -> Result<Response<t::CreateThingResponse>, Status> {
        self.record("UpdateThing", &request);
        let paths = request
            .get_ref()
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        self.state.update_masks.lock().unwrap().push(paths);
        Ok(Response::new(t::CreateThingResponse {
            thing: request.into_inner().thing,
            call_count: 0,
        }))
    }

    async fn suspend_thing(
        &self,
        request: Request<t::SuspendThingRequest>,
    ) -> Result<Response<t::EchoResponse>, Status> {
        Ok(self.echo("SuspendThing", &request))
    }

    async fn delete_thing(
        &self,
        request: Request<t::DeleteThingRequest>,
    ) -> Result<Response<t::EchoResponse>, Status> {
        Ok(self.echo("DeleteThing", &request))
    }

    async fn search(
        &self,
        request: Request<t::SearchRequest>,
    ) -> Result<Response<t::EchoResponse>, Status> {
        Ok(self.echo("Search", &request))
    }

    async fn purge(
        &self,
        request: Request<t::PurgeRequest>,
    ) -> Result<Response<t::EchoResponse>, Status> {
        Ok(self.echo("Purge", &request))
    }

    async fn fail(
        &self,
        request: Request<t::FailRequest>,
    ) -> Result<Response<t::EchoResponse>, Status> {
        self.record("Fail", &request);
        let req = request.into_inner();
        let mut details = ErrorDetails::new();
        if !req.reason.is_empty() {
            details.set_error_info(
                req.reason.clone(),
                "zen",
                [("current_version".to_owned(), "4".to_owned())],
            );
        }
        for v in &req.violations {
            let (field, desc) = v.split_once(':').unwrap_or((v, "bad"));
            details.add_bad_request_violation(field, desc);
        }
        if req.retry_seconds > 0 {
            details.set_retry_info(Some(Duration::from_secs(req.retry_seconds as u64)));
        }
        Err(Status::with_error_details(
            req.code.into(),
            req.message,
            details,
        ))
    }

    async fn receive_hook(
        &self,
        request: Request<t::ReceiveHookRequest>,
    ) -> Result<Response<t::ReceiveHookResponse>, Status> {
        self.record("ReceiveHook", &request);
        let req = request.into_inner();
        let body = req.body.unwrap_or_default();
        Ok(Response::new(t::ReceiveHookResponse {
            content_type: body.content_type,
            body_text: String::from_utf8_lossy(&body.data).into_owned(),
            headers: req.headers,
            source_id: req.source_id,
        }))
    }

    async fn download(
        &self,
        request: Request<t::DownloadRequest>,
    ) -> Result<Response<pb::google::api::HttpBody>, Status> {
        self.record("Download", &request);
        Ok(Response::new(pb::google::api::HttpBody {
            content_type: "text/csv".into(),
            data: b"a,b\n1,2\n".to_vec(),
            extensions: Vec::new(),
        }))
    }

    async fn begin_login(
        &self,
        request: Request<t::BeginLoginRequest>,
    ) -> Result<Response<t::BeginLoginResponse>, Status> {
        self.record("BeginLogin", &request);
        Ok(Response::new(t::BeginLoginResponse {
            url: "https://idp.example/authorize?state=s1".into(),
            state: "s1".into(),
        }))
    }

    type WatchThingsStream = ReceiverStream<Result<t::WatchThingsResponse, Status>>;

    async fn watch_things(
        &self,
        request: Request<t::WatchThingsRequest>,
    ) -> Result<Response<Self::WatchThingsStream>, Status> {
        self.record("WatchThings", &request);
        let req = request.into_inner();
        if req.tenant_id == "denied" {
            return Err(Status::permission_denied("not a member"));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let state = self.state.clone();
        tokio::spawn(async move {
            let pad = "x".repeat(req.pad_bytes.max(0) as usize);
            for seq in 1..=i64::from(req.count) {
                let msg = t::WatchThingsResponse {
                    seq,
                    tenant_id: req.tenant_id.clone(),
                    pad: pad.clone(),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    state.stream_cancelled.store(true, Ordering::SeqCst);
                    return;
                }
                if req.interval_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(req.interval_ms as u64)).await;
                }
            }
            if req.fail_code != 0 {
                let _ = tx
                    .send(Err(Status::new(req.fail_code.into(), "stream failed")))
                    .await;
                return;
            }
            if req.hold_open {
                tx.closed().await;
                state.stream_cancelled.store(true, Ordering::SeqCst);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn upload(
        &self,
        _request: Request<tonic::Streaming<t::UploadRequest>>,
    ) -> Result<Response<t::EchoResponse>, Status> {
        Err(Status::unimplemented("upload"))
    }
}

/// A running test server, gateway and HTTP front.
pub struct Harness {
    pub base: String,
    pub addr: SocketAddr,
    pub state: Arc<Recorded>,
    pub gateway: Gateway,
    pub client: reqwest::Client,
}

impl Harness {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The config the tests start from.
pub fn config() -> GatewayConfig {
    GatewayConfig {
        supported_contract_versions: vec!["v1".into()],
        idempotency: Some(Arc::new(zen_gateway::MemoryIdempotencyStore::new())),
        request_timeout: Duration::from_secs(5),
        ..GatewayConfig::default()
    }
}

pub async fn start(config: GatewayConfig) -> Harness {
    let state = Arc::new(Recorded::default());
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc_listener.local_addr().unwrap();
    let svc = Svc {
        state: state.clone(),
        pool: DescriptorPool::decode(DESCRIPTORS).unwrap(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TestServiceServer::new(svc))
            .serve_with_incoming(TcpListenerStream::new(grpc_listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect_lazy();
    let gateway = Gateway::new(DESCRIPTORS, channel, config).expect("gateway builds");
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http_listener.local_addr().unwrap();
    let app = gateway.router();
    tokio::spawn(async move {
        axum::serve(
            http_listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Harness {
        base: format!("http://{addr}"),
        addr,
        state,
        gateway,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}
