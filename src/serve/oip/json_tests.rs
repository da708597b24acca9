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

// The fast path (json_fast.rs) against serde_json: whenever it answers, it must answer exactly
// what serde_json builds (numbers compared bit for bit); and it must answer the usual requests.

impl PartialEq for JsonData {
    fn eq(&self, o: &Self) -> bool {
        self.scalars == o.scalars
            && self.non_number == o.non_number
            && self.numbers.len() == o.numbers.len()
            && self
                .numbers
                .iter()
                .zip(&o.numbers)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

/// `Some(true)` when the fast path decoded `body` (and agreed with serde), `Some(false)` when it
/// handed it to serde; panics when it decoded something serde would not have built.
fn fast_agrees(body: &[u8]) -> bool {
    let serde: Result<JsonRequest, _> = serde_json::from_slice(body);
    match (super::fast::parse(body), serde) {
        (None, _) => false,
        (Some(f), Ok(s)) => {
            assert_eq!(
                f,
                s,
                "fast path and serde differ on {:?}",
                String::from_utf8_lossy(body)
            );
            true
        }
        (Some(f), Err(e)) => panic!(
            "fast path accepted what serde refuses ({e}): {:?} -> {f:?}",
            String::from_utf8_lossy(body)
        ),
    }
}

fn data_body(numbers: &str) -> String {
    format!(r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":[{numbers}]}}]}}"#)
}

#[test]
fn fast_path_numbers_match_serde_bit_for_bit() {
    let taken = [
        "0",
        "-0",
        "1",
        "-1",
        "0.0",
        "-0.0",
        "1.5",
        "-2.25e-3",
        "1E5",
        "1e+5",
        "3.4e38",
        "1.17549435e-38",
        "0.0052083334885537624",
        "0.1",
        "0.3333333432674408",
        "123456789",
        "18446744073709551615",
        "-9223372036854775807",
        "1e-50",
        "9999999999999999999",
        "0.000000000000000000001",
        "16777217",
        "0.5e-22",
        "1.0000000596046448",
    ];
    for n in taken {
        assert!(
            fast_agrees(data_body(n).as_bytes()),
            "fast path should take {n}"
        );
    }
    // Beyond the fast conversion (more than 19 digits, exponents past ±22, f32 overflow, a
    // tie) or not JSON at all: handed to serde, which decodes or refuses them.
    for n in [
        "1.00000000000000000000001",
        "1e400",
        "1e39",
        "-9223372036854775809",
        "1e-400",
        "-1e-400",
        "0e999",
        "123456789012345678",
        "1234567890123456789",
        "1e99999999999",
        "18446744073709551616",
        "01",
        "1.",
        ".5",
        "+1",
        "1e",
        "-",
        "0x10",
        "NaN",
        "1.5e-60",
    ] {
        fast_agrees(data_body(n).as_bytes());
    }
}

#[test]
fn fast_path_hands_everything_unusual_to_serde() {
    let cases = [
        r#"{"inputs":[{"name":"x\n","shape":[1],"datatype":"FP32","data":[1]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":null}]}"#,
        r#"{"id":null,"inputs":[]}"#,
        r#"{"inputs":[],"inputs":[]}"#,
        r#"{"inputs":[{"name":"x","shape":[1.0],"datatype":"FP32","data":[1]}]}"#,
        r#"{"parameters":{"a":1,"a":2},"inputs":[]}"#,
        r#"{"parameters":{"a":{"b":1}},"inputs":[]}"#,
        r#"{"parameters":{"a":-0},"inputs":[]}"#,
        r#"{"outputs":[{}],"inputs":[]}"#,
        r#"{"inputs":[]} x"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[{"a":1}]}]}"#,
        "{\"inputs\":[{\"name\":\"\u{e9}\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}",
        r#"[1]"#,
        "",
    ];
    for c in cases {
        fast_agrees(c.as_bytes());
    }
    // What the fast path takes: unknown keys (skipped), scalars of every kind, nesting,
    // parameters, outputs, whitespace.
    let full = r#" { "id" : "r1", "extra": {"k": [1, "s", true, false, null, {"z": 1.5e3}]},
        "parameters": {"timeout": 5000, "binary_data_output": true, "tag": "a", "f": -1.25},
        "inputs": [ {"name": "x", "shape": [1, 2, 2], "datatype": "FP32",
                     "data": [[1, 2.5], [-3e-2, 4]], "parameters": {"p": 1}},
                    {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["a", true]} ],
        "outputs": [{"name": "output", "parameters": {"binary_data": false}}] } "#;
    assert!(fast_agrees(full.as_bytes()));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Random f32 and f64 values in the forms clients write them (shortest f32, Python's f64
    /// repr, exponent, fixed with few digits, integers) or next to f32 rounding boundaries, and
    /// the bytes of such requests mutated.
    #[test]
    fn fast_path_agrees_with_serde(
        bits in proptest::collection::vec(proptest::prelude::any::<u64>(), 1..24),
        form in 0usize..6,
        edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>(), 0u8..3), 0..4),
    ) {
        let numbers: Vec<String> = bits
            .iter()
            .map(|&b| {
                let f = f64::from_bits(b);
                let f = if f.is_finite() { f } else { (b % 1000) as f64 / 7.0 };
                let scaled = f % 1e6;
                match form {
                    0 => serde_json::to_string(&(scaled as f32)).unwrap(),
                    1 => serde_json::to_string(&scaled).unwrap(),
                    2 => format!("{scaled:e}"),
                    3 => format!("{scaled:.3}"),
                    // Halfway between two f32 values, give or take a few f64 ulps: where
                    // narrowing an f64 to f32 is decided by the last bits.
                    4 => {
                        let a = scaled as f32;
                        let next = f32::from_bits(a.to_bits() + 1);
                        let mid = (f64::from(a) + f64::from(next)) / 2.0;
                        let nudged = f64::from_bits(mid.to_bits().wrapping_add(b % 7).wrapping_sub(3));
                        serde_json::to_string(&nudged).unwrap()
                    }
                    _ => format!("{}", b as i64 >> (b % 64)),
                }
            })
            .collect();
        let body = data_body(&numbers.join(", "));
        // The usual requests are taken by the fast path (serde_json writes no `null` for
        // finite numbers).
        proptest::prop_assert!(fast_agrees(body.as_bytes()) || numbers.iter().any(|n| n.contains("null")));
        let mut bytes = body.into_bytes();
        for (at, byte, op) in edits {
            let at = at % (bytes.len() + 1);
            match op {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        fast_agrees(&bytes);
    }
}
