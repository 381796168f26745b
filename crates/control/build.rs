//! Generates the RPC code from `proto/turnpike.proto` with a protobuf compiler written in Rust
//! (protox), so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/turnpike.proto");
    let descriptors = protox::compile(["proto/turnpike.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
