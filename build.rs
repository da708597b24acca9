//! Compiles the gRPC protocol definitions under `proto/` with a protobuf compiler written in Rust
//! (`protox`), so a build needs no `protoc` on the machine; also ONNX's `onnx.proto` (messages only),
//! which the ONNX importer decodes model files with.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/grpc_predict_v2.proto",
        "proto/deviceplugin/v1beta1/api.proto",
        "proto/podresources/v1/api.proto",
        "proto/control/v1/control.proto",
        "proto/onnx/onnx.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Tensors as `Bytes`: a request's 600 kB input is a slice of the received buffer, not a
        // copy, and a client sends the same one many times without copying it.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
