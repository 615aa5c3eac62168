//! Compiles the .proto files with protox (pure Rust: no system `protoc`) and generates the
//! tonic client and server code from the descriptor set, which it also writes, encoded, to
//! `$OUT_DIR/raftsql_descriptor.bin` for server reflection (`FILE_DESCRIPTOR_SET` in lib.rs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["raftsql/v1/raftsql.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("raftsql_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Our codec: a message that does not decode (e.g. a `string` field holding invalid UTF-8)
    // is the caller's INVALID_ARGUMENT, not prost's default INTERNAL.
    tonic_prost_build::configure().codec_path("crate::codec::Codec").compile_fds(fds)?;
    Ok(())
}
