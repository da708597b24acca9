//! REST codec checks: JSON and binary-extension requests, the bad-input cases, responses.

use super::*;
use crate::serve::oip::{ErrorKind, OutputTensor};

fn decode(body: &str) -> Result<InferRequest, OipError> {
    decode_request(body.as_bytes(), None)
}

#[test]
fn json_request_with_nested_and_flat_data() {
    let r = decode(
        r#"{"id":"r1","parameters":{"timeout":5000,"binary_data_output":true},
            "inputs":[{"name":"input","shape":[1,2,2],"datatype":"FP32","data":[[1,2],[3.5,-4]]}],
            "outputs":[{"name":"output","parameters":{"binary_data":false}}]}"#,
    )
    .unwrap();
    assert_eq!(r.id.as_deref(), Some("r1"));
    assert_eq!(r.timeout_us(), Ok(Some(5000)));
    assert_eq!(
        r.inputs[0].data,
        TensorData::Fp32(vec![1.0, 2.0, 3.5, -4.0])
    );
    assert_eq!(r.inputs[0].shape, vec![1, 2, 2]);
    // The output's own parameter wins over the request-wide one.
    assert!(!wants_binary(&r, "output"));
    assert!(wants_binary(&r, "other"));

    let flat =
        decode(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#)
            .unwrap();
    assert_eq!(
        flat.inputs[0].data,
        TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0])
    );
    assert!(flat.outputs.is_empty());
}

#[test]
fn other_datatypes_are_counted_not_decoded() {
    let r = decode(r#"{"inputs":[{"name":"x","shape":[3],"datatype":"INT32","data":[1,2,3]}]}"#)
        .unwrap();
    assert_eq!(r.inputs[0].datatype, Datatype::Int32);
    assert_eq!(r.inputs[0].data, TensorData::Other);
    let r = decode(r#"{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["a","b"]}]}"#)
        .unwrap();
    assert_eq!(r.inputs[0].data, TensorData::Other);
}

#[test]
fn bad_requests_say_why() {
    let cases = [
        ("{", "malformed"),
        (
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#,
            "1 values for shape [2], expected 2",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FLOAT32","data":[1,2]}]}"#,
            "unknown datatype",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,"a"]}]}"#,
            "data",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[-2],"datatype":"FP32","data":[]}]}"#,
            "negative",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
            "has no data",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"parameters":{"p":[1]}}"#,
            "parameter 'p'",
        ),
        (r#"{"inputs":{"name":"x"}}"#, "malformed"),
        (r#"{"outputs":[]}"#, "malformed"),
    ];
    for (body, why) in cases {
        let e = decode(body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{body}");
        assert_eq!(e.http_status(), 400);
        assert!(e.message.contains(why), "{body}: {}", e.message);
    }
}

#[test]
fn binary_extension_request() {
    let header = r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},
        {"name":"b","shape":[1],"datatype":"FP32","data":[7]},
        {"name":"c","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
    let mut body = header.as_bytes().to_vec();
    for v in [1.0f32, 2.0, 3.0] {
        body.extend(v.to_le_bytes());
    }
    let r = decode_request(&body, Some(header.len())).unwrap();
    assert_eq!(r.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0]));
    assert_eq!(r.inputs[1].data, TensorData::Fp32(vec![7.0]));
    assert_eq!(r.inputs[2].data, TensorData::Fp32(vec![3.0]));

    // Header length past the body, leftover bytes, short data, size not matching the shape.
    assert!(decode_request(&body, Some(body.len() + 1)).is_err());
    let mut extra = body.clone();
    extra.push(0);
    assert!(
        decode_request(&extra, Some(header.len()))
            .unwrap_err()
            .message
            .contains("not claimed")
    );
    assert!(decode_request(&body[..body.len() - 1], Some(header.len())).is_err());
    let wrong = r#"{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
    let mut body = wrong.as_bytes().to_vec();
    body.extend([0u8; 8]);
    assert!(
        decode_request(&body, Some(wrong.len()))
            .unwrap_err()
            .message
            .contains("expected 12")
    );
}

#[test]
fn responses_in_json_and_binary() {
    let resp = InferResponse {
        model_name: "m".into(),
        model_version: "1".into(),
        id: Some("r".into()),
        parameters: [("simulated".to_string(), Param::Bool(true))]
            .into_iter()
            .collect(),
        outputs: vec![OutputTensor {
            name: "output".into(),
            shape: vec![1, 2],
            data: vec![0.5, -1.0],
        }],
    };
    let (json, n) = encode_response(&resp, &|_| false);
    assert_eq!(n, None);
    let v: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["outputs"][0]["data"], serde_json::json!([0.5, -1.0]));
    assert_eq!(v["outputs"][0]["datatype"], "FP32");
    assert_eq!(v["parameters"]["simulated"], true);
    assert_eq!(v["id"], "r");

    let (bin, n) = encode_response(&resp, &|name| name == "output");
    let n = n.unwrap();
    let v: Value = serde_json::from_slice(&bin[..n]).unwrap();
    assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert!(v["outputs"][0].get("data").is_none());
    assert_eq!(&bin[n..n + 4], &0.5f32.to_le_bytes());
    assert_eq!(bin.len(), n + 8);

    let e: Value = serde_json::from_slice(&error_body("no \"model\"")).unwrap();
    assert_eq!(e["error"], "no \"model\"");
}
