//! Fuzzes the Open Inference Protocol request decoders: REST JSON, the binary tensor data
//! extension and gRPC. Any input must decode to a request or an error, never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    eali::serve::oip::fuzz_decoders(data);
});
