//! The fuzz target's entry point (`fuzz/fuzz_targets/oip_decoders.rs`) over generated inputs, so
//! CI checks the decoders without a nightly toolchain: random bytes, and valid REST, binary and
//! gRPC requests with random bytes changed, cut or appended. None may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod fuzz_support;

use eali::serve::oip::fuzz_decoders;
use eali::serve::oip::grpc::pb;
use fuzz_support::mutate;
use proptest::prelude::*;
use prost::Message as _;

fn rest_json() -> Vec<u8> {
    br#"{"id":"x","parameters":{"timeout":10,"binary_data_output":true},"inputs":[{"name":"input","shape":[1,2,2],"datatype":"FP32","data":[[1,2],[3,4]]},{"name":"s","shape":[2],"datatype":"BYTES","data":["a","b"]}],"outputs":[{"name":"output","parameters":{"binary_data":true}}]}"#.to_vec()
}

fn rest_binary() -> Vec<u8> {
    let header = br#"{"inputs":[{"name":"input","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"b","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#;
    let mut v = (header.len() as u16).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend(1.0f32.to_le_bytes());
    v.extend(2.0f32.to_le_bytes());
    v.extend([2, 0, 0, 0, b'h', b'i']);
    v
}

fn grpc() -> Vec<u8> {
    pb::ModelInferRequest {
        model_name: "m".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 2],
            parameters: Default::default(),
            contents: Some(pb::InferTensorContents {
                fp32_contents: vec![1.0, 2.0],
                ..Default::default()
            }),
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_decoders(&data);
    }

    #[test]
    fn mutated_requests(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in 0usize..16,
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let base = [rest_json, rest_binary, grpc][which]();
        fuzz_decoders(&mutate(base, &edits, cut, &tail));
    }
}

#[test]
fn valid_requests_decode() {
    use eali::serve::oip::{grpc as g, json};
    assert!(json::decode_request(&rest_json(), None).is_ok());
    let b = rest_binary();
    let n = usize::from(u16::from_le_bytes([b[0], b[1]]));
    assert!(json::decode_request(&b[2..], Some(n)).is_ok());
    assert!(g::decode_request(pb::ModelInferRequest::decode(grpc().as_slice()).unwrap()).is_ok());
}
