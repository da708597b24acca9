//! gRPC codec of the Open Inference Protocol: the generated `inference` protobuf types and their
//! conversion to and from the transport-independent request and response.

use super::{
    Datatype, InferInput, InferRequest, InferResponse, OipError, Param, Params, RequestedOutput,
    TensorData, decode_raw, element_count,
};

/// Types and service stubs generated from `proto/grpc_predict_v2.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::infer_parameter::ParameterChoice;

fn params(map: std::collections::HashMap<String, pb::InferParameter>) -> Params {
    map.into_iter()
        .filter_map(|(k, v)| {
            let p = match v.parameter_choice? {
                ParameterChoice::BoolParam(b) => Param::Bool(b),
                ParameterChoice::Int64Param(i) => Param::Int(i),
                ParameterChoice::StringParam(s) => Param::Str(s),
                ParameterChoice::DoubleParam(d) => Param::Double(d),
                ParameterChoice::Uint64Param(u) => match i64::try_from(u) {
                    Ok(i) => Param::Int(i),
                    Err(_) => Param::Double(u as f64),
                },
            };
            Some((k, p))
        })
        .collect()
}

fn to_pb_param(p: &Param) -> pb::InferParameter {
    let choice = match p {
        Param::Bool(b) => ParameterChoice::BoolParam(*b),
        Param::Int(i) => ParameterChoice::Int64Param(*i),
        Param::Double(d) => ParameterChoice::DoubleParam(*d),
        Param::Str(s) => ParameterChoice::StringParam(s.clone()),
    };
    pb::InferParameter {
        parameter_choice: Some(choice),
    }
}

/// Number of typed values in `contents` for a datatype (the field the protocol assigns to it).
fn typed_count(d: Datatype, c: &pb::InferTensorContents) -> usize {
    match d {
        Datatype::Bool => c.bool_contents.len(),
        Datatype::Int8 | Datatype::Int16 | Datatype::Int32 => c.int_contents.len(),
        Datatype::Int64 => c.int64_contents.len(),
        Datatype::Uint8 | Datatype::Uint16 | Datatype::Uint32 => c.uint_contents.len(),
        Datatype::Uint64 => c.uint64_contents.len(),
        Datatype::Fp32 => c.fp32_contents.len(),
        Datatype::Fp64 => c.fp64_contents.len(),
        Datatype::Bytes => c.bytes_contents.len(),
        // FP16 and BF16 have no typed field: raw contents only.
        Datatype::Fp16 | Datatype::Bf16 => 0,
    }
}

/// Decodes a gRPC infer request (typed or raw contents).
pub fn decode_request(req: pb::ModelInferRequest) -> Result<InferRequest, OipError> {
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(OipError::bad_request(format!(
            "{} raw_input_contents for {} inputs",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (k, i) in req.inputs.into_iter().enumerate() {
        let datatype = Datatype::parse(&i.datatype)
            .map_err(|e| OipError::bad_request(format!("input '{}': {e}", i.name)))?;
        let data = match (raw.get(k), i.contents) {
            (Some(_), Some(_)) => {
                return Err(OipError::bad_request(format!(
                    "input '{}' has both typed contents and raw_input_contents",
                    i.name
                )));
            }
            (Some(bytes), None) => decode_raw(&i.name, datatype, &i.shape, bytes)?,
            (None, Some(c)) => {
                let n = element_count(&i.shape)?;
                let got = typed_count(datatype, &c);
                if got != n {
                    return Err(OipError::bad_request(format!(
                        "input '{}': {got} {datatype} contents for shape {:?}, expected {n}",
                        i.name, i.shape
                    )));
                }
                if datatype == Datatype::Fp32 {
                    TensorData::Fp32(c.fp32_contents)
                } else {
                    TensorData::Other
                }
            }
            (None, None) => {
                return Err(OipError::bad_request(format!(
                    "input '{}' has no data",
                    i.name
                )));
            }
        };
        inputs.push(InferInput {
            name: i.name,
            datatype,
            shape: i.shape,
            parameters: params(i.parameters),
            data,
        });
    }
    Ok(InferRequest {
        id: (!req.id.is_empty()).then_some(req.id),
        parameters: params(req.parameters),
        inputs,
        outputs: req
            .outputs
            .into_iter()
            .map(|o| RequestedOutput {
                name: o.name,
                parameters: params(o.parameters),
            })
            .collect(),
    })
}

/// Encodes a response with raw output contents (what Triton sends).
pub fn encode_response(resp: InferResponse) -> pb::ModelInferResponse {
    let mut raw: Vec<bytes::Bytes> = Vec::with_capacity(resp.outputs.len());
    let outputs = resp
        .outputs
        .into_iter()
        .map(|o| {
            raw.push(
                o.data
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>()
                    .into(),
            );
            pb::model_infer_response::InferOutputTensor {
                name: o.name,
                datatype: Datatype::Fp32.as_str().to_string(),
                shape: o.shape,
                parameters: Default::default(),
                contents: None,
            }
        })
        .collect();
    pb::ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version,
        id: resp.id.unwrap_or_default(),
        parameters: resp
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), to_pb_param(v)))
            .collect(),
        outputs,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::oip::{ErrorKind, OutputTensor};

    fn input(
        shape: Vec<i64>,
        datatype: &str,
        contents: Option<pb::InferTensorContents>,
    ) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn raw_and_typed_contents() {
        let bytes: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut params = std::collections::HashMap::new();
        params.insert("timeout".to_string(), to_pb_param(&Param::Int(100)));
        let req = pb::ModelInferRequest {
            model_name: "m".into(),
            id: "x".into(),
            parameters: params,
            inputs: vec![input(vec![1, 2], "FP32", None)],
            raw_input_contents: vec![bytes.into()],
            ..Default::default()
        };
        let r = decode_request(req).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0]));
        assert_eq!(r.timeout_us(), Ok(Some(100)));
        assert_eq!(r.id.as_deref(), Some("x"));

        let typed = pb::InferTensorContents {
            fp32_contents: vec![3.0, 4.0, 5.0],
            ..Default::default()
        };
        let req = pb::ModelInferRequest {
            inputs: vec![input(vec![3], "FP32", Some(typed))],
            ..Default::default()
        };
        assert_eq!(
            decode_request(req).unwrap().inputs[0].data,
            TensorData::Fp32(vec![3.0, 4.0, 5.0])
        );
    }

    #[test]
    fn invalid_requests() {
        let typed = pb::InferTensorContents {
            fp32_contents: vec![3.0],
            ..Default::default()
        };
        let cases = vec![
            // Count mismatch, unknown datatype, no data, raw count mismatch, raw size mismatch.
            pb::ModelInferRequest {
                inputs: vec![input(vec![2], "FP32", Some(typed.clone()))],
                ..Default::default()
            },
            pb::ModelInferRequest {
                inputs: vec![input(vec![1], "F32", Some(typed.clone()))],
                ..Default::default()
            },
            pb::ModelInferRequest {
                inputs: vec![input(vec![1], "FP32", None)],
                ..Default::default()
            },
            pb::ModelInferRequest {
                inputs: vec![input(vec![1], "FP32", None)],
                raw_input_contents: vec![vec![0; 4].into(), vec![0; 4].into()],
                ..Default::default()
            },
            pb::ModelInferRequest {
                inputs: vec![input(vec![2], "FP32", None)],
                raw_input_contents: vec![vec![0; 4].into()],
                ..Default::default()
            },
            pb::ModelInferRequest {
                inputs: vec![input(vec![1], "FP32", Some(typed))],
                raw_input_contents: vec![vec![0; 4].into()],
                ..Default::default()
            },
        ];
        for c in cases {
            assert_eq!(decode_request(c).unwrap_err().kind, ErrorKind::BadRequest);
        }
    }

    #[test]
    fn response_has_raw_contents() {
        let r = encode_response(InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            parameters: [("simulated".to_string(), Param::Bool(false))]
                .into_iter()
                .collect(),
            outputs: vec![OutputTensor {
                name: "output".into(),
                shape: vec![1, 1],
                data: vec![2.5],
            }],
        });
        assert_eq!(r.raw_output_contents, vec![2.5f32.to_le_bytes().to_vec()]);
        assert_eq!(r.outputs[0].shape, vec![1, 1]);
        assert_eq!(r.id, "");
        assert!(matches!(
            r.parameters["simulated"].parameter_choice,
            Some(ParameterChoice::BoolParam(false))
        ));
    }
}
