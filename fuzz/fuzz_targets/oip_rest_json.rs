//! Fuzzes the REST JSON request decoder. Any input must decode to a request or an error, never
//! panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    eali::serve::oip::fuzz_rest_json(data);
});
