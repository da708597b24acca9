//! Speed of the REST request decoder on the serving bench's request (a 1×3×8×8 FP32 tensor):
//! JSON with the numbers as clients write them, through the fast path and through serde_json
//! alone side by side, and the binary tensor extension.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench's setup failing is a failed bench

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eali::serve::oip::json::{decode_request, decode_request_serde_only};

/// The tensor's values as f64 (what Python clients send for float32 data: 17-digit reprs) or
/// as shortest f32 decimals.
fn json_body(widen: bool) -> Vec<u8> {
    let values: Vec<f32> = (0..192).map(|i| i as f32 / 192.0).collect();
    // serde_json writes an f32 in its shortest form only when serialising the f32 itself.
    let data = if widen {
        serde_json::to_string(&values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())
    } else {
        serde_json::to_string(&values)
    }
    .expect("numbers serialise");
    format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,3,8,8],"datatype":"FP32","data":{data}}}]}}"#
    )
    .into_bytes()
}

fn binary_body() -> (Vec<u8>, usize) {
    let values: Vec<f32> = (0..192).map(|i| i as f32 / 192.0).collect();
    let header =
        serde_json::json!({"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32",
        "parameters": {"binary_data_size": values.len() * 4}}]})
        .to_string();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    (bytes, header.len())
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_request");
    group.throughput(Throughput::Elements(192));
    for (name, widen) in [("json_f64_repr", true), ("json_f32_repr", false)] {
        let body = json_body(widen);
        group.bench_function(format!("{name}/fast_path"), |b| {
            b.iter(|| decode_request(black_box(&body), None))
        });
        group.bench_function(format!("{name}/serde_only"), |b| {
            b.iter(|| decode_request_serde_only(black_box(&body), None))
        });
    }
    let (body, n) = binary_body();
    group.bench_function("binary_extension", |b| {
        b.iter(|| decode_request(black_box(&body), Some(n)))
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
