//! The ONNX importer on arbitrary bytes: it refuses what it cannot read, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut no_files = |_: &str| Err::<Vec<u8>, String>("no external data".into());
    let _ = eali::model::onnx::import(data, "fuzz", &mut no_files);
});
