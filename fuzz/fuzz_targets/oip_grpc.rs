//! Fuzzes the gRPC ModelInferRequest decoder (protobuf, then the conversion). Any input must decode
//! to a request or an error, never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    eali::serve::oip::fuzz_grpc(data);
});
