//! Compiles the contracts in `proto/` with protox (pure Rust, no system `protoc`) into prost
//! messages and tonic services, and writes the encoded descriptor set that reflection and the
//! REST gateway load at run time.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    let mut files = Vec::new();
    collect_protos(&root.join("zen"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new([root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    // Encoded by protox itself so custom options (`zen.common.v1.policy`, `google.api.http`)
    // survive: `prost_types` would drop them as unknown fields. Source info carries the
    // comments that reflection and the OpenAPI document show.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("zen_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        // Services whose logic has not landed answer UNIMPLEMENTED instead of pretending.
        .generate_default_stubs(true)
        .include_file("_includes.rs")
        .compile_fds(fds)?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
