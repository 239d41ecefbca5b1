//! The `zen` package: configuration, composition and the gRPC service adapters. The binary in
//! `main.rs` is a thin CLI over this library, which the end-to-end tests also embed.

pub mod agent;
pub mod audit_archive;
pub mod audit_batch;
pub mod auth;
pub mod authz;
pub mod bench;
pub mod bench_validation;
pub mod bench_webhooks;
pub mod cluster_metrics;
pub mod config;
pub mod console;
pub mod drain;
pub mod grpc;
pub mod http;
pub mod http_edge;
pub mod idempotency;
pub mod limits;
pub mod ops;
pub mod outage;
pub mod proto;
pub mod readiness;
pub mod remediation;
pub mod retention;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod tls;
