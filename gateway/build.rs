//! Compiles the gateway's test contract (`tests/proto`) with protox, like the root build script
//! compiles Zen's: the encoded descriptor set (custom options and comments kept) is what the
//! tests hand to the gateway, and the generated tonic server is the loopback service behind it.
//! The vendored `google/` and `zen/common` protos are reached through the include path
//! `../proto`, never copied.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let test_root = Path::new("tests/proto");
    let shared_root = Path::new("../proto");
    println!("cargo:rerun-if-changed=tests/proto");
    println!("cargo:rerun-if-changed=../proto/google");
    println!("cargo:rerun-if-changed=../proto/zen/common");

    let mut compiler = protox::Compiler::new([test_root, shared_root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files([test_root.join("zen/gateway/test/v1/test.proto")])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("gateway_test_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .include_file("_gateway_test_includes.rs")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
