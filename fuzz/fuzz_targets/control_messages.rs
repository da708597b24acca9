//! Fuzzes the control socket's message decoders and the checks run on what they decode. Any
//! input must decode or be refused, never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    eali::control::service::fuzz_messages(data);
});
