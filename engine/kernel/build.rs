//! Generates the wire types from `proto/usage_wire.proto` with protox (pure Rust: no protoc binary).

fn main() {
    let proto = "proto/usage_wire.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"]).expect("usage_wire.proto compiles");
    prost_build::Config::new().compile_fds(descriptors).expect("prost generates the wire types");
}
