//! A served model as the protocol sees it: name, version, input and output tensors, and the
//! checks that turn a decoded infer request into the samples the queue takes.

use std::sync::Arc;

use serde_json::{Value, json};

use super::oip::{Datatype, InferRequest, OipError, Param, TensorData};
use crate::model::onnx::TensorIo;
use crate::model::{Graph, Shape};

/// Name of the single input tensor of zoo models and EALI graphs (ONNX models keep theirs).
pub const INPUT_NAME: &str = "input";
/// Name of the single output tensor of zoo models and EALI graphs (ONNX models keep theirs).
pub const OUTPUT_NAME: &str = "output";
/// The one version each model is served at.
pub const MODEL_VERSION: &str = "1";
/// Platform string in model metadata.
pub const PLATFORM: &str = "eali";

/// Static facts of a served model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Served name (the InferenceService's name).
    pub name: String,
    /// Kubernetes namespace of the InferenceService (metric label).
    pub namespace: String,
    pub graph: Arc<Graph>,
    pub max_batch: u32,
    pub slo_s: f64,
    /// Percentile of the SLO, 0-1.
    pub percentile: f64,
    /// The input and output tensors as clients name and shape them.
    pub io: TensorIo,
}

/// An admitted request: its samples, ready for the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub samples: u32,
    /// `samples × C × H × W` values.
    pub data: Vec<f32>,
}

fn dims(s: Shape) -> Vec<i64> {
    if s.h == 1 && s.w == 1 {
        vec![i64::from(s.c)]
    } else {
        vec![i64::from(s.c), i64::from(s.h), i64::from(s.w)]
    }
}

/// The tensors of a model that names none: `input` of `[N, C, H, W]`, `output` of `[N, K]` for
/// class scores (else `[N, C, H, W]`).
pub fn default_io(graph: &Graph) -> TensorIo {
    let s = graph.input;
    TensorIo {
        input: INPUT_NAME.into(),
        output: OUTPUT_NAME.into(),
        input_dims: vec![i64::from(s.c), i64::from(s.h), i64::from(s.w)],
        output_dims: dims(graph.output_shape()),
        batch_fixed: false,
    }
}

impl ModelInfo {
    /// Per-sample input dimensions, e.g. `[C, H, W]`.
    pub fn input_dims(&self) -> Vec<i64> {
        self.io.input_dims.clone()
    }

    /// Per-sample output dimensions, e.g. `[K]` for class scores.
    pub fn output_dims(&self) -> Vec<i64> {
        self.io.output_dims.clone()
    }

    /// The batch dimension in metadata: -1 (any), or 1 where the model file fixes it.
    pub fn batch_dim(&self) -> i64 {
        if self.io.batch_fixed { 1 } else { -1 }
    }

    /// Values per output sample.
    pub fn output_len(&self) -> usize {
        self.graph.output_shape().elements() as usize
    }

    /// Model metadata (REST form); shapes carry the batch dimension as -1 (or 1 where the model
    /// fixes it).
    pub fn metadata_json(&self) -> Value {
        let with_batch = |d: Vec<i64>| {
            std::iter::once(self.batch_dim())
                .chain(d)
                .collect::<Vec<i64>>()
        };
        json!({
            "name": self.name,
            "versions": [MODEL_VERSION],
            "platform": PLATFORM,
            "inputs": [{"name": self.io.input, "datatype": "FP32", "shape": with_batch(self.input_dims())}],
            "outputs": [{"name": self.io.output, "datatype": "FP32", "shape": with_batch(self.output_dims())}],
            "parameters": {
                "architecture": self.graph.name,
                "max_batch_size": self.max_batch,
                "slo_latency_ms": self.slo_s * 1e3,
                "slo_percentile": self.percentile * 100.0,
            },
        })
    }

    /// Checks a version path segment or field ("" = any).
    pub fn check_version(&self, version: Option<&str>) -> Result<(), OipError> {
        match version {
            None | Some("") | Some(MODEL_VERSION) => Ok(()),
            Some(v) => Err(OipError::not_found(format!(
                "model '{}' has no version '{v}' (versions: {MODEL_VERSION})",
                self.name
            ))),
        }
    }

    /// Checks a decoded request against the model: one FP32 input with the model's input name
    /// and shape `[N, dims…]` with `1 ≤ N ≤ max_batch` (`N = 1` where the model fixes the batch),
    /// and only the model's output requested.
    pub fn admit(&self, req: InferRequest) -> Result<Admitted, OipError> {
        let (input_name, output_name) = (self.io.input.as_str(), self.io.output.as_str());
        let mut inputs = req.inputs.into_iter();
        let (input, extra) = (inputs.next(), inputs.next());
        let input = match (input, extra) {
            (Some(i), None) => i,
            (first, extra) => {
                let n = usize::from(first.is_some()) + usize::from(extra.is_some()) + inputs.len();
                return Err(OipError::bad_request(format!(
                    "model '{}' takes exactly one input '{input_name}', got {n}",
                    self.name
                )));
            }
        };
        if input.name != input_name {
            return Err(OipError::bad_request(format!(
                "model '{}' has no input '{}' (its input is '{input_name}')",
                self.name, input.name
            )));
        }
        if input.datatype != Datatype::Fp32 {
            return Err(OipError::bad_request(format!(
                "input '{input_name}' must be FP32, got {}",
                input.datatype
            )));
        }
        let want = self.input_dims();
        let shape_ok = input.shape.len() == want.len() + 1 && input.shape[1..] == want[..];
        let n = input.shape.first().copied().unwrap_or(0);
        let most = if self.io.batch_fixed {
            1
        } else {
            i64::from(self.max_batch)
        };
        if !shape_ok || n < 1 || n > most {
            let dims: Vec<String> = want.iter().map(i64::to_string).collect();
            return Err(OipError::bad_request(format!(
                "input '{input_name}' has shape {:?}; expected [N, {}] with 1 <= N <= {most}",
                input.shape,
                dims.join(", ")
            )));
        }
        for o in &req.outputs {
            if o.name != output_name {
                return Err(OipError::bad_request(format!(
                    "model '{}' has no output '{}' (its output is '{output_name}')",
                    self.name, o.name
                )));
            }
            if o.parameters.contains_key("classification") {
                return Err(OipError::bad_request(
                    "the classification extension is not supported",
                ));
            }
        }
        if req
            .parameters
            .get("sequence_id")
            .is_some_and(|p| *p != Param::Int(0))
        {
            return Err(OipError::bad_request("sequence batching is not supported"));
        }
        match input.data {
            TensorData::Fp32(data) => Ok(Admitted {
                samples: n as u32,
                data,
            }),
            // Unreachable after the datatype check; kept as an error rather than a panic.
            TensorData::Other => Err(OipError::bad_request("input data is not FP32")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Conv, GraphBuilder};
    use crate::serve::oip::ErrorKind;
    use crate::serve::oip::json::decode_request;

    fn info() -> ModelInfo {
        let mut b = GraphBuilder::new("tiny", Shape::new(1, 2, 2));
        let x = b.input();
        let y = b.conv("c", x, Conv::new(3, 2)).unwrap();
        let y = b.flatten("f", y).unwrap();
        b.linear("fc", y, 4, true).unwrap();
        let graph = b.finish().unwrap();
        ModelInfo {
            name: "m".into(),
            namespace: "default".into(),
            io: default_io(&graph),
            graph: Arc::new(graph),
            max_batch: 2,
            slo_s: 0.05,
            percentile: 0.99,
        }
    }

    fn req(shape: &str, datatype: &str, n: usize) -> InferRequest {
        let data: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let body = format!(
            r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"{datatype}","data":[{}]}}]}}"#,
            data.join(",")
        );
        decode_request(body.as_bytes(), None).unwrap()
    }

    #[test]
    fn admits_images_of_the_model_shape() {
        let m = info();
        let a = m.admit(req("[2,1,2,2]", "FP32", 8)).unwrap();
        assert_eq!(a.samples, 2);
        assert_eq!(a.data.len(), 8);
        assert_eq!(m.output_dims(), vec![4]);
        let meta = m.metadata_json();
        assert_eq!(meta["inputs"][0]["shape"], json!([-1, 1, 2, 2]));
        assert_eq!(meta["outputs"][0]["shape"], json!([-1, 4]));
    }

    #[test]
    fn refuses_wrong_shape_datatype_name_and_version() {
        let m = info();
        for (r, why) in [
            (req("[1,1,2,3]", "FP32", 6), "expected [N, 1, 2, 2]"),
            (req("[3,1,2,2]", "FP32", 12), "N <= 2"),
            (req("[1,4]", "FP32", 4), "shape [1, 4]"),
            (req("[1,1,2,2]", "INT32", 4), "must be FP32"),
        ] {
            let e = m.admit(r).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert!(e.message.contains(why), "{}", e.message);
        }
        let mut r = req("[1,1,2,2]", "FP32", 4);
        r.inputs[0].name = "image".into();
        assert!(m.admit(r).unwrap_err().message.contains("no input 'image'"));
        let mut r = req("[1,1,2,2]", "FP32", 4);
        r.outputs.push(crate::serve::oip::RequestedOutput {
            name: "probs".into(),
            parameters: Default::default(),
        });
        assert!(
            m.admit(r)
                .unwrap_err()
                .message
                .contains("no output 'probs'")
        );
        assert!(m.check_version(Some("1")).is_ok());
        assert_eq!(
            m.check_version(Some("2")).unwrap_err().kind,
            ErrorKind::NotFound
        );
    }
}
