//! Fuzzes the model-file decoders (graph JSON, safetensors with its architecture metadata). Any
//! input must be read or refused, never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    eali::serve::source::fuzz_model_file(data);
});
