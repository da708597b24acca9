//! Fuzzes the standalone configuration's YAML reader (`eali serve --config`) and the
//! InferenceService reader. Any input must be read or refused, never panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = eali::serve::config::ServeConfig::from_yaml(&text);
    let _ = eali::k8s::crd::InferenceServiceSpec::from_yaml(&text);
});
