//! Compiles the .proto files with protox (pure Rust: no system `protoc`) and generates the
//! tonic client and server code from the descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["raftsql/v1/raftsql.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
