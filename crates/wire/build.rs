//! Generates the RPC code from `proto/turnpike.proto` with a protobuf compiler written in Rust
//! (protox), so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/turnpike.proto");
    let descriptors = protox::compile(["proto/turnpike.proto"], ["proto"])?;
    // Request and response bodies as `bytes::Bytes`: handing a body from HTTP to a message, to
    // a retry, to the guest and back shares one buffer instead of copying it at every step.
    tonic_prost_build::configure()
        .bytes(".turnpike.v1.Invocation.body")
        .bytes(".turnpike.v1.Response.body")
        .bytes(".turnpike.v1.OutcomeFrame.chunk")
        .bytes(".turnpike.v1.InvocationFrame.chunk")
        .compile_fds(descriptors)?;
    Ok(())
}
