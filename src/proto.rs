//! Code generated from `proto/` by `build.rs`, and the encoded descriptor set.
//!
//! Only the gRPC service adapters (`crate::grpc::services`) and the composition root use these
//! types; the libraries under `crates/` never see generated code.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

/// The encoded `FileDescriptorSet` of every contract, for reflection and the REST gateway.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/zen_descriptor.bin"));

/// [`FILE_DESCRIPTOR_SET`] decoded once, for code that reads messages by name (proto3 JSON,
/// validation of typed messages).
pub static DESCRIPTOR_POOL: std::sync::LazyLock<prost_reflect::DescriptorPool> =
    std::sync::LazyLock::new(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the built descriptor set")
    });
