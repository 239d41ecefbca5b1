//! Generates the `buf.validate` types from the repository's vendored validate.proto with protox
//! (no system `protoc`), deriving `ReflectMessage` for each message as prost-reflect-build would.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = "buf/validate/validate.proto";
    println!("cargo:rerun-if-changed={}", include.join(file).display());

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("file_descriptor_set.bin");
    let mut compiler = protox::Compiler::new([&include])?;
    compiler.include_imports(true);
    compiler.open_file(file)?;
    std::fs::write(&descriptor_path, compiler.encode_file_descriptor_set())?;

    let mut config = prost_build::Config::new();
    config.file_descriptor_set_path(&descriptor_path);
    if std::env::var_os("CARGO_FEATURE_REFLECT").is_some() {
        for message in compiler.file_descriptor_set().file.iter().flat_map(|f| {
            let package = f.package().to_owned();
            f.message_type
                .iter()
                .flat_map(move |m| nested_names(&format!("{package}.{}", m.name()), m))
        }) {
            config
                .type_attribute(&message, "#[derive(::prost_reflect::ReflectMessage)]")
                .type_attribute(&message, format!(r#"#[prost_reflect(message_name = "{message}")]"#))
                .type_attribute(&message, r#"#[prost_reflect(descriptor_pool = "DESCRIPTOR_POOL")]"#);
        }
    }
    config.skip_protoc_run().compile_protos(&[include.join(file)], &[include])?;
    Ok(())
}

/// The full names of a message and of every message nested in it (map entries included, as
/// prost-reflect-build derives for every message of the pool).
fn nested_names(full_name: &str, message: &prost_types::DescriptorProto) -> Vec<String> {
    let mut out = vec![full_name.to_owned()];
    for nested in &message.nested_type {
        out.extend(nested_names(&format!("{full_name}.{}", nested.name()), nested));
    }
    out
}
